//! Agent certificate renewal (issue 12 item 6): the real agent renews its short-lived
//! certificate by itself over mTLS and keeps reporting past the original expiry; revoked
//! identities cannot renew; a certificate that is not renewed is a health reason before it
//! expires and CRITICAL after.

use std::time::{Duration, Instant};

use muster::pb::{self, agent_service_client::AgentServiceClient};
use muster_agent::identity::{self, Paths};
use muster_tests::TestServer;
use tonic::Code;

use crate::agent::{AgentHost, add_device, device, ok, tls_server, token_for, wait_for};

/// Active and retiring identities of `device`, as (state, fingerprint), via the operator API.
pub(crate) async fn identities(s: &TestServer, device: &str) -> Vec<(String, String)> {
    let mut c = AgentServiceClient::with_interceptor(
        s.channel().await.unwrap(),
        muster_tests::bearer(&s.token),
    );
    c.list_enrollments(pb::ListEnrollmentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .enrollments
        .into_iter()
        .filter(|e| e.device == device && e.state != "pending")
        .map(|e| (e.state, e.fingerprint))
        .collect()
}

fn agent_config(extra: &str) -> String {
    format!("interval = \"1s\"\nsmart = false\npackages = false\n{extra}")
}

/// A CSR for a fresh key.
pub(crate) fn csr() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap()
}

/// A copy of an agent's current identity files, to present the old certificate later.
fn keep_identity(a: &AgentHost) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for f in ["agent.key", "agent.pem", "ca.pem", "device"] {
        std::fs::copy(a.dir().join(f), d.path().join(f)).unwrap();
    }
    d
}

fn client_for(
    s: &TestServer,
    dir: &std::path::Path,
) -> AgentServiceClient<tonic::transport::Channel> {
    let ch =
        identity::channel(&s.url(), Some(&s.ca_path()), &Paths::new(dir), true, false).unwrap();
    AgentServiceClient::new(ch)
}

