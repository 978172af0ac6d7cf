//! Building reports: full facts first, then deltas. The agent remembers, per section of
//! `Facts`, the hash of what the server holds once every report it has spooled is applied (the
//! chain); a section is resent only when its hash changes, and each report names the facts hash
//! it builds on, so the server can tell when it holds something else and ask for a full report.

use std::collections::BTreeMap;

use muster::facts::{self, Section};
use muster::pb;
use prost::Message;
use serde::{Deserialize, Serialize};

/// What the server will hold once the spooled reports are applied.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Chain {
    /// Section wire number (`Section::number`) → hash of its encoding. Numbers rather than
    /// the enum, so the state file reads as every earlier agent wrote it.
    pub sections: BTreeMap<u8, String>,
    /// Hash over `sections`; empty before the first report.
    pub facts_hash: String,
}

impl Chain {
    /// The report body for `current` (complete facts, as far as collectors succeeded):
    /// returns (base hash, the sections to send, the facts hash after it). A full report sends
    /// every section and builds on nothing.
    pub fn advance(&mut self, current: &pb::Facts, full: bool) -> (String, pb::Facts, String) {
        self.advance_except(current, full, &[])
    }

    /// `advance`, leaving the sections in `skip` out of the report (too large to send). The
    /// chain stays what the server will hold: a skipped section keeps its old hash after a
    /// delta (the server keeps its old value) and has none after a full report (the server
    /// drops what a full report lacks).
    pub fn advance_except(
        &mut self,
        current: &pb::Facts,
        full: bool,
        skip: &[Section],
    ) -> (String, pb::Facts, String) {
        let base = if full {
            String::new()
        } else {
            self.facts_hash.clone()
        };
        if full {
            self.sections.clear();
        }
        let mut delta = pb::Facts::default();
        for (s, bytes) in facts::split(current) {
            if skip.contains(&s) {
                continue;
            }
            let h = facts::section_hash(&bytes);
            if full || self.sections.get(&s.number()) != Some(&h) {
                // Each part is a Facts holding one field; merging them rebuilds the delta.
                let _ = delta.merge(bytes.as_slice());
                self.sections.insert(s.number(), h);
            }
        }
        self.facts_hash = facts::facts_hash(
            self.sections
                .iter()
                .filter_map(|(n, h)| Some((Section::from_number(*n)?, h.as_str()))),
        );
        (base, delta, self.facts_hash.clone())
    }
}

/// Overlays the sections of `newer` on `older` (section by section, never field by field,
/// so lists are replaced, not appended).
pub fn overlay(older: &pb::Facts, newer: &pb::Facts) -> pb::Facts {
    let newer_parts = facts::split(newer);
    let replaced: Vec<Section> = newer_parts.iter().map(|p| p.0).collect();
    let mut out = pb::Facts::default();
    for (_, bytes) in facts::split(older)
        .into_iter()
        .filter(|(n, _)| !replaced.contains(n))
        .chain(newer_parts)
    {
        let _ = out.merge(bytes.as_slice());
    }
    out
}

