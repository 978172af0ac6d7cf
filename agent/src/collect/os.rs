//! OS facts: hostname, release, kernel, boot time, timezone, name and time servers, kernel
//! parameters, package format, CPU, memory, NICs and block devices, read from `/proc`, `/sys`
//! and `/etc`.
//!
//! Parsing lives in pure functions over strings (unit-tested with inline samples); the readers
//! around them are thin. Everything reads under a root directory so tests can point the collector
//! at a fake tree; interface addresses are the one exception (they come from the running kernel
//! through `getifaddrs`, matched to the NIC names found under the root).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use muster::pb;

/// Everything the OS collector learns in one pass; the caller places each part in the report.
#[derive(Debug, Clone, PartialEq)]
pub struct OsSnapshot {
    pub os: pb::OsFacts,
    pub cpu: pb::CpuFacts,
    /// `MemTotal` from `/proc/meminfo`, in bytes.
    pub memory_bytes: u64,
    /// Network interfaces except loopback, sorted by name; addresses as "ADDR/PREFIX" without
    /// IPv6 link-local ones (see [`group_addresses`]).
    pub nics: Vec<pb::Nic>,
    /// Block devices except virtual ones (loop, ram, zram, device-mapper, md, nbd), by name.
    pub disks: Vec<pb::BlockDevice>,
    /// Kernel boot id: a new value means the host rebooted.
    pub boot_id: String,
    /// Machine-readable distribution identity (`OsFacts::release` is the human form), for
    /// labels and selectors such as `os=debian,os_version=12`.
    pub os_release: OsRelease,
    /// Optional facts that could not be read (e.g. interface addresses), so the caller can
    /// surface them in the collector status instead of losing them silently.
    pub warnings: Vec<String>,
}

/// The identifying fields of `/etc/os-release`; empty strings where the file has no such key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OsRelease {
    /// `ID`, e.g. "debian", "rhel".
    pub id: String,
    /// `VERSION_ID`, e.g. "12", "9.4".
    pub version_id: String,
    /// `PRETTY_NAME`, or `NAME VERSION_ID`, or `NAME`: what `OsFacts::release` holds.
    pub pretty: String,
}

/// Why the OS facts could not be collected.
#[derive(Debug, thiserror::Error)]
pub enum OsError {
    /// A file every Linux host has could not be read (is /proc mounted? is this Linux?).
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// A file was read but did not have the expected shape.
    #[error("unexpected content in {}: {reason}", path.display())]
    Parse { path: PathBuf, reason: String },
}

/// Kernel parameters read on every host, whatever the config adds: the ones operators most
/// often manage (memory overcommit and swapping, forwarding, listen backlog, panic reboot, open
/// files, SYN cookies).
pub const DEFAULT_SYSCTL_KEYS: [&str; 8] = [
    "vm.swappiness",
    "vm.overcommit_memory",
    "vm.max_map_count",
    "net.ipv4.ip_forward",
    "net.core.somaxconn",
    "kernel.panic",
    "fs.file-max",
    "net.ipv4.tcp_syncookies",
];

/// Collects the facts of the running host (root "/") with the default kernel parameters.
/// Blocking: call from `spawn_blocking`.
pub fn collect() -> Result<OsSnapshot, OsError> {
    collect_with(&[])
}

/// Collects the facts of the running host, reading `extra_sysctl_keys` besides
/// [`DEFAULT_SYSCTL_KEYS`]. Blocking.
pub fn collect_with(extra_sysctl_keys: &[String]) -> Result<OsSnapshot, OsError> {
    collect_at_with(Path::new("/"), extra_sysctl_keys)
}

/// Collects the facts under `root` ("/" normally; a fake tree in tests). Blocking.
pub fn collect_at(root: &Path) -> Result<OsSnapshot, OsError> {
    collect_at_with(root, &[])
}

