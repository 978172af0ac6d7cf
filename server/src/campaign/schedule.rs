//! Which hosts may start now: the scheduling decision, pure. The engine calls [`decide`] on
//! every event and at [`Decision::wake_at`] while the campaign is RUNNING, and
//! [`step_fit`] before each step of a running host.
//!
//! Rules, in order: a canary failure or an exceeded budget halts (no start); the current wave
//! is the first with a non-terminal host, and wave k+1 starts only when wave k is all
//! terminal (plus `batch_pause`, and after the canary wave: soak passed and promoted); within
//! the wave at most the effective concurrency is active (see `budget`); each start must keep
//! every topology group at or under its cap; and the host must fit a window now.

use std::collections::HashMap;

use super::Labels;
use super::budget::{self, Tally};
use super::calendar::Calendar;
use super::host::HostState;
use super::order::NONE_GROUP;
use super::plan::{Plan, PlannedHost, Topology};
use super::spec::{CampaignSpec, Caps};
use super::state::HaltReason;

/// A host's state and when it reached a terminal one (for `batch_pause`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRecord {
    pub state: HostState,
    pub finished_at: Option<i64>,
}

impl HostRecord {
    pub fn pending() -> Self {
        Self {
            state: HostState::Pending,
            finished_at: None,
        }
    }
}

/// What the decision depends on.
pub struct Tick<'a> {
    pub spec: &'a CampaignSpec,
    pub plan: &'a Plan,
    /// Parallel to `plan.hosts`.
    pub hosts: &'a [HostRecord],
    pub calendar: &'a Calendar,
    /// A device's current labels (windows select on them); None: the device is gone.
    pub labels: &'a dyn Fn(&str) -> Option<&'a Labels>,
    /// The canary phase was left: soak passed and promoted (by a person or automatically).
    pub promoted: bool,
    pub now: i64,
}

/// Why nothing (more) starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// No pending host of the wave fits a window now; the next fitting start (None: none
    /// within the calendar: rebuild it further out, or wait for a window edit).
    Window { until: Option<i64> },
    /// Every slot of the effective concurrency is taken.
    Concurrency,
    /// Pending hosts fit, but a topology cap holds them.
    Topology,
    /// Between waves.
    BatchPause { until: i64 },
    /// The canaries succeeded: soak, then promotion, before the first wave.
    CanaryGate,
    /// Only hosts needing a person's action keep the wave open.
    NeedsAttention,
    /// The wave's remaining hosts are all in flight.
    InFlight,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// Host indices to start now, in order.
    pub start: Vec<usize>,
    pub halt: Option<HaltReason>,
    /// Every host terminal (and no halt): the campaign completes.
    pub complete: bool,
    pub wave: Option<usize>,
    pub waiting: Option<Waiting>,
    /// Call again at this instant even if nothing happens.
    pub wake_at: Option<i64>,
    /// Pending hosts whose device is gone (the engine skips them).
    pub vanished: Vec<usize>,
    pub tally: Tally,
    /// The effective concurrency of the current wave.
    pub concurrency: u32,
}

/// Failures and unknown outcomes of non-canary hosts.
pub fn tally(plan: &Plan, hosts: &[HostRecord]) -> Tally {
    let mut t = Tally::default();
    for (h, r) in plan.hosts.iter().zip(hosts) {
        if h.canary {
            continue;
        }
        if r.state.is_failure() {
            t.failures += 1;
        } else if r.state.is_unknown() {
            t.unknown += 1;
        }
    }
    t
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Dim {
    Rack,
    Switch,
    Role,
    Hypervisor,
}

type Counts<'p> = HashMap<(Dim, &'p str), u32>;

fn group(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or(NONE_GROUP)
}

/// The groups one host's disruption touches: its own, and its guests' (a hypervisor's reboot
/// takes its VMs down). Guests that are themselves disrupted plan hosts are already counted.
fn touches<'p>(
    caps: &Caps,
    h: &'p PlannedHost,
    skip_guest: &dyn Fn(&str) -> bool,
    out: &mut Vec<(Dim, &'p str)>,
) {
    let topo = |t: &'p Topology, out: &mut Vec<(Dim, &'p str)>| {
        if caps.rack.is_some() {
            out.push((Dim::Rack, group(&t.rack)));
        }
        if caps.switch.is_some() {
            out.push((Dim::Switch, group(&t.switch)));
        }
        if caps.role.is_some() {
            out.push((Dim::Role, group(&t.role)));
        }
    };
    topo(&h.topology, out);
    if caps.hypervisor.is_some() {
        out.push((Dim::Hypervisor, h.hypervisor.as_str()));
    }
    for g in h.guests.iter().filter(|g| !skip_guest(&g.name)) {
        topo(&g.topology, out);
        if caps.hypervisor.is_some() {
            out.push((Dim::Hypervisor, h.name.as_str()));
        }
    }
}

fn cap_of(caps: &Caps, d: Dim) -> u32 {
    match d {
        Dim::Rack => caps.rack,
        Dim::Switch => caps.switch,
        Dim::Role => caps.role,
        Dim::Hypervisor => caps.hypervisor,
    }
    .unwrap_or(u32::MAX)
}

