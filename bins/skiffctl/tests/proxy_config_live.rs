//! `skiffctl proxy-config` / `proxy-status` against live proxies in test pods (network
//! namespaces), fed by `skiffd` from seed 004's cluster (the pilot crate's `seed004` registry):
//! real Envoy 1.40 sidecars with pilot-agent's bootstrap as the `toolbox` and `nginx` pods, and
//! Skiff's own sidecar (`skiff-agent proxy sidecar`). skiffctl enters each pod's namespace with
//! `--netns` and reads 127.0.0.1:15000 there, as it does for the local mesh.
//!
//! With `SKIFF_REGENERATE_DUMPS=1` the Envoy test also rewrites the checked-in dumps under
//! `crates/inspect/tests/testdata/envoy/` that the offline golden tests read.
//!
//! Needs root (namespaces), `envoy` on PATH, and `skiffd`/`skiff-agent` built next to
//! `skiffctl` (`cargo nextest run --workspace` builds them).

#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use testkit::proxy::{Kind, ProxyProc};
use testkit::{Network, Pod, PROXY_UID};

const SKIFFCTL: &str = env!("CARGO_BIN_EXE_skiffctl");
const TOOLBOX: &str = "toolbox-97948fc8-ptlct";
const NGINX: &str = "nginx-deployment-7fc7f5758-46mzh";

fn sibling(bin: &str) -> PathBuf {
    let p = Path::new(SKIFFCTL).with_file_name(bin);
    assert!(
        p.is_file(),
        "{} is missing: build the workspace (`cargo nextest run --workspace`)",
        p.display()
    );
    p
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn admin(pod: &Pod, path: &str) -> String {
    let path = path.to_owned();
    pod.run(move || testkit::proxy::admin_request(15000, "GET", &path))
        .map(|(_, body)| body)
        .unwrap_or_default()
}

fn skiffctl(args: &[&str]) -> Output {
    Command::new(SKIFFCTL)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "skiffctl failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// skiffd in `pod`, serving seed 004's registry on 15010/15014.
fn skiffd(pod: &Pod, scratch: &Path) -> Killed {
    let dir = scratch.join("config");
    std::fs::create_dir_all(&dir).unwrap();
    let seeds = manifest_dir().join("../../crates/pilot/tests/testdata/seed004");
    for e in std::fs::read_dir(&seeds).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let log = std::fs::File::create(scratch.join("skiffd.log")).unwrap();
    let mut cmd = pod.command(sibling("skiffd"));
    cmd.arg("--config-dir")
        .arg(&dir)
        .args(["--config-poll-ms", "100"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let child = Killed(cmd.spawn().unwrap());
    wait_for("skiffd /ready", Duration::from_secs(20), || {
        pod.run(|| testkit::proxy::admin_request(15014, "GET", "/ready"))
            .is_ok_and(|(code, _)| code == 200)
    });
    child
}

/// pilot-agent's bootstrap for seed 004's pod `name` (IP `ip`, labels as in the registry):
/// Istio's node id and metadata, ADS to skiffd, and Istio's static resources (the 15090 and
/// 15021 listeners; prometheus_stats, agent, sds-grpc, xds-grpc and zipkin clusters).
fn bootstrap(name: &str, app: &str, ip: &str, labels: &str, istiod: Ipv4Addr) -> String {
    let static_route = |port: u16, prefix: &str, stat: &str, cluster: &str| {
        format!(
            r#"
  - address: {{ socket_address: {{ protocol: TCP, address: 0.0.0.0, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          codec_type: AUTO
          stat_prefix: {stat}
          route_config:
            virtual_hosts:
            - name: backend
              domains: ["*"]
              routes:
              - match: {{ prefix: {prefix} }}
                route: {{ cluster: {cluster} }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}"#
        )
    };
    let h2 = r#"
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }"#;
    let sock = |addr: &str, port: u16| {
        format!(
            "[{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ protocol: TCP, address: {addr}, port_value: {port} }} }} }} }}] }}]"
        )
    };
    format!(
        r#"
node:
  id: "sidecar~{ip}~{name}.sidecar~sidecar.svc.cluster.local"
  cluster: "{app}.sidecar"
  metadata:
    CLUSTER_ID: Kubernetes
    ISTIO_VERSION: 1.19.3
    NAMESPACE: sidecar
    NAME: {name}
    INSTANCE_IPS: "{ip}"
    INTERCEPTION_MODE: REDIRECT
    WORKLOAD_NAME: {app}
    SERVICE_ACCOUNT: default
    LABELS: {labels}
admin:
  address: {{ socket_address: {{ protocol: TCP, address: 127.0.0.1, port_value: 15000 }} }}
dynamic_resources:
  lds_config: {{ ads: {{}}, initial_fetch_timeout: 0s, resource_api_version: V3 }}
  cds_config: {{ ads: {{}}, initial_fetch_timeout: 0s, resource_api_version: V3 }}
  ads_config:
    api_type: GRPC
    set_node_on_first_message_only: true
    transport_api_version: V3
    grpc_services: [{{ envoy_grpc: {{ cluster_name: xds-grpc }} }}]
static_resources:
  clusters:
  - name: prometheus_stats
    type: STATIC
    connect_timeout: 0.250s
    lb_policy: ROUND_ROBIN
    load_assignment: {{ cluster_name: prometheus_stats, endpoints: {prom} }}
  - name: agent
    type: STATIC
    connect_timeout: 0.250s
    lb_policy: ROUND_ROBIN
    load_assignment: {{ cluster_name: agent, endpoints: {agent} }}
  - name: sds-grpc
    type: STATIC{h2}
    connect_timeout: 1s
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: sds-grpc
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ pipe: {{ path: ./var/run/secrets/workload-spiffe-uds/socket }} }} }} }}] }}]
  - name: xds-grpc
    type: STATIC
    connect_timeout: 1s
    lb_policy: ROUND_ROBIN
    load_assignment: {{ cluster_name: xds-grpc, endpoints: {xds} }}
    circuit_breakers:
      thresholds:
      - {{ priority: DEFAULT, max_connections: 100000, max_pending_requests: 100000, max_requests: 100000 }}
      - {{ priority: HIGH, max_connections: 100000, max_pending_requests: 100000, max_requests: 100000 }}
    upstream_connection_options: {{ tcp_keepalive: {{ keepalive_time: 300 }} }}{h2}
  - name: zipkin
    type: STRICT_DNS
    respect_dns_ttl: true
    dns_lookup_family: V4_ONLY
    dns_refresh_rate: 30s
    connect_timeout: 1s
    lb_policy: ROUND_ROBIN
    load_assignment: {{ cluster_name: zipkin, endpoints: {zipkin} }}
  listeners:{prometheus}{health}
