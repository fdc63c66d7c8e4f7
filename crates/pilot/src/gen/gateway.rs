//! A gateway's (`router~` node) listeners and routes from the Gateways that select its pod, as
//! Istio 1.19 builds them (`pilot/pkg/model/gateway.go` `MergeGateways`,
//! `networking/core/v1alpha3/gateway.go`):
//!
//! - each server port is resolved to the pod's target port through the Services that select the
//!   pod (Service port 80 → targetPort 8080 ⇒ listener `0.0.0.0_8080`), else taken as written;
//! - plaintext HTTP servers on a port share one chain and the route `http.<port>`; each HTTPS
//!   server that terminates TLS gets a chain matching its hosts by SNI, a `DownstreamTlsContext`
//!   with ALPN `h2,http/1.1` and its `credentialName` as the SDS secret `kubernetes://NAME`, and the
//!   route `https.<number>.<portName>.<gateway>.<namespace>`; `PASSTHROUGH` servers get one
//!   `tcp_proxy` chain per SNI match of the VirtualServices bound to them;
//! - virtual hosts are the hosts a bound VirtualService (`gateways: [name]` or `[ns/name]`) shares
//!   with the server, named `host:<server port>`; no host ⇒ the `blackhole:<port>` vhost with no
//!   routes (Envoy answers 404, as seed 004 shows); `httpsRedirect` ⇒ `require_tls: ALL`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use api::host;
use api::networking::{Gateway, Server, ServerTlsMode, ServerTlsSettings, TlsProtocol, VirtualService};
use xds::pb::envoy::config::core::v3 as core;
use xds::pb::envoy::config::listener::v3 as listener;
use xds::pb::envoy::config::route::v3 as route;
use xds::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use xds::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use xds::pb::envoy::r#type::matcher::v3 as matcher;

use super::listener::{access_logs, filter, http_filters, rds, tcp, tls_inspector, INTERNAL_CIDRS};
use super::vs::{self, Target};
use super::{any, bool_value, cidr, socket_address, u32_value, Context};
use crate::istio::Resource;
use crate::snapshot::{IntOrStringExt, Protocol};

/// The SDS resource name of a `credentialName` (`credentials.ToResourceName`).
pub fn credential_resource(name: &str) -> String {
    if name.starts_with("kubernetes://")
        || name.starts_with("kubernetes-gateway://")
        || name.starts_with("builtin://")
    {
        name.to_owned()
    } else {
        format!("kubernetes://{name}")
    }
}

/// The suffix of the CA-certificate secret of a `MUTUAL` server.
pub const CA_SUFFIX: &str = "-cacert";

/// One server of one Gateway, after merging.
#[derive(Debug, Clone)]
pub struct GatewayServer {
    pub gateway: Arc<Resource<Gateway>>,
    /// Its index in the Gateway's `servers`.
    pub index: usize,
    /// The server with its hosts' namespaces resolved (`./h` → `ns/h`, `*/h` → `h`).
    pub server: Server,
    /// `namespace/name` of the Gateway.
    pub gateway_name: String,
    /// Its RDS route (HTTP and TLS-terminating HTTPS servers).
    pub route_name: String,
    /// SNI hosts of a TLS server (hosts without their namespace, sorted, unique).
    pub sni_hosts: Vec<String>,
}

/// The servers on one listener port (Istio's `ServerPort` → `MergedServers`).
#[derive(Debug, Clone)]
pub struct PortGroup {
    /// The port the gateway pod listens on (the Service's target port).
    pub number: u16,
    pub protocol: String,
    pub bind: String,
    pub servers: Vec<usize>,
    /// The shared route of plaintext HTTP servers (`http.<port>`).
    pub route_name: String,
}

/// Istio's `MergedGateway`.
#[derive(Debug, Default, Clone)]
pub struct Merged {
    pub servers: Vec<GatewayServer>,
    pub ports: Vec<PortGroup>,
    pub by_route: BTreeMap<String, Vec<usize>>,
    /// Why servers were left out (a TLS host repeated on a port, protocol conflicts), for logs
    /// and `analyze`.
    pub skipped: Vec<String>,
}

fn protocol(s: &Server) -> Protocol {
    Protocol::parse(s.port.as_ref().map(|p| p.protocol.as_str()).unwrap_or_default())
}

