//! Agentless facts: observed state for devices that run no agent, gathered by something else
//! (`ansible -m setup` through the bridge). Written through the path an agent report takes
//! (`observed::facts_write`: one auxiliary record per `Facts` section and a `ReportMeta`), and
//! health is evaluated the same way (agentless SMART or sensor facts change it; a change is
//! written into the device with the ingest and named in its audit reason), so reads, health
//! and drift treat both alike; the metadata carries the origin instead of an agent identity. Each ingest also writes two server annotations on the device
//! (`agent.muster.io/facts-origin`, `agent.muster.io/facts-at`), which is what puts it in the
//! audit trail with its principal and origin.

use std::collections::HashSet;
use std::time::Duration;

use muster::pb::{self, ResourceKind, resource::Resource as R};

use crate::inventory::{ChangeContext, Inventory, printable_text};
use crate::model::resource::SERVER_ANNOTATION_PREFIX;
use crate::model::{ApiError, Principal, timestamp, timestamp_nanos};
use crate::observed::{self, ReportMeta};
use crate::store::{self, AuxWrite};

/// Most hosts one call may carry (an Ansible run over a large batch fits; more is split).
pub const MAX_HOSTS: usize = 5000;
/// Default refresh interval of agentless facts.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// How many times one host's write retries a lost race with another writer.
const RETRIES: usize = 8;

/// One ingest call, validated by `Ingest::new`.
#[derive(Debug, Clone)]
pub struct Ingest {
    hosts: Vec<pb::HostFacts>,
    origin: String,
    interval: Duration,
    ctx: ChangeContext,
}

