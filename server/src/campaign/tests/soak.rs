use std::collections::BTreeSet;

use crate::campaign::soak::{Baseline, CanarySoak, SoakReport, SoakVerdict, verdict};

fn report(at: i64) -> SoakReport {
    SoakReport {
        at,
        boot_id: "b1".into(),
        health_reasons: BTreeSet::new(),
        drift: BTreeSet::new(),
        verify_ok: true,
    }
}

fn canary(reports: Vec<SoakReport>) -> CanarySoak {
    CanarySoak {
        host: "c1".into(),
        verified_at: 100,
        baseline: Baseline {
            boot_id: "b1".into(),
            ..Baseline::default()
        },
        reports,
    }
}

#[test]
fn soak_needs_time_and_two_fresh_reports() {
    let c = [canary(vec![report(90), report(160)])];
    assert!(matches!(
        verdict(&c, 300, 2, 120, 200),
        SoakVerdict::Waiting { until: 400, .. }
    ));
    // At the deadline: only one fresh report (the one at 90 predates verification).
    assert!(matches!(
        verdict(&c, 300, 2, 120, 400),
        SoakVerdict::Waiting { until: 520, .. }
    ));
    assert!(matches!(
        verdict(&c, 300, 2, 120, 520),
        SoakVerdict::Dirty { .. }
    ));
    let c = [canary(vec![report(160), report(260)])];
    assert_eq!(verdict(&c, 300, 2, 120, 400), SoakVerdict::Passed);
}

#[test]
fn new_reasons_drift_reboots_and_failed_rules_are_dirty_at_once() {
    let mut r = report(150);
    r.health_reasons.insert("sensor.threshold".into());
    let mut d = report(150);
    d.drift.insert("packages.openssl".into());
    let mut b = report(150);
    b.boot_id = "b2".into();
    let mut v = report(150);
    v.verify_ok = false;
    for (r, why) in [(r, "health"), (d, "drift"), (b, "boot id"), (v, "verify")] {
        match verdict(&[canary(vec![r])], 300, 2, 120, 200) {
            SoakVerdict::Dirty { host, why: w } => {
                assert_eq!(host, "c1");
                assert!(w.contains(why), "{w}");
            }
            other => panic!("{other:?}"),
        }
    }
    // A reason the canary already had at verification is not new.
    let mut c = canary(vec![report(150), report(250)]);
    c.baseline.health_reasons.insert("x".into());
    c.reports[0].health_reasons.insert("x".into());
    assert_eq!(verdict(&[c], 100, 2, 0, 300), SoakVerdict::Passed);
}
