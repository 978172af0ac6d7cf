//! A restore never silently loses the keys: a backup made with a passphrase carries the secrets
//! key and the agent CA (encrypted) and restores to a working server, one without refuses to
//! start until the files are copied, and a wrong passphrase restores nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use muster::pb::{self, resource::Resource as R};
use muster_tests::{Options, TestServer, bin};
use tonic::Code;

use crate::agent::{AgentHost, add_device, ok, token_for};

const KEY_FILES: [&str; 3] = ["secrets.key", "agent-ca.key", "agent-ca.pem"];
const PASSPHRASE: &str = "correct horse battery staple";

fn passphrase_file(s: &TestServer, name: &str, text: &str) -> PathBuf {
    let p = s.dir.path().join(name);
    std::fs::write(&p, format!("{text}\n")).unwrap();
    p
}

fn restore(from: &Path, into: &Path, passphrase: Option<&Path>) -> Output {
    let mut c = Command::new(bin("musterd"));
    c.args(["restore", "--from"])
        .arg(from)
        .arg("--data-dir")
        .arg(into);
    if let Some(p) = passphrase {
        c.arg("--passphrase-file").arg(p);
    }
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn credential(secret: &[u8]) -> pb::Resource {
    pb::Resource {
        resource: Some(R::Credential(pb::Credential {
            meta: Some(pb::ObjectMeta {
                name: "bmc-fra1".into(),
                ..Default::default()
            }),
            kind: pb::CredentialKind::BmcPassword as i32,
            secret: secret.to_vec(),
            fingerprint: String::new(),
        })),
    }
}

/// Whether the server can still open the sealed credential: applying the same secret is
/// UNCHANGED only if the stored one decrypts with the server's key.
async fn credential_opens(s: &TestServer) -> bool {
    let mut c = s.inventory().await.unwrap();
    let r = c
        .apply(pb::ApplyRequest {
            resource: Some(credential(b"hunter2-very-secret")),
            context: None,
            dry_run: true,
        })
        .await
        .unwrap()
        .into_inner();
    r.action == pb::ApplyAction::Unchanged as i32
}

fn options(tls_auto: bool) -> Options {
    Options {
        role_tokens: true,
        tls_auto,
        args: vec!["--agent-interval".into(), crate::agent::INTERVAL.into()],
        ..Default::default()
    }
}

async fn add_credential(s: &TestServer) {
    s.inventory()
        .await
        .unwrap()
        .create(pb::CreateRequest {
            resource: Some(credential(b"hunter2-very-secret")),
            context: None,
        })
        .await
        .unwrap();
}

fn report(seq: u64) -> pb::ReportRequest {
    pb::ReportRequest {
        device: "web-01".into(),
        boot_id: "boot-1".into(),
        seq,
        facts_hash: "h1".into(),
        facts: Some(pb::Facts::default()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passphrase_backup_restores_the_keys_and_every_agent_identity() {
    let mut s = TestServer::start_with(options(true)).unwrap();
    add_device(&s, "web-01");
    let token = token_for(&s, "web-01", "1h");
    let agent = AgentHost::new(&s);
    assert!(ok(&agent.enroll(&token, "0s")).contains("enrolled as device web-01"));
    assert!(
        agent
            .client()
            .await
            .report(report(1))
            .await
            .unwrap()
            .into_inner()
            .applied
    );
    add_credential(&s).await;
    let pass = passphrase_file(&s, "pass", PASSPHRASE);
    let pass_arg = pass.to_str().unwrap();

    // Online (the real CLI) and offline (musterd, once stopped), both with the passphrase.
    let online = s.dir.path().join("online.backup");
    let out = s.muster(&[
        "admin",
        "backup",
        "--to",
        online.to_str().unwrap(),
        "--passphrase-file",
        pass_arg,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("carries no keys"),
        "{}",
        stderr(&out)
    );
    let bytes = std::fs::read(&online).unwrap();
    let key = std::fs::read(s.data_dir.join("secrets.key")).unwrap();
    assert!(
        !bytes.windows(32).any(|w| w == key.as_slice()),
        "the secrets key is in the backup in plaintext"
    );
    s.stop().unwrap();
    let offline = s.dir.path().join("offline.backup");
    let out = Command::new(bin("musterd"))
        .args(["backup", "--to"])
        .arg(&offline)
        .arg("--data-dir")
        .arg(&s.data_dir)
        .arg("--passphrase-file")
        .arg(&pass)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    for file in [&online, &offline] {
        let mut restored = TestServer::prepare(options(true)).unwrap();
        let out = restore(file, &restored.data_dir, Some(&pass));
        assert!(out.status.success(), "{}", stderr(&out));
        for f in KEY_FILES {
            assert_eq!(
                std::fs::read(restored.data_dir.join(f)).unwrap(),
                std::fs::read(s.data_dir.join(f)).unwrap(),
                "{f} not restored byte-identical from {}",
                file.display()
            );
        }
        // Same port, so the agent (which trusts the old CA file) reaches the restored server.
        restored.addr = s.addr;
        restored.spawn().unwrap();
        for f in KEY_FILES {
            assert_eq!(
                std::fs::read(restored.data_dir.join(f)).unwrap(),
                std::fs::read(s.data_dir.join(f)).unwrap(),
                "{f} replaced at start"
            );
        }
        // The agent's old certificate is still its identity, and the credential still opens.
        let applied = agent.client().await.report(report(2)).await;
        assert!(applied.unwrap().into_inner().applied, "{}", restored.log());
        assert!(
            credential_opens(&restored).await,
            "the sealed credential no longer opens"
        );
        restored.stop().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_keys_a_restored_store_refuses_to_start_and_creates_none() {
    let mut s = TestServer::start_with(options(false)).unwrap();
    add_credential(&s).await;
    let file = s.dir.path().join("nokeys.backup");
    let out = s.muster(&["admin", "backup", "--to", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("carries no keys") && stderr(&out).contains("secrets.key"),
        "no warning at backup time: {}",
        stderr(&out)
    );
    s.stop().unwrap();

    let mut restored = TestServer::prepare(options(false)).unwrap();
    let out = restore(&file, &restored.data_dir, None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("copy secrets.key"),
        "{}",
        stderr(&out)
    );
    let err = restored.spawn().unwrap_err().to_string();
    for needle in [
        "secrets.key is missing",
        "seals the credentials",
        "musterd restore --from BACKUP --data-dir DIR --passphrase-file FILE",
        "copy it from the old data directory",
    ] {
        assert!(
            err.contains(needle),
            "start-up refusal lacks {needle:?}: {err}"
        );
    }
    for f in KEY_FILES {
        assert!(
            !restored.data_dir.join(f).exists(),
            "{f} was created over a store that needs the old one"
        );
    }

    // Copying the files, as the message says, makes it work, credential included.
    for f in KEY_FILES {
        std::fs::copy(s.data_dir.join(f), restored.data_dir.join(f)).unwrap();
    }
    restored.spawn().unwrap();
    assert!(credential_opens(&restored).await);
    restored.stop().unwrap();

    // A different key is refused too (not only a missing one), and so is a missing CA.
    std::fs::write(restored.data_dir.join("secrets.key"), [9u8; 32]).unwrap();
    let err = restored.spawn().unwrap_err().to_string();
    assert!(
        err.contains("secrets.key is not the file this store was set up with"),
        "{err}"
    );
    std::fs::copy(
        s.data_dir.join("secrets.key"),
        restored.data_dir.join("secrets.key"),
    )
    .unwrap();
    std::fs::remove_file(restored.data_dir.join("agent-ca.key")).unwrap();
    std::fs::remove_file(restored.data_dir.join("agent-ca.pem")).unwrap();
    let err = restored.spawn().unwrap_err().to_string();
    assert!(
        err.contains("agent-ca.key is missing") && err.contains("lock every agent out"),
        "{err}"
    );
    assert!(!restored.data_dir.join("agent-ca.key").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_passphrase_restores_nothing_and_a_weak_one_is_refused() {
    let s = TestServer::start_with(options(false)).unwrap();
    add_credential(&s).await;
    let pass = passphrase_file(&s, "pass", PASSPHRASE);
    let file = s.dir.path().join("keys.backup");
    let out = s.muster(&[
        "admin",
        "backup",
        "--to",
        file.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    let target = s.dir.path().join("restored");
    let wrong = passphrase_file(&s, "wrong", "not the passphrase at all");
    let cases: [(&str, Option<&Path>, &str); 2] = [
        ("wrong passphrase", Some(&wrong), "wrong passphrase"),
        ("no passphrase", None, "pass --passphrase-file"),
    ];
    for (what, p, needle) in cases {
        let out = restore(&file, &target, p);
        assert!(!out.status.success(), "{what}: restore succeeded");
        assert!(stderr(&out).contains(needle), "{what}: {}", stderr(&out));
        assert!(!target.exists(), "{what}: something was written");
    }

    // An empty passphrase file would mean "no keys" on the wire: the CLI refuses it.
    let empty = passphrase_file(&s, "empty", "");
    let keyless = s.dir.path().join("keyless.backup");
    let out = s.muster(&[
        "admin",
        "backup",
        "--to",
        keyless.to_str().unwrap(),
        "--passphrase-file",
        empty.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "an empty passphrase file was taken");
    assert!(stderr(&out).contains("is empty"), "{}", stderr(&out));
    assert!(!keyless.exists(), "a backup was written");

    // The online backup refuses a passphrase outside its limits, audited, writing nothing.
    let mut admin = pb::admin_service_client::AdminServiceClient::with_interceptor(
        s.channel().await.unwrap(),
        muster_tests::bearer(&s.token),
    );
    let before = admin
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner()
        .revision;
    let cases: [(&str, Vec<u8>, &str); 2] = [
        ("short", b"short".to_vec(), "at least 12 bytes"),
        ("long", vec![b'x'; 1025], "at most 1024 bytes"),
    ];
    for (what, passphrase, needle) in cases {
        let e = admin
            .backup(pb::BackupRequest { passphrase })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
        assert!(
            e.message().contains("passphrase") && e.message().contains(needle),
            "{what}: {}",
            e.message()
        );
    }
    let refused = s.audit_trail("").await.unwrap();
    let audited = refused
        .iter()
        .filter(|c| {
            c.verb == "backup"
                && c.outcome == pb::ChangeOutcome::Rejected as i32
                && c.message.contains("passphrase")
        })
        .count();
    assert_eq!(audited, 2, "refused backups not audited: {refused:#?}");
    // The backup that was taken is in the trail too, saying it carries the keys.
    assert!(
        refused.iter().any(|c| c.verb == "backup"
            && c.outcome == pb::ChangeOutcome::Accepted as i32
            && c.message.contains("with the keys")),
        "the accepted backup was not audited: {refused:#?}"
    );
    let after = admin
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner()
        .revision;
    assert_eq!(before, after, "a refused backup changed the store");
}
