//! Live sensor values: Get Sensor Reading and Get Sensor Thresholds answers decoded, and with
//! the sensor's SDR turned into a `pb::Sensor` (value in its unit, state ok/warning/critical,
//! asserted discrete states). Pure.

use muster::pb;

use super::events::{Severity, discrete_offset, sensor_type_name};
use super::sdr::{SdrSensor, Thresholds};

/// A Get Sensor Reading answer that carries a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Reading {
    /// The raw reading (threshold sensors).
    pub(super) raw: u8,
    /// Threshold status bits (threshold sensors) or discrete states 0-7.
    pub(super) state1: u8,
    /// Discrete states 8-14.
    pub(super) state2: u8,
}

impl Reading {
    /// `None` when the answer is too short or says the reading is unavailable (bit 5 of byte
    /// 1: absent device, not yet scanned): such a sensor is left out, not reported as 0.
    pub(super) fn parse(d: &[u8]) -> Option<Self> {
        if d.len() < 2 || d[1] & 0x20 != 0 {
            return None;
        }
        Some(Self {
            raw: d[0],
            state1: d.get(2).copied().unwrap_or(0),
            state2: d.get(3).copied().unwrap_or(0),
        })
    }
}

/// The current thresholds from a Get Sensor Thresholds answer; `None` when it is too short
/// (the caller falls back to the SDR's initial ones).
pub(super) fn thresholds_from_response(d: &[u8]) -> Option<Thresholds> {
    (d.len() >= 7).then(|| Thresholds {
        readable: d[0],
        raw: [d[1], d[2], d[3], d[4], d[5], d[6]],
    })
}

pub(super) fn threshold_sensor(s: &SdrSensor, raw: u8, status: u8, t: &Thresholds) -> pb::Sensor {
    let conv = |r: u8| s.analog.as_ref().map(|a| a.convert(r));
    let value = conv(raw).unwrap_or(f64::from(raw));
    let get = |bit: usize| -> Option<f64> {
        if t.readable & (1 << bit) != 0 {
            conv(t.raw[bit])
        } else {
            None
        }
    };
    let (lnc, lc, lnr, unc, uc, unr) = (get(0), get(1), get(2), get(3), get(4), get(5));
    // The BMC's own verdict first: bits 0..5 of the status byte are lnc lc lnr unc uc unr.
    let mut level = if status & 0b11_0110 != 0 {
        2
    } else if status & 0b00_1001 != 0 {
        1
    } else {
        0
    };
    // And our own comparison, for BMCs that do not set the bits.
    let above = |t: Option<f64>| t.is_some_and(|t| value > t + 1e-9);
    let below = |t: Option<f64>| t.is_some_and(|t| value < t - 1e-9);
    if above(uc) || above(unr) || below(lc) || below(lnr) {
        level = 2;
    } else if level == 0 && (above(unc) || below(lnc)) {
        level = 1;
    }
    pb::Sensor {
        name: s.name.clone(),
        r#type: sensor_type_name(s.sensor_type).to_string(),
        value,
        unit: s.unit.clone(),
        state: ["ok", "warning", "critical"][level].to_string(),
        lower_critical: lc,
        lower_non_critical: lnc,
        upper_non_critical: unc,
        upper_critical: uc,
        asserted: Vec::new(),
    }
}

