//! The network: NICs (sysfs) with their addresses (`getifaddrs`), name servers (resolv.conf)
//! and time servers (chrony, ntpd, systemd-timesyncd configuration).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use muster::pb;

use super::OsError;
use super::files::{dedup, files_with_suffix, list_dir, read_attr};
use super::hardware::parse_speed;

pub(super) fn prefix_len(addr: &if_addrs::IfAddr) -> u8 {
    match addr {
        if_addrs::IfAddr::V4(a) => a.prefixlen,
        if_addrs::IfAddr::V6(a) => a.prefixlen,
    }
}

/// Time servers from the first NTP client configuration that names any, in this order: chrony
/// (`/etc/chrony/chrony.conf`, `/etc/chrony.conf`, then `*.conf` in `/etc/chrony/conf.d` and
/// `*.sources` in `/etc/chrony/sources.d`), ntpd (`/etc/ntp.conf`, `/etc/ntpsec/ntp.conf`),
/// systemd-timesyncd (`/etc/systemd/timesyncd.conf`, then `timesyncd.conf.d/*.conf`). Within a
/// source, in file order, each server once.
pub(super) fn read_ntp_servers(root: &Path) -> Vec<String> {
    let chrony = {
        let mut files: Vec<PathBuf> = ["etc/chrony/chrony.conf", "etc/chrony.conf"]
            .iter()
            .map(|rel| root.join(rel))
            .collect();
        files.extend(files_with_suffix(&root.join("etc/chrony/conf.d"), ".conf"));
        files.extend(files_with_suffix(
            &root.join("etc/chrony/sources.d"),
            ".sources",
        ));
        files
    };
    let ntpd: Vec<PathBuf> = ["etc/ntp.conf", "etc/ntpsec/ntp.conf"]
        .iter()
        .map(|rel| root.join(rel))
        .collect();
    let timesyncd = {
        let mut files = vec![root.join("etc/systemd/timesyncd.conf")];
        files.extend(files_with_suffix(
            &root.join("etc/systemd/timesyncd.conf.d"),
            ".conf",
        ));
        files
    };

    let read_all = |files: &[PathBuf]| -> Vec<String> {
        files
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .collect()
    };
    let chrony = dedup(read_all(&chrony).iter().flat_map(|t| parse_server_lines(t)));
    if !chrony.is_empty() {
        return chrony;
    }
    let ntpd = dedup(read_all(&ntpd).iter().flat_map(|t| parse_server_lines(t)));
    if !ntpd.is_empty() {
        return ntpd;
    }
    let texts = read_all(&timesyncd);
    dedup(parse_timesyncd(texts.iter().map(String::as_str)))
}

/// ARPHRD_LOOPBACK in `/sys/class/net/X/type`.
pub(super) const ARPHRD_LOOPBACK: &str = "772";

pub(super) fn read_nics(
    root: &Path,
    addresses: &BTreeMap<String, Vec<String>>,
) -> Result<Vec<pb::Nic>, OsError> {
    let base = root.join("sys/class/net");
    let mut nics = Vec::new();
    for name in list_dir(&base)? {
        let dir = base.join(&name);
        if name == "lo" || read_attr(&dir.join("type")).as_deref() == Some(ARPHRD_LOOPBACK) {
            continue;
        }
        nics.push(pb::Nic {
            mac: read_attr(&dir.join("address")).unwrap_or_default(),
            speed_mbps: parse_speed(read_attr(&dir.join("speed")).as_deref()),
            addresses: addresses.get(&name).cloned().unwrap_or_default(),
            name,
        });
    }
    Ok(nics)
}

/// The `nameserver` addresses of a resolv.conf, in order. Comments start with `#` or `;`.
/// (With systemd-resolved this is its stub, 127.0.0.53: what the host's resolver really uses.)
pub fn parse_resolv_conf(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("nameserver"), Some(addr)) => Some(addr.to_string()),
                _ => None,
            }
        })
        .collect()
}

/// The hosts of `server` and `pool` lines in chrony or ntpd syntax (`server HOST [options]`;
/// ntpd's `-4`/`-6` flags before the host are skipped). Lines starting with `#`, `!`, `;` or
/// `%` are comments (chrony accepts all four, ntpd `#`); so is anything after a `#`.
pub fn parse_server_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("server" | "pool") => words.find(|w| !w.starts_with('-')),
                _ => None,
            }
        })
        .map(str::to_string)
        .collect()
}

/// The `NTP=` servers of systemd-timesyncd configuration texts, read in order as systemd does:
/// in the `[Time]` section, each `NTP=` adds its space-separated servers and an empty `NTP=`
/// clears the list so far.
pub fn parse_timesyncd<'a>(texts: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut servers = Vec::new();
    for text in texts {
        let mut in_time = false;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if line.starts_with('[') {
                in_time = line == "[Time]";
                continue;
            }
            if !in_time {
                continue;
            }
            if let Some((key, value)) = line.split_once('=')
                && key.trim() == "NTP"
            {
                let value = value.trim();
                if value.is_empty() {
                    servers.clear();
                } else {
                    servers.extend(value.split_whitespace().map(str::to_string));
                }
            }
        }
    }
    servers
}

