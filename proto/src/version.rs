//! Package-manager version ordering (placeholder until the full module lands).

use std::cmp::Ordering;

use crate::pb::VersionMatch;

/// How a host's package versions compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageFormat {
    Deb,
    Rpm,
}

impl PackageFormat {
    /// The format the agent reported, else a guess from the OS release text.
    pub fn from_facts(package_format: &str, os_release: &str) -> PackageFormat {
        match package_format {
            "rpm" => PackageFormat::Rpm,
            "deb" => PackageFormat::Deb,
            _ => {
                let r = os_release.to_ascii_lowercase();
                let rpm = ["red hat", "rhel", "centos", "fedora", "rocky", "alma", "oracle", "suse", "amazon linux"];
                if rpm.iter().any(|n| r.contains(n)) {
                    PackageFormat::Rpm
                } else {
                    PackageFormat::Deb
                }
            }
        }
    }
}

/// Orders two versions as the package manager does.
pub fn compare(format: PackageFormat, a: &str, b: &str) -> Ordering {
    match format {
        PackageFormat::Rpm => rpm_version::rpm_evr_compare(a, b),
        PackageFormat::Deb => match (a.parse::<debversion::Version>(), b.parse::<debversion::Version>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => a.cmp(b),
        },
    }
}

/// Whether an installed version (None: not installed) meets a requirement.
pub fn satisfies(format: PackageFormat, installed: Option<&str>, req: &str, m: VersionMatch) -> bool {
    match (m, installed) {
        (VersionMatch::Absent, i) => i.is_none(),
        (_, None) => false,
        (VersionMatch::Minimum, Some(i)) => compare(format, i, req) != Ordering::Less,
        (_, Some(_)) if req.is_empty() => true,
        (_, Some(i)) => compare(format, i, req) == Ordering::Equal,
    }
}
