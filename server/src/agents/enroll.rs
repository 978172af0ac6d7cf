//! Enrollment: an operator issues a one-time token for a device; the agent exchanges it and a
//! CSR for a client certificate. A device that already has an identity is re-keyed only after
//! an operator approves (the new key is held as a pending enrollment the agent polls for).
//! Every step is one guarded auxiliary write plus the annotation mutation that audits it.

use std::time::Duration;

use muster::pb;

use super::records::{
    self, DeviceV1, PENDING_PREFIX, PendingV1, Record, TokenV1, decode, device_key, encode,
    identity_key, pending_key, random_secret, sha256_hex, token_key,
};
use super::{
    Agents, DEFAULT_TOKEN_TTL, Enrolled, Ident, agent_ctx, agent_principal, identity_record,
    rfc3339, store_err, system_time_nanos,
};
use crate::inventory::ChangeContext;
use crate::model::{ApiError, Principal, timestamp};
use crate::pki::AgentCa;
use crate::store::{AuxWrite, StoreError};

/// An operator's request for an enrollment token, as the edge converted it.
#[derive(Debug, Clone, Default)]
pub struct NewEnrollmentToken {
    pub device: String,
    /// None: [`DEFAULT_TOKEN_TTL`].
    pub ttl: Option<Duration>,
    pub context: ChangeContext,
}

/// The guarded keys (with the bytes they must still hold) and the puts of an enrollment step.
type Writes = Vec<(Vec<u8>, Option<Vec<u8>>)>;

impl Agents {
    /// Operator: a one-time enrollment token for `device`.
    pub async fn create_token(
        &self,
        who: &Principal,
        device: &str,
        ttl: Option<Duration>,
        ctx: &ChangeContext,
    ) -> Result<(String, i64), ApiError> {
        let result = async {
            muster::names::validate_name("device", device)?;
            crate::scope::check_device(&self.inventory, who, device)?;
            let ttl = ttl.unwrap_or(DEFAULT_TOKEN_TTL);
            if ttl.is_zero() || ttl > self.settings.max_token_ttl {
                return Err(ApiError::invalid(
                    "ttl",
                    format!(
                        "must be more than 0 and at most {}",
                        humantime::format_duration(self.settings.max_token_ttl)
                    ),
                ));
            }
            let token = random_secret("mst_enroll_");
            let now = self.inventory.now_unix_nanos();
            let expires = now.saturating_add(i64::try_from(ttl.as_nanos()).unwrap_or(i64::MAX));
            let hash = sha256_hex(&token);
            let rec = Record::Token(TokenV1 {
                device: device.to_string(),
                expires_nanos: expires,
                used: false,
                created_by: who.name.clone(),
            });
            let mutation = self.annotate(
                device,
                &who.name,
                "agent-token",
                ctx,
                &[(
                    "enrollment-token",
                    format!("issued by {}, expires {}", who.name, rfc3339(expires)),
                )],
            )?;
            let key = token_key(&hash);
            self.commit(AuxWrite {
                guards: vec![(key.clone(), None)],
                puts: vec![(key, Some(encode(&rec)?))],
                mutation: Some(mutation),
            })
            .await
            .map_err(|e| crate::store_map::api_error("device", device, e))?;
            Ok((token, expires))
        }
        .await;
        self.audited(&who.name, "agent-token", device, ctx, result)
    }

