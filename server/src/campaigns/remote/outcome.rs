//! The one mapping from what the SSH layer says to a campaign step's [`Outcome`]. Before a
//! command was handed to the host, an error means nothing ran (a failure of the host); once
//! it may have started, an error leaves the outcome unknown, never a failure or a success.

use crate::campaigns::executor::{Outcome, StepResult};
use crate::ssh::{DetachedStatus, ExecResult, ExitOutcome, SshError};

/// How a command ended.
pub fn exit(o: &ExitOutcome) -> Outcome {
    match o {
        ExitOutcome::Exited(c) => Outcome::Exited(i32::try_from(*c).unwrap_or(i32::MAX)),
        ExitOutcome::Signaled {
            signal,
            core_dumped,
            ..
        } => Outcome::Signalled {
            signal: signal.clone(),
            core_dumped: *core_dumped,
        },
        ExitOutcome::NoStatus => Outcome::NoStatus,
        ExitOutcome::TimedOut => Outcome::TimedOut,
    }
}

/// A finished command with its captures.
pub fn finished(r: ExecResult) -> StepResult {
    StepResult {
        outcome: exit(&r.outcome),
        stdout: r.stdout,
        stderr: r.stderr,
    }
}

/// An error before anything was handed to the host to run.
pub fn before_start(e: &SshError) -> Outcome {
    match e {
        SshError::HostKeyMismatch { expected, seen, .. } => Outcome::HostKeyMismatch {
            expected: expected.clone(),
            seen: seen.clone(),
        },
        SshError::Unreachable { .. }
        | SshError::ConnectTimeout { .. }
        | SshError::Handshake { .. } => Outcome::Unreachable(e.to_string()),
        SshError::InvalidTarget(_)
        | SshError::InvalidCredential(_)
        | SshError::AuthRefused { .. }
        | SshError::ChannelRefused { .. }
        | SshError::Helper { .. } => Outcome::NotRun(e.to_string()),
        SshError::SessionLost { .. } | SshError::RunState { .. } => Outcome::Unknown(e.to_string()),
    }
}

/// An error once the command may have started: whatever it is (the host went away, its key
/// changed, a channel was refused), the step's fate is unknown, never "not run". A changed
/// key keeps both fingerprints so that it is audited.
pub fn after_start(e: &SshError) -> Outcome {
    match e {
        SshError::HostKeyMismatch { expected, seen, .. } => Outcome::HostKeyChanged {
            expected: expected.clone(),
            seen: seen.clone(),
        },
        _ => Outcome::Unknown(format!(
            "the step was started but its outcome could not be read: {e}"
        )),
    }
}

/// A detached run's state as a result; `None` while it runs.
pub fn detached(s: DetachedStatus, intent: &str) -> Option<StepResult> {
    match s {
        DetachedStatus::Running => None,
        DetachedStatus::Finished(r) => Some(finished(r)),
        DetachedStatus::Lost { reason } => Some(StepResult::of(Outcome::Unknown(format!(
            "run {intent} was lost on the host: {reason}"
        )))),
        DetachedStatus::Unknown => Some(StepResult::of(Outcome::Unknown(format!(
            "the host has no trace of run {intent}"
        )))),
    }
}

#[cfg(test)]
#[path = "outcome_tests.rs"]
mod tests;
