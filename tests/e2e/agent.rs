//! The real `muster-agent` against the real `musterd` (auto-TLS, mTLS identities), with the
//! OpenIPMI simulator over RMCP+, smartctl replaying recorded transcripts, libvirt's test
//! driver, and the host's own OS facts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use muster::pb::{self, agent_service_client::AgentServiceClient, resource::Resource as R};
use muster_agent::identity::{self, Paths};
use muster_tests::ipmi::IpmiSim;
use muster_tests::{Options, TestServer, bin};

/// The report interval these tests run with.
pub(crate) const INTERVAL: &str = "1s";

pub(crate) fn tls_server(extra: &[&str]) -> TestServer {
    let mut args = vec!["--agent-interval".to_string(), INTERVAL.to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    TestServer::start_with(Options {
        tls_auto: true,
        args,
        ..Options::default()
    })
    .unwrap()
}

pub(crate) fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn add_device(s: &TestServer, name: &str) {
    let manifest = format!("kind: Device\nmeta:\n  name: {name}\ntype: SERVER\nrole: web\n");
    ok(&s.muster_with(&["apply", "-f", "-"], &s.token, Some(manifest.as_bytes())));
}

pub(crate) fn token_for(s: &TestServer, device: &str, ttl: &str) -> String {
    ok(&s.muster(&["agent", "token", "create", device, "--ttl", ttl]))
        .trim()
        .to_string()
}

/// A `muster-agent` with its own state directory.
pub(crate) struct AgentHost {
    state: tempfile::TempDir,
    server: String,
    ca: PathBuf,
    child: Option<Child>,
}

impl AgentHost {
    pub(crate) fn new(s: &TestServer) -> Self {
        Self {
            state: tempfile::tempdir().unwrap(),
            server: s.url(),
            ca: s.ca_path(),
            child: None,
        }
    }

    pub(crate) fn dir(&self) -> &Path {
        self.state.path()
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("muster-agent"));
        c.arg("--server")
            .arg(&self.server)
            .arg("--ca")
            .arg(&self.ca)
            .arg("--state-dir")
            .arg(self.dir())
            .args(args)
            .env("MUSTER_LOG", "info");
        c
    }

    pub(crate) fn enroll(&self, token: &str, wait: &str) -> std::process::Output {
        self.cmd(&["enroll", "--token", token, "--wait", wait])
            .output()
            .unwrap()
    }

    /// Starts `muster-agent run` with a config file (collectors) and flags.
    pub(crate) fn run(&mut self, config: &str, args: &[&str]) {
        let cfg = self.dir().join("agent.toml");
        std::fs::write(&cfg, config).unwrap();
        let log = std::fs::File::create(self.dir().join("agent.log")).unwrap();
        let mut full = vec!["--config", cfg.to_str().unwrap()];
        full.extend_from_slice(args);
        full.push("run");
        let child = self
            .cmd(&full)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("agent.log")).unwrap_or_default()
    }

    /// An AgentService client presenting this agent's certificate.
    pub(crate) async fn client(&self) -> AgentServiceClient<tonic::transport::Channel> {
        let ch = identity::channel(
            &self.server,
            Some(&self.ca),
            &Paths::new(self.dir()),
            true,
            false,
        )
        .unwrap();
        AgentServiceClient::new(ch)
    }
}

