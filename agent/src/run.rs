//! The agent's work: enroll once, then collect → spool → send, every interval the server
//! assigns. Each collector runs under its own deadline; one that fails or times out leaves its
//! section unchanged at the server (its last good data) and says so in the report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use muster::pb::{self, agent_service_client::AgentServiceClient};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tonic::transport::Channel;

use crate::collect;
use crate::config::AgentConfig;
use crate::fit;
use crate::identity::{self, IdentityError, Paths, write_atomic};
use crate::report::Chain;
use crate::spool::{Spool, SpoolError};

mod renew;

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

/// What survives agent restarts besides the spool: the sequence, the chain, the SEL cursor.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    seq: u64,
    chain: Chain,
    sel_cursor: Option<u16>,
}

/// Last good data per collector.
#[derive(Debug, Clone, Default)]
struct Freshness {
    last_success: BTreeMap<&'static str, SystemTime>,
}

impl Freshness {
    fn status(
        &mut self,
        name: &'static str,
        error: Option<String>,
        took: Duration,
    ) -> pb::CollectorStatus {
        let took = Duration::from_millis(u64::try_from(took.as_millis()).unwrap_or(u64::MAX));
        if error.is_none() {
            self.last_success.insert(name, SystemTime::now());
        }
        pb::CollectorStatus {
            name: name.into(),
            error: error.unwrap_or_default(),
            last_success: self.last_success.get(name).map(|t| {
                let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
                pbjson_types::Timestamp {
                    seconds: i64::try_from(d.as_secs()).unwrap_or(0),
                    nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
                }
            }),
            took: Some(pbjson_types::Duration {
                seconds: i64::try_from(took.as_secs()).unwrap_or(0),
                nanos: i32::try_from(took.subsec_nanos()).unwrap_or(0),
            }),
        }
    }
}

/// One collection: complete facts (collectors that failed keep their last good section),
/// new SEL events, and each collector's status.
#[derive(Debug, Clone, Default)]
pub struct Collected {
    pub facts: pb::Facts,
    pub sel: Vec<pb::SelEntry>,
    pub sel_reset: bool,
    pub collectors: Vec<pb::CollectorStatus>,
    pub boot_id: String,
    /// CPU time this process spent on the collection.
    pub cpu_time: Duration,
}

/// Collectors and what they remember between runs.
pub struct Collectors {
    cfg: AgentConfig,
    ipmi: Option<Arc<Mutex<collect::ipmi::IpmiCollector>>>,
    ipmi_busy: Arc<AtomicBool>,
    /// SEL cursor of the last spooled report: every IPMI collection starts from it, so events
    /// of a snapshot that was lost (deadline, error) are read again.
    spooled_cursor: Option<u16>,
    /// SEL cursor of the latest collection, persisted once its report is spooled.
    collected_cursor: Option<u16>,
    freshness: Freshness,
    /// The complete facts as of the last collection.
    current: pb::Facts,
    boot_id: String,
    /// The package manager the packages collector last got its list from ("deb" or "rpm"). It
    /// overrides the OS collector's guess from the package databases in `OsFacts.package_format`,
    /// since it is what the reported versions were written by.
    package_format: Option<&'static str>,
}

impl std::fmt::Debug for Collectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collectors").finish_non_exhaustive()
    }
}

fn process_cpu_time() -> Duration {
    // utime + stime from /proc/self/stat, in clock ticks (100 Hz on Linux).
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return Duration::ZERO;
    };
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

impl Collectors {
    /// Sets up the collectors the config asks for.
    pub fn new(cfg: &AgentConfig, sel_cursor: Option<u16>) -> Result<Self, AgentError> {
        let ipmi = match &cfg.bmc {
            Some(spec) => {
                let password = match &cfg.bmc_password_file {
                    Some(p) => Some(
                        std::fs::read_to_string(p)
                            .map_err(|e| AgentError::Config(format!("{}: {e}", p.display())))?
                            .trim_end_matches(['\n', '\r'])
                            .to_string(),
                    ),
                    None => None,
                };
                let ep = collect::ipmi::BmcEndpoint::parse(spec, password)
                    .map_err(|e| AgentError::Config(format!("bmc: {e}")))?;
                // Each network wait gets a share of the deadline; the collector makes several.
                let c = collect::ipmi::IpmiCollector::new(ep, cfg.deadlines.ipmi / 4);
                Some(Arc::new(Mutex::new(c)))
            }
            None => None,
        };
        Ok(Self {
            cfg: cfg.clone(),
            ipmi,
            ipmi_busy: Arc::new(AtomicBool::new(false)),
            spooled_cursor: sel_cursor,
            collected_cursor: sel_cursor,
            freshness: Freshness::default(),
            current: pb::Facts::default(),
            boot_id: String::new(),
            package_format: None,
        })
    }

