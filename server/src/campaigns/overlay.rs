//! The campaign's change is desired state. A campaign with a `desired` part lays it over
//! each host it reaches: as the host leaves PENDING for its first step, an auxiliary record
//! (`drift::overlays`, keyed by device and campaign) is written in the batch of that host
//! transition, and the drift engine is told once it is durable; from then on the host's
//! effective desired state takes the campaign's fields, so its drift on them is *pending*.
//! Hosts the campaign has not reached show no change.
//!
//! What each outcome leaves:
//! - ROLLED_BACK: the layer is removed in the batch of that transition: the host's previous
//!   desired values are back, matching what the rollback put on it.
//! - FAILED (no rollback, or marked failed by a person): the layer stays. The host was
//!   changed or half changed and nothing undid it; keeping the campaign's values keeps its
//!   drift visible (pending) instead of calling a half-patched host "in sync" with the old
//!   values.
//! - SKIPPED: never had one (a host is skipped only from PENDING).
//! - COMPLETED: the change is kept as a profile `campaign-<name>` (the campaign's target
//!   selector, its `desired` fields, a priority above every existing profile so the latest
//!   completed change wins), written through the inventory's change-set preparation as ONE
//!   change set together with the campaign's COMPLETED write (principal `system:campaign`,
//!   reason naming the campaign), and every layer is removed in that same batch. New hosts
//!   matching the selector inherit it. A device's own spec still wins over it, as over any
//!   profile.
//! - ABORTED: no profile, and every layer is removed in the batch that records the abort.
//!   An abort says "this change is not adopted": the fleet's desired state is what it was,
//!   and hosts the campaign already changed show as drifting from it, which is where an
//!   operator finds them to roll back or to adopt by a profile. Keeping layers "until someone
//!   decides" would leave desired state that no command can remove.
//!
//! A campaign without `desired` writes no layer and no profile. A completion whose profile
//! cannot be prepared (a campaign name too long for `campaign-<name>`, no priority left
//! above the highest) completes all the same, says why in its message and drops the layers.

use muster::pb::{self, ResourceKind};

use super::engine::{Engine, SYSTEM};
use crate::campaign::CampaignState;
use crate::campaign::host::HostState;
use crate::drift::desired::Overlay;
use crate::drift::overlays;
use crate::inventory::ChangeContext;
use crate::model::auth::Role;
use crate::model::{ApiError, Principal, kind_id};
use crate::store::{ListQuery, Mutation};

/// Prefix of the profile a completed campaign's change is kept as.
pub const PROFILE_PREFIX: &str = "campaign-";
/// The lowest priority a kept profile gets: above ordinary profiles.
pub const PROFILE_PRIORITY_FLOOR: i32 = 1_000_000;

/// A layer put (`Some`) or removed, for the drift engine once the round is durable:
/// (device id, campaign id, layer).
pub type Notice = (String, String, Option<Overlay>);

/// The profile write a completion carries, ridden in the campaign's own change set.
#[derive(Debug, Clone)]
pub struct Keep {
    pub profile: String,
    pub mutation: Mutation,
}

impl Engine {
    /// After host `i` of campaign `name` moved from `from` to `to`: puts its layer when the
    /// campaign reaches it, removes it when it is rolled back. Queued in this round's batch
    /// of host records.
    pub(super) fn overlay_host(&mut self, name: &str, i: usize, from: &HostState, to: &HostState) {
        let reached = matches!(from, HostState::Pending) && matches!(to, HostState::Running { .. });
        let rolled_back = matches!(to, HostState::RolledBack { .. });
        if !reached && !rolled_back {
            return;
        }
        let now = self.now_nanos();
        let Some(run) = self.runs.get(name) else {
            return;
        };
        let Some(desired) = run.spec.as_ref().and_then(|s| s.desired.as_ref()) else {
            return;
        };
        let Some(host) = run.plan.as_ref().and_then(|p| p.hosts.get(i)) else {
            return;
        };
        let Some(device_id) = self.device_id(&host.name) else {
            // The device is gone: its delete took its layers with it.
            return;
        };
        let key = overlays::key(&device_id, &run.id);
        if reached {
            match overlays::encode(&run.name, now, desired) {
                Ok(v) => {
                    let layer = Overlay::new(&run.name, now, desired);
                    let campaign_id = run.id.clone();
                    self.round.puts.push((key, Some(v)));
                    self.round
                        .overlays
                        .push((device_id, campaign_id, Some(layer)));
                }
                Err(e) => tracing::error!(error = %e, "encoding a campaign layer"),
            }
        } else {
            let campaign_id = run.id.clone();
            self.round.puts.push((key, None));
            self.round.overlays.push((device_id, campaign_id, None));
        }
    }

