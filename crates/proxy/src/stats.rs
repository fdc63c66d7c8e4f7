//! Metrics: Istio's standard metrics (`istio_requests_total`, request/response sizes and
//! durations, TCP bytes and connections) with Istio's labels, and Envoy-style cluster counters
//! for the admin `/stats` views. Scraped on 15090 `/stats/prometheus`.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::access_log::LogRecord;
use crate::cluster::ClusterStats;

/// Reads one counter of a cluster.
type StatFn = fn(&ClusterStats) -> u64;
use crate::cluster::ClusterState;
use crate::listener::ConnMeta;
use crate::model::Direction;
use crate::snapshot::Snapshot;

/// Who this proxy is (from node metadata / the pod's environment): the "self" side of labels.
#[derive(Clone, Debug)]
pub struct Identity {
    pub workload: String,
    pub namespace: String,
    pub app: String,
    pub version: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    pub cluster: String,
    pub principal: String,
}

impl Default for Identity {
    fn default() -> Self {
        Identity {
            workload: "unknown".into(),
            namespace: "unknown".into(),
            app: "unknown".into(),
            version: "unknown".into(),
            canonical_service: "unknown".into(),
            canonical_revision: "latest".into(),
            cluster: "unknown".into(),
            principal: "unknown".into(),
        }
    }
}

static IDENTITY: OnceLock<Identity> = OnceLock::new();

/// Sets the proxy's identity once at start (later calls are ignored).
pub fn set_identity(id: Identity) {
    let _ = IDENTITY.set(id);
}

fn identity() -> &'static Identity {
    IDENTITY.get_or_init(Identity::default)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    reporter: &'static str,
    source_workload: String,
    source_canonical_service: String,
    source_canonical_revision: String,
    source_workload_namespace: String,
    source_principal: String,
    source_app: String,
    source_version: String,
    source_cluster: String,
    destination_workload: String,
    destination_workload_namespace: String,
    destination_principal: String,
    destination_app: String,
    destination_version: String,
    destination_service: String,
    destination_canonical_service: String,
    destination_canonical_revision: String,
    destination_service_name: String,
    destination_service_namespace: String,
    destination_cluster: String,
    request_protocol: &'static str,
    response_code: String,
    grpc_response_status: String,
    response_flags: String,
    connection_security_policy: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TcpLabels {
    reporter: &'static str,
    source_workload: String,
    source_canonical_service: String,
    source_canonical_revision: String,
    source_workload_namespace: String,
    source_principal: String,
    source_app: String,
    source_version: String,
    source_cluster: String,
    destination_workload: String,
    destination_workload_namespace: String,
    destination_principal: String,
    destination_app: String,
    destination_version: String,
    destination_service: String,
    destination_canonical_service: String,
    destination_canonical_revision: String,
    destination_service_name: String,
    destination_service_namespace: String,
    destination_cluster: String,
    request_protocol: &'static str,
    response_flags: String,
    connection_security_policy: &'static str,
}

/// Envoy's default histogram buckets (milliseconds / bytes).
const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0,
    300000.0, 600000.0, 1800000.0, 3600000.0,
];

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RequestLabels, Histogram, fn() -> Histogram>,
    request_bytes: Family<RequestLabels, Histogram, fn() -> Histogram>,
    response_bytes: Family<RequestLabels, Histogram, fn() -> Histogram>,
    tcp_opened: Family<TcpLabels, Counter>,
    tcp_closed: Family<TcpLabels, Counter>,
    tcp_sent: Family<TcpLabels, Counter>,
    tcp_received: Family<TcpLabels, Counter>,
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(histogram);
        let request_bytes =
            Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(histogram);
        let response_bytes =
            Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(histogram);
        let tcp_opened = Family::<TcpLabels, Counter>::default();
        let tcp_closed = Family::<TcpLabels, Counter>::default();
        let tcp_sent = Family::<TcpLabels, Counter>::default();
        let tcp_received = Family::<TcpLabels, Counter>::default();
        registry.register("istio_requests", "Requests handled", requests.clone());
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration",
            duration.clone(),
        );
        registry.register("istio_request_bytes", "Request body size", request_bytes.clone());
        registry.register(
            "istio_response_bytes",
            "Response body size",
            response_bytes.clone(),
        );
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            tcp_opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            tcp_closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent to the downstream",
            tcp_sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the downstream",
            tcp_received.clone(),
        );
        Metrics {
            registry,
            requests,
            duration,
            request_bytes,
            response_bytes,
            tcp_opened,
            tcp_closed,
            tcp_sent,
            tcp_received,
        }
    })
}