    /// The report carrying the latest collection's SEL events is spooled: its cursor is now
    /// the one to persist and to start from.
    pub fn sel_spooled(&mut self) -> Option<u16> {
        self.spooled_cursor = self.collected_cursor;
        self.spooled_cursor
    }

    /// Runs every collector under its deadline.
    pub async fn collect(&mut self) -> Collected {
        let cpu_before = process_cpu_time();
        let d = self.cfg.deadlines.clone();
        let mut out = Collected::default();
        let mut statuses = Vec::new();

        // OS facts.
        let t = Instant::now();
        let sysctl_keys = self.cfg.sysctl_keys.clone();
        let os = tokio::time::timeout(
            d.os,
            tokio::task::spawn_blocking(move || collect::os::collect_with(&sysctl_keys)),
        )
        .await;
        let err = match os {
            Ok(Ok(Ok(s))) => {
                self.current.os = Some(s.os);
                self.current.cpu = Some(s.cpu);
                self.current.memory_bytes = Some(s.memory_bytes);
                self.current.nics = Some(pb::NicList { items: s.nics });
                self.current.disks = Some(pb::BlockDeviceList { items: s.disks });
                self.boot_id = s.boot_id;
                None
            }
            Ok(Ok(Err(e))) => Some(e.to_string()),
            Ok(Err(e)) => Some(format!("collector panicked: {e}")),
            Err(_) => Some(format!(
                "timed out after {}",
                humantime::format_duration(d.os)
            )),
        };
        statuses.push(self.freshness.status("os", err, t.elapsed()));

        if self.cfg.packages {
            let t = Instant::now();
            let listing = collect::packages::collect_listing(
                std::path::Path::new("dpkg-query"),
                std::path::Path::new("rpm"),
            );
            let err = match tokio::time::timeout(d.packages, listing).await {
                Ok(Ok((format, p))) => {
                    self.current.packages = Some(pb::PackageList { items: p });
                    self.package_format = Some(format.as_str());
                    None
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!(
                    "timed out after {}",
                    humantime::format_duration(d.packages)
                )),
            };
            statuses.push(self.freshness.status("packages", err, t.elapsed()));
        }

        if let Some(ipmi) = &self.ipmi {
            let t = Instant::now();
            let err = if self.ipmi_busy.swap(true, Ordering::SeqCst) {
                // The previous collection is still stuck in the BMC: never pile up threads.
                Some("the previous IPMI collection has not finished; BMC unresponsive".to_string())
            } else {
                let ipmi = Arc::clone(ipmi);
                let busy = Arc::clone(&self.ipmi_busy);
                let from = self.spooled_cursor;
                let task = tokio::task::spawn_blocking(move || {
                    let r = ipmi
                        .lock()
                        .map_err(|_| "IPMI collector poisoned".to_string())
                        .and_then(|mut c| {
                            c.set_sel_cursor(from);
                            let snap = c.collect().map_err(|e| e.to_string())?;
                            Ok((snap, c.sel_cursor()))
                        });
                    busy.store(false, Ordering::SeqCst);
                    r
                });
                match tokio::time::timeout(d.ipmi, task).await {
                    Ok(Ok(Ok((snap, cursor)))) => {
                        self.collected_cursor = cursor;
                        self.current.sensors = Some(pb::SensorList {
                            items: snap.sensors,
                        });
                        if snap.fru.is_some() {
                            self.current.fru = snap.fru;
                        }
                        self.current.power = Some(snap.power as i32);
                        if let Some(fw) = snap.firmware {
                            let f = self.current.firmware.get_or_insert_with(Default::default);
                            f.bmc = fw;
                        }
                        out.sel = snap.new_sel;
                        out.sel_reset = snap.sel_reset;
                        None
                    }
                    Ok(Ok(Err(e))) => Some(e),
                    Ok(Err(e)) => Some(format!("collector panicked: {e}")),
                    Err(_) => Some(format!(
                        "BMC did not answer within {}",
                        humantime::format_duration(d.ipmi)
                    )),
                }
            };
            statuses.push(self.freshness.status("ipmi", err, t.elapsed()));
        }

        if self.cfg.smart {
            let t = Instant::now();
            let smartctl = self.cfg.smartctl.clone();
            let disks = self.cfg.disks.clone();
            let run = async move {
                let refs = if disks.is_empty() {
                    collect::smart::scan(&smartctl)
                        .await
                        .map_err(|e| e.to_string())?
                } else {
                    disks
                        .iter()
                        .map(|s| collect::smart::DiskRef::parse(s))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| e.to_string())?
                };
                let (found, errors) = collect::smart::collect_all(&smartctl, &refs).await;
                Ok::<_, String>((found, errors))
            };
            let err = match tokio::time::timeout(d.smart, run).await {
                Ok(Ok((found, errors))) => {
                    self.current.smart = Some(pb::SmartList { items: found });
                    if errors.is_empty() {
                        None
                    } else {
                        Some(
                            errors
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join("; "),
                        )
                    }
                }
                Ok(Err(e)) => Some(e),
                Err(_) => Some(format!(
                    "timed out after {}",
                    humantime::format_duration(d.smart)
                )),
            };
            statuses.push(self.freshness.status("smart", err, t.elapsed()));
        }

