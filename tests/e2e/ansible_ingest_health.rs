//! Agentless facts evaluate health the way an agent's report does: SMART and sensor facts
//! ingested through `ExportService.IngestFacts` (what `muster-inventory ingest-facts` sends)
//! change the device's health, its reasons and the audit trail, against the real musterd.

use muster::pb::{self, resource::Resource as R};
use muster_tests::fixtures::device;
use muster_tests::{Bearer, TestServer, bearer};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Export = pb::export_service_client::ExportServiceClient<InterceptedService<Channel, Bearer>>;

fn disk(passed: bool) -> pb::SmartDisk {
    pb::SmartDisk {
        device: "/dev/sda".into(),
        model: "ST4000".into(),
        serial: "Z1Z2".into(),
        passed,
        ..Default::default()
    }
}

fn hot_inlet() -> pb::Sensor {
    pb::Sensor {
        name: "Inlet Temp".into(),
        r#type: "temperature".into(),
        value: 47.0,
        unit: "C".into(),
        upper_non_critical: Some(42.0),
        upper_critical: Some(50.0),
        ..Default::default()
    }
}

async fn ingest(export: &mut Export, facts: pb::Facts, reason: &str) {
    export
        .ingest_facts(pb::IngestFactsRequest {
            hosts: vec![pb::HostFacts {
                device: "stor-01".into(),
                facts: Some(facts),
                collected_at: None,
            }],
            reason: reason.into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn status(s: &TestServer) -> pb::ObservedState {
    let mut inv = s.inventory().await.unwrap();
    let r = inv
        .get(pb::GetRequest {
            kind: pb::ResourceKind::Device as i32,
            name: "stor-01".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let Some(R::Device(d)) = r.resource else {
        panic!("not a device: {r:?}")
    };
    d.status.unwrap_or_default()
}

fn codes(st: &pb::ObservedState) -> Vec<&str> {
    st.health_reasons.iter().map(|r| r.code.as_str()).collect()
}

#[tokio::test]
async fn ingested_smart_and_sensor_facts_change_health() {
    let s = TestServer::start().unwrap();
    let mut inv = s.inventory().await.unwrap();
    inv.create(pb::CreateRequest {
        resource: Some(device("stor-01", &[("role", "storage")])),
        context: None,
    })
    .await
    .unwrap();
    let mut export: Export = pb::export_service_client::ExportServiceClient::with_interceptor(
        s.channel().await.unwrap(),
        bearer(&s.token),
    );

    // A failing disk, gathered without an agent: CRITICAL, with the reason naming the disk.
    ingest(
        &mut export,
        pb::Facts {
            smart: Some(pb::SmartList {
                items: vec![disk(false)],
            }),
            ..Default::default()
        },
        "nightly facts run",
    )
    .await;
    let st = status(&s).await;
    assert_eq!(st.origin, "ansible");
    assert_eq!(st.health, pb::Health::Critical as i32, "{st:?}");
    assert_eq!(codes(&st), ["smart.failed"]);
    assert!(st.health_reasons[0].source.contains("Z1Z2"), "{st:?}");

    // The disk was replaced and the inlet runs warm: WARNING from the sensor alone.
    ingest(
        &mut export,
        pb::Facts {
            smart: Some(pb::SmartList {
                items: vec![disk(true)],
            }),
            sensors: Some(pb::SensorList {
                items: vec![hot_inlet()],
            }),
            ..Default::default()
        },
        "",
    )
    .await;
    let st = status(&s).await;
    assert_eq!(st.health, pb::Health::Warning as i32, "{st:?}");
    assert_eq!(codes(&st), ["sensor.threshold"]);

    // Nothing wrong any more: OK, no reasons.
    ingest(&mut export, pb::Facts::default(), "").await;
    let st = status(&s).await;
    assert_eq!(st.health, pb::Health::Ok as i32, "{st:?}");
    assert!(st.health_reasons.is_empty(), "{st:?}");

    // Each change is in the audit trail under the ingest, saying what health did.
    let reasons: Vec<String> = s
        .audit_trail("")
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.verb == "ingest-facts")
        .map(|c| c.reason)
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons[0].starts_with("nightly facts run; health ")
            && reasons[0].ends_with("-> CRITICAL (smart.failed)"),
        "{reasons:?}"
    );
    assert_eq!(reasons[1], "health CRITICAL -> WARNING (sensor.threshold)");
    assert_eq!(reasons[2], "health WARNING -> OK");
}
