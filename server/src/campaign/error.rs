//! The campaign layer's one error enum: bad input (INVALID_ARGUMENT, naming the field) or a
//! right request at the wrong moment (FAILED_PRECONDITION, saying what state forbids it).

use muster::names::InvalidField;
use thiserror::Error;

use crate::model::ApiError;

/// Why a campaign request was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CampaignError {
    /// The spec (or a value derived from it, like the plan) is wrong: `field` is its path.
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
    /// The action does not fit the campaign's or host's state, or the actor may not take it
    /// here (an author approving their own campaign).
    #[error("{0}")]
    Precondition(String),
}

impl CampaignError {
    /// An invalid field.
    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// A refusal because of the current state.
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::Precondition(message.into())
    }

    /// The field at fault, for invalid input.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid { field, .. } => Some(field),
            Self::Precondition(_) => None,
        }
    }
}

impl From<InvalidField> for CampaignError {
    fn from(e: InvalidField) -> Self {
        Self::Invalid {
            field: e.field,
            problem: e.problem,
        }
    }
}

impl From<CampaignError> for ApiError {
    fn from(e: CampaignError) -> Self {
        match e {
            CampaignError::Invalid { field, problem } => {
                ApiError::InvalidArgument { field, problem }
            }
            CampaignError::Precondition(m) => ApiError::FailedPrecondition(m),
        }
    }
}
