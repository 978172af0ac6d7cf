//! Renders an export as Ansible's dynamic inventory JSON: the groups, `all`/`ungrouped`, and
//! `_meta.hostvars` for every host (so Ansible never runs the script once per host).
//!
//! Pure: the export and the instant come in, JSON goes out. The inventory hostname is the
//! device name. Groups (names sanitized as Ansible does, see [`safe_group_name`]):
//! `kind_<kind>`, `site_<site>`, `rack_<rack>`, `role_<role>`, `lifecycle_<lifecycle>`,
//! `health_<ok|warning|critical|unknown>`, `drift_yes`/`drift_no` (whether `status.drift` lists
//! anything), `label_<key>_<value>` for every label, and `in_window` (hosts whose maintenance
//! window is open at the instant). Hostvars: see [`HostVars`].
//!
//! Every string hostvar is written as `{"__ansible_unsafe": "..."}` ([`Unsafe`]): the values
//! come from the store (names, labels, models, facts reported by hosts) and must reach Ansible
//! as data it never templates. Devices labelled `muster.io/discovered` (VMs an agent reported,
//! not yet adopted by an operator) are left out entirely ([`is_discovered`]): an agent-chosen
//! name must not become a host Ansible connects to.

mod groups;
mod hostvars;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use muster::pb;
use muster::window::Schedule;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Value, json};

use crate::client::Export;

use groups::{group_keys, group_name};
pub use groups::{groups_of, safe_group_name};
pub use hostvars::{HostVars, Unsafe};

/// The label the server puts on VM devices it created from a hypervisor's report
/// (`server/src/agents.rs`, `DISCOVERED_LABEL`). An operator adopts such a device by removing it.
pub const DISCOVERED_LABEL: &str = "muster.io/discovered";

/// Whether a device is an unadopted discovered one: never listed as a host, because its name
/// came from an agent and Ansible would connect to that name.
pub fn is_discovered(d: &pb::Device) -> bool {
    d.meta
        .as_ref()
        .is_some_and(|m| m.labels.contains_key(DISCOVERED_LABEL))
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

/// Writes the full `--list` document.
pub fn write_list<W: std::io::Write>(
    w: W,
    e: &Export,
    opts: Options,
    windows: &[Schedule],
) -> serde_json::Result<()> {
    type Key<'a> = (&'static str, &'a str, &'a str);
    // Group index: (prefix, value, value) -> position in `groups`.
    let mut index: HashMap<Key<'_>, usize> = HashMap::new();
    let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
    let mut hosts: Vec<HostVars<'_>> = Vec::with_capacity(e.devices.len());
    let mut names: Vec<&str> = Vec::with_capacity(e.devices.len());
    let mut keys = Vec::new();
    for d in &e.devices {
        let Some(dev) = &d.device else { continue };
        let name = dev.meta.as_ref().map_or("", |m| m.name.as_str());
        if name.is_empty() || is_discovered(dev) {
            continue;
        }
        let open = !windows.is_empty() && {
            let labels = dev.meta.as_ref().map(|m| &m.labels);
            muster::window::in_window(
                windows,
                |k| labels.and_then(|l| l.get(k)).map(String::as_str),
                opts.now,
            )
        };
        if opts.only_in_window && !open {
            continue;
        }
        group_keys(dev, open, &mut keys);
        for k in &keys {
            let i = *index.entry(*k).or_insert_with(|| {
                groups.push((group_name(k.0, k.1, k.2), Vec::new()));
                groups.len() - 1
            });
            groups[i].1.push(name);
        }
        names.push(name);
        hosts.push(HostVars {
            device: dev,
            os: d.os.as_ref(),
            in_window: Some(open),
        });
    }
    // Distinct pairs can sanitize to one name (`a.b` and `a_b`): merge them, as Ansible would.
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    let mut merged: Vec<(String, Vec<&str>)> = Vec::with_capacity(groups.len());
    for (g, hs) in groups {
        match merged.last_mut() {
            Some((last, v)) if *last == g => v.extend(hs),
            _ => merged.push((g, hs)),
        }
    }
    for (_, hs) in &mut merged {
        hs.sort_unstable();
        hs.dedup();
    }
    // Every host has a kind group, so `ungrouped` is empty; it is listed because Ansible
    // expects it.
    let doc = ListDoc {
        groups: &merged,
        names: &names,
        hosts: &hosts,
    };
    serde_json::to_writer(w, &doc)
}

struct ListDoc<'a> {
    groups: &'a [(String, Vec<&'a str>)],
    names: &'a [&'a str],
    hosts: &'a [HostVars<'a>],
}

struct GroupHosts<'a>(&'a [&'a str]);

impl Serialize for GroupHosts<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry("hosts", self.0)?;
        m.end()
    }
}

struct Children<'a>(&'a [(String, Vec<&'a str>)]);

impl Serialize for Children<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        let names: Vec<&str> = self
            .0
            .iter()
            .map(|g| g.0.as_str())
            .chain(["ungrouped"])
            .collect();
        m.serialize_entry("children", &names)?;
        m.end()
    }
}

struct Meta<'a>(&'a [&'a str], &'a [HostVars<'a>]);

impl Serialize for Meta<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct All<'a>(&'a [&'a str], &'a [HostVars<'a>]);
        impl Serialize for All<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(self.0.len()))?;
                for (n, h) in self.0.iter().zip(self.1) {
                    m.serialize_entry(n, h)?;
                }
                m.end()
            }
        }
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry("hostvars", &All(self.0, self.1))?;
        m.end()
    }
}

