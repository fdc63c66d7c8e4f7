//! `cluster-dns`: the local mesh's kube-dns. An authoritative server for the cluster domain
//! (`cluster.local`) and the reverse zones, answering from data the caller gives (Services with
//! their endpoints, Pods) the way CoreDNS's `kubernetes` plugin does, so a pod's
//! `curl nginx`, `curl nginx.sidecar` and `nginx.sidecar.svc.cluster.local` resolve through its
//! resolv.conf search path exactly as in a cluster.
//!
//! - `svc.ns.svc.DOMAIN` A/AAAA: the ClusterIPs; for a headless service, every published
//!   endpoint. `host.svc.ns.svc.DOMAIN`: one endpoint (hostname or dashed IP).
//! - `_port._proto.svc.ns.svc.DOMAIN` SRV (and SRV at the service name for all ports).
//! - `a-b-c-d.ns.pod.DOMAIN` A (`pods insecure` by default, as kubeadm configures CoreDNS).
//! - PTR for ClusterIPs, endpoint and pod addresses.
//! - NXDOMAIN with the SOA for unknown names, NODATA for other types and empty non-terminals,
//!   REFUSED for names outside the zones (there is no upstream: pods cannot reach the host's
//!   network), TTL 5 s, names matched case-insensitively.
//!
//! The caller binds the sockets (inside the DNS pod's network namespace) and calls [`serve`];
//! it keeps a [`ZoneHandle`] to publish a new [`Zone`] whenever manifests change.

mod model;
mod server;
mod zone;

pub use model::{
    ClusterData, Endpoint, Pod, PodRecords, PortProtocol, Service, ServiceKind, ServicePort, ZoneConfig,
};
pub use server::{serve, ServeError, ZoneHandle};
pub use zone::{dashed_ip, Answer, Problem, Zone, ZoneError};

/// The hickory-proto types [`Zone::lookup`] takes and returns, re-exported so callers and tests
/// use the same version.
pub use hickory_server::proto;
