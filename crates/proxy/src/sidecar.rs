//! `skiff-agent proxy sidecar|router`: the proxy programmed over xDS, as Istio's pilot-agent +
//! Envoy pair is. Identity comes from the pod (`POD_NAME`, `POD_NAMESPACE`, `INSTANCE_IP`,
//! `ISTIO_META_*`, the downward-API labels file), the node id has Istio's form
//! (`sidecar~IP~POD.NS~NS.svc.cluster.local`), and readiness on 15021 waits for the first
//! complete configuration.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use prost::Message;
use tracing::{error, info, warn};

use xds::client::{ConfigSink, CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};
use xds::pb::envoy::config::core::v3::Node;
use xds::pb::google::protobuf::{value::Kind, Any, Struct, Value};

use crate::admin::Scope;
use crate::model::{Discovery, NetworkFilter, RouteSource};
use crate::snapshot::{Store, Update};

/// Flags of `pilot-agent proxy sidecar` that Skiff honours, plus Skiff's own.
#[derive(Args, Debug, Clone)]
pub struct SidecarArgs {
    /// xDS server, `host:port` (plaintext ADS). Also read from `$PROXY_CONFIG`'s
    /// `discoveryAddress` and `$DISCOVERY_ADDRESS`.
    #[arg(
        long = "discovery-address",
        visible_alias = "discoveryAddress",
        env = "DISCOVERY_ADDRESS"
    )]
    pub discovery_address: Option<String>,
    /// DNS domain of the pod (`$(POD_NAMESPACE).svc.cluster.local`).
    #[arg(long)]
    pub domain: Option<String>,
    #[arg(long = "pod-name", env = "POD_NAME")]
    pub pod_name: Option<String>,
    #[arg(long = "pod-namespace", env = "POD_NAMESPACE")]
    pub pod_namespace: Option<String>,
    #[arg(long = "ip", env = "INSTANCE_IP")]
    pub ip: Option<IpAddr>,
    /// Istio's proxy log level (`warning`); maps onto Skiff's levels.
    #[arg(long = "proxyLogLevel")]
    pub proxy_log_level: Option<String>,
    /// Accepted for compatibility (`misc:error`).
    #[arg(long = "proxyComponentLogLevel")]
    pub proxy_component_log_level: Option<String>,
    #[arg(long)]
    pub concurrency: Option<usize>,
    #[arg(long = "drain-time-s", default_value_t = 5)]
    pub drain_time_s: u64,
    #[arg(long = "admin-port", default_value_t = 15000)]
    pub admin_port: u16,
    #[arg(long = "status-port", default_value_t = 15020)]
    pub status_port: u16,
    #[arg(long = "health-port", default_value_t = 15021)]
    pub health_port: u16,
    #[arg(long = "metrics-port", default_value_t = 15090)]
    pub metrics_port: u16,
    #[arg(long = "file-flush-interval-msec", default_value_t = 1000)]
    pub file_flush_interval_msec: u64,
    /// Run as this uid/gid after binding (the sidecar runs as 1337).
    #[arg(long)]
    pub uid: Option<u32>,
    #[arg(long)]
    pub gid: Option<u32>,
}

/// Which Istio proxy type: sidecar or gateway (`router`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeType {
    Sidecar,
    Router,
}

impl NodeType {
    fn as_str(self) -> &'static str {
        match self {
            NodeType::Sidecar => "sidecar",
            NodeType::Router => "router",
        }
    }
}

fn string(v: impl Into<String>) -> Value {
    Value {
        kind: Some(Kind::StringValue(v.into())),
    }
}

fn json_to_value(v: &serde_json::Value) -> Value {
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(xds::pb::google::protobuf::ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), json_to_value(v))).collect(),
        }),
    };
    Value { kind: Some(kind) }
}

/// Reads Kubernetes' downward-API labels file (`key="value"` per line).
fn read_labels(path: &str) -> BTreeMap<String, String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return BTreeMap::new();
    };
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            Some((k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        })
        .collect()
}

