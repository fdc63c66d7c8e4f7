//! What `skiffctl local up|down|status|exec|logs` do. `up` validates the manifests, hands them to
//! the supervisor (starting it if needed) and waits until every pod is ready; the others read the
//! state file.

use std::io::{BufRead, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::kubelet::{self, Binaries};
use crate::state::{self, PodState, ProxyKind, State};

/// `skiffctl local up`.
#[derive(Clone, Debug)]
pub struct UpOptions {
    /// The mesh's name (prefix of its namespaces; several meshes can coexist).
    pub name: String,
    pub dir: PathBuf,
    /// Namespace for objects that name none (`kubectl apply -n`).
    pub namespace: String,
    pub proxy: ProxyKind,
    pub timeout: Duration,
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The supervisor of the mesh in `dir`, if it still runs.
fn live_supervisor(dir: &Path) -> Option<u32> {
    let st = state::load(dir).ok()?;
    let pid = st.supervisor_pid?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    (cmdline.contains("supervise") && cmdline.contains(&st.name)).then_some(pid)
}

/// Checks what the local mesh needs before touching anything.
pub fn preflight() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the local mesh needs root (it creates network namespaces and iptables rules): run with sudo");
    }
    for (tool, package) in [
        ("ip", "iproute2"),
        ("iptables-restore", "iptables"),
        ("setpriv", "util-linux"),
    ] {
        if kubelet::which(tool).is_none() {
            bail!("`{tool}` is missing: install {package} (apt-get install -y {package})");
        }
    }
    Ok(())
}

/// Brings the mesh up (or applies changed manifests to a running one); returns once every pod
/// is ready. `progress` gets one line per step.
pub fn up(opts: &UpOptions, progress: &mut dyn FnMut(&str)) -> Result<State> {
    preflight()?;
    let docs = crate::manifest::load(&opts.dir, &opts.namespace)?;
    let desired = crate::supervisor::desired(&docs)?;
    progress(&format!(
        "read {} objects from {} ({} workloads, {} services)",
        docs.len(),
        opts.dir.display(),
        desired.workloads.len(),
        desired.services.len()
    ));
    let dir = state::mesh_dir(&opts.name);
    let running = live_supervisor(&dir);
    if running.is_none() && dir.join("state.json").exists() {
        progress("cleaning up what a previous run left behind");
        cleanup(&opts.name, &dir);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let generation = std::fs::read_to_string(dir.join("generation"))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0)
        + 1;
    let target = dir.join(format!("manifests.{generation}"));
    let _ = std::fs::remove_dir_all(&target);
    std::fs::create_dir_all(&target)?;
    for f in crate::manifest::files(&opts.dir)? {
        if let Some(name) = f.file_name() {
            std::fs::copy(&f, target.join(name)).with_context(|| format!("copying {}", f.display()))?;
        }
    }
    if running.is_none() {
        let st = State::new(&opts.name, &opts.dir, &opts.namespace, opts.proxy);
        state::save(&dir, &st)?;
    }
    state::write_atomic(&dir.join("generation"), generation.to_string().as_bytes())?;
    if running.is_none() {
        let bins = Binaries::find()?;
        let log = std::fs::File::create(dir.join("supervisor.log"))?;
        let mut cmd = Command::new(&bins.skiffctl);
        cmd.args(["local", "supervise", "--name", &opts.name])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(d) = std::env::var_os("SKIFF_LOCAL_DIR") {
            cmd.env("SKIFF_LOCAL_DIR", d);
        }
        // SAFETY: setsid is async-signal-safe; the supervisor outlives this command.
        unsafe {
            cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(std::io::Error::from));
        }
        let child = cmd.spawn().context("starting the supervisor")?;
        progress(&format!(
            "started the mesh supervisor (pid {}); logs in {}",
            child.id(),
            dir.join("supervisor.log").display()
        ));
    } else {
        progress("the mesh is running: applying the changed manifests");
    }
    wait_ready(&opts.name, &dir, generation, opts.timeout, progress)
}

