//! Effective desired state: what a device should be once its profiles (by priority), then
//! its own spec, then the campaigns rolling a change out to it are laid over each other.
//! Pure: no store, no gRPC.
//!
//! A campaign's layer is on top: while a campaign is changing a host, the change is what the
//! host should become (its drift on those fields is *pending*), whatever the profiles or the
//! device's own spec said before. It exists only between the campaign reaching the host and
//! the campaign ending (kept as a profile on completion, dropped on rollback or abort).
//!
//! A spec is flattened into *fields* ("os.release", "packages.openssl", "sysctl.vm.swappiness",
//! "expect.facts.cpu.cores", ...), the unit of precedence, of conflicts and of drift. Lists
//! (NTP and DNS servers) are one field each: their order matters and they are owned as a whole.

use std::collections::BTreeMap;
use std::fmt;

use muster::pb::{self, PowerState, VersionMatch};
use muster::selector::Selector;

/// What one field of desired state asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// Equal to this text (OS release, firmware, timezone, a sysctl value).
    Text(String),
    /// A kernel release, exactly or at least (`>=6.1.0-13` in the spec).
    Kernel {
        version: String,
        minimum: bool,
    },
    /// A package version requirement.
    Package {
        version: String,
        matching: VersionMatch,
    },
    Power(PowerState),
    /// An ordered list (NTP or DNS servers).
    List(Vec<String>),
    /// Rules on one observed fact path, all of which must hold: (op, value).
    Expect(Vec<(String, String)>),
}

impl fmt::Display for Want {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Want::Text(t) => f.write_str(t),
            Want::Kernel { version, minimum } => {
                if *minimum {
                    write!(f, ">= {version}")
                } else {
                    f.write_str(version)
                }
            }
            Want::Package { version, matching } => match matching {
                VersionMatch::Absent => f.write_str("absent"),
                VersionMatch::Minimum => write!(f, ">= {version}"),
                _ if version.is_empty() => f.write_str("installed"),
                _ => write!(f, "= {version}"),
            },
            Want::Power(p) => f.write_str(power_text(*p)),
            Want::List(l) => f.write_str(&l.join(",")),
            Want::Expect(rules) => {
                let parts: Vec<String> = rules
                    .iter()
                    .map(|(op, v)| {
                        if op == "exists" {
                            "exists".to_string()
                        } else {
                            format!("{op} {v}")
                        }
                    })
                    .collect();
                f.write_str(&parts.join(" and "))
            }
        }
    }
}

/// How a power state reads in drift and plans.
pub fn power_text(p: PowerState) -> &'static str {
    match p {
        PowerState::PowerOn => "on",
        PowerState::PowerOff => "off",
        PowerState::Unspecified => "unknown",
    }
}

/// Where a desired value comes from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    Device,
    Profile(String),
    /// A campaign rolling its change out to the device (by campaign name).
    Campaign(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Device => f.write_str("device"),
            Source::Profile(p) => write!(f, "profile/{p}"),
            Source::Campaign(c) => write!(f, "campaign/{c}"),
        }
    }
}

/// One field of effective desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub want: Want,
    pub source: Source,
}

/// Effective desired state of one device, by field name.
pub type Effective = BTreeMap<String, Setting>;

