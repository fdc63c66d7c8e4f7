//! An HTTPS ingress gateway end to end on loopback: real `skiffd --config-dir` with a Gateway
//! (`tls.mode: SIMPLE`, `credentialName`), a VirtualService bound to it, a Service + Endpoints to
//! a loopback upstream and a `kubernetes.io/tls` Secret; `skiff-agent proxy router` as the
//! `istio-ingressgateway` pod takes its certificate over SDS on the ADS stream. curl and
//! `openssl s_client` are the clients. A rotated Secret is served to new connections while an
//! open one keeps working; a Secret that is not PEM is NACKed by name and the last good
//! certificate stays.

#![allow(clippy::unwrap_used)]

mod tls_peers;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testkit::http::{free_port, Echo};
use testkit::proxy::{admin_request, Kind, ProxyProc};
use tls_peers::{curl, s_client_subject, Certs};

const AGENT: &str = env!("CARGO_BIN_EXE_skiff-agent");

/// The authority a client of the Service's port 443 sends (the gateway's routes match the host
/// without the test's ephemeral listener port).
const HOST: &str = "-HHost: a.example.com";

fn skiffd_binary() -> PathBuf {
    let p = Path::new(AGENT).with_file_name("skiffd");
    assert!(p.is_file(), "{} is missing: `cargo build -p skiffd`", p.display());
    p
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn indent(pem: &str) -> String {
    pem.lines().map(|l| format!("    {l}\n")).collect()
}

/// The gateway's credential, as `kubectl create secret tls web-cert -n istio-system` makes it.
fn write_secret(dir: &Path, cert: &str, key: &str) {
    let text = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: web-cert, namespace: istio-system}}\n\
         type: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(cert),
        indent(key)
    );
    // Write then rename, so skiffd never reads half a file.
    let tmp = dir.join(".secret.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, dir.join("secret.yaml")).unwrap();
}

fn write_mesh(dir: &Path, gateway_port: u16, upstream: u16) {
    std::fs::write(
        dir.join("mesh.yaml"),
        format!(
            r#"apiVersion: v1
kind: Namespace
metadata: {{name: istio-system}}
---
apiVersion: v1
kind: Service
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec:
  clusterIP: 198.19.0.10
  selector: {{app: istio-ingressgateway, istio: ingressgateway}}
  ports:
  - {{name: https, port: 443, protocol: TCP, targetPort: {gateway_port}}}
---
apiVersion: v1
kind: Pod
metadata:
  name: istio-ingressgateway-tls
  namespace: istio-system
  labels: {{app: istio-ingressgateway, istio: ingressgateway}}
spec: {{containers: [{{name: istio-proxy}}]}}
status: {{phase: Running, podIP: 127.0.0.1}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: web}}
---
apiVersion: v1
kind: Service
metadata: {{name: backend, namespace: web}}
spec:
  clusterIP: 198.19.0.20
  ports: [{{name: http, port: 80, targetPort: {upstream}}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: backend, namespace: web}}
subsets:
- addresses: [{{ip: 127.0.0.1}}]
  ports: [{{name: http, port: {upstream}}}]
---
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {{name: gw, namespace: web}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: [a.example.com]
    tls: {{mode: SIMPLE, credentialName: web-cert}}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {{name: web, namespace: web}}
spec:
  hosts: [a.example.com]
  gateways: [gw]
  http:
  - route:
    - destination: {{host: backend, port: {{number: 80}}}}
"#
        ),
    )
    .unwrap();
}

