//! CDS: `outbound|PORT||FQDN` clusters for every visible Service port (EDS; `STRICT_DNS`/
//! `LOGICAL_DNS` with inline endpoints for DNS ServiceEntries; `ORIGINAL_DST` for passthrough),
//! with their DestinationRule applied (load balancer, connection pool as circuit breakers and
//! options, outlier detection) and one `outbound|PORT|SUBSET|FQDN` cluster per subset;
//! `BlackHoleCluster`, `PassthroughCluster`, `inbound|PORT||` for the proxy's own ports and
//! `InboundPassthroughClusterIpv4` (reference §3, Istio's `cluster_builder.go` / `cluster.go`).

use std::collections::BTreeSet;

use api::networking::{
    ConnectionPoolSettings, DestinationRule, H2UpgradePolicy, LoadBalancerSettings, OutlierDetection,
    SimpleLb, Subset, TrafficPolicy,
};
use xds::pb::envoy::config::cluster::v3 as cluster;
use xds::pb::envoy::config::core::v3 as core;
use xds::pb::envoy::config::endpoint::v3 as endpoint;
use xds::pb::envoy::extensions::upstreams::http::v3 as upstream_http;
use xds::pb::envoy::r#type::v3::Percent;
use xds::pb::google::protobuf::{value::Kind, Any, UInt64Value, Value};

use super::listener::inbound_ports;
use super::{
    ads_source, any, duration, list_value, outbound_cluster_name, secs, socket_address, string_value,
    struct_value, u32_value, Context, BLACKHOLE, INBOUND_PASSTHROUGH, PASSTHROUGH,
};
use crate::istio::Resource;
use crate::proxy::NodeType;
use crate::snapshot::{ListenerProtocol, Protocol, Resolution, ServiceInfo, ServicePort};

const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Istio's default circuit breakers (`getDefaultCircuitBreakerThresholds`): everything unlimited
/// on the DEFAULT priority.
fn default_thresholds() -> cluster::circuit_breakers::Thresholds {
    cluster::circuit_breakers::Thresholds {
        max_connections: u32_value(u32::MAX),
        max_pending_requests: u32_value(u32::MAX),
        max_requests: u32_value(u32::MAX),
        max_retries: u32_value(u32::MAX),
        track_remaining: true,
        ..Default::default()
    }
}

fn default_circuit_breakers() -> Option<cluster::CircuitBreakers> {
    Some(cluster::CircuitBreakers {
        thresholds: vec![default_thresholds()],
        ..Default::default()
    })
}

fn protocol_options(o: upstream_http::HttpProtocolOptions) -> std::collections::HashMap<String, Any> {
    [(HTTP_PROTOCOL_OPTIONS.to_owned(), any(&o))]
        .into_iter()
        .collect()
}

fn use_downstream() -> Option<upstream_http::http_protocol_options::UpstreamProtocolOptions> {
    Some(
        upstream_http::http_protocol_options::UpstreamProtocolOptions::UseDownstreamProtocolConfig(
            upstream_http::http_protocol_options::UseDownstreamHttpConfig {
                http_protocol_options: Some(core::Http1ProtocolOptions::default()),
                http2_protocol_options: Some(core::Http2ProtocolOptions::default()),
                ..Default::default()
            },
        ),
    )
}

fn explicit_http2() -> Option<upstream_http::http_protocol_options::UpstreamProtocolOptions> {
    Some(
        upstream_http::http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
            upstream_http::http_protocol_options::ExplicitHttpConfig {
                protocol_config: Some(
                    upstream_http::http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                        core::Http2ProtocolOptions::default(),
                    ),
                ),
            },
        ),
    )
}

/// `filter_metadata.istio.services` (what `destination_service` labels and proxy-status read).
fn istio_metadata(services: &[&ServiceInfo]) -> Option<core::Metadata> {
    let list = services
        .iter()
        .map(|s| {
            struct_value(vec![
                ("host", string_value(&s.hostname)),
                ("name", string_value(&s.name)),
                ("namespace", string_value(&s.namespace)),
            ])
        })
        .collect();
    let istio = match struct_value(vec![("services", list_value(list))]).kind {
        Some(Kind::StructValue(s)) => s,
        _ => return None,
    };
    Some(core::Metadata {
        filter_metadata: [("istio".to_owned(), istio)].into_iter().collect(),
        ..Default::default()
    })
}

