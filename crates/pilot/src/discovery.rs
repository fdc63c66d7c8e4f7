//! The control plane's `xds::server::Generator`: the current snapshot, translated per proxy.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use xds::pb::envoy::config::core::v3::Node;
use xds::server::{Generator, Resource, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};

use crate::gen::{self, Context, MeshConfig};
use crate::proxy::Proxy;
use crate::snapshot::Snapshot;

/// Holds the latest snapshot; every push generates from it.
pub struct Discovery {
    snapshot: RwLock<Arc<Snapshot>>,
    mesh: MeshConfig,
}

impl Discovery {
    pub fn new(mesh: MeshConfig) -> Discovery {
        Discovery {
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            mesh,
        }
    }

    pub fn update(&self, snap: Arc<Snapshot>) {
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = snap;
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn mesh(&self) -> &MeshConfig {
        &self.mesh
    }

    /// The resources of one type for one proxy (what a push sends).
    pub fn resources(&self, proxy: &Proxy, type_url: &str, names: &[String]) -> Vec<Resource> {
        let snap = self.snapshot();
        let ctx = Context {
            snap: &snap,
            proxy,
            mesh: &self.mesh,
        };
        match type_url {
            LISTENER_TYPE => gen::listener::listeners(&ctx)
                .iter()
                .map(|l| Resource::new(l.name.clone(), gen::any(l)))
                .collect(),
            CLUSTER_TYPE => gen::cluster::clusters(&ctx)
                .iter()
                .map(|c| Resource::new(c.name.clone(), gen::any(c)))
                .collect(),
            ROUTE_TYPE => gen::route::routes(&ctx, names)
                .iter()
                .map(|r| Resource::new(r.name.clone(), gen::any(r)))
                .collect(),
            ENDPOINT_TYPE => gen::endpoint::endpoints(&ctx, names)
                .iter()
                .map(|e| Resource::new(e.cluster_name.clone(), gen::any(e)))
                .collect(),
            _ => Vec::new(),
        }
    }
}

impl Generator for Discovery {
    type Proxy = Proxy;

    fn connect(&self, node: &Node, _peer: Option<SocketAddr>) -> Result<Proxy, String> {
        Proxy::from_node(node).map_err(|e| e.to_string())
    }

    fn generate(&self, proxy: &Proxy, type_url: &str, names: &[String]) -> Vec<Resource> {
        self.resources(proxy, type_url, names)
    }
}
