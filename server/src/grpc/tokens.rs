//! Token management handlers (AdminService CreateToken, ListTokens, RevokeToken): authorize as
//! admin, call the registry, audit every outcome (never the token), convert back.

use std::time::Duration;

use muster::pb::{self, ResourceKind};
use tonic::{Request, Response, Status};

use super::status::to_status;
use super::{Shared, flat_context};
use crate::auth::{TokenEntry, TokenSource};
use crate::inventory::{ChangeContext, refusal_kind};
use crate::model::{ApiError, Permission, Principal, timestamp};
use crate::store::RefusalKind;
use crate::tokens::{NewToken, describe};

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

/// Audits the outcome of a token action under the token's name; accepted actions too, since
/// they change who may do what.
fn audited<T>(
    shared: &Shared,
    who: &Principal,
    verb: &str,
    name: &str,
    ctx: &ChangeContext,
    r: Result<T, ApiError>,
    accepted: impl FnOnce(&T) -> String,
) -> Result<T, Status> {
    let (kind, message) = match &r {
        Ok(v) => (RefusalKind::Accepted, accepted(v)),
        Err(ApiError::Unavailable(_) | ApiError::Internal(_) | ApiError::ShuttingDown) => {
            return r.map_err(to_status);
        }
        Err(e) => (refusal_kind(e), e.to_string()),
    };
    let target = (ResourceKind::Unspecified, name);
    if kind == RefusalKind::Accepted {
        shared
            .inventory
            .record_accepted_action(&who.name, verb, target, ctx, &message);
    } else {
        shared
            .inventory
            .record_refusal(&who.name, verb, target, ctx, kind, &message);
    }
    r.map_err(to_status)
}

fn ttl(d: Option<pbjson_types::Duration>) -> Result<Option<Duration>, ApiError> {
    d.map(|d| {
        if d.seconds < 0 || d.nanos < 0 {
            Err(ApiError::invalid("ttl", "must not be negative"))
        } else {
            Ok(Duration::new(
                u64::try_from(d.seconds).unwrap_or(0),
                u32::try_from(d.nanos).unwrap_or(0),
            ))
        }
    })
    .transpose()
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
    let r = req.into_inner();
    let ctx = flat_context("cli", r.reason, r.ticket);
    let result = async {
        ctx.check()?;
        let new = NewToken {
            name: r.name,
            role: r.role,
            ttl: ttl(r.ttl)?,
            selector: r.selector,
        };
        shared
            .tokens
            .create(shared.inventory.store(), &who, new)
            .await
    }
    .await;
    let (token, entry) = audited(
        shared,
        &who,
        "token-create",
        &name,
        &ctx,
        result,
        |(_, e)| format!("created {}", describe(e)),
    )?;
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
    let r = req.into_inner();
    let ctx = flat_context("cli", r.reason, r.ticket);
    let result = async {
        ctx.check()?;
        shared.tokens.revoke(shared.inventory.store(), &name).await
    }
    .await;
    audited(shared, &who, "token-revoke", &name, &ctx, result, |e| {
        format!("revoked {}", describe(e))
    })?;
    Ok(Response::new(pb::RevokeTokenResponse {}))
}
