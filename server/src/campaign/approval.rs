//! Four-eyes approval. The required number of distinct approvers, none of whom wrote or edited
//! the campaign; each approval is bound to the digest of spec + frozen plan, so an edit or a
//! re-plan (new digest) leaves old approvals worthless: [`Approvals::edited`] drops them.
//! Fails closed: an approval for another digest, a second approval by the same person, or one
//! by someone the policy does not list is refused (Rudder's self-validation lesson).
//! Who holds the approve *permission* is checked by the handler; this decides the rest.

use std::collections::BTreeSet;

use super::error::CampaignError;
use super::spec::ApprovalPolicy;

/// The person acting, with the roles they hold (for `role:NAME` approvers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    pub roles: Vec<String>,
}

/// One approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub by: String,
    pub digest: String,
}

/// Who authored the campaign and who approved which digest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Approvals {
    /// The creator and every editor.
    pub authors: BTreeSet<String>,
    pub approvals: Vec<Approval>,
}

/// What an accepted approval leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalOutcome {
    /// More approvals needed: this many.
    Pending(u32),
    /// The required approvals are in: the campaign may become SCHEDULED.
    Complete,
}

fn listed(policy: &ApprovalPolicy, actor: &Actor) -> bool {
    policy.approvers.is_empty()
        || policy
            .approvers
            .iter()
            .any(|a| match a.strip_prefix("role:") {
                Some(role) => actor.roles.iter().any(|r| r == role),
                None => *a == actor.name,
            })
}

impl Approvals {
    /// A new campaign written by `author`.
    pub fn new(author: &str) -> Self {
        Self {
            authors: [author.to_string()].into(),
            approvals: vec![],
        }
    }

    /// The spec was edited by `editor`: they become an author, every approval is dropped.
    pub fn edited(&mut self, editor: &str) {
        self.authors.insert(editor.to_string());
        self.approvals.clear();
    }

    /// Approvals bound to `digest`.
    pub fn valid(&self, digest: &str) -> usize {
        self.approvals.iter().filter(|a| a.digest == digest).count()
    }

    /// Records `actor`'s approval of `digest` (what they saw) against the campaign's current
    /// digest. FAILED_PRECONDITION for an author, someone not listed, a repeat, or a stale
    /// digest.
    pub fn approve(
        &mut self,
        policy: &ApprovalPolicy,
        actor: &Actor,
        approved_digest: &str,
        current_digest: &str,
    ) -> Result<ApprovalOutcome, CampaignError> {
        check_not_author(self, actor, "approve")?;
        if !listed(policy, actor) {
            return Err(CampaignError::precondition(format!(
                "{} is not among this campaign's approvers ({})",
                actor.name,
                policy.approvers.join(", ")
            )));
        }
        if approved_digest != current_digest {
            return Err(CampaignError::precondition(format!(
                "the campaign changed since it was shown: approved digest {approved_digest} is not the current {current_digest}; review the plan again"
            )));
        }
        self.approvals.retain(|a| a.digest == current_digest);
        if self.approvals.iter().any(|a| a.by == actor.name) {
            return Err(CampaignError::precondition(format!(
                "{} has already approved this campaign; approvals must come from different people",
                actor.name
            )));
        }
        self.approvals.push(Approval {
            by: actor.name.clone(),
            digest: current_digest.to_string(),
        });
        let have = self.approvals.len() as u32;
        Ok(if have >= policy.required {
            ApprovalOutcome::Complete
        } else {
            ApprovalOutcome::Pending(policy.required - have)
        })
    }

    /// Whether `actor` may promote after the canaries (or resume a canary halt): a listed
    /// approver who is not an author.
    pub fn check_promoter(
        &self,
        policy: &ApprovalPolicy,
        actor: &Actor,
    ) -> Result<(), CampaignError> {
        check_not_author(self, actor, "promote")?;
        if !listed(policy, actor) {
            return Err(CampaignError::precondition(format!(
                "{} is not among this campaign's approvers",
                actor.name
            )));
        }
        Ok(())
    }
}

fn check_not_author(a: &Approvals, actor: &Actor, verb: &str) -> Result<(), CampaignError> {
    if a.authors.contains(&actor.name) {
        return Err(CampaignError::precondition(format!(
            "{} wrote or edited this campaign and cannot {verb} it (four-eyes rule)",
            actor.name
        )));
    }
    Ok(())
}
