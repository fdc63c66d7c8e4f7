//! The proxy process: load configuration into the store, start the workers and the admin
//! server, and handle the lifecycle (SIGTERM drains: stop accepting, let in-flight work finish
//! within the drain period, then exit).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::admin::{self, AdminState};
use crate::bootstrap::Loaded;
use crate::snapshot::{Store, Update};
use crate::worker::{self, Phase};

/// How to run the proxy.
#[derive(Clone, Debug)]
pub struct Options {
    /// Worker threads (Envoy's `--concurrency`).
    pub concurrency: usize,
    /// How long a drain waits for in-flight connections.
    pub drain_time: Duration,
    /// Admin address; overrides the bootstrap's.
    pub admin: Option<SocketAddr>,
    /// Extra admin-API listeners with what each exposes (15021 health, 15090 metrics, 15020
    /// agent status in sidecar mode).
    pub extra_admin: Vec<(SocketAddr, admin::Scope)>,
    pub config_path: Option<PathBuf>,
    /// Ready as soon as the listeners are up (a bootstrap file is complete configuration); an
    /// xDS-fed proxy turns ready when its first full configuration arrives instead.
    pub ready_now: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            concurrency: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            drain_time: Duration::from_secs(5),
            admin: None,
            extra_admin: Vec::new(),
            config_path: None,
            ready_now: true,
        }
    }
}

/// A running proxy (for tests and embedding): the store and the lifecycle switch.
pub struct Handle {
    pub store: Arc<Store>,
    pub phase: watch::Sender<Phase>,
    pub admin_address: Option<SocketAddr>,
    pub configured: Arc<AtomicBool>,
}

/// Applies the bootstrap's static resources; a rejected resource is fatal at start (as in Envoy).
pub fn apply_static(store: &Store, loaded: &Loaded) -> Result<(), String> {
    for w in &loaded.warnings {
        warn!("{w}");
    }
    let report = store.apply(loaded.static_update());
    for w in &report.warnings {
        warn!("{w}");
    }
    if let Some(e) = report.rejected.first() {
        return Err(e.to_string());
    }
    Ok(())
}

/// Runs until the proxy is told to stop (signal or admin). Blocks the calling thread.
pub fn run(loaded: Loaded, opts: Options, extra: Option<Update>) -> Result<(), String> {
    let store = Arc::new(Store::new());
    apply_static(&store, &loaded)?;
    if let Some(u) = extra {
        let r = store.apply(u);
        if let Some(e) = r.rejected.first() {
            return Err(e.to_string());
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(async move {
        let handle = start(store, &loaded, &opts).await?;
        wait_for_stop(&handle, opts.drain_time).await;
        Ok(())
    })
}

/// Starts workers and admin; returns once listening.
pub async fn start(store: Arc<Store>, loaded: &Loaded, opts: &Options) -> Result<Handle, String> {
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let workers = opts.concurrency.max(1);
    worker::spawn(workers, store.clone(), phase_rx);
    let configured = Arc::new(AtomicBool::new(false));
    let state = Arc::new(AdminState {
        store: store.clone(),
        bootstrap: loaded.proto.clone(),
        bootstrap_loaded: SystemTime::now(),
        started: Instant::now(),
        phase: phase_tx.clone(),
        configured: configured.clone(),
        concurrency: workers as u32,
        config_path: opts
            .config_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    });
    let mut admin_address = None;
    let admin_addrs = opts
        .admin
        .or(loaded.admin)
        .map(|a| (a, admin::Scope::Full))
        .into_iter()
        .chain(opts.extra_admin.iter().copied());
    for (i, (addr, scope)) in admin_addrs.enumerate() {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot bind admin on {addr}: {e}"))?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        if i == 0 {
            admin_address = Some(bound);
            info!(address = %bound, "admin listening");
        }
        tokio::spawn(admin::serve(listener, state.clone(), scope));
    }
    // Listeners warming for SDS secrets activate after Envoy's initial_fetch_timeout.
    let ticking = store.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            ticking.tick();
        }
    });
    // Ready once every worker has started and bound its listeners.
    let deadline = Instant::now() + Duration::from_secs(10);
    while crate::stats::server().workers_started.load(Relaxed) < workers as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    trim_heap();
    if opts.ready_now {
        configured.store(true, Relaxed);
        crate::stats::server().state.store(0, Relaxed);
    }
    Ok(Handle {
        store,
        phase: phase_tx,
        admin_address,
        configured,
    })
}

/// Waits for SIGTERM/SIGINT or an admin stop, drains, and returns.
pub async fn wait_for_stop(handle: &Handle, drain_time: Duration) {
    let mut phase = handle.phase.subscribe();
    let sigterm = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                error!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        () = sigterm => info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT: draining"),
        _ = async { loop { if phase.changed().await.is_err() || *phase.borrow() == Phase::Stopped { break } } } => {
            info!("stopping");
            crate::access_log::flush_all();
            return;
        }
    }
    let _ = handle.phase.send(Phase::Draining);
    crate::stats::server().state.store(1, Relaxed);
    let deadline = Instant::now() + drain_time;
    while crate::stats::server().downstream_cx_active.load(Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = handle.phase.send(Phase::Stopped);
    crate::access_log::flush_all();
    info!("drained; exiting");
}

/// Hands freed heap pages back to the kernel. Loading configuration decodes Envoy's whole
/// descriptor set and the bootstrap (≈12 MiB, freed right after); glibc keeps such pages
/// mapped, so without this an idle proxy would sit at twice its working set.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of glibc's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
    #[cfg(target_os = "linux")]
    release_file_pages();
}

/// Unmaps the clean pages of read-only file mappings (the executable's code and constants,
/// shared libraries) from the resident set; the kernel faults back in, from the page cache,
/// those still used. Loading configuration runs a large part of the 10 MiB executable once
/// (Envoy's descriptor set, decoding, conversion), and the kernel's fault-around maps 64 KiB
/// around every such page: without this, two thirds of an idle proxy's RSS is code it will not
/// run again. Only mappings holding no private (copy-on-write) pages are touched, so nothing
/// is lost: this is what the kernel itself does to them under memory pressure.
#[cfg(target_os = "linux")]
fn release_file_pages() {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    // Each mapping: a header line `start-end perms offset dev inode [path]`, then fields, one
    // of them `Anonymous:` (its copy-on-write pages).
    let mut current: Option<(usize, usize)> = None;
    let mut release = Vec::new();
    for line in smaps.lines() {
        if let Some(anon) = line.strip_prefix("Anonymous:") {
            if let Some(range) = current.take() {
                if anon.trim() == "0 kB" {
                    release.push(range);
                }
            }
            continue;
        }
        let mut fields = line.split_ascii_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) else {
            continue;
        };
        let file_backed = fields.nth(3).is_some_and(|p| p.starts_with('/'));
        current = (matches!(perms, "r--p" | "r-xp") && file_backed && end > start).then_some((start, end));
    }
    for (start, end) in release {
        // SAFETY: a read-only private file mapping without copy-on-write pages holds nothing
        // but the file's contents; MADV_DONTNEED only drops its page-table entries, and later
        // accesses read the same contents back from the file. No Rust object lives there.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}
