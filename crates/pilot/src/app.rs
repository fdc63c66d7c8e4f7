//! The control plane assembled: a registry source feeding the [`Store`], snapshots handed to
//! [`Discovery`], pushes to the ADS server on 15010, monitoring on 15014. `skiffd` calls
//! [`ControlPlane::start`] and waits.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use xds::server::{AdsServer, Debounce, PushScope};

use crate::discovery::Discovery;
use crate::gen::MeshConfig;
use crate::monitor::Monitor;
use crate::registry::{Change, Event, Source, Store};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Where to serve and how to push.
#[derive(Debug, Clone)]
pub struct Config {
    pub xds_addr: SocketAddr,
    pub monitoring_addr: SocketAddr,
    pub mesh: MeshConfig,
    pub debounce: Debounce,
}

/// A running control plane.
pub struct ControlPlane {
    pub xds_addr: SocketAddr,
    pub monitoring_addr: SocketAddr,
    pub discovery: Arc<Discovery>,
    pub ads: AdsServer<Discovery>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { what, addr, source })
}

impl ControlPlane {
    /// Binds both ports, starts the source and serves until dropped.
    pub async fn start(config: Config, source: Box<dyn Source>) -> Result<ControlPlane, AppError> {
        let xds_listener = bind("xDS", config.xds_addr).await?;
        let monitoring_listener = bind("monitoring", config.monitoring_addr).await?;
        let xds_addr = xds_listener.local_addr().unwrap_or(config.xds_addr);
        let monitoring_addr = monitoring_listener.local_addr().unwrap_or(config.monitoring_addr);

        let discovery = Arc::new(Discovery::new(config.mesh.clone()));
        let ads = AdsServer::new(discovery.clone(), config.debounce);
        let mut registry = Registry::default();
        ads.metrics().register(&mut registry);
        let services = Gauge::<i64>::default();
        registry.register("pilot_services", "Services in the registry", services.clone());
        let status_ads = ads.clone();
        let monitor = Arc::new(Monitor {
            registry: Mutex::new(registry),
            ready: false.into(),
            syncz: Box::new(move || {
                serde_json::Value::Array(status_ads.sync_status().iter().map(|p| p.to_json()).collect())
            }),
            discovery: discovery.clone(),
        });

        let mut tasks = Vec::new();
        let service = ads.service();
        tasks.push(tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(xds_listener).with_nodelay(Some(true));
            let served = tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
                .serve_with_incoming_shutdown(service, incoming, std::future::pending::<()>())
                .await;
            if let Err(e) = served {
                tracing::error!("xDS server stopped: {e}");
            }
        }));
        tasks.push(tokio::spawn(monitor.clone().serve(monitoring_listener)));

        tasks.push(tokio::spawn(trim_after_pushes(ads.clone())));
        let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
        source.start(tx);
        let pusher = ads.pusher();
        let disc = discovery.clone();
        tasks.push(tokio::spawn(async move {
            let mut store = Store::default();
            while let Some(first) = rx.recv().await {
                let mut change = store.apply(first);
                while let Ok(more) = rx.try_recv() {
                    change = change.merge(store.apply(more));
                }
                if !store.synced() {
                    continue;
                }
                // Rebuilt even when no proxy needs a push, so problems show up in /debug/registryz.
                let started = std::time::Instant::now();
                let snap = store.rebuild();
                tracing::debug!(elapsed = ?started.elapsed(), ?change, "registry snapshot rebuilt");
                services.set(snap.services.len() as i64);
                let scope = match change {
                    Change::Full => {
                        disc.update(snap);
                        PushScope::Full
                    }
                    Change::Endpoints(svcs) => {
                        let clusters = snap
                            .services
                            .iter()
                            .filter(|s| {
                                svcs.iter()
                                    .any(|(ns, name)| *ns == s.namespace && *name == s.name)
                            })
                            .flat_map(|s| crate::gen::endpoint::cluster_names(&snap, s))
                            .collect();
                        disc.update_endpoints(snap, &clusters);
                        PushScope::Endpoints(clusters)
                    }
                    Change::None => {
                        // Nothing a proxy sees changed (e.g. a problem was reported or fixed).
                        disc.update_endpoints(snap, &Default::default());
                        continue;
                    }
                };
                monitor.ready.store(true, Ordering::Relaxed);
                pusher.push(scope);
            }
        }));
        Ok(ControlPlane {
            xds_addr,
            monitoring_addr,
            discovery,
            ads,
            tasks,
        })
    }
}

/// Hands freed heap pages back to the kernel once pushes quiet down. A push to many proxies
/// allocates their responses and gRPC buffers all at once (≈1 MiB per proxy for a full push);
/// glibc keeps such pages mapped after they are freed, so without this skiffd's RSS would stay
/// at its push-time peak.
async fn trim_after_pushes(ads: AdsServer<Discovery>) {
    let mut last = ads.metrics().responses_sent();
    let mut trimmed_at = last;
    let mut interval = tokio::time::interval(std::time::Duration::from_secs(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let now = ads.metrics().responses_sent();
        // Quiet for a whole tick since the last responses went out.
        if now == last && now != trimmed_at {
            trim_heap();
            trimmed_at = now;
        }
        last = now;
    }
}

fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of glibc's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}