        if let Some(uri) = self.cfg.libvirt_uri.clone() {
            let t = Instant::now();
            let err = match tokio::time::timeout(
                d.libvirt,
                collect::libvirt::collect(&self.cfg.virsh, &uri),
            )
            .await
            {
                Ok(Ok(vms)) => {
                    self.current.vms = Some(pb::VirtualMachineList { items: vms });
                    None
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!(
                    "timed out after {}",
                    humantime::format_duration(d.libvirt)
                )),
            };
            statuses.push(self.freshness.status("libvirt", err, t.elapsed()));
        }

        if let Some(dir) = self.cfg.external_facts_dir.clone() {
            let t = Instant::now();
            let each = d.external / 2;
            let err = match tokio::time::timeout(d.external, collect::external::collect(&dir, each))
                .await
            {
                Ok(ext) => {
                    self.current.external_json =
                        Some(collect::external::canonical_json(&ext.facts));
                    if ext.errors.is_empty() {
                        None
                    } else {
                        Some(ext.errors.join("; "))
                    }
                }
                Err(_) => Some(format!(
                    "timed out after {}",
                    humantime::format_duration(d.external)
                )),
            };
            statuses.push(self.freshness.status("external", err, t.elapsed()));
        }

        if let (Some(format), Some(os)) = (self.package_format, self.current.os.as_mut()) {
            os.package_format = format.to_string();
        }
        out.facts = self.current.clone();
        out.collectors = statuses;
        out.boot_id = self.boot_id.clone();
        out.cpu_time = process_cpu_time().saturating_sub(cpu_before);
        out
    }
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
    /// The server said the certificate should be renewed.
    renew_hint: bool,
    /// After a failed renewal, not before this.
    renew_retry_at: Option<Instant>,
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

fn state_path(cfg: &AgentConfig) -> PathBuf {
    cfg.state_dir.join("state.json")
}

fn load_state(cfg: &AgentConfig) -> Result<State, AgentError> {
    let p = state_path(cfg);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| AgentError::State {
            path: p,
            problem: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(AgentError::State {
            path: p,
            problem: e.to_string(),
        }),
    }
}

fn save_state(cfg: &AgentConfig, s: &State) -> Result<(), AgentError> {
    let bytes = serde_json::to_vec(s).map_err(|e| AgentError::State {
        path: state_path(cfg),
        problem: e.to_string(),
    })?;
    write_atomic(&state_path(cfg), &bytes, 0o600)?;
    Ok(())
}

