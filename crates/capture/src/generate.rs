//! `CaptureConfig` → rules, following Istio 1.19's `istio-iptables` rule for rule and in the same
//! order, so that `iptables-save` in a pod reads exactly as the seeds print it. Pure: no I/O.

use ipnet::IpNet;

use crate::config::DNS_CAPTURE_PORT;
use crate::config::{CaptureConfig, InboundPorts, InterceptionMode, OutboundRanges, OwnerGroups};
use crate::rules::{Family, Position, Rule, RuleSet, Table};

/// Chains Skiff (like Istio) creates.
pub const ISTIO_INBOUND: &str = "ISTIO_INBOUND";
pub const ISTIO_OUTPUT: &str = "ISTIO_OUTPUT";
pub const ISTIO_REDIRECT: &str = "ISTIO_REDIRECT";
pub const ISTIO_IN_REDIRECT: &str = "ISTIO_IN_REDIRECT";
pub const ISTIO_DIVERT: &str = "ISTIO_DIVERT";
pub const ISTIO_TPROXY: &str = "ISTIO_TPROXY";

/// Every chain name Skiff may own, whatever the configuration.
pub const OWN_CHAINS: [&str; 6] = [
    ISTIO_INBOUND,
    ISTIO_OUTPUT,
    ISTIO_REDIRECT,
    ISTIO_IN_REDIRECT,
    ISTIO_DIVERT,
    ISTIO_TPROXY,
];

/// In TPROXY mode, marks the proxy's own outbound packets to the app so the inbound rules skip them.
pub const OUTBOUND_MARK: &str = "1338";

/// The source address the inbound passthrough cluster binds to, per family.
const INBOUND_PASSTHROUGH_V4: &str = "127.0.0.6/32";
const INBOUND_PASSTHROUGH_V6: &str = "::6/128";
const LOCALHOST_V4: &str = "127.0.0.1/32";
const LOCALHOST_V6: &str = "::1/128";

macro_rules! args {
    ($($x:expr),* $(,)?) => { vec![$($x.to_string()),*] };
}

/// Which families a rule is written for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fam {
    Both,
    V4,
    V6,
}

/// NFLOG identifiers Istio uses for `--iptables-trace-logging`.
#[derive(Clone, Copy)]
enum Trace {
    None,
    JumpInbound,
    JumpOutbound,
    ExcludeInboundPort,
    IncludeInboundPort,
    InboundCapture,
    Kubevirt,
    ExcludeInterface,
}

impl Trace {
    fn id(self) -> Option<&'static str> {
        Some(match self {
            Trace::None => return None,
            Trace::JumpInbound => "JumpInbound",
            Trace::JumpOutbound => "JumpOutbound",
            Trace::ExcludeInboundPort => "ExcludeInboundPort",
            Trace::IncludeInboundPort => "IncludeInboundPort",
            Trace::InboundCapture => "InboundCapture",
            Trace::Kubevirt => "KubevirtCommand",
            Trace::ExcludeInterface => "ExcludeInterfaceCommand",
        })
    }
}

struct Builder<'a> {
    cfg: &'a CaptureConfig,
    set: RuleSet,
}

