//! Issue 12 item 4: a viewer's large Plan must not stall the server, and every list a change
//! set carries is bounded (refused with the field and the limit, nothing changed, audited).

use std::time::{Duration, Instant};

use muster::pb::{self, resource::Resource as R};
use muster_tests::fixtures::{device, site};
use muster_tests::{Bearer, OPERATOR_TOKEN, Options, TestServer, VIEWER_TOKEN, snapshot};
use prost::Message;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type ConfigClient =
    pb::config_service_client::ConfigServiceClient<InterceptedService<Channel, Bearer>>;

/// Devices in the chain: as many as one change set may hold.
const CHAIN: usize = 20_000;
/// A Get slower than this counts as this (and ends the wait for it): the old code stalled
/// Gets for minutes, and the failing run must still end quickly.
const GET_CAP: Duration = Duration::from_secs(2);
/// How long both Plans may take together in a debug build (generous: seconds are expected).
const PLANS_BOUND: Duration = Duration::from_secs(60);

async fn config_as(s: &TestServer, token: &str) -> ConfigClient {
    pb::config_service_client::ConfigServiceClient::with_interceptor(
        s.channel().await.unwrap(),
        muster_tests::bearer(token),
    )
    .max_encoding_message_size(64 * 1024 * 1024)
    .max_decoding_message_size(64 * 1024 * 1024)
}

/// `CHAIN` devices, each the parent of the next, in a shuffled order (so that ordering
/// parents before children has real work to do).
fn shuffled_chain() -> Vec<pb::Resource> {
    let mut set: Vec<pb::Resource> = (0..CHAIN)
        .map(|i| {
            let mut d = device(&format!("chain-{i:05}"), &[("role", "chained")]);
            if let Some(R::Device(x)) = d.resource.as_mut()
                && i > 0
            {
                x.parent = format!("chain-{:05}", i - 1);
            }
            d
        })
        .collect();
    set.shuffle(&mut rand::rngs::StdRng::seed_from_u64(12));
    set
}

