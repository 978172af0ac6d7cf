//! The agent's work: enroll once, then collect → spool → send, every interval the server
//! assigns. Each collector runs under its own deadline; one that fails or times out leaves its
//! section unchanged at the server (its last good data) and says so in the report.
//!
//! By job: this file is the loop (open, resume, collect/send cadence with backoff);
//! `collectors` runs the collectors under their deadlines; `deliver` builds, spools and sends
//! reports (delta chain, size limit, resync); `state` is what survives restarts; `enroll`
//! and `renew` get and refresh the identity. Time comes only from the `SharedClock` handed to
//! [`Agent::open`] (and [`Collectors::new`], [`enroll_with_clock`]), so tests can use a
//! `ManualClock`.

use std::path::PathBuf;
use std::time::Duration;

use muster::clock::SharedClock;
use muster::pb::{self, agent_service_client::AgentServiceClient};
use thiserror::Error;
use tonic::transport::Channel;

use crate::config::AgentConfig;
use crate::identity::{self, IdentityError, Paths};
use crate::spool::{Spool, SpoolError};

mod collectors;
mod deliver;
mod enroll;
mod renew;
mod state;

pub use collectors::{Collected, Collectors};
pub use enroll::{enroll, enroll_with_clock};
use renew::RenewTiming;
use state::{State, load_state};

/// The agent's version, sent with every report.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Longest wait between retries while the server is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Why the agent could not run.
#[derive(Debug, Error)]
pub enum AgentError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("enrollment refused: {0}")]
    Enroll(String),
    #[error("certificate renewal refused: {0}")]
    Renew(String),
    #[error("state file {path}: {problem}")]
    State { path: PathBuf, problem: String },
    #[error("{0}")]
    Config(String),
}

/// A running agent: its identity, spool, chain and collectors.
pub struct Agent {
    cfg: AgentConfig,
    device: String,
    client: AgentServiceClient<Channel>,
    spool: Spool,
    state: State,
    collectors: Collectors,
    /// The next report must be full (first after start, or the server asked).
    need_full: bool,
    interval: Duration,
    /// When to renew the certificate (the server's hint, the retry wait after a failure).
    renewal: RenewTiming,
    /// The only source of time.
    clock: SharedClock,
    /// The largest report the server accepts (it says so in every answer).
    limit: usize,
    /// Refusals in a row: each rebuilds the report at the head of the spool from the current
    /// facts (full); the first to fit the limit, later ones without any bulky section.
    refusals: u32,
    /// Collector statuses of the latest collection, for rebuilt reports.
    last_collectors: Vec<pb::CollectorStatus>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// The limit assumed until the server tells its own (musterd's default max_message_bytes).
const DEFAULT_LIMIT: usize = 4 * 1024 * 1024;
/// The largest message the agent's client encodes or decodes.
const MAX_ENCODED_REPORT: usize = 16 * 1024 * 1024;

impl Agent {
    /// Loads identity, state and spool; `clock` is where every reading of time comes from.
    pub fn open(cfg: AgentConfig, clock: SharedClock) -> Result<Self, AgentError> {
        cfg.validate().map_err(AgentError::Config)?;
        let paths = Paths::new(&cfg.state_dir);
        // A renewal interrupted after its certificate was saved is completed first.
        if identity::finish_renewal(&paths)? {
            tracing::info!("switched to the certificate a renewal saved before a restart");
        }
        let device = identity::enrolled_device(&paths)?;
        let client = Self::connect(&cfg, &paths)?;
        let spool = Spool::open(&cfg.spool_dir(), cfg.spool_max_reports)?;
        let mut state = load_state(&cfg)?;
        // A report may have been spooled after the state was last saved.
        if let Some(last) = spool.sequences()?.last() {
            state.seq = state.seq.max(*last);
        }
        let collectors = Collectors::new(&cfg, state.sel_cursor, clock.clone())?;
        Ok(Self {
            interval: cfg.interval,
            renewal: RenewTiming::new(cfg.renew_fraction),
            cfg,
            device,
            client,
            spool,
            state,
            collectors,
            need_full: true,
            clock,
            limit: DEFAULT_LIMIT,
            refusals: 0,
            last_collectors: Vec::new(),
        })
    }

    /// A client presenting the identity on disk.
    fn connect(
        cfg: &AgentConfig,
        paths: &Paths,
    ) -> Result<AgentServiceClient<Channel>, AgentError> {
        let channel = identity::channel(&cfg.server, cfg.ca.as_deref(), paths, true, cfg.insecure)?;
        Ok(AgentServiceClient::new(channel)
            .max_decoding_message_size(MAX_ENCODED_REPORT)
            .max_encoding_message_size(MAX_ENCODED_REPORT))
    }

