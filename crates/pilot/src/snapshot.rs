//! The mesh as the translation sees it: Services with their hostnames, VIPs, ports (with Istio's
//! protocol) and endpoints, pods and namespaces. Built from the registry's objects in one pure
//! step, immutable afterwards, shared by every proxy's generation.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use crate::istio::IstioIndex;
use crate::model::{
    ClusterIp, EndpointSlice, Endpoints, IntOrString, IstioConfig, Key, Object, Pod, Secret, Service,
    SERVICE_NAME_LABEL,
};

/// The cluster's DNS suffix (Istio's default trust domain and DNS domain).
pub const DOMAIN_SUFFIX: &str = "cluster.local";

/// Istio's port protocols (`pkg/config/protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    GrpcWeb,
    HttpProxy,
    Tcp,
    Https,
    Tls,
    Mongo,
    Redis,
    Mysql,
    Udp,
    /// Unknown: the proxy sniffs it.
    Unsupported,
}

/// How the outbound side builds a listener for a port (`pilot/pkg/networking/networking.go`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerProtocol {
    Http,
    Tcp,
    /// Sniffed: HTTP if the first bytes are HTTP, TCP otherwise.
    Auto,
    /// Not proxied (UDP).
    Skip,
}

impl Protocol {
    /// Istio's `protocol.Parse`: a protocol name, case-insensitive; unknown (and empty) is
    /// `Unsupported` (sniffed). ServiceEntry ports and Gateway servers name theirs this way.
    pub fn parse(s: &str) -> Protocol {
        match s.to_ascii_lowercase().as_str() {
            "http" => Protocol::Http,
            "http2" => Protocol::Http2,
            "grpc" => Protocol::Grpc,
            "grpc-web" => Protocol::GrpcWeb,
            "http_proxy" => Protocol::HttpProxy,
            "tcp" => Protocol::Tcp,
            "https" => Protocol::Https,
            "tls" => Protocol::Tls,
            "mongo" => Protocol::Mongo,
            "redis" => Protocol::Redis,
            "mysql" => Protocol::Mysql,
            "udp" => Protocol::Udp,
            _ => Protocol::Unsupported,
        }
    }

    /// Istio's `ConvertProtocol`: UDP wins, then `appProtocol`, then the port name's prefix before
    /// the first `-`; unknown on a well-known TCP port (25, 53, 3306, 27017) is TCP.
    pub fn from_port(port: u16, name: &str, k8s_protocol: &str, app_protocol: Option<&str>) -> Protocol {
        if k8s_protocol.eq_ignore_ascii_case("UDP") {
            return Protocol::Udp;
        }
        let name = match app_protocol {
            Some("kubernetes.io/h2c") => return Protocol::Http2,
            Some(a) if !a.is_empty() => a,
            _ => name,
        };
        let lower = name.to_ascii_lowercase();
        let p = if lower.starts_with("grpc-web") {
            Protocol::GrpcWeb
        } else {
            Protocol::parse(lower.split('-').next().unwrap_or_default())
        };
        if p == Protocol::Unsupported && matches!(port, 25 | 53 | 3306 | 27017) {
            return Protocol::Tcp;
        }
        p
    }

    pub fn listener(self) -> ListenerProtocol {
        match self {
            Protocol::Http | Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb | Protocol::HttpProxy => {
                ListenerProtocol::Http
            }
            Protocol::Tcp
            | Protocol::Https
            | Protocol::Tls
            | Protocol::Mongo
            | Protocol::Redis
            | Protocol::Mysql => ListenerProtocol::Tcp,
            Protocol::Udp => ListenerProtocol::Skip,
            Protocol::Unsupported => ListenerProtocol::Auto,
        }
    }

    /// HTTP/2 upstreams (explicit `http2_protocol_options` on the cluster).
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb)
    }

    /// HTTP family (`IsHTTP`).
    pub fn is_http(self) -> bool {
        self.listener() == ListenerProtocol::Http
    }

    /// TLS-carrying protocols (`IsTLS`): HTTPS and TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::Tls)
    }
}

/// How a Service's endpoints are found (Istio's `model.Resolution`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resolution {
    /// The proxy balances over endpoints it gets by EDS (ClusterIP Services, STATIC entries).
    #[default]
    ClientSideLb,
    /// Envoy resolves the endpoints' names (`STRICT_DNS`).
    Dns,
    /// Envoy resolves one name and connects to one address (`LOGICAL_DNS`).
    DnsRoundRobin,
    /// The client picked the address (headless Services, `resolution: NONE`): `ORIGINAL_DST`.
    Passthrough,
}

