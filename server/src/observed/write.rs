//! The one facts-write path: what an agent report and an agentless ingest both do with a
//! `Facts` message. It decides the section records to write (a full report also removes the
//! sections it lacks), the change mask the drift engine gets, and what health is evaluated
//! from after the write; and it applies an assessment to a device body. Pure except for the
//! reads a delta needs (the stored sensors or SMART section it leaves out).

use muster::facts::{self, Section};
use muster::pb::{self, Health, resource::Resource as R};

use super::{load_section, section_key};
use crate::health::{self, Assessment, HealthInput, HealthMemory, SelSeen};
use crate::model::{ApiError, timestamp};
use crate::store::Store;

/// One facts report, cut into the records the store will hold after it.
#[derive(Debug, Clone)]
pub struct FactsWrite {
    device_id: String,
    /// Sections present in the report, encoded (a `Facts` holding only that field).
    written: Vec<(Section, Vec<u8>)>,
    /// Sections a full report lacks: their stored records go.
    cleared: Vec<Section>,
    /// Change mask for the drift engine (bit N: section N; every bit for a full report).
    pub changed: u32,
    /// Sensors and SMART as they are after this write: what health is evaluated from.
    pub sensors: Vec<pb::Sensor>,
    pub smart: Vec<pb::SmartDisk>,
}

/// Cuts `facts` for the device with id `device_id`. A `full` report replaces everything; a
/// delta keeps what it leaves out, so health reads the stored sensors and SMART sections it
/// lacks (only those: never the packages).
pub fn facts_write(
    store: &dyn Store,
    device_id: &str,
    facts: &pb::Facts,
    full: bool,
) -> Result<FactsWrite, ApiError> {
    let written = facts::split(facts);
    let cleared = if full {
        Section::ALL
            .into_iter()
            .filter(|s| !written.iter().any(|(w, _)| w == s))
            .collect()
    } else {
        Vec::new()
    };
    let changed = if full {
        crate::drift::Notifier::ALL
    } else {
        Section::mask(written.iter().map(|(s, _)| *s))
    };
    let stored = |s: Section| -> Result<pb::Facts, ApiError> {
        if full {
            return Ok(pb::Facts::default());
        }
        load_section(store, device_id, s)
    };
    let sensors = match &facts.sensors {
        Some(l) => l.items.clone(),
        None => stored(Section::Sensors)?
            .sensors
            .map(|l| l.items)
            .unwrap_or_default(),
    };
    let smart = match &facts.smart {
        Some(l) => l.items.clone(),
        None => stored(Section::Smart)?
            .smart
            .map(|l| l.items)
            .unwrap_or_default(),
    };
    Ok(FactsWrite {
        device_id: device_id.to_string(),
        written,
        cleared,
        changed,
        sensors,
        smart,
    })
}

impl FactsWrite {
    /// The sections the report carries, with the hash of each (what a facts hash is built on).
    pub fn hashes(&self) -> Vec<(Section, String)> {
        self.written
            .iter()
            .map(|(s, b)| (*s, facts::section_hash(b)))
            .collect()
    }

    /// Evaluates health as it is after this write; `memory` carries SMART history.
    pub fn assess(
        &self,
        sel: &[SelSeen],
        collectors: &[pb::CollectorStatus],
        memory: &mut HealthMemory,
        now_nanos: i64,
    ) -> Assessment {
        health::evaluate(
            HealthInput {
                sensors: &self.sensors,
                sel,
                smart: &self.smart,
                collectors,
                now_nanos,
            },
            memory,
        )
    }

    /// The auxiliary puts: removals of what a full report lacks, then the sections.
    pub fn into_puts(self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let id = self.device_id;
        let mut puts = Vec::with_capacity(self.cleared.len() + self.written.len() + 2);
        for s in self.cleared {
            puts.push((section_key(&id, s), None));
        }
        for (s, bytes) in self.written {
            puts.push((section_key(&id, s), Some(bytes)));
        }
        puts
    }
}

/// Writes an assessment into a device body's status (health, reasons, since `now`); returns
/// the status it had before, for the change's reason.
pub fn apply_health(body: &mut pb::Resource, a: &Assessment, now: i64) -> pb::ObservedState {
    let Some(R::Device(d)) = body.resource.as_mut() else {
        return pb::ObservedState::default();
    };
    let st = d.status.get_or_insert_with(Default::default);
    let old = st.clone();
    st.health = a.health as i32;
    st.health_reasons = a.reasons.clone();
    st.health_since = Some(timestamp(now));
    old
}