/// One Get of the probe device and how long it took (at most `GET_CAP`).
async fn timed_get(admin: &mut muster_tests::InventoryClient) -> Duration {
    let t = Instant::now();
    let got = tokio::time::timeout(
        GET_CAP,
        admin.get(pb::GetRequest {
            kind: pb::ResourceKind::Device as i32,
            name: "probe-1".into(),
        }),
    )
    .await;
    let took = t.elapsed();
    if let Ok(r) = got {
        r.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    took
}

/// The `q` quantile of sorted latencies.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[i - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_large_viewer_plans_do_not_stall_gets() {
    let s = TestServer::start_with(Options {
        role_tokens: true,
        ..Default::default()
    })
    .unwrap();
    let mut admin = s.inventory().await.unwrap();
    admin
        .create(pb::CreateRequest {
            resource: Some(device("probe-1", &[])),
            context: None,
        })
        .await
        .unwrap();
    let set = shuffled_chain();
    let request = pb::PlanRequest {
        resources: set,
        include_unchanged: false,
    };
    let size = request.encoded_len();
    assert!(
        size > 1_000_000 && size < 4 * 1024 * 1024,
        "the plan request is {size} bytes: it must be large yet fit max_message_bytes"
    );

    // Let the drift engine take in the probe (its own writes) before measuring.
    let mut cfg = config_as(&s, VIEWER_TOKEN).await;
    cfg.drift(pb::DriftRequest::default()).await.unwrap();
    // The machine's own noise, for the failure message: the same Gets with no plan running.
    let mut baseline = Vec::new();
    for _ in 0..200 {
        baseline.push(timed_get(&mut admin).await);
    }
    baseline.sort();

    // The viewer is another client: its own thread and runtime, so encoding 1.6 MB requests
    // and decoding the answers does not delay this test's Gets.
    let url = s.url();
    let started = Instant::now();
    let plans = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let one = |request: pb::PlanRequest| {
                let url = url.clone();
                async move {
                    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
                    let mut viewer =
                        pb::config_service_client::ConfigServiceClient::with_interceptor(
                            channel,
                            muster_tests::bearer(VIEWER_TOKEN),
                        )
                        .max_encoding_message_size(64 * 1024 * 1024)
                        .max_decoding_message_size(64 * 1024 * 1024);
                    let t = Instant::now();
                    let r = tokio::time::timeout(PLANS_BOUND, viewer.plan(request)).await;
                    (r, t.elapsed())
                }
            };
            let (a, b) = tokio::join!(one(request.clone()), one(request));
            vec![a, b]
        })
    });

    // Gets on their own connection, as another operator's would be.
    let mut latencies = Vec::new();
    let deadline = started + PLANS_BOUND + Duration::from_secs(5);
    while !plans.is_finished() && Instant::now() < deadline {
        latencies.push(timed_get(&mut admin).await);
    }
    // Each plan is bounded by PLANS_BOUND inside the thread, so this join is too.
    let outcomes = plans.join().unwrap();
    latencies.sort();
    assert!(
        latencies.len() >= 20,
        "too few Gets ({}) ran while the plans did",
        latencies.len()
    );
    let p99 = quantile(&latencies, 0.99);
    let quiet = format!(
        "with no plan running: p50 {:?}, p99 {:?}",
        quantile(&baseline, 0.5),
        quantile(&baseline, 0.99)
    );
    eprintln!(
        "{} Gets during two {CHAIN}-device plans: p50 {:?}, p99 {p99:?}, max {:?}; plans took \
         {:?}; {quiet}",
        latencies.len(),
        quantile(&latencies, 0.5),
        quantile(&latencies, 1.0),
        outcomes.iter().map(|(_, t)| *t).collect::<Vec<_>>()
    );
    assert_eq!(outcomes.len(), 2, "a plan task did not finish");
    for (r, took) in outcomes {
        let resp = r
            .unwrap_or_else(|_| panic!("a plan took longer than {PLANS_BOUND:?}"))
            .unwrap()
            .into_inner();
        assert_eq!(
            resp.devices_changed as usize, CHAIN,
            "plan answered {took:?}"
        );
        assert_eq!(resp.resources.len(), CHAIN);
        // Parents before children: the order Apply would write in.
        let pos: std::collections::HashMap<&str, usize> = resp
            .resources
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.as_str(), i))
            .collect();
        for i in 1..CHAIN {
            assert!(
                pos[format!("chain-{:05}", i - 1).as_str()] < pos[format!("chain-{i:05}").as_str()],
                "chain-{i:05} planned before its parent"
            );
        }
    }
    assert!(
        p99 < Duration::from_millis(50),
        "Get p99 was {p99:?} while two plans ran (limit 50 ms); {quiet}"
    );
}

/// A device whose spec holds `f` applied to a default spec.
fn device_with(name: &str, f: impl FnOnce(&mut pb::Device)) -> pb::Resource {
    let mut d = device(name, &[]);
    if let Some(R::Device(x)) = d.resource.as_mut() {
        f(x);
    }
    d
}

fn spec(x: &mut pb::Device) -> &mut pb::DesiredState {
    x.spec.get_or_insert_with(Default::default)
}

fn packages(n: usize) -> Vec<pb::PackageRequirement> {
    (0..n)
        .map(|i| pb::PackageRequirement {
            name: format!("pkg-{i}"),
            version: "1.0".into(),
            r#match: pb::VersionMatch::Exact as i32,
        })
        .collect()
}

