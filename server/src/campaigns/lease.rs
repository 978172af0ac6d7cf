//! The campaign lease: the engine dispatches side effects only while it holds it. On one
//! server it is always held; a replicated musterd (etcd) will implement it as a fenced lease
//! whose token rides with every intent, so a deposed leader's late writes can be refused.

use std::fmt::Debug;

/// A lease on running campaigns.
pub trait CampaignLease: Send + Sync + Debug + 'static {
    /// The fencing token while the lease is held, None otherwise. Checked before every
    /// dispatch; a change of token means another holder may have acted in between.
    fn token(&self) -> Option<u64>;
}

/// The single-node lease: always held, token 1.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleNodeLease;

impl CampaignLease for SingleNodeLease {
    fn token(&self) -> Option<u64> {
        Some(1)
    }
}
