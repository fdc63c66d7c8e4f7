//! Capture rules in real network namespaces: real iptables, real sockets, real uid 1337.
//! Needs root (CI runs as root; these tests never skip there).

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::time::Duration;

use capture::apply::FamilyOutcome;
use capture::{
    apply, cleanup, generate, original_dst, ApplyError, ApplyOptions, CaptureConfig, Exec, InterceptionMode,
    PortSpec,
};
use testkit::net::accept_within;
use testkit::{Network, Pod, PROXY_UID};

const T: Duration = Duration::from_secs(3);
const SHORT: Duration = Duration::from_millis(700);

fn opts() -> ApplyOptions {
    ApplyOptions {
        restore_format: true,
        ..Default::default()
    }
}

fn apply_in(pod: &Pod, cfg: &CaptureConfig) -> Result<capture::ApplyReport, ApplyError> {
    apply(&Exec::in_netns(&pod.netns_path())?, cfg, &generate(cfg), opts())
}

/// `iptables-save` output without comments and counters.
fn save(pod: &Pod, bin: &str, table: &str) -> String {
    let out = pod.exec(bin, &["-t", table]).expect("iptables-save");
    out.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.find(" [") {
            Some(i) if l.starts_with(':') => l[..i].to_string(),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn listen(pod: &Pod, port: u16) -> TcpListener {
    pod.run(move || TcpListener::bind(("0.0.0.0", port)).expect("bind"))
}

/// Seed 004's `iptables-legacy-save -t nat` of a sidecar pod (counters and header removed).
const SEED_004_NAT: &str = "\
*nat
:PREROUTING ACCEPT
:INPUT ACCEPT
:OUTPUT ACCEPT
:POSTROUTING ACCEPT
:ISTIO_INBOUND -
:ISTIO_IN_REDIRECT -
:ISTIO_OUTPUT -
:ISTIO_REDIRECT -
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN
-A ISTIO_INBOUND -p tcp -m tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp -m tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
COMMIT";

/// Chains and their rules, independent of the order the backend lists chains in.
fn by_chain(save: &str) -> Vec<(String, Vec<String>)> {
    let mut chains: Vec<(String, Vec<String>)> = save
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .map(|l| (l.split(' ').next().unwrap_or("").to_string(), Vec::new()))
        .collect();
    for line in save.lines().filter(|l| l.starts_with("-A ")) {
        let chain = line.split(' ').nth(1).unwrap_or("");
        if let Some((_, rules)) = chains.iter_mut().find(|(c, _)| c == chain) {
            rules.push(line.to_string());
        }
    }
    chains.sort();
    chains
}

#[test]
fn seed_rules_give_seed_004_nat_table_legacy() {
    let net = Network::new("seed004legacy").unwrap();
    let pod = net.add_pod("toolbox").unwrap();
    // A legacy rule elsewhere makes Istio's detection (and Skiff's) pick iptables-legacy, the
    // backend seed 004 was saved with.
    pod.exec(
        "iptables-legacy",
        &[
            "-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "ACCEPT",
        ],
    )
    .unwrap();
    let report = apply_in(&pod, &CaptureConfig::sidecar()).unwrap();
    assert_eq!(report.backends[0].bin, "iptables-legacy");
    assert_eq!(save(&pod, "iptables-legacy-save", "nat"), SEED_004_NAT);
}

#[test]
fn seed_rules_give_seed_004_nat_table_nft() {
    let net = Network::new("seed004nft").unwrap();
    let pod = net.add_pod("toolbox").unwrap();
    let report = apply_in(&pod, &CaptureConfig::sidecar()).unwrap();
    assert_eq!(report.v4, FamilyOutcome::Applied);
    let bin = report.backends[0].save();
    // nf_tables lists chains in creation order; the chains and each chain's rules are the seed's.
    assert_eq!(by_chain(&save(&pod, &bin, "nat")), by_chain(SEED_004_NAT));
}

#[test]
fn app_connection_to_vip_lands_on_15001_with_original_destination() {
    let net = Network::new("outbound").unwrap();
    let app = net.add_pod("app").unwrap();
    apply_in(&app, &CaptureConfig::sidecar()).unwrap();
    let l15001 = listen(&app, 15001);
    let vip: SocketAddr = "198.19.0.10:80".parse().unwrap();
    let client = app.spawn_thread(None, move || TcpStream::connect_timeout(&vip, T));
    let (conn, peer) = accept_within(&l15001, T).expect("connection to the VIP was not captured");
    assert_eq!(original_dst(&conn).unwrap(), vip);
    assert_eq!(peer.ip(), IpAddr::V4(app.ip));
    client.join().unwrap().unwrap();
}

#[test]
fn proxy_uid_connects_straight_out_and_app_does_not() {
    let net = Network::new("nolooop").unwrap();
    let app = net.add_pod("app").unwrap();
    let server = net.add_pod("server").unwrap();
    apply_in(&app, &CaptureConfig::sidecar()).unwrap();
    let l15001 = listen(&app, 15001);
    let l8080 = listen(&server, 8080);
    let target = SocketAddr::new(server.ip.into(), 8080);

    // As the proxy (uid 1337): straight to the server.
    let c = app.spawn_thread(Some((PROXY_UID, PROXY_UID)), move || {
        TcpStream::connect_timeout(&target, T)
    });
    let (_, peer) = accept_within(&l8080, T).expect("uid 1337 did not reach the server directly");
    assert_eq!(peer.ip(), IpAddr::V4(app.ip));
    c.join().unwrap().unwrap();
    assert!(
        accept_within(&l15001, SHORT).is_none(),
        "uid 1337 traffic looped into 15001"
    );

    // As the app (root): captured.
    let c = app.spawn_thread(None, move || TcpStream::connect_timeout(&target, T));
    let (conn, _) = accept_within(&l15001, T).expect("app traffic was not captured");
    assert_eq!(original_dst(&conn).unwrap(), target);
    c.join().unwrap().unwrap();
    assert!(accept_within(&l8080, SHORT).is_none());
}

#[test]
fn inbound_connection_lands_on_15006_and_excluded_ports_do_not() {
    let net = Network::new("inbound").unwrap();
    let client = net.add_pod("client").unwrap();
    let server = net.add_pod("server").unwrap();
    let mut cfg = CaptureConfig::sidecar();
    cfg.inbound_ports_exclude.push(PortSpec::One(9000));
    apply_in(&server, &cfg).unwrap();
    let l15006 = listen(&server, 15006);

    let target = SocketAddr::new(server.ip.into(), 80);
    let c = client.spawn_thread(None, move || TcpStream::connect_timeout(&target, T));
    let (conn, peer) = accept_within(&l15006, T).expect("inbound connection not captured");
    assert_eq!(original_dst(&conn).unwrap(), target);
    assert_eq!(peer.ip(), IpAddr::V4(client.ip));
    c.join().unwrap().unwrap();

    // 15090, 15021, 15020 (the -d list), the -d extra 9000 and the tunnel port 15008 are not captured.
    for port in [15090u16, 15021, 15020, 9000, 15008] {
        let l = listen(&server, port);
        let target = SocketAddr::new(server.ip.into(), port);
        let c = client.spawn_thread(None, move || TcpStream::connect_timeout(&target, T));
        assert!(accept_within(&l, T).is_some(), "port {port} was captured");
        c.join().unwrap().unwrap();
        assert!(
            accept_within(&l15006, Duration::from_millis(200)).is_none(),
            "port {port} reached 15006"
        );
    }
}

#[test]
fn inbound_passthrough_from_127_0_0_6_reaches_the_app() {
    let net = Network::new("passthrough").unwrap();
    let server = net.add_pod("server").unwrap();
    apply_in(&server, &CaptureConfig::sidecar()).unwrap();
    let app = listen(&server, 80);
    let l15006 = listen(&server, 15006);
    let target = SocketAddr::new(server.ip.into(), 80);
    // What the sidecar's inbound cluster does: connect to podIP:80 from 127.0.0.6 as uid 1337.
    let c = server.spawn_thread(Some((PROXY_UID, PROXY_UID)), move || {
        let sock = socket2_bind_connect(Ipv4Addr::new(127, 0, 0, 6), target);
        sock.map(|_| ())
    });
    let (_, peer) = accept_within(&app, T).expect("app did not receive the 127.0.0.6 connection");
    assert_eq!(peer.ip(), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6)));
    c.join().unwrap().unwrap();
    assert!(accept_within(&l15006, SHORT).is_none());
}

