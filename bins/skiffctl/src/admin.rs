//! Reaching a proxy's admin port (and the control plane's monitoring port) the way istioctl
//! does, from wherever the pod lives: [`AdminSource`] with a local-mesh implementation (the pod
//! is a network namespace; this process enters it on a thread and talks HTTP/1.1 to
//! 127.0.0.1:15000) and, behind the `kubernetes` feature, a Kubernetes one (a port-forward
//! through the API server, as `istioctl` and `kubectl port-forward` do).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

#[cfg(feature = "kubernetes")]
pub mod kube;

/// A pod as istioctl's commands name it: `[<type>/]<name>[.<namespace>]` plus `-n`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    /// `name`, or `deploy/name` / `deployment/name` (its first pod).
    pub name: String,
    /// From `.namespace` or `-n`; `None` means the default (the kubeconfig's, or the local
    /// mesh's `up -n`).
    pub namespace: Option<String>,
}

impl PodRef {
    /// istioctl's rule: the namespace is what follows the last `.` (after any `type/`), else `-n`.
    pub fn parse(arg: &str, namespace: Option<&str>) -> PodRef {
        let search_from = arg.rfind('/').filter(|i| *i > 0).unwrap_or(0);
        match arg[search_from..].rfind('.') {
            Some(dot) => PodRef {
                name: arg[..search_from + dot].to_owned(),
                namespace: Some(arg[search_from + dot + 1..].to_owned()),
            },
            None => PodRef {
                name: arg.to_owned(),
                namespace: namespace.map(str::to_owned),
            },
        }
    }

    /// The Deployment named by `deploy/NAME`, if that is the form used.
    pub fn deployment(&self) -> Option<&str> {
        ["deploy/", "deployment/", "deployments/", "deployments.apps/"]
            .iter()
            .find_map(|p| self.name.strip_prefix(p))
    }

    /// The plain pod name (`pod/NAME` and `po/NAME` are accepted as kubectl does).
    pub fn pod_name(&self) -> &str {
        ["pod/", "pods/", "po/"]
            .iter()
            .find_map(|p| self.name.strip_prefix(p))
            .unwrap_or(&self.name)
    }

    pub fn namespace_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.namespace.as_deref().unwrap_or(default)
    }
}

/// Something that can send admin requests to a pod's proxy.
pub trait AdminSource {
    /// `GET path` (path and query) on the pod's proxy admin port; the body of a 2xx answer.
    fn get(&self, pod: &PodRef, path: &str) -> Result<String>;
    /// `POST path`, for `/logging`.
    fn post(&self, pod: &PodRef, path: &str) -> Result<String>;
    /// The pod's name and namespace (a `deploy/NAME` resolved), for output such as `log`'s header.
    fn resolve(&self, pod: &PodRef) -> Result<(String, String)>;
}

// === local mesh ===

/// A pod of the local mesh: where its network namespace is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalPod {
    /// `/run/netns/<name>` (or any namespace file).
    pub netns: PathBuf,
    pub name: String,
    pub namespace: String,
}

/// How to find local pods: the mesh's state file, unless `--netns` names the namespace.
#[derive(Clone, Debug, Default)]
pub struct LocalFlags {
    /// `--mesh`: which local mesh (`skiffctl local up --name`).
    pub mesh: String,
    /// `--netns NAME`: the pod's network namespace, bypassing the state file (a pod not made by
    /// `skiffctl local`, e.g. a test's).
    pub netns: Option<String>,
}

fn netns_path(name: &str) -> PathBuf {
    if name.contains('/') {
        PathBuf::from(name)
    } else {
        PathBuf::from("/run/netns").join(name)
    }
}

fn load_mesh(mesh: &str) -> Result<local::state::State> {
    local::state::load(&local::state::mesh_dir(mesh)).with_context(|| {
        format!("cannot read local mesh {mesh:?} (or pass --netns NAME, or --file with a saved dump)")
    })
}

