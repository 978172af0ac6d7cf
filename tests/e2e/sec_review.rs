//! Risks left by the review of the security work (issue 12): one renewal per identity,
//! summarised refusal floods across many peers, per-principal fairness of the Plan/Apply pool,
//! oversized requests audited.

use std::time::{Duration, Instant};

use muster::pb;
use tonic::Code;

use crate::agent::{AgentHost, add_device, ok, tls_server, token_for};
use crate::sec_renew::{csr, identities};

/// `agent-renew` change records (accepted) of `device`.
async fn renewals(s: &muster_tests::TestServer, device: &str) -> usize {
    s.audit_trail("")
        .await
        .unwrap()
        .iter()
        .filter(|c| {
            c.verb == "agent-renew"
                && c.resource_name == device
                && c.outcome == pb::ChangeOutcome::Accepted as i32
                && c.revision > 0
        })
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_renews_once_and_a_retry_gets_the_same_certificate() {
    let s = tls_server(&["--agent-cert-validity", "8s", "--agent-cert-warn", "1s"]);
    add_device(&s, "web-01");
    let a = AgentHost::new(&s);
    ok(&a.enroll(&token_for(&s, "web-01", "1h"), "0s"));
    let enrolled = Instant::now();
    let first = identities(&s, "web-01").await;
    // Second half of the 8.8 s lifetime.
    tokio::time::sleep(Duration::from_millis(4000).saturating_sub(enrolled.elapsed())).await;
    let mut old = a.client().await;
    let the_csr = csr();
    let renew = |csr_pem: &str| pb::RenewRequest {
        csr_pem: csr_pem.to_string(),
    };
    let issued = old
        .renew_certificate(renew(&the_csr))
        .await
        .unwrap()
        .into_inner()
        .identity
        .unwrap();
    let after_first = identities(&s, "web-01").await;
    assert_eq!(after_first.len(), 2, "{after_first:?}");
    // The answer was lost: the retiring certificate retries, with the same key. Same answer,
    // nothing new written.
    for _ in 0..5 {
        let again = old
            .renew_certificate(renew(&the_csr))
            .await
            .unwrap()
            .into_inner()
            .identity
            .unwrap();
        assert_eq!(again.certificate_pem, issued.certificate_pem);
        assert_eq!(again.not_after, issued.not_after);
    }
    // Any other key: refused, naming what to do; nothing changes.
    let e = old.renew_certificate(renew(&csr())).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("already renewed"), "{e:?}");
    assert!(e.message().contains("same key"), "{e:?}");
    assert_eq!(identities(&s, "web-01").await, after_first);
    assert!(after_first.contains(&("retiring".to_string(), first[0].1.clone())));
    assert!(
        enrolled.elapsed() < Duration::from_secs(8),
        "the certificate expired mid-test"
    );
    assert_eq!(
        renewals(&s, "web-01").await,
        1,
        "one renewal, one change record"
    );
    let refused = s.audit_trail("agent:web-01").await.unwrap();
    assert!(
        refused.iter().any(|c| c.message == e.message()),
        "the refusal is audited"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_renewals_of_one_identity_issue_one_certificate() {
    let s = tls_server(&["--agent-cert-validity", "8s", "--agent-cert-warn", "1s"]);
    add_device(&s, "web-01");
    let a = AgentHost::new(&s);
    ok(&a.enroll(&token_for(&s, "web-01", "1h"), "0s"));
    let enrolled = Instant::now();
    tokio::time::sleep(Duration::from_millis(4000).saturating_sub(enrolled.elapsed())).await;
    let the_csr = csr();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut c = a.client().await;
        let csr_pem = the_csr.clone();
        tasks.push(tokio::spawn(async move {
            c.renew_certificate(pb::RenewRequest { csr_pem }).await
        }));
    }
    let mut certs = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        certs.push(r.unwrap().into_inner().identity.unwrap().certificate_pem);
    }
    certs.dedup();
    assert_eq!(certs.len(), 1, "one certificate for one identity and key");
    let ids = identities(&s, "web-01").await;
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_eq!(renewals(&s, "web-01").await, 1);
    assert!(enrolled.elapsed() < Duration::from_secs(8));
}

/// Refused entries (no revision) of a flood by `anonymous` doing `list`, and the summaries.
async fn flood_records(s: &muster_tests::TestServer) -> (Vec<pb::Change>, Vec<pb::Change>) {
    let mut all = s.audit_trail("").await.unwrap();
    all.retain(|c| c.revision == 0);
    let one_by_one = all
        .iter()
        .filter(|c| c.principal == "anonymous" && c.verb == "list")
        .cloned()
        .collect();
    let summaries = all
        .into_iter()
        .filter(|c| c.verb == "rate-limited")
        .collect();
    (one_by_one, summaries)
}

