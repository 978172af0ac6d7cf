//! smartctl's JSON (ATA, NVMe, SCSI; smartctl 7.0-7.3 shapes) to `SmartDisk`. Pure: bytes in,
//! a report or an error naming the field out. Unit-tested on inline documents and on the real
//! samples in `/work/shared/smart-samples` (third-party data, read in place, never copied here).

use muster::pb;
use serde_json::{Map, Value};

use super::SmartError;

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

pub(super) fn report_from_value(value: &Value) -> Result<SmartReport, SmartError> {
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
pub(super) fn model_name(root: &Obj<'_>) -> Result<Option<String>, SmartError> {
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

pub(super) fn attribute(entry: &Obj<'_>) -> Result<pb::SmartAttribute, SmartError> {
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
pub(super) struct Obj<'a> {
    path: String,
    map: &'a Map<String, Value>,
}

impl<'a> Obj<'a> {
    pub(super) fn root(value: &'a Value) -> Result<Self, SmartError> {
        Self::at(value, String::new())
    }

    pub(super) fn at(value: &'a Value, path: String) -> Result<Self, SmartError> {
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

    pub(super) fn path_of(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(super) fn obj(&self, key: &str) -> Result<Option<Obj<'a>>, SmartError> {
        self.get(key)
            .map(|v| Obj::at(v, self.path_of(key)))
            .transpose()
    }

    pub(super) fn array(&self, key: &str) -> Result<Option<&'a Vec<Value>>, SmartError> {
        self.typed(key, "an array", Value::as_array)
    }

    pub(super) fn str(&self, key: &str) -> Result<Option<&'a str>, SmartError> {
        self.typed(key, "a string", Value::as_str)
    }

    pub(super) fn bool(&self, key: &str) -> Result<Option<bool>, SmartError> {
        self.typed(key, "true or false", Value::as_bool)
    }

    pub(super) fn u64(&self, key: &str) -> Result<Option<u64>, SmartError> {
        self.typed(key, "an integer in 0..=18446744073709551615", Value::as_u64)
    }

    pub(super) fn i64(&self, key: &str) -> Result<Option<i64>, SmartError> {
        self.typed(
            key,
            "an integer in -9223372036854775808..=9223372036854775807",
            Value::as_i64,
        )
    }

    pub(super) fn u32(&self, key: &str) -> Result<Option<u32>, SmartError> {
        self.typed(key, "an integer in 0..=4294967295", |v| {
            v.as_u64().and_then(|n| u32::try_from(n).ok())
        })
    }

    pub(super) fn i32(&self, key: &str) -> Result<Option<i32>, SmartError> {
        self.typed(key, "an integer in -2147483648..=2147483647", |v| {
            v.as_i64().and_then(|n| i32::try_from(n).ok())
        })
    }

    pub(super) fn typed<T>(
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

pub(super) fn wrong_type(field: &str, expected: &'static str, found: &Value) -> SmartError {
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

    /// Real smartctl output (`/work/shared/smart-samples`, see its SOURCES.md), read in place.
    /// Expected values were read from the files with `jq`, not from this parser.
    fn sample(name: &str) -> SmartReport {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/smart-samples")
            .join(name);
        let json = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (the shared SMART samples must be present)",
                path.display()
            )
        });
        parse_report(&json).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn attr(disk: &pb::SmartDisk, id: u32) -> &pb::SmartAttribute {
        disk.attributes
            .iter()
            .find(|a| a.id == id)
            .unwrap_or_else(|| panic!("no attribute {id} in {:?}", disk.model))
    }

    #[test]
    fn real_failing_hdd() {
        let r = sample("scrutiny-smart-fail2.json");
        let d = &r.disk;
        assert_eq!(
            (d.model.as_str(), d.serial.as_str()),
            ("Hitachi HDS721050DLE630", "MSK423Y20S3HBC")
        );
        assert_eq!((d.passed, d.exit_status), (false, 216));
        assert_eq!(attr(d, 9).raw, 65592); // Power_On_Hours
        assert_eq!(d.attributes.len(), 17);
        let realloc = attr(d, 5);
        assert_eq!(
            (
                realloc.name.as_str(),
                realloc.value,
                realloc.worst,
                realloc.thresh,
                realloc.raw
            ),
            ("Reallocated_Sector_Ct", 1, 1, 5, 1975)
        );
        assert_eq!(attr(d, 197).raw, 8);
        assert_eq!(
            (r.protocol.as_deref(), r.solid_state()),
            (Some("ATA"), Some(false))
        );
    }

    #[test]
    fn real_healthy_sata_disks() {
        let hdd = sample("sat-HGST_Ultrastar_7K6000-HGST_HUS726020ALE614-sda.json");
        assert_eq!(hdd.disk.model, "HGST HUS726020ALE614");
        assert_eq!((hdd.disk.passed, hdd.disk.exit_status), (true, 0));
        assert_eq!(attr(&hdd.disk, 9).raw, 67518);
        assert_eq!(
            (hdd.rotation_rate, hdd.solid_state()),
            (Some(7200), Some(false))
        );
        assert_eq!(attr(&hdd.disk, 5).raw, 0);
        let ssd =
            sample("sat-Intel_S4510_S4610_S4500_S4600_Series_SSDs-INTEL_SSDSC2KB480G8-sdm.json");
        assert_eq!(ssd.disk.model, "INTEL SSDSC2KB480G8");
        assert_eq!(ssd.disk.attributes.len(), 27);
        assert_eq!(
            (ssd.rotation_rate, ssd.solid_state()),
            (Some(0), Some(true))
        );
    }

    #[test]
    fn real_nvme_with_media_errors() {
        let r = sample("scrutiny-smart-nvme-failed.json");
        assert_eq!(r.disk.model, "Samsung SSD 970 EVO 500GB");
        assert!(r.disk.attributes.is_empty());
        assert_eq!(
            r.disk.nvme,
            Some(pb::NvmeHealth {
                critical_warning: 0,
                media_errors: 7,
                percentage_used: 3,
                available_spare: 99,
                available_spare_threshold: 10,
                temperature_c: 35,
            })
        );
        assert_eq!(
            (r.protocol.as_deref(), r.solid_state()),
            (Some("NVMe"), Some(true))
        );
        // smartctl 7.3 (the exporter's samples, serials redacted).
        let s = sample("nvme-null-SAMSUNG_MZQL21T9HCJR-00A07-nvme0.json");
        assert_eq!(s.disk.serial, "REDACTED");
        assert_eq!(s.disk.nvme.map(|n| n.percentage_used), Some(3));
    }

    #[test]
    fn real_sas_disk() {
        let r = sample("scrutiny-smart-scsi2.json");
        assert_eq!(r.disk.model, "SEAGATE ST1200MM0088");
        assert_eq!(r.disk.device, "/dev/sdb");
        assert_eq!(r.disk.scsi_grown_defects, 0);
        assert_eq!(
            (r.disk.serial.as_str(), r.disk.passed),
            ("Z4028VRY0000C810BZXB", true)
        );
        assert_eq!(
            (r.rotation_rate, r.solid_state()),
            (Some(10500), Some(false))
        );
    }
}
