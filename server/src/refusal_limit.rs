//! Rate limit for the refused-attempt log, so a flood of bad requests cannot push older
//! refusals out of it (the log keeps the newest 100,000).
//!
//! Per source (the peer's IP address for unauthenticated attempts, an IPv6 peer by its /64,
//! the principal for authenticated ones) and per window, the first `per_window` refusals are
//! recorded one by one; the rest are only counted, and one summary record per source and
//! window says how many there were and what they were ("1,234 refused attempts from 127.0.0.1
//! in 10 s ..."). All sources together have `global_per_window` records per window (refusals
//! and per-source summaries alike): beyond it refusals, and the summaries of sources whose
//! window ends, are counted into one summary for the window ("5,000 refused attempts from 300
//! peers in 10 s ..."), so many peers flooding at once write at most `global_per_window + 1`
//! records per window. The limiter is a map under one short lock and never waits for I/O;
//! the map is bounded (sources past [`MAX_SOURCES`] share one bucket) and swept of ended
//! windows. Pure: the caller passes the time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sources tracked at once; more share the bucket [`OVERFLOW`].
pub const MAX_SOURCES: usize = 4096;
/// The shared bucket's name.
pub const OVERFLOW: &str = "other peers";
/// Distinct (principal, verb) pairs a summary names; the rest are counted as "other".
const MAX_MIX: usize = 8;
/// Default of [`RefusalPolicy::global_per_window`]: a sustained flood at this rate (plus one
/// summary per window) takes 100,000 / 129 windows, over two hours at 10 s, to fill the log.
pub const DEFAULT_GLOBAL_PER_WINDOW: u32 = 128;

/// How many refusals a source may have recorded one by one per window, and all sources
/// together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusalPolicy {
    pub per_window: u32,
    pub window: Duration,
    /// Records (refusals and per-source summaries) per window across all sources; beyond it
    /// refusals are counted into one summary for the window ("N refused attempts from M
    /// peers"), so many peers cannot flush the log either.
    pub global_per_window: u32,
}

impl Default for RefusalPolicy {
    fn default() -> Self {
        Self {
            per_window: 32,
            window: Duration::from_secs(10),
            global_per_window: DEFAULT_GLOBAL_PER_WINDOW,
        }
    }
}

/// The source name of an unauthenticated caller at `ip`: IPv6 peers by their /64 (one host
/// is given a whole /64, so a single address says little), IPv4-mapped addresses as IPv4.
pub fn peer_source(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => format!("peer {v4}"),
        IpAddr::V6(v6) if v6.is_loopback() => format!("peer {v6}"),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            format!("peer {}/64", Ipv6Addr::from(prefix))
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
    /// The source, e.g. `peer 127.0.0.1` or `principal oscar`; `all sources` for the global
    /// summary.
    pub source: String,
    /// Refusals the summary stands for: for a source, those recorded and counted; globally,
    /// those only counted.
    pub total: u64,
    /// Of those, recorded one by one.
    pub recorded: u32,
    /// The principal most of the counted ones came from.
    pub principal: String,
    pub window: Duration,
    /// The text of the summary record.
    pub message: String,
}

/// Refusals by (principal, verb), at most MAX_MIX entries plus "other".
#[derive(Debug, Default)]
struct Mix {
    pairs: BTreeMap<(String, String), u64>,
    other: u64,
}

impl Mix {
    fn add(&mut self, principal: &str, verb: &str, n: u64) {
        let pair = (principal.to_string(), verb.to_string());
        if let Some(c) = self.pairs.get_mut(&pair) {
            *c += n;
        } else if self.pairs.len() < MAX_MIX {
            self.pairs.insert(pair, n);
        } else {
            self.other += n;
        }
    }

    fn merge(&mut self, other: Mix) {
        for ((p, v), n) in other.pairs {
            self.add(&p, &v, n);
        }
        self.other += other.other;
    }

    /// (the top principal, "3 × a list, 2 × b get, 1 × other").
    fn describe(&self) -> (String, String) {
        let mut mix: Vec<(&(String, String), &u64)> = self.pairs.iter().collect();
        mix.sort_by(|x, y| y.1.cmp(x.1).then_with(|| x.0.cmp(y.0)));
        let principal = mix.first().map(|(p, _)| p.0.clone()).unwrap_or_default();
        let mut parts: Vec<String> = mix
            .iter()
            .map(|((p, v), n)| format!("{} × {p} {v}", thousands(**n)))
            .collect();
        if self.other > 0 {
            parts.push(format!("{} × other", thousands(self.other)));
        }
        (principal, parts.join(", "))
    }
}

#[derive(Debug)]
struct Bucket {
    start: Instant,
    recorded: u32,
    counted: u64,
    mix: Mix,
}

