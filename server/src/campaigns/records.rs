//! What the engine keeps durably, as auxiliary records under `cp/<campaign id>/` (the
//! Campaign resource itself holds spec and status and is an ordinary audited object):
//!
//! | key                         | value                                                       |
//! |-----------------------------|-------------------------------------------------------------|
//! | `cp/<id>/c`                 | [`CampaignRecord`]: state detail, authors, approvals, promotion, campaign transitions |
//! | `cp/<id>/h/<index, u32 BE>` | [`HostRecord`]: state, the durable intent of the step in flight, step history, transitions |
//! | `cp/<id>/o/<intent id>`     | [`OutputRecord`]: a step attempt's captured stdout/stderr    |
//!
//! Records are postcard-encoded enums whose tag is the version, never a domain type's serde
//! form: the domain's states are mirrored here and converted both ways.

use serde::{Deserialize, Serialize};

use super::executor::CapturedStream;
use crate::campaign::host::{HostState, Stage};
use crate::campaign::state::{CampaignState, HaltReason, PauseReason};
use crate::model::ApiError;

/// The aux key prefix of every campaign record (registered in `store/keys.rs`).
pub const PREFIX: &str = crate::aux_keys::CAMPAIGN_RECORDS;
/// Transitions kept per host record, and in the campaign record.
pub const MAX_HOST_TRANSITIONS: usize = 32;
pub const MAX_CAMPAIGN_TRANSITIONS: usize = 256;
/// Step attempts kept per host record.
pub const MAX_STEP_HISTORY: usize = 64;
/// Bytes of each stream kept in a host record's step history (the excerpt reports show).
pub const EXCERPT_BYTES: usize = 512;

pub fn campaign_key(id: &str) -> Vec<u8> {
    format!("{PREFIX}{id}/c").into_bytes()
}

pub fn hosts_prefix(id: &str) -> Vec<u8> {
    format!("{PREFIX}{id}/h/").into_bytes()
}

pub fn host_key(id: &str, index: usize) -> Vec<u8> {
    let mut k = hosts_prefix(id);
    k.extend_from_slice(&(index as u32).to_be_bytes());
    k
}

/// The host index of a `host_key`.
pub fn host_index(key: &[u8]) -> Option<usize> {
    let tail = key.get(key.len().checked_sub(4)?..)?;
    Some(u32::from_be_bytes(tail.try_into().ok()?) as usize)
}

pub fn output_key(id: &str, intent: &str) -> Vec<u8> {
    format!("{PREFIX}{id}/o/{intent}").into_bytes()
}

fn encode<T: Serialize>(v: &T, what: &str) -> Result<Vec<u8>, ApiError> {
    postcard::to_stdvec(v).map_err(|e| ApiError::Internal(format!("encoding {what}: {e}")))
}

fn decode<'a, T: Deserialize<'a>>(b: &'a [u8], what: &str) -> Result<T, ApiError> {
    postcard::from_bytes(b).map_err(|e| ApiError::Internal(format!("corrupt {what} record: {e}")))
}

/// Where a host's work is (mirrors `host::Stage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StageRec {
    Step(u32),
    Verify,
    Rollback(u32),
}

impl From<Stage> for StageRec {
    fn from(s: Stage) -> Self {
        match s {
            Stage::Step(i) => Self::Step(i),
            Stage::Verify => Self::Verify,
            Stage::Rollback(i) => Self::Rollback(i),
        }
    }
}

impl From<StageRec> for Stage {
    fn from(s: StageRec) -> Self {
        match s {
            StageRec::Step(i) => Self::Step(i),
            StageRec::Verify => Self::Verify,
            StageRec::Rollback(i) => Self::Rollback(i),
        }
    }
}

/// A host's state (mirrors `host::HostState`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostStateRec {
    Pending,
    Running(u32),
    Verifying,
    Succeeded,
    Failed(String, bool),
    RollingBack(u32, String),
    RolledBack(String),
    NeedsAttention(StageRec, bool, String),
    Skipped(String),
}

impl From<&HostState> for HostStateRec {
    fn from(s: &HostState) -> Self {
        match s {
            HostState::Pending => Self::Pending,
            HostState::Running { step } => Self::Running(*step),
            HostState::Verifying => Self::Verifying,
            HostState::Succeeded => Self::Succeeded,
            HostState::Failed {
                cause,
                rollback_due,
            } => Self::Failed(cause.clone(), *rollback_due),
            HostState::RollingBack { step, cause } => Self::RollingBack(*step, cause.clone()),
            HostState::RolledBack { cause } => Self::RolledBack(cause.clone()),
            HostState::NeedsAttention {
                stage,
                failed,
                message,
            } => Self::NeedsAttention((*stage).into(), *failed, message.clone()),
            HostState::Skipped { reason } => Self::Skipped(reason.clone()),
        }
    }
}