/// The peer-independent label values of one exchange.
struct Sides {
    reporter: &'static str,
    src: [String; 8],
    dst: [String; 12],
}

fn split_service(fqdn: &str) -> (String, String) {
    // name.namespace.svc.cluster.local
    let mut parts = fqdn.split('.');
    match (parts.next(), parts.next()) {
        (Some(n), Some(ns)) if !ns.is_empty() => (n.to_owned(), ns.to_owned()),
        (Some(n), _) => (n.to_owned(), "unknown".to_owned()),
        _ => ("unknown".into(), "unknown".into()),
    }
}

fn sides(
    meta: &ConnMeta,
    cluster: Option<&ClusterState>,
    host_header: Option<&str>,
    host_labels: &[(String, String)],
) -> Sides {
    let me = identity();
    let unknown = || "unknown".to_string();
    let cluster_name = cluster.map(|c| c.config.name.as_str()).unwrap_or("");
    let service = cluster.and_then(|c| c.config.service.clone());
    let special = [
        "PassthroughCluster",
        "BlackHoleCluster",
        "InboundPassthroughClusterIpv4",
        "InboundPassthroughClusterIpv6",
    ];
    let label = |k: &str| host_labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let self_side = |me: &Identity| {
        [
            me.workload.clone(),
            me.canonical_service.clone(),
            me.canonical_revision.clone(),
            me.namespace.clone(),
            me.principal.clone(),
            me.app.clone(),
            me.version.clone(),
            me.cluster.clone(),
        ]
    };
    if meta.direction == Direction::Inbound {
        let dest_service = service.clone().unwrap_or_else(|| me.canonical_service.clone());
        let (svc_name, svc_ns) = if special.contains(&cluster_name) {
            (cluster_name.to_owned(), me.namespace.clone())
        } else {
            split_service(&dest_service)
        };
        let s = self_side(me);
        Sides {
            reporter: "destination",
            src: [
                unknown(),
                unknown(),
                "latest".into(),
                unknown(),
                unknown(),
                unknown(),
                unknown(),
                unknown(),
            ],
            dst: [
                s[0].clone(),
                s[3].clone(),
                s[4].clone(),
                s[5].clone(),
                s[6].clone(),
                dest_service,
                s[1].clone(),
                s[2].clone(),
                svc_name,
                svc_ns,
                s[7].clone(),
                String::new(),
            ],
        }
    } else {
        let dest_service = service
            .clone()
            .or_else(|| host_header.map(|h| host_without_port(h).to_owned()))
            .unwrap_or_else(unknown);
        let (svc_name, svc_ns) = if special.contains(&cluster_name) {
            (cluster_name.to_owned(), unknown())
        } else if service.is_some() {
            split_service(&dest_service)
        } else {
            (dest_service.clone(), unknown())
        };
        // Istio endpoint metadata: workload = "name;namespace;canonical;revision;cluster".
        let wl = label("workload").unwrap_or_default();
        let mut w = wl.split(';').map(str::to_owned);
        let (wname, wns, wcanon, wrev, wcluster) = (w.next(), w.next(), w.next(), w.next(), w.next());
        let or_unknown = |v: Option<String>| v.filter(|s| !s.is_empty()).unwrap_or_else(unknown);
        Sides {
            reporter: "source",
            src: self_side(me),
            dst: [
                or_unknown(wname),
                or_unknown(wns),
                unknown(),
                or_unknown(label("app")),
                or_unknown(label("version")),
                dest_service,
                or_unknown(wcanon),
                wrev.filter(|s| !s.is_empty()).unwrap_or_else(|| "latest".into()),
                svc_name,
                svc_ns,
                or_unknown(wcluster),
                String::new(),
            ],
        }
    }
}

