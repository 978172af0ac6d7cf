//! Where a step runs: host, port, user, the private key from a Credential, and the pinned host
//! key. Everything is validated here, once, so the rest of the layer never sees a string it
//! would have to distrust.

use std::fmt;
use std::sync::Arc;

use russh::keys::{Algorithm, HashAlg, PrivateKey, PublicKey};

use super::error::SshError;

/// The host key a target must present. Exact match only: no trust on first use, no CA.
///
/// A full public key is the better pin: it names its algorithm, so the client offers the server
/// only that one and a host with several keys cannot answer with another. A bare fingerprint
/// (what `SshEndpoint.host_key_fingerprint` holds) says nothing of the algorithm, so the client
/// offers the modern ones (never `ssh-rsa` with SHA-1) and the key shown must hash to it.
#[derive(Clone, PartialEq, Eq)]
pub struct HostKeyPin {
    fingerprint: String,
    key: Option<PublicKey>,
}

impl fmt::Debug for HostKeyPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostKeyPin({})", self.fingerprint)
    }
}

/// Host-key algorithms offered when only a fingerprint is pinned (no SHA-1 RSA).
const MODERN_HOST_KEYS: &[Algorithm] = &[
    Algorithm::Ed25519,
    Algorithm::Ecdsa {
        curve: russh::keys::EcdsaCurve::NistP256,
    },
    Algorithm::Ecdsa {
        curve: russh::keys::EcdsaCurve::NistP384,
    },
    Algorithm::Ecdsa {
        curve: russh::keys::EcdsaCurve::NistP521,
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha512),
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha256),
    },
];

impl HostKeyPin {
    /// `"SHA256:<43 base64 chars>"` as `ssh-keygen -lf` prints it, or an OpenSSH public key
    /// line (`ssh-ed25519 AAAA... [comment]`, as in known_hosts after the host field).
    pub fn parse(s: &str) -> Result<Self, SshError> {
        let s = s.trim();
        if s.starts_with("SHA256:") {
            Self::from_fingerprint(s)
        } else {
            Self::from_public_key(s)
        }
    }

    /// A pin by SHA-256 fingerprint only.
    pub fn from_fingerprint(fp: &str) -> Result<Self, SshError> {
        let b64 = fp.strip_prefix("SHA256:").ok_or_else(|| {
            SshError::InvalidTarget("host key fingerprint must start with \"SHA256:\"".into())
        })?;
        let ok = b64.len() == 43
            && b64
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/');
        if !ok {
            return Err(SshError::InvalidTarget(
                "host key fingerprint must be \"SHA256:\" and 43 base64 characters (ssh-keygen -lf)"
                    .into(),
            ));
        }
        Ok(Self {
            fingerprint: fp.to_string(),
            key: None,
        })
    }

    /// A pin by full public key (OpenSSH format); certificates are refused.
    pub fn from_public_key(line: &str) -> Result<Self, SshError> {
        if line.len() > 16 * 1024 {
            return Err(SshError::InvalidTarget(
                "pinned public key is too long".into(),
            ));
        }
        let key = PublicKey::from_openssh(line).map_err(|e| {
            SshError::InvalidTarget(format!("pinned host key is not an OpenSSH public key: {e}"))
        })?;
        if matches!(key.algorithm(), Algorithm::Rsa { .. })
            && key.key_data().rsa().is_some_and(|k| k.key_size() < 2048)
        {
            return Err(SshError::InvalidTarget(
                "pinned RSA host key is shorter than 2048 bits".into(),
            ));
        }
        Ok(Self {
            fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
            key: Some(key),
        })
    }

    /// The pinned fingerprint, `"SHA256:..."`.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Whether `seen` is exactly the pinned key.
    pub fn matches(&self, seen: &PublicKey) -> bool {
        match &self.key {
            Some(k) => k.key_data() == seen.key_data(),
            None => seen.fingerprint(HashAlg::Sha256).to_string() == self.fingerprint,
        }
    }

    /// The host-key algorithms to offer: the pinned key's only, or the modern set.
    pub fn algorithms(&self) -> Vec<Algorithm> {
        match self.key.as_ref().map(PublicKey::algorithm) {
            Some(Algorithm::Rsa { .. }) => vec![
                Algorithm::Rsa {
                    hash: Some(HashAlg::Sha512),
                },
                Algorithm::Rsa {
                    hash: Some(HashAlg::Sha256),
                },
            ],
            Some(a) => vec![a],
            None => MODERN_HOST_KEYS.to_vec(),
        }
    }
}

/// One host to run on. Cheap to clone (the key is shared).
#[derive(Clone)]
pub struct SshTarget {
    host: String,
    port: u16,
    user: String,
    key: Arc<PrivateKey>,
    pin: HostKeyPin,
}

