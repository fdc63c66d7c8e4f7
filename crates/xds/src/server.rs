//! The management-server side of Envoy's aggregated discovery service (ADS), as istiod serves it
//! on 15010: one gRPC stream per proxy carrying CDS, EDS, LDS and RDS, state of the world
//! (`StreamAggregatedResources`) or incremental (`DeltaAggregatedResources`).
//!
//! What the resources are is not decided here: a [`Generator`] builds them per proxy. This module
//! does the protocol: versions and nonces, ACK/NACK bookkeeping (a rejected resource is not sent
//! again until it changes; wildcard types keep the proxy's last accepted copy), pushes debounced
//! and merged, endpoint-only pushes sent as EDS only, and the per-proxy sync state that
//! `proxy-status` prints.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::{Status, Streaming};

pub use crate::grpc::AdsService;
use crate::grpc::{Outgoing, SotwResponse};
use crate::pb::envoy::config::core::v3::Node;
use crate::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest,
};
use crate::pb::google::protobuf::Any;

pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT_TYPE: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// SDS over ADS: gateways' `credentialName` certificates (`kubernetes://NAME`), as istiod serves them.
pub const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// Istio's extension config discovery; never sent by Skiff, reported as `NOT SENT`.
pub const EXTENSION_CONFIG_TYPE: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";

/// The order a full push goes out in, as the xDS protocol asks (clusters and their endpoints
/// before the listeners and routes that point at them; secrets after the listeners that name
/// them).
const PUSH_ORDER: [&str; 5] = [
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    SECRET_TYPE,
];

/// Short names used in logs, metrics and sync status.
pub fn short_type(type_url: &str) -> &'static str {
    match type_url {
        CLUSTER_TYPE => "cds",
        ENDPOINT_TYPE => "eds",
        LISTENER_TYPE => "lds",
        ROUTE_TYPE => "rds",
        SECRET_TYPE => "sds",
        EXTENSION_CONFIG_TYPE => "ecds",
        _ => "other",
    }
}

/// Whether a type is "wildcard" in state-of-the-world xDS: a response replaces the whole set, so
/// a missing resource means deleted (LDS, CDS). RDS and EDS responses only carry what was asked.
fn is_wildcard(type_url: &str) -> bool {
    matches!(type_url, CLUSTER_TYPE | LISTENER_TYPE)
}

/// One named resource, already packed. `Arc` so a generator can share bytes between proxies.
#[derive(Clone, Debug)]
pub struct Resource {
    /// Shared: every proxy's stream state keys on the same name without copying it.
    pub name: Arc<str>,
    pub body: Arc<Any>,
    /// Identity of the content: equal digests are not sent again. Protobuf maps encode in hash
    /// order, so equal content can encode differently; generators whose messages carry maps with
    /// several entries give a digest of the content with [`Resource::with_digest`].
    pub digest: u64,
}

impl Resource {
    /// A resource whose digest is that of its bytes.
    pub fn new(name: impl Into<Arc<str>>, body: Any) -> Resource {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        body.type_url.hash(&mut h);
        body.value.hash(&mut h);
        let digest = h.finish();
        Resource::with_digest(name, body, digest)
    }

    pub fn with_digest(name: impl Into<Arc<str>>, body: Any, digest: u64) -> Resource {
        Resource {
            name: name.into(),
            body: Arc::new(body),
            digest,
        }
    }

    fn digest(&self) -> u64 {
        self.digest
    }
}

/// Builds the resources of one proxy. Implemented by the control plane over its registry.
pub trait Generator: Send + Sync + 'static {
    /// What the generator needs to know about a connected proxy (parsed node identity).
    type Proxy: Send + Sync + 'static;

    /// Accepts or refuses a proxy by its node (the message names what is wrong with it).
    fn connect(&self, node: &Node, peer: Option<SocketAddr>) -> Result<Self::Proxy, String>;

    /// The resources of `type_url` for `proxy`: all of them for LDS/CDS, the named ones (those
    /// that exist) for RDS/EDS.
    fn generate(&self, proxy: &Self::Proxy, type_url: &str, names: &[String]) -> Vec<Resource>;
}

/// What changed in the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushScope {
    /// Anything may have changed: recompute every type.
    Full,
    /// Only the endpoints of these clusters changed: EDS only.
    Endpoints(BTreeSet<String>),
}

impl PushScope {
    fn merge(self, other: PushScope) -> PushScope {
        match (self, other) {
            (PushScope::Endpoints(mut a), PushScope::Endpoints(b)) => {
                a.extend(b);
                PushScope::Endpoints(a)
            }
            _ => PushScope::Full,
        }
    }
}

/// Debounce settings (Istio's `PILOT_DEBOUNCE_AFTER` 100ms and `PILOT_DEBOUNCE_MAX` 10s; Skiff
/// caps the wait at 1s so a steady trickle of changes still reaches proxies quickly).
#[derive(Clone, Copy, Debug)]
pub struct Debounce {
    pub quiet: Duration,
    pub max: Duration,
    /// Whether endpoint-only pushes wait too (Istio's `PILOT_ENABLE_EDS_DEBOUNCE`, on by
    /// default). Off, they go out at once: fresher endpoints for more, smaller pushes.
    pub endpoints: bool,
}

