//! Campaigns against what real hosts do: a real package installed with real dpkg over SSH and
//! seen by the agent's dpkg collector, reboots (the host's sshd and agent go away and come back
//! with a new boot id, or never come back).

use std::process::Command;
use std::time::{Duration, Instant};

use muster::pb::{self, resource::Resource as R};
use muster_tests::VIEWER_TOKEN;
use muster_tests::campaign_fleet::{CampaignFleet, FleetOptions};
use muster_tests::campaign_kit::{
    campaigns_as, host_state, launch, patch_spec, reboot_step, report, state_of, wait_settled,
};

const SETTLE: Duration = Duration::from_secs(60);

/// Builds `muster-hello_VERSION_all.deb` (one data file, no maintainer scripts) in `dir`.
fn build_deb(dir: &std::path::Path, version: &str) -> std::path::PathBuf {
    let root = dir.join(format!("pkg-{version}"));
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(root.join("usr/share/muster-hello")).unwrap();
    std::fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: muster-hello\nVersion: {version}\nArchitecture: all\n\
             Maintainer: muster e2e <e2e@example.invalid>\nDescription: muster campaign test package\n"
        ),
    )
    .unwrap();
    std::fs::write(root.join("usr/share/muster-hello/version"), version).unwrap();
    let deb = dir.join(format!("muster-hello_{version}_all.deb"));
    let o = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "-b"])
        .arg(&root)
        .arg(&deb)
        .output()
        .expect("dpkg-deb (package dpkg) must be installed");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    deb
}

fn installed(d: &pb::Device, pkg: &str) -> Option<String> {
    d.status
        .as_ref()?
        .packages
        .iter()
        .find(|p| p.name == pkg)
        .map(|p| p.version.clone())
}

fn drift_fields(d: &pb::Device) -> Vec<String> {
    d.status
        .as_ref()
        .map(|s| s.drift.iter().map(|i| i.field.clone()).collect())
        .unwrap_or_default()
}

