//! The proxy's configuration at one moment, and the store that swaps it.
//!
//! Every source (bootstrap file, xDS) keeps its resources as Envoy protos plus their converted
//! model; a change builds a new [`Snapshot`] that workers pick up through a watch channel.
//! Cluster state (hosts, counters) survives snapshots so an update never resets traffic. A
//! resource that fails conversion is rejected alone; the last good version stays in force.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use xds::pb::envoy::config::cluster::v3::Cluster as ClusterProto;
use xds::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds::pb::envoy::config::listener::v3::Listener as ListenerProto;
use xds::pb::envoy::config::route::v3::RouteConfiguration;
use xds::pb::envoy::extensions::transport_sockets::tls::v3::Secret as SecretProto;

use crate::cluster::{ClusterState, ClusterStats};
use crate::convert::{self, ConfigError, Ctx};
use crate::model::{Cluster, Discovery, DownstreamTls, Listener, RouteConfig, TlsMaterial};
use crate::tls::{SecretLookup, TlsServer};

/// How long a listener waits for its SDS secrets before serving without them (Envoy's default
/// `initial_fetch_timeout`; its TLS chains then reset connections until the secret arrives).
pub const SECRET_WARMING_TIMEOUT: Duration = Duration::from_secs(15);

/// A resource as received, with where it came from and when.
#[derive(Debug)]
pub struct Versioned<P, M> {
    pub proto: P,
    pub model: Arc<M>,
    /// `None` for static resources from the bootstrap.
    pub version: Option<String>,
    pub last_updated: SystemTime,
}

impl<P: Clone, M> Clone for Versioned<P, M> {
    fn clone(&self) -> Self {
        Versioned {
            proto: self.proto.clone(),
            model: self.model.clone(),
            version: self.version.clone(),
            last_updated: self.last_updated,
        }
    }
}

/// Everything the proxy is configured with, immutable once built.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub generation: u64,
    pub listeners: Vec<Arc<Listener>>,
    /// Looked up per request: hashed with foldhash rather than SipHash (keys come from
    /// configuration, so a request cannot fill the table with collisions).
    pub routes: HashMap<String, Arc<RouteConfig>, foldhash::fast::RandomState>,
    pub clusters: HashMap<String, Arc<ClusterState>, foldhash::fast::RandomState>,
    /// Each TLS filter chain's server, keyed by its `DownstreamTls` (see [`Snapshot::tls`]).
    pub tls: HashMap<usize, Arc<TlsServer>>,
    pub resources: Arc<Resources>,
}

impl Snapshot {
    pub fn cluster(&self, name: &str) -> Option<&Arc<ClusterState>> {
        self.clusters.get(name)
    }

    pub fn route_config(&self, name: &str) -> Option<&Arc<RouteConfig>> {
        self.routes.get(name)
    }

    /// The TLS server of a chain's context; built with the snapshot, never per connection.
    pub fn tls(&self, ctx: &Arc<DownstreamTls>) -> Option<&Arc<TlsServer>> {
        self.tls.get(&(Arc::as_ptr(ctx) as usize))
    }

    pub fn listener(&self, name: &str) -> Option<&Arc<Listener>> {
        self.listeners.iter().find(|l| l.name == name)
    }

    /// The listener a `use_original_dst` listener hands a connection to: an exact `ip:port`
    /// match first, then a wildcard address on that port.
    pub fn listener_for(&self, dst: SocketAddr) -> Option<&Arc<Listener>> {
        let dst_ip = match dst.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        self.listeners
            .iter()
            .find(|l| l.address.port() == dst.port() && l.address.ip() == dst_ip)
            .or_else(|| {
                self.listeners.iter().find(|l| {
                    l.address.port() == dst.port()
                        && l.address.ip().is_unspecified()
                        && l.address.is_ipv4() == dst_ip.is_ipv4()
                })
            })
    }
}

/// The protos behind a snapshot, for `/config_dump` and for rebuilding after partial updates.
#[derive(Clone, Debug, Default)]
pub struct Resources {
    pub listeners: BTreeMap<String, Versioned<ListenerProto, Listener>>,
    pub routes: BTreeMap<String, Versioned<RouteConfiguration, RouteConfig>>,
    pub clusters: BTreeMap<String, Versioned<ClusterProto, Cluster>>,
    /// EDS assignments by service name.
    pub endpoints: BTreeMap<String, Versioned<ClusterLoadAssignment, ()>>,
    /// SDS secrets by name (static ones from the bootstrap have no version).
    pub secrets: BTreeMap<String, Versioned<SecretProto, TlsMaterial>>,
    /// Listener versions waiting for SDS secrets (Envoy's warming listeners); the active
    /// version, if any, keeps serving from `listeners` meanwhile.
    pub warming: BTreeMap<String, Warming>,
    /// `version_info` last accepted per type URL.
    pub versions: BTreeMap<String, String>,
}

