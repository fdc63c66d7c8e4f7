//! Translation: registry snapshot + proxy identity → Envoy v3 resources, with Istio 1.19+'s names
//! and shapes (`../shared/reference/istio-sidecar-xds-and-istioctl.md` §1–4). Pure functions.
//!
//! What Skiff leaves out on purpose, because real Envoy (which must accept every resource) does
//! not have Istio's own extensions and Skiff has no CA yet: `istio.stats`,
//! `istio.metadata_exchange`, `istio.alpn`, the mTLS filter chains and transport sockets.

pub mod cluster;
pub mod endpoint;
pub mod listener;
pub mod route;

use std::sync::Arc;

use xds::pb::envoy::config::core::v3 as core;
use xds::pb::google::protobuf::{
    value::Kind, Any, BoolValue, Duration, ListValue, Struct, UInt32Value, Value,
};

use crate::proxy::Proxy;
use crate::snapshot::{ServiceInfo, Snapshot};

/// The mesh-wide settings generation reads (Istio's MeshConfig subset).
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// `accessLogFile`: empty = no access log (Istio's default; the demo profile sets /dev/stdout).
    pub access_log_file: Option<String>,
    /// `connectTimeout` (10s).
    pub connect_timeout: std::time::Duration,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            access_log_file: None,
            connect_timeout: std::time::Duration::from_secs(10),
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
}

impl<'a> Context<'a> {
    /// The Services this proxy sees (all of them: no Sidecar scoping yet), sorted by hostname.
    pub fn services(&self) -> impl Iterator<Item = &'a Arc<ServiceInfo>> + 'a {
        self.snap.services.iter()
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