impl Default for Debounce {
    fn default() -> Self {
        Debounce {
            quiet: Duration::from_millis(100),
            max: Duration::from_secs(1),
            endpoints: true,
        }
    }
}

// === Sync status ===

/// Per-type bookkeeping that `/debug/syncz` reports.
#[derive(Clone, Debug, Default)]
pub struct TypeSync {
    pub sent_nonce: Option<String>,
    pub sent_version: Option<String>,
    pub acked_nonce: Option<String>,
    pub acked_version: Option<String>,
    /// The proxy's error for the last NACK, until a later response is accepted.
    pub last_error: Option<String>,
    pub last_updated: Option<SystemTime>,
}

impl TypeSync {
    /// Istio's `proxy-status` words (1.19–1.22): NOT SENT, SYNCED or STALE.
    pub fn status(&self) -> &'static str {
        match (&self.sent_nonce, &self.acked_nonce) {
            (None, _) => "NOT SENT",
            (Some(s), Some(a)) if s == a => "SYNCED",
            _ => "STALE",
        }
    }
}

/// One connected proxy as `proxy-status` sees it.
#[derive(Clone, Debug)]
pub struct ProxySync {
    /// The full node id (`sidecar~IP~POD.NS~NS.svc.cluster.local`).
    pub node_id: String,
    /// `POD.NS`, proxy-status' NAME column.
    pub proxy: String,
    pub cluster_id: String,
    pub istio_version: String,
    pub peer: Option<SocketAddr>,
    pub connected_at: SystemTime,
    pub types: HashMap<&'static str, TypeSync>,
}

impl ProxySync {
    pub fn status(&self, short: &str) -> &'static str {
        self.types.get(short).map(TypeSync::status).unwrap_or("NOT SENT")
    }

    /// The JSON istiod's `/debug/syncz` serves (one object per proxy), with the computed
    /// statuses next to the nonces.
    pub fn to_json(&self) -> serde_json::Value {
        let mut o = serde_json::Map::new();
        o.insert("cluster_id".into(), self.cluster_id.clone().into());
        o.insert("proxy".into(), self.proxy.clone().into());
        o.insert("node_id".into(), self.node_id.clone().into());
        o.insert("proxy_type".into(), "sidecar".into());
        o.insert("istio_version".into(), self.istio_version.clone().into());
        for (short, long) in [
            ("cds", "cluster"),
            ("lds", "listener"),
            ("rds", "route"),
            ("eds", "endpoint"),
            ("ecds", "extensionconfig"),
        ] {
            let t = self.types.get(short).cloned().unwrap_or_default();
            o.insert(
                format!("{long}_sent"),
                t.sent_nonce.clone().unwrap_or_default().into(),
            );
            o.insert(
                format!("{long}_acked"),
                t.acked_nonce.clone().unwrap_or_default().into(),
            );
            o.insert(short.into(), t.status().into());
            if let Some(e) = &t.last_error {
                o.insert(format!("{long}_error"), e.clone().into());
            }
        }
        serde_json::Value::Object(o)
    }
}

// === Metrics ===

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: &'static str,
}

/// istiod's xDS metrics (`pilot_xds`, `pilot_xds_pushes`, `pilot_total_xds_rejects`).
#[derive(Clone, Default)]
pub struct Metrics {
    connected: Gauge,
    pushes: Family<TypeLabel, Counter>,
    rejects: Family<TypeLabel, Counter>,
    debounced: Counter,
    push_triggers: Counter,
    /// All responses, every type (not exported; see [`Metrics::responses_sent`]).
    responses: Counter,
}

impl Metrics {
    /// Responses sent on all streams so far: lets a caller see when pushing has quieted down.
    pub fn responses_sent(&self) -> u64 {
        self.responses.get()
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register("pilot_xds", "Connected xDS clients", self.connected.clone());
        registry.register(
            "pilot_xds_pushes",
            "xDS responses sent, by type",
            self.pushes.clone(),
        );
        registry.register(
            "pilot_total_xds_rejects",
            "xDS responses rejected by proxies (NACK), by type",
            self.rejects.clone(),
        );
        registry.register(
            "pilot_push_triggers",
            "Registry changes that asked for a push",
            self.push_triggers.clone(),
        );
        registry.register(
            "pilot_debounce",
            "Pushes sent after debouncing",
            self.debounced.clone(),
        );
    }
}

// === The server ===

struct Shared<G: Generator> {
    generator: Arc<G>,
    conns: Mutex<HashMap<u64, mpsc::UnboundedSender<Arc<PushEvent>>>>,
    sync: Mutex<HashMap<u64, ProxySync>>,
    next_conn: AtomicU64,
    version: Mutex<String>,
    metrics: Metrics,
}

#[derive(Debug)]
struct PushEvent {
    scope: PushScope,
}

