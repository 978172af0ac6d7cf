//! Tests of the parent module: sample values in, text out (insta snapshots).
use super::*;
use std::time::{Duration, UNIX_EPOCH};

fn ts(seconds: i64) -> Option<pbjson_types::Timestamp> {
    Some(pbjson_types::Timestamp { seconds, nanos: 0 })
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_000_000)
}

fn host(d: &str, state: pb::HostState, message: &str) -> pb::HostProgress {
    pb::HostProgress {
        device: d.into(),
        state: state as i32,
        message: message.into(),
        ..Default::default()
    }
}

/// A campaign in its first fleet wave: 1 canary done, wave 1 of 4 hosts mid-way, wave 2
/// pending.
fn sample() -> pb::CampaignResponse {
    let planned = |d: &str, wave: u32| pb::PlannedHost {
        device: d.into(),
        wave,
        canary: wave == 0,
        ..Default::default()
    };
    pb::CampaignResponse {
        campaign: Some(pb::Campaign {
            status: Some(pb::CampaignStatus {
                state: pb::CampaignState::Running as i32,
                hosts: vec![
                    host("web-01", pb::HostState::HostSucceeded, ""),
                    host("web-02", pb::HostState::HostSucceeded, ""),
                    host("web-03", pb::HostState::HostRunning, ""),
                    host("web-04", pb::HostState::HostPending, ""),
                    host("web-05", pb::HostState::HostPending, ""),
                    host("web-06", pb::HostState::HostPending, ""),
                    host("web-07", pb::HostState::HostPending, ""),
                ],
                plan: Some(pb::CampaignPlan {
                    hosts: vec![
                        planned("web-01", 0),
                        planned("web-02", 1),
                        planned("web-03", 1),
                        planned("web-04", 1),
                        planned("web-05", 1),
                        planned("web-06", 2),
                        planned("web-07", 2),
                    ],
                    waves: vec![
                        pb::PlanWave {
                            canary: true,
                            size: 1,
                        },
                        pb::PlanWave {
                            canary: false,
                            size: 4,
                        },
                        pb::PlanWave {
                            canary: false,
                            size: 2,
                        },
                    ],
                    failures_allowed: 1,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        summary: Some(pb::CampaignSummary {
            name: "kernel-6.1".into(),
            state: pb::CampaignState::Running as i32,
            counts: Some(pb::HostCounts {
                succeeded: 2,
                running: 1,
                pending: 4,
                ..Default::default()
            }),
            failures: 0,
            failures_allowed: 1,
            wave: 1,
            waves: 3,
            window_closes_at: ts(1_000_000 + 4_330),
            ..Default::default()
        }),
    }
}

fn failure() -> pb::CampaignProgress {
    pb::CampaignProgress {
        summary: Some(pb::CampaignSummary {
            counts: Some(pb::HostCounts {
                succeeded: 2,
                failed: 1,
                pending: 4,
                ..Default::default()
            }),
            failures: 1,
            ..sample().summary.unwrap()
        }),
        transition: Some(pb::CampaignTransition {
            at: ts(999_990),
            host: "web-03".into(),
            from: "RUNNING".into(),
            to: "FAILED".into(),
            why: "step install: exited 1\u{1b}[2J".into(),
            principal: "system:campaign".into(),
        }),
    }
}

#[test]
fn frame_before_and_after_a_failure() {
    let mut p = Progress::from_response(&sample());
    insta::assert_snapshot!("watch_frame_running", frame(&p, now(), 100));
    p.apply(&failure());
    let f = frame(&p, now(), 100);
    insta::assert_snapshot!("watch_frame_failure", f);
    assert!(!f.contains('\u{1b}'), "{f:?}");
    assert!(
        f.contains("failures 1 of 1 allowed (halts at failure 2)"),
        "{f}"
    );
    assert!(
        f.contains("web-03 FAILED: step install: exited 1\\x1b[2J"),
        "{f}"
    );
}

#[test]
fn frame_lines_fit_the_terminal() {
    let mut p = Progress::from_response(&sample());
    p.apply(&failure());
    p.note = "reconnecting after UNAVAILABLE: connection refused".into();
    for width in [20usize, 40, 200] {
        for line in frame(&p, now(), width).lines() {
            assert!(
                console::measure_text_width(line) <= width,
                "{width}: {line:?}"
            );
        }
    }
}

#[test]
fn bars_fill_exactly() {
    assert_eq!(bar(0, 0, 0, 0, 4), "[    ]");
    assert_eq!(bar(2, 1, 1, 4, 8), "[####xx>>]");
    // A single failure out of many still shows.
    assert_eq!(bar(0, 1, 0, 1000, 10), "[x.........]");
    assert_eq!(bar(999, 1, 0, 1000, 10), "[#########x]");
    for (ok, bad, busy, size) in [(3, 3, 3, 10), (0, 0, 7, 7), (1, 0, 0, 3)] {
        assert_eq!(bar(ok, bad, busy, size, 30).chars().count(), 32);
    }
}

#[test]
fn plain_lines() {
    let mut view = Progress::from_response(&sample());
    let p = pb::CampaignProgress {
        summary: sample().summary,
        transition: None,
    };
    view.apply(&p);
    assert_eq!(
        plain_line(&view, &p),
        "campaign kernel-6.1 RUNNING wave 1/2: 2 succeeded, 1 running, 4 pending; failures 0/1\n"
    );
    view.apply(&failure());
    assert_eq!(
        plain_line(&view, &failure()),
        "1970-01-12T13:46:30Z web-03 RUNNING → FAILED: step install: exited 1\\x1b[2J \
         (system:campaign) [failures 1/1]\n"
    );
    let mut ok = failure();
    if let Some(t) = ok.transition.as_mut() {
        t.to = "VERIFYING".into();
        t.why = String::new();
    }
    view.apply(&ok);
    assert_eq!(
        plain_line(&view, &ok),
        "1970-01-12T13:46:30Z web-03 RUNNING → VERIFYING (system:campaign)\n"
    );
}

#[test]
fn wave_labels_follow_the_plan_text() {
    let mut p = Progress::from_response(&sample());
    assert_eq!(p.wave_label().as_deref(), Some("wave 1/2"));
    p.summary.wave = 0;
    assert_eq!(p.wave_label().as_deref(), Some("canary"));
    p.summary.wave = -1;
    assert_eq!(p.wave_label(), None);
    // Without the plan (a summary alone): by position.
    let mut bare = Progress::default();
    bare.summary.wave = 1;
    bare.summary.waves = 3;
    assert_eq!(bare.wave_label().as_deref(), Some("wave 2/3"));
}

#[test]
fn host_state_names_from_the_wire() {
    assert_eq!(parse_host_state("FAILED"), Some(pb::HostState::HostFailed));
    assert_eq!(
        parse_host_state("HOST_NEEDS_ATTENTION"),
        Some(pb::HostState::HostNeedsAttention)
    );
    assert_eq!(
        parse_host_state("rolled_back"),
        Some(pb::HostState::HostRolledBack)
    );
    assert_eq!(parse_host_state("UNSPECIFIED"), None);
    assert_eq!(parse_host_state("bogus"), None);
}

#[test]
fn durations() {
    assert_eq!(short_duration(45), "45s");
    assert_eq!(short_duration(720), "12m");
    assert_eq!(short_duration(4330), "1h 12m");
    assert_eq!(short_duration(3 * 86_400 + 4 * 3600 + 5), "3d 4h");
    assert_eq!(short_duration(3600), "1h");
}