fn wait_ready(
    name: &str,
    dir: &Path,
    generation: u64,
    timeout: Duration,
    progress: &mut dyn FnMut(&str),
) -> Result<State> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut last = String::new();
    let mut said_converging = false;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let st = state::load(dir)?;
        // The supervisor records its pid once it starts; a missing or dead one is fatal.
        let supervisor_ok = match st.supervisor_pid {
            Some(pid) => pid_alive(pid),
            None => started.elapsed() < Duration::from_secs(10),
        };
        if !supervisor_ok {
            let log = std::fs::read_to_string(dir.join("supervisor.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            bail!(
                "the mesh supervisor stopped:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        if st.observed_generation >= generation && !st.errors.is_empty() {
            bail!(
                "the manifests were not applied (the previous state stays):\n{}",
                st.errors.join("\n")
            );
        }
        let ready = st.pods.iter().filter(|p| p.ready).count();
        let line = format!("{ready}/{} pods ready", st.pods.len());
        if line != last && st.observed_generation >= generation {
            progress(&line);
            last = line;
        }
        if st.observed_generation >= generation && !st.pods.is_empty() && ready == st.pods.len() {
            if st.converged {
                return Ok(st);
            }
            if !said_converging {
                progress("all pods ready; waiting for skiffd and the sidecars to hold every endpoint");
                said_converging = true;
            }
        }
        if Instant::now() > deadline {
            let waiting: Vec<String> = st
                .pods
                .iter()
                .filter(|p| !p.ready)
                .map(|p| {
                    let why: Vec<String> = p
                        .containers
                        .iter()
                        .filter(|c| !c.ready && !c.init)
                        .map(|c| {
                            format!(
                                "{} {}",
                                c.name,
                                c.last_state.clone().unwrap_or_else(|| "not ready".into())
                            )
                        })
                        .collect();
                    format!("  {} ({}): {}", p.key(), p.phase, why.join("; "))
                })
                .collect();
            bail!(
                "pods not ready after {}s:\n{}\n(see `skiffctl local logs --name {name} -n NS POD -c CONTAINER`)",
                timeout.as_secs(),
                waiting.join("\n")
            );
        }
    }
}

