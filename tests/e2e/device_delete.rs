//! A device's delete takes its auxiliary records with it, in the same batch: observed facts,
//! report metadata, drift memory and enrollment records (tokens, identities). Observed through
//! the API only: the enrollment list, a spare token, and the device created again.

use muster::pb;

use crate::agent::{AgentHost, add_device, device, ok, tls_server, token_for};

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_device_leaves_no_facts_or_enrollment_behind() {
    let s = tls_server(&[]);
    add_device(&s, "web-01");
    add_device(&s, "web-02");
    let a = AgentHost::new(&s);
    assert!(ok(&a.enroll(&token_for(&s, "web-01", "1h"), "0s")).contains("web-01"));
    let other = AgentHost::new(&s);
    ok(&other.enroll(&token_for(&s, "web-02", "1h"), "0s"));
    // Issued and never used: it must die with the device, not enroll its successor.
    let spare = token_for(&s, "web-01", "1h");

    let mut c = a.client().await;
    let report = pb::ReportRequest {
        device: "web-01".into(),
        boot_id: "boot-1".into(),
        seq: 1,
        facts_hash: "h1".into(),
        facts: Some(pb::Facts {
            os: Some(pb::OsFacts {
                hostname: "old-host".into(),
                ..Default::default()
            }),
            memory_bytes: Some(1 << 30),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert!(c.report(report.clone()).await.unwrap().into_inner().applied);
    let before = device(&s, "web-01").await;
    let status = before.status.unwrap_or_default();
    assert_eq!(status.os.map(|o| o.hostname).as_deref(), Some("old-host"));
    let list = ok(&s.muster(&["agent", "list"]));
    assert!(list.contains("web-01") && list.contains("web-02"), "{list}");

    ok(&s.muster(&["delete", "device", "web-01", "--reason", "decommissioned"]));

    // Its enrollment is gone from the list; the other device's stays.
    let list = ok(&s.muster(&["agent", "list"]));
    assert!(
        !list.contains("web-01"),
        "a deleted device is still enrolled:\n{list}"
    );
    assert!(list.contains("web-02"), "{list}");

    // Created again under the name, it starts clean: no observed state, and the token issued
    // for its predecessor enrolls nothing.
    add_device(&s, "web-01");
    let fresh = device(&s, "web-01").await;
    let status = fresh.status.unwrap_or_default();
    assert!(
        status.os.is_none() && status.last_report_at.is_none() && status.memory_bytes == 0,
        "the new device shows the old one's observed state: {status:?}"
    );
    let b = AgentHost::new(&s);
    let out = b.enroll(&spare, "0s");
    assert!(
        !out.status.success(),
        "a token of the deleted device enrolled its successor: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown enrollment token"), "{err}");
    // The old certificate speaks for nothing.
    let mut again = report;
    again.seq = 2;
    let e = c.report(again).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let list = ok(&s.muster(&["agent", "list"]));
    assert!(!list.contains("web-01"), "{list}");
}
