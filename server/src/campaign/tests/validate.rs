use muster::pb;

use super::*;
use crate::campaign::error::CampaignError;
use crate::campaign::spec::{Amount, Canaries, DEFAULT_MARGIN_SECONDS, StepAction};

fn field_of(p: &pb::CampaignSpec) -> String {
    match CampaignSpec::try_from(p) {
        Err(CampaignError::Invalid { field, .. }) => field,
        other => panic!("expected an invalid field, got {other:?}"),
    }
}

fn with_strategy(f: impl FnOnce(&mut pb::CampaignStrategy)) -> pb::CampaignSpec {
    let mut p = pb_spec();
    f(p.strategy.as_mut().unwrap());
    p
}

#[test]
fn a_good_spec_gets_its_defaults() {
    let s = spec(&pb_spec());
    assert_eq!(s.steps[0].name, "ssh-1");
    assert!(matches!(s.steps[0].action, StepAction::Ssh(_)));
    assert_eq!(s.strategy.budget, Amount::Hosts(0));
    assert_eq!(s.strategy.canaries, Canaries::None);
    assert_eq!(s.strategy.soak_reports, 2);
    assert_eq!(s.approval.required, 1);
    assert_eq!(s.window_margin, DEFAULT_MARGIN_SECONDS);
    assert_eq!(s.host_estimate(), 600 + 300 + 300);
}

#[test]
fn step_errors_name_the_step() {
    let mut p = pb_spec();
    p.steps.push(pb::CampaignStep {
        timeout: dur(5),
        ..Default::default()
    });
    assert_eq!(field_of(&p), "steps[1]");
    p.steps[1] = ssh("true", 0);
    assert_eq!(field_of(&p), "steps[1].timeout");
    p.steps[1] = ssh("true", 24 * 3600 + 1);
    assert_eq!(field_of(&p), "steps[1].timeout");
    p.steps[1] = ssh(&"x".repeat(16 * 1024 + 1), 60);
    assert_eq!(field_of(&p), "steps[1].ssh_command");
    p.steps[1] = ssh("", 60);
    assert_eq!(field_of(&p), "steps[1].ssh_command");
    p.steps[1].action = Some(pb::campaign_step::Action::AnsiblePlaybook(
        "site.yml".into(),
    ));
    assert_eq!(field_of(&p), "steps[1].ansible_playbook");
    p.steps[1].action = Some(pb::campaign_step::Action::Reboot(false));
    assert_eq!(field_of(&p), "steps[1].reboot");
    p.steps[1].action = Some(pb::campaign_step::Action::WaitReport(pb::ExpectRule {
        path: "packages.openssl".into(),
        op: "~=".into(),
        value: "3".into(),
    }));
    assert_eq!(field_of(&p), "steps[1].wait_report.op");
    p.steps[1] = ssh("true", 60);
    p.steps[1].name = "ssh-1".into();
    assert_eq!(field_of(&p), "steps[1].name");
    p.steps.clear();
    assert_eq!(field_of(&p), "steps");
    let mut p = pb_spec();
    p.rollback.push(ssh("true", -1));
    assert_eq!(field_of(&p), "rollback[0].timeout");
}

