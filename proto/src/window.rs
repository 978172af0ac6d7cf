//! Maintenance windows: is a window open at a given instant, and is a device inside a window.
//!
//! Pure (the caller passes the clock) so that the Ansible bridge's `--in-window`, tests with a
//! controlled clock and, later, the campaign scheduler all agree on one answer. A recurring
//! window opens at each start of its 5-field cron schedule, evaluated in its IANA time zone
//! (so "02:00 Europe/Berlin" follows daylight saving time), and stays open for its duration;
//! fixed ranges are open from `start` (inclusive) to `end` (exclusive).

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use thiserror::Error;

use crate::pb;
use crate::selector::{Selector, SelectorError};

/// Longest window duration accepted: a year. Longer is a typo, and bounds the cron search.
pub const MAX_DURATION_SECONDS: i64 = 366 * 24 * 3600;

/// Why a window's schedule cannot be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WindowError {
    #[error("window {window}: cron {cron:?} is not a 5-field cron expression: {problem}")]
    Cron {
        window: String,
        cron: String,
        problem: String,
    },
    #[error(
        "window {window}: unknown time zone {timezone:?} (use an IANA name such as Europe/Berlin)"
    )]
    TimeZone { window: String, timezone: String },
    #[error("window {window}: a cron schedule needs a duration between 1 s and 366 days")]
    Duration { window: String },
    #[error("window {window}: {source}")]
    Selector {
        window: String,
        source: SelectorError,
    },
}

/// A window ready to be asked "open at T?" many times (cron, zone and selector parsed once).
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The window's name, for messages.
    pub name: String,
    /// Which devices it applies to.
    pub selector: Selector,
    /// A freeze forbids changes while open; it wins over every maintenance window.
    pub freeze: bool,
    cron: Option<(Cron, Tz, i64)>,
    /// Fixed ranges as (start, end) in Unix seconds.
    ranges: Vec<(i64, i64)>,
}

fn seconds(ts: Option<&pbjson_types::Timestamp>) -> i64 {
    ts.map_or(0, |t| t.seconds)
}

impl Schedule {
    /// Parses a window's selector, cron, time zone, duration and ranges.
    pub fn parse(w: &pb::Window) -> Result<Self, WindowError> {
        let name = w.meta.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        let selector = Selector::parse(&w.selector).map_err(|source| WindowError::Selector {
            window: name.clone(),
            source,
        })?;
        let cron = if w.cron.trim().is_empty() {
            None
        } else {
            let fields = w.cron.split_whitespace().count();
            if fields != 5 {
                return Err(WindowError::Cron {
                    window: name,
                    cron: w.cron.clone(),
                    problem: format!("it has {fields} fields"),
                });
            }
            let cron = Cron::new(&w.cron).parse().map_err(|e| WindowError::Cron {
                window: name.clone(),
                cron: w.cron.clone(),
                problem: e.to_string(),
            })?;
            let tz = if w.timezone.is_empty() {
                Tz::UTC
            } else {
                w.timezone
                    .parse::<Tz>()
                    .map_err(|_| WindowError::TimeZone {
                        window: name.clone(),
                        timezone: w.timezone.clone(),
                    })?
            };
            let d = w.duration.as_ref().map_or(0, |d| d.seconds);
            if d <= 0 || d > MAX_DURATION_SECONDS {
                return Err(WindowError::Duration { window: name });
            }
            Some((cron, tz, d))
        };
        let ranges = w
            .ranges
            .iter()
            .map(|r| (seconds(r.start.as_ref()), seconds(r.end.as_ref())))
            .collect();
        Ok(Self {
            name,
            selector,
            freeze: w.freeze,
            cron,
            ranges,
        })
    }

    /// Whether the window is open at `at`.
    ///
    /// A recurring window is open when some start `s` satisfies `s <= at < s + duration`,
    /// i.e. the first start strictly after `at - duration` is not later than `at`: one forward
    /// search, however long ago the schedule began.
    pub fn is_open(&self, at: DateTime<Utc>) -> bool {
        let t = at.timestamp();
        if self.ranges.iter().any(|&(s, e)| s <= t && t < e) {
            return true;
        }
        let Some((cron, tz, d)) = &self.cron else {
            return false;
        };
        let from = tz.from_utc_datetime(&(at - chrono::Duration::seconds(*d)).naive_utc());
        match cron.find_next_occurrence(&from, false) {
            Ok(start) => start.with_timezone(&Utc) <= at,
            Err(_) => false,
        }
    }

