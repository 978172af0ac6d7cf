//! The executor seam: how the engine runs one step on one host. The engine writes the step's
//! intent durably first, then calls [`Executor::run`]; the outcome is classified so that
//! nothing ambiguous ever counts as success (a channel closing without an exit status is
//! `NoStatus`, a failure). The russh executor (`campaigns::remote`) implements this trait;
//! [`InProcessExecutor`] runs scripted outcomes for tests and benchmarks.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

pub use crate::ssh::CapturedStream;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepKind {
    /// A command, sent as written (never templated).
    Ssh(String),
    /// Reboot the host and return once SSH answers again with the pinned key.
    Reboot,
}

/// One step on one host, under an intent already made durable.
#[derive(Debug, Clone)]
pub struct StepRequest {
    pub campaign: String,
    pub host: String,
    pub step: String,
    pub kind: StepKind,
    /// Unique per (campaign, host, stage, attempt): a detached remote run is named after it,
    /// so a lost session or a restarted server can find its result.
    pub intent_id: String,
    pub attempt: u32,
    /// The step's budget; the executor must give up (signal, grace, close) when it passes.
    pub timeout: Duration,
    /// The same as an instant, Unix seconds (for remote-side `timeout` wrappers).
    pub deadline_unix: i64,
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Signalled {
        signal: String,
        core_dumped: bool,
    },
    /// The channel closed without an exit status: a failure, never a success.
    NoStatus,
    TimedOut,
    Unreachable(String),
    /// The host could not be run on at all (no SSH endpoint, credential, or a bad one):
    /// nothing was run; the message says what to fix.
    NotRun(String),
    HostKeyMismatch {
        expected: String,
        seen: String,
    },
    /// The host's key stopped matching its pin after the step was handed to it (or after a
    /// reboot was sent): the step may have run, so its outcome is unknown, and it is a
    /// security event.
    HostKeyChanged {
        expected: String,
        seen: String,
    },
    Unknown(String),
}

impl Outcome {
    /// Only `Exited(0)` is a success.
    pub fn succeeded(&self) -> bool {
        *self == Outcome::Exited(0)
    }

    /// Whether the step may or may not have run: a person decides (NEEDS_ATTENTION).
    pub fn unknown(&self) -> bool {
        matches!(self, Self::Unknown(_) | Self::HostKeyChanged { .. })
    }

    /// Whether the host provably ran nothing of the step (so there is nothing to roll back).
    pub fn nothing_ran(&self) -> bool {
        matches!(
            self,
            Self::NotRun(_) | Self::Unreachable(_) | Self::HostKeyMismatch { .. }
        )
    }

    /// The pinned and the presented fingerprint, when the host's key did not match.
    pub fn key_mismatch(&self) -> Option<(&str, &str)> {
        match self {
            Self::HostKeyMismatch { expected, seen } | Self::HostKeyChanged { expected, seen } => {
                Some((expected, seen))
            }
            _ => None,
        }
    }

    /// The short name reports use.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Exited(_) => "exited",
            Self::Signalled { .. } => "signalled",
            Self::NoStatus => "no_status",
            Self::TimedOut => "timed_out",
            Self::Unreachable(_) => "unreachable",
            Self::NotRun(_) => "not_run",
            Self::HostKeyMismatch { .. } => "host_key_mismatch",
            Self::HostKeyChanged { .. } => "host_key_changed",
            Self::Unknown(_) => "unknown",
        }
    }

    /// A sentence for the host's message and the audit trail.
    pub fn describe(&self) -> String {
        match self {
            Self::Exited(c) => format!("exited with status {c}"),
            Self::Signalled {
                signal,
                core_dumped,
            } => format!(
                "killed by signal {signal}{}",
                if *core_dumped { " (core dumped)" } else { "" }
            ),
            Self::NoStatus => "the session closed without an exit status".into(),
            Self::TimedOut => "timed out".into(),
            Self::Unreachable(why) => format!("unreachable: {why}"),
            Self::NotRun(why) => format!("nothing was run: {why}"),
            Self::HostKeyMismatch { expected, seen } => {
                format!("host key mismatch: expected {expected}, the host presented {seen}")
            }
            Self::HostKeyChanged { expected, seen } => format!(
                "host key changed after the step started: expected {expected}, the host \
                 presented {seen}; outcome unknown"
            ),
            Self::Unknown(why) => format!("outcome unknown: {why}"),
        }
    }
}