fn valid_origin(o: &str) -> bool {
    !o.is_empty()
        && o.len() <= 32
        && o != "agent"
        && o.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

impl Ingest {
    /// Checks everything that needs no store: names, duplicates, the external JSON, the
    /// origin. The external JSON is re-encoded canonically (an object, keys sorted), so its
    /// hash depends on content only.
    pub fn new(
        mut hosts: Vec<pb::HostFacts>,
        origin: String,
        interval: Option<Duration>,
        ctx: ChangeContext,
    ) -> Result<Self, ApiError> {
        if hosts.is_empty() {
            return Err(ApiError::invalid("hosts", "is empty: nothing to ingest"));
        }
        if hosts.len() > MAX_HOSTS {
            return Err(ApiError::invalid(
                "hosts",
                format!("has {} entries; at most {MAX_HOSTS} per call", hosts.len()),
            ));
        }
        let origin = if origin.is_empty() {
            "ansible".to_string()
        } else {
            origin
        };
        if !valid_origin(&origin) {
            return Err(ApiError::invalid(
                "origin",
                format!(
                    "{:?} is not a valid origin: lowercase letters, digits and '-', at most 32, not \"agent\"",
                    printable_text(&origin, 40)
                ),
            ));
        }
        let interval = interval.unwrap_or(DEFAULT_INTERVAL);
        if interval < Duration::from_secs(60) || interval > Duration::from_secs(90 * 24 * 3600) {
            return Err(ApiError::invalid(
                "expected_interval",
                "must be between 1 minute and 90 days",
            ));
        }
        let mut seen = HashSet::new();
        for (i, h) in hosts.iter_mut().enumerate() {
            muster::names::validate_name(&format!("hosts[{i}].device"), &h.device)?;
            if !seen.insert(h.device.clone()) {
                return Err(ApiError::invalid(
                    format!("hosts[{i}].device"),
                    format!("{:?} appears twice", h.device),
                ));
            }
            let facts = h
                .facts
                .as_mut()
                .ok_or_else(|| ApiError::invalid(format!("hosts[{i}].facts"), "is required"))?;
            if let Some(j) = facts.external_json.as_mut() {
                let v: serde_json::Value = serde_json::from_str(j).map_err(|e| {
                    ApiError::invalid(
                        format!("hosts[{i}].facts.external_json"),
                        format!("is not JSON: {e}"),
                    )
                })?;
                if !v.is_object() {
                    return Err(ApiError::invalid(
                        format!("hosts[{i}].facts.external_json"),
                        "must be a JSON object",
                    ));
                }
                // serde_json's map is ordered by key: this is the canonical form.
                *j = v.to_string();
            }
        }
        Ok(Self {
            hosts,
            origin,
            interval,
            ctx,
        })
    }
}

/// Records the facts of every host, after checking that every device exists and none reports
/// through an agent: one bad host writes nothing.
pub async fn ingest(
    inv: &Inventory,
    who: &Principal,
    req: Ingest,
) -> Result<Vec<pb::IngestedHost>, ApiError> {
    let refused = |name: &str, e: ApiError| {
        inv.refused(
            &who.name,
            "ingest-facts",
            (ResourceKind::Device, name),
            &req.ctx,
            e,
        )
    };
    if let Err(e) = check_devices(inv, who, &req) {
        let name = req.hosts.first().map(|h| h.device.as_str()).unwrap_or("");
        return Err(refused(name, e));
    }
    let mut out = Vec::with_capacity(req.hosts.len());
    for h in &req.hosts {
        let mut attempt = 0;
        loop {
            match ingest_one(inv, who, &req, h).await {
                Err(ApiError::Aborted(_) | ApiError::Conflict { .. }) if attempt < RETRIES => {
                    attempt += 1;
                }
                r => {
                    out.push(r.map_err(|e| refused(&h.device, e))?);
                    break;
                }
            }
        }
    }
    Ok(out)
}

fn check_devices(inv: &Inventory, who: &Principal, req: &Ingest) -> Result<(), ApiError> {
    for h in &req.hosts {
        let (obj, device) = inv
            .load_device(&h.device)?
            .ok_or_else(|| ApiError::NotFound {
                kind: "device",
                name: h.device.clone(),
            })?;
        crate::scope::check(who, &device)?;
        if let (_, Some(m)) = observed::load_meta(&**inv.store(), &obj.id)?
            && m.origin.is_empty()
        {
            return Err(ApiError::FailedPrecondition(format!(
                "device {:?} reports through its agent; agentless facts would overwrite the agent's",
                h.device
            )));
        }
    }
    Ok(())
}

async fn ingest_one(
    inv: &Inventory,
    who: &Principal,
    req: &Ingest,
    h: &pb::HostFacts,
) -> Result<pb::IngestedHost, ApiError> {
    let store = inv.store();
    let (obj, body) = inv
        .load_device(&h.device)?
        .ok_or_else(|| ApiError::NotFound {
            kind: "device",
            name: h.device.clone(),
        })?;
    let id = obj.id.clone();
    let (meta_raw, meta) = observed::load_meta(&**store, &id)?;
    if meta.as_ref().is_some_and(|m| m.origin.is_empty()) {
        return Err(ApiError::FailedPrecondition(format!(
            "device {:?} reports through its agent; agentless facts would overwrite the agent's",
            h.device
        )));
    }
    let now = inv.now_unix_nanos();
    let collected = h
        .collected_at
        .as_ref()
        .map_or(now, timestamp_nanos)
        .min(now);
    // A full report through the path agent reports take: every section the facts leave out
    // is cleared, and health is evaluated as a report's is (agentless SMART or sensor facts
    // count; there are no collectors, and the SEL is whatever is kept).
    let no_facts = pb::Facts::default();
    let facts = h.facts.as_ref().unwrap_or(&no_facts);
    let write = observed::facts_write(&**store, &id, facts, true)?;
    let hashes = write.hashes();
    let facts_hash = muster::facts::facts_hash(hashes.iter().map(|(s, h)| (*s, h.as_str())));
    let sel = match store
        .aux_get(&observed::sel_key(&id))
        .map_err(|e| crate::store_map::api_error("device", &h.device, e))?
    {
        Some(b) => observed::decode_sel(&b)?,
        None => Vec::new(),
    };
    let prior = meta.unwrap_or_default();
    let mut memory = prior.memory.clone();
    let assessment = write.assess(&sel, &[], &mut memory, now);
    let mut puts = write.into_puts();
    let status = match &body.resource {
        Some(R::Device(d)) => d.status.clone().unwrap_or_default(),
        _ => pb::ObservedState::default(),
    };
    let health_changed = !assessment.same_as(status.health, &status.health_reasons);
    let health_since = if health_changed || prior.health_since_nanos <= 0 {
        now
    } else {
        prior.health_since_nanos
    };
    let mut new_meta = ReportMeta {
        device: h.device.clone(),
        identity: String::new(),
        boot_id: String::new(),
        seq: prior.seq.saturating_add(1),
        facts_hash: facts_hash.clone(),
        last_report_nanos: collected,
        agent_version: String::new(),
        collectors: Vec::new(),
        memory,
        interval_ms: u64::try_from(req.interval.as_millis()).unwrap_or(u64::MAX),
        health_since_nanos: health_since,
        origin: req.origin.clone(),
        ..ReportMeta::default()
    };
    new_meta.set_health(&assessment);
    puts.push((observed::meta_key(&id), Some(new_meta.encode()?)));
    let mut annotated = body.clone();
    if let Some(m) = annotated.meta_mut() {
        m.annotations.insert(
            format!("{SERVER_ANNOTATION_PREFIX}facts-origin"),
            req.origin.clone(),
        );
        m.annotations.insert(
            format!("{SERVER_ANNOTATION_PREFIX}facts-at"),
            rfc3339(collected),
        );
    }
    let mut reason = req.ctx.reason.clone();
    if health_changed {
        let old = observed::apply_health(&mut annotated, &assessment, now);
        let why = observed::health_change_reason(&old, &assessment);
        reason = if reason.is_empty() {
            why
        } else {
            format!("{reason}; {why}")
        };
    }
    let ctx = ChangeContext {
        origin: req.origin.clone(),
        reason,
        ..req.ctx.clone()
    };
    let mutation = inv.server_mutation(&obj, annotated, &who.name, "ingest-facts", &ctx, now);
    store::commit_aux_durably(
        &**store,
        AuxWrite {
            guards: vec![(observed::meta_key(&id), meta_raw)],
            puts,
            mutation: Some(mutation),
        },
    )
    .await
    .map_err(|e| crate::store_map::api_error("device", &h.device, e))?;
    let sections: Vec<u32> = hashes.iter().map(|(s, _)| u32::from(s.number())).collect();
    // A full report: drift looks at every section again.
    inv.drift().observed(&id, crate::drift::Notifier::ALL);
    tracing::debug!(device = %h.device, device_id = %id, ?sections, origin = %req.origin, "agentless facts stored");
    Ok(pb::IngestedHost {
        device: h.device.clone(),
        facts_hash,
        sections,
    })
}

/// RFC 3339 (UTC, seconds) of Unix nanoseconds, as annotations carry times.
fn rfc3339(nanos: i64) -> String {
    let ts = pbjson_types::Timestamp {
        seconds: timestamp(nanos).seconds,
        nanos: 0,
    };
    // The proto3 JSON form of a Timestamp is an RFC 3339 string.
    serde_json::to_value(ts)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
