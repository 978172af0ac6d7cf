//! Campaign controller benchmark (issue 13): a 10,000-host campaign with a no-op step through
//! the `InProcessExecutor`, against a real musterd `Server` (gRPC on 127.0.0.1:0, sled on disk
//! with fdatasync), hosts seen through a simulated observer (a fresh healthy report whenever
//! asked, so verification passes without 10,000 agents). The server runs in a child process
//! (this binary with `--serve-child`), so it can be killed and restarted on its data directory
//! and its CPU time is its own, not the load generator's.
//!
//! Figures, each beside a baseline from the same run:
//! (a) plan + first dispatch: the Submit RPC (plan over the fleet, frozen, 10,000 host
//!     records written durably) plus Start RPC → the first step handed to the executor
//!     (target <= 200 ms); baseline: 10,000 host-record-sized values in one raw sled batch,
//!     flushed and fdatasync'd (the engine writes every host record before answering Submit
//!     and again with its intent before dispatching, so the figure scales with that write);
//! (b) controller CPU per host over the whole run, Submit to COMPLETED: the server process's
//!     user + system time (`/proc/self/stat`), so it includes the gRPC server, the store, the
//!     simulated observer and executor, the drift engine and every other background task
//!     (target <= 1 ms/host); baseline: that raw batch's time per record;
//! (c) restart-and-resume: kill -9 of the server once half the hosts of a second campaign
//!     have succeeded, a new server on the same data directory, time from its spawn until it
//!     dispatches again (target <= 1 s); baseline: reopening that raw sled tree and scanning
//!     its 10,000 records.
//!
//! Run: `cargo bench -p muster-server --bench campaign` (BENCH_SCALE=0.1 for a quick run).
#![allow(clippy::disallowed_methods)] // a benchmark measures real time

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{BoxError, ms, pct, scale};
use muster::client::Bearer;
use muster::pb::{self, campaign_service_client::CampaignServiceClient};
use muster::pb::{inventory_service_client::InventoryServiceClient, resource::Resource as R};
use muster_server::campaigns::executor::{Executor, InProcessExecutor, StepFuture, StepRequest};
use muster_server::campaigns::observe::{Expectations, Observation, Observer};
use muster_server::config::{Config, TokenConfig};
use muster_server::model::ApiError;
use muster_server::{Listeners, Server};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// The allocator musterd uses (`server/src/main.rs`), so the server child behaves like it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ADMIN: &str = "bench-admin-0123456789abcdef0123456789abcdef";
const APPROVER: &str = "bench-approver-0123456789abcdef0123456789abcd";
/// Bound on any one wait (a campaign, a line from the server).
const BOUND: Duration = Duration::from_secs(300);
/// Clients creating the fleet.
const CLIENTS: usize = 32;

type Authed = InterceptedService<Channel, Bearer>;

// ------------------------------------------------------------------ the server (child)

/// The in-process executor, announcing its first step on stdout (the parent times it).
#[derive(Debug)]
struct Announcing {
    inner: Arc<InProcessExecutor>,
    first: AtomicBool,
}

impl Executor for Announcing {
    fn run(&self, req: StepRequest) -> StepFuture {
        if !self.first.swap(true, Ordering::SeqCst) {
            println!("dispatch");
        }
        self.inner.run(req)
    }
}

/// Every host reports now, healthy, with the change in place.
#[derive(Debug)]
struct SimAgents;

impl Observer for SimAgents {
    fn observe(&self, _: &str, _: &Expectations) -> Result<Option<Observation>, ApiError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        Ok(Some(Observation {
            report_nanos: now,
            boot_id: "boot-1".into(),
            health: pb::Health::Ok as i32,
            health_reasons: BTreeSet::new(),
            unmet: Vec::new(),
            drift: BTreeSet::new(),
        }))
    }
}

/// This process's user + system CPU time (all threads, live and exited), from
/// `/proc/self/stat` in clock ticks of 10 ms (USER_HZ is 100 on Linux).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    // Fields after the command: state(3) ... utime(14) stime(15).
    let f: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    Duration::from_millis(f.iter().sum::<u64>() * 10)
}

fn token(name: &str, role: &str, secret: &str) -> TokenConfig {
    TokenConfig {
        name: name.into(),
        role: role.into(),
        sha256: hex::encode(Sha256::digest(secret.as_bytes())),
    }
}

