//! Token scopes: what a scoped operator token may write.
//!
//! A scope is a label selector (`team=pay`). A scoped token may write only
//! - devices and credentials whose labels match the scope, checked on the stored version AND
//!   on the new one, so a host can be neither relabelled out of scope nor pulled into it;
//! - profiles whose selector contains every requirement of the scope, word for word: then every
//!   device the profile can select is inside the scope (the simplest rule that is sound);
//!
//! and nothing of any other kind. A device written by a scoped token may refer only to
//! credentials and parent devices inside the scope. Reads are never limited.

use muster::pb::{self, ResourceKind, resource::Resource as R};
use muster::selector::Selector;

use crate::inventory::{Inventory, store_error};
use crate::model::resource::{self, kind_of};
use crate::model::{ApiError, Principal, kind_id, kind_name};

/// Checks that `who` may write `r` (a stored version or a new one); Ok for unscoped tokens.
pub fn check(who: &Principal, r: &pb::Resource) -> Result<(), ApiError> {
    let Some(scope) = &who.scope else {
        return Ok(());
    };
    let kind = kind_of(r).unwrap_or_default();
    let name = r.name();
    let outside = |what: String| {
        ApiError::PermissionDenied(format!(
            "token {} is scoped to {scope}; {} {name} ({what}) is outside it",
            who.name,
            kind_name(kind)
        ))
    };
    match r.resource.as_ref() {
        Some(R::Device(_) | R::Credential(_)) => {
            let labels = r.meta().map(|m| &m.labels);
            let get = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
            if scope.matches(get) {
                Ok(())
            } else {
                Err(outside(relevant_labels(scope, get)))
            }
        }
        Some(R::Profile(p)) => {
            let inside = Selector::parse(&p.selector).is_ok_and(|sel| {
                scope
                    .requirements
                    .iter()
                    .all(|req| sel.requirements.contains(req))
            });
            if inside {
                Ok(())
            } else {
                let shown = if p.selector.is_empty() {
                    "selects every device".to_string()
                } else {
                    format!("selector {}", p.selector)
                };
                Err(outside(format!(
                    "{shown}; its selector must include {scope}"
                )))
            }
        }
        _ => Err(outside(
            "scoped tokens may write only devices, credentials and profiles".into(),
        )),
    }
}

/// `check` for the new version of a write, plus its references: a scoped device may refer
/// only to credentials and parent devices inside the scope, or a team could point its host
/// at another team's BMC password (which campaigns and polling would then send to it).
pub fn check_write(inv: &Inventory, who: &Principal, r: &pb::Resource) -> Result<(), ApiError> {
    check(who, r)?;
    let Some(scope) = &who.scope else {
        return Ok(());
    };
    for (kind, target) in resource::references(r) {
        if !matches!(kind, ResourceKind::Credential | ResourceKind::Device) {
            continue;
        }
        // A missing target is reported by the write itself (its reference check).
        let Some(obj) = inv
            .store()
            .get(kind_id(kind), &target)
            .map_err(store_error)?
        else {
            continue;
        };
        let get = |k: &str| obj.labels.get(k).map(String::as_str);
        if !scope.matches(get) {
            return Err(ApiError::PermissionDenied(format!(
                "token {} is scoped to {scope}; {} {} refers to {} {target} ({}), which is outside it",
                who.name,
                kind_name(kind_of(r).unwrap_or_default()),
                r.name(),
                kind_name(kind),
                relevant_labels(scope, get)
            )));
        }
    }
    Ok(())
}

/// Checks a write of `kind`/`name` that has no resource at hand (e.g. refused before loading).
pub fn check_kind(who: &Principal, kind: ResourceKind) -> Result<(), ApiError> {
    match (&who.scope, kind) {
        (None, _)
        | (Some(_), ResourceKind::Device | ResourceKind::Credential | ResourceKind::Profile) => {
            Ok(())
        }
        (Some(scope), k) => Err(ApiError::PermissionDenied(format!(
            "token {} is scoped to {scope}; scoped tokens may write only devices, credentials and profiles, not {}s",
            who.name,
            kind_name(k)
        ))),
    }
}

/// Checks that `who` may act on device `name` (agent enrollment tokens and approvals);
/// a missing device is left for the caller to report.
pub fn check_device(inv: &Inventory, who: &Principal, name: &str) -> Result<(), ApiError> {
    if who.scope.is_none() {
        return Ok(());
    }
    match inv.load_device(name)? {
        Some((_, d)) => check(who, &d),
        None => Ok(()),
    }
}

/// The object's values of the scope's keys, e.g. `team=core` or `no team label`.
fn relevant_labels<'a>(scope: &Selector, get: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut keys: Vec<&str> = scope.requirements.iter().map(|r| r.key.as_str()).collect();
    keys.dedup();
    keys.iter()
        .map(|k| match get(k) {
            Some(v) => format!("{k}={v}"),
            None => format!("no {k} label"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::model::Role;

    fn scoped(sel: &str) -> Principal {
        Principal {
            name: "pay-ops".into(),
            role: Role::Operator,
            scope: Some(Selector::parse(sel).unwrap()),
        }
    }

    fn device(name: &str, labels: &[(&str, &str)]) -> pb::Resource {
        let meta = pb::ObjectMeta {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        pb::Resource {
            resource: Some(R::Device(pb::Device {
                meta: Some(meta),
                ..Default::default()
            })),
        }
    }

    fn profile(selector: &str) -> pb::Resource {
        pb::Resource {
            resource: Some(R::Profile(pb::Profile {
                meta: Some(pb::ObjectMeta {
                    name: "p".into(),
                    ..Default::default()
                }),
                selector: selector.into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn devices_by_labels_profiles_by_selector() {
        let who = scoped("team=pay");
        assert!(check(&who, &device("a", &[("team", "pay")])).is_ok());
        let e = check(&who, &device("db-01", &[("team", "core")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "token pay-ops is scoped to team=pay; device db-01 (team=core) is outside it"
        );
        assert!(check(&who, &device("b", &[])).is_err());
        assert!(check(&who, &profile("team=pay,role=web")).is_ok());
        assert!(check(&who, &profile("role=web")).is_err());
        assert!(check(&who, &profile("")).is_err());
        assert!(check(&who, &profile("team in (pay,core)")).is_err());
        let unscoped = Principal::new("admin", Role::Admin);
        assert!(check(&unscoped, &device("db-01", &[("team", "core")])).is_ok());
        assert!(check_kind(&who, ResourceKind::Site).is_err());
        assert!(check_kind(&who, ResourceKind::Device).is_ok());
    }
}
