//! Token management handlers (AdminService CreateToken, ListTokens, RevokeToken): authorize as
//! admin, call the registry, audit every outcome (never the token), convert back.

use muster::pb::{self, ResourceKind};
use tonic::{Request, Response, Status};

use super::status::to_status;
use super::{Shared, flat_context, lifetime};
use crate::auth::{TokenEntry, TokenSource};
use crate::inventory::{ChangeContext, Inventory};
use crate::model::{ApiError, Permission, Principal, timestamp};
use crate::store::Refusal;
use crate::tokens::{CreateToken, NewToken, RevokeToken, describe};

/// The list form of a token.
fn info(e: &TokenEntry, now: i64) -> pb::TokenInfo {
    let ts = |n: i64| (n != 0).then(|| timestamp(n));
    pb::TokenInfo {
        name: e.principal.name.clone(),
        role: e.principal.role.to_string(),
        selector: e.selector.clone(),
        source: match e.source {
            TokenSource::Config => "config",
            TokenSource::Store => "store",
        }
        .into(),
        created_at: ts(e.created_nanos),
        expires_at: ts(e.expires_nanos),
        created_by: e.created_by.clone(),
        last_used_at: ts(e.last_used_nanos.load(std::sync::atomic::Ordering::Relaxed)),
        bootstrap: e.bootstrap,
        expired: e.expired(now),
    }
}

/// The audit entry of an accepted token action, written with the token change itself (one
/// batch): it changes who may do what.
fn accepted(
    (who, now): (&Principal, i64),
    verb: &str,
    name: &str,
    ctx: &ChangeContext,
    message: String,
) -> Refusal {
    Inventory::accepted_action_record(
        &who.name,
        verb,
        (ResourceKind::Unspecified, name),
        ctx,
        &message,
        now,
    )
}

/// Audits a refused token action under the token's name, through the one refusal path
/// (accepted ones are recorded with the change, see `accepted`).
fn audited<T>(
    shared: &Shared,
    who: &Principal,
    verb: &str,
    name: &str,
    ctx: &ChangeContext,
    r: Result<T, ApiError>,
) -> Result<T, Status> {
    r.map_err(|e| {
        let e =
            shared
                .inventory
                .refused(&who.name, verb, (ResourceKind::Unspecified, name), ctx, e);
        to_status(e)
    })
}

impl TryFrom<pb::CreateTokenRequest> for CreateToken {
    type Error = ApiError;
    fn try_from(r: pb::CreateTokenRequest) -> Result<Self, ApiError> {
        let context = flat_context("cli", r.reason, r.ticket);
        context.check()?;
        Ok(Self {
            token: NewToken {
                name: r.name,
                role: r.role,
                ttl: lifetime("ttl", r.ttl)?,
                selector: r.selector,
            },
            context,
        })
    }
}

impl TryFrom<pb::RevokeTokenRequest> for RevokeToken {
    type Error = ApiError;
    fn try_from(r: pb::RevokeTokenRequest) -> Result<Self, ApiError> {
        let context = flat_context("cli", r.reason, r.ticket);
        context.check()?;
        Ok(Self {
            name: r.name,
            context,
        })
    }
}

pub async fn create(
    shared: &Shared,
    req: Request<pb::CreateTokenRequest>,
) -> Result<Response<pb::CreateTokenResponse>, Status> {
    let name = req.get_ref().name.clone();
    let who = shared.authorize(
        &req,
        Permission::Admin,
        "token-create",
        ResourceKind::Unspecified,
        &name,
    )?;
    let CreateToken {
        token: new,
        context: ctx,
    } = shared.input(
        &who,
        "token-create",
        (ResourceKind::Unspecified, &name),
        req.into_inner(),
    )?;
    let result = shared
        .tokens
        .create(shared.inventory.store(), &who, new, |e| {
            accepted(
                (&who, shared.inventory.now_unix_nanos()),
                "token-create",
                &name,
                &ctx,
                format!("created {}", describe(e)),
            )
        })
        .await;
    let (token, entry) = audited(shared, &who, "token-create", &name, &ctx, result)?;
    Ok(Response::new(pb::CreateTokenResponse {
        token,
        info: Some(info(&entry, shared.inventory.now_unix_nanos())),
    }))
}

