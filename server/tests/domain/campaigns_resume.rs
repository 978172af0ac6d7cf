//! Campaigns across a crash and restart (intents recovered from the host, or NEEDS_ATTENTION),
//! and the audit of a host-key mismatch: the same in-process fixture as `campaigns.rs`.

use super::*;

/// Launches "resume" on 3 hosts (one at a time) with h0's non-idempotent `install` in flight,
/// then does what a kill -9 and a restart would: the new server starts from a crash copy of
/// the store, with the executor changed by `then` (as the hosts are meanwhile).
async fn crash_during_install(then: impl FnOnce(&InProcessExecutor)) -> Fixture {
    let f = fixture(3).await;
    f.exec.script("h0", "install", Script::Hang);
    let strategy = pb::CampaignStrategy {
        failure_threshold: hosts(2),
        max_concurrency: 1,
        ..Default::default()
    };
    f.launch(
        "resume",
        spec(strategy, vec![ssh("install", false), ssh("restart", true)]),
    )
    .await;
    f.until("resume", |_| f.exec.runs("h0", "install") == 1)
        .await;
    // What a kill -9 now would leave on disk; the first server is stopped after the copy.
    let dir = f.s.crash_copy().unwrap();
    let clock = Arc::clone(&f.s.clock);
    let Fixture {
        s,
        exec,
        agents,
        operator,
        approver,
    } = f;
    s.stop().await.unwrap();
    exec.script("h0", "install", Script::Result(Outcome::Exited(0)));
    then(&exec);
    let (s, _) = start(Arc::clone(&exec), clock, Some(dir)).await;
    Fixture {
        s,
        exec,
        agents,
        operator,
        approver,
    }
}

#[tokio::test]
async fn after_a_restart_no_step_runs_twice_and_an_interrupted_step_needs_attention() {
    // The host has no record of the run.
    let f = crash_during_install(|_| {}).await;
    let r = f
        .until("resume", |r| state(r) == pb::CampaignState::Paused)
        .await;
    let msg = &r.summary.as_ref().unwrap().message;
    assert!(
        msg.contains("h0") && msg.contains("not marked idempotent"),
        "{msg}"
    );
    assert!(msg.contains("no record of run"), "{msg}");
    let hs: HashMap<_, _> = host_states(&r).into_iter().collect();
    assert_eq!(hs["h0"], pb::HostState::HostNeedsAttention);
    assert_eq!(f.exec.recoveries("h0", "install"), 1, "the host was asked");
    assert_eq!(
        f.exec.runs("h0", "install"),
        1,
        "the interrupted step was not rerun"
    );
    // A person looked: retry h0, resume; everything completes, no step ran twice.
    let mut c = f.s.campaigns(&f.operator);
    c.host_retry(pb::HostActionRequest {
        name: "resume".into(),
        host: "h0".into(),
        context: ctx(),
    })
    .await
    .unwrap();
    c.resume(act("resume")).await.unwrap();
    f.until("resume", |r| state(r) == pb::CampaignState::Completed)
        .await;
    assert_eq!(
        f.exec.runs("h0", "install"),
        2,
        "once, then the person's retry"
    );
    for h in ["h1", "h2"] {
        assert_eq!(f.exec.runs(h, "install"), 1, "{h}");
        assert_eq!(f.exec.runs(h, "restart"), 1, "{h}");
    }
    f.s.stop().await.unwrap();
}

#[tokio::test]
async fn after_a_restart_an_interrupted_step_is_recovered_from_the_host_not_rerun() {
    // The host kept the run's result (the SSH executor's detached run directory).
    let f = crash_during_install(|e| e.script_recovery("h0", "install", Outcome::Exited(0))).await;
    let r = f
        .until("resume", |r| state(r) == pb::CampaignState::Completed)
        .await;
    let hs: HashMap<_, _> = host_states(&r).into_iter().collect();
    assert_eq!(hs["h0"], pb::HostState::HostSucceeded);
    assert_eq!(f.exec.recoveries("h0", "install"), 1);
    assert_eq!(f.exec.runs("h0", "install"), 1, "recovered, not rerun");
    assert_eq!(f.exec.runs("h0", "restart"), 1, "and the host went on");
    for h in ["h1", "h2"] {
        assert_eq!(f.exec.runs(h, "install"), 1, "{h}");
        assert_eq!(f.exec.recoveries(h, "install"), 0, "{h}");
    }
    // Nobody had to look: the campaign never paused, and h0's report shows the recovered
    // run (attempt 1, the host's output), not a second one.
    let report =
        f.s.campaigns(&f.operator)
            .report(pb::CampaignReportRequest {
                name: "resume".into(),
            })
            .await
            .unwrap()
            .into_inner();
    assert!(
        report.transitions.iter().all(|t| !t.to.contains("PAUSED")),
        "{:#?}",
        report.transitions
    );
    let h0 = report.hosts.iter().find(|h| h.device == "h0").unwrap();
    let installs: Vec<_> = h0.steps.iter().filter(|s| s.step == "install").collect();
    assert_eq!(installs.len(), 1, "{installs:#?}");
    assert_eq!(installs[0].attempt, 1);
    f.s.stop().await.unwrap();
}

#[tokio::test]
async fn a_host_key_mismatch_fails_the_host_and_is_audited_with_both_fingerprints() {
    let f = fixture(2).await;
    let (pinned, seen) = (
        "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU",
        "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s",
    );
    f.exec.script(
        "h0",
        "patch",
        Script::Result(Outcome::HostKeyMismatch {
            expected: pinned.into(),
            seen: seen.into(),
        }),
    );
    let strategy = pb::CampaignStrategy {
        failure_threshold: hosts(0),
        max_concurrency: 1,
        ..Default::default()
    };
    f.launch("rekeyed", spec(strategy, vec![ssh("patch", false)]))
        .await;
    let r = f
        .until("rekeyed", |r| state(r) == pb::CampaignState::Halted)
        .await;
    let hs: HashMap<_, _> = host_states(&r).into_iter().collect();
    assert_eq!(hs["h0"], pb::HostState::HostFailed, "it counts");
    let trail = f.trail("system:campaign").await;
    let e = trail
        .iter()
        .find(|c| c.verb == "campaign host-key mismatch")
        .unwrap_or_else(|| panic!("no audit entry: {trail:#?}"));
    assert_eq!(e.resource_name, "rekeyed");
    assert_eq!(e.outcome, pb::ChangeOutcome::Rejected as i32);
    assert!(
        e.message.contains("host h0") && e.message.contains(pinned) && e.message.contains(seen),
        "{}",
        e.message
    );
    f.s.stop().await.unwrap();
}
