//! SMART collector: runs `smartctl -a -j` for each disk and turns its JSON into `SmartDisk`.
//!
//! smartctl does the talking to disks (ATA, NVMe, SCSI, RAID pass-through); this module only
//! spawns it and reads its JSON, so everything but the spawn is testable from recorded output.
//! smartctl's exit status is a bitmask (see `man smartctl` and [`exit`]): a non-zero status for
//! a failing disk is data, not an error. Only bits 0-1 (bad command line, device open failed) or
//! output that is not JSON mean that nothing was read.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use muster::pb;
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// smartctl's exit-status bits (`man smartctl`, "EXIT STATUS"), for readers of `exit_status`.
pub mod exit {
    /// Bit 0: the command line did not parse.
    pub const COMMAND_LINE: u32 = 1 << 0;
    /// Bit 1: the device could not be opened (or is in a low-power mode with `-n`).
    pub const OPEN_FAILED: u32 = 1 << 1;
    /// Bit 2: a SMART or other ATA command failed, or a data structure had a bad checksum.
    pub const COMMAND_FAILED: u32 = 1 << 2;
    /// Bit 3: the SMART status check returned "DISK FAILING".
    pub const DISK_FAILING: u32 = 1 << 3;
    /// Bit 4: pre-failure attributes are at or below their threshold now.
    pub const PREFAIL_BELOW_THRESHOLD: u32 = 1 << 4;
    /// Bit 5: some attributes were at or below their threshold in the past.
    pub const PAST_BELOW_THRESHOLD: u32 = 1 << 5;
    /// Bit 6: the device error log has errors.
    pub const ERROR_LOG: u32 = 1 << 6;
    /// Bit 7: the self-test log has errors.
    pub const SELF_TEST_LOG: u32 = 1 << 7;
    /// The bits that mean smartctl read nothing from the disk.
    pub const NOTHING_READ: u32 = COMMAND_LINE | OPEN_FAILED;

    /// What each set bit means, in bit order, for log lines and error messages.
    pub fn meanings(status: u32) -> Vec<&'static str> {
        const NAMES: [&str; 8] = [
            "command line did not parse",
            "device open failed",
            "a SMART command failed or a checksum was wrong",
            "SMART status says the disk is failing",
            "pre-failure attributes at or below threshold",
            "attributes were at or below threshold in the past",
            "device error log has errors",
            "self-test log has errors",
        ];
        NAMES
            .iter()
            .enumerate()
            .filter(|(bit, _)| status & (1 << bit) != 0)
            .map(|(_, name)| *name)
            .collect()
    }
}

/// A disk to query, from the agent's config or from `smartctl --scan-open -j`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskRef {
    /// A device smartctl opens itself; `dev_type` is its `-d TYPE` (e.g. "sat", "megaraid,3"),
    /// needed behind RAID controllers and USB bridges where smartctl cannot guess.
    Device {
        /// Device path as smartctl takes it, e.g. "/dev/sda".
        name: String,
        /// `-d` argument; `None` lets smartctl detect the type.
        dev_type: Option<String>,
    },
    /// Replays a recorded ATA transcript through the real smartctl (`smartctl -a -j -`); for
    /// tests and demos on machines without SMART-capable disks.
    Replay(PathBuf),
}

impl DiskRef {
    /// Parses the config form: "/dev/sda", "/dev/sda:sat" (`-d` type after the last colon), or
    /// "replay:/path/to/disk.ioctl".
    ///
    /// Device paths may contain colons themselves (`/dev/disk/by-path/pci-0000:00:17.0-ata-1`), so
    /// the part after the last colon is a type only if it looks like one: it starts with a
    /// lowercase letter and holds only lowercase letters, digits and `,+/-`.
    pub fn parse(s: &str) -> Result<Self, SmartError> {
        let invalid = |reason: &'static str| SmartError::InvalidDiskRef {
            input: s.to_owned(),
            reason,
        };
        let s_trimmed = s.trim();
        if let Some(path) = s_trimmed.strip_prefix("replay:") {
            if path.is_empty() {
                return Err(invalid("the replay transcript path is empty"));
            }
            return Ok(DiskRef::Replay(PathBuf::from(path)));
        }
        if s_trimmed.is_empty() {
            return Err(invalid("it is empty"));
        }
        if !s_trimmed.starts_with('/') {
            return Err(invalid("a device must be an absolute path"));
        }
        if let Some((name, dev_type)) = s_trimmed.rsplit_once(':') {
            if dev_type.is_empty() {
                return Err(invalid("the device type after ':' is empty"));
            }
            if looks_like_dev_type(dev_type) {
                return Ok(DiskRef::Device {
                    name: name.to_owned(),
                    dev_type: Some(dev_type.to_owned()),
                });
            }
        }
        Ok(DiskRef::Device {
            name: s_trimmed.to_owned(),
            dev_type: None,
        })
    }

    /// The name a collected disk is reported under when smartctl does not know it: the device
    /// path, or "replay:FILE_NAME" for a transcript (smartctl calls stdin "-").
    pub fn label(&self) -> String {
        match self {
            DiskRef::Device { name, .. } => name.clone(),
            DiskRef::Replay(path) => {
                let file = path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_else(|| path.display().to_string());
                format!("replay:{file}")
            }
        }
    }
}

