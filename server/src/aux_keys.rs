//! Every auxiliary key prefix (records outside the event log, under the store's `a` range),
//! the module that owns it and what it is keyed by, in one table: so two owners can never
//! pick overlapping prefixes, and a device's delete knows everything it must remove
//! (`device_records`). Owners build their keys from these constants.
//!
//! May call: `store` (scans), and each owner's decoding of its per-device records.

use crate::store::{Store, StoreError};

/// Observed facts: a device's small sections and kept SEL entries (`observed`).
pub const OBSERVED_SMALL: &str = "ob/";
/// Observed facts: a device's bulky sections (`observed`).
pub const OBSERVED_BULKY: &str = "ox/";
/// Report metadata of a device (`observed`).
pub const OBSERVED_META: &str = "om/";
/// The observed layer's key layout version (`observed`).
pub const OBSERVED_LAYOUT: &str = "ol";
/// Per-device drift memory (`drift_engine`).
pub const DRIFT_MEMORY: &str = "dr/";
/// The event-log revision the drift engine has written out (`drift_engine`).
pub const DRIFT_FOLLOWED: &str = "dr-followed";
/// Enrollment tokens, by hash (`agents`).
pub const AGENT_TOKEN: &str = "ag/tok/";
/// Agent identities, by certificate fingerprint (`agents`, read by `keys`).
pub const AGENT_IDENTITY: &str = "ag/id/";
/// A device's enrollment state, by device name (`agents`).
pub const AGENT_DEVICE: &str = "ag/dev/";
/// Enrollments held for approval, by hash of the pending id (`agents`).
pub const AGENT_PENDING: &str = "ag/pend/";
/// Fingerprints of the key files the store was set up with (`keys`).
pub const KEY_FILES: &str = "km";
/// Campaign records: campaign, hosts, step output, by campaign id (`campaigns`).
pub const CAMPAIGN_RECORDS: &str = "cp/";
/// The campaign layer of a device's desired state, `<device id>/<campaign id>` (`campaigns`
/// writes it, the drift engine reads it; see `drift::overlays`).
pub const CAMPAIGN_OVERLAY: &str = "co/";

/// What an auxiliary key is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyed {
    /// `<prefix><device id>...`: removed with the device.
    DeviceId,
    /// `<prefix><device name>`: removed with the device.
    DeviceName,
    /// Per-device records keyed otherwise (hash, fingerprint): the owner finds a device's.
    OwnerFinds,
    /// One record.
    Single,
}

/// One registered prefix.
#[derive(Debug, Clone, Copy)]
pub struct AuxPrefix {
    pub prefix: &'static str,
    pub owner: &'static str,
    pub keyed: Keyed,
}

/// Every auxiliary prefix in use.
pub const REGISTRY: &[AuxPrefix] = &[
    AuxPrefix {
        prefix: OBSERVED_SMALL,
        owner: "observed",
        keyed: Keyed::DeviceId,
    },
    AuxPrefix {
        prefix: OBSERVED_BULKY,
        owner: "observed",
        keyed: Keyed::DeviceId,
    },
    AuxPrefix {
        prefix: OBSERVED_META,
        owner: "observed",
        keyed: Keyed::DeviceId,
    },
    AuxPrefix {
        prefix: OBSERVED_LAYOUT,
        owner: "observed",
        keyed: Keyed::Single,
    },
    AuxPrefix {
        prefix: DRIFT_MEMORY,
        owner: "drift_engine",
        keyed: Keyed::DeviceId,
    },
    AuxPrefix {
        prefix: DRIFT_FOLLOWED,
        owner: "drift_engine",
        keyed: Keyed::Single,
    },
    AuxPrefix {
        prefix: AGENT_TOKEN,
        owner: "agents",
        keyed: Keyed::OwnerFinds,
    },
    AuxPrefix {
        prefix: AGENT_IDENTITY,
        owner: "agents",
        keyed: Keyed::OwnerFinds,
    },
    AuxPrefix {
        prefix: AGENT_DEVICE,
        owner: "agents",
        keyed: Keyed::DeviceName,
    },
    AuxPrefix {
        prefix: AGENT_PENDING,
        owner: "agents",
        keyed: Keyed::OwnerFinds,
    },
    AuxPrefix {
        prefix: KEY_FILES,
        owner: "keys",
        keyed: Keyed::Single,
    },
    AuxPrefix {
        prefix: CAMPAIGN_RECORDS,
        owner: "campaigns",
        keyed: Keyed::OwnerFinds,
    },
    AuxPrefix {
        prefix: CAMPAIGN_OVERLAY,
        owner: "campaigns",
        keyed: Keyed::DeviceId,
    },
];

/// A key under `prefix`.
pub fn key(prefix: &str, rest: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + rest.len());
    k.extend_from_slice(prefix.as_bytes());
    k.extend_from_slice(rest.as_bytes());
    k
}

/// Everything the auxiliary records hold about one device, to remove with it.
#[derive(Debug, Default)]
pub struct DeviceRecords {
    /// Keys to delete.
    pub keys: Vec<Vec<u8>>,
    /// Records whose value was read to find `keys`: each must still hold it when the delete
    /// is applied, so a report or enrollment step racing the delete makes it retry instead of
    /// leaving a record behind (reports and enrollment steps guard these same keys).
    pub guards: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// Every auxiliary record of device `name` (id `id`): observed facts, report metadata,
/// drift memory, campaign layers, enrollment tokens, identities, held enrollments and its
/// enrollment state.
pub fn device_records(
    store: &dyn Store,
    name: &str,
    id: &str,
) -> Result<DeviceRecords, StoreError> {
    let mut out = DeviceRecords::default();
    let meta = crate::observed::meta_key(id);
    out.guards.push((meta.clone(), store.aux_get(&meta)?));
    out.keys.push(meta);
    out.keys.extend(
        crate::observed::scan_device(store, id)?
            .into_iter()
            .map(|(k, _)| k),
    );
    out.keys.push(key(DRIFT_MEMORY, id));
    out.keys.extend(
        store
            .aux_scan(&crate::drift::overlays::device_prefix(id))?
            .into_iter()
            .map(|(k, _)| k),
    );
    let enrollment = crate::agents::enrollment_records(store, name, id)?;
    out.keys.extend(enrollment.keys);
    out.guards.extend(enrollment.guards);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_prefix_overlaps_another() {
        for a in REGISTRY {
            for b in REGISTRY {
                if a.prefix != b.prefix {
                    assert!(
                        !b.prefix.starts_with(a.prefix),
                        "{} ({}) is a prefix of {} ({})",
                        a.prefix,
                        a.owner,
                        b.prefix,
                        b.owner
                    );
                }
            }
        }
    }

    #[test]
    fn per_device_prefixes_end_with_a_separator() {
        // A scan of one kind of per-device record never reads another kind.
        for p in REGISTRY.iter().filter(|p| p.keyed != Keyed::Single) {
            assert!(p.prefix.ends_with('/'), "{}", p.prefix);
        }
    }
}