impl Builder<'_> {
    fn rules_mut(&mut self, family: Family) -> &mut Vec<Rule> {
        match family {
            Family::V4 => &mut self.set.v4,
            Family::V6 => &mut self.set.v6,
        }
    }

    fn push_one(
        &mut self,
        family: Family,
        trace: Trace,
        table: Table,
        chain: &str,
        position: Position,
        args: Vec<String>,
    ) {
        if family == Family::V6 && !self.cfg.enable_ipv6 {
            return;
        }
        let log_rule = match (
            self.cfg.trace_logging,
            trace.id(),
            args.iter().position(|a| a == "-j"),
        ) {
            (true, Some(id), Some(j)) => {
                let mut a = args[..j].to_vec();
                a.extend(args![
                    "-j",
                    "NFLOG",
                    "--nflog-prefix",
                    format!("\"{id}\""),
                    "--nflog-group",
                    "1337",
                    "--nflog-size",
                    "20"
                ]);
                Some(Rule {
                    table,
                    chain: chain.into(),
                    position,
                    args: a,
                })
            }
            _ => None,
        };
        let rule = Rule {
            table,
            chain: chain.into(),
            position,
            args,
        };
        let rules = self.rules_mut(family);
        match (position, log_rule) {
            // Appended: the log rule goes first so it sees the packet before the real rule acts.
            (Position::Append, Some(log)) => {
                rules.push(log);
                rules.push(rule);
            }
            // Inserted at the same position after the real rule, which pushes the real one down.
            (Position::Insert(_), Some(log)) => {
                rules.push(rule);
                rules.push(log);
            }
            (_, None) => rules.push(rule),
        }
    }

    fn push(
        &mut self,
        fam: Fam,
        trace: Trace,
        table: Table,
        chain: &str,
        position: Position,
        args: Vec<String>,
    ) {
        if fam != Fam::V6 {
            self.push_one(Family::V4, trace, table, chain, position, args.clone());
        }
        if fam != Fam::V4 {
            self.push_one(Family::V6, trace, table, chain, position, args);
        }
    }

    fn append(&mut self, table: Table, chain: &str, args: Vec<String>) {
        self.push(Fam::Both, Trace::None, table, chain, Position::Append, args);
    }

    /// A rule that differs between families only by an address (`v4` / `v6`).
    fn append_versioned(
        &mut self,
        table: Table,
        chain: &str,
        v4: &str,
        v6: &str,
        f: impl Fn(&str) -> Vec<String>,
    ) {
        self.push(Fam::V4, Trace::None, table, chain, Position::Append, f(v4));
        self.push(Fam::V6, Trace::None, table, chain, Position::Append, f(v6));
    }
}

/// Outbound include/exclude ranges of one family.
#[derive(Default)]
struct FamilyRanges {
    wildcard: bool,
    cidrs: Vec<IpNet>,
    has_loopback: bool,
}

fn split_ranges(nets: &[IpNet], wildcard: bool) -> (FamilyRanges, FamilyRanges) {
    let mut v4 = FamilyRanges {
        wildcard,
        ..Default::default()
    };
    let mut v6 = FamilyRanges {
        wildcard,
        ..Default::default()
    };
    for net in nets {
        let side = if net.addr().is_ipv4() { &mut v4 } else { &mut v6 };
        side.has_loopback |= net.addr().is_loopback();
        side.cidrs.push(*net);
    }
    (v4, v6)
}

