//! Certificate renewal and expiry: an agent, authenticated by its current certificate, gets a
//! certificate for a new key without an operator; the previous identity keeps working for a
//! short overlap (or until the first report with the new one), and a certificate near or past
//! its expiry is a health reason.

use std::time::Duration;

use muster::pb::{self, Health};
use serde::{Deserialize, Serialize};

use super::{
    Agents, DeviceV1, Record, decode, device_key, encode, identity_key, rfc3339, system_time_nanos,
};
use crate::inventory::ChangeContext;
use crate::model::ApiError;
use crate::pki::AgentCa;
use crate::store::AuxWrite;

/// How long the previous certificate keeps working after a renewal when the agent never
/// reports with the new one (it crashed before saving it): long enough to renew again.
pub const RENEW_OVERLAP: Duration = Duration::from_secs(600);
/// Largest CSR accepted for a renewal.
pub const MAX_CSR_BYTES: usize = 16 * 1024;
/// Validity the server used before it was configurable: identities recorded without their
/// expiry (`IdentityV1`) were issued for this long.
const LEGACY_VALIDITY_NANOS: i64 = 365 * 24 * 3600 * 1_000_000_000;
/// The skew allowance legacy certificates were issued with.
const LEGACY_SKEW_NANOS: i64 = 300 * 1_000_000_000;

/// An identity record that knows its certificate's validity, and (once renewed) until when it
/// still works. Written by enrollment and renewal; `IdentityV1` records decode unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct IdentityV2 {
    pub device: String,
    pub device_id: String,
    pub since_nanos: i64,
    pub hostname: String,
    pub not_before_nanos: i64,
    pub not_after_nanos: i64,
    /// Set on the previous identity of a renewal: it stops working at this time.
    pub retire_nanos: Option<i64>,
}

/// An identity a renewal replaced, with what it was renewed to: one identity renews at most
/// once (a retry with the same key is answered with the same certificate, any other CSR is
/// refused), so one agent cannot mint identities, or change records, during its overlap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct IdentityV3 {
    pub identity: IdentityV2,
    pub renewed: RenewedTo,
}

/// The certificate a renewal issued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct RenewedTo {
    pub fingerprint: String,
    /// SHA-256 of the CSR's public key (`AgentCa::csr_key_fingerprint`).
    pub key_fingerprint: String,
    pub cert_pem: String,
    pub not_after_nanos: i64,
    pub at_nanos: i64,
}

/// Serializes identity changes of one device (renewal, enrollment) from reading the identity
/// table to updating it after the commit. The store's guards already keep the records
/// consistent, but the table is updated after each commit: two changes committed in one order
/// could otherwise update it in the other and leave a revoked identity working until restart.
/// Striped (64 locks by device name), so memory stays fixed.
pub(crate) struct IdentityLocks(Vec<tokio::sync::Mutex<()>>);

const IDENTITY_LOCK_STRIPES: usize = 64;

impl Default for IdentityLocks {
    fn default() -> Self {
        Self(
            (0..IDENTITY_LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        )
    }
}

impl IdentityLocks {
    pub(crate) async fn lock(&self, device: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        device.hash(&mut h);
        #[allow(clippy::cast_possible_truncation)]
        let i = (h.finish() % IDENTITY_LOCK_STRIPES as u64) as usize;
        self.0[i].lock().await
    }
}

/// The in-memory view of an identity (certificate fingerprint → this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ident {
    pub device: String,
    pub device_id: String,
    pub not_before_nanos: i64,
    pub not_after_nanos: i64,
    pub retire_nanos: Option<i64>,
}

