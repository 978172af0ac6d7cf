//! The drift engine: keeps every device's drift current, incrementally.
//!
//! It follows the store's event log (durable revisions, as Watch does) to learn desired-state
//! changes: a profile write marks the devices its old and new selector choose; a device write
//! marks that device when its labels, spec or declared hardware changed. Agent reports (and
//! ingested facts) mark their device through `Inventory::observed_signal`. Marked devices are
//! recomputed from in-memory caches (compiled profiles; per device its labels, spec and a view
//! of the observed facts drift compares, with package lists shared between hosts that report
//! the same one), and the result is written only when it changed: the items into the device's
//! `status.drift` (so Watch, List and the audit trail see drift like any other change) and
//! the per-field desired memory that decides causes into an auxiliary record.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use muster::facts::Section;
use muster::pb::{self, ResourceKind, resource::Resource as R};
use muster::selector::Selector;
use prost::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::desired::{self, CompiledProfile, Effective, Want};
use crate::drift::{self, Declared, Memory, ObservedView, PackageSet};
use crate::inventory::{ChangeContext, Inventory};
use crate::model::{ApiError, kind_id, timestamp};
use crate::observed;
use crate::store::{AuxWrite, ListQuery, Store, StoreError};

/// How often the followed revision is persisted at most.
const PERSIST_EVERY: Duration = Duration::from_secs(1);

/// Principal of the engine's own writes.
pub const PRINCIPAL: &str = "system:drift";
/// Verb of the engine's own writes.
pub const VERB: &str = "drift";
/// Auxiliary key prefix of the per-device drift memory.
const MEMORY_PREFIX: &[u8] = crate::aux_keys::DRIFT_MEMORY.as_bytes();
/// Auxiliary key of the event-log revision whose drift has been written out.
const FOLLOWED_KEY: &[u8] = crate::aux_keys::DRIFT_FOLLOWED.as_bytes();
/// Device writes in flight at once.
const WRITE_WINDOW: usize = 512;
/// Auxiliary puts per write.
const AUX_CHUNK: usize = 1000;

fn memory_key(device_id: &str) -> Vec<u8> {
    let mut k = MEMORY_PREFIX.to_vec();
    k.extend_from_slice(device_id.as_bytes());
    k
}

#[derive(Serialize, Deserialize)]
enum MemoryRecord {
    V1 { desired: Vec<(String, String)> },
}

/// What the engine knows of one device.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    labels: BTreeMap<String, String>,
    own: Vec<(String, Want)>,
    declared: Declared,
    /// Current drift items (as the body holds them once written).
    items: Vec<pb::DriftItem>,
    /// Desired text per field at the last evaluation; None until read from the store.
    desired_memory: Option<BTreeMap<String, String>>,
    /// None until loaded; `Some(None)` when the device never reported.
    observed: Option<Option<ObservedView>>,
}

impl Entry {
    fn from_device(d: &pb::Device) -> Self {
        Self {
            name: d.meta.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
            labels: d
                .meta
                .as_ref()
                .map(|m| m.labels.clone().into_iter().collect())
                .unwrap_or_default(),
            own: d.spec.as_ref().map(desired::fields_of).unwrap_or_default(),
            declared: Declared {
                serial: d.serial.clone(),
                model: d.model.clone(),
            },
            items: d
                .status
                .as_ref()
                .map(|s| s.drift.clone())
                .unwrap_or_default(),
            desired_memory: None,
            observed: None,
        }
    }

    fn same_desired_inputs(&self, other: &Entry) -> bool {
        self.labels == other.labels && self.own == other.own && self.declared == other.declared
    }
}

#[derive(Default)]
struct State {
    profiles: BTreeMap<String, CompiledProfile>,
    devices: HashMap<String, Entry>,
    /// Device name → id.
    ids: HashMap<String, String>,
    /// Event-log revision consumed so far.
    followed: u64,
    /// Package lists by content hash, shared between devices.
    package_sets: HashMap<[u8; 32], Weak<PackageSet>>,
    /// Ids of devices deleted since the last write-out: their observed facts and drift
    /// memory are removed (a device created again under the name starts clean).
    deleted: Vec<String>,
}

/// How far the engine has caught up: event-log revision, and observed-signal count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub revision: u64,
    pub observed: u64,
}

/// Statistics of the last recompute pass (for benchmarks and metrics).
#[derive(Debug, Clone, Copy, Default)]
pub struct PassStats {
    pub devices: usize,
    pub compute: Duration,
    pub writes: usize,
    pub write: Duration,
}

