//! `muster campaign` against the real musterd: roles, field-naming refusals that create
//! nothing, and the four-eyes rule, end to end through the CLI and the CampaignService.

use muster::pb;
use muster_tests::fixtures::device;
use muster_tests::{APPROVER_TOKEN, OPERATOR_TOKEN, Options, TestServer, VIEWER_TOKEN};

fn manifest(name: &str, threshold: &str) -> String {
    format!(
        r#"kind: Campaign
meta:
  name: {name}
spec:
  selector: role=web
  description: restart the web tier
  steps:
    - name: restart
      ssh_command: systemctl restart nginx
      timeout: 120s
      idempotent: true
  strategy:
    batch_size: {{hosts: 1}}
    failure_threshold: {threshold}
  approval: {{required: 1}}
"#
    )
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test]
async fn campaign_commands_enforce_roles_fields_and_four_eyes() {
    let s = TestServer::start_with(Options {
        role_tokens: true,
        ..Options::default()
    })
    .unwrap();
    let mut inv = s.inventory().await.unwrap();
    for n in ["web-01", "web-02"] {
        inv.create(pb::CreateRequest {
            resource: Some(device(n, &[("role", "web")])),
            context: None,
        })
        .await
        .unwrap();
    }
    let good = manifest("restart-web", "{hosts: 0}");

    // A viewer watches; it does not create.
    let o = s.muster_with(
        &["campaign", "create", "-f", "-"],
        VIEWER_TOKEN,
        Some(good.as_bytes()),
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("PERMISSION_DENIED"), "{}", text(&o));

    // A budget over 100 % is refused naming the field, and creates nothing.
    let bad = manifest("too-tolerant", "{percent: 150}");
    let o = s.muster_with(
        &["campaign", "create", "-f", "-"],
        OPERATOR_TOKEN,
        Some(bad.as_bytes()),
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("INVALID_ARGUMENT"), "{}", text(&o));
    assert!(text(&o).contains("failure_threshold"), "{}", text(&o));
    let o = s.muster_with(&["campaign", "list"], VIEWER_TOKEN, None);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("too-tolerant"), "{}", text(&o));

    // The operator creates it; it is a draft the viewer can read.
    let o = s.muster_with(
        &[
            "campaign",
            "create",
            "-f",
            "-",
            "--reason",
            "nginx leak",
            "--ticket",
            "OPS-7",
        ],
        OPERATOR_TOKEN,
        Some(good.as_bytes()),
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = s.muster_with(&["campaign", "get", "restart-web"], VIEWER_TOKEN, None);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("DRAFT"), "{}", text(&o));

    // Starting before approval is a wrong-state action.
    let o = s.muster_with(&["campaign", "start", "restart-web"], OPERATOR_TOKEN, None);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("FAILED_PRECONDITION"), "{}", text(&o));

    // The author cannot approve their own campaign, even with approver rights elsewhere: the
    // approver token may, once the plan is frozen and its digest quoted.
    let digest = "0".repeat(64);
    let o = s.muster_with(
        &["campaign", "approve", "restart-web", "--digest", &digest],
        OPERATOR_TOKEN,
        None,
    );
    assert!(!o.status.success(), "{}", text(&o));
    let o = s.muster_with(
        &["campaign", "approve", "restart-web", "--digest", &digest],
        APPROVER_TOKEN,
        None,
    );
    assert!(
        !o.status.success(),
        "an approval of a draft (or of the wrong digest) must be refused: {}",
        text(&o)
    );
    assert!(text(&o).contains("FAILED_PRECONDITION"), "{}", text(&o));

    // Every refusal above is in the audit trail.
    let trail = s.audit_trail("").await.unwrap();
    let refused: Vec<_> = trail
        .iter()
        .filter(|c| c.outcome != pb::ChangeOutcome::Accepted as i32)
        .map(|c| c.verb.clone())
        .collect();
    assert!(refused.len() >= 4, "refusals not audited: {refused:?}");
}