/// The one place a local-mesh pod is looked up: `POD`, `POD.NS` or `deploy/NAME[.NS]` (the
/// Deployment's first ready pod) → its network namespace, from the state file `skiffctl local`
/// keeps; `--netns` names the namespace directly instead.
pub fn lookup_local_pod(pod: &PodRef, flags: &LocalFlags) -> Result<LocalPod> {
    if let Some(ns) = &flags.netns {
        return Ok(LocalPod {
            netns: netns_path(ns),
            name: pod.pod_name().to_owned(),
            namespace: pod.namespace_or("default").to_owned(),
        });
    }
    let state = load_mesh(&flags.mesh)?;
    let namespace = pod.namespace_or(&state.default_namespace).to_owned();
    // The state file resolves `deploy/NAME` to the Deployment's first ready pod.
    let target = match pod.deployment() {
        Some(d) => format!("deploy/{d}"),
        None => pod.pod_name().to_owned(),
    };
    let p = state.find_pod(&namespace, &target)?;
    if p.sidecar.is_none() {
        bail!("pod {}.{} has no sidecar proxy", p.name, p.namespace);
    }
    Ok(LocalPod {
        netns: netns_path(&p.netns),
        name: p.name.clone(),
        namespace: p.namespace.clone(),
    })
}

/// Where `proxy-status` asks: the control plane's monitoring address, the namespace to reach
/// it from (the host's when `None`), and the name for the ISTIOD column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlPlane {
    pub addr: SocketAddr,
    pub netns: Option<PathBuf>,
    pub name: String,
}

/// The one place the local control plane is looked up: `--skiffd ADDR` (from this host, or from
/// `--skiffd-netns`), else the mesh's `istiod` pod (skiffd) from the state file, else skiffd on
/// this host's 127.0.0.1:15014.
pub fn lookup_control_plane(mesh: &str, skiffd: Option<SocketAddr>, netns: Option<&str>) -> ControlPlane {
    if let Some(addr) = skiffd {
        return ControlPlane {
            addr,
            netns: netns.map(netns_path),
            name: "skiffd".into(),
        };
    }
    let istiod = load_mesh(mesh).ok().and_then(|st| {
        st.pods
            .iter()
            .find(|p| p.system && p.owner.as_deref() == Some("istiod"))
            .map(|p| (netns_path(&p.netns), p.name.clone()))
    });
    match istiod {
        Some((ns, name)) => ControlPlane {
            addr: SocketAddr::from(([127, 0, 0, 1], 15014)),
            netns: Some(ns),
            name,
        },
        None => ControlPlane {
            addr: SocketAddr::from(([127, 0, 0, 1], 15014)),
            netns: netns.map(netns_path),
            name: "skiffd".into(),
        },
    }
}

/// Proxies of the local mesh: each request enters the pod's namespace.
pub struct LocalMesh {
    pub flags: LocalFlags,
    pub admin_port: u16,
}

impl LocalMesh {
    fn request(&self, pod: &PodRef, method: &str, path: &str) -> Result<String> {
        let p = lookup_local_pod(pod, &self.flags)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.admin_port));
        http_in_netns(Some(&p.netns), addr, method, path).with_context(|| {
            format!(
                "failed to execute command on {}.{} sidecar (admin {addr} in {}; is its proxy running?)",
                p.name,
                p.namespace,
                p.netns.display()
            )
        })
    }
}

impl AdminSource for LocalMesh {
    fn get(&self, pod: &PodRef, path: &str) -> Result<String> {
        self.request(pod, "GET", path)
    }

    fn post(&self, pod: &PodRef, path: &str) -> Result<String> {
        self.request(pod, "POST", path)
    }

    fn resolve(&self, pod: &PodRef) -> Result<(String, String)> {
        let p = lookup_local_pod(pod, &self.flags)?;
        Ok((p.name, p.namespace))
    }
}

