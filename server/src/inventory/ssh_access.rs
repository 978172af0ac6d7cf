//! Server-side reads for the campaign SSH executor: a device's SSH endpoint and a
//! credential's opened secret. Nothing read here leaves through the API (every API read
//! removes secrets, `stored.rs`); the executor hands the key to russh and nowhere else.

use muster::pb::{self, ResourceKind, resource::Resource as R};

use super::{Inventory, internal};
use crate::model::ApiError;

impl Inventory {
    /// The device named `name` as stored (None: no such device).
    pub fn device_for_executor(&self, name: &str) -> Result<Option<pb::Device>, ApiError> {
        Ok(match self.load(ResourceKind::Device, name)? {
            Some((
                _,
                pb::Resource {
                    resource: Some(R::Device(d)),
                },
            )) => Some(d),
            _ => None,
        })
    }

    /// A credential's kind and opened secret (None: no such credential). A secret that does
    /// not open with this server's key is an internal error, never an empty secret.
    pub fn credential_secret(
        &self,
        name: &str,
    ) -> Result<Option<(pb::CredentialKind, Vec<u8>)>, ApiError> {
        let Some((_, r)) = self.load(ResourceKind::Credential, name)? else {
            return Ok(None);
        };
        let Some(R::Credential(c)) = r.resource else {
            return Ok(None);
        };
        let plain = self.secrets.open(&c.secret).ok_or_else(|| {
            internal(format!(
                "the secret of credential {name:?} does not open with this server's secrets key"
            ))
        })?;
        let kind = pb::CredentialKind::try_from(c.kind).unwrap_or_default();
        Ok(Some((kind, plain)))
    }
}
