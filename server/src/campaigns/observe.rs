//! How the engine sees hosts: their latest report (time, boot id), health and whether the
//! campaign's desired fields and `verify` rules hold on the observed facts. A small interface
//! so the engine knows nothing of the observed layer's records or the drift engine's caches;
//! [`StoreObserver`] is the real one (the observed records through `observed::load`, drift
//! through the pure `drift::compare::evaluate`, and the drift items the drift engine wrote
//! into the device's observed state for the soak's "new drift" test).

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::Arc;

use muster::pb;

use crate::drift::compare::{self, Declared};
use crate::drift::desired::{self, Effective};
use crate::inventory::Inventory;
use crate::model::ApiError;

/// What must hold on a host for the campaign: its desired fields and verify rules, compiled.
#[derive(Debug, Clone, Default)]
pub struct Expectations {
    eff: Effective,
    needs_json: bool,
}

impl Expectations {
    /// From the campaign's `desired` and `verify` (verify rules become `expect.PATH` fields).
    pub fn new(desired: Option<&pb::DesiredState>, verify: &[pb::ExpectRule]) -> Self {
        let mut want = desired.cloned().unwrap_or_default();
        want.expect.extend(verify.iter().cloned());
        let own = desired::fields_of(&want);
        let (eff, _) = desired::effective(&[], &Default::default(), &own);
        let needs_json = !want.expect.is_empty();
        Self { eff, needs_json }
    }

    /// One expect rule alone (a `wait_report` step).
    pub fn rule(rule: &pb::ExpectRule) -> Self {
        Self::new(None, std::slice::from_ref(rule))
    }
}

/// A host as last observed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    /// Unix nanoseconds of the latest report (0: never).
    pub report_nanos: i64,
    pub boot_id: String,
    /// pb::Health.
    pub health: i32,
    pub health_reasons: BTreeSet<String>,
    /// Fields of the expectations that do not hold ("packages.openssl: want 3.0.2, saw 3.0.1").
    pub unmet: Vec<String>,
    /// The device's drift items (fields), as the drift engine has them.
    pub drift: BTreeSet<String>,
}

/// Reads hosts' observed state.
pub trait Observer: Send + Sync + Debug + 'static {
    /// The latest observation of `host` judged against `expect`; None if the device is gone.
    fn observe(&self, host: &str, expect: &Expectations) -> Result<Option<Observation>, ApiError>;
}

/// The real observer.
#[derive(Debug)]
pub struct StoreObserver {
    pub inventory: Arc<Inventory>,
}

/// Health ranks for "did it get worse": OK < WARNING < UNKNOWN < CRITICAL.
pub fn health_rank(h: i32) -> u8 {
    match pb::Health::try_from(h) {
        Ok(pb::Health::Ok) => 0,
        Ok(pb::Health::Warning) => 1,
        Ok(pb::Health::Critical) => 3,
        _ => 2,
    }
}

impl Observer for StoreObserver {
    fn observe(&self, host: &str, expect: &Expectations) -> Result<Option<Observation>, ApiError> {
        let Some((obj, r)) = self.inventory.load_device(host)? else {
            return Ok(None);
        };
        let Some(pb::resource::Resource::Device(d)) = r.resource else {
            return Ok(None);
        };
        let store = &**self.inventory.store();
        // Facts only when something is compared: plans and health checks read the metadata.
        let stored = if expect.eff.is_empty() {
            crate::observed::Stored {
                meta: crate::observed::load_meta(store, &obj.id)?.1,
                ..Default::default()
            }
        } else {
            crate::observed::load(store, &obj.id)?
        };
        let mut o = Observation::default();
        if let Some(m) = &stored.meta {
            o.report_nanos = m.last_report_nanos;
            o.boot_id = m.boot_id.clone();
        }
        if let Some(s) = &d.status {
            o.health = s.health;
            o.health_reasons = s.health_reasons.iter().map(|r| r.code.clone()).collect();
        }
        if !expect.eff.is_empty() {
            let packages = stored.facts.packages.as_ref().map(|l| {
                Arc::new(
                    l.items
                        .iter()
                        .map(|p| (p.name.clone(), p.version.clone()))
                        .collect::<compare::PackageSet>(),
                )
            });
            let view = crate::drift::view_of(&stored.facts, packages, expect.needs_json);
            o.unmet = compare::evaluate(&expect.eff, &Declared::default(), &view)
                .into_iter()
                .map(|f| format!("{}: want {}, saw {}", f.field, f.desired, f.observed))
                .collect();
        }
        o.drift = d
            .status
            .as_ref()
            .map(|s| s.drift.iter().map(|i| i.field.clone()).collect())
            .unwrap_or_default();
        Ok(Some(o))
    }
}