/// A spec flattened into (field, want) pairs.
pub fn fields_of(spec: &pb::DesiredState) -> Vec<(String, Want)> {
    let mut out = Vec::new();
    if !spec.os_release.is_empty() {
        out.push(("os.release".into(), Want::Text(spec.os_release.clone())));
    }
    if !spec.kernel.is_empty() {
        let (version, minimum) = match spec.kernel.trim().strip_prefix(">=") {
            Some(v) => (v.trim().to_string(), true),
            None => (spec.kernel.trim().to_string(), false),
        };
        out.push(("kernel".into(), Want::Kernel { version, minimum }));
    }
    for p in &spec.packages {
        out.push((
            format!("packages.{}", p.name),
            Want::Package {
                version: p.version.clone(),
                matching: VersionMatch::try_from(p.r#match).unwrap_or_default(),
            },
        ));
    }
    if let Some(fw) = &spec.firmware {
        if !fw.bios.is_empty() {
            out.push(("firmware.bios".into(), Want::Text(fw.bios.clone())));
        }
        if !fw.bmc.is_empty() {
            out.push(("firmware.bmc".into(), Want::Text(fw.bmc.clone())));
        }
    }
    match PowerState::try_from(spec.power) {
        Ok(PowerState::Unspecified) | Err(_) => {}
        Ok(p) => out.push(("power".into(), Want::Power(p))),
    }
    if !spec.ntp_servers.is_empty() {
        out.push(("ntp_servers".into(), Want::List(spec.ntp_servers.clone())));
    }
    if !spec.dns_servers.is_empty() {
        out.push(("dns_servers".into(), Want::List(spec.dns_servers.clone())));
    }
    if !spec.timezone.is_empty() {
        out.push(("timezone".into(), Want::Text(spec.timezone.clone())));
    }
    for (k, v) in &spec.sysctl {
        out.push((format!("sysctl.{k}"), Want::Text(v.clone())));
    }
    let mut rules: BTreeMap<&str, Vec<(String, String)>> = BTreeMap::new();
    for r in &spec.expect {
        rules
            .entry(r.path.as_str())
            .or_default()
            .push((r.op.clone(), r.value.clone()));
    }
    for (path, rs) in rules {
        out.push((format!("expect.{path}"), Want::Expect(rs)));
    }
    out
}

/// A profile ready to be laid over devices.
#[derive(Debug, Clone)]
pub struct CompiledProfile {
    pub name: String,
    pub priority: i32,
    /// None when the stored selector no longer parses: such a profile selects nothing.
    pub selector: Option<Selector>,
    pub fields: Vec<(String, Want)>,
}

impl CompiledProfile {
    /// Compiles a stored profile; a selector that no longer parses selects nothing.
    pub fn new(p: &pb::Profile) -> Self {
        let name = p.meta.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        let selector = Selector::parse(&p.selector).ok();
        Self {
            name,
            priority: p.priority,
            selector,
            fields: p.spec.as_ref().map(fields_of).unwrap_or_default(),
        }
    }

    /// Whether the profile chooses a device with these labels.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector
            .as_ref()
            .is_some_and(|s| s.matches(|k| labels.get(k).map(String::as_str)))
    }
}

/// Two or more profiles of equal priority that set one field of one device differently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub field: String,
    pub profiles: Vec<String>,
    pub priority: i32,
}

/// One campaign's change as laid over a host it has reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    /// The campaign's name (the source drift names).
    pub campaign: String,
    /// When the campaign reached the host (Unix nanoseconds): of two campaigns changing one
    /// field of a host, the one that reached it later wins.
    pub since_nanos: i64,
    pub fields: Vec<(String, Want)>,
}

impl Overlay {
    /// From the campaign's partial desired state.
    pub fn new(campaign: &str, since_nanos: i64, spec: &pb::DesiredState) -> Self {
        Self {
            campaign: campaign.to_string(),
            since_nanos,
            fields: fields_of(spec),
        }
    }
}

/// The effective desired state of a device with `labels` and its own `fields`, given every
/// profile (in any order), and the conflicts found on the way.
pub fn effective(
    profiles: &[&CompiledProfile],
    labels: &BTreeMap<String, String>,
    own: &[(String, Want)],
) -> (Effective, Vec<Conflict>) {
    layered(profiles, labels, own, &[])
}

