//! Choosing a listener's filter chain for a connection, in Envoy's order: destination port,
//! destination IP, server name, transport protocol, application protocols, direct source IP,
//! source type, source IP, source port. At each step the most specific match wins; chains that
//! leave the criterion empty are the fallback. Pure: no I/O.

use std::net::{IpAddr, SocketAddr};

use crate::model::{ChainMatch, FilterChain, Listener, SourceType};

/// What is known about a connection when its chain is chosen.
#[derive(Clone, Debug)]
pub struct ConnInfo<'a> {
    /// Where the client was going (original destination, or the listener address).
    pub destination: SocketAddr,
    pub source: SocketAddr,
    /// The socket peer (differs from `source` only behind a proxy protocol, unused today).
    pub direct_source: SocketAddr,
    pub server_name: Option<&'a str>,
    /// `tls` or `raw_buffer`.
    pub transport_protocol: &'a str,
    pub application_protocols: &'a [String],
}

/// The chain for `conn`, or the listener's default chain, or `None` (close the connection).
pub fn select<'l>(listener: &'l Listener, conn: &ConnInfo<'_>) -> Option<&'l FilterChain> {
    let mut candidates: Vec<&FilterChain> = listener.filter_chains.iter().collect();
    let steps: [&dyn Fn(&ChainMatch) -> Specificity; 9] = [
        &|m| port_spec(m.destination_port, conn.destination.port()),
        &|m| cidr_spec(&m.prefix_ranges, conn.destination.ip()),
        &|m| server_name_spec(&m.server_names, conn.server_name),
        &|m| match &m.transport_protocol {
            None => Specificity::Unset,
            Some(t) if t == conn.transport_protocol => Specificity::Match(1),
            Some(_) => Specificity::NoMatch,
        },
        &|m| {
            if m.application_protocols.is_empty() {
                Specificity::Unset
            } else if m
                .application_protocols
                .iter()
                .any(|p| conn.application_protocols.contains(p))
            {
                Specificity::Match(1)
            } else {
                Specificity::NoMatch
            }
        },
        &|m| cidr_spec(&m.direct_source_prefix_ranges, conn.direct_source.ip()),
        &|m| source_type_spec(m.source_type, conn),
        &|m| cidr_spec(&m.source_prefix_ranges, conn.source.ip()),
        &|m| {
            if m.source_ports.is_empty() {
                Specificity::Unset
            } else if m.source_ports.contains(&conn.source.port()) {
                Specificity::Match(1)
            } else {
                Specificity::NoMatch
            }
        },
    ];
    for step in steps {
        candidates = narrow(candidates, step);
        if candidates.is_empty() {
            return listener.default_filter_chain.as_ref();
        }
    }
    candidates
        .first()
        .copied()
        .or(listener.default_filter_chain.as_ref())
}

/// How well one chain's criterion matches: not set, matched (higher is more specific), or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Specificity {
    NoMatch,
    Unset,
    Match(u32),
}

fn narrow<'l>(
    candidates: Vec<&'l FilterChain>,
    spec: &dyn Fn(&ChainMatch) -> Specificity,
) -> Vec<&'l FilterChain> {
    let scored: Vec<(Specificity, &FilterChain)> =
        candidates.into_iter().map(|c| (spec(&c.matcher), c)).collect();
    let best = scored
        .iter()
        .map(|(s, _)| *s)
        .max()
        .unwrap_or(Specificity::NoMatch);
    match best {
        Specificity::NoMatch => Vec::new(),
        b => scored
            .into_iter()
            .filter(|(s, _)| *s == b)
            .map(|(_, c)| c)
            .collect(),
    }
}

fn port_spec(want: Option<u16>, port: u16) -> Specificity {
    match want {
        None => Specificity::Unset,
        Some(p) if p == port => Specificity::Match(1),
        Some(_) => Specificity::NoMatch,
    }
}

