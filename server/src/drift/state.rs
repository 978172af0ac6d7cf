//! What the engine knows, and how each event changes it. Owned by the engine's task alone
//! (moved onto a blocking thread for a pass and back), so nothing here locks.

use std::collections::{BTreeMap, HashMap, HashSet};

use muster::pb::{self, ResourceKind, resource::Resource as R};
use muster::selector::Selector;
use prost::Message;
use serde::{Deserialize, Serialize};

use super::compare::{self, Declared, Memory, ObservedView};
use super::desired::{self, CompiledProfile, Overlay, Want};
use super::views::{self, PackageSets, RELEVANT};
use super::{memory_key, store_err};
use crate::model::{ApiError, kind_id};
use crate::store::{ChangeEntry, ListQuery, Store};

/// Auxiliary key of the event-log revision whose drift has been written out.
pub(super) const FOLLOWED_KEY: &[u8] = crate::aux_keys::DRIFT_FOLLOWED.as_bytes();

#[derive(Serialize, Deserialize)]
pub(super) enum MemoryRecord {
    V1 { desired: Vec<(String, String)> },
}

/// What the engine knows of one device.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub own: Vec<(String, Want)>,
    pub declared: Declared,
    /// Current drift items (as the body holds them once written).
    pub items: Vec<pb::DriftItem>,
    /// Desired text per field at the last evaluation; None until read from the store.
    pub desired_memory: Option<BTreeMap<String, String>>,
    /// None until loaded; `Some(None)` when the device never reported.
    pub observed: Option<Option<ObservedView>>,
}

