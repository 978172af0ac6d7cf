//! The failure budget: how many failures are *allowed*. A campaign halts when failures
//! (plus hosts whose outcome is unknown) **exceed** it, so 0 halts on the first failure and 3
//! on the fourth (SSM MaxErrors, Ansible, Argo: strict `>`). A percentage is of the planned
//! hosts (canaries included), rounded down with no minimum: 10 % of 5 hosts allows 0.
//! Counted over the whole campaign; skipped hosts and canaries never count (a canary failure
//! halts by itself).

use super::spec::{Amount, Tolerance};

/// Failures allowed for `hosts` planned hosts.
pub fn allowed(budget: Amount, hosts: u32) -> u32 {
    match budget {
        Amount::Hosts(n) => n,
        Amount::Percent(p) => (u64::from(p) * u64::from(hosts) / 100) as u32,
    }
}

/// The failure number that halts the campaign ("halts at the 4th failed host").
pub fn trip_point(allowed: u32) -> u32 {
    allowed.saturating_add(1)
}

/// Failures and unknown outcomes so far, among non-canary hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tally {
    /// FAILED, ROLLING_BACK, ROLLED_BACK.
    pub failures: u32,
    /// NEEDS_ATTENTION: counted with failures for the halt test.
    pub unknown: u32,
}

impl Tally {
    /// Failures plus unknown outcomes.
    pub fn charged(&self) -> u32 {
        self.failures.saturating_add(self.unknown)
    }
}

/// Whether the budget is exceeded: the campaign must halt.
pub fn exceeded(allowed: u32, tally: Tally) -> bool {
    tally.charged() > allowed
}

/// How many hosts of the current wave may be in flight at once (in-flight hosts included).
///
/// Strict (default, CloudFormation STRICT_FAILURE_TOLERANCE): `min(max_concurrency, wave
/// remaining, allowed − failures − unknown + 1)`, so even if every host in flight fails,
/// failures end at most at `allowed + 1`. Soft: `min(max_concurrency, wave remaining)`.
/// `max_concurrency` 0 means the wave's size. 0 once the budget is exceeded.
pub fn effective_concurrency(
    max_concurrency: u32,
    wave_remaining: u32,
    allowed: u32,
    tally: Tally,
    tolerance: Tolerance,
) -> u32 {
    if exceeded(allowed, tally) {
        return 0;
    }
    let max = if max_concurrency == 0 {
        wave_remaining
    } else {
        max_concurrency.min(wave_remaining)
    };
    match tolerance {
        Tolerance::Soft => max,
        Tolerance::Strict => max.min(allowed - tally.charged() + 1),
    }
}
