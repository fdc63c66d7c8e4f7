//! LDS: `virtualOutbound` (15001), the per-port outbound listeners (`0.0.0.0_80` for HTTP,
//! `VIP_PORT` for TCP and sniffed ports, never bound: reached through `use_original_dst`) and
//! `virtualInbound` (15006) with one set of chains per pod port (reference §1).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use xds::pb::envoy::config::accesslog::v3 as accesslog;
use xds::pb::envoy::config::core::v3 as core;
use xds::pb::envoy::config::listener::v3 as listener;
use xds::pb::envoy::extensions::access_loggers::file::v3 as file_log;
use xds::pb::envoy::extensions::filters::http::cors::v3::Cors;
use xds::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use xds::pb::envoy::extensions::filters::http::router::v3::Router;
use xds::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
use xds::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use xds::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use xds::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use xds::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp_proxy;
use xds::pb::envoy::r#type::v3::Int32Range;

use super::route::{inbound_passthrough_route, inbound_route};
use super::{
    ads_source, any, bool_value, cidr, inbound_cluster_name, outbound_cluster_name, secs, socket_address,
    Context, BLACKHOLE, INBOUND_PASSTHROUGH, PASSTHROUGH,
};
use crate::snapshot::{IntOrStringExt, ListenerProtocol, Protocol, Resolution, ServiceInfo, ServicePort};

/// Ports of the sidecar itself: a wildcard outbound listener there would shadow them.
const RESERVED_PORTS: [u16; 4] = [15001, 15006, 15021, 15090];

/// ALPN values the HTTP inspector sets for plaintext HTTP (`plaintextHTTPALPNs`).
const PLAINTEXT_HTTP_ALPNS: [&str; 2] = ["http/1.1", "h2c"];

/// Where Envoy ≥1.33 must trust `x-forwarded-for`/`x-envoy-*` from (it trusts no one by default;
/// Istio relied on the old default of RFC 1918 + loopback). 198.18.0.0/15 is Skiff's test range.
pub(super) const INTERNAL_CIDRS: [(&str, u32); 5] = [
    ("10.0.0.0", 8),
    ("172.16.0.0", 12),
    ("192.168.0.0", 16),
    ("127.0.0.0", 8),
    ("198.18.0.0", 15),
];

pub(super) fn filter(name: &str, config: xds::pb::google::protobuf::Any) -> listener::Filter {
    listener::Filter {
        name: name.into(),
        config_type: Some(listener::filter::ConfigType::TypedConfig(config)),
    }
}

fn listener_filter(
    name: &str,
    config: xds::pb::google::protobuf::Any,
    disabled_ports: &[u16],
) -> listener::ListenerFilter {
    use listener::listener_filter_chain_match_predicate::{MatchSet, Rule};
    let range = |p: u16| listener::ListenerFilterChainMatchPredicate {
        rule: Some(Rule::DestinationPortRange(Int32Range {
            start: i32::from(p),
            end: i32::from(p) + 1,
        })),
    };
    let filter_disabled = match disabled_ports {
        [] => None,
        [one] => Some(range(*one)),
        many => Some(listener::ListenerFilterChainMatchPredicate {
            rule: Some(Rule::OrMatch(MatchSet {
                rules: many.iter().map(|p| range(*p)).collect(),
            })),
        }),
    };
    listener::ListenerFilter {
        name: name.into(),
        config_type: Some(listener::listener_filter::ConfigType::TypedConfig(config)),
        filter_disabled,
    }
}

pub(super) fn tls_inspector() -> listener::ListenerFilter {
    listener_filter(
        "envoy.filters.listener.tls_inspector",
        any(&TlsInspector::default()),
        &[],
    )
}

fn http_inspector(disabled_ports: &[u16]) -> listener::ListenerFilter {
    listener_filter(
        "envoy.filters.listener.http_inspector",
        any(&HttpInspector::default()),
        disabled_ports,
    )
}

