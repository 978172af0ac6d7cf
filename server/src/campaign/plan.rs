//! The plan frozen at submission: which hosts, in which order and waves, which are canaries,
//! which are skipped and why, when each first fits a window, and the trip point. Approvers
//! approve exactly this (its digest binds their approvals); hosts that match the selector
//! later are not added.

use std::collections::{HashMap, HashSet};

use super::Labels;
use super::budget;
use super::calendar::{Calendar, HORIZON_SECONDS};
use super::error::CampaignError;
use super::order::round_robin;
use super::render::duration;
use super::spec::{Amount, CampaignSpec, Canaries};

/// A device's health as the plan judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthLevel {
    Ok,
    Warning,
    Critical,
    /// Silent or never evaluated.
    Unknown,
}

impl HealthLevel {
    /// From `pb::Health` (unspecified counts as unknown).
    pub fn from_pb(h: i32) -> Self {
        match muster::pb::Health::try_from(h) {
            Ok(muster::pb::Health::Ok) => Self::Ok,
            Ok(muster::pb::Health::Warning) => Self::Warning,
            Ok(muster::pb::Health::Critical) => Self::Critical,
            _ => Self::Unknown,
        }
    }
}

/// Where a host sits, for topology caps (None: the group `<none>`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Topology {
    pub rack: Option<String>,
    pub switch: Option<String>,
    pub role: Option<String>,
}

/// A device the plan may choose. The engine fills it from the inventory: `rack` from
/// `Device.rack` (else label `rack`), `switch` from label `switch`, `role` from `Device.role`
/// (else label `role`), `parent` from `Device.parent`.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub name: String,
    pub labels: Labels,
    pub topology: Topology,
    pub parent: Option<String>,
    pub health: HealthLevel,
    /// Health reason codes (e.g. `smart.predicted_failure`).
    pub health_reasons: Vec<String>,
    pub predicted_disk_failure: bool,
    /// Unix seconds of the last agent report.
    pub last_report: Option<i64>,
}

/// Everything a plan depends on.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    pub spec: &'a CampaignSpec,
    /// The fleet (not only the target: VMs of targeted hypervisors are found here too).
    pub devices: &'a [Candidate],
    /// Must cover `[now, now + 30 days + host estimate)`.
    pub calendar: &'a Calendar,
    pub now: i64,
    /// A device whose last report is older than this many seconds is silent.
    pub silent_after: i64,
}

/// A VM going down with its hypervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guest {
    pub name: String,
    pub topology: Topology,
}

/// One host of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedHost {
    pub name: String,
    pub wave: usize,
    pub canary: bool,
    pub topology: Topology,
    /// The hypervisor group: a VM's parent, else the host itself.
    pub hypervisor: String,
    pub guests: Vec<Guest>,
    /// Worst-case seconds (steps + verification + rollback + margin).
    pub estimate: i64,
    /// Earliest fitting start at plan time.
    pub first_fit: Option<i64>,
}

/// Why a host was left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipCode {
    Critical,
    PredictedDiskFailure,
    Silent,
    Frozen,
    NoWindow,
}

impl SkipCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::PredictedDiskFailure => "predicted_disk_failure",
            Self::Silent => "silent",
            Self::Frozen => "frozen",
            Self::NoWindow => "no_window",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Critical,
            Self::PredictedDiskFailure,
            Self::Silent,
            Self::Frozen,
            Self::NoWindow,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

/// A host the selector chose that the plan leaves out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub name: String,
    pub code: SkipCode,
    pub reason: String,
}

/// A wave: its hosts as indices into [`Plan::hosts`], contiguous and in plan order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wave {
    pub canary: bool,
    pub hosts: std::ops::Range<usize>,
}

/// The frozen plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub planned_at: i64,
    /// Canaries first, then the fleet in round-robin rack order.
    pub hosts: Vec<PlannedHost>,
    pub skipped: Vec<Skipped>,
    pub waves: Vec<Wave>,
    pub failures_allowed: u32,
    /// Hosts outside the canaries.
    pub fleet_hosts: u32,
    pub warnings: Vec<String>,
}

impl Plan {
    /// The failure number that halts the campaign.
    pub fn trip_point(&self) -> u32 {
        budget::trip_point(self.failures_allowed)
    }

    /// Index of a host by name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.hosts.iter().position(|h| h.name == name)
    }
}

