//! A `reboot` step: read the boot id, send the configured reboot command once (detached under
//! the intent id, so even a second attempt at the same intent never sends it again), expect
//! the connection to drop, then probe until SSH answers again with the pinned key: with a new
//! boot id, or after having been unreachable. The engine then waits for the agent's report
//! with the new boot id.

use std::time::Duration;

use super::{SshStepExecutor, outcome};
use crate::campaigns::executor::{Outcome, StepRequest, StepResult};
use crate::ssh::{CapturedStream, DetachedStatus, Disposition, IntentId, SshError, SshTarget};

const BOOT_ID: &str = "cat /proc/sys/kernel/random/boot_id";
/// One probe's own bound (connect has its own timeout as well).
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The host's boot id ("" when it cannot tell, e.g. no /proc).
async fn boot_id(ex: &SshStepExecutor, t: &SshTarget) -> Result<String, SshError> {
    let r = ex.ssh.exec(t, BOOT_ID, PROBE_TIMEOUT).await?;
    Ok(if r.outcome.is_success() {
        String::from_utf8_lossy(&r.stdout.head).trim().to_string()
    } else {
        String::new()
    })
}

/// A probe error that a rebooting host produces (down, half up, connection cut).
fn while_down(e: &SshError) -> bool {
    matches!(
        e,
        SshError::Unreachable { .. }
            | SshError::ConnectTimeout { .. }
            | SshError::Handshake { .. }
            | SshError::ChannelRefused { .. }
    ) || e.disposition() == Disposition::Unknown
}

fn note(outcome: Outcome, text: String) -> StepResult {
    let mut r = StepResult::of(outcome);
    r.stdout = CapturedStream::whole(text.into_bytes());
    r
}

pub async fn run(
    ex: &SshStepExecutor,
    req: &StepRequest,
    target: &SshTarget,
    id: &IntentId,
) -> StepResult {
    let before = match boot_id(ex, target).await {
        Ok(b) => b,
        Err(e) => return StepResult::of(outcome::before_start(&e)),
    };
    let cmd = &ex.settings.reboot_command;
    match ex.ssh.start_detached(target, id, cmd, req.timeout).await {
        // Sent now, or by an earlier attempt at this intent: never sent again either way.
        Ok(_) => {}
        // Refused before the script could run (unreachable, handshake, channel, key): nothing
        // was sent, so this is no reboot under way.
        Err(e) if e.disposition() == Disposition::Failed => {
            return StepResult::of(outcome::before_start(&e));
        }
        // The session was lost once the start was under way: the reboot began, as expected.
        Err(_) => {}
    }
    let wait = wait_back(ex, target, id, &before);
    match tokio::time::timeout(req.timeout, wait).await {
        Ok(r) => r,
        Err(_) => {
            let mut r = StepResult::of(Outcome::TimedOut);
            r.stderr = CapturedStream::whole(
                b"muster: the host did not answer SSH again with its pinned key within the step's timeout\n"
                    .to_vec(),
            );
            r
        }
    }
}

/// Probes with backoff until the host is back (or the reboot command failed while it stayed up).
async fn wait_back(
    ex: &SshStepExecutor,
    target: &SshTarget,
    id: &IntentId,
    before: &str,
) -> StepResult {
    let poll = ex.settings.reboot_poll;
    let mut pause = poll.first;
    let mut went_down = false;
    loop {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(poll.max);
        match boot_id(ex, target).await {
            Ok(now) if !now.is_empty() && !before.is_empty() && now != before => {
                return note(
                    Outcome::Exited(0),
                    format!("muster: back on SSH with a new boot id {now}\n"),
                );
            }
            Ok(_) if went_down => {
                return note(
                    Outcome::Exited(0),
                    "muster: SSH answers again with the pinned key\n".into(),
                );
            }
            Ok(_) => {
                // Still up: a reboot command that failed ends the step; one that succeeded
                // means the shutdown is under way.
                if let Ok(DetachedStatus::Finished(r)) = ex.ssh.poll(target, id).await
                    && !r.outcome.is_success()
                {
                    return outcome::finished(r);
                }
            }
            // The reboot was sent: whatever answers with another key, the step's outcome is
            // unknown (and a security event), not "nothing ran".
            Err(SshError::HostKeyMismatch { expected, seen, .. }) => {
                return StepResult::of(Outcome::HostKeyChanged { expected, seen });
            }
            Err(e) if while_down(&e) => went_down = true,
            Err(e) => return StepResult::of(outcome::before_start(&e)),
        }
    }
}
