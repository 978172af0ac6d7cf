use crate::campaign::approval::{Actor, ApprovalOutcome, Approvals};
use crate::campaign::error::CampaignError;
use crate::campaign::spec::ApprovalPolicy;

fn actor(name: &str, roles: &[&str]) -> Actor {
    Actor {
        name: name.into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
    }
}

fn policy(approvers: &[&str], required: u32) -> ApprovalPolicy {
    ApprovalPolicy {
        approvers: approvers.iter().map(|a| a.to_string()).collect(),
        required,
        auto_promote: false,
    }
}

#[test]
fn approval_matrix() {
    let pol = policy(&["bob", "role:sre"], 2);
    let mut a = Approvals::new("ann");
    let deny = |r: Result<ApprovalOutcome, CampaignError>| {
        matches!(r, Err(CampaignError::Precondition(_)))
    };
    assert!(
        deny(a.approve(&pol, &actor("ann", &["sre"]), "d1", "d1")),
        "the author"
    );
    assert!(
        deny(a.approve(&pol, &actor("eve", &[]), "d1", "d1")),
        "not listed"
    );
    assert!(
        deny(a.approve(&pol, &actor("bob", &[]), "d0", "d1")),
        "a stale digest"
    );
    assert_eq!(
        a.approve(&pol, &actor("bob", &[]), "d1", "d1").unwrap(),
        ApprovalOutcome::Pending(1)
    );
    assert!(
        deny(a.approve(&pol, &actor("bob", &[]), "d1", "d1")),
        "twice"
    );
    // An edit: the editor becomes an author, approvals are dropped.
    a.edited("carl");
    assert_eq!(a.valid("d1"), 0);
    assert!(
        deny(a.approve(&pol, &actor("carl", &["sre"]), "d2", "d2")),
        "an editor"
    );
    assert_eq!(
        a.approve(&pol, &actor("bob", &[]), "d2", "d2").unwrap(),
        ApprovalOutcome::Pending(1)
    );
    assert_eq!(
        a.approve(&pol, &actor("dora", &["sre"]), "d2", "d2")
            .unwrap(),
        ApprovalOutcome::Complete
    );
    // Promotion: a listed non-author.
    assert!(a.check_promoter(&pol, &actor("ann", &["sre"])).is_err());
    assert!(a.check_promoter(&pol, &actor("eve", &[])).is_err());
    assert!(a.check_promoter(&pol, &actor("dora", &["sre"])).is_ok());
}

#[test]
fn approvals_for_an_old_digest_do_not_count_towards_a_new_one() {
    let pol = policy(&[], 2);
    let mut a = Approvals::new("ann");
    a.approve(&pol, &actor("bob", &[]), "d1", "d1").unwrap();
    // The plan was re-frozen (d2) without an edit event: bob's d1 approval is worthless.
    assert_eq!(
        a.approve(&pol, &actor("dora", &[]), "d2", "d2").unwrap(),
        ApprovalOutcome::Pending(1)
    );
}