/// What a step produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepResult {
    pub outcome: Outcome,
    pub stdout: CapturedStream,
    pub stderr: CapturedStream,
}

impl StepResult {
    pub fn of(outcome: Outcome) -> Self {
        Self {
            outcome,
            stdout: CapturedStream::default(),
            stderr: CapturedStream::default(),
        }
    }
}

/// A boxed future of a step's result.
pub type StepFuture = Pin<Box<dyn Future<Output = StepResult> + Send + 'static>>;

/// What the host knows of a step that was running when the server stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovered {
    /// It finished (while nobody watched, or after the executor waited for it): its result,
    /// recorded as if it had been watched. Never rerun.
    Finished(StepResult),
    /// No trace of it, its fate cannot be read (host unreachable, run lost), or it was still
    /// running past its deadline: a person decides (NEEDS_ATTENTION).
    Unknown(String),
}

/// A boxed future of a recovery.
pub type RecoverFuture = Pin<Box<dyn Future<Output = Recovered> + Send + 'static>>;

/// Runs steps on hosts.
pub trait Executor: Send + Sync + Debug + 'static {
    /// Runs `req`. Must resolve by the request's timeout (with `TimedOut`).
    fn run(&self, req: StepRequest) -> StepFuture;

    /// Reads the outcome of a run started earlier under `req.intent_id` (by this or an
    /// earlier server) without starting it again. A run still going is waited for until
    /// `req.timeout` (the time left to its deadline) and a grace; then it is `Unknown`.
    fn recover(&self, req: StepRequest) -> RecoverFuture {
        let _ = req;
        Box::pin(async { Recovered::Unknown("this executor cannot recover runs".into()) })
    }
}

/// What the in-process executor does for a (host, step).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Script {
    Result(Outcome),
    /// Never answers (a step in flight when the server stops).
    Hang,
}

#[derive(Debug, Default)]
struct Inner {
    scripts: HashMap<(String, String), Script>,
    recoveries: HashMap<(String, String), Outcome>,
    runs: HashMap<(String, String), u32>,
    recovered: HashMap<(String, String), u32>,
    total: u64,
}

/// Scripted outcomes per host and step (default: exit 0, output "ok"), and counters of runs.
/// For tests and benchmarks; shared across a server restart, its counters show whether a
/// step ran twice. Recovery answers what [`InProcessExecutor::script_recovery`] says (as if
/// the host had kept the result), else that the run is unknown.
#[derive(Debug, Default)]
pub struct InProcessExecutor {
    inner: Mutex<Inner>,
}

fn count(m: &HashMap<(String, String), u32>, host: &str, step: &str) -> u32 {
    m.get(&(host.to_string(), step.to_string()))
        .copied()
        .unwrap_or(0)
}

