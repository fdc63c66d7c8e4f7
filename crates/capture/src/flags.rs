//! `istio-iptables` flags, their environment variables and Istio's defaults, and their resolution
//! into a [`CaptureConfig`]. Every flag keeps its short and long form; a bad value is reported
//! with the flag's name before anything is applied.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use clap::Args;

use crate::config::{self, CaptureConfig, InboundPorts, InterceptionMode, OutboundRanges, OwnerGroups};

/// Parses a boolean the way Go's `strconv.ParseBool` does, as Istio's flags and env vars do.
pub fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" | "" => Ok(false),
        _ => Err(format!("{s:?} is not a boolean (true/false)")),
    }
}

/// Parses a Go duration (`5s`, `500ms`, `1m30s`, `1.5s`); a bare number means seconds.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return if secs >= 0.0 && secs.is_finite() {
            Ok(Duration::from_secs_f64(secs))
        } else {
            Err(format!("{s:?} is not a duration"))
        };
    }
    let bad = || format!("{s:?} is not a duration (e.g. 5s, 500ms, 1m30s)");
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, tail) = rest.split_at(num_len);
        let value: f64 = num.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = tail;
    }
    Ok(Duration::from_secs_f64(total))
}

/// The flags of `istio-iptables` (Istio 1.19+), with the same short and long names, environment
/// variables and defaults, plus Skiff's `--cleanup`.
#[derive(Args, Clone, Debug, Default)]
pub struct IptablesFlags {
    /// Port to which all outbound TCP traffic is redirected.
    #[arg(short = 'p', long = "envoy-port", env = "ENVOY_PORT", default_value = "15001")]
    pub envoy_port: String,
    /// Port to which all inbound TCP traffic to the pod is redirected.
    #[arg(
        short = 'z',
        long = "inbound-capture-port",
        env = "INBOUND_CAPTURE_PORT",
        default_value = "15006"
    )]
    pub inbound_capture_port: String,
    /// Istio tunnel (HBONE) port for inbound TCP traffic; never captured.
    #[arg(
        short = 'e',
        long = "inbound-tunnel-port",
        env = "INBOUND_TUNNEL_PORT",
        default_value = "15008"
    )]
    pub inbound_tunnel_port: String,
    /// UID(s) of the proxy, whose traffic is not redirected (default: uid of $ENVOY_USER, else 1337).
    #[arg(short = 'u', long = "proxy-uid", env = "PROXY_UID", default_value = "")]
    pub proxy_uid: String,
    /// GID(s) of the proxy (default: same as --proxy-uid).
    #[arg(short = 'g', long = "proxy-gid", env = "PROXY_GID", default_value = "")]
    pub proxy_gid: String,
    /// How inbound connections reach the proxy: REDIRECT or TPROXY.
    #[arg(
        short = 'm',
        long = "istio-inbound-interception-mode",
        env = "ISTIO_INBOUND_INTERCEPTION_MODE",
        default_value = ""
    )]
    pub interception_mode: String,
    /// Inbound ports to redirect ("*" for all; empty disables inbound capture).
    #[arg(
        short = 'b',
        long = "istio-inbound-ports",
        env = "ISTIO_INBOUND_PORTS",
        default_value = ""
    )]
    pub inbound_ports: String,
    /// Inbound ports excluded from redirection when all ports are redirected.
    #[arg(
        short = 'd',
        long = "istio-local-exclude-ports",
        env = "ISTIO_LOCAL_EXCLUDE_PORTS",
        default_value = ""
    )]
    pub local_exclude_ports: String,
    /// Interfaces whose traffic is never captured, in either direction.
    #[arg(
        short = 'c',
        long = "istio-exclude-interfaces",
        env = "ISTIO_EXCLUDE_INTERFACES",
        default_value = ""
    )]
    pub exclude_interfaces: String,
    /// Outbound IP ranges (CIDR) to redirect ("*" for all; empty disables outbound capture).
    #[arg(
        short = 'i',
        long = "istio-service-cidr",
        env = "ISTIO_SERVICE_CIDR",
        default_value = ""
    )]
    pub service_cidr: String,
    /// Outbound IP ranges (CIDR) excluded from redirection.
    #[arg(
        short = 'x',
        long = "istio-service-exclude-cidr",
        env = "ISTIO_SERVICE_EXCLUDE_CIDR",
        default_value = ""
    )]
    pub service_exclude_cidr: String,
    /// Outbound ports always redirected.
    #[arg(
        short = 'q',
        long = "istio-outbound-ports",
        env = "ISTIO_OUTBOUND_PORTS",
        default_value = ""
    )]
    pub outbound_ports: String,
    /// Outbound ports never redirected.
    #[arg(
        short = 'o',
        long = "istio-local-outbound-ports-exclude",
        env = "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE",
        default_value = ""
    )]
    pub local_outbound_ports_exclude: String,
    /// Virtual interfaces whose inbound traffic (from a VM) is treated as outbound.
    #[arg(
        short = 'k',
        long = "kube-virt-interfaces",
        env = "KUBE_VIRT_INTERFACES",
        default_value = ""
    )]
    pub kube_virt_interfaces: String,
    /// Packet mark for TPROXY mode.
    #[arg(
        short = 't',
        long = "istio-inbound-tproxy-mark",
        env = "ISTIO_INBOUND_TPROXY_MARK",
        default_value = "1337"
    )]
    pub tproxy_mark: String,
    /// Policy routing table for TPROXY mode.
    #[arg(
        short = 'r',
        long = "istio-inbound-tproxy-route-table",
        env = "ISTIO_INBOUND_TPROXY_ROUTE_TABLE",
        default_value = "133"
    )]
    pub tproxy_route_table: String,
    /// Print the iptables-restore input that would be applied; change nothing.
    #[arg(short = 'n', long = "dry-run", env = "DRY_RUN", default_value = "false", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub dry_run: bool,
    /// Insert NFLOG rules in front of the interesting rules (group 1337).
    #[arg(long = "iptables-trace-logging", env = "IPTABLES_TRACE_LOGGING", default_value = "false", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub trace_logging: bool,
    /// Use iptables-restore (true) or one iptables command per rule (false).
    #[arg(short = 'f', long = "restore-format", env = "RESTORE_FORMAT", default_value = "true", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub restore_format: bool,
    /// Port the validation probe pretends to connect to.
    #[arg(
        long = "iptables-probe-port",
        env = "IPTABLES_PROBE_PORT",
        default_value = "15002"
    )]
    pub probe_port: String,
    /// How long validation waits for the probe.
    #[arg(long = "probe-timeout", env = "PROBE_TIMEOUT", default_value = "5s")]
    pub probe_timeout: String,
    /// Do not apply rules (validation only).
    #[arg(long = "skip-rule-apply", env = "SKIP_RULE_APPLY", default_value = "false", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub skip_rule_apply: bool,
    /// After applying, prove that capture works (exit code 126 if it does not).
    #[arg(long = "run-validation", env = "RUN_VALIDATION", default_value = "false", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub run_validation: bool,
    /// Capture DNS (port 53) to the agent on 15053 (also $ISTIO_META_DNS_CAPTURE).
    #[arg(long = "redirect-dns", env = "REDIRECT_DNS", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub redirect_dns: Option<bool>,
    /// Drop packets conntrack considers INVALID (also $INVALID_DROP).
    #[arg(long = "drop-invalid", env = "DROP_INVALID", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub drop_invalid: Option<bool>,
    /// Write IPv4 and IPv6 rules for dual-stack pods (also $ISTIO_DUAL_STACK).
    #[arg(long = "dual-stack", env = "DUAL_STACK", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub dual_stack: Option<bool>,
    /// With --redirect-dns: capture all port-53 traffic, not only traffic to resolv.conf servers.
    #[arg(long = "capture-all-dns", env = "CAPTURE_ALL_DNS", default_value = "false", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub capture_all_dns: bool,
    /// Network namespace (path, e.g. /run/netns/NAME) to apply the rules in.
    #[arg(long = "network-namespace", env = "NETWORK_NAMESPACE", default_value = "")]
    pub network_namespace: String,
    /// Running as a CNI plugin (accepted for compatibility).
    #[arg(long = "cni-mode", env = "CNI_MODE", default_value = "false", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub cni_mode: bool,
    /// Use nsenter to switch namespaces (accepted for compatibility; Skiff uses setns).
    #[arg(long = "host-nsenter-exec", env = "HOST_NSENTER_EXEC", default_value = "false", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub host_nsenter_exec: bool,
    /// Replace existing, different capture rules instead of failing.
    #[arg(long = "reconcile", env = "RECONCILE", default_value = "false", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub reconcile: bool,
    /// Remove the capture rules Skiff installed (idempotent) and install nothing.
    #[arg(long = "cleanup", visible_alias = "cleanup-only", env = "CLEANUP_ONLY", default_value = "false", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub cleanup: bool,
    /// Apply even if the rules appear to be in place already.
    #[arg(long = "force-apply", env = "FORCE_APPLY", default_value = "false", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub force_apply: bool,
}

