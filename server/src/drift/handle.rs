//! The engine's handles: the [`Notifier`] through which observed-state changes reach it, and
//! the [`DriftEngine`] through which readers ask it (answers come back on a oneshot) or read
//! what it publishes (progress, status, the last pass's figures). Neither touches its state.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use muster::pb;
use muster::selector::Selector;
use tokio::sync::{mpsc, oneshot, watch};

use super::engine::{self, Event, Query};
use super::query::PlannedChange;
use crate::inventory::Inventory;
use crate::model::ApiError;
use crate::store::Store;

/// Where observed-state changes are sent to the engine (held by the inventory; cheap to
/// clone). Sending never waits: the engine coalesces what arrived while it was busy.
#[derive(Debug, Clone)]
pub struct Notifier {
    tx: mpsc::UnboundedSender<Event>,
    /// Observed changes sent so far; the engine reports how many it has taken in.
    sent: Arc<AtomicU64>,
}

impl Notifier {
    /// Every section: the whole of a device's observed state may have changed.
    pub const ALL: u32 = u32::MAX;

    /// Marks sections of a device's observed facts as changed (`ALL` when unsure).
    pub fn observed(&self, device_id: &str, sections: u32) {
        self.sent.fetch_add(1, Ordering::SeqCst);
        // A stopped engine has nobody to tell.
        let _ = self.tx.send(Event::Observed {
            device_id: device_id.to_string(),
            sections,
        });
    }

    /// A campaign's layer of a device's desired state was durably put (`Some`) or removed.
    /// Send only once the write is durable: the engine writes drift from it.
    pub fn overlay(
        &self,
        device_id: &str,
        campaign_id: &str,
        overlay: Option<super::desired::Overlay>,
    ) {
        self.sent.fetch_add(1, Ordering::SeqCst);
        let _ = self.tx.send(Event::Overlay {
            device_id: device_id.to_string(),
            campaign_id: campaign_id.to_string(),
            overlay,
        });
    }

    pub(super) fn send(&self, ev: Event) -> bool {
        self.tx.send(ev).is_ok()
    }
}

/// The receiving end of a [`Notifier`], handed to [`DriftEngine::start`].
#[derive(Debug)]
pub struct Mailbox {
    rx: mpsc::UnboundedReceiver<Event>,
    notifier: Notifier,
}

/// A new engine mailbox and the notifier that feeds it.
pub fn mailbox() -> (Notifier, Mailbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let notifier = Notifier {
        tx,
        sent: Arc::new(AtomicU64::new(0)),
    };
    (
        notifier.clone(),
        Mailbox {
            rx,
            notifier: notifier.clone(),
        },
    )
}

/// Whether the engine can answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineStatus {
    /// Reading profiles and devices; questions wait.
    Loading,
    /// Following the event log.
    Running,
    /// It could not load the store: drift and plans are unavailable until a restart.
    Failed(String),
    /// Shut down.
    Stopped,
}

/// How far the engine has caught up: event-log revision, and observed changes taken in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub revision: u64,
    pub observed: u64,
}

/// Statistics of the last recompute pass (for benchmarks and metrics).
#[derive(Debug, Clone, Copy, Default)]
pub struct PassStats {
    pub devices: usize,
    pub compute: Duration,
    pub writes: usize,
    pub write: Duration,
}

/// A handle on the running engine: ask it, or read what it publishes. Cheap to clone.
#[derive(Clone)]
pub struct DriftEngine {
    notifier: Notifier,
    store: Arc<dyn Store>,
    progress: watch::Receiver<Progress>,
    status: watch::Receiver<EngineStatus>,
    last_pass: watch::Receiver<PassStats>,
}

impl std::fmt::Debug for DriftEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriftEngine")
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

