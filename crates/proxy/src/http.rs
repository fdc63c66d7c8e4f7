//! `http_connection_manager` + router: serves HTTP/1.1 and h2c downstream (hyper), routes each
//! request (virtual host → route → action), forwards it through the worker's connection pools,
//! streams both bodies, and writes the access log and metrics when the response ends.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION, SERVER};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::access_log::{self, LogRecord, RequestView, ResponseFlags};
use crate::batch_io::{BatchedWrites, Batching};
use crate::cluster::{ClusterState, Host, LbContext, SlotKind};
use crate::convert::traffic;
use crate::cors;
use crate::listener::ConnMeta;
use crate::model::*;
use crate::outlier::Outcome;
use crate::route::{self, RequestHead};
use crate::snapshot::Snapshot;
use crate::stats;
use crate::upstream::{self, Body, UpstreamError};
use crate::worker::Worker;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName = HeaderName::from_static("x-envoy-upstream-service-time");
static X_ENVOY_EXPECTED_RQ_TIMEOUT_MS: HeaderName = HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
static X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
static X_ENVOY_DECORATOR_OPERATION: HeaderName = HeaderName::from_static("x-envoy-decorator-operation");
static X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS: HeaderName = HeaderName::from_static("x-envoy-upstream-rq-timeout-ms");
static X_ENVOY_MAX_RETRIES: HeaderName = HeaderName::from_static("x-envoy-max-retries");
static X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-upstream-rq-per-try-timeout-ms");
static X_ENVOY_RETRY_ON: HeaderName = HeaderName::from_static("x-envoy-retry-on");
static X_ENVOY_RETRY_GRPC_ON: HeaderName = HeaderName::from_static("x-envoy-retry-grpc-on");
static X_ENVOY_RETRIABLE_STATUS_CODES: HeaderName = HeaderName::from_static("x-envoy-retriable-status-codes");
static VIA: HeaderName = HeaderName::from_static("via");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_ENVOY_ORIGINAL_HOST: HeaderName = HeaderName::from_static("x-envoy-original-host");

/// Control headers Envoy accepts only from internal clients and strips from the rest.
/// (Parsed once: `remove("…")` would parse and hash each name on every request.)
static INTERNAL_ONLY: [HeaderName; 14] = [
    HeaderName::from_static("x-envoy-downstream-service-cluster"),
    HeaderName::from_static("x-envoy-downstream-service-node"),
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms"),
    HeaderName::from_static("x-envoy-internal"),
    HeaderName::from_static("x-envoy-ip-tags"),
    HeaderName::from_static("x-envoy-max-retries"),
    HeaderName::from_static("x-envoy-retry-grpc-on"),
    HeaderName::from_static("x-envoy-retry-on"),
    HeaderName::from_static("x-envoy-upstream-alt-stat-name"),
    HeaderName::from_static("x-envoy-upstream-rq-per-try-timeout-ms"),
    HeaderName::from_static("x-envoy-upstream-rq-timeout-alt-response"),
    HeaderName::from_static("x-envoy-upstream-rq-timeout-ms"),
    HeaderName::from_static("x-envoy-hedge-on-per-try-timeout"),
    HeaderName::from_static("x-envoy-retriable-status-codes"),
];

/// Whether the request comes from an internal (trusted) client: the last `x-forwarded-for`
/// hop, or the peer itself, inside `internal_address_config`.
fn is_internal(hcm: &HttpConnectionManager, headers: &HeaderMap, peer: std::net::IpAddr) -> bool {
    if hcm.internal_addresses.is_empty() {
        return false;
    }
    // Envoy: after appending the peer (edge proxies), XFF must hold exactly one address, and
    // that address must be internal.
    let xff: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let candidate = if hcm.use_remote_address {
        xff.is_empty().then_some(peer)
    } else if xff.len() == 1 {
        xff[0].parse().ok()
    } else {
        None
    };
    let candidate = candidate.map(|ip| match ip {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(std::net::IpAddr::V4)
            .unwrap_or(std::net::IpAddr::V6(v6)),
        v4 => v4,
    });
    candidate.is_some_and(|ip| hcm.internal_addresses.iter().any(|n| n.contains(&ip)))
}

/// Per-connection context shared by its requests.
pub struct ConnCtx {
    pub worker: Rc<Worker>,
    pub hcm: Arc<HttpConnectionManager>,
    pub meta: ConnMeta,
}

/// Serves one downstream connection until it closes or the worker drains. `h2`: the protocol
/// when it is known before serving (TLS ALPN, the HTTP inspector, or the first bytes of a
/// plaintext connection), which fixes the codec as Envoy's `AUTO` does; `None` leaves it to the
/// configured codec (and hyper's own detection).
pub async fn serve<S>(
    worker: Rc<Worker>,
    hcm: Arc<HttpConnectionManager>,
    stream: S,
    meta: ConnMeta,
    h2: Option<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let mut drain = worker.drain_signal();
    let ctx = Rc::new(ConnCtx {
        worker,
        hcm: hcm.clone(),
        meta,
    });
    let protocol = match hcm.codec {
        Codec::Http1 => Some(false),
        Codec::Http2 => Some(true),
        Codec::Auto => h2,
    };
    // HTTP/2 gets its writes batched per flush (see `batch_io`); HTTP/1.1 batches its own.
    let batching = match protocol {
        Some(true) => Batching::On,
        Some(false) => Batching::Off,
        None => Batching::OnH2Preface,
    };
    let io = TokioIo::new(BatchedWrites::new(stream, batching));
    let max_headers = (hcm.max_request_headers_kb as usize * 1024).max(8192);
    let header_timeout = hcm.header_timeout();
    // The settings of hyper's HTTP/1.1 and HTTP/2 builders, whether chosen here or by hyper's
    // own detection (`auto`, whose builders are other types with the same methods).
    macro_rules! http1_settings {
        ($b:expr) => {
            $b.timer(TokioTimer::new())
                .header_read_timeout(Some(header_timeout))
                .max_buf_size(max_headers.max(65536))
                // Each message leaves in one `send`: hyper copies a small body next to the head
                // rather than handing both to `writev`, whose trip through the VFS costs the
                // kernel more than the copy (≈ 0.7 µs of a proxied request's 8; BENCHMARKS.md).
                .writev(false)
                .keep_alive(true)
        };
    }
    macro_rules! http2_settings {
        ($b:expr) => {
            $b.timer(TokioTimer::new())
                .max_header_list_size(max_headers as u32)
        };
    }
    macro_rules! drive {
        ($conn:expr) => {{
            let conn = $conn;
            tokio::pin!(conn);
            let mut closing = false;
            let _ = std::future::poll_fn(|cx| {
                // The connection first: a request already waiting on a connection accepted
                // just before the drain is read and answered (with `connection: close`).
                let polled = conn.as_mut().poll(cx);
                if polled.is_pending() && !closing && drain.poll_drained(cx).is_ready() {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                    return conn.as_mut().poll(cx);
                }
                polled
            })
            .await;
        }};
    }
    // Each request's future polled where hyper keeps it.
    let in_place = |ctx: Rc<ConnCtx>| {
        hyper::service::service_fn(move |req| {
            let ctx = ctx.clone();
            async move { Ok::<_, Infallible>(handle(ctx, req).await) }
        })
    };
    match protocol {
        // HTTP/2 runs each request in a task of its own, and every move of the request's
        // future into it copies the whole (≈ 4.5 KiB) state machine: boxed, it moves a pointer.
        // HTTP/1.1 polls the request in place, so there the box would only cost an allocation.
        Some(true) => {
            let svc = hyper::service::service_fn(move |req| {
                let ctx = ctx.clone();
                Box::pin(async move { Ok::<_, Infallible>(handle(ctx, req).await) })
            });
            let mut h2 = hyper::server::conn::http2::Builder::new(upstream::LocalExec);
            http2_settings!(h2);
            drive!(h2.serve_connection(io, svc))
        }
        Some(false) => {
            let mut h1 = hyper::server::conn::http1::Builder::new();
            // `max_request_headers_kb` exactly (431 beyond it), whatever the reads' sizes.
            http1_settings!(h1).max_header_size(max_headers);
            drive!(h1.serve_connection(io, in_place(ctx)))
        }
        // Not known (TLS without ALPN, or a client silent past the header timeout): hyper's
        // own detection.
        None => {
            let mut auto = hyper_util::server::conn::auto::Builder::new(upstream::LocalExec);
            http1_settings!(auto.http1());
            http2_settings!(auto.http2());
            drive!(auto.serve_connection(io, in_place(ctx)))
        }
    }
}

/// The response body: upstream's, or a local reply; ends by logging the request.
pub struct ResBody {
    inner: Inner,
    finish: Option<Box<Finish>>,
}