/// The limit assumed until the server tells its own (musterd's default max_message_bytes).
const DEFAULT_LIMIT: usize = 4 * 1024 * 1024;
/// The largest message the agent's client encodes or decodes.
const MAX_ENCODED_REPORT: usize = 16 * 1024 * 1024;

impl Agent {
    /// Loads identity, state and spool.
    pub fn open(cfg: AgentConfig) -> Result<Self, AgentError> {
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
        let collectors = Collectors::new(&cfg, state.sel_cursor)?;
        Ok(Self {
            interval: cfg.interval,
            cfg,
            device,
            client,
            spool,
            state,
            collectors,
            need_full: true,
            renew_hint: false,
            renew_retry_at: None,
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

    fn learn_limit(&mut self, max_report_bytes: u64) {
        if let Ok(n) = usize::try_from(max_report_bytes)
            && n > 0
        {
            // Never above what this agent's own client encodes.
            self.limit = n.min(MAX_ENCODED_REPORT);
        }
    }

    /// Builds the report for `facts` on `template` (sequence, SEL, collectors), advancing the
    /// chain. Sections that would take it past the server's limit are left out (see `fit`)
    /// and their collectors marked failed; after a refusal (`refusals > 1`) all bulky ones are.
    fn build(
        &mut self,
        facts: &pb::Facts,
        full: bool,
        template: pb::ReportRequest,
    ) -> pb::ReportRequest {
        let mut trial_chain = self.state.chain.clone();
        let (base, delta, hash) = trial_chain.advance(facts, full);
        let mut report = pb::ReportRequest {
            base_hash: base,
            facts_hash: hash,
            facts: Some(delta),
            ..template
        };
        let dropped = fit::plan(&report, self.limit, self.refusals > 1);
        if dropped.is_empty() {
            self.state.chain = trial_chain;
            return report;
        }
        let skip: Vec<muster::facts::Section> = dropped.iter().map(|d| d.section).collect();
        let (base, delta, hash) = self.state.chain.advance_except(facts, full, &skip);
        report.base_hash = base;
        report.facts_hash = hash;
        report.facts = Some(delta);
        fit::mark(&mut report.collectors, &dropped, self.limit);
        tracing::warn!(
            seq = report.seq,
            sections = ?skip.iter().map(|s| s.number()).collect::<Vec<_>>(),
            limit = self.limit,
            "report would exceed the server's limit; left out its largest sections"
        );
        report
    }

    /// The device this agent reports for.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Collects once and spools the report (durably, before anything is sent).
    pub async fn collect_and_spool(&mut self) -> Result<Collected, AgentError> {
        let c = self.collectors.collect().await;
        let full = self.need_full;
        self.state.seq = self.state.seq.saturating_add(1);
        let template = pb::ReportRequest {
            device: self.device.clone(),
            boot_id: c.boot_id.clone(),
            seq: self.state.seq,
            agent_version: AGENT_VERSION.into(),
            collected_at: Some(now_ts()),
            sel: c.sel.clone(),
            sel_reset: c.sel_reset,
            collectors: c.collectors.clone(),
            ..Default::default()
        };
        self.last_collectors = c.collectors.clone();
        let report = self.build(&c.facts, full, template);
        self.spool.push(&report)?;
        self.need_full = false;
        self.state.sel_cursor = self.collectors.sel_spooled();
        save_state(&self.cfg, &self.state)?;
        Ok(c)
    }

    /// Sends spooled reports in order until the spool is empty or the server is unreachable.
    /// Returns whether everything was sent.
    pub async fn drain(&mut self) -> Result<bool, AgentError> {
        for seq in self.spool.sequences()? {
            let report = match self.spool.read(seq) {
                Ok(r) => r,
                Err(e @ SpoolError::Corrupt(_)) => {
                    tracing::error!(error = %e, "skipping a corrupt spooled report");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let sections: Vec<u8> = report
                .facts
                .as_ref()
                .map(|f| {
                    muster::facts::split(f)
                        .into_iter()
                        .map(|p| p.0.number())
                        .collect()
                })
                .unwrap_or_default();
            let bytes = prost::Message::encoded_len(&report);
            match self.client.report(report.clone()).await {
                Ok(resp) => {
                    let resp = resp.into_inner();
                    tracing::info!(
                        seq,
                        bytes,
                        full = report.base_hash.is_empty(),
                        sections = ?sections,
                        sel = report.sel.len(),
                        applied = resp.applied,
                        "reported"
                    );
                    self.renew_hint |= resp.renew_certificate;
                    self.learn_limit(resp.max_report_bytes);
                    if let Some(d) = resp.next_interval.filter(|d| d.seconds > 0 || d.nanos > 0) {
                        self.interval = Duration::new(
                            u64::try_from(d.seconds).unwrap_or(60),
                            u32::try_from(d.nanos).unwrap_or(0),
                        );
                    }
                    if resp.resync {
                        // The server holds a newer sequence than ours (state restored from an
                        // older copy): continue after it, with everything spooled as one full
                        // report.
                        tracing::warn!(
                            seq,
                            server_seq = resp.acked_seq,
                            "the server already holds a newer report sequence; continuing after it with a full report"
                        );
                        self.state.seq = self.state.seq.max(resp.acked_seq);
                        self.resend_full(report)?;
                        return Ok(false);
                    }
                    self.refusals = 0;
                    if resp.resend_full {
                        tracing::info!(seq, "the server holds other facts; sending a full report");
                        self.resend_full(report)?;
                        return Ok(false);
                    }
                    self.spool.remove(seq)?;
                }
                Err(status)
                    if fit::size_refusal(status.code(), status.message(), bytes, self.limit) =>
                {
                    // Never dropped: its SEL events go out again in a report rebuilt (full)
                    // to fit the limit, without the offending sections.
                    self.refusals = self.refusals.saturating_add(1);
                    tracing::warn!(seq, bytes, code = ?status.code(), error = %status.message(), "report refused; rebuilding it without its largest sections");
                    match fit::limit_in_message(status.message()) {
                        Some(n) => self.limit = n,
                        None => self.ask_limit().await,
                    }
                    self.resend_full(report)?;
                    return Ok(false);
                }
                Err(status) => {
                    tracing::warn!(seq, code = ?status.code(), error = %status.message(), "report not delivered; kept in the spool");
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Replaces everything spooled from `first` on with one full report carrying all their
    /// SEL events: the delta chain they build on is not what the server holds.
    fn resend_full(&mut self, first: pb::ReportRequest) -> Result<(), AgentError> {
        let mut sel = Vec::new();
        let mut sel_reset = false;
        let mut last = first;
        let replaced = self.spool.sequences()?;
        for seq in &replaced {
            let r = match self.spool.read(*seq) {
                Ok(r) => r,
                Err(SpoolError::Corrupt(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            if r.sel_reset {
                sel.clear();
                sel_reset = true;
            }
            sel.extend(r.sel.iter().cloned());
            last = r;
        }
        self.state.seq = self.state.seq.saturating_add(1);
        if !self.last_collectors.is_empty() {
            last.collectors = self.last_collectors.clone();
        }
        let template = pb::ReportRequest {
            seq: self.state.seq,
            sel,
            sel_reset,
            collected_at: Some(now_ts()),
            ..last
        };
        let current = self.collectors.current.clone();
        let full = self.build(&current, true, template);
        // The replacement is durable before what it replaces goes: a crash in between sends
        // some SEL events twice (the server skips the ones it has), never loses one.
        self.spool.push(&full)?;
        save_state(&self.cfg, &self.state)?;
        for seq in replaced {
            self.spool.remove(seq)?;
        }
        Ok(())
    }

    /// Asks the server for its report limit (a refusal did not name it).
    async fn ask_limit(&mut self) {
        let req = pb::HeartbeatRequest {
            device: self.device.clone(),
            boot_id: String::new(),
        };
        match self.client.heartbeat(req).await {
            Ok(r) => self.learn_limit(r.get_ref().max_report_bytes),
            Err(status) => {
                tracing::warn!(code = ?status.code(), error = %status.message(), "heartbeat failed; keeping the report limit assumed so far");
            }
        }
    }

    /// Runs until `shutdown` resolves: collect, spool, send; retry with jittered backoff.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
        tokio::pin!(shutdown);
        self.resume_chain().await?;
        let mut backoff = Duration::from_secs(1);
        loop {
            let started = Instant::now();
            let c = self.collect_and_spool().await?;
            tracing::info!(
                seq = self.state.seq,
                cpu_ms = c.cpu_time.as_millis() as u64,
                took_ms = started.elapsed().as_millis() as u64,
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
            let mut next_send = Instant::now() + wait;
            loop {
                let until = next_send.min(deadline);
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    () = tokio::time::sleep_until(until.into()) => {}
                }
                if Instant::now() >= deadline {
                    break;
                }
                if self.drain().await? {
                    backoff = Duration::from_secs(1);
                    next_send = deadline;
                } else {
                    next_send = Instant::now() + jitter(backoff);
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

fn now_ts() -> pbjson_types::Timestamp {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    pbjson_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(0),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// Enrolls: sends a CSR with the token, saves the certificate and CA. When the server holds
/// the enrollment for approval, waits (polling) until an operator approves or `wait` runs out.
pub async fn enroll(cfg: &AgentConfig, token: &str, wait: Duration) -> Result<String, AgentError> {
    let paths = Paths::new(&cfg.state_dir);
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    // The channel first: a refused server (plaintext to a remote host) leaves no key behind.
    let channel = identity::channel(&cfg.server, cfg.ca.as_deref(), &paths, false, cfg.insecure)?;
    let (_, csr) = identity::key_and_csr(&paths, &hostname)?;
    let mut client = AgentServiceClient::new(channel);
    let mut pending = std::fs::read_to_string(&paths.pending)
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let started = Instant::now();
    loop {
        let req = pb::EnrollRequest {
            token: if pending.is_empty() {
                token.to_string()
            } else {
                String::new()
            },
            csr_pem: csr.clone(),
            pending_id: pending.clone(),
            hostname: hostname.clone(),
        };
        let resp = match client.enroll(req).await {
            Ok(r) => r.into_inner(),
            // The held enrollment is gone (superseded or unknown): start over with the token.
            Err(s)
                if !pending.is_empty()
                    && !token.is_empty()
                    && s.code() == tonic::Code::Unauthenticated =>
            {
                let _ = std::fs::remove_file(&paths.pending);
                pending.clear();
                continue;
            }
            Err(s) => {
                return Err(AgentError::Enroll(format!(
                    "{:?}: {}",
                    s.code(),
                    s.message()
                )));
            }
        };
        match resp.result {
            Some(pb::enroll_response::Result::Identity(id)) => {
                write_atomic(&paths.cert, id.certificate_pem.as_bytes(), 0o644)?;
                write_atomic(&paths.ca, id.ca_pem.as_bytes(), 0o644)?;
                write_atomic(&paths.device, id.device.as_bytes(), 0o644)?;
                let _ = std::fs::remove_file(&paths.pending);
                let _ = std::fs::remove_file(&paths.csr);
                // A renewal left over from the previous identity must not replace this one.
                let _ = std::fs::remove_file(&paths.cert_next);
                let _ = std::fs::remove_file(&paths.key_next);
                return Ok(id.device);
            }
            Some(pb::enroll_response::Result::Pending(p)) => {
                if pending.is_empty() {
                    write_atomic(&paths.pending, p.pending_id.as_bytes(), 0o600)?;
                    pending = p.pending_id.clone();
                    eprintln!("muster-agent: {}", p.message);
                }
                if started.elapsed() >= wait {
                    return Err(AgentError::Enroll(format!(
                        "still waiting for approval ({}); run enroll again later to collect the identity",
                        p.message
                    )));
                }
                let retry = p.retry_after.map_or(Duration::from_secs(10), |d| {
                    Duration::from_secs(u64::try_from(d.seconds).unwrap_or(10).max(1))
                });
                tokio::time::sleep(
                    retry
                        .min(wait.saturating_sub(started.elapsed()))
                        .max(Duration::from_millis(200)),
                )
                .await;
            }
            None => return Err(AgentError::Enroll("empty answer from the server".into())),
        }
    }
}