/// A listener version that waits for secrets.
#[derive(Clone, Debug)]
pub struct Warming {
    pub listener: Versioned<ListenerProto, Listener>,
    pub since: Instant,
}

impl SecretLookup for Resources {
    fn secret(&self, name: &str) -> Option<Arc<TlsMaterial>> {
        self.secrets.get(name).map(|v| v.model.clone())
    }
}

impl Resources {
    /// SDS names a listener needs that have not arrived.
    fn missing_secrets<'a>(&'a self, l: &'a Listener) -> impl Iterator<Item = &'a str> + 'a {
        l.filter_chains
            .iter()
            .chain(l.default_filter_chain.iter())
            .filter_map(|c| c.tls.as_deref())
            .flat_map(crate::tls::sds_names)
            .filter(|n| !self.secrets.contains_key(*n))
    }

    /// SDS names referenced by active and warming listeners (what to ask the server for).
    pub fn secret_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .listeners
            .values()
            .map(|v| &v.model)
            .chain(self.warming.values().map(|w| &w.listener.model))
            .flat_map(|l| {
                l.filter_chains
                    .iter()
                    .chain(l.default_filter_chain.iter())
                    .filter_map(|c| c.tls.as_deref())
                    .flat_map(crate::tls::sds_names)
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Activates warming listeners whose secrets are in, or that waited long enough.
    fn promote_warming(&mut self, now: Instant) {
        let ready: Vec<String> = self
            .warming
            .iter()
            .filter(|(_, w)| {
                self.missing_secrets(&w.listener.model).next().is_none()
                    || now.duration_since(w.since) >= SECRET_WARMING_TIMEOUT
            })
            .map(|(k, _)| k.clone())
            .collect();
        for name in ready {
            if let Some(w) = self.warming.remove(&name) {
                self.listeners.insert(name, w.listener);
            }
        }
    }
}

/// A batch of resource changes from one source.
#[derive(Debug, Default)]
pub struct Update {
    pub version: Option<String>,
    pub listeners: Option<Vec<ListenerProto>>,
    pub routes: Option<Vec<RouteConfiguration>>,
    pub clusters: Option<Vec<ClusterProto>>,
    pub endpoints: Option<Vec<ClusterLoadAssignment>>,
    pub secrets: Option<Vec<SecretProto>>,
    /// With state-of-the-world xDS, resources missing from a full list are removed.
    pub replace: bool,
}

/// What an update did: resources rejected (with reasons) and warnings.
#[derive(Debug, Default)]
pub struct UpdateReport {
    pub rejected: Vec<ConfigError>,
    pub warnings: Vec<String>,
}

/// Holds the current snapshot; workers subscribe.
pub struct Store {
    inner: Mutex<Inner>,
    tx: watch::Sender<Arc<Snapshot>>,
}

struct Inner {
    resources: Resources,
    generation: u64,
    /// Counters by cluster name, kept across cluster updates.
    stats: HashMap<String, Arc<ClusterStats>>,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl Store {
    pub fn new() -> Store {
        let (tx, _) = watch::channel(Arc::new(Snapshot::default()));
        Store {
            inner: Mutex::new(Inner {
                resources: Resources::default(),
                generation: 0,
                stats: HashMap::new(),
            }),
            tx,
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// Applies an update: converts each resource, keeps the good ones, reports the rest, and
    /// publishes a new snapshot if anything changed.
    pub fn apply(&self, update: Update) -> UpdateReport {
        let mut report = UpdateReport::default();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = SystemTime::now();
        let version = update.version.clone();
        let mut res = inner.resources.clone();

        // Secrets first: a listener in the same update may be waiting for them.
        if let Some(list) = update.secrets {
            if update.replace {
                let names: Vec<&str> = list.iter().map(|s| s.name.as_str()).collect();
                res.secrets
                    .retain(|k, v| v.version.is_none() || names.contains(&k.as_str()));
            }
            for p in list {
                if res.secrets.get(&p.name).is_some_and(|v| v.proto == p) {
                    continue;
                }
                // A bad secret is rejected alone; the last good one stays in force.
                match convert::tls::secret(&p, &mut report.warnings) {
                    Ok(m) => {
                        res.secrets.insert(
                            p.name.clone(),
                            Versioned {
                                proto: p,
                                model: Arc::new(m),
                                version: version.clone(),
                                last_updated: now,
                            },
                        );
                    }
                    Err(e) => report.rejected.push(e),
                }
            }
        }
        if let Some(list) = update.listeners {
            if update.replace {
                let names: Vec<&str> = list.iter().map(|l| l.name.as_str()).collect();
                res.listeners
                    .retain(|k, v| v.version.is_none() || names.contains(&k.as_str()));
                res.warming.retain(|k, _| names.contains(&k.as_str()));
            }
            for p in list {
                let same = |v: &Versioned<ListenerProto, Listener>| v.proto == p;
                if res.warming.get(&p.name).is_some_and(|w| same(&w.listener))
                    || (!res.warming.contains_key(&p.name) && res.listeners.get(&p.name).is_some_and(same))
                {
                    continue;
                }
                match convert::listener(&p, &mut report.warnings) {
                    Ok(m) => {
                        let dynamic = version.is_some();
                        let v = Versioned {
                            proto: p,
                            model: Arc::new(m),
                            version: version.clone(),
                            last_updated: now,
                        };
                        let name = v.proto.name.clone();
                        // As Envoy: a listener whose SDS secrets are not in warms; the version
                        // it replaces (if any) keeps serving until it is ready.
                        if dynamic && res.missing_secrets(&v.model).next().is_some() {
                            res.warming.insert(
                                name,
                                Warming {
                                    listener: v,
                                    since: Instant::now(),
                                },
                            );
                        } else {
                            res.warming.remove(&name);
                            res.listeners.insert(name, v);
                        }
                    }
                    Err(e) => report.rejected.push(e),
                }
            }
        }
        res.promote_warming(Instant::now());
        if let Some(list) = update.routes {
            if update.replace {
                let names: Vec<&str> = list.iter().map(|r| r.name.as_str()).collect();
                res.routes
                    .retain(|k, v| v.version.is_none() || names.contains(&k.as_str()));
            }
            for p in list {
                if res.routes.get(&p.name).is_some_and(|v| v.proto == p) {
                    continue;
                }
                match convert::route_config(&p, &mut report.warnings) {
                    Ok(m) => {
                        res.routes.insert(
                            p.name.clone(),
                            Versioned {
                                proto: p,
                                model: Arc::new(m),
                                version: version.clone(),
                                last_updated: now,
                            },
                        );
                    }
                    Err(e) => report.rejected.push(e),
                }
            }
        }
        if let Some(list) = update.clusters {
            if update.replace {
                let names: Vec<&str> = list.iter().map(|c| c.name.as_str()).collect();
                res.clusters
                    .retain(|k, v| v.version.is_none() || names.contains(&k.as_str()));
            }
            for p in list {
                if res.clusters.get(&p.name).is_some_and(|v| v.proto == p) {
                    continue;
                }
                match convert::cluster(&p, &mut report.warnings) {
                    Ok(m) => {
                        res.clusters.insert(
                            p.name.clone(),
                            Versioned {
                                proto: p,
                                model: Arc::new(m),
                                version: version.clone(),
                                last_updated: now,
                            },
                        );
                    }
                    Err(e) => report.rejected.push(e),
                }
            }
        }
        if let Some(list) = update.endpoints {
            if update.replace {
                let names: Vec<&str> = list.iter().map(|c| c.cluster_name.as_str()).collect();
                res.endpoints.retain(|k, _| names.contains(&k.as_str()));
            }
            for p in list {
                // Validate now so a bad assignment is rejected instead of emptying the cluster.
                let ctx = Ctx::new("cluster_load_assignment", &p.cluster_name, &mut report.warnings);
                match convert::load_assignment(&ctx, "endpoints", &p, false) {
                    Ok(_) => {
                        res.endpoints.insert(
                            p.cluster_name.clone(),
                            Versioned {
                                proto: p,
                                model: Arc::new(()),
                                version: version.clone(),
                                last_updated: now,
                            },
                        );
                    }
                    Err(e) => report.rejected.push(e),
                }
            }
        }
        // Inline route configurations must name existing clusters (Envoy's validate_clusters).
        let mut invalid = Vec::new();
        for (name, l) in &res.listeners {
            for chain in l
                .model
                .filter_chains
                .iter()
                .chain(l.model.default_filter_chain.iter())
            {
                let crate::model::NetworkFilter::Http(h) = &chain.filter else {
                    continue;
                };
                let crate::model::RouteSource::Inline(rc) = &h.routes else {
                    continue;
                };
                if !rc.validate_clusters {
                    continue;
                }
                if let Some(missing) = rc.cluster_names().find(|c| !res.clusters.contains_key(*c)) {
                    invalid.push(ConfigError {
                        kind: "listener",
                        name: name.clone(),
                        field: format!("route_config {:?}", rc.name),
                        reason: format!("route: unknown cluster '{missing}'"),
                    });
                }
            }
        }
        for e in invalid {
            // Keep the last good version if there was one.
            match inner.resources.listeners.get(&e.name) {
                Some(old) => {
                    res.listeners.insert(e.name.clone(), old.clone());
                }
                None => {
                    res.listeners.remove(&e.name);
                }
            }
            report.rejected.push(e);
        }
        let previous = self.current();
        inner.generation += 1;
        let generation = inner.generation;
        let snapshot = build(
            &res,
            &previous,
            &mut inner.stats,
            generation,
            &mut report.warnings,
        );
        inner.resources = res;
        self.tx.send_replace(Arc::new(snapshot));
        report
    }

    /// Activates listeners that have warmed for [`SECRET_WARMING_TIMEOUT`]; called periodically.
    pub fn tick(&self) {
        let now = Instant::now();
        let expired = self
            .current()
            .resources
            .warming
            .values()
            .any(|w| now.duration_since(w.since) >= SECRET_WARMING_TIMEOUT);
        if expired {
            self.apply(Update::default());
        }
    }

    /// Records the `version_info` of a type (xDS bookkeeping for `/config_dump`).
    pub fn set_version(&self, type_url: &str, version: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .resources
            .versions
            .insert(type_url.to_owned(), version.to_owned());
    }
}

/// Builds a snapshot from resources, reusing cluster state from `previous` where possible.
fn build(
    res: &Resources,
    previous: &Snapshot,
    stats: &mut HashMap<String, Arc<ClusterStats>>,
    generation: u64,
    warnings: &mut Vec<String>,
) -> Snapshot {
    let mut clusters = HashMap::with_capacity_and_hasher(res.clusters.len(), Default::default());
    for (name, v) in &res.clusters {
        let prev = previous.clusters.get(name);
        let eds = match &v.model.discovery {
            Discovery::Eds(service) => res.endpoints.get(service),
            _ => None,
        };
        // Unchanged cluster and endpoints: keep the same state object.
        if let Some(p) = prev {
            let same_eds = match (eds, &p.eds_token) {
                (None, None) => true,
                (Some(c), Some(t)) => Arc::ptr_eq(&c.model, t),
                _ => false,
            };
            if Arc::ptr_eq(&p.config, &v.model) && same_eds {
                clusters.insert(name.clone(), p.clone());
                continue;
            }
        }
        let s = stats.entry(name.clone()).or_default().clone();
        let mut state = ClusterState::new(v.model.clone(), s, prev.map(|p| p.as_ref()));
        state.eds_token = eds.map(|c| c.model.clone());
        if let Some(cla) = eds {
            let ctx = Ctx::new("cluster_load_assignment", &cla.proto.cluster_name, warnings);
            if let Ok(eps) = convert::load_assignment(&ctx, "endpoints", &cla.proto, false) {
                state.set_endpoints(&eps, prev.map(|p| p.as_ref()));
            }
        }
        clusters.insert(name.clone(), Arc::new(state));
    }
    stats.retain(|k, _| res.clusters.contains_key(k));
    let mut tls = HashMap::new();
    for l in res.listeners.values().map(|v| &v.model) {
        let mut stats = None;
        for chain in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
            let Some(ctx) = &chain.tls else { continue };
            let stats = stats
                .get_or_insert_with(|| crate::tls::stats_for(&crate::tls::stat_prefix(l.address)))
                .clone();
            let prev = previous.tls(ctx).map(|p| p.as_ref());
            let server = TlsServer::build(ctx, res, stats, prev, warnings);
            tls.insert(Arc::as_ptr(ctx) as usize, Arc::new(server));
        }
    }
    Snapshot {
        generation,
        tls,
        listeners: res.listeners.values().map(|v| v.model.clone()).collect(),
        routes: res
            .routes
            .iter()
            .map(|(k, v)| (k.clone(), v.model.clone()))
            .collect(),
        clusters,
        resources: Arc::new(res.clone()),
    }
}
