//! A host's state machine as a pure transition function over a closed event enum.
//!
//! ```text
//! PENDING ─start→ RUNNING(0) ─step ok→ RUNNING(i+1) … ─last ok→ VERIFYING ─pass→ SUCCEEDED
//!    │                 └─step failed→ FAILED ─begin rollback→ ROLLING_BACK(0) … → ROLLED_BACK
//!    └─skip→ SKIPPED       (VERIFYING ─fail→ FAILED)          └─rollback failed→ NEEDS_ATTENTION
//! RUNNING / VERIFYING / ROLLING_BACK ─outcome unknown→ NEEDS_ATTENTION
//! NEEDS_ATTENTION ─retry→ where it stopped | ─mark failed→ FAILED (no rollback) | ─rollback→ ROLLING_BACK(0)
//! ```
//! NEEDS_ATTENTION is left only by a person's event. A failed host with rollback steps stays
//! FAILED (disrupted, rollback due) until the engine records `BeginRollback`.

use muster::pb;

use super::error::CampaignError;

/// Where a host's work stopped, for NEEDS_ATTENTION and retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Step(u32),
    Verify,
    Rollback(u32),
}

/// A host's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostState {
    Pending,
    Running {
        step: u32,
    },
    Verifying,
    Succeeded,
    /// `rollback_due`: rollback steps exist and have not run yet.
    Failed {
        cause: String,
        rollback_due: bool,
    },
    RollingBack {
        step: u32,
        cause: String,
    },
    RolledBack {
        cause: String,
    },
    /// Outcome unknown; `failed` is set when the host had already failed (rollback failed).
    NeedsAttention {
        stage: Stage,
        failed: bool,
        message: String,
    },
    Skipped {
        reason: String,
    },
}

/// What happened to a host (engine observations and people's actions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    Start,
    StepSucceeded,
    /// Exit ≠ 0, signal, no status, timeout, unreachable, host-key mismatch…
    StepFailed {
        cause: String,
    },
    /// The step failed before the host ran anything of it (unreachable, refused, no
    /// credential, host-key mismatch): FAILED with nothing to roll back.
    StepNotRun {
        cause: String,
    },
    VerifyPassed,
    VerifyFailed {
        cause: String,
    },
    BeginRollback,
    RollbackStepSucceeded,
    RollbackStepFailed {
        cause: String,
    },
    /// A crash or lost session left the outcome unknown.
    OutcomeUnknown {
        message: String,
    },
    Skip {
        reason: String,
    },
    /// A person: run again from where it stopped.
    Retry,
    /// A person: it failed; no rollback.
    MarkFailed {
        cause: String,
    },
    /// A person: run the rollback steps.
    Rollback,
}

/// What the transitions need to know about the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostShape {
    pub steps: u32,
    pub rollback_steps: u32,
}

impl HostState {
    /// No more work will happen without a person (or ever).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Succeeded
                | Self::RolledBack { .. }
                | Self::Skipped { .. }
                | Self::Failed {
                    rollback_due: false,
                    ..
                }
        )
    }

    /// Holds a concurrency slot: work in flight, due, or of unknown outcome.
    pub fn is_active(&self) -> bool {
        matches!(
            self,
            Self::Running { .. }
                | Self::Verifying
                | Self::RollingBack { .. }
                | Self::NeedsAttention { .. }
                | Self::Failed {
                    rollback_due: true,
                    ..
                }
        )
    }

    /// Counts against topology caps: running, verifying, rolling back, needs attention, and
    /// failed-not-rolled-back (a failed host stays broken until repaired).
    pub fn is_disrupted(&self) -> bool {
        self.is_active() || matches!(self, Self::Failed { .. })
    }

    /// Counts as a failure for the budget.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            Self::Failed { .. } | Self::RollingBack { .. } | Self::RolledBack { .. }
        )
    }

    /// Counts as unknown for the budget.
    pub fn is_unknown(&self) -> bool {
        matches!(self, Self::NeedsAttention { .. })
    }

    /// The wire enum.
    pub fn to_pb(&self) -> pb::HostState {
        match self {
            Self::Pending => pb::HostState::HostPending,
            Self::Running { .. } => pb::HostState::HostRunning,
            Self::Verifying => pb::HostState::HostVerifying,
            Self::Succeeded => pb::HostState::HostSucceeded,
            Self::Failed { .. } => pb::HostState::HostFailed,
            Self::RollingBack { .. } => pb::HostState::HostRollingBack,
            Self::RolledBack { .. } => pb::HostState::HostRolledBack,
            Self::NeedsAttention { .. } => pb::HostState::HostNeedsAttention,
            Self::Skipped { .. } => pb::HostState::HostSkipped,
        }
    }

    fn name(&self) -> &'static str {
        self.to_pb().as_str_name()
    }
}

