//! `proxy-config listener`: one row per filter chain (`filter_chains`, then the
//! `default_filter_chain`), listeners ordered by port, address and type, chains within a
//! listener by DESTINATION descending — istioctl's `listener.go` writer.

use crate::gosort::sort_slice;
use crate::json::Json;
use crate::route::describe_match;
use crate::tabwriter::TabWriter;
use crate::{equal_fold, render_objects, ConfigDump, Error, Output};

const HCM: &str = "envoy.filters.network.http_connection_manager";
const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
const BLACKHOLE: &str = "BlackHoleCluster";

/// `--address`, `--port`, `--type`, `--verbose`.
#[derive(Clone, Debug)]
pub struct ListenerFilter {
    /// Matches the listener's address or one of its additional addresses, ignoring case.
    pub address: String,
    /// 0 = any.
    pub port: u32,
    /// HTTP, TCP, HTTP+TCP or UNKNOWN, ignoring case.
    pub kind: String,
    /// `--verbose` (istioctl's default, true): MATCH and DESTINATION per filter chain rather than
    /// one TYPE per listener.
    pub verbose: bool,
}

impl Default for ListenerFilter {
    fn default() -> Self {
        ListenerFilter {
            address: String::new(),
            port: 0,
            kind: String::new(),
            verbose: true,
        }
    }
}

impl ListenerFilter {
    /// Whether `l` passes the filter.
    pub fn verify(&self, l: &Json) -> bool {
        if !self.address.is_empty() {
            let mut addresses = additional_addresses(l);
            addresses.push(address(l).to_owned());
            if !addresses.iter().any(|a| equal_fold(a, &self.address)) {
                return false;
            }
        }
        if self.port != 0 && port(l) != u64::from(self.port) {
            return false;
        }
        if !self.kind.is_empty() && !equal_fold(listener_type(l), &self.kind) {
            return false;
        }
        true
    }
}

fn filter_chains(l: &Json) -> Vec<&Json> {
    let mut chains: Vec<&Json> = l.get("filter_chains").items().iter().collect();
    let default = l.get("default_filter_chain");
    if !default.is_null() {
        chains.push(default);
    }
    chains
}

fn is_blackhole_tcp_proxy(filter: &Json) -> bool {
    // istioctl searches the serialized TcpProxy for the cluster name.
    filter.get("typed_config").to_compact().contains(BLACKHOLE)
}

/// HTTP, TCP, HTTP+TCP or UNKNOWN, counting HTTP connection managers and TCP proxies (but not
/// the black hole) over all filter chains.
pub fn listener_type(l: &Json) -> &'static str {
    let (mut http, mut tcp) = (0, 0);
    for chain in filter_chains(l) {
        for f in chain.get("filters").items() {
            match f.get("name").str() {
                HCM => http += 1,
                TCP_PROXY if !is_blackhole_tcp_proxy(f) => tcp += 1,
                _ => {}
            }
        }
    }
    match (http > 0, tcp > 0) {
        (true, false) => "HTTP",
        (true, true) => "HTTP+TCP",
        (false, true) => "TCP",
        (false, false) => "UNKNOWN",
    }
}

/// The socket address, or the pipe path, or nothing (internal listeners).
fn address(l: &Json) -> &str {
    let a = l.get("address");
    let sock = a.get("socket_address");
    if sock.is_object() {
        return sock.get("address").str();
    }
    a.get("pipe").get("path").str()
}

fn additional_addresses(l: &Json) -> Vec<String> {
    l.get("additional_addresses")
        .items()
        .iter()
        .map(|a| {
            a.get("address")
                .get("socket_address")
                .get("address")
                .str()
                .to_owned()
        })
        .collect()
}

fn port(l: &Json) -> u64 {
    l.get("address").get("socket_address").get("port_value").uint()
}

const ALPN_LABELS: &[(&str, &[&str])] = &[
    (
        "App: HTTP TLS",
        &[
            "http/1.0",
            "http/1.1",
            "h2c",
            "istio-http/1.0",
            "istio-http/1.1",
            "istio-h2",
        ],
    ),
    (
        "App: Istio HTTP Plain",
        &["istio", "istio-http/1.0", "istio-http/1.1", "istio-h2"],
    ),
    ("App: TCP TLS", &["istio-peer-exchange", "istio"]),
    ("App: HTTP", &["http/1.0", "http/1.1", "h2c"]),
];

fn strings(v: &Json) -> Vec<&str> {
    v.items().iter().map(Json::str).collect()
}

