//! Requests refused for their shape, at the gRPC edge, before any domain rule: each names the
//! field, and each is in the audit trail like any other refusal. A read's refusal (a name that
//! does not exist, a page token not ours) is audited too.

use muster::pb::{self, ResourceKind};
use muster_tests::{TestServer, bearer};
use tonic::Code;

#[tokio::test]
async fn refusals_at_the_edge_name_the_field_and_are_audited() {
    let s = TestServer::start().unwrap();
    let mut inv = s.inventory().await.unwrap();
    let mut export = pb::export_service_client::ExportServiceClient::with_interceptor(
        s.channel().await.unwrap(),
        bearer(&s.token),
    );
    let mut got = Vec::new();
    let e = inv
        .create(pb::CreateRequest {
            resource: None,
            context: None,
        })
        .await
        .unwrap_err();
    got.push(("create", e, "resource: is required"));
    let e = inv
        .get(pb::GetRequest {
            kind: 999,
            name: "web-1".into(),
        })
        .await
        .unwrap_err();
    got.push(("get", e, "kind: is required"));
    let e = inv
        .get(pb::GetRequest {
            kind: ResourceKind::Device as i32,
            name: "ghost".into(),
        })
        .await
        .unwrap_err();
    got.push(("get", e, "device \"ghost\" not found"));
    let e = inv
        .list(pb::ListRequest {
            kind: ResourceKind::Device as i32,
            page_token: "not-ours".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    got.push(("list", e, "page_token: is not a token"));
    let e = export
        .inventory(pb::ExportRequest {
            selector: "role ~ db".into(),
            ..Default::default()
        })
        .await
        .err()
        .unwrap();
    got.push(("export", e, "selector:"));
    let e = export
        .ingest_facts(pb::IngestFactsRequest {
            hosts: vec![pb::HostFacts {
                device: "web-1".into(),
                facts: Some(pb::Facts::default()),
                collected_at: None,
            }],
            expected_interval: Some(pbjson_types::Duration {
                seconds: -60,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    got.push(("ingest-facts", e, "expected_interval: must not be negative"));

    let trail = s.audit_trail("").await.unwrap();
    for (verb, status, message) in got {
        let code = if message.contains("not found") {
            Code::NotFound
        } else {
            Code::InvalidArgument
        };
        assert_eq!(status.code(), code, "{verb}: {status:?}");
        assert!(status.message().contains(message), "{verb}: {status:?}");
        let recorded = trail
            .iter()
            .any(|c| c.verb == verb && c.message.contains(message));
        if code == Code::NotFound {
            // "Not there" is an answer, not a refused attempt: a poller must not write to the
            // audit trail on every try.
            assert!(!recorded, "{verb}: a not-found read was audited");
            continue;
        }
        assert!(
            trail.iter().any(|c| c.verb == verb
                && c.outcome == pb::ChangeOutcome::Rejected as i32
                && c.message.contains(message)),
            "{verb} refusal {message:?} not audited; trail: {:#?}",
            trail
                .iter()
                .map(|c| (&c.verb, &c.message))
                .collect::<Vec<_>>()
        );
    }
}
