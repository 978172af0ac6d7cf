//! The agent's identity on disk: its private key (generated here, never sent), the client
//! certificate the server issued for it, the CA to trust, and the device it speaks for.
//! Also the gRPC channel built from them.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, DnType, KeyPair};
use thiserror::Error;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Why the identity could not be read, written or used.
#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create a key or CSR: {0}")]
    Key(String),
    #[error("not enrolled: no certificate in {0}; run `muster-agent enroll --token TOKEN`")]
    NotEnrolled(PathBuf),
    #[error("bad server address {0:?}: {1}")]
    Server(String, String),
    #[error("no CA to verify the server with: pass --ca (or set `ca` in the config)")]
    NoCa,
    #[error("{0}: not a readable certificate: {1}")]
    BadCert(PathBuf, String),
    /// `http://` to a non-loopback server without `insecure` (enrollment sends a token).
    #[error("{0}")]
    Plaintext(muster::client::ClientError),
}

/// File names inside the state directory.
pub struct Paths {
    pub key: PathBuf,
    pub cert: PathBuf,
    pub ca: PathBuf,
    pub device: PathBuf,
    pub csr: PathBuf,
    pub pending: PathBuf,
    /// A renewal in progress: the new key (written before the CSR is sent)...
    pub key_next: PathBuf,
    /// ...and its certificate: once this exists the new pair is complete and is switched in.
    pub cert_next: PathBuf,
}

impl Paths {
    /// The identity files of a state directory.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            key: state_dir.join("agent.key"),
            cert: state_dir.join("agent.pem"),
            ca: state_dir.join("ca.pem"),
            device: state_dir.join("device"),
            csr: state_dir.join("agent.csr"),
            pending: state_dir.join("pending-enrollment"),
            key_next: state_dir.join("agent.key.next"),
            cert_next: state_dir.join("agent.pem.next"),
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::File {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a file atomically (temp file, fsync, rename, fsync of the directory), with `mode`.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), IdentityError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    use std::os::unix::fs::PermissionsExt;
    let name = path
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io(&tmp))?;
        // A leftover temp file keeps its old mode; a private key must not.
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io(&tmp))?;
        f.write_all(data).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// The agent's key (created on first use, mode 0600) and a CSR for it.
pub fn key_and_csr(paths: &Paths, hostname: &str) -> Result<(KeyPair, String), IdentityError> {
    let key = if paths.key.exists() {
        let pem = std::fs::read_to_string(&paths.key).map_err(io(&paths.key))?;
        KeyPair::from_pem(&pem).map_err(|e| IdentityError::Key(e.to_string()))?
    } else {
        let key = KeyPair::generate().map_err(|e| IdentityError::Key(e.to_string()))?;
        write_atomic(&paths.key, key.serialize_pem().as_bytes(), 0o600)?;
        key
    };
    // The CSR is kept so a held enrollment is collected with exactly the one it was held with.
    if paths.csr.exists() {
        let csr = std::fs::read_to_string(&paths.csr).map_err(io(&paths.csr))?;
        return Ok((key, csr));
    }
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, hostname);
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| IdentityError::Key(e.to_string()))?;
    write_atomic(&paths.csr, csr.as_bytes(), 0o644)?;
    Ok((key, csr))
}

/// The device this agent is enrolled as.
pub fn enrolled_device(paths: &Paths) -> Result<String, IdentityError> {
    if !paths.cert.exists() {
        return Err(IdentityError::NotEnrolled(paths.cert.clone()));
    }
    let d = std::fs::read_to_string(&paths.device).map_err(io(&paths.device))?;
    Ok(d.trim().to_string())
}

/// A channel to musterd: TLS verified against `ca` (or the CA saved at enrollment), with the
/// client certificate when enrolled. Plain `http://` is for loopback development only (no
/// identity can be presented over it, and enrollment would send its token in clear text): to
/// any other host it is refused, before connecting, unless `insecure`.
pub fn channel(
    server: &str,
    ca: Option<&Path>,
    paths: &Paths,
    with_identity: bool,
    insecure: bool,
) -> Result<Channel, IdentityError> {
    muster::client::check_plaintext(server, insecure).map_err(|e| match e {
        muster::client::ClientError::Url { .. } => IdentityError::Server(
            server.into(),
            "expected http://HOST:PORT or https://HOST:PORT".into(),
        ),
        other => IdentityError::Plaintext(other),
    })?;
    let endpoint = Endpoint::from_shared(server.to_string())
        .map_err(|e| IdentityError::Server(server.into(), e.to_string()))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(30))
        .tcp_nodelay(true);
    if server.starts_with("http://") {
        return Ok(endpoint.connect_lazy());
    }
    let ca_path = match ca {
        Some(p) => p.to_path_buf(),
        None if paths.ca.exists() => paths.ca.clone(),
        None => return Err(IdentityError::NoCa),
    };
    let ca_pem = std::fs::read(&ca_path).map_err(io(&ca_path))?;
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if with_identity {
        let cert = std::fs::read(&paths.cert)
            .map_err(|_| IdentityError::NotEnrolled(paths.cert.clone()))?;
        let key = std::fs::read(&paths.key).map_err(io(&paths.key))?;
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Ok(endpoint
        .tls_config(tls)
        .map_err(|e| IdentityError::Server(server.into(), e.to_string()))?
        .connect_lazy())
}

