//! The distribution and the running kernel's time facts: os-release, boot time, uptime, time
//! zone, and the package format from the package databases.

use std::collections::BTreeMap;
use std::path::Path;

use super::OsRelease;
use super::files::read_optional;

pub(super) fn read_timezone(root: &Path) -> String {
    if let Some(tz) = read_optional(root, "etc/timezone") {
        let tz = tz.trim();
        if !tz.is_empty() {
            return tz.to_string();
        }
    }
    std::fs::read_link(root.join("etc/localtime"))
        .ok()
        .and_then(|target| timezone_from_link(&target.to_string_lossy()))
        .unwrap_or_else(|| "UTC".to_string())
}

/// The package format of the host from its package database: "deb" when dpkg's status file
/// exists, "rpm" when an rpm database does, else empty. The agent's packages collector, when it
/// runs, has the last word (it knows which tool actually answered; see `run.rs`).
pub(super) fn package_format_at(root: &Path) -> &'static str {
    if root.join("var/lib/dpkg/status").is_file() {
        "deb"
    } else if root.join("var/lib/rpm").is_dir() || root.join("usr/lib/sysimage/rpm").is_dir() {
        "rpm"
    } else {
        ""
    }
}

/// Parses os-release (`KEY=value` lines, values optionally quoted, `#` comments).
pub fn parse_os_release(text: &str) -> OsRelease {
    let mut fields = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            fields.insert(key.trim(), unquote(value.trim()));
        }
    }
    let get = |k: &str| fields.get(k).cloned().unwrap_or_default();
    let name = get("NAME");
    let version_id = get("VERSION_ID");
    let pretty = match fields.get("PRETTY_NAME") {
        Some(p) if !p.is_empty() => p.clone(),
        _ if !name.is_empty() && !version_id.is_empty() => format!("{name} {version_id}"),
        _ if !name.is_empty() => name,
        _ => "Linux".to_string(),
    };
    OsRelease {
        id: get("ID"),
        version_id,
        pretty,
    }
}

/// Removes shell-style quotes: `"a \"b\""` → `a "b"`, `'x'` → `x`.
pub(super) fn unquote(value: &str) -> String {
    if let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                if let Some(next) = chars.next() {
                    out.push(next);
                }
            } else {
                out.push(c);
            }
        }
        out
    } else if let Some(inner) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        inner.to_string()
    } else {
        value.to_string()
    }
}

/// The `btime` (boot time, seconds since the epoch) line of `/proc/stat`.
pub fn parse_btime(stat: &str) -> Option<i64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// Whole seconds since boot from `/proc/uptime` ("12345.67 23456.78").
pub fn parse_uptime(text: &str) -> Option<u64> {
    let first = text.split_whitespace().next()?;
    let whole = first.split('.').next()?;
    whole.parse().ok()
}

/// The zone name from an `/etc/localtime` symlink target such as
/// `/usr/share/zoneinfo/Europe/Berlin` (also `../usr/share/zoneinfo/posix/...`).
pub fn timezone_from_link(target: &str) -> Option<String> {
    let (_, zone) = target.split_once("zoneinfo/")?;
    let zone = zone
        .strip_prefix("posix/")
        .or_else(|| zone.strip_prefix("right/"))
        .unwrap_or(zone);
    (!zone.is_empty()).then(|| zone.to_string())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::collect::os) const DEBIAN: &str = r#"PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
ID=debian
"#;

    #[test]
    fn os_release_prefers_pretty_name() {
        let r = parse_os_release(DEBIAN);
        assert_eq!(r.pretty, "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(r.id, "debian");
        assert_eq!(r.version_id, "12");
    }

    #[test]
    fn os_release_falls_back_to_name_and_version() {
        let r = parse_os_release("# comment\nNAME='Rocky Linux'\nVERSION_ID=\"9.4\"\nID=rocky\n");
        assert_eq!(r.pretty, "Rocky Linux 9.4");
        assert_eq!(r.id, "rocky");
        let r = parse_os_release("NAME=Alpine\n");
        assert_eq!(r.pretty, "Alpine");
        assert_eq!(parse_os_release("").pretty, "Linux");
    }

    #[test]
    fn os_release_unescapes_double_quotes() {
        let r = parse_os_release(r#"PRETTY_NAME="A \"quoted\" \$name""#);
        assert_eq!(r.pretty, r#"A "quoted" $name"#);
    }

    #[test]
    fn btime_and_uptime() {
        let stat = "cpu  1 2 3\nintr 5\nctxt 10\nbtime 1700000000\nprocesses 9\n";
        assert_eq!(parse_btime(stat), Some(1_700_000_000));
        assert_eq!(parse_btime("cpu 1\n"), None);
        assert_eq!(parse_uptime("3600.51 7000.00\n"), Some(3600));
        assert_eq!(parse_uptime(""), None);
    }

    #[test]
    fn timezone_from_symlink_target() {
        assert_eq!(
            timezone_from_link("/usr/share/zoneinfo/Europe/Berlin").as_deref(),
            Some("Europe/Berlin")
        );
        assert_eq!(
            timezone_from_link("../usr/share/zoneinfo/posix/America/New_York").as_deref(),
            Some("America/New_York")
        );
        assert_eq!(timezone_from_link("/etc/somewhere"), None);
    }

    #[test]
    fn localtime_symlink_when_no_timezone_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        assert_eq!(read_timezone(dir.path()), "UTC");
        std::os::unix::fs::symlink(
            "/usr/share/zoneinfo/Asia/Tokyo",
            dir.path().join("etc/localtime"),
        )
        .unwrap();
        assert_eq!(read_timezone(dir.path()), "Asia/Tokyo");
    }

    #[test]
    fn package_format_from_databases() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(package_format_at(dir.path()), "");
        std::fs::create_dir_all(dir.path().join("usr/lib/sysimage/rpm")).unwrap();
        assert_eq!(package_format_at(dir.path()), "rpm");
        std::fs::create_dir_all(dir.path().join("var/lib/dpkg")).unwrap();
        std::fs::write(dir.path().join("var/lib/dpkg/status"), "").unwrap();
        assert_eq!(package_format_at(dir.path()), "deb");
    }
}
