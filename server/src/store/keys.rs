//! Key layout of the single sled tree. One tree, so that `apply_batch` makes an object, its
//! index entries, its event and the revision counter atomic together.
//!
//! | prefix | key                                   | value                  |
//! |--------|---------------------------------------|------------------------|
//! | `o`    | kind, id                              | object record          |
//! | `n`    | kind, name                            | id                     |
//! | `l`    | kind, label key, 0, value, 0, id      | (empty)                |
//! | `f`    | kind, field, 0, value, 0, id          | (empty)                |
//! | `h`    | kind, name, 0, revision               | (empty): history index |
//! | `e`    | revision (u64 BE)                     | change record          |
//! | `x`    | refusal sequence (u64 BE)             | refusal record         |
//! | `t`    | token hash                            | token record           |
//! | `m`    | name                                  | counters               |

use super::KindId;

pub const OBJECT: u8 = b'o';
pub const NAME: u8 = b'n';
pub const LABEL: u8 = b'l';
pub const FIELD: u8 = b'f';
pub const HISTORY: u8 = b'h';
pub const EVENT: u8 = b'e';
pub const REFUSAL: u8 = b'x';
pub const TOKEN: u8 = b't';

pub const META_REVISION: &[u8] = b"mrevision";
pub const META_REFUSAL_SEQ: &[u8] = b"mrefusal_seq";
pub const META_FORMAT: &[u8] = b"mformat";
/// Layout version written at creation; a store with another version is refused at open.
pub const FORMAT_VERSION: u64 = 1;

pub fn meta_count(kind: KindId) -> Vec<u8> {
    let mut k = b"mcount".to_vec();
    k.push(kind);
    k
}

pub fn object(kind: KindId, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + id.len());
    k.push(OBJECT);
    k.push(kind);
    k.extend_from_slice(id.as_bytes());
    k
}

pub fn object_prefix(kind: KindId) -> Vec<u8> {
    vec![OBJECT, kind]
}

pub fn name(kind: KindId, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + name.len());
    k.push(NAME);
    k.push(kind);
    k.extend_from_slice(name.as_bytes());
    k
}

/// Prefix of all index entries for `key == value` (label or field index).
pub fn index_value_prefix(tag: u8, kind: KindId, key: &str, value: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + key.len() + value.len());
    k.push(tag);
    k.push(kind);
    k.extend_from_slice(key.as_bytes());
    k.push(0);
    k.extend_from_slice(value.as_bytes());
    k.push(0);
    k
}

pub fn index_entry(tag: u8, kind: KindId, key: &str, value: &str, id: &str) -> Vec<u8> {
    let mut k = index_value_prefix(tag, kind, key, value);
    k.extend_from_slice(id.as_bytes());
    k
}

pub fn history_prefix(kind: KindId, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + name.len());
    k.push(HISTORY);
    k.push(kind);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k
}

pub fn history(kind: KindId, name: &str, revision: u64) -> Vec<u8> {
    let mut k = history_prefix(kind, name);
    k.extend_from_slice(&revision.to_be_bytes());
    k
}

pub fn event(revision: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = EVENT;
    k[1..].copy_from_slice(&revision.to_be_bytes());
    k
}

pub fn refusal(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = REFUSAL;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub fn token(hash: &str) -> Vec<u8> {
    let mut k = vec![TOKEN];
    k.extend_from_slice(hash.as_bytes());
    k
}

/// Reads a big-endian u64 from the last 8 bytes of a key or from a value.
pub fn be_u64(bytes: &[u8]) -> Option<u64> {
    let tail = bytes.get(bytes.len().checked_sub(8)?..)?;
    Some(u64::from_be_bytes(tail.try_into().ok()?))
}