/// The identity the proxy announces: Istio's node id and metadata.
pub fn node(
    kind: NodeType,
    args: &SidecarArgs,
    env: &BTreeMap<String, String>,
) -> (Node, crate::stats::Identity) {
    let ns = args.pod_namespace.clone().unwrap_or_else(|| "default".into());
    let pod = args.pod_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .to_owned()
    });
    let ip = args
        .ip
        .or_else(|| capture::flags::local_addresses().first().copied())
        .map(|i| i.to_string())
        .unwrap_or_else(|| "127.0.0.1".into());
    let domain = args
        .domain
        .clone()
        .unwrap_or_else(|| format!("{ns}.svc.cluster.local"));
    let id = format!("{}~{ip}~{pod}.{ns}~{domain}", kind.as_str());
    let mut labels = read_labels("/etc/istio/pod/labels");
    if let Some(json) = env
        .get("ISTIO_METAJSON_LABELS")
        .and_then(|j| serde_json::from_str::<BTreeMap<String, String>>(j).ok())
    {
        labels.extend(json);
    }
    let mut fields: BTreeMap<String, Value> = BTreeMap::new();
    for (k, v) in env {
        if let Some(key) = k.strip_prefix("ISTIO_METAJSON_") {
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(v) {
                fields.insert(key.to_owned(), json_to_value(&json));
            }
        } else if let Some(key) = k.strip_prefix("ISTIO_META_") {
            fields.insert(key.to_owned(), string(v.clone()));
        }
    }
    fields.insert("NAMESPACE".into(), string(&ns));
    fields.insert("NAME".into(), string(&pod));
    fields.insert("INSTANCE_IPS".into(), string(&ip));
    fields
        .entry("ISTIO_VERSION".into())
        .or_insert_with(|| string(concat!("skiff-", env!("CARGO_PKG_VERSION"))));
    fields
        .entry("INTERCEPTION_MODE".into())
        .or_insert_with(|| string("REDIRECT"));
    fields
        .entry("CLUSTER_ID".into())
        .or_insert_with(|| string("Kubernetes"));
    if let Some(sa) = env.get("SERVICE_ACCOUNT") {
        fields
            .entry("SERVICE_ACCOUNT".into())
            .or_insert_with(|| string(sa));
    }
    fields.insert(
        "LABELS".into(),
        Value {
            kind: Some(Kind::StructValue(Struct {
                fields: labels.iter().map(|(k, v)| (k.clone(), string(v))).collect(),
            })),
        },
    );
    let meta_str = |k: &str| match fields.get(k).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(s)) => Some(s.clone()),
        _ => None,
    };
    let workload = meta_str("WORKLOAD_NAME").unwrap_or_else(|| pod.clone());
    let app = labels.get("app").cloned();
    let version = labels.get("version").cloned();
    let identity = crate::stats::Identity {
        workload: workload.clone(),
        namespace: ns.clone(),
        app: app.clone().unwrap_or_else(|| "unknown".into()),
        version: version.clone().unwrap_or_else(|| "unknown".into()),
        canonical_service: labels
            .get("service.istio.io/canonical-name")
            .cloned()
            .or(app)
            .unwrap_or(workload),
        canonical_revision: labels
            .get("service.istio.io/canonical-revision")
            .cloned()
            .or(version)
            .unwrap_or_else(|| "latest".into()),
        cluster: meta_str("CLUSTER_ID").unwrap_or_else(|| "Kubernetes".into()),
        principal: "unknown".into(),
    };
    let node = Node {
        id,
        cluster: format!("{}.{ns}", identity.canonical_service),
        metadata: Some(Struct {
            fields: fields.into_iter().collect(),
        }),
        user_agent_name: "skiff".into(),
        ..Default::default()
    };
    (node, identity)
}

/// Applies xDS responses to the store; tracks when the first full configuration is in.
pub struct StoreSink {
    pub store: Arc<Store>,
    pub configured: Arc<AtomicBool>,
    seen: std::collections::HashSet<&'static str>,
    warned: std::collections::HashSet<String>,
}

impl StoreSink {
    pub fn new(store: Arc<Store>, configured: Arc<AtomicBool>) -> Self {
        StoreSink {
            store,
            configured,
            seen: Default::default(),
            warned: Default::default(),
        }
    }