/// What is read from the host besides flags: env-only variables, addresses and resolv.conf.
/// Kept separate so that flag resolution is a pure function in tests.
#[derive(Clone, Debug, Default)]
pub struct HostFacts {
    /// Environment variables that matter to capture (see [`ENV_REPORT`] and [`ENV_ONLY`]).
    pub env: BTreeMap<String, String>,
    /// The host's non-loopback, non-link-local addresses, in interface order.
    pub addresses: Vec<IpAddr>,
    /// Name servers of /etc/resolv.conf, or why they could not be read.
    pub nameservers: Option<Result<Vec<IpAddr>, String>>,
    /// The uid of `$ENVOY_USER` (default `istio-proxy`), if that user exists.
    pub envoy_user_uid: Option<u32>,
}

/// The environment Istio logs at start ("Istio iptables environment:"), in its order.
pub const ENV_REPORT: [&str; 12] = [
    "ENVOY_PORT",
    "INBOUND_CAPTURE_PORT",
    "ISTIO_INBOUND_INTERCEPTION_MODE",
    "ISTIO_INBOUND_TPROXY_ROUTE_TABLE",
    "ISTIO_INBOUND_PORTS",
    "ISTIO_OUTBOUND_PORTS",
    "ISTIO_LOCAL_EXCLUDE_PORTS",
    "ISTIO_EXCLUDE_INTERFACES",
    "ISTIO_SERVICE_CIDR",
    "ISTIO_SERVICE_EXCLUDE_CIDR",
    "ISTIO_META_DNS_CAPTURE",
    "INVALID_DROP",
];