/// The metric handles of one label set, so a repeated label set costs no family lookup.
#[derive(Clone)]
struct RequestHandles {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

/// Everything the labels of an HTTP request are computed from (identity aside, which is fixed
/// at start): equal keys give equal labels. Generic over the string type so a borrowed key can
/// be hashed and compared against stored ones without allocating.
#[derive(Hash, PartialEq, Eq)]
struct RequestKey<S> {
    inbound: bool,
    grpc: bool,
    response_code: u16,
    flags: (u32, u64, u8),
    cluster_name: S,
    service: Option<S>,
    /// The Host header up to `:`, only where it becomes `destination_service`.
    host: Option<S>,
    /// Endpoint metadata read by outbound labels: workload, app, version.
    host_labels: [Option<S>; 3],
}

impl RequestKey<Box<str>> {
    fn borrowed(&self) -> RequestKey<&str> {
        let [w, a, v] = &self.host_labels;
        RequestKey {
            inbound: self.inbound,
            grpc: self.grpc,
            response_code: self.response_code,
            flags: self.flags,
            cluster_name: &self.cluster_name,
            service: self.service.as_deref(),
            host: self.host.as_deref(),
            host_labels: [w.as_deref(), a.as_deref(), v.as_deref()],
        }
    }
}

impl RequestKey<&str> {
    fn owned(&self) -> RequestKey<Box<str>> {
        let [w, a, v] = self.host_labels;
        RequestKey {
            inbound: self.inbound,
            grpc: self.grpc,
            response_code: self.response_code,
            flags: self.flags,
            cluster_name: self.cluster_name.into(),
            service: self.service.map(Into::into),
            host: self.host.map(Into::into),
            host_labels: [w.map(Into::into), a.map(Into::into), v.map(Into::into)],
        }
    }
}

/// foldhash, not SipHash: the cache keys are short and not attacker-chosen in bulk (a collision
/// only lengthens one bucket's list). Fixed seeds: a key's hash is computed apart from the map.
type FastBuild = foldhash::fast::FixedState;

/// Label sets a worker keeps handles for before starting over (the families keep every series
/// regardless; this only bounds the cache).
const REQUEST_CACHE_LIMIT: usize = 4096;

/// Key hash → the keys with that hash and their handles.
type RequestCache = std::collections::HashMap<u64, Vec<(RequestKey<Box<str>>, RequestHandles)>, FastBuild>;

thread_local! {
    /// Per worker thread (each is a single-threaded runtime), so no locking.
    static REQUEST_CACHE: std::cell::RefCell<RequestCache> = std::cell::RefCell::default();
}

/// The authority up to its first `:`, as Istio's `destination_service` fallback takes it. (A
/// byte search: `split(':')` runs a generic char searcher, and this runs per request.)
fn host_without_port(host: &str) -> &str {
    host.bytes().position(|b| b == b':').map_or(host, |i| &host[..i])
}

/// Records one finished HTTP request.
pub fn http_request(
    meta: &ConnMeta,
    cluster: Option<&ClusterState>,
    rec: &LogRecord,
    grpc: bool,
    host_labels: &[(String, String)],
) {
    let host = rec.request.as_ref().map(|r| r.authority());
    let inbound = meta.direction == Direction::Inbound;
    let service = cluster.and_then(|c| c.config.service.as_deref());
    let label = |k: &str| host_labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let key = RequestKey {
        inbound,
        grpc,
        response_code: rec.response_code,
        flags: rec.flags.raw(),
        cluster_name: cluster.map(|c| c.config.name.as_str()).unwrap_or(""),
        service,
        host: match (inbound, service) {
            (false, None) => host.map(host_without_port),
            _ => None,
        },
        host_labels: if inbound {
            [None, None, None]
        } else {
            [label("workload"), label("app"), label("version")]
        },
    };
    let hash = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = FastBuild::default().build_hasher();
        std::hash::Hash::hash(&key, &mut h);
        h.finish()
    };
    let record = |handles: &RequestHandles| {
        handles.requests.inc();
        handles.duration.observe(rec.duration.as_secs_f64() * 1000.0);
        handles.request_bytes.observe(rec.bytes_received as f64);
        handles.response_bytes.observe(rec.bytes_sent as f64);
    };
    // Recorded through the cached handles in place (cloning them is four reference counts
    // up and down per request).
    let recorded = REQUEST_CACHE.with_borrow(|cache| {
        cache
            .get(&hash)
            .and_then(|list| list.iter().find(|(k, _)| k.borrowed() == key))
            .map(|(_, handles)| record(handles))
            .is_some()
    });
    if recorded {
        return;
    }
    let labels = request_labels(meta, cluster, rec, grpc, host_labels);
    let m = metrics();
    let handles = RequestHandles {
        requests: m.requests.get_or_create(&labels).clone(),
        duration: m.duration.get_or_create(&labels).clone(),
        request_bytes: m.request_bytes.get_or_create(&labels).clone(),
        response_bytes: m.response_bytes.get_or_create(&labels).clone(),
    };
    record(&handles);
    REQUEST_CACHE.with_borrow_mut(|cache| {
        if cache.len() >= REQUEST_CACHE_LIMIT {
            cache.clear();
        }
        cache.entry(hash).or_default().push((key.owned(), handles));
    });
}

