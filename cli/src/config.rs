//! Connection settings: flags, then `MUSTER_*` variables, then the config file, then defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::parser::ValueSource;
use serde::Deserialize;

use crate::args::GlobalArgs;

/// Where the CLI talks to when nothing says otherwise.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

/// The config file (`~/.config/muster/config.toml`).
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub server: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca_cert: Option<PathBuf>,
}

/// Everything needed to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `http://` or `https://` URL.
    pub server: String,
    /// Bearer token, already read from its file and trimmed.
    pub token: Option<String>,
    /// PEM CA bundle for `https://` servers (system roots when unset).
    pub ca_cert: Option<PathBuf>,
    /// Bound on each unary call and on connecting.
    pub timeout: Duration,
    /// `--insecure`: allow plaintext `http://` (and so the token) to a non-loopback host.
    pub insecure: bool,
}

/// Where `--token` and `--token-file` came from, to rank a flag above a variable.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sources {
    /// Where `--token` came from.
    pub token: Option<ValueSource>,
    /// Where `--token-file` came from.
    pub token_file: Option<ValueSource>,
}

/// Resolves the settings from the parsed arguments and the config file.
pub fn resolve(global: &GlobalArgs, sources: Sources) -> Result<Settings> {
    let file = load_file(global.config.as_deref())?;
    let (file, file_dir) = match file {
        Some((cfg, dir)) => (cfg, dir),
        None => (FileConfig::default(), PathBuf::new()),
    };
    let server = global
        .server
        .clone()
        .or(file.server)
        .unwrap_or_else(|| DEFAULT_SERVER.to_string());

    let rank = |s: Option<ValueSource>| match s {
        Some(ValueSource::CommandLine) => 2,
        _ => 1,
    };
    let token = match (&global.token, &global.token_file) {
        (Some(_), Some(f)) if rank(sources.token_file) > rank(sources.token) => {
            Some(read_token_file(f)?)
        }
        (Some(t), _) => Some(t.trim().to_string()),
        (None, Some(f)) => Some(read_token_file(f)?),
        (None, None) => match (file.token, file.token_file) {
            (Some(t), _) => Some(t.trim().to_string()),
            (None, Some(f)) => Some(read_token_file(&file_dir.join(f))?),
            (None, None) => None,
        },
    };
    let token = token.filter(|t| !t.is_empty());
    let ca_cert = global
        .ca_cert
        .clone()
        .or_else(|| file.ca_cert.map(|p| file_dir.join(p)));
    Ok(Settings {
        server,
        token,
        ca_cert,
        timeout: global.timeout,
        insecure: global.insecure,
    })
}

/// Reads the config file: the named one (which must exist) or the default one (if it exists).
/// Returns it with its directory, against which relative paths in it are resolved.
fn load_file(explicit: Option<&Path>) -> Result<Option<(FileConfig, PathBuf)>> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => match default_path() {
            Some(p) if p.is_file() => p,
            _ => return Ok(None),
        },
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let cfg: FileConfig = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}", e.message()))
        .with_context(|| format!("invalid config file {}", path.display()))?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(Some((cfg, dir)))
}

/// `$XDG_CONFIG_HOME/muster/config.toml`, else `~/.config/muster/config.toml`.
fn default_path() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(x) if !x.is_empty() => PathBuf::from(x),
        _ => PathBuf::from(std::env::var_os("HOME")?).join(".config"),
    };
    Some(base.join("muster").join("config.toml"))
}

fn read_token_file(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read token file {}", path.display()))?;
    let token = text.trim().to_string();
    if token.is_empty() {
        bail!("token file {} is empty", path.display());
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global(config: &Path) -> GlobalArgs {
        GlobalArgs {
            server: None,
            token: None,
            token_file: None,
            ca_cert: None,
            config: Some(config.to_path_buf()),
            timeout: Duration::from_secs(30),
            insecure: false,
        }
    }

    #[test]
    fn precedence_flag_then_file_then_default() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.toml");
        std::fs::write(dir.path().join("tok"), "  file-token\n").unwrap();
        std::fs::write(
            &cfg,
            "server = \"https://muster.example:7070\"\ntoken_file = \"tok\"\nca_cert = \"ca.pem\"\n",
        )
        .unwrap();
        let mut g = global(&cfg);
        let s = resolve(&g, Sources::default()).unwrap();
        assert_eq!(s.server, "https://muster.example:7070");
        assert_eq!(s.token.as_deref(), Some("file-token"));
        assert_eq!(s.ca_cert, Some(dir.path().join("ca.pem")));

        g.server = Some("http://other:1".into());
        g.token = Some("flag-token".into());
        let s = resolve(&g, Sources::default()).unwrap();
        assert_eq!(s.server, "http://other:1");
        assert_eq!(s.token.as_deref(), Some("flag-token"));

        // --token-file on the command line beats MUSTER_TOKEN from the environment.
        g.token_file = Some(dir.path().join("tok"));
        let sources = Sources {
            token: Some(ValueSource::EnvVariable),
            token_file: Some(ValueSource::CommandLine),
        };
        assert_eq!(
            resolve(&g, sources).unwrap().token.as_deref(),
            Some("file-token")
        );

        std::fs::write(&cfg, "").unwrap();
        let s = resolve(&global(&cfg), Sources::default()).unwrap();
        assert_eq!(s.server, DEFAULT_SERVER);
        assert_eq!(s.token, None);
    }

    #[test]
    fn bad_config_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.toml");
        std::fs::write(&cfg, "sever = \"x\"\n").unwrap();
        let err = format!(
            "{:#}",
            resolve(&global(&cfg), Sources::default()).unwrap_err()
        );
        assert!(err.contains("invalid config file"), "{err}");
        assert!(err.contains("sever"), "{err}");
        let err = resolve(&global(&dir.path().join("nope.toml")), Sources::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read config file"), "{err}");
    }
}
