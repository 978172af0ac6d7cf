//! SMART collector against the real `smartctl` (smartmontools 7.3): it replays synthesized ATA
//! transcripts from `tests/fixtures/smart/`, so these tests read genuine smartctl JSON, failing
//! disks included. NVMe cannot be replayed; its fixtures are JSON written by hand.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use muster::pb;
use muster_agent::collect::smart::{self, DiskRef, SmartError, exit};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/smart");
/// Real smartctl outputs from public projects, kept outside the repository (see its SOURCES.md).
const SHARED_SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/smart-samples");

/// The installed smartctl: `/usr/sbin/smartctl`, or the first one on PATH.
fn smartctl() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/smartctl");
    if sbin.is_file() {
        return sbin;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("smartctl"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("smartctl not found: install smartmontools (7.0 or newer)"))
}

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

async fn replay(name: &str) -> pb::SmartDisk {
    smart::collect_disk(&smartctl(), &DiskRef::Replay(fixture(name)))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn attr(disk: &pb::SmartDisk, id: u32) -> &pb::SmartAttribute {
    disk.attributes
        .iter()
        .find(|a| a.id == id)
        .unwrap_or_else(|| panic!("{}: no attribute {id}", disk.device))
}

#[tokio::test]
async fn healthy_hdd_replayed_through_smartctl() {
    let disk = replay("hdd-healthy.ioctl").await;
    assert_eq!(disk.device, "replay:hdd-healthy.ioctl");
    assert_eq!(disk.model, "SIMDISK HDD-4000");
    assert_eq!(disk.serial, "SIMHDD0001");
    assert!(disk.passed);
    assert_eq!(disk.exit_status, 0);
    assert_eq!(disk.attributes.len(), 10);
    assert_eq!(
        *attr(&disk, 5),
        pb::SmartAttribute {
            id: 5,
            name: "Reallocated_Sector_Ct".into(),
            value: 100,
            worst: 100,
            thresh: 5,
            raw: 0,
        }
    );
    assert_eq!(attr(&disk, 9).name, "Power_On_Hours");
    assert_eq!(attr(&disk, 9).raw, 17520);
    assert!(disk.nvme.is_none());

    let report = smart::collect_report(&smartctl(), &DiskRef::Replay(fixture("hdd-healthy.ioctl")))
        .await
        .unwrap();
    assert_eq!(report.rotation_rate, Some(7200));
    assert_eq!(report.solid_state(), Some(false));
}

#[tokio::test]
async fn ssd_is_detected_as_solid_state() {
    let disk = DiskRef::Replay(fixture("ssd-healthy.ioctl"));
    let report = smart::collect_report(&smartctl(), &disk).await.unwrap();
    assert_eq!(report.rotation_rate, Some(0));
    assert_eq!(report.solid_state(), Some(true));
    assert_eq!(report.protocol.as_deref(), Some("ATA"));
    let disk = report.disk;
    assert_eq!(disk.model, "SIMDISK SSD-960");
    assert_eq!(disk.serial, "SIMSSD0001");
    assert!(disk.passed);
    assert_eq!(disk.exit_status, 0);
    assert_eq!(attr(&disk, 177).name, "Wear_Leveling_Count");
    assert_eq!(attr(&disk, 177).raw, 31);
    assert_eq!(attr(&disk, 241).raw, 1_234_567);
}

#[tokio::test]
async fn reallocated_sectors_grow_on_the_same_disk() {
    let before = replay("hdd-realloc-8.ioctl").await;
    let after = replay("hdd-realloc-24.ioctl").await;
    assert_eq!(before.serial, "SIMHDD0042");
    assert_eq!(after.serial, before.serial);
    assert_eq!(after.model, "SIMDISK HDD-8000");
    assert_eq!(attr(&before, 5).raw, 8);
    assert_eq!(attr(&after, 5).raw, 24);
    assert_eq!(attr(&before, 197).raw, 2);
    assert_eq!(attr(&after, 197).raw, 6);
    // Still above threshold: smartctl itself calls both readings healthy.
    for disk in [&before, &after] {
        assert!(disk.passed);
        assert_eq!(disk.exit_status, 0);
    }
}

#[tokio::test]
async fn failing_disk_is_data_not_an_error() {
    let disk = replay("hdd-failing.ioctl").await;
    assert_eq!(disk.serial, "SIMHDD0666");
    assert!(!disk.passed);
    assert_ne!(
        disk.exit_status & exit::DISK_FAILING,
        0,
        "{}",
        disk.exit_status
    );
    assert_ne!(disk.exit_status & exit::PREFAIL_BELOW_THRESHOLD, 0);
    assert_eq!(disk.exit_status, 24);
    let realloc = attr(&disk, 5);
    assert!(realloc.value <= realloc.thresh, "{realloc:?}");
    assert_eq!(realloc.raw, 3072);
    assert_eq!(attr(&disk, 197).raw, 120);
}

#[tokio::test]
async fn nvme_fixtures() {
    let read = |name: &str| smart::parse(&std::fs::read(fixture(name)).unwrap()).unwrap();

    let healthy = read("nvme-healthy.json");
    assert_eq!(healthy.device, "/dev/nvme0");
    assert_eq!(healthy.model, "SIMNVME NV-960");
    assert_eq!(healthy.serial, "SIMNVME0001");
    assert!(healthy.passed);
    assert_eq!(healthy.exit_status, 0);
    assert!(healthy.attributes.is_empty());
    assert_eq!(
        healthy.nvme,
        Some(pb::NvmeHealth {
            critical_warning: 0,
            media_errors: 0,
            percentage_used: 2,
            available_spare: 100,
            available_spare_threshold: 10,
            temperature_c: 41,
        })
    );

    let critical = read("nvme-critical.json");
    assert_eq!(critical.device, "/dev/nvme1");
    assert_eq!(critical.serial, "SIMNVME0013");
    assert!(!critical.passed);
    assert_eq!(critical.exit_status, exit::DISK_FAILING);
    let nvme = critical.nvme.unwrap();
    assert_eq!(nvme.critical_warning, 5);
    assert_eq!(nvme.media_errors, 37);
    assert!(nvme.available_spare < nvme.available_spare_threshold);
    assert_eq!(nvme.percentage_used, 112);
    assert_eq!(nvme.temperature_c, 58);
}

#[tokio::test]
async fn collect_all_keeps_the_disks_it_could_read() {
    let disks = [
        DiskRef::Replay(fixture("hdd-healthy.ioctl")),
        DiskRef::Replay(fixture("does-not-exist.ioctl")),
        DiskRef::Device {
            name: "/dev/muster-no-such-disk".into(),
            dev_type: None,
        },
        DiskRef::Replay(fixture("hdd-failing.ioctl")),
    ];
    let (read, errors) = smart::collect_all(&smartctl(), &disks).await;
    let serials: Vec<&str> = read.iter().map(|d| d.serial.as_str()).collect();
    assert_eq!(serials, ["SIMHDD0001", "SIMHDD0666"]);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        matches!(&errors[0], SmartError::Transcript { path, .. } if path.ends_with("does-not-exist.ioctl")),
        "{:?}",
        errors[0]
    );
    // The real smartctl's own message comes through.
    let msg = errors[1].to_string();
    assert!(
        matches!(errors[1], SmartError::Failed { .. })
            && msg.contains("/dev/muster-no-such-disk")
            && msg.contains("Unable to detect device type"),
        "{msg}"
    );
}