pub async fn list(
    shared: &Shared,
    req: Request<pb::ListTokensRequest>,
) -> Result<Response<pb::ListTokensResponse>, Status> {
    shared.authorize(
        &req,
        Permission::Admin,
        "token-list",
        ResourceKind::Unspecified,
        "",
    )?;
    let now = shared.inventory.now_unix_nanos();
    let tokens = shared
        .tokens
        .entries()
        .iter()
        .map(|e| info(e, now))
        .collect();
    Ok(Response::new(pb::ListTokensResponse { tokens }))
}

pub async fn revoke(
    shared: &Shared,
    req: Request<pb::RevokeTokenRequest>,
) -> Result<Response<pb::RevokeTokenResponse>, Status> {
    let name = req.get_ref().name.clone();
    let who = shared.authorize(
        &req,
        Permission::Admin,
        "token-revoke",
        ResourceKind::Unspecified,
        &name,
    )?;
    let RevokeToken { context: ctx, .. } = shared.input(
        &who,
        "token-revoke",
        (ResourceKind::Unspecified, &name),
        req.into_inner(),
    )?;
    let result = shared
        .tokens
        .revoke(shared.inventory.store(), &name, |e| {
            accepted(
                (&who, shared.inventory.now_unix_nanos()),
                "token-revoke",
                &name,
                &ctx,
                format!("revoked {}", describe(e)),
            )
        })
        .await;
    audited(shared, &who, "token-revoke", &name, &ctx, result)?;
    Ok(Response::new(pb::RevokeTokenResponse {}))
}

#[cfg(test)]
mod tests {
    use super::super::invalid_field as field;
    use super::*;

    fn ttl_of(seconds: i64, nanos: i32) -> Option<pbjson_types::Duration> {
        Some(pbjson_types::Duration { seconds, nanos })
    }

    #[test]
    fn a_create_request_becomes_a_new_token_with_its_context() {
        let c = CreateToken::try_from(pb::CreateTokenRequest {
            name: "ci".into(),
            role: "operator".into(),
            ttl: ttl_of(3600, 500),
            selector: "team=web".into(),
            reason: "pipeline".into(),
            ticket: "OPS-7".into(),
        })
        .unwrap();
        assert_eq!(c.token.name, "ci");
        assert_eq!(c.token.role, "operator");
        assert_eq!(c.token.ttl, Some(std::time::Duration::new(3600, 500)));
        assert_eq!(c.token.selector, "team=web");
        assert_eq!(c.context.reason, "pipeline");
        assert_eq!(c.context.ticket, "OPS-7");
        assert_eq!(c.context.origin, "cli");
        let lasting = CreateToken::try_from(pb::CreateTokenRequest::default()).unwrap();
        assert_eq!(lasting.token.ttl, None, "no ttl: the token does not expire");
    }

    #[test]
    fn request_shape_failures_name_the_field() {
        for bad in [ttl_of(-1, 0), ttl_of(1, -1)] {
            let e = CreateToken::try_from(pb::CreateTokenRequest {
                ttl: bad,
                ..Default::default()
            })
            .unwrap_err();
            assert_eq!(field(e), "ttl");
        }
        let e = CreateToken::try_from(pb::CreateTokenRequest {
            reason: "x".repeat(1025),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(field(e), "context.reason");
        let e = RevokeToken::try_from(pb::RevokeTokenRequest {
            name: "ci".into(),
            ticket: "bad\nticket".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(field(e), "context.ticket");
        let r = RevokeToken::try_from(pb::RevokeTokenRequest {
            name: "ci".into(),
            reason: "leaked".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (r.name.as_str(), r.context.reason.as_str()),
            ("ci", "leaked")
        );
    }
}
