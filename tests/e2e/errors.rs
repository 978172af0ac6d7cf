//! Bad and hostile input: each gets the right code and a clear message, and changes nothing.

use muster::pb::{self, ResourceKind, resource::Resource as R};
use muster_tests::fixtures::{device, revision_of, site};
use muster_tests::{OPERATOR_TOKEN, Options, TestServer, VIEWER_TOKEN, snapshot};
use tonic::Code;

#[tokio::test]
async fn refused_requests_change_nothing_and_are_audited() {
    let s = TestServer::start_with(Options {
        role_tokens: true,
        ..Default::default()
    })
    .unwrap();
    let mut admin = s.inventory().await.unwrap();
    admin
        .create(pb::CreateRequest {
            resource: Some(site("fra1")),
            context: None,
        })
        .await
        .unwrap();
    let web = admin
        .create(pb::CreateRequest {
            resource: Some(device("web-1", &[("role", "web")])),
            context: None,
        })
        .await
        .unwrap()
        .into_inner();
    let before = snapshot(&mut admin).await.unwrap();
    let rev_before = s
        .inventory()
        .await
        .unwrap()
        .list(pb::ListRequest {
            kind: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .revision;

    let mut anonymous = s.inventory_as("").await.unwrap();
    let mut wrong = s.inventory_as("mst_not_a_real_token").await.unwrap();
    let mut viewer = s.inventory_as(VIEWER_TOKEN).await.unwrap();
    let mut operator = s.inventory_as(OPERATOR_TOKEN).await.unwrap();
    let create = |r: pb::Resource| pb::CreateRequest {
        resource: Some(r),
        context: None,
    };

    let cases: Vec<(&str, tonic::Status, Code, &str)> = vec![
        (
            "missing token",
            anonymous.create(create(site("x1"))).await.unwrap_err(),
            Code::Unauthenticated,
            "missing bearer token",
        ),
        (
            "wrong token",
            wrong.create(create(site("x1"))).await.unwrap_err(),
            Code::Unauthenticated,
            "invalid or revoked token",
        ),
        (
            "wrong token read",
            wrong
                .list(pb::ListRequest {
                    kind: 1,
                    ..Default::default()
                })
                .await
                .unwrap_err(),
            Code::Unauthenticated,
            "invalid",
        ),
        (
            "viewer writes",
            viewer.create(create(site("x1"))).await.unwrap_err(),
            Code::PermissionDenied,
            "vera (role viewer) may not create",
        ),
        (
            "invalid name",
            operator.create(create(site("Bad Name"))).await.unwrap_err(),
            Code::InvalidArgument,
            "meta.name:",
        ),
        (
            "invalid label",
            operator
                .create(create(device("d-1", &[("bad key!", "x")])))
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "meta.labels[\"bad key!\"]",
        ),
        (
            "invalid label value",
            operator
                .create(create(device("d-1", &[("role", "-x-")])))
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "meta.labels[\"role\"]",
        ),
        (
            "no kind",
            operator
                .create(pb::CreateRequest {
                    resource: Some(pb::Resource { resource: None }),
                    context: None,
                })
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "resource:",
        ),
        (
            "bad selector",
            viewer
                .list(pb::ListRequest {
                    kind: 3,
                    selector: "role ~ db".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "selector: invalid selector",
        ),
        (
            "unknown field",
            viewer
                .list(pb::ListRequest {
                    kind: 3,
                    field_selector: "colour=red".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "not a selectable field",
        ),
        (
            "bad page token",
            viewer
                .list(pb::ListRequest {
                    kind: 3,
                    page_token: "garbage".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "page_token",
        ),
        (
            "duplicate",
            operator.create(create(site("fra1"))).await.unwrap_err(),
            Code::AlreadyExists,
            "site \"fra1\" already exists",
        ),
        (
            "delete missing",
            operator
                .delete(pb::DeleteRequest {
                    kind: 3,
                    name: "ghost".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
            Code::NotFound,
            "device \"ghost\" not found",
        ),
        (
            "delete without kind",
            operator
                .delete(pb::DeleteRequest {
                    kind: 0,
                    name: "ghost".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "kind:",
        ),
        (
            "bad address",
            operator
                .create(create({
                    let mut d = device("d-2", &[]);
                    if let Some(R::Device(x)) = d.resource.as_mut() {
                        x.management_address = "300.1.1.1 x".into();
                    }
                    d
                }))
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "management_address:",
        ),
        (
            "stale revision",
            operator
                .update(pb::UpdateRequest {
                    resource: Some(web.clone()),
                    expected_revision: revision_of(&web) - 1,
                    context: None,
                })
                .await
                .unwrap_err(),
            Code::Aborted,
            "expected revision",
        ),
        (
            "oversized",
            operator
                .create(create({
                    let mut d = device("big-1", &[]);
                    if let Some(R::Device(x)) = d.resource.as_mut() {
                        x.meta
                            .as_mut()
                            .unwrap()
                            .annotations
                            .insert("blob".into(), "x".repeat(5 * 1024 * 1024));
                    }
                    d
                }))
                .await
                .unwrap_err(),
            Code::ResourceExhausted,
            "limit is 4194304 bytes",
        ),
        (
            "watch from the future",
            {
                match viewer
                    .watch(pb::WatchRequest {
                        kind: 0,
                        selector: String::new(),
                        since_revision: 1_000_000,
                    })
                    .await
                {
                    Ok(_) => panic!("watch from the future must fail"),
                    Err(e) => e,
                }
            },
            Code::OutOfRange,
            "ahead of the store",
        ),
    ];
    for (what, status, code, needle) in &cases {
        assert_eq!(status.code(), *code, "{what}: {status:?}");
        assert!(
            status.message().contains(needle),
            "{what}: message {:?} lacks {needle:?}",
            status.message()
        );
        assert!(
            !status.message().contains("sled") && !status.message().contains("/tmp"),
            "{what}: leaks internals"
        );
    }

    let after = snapshot(&mut admin).await.unwrap();
    assert_eq!(before, after, "refused requests changed the store");
    let rev_after = admin
        .list(pb::ListRequest {
            kind: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .revision;
    assert_eq!(rev_before, rev_after, "the revision moved");

    // Refusals are in the audit trail, with who and why.
    let audit = s.audit_trail("").await.unwrap();
    let refused: Vec<&pb::Change> = audit
        .iter()
        .filter(|c| c.outcome != pb::ChangeOutcome::Accepted as i32)
        .collect();
    let denied_viewer = refused.iter().any(|c| {
        c.principal == "vera" && c.outcome == pb::ChangeOutcome::Denied as i32 && c.verb == "create"
    });
    let rejected_dup = refused.iter().any(|c| {
        c.principal == "oscar"
            && c.outcome == pb::ChangeOutcome::Rejected as i32
            && c.resource_name == "fra1"
    });
    let anon = refused.iter().any(|c| c.principal == "anonymous");
    let unknown = refused
        .iter()
        .any(|c| c.principal.starts_with("unknown-token:"));
    assert!(
        denied_viewer && rejected_dup && anon && unknown,
        "refusals missing from audit: {refused:#?}"
    );
    assert!(
        !format!("{:?}", audit).contains("mst_not_a_real_token"),
        "a token leaked into the audit trail"
    );
}

#[tokio::test]
async fn roles_are_enforced() {
    let s = TestServer::start_with(Options {
        role_tokens: true,
        ..Default::default()
    })
    .unwrap();
    let mut viewer = s.inventory_as(VIEWER_TOKEN).await.unwrap();
    let mut approver = s.inventory_as(muster_tests::APPROVER_TOKEN).await.unwrap();
    let mut operator = s.inventory_as(OPERATOR_TOKEN).await.unwrap();
    viewer
        .list(pb::ListRequest {
            kind: ResourceKind::Site as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    let e = approver
        .create(pb::CreateRequest {
            resource: Some(site("x")),
            context: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::PermissionDenied,
        "an approver may not write"
    );
    operator
        .create(pb::CreateRequest {
            resource: Some(site("x")),
            context: None,
        })
        .await
        .unwrap();
    // Backup needs admin.
    let mut admin_api = muster::pb::admin_service_client::AdminServiceClient::with_interceptor(
        s.channel().await.unwrap(),
        muster_tests::bearer(OPERATOR_TOKEN),
    );
    let e = admin_api
        .backup(pb::BackupRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
}
