use crate::campaign::error::CampaignError;
use crate::campaign::host::{self, HostEvent as H, HostShape, HostState, Stage};
use crate::campaign::state::{
    self, CampaignEvent as E, CampaignState as S, HaltReason, PauseReason, Resumer,
};

const SHAPE: HostShape = HostShape {
    steps: 2,
    rollback_steps: 1,
};

fn run(mut s: HostState, events: Vec<H>) -> Result<HostState, CampaignError> {
    for e in events {
        s = host::apply(&s, e, SHAPE)?;
    }
    Ok(s)
}

#[test]
fn host_happy_path_failure_rollback_and_attention() {
    let ok = run(
        HostState::Pending,
        vec![
            H::Start,
            H::StepSucceeded,
            H::StepSucceeded,
            H::VerifyPassed,
        ],
    )
    .unwrap();
    assert_eq!(ok, HostState::Succeeded);
    let f = run(
        HostState::Pending,
        vec![
            H::Start,
            H::StepFailed {
                cause: "exit 2".into(),
            },
        ],
    )
    .unwrap();
    assert!(
        f.is_failure() && f.is_disrupted() && !f.is_terminal(),
        "rollback due"
    );
    let rb = run(f.clone(), vec![H::BeginRollback, H::RollbackStepSucceeded]).unwrap();
    assert_eq!(
        rb,
        HostState::RolledBack {
            cause: "exit 2".into()
        }
    );
    assert!(rb.is_failure() && rb.is_terminal() && !rb.is_disrupted());
    let na = run(
        f,
        vec![
            H::BeginRollback,
            H::RollbackStepFailed {
                cause: "exit 1".into(),
            },
        ],
    )
    .unwrap();
    assert!(matches!(
        na,
        HostState::NeedsAttention {
            stage: Stage::Rollback(0),
            failed: true,
            ..
        }
    ));
    // Verification failing is a failure too.
    let vf = run(
        HostState::Pending,
        vec![
            H::Start,
            H::StepSucceeded,
            H::StepSucceeded,
            H::VerifyFailed {
                cause: "openssl 3.0.1 < 3.0.2".into(),
            },
        ],
    )
    .unwrap();
    assert!(vf.is_failure());
}

#[test]
fn needs_attention_is_left_only_by_a_person() {
    let na = run(
        HostState::Pending,
        vec![
            H::Start,
            H::StepSucceeded,
            H::OutcomeUnknown {
                message: "server crashed".into(),
            },
        ],
    )
    .unwrap();
    assert!(matches!(
        na,
        HostState::NeedsAttention {
            stage: Stage::Step(1),
            ..
        }
    ));
    for e in [
        H::StepSucceeded,
        H::StepFailed { cause: "x".into() },
        H::VerifyPassed,
        H::Start,
        H::BeginRollback,
    ] {
        assert!(matches!(
            host::apply(&na, e, SHAPE),
            Err(CampaignError::Precondition(_))
        ));
    }
    assert_eq!(
        host::apply(&na, H::Retry, SHAPE).unwrap(),
        HostState::Running { step: 1 }
    );
    assert_eq!(
        host::apply(
            &na,
            H::MarkFailed {
                cause: "by ann".into()
            },
            SHAPE
        )
        .unwrap(),
        HostState::Failed {
            cause: "by ann".into(),
            rollback_due: false
        }
    );
    assert!(matches!(
        host::apply(&na, H::Rollback, SHAPE).unwrap(),
        HostState::RollingBack { step: 0, .. }
    ));
    let none = HostShape {
        steps: 2,
        rollback_steps: 0,
    };
    assert!(host::apply(&na, H::Rollback, none).is_err());
    // Wrong-state actions name the state.
    let e = host::apply(&HostState::Succeeded, H::Retry, SHAPE).unwrap_err();
    assert!(e.to_string().contains("HOST_SUCCEEDED"), "{e}");
    // Skip only from pending.
    assert!(
        host::apply(
            &HostState::Running { step: 0 },
            H::Skip { reason: "x".into() },
            SHAPE
        )
        .is_err()
    );
}