impl Ident {
    /// From a stored record (`None` for records that are not identities).
    pub(super) fn from_record(r: Record) -> Option<(Self, String, i64)> {
        match r {
            Record::Identity(i) => Some((
                Self {
                    device: i.device,
                    device_id: i.device_id,
                    not_before_nanos: i.since_nanos.saturating_sub(LEGACY_SKEW_NANOS),
                    not_after_nanos: i.since_nanos.saturating_add(LEGACY_VALIDITY_NANOS),
                    retire_nanos: None,
                },
                i.hostname,
                i.since_nanos,
            )),
            Record::IdentityV2(i) => Some((
                Self {
                    device: i.device,
                    device_id: i.device_id,
                    not_before_nanos: i.not_before_nanos,
                    not_after_nanos: i.not_after_nanos,
                    retire_nanos: i.retire_nanos,
                },
                i.hostname,
                i.since_nanos,
            )),
            Record::IdentityV3(i) => Self::from_record(Record::IdentityV2(i.identity)),
            _ => None,
        }
    }

    /// Why this identity may not be used at `now`, if it may not.
    pub fn refusal(&self, now: i64) -> Option<ApiError> {
        if now >= self.not_after_nanos {
            return Some(ApiError::Unauthenticated(format!(
                "this client certificate expired at {}; enroll again (muster agent token create {})",
                rfc3339(self.not_after_nanos),
                self.device
            )));
        }
        if self.retire_nanos.is_some_and(|t| now >= t) {
            return Some(ApiError::Unauthenticated(
                "this client certificate was replaced by a renewal; use the renewed one".into(),
            ));
        }
        None
    }

    /// Whether less than `fraction` of the certificate's lifetime remains at `now`.
    pub fn in_last(&self, fraction: f64, now: i64) -> bool {
        let lifetime = self.not_after_nanos.saturating_sub(self.not_before_nanos);
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
        let window = (lifetime as f64 * fraction.clamp(0.0, 1.0)) as i64;
        self.not_after_nanos.saturating_sub(now) < window
    }
}

/// The health reason for an agent certificate at `now`: CRITICAL once expired, WARNING when
/// less than `warn` remains, none otherwise.
pub fn certificate_reason(
    not_after_nanos: i64,
    now: i64,
    warn: Duration,
) -> Option<pb::HealthReason> {
    let left = not_after_nanos.saturating_sub(now);
    let (severity, code, message) = if left <= 0 {
        (
            Health::Critical,
            "agent.certificate_expired",
            format!(
                "agent certificate expired at {}; the agent cannot report until the host enrolls again",
                rfc3339(not_after_nanos)
            ),
        )
    } else if left < i64::try_from(warn.as_nanos()).unwrap_or(i64::MAX) {
        let left = Duration::from_secs(u64::try_from(left / 1_000_000_000).unwrap_or(0));
        (
            Health::Warning,
            "agent.certificate_expiring",
            format!(
                "agent certificate expires in {} (at {}) and has not been renewed; check that the agent runs with renewal on, or enroll again",
                humanize(left),
                rfc3339(not_after_nanos)
            ),
        )
    } else {
        return None;
    };
    Some(pb::HealthReason {
        severity: severity as i32,
        code: code.into(),
        message,
        source: "agent".into(),
    })
}

/// "12 days", "3 hours", "40s": the largest unit, for a message a person reads.
fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 2 * 3600 => format!("{} hours", s / 3600),
        s if s >= 120 => format!("{} minutes", s / 60),
        s => format!("{s}s"),
    }
}

/// A renewed identity, for the gRPC layer to answer with.
#[derive(Debug, Clone)]
pub struct Renewed {
    pub device: String,
    pub cert_pem: String,
    pub not_after_nanos: i64,
}

impl Agents {
    /// Agent: a certificate for the key in `csr_pem`, for the device the presented certificate
    /// (`fingerprint`) speaks for. Refusals are audited.
    pub async fn renew(
        &self,
        fingerprint: Option<&str>,
        csr_pem: &str,
    ) -> Result<Renewed, ApiError> {
        let ctx = ChangeContext {
            origin: "agent".into(),
            ..Default::default()
        };
        let ident = match self.identity(fingerprint) {
            Ok(i) => i,
            Err(e) => return self.audited("agent:unknown", "agent-renew", "", &ctx, Err(e)),
        };
        let principal = format!("agent:{}", ident.device);
        let fp = fingerprint.unwrap_or_default();
        let r = async {
            let _serial = self.identity_locks.lock(&ident.device).await;
            // Read again under the lock: a concurrent renewal or enrollment may have changed it.
            let ident = self.identity(fingerprint)?;
            self.renew_checked(fp, &ident, csr_pem, &principal, &ctx)
                .await
        }
        .await;
        self.audited(&principal, "agent-renew", &ident.device, &ctx, r)
    }

