//! Answers from the engine's state: the drift of a selection, one device's items, and what a
//! change of profiles and devices would do (plans and the conflict check of an apply). Run
//! by the engine's task on its own state, between passes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use muster::pb;
use muster::selector::Selector;

use super::compare::{self, Declared, Memory};
use super::desired::{self, CompiledProfile, Effective, Want};
use super::state::{Entry, State};
use crate::model::ApiError;
use crate::store::Store;

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

/// Drift of the devices `selector` chooses.
pub(super) fn drift(
    st: &State,
    selector: &Selector,
    field_prefix: &str,
    summary_only: bool,
) -> pb::DriftResponse {
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

/// One device's current item for `field` (for `drift accept`).
pub(super) fn item(st: &State, device: &str, field: &str) -> Option<pb::DriftItem> {
    let id = st.ids.get(device)?;
    st.devices
        .get(id)?
        .items
        .iter()
        .find(|i| i.field == field)
        .cloned()
}

/// A device the plan evaluates: its desired inputs.
struct Subject<'a> {
    labels: &'a BTreeMap<String, String>,
    own: &'a [(String, Want)],
    declared: &'a Declared,
}

/// One device of a plan, desired side worked out.
struct Row {
    name: String,
    id: Option<String>,
    existed: bool,
    changes: Vec<pb::FieldChange>,
    after: Effective,
    declared: Declared,
}

