use muster::pb;

use super::*;
use crate::campaign::host::HostState;
use crate::campaign::schedule::{Decision, HostRecord, StepFit, Tick, Waiting, decide, step_fit};
use crate::campaign::state::HaltReason;

struct World {
    spec: CampaignSpec,
    plan: Plan,
    hosts: Vec<HostRecord>,
    cal: Calendar,
    labels: std::collections::HashMap<String, Labels>,
}

impl World {
    fn new(p: &pb::CampaignSpec, devices: &[Candidate], windows: &[pb::Window]) -> Self {
        let cal = calendar(windows);
        let plan = make_plan(p, devices, &cal);
        Self {
            spec: spec(p),
            hosts: vec![HostRecord::pending(); plan.hosts.len()],
            plan,
            cal,
            labels: devices
                .iter()
                .map(|d| (d.name.clone(), d.labels.clone()))
                .collect(),
        }
    }

    fn decide_at(&self, now: i64, promoted: bool) -> Decision {
        let labels = |n: &str| self.labels.get(n);
        decide(&Tick {
            spec: &self.spec,
            plan: &self.plan,
            hosts: &self.hosts,
            calendar: &self.cal,
            labels: &labels,
            promoted,
            now,
        })
    }

    fn set(&mut self, name: &str, state: HostState) {
        let i = self.plan.index_of(name).unwrap();
        self.hosts[i].state = state;
        self.hosts[i].finished_at = Some(NOW);
    }

    fn started(&self, d: &Decision) -> Vec<&str> {
        d.start
            .iter()
            .map(|&i| self.plan.hosts[i].name.as_str())
            .collect()
    }
}

fn failed() -> HostState {
    HostState::Failed {
        cause: "exit 1".into(),
        rollback_due: false,
    }
}

fn running() -> HostState {
    HostState::Running { step: 0 }
}

fn strategy(p: &mut pb::CampaignSpec) -> &mut pb::CampaignStrategy {
    p.strategy.as_mut().unwrap()
}

fn hosts(n: u32) -> Option<pb::Count> {
    Some(pb::Count {
        value: Some(pb::count::Value::Hosts(n)),
    })
}

#[test]
fn wave_gating_and_max_concurrency_sliding_window() {
    let mut p = pb_spec();
    strategy(&mut p).batch_size = hosts(3);
    strategy(&mut p).max_concurrency = 2;
    strategy(&mut p).failure_threshold = hosts(5);
    let mut w = World::new(&p, &fleet(6, 1), &[]);
    let d = w.decide_at(NOW, false);
    assert_eq!(w.started(&d), ["h00", "h01"]);
    w.set("h00", running());
    w.set("h01", running());
    assert_eq!(w.decide_at(NOW, false).waiting, Some(Waiting::Concurrency));
    w.set("h00", HostState::Succeeded);
    assert_eq!(
        w.started(&w.decide_at(NOW, false)),
        ["h02"],
        "a freed slot is refilled"
    );
    w.set("h02", HostState::Succeeded);
    // Wave 1 not done while h01 runs.
    assert_eq!(w.decide_at(NOW, false).waiting, Some(Waiting::InFlight));
    w.set("h01", HostState::Succeeded);
    let d = w.decide_at(NOW, false);
    assert_eq!(d.wave, Some(1));
    assert_eq!(w.started(&d), ["h03", "h04"]);
}

#[test]
fn canaries_first_then_soak_and_promotion_gate() {
    let mut p = pb_spec();
    strategy(&mut p).canary_hosts = vec!["h03".into()];
    let mut w = World::new(&p, &fleet(4, 2), &[]);
    assert_eq!(w.started(&w.decide_at(NOW, false)), ["h03"]);
    w.set("h03", HostState::Succeeded);
    assert_eq!(w.decide_at(NOW, false).waiting, Some(Waiting::CanaryGate));
    // Budget 0, strict: one fleet host at a time, whatever the wave's size.
    assert_eq!(w.decide_at(NOW, true).start.len(), 1);
    // A failed canary halts; it never consumes the budget.
    w.set("h03", failed());
    let d = w.decide_at(NOW, true);
    assert_eq!(
        d.halt,
        Some(HaltReason::CanaryFailed { host: "h03".into() })
    );
    assert!(d.start.is_empty());
    assert_eq!(d.tally.failures, 0);
}

