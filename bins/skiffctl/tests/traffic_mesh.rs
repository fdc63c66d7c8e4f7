//! Seed 004's traffic management end to end in the local mesh, from the examples' manifests:
//! ingress by host (also as `host:port`) and by prefix with rewrite (from this host through the
//! ingress gateway), HTTPS for two hosts on one port each with its Secret's certificate, canary
//! routing by header with each subset's load-balancing policy seen in the order of upstream pods
//! (ROUND_ROBIN alternates, RANDOM does not), the subset clusters and the VirtualService in
//! `proxy-config`, canary without the VirtualService, fault
//! aborts at 80 %, retries recovering from an upstream that fails its first attempts, seed 003's
//! 6 s delay, and outlier detection. Each runs with Skiff's proxies and with Envoy's, on the same
//! skiffd, and must give the same results. Three `up`s per proxy keep it short. Needs root (CI
//! runs as root).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

mod support;

use support::LocalMesh;

/// A test-only service for outlier detection: two healthy pods and one answering 503, behind one
/// Service whose DestinationRule ejects after two consecutive 5xx.
const OUTLIER: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: outlier
  labels:
    istio-injection: enabled
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: backend-good, namespace: outlier}
spec:
  replicas: 2
  selector: {matchLabels: {app: backend, health: good}}
  template:
    metadata: {labels: {app: backend, health: good}}
    spec:
      containers:
      - name: backend
        image: docker.io/skiff/skiff:0.1.0
        args: [demo-app, --port, "80"]
        ports: [{containerPort: 80}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: backend-bad, namespace: outlier}
spec:
  replicas: 1
  selector: {matchLabels: {app: backend, health: bad}}
  template:
    metadata: {labels: {app: backend, health: bad}}
    spec:
      containers:
      - name: backend
        image: docker.io/skiff/skiff:0.1.0
        args: [demo-app, --port, "80", --status, "503"]
        ports: [{containerPort: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: outlier}
spec:
  selector: {app: backend}
  ports: [{name: http, port: 80, targetPort: 80}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: outlier}
spec:
  replicas: 1
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      containers:
      - {name: client, image: curlimages/curl, command: [/bin/sleep, infinity]}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: backend, namespace: outlier}
spec:
  host: backend
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 2
      interval: 1s
      baseEjectionTime: 3m
      maxEjectionPercent: 100
"#;

/// Which manifests an `up` carries.
#[derive(Clone, Copy, PartialEq)]
enum Phase {
    /// Canary VirtualService, simple by host, demo without delay.
    Canary,
    /// Canary without its VirtualService (the DestinationRule stays).
    NoVirtualService,
    /// Fault VirtualService with v2 failing its first attempts, simple by `/nginx`, the delay.
    Fault,
}

/// A [`LocalMesh`] with a directory for the manifests the test writes.
struct Mesh {
    mesh: LocalMesh,
    manifests: PathBuf,
}

impl std::ops::Deref for Mesh {
    type Target = LocalMesh;
    fn deref(&self) -> &LocalMesh {
        &self.mesh
    }
}

