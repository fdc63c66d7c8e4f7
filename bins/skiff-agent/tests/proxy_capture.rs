//! The seeds' data path for real: two pods with Istio's capture rules and a Skiff sidecar each
//! (uid 1337), an app calling a Service VIP, and Debian's nginx as the server app.
//!
//! toolbox app → OUTPUT/ISTIO_OUTPUT → 15001 virtualOutbound → 0.0.0.0_80 → route "80" →
//! outbound|80||nginx.sidecar.svc.cluster.local → nginx pod IP:80 → PREROUTING/ISTIO_INBOUND →
//! 15006 virtualInbound → inbound|80|| (from 127.0.0.6) → nginx.

#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use capture::{apply, generate, ApplyOptions, CaptureConfig, Exec};
use testkit::proxy::{Kind, ProxyProc};
use testkit::{Network, Pod, PROXY_UID};

const BIN: &str = env!("CARGO_BIN_EXE_skiff-agent");
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);

const HCM: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP: &str = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const STDOUT: &str = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";

/// An Istio-shaped sidecar bootstrap (what skiffd would push), as static resources.
fn sidecar_bootstrap(nginx_ip: Ipv4Addr) -> String {
    // Istio's default access log format, escaped for a YAML double-quoted string.
    let fmt = proxy::access_log::ISTIO_DEFAULT_FORMAT
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!(
        r#"
admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 15000 }} }} }}
static_resources:
  listeners:
  - name: virtualOutbound
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: 15001 }} }}
    use_original_dst: true
    traffic_direction: OUTBOUND
    filter_chains:
    - name: virtualOutbound-blackhole
      filter_chain_match: {{ destination_port: 15001 }}
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{ "@type": "{TCP}", stat_prefix: BlackHoleCluster, cluster: BlackHoleCluster }}
    default_filter_chain:
      name: virtualOutbound-catchall-tcp
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": "{TCP}"
          stat_prefix: PassthroughCluster
          cluster: PassthroughCluster
          access_log: [{{ name: envoy.access_loggers.stdout, typed_config: {{ "@type": "{STDOUT}", log_format: {{ text_format_source: {{ inline_string: "{fmt}" }} }} }} }}]
  - name: 0.0.0.0_80
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: 80 }} }}
    bind_to_port: false
    traffic_direction: OUTBOUND
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector }}
    - name: envoy.filters.listener.http_inspector
      typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector }}
    filter_chains:
    - filter_chain_match: {{ transport_protocol: raw_buffer, application_protocols: [http/1.1, h2c] }}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": "{HCM}"
          stat_prefix: outbound_0.0.0.0_80
          access_log: [{{ name: envoy.access_loggers.stdout, typed_config: {{ "@type": "{STDOUT}", log_format: {{ text_format_source: {{ inline_string: "{fmt}" }} }} }} }}]
          route_config:
            name: "80"
            ignore_port_in_host_matching: true
            virtual_hosts:
            - name: nginx.sidecar.svc.cluster.local:80
              domains: [nginx.sidecar.svc.cluster.local, nginx, nginx.sidecar.svc, nginx.sidecar, "{VIP}"]
              routes:
              - name: default
                match: {{ prefix: / }}
                route: {{ cluster: "outbound|80||nginx.sidecar.svc.cluster.local", timeout: 0s }}
                decorator: {{ operation: "nginx.sidecar.svc.cluster.local:80/*" }}
            - name: allow_any
              domains: ["*"]
              routes:
              - name: allow_any
                match: {{ prefix: / }}
                route: {{ cluster: PassthroughCluster, timeout: 0s }}
          http_filters: [{{ name: envoy.filters.http.router, typed_config: {{ "@type": "{ROUTER}" }} }}]
    default_filter_chain:
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{ "@type": "{TCP}", stat_prefix: PassthroughCluster, cluster: PassthroughCluster }}
  - name: virtualInbound
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: 15006 }} }}
    traffic_direction: INBOUND
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst }}
    filter_chains:
    - name: 0.0.0.0_80
      filter_chain_match: {{ destination_port: 80 }}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": "{HCM}"
          stat_prefix: inbound_0.0.0.0_80
          access_log: [{{ name: envoy.access_loggers.stdout, typed_config: {{ "@type": "{STDOUT}", log_format: {{ text_format_source: {{ inline_string: "{fmt}" }} }} }} }}]
          route_config:
            name: "inbound|80||"
            virtual_hosts:
            - name: inbound|http|80
              domains: ["*"]
              routes:
              - name: default
                match: {{ prefix: / }}
                route: {{ cluster: "inbound|80||", timeout: 0s }}
                decorator: {{ operation: "nginx.sidecar.svc.cluster.local:80/*" }}
          http_filters: [{{ name: envoy.filters.http.router, typed_config: {{ "@type": "{ROUTER}" }} }}]
    default_filter_chain:
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{ "@type": "{TCP}", stat_prefix: InboundPassthroughClusterIpv4, cluster: InboundPassthroughClusterIpv4 }}
  clusters:
  - name: "outbound|80||nginx.sidecar.svc.cluster.local"
    type: STATIC
    connect_timeout: 10s
    lb_policy: LEAST_REQUEST
    load_assignment:
      cluster_name: "outbound|80||nginx.sidecar.svc.cluster.local"
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: {nginx_ip}, port_value: 80 }} }} }} }}] }}]
  - name: "inbound|80||"
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 10s
    upstream_bind_config: {{ source_address: {{ address: 127.0.0.6, port_value: 0 }} }}
  - name: PassthroughCluster
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 10s
  - name: InboundPassthroughClusterIpv4
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 10s
    upstream_bind_config: {{ source_address: {{ address: 127.0.0.6, port_value: 0 }} }}
  - name: BlackHoleCluster
    type: STATIC
    connect_timeout: 10s