/// The config form, so that `DiskRef::parse(&d.to_string()) == d`.
impl fmt::Display for DiskRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskRef::Device {
                name,
                dev_type: None,
            } => write!(f, "{name}"),
            DiskRef::Device {
                name,
                dev_type: Some(t),
            } => write!(f, "{name}:{t}"),
            DiskRef::Replay(path) => write!(f, "replay:{}", path.display()),
        }
    }
}

fn looks_like_dev_type(t: &str) -> bool {
    t.starts_with(|c: char| c.is_ascii_lowercase())
        && t.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ",+/-".contains(c))
}

/// What went wrong reading SMART data; each message names what to check or fix.
#[derive(Debug, thiserror::Error)]
pub enum SmartError {
    /// A disk in the config is not in a form [`DiskRef::parse`] understands.
    #[error(
        "invalid SMART disk {input:?}: {reason} (expected /dev/NAME, /dev/NAME:TYPE or replay:PATH)"
    )]
    InvalidDiskRef {
        /// The string as configured.
        input: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// smartctl could not be started, usually because it is not installed at that path.
    #[error(
        "cannot run smartctl at {}: {source} (install smartmontools or set the agent's smartctl path)",
        path.display()
    )]
    Spawn {
        /// The smartctl path that was tried.
        path: PathBuf,
        /// The OS error from spawning it.
        source: io::Error,
    },
    /// A replay transcript could not be read.
    #[error("cannot read SMART replay transcript {}: {source}", path.display())]
    Transcript {
        /// The transcript path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Reading smartctl's output or waiting for it failed.
    #[error("lost contact with smartctl while reading {disk}: {source}")]
    Io {
        /// The disk being read.
        disk: String,
        /// The OS error.
        source: io::Error,
    },
    /// smartctl was killed by a signal (not by us: a dropped future never gets this far).
    #[error("smartctl was killed by a signal while reading {disk}")]
    Killed {
        /// The disk being read.
        disk: String,
    },
    /// smartctl ran but read nothing (exit-status bit 0 or 1).
    #[error("smartctl could not read {disk} (exit status {exit_status}: {}): {detail}", exit::meanings(*exit_status).join(", "))]
    Failed {
        /// The disk being read.
        disk: String,
        /// smartctl's exit status.
        exit_status: u32,
        /// smartctl's own error messages (or its stderr), which usually say what to fix.
        detail: String,
    },
    /// smartctl's output is not JSON at all.
    #[error("smartctl output is not JSON ({source}); smartctl 7.0 or newer is needed for -j")]
    NotJson {
        /// The JSON parse error.
        source: serde_json::Error,
    },
    /// A field of smartctl's JSON has a type this parser does not accept.
    #[error("smartctl JSON field `{field}` should be {expected}, found {found}")]
    WrongType {
        /// Dotted path of the field, e.g. `ata_smart_attributes.table[3].raw.value`.
        field: String,
        /// What was expected, e.g. "an integer in 0..=4294967295".
        expected: &'static str,
        /// A short description of what was there.
        found: String,
    },
    /// smartctl's output for a disk could not be parsed; `cause` says which field.
    #[error("smartctl output for {disk}: {cause}")]
    BadOutput {
        /// The disk being read.
        disk: String,
        /// The parse error.
        cause: Box<SmartError>,
    },
}

