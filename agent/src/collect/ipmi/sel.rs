//! Decoding of the System Event Log (IPMI 2.0 section 31/32): Get SEL Info, Get SEL Entry
//! answers and the 16-byte records themselves, named with the sensors of the SDRs. Pure.

use std::collections::HashMap;

use muster::pb;

use super::events::{Severity, discrete_offset, sensor_type_name, threshold_event};
use super::sdr::SdrSensor;

/// What Get SEL Info says that the walk needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SelInfo {
    pub(super) entries: u16,
    /// "Most recent erase" timestamp: a change means the SEL was cleared.
    pub(super) erase_ts: u32,
}

impl SelInfo {
    /// `None` when the answer ends before the erase timestamp (bytes 9-12).
    pub(super) fn parse(d: &[u8]) -> Option<Self> {
        (d.len() >= 13).then(|| Self {
            entries: u16::from_le_bytes([d[1], d[2]]),
            erase_ts: u32::from_le_bytes([d[9], d[10], d[11], d[12]]),
        })
    }
}

/// A Get SEL Entry answer: the next record id (0xFFFF: none) and the record; `None` when short.
pub(super) fn parse_sel_entry(d: &[u8]) -> Option<(u16, [u8; 16])> {
    let rec: [u8; 16] = d.get(2..18)?.try_into().ok()?;
    Some((u16::from_le_bytes([d[0], d[1]]), rec))
}

/// Sensor names from the SDRs, by (owner, number) and by number alone.
pub(super) struct SensorNames<'a> {
    by_owner: HashMap<(u8, u8), &'a str>,
    by_number: HashMap<u8, Option<&'a str>>,
}

impl<'a> SensorNames<'a> {
    pub(super) fn new(sdrs: &'a [SdrSensor]) -> Self {
        let mut by_owner = HashMap::new();
        let mut by_number: HashMap<u8, Option<&'a str>> = HashMap::new();
        for s in sdrs {
            by_owner.insert((s.owner, s.number), s.name.as_str());
            by_number
                .entry(s.number)
                .and_modify(|e| *e = None)
                .or_insert(Some(s.name.as_str()));
        }
        Self {
            by_owner,
            by_number,
        }
    }

    fn get(&self, generator: u8, number: u8) -> Option<&'a str> {
        self.by_owner
            .get(&(generator, number))
            .copied()
            .or_else(|| self.by_number.get(&number).copied().flatten())
    }
}

/// IPMI timestamps at or below this are seconds since BMC start, not since 1970.
const PRE_INIT_TS_MAX: u32 = 0x2000_0000;

