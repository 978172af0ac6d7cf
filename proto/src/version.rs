//! Package version ordering as each package manager defines it, and whether an installed version
//! satisfies a [`PackageRequirement`](crate::pb::PackageRequirement).
//!
//! Debian versions (`[epoch:]upstream[-revision]`) follow Debian policy §5.6.12 as dpkg implements
//! it, through the `debversion` crate; RPM versions (`[epoch:]version[-release]`) follow
//! `rpmvercmp`, through the `rpm-version` crate. Both are pure string functions: no I/O, never a
//! panic on any input.
//!
//! Where the crates and the package managers part ways, this module says so:
//! - A string that is not a valid Debian version (empty, spaces, non-ASCII, an epoch that does not
//!   fit 32 bits...) cannot be compared by dpkg at all (`dpkg --compare-versions` refuses it). Here
//!   it is parsed leniently first (underscores are accepted, as real archives contain them); if
//!   that fails too, the two strings are compared as plain byte strings. The order is then
//!   well-defined (total and stable) but has no package-manager meaning.
//! - `debversion` 0.5 treats a missing digit run as smaller than a digit run of zeros, where dpkg
//!   treats it as 0: dpkg says `1. == 1.0` and `1.0+ == 1.0+0`, the crate says `<`. Versions that
//!   end exactly where the other continues with zeros are rare; the unit tests pin the crate's
//!   answer so that a fix upstream is noticed.
//! - RPM compares releases only when both versions have one (`rpmverCmp`): a requirement on
//!   `1.0` is met by `1.0-3.el9`. [`compare`] is the crate's total order, in which a missing
//!   release sorts first; [`satisfies`] applies rpm's rule.

use std::cmp::Ordering;

use crate::pb::VersionMatch;

/// How a host's package versions are written and ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PackageFormat {
    /// dpkg: Debian, Ubuntu and derivatives.
    Deb,
    /// rpm: Red Hat, Fedora, SUSE and derivatives.
    Rpm,
}

/// Distribution names whose release text means an RPM-based host, lower case.
const RPM_DISTRIBUTIONS: [&str; 11] = [
    "red hat",
    "rhel",
    "centos",
    "fedora",
    "rocky",
    "alma",
    "oracle",
    "suse",
    "amazon linux",
    "scientific linux",
    "mageia",
];

impl PackageFormat {
    /// The format an agent reported (`OsFacts.package_format`: "deb" or "rpm"); when it reported
    /// none (an older agent, or no package collector), a guess from the release text
    /// (`OsFacts.release`, e.g. "Rocky Linux 9.4"): RPM for the Red Hat and SUSE families and
    /// Amazon Linux, Debian otherwise.
    pub fn from_facts(package_format: &str, os_release: &str) -> PackageFormat {
        match package_format.trim().to_ascii_lowercase().as_str() {
            "deb" | "dpkg" => return PackageFormat::Deb,
            "rpm" => return PackageFormat::Rpm,
            _ => {}
        }
        let release = os_release.to_ascii_lowercase();
        if RPM_DISTRIBUTIONS.iter().any(|d| release.contains(d)) {
            PackageFormat::Rpm
        } else {
            PackageFormat::Deb
        }
    }

    /// "deb" or "rpm", as `OsFacts.package_format` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            PackageFormat::Deb => "deb",
            PackageFormat::Rpm => "rpm",
        }
    }
}

/// Orders two versions as the package manager of `format` does (see the module documentation for
/// the cases where no package manager has an answer).
pub fn compare(format: PackageFormat, a: &str, b: &str) -> Ordering {
    match format {
        PackageFormat::Deb => compare_deb(a, b),
        PackageFormat::Rpm => {
            rpm_version::Evr::parse(a.trim()).cmp(&rpm_version::Evr::parse(b.trim()))
        }
    }
}

fn parse_deb(s: &str) -> Option<debversion::Version> {
    let s = s.trim();
    s.parse::<debversion::Version>()
        .or_else(|_| debversion::Version::parse_lenient(s))
        .ok()
}

