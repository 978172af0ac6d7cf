//! Foundation benchmarks (issue 2), each figure printed beside its baseline from the same run:
//!
//! 1. durable creates/s, 64 concurrent gRPC clients -> musterd, vs raw sled group-commit inserts
//!    of the same size in one process (and musterd without fdatasync, to show its cost);
//! 2. Get throughput, 64 clients, vs a bare tonic unary server returning the same payload;
//! 3. Get p50/p99 at 10k devices (one client, and under the 64-client load);
//! 4. List by selector returning 100 of 100k devices, p50/p99;
//! 5. musterd RSS with 100k devices (after a full scan);
//! 6. restart-to-serving time with 100k devices (SIGTERM and kill -9).
//!
//! Run: `cargo bench -p muster-server --bench foundation` (release build; ~3 minutes, ~2 GB of
//! temporary disk). `BENCH_SCALE=0.1` shrinks every count for a quick look; `BENCH_ONLY=creates`
//! stops after the create figures (for profiling the write path).
#![allow(clippy::disallowed_methods)] // a benchmark measures real time

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use muster::pb::inventory_service_client::InventoryServiceClient;
use muster::pb::inventory_service_server::{InventoryService, InventoryServiceServer};
use muster::pb::{self, ResourceKind, resource::Resource as R};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

type Client = InventoryServiceClient<InterceptedService<Channel, Auth>>;
mod common;

use common::{BoxError, ms, pct, scale, spawn_musterd};

const CLIENTS: usize = 64;
const PAYLOAD: usize = 3600;

/// The clients' shared bearer interceptor.
type Auth = muster::client::Bearer;

/// A ~4 KB device, like a real one with a few annotations.
fn device(i: usize, role: &str) -> pb::Resource {
    let mut meta = pb::ObjectMeta {
        name: format!("dev-{i:06}"),
        ..Default::default()
    };
    meta.labels.insert("role".into(), role.into());
    meta.labels.insert("rack".into(), format!("r{}", i % 500));
    meta.annotations.insert("notes".into(), "x".repeat(PAYLOAD));
    pb::Resource {
        resource: Some(R::Device(pb::Device {
            meta: Some(meta),
            kind: pb::DeviceKind::Server as i32,
            serial: format!("SN{i:08}"),
            vendor: "Dell".into(),
            model: "R650".into(),
            role: role.into(),
            management_address: format!("10.{}.{}.{}", i / 65536 % 256, i / 256 % 256, i % 256),
            ..Default::default()
        })),
    }
}

// ---------------------------------------------------------------- musterd process

struct Musterd {
    child: Child,
    addr: String,
    token: String,
    data_dir: PathBuf,
    extra: Vec<String>,
}

impl Musterd {
    fn start(data_dir: &Path, extra: &[&str]) -> Result<Self, BoxError> {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, addr) = spawn_musterd(data_dir, &extra)?;
        let token = std::fs::read_to_string(data_dir.join("admin.token"))?
            .trim()
            .to_string();
        Ok(Self {
            child,
            addr,
            token,
            data_dir: data_dir.to_path_buf(),
            extra,
        })
    }

    async fn client(&self) -> Result<Client, BoxError> {
        let ch = Channel::from_shared(format!("http://{}", self.addr))?
            .connect()
            .await?;
        let auth = Auth::new(Some(&self.token))?;
        Ok(InventoryServiceClient::with_interceptor(ch, auth))
    }

    fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    fn stop(&mut self, hard: bool) -> Result<(), BoxError> {
        let sig = if hard { "-KILL" } else { "-TERM" };
        Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()?;
        self.child.wait()?;
        Ok(())
    }

    /// Restarts and returns the time from spawn until a Get is answered.
    async fn restart_timed(&mut self, hard: bool, probe: &str) -> Result<Duration, BoxError> {
        self.stop(hard)?;
        let started = Instant::now();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let (child, addr) = spawn_musterd(
            &self.data_dir,
            &extra.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )?;
        self.child = child;
        self.addr = addr;
        let mut c = self.client().await?;
        c.get(pb::GetRequest {
            kind: ResourceKind::Device as i32,
            name: probe.into(),
        })
        .await?;
        Ok(started.elapsed())
    }
}