#[test]
fn strategy_errors_name_the_field() {
    let pct = |p| {
        Some(pb::Count {
            value: Some(pb::count::Value::Percent(p)),
        })
    };
    assert_eq!(
        field_of(&with_strategy(|s| s.failure_threshold = pct(101))),
        "strategy.failure_threshold.percent"
    );
    assert_eq!(
        field_of(&with_strategy(|s| s.failure_threshold = pct(0))),
        "strategy.failure_threshold.percent"
    );
    assert_eq!(
        field_of(&with_strategy(|s| s.batch_size = pct(0))),
        "strategy.batch_size.percent"
    );
    let hosts0 = Some(pb::Count {
        value: Some(pb::count::Value::Hosts(0)),
    });
    assert_eq!(
        field_of(&with_strategy(|s| s.batch_size = hosts0)),
        "strategy.batch_size.hosts"
    );
    assert_eq!(
        field_of(&with_strategy(|s| s.max_concurrency = 1_000_000)),
        "strategy.max_concurrency"
    );
    assert_eq!(
        field_of(&with_strategy(|s| {
            s.canary_hosts = vec!["h01".into()];
            s.canary_count = 2;
        })),
        "strategy.canary_count"
    );
    assert_eq!(
        field_of(&with_strategy(|s| s.canary_hosts = vec!["Bad Name".into()])),
        "strategy.canary_hosts[0]"
    );
    assert_eq!(
        field_of(&with_strategy(|s| s.tolerance = 7)),
        "strategy.tolerance"
    );
    assert_eq!(
        field_of(&with_strategy(|s| s.canary_soak = dur(8 * 86400))),
        "strategy.canary_soak"
    );
    assert_eq!(
        field_of(&with_strategy(|s| s.soak_reports = 1)),
        "strategy.soak_reports"
    );
    let s = spec(&with_strategy(|s| s.failure_threshold = pct(100)));
    assert_eq!(s.strategy.budget, Amount::Percent(100));
}

#[test]
fn selector_approval_and_desired_errors() {
    let mut p = pb_spec();
    p.selector = "env in (prod".into();
    assert_eq!(field_of(&p), "selector");
    p.selector = String::new();
    assert_eq!(field_of(&p), "selector");
    let mut p = pb_spec();
    p.approval = Some(pb::ApprovalPolicy {
        approvers: vec!["ann".into()],
        required: 2,
        ..Default::default()
    });
    assert_eq!(field_of(&p), "approval.required");
    p.approval = Some(pb::ApprovalPolicy {
        approvers: vec!["role:sre".into()],
        required: 2,
        ..Default::default()
    });
    assert!(
        CampaignSpec::try_from(&p).is_ok(),
        "a role may hold many approvers"
    );
    let mut p = pb_spec();
    p.desired = Some(pb::DesiredState {
        packages: vec![pb::PackageRequirement {
            name: "openssl".into(),
            r#match: pb::VersionMatch::Exact as i32,
            ..Default::default()
        }],
        ..Default::default()
    });
    assert_eq!(field_of(&p), "desired.packages[0].version");
    p.desired = Some(pb::DesiredState::default());
    assert!(
        spec(&p).desired.is_none(),
        "an empty desired state is no change"
    );
    let mut p = pb_spec();
    p.windows = vec!["sat".into()];
    assert_eq!(field_of(&p), "any_time");
}

#[test]
fn windows_must_exist_be_maintenance_and_open_within_30_days() {
    let cal = calendar(&[
        window("sat", "0 2 * * sat", 7200, false, ""),
        window("xmas", "0 0 25 12 *", 86400, true, ""),
        window("leap", "0 0 29 2 *", 3600, false, ""),
    ]);
    let mut p = pb_spec();
    p.any_time = false;
    p.windows = vec!["sat".into()];
    assert!(CampaignSpec::parse(&p, &cal, NOW).is_ok());
    for (name, why) in [
        ("nope", "no window named"),
        ("xmas", "is a freeze"),
        ("leap", "does not open"),
    ] {
        p.windows = vec!["sat".into(), name.into()];
        match CampaignSpec::parse(&p, &cal, NOW) {
            Err(CampaignError::Invalid { field, problem }) => {
                assert_eq!(field, "windows[1]");
                assert!(problem.contains(why), "{problem}");
            }
            other => panic!("{other:?}"),
        }
    }
    p.windows = vec!["sat".into()];
    p.deadline = Some(pbjson_types::Timestamp {
        seconds: NOW - 1,
        nanos: 0,
    });
    assert_eq!(
        CampaignSpec::parse(&p, &cal, NOW).unwrap_err().field(),
        Some("deadline")
    );
}