fn add_istio_field(c: &mut cluster::Cluster, key: &str, value: Value) {
    let md = c.metadata.get_or_insert_with(Default::default);
    md.filter_metadata
        .entry("istio".to_owned())
        .or_default()
        .fields
        .insert(key.to_owned(), value);
}

/// Istio's `MergeTrafficPolicy`: a subset's (or nothing's) policy over `original`, then the
/// port-level settings for `port`, which replace the four parts wholesale (they do not inherit).
pub fn merge_policy(
    original: Option<&TrafficPolicy>,
    subset: Option<&TrafficPolicy>,
    port: u16,
) -> Option<TrafficPolicy> {
    let Some(subset) = subset else {
        return original.cloned();
    };
    let original = match original {
        Some(o) if !o.port_level_settings.is_empty() => merge_policy(None, Some(o), port),
        other => other.cloned(),
    };
    let mut merged = TrafficPolicy::default();
    if let Some(o) = original {
        merged.connection_pool = o.connection_pool;
        merged.load_balancer = o.load_balancer;
        merged.outlier_detection = o.outlier_detection;
        merged.tls = o.tls;
    }
    if subset.connection_pool.is_some() {
        merged.connection_pool = subset.connection_pool.clone();
    }
    if subset.outlier_detection.is_some() {
        merged.outlier_detection = subset.outlier_detection.clone();
    }
    if subset.load_balancer.is_some() {
        merged.load_balancer = subset.load_balancer.clone();
    }
    if subset.tls.is_some() {
        merged.tls = subset.tls.clone();
    }
    if let Some(p) = subset
        .port_level_settings
        .iter()
        .find(|p| p.port.as_ref().map(|p| p.number) == Some(u32::from(port)))
    {
        merged.connection_pool = p.connection_pool.clone();
        merged.outlier_detection = p.outlier_detection.clone();
        merged.load_balancer = p.load_balancer.clone();
        merged.tls = p.tls.clone();
    }
    Some(merged)
}

/// A cluster being built, with the HTTP protocol options kept apart until the end (several
/// policies add to them).
struct Building {
    c: cluster::Cluster,
    http: Option<upstream_http::HttpProtocolOptions>,
}

impl Building {
    fn http(&mut self) -> &mut upstream_http::HttpProtocolOptions {
        self.http.get_or_insert_with(Default::default)
    }

    fn finish(mut self) -> cluster::Cluster {
        if let Some(o) = self.http {
            self.c.typed_extension_protocol_options = protocol_options(o);
        }
        self.c
    }

    fn discovery_type(&self) -> Option<cluster::cluster::DiscoveryType> {
        match self.c.cluster_discovery_type {
            Some(cluster::cluster::ClusterDiscoveryType::Type(t)) => {
                cluster::cluster::DiscoveryType::try_from(t).ok()
            }
            _ => None,
        }
    }
}

fn discovery(t: cluster::cluster::DiscoveryType) -> Option<cluster::cluster::ClusterDiscoveryType> {
    Some(cluster::cluster::ClusterDiscoveryType::Type(t as i32))
}

/// Istio's `convertResolution`.
fn discovery_type_for(ctx: &Context<'_>, svc: &ServiceInfo) -> cluster::cluster::DiscoveryType {
    use cluster::cluster::DiscoveryType as D;
    match svc.resolution {
        Resolution::ClientSideLb => D::Eds,
        Resolution::Dns => D::StrictDns,
        Resolution::DnsRoundRobin => D::LogicalDns,
        // Gateways cannot use passthrough clusters.
        Resolution::Passthrough if ctx.proxy.node_type == NodeType::Router => D::Eds,
        Resolution::Passthrough => D::OriginalDst,
    }
}