impl Entry {
    pub fn from_device(d: &pb::Device) -> Self {
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

/// A desired-state change read from the event log.
#[derive(Debug)]
pub(super) enum LogChange {
    /// A profile written (`Some`) or deleted (`None`).
    Profile {
        name: String,
        profile: Option<CompiledProfile>,
    },
    /// A device created or written.
    Device { id: String, device: Box<pb::Device> },
    /// A device deleted.
    DeviceDeleted { id: String, name: String },
}

impl LogChange {
    /// The change an event-log entry records; None for kinds drift does not follow (and for
    /// bodies that do not decode, which the store never holds).
    pub fn of(c: &ChangeEntry) -> Option<Self> {
        if c.kind == kind_id(ResourceKind::Profile) {
            let profile = c
                .after
                .as_ref()
                .and_then(|b| match pb::Resource::decode(b.as_slice()) {
                    Ok(pb::Resource {
                        resource: Some(R::Profile(p)),
                    }) => Some(CompiledProfile::new(&p)),
                    _ => None,
                });
            return Some(Self::Profile {
                name: c.name.clone(),
                profile,
            });
        }
        if c.kind != kind_id(ResourceKind::Device) {
            return None;
        }
        match &c.after {
            None => Some(Self::DeviceDeleted {
                id: c.id.clone(),
                name: c.name.clone(),
            }),
            Some(body) => match pb::Resource::decode(body.as_slice()) {
                Ok(pb::Resource {
                    resource: Some(R::Device(d)),
                }) => Some(Self::Device {
                    id: c.id.clone(),
                    device: Box::new(d),
                }),
                _ => None,
            },
        }
    }
}

/// A pass's result for one device.
#[derive(Debug)]
pub(super) struct Write {
    pub id: String,
    pub name: String,
    /// New items, when they changed.
    pub items: Option<Vec<pb::DriftItem>>,
    /// New desired memory, when it changed.
    pub memory: Option<BTreeMap<String, String>>,
}

#[derive(Default)]
pub(super) struct State {
    pub profiles: BTreeMap<String, CompiledProfile>,
    pub devices: HashMap<String, Entry>,
    /// Device name → id.
    pub ids: HashMap<String, String>,
    /// Event-log revision consumed so far.
    pub followed: u64,
    pub package_sets: PackageSets,
    /// Campaign layers: device id → campaign id → layer (kept apart from `devices`, so a
    /// layer that arrives before the engine has followed the device's creation is not lost).
    pub overlays: HashMap<String, BTreeMap<String, Overlay>>,
}

impl State {
    /// Reads profiles and devices (a page at a time: never every body at once).
    pub fn load(store: &dyn Store) -> Result<Self, ApiError> {
        let revision = store.revision();
        // Resume after the last pass whose writes were applied: changes followed but not yet
        // written out when the server stopped are taken in again.
        let resume = store
            .aux_get(FOLLOWED_KEY)
            .map_err(store_err)?
            .and_then(|v| Some(u64::from_be_bytes(v.as_slice().try_into().ok()?)))
            .filter(|f| *f <= revision)
            .unwrap_or(revision);
        let mut state = State {
            followed: resume,
            overlays: super::overlays::load(store)?,
            ..State::default()
        };
        for_each_object(store, ResourceKind::Profile, |o| {
            if let Ok(pb::Resource {
                resource: Some(R::Profile(p)),
            }) = pb::Resource::decode(o.body.as_slice())
            {
                state
                    .profiles
                    .insert(o.name.clone(), CompiledProfile::new(&p));
            }
        })?;
        for_each_object(store, ResourceKind::Device, |o| {
            if let Ok(pb::Resource {
                resource: Some(R::Device(d)),
            }) = pb::Resource::decode(o.body.as_slice())
            {
                state.ids.insert(o.name.clone(), o.id.clone());
                state.devices.insert(o.id, Entry::from_device(&d));
            }
        })?;
        Ok(state)
    }

    /// Takes in a device's changed observed sections: marks it when something drift compares
    /// may have changed (re-reading only those sections into a loaded view).
    pub fn observed(
        &mut self,
        store: &dyn Store,
        id: String,
        sections: u32,
        dirty: &mut HashSet<String>,
    ) -> Result<(), ApiError> {
        let Some(e) = self.devices.get_mut(&id) else {
            return Ok(());
        };
        match &mut e.observed {
            Some(Some(view)) if view.facts_json.is_none() && sections != u32::MAX => {
                if sections & RELEVANT == 0 {
                    // Only sensors, SMART, ... changed: nothing drift compares.
                    return Ok(());
                }
                let before = view.clone();
                views::refresh_view(store, &mut self.package_sets, &id, view, sections)?;
                if view.same_as(&before) {
                    // Uptime moved, nothing drift compares did.
                    return Ok(());
                }
            }
            _ => e.observed = None,
        }
        dirty.insert(id);
        Ok(())
    }

    /// Takes in a campaign's layer of a device, put or removed.
    pub fn overlay(
        &mut self,
        device: String,
        campaign: String,
        overlay: Option<Overlay>,
        dirty: &mut HashSet<String>,
    ) {
        match overlay {
            Some(o) => {
                self.overlays
                    .entry(device.clone())
                    .or_default()
                    .insert(campaign, o);
            }
            None => {
                if let Some(m) = self.overlays.get_mut(&device) {
                    m.remove(&campaign);
                    if m.is_empty() {
                        self.overlays.remove(&device);
                    }
                }
            }
        }
        self.recompute_later(device, dirty);
    }

    /// The campaign layers of device `id`.
    pub fn overlays_of(&self, id: &str) -> Vec<&Overlay> {
        self.overlays
            .get(id)
            .map(|m| m.values().collect())
            .unwrap_or_default()
    }

    /// Marks a known device for recomputation without re-reading anything.
    pub fn recompute_later(&self, id: String, dirty: &mut HashSet<String>) {
        if self.devices.contains_key(&id) {
            dirty.insert(id);
        }
    }

    /// Reads the event log up to `upto` and takes in each change.
    pub fn follow(
        &mut self,
        store: &dyn Store,
        upto: u64,
        dirty: &mut HashSet<String>,
    ) -> Result<(), ApiError> {
        while self.followed < upto {
            let changes = store
                .changes(self.followed, upto, 4096)
                .map_err(store_err)?;
            let Some(last) = changes.last().map(|c| c.revision) else {
                self.followed = upto;
                break;
            };
            for c in &changes {
                if let Some(change) = LogChange::of(c) {
                    self.apply(change, dirty);
                }
            }
            self.followed = last;
        }
        Ok(())
    }

    /// Takes in one desired-state change: marks the devices whose effective state it may move.
    pub fn apply(&mut self, change: LogChange, dirty: &mut HashSet<String>) {
        match change {
            LogChange::Profile { name, profile } => {
                let old = self.profiles.remove(&name);
                for (id, e) in &self.devices {
                    if old.as_ref().is_some_and(|p| p.selects(&e.labels))
                        || profile.as_ref().is_some_and(|p| p.selects(&e.labels))
                    {
                        dirty.insert(id.clone());
                    }
                }
                if let Some(p) = profile {
                    self.profiles.insert(name, p);
                }
            }
            LogChange::DeviceDeleted { id, name } => {
                // Only the engine's memory: the delete's own batch removed the device's records.
                self.devices.remove(&id);
                self.overlays.remove(&id);
                if self.ids.get(&name) == Some(&id) {
                    self.ids.remove(&name);
                }
                dirty.remove(&id);
            }
            LogChange::Device { id, device } => {
                let fresh = Entry::from_device(&device);
                match self.devices.get_mut(&id) {
                    Some(e) => {
                        // The engine's own writes (and health changes) touch only status.
                        if !e.same_desired_inputs(&fresh) {
                            e.labels = fresh.labels;
                            e.own = fresh.own;
                            e.declared = fresh.declared;
                            dirty.insert(id.clone());
                        }
                        // Whoever wrote it, the body holds the items now (events are
                        // followed in order, so the engine's own write comes last).
                        e.items = fresh.items;
                    }
                    None => {
                        self.ids.insert(fresh.name.clone(), id.clone());
                        self.devices.insert(id.clone(), fresh);
                        dirty.insert(id);
                    }
                }
            }
        }
    }

    /// Recomputes `dirty` devices at time `now`; returns the writes for those whose drift
    /// changed.
    pub fn recompute(
        &mut self,
        store: &dyn Store,
        dirty: HashSet<String>,
        now: pbjson_types::Timestamp,
    ) -> Vec<Write> {
        let State {
            profiles,
            devices,
            package_sets,
            overlays,
            ..
        } = self;
        let profiles: Vec<&CompiledProfile> = profiles.values().collect();
        let mut writes = Vec::new();
        for id in dirty {
            let Some(e) = devices.get_mut(&id) else {
                continue;
            };
            let layers: Vec<&Overlay> = overlays
                .get(&id)
                .map(|m| m.values().collect())
                .unwrap_or_default();
            let (eff, _) = desired::layered(&profiles, &e.labels, &e.own, &layers);
            let needs_json = eff.values().any(|s| matches!(s.want, Want::Expect(_)));
            let reload = match &e.observed {
                None => true,
                Some(Some(v)) => needs_json && v.facts_json.is_none(),
                Some(None) => false,
            };
            // One device's unreadable records must not stop the others.
            if reload {
                match views::load_view(store, package_sets, &id, needs_json) {
                    Ok(v) => e.observed = Some(v),
                    Err(err) => {
                        tracing::error!(device = %e.name, error = %err, "cannot read observed facts for drift");
                        continue;
                    }
                }
            }
            if e.desired_memory.is_none() {
                match load_memory(store, &id) {
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
                    });
                    e.items.clear();
                }
                continue;
            };
            let findings = compare::evaluate(&eff, &e.declared, view);
            let memory = Memory {
                desired: e.desired_memory.clone().unwrap_or_default(),
                items: e.items.clone(),
            };
            let next = compare::reconcile(
                &memory,
                compare::desired_texts(&eff, &e.declared),
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
                });
                e.items = next.items;
                e.desired_memory = Some(next.desired);
            }
        }
        writes
    }

    /// Loads a device's observed view where `needs_json` asks more than the cached one holds.
    pub fn ensure_view(
        &mut self,
        store: &dyn Store,
        id: &str,
        needs_json: bool,
    ) -> Result<(), ApiError> {
        let loaded = match self.devices.get(id).map(|e| &e.observed) {
            Some(Some(Some(v))) => !needs_json || v.facts_json.is_some(),
            Some(Some(None)) => true,
            _ => false,
        };
        if !loaded {
            let v = views::load_view(store, &mut self.package_sets, id, needs_json)?;
            if let Some(e) = self.devices.get_mut(id) {
                e.observed = Some(v);
            }
        }
        Ok(())
    }
}

fn load_memory(store: &dyn Store, id: &str) -> Result<BTreeMap<String, String>, ApiError> {
    let Some(raw) = store.aux_get(&memory_key(id)).map_err(store_err)? else {
        return Ok(BTreeMap::new());
    };
    match postcard::from_bytes::<MemoryRecord>(&raw) {
        Ok(MemoryRecord::V1 { desired }) => Ok(desired.into_iter().collect()),
        Err(e) => Err(ApiError::Internal(format!("corrupt drift memory: {e}"))),
    }
}

/// The stored form of a device's desired memory.
pub(super) fn encode_memory(m: &BTreeMap<String, String>) -> Result<Vec<u8>, postcard::Error> {
    let rec = MemoryRecord::V1 {
        desired: m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    };
    postcard::to_stdvec(&rec)
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