fn wrong(state: &HostState, event: &HostEvent) -> CampaignError {
    let ev = format!("{event:?}");
    let ev = ev.split([' ', '{']).next().unwrap_or_default().to_string();
    CampaignError::precondition(format!("a host in state {} cannot take {ev}", state.name()))
}

fn after_step(step: u32, shape: HostShape) -> HostState {
    if step + 1 < shape.steps {
        HostState::Running { step: step + 1 }
    } else {
        HostState::Verifying
    }
}

fn failed(cause: String, shape: HostShape) -> HostState {
    HostState::Failed {
        cause,
        rollback_due: shape.rollback_steps > 0,
    }
}

/// The next state, or FAILED_PRECONDITION when `event` does not apply to `state`.
pub fn apply(
    state: &HostState,
    event: HostEvent,
    shape: HostShape,
) -> Result<HostState, CampaignError> {
    use HostEvent as E;
    use HostState as S;
    let next = match (state, &event) {
        (S::Pending, E::Start) => S::Running { step: 0 },
        (S::Pending, E::Skip { reason }) => S::Skipped {
            reason: reason.clone(),
        },
        (S::Running { step }, E::StepSucceeded) => after_step(*step, shape),
        (S::Running { .. }, E::StepFailed { cause }) => failed(cause.clone(), shape),
        (S::Running { step }, E::StepNotRun { cause }) => S::Failed {
            cause: cause.clone(),
            // Steps before this one did run: they are what a rollback undoes.
            rollback_due: *step > 0 && shape.rollback_steps > 0,
        },
        (S::Verifying, E::VerifyPassed) => S::Succeeded,
        (S::Verifying, E::VerifyFailed { cause }) => failed(cause.clone(), shape),
        (
            S::Failed {
                cause,
                rollback_due: true,
            },
            E::BeginRollback,
        ) => S::RollingBack {
            step: 0,
            cause: cause.clone(),
        },
        (S::RollingBack { step, cause }, E::RollbackStepSucceeded) => {
            if step + 1 < shape.rollback_steps {
                S::RollingBack {
                    step: step + 1,
                    cause: cause.clone(),
                }
            } else {
                S::RolledBack {
                    cause: cause.clone(),
                }
            }
        }
        (S::RollingBack { step, .. }, E::RollbackStepFailed { cause }) => S::NeedsAttention {
            stage: Stage::Rollback(*step),
            failed: true,
            message: format!("rollback failed: {cause}"),
        },
        (S::Running { step }, E::OutcomeUnknown { message }) => S::NeedsAttention {
            stage: Stage::Step(*step),
            failed: false,
            message: message.clone(),
        },
        (S::Verifying, E::OutcomeUnknown { message }) => S::NeedsAttention {
            stage: Stage::Verify,
            failed: false,
            message: message.clone(),
        },
        (S::RollingBack { step, .. }, E::OutcomeUnknown { message }) => S::NeedsAttention {
            stage: Stage::Rollback(*step),
            failed: true,
            message: message.clone(),
        },
        (S::NeedsAttention { stage, message, .. }, E::Retry) => match *stage {
            Stage::Step(step) => S::Running { step },
            Stage::Verify => S::Verifying,
            Stage::Rollback(step) => S::RollingBack {
                step,
                cause: message.clone(),
            },
        },
        (S::NeedsAttention { .. }, E::MarkFailed { cause }) => S::Failed {
            cause: cause.clone(),
            rollback_due: false,
        },
        (S::NeedsAttention { message, .. }, E::Rollback)
        | (
            S::Failed {
                cause: message,
                rollback_due: false,
            },
            E::Rollback,
        ) => {
            if shape.rollback_steps == 0 {
                return Err(CampaignError::precondition(
                    "the campaign has no rollback steps to run",
                ));
            }
            S::RollingBack {
                step: 0,
                cause: message.clone(),
            }
        }
        _ => return Err(wrong(state, &event)),
    };
    Ok(next)
}
