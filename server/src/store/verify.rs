//! Recomputing the audit hash chain, in full or from an anchor (the head a previous verify
//! found intact), so a routine verify reads only what was appended since.

use sled::Tree;

use super::{ChainAnchor, ChainReport, StoreError, keys, record};

fn be(v: &[u8]) -> Result<u64, StoreError> {
    keys::be_u64(v).ok_or_else(|| StoreError::Corrupt("event key is not 8 bytes".into()))
}

/// Checks the chain over revisions (anchor, upto] (or [1, upto] without an anchor). The
/// anchor's own record is re-hashed first: if it changed since it was verified, the tail
/// after it cannot be trusted either.
pub(super) fn verify(
    tree: &Tree,
    upto: u64,
    anchor: Option<ChainAnchor>,
) -> Result<ChainReport, StoreError> {
    let anchor = anchor.filter(|a| a.revision > 0 && a.revision <= upto);
    let mut report = ChainReport {
        revision: upto,
        head: record::GENESIS,
        from_revision: anchor.map_or(0, |a| a.revision),
        ..ChainReport::default()
    };
    // The hash the next record must link to; None while records are unchained (layout 1).
    let mut expected_prev: Option<[u8; 32]> = None;
    let mut previous_revision = 0u64;
    if let Some(a) = anchor {
        let broken = |why: &str| {
            Ok(ChainReport {
                broken: Some((a.revision, why.to_string())),
                ..report.clone()
            })
        };
        let Some(v) = tree.get(keys::event(a.revision))? else {
            return broken("the last verified entry is gone");
        };
        match record::check_link(&v) {
            Ok(record::LinkCheck::Unchained) if a.hash == record::GENESIS => {}
            Ok(record::LinkCheck::Chained {
                link, content_ok, ..
            }) if content_ok && link.hash == a.hash => expected_prev = Some(link.hash),
            Ok(_) => {
                return broken(
                    "the last verified entry changed since it was verified (the entry was modified)",
                );
            }
            Err(e) => return broken(&format!("the record cannot be read: {e}")),
        }
        report.head = a.hash;
        report.head_revision = a.revision;
        previous_revision = a.revision;
    }
    let start = keys::event(previous_revision + 1);
    for item in tree.range(start..=keys::event(upto)) {
        let (k, v) = item?;
        let revision = be(&k)?;
        let broken = |why: String| {
            Ok(ChainReport {
                broken: Some((revision, why)),
                ..report.clone()
            })
        };
        let link = match record::check_link(&v) {
            Ok(l) => l,
            Err(e) => return broken(format!("the record cannot be read: {e}")),
        };
        match link {
            record::LinkCheck::Unchained => {
                if expected_prev.is_some() {
                    return broken("an unchained record follows chained ones".into());
                }
            }
            record::LinkCheck::Chained {
                link,
                content_ok,
                revision: inside,
            } => {
                let prev = expected_prev.unwrap_or(record::GENESIS);
                if link.prev != prev {
                    let what = if previous_revision + 1 != revision {
                        format!(
                            "records {}..{} are missing",
                            previous_revision + 1,
                            revision - 1
                        )
                    } else {
                        format!(
                            "it does not link to revision {previous_revision} (an entry was removed, inserted or rewritten)"
                        )
                    };
                    return broken(what);
                }
                if !content_ok {
                    return broken(
                        "its content does not match its hash (the entry was modified)".into(),
                    );
                }
                if inside != Some(revision) {
                    return broken("it is stored under another revision than it records".into());
                }
                expected_prev = Some(link.hash);
                report.head = link.hash;
            }
        }
        report.checked += 1;
        report.head_revision = revision;
        previous_revision = revision;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::{ChangeEntry, ChangeMeta};

    /// A tree holding a chained log of `n` changes; returns it and the hash of each revision.
    fn log(n: u64) -> (sled::Db, Vec<[u8; 32]>) {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut head = record::GENESIS;
        let mut hashes = vec![record::GENESIS];
        for rev in 1..=n {
            db.insert(keys::event(rev), append(&mut head, rev)).unwrap();
            hashes.push(head);
        }
        (db, hashes)
    }

    fn append(head: &mut [u8; 32], rev: u64) -> Vec<u8> {
        let c = ChangeEntry {
            revision: rev,
            kind: 1,
            name: format!("s{rev}"),
            id: format!("id{rev}"),
            labels: Default::default(),
            meta: ChangeMeta {
                reason: format!("reason-{rev:04}"),
                ..ChangeMeta::default()
            },
            before_revision: 0,
            before: None,
            after: Some(vec![1, 2, 3]),
            chain: None,
        };
        let (bytes, hash) = record::encode_change(&c, head).unwrap();
        *head = hash;
        bytes
    }

    fn tamper(db: &sled::Db, rev: u64) {
        let mut v = db.get(keys::event(rev)).unwrap().unwrap().to_vec();
        let at = v.windows(7).position(|w| w == b"reason-").unwrap();
        v[at] = b'R';
        db.insert(keys::event(rev), v).unwrap();
    }

    #[test]
    fn from_an_anchor_only_the_tail_is_checked_and_tampering_there_is_found() {
        let (db, hashes) = log(50);
        let full = verify(&db, 50, None).unwrap();
        assert_eq!((full.checked, full.broken.clone()), (50, None));
        assert_eq!(full.head, hashes[50]);
        let anchor = ChainAnchor {
            revision: full.head_revision,
            hash: full.head,
        };
        let mut head = hashes[50];
        for rev in 51..=60 {
            db.insert(keys::event(rev), append(&mut head, rev)).unwrap();
        }
        let tail = verify(&db, 60, Some(anchor)).unwrap();
        assert_eq!(tail.checked, 10, "only the ten new records are re-hashed");
        assert_eq!(
            (tail.from_revision, tail.head, tail.broken.clone()),
            (50, head, None)
        );

        tamper(&db, 55);
        let broken = verify(&db, 60, Some(anchor)).unwrap();
        assert_eq!(broken.broken.unwrap().0, 55);
        // The anchor's own record is re-hashed too.
        tamper(&db, 50);
        let broken = verify(&db, 60, Some(anchor)).unwrap();
        let (rev, why) = broken.broken.unwrap();
        assert_eq!(rev, 50);
        assert!(why.contains("modified"), "{why}");
        // Tampering before the anchor is what a full verify is for.
        let (db, hashes) = log(20);
        tamper(&db, 3);
        let anchor = ChainAnchor {
            revision: 20,
            hash: hashes[20],
        };
        assert!(verify(&db, 20, Some(anchor)).unwrap().broken.is_none());
        assert_eq!(verify(&db, 20, None).unwrap().broken.unwrap().0, 3);
    }
}