/// The ADS service. Clone it freely; `pusher()` gives the handle the registry calls on change.
pub struct AdsServer<G: Generator> {
    shared: Arc<Shared<G>>,
    pushes: mpsc::UnboundedSender<PushScope>,
}

impl<G: Generator> Clone for AdsServer<G> {
    fn clone(&self) -> Self {
        AdsServer {
            shared: self.shared.clone(),
            pushes: self.pushes.clone(),
        }
    }
}

/// Asks for a push. Cheap; calls within the debounce window are merged.
#[derive(Clone, Debug)]
pub struct Pusher {
    tx: mpsc::UnboundedSender<PushScope>,
}

impl Pusher {
    pub fn push(&self, scope: PushScope) {
        let _ = self.tx.send(scope);
    }
}

fn version_string(n: u64) -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{}/{n}", rfc3339(secs))
}

/// `2006-01-02T15:04:05Z` from Unix seconds (Istio's version strings).
fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl<G: Generator> AdsServer<G> {
    /// Starts the debounce task on the current tokio runtime.
    pub fn new(generator: Arc<G>, debounce: Debounce) -> AdsServer<G> {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            generator,
            conns: Mutex::new(HashMap::new()),
            sync: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            version: Mutex::new(version_string(0)),
            metrics: Metrics::default(),
        });
        tokio::spawn(debounce_loop(shared.clone(), rx, debounce));
        AdsServer { shared, pushes: tx }
    }

    pub fn pusher(&self) -> Pusher {
        Pusher {
            tx: self.pushes.clone(),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Every connected proxy's sync state, sorted by proxy name.
    pub fn sync_status(&self) -> Vec<ProxySync> {
        let mut all: Vec<ProxySync> = lock(&self.shared.sync).values().cloned().collect();
        all.sort_by(|a, b| a.proxy.cmp(&b.proxy).then(a.node_id.cmp(&b.node_id)));
        all
    }

    /// The tonic service to add to a `tonic::transport::Server`.
    pub fn service(&self) -> AdsService<G> {
        AdsService::new(self.clone())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn debounce_loop<G: Generator>(
    shared: Arc<Shared<G>>,
    mut rx: mpsc::UnboundedReceiver<PushScope>,
    debounce: Debounce,
) {
    let mut n = 0u64;
    let mut push = |scope: PushScope| {
        n += 1;
        let version = version_string(n);
        *lock(&shared.version) = version.clone();
        shared.metrics.debounced.inc();
        tracing::debug!(version = %version, full = matches!(scope, PushScope::Full), "push");
        let event = Arc::new(PushEvent { scope });
        lock(&shared.conns).retain(|_, tx| tx.send(event.clone()).is_ok());
    };
    // Endpoint-only pushes skip the wait when EDS debouncing is off (as istiod does).
    let immediate = |scope: &PushScope| !debounce.endpoints && matches!(scope, PushScope::Endpoints(_));
    while let Some(first) = rx.recv().await {
        shared.metrics.push_triggers.inc();
        if immediate(&first) {
            push(first);
            continue;
        }
        let started = tokio::time::Instant::now();
        let mut scope = first;
        loop {
            let deadline = (tokio::time::Instant::now() + debounce.quiet).min(started + debounce.max);
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(next)) if immediate(&next) => {
                    shared.metrics.push_triggers.inc();
                    push(next);
                }
                Ok(Some(next)) => {
                    shared.metrics.push_triggers.inc();
                    scope = scope.merge(next);
                }
                Ok(None) => return,
                Err(_) => break,
            }
        }
        push(scope);
    }
}

/// A stream's first request, its proxy as the generator accepted it, and its push channel.
type Accepted<R, P> = (R, Node, P, u64, mpsc::UnboundedReceiver<Arc<PushEvent>>);

impl<G: Generator> AdsServer<G> {
    /// Reads a stream's first request, which carries the node (only guaranteed there), and
    /// accepts its proxy and registers it for pushes. A stream refused (closed early, no node, a
    /// node the generator does not accept) gets its status on `out`, and `None` comes back.
    async fn accept<R: Send + 'static>(
        &self,
        peer: Option<SocketAddr>,
        inbound: &mut Streaming<R>,
        out: &mpsc::UnboundedSender<Outgoing>,
        node_of: fn(&R) -> Option<&Node>,
        kind: &str,
    ) -> Option<Accepted<R, G::Proxy>> {
        let accepted = async {
            let first = inbound
                .message()
                .await?
                .ok_or_else(|| Status::cancelled("stream closed before the first request"))?;
            let node = node_of(&first)
                .cloned()
                .ok_or_else(|| Status::invalid_argument(format!("the first {kind} has no node")))?;
            let proxy = self
                .shared
                .generator
                .connect(&node, peer)
                .map_err(|e| Status::invalid_argument(format!("node {:?}: {e}", node.id)))?;
            Ok::<_, Status>((first, node, proxy))
        };
        match accepted.await {
            Ok((first, node, proxy)) => {
                let (id, push_rx) = self.register(&node, peer);
                Some((first, node, proxy, id, push_rx))
            }
            Err(status) => {
                let _ = out.send(Outgoing::Error(status));
                None
            }
        }
    }

    /// Starts a state-of-the-world stream: its responses go to `out`.
    pub(crate) async fn open_sotw(
        &self,
        peer: Option<SocketAddr>,
        mut inbound: Streaming<DiscoveryRequest>,
        out: mpsc::UnboundedSender<Outgoing>,
    ) {
        let node_of: fn(&DiscoveryRequest) -> Option<&Node> = |r| r.node.as_ref();
        let Some((first, node, proxy, id, push_rx)) = self
            .accept(peer, &mut inbound, &out, node_of, "DiscoveryRequest")
            .await
        else {
            return;
        };
        let conn = Connection {
            id,
            node_id: node.id.clone(),
            shared: self.shared.clone(),
            proxy,
            out,
            types: HashMap::new(),
            nonce_seq: 0,
        };
        tokio::spawn(conn.run(first, inbound, push_rx));
    }

    /// Starts an incremental stream (see [`AdsServer::open_sotw`]).
    pub(crate) async fn open_delta(
        &self,
        peer: Option<SocketAddr>,
        mut inbound: Streaming<DeltaDiscoveryRequest>,
        out: mpsc::UnboundedSender<Outgoing>,
    ) {
        let node_of: fn(&DeltaDiscoveryRequest) -> Option<&Node> = |r| r.node.as_ref();
        let Some((first, node, proxy, id, push_rx)) = self
            .accept(peer, &mut inbound, &out, node_of, "DeltaDiscoveryRequest")
            .await
        else {
            return;
        };
        let conn = DeltaConnection {
            id,
            node_id: node.id.clone(),
            shared: self.shared.clone(),
            proxy,
            out,
            types: HashMap::new(),
            nonce_seq: 0,
        };
        tokio::spawn(conn.run(first, inbound, push_rx));
    }
}

