//! The engine's commit step: everything a round wrote (campaign resources with their aux
//! records, host records, desired-state layers) made durable before any answer is sent or
//! any step dispatched. On a failed write every waiting command gets UNAVAILABLE and the
//! engine reloads from the store, so its memory never runs ahead of what is on disk.

use std::sync::Arc;

use muster::pb::{self, ResourceKind};

use super::engine::{Engine, ResourceWrite};
use super::records;
use crate::model::{ApiError, kind_id};
use crate::store::{self, AuxWrite, Expect, Mutation, StoredObject};

impl Engine {
    /// Commits the round's writes, waits for durability, then answers and dispatches. On a
    /// store failure nothing is dispatched, every waiting command gets the error, and the
    /// state is reloaded from what is durable.
    pub(super) async fn flush(&mut self) {
        let round = std::mem::take(&mut self.round);
        match self.write(round.resources, round.puts).await {
            Ok(()) => {
                self.notify_overlays(round.overlays);
                for (tx, r) in round.replies {
                    let _ = tx.send(r);
                }
                for (campaign, host, req) in round.dispatch {
                    self.dispatch(campaign, host, req);
                }
                for (campaign, host, req) in round.recover {
                    self.dispatch_recovery(campaign, host, req);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "campaign engine could not persist; reloading");
                for (tx, _) in round.replies {
                    let _ = tx.send(Err(ApiError::Unavailable(e.to_string())));
                }
                self.runs.clear();
                if let Err(e) = self.load() {
                    tracing::error!(error = %e, "campaign engine could not reload");
                }
            }
        }
    }

    async fn write(
        &mut self,
        resources: Vec<ResourceWrite>,
        puts: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<(), ApiError> {
        let store = Arc::clone(self.inventory.store());
        let mut last_batch = None;
        let mut last_set = None;
        for w in resources {
            let Some(run) = self.runs.get_mut(&w.name) else {
                continue;
            };
            let meta = w.body.meta.clone().unwrap_or_default();
            let body = pb::Resource {
                resource: Some(pb::resource::Resource::Campaign(w.body)),
            };
            let m = Mutation {
                kind: kind_id(ResourceKind::Campaign),
                name: meta.name.clone(),
                expect: if run.revision == 0 {
                    Expect::Absent
                } else {
                    Expect::Revision(run.revision)
                },
                put: Some(StoredObject {
                    kind: kind_id(ResourceKind::Campaign),
                    id: meta.id.clone(),
                    name: meta.name.clone(),
                    labels: meta.labels.clone().into_iter().collect(),
                    fields: crate::model::resource::index_fields(&body),
                    revision: 0,
                    body: prost::Message::encode_to_vec(&body),
                }),
                checks: Vec::new(),
                change: w.meta,
            };
            let mut puts = vec![(records::campaign_key(&meta.id), Some(w.data))];
            puts.extend(w.aux);
            if let Some(keep) = w.keep {
                // The kept profile and the completion: one change set, with the records.
                let names = [
                    (ResourceKind::Profile, keep.profile),
                    (ResourceKind::Campaign, meta.name.clone()),
                ];
                let revs = self
                    .inventory
                    .commit_set_with(vec![keep.mutation, m], &names, puts)
                    .await?;
                if let Some(rev) = revs.last() {
                    run.revision = *rev;
                    last_set = Some(*rev);
                }
                continue;
            }
            let applied = store
                .commit_aux(AuxWrite {
                    guards: vec![],
                    puts,
                    mutation: Some(m),
                })
                .applied()
                .await
                .map_err(|e| crate::store_map::api_error("campaign", &meta.name, e))?;
            if let Some(rev) = applied.revision {
                run.revision = rev;
            }
            last_batch = Some(applied.batch);
        }
        if !puts.is_empty() {
            let applied = store
                .commit_aux(AuxWrite {
                    guards: vec![],
                    puts,
                    mutation: None,
                })
                .applied()
                .await
                .map_err(crate::inventory::store_error)?;
            last_batch = Some(applied.batch);
        }
        if let Some(b) = last_batch {
            store::wait_durable_batch(&*store, b)
                .await
                .map_err(crate::inventory::store_error)?;
        }
        if let Some(rev) = last_set {
            store::wait_durable(&*store, rev)
                .await
                .map_err(crate::inventory::store_error)?;
        }
        Ok(())
    }
}