#[test]
fn budget_exceeded_halts_and_strict_mode_limits_in_flight() {
    let mut p = pb_spec();
    strategy(&mut p).failure_threshold = hosts(1);
    strategy(&mut p).max_concurrency = 10;
    let mut w = World::new(&p, &fleet(10, 1), &[]);
    assert_eq!(
        w.decide_at(NOW, false).start.len(),
        2,
        "allowed 1 → 2 in flight"
    );
    w.set("h00", failed());
    assert_eq!(w.decide_at(NOW, false).start.len(), 1);
    w.set(
        "h01",
        HostState::NeedsAttention {
            stage: crate::campaign::host::Stage::Step(0),
            failed: false,
            message: "crash".into(),
        },
    );
    let d = w.decide_at(NOW, false);
    assert_eq!(
        d.halt,
        Some(HaltReason::Budget {
            charged: 2,
            allowed: 1
        })
    );
    assert!(d.start.is_empty());
}

#[test]
fn rack_caps_count_failed_hosts_and_none_group() {
    let mut p = pb_spec();
    strategy(&mut p).max_per_rack = 1;
    strategy(&mut p).failure_threshold = hosts(10);
    let mut devs = fleet(4, 2); // h00,h02 in r0; h01,h03 in r1
    devs.push(cand("x1", ""));
    devs.push(cand("x2", ""));
    let mut w = World::new(&p, &devs, &[]);
    let d = w.decide_at(NOW, false);
    assert_eq!(
        w.started(&d),
        ["h00", "h01", "x1"],
        "one per rack, <none> is a group too"
    );
    w.set("h00", failed());
    w.set("h01", HostState::Succeeded);
    w.set("x1", HostState::Succeeded);
    // r0 still holds a failed-not-rolled-back host: h02 waits.
    let d = w.decide_at(NOW, false);
    assert_eq!(w.started(&d), ["h03", "x2"]);
    w.set("h03", running());
    w.set("x2", running());
    assert_eq!(w.decide_at(NOW, false).waiting, Some(Waiting::Topology));
    w.set(
        "h00",
        HostState::RolledBack {
            cause: "exit 1".into(),
        },
    );
    assert_eq!(w.started(&w.decide_at(NOW, false)), ["h02"]);
}

#[test]
fn a_hypervisor_takes_its_vms_with_it() {
    let mut p = pb_spec();
    strategy(&mut p).max_per_role = 1;
    strategy(&mut p).failure_threshold = hosts(10);
    let mut devs = vec![cand("hv1", "r0"), cand("db2", "r1")];
    devs[1].topology.role = Some("db".into());
    let mut vm = cand("db1", "r0");
    vm.parent = Some("hv1".into());
    vm.topology.role = Some("db".into());
    vm.labels.insert("env".into(), "dev".into()); // a guest outside the campaign
    devs.push(vm);
    let mut w = World::new(&p, &devs, &[]);
    // db2 first in order? Order: r0 → hv1, r1 → db2. hv1 takes db1 (role db) down: db2 waits.
    let d = w.decide_at(NOW, false);
    assert_eq!(w.started(&d), ["hv1"]);
    w.set("hv1", running());
    assert_eq!(w.decide_at(NOW, false).waiting, Some(Waiting::Topology));
    w.set("hv1", HostState::Succeeded);
    assert_eq!(w.started(&w.decide_at(NOW, false)), ["db2"]);
}

#[test]
fn hypervisor_cap_groups_vms_by_parent() {
    let mut p = pb_spec();
    strategy(&mut p).max_per_hypervisor = 1;
    strategy(&mut p).failure_threshold = hosts(10);
    let mut devs = Vec::new();
    for n in ["vm1", "vm2"] {
        let mut vm = cand(n, "r0");
        vm.parent = Some("hv9".into());
        devs.push(vm);
    }
    devs.push(cand("bare", "r0"));
    let w = World::new(&p, &devs, &[]);
    assert_eq!(w.started(&w.decide_at(NOW, false)), ["bare", "vm1"]);
}

