//! RDS: route `"80"` (one virtual host per Service:port, Istio 1.19+ domains, VirtualService
//! routes for the hosts they name, the `allow_any`/`block_all` catch-all), sniffed routes
//! `FQDN:PORT`, and the inline inbound route configs (reference §2, Istio's `httproute.go`
//! `BuildSidecarOutboundVirtualHosts`).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use api::host;
use xds::pb::envoy::config::route::v3 as route;

use super::vs::{self, Target};
use super::{bool_value, outbound_cluster_name, secs, u32_value, Context, PASSTHROUGH};
use crate::proxy::NodeType;
use crate::snapshot::{ListenerProtocol, Resolution, ServiceInfo};

pub use super::vs::default_retry_policy;

fn prefix_match() -> Option<route::RouteMatch> {
    Some(route::RouteMatch {
        path_specifier: Some(route::route_match::PathSpecifier::Prefix("/".into())),
        ..Default::default()
    })
}

/// Domains of a Service's virtual host for a client in `proxy_ns` (Istio 1.19+: no `:port`
/// forms, the VIP last; `generateVirtualHostDomains`). Hosts that are not Kubernetes Service
/// names (ServiceEntry hosts) get no short forms.
pub fn domains(svc: &ServiceInfo, proxy_ns: &str) -> Vec<String> {
    let (name, ns) = (&svc.name, &svc.namespace);
    let mut d = vec![svc.hostname.clone()];
    if svc.service_entry.is_none() {
        if ns == proxy_ns {
            d.extend([name.clone(), format!("{name}.{ns}.svc"), format!("{name}.{ns}")]);
        } else {
            d.extend([format!("{name}.{ns}"), format!("{name}.{ns}.svc")]);
        }
    }
    match svc.vip {
        Some(vip) => d.push(match vip {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        }),
        None if svc.resolution == Resolution::Passthrough && svc.service_entry.is_none() => {
            let wild: Vec<String> = d.iter().map(|h| format!("*.{h}")).collect();
            d.extend(wild);
        }
        None => {}
    }
    d
}

/// The alternative names of a Service that `dedupeDomains` must not drop for colliding with
/// another Service's FQDN (they are this Service's own short names).
fn alt_hosts(svc: &ServiceInfo, proxy_ns: &str) -> Vec<String> {
    let mut d = domains(svc, proxy_ns);
    d.retain(|h| h != &svc.hostname && svc.vip.is_none_or(|v| h != &v.to_string()));
    d
}