    async fn renew_checked(
        &self,
        fp: &str,
        ident: &Ident,
        csr_pem: &str,
        principal: &str,
        ctx: &ChangeContext,
    ) -> Result<Renewed, ApiError> {
        let device = ident.device.as_str();
        let obj = self
            .inventory
            .load_device(device)?
            .map(|(o, _)| o)
            .filter(|o| o.id == ident.device_id)
            .ok_or_else(|| {
                ApiError::Unauthenticated(
                    "this client certificate was issued for a device that has since been deleted; enroll again".into(),
                )
            })?;
        let dev_key = device_key(device);
        let dev_raw = self.store.aux_get(&dev_key).map_err(super::store_err)?;
        let dev = match dev_raw.as_deref().map(decode).transpose()? {
            Some(Record::Device(d)) => d,
            _ => DeviceV1::default(),
        };
        if csr_pem.len() > MAX_CSR_BYTES {
            return Err(ApiError::invalid(
                "csr_pem",
                format!("must be at most {MAX_CSR_BYTES} bytes"),
            ));
        }
        let id_key = identity_key(fp);
        let id_raw = self.store.aux_get(&id_key).map_err(super::store_err)?;
        let stored = id_raw.as_deref().map(decode).transpose()?;
        if let Some(Record::IdentityV3(done)) = stored {
            return self.renewed_already(device, &dev, &done.renewed, csr_pem);
        }
        // The presented identity is the device's active one, or (records from before renewals
        // were remembered) one a renewal replaced without saying to what.
        let is_active = dev.active.as_deref() == Some(fp);
        if !is_active && ident.retire_nanos.is_none() {
            return Err(ApiError::Unauthenticated(
                "this client certificate is no longer the device's identity (it was replaced by a newer enrollment)".into(),
            ));
        }
        let now = self.inventory.now_unix_nanos();
        if !ident.in_last(0.5, now) {
            let lifetime = ident.not_after_nanos.saturating_sub(ident.not_before_nanos);
            return Err(ApiError::FailedPrecondition(format!(
                "too early to renew: this certificate is valid until {}; renewal is accepted in the second half of its lifetime, from {}",
                rfc3339(ident.not_after_nanos),
                rfc3339(ident.not_after_nanos.saturating_sub(lifetime / 2))
            )));
        }
        let key_fingerprint = AgentCa::csr_key_fingerprint(csr_pem)
            .map_err(|e| ApiError::invalid("csr_pem", e.to_string()))?;
        let issued = self
            .ca
            .sign_agent(csr_pem, device, self.settings.cert_validity)
            .map_err(|e| ApiError::invalid("csr_pem", e.to_string()))?;
        let retire = ident
            .retire_nanos
            .unwrap_or_else(|| {
                now.saturating_add(i64::try_from(RENEW_OVERLAP.as_nanos()).unwrap_or(i64::MAX))
            })
            .min(ident.not_after_nanos);
        let new_ident = Ident {
            device: device.to_string(),
            device_id: obj.id.clone(),
            not_before_nanos: system_time_nanos(issued.not_before),
            not_after_nanos: system_time_nanos(issued.not_after),
            retire_nanos: None,
        };
        let old_ident = Ident {
            retire_nanos: Some(retire),
            ..ident.clone()
        };
        // The device keeps exactly two identities: the new one and the presented one (until it
        // retires). Any other (an earlier renewal the agent never saved) goes now.
        let others: Vec<String> = self
            .identities_map()
            .iter()
            .filter(|(k, i)| i.device == device && k.as_str() != fp)
            .map(|(k, _)| k.clone())
            .collect();
        let mut puts = Vec::new();
        for k in &others {
            puts.push((identity_key(k), None));
        }
        let Record::IdentityV2(old_record) = identity_record(&old_ident, &dev.hostname, now) else {
            return Err(ApiError::Internal("identity record version".into()));
        };
        puts.push((
            id_key.clone(),
            Some(encode(&Record::IdentityV3(IdentityV3 {
                identity: old_record,
                renewed: RenewedTo {
                    fingerprint: issued.fingerprint.clone(),
                    key_fingerprint,
                    cert_pem: issued.cert_pem.clone(),
                    not_after_nanos: new_ident.not_after_nanos,
                    at_nanos: now,
                },
            }))?),
        ));
        puts.push((
            identity_key(&issued.fingerprint),
            Some(encode(&identity_record(&new_ident, &dev.hostname, now))?),
        ));
        puts.push((
            dev_key.clone(),
            Some(encode(&Record::Device(DeviceV1 {
                active: Some(issued.fingerprint.clone()),
                active_since_nanos: now,
                ..dev
            }))?),
        ));
        let mutation = self.annotate(
            device,
            principal,
            "agent-renew",
            ctx,
            &[
                (
                    "identity",
                    format!(
                        "certificate {} renewed from {} at {}",
                        &issued.fingerprint[..16],
                        &fp[..16.min(fp.len())],
                        rfc3339(now)
                    ),
                ),
                ("cert-not-after", rfc3339(new_ident.not_after_nanos)),
            ],
        )?;
        self.commit(AuxWrite {
            guards: vec![(dev_key, dev_raw), (id_key, id_raw)],
            puts,
            mutation: Some(mutation),
        })
        .await
        .map_err(|e| crate::store_map::api_error("device", device, e))?;
        let mut ids = self.identities.write().unwrap_or_else(|p| p.into_inner());
        for k in &others {
            ids.remove(k);
        }
        ids.insert(fp.to_string(), old_ident);
        ids.insert(issued.fingerprint.clone(), new_ident.clone());
        Ok(Renewed {
            device: device.to_string(),
            cert_pem: issued.cert_pem,
            not_after_nanos: new_ident.not_after_nanos,
        })
    }