    /// The device this agent reports for.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Runs until `shutdown` resolves: collect, spool, send; retry with jittered backoff.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
        tokio::pin!(shutdown);
        self.resume_chain().await?;
        let mut backoff = Duration::from_secs(1);
        loop {
            let started = self.clock.now_instant();
            let c = self.collect_and_spool().await?;
            tracing::info!(
                seq = self.state.seq,
                cpu_ms = c.cpu_time.as_millis() as u64,
                took_ms = self
                    .clock
                    .now_instant()
                    .saturating_duration_since(started)
                    .as_millis() as u64,
                peak_rss_kib = peak_rss_kib(),
                "collected"
            );
            let sent = self.drain().await?;
            if sent {
                self.renew_if_due().await;
            }
            let wait = if sent {
                backoff = Duration::from_secs(1);
                self.interval
            } else {
                let w = jitter(backoff).min(self.interval);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                w
            };
            // While the server is away, keep collecting each interval; retry sends sooner.
            let deadline = started + self.interval;
            let mut next_send = self.clock.now_instant() + wait;
            loop {
                // Tokio times the wait; the clock says whether the interval is over.
                let nap = next_send
                    .min(deadline)
                    .saturating_duration_since(self.clock.now_instant());
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    () = tokio::time::sleep(nap) => {}
                }
                if self.clock.now_instant() >= deadline {
                    break;
                }
                if self.drain().await? {
                    backoff = Duration::from_secs(1);
                    next_send = deadline;
                } else {
                    next_send = self.clock.now_instant() + jitter(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// After a restart with nothing spooled: when the server still holds the facts this agent
    /// last sent (same hash), continue with deltas instead of resending everything.
    /// Also learns the server's report limit.
    async fn resume_chain(&mut self) -> Result<(), AgentError> {
        let resumable = !self.state.chain.facts_hash.is_empty() && self.spool.is_empty()?;
        let req = pb::HeartbeatRequest {
            device: self.device.clone(),
            boot_id: String::new(),
        };
        match self.client.heartbeat(req).await {
            Ok(r) => {
                let r = r.into_inner();
                self.learn_limit(r.max_report_bytes);
                if resumable && r.acked_hash == self.state.chain.facts_hash {
                    tracing::info!(
                        "the server holds this agent's last facts; continuing with deltas"
                    );
                    self.need_full = false;
                }
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), error = %status.message(), "heartbeat failed; the first report will be full");
            }
        }
        Ok(())
    }
}

/// This process's peak resident set (VmHWM), KiB; 0 when unreadable.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + rand::random::<f64>())
}

/// The clock's wall time as a protobuf timestamp (`collected_at`, `last_success`).
fn timestamp(clock: &SharedClock) -> pbjson_types::Timestamp {
    let nanos = clock.now_unix_nanos().max(0);
    pbjson_types::Timestamp {
        seconds: nanos.div_euclid(1_000_000_000),
        nanos: i32::try_from(nanos.rem_euclid(1_000_000_000)).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use muster::clock::ManualClock;

    use super::*;

    #[test]
    fn timestamps_come_from_the_clock() {
        let manual = ManualClock::at_unix_nanos(1_700_000_000_250_000_000);
        let clock: SharedClock = manual.clone();
        assert_eq!(
            timestamp(&clock),
            pbjson_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 250_000_000
            }
        );
        manual.advance(Duration::from_millis(1_750));
        assert_eq!(timestamp(&clock).seconds, 1_700_000_002);
        assert_eq!(timestamp(&clock).nanos, 0);
        // Before 1970 (a broken clock) reads as the epoch, never a negative timestamp.
        let early: SharedClock = ManualClock::at_unix_nanos(-5);
        assert_eq!(timestamp(&early), pbjson_types::Timestamp::default());
    }

    #[test]
    fn jitter_stays_within_half_to_one_and_a_half() {
        for _ in 0..200 {
            let j = jitter(Duration::from_secs(10));
            assert!(
                j >= Duration::from_secs(5) && j <= Duration::from_secs(15),
                "{j:?}"
            );
        }
    }

    #[test]
    fn peak_rss_is_read_from_proc() {
        // This test process has touched memory: its high-water mark is above zero.
        assert!(peak_rss_kib() > 0);
    }
}
