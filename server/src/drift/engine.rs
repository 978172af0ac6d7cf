//! The drift engine: one task that owns every device's drift and keeps it current,
//! incrementally.
//!
//! Its only input is a closed [`Event`]: observed sections changed (agent reports and
//! ingested facts, through a [`Notifier`]), desired state changed (the store's durable
//! revision moved: it reads the event log from where it was, as Watch does, and takes in each
//! profile and device change, forgetting deleted devices), a recompute after a lost write race,
//! a question, shutdown. Nobody else touches its state: readers ask through a [`DriftEngine`]
//! handle and get the answer on a oneshot, or read what it publishes (progress, status, the
//! last pass's figures). A pass runs on a blocking thread, the state moved there and back.
//!
//! Marked devices are recomputed from in-memory caches (compiled profiles; per device its
//! labels, spec and a view of the observed facts drift compares) and the result is written
//! only when it changed: the items into the device's `status.drift` (so Watch, List and the
//! audit trail see drift like any other change) and the per-field desired memory that decides
//! causes into an auxiliary record. A device's records are removed by its delete's own batch,
//! never here, so they go even when the engine is not running.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use muster::clock::SharedClock;
use muster::pb::{self, resource::Resource as R};
use muster::selector::Selector;
use tokio::sync::{mpsc, oneshot, watch};

use super::handle::{EngineStatus, PassStats, Progress};
use super::memory_key;
use super::query::{self, PlannedChange};
use super::state::{self, FOLLOWED_KEY, State, Write};
use crate::inventory::{ChangeContext, Inventory};
use crate::model::{ApiError, timestamp};
use crate::store::{AuxWrite, Mutation, Store};

/// How often the followed revision is persisted at most.
const PERSIST_EVERY: Duration = Duration::from_secs(1);
/// Principal of the engine's own writes.
pub const PRINCIPAL: &str = "system:drift";
/// Verb of the engine's own writes.
pub const VERB: &str = "drift";
/// Device writes in flight at once.
const WRITE_WINDOW: usize = 512;
/// Auxiliary puts per write.
const AUX_CHUNK: usize = 1000;

/// Everything the engine reacts to. Its loop matches every variant.
#[derive(Debug)]
pub enum Event {
    /// Sections of a device's observed facts changed (bit n: section n; `Notifier::ALL` when
    /// the whole observed state may have changed).
    Observed { device_id: String, sections: u32 },
    /// Desired state may have changed: the event log is durable up to `upto`.
    DesiredChanged { upto: u64 },
    /// Recompute a device without re-reading anything (its drift write lost a race).
    Recompute { device_id: String },
    /// A campaign's layer of a device's desired state was durably put (`Some`) or removed
    /// (`None`): the campaign reached the host, or rolled it back, aborted or completed.
    Overlay {
        device_id: String,
        campaign_id: String,
        overlay: Option<super::desired::Overlay>,
    },
    /// A question, answered on its reply channel after the pending events are taken in.
    Ask(Query),
    /// Stop after the current pass.
    Shutdown,
}

/// A question to the engine.
#[derive(Debug)]
pub enum Query {
    /// Drift of the devices `selector` chooses, fields starting with `field_prefix`.
    Drift {
        selector: Selector,
        field_prefix: String,
        summary_only: bool,
        reply: oneshot::Sender<Result<pb::DriftResponse, ApiError>>,
    },
    /// What a change of profiles and devices would do.
    Plan {
        change: Box<PlannedChange>,
        include_unchanged: bool,
        reply: oneshot::Sender<Result<pb::PlanResponse, ApiError>>,
    },
    /// One device's current item for one field.
    Item {
        device: String,
        field: String,
        reply: oneshot::Sender<Result<Option<pb::DriftItem>, ApiError>>,
    },
}

impl Query {
    /// Answers with an error (the engine cannot answer from its state).
    fn refuse(self, e: impl Fn() -> ApiError) {
        match self {
            Query::Drift { reply, .. } => drop(reply.send(Err(e()))),
            Query::Plan { reply, .. } => drop(reply.send(Err(e()))),
            Query::Item { reply, .. } => drop(reply.send(Err(e()))),
        }
    }

