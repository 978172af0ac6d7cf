//! Many hosts at once: each operation opens its own session (hosts never share state) under a
//! semaphore that bounds how many sessions are open together.
// Step deadlines and poll backoff run on tokio's timer clock (the one `sleep_until` uses, and
// paused in tests), not on the injected wall clock.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::detached::{self, DetachedStart, DetachedStatus, IntentId, RunDir};
use super::error::{Disposition, SshError};
use super::readloop::ExecResult;
use super::session::{SshSession, SshSettings};
use super::target::SshTarget;

/// How often `wait_detached` looks at a run (doubling from `first` to `max`).
#[derive(Debug, Clone, Copy)]
pub struct PollBackoff {
    pub first: Duration,
    pub max: Duration,
}

impl Default for PollBackoff {
    fn default() -> Self {
        Self {
            first: Duration::from_millis(200),
            max: Duration::from_secs(5),
        }
    }
}

/// The executor the campaign engine calls. Cheap to clone; clones share the limit.
#[derive(Debug, Clone)]
pub struct SshExecutor {
    settings: Arc<SshSettings>,
    run_dir: RunDir,
    backoff: PollBackoff,
    permits: Arc<Semaphore>,
}

/// A session holding one of the executor's permits until dropped.
#[derive(Debug)]
pub struct PooledSession {
    pub session: SshSession,
    _permit: OwnedSemaphorePermit,
}

impl SshExecutor {
    /// At most `max_sessions` sessions open at once (at least 1).
    pub fn new(
        settings: SshSettings,
        run_dir: RunDir,
        max_sessions: usize,
    ) -> Result<Self, SshError> {
        run_dir.validate()?;
        Ok(Self {
            settings: Arc::new(settings),
            run_dir,
            backoff: PollBackoff::default(),
            permits: Arc::new(Semaphore::new(max_sessions.max(1))),
        })
    }

    /// Changes how often `wait_detached` polls.
    pub fn with_backoff(mut self, backoff: PollBackoff) -> Self {
        self.backoff = backoff;
        self
    }

    pub fn settings(&self) -> &SshSettings {
        &self.settings
    }

    /// Waits for a permit, then connects (the connect timeout starts after the wait).
    pub async fn connect(&self, target: &SshTarget) -> Result<PooledSession, SshError> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| SshError::InvalidTarget("the SSH executor is shut down".into()))?;
        let session = SshSession::connect(target, Arc::clone(&self.settings)).await?;
        Ok(PooledSession {
            session,
            _permit: permit,
        })
    }

    /// Runs one command attached, under `timeout` (see [`SshSession::exec`]).
    pub async fn exec(
        &self,
        target: &SshTarget,
        command: &str,
        timeout: Duration,
    ) -> Result<ExecResult, SshError> {
        let s = self.connect(target).await?;
        let r = s.session.exec(command, timeout).await;
        s.session.close().await;
        r
    }

    /// Starts `command` detached under `intent` (see [`detached::start`]).
    pub async fn start_detached(
        &self,
        target: &SshTarget,
        intent: &IntentId,
        command: &str,
        timeout: Duration,
    ) -> Result<DetachedStart, SshError> {
        let s = self.connect(target).await?;
        let r = detached::start(&s.session, &self.run_dir, intent, command, timeout).await;
        s.session.close().await;
        r
    }

    /// What the host knows of the run `intent`.
    pub async fn poll(
        &self,
        target: &SshTarget,
        intent: &IntentId,
    ) -> Result<DetachedStatus, SshError> {
        let s = self.connect(target).await?;
        let r = detached::poll(&s.session, &self.run_dir, intent).await;
        s.session.close().await;
        r
    }

    /// Polls until the run is no longer `Running` or `within` has passed (then the last
    /// status, `Running`, is returned: the host's own timeout still bounds the command).
    /// Errors that leave the outcome unknown (a lost session) are retried with a new
    /// session until the deadline; errors that are failures are returned at once.
    pub async fn wait_detached(
        &self,
        target: &SshTarget,
        intent: &IntentId,
        within: Duration,
    ) -> Result<DetachedStatus, SshError> {
        let deadline = Instant::now() + within;
        let mut pause = self.backoff.first;
        loop {
            let last_err = match self.poll(target, intent).await {
                Ok(DetachedStatus::Running) => None,
                Ok(done) => return Ok(done),
                Err(e) if e.disposition() == Disposition::Unknown => Some(e),
                // Unreachable or timed out (a host rebooting) is worth retrying too, and so is a
                // refused handshake or channel (sshd's MaxStartups/MaxSessions under load): one
                // poll failing says nothing about the run.
                Err(
                    e @ (SshError::Unreachable { .. }
                    | SshError::ConnectTimeout { .. }
                    | SshError::Handshake { .. }
                    | SshError::ChannelRefused { .. }),
                ) => Some(e),
                Err(e) => return Err(e),
            };
            let now = Instant::now();
            if now >= deadline {
                return match last_err {
                    Some(e) => Err(e),
                    None => Ok(DetachedStatus::Running),
                };
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(self.backoff.max);
        }
    }
}
