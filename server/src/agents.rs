//! Agents: enrollment (one-time tokens → client certificates), report ingest (sequence checks,
//! delta facts, SEL, health), liveness, and the VMs a hypervisor reports. Domain operations
//! only; `grpc/agent.rs` hands in the caller's certificate fingerprint or token principal.
//!
//! Enrollment records live in auxiliary store records: `ag/tok/<sha256 of token>` (device,
//! expiry, used), `ag/id/<certificate fingerprint>` (the device an identity speaks for),
//! `ag/dev/<device>` (its active identity and any enrollment held for approval) and
//! `ag/pend/<sha256 of pending id>`. Every step is one guarded auxiliary write, so a token can
//! be used once even when two agents race with it. The device's `agent.muster.io/*` annotations
//! mirror the state for operators, and writing them is what puts each step in the audit trail.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use muster::pb::{self, Health, ResourceKind, resource::Resource as R};
use prost::Message;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::health::{self, HealthInput, SelSeen};
use crate::inventory::{ChangeContext, Inventory};
use crate::model::resource::SERVER_ANNOTATION_PREFIX;
use crate::model::{ApiError, Principal, kind_id, timestamp};
use crate::observed::{self, ReportMeta};
use crate::pki::AgentCa;
use crate::store::{self, AuxWrite, Mutation, RefusalKind, Store, StoreError};
use crate::vm_discovery;