/// Child mode: serve on `dir`; print `grpc=ADDR`, `dispatch` at the first step, and answer
/// `cpu` on stdin with `cpu <nanos>`. Exits when stdin closes (the parent is gone).
fn child_main(dir: PathBuf) -> Result<(), BoxError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let config = Config {
            data_dir: dir,
            tokens: vec![
                token("ada", "admin", ADMIN),
                token("arno", "approver", APPROVER),
            ],
            ..Config::default()
        };
        let exec = Arc::new(Announcing {
            inner: InProcessExecutor::new(),
            first: AtomicBool::new(false),
        });
        let server = Server::open(config)
            .await?
            .with_campaign_executor(exec)
            .with_campaign_observer(Arc::new(SimAgents));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("grpc={}", listener.local_addr()?);
        std::thread::spawn(|| {
            for line in std::io::stdin().lock().lines() {
                match line.as_deref() {
                    Ok("cpu") => println!("cpu {}", cpu_time().as_nanos()),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            std::process::exit(0);
        });
        let listeners = Listeners {
            grpc: listener,
            metrics: None,
        };
        server.run(listeners, std::future::pending()).await?;
        Ok::<_, BoxError>(())
    })
}

// ------------------------------------------------------------------ the parent's handle

/// A server child process: its lines on stdout, each with the instant it arrived.
struct Musterd {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<(Instant, String)>,
    channel: Channel,
}

impl Musterd {
    /// Spawns a server on `dir`; returns it and the spawn instant.
    async fn start(dir: &Path) -> Result<(Self, Instant), BoxError> {
        let spawned = Instant::now();
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--serve-child")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        let mut m = Self {
            child,
            stdin,
            lines,
            channel: Channel::from_static("http://127.0.0.1:1").connect_lazy(),
        };
        let (_, line) = m.line("grpc=").await?;
        let addr = line.trim_start_matches("grpc=").to_string();
        m.channel = Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        Ok((m, spawned))
    }

    /// The next line starting with `prefix` (others are skipped), and when it arrived.
    async fn line(&mut self, prefix: &str) -> Result<(Instant, String), BoxError> {
        let deadline = tokio::time::Instant::now() + BOUND;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some((at, l))) if l.starts_with(prefix) => return Ok((at, l)),
                Ok(Some(_)) => {}
                Ok(None) => return Err(format!("server exited before {prefix:?}").into()),
                Err(_) => return Err(format!("no {prefix:?} line within {BOUND:?}").into()),
            }
        }
    }

    /// The server's CPU time so far.
    async fn cpu(&mut self) -> Result<Duration, BoxError> {
        writeln!(self.stdin, "cpu")?;
        self.stdin.flush()?;
        let (_, l) = self.line("cpu ").await?;
        Ok(Duration::from_nanos(l[4..].trim().parse()?))
    }

    fn authed(&self, secret: &str) -> Result<Authed, BoxError> {
        Ok(InterceptedService::new(
            self.channel.clone(),
            Bearer::new(Some(secret))?,
        ))
    }

    fn campaigns(&self, secret: &str) -> Result<CampaignServiceClient<Authed>, BoxError> {
        Ok(CampaignServiceClient::new(self.authed(secret)?))
    }

    fn kill(&mut self) -> Result<(), BoxError> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Musterd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------ fleet and campaign

fn device(i: usize) -> pb::Resource {
    pb::Resource {
        resource: Some(R::Device(pb::Device {
            meta: Some(pb::ObjectMeta {
                name: format!("host-{i:05}"),
                labels: [
                    ("env".to_string(), "prod".to_string()),
                    ("rack".to_string(), format!("r{:02}", i % 40)),
                    ("role".to_string(), "web".to_string()),
                ]
                .into(),
                ..Default::default()
            }),
            kind: pb::DeviceKind::Server as i32,
            serial: format!("SN{i:08}"),
            ..Default::default()
        })),
    }
}

async fn create_fleet(m: &Musterd, n: usize) -> Result<(), BoxError> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let mut c = InventoryServiceClient::new(m.authed(ADMIN)?);
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst) as usize;
                if i >= n {
                    return Ok::<_, tonic::Status>(());
                }
                c.create(pb::CreateRequest {
                    resource: Some(device(i)),
                    context: None,
                })
                .await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

fn percent(p: u32) -> Option<pb::Count> {
    Some(pb::Count {
        value: Some(pb::count::Value::Percent(p)),
    })
}

