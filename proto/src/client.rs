//! The one client-side connection code of `muster` (CLI) and `muster-inventory` (bridge), and the
//! plaintext rule the agent shares: server URL parsing, TLS with a CA file (or the system roots),
//! the bearer-token interceptor, connect timeouts, and the refusal to send a token over `http://`
//! to anything but loopback unless the operator says `--insecure` (`MUSTER_INSECURE`).
//!
//! The refusal happens while the endpoint is built, before any socket exists: a token for a
//! remote server never leaves the process in clear text by accident.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;
use tonic::codegen::http::Uri;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

/// Why no connection was made. Messages are one line and say what to change.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Not `http://HOST:PORT` or `https://HOST:PORT`.
    #[error("invalid server URL {url:?}: expected http://HOST:PORT or https://HOST:PORT")]
    Url { url: String },
    /// Plaintext to a host that is not loopback, without `--insecure`.
    #[error(
        "refusing to send credentials over plaintext http:// to {host} (not a loopback address): \
         use https://, or pass --insecure (MUSTER_INSECURE=true) to allow it"
    )]
    Plaintext { host: String },
    /// The CA file could not be read.
    #[error("cannot read CA certificate {}: {source}", path.display())]
    Ca {
        path: PathBuf,
        source: std::io::Error,
    },
    /// tonic refused the TLS settings.
    #[error("invalid TLS configuration: {0}")]
    Tls(String),
    /// The token cannot be an HTTP header value.
    #[error("invalid token: it contains characters not allowed in a header")]
    Token,
    /// Connecting failed (refused, unreachable, TLS handshake, timeout).
    #[error("cannot connect to {url}: {cause}")]
    Connect { url: String, cause: String },
}

/// How to reach musterd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// `http://` or `https://` URL.
    pub server: String,
    /// PEM CA bundle for `https://` servers (system roots when unset).
    pub ca_cert: Option<PathBuf>,
    /// Bound on connecting.
    pub connect_timeout: Duration,
    /// Allow `http://` to a non-loopback host (the token then travels in clear text).
    pub insecure: bool,
}

/// The innermost error's text: tonic's transport errors nest the useful part deep.
pub fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// Whether `host` (from a URL, IPv6 possibly in brackets) is loopback: `localhost` or a
/// loopback IP literal. Any other name counts as remote: DNS is not asked, since its answer
/// is exactly what an attacker on the path may control.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.eq_ignore_ascii_case("localhost") {
        return true;
    }
    bare.parse::<IpAddr>()
        .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// A parsed server URL: its scheme is `http` or `https` and it has a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// The URL as given (trimmed).
    pub url: String,
    /// The host, without IPv6 brackets.
    pub host: String,
    /// `https://`.
    pub tls: bool,
}

/// Parses a server URL.
pub fn parse_server(url: &str) -> Result<ServerUrl, ClientError> {
    let url = url.trim();
    let bad = || ClientError::Url {
        url: url.to_string(),
    };
    let uri: Uri = url.parse().map_err(|_| bad())?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad()),
    };
    let host = match uri.host() {
        Some(h) if !h.is_empty() => h.trim_start_matches('[').trim_end_matches(']'),
        _ => return Err(bad()),
    };
    Ok(ServerUrl {
        url: url.to_string(),
        host: host.to_string(),
        tls,
    })
}

/// Refuses `http://` to a non-loopback host unless `insecure`; returns the parsed URL.
pub fn check_plaintext(url: &str, insecure: bool) -> Result<ServerUrl, ClientError> {
    let parsed = parse_server(url)?;
    if !parsed.tls && !insecure && !is_loopback_host(&parsed.host) {
        return Err(ClientError::Plaintext { host: parsed.host });
    }
    Ok(parsed)
}

/// Reads a PEM CA file for [`tls_config`].
pub fn read_ca(path: &Path) -> Result<Certificate, ClientError> {
    std::fs::read(path)
        .map(Certificate::from_pem)
        .map_err(|source| ClientError::Ca {
            path: path.to_path_buf(),
            source,
        })
}

