//! The engine driven through its events over a real sled store, with a manual clock: the
//! drift items' causes and ages follow the clock, not the wall.

use std::sync::Arc;
use std::time::Duration;

use muster::clock::ManualClock;
use muster::pb::{self, resource::Resource as R};
use muster::selector::Selector;

use super::{DriftEngine, EngineStatus, Notifier, Planner, mailbox, memory_key};
use crate::inventory::{ChangeContext, Inventory};
use crate::model::secrets::SecretBox;
use crate::model::{ApiError, Principal, Role};
use crate::observed;
use crate::store::{AuxWrite, SledStore, Store, StoreOptions};

const T0: i64 = 1_700_000_000_000_000_000;
const HOUR: Duration = Duration::from_secs(3600);
const WAIT: Duration = Duration::from_secs(30);

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    clock: Arc<ManualClock>,
    inventory: Arc<Inventory>,
    engine: DriftEngine,
    planner: Planner,
}

fn ctx() -> ChangeContext {
    ChangeContext {
        reason: "test".into(),
        ticket: String::new(),
        origin: "test".into(),
    }
}

fn admin() -> Principal {
    Principal::new("test", Role::Admin)
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SledStore::open(&dir.path().join("data"), &StoreOptions::default()).unwrap());
    let clock = ManualClock::at_unix_nanos(T0);
    let (notifier, mailbox) = mailbox();
    let inventory = Arc::new(Inventory::new(
        Arc::clone(&store),
        SecretBox::from_key(rand::random()),
        clock.clone(),
        notifier,
    ));
    let engine = DriftEngine::start(Arc::clone(&inventory), mailbox);
    let planner = Planner::new(Arc::clone(&inventory), engine.clone());
    Fixture {
        _dir: dir,
        store,
        clock,
        inventory,
        engine,
        planner,
    }
}

fn profile(kernel: &str) -> pb::Resource {
    pb::Resource {
        resource: Some(R::Profile(pb::Profile {
            meta: Some(pb::ObjectMeta {
                name: "base".into(),
                ..Default::default()
            }),
            selector: "tier=a".into(),
            priority: 10,
            spec: Some(pb::DesiredState {
                kernel: kernel.into(),
                ..Default::default()
            }),
            description: String::new(),
        })),
    }
}

fn device() -> pb::Resource {
    pb::Resource {
        resource: Some(R::Device(pb::Device {
            meta: Some(pb::ObjectMeta {
                name: "web-1".into(),
                labels: [("tier".to_string(), "a".to_string())].into(),
                ..Default::default()
            }),
            kind: pb::DeviceKind::Server as i32,
            ..Default::default()
        })),
    }
}

