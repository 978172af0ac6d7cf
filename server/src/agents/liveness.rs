//! Liveness: what the server knows of each reporting agent between reports (in memory only:
//! after a restart every agent gets a fresh grace period, instead of a durable write per
//! heartbeat), heartbeats, and the sweep that marks silent agents UNKNOWN and agents whose
//! certificate expired CRITICAL. The decisions are pure (`Liveness::silent`,
//! `Liveness::cert_expired`) and take `now` from the inventory's clock.

use std::time::Duration;

use muster::pb::{self, Health};

use super::{Agents, agent_ctx, agent_principal, body_status, duration_pb};
use crate::health;
use crate::model::ApiError;
use crate::observed::{self, ReportMeta};

/// What the server knows about a device's agent between reports (for silence detection).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Liveness {
    pub name: String,
    pub last_seen_nanos: i64,
    pub interval: Duration,
    /// Expiry of the certificate it last reported with (0: unknown).
    pub cert_not_after_nanos: i64,
}

impl Liveness {
    /// The agent's certificate expired: it cannot report again (CRITICAL, not UNKNOWN).
    pub fn cert_expired(&self, now: i64) -> bool {
        self.cert_not_after_nanos > 0 && self.cert_not_after_nanos <= now
    }

    /// The agent missed more than `intervals` reports (and is not expired: that verdict wins).
    pub fn silent(&self, now: i64, intervals: u32) -> bool {
        if self.cert_expired(now) {
            return false;
        }
        let limit = self.interval.saturating_mul(intervals);
        now.saturating_sub(self.last_seen_nanos)
            > i64::try_from(limit.as_nanos()).unwrap_or(i64::MAX)
    }
}

impl Agents {
    pub(super) fn load_liveness(&self) -> Result<(), ApiError> {
        // Agents get a full silence period after a server start before they count as silent.
        let now = self.inventory.now_unix_nanos();
        let mut live = self.live_map();
        let prefix = observed::META_PREFIX.as_bytes();
        for (k, v) in self
            .store
            .aux_scan(prefix)
            .map_err(|e| crate::store_map::aux_error("report metadata", e))?
        {
            let id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            let meta = ReportMeta::decode(&v)?;
            let cert_not_after_nanos = self
                .identities_map()
                .get(&meta.identity)
                .map_or(0, |i| i.not_after_nanos);
            // The name is looked up when needed (a device may have been deleted since).
            live.insert(
                id,
                Liveness {
                    name: meta.device.clone(),
                    last_seen_nanos: meta.last_report_nanos.max(now),
                    interval: Duration::from_millis(meta.interval_ms.max(1)),
                    cert_not_after_nanos,
                },
            );
        }
        Ok(())
    }

    /// Agent: liveness without facts.
    pub async fn heartbeat(
        &self,
        fingerprint: Option<&str>,
        req: &pb::HeartbeatRequest,
    ) -> Result<pb::HeartbeatResponse, ApiError> {
        let device = self.device_for(fingerprint)?;
        if !req.device.is_empty() && req.device != device {
            let e = ApiError::PermissionDenied(format!(
                "this agent is enrolled as device {device:?} and may not speak for another"
            ));
            return self.audited(
                &agent_principal(&device),
                "agent-heartbeat",
                &req.device,
                &agent_ctx(),
                Err(e),
            );
        }
        let (obj, _) = self
            .inventory
            .load_device(&device)?
            .ok_or_else(|| ApiError::NotFound {
                kind: "device",
                name: device.clone(),
            })?;
        self.check_same_device(fingerprint.unwrap_or_default(), &obj.id)?;
        let (_, meta) = observed::load_meta(&*self.store, &obj.id)?;
        // Liveness is kept in memory: after a restart every agent gets a fresh grace period.
        if let Some(l) = self.live_map().get_mut(&obj.id) {
            l.last_seen_nanos = self.inventory.now_unix_nanos();
        }
        Ok(pb::HeartbeatResponse {
            next_interval: Some(duration_pb(self.next_interval())),
            acked_hash: meta
                .filter(|m| Some(m.identity.as_str()) == fingerprint)
                .map(|m| m.facts_hash)
                .unwrap_or_default(),
            max_report_bytes: self.max_report_bytes(),
        })
    }