    /// A renewal presented by an identity that was renewed already: the same certificate for
    /// the same key (the answer was lost; the agent kept its key), else a refusal.
    fn renewed_already(
        &self,
        device: &str,
        dev: &DeviceV1,
        done: &RenewedTo,
        csr_pem: &str,
    ) -> Result<Renewed, ApiError> {
        let when = rfc3339(done.at_nanos);
        let short = &done.fingerprint[..16.min(done.fingerprint.len())];
        if dev.active.as_deref() != Some(done.fingerprint.as_str())
            || !self.identities_map().contains_key(&done.fingerprint)
        {
            return Err(ApiError::FailedPrecondition(format!(
                "this certificate was renewed at {when} and the renewed certificate {short} is no longer the device's identity; enroll again"
            )));
        }
        let key = AgentCa::csr_key_fingerprint(csr_pem)
            .map_err(|e| ApiError::invalid("csr_pem", e.to_string()))?;
        if key != done.key_fingerprint {
            return Err(ApiError::FailedPrecondition(format!(
                "this certificate was already renewed at {when} (certificate {short}); a certificate renews once: retry with the same key (the agent keeps it in agent.key.next) or use the renewed certificate"
            )));
        }
        Ok(Renewed {
            device: device.to_string(),
            cert_pem: done.cert_pem.clone(),
            not_after_nanos: done.not_after_nanos,
        })
    }

