//! The gRPC edge: thin handlers (convert, call the domain, convert back), authentication, the
//! one mapping of errors to `tonic::Status`, and the request-size and metrics layer.

pub mod admin;
pub mod agent;
pub mod audit;
pub mod campaign;
pub mod config;
pub mod edge;
pub mod export;
pub mod health;
pub mod inventory;
pub mod methods;
pub mod status;
pub mod tokens;

use std::sync::Arc;

use muster::pb::ResourceKind;
use tonic::{Request, Status};

use crate::auth::TokenRegistry;
use crate::inventory::{ChangeContext, Inventory};
use crate::model::{Permission, Principal};
use crate::store::RefusalKind;

/// The change context of a request, as the domain takes it.
pub(crate) fn context(c: Option<muster::pb::ChangeContext>) -> ChangeContext {
    let c = c.unwrap_or_default();
    ChangeContext {
        reason: c.reason,
        ticket: c.ticket,
        origin: c.origin,
    }
}

/// The change context of a request that carries `reason` and `ticket` as fields of its own.
pub(crate) fn flat_context(origin: &str, reason: String, ticket: String) -> ChangeContext {
    ChangeContext {
        reason,
        ticket,
        origin: origin.into(),
    }
}

/// The field an `InvalidArgument` names (test helper for the request conversions).
#[cfg(test)]
pub(crate) fn invalid_field(e: crate::model::ApiError) -> String {
    match e {
        crate::model::ApiError::InvalidArgument { field, .. } => field,
        other => panic!("not an invalid argument: {other:?}"),
    }
}

/// A lifetime from field `field` of a request (None: not given); negative parts are refused.
pub(crate) fn lifetime(
    field: &str,
    d: Option<pbjson_types::Duration>,
) -> Result<Option<std::time::Duration>, crate::model::ApiError> {
    d.map(|d| {
        if d.seconds < 0 || d.nanos < 0 {
            Err(crate::model::ApiError::invalid(
                field,
                "must not be negative",
            ))
        } else {
            Ok(std::time::Duration::new(
                u64::try_from(d.seconds).unwrap_or(0),
                u32::try_from(d.nanos).unwrap_or(0),
            ))
        }
    })
    .transpose()
}

/// What every handler needs: the domain service and the token registry.
#[derive(Clone, Debug)]
pub struct Shared {
    pub inventory: Arc<Inventory>,
    pub tokens: Arc<TokenRegistry>,
    /// The key files, sealed into online backups made with a passphrase.
    pub keys: Arc<crate::keys::KeyFiles>,
}

impl Shared {
    /// Converts a request into the domain's input at the edge; a refusal (naming the field)
    /// is audited like any other.
    pub fn input<R, I>(
        &self,
        who: &Principal,
        verb: &str,
        target: (ResourceKind, &str),
        req: R,
    ) -> Result<I, Status>
    where
        I: TryFrom<R, Error = crate::model::ApiError>,
    {
        I::try_from(req).map_err(|e| {
            let e = self
                .inventory
                .refused(&who.name, verb, target, &ChangeContext::default(), e);
            status::to_status(e)
        })
    }

    /// Authenticates the caller and checks `perm`; refusals are audited as DENIED.
    pub fn authorize<T>(
        &self,
        req: &Request<T>,
        perm: Permission,
        verb: &str,
        kind: ResourceKind,
        name: &str,
    ) -> Result<Principal, Status> {
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let principal = self.tokens.authenticate(header).map_err(|(who, e)| {
            // Not yet anyone: rate-limited by the peer's address.
            let peer = req.remote_addr().map(|a| a.ip());
            self.inventory.record_refusal_from_peer(
                peer,
                &who,
                verb,
                (kind, name),
                &ChangeContext::default(),
                RefusalKind::Denied,
                &e.to_string(),
            );
            status::to_status(e)
        })?;
        if !principal.role.allows(perm) {
            let e = crate::model::ApiError::PermissionDenied(format!(
                "{} (role {}) may not {verb}: it needs the {perm:?} permission",
                principal.name, principal.role
            ));
            self.inventory.record_refusal(
                &principal.name,
                verb,
                (kind, name),
                &ChangeContext::default(),
                RefusalKind::Denied,
                &e.to_string(),
            );
            return Err(status::to_status(e));
        }
        Ok(principal)
    }
}