enum Inner {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

/// What to record when the response is done.
struct Finish {
    ctx: Rc<ConnCtx>,
    rec: LogRecord,
    started: Instant,
    request_bytes: RequestBytes,
    cluster: Option<Arc<ClusterState>>,
    host: Option<Arc<Host>>,
    _request_slot: Option<crate::cluster::Slot>,
    grpc: bool,
    /// Count the response in the cluster's `upstream_rq_*` (the router's answers only).
    upstream_stats: bool,
}

impl Finish {
    fn done(mut self: Box<Self>, error: Option<ResponseFlags>) {
        if let Some(f) = error {
            self.rec.flags.insert(f);
        }
        self.rec.duration = self.started.elapsed();
        if !self.ctx.hcm.access_logs.is_empty() {
            self.rec.start_time = SystemTime::now().checked_sub(self.rec.duration);
        }
        self.rec.bytes_received = self.request_bytes.get();
        if let Some(h) = &self.host {
            h.stats.rq_active.fetch_sub(1, Relaxed);
            if (500..600).contains(&self.rec.response_code) || error.is_some() {
                h.stats.rq_error.fetch_add(1, Relaxed);
            } else {
                h.stats.rq_success.fetch_add(1, Relaxed);
            }
        }
        access_log::emit(&self.ctx.hcm.access_logs, &self.rec);
        if self.upstream_stats {
            stats::count_request(self.cluster.as_ref(), self.rec.response_code);
        }
        let labels = self.host.as_ref().map(|h| h.labels.as_slice()).unwrap_or(&[]);
        stats::http_request(
            &self.ctx.meta,
            self.cluster.as_deref(),
            &self.rec,
            self.grpc,
            labels,
        );
    }
}

impl HttpBody for ResBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let poll = match &mut this.inner {
            Inner::Full(data) => Poll::Ready(data.take().map(|b| Ok(Frame::data(b)))),
            Inner::Upstream(body) => Pin::new(body).poll_frame(cx),
        };
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(f), Some(d)) = (this.finish.as_mut(), frame.data_ref()) {
                    f.rec.bytes_sent += d.len() as u64;
                }
                if let (Some(f), Some(t)) = (this.finish.as_mut(), frame.trailers_ref()) {
                    f.rec.response_trailers = Some(t.clone());
                }
                // hyper stops polling once a known length is reached: finish on the last frame.
                let ended = match &this.inner {
                    Inner::Full(d) => d.is_none(),
                    Inner::Upstream(b) => b.is_end_stream(),
                };
                if ended {
                    if let Some(f) = this.finish.take() {
                        f.done(None);
                    }
                }
            }
            Poll::Ready(None) => {
                if let Some(f) = this.finish.take() {
                    f.done(None);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(f) = this.finish.take() {
                    // The upstream reset mid-response.
                    f.done(Some(ResponseFlags::UR));
                }
            }
            Poll::Pending => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(d) => d.is_none(),
            Inner::Upstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            Inner::Full(None) => SizeHint::with_exact(0),
            Inner::Upstream(b) => b.size_hint(),
        }
    }
}

impl Drop for ResBody {
    fn drop(&mut self) {
        if let Some(f) = self.finish.take() {
            // Dropped before the end: the downstream went away (Envoy's DC). A body that is
            // already complete (HEAD, 204, empty) is not a disconnect.
            let flag = if self.is_end_stream() {
                None
            } else {
                Some(ResponseFlags::DC)
            };
            f.done(flag);
        }
    }
}

fn empty_body() -> Body {
    http_body_util::Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn protocol_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// The decimal numbers below 1000, written out once: most numbers the proxy puts in headers
/// (milliseconds of upstream service time, attempt counts, short bodies' lengths) are small,
/// and `HeaderValue::from(u64)` formats each into a fresh allocation.
const SMALL_NUMBERS: &str = {
    const LEN: usize = 10 + 90 * 2 + 900 * 3;
    const fn digits() -> [u8; LEN] {
        let mut out = [0u8; LEN];
        let (mut n, mut at) = (0usize, 0usize);
        while n < 1000 {
            if n >= 100 {
                out[at] = b'0' + (n / 100) as u8;
                at += 1;
            }
            if n >= 10 {
                out[at] = b'0' + (n / 10 % 10) as u8;
                at += 1;
            }
            out[at] = b'0' + (n % 10) as u8;
            at += 1;
            n += 1;
        }
        out
    }
    const DIGITS: [u8; LEN] = digits();
    match std::str::from_utf8(&DIGITS) {
        Ok(s) => s,
        Err(_) => panic!("digits are ASCII"),
    }
};

/// A number as a header value; below 1000 without allocating.
fn number_value(n: u64) -> HeaderValue {
    let range = match n {
        0..10 => n as usize..n as usize + 1,
        10..100 => {
            let at = 10 + (n as usize - 10) * 2;
            at..at + 2
        }
        100..1000 => {
            let at = 190 + (n as usize - 100) * 3;
            at..at + 3
        }
        _ => return HeaderValue::from(n),
    };
    HeaderValue::from_static(&SMALL_NUMBERS[range])
}

/// A fresh random `x-request-id` (UUID v4).
fn request_id() -> HeaderValue {
    let mut bytes = [0u8; 16];
    fastrand::fill(&mut bytes);
    let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    HeaderValue::from_bytes(id.hyphenated().encode_lower(&mut buf).as_bytes())
        .unwrap_or(HeaderValue::from_static("-"))
}

/// A header's values as one, joined by `,` as Envoy's header map joins a repeated header (a
/// request with two `host` headers is routed on `a,b`, as Envoy routes it).
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(first.clone());
    };
    let mut all = first.as_bytes().to_vec();
    for v in std::iter::once(second).chain(values) {
        all.push(b',');
        all.extend_from_slice(v.as_bytes());
    }
    HeaderValue::from_bytes(&all).ok()
}

/// Headers that describe one hop and are never forwarded.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names (cheap comparisons, no hashing) notes which are present: most
    // messages carry none, or only `connection: keep-alive`.
    const HOP: [&HeaderName; 6] = [
        &http::header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &http::header::TRANSFER_ENCODING,
        &http::header::UPGRADE,
        &http::header::TE,
    ];
    let mut present = 0u8;
    for k in headers.keys() {
        // By length first: most names are no hop-by-hop name's length. (Indices into `HOP`.)
        let name = k.as_str();
        let i = match name.len() {
            10 if name == "connection" => 0,
            10 if name == "keep-alive" => 1,
            16 if name == "proxy-connection" => 2,
            17 if name == "transfer-encoding" => 3,
            7 if name == "upgrade" => 4,
            2 if name == "te" => 5,
            _ => continue,
        };
        present |= 1 << i;
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        strip_connection_listed(headers);
    }
    // `te: trailers` is the one hop-by-hop value that goes on.
    if present & (1 << 5) != 0 && headers.get(http::header::TE).is_none_or(|v| v == "trailers") {
        present &= !(1 << 5);
    }
    for (i, name) in HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
}

/// Removes the headers a `Connection` header names (except `te`).
fn strip_connection_listed(headers: &mut HeaderMap) {
    // The usual values (`keep-alive`, `close`) nominate nothing: compared whole first, as
    // splitting and trimming costs more than the rest of the stripping.
    let usual = |v: &HeaderValue| {
        let v = v.as_bytes();
        v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
    };
    if headers.get_all(http::header::CONNECTION).iter().all(usual) {
        return;
    }
    // `keep-alive` is removed with the other hop-by-hop headers anyway; `close` names no header.
    let names_a_header =
        |n: &&str| !n.is_empty() && !n.eq_ignore_ascii_case("keep-alive") && !n.eq_ignore_ascii_case("close");
    let listed: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(names_a_header)
        .filter_map(|n| HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).ok())
        .collect();
    for n in listed {
        if n != http::header::TE {
            headers.remove(n);
        }
    }
}

/// Sets a header unless it is present and `keep` says to keep it: one lookup either way.
fn set_unless_kept(
    headers: &mut HeaderMap,
    name: &HeaderName,
    keep: bool,
    value: impl FnOnce() -> HeaderValue,
) {
    match headers.entry(name) {
        http::header::Entry::Occupied(_) if keep => {}
        http::header::Entry::Occupied(mut e) => {
            e.insert(value());
        }
        http::header::Entry::Vacant(e) => {
            e.insert(value());
        }
    }
}

/// Expands the few `%...%` operators Envoy allows in added header values.
fn header_value(template: &str, ctx: &ConnCtx) -> Option<HeaderValue> {
    if !template.contains('%') {
        return HeaderValue::from_str(template).ok();
    }
    let v = template
        .replace(
            "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
            &ctx.meta.peer.ip().to_string(),
        )
        .replace("%DOWNSTREAM_REMOTE_ADDRESS%", &ctx.meta.peer.to_string())
        .replace(
            "%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%",
            &ctx.meta.destination.ip().to_string(),
        )
        .replace("%DOWNSTREAM_LOCAL_ADDRESS%", &ctx.meta.destination.to_string())
        .replace(
            "%HOSTNAME%",
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_default()
                .trim(),
        )
        .replace("%%", "%");
    HeaderValue::from_str(&v).ok()
}

fn apply_adds(headers: &mut HeaderMap, adds: &[HeaderAdd], ctx: &ConnCtx) {
    for a in adds {
        let Some(v) = header_value(&a.value, ctx) else {
            continue;
        };
        match a.action {
            AppendAction::AppendIfExistsOrAdd => {
                headers.append(a.name.clone(), v);
            }
            AppendAction::AddIfAbsent => {
                if !headers.contains_key(&a.name) {
                    headers.insert(a.name.clone(), v);
                }
            }
            AppendAction::OverwriteIfExistsOrAdd => {
                headers.insert(a.name.clone(), v);
            }
            AppendAction::OverwriteIfExists => {
                if headers.contains_key(&a.name) {
                    headers.insert(a.name.clone(), v);
                }
            }
        }
    }
}

/// Header mutation levels from least to most specific: route config, virtual host, route,
/// weighted cluster. Envoy applies the most specific first unless told otherwise, so the route
/// configuration's values win by default.
fn mutate(
    headers: &mut HeaderMap,
    levels: &[&HeaderMutations],
    most_specific_wins: bool,
    response: bool,
    ctx: &ConnCtx,
) {
    // Indices rather than a collected Vec: this runs twice per request.
    for i in 0..levels.len() {
        let m = levels[if most_specific_wins {
            i
        } else {
            levels.len() - 1 - i
        }];
        let (add, remove) = if response {
            (&m.response_add, &m.response_remove)
        } else {
            (&m.request_add, &m.request_remove)
        };
        for r in remove {
            headers.remove(r);
        }
        apply_adds(headers, add, ctx);
    }
}

