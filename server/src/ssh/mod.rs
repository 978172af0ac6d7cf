//! The SSH executor campaigns run their host steps with (russh).
//!
//! Its job: reach one host over SSH with a key from a Credential, refuse anything but the
//! host's pinned key (no TOFU, no certificates, only the pinned algorithm), run a command
//! under a deadline, and say exactly how it ended: exit status, signal, no status (a failure),
//! or timed out, with stdout/stderr kept head-and-tail under a bound. Runs can be detached
//! under an intent id so a lost connection or a restarted musterd reads the outcome from the
//! host later instead of rerunning. [`SshExecutor`] bounds how many sessions are open at once.
//!
//! It knows nothing of campaigns, the store or gRPC; errors say whether they count as a
//! failure or leave the outcome unknown ([`Disposition`]).

mod capture;
mod detached;
mod error;
mod pool;
mod readloop;
mod session;
mod shell;
mod target;

pub use capture::{Capture, CapturedStream};
pub use detached::{DetachedStart, DetachedStatus, IntentId, RunDir};
pub use error::{Disposition, SshError};
pub use pool::{PollBackoff, PooledSession, SshExecutor};
pub use readloop::{ExecChannel, ExecResult, ExitOutcome, LoopEnd, LoopLimits, drive};
pub use session::{SshSession, SshSettings};
pub use shell::MAX_COMMAND_BYTES;
pub use target::{HostKeyPin, SshTarget};