    /// After campaign `name` changed state (its resource write just queued): on ABORTED its
    /// layers go with that write; on COMPLETED the write also keeps the change as a profile.
    pub(super) fn overlay_campaign(&mut self, name: &str) {
        let Some(run) = self.runs.get(name) else {
            return;
        };
        let completed = matches!(run.state, CampaignState::Completed);
        if !completed && !matches!(run.state, CampaignState::Aborted) {
            return;
        }
        let Some(spec) = run.spec.as_ref() else {
            return;
        };
        let Some(desired) = spec.desired.clone() else {
            return;
        };
        let selector = spec.selector_text.clone();
        let campaign_id = run.id.clone();
        let reached: Vec<String> = run
            .plan
            .as_ref()
            .map(|p| {
                p.hosts
                    .iter()
                    .zip(&run.hosts)
                    .filter(|(_, h)| {
                        h.data.started_nanos > 0 && !matches!(h.state, HostState::Skipped { .. })
                    })
                    .map(|(ph, _)| ph.name.clone())
                    .collect()
            })
            .unwrap_or_default();
        let mut aux = Vec::new();
        let mut notices = Vec::new();
        for host in reached {
            if let Some(device_id) = self.device_id(&host) {
                aux.push((overlays::key(&device_id, &campaign_id), None));
                notices.push((device_id, campaign_id.clone(), None));
            }
        }
        let (keep, failed) = if completed {
            match self.keep_profile(name, &selector, desired) {
                Ok(k) => (k, None),
                Err(e) => {
                    // The layers go anyway: a completed campaign's layers would have no owner.
                    tracing::error!(campaign = %name, error = %e, "keeping a campaign's change");
                    (
                        None,
                        Some(format!("its change was not kept as a profile: {e}")),
                    )
                }
            }
        } else {
            (None, None)
        };
        if let (Some(why), Some(run)) = (&failed, self.runs.get_mut(name)) {
            run.message = if run.message.is_empty() {
                why.clone()
            } else {
                format!("{}; {why}", run.message)
            };
        }
        let Some(w) = self
            .round
            .resources
            .iter_mut()
            .rev()
            .find(|w| w.name == name)
        else {
            return;
        };
        if let (Some(why), Some(status)) = (failed, w.body.status.as_mut()) {
            // The resource was queued before this was known: say it there too.
            status.message = format!("{}; {why}", status.message);
        }
        w.aux.extend(aux);
        w.keep = keep;
        self.round.overlays.extend(notices);
    }

    /// The profile a completed campaign leaves, prepared as an apply of it would be (None:
    /// it is already stored as it would be written, e.g. after a crash mid-round).
    fn keep_profile(
        &self,
        name: &str,
        selector: &str,
        desired: pb::DesiredState,
    ) -> Result<Option<Keep>, ApiError> {
        let profile = format!("{PROFILE_PREFIX}{name}");
        let priority = self.keep_priority(&profile)?;
        let body = pb::Resource {
            resource: Some(pb::resource::Resource::Profile(pb::Profile {
                meta: Some(pb::ObjectMeta {
                    name: profile.clone(),
                    ..Default::default()
                }),
                selector: selector.to_string(),
                priority,
                spec: Some(desired),
                description: format!("the change of campaign {name}, kept on its completion"),
            })),
        };
        let ctx = ChangeContext {
            reason: format!("campaign {name} completed: its change is kept as profile {profile}"),
            ticket: String::new(),
            origin: "campaign".into(),
        };
        let who = Principal::new(SYSTEM, Role::Admin);
        let prepared = self
            .inventory
            .prepare_write(&who, body, &ctx, self.now_nanos())?;
        Ok(prepared.mutation.map(|mutation| Keep { profile, mutation }))
    }

    /// One above every other profile's priority, and at least the floor: the latest
    /// completed change wins over earlier ones and over ordinary profiles, and can never tie.
    fn keep_priority(&self, own: &str) -> Result<i32, ApiError> {
        let store = self.inventory.store();
        let mut highest = PROFILE_PRIORITY_FLOOR - 1;
        let mut after_id = None;
        loop {
            let page = store
                .list(&ListQuery {
                    kind: kind_id(ResourceKind::Profile),
                    labels: Default::default(),
                    fields: Default::default(),
                    after_id: after_id.clone(),
                    limit: 1000,
                })
                .map_err(crate::inventory::store_error)?;
            for o in &page.objects {
                if o.name == own {
                    continue;
                }
                if let Ok(pb::Resource {
                    resource: Some(pb::resource::Resource::Profile(p)),
                }) = prost::Message::decode(o.body.as_slice())
                {
                    highest = highest.max(p.priority);
                }
            }
            if !page.more {
                break;
            }
            after_id = page.last_id;
        }
        highest.checked_add(1).ok_or_else(|| {
            ApiError::FailedPrecondition(format!(
                "a profile already has the highest priority ({}); no priority is above it",
                i32::MAX
            ))
        })
    }

    fn device_id(&self, host: &str) -> Option<String> {
        self.inventory
            .store()
            .id_of(kind_id(ResourceKind::Device), host)
    }

    /// Tells the drift engine of the layers a durable round put or removed.
    pub(super) fn notify_overlays(&self, notices: Vec<Notice>) {
        let drift = self.inventory.drift();
        for (device, campaign, layer) in notices {
            drift.overlay(&device, &campaign, layer);
        }
    }
}
