//! What a valid resource is, per kind; every error names the field at fault.

use muster::names::{
    InvalidField, validate_date, validate_host, validate_label_key, validate_labels, validate_mac,
    validate_name,
};
use muster::pb::{self, ObjectMeta, resource::Resource as R};
use muster::selector::Selector;

use crate::model::ApiError;
use crate::model::limits::{self, entries};

/// Longest free-text field (descriptions, serials, addresses) accepted.
const MAX_TEXT: usize = 1024;
/// Largest total size of a resource's annotations.
const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;
/// Largest credential secret.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;
fn text(field: &str, s: &str) -> Result<(), InvalidField> {
    if s.len() > MAX_TEXT {
        return Err(InvalidField::new(
            field,
            format!("is longer than {MAX_TEXT} bytes"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(InvalidField::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

fn opt_name(field: &str, s: &str) -> Result<(), InvalidField> {
    if s.is_empty() {
        Ok(())
    } else {
        validate_name(field, s)
    }
}

fn port(field: &str, p: u32) -> Result<(), InvalidField> {
    if p > 65535 {
        return Err(InvalidField::new(
            field,
            format!("{p} is not a port (1-65535)"),
        ));
    }
    Ok(())
}

fn enum_set<E: TryFrom<i32>>(
    field: &str,
    v: i32,
    required: bool,
    hint: &str,
) -> Result<(), InvalidField> {
    if E::try_from(v).is_err() {
        return Err(InvalidField::new(
            field,
            format!("{v} is not a known value; use {hint}"),
        ));
    }
    if required && v == 0 {
        return Err(InvalidField::new(
            field,
            format!("is required: one of {hint}"),
        ));
    }
    Ok(())
}

fn validate_meta(m: Option<&ObjectMeta>) -> Result<(), InvalidField> {
    let Some(m) = m else {
        return Err(InvalidField::new("meta.name", "is required"));
    };
    validate_name("meta.name", &m.name)?;
    entries("meta.labels", m.labels.len(), limits::MAX_LABELS)?;
    validate_labels("meta.labels", &m.labels)?;
    let mut size = 0;
    for (k, v) in &m.annotations {
        validate_label_key(&format!("meta.annotations[{k:?}]"), k)?;
        size += k.len() + v.len();
    }
    if size > MAX_ANNOTATIONS_BYTES {
        return Err(InvalidField::new(
            "meta.annotations",
            format!("total {size} bytes; the limit is {MAX_ANNOTATIONS_BYTES}"),
        ));
    }
    Ok(())
}

fn validate_selector(field: &str, s: &str) -> Result<(), InvalidField> {
    if s.len() > limits::MAX_SELECTOR_BYTES {
        return Err(InvalidField::new(
            field,
            format!(
                "is {} bytes long; the limit is {}",
                s.len(),
                limits::MAX_SELECTOR_BYTES
            ),
        ));
    }
    Selector::parse(s)
        .map(|_| ())
        .map_err(|e| InvalidField::new(field, e.to_string()))
}

const EXPECT_OPS: [&str; 8] = ["==", "!=", "<", "<=", ">", ">=", "in", "exists"];

/// Validates a desired state (a device's spec, a profile's, a campaign's `desired`) under `field`.
pub(crate) fn validate_spec(field: &str, s: &pb::DesiredState) -> Result<(), InvalidField> {
    text(&format!("{field}.os_release"), &s.os_release)?;
    text(&format!("{field}.kernel"), &s.kernel)?;
    for (f, n, max) in [
        ("packages", s.packages.len(), limits::MAX_PACKAGES),
        ("sysctl", s.sysctl.len(), limits::MAX_SYSCTL),
        ("expect", s.expect.len(), limits::MAX_EXPECT),
        ("ntp_servers", s.ntp_servers.len(), limits::MAX_SERVERS),
        ("dns_servers", s.dns_servers.len(), limits::MAX_SERVERS),
    ] {
        entries(&format!("{field}.{f}"), n, max)?;
    }
    // One pass with a set: comparing every pair was quadratic in the list a client sends.
    let mut names = std::collections::HashSet::with_capacity(s.packages.len());
    for (i, p) in s.packages.iter().enumerate() {
        let f = format!("{field}.packages[{i}]");
        if p.name.is_empty() {
            return Err(InvalidField::new(format!("{f}.name"), "is required"));
        }
        text(&format!("{f}.name"), &p.name)?;
        text(&format!("{f}.version"), &p.version)?;
        enum_set::<pb::VersionMatch>(
            &format!("{f}.match"),
            p.r#match,
            true,
            "EXACT, MINIMUM, ABSENT",
        )?;
        if !names.insert(p.name.as_str()) {
            return Err(InvalidField::new(
                format!("{f}.name"),
                format!(
                    "{:?} is listed twice; give one requirement per package",
                    p.name
                ),
            ));
        }
        if p.version.is_empty() && p.r#match != pb::VersionMatch::Absent as i32 {
            return Err(InvalidField::new(
                format!("{f}.version"),
                "is required unless match is ABSENT",
            ));
        }
    }
    enum_set::<pb::PowerState>(
        &format!("{field}.power"),
        s.power,
        false,
        "POWER_ON, POWER_OFF",
    )?;
    for (i, h) in s.ntp_servers.iter().enumerate() {
        validate_host(&format!("{field}.ntp_servers[{i}]"), h)?;
    }
    for (i, h) in s.dns_servers.iter().enumerate() {
        validate_host(&format!("{field}.dns_servers[{i}]"), h)?;
    }
    text(&format!("{field}.timezone"), &s.timezone)?;
    for (k, v) in &s.sysctl {
        let f = format!("{field}.sysctl[{k:?}]");
        if k.is_empty()
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
        {
            return Err(InvalidField::new(
                f,
                "is not a sysctl key like net.ipv4.ip_forward",
            ));
        }
        text(&f, v)?;
    }
    for (i, e) in s.expect.iter().enumerate() {
        let f = format!("{field}.expect[{i}]");
        if e.path.is_empty() {
            return Err(InvalidField::new(format!("{f}.path"), "is required"));
        }
        text(&format!("{f}.path"), &e.path)?;
        if !EXPECT_OPS.contains(&e.op.as_str()) {
            return Err(InvalidField::new(
                format!("{f}.op"),
                format!("{:?} is not one of {}", e.op, EXPECT_OPS.join(" ")),
            ));
        }
        text(&format!("{f}.value"), &e.value)?;
    }
    Ok(())
}

fn validate_device(d: &pb::Device) -> Result<(), InvalidField> {
    enum_set::<pb::DeviceKind>(
        "kind",
        d.kind,
        true,
        "SERVER, STORAGE, SWITCH, ROUTER, FIREWALL, PDU, VM",
    )?;
    enum_set::<pb::Lifecycle>(
        "lifecycle",
        d.lifecycle,
        false,
        "PLANNED, PROVISIONING, ACTIVE, MAINTENANCE, DECOMMISSIONED",
    )?;
    for (f, v) in [
        ("serial", &d.serial),
        ("asset_tag", &d.asset_tag),
        ("vendor", &d.vendor),
        ("model", &d.model),
    ] {
        text(f, v)?;
    }
    opt_name("site", &d.site)?;
    opt_name("rack", &d.rack)?;
    opt_name("role", &d.role)?;
    opt_name("parent", &d.parent)?;
    if !d.parent.is_empty() && Some(d.parent.as_str()) == d.meta.as_ref().map(|m| m.name.as_str()) {
        return Err(InvalidField::new(
            "parent",
            "a device cannot be its own parent",
        ));
    }
    if !d.rack.is_empty() && d.site.is_empty() {
        return Err(InvalidField::new("site", "is required when rack is set"));
    }
    if d.position_u > 0 && d.rack.is_empty() {
        return Err(InvalidField::new("position_u", "needs a rack"));
    }
    if d.height_u > 100 {
        return Err(InvalidField::new("height_u", "must be at most 100"));
    }
    if !d.management_address.is_empty() {
        validate_host("management_address", &d.management_address)?;
    }
    if let Some(b) = &d.bmc {
        if !b.address.is_empty() {
            validate_host("bmc.address", &b.address)?;
        }
        port("bmc.port", b.port)?;
        text("bmc.username", &b.username)?;
        opt_name("bmc.credential_ref", &b.credential_ref)?;
    }
    if let Some(s) = &d.ssh {
        if !s.host.is_empty() {
            validate_host("ssh.host", &s.host)?;
        }
        port("ssh.port", s.port)?;
        let user_ok = s.user.len() <= 32
            && s.user
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.".contains(c));
        if !user_ok {
            return Err(InvalidField::new(
                "ssh.user",
                format!("{:?} is not a valid user name", s.user),
            ));
        }
        opt_name("ssh.credential_ref", &s.credential_ref)?;
        let fp = &s.host_key_fingerprint;
        if !fp.is_empty() && (!fp.starts_with("SHA256:") || fp.len() != 50) {
            return Err(InvalidField::new(
                "ssh.host_key_fingerprint",
                "must be \"SHA256:\" followed by 43 base64 characters, as ssh-keygen -lf prints",
            ));
        }
    }
    entries("interfaces", d.interfaces.len(), limits::MAX_INTERFACES)?;
    let mut seen = std::collections::BTreeSet::new();
    for (i, n) in d.interfaces.iter().enumerate() {
        let f = format!("interfaces[{i}]");
        if n.name.is_empty() {
            return Err(InvalidField::new(format!("{f}.name"), "is required"));
        }
        text(&format!("{f}.name"), &n.name)?;
        if !seen.insert(n.name.as_str()) {
            return Err(InvalidField::new(
                format!("{f}.name"),
                format!("{:?} appears twice", n.name),
            ));
        }
        if !n.mac.is_empty() {
            validate_mac(&format!("{f}.mac"), &n.mac)?;
        }
        opt_name(&format!("{f}.peer_device"), &n.peer_device)?;
        text(&format!("{f}.peer_port"), &n.peer_port)?;
    }
    if !d.warranty_end.is_empty() {
        validate_date("warranty_end", &d.warranty_end)?;
    }
    if !d.end_of_life.is_empty() {
        validate_date("end_of_life", &d.end_of_life)?;
    }
    if let Some(s) = &d.spec {
        validate_spec("spec", s)?;
    }
    Ok(())
}

fn validate_window(w: &pb::Window) -> Result<(), InvalidField> {
    validate_selector("selector", &w.selector)?;
    if w.cron.is_empty() && w.ranges.is_empty() {
        return Err(InvalidField::new(
            "cron",
            "a window needs a cron schedule or fixed ranges",
        ));
    }
    if !w.cron.is_empty() {
        let fields: Vec<&str> = w.cron.split_whitespace().collect();
        let ok = fields.len() == 5
            && fields.iter().all(|f| {
                f.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "*,/-".contains(c))
            });
        if !ok {
            return Err(InvalidField::new(
                "cron",
                format!(
                    "{:?} is not a 5-field cron expression like \"0 2 * * sat\"",
                    w.cron
                ),
            ));
        }
        let positive = w
            .duration
            .as_ref()
            .is_some_and(|d| d.seconds > 0 || d.nanos > 0);
        if !positive {
            return Err(InvalidField::new(
                "duration",
                "is required and must be positive with cron",
            ));
        }
        text("timezone", &w.timezone)?;
    }
    entries("ranges", w.ranges.len(), limits::MAX_RANGES)?;
    for (i, r) in w.ranges.iter().enumerate() {
        let (Some(s), Some(e)) = (&r.start, &r.end) else {
            return Err(InvalidField::new(
                format!("ranges[{i}]"),
                "needs start and end",
            ));
        };
        if crate::model::timestamp_nanos(s) >= crate::model::timestamp_nanos(e) {
            return Err(InvalidField::new(
                format!("ranges[{i}]"),
                "start must be before end",
            ));
        }
    }
    text("description", &w.description)
}

/// Checks a resource an operator wrote; the error names the field at fault.
pub fn validate(r: &pb::Resource) -> Result<(), ApiError> {
    validate_meta(r.meta())?;
    match r.resource.as_ref() {
        None => return Err(no_variant()),
        Some(R::Site(s)) => {
            for (f, v) in [
                ("description", &s.description),
                ("region", &s.region),
                ("address", &s.address),
                ("timezone", &s.timezone),
            ] {
                text(f, v)?;
            }
        }
        Some(R::Rack(x)) => {
            validate_name("site", &x.site)?;
            if x.height_u == 0 || x.height_u > 100 {
                return Err(InvalidField::new("height_u", "must be 1-100").into());
            }
            text("row", &x.row)?;
            text("description", &x.description)?;
        }
        Some(R::Device(d)) => validate_device(d)?,
        Some(R::Profile(p)) => {
            validate_selector("selector", &p.selector)?;
            if let Some(s) = &p.spec {
                validate_spec("spec", s)?;
            }
            text("description", &p.description)?;
        }
        Some(R::Window(w)) => validate_window(w)?,
        Some(R::Credential(c)) => {
            enum_set::<pb::CredentialKind>(
                "kind",
                c.kind,
                true,
                "BMC_PASSWORD, SSH_PRIVATE_KEY, API_TOKEN",
            )?;
            if c.secret.len() > MAX_SECRET_BYTES {
                return Err(InvalidField::new(
                    "secret",
                    format!("is larger than {MAX_SECRET_BYTES} bytes"),
                )
                .into());
            }
        }
        Some(R::Campaign(_)) => {
            return Err(ApiError::Unimplemented(
                "campaigns are managed by CampaignService, which is not built yet".into(),
            ));
        }
    }
    Ok(())
}

/// The error for a resource with no kind set.
pub fn no_variant() -> ApiError {
    ApiError::invalid(
        "resource",
        "exactly one of site, rack, device, profile, window, credential must be set",
    )
}