impl DriftEngine {
    /// Starts the engine's task: it loads profiles and devices on a blocking thread, then
    /// follows the event log and its mailbox. Questions wait for the load (their callers wait
    /// through `caught_up`), so musterd serves at once instead of decoding every device body
    /// before it listens (~1.5 s and ~400 MB of transient memory at 100,000 devices).
    pub fn start(inventory: Arc<Inventory>, mailbox: Mailbox) -> Self {
        let store = Arc::clone(inventory.store());
        let (progress_tx, progress) = watch::channel(Progress::default());
        let (status_tx, status) = watch::channel(EngineStatus::Loading);
        let (last_pass_tx, last_pass) = watch::channel(PassStats::default());
        let handle = Self {
            notifier: mailbox.notifier.clone(),
            store,
            progress,
            status,
            last_pass,
        };
        engine::spawn(
            inventory,
            mailbox.rx,
            engine::Publish {
                progress: progress_tx,
                status: status_tx,
                last_pass: last_pass_tx,
            },
        );
        handle
    }

    /// How far the engine has caught up.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// Whether it is loading, running, failed or stopped.
    pub fn status(&self) -> watch::Receiver<EngineStatus> {
        self.status.clone()
    }

    /// Whether it is loading or running (not failed or stopped).
    pub fn answering(&self) -> bool {
        matches!(
            *self.status.borrow(),
            EngineStatus::Loading | EngineStatus::Running
        )
    }

    /// Statistics of the last pass.
    pub fn last_pass(&self) -> PassStats {
        *self.last_pass.borrow()
    }

    /// Waits (at most `limit`) until the engine has taken in every change committed and every
    /// observed change sent before this call, so a read after a write sees its drift. False
    /// at once when the engine failed or stopped.
    pub async fn caught_up(&self, limit: Duration) -> bool {
        let want = Progress {
            revision: self.store.revision(),
            observed: self.notifier.sent.load(Ordering::SeqCst),
        };
        let mut progress = self.progress.clone();
        let mut status = self.status.clone();
        let caught = async {
            // Status first: a stopped engine's progress may cover everything, yet it answers
            // nothing.
            tokio::select! {
                biased;
                _ = status.wait_for(|s| matches!(s, EngineStatus::Failed(_) | EngineStatus::Stopped)) => false,
                r = progress.wait_for(|p| p.revision >= want.revision && p.observed >= want.observed) => r.is_ok(),
            }
        };
        tokio::time::timeout(limit, caught).await.unwrap_or(false)
    }

    /// Drift of the devices `selector` chooses.
    pub async fn drift(
        &self,
        selector: Selector,
        field_prefix: String,
        summary_only: bool,
    ) -> Result<pb::DriftResponse, ApiError> {
        self.ask(|reply| Query::Drift {
            selector,
            field_prefix,
            summary_only,
            reply,
        })
        .await
    }

    /// What the given new versions of profiles and devices would do: per device, the change
    /// of effective desired state and the drift afterwards; and the conflicts they create.
    pub async fn plan(
        &self,
        change: PlannedChange,
        include_unchanged: bool,
    ) -> Result<pb::PlanResponse, ApiError> {
        self.ask(|reply| Query::Plan {
            change: Box::new(change),
            include_unchanged,
            reply,
        })
        .await
    }

    /// For `drift accept`: the device's current item for `field`.
    pub async fn item(&self, device: &str, field: &str) -> Result<Option<pb::DriftItem>, ApiError> {
        self.ask(|reply| Query::Item {
            device: device.to_string(),
            field: field.to_string(),
            reply,
        })
        .await
    }

    /// Asks the engine to stop after its current pass.
    pub fn shutdown(&self) {
        self.notifier.send(Event::Shutdown);
    }

    async fn ask<T>(
        &self,
        query: impl FnOnce(oneshot::Sender<Result<T, ApiError>>) -> Query,
    ) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        if !self.notifier.send(Event::Ask(query(tx))) {
            return Err(stopped());
        }
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }
}

fn stopped() -> ApiError {
    ApiError::Unavailable("the drift engine has stopped".into())
}
