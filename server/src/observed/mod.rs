//! Observed state as stored: a device's facts live in auxiliary store records, one per section
//! of `muster.v1.Facts`, so a delta report rewrites only the sections that changed (1,500
//! packages are written once, not every minute) and never touches the event log. The device's
//! body carries only what the server computed from them (health and its reasons), which is
//! what Watch and the audit trail see change.
//!
//! Keys (under the store's auxiliary prefix): `om/<device id>` the report metadata (sequence,
//! boot id, facts hash, collector status, health memory; a prefix of its own, so start-up reads
//! every device's metadata without touching its facts), `ob/<device id>/f<N>` section N of
//! `Facts` (encoded as a `Facts` holding only that field, so sections decode by merging),
//! `ox/<device id>/f<N>` the same for the bulky sections (packages, external facts, VMs), and
//! `ob/<device id>/sel` the SEL entries the server keeps.
//!
//! Why bulky sections live apart: sled splits a leaf only past 16 keys and rewrites the whole
//! leaf when it consolidates one. With a device's 68 KB package list in the same leaf as its
//! sensors, every delta report (sensors, SMART, uptime) made sled rewrite ~70-140 KB leaves (as
//! separate blob files past 128 KB): measured, delta ingest went from ~3,000 to ~4,800
//! reports/s when they moved out. The bulky ones change rarely, so their leaves stay still.
//!
//! `write.rs` is the one path that turns a facts report (an agent's, or agentless facts from
//! `ingest`) into these records and into what health needs. This layer calls the store and
//! the pure `health` rules; it knows nothing of gRPC, agents or the bridge.

use muster::facts::Section;
use muster::pb;
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::aux_keys::{OBSERVED_BULKY, OBSERVED_META, OBSERVED_SMALL};
use crate::health::{HealthMemory, SelSeen};
use crate::model::{ApiError, timestamp};
use crate::store::{AuxRecord, Store, StoreError};

mod write;
pub use write::{FactsWrite, apply_health, facts_write, health_change_reason};

/// How many SEL entries the server keeps per device (oldest dropped first).
pub const MAX_SEL_ENTRIES: usize = 512;

/// Prefix of a device's small records (sections that change often, and its SEL).
fn prefix(device_id: &str) -> Vec<u8> {
    format!("{OBSERVED_SMALL}{device_id}/").into_bytes()
}

/// Prefix of a device's bulky sections.
fn bulky_prefix(device_id: &str) -> Vec<u8> {
    format!("{OBSERVED_BULKY}{device_id}/").into_bytes()
}

/// Key of the report metadata.
pub fn meta_key(device_id: &str) -> Vec<u8> {
    format!("{}{device_id}", META_PREFIX).into_bytes()
}

/// Prefix of every device's report metadata.
pub const META_PREFIX: &str = OBSERVED_META;

/// Key of one facts section. Bulky sections (`Section::bulky`: packages, external facts,
/// VMs) live under `ox/`, away from the small ones every delta report rewrites.
pub fn section_key(device_id: &str, section: Section) -> Vec<u8> {
    let area = if section.bulky() {
        OBSERVED_BULKY
    } else {
        OBSERVED_SMALL
    };
    format!("{area}{device_id}/f{:02}", section.number()).into_bytes()
}

/// Every facts and SEL record of a device (not its metadata), small ones first.
pub fn scan_device(store: &dyn Store, device_id: &str) -> Result<Vec<AuxRecord>, StoreError> {
    let mut records = store.aux_scan(&prefix(device_id))?;
    records.extend(store.aux_scan(&bulky_prefix(device_id))?);
    Ok(records)
}

/// Key of the observed layer's own layout version.
const LAYOUT_KEY: &[u8] = crate::aux_keys::OBSERVED_LAYOUT.as_bytes();
/// 2: bulky sections under `ox/` (layout 1 kept every section under `ob/`).
const LAYOUT: u64 = 2;
/// Records moved per batch when upgrading (each batch is atomic; a restart resumes).
const UPGRADE_BATCH: usize = 256;

/// Brings records written by an older musterd to the current key layout; returns how many
/// records moved. Runs at start-up before anything reads facts; cheap once done (one read).
pub async fn upgrade_layout(store: &dyn Store) -> Result<usize, StoreError> {
    let current = store.aux_get(LAYOUT_KEY)?;
    if current.as_deref() == Some(LAYOUT.to_be_bytes().as_slice()) {
        return Ok(0);
    }
    let mut moved = 0;
    let mut puts = Vec::new();
    for (key, value) in store.aux_scan(OBSERVED_SMALL.as_bytes())? {
        let Some(target) = bulky_key_for(&key) else {
            continue;
        };
        puts.push((key, None));
        puts.push((target, Some(value)));
        if puts.len() >= 2 * UPGRADE_BATCH {
            moved += puts.len() / 2;
            commit_puts(store, std::mem::take(&mut puts)).await?;
        }
    }
    moved += puts.len() / 2;
    puts.push((LAYOUT_KEY.to_vec(), Some(LAYOUT.to_be_bytes().to_vec())));
    commit_puts(store, puts).await?;
    Ok(moved)
}

