//! Issue 12 items 1 and 5, against the real musterd: unauthenticated requests to made-up
//! paths cannot grow the metrics without bound, and idle connections cannot exhaust the
//! server's descriptors, spin its accept loop or starve an admin.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use muster::pb;
use muster::pb::inventory_service_client::InventoryServiceClient;
use muster_tests::fixtures::site;
use muster_tests::{Bearer, Options, TestServer};
use rand::Rng;
use tonic::Code;
use tonic::transport::Channel;

/// The metrics text, over plain HTTP/1.1.
fn scrape(addr: SocketAddr) -> String {
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text
}

/// The value of the sample line starting with `prefix` (labels included), if present.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn unknown_paths_share_one_metrics_label() {
    let s = TestServer::start().unwrap();
    let ch = s.channel().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    let baseline = scrape(s.metrics_addr).len();
    let mut rng = rand::rng();
    let n = 300;
    for _ in 0..n {
        // No token, a fresh random path each time: what an anonymous attacker can send.
        let path = format!(
            "/evil{:016x}.Service/M{:032x}",
            rng.random::<u64>(),
            rng.random::<u128>()
        );
        grpc.ready().await.unwrap();
        let err = grpc
            .unary::<(), (), _>(
                tonic::Request::new(()),
                tonic::codegen::http::uri::PathAndQuery::from_str(&path).unwrap(),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    }
    // A served method is still counted under its own name.
    tonic_health::pb::health_client::HealthClient::new(ch)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();

    let text = scrape(s.metrics_addr);
    eprintln!(
        "/metrics: {baseline} bytes before, {} after {n} unknown paths",
        text.len()
    );
    assert!(
        text.len() < baseline + 4096,
        "metrics grew from {baseline} to {} bytes after {n} requests to unknown paths",
        text.len()
    );
    assert!(!text.contains("/evil"), "a raw path became a label");
    assert_eq!(
        sample(
            &text,
            r#"muster_grpc_requests_total{method="unknown",code="UNIMPLEMENTED"}"#
        ),
        Some(f64::from(n)),
        "{text}"
    );
    assert!(
        text.contains(
            r#"muster_grpc_requests_total{method="/grpc.health.v1.Health/Check",code="OK"} 1"#
        ),
        "{text}"
    );
}

/// An inventory client on a fresh connection, made lazily so that a refused connection
/// surfaces as the RPC's status (what a real client sees) rather than a connect error.
fn fresh_client(
    s: &TestServer,
) -> InventoryServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>> {
    let ch = Channel::from_shared(s.url())
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy();
    InventoryServiceClient::with_interceptor(ch, muster_tests::bearer(&s.token))
}

fn create(name: &str) -> pb::CreateRequest {
    pb::CreateRequest {
        resource: Some(site(name)),
        context: None,
    }
}

/// utime + stime of `pid`, seconds (clock ticks are 1/100 s on Linux).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cannot_exhaust_descriptors() {
    let s = TestServer::start_with(Options {
        nofile: Some(200),
        ..Default::default()
    })
    .unwrap();
    let pid = s.pid().unwrap();
    // A connection opened before the flood.
    let mut existing = s.inventory().await.unwrap();
    existing.create(create("before")).await.unwrap();

    // More idle, unauthenticated TCP connections than the process has descriptors.
    let idle: Vec<std::net::TcpStream> = (0..300)
        .map(|_| std::net::TcpStream::connect(s.addr).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A new admin connection is answered or shed quickly with a clear code, not left hanging.
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(5),
        fresh_client(&s).create(create("new")),
    )
    .await;
    let took = started.elapsed();
    match outcome {
        Err(_) => panic!("a new admin connection hung for {took:?} behind idle connections"),
        Ok(Ok(_)) => eprintln!("new admin connection served in {took:?}"),
        Ok(Err(st)) => {
            eprintln!("new admin connection shed in {took:?}: {st:?}");
            assert_eq!(
                st.code(),
                Code::ResourceExhausted,
                "new connection refused with an unclear status after {took:?}: {st:?}"
            );
            assert!(st.message().contains("max_connections"), "{st:?}");
        }
    }
    assert!(took < Duration::from_secs(3), "shedding took {took:?}");

    // The established connection and the store keep working.
    existing.create(create("during")).await.unwrap();

    // The accept loop does not spin while the idle connections stay.
    let cpu_before = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let burned = cpu_seconds(pid) - cpu_before;
    eprintln!("musterd CPU over 2 s with idle connections open: {burned:.2} s");
    assert!(
        burned < 0.4,
        "musterd used {burned:.2} s of CPU in 2 s with idle connections open"
    );

    let text = scrape(s.metrics_addr);
    assert!(
        sample(&text, "muster_connections_shed_total").unwrap_or(0.0) > 0.0,
        "{text}"
    );

    // Once they are gone, new connections work again.
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match fresh_client(&s)
            .create(create(&format!("after-{attempt}")))
            .await
        {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no recovery after the idle connections closed: {e:?}"),
        }
    }
    existing.create(create("after")).await.unwrap();
}

