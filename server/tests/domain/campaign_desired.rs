//! A campaign's change is desired state: the drift engine sees it on the hosts the campaign
//! has reached (pending), not on the others; verification and a fresh report close it; a
//! rollback or an abort gives the previous values back; completion keeps it as a profile in
//! one change set, which new hosts inherit; a restart keeps the layers.
//!
//! Real engine, store, drift engine and gRPC API, with the server's own observer: hosts
//! "report" through agentless ingest (`IngestFacts`, the path agent facts take), so
//! verification passes only when a fresh report shows the version. Steps run through the
//! in-process executor; the manual clock moves.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use muster::clock::{Clock, ManualClock};
use muster::pb;
use muster::pb::config_service_client::ConfigServiceClient;
use muster::pb::export_service_client::ExportServiceClient;
use muster_server::campaigns::executor::InProcessExecutor;
use pb::resource::Resource as R;

use crate::campaign_rpc::{self as rpc, act, token};
use crate::kit::{ADMIN_TOKEN, Campaign, TestServer};

async fn server(
    exec: Arc<InProcessExecutor>,
    clock: Arc<ManualClock>,
    dir: Option<tempfile::TempDir>,
) -> TestServer {
    TestServer::start_full(
        |_| {},
        Campaign {
            executor: Some(exec),
            observer: None,
            clock: Some(clock),
        },
        dir,
    )
    .await
    .unwrap()
}

async fn create(s: &TestServer, r: R) {
    s.inventory(ADMIN_TOKEN)
        .create(pb::CreateRequest {
            resource: Some(pb::Resource { resource: Some(r) }),
            ..Default::default()
        })
        .await
        .unwrap();
}

fn device(name: &str, group: &str) -> R {
    R::Device(pb::Device {
        meta: Some(pb::ObjectMeta {
            name: name.into(),
            labels: [
                ("env".to_string(), "prod".to_string()),
                ("group".to_string(), group.to_string()),
            ]
            .into(),
            ..Default::default()
        }),
        kind: pb::DeviceKind::Server as i32,
        ..Default::default()
    })
}

fn openssl(version: &str) -> pb::DesiredState {
    pb::DesiredState {
        packages: vec![pb::PackageRequirement {
            name: "openssl".into(),
            version: version.into(),
            r#match: pb::VersionMatch::Exact as i32,
        }],
        ..Default::default()
    }
}