fn is_passthrough(s: &Server) -> bool {
    s.tls.as_ref().is_some_and(|t| {
        matches!(
            t.mode.unwrap_or(ServerTlsMode::Passthrough),
            ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough
        )
    })
}

/// `gateway.IsHTTPServer`: HTTP, or HTTPS terminating TLS.
fn is_http_server(s: &Server) -> bool {
    let p = protocol(s);
    p.is_http() || (p == Protocol::Https && s.tls.is_some() && !is_passthrough(s))
}

/// `gateway.IsTLSServer`: a TLS-carrying non-HTTP server.
fn is_tls_server(s: &Server) -> bool {
    s.tls.is_some() && !protocol(s).is_http()
}

/// `gatewayRDSRouteName`.
fn route_name(s: &Server, port: u16, gw: &Resource<Gateway>) -> String {
    let bind = if s.bind.is_empty() {
        String::new()
    } else {
        format!(".{}", s.bind)
    };
    let p = protocol(s);
    if p.is_http() {
        return format!("http.{port}{bind}");
    }
    if p == Protocol::Https && s.tls.is_some() && !is_passthrough(s) {
        let number = s.port.as_ref().map_or(0, |p| p.number);
        let name = s.port.as_ref().map(|p| p.name.as_str()).unwrap_or_default();
        return format!("https.{number}.{name}.{}.{}{bind}", gw.name, gw.namespace);
    }
    String::new()
}

/// `sanitizeServerHostNamespace`.
fn sanitize_hosts(s: &mut Server, ns: &str) {
    let mut out = Vec::new();
    for h in &s.hosts {
        match h.split_once('/') {
            Some((".", rest)) => out.push(format!("{ns}/{rest}")),
            Some(("*", "*")) => {
                s.hosts = vec!["*".into()];
                return;
            }
            Some(("*", rest)) => out.push(rest.to_owned()),
            _ => out.push(h.clone()),
        }
    }
    s.hosts = out;
}

