//! Real Envoy as the sidecar (`--proxy envoy`), bootstrapped against `skiffd` the way
//! pilot-agent bootstraps it: Istio's node id and metadata, ADS over gRPC to the control plane,
//! the Prometheus listener on 15090 and the readiness listener on 15021. With no pilot-agent
//! beside it, 15021 asks Envoy's own `/ready` (200 once the first xDS configuration is in).

use std::path::Path;

use anyhow::Result;
use serde_json::{json, Value};

/// What the bootstrap needs to know about the pod.
pub struct Identity<'a> {
    pub pod: &'a str,
    pub namespace: &'a str,
    pub ip: std::net::Ipv4Addr,
    pub labels: &'a serde_json::Map<String, Value>,
    pub workload: &'a str,
    /// `host:port` of skiffd's plaintext xDS.
    pub discovery: (&'a str, u16),
    /// A gateway (Istio's `router` node type) rather than a sidecar.
    pub router: bool,
}

fn static_listener(name: &str, port: u16, path: &str, rewrite: &str) -> Value {
    json!({
        "name": name,
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "route_config": {"virtual_hosts": [{"name": "backend", "domains": ["*"], "routes": [
                    {"match": {"prefix": path}, "route": {"cluster": "prometheus_stats", "prefix_rewrite": rewrite}}]}]},
                "http_filters": [{"name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
            }}]}]
    })
}

/// The bootstrap, as JSON.
pub fn bootstrap(id: &Identity<'_>) -> Value {
    let (host, port) = id.discovery;
    json!({
        "node": {
            "id": format!("{}~{}~{}.{}~{}.svc.cluster.local",
                if id.router { "router" } else { "sidecar" }, id.ip, id.pod, id.namespace, id.namespace),
            "cluster": format!("{}.{}", id.labels.get("app").and_then(Value::as_str).unwrap_or(id.workload), id.namespace),
            "metadata": {
                "CLUSTER_ID": "Kubernetes",
                "ISTIO_VERSION": "1.19.3",
                "NAMESPACE": id.namespace,
                "NAME": id.pod,
                "INSTANCE_IPS": id.ip.to_string(),
                "INTERCEPTION_MODE": "REDIRECT",
                "WORKLOAD_NAME": id.workload,
                "LABELS": id.labels,
            }
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 15000}}},
        "dynamic_resources": {
            "lds_config": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
            "ads_config": {"api_type": "GRPC", "set_node_on_first_message_only": true, "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]}
        },
        "static_resources": {
            "listeners": [
                static_listener("prometheus_listener_15090", 15090, "/stats/prometheus", "/stats/prometheus"),
                static_listener("health_listener_15021", 15021, "/healthz/ready", "/ready"),
            ],
            "clusters": [
                {"name": "prometheus_stats", "type": "STATIC", "connect_timeout": "0.250s",
                 "load_assignment": {"cluster_name": "prometheus_stats", "endpoints": [{"lb_endpoints": [{"endpoint": {"address":
                    {"socket_address": {"address": "127.0.0.1", "port_value": 15000}}}}]}]}},
                {"name": "xds-grpc", "type": "STRICT_DNS", "connect_timeout": "1s", "dns_lookup_family": "V4_ONLY",
                 "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [{"lb_endpoints": [{"endpoint": {"address":
                    {"socket_address": {"address": host, "port_value": port}}}}]}]},
                 "circuit_breakers": {"thresholds": [
                    {"priority": "DEFAULT", "max_connections": 100000, "max_pending_requests": 100000, "max_requests": 100000},
                    {"priority": "HIGH", "max_connections": 100000, "max_pending_requests": 100000, "max_requests": 100000}]},
                 "upstream_connection_options": {"tcp_keepalive": {"keepalive_time": 300}},
                 "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}}}}
            ]
        }
    })
}

/// Writes the bootstrap and returns Envoy's command line (run with gid 1337 so the capture
/// rules let its traffic out).
pub fn command(envoy: &Path, id: &Identity<'_>, dir: &Path) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("envoy-rev.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&bootstrap(id))?)?;
    Ok(vec![
        envoy.display().to_string(),
        "-c".into(),
        path.display().to_string(),
        "--drain-time-s".into(),
        "5".into(),
        "--concurrency".into(),
        "2".into(),
        "--disable-hot-restart".into(),
        "-l".into(),
        "warning".into(),
        "--file-flush-interval-msec".into(),
        "1000".into(),
        "--base-id".into(),
        "0".into(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_is_istios() {
        let labels = serde_json::Map::from_iter([("app".to_owned(), json!("nginx"))]);
        let b = bootstrap(&Identity {
            pod: "nginx-1",
            namespace: "sidecar",
            ip: "198.18.0.12".parse().unwrap(),
            labels: &labels,
            workload: "nginx-deployment",
            discovery: ("istiod.istio-system.svc", 15010),
            router: false,
        });
        assert_eq!(
            b["node"]["id"],
            "sidecar~198.18.0.12~nginx-1.sidecar~sidecar.svc.cluster.local"
        );
        assert_eq!(b["node"]["cluster"], "nginx.sidecar");
        // Envoy's own schema accepts it (unknown fields would be rejected here as by Envoy).
        let pool = xds::json::descriptor_pool().unwrap();
        let parsed: xds::pb::envoy::config::bootstrap::v3::Bootstrap =
            xds::json::from_json(&pool, b).unwrap();
        assert_eq!(parsed.static_resources.unwrap().listeners.len(), 2);
    }
}
