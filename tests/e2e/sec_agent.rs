//! Issue 12, items 7-9, with the real `muster-agent` and `musterd`: an oversized section never
//! costs a host its SEL events or its reports, an agent whose state went back in time recovers
//! (audited) while a replay is still not applied, and one hypervisor cannot create discovered
//! VM devices without bound.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use muster::pb;
use muster_agent::spool::Spool;

use crate::agent::{
    AgentHost, add_device, config, device, fixture, ok, reason_codes, tls_server, token_for,
    wait_for,
};

/// The server's limit in these tests: small, so an oversized report stays cheap.
const LIMIT: usize = 64 * 1024;

fn sel(id: u32) -> pb::SelEntry {
    pb::SelEntry {
        record_id: id,
        sensor_type: "Memory".into(),
        sensor: "DIMM A1".into(),
        event: "Correctable ECC".into(),
        asserted: true,
        severity: "warning".into(),
        ..Default::default()
    }
}

fn spool_files(a: &AgentHost) -> usize {
    std::fs::read_dir(a.dir().join("spool"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_external_facts_cost_neither_sel_events_nor_reports() {
    let s = tls_server(&["--max-message-bytes", &LIMIT.to_string()]);
    add_device(&s, "big-01");
    let mut a = AgentHost::new(&s);
    ok(&a.enroll(&token_for(&s, "big-01", "1h"), "0s"));
    // A fact script printing ~100 KiB: more than the server takes in one report.
    let facts = a.dir().join("facts.d");
    std::fs::create_dir(&facts).unwrap();
    let script = facts.join("big.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nprintf '{\"blob\":\"'\nhead -c 100000 /dev/zero | tr '\\0' 'x'\nprintf '\"}'\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A report spooled before the agent knew the limit (an older agent, or a lowered limit):
    // too large, and carrying SEL events that exist nowhere else.
    let spool = Spool::open(&a.dir().join("spool"), 1000).unwrap();
    spool
        .push(&pb::ReportRequest {
            device: "big-01".into(),
            boot_id: "boot-0".into(),
            seq: 1,
            facts_hash: "h1".into(),
            facts: Some(pb::Facts {
                memory_bytes: Some(1 << 30),
                external_json: Some(format!("{{\"old\":\"{}\"}}", "y".repeat(2 * LIMIT))),
                ..Default::default()
            }),
            sel: vec![sel(41), sel(42)],
            ..Default::default()
        })
        .unwrap();
    a.run(
        &config(&format!("external_facts_dir = \"{}\"\n", facts.display())),
        &[],
    );
    let d = wait_for(
        &s,
        "big-01",
        Duration::from_secs(10),
        "SEL events and reports arrive",
        |d| {
            d.status.as_ref().is_some_and(|st| {
                st.report_seq >= 3
                    && st
                        .sel
                        .iter()
                        .filter(|e| [41, 42].contains(&e.record_id))
                        .count()
                        == 2
            })
        },
    )
    .await;
    let st = d.status.as_ref().unwrap();
    assert!(st.os.is_some(), "the small sections were sent");
    let ext = st.collectors.iter().find(|c| c.name == "external").unwrap();
    assert!(
        ext.error
            .contains("external facts 97.7 KiB exceed the server's limit of 64.0 KiB"),
        "{ext:?}"
    );
    assert!(
        reason_codes(&d).contains(&"collector.error".to_string()),
        "{:?}",
        reason_codes(&d)
    );
    let r = &st.health_reasons;
    assert!(
        r.iter()
            .any(|r| r.source == "external" && r.message.contains("limit")),
        "{r:?}"
    );
    // Everything spooled was delivered: nothing waits but (at most) the report in flight.
    let deadline = Instant::now() + Duration::from_secs(5);
    while spool_files(&a) > 1 {
        assert!(Instant::now() < deadline, "spool not drained");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = a.log();
    assert!(
        log.contains("rebuilding it without its largest sections"),
        "{log}"
    );
    a.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_whose_state_went_back_resyncs_and_a_replay_is_not_applied() {
    let s = tls_server(&[]);
    add_device(&s, "restore-01");
    let mut a = AgentHost::new(&s);
    ok(&a.enroll(&token_for(&s, "restore-01", "1h"), "0s"));
    a.run(&config(""), &[]);
    let seq_at_least =
        |n: u64| move |d: &pb::Device| d.status.as_ref().is_some_and(|s| s.report_seq >= n);
    wait_for(
        &s,
        "restore-01",
        Duration::from_secs(8),
        "2 reports",
        seq_at_least(2),
    )
    .await;
    let state = a.dir().join("state.json");
    let old = std::fs::read(&state).unwrap();
    a.stop();
    // Many reports later (here: one with a far higher sequence, from the same identity)...
    let held = device(&s, "restore-01").await.status.unwrap().report_seq + 500;
    let mut c = a.client().await;
    let later = pb::ReportRequest {
        device: "restore-01".into(),
        boot_id: "later-boot".into(),
        seq: held,
        facts_hash: "later".into(),
        facts: Some(pb::Facts::default()),
        ..Default::default()
    };
    assert!(c.report(later).await.unwrap().into_inner().applied);
    // The host comes back from an image taken earlier: old state, empty spool.
    std::fs::write(&state, &old).unwrap();
    for f in std::fs::read_dir(a.dir().join("spool")).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    a.run(&config(""), &[]);
    // It reports again within a couple of intervals, after the sequence the server held.
    let d = wait_for(
        &s,
        "restore-01",
        Duration::from_secs(6),
        "resynced",
        seq_at_least(held + 2),
    )
    .await;
    assert!(d.status.unwrap().os.is_some());
    a.stop();
    assert!(a.log().contains("continuing after it"), "{}", a.log());
    let audit = ok(&s.muster(&["audit", "--refused", "-o", "json"]));
    assert!(
        audit.contains("\"agent-report-resync\"")
            && audit.contains("is not newer than the last applied"),
        "{audit}"
    );

    // Directly: an old sequence (replay, or a new boot with a lower one) applies nothing and
    // is told where the sequence stands; the next one after it is applied.
    let now = device(&s, "restore-01").await.status.unwrap();
    let replay = pb::ReportRequest {
        device: "restore-01".into(),
        boot_id: "another-boot".into(),
        seq: 1,
        facts_hash: "replayed".into(),
        facts: Some(pb::Facts {
            memory_bytes: Some(7),
            ..Default::default()
        }),
        ..Default::default()
    };
    let r = c.report(replay.clone()).await.unwrap().into_inner();
    assert!(
        r.resync && !r.applied && r.acked_seq == now.report_seq,
        "{r:?}"
    );
    let after = device(&s, "restore-01").await.status.unwrap();
    assert_eq!(
        (after.report_seq, after.memory_bytes),
        (now.report_seq, now.memory_bytes),
        "the old report changed nothing"
    );
    let next = pb::ReportRequest {
        seq: r.acked_seq + 1,
        ..replay
    };
    let r = c.report(next).await.unwrap().into_inner();
    assert!(r.applied && !r.resync, "{r:?}");
    assert_eq!(
        device(&s, "restore-01").await.status.unwrap().memory_bytes,
        7
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn discovered_vms_are_capped_per_hypervisor() {
    let s = tls_server(&["--max-discovered-vms", "2"]);
    add_device(&s, "hv-cap");
    let mut a = AgentHost::new(&s);
    ok(&a.enroll(&token_for(&s, "hv-cap", "1h"), "0s"));
    // The fixture hypervisor runs three VMs.
    let node = a.dir().join("node.xml");
    std::fs::copy(fixture("libvirt/node.xml"), &node).unwrap();
    a.run(
        &config(&format!("libvirt_uri = \"test://{}\"\n", node.display())),
        &[],
    );
    let d = wait_for(
        &s,
        "hv-cap",
        Duration::from_secs(10),
        "capped reason",
        |d| reason_codes(d).contains(&"vm.discovery_capped".to_string()),
    )
    .await;
    let st = d.status.unwrap();
    let r = st
        .health_reasons
        .iter()
        .find(|r| r.code == "vm.discovery_capped")
        .unwrap();
    assert_eq!(r.severity, pb::Health::Warning as i32);
    assert!(
        r.message.starts_with("1 of ")
            && r.message.contains("newly reported VMs not created")
            && r.message
                .contains("the limit is 2 (max_discovered_vms_per_hypervisor)"),
        "{}",
        r.message
    );
    // Later reports (deltas without the VM list) still succeed and keep the reason.
    let seq = st.report_seq;
    let d = wait_for(&s, "hv-cap", Duration::from_secs(6), "more reports", |d| {
        d.status.as_ref().is_some_and(|s| s.report_seq >= seq + 2)
    })
    .await;
    assert!(reason_codes(&d).contains(&"vm.discovery_capped".to_string()));
    let out = ok(&s.muster(&[
        "get",
        "devices",
        "--field-selector",
        "parent=hv-cap",
        "-o",
        "json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["items"].as_array().map(Vec::len), Some(2), "{v}");
    // The refusal shows in the audit trail as the hypervisor's health change.
    let audit = ok(&s.muster(&["audit", "-o", "json"]));
    assert!(audit.contains("vm.discovery_capped"), "{audit}");
    a.stop();
}