/// `GetSNIHostsForServer`.
fn sni_hosts(s: &Server) -> Vec<String> {
    if s.tls.is_none() {
        return Vec::new();
    }
    let mut v: Vec<String> = s
        .hosts
        .iter()
        .map(|h| h.split_once('/').map_or(h.as_str(), |(_, h)| h).to_owned())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// `resolvePorts` with the legacy selector: the target port of the first Service port of the
/// gateway's pod with this number, else the number itself.
fn resolve_port(ctx: &Context<'_>, number: u32) -> u16 {
    let labels = ctx.labels();
    let pod = ctx.snap.pod(&ctx.proxy.namespace, &ctx.proxy.pod);
    for svc in ctx
        .snap
        .services
        .iter()
        .filter(|s| s.namespace == ctx.proxy.namespace && s.selects(&labels))
    {
        for p in &svc.ports {
            if u32::from(p.port) == number {
                if let Some(t) = p.target_port.resolve(p.port, pod.map(|p| &**p)) {
                    return t;
                }
            }
        }
    }
    u16::try_from(number).unwrap_or(0)
}

/// Istio's `MergeGateways` for this proxy.
pub fn merge(ctx: &Context<'_>) -> Merged {
    let labels = ctx.labels();
    let mut m = Merged::default();
    let mut gateway_ports: HashSet<u16> = HashSet::new();
    let mut plaintext: HashMap<u16, (u16, String, String)> = HashMap::new();
    let mut group_of: HashMap<(u16, String, String), usize> = HashMap::new();
    let mut non_plain_binds: HashMap<u16, HashSet<String>> = HashMap::new();
    let mut tls_hosts: HashMap<u16, HashMap<String, String>> = HashMap::new();
    for gw in ctx.snap.config.gateways_for(&labels) {
        let gw_name = gw.key();
        for (index, s) in gw.spec.servers.iter().enumerate() {
            let Some(port) = &s.port else { continue };
            let mut server = s.clone();
            sanitize_hosts(&mut server, &gw.namespace);
            let resolved = resolve_port(ctx, port.number);
            let rn = route_name(&server, resolved, gw);
            let key = (resolved, port.protocol.clone(), server.bind.clone());
            let sni = sni_hosts(&server);
            if server.tls.is_some() {
                // Duplicated hosts on one port cannot be told apart by SNI: the later server goes.
                let known = tls_hosts.entry(resolved).or_default();
                let dups: Vec<&String> = server
                    .hosts
                    .iter()
                    .filter(|h| known.get(*h) == Some(&server.bind))
                    .collect();
                if !dups.is_empty() {
                    m.skipped.push(format!(
                        "Gateway {gw_name} spec.servers[{index}]: duplicate host names {dups:?} on port {resolved}; skipped"
                    ));
                    continue;
                }
                for h in &server.hosts {
                    known.insert(h.clone(), server.bind.clone());
                }
            }
            let idx = m.servers.len();
            let push_server = |m: &mut Merged| {
                m.servers.push(GatewayServer {
                    gateway: gw.clone(),
                    index,
                    server: server.clone(),
                    gateway_name: gw_name.clone(),
                    route_name: rn.clone(),
                    sni_hosts: sni.clone(),
                })
            };
            let proto = protocol(&server);
            if gateway_ports.contains(&resolved) {
                if let Some(current) = plaintext.get(&resolved).cloned() {
                    let current_proto = Protocol::parse(&current.1);
                    let can_merge = (current_proto.is_http() || current_proto == proto) && proto.is_http();
                    if !can_merge && current.2 == server.bind {
                        m.skipped.push(format!(
                            "Gateway {gw_name} spec.servers[{index}]: port {resolved} ({}) conflicts with an existing {} server; skipped",
                            port.protocol, current.1
                        ));
                        continue;
                    }
                    if rn.is_empty() && current.2 == server.bind {
                        m.skipped.push(format!(
                            "Gateway {gw_name} spec.servers[{index}]: port {resolved} is already used; skipped"
                        ));
                        continue;
                    }
                    push_server(&mut m);
                    let g = if current.2 != server.bind {
                        *group_of.entry(key.clone()).or_insert_with(|| {
                            m.ports.push(PortGroup {
                                number: resolved,
                                protocol: port.protocol.clone(),
                                bind: server.bind.clone(),
                                servers: Vec::new(),
                                route_name: rn.clone(),
                            });
                            m.ports.len() - 1
                        })
                    } else {
                        group_of[&current]
                    };
                    m.ports[g].servers.push(idx);
                    m.by_route.entry(rn.clone()).or_default().push(idx);
                } else {
                    if is_http_server(&server) {
                        if rn.is_empty() || m.by_route.contains_key(&rn) {
                            m.skipped.push(format!(
                                "Gateway {gw_name} spec.servers[{index}]: route {rn:?} already served on port {resolved}; skipped"
                            ));
                            continue;
                        }
                        m.by_route.insert(rn.clone(), vec![idx]);
                    }
                    let binds = non_plain_binds.entry(resolved).or_default();
                    binds.insert(server.bind.clone());
                    if server.tls.is_none() {
                        m.skipped.push(format!(
                            "Gateway {gw_name} spec.servers[{index}]: a second server on TLS port {resolved} needs TLS settings; skipped"
                        ));
                        continue;
                    }
                    push_server(&mut m);
                    let g = *group_of.entry(key.clone()).or_insert_with(|| {
                        m.ports.push(PortGroup {
                            number: resolved,
                            protocol: port.protocol.clone(),
                            bind: server.bind.clone(),
                            servers: Vec::new(),
                            route_name: String::new(),
                        });
                        m.ports.len() - 1
                    });
                    m.ports[g].servers.push(idx);
                }
            } else {
                gateway_ports.insert(resolved);
                if !is_tls_server(&server) {
                    plaintext.insert(resolved, key.clone());
                }
                if is_http_server(&server) {
                    m.by_route.insert(rn.clone(), vec![idx]);
                }
                push_server(&mut m);
                m.ports.push(PortGroup {
                    number: resolved,
                    protocol: port.protocol.clone(),
                    bind: server.bind.clone(),
                    servers: vec![idx],
                    route_name: rn.clone(),
                });
                group_of.insert(key, m.ports.len() - 1);
            }
        }
    }
    m
}

// === Listeners ===

/// `buildGatewayConnectionManager` + `buildHTTPConnectionManager` for the gateway class.
fn connection_manager(ctx: &Context<'_>, stat_prefix: String, route_name: &str) -> listener::Filter {
    let c = hcm::HttpConnectionManager {
        codec_type: hcm::http_connection_manager::CodecType::Auto as i32,
        stat_prefix,
        route_specifier: Some(rds(route_name)),
        http_filters: http_filters(),
        normalize_path: bool_value(true),
        path_with_escaped_slashes_action:
            hcm::http_connection_manager::PathWithEscapedSlashesAction::KeepUnchanged as i32,
        use_remote_address: bool_value(true),
        forward_client_cert_details: hcm::http_connection_manager::ForwardClientCertDetails::SanitizeSet
            as i32,
        set_current_client_cert_details: Some(hcm::http_connection_manager::SetCurrentClientCertDetails {
            subject: bool_value(true),
            cert: true,
            uri: true,
            dns: true,
            ..Default::default()
        }),
        server_name: "istio-envoy".into(),
        http_protocol_options: Some(core::Http1ProtocolOptions::default()),
        upgrade_configs: vec![hcm::http_connection_manager::UpgradeConfig {
            upgrade_type: "websocket".into(),
            ..Default::default()
        }],
        stream_idle_timeout: Some(super::secs(0)),
        // Envoy ≥1.33 trusts `x-envoy-*` headers only from these (Istio relied on the older
        // default of private ranges); 198.18.0.0/15 is Skiff's test range.
        internal_address_config: Some(hcm::http_connection_manager::InternalAddressConfig {
            cidr_ranges: INTERNAL_CIDRS.iter().map(|(p, l)| cidr(p, *l)).collect(),
            ..Default::default()
        }),
        access_log: access_logs(ctx),
        ..Default::default()
    };
    filter("envoy.filters.network.http_connection_manager", any(&c))
}

fn sds_config(name: &str) -> tls::SdsSecretConfig {
    tls::SdsSecretConfig {
        name: name.to_owned(),
        // No initial_fetch_timeout here, as Istio: a missing Secret must not block the listener.
        sds_config: Some(core::ConfigSource {
            resource_api_version: core::ApiVersion::V3 as i32,
            config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
                core::AggregatedConfigSource {},
            )),
            ..Default::default()
        }),
    }
}

