//! The real `muster` CLI against the real server: apply, get, describe, delete, audit, watch,
//! bulk apply, and one-line errors.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use muster::pb::{self, ResourceKind};
use muster_tests::{Options, TestServer, VIEWER_TOKEN, bin, run_cli};

const FLEET: &str = r#"
kind: Site
meta: {name: fra1, labels: {region: eu}}
region: eu-central
---
kind: Rack
meta: {name: fra1-r01}
site: fra1
height_u: 42
---
kind: Credential
meta: {name: bmc-default}
type: BMC_PASSWORD
secret: aHVudGVyMg==
---
kind: Device
type: SERVER
meta: {name: hv-01, labels: {role: hypervisor}}
site: fra1
rack: fra1-r01
serial: SN-HV-01
bmc: {address: 10.0.0.11, username: admin, credential_ref: bmc-default}
---
kind: Device
type: VM
meta: {name: web-01, labels: {role: web, env: prod}}
parent: hv-01
---
kind: Device
type: VM
meta: {name: web-02, labels: {role: web, env: staging}}
parent: hv-01
---
kind: Profile
meta: {name: web-baseline}
selector: role=web
priority: 10
spec: {packages: [{name: nginx, version: "1.24.0", match: MINIMUM}]}
---
kind: Window
meta: {name: sat-night}
selector: env=prod
cron: "0 2 * * sat"
duration: 7200s
timezone: Europe/Berlin
"#;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts a failed CLI run: exit 1 and exactly one `error: ...` line containing `needle`.
fn assert_one_line_error(out: &std::process::Output, needle: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    assert!(
        err.starts_with("error: ") && err.contains(needle),
        "{err:?} lacks {needle:?}"
    );
}

#[tokio::test]
async fn apply_get_describe_delete_audit() {
    let s = TestServer::start().unwrap();
    let out = s.muster_with(
        &[
            "apply",
            "-f",
            "-",
            "--reason",
            "initial load",
            "--ticket",
            "CHG-1",
        ],
        &s.token,
        Some(FLEET.as_bytes()),
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    for line in [
        "site/fra1 created",
        "rack/fra1-r01 created",
        "credential/bmc-default created",
        "device/hv-01 created",
        "device/web-01 created",
        "profile/web-baseline created",
        "window/sat-night created",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in {stdout}");
    }
    assert!(
        stdout.contains("applied 8 objects: 8 created, 0 configured, 0 unchanged"),
        "{stdout}"
    );

    let again = s.muster_with(&["apply", "-f", "-"], &s.token, Some(FLEET.as_bytes()));
    assert!(
        text(&again.stdout).contains("applied 8 objects: 0 created, 0 configured, 8 unchanged"),
        "{}",
        text(&again.stdout)
    );

    let table = s.muster(&["get", "devices", "-l", "role=web"]);
    let t = text(&table.stdout);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.len(), 3, "header and two rows: {t}");
    assert!(
        lines[0].contains("NAME") && lines[0].contains("KIND") && lines[0].contains("LIFECYCLE"),
        "{t}"
    );
    assert!(
        lines[1].contains("web-01") && lines[1].contains("VM") && lines[1].contains("ACTIVE"),
        "{t}"
    );
    assert!(!t.contains("hv-01"));

    let names = text(
        &s.muster(&[
            "get",
            "devices",
            "--field-selector",
            "parent=hv-01",
            "-o",
            "name",
        ])
        .stdout,
    );
    assert_eq!(
        names.lines().collect::<Vec<_>>(),
        ["device/web-01", "device/web-02"]
    );

    let json = s.muster(&["get", "device", "hv-01", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["kind"], "Device");
    assert_eq!(v["type"], "SERVER");
    assert_eq!(v["serial"], "SN-HV-01");
    assert_eq!(v["meta"]["created_by"], "admin");

    // What `get -o yaml` prints applies back unchanged.
    let yaml = s.muster(&["get", "devices", "-o", "yaml"]);
    let back = s.muster_with(&["apply", "-f", "-"], &s.token, Some(&yaml.stdout));
    assert!(
        text(&back.stdout).contains("3 unchanged"),
        "{}{}",
        text(&back.stdout),
        text(&back.stderr)
    );

    let secret = s.muster(&["get", "credential", "bmc-default", "-o", "yaml"]);
    assert!(
        !text(&secret.stdout).contains("aHVudGVyMg"),
        "secret came back: {}",
        text(&secret.stdout)
    );

    let describe = text(&s.muster(&["describe", "device", "web-01"]).stdout);
    assert!(
        describe.contains("web-01") && describe.contains("hv-01"),
        "{describe}"
    );
    assert!(
        describe.contains("initial load") && describe.contains("CHG-1"),
        "describe lacks the audit trail: {describe}"
    );

    let del = s.muster(&["delete", "device", "web-02", "--reason", "decommissioned"]);
    assert!(
        text(&del.stdout).contains("device/web-02 deleted"),
        "{}",
        text(&del.stderr)
    );
    assert_one_line_error(
        &s.muster(&["get", "device", "web-02"]),
        "NOT_FOUND: device \"web-02\" not found",
    );
    assert_one_line_error(
        &s.muster(&["delete", "device", "hv-01"]),
        "FAILED_PRECONDITION",
    );

    let audit = text(&s.muster(&["audit", "-r", "device/web-02"]).stdout);
    let rows: Vec<&str> = audit.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "create and delete: {audit}");
    assert!(
        rows[0].contains("apply") && rows[0].contains("CHG-1"),
        "{audit}"
    );
    assert!(
        rows[1].contains("delete") && rows[1].contains("decommissioned"),
        "{audit}"
    );

    let who = text(&s.muster(&["whoami"]).stdout);
    assert!(
        who.contains("principal: admin") && who.contains("role: admin"),
        "{who}"
    );
    let completion = s.muster(&["completion", "bash"]);
    assert!(completion.status.success() && text(&completion.stdout).contains("muster"));
}