mod renew;
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
/// How many times a report retries a lost compare-and-swap race.
const REPORT_RETRIES: usize = 8;
/// Label put on VM devices the server created from a hypervisor's report.
pub const DISCOVERED_LABEL: &str = "muster.io/discovered";
/// Label put on VM devices their hypervisor no longer reports.
pub const VANISHED_LABEL: &str = "muster.io/vanished";

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Record {
    Token(TokenV1),
    Identity(IdentityV1),
    Device(DeviceV1),
    Pending(PendingV1),
    /// Appended (postcard numbers variants in order): older records decode unchanged.
    IdentityV2(renew::IdentityV2),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TokenV1 {
    device: String,
    expires_nanos: i64,
    used: bool,
    created_by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct IdentityV1 {
    device: String,
    /// The id of the device it was issued for: a device deleted and created again under the
    /// same name is another device, which this identity must not speak for.
    device_id: String,
    since_nanos: i64,
    hostname: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct DeviceV1 {
    /// Fingerprint of the active identity.
    active: Option<String>,
    active_since_nanos: i64,
    hostname: String,
    /// Hash of the pending id of a held enrollment.
    pending: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PendingV1 {
    device: String,
    csr_pem: String,
    key_fingerprint: String,
    hostname: String,
    since_nanos: i64,
    approved: bool,
}

fn encode(r: &Record) -> Result<Vec<u8>, ApiError> {
    postcard::to_stdvec(r).map_err(|e| ApiError::Internal(format!("encoding agent record: {e}")))
}

fn decode(b: &[u8]) -> Result<Record, ApiError> {
    postcard::from_bytes(b).map_err(|e| ApiError::Internal(format!("corrupt agent record: {e}")))
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn token_key(hash: &str) -> Vec<u8> {
    format!("ag/tok/{hash}").into_bytes()
}
fn identity_key(fp: &str) -> Vec<u8> {
    format!("ag/id/{fp}").into_bytes()
}
fn device_key(device: &str) -> Vec<u8> {
    format!("ag/dev/{device}").into_bytes()
}
fn pending_key(hash: &str) -> Vec<u8> {
    format!("ag/pend/{hash}").into_bytes()
}

fn random_secret(prefix: &str) -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(b))
}

fn store_err(e: StoreError) -> ApiError {
    crate::store_map::api_error("device", "", e)
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

/// What the server knows about a device's agent between reports (for silence detection).
#[derive(Debug, Clone)]
struct Liveness {
    name: String,
    last_seen_nanos: i64,
    interval: Duration,
    /// Expiry of the certificate it last reported with (0: unknown).
    cert_not_after_nanos: i64,
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

/// What `Agents::prepare_report` decided.
enum PreparedReport {
    /// Answer at once (e.g. "resend in full"); nothing to write.
    Answer(pb::ReportResponse),
    /// A resend of the report applied last: answer once everything applied is durable.
    Repeat(pb::ReportResponse),
    /// Write this, then answer.
    Write(Box<WriteReport>),
}

/// A report ready to be written.
struct WriteReport {
    /// The device's id.
    id: String,
    write: AuxWrite,
    /// The facts sections it changed (bit N: section N), for the drift engine.
    sections: u32,
    now: i64,
    response: pb::ReportResponse,
    /// The previous identity this report retires (the first report after a renewal).
    retired: Option<String>,
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
        for (k, v) in store.aux_scan(b"ag/id/").map_err(store_err)? {
            if let Some((i, _, _)) = Ident::from_record(decode(&v)?) {
                let fp = String::from_utf8_lossy(&k[6..]).into_owned();
                identities.insert(fp, i);
            }
        }
        let agents = Self {
            inventory,
            store,
            ca,
            settings,
            identities: RwLock::new(identities),
            live: Mutex::new(HashMap::new()),
        };
        agents.load_liveness()?;
        Ok(agents)
    }

    fn load_liveness(&self) -> Result<(), ApiError> {
        // Agents get a full silence period after a server start before they count as silent.
        let now = self.inventory.now_unix_nanos();
        let mut live = self.live_map();
        let prefix = observed::META_PREFIX.as_bytes();
        for (k, v) in self.store.aux_scan(prefix).map_err(store_err)? {
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

    fn audited<T>(
        &self,
        who: &str,
        verb: &str,
        device: &str,
        ctx: &ChangeContext,
        r: Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        if let Err(e) = &r {
            let kind = match e {
                ApiError::Unavailable(_) | ApiError::Internal(_) | ApiError::ShuttingDown => {
                    return r;
                }
                ApiError::Unauthenticated(_) | ApiError::PermissionDenied(_) => RefusalKind::Denied,
                _ => RefusalKind::Rejected,
            };
            self.inventory.record_refusal(
                who,
                verb,
                (ResourceKind::Device, device),
                ctx,
                kind,
                &e.to_string(),
            );
        }
        r
    }

    /// Agent: exchanges a token (or a held enrollment's id) and a CSR for an identity.
    pub async fn enroll(
        &self,
        token: &str,
        pending_id: &str,
        csr_pem: &str,
        hostname: &str,
    ) -> Result<Enrolled, ApiError> {
        let ctx = ChangeContext {
            origin: "agent".into(),
            ..Default::default()
        };
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
        let principal = format!("agent:{device}");
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
            let dev_raw = self.store.aux_get(&dev_key).map_err(store_err)?;
            let dev = match dev_raw.as_deref().map(decode).transpose()? {
                Some(Record::Device(d)) => d,
                _ => DeviceV1::default(),
            };
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
            self.activate(&device, &principal, &issued, &hostname, dev, guards, puts, &ctx, now)
                .await
                .map_err(|e| conflict_as_used(&device, e))?;
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
    /// guards and extra puts, and updates the identity table.
    #[allow(clippy::too_many_arguments)]
    async fn activate(
        &self,
        device: &str,
        principal: &str,
        issued: &crate::pki::Issued,
        hostname: &str,
        dev: DeviceV1,
        guards: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        mut puts: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        ctx: &ChangeContext,
        now: i64,
    ) -> Result<(), StoreError> {
        let device_id = match self.inventory.load_device(device) {
            Ok(Some((obj, _))) => obj.id,
            Ok(None) => return Err(StoreError::NotFound(device.to_string())),
            Err(e) => return Err(StoreError::Io(e.to_string())),
        };
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
            Some(
                encode(&identity_record(&ident, hostname, now))
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            ),
        ));
        puts.push((
            device_key(device),
            Some(
                encode(&Record::Device(DeviceV1 {
                    active: Some(issued.fingerprint.clone()),
                    active_since_nanos: now,
                    hostname: hostname.to_string(),
                    pending: None,
                }))
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            ),
        ));
        let mutation = self
            .annotate(
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
            )
            .map_err(|e| StoreError::Io(e.to_string()))?;
        self.commit(AuxWrite {
            guards,
            puts,
            mutation: Some(mutation),
        })
        .await?;
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
        let dev_raw = self.store.aux_get(&dev_key).map_err(store_err)?;
        let dev = match dev_raw.as_deref().map(decode).transpose()? {
            Some(Record::Device(d)) => d,
            _ => DeviceV1::default(),
        };
        let issued = self
            .ca
            .sign_agent(csr_pem, &p.device, self.settings.cert_validity)
            .map_err(|e| ApiError::invalid("csr_pem", e.to_string()))?;
        let principal = format!("agent:{}", p.device);
        let ctx = ChangeContext {
            origin: "agent".into(),
            ..Default::default()
        };
        self.activate(
            &p.device,
            &principal,
            &issued,
            &p.hostname,
            dev,
            vec![(pkey.clone(), Some(raw)), (dev_key, dev_raw)],
            vec![(pkey, None)],
            &ctx,
            self.inventory.now_unix_nanos(),
        )
        .await
        .map_err(|e| crate::store_map::api_error("device", &p.device, e))?;
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
        for (k, v) in self.store.aux_scan(b"ag/id/").map_err(store_err)? {
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
                    fingerprint: String::from_utf8_lossy(&k[6..]).into_owned(),
                    hostname,
                    since: Some(timestamp(since)),
                });
            }
        }
        for (_, v) in self.store.aux_scan(b"ag/pend/").map_err(store_err)? {
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

    fn max_report_bytes(&self) -> u64 {
        u64::try_from(self.settings.max_report_bytes).unwrap_or(u64::MAX)
    }

    fn next_interval(&self) -> Duration {
        let base = self.settings.report_interval.as_secs_f64();
        let j = self.settings.jitter.clamp(0.0, 0.5);
        let factor = 1.0 + j * (rand::random::<f64>() * 2.0 - 1.0);
        Duration::from_secs_f64((base * factor).max(0.001))
    }

    /// Agent: a report, from the device `fingerprint` speaks for.
    pub async fn report(
        &self,
        fingerprint: Option<&str>,
        req: pb::ReportRequest,
    ) -> Result<pb::ReportResponse, ApiError> {
        let (device, cert) = match self.identity(fingerprint) {
            Ok(i) => (i.device.clone(), i),
            Err(e) => {
                let name = req.device.clone();
                let ctx = ChangeContext {
                    origin: "agent".into(),
                    ..Default::default()
                };
                return self.audited("agent:unknown", "agent-report", &name, &ctx, Err(e));
            }
        };
        let principal = format!("agent:{device}");
        let ctx = ChangeContext {
            origin: "agent".into(),
            ..Default::default()
        };
        if !req.device.is_empty() && req.device != device {
            let e = ApiError::PermissionDenied(format!(
                "this agent is enrolled as device {device:?} and may not report for {:?}",
                crate::inventory::printable_text(&req.device, 253)
            ));
            return self.audited(&principal, "agent-report", &req.device, &ctx, Err(e));
        }
        let fp = fingerprint.unwrap_or_default().to_string();
        let mut attempt = 0;
        loop {
            match self
                .report_once(&device, &fp, &cert, &principal, &req)
                .await
            {
                Err(ApiError::Aborted(_) | ApiError::Conflict { .. })
                    if attempt < REPORT_RETRIES =>
                {
                    attempt += 1;
                }
                r => return self.audited(&principal, "agent-report", &device, &ctx, r),
            }
        }
    }

    /// One attempt at a report: checks and prepares it (synchronously, see `PreparedReport`),
    /// then writes it.
    async fn report_once(
        &self,
        device: &str,
        fp: &str,
        cert: &Ident,
        principal: &str,
        req: &pb::ReportRequest,
    ) -> Result<pb::ReportResponse, ApiError> {
        match self.prepare_report(device, fp, cert, principal, req)? {
            PreparedReport::Answer(response) => Ok(response),
            PreparedReport::Repeat(response) => {
                // The first attempt may still be waiting for its flush (or its flush failed):
                // acknowledge the repeat only once everything applied so far is durable.
                store::wait_durable_batch(&*self.store, self.store.batches())
                    .await
                    .map_err(store_err)?;
                Ok(response)
            }
            PreparedReport::Write(w) => {
                let WriteReport {
                    id,
                    write,
                    sections,
                    now,
                    response,
                    retired,
                } = *w;
                // Refused from now on, before the write is durable: a request with the old
                // certificate must not slip in while the deletion is being flushed.
                if let Some(old) = retired {
                    self.forget_identity(&old);
                }
                self.commit(write)
                    .await
                    .map_err(|e| crate::store_map::api_error("device", device, e))?;
                if sections != 0 {
                    self.inventory.drift().observed(&id, sections);
                }
                self.live_map().insert(
                    id,
                    Liveness {
                        name: device.to_string(),
                        last_seen_nanos: now,
                        interval: self.settings.report_interval,
                        cert_not_after_nanos: cert.not_after_nanos,
                    },
                );
                if let Some(vms) = req.facts.as_ref().and_then(|f| f.vms.as_ref())
                    && let Err(e) = Box::pin(self.reconcile_vms(device, &vms.items)).await
                {
                    tracing::warn!(device, error = %e, "could not link the VMs a hypervisor reported");
                }
                Ok(response)
            }
        }
    }

    /// Everything a report does before it waits. Synchronous, so the report's future holds
    /// none of its working data across an await: a 9 KB future was memcpy'd at every layer.
    fn prepare_report(
        &self,
        device: &str,
        fp: &str,
        cert: &Ident,
        principal: &str,
        req: &pb::ReportRequest,
    ) -> Result<PreparedReport, ApiError> {
        // The hot path reads no device body: the id comes from the in-memory index, and the
        // health the body holds is mirrored in the report metadata.
        let id = self
            .store
            .id_of(kind_id(ResourceKind::Device), device)
            .ok_or_else(|| ApiError::NotFound {
                kind: "device",
                name: device.to_string(),
            })?;
        self.check_same_device(fp, &id)?;
        let (meta_raw, meta) = observed::load_meta(&*self.store, &id)?;
        // A new identity (re-enrollment) starts a new sequence.
        let prior = meta.clone().filter(|m| m.identity == fp);
        let interval = self.next_interval();
        if let Some(m) = &prior {
            if req.seq == m.seq && req.boot_id == m.boot_id {
                return Ok(PreparedReport::Repeat(pb::ReportResponse {
                    acked_seq: m.seq,
                    acked_hash: m.facts_hash.clone(),
                    resend_full: false,
                    next_interval: Some(duration_pb(interval)),
                    health: m.health,
                    applied: false,
                    renew_certificate: false,
                    resync: false,
                    max_report_bytes: self.max_report_bytes(),
                }));
            }
            if req.seq <= m.seq {
                // Agent state restored from an old image (or a replay): apply nothing, but tell
                // the agent where the sequence stands so it continues after it (full), instead
                // of being refused forever. Audited as a refused report.
                let msg = format!(
                    "report sequence {} (boot {}) is not newer than the last applied {} (boot {}); nothing applied, the agent was told to continue after {}",
                    req.seq,
                    crate::inventory::printable_text(&req.boot_id, 64),
                    m.seq,
                    m.boot_id,
                    m.seq
                );
                let ctx = ChangeContext {
                    origin: "agent".into(),
                    ..Default::default()
                };
                self.inventory.record_refusal(
                    principal,
                    "agent-report-resync",
                    (ResourceKind::Device, device),
                    &ctx,
                    RefusalKind::Rejected,
                    &msg,
                );
                return Ok(PreparedReport::Answer(pb::ReportResponse {
                    acked_seq: m.seq,
                    acked_hash: m.facts_hash.clone(),
                    resend_full: true,
                    next_interval: Some(duration_pb(Duration::ZERO)),
                    health: m.health,
                    applied: false,
                    renew_certificate: false,
                    resync: true,
                    max_report_bytes: self.max_report_bytes(),
                }));
            }
        }
        let base_ok = req.base_hash.is_empty()
            || prior
                .as_ref()
                .is_some_and(|m| m.facts_hash == req.base_hash);
        if !base_ok {
            return Ok(PreparedReport::Answer(pb::ReportResponse {
                acked_seq: prior.as_ref().map_or(0, |m| m.seq),
                acked_hash: prior.map(|m| m.facts_hash).unwrap_or_default(),
                resend_full: true,
                next_interval: Some(duration_pb(Duration::ZERO)),
                health: meta.as_ref().map_or(0, |m| m.health),
                applied: false,
                renew_certificate: false,
                resync: false,
                max_report_bytes: self.max_report_bytes(),
            }));
        }
        let full = req.base_hash.is_empty();
        let now = self.inventory.now_unix_nanos();
        let no_facts = pb::Facts::default();
        let facts = req.facts.as_ref().unwrap_or(&no_facts);
        let parts = muster::facts::split(facts);
        let mut puts: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        if full {
            let present: Vec<u8> = parts.iter().map(|p| p.0).collect();
            for s in muster::facts::SECTIONS {
                if !present.contains(&s) {
                    puts.push((observed::section_key(&id, s), None));
                }
            }
        }
        let sections = if full {
            crate::drift::Notifier::ALL
        } else {
            parts.iter().fold(0u32, |m, (n, _)| m | (1u32 << n))
        };
        for (s, bytes) in parts {
            puts.push((observed::section_key(&id, s), Some(bytes)));
        }
        // What health needs: sensors and SMART as they are after this report.
        // What health needs, as it is after this report: a section the delta leaves out is
        // read from the store (only that section: never the packages).
        let stored_section = |n: u8| -> Result<pb::Facts, ApiError> {
            if full {
                return Ok(pb::Facts::default());
            }
            observed::load_section(&*self.store, &id, n)
        };
        let sensors = match &facts.sensors {
            Some(l) => l.items.clone(),
            None => stored_section(9)?
                .sensors
                .map(|l| l.items)
                .unwrap_or_default(),
        };
        let smart = match &facts.smart {
            Some(l) => l.items.clone(),
            None => stored_section(11)?
                .smart
                .map(|l| l.items)
                .unwrap_or_default(),
        };
        // SEL: append what is new (by record id), or start over after a clear.
        let mut sel = if req.sel_reset {
            Vec::new()
        } else {
            match self
                .store
                .aux_get(&observed::sel_key(&id))
                .map_err(store_err)?
            {
                Some(b) => observed::decode_sel(&b)?,
                None => Vec::new(),
            }
        };
        let sel_before = sel.len();
        if req.sel_reset {
            sel.clear();
        }
        let mut kept: std::collections::HashSet<u32> =
            sel.iter().map(|s| s.entry.record_id).collect();
        let mut sel_changed = req.sel_reset;
        // Only the newest entries can be kept anyway; never do more work than that.
        let skip = req.sel.len().saturating_sub(observed::MAX_SEL_ENTRIES);
        for e in &req.sel[skip..] {
            // A record the server already has (a resent spool file) is not added twice.
            if !kept.insert(e.record_id) {
                continue;
            }
            sel.push(SelSeen {
                received_nanos: now,
                entry: e.clone(),
            });
            sel_changed = true;
        }
        if sel.len() > observed::MAX_SEL_ENTRIES {
            let drop = sel.len() - observed::MAX_SEL_ENTRIES;
            sel.drain(..drop);
        }
        if sel_changed || sel.len() != sel_before {
            puts.push((observed::sel_key(&id), Some(observed::encode_sel(&sel)?)));
        }
        // The same agent across a certificate renewal keeps its health memory (SMART history,
        // predicted failures): only a re-enrollment, a new host as far as muster knows, starts
        // afresh. Sequence and delta chain start over with the new identity either way.
        let lineage = meta.as_ref().filter(|m| {
            m.identity == fp || self.retire_after_first_use(&m.identity, &id).is_some()
        });
        let mut memory = lineage.map(|m| m.memory.clone()).unwrap_or_default();
        let mut assessment = health::evaluate(
            HealthInput {
                sensors: &sensors,
                sel: &sel,
                smart: &smart,
                collectors: &req.collectors,
                now_nanos: now,
            },
            &mut memory,
        );
        if let Some(r) = certificate_reason(cert.not_after_nanos, now, self.settings.cert_warn) {
            assessment.reasons.push(r);
            assessment.health = health::worst(&assessment.reasons);
        }
        // The first report with a renewed certificate: the agent has saved it, so the one it
        // replaced stops working now rather than at the end of its overlap.
        let retired = meta.as_ref().filter(|m| m.identity != fp).and_then(|m| {
            self.retire_after_first_use(&m.identity, &id)
                .map(|w| (m.identity.clone(), w))
        });
        let retired = retired.map(|(old, w)| {
            puts.push(w);
            old
        });
        let previous = lineage.map(ReportMeta::reasons).unwrap_or_default();
        let vms = facts.vms.as_ref().map(|l| l.items.as_slice());
        if let Some(r) = vm_discovery::verdict(
            &self.inventory,
            device,
            vms,
            full,
            &previous,
            self.settings.max_discovered_vms,
        )? {
            assessment.reasons.push(r);
            assessment.health = health::worst(&assessment.reasons);
        }
        let changed = meta
            .as_ref()
            .is_none_or(|m| !assessment.same_as(m.health, &m.reasons()));
        let health_since = match (lineage, changed) {
            (Some(m), false) if m.health_since_nanos > 0 => m.health_since_nanos,
            _ => now,
        };
        let mutation = if changed {
            let (obj, body) = self
                .inventory
                .load_device(device)?
                .filter(|(o, _)| o.id == id)
                .ok_or_else(|| ApiError::NotFound {
                    kind: "device",
                    name: device.to_string(),
                })?;
            Some(self.health_mutation(&obj, &body, &assessment, (principal, "agent"), now))
        } else {
            None
        };
        let mut new_meta = ReportMeta {
            device: device.to_string(),
            identity: fp.to_string(),
            boot_id: req.boot_id.clone(),
            seq: req.seq,
            facts_hash: req.facts_hash.clone(),
            last_report_nanos: now,
            agent_version: req.agent_version.clone(),
            collectors: req.collectors.iter().map(Message::encode_to_vec).collect(),
            memory,
            interval_ms: u64::try_from(self.settings.report_interval.as_millis())
                .unwrap_or(u64::MAX),
            health_since_nanos: health_since,
            ..ReportMeta::default()
        };
        new_meta.set_health(&assessment);
        puts.push((observed::meta_key(&id), Some(new_meta.encode()?)));
        Ok(PreparedReport::Write(Box::new(WriteReport {
            write: AuxWrite {
                guards: vec![(observed::meta_key(&id), meta_raw)],
                puts,
                mutation,
            },
            id,
            sections,
            now,
            response: pb::ReportResponse {
                acked_seq: req.seq,
                acked_hash: req.facts_hash.clone(),
                resend_full: false,
                next_interval: Some(duration_pb(interval)),
                health: assessment.health as i32,
                applied: true,
                renew_certificate: cert.in_last(self.settings.renew_fraction, now),
                resync: false,
                max_report_bytes: self.max_report_bytes(),
            },
            retired,
        })))
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
        let old = body_status(body);
        let mut r = body.clone();
        if let Some(R::Device(d)) = r.resource.as_mut() {
            let st = d.status.get_or_insert_with(Default::default);
            st.health = a.health as i32;
            st.health_reasons = a.reasons.clone();
            st.health_since = Some(timestamp(now));
        }
        let ctx = ChangeContext {
            origin: origin.into(),
            reason: health_change_reason(&old, a),
            ticket: String::new(),
        };
        self.inventory
            .server_mutation(obj, r, principal, "health", &ctx, now)
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
            let ctx = ChangeContext {
                origin: "agent".into(),
                ..Default::default()
            };
            return self.audited(
                &format!("agent:{device}"),
                "agent-heartbeat",
                &req.device,
                &ctx,
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
            .filter(|(_, l)| l.cert_not_after_nanos > 0 && l.cert_not_after_nanos <= now)
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
            .filter(|(_, l)| l.cert_not_after_nanos == 0 || l.cert_not_after_nanos > now)
            .filter(|(_, l)| {
                let limit = l.interval.saturating_mul(self.settings.silent_intervals);
                now.saturating_sub(l.last_seen_nanos)
                    > i64::try_from(limit.as_nanos()).unwrap_or(i64::MAX)
            })
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

    async fn mark_silent(
        &self,
        id: &str,
        name: &str,
        last: i64,
        now: i64,
    ) -> Result<bool, ApiError> {
        let Some((obj, body)) = self
            .inventory
            .load_device(name)?
            .filter(|(o, _)| o.id == id)
        else {
            self.live_map().remove(id);
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
        let (meta_raw, meta) = observed::load_meta(&*self.store, id)?;
        let a = health::silent(last, now, self.settings.silent_intervals);
        let m = self.health_mutation(&obj, &body, &a, ("server", "server"), now);
        let mut puts = Vec::new();
        if let Some(mut meta) = meta {
            meta.set_health(&a);
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
        Ok(true)
    }

    /// Links a hypervisor's VMs: creates VM devices it reports that the inventory lacks
    /// (labelled discovered, for an operator to adopt), marks the ones it no longer reports
    /// as vanished, and clears that mark when they come back. VMs are matched by UUID, kept in
    /// the device's `serial`.
    async fn reconcile_vms(&self, host: &str, vms: &[pb::VirtualMachine]) -> Result<(), ApiError> {
        let principal = format!("agent:{host}");
        let ctx = ChangeContext {
            origin: "agent".into(),
            reason: format!("VM inventory reported by hypervisor {host}"),
            ticket: String::new(),
        };
        let children = self.inventory.devices_with_parent(host)?;
        let mut by_uuid: BTreeMap<String, (crate::store::StoredObject, pb::Resource)> = children
            .into_iter()
            .filter_map(|(o, r)| match r.resource.as_ref() {
                Some(R::Device(d)) if !d.serial.is_empty() => {
                    Some((d.serial.to_lowercase(), (o, r)))
                }
                _ => None,
            })
            .collect();
        let now = self.inventory.now_unix_nanos();
        // Room left under the cap; VMs past it are not created (prepare_report put the
        // health reason on the hypervisor).
        let mut room = self.settings.max_discovered_vms.saturating_sub(
            by_uuid
                .values()
                .filter(|(_, r)| vm_discovery::is_discovered(r))
                .count(),
        );
        for vm in vms {
            let uuid = vm.uuid.to_lowercase();
            if let Some((obj, r)) = by_uuid.remove(&uuid) {
                if r.meta()
                    .is_some_and(|m| m.labels.contains_key(VANISHED_LABEL))
                {
                    let mut r = r.clone();
                    if let Some(m) = r.meta_mut() {
                        m.labels.remove(VANISHED_LABEL);
                    }
                    let m = self.inventory.server_mutation(
                        &obj,
                        r,
                        &principal,
                        "vm-returned",
                        &ctx,
                        now,
                    );
                    self.commit_mutation(m, &vm.name).await?;
                }
                continue;
            }
            if room == 0 {
                continue;
            }
            let name = vm_device_name(&vm.name, &uuid);
            if self.inventory.load_device(&name)?.is_some() {
                tracing::info!(vm = %vm.name, host, "a device with this VM's name exists with another parent; not linking");
                continue;
            }
            let mut labels = std::collections::HashMap::new();
            labels.insert(DISCOVERED_LABEL.to_string(), "true".to_string());
            let r = pb::Resource {
                resource: Some(R::Device(pb::Device {
                    meta: Some(pb::ObjectMeta {
                        name: name.clone(),
                        labels,
                        ..Default::default()
                    }),
                    kind: pb::DeviceKind::Vm as i32,
                    serial: uuid.clone(),
                    parent: host.to_string(),
                    lifecycle: pb::Lifecycle::Active as i32,
                    ..Default::default()
                })),
            };
            let m = self
                .inventory
                .server_create(r, &principal, "vm-discovered", &ctx, now)?;
            match self.commit_mutation(m, &name).await {
                Ok(()) => room -= 1,
                Err(e) => {
                    tracing::warn!(vm = %name, error = %e, "could not create a discovered VM")
                }
            }
        }
        for (_, (obj, r)) in by_uuid {
            if r.meta()
                .is_some_and(|m| m.labels.contains_key(VANISHED_LABEL))
            {
                continue;
            }
            let mut r = r.clone();
            if let Some(m) = r.meta_mut() {
                m.labels
                    .insert(VANISHED_LABEL.to_string(), "true".to_string());
            }
            let name = r.name().to_string();
            let m = self
                .inventory
                .server_mutation(&obj, r, &principal, "vm-vanished", &ctx, now);
            self.commit_mutation(m, &name).await?;
        }
        Ok(())
    }

    async fn commit_mutation(&self, m: Mutation, name: &str) -> Result<(), ApiError> {
        let rev = self
            .store
            .commit(m)
            .revision()
            .await
            .map_err(|e| crate::store_map::api_error("device", name, e))?;
        store::wait_durable(&*self.store, rev)
            .await
            .map_err(|e| crate::store_map::api_error("device", name, e))
    }
}

/// A device name for a discovered VM: its libvirt name when that is a valid name, else one
/// derived from its UUID.
fn vm_device_name(name: &str, uuid: &str) -> String {
    let lower = name.to_lowercase();
    if muster::names::validate_name("name", &lower).is_ok() {
        lower
    } else {
        format!("vm-{uuid}")
    }
}

fn conflict_as_used(device: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::AuxConflict => ApiError::PermissionDenied(
            "this enrollment token was used concurrently by another request".into(),
        ),
        other => crate::store_map::api_error("device", device, other),
    }
}

fn body_status(body: &pb::Resource) -> pb::ObservedState {
    match body.resource.as_ref() {
        Some(R::Device(d)) => d.status.clone().unwrap_or_default(),
        _ => pb::ObservedState::default(),
    }
}

fn health_change_reason(old: &pb::ObservedState, new: &health::Assessment) -> String {
    let name = |h: i32| {
        Health::try_from(h)
            .map(|h| h.as_str_name())
            .unwrap_or("HEALTH_UNSPECIFIED")
    };
    let why = new
        .reasons
        .iter()
        .map(|r| r.code.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "health {} -> {}{}",
        name(old.health),
        name(new.health as i32),
        if why.is_empty() {
            String::new()
        } else {
            format!(" ({why})")
        }
    )
}

fn rfc3339(nanos: i64) -> String {
    let secs = u64::try_from(nanos.div_euclid(1_000_000_000)).unwrap_or(0);
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        .to_string()
}
