//! The control plane's `xds::server::Generator`: the current snapshot, translated per proxy.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use xds::pb::envoy::config::cluster::v3::Cluster;
use xds::pb::envoy::config::core::v3::Node;
use xds::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds::server::{Generator, Resource, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, SECRET_TYPE};

use crate::gen::{self, Context, MeshConfig};
use crate::proxy::Proxy;
use crate::snapshot::Snapshot;

/// Holds the latest snapshot; every push generates from it.
pub struct Discovery {
    current: RwLock<Arc<Generation>>,
    mesh: MeshConfig,
}

/// One snapshot and the resources that are the same for many proxies, built on first use and
/// shared (as `Arc`s, also by the ADS server's per-proxy state) until the next snapshot. What a
/// proxy gets depends on its kind, namespace (domains, DestinationRule precedence) and Sidecar
/// scope, and — only when some VirtualService matches on source labels — on its labels: that is
/// the sharing key ([`share_key`]).
#[derive(Default)]
struct Generation {
    snap: Arc<Snapshot>,
    clusters: Mutex<HashMap<String, Arc<Vec<Resource>>>>,
    endpoints: Mutex<HashMap<String, Arc<HashMap<String, Resource>>>>,
    /// Route configurations by (share key, name).
    routes: Mutex<HashMap<(String, String), Resource>>,
    /// After an endpoint-only change: the previous snapshot's load assignments by DR scope key,
    /// each with the clusters whose endpoints changed since. Building this snapshot's set starts
    /// from them and regenerates only those clusters.
    carried: HashMap<String, Carried>,
}

/// Load assignments of an earlier snapshot, valid except for `changed`.
#[derive(Clone)]
struct Carried {
    assignments: Arc<HashMap<String, Resource>>,
    changed: std::collections::BTreeSet<String>,
}

/// What makes two proxies' clusters and endpoints equal: their kind and Sidecar scope, and the
/// DestinationRules they see, which differ by namespace only when a namespace holds its own rules
/// or rules are not exported everywhere.
fn dr_scope_key(ctx: &Context<'_>) -> String {
    let ns = ctx.proxy.namespace.as_str();
    let scoped = ctx.snap.config.destination_rules.iter().any(|d| {
        (d.namespace == ns && ns != crate::istio::ROOT_NAMESPACE)
            || !(d.spec.export_to.is_empty() || d.spec.export_to.iter().any(|e| e == "*"))
    });
    let sidecar = ctx.scope().sidecar.as_ref().map(|s| s.key()).unwrap_or_default();
    format!(
        "{:?}|{sidecar}|{}",
        ctx.proxy.node_type,
        if scoped { ns } else { "" }
    )
}

/// What makes two proxies' shared resources equal (see [`Generation`]).
fn share_key(ctx: &Context<'_>) -> String {
    let sidecar = ctx.scope().sidecar.as_ref().map(|s| s.key()).unwrap_or_default();
    let mut key = format!("{:?}|{}|{sidecar}", ctx.proxy.node_type, ctx.proxy.namespace);
    if ctx.proxy.node_type == crate::proxy::NodeType::Router {
        // A gateway's resources depend on its labels (which Gateways select it) and its pod.
        key.push_str(&format!("|{}|{:?}", ctx.proxy.pod, ctx.labels()));
    } else if ctx.snap.config.uses_source_matches() {
        key.push_str(&format!("|{:?}", ctx.labels()));
    }
    key
}

fn cluster_resource(c: &Cluster) -> Resource {
    let digest = gen::digest(c, |c| c.metadata.take().into_iter().collect());
    Resource::with_digest(c.name.clone(), gen::any(c), digest)
}