/// The endpoint for a server: URL checked (plaintext rule included), connect timeout, TCP
/// no-delay, and TLS for `https://` verified against `ca_cert` or the system roots. Callers add
/// what is theirs (request timeout, keep-alive).
pub fn endpoint(cfg: &ClientConfig) -> Result<Endpoint, ClientError> {
    let url = check_plaintext(&cfg.server, cfg.insecure)?;
    let mut endpoint = Endpoint::from_shared(url.url.clone())
        .map_err(|_| ClientError::Url {
            url: url.url.clone(),
        })?
        .connect_timeout(cfg.connect_timeout)
        .tcp_nodelay(true);
    if url.tls {
        let mut tls = ClientTlsConfig::new().domain_name(url.host.clone());
        tls = match &cfg.ca_cert {
            Some(path) => tls.ca_certificate(read_ca(path)?),
            None => tls.with_native_roots(),
        };
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| ClientError::Tls(root_cause(&e)))?;
    }
    Ok(endpoint)
}

/// Connects now, so that an unreachable server is reported once, clearly, naming the URL.
pub async fn connect(cfg: &ClientConfig, endpoint: Endpoint) -> Result<Channel, ClientError> {
    endpoint.connect().await.map_err(|e| ClientError::Connect {
        url: cfg.server.trim().to_string(),
        cause: root_cause(&e),
    })
}

/// Adds `authorization: Bearer <token>` to every call (nothing without a token).
#[derive(Debug, Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// The interceptor for a token; `None` or an empty token sends no header.
    pub fn new(token: Option<&str>) -> Result<Self, ClientError> {
        match token.map(str::trim) {
            Some(t) if !t.is_empty() => format!("Bearer {t}")
                .parse()
                .map(|h| Self(Some(h)))
                .map_err(|_| ClientError::Token),
            _ => Ok(Self(None)),
        }
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cfg(server: &str, insecure: bool) -> ClientConfig {
        ClientConfig {
            server: server.into(),
            ca_cert: None,
            connect_timeout: Duration::from_secs(1),
            insecure,
        }
    }

    #[test]
    fn loopback_is_localhost_or_a_loopback_literal() {
        for h in [
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "127.8.9.1",
            "[::1]",
            "::1",
            "[::ffff:127.0.0.1]",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "192.0.2.10",
            "10.0.0.1",
            "[2001:db8::1]",
            "muster.example",
            "localhost.example",
            "127.0.0.1.nip.io",
            "0.0.0.0",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn plaintext_to_a_remote_host_needs_insecure() {
        assert!(endpoint(&cfg("http://127.0.0.1:7070", false)).is_ok());
        assert!(endpoint(&cfg("http://localhost:7070", false)).is_ok());
        assert!(endpoint(&cfg("http://[::1]:7070", false)).is_ok());
        assert!(endpoint(&cfg("https://muster.example:7070", false)).is_ok());
        for url in ["http://192.0.2.10:7070", "http://muster.example:7070"] {
            let err = endpoint(&cfg(url, false)).unwrap_err().to_string();
            assert!(err.contains("--insecure"), "{err}");
            assert!(err.contains("plaintext"), "{err}");
            assert!(endpoint(&cfg(url, true)).is_ok(), "{url}");
        }
    }

    #[test]
    fn bad_urls_are_named() {
        for url in ["127.0.0.1:7070", "ftp://x", "http://", ""] {
            let err = endpoint(&cfg(url, false)).unwrap_err().to_string();
            assert!(err.contains("invalid server URL"), "{url}: {err}");
        }
    }

    #[test]
    fn bearer_adds_the_header_only_with_a_token() {
        let mut auth = Bearer::new(Some("s3cret")).unwrap();
        let req = auth.call(Request::new(())).unwrap();
        assert_eq!(
            req.metadata().get("authorization").unwrap(),
            "Bearer s3cret"
        );
        for t in [None, Some(""), Some("  ")] {
            let mut none = Bearer::new(t).unwrap();
            let req = none.call(Request::new(())).unwrap();
            assert!(req.metadata().get("authorization").is_none());
        }
        assert!(matches!(
            Bearer::new(Some("bad\ntoken")),
            Err(ClientError::Token)
        ));
    }
}