impl<G: Generator> AdsServer<G> {
    /// Records a new stream: its push channel and its sync-status entry.
    fn register(
        &self,
        node: &Node,
        peer: Option<SocketAddr>,
    ) -> (u64, mpsc::UnboundedReceiver<Arc<PushEvent>>) {
        let id = self.shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        lock(&self.shared.conns).insert(id, push_tx);
        lock(&self.shared.sync).insert(
            id,
            ProxySync {
                node_id: node.id.clone(),
                proxy: node.id.split('~').nth(2).unwrap_or(&node.id).to_owned(),
                cluster_id: meta_string(node, "CLUSTER_ID").unwrap_or_else(|| "Kubernetes".into()),
                istio_version: meta_string(node, "ISTIO_VERSION").unwrap_or_default(),
                peer,
                connected_at: SystemTime::now(),
                types: HashMap::new(),
            },
        );
        self.shared.metrics.connected.inc();
        tracing::info!(node = %node.id, ?peer, "xds connected");
        (id, push_rx)
    }
}

fn forget<G: Generator>(shared: &Shared<G>, id: u64, node_id: &str) {
    lock(&shared.conns).remove(&id);
    lock(&shared.sync).remove(&id);
    shared.metrics.connected.dec();
    tracing::info!(node = %node_id, "xds disconnected");
}

fn update_sync<G: Generator>(shared: &Shared<G>, id: u64, type_url: &str, f: impl FnOnce(&mut TypeSync)) {
    if let Some(p) = lock(&shared.sync).get_mut(&id) {
        let t = p.types.entry(short_type(type_url)).or_default();
        f(t);
        t.last_updated = Some(SystemTime::now());
    }
}

fn count_reject<G: Generator>(shared: &Shared<G>, type_url: &str) {
    shared
        .metrics
        .rejects
        .get_or_create(&TypeLabel {
            r#type: short_type(type_url),
        })
        .inc();
}

fn count_push<G: Generator>(shared: &Shared<G>, type_url: &str) {
    shared.metrics.responses.inc();
    shared
        .metrics
        .pushes
        .get_or_create(&TypeLabel {
            r#type: short_type(type_url),
        })
        .inc();
}