/// The MATCH cell: SNI, transport, application protocols and destination addresses/port of a
/// filter chain match, or `ALL`.
pub fn describe_chain_match(m: &Json) -> String {
    let mut parts = Vec::new();
    let sni = strings(m.get("server_names"));
    if !sni.is_empty() {
        parts.push(format!("SNI: {}", sni.join(",")));
    }
    let transport = m.get("transport_protocol").str();
    if !transport.is_empty() {
        parts.push(format!("Trans: {transport}"));
    }
    let alpn = strings(m.get("application_protocols"));
    if !alpn.is_empty() {
        match ALPN_LABELS.iter().find(|(_, list)| *list == alpn.as_slice()) {
            Some((label, _)) => parts.push((*label).to_owned()),
            None => parts.push(format!("App: {}", alpn.join(","))),
        }
    }
    let dport = m.get("destination_port");
    let port = if dport.is_null() {
        String::new()
    } else {
        format!(":{}", dport.uint())
    };
    let ranges = m.get("prefix_ranges").items();
    if !ranges.is_empty() {
        let cidrs: Vec<String> = ranges
            .iter()
            .map(|r| format!("{}/{}", r.get("address_prefix").str(), r.get("prefix_len").uint()))
            .collect();
        parts.push(format!("Addr: {}{port}", cidrs.join(",")));
    } else if !port.is_empty() {
        parts.push(format!("Addr: *{port}"));
    }
    if parts.is_empty() {
        return "ALL".into();
    }
    parts.join("; ")
}

/// The DESTINATION cell: where the chain's first HTTP connection manager or (non-black-hole)
/// TCP proxy sends traffic.
pub fn describe_destination(filters: &Json) -> String {
    for f in filters.items() {
        match f.get("name").str() {
            HCM => {
                let hcm = f.get("typed_config");
                let inline = hcm.get("route_config");
                if inline.is_object() {
                    return describe_route_config(inline);
                }
                let rds = hcm.get("rds").get("route_config_name").str();
                if !rds.is_empty() {
                    return format!("Route: {rds}");
                }
                return "HTTP".into();
            }
            TCP_PROXY if !is_blackhole_tcp_proxy(f) => {
                return cluster_cell(f.get("typed_config").get("cluster").str());
            }
            _ => {}
        }
    }
    "Non-HTTP/Non-TCP".into()
}

fn cluster_cell(cluster: &str) -> String {
    if cluster.contains("Cluster") {
        cluster.to_owned()
    } else {
        format!("Cluster: {cluster}")
    }
}

/// An inline route configuration: the cluster when it is one catch-all route, else its virtual
/// hosts' domains and matches.
fn describe_route_config(rc: &Json) -> String {
    if let Some(cluster) = match_all_cluster(rc) {
        return cluster;
    }
    let vhosts: Vec<String> = rc
        .get("virtual_hosts")
        .items()
        .iter()
        .map(|vh| {
            let domains = strings(vh.get("domains"));
            let routes: Vec<String> = vh
                .get("routes")
                .items()
                .iter()
                .map(|r| describe_match(r.get("match")))
                .collect();
            let domains = if domains == ["*"] {
                String::new()
            } else {
                domains.join("/")
            };
            if domains.is_empty() {
                routes.join(", ")
            } else {
                format!("{domains} {}", routes.join(", "))
            }
        })
        .collect();
    format!("Inline Route: {}", vhosts.join("; "))
}

fn match_all_cluster(rc: &Json) -> Option<String> {
    let vhosts = rc.get("virtual_hosts").items();
    let [vh] = vhosts else { return None };
    if strings(vh.get("domains")) != ["*"] {
        return None;
    }
    let [r] = vh.get("routes").items() else {
        return None;
    };
    if r.get("match").get("prefix").str() != "/" {
        return None;
    }
    let cluster = r.get("route").get("cluster").as_str()?;
    Some(cluster_cell(cluster))
}

fn sort_listeners(listeners: &mut [&Json]) {
    sort_slice(listeners, |a, b| {
        let (pa, pb) = (port(a), port(b));
        if pa != pb {
            return pa < pb;
        }
        let (aa, ab) = (address(a), address(b));
        if aa != ab {
            return aa < ab;
        }
        listener_type(a) < listener_type(b)
    });
}

