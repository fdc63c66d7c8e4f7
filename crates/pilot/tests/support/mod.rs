//! Shared by the golden tests: load a testdata directory as the config-dir registry does,
//! generate one proxy's resources (each accepted by Skiff's proxy), and turn them into
//! `istioctl proxy-config` rows with istioctl's own rules (reference §6.1–6.4).

#![allow(clippy::unwrap_used, dead_code)]

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use pilot::gen::{self, Context, MeshConfig};
use pilot::proxy::Proxy;
use pilot::registry::dir::ConfigDir;
use pilot::registry::{Event, Store};
use pilot::snapshot::Snapshot;
use prost::Message;
use xds::pb::envoy::config::cluster::v3::Cluster;
use xds::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds::pb::envoy::config::listener::v3::{filter, FilterChain, Listener};
use xds::pb::envoy::config::route::v3::{route, route_action, RouteConfiguration};
use xds::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use xds::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};

pub fn snapshot(dir: &str) -> Arc<Snapshot> {
    snapshot_expecting(dir, &[])
}

/// A testdata directory's snapshot whose registry problems are exactly `expected`.
pub fn snapshot_expecting(dir: &str, expected: &[&str]) -> Arc<Snapshot> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/testdata")
        .join(dir);
    let mut src = ConfigDir::new(path, std::time::Duration::from_secs(1));
    let mut store = Store::default();
    for e in src.scan() {
        assert!(!matches!(e, Event::Problem { problem: Some(_), .. }), "{e:?}");
        store.apply(e);
    }
    store.apply(Event::Synced);
    let snap = store.rebuild();
    assert_eq!(snap.problems, expected, "registry problems");
    snap
}

pub fn sidecar(ip: &str, pod: &str, ns: &str) -> Proxy {
    Proxy::sidecar(ip.parse::<IpAddr>().unwrap(), pod, ns)
}

pub struct Generated {
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
    pub clusters: Vec<Cluster>,
    pub endpoints: Vec<ClusterLoadAssignment>,
}

pub fn generate(snap: &Snapshot, proxy: &Proxy) -> Generated {
    let mesh = MeshConfig::default();
    let ctx = Context::new(snap, proxy, &mesh);
    let g = Generated {
        listeners: gen::listener::listeners(&ctx),
        routes: gen::route::routes(&ctx, &[]),
        clusters: gen::cluster::clusters(&ctx),
        endpoints: gen::endpoint::endpoints(&ctx, &[]),
    };
    accepted_by_skiff_proxy(&g);
    g
}

/// Skiff's own proxy must take every generated resource without an error.
pub fn accepted_by_skiff_proxy(g: &Generated) {
    let mut warnings = Vec::new();
    for l in &g.listeners {
        proxy::convert::listener(l, &mut warnings).unwrap_or_else(|e| panic!("{e}"));
    }
    for r in &g.routes {
        proxy::convert::route_config(r, &mut warnings).unwrap_or_else(|e| panic!("{e}"));
    }
    for c in &g.clusters {
        proxy::convert::cluster(c, &mut warnings).unwrap_or_else(|e| panic!("{e}"));
    }
    for e in &g.endpoints {
        let ctx = proxy::convert::Ctx::new("cluster", &e.cluster_name, &mut warnings);
        proxy::convert::load_assignment(&ctx, "endpoints", e, false).unwrap_or_else(|e| panic!("{e}"));
    }
}

// === istioctl's table rules (reference §6.1–6.4) ===

pub fn typed<M: Message + Default>(any: &xds::pb::google::protobuf::Any) -> M {
    M::decode(any.value.as_slice()).unwrap()
}

pub fn chain_match(fc: &FilterChain) -> String {
    let Some(m) = &fc.filter_chain_match else {
        return "ALL".into();
    };
    let mut parts = Vec::new();
    if !m.server_names.is_empty() {
        parts.push(format!("SNI: {}", m.server_names.join(",")));
    }
    if !m.transport_protocol.is_empty() {
        parts.push(format!("Trans: {}", m.transport_protocol));
    }
    if !m.application_protocols.is_empty() {
        parts.push(format!("App: {}", m.application_protocols.join(",")));
    }
    let port = m.destination_port.as_ref().map(|p| p.value);
    if !m.prefix_ranges.is_empty() {
        let ranges: Vec<String> = m
            .prefix_ranges
            .iter()
            .map(|r| {
                format!(
                    "{}/{}",
                    r.address_prefix,
                    r.prefix_len.as_ref().map_or(0, |l| l.value)
                )
            })
            .collect();
        let mut s = format!("Addr: {}", ranges.join(","));
        if let Some(p) = port {
            s.push_str(&format!(":{p}"));
        }
        parts.push(s);
    } else if let Some(p) = port {
        parts.push(format!("Addr: *:{p}"));
    }
    if parts.is_empty() {
        "ALL".into()
    } else {
        parts.join("; ")
    }
}