/// Groups (interface, address, prefix) triples into "ADDR/PREFIX" strings per interface, IPv4
/// before IPv6 and in address order, so the list is stable between reports.
///
/// IPv6 link-local addresses (fe80::/10) are left out: every IPv6 interface has one, derived
/// from its MAC or random, so they add churn and no inventory value (if-addrs drops them too
/// unless its `link-local` feature is on). IPv4 link-local (169.254/16) stays: it is a real,
/// telling state (DHCP failed).
pub fn group_addresses(
    items: impl IntoIterator<Item = (String, IpAddr, u8)>,
) -> BTreeMap<String, Vec<String>> {
    let mut sorted: BTreeMap<String, BTreeSet<(IpAddr, u8)>> = BTreeMap::new();
    for (name, ip, prefix) in items {
        if let IpAddr::V6(v6) = ip
            && (v6.segments()[0] & 0xffc0) == 0xfe80
        {
            continue;
        }
        sorted.entry(name).or_default().insert((ip, prefix));
    }
    sorted
        .into_iter()
        .map(|(name, set)| {
            let list = set
                .into_iter()
                .map(|(ip, prefix)| format!("{ip}/{prefix}"))
                .collect();
            (name, list)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_grouped_and_ordered() {
        let items = vec![
            ("eth0".to_string(), "fe80::1".parse().unwrap(), 64),
            ("eth0".to_string(), "192.0.2.10".parse().unwrap(), 24),
            ("eth1".to_string(), "10.0.0.1".parse().unwrap(), 8),
            ("eth0".to_string(), "10.1.1.1".parse().unwrap(), 16),
            (
                "eth0".to_string(),
                "fe80::5054:ff:fe12:3456".parse().unwrap(),
                64,
            ),
            ("eth0".to_string(), "febf::1".parse().unwrap(), 64),
            ("eth0".to_string(), "169.254.3.4".parse().unwrap(), 16),
            ("eth1".to_string(), "fd00::1".parse().unwrap(), 64),
        ];
        let grouped = group_addresses(items);
        assert_eq!(
            grouped["eth0"],
            vec!["10.1.1.1/16", "169.254.3.4/16", "192.0.2.10/24"]
        );
        assert_eq!(grouped["eth1"], vec!["10.0.0.1/8", "fd00::1/64"]);
    }

    #[test]
    fn resolv_conf_name_servers_in_order() {
        let text = "nameserver 10.0.0.1\n#nameserver 10.0.0.9\n  nameserver   10.0.0.2  # dc2\nnameserver\ndomain x\n";
        assert_eq!(parse_resolv_conf(text), ["10.0.0.1", "10.0.0.2"]);
        assert!(parse_resolv_conf("").is_empty());
    }

    #[test]
    fn chrony_and_ntpd_server_lines() {
        let chrony = "! comment\n# server commented.example\npool pool.example iburst maxsources 4\nserver 192.0.2.1 iburst # lab\npeer peer.example\nmakestep 1 3\n";
        assert_eq!(parse_server_lines(chrony), ["pool.example", "192.0.2.1"]);
        let ntpd = "driftfile /var/lib/ntp/ntp.drift\nserver -4 ntp.example iburst\npool 0.pool.example\nrestrict default nomodify\n";
        assert_eq!(parse_server_lines(ntpd), ["ntp.example", "0.pool.example"]);
    }

    #[test]
    fn timesyncd_ntp_lists() {
        let main = "[Time]\n#NTP=\nNTP=a.example b.example\nFallbackNTP=fallback.example\n";
        assert_eq!(parse_timesyncd([main]), ["a.example", "b.example"]);
        // A drop-in adds; an empty assignment resets.
        let add = "[Time]\nNTP=c.example\n";
        assert_eq!(
            parse_timesyncd([main, add]),
            ["a.example", "b.example", "c.example"]
        );
        let reset = "[Time]\nNTP=\nNTP=d.example\n";
        assert_eq!(parse_timesyncd([main, reset]), ["d.example"]);
        // Keys outside [Time] are not servers.
        assert!(parse_timesyncd(["[Other]\nNTP=x\n"]).is_empty());
    }

    /// chrony, then ntpd, then timesyncd: the first that names a server wins.
    #[test]
    fn ntp_source_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let write = |rel: &str, text: &str| {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        assert!(read_ntp_servers(root).is_empty());
        write("etc/systemd/timesyncd.conf", "[Time]\nNTP=ts1.example\n");
        write(
            "etc/systemd/timesyncd.conf.d/10-site.conf",
            "[Time]\nNTP=ts2.example\n",
        );
        write(
            "etc/systemd/timesyncd.conf.d/README",
            "[Time]\nNTP=not-a-drop-in\n",
        );
        assert_eq!(read_ntp_servers(root), ["ts1.example", "ts2.example"]);
        write("etc/ntpsec/ntp.conf", "pool ntpsec.example iburst\n");
        assert_eq!(read_ntp_servers(root), ["ntpsec.example"]);
        // A chrony config without servers does not count.
        write("etc/chrony.conf", "driftfile /var/lib/chrony/drift\n");
        assert_eq!(read_ntp_servers(root), ["ntpsec.example"]);
        write("etc/chrony/conf.d/b.conf", "server b.example\n");
        write(
            "etc/chrony/conf.d/a.conf",
            "server a.example\nserver b.example\n",
        );
        assert_eq!(read_ntp_servers(root), ["a.example", "b.example"]);
    }
}