/// The inline endpoints of a `STATIC`/`STRICT_DNS`/`LOGICAL_DNS` cluster (subset labels applied).
fn inline_endpoints(
    svc: &ServiceInfo,
    port: &ServicePort,
    labels: Option<&std::collections::BTreeMap<String, String>>,
) -> Vec<endpoint::LocalityLbEndpoints> {
    let selected = |l: &std::collections::BTreeMap<String, String>| {
        labels.is_none_or(|want| want.iter().all(|(k, v)| l.get(k) == Some(v)))
    };
    let lb: Vec<endpoint::LbEndpoint> = svc
        .dns_endpoints
        .iter()
        .filter(|e| e.port_name == port.name && selected(&e.labels))
        .map(|e| endpoint::LbEndpoint {
            host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                endpoint::Endpoint {
                    address: socket_address(&e.address, e.port),
                    ..Default::default()
                },
            )),
            load_balancing_weight: u32_value(1),
            ..Default::default()
        })
        .collect();
    if lb.is_empty() {
        return Vec::new();
    }
    vec![endpoint::LocalityLbEndpoints {
        locality: Some(core::Locality::default()),
        load_balancing_weight: u32_value(lb.len() as u32),
        lb_endpoints: lb,
        ..Default::default()
    }]
}

/// Istio's `buildDefaultCluster`: type, DNS settings, inline endpoints, upstream protocol and
/// service metadata. `None` for a DNS/STATIC cluster without endpoints (Istio drops those).
/// `dns_refresh_rate`/`respect_dns_ttl` are what Istio 1.19 sets (deprecated in newer Envoy API
/// in favour of the DNS cluster extension, still honoured).
#[allow(deprecated)]
fn default_cluster(
    ctx: &Context<'_>,
    name: String,
    t: cluster::cluster::DiscoveryType,
    endpoints: Vec<endpoint::LocalityLbEndpoints>,
    svc: &ServiceInfo,
    port: &ServicePort,
) -> Option<Building> {
    use cluster::cluster::DiscoveryType as D;
    let mut c = cluster::Cluster {
        name: name.clone(),
        cluster_discovery_type: discovery(t),
        common_lb_config: Some(Default::default()),
        metadata: istio_metadata(&[svc]),
        ..Default::default()
    };
    if matches!(t, D::StrictDns | D::LogicalDns) {
        c.dns_lookup_family = if ctx.proxy.ips.iter().all(|ip| ip.is_ipv6()) {
            cluster::cluster::DnsLookupFamily::V6Only
        } else {
            cluster::cluster::DnsLookupFamily::V4Only
        } as i32;
        c.dns_refresh_rate = Some(duration(ctx.mesh.dns_refresh_rate));
        c.respect_dns_ttl = true;
    }
    if matches!(t, D::StrictDns | D::LogicalDns | D::Static) {
        if endpoints.is_empty() {
            return None;
        }
        c.load_assignment = Some(endpoint::ClusterLoadAssignment {
            cluster_name: name,
            endpoints,
            ..Default::default()
        });
    }
    let mut b = Building { c, http: None };
    // Istio's `setUpstreamProtocol`: h2 for HTTP2/gRPC ports; the client's protocol for sniffed
    // ports on sidecars (gateways cannot know what the upstream speaks).
    if port.protocol.is_http2() {
        b.http().upstream_protocol_options = explicit_http2();
    } else if port.protocol.listener() == ListenerProtocol::Auto && ctx.proxy.node_type == NodeType::Sidecar {
        b.http().upstream_protocol_options = use_downstream();
    }
    Some(b)
}