/// One report in place of two consecutive ones (the spool's way of staying bounded): the
/// facts of both, the newer sequence, and every SEL event of both, unless the newer one
/// follows a SEL clear (then the older events were cleared on the BMC itself).
pub fn coalesce(older: pb::ReportRequest, newer: pb::ReportRequest) -> pb::ReportRequest {
    let (sel, sel_reset) = if newer.sel_reset {
        (newer.sel.clone(), true)
    } else {
        let mut s = older.sel.clone();
        s.extend(newer.sel.iter().cloned());
        (s, older.sel_reset)
    };
    // A full report replaces everything before it: it stays full.
    if newer.base_hash.is_empty() {
        return pb::ReportRequest {
            sel,
            sel_reset,
            ..newer
        };
    }
    let facts = match (&older.facts, &newer.facts) {
        (Some(a), Some(b)) => Some(overlay(a, b)),
        (a, b) => b.clone().or_else(|| a.clone()),
    };
    pb::ReportRequest {
        base_hash: older.base_hash,
        facts,
        sel,
        sel_reset,
        ..newer
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn facts(host: &str, pkgs: &[&str]) -> pb::Facts {
        pb::Facts {
            os: Some(pb::OsFacts {
                hostname: host.into(),
                ..Default::default()
            }),
            packages: Some(pb::PackageList {
                items: pkgs
                    .iter()
                    .map(|p| pb::InstalledPackage {
                        name: (*p).into(),
                        version: "1".into(),
                        arch: "amd64".into(),
                    })
                    .collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn deltas_send_only_changed_sections() {
        let mut c = Chain::default();
        let (base, d, h1) = c.advance(&facts("a", &["bash", "vim"]), true);
        assert_eq!(base, "");
        assert!(d.os.is_some() && d.packages.is_some());
        let (base, d, h2) = c.advance(&facts("b", &["bash", "vim"]), false);
        assert_eq!(base, h1);
        assert!(d.os.is_some() && d.packages.is_none(), "{d:?}");
        assert_ne!(h1, h2);
        let (base, d, h3) = c.advance(&facts("b", &["bash", "vim"]), false);
        assert_eq!((base.as_str(), d), (h2.as_str(), pb::Facts::default()));
        assert_eq!(h3, h2);
        // The same facts hash the same from a fresh chain: hashes are content, not history.
        let mut fresh = Chain::default();
        assert_eq!(fresh.advance(&facts("b", &["bash", "vim"]), true).2, h2);
    }

    #[test]
    fn a_skipped_section_keeps_the_chain_equal_to_what_the_server_holds() {
        let mut c = Chain::default();
        let (_, _, h1) = c.advance(&facts("a", &["bash"]), true);
        // Delta without the changed packages: the server keeps the old list, so does the chain.
        let (_, d, h2) =
            c.advance_except(&facts("b", &["bash", "vim"]), false, &[Section::Packages]);
        assert!(d.packages.is_none() && d.os.is_some());
        assert_ne!(h1, h2);
        assert_eq!(Chain::default().advance(&facts("b", &["bash"]), true).2, h2);
        // Full without packages: the server holds none, nor does the chain.
        let (_, d, h3) =
            c.advance_except(&facts("b", &["bash", "vim"]), true, &[Section::Packages]);
        assert!(d.packages.is_none());
        let mut no_pkgs = facts("b", &[]);
        no_pkgs.packages = None;
        assert_eq!(Chain::default().advance(&no_pkgs, true).2, h3);
    }

    #[test]
    fn coalescing_keeps_every_sel_event_and_the_first_base() {
        let sel = |id| pb::SelEntry {
            record_id: id,
            ..Default::default()
        };
        let a = pb::ReportRequest {
            seq: 1,
            base_hash: "h0".into(),
            facts_hash: "h1".into(),
            facts: Some(facts("a", &["x"])),
            sel: vec![sel(1)],
            ..Default::default()
        };
        let b = pb::ReportRequest {
            seq: 2,
            base_hash: "h1".into(),
            facts_hash: "h2".into(),
            facts: Some(pb::Facts {
                os: Some(pb::OsFacts {
                    hostname: "b".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            sel: vec![sel(2)],
            ..Default::default()
        };
        let c = coalesce(a, b);
        assert_eq!(
            (c.seq, c.base_hash.as_str(), c.facts_hash.as_str()),
            (2, "h0", "h2")
        );
        let f = c.facts.unwrap();
        assert_eq!(f.os.unwrap().hostname, "b");
        assert_eq!(f.packages.unwrap().items.len(), 1);
        assert_eq!(
            c.sel.iter().map(|s| s.record_id).collect::<Vec<_>>(),
            [1, 2]
        );
    }
}