/// Writes `puts` alone, durably.
async fn commit_puts(
    store: &dyn Store,
    puts: Vec<(Vec<u8>, Option<Vec<u8>>)>,
) -> Result<(), StoreError> {
    let w = crate::store::AuxWrite {
        guards: Vec::new(),
        puts,
        mutation: None,
    };
    crate::store::commit_aux_durably(store, w).await.map(|_| ())
}

/// The `ox/` key a layout-1 `ob/<id>/f<N>` key of a bulky section moves to.
fn bulky_key_for(key: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(key).ok()?;
    let (device, section) = text.strip_prefix(OBSERVED_SMALL)?.rsplit_once("/f")?;
    let s = Section::from_number(section.parse().ok()?)?;
    s.bulky().then(|| section_key(device, s))
}

/// Key of the kept SEL entries.
pub fn sel_key(device_id: &str) -> Vec<u8> {
    format!("{OBSERVED_SMALL}{device_id}/sel").into_bytes()
}

/// Report metadata of one device, versioned like every stored record.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum MetaRecord {
    V1(ReportMeta),
    /// Facts from another origin than an agent (e.g. `ansible`): the same metadata and the
    /// origin. Agent reports keep writing `V1`, byte for byte what they wrote before.
    V2(ReportMeta, String),
}

/// What the server keeps about a device's reporting.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportMeta {
    /// The device's name (names never change; this record is keyed by id).
    pub device: String,
    /// The identity (certificate fingerprint) that reported; a new identity starts a new
    /// sequence.
    pub identity: String,
    pub boot_id: String,
    pub seq: u64,
    pub facts_hash: String,
    pub last_report_nanos: i64,
    pub agent_version: String,
    /// `pb::CollectorStatus` messages, encoded.
    pub collectors: Vec<Vec<u8>>,
    pub memory: HealthMemory,
    pub interval_ms: u64,
    pub health_since_nanos: i64,
    /// The health last written to the device body and its reasons (`pb::HealthReason`,
    /// encoded): a report compares against these instead of reading the device.
    pub health: i32,
    pub reasons: Vec<Vec<u8>>,
    /// Where the facts came from when not from an agent ("ansible"); empty for agents. Stored
    /// beside the struct (`MetaRecord::V2`), so records written before it decode unchanged.
    #[serde(skip)]
    pub origin: String,
}

impl ReportMeta {
    /// Encodes for the store.
    pub fn encode(&self) -> Result<Vec<u8>, ApiError> {
        let record = if self.origin.is_empty() {
            MetaRecord::V1(self.clone())
        } else {
            MetaRecord::V2(self.clone(), self.origin.clone())
        };
        postcard::to_stdvec(&record)
            .map_err(|e| ApiError::Internal(format!("encoding report metadata: {e}")))
    }

    /// Decodes a stored record.
    pub fn decode(bytes: &[u8]) -> Result<Self, ApiError> {
        match postcard::from_bytes(bytes) {
            Ok(MetaRecord::V1(m)) => Ok(m),
            Ok(MetaRecord::V2(m, origin)) => Ok(Self { origin, ..m }),
            Err(e) => Err(ApiError::Internal(format!(
                "corrupt report metadata record: {e}"
            ))),
        }
    }

    /// The health reasons last written, decoded.
    pub fn reasons(&self) -> Vec<pb::HealthReason> {
        self.reasons
            .iter()
            .filter_map(|b| pb::HealthReason::decode(b.as_slice()).ok())
            .collect()
    }

    /// Records an assessment as the one the device body now holds.
    pub fn set_health(&mut self, a: &crate::health::Assessment) {
        self.health = a.health as i32;
        self.reasons = a.reasons.iter().map(Message::encode_to_vec).collect();
    }