/// The key for a renewal (kept in `key_next` until its certificate arrives, so a retry after a
/// crash asks for the same key) and a CSR for it.
pub fn next_key_and_csr(paths: &Paths, device: &str) -> Result<String, IdentityError> {
    let key = if paths.key_next.exists() {
        let pem = std::fs::read_to_string(&paths.key_next).map_err(io(&paths.key_next))?;
        KeyPair::from_pem(&pem).map_err(|e| IdentityError::Key(e.to_string()))?
    } else {
        let key = KeyPair::generate().map_err(|e| IdentityError::Key(e.to_string()))?;
        write_atomic(&paths.key_next, key.serialize_pem().as_bytes(), 0o600)?;
        key
    };
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, device);
    params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| IdentityError::Key(e.to_string()))
}

/// Switches in a renewed key and certificate once both are on disk (`cert_next` is written
/// last, so its presence means the pair is complete). Each step is a rename, and the order
/// (key, then certificate) makes every crash point recoverable by calling this again: it runs
/// at every start. Returns whether a renewal was switched in.
pub fn finish_renewal(paths: &Paths) -> Result<bool, IdentityError> {
    if !paths.cert_next.exists() {
        return Ok(false);
    }
    // Without `key_next` the key was already moved before a crash.
    if paths.key_next.exists() {
        std::fs::rename(&paths.key_next, &paths.key).map_err(io(&paths.key))?;
    }
    std::fs::rename(&paths.cert_next, &paths.cert).map_err(io(&paths.cert))?;
    let dir = paths.cert.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(true)
}

/// The validity (not before, not after) of the certificate in `path`.
pub fn cert_validity(
    path: &Path,
) -> Result<(std::time::SystemTime, std::time::SystemTime), IdentityError> {
    let pem = std::fs::read(path).map_err(io(path))?;
    let bad = |e: String| IdentityError::BadCert(path.to_path_buf(), e);
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).map_err(|e| bad(e.to_string()))?;
    let cert = pem.parse_x509().map_err(|e| bad(e.to_string()))?;
    let at = |t: x509_parser::time::ASN1Time| {
        std::time::UNIX_EPOCH
            + std::time::Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
    };
    let v = cert.validity();
    Ok((at(v.not_before), at(v.not_after)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    /// Every point a crash can leave a renewal at ends with a matching key and certificate.
    #[test]
    fn an_interrupted_renewal_resumes_at_every_crash_point() {
        let d = tempfile::tempdir().unwrap();
        let p = Paths::new(d.path());
        let reset = || {
            for f in [&p.key_next, &p.cert_next] {
                let _ = std::fs::remove_file(f);
            }
            std::fs::write(&p.key, "old key").unwrap();
            std::fs::write(&p.cert, "old cert").unwrap();
        };
        // Crash before the certificate arrived: nothing switches; the new key is reused.
        reset();
        std::fs::write(&p.key_next, "new key").unwrap();
        assert!(!finish_renewal(&p).unwrap());
        assert_eq!(
            (read(&p.key), read(&p.cert)),
            ("old key".into(), "old cert".into())
        );
        // Crash after the certificate was saved, before the switch.
        std::fs::write(&p.cert_next, "new cert").unwrap();
        assert!(finish_renewal(&p).unwrap());
        assert_eq!(
            (read(&p.key), read(&p.cert)),
            ("new key".into(), "new cert".into())
        );
        // Crash between the two renames (the key already moved).
        reset();
        std::fs::write(&p.key, "new key").unwrap();
        std::fs::write(&p.cert_next, "new cert").unwrap();
        assert!(finish_renewal(&p).unwrap());
        assert_eq!(
            (read(&p.key), read(&p.cert)),
            ("new key".into(), "new cert".into())
        );
        assert!(!p.key_next.exists() && !p.cert_next.exists());
        // Nothing pending: nothing happens.
        assert!(!finish_renewal(&p).unwrap());
    }

    #[test]
    fn next_key_is_kept_for_a_retry() {
        let d = tempfile::tempdir().unwrap();
        let p = Paths::new(d.path());
        let a = next_key_and_csr(&p, "web-01").unwrap();
        let key = read(&p.key_next);
        let b = next_key_and_csr(&p, "web-01").unwrap();
        assert_eq!(read(&p.key_next), key);
        assert!(a.contains("CERTIFICATE REQUEST") && b.contains("CERTIFICATE REQUEST"));
    }
}