    /// Agent: exchanges a token (or a held enrollment's id) and a CSR for an identity.
    pub async fn enroll(
        &self,
        token: &str,
        pending_id: &str,
        csr_pem: &str,
        hostname: &str,
    ) -> Result<Enrolled, ApiError> {
        let ctx = agent_ctx();
        if !pending_id.is_empty() {
            let r = self.collect_pending(pending_id, csr_pem).await;
            return self.audited("agent:enroll", "agent-enroll", "", &ctx, r);
        }
        let hash = sha256_hex(token);
        let (raw, tok) = match self.read(&token_key(&hash))? {
            Some((raw, Record::Token(t))) => (raw, t),
            _ => {
                let e = ApiError::Unauthenticated("unknown enrollment token".into());
                return self.audited("agent:enroll", "agent-enroll", "", &ctx, Err(e));
            }
        };
        let device = tok.device.clone();
        let principal = agent_principal(&device);
        let result = async {
            let hostname = crate::inventory::printable_text(hostname, 253);
            if tok.used {
                return Err(ApiError::PermissionDenied(
                    "this enrollment token was already used; create a new one with `muster agent token create`".into(),
                ));
            }
            let now = self.inventory.now_unix_nanos();
            if now >= tok.expires_nanos {
                return Err(ApiError::PermissionDenied(format!(
                    "this enrollment token expired at {}; create a new one",
                    rfc3339(tok.expires_nanos)
                )));
            }
            let key_fp = AgentCa::csr_key_fingerprint(csr_pem)
                .map_err(|e| ApiError::invalid("csr_pem", e.to_string()))?;
            let used = Record::Token(TokenV1 {
                used: true,
                ..tok.clone()
            });
            let dev_key = device_key(&device);
            let (dev_raw, dev) = self.read_device(&device)?;
            let mut guards = vec![
                (token_key(&hash), Some(raw.clone())),
                (dev_key.clone(), dev_raw.clone()),
            ];
            let mut puts = vec![(token_key(&hash), Some(encode(&used)?))];
            if dev.active.is_some() {
                // A re-keyed host must not silently take over: hold it for an operator.
                let pending_id = random_secret("mst_pending_");
                let phash = sha256_hex(&pending_id);
                if let Some(old) = &dev.pending {
                    puts.push((pending_key(old), None));
                }
                let pend = Record::Pending(PendingV1 {
                    device: device.clone(),
                    csr_pem: csr_pem.to_string(),
                    key_fingerprint: key_fp.clone(),
                    hostname: hostname.clone(),
                    since_nanos: now,
                    approved: false,
                });
                guards.push((pending_key(&phash), None));
                puts.push((pending_key(&phash), Some(encode(&pend)?)));
                puts.push((
                    dev_key,
                    Some(encode(&Record::Device(DeviceV1 {
                        pending: Some(phash),
                        ..dev
                    }))?),
                ));
                let mutation = self.annotate(
                    &device,
                    &principal,
                    "agent-enroll-held",
                    &ctx,
                    &[(
                        "enrollment-pending",
                        format!(
                            "new key {} from host {hostname:?} since {}; approve with `muster agent approve {device}`",
                            &key_fp[..16.min(key_fp.len())],
                            rfc3339(now)
                        ),
                    )],
                )?;
                self.commit(AuxWrite {
                    guards,
                    puts,
                    mutation: Some(mutation),
                })
                .await
                .map_err(|e| conflict_as_used(&device, e))?;
                return Ok(Enrolled::Pending {
                    pending_id,
                    message: format!(
                        "device {device} already has an enrolled agent; this enrollment waits for an operator: muster agent approve {device}"
                    ),
                });
            }
            let issued = self
                .ca
                .sign_agent(csr_pem, &device, self.settings.cert_validity)
                .map_err(|e| ApiError::invalid("csr_pem", e.to_string()))?;
            self.activate(
                (&device, &principal, &ctx),
                (&issued, &hostname),
                dev,
                (guards, puts),
                now,
                conflict_as_used,
            )
            .await?;
            Ok(Enrolled::Identity {
                device: device.clone(),
                cert_pem: issued.cert_pem,
                not_after_nanos: system_time_nanos(issued.not_after),
            })
        }
        .await;
        self.audited(&principal, "agent-enroll", &device, &ctx, result)
    }

