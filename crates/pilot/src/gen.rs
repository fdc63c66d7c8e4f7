//! Translation: registry snapshot + proxy identity → Envoy v3 resources, with Istio 1.19+'s names
//! and shapes (`../shared/reference/istio-sidecar-xds-and-istioctl.md` §1–4). Pure functions.
//!
//! What Skiff leaves out on purpose, because real Envoy (which must accept every resource) does
//! not have Istio's own extensions and Skiff has no CA yet: `istio.stats`,
//! `istio.metadata_exchange`, `istio.alpn`, the mTLS filter chains and transport sockets.

pub mod cluster;
pub mod endpoint;
pub mod gateway;
pub mod listener;
pub mod route;
pub mod secret;
pub mod vs;

use std::sync::Arc;

use xds::pb::envoy::config::core::v3 as core;
use xds::pb::google::protobuf::{
    value::Kind, Any, BoolValue, Duration, ListValue, Struct, UInt32Value, Value,
};

use api::networking::OutboundMode;

use crate::istio::{self, Resource};
use crate::proxy::{NodeType, Proxy};
use crate::snapshot::{ServiceInfo, Snapshot};

/// The mesh-wide settings generation reads (Istio's MeshConfig subset; `skiffd --mesh-config`
/// reads them from Istio's MeshConfig YAML, see [`crate::mesh`]).
#[derive(Debug, Clone, PartialEq)]
pub struct MeshConfig {
    /// `accessLogFile`: empty = no access log (Istio's default; the demo profile sets /dev/stdout).
    pub access_log_file: Option<String>,
    /// `connectTimeout` (10s).
    pub connect_timeout: std::time::Duration,
    /// `outboundTrafficPolicy.mode`: ALLOW_ANY (unknown destinations go to `PassthroughCluster`)
    /// or REGISTRY_ONLY (`BlackHoleCluster`, HTTP 502).
    pub outbound_traffic_policy: OutboundMode,
    /// `dnsRefreshRate` of `STRICT_DNS` clusters (60s).
    pub dns_refresh_rate: std::time::Duration,
    /// `defaultHttpRetryPolicy`: the retries of routes that set none (Istio's default when unset:
    /// 2 attempts on connect-failure, refused-stream, unavailable, cancelled, 503).
    pub default_http_retry_policy: Option<api::networking::HttpRetry>,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            access_log_file: None,
            connect_timeout: std::time::Duration::from_secs(10),
            outbound_traffic_policy: OutboundMode::AllowAny,
            dns_refresh_rate: std::time::Duration::from_secs(60),
            default_http_retry_policy: None,
        }
    }
}

/// Istio's default text access-log format (`EnvoyTextLogFormat`, 1.19–1.24).
pub const ISTIO_ACCESS_LOG_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// Everything one proxy's generation reads.
pub struct Context<'a> {
    pub snap: &'a Snapshot,
    pub proxy: &'a Proxy,
    pub mesh: &'a MeshConfig,
    scope: std::cell::OnceCell<Scope>,
}

/// What a proxy sees of the mesh (Istio's `SidecarScope`): the Services and mesh
/// VirtualServices its Sidecar resource's `egress.hosts` import (everything exported to its
/// namespace when no Sidecar applies), and its outbound traffic policy.
#[derive(Debug, Default)]
pub struct Scope {
    pub sidecar: Option<Arc<Resource<api::networking::Sidecar>>>,
    /// Visible Services, sorted by hostname.
    pub services: Vec<Arc<ServiceInfo>>,
    /// VirtualServices bound to the mesh (`gateways` empty or naming `mesh`) that apply here.
    pub virtual_services: Vec<Arc<Resource<api::networking::VirtualService>>>,
    pub outbound: OutboundMode,
}

