//! A campaign spec as the domain uses it: validated, defaults filled in, durations in seconds.
//! Built from `pb::CampaignSpec` by `TryFrom` (field rules) and [`CampaignSpec::parse`] (plus
//! the window names, which need the calendar). Validation lives in `validate.rs`.

use muster::pb;
use muster::selector::Selector;

/// Longest command of an `ssh` step.
pub const MAX_COMMAND_BYTES: usize = 16 * 1024;
/// Steps in `steps`, and in `rollback`.
pub const MAX_STEPS: usize = 64;
/// Longest timeout of one step, or of verification.
pub const MAX_STEP_TIMEOUT_SECONDS: i64 = 24 * 3600;
/// Longest canary soak and batch pause.
pub const MAX_PAUSE_SECONDS: i64 = 7 * 24 * 3600;
/// Longest window margin.
pub const MAX_MARGIN_SECONDS: i64 = 24 * 3600;
/// Named canaries, windows, approvers.
pub const MAX_NAMED: usize = 64;
/// Largest concurrency, cap, count or required approvals accepted (beyond is a typo).
pub const MAX_COUNT: u32 = 100_000;
/// Most approvals a policy may require.
pub const MAX_REQUIRED_APPROVALS: u32 = 16;
/// Longest step name.
pub const MAX_STEP_NAME: usize = 63;
/// Longest description.
pub const MAX_DESCRIPTION_BYTES: usize = 4096;
/// Default verification timeout (notes §4.8).
pub const DEFAULT_VERIFY_TIMEOUT_SECONDS: i64 = 15 * 60;
/// Default margin a window must stay open beyond a host's worst case (notes §4.5).
pub const DEFAULT_MARGIN_SECONDS: i64 = 5 * 60;
/// Default and minimum fresh reports per canary during the soak.
pub const MIN_SOAK_REPORTS: u32 = 2;

/// A validated campaign spec.
#[derive(Debug, Clone)]
pub struct CampaignSpec {
    /// The target selector as written (the digest uses the pb form).
    pub selector_text: String,
    pub selector: Selector,
    /// The desired-state change; None when the campaign carries none.
    pub desired: Option<pb::DesiredState>,
    pub steps: Vec<Step>,
    pub verify: Vec<pb::ExpectRule>,
    pub rollback: Vec<Step>,
    pub strategy: Strategy,
    /// Maintenance windows the campaign may use; empty: any window selecting the host.
    pub windows: Vec<String>,
    /// No maintenance window needed (freezes still apply).
    pub any_time: bool,
    pub approval: ApprovalPolicy,
    pub verify_timeout: i64,
    pub window_margin: i64,
    /// Hosts that cannot finish before this (Unix seconds) are skipped at plan time.
    pub deadline: Option<i64>,
}

impl CampaignSpec {
    /// Worst-case duration of one host: every step, verification and every rollback step at
    /// its timeout, plus the margin. A host started inside a window this long can never
    /// legally overrun it, even when it fails on its last step and rolls back.
    pub fn host_estimate(&self) -> i64 {
        self.remaining_estimate(0)
    }

    /// The same from step `from` on (per-step window re-check).
    pub fn remaining_estimate(&self, from: usize) -> i64 {
        let steps: i64 = self.steps.iter().skip(from).map(|s| s.timeout).sum();
        let rollback: i64 = self.rollback.iter().map(|s| s.timeout).sum();
        steps + self.verify_timeout + rollback + self.window_margin
    }
}

/// One step of `steps` or `rollback`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// As given, or `KIND-N` (1-based).
    pub name: String,
    pub action: StepAction,
    /// Seconds; always > 0.
    pub timeout: i64,
    /// Safe to rerun after a crash interrupted it.
    pub idempotent: bool,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepAction {
    /// Run this command over SSH (never templated: sent as written).
    Ssh(String),
    /// Reboot, then wait for SSH with the pinned key and a report with a new boot id.
    Reboot,
    /// Wait until an agent report satisfies this rule.
    WaitReport(pb::ExpectRule),
}

impl StepAction {
    /// The kind's name as the manifest writes it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Ssh(_) => "ssh",
            Self::Reboot => "reboot",
            Self::WaitReport(_) => "wait_report",
        }
    }
}

/// A number of hosts, absolute or as a percentage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Hosts(u32),
    /// 1-100.
    Percent(u32),
}

/// How canaries are chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Canaries {
    None,
    Named(Vec<String>),
    /// This many, spread across racks.
    Count(u32),
}

/// Whether concurrency shrinks with failures so the budget can overshoot by at most one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tolerance {
    Strict,
    Soft,
}

/// Topology caps: at most this many hosts disrupted at once per group (None: no cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Caps {
    pub rack: Option<u32>,
    pub switch: Option<u32>,
    pub role: Option<u32>,
    pub hypervisor: Option<u32>,
}

/// Canaries, waves, concurrency, budget, caps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Strategy {
    pub canaries: Canaries,
    pub canary_soak: i64,
    pub canary_concurrency: u32,
    pub soak_reports: u32,
    /// None: one wave.
    pub batch: Option<Amount>,
    /// 0: the wave's size.
    pub max_concurrency: u32,
    /// Failures allowed (unset: 0, halt on the first).
    pub budget: Amount,
    pub caps: Caps,
    pub batch_pause: i64,
    pub tolerance: Tolerance,
}

/// Who must approve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalPolicy {
    /// Principals, or roles written `role:NAME`; empty: anyone holding the approve permission.
    pub approvers: Vec<String>,
    /// Distinct approvals needed (at least 1).
    pub required: u32,
    /// Continue after a clean canary by itself, instead of waiting for a non-author promote.
    pub auto_promote: bool,
}
