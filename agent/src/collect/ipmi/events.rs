//! What sensor types and event offsets mean (IPMI 2.0 tables 42-1 to 42-3), and how bad each
//! is: shared by live sensor states and SEL entries. Pure tables.

/// How bad an asserted state or event is; `severity` on SEL entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

/// IPMI sensor type codes as lowercase words (IPMI 2.0 table 42-3).
pub(super) fn sensor_type_name(t: u8) -> &'static str {
    match t {
        0x01 => "temperature",
        0x02 => "voltage",
        0x03 => "current",
        0x04 => "fan",
        0x05 => "physical_security",
        0x06 => "platform_security",
        0x07 => "processor",
        0x08 => "power_supply",
        0x09 => "power_unit",
        0x0a => "cooling_device",
        0x0b => "other_units",
        0x0c => "memory",
        0x0d => "drive_slot",
        0x0e => "post_memory_resize",
        0x0f => "system_firmware_progress",
        0x10 => "event_logging_disabled",
        0x11 => "watchdog1",
        0x12 => "system_event",
        0x13 => "critical_interrupt",
        0x14 => "button_switch",
        0x15 => "module_board",
        0x16 => "microcontroller",
        0x17 => "add_in_card",
        0x18 => "chassis",
        0x19 => "chip_set",
        0x1a => "other_fru",
        0x1b => "cable_interconnect",
        0x1c => "terminator",
        0x1d => "system_boot_initiated",
        0x1e => "boot_error",
        0x1f => "os_boot",
        0x20 => "os_critical_stop",
        0x21 => "slot_connector",
        0x22 => "system_acpi_power_state",
        0x23 => "watchdog2",
        0x24 => "platform_alert",
        0x25 => "entity_presence",
        0x26 => "monitor_asic",
        0x27 => "lan",
        0x28 => "management_subsystem_health",
        0x29 => "battery",
        0x2a => "session_audit",
        0x2b => "version_change",
        0x2c => "fru_state",
        0xc0..=0xff => "oem",
        _ => "unknown",
    }
}