impl<'a> Context<'a> {
    pub fn new(snap: &'a Snapshot, proxy: &'a Proxy, mesh: &'a MeshConfig) -> Context<'a> {
        Context {
            snap,
            proxy,
            mesh,
            scope: std::cell::OnceCell::new(),
        }
    }

    /// The proxy's scope, computed on first use.
    pub fn scope(&self) -> &Scope {
        self.scope.get_or_init(|| self.build_scope())
    }

    fn build_scope(&self) -> Scope {
        let snap = self.snap;
        let ns = self.proxy.namespace.as_str();
        // Sidecar resources configure sidecars; gateways see everything exported to them.
        let sidecar = match self.proxy.node_type {
            NodeType::Sidecar => snap.config.sidecar_for(ns, &self.labels()).cloned(),
            NodeType::Router => None,
        };
        let egress = sidecar.as_deref().map(istio::egress_hosts).unwrap_or_default();
        let imports = |res_ns: &str, hostname: &str| {
            egress.is_empty() || istio::egress_imports(&egress, res_ns, hostname)
        };
        let services = snap
            .services
            .iter()
            .filter(|s| {
                let exported = match &s.service_entry {
                    Some(key) => snap
                        .config
                        .service_entries
                        .iter()
                        .find(|se| &se.key() == key)
                        .is_none_or(|se| istio::exported_to(&se.spec.export_to, &se.namespace, ns)),
                    None => true,
                };
                exported && imports(&s.namespace, &s.hostname)
            })
            .cloned()
            .collect();
        let virtual_services = snap
            .config
            .virtual_services
            .iter()
            .filter(|vs| istio::exported_to(&vs.spec.export_to, &vs.namespace, ns))
            .filter(|vs| {
                vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == api::MESH_GATEWAY)
            })
            .filter(|vs| egress.is_empty() || vs.spec.hosts.iter().any(|h| imports(&vs.namespace, h)))
            .cloned()
            .collect();
        Scope {
            outbound: istio::outbound_mode(sidecar.as_deref(), self.mesh.outbound_traffic_policy),
            sidecar,
            services,
            virtual_services,
        }
    }

    /// The Services this proxy sees (its Sidecar scope), sorted by hostname.
    pub fn services(&self) -> impl Iterator<Item = &Arc<ServiceInfo>> + '_ {
        self.scope().services.iter()
    }

    /// A visible Service by hostname.
    pub fn service(&self, hostname: &str) -> Option<&Arc<ServiceInfo>> {
        self.scope().services.iter().find(|s| s.hostname == hostname)
    }

    /// The DestinationRule for a host as this proxy sees it.
    pub fn destination_rule(
        &self,
        hostname: &str,
    ) -> Option<&Arc<Resource<api::networking::DestinationRule>>> {
        let svc_ns = self
            .snap
            .services
            .iter()
            .find(|s| s.hostname == hostname)
            .map(|s| s.namespace.as_str())
            .unwrap_or("");
        self.snap
            .config
            .destination_rule(&self.proxy.namespace, svc_ns, hostname)
    }

    /// Whether unknown destinations are let out (ALLOW_ANY) or refused (REGISTRY_ONLY).
    pub fn allow_any(&self) -> bool {
        self.scope().outbound == OutboundMode::AllowAny
    }

    /// The proxy's labels: from node metadata, else from its pod in the registry.
    pub fn labels(&self) -> std::collections::BTreeMap<String, String> {
        if !self.proxy.labels.is_empty() {
            return self.proxy.labels.clone();
        }
        self.snap
            .pod(&self.proxy.namespace, &self.proxy.pod)
            .map(|p| p.metadata.labels.clone())
            .unwrap_or_default()
    }
}

/// The Kubernetes cluster of every endpoint (`istio.workload` metadata; one cluster for now).
pub const CLUSTER_ID: &str = "Kubernetes";

pub const PASSTHROUGH: &str = "PassthroughCluster";
pub const BLACKHOLE: &str = "BlackHoleCluster";
pub const INBOUND_PASSTHROUGH: &str = "InboundPassthroughClusterIpv4";