    /// Answers from the engine's state.
    fn answer(self, st: &mut State, store: &dyn Store, now: pbjson_types::Timestamp) {
        match self {
            Query::Drift {
                selector,
                field_prefix,
                summary_only,
                reply,
            } => drop(reply.send(Ok(query::drift(st, &selector, &field_prefix, summary_only)))),
            Query::Plan {
                change,
                include_unchanged,
                reply,
            } => drop(reply.send(query::plan(st, store, &change, include_unchanged, now))),
            Query::Item {
                device,
                field,
                reply,
            } => drop(reply.send(Ok(query::item(st, &device, &field)))),
        }
    }
}

/// What arrived since the last pass, coalesced: a device reporting many times is looked at
/// once.
#[derive(Default)]
struct Batch {
    observed: HashMap<String, u32>,
    observed_events: u64,
    recompute: Vec<String>,
    /// Campaign layers put or removed, in arrival order.
    overlays: Vec<(String, String, Option<super::desired::Overlay>)>,
    desired: bool,
    /// The newest durable revision announced.
    upto: u64,
    queries: Vec<Query>,
    shutdown: bool,
}

impl Batch {
    fn take(&mut self, ev: Event) {
        match ev {
            Event::Observed {
                device_id,
                sections,
            } => {
                *self.observed.entry(device_id).or_insert(0) |= sections;
                self.observed_events += 1;
            }
            Event::DesiredChanged { upto } => {
                self.desired = true;
                self.upto = self.upto.max(upto);
            }
            Event::Recompute { device_id } => self.recompute.push(device_id),
            Event::Overlay {
                device_id,
                campaign_id,
                overlay,
            } => {
                self.overlays.push((device_id, campaign_id, overlay));
                // Counted with the observed changes, so `caught_up` waits for it too.
                self.observed_events += 1;
            }
            Event::Ask(q) => self.queries.push(q),
            Event::Shutdown => self.shutdown = true,
        }
    }

    fn is_empty(&self) -> bool {
        self.observed_events == 0
            && self.recompute.is_empty()
            && !self.desired
            && self.queries.is_empty()
            && !self.shutdown
    }
}

/// What a pass hands back to the task.
struct Outcome {
    writes: Vec<Write>,
    stats: PassStats,
}

/// Where the task publishes what readers may see.
pub(super) struct Publish {
    pub progress: watch::Sender<Progress>,
    pub status: watch::Sender<EngineStatus>,
    pub last_pass: watch::Sender<PassStats>,
}

/// Starts the engine's task over `inventory`'s store and clock, fed by `rx`.
pub(super) fn spawn(
    inventory: Arc<Inventory>,
    rx: mpsc::UnboundedReceiver<Event>,
    publish: Publish,
) {
    let task = Task {
        clock: Arc::clone(inventory.clock()),
        store: Arc::clone(inventory.store()),
        inventory,
        rx,
        progress: publish.progress,
        status: publish.status,
        last_pass: publish.last_pass,
        observed_taken: 0,
        retry: Vec::new(),
    };
    tokio::spawn(task.run());
}

/// The engine's task and everything it alone owns.
struct Task {
    inventory: Arc<Inventory>,
    store: Arc<dyn Store>,
    clock: SharedClock,
    rx: mpsc::UnboundedReceiver<Event>,
    progress: watch::Sender<Progress>,
    status: watch::Sender<EngineStatus>,
    last_pass: watch::Sender<PassStats>,
    /// Observed events taken in so far.
    observed_taken: u64,
    /// Devices whose drift write lost a race, for the next pass.
    retry: Vec<String>,
}

impl Task {
    async fn run(mut self) {
        let store = Arc::clone(&self.store);
        let started = muster::clock::Stopwatch::start();
        let loaded = tokio::task::spawn_blocking(move || State::load(&*store)).await;
        let state = match loaded {
            Ok(Ok(st)) => st,
            Ok(Err(e)) => return self.failed(format!("cannot load the store: {e}")).await,
            Err(e) => return self.failed(format!("load panicked: {e}")).await,
        };
        tracing::info!(
            devices = state.devices.len(),
            profiles = state.profiles.len(),
            took_ms = started.elapsed().as_millis(),
            "drift engine loaded"
        );
        self.status.send_replace(EngineStatus::Running);
        match self.follow(state).await {
            Ok(()) => {
                self.status.send_replace(EngineStatus::Stopped);
            }
            Err(reason) => self.failed(reason).await,
        }
    }