impl From<HostStateRec> for HostState {
    fn from(s: HostStateRec) -> Self {
        match s {
            HostStateRec::Pending => Self::Pending,
            HostStateRec::Running(step) => Self::Running { step },
            HostStateRec::Verifying => Self::Verifying,
            HostStateRec::Succeeded => Self::Succeeded,
            HostStateRec::Failed(cause, rollback_due) => Self::Failed {
                cause,
                rollback_due,
            },
            HostStateRec::RollingBack(step, cause) => Self::RollingBack { step, cause },
            HostStateRec::RolledBack(cause) => Self::RolledBack { cause },
            HostStateRec::NeedsAttention(stage, failed, message) => Self::NeedsAttention {
                stage: stage.into(),
                failed,
                message,
            },
            HostStateRec::Skipped(reason) => Self::Skipped { reason },
        }
    }
}

/// The write-ahead intent of one stage attempt, durable before its side effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub campaign: String,
    pub host: String,
    pub stage: StageRec,
    pub attempt: u32,
    pub intent_id: String,
    /// Unix seconds.
    pub deadline: i64,
    pub boot_before: String,
    /// Unix nanoseconds the stage began (observations count only reports after it).
    pub since_nanos: i64,
    /// The lease's fencing token when it was written.
    pub fence: u64,
    /// For a reboot: the executor returned success (the host came back on SSH); what is
    /// left is waiting for a report with a new boot id.
    pub reboot_done: bool,
}

/// One transition, for reports and postmortems.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionRec {
    pub at_nanos: i64,
    pub from: String,
    pub to: String,
    pub why: String,
    pub principal: String,
}

/// One finished stage attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRec {
    pub stage: StageRec,
    pub name: String,
    pub attempt: u32,
    pub intent_id: String,
    pub outcome: String,
    pub exit_code: i32,
    pub detail: String,
    pub started_nanos: i64,
    pub ended_nanos: i64,
    pub stdout: String,
    pub stderr: String,
}

/// Everything durable about one planned host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostData {
    pub state: HostStateRec,
    /// Attempts of the current stage (reruns after a crash, retries).
    pub attempt: u32,
    pub started_nanos: i64,
    pub finished_nanos: i64,
    /// When the last step ended: verification needs a report after it.
    pub last_step_end_nanos: i64,
    /// pb::Health when the host started (verification fails if it got worse).
    pub health_before: i32,
    pub intent: Option<Intent>,
    pub steps: Vec<StepRec>,
    pub transitions: Vec<TransitionRec>,
}

