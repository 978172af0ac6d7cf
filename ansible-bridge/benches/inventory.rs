//! Benchmark of the bridge at fleet scale, with real parts: a real `musterd` holding 10,000
//! devices with 30 labels each, the real `muster-inventory`, and real `ansible-inventory`.
//!
//! Measures (1) `muster-inventory --list > /dev/null`: wall time and peak RSS (the kernel's
//! `ru_maxrss` of the waited-for child), without and with the export cache; (2)
//! `ansible-inventory --list` through the bridge against the same inventory served as a static
//! JSON file (by `cat`, so both go through Ansible's script plugin), alternating, same run.
//!
//! Run: `cargo build --release --bins && cargo bench -p muster-ansible --bench inventory`
//! (ansible-core from tests/run-all.sh's venv, target/test-peers). Budgets: list ≤ 1 s,
//! RSS ≤ 200 MB, bridge/static ratio ≤ 1.2; a miss makes the bench exit non-zero.
#![allow(clippy::disallowed_methods)] // a benchmark measures real time
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use muster::pb::{self, resource::Resource as R};
use muster_tests::{Options, TestServer, bin};

const HOSTS: usize = 10_000;
const LABELS: usize = 30;
const ROUNDS: usize = 3;

fn device(i: usize) -> pb::Resource {
    let labels = (0..LABELS)
        .map(|j| (format!("k{j:02}"), format!("v{}", (i / (j + 1)) % 4)))
        .collect();
    pb::Resource {
        resource: Some(R::Device(pb::Device {
            meta: Some(pb::ObjectMeta {
                name: format!("host-{i:05}"),
                labels,
                ..Default::default()
            }),
            kind: pb::DeviceKind::Server as i32,
            serial: format!("SN{i:08}"),
            role: ["web", "db", "cache", "batch"][i % 4].into(),
            vendor: "Acme".into(),
            model: "R640".into(),
            management_address: format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
            ssh: Some(pb::SshEndpoint {
                host: format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
                port: 22,
                user: "ops".into(),
                ..Default::default()
            }),
            ..Default::default()
        })),
    }
}

async fn load(s: &TestServer) {
    let client = s.inventory().await.unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..32 {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..HOSTS).step_by(32) {
                c.create(pb::CreateRequest {
                    resource: Some(device(i)),
                    context: None,
                })
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    eprintln!(
        "loaded {HOSTS} devices × {LABELS} labels in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Runs a command with stdout to `out`; returns wall time.
fn timed(cmd: &mut Command) -> Duration {
    let t = Instant::now();
    let st = cmd.status().unwrap();
    assert!(st.success(), "{cmd:?} failed: {st}");
    t.elapsed()
}

fn children_maxrss_kib() -> i64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .map(|u| u.max_rss())
        .unwrap_or(-1)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ansible_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-peers/bin");
    assert!(
        p.join("ansible-inventory").exists(),
        "ansible-core missing: run tests/run-all.sh once (it installs it into target/test-peers)"
    );
    p
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = TestServer::start_with(Options::default()).unwrap();
    rt.block_on(load(&s));
    let inv = bin("muster-inventory");
    let work = tempfile::tempdir().unwrap();
    let list = |cache: Option<&Path>| {
        let mut c = Command::new(&inv);
        c.arg("--list")
            .env("MUSTER_SERVER", s.url())
            .env("MUSTER_TOKEN", &s.token)
            .env_remove("MUSTER_INVENTORY_CACHE_DIR")
            .stdout(Stdio::null());
        if let Some(d) = cache {
            c.arg("--cache-dir").arg(d);
        }
        c
    };

    // (1) muster-inventory alone. RSS first: ru_maxrss covers every child waited for so far.
    let mut walls = Vec::new();
    for _ in 0..ROUNDS {
        walls.push(timed(&mut list(None)));
    }
    let rss_mib = children_maxrss_kib() as f64 / 1024.0;
    let wall = median(walls.clone());
    let cache_dir = work.path().join("cache");
    timed(&mut list(Some(&cache_dir)));
    let cached = median(
        (0..ROUNDS)
            .map(|_| timed(&mut list(Some(&cache_dir))))
            .collect(),
    );
    let out = Command::new(&inv)
        .arg("--list")
        .env("MUSTER_SERVER", s.url())
        .env("MUSTER_TOKEN", &s.token)
        .output()
        .unwrap();
    assert!(out.status.success());
    let json = work.path().join("static.json");
    std::fs::write(&json, &out.stdout).unwrap();
    let hostvars = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["_meta"]
        ["hostvars"]["host-00001"]
        .as_object()
        .map_or(0, |m| m.len());
    println!(
        "muster-inventory --list, {HOSTS} hosts ({} bytes of JSON, {hostvars} hostvars + {LABELS} labels per host): median {:.3} s over {ROUNDS} (runs: {:?}); with cache hit {:.3} s; peak RSS {:.1} MiB",
        out.stdout.len(),
        wall.as_secs_f64(),
        walls
            .iter()
            .map(|d| format!("{:.3}", d.as_secs_f64()))
            .collect::<Vec<_>>(),
        cached.as_secs_f64(),
        rss_mib
    );

    // (2) ansible-inventory: bridge vs static JSON, alternating.
    let static_script = work.path().join("static-inventory");
    std::fs::write(
        &static_script,
        format!(
            "#!/bin/sh\n# The same inventory as a static JSON file.\nexec cat {}\n",
            json.display()
        ),
    )
    .unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&static_script)
        .status()
        .unwrap();
    let ansible = ansible_bin();
    let ai = |inventory: &Path| {
        let mut c = Command::new(ansible.join("ansible-inventory"));
        c.args(["--list", "-i"])
            .arg(inventory)
            .current_dir(work.path())
            .env("HOME", work.path())
            .env("ANSIBLE_INVENTORY_UNPARSED_FAILED", "true")
            .env("MUSTER_SERVER", s.url())
            .env("MUSTER_TOKEN", &s.token)
            .stdout(Stdio::null());
        c
    };
    let (mut bridge, mut stat) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        stat.push(timed(&mut ai(&static_script)));
        bridge.push(timed(&mut ai(&inv)));
    }
    let (b, st) = (median(bridge), median(stat));
    let ratio = b.as_secs_f64() / st.as_secs_f64();
    println!(
        "ansible-inventory --list: through the bridge {:.2} s, static JSON {:.2} s (medians of {ROUNDS}); ratio {ratio:.3}",
        b.as_secs_f64(),
        st.as_secs_f64()
    );
    let mut ok = true;
    for (what, good) in [
        ("list ≤ 1 s", wall <= Duration::from_secs(1)),
        ("RSS ≤ 200 MB", rss_mib * 1.048_576 <= 200.0),
        ("ratio ≤ 1.2", ratio <= 1.2),
    ] {
        println!("{what}: {}", if good { "ok" } else { "MISSED" });
        ok &= good;
    }
    if !ok {
        std::process::exit(1);
    }
}
