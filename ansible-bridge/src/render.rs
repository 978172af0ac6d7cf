//! Renders an export as Ansible's dynamic inventory JSON: the groups, `all`/`ungrouped`, and
//! `_meta.hostvars` for every host (so Ansible never runs the script once per host).
//!
//! Pure: the export and the instant come in, JSON goes out. The inventory hostname is the
//! device name. Groups (names sanitized as Ansible does, see [`safe_group_name`]):
//! `kind_<kind>`, `site_<site>`, `rack_<rack>`, `role_<role>`, `lifecycle_<lifecycle>`,
//! `health_<ok|warning|critical|unknown>`, `drift_yes`/`drift_no` (whether `status.drift` lists
//! anything), `label_<key>_<value>` for every label, and `in_window` (hosts whose maintenance
//! window is open at the instant). Hostvars: see [`hostvars`].

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use muster::pb;
use muster::window::Schedule;
use serde_json::{Map, Value, json};

use crate::client::Export;

/// Ansible's rule for group names (`ansible.inventory.group.to_safe_group_name`): every
/// character outside `[A-Za-z0-9_]` becomes `_`.
pub fn safe_group_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn enum_name(s: &str) -> String {
    s.to_ascii_lowercase()
}

fn kind_name(k: i32) -> String {
    match pb::DeviceKind::try_from(k) {
        Ok(pb::DeviceKind::Unspecified) | Err(_) => "unspecified".into(),
        Ok(k) => enum_name(k.as_str_name()),
    }
}

fn lifecycle_name(l: i32) -> String {
    match pb::Lifecycle::try_from(l) {
        Ok(pb::Lifecycle::Unspecified) | Err(_) => "unspecified".into(),
        Ok(l) => enum_name(l.as_str_name()),
    }
}

/// A device that never reported has no health: it is `unknown` like a silent one.
fn health_name(h: i32) -> String {
    match pb::Health::try_from(h) {
        Ok(pb::Health::Unspecified) | Err(_) => "unknown".into(),
        Ok(h) => enum_name(h.as_str_name()),
    }
}

/// The hostvars of one device:
///
/// - `ansible_host`, `ansible_port`, `ansible_user` from the device's SSH endpoint
///   (`ansible_host` falls back to the management address; the port defaults to 22);
/// - `muster_id`, `muster_kind`, `muster_site`, `muster_rack`, `muster_role`,
///   `muster_lifecycle`, `muster_health`, `muster_serial`, `muster_asset_tag`, `muster_vendor`,
///   `muster_model`, `muster_parent`, `muster_management_address`, `muster_labels` (a map),
///   `muster_drift_count`, `muster_os_release`, `muster_kernel`, `muster_facts_origin`
///   (`agent`, `ansible`, or empty when no facts were ever stored), `muster_revision`;
/// - `muster_in_window` (bool) when windows were evaluated.
pub fn hostvars(d: &pb::ExportDevice, in_window: Option<bool>) -> Map<String, Value> {
    let mut v = Map::new();
    let Some(dev) = &d.device else {
        return v;
    };
    let meta = dev.meta.clone().unwrap_or_default();
    let status = dev.status.clone().unwrap_or_default();
    let ssh = dev.ssh.clone().unwrap_or_default();
    let host = if ssh.host.is_empty() {
        dev.management_address.clone()
    } else {
        ssh.host.clone()
    };
    if !host.is_empty() {
        v.insert("ansible_host".into(), json!(host));
        v.insert(
            "ansible_port".into(),
            json!(if ssh.port == 0 { 22 } else { ssh.port }),
        );
    }
    if !ssh.user.is_empty() {
        v.insert("ansible_user".into(), json!(ssh.user));
    }
    let os = d.os.clone().unwrap_or_default();
    let labels: BTreeMap<&String, &String> = meta.labels.iter().collect();
    for (k, val) in [
        ("muster_id", json!(meta.id)),
        ("muster_kind", json!(kind_name(dev.kind))),
        ("muster_site", json!(dev.site)),
        ("muster_rack", json!(dev.rack)),
        ("muster_role", json!(dev.role)),
        ("muster_lifecycle", json!(lifecycle_name(dev.lifecycle))),
        ("muster_health", json!(health_name(status.health))),
        ("muster_serial", json!(dev.serial)),
        ("muster_asset_tag", json!(dev.asset_tag)),
        ("muster_vendor", json!(dev.vendor)),
        ("muster_model", json!(dev.model)),
        ("muster_parent", json!(dev.parent)),
        ("muster_management_address", json!(dev.management_address)),
        ("muster_labels", json!(labels)),
        ("muster_drift_count", json!(status.drift.len())),
        ("muster_os_release", json!(os.release)),
        ("muster_kernel", json!(os.kernel)),
        ("muster_facts_origin", json!(status.origin)),
        ("muster_revision", json!(meta.revision)),
    ] {
        v.insert(k.into(), val);
    }
    if let Some(w) = in_window {
        v.insert("muster_in_window".into(), json!(w));
    }
    v
}

