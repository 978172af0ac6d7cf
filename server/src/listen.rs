//! The gRPC accept loop, which bounds what unauthenticated peers can hold: at most
//! `max_connections` connections, a deadline for each connection's first bytes, descriptors
//! kept in reserve for the store, and a back-off instead of a busy loop when accept fails for
//! want of descriptors (issue 12, item 5). A connection over the limit is still served for a
//! moment, so its requests get RESOURCE_EXHAUSTED naming the limit (see `Shedding`) instead
//! of hanging in the backlog; past `SHED_SLOTS` of those it is closed at once.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::idle::{Activity, IdleWatch};
use crate::metrics::ConnectionMetrics;

/// Descriptors never handed to connections: the store (sled's blob files, the flusher's
/// directory listings), backups, the metrics listener and the runtime need some at any time.
pub const FD_RESERVE: u64 = 64;

/// How long the accept loop sleeps after running out of descriptors (or an unexpected error).
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Connections over the limit that are answered with RESOURCE_EXHAUSTED at a time.
pub const SHED_SLOTS: usize = 32;

/// How long a connection over the limit is kept to answer its requests.
pub const SHED_LINGER: Duration = Duration::from_secs(2);

/// A connection over the limit must send its first bytes this fast, so silent ones free
/// their shedding slot quickly (with every slot taken, a new one is closed unanswered).
pub const SHED_HANDSHAKE: Duration = Duration::from_millis(250);

/// Length of the HTTP/2 client connection preface (RFC 9113 §3.4), what a plaintext client
/// must have sent within the handshake timeout.
pub const HTTP2_PREFACE_LEN: usize = 24;

/// Limits of the accept loop.
#[derive(Debug, Clone)]
pub struct ListenLimits {
    /// Open connections at most; see `effective_max_connections`.
    pub max_connections: usize,
    /// Time a new connection has to send `first_bytes` bytes (TLS runs its own handshake
    /// timeout of the same length on top).
    pub handshake_timeout: Duration,
    /// Bytes that must arrive within `handshake_timeout`.
    pub first_bytes: usize,
    /// TCP keepalive probes after this much silence (dead peers behind a vanished NAT).
    pub tcp_keepalive: Option<Duration>,
    /// Close a connection that has had no open RPC for this long (`None`: never).
    pub idle_timeout: Option<Duration>,
}

/// `configured`, lowered so that the open descriptors plus `FD_RESERVE` plus one per
/// connection stay under the soft RLIMIT_NOFILE (read from /proc on Linux; elsewhere the
/// configured value stands). Never below 1.
pub fn effective_max_connections(configured: usize) -> usize {
    let Some(limit) = soft_nofile_limit() else {
        return configured.max(1);
    };
    let open = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    let room = limit
        .saturating_sub(open.saturating_add(FD_RESERVE + SHED_SLOTS as u64))
        .max(1);
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    configured.clamp(1, room.max(1))
}

/// The soft "Max open files" limit of this process, when /proc says (None when unlimited).
fn soft_nofile_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Whether an accept failed because the process or the system is out of descriptors
/// (EMFILE, ENFILE: 24 and 23 on Linux, the BSDs and macOS). The pending connection stays in
/// the backlog, so the listener is immediately readable again: retrying at once spins.
pub fn is_descriptor_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// Errors about one connection that died before it was accepted: retry at once.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
    )
}

/// The peers of connections accepted over the limit, for the edge layer to refuse their
/// requests (tonic hands services only the `TcpConnectInfo`, so they are known by address).
#[derive(Debug, Default)]
pub struct Shedding {
    max_connections: AtomicUsize,
    count: AtomicUsize,
    peers: Mutex<HashSet<SocketAddr>>,
}

impl Shedding {
    /// Whether requests from `peer` are to be refused. Costs one atomic load while nothing is
    /// being shed.
    pub fn sheds(&self, peer: Option<SocketAddr>) -> bool {
        if self.count.load(Ordering::Relaxed) == 0 {
            return false;
        }
        peer.is_some_and(|p| self.lock().contains(&p))
    }

