//! Settings of one `muster-inventory` run: flags, then `MUSTER_*` variables, then a config file
//! (YAML or INI), then defaults. Ansible runs an inventory script with `--list` or `--host`
//! only, so everything else must be reachable without flags: the environment (cron, AWX
//! credentials) or a file named by `MUSTER_INVENTORY_CONFIG` or lying beside the executable.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// The config file's keys (all optional). The INI form has the same keys under `[muster]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `http://HOST:PORT` or `https://HOST:PORT`.
    pub server: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed the server's certificate.
    pub ca_cert: Option<PathBuf>,
    /// Label selector narrowing the hosts.
    pub selector: Option<String>,
    /// List only hosts whose maintenance window is open now.
    pub in_window: Option<bool>,
    /// Directory for the export cache (off when unset).
    pub cache_dir: Option<PathBuf>,
    /// Seconds to wait for the server.
    pub timeout: Option<u64>,
    /// Allow plaintext `http://` (and so the token) to a non-loopback server.
    pub insecure: Option<bool>,
}

impl FileConfig {
    /// Reads a YAML (`.yml`, `.yaml`) or INI (anything else) file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yml" | "yaml")
        );
        if yaml {
            serde_yaml_ng::from_str(&text)
                .with_context(|| format!("config file {}", path.display()))
        } else {
            parse_ini(&text).with_context(|| format!("config file {}", path.display()))
        }
    }
}

/// INI: `key = value` lines in a `[muster]` section (or before any section); `#`/`;` comments.
pub fn parse_ini(text: &str) -> Result<FileConfig> {
    let mut c = FileConfig::default();
    let mut section = String::from("muster");
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.trim().to_string();
            continue;
        }
        if section != "muster" {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            bail!("line {}: expected key = value", n + 1);
        };
        let v = v.trim().to_string();
        match k.trim() {
            "server" => c.server = Some(v),
            "token" => c.token = Some(v),
            "token_file" => c.token_file = Some(v.into()),
            "ca_cert" => c.ca_cert = Some(v.into()),
            "selector" => c.selector = Some(v),
            "cache_dir" => c.cache_dir = Some(v.into()),
            "in_window" => c.in_window = Some(ini_bool(&v, "in_window", n)?),
            "insecure" => c.insecure = Some(ini_bool(&v, "insecure", n)?),
            "timeout" => {
                c.timeout = Some(
                    v.parse()
                        .with_context(|| format!("line {}: timeout in seconds", n + 1))?,
                )
            }
            other => bail!("line {}: unknown key {other:?}", n + 1),
        }
    }
    Ok(c)
}

fn ini_bool(v: &str, key: &str, n: usize) -> Result<bool> {
    Ok(match v.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" | "on" => true,
        "false" | "no" | "0" | "off" => false,
        _ => bail!("line {}: {key} must be true or false", n + 1),
    })
}

/// Values given as flags or environment variables (clap fills both).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub server: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca_cert: Option<PathBuf>,
    pub selector: Option<String>,
    pub in_window: bool,
    pub cache_dir: Option<PathBuf>,
    pub timeout: Option<u64>,
    pub insecure: bool,
}

/// The settings a run uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub server: String,
    pub token: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub selector: String,
    pub in_window: bool,
    pub cache_dir: Option<PathBuf>,
    pub timeout: Duration,
    /// Plaintext to a non-loopback server allowed (`--insecure`, `MUSTER_INSECURE`, `insecure`).
    pub insecure: bool,
}

/// Default server, as for the `muster` CLI.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

/// The config file to read: the one named, else `muster-inventory.{yml,yaml,ini}` beside the
/// executable (the classic place for an inventory script's settings), else none.
fn config_path(named: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = named {
        return Some(p.to_path_buf());
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [
        "muster-inventory.yml",
        "muster-inventory.yaml",
        "muster-inventory.ini",
    ]
    .iter()
    .map(|n| dir.join(n))
    .find(|p| p.is_file())
}

impl Settings {
    /// Merges flags/environment over the file over defaults.
    pub fn resolve(o: Overrides) -> Result<Self> {
        let file = match config_path(o.config.as_deref()) {
            Some(p) => FileConfig::load(&p)?,
            None => FileConfig::default(),
        };
        let token_file = o.token_file.or(file.token_file);
        let token = match (o.token, token_file, file.token) {
            (Some(t), _, _) => Some(t),
            (None, Some(p), _) => Some(
                std::fs::read_to_string(&p)
                    .with_context(|| format!("cannot read token file {}", p.display()))?
                    .trim()
                    .to_string(),
            ),
            (None, None, t) => t,
        };
        Ok(Self {
            server: o
                .server
                .or(file.server)
                .unwrap_or_else(|| DEFAULT_SERVER.to_string()),
            token: token.filter(|t| !t.is_empty()),
            ca_cert: o.ca_cert.or(file.ca_cert),
            selector: o.selector.or(file.selector).unwrap_or_default(),
            in_window: o.in_window || file.in_window.unwrap_or(false),
            cache_dir: o.cache_dir.or(file.cache_dir),
            timeout: Duration::from_secs(o.timeout.or(file.timeout).unwrap_or(30).max(1)),
            insecure: o.insecure || file.insecure.unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ini_and_yaml_agree() {
        let ini = parse_ini(
            "# comment\n[muster]\nserver = https://m:7070\nselector = role=web\nin_window = yes\n[other]\nx = 1\n",
        )
        .unwrap();
        let yaml: FileConfig = serde_yaml_ng::from_str(
            "server: https://m:7070\nselector: role=web\nin_window: true\n",
        )
        .unwrap();
        assert_eq!(ini, yaml);
        assert!(parse_ini("[muster]\nsurver = x\n").is_err());
        assert!(parse_ini("garbage\n").is_err());
    }

    #[test]
    fn flags_beat_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yml");
        std::fs::write(&p, "server: http://file:1\nselector: a=b\ntoken: t1\n").unwrap();
        let s = Settings::resolve(Overrides {
            config: Some(p),
            server: Some("http://flag:2".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.server, "http://flag:2");
        assert_eq!(s.selector, "a=b");
        assert_eq!(s.token.as_deref(), Some("t1"));
    }
}