"#
    )
}

fn write(path: &std::path::Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Debian's nginx as the server app, logging the peer address like the seed's nginx.
fn start_nginx(pod: &Pod, dir: &std::path::Path) -> std::path::PathBuf {
    let log = dir.join("access.log");
    write(&dir.join("html/index.html"), "<h1>Welcome to nginx!</h1>\n");
    let conf = format!(
        "daemon off;\nworker_processes 1;\nerror_log {d}/error.log;\npid {d}/nginx.pid;\nevents {{ worker_connections 64; }}\n\
         http {{ access_log {log} combined; client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n\
         server {{ listen 80; root {d}/html; }} }}\n",
        d = dir.display(),
        log = log.display()
    );
    write(&dir.join("nginx.conf"), &conf);
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let mut cmd = pod.command("nginx");
    cmd.arg("-c").arg(dir.join("nginx.conf"));
    pod.spawn(cmd).unwrap();
    log
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sidecar(pod: &Pod, bootstrap: &str) -> ProxyProc {
    let path = std::env::temp_dir().join(format!("skiff-capture-{}-{}.yaml", std::process::id(), pod.name));
    std::fs::write(&path, bootstrap).unwrap();
    let mut cmd = pod.command_as(BIN, PROXY_UID, PROXY_UID);
    cmd.args(["proxy", "-c"])
        .arg(&path)
        .args(["--concurrency", "1", "--file-flush-interval-msec", "20"]);
    let p = ProxyProc::spawn_command(Kind::Skiff, cmd, 15000);
    // Ready: the admin answers inside the pod.
    wait_for("sidecar admin", || {
        pod.run(|| testkit::proxy::admin_request(15000, "GET", "/ready"))
            .is_ok_and(|(c, _)| c == 200)
    });
    p
}

#[test]
fn toolbox_curls_nginx_through_both_sidecars() {
    let net = Network::new("seedpath").unwrap();
    let toolbox = net.add_pod("toolbox").unwrap();
    let nginx = net.add_pod("nginx").unwrap();
    let dir = std::env::temp_dir().join(format!("skiff-nginx-{}", std::process::id()));
    let nginx_log = start_nginx(&nginx, &dir);
    wait_for("nginx", || {
        nginx
            .output("curl", &["-s", "-o", "/dev/null", "http://127.0.0.1/"])
            .is_ok_and(|o| o.status.success())
    });

    for pod in [&toolbox, &nginx] {
        let cfg = CaptureConfig::sidecar();
        apply(
            &Exec::in_netns(&pod.netns_path()).unwrap(),
            &cfg,
            &generate(&cfg),
            ApplyOptions {
                restore_format: true,
                ..Default::default()
            },
        )
        .unwrap();
    }
    let bootstrap = sidecar_bootstrap(nginx.ip);
    let client_sidecar = sidecar(&toolbox, &bootstrap);
    let server_sidecar = sidecar(&nginx, &bootstrap);

    // The seed's request: `curl -sI nginx` from the toolbox (VIP resolved by --resolve).
    let out = toolbox
        .exec(
            "curl",
            &[
                "-sS",
                "-i",
                "--max-time",
                "10",
                "--resolve",
                &format!("nginx:80:{VIP}"),
                "http://nginx/",
            ],
        )
        .unwrap();
    let head = out.split("\r\n\r\n").next().unwrap_or("").to_lowercase();
    if !head.starts_with("http/1.1 200") {
        std::thread::sleep(Duration::from_millis(300));
        eprintln!(
            "client sidecar:\n{}\n{}",
            client_sidecar.stdout().join("\n"),
            client_sidecar.stderr().join("\n")
        );
        eprintln!(
            "server sidecar:\n{}\n{}",
            server_sidecar.stdout().join("\n"),
            server_sidecar.stderr().join("\n")
        );
    }
    assert!(head.starts_with("http/1.1 200"), "{out}");
    assert!(head.contains("server: envoy"), "{out}");
    assert!(head.contains("x-envoy-upstream-service-time"), "{out}");
    assert!(out.contains("Welcome to nginx!"), "{out}");

    // nginx saw the inbound sidecar's 127.0.0.6, as in seed 004.
    wait_for("nginx access log", || {
        std::fs::read_to_string(&nginx_log).is_ok_and(|l| !l.is_empty())
    });
    let log = std::fs::read_to_string(&nginx_log).unwrap();
    assert!(
        log.lines().last().unwrap().starts_with("127.0.0.6 - - ["),
        "{log}"
    );

    // Both sidecars wrote an access log line for the request.
    let out_lines = client_sidecar.wait_log_lines(1);
    let outbound = out_lines
        .iter()
        .find(|l| l.contains("outbound|80||nginx.sidecar.svc.cluster.local"))
        .cloned()
        .unwrap_or_else(|| panic!("{out_lines:?}"));
    assert!(outbound.contains("\"GET / HTTP/1.1\" 200"), "{outbound}");
    assert!(
        outbound.contains(&format!("\"{}:80\"", nginx.ip)),
        "upstream host: {outbound}"
    );
    assert!(
        outbound.contains(&format!("{VIP}:80")),
        "downstream local (original dst): {outbound}"
    );
    assert!(
        outbound.contains(" default\n") || outbound.ends_with(" default"),
        "route name: {outbound}"
    );
    let in_lines = server_sidecar.wait_log_lines(1);
    let inbound = in_lines
        .iter()
        .find(|l| l.contains("inbound|80||"))
        .cloned()
        .unwrap_or_else(|| panic!("{in_lines:?}"));
    assert!(inbound.contains("\"GET / HTTP/1.1\" 200"), "{inbound}");
    assert!(
        inbound.contains(&format!("\"{}:80\"", nginx.ip)),
        "inbound upstream host is the pod IP: {inbound}"
    );
    assert!(
        inbound.contains(" 127.0.0.6:"),
        "upstream local address 127.0.0.6: {inbound}"
    );
    assert!(
        inbound.contains(&format!("{}:80 {}:", nginx.ip, toolbox.ip)),
        "downstream local/remote: {inbound}"
    );

    // Non-HTTP traffic to an unknown destination passes through (PassthroughCluster).
    let echo = nginx.run(|| std::net::TcpListener::bind("0.0.0.0:7000").unwrap());
    let target = std::net::SocketAddr::from((nginx.ip, 7000));
    let t = std::thread::spawn(move || {
        let (mut s, _) = testkit::net::accept_within(&echo, Duration::from_secs(5)).expect("passthrough");
        use std::io::{Read, Write};
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        s.write_all(&b).unwrap();
    });
    let reply = toolbox.run(move || testkit::net::request(target, b"ping", Duration::from_secs(5)).unwrap());
    assert_eq!(reply, b"ping");
    t.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
