//! The audit trail as operators read it (accepted changes and refused attempts, oldest
//! first), and the one classification of errors into refusals: which are recorded, and as
//! REJECTED or DENIED.

use muster::pb::{self, ResourceKind};

use super::query::{audit_token, page_size, parse_audit_token};
use super::{ChangeContext, Inventory};
use crate::model::{ApiError, Principal, kind_from_id, kind_id, timestamp};
use crate::store::{AuditEntry, AuditQuery, ChangeEntry, Refusal, RefusalKind};

/// Parameters of an audit listing, as the edge converted them (kind checked, a name only with
/// a kind); the page token is this layer's format and is parsed here.
#[derive(Debug, Clone, Default)]
pub struct AuditParams {
    pub kind: Option<ResourceKind>,
    /// Empty: every resource (of `kind`, when set).
    pub name: String,
    /// Empty: every principal.
    pub principal: String,
    pub since_nanos: Option<i64>,
    pub until_nanos: Option<i64>,
    pub include_refused: bool,
    pub page_size: u32,
    pub page_token: String,
}

/// How an error is audited: `None` when it is no refusal (the server could not answer: the
/// request may or may not have taken effect, and the log says why), DENIED for
/// authentication and permission, REJECTED for everything the caller can correct or retry.
pub fn refusal_class(e: &ApiError) -> Option<RefusalKind> {
    match e {
        ApiError::PermissionDenied(_) | ApiError::Unauthenticated(_) => Some(RefusalKind::Denied),
        ApiError::InvalidArgument { .. }
        | ApiError::NotFound { .. }
        | ApiError::AlreadyExists { .. }
        | ApiError::Conflict { .. }
        | ApiError::FailedPrecondition(_)
        | ApiError::Aborted(_)
        | ApiError::ResourceExhausted(_)
        | ApiError::Unimplemented(_)
        | ApiError::OutOfRange(_) => Some(RefusalKind::Rejected),
        ApiError::ShuttingDown | ApiError::Unavailable(_) | ApiError::Internal(_) => None,
    }
}

/// The kind a refusal is recorded as, for callers that record every failure they see.
pub fn refusal_kind(e: &ApiError) -> RefusalKind {
    refusal_class(e).unwrap_or(RefusalKind::Rejected)
}

impl Inventory {
    /// Records `e` as a refused attempt of `who` when it is one (`refusal_class`), and hands
    /// it back: the one way handlers and domain operations audit a refusal.
    pub fn refused(
        &self,
        who: &str,
        verb: &str,
        target: (ResourceKind, &str),
        ctx: &ChangeContext,
        e: ApiError,
    ) -> ApiError {
        if let Some(refusal) = refusal_class(&e) {
            self.record_refusal(who, verb, target, ctx, refusal, &e.to_string());
        }
        e
    }

    /// `refused` for a result.
    pub(super) fn audit_refusal<T>(
        &self,
        who: &Principal,
        verb: &str,
        kind: ResourceKind,
        name: &str,
        ctx: &ChangeContext,
        r: Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        r.map_err(|e| self.refused(&who.name, verb, (kind, name), ctx, e))
    }

    /// Audit entries, oldest first, with a token for the next page.
    pub fn audit(&self, p: &AuditParams) -> Result<(Vec<pb::Change>, String), ApiError> {
        let kind = p.kind.map(kind_id);
        let (after_revision, after_seq) = parse_audit_token(&p.page_token)?;
        let q = AuditQuery {
            kind,
            name: (!p.name.is_empty()).then(|| p.name.clone()),
            principal: (!p.principal.is_empty()).then(|| p.principal.clone()),
            since_nanos: p.since_nanos,
            until_nanos: p.until_nanos,
            include_refused: p.include_refused,
            after_revision,
            after_seq,
            limit: page_size(p.page_size),
        };
        let page = self
            .store
            .audit(&q)
            .map_err(|e| crate::store_map::api_error("audit", "trail", e))?;
        let mut out = Vec::with_capacity(page.entries.len());
        for e in &page.entries {
            out.push(match e {
                AuditEntry::Accepted(c) => self.change_to_audit(c)?,
                AuditEntry::Refused(r) => refusal_to_audit(r),
            });
        }
        let next = match page.next {
            Some((rev, seq)) => audit_token(rev, seq),
            None => String::new(),
        };
        Ok((out, next))
    }

    fn change_to_audit(&self, c: &ChangeEntry) -> Result<pb::Change, ApiError> {
        let kind = kind_from_id(c.kind);
        let before = c
            .before
            .as_ref()
            .map(|b| self.view(kind, b, c.before_revision))
            .transpose()?;
        let after = c
            .after
            .as_ref()
            .map(|b| self.view(kind, b, c.revision))
            .transpose()?;
        Ok(pb::Change {
            revision: c.revision,
            time: Some(timestamp(c.meta.time_unix_nanos)),
            principal: c.meta.principal.clone(),
            verb: c.meta.verb.clone(),
            resource_kind: kind as i32,
            resource_name: c.name.clone(),
            resource_id: c.id.clone(),
            before,
            after,
            reason: c.meta.reason.clone(),
            ticket: c.meta.ticket.clone(),
            origin: c.meta.origin.clone(),
            outcome: pb::ChangeOutcome::Accepted as i32,
            message: String::new(),
            prev_hash: c.chain.map(|l| hex::encode(l.prev)).unwrap_or_default(),
            hash: c.chain.map(|l| hex::encode(l.hash)).unwrap_or_default(),
            seq: 0,
            change_set: c.meta.change_set,
            change_set_size: c.meta.change_set_size,
        })
    }
}

fn refusal_to_audit(r: &Refusal) -> pb::Change {
    pb::Change {
        revision: 0,
        time: Some(timestamp(r.meta.time_unix_nanos)),
        principal: r.meta.principal.clone(),
        verb: r.meta.verb.clone(),
        resource_kind: kind_from_id(r.kind) as i32,
        resource_name: r.name.clone(),
        reason: r.meta.reason.clone(),
        ticket: r.meta.ticket.clone(),
        origin: r.meta.origin.clone(),
        outcome: match r.refusal {
            RefusalKind::Rejected => pb::ChangeOutcome::Rejected as i32,
            RefusalKind::Denied => pb::ChangeOutcome::Denied as i32,
            RefusalKind::Accepted => pb::ChangeOutcome::Accepted as i32,
        },
        message: r.message.clone(),
        seq: r.seq,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_are_no_refusals_and_permission_is_denied() {
        assert_eq!(refusal_class(&ApiError::ShuttingDown), None);
        assert_eq!(refusal_class(&ApiError::Unavailable("disk".into())), None);
        assert_eq!(refusal_class(&ApiError::Internal("bug".into())), None);
        assert_eq!(
            refusal_class(&ApiError::PermissionDenied("no".into())),
            Some(RefusalKind::Denied)
        );
        assert_eq!(
            refusal_class(&ApiError::Unauthenticated("who".into())),
            Some(RefusalKind::Denied)
        );
        for e in [
            ApiError::invalid("name", "bad"),
            ApiError::Aborted("busy".into()),
            ApiError::OutOfRange("ahead".into()),
            ApiError::NotFound {
                kind: "device",
                name: "web-01".into(),
            },
        ] {
            assert_eq!(refusal_class(&e), Some(RefusalKind::Rejected), "{e}");
        }
        // Callers that record every failure keep recording outages as REJECTED.
        assert_eq!(
            refusal_kind(&ApiError::Internal("bug".into())),
            RefusalKind::Rejected
        );
    }
}
