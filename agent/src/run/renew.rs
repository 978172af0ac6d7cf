//! Certificate renewal in the run loop: when the certificate nears its end (or the server says
//! so), ask for one for a new key over the current mTLS identity, save it crash-safely
//! (`identity::finish_renewal`) and reconnect with it. When it is due is decided by
//! [`RenewTiming`] on the agent's clock, so it is tested by advancing a manual clock.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use muster::clock::SharedClock;
use muster::pb;

use super::{Agent, AgentError};
use crate::identity::{self, Paths, write_atomic};

/// Wait before trying again after a failed renewal, as a multiple of the report interval...
const RETRY_INTERVALS: u32 = 10;
/// ...but never longer than this: a renewal the server committed but whose answer was lost
/// must be retried while the old certificate still works (the server's `RENEW_OVERLAP`,
/// 10 minutes), or the host would need a new enrollment.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(120);

/// When the certificate is to be renewed: in the last `fraction` of its lifetime, or when the
/// server said so, but not again before the wait after a failure is over.
#[derive(Debug, Clone)]
pub(super) struct RenewTiming {
    /// `renew_fraction` of the config; 0 turns renewal off.
    fraction: f64,
    /// The server said the certificate should be renewed.
    pub(super) hint: bool,
    /// After a failed renewal, not before this.
    retry_at: Option<Instant>,
}

impl RenewTiming {
    pub(super) fn new(fraction: f64) -> Self {
        Self {
            fraction,
            hint: false,
            retry_at: None,
        }
    }

    /// Whether to renew now. `validity` (not before, not after) is read only when the answer
    /// depends on it.
    pub(super) fn due<E>(
        &self,
        clock: &SharedClock,
        validity: impl FnOnce() -> Result<(SystemTime, SystemTime), E>,
    ) -> Result<bool, E> {
        if self.fraction <= 0.0 || self.retry_at.is_some_and(|t| clock.now_instant() < t) {
            return Ok(false);
        }
        if self.hint {
            return Ok(true);
        }
        let (not_before, not_after) = validity()?;
        let lifetime = not_after
            .duration_since(not_before)
            .unwrap_or(Duration::ZERO);
        let left = not_after
            .duration_since(wall_time(clock))
            .unwrap_or(Duration::ZERO);
        Ok(left < lifetime.mul_f64(self.fraction))
    }

    /// A renewal failed: try again after a while (see [`RETRY_INTERVALS`]).
    pub(super) fn failed(&mut self, clock: &SharedClock, interval: Duration) {
        self.retry_at =
            Some(clock.now_instant() + (interval * RETRY_INTERVALS).min(MAX_RETRY_WAIT));
    }

    /// The certificate was renewed: no hint, no wait.
    pub(super) fn renewed(&mut self) {
        self.hint = false;
        self.retry_at = None;
    }
}

/// The clock's wall time as a `SystemTime` (what certificate validity is compared with).
fn wall_time(clock: &SharedClock) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(clock.now_unix_nanos()).unwrap_or(0))
}