/// Kills what a mesh left (processes in its namespaces, the namespaces, their /etc/netns files).
fn cleanup(name: &str, dir: &Path) {
    let prefix = format!("{name}-");
    if let Ok(st) = state::load(dir) {
        let pids: Vec<i32> = st
            .pods
            .iter()
            .flat_map(|p| p.containers.iter().filter_map(|c| c.pid))
            .map(|p| p as i32)
            .collect();
        for pid in &pids {
            if crate::net::running(*pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while pids.iter().any(|p| crate::net::running(*p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // The one thing on the host: the ingress link (it also goes with the node namespace).
        if let Some(ingress) = &st.ingress {
            crate::net::delete_ingress_link(&ingress.host_veth);
        }
    }
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&prefix) {
                crate::net::delete_netns(&n);
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/etc/netns") {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// `skiffctl local down`: stops the supervisor (which tears down what it made), then removes
/// anything left, also after a crash. Idempotent.
pub fn down(name: &str, progress: &mut dyn FnMut(&str)) -> Result<()> {
    let dir = state::mesh_dir(name);
    if let Some(pid) = live_supervisor(&dir) {
        progress(&format!("stopping the mesh supervisor (pid {pid})"));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while pid_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if pid_alive(pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    cleanup(name, &dir);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    progress(&format!(
        "mesh {name:?} is down: no namespace, veth, rule or process of it is left"
    ));
    Ok(())
}

fn age(created: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(created);
    let s = now.saturating_sub(created);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

/// Left-aligned columns separated by three spaces, as kubectl prints tables.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == r.len() {
                    c.clone()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// `skiffctl local status`: pods and services, as `kubectl get po,svc -A -o wide` shows them.
pub fn status(name: &str) -> Result<String> {
    let dir = state::mesh_dir(name);
    let st = state::load(&dir)?;
    let running = live_supervisor(&dir).is_some();
    let mut out = format!(
        "mesh {:?} from {} — supervisor {}\n\n",
        st.name,
        st.source.display(),
        if running {
            "running"
        } else {
            "NOT running (run `skiffctl local down` to clean up)"
        }
    );
    let mut rows = vec![[
        "NAMESPACE",
        "NAME",
        "READY",
        "STATUS",
        "RESTARTS",
        "AGE",
        "IP",
        "SIDECAR",
    ]
    .map(String::from)
    .to_vec()];
    let mut pods: Vec<&PodState> = st.pods.iter().collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    for p in pods {
        rows.push(vec![
            p.namespace.clone(),
            p.name.clone(),
            p.ready_column(),
            p.phase.clone(),
            p.restarts().to_string(),
            age(p.created),
            p.ip.to_string(),
            p.sidecar
                .map(|k| format!("{k:?}").to_lowercase())
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    out.push_str(&table(&rows));
    out.push('\n');
    let mut rows = vec![["NAMESPACE", "NAME", "CLUSTER-IP", "PORT(S)"]
        .map(String::from)
        .to_vec()];
    for s in &st.services {
        rows.push(vec![
            s.namespace.clone(),
            s.name.clone(),
            s.vip.map(|v| v.to_string()).unwrap_or_else(|| "None".into()),
            s.ports.clone(),
        ]);
    }
    out.push_str(&table(&rows));
    if let Some(ingress) = &st.ingress {
        out.push_str(&format!(
            "\nINGRESS_HOST={}   (istio-system/istio-ingressgateway: 80/TCP, 443/TCP, 15021/TCP from this host)\n",
            ingress.address
        ));
    }
    for e in &st.errors {
        out.push_str(&format!("\nerror: {e}\n"));
    }
    Ok(out)
}

/// `skiffctl local ingress-host`: the ingress gateway's address on this host, as `minikube ip`
/// or the LoadBalancer's `EXTERNAL-IP` gives it in seed 004.
pub fn ingress_host(name: &str) -> Result<std::net::Ipv4Addr> {
    let st = state::load(&state::mesh_dir(name))?;
    st.ingress.map(|i| i.address).with_context(|| {
        format!(
            "mesh {name:?} has no ingress gateway: it starts with the first Gateway (networking.istio.io) in the manifests"
        )
    })
}

/// The container `logs`/`exec` mean when none is named: the first app container (Istio marks it
/// `kubectl.kubernetes.io/default-container`).
fn default_container(p: &PodState) -> Option<&str> {
    p.containers
        .iter()
        .find(|c| !c.init && c.name != "istio-proxy")
        .or_else(|| p.containers.iter().find(|c| !c.init))
        .map(|c| c.name.as_str())
}

/// `skiffctl local exec`: runs `command` inside the pod (its network namespace and resolv.conf,
/// the container's user), with this terminal's stdio; returns its exit code.
pub fn exec(
    name: &str,
    namespace: &str,
    target: &str,
    container: Option<&str>,
    command: &[String],
) -> Result<i32> {
    if command.is_empty() {
        bail!("no command: `skiffctl local exec -n NS POD -- CMD ARGS...`");
    }
    let st = state::load(&state::mesh_dir(name))?;
    let pod = st.find_pod(namespace, target)?;
    let c = container.or_else(|| default_container(pod)).unwrap_or_default();
    if !pod.containers.iter().any(|x| x.name == c) {
        bail!(
            "container {c:?} is not in pod {} (containers: {})",
            pod.key(),
            pod.containers
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &pod.netns]);
    if c == "istio-proxy" && pod.sidecar == Some(ProxyKind::Skiff) {
        cmd.args(["setpriv", "--reuid=1337", "--regid=1337", "--clear-groups", "--"]);
    }
    cmd.args(command)
        .env("HOSTNAME", &pod.name)
        .env("POD_NAME", &pod.name)
        .env("POD_NAMESPACE", &pod.namespace);
    let status = cmd.status().context("running ip netns exec")?;
    Ok(status.code().unwrap_or(128 + 9))
}

/// Like [`exec`], capturing the command's output instead of using this terminal.
pub fn exec_output(
    name: &str,
    namespace: &str,
    target: &str,
    command: &[&str],
) -> Result<std::process::Output> {
    let st = state::load(&state::mesh_dir(name))?;
    let pod = st.find_pod(namespace, target)?;
    Command::new("ip")
        .args(["netns", "exec", &pod.netns])
        .args(command)
        .env("HOSTNAME", &pod.name)
        .stdin(Stdio::null())
        .output()
        .context("running ip netns exec")
}

/// Path of a container's log (stdout and stderr, as the container runtime keeps them).
pub fn log_path(name: &str, namespace: &str, target: &str, container: Option<&str>) -> Result<PathBuf> {
    let dir = state::mesh_dir(name);
    let st = state::load(&dir)?;
    let pod = st.find_pod(namespace, target)?;
    let c = container.or_else(|| default_container(pod)).unwrap_or_default();
    if !pod.containers.iter().any(|x| x.name == c) {
        bail!(
            "container {c:?} is not in pod {} (containers: {})",
            pod.key(),
            pod.containers
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(dir
        .join("pods")
        .join(&pod.namespace)
        .join(&pod.name)
        .join(format!("{c}.log")))
}

/// A container's whole log as text.
pub fn logs_text(name: &str, namespace: &str, target: &str, container: Option<&str>) -> Result<String> {
    let path = log_path(name, namespace, target, container)?;
    std::fs::read_to_string(&path).with_context(|| format!("no log yet at {}", path.display()))
}

/// `skiffctl local logs`: prints the log (the last `tail` lines), following it with `follow`.
pub fn logs(
    name: &str,
    namespace: &str,
    target: &str,
    container: Option<&str>,
    tail: Option<usize>,
    follow: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let path = log_path(name, namespace, target, container)?;
    let mut file = std::fs::File::open(&path).with_context(|| format!("no log yet at {}", path.display()))?;
    let text = std::io::read_to_string(&mut file)?;
    let lines: Vec<&str> = text.lines().collect();
    let start = tail.map(|t| lines.len().saturating_sub(t)).unwrap_or(0);
    for l in &lines[start..] {
        writeln!(out, "{l}")?;
    }
    if follow {
        let mut pos = file.seek(SeekFrom::End(0))?;
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(pos);
            if len < pos {
                pos = 0;
            }
            if len > pos {
                let mut f = std::fs::File::open(&path)?;
                f.seek(SeekFrom::Start(pos))?;
                let mut reader = std::io::BufReader::new(f);
                let mut line = String::new();
                while reader.read_line(&mut line)? > 0 {
                    out.write_all(line.as_bytes())?;
                    line.clear();
                }
                out.flush()?;
                pos = len;
            }
        }
    }
    Ok(())
}