impl Serialize for ListDoc<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.groups.len() + 3))?;
        for (g, hs) in self.groups {
            m.serialize_entry(g, &GroupHosts(hs))?;
        }
        m.serialize_entry("ungrouped", &GroupHosts(&[]))?;
        m.serialize_entry("all", &Children(self.groups))?;
        m.serialize_entry("_meta", &Meta(self.names, self.hosts))?;
        m.end()
    }
}

/// The `--list` document as a JSON value (tests; the binary streams with `write_list`).
pub fn list(e: &Export, opts: Options, windows: &[Schedule]) -> Value {
    let mut buf = Vec::new();
    if write_list(&mut buf, e, opts, windows).is_err() {
        return Value::Null;
    }
    serde_json::from_slice(&buf).unwrap_or(Value::Null)
}

/// The `--host NAME` document: that host's vars, `{}` for a host muster does not know.
pub fn host(e: &Export, name: &str, opts: Options, windows: &[Schedule]) -> Value {
    let Some((dev, os)) = e.devices.iter().find_map(|d| {
        let dev = d.device.as_ref()?;
        (dev.meta.as_ref()?.name == name && !is_discovered(dev)).then_some((dev, d.os.as_ref()))
    }) else {
        return json!({});
    };
    let labels = dev.meta.as_ref().map(|m| &m.labels);
    let open = muster::window::in_window(
        windows,
        |k| labels.and_then(|l| l.get(k)).map(String::as_str),
        opts.now,
    );
    serde_json::to_value(HostVars {
        device: dev,
        os,
        in_window: Some(open),
    })
    .unwrap_or_else(|_| json!({}))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A fixed instant (2026-06-01 12:00 UTC): tests must not depend on today.
    fn fixed_now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_780_315_200, 0).unwrap()
    }

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
        insta::assert_snapshot!("ansible_list", serde_json::to_string_pretty(&doc).unwrap());
        assert_eq!(doc["site_fra_1"]["hosts"], json!(["a", "b"]));
        assert_eq!(doc["health_ok"]["hosts"], json!(["a"]));
        assert_eq!(doc["health_critical"]["hosts"], json!(["b"]));
        assert_eq!(doc["drift_yes"]["hosts"], json!(["b"]));
        assert_eq!(doc["label_env_prod"]["hosts"], json!(["a"]));
        assert_eq!(doc["in_window"]["hosts"], json!(["a"]));
        let a = &doc["_meta"]["hostvars"]["a"];
        assert_eq!(a["ansible_host"], json!({"__ansible_unsafe": "127.0.0.1"}));
        assert_eq!(a["ansible_port"], 2201);
        assert_eq!(a["ansible_user"], json!({"__ansible_unsafe": "ops"}));
        assert_eq!(
            a["muster_labels"],
            json!({"env": {"__ansible_unsafe": "prod"}})
        );
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
        assert!(!muster::window::in_window(&ws, |_| None, fixed_now()));
    }

    #[test]
    fn every_string_hostvar_is_marked_unsafe() {
        let mut d = device("a", &[("env", "{{ x }}")], pb::Health::Ok, 0);
        if let Some(dev) = d.device.as_mut() {
            dev.model = "{{ lookup('pipe','id') }}".into();
        }
        d.os = Some(pb::OsFacts {
            release: "{% raw %}".into(),
            kernel: "6.1".into(),
            ..Default::default()
        });
        let e = Export {
            devices: vec![d],
            ..Default::default()
        };
        let opts = Options {
            only_in_window: false,
            now: fixed_now(),
        };
        let doc = list(&e, opts, &[]);
        let hv = doc["_meta"]["hostvars"]["a"].as_object().unwrap();
        let mut strings = 0;
        for (k, v) in hv {
            match v {
                Value::String(_) => panic!("{k} is a plain string"),
                Value::Object(o) if k == "muster_labels" => {
                    for v in o.values() {
                        assert!(v.get("__ansible_unsafe").is_some(), "{k}: {v}");
                    }
                }
                Value::Object(o) => {
                    assert_eq!(o.len(), 1, "{k}");
                    assert!(o["__ansible_unsafe"].is_string(), "{k}");
                    strings += 1;
                }
                _ => {}
            }
        }
        assert!(strings >= 18, "{strings}");
        assert_eq!(
            hv["muster_model"],
            json!({"__ansible_unsafe": "{{ lookup('pipe','id') }}"})
        );
        assert_eq!(host(&e, "a", opts, &[])["muster_model"], hv["muster_model"]);
    }

    #[test]
    fn discovered_devices_are_not_hosts() {
        let mut vm = device("vm-x", &[(DISCOVERED_LABEL, "true")], pb::Health::Ok, 0);
        if let Some(dev) = vm.device.as_mut() {
            dev.kind = pb::DeviceKind::Vm as i32;
        }
        let e = Export {
            devices: vec![device("a", &[], pb::Health::Ok, 0), vm],
            ..Default::default()
        };
        let opts = Options {
            only_in_window: false,
            now: fixed_now(),
        };
        let doc = list(&e, opts, &[]);
        let text = doc.to_string();
        assert!(!text.contains("vm-x"), "{text}");
        assert!(doc["kind_vm"].is_null(), "{text}");
        assert_eq!(doc["_meta"]["hostvars"].as_object().unwrap().len(), 1);
        assert_eq!(host(&e, "vm-x", opts, &[]), json!({}));
    }
}
