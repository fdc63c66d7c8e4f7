//! `http_connection_manager` + router: serves HTTP/1.1 and h2c downstream (hyper), routes each
//! request (virtual host → route → action), forwards it through the worker's connection pools,
//! streams both bodies, and writes the access log and metrics when the response ends.

use std::convert::Infallible;
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
use tokio::net::TcpStream;

use crate::access_log::{self, LogRecord, RequestView, ResponseFlags};
use crate::cluster::{ClusterState, Host, LbContext, SlotKind};
use crate::listener::ConnMeta;
use crate::model::*;
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
static VIA: HeaderName = HeaderName::from_static("via");
static X_ENVOY_ORIGINAL_HOST: HeaderName = HeaderName::from_static("x-envoy-original-host");

/// Control headers Envoy accepts only from internal clients and strips from the rest.
const INTERNAL_ONLY: [&str; 14] = [
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-internal",
    "x-envoy-ip-tags",
    "x-envoy-max-retries",
    "x-envoy-retry-grpc-on",
    "x-envoy-retry-on",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-retriable-status-codes",
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

/// Serves one downstream connection until it closes or the worker drains.
pub async fn serve(worker: Rc<Worker>, hcm: Arc<HttpConnectionManager>, stream: TcpStream, meta: ConnMeta) {
    let mut drain = worker.drain_signal();
    let ctx = Rc::new(ConnCtx {
        worker,
        hcm: hcm.clone(),
        meta,
    });
    let svc = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle(ctx, req).await) }
    });
    let io = TokioIo::new(stream);
    let max_headers = (hcm.max_request_headers_kb as usize * 1024).max(8192);
    let mut builder = hyper_util::server::conn::auto::Builder::new(upstream::LocalExec);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Some(
            hcm.request_headers_timeout.unwrap_or(Duration::from_secs(60)),
        ))
        .max_buf_size(max_headers.max(65536))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(max_headers as u32);
    let builder = match hcm.codec {
        Codec::Http1 => builder.http1_only(),
        Codec::Http2 => builder.http2_only(),
        Codec::Auto => builder,
    };
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = drain.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
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
    request_bytes: Arc<AtomicU64>,
    cluster: Option<Arc<ClusterState>>,
    host: Option<Arc<Host>>,
    _request_slot: Option<crate::cluster::Slot>,
    grpc: bool,
}