/// The engine.
pub struct DriftEngine {
    store: Arc<dyn Store>,
    inventory: Arc<Inventory>,
    state: Mutex<State>,
    progress: watch::Sender<Progress>,
    last_pass: Mutex<PassStats>,
}

impl std::fmt::Debug for DriftEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriftEngine").finish_non_exhaustive()
    }
}

fn store_err(e: StoreError) -> ApiError {
    crate::store_map::api_error("drift", "", e)
}

/// A device the plan or the engine evaluates: its desired inputs and its observed view.
struct Subject<'a> {
    labels: &'a BTreeMap<String, String>,
    own: &'a [(String, Want)],
    declared: &'a Declared,
}

impl DriftEngine {
    /// Starts the engine: it loads profiles and devices in the background, then follows the
    /// event log. Queries wait for it through `caught_up` (its progress starts at revision 0),
    /// so musterd serves at once instead of decoding every device body before it listens
    /// (~1.5 s and ~400 MB of transient memory at 100,000 devices).
    pub fn start(inventory: Arc<Inventory>) -> Arc<Self> {
        let store = Arc::clone(inventory.store());
        let engine = Arc::new(Self {
            store,
            inventory,
            state: Mutex::new(State::default()),
            progress: watch::channel(Progress::default()).0,
            last_pass: Mutex::new(PassStats::default()),
        });
        let runner = Arc::clone(&engine);
        tokio::spawn(async move {
            let loader = Arc::clone(&runner);
            match tokio::task::spawn_blocking(move || loader.load()).await {
                Ok(Ok(())) => runner.run().await,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "drift engine cannot load the store; drift and plans are unavailable");
                }
                Err(e) => tracing::error!(error = %e, "drift engine load panicked"),
            }
        });
        engine
    }

    /// Reads profiles and devices (a page at a time: never every body at once) into the state.
    fn load(&self) -> Result<(), ApiError> {
        let started = muster::clock::Stopwatch::start();
        let revision = self.store.revision();
        // Resume after the last pass whose writes were applied: changes followed but not yet
        // written out when the server stopped are taken in again.
        let resume = self
            .store
            .aux_get(FOLLOWED_KEY)
            .map_err(store_err)?
            .and_then(|v| Some(u64::from_be_bytes(v.as_slice().try_into().ok()?)))
            .filter(|f| *f <= revision)
            .unwrap_or(revision);
        let mut state = State {
            followed: resume,
            ..State::default()
        };
        for_each_object(&*self.store, ResourceKind::Profile, |o| {
            if let Ok(pb::Resource {
                resource: Some(R::Profile(p)),
            }) = pb::Resource::decode(o.body.as_slice())
            {
                state
                    .profiles
                    .insert(o.name.clone(), CompiledProfile::new(&p));
            }
        })?;
        for_each_object(&*self.store, ResourceKind::Device, |o| {
            if let Ok(pb::Resource {
                resource: Some(R::Device(d)),
            }) = pb::Resource::decode(o.body.as_slice())
            {
                state.ids.insert(o.name.clone(), o.id.clone());
                state.devices.insert(o.id, Entry::from_device(&d));
            }
        })?;
        tracing::info!(
            devices = state.devices.len(),
            profiles = state.profiles.len(),
            took_ms = started.elapsed().as_millis(),
            "drift engine loaded"
        );
        *self.state() = state;
        Ok(())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How far the engine has caught up.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Statistics of the last pass.
    pub fn last_pass(&self) -> PassStats {
        *self.last_pass.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits (at most `limit`) until the engine has taken in every change committed and every
    /// report signalled before this call, so a read after a write sees its drift.
    pub async fn caught_up(&self, limit: Duration) -> bool {
        let want = Progress {
            revision: self.store.revision(),
            observed: self.inventory.observed_signal().requested(),
        };
        let mut rx = self.progress.subscribe();
        let wait = rx.wait_for(|p| p.revision >= want.revision && p.observed >= want.observed);
        matches!(tokio::time::timeout(limit, wait).await, Ok(Ok(_)))
    }

    async fn run(self: Arc<Self>) {
        let mut durable = self.store.durable();
        let mut persisted = 0u64;
        let mut persisted_at: Option<std::time::Instant> = None;
        loop {
            let upto = match &*durable.borrow_and_update() {
                Ok(d) => *d,
                Err(_) => return,
            };
            let (observed, observed_upto) = self.inventory.observed_signal().take();
            let this = Arc::clone(&self);
            // `followed` is read on the blocking thread too: a plan holds the state lock for
            // seconds, and waiting for it here would hold an async worker.
            let pass = tokio::task::spawn_blocking(move || {
                let r = this.pass(upto, observed);
                (r, this.state().followed)
            })
            .await;
            let mut followed = self.progress.borrow().revision;
            match pass {
                Ok((Ok(writes), f)) => {
                    followed = f;
                    self.write(writes).await;
                    // At most once per PERSIST_EVERY: under a stream of creates every flush
                    // wakes a pass, and a progress write each time was one more store write
                    // per batch. Resuming from an older point only replays more changes.
                    let due = persisted_at.is_none_or(|t| {
                        self.inventory
                            .clock()
                            .now_instant()
                            .saturating_duration_since(t)
                            >= PERSIST_EVERY
                    });
                    if followed != persisted && due {
                        persisted_at = Some(self.inventory.clock().now_instant());
                        let put = AuxWrite {
                            guards: Vec::new(),
                            puts: vec![(
                                FOLLOWED_KEY.to_vec(),
                                Some(followed.to_be_bytes().to_vec()),
                            )],
                            mutation: None,
                        };
                        match self.store.commit_aux(put).applied().await {
                            Ok(_) => persisted = followed,
                            Err(e) => tracing::warn!(error = %e, "cannot record drift progress"),
                        }
                    }
                }
                Ok((Err(e), f)) => {
                    followed = f;
                    tracing::error!(error = %e, "drift recompute failed");
                }
                Err(e) => tracing::error!(error = %e, "drift recompute panicked"),
            }
            self.progress.send_modify(|p| {
                p.revision = p.revision.max(followed);
                p.observed = p.observed.max(observed_upto);
            });
            tokio::select! {
                changed = durable.changed() => if changed.is_err() { return },
                () = self.inventory.observed_signal().notified() => {}
            }
        }
    }

    /// Takes in the event log up to `upto` and the reported devices, recomputes every marked
    /// device, and returns the writes to make.
    fn pass(&self, upto: u64, observed: HashMap<String, u32>) -> Result<Vec<Write>, ApiError> {
        let mut dirty: HashSet<String> = HashSet::with_capacity(observed.len());
        let mut guard = self.state();
        let st = &mut *guard;
        for (id, sections) in observed {
            let Some(e) = st.devices.get_mut(&id) else {
                continue;
            };
            match &mut e.observed {
                Some(Some(view)) if view.facts_json.is_none() && sections != u32::MAX => {
                    if sections & (RELEVANT | RECOMPUTE) == 0 {
                        // Only sensors, SMART, ... changed: nothing drift compares.
                        continue;
                    }
                    let before = view.clone();
                    self.refresh_view(&mut st.package_sets, &id, view, sections)?;
                    if sections & RECOMPUTE == 0 && view.same_as(&before) {
                        // Uptime moved, nothing drift compares did.
                        continue;
                    }
                }
                _ => e.observed = None,
            }
            dirty.insert(id);
        }
        let mut st = guard;
        while st.followed < upto {
            let changes = self
                .store
                .changes(st.followed, upto, 4096)
                .map_err(store_err)?;
            let Some(last) = changes.last().map(|c| c.revision) else {
                st.followed = upto;
                break;
            };
            for c in changes {
                self.take_change(&mut st, &c, &mut dirty);
            }
            st.followed = last;
        }
        let started = muster::clock::Stopwatch::start();
        let n = dirty.len();
        let mut writes = self.recompute(&mut st, dirty)?;
        for id in std::mem::take(&mut st.deleted) {
            writes.push(Write {
                id,
                name: String::new(),
                items: None,
                memory: None,
                forget: true,
            });
        }
        let compute = started.elapsed();
        drop(st);
        let mut s = self.last_pass.lock().unwrap_or_else(|p| p.into_inner());
        *s = PassStats {
            devices: n,
            compute,
            writes: writes.len(),
            write: Duration::ZERO,
        };
        Ok(writes)
    }

    fn take_change(
        &self,
        st: &mut State,
        c: &crate::store::ChangeEntry,
        dirty: &mut HashSet<String>,
    ) {
        if c.kind == kind_id(ResourceKind::Profile) {
            let old = st.profiles.remove(&c.name);
            let new = c
                .after
                .as_ref()
                .and_then(|b| match pb::Resource::decode(b.as_slice()) {
                    Ok(pb::Resource {
                        resource: Some(R::Profile(p)),
                    }) => Some(CompiledProfile::new(&p)),
                    _ => None,
                });
            for (id, e) in &st.devices {
                if old.as_ref().is_some_and(|p| p.selects(&e.labels))
                    || new.as_ref().is_some_and(|p| p.selects(&e.labels))
                {
                    dirty.insert(id.clone());
                }
            }
            if let Some(p) = new {
                st.profiles.insert(c.name.clone(), p);
            }
        } else if c.kind == kind_id(ResourceKind::Device) {
            match &c.after {
                None => {
                    st.devices.remove(&c.id);
                    st.ids.remove(&c.name);
                    dirty.remove(&c.id);
                    st.deleted.push(c.id.clone());
                }
                Some(body) => {
                    let Ok(pb::Resource {
                        resource: Some(R::Device(d)),
                    }) = pb::Resource::decode(body.as_slice())
                    else {
                        return;
                    };
                    let fresh = Entry::from_device(&d);
                    match st.devices.get_mut(&c.id) {
                        Some(e) => {
                            // The engine's own writes (and health changes) touch only status.
                            if !e.same_desired_inputs(&fresh) {
                                e.labels = fresh.labels;
                                e.own = fresh.own;
                                e.declared = fresh.declared;
                                dirty.insert(c.id.clone());
                            }
                            // Whoever wrote it, the body holds the items now (events are
                            // followed in order, so the engine's own write comes last).
                            e.items = fresh.items;
                        }
                        None => {
                            st.ids.insert(c.name.clone(), c.id.clone());
                            st.devices.insert(c.id.clone(), fresh);
                            dirty.insert(c.id.clone());
                        }
                    }
                }
            }
        }
    }

    /// Re-reads only the changed sections drift compares into a loaded view (no JSON).
    fn refresh_view(
        &self,
        sets: &mut HashMap<[u8; 32], Weak<PackageSet>>,
        id: &str,
        view: &mut ObservedView,
        sections: u32,
    ) -> Result<(), ApiError> {
        for n in [
            Section::Os,
            Section::Packages,
            Section::Firmware,
            Section::Power,
            Section::Fru,
        ] {
            if sections & n.bit() == 0 {
                continue;
            }
            let key = observed::section_key(id, n);
            let raw = self.store.aux_get(&key).map_err(store_err)?;
            if n == Section::Packages {
                view.packages = match raw {
                    Some(v) => Some(intern_packages(sets, &v)?),
                    None => None,
                };
                continue;
            }
            let mut f = pb::Facts::default();
            if let Some(v) = raw {
                f.merge(v.as_slice())
                    .map_err(|e| ApiError::Internal(format!("corrupt facts section: {e}")))?;
            }
            let fresh = view_of(&f, None, false);
            match n {
                Section::Os => {
                    view.os_release = fresh.os_release;
                    view.kernel = fresh.kernel;
                    view.timezone = fresh.timezone;
                    view.dns_servers = fresh.dns_servers;
                    view.ntp_servers = fresh.ntp_servers;
                    view.sysctl = fresh.sysctl;
                    view.package_format = fresh.package_format;
                }
                Section::Firmware => {
                    view.firmware_bios = fresh.firmware_bios;
                    view.firmware_bmc = fresh.firmware_bmc;
                }
                Section::Power => view.power = fresh.power,
                _ => {
                    view.fru_serial = fresh.fru_serial;
                    view.fru_product = fresh.fru_product;
                }
            }
        }
        Ok(())
    }

    /// Loads what drift compares of a device's observed facts (None: it never reported).
    fn load_view(
        &self,
        sets: &mut HashMap<[u8; 32], Weak<PackageSet>>,
        id: &str,
        with_json: bool,
    ) -> Result<Option<ObservedView>, ApiError> {
        let records = observed::scan_device(&*self.store, id).map_err(store_err)?;
        let sel = observed::sel_key(id);
        let meta = observed::meta_key(id);
        let packages_key = observed::section_key(id, Section::Packages);
        let mut facts = pb::Facts::default();
        let mut packages = None;
        let mut any = false;
        for (k, v) in records {
            if k == sel || k == meta {
                continue;
            }
            any = true;
            if k == packages_key {
                packages = Some(intern_packages(sets, &v)?);
                continue;
            }
            facts
                .merge(v.as_slice())
                .map_err(|e| ApiError::Internal(format!("corrupt facts section: {e}")))?;
        }
        if !any {
            return Ok(None);
        }
        Ok(Some(view_of(&facts, packages, with_json)))
    }

    /// Recomputes `dirty` devices; returns the writes for those whose drift changed.
    fn recompute(&self, st: &mut State, dirty: HashSet<String>) -> Result<Vec<Write>, ApiError> {
        let now = timestamp(self.inventory.now_unix_nanos());
        let State {
            profiles,
            devices,
            package_sets,
            ..
        } = st;
        let profiles: Vec<&CompiledProfile> = profiles.values().collect();
        let mut writes = Vec::new();
        for id in dirty {
            let Some(e) = devices.get_mut(&id) else {
                continue;
            };
            let (eff, _) = desired::effective(&profiles, &e.labels, &e.own);
            let needs_json = eff.values().any(|s| matches!(s.want, Want::Expect(_)));
            let reload = match &e.observed {
                None => true,
                Some(Some(v)) => needs_json && v.facts_json.is_none(),
                Some(None) => false,
            };
            // One device's unreadable records must not stop the others.
            if reload {
                match self.load_view(package_sets, &id, needs_json) {
                    Ok(v) => e.observed = Some(v),
                    Err(err) => {
                        tracing::error!(device = %e.name, error = %err, "cannot read observed facts for drift");
                        continue;
                    }
                }
            }
            if e.desired_memory.is_none() {
                match self.load_memory(&id) {
                    Ok(m) => e.desired_memory = Some(m),
                    Err(err) => {
                        tracing::error!(device = %e.name, error = %err, "cannot read drift memory; starting afresh");
                        e.desired_memory = Some(BTreeMap::new());
                    }
                }
            }
            let Some(Some(view)) = &e.observed else {
                // Nothing observed yet: no drift, and no desired memory (the first report's
                // differences are then pending).
                if !e.items.is_empty() {
                    writes.push(Write {
                        id: id.clone(),
                        name: e.name.clone(),
                        items: Some(Vec::new()),
                        memory: None,
                        forget: false,
                    });
                    e.items.clear();
                }
                continue;
            };
            let findings = drift::evaluate(&eff, &e.declared, view);
            let memory = Memory {
                desired: e.desired_memory.clone().unwrap_or_default(),
                items: e.items.clone(),
            };
            let next = drift::reconcile(
                &memory,
                drift::desired_texts(&eff, &e.declared),
                findings,
                now,
            );
            let items_changed = next.items != memory.items;
            let memory_changed = next.desired != memory.desired;
            if items_changed || memory_changed {
                writes.push(Write {
                    id: id.clone(),
                    name: e.name.clone(),
                    items: items_changed.then(|| next.items.clone()),
                    memory: memory_changed.then(|| next.desired.clone()),
                    forget: false,
                });
                e.items = next.items;
                e.desired_memory = Some(next.desired);
            }
        }
        Ok(writes)
    }

    fn load_memory(&self, id: &str) -> Result<BTreeMap<String, String>, ApiError> {
        let Some(raw) = self.store.aux_get(&memory_key(id)).map_err(store_err)? else {
            return Ok(BTreeMap::new());
        };
        match postcard::from_bytes::<MemoryRecord>(&raw) {
            Ok(MemoryRecord::V1 { desired }) => Ok(desired.into_iter().collect()),
            Err(e) => Err(ApiError::Internal(format!("corrupt drift memory: {e}"))),
        }
    }

    /// Persists a pass's results: device bodies (pipelined, each on its own so one
    /// concurrent operator write does not hold up the rest) and the memory records in chunks.
    async fn write(&self, writes: Vec<Write>) {
        if writes.is_empty() {
            return;
        }
        let started = muster::clock::Stopwatch::start();
        let mut retry = Vec::new();
        let mut puts = Vec::new();
        for w in writes.iter().filter(|w| w.forget) {
            match observed::scan_device(&*self.store, &w.id) {
                Ok(records) => puts.extend(records.into_iter().map(|(k, _)| (k, None))),
                Err(e) => tracing::warn!(error = %e, "cannot list a deleted device's facts"),
            }
            puts.push((observed::meta_key(&w.id), None));
            puts.push((memory_key(&w.id), None));
        }
        let mut pending = futures::stream::FuturesUnordered::new();
        use futures::StreamExt;
        for w in writes {
            if let Some(m) = &w.memory {
                let rec = MemoryRecord::V1 {
                    desired: m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                };
                match postcard::to_stdvec(&rec) {
                    Ok(b) => puts.push((memory_key(&w.id), Some(b))),
                    Err(e) => tracing::error!(error = %e, "cannot encode drift memory"),
                }
            }
            let Some(items) = w.items else {
                continue;
            };
            match self.device_write(&w.name, &w.id, items) {
                Ok(Some(m)) => pending.push(async move {
                    let r = self.store.commit(m).revision().await;
                    (w.id, r)
                }),
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
        if !retry.is_empty() {
            // Lost a race with another writer: recompute those on the next pass.
            let sig = self.inventory.observed_signal();
            for id in retry {
                sig.changed(&id, RECOMPUTE);
            }
        }
        let mut s = self.last_pass.lock().unwrap_or_else(|p| p.into_inner());
        s.write = started.elapsed();
    }

    /// The device write that records new drift items.
    fn device_write(
        &self,
        name: &str,
        id: &str,
        items: Vec<pb::DriftItem>,
    ) -> Result<Option<crate::store::Mutation>, ApiError> {
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
            self.inventory.now_unix_nanos(),
        )))
    }

    /// Drift of the devices `selector` chooses.
    pub fn drift(
        &self,
        selector: &Selector,
        field_prefix: &str,
        summary_only: bool,
    ) -> pb::DriftResponse {
        let st = self.state();
        let mut resp = pb::DriftResponse {
            revision: st.followed,
            ..Default::default()
        };
        let mut by_field: BTreeMap<String, pb::FieldDriftSummary> = BTreeMap::new();
        let mut per_device = Vec::new();
        for e in st.devices.values() {
            if !selector.matches(|k| e.labels.get(k).map(String::as_str)) {
                continue;
            }
            resp.devices += 1;
            let items: Vec<pb::DriftItem> = e
                .items
                .iter()
                .filter(|i| i.field.starts_with(field_prefix))
                .cloned()
                .collect();
            if items.is_empty() {
                continue;
            }
            resp.drifting += 1;
            for i in &items {
                let s = by_field
                    .entry(i.field.clone())
                    .or_insert_with(|| pb::FieldDriftSummary {
                        field: i.field.clone(),
                        ..Default::default()
                    });
                s.devices += 1;
                if i.cause == "unexpected" {
                    s.unexpected += 1;
                } else {
                    s.pending += 1;
                }
            }
            if !summary_only {
                per_device.push(pb::DeviceDrift {
                    device: e.name.clone(),
                    items,
                });
            }
        }
        per_device.sort_by(|a, b| a.device.cmp(&b.device));
        resp.fields = by_field.into_values().collect();
        resp.fields
            .sort_by(|a, b| b.devices.cmp(&a.devices).then(a.field.cmp(&b.field)));
        resp.items = per_device;
        resp
    }

    /// One device's current drift items.
    pub fn items_of(&self, device: &str) -> Option<Vec<pb::DriftItem>> {
        let st = self.state();
        let id = st.ids.get(device)?;
        st.devices.get(id).map(|e| e.items.clone())
    }

    /// What the given new versions of profiles and devices would do: per device, the change
    /// of effective desired state and the drift afterwards; and the conflicts they create.
    pub fn plan(
        &self,
        change: &PlannedChange,
        include_unchanged: bool,
    ) -> Result<pb::PlanResponse, ApiError> {
        let mut guard = self.state();
        let st = &mut *guard;
        let before: Vec<&CompiledProfile> = st.profiles.values().collect();
        let mut after_map: BTreeMap<String, &CompiledProfile> =
            st.profiles.iter().map(|(k, v)| (k.clone(), v)).collect();
        for p in &change.profiles {
            after_map.insert(p.name.clone(), p);
        }
        let after: Vec<&CompiledProfile> = after_map.values().copied().collect();
        // Devices touched: the changed ones, and those any changed profile chose or will choose.
        // By name once: a search per subject was quadratic in the devices of a large set.
        let planned_by_name: HashMap<&str, &PlannedDevice> = change
            .devices
            .iter()
            .map(|d| (d.name.as_str(), d))
            .collect();
        let mut subjects: Vec<(String, Option<String>)> = Vec::new();
        for (id, e) in &st.devices {
            if planned_by_name.contains_key(e.name.as_str()) {
                continue;
            }
            let touched = change.profiles.iter().any(|p| {
                p.selects(&e.labels)
                    || st
                        .profiles
                        .get(&p.name)
                        .is_some_and(|old| old.selects(&e.labels))
            });
            if touched {
                subjects.push((e.name.clone(), Some(id.clone())));
            }
        }
        for d in &change.devices {
            subjects.push((d.name.clone(), st.ids.get(&d.name).cloned()));
        }
        subjects.sort();
        let mut resp = pb::PlanResponse {
            revision: st.followed,
            ..Default::default()
        };
        let now = timestamp(self.inventory.now_unix_nanos());
        let mut conflicts = Vec::new();
        // First the desired side (immutable), then the observed views (loaded where missing),
        // then the drift each device would be in.
        struct Row {
            name: String,
            id: Option<String>,
            existed: bool,
            changes: Vec<pb::FieldChange>,
            after: Effective,
            declared: Declared,
        }
        let mut rows = Vec::with_capacity(subjects.len());
        for (name, id) in subjects {
            let current = id.as_ref().and_then(|i| st.devices.get(i));
            let planned = planned_by_name.get(name.as_str()).copied();
            let before_eff = current.map(|e| desired::effective(&before, &e.labels, &e.own).0);
            let subject = match (planned, current) {
                (Some(p), _) => Subject {
                    labels: &p.labels,
                    own: &p.own,
                    declared: &p.declared,
                },
                (None, Some(e)) => Subject {
                    labels: &e.labels,
                    own: &e.own,
                    declared: &e.declared,
                },
                (None, None) => continue,
            };
            let (after_eff, cs) = desired::effective(&after, subject.labels, subject.own);
            for c in cs {
                conflicts.push(pb::ProfileConflict {
                    device: name.clone(),
                    field: c.field,
                    profiles: c.profiles,
                    priority: c.priority,
                });
            }
            rows.push(Row {
                changes: field_changes(before_eff.as_ref(), &after_eff),
                existed: current.is_some(),
                declared: subject.declared.clone(),
                after: after_eff,
                name,
                id,
            });
        }
        drop(before);
        drop(after);
        drop(after_map);
        for row in &rows {
            let Some(id) = &row.id else { continue };
            let needs_json = row
                .after
                .values()
                .any(|s| matches!(s.want, Want::Expect(_)));
            let loaded = match st.devices.get(id).map(|e| &e.observed) {
                Some(Some(Some(v))) => !needs_json || v.facts_json.is_some(),
                Some(Some(None)) => true,
                _ => false,
            };
            if !loaded {
                let v = self.load_view(&mut st.package_sets, id, needs_json)?;
                if let Some(e) = st.devices.get_mut(id) {
                    e.observed = Some(v);
                }
            }
        }
        for row in rows {
            let mut drift_after = Vec::new();
            if let Some(e) = row.id.as_ref().and_then(|id| st.devices.get(id))
                && let Some(Some(view)) = &e.observed
            {
                let memory = Memory {
                    desired: e.desired_memory.clone().unwrap_or_default(),
                    items: e.items.clone(),
                };
                let findings = drift::evaluate(&row.after, &row.declared, view);
                drift_after = drift::reconcile(
                    &memory,
                    drift::desired_texts(&row.after, &row.declared),
                    findings,
                    now,
                )
                .items;
            }
            let changed = !row.changes.is_empty() || !row.existed;
            if changed {
                resp.devices_changed += 1;
                if !drift_after.is_empty() {
                    resp.devices_drifting += 1;
                }
            }
            if changed || include_unchanged {
                resp.devices.push(pb::DevicePlan {
                    device: row.name,
                    changes: row.changes,
                    drift_after,
                    created: !row.existed,
                });
            }
        }
        resp.conflicts = conflicts;
        Ok(resp)
    }

    /// For `drift accept`: the device's current item for `field`.
    pub fn item(&self, device: &str, field: &str) -> Option<pb::DriftItem> {
        self.items_of(device)?
            .into_iter()
            .find(|i| i.field == field)
    }
}