#[tokio::test]
async fn unknown_device_type_is_an_error_with_smartctls_hint() {
    let disk = DiskRef::parse("/dev/sda:nosuchtype").unwrap();
    let err = smart::collect_disk(&smartctl(), &disk).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, SmartError::Failed { exit_status, .. } if exit_status & exit::COMMAND_LINE != 0),
        "{err:?}"
    );
    assert!(msg.contains("Unknown device type 'nosuchtype'"), "{msg}");
}

#[tokio::test]
async fn scan_runs_the_real_smartctl() {
    // This machine has no SMART-capable disk, so the list may well be empty; what matters is
    // that the real output parses.
    let disks = smart::scan(&smartctl()).await.unwrap();
    for disk in disks {
        assert!(matches!(disk, DiskRef::Device { .. }), "{disk:?}");
    }
}

#[tokio::test]
async fn missing_smartctl_is_a_clear_error() {
    let path = Path::new("/nonexistent/muster/smartctl");
    let err = smart::collect_disk(path, &DiskRef::Replay(fixture("hdd-healthy.ioctl")))
        .await
        .unwrap_err();
    assert!(matches!(err, SmartError::Spawn { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("/nonexistent/muster/smartctl") && msg.contains("install smartmontools"),
        "{msg}"
    );
    let err = smart::scan(path).await.unwrap_err();
    assert!(matches!(err, SmartError::Spawn { .. }), "{err:?}");
}

/// Writes an executable script and waits until it can be executed: another test thread forking
/// while the file is open for writing makes exec fail with ETXTBSY for a moment.
fn write_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match std::process::Command::new(path).arg("--probe").status() {
            Ok(status) => {
                assert!(status.success(), "{} --probe: {status}", path.display());
                return;
            }
            Err(e) if e.raw_os_error() == Some(26) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{}: {e}", path.display()),
        }
    }
}

