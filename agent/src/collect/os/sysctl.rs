//! Kernel parameters: dotted names to `/proc/sys` paths (validated: no escaping the tree),
//! values as `sysctl` prints them.

use std::collections::HashMap;
use std::io;
use std::path::Path;

/// Kernel parameters under `<root>/proc/sys`, by dotted name; each key once, those that do not
/// exist left out. A key that exists but cannot be read (write-only, permission) becomes a
/// warning; an invalid name too.
pub(super) fn read_sysctl<'a>(
    root: &Path,
    keys: impl IntoIterator<Item = &'a str>,
    warnings: &mut Vec<String>,
) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for key in keys {
        let key = key.trim();
        if out.contains_key(key) {
            continue;
        }
        let Some(rel) = sysctl_path(key) else {
            warnings.push(format!("invalid sysctl key {key:?}"));
            continue;
        };
        match std::fs::read_to_string(root.join("proc/sys").join(&rel)) {
            Ok(text) => {
                out.insert(key.to_string(), normalize_sysctl_value(&text));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warnings.push(format!("cannot read sysctl {key}: {e}")),
        }
    }
    out
}

/// The path under `/proc/sys` of a sysctl name, as sysctl.d(5) defines it: when the first
/// separator is a dot, dots and slashes swap (`net.ipv4.conf.eth0/100.rp_filter` →
/// `net/ipv4/conf/eth0.100/rp_filter`); when it is a slash the name is already a path. `None`
/// for names that are empty, have an empty, `.` or `..` component, or characters outside
/// letters, digits, `_`, `-`, `.`, `/`, `:`, `@`, `+`.
pub fn sysctl_path(key: &str) -> Option<String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_-./:@+".contains(c);
    if key.is_empty() || !key.chars().all(allowed) {
        return None;
    }
    let first_sep = key.find(['.', '/'])?;
    let path: String = if key.as_bytes()[first_sep] == b'/' {
        key.to_string()
    } else {
        key.chars()
            .map(|c| match c {
                '.' => '/',
                '/' => '.',
                c => c,
            })
            .collect()
    };
    path.split('/')
        .all(|part| !part.is_empty() && part != "." && part != "..")
        .then_some(path)
}

/// A `/proc/sys` value as `sysctl` prints it: trimmed, and the tabs between the fields of
/// multi-value parameters (`kernel.printk`, `net.ipv4.ip_local_port_range`) as single spaces.
pub fn normalize_sysctl_value(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_names_to_paths() {
        assert_eq!(
            sysctl_path("vm.swappiness").as_deref(),
            Some("vm/swappiness")
        );
        assert_eq!(
            sysctl_path("net.ipv4.conf.eth0/100.rp_filter").as_deref(),
            Some("net/ipv4/conf/eth0.100/rp_filter")
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.100/rp_filter").as_deref(),
            Some("net/ipv4/conf/eth0.100/rp_filter")
        );
        for bad in [
            "",
            "vm",
            "vm..swappiness",
            "../etc/shadow",
            "vm/../../x",
            "vm.swap piness",
            "vm.a\u{0}",
        ] {
            assert_eq!(sysctl_path(bad), None, "{bad:?}");
        }
        assert_eq!(normalize_sysctl_value("32768\t60999\n"), "32768 60999");
        assert_eq!(normalize_sysctl_value(" 1 \n"), "1");
    }
}
