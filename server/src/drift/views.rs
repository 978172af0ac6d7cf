//! The observed side of drift: what the engine caches of a device's stored facts (an
//! `ObservedView`), read from the observed-state records, with package lists shared between
//! hosts that report the same one.

use muster::facts::Section;
use std::collections::HashMap;
use std::sync::{Arc, Weak};

use muster::pb;
use prost::Message;
use sha2::{Digest, Sha256};

use super::compare::{ObservedView, PackageSet};
use super::store_err;
use crate::model::ApiError;
use crate::observed;
use crate::store::Store;

/// Package lists by content hash, shared between devices.
pub(super) type PackageSets = HashMap<[u8; 32], Weak<PackageSet>>;

/// Sections drift compares without `expect` rules: os, packages, firmware, power, FRU.
pub(super) const RELEVANT: u32 = Section::Os.bit()
    | Section::Packages.bit()
    | Section::Firmware.bit()
    | Section::Power.bit()
    | Section::Fru.bit();

/// The package list of a stored packages section, shared with every device that reported
/// the same bytes.
pub(super) fn intern_packages(
    sets: &mut PackageSets,
    raw: &[u8],
) -> Result<Arc<PackageSet>, ApiError> {
    let hash: [u8; 32] = Sha256::digest(raw).into();
    if let Some(set) = sets.get(&hash).and_then(Weak::upgrade) {
        return Ok(set);
    }
    let mut f = pb::Facts::default();
    f.merge(raw)
        .map_err(|e| ApiError::Internal(format!("corrupt packages section: {e}")))?;
    let set: PackageSet = f
        .packages
        .map(|l| l.items.into_iter().map(|p| (p.name, p.version)).collect())
        .unwrap_or_default();
    let set = Arc::new(set);
    // Prune dead lists when the map has doubled since the last prune (amortised O(1)).
    if sets.len() >= 4096 && sets.len().is_power_of_two() {
        sets.retain(|_, w| w.strong_count() > 0);
    }
    sets.insert(hash, Arc::downgrade(&set));
    Ok(set)
}

/// Re-reads only the changed sections drift compares into a loaded view (no JSON).
pub(super) fn refresh_view(
    store: &dyn Store,
    sets: &mut PackageSets,
    id: &str,
    view: &mut ObservedView,
    sections: u32,
) -> Result<(), ApiError> {
    for n in [
        Section::Os,
        Section::Packages,
        Section::Firmware,
        Section::Power,
        Section::Fru,
    ] {
        if sections & n.bit() == 0 {
            continue;
        }
        let key = observed::section_key(id, n);
        let raw = store.aux_get(&key).map_err(store_err)?;
        if n == Section::Packages {
            view.packages = match raw {
                Some(v) => Some(intern_packages(sets, &v)?),
                None => None,
            };
            continue;
        }
        let mut f = pb::Facts::default();
        if let Some(v) = raw {
            f.merge(v.as_slice())
                .map_err(|e| ApiError::Internal(format!("corrupt facts section: {e}")))?;
        }
        let fresh = view_of(&f, None, false);
        match n {
            Section::Os => {
                view.os_release = fresh.os_release;
                view.kernel = fresh.kernel;
                view.timezone = fresh.timezone;
                view.dns_servers = fresh.dns_servers;
                view.ntp_servers = fresh.ntp_servers;
                view.sysctl = fresh.sysctl;
                view.package_format = fresh.package_format;
            }
            Section::Firmware => {
                view.firmware_bios = fresh.firmware_bios;
                view.firmware_bmc = fresh.firmware_bmc;
            }
            Section::Power => view.power = fresh.power,
            _ => {
                view.fru_serial = fresh.fru_serial;
                view.fru_product = fresh.fru_product;
            }
        }
    }
    Ok(())
}

/// Loads what drift compares of a device's observed facts (None: it never reported).
pub(super) fn load_view(
    store: &dyn Store,
    sets: &mut PackageSets,
    id: &str,
    with_json: bool,
) -> Result<Option<ObservedView>, ApiError> {
    let records = observed::scan_device(store, id).map_err(store_err)?;
    let sel = observed::sel_key(id);
    let meta = observed::meta_key(id);
    let packages_key = observed::section_key(id, Section::Packages);
    let mut facts = pb::Facts::default();
    let mut packages = None;
    let mut any = false;
    for (k, v) in records {
        if k == sel || k == meta {
            continue;
        }
        any = true;
        if k == packages_key {
            packages = Some(intern_packages(sets, &v)?);
            continue;
        }
        facts
            .merge(v.as_slice())
            .map_err(|e| ApiError::Internal(format!("corrupt facts section: {e}")))?;
    }
    if !any {
        return Ok(None);
    }
    Ok(Some(view_of(&facts, packages, with_json)))
}

