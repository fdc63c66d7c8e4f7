//! The validated capture configuration: what `istio-iptables` flags mean once parsed.
//!
//! Istio keeps most of these as raw strings and hands them to iptables unchecked; Skiff parses
//! them up front so that a typo fails before any rule is written, with the flag named.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;

/// How inbound connections reach the sidecar (`-m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum InterceptionMode {
    /// nat `REDIRECT` to the inbound capture port; the original destination is read back with
    /// `SO_ORIGINAL_DST`.
    #[default]
    Redirect,
    /// mangle `TPROXY` to the inbound capture port: the socket keeps the original destination as
    /// its local address, and the source address is preserved towards the app.
    Tproxy,
}

impl InterceptionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            InterceptionMode::Redirect => "REDIRECT",
            InterceptionMode::Tproxy => "TPROXY",
        }
    }
}

impl FromStr for InterceptionMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            // Istio treats an empty mode as REDIRECT.
            "REDIRECT" | "" => Ok(InterceptionMode::Redirect),
            "TPROXY" => Ok(InterceptionMode::Tproxy),
            _ => Err("must be REDIRECT or TPROXY".into()),
        }
    }
}

/// One port, or an inclusive range written the iptables way (`15000:15010`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortSpec {
    One(u16),
    Range(u16, u16),
}

impl PortSpec {
    /// Whether `port` falls in this spec.
    pub fn contains(self, port: u16) -> bool {
        match self {
            PortSpec::One(p) => p == port,
            PortSpec::Range(lo, hi) => (lo..=hi).contains(&port),
        }
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortSpec::One(p) => write!(f, "{p}"),
            PortSpec::Range(lo, hi) => write!(f, "{lo}:{hi}"),
        }
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        Ok(p) => Err(format!("port {p} is out of range 1-65535")),
        Err(_) => Err(format!("{s:?} is not a port number")),
    }
}

impl FromStr for PortSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None => Ok(PortSpec::One(parse_port(s)?)),
            Some((lo, hi)) => {
                let (lo, hi) = (parse_port(lo)?, parse_port(hi)?);
                if lo > hi {
                    return Err(format!("port range {s} is reversed"));
                }
                Ok(PortSpec::Range(lo, hi))
            }
        }
    }
}

/// Splits a comma separated flag value, dropping empty items as Istio does (`"6000,7000,"`).
pub fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|v| !v.is_empty())
}

/// Parses a comma separated port list (`15090,15021,15020`).
pub fn parse_ports(s: &str) -> Result<Vec<PortSpec>, String> {
    split_list(s).map(PortSpec::from_str).collect()
}

/// Which inbound ports are captured (`-b`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum InboundPorts {
    /// No inbound capture at all (the empty list).
    #[default]
    None,
    /// Every port (`*`), minus the exclusions of `-d`.
    All,
    /// Only these ports.
    Only(Vec<PortSpec>),
}

impl InboundPorts {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "" => Ok(InboundPorts::None),
            "*" => Ok(InboundPorts::All),
            other => {
                let ports = parse_ports(other)?;
                Ok(if ports.is_empty() {
                    InboundPorts::None
                } else {
                    InboundPorts::Only(ports)
                })
            }
        }
    }
}

impl fmt::Display for InboundPorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InboundPorts::None => Ok(()),
            InboundPorts::All => f.write_str("*"),
            InboundPorts::Only(p) => f.write_str(&join(p)),
        }
    }
}

/// Which outbound destinations are captured (`-i`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum OutboundRanges {
    /// No outbound capture by address (the empty list).
    #[default]
    None,
    /// Every destination (`*`), minus the exclusions of `-x`.
    All,
    /// Only these ranges.
    Only(Vec<IpNet>),
}