/// A parsed smartctl report: the `SmartDisk` sent to the server plus what the agent reads but the
/// message has no field for yet.
#[derive(Debug, Clone, PartialEq)]
pub struct SmartReport {
    /// What the agent reports.
    pub disk: pb::SmartDisk,
    /// `device.protocol`: "ATA", "NVMe" or "SCSI".
    pub protocol: Option<String>,
    /// `rotation_rate` in rpm; smartctl writes 0 for a solid-state device.
    pub rotation_rate: Option<u32>,
}

impl SmartReport {
    /// Whether the disk is solid-state (NVMe, or rotation rate 0); `None` when smartctl did not
    /// say. Health rules differ: wear matters for SSDs, reallocation for spinning disks.
    pub fn solid_state(&self) -> Option<bool> {
        if self
            .protocol
            .as_deref()
            .is_some_and(|p| p.eq_ignore_ascii_case("nvme"))
        {
            return Some(true);
        }
        self.rotation_rate.map(|rpm| rpm == 0)
    }
}

/// Parses `smartctl -j` output (ATA, NVMe, SCSI; smartctl 7.0-7.3 shapes). Fills `exit_status`
/// from `smartctl.exit_status` and `passed` from `smart_status.passed`. Missing fields stay
/// unset; a field with the wrong type is an error naming it.
pub fn parse(json: &[u8]) -> Result<pb::SmartDisk, SmartError> {
    parse_report(json).map(|r| r.disk)
}

/// Like [`parse`], but also returns protocol and rotation rate (see [`SmartReport`]).
pub fn parse_report(json: &[u8]) -> Result<SmartReport, SmartError> {
    let value: Value =
        serde_json::from_slice(json).map_err(|source| SmartError::NotJson { source })?;
    report_from_value(&value)
}

fn report_from_value(value: &Value) -> Result<SmartReport, SmartError> {
    let root = Obj::root(value)?;
    let mut disk = pb::SmartDisk::default();

    if let Some(smartctl) = root.obj("smartctl")?
        && let Some(status) = smartctl.u32("exit_status")?
    {
        disk.exit_status = status;
    }
    let mut protocol = None;
    if let Some(device) = root.obj("device")? {
        if let Some(name) = device.str("name")? {
            disk.device = name.to_owned();
        }
        protocol = device.str("protocol")?.map(str::to_owned);
    }
    disk.model = model_name(&root)?.unwrap_or_default();
    if let Some(serial) = root.str("serial_number")? {
        disk.serial = serial.to_owned();
    }
    if let Some(status) = root.obj("smart_status")?
        && let Some(passed) = status.bool("passed")?
    {
        disk.passed = passed;
    }
    if let Some(attrs) = root.obj("ata_smart_attributes")?
        && let Some(table) = attrs.array("table")?
    {
        for (i, entry) in table.iter().enumerate() {
            let entry = Obj::at(entry, format!("{}[{i}]", attrs.path_of("table")))?;
            disk.attributes.push(attribute(&entry)?);
        }
    }
    if let Some(log) = root.obj("nvme_smart_health_information_log")? {
        let mut nvme = pb::NvmeHealth {
            critical_warning: log.u32("critical_warning")?.unwrap_or_default(),
            media_errors: log.u64("media_errors")?.unwrap_or_default(),
            percentage_used: log.u32("percentage_used")?.unwrap_or_default(),
            available_spare: log.u32("available_spare")?.unwrap_or_default(),
            available_spare_threshold: log.u32("available_spare_threshold")?.unwrap_or_default(),
            temperature_c: 0,
        };
        nvme.temperature_c = match log.i32("temperature")? {
            Some(t) => t,
            // The health log always has it; fall back to the summary just in case.
            None => match root.obj("temperature")? {
                Some(t) => t.i32("current")?.unwrap_or_default(),
                None => 0,
            },
        };
        disk.nvme = Some(nvme);
    }
    if let Some(defects) = root.u64("scsi_grown_defect_list")? {
        disk.scsi_grown_defects = defects;
    }
    let rotation_rate = root.u32("rotation_rate")?;
    Ok(SmartReport {
        disk,
        protocol,
        rotation_rate,
    })
}