impl fmt::Debug for SshTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("SshTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("pin", &self.pin)
            .finish_non_exhaustive()
    }
}

impl SshTarget {
    /// Validates every part. `private_key` is the OpenSSH PEM text a Credential of kind
    /// SSH_PRIVATE_KEY holds (unencrypted: muster encrypts credentials at rest itself).
    pub fn new(
        host: &str,
        port: u16,
        user: &str,
        private_key: &[u8],
        pin: HostKeyPin,
    ) -> Result<Self, SshError> {
        validate_host(host)?;
        if port == 0 {
            return Err(SshError::InvalidTarget("port 0".into()));
        }
        validate_user(user)?;
        Ok(Self {
            host: host.to_string(),
            port,
            user: user.to_string(),
            key: Arc::new(parse_private_key(private_key)?),
            pin,
        })
    }

    /// From a device's `SshEndpoint` (port 0 means 22) and the secret of its credential.
    pub fn from_endpoint(
        ep: &muster::pb::SshEndpoint,
        private_key: &[u8],
    ) -> Result<Self, SshError> {
        let port = match ep.port {
            0 => 22,
            p => u16::try_from(p)
                .map_err(|_| SshError::InvalidTarget(format!("port {p} is out of range")))?,
        };
        let pin = HostKeyPin::parse(&ep.host_key_fingerprint)?;
        Self::new(&ep.host, port, &ep.user, private_key, pin)
    }

    pub fn host(&self) -> &str {
        &self.host
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn user(&self) -> &str {
        &self.user
    }
    pub fn pin(&self) -> &HostKeyPin {
        &self.pin
    }
    pub(crate) fn key(&self) -> Arc<PrivateKey> {
        Arc::clone(&self.key)
    }

    /// `host:port` (IPv6 literals bracketed) for messages and connecting.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn validate_host(host: &str) -> Result<(), SshError> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && !host.starts_with('-')
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b':' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(SshError::InvalidTarget(format!(
            "host {:?} is not a host name or IP address",
            truncate(host)
        )))
    }
}

fn validate_user(user: &str) -> Result<(), SshError> {
    let ok = !user.is_empty()
        && user.len() <= 32
        && !user.starts_with('-')
        && user
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(SshError::InvalidTarget(format!(
            "user {:?} is not a valid login name ([A-Za-z0-9._-], at most 32)",
            truncate(user)
        )))
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

fn parse_private_key(pem: &[u8]) -> Result<PrivateKey, SshError> {
    if pem.len() > 64 * 1024 {
        return Err(SshError::InvalidCredential("longer than 64 KiB".into()));
    }
    let text = std::str::from_utf8(pem)
        .map_err(|_| SshError::InvalidCredential("not UTF-8 PEM text".into()))?;
    let key = russh::keys::decode_secret_key(text, None).map_err(|e| {
        // The error names the format problem, never key material.
        SshError::InvalidCredential(format!(
            "cannot decode it ({e}); expected an unencrypted OpenSSH private key"
        ))
    })?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPFYtEzmbVLt2nh62dST25tx3bBKrn7ebRnn8UC4Qxf6 test";

    #[test]
    fn fingerprint_pins_are_validated() {
        assert!(HostKeyPin::parse("SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU").is_ok());
        for bad in [
            "",
            "MD5:aa",
            "SHA256:short",
            "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuF;",
        ] {
            assert!(HostKeyPin::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_public_key_pin_offers_only_its_algorithm_and_fingerprint_pins_never_sha1_rsa() {
        let pin = HostKeyPin::parse(ED).unwrap();
        assert_eq!(pin.algorithms(), vec![Algorithm::Ed25519]);
        assert!(pin.fingerprint().starts_with("SHA256:"));
        let key = PublicKey::from_openssh(ED).unwrap();
        assert!(pin.matches(&key));
        let by_fp = HostKeyPin::parse(pin.fingerprint()).unwrap();
        assert!(by_fp.matches(&key));
        assert!(!by_fp.algorithms().contains(&Algorithm::Rsa { hash: None }));
    }

    #[test]
    fn hostile_hosts_users_and_keys_are_refused() {
        let pin = HostKeyPin::parse(ED).unwrap();
        for (h, u) in [
            ("a;b", "root"),
            ("-oProxy", "root"),
            ("h", "ro ot"),
            ("h", "-l"),
            ("", "r"),
        ] {
            assert!(matches!(
                SshTarget::new(h, 22, u, b"x", pin.clone()),
                Err(SshError::InvalidTarget(_))
            ));
        }
        let e = SshTarget::new("h", 22, "root", b"-----BEGIN nonsense", pin).unwrap_err();
        assert!(matches!(e, SshError::InvalidCredential(_)), "{e}");
    }
}
