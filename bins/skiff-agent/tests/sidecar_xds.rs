//! `skiff-agent proxy sidecar` programmed by `skiffd` over real gRPC, inside test pods with the
//! seeds' capture rules — the mesh the seeds describe, with Skiff in both places.
//!
//! Checked: readiness (15021) stays 503 until the first full configuration and `skiff-agent
//! wait` follows it; the agent reconnects to a control plane that starts late; requests go
//! listener → route → cluster → endpoint through both sidecars (the app sees 127.0.0.6) and are
//! access-logged and counted; 15021/15020/15090 answer from outside the pod with only their own
//! paths; rewritten app probes are answered by probing the app; an endpoint change reaches the
//! proxy; with skiffd gone traffic keeps flowing on the last configuration, and a restarted
//! skiffd resyncs it; `/debug/syncz` shows both proxies synced. Needs root (CI runs as root).

#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::http::{Client, Echo};
use testkit::manifests;
use testkit::proxy::{Kind, ProxyProc};
use testkit::{Network, Pod, PROXY_UID};

const AGENT: &str = env!("CARGO_BIN_EXE_skiff-agent");
const NGINX_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const HTTPBIN_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 11);
const NS: &str = "sidecar";

/// `skiffd` is built with the workspace; tests of one package cannot name another's binary,
/// so it is found next to this package's.
fn skiffd_binary() -> PathBuf {
    let p = Path::new(AGENT).with_file_name("skiffd");
    assert!(
        p.is_file(),
        "{} is missing: build the workspace (`cargo nextest run --workspace`)",
        p.display()
    );
    p
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn local_get(pod: &Pod, port: u16, path: &str) -> (u16, String) {
    let path = path.to_owned();
    pod.run(move || testkit::proxy::admin_request(port, "GET", &path))
        .unwrap_or((0, String::new()))
}

/// `GET http://ip:port/path` from `from` (another pod): what the kubelet or Prometheus sees.
fn remote_get(from: &Pod, ip: Ipv4Addr, port: u16, path: &str) -> (u16, String) {
    let url = format!("http://{ip}:{port}{path}");
    from.run(move || match Client::http1().get(&url, &[]) {
        Ok(r) => (r.status, String::from_utf8_lossy(&r.body).into_owned()),
        Err(_) => (0, String::new()),
    })
}

/// `GET /` from the app in `toolbox` to `vip` with `host`; returns (echo name, peer it saw).
fn call(toolbox: &Pod, vip: Ipv4Addr, host: &'static str) -> Result<(String, String), String> {
    toolbox.run(move || {
        let r = Client::http1().get(&format!("http://{vip}/"), &[("host", host)])?;
        if r.status != 200 {
            return Err(format!(
                "status {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ));
        }
        let e = r.echoed().ok_or("not an echo reply")?;
        Ok((e.name, e.peer))
    })
}

fn write_services(dir: &Path, toolbox: &Pod, nginx: &Pod, httpbin_ip: Ipv4Addr) {
    manifests::copy_seed_cluster(dir).unwrap();
    manifests::write(
        dir,
        "sidecar.yaml",
        &[
            manifests::service(NS, "nginx", NGINX_VIP, 80, 80),
            manifests::pod(NS, "nginx-7fc7f5758-46mzh", "nginx", "v1", nginx.ip, 80),
            manifests::pod(NS, "toolbox-97948fc8-ptlct", "toolbox", "v1", toolbox.ip, 8080),
        ],
    )
    .unwrap();
    write_httpbin(dir, httpbin_ip);
}

fn write_httpbin(dir: &Path, ip: Ipv4Addr) {
    manifests::write(
        dir,
        "httpbin.yaml",
        &[
            manifests::service(NS, "httpbin", HTTPBIN_VIP, 80, 80),
            manifests::pod(NS, "httpbin-5c9f8d7b6-x2k4q", "httpbin", "v1", ip, 80),
        ],
    )
    .unwrap();
}

fn capture(pod: &Pod) {
    let cfg = capture::CaptureConfig::sidecar();
    capture::apply(
        &capture::Exec::in_netns(&pod.netns_path()).unwrap(),
        &cfg,
        &capture::generate(&cfg),
        capture::ApplyOptions {
            restore_format: true,
            ..Default::default()
        },
    )
    .unwrap();
}

/// The sidecar as injection starts it: `proxy sidecar` with the pod's downward-API env.
fn sidecar(pod: &Pod, name: &str, app: &str, istiod: Ipv4Addr, probers: Option<&str>) -> ProxyProc {
    let mut cmd = pod.command(AGENT);
    cmd.args(["proxy", "sidecar", "--domain", "sidecar.svc.cluster.local"])
        .arg(format!("--discovery-address={istiod}:15010"))
        .args([
            "--proxyLogLevel=warning",
            "--concurrency",
            "1",
            "--drain-time-s",
            "1",
        ])
        .args(["--file-flush-interval-msec", "50"])
        .args(["--uid", &PROXY_UID.to_string(), "--gid", &PROXY_UID.to_string()])
        .env("POD_NAME", name)
        .env("POD_NAMESPACE", NS)
        .env("INSTANCE_IP", pod.ip.to_string())
        .env("SERVICE_ACCOUNT", "default")
        .env("ISTIO_META_WORKLOAD_NAME", app)
        .env("ISTIO_META_CLUSTER_ID", "Kubernetes")
        .env(
            "ISTIO_METAJSON_LABELS",
            format!(r#"{{"app":"{app}","version":"v1"}}"#),
        );
    if let Some(p) = probers {
        cmd.env("ISTIO_KUBE_APP_PROBERS", p);
    }
    ProxyProc::spawn_command(Kind::Skiff, cmd, 15000)
}

struct Skiffd(Child);

impl Skiffd {
    fn start(pod: &Pod, dir: &Path, log: &Path) -> Skiffd {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut cmd: Command = pod.command(skiffd_binary());
        cmd.arg("--config-dir")
            .arg(dir)
            .args(["--config-poll-ms", "100", "--access-log-file", "/dev/stdout"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        Skiffd(cmd.spawn().unwrap())
    }
}

impl Drop for Skiffd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dump_section<'a>(dump: &'a Value, ty: &str) -> &'a Value {
    dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["@type"]
                .as_str()
                .is_some_and(|t| t.ends_with(&format!(".{ty}")))
        })
        .unwrap_or_else(|| panic!("{ty} in config dump"))
}

#[test]
fn skiff_sidecars_run_on_skiffd() {
    let net = Network::new("sidecarxds").unwrap();
    let istiod = net.add_pod("istiod").unwrap();
    let toolbox = net.add_pod("toolbox").unwrap();
    let nginx = net.add_pod("nginx").unwrap();
    let httpbin = net.add_pod("httpbin").unwrap();
    let httpbin2 = net.add_pod("httpbin2").unwrap();
    let scratch = std::env::temp_dir().join(format!("skiff-sidecar-xds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let dir = scratch.join("config");
    write_services(&dir, &toolbox, &nginx, httpbin.ip);
    let skiffd_log = scratch.join("skiffd.log");
    let log_text = || std::fs::read_to_string(&skiffd_log).unwrap_or_default();

    let _nginx_app = nginx.run(|| Echo::start("nginx", SocketAddr::from(([0, 0, 0, 0], 80))));
    let _toolbox_app =
        toolbox.run(|| Echo::start("toolbox-health", SocketAddr::from(([127, 0, 0, 1], 8080))));
    let _httpbin_app = httpbin.run(|| Echo::start("httpbin", SocketAddr::from(([0, 0, 0, 0], 80))));
    let _httpbin2_app = httpbin2.run(|| Echo::start("httpbin-2", SocketAddr::from(([0, 0, 0, 0], 80))));
    capture(&toolbox);
    capture(&nginx);

    // The sidecar starts before the control plane: not ready, and `wait` says so.
    let probers = r#"{"/app-health/toolbox/readyz": {"httpGet": {"path": "/", "port": 8080}, "timeoutSeconds": 1},
                      "/app-health/toolbox/livez": {"tcpSocket": {"port": 9999}}}"#;
    let client = sidecar(
        &toolbox,
        "toolbox-97948fc8-ptlct",
        "toolbox",
        istiod.ip,
        Some(probers),
    );
    wait_for("toolbox admin", Duration::from_secs(10), || {
        local_get(&toolbox, 15000, "/server_info").0 == 200
    });
    assert_eq!(local_get(&toolbox, 15021, "/healthz/ready").0, 503);
    let wait = |timeout: &str| {
        toolbox
            .output(
                AGENT,
                &["wait", "--timeoutSeconds", timeout, "--periodMillis", "100"],
            )
            .unwrap()
            .status
            .code()
    };
    assert_eq!(
        wait("1"),
        Some(1),
        "wait must fail while the proxy has no configuration"
    );

    let skiffd = Skiffd::start(&istiod, &dir, &skiffd_log);
    wait_for("skiffd ready", Duration::from_secs(20), || {
        local_get(&istiod, 15014, "/ready").0 == 200
    });
    wait_for(
        "toolbox ready after reconnecting",
        Duration::from_secs(30),
        || local_get(&toolbox, 15021, "/healthz/ready").0 == 200,
    );
    assert_eq!(wait("10"), Some(0));
    let server = sidecar(&nginx, "nginx-7fc7f5758-46mzh", "nginx", istiod.ip, None);
    wait_for("nginx ready", Duration::from_secs(20), || {
        local_get(&nginx, 15021, "/healthz/ready").0 == 200
    });

    // listener → route → cluster → endpoint, as the proxy holds it.
    let (_, dump) = local_get(&toolbox, 15000, "/config_dump?include_eds");
    let dump: Value = serde_json::from_str(&dump).unwrap_or_else(|e| panic!("{e}: {dump}"));
    let listeners = dump_section(&dump, "ListenersConfigDump")["dynamic_listeners"]
        .as_array()
        .unwrap();
    let names: Vec<&str> = listeners.iter().filter_map(|l| l["name"].as_str()).collect();
    for n in ["virtualOutbound", "virtualInbound", "0.0.0.0_80"] {
        assert!(names.contains(&n), "{n} in {names:?}");
    }
    let clusters = dump_section(&dump, "ClustersConfigDump")["dynamic_active_clusters"]
        .as_array()
        .unwrap();
    assert!(clusters.iter().any(
        |c| c["cluster"]["name"] == "outbound|80||nginx.sidecar.svc.cluster.local"
            && c["cluster"]["type"] == "EDS"
    ));
    let clusters_text = local_get(&toolbox, 15000, "/clusters").1;
    assert!(
        clusters_text.contains(&format!(
            "outbound|80||nginx.sidecar.svc.cluster.local::{}:80::",
            nginx.ip
        )),
        "{clusters_text}"
    );

    // Through both sidecars: the app sees the inbound sidecar's 127.0.0.6.
    let (name, peer) = call(&toolbox, NGINX_VIP, "nginx").unwrap();
    assert_eq!(name, "nginx");
    assert!(peer.starts_with("127.0.0.6:"), "{peer}");
    let (name, _) = call(&toolbox, HTTPBIN_VIP, "httpbin.sidecar.svc.cluster.local").unwrap();
    assert_eq!(name, "httpbin");
    let log = client.wait_log_lines(1);
    assert!(
        log.iter().any(|l| l.contains("\"GET / HTTP/1.1\" 200")
            && l.contains("outbound|80||nginx.sidecar.svc.cluster.local")),
        "toolbox access log: {log:?}"
    );
    let log = server.wait_log_lines(1);
    assert!(
        log.iter().any(|l| l.contains("inbound|80||")),
        "nginx access log: {log:?}"
    );

    // The pod-facing ports, from another pod: each answers its own paths only.
    assert_eq!(remote_get(&istiod, toolbox.ip, 15021, "/healthz/ready").0, 200);
    assert_eq!(remote_get(&istiod, toolbox.ip, 15021, "/config_dump").0, 404);
    let (code, metrics) = remote_get(&istiod, toolbox.ip, 15090, "/stats/prometheus");
    assert_eq!(code, 200);
    assert!(
        metrics.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("reporter=\"source\"")
            && l.contains("destination_service=\"nginx.sidecar.svc.cluster.local\"")),
        "{metrics}"
    );
    assert_eq!(remote_get(&istiod, toolbox.ip, 15090, "/quitquitquit").0, 404);
    // Admin listens on loopback only: from outside, the inbound capture passes the request on
    // to the pod's IP, where nothing listens (Envoy answers 503 the same way).
    let (code, body) = remote_get(&istiod, toolbox.ip, 15000, "/config_dump");
    assert!(
        code == 503 && !body.contains("configs"),
        "admin must be loopback-only: {code} {body}"
    );
    // Rewritten app probes: the agent probes the app for the kubelet.
    assert_eq!(
        remote_get(&istiod, toolbox.ip, 15020, "/app-health/toolbox/readyz").0,
        200
    );
    assert_eq!(
        remote_get(&istiod, toolbox.ip, 15020, "/app-health/toolbox/livez").0,
        500
    );
    assert_eq!(
        remote_get(&istiod, toolbox.ip, 15020, "/app-health/other/livez").0,
        404
    );

    // An endpoint change reaches the proxy.
    write_httpbin(&dir, httpbin2.ip);
    wait_for("new httpbin endpoint", Duration::from_secs(15), || {
        call(&toolbox, HTTPBIN_VIP, "httpbin").is_ok_and(|(n, _)| n == "httpbin-2")
    });

    // A connection open across a full push (a new Service: new listeners, routes, clusters)
    // keeps working: configuration is replaced under connections, not the connections.
    let mut conn = toolbox
        .run(|| std::net::TcpStream::connect((NGINX_VIP, 80)))
        .unwrap();
    assert_eq!(raw_get(&mut conn, "nginx"), 200);
    manifests::write(
        &dir,
        "extra.yaml",
        &[manifests::service(
            NS,
            "extra",
            Ipv4Addr::new(198, 19, 0, 12),
            80,
            80,
        )],
    )
    .unwrap();
    wait_for(
        "the new Service in the toolbox's sidecar",
        Duration::from_secs(15),
        || {
            local_get(&toolbox, 15000, "/config_dump")
                .1
                .contains("extra.sidecar.svc.cluster.local")
        },
    );
    assert_eq!(
        raw_get(&mut conn, "nginx"),
        200,
        "the connection survived the push"
    );
    drop(conn);

    // Both proxies synced in skiffd's view.
    let (_, syncz) = local_get(&istiod, 15014, "/debug/syncz");
    let syncz: Value = serde_json::from_str(&syncz).unwrap_or_else(|e| panic!("{e}: {syncz}"));
    let synced: Vec<&Value> = syncz
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["proxy"].as_str().is_some())
        .collect();
    assert_eq!(synced.len(), 2, "{syncz}");
    for p in synced {
        for t in ["cds", "lds", "eds", "rds"] {
            assert_eq!(p[t], "SYNCED", "{t} of {}", p["proxy"]);
        }
    }

    // The control plane goes away: traffic keeps flowing on the last configuration. A change made
    // meanwhile arrives once skiffd is back.
    drop(skiffd);
    assert_eq!(call(&toolbox, NGINX_VIP, "nginx").unwrap().0, "nginx");
    assert_eq!(
        local_get(&toolbox, 15021, "/healthz/ready").0,
        200,
        "a proxy with config stays ready"
    );
    write_httpbin(&dir, httpbin.ip);
    let _skiffd = Skiffd::start(&istiod, &dir, &skiffd_log);
    wait_for("resync after skiffd restarts", Duration::from_secs(30), || {
        call(&toolbox, HTTPBIN_VIP, "httpbin").is_ok_and(|(n, _)| n == "httpbin")
    });
    assert!(log_text().matches("xds connected").count() >= 4, "{}", log_text());

    // Deleting a Service removes its routes from the proxy.
    std::fs::remove_file(dir.join("httpbin.yaml")).unwrap();
    wait_for("httpbin's routes to go", Duration::from_secs(15), || {
        let dump = local_get(&toolbox, 15000, "/config_dump").1;
        !dump.is_empty() && !dump.contains("httpbin.sidecar.svc.cluster.local")
    });
    assert!(
        call(&toolbox, HTTPBIN_VIP, "httpbin").is_err(),
        "a deleted Service is not routed any more"
    );

    // A restarted sidecar resyncs from scratch.
    let mut client = client;
    client.terminate();
    let client = sidecar(&toolbox, "toolbox-97948fc8-ptlct", "toolbox", istiod.ip, None);
    wait_for(
        "the restarted sidecar to be ready",
        Duration::from_secs(20),
        || local_get(&toolbox, 15021, "/healthz/ready").0 == 200,
    );
    assert_eq!(call(&toolbox, NGINX_VIP, "nginx").unwrap().0, "nginx");
    let errs: Vec<String> = client
        .stderr()
        .into_iter()
        .filter(|l| l.contains("\terror\t"))
        .collect();
    assert!(errs.is_empty(), "sidecar errors: {errs:?}");
    let _ = std::fs::remove_dir_all(&scratch);
}

/// One keep-alive `GET /` on an open connection; the status.
fn raw_get(conn: &mut std::net::TcpStream, host: &str) -> u16 {
    use std::io::{Read, Write};
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(conn, "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            return 0;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if body.len() >= len {
                return head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
            }
        }
    }
}