/// The listener table; `name_column` adds `all`'s leading `listener/<name>` column.
pub fn summary(dump: &ConfigDump, filter: &ListenerFilter, name_column: bool) -> Result<String, Error> {
    let mut listeners: Vec<&Json> = dump
        .listeners()?
        .into_iter()
        .filter(|l| filter.verify(l))
        .collect();
    sort_listeners(&mut listeners);
    let mut w = TabWriter::new(0, 1);
    let mut header = vec!["ADDRESSES", "PORT"];
    if name_column {
        header.insert(0, "NAME");
    }
    if filter.verbose {
        header.extend(["MATCH", "DESTINATION"]);
    } else {
        header.push("TYPE");
    }
    w.row(&header);
    for l in listeners {
        let mut addresses = vec![address(l).to_owned()];
        addresses.extend(additional_addresses(l));
        let addresses = addresses.join(",");
        let port = port(l).to_string();
        let name = format!("listener/{}", l.get("name").str());
        let lead = |mut cells: Vec<String>| {
            if name_column {
                cells.insert(0, name.clone());
            }
            cells
        };
        if filter.verbose {
            let mut chains: Vec<(String, String)> = filter_chains(l)
                .into_iter()
                .map(|c| {
                    (
                        describe_chain_match(c.get("filter_chain_match")),
                        describe_destination(c.get("filters")),
                    )
                })
                .collect();
            sort_slice(&mut chains, |a, b| a.1 > b.1);
            for (m, dest) in chains {
                w.row(&lead(vec![addresses.clone(), port.clone(), m, dest]));
            }
        } else {
            w.row(&lead(vec![
                addresses.clone(),
                port.clone(),
                listener_type(l).to_owned(),
            ]));
        }
    }
    Ok(w.render())
}

/// `-o json|yaml`: the listeners that pass the filter, in dump order.
pub fn dump(dump: &ConfigDump, filter: &ListenerFilter, output: Output) -> Result<String, Error> {
    let listeners: Vec<&Json> = dump
        .listeners()?
        .into_iter()
        .filter(|l| filter.verify(l))
        .collect();
    Ok(render_objects(
        &listeners,
        "envoy.config.listener.v3.Listener",
        output,
    ))
}

/// `proxy-config listener` in the requested format.
pub fn print(d: &ConfigDump, filter: &ListenerFilter, output: Output) -> Result<String, Error> {
    match output {
        Output::Short => summary(d, filter, false),
        _ => dump(d, filter, output),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn j(s: &str) -> Json {
        Json::parse(s).unwrap()
    }

    #[test]
    fn match_cells() {
        assert_eq!(describe_chain_match(&Json::Null), "ALL");
        assert_eq!(
            describe_chain_match(&j(
                r#"{"transport_protocol": "raw_buffer", "application_protocols": ["http/1.1", "h2c"]}"#
            )),
            "Trans: raw_buffer; App: http/1.1,h2c"
        );
        assert_eq!(
            describe_chain_match(&j(
                r#"{"transport_protocol": "tls", "application_protocols": ["istio-peer-exchange", "istio"], "prefix_ranges": [{"address_prefix": "0.0.0.0", "prefix_len": 0}]}"#
            )),
            "Trans: tls; App: TCP TLS; Addr: 0.0.0.0/0"
        );
        assert_eq!(
            describe_chain_match(&j(r#"{"destination_port": 15001}"#)),
            "Addr: *:15001"
        );
        assert_eq!(
            describe_chain_match(&j(
                r#"{"server_names": ["a", "b"], "prefix_ranges": [{"address_prefix": "10.0.0.0"}], "destination_port": 80}"#
            )),
            "SNI: a,b; Addr: 10.0.0.0/0:80"
        );
    }

    #[test]
    fn destination_cells() {
        let tcp = |c: &str| {
            j(&format!(
                r#"[{{"name": "{TCP_PROXY}", "typed_config": {{"cluster": "{c}", "stat_prefix": "{c}"}}}}]"#
            ))
        };
        assert_eq!(
            describe_destination(&tcp("PassthroughCluster")),
            "PassthroughCluster"
        );
        assert_eq!(
            describe_destination(&tcp("outbound|53||kube-dns")),
            "Cluster: outbound|53||kube-dns"
        );
        assert_eq!(describe_destination(&tcp("BlackHoleCluster")), "Non-HTTP/Non-TCP");
        let inline = j(&format!(
            r#"[{{"name": "{HCM}", "typed_config": {{"route_config": {{"virtual_hosts": [{{"name": "backend", "domains": ["*"], "routes": [{{"match": {{"prefix": "/stats/prometheus"}}, "route": {{"cluster": "prometheus_stats"}}}}]}}]}}}}}}]"#
        ));
        assert_eq!(describe_destination(&inline), "Inline Route: /stats/prometheus*");
        let catch_all = j(&format!(
            r#"[{{"name": "{HCM}", "typed_config": {{"route_config": {{"virtual_hosts": [{{"domains": ["*"], "routes": [{{"match": {{"prefix": "/"}}, "route": {{"cluster": "inbound|80||"}}}}]}}]}}}}}}]"#
        ));
        assert_eq!(describe_destination(&catch_all), "Cluster: inbound|80||");
        let rds = j(&format!(
            r#"[{{"name": "{HCM}", "typed_config": {{"rds": {{"route_config_name": "80"}}}}}}]"#
        ));
        assert_eq!(describe_destination(&rds), "Route: 80");
    }
}
