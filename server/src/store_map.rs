//! How a store error becomes an API error. Kept out of `model` so the domain rules do not
//! depend on the persistence layer (ARCHITECTURE.md, "Invariants").

use crate::model::{ApiError, kind_from_id, kind_name};
use crate::store::StoreError;

/// Maps a store error for an operation on `kind`/`name`.
pub fn api_error(kind: &'static str, name: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::AlreadyExists(_) => ApiError::AlreadyExists {
            kind,
            name: name.into(),
        },
        StoreError::NotFound(_) => ApiError::NotFound {
            kind,
            name: name.into(),
        },
        StoreError::Conflict { expected, current } => ApiError::Conflict {
            kind,
            name: name.into(),
            expected,
            current,
        },
        StoreError::MissingReference {
            kind: other,
            name: missing,
        } => {
            let other = kind_name(kind_from_id(other));
            ApiError::FailedPrecondition(format!(
                "{kind} {name:?} refers to {other} {missing:?}, which does not exist"
            ))
        }
        StoreError::StillReferenced {
            count,
            kind: other,
            example,
        } => {
            let other = kind_name(kind_from_id(other));
            ApiError::FailedPrecondition(format!(
                "{kind} {name:?} is still referenced by {count} object(s) ({other} {example}); delete or move them first"
            ))
        }
        StoreError::AuxConflict => {
            ApiError::Aborted(format!("{kind} {name:?} was written concurrently; retry"))
        }
        StoreError::Corrupt(m) => ApiError::Internal(m),
        StoreError::Io(m) | StoreError::Locked(m) => ApiError::Unavailable(m),
    }
}