impl Drop for Musterd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- bare tonic baseline

/// A tonic server that answers Get with a fixed resource: the floor for musterd's Get.
struct Bare(pb::Resource);

type EventStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl InventoryService for Bare {
    async fn get(&self, _: Request<pb::GetRequest>) -> Result<Response<pb::Resource>, Status> {
        Ok(Response::new(self.0.clone()))
    }
    async fn create(
        &self,
        _: Request<pb::CreateRequest>,
    ) -> Result<Response<pb::Resource>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn list(
        &self,
        _: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn update(
        &self,
        _: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::Resource>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn delete(
        &self,
        _: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    async fn apply(
        &self,
        _: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
    type WatchStream = EventStream;
    async fn watch(&self, _: Request<pb::WatchRequest>) -> Result<Response<EventStream>, Status> {
        Err(Status::unimplemented("bare"))
    }
}

/// Child-process mode: serve the bare baseline and print its address.
fn bare_server_main() -> Result<(), BoxError> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("bare listening grpc={}", l.local_addr()?);
        use std::io::Write;
        std::io::stdout().flush()?;
        let incoming = tonic::transport::server::TcpIncoming::from(l).with_nodelay(Some(true));
        tonic::transport::Server::builder()
            .add_service(InventoryServiceServer::new(Bare(device(1, "web"))))
            .serve_with_incoming(incoming)
            .await?;
        Ok(())
    })
}

// ---------------------------------------------------------------- raw sled group commit

/// Raw sled with the same group commit musterd uses (one flusher thread: flush + fdatasync,
/// writers wait for a flush that started after their insert): the ceiling for durable creates.
fn raw_sled_group_commit(
    dir: &Path,
    writers: usize,
    total: usize,
) -> Result<(f64, Duration), BoxError> {
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(128 << 20)
        .flush_every_ms(None)
        .open()?;
    let data = std::fs::File::open(dir.join("db"))?;
    struct Shared {
        requested: Mutex<u64>,
        wake: Condvar,
        flushed: Mutex<u64>,
        done: Condvar,
    }
    let shared = Arc::new(Shared {
        requested: Mutex::new(0),
        wake: Condvar::new(),
        flushed: Mutex::new(0),
        done: Condvar::new(),
    });
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flusher = {
        let (db, shared, stop) = (db.clone(), Arc::clone(&shared), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut seen = 0;
            loop {
                let target = {
                    let mut r = shared.requested.lock().unwrap_or_else(|p| p.into_inner());
                    while *r == seen && !stop.load(Ordering::SeqCst) {
                        r = shared.wake.wait(r).unwrap_or_else(|p| p.into_inner());
                    }
                    *r
                };
                if stop.load(Ordering::SeqCst) && target == seen {
                    return;
                }
                let _ = db.flush();
                let _ = data.sync_data();
                seen = target;
                *shared.flushed.lock().unwrap_or_else(|p| p.into_inner()) = target;
                shared.done.notify_all();
            }
        })
    };
    let next = Arc::new(AtomicU64::new(0));
    let seq = Arc::new(AtomicU64::new(0));
    let value = vec![7u8; 4096];
    let started = Instant::now();
    let lat = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let handles: Vec<_> = (0..writers)
        .map(|_| {
            let (db, shared, next, seq, value, lat) = (
                db.clone(),
                Arc::clone(&shared),
                Arc::clone(&next),
                Arc::clone(&seq),
                value.clone(),
                Arc::clone(&lat),
            );
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst) as usize;
                    if i >= total {
                        break;
                    }
                    let t = Instant::now();
                    let _ = db.insert(format!("k{i:08}"), value.as_slice());
                    let ticket = {
                        let mut r = shared.requested.lock().unwrap_or_else(|p| p.into_inner());
                        *r = seq.fetch_add(1, Ordering::SeqCst) + 1;
                        shared.wake.notify_one();
                        *r
                    };
                    let mut f = shared.flushed.lock().unwrap_or_else(|p| p.into_inner());
                    while *f < ticket {
                        f = shared.done.wait(f).unwrap_or_else(|p| p.into_inner());
                    }
                    mine.push(t.elapsed());
                }
                lat.lock().unwrap_or_else(|p| p.into_inner()).extend(mine);
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    shared.wake.notify_all();
    let _ = flusher.join();
    let mut lat = std::mem::take(&mut *lat.lock().unwrap_or_else(|p| p.into_inner()));
    Ok((total as f64 / elapsed.as_secs_f64(), pct(&mut lat, 0.99)))
}