/// Istio's `applyConnectionPool` (always applied: an empty pool gives the defaults).
fn apply_connection_pool(ctx: &Context<'_>, b: &mut Building, pool: Option<&ConnectionPoolSettings>) {
    let empty = ConnectionPoolSettings::default();
    let pool = pool.unwrap_or(&empty);
    let mut t = default_thresholds();
    let mut idle = None;
    let mut per_connection = 0;
    let mut max_duration = None;
    if let Some(h) = &pool.http {
        if h.http2_max_requests > 0 {
            t.max_requests = u32_value(h.http2_max_requests as u32);
        }
        if h.http1_max_pending_requests > 0 {
            t.max_pending_requests = u32_value(h.http1_max_pending_requests as u32);
        }
        if h.max_retries > 0 {
            t.max_retries = u32_value(h.max_retries as u32);
        }
        idle = h.idle_timeout;
        per_connection = h.max_requests_per_connection.max(0) as u32;
    }
    b.c.connect_timeout = Some(duration(ctx.mesh.connect_timeout));
    if let Some(tcp) = &pool.tcp {
        if let Some(ct) = tcp.connect_timeout {
            b.c.connect_timeout = Some(duration(ct.0));
        }
        if tcp.max_connections > 0 {
            t.max_connections = u32_value(tcp.max_connections as u32);
        }
        max_duration = tcp.max_connection_duration;
        if let Some(ka) = &tcp.tcp_keepalive {
            b.c.upstream_connection_options = Some(cluster::UpstreamConnectionOptions {
                tcp_keepalive: Some(core::TcpKeepalive {
                    keepalive_probes: (ka.probes > 0).then(|| u32_value(ka.probes)).flatten(),
                    keepalive_time: ka.time.and_then(|d| u32_value(d.0.as_secs() as u32)),
                    keepalive_interval: ka.interval.and_then(|d| u32_value(d.0.as_secs() as u32)),
                }),
                ..Default::default()
            });
        }
    }
    b.c.circuit_breakers = Some(cluster::CircuitBreakers {
        thresholds: vec![t],
        ..Default::default()
    });
    if idle.is_some() || per_connection > 0 || max_duration.is_some() {
        let common = b
            .http()
            .common_http_protocol_options
            .get_or_insert_with(Default::default);
        if let Some(i) = idle {
            common.idle_timeout = Some(duration(i.0));
        }
        if per_connection > 0 {
            common.max_requests_per_connection = u32_value(per_connection);
        }
        if let Some(d) = max_duration {
            common.max_connection_duration = Some(duration(d.0));
        }
    }
    if pool.http.as_ref().is_some_and(|h| h.use_client_protocol) {
        b.http().upstream_protocol_options = use_downstream();
    }
}

/// Istio's `applyOutlierDetection`.
fn apply_outlier_detection(b: &mut Building, o: Option<&OutlierDetection>) {
    let Some(o) = o else { return };
    let enforcing = |v: u32| u32_value(if v > 0 { 100 } else { 0 });
    let mut out = cluster::OutlierDetection {
        enforcing_success_rate: u32_value(0),
        ..Default::default()
    };
    if let Some(v) = o.consecutive_5xx_errors {
        out.consecutive_5xx = u32_value(v);
        out.enforcing_consecutive_5xx = enforcing(v);
    }
    if let Some(v) = o.consecutive_gateway_errors {
        out.consecutive_gateway_failure = u32_value(v);
        out.enforcing_consecutive_gateway_failure = enforcing(v);
    }
    if let Some(i) = o.interval {
        out.interval = Some(duration(i.0));
    }
    if let Some(t) = o.base_ejection_time {
        out.base_ejection_time = Some(duration(t.0));
    }
    if o.max_ejection_percent > 0 {
        out.max_ejection_percent = u32_value(o.max_ejection_percent as u32);
    }
    if o.split_external_local_origin_errors {
        out.split_external_local_origin_errors = true;
        if let Some(v) = o.consecutive_local_origin_failures.filter(|v| *v > 0) {
            out.consecutive_local_origin_failure = u32_value(v);
            out.enforcing_consecutive_local_origin_failure = u32_value(100);
        }
        out.enforcing_local_origin_success_rate = u32_value(0);
    }
    b.c.outlier_detection = Some(out);
    // The panic threshold is off unless asked for (Envoy's default 50% makes no sense with few pods).
    if o.min_health_percent >= 0 {
        b.c.common_lb_config
            .get_or_insert_with(Default::default)
            .healthy_panic_threshold = Some(Percent {
            value: f64::from(o.min_health_percent),
        });
    }
}

