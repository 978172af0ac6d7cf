//! `kill -9` of musterd mid-campaign against real hosts: restarted on the same data directory,
//! the campaign completes and no host's non-idempotent step runs twice on its own; a step whose
//! detached run finished on the host while musterd was down is read back from the host.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use muster::pb;
use muster_tests::OPERATOR_TOKEN;
use muster_tests::campaign_fleet::{CampaignFleet, FleetOptions};
use muster_tests::campaign_kit::{
    CampaignClient, action, campaigns_as, get, host_state, host_states, launch, patch_spec,
    state_of, wait_settled, wait_until,
};

/// Which host state marks a moment to kill musterd at.
type HostPred = fn(pb::HostState) -> bool;

/// Kills musterd with SIGKILL at three moments (a step in flight, a host verifying, and
/// whatever is going on a moment later), restarting it on the same data directory each time.
/// The campaign completes, and no host's non-idempotent step ran twice: an interrupted step is
/// either recovered from the host (its detached run) or NEEDS_ATTENTION, which only a person
/// moves on (here with the real CLI's `campaign host retry`, counted).
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_campaign_resumes_without_running_a_step_twice() {
    let mut f = CampaignFleet::new(FleetOptions::default()).unwrap();
    f.start_hosts("kl", 4).await.unwrap();
    let names: Vec<String> = f.hosts.iter().map(|h| h.name.clone()).collect();
    let mut spec = patch_spec("kl", "2.0", 2, 4);
    spec.strategy.as_mut().unwrap().max_concurrency = 2;
    launch(&f.server, "crash", spec).await.unwrap();

    let moments: [(&str, HostPred); 3] = [
        ("a step running", |s| s == pb::HostState::HostRunning),
        ("a host verifying", |s| s == pb::HostState::HostVerifying),
        ("anything in flight", |s| {
            s == pb::HostState::HostRunning || s == pb::HostState::HostVerifying
        }),
    ];
    let mut retried = BTreeMap::<String, u64>::new();
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut moment = 0;
    let r = loop {
        let mut c = campaigns_as(&f.server, OPERATOR_TOKEN).await.unwrap();
        let r = get(&mut c, "crash").await.unwrap();
        let st = state_of(&r);
        if st == pb::CampaignState::Completed {
            break r;
        }
        assert!(
            !matches!(st, pb::CampaignState::Halted | pb::CampaignState::Aborted),
            "{r:#?}"
        );
        assert!(
            Instant::now() < deadline,
            "not completed after {kills} kills: {:?}",
            host_states(&r)
        );
        move_on(&f, &mut c, &r, &mut retried).await;
        if let Some((_, pred)) = moments.get(moment)
            && st == pb::CampaignState::Running
            && host_states(&r).iter().any(|(_, s)| pred(*s))
        {
            drop(c);
            f.server.restart_after_kill9().unwrap();
            kills += 1;
            moment += 1;
            continue;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(kills >= 2, "only {kills} kills landed mid-campaign");
    for n in &names {
        assert_eq!(host_state(&r, n), pb::HostState::HostSucceeded, "{r:#?}");
        let st = f.state(n);
        let retries = retried.get(n).copied().unwrap_or(0);
        assert!(
            st.runs >= 1 && st.runs <= 1 + retries,
            "{n}: the step ran {} times with {retries} retries by a person",
            st.runs
        );
        assert_eq!(st.version, "2.0");
    }
    eprintln!("kill -9 cycles: {kills}; retried by hand: {retried:?}");
}

/// What a person does with a campaign the engine paused after a crash: retry each host that
/// needs attention (with the real CLI), then resume once none is left.
async fn move_on(
    f: &CampaignFleet,
    c: &mut CampaignClient,
    r: &pb::CampaignResponse,
    retried: &mut BTreeMap<String, u64>,
) {
    let mut waiting = false;
    for (n, s) in host_states(r) {
        if s == pb::HostState::HostNeedsAttention {
            let why = r
                .campaign
                .as_ref()
                .and_then(|c| c.status.as_ref())
                .and_then(|st| st.hosts.iter().find(|h| h.device == n))
                .map(|h| h.message.clone())
                .unwrap_or_default();
            eprintln!("{n} needs attention ({why}); state file {:?}", f.state(&n));
            let o = f.server.muster_with(
                &[
                    "campaign", "host", "retry", "crash", &n, "--reason", "checked",
                ],
                OPERATOR_TOKEN,
                None,
            );
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            *retried.entry(n).or_default() += 1;
            waiting = true;
        }
    }
    if !waiting && state_of(r) == pb::CampaignState::Paused {
        let _ = c.resume(action("crash")).await;
    }
}

/// The "recovered from the host": musterd dies while a non-idempotent step runs; the
/// step's detached run finishes on the host while musterd is down; the restarted musterd reads
/// its exit code and output from the host's run directory (the executor's `recover`) instead
/// of asking a person, and the step ran once.
#[tokio::test(flavor = "multi_thread")]
async fn a_step_that_finished_while_musterd_was_down_is_recovered_from_the_host() {
    let mut f = CampaignFleet::new(FleetOptions::default()).unwrap();
    f.start_hosts("rc", 1).await.unwrap();
    launch(&f.server, "recover", patch_spec("rc", "2.0", 3, 0))
        .await
        .unwrap();
    let mut c = campaigns_as(&f.server, OPERATOR_TOKEN).await.unwrap();
    // The step has started on the host (its run counted) and is sleeping.
    wait_until(
        &mut c,
        "recover",
        Duration::from_secs(20),
        "step running",
        |r| host_state(r, "rc-01") == pb::HostState::HostRunning,
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.state("rc-01").runs == 0 {
        assert!(
            Instant::now() < deadline,
            "the step never started on the host"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(c);
    f.server.kill9();
    // It finishes on the host while musterd is down.
    let deadline = Instant::now() + Duration::from_secs(15);
    while f.state("rc-01").version != "2.0" {
        assert!(Instant::now() < deadline, "the detached run did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f.server.spawn().unwrap();
    let mut c = campaigns_as(&f.server, OPERATOR_TOKEN).await.unwrap();
    let r = wait_until(&mut c, "recover", Duration::from_secs(30), "settled", |r| {
        matches!(
            host_state(r, "rc-01"),
            pb::HostState::HostSucceeded
                | pb::HostState::HostNeedsAttention
                | pb::HostState::HostFailed
        )
    })
    .await
    .unwrap();
    assert_eq!(
        host_state(&r, "rc-01"),
        pb::HostState::HostSucceeded,
        "not recovered from the host's run directory: {:?}",
        r.campaign
            .as_ref()
            .and_then(|c| c.status.as_ref())
            .map(|s| &s.hosts)
    );
    assert_eq!(f.state("rc-01").runs, 1);
    let r = wait_settled(&mut c, "recover", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(state_of(&r), pb::CampaignState::Completed);
}
