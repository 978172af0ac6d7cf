//! The one place where errors become gRPC statuses.

use tonic::{Code, Status};

use crate::model::ApiError;

/// Maps a domain error to a status. Internal details are logged here and replaced by a
/// generic message, so clients never see paths, sled errors or stack traces.
pub fn to_status(e: ApiError) -> Status {
    let code = match &e {
        ApiError::InvalidArgument { .. } => Code::InvalidArgument,
        ApiError::NotFound { .. } => Code::NotFound,
        ApiError::AlreadyExists { .. } => Code::AlreadyExists,
        ApiError::Conflict { .. } | ApiError::Aborted(_) => Code::Aborted,
        ApiError::FailedPrecondition(_) => Code::FailedPrecondition,
        ApiError::Unauthenticated(_) => Code::Unauthenticated,
        ApiError::PermissionDenied(_) => Code::PermissionDenied,
        ApiError::ResourceExhausted(_) => Code::ResourceExhausted,
        ApiError::Unimplemented(_) => Code::Unimplemented,
        ApiError::OutOfRange(_) => Code::OutOfRange,
        ApiError::ShuttingDown => Code::Unavailable,
        ApiError::Unavailable(detail) => {
            tracing::error!(%detail, "store unavailable");
            return Status::unavailable("the store cannot persist right now; retry later");
        }
        ApiError::Internal(detail) => {
            tracing::error!(%detail, "internal error");
            return Status::internal("internal error; see the server log");
        }
    };
    Status::new(code, e.to_string())
}
