//! The resolver over a real (temporary) inventory: each missing or wrong part of a device's
//! SSH access is named, and a complete one resolves.

use std::process::Command;

use muster::clock::ManualClock;
use muster::pb::{self, resource::Resource as R};

use super::*;
use crate::inventory::{ApplyInput, ChangeContext};
use crate::model::secrets::SecretBox;
use crate::model::{Principal, Role};
use crate::store::SledStore;

const PIN: &str = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU";

fn inventory(dir: &std::path::Path) -> Arc<Inventory> {
    let store = SledStore::open(dir, &Default::default()).unwrap();
    Arc::new(Inventory::new(
        Arc::new(store),
        SecretBox::from_key([3; 32]),
        ManualClock::starting_now(),
        crate::drift::mailbox().0,
    ))
}

async fn put(inv: &Inventory, r: R) {
    inv.apply(
        &Principal::new("alice", Role::Admin),
        ApplyInput {
            resource: pb::Resource { resource: Some(r) },
            context: ChangeContext::default(),
            dry_run: false,
        },
    )
    .await
    .unwrap();
}

fn meta(name: &str) -> Option<pb::ObjectMeta> {
    Some(pb::ObjectMeta {
        name: name.into(),
        ..Default::default()
    })
}

fn device(name: &str, ssh: Option<pb::SshEndpoint>) -> R {
    R::Device(pb::Device {
        meta: meta(name),
        kind: pb::DeviceKind::Server as i32,
        ssh,
        ..Default::default()
    })
}

fn endpoint(cred: &str, pin: &str) -> Option<pb::SshEndpoint> {
    Some(pb::SshEndpoint {
        host: "127.0.0.1".into(),
        port: 2222,
        user: "root".into(),
        credential_ref: cred.into(),
        host_key_fingerprint: pin.into(),
    })
}

fn credential(name: &str, kind: pb::CredentialKind, secret: &[u8]) -> R {
    R::Credential(pb::Credential {
        meta: meta(name),
        kind: kind as i32,
        secret: secret.to_vec(),
        ..Default::default()
    })
}

fn private_key(dir: &std::path::Path) -> Vec<u8> {
    let p = dir.join("id_ed25519");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&p)
        .status()
        .expect("ssh-keygen (openssh-client) is needed by this test");
    assert!(st.success());
    std::fs::read(p).unwrap()
}

#[tokio::test]
async fn every_missing_part_is_named_and_a_complete_endpoint_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let inv = inventory(&dir.path().join("store"));
    let key = private_key(dir.path());
    put(
        &inv,
        credential("key", pb::CredentialKind::SshPrivateKey, &key),
    )
    .await;
    put(
        &inv,
        credential("bmc", pb::CredentialKind::BmcPassword, b"pw"),
    )
    .await;
    put(
        &inv,
        credential("junk", pb::CredentialKind::SshPrivateKey, b"not a key"),
    )
    .await;
    put(&inv, device("bare", None)).await;
    put(&inv, device("nopin", endpoint("key", ""))).await;
    put(&inv, device("nocred", endpoint("", PIN))).await;
    // The pin's format and the credential reference are checked on write; a wrong kind and
    // an undecodable key get past those checks.
    put(&inv, device("bmc", endpoint("bmc", PIN))).await;
    put(&inv, device("junk", endpoint("junk", PIN))).await;
    put(&inv, device("good", endpoint("key", PIN))).await;
    let r = InventoryResolver {
        inventory: Arc::clone(&inv),
    };
    let err = |h: &str| r.resolve(h).unwrap_err().to_string();
    assert!(
        err("ghost").contains("device \"ghost\" does not exist"),
        "{}",
        err("ghost")
    );
    assert!(
        err("bare").contains("device \"bare\" has no ssh endpoint"),
        "{}",
        err("bare")
    );
    assert!(
        err("nopin").contains("no pinned host key"),
        "{}",
        err("nopin")
    );
    assert!(
        err("nocred").contains("names no credential"),
        "{}",
        err("nocred")
    );
    let e = err("bmc");
    assert!(
        e.contains("credential \"bmc\"")
            && e.contains("not found or not an SSH private key")
            && e.contains("BMC_PASSWORD"),
        "{e}"
    );
    let e = err("junk");
    assert!(
        e.contains("not an SSH private key") && e.contains("OpenSSH"),
        "{e}"
    );
    // The secret is never in a message.
    assert!(!e.contains("not a key"), "{e}");
    let t = r.resolve("good").unwrap();
    assert_eq!((t.host(), t.port(), t.user()), ("127.0.0.1", 2222, "root"));
    assert_eq!(t.pin().fingerprint(), PIN);
}