/// `model_name` in every version; SCSI disks also have vendor and product, which smartctl 7.3
/// renamed to `scsi_vendor`/`scsi_product` (and added `scsi_model_name`).
fn model_name(root: &Obj<'_>) -> Result<Option<String>, SmartError> {
    for key in ["model_name", "scsi_model_name"] {
        if let Some(model) = root.str(key)? {
            return Ok(Some(model.to_owned()));
        }
    }
    let mut parts = Vec::new();
    for key in ["scsi_vendor", "vendor", "scsi_product", "product"] {
        if let Some(part) = root.str(key)? {
            parts.push(part.trim());
        }
    }
    parts.dedup();
    Ok((!parts.is_empty()).then(|| parts.join(" ")))
}

fn attribute(entry: &Obj<'_>) -> Result<pb::SmartAttribute, SmartError> {
    let raw = match entry.obj("raw")? {
        Some(raw) => raw.i64("value")?.unwrap_or_default(),
        None => 0,
    };
    Ok(pb::SmartAttribute {
        id: entry.u32("id")?.unwrap_or_default(),
        name: entry.str("name")?.unwrap_or_default().to_owned(),
        value: entry.u32("value")?.unwrap_or_default(),
        worst: entry.u32("worst")?.unwrap_or_default(),
        thresh: entry.u32("thresh")?.unwrap_or_default(),
        raw,
    })
}

/// A JSON object with its dotted path, so that type errors name the field. `null` counts as
/// missing: older smartctl versions write it for values they could not read.
struct Obj<'a> {
    path: String,
    map: &'a Map<String, Value>,
}

impl<'a> Obj<'a> {
    fn root(value: &'a Value) -> Result<Self, SmartError> {
        Self::at(value, String::new())
    }

    fn at(value: &'a Value, path: String) -> Result<Self, SmartError> {
        match value {
            Value::Object(map) => Ok(Obj { path, map }),
            other => Err(wrong_type(
                if path.is_empty() {
                    "(top level)"
                } else {
                    &path
                },
                "an object",
                other,
            )),
        }
    }

    fn path_of(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn obj(&self, key: &str) -> Result<Option<Obj<'a>>, SmartError> {
        self.get(key)
            .map(|v| Obj::at(v, self.path_of(key)))
            .transpose()
    }

    fn array(&self, key: &str) -> Result<Option<&'a Vec<Value>>, SmartError> {
        self.typed(key, "an array", Value::as_array)
    }

    fn str(&self, key: &str) -> Result<Option<&'a str>, SmartError> {
        self.typed(key, "a string", Value::as_str)
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, SmartError> {
        self.typed(key, "true or false", Value::as_bool)
    }

    fn u64(&self, key: &str) -> Result<Option<u64>, SmartError> {
        self.typed(key, "an integer in 0..=18446744073709551615", Value::as_u64)
    }

    fn i64(&self, key: &str) -> Result<Option<i64>, SmartError> {
        self.typed(
            key,
            "an integer in -9223372036854775808..=9223372036854775807",
            Value::as_i64,
        )
    }

    fn u32(&self, key: &str) -> Result<Option<u32>, SmartError> {
        self.typed(key, "an integer in 0..=4294967295", |v| {
            v.as_u64().and_then(|n| u32::try_from(n).ok())
        })
    }

    fn i32(&self, key: &str) -> Result<Option<i32>, SmartError> {
        self.typed(key, "an integer in -2147483648..=2147483647", |v| {
            v.as_i64().and_then(|n| i32::try_from(n).ok())
        })
    }

    fn typed<T>(
        &self,
        key: &str,
        expected: &'static str,
        convert: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<Option<T>, SmartError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => convert(v)
                .map(Some)
                .ok_or_else(|| wrong_type(&self.path_of(key), expected, v)),
        }
    }
}

fn wrong_type(field: &str, expected: &'static str, found: &Value) -> SmartError {
    let mut shown = found.to_string();
    if shown.len() > 40 {
        let cut = (0..=40)
            .rev()
            .find(|&i| shown.is_char_boundary(i))
            .unwrap_or(0);
        shown.truncate(cut);
        shown.push_str("...");
    }
    let kind = match found {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "the number",
        Value::String(_) => "the string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    SmartError::WrongType {
        field: field.to_owned(),
        expected,
        found: format!("{kind} {shown}"),
    }
}

