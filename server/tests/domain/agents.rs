//! Agent reports in process, through the real AgentService: the server serves TLS from its own
//! CA (`tls_auto`), each simulated agent enrolls with the agent crate's own code (key, CSR,
//! token, certificate files) and reports over mTLS with the agent's delta chain, so the
//! server identifies it by its certificate exactly as in production. The manual clock decides
//! silence; the drift engine's causes are read back through ConfigService.Drift.

use std::time::Duration;

use muster::pb::{self, agent_service_client::AgentServiceClient};
use muster_agent::config::AgentConfig;
use muster_agent::identity::{self, Paths};
use muster_agent::report::Chain;
use tonic::transport::Channel;

use crate::kit::{ADMIN_TOKEN, TestServer};

/// The report interval the server hands out (and judges silence by): short, so the sweeper,
/// which runs on tokio's clock every half interval, looks often.
const INTERVAL_MS: u64 = 200;
/// Reports missed before a device turns UNKNOWN (the server's default).
const SILENT_INTERVALS: u64 = 3;
/// A poll for an asynchronous outcome (sweep, drift engine): this many looks, this far apart
/// (10 s at most; it usually takes one or two).
const POLLS: u32 = 500;
const POLL_EVERY: Duration = Duration::from_millis(20);

async fn start() -> TestServer {
    TestServer::start_with(|c| {
        c.tls_auto = true;
        c.agent_report_interval_ms = INTERVAL_MS;
        c.agent_jitter = 0.0;
    })
    .await
    .unwrap()
}

/// One enrolled agent: its mTLS client and its report chain.
struct SimAgent {
    device: String,
    client: AgentServiceClient<Channel>,
    chain: Chain,
    seq: u64,
    _state: tempfile::TempDir,
}

