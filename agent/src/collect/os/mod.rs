//! OS facts: hostname, release, kernel, boot time, timezone, name and time servers, kernel
//! parameters, package format, CPU, memory, NICs and block devices, read from `/proc`, `/sys`
//! and `/etc`.
//!
//! Parsing lives in pure functions over strings (unit-tested with inline samples); the readers
//! around them are thin. By job: `release` (os-release, boot time, uptime, time zone, package
//! format), `net` (NICs and addresses, name and time servers), `sysctl` (kernel parameters),
//! `hardware` (CPU, memory, block devices), `files` (reading under the root); this file puts
//! one pass together. The package *list* is `collect::packages`. Everything reads under a root directory so tests can point the collector
//! at a fake tree; interface addresses are the one exception (they come from the running kernel
//! through `getifaddrs`, matched to the NIC names found under the root).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use muster::pb;

mod files;
mod hardware;
mod net;
mod release;
mod sysctl;

use files::{parse_error, read_optional, read_required};
use hardware::read_block_devices;
pub use hardware::{
    is_virtual_block_device, parse_cpuinfo, parse_meminfo_total, parse_sectors, parse_speed,
    serial_from_vpd_pg80,
};
pub use net::{group_addresses, parse_resolv_conf, parse_server_lines, parse_timesyncd};
use net::{prefix_len, read_nics, read_ntp_servers};
use release::{package_format_at, read_timezone};
pub use release::{parse_btime, parse_os_release, parse_uptime, timezone_from_link};
use sysctl::read_sysctl;
pub use sysctl::{normalize_sysctl_value, sysctl_path};

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

/// Where the kernel publishes its boot id (a new value means the host rebooted); the agent's
/// `boot_id_file` setting can point elsewhere (a test host "reboots" by writing a new id).
pub const DEFAULT_BOOT_ID_FILE: &str = "/proc/sys/kernel/random/boot_id";

/// Reads a boot id from `path`, trimmed. An empty file is an error: an empty id would make
/// every reboot check meaningless. Blocking.
pub fn read_boot_id(path: &Path) -> Result<String, OsError> {
    let text = std::fs::read_to_string(path).map_err(|source| OsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let id = text.trim();
    if id.is_empty() {
        return Err(OsError::Parse {
            path: path.to_path_buf(),
            reason: "the boot id file is empty".into(),
        });
    }
    Ok(id.to_string())
}

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

#[cfg(test)]
mod tests {
    use super::hardware::tests::CPUINFO_2_SOCKETS;
    use super::release::tests::DEBIAN;
    use super::*;

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
    fn missing_proc_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = collect_at(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("proc/sys/kernel/hostname"), "{msg}");
    }

    #[test]
    fn boot_id_from_a_configured_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("boot_id");
        std::fs::write(&p, "11111111-2222-3333-4444-555555555555\n").unwrap();
        assert_eq!(
            read_boot_id(&p).unwrap(),
            "11111111-2222-3333-4444-555555555555"
        );
        std::fs::write(&p, " \n").unwrap();
        let err = read_boot_id(&p).unwrap_err().to_string();
        assert!(err.contains("empty") && err.contains("boot_id"), "{err}");
        let err = read_boot_id(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing"), "{err}");
    }
}