impl Finish {
    fn done(mut self: Box<Self>, error: Option<ResponseFlags>) {
        if let Some(f) = error {
            self.rec.flags.insert(f);
        }
        self.rec.duration = self.started.elapsed();
        self.rec.bytes_received = self.request_bytes.load(Relaxed);
        if let Some(h) = &self.host {
            h.stats.rq_active.fetch_sub(1, Relaxed);
            if (500..600).contains(&self.rec.response_code) || error.is_some() {
                h.stats.rq_error.fetch_add(1, Relaxed);
            } else {
                h.stats.rq_success.fetch_add(1, Relaxed);
            }
        }
        access_log::emit(&self.ctx.hcm.access_logs, &self.rec);
        stats::count_request(self.cluster.as_ref(), self.rec.response_code);
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

/// Counts request body bytes on their way upstream.
struct CountingBody {
    inner: Incoming,
    count: Arc<AtomicU64>,
}

impl HttpBody for CountingBody {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let p = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &p {
            if let Some(d) = f.data_ref() {
                self.count.fetch_add(d.len() as u64, Relaxed);
            }
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

/// A fresh random `x-request-id` (UUID v4).
fn request_id() -> HeaderValue {
    let mut bytes = [0u8; 16];
    fastrand::fill(&mut bytes);
    let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    HeaderValue::from_bytes(id.hyphenated().encode_lower(&mut buf).as_bytes())
        .unwrap_or(HeaderValue::from_static("-"))
}

/// Headers that describe one hop and are never forwarded.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().to_ascii_lowercase().as_bytes()).ok())
        .collect();
    for n in listed {
        if n != http::header::TE {
            headers.remove(n);
        }
    }
    for n in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(n);
    }
    if headers.get(http::header::TE).is_some_and(|v| v != "trailers") {
        headers.remove(http::header::TE);
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
    let order: Vec<&&HeaderMutations> = if most_specific_wins {
        levels.iter().collect()
    } else {
        levels.iter().rev().collect()
    };
    for m in order {
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

/// Routes and forwards one request.
async fn handle(ctx: Rc<ConnCtx>, req: Request<Incoming>) -> Response<ResBody> {
    let started = Instant::now();
    let start_time = SystemTime::now();
    let snap = ctx.worker.snapshot();
    let hcm = ctx.hcm.clone();
    let version = req.version();
    let (mut parts, body) = req.into_parts();

    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let method = parts.method.clone();

    // Untrusted clients cannot steer retries and timeouts.
    let internal = is_internal(&hcm, &parts.headers, ctx.meta.peer.ip());
    let (mut header_timeout, mut header_retries) = (None, None);
    if internal {
        header_timeout = parts
            .headers
            .get(&X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        header_retries = parts
            .headers
            .get(&X_ENVOY_MAX_RETRIES)
            .and_then(|v| v.to_str().ok()?.parse::<u32>().ok());
    }
    for h in INTERNAL_ONLY {
        parts.headers.remove(h);
    }
    if internal {
        parts.headers.insert(
            HeaderName::from_static("x-envoy-internal"),
            HeaderValue::from_static("true"),
        );
    }

    // Request-id, forwarding headers and the rest of what the connection manager adds.
    let external = hcm.use_remote_address;
    if hcm.generate_request_id
        && (!parts.headers.contains_key(&X_REQUEST_ID) || (external && !hcm.preserve_external_request_id))
    {
        parts.headers.insert(X_REQUEST_ID.clone(), request_id());
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
    if external || !parts.headers.contains_key(&X_FORWARDED_PROTO) {
        parts
            .headers
            .insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    if let Some(via) = &hcm.via {
        if let Ok(v) = HeaderValue::from_str(via) {
            parts.headers.append(VIA.clone(), v);
        }
    }

    let mut rec = LogRecord::new(ctx.meta.destination, ctx.meta.peer);
    rec.start_time = start_time;
    rec.protocol = Some(protocol_name(version));
    rec.connection_id = ctx.meta.id;
    rec.requested_server_name = ctx.meta.server_name.clone();
    let request_bytes = Arc::new(AtomicU64::new(0));
    let grpc = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/grpc"));
    let view = |headers: &HeaderMap, path: &str, authority: &str| RequestView {
        method: method.to_string(),
        path: path.to_owned(),
        authority: authority.to_owned(),
        scheme: "http".into(),
        headers: headers.clone(),
    };

    let route_config = match &hcm.routes {
        RouteSource::Inline(rc) => Some(rc.clone()),
        RouteSource::Rds(name) => snap.route_config(name).cloned(),
    };
    let head = RequestHead {
        method: method.as_str(),
        path: &path,
        authority: &authority,
        scheme: "http",
        headers: &parts.headers,
    };
    let found = route_config.as_ref().and_then(|rc| {
        let vh = route::find_virtual_host(rc, &authority)?;
        let r = route::find_route(vh, &head)?;
        Some((rc, vh, r))
    });
    let Some((rc, vh, route)) = found else {
        rec.request = Some(view(&parts.headers, &path, &authority));
        let reply = LocalReply::new(404, "", ResponseFlags::NR, "route_not_found");
        return local_reply(&ctx, rec, started, request_bytes, reply, body, None);
    };
    rec.route_name = (!route.name.is_empty()).then(|| Arc::from(route.name.as_str()));

    let action = match &route.action {
        Action::Direct {
            status,
            body: reply_body,
        } => {
            rec.request = Some(view(&parts.headers, &path, &authority));
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
            rec.request = Some(view(&parts.headers, &path, &authority));
            let mut reply = LocalReply::new(r.code, "", ResponseFlags::empty(), "direct_response");
            if let Ok(v) = HeaderValue::from_str(&redirect_location(r, &authority, &path, route)) {
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

    // Which cluster.
    let (cluster_name, weighted_headers) = match &action.cluster {
        ClusterPick::Named(n) => (Some(n.clone()), None),
        ClusterPick::Header(h) => (
            parts
                .headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            None,
        ),
        ClusterPick::Weighted { clusters, total } => match route::pick_weighted(clusters, *total) {
            Some((c, m)) => (Some(c.name.clone()), Some(m)),
            None => (None, None),
        },
    };
    let cluster = cluster_name.as_deref().and_then(|n| snap.cluster(n).cloned());
    rec.upstream_cluster = cluster_name.as_deref().map(Arc::from);
    let Some(cluster) = cluster else {
        rec.upstream_cluster = None;
        rec.request = Some(view(&parts.headers, &path, &authority));
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

    // Path and host rewrites.
    let mut upstream_path = path.clone();
    if let Some(new) = route::rewrite_path(action, &route.matcher.path, &path) {
        if let Ok(v) = HeaderValue::from_str(&path) {
            parts.headers.insert(X_ENVOY_ORIGINAL_PATH.clone(), v);
        }
        upstream_path = new;
    }
    let mut upstream_authority = authority.clone();
    match &action.host_rewrite {
        Some(HostRewrite::Literal(h)) => upstream_authority = h.clone(),
        Some(HostRewrite::Header(h)) => {
            if let Some(v) = parts.headers.get(h).and_then(|v| v.to_str().ok()) {
                upstream_authority = v.to_owned();
            }
        }
        Some(HostRewrite::PathRegex(re, sub)) => {
            let p = path.split('?').next().unwrap_or("");
            upstream_authority = re.replace_all(p, sub.as_str()).into_owned();
        }
        Some(HostRewrite::Auto) | None => {}
    }
    if upstream_authority != authority {
        if let Ok(v) = HeaderValue::from_str(&authority) {
            parts.headers.insert(X_ENVOY_ORIGINAL_HOST.clone(), v);
        }
    }

    // Timeouts and retries, with the client overrides Envoy honours from trusted clients.
    let mut timeout = action.timeout;
    if let Some(ms) = header_timeout {
        timeout = (ms > 0).then(|| Duration::from_millis(ms));
    }
    let mut retry = action.retry_policy.clone().or_else(|| vh.retry_policy.clone());
    if let (Some(n), Some(p)) = (header_retries, retry.as_mut()) {
        p.num_retries = n;
    }

    let mut levels: Vec<&HeaderMutations> = vec![&rc.headers, &vh.headers, &route.headers];
    if let Some(w) = weighted_headers {
        levels.push(w);
    }
    mutate(
        &mut parts.headers,
        &levels,
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
    rec.request = Some(view(&parts.headers, &upstream_path, &upstream_authority));

    let routed_reply = |mut reply: LocalReply| {
        mutate(
            &mut reply.headers,
            &levels,
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

    // Bodies can be replayed only if there are none: retries are for body-less requests.
    let replayable = body.is_end_stream();
    let mut body = Some(CountingBody {
        inner: body,
        count: request_bytes.clone(),
    });
    let http2 = match cluster.config.protocol {
        UpstreamProtocol::Http2 => true,
        UpstreamProtocol::Http1 => false,
        UpstreamProtocol::UseDownstream => version == Version::HTTP_2,
    };
    let max_attempts = 1 + retry.as_ref().map(|p| p.num_retries).unwrap_or(0);
    let deadline = timeout.map(|t| started + t);
    let mut attempt = 0u32;
    let mut tried: Vec<std::net::SocketAddr> = Vec::new();
    let mut retry_slot = None;
    loop {
        attempt += 1;
        rec.attempt_count = attempt;
        // Prefer a host not tried yet (Istio's previous_hosts predicate).
        let mut host = cluster.pick(LbContext {
            original_dst: Some(ctx.meta.destination),
        });
        for _ in 0..4 {
            match &host {
                Some(h) if tried.contains(&h.address) => {
                    host = cluster.pick(LbContext {
                        original_dst: Some(ctx.meta.destination),
                    })
                }
                _ => break,
            }
        }
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
        tried.push(host.address);
        rec.upstream_host = Some(host.address);
        host.stats.rq_total.fetch_add(1, Relaxed);
        host.stats.rq_active.fetch_add(1, Relaxed);

        let upstream_body = if attempt == 1 || !replayable {
            body.take()
                .map(|b| b.map_err(|e| Box::new(e) as upstream::BoxError).boxed_unsync())
                .unwrap_or_else(empty_body)
        } else {
            empty_body()
        };
        let mut headers = parts.headers.clone();
        let per_try = retry.as_ref().and_then(|p| p.per_try_timeout);
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let limit = match (remaining, per_try) {
            (Some(r), Some(p)) => Some(r.min(p)),
            (r, p) => r.or(p),
        };
        // The first attempt advertises the route timeout; retries advertise what is left.
        let advertised = if attempt == 1 {
            match (timeout, per_try) {
                (Some(t), Some(p)) => Some(t.min(p)),
                (t, p) => t.or(p),
            }
        } else {
            limit
        };
        if let Some(l) = advertised {
            headers.insert(
                X_ENVOY_EXPECTED_RQ_TIMEOUT_MS.clone(),
                HeaderValue::from(l.as_millis() as u64),
            );
        }
        if vh.include_request_attempt_count {
            headers.insert(X_ENVOY_ATTEMPT_COUNT.clone(), HeaderValue::from(attempt));
        }
        let req = build_upstream_request(
            &method,
            &upstream_path,
            &upstream_authority,
            headers,
            http2,
            &host,
            action,
            upstream_body,
        );
        let sent_at = Instant::now();
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
                let msg = format!(
                    "upstream connect error or disconnect/reset before headers. reset reason: {reason}"
                );
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
        let retriable = match &result {
            Ok(resp) => {
                let s = resp.status().as_u16();
                (retry_on.five_xx && s >= 500)
                    || (retry_on.gateway_error && matches!(s, 502..=504))
                    || (retry_on.retriable_4xx && s == 409)
                    || (retry_on.retriable_status_codes
                        && retry
                            .as_ref()
                            .is_some_and(|p| p.retriable_status_codes.contains(&s)))
            }
            Err((ResponseFlags::UF, _)) => {
                retry_on.connect_failure || retry_on.five_xx || retry_on.gateway_error || retry_on.reset
            }
            Err((ResponseFlags::UC, _)) => retry_on.reset || retry_on.five_xx || retry_on.gateway_error,
            Err((ResponseFlags::UT, _)) => {
                per_try_timed_out && (retry_on.five_xx || retry_on.gateway_error || retry_on.reset)
            }
            Err(_) => false,
        };
        let can_retry = retriable
            && attempt < max_attempts
            && (replayable || attempt == 1 && matches!(&result, Err((ResponseFlags::UF, _))))
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
                let upstream_ms = sent_at.elapsed().as_millis();
                rec.response_duration = Some(started.elapsed());
                let (mut rparts, rbody) = resp.into_parts();
                strip_hop_by_hop(&mut rparts.headers);
                if let Ok(v) = HeaderValue::from_str(&upstream_ms.to_string()) {
                    rparts.headers.insert(X_ENVOY_UPSTREAM_SERVICE_TIME.clone(), v);
                }
                mutate(
                    &mut rparts.headers,
                    &levels,
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
                rec.response_headers = Some(rparts.headers.clone());

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

#[allow(clippy::too_many_arguments)]
fn build_upstream_request(
    method: &Method,
    path: &str,
    authority: &str,
    mut headers: HeaderMap,
    http2: bool,
    host: &Host,
    action: &RouteAction,
    body: Body,
) -> Request<Body> {
    let authority = if matches!(action.host_rewrite, Some(HostRewrite::Auto)) {
        host.address.to_string()
    } else {
        authority.to_owned()
    };
    let uri = if http2 {
        headers.remove(HOST);
        Uri::builder()
            .scheme("http")
            .authority(authority.as_str())
            .path_and_query(path)
            .build()
    } else {
        if let Ok(v) = HeaderValue::from_str(&authority) {
            headers.insert(HOST, v);
        }
        Uri::builder().path_and_query(path).build()
    };
    let mut req = Request::new(body);
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri.unwrap_or_else(|_| Uri::from_static("/"));
    *req.version_mut() = if http2 { Version::HTTP_2 } else { Version::HTTP_11 };
    *req.headers_mut() = headers;
    req
}

fn server_header(hcm: &HttpConnectionManager, headers: &mut HeaderMap) {
    match hcm.server_header {
        ServerHeader::Overwrite => {
            if let Ok(v) = HeaderValue::from_str(&hcm.server_name) {
                headers.insert(SERVER, v);
            }
        }
        ServerHeader::AppendIfAbsent => {
            if !headers.contains_key(SERVER) {
                if let Ok(v) = HeaderValue::from_str(&hcm.server_name) {
                    headers.insert(SERVER, v);
                }
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
    request_bytes: Arc<AtomicU64>,
    reply: LocalReply,
    body: Incoming,
    cluster: Option<Arc<ClusterState>>,
) -> Response<ResBody> {
    local_reply_with(ctx, rec, started, request_bytes, reply, Some(body), cluster, None)
}

#[allow(clippy::too_many_arguments)]
fn local_reply_with(
    ctx: &Rc<ConnCtx>,
    mut rec: LogRecord,
    started: Instant,
    request_bytes: Arc<AtomicU64>,
    reply: LocalReply,
    body: Option<Incoming>,
    cluster: Option<Arc<ClusterState>>,
    slot: Option<crate::cluster::Slot>,
) -> Response<ResBody> {
    // The request body is not read; hyper discards it (HTTP/1 closes if it was large).
    drop(body);
    let mut headers = reply.headers;
    if let Some(b) = &reply.body {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(b.len()));
        if !headers.contains_key(CONTENT_TYPE) {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
    }
    server_header(&ctx.hcm, &mut headers);
    rec.flags.insert(reply.flags);
    rec.response_code = reply.status.as_u16();
    rec.response_code_details = Some(reply.details.into_owned());
    rec.response_headers = Some(headers.clone());
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
        })),
    });
    *resp.status_mut() = reply.status;
    *resp.headers_mut() = headers;
    resp
}

/// The snapshot type handlers see (kept here so tests can build one).
pub type SnapshotRef = Arc<Snapshot>;