/// The groups one device belongs to (sanitized names).
pub fn groups_of(d: &pb::Device, in_window: bool) -> Vec<String> {
    let status = d.status.clone().unwrap_or_default();
    let mut g = vec![
        format!("kind_{}", kind_name(d.kind)),
        format!("lifecycle_{}", lifecycle_name(d.lifecycle)),
        format!("health_{}", health_name(status.health)),
        if status.drift.is_empty() {
            "drift_no".to_string()
        } else {
            "drift_yes".to_string()
        },
    ];
    for (prefix, value) in [("site", &d.site), ("rack", &d.rack), ("role", &d.role)] {
        if !value.is_empty() {
            g.push(format!("{prefix}_{value}"));
        }
    }
    if let Some(m) = &d.meta {
        for (k, v) in &m.labels {
            g.push(format!("label_{k}_{v}"));
        }
    }
    if in_window {
        g.push("in_window".into());
    }
    g.iter().map(|n| safe_group_name(n)).collect()
}

/// How to render.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// List only hosts whose maintenance window is open at `now`.
    pub only_in_window: bool,
    /// The instant windows are evaluated at.
    pub now: DateTime<Utc>,
}

/// Parses every window; one that cannot be evaluated is reported on stderr by the caller and
/// then treated on the safe side: a broken maintenance window opens nothing, a broken freeze
/// is taken as always open (so it closes every host it selects).
pub fn schedules(e: &Export) -> (Vec<Schedule>, Vec<String>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for w in &e.windows {
        match Schedule::parse(w) {
            Ok(s) => out.push(s),
            Err(err) => {
                problems.push(err.to_string());
                if w.freeze {
                    let mut always = w.clone();
                    always.cron = String::new();
                    always.ranges = vec![pb::TimeRange {
                        start: Some(pbjson_types::Timestamp {
                            seconds: i64::MIN / 2,
                            nanos: 0,
                        }),
                        end: Some(pbjson_types::Timestamp {
                            seconds: i64::MAX / 2,
                            nanos: 0,
                        }),
                    }];
                    if let Ok(s) = Schedule::parse(&always) {
                        out.push(s);
                    } else {
                        // Its selector is broken too: it cannot be matched, so nothing opens.
                        always.selector = String::new();
                        if let Ok(s) = Schedule::parse(&always) {
                            out.push(s);
                        }
                    }
                }
            }
        }
    }
    (out, problems)
}

/// The full `--list` document.
pub fn list(e: &Export, opts: Options, windows: &[Schedule]) -> Value {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut vars = Map::new();
    let mut ungrouped = Vec::new();
    for d in &e.devices {
        let Some(dev) = &d.device else { continue };
        let name = dev
            .meta
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        if name.is_empty() {
            continue;
        }
        let labels = dev.meta.as_ref().map(|m| &m.labels);
        let open = muster::window::in_window(
            windows,
            |k| labels.and_then(|l| l.get(k)).map(String::as_str),
            opts.now,
        );
        if opts.only_in_window && !open {
            continue;
        }
        let gs = groups_of(dev, open);
        if gs.is_empty() {
            ungrouped.push(name.clone());
        }
        for g in gs {
            groups.entry(g).or_default().push(name.clone());
        }
        vars.insert(name, Value::Object(hostvars(d, Some(open))));
    }
    let mut doc = Map::new();
    let mut children: Vec<String> = groups.keys().cloned().collect();
    children.push("ungrouped".into());
    for (g, mut hosts) in groups {
        hosts.sort();
        doc.insert(g, json!({ "hosts": hosts }));
    }
    ungrouped.sort();
    doc.insert("ungrouped".into(), json!({ "hosts": ungrouped }));
    doc.insert("all".into(), json!({ "children": children }));
    doc.insert("_meta".into(), json!({ "hostvars": vars }));
    Value::Object(doc)
}