    /// The window's open intervals `[start, end)` in Unix seconds that overlap `[from, until)`,
    /// sorted, with overlapping and touching ones merged (a window every hour for an hour is
    /// one interval). At most `max_starts` cron starts are read, which bounds the work for a
    /// window like `* * * * *`; the campaign scheduler asks "open for how long from T", which
    /// `is_open` cannot answer.
    pub fn open_intervals(&self, from: i64, until: i64, max_starts: usize) -> Vec<(i64, i64)> {
        let mut raw: Vec<(i64, i64)> = self
            .ranges
            .iter()
            .copied()
            .filter(|&(s, e)| s < e && e > from && s < until)
            .collect();
        if let Some((cron, tz, d)) = &self.cron {
            // A start after `from - d` is the first that may still be open at `from`.
            let mut cur = DateTime::from_timestamp(from.saturating_sub(*d), 0)
                .map(|t| tz.from_utc_datetime(&t.naive_utc()));
            let mut n = 0;
            while let Some(after) = cur.take() {
                if n >= max_starts {
                    break;
                }
                let Ok(next) = cron.find_next_occurrence(&after, false) else {
                    break;
                };
                let s = next.timestamp();
                if s >= until {
                    break;
                }
                raw.push((s, s.saturating_add(*d)));
                n += 1;
                cur = Some(next);
            }
        }
        raw.sort_unstable();
        let mut out: Vec<(i64, i64)> = Vec::with_capacity(raw.len());
        for (s, e) in raw {
            match out.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => out.push((s, e)),
            }
        }
        out
    }

    /// Whether the window applies to a device with these labels.
    pub fn selects<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.selector.matches(label)
    }
}

/// Whether a device may be changed at `at`: some maintenance window selecting it is open and no
/// freeze selecting it is.
pub fn in_window<'a>(
    windows: &[Schedule],
    label: impl Fn(&str) -> Option<&'a str> + Copy,
    at: DateTime<Utc>,
) -> bool {
    let mut open = false;
    for w in windows.iter().filter(|w| w.selects(label)) {
        if w.is_open(at) {
            if w.freeze {
                return false;
            }
            open = true;
        }
    }
    open
}

