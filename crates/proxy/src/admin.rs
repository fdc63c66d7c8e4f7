//! The admin interface (127.0.0.1:15000) in Envoy's shapes, so `istioctl proxy-config` and
//! `skiffctl proxy-config` can read it: `/config_dump`, `/clusters`, `/stats`,
//! `/stats/prometheus`, `/ready`, `/server_info`, `/logging`, `/listeners`, `/quitquitquit`,
//! `/drain_listeners`; plus `/healthz/ready` for the 15021 health port.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prost::{Message, Name};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use xds::pb::envoy::admin::v3 as admin;
use xds::pb::envoy::config::bootstrap::v3::Bootstrap;
use xds::pb::envoy::config::core::v3 as core;
use xds::pb::google::protobuf::{Any, Duration as PbDuration, Timestamp};

use crate::convert::HCM_TYPE;
use crate::snapshot::{Snapshot, Store};
use crate::worker::Phase;

/// What the admin handlers read and control.
pub struct AdminState {
    pub store: Arc<Store>,
    pub bootstrap: Bootstrap,
    pub bootstrap_loaded: SystemTime,
    pub started: Instant,
    pub phase: watch::Sender<Phase>,
    /// True once the first complete configuration is in force and listeners are up.
    pub configured: Arc<AtomicBool>,
    pub concurrency: u32,
    pub config_path: String,
}

pub const VERSION: &str = concat!("skiff/", env!("CARGO_PKG_VERSION"), "/Clean/RELEASE");

fn timestamp(t: SystemTime) -> Option<Timestamp> {
    let d = t.duration_since(UNIX_EPOCH).ok()?;
    Some(Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    })
}

