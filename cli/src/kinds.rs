//! The resource kinds as operators type them (`devices`, `dev`, `Device`) and as the wire
//! names them (`pb::ResourceKind`), in one place so every command agrees.

use std::fmt;
use std::str::FromStr;

use muster::pb;

/// A resource kind the CLI can address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A data-center site.
    Site,
    /// A rack within a site.
    Rack,
    /// A server, switch, PDU, VM, ...
    Device,
    /// Desired state for devices chosen by a selector.
    Profile,
    /// A maintenance window or freeze.
    Window,
    /// A secret referenced by devices.
    Credential,
    /// A rollout; not in the documented CLI kinds but accepted so nothing is unreachable.
    Campaign,
}

impl Kind {
    /// Every kind, in the order `apply` writes them (dependencies first).
    pub const ALL: [Kind; 7] = [
        Kind::Site,
        Kind::Rack,
        Kind::Credential,
        Kind::Profile,
        Kind::Window,
        Kind::Device,
        Kind::Campaign,
    ];

    /// Lowercase singular, as in `device/web-01`.
    pub fn singular(self) -> &'static str {
        match self {
            Kind::Site => "site",
            Kind::Rack => "rack",
            Kind::Device => "device",
            Kind::Profile => "profile",
            Kind::Window => "window",
            Kind::Credential => "credential",
            Kind::Campaign => "campaign",
        }
    }

    /// Capitalized name used as the manifest's `kind:`.
    pub fn manifest_name(self) -> &'static str {
        match self {
            Kind::Site => "Site",
            Kind::Rack => "Rack",
            Kind::Device => "Device",
            Kind::Profile => "Profile",
            Kind::Window => "Window",
            Kind::Credential => "Credential",
            Kind::Campaign => "Campaign",
        }
    }

    /// The wire enum.
    pub fn to_pb(self) -> pb::ResourceKind {
        match self {
            Kind::Site => pb::ResourceKind::Site,
            Kind::Rack => pb::ResourceKind::Rack,
            Kind::Device => pb::ResourceKind::Device,
            Kind::Profile => pb::ResourceKind::Profile,
            Kind::Window => pb::ResourceKind::Window,
            Kind::Credential => pb::ResourceKind::Credential,
            Kind::Campaign => pb::ResourceKind::Campaign,
        }
    }

    /// From the wire enum; `None` for unspecified or unknown values.
    pub fn from_pb(kind: i32) -> Option<Kind> {
        match pb::ResourceKind::try_from(kind).ok()? {
            pb::ResourceKind::Site => Some(Kind::Site),
            pb::ResourceKind::Rack => Some(Kind::Rack),
            pb::ResourceKind::Device => Some(Kind::Device),
            pb::ResourceKind::Profile => Some(Kind::Profile),
            pb::ResourceKind::Window => Some(Kind::Window),
            pb::ResourceKind::Credential => Some(Kind::Credential),
            pb::ResourceKind::Campaign => Some(Kind::Campaign),
            pb::ResourceKind::Unspecified => None,
        }
    }

    /// From a manifest's `kind:` value, case-insensitively.
    pub fn from_manifest_name(name: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.manifest_name().eq_ignore_ascii_case(name))
    }

    /// The kind of the resource held in a `pb::Resource`.
    pub fn of(resource: &pb::Resource) -> Option<Kind> {
        use pb::resource::Resource as R;
        Some(match resource.resource.as_ref()? {
            R::Site(_) => Kind::Site,
            R::Rack(_) => Kind::Rack,
            R::Device(_) => Kind::Device,
            R::Profile(_) => Kind::Profile,
            R::Window(_) => Kind::Window,
            R::Credential(_) => Kind::Credential,
            R::Campaign(_) => Kind::Campaign,
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.singular())
    }
}

impl FromStr for Kind {
    type Err = String;

    /// Accepts singular, plural and short forms, case-insensitively.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let kind = match s.to_ascii_lowercase().as_str() {
            "site" | "sites" => Kind::Site,
            "rack" | "racks" => Kind::Rack,
            "device" | "devices" | "dev" => Kind::Device,
            "profile" | "profiles" => Kind::Profile,
            "window" | "windows" => Kind::Window,
            "credential" | "credentials" | "cred" | "creds" => Kind::Credential,
            "campaign" | "campaigns" => Kind::Campaign,
            _ => {
                return Err(format!(
                    "unknown kind {s:?} (expected site, rack, device, profile, window or credential)"
                ));
            }
        };
        Ok(kind)
    }
}

/// `device/web-01`, the way kubectl names objects.
pub fn qualified_name(resource: &pb::Resource) -> String {
    let kind = Kind::of(resource).map(Kind::singular).unwrap_or("unknown");
    format!("{kind}/{}", resource.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_aliases() {
        assert_eq!("devices".parse::<Kind>(), Ok(Kind::Device));
        assert_eq!("dev".parse::<Kind>(), Ok(Kind::Device));
        assert_eq!("Cred".parse::<Kind>(), Ok(Kind::Credential));
        assert_eq!("sites".parse::<Kind>(), Ok(Kind::Site));
        assert!("widget".parse::<Kind>().is_err());
        assert_eq!(Kind::from_manifest_name("dEvIcE"), Some(Kind::Device));
        assert_eq!(
            Kind::from_pb(pb::ResourceKind::Rack as i32),
            Some(Kind::Rack)
        );
    }
}