/// An endpoint given by name (a DNS ServiceEntry's `endpoints[].address` or its host).
#[derive(Debug, Clone, PartialEq)]
pub struct HostEndpoint {
    pub address: String,
    pub port: u16,
    pub port_name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    pub target_port: Option<IntOrString>,
    pub protocol: Protocol,
}

/// Resolving a Service's `targetPort` (number, container port name, or unset = the port).
pub trait IntOrStringExt {
    fn resolve(&self, port: u16, pod: Option<&Pod>) -> Option<u16>;
}

impl IntOrStringExt for Option<IntOrString> {
    fn resolve(&self, port: u16, pod: Option<&Pod>) -> Option<u16> {
        match self {
            None => Some(port),
            Some(IntOrString::Int(t)) => u16::try_from(*t).ok(),
            Some(IntOrString::Str(name)) => pod?.named_port(name).or_else(|| name.parse().ok()),
        }
    }
}

/// One endpoint of one Service port.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub ip: IpAddr,
    /// The port traffic goes to (the target port).
    pub port: u16,
    /// The Service port name this endpoint serves (EDS matches by name, as Istio does).
    pub port_name: String,
    pub ready: bool,
    pub pod: Option<Arc<Pod>>,
    /// The workload's labels (the pod's, or a ServiceEntry endpoint's): subsets select on them.
    pub labels: BTreeMap<String, String>,
}

/// A Service as the mesh sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceInfo {
    pub name: String,
    pub namespace: String,
    /// `name.namespace.svc.cluster.local`.
    pub hostname: String,
    /// The VIP; `None` for headless Services.
    pub vip: Option<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub selector: Option<BTreeMap<String, String>>,
    pub endpoints: Vec<Endpoint>,
    pub creation: Option<String>,
    pub resolution: Resolution,
    /// Outside the mesh (a `MESH_EXTERNAL` ServiceEntry): no mTLS, `istio.external` metadata.
    pub mesh_external: bool,
    /// Endpoints by name, for [`Resolution::Dns`] / [`Resolution::DnsRoundRobin`].
    pub dns_endpoints: Vec<HostEndpoint>,
    /// `namespace/name` of the ServiceEntry this came from (None for Kubernetes Services).
    pub service_entry: Option<String>,
}

impl ServiceInfo {
    pub fn endpoints_for<'a>(&'a self, port: &'a ServicePort) -> impl Iterator<Item = &'a Endpoint> + 'a {
        self.endpoints.iter().filter(move |e| e.port_name == port.name)
    }

    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        match &self.selector {
            Some(sel) if !sel.is_empty() => sel.iter().all(|(k, v)| labels.get(k) == Some(v)),
            _ => false,
        }
    }
}

/// The registry's state at one moment.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Services sorted by hostname.
    pub services: Vec<Arc<ServiceInfo>>,
    pub pods: BTreeMap<(String, String), Arc<Pod>>,
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pub istio: Vec<Arc<IstioConfig>>,
    /// The applied Istio resources, resolved (VirtualServices, DestinationRules, Gateways…).
    pub config: IstioIndex,
    /// Certificate Secrets by (namespace, name), for gateways' `credentialName`.
    pub secrets: BTreeMap<(String, String), Arc<Secret>>,
    /// Things that are wrong across objects (an Endpoints without its Service…), one line each.
    pub problems: Vec<String>,
}

/// FNV-1a, for a VIP that stays the same for the same Service across restarts.
fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Where Services without a `clusterIP` get one (DESIGN: Service VIPs come from 198.19.0.0/16).
const VIP_BASE: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 0);

fn allocate_vip(ns: &str, name: &str, used: &mut HashSet<IpAddr>) -> IpAddr {
    let base = u32::from(VIP_BASE);
    let mut slot = fnv(&format!("{ns}/{name}")) % 65_534 + 1;
    for _ in 0..65_534 {
        let ip = IpAddr::V4(Ipv4Addr::from(base + slot));
        if used.insert(ip) {
            return ip;
        }
        slot = slot % 65_534 + 1;
    }
    IpAddr::V4(Ipv4Addr::from(base + 65_535))
}