impl Agent {
    /// Renews the certificate when due. Failures are logged and retried later: the current
    /// certificate keeps working until it expires.
    pub(super) async fn renew_if_due(&mut self) {
        let paths = Paths::new(&self.cfg.state_dir);
        match self
            .renewal
            .due(&self.clock, || identity::cert_validity(&paths.cert))
        {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the certificate's validity; not renewing");
                return;
            }
        }
        if let Err(e) = self.renew(&paths).await {
            tracing::warn!(error = %e, "certificate renewal failed; the current certificate stays in use");
            self.renewal.failed(&self.clock, self.interval);
        }
    }

    async fn renew(&mut self, paths: &Paths) -> Result<(), AgentError> {
        let csr_pem = identity::next_key_and_csr(paths, &self.device)?;
        let resp = self
            .client
            .renew_certificate(pb::RenewRequest { csr_pem })
            .await
            .map_err(|s| AgentError::Renew(format!("{:?}: {}", s.code(), s.message())))?;
        let id = resp
            .into_inner()
            .identity
            .ok_or_else(|| AgentError::Renew("empty answer from the server".into()))?;
        if id.device != self.device {
            return Err(AgentError::Renew(format!(
                "the server issued a certificate for {:?}, not {:?}",
                id.device, self.device
            )));
        }
        // The certificate is written last: its presence is what makes the switch happen.
        write_atomic(&paths.cert_next, id.certificate_pem.as_bytes(), 0o644)?;
        identity::finish_renewal(paths)?;
        self.client = Self::connect(&self.cfg, paths)?;
        self.renewal.renewed();
        let (_, not_after) = identity::cert_validity(&paths.cert)?;
        tracing::info!(
            not_after = %humantime::format_rfc3339_seconds(not_after),
            "renewed the client certificate"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use muster::clock::ManualClock;

    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    /// A 30-day certificate starting at the manual clock's start.
    fn setup(
        fraction: f64,
    ) -> (
        std::sync::Arc<ManualClock>,
        SharedClock,
        RenewTiming,
        (SystemTime, SystemTime),
    ) {
        let manual = ManualClock::at_unix_nanos(1_700_000_000_000_000_000);
        let clock: SharedClock = manual.clone();
        let not_before = wall_time(&clock);
        (
            manual,
            clock,
            RenewTiming::new(fraction),
            (not_before, not_before + 30 * DAY),
        )
    }

    fn due(t: &RenewTiming, clock: &SharedClock, v: (SystemTime, SystemTime)) -> bool {
        t.due(clock, || Ok::<_, Infallible>(v))
            .unwrap_or_else(|e| match e {})
    }

    #[test]
    fn due_in_the_last_fraction_of_the_lifetime() {
        let (manual, clock, t, v) = setup(1.0 / 3.0);
        assert!(!due(&t, &clock, v));
        manual.advance(19 * DAY); // 11 days left of 30: more than a third
        assert!(!due(&t, &clock, v));
        manual.advance(DAY + Duration::from_secs(1)); // just under 10 days left
        assert!(due(&t, &clock, v));
        manual.advance(20 * DAY); // expired: still due (the server will say no)
        assert!(due(&t, &clock, v));
    }

    #[test]
    fn the_servers_hint_and_the_off_switch() {
        let (_, clock, mut t, v) = setup(1.0 / 3.0);
        t.hint = true;
        // The hint wins without reading the certificate.
        assert_eq!(
            t.due(&clock, || Err::<(SystemTime, SystemTime), _>("unread")),
            Ok(true)
        );
        let (_, clock, mut off, v2) = setup(0.0);
        off.hint = true;
        assert!(!due(&off, &clock, v2));
        assert!(!due(&RenewTiming::new(0.0), &clock, v));
    }

    #[test]
    fn a_failure_waits_ten_intervals_at_most_two_minutes() {
        let (manual, clock, mut t, v) = setup(1.0 / 3.0);
        t.hint = true;
        t.failed(&clock, Duration::from_secs(5)); // 10 intervals: 50 s
        assert!(!due(&t, &clock, v));
        manual.advance(Duration::from_secs(49));
        assert!(!due(&t, &clock, v));
        manual.advance(Duration::from_secs(1));
        assert!(due(&t, &clock, v));

        t.failed(&clock, Duration::from_secs(60)); // 10 minutes, capped at 2
        manual.advance(Duration::from_secs(119));
        assert!(!due(&t, &clock, v));
        manual.advance(Duration::from_secs(1));
        assert!(due(&t, &clock, v));

        t.failed(&clock, Duration::from_secs(60));
        t.renewed();
        // No wait and no hint after a renewal: back to the lifetime rule (fresh: not due).
        assert!(!due(&t, &clock, v));
        assert!(!t.hint);
    }

    #[test]
    fn unreadable_validity_is_an_error_not_a_renewal() {
        let (_, clock, t, _) = setup(1.0 / 3.0);
        assert_eq!(
            t.due(&clock, || Err::<(SystemTime, SystemTime), _>("bad cert")),
            Err("bad cert")
        );
    }
}
