//! Request-shape refusals of the audit, token, backup and enrollment-token handlers: converted
//! at the edge, the error names the field, and the refusal is in the audit trail like any other.

use muster::pb;
use tonic::Code;

use crate::kit::{ADMIN_TOKEN, TestServer};

/// The REJECTED entries of the trail whose verb is `verb`.
async fn rejected(s: &TestServer, verb: &str) -> Vec<pb::Change> {
    s.trail("alice")
        .await
        .into_iter()
        .filter(|c| c.verb == verb && c.outcome == pb::ChangeOutcome::Rejected as i32)
        .collect()
}

fn assert_names(e: &tonic::Status, field: &str) {
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with(&format!("{field}:")), "{e:?}");
}

#[tokio::test]
async fn malformed_audit_token_backup_and_enrollment_requests_are_refused_naming_the_field_and_audited()
 {
    let s = TestServer::start().await.unwrap();
    let mut audit = s.audit(ADMIN_TOKEN);
    let e = audit
        .list(pb::ListChangesRequest {
            resource_name: "web-01".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_names(&e, "resource_kind");
    let e = audit
        .list(pb::ListChangesRequest {
            page_token: "not-a-token".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_names(&e, "page_token");
    let trail = rejected(&s, "audit").await;
    assert_eq!(trail.len(), 2, "{trail:#?}");
    assert!(trail[0].message.contains("resource_kind"), "{trail:#?}");
    assert!(trail[1].message.contains("page_token"), "{trail:#?}");

    let mut admin = s.admin(ADMIN_TOKEN);
    let e = admin
        .create_token(pb::CreateTokenRequest {
            name: "ci".into(),
            role: "viewer".into(),
            ttl: Some(pbjson_types::Duration {
                seconds: -5,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_names(&e, "ttl");
    let trail = rejected(&s, "token-create").await;
    assert_eq!(trail.len(), 1, "{trail:#?}");
    assert_eq!(trail[0].resource_name, "ci");

    let e = admin
        .backup(pb::BackupRequest {
            passphrase: b"short".to_vec(),
        })
        .await
        .expect_err("a short passphrase is refused before anything is streamed");
    assert_names(&e, "passphrase");
    assert_eq!(rejected(&s, "backup").await.len(), 1);

    let e = pb::agent_service_client::AgentServiceClient::new(s.authed(ADMIN_TOKEN))
        .create_enrollment_token(pb::CreateEnrollmentTokenRequest {
            device: "web-01".into(),
            ttl: Some(pbjson_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_names(&e, "ttl");
    let trail = rejected(&s, "agent-token").await;
    assert_eq!(trail.len(), 1, "{trail:#?}");
    assert_eq!(trail[0].resource_name, "web-01");
    s.stop().await.unwrap();
}