/// What the given new versions of profiles and devices would do: per device, the change of
/// effective desired state and the drift afterwards; and the conflicts they create.
pub(super) fn plan(
    st: &mut State,
    store: &dyn Store,
    change: &PlannedChange,
    include_unchanged: bool,
    now: pbjson_types::Timestamp,
) -> Result<pb::PlanResponse, ApiError> {
    let mut resp = pb::PlanResponse {
        revision: st.followed,
        ..Default::default()
    };
    let (rows, conflicts) = desired_rows(st, change);
    // Then the observed views (loaded where missing), then the drift each device would be in.
    for row in &rows {
        let Some(id) = &row.id else { continue };
        let needs_json = row
            .after
            .values()
            .any(|s| matches!(s.want, Want::Expect(_)));
        st.ensure_view(store, id, needs_json)?;
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
            let findings = compare::evaluate(&row.after, &row.declared, view);
            drift_after = compare::reconcile(
                &memory,
                compare::desired_texts(&row.after, &row.declared),
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

/// The desired side of a plan: every device the change touches, with its effective state
/// before and after, and the conflicts the change creates.
fn desired_rows(st: &State, change: &PlannedChange) -> (Vec<Row>, Vec<pb::ProfileConflict>) {
    let before: Vec<&CompiledProfile> = st.profiles.values().collect();
    let mut after_map: BTreeMap<&str, &CompiledProfile> =
        st.profiles.iter().map(|(k, v)| (k.as_str(), v)).collect();
    for p in &change.profiles {
        after_map.insert(p.name.as_str(), p);
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
    let mut conflicts = Vec::new();
    let mut rows = Vec::with_capacity(subjects.len());
    for (name, id) in subjects {
        let current = id.as_ref().and_then(|i| st.devices.get(i));
        let planned = planned_by_name.get(name.as_str()).copied();
        // A campaign's layer stays over the device whatever the change (it is not part of it).
        let layers = id.as_ref().map(|i| st.overlays_of(i)).unwrap_or_default();
        let before_eff = current.map(|e| desired::layered(&before, &e.labels, &e.own, &layers).0);
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
        let (after_eff, cs) = desired::layered(&after, subject.labels, subject.own, &layers);
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
    (rows, conflicts)
}

/// Field-level differences between two effective states.
pub(super) fn field_changes(before: Option<&Effective>, after: &Effective) -> Vec<pb::FieldChange> {
    let empty = Effective::new();
    let before = before.unwrap_or(&empty);
    let mut out = Vec::new();
    let keys: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::desired::{Setting, Source};

    fn setting(want: &str, source: Source) -> Setting {
        Setting {
            want: Want::Text(want.into()),
            source,
        }
    }

    fn item(field: &str, cause: &str) -> pb::DriftItem {
        pb::DriftItem {
            field: field.into(),
            cause: cause.into(),
            ..Default::default()
        }
    }

    fn device(st: &mut State, id: &str, name: &str, tier: &str, items: Vec<pb::DriftItem>) {
        let mut e = Entry::from_device(&pb::Device {
            meta: Some(pb::ObjectMeta {
                name: name.into(),
                labels: [("tier".to_string(), tier.to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        e.items = items;
        st.ids.insert(name.into(), id.into());
        st.devices.insert(id.into(), e);
    }

    #[test]
    fn field_changes_name_what_moved_and_who_set_it() {
        let mut before = Effective::new();
        before.insert("kernel".into(), setting("6.1", Source::Device));
        before.insert("timezone".into(), setting("UTC", Source::Device));
        let mut after = before.clone();
        after.insert(
            "kernel".into(),
            setting("6.2", Source::Profile("base".into())),
        );
        after.remove("timezone");
        after.insert("os.release".into(), setting("12", Source::Device));
        let changes = field_changes(Some(&before), &after);
        let by_field: BTreeMap<&str, &pb::FieldChange> =
            changes.iter().map(|c| (c.field.as_str(), c)).collect();
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert_eq!(by_field["kernel"].before, "6.1");
        assert_eq!(by_field["kernel"].after, "6.2");
        assert_eq!(by_field["kernel"].source, "profile/base");
        assert_eq!(by_field["timezone"].after, "");
        assert_eq!(by_field["os.release"].before, "");
        // A device that did not exist: everything is new.
        assert_eq!(field_changes(None, &after).len(), 2);
        assert!(field_changes(Some(&after), &after).is_empty());
    }

    #[test]
    fn drift_summaries_count_devices_per_field_and_cause() {
        let mut st = State::default();
        device(&mut st, "1", "web-1", "a", vec![item("kernel", "pending")]);
        device(
            &mut st,
            "2",
            "web-2",
            "a",
            vec![item("kernel", "unexpected"), item("timezone", "pending")],
        );
        device(&mut st, "3", "db-1", "b", vec![]);
        let all = drift(&st, &Selector::default(), "", false);
        assert_eq!((all.devices, all.drifting), (3, 2));
        assert_eq!(all.fields[0].field, "kernel");
        assert_eq!((all.fields[0].pending, all.fields[0].unexpected), (1, 1));
        let names: Vec<&str> = all.items.iter().map(|d| d.device.as_str()).collect();
        assert_eq!(names, ["web-1", "web-2"]);
        let tier_b = drift(&st, &Selector::parse("tier=b").unwrap(), "", false);
        assert_eq!((tier_b.devices, tier_b.drifting), (1, 0));
        let tz = drift(&st, &Selector::default(), "time", true);
        assert_eq!(tz.drifting, 1);
        assert!(tz.items.is_empty(), "summary only");
        assert_eq!(
            super::item(&st, "web-2", "timezone").map(|i| i.cause),
            Some("pending".into())
        );
        assert!(super::item(&st, "web-2", "power").is_none());
        assert!(super::item(&st, "nope", "kernel").is_none());
    }

    #[test]
    fn plans_touch_the_devices_an_old_or_new_selector_chooses_and_report_conflicts() {
        let mut st = State::default();
        device(&mut st, "1", "web-1", "a", vec![]);
        device(&mut st, "2", "db-1", "b", vec![]);
        let profile = |name: &str, selector: &str, kernel: &str| {
            CompiledProfile::new(&pb::Profile {
                meta: Some(pb::ObjectMeta {
                    name: name.into(),
                    ..Default::default()
                }),
                selector: selector.into(),
                priority: 5,
                spec: Some(pb::DesiredState {
                    kernel: kernel.into(),
                    ..Default::default()
                }),
                description: String::new(),
            })
        };
        st.profiles
            .insert("base".into(), profile("base", "tier=a", "6.1"));
        // Moving the selector from tier=a to tier=b touches both devices.
        let change = PlannedChange {
            profiles: vec![profile("base", "tier=b", "6.1")],
            devices: Vec::new(),
        };
        let (rows, conflicts) = desired_rows(&st, &change);
        let touched: Vec<(&str, usize)> = rows
            .iter()
            .map(|r| (r.name.as_str(), r.changes.len()))
            .collect();
        assert_eq!(touched, [("db-1", 1), ("web-1", 1)]);
        assert!(conflicts.is_empty());
        // A second profile of equal priority setting the same field differently conflicts.
        let change = PlannedChange {
            profiles: vec![profile("other", "tier=a", "6.2")],
            devices: Vec::new(),
        };
        let (_, conflicts) = desired_rows(&st, &change);
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        assert_eq!(conflicts[0].device, "web-1");
        assert_eq!(conflicts[0].field, "kernel");
        // A new device is planned as created.
        let change = PlannedChange {
            profiles: Vec::new(),
            devices: vec![PlannedDevice {
                name: "web-9".into(),
                labels: [("tier".to_string(), "a".to_string())].into(),
                own: Vec::new(),
                declared: Declared::default(),
            }],
        };
        let (rows, _) = desired_rows(&st, &change);
        assert_eq!(rows.len(), 1);
        assert!(!rows[0].existed && rows[0].id.is_none());
        assert_eq!(rows[0].changes[0].after, "6.1");
    }
}
