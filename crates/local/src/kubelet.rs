//! A small kubelet: turns a pod spec (after injection) into processes in the pod's namespace.
//! Images are not pulled, so a container runs its `command`/`args` from the host; a container
//! with no command whose image is a well-known server runs the host's equivalent or
//! `skiff-agent demo-app` (said once in `up`'s output). Environment variables are resolved as
//! the kubelet does (`fieldRef`, `resourceFieldRef`, `$(VAR)`), `runAsUser`/`runAsGroup` are
//! honoured, and readiness probes are run from the node like the kubelet's.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde_json::Value;

/// Overrides the command of a pod's first app container (or `…/CONTAINER` for another one),
/// as a shell command line.
pub const LOCAL_COMMAND_ANNOTATION: &str = "skiff.dev/local-command";
/// `skiff` or `envoy`: which proxy this pod's sidecar runs.
pub const PROXY_ANNOTATION: &str = "skiff.dev/proxy";

/// Where Skiff's own binaries are (the one-image install has them side by side).
#[derive(Clone, Debug)]
pub struct Binaries {
    pub skiff_agent: PathBuf,
    pub skiffd: PathBuf,
    pub skiffctl: PathBuf,
}

impl Binaries {
    /// Next to the running executable first (a build's `target/` dir, `/usr/local/bin`), then
    /// `$PATH`.
    pub fn find() -> Result<Binaries> {
        let here = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_owned));
        let find = |name: &str| -> Result<PathBuf> {
            if let Some(dir) = &here {
                let p = dir.join(name);
                if p.is_file() {
                    return Ok(p);
                }
                // Test binaries live in target/debug/deps; the tools one level up.
                if let Some(up) = dir.parent() {
                    let p = up.join(name);
                    if p.is_file() {
                        return Ok(p);
                    }
                }
            }
            which(name).ok_or_else(|| {
                anyhow::anyhow!("{name} not found next to this program or on PATH (build the workspace)")
            })
        };
        Ok(Binaries {
            skiff_agent: find("skiff-agent")?,
            skiffd: find("skiffd")?,
            skiffctl: find("skiffctl")?,
        })
    }
}

/// Finds `name` on `$PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A readiness probe, already resolved to a port.
#[derive(Clone, Debug, PartialEq)]
pub enum Probe {
    Http { port: u16, path: String, https: bool },
    Tcp { port: u16 },
    Exec { command: Vec<String> },
}

/// How often and how strictly to probe.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeSpec {
    pub probe: Probe,
    pub initial_delay_ms: u64,
    pub period_ms: u64,
    pub failure_threshold: u32,
    pub success_threshold: u32,
    pub timeout_ms: u64,
}

/// One container, ready to start.
#[derive(Clone, Debug, PartialEq)]
pub struct Launch {
    pub container: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub uid: u32,
    pub gid: u32,
    pub workdir: Option<String>,
    /// Said once by `up`: what was substituted for an image.
    pub note: Option<String>,
    pub readiness: Option<ProbeSpec>,
    /// `lifecycle.postStart.exec`: run (in the pod) before the next container starts.
    pub post_start: Option<Vec<String>>,
    pub restart_always: bool,
}

/// What the kubelet knows about the pod while resolving a container.
pub struct PodContext<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub ip: Ipv4Addr,
    pub node_ip: Ipv4Addr,
    pub pod: &'a Value,
    /// Directory for generated files (nginx.conf, Envoy bootstrap).
    pub dir: &'a Path,
    pub bins: &'a Binaries,
    /// ConfigMaps and Secrets of the manifests: `namespace/name` → data.
    pub config: &'a BTreeMap<String, BTreeMap<String, String>>,
}