    /// The limit in force (for messages).
    pub fn max_connections(&self) -> usize {
        self.max_connections.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<SocketAddr>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, peer: SocketAddr) {
        if self.lock().insert(peer) {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn remove(&self, peer: SocketAddr) {
        if self.lock().remove(&peer) {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Allows one log line per second of a repeated event.
#[derive(Debug, Default)]
pub struct LogEvery {
    last: Option<muster::clock::Stopwatch>,
}

impl LogEvery {
    /// Whether to log now.
    pub fn due(&mut self) -> bool {
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return false;
        }
        self.last = Some(muster::clock::Stopwatch::start());
        true
    }
}

/// Accepted connections for `serve_with_incoming_shutdown`. Dropping it (tonic does at
/// shutdown) stops the accept loop and closes the listening socket.
#[derive(Debug)]
pub struct Incoming {
    rx: mpsc::Receiver<Conn>,
}

impl tokio_stream::Stream for Incoming {
    type Item = Result<Conn, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|c| c.map(Ok))
    }
}

/// Starts the accept loop on `listener`; `shedding` is shared with the edge layer.
/// `activity` too: the edge layer counts each connection's RPCs there, for the idle timeout.
pub fn incoming(
    listener: TcpListener,
    limits: ListenLimits,
    metrics: ConnectionMetrics,
    shedding: Arc<Shedding>,
    activity: Arc<Activity>,
) -> Incoming {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(accept_loop(
        listener, limits, metrics, shedding, activity, tx,
    ));
    Incoming { rx }
}

async fn accept_loop(
    listener: TcpListener,
    limits: ListenLimits,
    metrics: ConnectionMetrics,
    shedding: Arc<Shedding>,
    activity: Arc<Activity>,
    tx: mpsc::Sender<Conn>,
) {
    shedding
        .max_connections
        .store(limits.max_connections, Ordering::Relaxed);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let shed_permits = Arc::new(Semaphore::new(SHED_SLOTS));
    let mut shed_log = LogEvery::default();
    let mut error_log = LogEvery::default();
    loop {
        let accepted = tokio::select! {
            () = tx.closed() => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                if is_descriptor_exhaustion(&e) {
                    metrics.descriptor_exhausted.inc();
                }
                if error_log.due() {
                    tracing::warn!(error = %e, backoff = ?ACCEPT_BACKOFF, "accept failed; backing off");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let conn = match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => {
                let mut conn = Conn::new(stream, peer, permit, &limits, &metrics);
                conn.idle = limits
                    .idle_timeout
                    .map(|t| IdleWatch::new(&activity, peer, t));
                conn
            }
            Err(_) => {
                metrics.shed.inc();
                if shed_log.due() {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "connection limit reached; refusing new connections"
                    );
                }
                // Never wait here: under a flood that would stall accepting for everyone.
                let Ok(permit) = Arc::clone(&shed_permits).try_acquire_owned() else {
                    // Closed unanswered: the client sees the connection drop.
                    drop(stream);
                    continue;
                };
                let lingering = ListenLimits {
                    handshake_timeout: limits.handshake_timeout.min(SHED_HANDSHAKE),
                    ..limits.clone()
                };
                let mut conn = Conn::new(stream, peer, permit, &lingering, &metrics);
                shedding.add(peer);
                conn.shed = Some((
                    Arc::clone(&shedding),
                    Box::pin(tokio::time::sleep(SHED_LINGER)),
                ));
                conn
            }
        };
        if tx.send(conn).await.is_err() {
            return;
        }
    }
}

/// An accepted connection; holds its slot (`permit`) until dropped.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    info: TcpConnectInfo,
    first: Option<FirstBytes>,
    /// Set when over the limit: its requests are refused, and it is closed at the deadline.
    shed: Option<(Arc<Shedding>, Pin<Box<Sleep>>)>,
    /// Set when an idle timeout is configured: closes the connection once it held no RPC
    /// for that long.
    idle: Option<IdleWatch>,
    metrics: ConnectionMetrics,
    _permit: OwnedSemaphorePermit,
}

/// The handshake deadline: until `remaining` more bytes arrived, reads fail once it passes.
#[derive(Debug)]
struct FirstBytes {
    remaining: usize,
    deadline: Pin<Box<Sleep>>,
}

impl Conn {
    fn new(
        stream: TcpStream,
        peer: SocketAddr,
        permit: OwnedSemaphorePermit,
        limits: &ListenLimits,
        metrics: &ConnectionMetrics,
    ) -> Self {
        // Failures here only lose an optimisation; the connection itself is fine.
        let _ = stream.set_nodelay(true);
        if let Some(t) = limits.tcp_keepalive {
            let ka = socket2::TcpKeepalive::new().with_time(t);
            let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&ka);
        }
        metrics.open.inc();
        Self {
            info: TcpConnectInfo {
                local_addr: stream.local_addr().ok(),
                remote_addr: Some(peer),
            },
            stream,
            first: (limits.first_bytes > 0).then(|| FirstBytes {
                remaining: limits.first_bytes,
                deadline: Box::pin(tokio::time::sleep(limits.handshake_timeout)),
            }),
            shed: None,
            idle: None,
            metrics: metrics.clone(),
            _permit: permit,
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.metrics.open.dec();
        if let (Some((shedding, _)), Some(peer)) = (&self.shed, self.info.remote_addr) {
            shedding.remove(peer);
        }
    }
}

/// The same connect info as a plain `TcpStream`, so tonic's TLS layer wraps it in
/// `TlsConnectInfo<TcpConnectInfo>` and `Request::peer_certs` (agents' mTLS) keeps working.
impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some((_, linger)) = &mut this.shed
            && linger.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection over the limit closed",
            )));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Some(idle) = &mut this.idle {
            match &polled {
                Poll::Ready(Ok(())) if buf.filled().len() > before => idle.read(),
                Poll::Pending if idle.expired(cx) => {
                    this.metrics.idle_closed.inc();
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connection idle (no RPC) past idle_timeout_ms",
                    )));
                }
                _ => {}
            }
        }
        let Some(first) = &mut this.first else {
            return polled;
        };
        match &polled {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                first.remaining = first.remaining.saturating_sub(n);
                // Done, or end of stream (nothing more to wait for).
                if first.remaining == 0 || n == 0 {
                    this.first = None;
                }
            }
            Poll::Pending => {
                if first.deadline.as_mut().poll(cx).is_ready() {
                    this.first = None;
                    this.metrics.handshake_timeouts.inc();
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client did not start its handshake in time",
                    )));
                }
            }
            Poll::Ready(Err(_)) => this.first = None,
        }
        polled
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_errors_are_recognised() {
        assert!(is_descriptor_exhaustion(&io::Error::from_raw_os_error(24)));
        assert!(is_descriptor_exhaustion(&io::Error::from_raw_os_error(23)));
        assert!(!is_descriptor_exhaustion(&io::Error::from_raw_os_error(
            104
        )));
    }

    #[test]
    fn the_cap_leaves_descriptors_in_reserve() {
        let limit = soft_nofile_limit();
        let n = effective_max_connections(usize::MAX);
        assert!(n >= 1);
        if let Some(l) = limit {
            assert!(
                (n as u64) + FD_RESERVE <= l.max(FD_RESERVE + 1),
                "{n} of {l}"
            );
        }
        assert_eq!(effective_max_connections(3), 3);
        assert_eq!(effective_max_connections(0), 1);
    }
}