struct LocalReply {
    status: StatusCode,
    body: Option<Bytes>,
    flags: ResponseFlags,
    details: std::borrow::Cow<'static, str>,
    headers: HeaderMap,
}

impl LocalReply {
    fn new(status: u16, body: &str, flags: ResponseFlags, details: &'static str) -> LocalReply {
        let details = std::borrow::Cow::Borrowed(details);
        LocalReply {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            body: (!body.is_empty()).then(|| Bytes::copy_from_slice(body.as_bytes())),
            flags,
            details,
            headers: HeaderMap::new(),
        }
    }
}

/// Headers decided before the response exists (CORS, a generated hash cookie): set on
/// whatever response goes out, from the upstream or local.
#[derive(Default)]
struct Extra {
    set: Vec<(HeaderName, HeaderValue)>,
    append: Vec<(HeaderName, HeaderValue)>,
}

/// Routes and forwards one request.
async fn handle(ctx: Rc<ConnCtx>, req: Request<Incoming>) -> Response<ResBody> {
    let mut extra = Extra::default();
    let logging = !ctx.hcm.access_logs.is_empty();
    let mut resp = route_request(ctx, req, &mut extra).await;
    if !extra.set.is_empty() || !extra.append.is_empty() {
        let h = resp.headers_mut();
        for (k, v) in extra.set {
            h.insert(k, v);
        }
        for (k, v) in extra.append {
            h.append(k, v);
        }
        if logging {
            let headers = resp.headers().clone();
            if let Some(f) = resp.body_mut().finish.as_mut() {
                f.rec.response_headers = Some(headers);
            }
        }
    }
    resp
}

/// The `x-envoy-*` controls an internal (trusted) client may send.
#[derive(Default)]
struct Controls {
    timeout_ms: Option<u64>,
    per_try_timeout_ms: Option<u64>,
    max_retries: Option<u32>,
    retry_on: Option<String>,
    retry_grpc_on: Option<String>,
    retriable_status_codes: Vec<u16>,
}

impl Controls {
    fn read(headers: &HeaderMap) -> Controls {
        let s = |n: &HeaderName| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
        Controls {
            timeout_ms: s(&X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS).and_then(|v| v.parse().ok()),
            per_try_timeout_ms: s(&X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS).and_then(|v| v.parse().ok()),
            max_retries: s(&X_ENVOY_MAX_RETRIES).and_then(|v| v.parse().ok()),
            retry_on: s(&X_ENVOY_RETRY_ON),
            retry_grpc_on: s(&X_ENVOY_RETRY_GRPC_ON),
            retriable_status_codes: s(&X_ENVOY_RETRIABLE_STATUS_CODES)
                .map(|v| v.split(',').filter_map(|c| c.trim().parse().ok()).collect())
                .unwrap_or_default(),
        }
    }
}

/// Adds the conditions of `x-envoy-retry-on` / `x-envoy-retry-grpc-on` (unknown ones ignored,
/// as Envoy does for headers).
fn merge_retry_on(on: &mut RetryOn, list: &str) {
    for c in list.split(',').map(str::trim) {
        match c {
            "5xx" => on.five_xx = true,
            "gateway-error" => on.gateway_error = true,
            "reset" => on.reset = true,
            "reset-before-request" => on.reset_before_request = true,
            "connect-failure" => on.connect_failure = true,
            "retriable-4xx" => on.retriable_4xx = true,
            "refused-stream" => on.refused_stream = true,
            "retriable-status-codes" => on.retriable_status_codes = true,
            "cancelled" => on.grpc_cancelled = true,
            "deadline-exceeded" => on.grpc_deadline_exceeded = true,
            "resource-exhausted" => on.grpc_resource_exhausted = true,
            "unavailable" => on.grpc_unavailable = true,
            "internal" => on.grpc_internal = true,
            _ => {}
        }
    }
}

/// Whether a response asks for a retry under `on` (Envoy's `wouldRetryFromHeaders`).
fn retriable_response(on: RetryOn, codes: &[u16], resp: &Response<Incoming>) -> bool {
    let s = resp.status().as_u16();
    let by_status = (on.five_xx && (500..600).contains(&s))
        || (on.gateway_error && matches!(s, 502..=504))
        || (on.retriable_4xx && s == 409)
        || (on.retriable_status_codes && codes.contains(&s));
    let grpc_any = on.grpc_cancelled
        || on.grpc_deadline_exceeded
        || on.grpc_resource_exhausted
        || on.grpc_unavailable
        || on.grpc_internal;
    // The usual case (a 2xx, or no retry policy) looks at no header.
    if !by_status && !grpc_any {
        return false;
    }
    let h = resp.headers();
    if h.contains_key("x-envoy-overloaded") || h.contains_key("x-envoy-ratelimited") {
        return false;
    }
    if by_status {
        return true;
    }
    // A trailers-only gRPC response carries grpc-status in its headers.
    h.get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
        .is_some_and(|code| {
            (code == 1 && on.grpc_cancelled)
                || (code == 4 && on.grpc_deadline_exceeded)
                || (code == 8 && on.grpc_resource_exhausted)
                || (code == 14 && on.grpc_unavailable)
                || (code == 13 && on.grpc_internal)
        })
}

/// The request body on its way upstream, optionally keeping a copy (up to Envoy's 1 MiB
/// buffer limit) so that a retry or a mirror can replay it. The copy never delays the
/// original: frames go upstream as they arrive.
struct TeeState {
    inner: std::sync::Mutex<TeeInner>,
    done: tokio::sync::Notify,
}

#[derive(Default)]
struct TeeInner {
    chunks: Vec<Bytes>,
    size: usize,
    status: TeeStatus,
}

#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum TeeStatus {
    #[default]
    Open,
    /// Read to the end and kept whole.
    Complete,
    /// Larger than the limit, failed or abandoned: no replay.
    Lost,
}

const REPLAY_LIMIT: usize = 1024 * 1024;

