//! Worker threads: each runs a single-threaded runtime with its own listener sockets
//! (`SO_REUSEPORT`) and connection pools, as Envoy's workers do, and follows configuration
//! snapshots from the store. Nothing on the data path is shared between workers except
//! cluster counters.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

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
    drain: Rc<Drain>,
}

impl Worker {
    /// The configuration in force for new work on this worker.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// Says when this worker's connections should close gracefully.
    pub fn drain_signal(&self) -> DrainWatch {
        DrainWatch {
            drain: self.drain.clone(),
            slot: None,
        }
    }
}

/// The graceful-close signal of one worker's connections. A connection checks it on every
/// poll of its codec, several times per request, so checking is a flag read: a `watch`
/// receiver re-armed its notification on each poll (≈ 600 instructions per proxied request).
#[derive(Default)]
struct Drain {
    draining: Cell<bool>,
    /// The task of each live connection, by slot; freed slots are reused.
    wakers: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl Drain {
    fn start(&self) {
        self.draining.set(true);
        for waker in self.wakers.borrow_mut().iter_mut().filter_map(Option::take) {
            waker.wake();
        }
    }
}

/// One connection's view of its worker's drain.
pub struct DrainWatch {
    drain: Rc<Drain>,
    slot: Option<usize>,
}

impl DrainWatch {
    /// Ready once the worker drains; until then the task polling it is woken when it does.
    pub fn poll_drained(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.drain.draining.get() {
            return Poll::Ready(());
        }
        let mut wakers = self.drain.wakers.borrow_mut();
        match self.slot.and_then(|i| wakers.get_mut(i)) {
            Some(Some(w)) if w.will_wake(cx.waker()) => {}
            Some(entry) => *entry = Some(cx.waker().clone()),
            None => {
                let waker = Some(cx.waker().clone());
                let i = match self.drain.free.borrow_mut().pop() {
                    Some(i) => {
                        wakers[i] = waker;
                        i
                    }
                    None => {
                        wakers.push(waker);
                        wakers.len() - 1
                    }
                };
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for DrainWatch {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            if let Some(entry) = self.drain.wakers.borrow_mut().get_mut(i) {
                *entry = None;
            }
            self.drain.free.borrow_mut().push(i);
        }
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
    let worker = Rc::new(Worker {
        id,
        pools: Pools::default(),
        snapshot: RefCell::new(rx.borrow_and_update().clone()),
        phase: phase.clone(),
        drain: Rc::default(),
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
                        worker.drain.start();
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
