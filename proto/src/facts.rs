//! Sections of `muster.v1.Facts`: the unit of delta reporting. The agent hashes each section
//! to decide what to resend; the server stores each one as its own record. Both must cut the
//! facts the same way, so the cut lives here.

use prost::Message;
use sha2::{Digest, Sha256};

/// Numbers of the `Facts` fields, i.e. the sections.
pub const SECTIONS: [u8; 13] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13];

/// Splits facts into their sections: (section number, the encoding of a `Facts` holding only
/// that field). Encodes each field in place (no copy of the 1,500-package list per report).
pub fn split(f: &crate::pb::Facts) -> Vec<(u8, Vec<u8>)> {
    use prost::encoding;
    let mut out = Vec::new();
    fn msg<M: Message>(out: &mut Vec<(u8, Vec<u8>)>, n: u8, m: &Option<M>) {
        if let Some(m) = m {
            let mut b = Vec::new();
            encoding::message::encode(u32::from(n), m, &mut b);
            out.push((n, b));
        }
    }
    msg(&mut out, 1, &f.os);
    msg(&mut out, 2, &f.cpu);
    if let Some(v) = f.memory_bytes {
        let mut b = Vec::new();
        encoding::uint64::encode(3, &v, &mut b);
        out.push((3, b));
    }
    msg(&mut out, 4, &f.nics);
    msg(&mut out, 5, &f.disks);
    msg(&mut out, 6, &f.packages);
    msg(&mut out, 7, &f.firmware);
    if let Some(v) = f.power {
        let mut b = Vec::new();
        encoding::int32::encode(8, &v, &mut b);
        out.push((8, b));
    }
    msg(&mut out, 9, &f.sensors);
    msg(&mut out, 10, &f.fru);
    msg(&mut out, 11, &f.smart);
    if let Some(v) = &f.external_json {
        let mut b = Vec::new();
        encoding::string::encode(12, v, &mut b);
        out.push((12, b));
    }
    msg(&mut out, 13, &f.vms);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::pb;

    #[test]
    fn each_section_encodes_as_a_facts_holding_only_it() {
        let f = pb::Facts {
            os: Some(pb::OsFacts {
                hostname: "h".into(),
                ..Default::default()
            }),
            memory_bytes: Some(0),
            power: Some(1),
            external_json: Some("{}".into()),
            packages: Some(pb::PackageList::default()),
            ..Default::default()
        };
        let parts = split(&f);
        assert_eq!(
            parts.iter().map(|p| p.0).collect::<Vec<_>>(),
            [1, 3, 6, 8, 12]
        );
        let mut back = pb::Facts::default();
        for (n, b) in &parts {
            let one = pb::Facts::decode(b.as_slice()).unwrap();
            assert_eq!(split(&one), vec![(*n, b.clone())]);
            back.merge(b.as_slice()).unwrap();
        }
        assert_eq!(back, f);
    }
}