#[tokio::test]
async fn oversized_fields_are_refused_naming_the_limit() {
    let s = TestServer::start_with(Options {
        role_tokens: true,
        ..Default::default()
    })
    .unwrap();
    let mut admin = s.inventory().await.unwrap();
    admin
        .create(pb::CreateRequest {
            resource: Some(site("fra1")),
            context: None,
        })
        .await
        .unwrap();
    let before = snapshot(&mut admin).await.unwrap();
    let mut viewer = config_as(&s, VIEWER_TOKEN).await;
    let mut operator = config_as(&s, OPERATOR_TOKEN).await;
    let mut operator_inv = s.inventory_as(OPERATOR_TOKEN).await.unwrap();

    let too_many_labels = {
        let labels: Vec<(String, String)> = (0..65)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        let refs: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        device("lab-1", &refs)
    };
    let cases: Vec<(&str, pb::Resource, &str)> = vec![
        (
            "packages",
            device_with("pkg-1", |x| spec(x).packages = packages(1025)),
            "spec.packages: holds 1025 entries; the limit is 1024",
        ),
        (
            "duplicate package",
            device_with("pkg-2", |x| {
                let mut p = packages(3);
                p[2].name = "pkg-0".into();
                spec(x).packages = p;
            }),
            "spec.packages[2].name: \"pkg-0\" is listed twice",
        ),
        (
            "sysctl",
            device_with("sys-1", |x| {
                spec(x).sysctl = (0..513).map(|i| (format!("k.{i}"), "1".into())).collect()
            }),
            "spec.sysctl: holds 513 entries; the limit is 512",
        ),
        (
            "expect",
            device_with("exp-1", |x| {
                spec(x).expect = (0..257)
                    .map(|i| pb::ExpectRule {
                        path: format!("facts.x{i}"),
                        op: "exists".into(),
                        value: String::new(),
                    })
                    .collect()
            }),
            "spec.expect: holds 257 entries; the limit is 256",
        ),
        (
            "ntp servers",
            device_with("ntp-1", |x| {
                spec(x).ntp_servers = (0..17).map(|i| format!("ntp{i}.example.org")).collect()
            }),
            "spec.ntp_servers: holds 17 entries; the limit is 16",
        ),
        (
            "interfaces",
            device_with("if-1", |x| {
                x.interfaces = (0..257)
                    .map(|i| pb::Interface {
                        name: format!("eth{i}"),
                        ..Default::default()
                    })
                    .collect()
            }),
            "interfaces: holds 257 entries; the limit is 256",
        ),
        (
            "labels",
            too_many_labels,
            "meta.labels: holds 65 entries; the limit is 64",
        ),
    ];
    // An accepted answer can be huge (1,025 planned packages): name it, do not print it.
    fn refused<T>(what: &str, r: Result<tonic::Response<T>, tonic::Status>) -> tonic::Status {
        match r {
            Ok(_) => panic!("{what} was accepted"),
            Err(e) => e,
        }
    }
    for (what, r, needle) in &cases {
        let plan = viewer
            .plan(pb::PlanRequest {
                resources: vec![r.clone()],
                include_unchanged: false,
            })
            .await;
        let plan = refused(what, plan);
        let apply = operator
            .apply(pb::ApplySetRequest {
                resources: vec![r.clone()],
                context: None,
            })
            .await;
        let apply = refused(what, apply);
        let create = operator_inv
            .create(pb::CreateRequest {
                resource: Some(r.clone()),
                context: None,
            })
            .await;
        let create = refused(what, create);
        for (via, st) in [("plan", &plan), ("apply", &apply), ("create", &create)] {
            assert_eq!(st.code(), Code::InvalidArgument, "{what} via {via}: {st:?}");
            assert!(
                st.message().contains(needle),
                "{what} via {via}: message {:?} lacks {needle:?}",
                st.message()
            );
        }
    }
    // Planning costs profiles x devices: a set's profiles are bounded too.
    let many_profiles: Vec<pb::Resource> = (0..1001)
        .map(|i| pb::Resource {
            resource: Some(R::Profile(pb::Profile {
                meta: Some(pb::ObjectMeta {
                    name: format!("prof-{i}"),
                    ..Default::default()
                }),
                selector: "role=web".into(),
                ..Default::default()
            })),
        })
        .collect();
    let st = refused(
        "1001 profiles",
        viewer
            .plan(pb::PlanRequest {
                resources: many_profiles,
                include_unchanged: false,
            })
            .await,
    );
    assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
    assert!(
        st.message()
            .contains("holds 1001 profiles; one change set may hold at most 1000"),
        "{st:?}"
    );

    let after = snapshot(&mut admin).await.unwrap();
    assert_eq!(before, after, "refused requests changed the store");

    // Every refusal is in the audit trail, the viewer's plans included.
    let audit = s.audit_trail("").await.unwrap();
    assert!(
        audit.iter().any(|c| c.principal == "vera"
            && c.verb == "plan"
            && c.resource_name == "prof-0"
            && c.message.contains("1001 profiles")),
        "the refused 1001-profile plan is not audited"
    );
    for (what, r, needle) in &cases {
        for (who, verb) in [("vera", "plan"), ("oscar", "apply"), ("oscar", "create")] {
            assert!(
                audit.iter().any(|c| c.principal == who
                    && c.verb == verb
                    && c.outcome == pb::ChangeOutcome::Rejected as i32
                    && c.resource_name == r.name()
                    && c.message.contains(needle)),
                "{what}: no rejected {verb} by {who} audited"
            );
        }
    }
}
