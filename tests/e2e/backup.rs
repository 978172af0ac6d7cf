//! Backup and restore: online (AdminService.Backup) and offline (`musterd backup`), restored
//! with `musterd restore` into an empty directory; damaged files and non-empty targets refused.

use std::process::Command;

use muster::pb;
use muster_tests::fixtures::{device, rack, site};
use muster_tests::{Options, TestServer, bin, snapshot};
use tokio_stream::StreamExt;

fn offline_backup(data_dir: &std::path::Path, to: &std::path::Path) -> std::process::Output {
    Command::new(bin("musterd"))
        .args(["backup", "--to"])
        .arg(to)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap()
}

fn restore(from: &std::path::Path, into: &std::path::Path) -> std::process::Output {
    Command::new(bin("musterd"))
        .args(["restore", "--from"])
        .arg(from)
        .arg("--data-dir")
        .arg(into)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_and_offline_backups_restore_the_same_store() {
    let opts = Options {
        role_tokens: true,
        ..Default::default()
    };
    let mut s = TestServer::start_with(opts.clone()).unwrap();
    let mut c = s.inventory().await.unwrap();
    c.create(pb::CreateRequest {
        resource: Some(site("fra1")),
        context: None,
    })
    .await
    .unwrap();
    c.create(pb::CreateRequest {
        resource: Some(rack("r1", "fra1")),
        context: None,
    })
    .await
    .unwrap();
    for i in 0..50 {
        c.create(pb::CreateRequest {
            resource: Some(device(&format!("d{i}"), &[("role", "db")])),
            context: None,
        })
        .await
        .unwrap();
    }
    let original = snapshot(&mut c).await.unwrap();

    // Online, while the server runs.
    let mut admin = pb::admin_service_client::AdminServiceClient::with_interceptor(
        s.channel().await.unwrap(),
        muster_tests::bearer(&s.token),
    );
    let mut stream = admin
        .backup(pb::BackupRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend(chunk.unwrap().data);
    }
    let online = s.dir.path().join("online.backup");
    std::fs::write(&online, &bytes).unwrap();

    // Offline: refused while the server holds the store, works once it stopped.
    let offline = s.dir.path().join("offline.backup");
    let busy = offline_backup(&s.data_dir, &offline);
    assert!(
        !busy.status.success(),
        "backup of a data dir in use must fail"
    );
    assert!(String::from_utf8_lossy(&busy.stderr).contains("muster admin backup"));
    let _ = std::fs::remove_file(&offline);
    drop((c, admin));
    s.stop().unwrap();
    let out = offline_backup(&s.data_dir, &offline);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("carries no keys"));

    for file in [&online, &offline] {
        let mut restored = TestServer::prepare(opts.clone()).unwrap();
        let out = restore(file, &restored.data_dir);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // These backups carry no keys (no passphrase): copy them by hand, as the warning says.
        for f in ["secrets.key", "agent-ca.key", "agent-ca.pem"] {
            std::fs::copy(s.data_dir.join(f), restored.data_dir.join(f)).unwrap();
        }
        restored.spawn().unwrap();
        let mut rc = restored.inventory().await.unwrap();
        assert_eq!(
            snapshot(&mut rc).await.unwrap(),
            original,
            "restored store differs ({})",
            file.display()
        );
        // It keeps working: revisions continue after the restored ones.
        let r = rc
            .create(pb::CreateRequest {
                resource: Some(site("ams1")),
                context: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(muster_tests::fixtures::revision_of(&r) > 52);

        // Restoring over a store that has data is refused.
        let again = restore(file, &restored.data_dir);
        assert!(!again.status.success());
        assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
    }

    // A damaged backup is refused and leaves no half-restored directory behind.
    let mut damaged = std::fs::read(&online).unwrap();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0xff;
    let bad = s.dir.path().join("damaged.backup");
    std::fs::write(&bad, &damaged).unwrap();
    let target = s.dir.path().join("restored-bad");
    let out = restore(&bad, &target);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("corrupt"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!target.exists());
    let truncated = s.dir.path().join("truncated.backup");
    std::fs::write(&truncated, &bytes[..bytes.len() - 40]).unwrap();
    assert!(!restore(&truncated, &target).status.success());
}
