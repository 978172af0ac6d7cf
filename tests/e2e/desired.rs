//! Desired state against the real server: drift from a real agent's real packages and
//! external facts, plans, conflicting profiles, atomic change sets, accepting drift, and the
//! audit hash chain detecting an entry modified on disk.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use muster::pb::{self, resource::Resource as R};
use muster_tests::fixtures;
use muster_tests::{Bearer, TestServer, bearer};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::agent::{AgentHost, INTERVAL, add_device, device, ok, tls_server, token_for};

type ConfigClient =
    pb::config_service_client::ConfigServiceClient<InterceptedService<Channel, Bearer>>;

async fn config_client(s: &TestServer) -> ConfigClient {
    pb::config_service_client::ConfigServiceClient::with_interceptor(
        s.channel().await.unwrap(),
        bearer(&s.token),
    )
}

fn profile(name: &str, selector: &str, priority: i32, spec: pb::DesiredState) -> pb::Resource {
    pb::Resource {
        resource: Some(R::Profile(pb::Profile {
            meta: Some(pb::ObjectMeta {
                name: name.into(),
                ..Default::default()
            }),
            selector: selector.into(),
            priority,
            spec: Some(spec),
            description: String::new(),
        })),
    }
}

fn package(name: &str, version: &str, m: pb::VersionMatch) -> pb::DesiredState {
    pb::DesiredState {
        packages: vec![pb::PackageRequirement {
            name: name.into(),
            version: version.into(),
            r#match: m as i32,
        }],
        ..Default::default()
    }
}

fn ctx(reason: &str) -> Option<pb::ChangeContext> {
    Some(pb::ChangeContext {
        reason: reason.into(),
        ticket: "CHG-123".into(),
        origin: "test".into(),
    })
}

async fn apply(
    c: &mut ConfigClient,
    resources: Vec<pb::Resource>,
    reason: &str,
) -> pb::ApplySetResponse {
    c.apply(pb::ApplySetRequest {
        resources,
        context: ctx(reason),
    })
    .await
    .unwrap()
    .into_inner()
}