    /// Logs each kind of warning once, naming the resources it applies to: Istio repeats the
    /// same unsupported field in every listener, and every push carries it again.
    fn warn_grouped(&mut self, warnings: &[String]) {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        if self.warned.len() > 10_000 {
            // Resource names churn; keep the memory bounded and accept an occasional repeat.
            self.warned.clear();
        }
        for w in warnings {
            if !self.warned.insert(w.clone()) {
                continue;
            }
            // `listener "0.0.0.0_80": filter_chains[0]...: what` → (`listener`, `0.0.0.0_80`).
            let (resource, rest) = match w.split_once("\": ") {
                Some((head, rest)) => (head.replace('"', ""), rest.to_owned()),
                None => (String::new(), w.clone()),
            };
            let (kind, name) = resource
                .split_once(' ')
                .map_or(("", resource.as_str()), |(k, n)| (k, n));
            let (field, what) = rest
                .rsplit_once(": ")
                .map_or((String::new(), rest.clone()), |(f, m)| {
                    (f.to_owned(), m.to_owned())
                });
            groups
                .entry(format!("{kind}\u{0}{field}\u{0}{what}"))
                .or_default()
                .push(name.to_owned());
        }
        for (key, names) in groups {
            let mut parts = key.split('\u{0}');
            let (kind, field, what) = (
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
            );
            let shown: Vec<&str> = names.iter().take(3).map(String::as_str).collect();
            let more = if names.len() > 3 {
                format!(" and {} more", names.len() - 3)
            } else {
                String::new()
            };
            if kind.is_empty() {
                warn!("{what}");
            } else {
                warn!("{kind} {}{more}: {field}: {what}", shown.join(", "));
            }
        }
    }

    fn check_ready(&self) {
        if self.configured.load(Relaxed) || !self.seen.contains(CLUSTER) || !self.seen.contains(LISTENER) {
            return;
        }
        let needs = |t: &'static str| !self.wanted(t).is_empty() && !self.seen.contains(t);
        if !needs(ENDPOINT) && !needs(ROUTE) {
            info!("first complete configuration applied: ready");
            self.configured.store(true, Relaxed);
            crate::stats::server().state.store(0, Relaxed);
        }
    }
}

fn decode_all<M: Message + Default + prost::Name>(resources: &[Any], errors: &mut Vec<String>) -> Vec<M> {
    let want = M::type_url();
    resources
        .iter()
        .filter_map(|any| {
            if any.type_url != want {
                errors.push(format!("resource of type {} in a {want} response", any.type_url));
                return None;
            }
            M::decode(any.value.as_slice())
                .map_err(|e| errors.push(format!("undecodable {want}: {e}")))
                .ok()
        })
        .collect()
}

