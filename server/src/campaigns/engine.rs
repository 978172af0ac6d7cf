//! The engine task, its handle and the round structure (see `mod.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use muster::pb;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::executor::{Executor, Recovered, StepRequest, StepResult};
use super::lease::CampaignLease;
use super::observe::{Expectations, Observer};
use super::records::{self, CampaignData, HostData};
use crate::campaign::calendar::Calendar;
use crate::campaign::host::HostState;
use crate::campaign::{CampaignSpec, CampaignState, Labels, Plan};
use crate::inventory::{ChangeContext, Inventory};
use crate::model::{ApiError, Principal, timestamp};
use crate::store::ChangeMeta;

/// How often the engine looks at the clock without an event (windows, deadlines, reports).
pub const TICK: Duration = Duration::from_millis(100);
/// Events handled per round at most, so a flood cannot starve the writes.
const EVENTS_PER_ROUND: usize = 4096;
/// Seconds the calendar reaches beyond its horizon.
pub const CALENDAR_EXTRA: i64 = 3 * 24 * 3600;
/// The engine's principal in the audit trail.
pub const SYSTEM: &str = "system:campaign";

/// What the engine is built from.
#[derive(Debug, Clone)]
pub struct Parts {
    pub executor: Arc<dyn Executor>,
    pub observer: Arc<dyn Observer>,
    pub lease: Arc<dyn CampaignLease>,
}

/// A person's action on one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostAction {
    Retry,
    MarkFailed,
    Rollback,
}

impl HostAction {
    pub fn verb(self) -> &'static str {
        match self {
            Self::Retry => "campaign host retry",
            Self::MarkFailed => "campaign host mark-failed",
            Self::Rollback => "campaign host rollback",
        }
    }
}

/// Operator commands and queries.
#[derive(Debug, Clone)]
pub enum Command {
    Create(Box<pb::Campaign>),
    Plan {
        name: String,
        inline: Option<Box<pb::Campaign>>,
    },
    Submit(String),
    Edit(String, Box<pb::CampaignSpec>),
    Approve {
        name: String,
        digest: String,
    },
    Promote(String),
    Start(String),
    Pause(String),
    Resume(String),
    Abort(String),
    Get {
        name: String,
        summary_only: bool,
    },
    Report(String),
    Host {
        action: HostAction,
        name: String,
        host: String,
    },
}

impl Command {
    /// The audit verb of a write (None: a read).
    pub fn verb(&self) -> Option<&'static str> {
        Some(match self {
            Self::Create(_) => "campaign create",
            Self::Submit(_) => "campaign submit",
            Self::Edit(..) => "campaign edit",
            Self::Approve { .. } => "campaign approve",
            Self::Promote(_) => "campaign promote",
            Self::Start(_) => "campaign start",
            Self::Pause(_) => "campaign pause",
            Self::Resume(_) => "campaign resume",
            Self::Abort(_) => "campaign abort",
            Self::Host { action, .. } => action.verb(),
            Self::Plan { .. } | Self::Get { .. } | Self::Report(_) => return None,
        })
    }

    /// The campaign named.
    pub fn name(&self) -> String {
        match self {
            Self::Create(c) => c.meta.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
            Self::Plan { name, inline } => inline
                .as_ref()
                .and_then(|c| c.meta.as_ref().map(|m| m.name.clone()))
                .unwrap_or_else(|| name.clone()),
            Self::Submit(n)
            | Self::Edit(n, _)
            | Self::Promote(n)
            | Self::Start(n)
            | Self::Pause(n)
            | Self::Resume(n)
            | Self::Abort(n)
            | Self::Report(n) => n.clone(),
            Self::Approve { name, .. } | Self::Get { name, .. } | Self::Host { name, .. } => {
                name.clone()
            }
        }
    }
}

/// Answers.
#[derive(Debug)]
pub enum Reply {
    Campaign(Box<pb::CampaignResponse>),
    Plan(Box<pb::PlanCampaignResponse>),
    Report(Box<pb::CampaignReport>),
}

