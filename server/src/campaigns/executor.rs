//! The executor seam: how the engine runs one step on one host. The engine writes the step's
//! intent durably first, then calls [`Executor::run`]; the outcome is classified so that
//! nothing ambiguous ever counts as success (a channel closing without an exit status is
//! `NoStatus`, a failure). The russh executor implements this trait; [`InProcessExecutor`]
//! runs scripted outcomes for tests and benchmarks.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

/// Bytes of output kept at each end of a capture.
pub const CAPTURE_KEEP: usize = 64 * 1024;

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
    HostKeyMismatch {
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

    /// The short name reports use.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Exited(_) => "exited",
            Self::Signalled { .. } => "signalled",
            Self::NoStatus => "no_status",
            Self::TimedOut => "timed_out",
            Self::Unreachable(_) => "unreachable",
            Self::HostKeyMismatch { .. } => "host_key_mismatch",
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
            Self::HostKeyMismatch { expected, seen } => {
                format!("host key mismatch: expected {expected}, the host presented {seen}")
            }
            Self::Unknown(why) => format!("outcome unknown: {why}"),
        }
    }
}

/// Output kept from one stream: the first and last [`CAPTURE_KEEP`] bytes, and how many in
/// between were dropped. Always drain the channel; bound what is *stored*.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capture {
    pub head: Vec<u8>,
    pub tail: Vec<u8>,
    pub truncated: u64,
}

impl Capture {
    /// Appends bytes read from the stream.
    pub fn push(&mut self, mut data: &[u8]) {
        if self.head.len() < CAPTURE_KEEP {
            let n = (CAPTURE_KEEP - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        if data.is_empty() {
            return;
        }
        self.tail.extend_from_slice(data);
        if self.tail.len() > CAPTURE_KEEP {
            let drop = self.tail.len() - CAPTURE_KEEP;
            self.tail.drain(..drop);
            self.truncated += drop as u64;
        }
    }

    /// The last `max` bytes kept, as text (for report excerpts).
    pub fn excerpt(&self, max: usize) -> String {
        let src = if self.tail.is_empty() {
            &self.head
        } else {
            &self.tail
        };
        let from = src.len().saturating_sub(max);
        String::from_utf8_lossy(&src[from..]).into_owned()
    }
}

/// What a step produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepResult {
    pub outcome: Outcome,
    pub stdout: Capture,
    pub stderr: Capture,
}

impl StepResult {
    pub fn of(outcome: Outcome) -> Self {
        Self {
            outcome,
            stdout: Capture::default(),
            stderr: Capture::default(),
        }
    }
}

/// A boxed future of a step's result.
pub type StepFuture = Pin<Box<dyn Future<Output = StepResult> + Send + 'static>>;

/// Runs steps on hosts.
pub trait Executor: Send + Sync + Debug + 'static {
    /// Runs `req`. Must resolve by the request's timeout (with `TimedOut`).
    fn run(&self, req: StepRequest) -> StepFuture;
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
    runs: HashMap<(String, String), u32>,
    total: u64,
}

/// Scripted outcomes per host and step (default: exit 0, output "ok"), and counters of runs.
/// For tests and benchmarks; shared across a server restart, its counters show whether a
/// step ran twice.
#[derive(Debug, Default)]
pub struct InProcessExecutor {
    inner: Mutex<Inner>,
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

    /// How many times (host, step) was run.
    pub fn runs(&self, host: &str, step: &str) -> u32 {
        self.inner
            .lock()
            .map(|g| {
                g.runs
                    .get(&(host.to_string(), step.to_string()))
                    .copied()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    }

    /// Steps run in all.
    pub fn total_runs(&self) -> u64 {
        self.inner.lock().map(|g| g.total).unwrap_or(0)
    }
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
                Script::Result(outcome) => {
                    let mut r = StepResult::of(outcome);
                    r.stdout
                        .push(format!("{} on {}: ok\n", req.step, req.host).as_bytes());
                    r
                }
            }
        })
    }
}

/// The executor of a musterd built without one (the russh executor is not plugged in yet):
/// every step fails as unreachable, runs nothing, and counts against the budget.
#[derive(Debug, Default)]
pub struct UnconfiguredExecutor;

impl Executor for UnconfiguredExecutor {
    fn run(&self, _req: StepRequest) -> StepFuture {
        Box::pin(async {
            StepResult::of(Outcome::Unreachable(
                "this musterd has no SSH executor configured; nothing was run".into(),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_keeps_head_and_tail_and_counts_the_rest() {
        let mut c = Capture::default();
        c.push(&vec![b'a'; CAPTURE_KEEP]);
        c.push(&[b'b'; 10]);
        c.push(&vec![b'c'; CAPTURE_KEEP]);
        assert_eq!(c.head.len(), CAPTURE_KEEP);
        assert!(c.head.iter().all(|&b| b == b'a'));
        assert_eq!(c.tail.len(), CAPTURE_KEEP);
        assert!(c.tail.iter().all(|&b| b == b'c'));
        assert_eq!(c.truncated, 10);
        assert_eq!(c.excerpt(3), "ccc");
    }

    #[test]
    fn only_exit_zero_succeeds() {
        assert!(Outcome::Exited(0).succeeded());
        for o in [
            Outcome::Exited(1),
            Outcome::NoStatus,
            Outcome::TimedOut,
            Outcome::Unreachable("x".into()),
            Outcome::Signalled {
                signal: "KILL".into(),
                core_dumped: false,
            },
        ] {
            assert!(!o.succeeded(), "{o:?}");
        }
    }
}