impl SimAgent {
    /// Creates device `name` (with `spec`), enrolls an agent for it, and returns the agent.
    async fn enroll(s: &TestServer, name: &str, spec: Option<pb::DesiredState>) -> Self {
        s.inventory(ADMIN_TOKEN)
            .apply(pb::ApplyRequest {
                resource: Some(device(name, spec)),
                ..Default::default()
            })
            .await
            .unwrap();
        let token = AgentServiceClient::new(s.authed(ADMIN_TOKEN))
            .create_enrollment_token(pb::CreateEnrollmentTokenRequest {
                device: name.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .token;
        let state = tempfile::tempdir().unwrap();
        let cfg = AgentConfig {
            server: s.url.clone(),
            ca: Some(s.agent_ca()),
            state_dir: state.path().to_path_buf(),
            ..AgentConfig::default()
        };
        let enrolled = muster_agent::run::enroll(&cfg, &token, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(enrolled, name);
        let channel = identity::channel(
            &cfg.server,
            cfg.ca.as_deref(),
            &Paths::new(&cfg.state_dir),
            true,
            false,
        )
        .unwrap();
        Self {
            device: name.into(),
            client: AgentServiceClient::new(channel),
            chain: Chain::default(),
            seq: 0,
            _state: state,
        }
    }

    /// Reports `facts` (a delta against what the server acknowledged, as the agent sends).
    async fn report(&mut self, facts: &pb::Facts) -> pb::ReportResponse {
        self.seq += 1;
        let (base, delta, hash) = self.chain.advance(facts, self.seq == 1);
        self.client
            .report(pb::ReportRequest {
                device: self.device.clone(),
                boot_id: "boot-1".into(),
                seq: self.seq,
                agent_version: "domain-test".into(),
                base_hash: base,
                facts_hash: hash,
                facts: Some(delta),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    }
}

fn device(name: &str, spec: Option<pb::DesiredState>) -> pb::Resource {
    pb::Resource {
        resource: Some(pb::resource::Resource::Device(pb::Device {
            meta: Some(pb::ObjectMeta {
                name: name.into(),
                ..Default::default()
            }),
            kind: pb::DeviceKind::Server as i32,
            spec,
            ..Default::default()
        })),
    }
}

fn facts(kernel: &str) -> pb::Facts {
    pb::Facts {
        os: Some(pb::OsFacts {
            hostname: "web".into(),
            release: "Debian GNU/Linux 12 (bookworm)".into(),
            kernel: kernel.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn health(s: &TestServer, name: &str) -> pb::Health {
    let r = s
        .inventory(ADMIN_TOKEN)
        .get(pb::GetRequest {
            kind: pb::ResourceKind::Device as i32,
            name: name.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let Some(pb::resource::Resource::Device(d)) = r.resource else {
        panic!("{name} is not a device: {r:?}")
    };
    d.status
        .and_then(|st| pb::Health::try_from(st.health).ok())
        .unwrap_or_default()
}

/// Polls (bounded: [`POLLS`]) until `name`'s health is `want`.
async fn wait_health(s: &TestServer, name: &str, want: pb::Health) {
    let mut now = pb::Health::Unspecified;
    for _ in 0..POLLS {
        now = health(s, name).await;
        if now == want {
            return;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    panic!("{name} stayed {now:?}, expected {want:?}");
}

#[tokio::test]
async fn an_agent_turns_unknown_exactly_when_the_clock_passes_the_silence_threshold() {
    let s = start().await;
    let limit = Duration::from_millis(INTERVAL_MS * SILENT_INTERVALS);
    // Two agents, `early` reporting one millisecond (of the server's clock) before `late`.
    let mut early = SimAgent::enroll(&s, "early-01", None).await;
    let mut late = SimAgent::enroll(&s, "late-01", None).await;
    let answer = early.report(&facts("6.1.0-18-amd64")).await;
    assert!(answer.applied, "{answer:?}");
    s.advance(Duration::from_millis(1));
    late.report(&facts("6.1.0-18-amd64")).await;
    assert_eq!(health(&s, "early-01").await, pb::Health::Ok);
    assert_eq!(health(&s, "late-01").await, pb::Health::Ok);

    // `late` is now exactly at the threshold (not past it), `early` one millisecond past.
    s.advance(limit);
    wait_health(&s, "early-01", pb::Health::Unknown).await;
    // The sweep that marked `early` read this same instant, and the clock has not moved
    // since: `late`, silent for exactly the threshold, is not silent yet.
    assert_eq!(health(&s, "late-01").await, pb::Health::Ok);

    s.advance(Duration::from_millis(1));
    wait_health(&s, "late-01", pb::Health::Unknown).await;

    // A report brings it back; silence counts from the new report.
    late.report(&facts("6.1.0-18-amd64")).await;
    assert_eq!(health(&s, "late-01").await, pb::Health::Ok);
    s.stop().await.unwrap();
}

/// The drift items of `name`'s kernel, once the drift engine has caught up with `settled`.
async fn kernel_drift(
    s: &TestServer,
    name: &str,
    settled: impl Fn(&[pb::DriftItem]) -> bool,
) -> Vec<pb::DriftItem> {
    let mut items = Vec::new();
    for _ in 0..POLLS {
        let resp = s
            .config(ADMIN_TOKEN)
            .drift(pb::DriftRequest {
                selector: String::new(),
                field_prefix: "kernel".into(),
                summary_only: false,
            })
            .await
            .unwrap()
            .into_inner();
        items = resp
            .items
            .into_iter()
            .filter(|d| d.device == name)
            .flat_map(|d| d.items)
            .collect();
        if settled(&items) {
            return items;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    panic!("drift of {name} did not settle: {items:?}");
}

fn kernel_spec(kernel: &str) -> Option<pb::DesiredState> {
    Some(pb::DesiredState {
        kernel: kernel.into(),
        ..Default::default()
    })
}

#[tokio::test]
async fn drift_is_pending_when_the_desire_moved_and_unexpected_when_the_host_did() {
    let s = start().await;
    let old = "6.1.0-18-amd64";
    let new = "6.1.0-20-amd64";
    let mut agent = SimAgent::enroll(&s, "web-01", kernel_spec(old)).await;
    agent.report(&facts(old)).await;
    let converged = |items: &[pb::DriftItem]| items.is_empty();
    kernel_drift(&s, "web-01", converged).await;

    // The desired kernel changes; the host still runs the old one: pending.
    s.inventory(ADMIN_TOKEN)
        .apply(pb::ApplyRequest {
            resource: Some(device("web-01", kernel_spec(new))),
            ..Default::default()
        })
        .await
        .unwrap();
    let items = kernel_drift(&s, "web-01", |i| !i.is_empty()).await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(
        (
            items[0].field.as_str(),
            items[0].desired.as_str(),
            items[0].observed.as_str(),
            items[0].cause.as_str()
        ),
        ("kernel", new, old, "pending"),
        "{items:?}"
    );

    // The host converges.
    agent.report(&facts(new)).await;
    kernel_drift(&s, "web-01", converged).await;

    // Someone boots the old kernel by hand; the desire did not move: unexpected.
    agent.report(&facts(old)).await;
    let items = kernel_drift(&s, "web-01", |i| !i.is_empty()).await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(
        (items[0].observed.as_str(), items[0].cause.as_str()),
        (old, "unexpected"),
        "{items:?}"
    );
    s.stop().await.unwrap();
}