/// Variables without a flag of their own.
pub const ENV_ONLY: [&str; 5] = [
    "ISTIO_OUTBOUND_OWNER_GROUPS",
    "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
    "ENVOY_USER",
    "ISTIO_DUAL_STACK",
    "ISTIO_META_DNS_CAPTURE",
];

impl HostFacts {
    /// Reads the process environment, the interfaces' addresses and (only when DNS capture needs
    /// it) /etc/resolv.conf.
    pub fn gather(need_nameservers: bool) -> HostFacts {
        let mut env = BTreeMap::new();
        for name in ENV_REPORT.iter().chain(ENV_ONLY.iter()) {
            if let Ok(v) = std::env::var(name) {
                env.insert(name.to_string(), v);
            }
        }
        let user = env
            .get("ENVOY_USER")
            .cloned()
            .unwrap_or_else(|| "istio-proxy".into());
        let envoy_user_uid = nix::unistd::User::from_name(&user)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw());
        let nameservers = need_nameservers.then(|| {
            let text =
                std::fs::read("/etc/resolv.conf").map_err(|e| format!("reading /etc/resolv.conf: {e}"))?;
            let conf =
                resolv_conf::Config::parse(&text).map_err(|e| format!("parsing /etc/resolv.conf: {e}"))?;
            Ok(conf.nameservers.iter().map(|ns| ns.into()).collect())
        });
        HostFacts {
            env,
            addresses: local_addresses(),
            nameservers,
            envoy_user_uid,
        }
    }

    fn var(&self, name: &str) -> Option<&str> {
        self.env.get(name).map(String::as_str)
    }
}

/// Non-loopback, non-link-local addresses of this network namespace, as Istio looks them up to
/// decide whether the pod is IPv6.
pub fn local_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for ifa in addrs {
        let Some(addr) = ifa.address else { continue };
        let ip: IpAddr = if let Some(v4) = addr.as_sockaddr_in() {
            v4.ip().into()
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            v6.ip().into()
        } else {
            continue;
        };
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        let link_local = match ip {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80 || v6.is_multicast(),
        };
        if !ip.is_loopback() && !link_local {
            out.push(ip);
        }
    }
    out
}