fn pack<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// Envoy's `ConfigDump`: bootstrap, clusters, (endpoints), listeners, routes, secrets.
pub fn config_dump(state: &AdminState, snap: &Snapshot, include_eds: bool) -> admin::ConfigDump {
    let res = &snap.resources;
    let version = |url: &str| res.versions.get(url).cloned().unwrap_or_default();
    let mut configs = vec![pack(&admin::BootstrapConfigDump {
        bootstrap: Some(state.bootstrap.clone()),
        last_updated: timestamp(state.bootstrap_loaded),
    })];

    let mut clusters = admin::ClustersConfigDump {
        version_info: version("type.googleapis.com/envoy.config.cluster.v3.Cluster"),
        ..Default::default()
    };
    for v in res.clusters.values() {
        let any = Some(pack(&v.proto));
        match &v.version {
            None => clusters
                .static_clusters
                .push(admin::clusters_config_dump::StaticCluster {
                    cluster: any,
                    last_updated: timestamp(v.last_updated),
                }),
            Some(ver) => clusters
                .dynamic_active_clusters
                .push(admin::clusters_config_dump::DynamicCluster {
                    version_info: ver.clone(),
                    cluster: any,
                    last_updated: timestamp(v.last_updated),
                    ..Default::default()
                }),
        }
    }
    configs.push(pack(&clusters));

    if include_eds {
        let mut eps = admin::EndpointsConfigDump::default();
        for v in res.clusters.values().filter(|v| v.version.is_none()) {
            if let Some(la) = &v.proto.load_assignment {
                eps.static_endpoint_configs
                    .push(admin::endpoints_config_dump::StaticEndpointConfig {
                        endpoint_config: Some(pack(la)),
                        last_updated: timestamp(v.last_updated),
                    });
            }
        }
        for v in res.endpoints.values() {
            eps.dynamic_endpoint_configs
                .push(admin::endpoints_config_dump::DynamicEndpointConfig {
                    version_info: v.version.clone().unwrap_or_default(),
                    endpoint_config: Some(pack(&v.proto)),
                    last_updated: timestamp(v.last_updated),
                    ..Default::default()
                });
        }
        configs.push(pack(&eps));
    }

    let mut listeners = admin::ListenersConfigDump {
        version_info: version("type.googleapis.com/envoy.config.listener.v3.Listener"),
        ..Default::default()
    };
    let mut routes = admin::RoutesConfigDump::default();
    for v in res.listeners.values() {
        let any = Some(pack(&v.proto));
        match &v.version {
            None => listeners
                .static_listeners
                .push(admin::listeners_config_dump::StaticListener {
                    listener: any,
                    last_updated: timestamp(v.last_updated),
                }),
            Some(ver) => listeners
                .dynamic_listeners
                .push(admin::listeners_config_dump::DynamicListener {
                    name: v.proto.name.clone(),
                    active_state: Some(admin::listeners_config_dump::DynamicListenerState {
                        version_info: ver.clone(),
                        listener: any,
                        last_updated: timestamp(v.last_updated),
                    }),
                    warming_state: res.warming.get(&v.proto.name).map(|w| warming_state(&w.listener)),
                    ..Default::default()
                }),
        }
        // Inline route configurations are shown with the static routes, as Envoy does.
        for fc in v
            .proto
            .filter_chains
            .iter()
            .chain(v.proto.default_filter_chain.iter())
        {
            for f in &fc.filters {
                use xds::pb::envoy::config::listener::v3::filter::ConfigType;
                use xds::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
                let Some(ConfigType::TypedConfig(any)) = &f.config_type else {
                    continue;
                };
                if any.type_url != HCM_TYPE {
                    continue;
                }
                if let Ok(h) = hcm::HttpConnectionManager::decode(any.value.as_slice()) {
                    if let Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(rc)) =
                        h.route_specifier
                    {
                        routes
                            .static_route_configs
                            .push(admin::routes_config_dump::StaticRouteConfig {
                                route_config: Some(pack(&rc)),
                                last_updated: timestamp(v.last_updated),
                            });
                    }
                }
            }
        }
    }
    // Listeners seen only warming (no active version yet).
    for (name, w) in &res.warming {
        if !res.listeners.contains_key(name) {
            listeners
                .dynamic_listeners
                .push(admin::listeners_config_dump::DynamicListener {
                    name: name.clone(),
                    warming_state: Some(warming_state(&w.listener)),
                    ..Default::default()
                });
        }
    }
    configs.push(pack(&listeners));
    for v in res.routes.values() {
        routes
            .dynamic_route_configs
            .push(admin::routes_config_dump::DynamicRouteConfig {
                version_info: v.version.clone().unwrap_or_default(),
                route_config: Some(pack(&v.proto)),
                last_updated: timestamp(v.last_updated),
                ..Default::default()
            });
    }
    configs.push(pack(&admin::ScopedRoutesConfigDump::default()));
    configs.push(pack(&routes));
    configs.push(pack(&secrets_dump(res)));
    admin::ConfigDump { configs }
}

fn warming_state(
    v: &crate::snapshot::Versioned<xds::pb::envoy::config::listener::v3::Listener, crate::model::Listener>,
) -> admin::listeners_config_dump::DynamicListenerState {
    admin::listeners_config_dump::DynamicListenerState {
        version_info: v.version.clone().unwrap_or_default(),
        listener: Some(pack(&v.proto)),
        last_updated: timestamp(v.last_updated),
    }
}

/// Envoy's `SecretsConfigDump`, private keys shown as `[redacted]` (Envoy redacts the
/// `sensitive` fields the same way), so `proxy-config secret` can read the certificates.
fn secrets_dump(res: &crate::snapshot::Resources) -> admin::SecretsConfigDump {
    use xds::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type;
    let mut dump = admin::SecretsConfigDump::default();
    for (name, v) in &res.secrets {
        let mut secret = v.proto.clone();
        if let Some(Type::TlsCertificate(c)) = &mut secret.r#type {
            if let Some(key) = &mut c.private_key {
                redact(key);
            }
            if let Some(p) = &mut c.password {
                redact(p);
            }
        }
        let any = Some(pack(&secret));
        match &v.version {
            None => dump
                .static_secrets
                .push(admin::secrets_config_dump::StaticSecret {
                    name: name.clone(),
                    last_updated: timestamp(v.last_updated),
                    secret: any,
                }),
            Some(ver) => dump
                .dynamic_active_secrets
                .push(admin::secrets_config_dump::DynamicSecret {
                    name: name.clone(),
                    version_info: ver.clone(),
                    last_updated: timestamp(v.last_updated),
                    secret: any,
                    ..Default::default()
                }),
        }
    }
    dump
}