fn exact_matchers(names: &[String]) -> Vec<matcher::StringMatcher> {
    names
        .iter()
        .map(|n| matcher::StringMatcher {
            match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(n.clone())),
            ..Default::default()
        })
        .collect()
}

fn tls_version(p: Option<TlsProtocol>) -> Option<i32> {
    use tls::tls_parameters::TlsProtocol as T;
    Some(match p? {
        TlsProtocol::TlsAuto => return None,
        TlsProtocol::TlsV1_0 => T::TlSv10,
        TlsProtocol::TlsV1_1 => T::TlSv11,
        TlsProtocol::TlsV1_2 => T::TlSv12,
        TlsProtocol::TlsV1_3 => T::TlSv13,
    } as i32)
}

/// Istio's `BuildListenerTLSContext` for a gateway server. A `credentialName` is fetched over ADS
/// as `kubernetes://NAME`; certificate files (`serverCertificate`/`privateKey`) are read by the
/// proxy from disk (Istio routes those through pilot-agent's SDS, which Skiff does not run).
/// `match_subject_alt_names` is the field Istio 1.19 sets (deprecated in newer Envoy API).
#[allow(deprecated)]
pub fn downstream_tls(t: &ServerTlsSettings) -> tls::DownstreamTlsContext {
    let mode = t.mode.unwrap_or(ServerTlsMode::Passthrough);
    let mutual = matches!(mode, ServerTlsMode::Mutual | ServerTlsMode::IstioMutual);
    let mut common = tls::CommonTlsContext {
        alpn_protocols: vec!["h2".into(), "http/1.1".into()],
        ..Default::default()
    };
    if !t.credential_name.is_empty() {
        common.tls_certificate_sds_secret_configs =
            vec![sds_config(&credential_resource(&t.credential_name))];
        if matches!(mode, ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual) {
            common.validation_context_type = Some(
                tls::common_tls_context::ValidationContextType::CombinedValidationContext(
                    tls::common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(tls::CertificateValidationContext {
                            match_subject_alt_names: exact_matchers(&t.subject_alt_names),
                            verify_certificate_spki: t.verify_certificate_spki.clone(),
                            verify_certificate_hash: t.verify_certificate_hash.clone(),
                            ..Default::default()
                        }),
                        validation_context_sds_secret_config: Some(sds_config(&format!(
                            "{}{CA_SUFFIX}",
                            credential_resource(&t.credential_name)
                        ))),
                        ..Default::default()
                    },
                ),
            );
        } else if !t.subject_alt_names.is_empty() {
            common.validation_context_type =
                Some(tls::common_tls_context::ValidationContextType::ValidationContext(
                    tls::CertificateValidationContext {
                        match_subject_alt_names: exact_matchers(&t.subject_alt_names),
                        ..Default::default()
                    },
                ));
        }
    } else if !t.server_certificate.is_empty() {
        let file = |f: &str| {
            Some(core::DataSource {
                specifier: Some(core::data_source::Specifier::Filename(f.to_owned())),
                ..Default::default()
            })
        };
        common.tls_certificates = vec![tls::TlsCertificate {
            certificate_chain: file(&t.server_certificate),
            private_key: file(&t.private_key),
            ..Default::default()
        }];
        if !t.ca_certificates.is_empty() {
            common.validation_context_type =
                Some(tls::common_tls_context::ValidationContextType::ValidationContext(
                    tls::CertificateValidationContext {
                        trusted_ca: file(&t.ca_certificates),
                        match_subject_alt_names: exact_matchers(&t.subject_alt_names),
                        ..Default::default()
                    },
                ));
        }
    }
    if matches!(
        mode,
        ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
    ) {
        let min = tls_version(t.min_protocol_version);
        let max = tls_version(t.max_protocol_version);
        if min.is_some() || max.is_some() || !t.cipher_suites.is_empty() {
            common.tls_params = Some(tls::TlsParameters {
                tls_minimum_protocol_version: min.unwrap_or_default(),
                tls_maximum_protocol_version: max.unwrap_or_default(),
                cipher_suites: t.cipher_suites.clone(),
                ..Default::default()
            });
        }
    }
    tls::DownstreamTlsContext {
        common_tls_context: Some(common),
        require_client_certificate: bool_value(mutual),
        ..Default::default()
    }
}

