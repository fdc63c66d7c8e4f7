//! `skiffd`'s discovery flags: what it says when there is nothing to serve or the flags clash, and
//! a config-dir run that serves `/ready`, `/metrics` and `/debug/registryz` on loopback.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SKIFFD: &str = env!("CARGO_BIN_EXE_skiffd");

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(SKIFFD)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

#[test]
fn nothing_to_serve_and_clashing_flags_are_explained() {
    let (ok, text) = run(&[]);
    assert!(!ok);
    assert!(text.contains("nothing to serve: pass --config-dir DIR"), "{text}");
    let (ok, text) = run(&["--config-dir", "/tmp", "--kubernetes"]);
    assert!(!ok);
    assert!(text.contains("cannot be used with"), "{text}");
    if !cfg!(feature = "kubernetes") {
        let (ok, text) = run(&["--kubernetes"]);
        assert!(!ok);
        assert!(text.contains("built without it"), "{text}");
    }
}

#[test]
fn a_bad_mesh_config_names_the_field() {
    let path = std::env::temp_dir().join(format!("skiffd-mesh-{}.yaml", std::process::id()));
    std::fs::write(
        &path,
        "accessLogFile: /dev/stdout\noutboundTrafficPolicy: {mode: DENY_ALL}\n",
    )
    .unwrap();
    let (ok, text) = run(&["--config-dir", "/tmp", "--mesh-config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        text.contains("--mesh-config:")
            && text.contains("outboundTrafficPolicy.mode: unknown variant `DENY_ALL`"),
        "{text}"
    );
    let (ok, text) = run(&["--config-dir", "/tmp", "--mesh-config", "/nonexistent/mesh.yaml"]);
    assert!(!ok);
    assert!(text.contains("/nonexistent/mesh.yaml: cannot read"), "{text}");
    let _ = std::fs::remove_file(&path);
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn config_dir_run_serves_monitoring_on_loopback() {
    let dir = std::env::temp_dir().join(format!("skiffd-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("web.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
         spec: {clusterIP: 198.19.0.30, ports: [{name: http, port: 80}]}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("typo.yaml"),
        "apiVersion: v1\nkind: Servise\nmetadata: {name: x}\n",
    )
    .unwrap();
    let (xds, mon) = (free_port(), free_port());
    let _child = Child(
        Command::new(SKIFFD)
            .arg("--config-dir")
            .arg(&dir)
            .args(["--xds-addr", &format!("127.0.0.1:{xds}")])
            .args(["--monitoring-addr", &format!("127.0.0.1:{mon}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while testkit::proxy::admin_request(mon, "GET", "/ready").map(|r| r.0) != Ok(200) {
        assert!(Instant::now() < deadline, "skiffd not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, registry) = testkit::proxy::admin_request(mon, "GET", "/debug/registryz").unwrap();
    assert!(registry.contains("web.shop.svc.cluster.local"), "{registry}");
    assert!(
        registry.contains("typo.yaml: document 0 (Servise x): kind: unknown kind \\\"Servise\\\""),
        "{registry}"
    );
    let (_, metrics) = testkit::proxy::admin_request(mon, "GET", "/metrics").unwrap();
    assert!(metrics.contains("pilot_services 1"), "{metrics}");
    assert!(metrics.contains("pilot_xds 0"), "{metrics}");
    let (_, syncz) = testkit::proxy::admin_request(mon, "GET", "/debug/syncz").unwrap();
    assert_eq!(syncz.trim(), "[]");
    let _ = std::fs::remove_dir_all(&dir);
}