pub fn cluster_label(name: &str) -> String {
    if name.contains("Cluster") {
        name.to_owned()
    } else {
        format!("Cluster: {name}")
    }
}

pub fn destination(fc: &FilterChain) -> String {
    for f in &fc.filters {
        let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            continue;
        };
        if any.type_url.ends_with("HttpConnectionManager") {
            let h: HttpConnectionManager = typed(any);
            match h.route_specifier.unwrap() {
                RouteSpecifier::Rds(r) => return format!("Route: {}", r.route_config_name),
                RouteSpecifier::RouteConfig(rc) => {
                    let vh = &rc.virtual_hosts[0];
                    let Some(route::Action::Route(a)) = &vh.routes[0].action else {
                        panic!()
                    };
                    let Some(route_action::ClusterSpecifier::Cluster(c)) = &a.cluster_specifier else {
                        panic!()
                    };
                    return cluster_label(c);
                }
                RouteSpecifier::ScopedRoutes(_) => panic!(),
            }
        }
        if any.type_url.ends_with("TcpProxy") {
            let t: TcpProxy = typed(any);
            let Some(tcp_proxy::ClusterSpecifier::Cluster(c)) = t.cluster_specifier else {
                panic!()
            };
            if c == "BlackHoleCluster" {
                return "Non-HTTP/Non-TCP".into();
            }
            return cluster_label(&c);
        }
    }
    "Non-HTTP/Non-TCP".into()
}

/// `ADDRESSES PORT MATCH DESTINATION` rows (columns joined by ` | `).
pub fn listener_rows(ls: &[Listener]) -> BTreeSet<String> {
    let mut rows = BTreeSet::new();
    for l in ls {
        let Some(xds::pb::envoy::config::core::v3::address::Address::SocketAddress(sa)) =
            l.address.as_ref().and_then(|a| a.address.clone())
        else {
            panic!()
        };
        let Some(xds::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(port)) =
            sa.port_specifier
        else {
            panic!()
        };
        for fc in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
            rows.insert(format!(
                "{} | {port} | {} | {}",
                sa.address,
                chain_match(fc),
                destination(fc)
            ));
        }
    }
    rows
}

/// Parses an istioctl table by its header's column starts.
pub fn table(text: &str) -> Vec<Vec<String>> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().unwrap();
    let mut starts = vec![0];
    let bytes = header.as_bytes();
    for i in 1..bytes.len() {
        if bytes[i] != b' ' && bytes[i - 1] == b' ' && i >= 2 && bytes[i - 2] == b' ' {
            starts.push(i);
        }
    }
    // Single-space separated headers (the listener table) use the first row's layout instead.
    lines
        .map(|l| {
            let mut cells = Vec::new();
            for (n, s) in starts.iter().enumerate() {
                let end = starts.get(n + 1).copied().unwrap_or(l.len()).min(l.len());
                cells.push(l.get(*s..end).unwrap_or("").trim().to_owned());
            }
            cells
        })
        .collect()
}