fn endpoint_resource(e: &ClusterLoadAssignment) -> Resource {
    let digest = gen::digest(e, |e| {
        e.endpoints
            .iter_mut()
            .flat_map(|l| l.lb_endpoints.iter_mut())
            .filter_map(|lb| lb.metadata.take())
            .collect()
    });
    Resource::with_digest(e.cluster_name.clone(), gen::any(e), digest)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Discovery {
    pub fn new(mesh: MeshConfig) -> Discovery {
        Discovery {
            current: RwLock::new(Arc::new(Generation::default())),
            mesh,
        }
    }

    pub fn update(&self, snap: Arc<Snapshot>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Generation {
            snap,
            ..Default::default()
        });
    }

    /// A new snapshot in which only the endpoints of `changed` clusters differ from the current
    /// one: load assignments already built are carried over, so a push regenerates only those.
    pub fn update_endpoints(&self, snap: Arc<Snapshot>, changed: &std::collections::BTreeSet<String>) {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        let mut carried: HashMap<String, Carried> = current
            .carried
            .iter()
            .map(|(k, c)| {
                let mut c = c.clone();
                c.changed.extend(changed.iter().cloned());
                (k.clone(), c)
            })
            .collect();
        for (k, assignments) in lock(&current.endpoints).iter() {
            carried.insert(
                k.clone(),
                Carried {
                    assignments: assignments.clone(),
                    changed: changed.clone(),
                },
            );
        }
        *current = Arc::new(Generation {
            snap,
            carried,
            ..Default::default()
        });
    }

    fn current(&self) -> Arc<Generation> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current().snap.clone()
    }

    pub fn mesh(&self) -> &MeshConfig {
        &self.mesh
    }

    /// The resources of one type for one proxy (what a push sends).
    pub fn resources(&self, proxy: &Proxy, type_url: &str, names: &[String]) -> Vec<Resource> {
        let generation = self.current();
        let ctx = Context::new(&generation.snap, proxy, &self.mesh);
        match type_url {
            LISTENER_TYPE => gen::listener::listeners(&ctx)
                .iter()
                .map(|l| Resource::new(l.name.clone(), gen::any(l)))
                .collect(),
            CLUSTER_TYPE => {
                let key = dr_scope_key(&ctx);
                let shared = lock(&generation.clusters)
                    .entry(key)
                    .or_insert_with(|| {
                        Arc::new(
                            gen::cluster::shared_clusters(&ctx)
                                .iter()
                                .map(cluster_resource)
                                .collect(),
                        )
                    })
                    .clone();
                let mut out: Vec<Resource> = shared.iter().cloned().collect();
                out.extend(gen::cluster::inbound_clusters(&ctx).iter().map(cluster_resource));
                out
            }
            ROUTE_TYPE => {
                let names = if names.is_empty() {
                    gen::listener::rds_names(&ctx)
                } else {
                    names.to_vec()
                };
                let key = share_key(&ctx);
                let mut cache = lock(&generation.routes);
                let mut out = Vec::with_capacity(names.len());
                let mut missing = Vec::new();
                for n in &names {
                    match cache.get(&(key.clone(), n.clone())) {
                        Some(r) => out.push(r.clone()),
                        None => missing.push(n.clone()),
                    }
                }
                if !missing.is_empty() {
                    for r in gen::route::routes(&ctx, &missing) {
                        let res = Resource::new(r.name.clone(), gen::any(&r));
                        cache.insert((key.clone(), r.name.clone()), res.clone());
                        out.push(res);
                    }
                }
                out
            }
            ENDPOINT_TYPE => {
                let key = dr_scope_key(&ctx);
                let carried = generation.carried.get(&key);
                let all = lock(&generation.endpoints)
                    .entry(key)
                    .or_insert_with(|| match carried {
                        Some(c) => {
                            let mut all = (*c.assignments).clone();
                            let changed: Vec<String> = c.changed.iter().cloned().collect();
                            for n in &changed {
                                all.remove(n);
                            }
                            for e in gen::endpoint::endpoints(&ctx, &changed) {
                                all.insert(e.cluster_name.clone(), endpoint_resource(&e));
                            }
                            Arc::new(all)
                        }
                        None => Arc::new(
                            gen::endpoint::endpoints(&ctx, &[])
                                .iter()
                                .map(|e| (e.cluster_name.clone(), endpoint_resource(e)))
                                .collect(),
                        ),
                    })
                    .clone();
                if names.is_empty() {
                    let mut out: Vec<Resource> = all.values().cloned().collect();
                    out.sort_by(|a, b| a.name.cmp(&b.name));
                    out
                } else {
                    names.iter().filter_map(|n| all.get(n).cloned()).collect()
                }
            }
            SECRET_TYPE => gen::secret::secrets(&ctx, names)
                .iter()
                .map(|s| Resource::new(s.name.clone(), gen::any(s)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Event, Store};

    fn snapshot() -> Arc<Snapshot> {
        snapshot_of("apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: a}\n\
                    spec: {clusterIP: 198.19.0.1, selector: {app: web}, ports: [{name: http, port: 80}]}\n---\n\
                    apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: a, labels: {app: web}}\n\
                    status: {podIP: 198.18.0.5}\n")
    }

    fn snapshot_of(text: &str) -> Arc<Snapshot> {
        let mut store = Store::default();
        for o in crate::model::parse_manifests(std::path::Path::new("t.yaml"), text).unwrap() {
            store.apply(Event::Added(Arc::new(o)));
        }
        store.apply(Event::Synced);
        store.rebuild()
    }

    #[test]
    fn digests_ignore_map_encoding_order() {
        let d = Discovery::new(MeshConfig::default());
        d.update(snapshot());
        let p = Proxy::sidecar("198.18.0.6".parse().unwrap(), "client", "b");
        let first = d.resources(&p, CLUSTER_TYPE, &[]);
        let first_eds = d.resources(&p, ENDPOINT_TYPE, &[]);
        for _ in 0..5 {
            d.update(snapshot());
            let again = d.resources(&p, CLUSTER_TYPE, &[]);
            assert_eq!(
                first.iter().map(|r| r.digest).collect::<Vec<_>>(),
                again.iter().map(|r| r.digest).collect::<Vec<_>>()
            );
            let again = d.resources(&p, ENDPOINT_TYPE, &[]);
            assert_eq!(first_eds[0].digest, again[0].digest);
        }
    }

    #[test]
    fn shared_resources_equal_direct_generation_and_are_shared() {
        let d = Discovery::new(MeshConfig::default());
        d.update(snapshot());
        let web = Proxy::sidecar("198.18.0.5".parse().unwrap(), "web-1", "a");
        let other = Proxy::sidecar("198.18.0.6".parse().unwrap(), "client", "b");
        let snap = d.snapshot();
        let mesh = MeshConfig::default();
        for proxy in [&web, &other] {
            let ctx = Context::new(&snap, proxy, &mesh);
            // Compared decoded: protobuf maps (metadata) encode in hash order.
            let direct = gen::cluster::clusters(&ctx);
            let cached: Vec<Cluster> = d
                .resources(proxy, CLUSTER_TYPE, &[])
                .iter()
                .map(|r| prost::Message::decode(r.body.value.as_slice()).unwrap())
                .collect();
            assert_eq!(direct, cached);
            let direct: Vec<Vec<u8>> = gen::route::routes(&ctx, &[])
                .iter()
                .map(|r| gen::any(r).value)
                .collect();
            let cached: Vec<Vec<u8>> = d
                .resources(proxy, ROUTE_TYPE, &[])
                .iter()
                .map(|r| r.body.value.clone())
                .collect();
            assert_eq!(direct, cached);
        }
        let a = d.resources(
            &web,
            ENDPOINT_TYPE,
            &["outbound|80||web.a.svc.cluster.local".into()],
        );
        let b = d.resources(
            &other,
            ENDPOINT_TYPE,
            &["outbound|80||web.a.svc.cluster.local".into()],
        );
        assert!(Arc::ptr_eq(&a[0].body, &b[0].body), "one copy for every proxy");
        let a = d.resources(&web, CLUSTER_TYPE, &[]);
        let b = d.resources(&other, CLUSTER_TYPE, &[]);
        assert!(Arc::ptr_eq(&a[0].body, &b[0].body));
        // A new snapshot starts afresh.
        d.update(snapshot());
        let c = d.resources(&other, CLUSTER_TYPE, &[]);
        assert!(!Arc::ptr_eq(&b[0].body, &c[0].body));
    }

    #[test]
    fn an_endpoint_update_regenerates_only_the_changed_assignments() {
        let two = |web_ip: &str| {
            snapshot_of(&format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: a}}\n\
                 spec: {{clusterIP: 198.19.0.1, selector: {{app: web}}, ports: [{{name: http, port: 80}}]}}\n---\n\
                 apiVersion: v1\nkind: Service\nmetadata: {{name: db, namespace: a}}\n\
                 spec: {{clusterIP: 198.19.0.2, selector: {{app: db}}, ports: [{{name: tcp, port: 5432}}]}}\n---\n\
                 apiVersion: v1\nkind: Pod\nmetadata: {{name: web-1, namespace: a, labels: {{app: web}}}}\n\
                 status: {{podIP: {web_ip}}}\n---\n\
                 apiVersion: v1\nkind: Pod\nmetadata: {{name: db-1, namespace: a, labels: {{app: db}}}}\n\
                 status: {{podIP: 198.18.0.9}}\n"
            ))
        };
        let p = Proxy::sidecar("198.18.0.6".parse().unwrap(), "client", "b");
        let d = Discovery::new(MeshConfig::default());
        d.update(two("198.18.0.5"));
        let before = d.resources(&p, ENDPOINT_TYPE, &[]);
        let web = "outbound|80||web.a.svc.cluster.local".to_string();
        // Two endpoint-only snapshots in a row, the first never asked for: both carry over.
        d.update_endpoints(two("198.18.0.7"), &[web.clone()].into());
        d.update_endpoints(two("198.18.0.8"), &[web.clone()].into());
        let after = d.resources(&p, ENDPOINT_TYPE, &[]);
        let fresh = Discovery::new(MeshConfig::default());
        fresh.update(two("198.18.0.8"));
        let expected = fresh.resources(&p, ENDPOINT_TYPE, &[]);
        let digests = |v: &[Resource]| v.iter().map(|r| (r.name.clone(), r.digest)).collect::<Vec<_>>();
        assert_eq!(digests(&after), digests(&expected));
        assert_eq!(after.len(), 2);
        for (b, a) in before.iter().zip(&after) {
            assert_eq!(Arc::ptr_eq(&b.body, &a.body), *a.name != *web, "{}", a.name);
        }
    }
}