    /// The loop: wait for something, take in all that arrived, pass, write, publish. Ends
    /// on shutdown, or with the reason it cannot go on.
    async fn follow(&mut self, mut state: State) -> Result<(), String> {
        let mut durable = self.store.durable();
        let mut persisted = 0u64;
        let mut persisted_at: Option<Instant> = None;
        // The first pass takes in what happened while loading.
        let mut batch = Batch {
            desired: true,
            ..Batch::default()
        };
        loop {
            for device_id in std::mem::take(&mut self.retry) {
                batch.take(Event::Recompute { device_id });
            }
            if batch.is_empty() {
                tokio::select! {
                    ev = self.rx.recv() => match ev {
                        Some(ev) => batch.take(ev),
                        None => return Ok(()),
                    },
                    changed = durable.changed() => match changed {
                        Ok(()) => {
                            let upto = durable.borrow().as_ref().copied().unwrap_or(0);
                            batch.take(Event::DesiredChanged { upto });
                        }
                        Err(_) => return Ok(()),
                    },
                }
            }
            while let Ok(ev) = self.rx.try_recv() {
                batch.take(ev);
            }
            let upto = match &*durable.borrow_and_update() {
                Ok(d) => batch.upto.max(*d),
                Err(e) => return Err(format!("the store cannot persist: {e}")),
            };
            let shutdown = batch.shutdown;
            let observed_events = batch.observed_events;
            let now = timestamp(self.clock.now_unix_nanos());
            let store = Arc::clone(&self.store);
            let taken = std::mem::take(&mut batch);
            let pass = tokio::task::spawn_blocking(move || {
                let outcome = pass(&mut state, &*store, taken, upto, now);
                (state, outcome)
            })
            .await;
            let outcome;
            (state, outcome) = match pass {
                Ok(r) => r,
                // The state went with the panicking thread: nothing sound to answer from.
                Err(e) => return Err(format!("a drift pass panicked: {e}")),
            };
            let mut stats = outcome.stats;
            stats.write = self.write(outcome.writes).await;
            self.last_pass.send_replace(stats);
            // At most once per PERSIST_EVERY: under a stream of creates every flush wakes a
            // pass, and a progress write each time was one more store write per batch.
            // Resuming from an older point only replays more changes.
            let due = shutdown
                || persisted_at.is_none_or(|t| {
                    self.clock.now_instant().saturating_duration_since(t) >= PERSIST_EVERY
                });
            if state.followed != persisted && due {
                persisted_at = Some(self.clock.now_instant());
                let put = AuxWrite {
                    guards: Vec::new(),
                    puts: vec![(
                        FOLLOWED_KEY.to_vec(),
                        Some(state.followed.to_be_bytes().to_vec()),
                    )],
                    mutation: None,
                };
                match self.store.commit_aux(put).applied().await {
                    Ok(_) => persisted = state.followed,
                    Err(e) => tracing::warn!(error = %e, "cannot record drift progress"),
                }
            }
            self.observed_taken += observed_events;
            let (followed, taken) = (state.followed, self.observed_taken);
            self.progress.send_modify(|p| {
                p.revision = p.revision.max(followed);
                p.observed = p.observed.max(taken);
            });
            if shutdown {
                return Ok(());
            }
        }
    }

    /// The engine cannot go on: say so, and refuse every question until shutdown.
    async fn failed(mut self, reason: String) {
        tracing::error!(error = %reason, "the drift engine stopped; drift and plans are unavailable");
        self.status
            .send_replace(EngineStatus::Failed(reason.clone()));
        self.refuse_all(reason).await;
    }

    async fn refuse_all(&mut self, reason: String) {
        while let Some(ev) = self.rx.recv().await {
            match ev {
                Event::Ask(q) => q.refuse(|| {
                    ApiError::Unavailable(format!(
                        "the drift engine is not running ({reason}); drift and plans are unavailable until musterd is restarted"
                    ))
                }),
                Event::Shutdown => return,
                Event::Observed { .. }
                | Event::DesiredChanged { .. }
                | Event::Recompute { .. }
                | Event::Overlay { .. } => {}
            }
        }
    }