/// Hosts report `openssl` at `version`, collected now (by the server's clock).
async fn report(s: &TestServer, hosts: &[&str], version: &str) {
    let at = muster_server::model::timestamp(s.clock.now_unix_nanos());
    ExportServiceClient::new(s.authed(ADMIN_TOKEN))
        .ingest_facts(pb::IngestFactsRequest {
            hosts: hosts
                .iter()
                .map(|h| pb::HostFacts {
                    device: h.to_string(),
                    facts: Some(pb::Facts {
                        os: Some(pb::OsFacts {
                            release: "Debian GNU/Linux 12 (bookworm)".into(),
                            package_format: "deb".into(),
                            ..Default::default()
                        }),
                        packages: Some(pb::PackageList {
                            items: vec![pb::InstalledPackage {
                                name: "openssl".into(),
                                version: version.into(),
                                arch: "amd64".into(),
                            }],
                        }),
                        ..Default::default()
                    }),
                    collected_at: Some(at),
                })
                .collect(),
            reason: "test report".into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Drift items on `packages.openssl`, per device.
async fn drift(s: &TestServer) -> HashMap<String, pb::DriftItem> {
    ConfigServiceClient::new(s.authed(ADMIN_TOKEN))
        .drift(pb::DriftRequest {
            selector: "env=prod".into(),
            field_prefix: "packages.openssl".into(),
            summary_only: false,
        })
        .await
        .unwrap()
        .into_inner()
        .items
        .into_iter()
        .filter_map(|d| Some((d.device, d.items.into_iter().next()?)))
        .collect()
}

fn step(name: &str) -> pb::CampaignStep {
    pb::CampaignStep {
        name: name.into(),
        action: Some(pb::campaign_step::Action::SshCommand(format!("run {name}"))),
        timeout: Some(pbjson_types::Duration {
            seconds: 600,
            nanos: 0,
        }),
        idempotent: false,
    }
}

fn count(n: u32) -> Option<pb::Count> {
    Some(pb::Count {
        value: Some(pb::count::Value::Hosts(n)),
    })
}

fn campaign_spec(selector: &str, desired: Option<pb::DesiredState>) -> pb::CampaignSpec {
    pb::CampaignSpec {
        selector: selector.into(),
        desired,
        steps: vec![step("patch")],
        any_time: true,
        verify_timeout: Some(pbjson_types::Duration {
            seconds: 30,
            nanos: 0,
        }),
        strategy: Some(pb::CampaignStrategy {
            max_concurrency: 1,
            failure_threshold: count(1),
            ..Default::default()
        }),
        approval: Some(pb::ApprovalPolicy {
            required: 1,
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn launch(s: &TestServer, approver: &str, name: &str, spec: pb::CampaignSpec) {
    rpc::launch(s, ADMIN_TOKEN, approver, name, spec).await;
}

fn campaign_state(r: &pb::CampaignResponse) -> pb::CampaignState {
    rpc::state(r)
}

fn hosts(r: &pb::CampaignResponse) -> HashMap<String, pb::HostState> {
    rpc::host_states(r).into_iter().collect()
}

async fn until(
    s: &TestServer,
    name: &str,
    done: impl Fn(&pb::CampaignResponse) -> bool,
) -> pb::CampaignResponse {
    rpc::until(s, ADMIN_TOKEN, name, done).await
}

fn in_state(r: &pb::CampaignResponse, want: pb::HostState) -> Vec<String> {
    let mut v: Vec<String> = hosts(r)
        .into_iter()
        .filter(|(_, s)| *s == want)
        .map(|(h, _)| h)
        .collect();
    v.sort();
    v
}

/// Three hosts on openssl 3.0.1 as profile `base` wants; nothing drifts.
async fn fleet(s: &TestServer, names: &[(&str, &str)]) -> String {
    create(
        s,
        R::Profile(pb::Profile {
            meta: Some(pb::ObjectMeta {
                name: "base".into(),
                ..Default::default()
            }),
            selector: "env=prod".into(),
            priority: 10,
            spec: Some(openssl("3.0.1")),
            description: String::new(),
        }),
    )
    .await;
    for (n, g) in names {
        create(s, device(n, g)).await;
    }
    let all: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
    report(s, &all, "3.0.1").await;
    assert!(drift(s).await.is_empty(), "{:?}", drift(s).await);
    token(s, "arno", "approver").await
}

async fn profile(s: &TestServer, name: &str) -> Option<pb::Profile> {
    match s
        .inventory(ADMIN_TOKEN)
        .get(pb::GetRequest {
            kind: pb::ResourceKind::Profile as i32,
            name: name.into(),
        })
        .await
    {
        Ok(r) => match r.into_inner().resource? {
            R::Profile(p) => Some(p),
            _ => None,
        },
        Err(e) if e.code() == tonic::Code::NotFound => None,
        Err(e) => panic!("{e:?}"),
    }
}

async fn changes(s: &TestServer, kind: pb::ResourceKind, name: &str) -> Vec<pb::Change> {
    s.audit(ADMIN_TOKEN)
        .list(pb::ListChangesRequest {
            resource_kind: kind as i32,
            resource_name: name.into(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .changes
}

#[tokio::test]
async fn a_campaign_s_change_is_pending_drift_where_it_reached_and_is_kept_as_a_profile() {
    let exec = InProcessExecutor::new();
    let clock = ManualClock::starting_now();
    let s = server(Arc::clone(&exec), Arc::clone(&clock), None).await;
    let approver = fleet(&s, &[("h0", "a"), ("h1", "a"), ("h2", "a")]).await;
    launch(
        &s,
        &approver,
        "openssl",
        campaign_spec("env=prod", Some(openssl("3.0.2"))),
    )
    .await;
    let mut seen_reached = 0;
    let r = loop {
        // One host at a time: it ran its step and waits for a report showing the version.
        let r = until(&s, "openssl", |r| {
            campaign_state(r) == pb::CampaignState::Completed
                || !in_state(r, pb::HostState::HostVerifying).is_empty()
        })
        .await;
        if campaign_state(&r) == pb::CampaignState::Completed {
            break r;
        }
        let verifying = in_state(&r, pb::HostState::HostVerifying);
        assert_eq!(verifying.len(), 1, "{:?}", hosts(&r));
        let host = verifying[0].clone();
        let d = drift(&s).await;
        let item = d.get(&host).unwrap_or_else(|| panic!("{host}: {d:?}"));
        assert_eq!(item.cause, "pending", "{item:?}");
        assert_eq!(item.source, "campaign/openssl", "{item:?}");
        assert_eq!(item.desired, "= 3.0.2");
        assert_eq!(item.observed, "3.0.1");
        // Hosts not reached yet show no change.
        for h in in_state(&r, pb::HostState::HostPending) {
            assert!(!d.contains_key(&h), "{h} not reached yet: {d:?}");
        }
        seen_reached += 1;
        // The host's next report shows the version: verified, and its drift is closed.
        s.advance(Duration::from_secs(1));
        report(&s, &[&host], "3.0.2").await;
        until(&s, "openssl", |r| {
            hosts(r)[&host] == pb::HostState::HostSucceeded
        })
        .await;
        assert!(
            !drift(&s).await.contains_key(&host),
            "{:?}",
            drift(&s).await
        );
    };
    assert_eq!(seen_reached, 3);
    assert!(
        in_state(&r, pb::HostState::HostSucceeded).len() == 3,
        "{:?}",
        hosts(&r)
    );
    // Kept as a profile: the campaign's selector and fields, above `base`.
    let p = profile(&s, "campaign-openssl")
        .await
        .expect("the change kept as a profile");
    assert_eq!(p.selector, "env=prod");
    assert_eq!(p.spec, Some(openssl("3.0.2")));
    assert!(p.priority > 10, "{}", p.priority);
    // One change set for it, by the campaign engine, naming the campaign; the campaign's
    // completion is in the same set.
    let kept = changes(&s, pb::ResourceKind::Profile, "campaign-openssl").await;
    assert_eq!(kept.len(), 1, "{kept:#?}");
    assert_eq!(kept[0].principal, "system:campaign");
    assert!(
        kept[0].reason.contains("campaign openssl"),
        "{}",
        kept[0].reason
    );
    assert_ne!(kept[0].change_set, 0);
    let done: Vec<pb::Change> = changes(&s, pb::ResourceKind::Campaign, "openssl")
        .await
        .into_iter()
        .filter(|c| c.verb == "campaign complete")
        .collect();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].change_set, kept[0].change_set);
    // The layers are gone: a host that moves shows drift from the profile, not the campaign.
    s.advance(Duration::from_secs(1));
    report(&s, &["h1"], "3.0.1").await;
    let item = drift(&s).await.remove("h1").expect("h1 drifts");
    assert_eq!(item.source, "profile/campaign-openssl", "{item:?}");
    assert_eq!(item.desired, "= 3.0.2");
    assert_eq!(item.cause, "unexpected", "{item:?}");
    // A new host matching the selector inherits the change.
    create(&s, device("h9", "a")).await;
    report(&s, &["h9"], "3.0.1").await;
    let item = drift(&s).await.remove("h9").expect("h9 drifts");
    assert_eq!(item.source, "profile/campaign-openssl", "{item:?}");
    assert_eq!(item.desired, "= 3.0.2");
    // Gone from the store too: a restarted drift engine loads no layer for h1.
    let dir = s.crash_copy().unwrap();
    s.stop().await.unwrap();
    let s = server(exec, clock, Some(dir)).await;
    s.advance(Duration::from_secs(1));
    report(&s, &["h1"], "3.0.0").await;
    let item = drift(&s).await.remove("h1").expect("h1 drifts");
    assert_eq!(item.source, "profile/campaign-openssl", "{item:?}");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_rolled_back_host_gets_its_previous_value_and_a_failed_one_keeps_the_change() {
    let exec = InProcessExecutor::new();
    let s = server(exec, ManualClock::starting_now(), None).await;
    let approver = fleet(&s, &[("h0", "a"), ("h1", "b")]).await;
    // Group a: verification never sees the version (no report), so it fails and rolls back.
    // No failure allowed: the campaign halts (hosts in flight still roll back), so it does not
    // complete and keep its change as a profile over the rolled-back host.
    let mut with_rollback = campaign_spec("group=a", Some(openssl("3.0.2")));
    with_rollback.rollback = vec![step("unpatch")];
    with_rollback.strategy.as_mut().unwrap().failure_threshold = count(0);
    launch(&s, &approver, "rb", with_rollback).await;
    until(&s, "rb", |r| hosts(r)["h0"] == pb::HostState::HostVerifying).await;
    let item = drift(&s)
        .await
        .remove("h0")
        .expect("h0 drifts while reached");
    assert_eq!(item.source, "campaign/rb", "{item:?}");
    until(&s, "rb", |r| {
        hosts(r)["h0"] == pb::HostState::HostRolledBack
    })
    .await;
    // Back to what `base` wants, which the host still has: no drift.
    assert!(drift(&s).await.is_empty(), "{:?}", drift(&s).await);
    s.advance(Duration::from_secs(1));
    report(&s, &["h0"], "3.0.0").await;
    let item = drift(&s).await.remove("h0").expect("h0 drifts");
    assert_eq!(item.source, "profile/base", "{item:?}");
    assert_eq!(item.desired, "= 3.0.1");
    // Group b: no rollback steps and no failure allowed: the failed host keeps the change
    // (the campaign halts), so its drift stays visible.
    let mut no_rollback = campaign_spec("group=b", Some(openssl("3.0.2")));
    no_rollback.strategy.as_mut().unwrap().failure_threshold = count(0);
    launch(&s, &approver, "nr", no_rollback).await;
    let r = until(&s, "nr", |r| campaign_state(r) == pb::CampaignState::Halted).await;
    assert_eq!(hosts(&r)["h1"], pb::HostState::HostFailed);
    let item = drift(&s).await.remove("h1").expect("h1 drifts");
    assert_eq!(item.source, "campaign/nr", "{item:?}");
    assert_eq!(item.cause, "pending");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn layers_survive_a_restart_and_an_abort_drops_them_without_a_profile() {
    let exec = InProcessExecutor::new();
    let clock = ManualClock::starting_now();
    let s = server(Arc::clone(&exec), Arc::clone(&clock), None).await;
    let approver = fleet(&s, &[("h0", "a"), ("h1", "a")]).await;
    let mut sp = campaign_spec("env=prod", Some(openssl("3.0.2")));
    sp.verify_timeout = Some(pbjson_types::Duration {
        seconds: 3600,
        nanos: 0,
    });
    launch(&s, &approver, "openssl", sp).await;
    let r = until(&s, "openssl", |r| {
        in_state(r, pb::HostState::HostVerifying).len() == 1
    })
    .await;
    let host = in_state(&r, pb::HostState::HostVerifying).remove(0);
    assert_eq!(
        drift(&s).await.remove(&host).map(|i| i.source),
        Some("campaign/openssl".to_string())
    );
    // What a kill -9 now would leave on disk, started again.
    let dir = s.crash_copy().unwrap();
    s.stop().await.unwrap();
    let s = server(exec, clock, Some(dir)).await;
    let item = drift(&s).await.remove(&host).expect("still drifting");
    assert_eq!(item.source, "campaign/openssl", "{item:?}");
    assert_eq!(item.cause, "pending");
    // A new drift engine computes the same from the stored layer (not only from the
    // drift items the old one wrote): a report moves the observed value.
    s.advance(Duration::from_secs(1));
    report(&s, &[&host], "3.0.1~rc1").await;
    let item = drift(&s).await.remove(&host).expect("still drifting");
    assert_eq!(item.source, "campaign/openssl", "{item:?}");
    assert_eq!(item.observed, "3.0.1~rc1");
    // Aborted: no profile, and the host's desired state is what it was.
    s.campaigns(ADMIN_TOKEN)
        .abort(act("openssl"))
        .await
        .unwrap();
    until(&s, "openssl", |r| {
        campaign_state(r) == pb::CampaignState::Aborted
    })
    .await;
    let item = drift(&s).await.remove(&host).expect("drifts from base");
    assert_eq!(item.source, "profile/base", "{item:?}");
    assert_eq!(item.desired, "= 3.0.1");
    assert!(profile(&s, "campaign-openssl").await.is_none());
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_campaign_without_desired_state_leaves_none() {
    let exec = InProcessExecutor::new();
    let s = server(exec, ManualClock::starting_now(), None).await;
    let approver = fleet(&s, &[("h0", "a")]).await;
    launch(&s, &approver, "restart", campaign_spec("env=prod", None)).await;
    let r = until(&s, "restart", |r| {
        !in_state(r, pb::HostState::HostVerifying).is_empty()
            || campaign_state(r) == pb::CampaignState::Completed
    })
    .await;
    assert!(drift(&s).await.is_empty(), "{:?}", hosts(&r));
    s.advance(Duration::from_secs(1));
    report(&s, &["h0"], "3.0.1").await;
    until(&s, "restart", |r| {
        campaign_state(r) == pb::CampaignState::Completed
    })
    .await;
    assert!(profile(&s, "campaign-restart").await.is_none());
    assert!(drift(&s).await.is_empty());
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_change_that_cannot_be_kept_completes_and_says_why() {
    let exec = InProcessExecutor::new();
    let s = server(exec, ManualClock::starting_now(), None).await;
    let approver = fleet(&s, &[("h0", "a")]).await;
    // A valid campaign name, but "campaign-" + it is over the name limit (253).
    let name = "x".repeat(250);
    launch(
        &s,
        &approver,
        &name,
        campaign_spec("env=prod", Some(openssl("3.0.2"))),
    )
    .await;
    until(&s, &name, |r| {
        hosts(r)["h0"] == pb::HostState::HostVerifying
    })
    .await;
    s.advance(Duration::from_secs(1));
    report(&s, &["h0"], "3.0.2").await;
    let r = until(&s, &name, |r| {
        campaign_state(r) == pb::CampaignState::Completed
    })
    .await;
    let message = &r.summary.as_ref().unwrap().message;
    assert!(message.contains("not kept as a profile"), "{message}");
    // Its layer went with the completion: h0's desired state is `base`'s again.
    let item = drift(&s).await.remove("h0").expect("h0 drifts from base");
    assert_eq!(item.source, "profile/base", "{item:?}");
    s.stop().await.unwrap();
}