/// One no-op, idempotent step; two waves of half the fleet, 1,000 hosts at once, any time,
/// no canaries (so no soak), a 10 % failure budget.
fn campaign(name: &str) -> pb::Campaign {
    pb::Campaign {
        meta: Some(pb::ObjectMeta {
            name: name.into(),
            ..Default::default()
        }),
        spec: Some(pb::CampaignSpec {
            selector: "env=prod".into(),
            steps: vec![pb::CampaignStep {
                name: "noop".into(),
                action: Some(pb::campaign_step::Action::SshCommand("true".into())),
                timeout: Some(pbjson_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
                idempotent: true,
            }],
            any_time: true,
            strategy: Some(pb::CampaignStrategy {
                batch_size: percent(50),
                max_concurrency: 1000,
                failure_threshold: percent(10),
                ..Default::default()
            }),
            approval: Some(pb::ApprovalPolicy {
                required: 1,
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

fn ctx() -> Option<pb::ChangeContext> {
    Some(pb::ChangeContext {
        reason: "campaign bench".into(),
        ticket: "BENCH-1".into(),
        ..Default::default()
    })
}

fn act(name: &str) -> pb::CampaignActionRequest {
    pb::CampaignActionRequest {
        name: name.into(),
        context: ctx(),
    }
}

/// Creates `name`, then submits it; returns the Submit RPC's time and the digest.
async fn create_submit(m: &Musterd, name: &str) -> Result<(Duration, String), BoxError> {
    let mut c = m.campaigns(ADMIN)?;
    c.create(pb::CreateCampaignRequest {
        campaign: Some(campaign(name)),
        context: ctx(),
    })
    .await?;
    let t = Instant::now();
    let r = c.submit(act(name)).await?.into_inner();
    let took = t.elapsed();
    let digest = r
        .campaign
        .and_then(|c| c.status)
        .map(|s| s.digest)
        .ok_or("submit answered without a digest")?;
    Ok((took, digest))
}

async fn approve(m: &Musterd, name: &str, digest: String) -> Result<(), BoxError> {
    m.campaigns(APPROVER)?
        .approve(pb::ApproveCampaignRequest {
            name: name.into(),
            digest,
            context: ctx(),
        })
        .await?;
    Ok(())
}

/// The campaign's summary from List (the engine's published snapshot: no engine round trip;
/// published after the round that answered, so briefly absent after a create or a restart).
async fn summary(m: &Musterd, name: &str) -> Result<Option<pb::CampaignSummary>, BoxError> {
    let r = m
        .campaigns(ADMIN)?
        .list(pb::ListCampaignsRequest {})
        .await?
        .into_inner();
    Ok(r.campaigns.into_iter().find(|s| s.name == name))
}

/// Polls every `every` until `done` holds (bounded by [`BOUND`]).
async fn until(
    m: &Musterd,
    name: &str,
    every: Duration,
    done: impl Fn(&pb::CampaignSummary) -> bool,
) -> Result<pb::CampaignSummary, BoxError> {
    let t = Instant::now();
    loop {
        let s = summary(m, name).await?;
        if let Some(s) = s.as_ref().filter(|s| done(s)) {
            return Ok(s.clone());
        }
        if t.elapsed() > BOUND {
            return Err(format!("campaign {name} stuck: {s:?}").into());
        }
        tokio::time::sleep(every).await;
    }
}

fn counts(s: &pb::CampaignSummary) -> pb::HostCounts {
    s.counts.unwrap_or_default()
}

fn completed(s: &pb::CampaignSummary) -> bool {
    s.state == pb::CampaignState::Completed as i32
}

// ------------------------------------------------------------------ baseline

/// Opens raw sled on `dir`, retrying while the previous handle's threads still hold its lock.
fn open_retrying(dir: &Path) -> Result<sled::Db, BoxError> {
    let t = Instant::now();
    loop {
        match sled::Config::new().path(dir).flush_every_ms(None).open() {
            Ok(db) => return Ok(db),
            Err(e) if t.elapsed() > Duration::from_secs(10) => return Err(e.into()),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Raw sled: `n` values the size of a finished host record in one batch, flushed and
/// fdatasync'd; then (after closing) reopen and scan them. Returns both times.
fn raw_sled(dir: &Path, n: usize, round: usize) -> Result<(Duration, Duration), BoxError> {
    let value = vec![0x5au8; 400];
    let write = {
        let db = open_retrying(dir)?;
        let data = std::fs::File::open(dir.join("db"))?;
        let t = Instant::now();
        let mut b = sled::Batch::default();
        for i in 0..n {
            let mut k = format!("cp/{round:02}/h/").into_bytes();
            k.extend_from_slice(&(i as u32).to_be_bytes());
            b.insert(k, value.as_slice());
        }
        db.apply_batch(b)?;
        db.flush()?;
        data.sync_data()?;
        t.elapsed()
    };
    let t = Instant::now();
    let db = open_retrying(dir)?;
    let prefix = format!("cp/{round:02}/h/");
    let seen = db.scan_prefix(prefix.as_bytes()).count();
    let scan = t.elapsed();
    if seen != n {
        return Err(format!("raw sled scan saw {seen} of {n}").into());
    }
    Ok((write, scan))
}

// ------------------------------------------------------------------ the run

async fn run() -> Result<(), BoxError> {
    let n = scale(10_000);
    let tmp = tempfile::tempdir()?;

    // Baseline, three rounds on one tree.
    let (mut bw, mut bs) = (Vec::new(), Vec::new());
    for round in 0..3 {
        let (w, s) = raw_sled(&tmp.path().join("raw"), n, round)?;
        bw.push(w);
        bs.push(s);
    }
    let (base_write, base_scan) = (pct(&mut bw, 0.5), pct(&mut bs, 0.5));
    println!(
        "baseline: {n} records of 400 B in one raw sled batch + flush + fdatasync, median {}; reopen + scan them, median {}",
        ms(base_write),
        ms(base_scan)
    );

    let dir = tmp.path().join("musterd");
    let (mut m, _) = Musterd::start(&dir).await?;
    let t = Instant::now();
    create_fleet(&m, n).await?;
    println!(
        "setup: {n} devices created in {:.1} s (not timed)",
        t.elapsed().as_secs_f64()
    );

    // (a) and (b): a whole campaign.
    let cpu0 = m.cpu().await?;
    let wall0 = Instant::now();
    let (submit, digest) = create_submit(&m, "bench-1").await?;
    let cpu_submit = m.cpu().await?.saturating_sub(cpu0);
    approve(&m, "bench-1", digest).await?;
    let cpu1 = m.cpu().await?;
    let t_start = Instant::now();
    m.campaigns(ADMIN)?.start(act("bench-1")).await?;
    let (first, _) = m.line("dispatch").await?;
    let start_to_dispatch = first.duration_since(t_start);
    let cpu_start = m.cpu().await?.saturating_sub(cpu1);
    let s = until(&m, "bench-1", Duration::from_millis(50), completed).await?;
    let wall = wall0.elapsed();
    let cpu = m.cpu().await?.saturating_sub(cpu0);
    let c = counts(&s);
    if c.succeeded as usize != n {
        return Err(format!("campaign 1 ended with {c:?}").into());
    }
    let plan_dispatch = submit + start_to_dispatch;
    let per_host = cpu / n as u32;
    let base_per_record = base_write / n as u32;
    println!(
        "(a) plan + first dispatch: {} (Submit {} + Start to first step {}); ratio to the raw batch {:.2} (target <= 200 ms)",
        ms(plan_dispatch),
        ms(submit),
        ms(start_to_dispatch),
        plan_dispatch.as_secs_f64() / base_write.as_secs_f64()
    );
    println!(
        "    server CPU in them: Submit {}, Start to first step (and a few steps after) {} (10 ms ticks)",
        ms(cpu_submit),
        ms(cpu_start)
    );
    println!(
        "(b) server CPU {:.2} s over the run ({:.1} s wall, Submit to COMPLETED, {n} hosts succeeded): {:.3} ms/host; ratio to the raw batch per record {:.1} (target <= 1 ms/host)",
        cpu.as_secs_f64(),
        wall.as_secs_f64(),
        per_host.as_secs_f64() * 1000.0,
        per_host.as_secs_f64() / base_per_record.as_secs_f64()
    );

    // (c): a second campaign, the server killed half way.
    let (_, digest) = create_submit(&m, "bench-2").await?;
    approve(&m, "bench-2", digest).await?;
    m.campaigns(ADMIN)?.start(act("bench-2")).await?;
    let half = until(&m, "bench-2", Duration::from_millis(5), |s| {
        counts(s).succeeded as usize >= n / 2
    })
    .await?;
    m.kill()?;
    drop(m);
    let (mut m, spawned) = Musterd::start(&dir).await?;
    let listening = Instant::now();
    let (again, _) = m.line("dispatch").await?;
    let resume = again.duration_since(spawned);
    let s = until(&m, "bench-2", Duration::from_millis(50), completed).await?;
    let c = counts(&s);
    if c.succeeded as usize != n {
        return Err(format!("campaign 2 ended with {c:?}").into());
    }
    println!(
        "(c) kill -9 at {} of {n} succeeded; new server to first dispatch {} (to serving gRPC {}); ratio to raw reopen + scan {:.1} (target <= 1 s)",
        counts(&half).succeeded,
        ms(resume),
        ms(listening.duration_since(spawned)),
        resume.as_secs_f64() / base_scan.as_secs_f64()
    );
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve-child") {
        let dir = args.get(i + 1).ok_or("--serve-child needs a directory")?;
        return child_main(PathBuf::from(dir));
    }
    if !args.iter().any(|a| a == "--bench") {
        println!("campaign benchmark: run with `cargo bench -p muster-server --bench campaign`");
        return Ok(());
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}