type ReplyTx = oneshot::Sender<Result<Reply, ApiError>>;

/// Everything that moves the engine.
pub enum Event {
    Command {
        who: Principal,
        ctx: ChangeContext,
        cmd: Command,
        reply: ReplyTx,
    },
    StepFinished {
        campaign: String,
        host: usize,
        intent_id: String,
        result: StepResult,
    },
    /// What the host knew of a step interrupted by a restart (`Executor::recover`).
    Recovered {
        campaign: String,
        host: usize,
        intent_id: String,
        recovered: Recovered,
    },
    /// A Window (or freeze) was written: lay the calendar out again.
    WindowsChanged,
    Tick,
    Shutdown,
}

/// Summaries of every campaign, as last published.
pub type Summaries = BTreeMap<String, pb::CampaignSummary>;

/// One transition, broadcast to watchers: (campaign name, progress).
pub type ProgressEvent = Arc<(String, pb::CampaignProgress)>;

/// The handle the API holds.
#[derive(Debug, Clone)]
pub struct Campaigns {
    tx: mpsc::UnboundedSender<Event>,
    summaries: watch::Receiver<Arc<Summaries>>,
    progress: broadcast::Sender<ProgressEvent>,
    inventory: Arc<Inventory>,
}

impl Campaigns {
    /// Starts the engine task; it resumes every non-terminal campaign first.
    pub fn start(inventory: Arc<Inventory>, parts: Parts) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (sum_tx, sum_rx) = watch::channel(Arc::new(Summaries::new()));
        let (progress, _) = broadcast::channel(4096);
        let engine = Engine {
            inventory: Arc::clone(&inventory),
            parts,
            runs: BTreeMap::new(),
            tx: tx.clone(),
            progress: progress.clone(),
            summaries: sum_tx,
            round: Round::default(),
            calendar: None,
            labels: Arc::new(Default::default()),
            loaded: false,
        };
        let task = tokio::spawn(engine.run(rx));
        super::window_watch::forward(&inventory, tx.clone());
        (
            Self {
                tx,
                summaries: sum_rx,
                progress,
                inventory,
            },
            task,
        )
    }

    /// Sends a command and waits for its answer (given once its effects are durable).
    pub async fn command(
        &self,
        who: Principal,
        ctx: ChangeContext,
        cmd: Command,
    ) -> Result<Reply, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Event::Command {
                who,
                ctx,
                cmd,
                reply,
            })
            .map_err(|_| ApiError::ShuttingDown)?;
        rx.await.map_err(|_| ApiError::ShuttingDown)?
    }

    /// The published summaries.
    pub fn summaries(&self) -> Arc<Summaries> {
        Arc::clone(&self.summaries.borrow())
    }

    /// Transitions from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ProgressEvent> {
        self.progress.subscribe()
    }

    /// The store, for reads that need no engine state (step output).
    pub fn inventory(&self) -> &Arc<Inventory> {
        &self.inventory
    }

    /// Asks the engine to stop after its current round.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Event::Shutdown);
    }
}

/// A planned host at run time.
#[derive(Debug, Clone)]
pub struct HostRt {
    pub data: HostData,
    pub state: HostState,
    /// A step was handed to the executor and its result has not come back.
    pub in_flight: bool,
    /// Clock seconds when a restarted engine asked the host about this in-flight step
    /// (0: not recovering); the executor's patience counts from here, not the deadline.
    pub recovering_since: i64,
    pub dirty: bool,
}

/// One campaign at run time.
#[derive(Debug)]
pub struct Run {
    pub id: String,
    pub name: String,
    pub revision: u64,
    /// Meta and spec as stored; status is rebuilt from the fields below.
    pub resource: pb::Campaign,
    pub spec: Option<CampaignSpec>,
    pub plan: Option<Plan>,
    pub plan_pb: Option<pb::CampaignPlan>,
    pub digest: String,
    pub data: CampaignData,
    pub state: CampaignState,
    pub hosts: Vec<HostRt>,
    pub expect: Expectations,
    /// Why nothing (more) starts, for the summary.
    pub waiting: String,
    pub wave: Option<usize>,
    pub window_closes: Option<i64>,
    pub message: String,
    /// The summary must be republished.
    pub changed: bool,
}