/// Sections drift compares without `expect` rules: os, packages, firmware, power, FRU.
const RELEVANT: u32 = Section::Os.bit()
    | Section::Packages.bit()
    | Section::Firmware.bit()
    | Section::Power.bit()
    | Section::Fru.bit();

/// Not a section: recompute the device without re-reading anything (a lost write race).
const RECOMPUTE: u32 = 1 << 31;

/// The package list of a stored packages section, shared with every device that reported
/// the same bytes.
fn intern_packages(
    sets: &mut HashMap<[u8; 32], Weak<PackageSet>>,
    raw: &[u8],
) -> Result<Arc<PackageSet>, ApiError> {
    let hash: [u8; 32] = Sha256::digest(raw).into();
    if let Some(set) = sets.get(&hash).and_then(Weak::upgrade) {
        return Ok(set);
    }
    let mut f = pb::Facts::default();
    f.merge(raw)
        .map_err(|e| ApiError::Internal(format!("corrupt packages section: {e}")))?;
    let set: PackageSet = f
        .packages
        .map(|l| l.items.into_iter().map(|p| (p.name, p.version)).collect())
        .unwrap_or_default();
    let set = Arc::new(set);
    // Prune dead lists when the map has doubled since the last prune (amortised O(1)).
    if sets.len() >= 4096 && sets.len().is_power_of_two() {
        sets.retain(|_, w| w.strong_count() > 0);
    }
    sets.insert(hash, Arc::downgrade(&set));
    Ok(set)
}

