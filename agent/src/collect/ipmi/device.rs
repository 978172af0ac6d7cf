//! Decoding of the BMC's own answers: Get Device ID (firmware revision) and Get Chassis Status
//! (power). Pure: response data (after the completion code) in, values out.

use muster::pb;

/// "MAJOR.MINOR" as ipmitool prints it (minor is BCD, two digits).
pub(super) fn firmware_from_device_id(d: &[u8]) -> Option<String> {
    if d.len() < 4 {
        return None;
    }
    Some(format!("{}.{:02x}", d[2] & 0x7F, d[3]))
}

/// Power state from Get Chassis Status (byte 0, bit 0: power is on); an empty answer is
/// `Unspecified`, not a guess.
pub(super) fn power_from_chassis_status(d: &[u8]) -> pb::PowerState {
    match d.first() {
        Some(b) if b & 1 == 1 => pb::PowerState::PowerOn,
        Some(_) => pb::PowerState::PowerOff,
        None => pb::PowerState::Unspecified,
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::sim;
    use super::*;

    #[test]
    fn firmware_revision_as_ipmitool_prints_it() {
        // ipmi_sim's `mc_add ... 1 0x02` answers firmware 1.02.
        assert_eq!(
            firmware_from_device_id(sim::DEVICE_ID).as_deref(),
            Some("1.02")
        );
        // Bit 7 of the major byte is "device available", not part of the revision; the minor
        // byte is BCD.
        assert_eq!(
            firmware_from_device_id(&[0x20, 0x01, 0x83, 0x15]).as_deref(),
            Some("3.15")
        );
        assert_eq!(firmware_from_device_id(&[0x20, 0x01, 0x01]), None);
    }

    #[test]
    fn power_from_chassis_status_bit() {
        assert_eq!(
            power_from_chassis_status(sim::CHASSIS_STATUS_ON),
            pb::PowerState::PowerOn
        );
        assert_eq!(
            power_from_chassis_status(&[0x00, 0x00, 0x00]),
            pb::PowerState::PowerOff
        );
        assert_eq!(power_from_chassis_status(&[]), pb::PowerState::Unspecified);
    }
}