impl Drop for AgentHost {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A minimal agent config: no SMART scan, no packages unless asked.
pub(crate) fn config(extra: &str) -> String {
    format!("interval = \"{INTERVAL}\"\nsmart = false\npackages = false\n{extra}")
}

pub(crate) async fn device(s: &TestServer, name: &str) -> pb::Device {
    let mut c = s.inventory().await.unwrap();
    let r = c
        .get(pb::GetRequest {
            kind: pb::ResourceKind::Device as i32,
            name: name.into(),
        })
        .await
        .unwrap()
        .into_inner();
    match r.resource {
        Some(R::Device(d)) => d,
        other => panic!("not a device: {other:?}"),
    }
}

fn health(d: &pb::Device) -> pb::Health {
    d.status
        .as_ref()
        .and_then(|s| pb::Health::try_from(s.health).ok())
        .unwrap_or_default()
}

pub(crate) fn reason_codes(d: &pb::Device) -> Vec<String> {
    d.status
        .as_ref()
        .map(|s| s.health_reasons.iter().map(|r| r.code.clone()).collect())
        .unwrap_or_default()
}

/// Polls the device until `pred` holds or `within` passes; returns the last state seen.
pub(crate) async fn wait_for(
    s: &TestServer,
    name: &str,
    within: Duration,
    what: &str,
    pred: impl Fn(&pb::Device) -> bool,
) -> pb::Device {
    let deadline = Instant::now() + within;
    loop {
        let d = device(s, name).await;
        if pred(&d) {
            return d;
        }
        if Instant::now() > deadline {
            panic!(
                "{what}: not reached within {within:?}; health {:?} reasons {:?}",
                health(&d),
                d.status.as_ref().map(|s| &s.health_reasons)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn smartctl() -> &'static str {
    if Path::new("/usr/sbin/smartctl").exists() {
        "/usr/sbin/smartctl"
    } else {
        "smartctl"
    }
}

pub(crate) fn fixture(rel: &str) -> String {
    format!("{}/fixtures/{rel}", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread")]
async fn enrollment_tokens_are_one_time_and_rekeys_wait_for_approval() {
    let s = tls_server(&[]);
    add_device(&s, "web-01");
    let t = token_for(&s, "web-01", "1h");
    let a = AgentHost::new(&s);
    let out = a.enroll(&t, "0s");
    assert!(ok(&out).contains("enrolled as device web-01"));
    // Reused, unknown and expired tokens are refused, each with its reason.
    let b = AgentHost::new(&s);
    let out = b.enroll(&t, "0s");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already used"));
    let out = b.enroll("mst_enroll_not-a-real-token", "0s");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown enrollment token"));
    let short = token_for(&s, "web-01", "1s");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let out = b.enroll(&short, "0s");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expired"),
        "{out:?}"
    );

    // The first identity reports.
    let mut first = a.client().await;
    let report = pb::ReportRequest {
        device: "web-01".into(),
        boot_id: "boot-1".into(),
        seq: 1,
        facts_hash: "h1".into(),
        facts: Some(pb::Facts::default()),
        ..Default::default()
    };
    assert!(
        first
            .report(report.clone())
            .await
            .unwrap()
            .into_inner()
            .applied
    );

    // A second enrollment for the same device is held, not silently taking over.
    let t2 = token_for(&s, "web-01", "1h");
    let out = b.enroll(&t2, "0s");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("muster agent approve web-01"), "{err}");
    let list = ok(&s.muster(&["agent", "list"]));
    assert!(
        list.contains("pending") && list.contains("active"),
        "{list}"
    );
    // Meanwhile the old identity still works.
    let mut r2 = report.clone();
    r2.seq = 2;
    first.report(r2).await.unwrap();

    ok(&s.muster(&["agent", "approve", "web-01", "--reason", "disk swap, CHG-7"]));
    let out = b.enroll("", "10s");
    assert!(ok(&out).contains("enrolled as device web-01"), "{out:?}");
    // The old certificate is revoked; the new one starts its own sequence.
    let mut r3 = report.clone();
    r3.seq = 3;
    let e = first.report(r3).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let mut second = b.client().await;
    assert!(second.report(report).await.unwrap().into_inner().applied);

    // Every step is in the audit trail, refusals included.
    let audit = ok(&s.muster(&["audit", "--refused", "-o", "json"]));
    for verb in [
        "agent-token",
        "agent-enroll",
        "agent-enroll-held",
        "agent-approve",
    ] {
        assert!(audit.contains(&format!("\"{verb}\"")), "{verb} missing");
    }
    assert!(audit.contains("already used") && audit.contains("expired"));
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_reports_are_refused_and_change_nothing() {
    let s = tls_server(&["--max-message-bytes", "1048576"]);
    add_device(&s, "web-01");
    add_device(&s, "web-02");
    let a = AgentHost::new(&s);
    ok(&a.enroll(&token_for(&s, "web-01", "1h"), "0s"));
    let mut c = a.client().await;
    let base = pb::ReportRequest {
        device: "web-01".into(),
        boot_id: "b1".into(),
        seq: 5,
        facts_hash: "h5".into(),
        facts: Some(pb::Facts {
            memory_bytes: Some(1 << 30),
            ..Default::default()
        }),
        ..Default::default()
    };
    let r = c.report(base.clone()).await.unwrap().into_inner();
    assert!(r.applied && r.acked_seq == 5);

    // Another device's name: PERMISSION_DENIED, audited.
    let mut other = base.clone();
    other.device = "web-02".into();
    other.seq = 6;
    let e = c.report(other).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    // The same (boot, seq) again: a no-op answered OK.
    let r = c.report(base.clone()).await.unwrap().into_inner();
    assert!(!r.applied && r.acked_seq == 5);
    // An older sequence: not applied; the agent is told the sequence to continue after.
    let mut old = base.clone();
    old.seq = 4;
    let r = c.report(old).await.unwrap().into_inner();
    assert!(r.resync && !r.applied && r.acked_seq == 5, "{r:?}");
    // A delta on facts the server does not hold: asks for a full report, applies nothing.
    let mut delta = base.clone();
    delta.seq = 7;
    delta.base_hash = "not-what-the-server-holds".into();
    delta.facts = Some(pb::Facts {
        memory_bytes: Some(7),
        ..Default::default()
    });
    let r = c.report(delta).await.unwrap().into_inner();
    assert!(r.resend_full && !r.applied);
    // Oversized.
    let mut big = base.clone();
    big.seq = 8;
    big.facts = Some(pb::Facts {
        external_json: Some(format!("{{\"x\":\"{}\"}}", "a".repeat(2 * 1024 * 1024))),
        ..Default::default()
    });
    let e = c.report(big).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    // No client certificate at all.
    let anon = identity::channel(
        &s.url(),
        Some(&s.ca_path()),
        &Paths::new(a.dir()),
        false,
        false,
    )
    .unwrap();
    let e = AgentServiceClient::new(anon)
        .report(base.clone())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);

    let d = device(&s, "web-01").await;
    let st = d.status.unwrap();
    assert_eq!(
        (st.report_seq, st.memory_bytes),
        (5, 1 << 30),
        "nothing refused was applied"
    );
    assert!(
        device(&s, "web-02")
            .await
            .status
            .is_none_or(|s| s.report_seq == 0)
    );
    let audit = ok(&s.muster(&["audit", "--refused", "-o", "json"]));
    assert!(
        audit.contains("may not report for"),
        "the impersonation is audited"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ipmi_faults_turn_health_critical_with_reasons_and_back() {
    let sim = IpmiSim::start().unwrap();
    let s = tls_server(&[]);
    add_device(&s, "bmc-01");
    let mut a = AgentHost::new(&s);
    ok(&a.enroll(&token_for(&s, "bmc-01", "1h"), "0s"));
    let pw = a.dir().join("bmc.pw");
    std::fs::write(&pw, sim.password()).unwrap();
    a.run(
        &config(&format!(
            "bmc = \"{}\"\nbmc_password_file = \"{}\"\n[deadlines]\nipmi = \"4s\"\n",
            sim.endpoint(),
            pw.display()
        )),
        &[],
    );
    let within = Duration::from_secs(8);
    // The fixture's SEL holds an unresolved PSU failure and CPU over-temperature.
    let d = wait_for(&s, "bmc-01", within, "first report", |d| {
        d.status.as_ref().is_some_and(|s| !s.sensors.is_empty())
    })
    .await;
    let st = d.status.as_ref().unwrap();
    assert_eq!(
        st.fru.as_ref().unwrap().serial,
        muster_tests::ipmi::FRU_SERIAL
    );
    assert_eq!(
        st.firmware.as_ref().unwrap().bmc,
        muster_tests::ipmi::FIRMWARE
    );
    assert_eq!(st.power, pb::PowerState::PowerOn as i32);
    assert_eq!(health(&d), pb::Health::Critical);
    assert!(
        reason_codes(&d).iter().all(|c| c == "sel.critical"),
        "{:?}",
        reason_codes(&d)
    );

    sim.clear_sel().unwrap();
    wait_for(&s, "bmc-01", within, "OK after SEL clear", |d| {
        health(d) == pb::Health::Ok
    })
    .await;

    sim.fan_fail().unwrap();
    let d = wait_for(&s, "bmc-01", within, "fan critical", |d| {
        health(d) == pb::Health::Critical
            && d.status
                .as_ref()
                .unwrap()
                .health_reasons
                .iter()
                .any(|r| r.code == "sensor.threshold" && r.source == "Fan1")
    })
    .await;
    assert!(
        d.status
            .unwrap()
            .health_reasons
            .iter()
            .any(|r| r.message.contains("RPM"))
    );
    sim.fan_ok().unwrap();
    wait_for(&s, "bmc-01", within, "fan recovered", |d| {
        health(d) == pb::Health::Ok
    })
    .await;

    sim.psu_fail().unwrap();
    let d = wait_for(&s, "bmc-01", within, "PSU critical", |d| {
        reason_codes(d).contains(&"sensor.fault".to_string())
    })
    .await;
    assert_eq!(health(&d), pb::Health::Critical);
    let r = &d.status.unwrap().health_reasons;
    assert!(
        r.iter().any(|r| r.message.contains("failure detected")),
        "{r:?}"
    );
    sim.psu_ok().unwrap();
    wait_for(&s, "bmc-01", within, "PSU recovered", |d| {
        health(d) == pb::Health::Ok
    })
    .await;

    sim.add_ecc_event().unwrap();
    let d = wait_for(&s, "bmc-01", within, "ECC critical", |d| {
        reason_codes(d) == ["sel.critical"]
    })
    .await;
    assert!(
        d.status.as_ref().unwrap().health_reasons[0]
            .message
            .contains("ECC")
    );
    // describe shows the SEL latest first, with the ECC event on top.
    let text = ok(&s.muster(&["describe", "device", "bmc-01"]));
    let sel = text.split("SEL (latest first)").nth(1).unwrap();
    assert!(sel.lines().nth(2).unwrap().contains("ECC"), "{sel}");
    sim.clear_sel().unwrap();
    wait_for(
        &s,
        "bmc-01",
        within,
        "OK after clearing the ECC event",
        |d| health(d) == pb::Health::Ok,
    )
    .await;

    // Every health change is an audited change of the device.
    let audit = ok(&s.muster(&["audit", "-o", "json"]));
    assert!(audit.matches("\"health\"").count() >= 8, "{audit}");
    // The CLI filters by health.
    let ok_list = ok(&s.muster(&["get", "devices", "--health", "ok", "-o", "name"]));
    assert!(ok_list.contains("bmc-01"));
    assert!(
        !ok(&s.muster(&["get", "devices", "--health", "critical", "-o", "name"]))
            .contains("bmc-01")
    );
    a.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_bmc_never_delays_reports_and_piles_up_nothing() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let s = tls_server(&[]);
    add_device(&s, "dead-bmc");
    let mut a = AgentHost::new(&s);
    ok(&a.enroll(&token_for(&s, "dead-bmc", "1h"), "0s"));
    let pw = a.dir().join("bmc.pw");
    std::fs::write(&pw, "secret").unwrap();
    a.run(
        &config(&format!(
            "bmc = \"rmcp://admin@127.0.0.1:{port}\"\nbmc_password_file = \"{}\"\n[deadlines]\nipmi = \"1s\"\n",
            pw.display()
        )),
        &[],
    );
    let d = wait_for(
        &s,
        "dead-bmc",
        Duration::from_secs(10),
        "reports flow",
        |d| d.status.as_ref().is_some_and(|s| s.report_seq >= 3),
    )
    .await;
    assert_eq!(health(&d), pb::Health::Warning, "{:?}", reason_codes(&d));
    let st = d.status.unwrap();
    let ipmi = st.collectors.iter().find(|c| c.name == "ipmi").unwrap();
    assert!(
        !ipmi.error.is_empty() && ipmi.last_success.is_none(),
        "{ipmi:?}"
    );
    assert!(st.os.is_some(), "other collectors still report");
    // Threads stay bounded while the BMC keeps not answering.
    let tasks = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .count()
    };
    let before = tasks(a.pid());
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = tasks(a.pid());
    assert!(
        after <= before + 1 && after < 16,
        "threads {before} -> {after}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn smart_growth_predicts_failure_and_deltas_skip_unchanged_sections() {
    let s = tls_server(&[]);
    add_device(&s, "disk-01");
    let mut a = AgentHost::new(&s);
    ok(&a.enroll(&token_for(&s, "disk-01", "1h"), "0s"));
    let disk = |f: &str| format!("replay:{}", fixture(&format!("smart/{f}")));
    let cfg = |f: &str| {
        format!(
            "interval = \"{INTERVAL}\"\nsmart = true\nsmartctl = \"{}\"\ndisks = [\"{}\"]\npackages = true\n",
            smartctl(),
            disk(f)
        )
    };
    a.run(&cfg("hdd-realloc-8.ioctl"), &[]);
    let d = wait_for(
        &s,
        "disk-01",
        Duration::from_secs(10),
        "backblaze warning",
        |d| reason_codes(d) == ["smart.backblaze"] && d.status.as_ref().unwrap().report_seq >= 2,
    )
    .await;
    // OS facts and packages are the host's real ones.
    let st = d.status.unwrap();
    let dpkg = Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Abbrev}\n"])
        .output()
        .unwrap();
    let installed = String::from_utf8_lossy(&dpkg.stdout)
        .lines()
        .filter(|l| l.as_bytes().get(1) == Some(&b'i'))
        .count();
    assert_eq!(st.packages.len(), installed);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(st.os.unwrap().kernel, kernel.trim());
    // Only the first report carried the packages; later ones sent what changed.
    let log = a.log();
    let reported: Vec<&str> = log.lines().filter(|l| l.contains("reported")).collect();
    assert!(reported.len() >= 2, "{log}");
    assert!(
        reported[0].contains("full=true") && reported[0].contains('6'),
        "{}",
        reported[0]
    );
    assert!(
        reported[1..].iter().all(|l| l.contains("full=false")),
        "{log}"
    );
    assert!(
        reported[1..]
            .iter()
            .all(|l| !l.contains("sections=[1, 2, 3, 4, 5, 6")),
        "packages resent: {log}"
    );

    // The same disk, more reallocated sectors: predicted failure.
    a.stop();
    a.run(&cfg("hdd-realloc-24.ioctl"), &[]);
    let d = wait_for(
        &s,
        "disk-01",
        Duration::from_secs(10),
        "predicted failure",
        |d| reason_codes(d).contains(&"smart.predicted_failure".to_string()),
    )
    .await;
    assert_eq!(health(&d), pb::Health::Critical);
    let msg = &d.status.unwrap().health_reasons[0].message;
    assert!(msg.contains("from 8 to 24"), "{msg}");
    // A restarted agent whose facts the server still holds (Heartbeat says so) sends deltas.
    let log = a.log();
    assert!(log.contains("continuing with deltas"), "{log}");
    assert!(!log.contains("full=true"), "{log}");
    // A failing disk.
    a.stop();
    a.run(&cfg("hdd-failing.ioctl"), &[]);
    wait_for(
        &s,
        "disk-01",
        Duration::from_secs(10),
        "smart failed",
        |d| reason_codes(d).contains(&"smart.failed".to_string()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hypervisor_vms_are_linked_and_vanished_ones_marked() {
    let s = tls_server(&[]);
    add_device(&s, "hv-01");
    let mut a = AgentHost::new(&s);
    ok(&a.enroll(&token_for(&s, "hv-01", "1h"), "0s"));
    let node = a.dir().join("node.xml");
    std::fs::copy(fixture("libvirt/node.xml"), &node).unwrap();
    a.run(
        &config(&format!("libvirt_uri = \"test://{}\"\n", node.display())),
        &[],
    );
    let vms = || async {
        let out = ok(&s.muster(&[
            "get",
            "devices",
            "--field-selector",
            "parent=hv-01",
            "-o",
            "json",
        ]));
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = vms().await;
        if v["items"].as_array().is_some_and(|a| a.len() == 3) {
            break;
        }
        assert!(Instant::now() < deadline, "3 VMs not linked: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let vm = device(&s, "vm-old").await;
    assert_eq!(vm.parent, "hv-01");
    assert_eq!(vm.kind, pb::DeviceKind::Vm as i32);
    assert_eq!(
        vm.meta
            .unwrap()
            .labels
            .get("muster.io/discovered")
            .map(String::as_str),
        Some("true")
    );
    // Remove vm-old from the hypervisor.
    let xml = std::fs::read_to_string(&node).unwrap();
    let start = xml.find("<domain").unwrap();
    let mut cut = xml.clone();
    let mut i = start;
    while let Some(off) = cut[i..].find("<domain") {
        let s0 = i + off;
        let e0 = s0 + cut[s0..].find("</domain>").unwrap() + "</domain>".len();
        if cut[s0..e0].contains("<name>vm-old</name>") {
            cut.replace_range(s0..e0, "");
            break;
        }
        i = e0;
    }
    assert_ne!(cut, xml, "fixture has vm-old");
    std::fs::write(&node, cut).unwrap();
    wait_for(
        &s,
        "vm-old",
        Duration::from_secs(10),
        "vm-old vanished",
        |d| {
            d.meta
                .as_ref()
                .is_some_and(|m| m.labels.contains_key("muster.io/vanished"))
        },
    )
    .await;
    let web = device(&s, "vm-web-1").await;
    assert!(!web.meta.unwrap().labels.contains_key("muster.io/vanished"));

    // An agent that stops reporting turns its device UNKNOWN after three intervals.
    a.stop();
    let d = wait_for(&s, "hv-01", Duration::from_secs(10), "silent agent", |d| {
        health(d) == pb::Health::Unknown
    })
    .await;
    assert_eq!(reason_codes(&d), ["agent.silent"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn spooled_reports_and_sel_events_arrive_in_order_after_an_outage() {
    let sim = IpmiSim::start().unwrap();
    let mut s = tls_server(&[]);
    add_device(&s, "spool-01");
    let mut a = AgentHost::new(&s);
    ok(&a.enroll(&token_for(&s, "spool-01", "1h"), "0s"));
    let pw = a.dir().join("bmc.pw");
    std::fs::write(&pw, sim.password()).unwrap();
    a.run(
        &config(&format!(
            "bmc = \"{}\"\nbmc_password_file = \"{}\"\n",
            sim.endpoint(),
            pw.display()
        )),
        &[],
    );
    let d = wait_for(
        &s,
        "spool-01",
        Duration::from_secs(8),
        "first report",
        |d| {
            d.status
                .as_ref()
                .is_some_and(|s| s.report_seq >= 1 && !s.sel.is_empty())
        },
    )
    .await;
    let sel_before = d.status.unwrap().sel.len();

    s.kill9();
    // While the server is down: several collections, with new SEL events between them.
    for _ in 0..3 {
        sim.add_ecc_event().unwrap();
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    let spooled = std::fs::read_dir(a.dir().join("spool")).unwrap().count();
    assert!(spooled >= 3, "reports kept in the spool: {spooled}");
    s.spawn().unwrap();

    let d = wait_for(
        &s,
        "spool-01",
        Duration::from_secs(15),
        "spool drained",
        |d| {
            d.status
                .as_ref()
                .is_some_and(|s| s.sel.len() >= sel_before + 3)
        },
    )
    .await;
    let st = d.status.unwrap();
    // Latest first: the three new ECC records, newest on top, ids strictly decreasing.
    let ids: Vec<u32> = st.sel.iter().map(|e| e.record_id).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
    assert_eq!(
        st.sel
            .iter()
            .filter(|e| e.event.contains("ECC") && e.severity == "critical")
            .count(),
        3
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_dir(a.dir().join("spool")).unwrap().count() > 1 {
        assert!(Instant::now() < deadline, "spool not drained");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = a.log();
    assert!(
        !log.contains("report refused"),
        "a report was refused: {log}"
    );
    assert!(
        !log.contains("resend_full") && !log.contains("sending a full report"),
        "{log}"
    );
}