fn transport_socket(ctx: &tls::DownstreamTlsContext) -> Option<core::TransportSocket> {
    Some(core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(any(ctx))),
    })
}

/// One gateway filter chain before it becomes Envoy's (Istio's `filterChainOpts`).
struct Chain {
    sni: Vec<String>,
    tls: Option<tls::DownstreamTlsContext>,
    filters: Vec<listener::Filter>,
}

impl Chain {
    fn chain_match(&self) -> Option<listener::FilterChainMatch> {
        if self.sni.is_empty() || self.sni.iter().any(|h| h == "*") {
            return None;
        }
        let mut sni = self.sni.clone();
        sni.sort();
        Some(listener::FilterChainMatch {
            server_names: sni,
            ..Default::default()
        })
    }
}

/// Istio's `pickMatchingGatewayHosts` (non-empty ⇒ the VirtualService applies to the server).
fn vs_matches_server(server: &Server, vs: &Resource<VirtualService>) -> bool {
    vs.spec.hosts.iter().any(|vh| {
        server.hosts.iter().any(|gh| {
            let gh = match gh.split_once('/') {
                Some((ns, _)) if ns != vs.namespace => return false,
                Some((_, h)) => h,
                None => gh.as_str(),
            };
            host::matches(gh, vh)
        })
    })
}

fn l4_match(port: u32, gateways: &[String], server: &Server, gateway: &str) -> bool {
    let server_port = server.port.as_ref().map_or(0, |p| p.number);
    (port == 0 || port == server_port) && (gateways.is_empty() || gateways.iter().any(|g| g == gateway))
}

