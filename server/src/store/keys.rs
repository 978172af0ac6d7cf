//! Key layout of the single sled tree. One tree, so that one `apply_batch` makes a whole
//! group of writes (objects, envelopes, events, history) atomic together.
//!
//! | prefix | key                                   | value                                   |
//! |--------|---------------------------------------|-----------------------------------------|
//! | `o`    | kind, id                              | envelope: name, labels, fields, revision|
//! | `h`    | kind, name, 0, revision               | (empty): one resource's history         |
//! | `e`    | revision (u64 BE)                     | change record: event, audit, and body   |
//! | `x`    | refusal sequence (u64 BE)             | refusal record                          |
//! | `t`    | token hash                            | token record                            |
//! | `m`    | name                                  | store metadata                          |
//! | `a`    | chosen by the layer above             | auxiliary records (observed facts, ...) |
//!
//! Auxiliary prefixes in use (owner): `ob/`, `ox/`, `ol` (observed.rs), `ag/` (agents.rs),
//! `km` (keys/), `dr/`, `dr-followed` (drift engine), `cp/` (campaigns/records.rs).
//!
//! An object's body is stored once, as the `after` of the change record at the object's revision:
//! sled charges ~20-35 us per 4 KB value, so writing it twice (object and event) halved the
//! write rate. The name, label and field indexes live in memory, rebuilt from the `o` records at
//! open (sled charges ~7 us per extra key in a batch, and an index derived at start-up can never
//! disagree with the records on disk). The revision is the last `e` key.

use super::KindId;

pub const OBJECT: u8 = b'o';
pub const HISTORY: u8 = b'h';
pub const EVENT: u8 = b'e';
pub const REFUSAL: u8 = b'x';
pub const TOKEN: u8 = b't';
/// Auxiliary records: the layer above owns the rest of the key.
pub const AUX: u8 = b'a';

pub fn aux(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(AUX);
    k.extend_from_slice(key);
    k
}

pub const META_REFUSAL_SEQ: &[u8] = b"mrefusal_seq";
pub const META_FORMAT: &[u8] = b"mformat";
/// Layout version written at creation; a store with another version is refused at open.
/// 2: change records are hash-chained (a layout-1 store is upgraded in place at open).
/// 3: the observed layer moved its bulky records to their own auxiliary key range
/// (`observed::upgrade_layout`); nothing changed here, but a musterd that knows only layout 2
/// would not find them, so it must refuse the store.
pub const FORMAT_VERSION: u64 = 3;

pub fn object(kind: KindId, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + id.len());
    k.push(OBJECT);
    k.push(kind);
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