/// Parses one CIDR; a bare address means that single host.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net);
    }
    match s.parse::<std::net::IpAddr>() {
        Ok(addr) => Ok(IpNet::from(addr)),
        Err(_) => Err(format!(
            "{s:?} is not a CIDR (expected e.g. 10.0.0.0/8 or fd00::/8)"
        )),
    }
}

/// Parses a comma separated CIDR list.
pub fn parse_cidrs(s: &str) -> Result<Vec<IpNet>, String> {
    split_list(s).map(parse_cidr).collect()
}

impl OutboundRanges {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "" => Ok(OutboundRanges::None),
            "*" => Ok(OutboundRanges::All),
            other => {
                let nets = parse_cidrs(other)?;
                Ok(if nets.is_empty() {
                    OutboundRanges::None
                } else {
                    OutboundRanges::Only(nets)
                })
            }
        }
    }
}

impl fmt::Display for OutboundRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutboundRanges::None => Ok(()),
            OutboundRanges::All => f.write_str("*"),
            OutboundRanges::Only(n) => f.write_str(&join(n)),
        }
    }
}

/// Whose outbound traffic is captured, by owner group (`ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnerGroups {
    /// All groups except these (the default: all groups, no exceptions).
    AllExcept(Vec<String>),
    /// Only these groups.
    Only(Vec<String>),
}

impl Default for OwnerGroups {
    fn default() -> Self {
        OwnerGroups::AllExcept(Vec::new())
    }
}

/// More included groups than this make one iptables rule with too many `-m owner` matches.
pub const MAX_OWNER_GROUPS_INCLUDE: usize = 64;

impl OwnerGroups {
    /// Reads the include/exclude pair the way Istio does: exclusions only apply to `*`.
    pub fn parse(include: &str, exclude: &str) -> Result<Self, String> {
        if include.trim() == "*" {
            let values = split_list(exclude).map(str::to_owned).collect::<Vec<_>>();
            for v in &values {
                check_owner(v)?;
            }
            return Ok(OwnerGroups::AllExcept(values));
        }
        let values = split_list(include).map(str::to_owned).collect::<Vec<_>>();
        for v in &values {
            check_owner(v)?;
        }
        if values.len() > MAX_OWNER_GROUPS_INCLUDE {
            return Err(format!(
                "at most {MAX_OWNER_GROUPS_INCLUDE} owner groups can be captured, got {}",
                values.len()
            ));
        }
        Ok(OwnerGroups::Only(values))
    }
}

/// A uid/gid as `-m owner` takes it: a number or a user/group name.
pub fn check_owner(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !s.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("{s:?} is not a user/group id or name"))
    }
}

/// Parses a comma separated list of owners (uids or gids).
pub fn parse_owners(s: &str) -> Result<Vec<String>, String> {
    split_list(s)
        .map(|v| check_owner(v).map(|()| v.to_owned()))
        .collect()
}

/// An interface name as iptables `-i`/`-o` take it (at most 15 bytes, `+` wildcard allowed).
pub fn parse_interfaces(s: &str) -> Result<Vec<String>, String> {
    split_list(s)
        .map(|v| {
            if v.len() > 15 {
                Err(format!("interface name {v:?} is longer than 15 bytes"))
            } else if v
                .chars()
                .any(|c| c.is_whitespace() || c == '/' || c == ':' || c == '"' || c == '\'')
            {
                Err(format!("{v:?} is not an interface name"))
            } else {
                Ok(v.to_owned())
            }
        })
        .collect()
}

pub(crate) fn join<T: fmt::Display>(items: &[T]) -> String {
    items.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")
}