pub(super) fn discrete_sensor(s: &SdrSensor, state1: u8, state2: u8) -> pb::Sensor {
    let bits = u16::from(state1) | (u16::from(state2 & 0x7F) << 8);
    let mut asserted = Vec::new();
    let mut level = Severity::Info;
    for offset in 0..15u8 {
        if bits & (1 << offset) == 0 {
            continue;
        }
        let (name, sev) = discrete_offset(s.reading_type, s.sensor_type, offset);
        asserted.push(name);
        level = level.max(sev);
    }
    pb::Sensor {
        name: s.name.clone(),
        r#type: sensor_type_name(s.sensor_type).to_string(),
        value: f64::from(bits),
        unit: String::new(),
        state: match level {
            Severity::Info => "ok",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
        .to_string(),
        asserted,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::sim;
    use super::super::sdr::{Analog, parse_sdr};
    use super::*;

    fn sdr(record: &[u8]) -> SdrSensor {
        parse_sdr(record).unwrap_or_else(|| panic!("not a sensor record"))
    }

    fn reading(d: &[u8]) -> Reading {
        Reading::parse(d).unwrap_or_else(|| panic!("no reading in {d:02x?}"))
    }

    fn thresholds(d: &[u8]) -> Thresholds {
        thresholds_from_response(d).unwrap_or_else(|| panic!("no thresholds in {d:02x?}"))
    }

    /// The e2e fixture's table (tests/src/ipmi.rs), from the simulator's own bytes.
    #[test]
    fn the_simulators_threshold_sensors() {
        let cases = [
            (
                sim::SDR_CPU_TEMP,
                sim::READING_CPU_TEMP,
                sim::THRESHOLDS_CPU_TEMP,
            ),
            (sim::SDR_FAN1, sim::READING_FAN1, sim::THRESHOLDS_FAN1),
            (
                sim::SDR_PSU1_VIN,
                sim::READING_PSU1_VIN,
                sim::THRESHOLDS_PSU1_VIN,
            ),
        ];
        let got: Vec<pb::Sensor> = cases
            .iter()
            .map(|(s, r, t)| {
                let r = reading(r);
                threshold_sensor(&sdr(s), r.raw, r.state1, &thresholds(t))
            })
            .collect();
        let summary: Vec<_> = got
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    s.r#type.as_str(),
                    s.value,
                    s.unit.as_str(),
                    s.state.as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("CPU Temp", "temperature", 45.0, "C", "ok"),
                ("Fan1", "fan", 4800.0, "RPM", "ok"),
                ("PSU1 Vin 12v", "voltage", 12.0, "V", "ok"),
            ]
        );
        assert_eq!(
            (
                got[0].upper_non_critical,
                got[0].upper_critical,
                got[0].lower_critical
            ),
            (Some(75.0), Some(85.0), None)
        );
        assert_eq!(
            (got[1].lower_non_critical, got[1].lower_critical),
            (Some(1000.0), Some(500.0))
        );
        assert_eq!(
            (got[2].lower_critical, got[2].upper_critical),
            (Some(10.8), Some(13.2))
        );
    }

    #[test]
    fn the_simulators_discrete_sensors() {
        let r = reading(sim::READING_PSU1_STATUS);
        let psu = discrete_sensor(&sdr(sim::SDR_PSU1_STATUS), r.state1, r.state2);
        assert_eq!(
            (
                psu.r#type.as_str(),
                psu.state.as_str(),
                psu.asserted.as_slice()
            ),
            (
                "power_supply",
                "ok",
                ["presence detected".to_string()].as_slice()
            )
        );
        let r = reading(sim::READING_DIMM_A1_ECC);
        let dimm = discrete_sensor(&sdr(sim::SDR_DIMM_A1_ECC), r.state1, r.state2);
        assert_eq!((dimm.state.as_str(), dimm.asserted.len()), ("ok", 0));
        // Presence and failure asserted: the worst one counts.
        let failed = discrete_sensor(&sdr(sim::SDR_PSU1_STATUS), 0b11, 0);
        assert_eq!(failed.state, "critical");
        assert_eq!(failed.asserted, ["presence detected", "failure detected"]);
        assert_eq!(failed.value, 3.0);
    }

    #[test]
    fn unavailable_or_short_readings_are_none() {
        assert_eq!(Reading::parse(&[0x2d]), None);
        // Bit 5 of byte 1: reading unavailable.
        assert_eq!(Reading::parse(&[0x2d, 0xe0, 0x00, 0x00]), None);
        // Only the two mandatory bytes: no state bits.
        assert_eq!(
            Reading::parse(&[0x2d, 0xc0]),
            Some(Reading {
                raw: 0x2d,
                state1: 0,
                state2: 0
            })
        );
        assert_eq!(thresholds_from_response(&sim::THRESHOLDS_FAN1[..6]), None);
    }

    #[test]
    fn threshold_state_from_values() {
        let s = SdrSensor {
            owner: 0x20,
            number: 2,
            sensor_type: 4,
            reading_type: 1,
            name: "Fan1".into(),
            analog: Some(Analog {
                format: 0,
                linearization: 0,
                m: 50,
                b: 0,
                r_exp: 0,
                b_exp: 0,
            }),
            unit: "RPM".into(),
            sdr_thresholds: Thresholds::default(),
        };
        let t = Thresholds {
            readable: 0b11,
            raw: [20, 10, 0, 0, 0, 0],
        };
        let ok = threshold_sensor(&s, 96, 0, &t);
        assert_eq!((ok.value, ok.state.as_str()), (4800.0, "ok"));
        assert_eq!(ok.lower_critical, Some(500.0));
        assert_eq!(ok.lower_non_critical, Some(1000.0));
        assert_eq!(ok.upper_critical, None);
        assert_eq!(threshold_sensor(&s, 15, 0, &t).state, "warning");
        assert_eq!(threshold_sensor(&s, 5, 0, &t).state, "critical");
        // The BMC's status bits count even when the value looks fine.
        assert_eq!(threshold_sensor(&s, 96, 0b10, &t).state, "critical");
    }
}