async fn wait_device(
    f: &CampaignFleet,
    name: &str,
    what: &str,
    pred: impl Fn(&pb::Device) -> bool,
) -> pb::Device {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let d = f.device(name).await.unwrap();
        if pred(&d) {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: {what} not reached: packages {:?} drift {:?}",
            installed(&d, "muster-hello"),
            drift_fields(&d)
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// Real dpkg. Every "host" here is one machine, so each has its own dpkg root
/// (`dpkg --root=H/root`, database `H/root/var/lib/dpkg`) and its agent's `dpkg-query` is a
/// wrapper on its PATH passing `--admindir` of that database: the agent's real dpkg collector
/// reads the host's own packages. (The tests run as root, so no `--force-not-root` is needed;
/// the root dir keeps the machine's own dpkg database untouched.)
#[tokio::test(flavor = "multi_thread")]
async fn a_real_deb_is_installed_over_ssh_reported_by_dpkg_and_drift_closes() {
    let mut f = CampaignFleet::new(FleetOptions {
        packages: true,
        ..FleetOptions::default()
    })
    .unwrap();
    let v1 = build_deb(f.dir.path(), "1.0");
    let v2 = build_deb(f.dir.path(), "2.0");
    f.start_hosts("dp", 2).await.unwrap();
    for h in f.hosts.clone() {
        let o = Command::new("dpkg")
            .arg(format!("--root={}", h.dir.join("root").display()))
            .arg("-i")
            .arg(&v1)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // The fleet's profile already wants 2.0: pending drift until the campaign installs it.
    let mut cfg = pb::config_service_client::ConfigServiceClient::with_interceptor(
        f.server.channel().await.unwrap(),
        muster_tests::bearer(&f.server.token),
    );
    let want = pb::DesiredState {
        packages: vec![pb::PackageRequirement {
            name: "muster-hello".into(),
            version: "2.0".into(),
            r#match: pb::VersionMatch::Minimum as i32,
        }],
        ..Default::default()
    };
    cfg.apply(pb::ApplySetRequest {
        resources: vec![pb::Resource {
            resource: Some(R::Profile(pb::Profile {
                meta: Some(pb::ObjectMeta {
                    name: "hello".into(),
                    ..Default::default()
                }),
                selector: "fleet=dp".into(),
                priority: 10,
                spec: Some(want),
                description: String::new(),
            })),
        }],
        context: muster_tests::campaign_kit::ctx("want hello 2.0"),
    })
    .await
    .unwrap();
    for n in ["dp-01", "dp-02"] {
        wait_device(&f, n, "1.0 installed, drift pending", |d| {
            installed(d, "muster-hello").as_deref() == Some("1.0")
                && drift_fields(d).contains(&"packages.muster-hello".to_string())
        })
        .await;
    }

    let mut spec = patch_spec("dp", "2.0", 0, 0);
    spec.steps = vec![muster_tests::campaign_kit::ssh_step(
        "install",
        &format!("dpkg --root=\"$MUSTER_TEST_HOST/root\" -i {}", v2.display()),
        60,
        true,
    )];
    spec.rollback.clear();
    spec.desired = Some(pb::DesiredState {
        packages: vec![pb::PackageRequirement {
            name: "muster-hello".into(),
            version: "2.0".into(),
            r#match: pb::VersionMatch::Exact as i32,
        }],
        ..Default::default()
    });
    launch(&f.server, "hello-2", spec).await.unwrap();
    let mut c = campaigns_as(&f.server, VIEWER_TOKEN).await.unwrap();
    let r = wait_settled(&mut c, "hello-2", SETTLE).await.unwrap();
    assert_eq!(state_of(&r), pb::CampaignState::Completed, "{r:#?}");
    let rep = report(&mut c, "hello-2").await.unwrap();
    for n in ["dp-01", "dp-02"] {
        assert_eq!(host_state(&r, n), pb::HostState::HostSucceeded);
        let h = rep.hosts.iter().find(|h| h.device == n).unwrap();
        assert!(
            h.steps[0]
                .stdout_excerpt
                .contains("Setting up muster-hello (2.0)"),
            "{:#?}",
            h.steps[0]
        );
        // Installed for real in the host's root, reported by dpkg, drift closed.
        let dir = &f.host(n).dir;
        assert_eq!(
            std::fs::read_to_string(dir.join("root/usr/share/muster-hello/version")).unwrap(),
            "2.0"
        );
        wait_device(&f, n, "2.0 reported, drift closed", |d| {
            installed(d, "muster-hello").as_deref() == Some("2.0")
                && !drift_fields(d).contains(&"packages.muster-hello".to_string())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reboot_waits_for_ssh_and_a_new_boot_id_and_a_host_that_never_returns_times_out() {
    let mut f = CampaignFleet::new(FleetOptions::default()).unwrap();
    f.start_hosts("rb", 2).await.unwrap();
    f.set_marker("rb-02", "never-return", true);
    let before: Vec<String> = ["rb-01", "rb-02"].iter().map(|n| f.boot_id(n)).collect();
    const TIMEOUT: i64 = 12;
    let mut spec = patch_spec("rb", "2.0", 0, 1);
    spec.desired = None;
    spec.rollback.clear();
    spec.steps = vec![reboot_step("reboot", TIMEOUT)];
    launch(&f.server, "reboot-rb", spec).await.unwrap();
    let mut c = campaigns_as(&f.server, VIEWER_TOKEN).await.unwrap();
    let r = wait_settled(&mut c, "reboot-rb", SETTLE).await.unwrap();

    // rb-01 went down and came back; it succeeded with the boot id it came back with.
    assert_eq!(
        host_state(&r, "rb-01"),
        pb::HostState::HostSucceeded,
        "{r:#?}"
    );
    assert_eq!(f.reboots("rb-01"), 1, "a reboot is never repeated");
    let now = f.boot_id("rb-01");
    assert_ne!(now, before[0]);
    let d = f.device("rb-01").await.unwrap();
    assert_eq!(d.status.as_ref().unwrap().boot_id, now);
    let rep = report(&mut c, "reboot-rb").await.unwrap();
    let h1 = rep.hosts.iter().find(|h| h.device == "rb-01").unwrap();
    assert!(
        h1.steps.iter().any(|s| s.detail.contains(&now)),
        "the step's record names the new boot id: {h1:#?}"
    );

    // rb-02 went down for good: failed at the step's timeout, counted, not rebooted twice.
    assert_eq!(host_state(&r, "rb-02"), pb::HostState::HostFailed, "{r:#?}");
    assert_eq!(f.reboots("rb-02"), 1);
    let h2 = rep.hosts.iter().find(|h| h.device == "rb-02").unwrap();
    let took = h2.duration.as_ref().map_or(0, |d| d.seconds);
    assert!(
        (TIMEOUT - 1..=TIMEOUT + 20).contains(&took),
        "failed after {took} s, the step's timeout is {TIMEOUT} s: {h2:#?}"
    );
    assert_eq!(rep.summary.unwrap().failures, 1);
}

/// The fleet itself, through the OpenSSH client (no campaign): a session knows its host, the
/// patch script counts and the agent reports it, and `bin/reboot` from inside a session takes
/// sshd and the agent down and brings them back with a new boot id the agent reports.
#[tokio::test(flavor = "multi_thread")]
async fn fleet_hosts_patch_report_and_reboot_over_openssh() {
    let mut f = CampaignFleet::new(FleetOptions::default()).unwrap();
    f.start_hosts("fx", 1).await.unwrap();
    let h = f.host("fx-01").clone();
    let known = f.dir.path().join("known_hosts");
    let key = std::fs::read_to_string(h.dir.join("hostkey_ed25519.pub")).unwrap();
    let key: Vec<&str> = key.split_whitespace().take(2).collect();
    std::fs::write(
        &known,
        format!("[127.0.0.1]:{} {}\n", h.port, key.join(" ")),
    )
    .unwrap();
    let ssh = |cmd: &str| {
        Command::new("ssh")
            .arg("-i")
            .arg(&f.client_key)
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known.display()))
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
            .args(["-p", &h.port.to_string(), "root@127.0.0.1", cmd])
            .output()
            .unwrap()
    };
    let o = ssh("\"$MUSTER_TEST_HOST/bin/patch\" apply 3.1");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "apply 3.1 on fx-01"
    );
    let st = f.state("fx-01");
    assert_eq!((st.version.as_str(), st.runs), ("3.1", 1));
    wait_device(&f, "fx-01", "3.1 reported", |d| {
        muster_tests::campaign_fleet::reported_patch(d).is_some_and(|p| p.version == "3.1")
    })
    .await;
    f.set_marker("fx-01", "fail", true);
    let o = ssh("\"$MUSTER_TEST_HOST/bin/patch\" apply 3.2");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(f.state("fx-01").version, "3.1");
    assert_eq!(f.state("fx-01").runs, 2);

    let before = f.boot_id("fx-01");
    let o = ssh(muster_tests::campaign_fleet::REBOOT_COMMAND);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let d = wait_device(&f, "fx-01", "new boot id reported", |d| {
        d.status
            .as_ref()
            .is_some_and(|s| !s.boot_id.is_empty() && s.boot_id != before)
    })
    .await;
    assert_eq!(d.status.unwrap().boot_id, f.boot_id("fx-01"));
    assert_eq!(f.reboots("fx-01"), 1);
    // sshd came back with the same host key.
    let o = ssh("echo back");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