/// Everything that decides which rules are written. Pure data: building rules from it does no
/// I/O, so injection and the local mesh can call the generator with values from annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Outbound capture port (`-p`, Envoy's `virtualOutbound`).
    pub proxy_port: u16,
    /// Inbound capture port (`-z`, `virtualInbound`).
    pub inbound_capture_port: u16,
    /// HBONE tunnel port (`-e`), never captured.
    pub inbound_tunnel_port: u16,
    /// Owners of the proxy process, whose traffic is never captured (`-u`, `-g`).
    pub proxy_uids: Vec<String>,
    pub proxy_gids: Vec<String>,
    pub interception_mode: InterceptionMode,
    /// Packet mark and policy-routing table used by TPROXY (`-t`, `-r`).
    pub tproxy_mark: u32,
    pub tproxy_route_table: u32,
    pub inbound_ports: InboundPorts,
    /// Inbound ports left alone when all ports are captured (`-d`).
    pub inbound_ports_exclude: Vec<PortSpec>,
    pub outbound_ranges: OutboundRanges,
    /// Destinations never captured (`-x`).
    pub outbound_ranges_exclude: Vec<IpNet>,
    /// Outbound ports always captured / never captured (`-q`, `-o`).
    pub outbound_ports_include: Vec<PortSpec>,
    pub outbound_ports_exclude: Vec<PortSpec>,
    /// Interfaces whose inbound traffic is treated as outbound (`-k`, KubeVirt).
    pub kube_virt_interfaces: Vec<String>,
    /// Interfaces whose traffic is never captured (`-c`).
    pub exclude_interfaces: Vec<String>,
    pub owner_groups: OwnerGroups,
    /// Send DNS (port 53) to the agent's DNS proxy on 15053.
    pub redirect_dns: bool,
    /// With `redirect_dns`: capture all port-53 traffic, not only traffic to `dns_servers`.
    pub capture_all_dns: bool,
    pub dns_servers_v4: Vec<Ipv4Addr>,
    pub dns_servers_v6: Vec<Ipv6Addr>,
    /// Drop packets conntrack marks INVALID instead of letting them reset connections.
    pub drop_invalid: bool,
    /// Also write ip6tables rules (Istio does when the pod's address is IPv6 or dual-stack).
    pub enable_ipv6: bool,
    pub dual_stack: bool,
    /// Add NFLOG rules in front of the interesting ones (`--iptables-trace-logging`).
    pub trace_logging: bool,
}

/// The agent's DNS proxy port that `redirect_dns` sends port-53 traffic to.
pub const DNS_CAPTURE_PORT: u16 = 15053;

impl Default for CaptureConfig {
    /// Istio's defaults: what `istio-iptables` does with no flags and no environment.
    fn default() -> Self {
        CaptureConfig {
            proxy_port: 15001,
            inbound_capture_port: 15006,
            inbound_tunnel_port: 15008,
            proxy_uids: vec!["1337".into()],
            proxy_gids: vec!["1337".into()],
            interception_mode: InterceptionMode::Redirect,
            tproxy_mark: 1337,
            tproxy_route_table: 133,
            inbound_ports: InboundPorts::None,
            inbound_ports_exclude: Vec::new(),
            outbound_ranges: OutboundRanges::None,
            outbound_ranges_exclude: Vec::new(),
            outbound_ports_include: Vec::new(),
            outbound_ports_exclude: Vec::new(),
            kube_virt_interfaces: Vec::new(),
            exclude_interfaces: Vec::new(),
            owner_groups: OwnerGroups::default(),
            redirect_dns: false,
            capture_all_dns: false,
            dns_servers_v4: Vec::new(),
            dns_servers_v6: Vec::new(),
            drop_invalid: false,
            enable_ipv6: false,
            dual_stack: false,
            trace_logging: false,
        }
    }
}

impl CaptureConfig {
    /// What the injected `istio-init` container asks for (seeds 001, 002, 004):
    /// `-p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x "" -b '*' -d 15090,15021,15020`.
    pub fn sidecar() -> Self {
        CaptureConfig {
            inbound_ports: InboundPorts::All,
            inbound_ports_exclude: vec![PortSpec::One(15090), PortSpec::One(15021), PortSpec::One(15020)],
            outbound_ranges: OutboundRanges::All,
            ..CaptureConfig::default()
        }
    }
}
