//! Token management handlers (AdminService CreateToken, ListTokens, RevokeToken): authorize as
//! admin, call the registry, audit every outcome (never the token), convert back.

use std::time::Duration;

use muster::pb::{self, ResourceKind};
use tonic::{Request, Response, Status};

use super::status::to_status;
use super::{Shared, flat_context};
use crate::auth::{TokenEntry, TokenSource};
use crate::inventory::{ChangeContext, Inventory, refusal_kind};
use crate::model::{ApiError, Permission, Principal, timestamp};
use crate::store::Refusal;
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

/// Audits a refused token action under the token's name (accepted ones are recorded with the
/// change, see `accepted`).
fn audited<T>(
    shared: &Shared,
    who: &Principal,
    verb: &str,
    name: &str,
    ctx: &ChangeContext,
    r: Result<T, ApiError>,
) -> Result<T, Status> {
    match &r {
        Ok(_) | Err(ApiError::Unavailable(_) | ApiError::Internal(_) | ApiError::ShuttingDown) => {}
        Err(e) => shared.inventory.record_refusal(
            &who.name,
            verb,
            (ResourceKind::Unspecified, name),
            ctx,
            refusal_kind(e),
            &e.to_string(),
        ),
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
            .create(shared.inventory.store(), &who, new, |e| {
                accepted(
                    (&who, shared.inventory.now_unix_nanos()),
                    "token-create",
                    &name,
                    &ctx,
                    format!("created {}", describe(e)),
                )
            })
            .await
    }
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
    let r = req.into_inner();
    let ctx = flat_context("cli", r.reason, r.ticket);
    let result = async {
        ctx.check()?;
        shared
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
            .await
    }
    .await;
    audited(shared, &who, "token-revoke", &name, &ctx, result)?;
    Ok(Response::new(pb::RevokeTokenResponse {}))
}