/// Decodes one 16-byte SEL record. Time is set only for real (post-init) timestamps.
pub(super) fn decode_sel(rec: &[u8; 16], names: &SensorNames<'_>) -> pb::SelEntry {
    let record_id = u32::from(u16::from_le_bytes([rec[0], rec[1]]));
    let record_type = rec[2];
    let ts = u32::from_le_bytes([rec[3], rec[4], rec[5], rec[6]]);
    let time = (record_type < 0xE0 && ts > PRE_INIT_TS_MAX && ts != u32::MAX).then_some(
        pbjson_types::Timestamp {
            seconds: i64::from(ts),
            nanos: 0,
        },
    );
    if record_type != 0x02 {
        return pb::SelEntry {
            record_id,
            time,
            sensor_type: "oem".into(),
            event: format!("OEM record type {record_type:#04x}"),
            asserted: true,
            severity: Severity::Info.as_str().into(),
            ..Default::default()
        };
    }
    let generator = rec[7];
    let sensor_type = rec[10];
    let number = rec[11];
    let deassertion = rec[12] & 0x80 != 0;
    let reading_type = rec[12] & 0x7F;
    let offset = rec[13] & 0x0F;
    let (event, sev) = if reading_type == 0x01 {
        threshold_event(offset)
            .map(|(n, s)| (n.to_string(), s))
            .unwrap_or_else(|| (format!("threshold offset {offset}"), Severity::Info))
    } else {
        let (name, sev) = discrete_offset(reading_type, sensor_type, offset);
        // "failure detected" alone reads oddly in a log: say what failed.
        let name = match sensor_type {
            0x08 => format!("power supply {name}"),
            _ => name,
        };
        (name, sev)
    };
    // A deassertion is the condition going away: worth logging, not worth an alarm.
    let severity = if deassertion { Severity::Info } else { sev };
    pb::SelEntry {
        record_id,
        time,
        sensor_type: sensor_type_name(sensor_type).into(),
        sensor: names
            .get(generator, number)
            .map(str::to_string)
            .unwrap_or_else(|| format!("sensor {number:#04x}")),
        event,
        asserted: !deassertion,
        severity: severity.as_str().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{hand, sim};
    use super::super::sdr::parse_sdr;
    use super::*;

    fn sim_sdrs() -> Vec<SdrSensor> {
        [
            sim::SDR_MC_LOCATOR,
            sim::SDR_CPU_TEMP,
            sim::SDR_FAN1,
            sim::SDR_PSU1_VIN,
            sim::SDR_PSU1_STATUS,
            sim::SDR_DIMM_A1_ECC,
        ]
        .iter()
        .filter_map(|r| parse_sdr(r))
        .collect()
    }

    fn entry(d: &[u8]) -> (u16, [u8; 16]) {
        parse_sel_entry(d).unwrap_or_else(|| panic!("short SEL entry {d:02x?}"))
    }

    #[test]
    fn sel_info_of_the_simulator() {
        assert_eq!(
            SelInfo::parse(sim::SEL_INFO),
            Some(SelInfo {
                entries: 3,
                erase_ts: 0
            })
        );
        assert_eq!(SelInfo::parse(&sim::SEL_INFO[..12]), None);
    }

    /// The three records the e2e fixture starts with, as the simulator serves them.
    #[test]
    fn the_simulators_sel() {
        let sdrs = sim_sdrs();
        let names = SensorNames::new(&sdrs);
        let mut nexts = Vec::new();
        let mut got = Vec::new();
        for d in [sim::SEL_ENTRY_1, sim::SEL_ENTRY_2, sim::SEL_ENTRY_3] {
            let (next, rec) = entry(d);
            nexts.push(next);
            got.push(decode_sel(&rec, &names));
        }
        assert_eq!(nexts, [2, 3, 0xFFFF]);
        let summary: Vec<_> = got
            .iter()
            .map(|e| {
                (
                    e.record_id,
                    e.sensor.as_str(),
                    e.sensor_type.as_str(),
                    e.event.as_str(),
                    e.severity.as_str(),
                    e.asserted,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    1,
                    "CPU Temp",
                    "temperature",
                    "upper critical going high",
                    "critical",
                    true
                ),
                (
                    2,
                    "PSU1 Status",
                    "power_supply",
                    "power supply failure detected",
                    "critical",
                    true
                ),
                (
                    3,
                    "DIMM A1 ecc",
                    "memory",
                    "correctable ECC",
                    "warning",
                    true
                ),
            ]
        );
        // ipmi_sim stamps records with seconds since it started (0x26e2): no wall time.
        assert!(got.iter().all(|e| e.time.is_none()), "{got:?}");
        assert_eq!(parse_sel_entry(&sim::SEL_ENTRY_1[..17]), None);
    }

    #[test]
    fn real_time_deassertion_and_unknown_sensor() {
        let names = SensorNames::new(&[]);
        let e = decode_sel(&hand::SEL_DEASSERT_REAL_TIME, &names);
        assert_eq!(
            e.time,
            Some(pbjson_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0
            })
        );
        // A deassertion is logged, not alarmed.
        assert_eq!((e.asserted, e.severity.as_str()), (false, "info"));
        assert_eq!(e.event, "upper critical going high");
        assert_eq!(e.sensor, "sensor 0x07");
    }

    #[test]
    fn oem_records_are_kept_as_such() {
        let e = decode_sel(&hand::SEL_OEM_TIMESTAMPED, &SensorNames::new(&[]));
        assert_eq!(e.record_id, 0x0010);
        assert_eq!(e.sensor_type, "oem");
        assert_eq!(e.event, "OEM record type 0xc0");
        assert_eq!(
            e.time,
            Some(pbjson_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0
            })
        );
        // Types 0xE0-0xFF have no timestamp at all.
        let mut r = hand::SEL_OEM_TIMESTAMPED;
        r[2] = 0xE0;
        assert_eq!(decode_sel(&r, &SensorNames::new(&[])).time, None);
    }

    #[test]
    fn sensor_names_by_owner_then_unambiguous_number() {
        let mut sdrs = sim_sdrs();
        let mut other = sdrs[0].clone();
        other.owner = 0x2c;
        other.name = "Other CPU Temp".into();
        sdrs.push(other);
        let names = SensorNames::new(&sdrs);
        assert_eq!(names.get(0x20, 1), Some("CPU Temp"));
        assert_eq!(names.get(0x2c, 1), Some("Other CPU Temp"));
        // Number 1 exists under two owners: a third generator gets no guess.
        assert_eq!(names.get(0x41, 1), None);
        assert_eq!(names.get(0x41, 2), Some("Fan1"));
    }
}