fn request_labels(
    meta: &ConnMeta,
    cluster: Option<&ClusterState>,
    rec: &LogRecord,
    grpc: bool,
    host_labels: &[(String, String)],
) -> RequestLabels {
    let host = rec.request.as_ref().map(|r| r.authority());
    let s = sides(meta, cluster, host, host_labels);
    let [sw, scs, scr, swn, sp, sa, sv, sc] = s.src;
    let [dw, dwn, dp, da, dv, ds, dcs, dcr, dsn, dsns, dc, _] = s.dst;
    RequestLabels {
        reporter: s.reporter,
        source_workload: sw,
        source_canonical_service: scs,
        source_canonical_revision: scr,
        source_workload_namespace: swn,
        source_principal: sp,
        source_app: sa,
        source_version: sv,
        source_cluster: sc,
        destination_workload: dw,
        destination_workload_namespace: dwn,
        destination_principal: dp,
        destination_app: da,
        destination_version: dv,
        destination_service: ds,
        destination_canonical_service: dcs,
        destination_canonical_revision: dcr,
        destination_service_name: dsn,
        destination_service_namespace: dsns,
        destination_cluster: dc,
        request_protocol: if grpc { "grpc" } else { "http" },
        response_code: rec.response_code.to_string(),
        grpc_response_status: String::new(),
        response_flags: rec.flags.to_short_string(),
        connection_security_policy: if meta.direction == Direction::Inbound {
            "none"
        } else {
            "unknown"
        },
    }
}

fn tcp_labels(meta: &ConnMeta, cluster: Option<&ClusterState>, flags: String) -> TcpLabels {
    let s = sides(meta, cluster, None, &[]);
    let [sw, scs, scr, swn, sp, sa, sv, sc] = s.src;
    let [dw, dwn, dp, da, dv, ds, dcs, dcr, dsn, dsns, dc, _] = s.dst;
    TcpLabels {
        reporter: s.reporter,
        source_workload: sw,
        source_canonical_service: scs,
        source_canonical_revision: scr,
        source_workload_namespace: swn,
        source_principal: sp,
        source_app: sa,
        source_version: sv,
        source_cluster: sc,
        destination_workload: dw,
        destination_workload_namespace: dwn,
        destination_principal: dp,
        destination_app: da,
        destination_version: dv,
        destination_service: ds,
        destination_canonical_service: dcs,
        destination_canonical_revision: dcr,
        destination_service_name: dsn,
        destination_service_namespace: dsns,
        destination_cluster: dc,
        request_protocol: "tcp",
        response_flags: flags,
        connection_security_policy: if meta.direction == Direction::Inbound {
            "none"
        } else {
            "unknown"
        },
    }
}

/// A TCP connection reached its upstream.
pub fn tcp_opened(meta: &ConnMeta, cluster: &ClusterState) {
    metrics()
        .tcp_opened
        .get_or_create(&tcp_labels(meta, Some(cluster), "-".into()))
        .inc();
}

/// A TCP connection ended (whether or not it reached an upstream).
pub fn tcp_closed(meta: &ConnMeta, rec: &LogRecord) {
    let labels = tcp_labels(meta, None, rec.flags.to_short_string());
    let m = metrics();
    m.tcp_closed.get_or_create(&labels).inc();
    m.tcp_received.get_or_create(&labels).inc_by(rec.bytes_received);
    m.tcp_sent.get_or_create(&labels).inc_by(rec.bytes_sent);
}