"#,
        prom = sock("127.0.0.1", 15000),
        agent = sock("127.0.0.1", 15020),
        xds = sock(&istiod.to_string(), 15010),
        zipkin = sock("zipkin.istio-system", 9411),
        prometheus = static_route(15090, "/stats/prometheus", "stats", "prometheus_stats"),
        health = static_route(15021, "/healthz/ready", "agent", "agent"),
    )
}

/// Real Envoy in `pod` as seed 004's pod `name` (group 1337, as injection runs it).
fn envoy(
    pod: &Pod,
    scratch: &Path,
    name: &str,
    app: &str,
    ip: &str,
    labels: &str,
    istiod: Ipv4Addr,
) -> ProxyProc {
    use std::os::unix::process::CommandExt;
    let path = scratch.join(format!("envoy-{app}.yaml"));
    std::fs::write(&path, bootstrap(name, app, ip, labels, istiod)).unwrap();
    let mut cmd = pod.command(testkit::proxy::envoy_binary());
    cmd.gid(PROXY_UID).arg("-c").arg(&path).args([
        "--concurrency",
        "1",
        "--disable-hot-restart",
        "-l",
        "error",
        "--drain-time-s",
        "1",
    ]);
    ProxyProc::spawn_command(Kind::Envoy, cmd, 15000)
}

/// What Envoy must hold before its dump is complete: listeners, clusters, and the route and
/// endpoints they point at.
fn fully_configured(pod: &Pod) -> bool {
    let dump = admin(pod, "/config_dump?include_eds");
    dump.contains("\"route_config_name\": \"80\"")
        && dump.contains("\"name\": \"nginx.sidecar.svc.cluster.local:80\"")
        && dump.contains("\"cluster_name\": \"outbound|80||nginx.sidecar.svc.cluster.local\"")
        && dump.contains("\"10.244.0.6\"")
}

fn golden(name: &str) -> String {
    std::fs::read_to_string(
        manifest_dir()
            .join("../../crates/inspect/tests/testdata/envoy")
            .join(name),
    )
    .unwrap()
}