fn str_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().map(str::to_owned).unwrap_or_else(|| x.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// `$(VAR)` expansion as Kubernetes does it: known variables replaced, `$$` escapes, unknown
/// references left as they are.
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let name = &body[..end];
                    match env.iter().rev().find(|(k, _)| k == name) {
                        Some((_, v)) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn cpu_cores(q: &str) -> Option<u64> {
    if let Some(m) = q.strip_suffix('m') {
        let milli: u64 = m.parse().ok()?;
        return Some(milli.div_ceil(1000).max(1));
    }
    q.parse::<f64>().ok().map(|f| (f.ceil() as u64).max(1))
}

fn memory_bytes(q: &str) -> Option<u64> {
    const SUFFIXES: &[(&str, u64)] = &[
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (s, m) in SUFFIXES {
        if let Some(n) = q.strip_suffix(s) {
            return n.parse::<u64>().ok().map(|n| n * m);
        }
    }
    q.parse().ok()
}

fn field_ref(path: &str, ctx: &PodContext<'_>) -> Result<String> {
    let meta = |k: &str| ctx.pod.pointer(&format!("/metadata/{k}"));
    let bracket = |prefix: &str| -> Option<String> {
        let key = path
            .strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")?;
        Some(key.to_owned())
    };
    Ok(match path {
        "metadata.name" => ctx.name.to_owned(),
        "metadata.namespace" => ctx.namespace.to_owned(),
        "metadata.uid" => format!("local-{}-{}", ctx.namespace, ctx.name),
        "spec.nodeName" => "local".to_owned(),
        "spec.serviceAccountName" => ctx
            .pod
            .pointer("/spec/serviceAccountName")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_owned(),
        "status.podIP" | "status.podIPs" => ctx.ip.to_string(),
        "status.hostIP" | "status.hostIPs" => ctx.node_ip.to_string(),
        p if p.starts_with("metadata.labels") => {
            let key = bracket("metadata.labels").unwrap_or_default();
            meta("labels")
                .and_then(|l| l.get(&key))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        }
        p if p.starts_with("metadata.annotations") => {
            let key = bracket("metadata.annotations").unwrap_or_default();
            meta("annotations")
                .and_then(|l| l.get(&key))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        }
        other => bail!("fieldRef.fieldPath {other:?} is not supported"),
    })
}

fn resource_ref(container: &Value, r: &Value) -> Result<String> {
    let res = r.get("resource").and_then(Value::as_str).unwrap_or_default();
    let (section, what) = res.split_once('.').unwrap_or(("", res));
    let value = container
        .pointer(&format!("/resources/{section}/{what}"))
        .and_then(Value::as_str);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1);
    Ok(match (what, value) {
        ("cpu", Some(q)) => cpu_cores(q).unwrap_or(cpus).to_string(),
        // No limit: the node's allocatable, as the kubelet reports it.
        ("cpu", None) => cpus.to_string(),
        ("memory", Some(q)) => memory_bytes(q).unwrap_or(0).to_string(),
        ("memory", None) => (8u64 << 30).to_string(),
        ("ephemeral-storage", _) => "0".to_owned(),
        _ => bail!("resourceFieldRef.resource {res:?} is not supported"),
    })
}

/// The container's environment, as the kubelet builds it.
pub fn environment(container: &Value, ctx: &PodContext<'_>) -> Result<Vec<(String, String)>> {
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            std::env::var("PATH")
                .unwrap_or_else(|_| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()),
        ),
        ("HOSTNAME".into(), ctx.name.to_owned()),
        ("HOME".into(), "/root".into()),
        ("KUBERNETES_SERVICE_HOST".into(), "198.19.0.1".into()),
        ("KUBERNETES_SERVICE_PORT".into(), "443".into()),
    ];
    let cname = container.get("name").and_then(Value::as_str).unwrap_or_default();
    for (i, e) in container
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let field = format!("containers[{cname}].env[{i}]");
        let Some(name) = e.get("name").and_then(Value::as_str) else {
            bail!("{field}.name: is required")
        };
        let value = if let Some(v) = e.get("value") {
            expand(v.as_str().unwrap_or_default(), &env)
        } else if let Some(from) = e.get("valueFrom") {
            if let Some(f) = from.get("fieldRef") {
                let path = f.get("fieldPath").and_then(Value::as_str).unwrap_or_default();
                field_ref(path, ctx).map_err(|err| anyhow::anyhow!("{field}.valueFrom: {err}"))?
            } else if let Some(r) = from.get("resourceFieldRef") {
                resource_ref(container, r).map_err(|err| anyhow::anyhow!("{field}.valueFrom: {err}"))?
            } else if let Some((kind, r)) = from
                .get("configMapKeyRef")
                .map(|r| ("ConfigMap", r))
                .or_else(|| from.get("secretKeyRef").map(|r| ("Secret", r)))
            {
                let obj = r.get("name").and_then(Value::as_str).unwrap_or_default();
                let key = r.get("key").and_then(Value::as_str).unwrap_or_default();
                let optional = r.get("optional").and_then(Value::as_bool).unwrap_or(false);
                match ctx
                    .config
                    .get(&format!("{kind}:{}/{obj}", ctx.namespace))
                    .and_then(|d| d.get(key))
                {
                    Some(v) => v.clone(),
                    None if optional => continue,
                    None => bail!(
                        "{field}.valueFrom: {kind} {}/{obj} has no key {key:?}",
                        ctx.namespace
                    ),
                }
            } else {
                bail!(
                    "{field}.valueFrom: expected fieldRef, resourceFieldRef, configMapKeyRef or secretKeyRef"
                )
            }
        } else {
            String::new()
        };
        env.retain(|(k, _)| k != name);
        env.push((name.to_owned(), value));
    }
    Ok(env)
}