fn service_ports(s: &Service) -> Vec<ServicePort> {
    s.spec
        .ports
        .iter()
        .filter_map(|p| {
            let port = u16::try_from(p.port).ok()?;
            let name = p.name.clone().unwrap_or_default();
            Some(ServicePort {
                protocol: Protocol::from_port(
                    port,
                    &name,
                    p.protocol.as_deref().unwrap_or("TCP"),
                    p.app_protocol.as_deref(),
                ),
                name,
                port,
                target_port: p.target_port.clone(),
            })
        })
        .collect()
}

fn pod_of(
    pods: &BTreeMap<(String, String), Arc<Pod>>,
    ns: &str,
    target: Option<&crate::model::ObjectReference>,
) -> Option<Arc<Pod>> {
    let t = target?;
    if t.kind.as_deref().is_some_and(|k| k != "Pod") {
        return None;
    }
    let ns = t.namespace.clone().unwrap_or_else(|| ns.to_owned());
    pods.get(&(ns, t.name.clone())).cloned()
}

fn from_slices(
    slices: &[&EndpointSlice],
    ns: &str,
    pods: &BTreeMap<(String, String), Arc<Pod>>,
) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for s in slices {
        if s.address_type.as_deref() == Some("FQDN") {
            continue;
        }
        for ep in &s.endpoints {
            let pod = pod_of(pods, ns, ep.target_ref.as_ref());
            for addr in &ep.addresses {
                let Ok(ip) = addr.parse() else { continue };
                for p in &s.ports {
                    let Some(port) = p.port.and_then(|p| u16::try_from(p).ok()) else {
                        continue;
                    };
                    if p.protocol
                        .as_deref()
                        .is_some_and(|p| p.eq_ignore_ascii_case("UDP"))
                    {
                        continue;
                    }
                    out.push(Endpoint {
                        ip,
                        port,
                        port_name: p.name.clone().unwrap_or_default(),
                        ready: ep.conditions.ready != Some(false),
                        labels: pod
                            .as_ref()
                            .map(|p| p.metadata.labels.clone())
                            .unwrap_or_default(),
                        pod: pod.clone(),
                    });
                }
            }
        }
    }
    out
}

fn from_endpoints(e: &Endpoints, ns: &str, pods: &BTreeMap<(String, String), Arc<Pod>>) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for subset in &e.subsets {
        for (list, ready) in [(&subset.addresses, true), (&subset.not_ready_addresses, false)] {
            for a in list {
                let Ok(ip) = a.ip.parse() else { continue };
                let pod = pod_of(pods, ns, a.target_ref.as_ref());
                for p in &subset.ports {
                    let Ok(port) = u16::try_from(p.port) else { continue };
                    if p.protocol
                        .as_deref()
                        .is_some_and(|p| p.eq_ignore_ascii_case("UDP"))
                    {
                        continue;
                    }
                    out.push(Endpoint {
                        ip,
                        port,
                        port_name: p.name.clone().unwrap_or_default(),
                        ready,
                        labels: pod
                            .as_ref()
                            .map(|p| p.metadata.labels.clone())
                            .unwrap_or_default(),
                        pod: pod.clone(),
                    });
                }
            }
        }
    }
    out
}

/// Pods by namespace and one label pair, so a Service's selector is matched against the pods
/// carrying its first label only (a full scan per Service is quadratic: 1,000 Services × 3,000
/// pods of one namespace took ~0.3 s of CPU per registry change).
/// label value → the pods carrying it, for one namespace and label key.
type ByValue<'a> = HashMap<&'a str, Vec<&'a Arc<Pod>>>;

struct PodIndex<'a> {
    /// namespace → label key → label value → pods.
    by_label: HashMap<&'a str, HashMap<&'a str, ByValue<'a>>>,
}