/// A flag value that failed to parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid value {value:?} for {flag}: {reason}")]
pub struct FlagError {
    pub flag: String,
    pub value: String,
    pub reason: String,
}

fn flag_err(flag: &str, value: &str, reason: impl Into<String>) -> FlagError {
    FlagError {
        flag: flag.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

fn port_flag(flag: &str, value: &str) -> Result<u16, FlagError> {
    match value.trim().parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        Ok(p) => Err(flag_err(flag, value, format!("port {p} is out of range 1-65535"))),
        Err(_) => Err(flag_err(flag, value, "not a port number")),
    }
}

/// What the command should do besides generating rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOptions {
    pub dry_run: bool,
    pub restore_format: bool,
    pub skip_rule_apply: bool,
    pub run_validation: bool,
    pub probe_port: u16,
    pub probe_timeout: Duration,
    pub network_namespace: Option<String>,
    pub reconcile: bool,
    pub cleanup: bool,
    pub force_apply: bool,
}

impl IptablesFlags {
    /// Whether resolving these flags needs the name servers of resolv.conf.
    pub fn needs_nameservers(&self, host_env: &BTreeMap<String, String>) -> bool {
        let dns = self.redirect_dns.unwrap_or_else(|| {
            host_env
                .get("ISTIO_META_DNS_CAPTURE")
                .and_then(|v| parse_go_bool(v).ok())
                .unwrap_or(false)
        });
        dns && !self.capture_all_dns
    }