fn compare_deb(a: &str, b: &str) -> Ordering {
    match (parse_deb(a), parse_deb(b)) {
        (Some(a), Some(b)) => a.cmp(&b),
        // No package-manager order exists; keep a total one.
        _ => a.trim().cmp(b.trim()),
    }
}

/// Whether `installed` (`None`: not installed) meets a requirement on `req_version` with `m`:
/// - `EXACT`: installed and equal by the package manager's order (so `1:1.0-1` differs from
///   `1.0-1`, while `1.0` equals `1.0-0` for dpkg and `0:1.0` equals `1.0` for both; for RPM a
///   requirement without a release matches every release of that version);
/// - `MINIMUM`: installed and not older than `req_version`;
/// - `ABSENT`: not installed;
/// - `UNSPECIFIED`: `EXACT` when a version is given, else installed at any version.
///
/// An empty `req_version` with `EXACT` or `MINIMUM` asks for any installed version.
pub fn satisfies(
    format: PackageFormat,
    installed: Option<&str>,
    req_version: &str,
    m: VersionMatch,
) -> bool {
    let req = req_version.trim();
    let Some(installed) = installed else {
        return m == VersionMatch::Absent;
    };
    match m {
        VersionMatch::Absent => false,
        _ if req.is_empty() => true,
        VersionMatch::Exact | VersionMatch::Unspecified => {
            compare_requirement(format, installed, req) == Ordering::Equal
        }
        VersionMatch::Minimum => compare_requirement(format, installed, req) != Ordering::Less,
    }
}

