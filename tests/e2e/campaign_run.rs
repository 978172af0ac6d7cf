//! Patch campaigns end to end: the real musterd's engine driving real sshd hosts through its
//! SSH executor, each host with its own real agent whose external facts come from the host's
//! state file, so verification passes only once the agent's next report shows the change.
//! Happy path, verification by observed state, canary halt, failure budget and rollback, and
//! the host-key pin.

use std::time::Duration;

use muster::pb::{self, resource::Resource as R};
use muster_tests::campaign_fleet::{CampaignFleet, FleetOptions, reported_patch};
use muster_tests::campaign_kit::{
    campaigns_as, host_state, launch, patch_spec, report, state_of, wait_settled,
};
use muster_tests::{OPERATOR_TOKEN, VIEWER_TOKEN};

const SETTLE: Duration = Duration::from_secs(60);

async fn fleet(prefix: &str, n: usize) -> CampaignFleet {
    let mut f = CampaignFleet::new(FleetOptions::default()).unwrap();
    f.start_hosts(prefix, n).await.unwrap();
    f
}

fn host_report<'a>(r: &'a pb::CampaignReport, device: &str) -> &'a pb::HostReport {
    r.hosts
        .iter()
        .find(|h| h.device == device)
        .unwrap_or_else(|| panic!("{device} not in the report: {r:#?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn campaign_patches_hosts_verified_by_their_next_report() {
    let f = fleet("hp", 4).await;
    // hp-04's step exits 0 but changes nothing: only observed state can tell.
    f.set_marker("hp-04", "noop", true);
    let mut spec = patch_spec("hp", "2.0", 0, 1);
    spec.verify_timeout = Some(pbjson_types::Duration {
        seconds: 6,
        nanos: 0,
    });
    launch(&f.server, "patch-hp", spec).await.unwrap();
    let mut c = campaigns_as(&f.server, VIEWER_TOKEN).await.unwrap();

    // Each host turns SUCCEEDED only after its agent reported 2.0: whenever a host is seen
    // succeeded, the server's latest facts for it already say 2.0.
    let deadline = std::time::Instant::now() + SETTLE;
    let mut seen = std::collections::BTreeSet::new();
    loop {
        let r = muster_tests::campaign_kit::get(&mut c, "patch-hp")
            .await
            .unwrap();
        for k in 1..=3 {
            let name = format!("hp-{k:02}");
            if host_state(&r, &name) == pb::HostState::HostSucceeded && seen.insert(name.clone()) {
                let d = f.device(&name).await.unwrap();
                assert_eq!(
                    reported_patch(&d).map(|p| p.version),
                    Some("2.0".to_string()),
                    "{name} succeeded before its agent reported the new version"
                );
            }
        }
        if state_of(&r) == pb::CampaignState::Completed {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not completed: {:?}",
            muster_tests::campaign_kit::host_states(&r)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");

    let r = report(&mut c, "patch-hp").await.unwrap();
    for k in 1..=3 {
        let name = format!("hp-{k:02}");
        let h = host_report(&r, &name);
        assert_eq!(h.state(), pb::HostState::HostSucceeded, "{h:#?}");
        let patch = h.steps.iter().find(|s| s.step == "patch").unwrap();
        assert_eq!((patch.outcome.as_str(), patch.exit_code), ("exited", 0));
        assert!(
            patch
                .stdout_excerpt
                .contains(&format!("apply 2.0 on {name}")),
            "{patch:#?}"
        );
        assert!(
            h.steps
                .iter()
                .any(|s| s.step == "verify" && s.outcome == "observed")
        );
        // The step ran exactly once; nothing rolled back.
        let st = f.state(&name);
        assert_eq!((st.version.as_str(), st.runs, st.rollbacks), ("2.0", 1, 0));
    }
    // The whole capture is served too.
    let h1 = host_report(&r, "hp-01");
    let intent = &h1.steps.iter().find(|s| s.step == "patch").unwrap().intent;
    let out = c
        .step_output(pb::StepOutputRequest {
            name: "patch-hp".into(),
            host: "hp-01".into(),
            intent: intent.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let stdout = out.stdout.unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&stdout.head).contains("apply 2.0 on hp-01"),
        "{stdout:?}"
    );

    // hp-04: the step "succeeded", the report never showed 2.0: verification failed, the host
    // was rolled back, and it counts against the budget (1 allowed, so the campaign went on).
    let h4 = host_report(&r, "hp-04");
    assert_eq!(h4.state(), pb::HostState::HostRolledBack, "{h4:#?}");
    let st = f.state("hp-04");
    assert_eq!((st.version.as_str(), st.runs, st.rollbacks), ("1.0", 1, 1));
    assert!(
        h4.steps
            .iter()
            .any(|s| s.step == "unpatch" && s.outcome == "exited")
    );
    let sum = r.summary.unwrap();
    assert_eq!((sum.failures, sum.failures_allowed), (1, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_canary_halts_before_the_first_wave() {
    let f = fleet("cn", 3).await;
    f.set_marker("cn-01", "fail", true);
    let mut spec = patch_spec("cn", "2.0", 0, 5);
    if let Some(s) = spec.strategy.as_mut() {
        s.canary_hosts = vec!["cn-01".into()];
        s.canary_soak = Some(pbjson_types::Duration {
            seconds: 2,
            nanos: 0,
        });
    }
    launch(&f.server, "canary-cn", spec).await.unwrap();
    let mut c = campaigns_as(&f.server, VIEWER_TOKEN).await.unwrap();
    let r = wait_settled(&mut c, "canary-cn", SETTLE).await.unwrap();
    assert_eq!(state_of(&r), pb::CampaignState::Halted, "{r:#?}");
    // The canary ran, failed and was rolled back; no other host was touched.
    assert!(matches!(
        host_state(&r, "cn-01"),
        pb::HostState::HostRolledBack | pb::HostState::HostFailed
    ));
    let st = f.state("cn-01");
    assert_eq!((st.runs, st.rollbacks), (1, 1));
    for n in ["cn-02", "cn-03"] {
        assert_eq!(f.state(n).runs, 0, "{n} ran although the canary failed");
        assert_eq!(host_state(&r, n), pb::HostState::HostPending);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn failure_budget_zero_halts_on_the_first_failure() {
    let f = fleet("bz", 3).await;
    for n in ["bz-01", "bz-02", "bz-03"] {
        f.set_marker(n, "fail", true);
    }
    let mut spec = patch_spec("bz", "2.0", 0, 0);
    // Strict (the default): with 0 allowed, one host at a time.
    spec.strategy.as_mut().unwrap().tolerance = pb::FailureTolerance::ToleranceStrict as i32;
    launch(&f.server, "budget-0", spec).await.unwrap();
    let mut c = campaigns_as(&f.server, VIEWER_TOKEN).await.unwrap();
    let r = wait_settled(&mut c, "budget-0", SETTLE).await.unwrap();
    assert_eq!(state_of(&r), pb::CampaignState::Halted, "{r:#?}");
    let runs: Vec<u64> = ["bz-01", "bz-02", "bz-03"]
        .iter()
        .map(|n| f.state(n).runs)
        .collect();
    assert_eq!(
        runs.iter().sum::<u64>(),
        1,
        "exactly one host ran: {runs:?}"
    );
    let sum = r.summary.unwrap();
    assert_eq!((sum.failures, sum.failures_allowed), (1, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn failure_budget_one_halts_on_the_second_failure_after_rolling_back() {
    let f = fleet("bo", 5).await;
    for n in ["bo-02", "bo-04"] {
        f.set_marker(n, "fail", true);
    }
    let mut spec = patch_spec("bo", "2.0", 0, 1);
    spec.strategy.as_mut().unwrap().tolerance = pb::FailureTolerance::ToleranceStrict as i32;
    launch(&f.server, "budget-1", spec).await.unwrap();
    let mut c = campaigns_as(&f.server, VIEWER_TOKEN).await.unwrap();
    let r = wait_settled(&mut c, "budget-1", SETTLE).await.unwrap();
    assert_eq!(state_of(&r), pb::CampaignState::Halted, "{r:#?}");
    let sum = r.summary.clone().unwrap();
    assert_eq!((sum.failures, sum.failures_allowed), (2, 1));
    // The first failure did not halt it: bo-03 started after bo-02 had failed (strict
    // concurrency is 1 by then), and the second failure (bo-04) did; bo-05 never ran.
    assert_eq!(f.state("bo-03").runs, 1);
    assert_eq!(f.state("bo-05").runs, 0);
    assert_eq!(host_state(&r, "bo-05"), pb::HostState::HostPending);
    // Rollback ran on both failed hosts, and only there.
    for (n, rollbacks) in [("bo-01", 0), ("bo-02", 1), ("bo-03", 0), ("bo-04", 1)] {
        assert_eq!(f.state(n).rollbacks, rollbacks, "{n}");
    }
    assert_eq!(host_state(&r, "bo-02"), pb::HostState::HostRolledBack);
    assert_eq!(host_state(&r, "bo-04"), pb::HostState::HostRolledBack);
}

/// A 2-host campaign where `PREFIX-02` is pinned to a key it does not have; returns the fleet,
/// the wrong and the real fingerprint, once the campaign settled.
async fn mismatch_campaign(prefix: &str) -> (CampaignFleet, String, String) {
    let f = fleet(prefix, 2).await;
    let victim = format!("{prefix}-02");
    // Pin it to a key it does not have.
    let other = f.dir.path().join("impostor_ed25519");
    muster_tests::ssh::keygen(&other, "impostor").unwrap();
    let o = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(other.with_extension("pub"))
        .output()
        .unwrap();
    let wrong = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    let real = f.host(&victim).fingerprint.clone();
    assert_ne!(wrong, real);
    let mut d = f.device(&victim).await.unwrap();
    d.ssh.as_mut().unwrap().host_key_fingerprint = wrong.clone();
    let mut inv = f.server.inventory().await.unwrap();
    inv.update(pb::UpdateRequest {
        resource: Some(pb::Resource {
            resource: Some(R::Device(d)),
        }),
        expected_revision: 0,
        context: None,
    })
    .await
    .unwrap();

    // With rollback steps: a host where nothing ran has nothing to roll back (FAILED, not a
    // rollback that meets the same wrong key and ends NEEDS_ATTENTION).
    let spec = patch_spec(prefix, "2.0", 0, 1);
    assert!(!spec.rollback.is_empty());
    launch(&f.server, "pinned", spec).await.unwrap();
    let mut c = campaigns_as(&f.server, OPERATOR_TOKEN).await.unwrap();
    let r = wait_settled(&mut c, "pinned", SETTLE).await.unwrap();
    assert_eq!(state_of(&r), pb::CampaignState::Completed, "{r:#?}");
    (f, wrong, real)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_key_mismatch_runs_nothing_and_counts_as_a_failure() {
    let (f, wrong, real) = mismatch_campaign("hk").await;
    let mut c = campaigns_as(&f.server, OPERATOR_TOKEN).await.unwrap();
    let r = muster_tests::campaign_kit::get(&mut c, "pinned")
        .await
        .unwrap();
    assert_eq!(host_state(&r, "hk-01"), pb::HostState::HostSucceeded);
    assert_eq!(host_state(&r, "hk-02"), pb::HostState::HostFailed);
    assert_eq!(
        f.state("hk-02").runs,
        0,
        "the step ran on a host with the wrong key"
    );
    assert_eq!(f.state("hk-01").runs, 1);
    assert_eq!(
        f.state("hk-02").rollbacks,
        0,
        "a rollback ran where nothing had run"
    );
    let rep = report(&mut c, "pinned").await.unwrap();
    assert_eq!(rep.summary.as_ref().unwrap().failures, 1);
    let step = &host_report(&rep, "hk-02").steps[0];
    assert_eq!(step.outcome, "host_key_mismatch", "{step:#?}");
    assert!(
        step.detail.contains(&wrong) && step.detail.contains(&real),
        "{step:#?}"
    );
}

/// The issue: "a mismatch fails the host, runs nothing, and is audited with both
/// fingerprints". Only campaign-side entries count: the device's own update (the re-pin) holds
/// both fingerprints as its before and after.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_key_mismatch_is_in_the_audit_trail_with_both_fingerprints() {
    let (f, wrong, real) = mismatch_campaign("ha").await;
    let trail = f.server.audit_trail("").await.unwrap();
    let named: Vec<String> = trail
        .iter()
        .filter(|ch| ch.resource_kind != pb::ResourceKind::Device as i32)
        .filter(|ch| {
            let t = format!("{ch:?}");
            t.contains(&wrong) && t.contains(&real)
        })
        .map(|ch| format!("{} {} {}", ch.verb, ch.resource_name, ch.message))
        .collect();
    assert!(
        !named.is_empty(),
        "no campaign audit entry names both {wrong} and {real} (the report has them; the \
         engine keeps host transitions out of the audit trail)"
    );
}