    /// The collector statuses, decoded.
    pub fn collectors(&self) -> Vec<pb::CollectorStatus> {
        self.collectors
            .iter()
            .filter_map(|b| pb::CollectorStatus::decode(b.as_slice()).ok())
            .collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum SelRecord {
    V1(Vec<SelItem>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SelItem {
    received_nanos: i64,
    #[serde(with = "serde_bytes")]
    entry: Vec<u8>,
}

/// Encodes the kept SEL entries.
pub fn encode_sel(sel: &[SelSeen]) -> Result<Vec<u8>, ApiError> {
    let items = sel
        .iter()
        .map(|s| SelItem {
            received_nanos: s.received_nanos,
            entry: s.entry.encode_to_vec(),
        })
        .collect();
    postcard::to_stdvec(&SelRecord::V1(items))
        .map_err(|e| ApiError::Internal(format!("encoding SEL: {e}")))
}

/// Decodes the kept SEL entries.
pub fn decode_sel(bytes: &[u8]) -> Result<Vec<SelSeen>, ApiError> {
    let SelRecord::V1(items) = postcard::from_bytes(bytes)
        .map_err(|e| ApiError::Internal(format!("corrupt SEL record: {e}")))?;
    items
        .into_iter()
        .map(|i| {
            Ok(SelSeen {
                received_nanos: i.received_nanos,
                entry: pb::SelEntry::decode(i.entry.as_slice())
                    .map_err(|e| ApiError::Internal(format!("corrupt SEL entry: {e}")))?,
            })
        })
        .collect()
}

/// Everything stored about one device's observed state.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    pub meta: Option<ReportMeta>,
    pub facts: pb::Facts,
    pub sel: Vec<SelSeen>,
}

/// A store failure reading the observed records of the device with id `device_id`.
fn store_error(device_id: &str, e: StoreError) -> ApiError {
    crate::store_map::api_error("device", device_id, e)
}

/// Reads the metadata record only.
pub fn load_meta(
    store: &dyn Store,
    device_id: &str,
) -> Result<(Option<Vec<u8>>, Option<ReportMeta>), ApiError> {
    let raw = store
        .aux_get(&meta_key(device_id))
        .map_err(|e| store_error(device_id, e))?;
    let meta = raw.as_deref().map(ReportMeta::decode).transpose()?;
    Ok((raw, meta))
}

/// Reads everything stored for a device.
pub fn load(store: &dyn Store, device_id: &str) -> Result<Stored, ApiError> {
    let mut out = Stored {
        meta: load_meta(store, device_id)?.1,
        ..Stored::default()
    };
    let sel = sel_key(device_id);
    for (k, v) in scan_device(store, device_id).map_err(|e| store_error(device_id, e))? {
        if k == sel {
            out.sel = decode_sel(&v)?;
        } else {
            out.facts
                .merge(v.as_slice())
                .map_err(|e| ApiError::Internal(format!("corrupt facts section: {e}")))?;
        }
    }
    Ok(out)
}

/// Reads one facts section (empty `Facts` when the device has none stored).
pub fn load_section(
    store: &dyn Store,
    device_id: &str,
    section: Section,
) -> Result<pb::Facts, ApiError> {
    let mut f = pb::Facts::default();
    if let Some(v) = store
        .aux_get(&section_key(device_id, section))
        .map_err(|e| store_error(device_id, e))?
    {
        f.merge(v.as_slice())
            .map_err(|e| ApiError::Internal(format!("corrupt facts section: {e}")))?;
    }
    Ok(f)
}

/// External facts JSON as a protobuf Struct (empty when absent or not an object).
fn external_struct(json: Option<&str>) -> Option<pbjson_types::Struct> {
    serde_json::from_str::<pbjson_types::Struct>(json?).ok()
}

/// Fills the observed parts of `status` (its health stays as the body has it).
pub fn fill_status(status: &mut pb::ObservedState, stored: &Stored, with_facts: bool) {
    if let Some(m) = &stored.meta {
        fill_meta(status, m);
    }
    if !with_facts {
        return;
    }
    let f = &stored.facts;
    status.os = f.os.clone();
    status.cpu = f.cpu.clone();
    status.memory_bytes = f.memory_bytes.unwrap_or_default();
    status.nics = f.nics.clone().map(|l| l.items).unwrap_or_default();
    status.disks = f.disks.clone().map(|l| l.items).unwrap_or_default();
    status.packages = f.packages.clone().map(|l| l.items).unwrap_or_default();
    status.firmware = f.firmware.clone();
    status.power = f.power.unwrap_or_default();
    status.sensors = f.sensors.clone().map(|l| l.items).unwrap_or_default();
    status.fru = f.fru.clone();
    status.smart = f.smart.clone().map(|l| l.items).unwrap_or_default();
    status.external_facts = external_struct(f.external_json.as_deref());
    status.vms = f.vms.clone().map(|l| l.items).unwrap_or_default();
    // Latest first: what an operator reads first is what just happened.
    status.sel = stored.sel.iter().rev().map(|s| s.entry.clone()).collect();
}

/// Fills the report metadata parts of `status`.
pub fn fill_meta(status: &mut pb::ObservedState, m: &ReportMeta) {
    status.last_report_at = Some(timestamp(m.last_report_nanos));
    status.agent_version = m.agent_version.clone();
    status.boot_id = m.boot_id.clone();
    status.report_seq = m.seq;
    status.facts_hash = m.facts_hash.clone();
    status.collectors = m.collectors();
    status.origin = if m.origin.is_empty() {
        "agent".into()
    } else {
        m.origin.clone()
    };
    if m.interval_ms > 0 {
        status.report_interval = Some(pbjson_types::Duration {
            seconds: i64::try_from(m.interval_ms / 1000).unwrap_or(i64::MAX),
            nanos: i32::try_from((m.interval_ms % 1000) * 1_000_000).unwrap_or(0),
        });
    }
    if m.health_since_nanos > 0 {
        status.health_since = Some(timestamp(m.health_since_nanos));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sections_merge_back_into_the_facts() {
        let f = pb::Facts {
            os: Some(pb::OsFacts {
                hostname: "h".into(),
                ..Default::default()
            }),
            memory_bytes: Some(42),
            packages: Some(pb::PackageList {
                items: vec![pb::InstalledPackage {
                    name: "bash".into(),
                    version: "5.2".into(),
                    arch: "amd64".into(),
                }],
            }),
            power: Some(pb::PowerState::PowerOn as i32),
            ..Default::default()
        };
        let parts = muster::facts::split(&f);
        assert_eq!(
            parts.iter().map(|p| p.0.number()).collect::<Vec<_>>(),
            [1, 3, 6, 8]
        );
        let mut back = pb::Facts::default();
        for (_, b) in &parts {
            back.merge(b.as_slice()).unwrap();
        }
        assert_eq!(back, f);
    }

    #[test]
    fn meta_and_sel_round_trip() {
        let m = ReportMeta {
            seq: 7,
            facts_hash: "abc".into(),
            ..Default::default()
        };
        assert_eq!(ReportMeta::decode(&m.encode().unwrap()).unwrap(), m);
        let other = ReportMeta {
            origin: "ansible".into(),
            ..m.clone()
        };
        assert_eq!(ReportMeta::decode(&other.encode().unwrap()).unwrap(), other);
        let sel = vec![SelSeen {
            received_nanos: 5,
            entry: pb::SelEntry {
                record_id: 3,
                ..Default::default()
            },
        }];
        assert_eq!(decode_sel(&encode_sel(&sel).unwrap()).unwrap(), sel);
        assert!(ReportMeta::decode(b"\xff\xff").is_err());
    }

    /// A store written with layout 1 (every section under `ob/`) reads the same after the
    /// upgrade, its bulky sections now under `ox/`; a second start moves nothing.
    #[tokio::test]
    async fn upgrade_moves_bulky_sections_and_keeps_the_facts() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SledStore::open(dir.path(), &Default::default()).unwrap();
        let facts = pb::Facts {
            os: Some(pb::OsFacts {
                hostname: "h".into(),
                ..Default::default()
            }),
            packages: Some(pb::PackageList {
                items: vec![pb::InstalledPackage {
                    name: "bash".into(),
                    version: "5.2".into(),
                    arch: "amd64".into(),
                }],
            }),
            external_json: Some("{\"rack_u\":4}".into()),
            ..Default::default()
        };
        let layout_1 = muster::facts::split(&facts)
            .into_iter()
            .map(|(s, b)| (format!("ob/dev1/f{:02}", s.number()).into_bytes(), Some(b)))
            .collect();
        commit_puts(&store, layout_1).await.unwrap();
        // An unrelated record that merely looks similar stays where it is.
        commit_puts(
            &store,
            vec![(b"ob/dev1/sel".to_vec(), Some(encode_sel(&[]).unwrap()))],
        )
        .await
        .unwrap();

        assert_eq!(upgrade_layout(&store).await.unwrap(), 2);
        let keys: Vec<String> = store
            .aux_scan(b"o")
            .unwrap()
            .into_iter()
            .map(|(k, _)| String::from_utf8(k).unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "ob/dev1/f01",
                "ob/dev1/sel",
                "ol",
                "ox/dev1/f06",
                "ox/dev1/f12"
            ]
        );
        assert_eq!(load(&store, "dev1").unwrap().facts, facts);
        assert_eq!(upgrade_layout(&store).await.unwrap(), 0);
    }
}