/// Builds the rules for `cfg`.
pub fn rules(cfg: &CaptureConfig) -> RuleSet {
    let mut b = Builder {
        cfg,
        set: RuleSet::default(),
    };
    let tproxy = cfg.interception_mode == InterceptionMode::Tproxy;
    let (exclude_v4, exclude_v6) = split_ranges(&cfg.outbound_ranges_exclude, false);
    let (include_v4, include_v6) = match &cfg.outbound_ranges {
        OutboundRanges::None => split_ranges(&[], false),
        OutboundRanges::All => split_ranges(&[], true),
        OutboundRanges::Only(nets) => split_ranges(nets, false),
    };

    // Excluded interfaces: neither direction is captured.
    for nic in &cfg.exclude_interfaces {
        b.push(
            Fam::Both,
            Trace::ExcludeInterface,
            Table::Nat,
            "PREROUTING",
            Position::Append,
            args!["-i", nic, "-j", "RETURN"],
        );
        b.push(
            Fam::Both,
            Trace::ExcludeInterface,
            Table::Nat,
            "OUTPUT",
            Position::Append,
            args!["-o", nic, "-j", "RETURN"],
        );
    }
    if tproxy {
        for nic in &cfg.exclude_interfaces {
            b.push(
                Fam::Both,
                Trace::ExcludeInterface,
                Table::Mangle,
                "PREROUTING",
                Position::Append,
                args!["-i", nic, "-j", "RETURN"],
            );
            b.push(
                Fam::Both,
                Trace::ExcludeInterface,
                Table::Mangle,
                "OUTPUT",
                Position::Append,
                args!["-o", nic, "-j", "RETURN"],
            );
        }
    }
    // KubeVirt interfaces: their inbound traffic is not treated as inbound.
    for nic in &cfg.kube_virt_interfaces {
        b.push(
            Fam::Both,
            Trace::Kubevirt,
            Table::Nat,
            "PREROUTING",
            Position::Insert(1),
            args!["-i", nic, "-j", "RETURN"],
        );
    }
    if cfg.drop_invalid {
        b.append(
            Table::Mangle,
            "PREROUTING",
            args!["-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"],
        );
    }

    let tunnel = cfg.inbound_tunnel_port;
    b.append(
        Table::Nat,
        ISTIO_INBOUND,
        args!["-p", "tcp", "--dport", tunnel, "-j", "RETURN"],
    );
    b.append(
        Table::Nat,
        ISTIO_REDIRECT,
        args!["-p", "tcp", "-j", "REDIRECT", "--to-ports", cfg.proxy_port],
    );
    b.push(
        Fam::Both,
        Trace::InboundCapture,
        Table::Nat,
        ISTIO_IN_REDIRECT,
        Position::Append,
        args![
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            cfg.inbound_capture_port
        ],
    );

    inbound(&mut b);

    // Outbound: every TCP connection the pod makes goes through ISTIO_OUTPUT.
    b.push(
        Fam::Both,
        Trace::JumpOutbound,
        Table::Nat,
        "OUTPUT",
        Position::Append,
        args!["-p", "tcp", "-j", ISTIO_OUTPUT],
    );
    for port in &cfg.outbound_ports_exclude {
        b.append(
            Table::Nat,
            ISTIO_OUTPUT,
            args!["-p", "tcp", "--dport", port, "-j", "RETURN"],
        );
    }
    // The inbound passthrough cluster connects to the app from 127.0.0.6: leave it alone.
    b.append_versioned(
        Table::Nat,
        ISTIO_OUTPUT,
        INBOUND_PASSTHROUGH_V4,
        INBOUND_PASSTHROUGH_V6,
        |src| args!["-o", "lo", "-s", src, "-j", "RETURN"],
    );
    let loopback_included = include_v4.has_loopback || include_v6.has_loopback;
    for uid in &cfg.proxy_uids {
        // The proxy calling its own pod's service VIP comes back in through the inbound path.
        b.append_versioned(Table::Nat, ISTIO_OUTPUT, LOCALHOST_V4, LOCALHOST_V6, |lo| {
            if cfg.redirect_dns {
                args![
                    "-o",
                    "lo",
                    "!",
                    "-d",
                    lo,
                    "-p",
                    "tcp",
                    "-m",
                    "multiport",
                    "!",
                    "--dports",
                    format!("53,{tunnel}"),
                    "-m",
                    "owner",
                    "--uid-owner",
                    uid,
                    "-j",
                    ISTIO_IN_REDIRECT
                ]
            } else {
                args![
                    "-o",
                    "lo",
                    "!",
                    "-d",
                    lo,
                    "-p",
                    "tcp",
                    "!",
                    "--dport",
                    tunnel,
                    "-m",
                    "owner",
                    "--uid-owner",
                    uid,
                    "-j",
                    ISTIO_IN_REDIRECT
                ]
            }
        });
        // An app calling itself by its endpoint address over lo is not captured.
        if !loopback_included {
            if cfg.redirect_dns {
                b.append(
                    Table::Nat,
                    ISTIO_OUTPUT,
                    args![
                        "-o",
                        "lo",
                        "-p",
                        "tcp",
                        "!",
                        "--dport",
                        "53",
                        "-m",
                        "owner",
                        "!",
                        "--uid-owner",
                        uid,
                        "-j",
                        "RETURN"
                    ],
                );
            } else {
                b.append(
                    Table::Nat,
                    ISTIO_OUTPUT,
                    args!["-o", "lo", "-m", "owner", "!", "--uid-owner", uid, "-j", "RETURN"],
                );
            }
        }
        // The proxy's own connections leave the pod: no loop.
        b.append(
            Table::Nat,
            ISTIO_OUTPUT,
            args!["-m", "owner", "--uid-owner", uid, "-j", "RETURN"],
        );
    }
    for gid in &cfg.proxy_gids {
        b.append_versioned(Table::Nat, ISTIO_OUTPUT, LOCALHOST_V4, LOCALHOST_V6, |lo| {
            args![
                "-o",
                "lo",
                "!",
                "-d",
                lo,
                "-p",
                "tcp",
                "!",
                "--dport",
                tunnel,
                "-m",
                "owner",
                "--gid-owner",
                gid,
                "-j",
                ISTIO_IN_REDIRECT
            ]
        });
        if !loopback_included {
            if cfg.redirect_dns {
                b.append(
                    Table::Nat,
                    ISTIO_OUTPUT,
                    args![
                        "-o",
                        "lo",
                        "-p",
                        "tcp",
                        "!",
                        "--dport",
                        "53",
                        "-m",
                        "owner",
                        "!",
                        "--gid-owner",
                        gid,
                        "-j",
                        "RETURN"
                    ],
                );
            } else {
                b.append(
                    Table::Nat,
                    ISTIO_OUTPUT,
                    args!["-o", "lo", "-m", "owner", "!", "--gid-owner", gid, "-j", "RETURN"],
                );
            }
        }
        b.append(
            Table::Nat,
            ISTIO_OUTPUT,
            args!["-m", "owner", "--gid-owner", gid, "-j", "RETURN"],
        );
    }
    match &cfg.owner_groups {
        OwnerGroups::AllExcept(groups) => {
            for g in groups {
                b.append(
                    Table::Nat,
                    ISTIO_OUTPUT,
                    args!["-m", "owner", "--gid-owner", g, "-j", "RETURN"],
                );
            }
        }
        OwnerGroups::Only(groups) => {
            let mut a = Vec::new();
            for g in groups {
                a.extend(args!["-m", "owner", "!", "--gid-owner", g]);
            }
            a.extend(args!["-j", "RETURN"]);
            b.append(Table::Nat, ISTIO_OUTPUT, a);
        }
    }
    if cfg.redirect_dns {
        if cfg.capture_all_dns {
            b.append(
                Table::Nat,
                ISTIO_OUTPUT,
                args![
                    "-p",
                    "tcp",
                    "--dport",
                    "53",
                    "-j",
                    "REDIRECT",
                    "--to-ports",
                    DNS_CAPTURE_PORT
                ],
            );
        } else {
            for s in &cfg.dns_servers_v4 {
                b.push(
                    Fam::V4,
                    Trace::None,
                    Table::Nat,
                    ISTIO_OUTPUT,
                    Position::Append,
                    args![
                        "-p",
                        "tcp",
                        "--dport",
                        "53",
                        "-d",
                        format!("{s}/32"),
                        "-j",
                        "REDIRECT",
                        "--to-ports",
                        DNS_CAPTURE_PORT
                    ],
                );
            }
            for s in &cfg.dns_servers_v6 {
                b.push(
                    Fam::V6,
                    Trace::None,
                    Table::Nat,
                    ISTIO_OUTPUT,
                    Position::Append,
                    args![
                        "-p",
                        "tcp",
                        "--dport",
                        "53",
                        "-d",
                        format!("{s}/128"),
                        "-j",
                        "REDIRECT",
                        "--to-ports",
                        DNS_CAPTURE_PORT
                    ],
                );
            }
        }
    }
    // Apps that talk to localhost explicitly are never captured.
    b.append_versioned(Table::Nat, ISTIO_OUTPUT, LOCALHOST_V4, LOCALHOST_V6, |lo| {
        args!["-d", lo, "-j", "RETURN"]
    });
    // Exclusions must come before inclusions.
    for net in &exclude_v4.cidrs {
        b.push(
            Fam::V4,
            Trace::None,
            Table::Nat,
            ISTIO_OUTPUT,
            Position::Append,
            args!["-d", net, "-j", "RETURN"],
        );
    }
    for net in &exclude_v6.cidrs {
        b.push(
            Fam::V6,
            Trace::None,
            Table::Nat,
            ISTIO_OUTPUT,
            Position::Append,
            args!["-d", net, "-j", "RETURN"],
        );
    }
    for port in &cfg.outbound_ports_include {
        b.append(
            Table::Nat,
            ISTIO_OUTPUT,
            args!["-p", "tcp", "--dport", port, "-j", ISTIO_REDIRECT],
        );
    }
    outbound_includes(&mut b, Fam::V4, &include_v4);
    outbound_includes(&mut b, Fam::V6, &include_v6);

    if cfg.redirect_dns {
        dns_udp(&mut b);
    }
    if tproxy {
        tproxy_marks(&mut b);
    }
    b.set
}