fn cidr_spec(ranges: &[ipnet::IpNet], ip: IpAddr) -> Specificity {
    if ranges.is_empty() {
        return Specificity::Unset;
    }
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    ranges
        .iter()
        .filter(|r| r.contains(&ip))
        // Longest prefix wins; +1 so a /0 still beats "unset".
        .map(|r| Specificity::Match(u32::from(r.prefix_len()) + 1))
        .max()
        .unwrap_or(Specificity::NoMatch)
}

fn server_name_spec(names: &[String], sni: Option<&str>) -> Specificity {
    if names.is_empty() {
        return Specificity::Unset;
    }
    let Some(sni) = sni else {
        return Specificity::NoMatch;
    };
    let sni = sni.to_ascii_lowercase();
    let mut best = Specificity::NoMatch;
    for n in names {
        let s = if *n == sni {
            // Exact beats any wildcard.
            Specificity::Match(u32::MAX)
        } else if let Some(suffix) = n.strip_prefix('*') {
            if sni.ends_with(suffix) && sni.len() > suffix.len() {
                Specificity::Match(suffix.len() as u32)
            } else {
                Specificity::NoMatch
            }
        } else {
            Specificity::NoMatch
        };
        best = best.max(s);
    }
    best
}

fn source_type_spec(t: SourceType, conn: &ConnInfo<'_>) -> Specificity {
    let local = conn.source.ip().is_loopback() || conn.source.ip() == conn.destination.ip();
    match t {
        SourceType::Any => Specificity::Unset,
        SourceType::SameIpOrLoopback if local => Specificity::Match(1),
        SourceType::External if !local => Specificity::Match(1),
        _ => Specificity::NoMatch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn chain(name: &str, m: ChainMatch) -> FilterChain {
        FilterChain {
            name: name.into(),
            matcher: m,
            filter: NetworkFilter::Tcp(Arc::new(TcpProxy {
                stat_prefix: name.into(),
                cluster: ClusterTarget::Named(name.into()),
                idle_timeout: None,
                access_logs: vec![],
                hash_source_ip: false,
            })),
            tls: None,
        }
    }

    fn listener(chains: Vec<FilterChain>, default: Option<FilterChain>) -> Listener {
        Listener {
            name: "l".into(),
            address: "0.0.0.0:15006".parse().unwrap(),
            bind_to_port: true,
            use_original_dst: true,
            restore_original_dst: true,
            tls_inspector: true,
            http_inspector: true,
            listener_filters_timeout: Duration::from_secs(1),
            continue_on_listener_filters_timeout: true,
            transparent: false,
            direction: Direction::Inbound,
            filter_chains: chains,
            default_filter_chain: default,
            access_logs: vec![],
        }
    }

    fn conn<'a>(dst: &str, tp: &'a str, alpn: &'a [String], sni: Option<&'a str>) -> ConnInfo<'a> {
        ConnInfo {
            destination: dst.parse().unwrap(),
            source: "198.18.0.20:40000".parse().unwrap(),
            direct_source: "198.18.0.20:40000".parse().unwrap(),
            server_name: sni,
            transport_protocol: tp,
            application_protocols: alpn,
        }
    }

    /// The shape of Istio's virtualInbound (seed 004): per-port chains by transport/ALPN and
    /// catch-all passthrough chains by transport.
    fn virtual_inbound() -> Listener {
        let http = vec!["http/1.1".to_string(), "h2c".to_string()];
        listener(
            vec![
                chain(
                    "passthrough-http",
                    ChainMatch {
                        prefix_ranges: vec!["0.0.0.0/0".parse().unwrap()],
                        transport_protocol: Some("raw_buffer".into()),
                        application_protocols: http.clone(),
                        ..Default::default()
                    },
                ),
                chain(
                    "passthrough-tcp",
                    ChainMatch {
                        prefix_ranges: vec!["0.0.0.0/0".parse().unwrap()],
                        transport_protocol: Some("raw_buffer".into()),
                        ..Default::default()
                    },
                ),
                chain(
                    "passthrough-tls",
                    ChainMatch {
                        prefix_ranges: vec!["0.0.0.0/0".parse().unwrap()],
                        transport_protocol: Some("tls".into()),
                        ..Default::default()
                    },
                ),
                chain(
                    "port80-raw",
                    ChainMatch {
                        destination_port: Some(80),
                        transport_protocol: Some("raw_buffer".into()),
                        ..Default::default()
                    },
                ),
                chain(
                    "port80-tls",
                    ChainMatch {
                        destination_port: Some(80),
                        transport_protocol: Some("tls".into()),
                        application_protocols: vec!["istio".into()],
                        ..Default::default()
                    },
                ),
                chain(
                    "blackhole-15006",
                    ChainMatch {
                        destination_port: Some(15006),
                        ..Default::default()
                    },
                ),
            ],
            None,
        )
    }

    #[test]
    fn inbound_port_chain_beats_passthrough() {
        let l = virtual_inbound();
        let http = ["http/1.1".to_string()];
        assert_eq!(
            select(&l, &conn("198.18.0.11:80", "raw_buffer", &http, None))
                .unwrap()
                .name,
            "port80-raw"
        );
        assert_eq!(
            select(&l, &conn("198.18.0.11:8080", "raw_buffer", &http, None))
                .unwrap()
                .name,
            "passthrough-http"
        );
        assert_eq!(
            select(&l, &conn("198.18.0.11:8080", "raw_buffer", &[], None))
                .unwrap()
                .name,
            "passthrough-tcp"
        );
        assert_eq!(
            select(&l, &conn("198.18.0.11:8443", "tls", &[], Some("a.b")))
                .unwrap()
                .name,
            "passthrough-tls"
        );
        assert_eq!(
            select(&l, &conn("198.18.0.11:15006", "raw_buffer", &[], None))
                .unwrap()
                .name,
            "blackhole-15006"
        );
        // Port 80 over TLS without Istio's ALPN: no port-80 chain matches ALPN, and the port
        // step already excluded the catch-alls, so there is no chain (Envoy closes).
        assert!(select(&l, &conn("198.18.0.11:80", "tls", &[], None)).is_none());
    }

    #[test]
    fn longest_prefix_and_sni_wildcards() {
        let l = listener(
            vec![
                chain(
                    "wide",
                    ChainMatch {
                        prefix_ranges: vec!["198.18.0.0/16".parse().unwrap()],
                        ..Default::default()
                    },
                ),
                chain(
                    "narrow",
                    ChainMatch {
                        prefix_ranges: vec!["198.18.0.0/24".parse().unwrap()],
                        ..Default::default()
                    },
                ),
            ],
            Some(chain("default", ChainMatch::default())),
        );
        assert_eq!(
            select(&l, &conn("198.18.0.5:1", "raw_buffer", &[], None))
                .unwrap()
                .name,
            "narrow"
        );
        assert_eq!(
            select(&l, &conn("198.18.9.5:1", "raw_buffer", &[], None))
                .unwrap()
                .name,
            "wide"
        );
        assert_eq!(
            select(&l, &conn("10.0.0.1:1", "raw_buffer", &[], None))
                .unwrap()
                .name,
            "default"
        );

        let l = listener(
            vec![
                chain(
                    "star",
                    ChainMatch {
                        server_names: vec!["*.example.com".into()],
                        ..Default::default()
                    },
                ),
                chain(
                    "deep",
                    ChainMatch {
                        server_names: vec!["*.api.example.com".into()],
                        ..Default::default()
                    },
                ),
                chain(
                    "exact",
                    ChainMatch {
                        server_names: vec!["www.example.com".into()],
                        ..Default::default()
                    },
                ),
                chain("any", ChainMatch::default()),
            ],
            None,
        );
        let pick = |sni| {
            select(&l, &conn("1.2.3.4:443", "tls", &[], sni))
                .unwrap()
                .name
                .clone()
        };
        assert_eq!(pick(Some("WWW.example.com")), "exact");
        assert_eq!(pick(Some("v1.api.example.com")), "deep");
        assert_eq!(pick(Some("foo.example.com")), "star");
        assert_eq!(pick(Some("example.com")), "any");
        assert_eq!(pick(None), "any");
    }
}