impl Bucket {
    fn new(start: Instant) -> Self {
        Self {
            start,
            recorded: 0,
            counted: 0,
            mix: Mix::default(),
        }
    }
}

/// The window across all sources.
#[derive(Debug, Default)]
struct Global {
    /// Start of the current window (none before the first refusal).
    start: Option<Instant>,
    /// Records written in it (refusals and per-source summaries).
    recorded: u32,
    /// Refusals only counted into the global summary.
    counted: u64,
    /// The sources those came from (at most MAX_SOURCES; `more` says there were others).
    sources: HashSet<String>,
    more: bool,
    mix: Mix,
}

impl Global {
    fn note_source(&mut self, source: &str) {
        if self.sources.contains(source) {
            return;
        }
        if self.sources.len() < MAX_SOURCES {
            self.sources.insert(source.to_string());
        } else {
            self.more = true;
        }
    }
}

#[derive(Debug, Default)]
struct State {
    buckets: HashMap<String, Bucket>,
    global: Global,
}

/// The limiter (see the module docs).
#[derive(Debug)]
pub struct RefusalLimiter {
    policy: RefusalPolicy,
    state: Mutex<State>,
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
            window: policy.window.max(Duration::from_millis(1)),
            ..policy
        };
        Self {
            policy,
            state: Mutex::new(State::default()),
        }
    }

    pub fn policy(&self) -> RefusalPolicy {
        self.policy
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides about one refusal from `source` by `principal` doing `verb` at `now`. Windows
    /// that have ended (this source's, the global one) are summarised first (returned for
    /// writing).
    pub fn admit(
        &self,
        source: &str,
        principal: &str,
        verb: &str,
        now: Instant,
    ) -> (Admit, Vec<Summary>) {
        let mut st = self.lock();
        let mut out = Vec::new();
        out.extend(self.roll_global(&mut st.global, now, Some(now)));
        if st.global.start.is_none() {
            st.global.start = Some(now);
        }
        let key = if st.buckets.len() >= MAX_SOURCES && !st.buckets.contains_key(source) {
            OVERFLOW
        } else {
            source
        };
        let State { buckets, global } = &mut *st;
        let b = buckets
            .entry(key.to_string())
            .or_insert_with(|| Bucket::new(now));
        if now.saturating_duration_since(b.start) >= self.policy.window {
            let ended = std::mem::replace(b, Bucket::new(now));
            out.extend(self.close(key, ended, global));
        }
        if b.recorded < self.policy.per_window {
            if global.recorded < self.policy.global_per_window {
                global.recorded += 1;
                b.recorded += 1;
                return (Admit::Record, out);
            }
            // Within this source's allowance, but all sources together used theirs.
            global.counted += 1;
            global.note_source(key);
            global.mix.add(principal, verb, 1);
            return (Admit::Counted, out);
        }
        b.counted += 1;
        b.mix.add(principal, verb, 1);
        (Admit::Counted, out)
    }

    /// Removes every source whose window ended by `now`, returning the summaries of those that
    /// had refusals beyond the recorded ones, and the global one once its window ended.
    pub fn sweep(&self, now: Instant) -> Vec<Summary> {
        let mut st = self.lock();
        let window = self.policy.window;
        let ended: Vec<String> = st
            .buckets
            .iter()
            .filter(|(_, b)| now.saturating_duration_since(b.start) >= window)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        let State { buckets, global } = &mut *st;
        for k in ended {
            if let Some(b) = buckets.remove(&k) {
                out.extend(self.close(&k, b, global));
            }
        }
        out.extend(self.roll_global(global, now, None));
        out
    }

    /// A source's ended window: its summary, written if all sources together still have a
    /// record left in the window, else folded into the global summary.
    fn close(&self, source: &str, b: Bucket, global: &mut Global) -> Option<Summary> {
        if b.counted == 0 {
            return None;
        }
        if global.recorded >= self.policy.global_per_window {
            global.counted += b.counted;
            global.note_source(source);
            global.mix.merge(b.mix);
            return None;
        }
        global.recorded += 1;
        let total = b.counted + u64::from(b.recorded);
        let (principal, mix) = b.mix.describe();
        let message = format!(
            "{} refused attempts from {source} in {}; the first {} are recorded one by one, {} only counted here: {mix}",
            thousands(total),
            seconds(self.policy.window),
            b.recorded,
            thousands(b.counted),
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

    /// Ends the global window if it ended by `now` (starting the next at `next`), returning
    /// its summary if refusals were only counted in it.
    fn roll_global(&self, g: &mut Global, now: Instant, next: Option<Instant>) -> Option<Summary> {
        let start = g.start?;
        if now.saturating_duration_since(start) < self.policy.window {
            return None;
        }
        let ended = std::mem::replace(
            g,
            Global {
                start: next,
                ..Global::default()
            },
        );
        if ended.counted == 0 {
            return None;
        }
        let peers = ended
            .sources
            .iter()
            .filter(|s| s.starts_with("peer ") || s.as_str() == OVERFLOW)
            .count();
        let principals = ended.sources.len() - peers;
        let more = if ended.more { "more than " } else { "" };
        let from = match (peers, principals) {
            (p, 0) => format!("{more}{} peers", thousands(p as u64)),
            (0, q) => format!("{more}{} principals", thousands(q as u64)),
            (p, q) => format!(
                "{more}{} peers and {} principals",
                thousands(p as u64),
                thousands(q as u64)
            ),
        };
        let (principal, mix) = ended.mix.describe();
        let message = format!(
            "{} refused attempts from {from} in {} were only counted here: all sources together had {} recorded one by one, the limit per window (refusals_global_per_window): {mix}",
            thousands(ended.counted),
            seconds(self.policy.window),
            ended.recorded,
        );
        Some(Summary {
            source: "all sources".into(),
            total: ended.counted,
            recorded: 0,
            principal,
            window: self.policy.window,
            message,
        })
    }

    /// Sources currently tracked (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.lock().buckets.len()
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
            global_per_window: 1_000_000,
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
            assert!(s.is_empty());
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
        assert_eq!(s.iter().map(|s| s.total).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn many_sources_share_a_global_budget_then_one_summary() {
        let l = RefusalLimiter::new(RefusalPolicy {
            per_window: 5,
            window: Duration::from_secs(10),
            global_per_window: 20,
        });
        let t0 = Instant::now();
        let mut recorded = 0u64;
        let mut summaries = Vec::new();
        // 300 peers, 10 refusals each.
        for i in 0..300u32 {
            for _ in 0..10 {
                let (a, s) = l.admit(
                    &format!("peer 10.0.{}.{}", i / 256, i % 256),
                    "anonymous",
                    "list",
                    t0,
                );
                recorded += u64::from(a == Admit::Record);
                summaries.extend(s);
            }
        }
        assert_eq!(recorded, 20, "the global budget caps one-by-one records");
        summaries.extend(l.sweep(t0 + Duration::from_secs(10)));
        // The per-source summaries came after the budget was used: folded into the global one.
        assert_eq!(summaries.len(), 1, "{summaries:?}");
        let g = &summaries[0];
        assert_eq!(g.source, "all sources");
        assert_eq!(g.total + recorded, 3000, "every refusal is accounted for");
        assert!(
            g.message
                .starts_with("2,980 refused attempts from 300 peers in 10 s"),
            "{}",
            g.message
        );
        assert!(
            g.message.contains("refusals_global_per_window"),
            "{}",
            g.message
        );
        assert!(
            g.message.ends_with("2,980 × anonymous list"),
            "{}",
            g.message
        );
        // A new window: the budget is back.
        assert_eq!(
            l.admit("peer 10.0.0.1", "a", "v", t0 + Duration::from_secs(11))
                .0,
            Admit::Record
        );
    }

    #[test]
    fn per_source_summaries_use_the_global_budget_while_it_lasts() {
        let l = RefusalLimiter::new(RefusalPolicy {
            per_window: 1,
            window: Duration::from_secs(10),
            global_per_window: 3,
        });
        let t0 = Instant::now();
        for p in ["peer a", "peer b"] {
            for _ in 0..4 {
                l.admit(p, "x", "get", t0);
            }
        }
        let s = l.sweep(t0 + Duration::from_secs(10));
        // Two records, then one summary fits (3), the second is folded into the global one.
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s[0].total, 4);
        assert_eq!(s[1].source, "all sources");
        assert_eq!(s[1].total, 3);
        assert!(s[1].message.contains("from 1 peers"), "{}", s[1].message);
    }

    #[test]
    fn ipv6_peers_are_keyed_by_their_64() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(peer_source(ip("2001:db8:1:2::1")), "peer 2001:db8:1:2::/64");
        assert_eq!(
            peer_source(ip("2001:db8:1:2:ffff:1234:5678:9abc")),
            "peer 2001:db8:1:2::/64"
        );
        assert_ne!(
            peer_source(ip("2001:db8:1:3::1")),
            peer_source(ip("2001:db8:1:2::1"))
        );
        assert_eq!(peer_source(ip("::ffff:192.0.2.7")), "peer 192.0.2.7");
        assert_eq!(peer_source(ip("192.0.2.7")), "peer 192.0.2.7");
        assert_eq!(peer_source(ip("::1")), "peer ::1");
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