fn inbound(b: &mut Builder<'_>) {
    let cfg = b.cfg;
    if cfg.inbound_ports == InboundPorts::None {
        return;
    }
    let tproxy = cfg.interception_mode == InterceptionMode::Tproxy;
    let table = if tproxy {
        // Marked packets are routed to lo (policy routing), where TPROXY hands them to the proxy.
        b.append(
            Table::Mangle,
            ISTIO_DIVERT,
            args!["-j", "MARK", "--set-mark", cfg.tproxy_mark],
        );
        b.append(Table::Mangle, ISTIO_DIVERT, args!["-j", "ACCEPT"]);
        let (mark, port) = (cfg.tproxy_mark, cfg.inbound_capture_port);
        b.append_versioned(Table::Mangle, ISTIO_TPROXY, LOCALHOST_V4, LOCALHOST_V6, |lo| {
            args![
                "!",
                "-d",
                lo,
                "-p",
                "tcp",
                "-j",
                "TPROXY",
                "--tproxy-mark",
                format!("{mark}/0xffffffff"),
                "--on-port",
                port
            ]
        });
        Table::Mangle
    } else {
        Table::Nat
    };
    b.push(
        Fam::Both,
        Trace::JumpInbound,
        table,
        "PREROUTING",
        Position::Append,
        args!["-p", "tcp", "-j", ISTIO_INBOUND],
    );
    match &cfg.inbound_ports {
        InboundPorts::None => {}
        InboundPorts::All => {
            for port in &cfg.inbound_ports_exclude {
                b.push(
                    Fam::Both,
                    Trace::ExcludeInboundPort,
                    table,
                    ISTIO_INBOUND,
                    Position::Append,
                    args!["-p", "tcp", "--dport", port, "-j", "RETURN"],
                );
            }
            if tproxy {
                b.append(
                    Table::Mangle,
                    ISTIO_INBOUND,
                    args![
                        "-p",
                        "tcp",
                        "-m",
                        "conntrack",
                        "--ctstate",
                        "RELATED,ESTABLISHED",
                        "-j",
                        ISTIO_DIVERT
                    ],
                );
                b.append(
                    Table::Mangle,
                    ISTIO_INBOUND,
                    args!["-p", "tcp", "-j", ISTIO_TPROXY],
                );
            } else {
                b.append(
                    Table::Nat,
                    ISTIO_INBOUND,
                    args!["-p", "tcp", "-j", ISTIO_IN_REDIRECT],
                );
            }
        }
        InboundPorts::Only(ports) => {
            for port in ports {
                if tproxy {
                    b.push(
                        Fam::Both,
                        Trace::IncludeInboundPort,
                        Table::Mangle,
                        ISTIO_INBOUND,
                        Position::Append,
                        args![
                            "-p",
                            "tcp",
                            "--dport",
                            port,
                            "-m",
                            "conntrack",
                            "--ctstate",
                            "RELATED,ESTABLISHED",
                            "-j",
                            ISTIO_DIVERT
                        ],
                    );
                    b.push(
                        Fam::Both,
                        Trace::IncludeInboundPort,
                        Table::Mangle,
                        ISTIO_INBOUND,
                        Position::Append,
                        args!["-p", "tcp", "--dport", port, "-j", ISTIO_TPROXY],
                    );
                } else {
                    b.push(
                        Fam::Both,
                        Trace::IncludeInboundPort,
                        Table::Nat,
                        ISTIO_INBOUND,
                        Position::Append,
                        args!["-p", "tcp", "--dport", port, "-j", ISTIO_IN_REDIRECT],
                    );
                }
            }
        }
    }
}