    /// Writes a new active identity for `device` (revoking the previous one) with the given
    /// guards and extra puts, and updates the identity table. A store failure of the commit
    /// is mapped by `on_commit` (what a lost race means depends on the step); every other
    /// failure is the domain's own error.
    async fn activate(
        &self,
        (device, principal, ctx): (&str, &str, &ChangeContext),
        (issued, hostname): (&crate::pki::Issued, &str),
        dev: DeviceV1,
        (guards, mut puts): (Writes, Writes),
        now: i64,
        on_commit: fn(&str, StoreError) -> ApiError,
    ) -> Result<(), ApiError> {
        let _serial = self.identity_locks.lock(device).await;
        let device_id = self
            .inventory
            .load_device(device)?
            .ok_or_else(|| ApiError::NotFound {
                kind: "device",
                name: device.to_string(),
            })?
            .0
            .id;
        // Every earlier identity of the device goes: the active one and any a renewal left
        // in its overlap.
        let mut revoked: Vec<String> = self
            .identities_map()
            .iter()
            .filter(|(_, i)| i.device == device)
            .map(|(k, _)| k.clone())
            .collect();
        if let Some(old) = &dev.active
            && !revoked.contains(old)
        {
            revoked.push(old.clone());
        }
        for old in &revoked {
            puts.push((identity_key(old), None));
        }
        let ident = Ident {
            device: device.to_string(),
            device_id: device_id.clone(),
            not_before_nanos: system_time_nanos(issued.not_before),
            not_after_nanos: system_time_nanos(issued.not_after),
            retire_nanos: None,
        };
        puts.push((
            identity_key(&issued.fingerprint),
            Some(encode(&identity_record(&ident, hostname, now))?),
        ));
        puts.push((
            device_key(device),
            Some(encode(&Record::Device(DeviceV1 {
                active: Some(issued.fingerprint.clone()),
                active_since_nanos: now,
                hostname: hostname.to_string(),
                pending: None,
            }))?),
        ));
        let mutation = self.annotate(
            device,
            principal,
            "agent-enroll",
            ctx,
            &[
                (
                    "identity",
                    format!(
                        "certificate {} for host {hostname:?} since {}",
                        &issued.fingerprint[..16],
                        rfc3339(now)
                    ),
                ),
                ("enrollment-pending", String::new()),
                ("enrollment-token", String::new()),
                ("cert-not-after", rfc3339(ident.not_after_nanos)),
            ],
        )?;
        self.commit(AuxWrite {
            guards,
            puts,
            mutation: Some(mutation),
        })
        .await
        .map_err(|e| on_commit(device, e))?;
        let mut ids = self.identities.write().unwrap_or_else(|p| p.into_inner());
        for old in &revoked {
            ids.remove(old);
        }
        ids.insert(issued.fingerprint.clone(), ident);
        Ok(())
    }

    async fn collect_pending(&self, pending_id: &str, csr_pem: &str) -> Result<Enrolled, ApiError> {
        let phash = sha256_hex(pending_id);
        let pkey = pending_key(&phash);
        let Some((raw, Record::Pending(p))) = self.read(&pkey)? else {
            return Err(ApiError::Unauthenticated(
                "unknown or superseded pending enrollment; enroll again with a new token".into(),
            ));
        };
        if p.csr_pem != csr_pem {
            return Err(ApiError::PermissionDenied(
                "the CSR differs from the one this enrollment was held with".into(),
            ));
        }
        if !p.approved {
            return Ok(Enrolled::Pending {
                pending_id: pending_id.to_string(),
                message: format!("waiting for an operator: muster agent approve {}", p.device),
            });
        }
        let dev_key = device_key(&p.device);
        let (dev_raw, dev) = self.read_device(&p.device)?;
        let issued = self
            .ca
            .sign_agent(csr_pem, &p.device, self.settings.cert_validity)
            .map_err(|e| ApiError::invalid("csr_pem", e.to_string()))?;
        let principal = agent_principal(&p.device);
        self.activate(
            (&p.device, &principal, &agent_ctx()),
            (&issued, &p.hostname),
            dev,
            (
                vec![(pkey.clone(), Some(raw)), (dev_key, dev_raw)],
                vec![(pkey, None)],
            ),
            self.inventory.now_unix_nanos(),
            |device, e| crate::store_map::api_error("device", device, e),
        )
        .await?;
        Ok(Enrolled::Identity {
            device: p.device,
            cert_pem: issued.cert_pem,
            not_after_nanos: system_time_nanos(issued.not_after),
        })
    }