// ---------------------------------------------------------------- load generators

/// Creates devices `range` with `CLIENTS` concurrent clients; returns creates/s and latencies.
async fn create_devices(
    server: &Musterd,
    range: std::ops::Range<usize>,
    role_of: fn(usize) -> &'static str,
) -> Result<(f64, Vec<Duration>), BoxError> {
    let next = Arc::new(AtomicU64::new(range.start as u64));
    let end = range.end as u64;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let mut c = server.client().await?;
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= end {
                    return Ok::<_, Status>(lat);
                }
                let r = device(i as usize, role_of(i as usize));
                let t = Instant::now();
                c.create(pb::CreateRequest {
                    resource: Some(r),
                    context: None,
                })
                .await?;
                lat.push(t.elapsed());
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let rate = (range.end - range.start) as f64 / started.elapsed().as_secs_f64();
    Ok((rate, all))
}

/// Gets random devices among `n` with `CLIENTS` clients for `dur`; returns req/s and latencies.
async fn get_load(
    clients: Vec<Client>,
    n: usize,
    dur: Duration,
) -> Result<(f64, Vec<Duration>), BoxError> {
    let deadline = Instant::now() + dur;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (k, mut c) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = k * 7919;
            while Instant::now() < deadline {
                i = (i + 104_729) % n;
                let t = Instant::now();
                c.get(pb::GetRequest {
                    kind: ResourceKind::Device as i32,
                    name: format!("dev-{i:06}"),
                })
                .await?;
                lat.push(t.elapsed());
            }
            Ok::<_, Status>(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((all.len() as f64 / started.elapsed().as_secs_f64(), all))
}

async fn run() -> Result<(), BoxError> {
    let tmp = tempfile::Builder::new()
        .prefix("muster-bench")
        .tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/tmp".into()))?;
    let n_small = scale(10_000);
    let n_large = scale(100_000);
    let n_raw = scale(40_000);
    let get_secs = Duration::from_secs(5);
    println!(
        "muster foundation benchmarks ({} cores, {CLIENTS} clients, ~4 KB records)",
        std::thread::available_parallelism()?.get()
    );

    // 1. Durable creates vs raw sled group commit.
    let (raw_rate, raw_p99) = raw_sled_group_commit(&tmp.path().join("raw"), CLIENTS, n_raw)?;
    {
        let nofsync = Musterd::start(&tmp.path().join("nofsync"), &["--no-fdatasync"])?;
        let (rate, mut lat) = create_devices(&nofsync, 0..n_small, |_| "web").await?;
        println!(
            "creates without fdatasync: {rate:>9.0}/s  p99 {}",
            ms(pct(&mut lat, 0.99))
        );
    }
    let mut server = Musterd::start(&tmp.path().join("musterd"), &[])?;
    let (create_rate, mut create_lat) = create_devices(&server, 0..n_small, |i| {
        if i % 1000 == 0 { "db" } else { "web" }
    })
    .await?;
    println!(
        "raw sled group commit:     {raw_rate:>9.0}/s  p99 {}",
        ms(raw_p99)
    );
    println!(
        "musterd durable creates:   {create_rate:>9.0}/s  p99 {}  ratio to raw sled {:.2}  (target >= 8000/s)",
        ms(pct(&mut create_lat, 0.99)),
        create_rate / raw_rate
    );
    if std::env::var("BENCH_ONLY").as_deref() == Ok("creates") {
        return Ok(());
    }

    // 2./3. Get throughput vs bare tonic, and latency at 10k devices.
    let mut bare = Command::new(std::env::current_exe()?)
        .arg("--bare-server")
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(bare.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    let bare_addr = line
        .split_whitespace()
        .find_map(|p| p.strip_prefix("grpc="))
        .ok_or("bare did not start")?
        .to_string();
    let mut bare_clients = Vec::new();
    for _ in 0..CLIENTS {
        let ch = Channel::from_shared(format!("http://{bare_addr}"))?
            .connect()
            .await?;
        bare_clients.push(InventoryServiceClient::with_interceptor(
            ch,
            Auth::new(Some(&server.token))?,
        ));
    }
    let (bare_rate, mut bare_lat) = get_load(bare_clients, n_small, get_secs).await?;
    let _ = bare.kill();
    let _ = bare.wait();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(server.client().await?);
    }
    let (get_rate, mut get_lat) = get_load(clients, n_small, get_secs).await?;
    println!(
        "bare tonic unary Get:      {bare_rate:>9.0}/s  p99 {}",
        ms(pct(&mut bare_lat, 0.99))
    );
    println!(
        "musterd Get (64 clients):  {get_rate:>9.0}/s  p99 {}  ratio to bare {:.2}  (target >= 0.6)",
        ms(pct(&mut get_lat, 0.99)),
        get_rate / bare_rate
    );
    let (_, mut one_lat) = get_load(
        vec![server.client().await?],
        n_small,
        Duration::from_secs(3),
    )
    .await?;
    println!(
        "musterd Get at {n_small} devices, one client: p50 {}  p99 {}  (target p99 <= 2 ms)",
        ms(pct(&mut one_lat, 0.5)),
        ms(pct(&mut one_lat, 0.99))
    );

    // 4. Grow to 100k devices; 100 of them are role=db.
    let (rate, _) = create_devices(&server, n_small..n_large, |i| {
        if i % 1000 == 0 { "db" } else { "web" }
    })
    .await?;
    println!("grew to {n_large} devices at {rate:.0} creates/s");
    let mut c = server.client().await?;
    let mut list_lat = Vec::new();
    let mut returned = 0;
    for _ in 0..300 {
        let t = Instant::now();
        let r = c
            .list(pb::ListRequest {
                kind: ResourceKind::Device as i32,
                selector: "role=db".into(),
                page_size: 1000,
                ..Default::default()
            })
            .await?
            .into_inner();
        list_lat.push(t.elapsed());
        returned = r.resources.len();
    }
    println!(
        "List role=db -> {returned} of {n_large}: p50 {}  p99 {}  (target p99 <= 10 ms)",
        ms(pct(&mut list_lat, 0.5)),
        ms(pct(&mut list_lat, 0.99))
    );

    // 5. RSS after a full scan of every device.
    let mut token = String::new();
    let mut scanned = 0;
    loop {
        let r = c
            .list(pb::ListRequest {
                kind: ResourceKind::Device as i32,
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        scanned += r.resources.len();
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    let (rss, hwm) = server.rss_kib();
    println!(
        "musterd RSS with {scanned} devices after a full scan: {} MiB (peak {} MiB)  (target <= 512 MiB)",
        rss / 1024,
        hwm / 1024
    );
    drop(c);

    // 6. Restart to serving.
    let probe = format!("dev-{:06}", n_large - 1);
    let soft = server.restart_timed(false, &probe).await?;
    let hard = server.restart_timed(true, &probe).await?;
    println!(
        "restart to serving with {n_large} devices: after SIGTERM {}, after kill -9 {}  (target <= 3 s)",
        ms(soft),
        ms(hard)
    );
    let size: u64 = std::fs::read_dir(tmp.path().join("musterd"))?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!("data dir size: {} MiB", size / (1024 * 1024));
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--bare-server") {
        return bare_server_main();
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing special: only run
    // the (slow) benchmark when asked to bench.
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "foundation benchmark: run with `cargo bench -p muster-server --bench foundation`"
        );
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run())
}