fn outbound_includes(b: &mut Builder<'_>, fam: Fam, include: &FamilyRanges) {
    let virt = b.cfg.kube_virt_interfaces.clone();
    if include.wildcard {
        b.push(
            fam,
            Trace::None,
            Table::Nat,
            ISTIO_OUTPUT,
            Position::Append,
            args!["-j", ISTIO_REDIRECT],
        );
        for nic in &virt {
            b.push(
                fam,
                Trace::Kubevirt,
                Table::Nat,
                "PREROUTING",
                Position::Insert(1),
                args!["-i", nic, "-j", ISTIO_REDIRECT],
            );
        }
    } else if !include.cidrs.is_empty() {
        for net in &include.cidrs {
            for nic in &virt {
                b.push(
                    fam,
                    Trace::Kubevirt,
                    Table::Nat,
                    "PREROUTING",
                    Position::Insert(1),
                    args!["-i", nic, "-d", net, "-j", ISTIO_REDIRECT],
                );
            }
            b.push(
                fam,
                Trace::None,
                Table::Nat,
                ISTIO_OUTPUT,
                Position::Append,
                args!["-d", net, "-j", ISTIO_REDIRECT],
            );
        }
        // Everything else goes out uncaptured.
        b.push(
            fam,
            Trace::None,
            Table::Nat,
            ISTIO_OUTPUT,
            Position::Append,
            args!["-j", "RETURN"],
        );
    }
}

