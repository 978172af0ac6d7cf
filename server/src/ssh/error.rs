//! The SSH layer's one error type. Each variant names what an operator checks next, and
//! [`SshError::disposition`] tells the campaign engine whether the host's step *failed* (nothing
//! ran, or it certainly did not succeed) or its outcome is *unknown* (the command may have run:
//! recover it from the host or ask a person; never rerun it blindly).

use std::time::Duration;

use thiserror::Error;

/// How the engine must count an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Counts as a failure of the host: the command did not run (or did not start).
    Failed,
    /// The command may have run: recover the outcome (detached runs) or mark NEEDS_ATTENTION.
    Unknown,
}

/// Why an SSH operation did not produce an outcome.
#[derive(Debug, Error)]
pub enum SshError {
    /// A target, pin, intent id or run directory that cannot be used (caller's input).
    #[error("invalid SSH target: {0}")]
    InvalidTarget(String),
    /// The private key in the credential is not a usable OpenSSH key.
    #[error("the SSH credential is not a usable private key: {0}")]
    InvalidCredential(String),
    /// TCP connect failed (refused, no route, ...).
    #[error("{addr} is unreachable: {reason}")]
    Unreachable { addr: String, reason: String },
    /// TCP connect, SSH handshake and authentication did not finish in time.
    #[error(
        "connecting to {addr} timed out after {after:?} (TCP, SSH handshake or authentication)"
    )]
    ConnectTimeout { addr: String, after: Duration },
    /// The host presented a different key than the pinned one: nothing was run.
    #[error(
        "host key mismatch for {addr}: expected {expected}, the host presented {seen}; nothing was run (re-pinning is a separate, approved operation)"
    )]
    HostKeyMismatch {
        addr: String,
        expected: String,
        seen: String,
    },
    /// The server refused the key for this user.
    #[error("{addr} refused public-key authentication for user {user:?}")]
    AuthRefused { addr: String, user: String },
    /// The SSH handshake failed before authentication (no common algorithm, protocol error).
    #[error("SSH handshake with {addr} failed: {reason}")]
    Handshake { addr: String, reason: String },
    /// A session channel could not be opened or the exec request was refused: nothing ran.
    #[error("{addr} refused to run the command: {reason}")]
    ChannelRefused { addr: String, reason: String },
    /// The connection broke after the command was sent: it may have run.
    #[error("the SSH session to {addr} was lost after the command was sent: {reason}")]
    SessionLost { addr: String, reason: String },
    /// A muster helper on the host (run directory, wrapper) failed; the step did not start.
    #[error("the muster run helper on {addr} failed (exit {code:?}): {stderr}")]
    Helper {
        addr: String,
        code: Option<u32>,
        stderr: String,
    },
    /// A detached run's state on the host could not be read (it may be running).
    #[error("cannot read the state of run {intent_id} on {addr}: {reason}")]
    RunState {
        addr: String,
        intent_id: String,
        reason: String,
    },
}

impl SshError {
    /// Whether the engine counts this as a failure or as an unknown outcome.
    pub fn disposition(&self) -> Disposition {
        match self {
            Self::SessionLost { .. } | Self::RunState { .. } => Disposition::Unknown,
            Self::InvalidTarget(_)
            | Self::InvalidCredential(_)
            | Self::Unreachable { .. }
            | Self::ConnectTimeout { .. }
            | Self::HostKeyMismatch { .. }
            | Self::AuthRefused { .. }
            | Self::Handshake { .. }
            | Self::ChannelRefused { .. }
            | Self::Helper { .. } => Disposition::Failed,
        }
    }

    /// A short stable code for audit records and reports ("HOST_KEY_MISMATCH", ...).
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidTarget(_) => "INVALID_TARGET",
            Self::InvalidCredential(_) => "INVALID_CREDENTIAL",
            Self::Unreachable { .. } => "UNREACHABLE",
            Self::ConnectTimeout { .. } => "CONNECT_TIMEOUT",
            Self::HostKeyMismatch { .. } => "HOST_KEY_MISMATCH",
            Self::AuthRefused { .. } => "AUTH_REFUSED",
            Self::Handshake { .. } => "HANDSHAKE_FAILED",
            Self::ChannelRefused { .. } => "CHANNEL_REFUSED",
            Self::SessionLost { .. } => "SESSION_LOST",
            Self::Helper { .. } => "RUN_HELPER_FAILED",
            Self::RunState { .. } => "RUN_STATE_UNREADABLE",
        }
    }
}