/// The `--host NAME` document: that host's vars, `{}` for a host muster does not know.
pub fn host(e: &Export, name: &str, opts: Options, windows: &[Schedule]) -> Value {
    let Some(d) = e.devices.iter().find(|d| {
        d.device
            .as_ref()
            .and_then(|x| x.meta.as_ref())
            .is_some_and(|m| m.name == name)
    }) else {
        return json!({});
    };
    let labels = d
        .device
        .as_ref()
        .and_then(|x| x.meta.as_ref())
        .map(|m| &m.labels);
    let open = muster::window::in_window(
        windows,
        |k| labels.and_then(|l| l.get(k)).map(String::as_str),
        opts.now,
    );
    Value::Object(hostvars(d, Some(open)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn device(
        name: &str,
        labels: &[(&str, &str)],
        health: pb::Health,
        drift: usize,
    ) -> pb::ExportDevice {
        pb::ExportDevice {
            device: Some(pb::Device {
                meta: Some(pb::ObjectMeta {
                    name: name.into(),
                    labels: labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                }),
                kind: pb::DeviceKind::Server as i32,
                site: "fra-1".into(),
                lifecycle: pb::Lifecycle::Active as i32,
                ssh: Some(pb::SshEndpoint {
                    host: "127.0.0.1".into(),
                    port: 2201,
                    user: "ops".into(),
                    ..Default::default()
                }),
                status: Some(pb::ObservedState {
                    health: health as i32,
                    drift: vec![pb::DriftItem::default(); drift],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            os: None,
        }
    }

    #[test]
    fn group_names_are_sanitized_like_ansible() {
        assert_eq!(
            safe_group_name("label_app.kubernetes.io/name_web-1"),
            "label_app_kubernetes_io_name_web_1"
        );
        assert_eq!(safe_group_name("site_fra1"), "site_fra1");
    }

    #[test]
    fn list_has_groups_meta_and_in_window() {
        let e = Export {
            devices: vec![
                device("a", &[("env", "prod")], pb::Health::Ok, 0),
                device("b", &[("env", "dev")], pb::Health::Critical, 2),
            ],
            windows: vec![pb::Window {
                meta: Some(pb::ObjectMeta {
                    name: "w".into(),
                    ..Default::default()
                }),
                selector: "env=prod".into(),
                cron: "0 2 * * *".into(),
                duration: Some(pbjson_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let (ws, problems) = schedules(&e);
        assert!(problems.is_empty());
        let now = DateTime::parse_from_rfc3339("2026-01-01T02:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let doc = list(
            &e,
            Options {
                only_in_window: false,
                now,
            },
            &ws,
        );
        assert_eq!(doc["site_fra_1"]["hosts"], json!(["a", "b"]));
        assert_eq!(doc["health_ok"]["hosts"], json!(["a"]));
        assert_eq!(doc["health_critical"]["hosts"], json!(["b"]));
        assert_eq!(doc["drift_yes"]["hosts"], json!(["b"]));
        assert_eq!(doc["label_env_prod"]["hosts"], json!(["a"]));
        assert_eq!(doc["in_window"]["hosts"], json!(["a"]));
        let a = &doc["_meta"]["hostvars"]["a"];
        assert_eq!(a["ansible_host"], "127.0.0.1");
        assert_eq!(a["ansible_port"], 2201);
        assert_eq!(a["ansible_user"], "ops");
        assert_eq!(a["muster_labels"], json!({"env": "prod"}));
        assert_eq!(doc["_meta"]["hostvars"]["b"]["muster_drift_count"], 2);
        let only = list(
            &e,
            Options {
                only_in_window: true,
                now,
            },
            &ws,
        );
        assert_eq!(only["_meta"]["hostvars"].as_object().unwrap().len(), 1);
        let later = now + chrono::Duration::hours(1);
        let none = list(
            &e,
            Options {
                only_in_window: true,
                now: later,
            },
            &ws,
        );
        assert!(none["_meta"]["hostvars"].as_object().unwrap().is_empty());
        assert_eq!(
            host(
                &e,
                "zz",
                Options {
                    only_in_window: false,
                    now
                },
                &ws
            ),
            json!({})
        );
    }

    #[test]
    fn a_broken_freeze_closes_everything_it_selects() {
        let e = Export {
            windows: vec![
                pb::Window {
                    meta: Some(pb::ObjectMeta {
                        name: "open".into(),
                        ..Default::default()
                    }),
                    cron: "* * * * *".into(),
                    duration: Some(pbjson_types::Duration {
                        seconds: 60,
                        nanos: 0,
                    }),
                    ..Default::default()
                },
                pb::Window {
                    meta: Some(pb::ObjectMeta {
                        name: "f".into(),
                        ..Default::default()
                    }),
                    cron: "bad".into(),
                    freeze: true,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let (ws, problems) = schedules(&e);
        assert_eq!(problems.len(), 1);
        assert!(!muster::window::in_window(&ws, |_| None, Utc::now()));
    }
}
