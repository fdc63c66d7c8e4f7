//! The local mesh: Skiff's embedded default. `skiffctl local up -f DIR` reads ordinary
//! Kubernetes manifests and runs them on this machine as a sidecar mesh — one network namespace
//! per pod behind a routed "node" namespace, the seeds' capture rules, Skiff (or Envoy) sidecars
//! programmed by `skiffd`, kube-proxy-style VIPs and cluster DNS — so the seeds' walkthroughs run
//! from the same YAML with the same debugging commands.
//!
//! [`ops`] is what the CLI calls; [`supervisor`] is the daemon `up` leaves running; [`kubelet`],
//! [`net`] and [`envoy`] are its parts; [`state`] is the file everything else reads.

pub mod demo;
pub mod dns;
pub mod envoy;
pub mod kubelet;
pub mod manifest;
pub mod net;
pub mod ops;
pub mod state;
pub mod supervisor;

/// Whether pods resolve names through the mesh's kube-dns (`skiffctl local dns` in the
/// `kube-system/coredns` pod). When off, `/etc/netns/<pod>/hosts` entries carrying the same
/// search-path names stand in for it (kept for debugging name resolution).
pub const DNS_SERVER_AVAILABLE: bool = true;
