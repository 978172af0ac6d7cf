//! The service layer's error: every refusal a client can receive, before it becomes a gRPC
//! status in exactly one place (`grpc::status`).

use thiserror::Error;

/// Why a request was refused or failed. Messages are for the operator and never carry
/// internals; `Internal` and `Unavailable` details are logged, not sent.
#[derive(Debug, Error)]
pub enum ApiError {
    #[error("{field}: {problem}")]
    InvalidArgument { field: String, problem: String },
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    #[error("{kind} {name:?} already exists")]
    AlreadyExists { kind: &'static str, name: String },
    #[error(
        "{kind} {name:?} was changed concurrently: expected revision {expected}, current {current}; re-read and retry"
    )]
    Conflict {
        kind: &'static str,
        name: String,
        expected: u64,
        current: u64,
    },
    #[error("{0}")]
    FailedPrecondition(String),
    /// A concurrent write won a race the caller cannot resolve by itself.
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    OutOfRange(String),
    /// The server is stopping; clients should retry (a watch resumes from its last revision).
    #[error("the server is shutting down; retry, resuming from the last revision seen")]
    ShuttingDown,
    /// The store cannot persist; the detail is logged.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A bug or corrupt data; the detail is logged.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// An invalid field.
    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        ApiError::InvalidArgument {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl From<muster::names::InvalidField> for ApiError {
    fn from(e: muster::names::InvalidField) -> Self {
        ApiError::InvalidArgument {
            field: e.field,
            problem: e.problem,
        }
    }
}