/// The last path segment of an image without registry or tag: `docker.io/kong/httpbin:0.1` →
/// `httpbin`.
pub fn image_base(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    last.split(':').next().unwrap_or(last)
}

fn container_ports(c: &Value) -> Vec<u16> {
    c.get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|p| p.get("protocol").and_then(Value::as_str).unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            p.get("containerPort")
                .and_then(Value::as_u64)
                .and_then(|n| u16::try_from(n).ok())
        })
        .collect()
}

/// The nginx image's server, run by the host's nginx: the image's log format (so the
/// `127.0.0.6` source shows), its listen ports, the default page.
fn nginx_conf(ports: &[u16], dir: &Path) -> String {
    let root = ["/usr/share/nginx/html", "/var/www/html"]
        .into_iter()
        .find(|d| Path::new(d).is_dir())
        .unwrap_or("/var/www/html");
    let listens: String = ports.iter().map(|p| format!("        listen {p};\n")).collect();
    format!(
        "daemon off;\nworker_processes 1;\npid {pid};\nerror_log stderr notice;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n    include /etc/nginx/mime.types;\n    default_type application/octet-stream;\n\
         \x20   log_format main '$remote_addr - $remote_user [$time_local] \"$request\" '\n\
         \x20                   '$status $body_bytes_sent \"$http_referer\" '\n\
         \x20                   '\"$http_user_agent\" \"$http_x_forwarded_for\"';\n\
         \x20   access_log /dev/stdout main;\n    sendfile on;\n    keepalive_timeout 65;\n\
         \x20   client_body_temp_path {tmp}/body;\n    proxy_temp_path {tmp}/proxy;\n\
         \x20   fastcgi_temp_path {tmp}/fastcgi;\n    uwsgi_temp_path {tmp}/uwsgi;\n    scgi_temp_path {tmp}/scgi;\n\
         \x20   server {{\n{listens}        server_name localhost;\n        root {root};\n\
         \x20       index index.html index.htm index.nginx-debian.html;\n    }}\n}}\n",
        pid = dir.join("nginx.pid").display(),
        tmp = dir.display(),
    )
}

fn is_skiff_image(image: &str) -> bool {
    matches!(image_base(image), "skiff" | "proxyv2" | "pilot")
}

