//! Scoped operator tokens (`--selector team=pay`): allowed inside the scope on every write
//! path, refused outside it with the scope named, nothing changed, audited as DENIED.

use muster::pb::{self, resource::Resource as R};
use muster_tests::fixtures::{device, site};
use muster_tests::{Bearer, TestServer, snapshot};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::{create_token, list_row, stderr};

type Config = pb::config_service_client::ConfigServiceClient<InterceptedService<Channel, Bearer>>;
type Export = pb::export_service_client::ExportServiceClient<InterceptedService<Channel, Bearer>>;

/// `r` (a device) changed by `f`.
fn with(mut r: pb::Resource, f: impl FnOnce(&mut pb::Device)) -> pb::Resource {
    if let Some(R::Device(d)) = r.resource.as_mut() {
        f(d);
    }
    r
}

/// A profile selecting `selector`.
fn profile(name: &str, selector: &str) -> pb::Resource {
    pb::Resource {
        resource: Some(R::Profile(pb::Profile {
            meta: Some(pb::ObjectMeta {
                name: name.into(),
                ..Default::default()
            }),
            selector: selector.into(),
            ..Default::default()
        })),
    }
}

#[tokio::test]
async fn scoped_token_writes_only_inside_its_scope() {
    let s = TestServer::start().unwrap();
    let mut admin = s.inventory().await.unwrap();
    let core_bmc = pb::Resource {
        resource: Some(R::Credential(pb::Credential {
            meta: Some(pb::ObjectMeta {
                name: "core-bmc".into(),
                labels: [("team".to_string(), "core".to_string())].into(),
                ..Default::default()
            }),
            kind: pb::CredentialKind::BmcPassword as i32,
            secret: b"core-team-secret".to_vec(),
            fingerprint: String::new(),
        })),
    };
    for d in [
        core_bmc,
        device("db-01", &[("team", "core")]),
        device("pay-01", &[("team", "pay")]),
        device("pay-04", &[("team", "pay")]),
    ] {
        admin
            .create(pb::CreateRequest {
                resource: Some(d),
                context: None,
            })
            .await
            .unwrap();
    }
    let token = create_token(
        &s,
        &["pay-ops", "--role", "operator", "--selector", "team=pay"],
    );
    assert_eq!(list_row(&s, "pay-ops")[2], "team=pay");
    let mut pay = s.inventory_as(&token).await.unwrap();
    let ch = || s.channel();
    let mut config: Config = pb::config_service_client::ConfigServiceClient::with_interceptor(
        ch().await.unwrap(),
        muster_tests::bearer(&token),
    );
    let mut export: Export = pb::export_service_client::ExportServiceClient::with_interceptor(
        ch().await.unwrap(),
        muster_tests::bearer(&token),
    );

    // Inside the scope: allowed on every path.
    let mine = device("pay-01", &[("team", "pay"), ("role", "db")]);
    pay.update(pb::UpdateRequest {
        resource: Some(mine.clone()),
        expected_revision: 0,
        context: None,
    })
    .await
    .unwrap();
    pay.create(pb::CreateRequest {
        resource: Some(device("pay-02", &[("team", "pay")])),
        context: None,
    })
    .await
    .unwrap();
    config
        .apply(pb::ApplySetRequest {
            resources: vec![profile("pay-web", "team=pay,role=web")],
            context: None,
        })
        .await
        .unwrap();
    export
        .ingest_facts(pb::IngestFactsRequest {
            hosts: vec![pb::HostFacts {
                device: "pay-02".into(),
                facts: Some(pb::Facts::default()),
                collected_at: None,
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    let o = s.muster_with(&["agent", "token", "create", "pay-01"], &token, None);
    assert!(o.status.success(), "{}", stderr(&o));
    // Reads are not limited.
    pay.get(pb::GetRequest {
        kind: pb::ResourceKind::Device as i32,
        name: "db-01".into(),
    })
    .await
    .unwrap();

    let before = snapshot(&mut admin).await.unwrap();
    let outside = "token pay-ops is scoped to team=pay; device db-01 (team=core) is outside it";
    let core = || device("db-01", &[("team", "core")]);
    // Relabelling out of scope, one device per path so that each case stands alone.
    let moved = |name: &str| device(name, &[("team", "core")]);
    let cases: Vec<(&str, Result<(), tonic::Status>, &str)> = vec![
        (
            "update",
            pay.update(pb::UpdateRequest {
                resource: Some(core()),
                expected_revision: 0,
                context: None,
            })
            .await
            .map(drop),
            outside,
        ),
        (
            "create",
            pay.create(pb::CreateRequest {
                resource: Some(device("core-9", &[("team", "core")])),
                context: None,
            })
            .await
            .map(drop),
            "device core-9 (team=core) is outside it",
        ),
        (
            "update",
            pay.update(pb::UpdateRequest {
                resource: Some(moved("pay-01")),
                expected_revision: 0,
                context: None,
            })
            .await
            .map(drop),
            "device pay-01 (team=core) is outside it",
        ),
        (
            "apply",
            pay.apply(pb::ApplyRequest {
                resource: Some(moved("pay-02")),
                context: None,
                dry_run: false,
            })
            .await
            .map(drop),
            "device pay-02 (team=core) is outside it",
        ),
        (
            "apply",
            config
                .apply(pb::ApplySetRequest {
                    resources: vec![moved("pay-04")],
                    context: None,
                })
                .await
                .map(drop),
            "device pay-04 (team=core) is outside it",
        ),
        (
            "apply (dry run)",
            pay.apply(pb::ApplyRequest {
                resource: Some(core()),
                context: None,
                dry_run: true,
            })
            .await
            .map(drop),
            outside,
        ),
        (
            "update",
            pay.update(pb::UpdateRequest {
                resource: Some(with(mine.clone(), |d| {
                    d.bmc = Some(pb::BmcEndpoint {
                        address: "10.0.0.9".into(),
                        username: "admin".into(),
                        credential_ref: "core-bmc".into(),
                        ..Default::default()
                    });
                })),
                expected_revision: 0,
                context: None,
            })
            .await
            .map(drop),
            "device pay-01 refers to credential core-bmc (team=core), which is outside it",
        ),
        (
            "create",
            pay.create(pb::CreateRequest {
                resource: Some(with(device("pay-05", &[("team", "pay")]), |d| {
                    d.parent = "db-01".into();
                })),
                context: None,
            })
            .await
            .map(drop),
            "device pay-05 refers to device db-01 (team=core), which is outside it",
        ),
        (
            "delete",
            pay.delete(pb::DeleteRequest {
                kind: pb::ResourceKind::Device as i32,
                name: "db-01".into(),
                expected_revision: 0,
                context: None,
            })
            .await
            .map(drop),
            outside,
        ),
        (
            "apply",
            pay.apply(pb::ApplyRequest {
                resource: Some(core()),
                context: None,
                dry_run: false,
            })
            .await
            .map(drop),
            outside,
        ),
        (
            "create",
            pay.create(pb::CreateRequest {
                resource: Some(site("pay-site")),
                context: None,
            })
            .await
            .map(drop),
            "site pay-site (scoped tokens may write only devices, credentials and profiles)",
        ),
        (
            "apply",
            config
                .apply(pb::ApplySetRequest {
                    resources: vec![device("pay-03", &[("team", "pay")]), core()],
                    context: None,
                })
                .await
                .map(drop),
            outside,
        ),
        (
            "apply",
            config
                .apply(pb::ApplySetRequest {
                    resources: vec![profile("all-web", "role=web")],
                    context: None,
                })
                .await
                .map(drop),
            "profile all-web (selector role=web; its selector must include team=pay) is outside it",
        ),
        (
            "drift accept",
            config
                .accept_drift(pb::AcceptDriftRequest {
                    device: "db-01".into(),
                    field: "os_release".into(),
                    context: None,
                })
                .await
                .map(drop),
            outside,
        ),
        (
            "ingest-facts",
            export
                .ingest_facts(pb::IngestFactsRequest {
                    hosts: vec![pb::HostFacts {
                        device: "db-01".into(),
                        facts: Some(pb::Facts::default()),
                        collected_at: None,
                    }],
                    ..Default::default()
                })
                .await
                .map(drop),
            outside,
        ),
    ];
    // Every case is checked before failing, so a missing check shows all paths it opens.
    let o = s.muster_with(&["agent", "token", "create", "db-01"], &token, None);
    let mut wrong: Vec<String> = cases
        .iter()
        .filter_map(|(verb, r, message)| match r {
            Ok(()) => Some(format!("{verb}: accepted")),
            Err(e) if e.code() != Code::PermissionDenied || !e.message().contains(message) => {
                Some(format!("{verb}: {:?} {:?}", e.code(), e.message()))
            }
            Err(_) => None,
        })
        .collect();
    if !stderr(&o).contains(&format!("PERMISSION_DENIED: {outside}")) {
        wrong.push(format!("agent token create (CLI): {}", stderr(&o)));
    }
    assert!(wrong.is_empty(), "not refused as out of scope: {wrong:#?}");
    assert_eq!(
        snapshot(&mut admin).await.unwrap(),
        before,
        "nothing changed"
    );
    let denied: Vec<pb::Change> = s
        .audit_trail("pay-ops")
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.outcome == pb::ChangeOutcome::Denied as i32)
        .collect();
    let unaudited: Vec<&str> = [
        "create",
        "update",
        "delete",
        "apply",
        "drift accept",
        "ingest-facts",
        "agent-token",
    ]
    .into_iter()
    .filter(|verb| {
        !denied
            .iter()
            .any(|c| c.verb == *verb && c.message.contains("is scoped to team=pay"))
    })
    .collect();
    assert!(
        unaudited.is_empty(),
        "refusals not audited as DENIED: {unaudited:?}"
    );
}
