//! Agents: the agent-facing domain service. Its job: enrollment (one-time tokens → client
//! certificates, re-enrollments held for an operator), report ingest (sequence checks, delta
//! facts, SEL, health), liveness (heartbeats and the silent-agent sweep), certificate renewal,
//! and linking the VMs a hypervisor reports. `grpc/agent.rs` hands in the caller's
//! certificate fingerprint or token principal; nothing here knows gRPC.
//!
//! Files: `records.rs` (stored records and keys), `enroll.rs`, `report.rs`, `liveness.rs`,
//! `renew.rs`, `vms.rs`; this file holds the service, its settings and what they share (the
//! identity table, annotations, audited refusals, health writes).
//!
//! What it may call: `inventory` (device loads, server mutations, refusals, the clock),
//! `observed` (facts records: the one facts-write path), `health` and `vm_discovery` (pure
//! rules), `pki` (signing), `scope`, and `store` only for auxiliary records and commits. It
//! returns `ApiError`s only: store failures are mapped where they happen (`store_map`), and a
//! domain failure is never passed off as a store error.
//!
//! Every step is one guarded auxiliary write, so a token can be used once even when two agents
//! race with it. The device's `agent.muster.io/*` annotations mirror the state for operators,
//! and writing them is what puts each step in the audit trail.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use muster::pb::{self, ResourceKind, resource::Resource as R};

use crate::health;
use crate::inventory::{ChangeContext, Inventory};
use crate::model::ApiError;
use crate::model::resource::SERVER_ANNOTATION_PREFIX;
use crate::observed;
use crate::pki::AgentCa;
use crate::store::{self, AuxWrite, Mutation, Store, StoreError};

mod cleanup;
mod enroll;
mod liveness;
mod records;
mod renew;
mod report;
mod vms;

pub(crate) use cleanup::enrollment_records;
pub use enroll::NewEnrollmentToken;
use liveness::Liveness;
use records::{DeviceV1, Record, decode, device_key, encode, identity_key};
use renew::{Ident, identity_record};
pub use renew::{RENEW_OVERLAP, Renewed, certificate_reason};

/// Tuning of agent handling.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// The report interval handed to agents.
    pub report_interval: Duration,
    /// Fraction of the interval added or removed at random, so a fleet never reports in step.
    pub jitter: f64,
    /// Validity of issued client certificates.
    pub cert_validity: Duration,
    /// Agents are told to renew when less than this fraction of their certificate's lifetime
    /// remains (at most 0.5: renewal is refused in the first half).
    pub renew_fraction: f64,
    /// A certificate with less than this left is a WARNING health reason.
    pub cert_warn: Duration,
    /// Longest enrollment token lifetime an operator may ask for.
    pub max_token_ttl: Duration,
    /// Reports missed before a device's health becomes UNKNOWN.
    pub silent_intervals: u32,
    /// The largest report accepted (the server's max_message_bytes), told to agents so they
    /// leave out what does not fit instead of being refused.
    pub max_report_bytes: usize,
    /// Most VM devices discovery creates under one hypervisor.
    pub max_discovered_vms: usize,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            report_interval: Duration::from_secs(60),
            jitter: 0.1,
            cert_validity: Duration::from_secs(365 * 24 * 3600),
            renew_fraction: 1.0 / 3.0,
            cert_warn: Duration::from_secs(14 * 24 * 3600),
            max_token_ttl: Duration::from_secs(7 * 24 * 3600),
            silent_intervals: 3,
            max_report_bytes: crate::config::DEFAULT_MAX_MESSAGE_BYTES,
            max_discovered_vms: crate::config::DEFAULT_MAX_DISCOVERED_VMS,
        }
    }
}

/// Default lifetime of an enrollment token.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// How often a held enrollment should ask again.
pub const PENDING_RETRY: Duration = Duration::from_secs(10);
/// Label put on VM devices the server created from a hypervisor's report.
pub const DISCOVERED_LABEL: &str = "muster.io/discovered";
/// Label put on VM devices their hypervisor no longer reports.
pub const VANISHED_LABEL: &str = "muster.io/vanished";

/// A store failure on the enrollment records (not a resource: nothing to name but them).
fn store_err(e: StoreError) -> ApiError {
    crate::store_map::aux_error("agent enrollment records", e)
}

