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
/// Default most VM devices discovery creates under one hypervisor.
pub const DEFAULT_MAX_DISCOVERED_VMS: usize = 256;

/// Default agent certificate validity: a year.
pub const DEFAULT_AGENT_CERT_VALIDITY_SECS: u64 = 365 * 24 * 3600;
/// Longest agent certificate validity: the agent CA's own (ten years).
pub const MAX_AGENT_CERT_VALIDITY_SECS: u64 = 3650 * 24 * 3600;

/// Default cap on open gRPC connections (lowered at start to fit the descriptor limit).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default cap on concurrent HTTP/2 streams (RPCs in flight) per connection.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 256;

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

/// The campaign engine's SSH executor (`[campaigns]` in the TOML file).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CampaignsConfig {
    /// Sent as written to a host on a `reboot` step (never templated); at most 1 KiB.
    pub reboot_command: String,
    /// Where detached runs keep their exit code and output on a host: relative to the login
    /// user's home, or absolute.
    pub run_dir: String,
    /// SSH sessions open at once across all campaigns.
    pub max_ssh_sessions: usize,
    /// TCP connect, SSH handshake and authentication, seconds.
    pub ssh_connect_timeout_secs: u64,
    /// Output kept per stream per step (head and tail), bytes.
    pub capture_bytes: usize,
}

impl Default for CampaignsConfig {
    fn default() -> Self {
        Self {
            reboot_command: "systemctl reboot".into(),
            run_dir: ".muster/runs".into(),
            max_ssh_sessions: 64,
            ssh_connect_timeout_secs: 20,
            capture_bytes: 128 * 1024,
        }
    }
}

impl CampaignsConfig {
    fn validate(&self) -> Result<(), String> {
        let cmd = &self.reboot_command;
        if cmd.trim().is_empty()
            || cmd.len() > crate::campaigns::remote::MAX_REBOOT_COMMAND_BYTES
            || cmd.chars().any(char::is_control)
        {
            return Err(format!(
                "campaigns.reboot_command must be one line of at most {} bytes",
                crate::campaigns::remote::MAX_REBOOT_COMMAND_BYTES
            ));
        }
        self.run_dir()
            .validate()
            .map_err(|e| format!("campaigns.run_dir: {e}"))?;
        if !(1..=4096).contains(&self.max_ssh_sessions) {
            return Err("campaigns.max_ssh_sessions must be between 1 and 4096".into());
        }
        if !(1..=600).contains(&self.ssh_connect_timeout_secs) {
            return Err("campaigns.ssh_connect_timeout_secs must be between 1 and 600".into());
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.capture_bytes) {
            return Err("campaigns.capture_bytes must be between 1 KiB and 16 MiB".into());
        }
        Ok(())
    }

    /// The run directory as the SSH layer takes it.
    pub fn run_dir(&self) -> crate::ssh::RunDir {
        if self.run_dir.starts_with('/') {
            crate::ssh::RunDir::Absolute(self.run_dir.clone())
        } else {
            crate::ssh::RunDir::Home(self.run_dir.clone())
        }
    }
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
    /// Validity of the client certificates agents get at enrollment and renewal, seconds.
    pub agent_cert_validity_secs: u64,
    /// Agents are told to renew when less than this fraction of their certificate's lifetime
    /// remains; more than 0, at most 0.5 (renewal is refused in the first half).
    pub agent_cert_renew_fraction: f64,
    /// An agent certificate with less than this left (seconds) is a WARNING health reason.
    pub agent_cert_warn_secs: u64,
    /// Allow plaintext on a non-loopback address.
    pub insecure: bool,
    /// Requests larger than this are refused with RESOURCE_EXHAUSTED.
    pub max_message_bytes: usize,
    /// Most VM devices created from one hypervisor's reports (labelled discovered); VMs past
    /// it are not created and the hypervisor gets a WARNING (`vm.discovery_capped`).
    pub max_discovered_vms_per_hypervisor: usize,
    /// Open gRPC connections at most; more are closed at accept. Lowered at start so that
    /// connections cannot take the descriptors the store needs (see `listen`).
    pub max_connections: usize,
    /// Concurrent streams (RPCs) one HTTP/2 connection may have open.
    pub max_concurrent_streams: u32,
    /// Time a new connection has to send its HTTP/2 preface or finish its TLS handshake.
    pub handshake_timeout_ms: u64,
    /// HTTP/2 keepalive: ping an idle connection this often...
    pub keepalive_interval_ms: u64,
    /// ...and close it when the ping is not answered within this.
    pub keepalive_timeout_ms: u64,
    /// Close a connection that has had no open RPC for this long (0: never). Keepalive pings
    /// do not count; a Watch stream does.
    pub idle_timeout_ms: u64,
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
    /// Refused attempts (and per-source summaries) recorded per window across all sources;
    /// beyond it they are counted into one summary per window ("N refused attempts from M
    /// peers"), so many peers together cannot flush the refusal log either.
    pub refusals_global_per_window: u32,
    /// The campaign engine's SSH executor.
    pub campaigns: CampaignsConfig,
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
            agent_cert_validity_secs: DEFAULT_AGENT_CERT_VALIDITY_SECS,
            agent_cert_renew_fraction: 1.0 / 3.0,
            agent_cert_warn_secs: 14 * 24 * 3600,
            insecure: false,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_discovered_vms_per_hypervisor: DEFAULT_MAX_DISCOVERED_VMS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            handshake_timeout_ms: 10_000,
            keepalive_interval_ms: 30_000,
            keepalive_timeout_ms: 20_000,
            idle_timeout_ms: 300_000,
            cache_capacity_mb: 64,
            fdatasync: true,
            secrets_key_file: None,
            log_format: LogFormat::Text,
            tokens: Vec::new(),
            max_watches_per_principal: crate::limits::DEFAULT_WATCHES_PER_PRINCIPAL,
            refusals_per_window: 32,
            refusal_window_ms: 10_000,
            refusals_global_per_window: crate::refusal_limit::DEFAULT_GLOBAL_PER_WINDOW,
            campaigns: CampaignsConfig::default(),
        }
    }
}

