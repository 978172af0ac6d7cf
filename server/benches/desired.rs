//! Desired-state benchmarks (issue 4), in process over the real sled store:
//!
//! - drift recompute after a profile change that selects 50k of 100k devices with observed
//!   state (target <= 1 s), split into the engine's compute and the drift writes;
//! - a plan of a change over 10k devices (target <= 500 ms);
//! - the drift summary over 100k devices (target <= 200 ms).
//!
//! Run: `cargo bench -p muster-server --bench desired` (BENCH_SCALE=0.1 for a quick run).
#![allow(clippy::disallowed_methods)] // a benchmark measures real time

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{BoxError, ms, pct, scale};
use muster::pb::{self, resource::Resource as R};
use muster::selector::Selector;
use muster_server::drift::{self, DriftEngine, Notifier, Planner};
use muster_server::inventory::{ChangeContext, Inventory};
use muster_server::model::secrets::SecretBox;
use muster_server::model::{Principal, Role};
use muster_server::observed;
use muster_server::store::{AuxWrite, SledStore, Store, StoreOptions};
use prost::Message;

/// Distinct package lists in the fleet (hosts built from a few images).
const IMAGES: usize = 50;
/// Packages per host.
const PACKAGES: usize = 300;

fn device(i: usize) -> pb::Resource {
    let tier = if i.is_multiple_of(2) { "a" } else { "b" };
    let group = format!("g{}", i % 10);
    pb::Resource {
        resource: Some(R::Device(pb::Device {
            meta: Some(pb::ObjectMeta {
                name: format!("host-{i:06}"),
                labels: [
                    ("tier".to_string(), tier.to_string()),
                    ("group".to_string(), group),
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

/// The facts sections of image `img`: os and packages (openssl differs between images).
fn sections(img: usize) -> Vec<(muster::facts::Section, Vec<u8>)> {
    let mut items: Vec<pb::InstalledPackage> = (0..PACKAGES)
        .map(|p| pb::InstalledPackage {
            name: format!("pkg-{p:03}"),
            version: format!("1.{p}.0-1"),
            arch: "amd64".into(),
        })
        .collect();
    items.push(pb::InstalledPackage {
        name: "openssl".into(),
        version: format!("3.0.{img}-1~deb12u1"),
        arch: "amd64".into(),
    });
    let facts = pb::Facts {
        os: Some(pb::OsFacts {
            hostname: "h".into(),
            release: "Debian GNU/Linux 12 (bookworm)".into(),
            kernel: "6.1.0-13-amd64".into(),
            package_format: "deb".into(),
            ..Default::default()
        }),
        packages: Some(pb::PackageList { items }),
        ..Default::default()
    };
    muster::facts::split(&facts)
}

fn profile(name: &str, selector: &str, openssl_min: &str) -> pb::Resource {
    pb::Resource {
        resource: Some(R::Profile(pb::Profile {
            meta: Some(pb::ObjectMeta {
                name: name.into(),
                ..Default::default()
            }),
            selector: selector.into(),
            priority: 10,
            spec: Some(pb::DesiredState {
                packages: vec![pb::PackageRequirement {
                    name: "openssl".into(),
                    version: openssl_min.into(),
                    r#match: pb::VersionMatch::Minimum as i32,
                }],
                kernel: ">=6.1.0-10".into(),
                ..Default::default()
            }),
            description: String::new(),
        })),
    }
}

fn ctx() -> ChangeContext {
    ChangeContext {
        reason: "bench".into(),
        ticket: String::new(),
        origin: "bench".into(),
    }
}

async fn settle(engine: &DriftEngine) {
    assert!(
        engine.caught_up(Duration::from_secs(600)).await,
        "engine did not catch up"
    );
}

async fn run() -> Result<(), BoxError> {
    let n = scale(100_000);
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(SledStore::open(
        &dir.path().join("data"),
        &StoreOptions::default(),
    )?);
    let secrets = SecretBox::from_key(rand::random());
    let (notifier, mailbox) = drift::mailbox();
    let inventory = Arc::new(Inventory::new(
        Arc::clone(&store),
        secrets,
        muster::clock::system(),
        notifier,
    ));
    let engine = DriftEngine::start(Arc::clone(&inventory), mailbox);
    let planner = Planner::new(Arc::clone(&inventory), engine.clone());
    let who = Principal::new("bench", Role::Admin);

    // The fleet, in change sets of 5,000.
    let t = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(5_000) {
        let set: Vec<pb::Resource> = chunk.iter().map(|&i| device(i)).collect();
        planner.apply(&who, set, &ctx()).await?;
    }
    println!("setup: {n} devices in {:.1} s", t.elapsed().as_secs_f64());
    // Observed state for every device, written as agent reports store it.
    let t = Instant::now();
    let images: Vec<Vec<(muster::facts::Section, Vec<u8>)>> = (0..IMAGES).map(sections).collect();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("host-{i:06}");
        ids.push(store.id_of(3, &name).ok_or("device missing")?);
    }
    for chunk in ids.chunks(500).enumerate() {
        let (c, chunk) = chunk;
        let mut puts = Vec::new();
        for (j, id) in chunk.iter().enumerate() {
            let img = (c * 500 + j) % IMAGES;
            for (s, bytes) in &images[img] {
                puts.push((observed::section_key(id, *s), Some(bytes.clone())));
            }
        }
        store
            .commit_aux(AuxWrite {
                guards: Vec::new(),
                puts,
                mutation: None,
            })
            .applied()
            .await?;
    }
    for id in &ids {
        inventory.drift().observed(id, Notifier::ALL);
    }
    settle(&engine).await;
    println!(
        "setup: observed state for {n} devices ({IMAGES} package lists of {} packages) in {:.1} s",
        PACKAGES + 1,
        t.elapsed().as_secs_f64()
    );

    // 1. A profile change selecting half the fleet; every other image is too old.
    let mut computes = Vec::new();
    let mut totals = Vec::new();
    let mut drifting = 0;
    for (round, min) in ["3.0.25-1", "3.0.0-1", "3.0.25-1"].iter().enumerate() {
        let t = Instant::now();
        let resp = planner
            .apply(&who, vec![profile("tier-a", "tier=a", min)], &ctx())
            .await?;
        settle(&engine).await;
        let total = t.elapsed();
        let pass = engine.last_pass();
        let summary = engine
            .drift(Selector::default(), String::new(), true)
            .await?;
        drifting = summary.drifting;
        println!(
            "profile change {round}: revision {} -> {} devices recomputed in {} (compute), {} drift writes in {}, apply to caught up {}; {} drifting",
            resp.revision,
            pass.devices,
            ms(pass.compute),
            pass.writes,
            ms(pass.write),
            ms(total),
            summary.drifting
        );
        computes.push(pass.compute);
        totals.push(total);
    }
    // 2. Plans of a change over 10k devices (one group in ten).
    let mut plans = Vec::new();
    let mut planned = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let p = planner
            .plan(
                &who,
                vec![profile("group-0", "group=g0", "3.0.40-1")],
                false,
            )
            .await?;
        plans.push(t.elapsed());
        planned = p.devices_changed;
    }
    // 3. Drift summaries over the whole fleet.
    let mut summaries = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let s = engine
            .drift(Selector::default(), String::new(), true)
            .await?;
        summaries.push(t.elapsed());
        assert_eq!(s.devices as usize, n);
    }
    let mut full = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let s = engine
            .drift(Selector::default(), String::new(), false)
            .await?;
        full.push(t.elapsed());
        let _ = s.encode_to_vec().len();
    }
    println!();
    println!("RESULTS ({n} devices, {} in the profile's selector)", n / 2);
    println!(
        "drift recompute after a profile change: compute median {} (target <= 1 s); apply to drift written median {}; {drifting} devices drifting",
        ms(pct(&mut computes, 0.5)),
        ms(pct(&mut totals, 0.5))
    );
    println!(
        "plan over {planned} devices: median {} (target <= 500 ms)",
        ms(pct(&mut plans, 0.5))
    );
    println!(
        "drift summary over {n}: median {} (target <= 200 ms); with every device's items: {}",
        ms(pct(&mut summaries, 0.5)),
        ms(pct(&mut full, 0.5))
    );
    Ok(())
}

fn main() -> Result<(), BoxError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}