/// [`collect_at`] with extra kernel parameters (dotted names, e.g. `net.ipv4.conf.all.rp_filter`).
pub fn collect_at_with(root: &Path, extra_sysctl_keys: &[String]) -> Result<OsSnapshot, OsError> {
    let mut warnings = Vec::new();

    let hostname = read_required(root, "proc/sys/kernel/hostname")?
        .trim()
        .to_string();
    let kernel = read_required(root, "proc/sys/kernel/osrelease")?
        .trim()
        .to_string();
    let boot_id = read_required(root, "proc/sys/kernel/random/boot_id")?
        .trim()
        .to_string();

    let os_release = match read_optional(root, "etc/os-release")
        .or_else(|| read_optional(root, "usr/lib/os-release"))
    {
        Some(text) => parse_os_release(&text),
        None => {
            warnings.push("neither /etc/os-release nor /usr/lib/os-release is readable".into());
            OsRelease {
                pretty: "Linux".into(),
                ..OsRelease::default()
            }
        }
    };

    let stat_path = "proc/stat";
    let btime = parse_btime(&read_required(root, stat_path)?)
        .ok_or_else(|| parse_error(root, stat_path, "no `btime` line"))?;
    let uptime_path = "proc/uptime";
    let uptime_seconds = parse_uptime(&read_required(root, uptime_path)?)
        .ok_or_else(|| parse_error(root, uptime_path, "expected `SECONDS IDLE`"))?;

    let timezone = read_timezone(root);

    let cpuinfo_path = "proc/cpuinfo";
    let cpu = parse_cpuinfo(&read_required(root, cpuinfo_path)?);
    if cpu.threads == 0 {
        return Err(parse_error(root, cpuinfo_path, "no `processor` entries"));
    }

    let meminfo_path = "proc/meminfo";
    let memory_bytes = parse_meminfo_total(&read_required(root, meminfo_path)?)
        .ok_or_else(|| parse_error(root, meminfo_path, "no `MemTotal: N kB` line"))?;

    let addresses = match if_addrs::get_if_addrs() {
        Ok(list) => group_addresses(
            list.into_iter()
                .map(|i| (i.name.clone(), i.ip(), prefix_len(&i.addr))),
        ),
        Err(e) => {
            warnings.push(format!("cannot list interface addresses: {e}"));
            BTreeMap::new()
        }
    };
    let nics = read_nics(root, &addresses)?;
    let disks = read_block_devices(root)?;

    let dns_servers = read_optional(root, "etc/resolv.conf")
        .map(|text| parse_resolv_conf(&text))
        .unwrap_or_default();
    let ntp_servers = read_ntp_servers(root);
    let keys = DEFAULT_SYSCTL_KEYS
        .iter()
        .copied()
        .chain(extra_sysctl_keys.iter().map(String::as_str));
    let sysctl = read_sysctl(root, keys, &mut warnings);

    Ok(OsSnapshot {
        os: pb::OsFacts {
            hostname,
            release: os_release.pretty.clone(),
            kernel,
            booted_at: Some(pbjson_types::Timestamp {
                seconds: btime,
                nanos: 0,
            }),
            uptime_seconds,
            timezone,
            dns_servers,
            ntp_servers,
            sysctl,
            package_format: package_format_at(root).to_string(),
        },
        cpu,
        memory_bytes,
        nics,
        disks,
        boot_id,
        os_release,
        warnings,
    })
}

fn prefix_len(addr: &if_addrs::IfAddr) -> u8 {
    match addr {
        if_addrs::IfAddr::V4(a) => a.prefixlen,
        if_addrs::IfAddr::V6(a) => a.prefixlen,
    }
}

// ---------------------------------------------------------------------------------------------
// Thin readers.

fn read_required(root: &Path, rel: &str) -> Result<String, OsError> {
    let path = root.join(rel);
    std::fs::read_to_string(&path).map_err(|source| OsError::Read { path, source })
}

fn read_optional(root: &Path, rel: &str) -> Option<String> {
    std::fs::read_to_string(root.join(rel)).ok()
}

