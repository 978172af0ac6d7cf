//! The enrollment records as stored, and their keys. Auxiliary records, versioned like every
//! stored record (a postcard enum whose variant is the version: variants are only appended):
//! `ag/tok/<sha256 of token>` a one-time token (device, expiry, used), `ag/id/<certificate
//! fingerprint>` the device an identity speaks for, `ag/dev/<device>` its active identity and
//! any enrollment held for approval, `ag/pend/<sha256 of pending id>` the held enrollment.
//! Secrets (tokens, pending ids) are only ever stored as their SHA-256.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::renew;
use crate::aux_keys;
use crate::model::ApiError;

/// Prefix of the identity records (fingerprint after it).
pub(super) const IDENTITY_PREFIX: &[u8] = aux_keys::AGENT_IDENTITY.as_bytes();
/// Prefix of the held enrollments.
pub(super) const PENDING_PREFIX: &[u8] = aux_keys::AGENT_PENDING.as_bytes();

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) enum Record {
    Token(TokenV1),
    Identity(IdentityV1),
    Device(DeviceV1),
    Pending(PendingV1),
    /// Appended (postcard numbers variants in order): older records decode unchanged.
    IdentityV2(renew::IdentityV2),
    /// A renewed identity, with what it was renewed to (so a retry gets the same answer).
    IdentityV3(renew::IdentityV3),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct TokenV1 {
    pub device: String,
    pub expires_nanos: i64,
    pub used: bool,
    pub created_by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct IdentityV1 {
    pub device: String,
    /// The id of the device it was issued for: a device deleted and created again under the
    /// same name is another device, which this identity must not speak for.
    pub device_id: String,
    pub since_nanos: i64,
    pub hostname: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct DeviceV1 {
    /// Fingerprint of the active identity.
    pub active: Option<String>,
    pub active_since_nanos: i64,
    pub hostname: String,
    /// Hash of the pending id of a held enrollment.
    pub pending: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct PendingV1 {
    pub device: String,
    pub csr_pem: String,
    pub key_fingerprint: String,
    pub hostname: String,
    pub since_nanos: i64,
    pub approved: bool,
}

pub(super) fn encode(r: &Record) -> Result<Vec<u8>, ApiError> {
    postcard::to_stdvec(r).map_err(|e| ApiError::Internal(format!("encoding agent record: {e}")))
}

pub(super) fn decode(b: &[u8]) -> Result<Record, ApiError> {
    postcard::from_bytes(b).map_err(|e| ApiError::Internal(format!("corrupt agent record: {e}")))
}

/// Hex SHA-256 of a secret: what is stored instead of it.
pub(super) fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

pub(super) fn token_key(hash: &str) -> Vec<u8> {
    aux_keys::key(aux_keys::AGENT_TOKEN, hash)
}

pub(super) fn identity_key(fp: &str) -> Vec<u8> {
    let mut k = IDENTITY_PREFIX.to_vec();
    k.extend_from_slice(fp.as_bytes());
    k
}

/// The fingerprint an identity key names.
pub(super) fn fingerprint_of(key: &[u8]) -> String {
    String::from_utf8_lossy(key.strip_prefix(IDENTITY_PREFIX).unwrap_or(key)).into_owned()
}

pub(super) fn device_key(device: &str) -> Vec<u8> {
    aux_keys::key(aux_keys::AGENT_DEVICE, device)
}

pub(super) fn pending_key(hash: &str) -> Vec<u8> {
    let mut k = PENDING_PREFIX.to_vec();
    k.extend_from_slice(hash.as_bytes());
    k
}

/// 256 random bits, URL-safe, after `prefix` (which says what the secret is for).
pub(super) fn random_secret(prefix: &str) -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(b))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn samples() -> Vec<Record> {
        vec![
            Record::Token(TokenV1 {
                device: "web-01".into(),
                expires_nanos: 42,
                used: false,
                created_by: "oscar".into(),
            }),
            Record::Identity(IdentityV1 {
                device: "web-01".into(),
                device_id: "01J".into(),
                since_nanos: 7,
                hostname: "web-01.example".into(),
            }),
            Record::Device(DeviceV1 {
                active: Some("ab".into()),
                active_since_nanos: 9,
                hostname: "h".into(),
                pending: None,
            }),
            Record::Pending(PendingV1 {
                device: "web-01".into(),
                csr_pem: "csr".into(),
                key_fingerprint: "kf".into(),
                hostname: "h".into(),
                since_nanos: 3,
                approved: true,
            }),
        ]
    }

    #[test]
    fn records_round_trip() {
        for r in samples() {
            let back = decode(&encode(&r).unwrap()).unwrap();
            assert_eq!(format!("{back:?}"), format!("{r:?}"));
        }
        assert!(matches!(
            decode(b"\xff\xff\xff"),
            Err(ApiError::Internal(_))
        ));
    }

    /// The variant number is the record's version on disk: a record written by an older
    /// server keeps its meaning. Pinned bytes, so reordering the enum fails here.
    #[test]
    fn stored_bytes_are_stable() {
        let token = encode(&samples()[0]).unwrap();
        assert_eq!(token[0], 0, "Token is variant 0");
        assert_eq!(
            token,
            [
                0, 6, b'w', b'e', b'b', b'-', b'0', b'1', 84, 0, 5, b'o', b's', b'c', b'a', b'r'
            ]
        );
        assert_eq!(
            encode(&samples()[1]).unwrap()[0],
            1,
            "Identity is variant 1"
        );
        assert_eq!(encode(&samples()[2]).unwrap()[0], 2, "Device is variant 2");
        assert_eq!(encode(&samples()[3]).unwrap()[0], 3, "Pending is variant 3");
    }

    #[test]
    fn key_layout() {
        assert_eq!(token_key("aa"), b"ag/tok/aa");
        assert_eq!(identity_key("ff00"), b"ag/id/ff00");
        assert_eq!(fingerprint_of(&identity_key("ff00")), "ff00");
        assert_eq!(device_key("web-01"), b"ag/dev/web-01");
        assert_eq!(pending_key("bb"), b"ag/pend/bb");
        assert!(identity_key("x").starts_with(IDENTITY_PREFIX));
        assert!(pending_key("x").starts_with(PENDING_PREFIX));
    }

    #[test]
    fn secrets_are_random_and_hashed() {
        let a = random_secret("mst_enroll_");
        let b = random_secret("mst_enroll_");
        assert!(a.starts_with("mst_enroll_"));
        assert_eq!(
            a.len(),
            "mst_enroll_".len() + 43,
            "256 bits, base64 without padding"
        );
        assert_ne!(a, b);
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
