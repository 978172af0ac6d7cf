//! A tower layer in front of every service: refuses oversized requests with RESOURCE_EXHAUSTED
//! (tonic's own limit answers OUT_OF_RANGE and only after reading the length prefix into a
//! buffer reservation), and records per-RPC counts and latencies under the method's path when
//! it is a served method, else under one `unknown` label (see `methods`). Oversized requests
//! are audited through the inventory's refusal limiter (per peer and globally, so a flood of
//! them is summarised rather than written one by one).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame};
use tonic::Status;
use tower::{Layer, Service};

use crate::grpc::methods::KnownMethods;
use crate::idle::{Activity, Tracked};
use crate::inventory::{ChangeContext, Inventory};
use crate::listen::Shedding;
use crate::metrics::Metrics;
use crate::model::ApiError;

/// The layer; `limit` is the largest accepted message in bytes.
#[derive(Clone, Debug)]
pub struct EdgeLayer {
    pub limit: usize,
    pub metrics: Arc<Metrics>,
    /// The paths metrics may label by name.
    pub methods: Arc<KnownMethods>,
    /// Connections over `max_connections`, whose requests are refused.
    pub shedding: Arc<Shedding>,
    /// Open RPCs per connection, for the idle timeout.
    pub activity: Arc<Activity>,
    /// Where refused requests are audited.
    pub inventory: Arc<Inventory>,
}

/// The verb under which an oversized request is audited.
pub const OVERSIZED_VERB: &str = "oversized-request";

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Edge {
            inner,
            limit: self.limit,
            metrics: Arc::clone(&self.metrics),
            methods: Arc::clone(&self.methods),
            shedding: Arc::clone(&self.shedding),
            activity: Arc::clone(&self.activity),
            inventory: Arc::clone(&self.inventory),
        }
    }
}

/// The service produced by `EdgeLayer`.
#[derive(Clone, Debug)]
pub struct Edge<S> {
    inner: S,
    limit: usize,
    metrics: Arc<Metrics>,
    methods: Arc<KnownMethods>,
    shedding: Arc<Shedding>,
    activity: Arc<Activity>,
    inventory: Arc<Inventory>,
}

impl<S, ResBody> Service<http::Request<tonic::body::Body>> for Edge<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<Tracked<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if self.shedding.sheds(peer(&req)) {
            // The connection came in over the limit: say so rather than leave it hanging.
            let e = ApiError::ResourceExhausted(format!(
                "musterd has its max_connections ({}) connections open; retry later, or raise \
                 max_connections if this is normal load",
                self.shedding.max_connections()
            ));
            let resp = crate::grpc::status::to_status(e).into_http();
            return Box::pin(async move { Ok(resp.map(|b| Tracked::new(b, None))) });
        }
        // Counted from here until the response body is done (a Watch: until it ends).
        let rpc = self.activity.begin(peer(&req));
        // Never the raw path: each distinct label set is kept forever (issue 12, item 1).
        let method = self.methods.label(req.uri().path()).to_string();
        let limit = self.limit;
        let audit = Oversize {
            inventory: Arc::clone(&self.inventory),
            peer: peer(&req).map(|a| a.ip()),
            method: method.clone(),
        };
        let req = req.map(|b| tonic::body::Body::new(LimitedBody::new(b, limit, audit)));
        let fut = self.inner.call(req);
        let metrics = Arc::clone(&self.metrics);
        let started = muster::clock::Stopwatch::start();
        Box::pin(async move {
            let resp = fut.await;
            if let Ok(r) = &resp {
                // Errors before any message are "trailers-only": the status is in the headers.
                let code = r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or("OK", |c| code_name(tonic::Code::from(c)));
                metrics.observe(&method, code, started.elapsed());
            }
            resp.map(|r| r.map(|b| Tracked::new(b, rpc)))
        })
    }
}

/// The client's address, plain or under TLS.
fn peer<B>(req: &http::Request<B>) -> Option<std::net::SocketAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let ext = req.extensions();
    ext.get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().remote_addr())
        })
}

fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match c {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// What an oversized request is audited with: the peer it came from (the edge does not know
/// the caller's principal; it is audited as principal `edge`, rate-limited per peer) and the
/// method's label (a served method or `unknown`, never the raw path).
struct Oversize {
    inventory: Arc<Inventory>,
    peer: Option<std::net::IpAddr>,
    method: String,
}

/// A request body that fails with RESOURCE_EXHAUSTED as soon as a gRPC message's declared
/// length, or the bytes actually received, pass the limit. Our RPCs take one request message,
/// so the first five bytes are the only length prefix to read.
struct LimitedBody {
    inner: tonic::body::Body,
    limit: usize,
    seen: usize,
    prefix: [u8; 5],
    prefix_len: usize,
    /// Taken when the refusal is audited (once per request).
    audit: Option<Oversize>,
}

impl LimitedBody {
    fn new(inner: tonic::body::Body, limit: usize, audit: Oversize) -> Self {
        Self {
            inner,
            limit,
            seen: 0,
            prefix: [0; 5],
            prefix_len: 0,
            audit: Some(audit),
        }
    }

    fn too_large(&mut self, size: usize) -> Status {
        let message = format!(
            "request message is {size} bytes; the limit is {} bytes (max_message_bytes)",
            self.limit
        );
        if let Some(a) = self.audit.take() {
            a.inventory.record_refusal_from_peer(
                a.peer,
                "edge",
                OVERSIZED_VERB,
                (muster::pb::ResourceKind::Unspecified, &a.method),
                &ChangeContext::default(),
                crate::store::RefusalKind::Rejected,
                &format!("{} refused: {message}", a.method),
            );
        }
        super::status::to_status(crate::model::ApiError::ResourceExhausted(message))
    }
}

impl Body for LimitedBody {
    type Data = bytes_alias::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    for b in data.iter().take(5 - this.prefix_len) {
                        this.prefix[this.prefix_len] = *b;
                        this.prefix_len += 1;
                    }
                    if this.prefix_len == 5 && this.seen < 5 {
                        let declared = u32::from_be_bytes([
                            this.prefix[1],
                            this.prefix[2],
                            this.prefix[3],
                            this.prefix[4],
                        ]) as usize;
                        if declared > this.limit {
                            return Poll::Ready(Some(Err(this.too_large(declared))));
                        }
                    }
                    this.seen += data.len();
                    if this.seen > this.limit + 5 {
                        return Poll::Ready(Some(Err(this.too_large(this.seen - 5))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// `bytes` is only reachable through http-body's `Frame` here; name it once.
mod bytes_alias {
    pub type Bytes = <tonic::body::Body as http_body::Body>::Data;
}
