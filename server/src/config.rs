//! Server configuration: a TOML file, overridden by environment variables and flags (the
//! binary merges them); every field has a default that runs a loopback development server.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// Default gRPC listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
/// Default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "muster-data";
/// Default largest request message.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// A token accepted by the server, by its SHA-256 (the token itself never sits in a file).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    pub role: String,
    pub sha256: String,
}

/// TLS material, PEM files.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Everything `serve` needs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Prometheus metrics listen address (off when unset).
    pub metrics_listen: Option<SocketAddr>,
    /// Where the store, the secrets key and the bootstrap token live.
    pub data_dir: PathBuf,
    pub tls: Option<TlsConfig>,
    /// Serve TLS with a certificate issued by musterd's own CA (when `tls` is not set).
    pub tls_auto: bool,
    /// Names the auto-TLS certificate is valid for.
    pub tls_names: Vec<String>,
    /// Report interval handed to agents, milliseconds.
    pub agent_report_interval_ms: u64,
    /// Random spread of agents' intervals, as a fraction (0.1 = ±10 %).
    pub agent_jitter: f64,
    /// Allow plaintext on a non-loopback address.
    pub insecure: bool,
    /// Requests larger than this are refused with RESOURCE_EXHAUSTED.
    pub max_message_bytes: usize,
    /// sled page cache, MiB.
    pub cache_capacity_mb: u64,
    /// fdatasync after each group flush (leave on outside benchmarks).
    pub fdatasync: bool,
    /// Key for sealing credentials; defaults to `data_dir/secrets.key`.
    pub secrets_key_file: Option<PathBuf>,
    pub log_format: LogFormat,
    pub tokens: Vec<TokenConfig>,
    /// Concurrent Watch streams one principal may hold open.
    pub max_watches_per_principal: u32,
    /// Refused attempts recorded one by one per source (peer or principal) and window; the
    /// rest are counted into one summary record per window.
    pub refusals_per_window: u32,
    /// That window, milliseconds.
    pub refusal_window_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 7070))),
            metrics_listen: None,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            tls: None,
            tls_auto: false,
            tls_names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            agent_report_interval_ms: 60_000,
            agent_jitter: 0.1,
            insecure: false,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            cache_capacity_mb: 64,
            fdatasync: true,
            secrets_key_file: None,
            log_format: LogFormat::Text,
            tokens: Vec::new(),
            max_watches_per_principal: crate::limits::DEFAULT_WATCHES_PER_PRINCIPAL,
            refusals_per_window: 32,
            refusal_window_ms: 10_000,
        }
    }
}

impl Config {
    /// Whether the gRPC listener speaks TLS (configured or automatic).
    pub fn has_tls(&self) -> bool {
        self.tls.is_some() || self.tls_auto
    }

    /// Parses a TOML config file's text.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_file() {
        let c = Config::default();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        let c = Config::from_toml(
            "listen = \"127.0.0.1:9000\"\n[[tokens]]\nname = \"ci\"\nrole = \"viewer\"\nsha256 = \"ab\"\n",
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.tokens.len(), 1);
        assert!(
            Config::from_toml("lisen = 1").is_err(),
            "unknown keys are errors"
        );
    }
}
