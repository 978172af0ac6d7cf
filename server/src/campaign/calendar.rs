//! Windows and freezes laid out as open intervals over a horizon, so that "may this host start
//! now, and stay inside a window for E seconds?" and "when next?" are interval arithmetic.
//!
//! Built once from `muster::window::Schedule`s (the engine rebuilds it when windows change or
//! the horizon runs short); asking it is cheap. An interval reaching the horizon is cut there,
//! so a fit near the horizon is judged conservatively (as if the window closed there).

use muster::selector::Selector;
use muster::window::Schedule;
use muster::window::{subtract_intervals, union_intervals};

use super::Labels;

/// How far ahead windows must open ("never opens in the next 30 days") and plans look.
pub const HORIZON_SECONDS: i64 = 30 * 24 * 3600;
/// Cron starts read per window: bounds a `* * * * *` window (43,200 starts in 30 days).
pub const MAX_STARTS_PER_WINDOW: usize = 100_000;

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    selector: Selector,
    freeze: bool,
    open: Vec<(i64, i64)>,
}

/// Every window's open intervals over `[from, until)`.
#[derive(Debug, Clone)]
pub struct Calendar {
    from: i64,
    until: i64,
    entries: Vec<Entry>,
}

/// What [`Calendar::lookup`] found for a window name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowLookup {
    Unknown,
    Freeze,
    Never,
    /// First instant it is open (no earlier than the lookup's start).
    Opens(i64),
}

/// When one host may be changed: the intervals where a maintenance window selecting it (or
/// any time, for `any_time`) is open and no freeze selecting it is, sorted and disjoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Slots {
    pub intervals: Vec<(i64, i64)>,
}

impl Slots {
    /// The end of the slot containing `t`, if `t` is inside one.
    pub fn open_until(&self, t: i64) -> Option<i64> {
        let i = self.intervals.partition_point(|&(_, e)| e <= t);
        self.intervals
            .get(i)
            .filter(|&&(s, _)| s <= t)
            .map(|&(_, e)| e)
    }

    /// Whether a host needing `need` seconds may start at `t`: `t` is inside a slot that lasts
    /// until at least `t + need`.
    pub fn fits_at(&self, t: i64, need: i64) -> bool {
        self.open_until(t).is_some_and(|e| e - t >= need)
    }

    /// The earliest instant `>= t` at which [`Slots::fits_at`] holds.
    pub fn next_fit(&self, t: i64, need: i64) -> Option<i64> {
        let i = self.intervals.partition_point(|&(_, e)| e <= t);
        self.intervals[i..]
            .iter()
            .map(|&(s, e)| (s.max(t), e))
            .find(|&(s, e)| e - s >= need)
            .map(|(s, _)| s)
    }

    /// The longest slot, in seconds (for "needs 3h, the longest window is 2h").
    pub fn longest(&self) -> i64 {
        self.intervals
            .iter()
            .map(|&(s, e)| e - s)
            .max()
            .unwrap_or(0)
    }
}

impl Calendar {
    /// Lays out `schedules` over `[from, until)`.
    pub fn new(schedules: &[Schedule], from: i64, until: i64) -> Self {
        let entries = schedules
            .iter()
            .map(|w| Entry {
                name: w.name.clone(),
                selector: w.selector.clone(),
                freeze: w.freeze,
                open: w
                    .open_intervals(from, until, MAX_STARTS_PER_WINDOW)
                    .into_iter()
                    .map(|(s, e)| (s.max(from), e.min(until)))
                    .filter(|(s, e)| s < e)
                    .collect(),
            })
            .collect();
        Self {
            from,
            until,
            entries,
        }
    }

    /// The span laid out.
    pub fn span(&self) -> (i64, i64) {
        (self.from, self.until)
    }

    /// Whether `name` exists, is a freeze, and when it first opens in `[from, until)`.
    pub fn lookup(&self, name: &str, from: i64, until: i64) -> WindowLookup {
        let Some(e) = self.entries.iter().find(|e| e.name == name) else {
            return WindowLookup::Unknown;
        };
        if e.freeze {
            return WindowLookup::Freeze;
        }
        e.open
            .iter()
            .find(|&&(s, end)| end > from && s < until)
            .map_or(WindowLookup::Never, |&(s, _)| {
                WindowLookup::Opens(s.max(from))
            })
    }

    /// The slots of a host with `labels`: maintenance windows named in `names` (all when
    /// empty) that select it, or all time when `any_time`; minus every freeze selecting it.
    pub fn slots(&self, labels: &Labels, names: &[String], any_time: bool) -> Slots {
        let get = |k: &str| labels.get(k).map(String::as_str);
        let selects = |e: &&Entry| e.selector.matches(get);
        let open = if any_time {
            vec![(self.from, self.until)]
        } else {
            union_intervals(
                self.entries
                    .iter()
                    .filter(|e| !e.freeze && (names.is_empty() || names.contains(&e.name)))
                    .filter(selects)
                    .flat_map(|e| e.open.iter().copied())
                    .collect(),
            )
        };
        let frozen = union_intervals(
            self.entries
                .iter()
                .filter(|e| e.freeze)
                .filter(selects)
                .flat_map(|e| e.open.iter().copied())
                .collect(),
        );
        Slots {
            intervals: subtract_intervals(&open, &frozen),
        }
    }

    /// A freeze selecting the host that is open at `t`: its name and when it ends.
    pub fn freeze_at(&self, labels: &Labels, t: i64) -> Option<(&str, i64)> {
        let get = |k: &str| labels.get(k).map(String::as_str);
        self.entries
            .iter()
            .filter(|e| e.freeze && e.selector.matches(get))
            .find_map(|e| {
                e.open
                    .iter()
                    .find(|&&(s, end)| s <= t && t < end)
                    .map(|&(_, end)| (e.name.as_str(), end))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_boundaries() {
        let s = Slots {
            intervals: vec![(100, 200), (300, 1000)],
        };
        // Remaining = 100 at t=100: need 99 and 100 fit, 101 does not.
        assert!(s.fits_at(100, 99));
        assert!(s.fits_at(100, 100));
        assert!(!s.fits_at(100, 101));
        assert!(!s.fits_at(200, 1)); // end is exclusive
        assert_eq!(s.next_fit(150, 101), Some(300));
        assert_eq!(s.next_fit(150, 50), Some(150));
        assert_eq!(s.next_fit(0, 701), None);
        assert_eq!(s.open_until(99), None);
        assert_eq!(s.longest(), 700);
    }
}
