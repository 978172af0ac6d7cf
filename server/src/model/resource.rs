//! Per-kind rules: validation, defaults, indexed fields, references, and which parts of a
//! resource the server owns.

use std::collections::BTreeMap;

use muster::names::{
    InvalidField, validate_date, validate_host, validate_label_key, validate_labels, validate_mac,
    validate_name,
};
use muster::pb::{self, ObjectMeta, ResourceKind, resource::Resource as R};
use muster::selector::Selector;

use super::ApiError;
use super::limits::{self, entries};

/// Longest free-text field (descriptions, serials, addresses) accepted.
const MAX_TEXT: usize = 1024;
/// Largest total size of a resource's annotations.
const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;
/// Largest credential secret.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// The kind of a resource, or None when no variant is set.
pub fn kind_of(r: &pb::Resource) -> Option<ResourceKind> {
    Some(match r.resource.as_ref()? {
        R::Site(_) => ResourceKind::Site,
        R::Rack(_) => ResourceKind::Rack,
        R::Device(_) => ResourceKind::Device,
        R::Profile(_) => ResourceKind::Profile,
        R::Window(_) => ResourceKind::Window,
        R::Credential(_) => ResourceKind::Credential,
        R::Campaign(_) => ResourceKind::Campaign,
    })
}

/// Fills defaults an operator may leave out.
pub fn apply_defaults(r: &mut pb::Resource) {
    match r.resource.as_mut() {
        Some(R::Rack(x)) if x.height_u == 0 => x.height_u = 42,
        Some(R::Device(x)) => {
            if x.lifecycle == pb::Lifecycle::Unspecified as i32 {
                x.lifecycle = pb::Lifecycle::Active as i32;
            }
            if x.height_u == 0 && x.kind != pb::DeviceKind::Vm as i32 {
                x.height_u = 1;
            }
        }
        Some(R::Window(x)) if !x.cron.is_empty() && x.timezone.is_empty() => {
            x.timezone = "UTC".into()
        }
        _ => {}
    }
}

/// Annotations under this prefix are written by the server (agent enrollment state), never
/// taken from operator input, and kept across operator updates.
pub const SERVER_ANNOTATION_PREFIX: &str = "agent.muster.io/";

/// Clears everything the server owns (observed status, campaign progress) from operator input.
pub fn clear_server_owned(r: &mut pb::Resource) {
    if let Some(m) = r.meta_mut() {
        m.annotations
            .retain(|k, _| !k.starts_with(SERVER_ANNOTATION_PREFIX));
    }
    match r.resource.as_mut() {
        Some(R::Device(x)) => x.status = None,
        Some(R::Campaign(x)) => x.status = None,
        Some(R::Credential(x)) => x.fingerprint.clear(),
        _ => {}
    }
}

/// Copies the server-owned parts of `old` into `new` (identity, creation, status).
pub fn carry_server_owned(old: &pb::Resource, new: &mut pb::Resource) {
    if let (Some(om), Some(nm)) = (old.meta().cloned(), new.meta_mut()) {
        nm.id = om.id;
        nm.created_at = om.created_at;
        nm.created_by = om.created_by;
        nm.updated_at = om.updated_at;
        nm.updated_by = om.updated_by;
        nm.revision = om.revision;
        nm.annotations
            .retain(|k, _| !k.starts_with(SERVER_ANNOTATION_PREFIX));
        for (k, v) in om.annotations {
            if k.starts_with(SERVER_ANNOTATION_PREFIX) {
                nm.annotations.insert(k, v);
            }
        }
    }
    match (old.resource.as_ref(), new.resource.as_mut()) {
        (Some(R::Device(o)), Some(R::Device(n))) => n.status = o.status.clone(),
        (Some(R::Campaign(o)), Some(R::Campaign(n))) => n.status = o.status.clone(),
        (Some(R::Credential(o)), Some(R::Credential(n))) => n.fingerprint = o.fingerprint.clone(),
        _ => {}
    }
}

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
        if super::timestamp_nanos(s) >= super::timestamp_nanos(e) {
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

/// Field names a field selector may use for a kind ("name" always works).
pub fn indexed_fields(kind: ResourceKind) -> &'static [&'static str] {
    match kind {
        ResourceKind::Rack => &["site"],
        ResourceKind::Device => &[
            "kind",
            "site",
            "rack",
            "role",
            "lifecycle",
            "serial",
            "asset_tag",
            "parent",
            "health",
            "bmc_credential",
            "ssh_credential",
        ],
        ResourceKind::Window => &["freeze"],
        ResourceKind::Credential => &["kind"],
        _ => &[],
    }
}

fn enum_name<E: TryFrom<i32>>(v: i32, name: impl Fn(&E) -> &'static str) -> String {
    E::try_from(v)
        .map(|e| name(&e))
        .unwrap_or_default()
        .to_string()
}

