//! CPU, memory and block devices: /proc/cpuinfo, /proc/meminfo and /sys/block (size, model,
//! serial from text, VPD page 0x80 or WWID, rotational).

use std::collections::BTreeSet;
use std::path::Path;

use muster::pb;

use super::OsError;
use super::files::{list_dir, read_attr};

pub(super) fn read_block_devices(root: &Path) -> Result<Vec<pb::BlockDevice>, OsError> {
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
pub(super) fn read_serial(dir: &Path) -> String {
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::collect::os) const CPUINFO_2_SOCKETS: &str = "\
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
}