/// A sysfs attribute, trimmed; `None` when absent, unreadable (EINVAL on virtual NICs) or empty.
fn read_attr(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

fn parse_error(root: &Path, rel: &str, reason: &str) -> OsError {
    OsError::Parse {
        path: root.join(rel),
        reason: reason.to_string(),
    }
}

fn read_timezone(root: &Path) -> String {
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

/// Time servers from the first NTP client configuration that names any, in this order: chrony
/// (`/etc/chrony/chrony.conf`, `/etc/chrony.conf`, then `*.conf` in `/etc/chrony/conf.d` and
/// `*.sources` in `/etc/chrony/sources.d`), ntpd (`/etc/ntp.conf`, `/etc/ntpsec/ntp.conf`),
/// systemd-timesyncd (`/etc/systemd/timesyncd.conf`, then `timesyncd.conf.d/*.conf`). Within a
/// source, in file order, each server once.
fn read_ntp_servers(root: &Path) -> Vec<String> {
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

/// Regular files in `dir` whose name ends in `suffix`, sorted by name (the order chrony and
/// systemd read drop-ins in); none when the directory does not exist.
fn files_with_suffix(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut names: Vec<String> = list_dir(dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.ends_with(suffix) && !n.starts_with('.'))
        .collect();
    names.sort();
    names.into_iter().map(|n| dir.join(n)).collect()
}

fn dedup(items: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    items
        .into_iter()
        .filter(|s| seen.insert(s.clone()))
        .collect()
}

/// Kernel parameters under `<root>/proc/sys`, by dotted name; each key once, those that do not
/// exist left out. A key that exists but cannot be read (write-only, permission) becomes a
/// warning; an invalid name too.
fn read_sysctl<'a>(
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

/// The package format of the host from its package database: "deb" when dpkg's status file
/// exists, "rpm" when an rpm database does, else empty. The agent's packages collector, when it
/// runs, has the last word (it knows which tool actually answered; see `run.rs`).
fn package_format_at(root: &Path) -> &'static str {
    if root.join("var/lib/dpkg/status").is_file() {
        "deb"
    } else if root.join("var/lib/rpm").is_dir() || root.join("usr/lib/sysimage/rpm").is_dir() {
        "rpm"
    } else {
        ""
    }
}

/// Entry names of a directory, sorted; a missing directory is an empty list (a container may
/// lack /sys/block), any other failure is an error.
fn list_dir(dir: &Path) -> Result<Vec<String>, OsError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(OsError::Read {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| OsError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// ARPHRD_LOOPBACK in `/sys/class/net/X/type`.
const ARPHRD_LOOPBACK: &str = "772";

fn read_nics(
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

fn read_block_devices(root: &Path) -> Result<Vec<pb::BlockDevice>, OsError> {
    let base = root.join("sys/block");
    let mut disks = Vec::new();
    for name in list_dir(&base)? {
        if is_virtual_block_device(&name) {
            continue;
        }
        let dir = base.join(&name);
        let size_path = dir.join("size");
        let sectors = read_attr(&size_path).unwrap_or_default();
        let size_bytes = parse_sectors(&sectors).ok_or_else(|| OsError::Parse {
            path: size_path.clone(),
            reason: format!("expected a sector count, found {sectors:?}"),
        })?;
        disks.push(pb::BlockDevice {
            size_bytes,
            model: read_attr(&dir.join("device/model")).unwrap_or_default(),
            serial: read_serial(&dir),
            rotational: read_attr(&dir.join("queue/rotational")).as_deref() == Some("1"),
            name,
        });
    }
    Ok(disks)
}

/// The first serial source that exists: NVMe and virtio expose it as text, SCSI/SATA disks in
/// VPD page 0x80, and the WWID identifies the disk when there is nothing else.
fn read_serial(dir: &Path) -> String {
    read_attr(&dir.join("device/serial"))
        .or_else(|| read_attr(&dir.join("serial")))
        .or_else(|| {
            std::fs::read(dir.join("device/vpd_pg80"))
                .ok()
                .and_then(|bytes| serial_from_vpd_pg80(&bytes))
        })
        .or_else(|| read_attr(&dir.join("device/wwid")))
        .or_else(|| read_attr(&dir.join("wwid")))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Pure parsers.

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

/// Removes shell-style quotes: `"a \"b\""` → `a "b"`, `'x'` → `x`.
fn unquote(value: &str) -> String {
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

/// CPU model and topology from `/proc/cpuinfo`.
///
/// Threads are the `processor` entries; sockets the distinct `physical id`s; cores the distinct
/// (`physical id`, `core id`) pairs. VMs and some architectures omit the topology fields: then
/// there is one socket and every thread counts as a core. The model comes from `model name`
/// (x86), else `Processor`, `cpu model` or `cpu` (ARM, MIPS, POWER).
pub fn parse_cpuinfo(text: &str) -> pb::CpuFacts {
    let mut threads = 0u32;
    let mut sockets = BTreeSet::new();
    let mut cores = BTreeSet::new();
    let mut model = String::new();
    let mut fallback_model = String::new();
    // Per processor block: (physical id, core id).
    let mut current: (Option<String>, Option<String>) = (None, None);
    let mut in_block = false;

    let mut finish = |current: &mut (Option<String>, Option<String>), in_block: &mut bool| {
        if *in_block {
            if let Some(p) = &current.0 {
                sockets.insert(p.clone());
            }
            if let Some(c) = &current.1 {
                cores.insert((current.0.clone().unwrap_or_default(), c.clone()));
            }
        }
        *current = (None, None);
        *in_block = false;
    };

    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            if line.trim().is_empty() {
                finish(&mut current, &mut in_block);
            }
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "processor" => {
                // A new block even without a blank line before it.
                finish(&mut current, &mut in_block);
                threads += 1;
                in_block = true;
            }
            "physical id" => current.0 = Some(value.to_string()),
            "core id" => current.1 = Some(value.to_string()),
            "model name" if model.is_empty() => model = value.to_string(),
            "Processor" | "cpu model" | "cpu" if fallback_model.is_empty() => {
                fallback_model = value.to_string()
            }
            _ => {}
        }
    }
    finish(&mut current, &mut in_block);

    let sockets = match sockets.len() {
        0 if threads > 0 => 1,
        n => u32::try_from(n).unwrap_or(u32::MAX),
    };
    let cores = match cores.len() {
        0 => threads,
        n => u32::try_from(n).unwrap_or(u32::MAX),
    };
    pb::CpuFacts {
        model: if model.is_empty() {
            fallback_model
        } else {
            model
        },
        sockets,
        cores,
        threads,
    }
}

/// `MemTotal` from `/proc/meminfo` in bytes (the file says kB and means KiB).
pub fn parse_meminfo_total(text: &str) -> Option<u64> {
    let rest = text.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let mut parts = rest.split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => value.checked_mul(1024),
        Some(_) => None,
    }
}

/// Link speed in Mb/s from `/sys/class/net/X/speed`; virtual and down links report -1 or fail
/// to read, which means "unknown" and becomes 0.
pub fn parse_speed(text: Option<&str>) -> u64 {
    text.and_then(|t| t.trim().parse::<i64>().ok())
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(0)
}

/// `/sys/block/X/size` counts 512-byte sectors whatever the device's sector size.
pub fn parse_sectors(text: &str) -> Option<u64> {
    text.trim().parse::<u64>().ok()?.checked_mul(512)
}

/// Block devices that are not hardware: loop, RAM disks, zram, device-mapper, md RAID, nbd,
/// floppies. They would make every host look different for no inventory value.
pub fn is_virtual_block_device(name: &str) -> bool {
    const PREFIXES: [&str; 7] = ["loop", "ram", "zram", "dm-", "md", "nbd", "fd"];
    PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The serial number in a SCSI VPD page 0x80 (Unit Serial Number): a 4-byte header whose bytes
/// 2..4 give the length, then ASCII, often padded with spaces.
pub fn serial_from_vpd_pg80(page: &[u8]) -> Option<String> {
    if page.len() < 4 || page[1] != 0x80 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([page[2], page[3]]));
    let body = page.get(4..4 + len).unwrap_or(&page[4..]);
    let text: String = body
        .iter()
        .filter(|b| b.is_ascii_graphic() || **b == b' ')
        .map(|b| char::from(*b))
        .collect();
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
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

    const DEBIAN: &str = r#"PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
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

    const CPUINFO_2_SOCKETS: &str = "\
processor\t: 0
model name\t: Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz
physical id\t: 0
core id\t\t: 0

processor\t: 1
model name\t: Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz
physical id\t: 0
core id\t\t: 1

processor\t: 2
model name\t: Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz
physical id\t: 1
core id\t\t: 0

processor\t: 3
model name\t: Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz
physical id\t: 1
core id\t\t: 1

processor\t: 4
model name\t: Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz
physical id\t: 0
core id\t\t: 0

processor\t: 5
model name\t: Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz
physical id\t: 0
core id\t\t: 1
";

    #[test]
    fn cpuinfo_counts_sockets_cores_threads() {
        let cpu = parse_cpuinfo(CPUINFO_2_SOCKETS);
        assert_eq!(cpu.model, "Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz");
        assert_eq!(cpu.threads, 6);
        assert_eq!(cpu.sockets, 2);
        // Core ids repeat across sockets: (0,0) (0,1) (1,0) (1,1).
        assert_eq!(cpu.cores, 4);
    }

    #[test]
    fn cpuinfo_without_topology_is_one_socket_of_single_thread_cores() {
        let text = "processor : 0\nmodel name : QEMU Virtual CPU\n\nprocessor : 1\nmodel name : QEMU Virtual CPU\n";
        let cpu = parse_cpuinfo(text);
        assert_eq!((cpu.sockets, cpu.cores, cpu.threads), (1, 2, 2));
        assert_eq!(cpu.model, "QEMU Virtual CPU");
    }

    #[test]
    fn cpuinfo_arm_style_model() {
        let text = "Processor\t: ARMv7 Processor rev 4 (v7l)\nprocessor\t: 0\nBogoMIPS\t: 38.40\n\nprocessor\t: 1\n";
        let cpu = parse_cpuinfo(text);
        assert_eq!(cpu.model, "ARMv7 Processor rev 4 (v7l)");
        assert_eq!(cpu.threads, 2);
        assert_eq!(parse_cpuinfo("").threads, 0);
    }

    #[test]
    fn meminfo_total_in_bytes() {
        let text = "MemTotal:        8041416 kB\nMemFree:          123 kB\n";
        assert_eq!(parse_meminfo_total(text), Some(8_041_416 * 1024));
        assert_eq!(parse_meminfo_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_meminfo_total("MemTotal: 1 MB\n"), None);
    }

    #[test]
    fn speed_unknown_is_zero() {
        assert_eq!(parse_speed(Some("10000")), 10_000);
        assert_eq!(parse_speed(Some("-1")), 0);
        assert_eq!(parse_speed(None), 0);
        assert_eq!(parse_speed(Some("garbage")), 0);
    }

    #[test]
    fn sectors_and_virtual_devices() {
        assert_eq!(parse_sectors("536870912\n"), Some(274_877_906_944));
        assert_eq!(parse_sectors("x"), None);
        for name in ["loop0", "ram1", "zram0", "dm-3", "md127", "nbd0"] {
            assert!(is_virtual_block_device(name), "{name}");
        }
        for name in ["sda", "vda", "nvme0n1", "xvda", "mmcblk0"] {
            assert!(!is_virtual_block_device(name), "{name}");
        }
    }

    #[test]
    fn vpd_page_80_serial() {
        let mut page = vec![0x00, 0x80, 0x00, 0x0c];
        page.extend_from_slice(b"  WD-WCC4N12");
        assert_eq!(serial_from_vpd_pg80(&page).as_deref(), Some("WD-WCC4N12"));
        assert_eq!(serial_from_vpd_pg80(&[0, 0x83, 0, 0]), None);
        assert_eq!(serial_from_vpd_pg80(&[0, 0x80, 0, 0]), None);
    }

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

    /// A whole fake root: the readers find every file where the real system keeps it.
    #[test]
    fn collect_at_a_fake_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let write = |rel: &str, text: &str| {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write("proc/sys/kernel/hostname", "fake-host\n");
        write("proc/sys/kernel/osrelease", "6.1.0-fake\n");
        write(
            "proc/sys/kernel/random/boot_id",
            "0b5e1d2c-aaaa-bbbb-cccc-000000000001\n",
        );
        write("etc/os-release", DEBIAN);
        write("etc/timezone", "Europe/Berlin\n");
        write("proc/stat", "cpu 1 2 3\nbtime 1700000000\n");
        write("proc/uptime", "120.5 200.0\n");
        write("proc/cpuinfo", CPUINFO_2_SOCKETS);
        write("proc/meminfo", "MemTotal: 1024 kB\n");
        write("sys/class/net/lo/address", "00:00:00:00:00:00\n");
        write("sys/class/net/lo/type", "772\n");
        write("sys/class/net/zz-fake0/address", "52:54:00:12:34:56\n");
        write("sys/class/net/zz-fake0/speed", "1000\n");
        write("sys/class/net/zz-fake0/type", "1\n");
        write("sys/class/net/zz-fake1/address", "52:54:00:12:34:57\n");
        write("sys/class/net/zz-fake1/speed", "-1\n");
        write("sys/block/loop0/size", "0\n");
        write("sys/block/sda/size", "2048\n");
        write("sys/block/sda/queue/rotational", "1\n");
        write("sys/block/sda/device/model", "ST1000DM003     \n");
        write("sys/block/sda/device/wwid", "naa.5000c500a1b2c3d4\n");
        write("sys/block/nvme0n1/size", "4096\n");
        write("sys/block/nvme0n1/queue/rotational", "0\n");
        write("sys/block/nvme0n1/device/model", "Samsung SSD 980\n");
        write("sys/block/nvme0n1/device/serial", "S64DNX0R123456\n");

        write(
            "etc/resolv.conf",
            "# generated\nsearch example.net\nnameserver 192.0.2.53\n; nameserver 192.0.2.99\nnameserver 2001:db8::53\noptions edns0\n",
        );
        write(
            "etc/chrony/chrony.conf",
            "pool 2.debian.pool.ntp.org iburst\nsourcedir /etc/chrony/sources.d\n",
        );
        write(
            "etc/chrony/sources.d/site.sources",
            "server ntp1.example.net iburst\n",
        );
        write("etc/ntp.conf", "server ignored.example.net\n");
        write("proc/sys/vm/swappiness", "60\n");
        write("proc/sys/net/ipv4/ip_forward", "1\n");
        write("proc/sys/kernel/printk", "4\t4\t1\t7\n");
        write("proc/sys/net/ipv4/conf/eth0.100/rp_filter", "2\n");
        write("var/lib/dpkg/status", "Package: bash\n");

        let snap = collect_at(root).unwrap();
        assert_eq!(snap.os.dns_servers, ["192.0.2.53", "2001:db8::53"]);
        // chrony comes first, its sources.d after its main file; ntpd is not read.
        assert_eq!(
            snap.os.ntp_servers,
            ["2.debian.pool.ntp.org", "ntp1.example.net"]
        );
        // Defaults that exist only; kernel.printk is not a default.
        let sysctl: BTreeMap<_, _> = snap.os.sysctl.iter().collect();
        assert_eq!(
            sysctl,
            BTreeMap::from([
                (&"net.ipv4.ip_forward".to_string(), &"1".to_string()),
                (&"vm.swappiness".to_string(), &"60".to_string()),
            ])
        );
        assert_eq!(snap.os.package_format, "deb");
        let extra = [
            "kernel.printk".to_string(),
            "net.ipv4.conf.eth0/100.rp_filter".to_string(),
            "vm.swappiness".to_string(),
            "no.such.key".to_string(),
        ];
        let with_extra = collect_at_with(root, &extra).unwrap();
        assert_eq!(with_extra.os.sysctl["kernel.printk"], "4 4 1 7");
        assert_eq!(
            with_extra.os.sysctl["net.ipv4.conf.eth0/100.rp_filter"],
            "2"
        );
        assert_eq!(with_extra.os.sysctl.len(), 4, "{:?}", with_extra.os.sysctl);
        assert!(
            !with_extra.warnings.iter().any(|w| w.contains("sysctl")),
            "{:?}",
            with_extra.warnings
        );

        assert_eq!(snap.os.hostname, "fake-host");
        assert_eq!(snap.os.kernel, "6.1.0-fake");
        assert_eq!(snap.os.release, "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(snap.os.timezone, "Europe/Berlin");
        assert_eq!(snap.os.uptime_seconds, 120);
        assert_eq!(snap.os.booted_at.as_ref().unwrap().seconds, 1_700_000_000);
        assert_eq!(snap.boot_id, "0b5e1d2c-aaaa-bbbb-cccc-000000000001");
        assert_eq!(snap.os_release.id, "debian");
        assert_eq!(snap.memory_bytes, 1024 * 1024);
        assert_eq!(snap.cpu.threads, 6);

        let nics: Vec<_> = snap
            .nics
            .iter()
            .map(|n| (n.name.as_str(), n.mac.as_str(), n.speed_mbps))
            .collect();
        assert_eq!(
            nics,
            vec![
                ("zz-fake0", "52:54:00:12:34:56", 1000),
                ("zz-fake1", "52:54:00:12:34:57", 0)
            ]
        );

        assert_eq!(
            snap.disks,
            vec![
                pb::BlockDevice {
                    name: "nvme0n1".into(),
                    size_bytes: 4096 * 512,
                    model: "Samsung SSD 980".into(),
                    serial: "S64DNX0R123456".into(),
                    rotational: false,
                },
                pb::BlockDevice {
                    name: "sda".into(),
                    size_bytes: 2048 * 512,
                    model: "ST1000DM003".into(),
                    serial: "naa.5000c500a1b2c3d4".into(),
                    rotational: true,
                },
            ]
        );
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

    #[test]
    fn missing_proc_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = collect_at(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("proc/sys/kernel/hostname"), "{msg}");
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
}