/// `buildOutboundNetworkFilters` for a gateway's TCP route.
fn tcp_filters(
    ctx: &Context<'_>,
    routes: &[api::networking::RouteDestination],
    port: u16,
    vs: &Resource<VirtualService>,
) -> Vec<listener::Filter> {
    let cluster_of = |d: &api::networking::RouteDestination| {
        let dst = d.destination.clone().unwrap_or_default();
        vs::destination_cluster(&dst, ctx.service(&dst.host).map(|s| &**s), port)
    };
    if routes.len() == 1 {
        let c = cluster_of(&routes[0]);
        return vec![tcp(ctx, &c, &c)];
    }
    use xds::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tp;
    let c = tp::TcpProxy {
        stat_prefix: format!("{}.{}", vs.name, vs.namespace),
        cluster_specifier: Some(tp::tcp_proxy::ClusterSpecifier::WeightedClusters(
            tp::tcp_proxy::WeightedCluster {
                clusters: routes
                    .iter()
                    .filter(|d| d.weight > 0)
                    .map(|d| tp::tcp_proxy::weighted_cluster::ClusterWeight {
                        name: cluster_of(d),
                        weight: d.weight as u32,
                        ..Default::default()
                    })
                    .collect(),
            },
        )),
        access_log: access_logs(ctx),
        ..Default::default()
    };
    vec![filter("envoy.filters.network.tcp_proxy", any(&c))]
}

/// Istio's `createGatewayTCPFilterChainOpts`: plain TCP / TLS-terminated TCP from the bound
/// VirtualServices' `tcp` rules; `PASSTHROUGH` from their `tls` rules by SNI.
fn tcp_server_chains(
    ctx: &Context<'_>,
    gs: &GatewayServer,
    port: u16,
    sni_seen: &mut HashSet<String>,
) -> Vec<Chain> {
    let server = &gs.server;
    let server_port = server
        .port
        .as_ref()
        .map_or(0, |p| u16::try_from(p.number).unwrap_or(0));
    let vss = ctx
        .snap
        .config
        .virtual_services_for_gateway(&ctx.proxy.namespace, &gs.gateway_name);
    if !is_passthrough(server) {
        for vs in &vss {
            if !vs_matches_server(server, vs) {
                continue;
            }
            for rule in &vs.spec.tcp {
                let applies = rule.matches.is_empty()
                    || rule
                        .matches
                        .iter()
                        .any(|m| l4_match(m.port, &m.gateways, server, &gs.gateway_name));
                if applies {
                    return vec![Chain {
                        sni: if server.tls.is_some() {
                            gs.sni_hosts.clone()
                        } else {
                            Vec::new()
                        },
                        tls: server.tls.as_ref().map(downstream_tls),
                        filters: tcp_filters(ctx, &rule.route, server_port, vs),
                    }];
                }
            }
        }
        tracing::debug!(gateway = %gs.gateway_name, port, "gateway server has no TCP route; no chain");
        return Vec::new();
    }
    let mut out = Vec::new();
    for vs in &vss {
        if !vs_matches_server(server, vs) {
            continue;
        }
        for rule in &vs.spec.tls {
            for m in &rule.matches {
                if !l4_match(m.port, &m.gateways, server, &gs.gateway_name) {
                    continue;
                }
                let key = format!("{}|{}", m.sni_hosts.join(","), server.bind);
                if !sni_seen.insert(key) {
                    tracing::warn!(vs = %vs.key(), gateway = %gs.gateway_name, "duplicate SNI hosts on a passthrough port; rule skipped");
                    continue;
                }
                out.push(Chain {
                    sni: m.sni_hosts.clone(),
                    tls: None,
                    filters: tcp_filters(ctx, &rule.route, server_port, vs),
                });
            }
        }
    }
    out
}

