//! The one place muster reads time.
//!
//! Everything that asks "what time is it" (token expiry, agent silence, drift timestamps,
//! maintenance windows, campaign deadlines) takes a [`SharedClock`], so tests can use a
//! [`ManualClock`] and advance it instead of sleeping. `clippy.toml` bans
//! `SystemTime::now`/`Instant::now` everywhere else; code that *measures* (benchmarks, latency
//! tests) opts out where it does so.
//!
//! Timers still come from tokio: a task that waits uses `tokio::time`, then asks the clock what
//! time it is. Under a manual clock such a task wakes on real time and sees the manual time.
#![allow(clippy::disallowed_methods)] // the clock module is where time is read

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of wall-clock and monotonic time.
pub trait Clock: Send + Sync + Debug + 'static {
    /// Unix time in nanoseconds (wall clock: timestamps, expiry, windows).
    fn now_unix_nanos(&self) -> i64;
    /// A monotonic instant (durations, rate windows): never goes backwards.
    fn now_instant(&self) -> Instant;

    /// Unix time in whole seconds.
    fn now_unix_seconds(&self) -> i64 {
        self.now_unix_nanos().div_euclid(1_000_000_000)
    }
}

/// The clock handed to everything that reads time.
pub type SharedClock = Arc<dyn Clock>;

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_nanos(&self) -> i64 {
        system_unix_nanos()
    }

    fn now_instant(&self) -> Instant {
        Instant::now()
    }
}

/// The real clock, shared.
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

fn system_unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// A clock that moves only when told: starts at a given Unix time, and [`ManualClock::advance`]
/// moves both its wall and monotonic readings forward by the same amount.
#[derive(Debug)]
pub struct ManualClock {
    start_unix_nanos: i64,
    start_instant: Instant,
    /// Nanoseconds advanced since the start (never negative: monotonic time must not go back).
    offset_nanos: AtomicI64,
}

impl ManualClock {
    /// A manual clock reading `unix_nanos` now.
    pub fn at_unix_nanos(unix_nanos: i64) -> Arc<Self> {
        Arc::new(Self {
            start_unix_nanos: unix_nanos,
            start_instant: Instant::now(),
            offset_nanos: AtomicI64::new(0),
        })
    }

    /// A manual clock starting at the real current time.
    pub fn starting_now() -> Arc<Self> {
        Self::at_unix_nanos(system_unix_nanos())
    }

    /// Moves time forward.
    pub fn advance(&self, by: Duration) {
        let by = i64::try_from(by.as_nanos()).unwrap_or(i64::MAX);
        let _ = self
            .offset_nanos
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |o| {
                Some(o.saturating_add(by))
            });
    }

    /// Moves time forward to `unix_nanos`; a time in the past is ignored (time never goes back).
    pub fn advance_to_unix_nanos(&self, unix_nanos: i64) {
        let target = unix_nanos.saturating_sub(self.start_unix_nanos);
        let _ = self
            .offset_nanos
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |o| Some(o.max(target)));
    }
}

impl Clock for ManualClock {
    fn now_unix_nanos(&self) -> i64 {
        self.start_unix_nanos
            .saturating_add(self.offset_nanos.load(Ordering::SeqCst))
    }

    fn now_instant(&self) -> Instant {
        let offset = u64::try_from(self.offset_nanos.load(Ordering::SeqCst)).unwrap_or(0);
        self.start_instant + Duration::from_nanos(offset)
    }
}

/// Elapsed real time, for metrics and logs only (how long a flush or a request took).
///
/// It never drives behaviour, so it reads the real monotonic clock even under a manual
/// [`Clock`]: a latency histogram must show real latency.
#[derive(Debug, Clone, Copy)]
pub struct Stopwatch(Instant);

impl Stopwatch {
    /// Starts measuring now.
    pub fn start() -> Self {
        Self(Instant::now())
    }

    /// Real time since [`Stopwatch::start`].
    pub fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told_and_never_back() {
        let clock = ManualClock::at_unix_nanos(1_000_000_000_000);
        let (wall, mono) = (clock.now_unix_nanos(), clock.now_instant());
        assert_eq!(wall, 1_000_000_000_000);
        assert_eq!(clock.now_unix_seconds(), 1_000);
        clock.advance(Duration::from_secs(90));
        assert_eq!(clock.now_unix_nanos(), wall + 90_000_000_000);
        assert_eq!(clock.now_instant() - mono, Duration::from_secs(90));
        clock.advance_to_unix_nanos(wall); // the past: ignored
        assert_eq!(clock.now_unix_nanos(), wall + 90_000_000_000);
        clock.advance_to_unix_nanos(wall + 100_000_000_000);
        assert_eq!(clock.now_unix_seconds(), 1_100);
    }

    #[test]
    fn system_clock_reads_the_real_time() {
        let c = system();
        let a = c.now_unix_nanos();
        assert!(a > 1_700_000_000_000_000_000, "{a}");
        assert!(c.now_unix_nanos() >= a);
    }
}
