//! The event stream: accepted changes after a revision, filtered by kind and labels, sent
//! only once durable, with bookmarks while idle, ending when the server stops.

use std::sync::Arc;

use muster::pb;
use tokio::sync::mpsc;

use super::query::label_selector;
use super::{BOOKMARK_INTERVAL, ChangeContext, Inventory, WatchParams, internal};
use crate::model::{ApiError, Principal, kind_from_id, kind_id};
use crate::store::ChangeEntry;

impl Inventory {
    fn change_to_event(&self, c: &ChangeEntry) -> Result<pb::WatchEvent, ApiError> {
        let kind = kind_from_id(c.kind);
        let (ty, body) = match (&c.before, &c.after) {
            (_, Some(after)) if c.before_revision == 0 => (pb::EventType::Added, after),
            (_, Some(after)) => (pb::EventType::Modified, after),
            (Some(before), None) => (pb::EventType::Deleted, before),
            (None, None) => return Err(internal("change without a body")),
        };
        Ok(pb::WatchEvent {
            revision: c.revision,
            r#type: ty as i32,
            object: Some(self.view(kind, body, c.revision)?),
        })
    }

    /// Streams events after `since_revision` (0: from now), filtered by kind and selector,
    /// until the receiver is dropped. Only durable revisions are sent, so a client resuming
    /// after a server crash never misses or repeats an event. A refusal is audited.
    pub fn watch(
        self: &Arc<Self>,
        who: &Principal,
        p: WatchParams,
    ) -> Result<mpsc::Receiver<Result<pb::WatchEvent, ApiError>>, ApiError> {
        let target = p.kind.unwrap_or_default();
        let r = self.open_watch(who, p);
        self.audit_refusal(who, "watch", target, "", &ChangeContext::default(), r)
    }

    fn open_watch(
        self: &Arc<Self>,
        who: &Principal,
        p: WatchParams,
    ) -> Result<mpsc::Receiver<Result<pb::WatchEvent, ApiError>>, ApiError> {
        let kind = p.kind.map(kind_id);
        let since = p.since_revision;
        let selector = label_selector("selector", &p.selector)?;
        let mut durable = self.store.durable();
        let current = match &*durable.borrow_and_update() {
            Ok(d) => *d,
            Err(e) => return Err(ApiError::Unavailable(e.clone())),
        };
        if since > current {
            return Err(ApiError::OutOfRange(format!(
                "since_revision {since} is ahead of the store (revision {current})"
            )));
        }
        let mut last = if since == 0 { current } else { since };
        // Held by the stream's task: the slot frees when the client goes away.
        let permit = self.watch_permit(who)?;
        let (tx, rx) = mpsc::channel(256);
        let this = Arc::clone(self);
        let mut stopping = self.stopping.subscribe();
        tokio::spawn(async move {
            let _permit = permit;
            loop {
                let upto = durable.borrow_and_update().clone();
                let upto = match upto {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = tx.send(Err(ApiError::Unavailable(e))).await;
                        return;
                    }
                };
                while last < upto {
                    let batch = match this.store.changes(last, upto, 512) {
                        Ok(b) if !b.is_empty() => b,
                        Ok(_) => break,
                        Err(e) => {
                            let _ = tx
                                .send(Err(crate::store_map::api_error("event log", "", e)))
                                .await;
                            return;
                        }
                    };
                    for c in batch {
                        last = c.revision;
                        let kind_ok = kind.is_none_or(|k| k == c.kind);
                        if kind_ok && selector.matches(|k| c.labels.get(k).map(String::as_str)) {
                            let ev = this.change_to_event(&c);
                            if tx.send(ev).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                tokio::select! {
                    changed = durable.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                    () = async {
                        while !*stopping.borrow_and_update() {
                            if stopping.changed().await.is_err() {
                                std::future::pending::<()>().await;
                            }
                        }
                    } => {
                        let _ = tx.send(Err(ApiError::ShuttingDown)).await;
                        return;
                    }
                    _ = tokio::time::sleep(BOOKMARK_INTERVAL) => {
                        let b = pb::WatchEvent { revision: last, r#type: pb::EventType::Bookmark as i32, object: None };
                        if tx.send(Ok(b)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(rx)
    }
}