#[allow(deprecated)]
fn catch_all(ctx: &Context<'_>) -> route::VirtualHost {
    if ctx.allow_any() {
        return route::VirtualHost {
            name: "allow_any".into(),
            domains: vec!["*".into()],
            routes: vec![route::Route {
                name: "allow_any".into(),
                r#match: prefix_match(),
                action: Some(route::route::Action::Route(route::RouteAction {
                    cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(
                        PASSTHROUGH.into(),
                    )),
                    timeout: Some(secs(0)),
                    max_grpc_timeout: Some(secs(0)),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            include_request_attempt_count: true,
            ..Default::default()
        };
    }
    route::VirtualHost {
        name: "block_all".into(),
        domains: vec!["*".into()],
        routes: vec![route::Route {
            name: "block_all".into(),
            r#match: prefix_match(),
            action: Some(route::route::Action::DirectResponse(
                route::DirectResponseAction {
                    status: 502,
                    ..Default::default()
                },
            )),
            ..Default::default()
        }],
        include_request_attempt_count: true,
        ..Default::default()
    }
}

fn config(name: &str, virtual_hosts: Vec<route::VirtualHost>) -> route::RouteConfiguration {
    route::RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts,
        validate_clusters: bool_value(false),
        max_direct_response_body_size_bytes: u32_value(1_048_576),
        ignore_port_in_host_matching: true,
        ..Default::default()
    }
}

/// Istio's `VirtualHostWrapper`: routes for some Services and plain (non-registry) hosts on a port.
struct Wrapper {
    port: u16,
    services: Vec<Arc<ServiceInfo>>,
    hosts: Vec<String>,
    routes: Vec<route::Route>,
}

/// Istio's `BuildSidecarOutboundVirtualHosts` for listener port `port` (vhosts not yet sorted,
/// no catch-all).
fn port_virtual_hosts(ctx: &Context<'_>, port: u16) -> Vec<route::VirtualHost> {
    // Services having this port (any protocol), by hostname.
    let mut by_name: BTreeMap<String, Arc<ServiceInfo>> = ctx
        .services()
        .filter(|s| s.ports.iter().any(|p| p.port == port))
        .map(|s| (s.hostname.clone(), s.clone()))
        .collect();
    let http_or_sniffed = |s: &ServiceInfo| {
        s.ports.iter().any(|p| {
            p.port == port
                && matches!(
                    p.protocol.listener(),
                    ListenerProtocol::Http | ListenerProtocol::Auto
                )
        })
    };
    let mut wrappers: Vec<Wrapper> = Vec::new();
    let mesh = [api::MESH_GATEWAY];
    let target = Target {
        port,
        gateways: &mesh,
        is_tls: false,
    };
    for vs in &ctx.scope().virtual_services {
        // Istio's "listenerPort != 80" hack: elsewhere only VirtualServices naming a Service.
        if port != 80
            && !vs
                .spec
                .hosts
                .iter()
                .any(|h| by_name.keys().any(|n| host::matches(h, n)))
        {
            continue;
        }
        let Some(routes) = vs::http_routes(ctx, vs, &target) else {
            continue;
        };
        // Istio's `separateVSHostsAndServices`.
        let mut hosts = Vec::new();
        let mut services: Vec<Arc<ServiceInfo>> = Vec::new();
        for h in &vs.spec.hosts {
            if !host::is_wildcard(h) {
                match by_name.get(h) {
                    Some(s) => services.push(s.clone()),
                    None => hosts.push(h.clone()),
                }
            } else {
                let matched: Vec<Arc<ServiceInfo>> = by_name
                    .iter()
                    .filter(|(n, _)| host::matches(n, h))
                    .map(|(_, s)| s.clone())
                    .collect();
                if matched.is_empty() {
                    hosts.push(h.clone());
                }
                services.extend(matched);
            }
        }
        let http_services: Vec<Arc<ServiceInfo>> =
            services.iter().filter(|s| http_or_sniffed(s)).cloned().collect();
        if http_services.is_empty() && port != 80 {
            continue;
        }
        // Services with a VirtualService get no default virtual host.
        for s in &services {
            by_name.remove(&s.hostname);
        }
        wrappers.push(Wrapper {
            port,
            services: http_services,
            hosts,
            routes,
        });
    }
    for svc in by_name.values() {
        if !http_or_sniffed(svc) {
            continue;
        }
        let cluster = outbound_cluster_name(port, &svc.hostname);
        let hash = vs::service_hash(ctx, svc, port);
        wrappers.push(Wrapper {
            port,
            services: vec![svc.clone()],
            hosts: Vec::new(),
            routes: vec![vs::default_route(
                ctx,
                cluster,
                format!("{}:{port}/*", svc.hostname),
                hash.as_ref(),
            )],
        });
    }
    let known_fqdn: HashSet<String> = wrappers
        .iter()
        .flat_map(|w| {
            w.services
                .iter()
                .flat_map(move |s| [format!("{}:{}", s.hostname, w.port), s.hostname.clone()])
        })
        .collect();
    let mut names = HashSet::new();
    let mut seen_domains = HashSet::new();
    let mut out = Vec::new();
    let proxy_ns = ctx.proxy.namespace.as_str();
    for w in &wrappers {
        let candidates = w
            .hosts
            .iter()
            .map(|h| (h.clone(), vec![h.clone()], Vec::new()))
            .chain(
                w.services
                    .iter()
                    .map(|s| (s.hostname.clone(), domains(s, proxy_ns), alt_hosts(s, proxy_ns))),
            );
        for (hostname, doms, alts) in candidates {
            let name = format!("{hostname}:{}", w.port);
            if !names.insert(name.clone()) {
                continue;
            }
            // Istio's `dedupeDomains`: a domain already used goes, and so does a short name that
            // is some Service's real FQDN.
            let doms: Vec<String> = doms
                .into_iter()
                .filter(|d| {
                    if seen_domains.contains(d) || (alts.contains(d) && known_fqdn.contains(d)) {
                        return false;
                    }
                    seen_domains.insert(d.clone());
                    true
                })
                .collect();
            if doms.is_empty() {
                continue;
            }
            out.push(route::VirtualHost {
                name,
                domains: doms,
                routes: w.routes.clone(),
                include_request_attempt_count: true,
                ..Default::default()
            });
        }
    }
    out
}

/// Route `"<port>"`: virtual hosts sorted by name, then the catch-all.
fn port_route(ctx: &Context<'_>, name: &str, port: u16) -> route::RouteConfiguration {
    let mut vhosts = port_virtual_hosts(ctx, port);
    vhosts.sort_by(|a, b| a.name.cmp(&b.name));
    vhosts.push(catch_all(ctx));
    config(name, vhosts)
}

/// Route `"<fqdn>:<port>"` of a sniffed listener bound to a VIP (Istio's
/// `getVirtualHostsForSniffedServicePort`): the port's virtual hosts whose domains name the route,
/// else all of them; a single one answers any Host.
fn sniffed_route(ctx: &Context<'_>, name: &str) -> Option<route::RouteConfiguration> {
    let (_, port) = name.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let all = port_virtual_hosts(ctx, port);
    let mut vhosts: Vec<route::VirtualHost> = all
        .iter()
        .filter(|v| v.domains.iter().any(|d| d == name))
        .cloned()
        .collect();
    if vhosts.is_empty() {
        vhosts = all;
    }
    if vhosts.len() == 1 {
        vhosts[0].domains = vec!["*".into()];
    }
    vhosts.sort_by(|a, b| a.name.cmp(&b.name));
    Some(config(name, vhosts))
}

/// The route configurations named (all that this proxy's listeners use when `names` is empty).
/// Unknown names get an empty configuration, as istiod answers.
pub fn routes(ctx: &Context<'_>, names: &[String]) -> Vec<route::RouteConfiguration> {
    if ctx.proxy.node_type == NodeType::Router {
        return super::gateway::routes(ctx, names);
    }
    let names: Vec<String> = if names.is_empty() {
        super::listener::rds_names(ctx)
    } else {
        names.to_vec()
    };
    names
        .iter()
        .map(|n| {
            let built = match n.parse::<u16>() {
                Ok(port) => Some(port_route(ctx, n, port)),
                Err(_) => sniffed_route(ctx, n),
            };
            built.unwrap_or_else(|| route::RouteConfiguration {
                name: n.clone(),
                validate_clusters: bool_value(false),
                ..Default::default()
            })
        })
        .collect()
}

/// The inline route of an inbound HTTP chain: `inbound|<target>||`, vhost `inbound|http|<port>`.
pub fn inbound_route(target_port: u16, service_port: u16, operation: String) -> route::RouteConfiguration {
    let cluster = super::inbound_cluster_name(target_port);
    route::RouteConfiguration {
        name: cluster.clone(),
        virtual_hosts: vec![route::VirtualHost {
            name: format!("inbound|http|{service_port}"),
            domains: vec!["*".into()],
            routes: vec![inbound_default_route(cluster, operation)],
            ..Default::default()
        }],
        validate_clusters: bool_value(false),
        ..Default::default()
    }
}

fn inbound_default_route(cluster: String, operation: String) -> route::Route {
    route::Route {
        name: "default".into(),
        r#match: prefix_match(),
        action: Some(route::route::Action::Route(route::RouteAction {
            cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(cluster)),
            timeout: Some(secs(0)),
            max_stream_duration: Some(route::route_action::MaxStreamDuration {
                max_stream_duration: Some(secs(0)),
                grpc_timeout_header_max: Some(secs(0)),
                ..Default::default()
            }),
            ..Default::default()
        })),
        decorator: Some(route::Decorator {
            operation,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The inline route of the inbound passthrough HTTP chain.
pub fn inbound_passthrough_route() -> route::RouteConfiguration {
    let name = super::INBOUND_PASSTHROUGH.to_owned();
    route::RouteConfiguration {
        name: name.clone(),
        virtual_hosts: vec![route::VirtualHost {
            name: "inbound|http|0".into(),
            domains: vec!["*".into()],
            routes: vec![inbound_default_route(name, ":0/*".into())],
            ..Default::default()
        }],
        validate_clusters: bool_value(false),
        ..Default::default()
    }
}
