//! What a device's delete removes with it, in the delete's own batch: its observed facts and
//! report metadata (`observed`) and its drift memory (`drift`). In the same batch, so they go
//! even when the drift engine is not running, and nothing is left if the server stops between.

use super::{Inventory, ResourceKind, kind_name, store};
use crate::model::ApiError;
use crate::observed;
use crate::store::{AuxWrite, Mutation};

impl Inventory {
    /// Commits a delete; a device's records go in the same batch.
    pub(super) async fn commit_delete(
        &self,
        kind: ResourceKind,
        name: &str,
        id: &str,
        m: Mutation,
    ) -> Result<u64, ApiError> {
        if kind != ResourceKind::Device {
            return self.commit(kind, name, m).await;
        }
        let err = |e| crate::store_map::api_error(kind_name(kind), name, e);
        let mut puts: Vec<(Vec<u8>, Option<Vec<u8>>)> = observed::scan_device(&*self.store, id)
            .map_err(err)?
            .into_iter()
            .map(|(k, _)| (k, None))
            .collect();
        puts.push((observed::meta_key(id), None));
        puts.push((crate::drift::memory_key(id), None));
        let applied = self
            .store
            .commit_aux(AuxWrite {
                guards: Vec::new(),
                puts,
                mutation: Some(m),
            })
            .applied()
            .await
            .map_err(err)?;
        let rev = applied
            .revision
            .ok_or_else(|| ApiError::Internal("a delete was applied without a revision".into()))?;
        store::wait_durable(&*self.store, rev).await.map_err(err)?;
        Ok(rev)
    }
}