/// `installed` against a requirement: for RPM, without releases when the requirement has none
/// (rpm's `rpmverCmp` compares releases only when both sides have one).
fn compare_requirement(format: PackageFormat, installed: &str, req: &str) -> Ordering {
    match format {
        PackageFormat::Deb => compare_deb(installed, req),
        PackageFormat::Rpm => {
            let mut have = rpm_version::Evr::parse(installed.trim());
            let want = rpm_version::Evr::parse(req);
            if want.release().is_empty() {
                have.set_release("");
            }
            have.cmp(&want)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use Ordering::{Equal, Greater, Less};
    use PackageFormat::{Deb, Rpm};

    fn check(format: PackageFormat, table: &[(&str, Ordering, &str)]) {
        for &(a, want, b) in table {
            assert_eq!(compare(format, a, b), want, "{format:?}: {a} vs {b}");
            assert_eq!(
                compare(format, b, a),
                want.reverse(),
                "{format:?}: {b} vs {a}"
            );
        }
    }

    /// Debian policy §5.6.12, each line checked against `dpkg --compare-versions` (dpkg 1.21).
    #[test]
    fn debian_policy_order() {
        check(
            Deb,
            &[
                // `~` sorts before everything, even the end of the part.
                ("1.0~rc1", Less, "1.0"),
                ("1.0~~", Less, "1.0~"),
                ("1.0~~a", Less, "1.0~"),
                ("1.0~", Less, "1.0"),
                ("1.0-1~bpo1", Less, "1.0-1"),
                // Letters sort before non-letters, and the end before both.
                ("1.0", Less, "1.0a"),
                ("1.0a", Less, "1.0+"),
                ("1.0a", Less, "1.0.1"),
                ("1.0", Less, "1.0+b1"),
                ("7.6p2-4", Greater, "7.6-0"),
                // Digit runs compare as numbers.
                ("1.10", Greater, "1.9"),
                ("001", Equal, "1"),
                ("2.0-1", Greater, "1.99-99"),
                // The epoch dominates; a missing epoch is 0.
                ("1:0.9", Greater, "2.0"),
                ("1:1.0-1", Greater, "1.0-1"),
                ("0:1.0", Equal, "1.0"),
                // The revision; a missing revision equals "0".
                ("2.30-1", Less, "2.30-1ubuntu1"),
                ("1.0-1", Less, "1.0-2"),
                ("1.0", Equal, "1.0-0"),
                ("1.0", Less, "1.0-1"),
                // The last hyphen starts the revision.
                ("1.0-1-2", Greater, "1.0-1-1"),
            ],
        );
    }

    /// Where debversion 0.5 and dpkg differ: dpkg reads a missing digit run as 0 and says
    /// `1. == 1.0`; the crate says `<`. Pinned so that a change in the crate is noticed.
    #[test]
    fn debian_known_divergence_from_dpkg() {
        assert_eq!(compare(Deb, "1.", "1.0"), Less);
        assert_eq!(compare(Deb, "1.0+", "1.0+0"), Less);
    }

    /// Strings dpkg refuses: a total order, and no panic.
    #[test]
    fn debian_invalid_versions_fall_back() {
        // Underscores are accepted by the lenient parser.
        assert_eq!(compare(Deb, "2.0_beta-1", "2.0_beta-2"), Less);
        // Not versions at all: plain string order.
        assert_eq!(compare(Deb, "", "1.0"), Less);
        assert_eq!(compare(Deb, "1.0 beta", "1.0 beta"), Equal);
        assert_eq!(compare(Deb, "ü", "1.0"), Greater);
        assert_eq!(compare(Deb, "99999999999:1", "1"), Greater);
    }

    /// rpm's own test suite (`tests/rpmvercmp.at`).
    #[test]
    fn rpmvercmp_order() {
        check(
            Rpm,
            &[
                ("1.0", Less, "2.0"),
                ("2.0", Less, "2.0.1"),
                ("2.0.1a", Greater, "2.0.1"),
                ("5.5p1", Less, "5.5p2"),
                ("5.5p1", Less, "5.5p10"),
                ("10xyz", Less, "10.1xyz"),
                ("xyz10", Less, "xyz10.1"),
                ("xyz.4", Less, "8"),
                ("xyz.4", Less, "2"),
                ("5.5p2", Less, "5.6p1"),
                ("6.0.rc1", Greater, "6.0"),
                ("10b2", Greater, "10a1"),
                ("1.0a", Less, "1.0aa"),
                ("10.0001", Equal, "10.1"),
                ("10.0001", Less, "10.0039"),
                ("4.999.9", Less, "5.0"),
                ("20101121", Less, "20101122"),
                // Separators only separate.
                ("2_0", Equal, "2.0"),
                ("a+", Equal, "a_"),
                ("+a", Equal, "_a"),
                ("_+", Equal, "_"),
                // `~`: before everything, even the end.
                ("1.0~rc1", Less, "1.0"),
                ("1.0~rc1", Less, "1.0~rc2"),
                ("1.0~rc1~git123", Less, "1.0~rc1"),
                // `^`: after the end, before anything else.
                ("1.0^", Greater, "1.0"),
                ("1.0^git1", Greater, "1.0"),
                ("1.0^git1", Less, "1.0^git2"),
                ("1.0^git1", Less, "1.01"),
                ("1.0^20160101", Less, "1.0.1"),
                ("1.0^20160102", Greater, "1.0^20160101^git1"),
                ("1.0~rc1^git1", Greater, "1.0~rc1"),
                ("1.0^git1~pre", Less, "1.0^git1"),
            ],
        );
    }

    /// A numeric segment is newer than an alphabetic one (rpmvercmp), so `1.0a < 1.0.1`.
    #[test]
    fn rpm_numeric_beats_alpha() {
        check(
            Rpm,
            &[
                ("1.0", Less, "1.0.1"),
                ("1.0a", Less, "1.0.1"),
                ("1.0010", Equal, "1.10"),
            ],
        );
    }

    /// Epoch and release (EVR).
    #[test]
    fn rpm_epoch_and_release() {
        check(
            Rpm,
            &[
                ("2:1.0", Greater, "1:9.9"),
                ("0:1.0-1", Equal, "1.0-1"),
                ("1.0-1", Less, "1.0-2"),
                ("1.0-1.el9", Less, "1.0-1.el9_2"),
                ("1.0-9", Less, "1.1-1"),
                // In the total order a missing release sorts first.
                ("1.0", Less, "1.0-1"),
            ],
        );
    }

    #[test]
    fn format_from_facts() {
        assert_eq!(PackageFormat::from_facts("rpm", "Debian GNU/Linux 12"), Rpm);
        assert_eq!(PackageFormat::from_facts("deb", "Rocky Linux 9.4"), Deb);
        for release in [
            "Red Hat Enterprise Linux 9.4 (Plow)",
            "CentOS Stream 9",
            "Fedora Linux 40 (Server Edition)",
            "Rocky Linux 9.4 (Blue Onyx)",
            "AlmaLinux 9.4 (Seafoam Ocelot)",
            "Oracle Linux Server 8.9",
            "SUSE Linux Enterprise Server 15 SP5",
            "openSUSE Leap 15.6",
            "Amazon Linux 2023",
        ] {
            assert_eq!(PackageFormat::from_facts("", release), Rpm, "{release}");
        }
        for release in [
            "Debian GNU/Linux 12 (bookworm)",
            "Ubuntu 24.04 LTS",
            "Linux",
            "",
        ] {
            assert_eq!(PackageFormat::from_facts("", release), Deb, "{release}");
        }
        assert_eq!(Rpm.as_str(), "rpm");
    }

    #[test]
    fn requirement_matching() {
        use VersionMatch::{Absent, Exact, Minimum, Unspecified};
        let cases: &[(PackageFormat, Option<&str>, &str, VersionMatch, bool)] = &[
            (Deb, Some("1.0-1"), "1.0-1", Exact, true),
            (Deb, Some("1:1.0-1"), "1.0-1", Exact, false),
            (Deb, Some("1.0-0"), "1.0", Exact, true),
            (Deb, Some("1.0-3"), "1.0", Exact, false),
            (Deb, Some("1.0-1"), "1.0-1", Unspecified, true),
            (Deb, Some("1.0-2"), "1.0-1", Unspecified, false),
            (Deb, Some("1.0-2"), "", Unspecified, true),
            (Deb, None, "", Unspecified, false),
            (Deb, None, "1.0", Exact, false),
            (Deb, Some("3.0.13-1~deb12u1"), "3.0.11-1", Minimum, true),
            (Deb, Some("1.0~rc1"), "1.0", Minimum, false),
            (Deb, Some("1.0"), "1.0", Minimum, true),
            (Deb, None, "1.0", Minimum, false),
            (Deb, None, "", Absent, true),
            (Deb, Some("1.0"), "", Absent, false),
            (Rpm, Some("1.0-3.el9"), "1.0", Exact, true),
            (Rpm, Some("1.0-3.el9"), "1.0-2.el9", Exact, false),
            (Rpm, Some("1:1.0-3"), "1.0", Exact, false),
            (Rpm, Some("0:1.0-3"), "1.0-3", Exact, true),
            (Rpm, Some("1.0-3.el9"), "1.0", Minimum, true),
            (Rpm, Some("1.0^git5-1"), "1.0.1", Minimum, false),
            (Rpm, Some("3.0.7-27.el9"), "3.0.7-25.el9", Minimum, true),
            (Rpm, None, "1.0", Absent, true),
        ];
        for &(format, installed, req, m, want) in cases {
            assert_eq!(
                satisfies(format, installed, req, m),
                want,
                "{format:?} {installed:?} {m:?} {req:?}"
            );
        }
    }

    #[test]
    fn odd_input_never_panics() {
        let odd = [
            "",
            " ",
            ":",
            "-",
            ":-",
            "1:",
            "-1",
            "~",
            "^",
            "~^~",
            "ü1.0",
            "1.0ü",
            "0:",
            "a:b-c",
            "1..0",
            "99999999999999999999999999",
            "1:2:3-4-5",
            "\u{0}",
        ];
        for a in odd {
            for b in odd {
                for f in [Deb, Rpm] {
                    let _ = compare(f, a, b);
                    let _ = satisfies(f, Some(a), b, VersionMatch::Minimum);
                }
            }
        }
    }
}
