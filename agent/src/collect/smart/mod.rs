//! SMART collector: runs `smartctl -a -j` for each disk and turns its JSON into `SmartDisk`.
//!
//! smartctl does the talking to disks (ATA, NVMe, SCSI, RAID pass-through); this module only
//! spawns it and reads its JSON, so everything but the spawn is testable from recorded output.
//! smartctl's exit status is a bitmask (see `man smartctl` and [`exit`]): a non-zero status for
//! a failing disk is data, not an error. Only bits 0-1 (bad command line, device open failed) or
//! output that is not JSON mean that nothing was read.
//!
//! By job: `parse` (pure: smartctl's JSON to `SmartDisk`), `collect` (running smartctl and
//! reading its exit status), `disk` (which disks, in the config's forms); this file holds the
//! exit-status bits and the one error enum. What the values *mean* for health (wear,
//! reallocation, a failing verdict) is decided by the server's health rules, not here.

use std::io;
use std::path::PathBuf;

mod collect;
mod disk;
mod parse;

pub use collect::{collect_all, collect_disk, collect_report, scan};
pub use disk::DiskRef;
pub use parse::{SmartReport, parse, parse_report};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