/// Prometheus text (0.0.4 compatible): Istio's metrics, then Envoy-style cluster stats.
pub fn prometheus_text(snap: &Snapshot) -> String {
    let mut out = String::new();
    let mut om = String::new();
    if prometheus_client::encoding::text::encode(&mut om, &metrics().registry).is_ok() {
        out = openmetrics_to_prometheus(&om);
    }
    let mut names: Vec<&String> = snap.clusters.keys().collect();
    names.sort();
    let counters: [(&str, StatFn); 12] = [
        ("upstream_cx_total", |s| s.upstream_cx_total.load(Relaxed)),
        ("upstream_cx_connect_fail", |s| {
            s.upstream_cx_connect_fail.load(Relaxed)
        }),
        ("upstream_cx_connect_timeout", |s| {
            s.upstream_cx_connect_timeout.load(Relaxed)
        }),
        ("upstream_cx_overflow", |s| s.upstream_cx_overflow.load(Relaxed)),
        ("upstream_rq_total", |s| s.upstream_rq_total.load(Relaxed)),
        ("upstream_rq_pending_overflow", |s| {
            s.upstream_rq_pending_overflow.load(Relaxed)
        }),
        ("upstream_rq_timeout", |s| s.upstream_rq_timeout.load(Relaxed)),
        ("upstream_rq_retry", |s| s.upstream_rq_retry.load(Relaxed)),
        ("upstream_rq_retry_overflow", |s| {
            s.upstream_rq_retry_overflow.load(Relaxed)
        }),
        ("upstream_cx_none_healthy", |s| {
            s.upstream_cx_none_healthy.load(Relaxed)
        }),
        ("upstream_cx_rx_bytes_total", |s| {
            s.upstream_cx_rx_bytes_total.load(Relaxed)
        }),
        ("upstream_cx_tx_bytes_total", |s| {
            s.upstream_cx_tx_bytes_total.load(Relaxed)
        }),
    ];
    for (stat, get) in counters {
        let _ = writeln!(out, "# TYPE envoy_cluster_{stat} counter");
        for n in &names {
            let _ = writeln!(
                out,
                "envoy_cluster_{stat}{{envoy_cluster_name=\"{}\"}} {}",
                escape(n),
                get(&snap.clusters[*n].stats)
            );
        }
    }
    let _ = writeln!(out, "# TYPE envoy_cluster_upstream_rq counter");
    for n in &names {
        let s = &snap.clusters[*n].stats;
        for (class, c) in [
            ("2xx", &s.upstream_rq_2xx),
            ("3xx", &s.upstream_rq_3xx),
            ("4xx", &s.upstream_rq_4xx),
            ("5xx", &s.upstream_rq_5xx),
        ] {
            let _ = writeln!(
                out,
                "envoy_cluster_upstream_rq{{envoy_response_code_class=\"{class}\",envoy_cluster_name=\"{}\"}} {}",
                escape(n),
                c.load(Relaxed)
            );
        }
    }
    let with_detector: Vec<&&String> = names
        .iter()
        .filter(|n| snap.clusters[**n].has_outlier_detection())
        .collect();
    if !with_detector.is_empty() {
        let per: Vec<(&String, Vec<(&'static str, u64)>)> = with_detector
            .iter()
            .map(|n| {
                let c = &snap.clusters[**n];
                c.tick();
                (**n, outlier_stats(c))
            })
            .collect();
        for (i, (stat, _)) in per[0].1.iter().enumerate() {
            let kind = if *stat == "ejections_active" {
                "gauge"
            } else {
                "counter"
            };
            let _ = writeln!(out, "# TYPE envoy_cluster_outlier_detection_{stat} {kind}");
            for (n, values) in &per {
                let _ = writeln!(
                    out,
                    "envoy_cluster_outlier_detection_{stat}{{envoy_cluster_name=\"{}\"}} {}",
                    escape(n),
                    values[i].1
                );
            }
        }
    }
    for (stat, get) in [
        (
            "upstream_cx_active",
            (|s| s.upstream_cx_active.load(Relaxed)) as fn(&crate::cluster::ClusterStats) -> u64,
        ),
        ("upstream_rq_active", |s| s.upstream_rq_active.load(Relaxed)),
        ("upstream_rq_pending_active", |s| {
            s.upstream_rq_pending_active.load(Relaxed)
        }),
    ] {
        let _ = writeln!(out, "# TYPE envoy_cluster_{stat} gauge");
        for n in &names {
            let _ = writeln!(
                out,
                "envoy_cluster_{stat}{{envoy_cluster_name=\"{}\"}} {}",
                escape(n),
                get(&snap.clusters[*n].stats)
            );
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Envoy's `/stats` text: `cluster.<name>.<stat>: <value>` lines, sorted.
pub fn envoy_stats_text(snap: &Snapshot, filter: Option<&regex::Regex>) -> String {
    let mut lines = Vec::new();
    for (name, c) in &snap.clusters {
        let s = &c.stats;
        for (stat, v) in [
            ("upstream_cx_total", s.upstream_cx_total.load(Relaxed)),
            ("upstream_cx_active", s.upstream_cx_active.load(Relaxed)),
            (
                "upstream_cx_connect_fail",
                s.upstream_cx_connect_fail.load(Relaxed),
            ),
            (
                "upstream_cx_connect_timeout",
                s.upstream_cx_connect_timeout.load(Relaxed),
            ),
            ("upstream_cx_overflow", s.upstream_cx_overflow.load(Relaxed)),
            (
                "upstream_cx_none_healthy",
                s.upstream_cx_none_healthy.load(Relaxed),
            ),
            ("upstream_rq_total", s.upstream_rq_total.load(Relaxed)),
            ("upstream_rq_active", s.upstream_rq_active.load(Relaxed)),
            (
                "upstream_rq_pending_total",
                s.upstream_rq_pending_total.load(Relaxed),
            ),
            (
                "upstream_rq_pending_active",
                s.upstream_rq_pending_active.load(Relaxed),
            ),
            (
                "upstream_rq_pending_overflow",
                s.upstream_rq_pending_overflow.load(Relaxed),
            ),
            ("upstream_rq_timeout", s.upstream_rq_timeout.load(Relaxed)),
            ("upstream_rq_retry", s.upstream_rq_retry.load(Relaxed)),
            (
                "upstream_rq_retry_overflow",
                s.upstream_rq_retry_overflow.load(Relaxed),
            ),
            ("upstream_rq_2xx", s.upstream_rq_2xx.load(Relaxed)),
            ("upstream_rq_3xx", s.upstream_rq_3xx.load(Relaxed)),
            ("upstream_rq_4xx", s.upstream_rq_4xx.load(Relaxed)),
            ("upstream_rq_5xx", s.upstream_rq_5xx.load(Relaxed)),
            (
                "upstream_cx_rx_bytes_total",
                s.upstream_cx_rx_bytes_total.load(Relaxed),
            ),
            (
                "upstream_cx_tx_bytes_total",
                s.upstream_cx_tx_bytes_total.load(Relaxed),
            ),
            ("membership_total", c.host_set().hosts.len() as u64),
            ("membership_healthy", c.host_set().active().len() as u64),
        ] {
            lines.push(format!("cluster.{name}.{stat}: {v}"));
        }
        if c.has_outlier_detection() {
            c.tick();
            for (stat, v) in outlier_stats(c) {
                lines.push(format!("cluster.{name}.outlier_detection.{stat}: {v}"));
            }
        }
    }
    for (stat, v) in server_stats() {
        lines.push(format!("{stat}: {v}"));
    }
    for (stat, v) in crate::tls::stats_lines() {
        lines.push(format!("{stat}: {v}"));
    }
    lines.retain(|l| filter.is_none_or(|f| f.is_match(l.split(':').next().unwrap_or(""))));
    lines.sort();
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// `outlier_detection.*` of a cluster with a detector (Envoy creates them with it).
pub fn outlier_stats(c: &ClusterState) -> Vec<(&'static str, u64)> {
    let s = &c.stats;
    vec![
        ("ejections_active", c.ejections_active() as u64),
        (
            "ejections_enforced_total",
            s.ejections_enforced_total.load(Relaxed),
        ),
        ("ejections_overflow", s.ejections_overflow.load(Relaxed)),
        ("ejections_total", s.ejections_total.load(Relaxed)),
        (
            "ejections_consecutive_5xx",
            s.ejections_consecutive_5xx.load(Relaxed),
        ),
        ("ejections_success_rate", s.ejections_success_rate.load(Relaxed)),
        (
            "ejections_enforced_consecutive_5xx",
            s.ejections_enforced_consecutive_5xx.load(Relaxed),
        ),
        (
            "ejections_detected_consecutive_5xx",
            s.ejections_detected_consecutive_5xx.load(Relaxed),
        ),
        (
            "ejections_enforced_consecutive_gateway_failure",
            s.ejections_enforced_consecutive_gateway_failure.load(Relaxed),
        ),
        (
            "ejections_detected_consecutive_gateway_failure",
            s.ejections_detected_consecutive_gateway_failure.load(Relaxed),
        ),
        (
            "ejections_enforced_consecutive_local_origin_failure",
            s.ejections_enforced_consecutive_local_origin_failure
                .load(Relaxed),
        ),
        (
            "ejections_detected_consecutive_local_origin_failure",
            s.ejections_detected_consecutive_local_origin_failure
                .load(Relaxed),
        ),
        (
            "ejections_enforced_success_rate",
            s.ejections_enforced_success_rate.load(Relaxed),
        ),
        (
            "ejections_detected_success_rate",
            s.ejections_detected_success_rate.load(Relaxed),
        ),
        (
            "ejections_enforced_failure_percentage",
            s.ejections_enforced_failure_percentage.load(Relaxed),
        ),
        (
            "ejections_detected_failure_percentage",
            s.ejections_detected_failure_percentage.load(Relaxed),
        ),
    ]
}

/// `server.*` and `listener_manager.*` values, as Istio's readiness check reads them.
fn server_stats() -> Vec<(String, u64)> {
    let s = server();
    vec![
        ("server.state".into(), s.state.load(Relaxed)),
        ("server.live".into(), u64::from(s.state.load(Relaxed) == 0)),
        (
            "listener_manager.workers_started".into(),
            s.workers_started.load(Relaxed),
        ),
        (
            "listener_manager.lds.update_success".into(),
            s.lds_updates.load(Relaxed),
        ),
        (
            "listener_manager.lds.update_rejected".into(),
            s.lds_rejected.load(Relaxed),
        ),
        (
            "cluster_manager.cds.update_success".into(),
            s.cds_updates.load(Relaxed),
        ),
        (
            "cluster_manager.cds.update_rejected".into(),
            s.cds_rejected.load(Relaxed),
        ),
        (
            "http.downstream_rq_total".into(),
            s.downstream_rq_total.load(Relaxed),
        ),
        (
            "listener.downstream_cx_total".into(),
            s.downstream_cx_total.load(Relaxed),
        ),
        (
            "listener.downstream_cx_active".into(),
            s.downstream_cx_active.load(Relaxed),
        ),
    ]
}

/// Process-wide state and counters (`server.state` 0 = LIVE, 1 = DRAINING, 2 = PRE_INITIALIZING).
#[derive(Debug, Default)]
pub struct ServerStats {
    pub state: std::sync::atomic::AtomicU64,
    pub workers_started: std::sync::atomic::AtomicU64,
    pub lds_updates: std::sync::atomic::AtomicU64,
    pub cds_updates: std::sync::atomic::AtomicU64,
    pub lds_rejected: std::sync::atomic::AtomicU64,
    pub cds_rejected: std::sync::atomic::AtomicU64,
    pub downstream_rq_total: std::sync::atomic::AtomicU64,
    pub downstream_cx_total: std::sync::atomic::AtomicU64,
    pub downstream_cx_active: std::sync::atomic::AtomicU64,
}

pub fn server() -> &'static ServerStats {
    static S: OnceLock<ServerStats> = OnceLock::new();
    S.get_or_init(|| ServerStats {
        state: std::sync::atomic::AtomicU64::new(2),
        ..Default::default()
    })
}

/// Keeps `listener.downstream_cx_active` up to date for one connection.
pub struct ConnGauge;

impl ConnGauge {
    pub fn new() -> ConnGauge {
        server().downstream_cx_total.fetch_add(1, Relaxed);
        server().downstream_cx_active.fetch_add(1, Relaxed);
        ConnGauge
    }
}

impl Default for ConnGauge {
    fn default() -> Self {
        ConnGauge::new()
    }
}

impl Drop for ConnGauge {
    fn drop(&mut self) {
        server().downstream_cx_active.fetch_sub(1, Relaxed);
    }
}

/// A cheap handle for request-completion stats, so callers need not hold the cluster.
pub fn count_request(cluster: Option<&Arc<ClusterState>>, status: u16) {
    server().downstream_rq_total.fetch_add(1, Relaxed);
    if let Some(c) = cluster {
        c.stats.count_status(status);
    }
}

/// OpenMetrics text → Prometheus 0.0.4 text, the format Envoy serves: counter families are named
/// after their samples (`# TYPE istio_requests_total counter`) and there is no `# EOF`.
fn openmetrics_to_prometheus(om: &str) -> String {
    let counters: std::collections::HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# TYPE ", "# HELP "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {

    /// The per-worker handle cache must land each request in the series its labels name.
    #[test]
    fn cached_handles_count_into_the_labelled_series() {
        use crate::access_log::{LogRecord, RequestView, ResponseFlags};
        use crate::listener::ConnMeta;
        use crate::model::Direction;
        let meta = ConnMeta {
            id: 1,
            listener: "l".into(),
            direction: Direction::Outbound,
            destination: "127.0.0.1:80".parse().expect("addr"),
            peer: "127.0.0.1:5000".parse().expect("addr"),
            server_name: None,
            tls: false,
            tls_version: None,
        };
        let record = |authority: &str, flags: &[ResponseFlags]| {
            let mut r = LogRecord::new(meta.destination, meta.peer);
            r.response_code = 503;
            for f in flags {
                r.flags.insert(*f);
            }
            r.request = Some(RequestView {
                method: "GET".into(),
                path: "/".into(),
                authority: http::HeaderValue::from_str(authority).unwrap(),
                scheme: "http".into(),
                headers: http::HeaderMap::new(),
            });
            r
        };
        let labels = |app: &str| {
            vec![
                ("workload".to_string(), "w;ns;canon;v7;c".to_string()),
                ("app".to_string(), app.to_string()),
            ]
        };
        let uf_urx = record("cache-test.example:80", &[ResponseFlags::UF, ResponseFlags::URX]);
        let urx_uf = record("cache-test.example", &[ResponseFlags::URX, ResponseFlags::UF]);
        super::http_request(&meta, None, &uf_urx, false, &labels("cache-a"));
        super::http_request(&meta, None, &uf_urx, false, &labels("cache-a"));
        super::http_request(&meta, None, &urx_uf, false, &labels("cache-a"));
        super::http_request(&meta, None, &uf_urx, false, &labels("cache-b"));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &super::metrics().registry).expect("encode");
        let count = |app: &str, flags: &str| {
            text.lines()
                .filter(|l| l.starts_with("istio_requests_total{"))
                .filter(|l| l.contains(&format!("destination_app=\"{app}\"")))
                .filter(|l| l.contains(&format!("response_flags=\"{flags}\"")))
                .filter(|l| l.contains("destination_service=\"cache-test.example\""))
                .filter(|l| l.contains("destination_canonical_revision=\"v7\""))
                .map(|l| l.rsplit(' ').next().unwrap_or("").to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(count("cache-a", "UF,URX"), ["2"]);
        assert_eq!(count("cache-a", "URX,UF"), ["1"]);
        assert_eq!(count("cache-b", "UF,URX"), ["1"]);
    }
    #[test]
    fn counter_families_take_their_sample_names() {
        let om = "# HELP istio_requests Requests.\n# TYPE istio_requests counter\nistio_requests_total{a=\"b\"} 3\n# TYPE h histogram\nh_sum 1\n# EOF\n";
        assert_eq!(
            super::openmetrics_to_prometheus(om),
            "# HELP istio_requests_total Requests.\n# TYPE istio_requests_total counter\nistio_requests_total{a=\"b\"} 3\n# TYPE h histogram\nh_sum 1\n"
        );
    }
}
