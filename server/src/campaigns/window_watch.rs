//! Windows and freezes reach the engine as soon as they are written: a freeze declared in an
//! emergency must stop new starts at once, not when the engine's calendar next refreshes (once
//! a clock minute). A watch on the Window kind feeds [`Event::WindowsChanged`] into the
//! engine's queue; the engine forgets its calendar and lays it out again on its next decision.

use std::sync::Arc;

use muster::pb::{self, ResourceKind};
use tokio::sync::mpsc;

use super::engine::{Event, SYSTEM};
use crate::inventory::{Inventory, WatchParams};
use crate::model::{Principal, Role};

/// Starts forwarding durable Window changes to the engine until either side goes away.
pub fn forward(inventory: &Arc<Inventory>, tx: mpsc::UnboundedSender<Event>) {
    let who = Principal::new(SYSTEM, Role::Viewer);
    let params = WatchParams {
        kind: Some(ResourceKind::Window),
        selector: String::new(),
        since_revision: 0,
    };
    let mut rx = match inventory.watch(&who, params) {
        Ok(rx) => rx,
        Err(e) => {
            tracing::error!(error = %e, "campaign engine cannot watch windows; freezes and \
                windows written from now on take effect within a minute");
            return;
        }
    };
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            let change = ev.is_ok_and(|e| e.r#type != pb::EventType::Bookmark as i32);
            if change && tx.send(Event::WindowsChanged).is_err() {
                break;
            }
        }
    });
}
