//! Sections of `muster.v1.Facts`: the unit of delta reporting. The agent hashes each section
//! to decide what to resend; the server stores each one as its own record. Both must cut the
//! facts the same way, so the cut lives here.

use prost::Message;
use sha2::{Digest, Sha256};

/// Numbers of the `Facts` fields, i.e. the sections.
pub const SECTIONS: [u8; 13] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13];

/// Splits facts into their sections: (section number, encoded `Facts` holding only it).
pub fn split(f: &crate::pb::Facts) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut one = |n: u8, part: crate::pb::Facts| out.push((n, part.encode_to_vec()));
    let empty = crate::pb::Facts::default;
    if let Some(v) = &f.os {
        one(
            1,
            crate::pb::Facts {
                os: Some(v.clone()),
                ..empty()
            },
        );
    }
    if let Some(v) = &f.cpu {
        one(
            2,
            crate::pb::Facts {
                cpu: Some(v.clone()),
                ..empty()
            },
        );
    }
    if let Some(v) = f.memory_bytes {
        one(
            3,
            crate::pb::Facts {
                memory_bytes: Some(v),
                ..empty()
            },
        );
    }
    if let Some(v) = &f.nics {
        one(
            4,
            crate::pb::Facts {
                nics: Some(v.clone()),
                ..empty()
            },
        );
    }
    if let Some(v) = &f.disks {
        one(
            5,
            crate::pb::Facts {
                disks: Some(v.clone()),
                ..empty()
            },
        );
    }
    if let Some(v) = &f.packages {
        one(
            6,
            crate::pb::Facts {
                packages: Some(v.clone()),
                ..empty()
            },
        );
    }
    if let Some(v) = &f.firmware {
        one(
            7,
            crate::pb::Facts {
                firmware: Some(v.clone()),
                ..empty()
            },
        );
    }
    if let Some(v) = f.power {
        one(
            8,
            crate::pb::Facts {
                power: Some(v),
                ..empty()
            },
        );
    }
    if let Some(v) = &f.sensors {
        one(
            9,
            crate::pb::Facts {
                sensors: Some(v.clone()),
                ..empty()
            },
        );
    }
    if let Some(v) = &f.fru {
        one(
            10,
            crate::pb::Facts {
                fru: Some(v.clone()),
                ..empty()
            },
        );
    }
    if let Some(v) = &f.smart {
        one(
            11,
            crate::pb::Facts {
                smart: Some(v.clone()),
                ..empty()
            },
        );
    }
    if let Some(v) = &f.external_json {
        one(
            12,
            crate::pb::Facts {
                external_json: Some(v.clone()),
                ..empty()
            },
        );
    }
    if let Some(v) = &f.vms {
        one(
            13,
            crate::pb::Facts {
                vms: Some(v.clone()),
                ..empty()
            },
        );
    }
    out
}

/// Hex SHA-256 of a set of (section, section hash) pairs: the facts hash a delta builds on.
pub fn facts_hash<'a>(sections: impl IntoIterator<Item = (u8, &'a str)>) -> String {
    let mut h = Sha256::new();
    for (n, hash) in sections {
        h.update([n]);
        h.update(hash.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Hex SHA-256 of one encoded section.
pub fn section_hash(encoded: &[u8]) -> String {
    hex::encode(Sha256::digest(encoded))
}