impl Fixture {
    /// Stores facts reporting `kernel` as a report does, and tells the engine.
    async fn report(&self, id: &str, kernel: &str) {
        let facts = pb::Facts {
            os: Some(pb::OsFacts {
                hostname: "web-1".into(),
                kernel: kernel.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let puts = muster::facts::split(&facts)
            .into_iter()
            .map(|(n, b)| (observed::section_key(id, n), Some(b)))
            .collect();
        self.store
            .commit_aux(AuxWrite {
                guards: Vec::new(),
                puts,
                mutation: None,
            })
            .applied()
            .await
            .unwrap();
        self.inventory.drift().observed(id, 1 << 1);
    }

    async fn kernel_item(&self) -> Option<pb::DriftItem> {
        assert!(self.engine.caught_up(WAIT).await, "engine did not catch up");
        self.engine.item("web-1", "kernel").await.unwrap()
    }

    /// The kernel item once `done` holds: the engine's own write of the previous result can
    /// reach it through the event log after the report that superseded it (it then writes
    /// again), so a read right after catching up may briefly see the previous items.
    async fn kernel_item_until(
        &self,
        done: impl Fn(&Option<pb::DriftItem>) -> bool,
    ) -> Option<pb::DriftItem> {
        let mut item = None;
        for _ in 0..500 {
            item = self.kernel_item().await;
            if done(&item) {
                return item;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the kernel item never became what was expected; last {item:?}")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn causes_and_ages_follow_the_events_and_the_injected_clock() {
    let f = fixture();
    let who = admin();
    f.planner
        .apply(&who, vec![device(), profile("6.1.0-13-amd64")], &ctx())
        .await
        .unwrap();
    let id = f.store.id_of(3, "web-1").expect("device stored");
    // Never reported: nothing to compare yet.
    assert_eq!(f.kernel_item().await, None);

    // The first report differs: pending (there is no history yet), as of the clock's time.
    f.report(&id, "6.1.0-12-amd64").await;
    let first = f.kernel_item_until(Option::is_some).await.unwrap();
    assert_eq!(first.cause, "pending");
    assert_eq!(first.since.map(|t| t.seconds), Some(T0 / 1_000_000_000));

    // Converged an hour later: no drift.
    f.clock.advance(HOUR);
    f.report(&id, "6.1.0-13-amd64").await;
    f.kernel_item_until(Option::is_none).await;

    // Changed by hand while the desired value stayed: unexpected, dated now.
    f.clock.advance(HOUR);
    f.report(&id, "6.1.0-99-amd64").await;
    let by_hand = f.kernel_item_until(Option::is_some).await.unwrap();
    assert_eq!(by_hand.cause, "unexpected");
    assert_eq!(
        by_hand.since.map(|t| t.seconds),
        Some(T0 / 1_000_000_000 + 2 * 3600)
    );
    // The engine wrote it into the device body (Get, List and Watch see it).
    let body = f
        .inventory
        .get(pb::ResourceKind::Device as i32, "web-1")
        .await
        .unwrap();
    let Some(R::Device(d)) = body.resource else {
        panic!("not a device")
    };
    assert_eq!(d.status.unwrap().drift, vec![by_hand.clone()]);

    // Desired state changes (a profile write reaches the engine through the event log):
    // the difference is pending again, dated at the change.
    f.clock.advance(HOUR);
    f.planner
        .apply(&who, vec![profile("6.1.0-14-amd64")], &ctx())
        .await
        .unwrap();
    let moved = f
        .kernel_item_until(|i| i.as_ref().is_some_and(|i| i.desired != by_hand.desired))
        .await
        .unwrap();
    assert_eq!(moved.cause, "pending");
    assert_eq!(
        moved.since.map(|t| t.seconds),
        Some(T0 / 1_000_000_000 + 3 * 3600)
    );
    let summary = f
        .engine
        .drift(Selector::default(), String::new(), true)
        .await
        .unwrap();
    assert_eq!((summary.devices, summary.drifting), (1, 1));
    assert!(f.store.aux_get(&memory_key(&id)).unwrap().is_some());

    // Deleted: the engine forgets it; its records went with the delete's own batch.
    f.inventory
        .delete(
            &who,
            crate::inventory::DeleteInput {
                kind: pb::ResourceKind::Device,
                name: "web-1".into(),
                expected_revision: 0,
                context: ctx(),
            },
        )
        .await
        .unwrap();
    assert_eq!(f.kernel_item().await, None);
    let summary = f
        .engine
        .drift(Selector::default(), String::new(), true)
        .await
        .unwrap();
    assert_eq!(summary.devices, 0);
    assert!(f.store.aux_get(&memory_key(&id)).unwrap().is_none());
    assert!(observed::scan_device(&*f.store, &id).unwrap().is_empty());
    assert!(f.store.aux_get(&observed::meta_key(&id)).unwrap().is_none());

    // Shutdown: the task stops and questions are refused, not left waiting.
    f.engine.shutdown();
    let mut status = f.engine.status();
    tokio::time::timeout(WAIT, status.wait_for(|s| *s == EngineStatus::Stopped))
        .await
        .expect("engine stopped")
        .unwrap();
    let refused = f.engine.item("web-1", "kernel").await.unwrap_err();
    assert!(matches!(refused, ApiError::Unavailable(_)), "{refused:?}");
    assert!(!f.engine.caught_up(WAIT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_of_sections_drift_ignores_change_nothing() {
    let f = fixture();
    let who = admin();
    f.planner
        .apply(&who, vec![device(), profile("6.1.0-13-amd64")], &ctx())
        .await
        .unwrap();
    let id = f.store.id_of(3, "web-1").expect("device stored");
    f.report(&id, "6.1.0-12-amd64").await;
    let first = f.kernel_item().await.expect("kernel drifts");
    // Later signals for sensors only (section 5), and a full report with the same facts:
    // the item keeps its cause and age.
    f.clock.advance(HOUR);
    f.inventory.drift().observed(&id, 1 << 5);
    f.inventory.drift().observed(&id, Notifier::ALL);
    let again = f.kernel_item().await.expect("still drifts");
    assert_eq!(again, first);
}
