//! Versioned on-disk records. These are the store's own types, encoded with postcard; the
//! enum tag is the record version, so a new layout adds a variant and old data stays readable.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    ChangeEntry, ChangeMeta, KindId, Refusal, RefusalKind, StoreError, StoredObject, StoredToken,
};

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
    V1 { name: String, role: String },
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
    }
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

pub fn encode_change(c: &ChangeEntry) -> Result<Vec<u8>, StoreError> {
    encode(
        "change",
        &ChangeRecord::V1(ChangeV1 {
            revision: c.revision,
            kind: c.kind,
            name: c.name.clone(),
            id: c.id.clone(),
            labels: pairs(&c.labels),
            meta: meta_v1(&c.meta),
            before_revision: c.before_revision,
            after: c.after.clone(),
        }),
    )
}

pub fn decode_change(bytes: &[u8]) -> Result<ChangeEntry, StoreError> {
    let ChangeRecord::V1(c) = postcard::from_bytes(bytes).map_err(|e| corrupt("change", e))?;
    Ok(ChangeEntry {
        revision: c.revision,
        kind: c.kind,
        name: c.name,
        id: c.id,
        labels: c.labels.into_iter().collect(),
        meta: meta_from(c.meta),
        before_revision: c.before_revision,
        before: None,
        after: c.after,
    })
}

pub fn encode_refusal(r: &Refusal) -> Result<Vec<u8>, StoreError> {
    encode(
        "refusal",
        &RefusalRecord::V1(RefusalV1 {
            seq: r.seq,
            kind: r.kind,
            name: r.name.clone(),
            meta: meta_v1(&r.meta),
            denied: r.refusal == RefusalKind::Denied,
            message: r.message.clone(),
        }),
    )
}

pub fn decode_refusal(bytes: &[u8]) -> Result<Refusal, StoreError> {
    let RefusalRecord::V1(r) = postcard::from_bytes(bytes).map_err(|e| corrupt("refusal", e))?;
    Ok(Refusal {
        seq: r.seq,
        kind: r.kind,
        name: r.name,
        meta: meta_from(r.meta),
        refusal: if r.denied {
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
        &TokenRecord::V1 {
            name: t.name.clone(),
            role: t.role.clone(),
        },
    )
}

pub fn decode_token(hash: String, bytes: &[u8]) -> Result<StoredToken, StoreError> {
    let TokenRecord::V1 { name, role } =
        postcard::from_bytes(bytes).map_err(|e| corrupt("token", e))?;
    Ok(StoredToken { hash, name, role })
}

#[cfg(test)]
mod tests {
    use super::*;

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
