//! Agent ingest benchmark (issue 3), each figure beside its baseline from the same run:
//!
//! 1. raw store write rate: the store alone (no gRPC), 256 concurrent writers doing what one
//!    delta report does (a guarded auxiliary write of ~2.5 KB), group commit + fdatasync;
//! 2. first (full) reports: every simulated agent sends its ~1,500 packages once;
//! 3. peak delta reports/s: many simulated agents (the agent's own report chain, identity files
//!    and mTLS channel code), closed loop, 256 in flight, to one release `musterd`;
//! 4. p50/p99 at 70 % of that peak, open loop (latency counted from the scheduled send time,
//!    so a stall is not hidden), after 3 s of quiet so it measures a steady state rather than
//!    the server's recovery from the saturated phase before;
//! 5. the real `muster-agent` binary: peak RSS and CPU time per collection cycle (OS facts,
//!    ~all installed packages, SMART replay, external facts) against a second musterd.
//!
//! Run: `cargo bench -p muster-server --bench agent_ingest` (release; about 2 minutes).
//! `BENCH_SCALE=0.2` shrinks agent counts and durations for a quick look.
#![allow(clippy::disallowed_methods)] // a benchmark measures real time

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use muster::pb::{self, agent_service_client::AgentServiceClient};
use muster_agent::config::AgentConfig;
use muster_agent::identity::{self, Paths};
use muster_agent::report::Chain;
use muster_server::store::{AuxWrite, SledStore, Store, StoreOptions, wait_durable_batch};
use tonic::transport::Channel;

mod common;

use common::{BoxError, ms, pct, scale, spawn_musterd};

const IN_FLIGHT: usize = 256;
const PACKAGES: usize = 1500;
const SENSORS: usize = 32;
/// Quiet time before the open-loop phase.
const SETTLE: Duration = Duration::from_secs(3);

struct Musterd {
    child: Child,
    addr: String,
    data_dir: PathBuf,
    token: String,
}

impl Musterd {
    fn start(data_dir: &Path, interval: &str) -> Result<Self, BoxError> {
        let extra = ["--tls-auto", "--agent-interval", interval].map(String::from);
        let (child, addr) = spawn_musterd(data_dir, &extra)?;
        let token = std::fs::read_to_string(data_dir.join("admin.token"))?
            .trim()
            .to_string();
        Ok(Self {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            token,
        })
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn ca(&self) -> PathBuf {
        self.data_dir.join("agent-ca.pem")
    }

    async fn channel(&self) -> Result<Channel, BoxError> {
        let ca = std::fs::read(self.ca())?;
        Ok(Channel::from_shared(self.url())?
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
            )?
            .connect()
            .await?)
    }

    fn bearer<T>(&self, m: T) -> Result<tonic::Request<T>, BoxError> {
        let mut r = tonic::Request::new(m);
        r.metadata_mut()
            .insert("authorization", format!("Bearer {}", self.token).parse()?);
        Ok(r)
    }
}