/// A resource write queued this round (each carries its own audit metadata).
pub struct ResourceWrite {
    pub name: String,
    pub body: pb::Campaign,
    pub data: Vec<u8>,
    pub meta: ChangeMeta,
    /// Further records written in its batch (the campaign's desired-state layers it removes).
    pub aux: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// A completion's profile: written with it as one change set.
    pub keep: Option<super::overlay::Keep>,
}

/// What a round has to write and do once durable.
#[derive(Default)]
pub struct Round {
    pub resources: Vec<ResourceWrite>,
    pub puts: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub dispatch: Vec<(String, usize, StepRequest)>,
    /// Interrupted steps to look up on their hosts once this round is durable.
    pub recover: Vec<(String, usize, StepRequest)>,
    pub replies: Vec<(ReplyTx, Result<Reply, ApiError>)>,
    /// Desired-state layers put or removed, for the drift engine once durable.
    pub overlays: Vec<super::overlay::Notice>,
}

/// The engine's state: owned by its task alone.
pub struct Engine {
    pub inventory: Arc<Inventory>,
    pub parts: Parts,
    pub runs: BTreeMap<String, Run>,
    tx: mpsc::UnboundedSender<Event>,
    progress: broadcast::Sender<ProgressEvent>,
    summaries: watch::Sender<Arc<Summaries>>,
    pub round: Round,
    /// Windows laid out, and when (clock seconds) that was done.
    pub calendar: Option<(Arc<Calendar>, i64)>,
    /// Every device's labels, refreshed with the calendar.
    pub labels: Arc<std::collections::HashMap<String, Labels>>,
    loaded: bool,
}

impl Engine {
    pub fn now(&self) -> i64 {
        self.inventory.clock().now_unix_seconds()
    }

    pub fn now_nanos(&self) -> i64 {
        self.inventory.now_unix_nanos()
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Event>) {
        if let Err(e) = self.load() {
            tracing::error!(error = %e, "campaign engine could not load its campaigns");
        }
        self.loaded = true;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop = false;
        while !stop {
            let first = tokio::select! {
                ev = rx.recv() => ev.unwrap_or(Event::Shutdown),
                _ = tick.tick() => Event::Tick,
            };
            stop = !self.handle(first);
            let mut n = 1;
            while !stop && n < EVENTS_PER_ROUND {
                match rx.try_recv() {
                    Ok(ev) => stop = !self.handle(ev),
                    Err(_) => break,
                }
                n += 1;
            }
            self.advance();
            self.flush().await;
            self.publish();
        }
    }

    /// Handles one event; false on shutdown.
    fn handle(&mut self, ev: Event) -> bool {
        match ev {
            Event::Shutdown => return false,
            Event::Tick => {}
            Event::WindowsChanged => self.invalidate_calendar(),
            Event::Command {
                who,
                ctx,
                cmd,
                reply,
            } => {
                let r = self.command(&who, &ctx, cmd);
                self.round.replies.push((reply, r));
            }
            Event::StepFinished {
                campaign,
                host,
                intent_id,
                result,
            } => {
                self.audit_step_result(&campaign, host, &result);
                self.step_finished(&campaign, host, &intent_id, result)
            }
            Event::Recovered {
                campaign,
                host,
                intent_id,
                recovered,
            } => {
                if let Recovered::Finished(result) = &recovered {
                    self.audit_step_result(&campaign, host, result);
                }
                self.recovered(&campaign, host, &intent_id, recovered)
            }
        }
        true
    }

    pub(super) fn dispatch(&mut self, campaign: String, host: usize, req: StepRequest) {
        let fut = self.parts.executor.run(req.clone());
        self.answer_later(async move {
            let result = fut.await;
            Event::StepFinished {
                campaign,
                host,
                intent_id: req.intent_id,
                result,
            }
        });
    }

