//! Unit tests of the campaign domain, one file per part; fixtures here.
#![allow(clippy::unwrap_used)]

mod approval;
mod budget;
mod plan;
mod render;
mod schedule;
mod soak;
mod states;
mod validate;

use muster::pb;
use muster::window::Schedule;

use super::Labels;
use super::calendar::{Calendar, HORIZON_SECONDS};
use super::plan::{Candidate, HealthLevel, Plan, PlanInput, Topology};
use super::spec::CampaignSpec;

/// 2027-01-15T08:00:00Z, a Friday.
pub const NOW: i64 = 1_800_000_000;

pub fn dur(s: i64) -> Option<pbjson_types::Duration> {
    Some(pbjson_types::Duration {
        seconds: s,
        nanos: 0,
    })
}

pub fn ssh(cmd: &str, timeout: i64) -> pb::CampaignStep {
    pb::CampaignStep {
        action: Some(pb::campaign_step::Action::SshCommand(cmd.into())),
        timeout: dur(timeout),
        ..Default::default()
    }
}

/// `env=prod`, one 10-minute ssh step, any time, verify 5 min, margin 5 min: E = 20 min.
pub fn pb_spec() -> pb::CampaignSpec {
    pb::CampaignSpec {
        selector: "env=prod".into(),
        steps: vec![ssh("apt-get install -y openssl=3.0.1", 600)],
        any_time: true,
        verify_timeout: dur(300),
        strategy: Some(pb::CampaignStrategy::default()),
        ..Default::default()
    }
}

pub fn spec(p: &pb::CampaignSpec) -> CampaignSpec {
    CampaignSpec::try_from(p).unwrap()
}

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn cand(name: &str, rack: &str) -> Candidate {
    Candidate {
        name: name.into(),
        labels: labels(&[("env", "prod"), ("rack", rack)]),
        topology: Topology {
            rack: (!rack.is_empty()).then(|| rack.to_string()),
            ..Topology::default()
        },
        parent: None,
        health: HealthLevel::Ok,
        health_reasons: vec![],
        predicted_disk_failure: false,
        last_report: Some(NOW - 60),
    }
}

/// `n` hosts h00.. over `racks` racks r0...
pub fn fleet(n: usize, racks: usize) -> Vec<Candidate> {
    (0..n)
        .map(|i| cand(&format!("h{i:02}"), &format!("r{}", i % racks)))
        .collect()
}

pub fn calendar(windows: &[pb::Window]) -> Calendar {
    let s: Vec<Schedule> = windows
        .iter()
        .map(|w| Schedule::parse(w).unwrap())
        .collect();
    Calendar::new(&s, NOW - 3600, NOW + HORIZON_SECONDS + 7 * 86400)
}

pub fn window(name: &str, cron: &str, secs: i64, freeze: bool, selector: &str) -> pb::Window {
    pb::Window {
        meta: Some(pb::ObjectMeta {
            name: name.into(),
            ..Default::default()
        }),
        selector: selector.into(),
        cron: cron.into(),
        duration: dur(secs),
        freeze,
        ..Default::default()
    }
}

pub fn make_plan(p: &pb::CampaignSpec, devices: &[Candidate], cal: &Calendar) -> Plan {
    super::plan::plan(PlanInput {
        spec: &spec(p),
        devices,
        calendar: cal,
        now: NOW,
        silent_after: 3600,
    })
    .unwrap()
}