    /// Marks devices whose agent missed `silent_intervals` reports as UNKNOWN. Returns how
    /// many devices changed.
    pub async fn sweep_silent(&self) -> usize {
        let now = self.inventory.now_unix_nanos();
        // An agent whose certificate expired cannot report again: CRITICAL, not UNKNOWN.
        let expired: Vec<(String, String, i64)> = self
            .live_map()
            .iter()
            .filter(|(_, l)| l.cert_expired(now))
            .map(|(id, l)| (id.clone(), l.name.clone(), l.cert_not_after_nanos))
            .collect();
        let mut changed = 0;
        for (id, name, not_after) in &expired {
            match self.mark_expired(id, name, *not_after, now).await {
                Ok(true) => changed += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(device = %name, error = %e, "could not mark an expired agent certificate")
                }
            }
        }
        let silent: Vec<(String, String, i64)> = self
            .live_map()
            .iter()
            .filter(|(_, l)| l.silent(now, self.settings.silent_intervals))
            .map(|(id, l)| (id.clone(), l.name.clone(), l.last_seen_nanos))
            .collect();
        for (id, name, last) in silent {
            match self.mark_silent(&id, &name, last, now).await {
                Ok(true) => changed += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(device = %name, error = %e, "could not mark a silent agent")
                }
            }
        }
        changed
    }

    /// The device `name` while it is still the one with id `id` (deleted or re-created: its
    /// liveness is forgotten and `None`).
    pub(super) fn live_device(
        &self,
        id: &str,
        name: &str,
    ) -> Result<Option<(crate::store::StoredObject, pb::Resource)>, ApiError> {
        let found = self
            .inventory
            .load_device(name)?
            .filter(|(o, _)| o.id == id);
        if found.is_none() {
            self.live_map().remove(id);
        }
        Ok(found)
    }

    async fn mark_silent(
        &self,
        id: &str,
        name: &str,
        last: i64,
        now: i64,
    ) -> Result<bool, ApiError> {
        let Some((obj, body)) = self.live_device(id, name)? else {
            return Ok(false);
        };
        let status = body_status(&body);
        if status.health == Health::Unknown as i32 {
            return Ok(false);
        }
        // A report may have arrived since the sweep looked: it wins.
        if self
            .live_map()
            .get(id)
            .is_some_and(|l| l.last_seen_nanos > last)
        {
            return Ok(false);
        }
        let a = health::silent(last, now, self.settings.silent_intervals);
        self.write_health((id, name), (&obj, &body), &a, now)
            .await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use muster::clock::{Clock, ManualClock};

    use super::*;

    fn seen(clock: &Arc<ManualClock>, interval: Duration, not_after: i64) -> Liveness {
        Liveness {
            name: "web-01".into(),
            last_seen_nanos: clock.now_unix_nanos(),
            interval,
            cert_not_after_nanos: not_after,
        }
    }

    #[test]
    fn silent_after_the_given_number_of_intervals() {
        let clock = ManualClock::at_unix_nanos(1_000_000_000_000);
        let l = seen(&clock, Duration::from_secs(60), 0);
        assert!(!l.silent(clock.now_unix_nanos(), 3));
        clock.advance(Duration::from_secs(180));
        assert!(
            !l.silent(clock.now_unix_nanos(), 3),
            "exactly three intervals: not yet"
        );
        clock.advance(Duration::from_secs(1));
        assert!(l.silent(clock.now_unix_nanos(), 3));
        assert!(!l.silent(clock.now_unix_nanos(), 4));
    }

    #[test]
    fn an_expired_certificate_is_its_own_verdict() {
        let clock = ManualClock::at_unix_nanos(1_000_000_000_000);
        let expiry = clock.now_unix_nanos() + 30 * 1_000_000_000;
        let l = seen(&clock, Duration::from_secs(10), expiry);
        assert!(!l.cert_expired(clock.now_unix_nanos()));
        clock.advance(Duration::from_secs(29));
        assert!(!l.cert_expired(clock.now_unix_nanos()));
        assert!(
            l.silent(clock.now_unix_nanos(), 2),
            "silent while still valid"
        );
        clock.advance(Duration::from_secs(1));
        assert!(
            l.cert_expired(clock.now_unix_nanos()),
            "expired at not_after"
        );
        assert!(
            !l.silent(clock.now_unix_nanos(), 2),
            "expired, so not called silent"
        );
        // Unknown expiry (0) never expires.
        let unknown = seen(&clock, Duration::from_secs(10), 0);
        clock.advance(Duration::from_secs(3650 * 86_400));
        assert!(!unknown.cert_expired(clock.now_unix_nanos()));
    }

    #[test]
    fn huge_intervals_do_not_overflow() {
        let clock = ManualClock::at_unix_nanos(0);
        let l = seen(&clock, Duration::MAX, 0);
        clock.advance(Duration::from_secs(10 * 365 * 86_400));
        assert!(!l.silent(clock.now_unix_nanos(), u32::MAX));
    }
}
