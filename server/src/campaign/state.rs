//! The campaign's state machine as a pure transition function over a closed event enum.
//!
//! ```text
//! DRAFT ─submit→ AWAITING_APPROVAL ─approvals complete→ SCHEDULED ─start→ RUNNING
//!   ↑────────────── edit (approvals dropped) ───────────────┘            ⇅ pause / resume, promote
//! RUNNING ─halt→ HALTED (in-flight hosts drain)                        PAUSED(reason)
//! RUNNING ─complete→ COMPLETED;  any non-terminal ─abort→ ABORTED
//! ```
//! A wrong-state event is FAILED_PRECONDITION with a message saying what state forbids it.

use muster::pb;

use super::error::CampaignError;

/// Why a campaign is paused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PauseReason {
    /// A person paused it.
    Person(String),
    /// Nothing can start until the next fitting window; resumes by itself at `until`.
    WindowClosed { until: Option<i64> },
    /// Canaries passed; a non-author must promote (auto_after_clean_canary off).
    AwaitingPromotion,
    /// A host's outcome is unknown (e.g. after a crash); a person must look.
    NeedsAttention(String),
}

/// Why a campaign halted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HaltReason {
    /// Failures (plus unknown outcomes) exceeded the budget.
    Budget {
        charged: u32,
        allowed: u32,
    },
    CanaryFailed {
        host: String,
    },
    /// The soak saw new health reasons, new drift, a reboot or missing reports.
    DirtySoak {
        host: String,
        why: String,
    },
}

/// A campaign's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CampaignState {
    Draft,
    AwaitingApproval,
    Scheduled,
    Running,
    Paused(PauseReason),
    Halted(HaltReason),
    Completed,
    Aborted,
}

/// Who resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resumer {
    Person(String),
    /// The engine, because the window it waited for opened.
    Window,
}

/// Everything that moves a campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CampaignEvent {
    /// The plan is frozen and shown; approvals may be collected.
    Submit,
    /// The required approvals (bound to the current digest) are in.
    ApprovalsComplete,
    /// The spec changed: approvals are dropped, the plan must be frozen again.
    Edit,
    Start,
    Pause(PauseReason),
    Resume(Resumer),
    /// A non-author approver (or auto-promotion) lets the campaign leave the canary phase.
    Promote,
    Halt(HaltReason),
    /// Every host terminal and the budget held.
    Complete,
    Abort,
}

impl CampaignState {
    /// COMPLETED or ABORTED: nothing moves it any more.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Completed | Self::Aborted)
    }

    /// The wire enum.
    pub fn to_pb(&self) -> pb::CampaignState {
        match self {
            Self::Draft => pb::CampaignState::Draft,
            Self::AwaitingApproval => pb::CampaignState::AwaitingApproval,
            Self::Scheduled => pb::CampaignState::Scheduled,
            Self::Running => pb::CampaignState::Running,
            Self::Paused(_) => pb::CampaignState::Paused,
            Self::Halted(_) => pb::CampaignState::Halted,
            Self::Completed => pb::CampaignState::Completed,
            Self::Aborted => pb::CampaignState::Aborted,
        }
    }

    fn name(&self) -> &'static str {
        self.to_pb().as_str_name()
    }
}

fn refuse(msg: String) -> Result<CampaignState, CampaignError> {
    Err(CampaignError::precondition(msg))
}

/// The next state, or FAILED_PRECONDITION.
pub fn apply(state: &CampaignState, event: CampaignEvent) -> Result<CampaignState, CampaignError> {
    use CampaignEvent as E;
    use CampaignState as S;
    let name = state.name();
    match (state, event) {
        (s, _) if s.is_terminal() => {
            refuse(format!("the campaign is {name}; nothing can change it"))
        }
        (_, E::Abort) => Ok(S::Aborted),
        (S::Draft, E::Submit) => Ok(S::AwaitingApproval),
        (S::AwaitingApproval, E::ApprovalsComplete) => Ok(S::Scheduled),
        (S::Draft | S::AwaitingApproval | S::Scheduled, E::Edit) => Ok(S::Draft),
        (_, E::Edit) => refuse(format!(
            "the campaign is {name}: its spec can no longer change; abort it and create a new one"
        )),
        (S::Scheduled, E::Start) => Ok(S::Running),
        (S::Draft | S::AwaitingApproval, E::Start) => refuse(format!(
            "the campaign is {name}: it needs its approvals before it can start"
        )),
        (S::Running, E::Pause(r)) => Ok(S::Paused(r)),
        (S::Paused(PauseReason::WindowClosed { .. }), E::Pause(r)) => Ok(S::Paused(r)),
        (S::Paused(PauseReason::AwaitingPromotion), E::Promote) => Ok(S::Running),
        (_, E::Promote) => refuse(format!("the campaign is {name}, not awaiting promotion")),
        (S::Paused(PauseReason::AwaitingPromotion), E::Resume(_)) => refuse(
            "the campaign awaits promotion after its canaries: promote it (a non-author approver)"
                .into(),
        ),
        (S::Paused(PauseReason::WindowClosed { .. }), E::Resume(_)) => Ok(S::Running),
        (S::Paused(_), E::Resume(Resumer::Person(_))) => Ok(S::Running),
        (S::Paused(_), E::Resume(Resumer::Window)) => refuse(
            "paused by a person or for attention: a window opening does not resume it".into(),
        ),
        (S::Halted(HaltReason::Budget { charged, allowed }), E::Resume(_)) => refuse(format!(
            "halted: {charged} failures exceed the budget of {allowed}; abort and create a new campaign"
        )),
        (S::Halted(_), E::Resume(Resumer::Person(_))) => Ok(S::Running),
        (S::Running | S::Paused(_), E::Halt(r)) => Ok(S::Halted(r)),
        (S::Running, E::Complete) => Ok(S::Completed),
        (_, E::Resume(_)) => refuse(format!("the campaign is {name}, not paused or halted")),
        (_, e) => {
            let ev = format!("{e:?}");
            let ev = ev.split(['(', ' ']).next().unwrap_or_default().to_string();
            refuse(format!("the campaign is {name}: {ev} does not apply"))
        }
    }
}