/// Binds `src:0`, then connects to `dst` (std has no bind-before-connect).
fn socket2_bind_connect(src: Ipv4Addr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(std::net::SocketAddrV4::new(src, 0)),
    )?;
    let SocketAddr::V4(dst) = dst else { unreachable!() };
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(dst))?;
    // SAFETY: the fd is a connected TCP socket we own.
    Ok(unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) })
}

#[test]
fn outbound_port_and_cidr_exclusions_bypass_the_proxy() {
    let net = Network::new("exclusions").unwrap();
    let app = net.add_pod("app").unwrap();
    let db = net.add_pod("db").unwrap();
    let web = net.add_pod("web").unwrap();
    let mut cfg = CaptureConfig::sidecar();
    cfg.outbound_ports_exclude = vec![PortSpec::One(5432)];
    cfg.outbound_ranges_exclude = vec![format!("{}/32", web.ip).parse().unwrap()];
    apply_in(&app, &cfg).unwrap();
    let l15001 = listen(&app, 15001);

    for (pod, port) in [(&db, 5432u16), (&web, 80)] {
        let l = listen(pod, port);
        let target = SocketAddr::new(pod.ip.into(), port);
        let c = app.spawn_thread(None, move || TcpStream::connect_timeout(&target, T));
        let (_, peer) = accept_within(&l, T).unwrap_or_else(|| panic!("{target} was not reached directly"));
        assert_eq!(peer.ip(), IpAddr::V4(app.ip));
        c.join().unwrap().unwrap();
    }
    assert!(accept_within(&l15001, SHORT).is_none());
    // Control: the same app to db:80 (neither port nor address excluded) is captured.
    let target = SocketAddr::new(db.ip.into(), 80);
    let c = app.spawn_thread(None, move || TcpStream::connect_timeout(&target, T));
    assert!(accept_within(&l15001, T).is_some());
    c.join().unwrap().unwrap();
}