/// Batch size for `fleet` hosts: a count, or `max(1, floor(p × fleet / 100))`; unset: all.
pub fn batch_size(batch: Option<Amount>, fleet: usize) -> usize {
    match batch {
        None => fleet.max(1),
        Some(Amount::Hosts(n)) => (n as usize).max(1),
        Some(Amount::Percent(p)) => (p as usize * fleet / 100).max(1),
    }
}

fn skip_reason(c: &Candidate, input: &PlanInput<'_>) -> Option<(SkipCode, String)> {
    if c.health == HealthLevel::Critical {
        let why = if c.health_reasons.is_empty() {
            String::new()
        } else {
            format!(" ({})", c.health_reasons.join(", "))
        };
        return Some((SkipCode::Critical, format!("health is CRITICAL{why}")));
    }
    if c.predicted_disk_failure {
        return Some((
            SkipCode::PredictedDiskFailure,
            "a disk is predicted to fail".into(),
        ));
    }
    match c.last_report {
        None => return Some((SkipCode::Silent, "its agent never reported".into())),
        Some(t) if input.now - t > input.silent_after => {
            return Some((
                SkipCode::Silent,
                format!("silent: last report {} ago", duration(input.now - t)),
            ));
        }
        _ if c.health == HealthLevel::Unknown => {
            return Some((SkipCode::Silent, "health is UNKNOWN".into()));
        }
        _ => {}
    }
    if let Some((name, until)) = input.calendar.freeze_at(&c.labels, input.now) {
        return Some((
            SkipCode::Frozen,
            format!("in freeze {name} until {}", super::render::instant(until)),
        ));
    }
    None
}

/// Computes the plan. Errors name the field: `selector` matching nothing (or only skipped
/// hosts), a named canary not in the target or skipped, more canaries than hosts.
pub fn plan(input: PlanInput<'_>) -> Result<Plan, CampaignError> {
    let spec = input.spec;
    let estimate = spec.host_estimate();
    let target: Vec<&Candidate> = input
        .devices
        .iter()
        .filter(|c| {
            spec.selector
                .matches(|k| c.labels.get(k).map(String::as_str))
        })
        .collect();
    if target.is_empty() {
        return Err(CampaignError::invalid(
            "selector",
            format!("{:?} matches no device", spec.selector_text),
        ));
    }
    let mut skipped = Vec::new();
    let mut eligible: Vec<(&Candidate, Option<i64>)> = Vec::new();
    for c in &target {
        if let Some((code, reason)) = skip_reason(c, &input) {
            skipped.push(Skipped {
                name: c.name.clone(),
                code,
                reason,
            });
            continue;
        }
        let slots = input
            .calendar
            .slots(&c.labels, &spec.windows, spec.any_time);
        let fit = slots.next_fit(input.now, estimate);
        let no_fit = match (fit, spec.deadline) {
            (None, _) => Some(format!(
                "no window fits its {} in the next 30 days (longest open slot {})",
                duration(estimate),
                duration(slots.longest())
            )),
            (Some(t), Some(d)) if t + estimate > d => Some(format!(
                "no window fits its {} before the deadline {}",
                duration(estimate),
                super::render::instant(d)
            )),
            _ => None,
        };
        match no_fit {
            Some(reason) => skipped.push(Skipped {
                name: c.name.clone(),
                code: SkipCode::NoWindow,
                reason,
            }),
            None => eligible.push((c, fit)),
        }
    }
    skipped.sort_by(|a, b| a.name.cmp(&b.name));
    if eligible.is_empty() {
        return Err(CampaignError::invalid(
            "selector",
            format!(
                "{:?} matches {} device(s), all of them skipped (first: {} {})",
                spec.selector_text,
                target.len(),
                skipped[0].name,
                skipped[0].reason
            ),
        ));
    }
    let order = round_robin(
        &eligible,
        |e| e.0.topology.rack.as_deref(),
        |e| e.0.name.as_str(),
    );
    let canaries: Vec<usize> = match &spec.strategy.canaries {
        Canaries::None => vec![],
        Canaries::Named(names) => {
            let mut out = Vec::with_capacity(names.len());
            for (i, n) in names.iter().enumerate() {
                let f = format!("strategy.canary_hosts[{i}]");
                if let Some(pos) = eligible.iter().position(|e| &e.0.name == n) {
                    out.push(pos);
                } else if let Some(s) = skipped.iter().find(|s| &s.name == n) {
                    return Err(CampaignError::invalid(
                        f,
                        format!("{n} is skipped: {}", s.reason),
                    ));
                } else {
                    return Err(CampaignError::invalid(
                        f,
                        format!("{n} is not selected by {:?}", spec.selector_text),
                    ));
                }
            }
            out
        }
        Canaries::Count(n) => {
            if *n as usize > eligible.len() {
                return Err(CampaignError::invalid(
                    "strategy.canary_count",
                    format!("{n} canaries but only {} hosts are planned", eligible.len()),
                ));
            }
            order[..*n as usize].to_vec()
        }
    };
    let is_canary: HashSet<usize> = canaries.iter().copied().collect();
    let fleet: Vec<usize> = order
        .iter()
        .copied()
        .filter(|i| !is_canary.contains(i))
        .collect();

    let mut guests: HashMap<&str, Vec<Guest>> = HashMap::new();
    for d in input.devices {
        if let Some(p) = &d.parent {
            guests.entry(p.as_str()).or_default().push(Guest {
                name: d.name.clone(),
                topology: d.topology.clone(),
            });
        }
    }
    for g in guests.values_mut() {
        g.sort_by(|a, b| a.name.cmp(&b.name));
    }
    let mut waves = Vec::new();
    let mut hosts = Vec::with_capacity(eligible.len());
    let mut push = |idx: &[usize], canary: bool, waves: &mut Vec<Wave>| {
        let start = hosts.len();
        for &i in idx {
            let (c, fit) = eligible[i];
            hosts.push(PlannedHost {
                name: c.name.clone(),
                wave: waves.len(),
                canary,
                topology: c.topology.clone(),
                hypervisor: c.parent.clone().unwrap_or_else(|| c.name.clone()),
                guests: guests.get(c.name.as_str()).cloned().unwrap_or_default(),
                estimate,
                first_fit: fit,
            });
        }
        waves.push(Wave {
            canary,
            hosts: start..hosts.len(),
        });
    };
    if !canaries.is_empty() {
        push(&canaries, true, &mut waves);
    }
    let b = batch_size(spec.strategy.batch, fleet.len());
    for chunk in fleet.chunks(b) {
        push(chunk, false, &mut waves);
    }
    let total = hosts.len() as u32;
    let failures_allowed = budget::allowed(spec.strategy.budget, total);
    let mut warnings = cap_warnings(spec, &hosts);
    if failures_allowed as usize >= fleet.len() && !fleet.is_empty() {
        warnings.push(format!(
            "the failure budget ({failures_allowed}) allows every one of the {} fleet hosts to fail",
            fleet.len()
        ));
    }
    Ok(Plan {
        planned_at: input.now,
        hosts,
        skipped,
        waves,
        failures_allowed,
        fleet_hosts: fleet.len() as u32,
        warnings,
    })
}