fn meta_string(node: &Node, key: &str) -> Option<String> {
    use crate::pb::google::protobuf::value::Kind;
    match node.metadata.as_ref()?.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

/// One resource of one stream: what was last sent, and what the proxy last accepted (the copy a
/// NACKed update falls back to).
struct Held {
    sent: (u64, Arc<Any>),
    acked: Option<(u64, Arc<Any>)>,
}

/// One type's state on one stream.
#[derive(Default)]
struct Watch {
    /// The names the proxy asked for (empty for wildcard types = everything).
    names: Vec<String>,
    sent_nonce: Option<String>,
    /// Every resource the proxy holds or is being sent. Updated in place, so an ACK or an
    /// endpoint push costs what it carries, not what the proxy holds.
    held: HashMap<Arc<str>, Held>,
    /// The names sent since the proxy last answered (an answer to an older nonce is ignored,
    /// so the next answer speaks for all of them).
    pending: Vec<Arc<str>>,
    /// Resources the proxy rejected, by digest: not sent again until they change.
    rejected: HashMap<Arc<str>, u64>,
}

struct Connection<G: Generator> {
    id: u64,
    node_id: String,
    shared: Arc<Shared<G>>,
    proxy: G::Proxy,
    out: mpsc::UnboundedSender<Outgoing>,
    types: HashMap<String, Watch>,
    nonce_seq: u64,
}

impl<G: Generator> Connection<G> {
    async fn run(
        mut self,
        first: DiscoveryRequest,
        mut inbound: Streaming<DiscoveryRequest>,
        mut pushes: mpsc::UnboundedReceiver<Arc<PushEvent>>,
    ) {
        self.on_request(first);
        loop {
            tokio::select! {
                msg = inbound.next() => match msg {
                    Some(Ok(req)) => self.on_request(req),
                    Some(Err(e)) => {
                        tracing::info!(node = %self.node_id, error = %e, "xds stream error");
                        break;
                    }
                    None => break,
                },
                ev = pushes.recv() => match ev {
                    Some(ev) => self.on_push(&ev),
                    None => break,
                },
                _ = self.out.closed() => break,
            }
        }
        forget(&self.shared, self.id, &self.node_id);
    }

    fn update_sync(&self, type_url: &str, f: impl FnOnce(&mut TypeSync)) {
        update_sync(&self.shared, self.id, type_url, f);
    }

    fn on_request(&mut self, mut req: DiscoveryRequest) {
        let type_url = std::mem::take(&mut req.type_url);
        if !PUSH_ORDER.contains(&type_url.as_str()) {
            // Unknown types (ECDS, Istio debug types) get an empty answer so the proxy does
            // not wait on them.
            if req.response_nonce.is_empty() {
                self.send(&type_url, Vec::new(), None);
            }
            return;
        }
        let mut names = std::mem::take(&mut req.resource_names);
        names.sort_unstable();
        names.dedup();
        if req.response_nonce.is_empty() {
            // A new subscription (or a proxy that reconnected): answer with what exists now.
            self.types.entry(type_url.clone()).or_default().names = names;
            self.respond(&type_url, true);
            return;
        }
        let watch = self.types.entry(type_url.clone()).or_default();
        if watch.sent_nonce.as_deref() != Some(req.response_nonce.as_str()) {
            // An answer to an older response; a newer one is on its way to the proxy.
            tracing::debug!(node = %self.node_id, r#type = short_type(&type_url), "stale nonce ignored");
            return;
        }
        let outcome = match &req.error_detail {
            Some(err) => {
                let mut rejected = Vec::new();
                for name in std::mem::take(&mut watch.pending) {
                    let Some(h) = watch.held.get(&name) else { continue };
                    if h.acked.as_ref().map(|a| a.0) != Some(h.sent.0) {
                        watch.rejected.insert(name.clone(), h.sent.0);
                        rejected.push(name);
                    }
                }
                rejected.sort();
                Err((err.message.clone(), rejected))
            }
            None => {
                for name in std::mem::take(&mut watch.pending) {
                    if let Some(h) = watch.held.get_mut(&name) {
                        h.acked = Some(h.sent.clone());
                    }
                }
                Ok(())
            }
        };
        let resubscribed = watch.names != names;
        watch.names = names;
        match outcome {
            Err((message, rejected)) => {
                tracing::warn!(
                    node = %self.node_id,
                    r#type = short_type(&type_url),
                    error = %message,
                    resources = ?rejected,
                    "proxy rejected config (NACK); not re-sending these until they change"
                );
                count_reject(&self.shared, &type_url);
                self.update_sync(&type_url, |t| t.last_error = Some(message));
            }
            Ok(()) => {
                let nonce = req.response_nonce.clone();
                let version = req.version_info.clone();
                self.update_sync(&type_url, |t| {
                    t.acked_nonce = Some(nonce);
                    t.acked_version = Some(version);
                    t.last_error = None;
                });
            }
        }
        if resubscribed {
            // The subscription changed (e.g. new clusters to load endpoints for): answer it.
            self.respond(&type_url, true);
        }
    }

    fn on_push(&mut self, ev: &PushEvent) {
        match &ev.scope {
            PushScope::Full => {
                let mut cds_sent = false;
                for t in PUSH_ORDER {
                    if self.types.contains_key(t) {
                        // Endpoints always follow a cluster update so re-created clusters warm.
                        let force = t == ENDPOINT_TYPE && cds_sent;
                        let sent = self.respond(t, force);
                        cds_sent |= t == CLUSTER_TYPE && sent;
                    }
                }
            }
            PushScope::Endpoints(clusters) => {
                let names: Vec<String> = self
                    .types
                    .get(ENDPOINT_TYPE)
                    .map(|w| {
                        w.names
                            .iter()
                            .filter(|n| clusters.contains(*n))
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                if !names.is_empty() {
                    self.respond_changed_endpoints(names);
                }
            }
        }
    }

    /// Sends only the named load assignments that changed (state-of-the-world EDS may carry a
    /// subset: what is not in a response stays as the proxy has it).
    fn respond_changed_endpoints(&mut self, names: Vec<String>) {
        let generated = self.shared.generator.generate(&self.proxy, ENDPOINT_TYPE, &names);
        let watch = self.types.entry(ENDPOINT_TYPE.to_owned()).or_default();
        let mut out = Vec::new();
        let mut pending = Vec::new();
        for r in generated {
            let digest = r.digest();
            if watch.rejected.get(&r.name) == Some(&digest) {
                continue;
            }
            watch.rejected.remove(&r.name);
            match watch.held.get_mut(&r.name) {
                Some(h) if h.sent.0 == digest => continue,
                Some(h) => h.sent = (digest, r.body.clone()),
                None => {
                    watch.held.insert(
                        r.name.clone(),
                        Held {
                            sent: (digest, r.body.clone()),
                            acked: None,
                        },
                    );
                }
            }
            out.push(r.body.clone());
            pending.push(r.name);
        }
        if !out.is_empty() {
            watch.pending.extend(pending);
            let version = lock(&self.shared.version).clone();
            self.send(ENDPOINT_TYPE, out, Some(version));
        }
    }

    /// Generates and sends `type_url` unless nothing changed (and `force` is off). Returns whether
    /// a response went out.
    fn respond(&mut self, type_url: &str, force: bool) -> bool {
        let Some(watch) = self.types.get(type_url) else {
            return false;
        };
        let names = if is_wildcard(type_url) {
            Vec::new()
        } else {
            watch.names.clone()
        };
        if !is_wildcard(type_url) && names.is_empty() && watch.sent_nonce.is_some() {
            // An empty RDS/EDS subscription after a first answer: nothing to say.
            return false;
        }
        let generated = self.shared.generator.generate(&self.proxy, type_url, &names);
        let watch = self.types.entry(type_url.to_owned()).or_default();
        let mut out: Vec<(Arc<str>, u64, Arc<Any>)> = Vec::with_capacity(generated.len());
        for r in generated {
            let digest = r.digest();
            match watch.rejected.get(&r.name) {
                Some(bad) if *bad == digest => {
                    // Still the rejected version: keep the proxy's accepted copy (wildcard types
                    // would delete a missing resource) or leave it out.
                    if let Some((d, body)) = watch.held.get(&r.name).and_then(|h| h.acked.as_ref()) {
                        out.push((r.name, *d, body.clone()));
                    } else if !is_wildcard(type_url) {
                        continue;
                    }
                }
                Some(_) => {
                    watch.rejected.remove(&r.name);
                    out.push((r.name, digest, r.body));
                }
                None => out.push((r.name, digest, r.body)),
            }
        }
        let unchanged = watch.sent_nonce.is_some()
            && out.len() == watch.held.len()
            && out
                .iter()
                .all(|(n, d, _)| watch.held.get(n).map(|h| h.sent.0) == Some(*d));
        if unchanged && !force {
            return false;
        }
        // The response is the proxy's whole set of this type: what it leaves out is gone. Updated
        // in place: a proxy holds thousands of these, and a second map per push would double them.
        watch.pending = Vec::with_capacity(out.len());
        for (name, digest, body) in &out {
            match watch.held.get_mut(name) {
                Some(h) => h.sent = (*digest, body.clone()),
                None => {
                    let sent = (*digest, body.clone());
                    watch.held.insert(name.clone(), Held { sent, acked: None });
                }
            }
            watch.pending.push(name.clone());
        }
        if watch.held.len() != out.len() {
            let keep: std::collections::HashSet<&str> = out.iter().map(|(n, _, _)| &**n).collect();
            watch.held.retain(|n, _| keep.contains(&**n));
        }
        let version = lock(&self.shared.version).clone();
        self.send(
            type_url,
            out.into_iter().map(|(_, _, b)| b).collect(),
            Some(version),
        );
        true
    }

    fn send(&mut self, type_url: &str, resources: Vec<Arc<Any>>, version: Option<String>) {
        self.nonce_seq += 1;
        let nonce = format!("{:016x}{:04x}", fastrand::u64(..), self.nonce_seq & 0xffff);
        let version = version.unwrap_or_else(|| lock(&self.shared.version).clone());
        let count = resources.len();
        let resp = SotwResponse {
            version_info: version.clone(),
            resources,
            type_url: type_url.to_owned(),
            nonce: nonce.clone(),
        };
        if let Some(w) = self.types.get_mut(type_url) {
            w.sent_nonce = Some(nonce.clone());
        }
        count_push(&self.shared, type_url);
        self.update_sync(type_url, |t| {
            t.sent_nonce = Some(nonce);
            t.sent_version = Some(version);
        });
        tracing::debug!(node = %self.node_id, r#type = short_type(type_url), count, "push");
        let _ = self.out.send(Outgoing::Sotw(resp));
    }
}

// === Delta (incremental) xDS ===

/// One type's state on a delta stream.
#[derive(Default)]
struct DeltaWatch {
    /// Everything of this type (LDS/CDS with `*` or an empty first subscription).
    wildcard: bool,
    subscribed: BTreeSet<String>,
    /// What the proxy holds: name → digest (its version string is the digest in hex).
    known: HashMap<String, u64>,
    sent_nonce: Option<String>,
    /// The last response: name → Some(digest) sent, None removed.
    pending: HashMap<String, Option<u64>>,
    rejected: HashMap<String, u64>,
}

struct DeltaConnection<G: Generator> {
    id: u64,
    node_id: String,
    shared: Arc<Shared<G>>,
    proxy: G::Proxy,
    out: mpsc::UnboundedSender<Outgoing>,
    types: HashMap<String, DeltaWatch>,
    nonce_seq: u64,
}

impl<G: Generator> DeltaConnection<G> {
    async fn run(
        mut self,
        first: DeltaDiscoveryRequest,
        mut inbound: Streaming<DeltaDiscoveryRequest>,
        mut pushes: mpsc::UnboundedReceiver<Arc<PushEvent>>,
    ) {
        self.on_request(first);
        loop {
            tokio::select! {
                msg = inbound.next() => match msg {
                    Some(Ok(req)) => self.on_request(req),
                    Some(Err(e)) => {
                        tracing::info!(node = %self.node_id, error = %e, "delta xds stream error");
                        break;
                    }
                    None => break,
                },
                ev = pushes.recv() => match ev {
                    Some(ev) => self.on_push(&ev),
                    None => break,
                },
                _ = self.out.closed() => break,
            }
        }
        forget(&self.shared, self.id, &self.node_id);
    }

    fn on_request(&mut self, req: DeltaDiscoveryRequest) {
        let type_url = req.type_url.clone();
        if !PUSH_ORDER.contains(&type_url.as_str()) {
            if req.response_nonce.is_empty() {
                self.send(&type_url, Vec::new(), Vec::new());
            }
            return;
        }
        let initial = !self.types.contains_key(&type_url);
        let watch = self.types.entry(type_url.clone()).or_default();
        let mut outcome = None;
        if !req.response_nonce.is_empty() && watch.sent_nonce.as_deref() == Some(req.response_nonce.as_str())
        {
            let pending = std::mem::take(&mut watch.pending);
            match &req.error_detail {
                Some(err) => {
                    let mut rejected: Vec<String> = Vec::new();
                    for (name, digest) in pending {
                        if let Some(d) = digest {
                            watch.rejected.insert(name.clone(), d);
                            rejected.push(name);
                        }
                    }
                    rejected.sort();
                    outcome = Some(Err((err.message.clone(), rejected)));
                }
                None => {
                    for (name, digest) in pending {
                        match digest {
                            Some(d) => watch.known.insert(name, d),
                            None => watch.known.remove(&name),
                        };
                    }
                    outcome = Some(Ok(()));
                }
            }
        }
        // Subscription changes count whatever the nonce says.
        let mut newly: BTreeSet<String> = BTreeSet::new();
        if initial {
            watch.wildcard = is_wildcard(&type_url)
                && (req.resource_names_subscribe.is_empty()
                    || req.resource_names_subscribe.iter().any(|n| n == "*"));
            for (name, version) in &req.initial_resource_versions {
                if let Ok(d) = u64::from_str_radix(version, 16) {
                    watch.known.insert(name.clone(), d);
                }
            }
        }
        for n in &req.resource_names_subscribe {
            if n == "*" {
                watch.wildcard = true;
            } else if watch.subscribed.insert(n.clone()) {
                newly.insert(n.clone());
            }
        }
        for n in &req.resource_names_unsubscribe {
            if n == "*" {
                watch.wildcard = false;
            }
            watch.subscribed.remove(n);
            watch.known.remove(n);
        }
        match outcome {
            Some(Err((message, rejected))) => {
                tracing::warn!(
                    node = %self.node_id,
                    r#type = short_type(&type_url),
                    error = %message,
                    resources = ?rejected,
                    "proxy rejected config (NACK); not re-sending these until they change"
                );
                count_reject(&self.shared, &type_url);
                update_sync(&self.shared, self.id, &type_url, |t| t.last_error = Some(message));
            }
            Some(Ok(())) => {
                let nonce = req.response_nonce.clone();
                update_sync(&self.shared, self.id, &type_url, |t| {
                    t.acked_nonce = Some(nonce);
                    t.last_error = None;
                });
            }
            None => {}
        }
        if initial || !newly.is_empty() {
            self.respond(&type_url, &newly, initial);
        }
    }

    fn on_push(&mut self, ev: &PushEvent) {
        match &ev.scope {
            PushScope::Full => {
                let mut changed_clusters = BTreeSet::new();
                for t in PUSH_ORDER {
                    if self.types.contains_key(t) {
                        let force = if t == ENDPOINT_TYPE {
                            changed_clusters.clone()
                        } else {
                            BTreeSet::new()
                        };
                        let sent = self.respond(t, &force, false);
                        if t == CLUSTER_TYPE {
                            changed_clusters = sent;
                        }
                    }
                }
            }
            PushScope::Endpoints(clusters) => {
                let watched = self
                    .types
                    .get(ENDPOINT_TYPE)
                    .is_some_and(|w| w.subscribed.iter().any(|n| clusters.contains(n)));
                if watched {
                    self.respond_only(ENDPOINT_TYPE, &BTreeSet::new(), false, Some(clusters));
                }
            }
        }
    }

    /// Sends what the proxy does not have yet (and what it must drop). `force` names are sent even
    /// if unchanged; `always` answers even with nothing (a first request waits for an answer).
    /// Returns the names sent.
    fn respond(&mut self, type_url: &str, force: &BTreeSet<String>, always: bool) -> BTreeSet<String> {
        self.respond_only(type_url, force, always, None)
    }

    /// Like [`DeltaConnection::respond`], looking only at `only` (an endpoint push's clusters).
    fn respond_only(
        &mut self,
        type_url: &str,
        force: &BTreeSet<String>,
        always: bool,
        only: Option<&BTreeSet<String>>,
    ) -> BTreeSet<String> {
        let Some(watch) = self.types.get(type_url) else {
            return BTreeSet::new();
        };
        let names: Vec<String> = match only {
            Some(only) if !watch.wildcard => watch.subscribed.intersection(only).cloned().collect(),
            _ if watch.wildcard => Vec::new(),
            _ => watch.subscribed.iter().cloned().collect(),
        };
        if !watch.wildcard && names.is_empty() && !always {
            return BTreeSet::new();
        }
        let generated = if !watch.wildcard && names.is_empty() {
            Vec::new()
        } else {
            self.shared.generator.generate(&self.proxy, type_url, &names)
        };
        let watch = self.types.entry(type_url.to_owned()).or_default();
        let mut resources = Vec::new();
        let mut pending = HashMap::new();
        let mut present = BTreeSet::new();
        for r in generated {
            let digest = r.digest();
            let name = r.name.to_string();
            present.insert(name.clone());
            if watch.rejected.get(&name) == Some(&digest) {
                continue;
            }
            watch.rejected.remove(&name);
            if watch.known.get(&name) == Some(&digest) && !force.contains(&name) {
                continue;
            }
            pending.insert(name.clone(), Some(digest));
            resources.push(crate::pb::envoy::service::discovery::v3::Resource {
                name,
                version: format!("{digest:016x}"),
                resource: Some((*r.body).clone()),
                ..Default::default()
            });
        }
        let mut removed: Vec<String> = if let Some(only) = only {
            only.iter()
                .filter(|n| watch.known.contains_key(*n) && !present.contains(*n))
                .cloned()
                .collect()
        } else if watch.wildcard {
            watch
                .known
                .keys()
                .filter(|n| !present.contains(*n))
                .cloned()
                .collect()
        } else {
            // Asked for but gone (or never there): tell the proxy, so nothing waits on it.
            watch
                .subscribed
                .iter()
                .filter(|n| {
                    !present.contains(*n) && (watch.known.contains_key(*n) || force.contains(*n) || always)
                })
                .cloned()
                .collect()
        };
        removed.sort();
        for n in &removed {
            pending.insert(n.clone(), None);
        }
        if resources.is_empty() && removed.is_empty() && !always {
            return BTreeSet::new();
        }
        let sent: BTreeSet<String> = resources.iter().map(|r| r.name.clone()).collect();
        watch.pending = pending;
        self.send(type_url, resources, removed);
        sent
    }

    fn send(
        &mut self,
        type_url: &str,
        resources: Vec<crate::pb::envoy::service::discovery::v3::Resource>,
        removed: Vec<String>,
    ) {
        self.nonce_seq += 1;
        let nonce = format!("{:016x}{:04x}", fastrand::u64(..), self.nonce_seq & 0xffff);
        let version = lock(&self.shared.version).clone();
        let count = resources.len();
        if let Some(w) = self.types.get_mut(type_url) {
            w.sent_nonce = Some(nonce.clone());
        }
        count_push(&self.shared, type_url);
        update_sync(&self.shared, self.id, type_url, |t| {
            t.sent_nonce = Some(nonce.clone());
            t.sent_version = Some(version.clone());
        });
        tracing::debug!(node = %self.node_id, r#type = short_type(type_url), count, removed = removed.len(), "delta push");
        let _ = self.out.send(Outgoing::Delta(DeltaDiscoveryResponse {
            system_version_info: version,
            resources,
            type_url: type_url.to_owned(),
            removed_resources: removed,
            nonce,
            ..Default::default()
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_646_389_344), "2022-03-04T10:22:24Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn scopes_merge_to_the_wider_push() {
        let e = |n: &[&str]| PushScope::Endpoints(n.iter().map(|s| s.to_string()).collect());
        assert_eq!(e(&["a"]).merge(e(&["b"])), e(&["a", "b"]));
        assert_eq!(e(&["a"]).merge(PushScope::Full), PushScope::Full);
        assert_eq!(PushScope::Full.merge(e(&["a"])), PushScope::Full);
    }

    #[test]
    fn status_words_follow_proxy_status() {
        let mut t = TypeSync::default();
        assert_eq!(t.status(), "NOT SENT");
        t.sent_nonce = Some("a".into());
        assert_eq!(t.status(), "STALE");
        t.acked_nonce = Some("a".into());
        assert_eq!(t.status(), "SYNCED");
    }
}