/// An `openssl s_client` session kept open (HTTP/1.1 over it on demand).
struct OpenSession {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl OpenSession {
    fn open(port: u16, sni: &str) -> OpenSession {
        let mut child = Command::new("openssl")
            .args(["s_client", "-quiet", "-connect"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-servername", sni])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        OpenSession { child, lines }
    }

    /// Sends a GET and returns the status line.
    fn get(&mut self, host: &str) -> String {
        let stdin = self.child.stdin.as_mut().unwrap();
        write!(stdin, "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
        stdin.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                // The previous answer's body has no final newline: the status line may follow
                // it on the same line.
                if let Some(i) = l.find("HTTP/1.1 ") {
                    return l[i..].trim().to_owned();
                }
            }
        }
        "no answer".into()
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn https_gateway_takes_its_certificate_over_sds_and_follows_the_secret() {
    let certs = Certs::generate(&["a.example.com"]);
    let echo = Echo::local("backend");
    let dir = certs.dir.join("config");
    std::fs::create_dir_all(&dir).unwrap();
    let gateway_port = free_port();
    write_mesh(&dir, gateway_port, echo.addr.port());
    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
    write_secret(
        &dir,
        &read(certs.cert("a.example.com")),
        &read(certs.key("a.example.com")),
    );

    let (xds, mon) = (free_port(), free_port());
    let skiffd_log = certs.dir.join("skiffd.log");
    let log = std::fs::File::create(&skiffd_log).unwrap();
    let _skiffd = Killed(
        Command::new(skiffd_binary())
            .arg("--config-dir")
            .arg(&dir)
            .args(["--config-poll-ms", "100"])
            .args(["--xds-addr", &format!("127.0.0.1:{xds}")])
            .args(["--monitoring-addr", &format!("127.0.0.1:{mon}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait_for("skiffd ready", Duration::from_secs(20), || {
        admin_request(mon, "GET", "/ready").map(|r| r.0) == Ok(200)
    });

    let admin = free_port();
    let mut cmd = Command::new(AGENT);
    cmd.args(["proxy", "router", "--discovery-address"])
        .arg(format!("127.0.0.1:{xds}"))
        .args(["--concurrency", "1", "--drain-time-s", "1"])
        .args(["--admin-port", &admin.to_string()])
        .args(["--status-port", &free_port().to_string()])
        .args(["--health-port", &free_port().to_string()])
        .args(["--metrics-port", &free_port().to_string()])
        .env("POD_NAME", "istio-ingressgateway-tls")
        .env("POD_NAMESPACE", "istio-system")
        .env("INSTANCE_IP", "127.0.0.1")
        .env(
            "ISTIO_METAJSON_LABELS",
            r#"{"app":"istio-ingressgateway","istio":"ingressgateway"}"#,
        );
    let mut gateway = ProxyProc::spawn_command(Kind::Skiff, cmd, admin);
    gateway.wait_ready();

    // The certificate arrives over SDS right after the listener: HTTPS with h2 and HTTP/1.1.
    let mut answer = Err(String::new());
    wait_for("the gateway to serve HTTPS", Duration::from_secs(20), || {
        // --fail: until the route (RDS) is in too, the gateway answers 404.
        answer = curl(
            gateway_port,
            "a.example.com",
            &certs,
            &[HOST, "--fail", "--http2"],
        );
        answer.is_ok()
    });
    let (version, body) = answer.unwrap();
    assert_eq!(version, "2");
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert_eq!(echoed["headers"]["x-forwarded-proto"], "https", "{body}");
    assert_eq!(echoed["name"], "backend");
    let (version, _) = curl(gateway_port, "a.example.com", &certs, &[HOST, "--http1.1"]).unwrap();
    assert_eq!(version, "1.1");
    let subject = s_client_subject(gateway_port, "a.example.com");
    assert!(subject.contains("O = a.example.com"), "{subject}");

    // The dump shows the secret with its certificate and the key redacted, as Envoy does.
    let (_, dump) = gateway.admin("/config_dump").unwrap();
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let secrets = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["@type"]
                .as_str()
                .is_some_and(|t| t.ends_with("SecretsConfigDump"))
        })
        .unwrap();
    let active = &secrets["dynamic_active_secrets"][0];
    assert_eq!(active["name"], "kubernetes://web-cert", "{secrets}");
    let tls = &active["secret"]["tls_certificate"];
    assert!(tls["certificate_chain"]["inline_bytes"].is_string(), "{secrets}");
    // base64("[redacted]")
    assert_eq!(
        tls["private_key"]["inline_bytes"], "W3JlZGFjdGVkXQ==",
        "{secrets}"
    );

    // Rotation: new connections get the new certificate; one opened before keeps working.
    let mut open = OpenSession::open(gateway_port, "a.example.com");
    assert_eq!(open.get("a.example.com"), "HTTP/1.1 200 OK");
    certs.issue("a.example.com", "a-v2");
    write_secret(&dir, &read(certs.cert("a-v2")), &read(certs.key("a-v2")));
    wait_for("the rotated certificate", Duration::from_secs(20), || {
        s_client_subject(gateway_port, "a.example.com").contains("O = a-v2")
    });
    assert!(curl(gateway_port, "a.example.com", &certs, &[HOST, "--http2"]).is_ok());
    assert_eq!(open.get("a.example.com"), "HTTP/1.1 200 OK");

    // Not PEM inside the PEM armour: NACKed, naming the secret; the last good one stays.
    write_secret(
        &dir,
        "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----",
        "-----BEGIN PRIVATE KEY-----\nMIIBfake\n-----END PRIVATE KEY-----",
    );
    let nack = || {
        gateway
            .stderr()
            .into_iter()
            .find(|l| l.contains("NACK") && l.contains("kubernetes://web-cert"))
    };
    wait_for("the NACK", Duration::from_secs(20), || nack().is_some());
    let nack = nack().unwrap();
    assert!(
        nack.contains("secret \"kubernetes://web-cert\": tls_certificate."),
        "{nack}"
    );
    eprintln!("{nack}");
    let subject = s_client_subject(gateway_port, "a.example.com");
    assert!(subject.contains("O = a-v2"), "{subject}");
    assert!(curl(gateway_port, "a.example.com", &certs, &[HOST, "--http1.1"]).is_ok());
    let skiffd = std::fs::read_to_string(&skiffd_log).unwrap();
    let reported = skiffd
        .lines()
        .find(|l| l.contains("NACK") && l.contains("kubernetes://web-cert"));
    assert!(reported.is_some(), "skiffd does not report the NACK: {skiffd}");
    eprintln!("{}", reported.unwrap());
}
