use muster::pb;

use super::*;
use crate::campaign::digest::{canonical, digest};
use crate::campaign::error::CampaignError;
use crate::campaign::plan::{SkipCode, plan};

fn pct(p: u32) -> Option<pb::Count> {
    Some(pb::Count {
        value: Some(pb::count::Value::Percent(p)),
    })
}

fn names(p: &Plan, w: usize) -> Vec<&str> {
    p.waves[w]
        .hosts
        .clone()
        .map(|i| p.hosts[i].name.as_str())
        .collect()
}

fn plan_err(p: &pb::CampaignSpec, devices: &[Candidate], cal: &Calendar) -> CampaignError {
    plan(PlanInput {
        spec: &spec(p),
        devices,
        calendar: cal,
        now: NOW,
        silent_after: 3600,
    })
    .unwrap_err()
}

#[test]
fn waves_by_percent_round_robin_across_racks_last_takes_the_rest() {
    let mut p = pb_spec();
    p.strategy.as_mut().unwrap().batch_size = pct(30);
    let plan = make_plan(&p, &fleet(10, 3), &calendar(&[]));
    let sizes: Vec<usize> = plan.waves.iter().map(|w| w.hosts.len()).collect();
    assert_eq!(sizes, [3, 3, 3, 1]);
    assert_eq!(names(&plan, 0), ["h00", "h01", "h02"], "one per rack");
    assert_eq!(plan.fleet_hosts, 10);
    assert_eq!(plan.trip_point(), 1);
    // 1 % of 10 hosts is still a batch of 1.
    p.strategy.as_mut().unwrap().batch_size = pct(1);
    assert_eq!(make_plan(&p, &fleet(10, 3), &calendar(&[])).waves.len(), 10);
}

#[test]
fn canary_count_spreads_across_racks_and_batches_are_of_the_rest() {
    let mut p = pb_spec();
    let s = p.strategy.as_mut().unwrap();
    s.canary_count = 2;
    s.batch_size = pct(30);
    s.failure_threshold = pct(10);
    let plan = make_plan(&p, &fleet(10, 3), &calendar(&[]));
    assert!(plan.waves[0].canary);
    assert_eq!(names(&plan, 0), ["h00", "h01"]);
    let racks: Vec<_> = plan.hosts[..2]
        .iter()
        .map(|h| h.topology.rack.clone())
        .collect();
    assert_ne!(racks[0], racks[1]);
    // 8 fleet hosts, 30 % → 2 per wave.
    let sizes: Vec<usize> = plan.waves[1..].iter().map(|w| w.hosts.len()).collect();
    assert_eq!(sizes, [2, 2, 2, 2]);
    assert_eq!(plan.failures_allowed, 1, "10 % of all 10 planned hosts");
}

#[test]
fn unhealthy_silent_frozen_and_unfitting_hosts_are_skipped_with_reasons() {
    let mut devs = fleet(8, 2);
    devs[1].health = HealthLevel::Critical;
    devs[1].health_reasons = vec!["sensor.threshold".into()];
    devs[2].predicted_disk_failure = true;
    devs[3].last_report = Some(NOW - 7200);
    devs[4].last_report = None;
    devs[5].labels.insert("tier".into(), "gold".into());
    devs[6].health = HealthLevel::Unknown;
    let cal = calendar(&[window(
        "quarter-end",
        "0 0 * * *",
        86400 * 2,
        true,
        "tier=gold",
    )]);
    let plan = make_plan(&pb_spec(), &devs, &cal);
    let got: Vec<(&str, SkipCode)> = plan
        .skipped
        .iter()
        .map(|s| (s.name.as_str(), s.code))
        .collect();
    assert_eq!(
        got,
        [
            ("h01", SkipCode::Critical),
            ("h02", SkipCode::PredictedDiskFailure),
            ("h03", SkipCode::Silent),
            ("h04", SkipCode::Silent),
            ("h05", SkipCode::Frozen),
            ("h06", SkipCode::Silent),
        ]
    );
    assert!(plan.skipped[0].reason.contains("sensor.threshold"));
    assert!(
        plan.skipped[4].reason.contains("quarter-end"),
        "{}",
        plan.skipped[4].reason
    );
    assert_eq!(plan.hosts.len(), 2);
}

