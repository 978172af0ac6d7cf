use crate::campaign::budget::{Tally, allowed, effective_concurrency, exceeded, trip_point};
use crate::campaign::spec::{Amount, Tolerance};

/// The failure number at which the campaign halts, by counting failures one by one.
fn halts_at(budget: Amount, hosts: u32) -> u32 {
    let a = allowed(budget, hosts);
    (1..=hosts + 1)
        .find(|&f| {
            exceeded(
                a,
                Tally {
                    failures: f,
                    unknown: 0,
                },
            )
        })
        .unwrap()
}

#[test]
fn trip_points_match_the_documented_examples() {
    assert_eq!(halts_at(Amount::Hosts(0), 10), 1);
    assert_eq!(halts_at(Amount::Hosts(3), 10), 4);
    assert_eq!(halts_at(Amount::Percent(10), 5), 1);
    assert_eq!(halts_at(Amount::Percent(10), 50), 6);
    assert_eq!(trip_point(allowed(Amount::Percent(10), 50)), 6);
    assert_eq!(allowed(Amount::Percent(10), 9), 0, "floor, no minimum");
    assert_eq!(allowed(Amount::Percent(100), 7), 7);
}

#[test]
fn unknown_outcomes_count_with_failures() {
    assert!(!exceeded(
        3,
        Tally {
            failures: 2,
            unknown: 1
        }
    ));
    assert!(exceeded(
        3,
        Tally {
            failures: 2,
            unknown: 2
        }
    ));
}

#[test]
fn strict_mode_shrinks_concurrency_so_failures_stay_within_budget_plus_one() {
    let t = |f, u| Tally {
        failures: f,
        unknown: u,
    };
    // Budget 3, max 10, wave of 20.
    assert_eq!(
        effective_concurrency(10, 20, 3, t(0, 0), Tolerance::Strict),
        4
    );
    assert_eq!(
        effective_concurrency(10, 20, 3, t(2, 0), Tolerance::Strict),
        2
    );
    assert_eq!(
        effective_concurrency(10, 20, 3, t(2, 1), Tolerance::Strict),
        1
    );
    assert_eq!(
        effective_concurrency(10, 20, 3, t(3, 1), Tolerance::Strict),
        0
    );
    // Soft keeps max_concurrency until the budget is exceeded.
    assert_eq!(
        effective_concurrency(10, 20, 3, t(3, 0), Tolerance::Soft),
        10
    );
    assert_eq!(
        effective_concurrency(10, 20, 3, t(4, 0), Tolerance::Soft),
        0
    );
    // Bounded by what the wave has left; 0 = the wave's size.
    assert_eq!(
        effective_concurrency(10, 2, 30, t(0, 0), Tolerance::Strict),
        2
    );
    assert_eq!(
        effective_concurrency(0, 7, 30, t(0, 0), Tolerance::Strict),
        7
    );
    // Budget 0: one at a time, so at most 1 failure ever.
    assert_eq!(
        effective_concurrency(10, 20, 0, t(0, 0), Tolerance::Strict),
        1
    );
}

#[test]
fn strict_mode_never_overshoots_budget_plus_one_in_simulation() {
    // Every started host fails, and all in-flight hosts fail together: the worst case.
    for allowed_n in 0..6u32 {
        let (mut failures, mut in_flight) = (0u32, 0u32);
        loop {
            let tally = Tally {
                failures,
                unknown: 0,
            };
            let c = effective_concurrency(8, 100, allowed_n, tally, Tolerance::Strict);
            if c == 0 {
                break;
            }
            in_flight = in_flight.max(c);
            failures += in_flight;
            in_flight = 0;
        }
        assert!(
            failures <= allowed_n + 1,
            "allowed {allowed_n}: {failures} failures"
        );
    }
}
