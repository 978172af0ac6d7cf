//! The folder's one error enum: each message says which BMC and what to check.

use std::time::Duration;

/// Why a collection failed; each message says which BMC and what to check.
#[derive(Debug, thiserror::Error)]
pub enum IpmiError {
    #[error("invalid BMC endpoint {spec:?}: {why}")]
    InvalidEndpoint { spec: String, why: String },
    #[error("BMC {bmc} did not answer within {timeout:?}")]
    Timeout { bmc: String, timeout: Duration },
    #[error("BMC {bmc} refused the connection (nothing listening on that UDP port?)")]
    Refused { bmc: String },
    #[error("authentication failed for user {user} at BMC {bmc} ({detail})")]
    AuthFailed {
        bmc: String,
        user: String,
        detail: String,
    },
    #[error("cannot resolve BMC address {bmc}: {source}")]
    Resolve { bmc: String, source: std::io::Error },
    #[error(
        "cannot open IPMI device {path}: {source} (is the ipmi_devintf kernel module loaded, and does the agent run as root?)"
    )]
    Device {
        path: String,
        source: std::io::Error,
    },
    #[error("could not open an RMCP+ session with BMC {bmc}: {detail}")]
    Session { bmc: String, detail: String },
    #[error("BMC {bmc}: {what} failed with completion code 0x{cc:02x} ({meaning})")]
    Command {
        bmc: String,
        what: &'static str,
        cc: u8,
        meaning: &'static str,
    },
    #[error("BMC {bmc}: {what}: {detail}")]
    Protocol {
        bmc: String,
        what: &'static str,
        detail: String,
    },
    #[error("I/O error talking to BMC {bmc}: {source}")]
    Io { bmc: String, source: std::io::Error },
}

impl IpmiError {
    /// Whether the error is about the link or session (drop it) rather than one command.
    pub(super) fn is_link(&self) -> bool {
        !matches!(self, Self::Command { .. })
    }
}

/// What an IPMI completion code means (IPMI 2.0 table 5-2), for error messages.
pub(super) fn completion_code_meaning(cc: u8) -> &'static str {
    match cc {
        0xC0 => "node busy",
        0xC1 => "invalid or unsupported command",
        0xC2 => "invalid for this LUN",
        0xC3 => "timeout while processing",
        0xC4 => "out of space",
        0xC5 => "reservation cancelled or invalid",
        0xC6 => "request data truncated",
        0xC7 => "request data length invalid",
        0xC8 => "request data field length limit exceeded",
        0xC9 => "parameter out of range",
        0xCA => "cannot return number of requested data bytes",
        0xCB => "requested sensor, data, or record not present",
        0xCC => "invalid data field in request",
        0xCD => "command illegal for this sensor or record type",
        0xCE => "command response could not be provided",
        0xCF => "duplicated request",
        0xD0 => "SDR repository in update mode",
        0xD1 => "device in firmware update mode",
        0xD2 => "BMC initialization in progress",
        0xD3 => "destination unavailable",
        0xD4 => "insufficient privilege level",
        0xD5 => "not supported in present state",
        0xD6 => "sub-function disabled",
        0xFF => "unspecified error",
        _ => "device-specific or unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_command_failures_keep_the_session() {
        let cmd = IpmiError::Command {
            bmc: "10.0.0.5:623".into(),
            what: "Get SDR",
            cc: 0xC5,
            meaning: completion_code_meaning(0xC5),
        };
        assert!(!cmd.is_link());
        assert_eq!(
            cmd.to_string(),
            "BMC 10.0.0.5:623: Get SDR failed with completion code 0xc5 (reservation cancelled or invalid)"
        );
        let timeout = IpmiError::Timeout {
            bmc: "b".into(),
            timeout: Duration::from_secs(2),
        };
        assert!(timeout.is_link());
        assert!(IpmiError::Refused { bmc: "b".into() }.is_link());
    }

    #[test]
    fn completion_codes_have_meanings() {
        assert_eq!(
            completion_code_meaning(0xC1),
            "invalid or unsupported command"
        );
        assert_eq!(
            completion_code_meaning(0xCA),
            "cannot return number of requested data bytes"
        );
        assert_eq!(completion_code_meaning(0xFF), "unspecified error");
        assert_eq!(completion_code_meaning(0x80), "device-specific or unknown");
    }
}