impl Config {
    /// Whether the gRPC listener speaks TLS (configured or automatic).
    pub fn has_tls(&self) -> bool {
        self.tls.is_some() || self.tls_auto
    }

    /// Checks the values serde cannot: the agent certificate settings.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_AGENT_CERT_VALIDITY_SECS).contains(&self.agent_cert_validity_secs) {
            return Err(format!(
                "agent_cert_validity_secs must be between 1 and {MAX_AGENT_CERT_VALIDITY_SECS} (the agent CA's lifetime), not {}",
                self.agent_cert_validity_secs
            ));
        }
        let f = self.agent_cert_renew_fraction;
        if !(f > 0.0 && f <= 0.5) {
            return Err(format!(
                "agent_cert_renew_fraction must be more than 0 and at most 0.5, not {f}"
            ));
        }
        self.campaigns.validate()
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
        let c = Config::from_toml("max_connections = 10\nhandshake_timeout_ms = 500\n").unwrap();
        assert_eq!((c.max_connections, c.handshake_timeout_ms), (10, 500));
        assert_eq!(Config::default().max_connections, DEFAULT_MAX_CONNECTIONS);
        let c = Config::from_toml("refusals_global_per_window = 7\n").unwrap();
        assert_eq!(c.refusals_global_per_window, 7);
        assert!(
            Config::from_toml("lisen = 1").is_err(),
            "unknown keys are errors"
        );
        assert!(c.validate().is_ok());
        let bad = Config::from_toml("agent_cert_renew_fraction = 0.9\n").unwrap();
        assert!(
            bad.validate()
                .unwrap_err()
                .contains("agent_cert_renew_fraction")
        );
        let bad = Config::from_toml("agent_cert_validity_secs = 0\n").unwrap();
        assert!(
            bad.validate()
                .unwrap_err()
                .contains("agent_cert_validity_secs")
        );
    }

    #[test]
    fn campaigns_section() {
        let c = Config::from_toml(
            "[campaigns]\nreboot_command = \"/sbin/reboot\"\nrun_dir = \"/var/lib/muster/runs\"\n",
        )
        .unwrap();
        assert_eq!(c.campaigns.reboot_command, "/sbin/reboot");
        assert!(matches!(
            c.campaigns.run_dir(),
            crate::ssh::RunDir::Absolute(_)
        ));
        assert!(c.validate().is_ok());
        assert_eq!(
            Config::default().campaigns.reboot_command,
            "systemctl reboot"
        );
        for bad in [
            "reboot_command = \"\"",
            "reboot_command = \"reboot\\nrm -rf /\"",
            "run_dir = \"../x\"",
            "max_ssh_sessions = 0",
        ] {
            let c = Config::from_toml(&format!("[campaigns]\n{bad}\n")).unwrap();
            assert!(c.validate().unwrap_err().contains("campaigns."), "{bad}");
        }
        let long = format!("[campaigns]\nreboot_command = \"{}\"\n", "x".repeat(1025));
        assert!(Config::from_toml(&long).unwrap().validate().is_err());
        assert!(Config::from_toml("[campaigns]\nreboot = 1\n").is_err());
    }
}