/// Profiles and devices as a change would leave them (for plans and conflict checks).
#[derive(Debug, Default)]
pub struct PlannedChange {
    pub profiles: Vec<CompiledProfile>,
    pub devices: Vec<PlannedDevice>,
}

/// A device as a change would leave it.
#[derive(Debug)]
pub struct PlannedDevice {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub own: Vec<(String, Want)>,
    pub declared: Declared,
}

impl PlannedDevice {
    /// From the device resource a change would store.
    pub fn new(d: &pb::Device) -> Self {
        let e = Entry::from_device(d);
        Self {
            name: e.name,
            labels: e.labels,
            own: e.own,
            declared: e.declared,
        }
    }
}

/// A pass's result for one device.
#[derive(Debug)]
struct Write {
    id: String,
    name: String,
    /// New items, when they changed.
    items: Option<Vec<pb::DriftItem>>,
    /// New desired memory, when it changed.
    memory: Option<BTreeMap<String, String>>,
    /// The device was deleted: remove its observed facts and drift memory.
    forget: bool,
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

/// Field-level differences between two effective states.
fn field_changes(before: Option<&Effective>, after: &Effective) -> Vec<pb::FieldChange> {
    let empty = Effective::new();
    let before = before.unwrap_or(&empty);
    let mut out = Vec::new();
    let keys: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for k in keys {
        let b = before.get(k);
        let a = after.get(k);
        if b == a {
            continue;
        }
        out.push(pb::FieldChange {
            field: k.clone(),
            before: b.map(|s| s.want.to_string()).unwrap_or_default(),
            after: a.map(|s| s.want.to_string()).unwrap_or_default(),
            source: a.or(b).map(|s| s.source.to_string()).unwrap_or_default(),
        });
    }
    out
}

/// The view drift compares, from stored facts (packages apart).
pub fn view_of(
    facts: &pb::Facts,
    packages: Option<Arc<PackageSet>>,
    with_json: bool,
) -> ObservedView {
    let os = facts.os.as_ref();
    let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let facts_json = with_json.then(|| {
        let mut v = serde_json::to_value(facts).unwrap_or(serde_json::Value::Null);
        if let serde_json::Value::Object(m) = &mut v {
            // Lists are wrapped in the wire form ({"items": [...]}): unwrap them for paths.
            for (_, val) in m.iter_mut() {
                if let serde_json::Value::Object(inner) = val
                    && inner.len() == 1
                    && let Some(items) = inner.get("items").cloned()
                {
                    *val = items;
                }
            }
            let external = facts
                .external_json
                .as_deref()
                .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
                .unwrap_or(serde_json::Value::Object(Default::default()));
            m.remove("externalJson");
            m.insert("external".into(), external);
        }
        Arc::new(v)
    });
    ObservedView {
        os_release: os.and_then(|o| nonempty(&o.release)),
        kernel: os.and_then(|o| nonempty(&o.kernel)),
        timezone: os.and_then(|o| nonempty(&o.timezone)),
        dns_servers: os
            .filter(|o| !o.dns_servers.is_empty())
            .map(|o| o.dns_servers.clone()),
        ntp_servers: os
            .filter(|o| !o.ntp_servers.is_empty())
            .map(|o| o.ntp_servers.clone()),
        sysctl: os
            .filter(|o| !o.sysctl.is_empty())
            .map(|o| o.sysctl.clone().into_iter().collect()),
        package_format: os.map(|o| o.package_format.clone()).unwrap_or_default(),
        packages,
        firmware_bios: facts.firmware.as_ref().and_then(|f| nonempty(&f.bios)),
        firmware_bmc: facts.firmware.as_ref().and_then(|f| nonempty(&f.bmc)),
        power: facts.power.and_then(|p| pb::PowerState::try_from(p).ok()),
        fru_serial: facts.fru.as_ref().and_then(|f| nonempty(&f.serial)),
        fru_product: facts.fru.as_ref().and_then(|f| nonempty(&f.product)),
        facts_json,
    }
}

/// Calls `f` with every object of `kind`, reading a page of bodies at a time.
fn for_each_object(
    store: &dyn Store,
    kind: ResourceKind,
    mut f: impl FnMut(crate::store::StoredObject),
) -> Result<(), ApiError> {
    let mut after_id = None;
    loop {
        let page = store
            .list(&ListQuery {
                kind: kind_id(kind),
                labels: Selector::default(),
                fields: Selector::default(),
                after_id: after_id.clone(),
                limit: 2_000,
            })
            .map_err(store_err)?;
        page.objects.into_iter().for_each(&mut f);
        if !page.more {
            return Ok(());
        }
        after_id = page.last_id;
    }
}
