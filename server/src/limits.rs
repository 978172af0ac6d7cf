//! Caps on what one caller may hold open or run at once: Watch streams per principal, and
//! concurrent audit verifies. A permit is a guard: the slot frees when it is dropped (the
//! stream's task ended because the client went away, or the verify finished).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::refusal_limit::RefusalPolicy;

/// Default cap of concurrent Watch streams per principal: a dashboard or controller needs a
/// handful; 32 leaves room for many without letting one token hold thousands of tasks.
pub const DEFAULT_WATCHES_PER_PRINCIPAL: u32 = 32;
/// Audit verifies running at once (each may read the whole log when it is a full one).
pub const MAX_CONCURRENT_VERIFIES: u32 = 2;

/// The limits the inventory enforces, from the server config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub watches_per_principal: u32,
    pub refusals: RefusalPolicy,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            watches_per_principal: DEFAULT_WATCHES_PER_PRINCIPAL,
            refusals: RefusalPolicy::default(),
        }
    }
}

/// Counts held slots per holder against one cap. Only holders with a slot are in the map, so
/// it is bounded by the slots held.
#[derive(Debug)]
pub struct Slots {
    max: u32,
    held: Mutex<HashMap<String, u32>>,
}

/// One held slot; released on drop.
#[derive(Debug)]
pub struct Permit {
    slots: Arc<Slots>,
    holder: String,
}

impl Slots {
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            max,
            held: Mutex::new(HashMap::new()),
        })
    }

    pub fn max(&self) -> u32 {
        self.max
    }

    /// A slot for `holder`, or None when it already holds the maximum.
    pub fn try_acquire(self: &Arc<Self>, holder: &str) -> Option<Permit> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(holder.to_string()).or_insert(0);
        if *n >= self.max {
            if *n == 0 {
                held.remove(holder);
            }
            return None;
        }
        *n += 1;
        Some(Permit {
            slots: Arc::clone(self),
            holder: holder.to_string(),
        })
    }

    /// Slots `holder` holds now.
    pub fn held_by(&self, holder: &str) -> u32 {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(holder).copied().unwrap_or(0)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.holder) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.holder);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cap_per_holder_and_free_on_drop() {
        let s = Slots::new(2);
        let a = s.try_acquire("vera");
        let b = s.try_acquire("vera");
        assert!(a.is_some() && b.is_some());
        assert!(s.try_acquire("vera").is_none());
        assert!(s.try_acquire("oscar").is_some(), "per holder");
        drop(a);
        assert_eq!(s.held_by("vera"), 1);
        assert!(s.try_acquire("vera").is_some());
        drop(b);
        assert_eq!(s.held_by("oscar"), 0, "a dropped permit frees its slot");
    }
}
