//! CRUD, selectors, pagination, references and credentials over real gRPC.

use muster::pb::{self, ResourceKind, resource::Resource as R};
use muster_tests::fixtures::{device, name_of, rack, revision_of, site};
use muster_tests::{InventoryClient, TestServer};

async fn create(c: &mut InventoryClient, r: pb::Resource) -> pb::Resource {
    c.create(pb::CreateRequest {
        resource: Some(r),
        context: None,
    })
    .await
    .unwrap()
    .into_inner()
}

async fn list(
    c: &mut InventoryClient,
    kind: ResourceKind,
    selector: &str,
    fields: &str,
) -> Vec<String> {
    let r = c
        .list(pb::ListRequest {
            kind: kind as i32,
            selector: selector.into(),
            field_selector: fields.into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut names: Vec<String> = r.resources.iter().map(name_of).collect();
    names.sort();
    names
}

#[tokio::test]
async fn crud_selectors_and_pagination() {
    let s = TestServer::start().unwrap();
    let mut c = s.inventory().await.unwrap();
    create(&mut c, site("fra1")).await;
    create(&mut c, site("ams1")).await;
    create(&mut c, rack("fra1-r1", "fra1")).await;
    for (name, role, site_name) in [
        ("db-1", "db", "fra1"),
        ("db-2", "db", "ams1"),
        ("web-1", "web", "fra1"),
        ("old-1", "db", "fra1"),
    ] {
        let mut d = device(name, &[("role", role), ("site", site_name)]);
        if let Some(R::Device(x)) = d.resource.as_mut() {
            x.site = site_name.into();
            x.role = role.into();
            if name == "old-1" {
                x.meta
                    .as_mut()
                    .unwrap()
                    .labels
                    .insert("retired".into(), "".into());
            }
        }
        let got = create(&mut c, d).await;
        let Some(R::Device(x)) = got.resource else {
            panic!("not a device")
        };
        let m = x.meta.unwrap();
        assert_eq!(m.id.len(), 26, "ULID id assigned");
        assert!(m.revision > 0);
        assert_eq!(m.created_by, "admin");
        assert_eq!(
            x.lifecycle,
            pb::Lifecycle::Active as i32,
            "default lifecycle"
        );
    }

    assert_eq!(
        list(
            &mut c,
            ResourceKind::Device,
            "role=db,site in (fra1,ams1),!retired",
            ""
        )
        .await,
        ["db-1", "db-2"]
    );
    assert_eq!(
        list(&mut c, ResourceKind::Device, "role notin (db)", "").await,
        ["web-1"]
    );
    assert_eq!(
        list(&mut c, ResourceKind::Device, "retired", "").await,
        ["old-1"]
    );
    assert_eq!(
        list(&mut c, ResourceKind::Device, "", "site=ams1").await,
        ["db-2"]
    );
    assert_eq!(
        list(&mut c, ResourceKind::Device, "", "kind=SERVER,role!=db").await,
        ["web-1"]
    );
    assert_eq!(
        list(&mut c, ResourceKind::Device, "", "serial=SN-db-1").await,
        ["db-1"]
    );
    assert_eq!(
        list(&mut c, ResourceKind::Rack, "", "site=fra1").await,
        ["fra1-r1"]
    );

    // Pagination: pages of 3 cover every device exactly once.
    let mut token = String::new();
    let mut seen = Vec::new();
    loop {
        let r = c
            .list(pb::ListRequest {
                kind: ResourceKind::Device as i32,
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.resources.len() <= 3);
        seen.extend(r.resources.iter().map(name_of));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    seen.sort();
    assert_eq!(seen, ["db-1", "db-2", "old-1", "web-1"]);

    // Get, Update with the right expected revision, then Delete.
    let got = c
        .get(pb::GetRequest {
            kind: ResourceKind::Device as i32,
            name: "web-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let rev = revision_of(&got);
    let mut changed = got.clone();
    if let Some(R::Device(x)) = changed.resource.as_mut() {
        x.model = "R650".into();
    }
    let updated = c
        .update(pb::UpdateRequest {
            resource: Some(changed),
            expected_revision: rev,
            context: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(revision_of(&updated) > rev);
    let Some(R::Device(x)) = updated.resource else {
        panic!()
    };
    assert_eq!(x.model, "R650");
    let m = x.meta.unwrap();
    let Some(R::Device(orig)) = got.resource else {
        panic!()
    };
    assert_eq!(
        m.id,
        orig.meta.as_ref().unwrap().id,
        "identity kept across update"
    );
    assert_eq!(m.created_at, orig.meta.as_ref().unwrap().created_at);

    c.delete(pb::DeleteRequest {
        kind: ResourceKind::Device as i32,
        name: "web-1".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let e = c
        .get(pb::GetRequest {
            kind: ResourceKind::Device as i32,
            name: "web-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(e.message().contains("web-1"), "{}", e.message());
}

#[tokio::test]
async fn apply_is_idempotent_and_keeps_status_server_owned() {
    let s = TestServer::start().unwrap();
    let mut c = s.inventory().await.unwrap();
    let apply = |r: pb::Resource, dry_run: bool| pb::ApplyRequest {
        resource: Some(r),
        context: None,
        dry_run,
    };
    let mut d = device("web-1", &[("role", "web")]);
    // Operators cannot write observed state.
    if let Some(R::Device(x)) = d.resource.as_mut() {
        x.status = Some(pb::ObservedState {
            agent_version: "forged".into(),
            ..Default::default()
        });
    }
    let dry = c.apply(apply(d.clone(), true)).await.unwrap().into_inner();
    assert_eq!(dry.action, pb::ApplyAction::Created as i32);
    assert!(
        snapshot_names(&mut c).await.is_empty(),
        "dry run writes nothing"
    );

    let first = c.apply(apply(d.clone(), false)).await.unwrap().into_inner();
    assert_eq!(first.action, pb::ApplyAction::Created as i32);
    let Some(R::Device(x)) = first.resource.as_ref().and_then(|r| r.resource.clone()) else {
        panic!()
    };
    assert!(x.status.is_none(), "status is server-owned");
    let second = c.apply(apply(d.clone(), false)).await.unwrap().into_inner();
    assert_eq!(second.action, pb::ApplyAction::Unchanged as i32);
    assert_eq!(
        revision_of(second.resource.as_ref().unwrap()),
        revision_of(first.resource.as_ref().unwrap())
    );

    if let Some(R::Device(x)) = d.resource.as_mut() {
        x.role = "frontend".into();
    }
    let third = c.apply(apply(d, false)).await.unwrap().into_inner();
    assert_eq!(third.action, pb::ApplyAction::Updated as i32);
}

async fn snapshot_names(c: &mut InventoryClient) -> Vec<String> {
    muster_tests::snapshot(c)
        .await
        .unwrap()
        .iter()
        .map(name_of)
        .collect()
}

#[tokio::test]
async fn references_must_resolve_and_block_deletes() {
    let s = TestServer::start().unwrap();
    let mut c = s.inventory().await.unwrap();
    let e = c
        .create(pb::CreateRequest {
            resource: Some(rack("r1", "nowhere")),
            context: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().contains("site \"nowhere\""), "{}", e.message());

    create(&mut c, site("fra1")).await;
    create(&mut c, site("ams1")).await;
    create(&mut c, rack("r1", "fra1")).await;
    let mut d = device("web-1", &[]);
    if let Some(R::Device(x)) = d.resource.as_mut() {
        x.site = "ams1".into();
        x.rack = "r1".into();
    }
    let e = c
        .create(pb::CreateRequest {
            resource: Some(d),
            context: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        tonic::Code::InvalidArgument,
        "rack in another site"
    );
    assert!(e.message().starts_with("rack:"), "{}", e.message());

    let e = c
        .delete(pb::DeleteRequest {
            kind: ResourceKind::Site as i32,
            name: "fra1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().contains("rack r1"), "{}", e.message());
    c.delete(pb::DeleteRequest {
        kind: ResourceKind::Rack as i32,
        name: "r1".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    c.delete(pb::DeleteRequest {
        kind: ResourceKind::Site as i32,
        name: "fra1".into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn credentials_are_write_only() {
    let s = TestServer::start().unwrap();
    let mut c = s.inventory().await.unwrap();
    let cred = pb::Resource {
        resource: Some(R::Credential(pb::Credential {
            meta: Some(pb::ObjectMeta {
                name: "bmc-fra1".into(),
                ..Default::default()
            }),
            kind: pb::CredentialKind::BmcPassword as i32,
            secret: b"hunter2-very-secret".to_vec(),
            fingerprint: String::new(),
        })),
    };
    let created = create(&mut c, cred).await;
    let Some(R::Credential(x)) = created.resource else {
        panic!()
    };
    assert!(x.secret.is_empty(), "secret never returned");
    assert_eq!(x.fingerprint.len(), 24);
    let got = c
        .get(pb::GetRequest {
            kind: ResourceKind::Credential as i32,
            name: "bmc-fra1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let Some(R::Credential(g)) = got.resource else {
        panic!()
    };
    assert!(g.secret.is_empty());
    assert_eq!(g.fingerprint, x.fingerprint);
    // Neither the audit trail nor the data files hold the plaintext.
    let changes = s
        .audit()
        .await
        .unwrap()
        .list(pb::ListChangesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let text = format!("{:?}", changes.changes);
    assert!(!text.contains("hunter2"), "audit leaks the secret");
    drop(c);
    let db = std::fs::read(s.data_dir.join("db")).unwrap();
    assert!(
        !db.windows(7).any(|w| w == b"hunter2"),
        "secret stored in plaintext"
    );

    // A device may refer to the credential; then it cannot be deleted.
    let mut c = s.inventory().await.unwrap();
    let mut d = device("web-1", &[]);
    if let Some(R::Device(x)) = d.resource.as_mut() {
        x.bmc = Some(pb::BmcEndpoint {
            address: "10.0.0.5".into(),
            port: 623,
            username: "admin".into(),
            credential_ref: "bmc-fra1".into(),
        });
    }
    create(&mut c, d).await;
    let e = c
        .delete(pb::DeleteRequest {
            kind: ResourceKind::Credential as i32,
            name: "bmc-fra1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
}
