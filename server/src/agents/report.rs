//! Report ingest: an agent's report, from the device its certificate speaks for. The
//! sequence (a repeat is a no-op, an older one is answered `resync`), the delta's base hash,
//! then one guarded write of the changed facts sections (through `observed::facts_write`, the
//! path ingest shares), the SEL, the report metadata and, when health changed, the device.

use std::time::Duration;

use muster::pb::{self, ResourceKind};
use prost::Message;

use super::liveness::Liveness;
use super::{Agents, Ident, agent_ctx, agent_principal, certificate_reason, duration_pb};
use crate::health::{self, SelSeen};
use crate::model::{ApiError, kind_id};
use crate::observed::{self, ReportMeta};
use crate::store::{self, AuxWrite, RefusalKind};
use crate::vm_discovery;

/// How many times a report retries a lost compare-and-swap race.
const REPORT_RETRIES: usize = 8;

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
                return self.audited("agent:unknown", "agent-report", &name, &agent_ctx(), Err(e));
            }
        };
        let principal = agent_principal(&device);
        let ctx = agent_ctx();
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
                    .map_err(|e| crate::store_map::api_error("device", device, e))?;
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
                self.inventory.record_refusal(
                    principal,
                    "agent-report-resync",
                    (ResourceKind::Device, device),
                    &agent_ctx(),
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
        // The facts sections and what health needs of them, as they are after this report.
        let facts_write = observed::facts_write(&*self.store, &id, facts, full)?;
        let sections = facts_write.changed;
        // SEL: append what is new (by record id), or start over after a clear.
        let mut sel = if req.sel_reset {
            Vec::new()
        } else {
            match self
                .store
                .aux_get(&observed::sel_key(&id))
                .map_err(|e| crate::store_map::api_error("device", device, e))?
            {
                Some(b) => observed::decode_sel(&b)?,
                None => Vec::new(),
            }
        };
        let sel_changed = merge_sel(&mut sel, &req.sel, req.sel_reset, now);
        // The same agent across a certificate renewal keeps its health memory (SMART history,
        // predicted failures): only a re-enrollment, a new host as far as muster knows, starts
        // afresh. Sequence and delta chain start over with the new identity either way.
        let lineage = meta.as_ref().filter(|m| {
            m.identity == fp || self.retire_after_first_use(&m.identity, &id).is_some()
        });
        let mut memory = lineage.map(|m| m.memory.clone()).unwrap_or_default();
        let mut assessment = facts_write.assess(&sel, &req.collectors, &mut memory, now);
        let mut puts = facts_write.into_puts();
        if sel_changed {
            puts.push((observed::sel_key(&id), Some(observed::encode_sel(&sel)?)));
        }
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
}

/// Adds a report's SEL entries to the kept ones (`sel`, empty after a clear: `reset`), by
/// record id, keeping the newest `MAX_SEL_ENTRIES`. Returns whether the kept list must be
/// written.
fn merge_sel(sel: &mut Vec<SelSeen>, incoming: &[pb::SelEntry], reset: bool, now: i64) -> bool {
    let before = sel.len();
    if reset {
        sel.clear();
    }
    let mut kept: std::collections::HashSet<u32> = sel.iter().map(|s| s.entry.record_id).collect();
    let mut changed = reset;
    // Only the newest entries can be kept anyway; never do more work than that.
    let skip = incoming.len().saturating_sub(observed::MAX_SEL_ENTRIES);
    for e in &incoming[skip..] {
        // A record the server already has (a resent spool file) is not added twice.
        if !kept.insert(e.record_id) {
            continue;
        }
        sel.push(SelSeen {
            received_nanos: now,
            entry: e.clone(),
        });
        changed = true;
    }
    if sel.len() > observed::MAX_SEL_ENTRIES {
        let drop = sel.len() - observed::MAX_SEL_ENTRIES;
        sel.drain(..drop);
    }
    changed || sel.len() != before
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u32) -> pb::SelEntry {
        pb::SelEntry {
            record_id: id,
            ..Default::default()
        }
    }

    fn ids(sel: &[SelSeen]) -> Vec<u32> {
        sel.iter().map(|s| s.entry.record_id).collect()
    }

    #[test]
    fn sel_entries_are_added_once_by_record_id() {
        let mut sel = Vec::new();
        assert!(merge_sel(&mut sel, &[entry(1), entry(2)], false, 10));
        assert_eq!(ids(&sel), [1, 2]);
        // A resent spool file: nothing new, nothing to write.
        assert!(!merge_sel(&mut sel, &[entry(2), entry(1)], false, 20));
        assert_eq!(sel[0].received_nanos, 10, "the first arrival is kept");
        assert!(merge_sel(&mut sel, &[entry(2), entry(3)], false, 30));
        assert_eq!(ids(&sel), [1, 2, 3]);
        assert_eq!(sel[2].received_nanos, 30);
    }

    #[test]
    fn a_cleared_sel_starts_over_and_is_written_even_when_empty() {
        // The caller passes what it read; after a clear it reads nothing.
        let mut sel = Vec::new();
        assert!(merge_sel(&mut sel, &[], true, 5));
        assert!(sel.is_empty());
        let mut sel = vec![SelSeen {
            received_nanos: 1,
            entry: entry(9),
        }];
        assert!(merge_sel(&mut sel, &[entry(9)], true, 5));
        assert_eq!(ids(&sel), [9]);
        assert_eq!(sel[0].received_nanos, 5, "re-added after the clear");
    }

    #[test]
    fn only_the_newest_entries_are_kept() {
        let max = u32::try_from(observed::MAX_SEL_ENTRIES).unwrap_or(u32::MAX);
        let many: Vec<pb::SelEntry> = (0..max + 10).map(entry).collect();
        let mut sel = Vec::new();
        assert!(merge_sel(&mut sel, &many, false, 1));
        assert_eq!(sel.len(), observed::MAX_SEL_ENTRIES);
        assert_eq!(sel[0].entry.record_id, 10);
        assert!(merge_sel(&mut sel, &[entry(max + 10)], false, 2));
        assert_eq!(sel.len(), observed::MAX_SEL_ENTRIES);
        assert_eq!(sel[0].entry.record_id, 11, "the oldest went");
    }
}