/// An HTTP/1.1 request to `addr`, from inside the network namespace `netns` (entered on a
/// thread of its own, so the rest of the process stays where it is). Needs CAP_SYS_ADMIN to
/// enter a namespace.
pub fn http_in_netns(
    netns: Option<&std::path::Path>,
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> Result<String> {
    let netns = netns.map(|p| p.to_owned());
    let (method, path) = (method.to_owned(), path.to_owned());
    std::thread::spawn(move || -> Result<String> {
        if let Some(ns) = &netns {
            let file = std::fs::File::open(ns).with_context(|| {
                format!(
                    "cannot open network namespace {} (is the pod running?)",
                    ns.display()
                )
            })?;
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("cannot enter network namespace {} (needs root)", ns.display()))?;
        }
        http_request(addr, &method, &path)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the admin request thread panicked"))?
}

/// The bytes of a minimal HTTP/1.1 request (what istioctl's port-forwarded client sends).
pub fn request_bytes(method: &str, host: &str, path: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: skiffctl\r\nAccept: */*\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

/// Sends one request over a fresh connection and returns the body of a 2xx answer.
pub fn http_request(addr: SocketAddr, method: &str, path: &str) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("cannot connect to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(&request_bytes(method, &addr.to_string(), path))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("reading the answer of {addr}{path}"))?;
    let (status, body) = parse_response(&raw).with_context(|| format!("answer of {addr}{path}"))?;
    if !(200..300).contains(&status) {
        bail!("{method} {path} on {addr} answered {status}: {}", body.trim());
    }
    Ok(body)
}

/// Splits an HTTP/1.1 response into status and body (chunked or not).
pub fn parse_response(raw: &[u8]) -> Result<(u16, String)> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers in the HTTP answer")?;
    let head = std::str::from_utf8(&raw[..head_end]).context("HTTP headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .context("no HTTP status line")?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding") && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = &raw[head_end + 4..];
    let body = if chunked { dechunk(body)? } else { body.to_vec() };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Whether `raw` holds a whole HTTP response (by Content-Length or the last chunk), so a
/// port-forwarded stream can be read without waiting for the far end to close it.
#[cfg_attr(not(feature = "kubernetes"), allow(dead_code))]
pub fn response_complete(raw: &[u8]) -> bool {
    let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let body = &raw[head_end + 4..];
    let header = |name: &str| {
        head.split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_owned())
    };
    if header("transfer-encoding").as_deref() == Some("chunked") {
        return dechunk(body).is_ok();
    }
    match header("content-length").and_then(|l| l.parse::<usize>().ok()) {
        Some(len) => body.len() >= len,
        None => false,
    }
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("truncated chunked body")?;
        let size_text = std::str::from_utf8(&b[..line_end]).context("bad chunk size")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size {
            bail!("truncated chunk: {} of {size} bytes", b.len());
        }
        out.extend_from_slice(&b[..size]);
        b = b.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn pod_refs_as_istioctl_reads_them() {
        let p = PodRef::parse("toolbox-97948fc8-ptlct", Some("sidecar"));
        assert_eq!(
            (p.name.as_str(), p.namespace_or("x")),
            ("toolbox-97948fc8-ptlct", "sidecar")
        );
        let p = PodRef::parse("toolbox-97948fc8-ptlct.sidecar", None);
        assert_eq!(
            (p.name.as_str(), p.namespace_or("x")),
            ("toolbox-97948fc8-ptlct", "sidecar")
        );
        let p = PodRef::parse("deploy/nginx-deployment.sidecar", Some("x"));
        assert_eq!(
            (p.deployment(), p.namespace_or("y")),
            (Some("nginx-deployment"), "sidecar")
        );
        let p = PodRef::parse("deployments.apps/nginx", None);
        assert_eq!(
            (p.deployment(), p.namespace_or("default")),
            (Some("nginx"), "default")
        );
        assert_eq!(PodRef::parse("pod/a", None).pod_name(), "a");
    }

    #[test]
    fn local_lookup() {
        let missing = LocalFlags {
            mesh: format!("no-such-mesh-{}", std::process::id()),
            netns: None,
        };
        let e = format!(
            "{:#}",
            lookup_local_pod(&PodRef::parse("deploy/nginx", None), &missing).unwrap_err()
        );
        assert!(e.contains("no-such-mesh") && e.contains("--netns"), "{e}");
        let got = lookup_local_pod(
            &PodRef::parse("nginx.sidecar", None),
            &LocalFlags {
                mesh: "skiff".into(),
                netns: Some("skt-nginx".into()),
            },
        )
        .unwrap();
        assert_eq!(got.netns, PathBuf::from("/run/netns/skt-nginx"));
        assert_eq!((got.name.as_str(), got.namespace.as_str()), ("nginx", "sidecar"));
        let cp = lookup_control_plane(&missing.mesh, None, None);
        assert_eq!(
            (cp.addr.port(), cp.name.as_str(), cp.netns),
            (15014, "skiffd", None)
        );
    }

    #[test]
    fn responses_plain_and_chunked() {
        let (s, b) = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").unwrap();
        assert_eq!((s, b.as_str()), (200, "ok"));
        let (s, b) = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((s, b.as_str()), (200, "abcde"));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nab").is_err());
        assert!(parse_response(b"garbage").is_err());
        assert!(response_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        ));
        assert!(!response_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok"
        ));
        assert!(response_complete(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n"
        ));
        assert!(!response_complete(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n"
        ));
        let req =
            String::from_utf8(request_bytes("POST", "127.0.0.1:15000", "/logging?level=debug")).unwrap();
        assert!(
            req.starts_with("POST /logging?level=debug HTTP/1.1\r\nHost: 127.0.0.1:15000\r\n"),
            "{req}"
        );
    }
}
