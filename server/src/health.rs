//! Health with reasons, from a device's observed hardware state. Pure rules: no I/O, no clock
//! (the caller passes `now`), so every rule is table-tested.
//!
//! Each reason has a stable `code` (what automation keys on), a severity, a message a person
//! can act on, and a `source` (the sensor, disk or collector). The device's health is the worst
//! severity among its reasons, OK when there are none. UNKNOWN (agent silent) is decided by the
//! caller, which knows the report interval.

use std::collections::BTreeMap;

use muster::pb::{self, Health};
use serde::{Deserialize, Serialize};

/// SMART attributes whose raw value above zero predicts failure (Backblaze's drive stats):
/// reallocated sectors, reported uncorrectable, command timeout, pending sectors, offline
/// uncorrectable.
pub const BACKBLAZE_ATTRIBUTES: [u32; 5] = [5, 187, 188, 197, 198];
/// How long a critical SEL event keeps a device CRITICAL after the server received it (unless
/// the SEL is cleared first).
pub const SEL_CRITICAL_WINDOW_NANOS: i64 = 24 * 3600 * 1_000_000_000;
/// NVMe percentage used at which the drive is reported as worn.
pub const NVME_WEAR_PERCENT: u32 = 90;

/// A SEL entry as the server keeps it: when it arrived, since the BMC's own clock is often
/// uptime-based.
#[derive(Debug, Clone, PartialEq)]
pub struct SelSeen {
    pub received_nanos: i64,
    pub entry: pb::SelEntry,
}

/// A disk whose Backblaze counters grew: kept until that disk is gone, because a failing disk
/// does not become healthy by its counters standing still for one report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prediction {
    pub attribute: u32,
    pub from: i64,
    pub to: i64,
    pub since_nanos: i64,
}

/// What health evaluation remembers between reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthMemory {
    /// Last seen Backblaze raw values per disk serial.
    pub smart_raw: BTreeMap<String, BTreeMap<u32, i64>>,
    /// Disks predicted to fail, by serial.
    pub predicted: BTreeMap<String, Prediction>,
}

/// What evaluation sees of a device.
#[derive(Debug, Clone, Copy)]
pub struct HealthInput<'a> {
    pub sensors: &'a [pb::Sensor],
    pub sel: &'a [SelSeen],
    pub smart: &'a [pb::SmartDisk],
    pub collectors: &'a [pb::CollectorStatus],
    pub now_nanos: i64,
}

/// A device's health and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    pub health: Health,
    pub reasons: Vec<pb::HealthReason>,
}

impl Assessment {
    /// Whether two assessments differ in what matters for events (severity, code, source);
    /// message text alone (a reading that moved) does not make a new event.
    pub fn same_as(&self, health: i32, reasons: &[pb::HealthReason]) -> bool {
        let key = |r: &pb::HealthReason| (r.severity, r.code.clone(), r.source.clone());
        self.health as i32 == health
            && self.reasons.len() == reasons.len()
            && self.reasons.iter().map(key).eq(reasons.iter().map(key))
    }
}

fn reason(severity: Health, code: &str, source: &str, message: String) -> pb::HealthReason {
    pb::HealthReason {
        severity: severity as i32,
        code: code.into(),
        message,
        source: source.into(),
    }
}

fn rank(h: Health) -> u8 {
    match h {
        Health::Critical => 3,
        Health::Unknown => 2,
        Health::Warning => 1,
        Health::Ok | Health::Unspecified => 0,
    }
}

/// The worst of a set of reasons (OK when there are none).
pub fn worst(reasons: &[pb::HealthReason]) -> Health {
    reasons
        .iter()
        .map(|r| Health::try_from(r.severity).unwrap_or(Health::Unspecified))
        .max_by_key(|h| rank(*h))
        .filter(|h| rank(*h) > 0)
        .unwrap_or(Health::Ok)
}