    /// Resolves flags and host facts into a capture configuration and run options, the way
    /// `istio-iptables` does; any bad value is an error naming its flag.
    pub fn resolve(&self, host: &HostFacts) -> Result<(CaptureConfig, RunOptions), FlagError> {
        let env_bool = |name: &str| -> Result<Option<bool>, FlagError> {
            match host.var(name) {
                None => Ok(None),
                Some(v) => parse_go_bool(v)
                    .map(Some)
                    .map_err(|e| flag_err(&format!("${name}"), v, e)),
            }
        };
        let redirect_dns = match self.redirect_dns {
            Some(v) => v,
            None => env_bool("ISTIO_META_DNS_CAPTURE")?.unwrap_or(false),
        };
        let drop_invalid = match self.drop_invalid {
            Some(v) => v,
            None => env_bool("INVALID_DROP")?.unwrap_or(false),
        };
        let dual_stack = match self.dual_stack {
            Some(v) => v,
            None => env_bool("ISTIO_DUAL_STACK")?.unwrap_or(false),
        };

        let proxy_uids = if self.proxy_uid.trim().is_empty() {
            vec![host.envoy_user_uid.unwrap_or(1337).to_string()]
        } else {
            config::parse_owners(&self.proxy_uid)
                .map_err(|e| flag_err("-u/--proxy-uid", &self.proxy_uid, e))?
        };
        let proxy_gids = if self.proxy_gid.trim().is_empty() {
            proxy_uids.clone()
        } else {
            config::parse_owners(&self.proxy_gid)
                .map_err(|e| flag_err("-g/--proxy-gid", &self.proxy_gid, e))?
        };
        let interception_mode: InterceptionMode = self.interception_mode.parse().map_err(|e: String| {
            flag_err("-m/--istio-inbound-interception-mode", &self.interception_mode, e)
        })?;
        let outbound_ranges_exclude = match self.service_exclude_cidr.trim() {
            "*" => {
                return Err(flag_err(
                    "-x/--istio-service-exclude-cidr",
                    &self.service_exclude_cidr,
                    "\"*\" would exclude every destination; use -i \"\" to disable outbound capture",
                ))
            }
            v => config::parse_cidrs(v).map_err(|e| flag_err("-x/--istio-service-exclude-cidr", v, e))?,
        };
        let owner_include = host.var("ISTIO_OUTBOUND_OWNER_GROUPS").unwrap_or("*");
        let owner_exclude = host.var("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE").unwrap_or("");
        let owner_groups = OwnerGroups::parse(owner_include, owner_exclude).map_err(|e| {
            flag_err(
                "$ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE]",
                &format!("{owner_include}/{owner_exclude}"),
                e,
            )
        })?;

        // Istio decides on IPv6 from the first usable address (or any, in dual-stack mode).
        let enable_ipv6 = if dual_stack {
            host.addresses.iter().any(IpAddr::is_ipv6)
        } else {
            host.addresses.first().is_some_and(IpAddr::is_ipv6)
        };

        let (mut dns_servers_v4, mut dns_servers_v6) = (Vec::new(), Vec::new());
        if redirect_dns && !self.capture_all_dns {
            match &host.nameservers {
                Some(Ok(servers)) => {
                    for s in servers {
                        match s {
                            IpAddr::V4(v4) => dns_servers_v4.push(*v4),
                            IpAddr::V6(v6) => dns_servers_v6.push(*v6),
                        }
                    }
                }
                Some(Err(e)) => return Err(flag_err("--redirect-dns", "true", e.clone())),
                None => {}
            }
        }

        let cfg = CaptureConfig {
            proxy_port: port_flag("-p/--envoy-port", &self.envoy_port)?,
            inbound_capture_port: port_flag("-z/--inbound-capture-port", &self.inbound_capture_port)?,
            inbound_tunnel_port: port_flag("-e/--inbound-tunnel-port", &self.inbound_tunnel_port)?,
            proxy_uids,
            proxy_gids,
            interception_mode,
            tproxy_mark: self.tproxy_mark.trim().parse().map_err(|_| {
                flag_err(
                    "-t/--istio-inbound-tproxy-mark",
                    &self.tproxy_mark,
                    "not a 32-bit mark",
                )
            })?,
            tproxy_route_table: self.tproxy_route_table.trim().parse().map_err(|_| {
                flag_err(
                    "-r/--istio-inbound-tproxy-route-table",
                    &self.tproxy_route_table,
                    "not a routing table number",
                )
            })?,
            inbound_ports: InboundPorts::parse(&self.inbound_ports)
                .map_err(|e| flag_err("-b/--istio-inbound-ports", &self.inbound_ports, e))?,
            inbound_ports_exclude: config::parse_ports(&self.local_exclude_ports)
                .map_err(|e| flag_err("-d/--istio-local-exclude-ports", &self.local_exclude_ports, e))?,
            outbound_ranges: OutboundRanges::parse(&self.service_cidr)
                .map_err(|e| flag_err("-i/--istio-service-cidr", &self.service_cidr, e))?,
            outbound_ranges_exclude,
            outbound_ports_include: config::parse_ports(&self.outbound_ports)
                .map_err(|e| flag_err("-q/--istio-outbound-ports", &self.outbound_ports, e))?,
            outbound_ports_exclude: config::parse_ports(&self.local_outbound_ports_exclude).map_err(|e| {
                flag_err(
                    "-o/--istio-local-outbound-ports-exclude",
                    &self.local_outbound_ports_exclude,
                    e,
                )
            })?,
            kube_virt_interfaces: config::parse_interfaces(&self.kube_virt_interfaces)
                .map_err(|e| flag_err("-k/--kube-virt-interfaces", &self.kube_virt_interfaces, e))?,
            exclude_interfaces: config::parse_interfaces(&self.exclude_interfaces)
                .map_err(|e| flag_err("-c/--istio-exclude-interfaces", &self.exclude_interfaces, e))?,
            owner_groups,
            redirect_dns,
            capture_all_dns: self.capture_all_dns,
            dns_servers_v4,
            dns_servers_v6,
            drop_invalid,
            enable_ipv6,
            dual_stack,
            trace_logging: self.trace_logging,
        };
        let network_namespace = match self.network_namespace.trim() {
            "" => None,
            ns if ns.starts_with('/') => Some(ns.to_owned()),
            ns if !ns.contains('/') => Some(format!("/run/netns/{ns}")),
            ns => {
                return Err(flag_err(
                    "--network-namespace",
                    ns,
                    "expected a path or a name under /run/netns",
                ))
            }
        };
        let opts = RunOptions {
            dry_run: self.dry_run,
            restore_format: self.restore_format,
            skip_rule_apply: self.skip_rule_apply,
            run_validation: self.run_validation,
            probe_port: port_flag("--iptables-probe-port", &self.probe_port)?,
            probe_timeout: parse_go_duration(&self.probe_timeout)
                .map_err(|e| flag_err("--probe-timeout", &self.probe_timeout, e))?,
            network_namespace,
            reconcile: self.reconcile,
            cleanup: self.cleanup,
            force_apply: self.force_apply,
        };
        Ok((cfg, opts))
    }
}