/// `effective`, with the campaigns that have reached the device laid on top (in the order
/// they reached it). A campaign's field does not settle a conflict between profiles: the
/// conflict is in the profiles and comes back when the campaign's layer goes.
pub fn layered(
    profiles: &[&CompiledProfile],
    labels: &BTreeMap<String, String>,
    own: &[(String, Want)],
    overlays: &[&Overlay],
) -> (Effective, Vec<Conflict>) {
    let mut chosen: Vec<&CompiledProfile> = profiles
        .iter()
        .copied()
        .filter(|p| p.selects(labels))
        .collect();
    chosen.sort_by(|a, b| a.priority.cmp(&b.priority).then(a.name.cmp(&b.name)));
    let mut eff = Effective::new();
    let mut priority_of: BTreeMap<String, i32> = BTreeMap::new();
    let mut conflicts: BTreeMap<String, Conflict> = BTreeMap::new();
    for p in chosen {
        for (field, want) in &p.fields {
            if let (Some(existing), Some(prio)) = (eff.get(field), priority_of.get(field))
                && *prio == p.priority
                && existing.want != *want
            {
                let other = match &existing.source {
                    Source::Profile(n) => n.clone(),
                    Source::Device | Source::Campaign(_) => String::new(),
                };
                let c = conflicts.entry(field.clone()).or_insert_with(|| Conflict {
                    field: field.clone(),
                    profiles: vec![other],
                    priority: p.priority,
                });
                if !c.profiles.contains(&p.name) {
                    c.profiles.push(p.name.clone());
                }
                continue;
            }
            if priority_of
                .get(field)
                .is_some_and(|prio| *prio < p.priority)
            {
                // A strictly higher priority settles any tie below it.
                conflicts.remove(field);
            }
            eff.insert(
                field.clone(),
                Setting {
                    want: want.clone(),
                    source: Source::Profile(p.name.clone()),
                },
            );
            priority_of.insert(field.clone(), p.priority);
        }
    }
    for (field, want) in own {
        eff.insert(
            field.clone(),
            Setting {
                want: want.clone(),
                source: Source::Device,
            },
        );
        // The device's own value settles any tie between its profiles.
        conflicts.remove(field);
    }
    let mut overlays = overlays.to_vec();
    overlays.sort_by(|a, b| {
        a.since_nanos
            .cmp(&b.since_nanos)
            .then(a.campaign.cmp(&b.campaign))
    });
    for o in overlays {
        for (field, want) in &o.fields {
            eff.insert(
                field.clone(),
                Setting {
                    want: want.clone(),
                    source: Source::Campaign(o.campaign.clone()),
                },
            );
        }
    }
    (eff, conflicts.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(
        name: &str,
        priority: i32,
        selector: &str,
        spec: pb::DesiredState,
    ) -> CompiledProfile {
        CompiledProfile::new(&pb::Profile {
            meta: Some(pb::ObjectMeta {
                name: name.into(),
                ..Default::default()
            }),
            selector: selector.into(),
            priority,
            spec: Some(spec),
            description: String::new(),
        })
    }

    fn pkg(name: &str, version: &str, m: VersionMatch) -> pb::PackageRequirement {
        pb::PackageRequirement {
            name: name.into(),
            version: version.into(),
            r#match: m as i32,
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn higher_priority_wins_and_the_device_wins_over_all() {
        let base = profile(
            "base",
            10,
            "",
            pb::DesiredState {
                timezone: "UTC".into(),
                packages: vec![pkg("openssl", "3.0.0", VersionMatch::Minimum)],
                ..Default::default()
            },
        );
        let web = profile(
            "web",
            20,
            "role=web",
            pb::DesiredState {
                packages: vec![pkg("openssl", "3.0.11", VersionMatch::Minimum)],
                kernel: ">=6.1.0-13".into(),
                ..Default::default()
            },
        );
        let own = fields_of(&pb::DesiredState {
            timezone: "Europe/Berlin".into(),
            ..Default::default()
        });
        let (eff, conflicts) = effective(&[&web, &base], &labels(&[("role", "web")]), &own);
        assert!(conflicts.is_empty());
        assert_eq!(
            eff["packages.openssl"].source,
            Source::Profile("web".into())
        );
        assert_eq!(eff["packages.openssl"].want.to_string(), ">= 3.0.11");
        assert_eq!(eff["timezone"].source, Source::Device);
        assert_eq!(eff["kernel"].want.to_string(), ">= 6.1.0-13");
        // A device the web profile does not select gets only the base.
        let (eff, _) = effective(&[&web, &base], &labels(&[("role", "db")]), &[]);
        assert_eq!(
            eff["packages.openssl"].source,
            Source::Profile("base".into())
        );
        assert!(!eff.contains_key("kernel"));
    }

    #[test]
    fn equal_priorities_setting_one_field_differently_conflict() {
        let a = profile(
            "ntp-a",
            5,
            "",
            pb::DesiredState {
                ntp_servers: vec!["ntp1".into()],
                timezone: "UTC".into(),
                ..Default::default()
            },
        );
        let b = profile(
            "ntp-b",
            5,
            "site=fra1",
            pb::DesiredState {
                ntp_servers: vec!["ntp2".into()],
                timezone: "UTC".into(),
                ..Default::default()
            },
        );
        let (_, conflicts) = effective(&[&a, &b], &labels(&[("site", "fra1")]), &[]);
        assert_eq!(
            conflicts,
            vec![Conflict {
                field: "ntp_servers".into(),
                profiles: vec!["ntp-a".into(), "ntp-b".into()],
                priority: 5
            }],
            "the same value (timezone) is no conflict"
        );
        // A higher priority over both settles it.
        let c = profile(
            "ntp-fra",
            6,
            "site=fra1",
            pb::DesiredState {
                ntp_servers: vec!["ntp9".into()],
                ..Default::default()
            },
        );
        let (eff, conflicts) = effective(&[&a, &b, &c], &labels(&[("site", "fra1")]), &[]);
        assert!(conflicts.is_empty(), "{conflicts:?}");
        assert_eq!(eff["ntp_servers"].source, Source::Profile("ntp-fra".into()));
        // Not selected by b: no conflict.
        let (_, conflicts) = effective(&[&a, &b], &labels(&[("site", "ams1")]), &[]);
        assert!(conflicts.is_empty());
        // The device's own value settles it.
        let own = fields_of(&pb::DesiredState {
            ntp_servers: vec!["ntp3".into()],
            ..Default::default()
        });
        let (eff, conflicts) = effective(&[&a, &b], &labels(&[("site", "fra1")]), &own);
        assert!(conflicts.is_empty());
        assert_eq!(eff["ntp_servers"].want, Want::List(vec!["ntp3".into()]));
    }

    #[test]
    fn a_campaign_layer_wins_over_profiles_and_the_device_and_goes_with_it() {
        let base = profile(
            "base",
            10,
            "",
            pb::DesiredState {
                packages: vec![pkg("openssl", "3.0.1", VersionMatch::Exact)],
                timezone: "UTC".into(),
                ..Default::default()
            },
        );
        let own = fields_of(&pb::DesiredState {
            packages: vec![pkg("openssl", "3.0.0", VersionMatch::Exact)],
            ..Default::default()
        });
        let change = pb::DesiredState {
            packages: vec![pkg("openssl", "3.0.2", VersionMatch::Exact)],
            ..Default::default()
        };
        let patch = Overlay::new("patch-openssl", 100, &change);
        let l = labels(&[]);
        let (eff, _) = layered(&[&base], &l, &own, &[&patch]);
        assert_eq!(
            eff["packages.openssl"].source,
            Source::Campaign("patch-openssl".into())
        );
        assert_eq!(eff["packages.openssl"].want.to_string(), "= 3.0.2");
        assert_eq!(
            eff["packages.openssl"].source.to_string(),
            "campaign/patch-openssl"
        );
        // Fields the campaign does not carry stay where they came from.
        assert_eq!(eff["timezone"].source, Source::Profile("base".into()));
        // Without the layer (rolled back, aborted): the previous value is back.
        let (eff, _) = layered(&[&base], &l, &own, &[]);
        assert_eq!(eff["packages.openssl"].source, Source::Device);
        assert_eq!(eff["packages.openssl"].want.to_string(), "= 3.0.0");
        assert_eq!(
            layered(&[&base], &l, &own, &[]),
            effective(&[&base], &l, &own)
        );
        // Two campaigns on one field: the one that reached the host later wins, in any order.
        let later = Overlay::new(
            "patch-again",
            200,
            &pb::DesiredState {
                packages: vec![pkg("openssl", "3.0.3", VersionMatch::Exact)],
                ..Default::default()
            },
        );
        for order in [[&patch, &later], [&later, &patch]] {
            let (eff, _) = layered(&[&base], &l, &own, &order);
            assert_eq!(eff["packages.openssl"].want.to_string(), "= 3.0.3");
        }
    }

    #[test]
    fn a_campaign_layer_does_not_hide_a_conflict_between_profiles() {
        let a = profile(
            "a",
            5,
            "",
            pb::DesiredState {
                timezone: "UTC".into(),
                ..Default::default()
            },
        );
        let b = profile(
            "b",
            5,
            "",
            pb::DesiredState {
                timezone: "CET".into(),
                ..Default::default()
            },
        );
        let o = Overlay::new(
            "tz",
            1,
            &pb::DesiredState {
                timezone: "UTC".into(),
                ..Default::default()
            },
        );
        let (eff, conflicts) = layered(&[&a, &b], &labels(&[]), &[], &[&o]);
        assert_eq!(eff["timezone"].source, Source::Campaign("tz".into()));
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    }

    #[test]
    fn expect_rules_on_one_path_form_one_field() {
        let f = fields_of(&pb::DesiredState {
            expect: vec![
                pb::ExpectRule {
                    path: "facts.cpu.cores".into(),
                    op: ">=".into(),
                    value: "32".into(),
                },
                pb::ExpectRule {
                    path: "facts.cpu.cores".into(),
                    op: "<=".into(),
                    value: "128".into(),
                },
            ],
            ..Default::default()
        });
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].0, "expect.facts.cpu.cores");
        assert_eq!(f[0].1.to_string(), ">= 32 and <= 128");
    }
}