/// Lists the disks smartctl finds and can open (`smartctl --scan-open -j`), each with the `-d`
/// type smartctl detected, so that the agent needs no disk list in its config.
pub async fn scan(smartctl: &Path) -> Result<Vec<DiskRef>, SmartError> {
    let what = "--scan-open";
    let output = run(smartctl, &["--scan-open", "-j"], None, what).await?;
    let value = json_or_failure(&output, what)?;
    let bad = |cause| SmartError::BadOutput {
        disk: what.to_owned(),
        cause: Box::new(cause),
    };
    let root = Obj::root(&value).map_err(bad)?;
    let Some(devices) = root.array("devices").map_err(bad)? else {
        return Ok(Vec::new());
    };
    let mut disks = Vec::with_capacity(devices.len());
    for (i, device) in devices.iter().enumerate() {
        let device = Obj::at(device, format!("devices[{i}]")).map_err(bad)?;
        let Some(name) = device.str("name").map_err(bad)? else {
            continue;
        };
        disks.push(DiskRef::Device {
            name: name.to_owned(),
            dev_type: device.str("type").map_err(bad)?.map(str::to_owned),
        });
    }
    Ok(disks)
}

/// Runs smartctl for one disk (`-a -j [-d TYPE] NAME`, or `-a -j -` with the transcript on stdin).
/// The child is killed when this future is dropped, so a caller's timeout ends a hung smartctl.
/// A failing disk (exit bits 2-7) is returned as data; bits 0-1 or non-JSON output are errors.
pub async fn collect_disk(smartctl: &Path, disk: &DiskRef) -> Result<pb::SmartDisk, SmartError> {
    collect_report(smartctl, disk).await.map(|r| r.disk)
}

/// Like [`collect_disk`], but also returns protocol and rotation rate (see [`SmartReport`]).
pub async fn collect_report(smartctl: &Path, disk: &DiskRef) -> Result<SmartReport, SmartError> {
    let label = disk.label();
    let output = match disk {
        DiskRef::Device { name, dev_type } => {
            let mut args = vec!["-a", "-j"];
            if let Some(t) = dev_type {
                args.extend(["-d", t.as_str()]);
            }
            args.push(name.as_str());
            run(smartctl, &args, None, &label).await?
        }
        DiskRef::Replay(path) => {
            let transcript =
                tokio::fs::read(path)
                    .await
                    .map_err(|source| SmartError::Transcript {
                        path: path.clone(),
                        source,
                    })?;
            run(smartctl, &["-a", "-j", "-"], Some(transcript), &label).await?
        }
    };
    let value = json_or_failure(&output, &label)?;
    let mut report = report_from_value(&value).map_err(|cause| SmartError::BadOutput {
        disk: label.clone(),
        cause: Box::new(cause),
    })?;
    if report.disk.device.is_empty() || report.disk.device == "-" {
        report.disk.device = label;
    }
    if !has_exit_status(&value) {
        // smartctl writes it in every version with -j; keep the process's if it ever does not.
        report.disk.exit_status = output.status;
    }
    Ok(report)
}

/// Reads several disks one after the other; a disk that fails does not lose the others. Returns
/// the disks read and one error per disk that could not be read.
pub async fn collect_all(
    smartctl: &Path,
    disks: &[DiskRef],
) -> (Vec<pb::SmartDisk>, Vec<SmartError>) {
    let mut read = Vec::with_capacity(disks.len());
    let mut errors = Vec::new();
    for disk in disks {
        match collect_disk(smartctl, disk).await {
            Ok(d) => read.push(d),
            Err(e) => errors.push(e),
        }
    }
    (read, errors)
}

/// What a finished smartctl run left behind.
struct RunOutput {
    status: u32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

async fn run(
    smartctl: &Path,
    args: &[&str],
    stdin: Option<Vec<u8>>,
    disk: &str,
) -> Result<RunOutput, SmartError> {
    let mut command = Command::new(smartctl);
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|source| SmartError::Spawn {
        path: smartctl.to_path_buf(),
        source,
    })?;
    let io_err = |source| SmartError::Io {
        disk: disk.to_owned(),
        source,
    };
    // Feed the transcript while reading the output, so neither side waits on a full pipe. The
    // pipe is dropped after the write, which gives smartctl its end of file.
    let pipe = child.stdin.take();
    let feed = async move {
        if let (Some(data), Some(mut pipe)) = (stdin, pipe) {
            match pipe.write_all(&data).await {
                // smartctl stops reading once it has what it needs; that is not our problem.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
                other => other?,
            }
        }
        Ok::<(), io::Error>(())
    };
    let (fed, output) = tokio::join!(feed, child.wait_with_output());
    let output = output.map_err(io_err)?;
    fed.map_err(io_err)?;
    let Some(code) = output.status.code() else {
        return Err(SmartError::Killed {
            disk: disk.to_owned(),
        });
    };
    Ok(RunOutput {
        // smartctl exits with 0..=255; anything else is not smartctl's bitmask.
        status: u32::try_from(code).unwrap_or(u32::MAX),
        stdout: output.stdout,
        stderr: output.stderr,
    })
}