    pub(super) fn dispatch_recovery(&mut self, campaign: String, host: usize, req: StepRequest) {
        let fut = self.parts.executor.recover(req.clone());
        self.answer_later(async move {
            let recovered = fut.await;
            Event::Recovered {
                campaign,
                host,
                intent_id: req.intent_id,
                recovered,
            }
        });
    }

    /// Feeds the event `fut` resolves to back to the engine.
    fn answer_later(&self, fut: impl std::future::Future<Output = Event> + Send + 'static) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(fut.await);
        });
    }

    /// Republishes the summaries of campaigns that changed.
    fn publish(&mut self) {
        if !self.runs.values().any(|r| r.changed) && self.loaded {
            return;
        }
        let mut all = (**self.summaries.borrow()).clone();
        all.retain(|k, _| self.runs.contains_key(k));
        for run in self.runs.values_mut() {
            if run.changed || !all.contains_key(&run.name) {
                all.insert(run.name.clone(), super::view::summary(run));
                run.changed = false;
            }
        }
        self.summaries.send_replace(Arc::new(all));
    }

    /// Broadcasts one transition to watchers.
    pub fn broadcast(&self, run: &Run, t: &records::TransitionRec, host: &str) {
        if self.progress.receiver_count() == 0 {
            return;
        }
        let p = pb::CampaignProgress {
            summary: Some(super::view::summary(run)),
            transition: Some(super::view::transition(t, host)),
        };
        let _ = self.progress.send(Arc::new((run.name.clone(), p)));
    }

    /// Queues the campaign's resource (and its record) for writing with this audit entry.
    pub fn queue_resource(&mut self, name: &str, who: &str, verb: &str, ctx: &ChangeContext) {
        let now = self.now_nanos();
        let Some(run) = self.runs.get_mut(name) else {
            return;
        };
        let body = super::view::stored_body(run, now, who);
        run.resource.meta = body.meta.clone();
        let data = match records::encode_campaign(&run.data) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "encoding a campaign record");
                return;
            }
        };
        run.changed = true;
        self.round.resources.push(ResourceWrite {
            name: name.to_string(),
            body,
            data,
            aux: Vec::new(),
            keep: None,
            meta: ChangeMeta {
                principal: who.to_string(),
                verb: verb.to_string(),
                reason: ctx.reason.clone(),
                ticket: ctx.ticket.clone(),
                origin: if ctx.origin.is_empty() {
                    "campaign".into()
                } else {
                    ctx.origin.clone()
                },
                time_unix_nanos: now,
                ..ChangeMeta::default()
            },
        });
    }

    /// Queues every dirty host record of `name`.
    pub fn queue_hosts(&mut self, name: &str) {
        let Some(run) = self.runs.get_mut(name) else {
            return;
        };
        for (i, h) in run.hosts.iter_mut().enumerate() {
            if !h.dirty {
                continue;
            }
            h.dirty = false;
            match records::encode_host(&h.data) {
                Ok(b) => self
                    .round
                    .puts
                    .push((records::host_key(&run.id, i), Some(b))),
                Err(e) => tracing::error!(error = %e, "encoding a campaign host record"),
            }
        }
    }

    /// The calendar, rebuilt once a (clock) minute.
    pub fn calendar(&mut self) -> Result<Arc<Calendar>, ApiError> {
        let now = self.now();
        if let Some((c, at)) = &self.calendar
            && now - at < 60
            && now >= *at
        {
            return Ok(Arc::clone(c));
        }
        let c = Arc::new(super::fleet::calendar(
            &self.inventory,
            now,
            CALENDAR_EXTRA,
        )?);
        let (_, labels) = super::fleet::candidates_labels(&self.inventory)?;
        self.labels = Arc::new(labels);
        self.calendar = Some((Arc::clone(&c), now));
        Ok(c)
    }

    /// Forgets the calendar (windows or devices changed through a command).
    pub fn invalidate_calendar(&mut self) {
        self.calendar = None;
    }

    /// A timestamp for pb.
    pub fn ts(nanos: i64) -> Option<pbjson_types::Timestamp> {
        (nanos > 0).then(|| timestamp(nanos))
    }
}
