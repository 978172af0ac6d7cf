//! Drift: where a device's observed state differs from its effective desired state, and why.
//! Pure: the engine (`engine`) feeds it cached views and keeps its memory.
//!
//! The *cause* of a difference needs history, which `Memory` holds per device: the desired
//! value of every field at the last evaluation. A difference that appears while the desired
//! value changed is *pending* (the host has not converged yet); one that appears while the
//! desired value stayed the same is *unexpected* (the host changed under us, e.g. by hand).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use muster::pb::{self, PowerState, VersionMatch};
use muster::version::{self, PackageFormat};
use serde_json::Value;

use super::desired::{Effective, Want, power_text};

/// What a drift item says when the agent never reported the value.
pub const NOT_REPORTED: &str = "(not reported)";
/// A package that is not installed.
pub const NOT_INSTALLED: &str = "(not installed)";

/// Installed packages of one host: name → version. Hosts built from one image share one.
pub type PackageSet = HashMap<String, String>;

/// The parts of observed state drift compares, cached per device.
#[derive(Debug, Clone, Default)]
pub struct ObservedView {
    pub os_release: Option<String>,
    pub kernel: Option<String>,
    pub timezone: Option<String>,
    pub dns_servers: Option<Vec<String>>,
    pub ntp_servers: Option<Vec<String>>,
    pub sysctl: Option<BTreeMap<String, String>>,
    pub package_format: String,
    pub packages: Option<Arc<PackageSet>>,
    pub firmware_bios: Option<String>,
    pub firmware_bmc: Option<String>,
    pub power: Option<PowerState>,
    pub fru_serial: Option<String>,
    pub fru_product: Option<String>,
    /// Facts as JSON (without packages) for `expect` rules; only built for devices with rules.
    pub facts_json: Option<Arc<Value>>,
}

impl ObservedView {
    /// Whether drift would see the same thing in both (package lists are interned, so the
    /// same list is the same allocation).
    pub fn same_as(&self, other: &ObservedView) -> bool {
        let same_packages = match (&self.packages, &other.packages) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        let same_json = match (&self.facts_json, &other.facts_json) {
            (Some(a), Some(b)) => a == b,
            (None, None) => true,
            _ => false,
        };
        same_packages
            && same_json
            && self.os_release == other.os_release
            && self.kernel == other.kernel
            && self.timezone == other.timezone
            && self.dns_servers == other.dns_servers
            && self.ntp_servers == other.ntp_servers
            && self.sysctl == other.sysctl
            && self.package_format == other.package_format
            && self.firmware_bios == other.firmware_bios
            && self.firmware_bmc == other.firmware_bmc
            && self.power == other.power
            && self.fru_serial == other.fru_serial
            && self.fru_product == other.fru_product
    }
}

/// What the device record itself declares about the hardware (inventory drift).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Declared {
    pub serial: String,
    pub model: String,
}

/// One difference, before its cause and age are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub field: String,
    pub desired: String,
    pub observed: String,
    pub source: String,
}

