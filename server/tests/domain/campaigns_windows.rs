//! Campaigns and time: a window that closes pauses the campaign and the next one resumes it by
//! itself; a freeze declared mid-campaign stops new starts until it lifts. The manual clock is
//! moved in jumps, so an hour-long gap costs nothing.

use super::*;

fn ts(seconds: i64) -> Option<pbjson_types::Timestamp> {
    Some(pbjson_types::Timestamp { seconds, nanos: 0 })
}

fn secs(seconds: i64) -> Option<pbjson_types::Duration> {
    Some(pbjson_types::Duration { seconds, nanos: 0 })
}

impl Fixture {
    fn now(&self) -> i64 {
        self.s.clock.now_unix_seconds()
    }

    /// Creates a window (or a freeze) over every `env=prod` host for these ranges.
    async fn window(&self, name: &str, freeze: bool, ranges: &[(i64, i64)]) {
        let w = pb::Window {
            meta: Some(pb::ObjectMeta {
                name: name.into(),
                ..Default::default()
            }),
            selector: "env=prod".into(),
            ranges: ranges
                .iter()
                .map(|&(a, b)| pb::TimeRange {
                    start: ts(a),
                    end: ts(b),
                })
                .collect(),
            freeze,
            ..Default::default()
        };
        self.s
            .inventory(ADMIN_TOKEN)
            .create(pb::CreateRequest {
                resource: Some(pb::Resource {
                    resource: Some(pb::resource::Resource::Window(w)),
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    /// When each host's first step started, by device (Unix seconds).
    async fn starts(&self, name: &str) -> HashMap<String, i64> {
        self.s
            .campaigns(&self.operator)
            .report(pb::CampaignReportRequest { name: name.into() })
            .await
            .unwrap()
            .into_inner()
            .hosts
            .into_iter()
            .filter_map(|h| Some((h.device, h.started_at?.seconds)))
            .collect()
    }
}

/// One host per wave, a pause between waves, steps with short timeouts (a host's worst case
/// is 30 + 30 + 30 = 90 s), the given windows.
fn timed_spec(windows: Vec<String>, batch_pause: i64) -> pb::CampaignSpec {
    let strategy = pb::CampaignStrategy {
        batch_size: hosts(1),
        failure_threshold: hosts(0),
        batch_pause: secs(batch_pause),
        ..Default::default()
    };
    let mut step = ssh("patch", false);
    step.timeout = secs(30);
    let mut s = spec(strategy, vec![step]);
    s.any_time = windows.is_empty();
    s.windows = windows;
    s.verify_timeout = secs(30);
    s.window_margin = secs(30);
    s
}

#[tokio::test]
async fn a_closing_window_pauses_the_campaign_and_the_next_window_resumes_it() {
    let f = fixture(2).await;
    let t0 = f.now();
    // The first window leaves room for one host (90 s) but not for a second after the 60 s
    // pause between waves; the second opens an hour later.
    f.window(
        "maint",
        false,
        &[(t0 - 10, t0 + 120), (t0 + 3600, t0 + 7200)],
    )
    .await;
    f.launch("win", timed_spec(vec!["maint".into()], 60)).await;
    let paused = f
        .until("win", |r| {
            state(r) == pb::CampaignState::Paused
                && r.summary.as_ref().unwrap().message.contains("window")
        })
        .await;
    let message = &paused.summary.as_ref().unwrap().message;
    assert!(message.contains("resumes by itself"), "{message}");
    let states = host_states(&paused);
    assert_eq!(
        states
            .iter()
            .filter(|(_, s)| *s == pb::HostState::HostSucceeded)
            .count(),
        1,
        "{states:?}"
    );
    assert_eq!(
        states
            .iter()
            .filter(|(_, s)| *s == pb::HostState::HostPending)
            .count(),
        1,
        "{states:?}"
    );
    // Still paused, with nothing started, until the next window opens.
    f.s.advance(Duration::from_secs((t0 + 3590 - f.now()).max(0) as u64));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = f.get("win").await;
    assert_eq!(state(&r), pb::CampaignState::Paused);
    assert_eq!(f.starts("win").await.len(), 1);
    f.s.advance(Duration::from_secs(10));
    let done = f
        .until("win", |r| state(r) == pb::CampaignState::Completed)
        .await;
    assert!(
        host_states(&done)
            .iter()
            .all(|(_, s)| *s == pb::HostState::HostSucceeded)
    );
    let starts = f.starts("win").await;
    let mut at: Vec<i64> = starts.values().copied().collect();
    at.sort();
    assert!(at[0] < t0 + 30, "first host in the first window: {at:?}");
    assert!(
        at[1] >= t0 + 3600,
        "second host only in the next window: {at:?}"
    );
    f.s.stop().await.unwrap();
}

#[tokio::test]
async fn a_freeze_declared_mid_campaign_blocks_new_starts_until_it_lifts() {
    let f = fixture(2).await;
    f.launch("frz", timed_spec(vec![], 120)).await;
    // Wave 0 done; the pause before wave 1 is running.
    f.until("frz", |r| {
        host_states(r)
            .iter()
            .any(|(_, s)| *s == pb::HostState::HostSucceeded)
    })
    .await;
    // Late in the pause, after the engine has laid its calendar out afresh (it does so once
    // a clock minute), a freeze is declared; the pause ends a few seconds later.
    f.s.advance(Duration::from_secs(110));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t_freeze = f.now();
    let lifts = t_freeze + 1800;
    f.window("change-freeze", true, &[(t_freeze, lifts)]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    f.s.advance(Duration::from_secs(20));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = f.get("frz").await;
    assert_eq!(f.starts("frz").await.len(), 1, "{:?}", r.summary);
    assert!(
        matches!(
            state(&r),
            pb::CampaignState::Paused | pb::CampaignState::Running
        ),
        "{:?}",
        r.summary
    );
    f.s.advance(Duration::from_secs((lifts - f.now()).max(0) as u64));
    let done = f
        .until("frz", |r| state(r) == pb::CampaignState::Completed)
        .await;
    assert!(
        host_states(&done)
            .iter()
            .all(|(_, s)| *s == pb::HostState::HostSucceeded)
    );
    let mut at: Vec<i64> = f.starts("frz").await.values().copied().collect();
    at.sort();
    assert!(
        at[1] >= lifts,
        "the second host started inside the freeze: {at:?}"
    );
    f.s.stop().await.unwrap();
}