/// What runs for `container` and why.
fn command(
    container: &Value,
    ctx: &PodContext<'_>,
    env: &[(String, String)],
    first_app: bool,
) -> Result<(Vec<String>, Option<String>)> {
    let name = container.get("name").and_then(Value::as_str).unwrap_or_default();
    let image = container.get("image").and_then(Value::as_str).unwrap_or_default();
    let annotations = ctx.pod.pointer("/metadata/annotations");
    let override_cmd = annotations
        .and_then(|a| a.get(format!("{LOCAL_COMMAND_ANNOTATION}.{name}")))
        .or_else(|| {
            if first_app {
                annotations.and_then(|a| a.get(LOCAL_COMMAND_ANNOTATION))
            } else {
                None
            }
        })
        .and_then(Value::as_str);
    if let Some(cmd) = override_cmd {
        return Ok((
            vec!["/bin/sh".into(), "-c".into(), cmd.to_owned()],
            Some(format!("{name}: runs `{cmd}` ({LOCAL_COMMAND_ANNOTATION})")),
        ));
    }
    let cmd: Vec<String> = str_list(container.get("command"))
        .iter()
        .map(|s| expand(s, env))
        .collect();
    let args: Vec<String> = str_list(container.get("args"))
        .iter()
        .map(|s| expand(s, env))
        .collect();
    if is_skiff_image(image) {
        // One image carries every Skiff binary; its entrypoint is skiff-agent.
        let bin = |n: &str| match n.rsplit('/').next().unwrap_or(n) {
            "skiffd" => Some(ctx.bins.skiffd.display().to_string()),
            "skiff-agent" | "pilot-agent" => Some(ctx.bins.skiff_agent.display().to_string()),
            "skiffctl" => Some(ctx.bins.skiffctl.display().to_string()),
            _ => None,
        };
        let mut argv = match cmd.first() {
            Some(c) => {
                let mut v = vec![bin(c).unwrap_or_else(|| c.clone())];
                v.extend(cmd[1..].iter().cloned());
                v
            }
            None => vec![ctx.bins.skiff_agent.display().to_string()],
        };
        argv.extend(args);
        return Ok((argv, None));
    }
    if !cmd.is_empty() {
        let mut argv = cmd;
        argv.extend(args);
        return Ok((argv, None));
    }
    let ports = container_ports(container);
    let base = image_base(image);
    if base == "nginx" || base == "nginx-unprivileged" {
        if let Some(nginx) =
            which("nginx").or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.is_file()))
        {
            let ports = if ports.is_empty() { vec![80] } else { ports };
            let conf = ctx.dir.join(format!("nginx-{name}.conf"));
            std::fs::create_dir_all(ctx.dir)?;
            std::fs::write(&conf, nginx_conf(&ports, ctx.dir))?;
            return Ok((
                vec![
                    nginx.display().to_string(),
                    "-c".into(),
                    conf.display().to_string(),
                    "-e".into(),
                    "stderr".into(),
                ],
                Some(format!(
                    "{name}: image {image} runs the host's nginx ({})",
                    nginx.display()
                )),
            ));
        }
    }
    if !args.is_empty() && !matches!(base, "httpd" | "nginx" | "python" | "httpbin" | "go-httpbin") {
        // An image whose entrypoint takes the args (busybox, curl): run them.
        return Ok((args, None));
    }
    let ports = if ports.is_empty() { vec![80] } else { ports };
    let labels = ctx.pod.pointer("/metadata/labels");
    let version = labels
        .and_then(|l| l.get("version"))
        .and_then(Value::as_str)
        .unwrap_or("v1");
    let mut argv = vec![ctx.bins.skiff_agent.display().to_string(), "demo-app".into()];
    for p in &ports {
        argv.push("--port".into());
        argv.push(p.to_string());
    }
    argv.extend([
        "--name".into(),
        ctx.name.to_owned(),
        "--version".into(),
        version.to_owned(),
    ]);
    let note = format!(
        "{name}: image {image} runs `skiff-agent demo-app` on port {}",
        ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
    );
    Ok((argv, Some(note)))
}

fn port_of(v: Option<&Value>, container: &Value) -> Result<u16> {
    match v {
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .ok_or_else(|| anyhow::anyhow!("port {n} is out of range")),
        Some(Value::String(s)) => container
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|p| p.get("name").and_then(Value::as_str) == Some(s))
            .and_then(|p| p.get("containerPort").and_then(Value::as_u64))
            .and_then(|n| u16::try_from(n).ok())
            .ok_or_else(|| anyhow::anyhow!("named port {s:?} is not a port of the container")),
        _ => bail!("port is required"),
    }
}

/// The readiness probe. Periods are capped at one second: a local mesh answers quickly and `up`
/// should not wait a production-sized period.
pub fn readiness(container: &Value) -> Result<Option<ProbeSpec>> {
    let Some(p) = container.get("readinessProbe") else {
        return Ok(None);
    };
    let n = |k: &str, d: u64| p.get(k).and_then(Value::as_u64).unwrap_or(d);
    let probe = if let Some(h) = p.get("httpGet") {
        Probe::Http {
            port: port_of(h.get("port"), container)?,
            path: h.get("path").and_then(Value::as_str).unwrap_or("/").to_owned(),
            https: h.get("scheme").and_then(Value::as_str) == Some("HTTPS"),
        }
    } else if let Some(t) = p.get("tcpSocket") {
        Probe::Tcp {
            port: port_of(t.get("port"), container)?,
        }
    } else if let Some(e) = p.get("exec") {
        Probe::Exec {
            command: str_list(e.get("command")),
        }
    } else {
        bail!("readinessProbe: expected httpGet, tcpSocket or exec");
    };
    Ok(Some(ProbeSpec {
        probe,
        initial_delay_ms: n("initialDelaySeconds", 0).min(1) * 1000,
        period_ms: n("periodSeconds", 10).clamp(1, 1) * 1000,
        failure_threshold: n("failureThreshold", 3).max(1) as u32,
        success_threshold: n("successThreshold", 1).max(1) as u32,
        timeout_ms: n("timeoutSeconds", 1).max(1) * 1000,
    }))
}