/// The values of the indexed fields of a resource (empty values are not indexed).
pub fn index_fields(r: &pb::Resource) -> BTreeMap<String, String> {
    let mut f: BTreeMap<String, String> = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        if !v.is_empty() {
            f.insert(k.to_string(), v);
        }
    };
    match r.resource.as_ref() {
        Some(R::Rack(x)) => put("site", x.site.clone()),
        Some(R::Device(d)) => {
            put("kind", enum_name(d.kind, pb::DeviceKind::as_str_name));
            put(
                "lifecycle",
                enum_name(d.lifecycle, pb::Lifecycle::as_str_name),
            );
            put("site", d.site.clone());
            put("rack", d.rack.clone());
            put("role", d.role.clone());
            put("serial", d.serial.clone());
            put("asset_tag", d.asset_tag.clone());
            put("parent", d.parent.clone());
            put(
                "health",
                d.status
                    .as_ref()
                    .filter(|s| s.health != 0)
                    .map(|s| enum_name(s.health, pb::Health::as_str_name))
                    .unwrap_or_default(),
            );
            put(
                "bmc_credential",
                d.bmc
                    .as_ref()
                    .map(|b| b.credential_ref.clone())
                    .unwrap_or_default(),
            );
            put(
                "ssh_credential",
                d.ssh
                    .as_ref()
                    .map(|s| s.credential_ref.clone())
                    .unwrap_or_default(),
            );
        }
        Some(R::Window(w)) => put("freeze", w.freeze.to_string()),
        Some(R::Credential(c)) => put("kind", enum_name(c.kind, pb::CredentialKind::as_str_name)),
        _ => {}
    }
    f
}

/// Objects a resource refers to, which must exist when it is written.
pub fn references(r: &pb::Resource) -> Vec<(ResourceKind, String)> {
    let mut out = Vec::new();
    let mut add = |k: ResourceKind, n: &str| {
        if !n.is_empty() {
            out.push((k, n.to_string()));
        }
    };
    match r.resource.as_ref() {
        Some(R::Rack(x)) => add(ResourceKind::Site, &x.site),
        Some(R::Device(d)) => {
            add(ResourceKind::Site, &d.site);
            add(ResourceKind::Rack, &d.rack);
            add(ResourceKind::Device, &d.parent);
            if let Some(b) = &d.bmc {
                add(ResourceKind::Credential, &b.credential_ref);
            }
            if let Some(s) = &d.ssh {
                add(ResourceKind::Credential, &s.credential_ref);
            }
        }
        _ => {}
    }
    out
}

/// (kind, indexed field) pairs that may refer to an object of `kind`: it cannot be deleted
/// while any of them does.
pub fn referrers(kind: ResourceKind) -> &'static [(ResourceKind, &'static str)] {
    match kind {
        ResourceKind::Site => &[(ResourceKind::Rack, "site"), (ResourceKind::Device, "site")],
        ResourceKind::Rack => &[(ResourceKind::Device, "rack")],
        ResourceKind::Device => &[(ResourceKind::Device, "parent")],
        ResourceKind::Credential => &[
            (ResourceKind::Device, "bmc_credential"),
            (ResourceKind::Device, "ssh_credential"),
        ],
        _ => &[],
    }
}

/// A copy without the fields every write changes, to tell whether an apply changes anything.
pub fn comparable(r: &pb::Resource) -> pb::Resource {
    let mut c = r.clone();
    if let Some(m) = c.meta_mut() {
        m.revision = 0;
        m.updated_at = None;
        m.updated_by.clear();
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(name: &str) -> pb::Resource {
        pb::Resource {
            resource: Some(R::Device(pb::Device {
                meta: Some(ObjectMeta {
                    name: name.into(),
                    ..Default::default()
                }),
                kind: pb::DeviceKind::Server as i32,
                ..Default::default()
            })),
        }
    }

    fn field_of(r: pb::Resource) -> String {
        match validate(&r) {
            Err(ApiError::InvalidArgument { field, .. }) => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn device_validation_names_the_field() {
        assert!(validate(&device("web-01")).is_ok());
        assert_eq!(field_of(device("Web 01")), "meta.name");
        let mut r = device("web-01");
        let Some(R::Device(d)) = r.resource.as_mut() else {
            unreachable!()
        };
        d.management_address = "not an address".into();
        assert_eq!(field_of(r.clone()), "management_address");
        let Some(R::Device(d)) = r.resource.as_mut() else {
            unreachable!()
        };
        d.management_address = "10.0.0.1".into();
        d.kind = 0;
        assert_eq!(field_of(r.clone()), "kind");
        let Some(R::Device(d)) = r.resource.as_mut() else {
            unreachable!()
        };
        d.kind = 1;
        d.meta
            .as_mut()
            .unwrap()
            .labels
            .insert("bad key!".into(), "x".into());
        assert_eq!(field_of(r), "meta.labels[\"bad key!\"]");
    }

    #[test]
    fn index_fields_and_references() {
        let mut r = device("web-01");
        let Some(R::Device(d)) = r.resource.as_mut() else {
            unreachable!()
        };
        d.site = "fra1".into();
        d.rack = "r1".into();
        d.serial = "SN1".into();
        let f = index_fields(&r);
        assert_eq!(f.get("kind").map(String::as_str), Some("SERVER"));
        assert_eq!(f.get("site").map(String::as_str), Some("fra1"));
        assert!(!f.contains_key("parent"));
        assert_eq!(references(&r).len(), 2);
    }
}
