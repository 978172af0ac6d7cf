//! The exec read loop, apart from the network so it can be tested over scripted messages.
//!
//! Rules it keeps (campaigns.md §3.5): read until the channel is gone (`None`), never stop at
//! `Eof` (servers often send it before the exit status); remember `ExitStatus`/`ExitSignal`
//! whenever they come; a channel that ends with neither is `NoStatus`, a failure; keep reading
//! however much arrives (only what is stored is bounded); on the deadline send TERM, wait a
//! grace, close, and report `TimedOut`.
// Step deadlines and poll backoff run on tokio's timer clock (the one `sleep_until` uses, and
// paused in tests), not on the injected wall clock.
#![allow(clippy::disallowed_methods)]

use std::future::Future;
use std::time::Duration;

use russh::{ChannelMsg, Sig};
use tokio::time::Instant;

use super::capture::{Capture, CapturedStream};

/// How a remote command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitOutcome {
    /// It exited with this status.
    Exited(u32),
    /// A signal ended it.
    Signaled {
        signal: String,
        core_dumped: bool,
        message: String,
    },
    /// The channel closed without an exit status or signal: a failure, never a success.
    NoStatus,
    /// The step's deadline passed: TERM was sent, then after the grace the channel was closed.
    TimedOut,
}

impl ExitOutcome {
    /// Only an exit status of 0 is success.
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Exited(0))
    }
}

/// What one command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    pub outcome: ExitOutcome,
    pub stdout: CapturedStream,
    pub stderr: CapturedStream,
    /// Wall time from sending the command to the end of the channel.
    pub duration: Duration,
    /// The SSH connection itself was gone at the end (not just the channel): with `NoStatus`
    /// this means the command's fate is unknown.
    pub connection_lost: bool,
}

/// The channel operations the loop needs; implemented by russh's channel and by test scripts.
pub trait ExecChannel: Send {
    /// The next message, or `None` once the channel is closed.
    fn next_msg(&mut self) -> impl Future<Output = Option<ChannelMsg>> + Send;
    /// Asks the remote side to deliver TERM to the command (best effort).
    fn terminate(&mut self) -> impl Future<Output = ()> + Send;
    /// Closes the channel (best effort).
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}

impl ExecChannel for russh::Channel<russh::client::Msg> {
    async fn next_msg(&mut self) -> Option<ChannelMsg> {
        self.wait().await
    }
    async fn terminate(&mut self) {
        let _ = self.signal(Sig::TERM).await;
    }
    async fn close(&mut self) {
        let _ = russh::Channel::close(self).await;
    }
}

/// Bounds of one run of the loop.
#[derive(Debug, Clone, Copy)]
pub struct LoopLimits {
    /// Bytes kept per stream (head + tail).
    pub capture_bytes: usize,
    /// When to send TERM; `None` runs until the channel ends.
    pub deadline: Option<Instant>,
    /// Time between TERM and close, and again between close and giving up on the channel.
    pub grace: Duration,
}

/// The loop's result before the caller adds connection facts.
#[derive(Debug)]
pub struct LoopEnd {
    pub outcome: ExitOutcome,
    pub stdout: CapturedStream,
    pub stderr: CapturedStream,
    /// The server answered the exec request with `Failure` (nothing ran).
    pub refused: bool,
}

enum Phase {
    Running,
    /// TERM sent; close at this instant.
    Terminating(Instant),
    /// Close sent; stop waiting for the channel's end at this instant.
    Closing(Instant),
}

/// Drains `ch` to its end and says how the command ended.
pub async fn drive<C: ExecChannel>(ch: &mut C, limits: LoopLimits) -> LoopEnd {
    let mut out = Capture::new(limits.capture_bytes);
    let mut err = Capture::new(limits.capture_bytes);
    let mut status: Option<ExitOutcome> = None;
    let mut refused = false;
    let mut replied = false;
    let mut timed_out = false;
    let mut phase = Phase::Running;
    loop {
        let wake = match phase {
            Phase::Running => limits.deadline,
            Phase::Terminating(t) | Phase::Closing(t) => Some(t),
        };
        let timer = async move {
            match wake {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        // Not `biased`: a flood of messages must not starve the deadline.
        tokio::select! {
            msg = ch.next_msg() => match msg {
                None => break,
                Some(ChannelMsg::Data { data }) => out.push(&data),
                Some(ChannelMsg::ExtendedData { data, ext }) => {
                    // ext 1 is stderr (RFC 4254); other types are unheard of, kept with it.
                    let _ = ext;
                    err.push(&data);
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => {
                    status = Some(ExitOutcome::Exited(exit_status));
                }
                Some(ChannelMsg::ExitSignal { signal_name, core_dumped, error_message, .. }) => {
                    status = Some(ExitOutcome::Signaled {
                        signal: sig_name(&signal_name),
                        core_dumped,
                        message: error_message.chars().take(1024).collect(),
                    });
                }
                Some(ChannelMsg::Success) => replied = true,
                Some(ChannelMsg::Failure) => {
                    if !replied && status.is_none() {
                        refused = true;
                    }
                    replied = true;
                }
                // Eof, Close, window adjustments: keep reading until the channel is gone.
                Some(_) => {}
            },
            () = timer => match phase {
                Phase::Running if status.is_some() => {
                    // It ended in time; something it left behind holds the channel open.
                    ch.close().await;
                    phase = Phase::Closing(Instant::now() + limits.grace);
                }
                Phase::Running => {
                    timed_out = true;
                    ch.terminate().await;
                    phase = Phase::Terminating(Instant::now() + limits.grace);
                }
                Phase::Terminating(_) => {
                    ch.close().await;
                    phase = Phase::Closing(Instant::now() + limits.grace);
                }
                Phase::Closing(_) => break,
            },
        }
    }
    let outcome = if timed_out {
        ExitOutcome::TimedOut
    } else if refused {
        ExitOutcome::NoStatus
    } else {
        status.unwrap_or(ExitOutcome::NoStatus)
    };
    LoopEnd {
        outcome,
        stdout: out.finish(),
        stderr: err.finish(),
        refused,
    }
}

/// The signal's name without "SIG", as OpenSSH sends it.
pub fn sig_name(s: &Sig) -> String {
    match s {
        Sig::ABRT => "ABRT",
        Sig::ALRM => "ALRM",
        Sig::FPE => "FPE",
        Sig::HUP => "HUP",
        Sig::ILL => "ILL",
        Sig::INT => "INT",
        Sig::KILL => "KILL",
        Sig::PIPE => "PIPE",
        Sig::QUIT => "QUIT",
        Sig::SEGV => "SEGV",
        Sig::TERM => "TERM",
        Sig::USR1 => "USR1",
        Sig::Custom(c) => return c.chars().take(32).collect(),
    }
    .to_string()
}

#[cfg(test)]
#[path = "readloop_tests.rs"]
mod tests;
