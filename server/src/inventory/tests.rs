//! Unit tests of the inventory over a real (temporary) sled store and a manual clock: the
//! one write preparation, apply built on it, and what a device's delete takes with it.

use std::sync::Arc;
use std::time::Duration;

use muster::clock::ManualClock;
use muster::pb::{self, ResourceKind, resource::Resource as R};

use super::*;
use crate::model::{Principal, Role};
use crate::store::{AuxWrite, Expect, SledStore};

const T0: i64 = 1_700_000_000_000_000_000;

struct Fixture {
    inv: Arc<Inventory>,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), &Default::default()).unwrap();
    let clock = ManualClock::at_unix_nanos(T0);
    let inv = Inventory::new(
        Arc::new(store),
        SecretBox::from_key([7; 32]),
        clock.clone(),
        crate::drift::mailbox().0,
    );
    Fixture {
        inv: Arc::new(inv),
        clock,
        _dir: dir,
    }
}

fn admin() -> Principal {
    Principal::new("alice", Role::Admin)
}

fn meta(name: &str) -> Option<pb::ObjectMeta> {
    Some(pb::ObjectMeta {
        name: name.into(),
        ..Default::default()
    })
}

fn device(name: &str, role: &str) -> pb::Resource {
    pb::Resource {
        resource: Some(R::Device(pb::Device {
            meta: meta(name),
            kind: pb::DeviceKind::Server as i32,
            role: role.into(),
            ..Default::default()
        })),
    }
}

fn credential(name: &str, secret: &[u8]) -> pb::Resource {
    pb::Resource {
        resource: Some(R::Credential(pb::Credential {
            meta: meta(name),
            kind: pb::CredentialKind::BmcPassword as i32,
            secret: secret.to_vec(),
            ..Default::default()
        })),
    }
}

fn apply_input(r: pb::Resource, dry_run: bool) -> ApplyInput {
    ApplyInput {
        resource: r,
        context: ChangeContext::default(),
        dry_run,
    }
}

fn secret_of(r: &pb::Resource) -> &[u8] {
    match r.resource.as_ref() {
        Some(R::Credential(c)) => &c.secret,
        _ => &[],
    }
}

#[tokio::test]
async fn preparation_tells_created_updated_and_unchanged_apart() {
    let f = fixture();
    let ctx = ChangeContext::default();
    let p = f
        .inv
        .prepare_write(&admin(), device("web-01", "web"), &ctx, T0)
        .unwrap();
    assert_eq!(p.action, ApplyAction::Created);
    assert_eq!(p.base_revision, 0);
    let m = p.mutation.unwrap();
    assert!(matches!(m.expect, Expect::Absent));
    assert_eq!(
        (m.change.verb.as_str(), m.change.time_unix_nanos),
        ("apply", T0)
    );
    assert_eq!(p.resource.meta().unwrap().created_by, "alice");

    f.clock.advance(Duration::from_secs(5));
    let (action, stored) = f
        .inv
        .apply(&admin(), apply_input(device("web-01", "web"), false))
        .await
        .unwrap();
    assert_eq!(action, ApplyAction::Created);
    let rev = stored.meta().unwrap().revision;
    let created = stored.meta().unwrap().created_at.unwrap();
    assert_eq!(
        created.seconds,
        T0 / 1_000_000_000 + 5,
        "time is the clock's"
    );

    let same = f
        .inv
        .prepare_write(&admin(), device("web-01", "web"), &ctx, T0)
        .unwrap();
    assert_eq!(same.action, ApplyAction::Unchanged);
    assert!(same.mutation.is_none());
    assert_eq!(same.base_revision, rev);

    let changed = f
        .inv
        .prepare_write(&admin(), device("web-01", "db"), &ctx, T0)
        .unwrap();
    assert_eq!(changed.action, ApplyAction::Updated);
    assert!(matches!(
        changed.mutation.unwrap().expect,
        Expect::Revision(r) if r == rev
    ));
    // Server-owned parts are carried over, not taken from the input.
    assert_eq!(
        changed.resource.meta().unwrap().id,
        stored.meta().unwrap().id
    );
}

