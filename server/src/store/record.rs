//! Versioned on-disk records. These are the store's own types, encoded with postcard; the
//! enum tag is the record version, so a new layout adds a variant and old data stays readable.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    ChainLink, ChangeEntry, ChangeMeta, KindId, Refusal, RefusalKind, StoreError, StoredObject,
    StoredToken,
};

/// The `prev` of the first chained record.
pub const GENESIS: [u8; 32] = [0; 32];

/// An object's current version without its body: the body is the `after` of the change record
/// at `revision`, so a write stores each body once.
#[derive(Serialize, Deserialize)]
enum EnvelopeRecord {
    V1(EnvelopeV1),
}

#[derive(Serialize, Deserialize)]
struct EnvelopeV1 {
    id: String,
    name: String,
    labels: Vec<(String, String)>,
    fields: Vec<(String, String)>,
    revision: u64,
}

#[derive(Serialize, Deserialize)]
struct ChangeMetaV1 {
    principal: String,
    verb: String,
    reason: String,
    ticket: String,
    origin: String,
    time_unix_nanos: i64,
}

#[derive(Serialize, Deserialize)]
enum ChangeRecord {
    V1(ChangeV1),
    /// Hash-chained: `content` is the encoded `ChangeV2`, and `hash` is SHA-256 over `prev`
    /// and exactly those bytes, so verification needs no re-encoding.
    V2 {
        #[serde(with = "serde_bytes")]
        content: Vec<u8>,
        prev: [u8; 32],
        hash: [u8; 32],
    },
}

