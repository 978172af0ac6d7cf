//! Unit tests of the engine's pure parts: crash recovery decisions and record round trips.
#![allow(clippy::unwrap_used)]

use muster::pb;

use super::records::{self, HostData, HostStateRec, Intent, StageRec};
use super::resume::{Recovery, recover};
use crate::campaign::CampaignSpec;
use crate::campaign::host::{HostState, Stage};

fn spec() -> CampaignSpec {
    let step = |name: &str, action, idempotent| pb::CampaignStep {
        name: name.into(),
        action: Some(action),
        timeout: Some(pbjson_types::Duration {
            seconds: 600,
            nanos: 0,
        }),
        idempotent,
    };
    use pb::campaign_step::Action;
    let p = pb::CampaignSpec {
        selector: "env=prod".into(),
        steps: vec![
            step(
                "install",
                Action::SshCommand("apt-get install x".into()),
                false,
            ),
            step(
                "restart",
                Action::SshCommand("systemctl restart x".into()),
                true,
            ),
            step("reboot", Action::Reboot(true), false),
            step(
                "wait",
                Action::WaitReport(pb::ExpectRule {
                    path: "os.kernel".into(),
                    op: "==".into(),
                    value: "6.1".into(),
                }),
                false,
            ),
        ],
        any_time: true,
        strategy: Some(pb::CampaignStrategy::default()),
        ..Default::default()
    };
    CampaignSpec::try_from(&p).unwrap()
}

fn intent(stage: StageRec, deadline: i64) -> Intent {
    Intent {
        campaign: "c".into(),
        host: "h1".into(),
        stage,
        attempt: 1,
        intent_id: "id-1".into(),
        deadline,
        boot_before: "boot-a".into(),
        since_nanos: 1,
        fence: 1,
        reboot_done: false,
    }
}

#[test]
fn an_interrupted_non_idempotent_step_is_asked_of_the_host_else_needs_attention() {
    let r = recover(&spec(), &intent(StageRec::Step(0), 2000), "boot-a", 1000);
    let Recovery::AskHost(msg) = r else {
        panic!("{r:?}")
    };
    assert!(
        msg.contains("install") && msg.contains("not marked idempotent"),
        "{msg}"
    );
}

#[test]
fn an_interrupted_idempotent_step_reruns() {
    assert_eq!(
        recover(&spec(), &intent(StageRec::Step(1), 2000), "boot-a", 1000),
        Recovery::Rerun
    );
}

#[test]
fn observations_rerun() {
    assert_eq!(
        recover(&spec(), &intent(StageRec::Verify, 2000), "", 1000),
        Recovery::Observe
    );
    assert_eq!(
        recover(&spec(), &intent(StageRec::Step(3), 2000), "", 5000),
        Recovery::Observe
    );
}

#[test]
fn a_reboot_is_never_repeated() {
    let s = spec();
    // Rebooted already: wait for the report (even past the deadline).
    assert_eq!(
        recover(&s, &intent(StageRec::Step(2), 2000), "boot-b", 5000),
        Recovery::Observe
    );
    // Not yet, deadline ahead: keep waiting, never reissue.
    assert_eq!(
        recover(&s, &intent(StageRec::Step(2), 2000), "boot-a", 1000),
        Recovery::Observe
    );
    // Not rebooted and the deadline passed: a person decides.
    assert!(matches!(
        recover(&s, &intent(StageRec::Step(2), 2000), "boot-a", 2001),
        Recovery::Attention(_)
    ));
}

#[test]
fn host_records_round_trip_every_state() {
    let states = [
        HostState::Pending,
        HostState::Running { step: 2 },
        HostState::Verifying,
        HostState::Succeeded,
        HostState::Failed {
            cause: "x".into(),
            rollback_due: true,
        },
        HostState::RollingBack {
            step: 1,
            cause: "y".into(),
        },
        HostState::RolledBack { cause: "z".into() },
        HostState::NeedsAttention {
            stage: Stage::Rollback(3),
            failed: true,
            message: "m".into(),
        },
        HostState::Skipped { reason: "r".into() },
    ];
    for s in states {
        let mut h = HostData::pending();
        h.state = HostStateRec::from(&s);
        h.intent = Some(intent(StageRec::Step(1), 9));
        let back = records::decode_host(&records::encode_host(&h).unwrap()).unwrap();
        assert_eq!(back, h);
        assert_eq!(HostState::from(back.state), s);
    }
    let k = records::host_key("01ABC", 70_000);
    assert_eq!(records::host_index(&k), Some(70_000));
    assert!(k.starts_with(&records::hosts_prefix("01ABC")));
}