/// The view drift compares, from stored facts (packages apart).
pub fn view_of(
    facts: &pb::Facts,
    packages: Option<Arc<PackageSet>>,
    with_json: bool,
) -> ObservedView {
    let os = facts.os.as_ref();
    let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let facts_json = with_json.then(|| {
        let mut v = serde_json::to_value(facts).unwrap_or(serde_json::Value::Null);
        if let serde_json::Value::Object(m) = &mut v {
            // Lists are wrapped in the wire form ({"items": [...]}): unwrap them for paths.
            for (_, val) in m.iter_mut() {
                if let serde_json::Value::Object(inner) = val
                    && inner.len() == 1
                    && let Some(items) = inner.get("items").cloned()
                {
                    *val = items;
                }
            }
            let external = facts
                .external_json
                .as_deref()
                .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
                .unwrap_or(serde_json::Value::Object(Default::default()));
            m.remove("externalJson");
            m.insert("external".into(), external);
        }
        Arc::new(v)
    });
    ObservedView {
        os_release: os.and_then(|o| nonempty(&o.release)),
        kernel: os.and_then(|o| nonempty(&o.kernel)),
        timezone: os.and_then(|o| nonempty(&o.timezone)),
        dns_servers: os
            .filter(|o| !o.dns_servers.is_empty())
            .map(|o| o.dns_servers.clone()),
        ntp_servers: os
            .filter(|o| !o.ntp_servers.is_empty())
            .map(|o| o.ntp_servers.clone()),
        sysctl: os
            .filter(|o| !o.sysctl.is_empty())
            .map(|o| o.sysctl.clone().into_iter().collect()),
        package_format: os.map(|o| o.package_format.clone()).unwrap_or_default(),
        packages,
        firmware_bios: facts.firmware.as_ref().and_then(|f| nonempty(&f.bios)),
        firmware_bmc: facts.firmware.as_ref().and_then(|f| nonempty(&f.bmc)),
        power: facts.power.and_then(|p| pb::PowerState::try_from(p).ok()),
        fru_serial: facts.fru.as_ref().and_then(|f| nonempty(&f.serial)),
        fru_product: facts.fru.as_ref().and_then(|f| nonempty(&f.product)),
        facts_json,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packages_section(version: &str) -> Vec<u8> {
        pb::Facts {
            packages: Some(pb::PackageList {
                items: vec![pb::InstalledPackage {
                    name: "openssl".into(),
                    version: version.into(),
                    arch: "amd64".into(),
                }],
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn equal_package_lists_are_one_allocation() {
        let mut sets = PackageSets::new();
        let a = intern_packages(&mut sets, &packages_section("3.0.1")).unwrap();
        let b = intern_packages(&mut sets, &packages_section("3.0.1")).unwrap();
        let c = intern_packages(&mut sets, &packages_section("3.0.2")).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(c.get("openssl").map(String::as_str), Some("3.0.2"));
        // A list nobody holds any more is decoded afresh.
        drop((a, b));
        let d = intern_packages(&mut sets, &packages_section("3.0.1")).unwrap();
        assert_eq!(d.get("openssl").map(String::as_str), Some("3.0.1"));
    }

    #[test]
    fn a_corrupt_packages_section_is_an_error_not_an_empty_list() {
        let mut sets = PackageSets::new();
        let e = intern_packages(&mut sets, &[0xff, 0xff, 0xff]).unwrap_err();
        assert!(e.to_string().contains("corrupt packages section"), "{e}");
    }

    #[test]
    fn views_keep_what_drift_compares_and_unwrap_lists_for_expect_paths() {
        let facts = pb::Facts {
            os: Some(pb::OsFacts {
                release: "Debian 12".into(),
                kernel: String::new(),
                dns_servers: vec!["10.0.0.1".into()],
                ..Default::default()
            }),
            firmware: Some(pb::Firmware {
                bios: "2.1".into(),
                ..Default::default()
            }),
            external_json: Some(r#"{"rack_unit": 7}"#.into()),
            ..Default::default()
        };
        let plain = view_of(&facts, None, false);
        assert_eq!(plain.os_release.as_deref(), Some("Debian 12"));
        // Empty strings read as "not reported".
        assert_eq!(plain.kernel, None);
        assert_eq!(plain.dns_servers, Some(vec!["10.0.0.1".to_string()]));
        assert_eq!(plain.firmware_bios.as_deref(), Some("2.1"));
        assert!(plain.facts_json.is_none());
        let json = view_of(&facts, None, true).facts_json.unwrap();
        assert_eq!(json["external"]["rack_unit"], 7);
        assert!(json.get("externalJson").is_none());
    }
}
