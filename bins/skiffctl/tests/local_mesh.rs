//! The local mesh end to end, as a user runs it: `skiffctl local up -f examples/sidecar`, the
//! seed's requests from the toolbox pod, the views that explain them, scaling, a pod's process
//! dying, and `down` leaving nothing behind. Needs root (CI runs as root).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;

use support::LocalMesh;

/// One mesh, named after the test, with its state under a private directory; `down` on drop.
type Mesh = LocalMesh;

impl Mesh {
    fn exec(&self, pod: &str, cmd: &[&str]) -> Output {
        self.exec_in("sidecar", pod, cmd)
    }

    fn curl(&self, args: &[&str]) -> String {
        let mut cmd = vec!["curl", "-s", "--max-time", "5"];
        cmd.extend_from_slice(args);
        let out = self.exec("deploy/toolbox", &cmd);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// GET on an admin port inside a pod.
    fn admin(&self, pod: &str, port: u16, path: &str) -> String {
        self.admin_in("sidecar", pod, port, path)
    }

    fn admin_in(&self, ns: &str, pod: &str, port: u16, path: &str) -> String {
        let out = self.exec_in(
            ns,
            pod,
            &[
                "curl",
                "-s",
                "--max-time",
                "5",
                &format!("http://127.0.0.1:{port}{path}"),
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn state(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.dir.join(&self.name).join("state.json")).unwrap())
            .unwrap()
    }

    fn pods(&self, owner: &str) -> Vec<Value> {
        self.state()["pods"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["owner"] == owner)
            .cloned()
            .collect()
    }

    fn logs(&self, pod: &str, container: &str) -> String {
        self.ok(&["logs", "-n", "sidecar", pod, "-c", container])
    }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

/// Nothing of the mesh is left: namespaces, resolv.conf dirs, processes, state.
fn assert_gone(mesh: &Mesh, pids: &[u64]) {
    let prefix = format!("{}-", mesh.name);
    let netns: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    assert!(netns.is_empty(), "namespaces left: {netns:?}");
    let etc: Vec<String> = std::fs::read_dir("/etc/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    assert!(etc.is_empty(), "/etc/netns entries left: {etc:?}");
    for pid in pids {
        assert!(
            !running(*pid),
            "process {pid} is still running: {:?}",
            std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        );
    }
    assert!(!mesh.dir.join(&mesh.name).exists(), "state left behind");
}

/// Alive and not a zombie (an orphan's zombie waits for whatever init this machine has).
fn running(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

fn all_pids(state: &Value) -> Vec<u64> {
    let mut pids: Vec<u64> = state["pods"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            p["containers"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|c| c["pid"].as_u64())
        })
        .collect();
    pids.extend(state["supervisor_pid"].as_u64());
    pids
}

fn walkthrough(proxy: &str) {
    let mesh = Mesh::new("lm", &proxy[..1]);
    let out = mesh.ok(&[
        "up",
        "-f",
        example("sidecar").to_str().unwrap(),
        "-n",
        "sidecar",
        "--proxy",
        proxy,
        "--timeout",
        "90",
    ]);
    assert!(out.contains("nginx-deployment-") && out.contains("2/2"), "{out}");

    // seed 004: `curl -sI nginx` from the toolbox, through both sidecars.
    let head = mesh.curl(&["-I", "nginx"]);
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("x-envoy-upstream-service-time"), "{head}");
    assert!(head.to_ascii_lowercase().contains("server: envoy"), "{head}");
    // Every name a pod may use resolves.
    for host in [
        "nginx.sidecar",
        "nginx.sidecar.svc",
        "nginx.sidecar.svc.cluster.local",
    ] {
        assert!(
            mesh.curl(&["-o", "/dev/null", "-w", "%{http_code}", host]) == "200",
            "{host}"
        );
    }
    // nginx sees the inbound sidecar's 127.0.0.6; both sidecars log the request.
    wait_for("nginx's log line", Duration::from_secs(5), || {
        mesh.logs("deploy/nginx-deployment", "nginx")
            .contains("127.0.0.6 - - [")
    });
    let nginx_log = mesh.logs("deploy/nginx-deployment", "nginx");
    assert!(
        nginx_log
            .lines()
            .any(|l| l.starts_with("127.0.0.6 - - [") && l.contains("\"HEAD / HTTP/1.1\" 200")),
        "{nginx_log}"
    );
    wait_for("both access-log lines", Duration::from_secs(10), || {
        mesh.logs("deploy/toolbox", "istio-proxy")
            .contains("outbound|80||nginx.sidecar.svc.cluster.local")
            && mesh
                .logs("deploy/nginx-deployment", "istio-proxy")
                .contains("inbound|80||")
    });

    // What the toolbox's sidecar holds: listener → route → cluster → endpoint, as in the seed.
    let dump: Value = serde_json::from_str(&mesh.admin("deploy/toolbox", 15000, "/config_dump")).unwrap();
    let text = dump.to_string();
    assert!(text.contains("\"0.0.0.0_80\""), "listener 0.0.0.0_80");
    assert!(text.contains("\"route_config_name\":\"80\""), "route 80");
    assert!(
        text.contains("nginx.sidecar.svc.cluster.local:80"),
        "virtual host"
    );
    let nginx_ip = mesh.pods("nginx-deployment")[0]["ip"]
        .as_str()
        .unwrap()
        .to_owned();
    let clusters = mesh.admin("deploy/toolbox", 15000, "/clusters");
    assert!(
        clusters.contains(&format!(
            "outbound|80||nginx.sidecar.svc.cluster.local::{nginx_ip}:80::health_flags::healthy"
        )),
        "{clusters}"
    );
    // skiffd's view: both sidecars synced.
    let syncz: Value =
        serde_json::from_str(&mesh.admin_in("istio-system", "deploy/istiod", 15014, "/debug/syncz")).unwrap();
    let proxies = syncz.as_array().unwrap();
    assert_eq!(proxies.len(), 2, "{syncz}");
    for p in proxies {
        for t in ["cds", "lds", "eds", "rds"] {
            assert_eq!(p[t], "SYNCED", "{t} of {}", p["proxy"]);
        }
    }

    // The same chain through istioctl's commands, as a user would read it.
    let listeners = mesh.istioctl(&[
        "proxy-config",
        "listener",
        "deploy/toolbox",
        "-n",
        "sidecar",
        "--port",
        "80",
    ]);
    assert!(
        listeners
            .lines()
            .any(|l| l.starts_with("0.0.0.0") && l.contains("Route: 80")),
        "{listeners}"
    );
    let routes = mesh.istioctl(&[
        "proxy-config",
        "route",
        "deploy/toolbox",
        "-n",
        "sidecar",
        "--name",
        "80",
    ]);
    assert!(
        routes
            .lines()
            .any(|l| l.starts_with("80 ") && l.contains("nginx.sidecar.svc.cluster.local")),
        "{routes}"
    );
    let clusters = mesh.istioctl(&[
        "proxy-config",
        "cluster",
        "deploy/toolbox",
        "-n",
        "sidecar",
        "--fqdn",
        "nginx.sidecar.svc.cluster.local",
    ]);
    assert!(
        clusters
            .lines()
            .any(|l| l.starts_with("nginx.sidecar.svc.cluster.local")
                && l.contains("outbound")
                && l.contains("EDS")),
        "{clusters}"
    );
    let endpoints = mesh.istioctl(&[
        "proxy-config",
        "endpoint",
        "deploy/toolbox",
        "-n",
        "sidecar",
        "--cluster",
        "outbound|80||nginx.sidecar.svc.cluster.local",
    ]);
    assert!(
        endpoints
            .lines()
            .any(|l| l.starts_with(&format!("{nginx_ip}:80")) && l.contains("HEALTHY")),
        "{endpoints}"
    );
    let status = mesh.istioctl(&["proxy-status"]);
    let rows: Vec<&str> = status.lines().filter(|l| l.contains(".sidecar ")).collect();
    assert_eq!(rows.len(), 2, "{status}");
    for row in rows {
        assert_eq!(row.matches("SYNCED").count(), 4, "{row}");
    }

    // Scale to three replicas while up: requests spread over the three pods.
    let dir = mesh.dir.join("manifests-edit");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["namespace.yaml", "nginx.yaml", "toolbox.yaml"] {
        let text = std::fs::read_to_string(example("sidecar").join(f)).unwrap();
        let text = if f == "nginx.yaml" {
            text.replace("replicas: 1", "replicas: 3")
        } else {
            text
        };
        std::fs::write(dir.join(f), text).unwrap();
    }
    mesh.ok(&[
        "up",
        "-f",
        dir.to_str().unwrap(),
        "-n",
        "sidecar",
        "--timeout",
        "90",
    ]);
    let nginx = mesh.pods("nginx-deployment");
    assert_eq!(nginx.len(), 3, "three nginx pods");
    let ips: Vec<String> = nginx
        .iter()
        .map(|p| p["ip"].as_str().unwrap().to_owned())
        .collect();
    wait_for(
        "three endpoints in the toolbox's sidecar",
        Duration::from_secs(10),
        || {
            let c = mesh.admin("deploy/toolbox", 15000, "/clusters");
            ips.iter().all(|ip| {
                c.contains(&format!(
                    "outbound|80||nginx.sidecar.svc.cluster.local::{ip}:80::health_flags::healthy"
                ))
            })
        },
    );
    for _ in 0..30 {
        assert_eq!(
            mesh.curl(&["-o", "/dev/null", "-w", "%{http_code}", "nginx"]),
            "200"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    for p in &nginx {
        let name = p["name"].as_str().unwrap();
        let hits = mesh
            .logs(name, "nginx")
            .lines()
            .filter(|l| l.contains("\"GET / HTTP/1.1\" 200"))
            .count();
        assert!(hits >= 3, "pod {name} served {hits} of 30 requests");
    }

    // One pod's app dies: its endpoint leaves the toolbox's sidecar and traffic keeps flowing.
    let victim = &nginx[1];
    let victim_ip = victim["ip"].as_str().unwrap().to_owned();
    let pid = victim["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "nginx")
        .unwrap()["pid"]
        .as_u64()
        .unwrap();
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    wait_for("the dead pod's endpoint to go", Duration::from_secs(8), || {
        !mesh
            .admin("deploy/toolbox", 15000, "/clusters")
            .contains(&format!("::{victim_ip}:80::"))
    });
    for _ in 0..20 {
        assert_eq!(
            mesh.curl(&["-o", "/dev/null", "-w", "%{http_code}", "nginx"]),
            "200"
        );
    }

    // `down` leaves nothing.
    let pids = all_pids(&mesh.state());
    mesh.ok(&["down"]);
    assert_gone(&mesh, &pids);
}

#[test]
fn sidecar_walkthrough_with_skiff_sidecars() {
    walkthrough("skiff");
}

#[test]
fn sidecar_walkthrough_with_envoy_sidecars() {
    walkthrough("envoy");
}

#[test]
fn bad_manifests_are_refused_with_the_field() {
    let mesh = Mesh::new("lm", "bad");
    let dir = mesh.dir.join("bad");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("svc.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: 70000}]\n",
    )
    .unwrap();
    let out = mesh.cmd(&["local", "up", "-f", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("svc.yaml") && err.contains("port"), "{err}");
    assert!(
        !mesh.dir.join(&mesh.name).join("state.json").exists(),
        "nothing is started for bad input"
    );
}

#[test]
fn down_cleans_up_after_the_supervisor_crashed() {
    let mesh = Mesh::new("lm", "crash");
    mesh.ok(&[
        "up",
        "-f",
        example("sidecar").to_str().unwrap(),
        "-n",
        "sidecar",
        "--timeout",
        "90",
    ]);
    let state = mesh.state();
    let pids = all_pids(&state);
    let supervisor = state["supervisor_pid"].as_u64().unwrap();
    let _ = Command::new("kill")
        .args(["-9", &supervisor.to_string()])
        .status();
    wait_for("the supervisor to die", Duration::from_secs(5), || {
        !running(supervisor)
    });
    let status = mesh.ok(&["status"]);
    assert!(status.contains("NOT running"), "{status}");
    // The pods' processes outlive their supervisor, as containers outlive a crashed kubelet…
    let alive = pids.iter().filter(|p| **p != supervisor && running(**p)).count();
    assert!(alive > 0, "pods should still run after a supervisor crash");
    // …and `down` removes them all from the state file and the namespaces.
    mesh.ok(&["down"]);
    assert_gone(&mesh, &pids);
}
