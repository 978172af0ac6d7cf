//! How a store error becomes an API error. Kept out of `model` so the domain rules do not
//! depend on the persistence layer (ARCHITECTURE.md, "Invariants").

use crate::model::{ApiError, kind_from_id, kind_name};
use crate::store::StoreError;

/// Maps a store error for an operation on `kind`/`name`. A caller without a name at hand
/// (`""`) gets the one the store reports, so a not-found always names the resource.
pub fn api_error(kind: &'static str, name: &str, e: StoreError) -> ApiError {
    let named = |stored: String| if name.is_empty() { stored } else { name.into() };
    match e {
        StoreError::AlreadyExists(n) => ApiError::AlreadyExists {
            kind,
            name: named(n),
        },
        StoreError::NotFound(n) => ApiError::NotFound {
            kind,
            name: named(n),
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

/// Maps a store error on auxiliary records that are not a resource (enrollment records, the
/// identity table): `what` names them. Only contention and the store's own failures can
/// happen there; anything else is a bug, reported as internal rather than as a nameless
/// "not found".
pub fn aux_error(what: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::AuxConflict => {
            ApiError::Aborted(format!("{what} were written concurrently; retry"))
        }
        StoreError::Corrupt(m) => ApiError::Internal(format!("{what}: {m}")),
        StoreError::Io(m) | StoreError::Locked(m) => ApiError::Unavailable(m),
        other @ (StoreError::AlreadyExists(_)
        | StoreError::NotFound(_)
        | StoreError::Conflict { .. }
        | StoreError::MissingReference { .. }
        | StoreError::StillReferenced { .. }) => {
            ApiError::Internal(format!("{what}: unexpected store answer: {other}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_not_found_always_names_the_resource() {
        let e = api_error("device", "", StoreError::NotFound("web-01".into()));
        assert_eq!(e.to_string(), "device \"web-01\" not found");
        let e = api_error("device", "web-02", StoreError::NotFound("web-01".into()));
        assert_eq!(e.to_string(), "device \"web-02\" not found");
    }

    #[test]
    fn contention_is_aborted_not_an_outage() {
        assert!(matches!(
            api_error("device", "web-01", StoreError::AuxConflict),
            ApiError::Aborted(_)
        ));
        assert!(matches!(
            api_error(
                "device",
                "web-01",
                StoreError::Conflict {
                    expected: 1,
                    current: 2
                }
            ),
            ApiError::Conflict { .. }
        ));
    }

    #[test]
    fn contention_is_aborted_and_not_found_names_the_resource() {
        let e = api_error("device", "web-01", StoreError::AuxConflict);
        assert!(
            matches!(e, ApiError::Aborted(ref m) if m.contains("web-01")),
            "{e}"
        );
        let e = api_error("device", "web-01", StoreError::NotFound(String::new()));
        assert_eq!(e.to_string(), "device \"web-01\" not found");
        let e = aux_error("enrollment records", StoreError::AuxConflict);
        assert!(matches!(e, ApiError::Aborted(ref m) if m.contains("enrollment records")));
        let e = aux_error("enrollment records", StoreError::NotFound(String::new()));
        assert!(matches!(e, ApiError::Internal(_)), "{e}");
        assert!(matches!(
            aux_error("x", StoreError::Io("disk".into())),
            ApiError::Unavailable(_)
        ));
    }
}