/// The JSON smartctl printed, or the error for a run that read nothing (exit bits 0-1).
fn json_or_failure(output: &RunOutput, disk: &str) -> Result<Value, SmartError> {
    let parsed = serde_json::from_slice::<Value>(&output.stdout);
    let status = match &parsed {
        Ok(value) => json_exit_status(value).unwrap_or(output.status),
        Err(_) => output.status,
    };
    if status & exit::NOTHING_READ != 0 || (parsed.is_err() && status != 0) {
        let detail = parsed
            .as_ref()
            .ok()
            .and_then(error_messages)
            .unwrap_or_else(|| stderr_detail(&output.stderr));
        return Err(SmartError::Failed {
            disk: disk.to_owned(),
            exit_status: status,
            detail,
        });
    }
    parsed.map_err(|source| SmartError::BadOutput {
        disk: disk.to_owned(),
        cause: Box::new(SmartError::NotJson { source }),
    })
}

fn json_exit_status(value: &Value) -> Option<u32> {
    value
        .get("smartctl")?
        .get("exit_status")?
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
}

fn has_exit_status(value: &Value) -> bool {
    json_exit_status(value).is_some()
}

/// smartctl's `smartctl.messages` of severity "error", joined.
fn error_messages(value: &Value) -> Option<String> {
    let messages = value.get("smartctl")?.get("messages")?.as_array()?;
    let errors: Vec<&str> = messages
        .iter()
        .filter(|m| m.get("severity").and_then(Value::as_str) == Some("error"))
        .filter_map(|m| m.get("string").and_then(Value::as_str))
        .collect();
    (!errors.is_empty()).then(|| errors.join("; "))
}

