//! The campaign executor over SSH (`crate::ssh`, russh): every `ssh` step runs detached on
//! the host under its intent id, so a lost session or a restarted musterd reads the result
//! from the host instead of running the step again; a `reboot` step sends the configured
//! reboot command once and waits until SSH answers again with the pinned key.
//!
//! Hosts are resolved through [`TargetResolver`] (the real one reads the device's `ssh`
//! endpoint and its credential); how the SSH layer's answers become outcomes is `outcome.rs`.

use std::sync::Arc;
use std::time::Duration;

use super::executor::{
    Executor, Outcome, RecoverFuture, Recovered, StepFuture, StepKind, StepRequest, StepResult,
};
use crate::ssh::{Disposition, IntentId, PollBackoff, SshExecutor, SshTarget};

mod outcome;
mod reboot;
mod resolve;

pub use resolve::{InventoryResolver, ResolveError, TargetResolver};

/// Longest reboot command accepted in the configuration.
pub const MAX_REBOOT_COMMAND_BYTES: usize = 1024;
/// Past the host's own deadline (`timeout` and its kill grace), how long the executor keeps
/// asking for the exit code before calling the outcome unknown.
const READ_SLACK: Duration = Duration::from_secs(5);
/// Hard bound past the step's timeout on everything one step does (polls include connects);
/// below the engine's own patience (60 s), so the executor always answers first.
const HARD_SLACK: Duration = Duration::from_secs(50);

/// What the executor needs besides the SSH layer.
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    /// Sent as written on `reboot` steps (never templated).
    pub reboot_command: String,
    /// How often a rebooting host is probed (doubling from `first` to `max`).
    pub reboot_poll: PollBackoff,
}

impl Default for RemoteSettings {
    fn default() -> Self {
        Self {
            reboot_command: "systemctl reboot".into(),
            reboot_poll: PollBackoff {
                first: Duration::from_millis(500),
                max: Duration::from_secs(5),
            },
        }
    }
}

/// Runs campaign steps over SSH; many hosts at once, within the SSH pool's session bound.
#[derive(Debug, Clone)]
pub struct SshStepExecutor {
    ssh: SshExecutor,
    resolver: Arc<dyn TargetResolver>,
    settings: Arc<RemoteSettings>,
}

impl SshStepExecutor {
    pub fn new(
        ssh: SshExecutor,
        resolver: Arc<dyn TargetResolver>,
        settings: RemoteSettings,
    ) -> Self {
        Self {
            ssh,
            resolver,
            settings: Arc::new(settings),
        }
    }

    /// musterd's executor: the `[campaigns]` settings, hosts from the inventory.
    pub fn from_config(
        c: &crate::config::CampaignsConfig,
        inventory: Arc<crate::inventory::Inventory>,
    ) -> Result<Self, crate::ssh::SshError> {
        let ssh = SshExecutor::new(
            crate::ssh::SshSettings {
                connect_timeout: Duration::from_secs(c.ssh_connect_timeout_secs.max(1)),
                capture_bytes: c.capture_bytes,
                ..Default::default()
            },
            c.run_dir(),
            c.max_ssh_sessions,
        )?;
        Ok(Self::new(
            ssh,
            Arc::new(InventoryResolver { inventory }),
            RemoteSettings {
                reboot_command: c.reboot_command.clone(),
                ..Default::default()
            },
        ))
    }

    /// The target and run id of a request, or why the host cannot be run on.
    fn prepare(&self, req: &StepRequest) -> Result<(SshTarget, IntentId), String> {
        let target = self
            .resolver
            .resolve(&req.host)
            .map_err(|e| e.to_string())?;
        let id = IntentId::new(&req.intent_id).map_err(|e| e.to_string())?;
        Ok((target, id))
    }

    /// How long to wait for a detached run's exit code: the host ends it at `timeout` (TERM,
    /// KILL after the grace), so its code is there soon after.
    fn read_within(&self, timeout: Duration) -> Duration {
        timeout + self.ssh.settings().term_grace + READ_SLACK
    }

    async fn run_ssh(
        &self,
        req: &StepRequest,
        target: &SshTarget,
        id: &IntentId,
        cmd: &str,
    ) -> StepResult {
        match self.ssh.start_detached(target, id, cmd, req.timeout).await {
            // Started now, or already by an earlier attempt at this intent: never twice.
            Ok(_) => {}
            Err(e) if e.disposition() == Disposition::Failed => {
                return StepResult::of(outcome::before_start(&e));
            }
            // The session broke during the start: whether it launched, a poll tells.
            Err(_) => {}
        }
        self.wait(target, id, req.timeout)
            .await
            .unwrap_or_else(|still| {
                // The host's own timeout should have ended it: a run still going past deadline
                // and grace may yet change the host, so rolling back beside it is unsafe.
                let mut r = StepResult::of(Outcome::Unknown(still.trim_end().to_string()));
                r.stderr = crate::ssh::CapturedStream::whole(still.into_bytes());
                r
            })
    }

    /// Waits for run `id` to end; `Err` with a note when it still runs past the deadline.
    async fn wait(
        &self,
        target: &SshTarget,
        id: &IntentId,
        timeout: Duration,
    ) -> Result<StepResult, String> {
        match self
            .ssh
            .wait_detached(target, id, self.read_within(timeout))
            .await
        {
            Ok(s) => outcome::detached(s, id.as_str()).ok_or_else(|| {
                format!(
                    "muster: run {} was still running on the host past its deadline\n",
                    id.as_str()
                )
            }),
            Err(e) => Ok(StepResult::of(outcome::after_start(&e))),
        }
    }
}

impl Executor for SshStepExecutor {
    fn run(&self, req: StepRequest) -> StepFuture {
        let this = self.clone();
        Box::pin(async move {
            let (target, id) = match this.prepare(&req) {
                Ok(p) => p,
                Err(why) => return StepResult::of(Outcome::NotRun(why)),
            };
            let work = async {
                match &req.kind {
                    StepKind::Ssh(cmd) => this.run_ssh(&req, &target, &id, cmd).await,
                    StepKind::Reboot => reboot::run(&this, &req, &target, &id).await,
                }
            };
            tokio::time::timeout(req.timeout + HARD_SLACK, work)
                .await
                .unwrap_or_else(|_| {
                    StepResult::of(Outcome::Unknown(format!(
                        "the executor could not learn how run {} ended within its deadline",
                        req.intent_id
                    )))
                })
        })
    }

    fn recover(&self, req: StepRequest) -> RecoverFuture {
        let this = self.clone();
        Box::pin(async move {
            let (target, id) = match this.prepare(&req) {
                Ok(p) => p,
                Err(why) => return Recovered::Unknown(why),
            };
            if req.kind == StepKind::Reboot {
                // A reboot is never looked up or sent again: the engine waits for its boot id.
                return Recovered::Unknown("a reboot step is not recovered from the host".into());
            }
            let work = this.wait(&target, &id, req.timeout);
            match tokio::time::timeout(req.timeout + HARD_SLACK, work).await {
                Ok(Ok(r)) => match r.outcome {
                    Outcome::Unknown(why) => Recovered::Unknown(why),
                    // Finished with a changed key: the engine audits it and a person decides.
                    _ => Recovered::Finished(r),
                },
                Ok(Err(still)) => Recovered::Unknown(still.trim_end().to_string()),
                Err(_) => Recovered::Unknown(format!(
                    "the host did not tell how run {} ended in time",
                    req.intent_id
                )),
            }
        })
    }
}