pub(super) fn access_logs(ctx: &Context<'_>) -> Vec<accesslog::AccessLog> {
    let Some(path) = &ctx.mesh.access_log_file else {
        return Vec::new();
    };
    let config = file_log::FileAccessLog {
        path: path.clone(),
        access_log_format: Some(file_log::file_access_log::AccessLogFormat::LogFormat(
            core::SubstitutionFormatString {
                format: Some(core::substitution_format_string::Format::TextFormatSource(
                    core::DataSource {
                        specifier: Some(core::data_source::Specifier::InlineString(
                            super::ISTIO_ACCESS_LOG_FORMAT.into(),
                        )),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            },
        )),
    };
    vec![accesslog::AccessLog {
        name: "envoy.access_loggers.file".into(),
        config_type: Some(accesslog::access_log::ConfigType::TypedConfig(any(&config))),
        ..Default::default()
    }]
}

pub(super) fn tcp(ctx: &Context<'_>, stat_prefix: &str, cluster: &str) -> listener::Filter {
    let c = tcp_proxy::TcpProxy {
        stat_prefix: stat_prefix.into(),
        cluster_specifier: Some(tcp_proxy::tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
        access_log: access_logs(ctx),
        ..Default::default()
    };
    filter("envoy.filters.network.tcp_proxy", any(&c))
}

pub(super) fn http_filters() -> Vec<hcm::HttpFilter> {
    let f = |name: &str, config| hcm::HttpFilter {
        name: name.into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    };
    vec![
        f("envoy.filters.http.fault", any(&HttpFault::default())),
        f("envoy.filters.http.cors", any(&Cors::default())),
        f("envoy.filters.http.router", any(&Router::default())),
    ]
}

/// Istio's HTTP connection manager (`buildHTTPConnectionManager`) for a sidecar.
fn http_connection_manager(
    ctx: &Context<'_>,
    stat_prefix: String,
    routes: hcm::http_connection_manager::RouteSpecifier,
    inbound: Option<Protocol>,
) -> listener::Filter {
    let mut c = hcm::HttpConnectionManager {
        codec_type: hcm::http_connection_manager::CodecType::Auto as i32,
        stat_prefix,
        route_specifier: Some(routes),
        http_filters: http_filters(),
        normalize_path: bool_value(true),
        path_with_escaped_slashes_action:
            hcm::http_connection_manager::PathWithEscapedSlashesAction::KeepUnchanged as i32,
        use_remote_address: bool_value(false),
        upgrade_configs: vec![hcm::http_connection_manager::UpgradeConfig {
            upgrade_type: "websocket".into(),
            ..Default::default()
        }],
        stream_idle_timeout: Some(secs(0)),
        internal_address_config: Some(hcm::http_connection_manager::InternalAddressConfig {
            cidr_ranges: INTERNAL_CIDRS.iter().map(|(p, l)| cidr(p, *l)).collect(),
            ..Default::default()
        }),
        access_log: access_logs(ctx),
        ..Default::default()
    };
    if let Some(proto) = inbound {
        c.server_name = "istio-envoy".into();
        c.forward_client_cert_details =
            hcm::http_connection_manager::ForwardClientCertDetails::AppendForward as i32;
        c.set_current_client_cert_details = Some(hcm::http_connection_manager::SetCurrentClientCertDetails {
            subject: bool_value(true),
            uri: true,
            dns: true,
            ..Default::default()
        });
        if proto.is_http2() {
            c.http2_protocol_options = Some(core::Http2ProtocolOptions::default());
        }
    }
    filter("envoy.filters.network.http_connection_manager", any(&c))
}

pub(super) fn rds(name: &str) -> hcm::http_connection_manager::RouteSpecifier {
    hcm::http_connection_manager::RouteSpecifier::Rds(hcm::Rds {
        config_source: ads_source(),
        route_config_name: name.into(),
    })
}

fn http_match() -> Option<listener::FilterChainMatch> {
    Some(listener::FilterChainMatch {
        transport_protocol: "raw_buffer".into(),
        application_protocols: PLAINTEXT_HTTP_ALPNS.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
}

// === Outbound ===

/// One outbound listener: where it binds and what it serves.
struct Outbound {
    bind: String,
    port: u16,
    protocol: ListenerProtocol,
    /// The Services on this listener: every HTTP Service on `0.0.0.0`; for TCP/sniffed ones the
    /// first Service keeps a VIP listener, while Services without a VIP share `0.0.0.0_PORT` and
    /// are told apart by SNI (TLS) — as Istio merges their filter chains.
    services: Vec<(Arc<ServiceInfo>, ServicePort)>,
}

impl Outbound {
    fn name(&self) -> String {
        format!("{}_{}", self.bind, self.port)
    }

    /// The RDS name its HTTP chain uses.
    fn rds_name(&self) -> Option<String> {
        match self.protocol {
            ListenerProtocol::Http => Some(self.port.to_string()),
            ListenerProtocol::Auto if self.bind != WILDCARD => self
                .services
                .first()
                .map(|(s, p)| format!("{}:{}", s.hostname, p.port)),
            ListenerProtocol::Auto => Some(self.port.to_string()),
            _ => None,
        }
    }
}

const WILDCARD: &str = "0.0.0.0";

fn outbound_listeners(ctx: &Context<'_>) -> Vec<Outbound> {
    let mut by_key: BTreeMap<(String, u16), Outbound> = BTreeMap::new();
    for svc in ctx.services() {
        for port in &svc.ports {
            let protocol = port.protocol.listener();
            let binds: Vec<String> = match protocol {
                ListenerProtocol::Skip => continue,
                ListenerProtocol::Http => vec![WILDCARD.into()],
                ListenerProtocol::Tcp | ListenerProtocol::Auto => match svc.vip {
                    Some(vip) => vec![vip.to_string()],
                    // Headless Kubernetes Services: one listener per endpoint, never the proxy's
                    // own address.
                    None if svc.resolution == Resolution::Passthrough && svc.service_entry.is_none() => {
                        let mut ips: Vec<IpAddr> = svc
                            .endpoints_for(port)
                            .filter(|e| e.ready && !ctx.proxy.ips.contains(&e.ip))
                            .map(|e| e.ip)
                            .collect();
                        ips.sort();
                        ips.dedup();
                        ips.iter().map(IpAddr::to_string).collect()
                    }
                    // A ServiceEntry without an address: the wildcard, told apart by SNI.
                    None => vec![WILDCARD.into()],
                },
            };
            for bind in binds {
                if bind == WILDCARD && RESERVED_PORTS.contains(&port.port) {
                    continue;
                }
                let key = (bind.clone(), port.port);
                match by_key.get_mut(&key) {
                    Some(existing) => {
                        let shared = existing.protocol == protocol
                            && (protocol == ListenerProtocol::Http || existing.bind == WILDCARD);
                        if shared {
                            existing.services.push((svc.clone(), port.clone()));
                        } else if existing.protocol == ListenerProtocol::Http
                            && protocol != ListenerProtocol::Http
                        {
                            // HTTP and TCP on one wildcard port: Istio upgrades it to sniffing.
                            existing.protocol = ListenerProtocol::Auto;
                            existing.services.push((svc.clone(), port.clone()));
                        }
                        // TCP/sniffed on an already used VIP:port: the first Service keeps it.
                    }
                    None => {
                        by_key.insert(
                            key,
                            Outbound {
                                bind,
                                port: port.port,
                                protocol,
                                services: vec![(svc.clone(), port.clone())],
                            },
                        );
                    }
                }
            }
        }
    }
    by_key.into_values().collect()
}

/// Where traffic nothing else claims goes: `PassthroughCluster` (ALLOW_ANY) or
/// `BlackHoleCluster` (REGISTRY_ONLY).
fn fallthrough(ctx: &Context<'_>) -> &'static str {
    if ctx.allow_any() {
        PASSTHROUGH
    } else {
        BLACKHOLE
    }
}

fn passthrough_chain(ctx: &Context<'_>) -> listener::FilterChain {
    let to = fallthrough(ctx);
    listener::FilterChain {
        name: "PassthroughFilterChain".into(),
        filter_chain_match: Some(listener::FilterChainMatch::default()),
        filters: vec![tcp(ctx, to, to)],
        ..Default::default()
    }
}

/// Istio's `filterChainOpts` for a TCP-level chain.
struct TcpChain {
    sni: Vec<String>,
    cidrs: Vec<String>,
    filters: Vec<listener::Filter>,
    metadata: Option<core::Metadata>,
}

impl TcpChain {
    fn is_match_all(&self) -> bool {
        (self.sni.is_empty() || self.sni.iter().any(|h| h == "*")) && self.cidrs.is_empty()
    }

    /// Istio's `toFilterChainMatch`.
    fn chain_match(&self) -> Option<listener::FilterChainMatch> {
        if self.is_match_all() {
            return None;
        }
        let mut m = listener::FilterChainMatch::default();
        if !self.sni.iter().any(|h| h == "*") {
            let mut sni = self.sni.clone();
            sni.sort();
            m.server_names = sni;
        }
        let mut cidrs = self.cidrs.clone();
        cidrs.sort();
        for c in cidrs {
            let (ip, len) = match c.split_once('/') {
                Some((ip, len)) => (ip.to_owned(), len.parse().unwrap_or(32)),
                None => (c.clone(), if c.contains(':') { 128 } else { 32 }),
            };
            if ip != "0.0.0.0" {
                m.prefix_ranges.push(cidr(&ip, len));
            }
        }
        Some(m)
    }

    /// Istio's `conflictsWith`: same SNI set (ignoring `*`) and same destination CIDRs.
    fn conflicts_with(&self, other: &TcpChain) -> bool {
        let set = |v: &[String]| -> std::collections::BTreeSet<String> {
            v.iter().filter(|h| *h != "*").cloned().collect()
        };
        set(&self.sni) == set(&other.sni) && set(&self.cidrs) == set(&other.cidrs)
    }
}

/// A `tcp_proxy` to one cluster or, for several VirtualService destinations, weighted clusters
/// (Istio's `buildOutboundNetworkFilters`).
fn tcp_to_destinations(
    ctx: &Context<'_>,
    routes: &[api::networking::RouteDestination],
    port: u16,
    vs: &crate::istio::Resource<api::networking::VirtualService>,
) -> Vec<listener::Filter> {
    let cluster_of = |d: &api::networking::RouteDestination| {
        let dst = d.destination.clone().unwrap_or_default();
        super::vs::destination_cluster(&dst, ctx.service(&dst.host).map(|s| &**s), port)
    };
    if routes.len() == 1 {
        let c = cluster_of(&routes[0]);
        return vec![tcp(ctx, &c, &c)];
    }
    let clusters = routes
        .iter()
        .filter(|d| d.weight > 0)
        .map(|d| tcp_proxy::tcp_proxy::weighted_cluster::ClusterWeight {
            name: cluster_of(d),
            weight: d.weight as u32,
            ..Default::default()
        })
        .collect();
    let c = tcp_proxy::TcpProxy {
        stat_prefix: format!("{}.{}", vs.name, vs.namespace),
        cluster_specifier: Some(tcp_proxy::tcp_proxy::ClusterSpecifier::WeightedClusters(
            tcp_proxy::tcp_proxy::WeightedCluster { clusters },
        )),
        access_log: access_logs(ctx),
        ..Default::default()
    };
    vec![filter("envoy.filters.network.tcp_proxy", any(&c))]
}

/// The mesh VirtualServices naming `hostname` (Istio's `getConfigsForHost`).
fn configs_for_host<'c>(
    ctx: &'c Context<'_>,
    hostname: &str,
) -> Vec<&'c Arc<crate::istio::Resource<api::networking::VirtualService>>> {
    ctx.scope()
        .virtual_services
        .iter()
        .filter(|vs| vs.spec.hosts.iter().any(|h| api::host::matches(h, hostname)))
        .collect()
}

fn l4_applies(
    ctx: &Context<'_>,
    gateways: &[String],
    labels: &BTreeMap<String, String>,
    port: u32,
    source_ns: &str,
    listen: u16,
) -> bool {
    let proxy_labels = ctx.labels();
    (gateways.is_empty() || gateways.iter().any(|g| g == api::MESH_GATEWAY))
        && labels.iter().all(|(k, v)| proxy_labels.get(k) == Some(v))
        && (port == 0 || port == u32::from(listen))
        && (source_ns.is_empty() || source_ns == ctx.proxy.namespace)
}

/// Istio's `buildSidecarOutboundTLSFilterChainOpts` / `buildSidecarOutboundTCPFilterChainOpts`:
/// the chains of one Service on a TCP listener, from its VirtualService's `tls`/`tcp` rules, else
/// straight to its cluster (with its hostname as SNI when the listener is the wildcard).
fn tcp_chains(ctx: &Context<'_>, o: &Outbound, svc: &ServiceInfo, port: &ServicePort) -> Vec<TcpChain> {
    let configs = configs_for_host(ctx, &svc.hostname);
    let mut out = Vec::new();
    let default_cluster = || {
        let p = if svc.ports.len() == 1 {
            svc.ports[0].port
        } else {
            port.port
        };
        outbound_cluster_name(p, &svc.hostname)
    };
    if port.protocol.is_tls() {
        let mut handled = std::collections::BTreeSet::new();
        for vs in &configs {
            for tls in &vs.spec.tls {
                for m in &tls.matches {
                    if !l4_applies(
                        ctx,
                        &m.gateways,
                        &m.source_labels,
                        m.port,
                        &m.source_namespace,
                        o.port,
                    ) {
                        continue;
                    }
                    let key = format!("{}|{}", m.sni_hosts.join(","), m.destination_subnets.join(","));
                    if handled.insert(key) {
                        out.push(TcpChain {
                            sni: m.sni_hosts.clone(),
                            cidrs: m.destination_subnets.clone(),
                            filters: tcp_to_destinations(ctx, &tls.route, o.port, vs),
                            metadata: super::vs::config_metadata(&vs.config_path("virtual-service")),
                        });
                    }
                }
            }
        }
        if out.is_empty() {
            let c = default_cluster();
            out.push(TcpChain {
                sni: if o.bind == WILDCARD {
                    vec![svc.hostname.clone()]
                } else {
                    Vec::new()
                },
                cidrs: Vec::new(),
                filters: vec![tcp(ctx, &c, &c)],
                metadata: None,
            });
        }
        return out;
    }
    'rules: for vs in &configs {
        for rule in &vs.spec.tcp {
            if rule.matches.is_empty() {
                out.push(TcpChain {
                    sni: Vec::new(),
                    cidrs: Vec::new(),
                    filters: tcp_to_destinations(ctx, &rule.route, o.port, vs),
                    metadata: super::vs::config_metadata(&vs.config_path("virtual-service")),
                });
                break 'rules;
            }
            let mut subnets = Vec::new();
            for m in &rule.matches {
                if l4_applies(
                    ctx,
                    &m.gateways,
                    &m.source_labels,
                    m.port,
                    &m.source_namespace,
                    o.port,
                ) {
                    if m.destination_subnets.is_empty() {
                        out.push(TcpChain {
                            sni: Vec::new(),
                            cidrs: Vec::new(),
                            filters: tcp_to_destinations(ctx, &rule.route, o.port, vs),
                            metadata: super::vs::config_metadata(&vs.config_path("virtual-service")),
                        });
                        break 'rules;
                    }
                    subnets.extend(m.destination_subnets.iter().cloned());
                }
            }
            if !subnets.is_empty() {
                out.push(TcpChain {
                    sni: Vec::new(),
                    cidrs: subnets,
                    filters: tcp_to_destinations(ctx, &rule.route, o.port, vs),
                    metadata: None,
                });
            }
        }
    }
    if !out.iter().any(TcpChain::is_match_all) {
        let c = default_cluster();
        out.push(TcpChain {
            sni: Vec::new(),
            cidrs: Vec::new(),
            filters: vec![tcp(ctx, &c, &c)],
            metadata: None,
        });
    }
    out
}

fn build_outbound(ctx: &Context<'_>, o: &Outbound) -> listener::Listener {
    let name = o.name();
    let mut l = listener::Listener {
        name: name.clone(),
        address: socket_address(&o.bind, o.port),
        bind_to_port: bool_value(false),
        traffic_direction: core::TrafficDirection::Outbound as i32,
        continue_on_listener_filters_timeout: true,
        listener_filters_timeout: Some(secs(0)),
        ..Default::default()
    };
    let stat_prefix = format!("outbound_{name}");
    // The TCP chains of the listener's Services, merged (a chain whose match repeats an earlier
    // one is dropped, as Istio's `mergeTCPFilterChains` does).
    let tcp_chains_of = |services: &[(Arc<ServiceInfo>, ServicePort)]| {
        let mut merged: Vec<TcpChain> = Vec::new();
        for (svc, port) in services {
            for c in tcp_chains(ctx, o, svc, port) {
                if !merged.iter().any(|m| m.conflicts_with(&c)) {
                    merged.push(c);
                }
            }
        }
        merged
    };
    let to_chain = |c: TcpChain| listener::FilterChain {
        filter_chain_match: c.chain_match(),
        filters: c.filters,
        metadata: c.metadata,
        ..Default::default()
    };
    match o.protocol {
        ListenerProtocol::Http => {
            l.listener_filters = vec![tls_inspector(), http_inspector(&[])];
            l.filter_chains = vec![listener::FilterChain {
                filter_chain_match: http_match(),
                filters: vec![http_connection_manager(
                    ctx,
                    stat_prefix,
                    rds(&o.port.to_string()),
                    None,
                )],
                ..Default::default()
            }];
            l.default_filter_chain = Some(passthrough_chain(ctx));
        }
        ListenerProtocol::Tcp => {
            let services: Vec<(Arc<ServiceInfo>, ServicePort)> = if o.bind == WILDCARD {
                o.services.clone()
            } else {
                o.services.first().cloned().into_iter().collect()
            };
            let chains = tcp_chains_of(&services);
            if chains.iter().any(|c| !c.sni.is_empty()) {
                l.listener_filters = vec![tls_inspector()];
            }
            let (all, matched): (Vec<TcpChain>, Vec<TcpChain>) =
                chains.into_iter().partition(TcpChain::is_match_all);
            l.filter_chains = matched.into_iter().map(to_chain).collect();
            l.default_filter_chain = all.into_iter().next().map(to_chain);
            if l.filter_chains.is_empty() {
                // A single match-all chain is a plain chain (Istio's `buildListenerFromEntry`).
                l.filter_chains = l.default_filter_chain.take().into_iter().collect();
            } else if l.default_filter_chain.is_none() {
                l.default_filter_chain = Some(passthrough_chain(ctx));
            }
        }
        ListenerProtocol::Auto => {
            l.listener_filters = vec![tls_inspector(), http_inspector(&[])];
            let route = o.rds_name().unwrap_or_else(|| o.port.to_string());
            l.filter_chains = vec![listener::FilterChain {
                filter_chain_match: http_match(),
                filters: vec![http_connection_manager(ctx, stat_prefix, rds(&route), None)],
                ..Default::default()
            }];
            let services: Vec<(Arc<ServiceInfo>, ServicePort)> = o
                .services
                .iter()
                .filter(|(_, p)| p.protocol.listener() != ListenerProtocol::Http)
                .take(1)
                .cloned()
                .collect();
            let mut chains = tcp_chains_of(&services);
            let all = chains
                .iter()
                .position(TcpChain::is_match_all)
                .map(|i| chains.remove(i));
            l.filter_chains.extend(chains.into_iter().map(to_chain));
            l.default_filter_chain = Some(all.map(to_chain).unwrap_or_else(|| passthrough_chain(ctx)));
        }
        ListenerProtocol::Skip => {}
    }
    l
}

fn virtual_outbound(ctx: &Context<'_>) -> listener::Listener {
    listener::Listener {
        name: "virtualOutbound".into(),
        address: socket_address("0.0.0.0", 15001),
        use_original_dst: bool_value(true),
        traffic_direction: core::TrafficDirection::Outbound as i32,
        filter_chains: vec![
            listener::FilterChain {
                name: "virtualOutbound-blackhole".into(),
                filter_chain_match: Some(listener::FilterChainMatch {
                    destination_port: super::u32_value(15001),
                    ..Default::default()
                }),
                filters: vec![tcp(ctx, BLACKHOLE, BLACKHOLE)],
                ..Default::default()
            },
            listener::FilterChain {
                name: "virtualOutbound-catchall-tcp".into(),
                filters: vec![tcp(ctx, fallthrough(ctx), fallthrough(ctx))],
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

// === Inbound ===

/// A port of the proxy's own workload, from the Services that select it.
#[derive(Debug, Clone)]
pub struct InboundPort {
    pub target_port: u16,
    pub service_port: u16,
    pub protocol: Protocol,
    /// Services exposing this target port; the first (oldest, then by name) names the chain.
    pub services: Vec<Arc<ServiceInfo>>,
}

/// The proxy's inbound ports: unique by target port, ascending, oldest Service first.
pub fn inbound_ports(ctx: &Context<'_>) -> Vec<InboundPort> {
    let labels = ctx.labels();
    let pod = ctx.snap.pod(&ctx.proxy.namespace, &ctx.proxy.pod);
    let mut selecting: Vec<&Arc<ServiceInfo>> = ctx
        .services()
        .filter(|s| s.namespace == ctx.proxy.namespace && s.selects(&labels))
        .collect();
    selecting.sort_by(|a, b| (&a.creation, &a.name).cmp(&(&b.creation, &b.name)));
    let mut ports: BTreeMap<u16, InboundPort> = BTreeMap::new();
    for svc in selecting {
        for p in &svc.ports {
            if p.protocol == Protocol::Udp {
                continue;
            }
            let Some(target) = p.target_port.resolve(p.port, pod.map(|p| &**p)) else {
                continue;
            };
            ports
                .entry(target)
                .and_modify(|ip| ip.services.push(svc.clone()))
                .or_insert_with(|| InboundPort {
                    target_port: target,
                    service_port: p.port,
                    protocol: p.protocol,
                    services: vec![svc.clone()],
                });
        }
    }
    ports.into_values().collect()
}

fn inbound_hcm(ctx: &Context<'_>, ip: &InboundPort) -> listener::Filter {
    let svc = &ip.services[0];
    http_connection_manager(
        ctx,
        format!("inbound_0.0.0.0_{}", ip.target_port),
        hcm::http_connection_manager::RouteSpecifier::RouteConfig(inbound_route(
            ip.target_port,
            ip.service_port,
            format!("{}:{}/*", svc.hostname, ip.service_port),
        )),
        Some(ip.protocol),
    )
}

fn inbound_chains(ctx: &Context<'_>, ip: &InboundPort) -> Vec<listener::FilterChain> {
    let name = format!("0.0.0.0_{}", ip.target_port);
    let cluster = inbound_cluster_name(ip.target_port);
    let m = |alpn: bool| {
        Some(listener::FilterChainMatch {
            destination_port: super::u32_value(u32::from(ip.target_port)),
            transport_protocol: "raw_buffer".into(),
            application_protocols: if alpn {
                PLAINTEXT_HTTP_ALPNS.iter().map(|s| s.to_string()).collect()
            } else {
                Vec::new()
            },
            ..Default::default()
        })
    };
    let http = |alpn| listener::FilterChain {
        name: name.clone(),
        filter_chain_match: m(alpn),
        filters: vec![inbound_hcm(ctx, ip)],
        ..Default::default()
    };
    let tcp_chain = listener::FilterChain {
        name: name.clone(),
        filter_chain_match: m(false),
        filters: vec![tcp(ctx, &cluster, &cluster)],
        ..Default::default()
    };
    match ip.protocol.listener() {
        ListenerProtocol::Http => vec![http(false)],
        ListenerProtocol::Tcp => vec![tcp_chain],
        _ => vec![http(true), tcp_chain],
    }
}

fn virtual_inbound(ctx: &Context<'_>) -> listener::Listener {
    let ports = inbound_ports(ctx);
    let mut chains = vec![listener::FilterChain {
        name: "virtualInbound-blackhole".into(),
        filter_chain_match: Some(listener::FilterChainMatch {
            destination_port: super::u32_value(15006),
            ..Default::default()
        }),
        filters: vec![tcp(ctx, BLACKHOLE, BLACKHOLE)],
        ..Default::default()
    }];
    let everywhere = || vec![cidr("0.0.0.0", 0)];
    chains.push(listener::FilterChain {
        name: "virtualInbound-catchall-http".into(),
        filter_chain_match: Some(listener::FilterChainMatch {
            prefix_ranges: everywhere(),
            transport_protocol: "raw_buffer".into(),
            application_protocols: PLAINTEXT_HTTP_ALPNS.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }),
        filters: vec![http_connection_manager(
            ctx,
            INBOUND_PASSTHROUGH.into(),
            hcm::http_connection_manager::RouteSpecifier::RouteConfig(inbound_passthrough_route()),
            Some(Protocol::Unsupported),
        )],
        ..Default::default()
    });
    chains.push(listener::FilterChain {
        name: "virtualInbound".into(),
        filter_chain_match: Some(listener::FilterChainMatch {
            prefix_ranges: everywhere(),
            transport_protocol: "raw_buffer".into(),
            ..Default::default()
        }),
        filters: vec![tcp(ctx, INBOUND_PASSTHROUGH, INBOUND_PASSTHROUGH)],
        ..Default::default()
    });
    for ip in &ports {
        chains.extend(inbound_chains(ctx, ip));
    }
    // The HTTP inspector only runs where a chain matches on ALPN (sniffed ports, passthrough).
    let mut no_inspection: Vec<u16> = ports
        .iter()
        .filter(|p| p.protocol.listener() != ListenerProtocol::Auto)
        .map(|p| p.target_port)
        .collect();
    no_inspection.push(15006);
    listener::Listener {
        name: "virtualInbound".into(),
        address: socket_address("0.0.0.0", 15006),
        traffic_direction: core::TrafficDirection::Inbound as i32,
        continue_on_listener_filters_timeout: true,
        listener_filters_timeout: Some(secs(0)),
        listener_filters: vec![
            listener_filter(
                "envoy.filters.listener.original_dst",
                any(&OriginalDst::default()),
                &[],
            ),
            http_inspector(&no_inspection),
        ],
        filter_chains: chains,
        ..Default::default()
    }
}

/// Every listener of a sidecar: outbound per-port listeners, `virtualOutbound`, `virtualInbound`
/// (a gateway's come from its Gateways, see [`super::gateway`]).
pub fn listeners(ctx: &Context<'_>) -> Vec<listener::Listener> {
    if ctx.proxy.node_type == crate::proxy::NodeType::Router {
        return super::gateway::listeners(ctx);
    }
    let mut out: Vec<listener::Listener> = outbound_listeners(ctx)
        .iter()
        .map(|o| build_outbound(ctx, o))
        .collect();
    out.push(virtual_outbound(ctx));
    out.push(virtual_inbound(ctx));
    out
}

/// The RDS names this proxy's listeners refer to.
pub fn rds_names(ctx: &Context<'_>) -> Vec<String> {
    if ctx.proxy.node_type == crate::proxy::NodeType::Router {
        return super::gateway::rds_names(ctx);
    }
    let mut names: Vec<String> = outbound_listeners(ctx)
        .iter()
        .filter_map(Outbound::rds_name)
        .collect();
    names.sort();
    names.dedup();
    names
}