/// UDP DNS to the agent's DNS proxy, and conntrack zones that keep the proxy's upstream queries
/// and the app's queries apart (avoids the UDP conntrack race).
fn dns_udp(b: &mut Builder<'_>) {
    let cfg = b.cfg;
    let out = |b: &mut Builder<'_>, fam: Fam, table: Table, chain: &str, a: Vec<String>| {
        b.push(fam, Trace::None, table, chain, Position::Append, a);
    };
    for uid in &cfg.proxy_uids {
        out(
            b,
            Fam::Both,
            Table::Nat,
            "OUTPUT",
            args![
                "-p",
                "udp",
                "--dport",
                "53",
                "-m",
                "owner",
                "--uid-owner",
                uid,
                "-j",
                "RETURN"
            ],
        );
    }
    for gid in &cfg.proxy_gids {
        out(
            b,
            Fam::Both,
            Table::Nat,
            "OUTPUT",
            args![
                "-p",
                "udp",
                "--dport",
                "53",
                "-m",
                "owner",
                "--gid-owner",
                gid,
                "-j",
                "RETURN"
            ],
        );
    }
    match &cfg.owner_groups {
        OwnerGroups::AllExcept(groups) => {
            for g in groups {
                out(
                    b,
                    Fam::Both,
                    Table::Nat,
                    "OUTPUT",
                    args![
                        "-p",
                        "udp",
                        "--dport",
                        "53",
                        "-m",
                        "owner",
                        "--gid-owner",
                        g,
                        "-j",
                        "RETURN"
                    ],
                );
            }
        }
        OwnerGroups::Only(groups) => {
            let mut a = args!["-p", "udp", "--dport", "53"];
            for g in groups {
                a.extend(args!["-m", "owner", "!", "--gid-owner", g]);
            }
            a.extend(args!["-j", "RETURN"]);
            out(b, Fam::Both, Table::Nat, "OUTPUT", a);
        }
    }
    if cfg.capture_all_dns {
        out(
            b,
            Fam::Both,
            Table::Nat,
            "OUTPUT",
            args![
                "-p",
                "udp",
                "--dport",
                "53",
                "-j",
                "REDIRECT",
                "--to-port",
                DNS_CAPTURE_PORT
            ],
        );
    } else {
        for s in &cfg.dns_servers_v4 {
            out(
                b,
                Fam::V4,
                Table::Nat,
                "OUTPUT",
                args![
                    "-p",
                    "udp",
                    "--dport",
                    "53",
                    "-d",
                    format!("{s}/32"),
                    "-j",
                    "REDIRECT",
                    "--to-port",
                    DNS_CAPTURE_PORT
                ],
            );
        }
        for s in &cfg.dns_servers_v6 {
            out(
                b,
                Fam::V6,
                Table::Nat,
                "OUTPUT",
                args![
                    "-p",
                    "udp",
                    "--dport",
                    "53",
                    "-d",
                    format!("{s}/128"),
                    "-j",
                    "REDIRECT",
                    "--to-port",
                    DNS_CAPTURE_PORT
                ],
            );
        }
    }
    // Zone 1: the proxy and upstream resolvers. Zone 2: the app and the proxy's DNS listener.
    for uid in &cfg.proxy_uids {
        out(
            b,
            Fam::Both,
            Table::Raw,
            "OUTPUT",
            args![
                "-p",
                "udp",
                "--dport",
                "53",
                "-m",
                "owner",
                "--uid-owner",
                uid,
                "-j",
                "CT",
                "--zone",
                "1"
            ],
        );
        out(
            b,
            Fam::Both,
            Table::Raw,
            "OUTPUT",
            args![
                "-p",
                "udp",
                "--sport",
                DNS_CAPTURE_PORT,
                "-m",
                "owner",
                "--uid-owner",
                uid,
                "-j",
                "CT",
                "--zone",
                "2"
            ],
        );
    }
    for gid in &cfg.proxy_gids {
        out(
            b,
            Fam::Both,
            Table::Raw,
            "OUTPUT",
            args![
                "-p",
                "udp",
                "--dport",
                "53",
                "-m",
                "owner",
                "--gid-owner",
                gid,
                "-j",
                "CT",
                "--zone",
                "1"
            ],
        );
        out(
            b,
            Fam::Both,
            Table::Raw,
            "OUTPUT",
            args![
                "-p",
                "udp",
                "--sport",
                DNS_CAPTURE_PORT,
                "-m",
                "owner",
                "--gid-owner",
                gid,
                "-j",
                "CT",
                "--zone",
                "2"
            ],
        );
    }
    if cfg.capture_all_dns {
        out(
            b,
            Fam::Both,
            Table::Raw,
            "OUTPUT",
            args!["-p", "udp", "--dport", "53", "-j", "CT", "--zone", "2"],
        );
        out(
            b,
            Fam::Both,
            Table::Raw,
            "PREROUTING",
            args!["-p", "udp", "--sport", "53", "-j", "CT", "--zone", "1"],
        );
    } else {
        for s in &cfg.dns_servers_v4 {
            out(
                b,
                Fam::V4,
                Table::Raw,
                "OUTPUT",
                args![
                    "-p",
                    "udp",
                    "--dport",
                    "53",
                    "-d",
                    format!("{s}/32"),
                    "-j",
                    "CT",
                    "--zone",
                    "2"
                ],
            );
            out(
                b,
                Fam::V4,
                Table::Raw,
                "PREROUTING",
                args![
                    "-p",
                    "udp",
                    "--sport",
                    "53",
                    "-d",
                    format!("{s}/32"),
                    "-j",
                    "CT",
                    "--zone",
                    "1"
                ],
            );
        }
        for s in &cfg.dns_servers_v6 {
            out(
                b,
                Fam::V6,
                Table::Raw,
                "OUTPUT",
                args![
                    "-p",
                    "udp",
                    "--dport",
                    "53",
                    "-d",
                    format!("{s}/128"),
                    "-j",
                    "CT",
                    "--zone",
                    "2"
                ],
            );
            out(
                b,
                Fam::V6,
                Table::Raw,
                "PREROUTING",
                args![
                    "-p",
                    "udp",
                    "--sport",
                    "53",
                    "-d",
                    format!("{s}/128"),
                    "-j",
                    "CT",
                    "--zone",
                    "1"
                ],
            );
        }
    }
}