impl InProcessExecutor {
    pub fn new() -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self::default())
    }

    /// Scripts (host, step); `host` "*" applies to every host without its own script.
    pub fn script(&self, host: &str, step: &str, s: Script) {
        if let Ok(mut g) = self.inner.lock() {
            g.scripts.insert((host.into(), step.into()), s);
        }
    }

    /// What a recovery of (host, step) finds on the "host": a finished run with `outcome`.
    pub fn script_recovery(&self, host: &str, step: &str, outcome: Outcome) {
        if let Ok(mut g) = self.inner.lock() {
            g.recoveries.insert((host.into(), step.into()), outcome);
        }
    }

    /// How many times (host, step) was run.
    pub fn runs(&self, host: &str, step: &str) -> u32 {
        self.inner
            .lock()
            .map(|g| count(&g.runs, host, step))
            .unwrap_or(0)
    }

    /// How many times a run of (host, step) was asked to be recovered.
    pub fn recoveries(&self, host: &str, step: &str) -> u32 {
        self.inner
            .lock()
            .map(|g| count(&g.recovered, host, step))
            .unwrap_or(0)
    }

    /// Steps run in all.
    pub fn total_runs(&self) -> u64 {
        self.inner.lock().map(|g| g.total).unwrap_or(0)
    }
}

fn ok_output(req: &StepRequest) -> CapturedStream {
    CapturedStream::whole(format!("{} on {}: ok\n", req.step, req.host).into_bytes())
}

impl Executor for InProcessExecutor {
    fn run(&self, req: StepRequest) -> StepFuture {
        let script = match self.inner.lock() {
            Ok(mut g) => {
                let key = (req.host.clone(), req.step.clone());
                *g.runs.entry(key.clone()).or_default() += 1;
                g.total += 1;
                g.scripts
                    .get(&key)
                    .or_else(|| g.scripts.get(&("*".to_string(), req.step.clone())))
                    .cloned()
                    .unwrap_or(Script::Result(Outcome::Exited(0)))
            }
            Err(_) => Script::Result(Outcome::Unknown("executor state poisoned".into())),
        };
        Box::pin(async move {
            match script {
                Script::Hang => std::future::pending().await,
                Script::Result(outcome) => StepResult {
                    outcome,
                    stdout: ok_output(&req),
                    stderr: CapturedStream::default(),
                },
            }
        })
    }

    fn recover(&self, req: StepRequest) -> RecoverFuture {
        let found = self.inner.lock().ok().and_then(|mut g| {
            let key = (req.host.clone(), req.step.clone());
            *g.recovered.entry(key.clone()).or_default() += 1;
            g.recoveries.get(&key).cloned()
        });
        let r = match found {
            Some(outcome) => Recovered::Finished(StepResult {
                outcome,
                stdout: ok_output(&req),
                stderr: CapturedStream::default(),
            }),
            None => Recovered::Unknown(format!("no record of run {} on the host", req.intent_id)),
        };
        Box::pin(async move { r })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_ran_and_what_is_unknown() {
        let key = |changed| {
            let (expected, seen) = ("SHA256:a".to_string(), "SHA256:b".to_string());
            if changed {
                Outcome::HostKeyChanged { expected, seen }
            } else {
                Outcome::HostKeyMismatch { expected, seen }
            }
        };
        for o in [
            Outcome::NotRun("no credential".into()),
            Outcome::Unreachable("refused".into()),
            key(false),
        ] {
            assert!(o.nothing_ran() && !o.unknown(), "{o:?}");
        }
        for o in [Outcome::Unknown("lost".into()), key(true)] {
            assert!(o.unknown() && !o.nothing_ran(), "{o:?}");
        }
        for o in [Outcome::Exited(1), Outcome::TimedOut, Outcome::NoStatus] {
            assert!(!o.unknown() && !o.nothing_ran(), "{o:?}");
        }
        assert_eq!(key(true).key_mismatch(), Some(("SHA256:a", "SHA256:b")));
        assert_eq!(Outcome::Exited(0).key_mismatch(), None);
    }

    #[test]
    fn only_exit_zero_succeeds() {
        assert!(Outcome::Exited(0).succeeded());
        for o in [
            Outcome::Exited(1),
            Outcome::NoStatus,
            Outcome::TimedOut,
            Outcome::Unreachable("x".into()),
            Outcome::NotRun("x".into()),
            Outcome::Signalled {
                signal: "KILL".into(),
                core_dumped: false,
            },
        ] {
            assert!(!o.succeeded(), "{o:?}");
        }
    }
}
