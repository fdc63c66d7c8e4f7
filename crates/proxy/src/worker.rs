//! Worker threads: each runs a single-threaded runtime with its own listener sockets
//! (`SO_REUSEPORT`) and connection pools, as Envoy's workers do, and follows configuration
//! snapshots from the store. Nothing on the data path is shared between workers except
//! cluster counters.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use tokio::sync::{watch, Notify};
use tracing::{error, info, warn};

use crate::snapshot::{Snapshot, Store};
use crate::upstream::Pools;

/// Lifecycle of the process, broadcast to workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Stop accepting; finish what is in flight (graceful close of HTTP connections).
    Draining,
    /// Exit now.
    Stopped,
}

/// One worker's state, shared by its tasks (single-threaded).
pub struct Worker {
    pub id: usize,
    pub pools: Pools,
    snapshot: RefCell<Arc<Snapshot>>,
    phase: watch::Receiver<Phase>,
    drain_tx: watch::Sender<bool>,
}

impl Worker {
    /// The configuration in force for new work on this worker.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// Fires when connections should close gracefully.
    pub fn drain_signal(&self) -> watch::Receiver<bool> {
        self.drain_tx.subscribe()
    }
}

struct Bound {
    address: SocketAddr,
    transparent: bool,
    stop: Rc<Notify>,
}

/// Starts `n` workers following `store`; they stop when `phase` says so.
pub fn spawn(n: usize, store: Arc<Store>, phase: watch::Receiver<Phase>) -> Vec<std::thread::JoinHandle<()>> {
    (0..n)
        .map(|id| {
            let rx = store.subscribe();
            let phase = phase.clone();
            std::thread::Builder::new()
                .name(format!("worker-{id}"))
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(rt) => rt,
                        Err(e) => {
                            error!(worker = id, error = %e, "cannot start worker runtime");
                            return;
                        }
                    };
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&rt, run(id, rx, phase));
                })
                .unwrap_or_else(|e| panic!("cannot spawn worker thread: {e}"))
        })
        .collect()
}

async fn run(id: usize, mut rx: watch::Receiver<Arc<Snapshot>>, mut phase: watch::Receiver<Phase>) {
    let (drain_tx, _) = watch::channel(false);
    let worker = Rc::new(Worker {
        id,
        pools: Pools::default(),
        snapshot: RefCell::new(rx.borrow_and_update().clone()),
        phase: phase.clone(),
        drain_tx,
    });
    crate::stats::server()
        .workers_started
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut bound: HashMap<String, Bound> = HashMap::new();
    reconcile(&worker, &mut bound);
    loop {
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    break;
                }
                *worker.snapshot.borrow_mut() = rx.borrow_and_update().clone();
                if *worker.phase.borrow() == Phase::Running {
                    reconcile(&worker, &mut bound);
                }
            }
            changed = phase.changed() => {
                let p = if changed.is_err() { Phase::Stopped } else { *phase.borrow_and_update() };
                match p {
                    Phase::Running => {}
                    Phase::Draining => {
                        for (_, b) in bound.drain() {
                            b.stop.notify_one();
                        }
                        let _ = worker.drain_tx.send(true);
                    }
                    Phase::Stopped => break,
                }
            }
        }
    }
    for (_, b) in bound.drain() {
        b.stop.notify_one();
    }
}

/// Binds new listeners, rebinds moved ones, closes removed ones. Established connections are
/// untouched (they keep running with the snapshot they started with).
fn reconcile(worker: &Rc<Worker>, bound: &mut HashMap<String, Bound>) {
    let snap = worker.snapshot();
    let wanted: HashMap<&str, _> = snap
        .listeners
        .iter()
        .filter(|l| l.bind_to_port)
        .map(|l| (l.name.as_str(), l))
        .collect();
    bound.retain(|name, b| {
        let keep = wanted
            .get(name.as_str())
            .is_some_and(|l| l.address == b.address && l.transparent == b.transparent);
        if !keep {
            b.stop.notify_one();
        }
        keep
    });
    for (name, l) in wanted {
        if bound.contains_key(name) {
            continue;
        }
        match crate::listener::bind(l.address, l.transparent) {
            Ok(sock) => {
                if worker.id == 0 {
                    info!(listener = %name, address = %l.address, "listening");
                }
                let stop = Rc::new(Notify::new());
                bound.insert(
                    name.to_owned(),
                    Bound {
                        address: l.address,
                        transparent: l.transparent,
                        stop: stop.clone(),
                    },
                );
                tokio::task::spawn_local(crate::listener::accept_loop(
                    worker.clone(),
                    name.to_owned(),
                    sock,
                    stop,
                ));
            }
            Err(e) => warn!(listener = %name, address = %l.address, error = %e, "cannot bind listener"),
        }
    }
}