/// How many refusals a summary counted without recording them: "T refused attempts from peer
/// X in 5 s; the first R are recorded ..." → T - R; "N refused attempts from M peers in 5 s
/// were only counted here ..." → N.
fn only_counted(message: &str) -> u64 {
    let number = |s: &str| s.replace(',', "").parse::<u64>().unwrap();
    let total = number(message.split_whitespace().next().unwrap());
    match message.split("the first ").nth(1) {
        Some(rest) => total - number(rest.split_whitespace().next().unwrap()),
        None => total,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_peers_flooding_refusals_write_a_bounded_number_of_records() {
    let s = muster_tests::TestServer::start_with(muster_tests::Options {
        config:
            "refusals_per_window = 5\nrefusal_window_ms = 5000\nrefusals_global_per_window = 20\n"
                .into(),
        ..Default::default()
    })
    .unwrap();
    // 40 peers (loopback source addresses 127.0.0.2-41), 10 unauthenticated requests each.
    const PEERS: u8 = 40;
    const EACH: usize = 10;
    let started = Instant::now();
    let mut clients = Vec::new();
    for i in 0..PEERS {
        let ip = std::net::IpAddr::from([127, 0, 0, 2 + i]);
        let ch = tonic::transport::Endpoint::from_shared(s.url())
            .unwrap()
            .local_address(Some(ip))
            .connect()
            .await
            .unwrap();
        clients.push(pb::inventory_service_client::InventoryServiceClient::new(
            ch,
        ));
    }
    let calls = clients.iter().flat_map(|c| {
        (0..EACH).map(move |_| {
            let mut c = c.clone();
            async move {
                c.list(pb::ListRequest {
                    kind: 1,
                    ..Default::default()
                })
                .await
            }
        })
    });
    for r in futures::future::join_all(calls).await {
        assert_eq!(r.unwrap_err().code(), Code::Unauthenticated);
    }
    let flood_took = started.elapsed();
    let total = u64::from(PEERS) * EACH as u64;
    let deadline = Instant::now() + Duration::from_secs(20);
    let (one_by_one, summaries) = loop {
        let (one, sums) = flood_records(&s).await;
        let counted: u64 = sums.iter().map(|c| only_counted(&c.message)).sum();
        if one.len() as u64 + counted >= total || Instant::now() > deadline {
            break (one, sums);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let counted: u64 = summaries.iter().map(|c| only_counted(&c.message)).sum();
    assert_eq!(
        one_by_one.len() as u64 + counted,
        total,
        "every refused attempt is recorded or counted: {summaries:?}"
    );
    // One window (the flood took less than it): at most the global budget plus one summary.
    assert!(flood_took < Duration::from_secs(5), "{flood_took:?}");
    let written = one_by_one.len() + summaries.len();
    assert!(
        written <= 21,
        "{written} records for a flood from {PEERS} peers ({} one by one, {} summaries)",
        one_by_one.len(),
        summaries.len()
    );
    let global = summaries
        .iter()
        .find(|c| c.message.contains("refusals_global_per_window"))
        .expect("a summary across all peers");
    assert!(
        global
            .message
            .contains(&format!("from {PEERS} peers in 5 s")),
        "{}",
        global.message
    );
    assert!(
        global.message.contains("anonymous list"),
        "{}",
        global.message
    );
}

/// `n` devices, each the parent of the next (enough planning work to keep the pool busy).
fn chain(n: usize) -> Vec<pb::Resource> {
    (0..n)
        .map(|i| {
            let mut d = muster_tests::fixtures::device(&format!("c-{i:05}"), &[("role", "c")]);
            if let Some(pb::resource::Resource::Device(x)) = d.resource.as_mut()
                && i > 0
            {
                x.parent = format!("c-{:05}", i - 1);
            }
            d
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_flooding_plans_cannot_keep_an_admin_apply_out() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let s = muster_tests::TestServer::start_with(muster_tests::Options {
        role_tokens: true,
        ..Default::default()
    })
    .unwrap();
    let request = pb::PlanRequest {
        resources: chain(3000),
        include_unchanged: false,
    };
    // The viewer: 24 clients sending Plans back to back (a refused one retries after 10 ms),
    // on their own runtime so their encoding does not slow this test's client.
    let stop = Arc::new(AtomicBool::new(false));
    let (done, per_principal) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let flood = {
        let (url, stop, done, per_principal) =
            (s.url(), stop.clone(), done.clone(), per_principal.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let mut tasks = Vec::new();
                for _ in 0..24 {
                    let (url, stop, done, per_principal, request) = (
                        url.clone(),
                        stop.clone(),
                        done.clone(),
                        per_principal.clone(),
                        request.clone(),
                    );
                    tasks.push(tokio::spawn(async move {
                        let ch = tonic::transport::Channel::from_shared(url)
                            .unwrap()
                            .connect()
                            .await
                            .unwrap();
                        let mut viewer =
                            pb::config_service_client::ConfigServiceClient::with_interceptor(
                                ch,
                                muster_tests::bearer(muster_tests::VIEWER_TOKEN),
                            );
                        let deadline = Instant::now() + Duration::from_secs(60);
                        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                            match viewer.plan(request.clone()).await {
                                Ok(_) => {
                                    done.fetch_add(1, Ordering::SeqCst);
                                }
                                Err(e) => {
                                    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                                    if e.message().contains("limit per principal") {
                                        per_principal.fetch_add(1, Ordering::SeqCst);
                                    }
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                }
                            }
                        }
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
            })
        })
    };
    // Let the flood fill the pool.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut admin = pb::config_service_client::ConfigServiceClient::with_interceptor(
        s.channel().await.unwrap(),
        muster_tests::bearer(&s.token),
    );
    // Five applies, one after the other, while the flood goes on: each gets a place.
    let started = Instant::now();
    let mut applied = Vec::new();
    for i in 0..5 {
        applied.push(
            admin
                .apply(pb::ApplySetRequest {
                    resources: vec![muster_tests::fixtures::site(&format!("dc-{i}"))],
                    ..Default::default()
                })
                .await,
        );
    }
    let took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    flood.join().unwrap();
    for a in applied {
        let a = a.expect("the admin's apply during the viewer's flood");
        assert_eq!(a.into_inner().resources.len(), 1);
    }
    assert!(
        per_principal.load(Ordering::SeqCst) > 0,
        "the viewer was refused naming the limit per principal"
    );
    eprintln!(
        "5 admin applies took {took:?} during the flood; {} viewer plans ran",
        done.load(Ordering::SeqCst)
    );
    let refused = s.audit_trail("vera").await.unwrap();
    assert!(
        refused
            .iter()
            .any(|c| c.verb == "plan" && c.message.contains("limit per principal")),
        "the viewer's refusals are audited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_audited_and_a_flood_of_them_summarised() {
    let s = muster_tests::TestServer::start_with(muster_tests::Options {
        config: "max_message_bytes = 100000\nrefusals_per_window = 5\nrefusal_window_ms = 5000\n"
            .into(),
        ..Default::default()
    })
    .unwrap();
    let request = pb::PlanRequest {
        resources: chain(5000),
        include_unchanged: false,
    };
    {
        use prost::Message;
        assert!(request.encoded_len() > 200_000, "{}", request.encoded_len());
    }
    // With a token: a request without one is refused on its headers, before its body.
    let mut client = pb::config_service_client::ConfigServiceClient::with_interceptor(
        s.channel().await.unwrap(),
        muster_tests::bearer(&s.token),
    );
    const FLOOD: usize = 30;
    let started = Instant::now();
    for _ in 0..FLOOD {
        let Err(e) = client.plan(request.clone()).await else {
            panic!("an oversized plan was accepted");
        };
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("max_message_bytes"), "{e:?}");
    }
    // Windows of 5 s the flood touched: each records at most 5 one by one.
    let windows = started.elapsed().as_secs() as usize / 5 + 2;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let all: Vec<pb::Change> = s
            .audit_trail("")
            .await
            .unwrap()
            .into_iter()
            .filter(|c| c.revision == 0)
            .collect();
        let one_by_one: Vec<&pb::Change> = all
            .iter()
            .filter(|c| c.verb == "oversized-request")
            .collect();
        let summaries: Vec<&pb::Change> = all
            .iter()
            .filter(|c| c.verb == "rate-limited" && c.message.contains("oversized-request"))
            .collect();
        let counted: u64 = summaries.iter().map(|c| only_counted(&c.message)).sum();
        if one_by_one.len() as u64 + counted >= FLOOD as u64 {
            let first = one_by_one
                .first()
                .expect("an oversized request recorded one by one");
            assert_eq!(first.resource_name, "/muster.v1.ConfigService/Plan");
            assert!(
                first
                    .message
                    .contains("/muster.v1.ConfigService/Plan refused: request message is")
                    && first
                        .message
                        .contains("the limit is 100000 bytes (max_message_bytes)"),
                "{}",
                first.message
            );
            assert_eq!(first.outcome, pb::ChangeOutcome::Rejected as i32);
            assert_eq!(first.principal, "edge");
            assert!(!summaries.is_empty(), "the flood is summarised");
            assert!(
                one_by_one.len() <= 5 * windows,
                "{} recorded one by one",
                one_by_one.len()
            );
            assert_eq!(one_by_one.len() as u64 + counted, FLOOD as u64);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} recorded, {counted} summarised of {FLOOD}",
            one_by_one.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