/// Istio's `applyLoadBalancer` (+ `ApplyRingHashLoadBalancer`).
fn apply_load_balancer(b: &mut Building, lb: Option<&LoadBalancerSettings>) {
    use cluster::cluster::{LbConfig, LbPolicy};
    // Mesh locality load balancing is on by default: locality-weighted balancing.
    b.c.common_lb_config
        .get_or_insert_with(Default::default)
        .locality_config_specifier = Some(
        cluster::cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
            cluster::cluster::common_lb_config::LocalityWeightedLbConfig {},
        ),
    );
    if b.discovery_type() == Some(cluster::cluster::DiscoveryType::OriginalDst) {
        b.c.lb_policy = LbPolicy::ClusterProvided as i32;
        return;
    }
    let slow_start = |lb: Option<&LoadBalancerSettings>| {
        lb.and_then(|l| l.warmup_duration_secs)
            .map(|d| cluster::cluster::SlowStartConfig {
                slow_start_window: Some(duration(d.0)),
                ..Default::default()
            })
    };
    match lb.and_then(|l| l.simple) {
        Some(SimpleLb::Random) => b.c.lb_policy = LbPolicy::Random as i32,
        Some(SimpleLb::RoundRobin) => {
            b.c.lb_policy = LbPolicy::RoundRobin as i32;
            if let Some(ss) = slow_start(lb) {
                b.c.lb_config = Some(LbConfig::RoundRobinLbConfig(
                    cluster::cluster::RoundRobinLbConfig {
                        slow_start_config: Some(ss),
                    },
                ));
            }
        }
        Some(SimpleLb::Passthrough) => {
            b.c.lb_policy = LbPolicy::ClusterProvided as i32;
            b.c.cluster_discovery_type = discovery(cluster::cluster::DiscoveryType::OriginalDst);
            b.c.load_assignment = None;
        }
        // LEAST_CONN, LEAST_REQUEST and unset: LEAST_REQUEST (Istio's default since 1.14).
        _ => {
            b.c.lb_policy = LbPolicy::LeastRequest as i32;
            if let Some(ss) = slow_start(lb) {
                b.c.lb_config = Some(LbConfig::LeastRequestLbConfig(
                    cluster::cluster::LeastRequestLbConfig {
                        slow_start_config: Some(ss),
                        ..Default::default()
                    },
                ));
            }
        }
    }
    let Some(ch) = lb.and_then(|l| l.consistent_hash.as_ref()) else {
        return;
    };
    if let Some(m) = &ch.maglev {
        b.c.lb_policy = LbPolicy::Maglev as i32;
        if m.table_size != 0 {
            b.c.lb_config = Some(LbConfig::MaglevLbConfig(cluster::cluster::MaglevLbConfig {
                table_size: Some(UInt64Value { value: m.table_size }),
            }));
        }
    } else if let Some(r) = &ch.ring_hash {
        b.c.lb_policy = LbPolicy::RingHash as i32;
        if r.minimum_ring_size != 0 {
            b.c.lb_config = Some(LbConfig::RingHashLbConfig(cluster::cluster::RingHashLbConfig {
                minimum_ring_size: Some(UInt64Value {
                    value: r.minimum_ring_size,
                }),
                ..Default::default()
            }));
        }
    } else {
        b.c.lb_policy = LbPolicy::RingHash as i32;
        b.c.lb_config = Some(LbConfig::RingHashLbConfig(cluster::cluster::RingHashLbConfig {
            minimum_ring_size: Some(UInt64Value {
                value: ch.minimum_ring_size.filter(|m| *m != 0).unwrap_or(1024),
            }),
            ..Default::default()
        }));
    }
}