fn build_listener(ctx: &Context<'_>, m: &Merged, group: &PortGroup) -> Option<listener::Listener> {
    let bind = if group.bind.is_empty() {
        "0.0.0.0"
    } else {
        group.bind.as_str()
    };
    let name = format!("{bind}_{}", group.number);
    let default_stat = format!("outbound_{name}");
    let mut chains = Vec::new();
    if Protocol::parse(&group.protocol).is_http() {
        chains.push(Chain {
            sni: Vec::new(),
            tls: None,
            filters: vec![connection_manager(ctx, default_stat.clone(), &group.route_name)],
        });
    } else {
        let mut sni_seen = HashSet::new();
        for &i in &group.servers {
            let gs = &m.servers[i];
            let terminates = protocol(&gs.server) == Protocol::Https
                && gs.server.tls.is_some()
                && !is_passthrough(&gs.server);
            if terminates {
                let stat = if gs.server.name.is_empty() {
                    default_stat.clone()
                } else {
                    gs.server.name.clone()
                };
                chains.push(Chain {
                    sni: gs.sni_hosts.clone(),
                    tls: gs.server.tls.as_ref().map(downstream_tls),
                    filters: vec![connection_manager(ctx, stat, &gs.route_name)],
                });
            } else {
                chains.extend(tcp_server_chains(ctx, gs, group.number, &mut sni_seen));
            }
        }
    }
    if chains.is_empty() {
        tracing::debug!(listener = %name, "gateway listener has no filter chains; omitted");
        return None;
    }
    let needs_inspector = chains.iter().any(|c| {
        !c.sni.is_empty()
            || c.tls
                .as_ref()
                .and_then(|t| t.common_tls_context.as_ref())
                .is_some_and(|t| !t.alpn_protocols.is_empty())
    });
    Some(listener::Listener {
        name: name.clone(),
        address: socket_address(bind, group.number),
        traffic_direction: core::TrafficDirection::Outbound as i32,
        listener_filters: if needs_inspector {
            vec![tls_inspector()]
        } else {
            Vec::new()
        },
        continue_on_listener_filters_timeout: true,
        filter_chains: chains
            .into_iter()
            .map(|c| listener::FilterChain {
                filter_chain_match: c.chain_match(),
                transport_socket: c.tls.as_ref().and_then(transport_socket),
                filters: c.filters,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    })
}

/// A gateway's listeners, one per resolved server port.
pub fn listeners(ctx: &Context<'_>) -> Vec<listener::Listener> {
    let m = merge(ctx);
    for s in &m.skipped {
        tracing::debug!(node = %ctx.proxy.id, "{s}");
    }
    let mut seen = HashSet::new();
    m.ports
        .iter()
        .filter_map(|g| build_listener(ctx, &m, g))
        .filter(|l| seen.insert(l.name.clone()))
        .collect()
}

/// The RDS names a gateway's listeners use.
pub fn rds_names(ctx: &Context<'_>) -> Vec<String> {
    merge(ctx)
        .by_route
        .keys()
        .filter(|k| !k.is_empty())
        .cloned()
        .collect()
}

/// The Secrets (SDS resource names) a gateway's listeners reference.
pub fn secret_names(ctx: &Context<'_>) -> Vec<String> {
    let mut names: Vec<String> = merge(ctx)
        .servers
        .iter()
        .filter_map(|s| s.server.tls.as_ref())
        .filter(|t| !t.credential_name.is_empty())
        .flat_map(|t| {
            let base = credential_resource(&t.credential_name);
            let mutual = matches!(
                t.mode,
                Some(ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual)
            );
            let ca = mutual.then(|| format!("{base}{CA_SUFFIX}"));
            std::iter::once(base).chain(ca)
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

// === Routes ===

/// A virtual host being assembled, with where its routes came from (for Istio's route collapse,
/// which merges hosts whose routes are the very same list).
struct VHost {
    vh: route::VirtualHost,
    sources: Vec<String>,
}

/// Istio's `buildGatewayHTTPRouteConfig`.
fn route_config(ctx: &Context<'_>, m: &Merged, name: &str) -> route::RouteConfiguration {
    let Some(servers) = m.by_route.get(name) else {
        return route::RouteConfiguration {
            name: name.to_owned(),
            validate_clusters: bool_value(false),
            ..Default::default()
        };
    };
    let mut routes_cache: HashMap<(String, String), Option<Vec<route::Route>>> = HashMap::new();
    let mut vhosts: BTreeMap<String, VHost> = BTreeMap::new();
    for &i in servers {
        let gs = &m.servers[i];
        let server = &gs.server;
        let port = server
            .port
            .as_ref()
            .map_or(0, |p| u16::try_from(p.number).unwrap_or(0));
        let https_redirect = server.tls.as_ref().is_some_and(|t| t.https_redirect);
        for vs in ctx
            .snap
            .config
            .virtual_services_for_gateway(&ctx.proxy.namespace, &gs.gateway_name)
        {
            let server_hosts = host::names_for_namespace(&server.hosts, &vs.namespace);
            let hosts = host::intersection(&server_hosts, &vs.spec.hosts);
            if hosts.is_empty() {
                continue;
            }
            let key = (gs.gateway_name.clone(), vs.key());
            let routes = routes_cache
                .entry(key.clone())
                .or_insert_with(|| {
                    let gateways = [gs.gateway_name.as_str()];
                    let target = Target {
                        port,
                        gateways: &gateways,
                        is_tls: server.tls.is_some(),
                    };
                    vs::http_routes(ctx, vs, &target)
                })
                .clone();
            let Some(routes) = routes else { continue };
            for h in hosts {
                match vhosts.get_mut(&h) {
                    Some(existing) => {
                        existing.vh.routes.extend(routes.iter().cloned());
                        existing.sources.push(format!("{}|{}", key.0, key.1));
                        if https_redirect {
                            existing.vh.require_tls = route::virtual_host::TlsRequirementType::All as i32;
                        }
                    }
                    None => {
                        let vh = route::VirtualHost {
                            name: format!("{h}:{port}"),
                            domains: vec![h.clone()],
                            routes: routes.clone(),
                            include_request_attempt_count: true,
                            require_tls: if https_redirect {
                                route::virtual_host::TlsRequirementType::All as i32
                            } else {
                                0
                            },
                            ..Default::default()
                        };
                        vhosts.insert(
                            h.clone(),
                            VHost {
                                vh,
                                sources: vec![format!("{}|{}", key.0, key.1)],
                            },
                        );
                    }
                }
            }
        }
        if https_redirect {
            for h in &server.hosts {
                match vhosts.get_mut(h) {
                    Some(v) => v.vh.require_tls = route::virtual_host::TlsRequirementType::All as i32,
                    None => {
                        vhosts.insert(
                            h.clone(),
                            VHost {
                                vh: route::VirtualHost {
                                    name: format!("{h}:{port}"),
                                    domains: vec![h.clone()],
                                    include_request_attempt_count: true,
                                    require_tls: route::virtual_host::TlsRequirementType::All as i32,
                                    ..Default::default()
                                },
                                sources: Vec::new(),
                            },
                        );
                    }
                }
            }
        }
    }
    let mut out: Vec<route::VirtualHost> = if vhosts.is_empty() {
        let port = servers
            .first()
            .and_then(|&i| m.servers[i].server.port.as_ref())
            .map_or(0, |p| p.number);
        vec![route::VirtualHost {
            name: format!("blackhole:{port}"),
            domains: vec!["*".into()],
            ..Default::default()
        }]
    } else {
        // Istio's `collapseDuplicateRoutes`: hosts (alphabetically) whose routes are the same list
        // join the first one's domains.
        let mut collapsed: Vec<VHost> = Vec::new();
        for (_, v) in vhosts {
            let same = collapsed.iter_mut().find(|c| {
                !v.sources.is_empty()
                    && c.sources == v.sources
                    && c.vh.require_tls == v.vh.require_tls
                    && c.vh.include_request_attempt_count == v.vh.include_request_attempt_count
            });
            match same {
                Some(c) => c.vh.domains.extend(v.vh.domains),
                None => collapsed.push(v),
            }
        }
        collapsed
            .into_iter()
            .map(|mut v| {
                // Istio's `SortVHostRoutes`: catch-all routes last, others in order.
                let (all, rest): (Vec<route::Route>, Vec<route::Route>) =
                    v.vh.routes.drain(..).partition(vs::is_catch_all);
                v.vh.routes = rest.into_iter().chain(all).collect();
                v.vh
            })
            .collect()
    };
    out.sort_by(|a, b| a.name.cmp(&b.name));
    route::RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts: out,
        validate_clusters: bool_value(false),
        ignore_port_in_host_matching: true,
        max_direct_response_body_size_bytes: u32_value(1_048_576),
        ..Default::default()
    }
}

/// The gateway's route configurations named (all when `names` is empty).
pub fn routes(ctx: &Context<'_>, names: &[String]) -> Vec<route::RouteConfiguration> {
    let m = merge(ctx);
    let names: Vec<String> = if names.is_empty() {
        m.by_route.keys().filter(|k| !k.is_empty()).cloned().collect()
    } else {
        names.to_vec()
    };
    names.iter().map(|n| route_config(ctx, &m, n)).collect()
}
