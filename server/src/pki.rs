//! The server's own certificate authority: it signs agent client certificates at enrollment
//! and, in auto-TLS mode, the server's certificate. Agents are identified by the SHA-256 of the
//! certificate they present (recorded at issue), not by names inside it, so revoking an identity
//! is deleting one record and a certificate can never claim another device.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::keys::files::{write_new_file, write_private_file};

/// Why the CA could not be loaded or could not sign.
#[derive(Debug, Error)]
pub enum PkiError {
    #[error("cannot read or write {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the CA files in {0} are unusable: {1}")]
    BadCa(PathBuf, String),
    #[error("the certificate signing request is not valid: {0}")]
    BadCsr(String),
    #[error("cannot issue a certificate: {0}")]
    Issue(String),
}

/// A certificate the CA issued.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    /// Hex SHA-256 of the DER certificate: the identity the server recognises.
    pub fingerprint: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// Clock-skew allowance before an agent certificate's issue time: 5 minutes, or a tenth of the
/// validity when that is shorter (so the lifetime the agent sees in the certificate is close to
/// the configured validity, and renewal thresholds mean the same on both sides).
pub fn skew_allowance(validity: Duration) -> Duration {
    (validity / 10).min(Duration::from_secs(300))
}

fn system_time(t: time::OffsetDateTime) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.unix_timestamp()).unwrap_or(0))
}

/// The CA: its key stays in the data directory (mode 0600), its certificate is public.
pub struct AgentCa {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl std::fmt::Debug for AgentCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentCa").finish_non_exhaustive()
    }
}

/// Hex SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError {
    let path = path.to_path_buf();
    move |source| PkiError::File { path, source }
}

impl AgentCa {
    /// The CA's files in `dir`: certificate, key.
    pub fn files(dir: &Path) -> (PathBuf, PathBuf) {
        (dir.join("agent-ca.pem"), dir.join("agent-ca.key"))
    }

    /// Creates a new CA in `dir`. Fails if a key file is already there, so an existing CA is
    /// never replaced (`crate::keys` decides when a new one may be made at all).
    pub fn create(dir: &Path) -> Result<Self, PkiError> {
        let (cert_path, key_path) = Self::files(dir);
        let key = KeyPair::generate().map_err(|e| PkiError::Issue(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "muster agent CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
        let cert = params
            .self_signed(&key)
            .map_err(|e| PkiError::Issue(e.to_string()))?;
        std::fs::create_dir_all(dir).map_err(file_err(dir))?;
        write_private_file(&key_path, key.serialize_pem().as_bytes())
            .map_err(file_err(&key_path))?;
        write_new_file(&cert_path, cert.pem().as_bytes(), 0o644).map_err(file_err(&cert_path))?;
        Self::load(dir)
    }

    /// Loads the CA from `dir` (`agent-ca.pem`, `agent-ca.key`).
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let (cert_path, key_path) = Self::files(dir);
        let key_pem = std::fs::read_to_string(&key_path).map_err(file_err(&key_path))?;
        let ca_pem = std::fs::read_to_string(&cert_path).map_err(file_err(&cert_path))?;
        Self::from_pem(&ca_pem, &key_pem).map_err(|e| PkiError::BadCa(dir.into(), e))
    }

    /// The CA from its certificate and key, PEM (also how a restored bundle is checked).
    pub fn from_pem(ca_pem: &str, key_pem: &str) -> Result<Self, String> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| e.to_string())?;
        let issuer = Issuer::from_ca_cert_pem(ca_pem, key).map_err(|e| e.to_string())?;
        Ok(Self {
            issuer,
            ca_pem: ca_pem.to_string(),
        })
    }

    /// The CA certificate, PEM: what agents and clients trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A server certificate for `names` (DNS names or IP addresses), with its key, PEM.
    pub fn issue_server(&self, names: &[String]) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate().map_err(|e| PkiError::Issue(e.to_string()))?;
        let mut params =
            CertificateParams::new(names.to_vec()).map_err(|e| PkiError::Issue(e.to_string()))?;
        params
            .distinguished_name
            .push(DnType::CommonName, "musterd");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(365);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| PkiError::Issue(e.to_string()))?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Signs an agent's CSR as a client certificate for `device`. Only the CSR's public key
    /// is used: the subject and names are the server's, whatever the request asked for.
    pub fn sign_agent(
        &self,
        csr_pem: &str,
        device: &str,
        validity: Duration,
    ) -> Result<Issued, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::BadCsr(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, device);
        params.subject_alt_names = vec![SanType::URI(
            format!("muster://device/{device}")
                .try_into()
                .map_err(|e: rcgen::Error| PkiError::Issue(e.to_string()))?,
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        let skew = time::Duration::try_from(skew_allowance(validity))
            .map_err(|e| PkiError::Issue(format!("validity: {e}")))?;
        let validity = time::Duration::try_from(validity)
            .map_err(|e| PkiError::Issue(format!("validity: {e}")))?;
        params.not_before = now - skew;
        params.not_after = now + validity;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| PkiError::Issue(e.to_string()))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            fingerprint: fingerprint(cert.der()),
            not_before: system_time(params.not_before),
            not_after: system_time(params.not_after),
        })
    }

    /// Hex SHA-256 of the public key in a CSR (to show operators which key waits for approval).
    pub fn csr_key_fingerprint(csr_pem: &str) -> Result<String, PkiError> {
        use rcgen::PublicKeyData;
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::BadCsr(e.to_string()))?;
        Ok(hex::encode(Sha256::digest(csr.public_key.der_bytes())))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // tests measure or wait on real time
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ca_persists_and_signs_only_the_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = AgentCa::create(dir.path()).unwrap();
        let again = AgentCa::load(dir.path()).unwrap();
        assert_eq!(ca.ca_pem(), again.ca_pem());
        assert!(
            AgentCa::create(dir.path()).is_err(),
            "an existing CA is never replaced"
        );
        assert_eq!(AgentCa::load(dir.path()).unwrap().ca_pem(), ca.ca_pem());
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "other-device");
        let csr = p.serialize_request(&key).unwrap().pem().unwrap();
        let issued = ca
            .sign_agent(&csr, "web-01", Duration::from_secs(3600))
            .unwrap();
        assert_eq!(issued.fingerprint.len(), 64);
        assert!(issued.not_after > SystemTime::now());
        assert!(matches!(
            ca.sign_agent("garbage", "web-01", Duration::from_secs(60)),
            Err(PkiError::BadCsr(_))
        ));
        let fp = AgentCa::csr_key_fingerprint(&csr).unwrap();
        assert_eq!(fp.len(), 64);
    }
}
