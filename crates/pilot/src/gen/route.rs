//! RDS: route `"80"` (one virtual host per Service:port, Istio 1.19+ domains, the `allow_any`
//! catch-all), sniffed routes `FQDN:PORT`, and the inline inbound route configs (reference §2).

use std::collections::HashSet;

use xds::pb::envoy::config::route::v3 as route;
use xds::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;

use super::{any, bool_value, outbound_cluster_name, secs, u32_value, Context, PASSTHROUGH};
use crate::snapshot::{ListenerProtocol, ServiceInfo};

/// Istio's default retry policy (`route/retry/retry.go`, 1.19–1.23).
pub fn default_retry_policy() -> route::RetryPolicy {
    route::RetryPolicy {
        retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes".into(),
        num_retries: u32_value(2),
        retry_host_predicate: vec![route::retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".into(),
            config_type: Some(
                route::retry_policy::retry_host_predicate::ConfigType::TypedConfig(any(
                    &PreviousHostsPredicate {},
                )),
            ),
        }],
        host_selection_retry_max_attempts: 5,
        retriable_status_codes: vec![503],
        ..Default::default()
    }
}

fn prefix_match() -> Option<route::RouteMatch> {
    Some(route::RouteMatch {
        path_specifier: Some(route::route_match::PathSpecifier::Prefix("/".into())),
        ..Default::default()
    })
}

/// `{name: default, match: {prefix: /}, route: {cluster, timeout 0s, retry_policy, max_grpc_timeout 0s},
/// decorator: {operation: FQDN:PORT/*}}`.
#[allow(deprecated)]
fn default_route(cluster: String, operation: String) -> route::Route {
    route::Route {
        name: "default".into(),
        r#match: prefix_match(),
        action: Some(route::route::Action::Route(route::RouteAction {
            cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(cluster)),
            timeout: Some(secs(0)),
            retry_policy: Some(default_retry_policy()),
            max_grpc_timeout: Some(secs(0)),
            ..Default::default()
        })),
        decorator: Some(route::Decorator {
            operation,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Domains of a Service's virtual host for a client in `proxy_ns` (Istio 1.19+: no `:port`
/// forms, the VIP last; `generateVirtualHostDomains`).
pub fn domains(svc: &ServiceInfo, proxy_ns: &str) -> Vec<String> {
    let (name, ns) = (&svc.name, &svc.namespace);
    let mut d = vec![svc.hostname.clone()];
    if ns == proxy_ns {
        d.extend([name.clone(), format!("{name}.{ns}.svc"), format!("{name}.{ns}")]);
    } else {
        d.extend([format!("{name}.{ns}"), format!("{name}.{ns}.svc")]);
    }
    match svc.vip {
        Some(vip) => d.push(match vip {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        }),
        None => {
            let wild: Vec<String> = d.iter().map(|h| format!("*.{h}")).collect();
            d.extend(wild);
        }
    }
    d
}

fn virtual_host(svc: &ServiceInfo, port: u16, proxy_ns: &str) -> route::VirtualHost {
    let vh_name = format!("{}:{port}", svc.hostname);
    route::VirtualHost {
        name: vh_name.clone(),
        domains: domains(svc, proxy_ns),
        routes: vec![default_route(
            outbound_cluster_name(port, &svc.hostname),
            format!("{vh_name}/*"),
        )],
        include_request_attempt_count: true,
        ..Default::default()
    }
}

#[allow(deprecated)]
fn allow_any() -> route::VirtualHost {
    route::VirtualHost {
        name: "allow_any".into(),
        domains: vec!["*".into()],
        routes: vec![route::Route {
            name: "allow_any".into(),
            r#match: prefix_match(),
            action: Some(route::route::Action::Route(route::RouteAction {
                cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(PASSTHROUGH.into())),
                timeout: Some(secs(0)),
                max_grpc_timeout: Some(secs(0)),
                ..Default::default()
            })),
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

/// Route `"<port>"`: every Service with that port that is HTTP or sniffed, vhosts sorted by name,
/// duplicate domains dropped (first wins), then `allow_any`.
fn port_route(ctx: &Context<'_>, name: &str, port: u16) -> route::RouteConfiguration {
    let mut vhosts: Vec<route::VirtualHost> = ctx
        .services()
        .flat_map(|svc| {
            svc.ports
                .iter()
                .filter(move |p| {
                    p.port == port
                        && matches!(
                            p.protocol.listener(),
                            ListenerProtocol::Http | ListenerProtocol::Auto
                        )
                })
                .map(move |p| virtual_host(svc, p.port, &ctx.proxy.namespace))
        })
        .collect();
    vhosts.sort_by(|a, b| a.name.cmp(&b.name));
    vhosts.dedup_by(|a, b| a.name == b.name);
    let mut seen = HashSet::new();
    for vh in &mut vhosts {
        vh.domains.retain(|d| seen.insert(d.clone()));
    }
    vhosts.push(allow_any());
    config(name, vhosts)
}

/// Route `"<fqdn>:<port>"` of a sniffed listener bound to a VIP: that Service only, any Host.
fn sniffed_route(ctx: &Context<'_>, name: &str) -> Option<route::RouteConfiguration> {
    let (host, port) = name.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let svc = ctx.services().find(|s| s.hostname == host)?;
    svc.ports.iter().find(|p| p.port == port)?;
    let mut vh = virtual_host(svc, port, &ctx.proxy.namespace);
    vh.domains = vec!["*".into()];
    Some(config(name, vec![vh]))
}

/// The route configurations named (all that this proxy's listeners use when `names` is empty).
/// Unknown names get an empty configuration, as istiod answers.
pub fn routes(ctx: &Context<'_>, names: &[String]) -> Vec<route::RouteConfiguration> {
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