/// Reads until the server closes `c`; fails on our own read timeout (the server kept it).
fn assert_closed_by_server(mut c: std::net::TcpStream) {
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The server's SETTINGS may come first; then end of stream (or a reset).
    let mut buf = [0u8; 256];
    for _ in 0..64 {
        match c.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) => {
                assert!(
                    !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ),
                    "the server kept a silent connection open: {e}"
                );
                return;
            }
        }
    }
    panic!("the server kept sending on a connection that never sent its preface");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_after_the_handshake_timeout() {
    for tls_auto in [false, true] {
        let s = TestServer::start_with(Options {
            config: "handshake_timeout_ms = 300\n".into(),
            tls_auto,
            ..Default::default()
        })
        .unwrap();
        // One sends nothing, one stalls inside the HTTP/2 preface or the TLS ClientHello
        // (a handshake record header announcing 80 bytes, then nothing).
        let silent = std::net::TcpStream::connect(s.addr).unwrap();
        let mut partial = std::net::TcpStream::connect(s.addr).unwrap();
        let stall: &[u8] = if tls_auto {
            b"\x16\x03\x01\x00\x50\x01"
        } else {
            b"PRI * HTTP/2.0\r\n"
        };
        partial.write_all(stall).unwrap();
        let started = Instant::now();
        assert_closed_by_server(silent);
        assert_closed_by_server(partial);
        assert!(started.elapsed() < Duration::from_secs(3), "tls {tls_auto}");
        if !tls_auto {
            // (With TLS, rustls's own timeout of the same length may close them first.)
            let text = scrape(s.metrics_addr);
            assert_eq!(
                sample(&text, "muster_connection_handshake_timeouts_total"),
                Some(2.0),
                "{text}"
            );
        }
        // A real client is unaffected.
        let mut client = if tls_auto {
            s.inventory().await.unwrap()
        } else {
            // Lazy, so a refused connection would show as the RPC's status.
            fresh_client(&s)
        };
        client.create(create("ok")).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_an_rpc_are_closed_after_the_idle_timeout() {
    // musterd pings every 400 ms: answered pings must not count as use.
    let s = TestServer::start_with(Options {
        config: "idle_timeout_ms = 1000\nkeepalive_interval_ms = 400\n".into(),
        ..Default::default()
    })
    .unwrap();
    // One connection makes a call and then sits idle; another holds a Watch that sees nothing.
    let mut idle = fresh_client(&s);
    idle.create(create("before")).await.unwrap();
    let mut watcher = fresh_client(&s);
    let mut stream = watcher
        .watch(pb::WatchRequest {
            kind: pb::ResourceKind::Site as i32,
            // 0: from now on.
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let open = |text: &str| sample(text, "muster_connections_open");
    assert_eq!(open(&scrape(s.metrics_addr)), Some(2.0));

    // The idle timeout (1 s), then a moment without a ping answer in flight, plus a margin.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let text = scrape(s.metrics_addr);
    assert_eq!(
        sample(&text, "muster_connections_idle_closed_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(open(&text), Some(1.0), "{text}");

    // The watch's connection is still there: a change made now reaches it.
    fresh_client(&s).create(create("after")).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let ev = stream.message().await.unwrap().expect("the watch ended");
            if ev.r#type != pb::EventType::Bookmark as i32 {
                return ev;
            }
        }
    })
    .await
    .expect("no event on the watch");
    assert_eq!(
        event.object.as_ref().map(|o| o.name().to_string()),
        Some("after".to_string())
    );
    // And the idle client reconnects by itself on its next call.
    idle.create(create("again")).await.unwrap();
}