/// Hypervisors whose VMs alone exceed a cap: they run only while their groups are otherwise
/// undisrupted (see `schedule.rs`), which approvers should know.
fn cap_warnings(spec: &CampaignSpec, hosts: &[PlannedHost]) -> Vec<String> {
    let caps = spec.strategy.caps;
    let mut out = Vec::new();
    for h in hosts.iter().filter(|h| !h.guests.is_empty()) {
        let all: Vec<&Topology> = std::iter::once(&h.topology)
            .chain(h.guests.iter().map(|g| &g.topology))
            .collect();
        for (dim, cap, get) in [
            (
                "rack",
                caps.rack,
                (|t: &Topology| t.rack.clone()) as fn(&Topology) -> Option<String>,
            ),
            ("switch", caps.switch, |t: &Topology| t.switch.clone()),
            ("role", caps.role, |t: &Topology| t.role.clone()),
        ] {
            let Some(cap) = cap else { continue };
            let mut n: HashMap<Option<String>, u32> = HashMap::new();
            for t in &all {
                *n.entry(get(t)).or_default() += 1;
            }
            if let Some((g, k)) = n
                .into_iter()
                .filter(|(_, k)| *k > cap)
                .max_by_key(|(_, k)| *k)
            {
                out.push(format!(
                    "{} takes {k} hosts of {dim} {} down with it, above max_per_{dim} {cap}: it runs only while that {dim} is otherwise undisrupted",
                    h.name,
                    g.as_deref().unwrap_or(super::order::NONE_GROUP)
                ));
            }
        }
    }
    out
}

/// The horizon a calendar for planning at `now` must cover.
pub fn calendar_span(spec: &CampaignSpec, now: i64) -> (i64, i64) {
    (now, now + HORIZON_SECONDS + spec.host_estimate())
}