impl HostData {
    pub fn pending() -> Self {
        Self {
            state: HostStateRec::Pending,
            attempt: 0,
            started_nanos: 0,
            finished_nanos: 0,
            last_step_end_nanos: 0,
            health_before: 0,
            intent: None,
            steps: Vec::new(),
            transitions: Vec::new(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum HostRecord {
    V1(HostData),
}

pub fn encode_host(h: &HostData) -> Result<Vec<u8>, ApiError> {
    // Serialising through the versioned enum by reference would need a borrowed twin; the
    // clone is a few hundred bytes.
    encode(&HostRecord::V1(h.clone()), "campaign host")
}

pub fn decode_host(b: &[u8]) -> Result<HostData, ApiError> {
    match decode(b, "campaign host")? {
        HostRecord::V1(h) => Ok(h),
    }
}

/// Pause and halt reasons (mirrors `state::CampaignState`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateRec {
    Draft,
    AwaitingApproval,
    Scheduled,
    Running,
    PausedPerson(String),
    PausedWindow(Option<i64>),
    PausedPromotion,
    PausedAttention(String),
    HaltedBudget(u32, u32),
    HaltedCanary(String),
    HaltedSoak(String, String),
    Completed,
    Aborted,
}

impl From<&CampaignState> for StateRec {
    fn from(s: &CampaignState) -> Self {
        use CampaignState as S;
        match s {
            S::Draft => Self::Draft,
            S::AwaitingApproval => Self::AwaitingApproval,
            S::Scheduled => Self::Scheduled,
            S::Running => Self::Running,
            S::Paused(PauseReason::Person(p)) => Self::PausedPerson(p.clone()),
            S::Paused(PauseReason::WindowClosed { until }) => Self::PausedWindow(*until),
            S::Paused(PauseReason::AwaitingPromotion) => Self::PausedPromotion,
            S::Paused(PauseReason::NeedsAttention(m)) => Self::PausedAttention(m.clone()),
            S::Halted(HaltReason::Budget { charged, allowed }) => {
                Self::HaltedBudget(*charged, *allowed)
            }
            S::Halted(HaltReason::CanaryFailed { host }) => Self::HaltedCanary(host.clone()),
            S::Halted(HaltReason::DirtySoak { host, why }) => {
                Self::HaltedSoak(host.clone(), why.clone())
            }
            S::Completed => Self::Completed,
            S::Aborted => Self::Aborted,
        }
    }
}

impl From<StateRec> for CampaignState {
    fn from(s: StateRec) -> Self {
        use CampaignState as S;
        match s {
            StateRec::Draft => S::Draft,
            StateRec::AwaitingApproval => S::AwaitingApproval,
            StateRec::Scheduled => S::Scheduled,
            StateRec::Running => S::Running,
            StateRec::PausedPerson(p) => S::Paused(PauseReason::Person(p)),
            StateRec::PausedWindow(until) => S::Paused(PauseReason::WindowClosed { until }),
            StateRec::PausedPromotion => S::Paused(PauseReason::AwaitingPromotion),
            StateRec::PausedAttention(m) => S::Paused(PauseReason::NeedsAttention(m)),
            StateRec::HaltedBudget(charged, allowed) => {
                S::Halted(HaltReason::Budget { charged, allowed })
            }
            StateRec::HaltedCanary(host) => S::Halted(HaltReason::CanaryFailed { host }),
            StateRec::HaltedSoak(host, why) => S::Halted(HaltReason::DirtySoak { host, why }),
            StateRec::Completed => S::Completed,
            StateRec::Aborted => S::Aborted,
        }
    }
}

/// A canary's soak evidence (mirrors `soak::CanarySoak`, reports reduced to what it judges).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SoakRec {
    pub host: String,
    pub verified_at: i64,
    pub boot_id: String,
    pub health_reasons: Vec<String>,
    pub drift: Vec<String>,
    /// Each fresh report seen.
    pub reports: Vec<SoakReportRec>,
}

/// One fresh report during the soak: (at, boot id, health reasons, drift, verify ok).
pub type SoakReportRec = (i64, String, Vec<String>, Vec<String>, bool);

/// The campaign's own durable state beyond its resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignData {
    pub state: StateRec,
    pub authors: Vec<String>,
    /// (approver, digest).
    pub approvals: Vec<(String, String)>,
    pub promoted: bool,
    pub promoted_by: String,
    pub soak: Vec<SoakRec>,
    pub transitions: Vec<TransitionRec>,
}

#[derive(Debug, Serialize, Deserialize)]
enum CampaignRecord {
    V1(CampaignData),
}

pub fn encode_campaign(c: &CampaignData) -> Result<Vec<u8>, ApiError> {
    encode(&CampaignRecord::V1(c.clone()), "campaign")
}

pub fn decode_campaign(b: &[u8]) -> Result<CampaignData, ApiError> {
    match decode(b, "campaign")? {
        CampaignRecord::V1(c) => Ok(c),
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum OutputRecord {
    V1 {
        stdout: (Vec<u8>, Vec<u8>, u64),
        stderr: (Vec<u8>, Vec<u8>, u64),
    },
}

pub fn encode_output(
    stdout: &CapturedStream,
    stderr: &CapturedStream,
) -> Result<Vec<u8>, ApiError> {
    let t = |c: &CapturedStream| (c.head.clone(), c.tail.clone(), c.truncated_bytes);
    encode(
        &OutputRecord::V1 {
            stdout: t(stdout),
            stderr: t(stderr),
        },
        "step output",
    )
}

pub fn decode_output(b: &[u8]) -> Result<(CapturedStream, CapturedStream), ApiError> {
    let c = |(head, tail, truncated): (Vec<u8>, Vec<u8>, u64)| CapturedStream {
        total_bytes: (head.len() + tail.len()) as u64 + truncated,
        head,
        tail,
        truncated_bytes: truncated,
    };
    match decode(b, "step output")? {
        OutputRecord::V1 { stdout, stderr } => Ok((c(stdout), c(stderr))),
    }
}

/// Appends, keeping the newest `max`.
pub fn push_bounded<T>(v: &mut Vec<T>, item: T, max: usize) {
    v.push(item);
    if v.len() > max {
        let drop = v.len() - max;
        v.drain(..drop);
    }
}
