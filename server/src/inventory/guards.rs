//! The inventory's guards against callers that would exhaust it: refused attempts rate-limited
//! per source and across all sources (so a flood cannot push older refusals out of the capped
//! log), Watch streams
//! capped per principal, and audit verifies capped and incremental.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use muster::pb::{self, ResourceKind};

use super::{ChangeContext, Inventory, printable, store_error};
use crate::limits::{Limits, MAX_CONCURRENT_VERIFIES, Permit, Slots};
use crate::model::{ApiError, Principal, kind_id};
use crate::refusal_limit::{Admit, RefusalLimiter, RefusalPolicy, Summary};
use crate::store::{ChainAnchor, ChangeMeta, Refusal, RefusalKind};

/// The verb of a flood's summary record.
pub const SUMMARY_VERB: &str = "rate-limited";

/// State of the guards, owned by the inventory.
#[derive(Debug)]
pub(super) struct Guards {
    limits: Limits,
    refusals: RefusalLimiter,
    watches: Arc<Slots>,
    verifies: Arc<Slots>,
    /// The chain head the last verify found intact. In memory only, on purpose: whoever can
    /// rewrite the store's files could rewrite a stored head as well, so the first verify after
    /// each start is a full one and finds offline tampering; later ones check what followed.
    verified: Mutex<Option<ChainAnchor>>,
}

impl Guards {
    pub(super) fn new(limits: Limits) -> Self {
        Self {
            limits,
            refusals: RefusalLimiter::new(limits.refusals),
            watches: Slots::new(limits.watches_per_principal),
            verifies: Slots::new(MAX_CONCURRENT_VERIFIES),
            verified: Mutex::new(None),
        }
    }
}

impl Inventory {
    /// Records a refused attempt by an authenticated principal (or a named agent), rate-limited
    /// per principal. Failing to record is logged, not fatal: the caller already has its
    /// answer.
    pub fn record_refusal(
        &self,
        who: &str,
        verb: &str,
        target: (ResourceKind, &str),
        ctx: &ChangeContext,
        refusal: RefusalKind,
        message: &str,
    ) {
        let source = format!("principal {}", printable(who, 128));
        self.record_limited(&source, who, verb, target, ctx, refusal, message);
    }

    /// Records an accepted action that changes no object (a token created or revoked) in the
    /// same log as refusals, never rate-limited: a flood of refusals must not be able to hide
    /// who was given access.
    pub fn record_accepted_action(
        &self,
        who: &str,
        verb: &str,
        target: (ResourceKind, &str),
        ctx: &ChangeContext,
        message: &str,
    ) {
        self.write_refusal(who, verb, target, ctx, RefusalKind::Accepted, message);
    }

    /// Records a refusal the server makes itself (the campaign engine refusing a host whose
    /// key is not its pinned one), never rate-limited: its count is bounded by the server's
    /// own work, not by a caller, and every one must be in the trail.
    pub fn record_server_refusal(
        &self,
        who: &str,
        verb: &str,
        target: (ResourceKind, &str),
        ctx: &ChangeContext,
        message: &str,
    ) {
        self.write_refusal(who, verb, target, ctx, RefusalKind::Rejected, message);
    }

    /// Records a refused attempt by a caller not known as a principal (no or a bad token),
    /// rate-limited per peer address (the port changes with every connection, so it is left
    /// out; IPv6 peers by their /64).
    #[allow(clippy::too_many_arguments)]
    pub fn record_refusal_from_peer(
        &self,
        peer: Option<IpAddr>,
        who: &str,
        verb: &str,
        target: (ResourceKind, &str),
        ctx: &ChangeContext,
        refusal: RefusalKind,
        message: &str,
    ) {
        let source = match peer {
            Some(ip) => crate::refusal_limit::peer_source(ip),
            None => "peer unknown".to_string(),
        };
        self.record_limited(&source, who, verb, target, ctx, refusal, message);
    }

    #[allow(clippy::too_many_arguments)]
    fn record_limited(
        &self,
        source: &str,
        who: &str,
        verb: &str,
        target: (ResourceKind, &str),
        ctx: &ChangeContext,
        refusal: RefusalKind,
        message: &str,
    ) {
        let (admit, summaries) =
            self.guards
                .refusals
                .admit(source, who, verb, self.clock.now_instant());
        for s in summaries {
            self.write_summary(s);
        }
        if admit == Admit::Record {
            self.write_refusal(who, verb, target, ctx, refusal, message);
        }
    }

