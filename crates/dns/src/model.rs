//! What the caller knows about the cluster: the plain data a [`crate::Zone`] is built from.
//!
//! These types mirror the Kubernetes objects the DNS schema is defined over (Service,
//! EndpointSlice, Pod) but keep only what DNS answers depend on, so the local mesh can fill them
//! from manifests and a Kubernetes source could fill them from the API, without this crate
//! depending on either.

use std::net::IpAddr;

/// How the zone answers `a-b-c-d.NS.pod.DOMAIN`, as CoreDNS's `pods` option does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PodRecords {
    /// Answer any well-formed dashed IP in an existing namespace, without checking that a pod has
    /// it (`pods insecure`: what kubeadm's stock Corefile configures, so the default here).
    #[default]
    Insecure,
    /// Answer only IPs of pods the zone knows, in the namespace they live in (`pods verified`).
    Verified,
    /// No pod records (`pods disabled`): those names are NXDOMAIN.
    Disabled,
}

/// How the zone is served: the knobs CoreDNS's `kubernetes` plugin has that matter here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneConfig {
    /// The cluster domain, `cluster.local` unless a cluster was set up otherwise.
    pub domain: String,
    /// TTL of every answer and of negative answers (the SOA minimum). CoreDNS's default is 5 s:
    /// short enough that a changed Service is seen almost at once, long enough to absorb the
    /// search-path storm each lookup makes.
    pub ttl: u32,
    /// Pod A/AAAA record mode.
    pub pods: PodRecords,
    /// Addresses of this server (the kube-dns Service VIP), answered for `ns.dns.DOMAIN`, the
    /// target of the zone's NS record. Empty is fine: nothing in a pod depends on it.
    pub nameservers: Vec<IpAddr>,
}

impl Default for ZoneConfig {
    fn default() -> Self {
        Self {
            domain: "cluster.local".to_owned(),
            ttl: 5,
            pods: PodRecords::default(),
            nameservers: Vec::new(),
        }
    }
}

/// Everything the zone publishes. Build a new one and swap it in whenever manifests change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterData {
    /// Namespaces that exist. Namespaces of the services and pods below exist implicitly; list
    /// empty ones here so their names answer NODATA, not NXDOMAIN, as in a cluster.
    pub namespaces: Vec<String>,
    pub services: Vec<Service>,
    pub pods: Vec<Pod>,
}

/// A Kubernetes Service and its endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub kind: ServiceKind,
    /// `spec.ports`; named ports get `_name._proto` SRV records.
    pub ports: Vec<ServicePort>,
    /// The addresses behind the service (from Endpoints/EndpointSlices). For a ClusterIP
    /// service they only give endpoint names (`HOST.svc.ns.svc.DOMAIN`) and PTRs; for a headless
    /// one they are the service's A/AAAA answer.
    pub endpoints: Vec<Endpoint>,
    /// `spec.publishNotReadyAddresses`: also publish endpoints that are not ready (StatefulSet
    /// peers finding each other before they are ready).
    pub publish_not_ready_addresses: bool,
}

/// What the service name resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceKind {
    /// `spec.clusterIPs` (one per family): the name answers with the VIPs.
    ClusterIp(Vec<IpAddr>),
    /// `clusterIP: None`: the name answers with every published endpoint address.
    Headless,
    /// `type: ExternalName`: the name is a CNAME to this DNS name.
    ExternalName(String),
}

/// Transport protocol of a service port, the `_proto` label of its SRV name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PortProtocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

impl PortProtocol {
    /// The SRV label without the underscore (`tcp`).
    pub fn label(self) -> &'static str {
        match self {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
            PortProtocol::Sctp => "sctp",
        }
    }
}

/// One entry of `spec.ports`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// The port's name; empty for an unnamed port (no `_name._proto` SRV name, as in Kubernetes).
    pub name: String,
    pub protocol: PortProtocol,
    /// The service port: what SRV answers for a ClusterIP service carry.
    pub port: u16,
    /// The numeric target port on the endpoints, which SRV answers for a headless service carry
    /// (endpoints are the targets there). `None` means the same as `port`; a named targetPort
    /// must be resolved by the caller.
    pub target_port: Option<u16>,
}

/// One endpoint address of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    /// `hostname` of the endpoint (a pod with `hostname` + `subdomain` matching a headless
    /// service, e.g. StatefulSet pods). Without it the endpoint is named by its dashed IP.
    pub hostname: Option<String>,
    /// Endpoint condition `ready`; not-ready endpoints are unpublished unless the service says
    /// `publish_not_ready_addresses`.
    pub ready: bool,
}

/// A pod and its addresses (`status.podIPs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub ips: Vec<IpAddr>,
}
