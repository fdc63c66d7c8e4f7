//! Kubernetes objects for tests that run a control plane from a config directory: the seed's
//! cluster (seed 004's namespaces, kube-dns, istiod, gateways) plus pods and services placed on
//! a test network.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Seed 004's cluster objects, kept with the pilot tests.
pub fn seed004_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../pilot/tests/testdata/seed004")
}

/// Copies the seed's cluster-wide objects (not its pods) into `dir`.
pub fn copy_seed_cluster(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for f in [
        "namespaces.yaml",
        "kube-system.yaml",
        "istio-system.yaml",
        "default.yaml",
    ] {
        std::fs::copy(seed004_dir().join(f), dir.join(f))?;
    }
    Ok(())
}

/// A running pod with `app` and `version` labels at `ip`, one container port.
pub fn pod(namespace: &str, name: &str, app: &str, version: &str, ip: Ipv4Addr, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  \
         labels: {{app: {app}, version: {version}, security.istio.io/tlsMode: istio}}\n\
         spec:\n  containers: [{{name: {app}, ports: [{{containerPort: {port}}}]}}]\n\
         status:\n  phase: Running\n  podIP: {ip}\n"
    )
}

/// A ClusterIP service selecting `app`, one HTTP port.
pub fn service(namespace: &str, name: &str, vip: Ipv4Addr, port: u16, target_port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
         spec:\n  clusterIP: {vip}\n  selector: {{app: {name}}}\n  \
         ports: [{{name: http, port: {port}, targetPort: {target_port}}}]\n"
    )
}

/// Writes `docs` as one multi-document file, write-then-rename as editors and kubectl-like
/// tools do (a watcher never sees half a file).
pub fn write(dir: &Path, file: &str, docs: &[String]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, docs.join("---\n"))?;
    std::fs::rename(tmp, dir.join(file))
}