/// Istio's "Istio iptables environment:" block: the variables as the process saw them.
pub fn environment_report(host: &HostFacts) -> String {
    let mut out = String::new();
    for name in ENV_REPORT {
        out.push_str(&format!("{name}={}\n", host.var(name).unwrap_or("")));
    }
    out
}

/// Istio's "Istio iptables variables:" block: the resolved configuration.
pub fn variables_report(cfg: &CaptureConfig, opts: &RunOptions, flags: &IptablesFlags) -> String {
    let list = |v: &[String]| v.join(",");
    let owner = match &cfg.owner_groups {
        OwnerGroups::AllExcept(ex) => ("*".to_string(), ex.join(",")),
        OwnerGroups::Only(inc) => (inc.join(","), String::new()),
    };
    let v4: Vec<String> = cfg.dns_servers_v4.iter().map(|s| s.to_string()).collect();
    let v6: Vec<String> = cfg.dns_servers_v6.iter().map(|s| s.to_string()).collect();
    let lines = [
        ("PROXY_PORT", cfg.proxy_port.to_string()),
        ("PROXY_INBOUND_CAPTURE_PORT", cfg.inbound_capture_port.to_string()),
        ("PROXY_TUNNEL_PORT", cfg.inbound_tunnel_port.to_string()),
        ("PROXY_UID", list(&cfg.proxy_uids)),
        ("PROXY_GID", list(&cfg.proxy_gids)),
        (
            "INBOUND_INTERCEPTION_MODE",
            cfg.interception_mode.as_str().to_string(),
        ),
        ("INBOUND_TPROXY_MARK", cfg.tproxy_mark.to_string()),
        ("INBOUND_TPROXY_ROUTE_TABLE", cfg.tproxy_route_table.to_string()),
        ("INBOUND_PORTS_INCLUDE", cfg.inbound_ports.to_string()),
        ("INBOUND_PORTS_EXCLUDE", config::join(&cfg.inbound_ports_exclude)),
        ("OUTBOUND_OWNER_GROUPS_INCLUDE", owner.0),
        ("OUTBOUND_OWNER_GROUPS_EXCLUDE", owner.1),
        ("OUTBOUND_IP_RANGES_INCLUDE", cfg.outbound_ranges.to_string()),
        (
            "OUTBOUND_IP_RANGES_EXCLUDE",
            config::join(&cfg.outbound_ranges_exclude),
        ),
        (
            "OUTBOUND_PORTS_INCLUDE",
            config::join(&cfg.outbound_ports_include),
        ),
        (
            "OUTBOUND_PORTS_EXCLUDE",
            config::join(&cfg.outbound_ports_exclude),
        ),
        ("KUBE_VIRT_INTERFACES", list(&cfg.kube_virt_interfaces)),
        ("ENABLE_INBOUND_IPV6", cfg.enable_ipv6.to_string()),
        ("DUAL_STACK", cfg.dual_stack.to_string()),
        ("DNS_CAPTURE", cfg.redirect_dns.to_string()),
        ("DROP_INVALID", cfg.drop_invalid.to_string()),
        ("CAPTURE_ALL_DNS", cfg.capture_all_dns.to_string()),
        ("DNS_SERVERS", format!("[{}],[{}]", v4.join(" "), v6.join(" "))),
        (
            "NETWORK_NAMESPACE",
            opts.network_namespace.clone().unwrap_or_default(),
        ),
        ("CNI_MODE", flags.cni_mode.to_string()),
        ("HOST_NSENTER_EXEC", flags.host_nsenter_exec.to_string()),
        ("EXCLUDE_INTERFACES", list(&cfg.exclude_interfaces)),
        ("RECONCILE", opts.reconcile.to_string()),
        ("CLEANUP_ONLY", opts.cleanup.to_string()),
        ("FORCE_APPLY", opts.force_apply.to_string()),
    ];
    let mut out = String::new();
    for (k, v) in lines {
        out.push_str(&format!("{k}={v}\n"));
    }
    out
}
