//! The canary soak: after the last canary verified, wait `canary_soak`, and pass only if every
//! canary sent at least `soak_reports` (≥ 2) fresh reports, none of which shows a health reason
//! or a drift item it did not have at verification, a different boot id, or a failed `verify`
//! rule. Missing reports are not a pass: the soak waits `grace` longer, then is dirty (notes
//! §4.3 say "extend"; the issue says missing reports halt — both: extend once, then halt).

use std::collections::BTreeSet;

/// What a canary looked like when it verified.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Baseline {
    pub boot_id: String,
    pub health_reasons: BTreeSet<String>,
    pub drift: BTreeSet<String>,
}

/// One agent report during the soak.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoakReport {
    pub at: i64,
    pub boot_id: String,
    pub health_reasons: BTreeSet<String>,
    /// Drift item fields.
    pub drift: BTreeSet<String>,
    /// Every `verify` rule (and zero drift on the campaign's fields) held.
    pub verify_ok: bool,
}

/// One canary's soak evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanarySoak {
    pub host: String,
    pub verified_at: i64,
    pub baseline: Baseline,
    pub reports: Vec<SoakReport>,
}

/// The soak's answer now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SoakVerdict {
    Passed,
    /// Not yet: look again at `until` (or at the next report).
    Waiting {
        until: i64,
        why: String,
    },
    /// Halt before the first wave.
    Dirty {
        host: String,
        why: String,
    },
}

/// Judges the soak at `now`. `soak` and `grace` in seconds; `min_reports` at least 2.
pub fn verdict(
    canaries: &[CanarySoak],
    soak: i64,
    min_reports: u32,
    grace: i64,
    now: i64,
) -> SoakVerdict {
    let min_reports = min_reports.max(2) as usize;
    for c in canaries {
        for r in c.reports.iter().filter(|r| r.at > c.verified_at) {
            let dirty = |why: String| SoakVerdict::Dirty {
                host: c.host.clone(),
                why,
            };
            if r.boot_id != c.baseline.boot_id {
                return dirty(format!("boot id changed to {} during the soak", r.boot_id));
            }
            if let Some(n) = r
                .health_reasons
                .difference(&c.baseline.health_reasons)
                .next()
            {
                return dirty(format!("new health reason {n}"));
            }
            if let Some(d) = r.drift.difference(&c.baseline.drift).next() {
                return dirty(format!("new drift on {d}"));
            }
            if !r.verify_ok {
                return dirty("a report no longer satisfies the verify rules".into());
            }
        }
    }
    let deadline = canaries.iter().map(|c| c.verified_at).max().unwrap_or(now) + soak;
    if now < deadline {
        return SoakVerdict::Waiting {
            until: deadline,
            why: "soaking".into(),
        };
    }
    let short = canaries
        .iter()
        .find(|c| c.reports.iter().filter(|r| r.at > c.verified_at).count() < min_reports);
    match short {
        None => SoakVerdict::Passed,
        Some(c) if now < deadline + grace => SoakVerdict::Waiting {
            until: deadline + grace,
            why: format!("waiting for {min_reports} fresh reports from {}", c.host),
        },
        Some(c) => SoakVerdict::Dirty {
            host: c.host.clone(),
            why: format!("fewer than {min_reports} fresh reports during the soak"),
        },
    }
}