/// Resolves every container of the pod (init containers first).
pub fn plan(ctx: &PodContext<'_>) -> Result<(Vec<Launch>, Vec<Launch>)> {
    let spec = ctx.pod.get("spec").cloned().unwrap_or(Value::Null);
    let pod_sc = spec.get("securityContext");
    let restart_always = spec
        .get("restartPolicy")
        .and_then(Value::as_str)
        .unwrap_or("Always")
        == "Always";
    let mut first_app = true;
    let mut one = |c: &Value, init: bool| -> Result<Launch> {
        let name = c
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let env = environment(c, ctx)?;
        let is_app = !init && name != inject_proxy_container();
        let (argv, note) = command(c, ctx, &env, is_app && first_app)?;
        if is_app {
            first_app = false;
        }
        let sc = |k: &str| {
            c.pointer(&format!("/securityContext/{k}"))
                .or_else(|| pod_sc.and_then(|s| s.get(k)))
                .and_then(Value::as_u64)
        };
        let uid = sc("runAsUser").unwrap_or(0) as u32;
        let gid = sc("runAsGroup").unwrap_or(u64::from(uid)) as u32;
        let post_start = c
            .pointer("/lifecycle/postStart/exec/command")
            .map(|v| str_list(Some(v)));
        Ok(Launch {
            container: name,
            argv,
            env,
            uid,
            gid,
            workdir: c.get("workingDir").and_then(Value::as_str).map(str::to_owned),
            note,
            readiness: if init {
                None
            } else {
                readiness(c).map_err(|e| anyhow::anyhow!("container {}: {e}", c["name"]))?
            },
            post_start,
            restart_always: restart_always && !init,
        })
    };
    let mut inits = Vec::new();
    for c in spec
        .get("initContainers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        inits.push(one(c, true)?);
    }
    let mut apps = Vec::new();
    for c in spec
        .get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        apps.push(one(c, false)?);
    }
    if apps.is_empty() {
        bail!("spec.containers: a pod needs at least one container");
    }
    Ok((inits, apps))
}

fn inject_proxy_container() -> &'static str {
    "istio-proxy"
}

