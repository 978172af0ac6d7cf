//! The pure parts of a listing: page sizes, label and field selectors checked against what a
//! kind indexes, and the opaque page tokens of List and the audit listing. No store here, so
//! every rule is unit-tested on its own.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use muster::pb::ResourceKind;
use muster::selector::Selector;

use super::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use crate::model::resource;
use crate::model::{ApiError, kind_name};

/// How many entries a page holds for a requested size (0: the default; capped).
pub(super) fn page_size(requested: u32) -> usize {
    match requested {
        0 => DEFAULT_PAGE_SIZE as usize,
        n => n.min(MAX_PAGE_SIZE) as usize,
    }
}

/// A label selector from field `field` of a request.
pub(super) fn label_selector(field: &str, s: &str) -> Result<Selector, ApiError> {
    Selector::parse(s).map_err(|e| ApiError::invalid(field, e.to_string()))
}

/// A field selector for `kind`: only `name` and the fields the kind indexes may be selected.
pub(super) fn field_selector(kind: ResourceKind, s: &str) -> Result<Selector, ApiError> {
    let fields = Selector::parse_fields(s)
        .map_err(|e| ApiError::invalid("field_selector", e.to_string()))?;
    let allowed = resource::indexed_fields(kind);
    if let Some(r) = fields
        .requirements
        .iter()
        .find(|r| r.key != "name" && !allowed.contains(&r.key.as_str()))
    {
        let mut names = vec!["name"];
        names.extend_from_slice(allowed);
        return Err(ApiError::invalid(
            "field_selector",
            format!(
                "{:?} is not a selectable field of {}; use one of: {}",
                r.key,
                kind_name(kind),
                names.join(", ")
            ),
        ));
    }
    Ok(fields)
}

fn bad_token() -> ApiError {
    ApiError::invalid(
        "page_token",
        "is not a token returned by this server for this listing",
    )
}

/// The text inside a token, if it is ours (base64url of `<tag>:<rest>`).
fn token_body(raw: &str, tag: &str) -> Result<String, ApiError> {
    let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad_token())?;
    let s = String::from_utf8(bytes).map_err(|_| bad_token())?;
    s.strip_prefix(tag)
        .map(str::to_string)
        .ok_or_else(bad_token)
}

/// The token of the List page after the object with id `last`.
pub(super) fn list_token(last: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("l1:{last}"))
}

/// The id a List token resumes after (None for the first page).
pub(super) fn parse_list_token(token: &str) -> Result<Option<String>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    let id = token_body(token, "l1:")?;
    if ulid::Ulid::from_string(&id).is_err() {
        return Err(bad_token());
    }
    Ok(Some(id))
}

/// The token of the audit page after accepted revision `rev` and refusal sequence `seq`.
pub(super) fn audit_token(rev: u64, seq: u64) -> String {
    URL_SAFE_NO_PAD.encode(format!("a1:{rev}:{seq}"))
}

/// Where an audit token resumes: (after revision, after refusal sequence); (0, 0) at first.
pub(super) fn parse_audit_token(token: &str) -> Result<(u64, u64), ApiError> {
    if token.is_empty() {
        return Ok((0, 0));
    }
    let rest = token_body(token, "a1:")?;
    let (r, q) = rest.split_once(':').ok_or_else(bad_token)?;
    Ok((
        r.parse().map_err(|_| bad_token())?,
        q.parse().map_err(|_| bad_token())?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(e: ApiError) -> String {
        match e {
            ApiError::InvalidArgument { field, .. } => field,
            other => panic!("not an invalid argument: {other:?}"),
        }
    }

    #[test]
    fn page_sizes_default_and_cap() {
        assert_eq!(page_size(0), DEFAULT_PAGE_SIZE as usize);
        assert_eq!(page_size(7), 7);
        assert_eq!(page_size(MAX_PAGE_SIZE + 1), MAX_PAGE_SIZE as usize);
        assert_eq!(page_size(u32::MAX), MAX_PAGE_SIZE as usize);
    }

    #[test]
    fn list_tokens_round_trip_and_refuse_anything_else() {
        let id = ulid::Ulid::new().to_string();
        assert_eq!(
            parse_list_token(&list_token(&id)).unwrap(),
            Some(id.clone())
        );
        assert_eq!(parse_list_token("").unwrap(), None);
        // Not base64, not ours, an audit token, not a ULID after the tag.
        let audit = audit_token(1, 2);
        let not_ulid = URL_SAFE_NO_PAD.encode("l1:../../etc");
        for t in ["%%%", "bm90LW91cnM", audit.as_str(), not_ulid.as_str()] {
            let e = parse_list_token(t).unwrap_err();
            assert_eq!(field_of(e), "page_token", "{t}");
        }
    }

    #[test]
    fn audit_tokens_round_trip_and_refuse_anything_else() {
        assert_eq!(parse_audit_token(&audit_token(42, 7)).unwrap(), (42, 7));
        assert_eq!(parse_audit_token("").unwrap(), (0, 0));
        let list = list_token(&ulid::Ulid::new().to_string());
        let no_seq = URL_SAFE_NO_PAD.encode("a1:42");
        let negative = URL_SAFE_NO_PAD.encode("a1:-1:0");
        for t in [list.as_str(), no_seq.as_str(), negative.as_str(), "a1:1:2"] {
            let e = parse_audit_token(t).unwrap_err();
            assert_eq!(field_of(e), "page_token", "{t}");
        }
    }

    #[test]
    fn field_selectors_allow_only_name_and_indexed_fields() {
        let ok = field_selector(ResourceKind::Device, "name=web-01").unwrap();
        assert_eq!(ok.requirements.len(), 1);
        let indexed = resource::indexed_fields(ResourceKind::Device);
        if let Some(f) = indexed.first() {
            field_selector(ResourceKind::Device, &format!("{f}=x")).unwrap();
        }
        let e = field_selector(ResourceKind::Device, "secret=x").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("\"secret\" is not a selectable field of device"),
            "{msg}"
        );
        assert!(msg.contains("use one of: name"), "{msg}");
        assert_eq!(field_of(e), "field_selector");
    }

    #[test]
    fn label_selectors_name_the_field_they_came_from() {
        label_selector("selector", "role=web,env!=prod").unwrap();
        let e = label_selector("selector", "role ~ db").unwrap_err();
        assert_eq!(field_of(e), "selector");
    }
}