    /// The first report with a renewed identity retires the previous one at once: the agent
    /// has saved the new certificate. Returns the write to add, if `previous` is retiring.
    pub(super) fn retire_after_first_use(
        &self,
        previous: &str,
        device_id: &str,
    ) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
        self.identities_map()
            .get(previous)
            .filter(|i| i.device_id == device_id && i.retire_nanos.is_some())
            .map(|_| (identity_key(previous), None))
    }

    /// Marks a device whose agent's certificate expired as CRITICAL (it cannot report any
    /// more, so this is decided by the sweep). Returns whether the device changed.
    pub(super) async fn mark_expired(
        &self,
        id: &str,
        name: &str,
        not_after_nanos: i64,
        now: i64,
    ) -> Result<bool, ApiError> {
        let Some((obj, body)) = self.live_device(id, name)? else {
            return Ok(false);
        };
        let status = super::body_status(&body);
        if status
            .health_reasons
            .iter()
            .any(|r| r.code == "agent.certificate_expired")
        {
            self.forget_expired(id, not_after_nanos);
            return Ok(false);
        }
        let Some(reason) = certificate_reason(not_after_nanos, now, self.settings.cert_warn) else {
            return Ok(false);
        };
        let a = crate::health::Assessment {
            health: Health::Critical,
            reasons: vec![reason],
        };
        let (meta_raw, meta) = crate::observed::load_meta(&*self.store, id)?;
        let m = self.health_mutation(&obj, &body, &a, ("server", "server"), now);
        let mut puts = Vec::new();
        if let Some(mut meta) = meta {
            meta.set_health(&a);
            meta.health_since_nanos = now;
            puts.push((crate::observed::meta_key(id), Some(meta.encode()?)));
        }
        self.commit(AuxWrite {
            guards: vec![(crate::observed::meta_key(id), meta_raw)],
            puts,
            mutation: Some(m),
        })
        .await
        .map_err(|e| crate::store_map::api_error("device", name, e))?;
        self.forget_expired(id, not_after_nanos);
        Ok(true)
    }

    /// Stops sweeping a device marked expired: it cannot report again with that certificate,
    /// and a re-enrolled agent's next report puts it back. Left alone if that already happened.
    fn forget_expired(&self, id: &str, not_after_nanos: i64) {
        let mut live = self.live_map();
        if live
            .get(id)
            .is_some_and(|l| l.cert_not_after_nanos == not_after_nanos)
        {
            live.remove(id);
        }
    }

    /// Drops retired identities from memory once their deletion is written.
    pub(super) fn forget_identity(&self, fp: &str) {
        self.identities
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(fp);
    }
}

/// The stored record for an identity.
pub(super) fn identity_record(i: &Ident, hostname: &str, since_nanos: i64) -> Record {
    Record::IdentityV2(IdentityV2 {
        device: i.device.clone(),
        device_id: i.device_id.clone(),
        since_nanos,
        hostname: hostname.to_string(),
        not_before_nanos: i.not_before_nanos,
        not_after_nanos: i.not_after_nanos,
        retire_nanos: i.retire_nanos,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn certificate_reasons_by_time_left() {
        let warn = Duration::from_secs(14 * 86_400);
        let day = 86_400 * S;
        assert_eq!(certificate_reason(100 * day, 0, warn), None);
        let w = certificate_reason(12 * day, 0, warn).expect("warning");
        assert_eq!(w.severity, Health::Warning as i32);
        assert_eq!(w.code, "agent.certificate_expiring");
        assert!(w.message.contains("expires in 12 days"), "{}", w.message);
        let c = certificate_reason(day, 2 * day, warn).expect("critical");
        assert_eq!(c.severity, Health::Critical as i32);
        assert_eq!(c.code, "agent.certificate_expired");
    }

    #[test]
    fn identity_windows() {
        let i = Ident {
            device: "web-01".into(),
            device_id: "1".into(),
            not_before_nanos: 0,
            not_after_nanos: 90 * S,
            retire_nanos: None,
        };
        assert!(!i.in_last(1.0 / 3.0, 50 * S));
        assert!(i.in_last(1.0 / 3.0, 70 * S));
        assert!(i.refusal(89 * S).is_none());
        assert!(matches!(
            i.refusal(90 * S),
            Some(ApiError::Unauthenticated(_))
        ));
        let retiring = Ident {
            retire_nanos: Some(60 * S),
            ..i
        };
        assert!(retiring.refusal(59 * S).is_none());
        assert!(retiring.refusal(60 * S).is_some());
    }
}