impl Mesh {
    fn new(label: &str) -> Mesh {
        let mesh = LocalMesh::new("tm", label);
        let manifests = mesh.dir.join("manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        Mesh { mesh, manifests }
    }

    /// `n` GETs of `url` from `pod` in one curl (one connection reused), with `headers`; the
    /// status code of each, in order.
    fn codes(&self, ns: &str, pod: &str, headers: &[&str], url: &str, n: usize) -> Vec<u16> {
        let mut args = vec!["curl", "-s", "--max-time", "10", "-w", "%{http_code}\\n"];
        for h in headers {
            args.extend(["-H", h]);
        }
        for _ in 0..n {
            args.extend(["-o", "/dev/null", url]);
        }
        let out = self.exec_in(ns, pod, &args);
        let codes: Vec<u16> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect();
        assert_eq!(
            codes.len(),
            n,
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        codes
    }

    /// The pods of a Deployment (`NAME-…`) in `ns`: name and IP, from `local status`.
    fn pods(&self, ns: &str, deploy: &str) -> Vec<(String, String)> {
        let status = self.ok(&["status"]);
        let pods: Vec<(String, String)> = status
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|c| c.len() >= 7 && c[0] == ns && c[1].starts_with(&format!("{deploy}-")))
            .map(|c| (c[1].to_owned(), c[6].to_owned()))
            .collect();
        assert!(!pods.is_empty(), "no pods of {ns}/{deploy}:\n{status}");
        pods
    }

    /// Requests the app containers of every pod of a Deployment logged (nginx and demo-app log
    /// one line each).
    fn served(&self, ns: &str, deploy: &str) -> usize {
        self.pods(ns, deploy)
            .iter()
            .map(|(pod, _)| {
                self.ok(&["logs", "-n", ns, pod])
                    .lines()
                    .filter(|l| l.contains("\"GET /") || l.contains("\"HEAD /"))
                    .count()
            })
            .sum()
    }

    /// The upstream host (`IP:PORT`) of each request the client's sidecar logged for `cluster`,
    /// in order, once at least `n` are there (access logs are flushed about every second).
    fn upstreams(&self, ns: &str, client: &str, cluster: &str, n: usize) -> Vec<String> {
        let mut hosts = Vec::new();
        for _ in 0..50 {
            let log = self.ok(&["logs", "-n", ns, client, "-c", "istio-proxy"]);
            // Istio's format: … "AUTHORITY" "UPSTREAM_HOST" UPSTREAM_CLUSTER …
            hosts = log
                .lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    let i = f.iter().position(|t| *t == cluster)?;
                    Some(f.get(i.checked_sub(1)?)?.trim_matches('"').to_owned())
                })
                .collect();
            if hosts.len() >= n {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(
            hosts.len() >= n,
            "{} of {n} requests to {cluster} logged",
            hosts.len()
        );
        hosts
    }

    /// `skiffctl proxy-config …` against this mesh.
    fn proxy_config(&self, args: &[&str]) -> String {
        let mut full = vec!["proxy-config"];
        full.extend_from_slice(args);
        self.istioctl(&full)
    }

    fn up(&self, proxy: &str) -> String {
        self.ok(&[
            "up",
            "-f",
            self.manifests.to_str().unwrap(),
            "--proxy",
            proxy,
            "--timeout",
            "150",
        ])
    }
}

fn example(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(path)
}

/// The objects of a manifest file, each given `namespace` unless it names one (`kubectl apply -n`).
fn docs(path: &Path, namespace: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    format!("\n{text}")
        .split("\n---")
        .map(|d| serde_yaml_ng::from_str::<Value>(d).unwrap())
        .filter(|v| !v.is_null())
        .map(|mut v| {
            if v["kind"] != "Namespace" && v["metadata"].get("namespace").is_none() {
                v["metadata"]["namespace"] = json!(namespace);
            }
            v
        })
        .collect()
}

fn write(dir: &Path, file: &str, docs: &[Value]) {
    let text: String = docs
        .iter()
        .map(|d| format!("---\n{}", serde_yaml_ng::to_string(d).unwrap()))
        .collect();
    std::fs::write(dir.join(file), text).unwrap();
}

/// The examples' manifests for `phase`, in one directory.
fn stage(mesh: &Mesh, phase: Phase) {
    let dst = &mesh.manifests;
    for f in std::fs::read_dir(dst).unwrap().flatten() {
        if f.path().extension().is_some_and(|e| e == "yaml") && f.file_name() != "credential.yaml" {
            std::fs::remove_file(f.path()).unwrap();
        }
    }
    let simple_specs = if phase == Phase::Fault {
        "simple/nginx-prefix/istio-specs.yaml"
    } else {
        "simple/istio-specs.yaml"
    };
    for (file, src, ns) in [
        ("simple-ns.yaml", "simple/namespace.yaml", "simple"),
        ("simple.yaml", "simple/simple.yaml", "simple"),
        ("simple-specs.yaml", simple_specs, "simple"),
        ("canary-ns.yaml", "canary/namespace.yaml", "canary"),
        ("toolbox.yaml", "canary/toolbox.yaml", "canary"),
        ("demo-ns.yaml", "delay/namespace.yaml", "demo"),
        ("demo.yaml", "delay/demo.yaml", "demo"),
        ("securesvc-ns.yaml", "securesvc/namespace.yaml", "securesvc"),
        ("httpserver.yaml", "securesvc/httpserver.yaml", "securesvc"),
    ] {
        write(dst, file, &docs(&example(src), ns));
    }
    // Two replicas per version, so the subsets' load balancers have a choice: v1 RANDOM (the
    // DestinationRule's default), v2 ROUND_ROBIN (its subset override).
    let mut v1 = docs(&example("canary/canary-v1.yaml"), "canary");
    v1[0]["spec"]["replicas"] = json!(2);
    write(dst, "canary-v1.yaml", &v1);
    let mut v2 = docs(&example("canary/canary-v2.yaml"), "canary");
    v2[0]["spec"]["replicas"] = json!(2);
    // A second HTTPS host on the same 443 with its own certificate (Secret from make_credential).
    let mut secure = docs(&example("securesvc/fqdn/istio-specs.yaml"), "securesvc");
    let gw = secure.iter_mut().find(|d| d["kind"] == "Gateway").unwrap();
    gw["spec"]["servers"].as_array_mut().unwrap().push(json!({
        "hosts": [SECOND_HOST],
        "port": {"name": "https-second", "number": 443, "protocol": "HTTPS"},
        "tls": {"mode": "SIMPLE", "credentialName": "second-credential"},
    }));
    secure.push(json!({
        "apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
        "metadata": {"name": "second", "namespace": "securesvc"},
        "spec": {"gateways": ["httpsserver"], "hosts": [SECOND_HOST],
            "http": [{"route": [{"destination": {"host": "httpserver.securesvc.svc.cluster.local",
                "port": {"number": 80}}}]}]},
    }));
    write(dst, "securesvc-specs.yaml", &secure);
    let specs = match phase {
        Phase::Canary => Some("canary/istio-specs.yaml"),
        Phase::NoVirtualService => None,
        Phase::Fault => {
            // v2 fails twice, then answers: what the fault example's retries are for.
            let c = &mut v2[0]["spec"]["template"]["spec"]["containers"][0];
            c["image"] = json!("docker.io/skiff/skiff:0.1.0");
            c["args"] = json!(["demo-app", "--port", "80", "--status-cycle", "503,503,200"]);
            // One pod: the cycle is per pod, and the retries' count below assumes one.
            v2[0]["spec"]["replicas"] = json!(1);
            Some("fault/istio-specs.yaml")
        }
    };
    write(dst, "canary-v2.yaml", &v2);
    match specs {
        Some(s) => write(dst, "canary-specs.yaml", &docs(&example(s), "canary")),
        None => {
            let dr: Vec<Value> = docs(&example("canary/istio-specs.yaml"), "canary")
                .into_iter()
                .filter(|d| d["kind"] == "DestinationRule")
                .collect();
            write(dst, "canary-specs.yaml", &dr);
        }
    }
    if phase == Phase::Fault {
        write(dst, "delay.yaml", &docs(&example("delay/delay.yaml"), "demo"));
    }
    std::fs::write(dst.join("outlier.yaml"), OUTLIER).unwrap();
}

/// The second HTTPS host on the gateway's 443, with its own certificate.
const SECOND_HOST: &str = "second.skiff.test";

/// The securesvc README's certificate and Secret, made with openssl, and a second one for
/// SECOND_HOST.
fn make_credential(mesh: &Mesh) {
    let secret = |name: &str, subject: &str, file: &str| {
        let key = mesh.dir.join(format!("{file}.key"));
        let crt = mesh.dir.join(format!("{file}.crt"));
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-sha256", "-nodes", "-days", "365", "-newkey", "rsa:2048",
            ])
            .args(["-subj", subject, "-keyout"])
            .args([&key, Path::new("-out"), &crt])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let encode = |p: &Path| {
            let out = Command::new("base64").arg("-w0").arg(p).output().unwrap();
            String::from_utf8(out.stdout).unwrap()
        };
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": "istio-system"},
            "data": {"tls.crt": encode(&crt), "tls.key": encode(&key)}})
    };
    let secrets = [
        secret(
            "zhongmingmao-credential",
            "/O=zhongmingmao Inc./CN=*.zhongmingmao.io",
            "zhongmingmao.io",
        ),
        secret(
            "second-credential",
            &format!("/O=Skiff second/CN={SECOND_HOST}"),
            "second",
        ),
    ];
    write(&mesh.manifests, "credential.yaml", &secrets);
}