/// The command line that starts `launch` inside `netns`: `ip netns exec` (which also mounts
/// `/etc/netns/<netns>/*` over `/etc`, giving the pod its resolv.conf), then `setpriv` for a
/// non-root user.
pub fn command_line(netns: &str, launch: &Launch) -> Vec<String> {
    let mut v = vec!["ip".to_owned(), "netns".into(), "exec".into(), netns.to_owned()];
    if launch.uid != 0 || launch.gid != 0 {
        v.extend([
            "setpriv".into(),
            format!("--reuid={}", launch.uid),
            format!("--regid={}", launch.gid),
            "--clear-groups".into(),
            "--".into(),
        ]);
    }
    v.extend(launch.argv.iter().cloned());
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bins() -> Binaries {
        Binaries {
            skiff_agent: "/b/skiff-agent".into(),
            skiffd: "/b/skiffd".into(),
            skiffctl: "/b/skiffctl".into(),
        }
    }

    fn ctx<'a>(
        pod: &'a Value,
        bins: &'a Binaries,
        config: &'a BTreeMap<String, BTreeMap<String, String>>,
    ) -> PodContext<'a> {
        PodContext {
            name: "web-7fc7f5758-46mzh",
            namespace: "sidecar",
            ip: Ipv4Addr::new(198, 18, 0, 12),
            node_ip: Ipv4Addr::new(169, 254, 1, 1),
            pod,
            dir: Path::new("/tmp/skiff-kubelet-test"),
            bins,
            config,
        }
    }

    #[test]
    fn expands_like_kubernetes() {
        let env = vec![("A".to_owned(), "x".to_owned())];
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &env), "x-$(B)-$(A)-$");
        assert_eq!(expand("--domain $(A).svc", &env), "--domain x.svc");
    }

    #[test]
    fn resolves_env_from_fields_and_resources() {
        let pod = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": []}});
        let c = json!({"name": "c", "resources": {"limits": {"cpu": "1500m", "memory": "1Gi"}}, "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}},
            {"name": "D", "value": "$(POD_NAME).$(APP)"}]});
        let b = bins();
        let cfg = BTreeMap::new();
        let env = environment(&c, &ctx(&pod, &b, &cfg)).unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("POD_NAME"), Some("web-7fc7f5758-46mzh"));
        assert_eq!(get("IP"), Some("198.18.0.12"));
        assert_eq!(get("APP"), Some("web"));
        assert_eq!(get("CPU"), Some("2"));
        assert_eq!(get("MEM"), Some("1073741824"));
        assert_eq!(get("D"), Some("web-7fc7f5758-46mzh.web"));
        let bad = json!({"name": "c", "env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.bogus"}}}]});
        let e = environment(&bad, &ctx(&pod, &b, &cfg)).unwrap_err().to_string();
        assert!(
            e.contains("containers[c].env[0]") && e.contains("spec.bogus"),
            "{e}"
        );
    }

    #[test]
    fn images_become_commands() {
        let b = bins();
        let cfg = BTreeMap::new();
        let pod = json!({"metadata": {"labels": {"version": "v2"}}, "spec": {
            "initContainers": [{"name": "istio-init", "image": "docker.io/skiff/skiff:0.1.0", "args": ["iptables", "-p", "15001"]}],
            "containers": [
                {"name": "toolbox", "image": "centos:7.9.2009", "command": ["tail", "-f", "/dev/null"]},
                {"name": "httpbin", "image": "docker.io/kong/httpbin", "ports": [{"containerPort": 8080}]},
                {"name": "istio-proxy", "image": "docker.io/skiff/skiff:0.1.0", "args": ["proxy", "sidecar"],
                 "securityContext": {"runAsUser": 1337, "runAsGroup": 1337},
                 "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}, "periodSeconds": 15, "initialDelaySeconds": 1}}]}});
        let (inits, apps) = plan(&ctx(&pod, &b, &cfg)).unwrap();
        assert_eq!(inits[0].argv, ["/b/skiff-agent", "iptables", "-p", "15001"]);
        assert_eq!(apps[0].argv, ["tail", "-f", "/dev/null"]);
        assert_eq!(
            apps[1].argv,
            [
                "/b/skiff-agent",
                "demo-app",
                "--port",
                "8080",
                "--name",
                "web-7fc7f5758-46mzh",
                "--version",
                "v2"
            ]
        );
        assert!(apps[1].note.as_deref().unwrap().contains("demo-app"));
        assert_eq!((apps[2].uid, apps[2].gid), (1337, 1337));
        let r = apps[2].readiness.as_ref().unwrap();
        assert_eq!(
            r.probe,
            Probe::Http {
                port: 15021,
                path: "/healthz/ready".into(),
                https: false
            }
        );
        assert_eq!(r.period_ms, 1000);
        assert_eq!(
            command_line("m-pod", &apps[2])[..9],
            [
                "ip",
                "netns",
                "exec",
                "m-pod",
                "setpriv",
                "--reuid=1337",
                "--regid=1337",
                "--clear-groups",
                "--"
            ]
        );
    }

    #[test]
    fn annotation_overrides_the_command() {
        let b = bins();
        let cfg = BTreeMap::new();
        let pod = json!({"metadata": {"annotations": {"skiff.dev/local-command": "python3 -m http.server 80"}},
            "spec": {"containers": [{"name": "web", "image": "python:3"}]}});
        let (_, apps) = plan(&ctx(&pod, &b, &cfg)).unwrap();
        assert_eq!(apps[0].argv, ["/bin/sh", "-c", "python3 -m http.server 80"]);
    }

    #[test]
    fn image_names() {
        assert_eq!(image_base("docker.io/kong/httpbin:0.1.0"), "httpbin");
        assert_eq!(image_base("nginx:1.25.3"), "nginx");
        assert_eq!(image_base("localhost:5000/app@sha256:abc"), "app");
    }
}
