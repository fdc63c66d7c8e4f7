//! The mesh's state file: everything `up` made (namespaces, veths, processes) so `status`,
//! `exec`, `logs` and `proxy-config` can find pods, and so `down` can undo it all even after the
//! supervisor died. Written atomically (write, then rename) by the supervisor only.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Which proxy runs as the sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProxyKind {
    #[default]
    Skiff,
    Envoy,
}

impl std::str::FromStr for ProxyKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "skiff" => Ok(ProxyKind::Skiff),
            "envoy" => Ok(ProxyKind::Envoy),
            other => Err(format!("unknown proxy {other:?}: expected skiff or envoy")),
        }
    }
}

/// One container's process.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerState {
    pub name: String,
    /// What actually runs (after image substitution), for `status` and `up`'s notes.
    pub command: Vec<String>,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub ready: bool,
    /// Why it is not running (exit status, spawn error), as `kubectl describe` would say.
    pub last_state: Option<String>,
    pub init: bool,
}

/// One pod.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PodState {
    pub namespace: String,
    pub name: String,
    /// The Deployment it belongs to, if any.
    pub owner: Option<String>,
    pub template_hash: String,
    /// `/run/netns/<netns>`.
    pub netns: String,
    pub ip: Ipv4Addr,
    /// The switch side of the pod's veth.
    pub veth: String,
    pub labels: BTreeMap<String, String>,
    pub sidecar: Option<ProxyKind>,
    /// Part of the mesh itself (kube-dns, istiod) rather than the user's manifests.
    pub system: bool,
    pub phase: String,
    pub ready: bool,
    pub containers: Vec<ContainerState>,
    /// Unix seconds.
    pub created: u64,
}

impl PodState {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// `READY` as kubectl prints it: ready containers / containers.
    pub fn ready_column(&self) -> String {
        let app: Vec<&ContainerState> = self.containers.iter().filter(|c| !c.init).collect();
        format!("{}/{}", app.iter().filter(|c| c.ready).count(), app.len())
    }

    pub fn restarts(&self) -> u32 {
        self.containers.iter().map(|c| c.restarts).sum()
    }
}

/// The ingress gateway's address on the host: a veth pair between the host and the node with a
/// point-to-point /30, so the host reaches the gateway as a cloud reaches a LoadBalancer IP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressState {
    /// The host side of the veth (removed by `down`, also after a crash).
    pub host_veth: String,
    /// The host's end of the /30.
    pub host_address: Ipv4Addr,
    /// The node's end: `INGRESS_HOST`, the Service's load-balancer address.
    pub address: Ipv4Addr,
}

/// A Service and its virtual IP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceState {
    pub namespace: String,
    pub name: String,
    pub vip: Option<Ipv4Addr>,
    /// `port/protocol` list as `kubectl get svc` prints it.
    pub ports: String,
}

/// The whole mesh.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The mesh's name: prefix of every namespace it creates.
    pub name: String,
    pub source: PathBuf,
    pub default_namespace: String,
    pub proxy: ProxyKind,
    /// The "node": routes between pods, kube-proxy rules, the probing kubelet.
    pub switch_netns: String,
    pub supervisor_pid: Option<u32>,
    /// Manifests generation the supervisor has applied (`up` waits for it).
    pub observed_generation: u64,
    /// True once skiffd holds every ready endpoint and every sidecar has acknowledged it: what
    /// `up` waits for, so the first request after it finds its endpoint.
    #[serde(default)]
    pub converged: bool,
    /// Errors of the last reconcile (bad manifests keep the previous state running).
    pub errors: Vec<String>,
    /// Notes for the user (image substitutions), said once.
    pub notes: Vec<String>,
    pub pods: Vec<PodState>,
    pub services: Vec<ServiceState>,
    /// Address allocations, kept stable across `up`s.
    pub next_pod_ip: u32,
    pub next_vip: u32,
    pub next_veth: u32,
    pub vips: BTreeMap<String, Ipv4Addr>,
    /// Set once the ingress gateway runs (the manifests hold a Gateway).
    #[serde(default)]
    pub ingress: Option<IngressState>,
}

impl State {
    pub fn new(name: &str, source: &Path, default_namespace: &str, proxy: ProxyKind) -> State {
        State {
            name: name.to_owned(),
            source: source.to_owned(),
            default_namespace: default_namespace.to_owned(),
            proxy,
            switch_netns: format!("{name}-node"),
            supervisor_pid: None,
            observed_generation: 0,
            converged: false,
            errors: Vec::new(),
            notes: Vec::new(),
            pods: Vec::new(),
            services: Vec::new(),
            next_pod_ip: 0,
            next_vip: 0,
            next_veth: 0,
            vips: BTreeMap::new(),
            ingress: None,
        }
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&PodState> {
        self.pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
    }

    /// Resolves `POD`, `deploy/NAME` or `deployment/NAME` (its first ready pod, else its first).
    pub fn find_pod(&self, namespace: &str, target: &str) -> Result<&PodState> {
        let deploy = target
            .strip_prefix("deploy/")
            .or_else(|| target.strip_prefix("deployment/"));
        let candidates: Vec<&PodState> = match deploy {
            Some(d) => self
                .pods
                .iter()
                .filter(|p| p.namespace == namespace && p.owner.as_deref() == Some(d))
                .collect(),
            None => self
                .pods
                .iter()
                .filter(|p| p.namespace == namespace && p.name == target)
                .collect(),
        };
        let mut sorted = candidates;
        sorted.sort_by(|a, b| b.ready.cmp(&a.ready).then(a.name.cmp(&b.name)));
        sorted.first().copied().with_context(|| {
            let known: Vec<String> = self
                .pods
                .iter()
                .filter(|p| !p.system || p.namespace == namespace)
                .map(PodState::key)
                .collect();
            format!(
                "no pod {target:?} in namespace {namespace:?} of mesh {:?} (pods: {})",
                self.name,
                known.join(", ")
            )
        })
    }
}

/// Where a mesh keeps its files: `$SKIFF_LOCAL_DIR` or `/run/skiff/local`, then the mesh name.
pub fn mesh_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("SKIFF_LOCAL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/skiff/local"));
    base.join(name)
}

pub fn state_path(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

pub fn load(dir: &Path) -> Result<State> {
    let path = state_path(dir);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no local mesh here ({} is missing): run `skiffctl local up -f DIR`",
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("{} is corrupt", path.display()))
}

pub fn save(dir: &Path, state: &State) -> Result<()> {
    write_atomic(&state_path(dir), serde_json::to_string_pretty(state)?.as_bytes())
}

/// Writes `path` via a temporary file and rename, so readers never see half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}