/// curl from this host (the ingress gateway's address is reachable from here only).
fn host_curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `time_total` of one request from the demo client, and its body.
fn timed(mesh: &Mesh) -> (f64, String) {
    let out = mesh.exec_in(
        "demo",
        "deploy/client",
        &[
            "curl",
            "-s",
            "--max-time",
            "15",
            "-w",
            "\\n%{time_total}",
            "demo:8080/headers",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, t) = text.rsplit_once('\n').unwrap();
    (t.trim().parse().unwrap(), body.to_owned())
}

fn traffic(proxy: &str, label: &str) {
    let mesh = Mesh::new(label);
    stage(&mesh, Phase::Canary);
    make_credential(&mesh);
    let status = mesh.up(proxy);
    let host = mesh.ok(&["ingress-host"]).trim().to_owned();
    assert!(host.starts_with("198.18.255."), "{host}");
    assert!(status.contains(&format!("INGRESS_HOST={host}")), "{status}");
    assert!(status.contains("istio-ingressgateway-"), "{status}");

    // Ingress by host: the seed's host reaches nginx, any other gets the gateway's 404.
    let code = |args: &[&str]| host_curl(&[&["-o", "/dev/null", "-w", "%{http_code}"], args].concat()).0;
    assert_eq!(code(&["-H", "host: simple.zhongmingmao.io", &host]), "200");
    assert_eq!(code(&["-H", "host: other.example.com", &host]), "404");
    assert_eq!(code(&[&host]), "404");
    // `host:port` matches the host's virtual host (Istio's gateway routes ignore the port).
    assert_eq!(code(&["-H", "host: simple.zhongmingmao.io:80", &host]), "200");

    // HTTPS on one port, two hosts: each SNI gets its own Secret's certificate, h2 by ALPN.
    for (sni, cn, other) in [
        ("httpsserver.zhongmingmao.io", "CN=*.zhongmingmao.io", SECOND_HOST),
        (SECOND_HOST, &*format!("CN={SECOND_HOST}"), "zhongmingmao"),
    ] {
        let resolve = format!("{sni}:443:{host}");
        let (out, err) = host_curl(&[
            "-k",
            "-v",
            "--resolve",
            &resolve,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            &format!("https://{sni}"),
        ]);
        assert_eq!(out, "200 2", "{sni}: {err}");
        let subject = err.lines().find(|l| l.contains(" subject: ")).unwrap_or_default();
        assert!(subject.contains(cn), "{sni}: {subject}\n{err}");
        assert!(!subject.contains(other), "{sni}: {subject}");
    }

    // Canary: with the header every request lands on v2, without it every one on v1.
    let (v1, v2) = (
        mesh.served("canary", "canary-v1"),
        mesh.served("canary", "canary-v2"),
    );
    let codes = mesh.codes(
        "canary",
        "deploy/toolbox",
        &["user: zhongmingmao"],
        "http://canary/",
        200,
    );
    assert!(codes.iter().all(|c| *c == 200), "{codes:?}");
    assert_eq!(mesh.served("canary", "canary-v2") - v2, 200);
    assert_eq!(mesh.served("canary", "canary-v1") - v1, 0);
    // v2's subset is ROUND_ROBIN: over its two pods the 200 requests (one connection, so one
    // worker's balancer) strictly alternate, 100 each.
    let pods_of = |deploy: &str| -> Vec<String> {
        mesh.pods("canary", deploy)
            .into_iter()
            .map(|(_, ip)| format!("{ip}:80"))
            .collect()
    };
    let (v1_pods, v2_pods) = (pods_of("canary-v1"), pods_of("canary-v2"));
    assert_eq!((v1_pods.len(), v2_pods.len()), (2, 2), "{v1_pods:?} {v2_pods:?}");
    let subset = |s: &str| format!("outbound|80|{s}|canary.canary.svc.cluster.local");
    let seq = mesh.upstreams("canary", "deploy/toolbox", &subset("v2"), 200);
    let seq = &seq[seq.len() - 200..];
    let switches = |seq: &[String]| seq.windows(2).filter(|w| w[0] != w[1]).count();
    let count = |seq: &[String], ep: &str| seq.iter().filter(|h| *h == ep).count();
    assert_eq!(switches(seq), 199, "ROUND_ROBIN alternates: {seq:?}");
    assert_eq!(
        v2_pods.iter().map(|p| count(seq, p)).collect::<Vec<_>>(),
        [100, 100],
        "{seq:?}"
    );
    let codes = mesh.codes("canary", "deploy/toolbox", &[], "http://canary/", 200);
    assert!(codes.iter().all(|c| *c == 200), "{codes:?}");
    assert_eq!(mesh.served("canary", "canary-v1") - v1, 200);
    assert_eq!(mesh.served("canary", "canary-v2") - v2, 200);
    // v1's subset keeps the DestinationRule's RANDOM: each pod's share is Binomial(200, ½)
    // (100 ± 4.5σ, σ ≈ 7.1) and consecutive requests change pods Binomial(199, ½) times
    // (99.5 ± 4.5σ) — a round robin would alternate all 199 times.
    let seq = mesh.upstreams("canary", "deploy/toolbox", &subset("v1"), 200);
    let seq = &seq[seq.len() - 200..];
    let shares: Vec<usize> = v1_pods.iter().map(|p| count(seq, p)).collect();
    assert_eq!(shares.iter().sum::<usize>(), 200, "{seq:?}");
    assert!(
        shares.iter().all(|n| (68..=132).contains(n)),
        "RANDOM shares {shares:?}"
    );
    let changes = switches(seq);
    assert!(
        (68..=131).contains(&changes),
        "RANDOM changed pods {changes} of 199 times"
    );
    eprintln!("{proxy}: v2 ROUND_ROBIN 100/100 alternating; v1 RANDOM {shares:?}, {changes} changes of 199");

    // What istioctl shows for it: the subset clusters with their DestinationRule, the route with
    // its VirtualService.
    let clusters = mesh.proxy_config(&[
        "cluster",
        "deploy/toolbox",
        "-n",
        "canary",
        "--fqdn",
        "canary.canary.svc.cluster.local",
    ]);
    for s in ["v1", "v2"] {
        assert!(
            clusters.lines().any(|l| {
                let c: Vec<&str> = l.split_whitespace().collect();
                c.len() >= 6 && c[2] == s && c[3] == "outbound" && c[5] == "canary.canary"
            }),
            "{s}: {clusters}"
        );
    }
    let routes = mesh.proxy_config(&["route", "deploy/toolbox", "-n", "canary", "--name", "80"]);
    assert!(
        routes.lines().any(|l| l.starts_with("80 ")
            && l.contains("canary.canary.svc.cluster.local")
            && l.trim_end().ends_with("canary.canary")),
        "{routes}"
    );

    // Outlier detection: the 503 pod is ejected and the healthy ones take everything.
    let bad_before = mesh.served("outlier", "backend-bad");
    let codes = mesh.codes("outlier", "deploy/client", &[], "http://backend/", 30);
    let bad_hit = mesh.served("outlier", "backend-bad") - bad_before;
    assert!(bad_hit >= 2, "the bad pod was in rotation ({bad_hit} requests)");
    let good_before = mesh.served("outlier", "backend-good");
    std::thread::sleep(Duration::from_millis(1500));
    let bad_before = mesh.served("outlier", "backend-bad");
    let later = mesh.codes("outlier", "deploy/client", &[], "http://backend/", 30);
    assert!(later.iter().all(|c| *c == 200), "first {codes:?}, then {later:?}");
    assert_eq!(
        mesh.served("outlier", "backend-bad"),
        bad_before,
        "the ejected pod got traffic"
    );
    // The two healthy replicas' logs: `deploy/` reads the first; each got some of the 30.
    assert!(mesh.served("outlier", "backend-good") > good_before);

    // Baseline for the delay: no VirtualService on demo yet.
    let (baseline, _) =
        (0..3)
            .map(|_| timed(&mesh))
            .fold((0.0, String::new()), |a, b| if b.0 > a.0 { b } else { a });
    assert!(baseline < 1.0, "{baseline}");

    // Without the VirtualService, the Service's endpoints share the traffic.
    stage(&mesh, Phase::NoVirtualService);
    mesh.up(proxy);
    let (v1, v2) = (
        mesh.served("canary", "canary-v1"),
        mesh.served("canary", "canary-v2"),
    );
    let codes = mesh.codes(
        "canary",
        "deploy/toolbox",
        &["user: zhongmingmao"],
        "http://canary/",
        200,
    );
    assert!(codes.iter().all(|c| *c == 200), "{codes:?}");
    let (d1, d2) = (
        mesh.served("canary", "canary-v1") - v1,
        mesh.served("canary", "canary-v2") - v2,
    );
    assert_eq!(d1 + d2, 200);
    // RANDOM over two endpoints: each gets 100 ± 4.5σ (σ ≈ 7).
    assert!((68..=132).contains(&d1), "v1 {d1}, v2 {d2}");
    eprintln!("{proxy}: without the VirtualService v1 {d1}, v2 {d2} of 200");

    // Fault: v1's route aborts 80 %; v2's retries recover from two failures per request.
    stage(&mesh, Phase::Fault);
    mesh.up(proxy);
    let codes = mesh.codes("canary", "deploy/toolbox", &[], "http://canary/", 500);
    let aborted = codes.iter().filter(|c| **c == 500).count();
    assert_eq!(
        aborted + codes.iter().filter(|c| **c == 200).count(),
        500,
        "{codes:?}"
    );
    // Binomial(500, 0.8): mean 400, σ ≈ 8.9; 4.5σ either side.
    assert!((360..=440).contains(&aborted), "{aborted} of 500 aborted");
    eprintln!(
        "{proxy}: {aborted} of 500 aborted ({:.1} %)",
        aborted as f64 / 5.0
    );

    let v2 = mesh.served("canary", "canary-v2");
    let codes = mesh.codes(
        "canary",
        "deploy/toolbox",
        &["user: zhongmingmao"],
        "http://canary/",
        30,
    );
    assert!(
        codes.iter().all(|c| *c == 200),
        "retries did not recover: {codes:?}"
    );
    assert_eq!(
        mesh.served("canary", "canary-v2") - v2,
        90,
        "three attempts per request"
    );
    // `x-envoy-max-retries` is a client control Envoy takes only from trusted clients: on a
    // sidecar's outbound (no `use_remote_address`) that means exactly one internal
    // `x-forwarded-for` hop. From a bare curl it is ignored and the retries go on...
    let codes = mesh.codes(
        "canary",
        "deploy/toolbox",
        &["user: zhongmingmao", "x-envoy-max-retries: 0"],
        "http://canary/",
        30,
    );
    assert!(
        codes.iter().all(|c| *c == 200),
        "untrusted header honoured: {codes:?}"
    );
    assert_eq!(mesh.served("canary", "canary-v2") - v2, 180);
    // ...from a trusted one it stops them: the cycle's two failures reach the client.
    let codes = mesh.codes(
        "canary",
        "deploy/toolbox",
        &[
            "user: zhongmingmao",
            "x-envoy-max-retries: 0",
            "x-forwarded-for: 198.18.0.1",
        ],
        "http://canary/",
        30,
    );
    assert_eq!(codes.iter().filter(|c| **c == 503).count(), 20, "{codes:?}");
    assert_eq!(
        mesh.served("canary", "canary-v2") - v2,
        210,
        "one attempt per request"
    );

    // Ingress by prefix: `/` no longer matches, `/nginx` reaches nginx as `/`.
    assert_eq!(code(&["-H", "host: simple.zhongmingmao.io", &host]), "404");
    assert_eq!(
        code(&["-H", "host: simple.zhongmingmao.io", &format!("{host}/nginx")]),
        "200"
    );
    let log = mesh.ok(&["logs", "-n", "simple", "deploy/simple", "--tail", "1"]);
    assert!(log.contains("\"GET / HTTP/1.1\" 200"), "{log}");

    // Seed 003's delay: the response is held 6 s, and the app saw the added header.
    let (delayed, body) = timed(&mesh);
    assert!(body.contains("\"Proxy\": \"xx1\""), "{body}");
    assert!(
        delayed - baseline >= 5.9 && delayed < 9.0,
        "{delayed} s vs {baseline} s"
    );
    eprintln!("{proxy}: delayed {delayed:.3} s, baseline {baseline:.3} s");

    mesh.ok(&["down"]);
    // The host end of the /30 (the node end minus one) is gone with the link.
    let host_end = std::net::Ipv4Addr::from(u32::from(host.parse::<std::net::Ipv4Addr>().unwrap()) - 1);
    let addrs = Command::new("ip").args(["-4", "-o", "addr"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&addrs.stdout).contains(&format!("{host_end}/30")),
        "the ingress link is left"
    );
}

#[test]
fn traffic_management_with_skiff() {
    traffic("skiff", "s");
}

#[test]
fn traffic_management_with_envoy() {
    traffic("envoy", "e");
}
