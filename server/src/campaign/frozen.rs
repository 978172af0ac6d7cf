//! The frozen plan ⇄ `pb::CampaignPlan` (what the engine stores, the API shows and the digest
//! covers). Lossless: `from_pb(to_pb(p)) == p`, so a restarted engine schedules from exactly
//! what was approved.

use muster::pb;
use pbjson_types::{Duration, Timestamp};

use super::error::CampaignError;
use super::plan::{Guest, Plan, PlannedHost, SkipCode, Skipped, Topology, Wave};

fn ts(s: i64) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: s,
        nanos: 0,
    })
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn topo_pb(t: &Topology) -> Option<pb::HostTopology> {
    Some(pb::HostTopology {
        rack: t.rack.clone().unwrap_or_default(),
        r#switch: t.switch.clone().unwrap_or_default(),
        role: t.role.clone().unwrap_or_default(),
    })
}

fn topo(t: Option<&pb::HostTopology>) -> Topology {
    t.map_or_else(Topology::default, |t| Topology {
        rack: opt(&t.rack),
        switch: opt(&t.r#switch),
        role: opt(&t.role),
    })
}

impl Plan {
    /// The stored and shown form.
    pub fn to_pb(&self) -> pb::CampaignPlan {
        pb::CampaignPlan {
            planned_at: ts(self.planned_at),
            hosts: self
                .hosts
                .iter()
                .map(|h| pb::PlannedHost {
                    device: h.name.clone(),
                    wave: h.wave as u32,
                    canary: h.canary,
                    topology: topo_pb(&h.topology),
                    hypervisor: h.hypervisor.clone(),
                    guests: h
                        .guests
                        .iter()
                        .map(|g| pb::PlannedGuest {
                            device: g.name.clone(),
                            topology: topo_pb(&g.topology),
                        })
                        .collect(),
                    estimate: Some(Duration {
                        seconds: h.estimate,
                        nanos: 0,
                    }),
                    first_fit: h.first_fit.and_then(ts),
                })
                .collect(),
            skipped: self
                .skipped
                .iter()
                .map(|s| pb::SkippedHost {
                    device: s.name.clone(),
                    code: s.code.as_str().into(),
                    reason: s.reason.clone(),
                })
                .collect(),
            waves: self
                .waves
                .iter()
                .map(|w| pb::PlanWave {
                    canary: w.canary,
                    size: w.hosts.len() as u32,
                })
                .collect(),
            failures_allowed: self.failures_allowed,
            fleet_hosts: self.fleet_hosts,
            warnings: self.warnings.clone(),
        }
    }

    /// Reads a stored plan back; refuses one whose waves and hosts disagree.
    pub fn from_pb(p: &pb::CampaignPlan) -> Result<Self, CampaignError> {
        let corrupt = |why: &str| CampaignError::invalid("status.plan", why.to_string());
        let mut waves = Vec::with_capacity(p.waves.len());
        let mut start = 0usize;
        for w in &p.waves {
            let end = start + w.size as usize;
            waves.push(Wave {
                canary: w.canary,
                hosts: start..end,
            });
            start = end;
        }
        if start != p.hosts.len() {
            return Err(corrupt("wave sizes do not add up to the hosts"));
        }
        let mut hosts = Vec::with_capacity(p.hosts.len());
        for (i, h) in p.hosts.iter().enumerate() {
            let wave = h.wave as usize;
            if waves.get(wave).is_none_or(|w| !w.hosts.contains(&i)) {
                return Err(corrupt("a host's wave does not match the wave sizes"));
            }
            hosts.push(PlannedHost {
                name: h.device.clone(),
                wave,
                canary: h.canary,
                topology: topo(h.topology.as_ref()),
                hypervisor: h.hypervisor.clone(),
                guests: h
                    .guests
                    .iter()
                    .map(|g| Guest {
                        name: g.device.clone(),
                        topology: topo(g.topology.as_ref()),
                    })
                    .collect(),
                estimate: h.estimate.as_ref().map_or(0, |d| d.seconds),
                first_fit: h.first_fit.as_ref().map(|t| t.seconds),
            });
        }
        let mut skipped = Vec::with_capacity(p.skipped.len());
        for s in &p.skipped {
            skipped.push(Skipped {
                name: s.device.clone(),
                code: SkipCode::parse(&s.code).ok_or_else(|| corrupt("unknown skip code"))?,
                reason: s.reason.clone(),
            });
        }
        Ok(Self {
            planned_at: p.planned_at.as_ref().map_or(0, |t| t.seconds),
            hosts,
            skipped,
            waves,
            failures_allowed: p.failures_allowed,
            fleet_hosts: p.fleet_hosts,
            warnings: p.warnings.clone(),
        })
    }
}