const LISTENER: &[&str] = &["ADDRESSES", "PORT", "MATCH", "DESTINATION"];
const ROUTE: &[&str] = &["NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE"];
const CLUSTER: &[&str] = &[
    "SERVICE FQDN",
    "PORT",
    "SUBSET",
    "DIRECTION",
    "TYPE",
    "DESTINATION RULE",
];
const ENDPOINT: &[&str] = &["ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER"];
const STATUS: &[&str] = &[
    "NAME", "CLUSTER", "CDS", "LDS", "EDS", "RDS", "ECDS", "ISTIOD", "VERSION",
];

/// A table's rows as `cell | cell | …`, cut at the header's column starts (tabwriter aligns every
/// cell of a column there), so rows can be compared with seed 004's whatever the widths.
fn rows(table: &str, headers: &[&str]) -> Vec<String> {
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    let mut starts = Vec::new();
    let mut from = 0;
    for h in headers {
        let at = from
            + header[from..]
                .find(h)
                .unwrap_or_else(|| panic!("no {h} in {header:?}"));
        starts.push(at);
        from = at + h.len();
    }
    table
        .lines()
        .map(|l| {
            (0..starts.len())
                .map(|i| {
                    let end = starts.get(i + 1).copied().unwrap_or(l.len()).min(l.len());
                    l.get(starts[i].min(end)..end).unwrap_or("").trim()
                })
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .collect()
}

fn assert_rows(table: &str, headers: &[&str], want: &[&str]) {
    let have = rows(table, headers);
    for w in want {
        assert!(
            have.iter().any(|h| h == w),
            "row {w:?} missing from:\n{table}\n{have:#?}"
        );
    }
}

#[test]
fn envoy_sidecars_read_through_skiffctl() {
    let net = Network::new("pcenvoy").unwrap();
    let istiod = net.add_pod("istiod").unwrap();
    let toolbox = net.add_pod("toolbox").unwrap();
    let nginx = net.add_pod("nginx").unwrap();
    let scratch = std::env::temp_dir().join(format!("skiffctl-pc-envoy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();

    let _skiffd = skiffd(&istiod, &scratch);
    let toolbox_labels = r#"{ access: "true", app: toolbox, security.istio.io/tlsMode: istio, service.istio.io/canonical-name: toolbox, service.istio.io/canonical-revision: latest }"#;
    let nginx_labels = r#"{ app: nginx, pod-template-hash: 7fc7f5758, security.istio.io/tlsMode: istio, service.istio.io/canonical-name: nginx, service.istio.io/canonical-revision: latest }"#;
    let tb = envoy(
        &toolbox,
        &scratch,
        TOOLBOX,
        "toolbox",
        "10.244.0.7",
        toolbox_labels,
        istiod.ip,
    );
    let ng = envoy(
        &nginx,
        &scratch,
        NGINX,
        "nginx",
        "10.244.0.6",
        nginx_labels,
        istiod.ip,
    );
    wait_for("both Envoys fully configured", Duration::from_secs(30), || {
        fully_configured(&toolbox) && fully_configured(&nginx)
    });

    if std::env::var_os("SKIFF_REGENERATE_DUMPS").is_some() {
        let out = manifest_dir().join("../../crates/inspect/tests/testdata/envoy");
        std::fs::create_dir_all(&out).unwrap();
        for (pod, who) in [(&toolbox, "toolbox"), (&nginx, "nginx")] {
            std::fs::write(
                out.join(format!("{who}_config_dump.json")),
                admin(pod, "/config_dump?include_eds"),
            )
            .unwrap();
            std::fs::write(
                out.join(format!("{who}_clusters.json")),
                admin(pod, "/clusters?format=json"),
            )
            .unwrap();
        }
        let syncz = istiod.run(|| {
            testkit::proxy::admin_request(15014, "GET", "/debug/syncz")
                .unwrap()
                .1
        });
        std::fs::write(out.join("syncz.json"), syncz).unwrap();
    }

    let netns = toolbox.netns.as_str();
    // Clusters: the seed's table, row for row (skiffd serves the seed's registry).
    let clusters = ok(skiffctl(&[
        "proxy-config",
        "cluster",
        TOOLBOX,
        "-n",
        "sidecar",
        "--netns",
        netns,
    ]));
    assert_eq!(clusters, golden("toolbox_cluster.txt"), "\n{clusters}");
    assert_rows(
        &clusters,
        CLUSTER,
        &["nginx.sidecar.svc.cluster.local | 80 | - | outbound | EDS | "],
    );
    let inbound = ok(skiffctl(&[
        "pc",
        "clusters",
        &format!("{NGINX}.sidecar"),
        "--netns",
        nginx.netns.as_str(),
        "--direction",
        "inbound",
    ]));
    assert_rows(&inbound, CLUSTER, &[" | 80 | - | inbound | ORIGINAL_DST | "]);
    let filtered = ok(skiffctl(&[
        "pc",
        "c",
        &format!("{TOOLBOX}.sidecar"),
        "--netns",
        netns,
        "--fqdn",
        "nginx",
        "--direction",
        "outbound",
    ]));
    assert_eq!(filtered.lines().count(), 2, "{filtered}");

    // Listeners, routes, endpoints: the seed's rows.
    let listeners = ok(skiffctl(&[
        "proxy-config",
        "listener",
        TOOLBOX,
        "-n",
        "sidecar",
        "--netns",
        netns,
    ]));
    assert_rows(
        &listeners,
        LISTENER,
        &[
            "ADDRESSES | PORT | MATCH | DESTINATION",
            "0.0.0.0 | 80 | Trans: raw_buffer; App: http/1.1,h2c | Route: 80",
            "0.0.0.0 | 80 | ALL | PassthroughCluster",
            "10.96.0.10 | 53 | ALL | Cluster: outbound|53||kube-dns.kube-system.svc.cluster.local",
            "0.0.0.0 | 15001 | ALL | PassthroughCluster",
            "0.0.0.0 | 15001 | Addr: *:15001 | Non-HTTP/Non-TCP",
            "0.0.0.0 | 15006 | Addr: *:15006 | Non-HTTP/Non-TCP",
            "0.0.0.0 | 15021 | ALL | Inline Route: /healthz/ready*",
            "0.0.0.0 | 15090 | ALL | Inline Route: /stats/prometheus*",
        ],
    );
    let port80 = ok(skiffctl(&[
        "pc",
        "l",
        TOOLBOX,
        "-n",
        "sidecar",
        "--netns",
        netns,
        "--port",
        "80",
        "--verbose=false",
    ]));
    assert_eq!(port80, "ADDRESSES PORT TYPE\n0.0.0.0   80   HTTP+TCP\n");
    let routes = ok(skiffctl(&[
        "proxy-config",
        "route",
        TOOLBOX,
        "-n",
        "sidecar",
        "--netns",
        netns,
    ]));
    assert_rows(
        &routes,
        ROUTE,
        &[
            "80 | nginx.sidecar.svc.cluster.local:80 | nginx, nginx.sidecar + 1 more... | /* | ",
            " | backend | * | /healthz/ready* | ",
            " | backend | * | /stats/prometheus* | ",
            "InboundPassthroughClusterIpv4 | inbound|http|0 | * | /* | ",
        ],
    );
    let endpoints = ok(skiffctl(&[
        "proxy-config",
        "endpoint",
        TOOLBOX,
        "-n",
        "sidecar",
        "--netns",
        netns,
        "--cluster",
        "outbound|80||nginx.sidecar.svc.cluster.local",
    ]));
    assert_eq!(
        endpoints,
        "ENDPOINT          STATUS      OUTLIER CHECK     CLUSTER\n\
         10.244.0.6:80     HEALTHY     OK                outbound|80||nginx.sidecar.svc.cluster.local\n"
    );
    let inbound = ok(skiffctl(&[
        "pc",
        "l",
        &format!("{NGINX}.sidecar"),
        "--netns",
        nginx.netns.as_str(),
        "--port",
        "15006",
    ]));
    assert_rows(
        &inbound,
        LISTENER,
        &["0.0.0.0 | 15006 | Trans: raw_buffer; Addr: *:80 | Cluster: inbound|80||"],
    );

    // JSON as istioctl prints it: an array of the filtered objects, jsonpb field names.
    let json = ok(skiffctl(&[
        "pc", "r", TOOLBOX, "-n", "sidecar", "--netns", netns, "--name", "80", "-o", "json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["name"], "80");
    assert!(v[0]["virtualHosts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["name"] == "nginx.sidecar.svc.cluster.local:80"));

    // Bootstrap versions, logging.
    let versions = ok(skiffctl(&[
        "pc",
        "bootstrap",
        TOOLBOX,
        "-n",
        "sidecar",
        "--netns",
        netns,
        "-o",
        "short",
    ]));
    assert!(
        versions.starts_with("Istio Version: 1.19.3\nEnvoy Version: 1.40."),
        "{versions}"
    );
    let log = ok(skiffctl(&[
        "pc",
        "log",
        TOOLBOX,
        "-n",
        "sidecar",
        "--netns",
        netns,
        "--level",
        "http:debug",
    ]));
    assert!(
        log.starts_with(&format!("{TOOLBOX}.sidecar:\nactive loggers:\n")),
        "{log}"
    );
    assert!(log.contains("  http: debug\n"), "{log}");
    let bad = skiffctl(&[
        "pc",
        "log",
        TOOLBOX,
        "-n",
        "sidecar",
        "--netns",
        netns,
        "--level",
        "nosuch:debug",
    ]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unrecognized logger name: nosuch"));

    // proxy-status from skiffd's /debug/syncz.
    let status = ok(skiffctl(&[
        "proxy-status",
        "--skiffd",
        "127.0.0.1:15014",
        "--skiffd-netns",
        istiod.netns.as_str(),
    ]));
    assert_rows(
        &status,
        STATUS,
        &[
            "NAME | CLUSTER | CDS | LDS | EDS | RDS | ECDS | ISTIOD | VERSION",
            "nginx-deployment-7fc7f5758-46mzh.sidecar | Kubernetes | SYNCED | SYNCED | SYNCED | SYNCED | NOT SENT | skiffd | 1.19.3",
            "toolbox-97948fc8-ptlct.sidecar | Kubernetes | SYNCED | SYNCED | SYNCED | SYNCED | NOT SENT | skiffd | 1.19.3",
        ],
    );

    drop(tb);
    drop(ng);
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn skiff_sidecar_read_through_skiffctl() {
    let net = Network::new("pcskiff").unwrap();
    let istiod = net.add_pod("istiod").unwrap();
    let toolbox = net.add_pod("toolbox").unwrap();
    let scratch = std::env::temp_dir().join(format!("skiffctl-pc-skiff-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let _skiffd = skiffd(&istiod, &scratch);

    let mut cmd = toolbox.command(sibling("skiff-agent"));
    cmd.args(["proxy", "sidecar", "--domain", "sidecar.svc.cluster.local"])
        .arg(format!("--discovery-address={}:15010", istiod.ip))
        .args([
            "--proxyLogLevel=warning",
            "--concurrency",
            "1",
            "--drain-time-s",
            "1",
        ])
        .args(["--uid", &PROXY_UID.to_string(), "--gid", &PROXY_UID.to_string()])
        .env("POD_NAME", TOOLBOX)
        .env("POD_NAMESPACE", "sidecar")
        .env("INSTANCE_IP", "10.244.0.7")
        .env("SERVICE_ACCOUNT", "default")
        .env("ISTIO_META_WORKLOAD_NAME", "toolbox");
    let _sidecar = ProxyProc::spawn_command(Kind::Skiff, cmd, 15000);
    wait_for(
        "Skiff's sidecar fully configured",
        Duration::from_secs(30),
        || fully_configured(&toolbox),
    );

    let netns = toolbox.netns.as_str();
    let clusters = ok(skiffctl(&[
        "proxy-config",
        "cluster",
        TOOLBOX,
        "-n",
        "sidecar",
        "--netns",
        netns,
    ]));
    // The clusters skiffd sends are the seed's; the bootstrap's own differ from Envoy's.
    let want = golden("toolbox_cluster.txt");
    let dynamic: Vec<&str> = want
        .lines()
        .filter(|l| l.contains("outbound") || l.contains("inbound") || l.contains("Cluster "))
        .collect();
    for row in dynamic {
        assert!(
            clusters.lines().any(|l| l == row),
            "{row:?} missing from:\n{clusters}"
        );
    }
    let listeners = ok(skiffctl(&[
        "pc", "l", TOOLBOX, "-n", "sidecar", "--netns", netns, "--port", "80",
    ]));
    assert_rows(
        &listeners,
        LISTENER,
        &["0.0.0.0 | 80 | Trans: raw_buffer; App: http/1.1,h2c | Route: 80"],
    );
    let endpoints = ok(skiffctl(&[
        "pc", "ep", TOOLBOX, "-n", "sidecar", "--netns", netns, "--port", "80",
    ]));
    assert_rows(
        &endpoints,
        ENDPOINT,
        &["10.244.0.6:80 | HEALTHY | OK | outbound|80||nginx.sidecar.svc.cluster.local"],
    );
    let _ = std::fs::remove_dir_all(&scratch);
}
