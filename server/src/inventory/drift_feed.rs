//! The drift engine's mailbox, kept inside the inventory so that agent reports and ingested
//! facts can mark a device without knowing the engine: which devices' observed facts changed,
//! coalesced, and a notification. Behaviour unchanged from when it lived in `inventory.rs`;
//! the drift engine's own event channel is to replace it.

use super::Inventory;

/// Devices whose observed facts changed (agent reports, ingested facts), coalesced: a device
/// reporting many times before the drift engine wakes is recomputed once.
#[derive(Debug, Default)]
pub struct ObservedSignal {
    /// Device id → bit set of the facts sections that changed (bit n = section n).
    dirty: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    notify: tokio::sync::Notify,
    /// Bumped on every signal; the engine reports which value it has caught up with.
    requested: std::sync::atomic::AtomicU64,
}

impl ObservedSignal {
    /// Every section: the whole of a device's observed state may have changed.
    pub const ALL: u32 = u32::MAX;

    /// Marks sections of a device's observed facts as changed (`ALL` when unsure).
    pub fn changed(&self, device_id: &str, sections: u32) {
        *self
            .dirty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(device_id.to_string())
            .or_insert(0) |= sections;
        self.requested
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_one();
    }

    /// The devices marked since the last call, and the signal count they cover.
    pub fn take(&self) -> (std::collections::HashMap<String, u32>, u64) {
        let mut d = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        let upto = self.requested.load(std::sync::atomic::Ordering::SeqCst);
        (std::mem::take(&mut *d), upto)
    }

    /// How many signals were given so far.
    pub fn requested(&self) -> u64 {
        self.requested.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves when a device is marked (or was marked since the last wait).
    pub async fn notified(&self) {
        self.notify.notified().await;
    }
}

impl Inventory {
    /// Where changes of observed state are signalled (to the drift engine).
    pub fn observed_signal(&self) -> &ObservedSignal {
        &self.observed
    }
}
