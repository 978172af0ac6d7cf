//! One campaign driven entirely through the real `muster` binary against real hosts: create
//! from a manifest, submit, plan, four-eyes approval (the author refused, an approver
//! accepted), start, watch (piped: plain lines until the end), report as JSON and Markdown.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use muster_tests::campaign_fleet::{CampaignFleet, FleetOptions};
use muster_tests::{APPROVER_TOKEN, OPERATOR_TOKEN, VIEWER_TOKEN, bin};

const MANIFEST: &str = r#"kind: Campaign
meta:
  name: patch-cl
spec:
  selector: fleet=cl
  description: patch the cl fleet to 2.0
  any_time: true
  desired:
    expect:
      - {path: facts.external.patch.version, op: "==", value: "2.0"}
  steps:
    - name: patch
      ssh_command: '"$MUSTER_TEST_HOST/bin/patch" apply 2.0'
      timeout: 30s
  rollback:
    - name: unpatch
      ssh_command: '"$MUSTER_TEST_HOST/bin/patch" rollback 1.0'
      timeout: 30s
      idempotent: true
  verify_timeout: 15s
  window_margin: 1s
  strategy:
    failure_threshold: {hosts: 0}
    tolerance: TOLERANCE_SOFT
  approval: {approvers: ["role:approver"], required: 1}
"#;

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(o: std::process::Output) -> String {
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_campaign_through_the_cli_from_manifest_to_postmortem_report() {
    let mut f = CampaignFleet::new(FleetOptions::default()).unwrap();
    f.start_hosts("cl", 2).await.unwrap();
    let s = &f.server;
    let file = f.dir.path().join("campaign.yaml");
    std::fs::write(&file, MANIFEST).unwrap();
    let path = file.to_str().unwrap();
    let change = ["--reason", "CVE-2026-0001", "--ticket", "CHG-7"];

    let mut args = vec!["campaign", "create", "-f", path];
    args.extend(change);
    ok(s.muster_with(&args, OPERATOR_TOKEN, None));
    ok(s.muster_with(&["campaign", "submit", "patch-cl"], OPERATOR_TOKEN, None));
    let plan = ok(s.muster_with(&["campaign", "plan", "patch-cl"], VIEWER_TOKEN, None));
    assert!(
        plan.contains("cl-01") && plan.contains("cl-02"),
        "the plan lists the hosts:\n{plan}"
    );
    let json: serde_json::Value = serde_json::from_str(&ok(s.muster_with(
        &["campaign", "plan", "patch-cl", "-o", "json"],
        VIEWER_TOKEN,
        None,
    )))
    .unwrap();
    let digest = json["digest"].as_str().unwrap().to_string();
    assert_eq!(digest.len(), 64, "{json}");

    // Four eyes: the author may not approve; the approver approves the digest they saw.
    let approve = |token: &str| {
        s.muster_with(
            &[
                "campaign", "approve", "patch-cl", "--digest", &digest, "--reason", "reviewed",
            ],
            token,
            None,
        )
    };
    let o = approve(OPERATOR_TOKEN);
    assert!(!o.status.success(), "the author approved: {}", text(&o));
    assert!(
        text(&o).contains("FAILED_PRECONDITION") || text(&o).contains("PERMISSION_DENIED"),
        "{}",
        text(&o)
    );
    ok(approve(APPROVER_TOKEN));
    let mut args = vec!["campaign", "start", "patch-cl"];
    args.extend(change);
    ok(s.muster_with(&args, OPERATOR_TOKEN, None));

    // watch, piped: plain lines, and it ends by itself when the campaign completes.
    let mut child = Command::new(bin("muster"))
        .args(["campaign", "watch", "patch-cl"])
        .env("MUSTER_SERVER", s.url())
        .env("MUSTER_TOKEN", VIEWER_TOKEN)
        .env("MUSTER_CA_CERT", s.ca_path())
        .env("HOME", std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("campaign watch did not end within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "watch failed: {out}{err}");
    assert!(
        !out.contains('\x1b'),
        "piped watch printed terminal escapes:\n{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("cl-01") && l.contains("SUCCEEDED")),
        "{out}"
    );
    assert!(out.contains("COMPLETED"), "{out}");

    // The report, as JSON (the API's) and as Markdown for a postmortem.
    let rep: serde_json::Value = serde_json::from_str(&ok(s.muster_with(
        &["campaign", "report", "patch-cl", "-o", "json"],
        VIEWER_TOKEN,
        None,
    )))
    .unwrap();
    let hosts = rep["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 2, "{rep}");
    for h in hosts {
        assert_eq!(h["state"], "HOST_SUCCEEDED", "{h}");
    }
    let md = ok(s.muster_with(
        &["campaign", "report", "patch-cl", "-o", "markdown"],
        VIEWER_TOKEN,
        None,
    ));
    assert!(md.contains("patch-cl") && md.contains("| cl-01"), "{md}");
    assert!(
        md.contains("apply 2.0 on cl-01"),
        "step output in the report:\n{md}"
    );
    for n in ["cl-01", "cl-02"] {
        let st = f.state(n);
        assert_eq!((st.version.as_str(), st.runs), ("2.0", 1));
    }
    // The audit trail has every person's action with reason and ticket.
    let trail = s.audit_trail("").await.unwrap();
    assert!(
        trail
            .iter()
            .any(|c| c.verb.contains("start") && c.ticket == "CHG-7"),
        "{:?}",
        trail
            .iter()
            .map(|c| (&c.verb, &c.ticket))
            .collect::<Vec<_>>()
    );
    drop(f);
}