/// Istio's `applyTrafficPolicy` for an outbound cluster (TLS origination is not applied: no
/// mTLS in Skiff yet, and `SIMPLE` upstream TLS is left for the egress work).
fn apply_traffic_policy(
    ctx: &Context<'_>,
    b: &mut Building,
    policy: Option<&TrafficPolicy>,
    port: &ServicePort,
) {
    let pool = policy.and_then(|p| p.connection_pool.as_ref());
    apply_connection_pool(ctx, b, pool);
    // Istio's `applyH2Upgrade`: an HTTP/1.1 port upgraded by policy.
    let upgrade = pool
        .and_then(|p| p.http.as_ref())
        .and_then(|h| h.h2_upgrade_policy)
        == Some(H2UpgradePolicy::Upgrade);
    if upgrade && port.protocol == Protocol::Http {
        b.http().upstream_protocol_options = explicit_http2();
    }
    apply_outlier_detection(b, policy.and_then(|p| p.outlier_detection.as_ref()));
    apply_load_balancer(b, policy.and_then(|p| p.load_balancer.as_ref()));
    if b.discovery_type() == Some(cluster::cluster::DiscoveryType::OriginalDst) {
        b.c.lb_policy = cluster::cluster::LbPolicy::ClusterProvided as i32;
    }
}

/// Istio's `maybeApplyEdsConfig`.
fn maybe_eds(b: &mut Building) {
    if b.discovery_type() == Some(cluster::cluster::DiscoveryType::Eds) {
        b.c.eds_cluster_config = Some(cluster::cluster::EdsClusterConfig {
            eds_config: ads_source(),
            service_name: b.c.name.clone(),
        });
    }
}

/// The clusters of one Service port: the default one and, with a DestinationRule, one per subset
/// (Istio's `buildOutboundClusters` + `applyDestinationRule` + `buildSubsetCluster`).
fn outbound(ctx: &Context<'_>, svc: &ServiceInfo, port: &ServicePort) -> Vec<cluster::Cluster> {
    let t = discovery_type_for(ctx, svc);
    let name = outbound_cluster_name(port.port, &svc.hostname);
    let Some(mut b) = default_cluster(ctx, name, t, inline_endpoints(svc, port, None), svc, port) else {
        return Vec::new();
    };
    let dr: Option<&std::sync::Arc<Resource<DestinationRule>>> = ctx.destination_rule(&svc.hostname);
    let policy = merge_policy(None, dr.and_then(|d| d.spec.traffic_policy.as_ref()), port.port);
    apply_traffic_policy(ctx, &mut b, policy.as_ref(), port);
    maybe_eds(&mut b);
    if svc.mesh_external {
        add_istio_field(
            &mut b.c,
            "external",
            Value {
                kind: Some(Kind::BoolValue(true)),
            },
        );
    }
    let mut out = Vec::new();
    if let Some(dr) = dr {
        add_istio_field(
            &mut b.c,
            "config",
            string_value(&dr.config_path("destination-rule")),
        );
    }
    out.push(b.finish());
    let Some(dr) = dr else { return out };
    for subset in &dr.spec.subsets {
        if let Some(c) = subset_cluster(ctx, svc, port, t, dr, subset, policy.as_ref()) {
            out.push(c);
        }
    }
    out
}

fn subset_cluster(
    ctx: &Context<'_>,
    svc: &ServiceInfo,
    port: &ServicePort,
    t: cluster::cluster::DiscoveryType,
    dr: &Resource<DestinationRule>,
    subset: &Subset,
    policy: Option<&TrafficPolicy>,
) -> Option<cluster::Cluster> {
    use cluster::cluster::DiscoveryType as D;
    let name = format!("outbound|{}|{}|{}", port.port, subset.name, svc.hostname);
    let passthrough = subset
        .traffic_policy
        .as_ref()
        .and_then(|p| p.load_balancer.as_ref())
        .and_then(|l| l.simple)
        == Some(SimpleLb::Passthrough);
    let t = if passthrough { D::OriginalDst } else { t };
    let endpoints = if passthrough || t == D::Eds {
        Vec::new()
    } else {
        inline_endpoints(svc, port, Some(&subset.labels))
    };
    let mut b = default_cluster(ctx, name, t, endpoints, svc, port)?;
    let merged = merge_policy(policy, subset.traffic_policy.as_ref(), port.port);
    apply_traffic_policy(ctx, &mut b, merged.as_ref(), port);
    maybe_eds(&mut b);
    add_istio_field(
        &mut b.c,
        "config",
        string_value(&dr.config_path("destination-rule")),
    );
    add_istio_field(&mut b.c, "subset", string_value(&subset.name));
    Some(b.finish())
}