/// Whether a process is still running (a zombie has finished; it only awaits reaping).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        // "PID (COMM) STATE ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start())
            .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X')),
    }
}

#[tokio::test]
async fn hung_smartctl_is_killed_by_the_callers_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("smartctl");
    let pid_file = dir.path().join("pid");
    write_script(
        &fake,
        &format!(
            "#!/bin/sh\n[ \"$1\" = --probe ] && exit 0\necho $$ > {}\nexec sleep 100000\n",
            pid_file.display()
        ),
    );
    let disk = DiskRef::parse("/dev/sda").unwrap();
    let result =
        tokio::time::timeout(Duration::from_secs(2), smart::collect_disk(&fake, &disk)).await;
    assert!(result.is_err(), "the fake smartctl returned: {result:?}");

    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(pid) {
        assert!(
            Instant::now() < deadline,
            "the fake smartctl (pid {pid}) outlived the timeout"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn parses_every_shared_real_world_sample() {
    let dir = Path::new(SHARED_SAMPLES);
    // The samples live beside the project (../shared), never in it; a missing directory is
    // a failure, not a skip.
    assert!(
        dir.is_dir(),
        "{} does not exist: the real smartctl samples must sit in ../shared beside the project",
        dir.display()
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.json in {}", dir.display());
    let mut kinds = (0, 0, 0);
    for path in &files {
        let json = std::fs::read(path).unwrap();
        let report =
            smart::parse_report(&json).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let disk = &report.disk;
        assert!(
            !disk.model.is_empty() || !disk.serial.is_empty(),
            "{}: neither model nor serial",
            path.display()
        );
        assert!(
            !disk.device.is_empty(),
            "{}: no device name",
            path.display()
        );
        match report.protocol.as_deref() {
            Some("ATA") => {
                assert!(!disk.attributes.is_empty(), "{}", path.display());
                kinds.0 += 1;
            }
            Some("NVMe") => {
                assert!(disk.nvme.is_some(), "{}", path.display());
                kinds.1 += 1;
            }
            Some("SCSI") => kinds.2 += 1,
            other => panic!("{}: protocol {other:?}", path.display()),
        }
    }
    println!(
        "parsed {} shared samples: {} ATA, {} NVMe, {} SCSI",
        files.len(),
        kinds.0,
        kinds.1,
        kinds.2
    );
}
