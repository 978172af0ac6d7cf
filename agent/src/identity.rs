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