fn redact(d: &mut core::DataSource) {
    use core::data_source::Specifier as S;
    const R: &str = "[redacted]";
    d.specifier = Some(match d.specifier.take() {
        Some(S::InlineBytes(_)) => S::InlineBytes(R.as_bytes().to_vec()),
        Some(S::Filename(_)) => S::Filename(R.into()),
        Some(S::EnvironmentVariable(_)) => S::EnvironmentVariable(R.into()),
        _ => S::InlineString(R.into()),
    });
}

fn host_address(a: SocketAddr) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: a.ip().to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(
                a.port(),
            ))),
            ..Default::default()
        })),
    }
}

/// `/clusters?format=json`: Envoy's `Clusters` message.
pub fn clusters_proto(snap: &Snapshot) -> admin::Clusters {
    let mut names: Vec<&String> = snap.clusters.keys().collect();
    names.sort();
    let mut out = admin::Clusters::default();
    for name in names {
        let c = &snap.clusters[name];
        let added_via_api = snap
            .resources
            .clusters
            .get(name)
            .is_some_and(|v| v.version.is_some());
        let l = c.config.limits;
        let th = |p: i32, max_c, max_p, max_r, max_rt| {
            xds::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds {
                priority: p,
                max_connections: Some(xds::pb::google::protobuf::UInt32Value { value: max_c }),
                max_pending_requests: Some(xds::pb::google::protobuf::UInt32Value { value: max_p }),
                max_requests: Some(xds::pb::google::protobuf::UInt32Value { value: max_r }),
                max_retries: Some(xds::pb::google::protobuf::UInt32Value { value: max_rt }),
                ..Default::default()
            }
        };
        let mut status = admin::ClusterStatus {
            name: name.clone(),
            observability_name: name.clone(),
            added_via_api,
            circuit_breakers: Some(xds::pb::envoy::config::cluster::v3::CircuitBreakers {
                thresholds: vec![
                    th(
                        0,
                        l.max_connections,
                        l.max_pending_requests,
                        l.max_requests,
                        l.max_retries,
                    ),
                    th(1, 1024, 1024, 1024, 3),
                ],
                ..Default::default()
            }),
            eds_service_name: match &c.config.discovery {
                crate::model::Discovery::Eds(s) => s.clone(),
                _ => String::new(),
            },
            ..Default::default()
        };
        // Interval ticks due now (unejections) before reporting health.
        c.tick();
        for h in c.all_hosts() {
            let s = &h.stats;
            let counter = |n: &str, v: u64| admin::SimpleMetric {
                r#type: 0,
                value: v,
                name: n.into(),
            };
            let gauge = |n: &str, v: u64| admin::SimpleMetric {
                r#type: 1,
                value: v,
                name: n.into(),
            };
            status.host_statuses.push(admin::HostStatus {
                address: Some(host_address(h.address)),
                stats: vec![
                    counter("cx_connect_fail", s.cx_connect_fail.load(Relaxed)),
                    counter("cx_total", s.cx_total.load(Relaxed)),
                    counter("rq_error", s.rq_error.load(Relaxed)),
                    counter("rq_success", s.rq_success.load(Relaxed)),
                    counter("rq_timeout", s.rq_timeout.load(Relaxed)),
                    counter("rq_total", s.rq_total.load(Relaxed)),
                    gauge("cx_active", s.cx_active.load(Relaxed)),
                    gauge("rq_active", s.rq_active.load(Relaxed)),
                ],
                health_status: Some(admin::HostHealthStatus {
                    eds_health_status: if h.healthy { 1 } else { 2 },
                    failed_outlier_check: h.outlier.is_ejected(),
                    ..Default::default()
                }),
                success_rate: c
                    .has_outlier_detection()
                    .then(|| xds::pb::envoy::r#type::v3::Percent {
                        value: h.outlier.success_rate(),
                    }),
                weight: h.weight,
                hostname: h.hostname.clone().unwrap_or_default(),
                locality: Some(core::Locality::default()),
                ..Default::default()
            });
        }
        out.cluster_statuses.push(status);
    }
    out
}