/// Decides which hosts start now.
pub fn decide(t: &Tick<'_>) -> Decision {
    let plan = t.plan;
    let spec = t.spec;
    let mut d = Decision {
        tally: tally(plan, t.hosts),
        ..Decision::default()
    };
    if let Some((h, _)) = plan
        .hosts
        .iter()
        .zip(t.hosts)
        .find(|(h, r)| h.canary && (r.state.is_failure() || r.state.is_unknown()))
    {
        d.halt = Some(HaltReason::CanaryFailed {
            host: h.name.clone(),
        });
        return d;
    }
    if budget::exceeded(plan.failures_allowed, d.tally) {
        d.halt = Some(HaltReason::Budget {
            charged: d.tally.charged(),
            allowed: plan.failures_allowed,
        });
        return d;
    }
    let terminal = |i: usize| t.hosts.get(i).is_none_or(|r| r.state.is_terminal());
    let Some(w) = plan
        .waves
        .iter()
        .position(|w| w.hosts.clone().any(|i| !terminal(i)))
    else {
        d.complete = true;
        return d;
    };
    d.wave = Some(w);
    let wave = &plan.waves[w];
    if w > 0 {
        let prev = &plan.waves[w - 1];
        if prev.canary && !t.promoted {
            d.waiting = Some(Waiting::CanaryGate);
            return d;
        }
        let ended = prev
            .hosts
            .clone()
            .filter_map(|i| t.hosts[i].finished_at)
            .max();
        if let Some(end) = ended
            && !prev.canary
            && spec.strategy.batch_pause > 0
            && t.now < end + spec.strategy.batch_pause
        {
            let until = end + spec.strategy.batch_pause;
            d.waiting = Some(Waiting::BatchPause { until });
            d.wake_at = Some(until);
            return d;
        }
    }
    let active = wave
        .hosts
        .clone()
        .filter(|&i| t.hosts[i].state.is_active())
        .count() as u32;
    let remaining = wave.hosts.clone().filter(|&i| !terminal(i)).count() as u32;
    d.concurrency = if wave.canary {
        spec.strategy.canary_concurrency.max(1).min(remaining)
    } else {
        budget::effective_concurrency(
            spec.strategy.max_concurrency,
            remaining,
            plan.failures_allowed,
            d.tally,
            spec.strategy.tolerance,
        )
    };
    let mut slots = d.concurrency.saturating_sub(active);
    let pending: Vec<usize> = wave
        .hosts
        .clone()
        .filter(|&i| t.hosts[i].state == HostState::Pending)
        .collect();
    if pending.is_empty() {
        let all_attention = wave
            .hosts
            .clone()
            .filter(|&i| !terminal(i))
            .all(|i| t.hosts[i].state.is_unknown());
        d.waiting = Some(if all_attention {
            Waiting::NeedsAttention
        } else {
            Waiting::InFlight
        });
        return d;
    }
    if slots == 0 {
        d.waiting = Some(Waiting::Concurrency);
        return d;
    }
    let caps = spec.strategy.caps;
    let any_cap = caps != Caps::default();
    let mut counts: Counts<'_> = HashMap::new();
    let mut buf = Vec::new();
    if any_cap {
        let disrupted: std::collections::HashSet<&str> = plan
            .hosts
            .iter()
            .zip(t.hosts)
            .filter(|(_, r)| r.state.is_disrupted())
            .map(|(h, _)| h.name.as_str())
            .collect();
        for (h, _) in plan
            .hosts
            .iter()
            .zip(t.hosts)
            .filter(|(_, r)| r.state.is_disrupted())
        {
            buf.clear();
            touches(&caps, h, &|g| disrupted.contains(g), &mut buf);
            for k in &buf {
                *counts.entry(*k).or_default() += 1;
            }
        }
    }
    let (mut next_fit, mut capped) = (None::<i64>, false);
    for i in pending {
        if slots == 0 {
            break;
        }
        let h = &plan.hosts[i];
        let Some(labels) = (t.labels)(&h.name) else {
            d.vanished.push(i);
            continue;
        };
        let s = t.calendar.slots(labels, &spec.windows, spec.any_time);
        if !s.fits_at(t.now, h.estimate) {
            if let Some(f) = s.next_fit(t.now, h.estimate) {
                next_fit = Some(next_fit.map_or(f, |n: i64| n.min(f)));
            }
            continue;
        }
        if any_cap {
            buf.clear();
            // A guest already disrupted is counted; one started now is counted when it starts.
            touches(&caps, h, &|_| false, &mut buf);
            let mut inc: HashMap<(Dim, &str), u32> = HashMap::new();
            for k in &buf {
                *inc.entry(*k).or_default() += 1;
            }
            let fits = inc.iter().all(|(k, n)| {
                let before = counts.get(k).copied().unwrap_or(0);
                // A host whose own group alone exceeds a cap runs only in an undisrupted group.
                before == 0 || before + n <= cap_of(&caps, k.0)
            });
            if !fits {
                capped = true;
                continue;
            }
            for (k, n) in inc {
                *counts.entry(k).or_default() += n;
            }
        }
        d.start.push(i);
        slots -= 1;
    }
    if d.start.is_empty() {
        d.waiting = Some(if capped {
            Waiting::Topology
        } else {
            Waiting::Window { until: next_fit }
        });
        if !capped {
            d.wake_at = next_fit;
        }
    } else if next_fit.is_some() && slots > 0 {
        d.wake_at = next_fit;
    }
    d
}

/// Before step `step` of a running host: go, or wait for a slot where the rest of the host's
/// worst case (this step on, verification, rollback, margin) fits. Rollback steps are not
/// gated: a failed host is repaired whatever the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepFit {
    Go,
    Wait { until: Option<i64> },
}

/// The per-step window re-check.
pub fn step_fit(
    spec: &CampaignSpec,
    calendar: &Calendar,
    labels: &Labels,
    step: usize,
    now: i64,
) -> StepFit {
    let need = spec.remaining_estimate(step);
    let s = calendar.slots(labels, &spec.windows, spec.any_time);
    if s.fits_at(now, need) {
        StepFit::Go
    } else {
        StepFit::Wait {
            until: s.next_fit(now, need),
        }
    }
}