fn stderr_detail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    if text.is_empty() {
        "smartctl printed no error message".to_owned()
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(json: &str) -> Result<pb::SmartDisk, SmartError> {
        parse(json.as_bytes())
    }

    fn wrong_field(json: &str) -> String {
        match parse_str(json) {
            Err(SmartError::WrongType { field, .. }) => field,
            other => panic!("expected a WrongType error, got {other:?}"),
        }
    }

    #[test]
    fn empty_object_gives_an_empty_disk() {
        let disk = parse_str("{}").unwrap();
        assert_eq!(disk, pb::SmartDisk::default());
    }

    #[test]
    fn not_json_is_an_error() {
        let err = parse_str("smartctl 6.6 ...").unwrap_err();
        assert!(matches!(err, SmartError::NotJson { .. }), "{err:?}");
        assert!(err.to_string().contains("7.0 or newer"), "{err}");
    }

    #[test]
    fn top_level_must_be_an_object() {
        assert_eq!(wrong_field("[1, 2]"), "(top level)");
    }

    #[test]
    fn ata_disk_with_attributes() {
        let disk = parse_str(
            r#"{"smartctl": {"exit_status": 24},
                "device": {"name": "/dev/sdb", "protocol": "ATA"},
                "model_name": "M", "serial_number": "S",
                "smart_status": {"passed": false},
                "ata_smart_attributes": {"table": [
                  {"id": 5, "name": "Reallocated_Sector_Ct", "value": 1, "worst": 1,
                   "thresh": 5, "raw": {"value": 3072, "string": "3072"}},
                  {"id": 194}
                ]}}"#,
        )
        .unwrap();
        assert_eq!(disk.device, "/dev/sdb");
        assert_eq!((disk.model.as_str(), disk.serial.as_str()), ("M", "S"));
        assert!(!disk.passed);
        assert_eq!(disk.exit_status, 24);
        assert_eq!(
            disk.attributes[0],
            pb::SmartAttribute {
                id: 5,
                name: "Reallocated_Sector_Ct".into(),
                value: 1,
                worst: 1,
                thresh: 5,
                raw: 3072,
            }
        );
        // An entry with only an id is kept, the rest unset.
        assert_eq!(disk.attributes[1].id, 194);
        assert_eq!(disk.attributes[1].raw, 0);
        assert!(disk.nvme.is_none());
    }

    #[test]
    fn nulls_count_as_missing() {
        let disk = parse_str(
            r#"{"model_name": null, "smart_status": null,
                "ata_smart_attributes": {"table": null}}"#,
        )
        .unwrap();
        assert_eq!(disk.model, "");
        assert!(disk.attributes.is_empty());
    }

    #[test]
    fn nvme_health_log() {
        let report = parse_report(
            br#"{"device": {"name": "/dev/nvme0", "protocol": "NVMe"},
                "smart_status": {"passed": false, "nvme": {"value": 5}},
                "nvme_smart_health_information_log": {
                  "critical_warning": 5, "temperature": 61, "available_spare": 3,
                  "available_spare_threshold": 10, "percentage_used": 140, "media_errors": 12}}"#,
        )
        .unwrap();
        assert_eq!(report.solid_state(), Some(true));
        let nvme = report.disk.nvme.unwrap();
        assert_eq!(
            nvme,
            pb::NvmeHealth {
                critical_warning: 5,
                media_errors: 12,
                percentage_used: 140,
                available_spare: 3,
                available_spare_threshold: 10,
                temperature_c: 61,
            }
        );
    }

    #[test]
    fn nvme_temperature_falls_back_to_the_summary() {
        let disk = parse_str(
            r#"{"temperature": {"current": 44},
                "nvme_smart_health_information_log": {"critical_warning": 0}}"#,
        )
        .unwrap();
        assert_eq!(disk.nvme.unwrap().temperature_c, 44);
    }

    #[test]
    fn scsi_grown_defects_and_vendor_product_model() {
        let report = parse_report(
            br#"{"device": {"name": "/dev/sdc", "protocol": "SCSI"},
                "scsi_vendor": "ACME    ", "scsi_product": "BIGDISK", "serial_number": "Z1",
                "rotation_rate": 10000, "scsi_grown_defect_list": 17,
                "smart_status": {"passed": true}}"#,
        )
        .unwrap();
        assert_eq!(report.disk.model, "ACME BIGDISK");
        assert_eq!(report.disk.scsi_grown_defects, 17);
        assert_eq!(report.solid_state(), Some(false));
        assert!(report.disk.passed);
    }

    #[test]
    fn rotation_rate_zero_is_solid_state() {
        let report = parse_report(br#"{"rotation_rate": 0}"#).unwrap();
        assert_eq!(report.solid_state(), Some(true));
        assert_eq!(parse_report(b"{}").unwrap().solid_state(), None);
    }

    #[test]
    fn wrong_types_name_the_field() {
        assert_eq!(wrong_field(r#"{"serial_number": 42}"#), "serial_number");
        assert_eq!(
            wrong_field(r#"{"smartctl": {"exit_status": "0"}}"#),
            "smartctl.exit_status"
        );
        assert_eq!(
            wrong_field(r#"{"smart_status": {"passed": "yes"}}"#),
            "smart_status.passed"
        );
        assert_eq!(wrong_field(r#"{"device": "/dev/sda"}"#), "device");
        assert_eq!(
            wrong_field(r#"{"ata_smart_attributes": {"table": {}}}"#),
            "ata_smart_attributes.table"
        );
        assert_eq!(
            wrong_field(r#"{"ata_smart_attributes": {"table": [{"id": 1}, 7]}}"#),
            "ata_smart_attributes.table[1]"
        );
        assert_eq!(
            wrong_field(
                r#"{"ata_smart_attributes": {"table": [{"id": 1, "raw": {"value": "12"}}]}}"#
            ),
            "ata_smart_attributes.table[0].raw.value"
        );
        assert_eq!(
            wrong_field(r#"{"ata_smart_attributes": {"table": [{"id": -1}]}}"#),
            "ata_smart_attributes.table[0].id"
        );
        assert_eq!(
            wrong_field(r#"{"nvme_smart_health_information_log": {"media_errors": 1.5}}"#),
            "nvme_smart_health_information_log.media_errors"
        );
        assert_eq!(
            wrong_field(
                r#"{"nvme_smart_health_information_log": {"percentage_used": 4294967296}}"#
            ),
            "nvme_smart_health_information_log.percentage_used"
        );
        assert_eq!(
            wrong_field(r#"{"scsi_grown_defect_list": -3}"#),
            "scsi_grown_defect_list"
        );
    }

    #[test]
    fn wrong_type_message_is_readable() {
        let err =
            parse_str(r#"{"serial_number": ["a very long array that goes on", "and on and on"]}"#)
                .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(
                "smartctl JSON field `serial_number` should be a string, found an array"
            ),
            "{msg}"
        );
        assert!(msg.ends_with("..."), "{msg}");
    }

    #[test]
    fn disk_ref_forms() {
        assert_eq!(
            DiskRef::parse("/dev/sda").unwrap(),
            DiskRef::Device {
                name: "/dev/sda".into(),
                dev_type: None
            }
        );
        assert_eq!(
            DiskRef::parse("/dev/bus/0:megaraid,3").unwrap(),
            DiskRef::Device {
                name: "/dev/bus/0".into(),
                dev_type: Some("megaraid,3".into())
            }
        );
        let by_path = "/dev/disk/by-path/pci-0000:00:17.0-ata-1";
        assert_eq!(
            DiskRef::parse(by_path).unwrap(),
            DiskRef::Device {
                name: by_path.into(),
                dev_type: None
            }
        );
        assert_eq!(
            DiskRef::parse(&format!("{by_path}:sat")).unwrap(),
            DiskRef::Device {
                name: by_path.into(),
                dev_type: Some("sat".into())
            }
        );
        assert_eq!(
            DiskRef::parse("/dev/sda:sat").unwrap(),
            DiskRef::Device {
                name: "/dev/sda".into(),
                dev_type: Some("sat".into())
            }
        );
        assert_eq!(
            DiskRef::parse("replay:/path/to/disk.ioctl").unwrap(),
            DiskRef::Replay("/path/to/disk.ioctl".into())
        );
        let err = DiskRef::parse("sda").unwrap_err();
        assert!(err.to_string().contains("absolute path"), "{err}");
        for s in ["/dev/sda", "/dev/sdb:sat,12", "replay:/tmp/x.ioctl"] {
            assert_eq!(DiskRef::parse(s).unwrap().to_string(), s);
        }
        for bad in ["", "sda", "/dev/sda:", "replay:"] {
            assert!(
                matches!(DiskRef::parse(bad), Err(SmartError::InvalidDiskRef { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn replay_label_is_the_file_name() {
        let disk = DiskRef::parse("replay:/some/where/disk-healthy.ioctl").unwrap();
        assert_eq!(disk.label(), "replay:disk-healthy.ioctl");
    }

    #[test]
    fn exit_status_meanings() {
        assert_eq!(
            exit::meanings(24),
            vec![
                "SMART status says the disk is failing",
                "pre-failure attributes at or below threshold"
            ]
        );
        assert!(exit::meanings(0).is_empty());
    }

    fn output(status: u32, stdout: &str, stderr: &str) -> RunOutput {
        RunOutput {
            status,
            stdout: stdout.as_bytes().to_vec(),
            stderr: stderr.as_bytes().to_vec(),
        }
    }

    #[test]
    fn open_failure_is_an_error_with_smartctls_message() {
        let out = output(
            2,
            r#"{"smartctl": {"exit_status": 2, "messages": [
                {"string": "/dev/sdz: No such device", "severity": "error"}]}}"#,
            "",
        );
        let err = json_or_failure(&out, "/dev/sdz").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/dev/sdz: No such device"), "{msg}");
        assert!(msg.contains("device open failed"), "{msg}");
    }

    #[test]
    fn failing_disk_status_is_data() {
        let out = output(
            24,
            r#"{"smartctl": {"exit_status": 24}, "smart_status": {"passed": false}}"#,
            "",
        );
        assert!(json_or_failure(&out, "/dev/sda").is_ok());
        // Bit 2 (a SMART command failed) still comes with whatever smartctl did read.
        let out = output(4, r#"{"smartctl": {"exit_status": 4}}"#, "");
        assert!(json_or_failure(&out, "/dev/sda").is_ok());
    }

    #[test]
    fn no_json_and_non_zero_status_reports_stderr() {
        let out = output(1, "", "smartctl: unrecognized option '-j'\n");
        let err = json_or_failure(&out, "/dev/sda").unwrap_err();
        assert!(
            err.to_string().contains("unrecognized option '-j'"),
            "{err}"
        );
        let out = output(0, "not json", "");
        let err = json_or_failure(&out, "/dev/sda").unwrap_err();
        assert!(matches!(err, SmartError::BadOutput { .. }), "{err:?}");
    }
}