fn some_text(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

/// Compares every field of `eff` (and the declared hardware) with what was observed.
pub fn evaluate(eff: &Effective, declared: &Declared, obs: &ObservedView) -> Vec<Finding> {
    let format = PackageFormat::from_facts(
        &obs.package_format,
        obs.os_release.as_deref().unwrap_or_default(),
    );
    let mut out = Vec::new();
    for (field, setting) in eff {
        let desired = setting.want.to_string();
        let observed: Option<String> = match &setting.want {
            Want::Text(t) => {
                let seen = text_field(field, obs);
                match seen {
                    Some(s) if &s == t => None,
                    Some(s) => Some(s),
                    None => Some(NOT_REPORTED.into()),
                }
            }
            Want::Kernel { version, minimum } => match some_text(&obs.kernel) {
                None => Some(NOT_REPORTED.into()),
                Some(k) => {
                    let ord = version::compare(format, k, version);
                    let ok = if *minimum {
                        ord != std::cmp::Ordering::Less
                    } else {
                        ord == std::cmp::Ordering::Equal
                    };
                    (!ok).then(|| k.to_string())
                }
            },
            Want::Package { version, matching } => {
                let name = field.strip_prefix("packages.").unwrap_or(field);
                match &obs.packages {
                    None => Some(NOT_REPORTED.into()),
                    Some(set) => {
                        let installed = set.get(name).map(String::as_str);
                        if version::satisfies(format, installed, version, *matching) {
                            None
                        } else {
                            Some(installed.unwrap_or(NOT_INSTALLED).to_string())
                        }
                    }
                }
            }
            Want::Power(p) => match obs.power {
                None | Some(PowerState::Unspecified) => Some(NOT_REPORTED.into()),
                Some(seen) if seen == *p => None,
                Some(seen) => Some(power_text(seen).into()),
            },
            Want::List(want) => {
                let seen = if field == "ntp_servers" {
                    &obs.ntp_servers
                } else {
                    &obs.dns_servers
                };
                match seen {
                    None => Some(NOT_REPORTED.into()),
                    Some(s) if s == want => None,
                    Some(s) => Some(s.join(",")),
                }
            }
            Want::Expect(rules) => {
                let path = field.strip_prefix("expect.").unwrap_or(field);
                let value = obs
                    .facts_json
                    .as_deref()
                    .and_then(|j| resolve(j, path, obs.packages.as_deref()));
                let ok = rules
                    .iter()
                    .all(|(op, want)| expect_holds(value.as_ref(), op, want));
                (!ok).then(|| match value {
                    None => "(absent)".to_string(),
                    Some(Value::String(s)) => s,
                    Some(v) => v.to_string(),
                })
            }
        };
        if let Some(observed) = observed {
            out.push(Finding {
                field: field.clone(),
                desired,
                observed,
                source: setting.source.to_string(),
            });
        }
    }
    // Inventory: a declared serial or model the hardware contradicts (a swapped board).
    for (field, want, seen) in [
        (
            "inventory.serial",
            &declared.serial,
            some_text(&obs.fru_serial),
        ),
        (
            "inventory.model",
            &declared.model,
            some_text(&obs.fru_product),
        ),
    ] {
        if let Some(seen) = seen
            && !want.is_empty()
            && !seen.eq_ignore_ascii_case(want.trim())
        {
            out.push(Finding {
                field: field.into(),
                desired: want.clone(),
                observed: seen.to_string(),
                source: "device".into(),
            });
        }
    }
    out
}

/// The observed text of a plain-text field.
fn text_field(field: &str, obs: &ObservedView) -> Option<String> {
    let v = match field {
        "os.release" => &obs.os_release,
        "timezone" => &obs.timezone,
        "firmware.bios" => &obs.firmware_bios,
        "firmware.bmc" => &obs.firmware_bmc,
        _ => {
            let key = field.strip_prefix("sysctl.")?;
            return obs.sysctl.as_ref()?.get(key).cloned();
        }
    };
    some_text(v).map(str::to_string)
}

/// Looks up a fact path (`facts.cpu.cores`, `facts.external.raid.state`,
/// `facts.packages.openssl`) in the facts JSON. Segments may be written in snake_case (as in
/// the .proto files) or lowerCamelCase (as the JSON mapping prints them); array elements are
/// addressed by index.
pub fn resolve(facts: &Value, path: &str, packages: Option<&PackageSet>) -> Option<Value> {
    let path = path.strip_prefix("facts.").unwrap_or(path);
    if let Some(name) = path.strip_prefix("packages.") {
        return packages?.get(name).map(|v| Value::String(v.clone()));
    }
    let mut cur = facts;
    for seg in path.split('.') {
        cur = match cur {
            Value::Object(m) => m.get(seg).or_else(|| m.get(&camel(seg)))?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur.clone())
}

fn camel(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut up = false;
    for c in s.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        Value::Bool(_) | Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Whether `value op want` holds. Numbers compare as numbers when both sides are numeric,
/// otherwise as text; `in` takes a comma-separated list.
pub fn expect_holds(value: Option<&Value>, op: &str, want: &str) -> bool {
    let Some(v) = value.filter(|v| !v.is_null()) else {
        return false;
    };
    if op == "exists" {
        return true;
    }
    if op == "in" {
        let t = text(v);
        return want.split(',').any(|w| w.trim() == t);
    }
    let ord = match (number(v), want.trim().parse::<f64>().ok()) {
        (Some(a), Some(b)) => a.partial_cmp(&b),
        _ => Some(text(v).as_str().cmp(want)),
    };
    let Some(ord) = ord else {
        return false;
    };
    use std::cmp::Ordering::*;
    match op {
        "==" => ord == Equal,
        "!=" => ord != Equal,
        "<" => ord == Less,
        "<=" => ord != Greater,
        ">" => ord == Greater,
        ">=" => ord != Less,
        _ => false,
    }
}

/// What drift remembers of a device between evaluations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    /// Desired value (as text) of every field at the last evaluation.
    pub desired: BTreeMap<String, String>,
    pub items: Vec<pb::DriftItem>,
}

/// The items after this evaluation: an item that persists keeps its cause and age unless the
/// desired value moved; a new one is *pending* when the desired value changed since the last
/// evaluation (or there was none), *unexpected* otherwise.
pub fn reconcile(
    memory: &Memory,
    eff_desired: BTreeMap<String, String>,
    findings: Vec<Finding>,
    now: pbjson_types::Timestamp,
) -> Memory {
    let first = memory.desired.is_empty() && memory.items.is_empty();
    let old: HashMap<&str, &pb::DriftItem> =
        memory.items.iter().map(|i| (i.field.as_str(), i)).collect();
    let items = findings
        .into_iter()
        .map(|f| {
            let desired_moved = memory.desired.get(&f.field) != Some(&f.desired);
            match old.get(f.field.as_str()) {
                Some(prev) if !desired_moved && prev.desired == f.desired => pb::DriftItem {
                    field: f.field,
                    desired: f.desired,
                    observed: f.observed,
                    since: prev.since,
                    cause: prev.cause.clone(),
                    source: f.source,
                },
                _ => pb::DriftItem {
                    cause: if first || desired_moved {
                        "pending".into()
                    } else {
                        "unexpected".into()
                    },
                    field: f.field,
                    desired: f.desired,
                    observed: f.observed,
                    since: Some(now),
                    source: f.source,
                },
            }
        })
        .collect();
    Memory {
        desired: eff_desired,
        items,
    }
}

/// The desired text of every field, as `reconcile` remembers it.
pub fn desired_texts(eff: &Effective, declared: &Declared) -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = eff
        .iter()
        .map(|(k, s)| (k.clone(), s.want.to_string()))
        .collect();
    if !declared.serial.is_empty() {
        m.insert("inventory.serial".into(), declared.serial.clone());
    }
    if !declared.model.is_empty() {
        m.insert("inventory.model".into(), declared.model.clone());
    }
    m
}

/// The version a package requirement would be adopted as by `drift accept`.
pub fn accepted_requirement(name: &str, observed: &str) -> pb::PackageRequirement {
    if observed == NOT_INSTALLED {
        pb::PackageRequirement {
            name: name.into(),
            version: String::new(),
            r#match: VersionMatch::Absent as i32,
        }
    } else {
        pb::PackageRequirement {
            name: name.into(),
            version: observed.into(),
            r#match: VersionMatch::Exact as i32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::desired::{CompiledProfile, Source, effective, fields_of};

    fn ts(s: i64) -> pbjson_types::Timestamp {
        pbjson_types::Timestamp {
            seconds: s,
            nanos: 0,
        }
    }

    fn observed(openssl: &str) -> ObservedView {
        ObservedView {
            os_release: Some("Debian GNU/Linux 12 (bookworm)".into()),
            kernel: Some("6.1.0-13-amd64".into()),
            package_format: "deb".into(),
            packages: Some(Arc::new(
                [("openssl".to_string(), openssl.to_string())].into(),
            )),
            facts_json: Some(Arc::new(serde_json::json!({
                "cpu": {"cores": 16},
                "memoryBytes": "68719476736",
                "external": {"raid": {"state": "optimal"}}
            }))),
            fru_serial: Some("SN-2".into()),
            ..ObservedView::default()
        }
    }

    fn spec_with(pkg_version: &str, m: VersionMatch) -> Effective {
        let spec = pb::DesiredState {
            packages: vec![pb::PackageRequirement {
                name: "openssl".into(),
                version: pkg_version.into(),
                r#match: m as i32,
            }],
            kernel: ">=6.1.0-10".into(),
            expect: vec![
                pb::ExpectRule {
                    path: "facts.cpu.cores".into(),
                    op: ">=".into(),
                    value: "8".into(),
                },
                pb::ExpectRule {
                    path: "facts.external.raid.state".into(),
                    op: "==".into(),
                    value: "optimal".into(),
                },
                pb::ExpectRule {
                    path: "facts.memory_bytes".into(),
                    op: ">".into(),
                    value: "1000".into(),
                },
            ],
            ..Default::default()
        };
        let profile = CompiledProfile::new(&pb::Profile {
            meta: Some(pb::ObjectMeta {
                name: "base".into(),
                ..Default::default()
            }),
            spec: Some(spec),
            ..Default::default()
        });
        effective(&[&profile], &BTreeMap::new(), &[]).0
    }

    #[test]
    fn package_versions_compare_as_dpkg_does() {
        let obs = observed("3.0.11-1~deb12u2");
        let eff = spec_with("3.0.11-1~deb12u1", VersionMatch::Minimum);
        assert!(evaluate(&eff, &Declared::default(), &obs).is_empty());
        let eff = spec_with("3.0.11-1", VersionMatch::Minimum);
        let f = evaluate(&eff, &Declared::default(), &obs);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].field, "packages.openssl");
        assert_eq!(f[0].observed, "3.0.11-1~deb12u2");
        assert_eq!(f[0].desired, ">= 3.0.11-1");
        assert_eq!(f[0].source, Source::Profile("base".into()).to_string());
        let eff = spec_with("", VersionMatch::Absent);
        assert_eq!(evaluate(&eff, &Declared::default(), &obs).len(), 1);
    }

    #[test]
    fn expect_rules_and_inventory() {
        let mut obs = observed("1");
        let eff = spec_with("1", VersionMatch::Exact);
        assert!(evaluate(&eff, &Declared::default(), &obs).is_empty());
        obs.facts_json = Some(Arc::new(serde_json::json!({
            "cpu": {"cores": 4},
            "memoryBytes": "68719476736",
            "external": {"raid": {"state": "degraded"}}
        })));
        let declared = Declared {
            serial: "SN-1".into(),
            model: String::new(),
        };
        let fields: Vec<String> = evaluate(&eff, &declared, &obs)
            .into_iter()
            .map(|f| format!("{}={}", f.field, f.observed))
            .collect();
        assert_eq!(
            fields,
            [
                "expect.facts.cpu.cores=4",
                "expect.facts.external.raid.state=degraded",
                "inventory.serial=SN-2"
            ]
        );
        assert!(!expect_holds(None, "exists", ""));
        assert!(expect_holds(Some(&Value::from("b")), "in", "a, b"));
    }

    #[test]
    fn causes_pending_then_unexpected() {
        let finding = |obs: &str| Finding {
            field: "packages.openssl".into(),
            desired: ">= 3".into(),
            observed: obs.into(),
            source: "profile/base".into(),
        };
        let desired: BTreeMap<String, String> =
            [("packages.openssl".to_string(), ">= 3".to_string())].into();
        // The desired value is new: pending.
        let m = reconcile(
            &Memory::default(),
            desired.clone(),
            vec![finding("2")],
            ts(10),
        );
        assert_eq!(m.items[0].cause, "pending");
        // Still drifting, same desire: cause and age kept, observed refreshed.
        let m2 = reconcile(&m, desired.clone(), vec![finding("2.5")], ts(20));
        assert_eq!(m2.items[0].cause, "pending");
        assert_eq!(m2.items[0].since, Some(ts(10)));
        assert_eq!(m2.items[0].observed, "2.5");
        // Converged, then changed by hand while the desire stayed: unexpected.
        let m3 = reconcile(&m2, desired.clone(), vec![], ts(30));
        assert!(m3.items.is_empty());
        let m4 = reconcile(&m3, desired, vec![finding("1")], ts(40));
        assert_eq!(m4.items[0].cause, "unexpected");
        assert_eq!(m4.items[0].since, Some(ts(40)));
    }

    #[test]
    fn spec_fields_are_typed() {
        let f = fields_of(&pb::DesiredState {
            power: PowerState::PowerOn as i32,
            ..Default::default()
        });
        assert_eq!(
            f,
            vec![("power".to_string(), Want::Power(PowerState::PowerOn))]
        );
    }
}
