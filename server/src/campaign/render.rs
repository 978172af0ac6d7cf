//! `muster campaign plan` as text: the frozen plan with its semantics spelled out (trip point,
//! waves, canaries, skipped hosts and why, window fit), so approvers read what they approve.
//! Pure: the CLI prints what this returns.

use std::fmt::Write;
use std::time::{Duration, UNIX_EPOCH};

use super::plan::Plan;
use super::spec::{CampaignSpec, Tolerance};

/// Seconds as `2h 10m`.
pub fn duration(secs: i64) -> String {
    humantime::format_duration(Duration::from_secs(secs.max(0) as u64)).to_string()
}

/// Unix seconds as RFC 3339 UTC.
pub fn instant(secs: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn ordinal(n: u32) -> String {
    let suffix = match (n % 10, n % 100) {
        (1, r) if r != 11 => "st",
        (2, r) if r != 12 => "nd",
        (3, r) if r != 13 => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// Host names of a list, at most `max` of them.
fn names<'a>(it: impl Iterator<Item = &'a str>, max: usize) -> String {
    let all: Vec<&str> = it.collect();
    let mut s = all.iter().take(max).copied().collect::<Vec<_>>().join(", ");
    if all.len() > max {
        let _ = write!(s, ", … (+{})", all.len() - max);
    }
    s
}

/// The plan as text.
pub fn render_plan(name: &str, spec: &CampaignSpec, plan: &Plan, digest: &str) -> String {
    let mut o = String::new();
    let st = &spec.strategy;
    let _ = writeln!(
        o,
        "Campaign {name}: {} hosts planned, {} skipped (planned at {})",
        plan.hosts.len(),
        plan.skipped.len(),
        instant(plan.planned_at)
    );
    let _ = writeln!(o, "Digest: {digest}");
    let steps: Vec<String> = spec
        .steps
        .iter()
        .map(|s| format!("{} ({}, {})", s.name, s.action.kind(), duration(s.timeout)))
        .collect();
    let _ = writeln!(o, "Steps: {}", steps.join(" → "));
    if !spec.rollback.is_empty() {
        let _ = writeln!(
            o,
            "Rollback: {} step(s) on each failed host",
            spec.rollback.len()
        );
    }
    let budget = match st.budget {
        super::spec::Amount::Hosts(n) => format!("{n} host(s)"),
        super::spec::Amount::Percent(p) => {
            format!("{p} % of {} hosts, rounded down", plan.hosts.len())
        }
    };
    let _ = writeln!(
        o,
        "Failure budget: {} failure(s) allowed ({budget}); halts at the {} failed host (unknown outcomes count; skipped hosts and canaries do not)",
        plan.failures_allowed,
        ordinal(plan.trip_point())
    );
    let _ = writeln!(
        o,
        "Tolerance: {}",
        match st.tolerance {
            Tolerance::Strict =>
                "strict: concurrency shrinks so failures never exceed the budget + 1",
            Tolerance::Soft => "soft: hosts in flight when the budget trips may add failures",
        }
    );
    let canaries: Vec<&str> = plan
        .hosts
        .iter()
        .filter(|h| h.canary)
        .map(|h| h.name.as_str())
        .collect();
    if canaries.is_empty() {
        let _ = writeln!(o, "Canaries: none");
    } else {
        let _ = writeln!(
            o,
            "Canaries: {} ({} at a time); any canary failure halts; soak {} with at least {} fresh reports each, then {}",
            canaries.join(", "),
            st.canary_concurrency,
            duration(st.canary_soak),
            st.soak_reports,
            if spec.approval.auto_promote {
                "continues by itself"
            } else {
                "waits for a non-author to promote"
            }
        );
    }
    let conc = if st.max_concurrency == 0 {
        "the wave's size".to_string()
    } else {
        st.max_concurrency.to_string()
    };
    let _ = writeln!(
        o,
        "Waves: {} (each starts when the previous is done{}); at most {conc} at once",
        plan.waves.iter().filter(|w| !w.canary).count(),
        if st.batch_pause > 0 {
            format!(", plus a pause of {}", duration(st.batch_pause))
        } else {
            String::new()
        }
    );
    let mut n = 0;
    for w in &plan.waves {
        let label = if w.canary {
            "  canary".to_string()
        } else {
            n += 1;
            format!("  wave {n}")
        };
        let _ = writeln!(
            o,
            "{label}: {} host(s): {}",
            w.hosts.len(),
            names(w.hosts.clone().map(|i| plan.hosts[i].name.as_str()), 8)
        );
    }
    let caps = st.caps;
    let caps: Vec<String> = [
        ("rack", caps.rack),
        ("switch", caps.switch),
        ("role", caps.role),
        ("hypervisor", caps.hypervisor),
    ]
    .into_iter()
    .filter_map(|(d, c)| c.map(|c| format!("{c} per {d}")))
    .collect();
    if !caps.is_empty() {
        let _ = writeln!(
            o,
            "Topology caps: at most {} disrupted at once (failed hosts keep counting; hosts without the label share <none>)",
            caps.join(", ")
        );
    }
    let e = spec.host_estimate();
    let windows = if spec.any_time {
        "any time outside freezes".to_string()
    } else if spec.windows.is_empty() {
        "any maintenance window selecting the host".to_string()
    } else {
        spec.windows.join(", ")
    };
    let _ = writeln!(
        o,
        "Window fit: a host starts only when {windows} stays open (no freeze) for its worst case of {} (steps, verification, rollback, {} margin); each step re-checks",
        duration(e),
        duration(spec.window_margin)
    );
    if let Some(first) = plan.hosts.iter().filter_map(|h| h.first_fit).min() {
        let _ = writeln!(o, "  first fitting start: {}", instant(first));
    }
    if !plan.skipped.is_empty() {
        let _ = writeln!(o, "Skipped:");
        for s in &plan.skipped {
            let _ = writeln!(o, "  {}: {} ({})", s.name, s.reason, s.code.as_str());
        }
    }
    for w in &plan.warnings {
        let _ = writeln!(o, "Warning: {w}");
    }
    o
}