impl<'a> PodIndex<'a> {
    fn new(pods: &'a BTreeMap<(String, String), Arc<Pod>>) -> PodIndex<'a> {
        let mut by_label: HashMap<&str, HashMap<&str, ByValue<'a>>> = HashMap::new();
        // BTreeMap order: each list stays sorted by pod name, as the scan was.
        for ((ns, _), pod) in pods {
            let labels = by_label.entry(ns.as_str()).or_default();
            for (k, v) in &pod.metadata.labels {
                labels
                    .entry(k.as_str())
                    .or_default()
                    .entry(v.as_str())
                    .or_default()
                    .push(pod);
            }
        }
        PodIndex { by_label }
    }

    /// Pods of `namespace` that may match `selector` (all of them carry its first pair).
    fn candidates(&self, namespace: &str, selector: &BTreeMap<String, String>) -> &[&'a Arc<Pod>] {
        selector
            .iter()
            .next()
            .and_then(|(k, v)| self.by_label.get(namespace)?.get(k.as_str())?.get(v.as_str()))
            .map_or(&[], Vec::as_slice)
    }
}

/// Endpoints from the ready pods a Service selects (what the endpoints controller would write).
fn from_pods(svc: &ServiceInfo, pods: &PodIndex<'_>) -> Vec<Endpoint> {
    let mut out = Vec::new();
    let Some(selector) = svc.selector.as_ref() else {
        return out;
    };
    for pod in pods.candidates(&svc.namespace, selector) {
        if !svc.selects(&pod.metadata.labels) || !pod.is_ready() {
            continue;
        }
        let Some(ip) = pod.ip() else { continue };
        for p in &svc.ports {
            if p.protocol == Protocol::Udp {
                continue;
            }
            if let Some(port) = p.target_port.resolve(p.port, Some(pod)) {
                out.push(Endpoint {
                    ip,
                    port,
                    port_name: p.name.clone(),
                    ready: true,
                    labels: pod.metadata.labels.clone(),
                    pod: Some((*pod).clone()),
                });
            }
        }
    }
    out
}

impl Snapshot {
    /// Builds the mesh view from the registry's objects.
    pub fn build<'a>(objects: impl IntoIterator<Item = &'a Object>) -> Snapshot {
        let mut services_raw: Vec<&Service> = Vec::new();
        let mut endpoints: HashMap<(String, String), &Endpoints> = HashMap::new();
        let mut slices: HashMap<(String, String), Vec<&EndpointSlice>> = HashMap::new();
        let mut snap = Snapshot::default();
        for o in objects {
            let ns = o.metadata().namespace.clone().unwrap_or_default();
            match o {
                Object::Namespace(n) => {
                    snap.namespaces
                        .insert(n.metadata.name.clone(), n.metadata.labels.clone());
                }
                Object::Service(s) => services_raw.push(s),
                Object::Endpoints(e) => {
                    endpoints.insert((ns, e.metadata.name.clone()), e);
                }
                Object::EndpointSlice(s) => {
                    let svc = s
                        .metadata
                        .labels
                        .get(SERVICE_NAME_LABEL)
                        .cloned()
                        .unwrap_or_default();
                    slices.entry((ns, svc)).or_default().push(s);
                }
                Object::Pod(p) => {
                    snap.pods.insert((ns, p.metadata.name.clone()), p.clone());
                }
                Object::Deployment(_) => {}
                Object::Istio(c) => snap.istio.push(c.clone()),
                Object::Secret(sec) => {
                    snap.secrets.insert((ns, sec.metadata.name.clone()), sec.clone());
                }
            }
        }
        // Explicit VIPs first, so allocated ones never collide with them.
        let mut used: HashSet<IpAddr> = services_raw
            .iter()
            .filter_map(|s| match s.cluster_ip() {
                ClusterIp::Ip(ip) => Some(ip),
                _ => None,
            })
            .collect();
        services_raw.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        let mut known: BTreeSet<(String, String)> = BTreeSet::new();
        let pod_index = PodIndex::new(&snap.pods);
        for s in services_raw {
            let ns = s.metadata.namespace.clone().unwrap_or_default();
            let name = s.metadata.name.clone();
            known.insert((ns.clone(), name.clone()));
            if s.is_external_name() {
                // Istio 1.21+ treats ExternalName as an alias: no cluster or listener of its own.
                continue;
            }
            let vip = match s.cluster_ip() {
                ClusterIp::Ip(ip) => Some(ip),
                ClusterIp::Headless => None,
                ClusterIp::Unset => Some(allocate_vip(&ns, &name, &mut used)),
            };
            let mut info = ServiceInfo {
                hostname: format!("{name}.{ns}.svc.{DOMAIN_SUFFIX}"),
                name: name.clone(),
                namespace: ns.clone(),
                vip,
                ports: service_ports(s),
                selector: s.spec.selector.clone(),
                endpoints: Vec::new(),
                creation: s.metadata.creation_timestamp.clone(),
                resolution: if vip.is_some() {
                    Resolution::ClientSideLb
                } else {
                    Resolution::Passthrough
                },
                mesh_external: false,
                dns_endpoints: Vec::new(),
                service_entry: None,
            };
            let key = (ns.clone(), name.clone());
            info.endpoints = if let Some(sl) = slices.get(&key) {
                from_slices(sl, &ns, &snap.pods)
            } else if let Some(e) = endpoints.get(&key) {
                from_endpoints(e, &ns, &snap.pods)
            } else {
                from_pods(&info, &pod_index)
            };
            snap.services.push(Arc::new(info));
        }
        snap.config = IstioIndex::build(snap.istio.iter().map(|c| &**c));
        let known_hosts: HashSet<String> = snap.services.iter().map(|s| s.hostname.clone()).collect();
        for se in &snap.config.service_entries {
            for info in crate::service_entry::services(se, &snap.pods) {
                // A host a Kubernetes Service already has keeps the Service (first registry wins).
                if !known_hosts.contains(&info.hostname) {
                    snap.services.push(Arc::new(info));
                }
            }
        }
        snap.services.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        snap.services.dedup_by(|a, b| a.hostname == b.hostname);
        let mut orphans: Vec<String> = endpoints
            .keys()
            .filter(|k| !known.contains(*k))
            .map(|(ns, n)| format!("Endpoints {ns}/{n}: no Service {ns}/{n}; its addresses are not used"))
            .chain(slices.keys().filter(|k| !known.contains(*k)).map(|(ns, n)| {
                format!("EndpointSlice for {ns}/{n}: no Service {ns}/{n}; its addresses are not used")
            }))
            .collect();
        orphans.sort();
        snap.problems = orphans;
        snap
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Arc<ServiceInfo>> {
        self.services
            .iter()
            .find(|s| s.namespace == namespace && s.name == name)
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Arc<Pod>> {
        self.pods.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// The Services whose endpoints include or select objects behind `key` (for EDS-only pushes).
    pub fn services_touched_by(
        &self,
        key: &Key,
        old: Option<&Object>,
        new: Option<&Object>,
    ) -> Vec<Arc<ServiceInfo>> {
        let mut out = Vec::new();
        for s in &self.services {
            if s.namespace != key.namespace {
                continue;
            }
            let hit = match key.kind.as_str() {
                "Endpoints" => s.name == key.name,
                "EndpointSlice" => [old, new]
                    .iter()
                    .flatten()
                    .any(|o| o.metadata().labels.get(SERVICE_NAME_LABEL) == Some(&s.name)),
                "Pod" => [old, new]
                    .iter()
                    .flatten()
                    .any(|o| s.selects(&o.metadata().labels)),
                _ => false,
            };
            if hit {
                out.push(s.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_follows_istio_conversion() {
        let p =
            |port, name: &str, proto: &str, app: Option<&str>| Protocol::from_port(port, name, proto, app);
        assert_eq!(p(80, "http", "TCP", None), Protocol::Http);
        assert_eq!(p(80, "http-web", "TCP", None), Protocol::Http);
        assert_eq!(p(53, "dns-tcp", "TCP", None), Protocol::Tcp);
        assert_eq!(p(53, "dns", "UDP", None), Protocol::Udp);
        assert_eq!(p(9153, "metrics", "TCP", None), Protocol::Unsupported);
        assert_eq!(p(443, "https", "TCP", None), Protocol::Https);
        assert_eq!(p(15010, "grpc-xds", "TCP", None), Protocol::Grpc);
        assert_eq!(p(8080, "web", "TCP", Some("http")), Protocol::Http);
        assert_eq!(p(8080, "web", "TCP", Some("kubernetes.io/h2c")), Protocol::Http2);
        assert_eq!(p(8080, "GRPC-Web-x", "TCP", None), Protocol::GrpcWeb);
        assert_eq!(p(3306, "", "TCP", None), Protocol::Tcp);
    }

    #[test]
    fn vips_are_allocated_stably_and_apart_from_explicit_ones() {
        let mut used = HashSet::new();
        let a = allocate_vip("sidecar", "nginx", &mut used);
        let mut again = HashSet::new();
        assert_eq!(a, allocate_vip("sidecar", "nginx", &mut again));
        let b = allocate_vip("sidecar", "nginx", &mut used);
        assert_ne!(a, b, "a taken address is skipped");
        assert!(matches!(a, IpAddr::V4(v) if v.octets()[..2] == [198, 19]));
    }
}