    /// Operator: lets the enrollment held for `device` take over its identity.
    pub async fn approve(
        &self,
        who: &Principal,
        device: &str,
        ctx: &ChangeContext,
    ) -> Result<String, ApiError> {
        let result = async {
            muster::names::validate_name("device", device)?;
            crate::scope::check_device(&self.inventory, who, device)?;
            let dev_key = device_key(device);
            let Some((dev_raw, Record::Device(dev))) = self.read(&dev_key)? else {
                return Err(ApiError::FailedPrecondition(format!(
                    "device {device:?} has no enrollment waiting for approval"
                )));
            };
            let Some(phash) = dev.pending.clone() else {
                return Err(ApiError::FailedPrecondition(format!(
                    "device {device:?} has no enrollment waiting for approval"
                )));
            };
            let pkey = pending_key(&phash);
            let Some((praw, Record::Pending(p))) = self.read(&pkey)? else {
                return Err(ApiError::FailedPrecondition(format!(
                    "device {device:?} has no enrollment waiting for approval"
                )));
            };
            if p.approved {
                return Ok(p.key_fingerprint);
            }
            let fp = p.key_fingerprint.clone();
            let approved = Record::Pending(PendingV1 {
                approved: true,
                ..p
            });
            let mutation = self.annotate(
                device,
                &who.name,
                "agent-approve",
                ctx,
                &[(
                    "enrollment-pending",
                    format!(
                        "key {} approved by {}; the agent collects its identity at its next try",
                        &fp[..16.min(fp.len())],
                        who.name
                    ),
                )],
            )?;
            self.commit(AuxWrite {
                guards: vec![(dev_key, Some(dev_raw)), (pkey.clone(), Some(praw))],
                puts: vec![(pkey, Some(encode(&approved)?))],
                mutation: Some(mutation),
            })
            .await
            .map_err(|e| crate::store_map::api_error("device", device, e))?;
            Ok(fp)
        }
        .await;
        self.audited(&who.name, "agent-approve", device, ctx, result)
    }

    /// Operator: active identities and held enrollments.
    pub fn enrollments(&self) -> Result<Vec<pb::EnrollmentInfo>, ApiError> {
        let mut out = Vec::new();
        for (k, v) in self
            .store
            .aux_scan(records::IDENTITY_PREFIX)
            .map_err(store_err)?
        {
            if let Some((i, hostname, since)) = Ident::from_record(decode(&v)?) {
                out.push(pb::EnrollmentInfo {
                    device: i.device,
                    // "retiring": replaced by a renewal, working until its overlap ends.
                    state: if i.retire_nanos.is_some() {
                        "retiring"
                    } else {
                        "active"
                    }
                    .into(),
                    fingerprint: records::fingerprint_of(&k),
                    hostname,
                    since: Some(timestamp(since)),
                });
            }
        }
        for (_, v) in self.store.aux_scan(PENDING_PREFIX).map_err(store_err)? {
            if let Record::Pending(p) = decode(&v)? {
                out.push(pb::EnrollmentInfo {
                    device: p.device,
                    state: if p.approved { "approved" } else { "pending" }.into(),
                    fingerprint: p.key_fingerprint,
                    hostname: p.hostname,
                    since: Some(timestamp(p.since_nanos)),
                });
            }
        }
        out.sort_by(|a, b| (&a.device, &a.state).cmp(&(&b.device, &b.state)));
        Ok(out)
    }
}

/// A lost race on the token or device record during enrollment: the token was used by a
/// concurrent request (a domain refusal, not a store failure).
fn conflict_as_used(device: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::AuxConflict => ApiError::PermissionDenied(
            "this enrollment token was used concurrently by another request".into(),
        ),
        other => crate::store_map::api_error("device", device, other),
    }
}