/// "health OK -> CRITICAL (smart.failed)": the audit reason of a health change.
pub fn health_change_reason(old: &pb::ObservedState, new: &Assessment) -> String {
    let name = |h: i32| {
        Health::try_from(h)
            .map(|h| h.as_str_name())
            .unwrap_or("HEALTH_UNSPECIFIED")
    };
    let why = new
        .reasons
        .iter()
        .map(|r| r.code.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "health {} -> {}{}",
        name(old.health),
        name(new.health as i32),
        if why.is_empty() {
            String::new()
        } else {
            format!(" ({why})")
        }
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn store() -> (tempfile::TempDir, crate::store::SledStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::store::SledStore::open(dir.path(), &Default::default()).unwrap();
        (dir, s)
    }

    fn failed_disk() -> pb::SmartDisk {
        pb::SmartDisk {
            serial: "S1".into(),
            passed: false,
            ..Default::default()
        }
    }

    #[test]
    fn a_full_report_clears_what_it_lacks_and_marks_everything() {
        let (_d, s) = store();
        let f = pb::Facts {
            memory_bytes: Some(1),
            packages: Some(pb::PackageList::default()),
            ..Default::default()
        };
        let w = facts_write(&s, "d1", &f, true).unwrap();
        assert_eq!(w.changed, u32::MAX);
        assert_eq!(
            w.hashes().iter().map(|h| h.0).collect::<Vec<_>>(),
            [Section::Memory, Section::Packages]
        );
        let puts = w.into_puts();
        assert_eq!(puts.len(), Section::ALL.len());
        let cleared: Vec<String> = puts
            .iter()
            .filter(|p| p.1.is_none())
            .map(|p| String::from_utf8(p.0.clone()).unwrap())
            .collect();
        assert_eq!(cleared.len(), 11);
        assert!(cleared.contains(&"ob/d1/f09".to_string()), "{cleared:?}");
        assert!(cleared.contains(&"ox/d1/f12".to_string()), "{cleared:?}");
        let kept: Vec<&[u8]> = puts
            .iter()
            .filter(|p| p.1.is_some())
            .map(|p| p.0.as_slice())
            .collect();
        assert_eq!(kept, [b"ob/d1/f03".as_slice(), b"ox/d1/f06".as_slice()]);
    }

    #[tokio::test]
    async fn a_delta_marks_its_sections_and_health_reads_the_stored_smart() {
        let (_d, s) = store();
        // A stored SMART section saying the disk failed.
        let stored = pb::Facts {
            smart: Some(pb::SmartList {
                items: vec![failed_disk()],
            }),
            ..Default::default()
        };
        let first = facts_write(&s, "d1", &stored, true).unwrap();
        crate::store::commit_aux_durably(
            &s,
            crate::store::AuxWrite {
                guards: Vec::new(),
                puts: first.into_puts(),
                mutation: None,
            },
        )
        .await
        .unwrap();
        // A delta with only the uptime-ish OS section: SMART comes from the store.
        let delta = pb::Facts {
            os: Some(pb::OsFacts::default()),
            ..Default::default()
        };
        let w = facts_write(&s, "d1", &delta, false).unwrap();
        assert_eq!(w.changed, Section::Os.bit());
        assert_eq!(w.smart, vec![failed_disk()]);
        let a = w.assess(&[], &[], &mut HealthMemory::default(), 0);
        assert_eq!(a.health, Health::Critical, "{a:?}");
        assert!(
            w.into_puts().iter().all(|p| p.1.is_some()),
            "a delta clears nothing"
        );
    }

    #[test]
    fn health_lands_in_the_body_with_a_reason_naming_the_change() {
        let mut body = pb::Resource {
            resource: Some(R::Device(pb::Device::default())),
        };
        let a = Assessment {
            health: Health::Critical,
            reasons: vec![pb::HealthReason {
                code: "smart.failed".into(),
                ..Default::default()
            }],
        };
        let old = apply_health(&mut body, &a, 5_000_000_000);
        assert_eq!(
            health_change_reason(&old, &a),
            "health HEALTH_UNSPECIFIED -> CRITICAL (smart.failed)"
        );
        let Some(R::Device(d)) = body.resource else {
            panic!()
        };
        let st = d.status.unwrap();
        assert_eq!(st.health, Health::Critical as i32);
        assert_eq!(st.health_since.unwrap().seconds, 5);
    }
}