#[test]
fn window_fit_waits_and_says_until_when() {
    // Saturdays 02:00-04:00 UTC; E = 20 min.
    let mut p = pb_spec();
    p.any_time = false;
    strategy(&mut p).failure_threshold = hosts(5);
    let sat = window("sat", "0 2 * * sat", 7200, false, "env=prod");
    let w = World::new(&p, &fleet(2, 1), std::slice::from_ref(&sat));
    let open = NOW + 18 * 3600; // Sat 02:00
    let d = w.decide_at(NOW, false);
    assert!(d.start.is_empty());
    assert_eq!(d.waiting, Some(Waiting::Window { until: Some(open) }));
    assert_eq!(d.wake_at, Some(open));
    assert_eq!(w.decide_at(open, false).start.len(), 2);
    // Boundaries: remaining − 1 s, = remaining, + 1 s of E (E = 1200 s, window ends at +7200).
    let end = open + 7200;
    assert_eq!(w.decide_at(end - 1201, false).start.len(), 2);
    assert_eq!(w.decide_at(end - 1200, false).start.len(), 2);
    let d = w.decide_at(end - 1199, false);
    assert!(d.start.is_empty());
    assert_eq!(d.wake_at, Some(open + 7 * 86400), "next Saturday");
    // A freeze selecting the hosts blocks starts even inside the window.
    // A freeze opening 10 min into the window, for an hour: it lies within E, so no start
    // at 02:00; the next fit is when it ends (03:10, 50 min left).
    let freeze = window("stop", "10 2 16 1 *", 3600, true, "env=prod");
    let w = World::new(&p, &fleet(2, 1), &[sat, freeze]);
    let d = w.decide_at(open, false);
    assert!(d.start.is_empty());
    assert_eq!(d.wake_at, Some(open + 70 * 60));
}

#[test]
fn per_step_recheck_uses_the_rest_of_the_host() {
    let mut p = pb_spec();
    p.any_time = false;
    p.steps.push(ssh("reboot-later", 1800));
    let cal = calendar(&[window("sat", "0 2 * * sat", 7200, false, "env=prod")]);
    let s = spec(&p);
    let l = labels(&[("env", "prod")]);
    let open = NOW + 18 * 3600;
    // Remaining from step 1: 1800 + 300 + 300 = 2400 s.
    assert_eq!(step_fit(&s, &cal, &l, 1, open + 7200 - 2400), StepFit::Go);
    assert_eq!(
        step_fit(&s, &cal, &l, 1, open + 7200 - 2399),
        StepFit::Wait {
            until: Some(open + 7 * 86400)
        }
    );
}

#[test]
fn batch_pause_and_completion() {
    let mut p = pb_spec();
    strategy(&mut p).batch_size = hosts(1);
    strategy(&mut p).batch_pause = dur(600);
    let mut w = World::new(&p, &fleet(2, 1), &[]);
    w.set("h00", HostState::Succeeded);
    let d = w.decide_at(NOW + 10, false);
    assert_eq!(d.waiting, Some(Waiting::BatchPause { until: NOW + 600 }));
    assert_eq!(w.started(&w.decide_at(NOW + 600, false)), ["h01"]);
    w.set("h01", HostState::Succeeded);
    assert!(w.decide_at(NOW + 700, false).complete);
}

#[test]
fn needs_attention_holds_the_wave_for_a_person_and_vanished_hosts_are_reported() {
    let mut p = pb_spec();
    strategy(&mut p).failure_threshold = hosts(3);
    let mut w = World::new(&p, &fleet(2, 1), &[]);
    w.set("h00", HostState::Succeeded);
    w.set(
        "h01",
        HostState::NeedsAttention {
            stage: crate::campaign::host::Stage::Verify,
            failed: false,
            message: "lost".into(),
        },
    );
    assert_eq!(
        w.decide_at(NOW, false).waiting,
        Some(Waiting::NeedsAttention)
    );
    let mut w = World::new(&p, &fleet(2, 1), &[]);
    w.labels.remove("h00");
    let d = w.decide_at(NOW, false);
    assert_eq!(d.vanished, vec![0]);
    assert_eq!(w.started(&d), ["h01"]);
}

#[test]
fn a_hypervisor_whose_vms_alone_exceed_a_cap_runs_in_an_undisrupted_group() {
    let mut p = pb_spec();
    strategy(&mut p).max_per_role = 1;
    strategy(&mut p).failure_threshold = hosts(10);
    let mut devs = vec![cand("hv1", "r0"), cand("db3", "r1")];
    devs[1].topology.role = Some("db".into());
    for n in ["db1", "db2"] {
        let mut vm = cand(n, "r0");
        vm.parent = Some("hv1".into());
        vm.topology.role = Some("db".into());
        vm.labels.insert("env".into(), "dev".into());
        devs.push(vm);
    }
    let mut w = World::new(&p, &devs, &[]);
    assert!(
        w.plan
            .warnings
            .iter()
            .any(|m| m.contains("hv1 takes 2 hosts of role db"))
    );
    assert_eq!(w.started(&w.decide_at(NOW, false)), ["hv1"]);
    // While another db host is disrupted, hv1 waits.
    w.set("db3", running());
    assert_eq!(w.decide_at(NOW, false).waiting, Some(Waiting::Topology));
}