fn original_dst(name: &str, ctx: &Context<'_>) -> cluster::Cluster {
    cluster::Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::OriginalDst as i32,
        )),
        connect_timeout: Some(duration(ctx.mesh.connect_timeout)),
        lb_policy: cluster::cluster::LbPolicy::ClusterProvided as i32,
        circuit_breakers: default_circuit_breakers(),
        ..Default::default()
    }
}

fn passthrough_options() -> std::collections::HashMap<String, Any> {
    protocol_options(upstream_http::HttpProtocolOptions {
        common_http_protocol_options: Some(core::HttpProtocolOptions {
            idle_timeout: Some(secs(300)),
            ..Default::default()
        }),
        upstream_protocol_options: use_downstream(),
        ..Default::default()
    })
}

/// Source address of connections to the local app (the app sees 127.0.0.6, as in the seeds).
fn inbound_bind() -> Option<core::BindConfig> {
    let Some(core::Address {
        address: Some(core::address::Address::SocketAddress(sa)),
    }) = socket_address("127.0.0.6", 0)
    else {
        return None;
    };
    Some(core::BindConfig {
        source_address: Some(sa),
        ..Default::default()
    })
}

/// Every cluster of the proxy, in Istio's order: outbound, BlackHole, Passthrough, inbound,
/// inbound passthrough (a gateway: outbound and BlackHole only).
pub fn clusters(ctx: &Context<'_>) -> Vec<cluster::Cluster> {
    let mut out = shared_clusters(ctx);
    out.extend(inbound_clusters(ctx));
    out
}

/// The clusters every proxy with the same scope gets alike (outbound, BlackHole, Passthrough):
/// computed once per snapshot and scope, and shared.
pub fn shared_clusters(ctx: &Context<'_>) -> Vec<cluster::Cluster> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for svc in ctx.services() {
        for port in &svc.ports {
            if port.protocol == Protocol::Udp {
                continue;
            }
            for c in outbound(ctx, svc, port) {
                if seen.insert(c.name.clone()) {
                    out.push(c);
                }
            }
        }
    }
    out.push(cluster::Cluster {
        name: BLACKHOLE.into(),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(duration(ctx.mesh.connect_timeout)),
        ..Default::default()
    });
    // Gateways have no original-destination listeners, so no passthrough cluster.
    if ctx.proxy.node_type == NodeType::Sidecar {
        let mut passthrough = original_dst(PASSTHROUGH, ctx);
        passthrough.typed_extension_protocol_options = passthrough_options();
        out.push(passthrough);
    }
    out
}

/// The proxy's own clusters: `inbound|PORT||` per workload port and the inbound passthrough
/// (none for gateways).
pub fn inbound_clusters(ctx: &Context<'_>) -> Vec<cluster::Cluster> {
    let mut out = Vec::new();
    if ctx.proxy.node_type == NodeType::Router {
        return out;
    }
    for ip in inbound_ports(ctx) {
        let mut c = original_dst(&super::inbound_cluster_name(ip.target_port), ctx);
        c.upstream_bind_config = inbound_bind();
        c.metadata = istio_metadata(&ip.services.iter().map(|s| &**s).collect::<Vec<_>>());
        if ip.protocol.is_http2() {
            c.typed_extension_protocol_options = protocol_options(upstream_http::HttpProtocolOptions {
                upstream_protocol_options: explicit_http2(),
                ..Default::default()
            });
        }
        out.push(c);
    }
    let mut inbound_passthrough = original_dst(INBOUND_PASSTHROUGH, ctx);
    inbound_passthrough.typed_extension_protocol_options = passthrough_options();
    inbound_passthrough.upstream_bind_config = inbound_bind();
    out.push(inbound_passthrough);
    out
}