fn transparent_listener(port: u16) -> TcpListener {
    use nix::sys::socket::{
        bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    setsockopt(&fd, sockopt::IpTransparent, &true).unwrap();
    setsockopt(&fd, sockopt::ReuseAddr, &true).unwrap();
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::new(0, 0, 0, 0, port),
    )
    .unwrap();
    listen(&fd, Backlog::new(16).unwrap()).unwrap();
    // SAFETY: a listening TCP socket we own.
    unsafe { TcpListener::from_raw_fd(fd.into_raw_fd()) }
}

#[test]
fn tproxy_mode_delivers_inbound_with_original_destination_intact() {
    let net = Network::new("tproxy").unwrap();
    let client = net.add_pod("client").unwrap();
    let server = net.add_pod("server").unwrap();
    let cfg = CaptureConfig {
        interception_mode: InterceptionMode::Tproxy,
        ..CaptureConfig::sidecar()
    };
    apply_in(&server, &cfg).unwrap();

    let rules = server.exec("ip", &["rule", "show"]).unwrap();
    assert!(rules.contains("fwmark 0x539 lookup 133"), "{rules}");
    let routes = server.exec("ip", &["route", "show", "table", "133"]).unwrap();
    assert!(routes.contains("local default dev lo"), "{routes}");
    let mangle = server.exec("iptables-save", &["-t", "mangle"]).unwrap();
    for want in [
        ":ISTIO_DIVERT",
        ":ISTIO_TPROXY",
        "-j TPROXY --on-port 15006",
        "--tproxy-mark 0x539/0xffffffff",
    ] {
        assert!(mangle.contains(want), "missing {want} in\n{mangle}");
    }

    let l15006 = server.run(|| transparent_listener(15006));
    let target = SocketAddr::new(server.ip.into(), 80);
    let c = client.spawn_thread(None, move || TcpStream::connect_timeout(&target, T));
    let (conn, peer) = accept_within(&l15006, T).expect("TPROXY did not deliver the connection");
    assert_eq!(conn.local_addr().unwrap(), target, "original destination lost");
    assert_eq!(peer.ip(), IpAddr::V4(client.ip), "source not preserved");
    c.join().unwrap().unwrap();

    // Cleanup removes the policy routing too.
    cleanup(&Exec::in_netns(&server.netns_path()).unwrap(), &cfg).unwrap();
    assert!(!server
        .exec("ip", &["rule", "show"])
        .unwrap()
        .contains("lookup 133"));
    assert!(!server.exec("iptables-save", &[]).unwrap().contains("ISTIO"));
}