    /// Persists a pass's results: device bodies (pipelined, each on its own so one
    /// concurrent operator write does not hold up the rest) and the memory records in
    /// chunks. Returns how long it took.
    async fn write(&mut self, writes: Vec<Write>) -> Duration {
        if writes.is_empty() {
            return Duration::ZERO;
        }
        let started = muster::clock::Stopwatch::start();
        let mut puts = Vec::new();
        let mut pending = futures::stream::FuturesUnordered::new();
        let mut retry = Vec::new();
        for w in writes {
            if let Some(m) = &w.memory {
                match state::encode_memory(m) {
                    Ok(b) => puts.push((memory_key(&w.id), Some(b))),
                    Err(e) => tracing::error!(error = %e, "cannot encode drift memory"),
                }
            }
            let Some(items) = w.items else {
                continue;
            };
            match self.device_write(&w.name, &w.id, items) {
                Ok(Some(m)) => {
                    let store = &self.store;
                    pending.push(async move {
                        let r = store.commit(m).revision().await;
                        (w.id, r)
                    })
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(device = %w.name, error = %e, "cannot record drift"),
            }
            while pending.len() >= WRITE_WINDOW {
                if let Some((id, Err(_))) = pending.next().await {
                    retry.push(id);
                }
            }
        }
        while let Some((id, r)) = pending.next().await {
            if r.is_err() {
                retry.push(id);
            }
        }
        drop(pending);
        for chunk in puts.chunks(AUX_CHUNK) {
            let w = AuxWrite {
                guards: Vec::new(),
                puts: chunk.to_vec(),
                mutation: None,
            };
            if let Err(e) = self.store.commit_aux(w).applied().await {
                tracing::error!(error = %e, "cannot record drift memory");
            }
        }
        // Lost a race with another writer: recompute those on the next pass.
        self.retry = retry;
        started.elapsed()
    }

    /// The device write that records new drift items.
    fn device_write(
        &self,
        name: &str,
        id: &str,
        items: Vec<pb::DriftItem>,
    ) -> Result<Option<Mutation>, ApiError> {
        let Some((obj, mut body)) = self.inventory.load_device(name)? else {
            return Ok(None);
        };
        if obj.id != id {
            return Ok(None);
        }
        let Some(R::Device(d)) = body.resource.as_mut() else {
            return Ok(None);
        };
        let status = d.status.get_or_insert_with(Default::default);
        if status.drift == items {
            return Ok(None);
        }
        let summary = drift_summary(&items);
        status.drift = items;
        let ctx = ChangeContext {
            reason: summary,
            ticket: String::new(),
            origin: "drift".into(),
        };
        Ok(Some(self.inventory.server_mutation(
            &obj,
            body,
            PRINCIPAL,
            VERB,
            &ctx,
            self.clock.now_unix_nanos(),
        )))
    }
}

/// One pass, on a blocking thread: takes in the batch's events and the event log up to
/// `upto`, recomputes every marked device, then answers the batch's questions.
fn pass(
    st: &mut State,
    store: &dyn Store,
    batch: Batch,
    upto: u64,
    now: pbjson_types::Timestamp,
) -> Outcome {
    let mut dirty: HashSet<String> = HashSet::with_capacity(batch.observed.len());
    for (id, sections) in batch.observed {
        if let Err(e) = st.observed(store, id.clone(), sections, &mut dirty) {
            tracing::error!(device_id = %id, error = %e, "cannot read observed facts for drift");
        }
    }
    for id in batch.recompute {
        st.recompute_later(id, &mut dirty);
    }
    for (device, campaign, overlay) in batch.overlays {
        st.overlay(device, campaign, overlay, &mut dirty);
    }
    if let Err(e) = st.follow(store, upto, &mut dirty) {
        tracing::error!(error = %e, "cannot read the event log for drift");
    }
    let started = muster::clock::Stopwatch::start();
    let devices = dirty.len();
    let writes = st.recompute(store, dirty, now);
    let stats = PassStats {
        devices,
        compute: started.elapsed(),
        writes: writes.len(),
        write: Duration::ZERO,
    };
    for q in batch.queries {
        q.answer(st, store, now);
    }
    Outcome { writes, stats }
}

/// The audit reason of a drift write: what is in drift now.
fn drift_summary(items: &[pb::DriftItem]) -> String {
    if items.is_empty() {
        return "in sync".into();
    }
    let fields: Vec<String> = items
        .iter()
        .take(8)
        .map(|i| format!("{} ({})", i.field, i.cause))
        .collect();
    let more = items.len().saturating_sub(8);
    if more > 0 {
        format!("drift: {} and {more} more", fields.join(", "))
    } else {
        format!("drift: {}", fields.join(", "))
    }
}
