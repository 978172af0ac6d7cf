//! Acknowledged writes survive `kill -9`: concurrent writers record what the server
//! acknowledged, the server is killed at a random moment, restarted, and every acknowledged
//! write must be there.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use muster::pb::{self, ResourceKind, resource::Resource as R};
use muster_tests::fixtures::device;
use muster_tests::{TestServer, snapshot};
use rand::Rng;

const CYCLES: usize = 20;
const WRITERS: usize = 16;

#[derive(Default)]
struct Acked {
    created: BTreeSet<String>,
    /// Highest acknowledged `seq` label per counter device.
    counters: BTreeMap<String, u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill9() {
    let mut s = TestServer::start().unwrap();
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut rng = rand::rng();
    for cycle in 0..CYCLES {
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let mut c = s.inventory().await.unwrap();
            let acked = Arc::clone(&acked);
            tasks.push(tokio::spawn(async move {
                let counter = format!("counter-{w}");
                for i in 0u64.. {
                    // Alternate creates of new objects with updates of one object per writer.
                    let (r, name) = if i % 2 == 0 {
                        let name = format!("c{cycle}-w{w}-{i}");
                        (device(&name, &[("cycle", &cycle.to_string())]), name)
                    } else {
                        let seq = (cycle as u64) * 1_000_000 + i;
                        (
                            device(&counter, &[("seq", &seq.to_string())]),
                            counter.clone(),
                        )
                    };
                    let res = c
                        .apply(pb::ApplyRequest {
                            resource: Some(r),
                            context: None,
                            dry_run: false,
                        })
                        .await;
                    match res {
                        Ok(_) => {
                            let mut a = acked.lock().unwrap();
                            if i % 2 == 0 {
                                a.created.insert(name);
                            } else {
                                let seq = (cycle as u64) * 1_000_000 + i;
                                let e = a.counters.entry(name).or_default();
                                *e = (*e).max(seq);
                            }
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
        let delay = rng.random_range(20..250);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        s.kill9();
        for t in tasks {
            t.await.unwrap();
        }
        s.spawn()
            .unwrap_or_else(|e| panic!("cycle {cycle}: store did not reopen: {e}"));

        let mut c = s.inventory().await.unwrap();
        let all = snapshot(&mut c).await.unwrap();
        let mut present = BTreeSet::new();
        let mut seqs = BTreeMap::new();
        for r in &all {
            if let Some(R::Device(d)) = &r.resource {
                let m = d.meta.as_ref().unwrap();
                present.insert(m.name.clone());
                if let Some(seq) = m.labels.get("seq") {
                    seqs.insert(m.name.clone(), seq.parse::<u64>().unwrap());
                }
            }
        }
        let rev = c
            .list(pb::ListRequest {
                kind: ResourceKind::Device as i32,
                page_size: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .revision;
        let a = acked.lock().unwrap();
        let lost: Vec<&String> = a.created.difference(&present).collect();
        assert!(
            lost.is_empty(),
            "cycle {cycle}: acknowledged creates lost: {lost:?}"
        );
        for (name, seq) in &a.counters {
            let stored = seqs.get(name).copied().unwrap_or(0);
            assert!(
                stored >= *seq,
                "cycle {cycle}: {name} acknowledged seq {seq}, stored {stored}"
            );
        }
        // Every acknowledged write took a revision, so the store's revision cannot be lower.
        assert!(rev as usize >= a.created.len(), "revision went backwards");
    }
    let a = acked.lock().unwrap();
    assert!(
        a.created.len() > CYCLES * 10,
        "too few writes acknowledged to prove anything: {}",
        a.created.len()
    );
}

/// Bodies over a quarter of sled's segment are written out of line ("blobs"); they must be
/// durable and readable after `kill -9` like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_survive_kill9() {
    let mut s = TestServer::start().unwrap();
    let mut c = s.inventory().await.unwrap();
    let mut sent = Vec::new();
    for i in 0..3 {
        let mut d = device(&format!("big-{i}"), &[]);
        if let Some(R::Device(x)) = d.resource.as_mut() {
            let notes = format!("{i}").repeat(200 * 1024);
            x.meta
                .as_mut()
                .unwrap()
                .annotations
                .insert("notes".into(), notes);
        }
        c.create(pb::CreateRequest {
            resource: Some(d.clone()),
            context: None,
        })
        .await
        .unwrap();
        sent.push(d);
    }
    drop(c);
    s.restart_after_kill9().unwrap();
    let mut c = s.inventory().await.unwrap();
    for (i, d) in sent.iter().enumerate() {
        let got = c
            .get(pb::GetRequest {
                kind: ResourceKind::Device as i32,
                name: format!("big-{i}"),
            })
            .await
            .unwrap()
            .into_inner();
        let (Some(R::Device(a)), Some(R::Device(b))) = (&got.resource, &d.resource) else {
            panic!()
        };
        assert_eq!(
            a.meta.as_ref().unwrap().annotations,
            b.meta.as_ref().unwrap().annotations
        );
    }
    assert!(
        s.data_dir
            .join("blobs")
            .read_dir()
            .unwrap()
            .next()
            .is_some(),
        "no blob was written: the test did not exercise the blob path"
    );
}