    /// The record of an accepted action that changes no object, for a write that stores it
    /// in the same batch as the change it records (token changes: `Store::commit_tokens`).
    pub fn accepted_action_record(
        who: &str,
        verb: &str,
        target: (ResourceKind, &str),
        ctx: &ChangeContext,
        message: &str,
        now_unix_nanos: i64,
    ) -> Refusal {
        Self::refusal_record(
            who,
            verb,
            target,
            ctx,
            (RefusalKind::Accepted, message),
            now_unix_nanos,
        )
    }

    fn refusal_record(
        who: &str,
        verb: &str,
        (kind, name): (ResourceKind, &str),
        ctx: &ChangeContext,
        (refusal, message): (RefusalKind, &str),
        now_unix_nanos: i64,
    ) -> Refusal {
        Refusal {
            seq: 0,
            kind: kind_id(kind),
            name: printable(name, 256),
            meta: ChangeMeta {
                principal: printable(who, 256),
                verb: verb.to_string(),
                reason: printable(&ctx.reason, 1024),
                ticket: printable(&ctx.ticket, 128),
                origin: printable(&ctx.origin, 32),
                time_unix_nanos: now_unix_nanos,
                ..ChangeMeta::default()
            },
            refusal,
            message: printable(message, 1024),
        }
    }

    fn write_refusal(
        &self,
        who: &str,
        verb: &str,
        target: (ResourceKind, &str),
        ctx: &ChangeContext,
        refusal: RefusalKind,
        message: &str,
    ) {
        let r = Self::refusal_record(
            who,
            verb,
            target,
            ctx,
            (refusal, message),
            self.now_unix_nanos(),
        );
        if let Err(e) = self.store.record_refusal(r) {
            tracing::warn!(error = %e, "could not record a refused attempt");
        }
    }

    fn write_summary(&self, s: Summary) {
        tracing::warn!(source = %s.source, total = s.total, "refused attempts rate-limited");
        self.write_refusal(
            &s.principal,
            SUMMARY_VERB,
            (ResourceKind::Unspecified, ""),
            &ChangeContext::default(),
            RefusalKind::Denied,
            &s.message,
        );
    }

    /// Writes the summaries of floods whose window ended and forgets those sources (run
    /// periodically; see `Server::run`).
    pub fn sweep_refusals(&self) {
        for s in self.guards.refusals.sweep(self.clock.now_instant()) {
            self.write_summary(s);
        }
    }

    /// Writes the summaries of every open window (at shutdown).
    pub fn flush_refusal_summaries(&self) {
        let policy = self.guards.refusals.policy();
        for s in self
            .guards
            .refusals
            .sweep(self.clock.now_instant() + policy.window)
        {
            self.write_summary(s);
        }
    }

    /// The refusal rate limit in force.
    pub fn refusal_policy(&self) -> RefusalPolicy {
        self.guards.refusals.policy()
    }

    /// A Watch slot of `who`, or RESOURCE_EXHAUSTED naming the limit.
    pub(super) fn watch_permit(&self, who: &Principal) -> Result<Permit, ApiError> {
        self.guards.watches.try_acquire(&who.name).ok_or_else(|| {
            ApiError::ResourceExhausted(format!(
                "{} already has {} watch streams open, the limit per principal \
                 (max_watches_per_principal); close one first",
                who.name, self.guards.limits.watches_per_principal
            ))
        })
    }

    /// Recomputes the audit hash chain: from the head the last verify found intact (its record
    /// re-hashed), or over everything when `full` or when nothing was verified since the start.
    /// At most `MAX_CONCURRENT_VERIFIES` run at once.
    pub fn verify_audit(&self, full: bool) -> Result<pb::VerifyAuditResponse, ApiError> {
        let _slot = self.guards.verifies.try_acquire("").ok_or_else(|| {
            ApiError::ResourceExhausted(format!(
                "{MAX_CONCURRENT_VERIFIES} audit verifies are already running (the limit); \
                 retry when one has finished"
            ))
        })?;
        let lock = || {
            self.guards
                .verified
                .lock()
                .unwrap_or_else(|p| p.into_inner())
        };
        let anchor = if full { None } else { *lock() };
        let r = self.store.verify_chain(anchor).map_err(store_error)?;
        let (first_broken_revision, message) = match r.broken {
            Some((rev, why)) => (rev, format!("revision {rev}: {why}")),
            None => {
                let mut v = lock();
                if v.is_none_or(|a| a.revision <= r.head_revision) && r.head_revision > 0 {
                    *v = Some(ChainAnchor {
                        revision: r.head_revision,
                        hash: r.head,
                    });
                }
                (0, String::new())
            }
        };
        Ok(pb::VerifyAuditResponse {
            ok: first_broken_revision == 0,
            checked: r.checked,
            first_broken_revision,
            message,
            head_hash: hex::encode(r.head),
            revision: r.revision,
            from_revision: r.from_revision,
        })
    }
}