impl ConfigSink for StoreSink {
    fn apply(&mut self, type_url: &str, version: &str, resources: &[Any]) -> Result<(), String> {
        let mut errors = Vec::new();
        let mut update = Update {
            version: Some(version.to_owned()),
            replace: true,
            ..Default::default()
        };
        let t: &'static str = match type_url {
            CLUSTER => {
                update.clusters = Some(decode_all(resources, &mut errors));
                CLUSTER
            }
            LISTENER => {
                update.listeners = Some(decode_all(resources, &mut errors));
                LISTENER
            }
            ROUTE => {
                update.routes = Some(decode_all(resources, &mut errors));
                ROUTE
            }
            ENDPOINT => {
                update.endpoints = Some(decode_all(resources, &mut errors));
                ENDPOINT
            }
            SECRET => {
                update.secrets = Some(decode_all(resources, &mut errors));
                SECRET
            }
            _ => return Err(format!("unsupported type {type_url}")),
        };
        let report = self.store.apply(update);
        self.warn_grouped(&report.warnings);
        errors.extend(report.rejected.iter().map(|e| e.to_string()));
        if errors.is_empty() {
            // The dump's version is the last one accepted whole, as Envoy reports it.
            self.store.set_version(type_url, version);
        }
        let s = crate::stats::server();
        let counter = match (t, errors.is_empty()) {
            (CLUSTER, true) => Some(&s.cds_updates),
            (CLUSTER, false) => Some(&s.cds_rejected),
            (LISTENER, true) => Some(&s.lds_updates),
            (LISTENER, false) => Some(&s.lds_rejected),
            _ => None,
        };
        if let Some(c) = counter {
            c.fetch_add(1, Relaxed);
        }
        if matches!(t, CLUSTER | LISTENER) {
            // A full CDS/LDS push is decoded into temporaries the size of the config; give them back.
            crate::server::trim_heap();
        }
        self.seen.insert(t);
        self.check_ready();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    fn wanted(&self, type_url: &str) -> Vec<String> {
        let snap = self.store.current();
        match type_url {
            ENDPOINT => snap
                .clusters
                .values()
                .filter_map(|c| match &c.config.discovery {
                    Discovery::Eds(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            // Warming listeners need their routes too (Envoy warms on RDS and SDS alike).
            ROUTE => snap
                .listeners
                .iter()
                .chain(snap.resources.warming.values().map(|w| &w.listener.model))
                .flat_map(|l| l.filter_chains.iter().chain(l.default_filter_chain.iter()))
                .filter_map(|c| match &c.filter {
                    NetworkFilter::Http(h) => match &h.routes {
                        RouteSource::Rds(n) => Some(n.clone()),
                        RouteSource::Inline(_) => None,
                    },
                    NetworkFilter::Tcp(_) => None,
                })
                .collect(),
            // Active and warming listeners alike: a warming one waits for exactly these.
            SECRET => snap.resources.secret_names(),
            _ => Vec::new(),
        }
    }
}

/// `discoveryAddress` from Istio's `PROXY_CONFIG` (JSON) if set.
fn proxy_config_address(env: &BTreeMap<String, String>) -> Option<String> {
    let cfg: serde_json::Value = serde_json::from_str(env.get("PROXY_CONFIG")?).ok()?;
    cfg.get("discoveryAddress")?.as_str().map(str::to_owned)
}

/// Runs the sidecar (or gateway); returns the exit code.
pub fn run(kind: NodeType, args: &SidecarArgs) -> u8 {
    if let Some(level) = &args.proxy_log_level {
        let level = match level.as_str() {
            "warning" => "warn",
            "critical" => "error",
            l => l,
        };
        let _ = telemetry::set_levels(level);
    }
    crate::access_log::set_flush_interval(Duration::from_millis(args.file_flush_interval_msec));
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let address = args
        .discovery_address
        .clone()
        .or_else(|| proxy_config_address(&env))
        .unwrap_or_else(|| "istiod.istio-system.svc:15010".into());
    let (node, identity) = node(kind, args, &env);
    info!(node = %node.id, discovery = %address, "starting {}", kind.as_str());
    crate::stats::set_identity(identity);
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error!("runtime: {e}");
            return 1;
        }
    };
    let result: Result<(), String> = rt.block_on(async {
        let store = Arc::new(Store::new());
        let loaded = crate::bootstrap::Loaded {
            proto: xds::pb::envoy::config::bootstrap::v3::Bootstrap {
                node: Some(node.clone()),
                ..Default::default()
            },
            admin: None,
            warnings: vec![],
        };
        let opts = crate::server::Options {
            concurrency: args
                .concurrency
                .unwrap_or_else(|| crate::server::Options::default().concurrency),
            drain_time: Duration::from_secs(args.drain_time_s),
            admin: Some(SocketAddr::from(([127, 0, 0, 1], args.admin_port))),
            extra_admin: vec![
                (SocketAddr::from(([0, 0, 0, 0], args.health_port)), Scope::Health),
                (
                    SocketAddr::from(([0, 0, 0, 0], args.metrics_port)),
                    Scope::Metrics,
                ),
                (SocketAddr::from(([0, 0, 0, 0], args.status_port)), Scope::Agent),
            ],
            config_path: None,
            ready_now: false,
        };
        let handle = crate::server::start(store.clone(), &loaded, &opts).await?;
        crate::cli::drop_privileges(args.uid, args.gid)?;
        let sink = StoreSink::new(store, handle.configured.clone());
        let client = xds::client::Client {
            address,
            node,
            max_backoff: Duration::from_secs(15),
        };
        tokio::spawn(client.run(sink));
        crate::server::wait_for_stop(&handle, opts.drain_time).await;
        Ok(())
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            error!("{e}");
            1
        }
    }
}

/// `skiff-agent wait`: polls the readiness URL until it answers 200 or time runs out; returns
/// the exit code (0 ready, 1 not ready in time).
pub fn wait(url: &str, timeout: Duration, period: Duration, request_timeout: Duration) -> u8 {
    let Some(rest) = url.strip_prefix("http://") else {
        error!("--url {url:?}: only http:// URLs are supported");
        return 2;
    };
    let (addr, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if addr.contains(':') {
        addr.to_owned()
    } else {
        format!("{addr}:80")
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error!("runtime: {e}");
            return 1;
        }
    };
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::from("no answer yet");
        info!(
            "waiting for the proxy to be ready ({url}, up to {}s)",
            timeout.as_secs()
        );
        while tokio::time::Instant::now() < deadline {
            match tokio::time::timeout(
                request_timeout,
                crate::app_probe::http_get(&addr, path, None, &[]),
            )
            .await
            {
                Ok(Ok(200)) => {
                    info!("proxy is ready");
                    return 0;
                }
                Ok(Ok(code)) => last = format!("status {code}"),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "request timed out".into(),
            }
            tokio::time::sleep(period).await;
        }
        error!("proxy not ready after {}s: {last}", timeout.as_secs());
        1
    })
}