/// Name and severity of a discrete state offset: sensor-specific (reading type 0x6f) tables for
/// the types health rules care about, the generic tables (0x02..0x0c) otherwise.
pub(super) fn discrete_offset(reading_type: u8, sensor_type: u8, offset: u8) -> (String, Severity) {
    use Severity::{Critical as C, Info as I, Warning as W};
    let hit: Option<(&str, Severity)> = if reading_type == 0x6f {
        match (sensor_type, offset) {
            (0x05, 0) => Some(("general chassis intrusion", W)),
            (0x05, 1) => Some(("drive bay intrusion", W)),
            (0x05, 2) => Some(("I/O card area intrusion", W)),
            (0x05, 3) => Some(("processor area intrusion", W)),
            (0x05, 4) => Some(("LAN leash lost", W)),
            (0x05, 5) => Some(("unauthorized dock", W)),
            (0x05, 6) => Some(("fan area intrusion", W)),
            (0x07, 0) => Some(("IERR", C)),
            (0x07, 1) => Some(("thermal trip", C)),
            (0x07, 2) => Some(("FRB1/BIST failure", C)),
            (0x07, 3) => Some(("FRB2/hang in POST failure", C)),
            (0x07, 4) => Some(("FRB3/processor startup failure", C)),
            (0x07, 5) => Some(("configuration error", W)),
            (0x07, 6) => Some(("uncorrectable CPU-complex error", C)),
            (0x07, 7) => Some(("presence detected", I)),
            (0x07, 8) => Some(("processor disabled", W)),
            (0x07, 9) => Some(("terminator presence detected", I)),
            (0x07, 10) => Some(("processor throttled", W)),
            (0x07, 11) => Some(("machine check exception", C)),
            (0x07, 12) => Some(("correctable machine check error", W)),
            (0x08, 0) => Some(("presence detected", I)),
            (0x08, 1) => Some(("failure detected", C)),
            (0x08, 2) => Some(("predictive failure", W)),
            (0x08, 3) => Some(("input lost", C)),
            (0x08, 4) => Some(("input lost or out of range", C)),
            (0x08, 5) => Some(("input out of range", W)),
            (0x08, 6) => Some(("configuration error", W)),
            (0x08, 7) => Some(("inactive", I)),
            (0x09, 0) => Some(("power off", I)),
            (0x09, 1) => Some(("power cycle", I)),
            (0x09, 2) => Some(("240VA power down", W)),
            (0x09, 3) => Some(("interlock power down", W)),
            (0x09, 4) => Some(("AC lost", C)),
            (0x09, 5) => Some(("soft power control failure", C)),
            (0x09, 6) => Some(("power unit failure", C)),
            (0x09, 7) => Some(("predictive failure", W)),
            (0x0c, 0) => Some(("correctable ECC", W)),
            (0x0c, 1) => Some(("uncorrectable ECC", C)),
            (0x0c, 2) => Some(("parity error", C)),
            (0x0c, 3) => Some(("memory scrub failed", W)),
            (0x0c, 4) => Some(("memory device disabled", W)),
            (0x0c, 5) => Some(("correctable ECC logging limit reached", W)),
            (0x0c, 6) => Some(("presence detected", I)),
            (0x0c, 7) => Some(("configuration error", W)),
            (0x0c, 8) => Some(("spare", I)),
            (0x0c, 9) => Some(("memory throttled", W)),
            (0x0c, 10) => Some(("critical overtemperature", C)),
            (0x0d, 0) => Some(("drive present", I)),
            (0x0d, 1) => Some(("drive fault", C)),
            (0x0d, 2) => Some(("predictive failure", W)),
            (0x0d, 3) => Some(("hot spare", I)),
            (0x0d, 4) => Some(("consistency check in progress", I)),
            (0x0d, 5) => Some(("in critical array", W)),
            (0x0d, 6) => Some(("in failed array", C)),
            (0x0d, 7) => Some(("rebuild in progress", I)),
            (0x0d, 8) => Some(("rebuild aborted", W)),
            (0x10, 0) => Some(("correctable memory error logging disabled", W)),
            (0x10, 1) => Some(("event type logging disabled", W)),
            (0x10, 2) => Some(("log area cleared", I)),
            (0x10, 3) => Some(("all event logging disabled", W)),
            (0x10, 4) => Some(("SEL full", W)),
            (0x10, 5) => Some(("SEL almost full", W)),
            (0x12, 0) => Some(("system reconfigured", I)),
            (0x12, 1) => Some(("OEM system boot event", I)),
            (0x12, 2) => Some(("undetermined system hardware failure", C)),
            (0x12, 3) => Some(("entry added to auxiliary log", I)),
            (0x12, 4) => Some(("PEF action", I)),
            (0x12, 5) => Some(("timestamp clock sync", I)),
            (0x13, 0) => Some(("front panel NMI", W)),
            (0x13, 1) => Some(("bus timeout", W)),
            (0x13, 2) => Some(("I/O channel check NMI", C)),
            (0x13, 3) => Some(("software NMI", W)),
            (0x13, 4) => Some(("PCI PERR", C)),
            (0x13, 5) => Some(("PCI SERR", C)),
            (0x13, 7) => Some(("bus correctable error", W)),
            (0x13, 8) => Some(("bus uncorrectable error", C)),
            (0x13, 9) => Some(("fatal NMI", C)),
            (0x13, 10) => Some(("bus fatal error", C)),
            (0x13, 11) => Some(("bus degraded", W)),
            (0x23, 0) => Some(("timer expired", W)),
            (0x23, 1) => Some(("hard reset", W)),
            (0x23, 2) => Some(("power down", W)),
            (0x23, 3) => Some(("power cycle", W)),
            (0x23, 8) => Some(("timer interrupt", I)),
            (0x25, 0) => Some(("entity present", I)),
            (0x25, 1) => Some(("entity absent", W)),
            (0x25, 2) => Some(("entity disabled", W)),
            (0x29, 0) => Some(("battery low", W)),
            (0x29, 1) => Some(("battery failed", C)),
            (0x29, 2) => Some(("battery presence detected", I)),
            _ => None,
        }
    } else {
        match (reading_type, offset) {
            (0x02, 0) => Some(("transition to idle", I)),
            (0x02, 1) => Some(("transition to active", I)),
            (0x02, 2) => Some(("transition to busy", I)),
            (0x03, 0) => Some(("state deasserted", I)),
            (0x03, 1) => Some(("state asserted", I)),
            (0x04, 0) => Some(("predictive failure deasserted", I)),
            (0x04, 1) => Some(("predictive failure asserted", W)),
            (0x05, 0) => Some(("limit not exceeded", I)),
            (0x05, 1) => Some(("limit exceeded", W)),
            (0x06, 0) => Some(("performance met", I)),
            (0x06, 1) => Some(("performance lags", W)),
            (0x07, 0) => Some(("transition to OK", I)),
            (0x07, 1) => Some(("transition to non-critical from OK", W)),
            (0x07, 2) => Some(("transition to critical from less severe", C)),
            (0x07, 3) => Some(("transition to non-recoverable from less severe", C)),
            (0x07, 4) => Some(("transition to non-critical from more severe", W)),
            (0x07, 5) => Some(("transition to critical from non-recoverable", C)),
            (0x07, 6) => Some(("transition to non-recoverable", C)),
            (0x07, 7) => Some(("monitor", I)),
            (0x07, 8) => Some(("informational", I)),
            (0x08, 0) => Some(("device absent", I)),
            (0x08, 1) => Some(("device present", I)),
            (0x09, 0) => Some(("device disabled", I)),
            (0x09, 1) => Some(("device enabled", I)),
            (0x0a, 0) => Some(("transition to running", I)),
            (0x0a, 1) => Some(("transition to in test", I)),
            (0x0a, 2) => Some(("transition to power off", I)),
            (0x0a, 3) => Some(("transition to on line", I)),
            (0x0a, 4) => Some(("transition to off line", W)),
            (0x0a, 5) => Some(("transition to off duty", I)),
            (0x0a, 6) => Some(("transition to degraded", W)),
            (0x0a, 7) => Some(("transition to power save", I)),
            (0x0a, 8) => Some(("install error", W)),
            (0x0b, 0) => Some(("fully redundant", I)),
            (0x0b, 1) => Some(("redundancy lost", C)),
            (0x0b, 2) => Some(("redundancy degraded", W)),
            (0x0b, 3) => Some(("non-redundant: sufficient resources from redundant", W)),
            (0x0b, 4) => Some(("non-redundant: sufficient resources from insufficient", W)),
            (0x0b, 5) => Some(("non-redundant: insufficient resources", C)),
            (0x0b, 6) => Some(("redundancy degraded from fully redundant", W)),
            (0x0b, 7) => Some(("redundancy degraded from non-redundant", W)),
            (0x0c, 0) => Some(("D0 power state", I)),
            (0x0c, 1) => Some(("D1 power state", I)),
            (0x0c, 2) => Some(("D2 power state", I)),
            (0x0c, 3) => Some(("D3 power state", I)),
            _ => None,
        }
    };
    match hit {
        Some((name, sev)) => (name.to_string(), sev),
        None => (format!("state {offset}"), I),
    }
}