#[tokio::test]
async fn apply_goes_through_the_same_preparation() {
    let f = fixture();
    let who = admin();
    let dry = f
        .inv
        .apply(&who, apply_input(device("web-01", "web"), true))
        .await
        .unwrap();
    assert_eq!(dry.0, ApplyAction::Created);
    assert!(
        f.inv
            .load(ResourceKind::Device, "web-01")
            .unwrap()
            .is_none()
    );

    f.inv
        .apply(&who, apply_input(device("web-01", "web"), false))
        .await
        .unwrap();
    let (again, _) = f
        .inv
        .apply(&who, apply_input(device("web-01", "web"), false))
        .await
        .unwrap();
    assert_eq!(again, ApplyAction::Unchanged);
    let (dry, shown) = f
        .inv
        .apply(&who, apply_input(device("web-01", "db"), true))
        .await
        .unwrap();
    assert_eq!(dry, ApplyAction::Updated);
    match shown.resource {
        Some(R::Device(d)) => assert_eq!(d.role, "db"),
        other => panic!("{other:?}"),
    }
    let (_, stored) = f.inv.load(ResourceKind::Device, "web-01").unwrap().unwrap();
    match stored.resource {
        Some(R::Device(d)) => assert_eq!(d.role, "web", "a dry run writes nothing"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_resent_secret_is_no_change_and_secrets_never_leave() {
    let f = fixture();
    let who = admin();
    let (_, shown) = f
        .inv
        .apply(&who, apply_input(credential("bmc", b"hunter2"), false))
        .await
        .unwrap();
    assert!(secret_of(&shown).is_empty());
    let (_, stored) = f
        .inv
        .load(ResourceKind::Credential, "bmc")
        .unwrap()
        .unwrap();
    assert!(!secret_of(&stored).is_empty());
    assert_ne!(secret_of(&stored), b"hunter2", "stored sealed");

    let p = f
        .inv
        .prepare_write(
            &who,
            credential("bmc", b"hunter2"),
            &ChangeContext::default(),
            T0,
        )
        .unwrap();
    assert_eq!(p.action, ApplyAction::Unchanged);
    let (action, shown) = f
        .inv
        .apply(&who, apply_input(credential("bmc", b"changed"), true))
        .await
        .unwrap();
    assert_eq!(action, ApplyAction::Updated);
    assert!(secret_of(&shown).is_empty());
}

#[tokio::test]
async fn a_devices_delete_takes_its_auxiliary_records_and_nothing_else() {
    let f = fixture();
    let who = admin();
    for name in ["web-01", "web-02"] {
        f.inv
            .apply(&who, apply_input(device(name, "web"), false))
            .await
            .unwrap();
    }
    let id = |name: &str| {
        f.inv
            .load(ResourceKind::Device, name)
            .unwrap()
            .unwrap()
            .0
            .id
    };
    let (one, two) = (id("web-01"), id("web-02"));
    let records = |id: &str, name: &str| {
        vec![
            crate::observed::meta_key(id),
            crate::observed::section_key(id, muster::facts::Section::Os),
            crate::observed::section_key(id, muster::facts::Section::Packages),
            crate::observed::sel_key(id),
            crate::aux_keys::key(crate::aux_keys::DRIFT_MEMORY, id),
            crate::aux_keys::key(crate::aux_keys::AGENT_DEVICE, name),
            crate::drift::overlays::key(id, "campaign-1"),
            crate::drift::overlays::key(id, "campaign-2"),
        ]
    };
    let puts = records(&one, "web-01")
        .into_iter()
        .chain(records(&two, "web-02"))
        .map(|k| (k, Some(b"x".to_vec())))
        .collect();
    let w = AuxWrite {
        guards: Vec::new(),
        puts,
        mutation: None,
    };
    crate::store::commit_aux_durably(&**f.inv.store(), w)
        .await
        .unwrap();

    f.inv
        .delete(
            &who,
            DeleteInput {
                kind: ResourceKind::Device,
                name: "web-01".into(),
                expected_revision: 0,
                context: ChangeContext::default(),
            },
        )
        .await
        .unwrap();
    let store = f.inv.store();
    for k in records(&one, "web-01") {
        assert_eq!(
            store.aux_get(&k).unwrap(),
            None,
            "{}",
            String::from_utf8_lossy(&k)
        );
    }
    for k in records(&two, "web-02") {
        assert!(
            store.aux_get(&k).unwrap().is_some(),
            "{}",
            String::from_utf8_lossy(&k)
        );
    }

    // Deleting it again is a not-found that names it.
    let e = f
        .inv
        .delete(
            &who,
            DeleteInput {
                kind: ResourceKind::Device,
                name: "web-01".into(),
                expected_revision: 0,
                context: ChangeContext::default(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "device \"web-01\" not found");
}

/// A change set's records are written with its changes, and not at all when it is refused.
#[tokio::test]
async fn a_change_set_writes_its_records_with_it_or_not_at_all() {
    let f = fixture();
    let who = admin();
    let now = f.inv.now_unix_nanos();
    let ctx = ChangeContext::default();
    let write = |name: &str, role: &str| {
        f.inv
            .prepare_write(&who, device(name, role), &ctx, now)
            .unwrap()
            .mutation
            .unwrap()
    };
    let names = [(ResourceKind::Device, "web-01".to_string())];
    let revs = f
        .inv
        .commit_set_with(
            vec![write("web-01", "web")],
            &names,
            vec![(b"t/kept".to_vec(), Some(b"1".to_vec()))],
        )
        .await
        .unwrap();
    assert_eq!(revs.len(), 1);
    let store = f.inv.store();
    assert_eq!(store.aux_get(b"t/kept").unwrap(), Some(b"1".to_vec()));
    // A set whose change fails (web-01 exists now; the mutation expects it absent) writes
    // none of its records, puts nor deletes.
    let stale = write("web-02", "web");
    let mut again = write("web-01", "db");
    again.expect = Expect::Absent;
    let e = f
        .inv
        .commit_set_with(
            vec![stale, again],
            &[
                (ResourceKind::Device, "web-02".to_string()),
                (ResourceKind::Device, "web-01".to_string()),
            ],
            vec![
                (b"t/new".to_vec(), Some(b"2".to_vec())),
                (b"t/kept".to_vec(), None),
            ],
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("web-01"), "{e}");
    assert_eq!(store.aux_get(b"t/new").unwrap(), None);
    assert_eq!(store.aux_get(b"t/kept").unwrap(), Some(b"1".to_vec()));
    assert!(
        f.inv
            .load(ResourceKind::Device, "web-02")
            .unwrap()
            .is_none()
    );
}