/// Sorted, merged union of half-open `[start, end)` intervals.
pub fn union_intervals(mut v: Vec<(i64, i64)>) -> Vec<(i64, i64)> {
    v.sort_unstable();
    let mut out: Vec<(i64, i64)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// `a` minus `b`; both sorted and disjoint.
pub fn subtract_intervals(a: &[(i64, i64)], b: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let mut out = Vec::with_capacity(a.len());
    let mut j = 0;
    for &(mut s, e) in a {
        while j < b.len() && b[j].1 <= s {
            j += 1;
        }
        let mut k = j;
        while k < b.len() && b[k].0 < e {
            if b[k].0 > s {
                out.push((s, b[k].0));
            }
            s = s.max(b[k].1);
            k += 1;
        }
        if s < e {
            out.push((s, e));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;

    fn window(cron: &str, secs: i64, tz: &str) -> pb::Window {
        pb::Window {
            meta: Some(pb::ObjectMeta {
                name: "w".into(),
                ..Default::default()
            }),
            selector: "env=prod".into(),
            cron: cron.into(),
            duration: Some(pbjson_types::Duration {
                seconds: secs,
                nanos: 0,
            }),
            timezone: tz.into(),
            ..Default::default()
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn recurring_window_in_its_time_zone() {
        // Saturdays 02:00-04:00 Berlin: 01:00-03:00 UTC in winter (CET), 00:00-02:00 in summer.
        let s = Schedule::parse(&window("0 2 * * sat", 7200, "Europe/Berlin")).unwrap();
        assert!(!s.is_open(at("2026-01-10T00:59:59Z")));
        assert!(s.is_open(at("2026-01-10T01:00:00Z")));
        assert!(s.is_open(at("2026-01-10T02:59:59Z")));
        assert!(!s.is_open(at("2026-01-10T03:00:00Z")));
        assert!(s.is_open(at("2026-07-11T00:30:00Z")));
        assert!(!s.is_open(at("2026-07-11T02:30:00Z")));
        // A Friday is never open.
        assert!(!s.is_open(at("2026-01-09T01:30:00Z")));
    }

    #[test]
    fn window_spanning_midnight_and_fixed_ranges() {
        let s = Schedule::parse(&window("0 23 * * *", 3 * 3600, "")).unwrap();
        assert!(s.is_open(at("2026-03-03T01:00:00Z")));
        assert!(!s.is_open(at("2026-03-03T02:00:00Z")));
        let mut w = window("", 0, "");
        w.ranges.push(pb::TimeRange {
            start: Some(pbjson_types::Timestamp {
                seconds: at("2026-05-01T10:00:00Z").timestamp(),
                nanos: 0,
            }),
            end: Some(pbjson_types::Timestamp {
                seconds: at("2026-05-01T12:00:00Z").timestamp(),
                nanos: 0,
            }),
        });
        let s = Schedule::parse(&w).unwrap();
        assert!(s.is_open(at("2026-05-01T10:00:00Z")));
        assert!(!s.is_open(at("2026-05-01T12:00:00Z")));
    }

    #[test]
    fn freeze_wins_and_selectors_apply() {
        let open = Schedule::parse(&window("* * * * *", 60, "")).unwrap();
        let mut f = window("0 0 1 1 *", 60, "");
        f.freeze = true;
        f.selector = "tier=gold".into();
        let freeze = Schedule::parse(&f).unwrap();
        let t = at("2027-01-01T00:00:30Z");
        assert!(freeze.is_open(t));
        let prod: HashMap<&str, &str> = [("env", "prod")].into();
        let gold: HashMap<&str, &str> = [("env", "prod"), ("tier", "gold")].into();
        let dev: HashMap<&str, &str> = [("env", "dev")].into();
        let ws = [open, freeze];
        assert!(in_window(&ws, |k| prod.get(k).copied(), t));
        assert!(!in_window(&ws, |k| gold.get(k).copied(), t));
        assert!(!in_window(&ws, |k| dev.get(k).copied(), t));
    }

    #[test]
    fn open_intervals_merge_touching_occurrences_and_follow_dst() {
        // Hourly for an hour: one interval over the whole span.
        let s = Schedule::parse(&window("0 * * * *", 3600, "")).unwrap();
        let from = at("2026-03-03T00:30:00Z").timestamp();
        let until = at("2026-03-03T05:00:00Z").timestamp();
        let iv = s.open_intervals(from, until, 1000);
        assert_eq!(iv, vec![(at("2026-03-03T00:00:00Z").timestamp(), until)]);
        // Saturdays 02:00 Berlin for 2 h: 01:00Z in March before DST, 00:00Z after.
        let s = Schedule::parse(&window("0 2 * * sat", 7200, "Europe/Berlin")).unwrap();
        let iv = s.open_intervals(
            at("2026-03-21T00:00:00Z").timestamp(),
            at("2026-04-05T00:00:00Z").timestamp(),
            1000,
        );
        assert_eq!(
            iv,
            vec![
                (
                    at("2026-03-21T01:00:00Z").timestamp(),
                    at("2026-03-21T03:00:00Z").timestamp()
                ),
                (
                    at("2026-03-28T01:00:00Z").timestamp(),
                    at("2026-03-28T03:00:00Z").timestamp()
                ),
                (
                    at("2026-04-04T00:00:00Z").timestamp(),
                    at("2026-04-04T02:00:00Z").timestamp()
                ),
            ]
        );
        // The bound on starts read holds.
        let s = Schedule::parse(&window("* * * * *", 30, "")).unwrap();
        assert_eq!(s.open_intervals(0, 1_000_000, 10).len(), 10);
    }

    #[test]
    fn bad_windows_are_named_errors() {
        assert!(matches!(
            Schedule::parse(&window("0 2 * *", 60, "")),
            Err(WindowError::Cron { .. })
        ));
        assert!(matches!(
            Schedule::parse(&window("0 99 * * *", 60, "")),
            Err(WindowError::Cron { .. })
        ));
        assert!(matches!(
            Schedule::parse(&window("0 2 * * *", 60, "Mars/Olympus")),
            Err(WindowError::TimeZone { .. })
        ));
        assert!(matches!(
            Schedule::parse(&window("0 2 * * *", 0, "")),
            Err(WindowError::Duration { .. })
        ));
    }
    #[test]
    fn subtraction_cuts_holes_and_edges() {
        let a = [(0, 10), (20, 30)];
        assert_eq!(
            subtract_intervals(&a, &[(5, 7)]),
            vec![(0, 5), (7, 10), (20, 30)]
        );
        assert_eq!(subtract_intervals(&a, &[(8, 22)]), vec![(0, 8), (22, 30)]);
        assert_eq!(subtract_intervals(&a, &[(-5, 40)]), vec![]);
        assert_eq!(subtract_intervals(&a, &[]), a.to_vec());
    }

    #[test]
    fn unions_merge_touching_and_overlapping_intervals() {
        assert_eq!(
            union_intervals(vec![(5, 7), (0, 3), (3, 4)]),
            vec![(0, 4), (5, 7)]
        );
    }
}