/// TPROXY bookkeeping: keep marks across the connection and skip traffic the proxy itself sends
/// to the app, so it is not captured again.
fn tproxy_marks(b: &mut Builder<'_>) {
    let cfg = b.cfg;
    let mark = cfg.tproxy_mark;
    b.append(
        Table::Mangle,
        "PREROUTING",
        args![
            "-p",
            "tcp",
            "-m",
            "mark",
            "--mark",
            mark,
            "-j",
            "CONNMARK",
            "--save-mark"
        ],
    );
    b.append(
        Table::Mangle,
        "OUTPUT",
        args!["-p", "tcp", "-o", "lo", "-m", "mark", "--mark", mark, "-j", "RETURN"],
    );
    for uid in &cfg.proxy_uids {
        b.append_versioned(Table::Mangle, "OUTPUT", LOCALHOST_V4, LOCALHOST_V6, |lo| {
            args![
                "!",
                "-d",
                lo,
                "-p",
                "tcp",
                "-o",
                "lo",
                "-m",
                "owner",
                "--uid-owner",
                uid,
                "-j",
                "MARK",
                "--set-mark",
                OUTBOUND_MARK
            ]
        });
    }
    for gid in &cfg.proxy_gids {
        b.append_versioned(Table::Mangle, "OUTPUT", LOCALHOST_V4, LOCALHOST_V6, |lo| {
            args![
                "!",
                "-d",
                lo,
                "-p",
                "tcp",
                "-o",
                "lo",
                "-m",
                "owner",
                "--gid-owner",
                gid,
                "-j",
                "MARK",
                "--set-mark",
                OUTBOUND_MARK
            ]
        });
    }
    b.append(
        Table::Mangle,
        "OUTPUT",
        args![
            "-p",
            "tcp",
            "-m",
            "connmark",
            "--mark",
            mark,
            "-j",
            "CONNMARK",
            "--restore-mark"
        ],
    );
    b.push(
        Fam::Both,
        Trace::None,
        Table::Mangle,
        ISTIO_INBOUND,
        Position::Insert(1),
        args!["-p", "tcp", "-m", "mark", "--mark", mark, "-j", "RETURN"],
    );
    b.push(
        Fam::V4,
        Trace::None,
        Table::Mangle,
        ISTIO_INBOUND,
        Position::Insert(2),
        args![
            "-p",
            "tcp",
            "-s",
            INBOUND_PASSTHROUGH_V4,
            "-i",
            "lo",
            "-j",
            "RETURN"
        ],
    );
    b.push(
        Fam::V6,
        Trace::None,
        Table::Mangle,
        ISTIO_INBOUND,
        Position::Insert(2),
        args![
            "-p",
            "tcp",
            "-s",
            INBOUND_PASSTHROUGH_V6,
            "-i",
            "lo",
            "-j",
            "RETURN"
        ],
    );
    b.push(
        Fam::Both,
        Trace::None,
        Table::Mangle,
        ISTIO_INBOUND,
        Position::Insert(3),
        args![
            "-p",
            "tcp",
            "-i",
            "lo",
            "-m",
            "mark",
            "!",
            "--mark",
            OUTBOUND_MARK,
            "-j",
            "RETURN"
        ],
    );
}