/// `outbound|80||nginx.sidecar.svc.cluster.local` (Istio's `BuildSubsetKey`).
pub fn outbound_cluster_name(port: u16, host: &str) -> String {
    format!("outbound|{port}||{host}")
}

/// `inbound|80||`.
pub fn inbound_cluster_name(port: u16) -> String {
    format!("inbound|{port}||")
}

pub fn any<M: prost::Message + prost::Name>(m: &M) -> Any {
    Any {
        type_url: format!("type.googleapis.com/{}", M::full_name()),
        value: m.encode_to_vec(),
    }
}

/// A digest of a message that does not depend on the order protobuf maps happen to encode in:
/// the message with its metadata maps emptied, plus those maps hashed in key order.
pub fn digest<M: prost::Message + Clone>(m: &M, strip: impl FnOnce(&mut M) -> Vec<core::Metadata>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut m = m.clone();
    let metadata = strip(&mut m);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    m.encode_to_vec().hash(&mut h);
    for md in &metadata {
        let mut keys: Vec<&String> = md.filter_metadata.keys().collect();
        keys.sort();
        for k in keys {
            k.hash(&mut h);
            hash_struct(&md.filter_metadata[k], &mut h);
        }
    }
    h.finish()
}

fn hash_struct(s: &Struct, h: &mut impl std::hash::Hasher) {
    use std::hash::Hash;
    let mut keys: Vec<&String> = s.fields.keys().collect();
    keys.sort();
    for k in keys {
        k.hash(h);
        hash_value(&s.fields[k], h);
    }
}

fn hash_value(v: &Value, h: &mut impl std::hash::Hasher) {
    use std::hash::Hash;
    match &v.kind {
        Some(Kind::StructValue(s)) => {
            1u8.hash(h);
            hash_struct(s, h);
        }
        Some(Kind::ListValue(l)) => {
            2u8.hash(h);
            for v in &l.values {
                hash_value(v, h);
            }
        }
        other => {
            3u8.hash(h);
            prost::Message::encode_to_vec(&Value { kind: other.clone() }).hash(h);
        }
    }
}

pub(crate) fn secs(s: u64) -> Duration {
    Duration {
        seconds: s as i64,
        nanos: 0,
    }
}

pub(crate) fn duration(d: std::time::Duration) -> Duration {
    Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

pub(crate) fn bool_value(v: bool) -> Option<BoolValue> {
    Some(BoolValue { value: v })
}

pub(crate) fn u32_value(v: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value: v })
}

pub(crate) fn socket_address(ip: &str, port: u16) -> Option<core::Address> {
    Some(core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: ip.to_owned(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    })
}

pub(crate) fn cidr(prefix: &str, len: u32) -> core::CidrRange {
    core::CidrRange {
        address_prefix: prefix.to_owned(),
        prefix_len: u32_value(len),
    }
}

/// ADS as the config source (RDS/EDS), as Istio writes it.
pub(crate) fn ads_source() -> Option<core::ConfigSource> {
    Some(core::ConfigSource {
        initial_fetch_timeout: Some(secs(0)),
        resource_api_version: core::ApiVersion::V3 as i32,
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            core::AggregatedConfigSource {},
        )),
        ..Default::default()
    })
}

pub(crate) fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

pub(crate) fn struct_value(fields: Vec<(&str, Value)>) -> Value {
    Value {
        kind: Some(Kind::StructValue(Struct {
            fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        })),
    }
}

pub(crate) fn list_value(values: Vec<Value>) -> Value {
    Value {
        kind: Some(Kind::ListValue(ListValue { values })),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_follow_istio() {
        assert_eq!(
            super::outbound_cluster_name(80, "nginx.sidecar.svc.cluster.local"),
            "outbound|80||nginx.sidecar.svc.cluster.local"
        );
        assert_eq!(super::inbound_cluster_name(80), "inbound|80||");
    }
}
