//! Certificate renewal in the run loop: when the certificate nears its end (or the server says
//! so), ask for one for a new key over the current mTLS identity, save it crash-safely
//! (`identity::finish_renewal`) and reconnect with it.

use std::time::{Duration, Instant, SystemTime};

use muster::pb;

use super::{Agent, AgentError};
use crate::identity::{self, Paths, write_atomic};

/// Wait before trying again after a failed renewal, as a multiple of the report interval...
const RETRY_INTERVALS: u32 = 10;
/// ...but never longer than this: a renewal the server committed but whose answer was lost
/// must be retried while the old certificate still works (the server's `RENEW_OVERLAP`,
/// 10 minutes), or the host would need a new enrollment.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(120);

impl Agent {
    /// Whether the certificate should be renewed now.
    fn renewal_due(&self, paths: &Paths) -> Result<bool, AgentError> {
        let f = self.cfg.renew_fraction;
        if f <= 0.0 || self.renew_retry_at.is_some_and(|t| Instant::now() < t) {
            return Ok(false);
        }
        if self.renew_hint {
            return Ok(true);
        }
        let (not_before, not_after) = identity::cert_validity(&paths.cert)?;
        let lifetime = not_after
            .duration_since(not_before)
            .unwrap_or(Duration::ZERO);
        let left = not_after
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        Ok(left < lifetime.mul_f64(f))
    }

    /// Renews the certificate when due. Failures are logged and retried later: the current
    /// certificate keeps working until it expires.
    pub(super) async fn renew_if_due(&mut self) {
        let paths = Paths::new(&self.cfg.state_dir);
        match self.renewal_due(&paths) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the certificate's validity; not renewing");
                return;
            }
        }
        if let Err(e) = self.renew(&paths).await {
            tracing::warn!(error = %e, "certificate renewal failed; the current certificate stays in use");
            self.renew_retry_at =
                Some(Instant::now() + (self.interval * RETRY_INTERVALS).min(MAX_RETRY_WAIT));
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
        self.renew_hint = false;
        self.renew_retry_at = None;
        let (_, not_after) = identity::cert_validity(&paths.cert)?;
        tracing::info!(
            not_after = %humantime::format_rfc3339_seconds(not_after),
            "renewed the client certificate"
        );
        Ok(())
    }
}