#[derive(Serialize, Deserialize)]
struct ChangeV2 {
    revision: u64,
    kind: u8,
    name: String,
    id: String,
    labels: Vec<(String, String)>,
    meta: ChangeMetaV2,
    before_revision: u64,
    #[serde(with = "serde_bytes")]
    after: Option<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
struct ChangeMetaV2 {
    principal: String,
    verb: String,
    reason: String,
    ticket: String,
    origin: String,
    time_unix_nanos: i64,
    change_set: u64,
    change_set_size: u32,
}

#[derive(Serialize, Deserialize)]
struct ChangeV1 {
    revision: u64,
    kind: u8,
    name: String,
    id: String,
    labels: Vec<(String, String)>,
    meta: ChangeMetaV1,
    before_revision: u64,
    /// The new body; None for a delete. The old body is the `after` of `before_revision`.
    #[serde(with = "serde_bytes")]
    after: Option<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
enum RefusalRecord {
    V1(RefusalV1),
    /// V1 plus an outcome byte, for accepted token actions (see `RefusalKind::Accepted`).
    V2(RefusalV1, u8),
}

#[derive(Serialize, Deserialize)]
struct RefusalV1 {
    seq: u64,
    kind: u8,
    name: String,
    meta: ChangeMetaV1,
    denied: bool,
    message: String,
}

#[derive(Serialize, Deserialize)]
enum TokenRecord {
    /// Written only for the first-start admin token, before tokens had a lifecycle.
    V1 {
        name: String,
        role: String,
    },
    V2(TokenV2),
}

#[derive(Serialize, Deserialize)]
struct TokenV2 {
    name: String,
    role: String,
    selector: String,
    created_nanos: i64,
    expires_nanos: i64,
    created_by: String,
    last_used_nanos: i64,
    bootstrap: bool,
}

fn corrupt(what: &str, e: postcard::Error) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn encode<T: Serialize>(what: &str, v: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(v).map_err(|e| corrupt(what, e))
}

fn pairs(m: &BTreeMap<String, String>) -> Vec<(String, String)> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn meta_v1(m: &ChangeMeta) -> ChangeMetaV1 {
    ChangeMetaV1 {
        principal: m.principal.clone(),
        verb: m.verb.clone(),
        reason: m.reason.clone(),
        ticket: m.ticket.clone(),
        origin: m.origin.clone(),
        time_unix_nanos: m.time_unix_nanos,
    }
}

fn meta_from(m: ChangeMetaV1) -> ChangeMeta {
    ChangeMeta {
        principal: m.principal,
        verb: m.verb,
        reason: m.reason,
        ticket: m.ticket,
        origin: m.origin,
        time_unix_nanos: m.time_unix_nanos,
        change_set: 0,
        change_set_size: 0,
    }
}

fn chain_hash(prev: &[u8; 32], content: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(content);
    h.finalize().into()
}

pub fn encode_envelope(o: &StoredObject) -> Result<Vec<u8>, StoreError> {
    encode(
        "envelope",
        &EnvelopeRecord::V1(EnvelopeV1 {
            id: o.id.clone(),
            name: o.name.clone(),
            labels: pairs(&o.labels),
            fields: pairs(&o.fields),
            revision: o.revision,
        }),
    )
}

/// An object without its body (the body is left empty: it lives in the change record).
pub fn decode_envelope(kind: KindId, bytes: &[u8]) -> Result<StoredObject, StoreError> {
    let EnvelopeRecord::V1(e) = postcard::from_bytes(bytes).map_err(|e| corrupt("envelope", e))?;
    Ok(StoredObject {
        kind,
        id: e.id,
        name: e.name,
        labels: e.labels.into_iter().collect(),
        fields: e.fields.into_iter().collect(),
        revision: e.revision,
        body: Vec::new(),
    })
}

/// Encodes a change record linked to `prev`; returns the bytes and the record's hash.
pub fn encode_change(c: &ChangeEntry, prev: &[u8; 32]) -> Result<(Vec<u8>, [u8; 32]), StoreError> {
    let m = &c.meta;
    let content = encode(
        "change",
        &ChangeV2 {
            revision: c.revision,
            kind: c.kind,
            name: c.name.clone(),
            id: c.id.clone(),
            labels: pairs(&c.labels),
            meta: ChangeMetaV2 {
                principal: m.principal.clone(),
                verb: m.verb.clone(),
                reason: m.reason.clone(),
                ticket: m.ticket.clone(),
                origin: m.origin.clone(),
                time_unix_nanos: m.time_unix_nanos,
                change_set: m.change_set,
                change_set_size: m.change_set_size,
            },
            before_revision: c.before_revision,
            after: c.after.clone(),
        },
    )?;
    let hash = chain_hash(prev, &content);
    let bytes = encode(
        "change",
        &ChangeRecord::V2 {
            content,
            prev: *prev,
            hash,
        },
    )?;
    Ok((bytes, hash))
}

pub fn decode_change(bytes: &[u8]) -> Result<ChangeEntry, StoreError> {
    match postcard::from_bytes(bytes).map_err(|e| corrupt("change", e))? {
        ChangeRecord::V1(c) => Ok(ChangeEntry {
            revision: c.revision,
            kind: c.kind,
            name: c.name,
            id: c.id,
            labels: c.labels.into_iter().collect(),
            meta: meta_from(c.meta),
            before_revision: c.before_revision,
            before: None,
            after: c.after,
            chain: None,
        }),
        ChangeRecord::V2 {
            content,
            prev,
            hash,
        } => {
            let c: ChangeV2 = postcard::from_bytes(&content).map_err(|e| corrupt("change", e))?;
            Ok(ChangeEntry {
                revision: c.revision,
                kind: c.kind,
                name: c.name,
                id: c.id,
                labels: c.labels.into_iter().collect(),
                meta: ChangeMeta {
                    principal: c.meta.principal,
                    verb: c.meta.verb,
                    reason: c.meta.reason,
                    ticket: c.meta.ticket,
                    origin: c.meta.origin,
                    time_unix_nanos: c.meta.time_unix_nanos,
                    change_set: c.meta.change_set,
                    change_set_size: c.meta.change_set_size,
                },
                before_revision: c.before_revision,
                before: None,
                after: c.after,
                chain: Some(ChainLink { prev, hash }),
            })
        }
    }
}

/// What verifying one stored change record found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkCheck {
    /// Written before the chain existed (record version 1).
    Unchained,
    /// The stored link, whether the content still hashes to it, and the revision inside.
    Chained {
        link: ChainLink,
        content_ok: bool,
        revision: Option<u64>,
    },
}

/// Recomputes one record's hash from its stored bytes.
pub fn check_link(bytes: &[u8]) -> Result<LinkCheck, StoreError> {
    match postcard::from_bytes(bytes).map_err(|e| corrupt("change", e))? {
        ChangeRecord::V1(_) => Ok(LinkCheck::Unchained),
        ChangeRecord::V2 {
            content,
            prev,
            hash,
        } => {
            let revision = postcard::from_bytes::<ChangeV2>(&content)
                .ok()
                .map(|c| c.revision);
            Ok(LinkCheck::Chained {
                link: ChainLink { prev, hash },
                content_ok: chain_hash(&prev, &content) == hash,
                revision,
            })
        }
    }
}

/// Outcome byte of a V2 refusal record.
const OUTCOME_ACCEPTED: u8 = 1;

pub fn encode_refusal(r: &Refusal) -> Result<Vec<u8>, StoreError> {
    let v1 = RefusalV1 {
        seq: r.seq,
        kind: r.kind,
        name: r.name.clone(),
        meta: meta_v1(&r.meta),
        denied: r.refusal == RefusalKind::Denied,
        message: r.message.clone(),
    };
    // Refusals keep the V1 form so that older binaries still read them.
    let rec = match r.refusal {
        RefusalKind::Accepted => RefusalRecord::V2(v1, OUTCOME_ACCEPTED),
        _ => RefusalRecord::V1(v1),
    };
    encode("refusal", &rec)
}

pub fn decode_refusal(bytes: &[u8]) -> Result<Refusal, StoreError> {
    let (r, outcome) = match postcard::from_bytes(bytes).map_err(|e| corrupt("refusal", e))? {
        RefusalRecord::V1(r) => (r, 0),
        RefusalRecord::V2(r, o) => (r, o),
    };
    Ok(Refusal {
        seq: r.seq,
        kind: r.kind,
        name: r.name,
        meta: meta_from(r.meta),
        refusal: if outcome == OUTCOME_ACCEPTED {
            RefusalKind::Accepted
        } else if r.denied {
            RefusalKind::Denied
        } else {
            RefusalKind::Rejected
        },
        message: r.message,
    })
}

pub fn encode_token(t: &StoredToken) -> Result<Vec<u8>, StoreError> {
    encode(
        "token",
        &TokenRecord::V2(TokenV2 {
            name: t.name.clone(),
            role: t.role.clone(),
            selector: t.selector.clone(),
            created_nanos: t.created_nanos,
            expires_nanos: t.expires_nanos,
            created_by: t.created_by.clone(),
            last_used_nanos: t.last_used_nanos,
            bootstrap: t.bootstrap,
        }),
    )
}

pub fn decode_token(hash: String, bytes: &[u8]) -> Result<StoredToken, StoreError> {
    Ok(
        match postcard::from_bytes(bytes).map_err(|e| corrupt("token", e))? {
            // Only the first-start admin token was ever written as V1.
            TokenRecord::V1 { name, role } => StoredToken {
                hash,
                name,
                role,
                bootstrap: true,
                ..StoredToken::default()
            },
            TokenRecord::V2(t) => StoredToken {
                hash,
                name: t.name,
                role: t.role,
                selector: t.selector,
                created_nanos: t.created_nanos,
                expires_nanos: t.expires_nanos,
                created_by: t.created_by,
                last_used_nanos: t.last_used_nanos,
                bootstrap: t.bootstrap,
            },
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(revision: u64, reason: &str) -> ChangeEntry {
        ChangeEntry {
            revision,
            kind: 3,
            name: "web-01".into(),
            id: "01J".into(),
            labels: Default::default(),
            meta: ChangeMeta {
                reason: reason.into(),
                change_set: 4,
                change_set_size: 2,
                ..ChangeMeta::default()
            },
            before_revision: 0,
            before: None,
            after: Some(b"body".to_vec()),
            chain: None,
        }
    }

    #[test]
    fn token_records_round_trip_and_v1_is_the_bootstrap_token() {
        let t = StoredToken {
            hash: "ab".into(),
            name: "pay-ops".into(),
            role: "operator".into(),
            selector: "team=pay".into(),
            created_nanos: 1,
            expires_nanos: 2,
            created_by: "alice".into(),
            last_used_nanos: 3,
            bootstrap: false,
        };
        let back = decode_token("ab".into(), &encode_token(&t).unwrap()).unwrap();
        assert_eq!(back, t);
        // What servers before token lifecycles wrote for the first-start token.
        let v1 = postcard::to_stdvec(&TokenRecord::V1 {
            name: "admin".into(),
            role: "admin".into(),
        })
        .unwrap();
        let old = decode_token("cd".into(), &v1).unwrap();
        assert!(old.bootstrap && old.expires_nanos == 0 && old.name == "admin");
    }

    #[test]
    fn accepted_token_actions_round_trip_and_refusals_stay_v1() {
        let mut r = Refusal {
            seq: 7,
            kind: 0,
            name: "pay-ops".into(),
            meta: ChangeMeta::default(),
            refusal: RefusalKind::Accepted,
            message: "created token pay-ops".into(),
        };
        assert_eq!(decode_refusal(&encode_refusal(&r).unwrap()).unwrap(), r);
        r.refusal = RefusalKind::Denied;
        let bytes = encode_refusal(&r).unwrap();
        assert!(matches!(
            postcard::from_bytes::<RefusalRecord>(&bytes).unwrap(),
            RefusalRecord::V1(_)
        ));
        assert_eq!(decode_refusal(&bytes).unwrap(), r);
    }

    #[test]
    fn chained_records_round_trip_and_detect_a_changed_byte() {
        let (first, h1) = encode_change(&change(1, "first"), &GENESIS).unwrap();
        let (second, h2) = encode_change(&change(2, "second"), &h1).unwrap();
        let back = decode_change(&second).unwrap();
        assert_eq!(back.meta.reason, "second");
        assert_eq!(back.meta.change_set, 4);
        assert_eq!(back.chain, Some(ChainLink { prev: h1, hash: h2 }));
        assert!(matches!(
            check_link(&first).unwrap(),
            LinkCheck::Chained {
                content_ok: true,
                revision: Some(1),
                ..
            }
        ));
        // Flip one byte of the reason: it still decodes, but no longer hashes to its link.
        let mut tampered = second.clone();
        let at = tampered.windows(6).position(|w| w == b"second").unwrap();
        tampered[at] = b'S';
        assert_eq!(decode_change(&tampered).unwrap().meta.reason, "Second");
        assert!(matches!(
            check_link(&tampered).unwrap(),
            LinkCheck::Chained {
                content_ok: false,
                ..
            }
        ));
    }

    #[test]
    fn envelope_round_trip_and_version_tag() {
        let o = StoredObject {
            kind: 3,
            id: "01J".into(),
            name: "web-01".into(),
            labels: [("role".to_string(), "web".to_string())].into(),
            fields: [("site".to_string(), "fra1".to_string())].into(),
            revision: 7,
            body: Vec::new(),
        };
        let bytes = encode_envelope(&o).unwrap();
        assert_eq!(bytes[0], 0, "first byte is the record version tag (V1 = 0)");
        assert_eq!(decode_envelope(3, &bytes).unwrap(), o);
        assert!(decode_envelope(3, &[9, 9]).is_err());
    }
}