#[tokio::test]
async fn errors_are_one_line_and_change_nothing() {
    let s = TestServer::start_with(Options {
        role_tokens: true,
        ..Default::default()
    })
    .unwrap();
    assert_one_line_error(
        &s.muster_with(&["get", "sites"], "", None),
        "UNAUTHENTICATED: missing bearer token",
    );
    assert_one_line_error(
        &s.muster_with(&["get", "sites"], "mst_wrong", None),
        "UNAUTHENTICATED",
    );
    assert_one_line_error(
        &s.muster(&["get", "devices", "-l", "role ~ db"]),
        "selector",
    );
    let viewer = s.muster_with(&["apply", "-f", "-"], VIEWER_TOKEN, Some(FLEET.as_bytes()));
    assert_eq!(viewer.status.code(), Some(1));
    assert!(
        text(&viewer.stderr).contains("PERMISSION_DENIED"),
        "{}",
        text(&viewer.stderr)
    );
    assert_one_line_error(
        &run_cli("http://127.0.0.1:1", &s.token, &["get", "sites"], None),
        "cannot connect to http://127.0.0.1:1",
    );

    // A bad document anywhere in the file: nothing at all is sent.
    let bad =
        format!("{FLEET}---\nkind: Device\ntype: SERVER\nmeta: {{name: bad-1}}\ncolour: red\n");
    let out = s.muster_with(&["apply", "-f", "-"], &s.token, Some(bad.as_bytes()));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("document 9") && err.contains("colour"),
        "{err}"
    );
    let mut c = s.inventory().await.unwrap();
    let all = muster_tests::snapshot(&mut c).await.unwrap();
    assert!(
        all.is_empty(),
        "a rejected file wrote {} objects",
        all.len()
    );

    let usage = s.muster(&["get"]);
    assert_eq!(usage.status.code(), Some(2), "clap usage errors exit 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_events_as_they_happen() {
    let s = TestServer::start().unwrap();
    let mut child = Command::new(bin("muster"))
        .args([
            "watch", "devices", "-l", "role=web", "-o", "json", "--once", "2",
        ])
        .env("MUSTER_SERVER", s.url())
        .env("MUSTER_TOKEN", &s.token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Give the stream a moment to open, then write: a non-matching device and two matching ones.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let docs = "kind: Device\ntype: SERVER\nmeta: {name: db-1, labels: {role: db}}\n---\nkind: Device\ntype: SERVER\nmeta: {name: web-1, labels: {role: web}}\n---\nkind: Device\ntype: SERVER\nmeta: {name: web-2, labels: {role: web}}\n";
    let out = s.muster_with(
        &["apply", "-f", "-", "--concurrency", "1"],
        &s.token,
        Some(docs.as_bytes()),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = child.stdout.take().unwrap();
    let lines: Vec<String> = BufReader::new(stdout).lines().map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    assert!(status.success());
    assert_eq!(lines.len(), 2, "{lines:?}");
    let mut names = Vec::new();
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["type"], "ADDED");
        names.push(v["object"]["meta"]["name"].as_str().unwrap().to_string());
    }
    names.sort();
    assert_eq!(names, ["web-1", "web-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_apply_of_ten_thousand_devices() {
    let s = TestServer::start().unwrap();
    let mut docs = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        docs.push(serde_json::json!({
            "kind": "Device",
            "type": "SERVER",
            "meta": {"name": format!("node-{i:05}"), "labels": {"role": if i % 100 == 0 { "db" } else { "web" }}},
            "serial": format!("SN{i:08}"),
        }));
    }
    let file = s.dir.path().join("fleet.json");
    std::fs::write(&file, serde_json::to_vec(&docs).unwrap()).unwrap();
    let out = s.muster(&[
        "apply",
        "-f",
        file.to_str().unwrap(),
        "--bulk",
        "--reason",
        "bulk",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("applied 10000 objects: 10000 created, 0 configured, 0 unchanged"),
        "{stdout}"
    );
    assert!(
        stdout.lines().count() < 5,
        "large applies print a summary, not 10,000 lines"
    );
    let mut c = s.inventory().await.unwrap();
    let db = c
        .list(pb::ListRequest {
            kind: ResourceKind::Device as i32,
            selector: "role=db".into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(db.resources.len(), 100);
    let all = muster_tests::snapshot(&mut c).await.unwrap();
    assert_eq!(all.len(), 10_000);
}