impl TeeState {
    fn new() -> Arc<TeeState> {
        Arc::new(TeeState {
            inner: Default::default(),
            done: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TeeInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, d: &Bytes) {
        let mut t = self.lock();
        if t.status != TeeStatus::Open {
            return;
        }
        if t.size + d.len() > REPLAY_LIMIT {
            drop(t);
            self.finish(TeeStatus::Lost);
        } else {
            t.size += d.len();
            t.chunks.push(d.clone());
        }
    }

    fn finish(&self, status: TeeStatus) {
        let mut t = self.lock();
        if t.status == TeeStatus::Open {
            t.status = status;
            if status == TeeStatus::Lost {
                t.chunks.clear();
            }
            drop(t);
            self.done.notify_waiters();
        }
    }

    fn is_complete(&self) -> bool {
        self.lock().status == TeeStatus::Complete
    }

    /// The whole body, if it has been read and fits.
    fn complete(&self) -> Option<Bytes> {
        let t = self.lock();
        (t.status == TeeStatus::Complete).then(|| {
            let mut out = bytes::BytesMut::with_capacity(t.size);
            for c in &t.chunks {
                out.extend_from_slice(c);
            }
            out.freeze()
        })
    }

    /// Waits until the body has been read (or lost), then returns it if it fits.
    async fn wait(&self) -> Option<Bytes> {
        loop {
            let notified = self.done.notified();
            if self.lock().status != TeeStatus::Open {
                return self.complete();
            }
            notified.await;
        }
    }
}

/// The bytes of a request body read so far, shared by the body and the request's record.
/// A request without a body (most) has nothing to count and allocates no counter.
#[derive(Clone, Default)]
struct RequestBytes(Option<Arc<AtomicU64>>);

impl RequestBytes {
    fn for_body(body: &Incoming) -> RequestBytes {
        RequestBytes((!body.is_end_stream()).then(|| Arc::new(AtomicU64::new(0))))
    }

    fn add(&self, n: u64) {
        if let Some(c) = &self.0 {
            c.fetch_add(n, Relaxed);
        }
    }

    fn get(&self) -> u64 {
        self.0.as_ref().map_or(0, |c| c.load(Relaxed))
    }
}

/// Counts request body bytes on their way upstream (and feeds the copy, if any).
struct CountingBody {
    inner: Incoming,
    count: RequestBytes,
    tee: Option<TeeGuard>,
}

impl HttpBody for CountingBody {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let p = Pin::new(&mut self.inner).poll_frame(cx);
        match &p {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.count.add(d.len() as u64);
                    if let Some(t) = &self.tee {
                        t.push(d);
                    }
                }
                if self.inner.is_end_stream() {
                    if let Some(t) = &self.tee {
                        t.finish(TeeStatus::Complete);
                    }
                }
            }
            Poll::Ready(None) => {
                if let Some(t) = &self.tee {
                    t.finish(TeeStatus::Complete);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(t) = &self.tee {
                    t.finish(TeeStatus::Lost);
                }
            }
            Poll::Pending => {}
        }
        p
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The body's handle on its copy: if the body goes away before its end, whoever waits for
/// the copy (a mirror) gives up.
struct TeeGuard(Arc<TeeState>);

impl std::ops::Deref for TeeGuard {
    type Target = TeeState;
    fn deref(&self) -> &TeeState {
        &self.0
    }
}

impl Drop for TeeGuard {
    fn drop(&mut self) {
        self.0.finish(TeeStatus::Lost);
    }
}

fn full_body(b: Bytes) -> Body {
    http_body_util::Full::new(b)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// What the fault filter decided.
enum FaultResult {
    Continue,
    Abort(LocalReply),
}

/// Envoy's fault filter for one request: checks, then delay (DI), then abort (FI).
#[allow(clippy::too_many_arguments)]
async fn fault_filter(
    settings: &Fault,
    stats: &Arc<FaultStats>,
    cluster_name: Option<&str>,
    head: &RequestHead<'_>,
    grpc: bool,
    rec: &mut LogRecord,
    active: &mut Option<ActiveFault>,
) -> FaultResult {
    if settings.delay.is_none() && settings.abort.is_none() {
        return FaultResult::Continue;
    }
    if let Some(max) = settings.max_active_faults {
        if stats.active_faults.load(Relaxed) >= max {
            stats.faults_overflow.fetch_add(1, Relaxed);
            return FaultResult::Continue;
        }
    }
    if settings
        .upstream_cluster
        .as_deref()
        .is_some_and(|c| Some(c) != cluster_name)
    {
        return FaultResult::Continue;
    }
    if !settings.downstream_nodes.is_empty() {
        let node = head
            .headers
            .get("x-envoy-downstream-service-node")
            .and_then(|v| v.to_str().ok());
        if !node.is_some_and(|n| settings.downstream_nodes.iter().any(|d| d == n)) {
            return FaultResult::Continue;
        }
    }
    if !settings.headers.iter().all(|h| route::header_matches(h, head)) {
        return FaultResult::Continue;
    }
    let enter = |active: &mut Option<ActiveFault>| {
        if active.is_none() {
            stats.active_faults.fetch_add(1, Relaxed);
            *active = Some(ActiveFault(stats.clone()));
        }
    };
    if let Some(d) = settings
        .delay
        .filter(|d| d.percent.sample() && !d.duration.is_zero())
    {
        stats.delays_injected.fetch_add(1, Relaxed);
        enter(active);
        rec.flags.insert(ResponseFlags::DI);
        tokio::time::sleep(d.duration).await;
    }
    let Some(abort) = settings.abort.filter(|a| a.percent.sample()) else {
        return FaultResult::Continue;
    };
    stats.aborts_injected.fetch_add(1, Relaxed);
    enter(active);
    let reply = match abort.status {
        AbortStatus::Http(code) => LocalReply::new(
            code,
            "fault filter abort",
            ResponseFlags::FI,
            "fault_filter_abort",
        ),
        AbortStatus::Grpc(code) if grpc => {
            // A trailers-only gRPC answer: 200, status and message in the headers.
            let mut r = LocalReply::new(200, "", ResponseFlags::FI, "fault_filter_abort");
            r.headers
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            r.headers.insert("grpc-status", HeaderValue::from(code));
            r.headers
                .insert("grpc-message", HeaderValue::from_static("fault filter abort"));
            r
        }
        AbortStatus::Grpc(_) => {
            LocalReply::new(200, "fault filter abort", ResponseFlags::FI, "fault_filter_abort")
        }
    };
    FaultResult::Abort(reply)
}

/// Holds one count in `active_faults` while the request is being routed.
struct ActiveFault(Arc<FaultStats>);

impl Drop for ActiveFault {
    fn drop(&mut self) {
        self.0.active_faults.fetch_sub(1, Relaxed);
    }
}

/// The downstream address Envoy attributes the request to: the last `x-forwarded-for` hop
/// when the connection manager does not use the remote address (sidecars), else the peer.
fn downstream_ip(
    hcm: &HttpConnectionManager,
    headers: &HeaderMap,
    peer: std::net::IpAddr,
) -> std::net::IpAddr {
    if hcm.use_remote_address {
        return peer;
    }
    headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .next_back()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(peer)
}

/// Envoy's `HeaderUtility::stripPortFromHost`: `host:port` → `host` when the port is numeric
/// (and, for `Matching`, equal to the connection's local port). CONNECT keeps its port (RFC
/// 9110 needs host:port); a colon inside `[...]` (an IPv6 literal) is no port.
fn strip_host_port(authority: &str, method: &Method, mode: StripPort, local_port: u16) -> Option<String> {
    if mode == StripPort::None || method == Method::CONNECT {
        return None;
    }
    let colon = authority.rfind(':')?;
    if authority.rfind(']').is_some_and(|end| end > colon) {
        return None;
    }
    // absl::SimpleAtoi: surrounding ASCII space and a `+` sign allowed, digits, fits in u32.
    let digits = authority[colon + 1..].trim_matches(|c: char| c.is_ascii_whitespace());
    let digits = digits.strip_prefix('+').unwrap_or(digits);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let port: u32 = digits.parse().ok()?;
    if mode == StripPort::Matching && port != u32::from(local_port) {
        return None;
    }
    Some(authority[..colon].to_owned())
}

/// Routes and forwards one request; `extra` collects headers for whatever response results.
async fn route_request(ctx: Rc<ConnCtx>, req: Request<Incoming>, extra: &mut Extra) -> Response<ResBody> {
    let started = Instant::now();
    let snap = ctx.worker.snapshot();
    let hcm = ctx.hcm.clone();
    let version = req.version();
    let (mut parts, body) = req.into_parts();
    let scheme: &'static str = if ctx.meta.tls { "https" } else { "http" };

    // `:authority` (HTTP/2) or `host`, and `:path`: shared with the request, not copied.
    let uri_authority = parts.uri.authority().cloned();
    let host_header = match uri_authority {
        Some(_) => None,
        None => joined(&parts.headers, &HOST),
    };
    let authority: &str = match (&uri_authority, &host_header) {
        (Some(a), _) => a.as_str(),
        (None, Some(h)) => h.to_str().unwrap_or(""),
        (None, None) => "",
    };
    // `strip_*_host_port`: before routing, and what goes upstream (Envoy rewrites the header).
    let stripped;
    let authority: &str = match strip_host_port(
        authority,
        &parts.method,
        hcm.strip_port,
        ctx.meta.destination.port(),
    ) {
        Some(s) => {
            if let Ok(v) = HeaderValue::from_str(&s) {
                if parts.headers.contains_key(HOST) {
                    parts.headers.insert(HOST, v);
                }
            }
            stripped = s;
            &stripped
        }
        None => authority,
    };
    let path_and_query = parts.uri.path_and_query().cloned();
    let path: &str = path_and_query.as_ref().map_or("/", |p| p.as_str());
    let method = parts.method.clone();

    // Untrusted clients cannot steer retries and timeouts.
    let internal = is_internal(&hcm, &parts.headers, ctx.meta.peer.ip());
    let controls = if internal {
        Controls::read(&parts.headers)
    } else {
        Controls::default()
    };
    // One pass over the names rather than 14 hashed lookups: most requests carry none.
    if parts.headers.keys().any(|k| k.as_str().starts_with("x-envoy-")) {
        for h in &INTERNAL_ONLY {
            parts.headers.remove(h);
        }
    }
    if internal {
        parts.headers.insert(
            HeaderName::from_static("x-envoy-internal"),
            HeaderValue::from_static("true"),
        );
    }

    // Request-id, forwarding headers and the rest of what the connection manager adds.
    let external = hcm.use_remote_address;
    if hcm.generate_request_id {
        let keep = !external || hcm.preserve_external_request_id;
        set_unless_kept(&mut parts.headers, &X_REQUEST_ID, keep, request_id);
    }
    if hcm.use_remote_address && !hcm.skip_xff_append {
        let peer = ctx.meta.peer.ip().to_string();
        let xff = match parts.headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(existing) if !existing.is_empty() => format!("{existing},{peer}"),
            _ => peer,
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            parts.headers.insert(X_FORWARDED_FOR.clone(), v);
        }
    }
    set_unless_kept(&mut parts.headers, &X_FORWARDED_PROTO, !external, || {
        HeaderValue::from_static(scheme)
    });
    if let Some(via) = &hcm.via {
        if let Ok(v) = HeaderValue::from_str(via) {
            parts.headers.append(VIA.clone(), v);
        }
    }

    let mut rec = LogRecord::new(ctx.meta.destination, ctx.meta.peer);
    rec.protocol = Some(protocol_name(version));
    rec.connection_id = ctx.meta.id;
    rec.requested_server_name = ctx.meta.server_name.clone();
    rec.downstream_tls_version = ctx.meta.tls_version;
    let request_bytes = RequestBytes::for_body(&body);
    let grpc = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/grpc"));
    // Only access logs read the request back (the metrics just its authority): without one,
    // skip the copies.
    let logging = !hcm.access_logs.is_empty();
    let view = |headers: &HeaderMap, path: &str, authority: &str| {
        // The `host` header's own bytes when it went on unchanged.
        let authority = match &host_header {
            Some(h) if h.as_bytes() == authority.as_bytes() => h.clone(),
            _ => HeaderValue::from_str(authority).unwrap_or(HeaderValue::from_static("")),
        };
        if !logging {
            return RequestView {
                method: String::new(),
                path: String::new(),
                authority,
                scheme: String::new(),
                headers: HeaderMap::new(),
            };
        }
        RequestView {
            method: method.to_string(),
            path: path.to_owned(),
            authority,
            scheme: scheme.into(),
            headers: headers.clone(),
        }
    };

    let route_config = match &hcm.routes {
        RouteSource::Inline(rc) => Some(rc.clone()),
        RouteSource::Rds(name) => snap.route_config(name).cloned(),
    };
    let vhost = route_config
        .as_ref()
        .and_then(|rc| route::find_virtual_host(rc, authority).map(|vh| (rc, vh)));

    // `require_tls` (Istio's httpsRedirect) answers before any route is matched.
    if let Some((_, vh)) = vhost {
        let forwarded_proto = parts
            .headers
            .get(&X_FORWARDED_PROTO)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(scheme);
        let redirect = match vh.require_tls {
            RequireTls::None => false,
            RequireTls::All => forwarded_proto != "https",
            RequireTls::ExternalOnly => forwarded_proto != "https" && !internal,
        };
        if redirect {
            rec.request = Some(view(&parts.headers, path, authority));
            let mut reply = LocalReply::new(301, "", ResponseFlags::empty(), "direct_response");
            if let Ok(v) = HeaderValue::from_str(&format!("https://{authority}{path}")) {
                reply.headers.insert(LOCATION, v);
            }
            return local_reply(&ctx, rec, started, request_bytes, reply, body, None);
        }
    }

    let head = RequestHead {
        method: method.as_str(),
        path,
        authority,
        scheme,
        headers: &parts.headers,
    };
    let found = vhost.and_then(|(rc, vh)| Some((rc, vh, route::find_route(vh, &head)?)));
    let Some((rc, vh, route)) = found else {
        rec.request = Some(view(&parts.headers, path, authority));
        let reply = LocalReply::new(404, "", ResponseFlags::NR, "route_not_found");
        return local_reply(&ctx, rec, started, request_bytes, reply, body, None);
    };
    rec.route_name = (!route.name.is_empty()).then(|| Arc::from(route.name.as_str()));

    // Which cluster (chosen with the route, as Envoy does, so filters can look at it).
    let (cluster_name, weighted_headers) = match &route.action {
        Action::Forward(a) => match &a.cluster {
            ClusterPick::Named(n) => (Some(n.clone()), None),
            ClusterPick::Header(h) => (
                parts.headers.get(h).and_then(|v| v.to_str().ok()).map(Arc::from),
                None,
            ),
            ClusterPick::Weighted { clusters, total } => match route::pick_weighted(clusters, *total) {
                Some((c, m)) => (Some(c.name.clone()), Some(m)),
                None => (None, None),
            },
        },
        _ => (None, None),
    };
    let cluster = cluster_name.as_deref().and_then(|n| snap.cluster(n).cloned());
    if cluster.is_some() {
        rec.upstream_cluster = cluster_name.clone();
    }

    // HTTP filters before the router (fault, CORS), in configured order.
    let mut _active_fault = None;
    for f in &hcm.http_filters {
        let levels = [&route.per_filter, &vh.per_filter, &rc.per_filter];
        match f {
            HttpFilter::Fault { name, config, stats } => {
                let settings = match traffic::most_specific(levels, name) {
                    Some(FilterOverride::Disabled) => continue,
                    Some(FilterOverride::Fault(f)) => f.clone(),
                    _ => config.clone(),
                };
                let head = RequestHead {
                    method: method.as_str(),
                    path,
                    authority,
                    scheme,
                    headers: &parts.headers,
                };
                if let FaultResult::Abort(reply) = fault_filter(
                    &settings,
                    stats,
                    cluster_name.as_deref(),
                    &head,
                    grpc,
                    &mut rec,
                    &mut _active_fault,
                )
                .await
                {
                    rec.request = Some(view(&parts.headers, path, authority));
                    return local_reply_at(&ctx, rec, started, request_bytes, reply, body, cluster, false);
                }
            }
            HttpFilter::Cors { name } => {
                let Action::Forward(action) = &route.action else {
                    continue;
                };
                if matches!(
                    traffic::most_specific(levels, name),
                    Some(FilterOverride::Disabled)
                ) {
                    continue;
                }
                let mut policies: Vec<&CorsPolicy> = levels
                    .iter()
                    .filter_map(|l| {
                        l.iter().find_map(|(n, o)| match o {
                            FilterOverride::Cors(c) if n == name => Some(c.as_ref()),
                            _ => None,
                        })
                    })
                    .collect();
                if policies.is_empty() {
                    policies.extend(action.cors.as_deref());
                    policies.extend(vh.cors.as_deref());
                }
                match cors::decide(&policies, &method, &parts.headers) {
                    cors::Decision::Pass => {}
                    cors::Decision::Annotate(h) => {
                        extra.set.extend(h.into_iter().filter_map(|(k, v)| Some((k?, v))));
                    }
                    cors::Decision::Preflight(h) => {
                        rec.request = Some(view(&parts.headers, path, authority));
                        let mut reply = LocalReply::new(200, "", ResponseFlags::empty(), "cors_response");
                        reply.headers = h;
                        return local_reply_at(
                            &ctx,
                            rec,
                            started,
                            request_bytes,
                            reply,
                            body,
                            cluster,
                            false,
                        );
                    }
                }
            }
        }
    }

    let action = match &route.action {
        Action::Direct {
            status,
            body: reply_body,
        } => {
            rec.request = Some(view(&parts.headers, path, authority));
            let mut reply = LocalReply::new(*status, "", ResponseFlags::empty(), "direct_response");
            reply.body = reply_body.clone().filter(|b| !b.is_empty());
            mutate(
                &mut reply.headers,
                &[&rc.headers, &vh.headers, &route.headers],
                rc.most_specific_header_mutations_wins,
                true,
                &ctx,
            );
            return local_reply(&ctx, rec, started, request_bytes, reply, body, None);
        }
        Action::Redirect(r) => {
            rec.request = Some(view(&parts.headers, path, authority));
            let mut reply = LocalReply::new(r.code, "", ResponseFlags::empty(), "direct_response");
            if let Ok(v) = HeaderValue::from_str(&redirect_location(r, authority, path, route)) {
                reply.headers.insert(LOCATION, v);
            }
            mutate(
                &mut reply.headers,
                &[&rc.headers, &vh.headers, &route.headers],
                rc.most_specific_header_mutations_wins,
                true,
                &ctx,
            );
            return local_reply(&ctx, rec, started, request_bytes, reply, body, None);
        }
        Action::Forward(a) => a,
    };

    let Some(cluster) = cluster else {
        rec.upstream_cluster = None;
        rec.request = Some(view(&parts.headers, path, authority));
        let mut reply = LocalReply::new(
            action.cluster_not_found_code,
            "",
            ResponseFlags::NC,
            "cluster_not_found",
        );
        mutate(
            &mut reply.headers,
            &[&rc.headers, &vh.headers, &route.headers],
            rc.most_specific_header_mutations_wins,
            true,
            &ctx,
        );
        return local_reply(&ctx, rec, started, request_bytes, reply, body, None);
    };

    // The router's clock starts here: time spent in filters (an injected delay) does not
    // count against the route timeout. Without a delay, no time has passed to speak of.
    let router_started = if rec.flags.contains(ResponseFlags::DI) {
        Instant::now()
    } else {
        started
    };

    // The request hash, only for clusters that use one (Envoy evaluates hash policies inside
    // the hashing load balancers, so a cookie is generated only there).
    let mut lb_hash = None;
    if cluster.config.lb_policy.is_hashing() && !action.hash_policy.is_empty() {
        let head = RequestHead {
            method: method.as_str(),
            path,
            authority,
            scheme,
            headers: &parts.headers,
        };
        let source = downstream_ip(&hcm, &parts.headers, ctx.meta.peer.ip());
        let (peer, local) = (ctx.meta.peer, ctx.meta.destination);
        lb_hash = route::request_hash(&action.hash_policy, &head, source, |name, cpath, ttl, attrs| {
            let value = format!(
                "{:016x}",
                crate::hash::xxhash64(format!("{peer}{local}").as_bytes(), 0)
            );
            if let Ok(v) = HeaderValue::from_str(&route::set_cookie(name, &value, cpath, ttl, attrs)) {
                extra.append.push((http::header::SET_COOKIE, v));
            }
            value
        });
    }

    // Path and host rewrites.
    // (Borrowed unless rewritten: no copies per request.)
    let rewritten_path = route::rewrite_path(action, &route.matcher.path, path);
    if rewritten_path.is_some() {
        if let Ok(v) = HeaderValue::from_str(path) {
            parts.headers.insert(X_ENVOY_ORIGINAL_PATH.clone(), v);
        }
    }
    let upstream_path: &str = rewritten_path.as_deref().unwrap_or(path);
    let rewritten_authority = match &action.host_rewrite {
        Some(HostRewrite::Literal(h)) => Some(h.clone()),
        Some(HostRewrite::Header(h)) => parts
            .headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        Some(HostRewrite::PathRegex(re, sub)) => {
            let p = path.split('?').next().unwrap_or("");
            Some(re.replace_all(p, sub.as_str()).into_owned())
        }
        Some(HostRewrite::Auto) | None => None,
    };
    let upstream_authority: &str = rewritten_authority.as_deref().unwrap_or(authority);
    if upstream_authority != authority {
        if let Ok(v) = HeaderValue::from_str(authority) {
            parts.headers.insert(X_ENVOY_ORIGINAL_HOST.clone(), v);
        }
    }

    // Timeouts and retries, with the client overrides Envoy honours from trusted clients.
    let mut timeout = action.timeout;
    if let Some(ms) = controls.timeout_ms {
        timeout = (ms > 0).then(|| Duration::from_millis(ms));
    }
    let mut retry = action.retry_policy.clone().or_else(|| vh.retry_policy.clone());
    if controls.retry_on.is_some() || controls.retry_grpc_on.is_some() {
        let p = retry.get_or_insert_with(|| RetryPolicy {
            retry_on: RetryOn::default(),
            num_retries: 1,
            per_try_timeout: None,
            retriable_status_codes: Vec::new(),
            base_interval: Duration::from_millis(25),
            max_interval: Duration::from_millis(250),
            previous_hosts: false,
            host_selection_max_attempts: 1,
        });
        for list in [&controls.retry_on, &controls.retry_grpc_on]
            .into_iter()
            .flatten()
        {
            merge_retry_on(&mut p.retry_on, list);
        }
    }
    if let Some(p) = retry.as_mut() {
        if let Some(n) = controls.max_retries {
            p.num_retries = n;
        }
        p.retriable_status_codes
            .extend(controls.retriable_status_codes.iter().copied());
    }
    let mut per_try = retry.as_ref().and_then(|p| p.per_try_timeout);
    if let Some(ms) = controls.per_try_timeout_ms {
        per_try = (ms > 0).then(|| Duration::from_millis(ms));
    }
    // A per-try timeout at least as long as the global one is no per-try timeout.
    if let (Some(p), Some(t)) = (per_try, timeout) {
        if p >= t {
            per_try = None;
        }
    }

    // On the stack: the levels are fixed, and this runs for every request.
    let all_levels: [&HeaderMutations; 4] = [
        &rc.headers,
        &vh.headers,
        &route.headers,
        weighted_headers.unwrap_or(&route.headers),
    ];
    let levels = &all_levels[..if weighted_headers.is_some() { 4 } else { 3 }];
    mutate(
        &mut parts.headers,
        levels,
        rc.most_specific_header_mutations_wins,
        false,
        &ctx,
    );
    if let Some(op) = &route.decorator {
        if !parts.headers.contains_key(&X_ENVOY_DECORATOR_OPERATION) && hcm.use_remote_address {
            if let Ok(v) = HeaderValue::from_str(op) {
                parts.headers.insert(X_ENVOY_DECORATOR_OPERATION.clone(), v);
            }
        }
    }
    strip_hop_by_hop(&mut parts.headers);
    // The access log sees the request as it went upstream (rewritten path and host).
    rec.request = Some(view(&parts.headers, upstream_path, upstream_authority));

    let routed_reply = |mut reply: LocalReply| {
        mutate(
            &mut reply.headers,
            levels,
            rc.most_specific_header_mutations_wins,
            true,
            &ctx,
        );
        reply
    };
    let Some(request_slot) = cluster.try_acquire(SlotKind::Request) else {
        let reply = routed_reply(LocalReply::new(
            503,
            "upstream connect error or disconnect/reset before headers. reset reason: overflow",
            ResponseFlags::UO,
            "upstream_reset_before_response_started{overflow}",
        ));
        return local_reply(&ctx, rec, started, request_bytes, reply, body, Some(cluster));
    };
    cluster.stats.upstream_rq_total.fetch_add(1, Relaxed);

    let http2 = match cluster.config.protocol {
        UpstreamProtocol::Http2 => true,
        UpstreamProtocol::Http1 => false,
        UpstreamProtocol::UseDownstream => version == Version::HTTP_2,
    };
    // A body is kept for replay (retries, mirrors) only when one of them may need it.
    let body_less = body.is_end_stream();
    let mirrors: Vec<&MirrorPolicy> = action.mirrors.iter().filter(|m| m.percent.sample()).collect();
    let wants_copy = !body_less && (!mirrors.is_empty() || retry.as_ref().is_some_and(|p| p.num_retries > 0));
    let tee = wants_copy.then(TeeState::new);
    let mut body = Some(CountingBody {
        inner: body,
        count: request_bytes.clone(),
        tee: tee.clone().map(TeeGuard),
    });

    // Mirrors: a copy of the request as it goes upstream, to each shadow cluster, with
    // `-shadow` on the host; the answer is ignored and never delays the original.
    for m in mirrors {
        let Some(shadow_cluster) = snap.cluster(&m.cluster).cloned() else {
            continue;
        };
        let shadow_authority = if m.keep_host {
            upstream_authority.to_owned()
        } else {
            shadow_host(upstream_authority)
        };
        let mut headers = parts.headers.clone();
        if let Some(t) = timeout {
            headers.insert(
                X_ENVOY_EXPECTED_RQ_TIMEOUT_MS.clone(),
                HeaderValue::from(t.as_millis() as u64),
            );
        }
        let (w, method, upstream_path, tee) = (
            ctx.worker.clone(),
            method.clone(),
            upstream_path.to_owned(),
            tee.clone(),
        );
        let original_dst = ctx.meta.destination;
        let host_rewrite_auto = matches!(action.host_rewrite, Some(HostRewrite::Auto));
        tokio::task::spawn_local(async move {
            shadow(
                w,
                shadow_cluster,
                ShadowRequest {
                    method,
                    path: upstream_path,
                    authority: shadow_authority,
                    headers,
                    original_dst,
                    host_rewrite_auto,
                    timeout,
                    body: if body_less { Some(Bytes::new()) } else { None },
                    tee,
                },
            )
            .await
        });
    }

    let max_attempts = 1 + retry.as_ref().map(|p| p.num_retries).unwrap_or(0);
    let deadline = timeout.map(|t| router_started + t);
    let mut attempt = 0u32;
    let mut tried: Vec<std::net::SocketAddr> = Vec::new();
    let mut retry_slot = None;
    loop {
        attempt += 1;
        rec.attempt_count = attempt;
        let lb = LbContext {
            original_dst: Some(ctx.meta.destination),
            hash: lb_hash,
        };
        // Retries may avoid hosts already tried (the previous_hosts predicate Istio sets).
        let host = match &retry {
            Some(p) if p.previous_hosts && attempt > 1 => {
                cluster.pick_avoiding(lb, p.host_selection_max_attempts + 1, |h| {
                    tried.contains(&h.address)
                })
            }
            _ => cluster.pick(lb),
        };
        let Some(host) = host else {
            cluster.stats.upstream_cx_none_healthy.fetch_add(1, Relaxed);
            let reply = routed_reply(LocalReply::new(
                503,
                "no healthy upstream",
                ResponseFlags::UH,
                "no_healthy_upstream",
            ));
            let b = body.take().map(|b| b.inner);
            return local_reply_with(
                &ctx,
                rec,
                started,
                request_bytes,
                reply,
                b,
                Some(cluster),
                Some(request_slot),
            );
        };
        // Only `previous_hosts` reads the list: skip the allocation otherwise.
        if retry.as_ref().is_some_and(|p| p.previous_hosts) {
            tried.push(host.address);
        }
        rec.upstream_host = Some(host.address);
        host.stats.rq_total.fetch_add(1, Relaxed);
        host.stats.rq_active.fetch_add(1, Relaxed);

        let upstream_body = if body_less {
            // Nothing to stream or count: no boxed wrapper (the empty body is a boxed ZST).
            drop(body.take());
            empty_body()
        } else if attempt == 1 {
            body.take()
                .map(|b| b.map_err(|e| Box::new(e) as upstream::BoxError).boxed_unsync())
                .unwrap_or_else(empty_body)
        } else {
            match tee.as_ref().and_then(|t| t.complete()) {
                Some(b) => full_body(b),
                None => empty_body(),
            }
        };
        // The last attempt takes the headers (only the response's request id reads them later).
        let mut headers = if attempt >= max_attempts && !hcm.always_set_request_id_in_response {
            std::mem::take(&mut parts.headers)
        } else {
            parts.headers.clone()
        };
        // One clock read for the attempt: time left, time advertised, upstream service time.
        let attempt_started = Instant::now();
        let remaining = deadline.map(|d| d.saturating_duration_since(attempt_started));
        let limit = match (remaining, per_try) {
            (Some(r), Some(p)) => Some(r.min(p)),
            (r, p) => r.or(p),
        };
        // Envoy's `setTimeoutHeaders`: the per-try timeout (or the route timeout), capped by
        // the route timeout minus the whole milliseconds elapsed since the router started
        // (1 ms when none is left).
        let elapsed_ms = attempt_started
            .saturating_duration_since(router_started)
            .as_millis() as u64;
        let advertised_ms = per_try.or(timeout).map(|e| {
            let e = e.as_millis() as u64;
            match timeout.map(|t| t.as_millis() as u64) {
                Some(t) if elapsed_ms >= t => 1,
                Some(t) => e.min(t - elapsed_ms),
                None => e,
            }
        });
        if let Some(ms) = advertised_ms {
            headers.insert(X_ENVOY_EXPECTED_RQ_TIMEOUT_MS.clone(), number_value(ms));
        }
        if vh.include_request_attempt_count {
            headers.insert(X_ENVOY_ATTEMPT_COUNT.clone(), number_value(attempt.into()));
        }
        let req = build_upstream_request(
            &method,
            // Unless rewritten, the path goes up as it came (already parsed and shared).
            match (&rewritten_path, &path_and_query) {
                (None, Some(pq)) => UpstreamPath::Parsed(pq.clone()),
                _ => UpstreamPath::Text(upstream_path),
            },
            upstream_authority,
            headers,
            http2,
            &host,
            action,
            upstream_body,
        );
        let send = ctx.worker.pools.send(&cluster, &host, http2, req);
        let outcome = match limit {
            Some(l) => tokio::time::timeout(l, send).await.ok(),
            None => Some(send.await),
        };
        let per_try_timed_out =
            outcome.is_none() && per_try.is_some() && deadline.is_none_or(|d| Instant::now() < d);
        let result: Result<Response<Incoming>, (ResponseFlags, LocalReply)> = match outcome {
            None => {
                cluster.stats.upstream_rq_timeout.fetch_add(1, Relaxed);
                host.stats.rq_timeout.fetch_add(1, Relaxed);
                cluster.report(&host, Outcome::Timeout);
                Err((
                    ResponseFlags::UT,
                    routed_reply(LocalReply::new(
                        504,
                        "upstream request timeout",
                        ResponseFlags::UT,
                        "response_timeout",
                    )),
                ))
            }
            Some(Ok((resp, local))) => {
                rec.upstream_local_address = local;
                cluster.report(&host, Outcome::ConnectSuccess);
                cluster.report(&host, Outcome::Http(resp.status().as_u16()));
                Ok(resp)
            }
            Some(Err(e)) => {
                // Envoy words these with underscores in details and logs.
                let transport = match &e {
                    UpstreamError::ConnectFailure(r) => Some(r.replace(' ', "_")),
                    UpstreamError::ConnectTimeout => Some("connection_timeout".to_string()),
                    _ => None,
                };
                rec.upstream_transport_failure_reason = transport.clone();
                let (flag, reason) = match &e {
                    UpstreamError::Overflow => (ResponseFlags::UO, "overflow"),
                    UpstreamError::ConnectFailure(_) | UpstreamError::ConnectTimeout => {
                        (ResponseFlags::UF, "remote connection failure")
                    }
                    UpstreamError::Reset(_) => (ResponseFlags::UC, "connection termination"),
                };
                if flag != ResponseFlags::UO {
                    cluster.report(&host, Outcome::ConnectFailed);
                }
                let details = match &transport {
                    Some(t) => format!(
                        "upstream_reset_before_response_started{{{}|{t}}}",
                        reason.replace(' ', "_")
                    ),
                    None => format!(
                        "upstream_reset_before_response_started{{{}}}",
                        reason.replace(' ', "_")
                    ),
                };
                let msg = if attempt > 1 {
                    format!(
                        "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: {reason}"
                    )
                } else {
                    format!(
                        "upstream connect error or disconnect/reset before headers. reset reason: {reason}"
                    )
                };
                Err((
                    flag,
                    routed_reply(LocalReply {
                        status: StatusCode::SERVICE_UNAVAILABLE,
                        body: Some(Bytes::from(msg)),
                        flags: flag,
                        details: details.into(),
                        headers: HeaderMap::new(),
                    }),
                ))
            }
        };

        // Decide whether to retry this attempt.
        let retry_on = retry.as_ref().map(|p| p.retry_on).unwrap_or_default();
        let codes: &[u16] = retry.as_ref().map_or(&[], |p| &p.retriable_status_codes);
        let retriable = match &result {
            Ok(resp) => retriable_response(retry_on, codes, resp),
            Err((f, _)) if *f == ResponseFlags::UF => {
                retry_on.connect_failure
                    || retry_on.five_xx
                    || retry_on.gateway_error
                    || retry_on.reset
                    || retry_on.reset_before_request
            }
            Err((f, _)) if *f == ResponseFlags::UC => {
                retry_on.reset || retry_on.five_xx || retry_on.gateway_error
            }
            Err((f, _)) if *f == ResponseFlags::UT => {
                per_try_timed_out && (retry_on.five_xx || retry_on.gateway_error || retry_on.reset)
            }
            Err(_) => false,
        };
        // A retry needs the request again: no body, or a body read whole into the copy.
        let replayable = body_less || tee.as_ref().is_some_and(|t| t.is_complete());
        let can_retry = retriable
            && attempt < max_attempts
            && (replayable
                || attempt == 1
                    && matches!(&result, Err((f, _)) if *f == ResponseFlags::UF)
                    && body.is_some())
            && deadline.is_none_or(|d| Instant::now() < d);
        if can_retry
            && (retry_slot.is_some() || {
                retry_slot = cluster.try_acquire(SlotKind::Retry);
                retry_slot.is_some()
            })
        {
            host.stats.rq_active.fetch_sub(1, Relaxed);
            host.stats.rq_error.fetch_add(1, Relaxed);
            cluster.stats.upstream_rq_retry.fetch_add(1, Relaxed);
            if let Ok(resp) = result {
                // Drain and drop the failed response before retrying.
                drop(resp);
            }
            if let Some(p) = &retry {
                let backoff = p
                    .base_interval
                    .saturating_mul(1 << (attempt - 1).min(10))
                    .min(p.max_interval);
                tokio::time::sleep(Duration::from_millis(fastrand::u64(
                    0..=backoff.as_millis() as u64,
                )))
                .await;
            }
            continue;
        }
        drop(retry_slot);
        match result {
            Ok(resp) => {
                let now = Instant::now();
                let upstream_ms = now.saturating_duration_since(attempt_started).as_millis();
                rec.response_duration = Some(now.saturating_duration_since(started));
                let (mut rparts, rbody) = resp.into_parts();
                strip_hop_by_hop(&mut rparts.headers);
                rparts.headers.insert(
                    X_ENVOY_UPSTREAM_SERVICE_TIME.clone(),
                    number_value(upstream_ms as u64),
                );
                mutate(
                    &mut rparts.headers,
                    levels,
                    rc.most_specific_header_mutations_wins,
                    true,
                    &ctx,
                );
                server_header(&hcm, &mut rparts.headers);
                if hcm.always_set_request_id_in_response {
                    if let Some(id) = parts.headers.get(&X_REQUEST_ID) {
                        rparts.headers.insert(X_REQUEST_ID.clone(), id.clone());
                    }
                }
                // Envoy flags a retriable answer that has no retries left (even zero allowed).
                if retry.is_some() && retriable && attempt >= max_attempts {
                    rec.flags.insert(ResponseFlags::URX);
                }
                rec.response_code = rparts.status.as_u16();
                rec.response_code_details = Some("via_upstream".into());
                if logging {
                    rec.response_headers = Some(rparts.headers.clone());
                }

                rparts.version = version;
                let finish = Box::new(Finish {
                    ctx: ctx.clone(),
                    rec,
                    started,
                    request_bytes,
                    cluster: Some(cluster),
                    host: Some(host),
                    _request_slot: Some(request_slot),
                    grpc,
                    upstream_stats: true,
                });
                return Response::from_parts(
                    rparts,
                    ResBody {
                        inner: Inner::Upstream(rbody),
                        finish: Some(finish),
                    },
                );
            }
            Err((flag, reply)) => {
                host.stats.rq_active.fetch_sub(1, Relaxed);
                host.stats.rq_error.fetch_add(1, Relaxed);
                if retry.is_some() && retriable && attempt >= max_attempts {
                    rec.flags.insert(ResponseFlags::URX);
                }
                rec.flags.insert(flag);
                let b = body.take().map(|b| b.inner);
                return local_reply_with(
                    &ctx,
                    rec,
                    started,
                    request_bytes,
                    reply,
                    b,
                    Some(cluster),
                    Some(request_slot),
                );
            }
        }
    }
}

/// Envoy's shadow host: `-shadow` appended to the host, before any port.
fn shadow_host(authority: &str) -> String {
    match authority.rsplit_once(':') {
        Some((h, p))
            if !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (!h.contains(':') || h.ends_with(']')) =>
        {
            format!("{h}-shadow:{p}")
        }
        _ => format!("{authority}-shadow"),
    }
}

/// A mirrored request, built from the original as it went upstream.
struct ShadowRequest {
    method: Method,
    path: String,
    authority: String,
    headers: HeaderMap,
    original_dst: std::net::SocketAddr,
    host_rewrite_auto: bool,
    timeout: Option<Duration>,
    /// The body when known up front (body-less requests).
    body: Option<Bytes>,
    /// Otherwise the copy of the original's body, sent once read whole (≤ 1 MiB).
    tee: Option<Arc<TeeState>>,
}

/// Sends one mirror copy and discards the answer (Envoy's shadow: fire and forget).
async fn shadow(worker: Rc<Worker>, cluster: Arc<ClusterState>, r: ShadowRequest) {
    let body = match (r.body, r.tee) {
        (Some(b), _) => b,
        (None, Some(t)) => match t.wait().await {
            Some(b) => b,
            None => return,
        },
        (None, None) => return,
    };
    let Some(host) = cluster.pick(LbContext {
        original_dst: Some(r.original_dst),
        hash: None,
    }) else {
        cluster.stats.upstream_cx_none_healthy.fetch_add(1, Relaxed);
        return;
    };
    let Some(_slot) = cluster.try_acquire(SlotKind::Request) else {
        return;
    };
    cluster.stats.upstream_rq_total.fetch_add(1, Relaxed);
    host.stats.rq_total.fetch_add(1, Relaxed);
    let http2 = cluster.config.protocol == UpstreamProtocol::Http2;
    let authority = if r.host_rewrite_auto {
        host.address.to_string()
    } else {
        r.authority
    };
    let uri = if http2 {
        Uri::builder()
            .scheme("http")
            .authority(authority.as_str())
            .path_and_query(r.path.as_str())
            .build()
    } else {
        Uri::builder().path_and_query(r.path.as_str()).build()
    };
    let mut headers = r.headers;
    if http2 {
        headers.remove(HOST);
    } else {
        if let Ok(v) = HeaderValue::from_str(&authority) {
            headers.insert(HOST, v);
        }
        explicit_empty_length(&r.method, &mut headers, body.is_empty());
    }
    let mut req = Request::new(full_body(body));
    *req.method_mut() = r.method;
    *req.uri_mut() = uri.unwrap_or_else(|_| Uri::from_static("/"));
    *req.version_mut() = if http2 { Version::HTTP_2 } else { Version::HTTP_11 };
    *req.headers_mut() = headers;
    let send = worker.pools.send(&cluster, &host, http2, req);
    let result = match r.timeout {
        Some(t) => tokio::time::timeout(t, send).await.ok(),
        None => Some(send.await),
    };
    match result {
        Some(Ok((resp, _))) => {
            cluster.stats.count_status(resp.status().as_u16());
            // Read the answer to the end so the connection can be reused, then drop it.
            let _ = resp.into_body().collect().await;
        }
        Some(Err(_)) => {}
        None => {
            cluster.stats.upstream_rq_timeout.fetch_add(1, Relaxed);
        }
    }
}

/// The upstream request's `:path`.
enum UpstreamPath<'a> {
    Parsed(http::uri::PathAndQuery),
    Text(&'a str),
}

#[allow(clippy::too_many_arguments)]
fn build_upstream_request(
    method: &Method,
    path: UpstreamPath<'_>,
    authority: &str,
    mut headers: HeaderMap,
    http2: bool,
    host: &Host,
    action: &RouteAction,
    body: Body,
) -> Request<Body> {
    let auto;
    let authority = if matches!(action.host_rewrite, Some(HostRewrite::Auto)) {
        auto = host.address.to_string();
        &auto
    } else {
        authority
    };
    let path = match path {
        UpstreamPath::Parsed(pq) => Ok(pq),
        UpstreamPath::Text(p) => http::uri::PathAndQuery::try_from(p),
    };
    let uri = path.map_err(http::Error::from).and_then(|path| {
        if http2 {
            headers.remove(HOST);
            Uri::builder()
                .scheme("http")
                .authority(authority)
                .path_and_query(path)
                .build()
        } else {
            // Most requests keep their one host header: no new value then.
            let mut hosts = headers.get_all(HOST).iter();
            let kept = matches!((hosts.next(), hosts.next()), (Some(h), None) if h.as_bytes() == authority.as_bytes());
            if !kept {
                if let Ok(v) = HeaderValue::from_str(authority) {
                    headers.insert(HOST, v);
                }
            }
            Uri::builder().path_and_query(path).build()
        }
    });
    if !http2 {
        explicit_empty_length(method, &mut headers, body.is_end_stream());
    }
    let mut req = Request::new(body);
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri.unwrap_or_else(|_| Uri::from_static("/"));
    *req.version_mut() = if http2 { Version::HTTP_2 } else { Version::HTTP_11 };
    *req.headers_mut() = headers;
    req
}

/// Envoy's HTTP/1 codec sends an explicit `content-length: 0` with a body-less request whose
/// method may carry a body (not GET, HEAD, DELETE, TRACE, CONNECT; OPTIONS and POST get it,
/// as proxy_diff.rs checks).
fn explicit_empty_length(method: &Method, headers: &mut HeaderMap, body_less: bool) {
    if body_less
        && !matches!(
            *method,
            Method::GET | Method::HEAD | Method::DELETE | Method::TRACE | Method::CONNECT
        )
        && !headers.contains_key(CONTENT_LENGTH)
        && !headers.contains_key(http::header::TRANSFER_ENCODING)
    {
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
}

fn server_header(hcm: &HttpConnectionManager, headers: &mut HeaderMap) {
    match hcm.server_header {
        ServerHeader::Overwrite => {
            headers.insert(SERVER, hcm.server_name.clone());
        }
        ServerHeader::AppendIfAbsent => {
            if !headers.contains_key(SERVER) {
                headers.insert(SERVER, hcm.server_name.clone());
            }
        }
        ServerHeader::PassThrough => {}
    }
}

fn redirect_location(r: &Redirect, authority: &str, path: &str, route: &Route) -> String {
    let scheme = r.scheme.clone().unwrap_or_else(|| "http".into());
    let (mut host, mut port) = match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') => {
            (h.to_owned(), Some(p.to_owned()))
        }
        _ => (authority.to_owned(), None),
    };
    if let Some(h) = &r.host {
        host = h.clone();
    }
    if let Some(p) = r.port {
        port = Some(p.to_string());
    }
    // Default ports are dropped (Envoy does when the scheme changes to its default port).
    if port.as_deref() == Some(if scheme == "https" { "443" } else { "80" })
        || (r.scheme.is_some() && r.port.is_none())
    {
        port = None;
    }
    let (p, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let new_path = match &r.path {
        RedirectPath::Keep => p.to_owned(),
        RedirectPath::Path(np) => np.clone(),
        RedirectPath::Prefix(prefix) => match &route.matcher.path {
            PathMatch::Prefix(m) | PathMatch::Separated(m) => {
                format!("{prefix}{}", p.get(m.len()..).unwrap_or(""))
            }
            _ => prefix.clone(),
        },
        RedirectPath::Regex(re, sub) => re.replace_all(p, sub.as_str()).into_owned(),
    };
    let mut loc = format!("{scheme}://{host}");
    if let Some(port) = port {
        loc.push(':');
        loc.push_str(&port);
    }
    loc.push_str(&new_path);
    if let (Some(q), false) = (query, r.strip_query) {
        if !matches!(r.path, RedirectPath::Path(ref np) if np.contains('?')) {
            loc.push('?');
            loc.push_str(q);
        }
    }
    loc
}

fn local_reply(
    ctx: &Rc<ConnCtx>,
    rec: LogRecord,
    started: Instant,
    request_bytes: RequestBytes,
    reply: LocalReply,
    body: Incoming,
    cluster: Option<Arc<ClusterState>>,
) -> Response<ResBody> {
    local_reply_with(ctx, rec, started, request_bytes, reply, Some(body), cluster, None)
}

#[allow(clippy::too_many_arguments)]
fn local_reply_with(
    ctx: &Rc<ConnCtx>,
    rec: LogRecord,
    started: Instant,
    request_bytes: RequestBytes,
    reply: LocalReply,
    body: Option<Incoming>,
    cluster: Option<Arc<ClusterState>>,
    slot: Option<crate::cluster::Slot>,
) -> Response<ResBody> {
    local_reply_full(ctx, rec, started, request_bytes, reply, body, cluster, slot, true)
}

/// A local reply from a filter before the router (fault abort, CORS preflight): the route's
/// cluster labels the metrics, but the cluster's upstream counters do not move.
#[allow(clippy::too_many_arguments)]
fn local_reply_at(
    ctx: &Rc<ConnCtx>,
    rec: LogRecord,
    started: Instant,
    request_bytes: RequestBytes,
    reply: LocalReply,
    body: Incoming,
    cluster: Option<Arc<ClusterState>>,
    upstream_stats: bool,
) -> Response<ResBody> {
    local_reply_full(
        ctx,
        rec,
        started,
        request_bytes,
        reply,
        Some(body),
        cluster,
        None,
        upstream_stats,
    )
}

#[allow(clippy::too_many_arguments)]
fn local_reply_full(
    ctx: &Rc<ConnCtx>,
    mut rec: LogRecord,
    started: Instant,
    request_bytes: RequestBytes,
    reply: LocalReply,
    body: Option<Incoming>,
    cluster: Option<Arc<ClusterState>>,
    slot: Option<crate::cluster::Slot>,
    upstream_stats: bool,
) -> Response<ResBody> {
    // The request body is not read; hyper discards it (HTTP/1 closes if it was large).
    drop(body);
    let mut headers = reply.headers;
    if let Some(b) = &reply.body {
        headers.insert(CONTENT_LENGTH, number_value(b.len() as u64));
        if !headers.contains_key(CONTENT_TYPE) {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
    }
    server_header(&ctx.hcm, &mut headers);
    rec.flags.insert(reply.flags);
    rec.response_code = reply.status.as_u16();
    rec.response_code_details = Some(reply.details);
    if !ctx.hcm.access_logs.is_empty() {
        rec.response_headers = Some(headers.clone());
    }
    let mut resp = Response::new(ResBody {
        inner: Inner::Full(reply.body),
        finish: Some(Box::new(Finish {
            ctx: ctx.clone(),
            rec,
            started,
            request_bytes,
            cluster,
            host: None,
            _request_slot: slot,
            grpc: false,
            upstream_stats,
        })),
    });
    *resp.status_mut() = reply.status;
    *resp.headers_mut() = headers;
    resp
}

/// The snapshot type handlers see (kept here so tests can build one).
pub type SnapshotRef = Arc<Snapshot>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_headers_are_written_as_formatted() {
        for n in (0..1100).chain([9999, 123_456, u64::MAX]) {
            assert_eq!(number_value(n), HeaderValue::from(n), "{n}");
        }
    }

    #[test]
    fn strips_ports_as_envoy() {
        let get = Method::GET;
        let any = |a: &str| strip_host_port(a, &get, StripPort::Any, 8080);
        let matching = |a: &str| strip_host_port(a, &get, StripPort::Matching, 8080);
        assert_eq!(any("example.com:80").as_deref(), Some("example.com"));
        assert_eq!(any("example.com:8080").as_deref(), Some("example.com"));
        assert_eq!(any("example.com"), None);
        assert_eq!(any("example.com:"), None);
        assert_eq!(any("example.com:http"), None);
        assert_eq!(any("example.com:99999999999"), None);
        assert_eq!(any("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(any("[::1]"), None);
        assert_eq!(matching("example.com:8080").as_deref(), Some("example.com"));
        assert_eq!(matching("example.com:80"), None);
        assert_eq!(strip_host_port("example.com:80", &get, StripPort::None, 80), None);
        assert_eq!(
            strip_host_port("example.com:443", &Method::CONNECT, StripPort::Any, 443),
            None
        );
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    /// Sorted: removing from a `HeaderMap` moves entries around.
    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut n: Vec<&str> = h.iter().map(|(k, _)| k.as_str()).collect();
        n.sort_unstable();
        n
    }

    #[test]
    fn hop_by_hop_headers_stop_here() {
        let mut h = headers(&[("content-type", "text/plain"), ("x-a", "1")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["content-type", "x-a"], "nothing to strip");

        // Names of a hop-by-hop name's length (it is looked up by length first) are kept.
        let mut h = headers(&[
            ("connectiom", "1"),
            ("keep-alivf", "1"),
            ("tf", "1"),
            ("upgradf", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["connectiom", "keep-alivf", "tf", "upgradf"]);

        let mut h = headers(&[("connection", "keep-alive"), ("x-a", "1"), ("close", "kept")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(
            names(&h),
            ["close", "x-a"],
            "keep-alive and close nominate nothing"
        );

        let mut h = headers(&[
            ("connection", "Keep-Alive, X-Secret"),
            ("connection", "upgrade"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-secret", "s"),
            ("x-a", "1"),
            ("te", "gzip"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(
            names(&h),
            ["x-a"],
            "every hop-by-hop header and the nominated ones"
        );

        let mut h = headers(&[("connection", "te"), ("te", "trailers"), ("x-a", "1")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(
            names(&h),
            ["te", "x-a"],
            "te: trailers goes on, even when nominated"
        );
    }
}