impl Drop for Musterd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Realistic facts of host `i`: ~1,500 packages, 32 sensors, 2 NICs, 2 disks with SMART.
fn facts(i: usize, tick: u64) -> pb::Facts {
    let packages = (0..PACKAGES)
        .map(|p| pb::InstalledPackage {
            name: format!("package-{p:04}-lib"),
            version: format!("{}.{}.{}-{}+deb12u1", p % 7, p % 13, p % 29, p % 3),
            arch: "amd64".into(),
        })
        .collect();
    let sensors = (0..SENSORS)
        .map(|s| pb::Sensor {
            name: format!("Sensor {s}"),
            r#type: if s % 2 == 0 { "temperature" } else { "fan" }.into(),
            value: 40.0 + ((tick as usize + s + i) % 7) as f64,
            unit: if s % 2 == 0 { "C" } else { "RPM" }.into(),
            state: "ok".into(),
            upper_non_critical: Some(80.0),
            upper_critical: Some(90.0),
            ..Default::default()
        })
        .collect();
    let smart = (0..2)
        .map(|d| pb::SmartDisk {
            device: format!("/dev/sd{}", (b'a' + d) as char),
            model: "ST4000NM0035".into(),
            serial: format!("ZC{i:06}{d}"),
            passed: true,
            attributes: [1u32, 5, 9, 187, 188, 194, 197, 198]
                .iter()
                .map(|id| pb::SmartAttribute {
                    id: *id,
                    name: format!("Attribute_{id}"),
                    value: 100,
                    worst: 100,
                    thresh: 10,
                    raw: if *id == 9 { tick as i64 } else { 0 },
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    pb::Facts {
        os: Some(pb::OsFacts {
            hostname: format!("host-{i:06}"),
            release: "Debian GNU/Linux 12 (bookworm)".into(),
            kernel: "6.1.0-18-amd64".into(),
            uptime_seconds: 1000 + tick * 60,
            timezone: "UTC".into(),
            ..Default::default()
        }),
        cpu: Some(pb::CpuFacts {
            model: "Intel(R) Xeon(R) Gold 6338".into(),
            sockets: 2,
            cores: 64,
            threads: 128,
        }),
        memory_bytes: Some(512 << 30),
        nics: Some(pb::NicList {
            items: (0..2)
                .map(|n| pb::Nic {
                    name: format!("eno{n}"),
                    mac: format!(
                        "02:00:{:02x}:{:02x}:{:02x}:{n:02x}",
                        i >> 16 & 255,
                        i >> 8 & 255,
                        i & 255
                    ),
                    addresses: vec![format!("10.{}.{}.{}/24", n, i >> 8 & 255, i & 255)],
                    speed_mbps: 25_000,
                })
                .collect(),
        }),
        disks: Some(pb::BlockDeviceList {
            items: (0..2)
                .map(|d| pb::BlockDevice {
                    name: format!("sd{}", (b'a' + d) as char),
                    size_bytes: 4_000_787_030_016,
                    model: "ST4000NM0035".into(),
                    serial: format!("ZC{i:06}{d}"),
                    rotational: true,
                })
                .collect(),
        }),
        packages: Some(pb::PackageList { items: packages }),
        sensors: Some(pb::SensorList { items: sensors }),
        smart: Some(pb::SmartList { items: smart }),
        ..Default::default()
    }
}

/// One simulated agent: its facts, the agent's own delta chain, and an mTLS client with its
/// enrolled identity. Reports are built by the real chain code *before* a timed phase (a real
/// agent builds them on its own host, not on the server's two cores), then only sent.
struct SimAgent {
    index: usize,
    device: String,
    seq: u64,
    chain: Chain,
    current: pb::Facts,
    queue: std::collections::VecDeque<pb::ReportRequest>,
    client: AgentServiceClient<Channel>,
}

impl SimAgent {
    /// What changes on a host between two reports: uptime, sensor readings, power-on hours.
    fn tick(&mut self) {
        let t = self.seq;
        if let Some(os) = self.current.os.as_mut() {
            os.uptime_seconds += 60;
        }
        if let Some(s) = self.current.sensors.as_mut() {
            for (k, x) in s.items.iter_mut().enumerate() {
                x.value = 40.0 + ((t as usize + k + self.index) % 7) as f64;
            }
        }
        if let Some(d) = self.current.smart.as_mut() {
            for disk in &mut d.items {
                for a in disk.attributes.iter_mut().filter(|a| a.id == 9) {
                    a.raw += 1;
                }
            }
        }
    }

    fn build(&mut self, full: bool) -> pb::ReportRequest {
        self.seq += 1;
        if !full {
            self.tick();
        }
        let (base, delta, hash) = self.chain.advance(&self.current, full);
        pb::ReportRequest {
            device: self.device.clone(),
            boot_id: format!("boot-{}", self.index),
            seq: self.seq,
            agent_version: "bench".into(),
            base_hash: base,
            facts_hash: hash,
            facts: Some(delta),
            ..Default::default()
        }
    }

    fn prepare(&mut self, rounds: usize, full: bool) {
        for _ in 0..rounds {
            let r = self.build(full);
            self.queue.push_back(r);
        }
    }
}

/// Builds `rounds` reports per agent on both cores; returns how long it took.
fn prepare_all(agents: &mut [SimAgent], rounds: usize, full: bool) -> Duration {
    let t = Instant::now();
    let half = agents.len().div_ceil(2);
    std::thread::scope(|scope| {
        for chunk in agents.chunks_mut(half.max(1)) {
            scope.spawn(move || {
                for a in chunk {
                    a.prepare(rounds, full);
                }
            });
        }
    });
    t.elapsed()
}

async fn enroll_agents(m: &Musterd, n: usize, root: &Path) -> Result<Vec<SimAgent>, BoxError> {
    let ch = m.channel().await?;
    let mut inv = pb::inventory_service_client::InventoryServiceClient::new(ch.clone());
    let mut admin = AgentServiceClient::new(ch);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("host-{i:06}");
        let dev = pb::Resource {
            resource: Some(pb::resource::Resource::Device(pb::Device {
                meta: Some(pb::ObjectMeta {
                    name: name.clone(),
                    ..Default::default()
                }),
                kind: pb::DeviceKind::Server as i32,
                role: "bench".into(),
                ..Default::default()
            })),
        };
        inv.apply(m.bearer(pb::ApplyRequest {
            resource: Some(dev),
            ..Default::default()
        })?)
        .await?;
        let token = admin
            .create_enrollment_token(m.bearer(pb::CreateEnrollmentTokenRequest {
                device: name.clone(),
                ..Default::default()
            })?)
            .await?
            .into_inner()
            .token;
        let cfg = AgentConfig {
            server: m.url(),
            ca: Some(m.ca()),
            state_dir: root.join(&name),
            ..AgentConfig::default()
        };
        muster_agent::run::enroll(&cfg, &token, Duration::ZERO).await?;
        let channel = identity::channel(
            &cfg.server,
            cfg.ca.as_deref(),
            &Paths::new(&cfg.state_dir),
            true,
            false,
        )?;
        out.push(SimAgent {
            index: i,
            device: name,
            seq: 0,
            chain: Chain::default(),
            current: facts(i, 0),
            queue: Default::default(),
            client: AgentServiceClient::new(channel)
                .max_encoding_message_size(16 << 20)
                .max_decoding_message_size(16 << 20),
        });
    }
    Ok(out)
}

/// Sends one report per agent from a shared pool, `in_flight` at a time, until `stop`.
/// With `rate`, each send is scheduled (open loop) and latency counts from its slot.
async fn drive(
    agents: Vec<SimAgent>,
    in_flight: usize,
    duration: Duration,
    rate: Option<f64>,
) -> Result<(usize, Duration, Vec<Duration>, Vec<SimAgent>), BoxError> {
    let pool = Arc::new(tokio::sync::Mutex::new(std::collections::VecDeque::from(
        agents,
    )));
    let sent = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let slot_ns = rate.map(|r| (1e9 / r) as u64);
    let next_slot = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let (pool, sent, failures, next_slot, done) = (
            Arc::clone(&pool),
            Arc::clone(&sent),
            Arc::clone(&failures),
            Arc::clone(&next_slot),
            Arc::clone(&done),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                if started.elapsed() >= duration {
                    return lat;
                }
                let scheduled = match slot_ns {
                    Some(ns) => {
                        let at = started
                            + Duration::from_nanos(next_slot.fetch_add(ns, Ordering::SeqCst));
                        if at > started + duration {
                            return lat;
                        }
                        tokio::time::sleep_until(at.into()).await;
                        at
                    }
                    None => Instant::now(),
                };
                let Some(mut agent) = pool.lock().await.pop_front() else {
                    return lat;
                };
                let Some(report) = agent.queue.pop_front() else {
                    // This agent has sent everything prepared for the phase.
                    done.lock().await.push(agent);
                    continue;
                };
                sent.fetch_add(1, Ordering::SeqCst);
                let r = agent.client.report(report).await;
                match r {
                    Ok(resp) if resp.get_ref().applied => lat.push(scheduled.elapsed()),
                    _ => {
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
                pool.lock().await.push_back(agent);
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let took = started.elapsed();
    let f = failures.load(Ordering::SeqCst);
    if f > 0 {
        return Err(format!("{f} reports failed").into());
    }
    let mut agents = Vec::from(
        Arc::try_unwrap(pool)
            .map_err(|_| "agents still shared")?
            .into_inner(),
    );
    agents.extend(
        Arc::try_unwrap(done)
            .map_err(|_| "agents still shared")?
            .into_inner(),
    );
    // Reports a phase had no time to send stay queued for the next one: the chain already
    // moved past them, so they must go first and in order.
    Ok((all.len(), took, all, agents))
}

/// The store alone: `writers` tasks doing guarded ~2.5 KB auxiliary writes, each waiting for
/// its group flush (what a delta report costs the store, without gRPC, TLS or decoding).
async fn raw_store(
    dir: &Path,
    writers: usize,
    duration: Duration,
) -> Result<(f64, Duration), BoxError> {
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir, &StoreOptions::default())?);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut prev: Option<Vec<u8>> = None;
            let mut n = 0u64;
            while started.elapsed() < duration {
                n += 1;
                let key = format!("ob/bench-{w}/m").into_bytes();
                let meta = format!("{n:020}").into_bytes();
                let t = Instant::now();
                let applied = store
                    .commit_aux(AuxWrite {
                        guards: vec![(key.clone(), prev.clone())],
                        puts: vec![
                            (key.clone(), Some(meta.clone())),
                            (
                                format!("ob/bench-{w}/f09").into_bytes(),
                                Some(vec![n as u8; 2500]),
                            ),
                        ],
                        mutation: None,
                    })
                    .applied()
                    .await;
                match applied {
                    Ok(a) => {
                        if wait_durable_batch(&*store, a.batch).await.is_err() {
                            break;
                        }
                        prev = Some(meta);
                        lat.push(t.elapsed());
                    }
                    Err(_) => break,
                }
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let took = started.elapsed();
    Ok((all.len() as f64 / took.as_secs_f64(), pct(&mut all, 0.99)))
}

/// Runs the real agent binary for a few cycles; returns (peak RSS KiB, CPU ms per cycle).
async fn real_agent(root: &Path) -> Result<(u64, Vec<u64>), BoxError> {
    let agent_bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/muster-agent");
    if !agent_bin.exists() {
        let st = Command::new(env!("CARGO"))
            .args([
                "build",
                "--release",
                "-p",
                "muster-agent",
                "--bin",
                "muster-agent",
            ])
            .status()?;
        if !st.success() {
            return Err("cannot build muster-agent".into());
        }
    }
    let m = Musterd::start(&root.join("data-agent"), "1s")?;
    let ch = m.channel().await?;
    let mut inv = pb::inventory_service_client::InventoryServiceClient::new(ch.clone());
    inv.apply(m.bearer(pb::ApplyRequest {
        resource: Some(pb::Resource {
            resource: Some(pb::resource::Resource::Device(pb::Device {
                meta: Some(pb::ObjectMeta {
                    name: "real-agent".into(),
                    ..Default::default()
                }),
                kind: pb::DeviceKind::Server as i32,
                ..Default::default()
            })),
        }),
        ..Default::default()
    })?)
    .await?;
    let token = AgentServiceClient::new(ch)
        .create_enrollment_token(m.bearer(pb::CreateEnrollmentTokenRequest {
            device: "real-agent".into(),
            ..Default::default()
        })?)
        .await?
        .into_inner()
        .token;
    let state = root.join("real-agent");
    let facts_dir = root.join("facts.d");
    std::fs::create_dir_all(&facts_dir)?;
    let script = facts_dir.join("raid");
    std::fs::write(
        &script,
        "#!/bin/sh\necho '{\"raid\":{\"state\":\"optimal\",\"disks\":2}}'\n",
    )?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    }
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/smart");
    let common = |c: &mut Command| {
        c.arg("--server")
            .arg(m.url())
            .arg("--ca")
            .arg(m.ca())
            .arg("--state-dir")
            .arg(&state);
    };
    let mut enroll = Command::new(&agent_bin);
    common(&mut enroll);
    if !enroll
        .args(["enroll", "--token", &token])
        .status()?
        .success()
    {
        return Err("enroll failed".into());
    }
    let mut run = Command::new(&agent_bin);
    common(&mut run);
    run.arg("--smartctl")
        .arg(if Path::new("/usr/sbin/smartctl").exists() {
            "/usr/sbin/smartctl"
        } else {
            "smartctl"
        })
        .arg("--disk")
        .arg(format!(
            "replay:{}",
            fixtures.join("hdd-healthy.ioctl").display()
        ))
        .arg("--disk")
        .arg(format!(
            "replay:{}",
            fixtures.join("ssd-healthy.ioctl").display()
        ))
        .arg("--external-facts-dir")
        .arg(&facts_dir)
        .arg("--log-json")
        .arg("run")
        .env("MUSTER_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = run.spawn()?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut cpu = Vec::new();
    let mut rss = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while cpu.len() < 6 && Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) else {
            break;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let f = &v["fields"];
        if f["message"] == "collected" {
            cpu.push(f["cpu_ms"].as_u64().unwrap_or(0));
            rss = rss.max(f["peak_rss_kib"].as_u64().unwrap_or(0));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok((rss, cpu))
}

async fn run() -> Result<(), BoxError> {
    let root = tempfile::tempdir()?;
    let agents_n = scale(2000);
    let secs = Duration::from_secs(scale(10) as u64);

    println!(
        "agent ingest benchmark ({} simulated agents, {} packages each)",
        agents_n, PACKAGES
    );
    let (raw_rate, raw_p99) = raw_store(&root.path().join("raw"), IN_FLIGHT, secs / 2).await?;
    println!(
        "raw store, {IN_FLIGHT} writers, guarded 2.5 KB writes + group fdatasync: {raw_rate:.0}/s, p99 {}",
        ms(raw_p99)
    );

    let m = Musterd::start(&root.path().join("data"), "60s")?;
    let t = Instant::now();
    let agents = enroll_agents(&m, agents_n, &root.path().join("agents")).await?;
    println!(
        "enrolled {agents_n} agents (device + token + CSR + certificate each) in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let mut agents = agents;
    prepare_all(&mut agents, 1, true);
    let (n, took, mut lat, agents) = drive(agents, 64, Duration::from_secs(600), None).await?;
    let full_size = prost::Message::encoded_len(&facts(0, 0));
    println!(
        "first reports (full, {:.0} KB each): {n} in {:.1} s = {:.0}/s, p99 {}",
        full_size as f64 / 1024.0,
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        ms(pct(&mut lat, 0.99))
    );

    let mut agents = agents;
    let rounds = (8000 * secs.as_secs() as usize).div_ceil(agents_n);
    let prep = prepare_all(&mut agents, rounds, false);
    println!(
        "prepared {} delta reports with the agent's chain code in {:.1} s ({:.0} us of CPU each; not timed below)",
        rounds * agents_n,
        prep.as_secs_f64(),
        prep.as_secs_f64() * 2e6 / (rounds * agents_n) as f64
    );
    let (n, took, mut lat, agents) = drive(agents, IN_FLIGHT, secs, None).await?;
    let peak = n as f64 / took.as_secs_f64();
    println!(
        "delta reports, closed loop, {IN_FLIGHT} in flight: {peak:.0}/s (ratio to raw store {:.2}), p50 {}, p99 {}",
        peak / raw_rate,
        ms(pct(&mut lat, 0.50)),
        ms(pct(&mut lat, 0.99))
    );
    let target = peak * 0.7;
    let mut agents = agents;
    let rounds = ((target * secs.as_secs_f64()) as usize).div_ceil(agents_n) + 1;
    prepare_all(&mut agents, rounds, false);
    // A steady state, not the recovery from saturation: the server first finishes what the
    // closed loop left behind (drift signals, sled's log writes) while nothing is offered.
    tokio::time::sleep(SETTLE).await;
    let (n, took, mut lat, _agents) = drive(agents, IN_FLIGHT, secs, Some(target)).await?;
    println!(
        "delta reports at 70 % of peak ({target:.0}/s offered, open loop): {:.0}/s, p50 {}, p99 {}",
        n as f64 / took.as_secs_f64(),
        ms(pct(&mut lat, 0.50)),
        ms(pct(&mut lat, 0.99))
    );
    drop(m);

    let (rss, cpu) = real_agent(root.path()).await?;
    let first = cpu.first().copied().unwrap_or(0);
    let rest: Vec<u64> = cpu.iter().skip(1).copied().collect();
    let avg = if rest.is_empty() {
        0.0
    } else {
        rest.iter().sum::<u64>() as f64 / rest.len() as f64
    };
    println!(
        "real muster-agent (os, packages, 2 SMART replays, external facts): peak RSS {:.1} MiB; CPU per cycle: first {first} ms, then {avg:.0} ms on average over {} cycles",
        rss as f64 / 1024.0,
        rest.len()
    );
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run())
}