#[test]
fn window_fit_at_plan_time_and_deadline() {
    // Saturdays 02:00-04:00 UTC: 2 h. E = 20 min fits; first fit is Sat 2027-01-16 02:00.
    let cal = calendar(&[window("sat", "0 2 * * sat", 7200, false, "env=prod")]);
    let mut p = pb_spec();
    p.any_time = false;
    let plan = make_plan(&p, &fleet(2, 1), &cal);
    assert_eq!(plan.hosts[0].first_fit, Some(NOW + 18 * 3600));
    // A 3 h step does not fit a 2 h window: skipped, saying so.
    p.steps[0].timeout = dur(3 * 3600);
    match plan_err(&p, &fleet(2, 1), &cal) {
        CampaignError::Invalid { field, problem } => {
            assert_eq!(field, "selector");
            assert!(problem.contains("no window fits"), "{problem}");
        }
        e => panic!("{e:?}"),
    }
    // A deadline before the first window skips as well.
    let mut p = pb_spec();
    p.any_time = false;
    p.deadline = Some(pbjson_types::Timestamp {
        seconds: NOW + 3600,
        nanos: 0,
    });
    let devs = [
        fleet(1, 1),
        vec![{
            let mut c = cand("anytime", "r0");
            c.labels.insert("env".into(), "prod".into());
            c
        }],
    ]
    .concat();
    let err = plan_err(&p, &devs, &cal);
    assert!(err.to_string().contains("deadline"), "{err}");
}

#[test]
fn selector_and_canary_errors_name_the_field() {
    let mut p = pb_spec();
    p.selector = "env=staging".into();
    assert_eq!(
        plan_err(&p, &fleet(3, 1), &calendar(&[])).field(),
        Some("selector")
    );
    let mut p = pb_spec();
    p.strategy.as_mut().unwrap().canary_hosts = vec!["h01".into(), "ghost".into()];
    assert_eq!(
        plan_err(&p, &fleet(3, 1), &calendar(&[])).field(),
        Some("strategy.canary_hosts[1]")
    );
    let mut devs = fleet(3, 1);
    devs[1].health = HealthLevel::Critical;
    p.strategy.as_mut().unwrap().canary_hosts = vec!["h01".into()];
    let e = plan_err(&p, &devs, &calendar(&[]));
    assert_eq!(e.field(), Some("strategy.canary_hosts[0]"));
    assert!(e.to_string().contains("skipped"));
    let mut p = pb_spec();
    p.strategy.as_mut().unwrap().canary_count = 4;
    assert_eq!(
        plan_err(&p, &fleet(3, 1), &calendar(&[])).field(),
        Some("strategy.canary_count")
    );
}

#[test]
fn vms_are_guests_of_their_hypervisor() {
    let mut devs = fleet(2, 1);
    let mut vm = cand("vm1", "r0");
    vm.parent = Some("h00".into());
    vm.labels.insert("env".into(), "dev".into()); // not targeted, still a guest
    vm.topology.role = Some("db".into());
    devs.push(vm);
    let plan = make_plan(&pb_spec(), &devs, &calendar(&[]));
    let h0 = &plan.hosts[plan.index_of("h00").unwrap()];
    assert_eq!(h0.guests.len(), 1);
    assert_eq!(h0.guests[0].name, "vm1");
    assert_eq!(h0.hypervisor, "h00");
}

#[test]
fn frozen_plan_round_trips_and_the_digest_binds_spec_and_plan() {
    let mut p = pb_spec();
    p.strategy.as_mut().unwrap().canary_count = 1;
    p.desired = Some(pb::DesiredState {
        sysctl: [
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "2".to_string()),
        ]
        .into(),
        ..Default::default()
    });
    let mut devs = fleet(5, 2);
    devs[4].health = HealthLevel::Critical;
    let plan = make_plan(&p, &devs, &calendar(&[]));
    assert_eq!(Plan::from_pb(&plan.to_pb()).unwrap(), plan);
    let d1 = digest(&p, &plan).unwrap();
    // The same spec with its map built in the other order: same digest.
    let mut q = p.clone();
    q.desired.as_mut().unwrap().sysctl = [
        ("b".to_string(), "2".to_string()),
        ("a".to_string(), "1".to_string()),
    ]
    .into();
    assert_eq!(digest(&q, &plan).unwrap(), d1);
    // Any edit changes it; so does a different plan.
    q.steps[0] = ssh("apt-get install -y openssl=3.0.2", 600);
    assert_ne!(digest(&q, &plan).unwrap(), d1);
    let other = make_plan(&p, &fleet(6, 2), &calendar(&[]));
    assert_ne!(digest(&p, &other).unwrap(), d1);
    // Canonical JSON has sorted keys (serde_json without preserve_order).
    let c = canonical(&p).unwrap();
    assert!(
        c.find("\"any_time\"").unwrap() < c.find("\"selector\"").unwrap(),
        "{c}"
    );
}