/// `istioctl`'s `describeRouteDomains`.
pub fn describe_domains(d: &[String]) -> String {
    if d.len() == 1 {
        return d[0].clone();
    }
    let kept: Vec<&String> = d
        .iter()
        .filter(|x| !x.contains(':') || x.starts_with('['))
        .collect();
    let present: BTreeSet<&str> = kept.iter().map(|s| s.as_str()).collect();
    let unexpanded: Vec<&String> = kept
        .iter()
        .copied()
        .filter(|x| {
            let a = x.strip_suffix(".svc.cluster.local");
            let b = x.strip_suffix(".svc");
            !(a.is_some_and(|s| present.contains(s)) || b.is_some_and(|s| present.contains(s)))
        })
        .collect();
    if unexpanded.len() > 2 {
        format!(
            "{}, {} + {} more...",
            unexpanded[0],
            unexpanded[1],
            unexpanded.len() - 2
        )
    } else {
        unexpanded
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub fn cluster_row(c: &Cluster) -> String {
    use xds::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
    let t = match c.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(t).unwrap().as_str_name(),
        _ => "?",
    };
    let parts: Vec<&str> = c.name.split('|').collect();
    if parts.len() > 3 {
        let subset = if parts[2].is_empty() { "-" } else { parts[2] };
        format!("{} | {} | {subset} | {} | {t}", parts[3], parts[1], parts[0])
    } else {
        format!("{} | - | - | - | {t}", c.name)
    }
}

/// A registry snapshot from manifest texts (as if each were a file of a config directory).
pub fn snapshot_of(texts: &[&str]) -> Arc<Snapshot> {
    let mut store = Store::default();
    for (i, t) in texts.iter().enumerate() {
        let objs = pilot::model::parse_manifests(Path::new(&format!("doc{i}.yaml")), t)
            .unwrap_or_else(|e| panic!("{e}"));
        for o in objs {
            store.apply(Event::Added(Arc::new(o)));
        }
    }
    store.apply(Event::Synced);
    store.rebuild()
}

/// Generates with a given mesh config (and checks Skiff's proxy takes it).
pub fn generate_with(snap: &Snapshot, proxy: &Proxy, mesh: &MeshConfig) -> Generated {
    let ctx = Context::new(snap, proxy, mesh);
    let g = Generated {
        listeners: gen::listener::listeners(&ctx),
        routes: gen::route::routes(&ctx, &[]),
        clusters: gen::cluster::clusters(&ctx),
        endpoints: gen::endpoint::endpoints(&ctx, &[]),
    };
    accepted_by_skiff_proxy(&g);
    g
}

/// An ingress gateway proxy (`router~IP~POD.NS~NS.svc.cluster.local`).
pub fn router(ip: &str, pod: &str, ns: &str) -> Proxy {
    let mut p = sidecar(ip, pod, ns);
    p.node_type = pilot::proxy::NodeType::Router;
    p.id = p.id.replacen("sidecar~", "router~", 1);
    p
}

/// `filter_metadata.istio.config` rendered as istioctl does (`name.namespace`).
pub fn config_column(md: Option<&xds::pb::envoy::config::core::v3::Metadata>) -> String {
    use xds::pb::google::protobuf::value::Kind;
    let Some(Kind::StringValue(path)) = md
        .and_then(|m| m.filter_metadata.get("istio"))
        .and_then(|s| s.fields.get("config"))
        .and_then(|v| v.kind.as_ref())
    else {
        return String::new();
    };
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() == 8 && path.starts_with("/apis/networking.istio.io/v1alpha3/namespaces/") {
        format!("{}.{}", parts[7], parts[5])
    } else {
        "<unknown>".into()
    }
}

/// istioctl's `describeMatch`.
pub fn describe_match(m: Option<&xds::pb::envoy::config::route::v3::RouteMatch>) -> String {
    use xds::pb::envoy::config::route::v3::route_match::PathSpecifier;
    match m.and_then(|m| m.path_specifier.as_ref()) {
        Some(PathSpecifier::Prefix(p)) => format!("{p}*"),
        Some(PathSpecifier::Path(p)) => p.clone(),
        Some(PathSpecifier::SafeRegex(r)) => format!("regex {}", r.regex),
        Some(PathSpecifier::PathSeparatedPrefix(p)) => format!("PathPrefix:{p}"),
        _ => String::new(),
    }
}

/// `proxy-config route` rows: `NAME | VHOST NAME | DOMAINS | MATCH | VIRTUAL SERVICE`.
pub fn route_rows(rcs: &[RouteConfiguration]) -> BTreeSet<String> {
    let mut rows = BTreeSet::new();
    for rc in rcs {
        for vh in &rc.virtual_hosts {
            if vh.routes.is_empty() {
                rows.insert(format!(
                    "{} | {} | {} | /* | 404",
                    rc.name,
                    vh.name,
                    describe_domains(&vh.domains)
                ));
            }
            for r in &vh.routes {
                if let Some(route::Action::Route(a)) = &r.action {
                    if a.cluster_specifier
                        == Some(route_action::ClusterSpecifier::Cluster(
                            "PassthroughCluster".into(),
                        ))
                    {
                        continue;
                    }
                }
                rows.insert(format!(
                    "{} | {} | {} | {} | {}",
                    rc.name,
                    vh.name,
                    describe_domains(&vh.domains),
                    describe_match(r.r#match.as_ref()),
                    config_column(r.metadata.as_ref())
                ));
            }
        }
    }
    rows
}

/// `proxy-config cluster` rows with the DESTINATION RULE column.
pub fn cluster_rows(cs: &[Cluster]) -> BTreeSet<String> {
    cs.iter()
        .map(|c| {
            let dr = config_column(c.metadata.as_ref());
            let row = cluster_row(c);
            if dr.is_empty() {
                row
            } else {
                format!("{row} | {dr}")
            }
        })
        .collect()
}

/// Rows of an istioctl table (columns joined by ` | `, trailing empty cells dropped).
pub fn table_rows(text: &str) -> BTreeSet<String> {
    table(text)
        .into_iter()
        .map(|mut r| {
            while r.last().is_some_and(|c| c.is_empty()) {
                r.pop();
            }
            r.join(" | ")
        })
        .collect()
}