/// Threshold event offsets (reading type 0x01) in IPMI order.
pub(super) fn threshold_event(offset: u8) -> Option<(&'static str, Severity)> {
    use Severity::{Critical as C, Warning as W};
    Some(match offset {
        0 => ("lower non-critical going low", W),
        1 => ("lower non-critical going high", W),
        2 => ("lower critical going low", C),
        3 => ("lower critical going high", C),
        4 => ("lower non-recoverable going low", C),
        5 => ("lower non-recoverable going high", C),
        6 => ("upper non-critical going low", W),
        7 => ("upper non-critical going high", W),
        8 => ("upper critical going low", C),
        9 => ("upper critical going high", C),
        10 => ("upper non-recoverable going low", C),
        11 => ("upper non-recoverable going high", C),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensor_specific_offsets_name_the_failure() {
        assert_eq!(
            discrete_offset(0x6f, 0x08, 1),
            ("failure detected".to_string(), Severity::Critical)
        );
        assert_eq!(
            discrete_offset(0x6f, 0x0c, 0),
            ("correctable ECC".to_string(), Severity::Warning)
        );
        // Generic reading types use the generic tables, whatever the sensor type.
        assert_eq!(
            discrete_offset(0x0b, 0x08, 1),
            ("redundancy lost".to_string(), Severity::Critical)
        );
        // An offset no table names is still shown, as information.
        assert_eq!(
            discrete_offset(0x6f, 0x08, 14),
            ("state 14".to_string(), Severity::Info)
        );
    }

    #[test]
    fn threshold_offsets_in_ipmi_order() {
        assert_eq!(
            threshold_event(0),
            Some(("lower non-critical going low", Severity::Warning))
        );
        assert_eq!(
            threshold_event(9),
            Some(("upper critical going high", Severity::Critical))
        );
        assert_eq!(threshold_event(12), None);
    }

    #[test]
    fn sensor_types_and_severity_order() {
        assert_eq!(sensor_type_name(0x01), "temperature");
        assert_eq!(sensor_type_name(0x2c), "fru_state");
        assert_eq!(sensor_type_name(0xc5), "oem");
        assert_eq!(sensor_type_name(0x30), "unknown");
        assert!(Severity::Info < Severity::Warning && Severity::Warning < Severity::Critical);
        assert_eq!(Severity::Critical.as_str(), "critical");
    }
}