#[test]
fn cleanup_removes_exactly_what_was_installed_and_is_idempotent() {
    let net = Network::new("cleanup").unwrap();
    let pod = net.add_pod("pod").unwrap();
    // Foreign rules that must survive.
    for args in [
        vec!["-t", "nat", "-N", "FOREIGN"],
        vec!["-t", "nat", "-A", "FOREIGN", "-j", "RETURN"],
        vec![
            "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "9999", "-j", "FOREIGN",
        ],
        vec!["-t", "nat", "-A", "PREROUTING", "-p", "udp", "-j", "RETURN"],
        vec![
            "-t", "mangle", "-A", "OUTPUT", "-p", "tcp", "--dport", "9998", "-j", "RETURN",
        ],
    ] {
        pod.exec("iptables", &args).unwrap();
    }
    let before: Vec<String> = ["nat", "mangle", "raw"]
        .iter()
        .map(|t| save(&pod, "iptables-save", t))
        .collect();
    let mut cfg = CaptureConfig::sidecar();
    cfg.redirect_dns = true;
    cfg.dns_servers_v4 = vec![Ipv4Addr::new(198, 19, 0, 53)];
    apply_in(&pod, &cfg).unwrap();
    assert!(save(&pod, "iptables-save", "nat").contains("ISTIO_OUTPUT"));
    assert!(save(&pod, "iptables-save", "raw").contains("CT --zone"));

    let exec = Exec::in_netns(&pod.netns_path()).unwrap();
    for round in 0..2 {
        cleanup(&exec, &cfg).unwrap_or_else(|e| panic!("cleanup round {round}: {e}"));
        let after: Vec<String> = ["nat", "mangle", "raw"]
            .iter()
            .map(|t| save(&pod, "iptables-save", t))
            .collect();
        assert_eq!(
            after, before,
            "cleanup round {round} changed foreign rules or left Skiff's"
        );
    }
}

#[test]
fn existing_rules_are_kept_replaced_only_on_reconcile() {
    let net = Network::new("drift").unwrap();
    let pod = net.add_pod("pod").unwrap();
    let exec = Exec::in_netns(&pod.netns_path()).unwrap();
    let cfg = CaptureConfig::sidecar();
    assert_eq!(
        apply(&exec, &cfg, &generate(&cfg), opts()).unwrap().v4,
        FamilyOutcome::Applied
    );
    // The same rules again: nothing to do.
    assert_eq!(
        apply(&exec, &cfg, &generate(&cfg), opts()).unwrap().v4,
        FamilyOutcome::AlreadyInPlace
    );
    // Different rules: refused, with the chains named, and nothing changed.
    let other = CaptureConfig {
        proxy_port: 16001,
        ..cfg.clone()
    };
    let before = save(&pod, "iptables-save", "nat");
    let err = apply(&exec, &other, &generate(&other), opts()).unwrap_err();
    assert!(matches!(err, ApplyError::Drift { .. }), "{err}");
    assert!(
        err.to_string().contains("nat/ISTIO_OUTPUT") && err.to_string().contains("--reconcile"),
        "{err}"
    );
    assert_eq!(save(&pod, "iptables-save", "nat"), before);
    // With --reconcile they are replaced.
    let reconcile = ApplyOptions {
        reconcile: true,
        ..opts()
    };
    apply(&exec, &other, &generate(&other), reconcile).unwrap();
    let now = save(&pod, "iptables-save", "nat");
    assert!(
        now.contains("--to-ports 16001") && !now.contains("--to-ports 15001"),
        "{now}"
    );
    assert_eq!(
        now.matches("-A OUTPUT -p tcp -j ISTIO_OUTPUT").count(),
        1,
        "{now}"
    );
}