async fn drift_of(c: &mut ConfigClient, device: &str) -> Vec<pb::DriftItem> {
    let r = c
        .drift(pb::DriftRequest {
            selector: String::new(),
            field_prefix: String::new(),
            summary_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    r.items
        .into_iter()
        .find(|d| d.device == device)
        .map(|d| d.items)
        .unwrap_or_default()
}

/// Polls drift until `pred` holds (reports arrive every second).
async fn wait_drift(
    c: &mut ConfigClient,
    device: &str,
    what: &str,
    pred: impl Fn(&[pb::DriftItem]) -> bool,
) -> Vec<pb::DriftItem> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let items = drift_of(c, device).await;
        if pred(&items) {
            return items;
        }
        assert!(Instant::now() < deadline, "{what}: drift is {items:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn installed_version(pkg: &str) -> String {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", pkg])
        .output()
        .unwrap();
    assert!(out.status.success(), "dpkg-query {pkg}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn real_packages_and_facts_drift_pending_and_unexpected() {
    let s = tls_server(&[]);
    add_device(&s, "drift-01");
    let mut a = AgentHost::new(&s);
    ok(&a.enroll(&token_for(&s, "drift-01", "1h"), "0s"));
    // An external fact whose value the test changes by hand between reports.
    let facts_dir = a.dir().join("facts.d");
    std::fs::create_dir_all(&facts_dir).unwrap();
    let raid = a.dir().join("raid.json");
    std::fs::write(&raid, r#"{"raid": {"state": "optimal"}}"#).unwrap();
    let script = facts_dir.join("raid");
    std::fs::write(&script, format!("#!/bin/sh\ncat {}\n", raid.display())).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    a.run(
        &format!(
            "interval = \"{INTERVAL}\"\nsmart = false\npackages = true\nexternal_facts_dir = \"{}\"\n",
            facts_dir.display()
        ),
        &[],
    );
    let mut c = config_client(&s).await;
    let dpkg = installed_version("dpkg");

    // Nothing desired yet: no drift, once the agent has reported.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let d = device(&s, "drift-01").await;
        if d.status.as_ref().is_some_and(|s| !s.packages.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no report with packages: {}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(drift_of(&mut c, "drift-01").await.is_empty());

    // A profile asking for a newer dpkg than installed: pending drift for exactly that package.
    let newer = format!("{dpkg}+muster1");
    apply(
        &mut c,
        vec![profile(
            "base",
            "",
            10,
            package("dpkg", &newer, pb::VersionMatch::Minimum),
        )],
        "require newer dpkg",
    )
    .await;
    let items = wait_drift(&mut c, "drift-01", "pending dpkg", |i| !i.is_empty()).await;
    assert_eq!(items.len(), 1, "{items:#?}");
    assert_eq!(items[0].field, "packages.dpkg");
    assert_eq!(items[0].cause, "pending");
    assert_eq!(items[0].observed, dpkg);
    assert_eq!(items[0].desired, format!(">= {newer}"));
    assert_eq!(items[0].source, "profile/base");

    // Exactly the installed version (and an older minimum of another package): no drift.
    let mut spec = package("dpkg", &dpkg, pb::VersionMatch::Exact);
    spec.packages.push(pb::PackageRequirement {
        name: "coreutils".into(),
        version: "1.0".into(),
        r#match: pb::VersionMatch::Minimum as i32,
    });
    spec.expect.push(pb::ExpectRule {
        path: "facts.external.raid.state".into(),
        op: "==".into(),
        value: "optimal".into(),
    });
    apply(&mut c, vec![profile("base", "", 10, spec)], "pin dpkg").await;
    wait_drift(&mut c, "drift-01", "in sync", |i| i.is_empty()).await;

    // Someone changes the host by hand: the external fact turns, the desire did not.
    std::fs::write(&raid, r#"{"raid": {"state": "degraded"}}"#).unwrap();
    let items = wait_drift(&mut c, "drift-01", "unexpected raid", |i| !i.is_empty()).await;
    assert_eq!(items.len(), 1, "{items:#?}");
    assert_eq!(items[0].field, "expect.facts.external.raid.state");
    assert_eq!(items[0].cause, "unexpected");
    assert_eq!(items[0].observed, "degraded");

    // Drift is part of the device (Watch/List see it) and of the audit trail.
    let d = device(&s, "drift-01").await;
    assert_eq!(d.status.unwrap().drift.len(), 1);

    // An expect rule cannot be accepted; the raid is repaired instead.
    let refused = c
        .accept_drift(pb::AcceptDriftRequest {
            device: "drift-01".into(),
            field: "expect.facts.external.raid.state".into(),
            context: ctx("no"),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    std::fs::write(&raid, r#"{"raid": {"state": "optimal"}}"#).unwrap();
    wait_drift(&mut c, "drift-01", "repaired", |i| i.is_empty()).await;

    // Accepting a package's observed version makes it the device's own desire.
    apply(
        &mut c,
        vec![profile(
            "base",
            "",
            10,
            package("dpkg", &newer, pb::VersionMatch::Minimum),
        )],
        "newer again",
    )
    .await;
    let pending = wait_drift(&mut c, "drift-01", "pending again", |i| i.len() == 1).await;

    // After kill -9 the engine reloads in the background; a drift query waits for it instead
    // of answering from an empty state. (A few thousand more devices make the load long
    // enough that answering before it would be seen.)
    for chunk in 0..2 {
        let fleet = (0..2500)
            .map(|i| fixtures::device(&format!("filler-{chunk}-{i:04}"), &[("role", "filler")]))
            .collect();
        apply(&mut c, fleet, "filler").await;
    }
    let mut s = s;
    s.restart_after_kill9().unwrap();
    let mut c = config_client(&s).await;
    let mut inv = s.inventory().await.unwrap();
    let after = drift_of(&mut c, "drift-01").await;
    let fields = |v: &[pb::DriftItem]| {
        v.iter()
            .map(|i| (i.field.clone(), i.cause.clone(), i.observed.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(fields(&after), fields(&pending), "{after:#?}");
    let accepted = c
        .accept_drift(pb::AcceptDriftRequest {
            device: "drift-01".into(),
            field: "packages.dpkg".into(),
            context: ctx("host keeps its dpkg"),
        })
        .await
        .unwrap()
        .into_inner();
    let Some(R::Device(d)) = accepted.device.unwrap().resource else {
        panic!()
    };
    let req = &d.spec.unwrap().packages[0];
    assert_eq!(
        (req.name.as_str(), req.version.as_str()),
        ("dpkg", dpkg.as_str())
    );
    wait_drift(&mut c, "drift-01", "accepted", |i| i.is_empty()).await;
    let mut audit = s.audit().await.unwrap();
    let changes = audit
        .list(pb::ListChangesRequest {
            resource_kind: pb::ResourceKind::Device as i32,
            resource_name: "drift-01".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .changes;
    assert!(
        changes
            .iter()
            .any(|c| c.verb == "drift accept" && c.reason == "host keeps its dpkg"),
        "{:?}",
        changes.iter().map(|c| &c.verb).collect::<Vec<_>>()
    );
    assert!(
        changes
            .iter()
            .any(|c| c.verb == "drift" && c.principal == "system:drift")
    );
    a.stop();

    // A deleted device's observed facts and drift memory are removed from the store.
    let old_id = d.meta.unwrap().id;
    inv.delete(pb::DeleteRequest {
        kind: pb::ResourceKind::Device as i32,
        name: "drift-01".into(),
        expected_revision: 0,
        context: None,
    })
    .await
    .unwrap();
    // Drift answers once the engine has taken in (and written out) the delete.
    assert!(drift_of(&mut c, "drift-01").await.is_empty());
    drop((inv, c));
    s.stop().unwrap();
    let left: Vec<String> = s
        .inspect(&["keys", "--prefix", "a", "--key-contains", &old_id])
        .lines()
        .filter(|k| !k.starts_with("aag/"))
        .map(str::to_string)
        .collect();
    assert!(
        left.is_empty(),
        "records of the deleted device remain: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn plans_conflicts_and_atomic_change_sets() {
    let s = TestServer::start().unwrap();
    let mut inv = s.inventory().await.unwrap();
    for i in 1..=3 {
        inv.create(pb::CreateRequest {
            resource: Some(fixtures::device(
                &format!("web-{i}"),
                &[("role", "web"), ("site", "fra1")],
            )),
            context: None,
        })
        .await
        .unwrap();
    }
    inv.create(pb::CreateRequest {
        resource: Some(fixtures::device(
            "db-1",
            &[("role", "db"), ("site", "fra1")],
        )),
        context: None,
    })
    .await
    .unwrap();
    let mut c = config_client(&s).await;
    let ntp = |servers: &[&str]| pb::DesiredState {
        ntp_servers: servers.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    apply(
        &mut c,
        vec![profile("web-ntp", "role=web", 5, ntp(&["ntp1"]))],
        "ntp",
    )
    .await;

    // Plan a second profile of equal priority over fra1: the web devices conflict.
    let fra = profile("fra-ntp", "site=fra1", 5, ntp(&["ntp2"]));
    let plan = c
        .plan(pb::PlanRequest {
            resources: vec![fra.clone()],
            include_unchanged: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plan.conflicts.len(), 3, "{:?}", plan.conflicts);
    let c0 = &plan.conflicts[0];
    assert_eq!(c0.field, "ntp_servers");
    assert_eq!(c0.profiles, ["fra-ntp", "web-ntp"]);
    // db-1 gets ntp2, the web devices keep their (conflicting) ntp1.
    let db = plan.devices.iter().find(|d| d.device == "db-1").unwrap();
    assert_eq!(db.changes[0].after, "ntp2");
    let before = s.inventory().await.unwrap();
    drop(before);
    let rev_before = c
        .drift(pb::DriftRequest::default())
        .await
        .unwrap()
        .into_inner()
        .revision;

    // Applying it is refused, naming both profiles; nothing is written.
    let err = c
        .apply(pb::ApplySetRequest {
            resources: vec![fra.clone()],
            context: ctx("conflict"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("\"fra-ntp\"") && err.message().contains("\"web-ntp\""),
        "{}",
        err.message()
    );
    let missing = inv
        .get(pb::GetRequest {
            kind: pb::ResourceKind::Profile as i32,
            name: "fra-ntp".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // A higher priority settles it, and the plan says what changes.
    let fra = profile("fra-ntp", "site=fra1", 6, ntp(&["ntp2"]));
    let plan = c
        .plan(pb::PlanRequest {
            resources: vec![fra.clone()],
            include_unchanged: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(plan.conflicts.is_empty());
    assert_eq!(plan.devices_changed, 4, "{plan:#?}");
    let web1 = plan.devices.iter().find(|d| d.device == "web-1").unwrap();
    assert_eq!(
        (
            web1.changes[0].before.as_str(),
            web1.changes[0].after.as_str(),
            web1.changes[0].source.as_str()
        ),
        ("ntp1", "ntp2", "profile/fra-ntp")
    );
    assert!(web1.drift_after.is_empty(), "no agent reported: no drift");

    // A set that fails midway (a device in a rack that does not exist) writes nothing.
    let mut bad = fixtures::device("web-9", &[("role", "web")]);
    if let Some(R::Device(d)) = bad.resource.as_mut() {
        d.site = "fra1".into();
        d.rack = "no-such-rack".into();
    }
    inv.create(pb::CreateRequest {
        resource: Some(fixtures::site("fra1")),
        context: None,
    })
    .await
    .unwrap();
    let err = c
        .apply(pb::ApplySetRequest {
            resources: vec![fra.clone(), bad],
            context: ctx("half"),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            Code::FailedPrecondition | Code::NotFound | Code::InvalidArgument
        ),
        "{err:?}"
    );
    assert!(err.message().contains("no-such-rack"), "{}", err.message());
    let missing = inv
        .get(pb::GetRequest {
            kind: pb::ResourceKind::Profile as i32,
            name: "fra-ntp".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        missing.code(),
        Code::NotFound,
        "half of a failed set was written"
    );
    let rev_after = c
        .drift(pb::DriftRequest::default())
        .await
        .unwrap()
        .into_inner()
        .revision;
    assert_eq!(rev_after, rev_before + 1, "only the site was written");

    // A good set lands as one change set.
    let resp = apply(
        &mut c,
        vec![
            fra,
            fixtures::rack("r1", "fra1"),
            fixtures::device("web-4", &[("role", "web")]),
        ],
        "three at once",
    )
    .await;
    assert_eq!(resp.revision, resp.change_set + 2);
    let mut audit = s.audit().await.unwrap();
    let changes = audit
        .list(pb::ListChangesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .changes;
    let set: Vec<&pb::Change> = changes
        .iter()
        .filter(|c| c.change_set == resp.change_set)
        .collect();
    assert_eq!(set.len(), 3);
    assert!(
        set.iter()
            .all(|c| c.change_set_size == 3 && c.ticket == "CHG-123")
    );
    // Dependency order inside the set: the rack before the device, profiles with them.
    assert_eq!(set[0].resource_kind, pb::ResourceKind::Rack as i32);

    // The same through the real CLI: plan (conflicts fail it), atomic apply, drift, verify.
    let conflicting = "kind: Profile\nmeta:\n  name: fra-dns\nselector: site=fra1\npriority: 6\nspec:\n  ntpServers: [ntp3]\n";
    let out = s.muster_with(&["plan", "-f", "-"], &s.token, Some(conflicting.as_bytes()));
    assert!(!out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("0 devices change") || text.contains("conflict"),
        "{text}"
    );
    assert!(
        text.contains("fra-dns") && text.contains("fra-ntp"),
        "{text}"
    );
    let fine = "kind: Profile\nmeta:\n  name: db-tz\nselector: role=db\npriority: 1\nspec:\n  timezone: UTC\n";
    let out = s.muster_with(&["plan", "-f", "-"], &s.token, Some(fine.as_bytes()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("1 device changes, 0 will drift, 0 conflicts"),
        "{text}"
    );
    assert!(text.contains("timezone: (none) → UTC"), "{text}");
    let out = s.muster_with(
        &["apply", "-f", "-", "--reason", "tz", "--ticket", "CHG-7"],
        &s.token,
        Some(fine.as_bytes()),
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("change set"),
        "{out:?}"
    );
    let out = s.muster(&["drift", "-o", "json"]);
    assert!(out.status.success(), "{out:?}");
    let drift: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(drift["devices"], 5, "{drift}");
    let out = s.muster(&["audit", "verify"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("audit chain intact:"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_verify_finds_an_entry_modified_on_disk() {
    let mut s = TestServer::start().unwrap();
    let mut inv = s.inventory().await.unwrap();
    for (i, reason) in ["first", "tamper-target", "third"].iter().enumerate() {
        inv.create(pb::CreateRequest {
            resource: Some(fixtures::site(&format!("s{i}"))),
            context: Some(pb::ChangeContext {
                reason: reason.to_string(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    }
    let mut audit = s.audit().await.unwrap();
    let ok = audit
        .verify(pb::VerifyAuditRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(ok.ok, "{ok:?}");
    assert_eq!(ok.checked, 3);
    let target = audit
        .list(pb::ListChangesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .changes
        .into_iter()
        .find(|c| c.reason == "tamper-target")
        .unwrap();
    assert_eq!(target.prev_hash.len(), 64);
    drop((inv, audit));
    s.stop().unwrap();

    // Offline, through `musterd inspect`: change one byte of that entry's reason.
    {
        let keys = s.inspect(&["keys", "--prefix", "e", "--value-contains", "tamper-target"]);
        let key = keys.lines().last().expect("the entry is on disk");
        s.inspect(&[
            "patch",
            key,
            "--find",
            "tamper-target",
            "--replace",
            "Tamper-target",
        ]);
    }
    s.spawn().unwrap();
    let mut audit = s.audit().await.unwrap();
    let broken = audit
        .verify(pb::VerifyAuditRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(!broken.ok);
    assert_eq!(broken.first_broken_revision, target.revision);
    assert!(broken.message.contains("modified"), "{}", broken.message);
    // The CLI says so and fails.
    let out = s.muster(&["audit", "verify"]);
    assert!(!out.status.success(), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_holding_secrets_needs_the_secrets_permission() {
    let s = TestServer::start_with(muster_tests::Options {
        role_tokens: true,
        ..Default::default()
    })
    .unwrap();
    let viewer = |ch| {
        pb::config_service_client::ConfigServiceClient::with_interceptor(
            ch,
            bearer(muster_tests::VIEWER_TOKEN),
        )
    };
    let mut c = viewer(s.channel().await.unwrap());
    let credential = pb::Resource {
        resource: Some(R::Credential(pb::Credential {
            meta: Some(pb::ObjectMeta {
                name: "bmc-pw".into(),
                ..Default::default()
            }),
            kind: pb::CredentialKind::BmcPassword as i32,
            secret: b"guess".to_vec(),
            fingerprint: String::new(),
        })),
    };
    // Whether a guessed secret is "unchanged" must not be told to a viewer.
    let err = c
        .plan(pb::PlanRequest {
            resources: vec![credential],
            include_unchanged: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // A viewer may plan desired state.
    let plan = c
        .plan(pb::PlanRequest {
            resources: vec![profile("p", "", 1, pb::DesiredState::default())],
            include_unchanged: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plan.resources.len(), 1);
    assert_eq!(plan.resources[0].action, pb::ApplyAction::Created as i32);
    // And may not apply it.
    let err = c
        .apply(pb::ApplySetRequest {
            resources: vec![profile("p", "", 1, pb::DesiredState::default())],
            context: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
}
