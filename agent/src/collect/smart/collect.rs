//! Running smartctl: `--scan-open` to find disks, `-a -j` per disk (or a recorded transcript on
//! stdin), the child killed when the caller's deadline drops the future. The exit-status
//! bitmask decides what is data (a failing disk) and what is an error (nothing read).

use std::io;
use std::path::Path;
use std::process::Stdio;

use muster::pb;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::parse::{Obj, SmartReport, report_from_value};
use super::{DiskRef, SmartError, exit};

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
pub(super) struct RunOutput {
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
pub(super) fn json_or_failure(output: &RunOutput, disk: &str) -> Result<Value, SmartError> {
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

pub(super) fn json_exit_status(value: &Value) -> Option<u32> {
    value
        .get("smartctl")?
        .get("exit_status")?
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
}

pub(super) fn has_exit_status(value: &Value) -> bool {
    json_exit_status(value).is_some()
}

/// smartctl's `smartctl.messages` of severity "error", joined.
pub(super) fn error_messages(value: &Value) -> Option<String> {
    let messages = value.get("smartctl")?.get("messages")?.as_array()?;
    let errors: Vec<&str> = messages
        .iter()
        .filter(|m| m.get("severity").and_then(Value::as_str) == Some("error"))
        .filter_map(|m| m.get("string").and_then(Value::as_str))
        .collect();
    (!errors.is_empty()).then(|| errors.join("; "))
}

pub(super) fn stderr_detail(stderr: &[u8]) -> String {
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
