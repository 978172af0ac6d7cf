//! A device's enrollment records, found for its delete (`aux_keys::device_records`): its
//! enrollment state, its tokens (used or not: an unused one must not enroll a new device
//! created under the same name), its identities and any enrollment held for approval.

use super::records::{Record, decode, device_key};
use super::renew::Ident;
use crate::aux_keys::{AGENT_IDENTITY, AGENT_PENDING, AGENT_TOKEN, DeviceRecords};
use crate::store::{Store, StoreError};

/// Every enrollment record of device `name` (id `id`). The enrollment state is a guard:
/// every enrollment step writes it or the device, so a step racing the delete conflicts.
pub(crate) fn enrollment_records(
    store: &dyn Store,
    name: &str,
    id: &str,
) -> Result<DeviceRecords, StoreError> {
    let mut out = DeviceRecords::default();
    let dev = device_key(name);
    out.guards.push((dev.clone(), store.aux_get(&dev)?));
    out.keys.push(dev);
    for prefix in [AGENT_TOKEN, AGENT_IDENTITY, AGENT_PENDING] {
        for (k, v) in store.aux_scan(prefix.as_bytes())? {
            let ours = match decode(&v) {
                Ok(Record::Token(t)) => t.device == name,
                Ok(Record::Pending(p)) => p.device == name,
                Ok(r) => Ident::from_record(r).is_some_and(|(i, _, _)| {
                    // An identity of an earlier device of this name is as dead as this one's.
                    i.device == name || i.device_id == id
                }),
                Err(e) => {
                    // Unreadable is not ours to judge; it must not block the delete.
                    tracing::warn!(error = %e, "skipping an unreadable enrollment record");
                    false
                }
            };
            if ours {
                out.keys.push(k);
            }
        }
    }
    Ok(out)
}
