//! Resource names, label keys and values, and network addresses: the validation rules that the
//! server enforces and that clients can check before sending.
//!
//! Every error names the field at fault, so the server can hand it to the operator unchanged.

use thiserror::Error;

/// Longest resource name accepted (a DNS name, which is what most names end up being).
pub const MAX_NAME_LEN: usize = 253;
/// Longest label value and label name part (as in Kubernetes, so selectors port over).
pub const MAX_LABEL_PART_LEN: usize = 63;

/// An input that breaks a naming rule; `field` is the path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {problem}")]
pub struct InvalidField {
    /// Path of the field at fault, e.g. `meta.labels["role"]`.
    pub field: String,
    /// What is wrong, phrased so an operator can fix it.
    pub problem: String,
}

impl InvalidField {
    /// Builds an error for `field`.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_')
}

/// Checks a resource name: 1-253 lowercase letters, digits, '-', '.', '_', starting and ending
/// with a letter or digit.
pub fn validate_name(field: &str, name: &str) -> Result<(), InvalidField> {
    if name.is_empty() {
        return Err(InvalidField::new(field, "is required"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(InvalidField::new(
            field,
            format!(
                "is {} characters long; the limit is {MAX_NAME_LEN}",
                name.len()
            ),
        ));
    }
    if let Some(bad) = name.chars().find(|c| !is_name_char(*c)) {
        return Err(InvalidField::new(
            field,
            format!("{name:?} contains {bad:?}; use lowercase letters, digits, '-', '.', '_'"),
        ));
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alnum(name.chars().next()) || !alnum(name.chars().last()) {
        return Err(InvalidField::new(
            field,
            format!("{name:?} must start and end with a letter or digit"),
        ));
    }
    Ok(())
}

fn is_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

fn check_label_part(field: &str, what: &str, part: &str) -> Result<(), InvalidField> {
    if part.len() > MAX_LABEL_PART_LEN {
        return Err(InvalidField::new(
            field,
            format!("{what} {part:?} is longer than {MAX_LABEL_PART_LEN} characters"),
        ));
    }
    if let Some(bad) = part.chars().find(|c| !is_label_char(*c)) {
        return Err(InvalidField::new(
            field,
            format!("{what} {part:?} contains {bad:?}; use letters, digits, '-', '_', '.'"),
        ));
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !part.is_empty() && (!alnum(part.chars().next()) || !alnum(part.chars().last())) {
        return Err(InvalidField::new(
            field,
            format!("{what} {part:?} must start and end with a letter or digit"),
        ));
    }
    Ok(())
}

/// Checks a label key: an optional DNS prefix and '/', then a name of 1-63 characters.
pub fn validate_label_key(field: &str, key: &str) -> Result<(), InvalidField> {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            if prefix.is_empty() || prefix.len() > MAX_NAME_LEN {
                return Err(InvalidField::new(
                    field,
                    format!("key {key:?} has an invalid prefix"),
                ));
            }
            validate_name(field, prefix).map_err(|_| {
                InvalidField::new(field, format!("key {key:?} has an invalid prefix"))
            })?;
            name
        }
        None => key,
    };
    if name.is_empty() {
        return Err(InvalidField::new(field, "label key must not be empty"));
    }
    check_label_part(field, "key", name)
}

/// Checks a label value: empty, or 1-63 letters, digits, '-', '_', '.' framed by alphanumerics.
pub fn validate_label_value(field: &str, value: &str) -> Result<(), InvalidField> {
    check_label_part(field, "value", value)
}

/// Checks a whole label map, naming the offending key.
pub fn validate_labels<'a>(
    field: &str,
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<(), InvalidField> {
    for (k, v) in labels {
        let f = format!("{field}[{k:?}]");
        validate_label_key(&f, k)?;
        validate_label_value(&f, v)?;
    }
    Ok(())
}

/// Checks a host: an IP address (v4 or v6) or a DNS host name.
pub fn validate_host(field: &str, host: &str) -> Result<(), InvalidField> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.is_empty() || host.len() > MAX_NAME_LEN || !host.split('.').all(valid_label) {
        return Err(InvalidField::new(
            field,
            format!("{host:?} is neither an IP address nor a valid host name"),
        ));
    }
    Ok(())
}

/// Checks a MAC address written as six colon-separated hex pairs.
pub fn validate_mac(field: &str, mac: &str) -> Result<(), InvalidField> {
    let parts: Vec<&str> = mac.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(InvalidField::new(
            field,
            format!("{mac:?} is not a MAC address like 52:54:00:12:34:56"),
        ))
    }
}

/// Checks a calendar date written as YYYY-MM-DD.
pub fn validate_date(field: &str, date: &str) -> Result<(), InvalidField> {
    let bad = || InvalidField::new(field, format!("{date:?} is not a date like 2027-03-31"));
    let mut it = date.split('-');
    let (Some(y), Some(m), Some(d), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(bad());
    };
    let num = |s: &str, len: usize| {
        if s.len() == len && s.chars().all(|c| c.is_ascii_digit()) {
            s.parse::<u32>().ok()
        } else {
            None
        }
    };
    match (num(y, 4), num(m, 2), num(d, 2)) {
        (Some(_), Some(m), Some(d)) if (1..=12).contains(&m) && (1..=31).contains(&d) => Ok(()),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("meta.name", "web-01.fra1").is_ok());
        assert!(validate_name("meta.name", "a").is_ok());
        let e = validate_name("meta.name", "Web_01").unwrap_err();
        assert_eq!(e.field, "meta.name");
        assert!(e.problem.contains("'W'"), "{e}");
        assert!(validate_name("meta.name", "").is_err());
        assert!(validate_name("meta.name", "-web").is_err());
        assert!(validate_name("meta.name", "web-").is_err());
        assert!(validate_name("meta.name", &"a".repeat(254)).is_err());
        assert!(validate_name("meta.name", "we b").is_err());
    }

    #[test]
    fn labels() {
        assert!(validate_label_key("l", "role").is_ok());
        assert!(validate_label_key("l", "muster.io/owner").is_ok());
        assert!(validate_label_key("l", "").is_err());
        assert!(validate_label_key("l", "/x").is_err());
        assert!(validate_label_key("l", "a b").is_err());
        assert!(validate_label_key("l", &"k".repeat(64)).is_err());
        assert!(validate_label_value("l", "").is_ok());
        assert!(validate_label_value("l", "Prod_1").is_ok());
        assert!(validate_label_value("l", "-x").is_err());
        assert!(validate_label_value("l", "x,y").is_err());
    }

    #[test]
    fn hosts_macs_dates() {
        assert!(validate_host("h", "10.0.0.1").is_ok());
        assert!(validate_host("h", "::1").is_ok());
        assert!(validate_host("h", "bmc-01.fra1.example").is_ok());
        assert!(validate_host("h", "bad host").is_err());
        assert!(validate_host("h", "a..b").is_err());
        assert!(validate_mac("m", "52:54:00:aB:cd:ef").is_ok());
        assert!(validate_mac("m", "52:54:00:ab:cd").is_err());
        assert!(validate_date("d", "2027-03-31").is_ok());
        assert!(validate_date("d", "2027-13-01").is_err());
        assert!(validate_date("d", "27-03-01").is_err());
    }
}
