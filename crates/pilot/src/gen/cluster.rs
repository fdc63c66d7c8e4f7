//! CDS: `outbound|PORT||FQDN` EDS clusters for every Service port, `BlackHoleCluster`,
//! `PassthroughCluster`, `inbound|PORT||` for the proxy's own ports and
//! `InboundPassthroughClusterIpv4` (reference §3).

use std::collections::BTreeSet;

use xds::pb::envoy::config::cluster::v3 as cluster;
use xds::pb::envoy::config::core::v3 as core;
use xds::pb::envoy::extensions::upstreams::http::v3 as upstream_http;
use xds::pb::google::protobuf::Any;

use super::listener::inbound_ports;
use super::{
    ads_source, any, duration, list_value, outbound_cluster_name, secs, socket_address, string_value,
    struct_value, u32_value, Context, BLACKHOLE, INBOUND_PASSTHROUGH, PASSTHROUGH,
};
use crate::snapshot::{ListenerProtocol, Protocol, ServiceInfo, ServicePort};

const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Istio's default circuit breakers: everything unlimited on the DEFAULT priority.
fn default_circuit_breakers() -> Option<cluster::CircuitBreakers> {
    Some(cluster::CircuitBreakers {
        thresholds: vec![cluster::circuit_breakers::Thresholds {
            max_connections: u32_value(u32::MAX),
            max_pending_requests: u32_value(u32::MAX),
            max_requests: u32_value(u32::MAX),
            max_retries: u32_value(u32::MAX),
            track_remaining: true,
            ..Default::default()
        }],
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

/// Upstream HTTP options by port protocol: h2 for HTTP2/gRPC, the client's protocol for sniffed
/// ports, nothing (HTTP/1.1 or raw TCP) otherwise.
fn port_protocol_options(p: Protocol) -> std::collections::HashMap<String, Any> {
    let upstream_protocol_options = if p.is_http2() {
        explicit_http2()
    } else if p.listener() == ListenerProtocol::Auto {
        use_downstream()
    } else {
        return Default::default();
    };
    protocol_options(upstream_http::HttpProtocolOptions {
        upstream_protocol_options,
        ..Default::default()
    })
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
        Some(xds::pb::google::protobuf::value::Kind::StructValue(s)) => s,
        _ => return None,
    };
    Some(core::Metadata {
        filter_metadata: [("istio".to_owned(), istio)].into_iter().collect(),
        ..Default::default()
    })
}

fn outbound(ctx: &Context<'_>, svc: &ServiceInfo, port: &ServicePort) -> cluster::Cluster {
    let name = outbound_cluster_name(port.port, &svc.hostname);
    let headless = svc.vip.is_none();
    let mut c = cluster::Cluster {
        name: name.clone(),
        connect_timeout: Some(duration(ctx.mesh.connect_timeout)),
        circuit_breakers: default_circuit_breakers(),
        metadata: istio_metadata(&[svc]),
        typed_extension_protocol_options: port_protocol_options(port.protocol),
        ..Default::default()
    };
    if headless {
        // Headless Services: the client already picked the pod; connect where it asked.
        c.cluster_discovery_type = Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::OriginalDst as i32,
        ));
        c.lb_policy = cluster::cluster::LbPolicy::ClusterProvided as i32;
    } else {
        c.cluster_discovery_type = Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::Eds as i32,
        ));
        c.eds_cluster_config = Some(cluster::cluster::EdsClusterConfig {
            eds_config: ads_source(),
            service_name: name,
        });
        c.lb_policy = cluster::cluster::LbPolicy::LeastRequest as i32;
        c.common_lb_config = Some(cluster::cluster::CommonLbConfig {
            locality_config_specifier: Some(
                cluster::cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                    cluster::cluster::common_lb_config::LocalityWeightedLbConfig {},
                ),
            ),
            ..Default::default()
        });
    }
    c
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
/// inbound passthrough.
pub fn clusters(ctx: &Context<'_>) -> Vec<cluster::Cluster> {
    let mut out = shared_clusters(ctx);
    out.extend(inbound_clusters(ctx));
    out
}

/// The clusters every sidecar gets alike (outbound, BlackHole, Passthrough): computed once per
/// snapshot and shared.
pub fn shared_clusters(ctx: &Context<'_>) -> Vec<cluster::Cluster> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for svc in ctx.services() {
        for port in &svc.ports {
            if port.protocol == Protocol::Udp {
                continue;
            }
            let c = outbound(ctx, svc, port);
            if seen.insert(c.name.clone()) {
                out.push(c);
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
    let mut passthrough = original_dst(PASSTHROUGH, ctx);
    passthrough.typed_extension_protocol_options = passthrough_options();
    out.push(passthrough);
    out
}

/// The proxy's own clusters: `inbound|PORT||` per workload port and the inbound passthrough.
pub fn inbound_clusters(ctx: &Context<'_>) -> Vec<cluster::Cluster> {
    let mut out = Vec::new();
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