fn go(mut s: S, events: Vec<E>) -> Result<S, CampaignError> {
    for e in events {
        s = state::apply(&s, e)?;
    }
    Ok(s)
}

#[test]
fn campaign_lifecycle_and_pauses() {
    let running = go(S::Draft, vec![E::Submit, E::ApprovalsComplete, E::Start]).unwrap();
    assert_eq!(running, S::Running);
    // Window closed: resumes by itself; person's pause does not.
    let p = state::apply(
        &running,
        E::Pause(PauseReason::WindowClosed { until: Some(5) }),
    )
    .unwrap();
    assert_eq!(
        state::apply(&p, E::Resume(Resumer::Window)).unwrap(),
        S::Running
    );
    let p = state::apply(&running, E::Pause(PauseReason::Person("ann".into()))).unwrap();
    assert!(state::apply(&p, E::Resume(Resumer::Window)).is_err());
    assert_eq!(
        state::apply(&p, E::Resume(Resumer::Person("ann".into()))).unwrap(),
        S::Running
    );
    // Promotion is its own event.
    let p = state::apply(&running, E::Pause(PauseReason::AwaitingPromotion)).unwrap();
    assert!(state::apply(&p, E::Resume(Resumer::Person("bob".into()))).is_err());
    assert_eq!(state::apply(&p, E::Promote).unwrap(), S::Running);
    assert_eq!(
        go(running.clone(), vec![E::Complete]).unwrap(),
        S::Completed
    );
}

#[test]
fn wrong_state_actions_are_preconditions() {
    let pre = |r: Result<S, CampaignError>| matches!(r, Err(CampaignError::Precondition(_)));
    assert!(pre(go(S::Draft, vec![E::Start])), "start before approval");
    assert!(pre(go(S::AwaitingApproval, vec![E::Start])));
    assert!(
        pre(go(
            S::Completed,
            vec![E::Resume(Resumer::Person("a".into()))]
        )),
        "resume of a completed campaign"
    );
    assert!(pre(go(S::Aborted, vec![E::Abort])));
    assert!(pre(go(S::Running, vec![E::Edit])));
    assert!(pre(go(S::Scheduled, vec![E::Complete])));
    let halted = S::Halted(HaltReason::Budget {
        charged: 4,
        allowed: 3,
    });
    let e = state::apply(&halted, E::Resume(Resumer::Person("a".into()))).unwrap_err();
    assert!(e.to_string().contains("exceed the budget"), "{e}");
    // An edit before running drops back to DRAFT; abort works from any non-terminal state.
    assert_eq!(go(S::Scheduled, vec![E::Edit]).unwrap(), S::Draft);
    assert_eq!(go(halted, vec![E::Abort]).unwrap(), S::Aborted);
    let canary = S::Halted(HaltReason::CanaryFailed { host: "h1".into() });
    assert_eq!(
        go(canary, vec![E::Resume(Resumer::Person("bob".into()))]).unwrap(),
        S::Running
    );
}

#[test]
fn a_first_step_that_never_ran_leaves_nothing_to_roll_back() {
    let not_run = |s| H::StepNotRun {
        cause: format!("step {s}: unreachable"),
    };
    let first = run(HostState::Pending, vec![H::Start, not_run(1)]).unwrap();
    assert_eq!(
        first,
        HostState::Failed {
            cause: "step 1: unreachable".into(),
            rollback_due: false,
        }
    );
    assert!(first.is_failure() && first.is_terminal());
    // The first step ran: the second not running still leaves the first to undo.
    let second = run(
        HostState::Pending,
        vec![H::Start, H::StepSucceeded, not_run(2)],
    )
    .unwrap();
    assert_eq!(
        second,
        HostState::Failed {
            cause: "step 2: unreachable".into(),
            rollback_due: true,
        }
    );
}
