//! Rate limit for the refused-attempt log, so a flood of bad requests cannot push older
//! refusals out of it (the log keeps the newest 100,000).
//!
//! Per source (the peer's IP address for unauthenticated attempts, the principal for
//! authenticated ones) and per window, the first `per_window` refusals are recorded one by
//! one; the rest are only counted, and one summary record per source and window says how many
//! there were and what they were ("1,234 refused attempts from 127.0.0.1 in 10 s ..."). The
//! limiter is a map under one short lock and never waits for I/O; the map is bounded (sources
//! past [`MAX_SOURCES`] share one bucket) and swept of ended windows. Pure: the caller passes
//! the time.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sources tracked at once; more share the bucket [`OVERFLOW`].
pub const MAX_SOURCES: usize = 4096;
/// The shared bucket's name.
pub const OVERFLOW: &str = "other peers";
/// Distinct (principal, verb) pairs a summary names; the rest are counted as "other".
const MAX_MIX: usize = 8;

/// How many refusals a source may have recorded one by one per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusalPolicy {
    pub per_window: u32,
    pub window: Duration,
}

impl Default for RefusalPolicy {
    fn default() -> Self {
        Self {
            per_window: 32,
            window: Duration::from_secs(10),
        }
    }
}

/// What to do with one refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Record it.
    Record,
    /// Only counted; it will appear in the window's summary.
    Counted,
}

/// A window's flood, to be written as one refusal record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The source, e.g. `peer 127.0.0.1` or `principal oscar`.
    pub source: String,
    /// Refusals in the window, recorded and counted.
    pub total: u64,
    /// Of those, recorded one by one.
    pub recorded: u32,
    /// The principal most of the counted ones came from.
    pub principal: String,
    pub window: Duration,
    /// The text of the summary record.
    pub message: String,
}

#[derive(Debug)]
struct Bucket {
    start: Instant,
    recorded: u32,
    counted: u64,
    /// (principal, verb) → count, at most MAX_MIX entries plus "other".
    mix: BTreeMap<(String, String), u64>,
    other: u64,
}

impl Bucket {
    fn new(start: Instant) -> Self {
        Self {
            start,
            recorded: 0,
            counted: 0,
            mix: BTreeMap::new(),
            other: 0,
        }
    }
}

/// The limiter (see the module docs).
#[derive(Debug)]
pub struct RefusalLimiter {
    policy: RefusalPolicy,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// `1234` → `1,234`.
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

impl RefusalLimiter {
    pub fn new(policy: RefusalPolicy) -> Self {
        let policy = RefusalPolicy {
            per_window: policy.per_window,
            window: policy.window.max(Duration::from_millis(1)),
        };
        Self {
            policy,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn policy(&self) -> RefusalPolicy {
        self.policy
    }

    /// Decides about one refusal from `source` by `principal` doing `verb` at `now`. A window
    /// of this source that has ended is summarised first (returned for writing).
    pub fn admit(
        &self,
        source: &str,
        principal: &str,
        verb: &str,
        now: Instant,
    ) -> (Admit, Option<Summary>) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let key = if buckets.len() >= MAX_SOURCES && !buckets.contains_key(source) {
            OVERFLOW
        } else {
            source
        };
        let b = buckets
            .entry(key.to_string())
            .or_insert_with(|| Bucket::new(now));
        let mut summary = None;
        if now.saturating_duration_since(b.start) >= self.policy.window {
            let ended = std::mem::replace(b, Bucket::new(now));
            summary = self.summary(key, ended);
        }
        if b.recorded < self.policy.per_window {
            b.recorded += 1;
            return (Admit::Record, summary);
        }
        b.counted += 1;
        let pair = (principal.to_string(), verb.to_string());
        if let Some(n) = b.mix.get_mut(&pair) {
            *n += 1;
        } else if b.mix.len() < MAX_MIX {
            b.mix.insert(pair, 1);
        } else {
            b.other += 1;
        }
        (Admit::Counted, summary)
    }

    /// Removes every source whose window ended by `now`, returning the summaries of those that
    /// had refusals beyond the recorded ones.
    pub fn sweep(&self, now: Instant) -> Vec<Summary> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let window = self.policy.window;
        let ended: Vec<String> = buckets
            .iter()
            .filter(|(_, b)| now.saturating_duration_since(b.start) >= window)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for k in ended {
            if let Some(b) = buckets.remove(&k) {
                out.extend(self.summary(&k, b));
            }
        }
        out
    }