/// `/clusters` text, Envoy's `cluster::key::value` lines.
pub fn clusters_text(snap: &Snapshot) -> String {
    let mut out = String::new();
    for c in clusters_proto(snap).cluster_statuses {
        let n = &c.name;
        let _ = writeln!(out, "{n}::observability_name::{}", c.observability_name);
        if let Some(cb) = &c.circuit_breakers {
            for t in &cb.thresholds {
                let p = if t.priority == 0 {
                    "default_priority"
                } else {
                    "high_priority"
                };
                let v = |x: &Option<xds::pb::google::protobuf::UInt32Value>| {
                    x.as_ref().map(|v| v.value).unwrap_or(0)
                };
                let _ = writeln!(out, "{n}::{p}::max_connections::{}", v(&t.max_connections));
                let _ = writeln!(
                    out,
                    "{n}::{p}::max_pending_requests::{}",
                    v(&t.max_pending_requests)
                );
                let _ = writeln!(out, "{n}::{p}::max_requests::{}", v(&t.max_requests));
                let _ = writeln!(out, "{n}::{p}::max_retries::{}", v(&t.max_retries));
            }
        }
        let _ = writeln!(out, "{n}::added_via_api::{}", c.added_via_api);
        if !c.eds_service_name.is_empty() {
            let _ = writeln!(out, "{n}::eds_service_name::{}", c.eds_service_name);
        }
        for h in &c.host_statuses {
            let addr = match h.address.as_ref().and_then(|a| a.address.as_ref()) {
                Some(core::address::Address::SocketAddress(sa)) => match &sa.port_specifier {
                    Some(core::socket_address::PortSpecifier::PortValue(p)) => {
                        if sa.address.contains(':') {
                            format!("[{}]:{p}", sa.address)
                        } else {
                            format!("{}:{p}", sa.address)
                        }
                    }
                    _ => sa.address.clone(),
                },
                _ => continue,
            };
            let mut stats: Vec<(&str, u64)> = h.stats.iter().map(|m| (m.name.as_str(), m.value)).collect();
            stats.sort();
            for (k, v) in stats {
                let _ = writeln!(out, "{n}::{addr}::{k}::{v}");
            }
            let _ = writeln!(out, "{n}::{addr}::hostname::{}", h.hostname);
            // Envoy's flag order: active HC, outlier check, EDS health.
            let mut flags = String::new();
            if h.health_status.as_ref().is_some_and(|s| s.failed_outlier_check) {
                flags.push_str("/failed_outlier_check");
            }
            if h.health_status.as_ref().is_some_and(|s| s.eds_health_status == 2) {
                flags.push_str("/failed_eds_health");
            }
            if flags.is_empty() {
                flags.push_str("healthy");
            }
            let _ = writeln!(out, "{n}::{addr}::health_flags::{flags}");
            let _ = writeln!(out, "{n}::{addr}::weight::{}", h.weight);
            for k in ["region", "zone", "sub_zone"] {
                let _ = writeln!(out, "{n}::{addr}::{k}::");
            }
            let _ = writeln!(out, "{n}::{addr}::canary::false");
            let _ = writeln!(out, "{n}::{addr}::priority::0");
            let sr = h.success_rate.as_ref().map_or(-1.0, |p| p.value);
            let _ = writeln!(out, "{n}::{addr}::success_rate::{sr}");
            let _ = writeln!(out, "{n}::{addr}::local_origin_success_rate::-1");
        }
    }
    out
}

fn server_state(phase: Phase, configured: bool) -> (i32, &'static str) {
    match phase {
        Phase::Running if configured => (0, "LIVE"),
        Phase::Running => (2, "PRE_INITIALIZING"),
        _ => (1, "DRAINING"),
    }
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (
                k.to_owned(),
                v.replace("%5E", "^")
                    .replace("%24", "$")
                    .replace("%7C", "|")
                    .replace('+', " "),
            )
        })
        .collect()
}