fn report(seq: u64) -> pb::ReportRequest {
    pb::ReportRequest {
        device: "web-01".into(),
        boot_id: "boot-1".into(),
        seq,
        facts_hash: format!("h{seq}"),
        facts: Some(pb::Facts::default()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_renews_its_certificate_and_reports_past_the_original_expiry() {
    // 10-second certificates (11 s lifetime with the skew allowance): the agent renews with a
    // third of it left, ~6.3 s in.
    let s = tls_server(&["--agent-cert-validity", "10s", "--agent-cert-warn", "1s"]);
    add_device(&s, "web-01");
    let mut a = AgentHost::new(&s);
    ok(&a.enroll(&token_for(&s, "web-01", "1h"), "0s"));
    let enrolled = Instant::now();
    let original = identities(&s, "web-01").await;
    assert_eq!(original.len(), 1, "{original:?}");
    let first_fp = original[0].1.clone();
    let old = keep_identity(&a);
    a.run(&agent_config(""), &[]);
    let first = wait_for(
        &s,
        "web-01",
        Duration::from_secs(5),
        "a first report",
        |d| d.status.as_ref().is_some_and(|st| st.report_seq > 0),
    )
    .await
    .status
    .unwrap();

    // Renewed, and the first report with the new certificate retired the old one.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ids = identities(&s, "web-01").await;
        if ids.len() == 1 && ids[0].1 != first_fp && ids[0].0 == "active" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no renewal: {ids:?}\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        enrolled.elapsed() < Duration::from_secs(10),
        "renewed too late to test the old one"
    );
    // The old certificate, still within its validity, no longer speaks for the device.
    let e = client_for(&s, old.path())
        .report(report(1_000_000))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    // Well past the original expiry, the agent still reports (with its renewed certificate).
    let past = Duration::from_secs(12);
    tokio::time::sleep(past.saturating_sub(enrolled.elapsed())).await;
    let seq_then = device(&s, "web-01").await.status.unwrap().report_seq;
    let d = wait_for(
        &s,
        "web-01",
        Duration::from_secs(5),
        "reports after the original expiry",
        |d| d.status.as_ref().is_some_and(|st| st.report_seq > seq_then),
    )
    .await;
    let st = d.status.unwrap();
    assert_eq!(st.health, pb::Health::Ok as i32, "{:?}", st.health_reasons);
    // The same host across a renewal: its health history carries over (a renewal must not
    // clear remembered SMART growth or predicted failures, nor restart "healthy since").
    assert_eq!(first.health, st.health, "{:?}", first.health_reasons);
    assert_eq!(
        first.health_since, st.health_since,
        "health memory was reset by the renewal"
    );
    let meta = d.meta.unwrap();
    assert!(
        meta.annotations
            .contains_key("agent.muster.io/cert-not-after"),
        "{:?}",
        meta.annotations
    );
    assert!(
        a.log().contains("renewed the client certificate"),
        "{}",
        a.log()
    );
    // No operator approval was involved, and the renewal is in the audit trail.
    let audit = ok(&s.muster(&["audit", "-o", "json"]));
    assert!(audit.contains("\"agent-renew\""), "{audit}");
    assert!(!audit.contains("\"agent-approve\""));
    a.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn renewal_is_refused_to_revoked_or_early_callers_and_changes_nothing() {
    let s = tls_server(&["--agent-cert-validity", "8s", "--agent-cert-warn", "1s"]);
    add_device(&s, "web-01");
    add_device(&s, "web-02");
    let a = AgentHost::new(&s);
    ok(&a.enroll(&token_for(&s, "web-01", "1h"), "0s"));
    let enrolled = Instant::now();
    let mut c = a.client().await;
    let renew = |csr_pem: String| pb::RenewRequest { csr_pem };
    let mut anonymous = AgentServiceClient::new(
        identity::channel(
            &s.url(),
            Some(&s.ca_path()),
            &Paths::new(a.dir()),
            false,
            false,
        )
        .unwrap(),
    );
    let before = identities(&s, "web-01").await;

    let mut cases: Vec<(&str, tonic::Status, Code, &str)> = vec![
        (
            "no client certificate",
            anonymous.renew_certificate(renew(csr())).await.unwrap_err(),
            Code::Unauthenticated,
            "no client certificate",
        ),
        (
            "first half of the lifetime",
            c.renew_certificate(renew(csr())).await.unwrap_err(),
            Code::FailedPrecondition,
            "too early to renew",
        ),
    ];
    // Into the second half of the 8.8 s lifetime (8 s + 0.8 s skew allowance): from 3.6 s.
    tokio::time::sleep(Duration::from_millis(4000).saturating_sub(enrolled.elapsed())).await;
    cases.push((
        "not a CSR",
        c.renew_certificate(renew("garbage".into()))
            .await
            .unwrap_err(),
        Code::InvalidArgument,
        "csr_pem",
    ));
    cases.push((
        "oversized CSR",
        c.renew_certificate(renew("x".repeat(20_000)))
            .await
            .unwrap_err(),
        Code::InvalidArgument,
        "at most 16384 bytes",
    ));
    assert_eq!(
        identities(&s, "web-01").await,
        before,
        "refusals changed nothing"
    );

    // Revocation: the device is deleted (and created again under the same name).
    ok(&s.muster(&["delete", "device", "web-01", "--reason", "decommissioned"]));
    cases.push((
        "device deleted",
        c.renew_certificate(renew(csr())).await.unwrap_err(),
        Code::Unauthenticated,
        "deleted",
    ));
    add_device(&s, "web-01");
    cases.push((
        "device re-created under the same name",
        c.renew_certificate(renew(csr())).await.unwrap_err(),
        Code::Unauthenticated,
        "deleted",
    ));
    assert!(
        enrolled.elapsed() < Duration::from_secs(8),
        "the certificate expired mid-test"
    );

    // Revocation: an approved re-enrollment replaces the identity.
    let b = AgentHost::new(&s);
    ok(&b.enroll(&token_for(&s, "web-02", "1h"), "0s"));
    let rekeyed = AgentHost::new(&s);
    assert!(
        !rekeyed
            .enroll(&token_for(&s, "web-02", "1h"), "0s")
            .status
            .success()
    );
    ok(&s.muster(&["agent", "approve", "web-02", "--reason", "disk swap"]));
    ok(&rekeyed.enroll("", "5s"));
    let after_rekey = identities(&s, "web-02").await;
    cases.push((
        "identity replaced by an approved re-enrollment",
        b.client()
            .await
            .renew_certificate(renew(csr()))
            .await
            .unwrap_err(),
        Code::Unauthenticated,
        "not enrolled",
    ));
    assert_eq!(identities(&s, "web-02").await, after_rekey);

    let audit = ok(&s.muster(&["audit", "--refused", "-o", "json"]));
    for (what, status, code, text) in &cases {
        assert_eq!(status.code(), *code, "{what}: {status:?}");
        assert!(status.message().contains(text), "{what}: {status:?}");
        // Refusals by a caller with an identity are audited under the renewal verb.
        if *what != "no client certificate" {
            assert!(
                audit.contains(&status.message().replace('"', "\\\"")),
                "{what}: not audited: {}",
                status.message()
            );
        }
    }
    assert!(audit.contains("\"agent-renew\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_that_is_not_renewed_warns_before_expiry_and_is_critical_after() {
    let s = tls_server(&["--agent-cert-validity", "6s", "--agent-cert-warn", "4s"]);
    add_device(&s, "web-01");
    let mut a = AgentHost::new(&s);
    ok(&a.enroll(&token_for(&s, "web-01", "1h"), "0s"));
    let enrolled = Instant::now();
    // An agent with renewal off (as an agent from before renewal existed behaves).
    a.run(&agent_config("renew_fraction = 0\n"), &[]);
    let has = |d: &pb::Device, code: &str, health: pb::Health| {
        d.status.as_ref().is_some_and(|st| {
            st.health == health as i32 && st.health_reasons.iter().any(|r| r.code == code)
        })
    };
    let d = wait_for(
        &s,
        "web-01",
        Duration::from_secs(6),
        "certificate warning",
        |d| has(d, "agent.certificate_expiring", pb::Health::Warning),
    )
    .await;
    assert!(
        enrolled.elapsed() < Duration::from_secs(6),
        "the warning came only after expiry"
    );
    let st = d.status.unwrap();
    let r = st
        .health_reasons
        .iter()
        .find(|r| r.code == "agent.certificate_expiring")
        .unwrap();
    assert!(
        r.message.contains("agent certificate expires in"),
        "{}",
        r.message
    );
    wait_for(
        &s,
        "web-01",
        Duration::from_secs(8),
        "certificate expired",
        |d| has(d, "agent.certificate_expired", pb::Health::Critical),
    )
    .await;
    assert!(!a.log().contains("renewed the client certificate"));
    a.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renewal_the_agent_never_saved_does_not_lock_it_out() {
    let s = tls_server(&["--agent-cert-validity", "8s", "--agent-cert-warn", "1s"]);
    add_device(&s, "web-01");
    let mut a = AgentHost::new(&s);
    ok(&a.enroll(&token_for(&s, "web-01", "1h"), "0s"));
    let enrolled = Instant::now();
    let first = identities(&s, "web-01").await;
    // The server issues a renewal whose answer never reaches the agent's disk (a crash after
    // the agent saved its next key, before it saved the certificate).
    tokio::time::sleep(Duration::from_millis(4000).saturating_sub(enrolled.elapsed())).await;
    let csr_pem = identity::next_key_and_csr(&Paths::new(a.dir()), "web-01").unwrap();
    a.client()
        .await
        .renew_certificate(pb::RenewRequest { csr_pem })
        .await
        .unwrap();
    let ids = identities(&s, "web-01").await;
    let lost = ids.iter().find(|(st, _)| st == "active").unwrap().1.clone();
    assert!(
        ids.contains(&("retiring".to_string(), first[0].1.clone())),
        "{ids:?}"
    );
    // The agent, still holding the old certificate, renews again by itself with the key it
    // kept, gets the same certificate back, and reports with it.
    a.run(&agent_config(""), &[]);
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let ids = identities(&s, "web-01").await;
        if ids.len() == 1 && ids[0].1 == lost {
            // Checked now: the renewed certificate's own renewal window opens later (a check
            // at the end raced with it).
            assert!(
                !a.dir().join("agent.pem.next").exists()
                    && !a.dir().join("agent.key.next").exists(),
                "{}",
                a.log()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not renewed: {ids:?}\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And reports past the original expiry.
    tokio::time::sleep(Duration::from_secs(9).saturating_sub(enrolled.elapsed())).await;
    let seq_then = device(&s, "web-01").await.status.unwrap().report_seq;
    wait_for(
        &s,
        "web-01",
        Duration::from_secs(5),
        "reports after expiry",
        |d| d.status.as_ref().is_some_and(|st| st.report_seq > seq_then),
    )
    .await;
    a.stop();
}
