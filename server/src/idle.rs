//! Closing connections that hold no RPC (issue 12, item 5): a connection that has had no open
//! stream for `idle_timeout_ms` is closed, so forgotten or parked clients give their slot
//! back. HTTP/2 keepalive pings do not count as activity (musterd itself sends them, and a
//! client answering pings is not using its connection), streams do: the edge layer counts
//! each RPC per connection until its response body is done, so a Watch that waits an hour for
//! its next event keeps its connection.
#![allow(clippy::disallowed_methods)] // tokio's Instant: see the `use` below

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
// tokio's clock, not std's or the injected one: it is the clock the idle timer itself runs on
// (and tests pause it), so transport timeouts and their deadlines agree.
use tokio::time::{Instant, Sleep};

/// Bytes read this recently keep a connection even when it has no stream: a request that just
/// arrived may not have reached the edge layer yet (hyper hands it over in the same poll, so
/// this is a margin, not a wait). Shorter than any sensible keepalive interval, so answered
/// pings alone never keep a connection.
const READ_GRACE: Duration = Duration::from_millis(250);

/// Open RPCs of each connection, by peer address (the port makes it one connection), written
/// by the edge layer and read by the connections themselves.
#[derive(Debug, Default)]
pub struct Activity {
    conns: Mutex<HashMap<SocketAddr, Arc<ConnActivity>>>,
}

/// One connection's open RPCs and when the last one ended.
#[derive(Debug)]
pub struct ConnActivity {
    open: AtomicUsize,
    last_end: Mutex<Instant>,
}

impl ConnActivity {
    fn last_end(&self) -> Instant {
        *self.last_end.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<ConnActivity>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new connection.
    fn register(&self, peer: SocketAddr) -> Arc<ConnActivity> {
        let a = Arc::new(ConnActivity {
            open: AtomicUsize::new(0),
            last_end: Mutex::new(Instant::now()),
        });
        self.lock().insert(peer, Arc::clone(&a));
        a
    }

    fn unregister(&self, peer: SocketAddr) {
        self.lock().remove(&peer);
    }

    /// Counts an RPC on `peer`'s connection until the guard is dropped (with the response
    /// body). `None` when the connection is not watched (idle timeout off, or unknown peer).
    pub fn begin(&self, peer: Option<SocketAddr>) -> Option<RpcGuard> {
        let a = Arc::clone(self.lock().get(&peer?)?);
        a.open.fetch_add(1, Ordering::AcqRel);
        Some(RpcGuard(a))
    }
}

/// One open RPC; dropping it ends it.
#[derive(Debug)]
pub struct RpcGuard(Arc<ConnActivity>);

impl Drop for RpcGuard {
    fn drop(&mut self) {
        *self.0.last_end.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its RPC counted until it is finished or dropped.
#[derive(Debug)]
pub struct Tracked<B> {
    inner: B,
    _rpc: Option<RpcGuard>,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, rpc: Option<RpcGuard>) -> Self {
        Self { inner, _rpc: rpc }
    }
}

impl<B: Default> Default for Tracked<B> {
    fn default() -> Self {
        Self::new(B::default(), None)
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a connection needs to close itself when idle.
#[derive(Debug)]
pub struct IdleWatch {
    registry: Arc<Activity>,
    peer: SocketAddr,
    activity: Arc<ConnActivity>,
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    last_read: Instant,
}

impl IdleWatch {
    /// Watches the connection from `peer`.
    pub fn new(registry: &Arc<Activity>, peer: SocketAddr, timeout: Duration) -> Self {
        Self {
            activity: registry.register(peer),
            registry: Arc::clone(registry),
            peer,
            timeout,
            timer: Box::pin(tokio::time::sleep(timeout)),
            last_read: Instant::now(),
        }
    }

    /// Bytes arrived.
    pub fn read(&mut self) {
        self.last_read = Instant::now();
    }

    /// Whether the connection is to be closed now. Otherwise the timer is re-armed for the
    /// earliest moment it could be, and registered with `cx`.
    pub fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            let now = Instant::now();
            let next = if self.activity.open.load(Ordering::Acquire) > 0 {
                now + self.timeout
            } else {
                let idle_until = self.activity.last_end() + self.timeout;
                let read_until = self.last_read + READ_GRACE;
                if now >= idle_until && now >= read_until {
                    return true;
                }
                idle_until.max(read_until)
            };
            self.timer.as_mut().reset(next);
        }
    }
}

impl Drop for IdleWatch {
    fn drop(&mut self) {
        self.registry.unregister(self.peer);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn peer() -> SocketAddr {
        "127.0.0.1:40000".parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_rpc_keeps_the_connection_and_its_end_starts_the_clock() {
        let registry = Arc::new(Activity::default());
        let mut watch = IdleWatch::new(&registry, peer(), Duration::from_secs(10));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let rpc = registry.begin(Some(peer())).unwrap();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(!watch.expired(&mut cx), "closed with an RPC open");
        drop(rpc);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!watch.expired(&mut cx), "closed before the timeout");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(watch.expired(&mut cx), "not closed after the timeout");
        drop(watch);
        assert!(registry.begin(Some(peer())).is_none(), "still registered");
    }
}