fn text(status: StatusCode, body: impl Into<Bytes>, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache, max-age=0"),
    );
    r.headers_mut().insert(
        "x-content-type-options",
        http::HeaderValue::from_static("nosniff"),
    );
    r.headers_mut()
        .insert(http::header::SERVER, http::HeaderValue::from_static("envoy"));
    r
}

fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    text(StatusCode::OK, body, "application/json")
}

/// Which part of the admin API a listener exposes. Only 15000 (on loopback) gets everything;
/// the pod-facing ports answer what Istio's do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// 127.0.0.1:15000: the whole admin API.
    Full,
    /// 15021: `/healthz/ready`, what the kubelet's readiness probe asks.
    Health,
    /// 15090: `/stats/prometheus`, what Prometheus scrapes.
    Metrics,
    /// 15020, pilot-agent's status port: health, metrics, rewritten app probes, quit.
    Agent,
}

impl Scope {
    fn allows(self, method: &Method, path: &str) -> bool {
        match self {
            Scope::Full => true,
            Scope::Health => path == "/healthz/ready",
            Scope::Metrics => path == "/stats/prometheus",
            Scope::Agent => {
                matches!(path, "/healthz/ready" | "/stats/prometheus")
                    || path.starts_with("/app-health/")
                    || (method == Method::POST && path == "/quitquitquit")
            }
        }
    }
}

/// Handles one admin request on a listener of the given scope.
pub async fn handle_scoped(
    state: Arc<AdminState>,
    req: Request<Incoming>,
    scope: Scope,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !scope.allows(req.method(), path) {
        return text(StatusCode::NOT_FOUND, "not found\n", "text/plain");
    }
    if let Some(probe) = path
        .starts_with("/app-health/")
        .then(|| crate::app_probe::from_env().get(path))
    {
        return match probe {
            Some(p) => {
                let (code, body) = crate::app_probe::run(p).await;
                text(code, body, "text/plain; charset=UTF-8")
            }
            None => text(
                StatusCode::NOT_FOUND,
                format!("no app probe registered for {path}\n"),
                "text/plain",
            ),
        };
    }
    handle(state, req).await
}