fn duration_pb(d: Duration) -> pbjson_types::Duration {
    pbjson_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn system_time_nanos(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The ChangeContext of a step an agent takes itself.
fn agent_ctx() -> ChangeContext {
    ChangeContext {
        origin: "agent".into(),
        ..Default::default()
    }
}

/// The agent-facing domain service.
pub struct Agents {
    inventory: Arc<Inventory>,
    store: Arc<dyn Store>,
    ca: Arc<AgentCa>,
    settings: AgentSettings,
    /// Certificate fingerprint → identity, mirrored from the `ag/id/` records.
    identities: RwLock<HashMap<String, Ident>>,
    /// Device id → liveness, for devices that have reported.
    live: Mutex<HashMap<String, Liveness>>,
    /// Serializes identity changes per device (see `renew::IdentityLocks`).
    identity_locks: renew::IdentityLocks,
}

impl std::fmt::Debug for Agents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agents")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Outcome of an enrollment call.
#[derive(Debug, Clone)]
pub enum Enrolled {
    Identity {
        device: String,
        cert_pem: String,
        not_after_nanos: i64,
    },
    Pending {
        pending_id: String,
        message: String,
    },
}

impl Agents {
    /// Loads the identity table and the liveness of every device that has reported.
    pub fn open(
        inventory: Arc<Inventory>,
        ca: Arc<AgentCa>,
        settings: AgentSettings,
    ) -> Result<Self, ApiError> {
        let store = Arc::clone(inventory.store());
        let mut identities = HashMap::new();
        for (k, v) in store
            .aux_scan(records::IDENTITY_PREFIX)
            .map_err(store_err)?
        {
            if let Some((i, _, _)) = Ident::from_record(decode(&v)?) {
                identities.insert(records::fingerprint_of(&k), i);
            }
        }
        let agents = Self {
            inventory,
            store,
            ca,
            settings,
            identities: RwLock::new(identities),
            live: Mutex::new(HashMap::new()),
            identity_locks: renew::IdentityLocks::default(),
        };
        agents.load_liveness()?;
        Ok(agents)
    }

    fn live_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Liveness>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn identities_map(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Ident>> {
        self.identities.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The CA certificate agents and clients trust.
    pub fn ca_pem(&self) -> &str {
        self.ca.ca_pem()
    }

    /// The device a client certificate speaks for.
    pub fn device_for(&self, fingerprint: Option<&str>) -> Result<String, ApiError> {
        self.identity(fingerprint).map(|i| i.device)
    }

    /// The identity a client certificate is, while it may be used: the TLS handshake checks
    /// expiry, but a connection can outlive its certificate, and a renewed one retires.
    fn identity(&self, fingerprint: Option<&str>) -> Result<Ident, ApiError> {
        let fp = fingerprint.ok_or_else(|| {
            ApiError::Unauthenticated(
                "no client certificate: enroll first (muster-agent enroll --token ...)".into(),
            )
        })?;
        let ident = self.identities_map().get(fp).cloned().ok_or_else(|| {
            ApiError::Unauthenticated(
                "this client certificate is not enrolled (or was replaced by a newer enrollment)"
                    .into(),
            )
        })?;
        match ident.refusal(self.inventory.now_unix_nanos()) {
            Some(e) => Err(e),
            None => Ok(ident),
        }
    }

    /// Refuses a certificate issued for an earlier device of the same name (deleted since).
    fn check_same_device(&self, fingerprint: &str, device_id: &str) -> Result<(), ApiError> {
        match self.identities_map().get(fingerprint) {
            Some(i) if i.device_id == device_id => Ok(()),
            _ => Err(ApiError::Unauthenticated(
                "this client certificate was issued for a device that has since been deleted; enroll again".into(),
            )),
        }
    }

    fn read(&self, key: &[u8]) -> Result<Option<(Vec<u8>, Record)>, ApiError> {
        match self.store.aux_get(key).map_err(store_err)? {
            Some(raw) => {
                let r = decode(&raw)?;
                Ok(Some((raw, r)))
            }
            None => Ok(None),
        }
    }

    /// The device's enrollment record and its stored bytes (for the guard).
    fn read_device(&self, device: &str) -> Result<(Option<Vec<u8>>, DeviceV1), ApiError> {
        let raw = self.store.aux_get(&device_key(device)).map_err(store_err)?;
        let dev = match raw.as_deref().map(decode).transpose()? {
            Some(Record::Device(d)) => d,
            _ => DeviceV1::default(),
        };
        Ok((raw, dev))
    }

    /// A mutation setting the device's `agent.muster.io/*` annotations, for the audit trail.
    fn annotate(
        &self,
        device: &str,
        principal: &str,
        verb: &str,
        ctx: &ChangeContext,
        set: &[(&str, String)],
    ) -> Result<Mutation, ApiError> {
        let (obj, mut r) =
            self.inventory
                .load_device(device)?
                .ok_or_else(|| ApiError::NotFound {
                    kind: "device",
                    name: device.to_string(),
                })?;
        if let Some(m) = r.meta_mut() {
            for (k, v) in set {
                let key = format!("{SERVER_ANNOTATION_PREFIX}{k}");
                if v.is_empty() {
                    m.annotations.remove(&key);
                } else {
                    m.annotations.insert(key, v.clone());
                }
            }
        }
        Ok(self.inventory.server_mutation(
            &obj,
            r,
            principal,
            verb,
            ctx,
            self.inventory.now_unix_nanos(),
        ))
    }

    async fn commit(&self, w: AuxWrite) -> Result<store::AuxApplied, StoreError> {
        store::commit_aux_durably(&*self.store, w).await
    }

    /// Records a refused step in the audit trail (server failures are not refusals), using
    /// the inventory's one classification of refusals.
    fn audited<T>(
        &self,
        who: &str,
        verb: &str,
        device: &str,
        ctx: &ChangeContext,
        r: Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        if let Err(e) = &r {
            if matches!(
                e,
                ApiError::Unavailable(_) | ApiError::Internal(_) | ApiError::ShuttingDown
            ) {
                return r;
            }
            self.inventory.record_refusal(
                who,
                verb,
                (ResourceKind::Device, device),
                ctx,
                crate::inventory::refusal_kind(e),
                &e.to_string(),
            );
        }
        r
    }

    fn max_report_bytes(&self) -> u64 {
        u64::try_from(self.settings.max_report_bytes).unwrap_or(u64::MAX)
    }

    fn next_interval(&self) -> Duration {
        let base = self.settings.report_interval.as_secs_f64();
        let j = self.settings.jitter.clamp(0.0, 0.5);
        let factor = 1.0 + j * (rand::random::<f64>() * 2.0 - 1.0);
        Duration::from_secs_f64((base * factor).max(0.001))
    }

    /// The write that records a device's new health (its reasons go in the audit reason).
    fn health_mutation(
        &self,
        obj: &crate::store::StoredObject,
        body: &pb::Resource,
        a: &health::Assessment,
        (principal, origin): (&str, &str),
        now: i64,
    ) -> Mutation {
        let mut r = body.clone();
        let old = observed::apply_health(&mut r, a, now);
        let ctx = ChangeContext {
            origin: origin.into(),
            reason: observed::health_change_reason(&old, a),
            ticket: String::new(),
        };
        self.inventory
            .server_mutation(obj, r, principal, "health", &ctx, now)
    }

    /// Commits the health an assessment gives a device: its body and its report metadata
    /// (which mirrors it), guarded on that metadata. For the sweep's verdicts (silent,
    /// certificate expired).
    async fn write_health(
        &self,
        (id, name): (&str, &str),
        (obj, body): (&crate::store::StoredObject, &pb::Resource),
        a: &health::Assessment,
        now: i64,
    ) -> Result<(), ApiError> {
        let (meta_raw, meta) = observed::load_meta(&*self.store, id)?;
        let m = self.health_mutation(obj, body, a, ("server", "server"), now);
        let mut puts = Vec::new();
        if let Some(mut meta) = meta {
            meta.set_health(a);
            meta.health_since_nanos = now;
            puts.push((observed::meta_key(id), Some(meta.encode()?)));
        }
        self.commit(AuxWrite {
            guards: vec![(observed::meta_key(id), meta_raw)],
            puts,
            mutation: Some(m),
        })
        .await
        .map_err(|e| crate::store_map::api_error("device", name, e))?;
        Ok(())
    }
}

/// Who is acting for `device`'s agent, in the audit trail.
fn agent_principal(device: &str) -> String {
    format!("agent:{device}")
}

fn body_status(body: &pb::Resource) -> pb::ObservedState {
    match body.resource.as_ref() {
        Some(R::Device(d)) => d.status.clone().unwrap_or_default(),
        _ => pb::ObservedState::default(),
    }
}

fn rfc3339(nanos: i64) -> String {
    let secs = u64::try_from(nanos.div_euclid(1_000_000_000)).unwrap_or(0);
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        .to_string()
}