#[test]
fn ipv6_pod_gets_the_same_logic_in_ip6tables() {
    let net = Network::with_ipv6("ipv6").unwrap();
    let client = net.add_pod("client").unwrap();
    let server = net.add_pod("server").unwrap();
    let cfg = CaptureConfig {
        enable_ipv6: true,
        ..CaptureConfig::sidecar()
    };
    let report = apply_in(&server, &cfg).unwrap();
    assert_eq!(report.v6, FamilyOutcome::Applied);
    let v6 = save(&server, "ip6tables-save", "nat");
    assert!(v6.contains("-A ISTIO_OUTPUT -s ::6/128 -o lo -j RETURN"), "{v6}");
    assert!(server
        .exec("ip", &["-6", "addr", "show", "dev", "lo"])
        .unwrap()
        .contains("::6/128"));

    // An IPv6 connection to the server's port 80 lands on [::]:15006 with its original destination.
    let l15006 = server.run(|| TcpListener::bind("[::]:15006").unwrap());
    let ip6 = server.ip6.unwrap();
    let target = SocketAddr::new(ip6.into(), 80);
    let c = client.spawn_thread(None, move || TcpStream::connect_timeout(&target, T));
    let (conn, _) = accept_within(&l15006, T).expect("IPv6 inbound not captured");
    assert_eq!(original_dst(&conn).unwrap(), target);
    c.join().unwrap().unwrap();
}

#[test]
fn dns_to_the_resolver_is_captured_to_15053_but_not_the_proxys_own() {
    use std::net::UdpSocket;
    let net = Network::new("dns").unwrap();
    let app = net.add_pod("app").unwrap();
    let resolver = net.add_pod("resolver").unwrap();
    let mut cfg = CaptureConfig::sidecar();
    cfg.redirect_dns = true;
    cfg.dns_servers_v4 = vec![resolver.ip];
    apply_in(&app, &cfg).unwrap();
    let agent = app.run(|| UdpSocket::bind("0.0.0.0:15053").unwrap());
    agent.set_read_timeout(Some(T)).unwrap();
    let real = resolver.run(|| UdpSocket::bind("0.0.0.0:53").unwrap());
    real.set_read_timeout(Some(SHORT)).unwrap();
    let server = SocketAddr::new(resolver.ip.into(), 53);

    // The app's query goes to the agent's DNS proxy on 15053 (UDP and TCP).
    app.run(move || {
        UdpSocket::bind("0.0.0.0:0")
            .unwrap()
            .send_to(b"app-query", server)
            .unwrap()
    });
    let mut buf = [0u8; 64];
    let (n, _) = agent.recv_from(&mut buf).expect("UDP DNS was not captured");
    assert_eq!(&buf[..n], b"app-query");
    let l15053 = listen(&app, 15053);
    let c = app.spawn_thread(None, move || TcpStream::connect_timeout(&server, T));
    let (conn, _) = accept_within(&l15053, T).expect("TCP DNS was not captured");
    assert_eq!(original_dst(&conn).unwrap(), server);
    c.join().unwrap().unwrap();

    // The proxy's own upstream query (uid 1337) reaches the real resolver.
    app.run_as(PROXY_UID, PROXY_UID, move || {
        UdpSocket::bind("0.0.0.0:0")
            .unwrap()
            .send_to(b"proxy-query", server)
            .unwrap()
    });
    let (n, _) = real.recv_from(&mut buf).expect("proxy's DNS query was captured");
    assert_eq!(&buf[..n], b"proxy-query");
    let zones = app.exec("iptables-save", &["-t", "raw"]).unwrap();
    assert!(
        zones.contains("-j CT --zone 1") && zones.contains("-j CT --zone 2"),
        "{zones}"
    );
}