/// Handles one admin request.
pub async fn handle(state: Arc<AdminState>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let snap = state.store.current();
    let q = query(&req);
    let phase = *state.phase.borrow();
    let configured = state.configured.load(Relaxed);
    let (state_code, state_name) = server_state(phase, configured);
    match (req.method(), req.uri().path()) {
        (_, "/ready") => {
            let code = if state_code == 0 { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            text(code, format!("{state_name}\n"), "text/plain; charset=UTF-8")
        }
        (_, "/healthz/ready") => {
            if state_code == 0 {
                text(StatusCode::OK, "", "text/plain; charset=UTF-8")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, format!("proxy is not ready: {state_name}\n"), "text/plain; charset=UTF-8")
            }
        }
        (_, "/server_info") => {
            let info = admin::ServerInfo {
                version: VERSION.into(),
                state: state_code,
                uptime_current_epoch: Some(PbDuration { seconds: state.started.elapsed().as_secs() as i64, nanos: 0 }),
                uptime_all_epochs: Some(PbDuration { seconds: state.started.elapsed().as_secs() as i64, nanos: 0 }),
                command_line_options: Some(admin::CommandLineOptions {
                    concurrency: state.concurrency,
                    config_path: state.config_path.clone(),
                    ..Default::default()
                }),
                node: state.bootstrap.node.clone(),
                ..Default::default()
            };
            match xds::json::descriptor_pool().and_then(|p| xds::json::to_json(&p, &info)) {
                Ok(v) => json(&v),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), "text/plain"),
            }
        }
        (_, "/config_dump") => {
            let dump = config_dump(&state, &snap, q.contains_key("include_eds"));
            let result = xds::json::descriptor_pool().and_then(|pool| {
                let mut v = xds::json::to_json(&pool, &dump)?;
                if let Some(resource) = q.get("resource") {
                    // `?resource=dynamic_active_clusters` returns just those entries.
                    let mut picked = Vec::new();
                    for c in v["configs"].as_array().into_iter().flatten() {
                        if let Some(items) = c.get(resource.as_str()).and_then(|x| x.as_array()) {
                            picked.extend(items.iter().cloned());
                        }
                    }
                    v = serde_json::json!({ "configs": picked });
                }
                // Fully drop the schema and give its memory back before answering.
                drop(pool);
                Ok(v)
            });
            trim_heap();
            match result {
                Ok(v) => json(&v),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), "text/plain"),
            }
        }
        (_, "/clusters") => {
            if q.get("format").map(String::as_str) == Some("json") {
                let r = xds::json::descriptor_pool().and_then(|p| xds::json::to_json(&p, &clusters_proto(&snap)));
                trim_heap();
                match r {
                    Ok(v) => json(&v),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), "text/plain"),
                }
            } else {
                text(StatusCode::OK, clusters_text(&snap), "text/plain; charset=UTF-8")
            }
        }
        (_, "/stats/prometheus") => text(StatusCode::OK, crate::stats::prometheus_text(&snap), "text/plain; version=0.0.4; charset=utf-8"),
        (_, "/stats") => {
            if q.get("format").map(String::as_str) == Some("prometheus") {
                return text(StatusCode::OK, crate::stats::prometheus_text(&snap), "text/plain; version=0.0.4; charset=utf-8");
            }
            let filter = match q.get("filter").map(|f| regex::Regex::new(f)) {
                Some(Ok(r)) => Some(r),
                Some(Err(e)) => return text(StatusCode::BAD_REQUEST, format!("Invalid re2 regex: {e}\n"), "text/plain"),
                None => None,
            };
            text(StatusCode::OK, crate::stats::envoy_stats_text(&snap, filter.as_ref()), "text/plain; charset=UTF-8")
        }
        (_, "/listeners") => {
            let mut out = String::new();
            for l in &snap.listeners {
                let _ = writeln!(out, "{}::{}", l.name, l.address);
            }
            text(StatusCode::OK, out, "text/plain; charset=UTF-8")
        }
        (&Method::POST, "/logging") | (&Method::GET, "/logging") => {
            if let Some(level) = q.get("level") {
                if let Err(e) = telemetry::set_levels(level) {
                    return text(StatusCode::BAD_REQUEST, format!("{e}\nusage: /logging?level=<trace|debug|info|warn|error|off>\n"), "text/plain");
                }
                info!(level = %level, "log level changed");
            }
            text(StatusCode::OK, format!("active loggers:\n  default: {}\n", telemetry::current_levels()), "text/plain; charset=UTF-8")
        }
        (&Method::POST, "/quitquitquit") => {
            info!("shutting down (admin /quitquitquit)");
            let _ = state.phase.send(Phase::Stopped);
            text(StatusCode::OK, "OK\n", "text/plain")
        }
        (&Method::POST, "/drain_listeners") => {
            info!("draining listeners (admin /drain_listeners)");
            let _ = state.phase.send(Phase::Draining);
            text(StatusCode::OK, "OK\n", "text/plain")
        }
        (_, "/help") | (_, "/") => text(
            StatusCode::OK,
            "admin commands are:\n  /clusters\n  /config_dump\n  /drain_listeners\n  /help\n  /listeners\n  /logging\n  /quitquitquit\n  /ready\n  /server_info\n  /stats\n  /stats/prometheus\n",
            "text/plain",
        ),
        (_, "/quitquitquit") | (_, "/drain_listeners") => text(StatusCode::METHOD_NOT_ALLOWED, "This endpoint requires POST\n", "text/plain"),
        _ => text(StatusCode::NOT_FOUND, "invalid path. admin commands are listed at /help\n", "text/plain"),
    }
}

/// Returns freed heap to the OS after the large, short-lived schema objects of a dump.
fn trim_heap() {
    // SAFETY: malloc_trim only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Serves the admin API on `listener` until the process exits.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, scope: Scope) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle_scoped(state, req, scope).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