fn sensor_reasons(s: &pb::Sensor, out: &mut Vec<pb::HealthReason>) {
    let unit = if s.unit.is_empty() {
        String::new()
    } else {
        format!(" {}", s.unit)
    };
    let has_thresholds = s.lower_critical.is_some()
        || s.upper_critical.is_some()
        || s.lower_non_critical.is_some()
        || s.upper_non_critical.is_some();
    if has_thresholds {
        let v = s.value;
        let crit =
            s.lower_critical.is_some_and(|t| v <= t) || s.upper_critical.is_some_and(|t| v >= t);
        let warn = s.lower_non_critical.is_some_and(|t| v <= t)
            || s.upper_non_critical.is_some_and(|t| v >= t);
        let severity = if crit || s.state == "critical" {
            Health::Critical
        } else if warn || s.state == "warning" {
            Health::Warning
        } else {
            return;
        };
        let bounds = [
            ("lower critical", s.lower_critical),
            ("lower non-critical", s.lower_non_critical),
            ("upper non-critical", s.upper_non_critical),
            ("upper critical", s.upper_critical),
        ]
        .iter()
        .filter_map(|(n, t)| t.map(|t| format!("{n} {t}")))
        .collect::<Vec<_>>()
        .join(", ");
        out.push(reason(
            severity,
            "sensor.threshold",
            &s.name,
            format!(
                "{} {} reads {}{unit}, outside its thresholds ({bounds})",
                s.r#type, s.name, s.value
            ),
        ));
        return;
    }
    let severity = match s.state.as_str() {
        "critical" => Health::Critical,
        "warning" => Health::Warning,
        _ => return,
    };
    let states = if s.asserted.is_empty() {
        s.state.clone()
    } else {
        s.asserted.join(", ")
    };
    out.push(reason(
        severity,
        "sensor.fault",
        &s.name,
        format!("{} {}: {states}", s.r#type.replace('_', " "), s.name),
    ));
}

fn sel_reasons(sel: &[SelSeen], now: i64, out: &mut Vec<pb::HealthReason>) {
    // Replay the log: a critical assertion is active until the same sensor's same event is
    // deasserted (the BMC logs the recovery) or the SEL is cleared. One reason per active
    // (sensor type, sensor, event): a storm of identical events is one problem.
    let mut active: BTreeMap<(String, String, String), &SelSeen> = BTreeMap::new();
    for s in sel {
        let e = &s.entry;
        let key = (e.sensor_type.clone(), e.sensor.clone(), e.event.clone());
        if !e.asserted {
            active.remove(&key);
        } else if e.severity == "critical"
            && now.saturating_sub(s.received_nanos) <= SEL_CRITICAL_WINDOW_NANOS
        {
            active.insert(key, s);
        }
    }
    for s in active.values() {
        let e = &s.entry;
        let source = if e.sensor.is_empty() {
            e.sensor_type.clone()
        } else {
            e.sensor.clone()
        };
        out.push(reason(
            Health::Critical,
            "sel.critical",
            &source,
            format!(
                "SEL record {}: {} {}",
                e.record_id,
                e.sensor_type.replace('_', " "),
                e.event
            ),
        ));
    }
}

fn smart_reasons(
    disks: &[pb::SmartDisk],
    memory: &mut HealthMemory,
    now: i64,
    out: &mut Vec<pb::HealthReason>,
) {
    let mut present = std::collections::BTreeSet::new();
    for d in disks {
        let id = if d.serial.is_empty() {
            d.device.clone()
        } else {
            d.serial.clone()
        };
        present.insert(id.clone());
        let source = format!("{} ({})", d.device, id);
        if !d.passed {
            out.push(reason(
                Health::Critical,
                "smart.failed",
                &source,
                format!(
                    "disk {} {}: SMART overall health self-assessment FAILED",
                    d.device, d.model
                ),
            ));
        }
        let mut signals = Vec::new();
        let last = memory.smart_raw.entry(id.clone()).or_default();
        for a in &d.attributes {
            if !BACKBLAZE_ATTRIBUTES.contains(&a.id) {
                continue;
            }
            if a.raw > 0 {
                signals.push(format!("{} ({}) = {}", a.id, a.name, a.raw));
            }
            if let Some(prev) = last.get(&a.id)
                && a.raw > *prev
                && !memory.predicted.contains_key(&id)
            {
                memory.predicted.insert(
                    id.clone(),
                    Prediction {
                        attribute: a.id,
                        from: *prev,
                        to: a.raw,
                        since_nanos: now,
                    },
                );
            }
            last.insert(a.id, a.raw);
        }
        if let Some(p) = memory.predicted.get(&id) {
            out.push(reason(
                Health::Critical,
                "smart.predicted_failure",
                &source,
                format!(
                    "disk {} {}: predicted failure, SMART attribute {} grew from {} to {} between reports",
                    d.device, d.model, p.attribute, p.from, p.to
                ),
            ));
        } else if !signals.is_empty() {
            out.push(reason(
                Health::Warning,
                "smart.backblaze",
                &source,
                format!(
                    "disk {} {}: failure signals {}",
                    d.device,
                    d.model,
                    signals.join(", ")
                ),
            ));
        }
        if let Some(n) = &d.nvme {
            if n.critical_warning != 0 {
                out.push(reason(
                    Health::Critical,
                    "nvme.critical_warning",
                    &source,
                    format!(
                        "NVMe {} critical warning 0x{:02x}{}",
                        d.device,
                        n.critical_warning,
                        nvme_warning_bits(n.critical_warning)
                    ),
                ));
            }
            if n.available_spare_threshold > 0 && n.available_spare < n.available_spare_threshold {
                out.push(reason(
                    Health::Critical,
                    "nvme.spare_low",
                    &source,
                    format!(
                        "NVMe {} available spare {}% is below its threshold {}%",
                        d.device, n.available_spare, n.available_spare_threshold
                    ),
                ));
            }
            if n.media_errors > 0 {
                out.push(reason(
                    Health::Warning,
                    "nvme.media_errors",
                    &source,
                    format!("NVMe {} has {} media errors", d.device, n.media_errors),
                ));
            }
            if n.percentage_used >= NVME_WEAR_PERCENT {
                out.push(reason(
                    Health::Warning,
                    "nvme.wear",
                    &source,
                    format!("NVMe {} is {}% worn", d.device, n.percentage_used),
                ));
            }
        }
        if d.scsi_grown_defects > 0 {
            out.push(reason(
                Health::Warning,
                "smart.grown_defects",
                &source,
                format!(
                    "disk {} has {} grown defects",
                    d.device, d.scsi_grown_defects
                ),
            ));
        }
    }
    // A disk that is gone (replaced) takes its history with it.
    memory.smart_raw.retain(|k, _| present.contains(k));
    memory.predicted.retain(|k, _| present.contains(k));
}

fn nvme_warning_bits(bits: u32) -> String {
    let names = [
        "available spare below threshold",
        "temperature out of range",
        "reliability degraded",
        "read-only",
        "volatile memory backup failed",
        "persistent memory read-only",
    ];
    let set: Vec<&str> = names
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect();
    if set.is_empty() {
        String::new()
    } else {
        format!(": {}", set.join(", "))
    }
}

/// Evaluates every rule; `memory` carries SMART history from report to report.
pub fn evaluate(input: HealthInput<'_>, memory: &mut HealthMemory) -> Assessment {
    let mut reasons = Vec::new();
    for s in input.sensors {
        sensor_reasons(s, &mut reasons);
    }
    sel_reasons(input.sel, input.now_nanos, &mut reasons);
    smart_reasons(input.smart, memory, input.now_nanos, &mut reasons);
    for c in input.collectors {
        if !c.error.is_empty() {
            reasons.push(reason(
                Health::Warning,
                "collector.error",
                &c.name,
                format!("the {} collector failed: {}", c.name, c.error),
            ));
        }
    }
    Assessment {
        health: worst(&reasons),
        reasons,
    }
}

/// The assessment of a device whose agent went silent.
pub fn silent(last_report_nanos: i64, now_nanos: i64, intervals: u32) -> Assessment {
    let secs = now_nanos.saturating_sub(last_report_nanos) / 1_000_000_000;
    Assessment {
        health: Health::Unknown,
        reasons: vec![reason(
            Health::Unknown,
            "agent.silent",
            "agent",
            format!("no report for {secs} s (more than {intervals} report intervals)"),
        )],
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn temp(value: f64) -> pb::Sensor {
        pb::Sensor {
            name: "CPU temp".into(),
            r#type: "temperature".into(),
            value,
            unit: "C".into(),
            state: "ok".into(),
            upper_non_critical: Some(80.0),
            upper_critical: Some(90.0),
            ..Default::default()
        }
    }

    fn disk(serial: &str, realloc: i64, passed: bool) -> pb::SmartDisk {
        pb::SmartDisk {
            device: "/dev/sda".into(),
            model: "HDD".into(),
            serial: serial.into(),
            passed,
            attributes: vec![pb::SmartAttribute {
                id: 5,
                name: "Reallocated_Sector_Ct".into(),
                value: 100,
                worst: 100,
                thresh: 10,
                raw: realloc,
            }],
            ..Default::default()
        }
    }

    fn eval(input: HealthInput<'_>, m: &mut HealthMemory) -> (Health, Vec<String>) {
        let a = evaluate(input, m);
        (a.health, a.reasons.iter().map(|r| r.code.clone()).collect())
    }

    fn input<'a>(
        sensors: &'a [pb::Sensor],
        sel: &'a [SelSeen],
        smart: &'a [pb::SmartDisk],
    ) -> HealthInput<'a> {
        HealthInput {
            sensors,
            sel,
            smart,
            collectors: &[],
            now_nanos: 1_000_000_000_000,
        }
    }

    #[test]
    fn sensor_thresholds() {
        let mut m = HealthMemory::default();
        for (v, want) in [
            (50.0, Health::Ok),
            (85.0, Health::Warning),
            (95.0, Health::Critical),
        ] {
            let s = [temp(v)];
            assert_eq!(eval(input(&s, &[], &[]), &mut m).0, want, "{v}");
        }
        let psu = [pb::Sensor {
            name: "PSU1 status".into(),
            r#type: "power_supply".into(),
            state: "critical".into(),
            asserted: vec!["presence detected".into(), "failure detected".into()],
            ..Default::default()
        }];
        let a = evaluate(input(&psu, &[], &[]), &mut m);
        assert_eq!(a.health, Health::Critical);
        assert_eq!(a.reasons[0].code, "sensor.fault");
        assert!(
            a.reasons[0].message.contains("failure detected"),
            "{:?}",
            a.reasons
        );
    }

    #[test]
    fn sel_critical_events_expire_and_dedupe() {
        let ecc = |id, received| SelSeen {
            received_nanos: received,
            entry: pb::SelEntry {
                record_id: id,
                sensor_type: "memory".into(),
                sensor: "DIMM A1".into(),
                event: "uncorrectable ECC".into(),
                asserted: true,
                severity: "critical".into(),
                ..Default::default()
            },
        };
        let mut m = HealthMemory::default();
        let now = 1_000_000_000_000_000;
        let sel = [ecc(1, now - 10), ecc(2, now - 5)];
        let mut i = input(&[], &sel, &[]);
        i.now_nanos = now;
        let (h, codes) = eval(i, &mut m);
        assert_eq!(
            (h, codes),
            (Health::Critical, vec!["sel.critical".to_string()])
        );
        let old = [ecc(1, now - SEL_CRITICAL_WINDOW_NANOS - 1)];
        let mut i = input(&[], &old, &[]);
        i.now_nanos = now;
        assert_eq!(eval(i, &mut m).0, Health::Ok);
    }

    #[test]
    fn backblaze_growth_predicts_failure_until_the_disk_is_replaced() {
        let mut m = HealthMemory::default();
        let d0 = [disk("S1", 0, true)];
        assert_eq!(eval(input(&[], &[], &d0), &mut m).0, Health::Ok);
        let d8 = [disk("S1", 8, true)];
        let (h, codes) = eval(input(&[], &[], &d8), &mut m);
        assert_eq!(
            (h, codes),
            (
                Health::Critical,
                vec!["smart.predicted_failure".to_string()]
            )
        );
        // Stands still: still predicted.
        assert_eq!(eval(input(&[], &[], &d8), &mut m).0, Health::Critical);
        // Replaced by another disk: history gone; first sighting with raw > 0 is a warning.
        let new = [disk("S2", 3, true)];
        let (h, codes) = eval(input(&[], &[], &new), &mut m);
        assert_eq!(
            (h, codes),
            (Health::Warning, vec!["smart.backblaze".to_string()])
        );
        let failed = [disk("S2", 3, false)];
        assert_eq!(eval(input(&[], &[], &failed), &mut m).0, Health::Critical);
    }

    #[test]
    fn nvme_rules() {
        let mut m = HealthMemory::default();
        let mut d = disk("N1", 0, true);
        d.attributes.clear();
        d.nvme = Some(pb::NvmeHealth {
            critical_warning: 0x1,
            media_errors: 2,
            percentage_used: 95,
            available_spare: 5,
            available_spare_threshold: 10,
            temperature_c: 40,
        });
        let (h, codes) = eval(input(&[], &[], &[d]), &mut m);
        assert_eq!(h, Health::Critical);
        assert_eq!(
            codes,
            [
                "nvme.critical_warning",
                "nvme.spare_low",
                "nvme.media_errors",
                "nvme.wear"
            ]
        );
    }

    #[test]
    fn same_as_ignores_message_text() {
        let mut m = HealthMemory::default();
        let a = evaluate(input(&[temp(95.0)], &[], &[]), &mut m);
        let b = evaluate(input(&[temp(97.0)], &[], &[]), &mut m);
        assert!(a.same_as(b.health as i32, &b.reasons));
        let c = evaluate(input(&[temp(85.0)], &[], &[]), &mut m);
        assert!(!a.same_as(c.health as i32, &c.reasons));
    }
}