    fn summary(&self, source: &str, b: Bucket) -> Option<Summary> {
        if b.counted == 0 {
            return None;
        }
        let total = b.counted + u64::from(b.recorded);
        let mut mix: Vec<(&(String, String), &u64)> = b.mix.iter().collect();
        mix.sort_by(|x, y| y.1.cmp(x.1).then_with(|| x.0.cmp(y.0)));
        let principal = mix.first().map(|(p, _)| p.0.clone()).unwrap_or_default();
        let mut parts: Vec<String> = mix
            .iter()
            .map(|((p, v), n)| format!("{} × {p} {v}", thousands(**n)))
            .collect();
        if b.other > 0 {
            parts.push(format!("{} × other", thousands(b.other)));
        }
        let message = format!(
            "{} refused attempts from {source} in {}; the first {} are recorded one by one, {} only counted here: {}",
            thousands(total),
            seconds(self.policy.window),
            b.recorded,
            thousands(b.counted),
            parts.join(", ")
        );
        Some(Summary {
            source: source.to_string(),
            total,
            recorded: b.recorded,
            principal,
            window: self.policy.window,
            message,
        })
    }

    /// Sources currently tracked (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // tests measure or wait on real time
    use super::*;

    fn limiter(per_window: u32) -> RefusalLimiter {
        RefusalLimiter::new(RefusalPolicy {
            per_window,
            window: Duration::from_secs(10),
        })
    }

    #[test]
    fn the_first_k_are_recorded_then_counted_and_summarised() {
        let l = limiter(3);
        let t0 = Instant::now();
        let mut recorded = 0;
        for i in 0..1234u32 {
            let verb = if i % 2 == 0 { "create" } else { "list" };
            let (a, s) = l.admit("peer 127.0.0.1", "anonymous", verb, t0);
            assert!(s.is_none());
            recorded += usize::from(a == Admit::Record);
        }
        assert_eq!(recorded, 3);
        // Another source has its own allowance.
        assert_eq!(l.admit("peer 10.0.0.1", "x", "get", t0).0, Admit::Record);
        assert!(l.sweep(t0 + Duration::from_secs(9)).is_empty());
        let s = l.sweep(t0 + Duration::from_secs(10));
        assert_eq!(s.len(), 1, "only the flooding source has a summary");
        assert_eq!(s[0].total, 1234);
        assert!(
            s[0].message
                .starts_with("1,234 refused attempts from peer 127.0.0.1 in 10 s"),
            "{}",
            s[0].message
        );
        assert!(
            s[0].message
                .ends_with("616 × anonymous list, 615 × anonymous create"),
            "{}",
            s[0].message
        );
        assert_eq!(l.tracked(), 0, "ended windows are swept");
    }

    #[test]
    fn a_new_window_summarises_the_old_one_and_starts_afresh() {
        let l = limiter(1);
        let t0 = Instant::now();
        l.admit("p", "a", "v", t0);
        l.admit("p", "a", "v", t0);
        let (a, s) = l.admit("p", "a", "v", t0 + Duration::from_secs(11));
        assert_eq!(a, Admit::Record);
        assert_eq!(s.map(|s| s.total), Some(2));
    }

    #[test]
    fn the_map_is_bounded() {
        let l = limiter(1);
        let t0 = Instant::now();
        for i in 0..(MAX_SOURCES + 100) {
            l.admit(&format!("peer {i}"), "a", "v", t0);
        }
        assert_eq!(l.tracked(), MAX_SOURCES + 1);
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(thousands(999), "999");
    }
}
