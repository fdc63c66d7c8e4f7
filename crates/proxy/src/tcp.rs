//! `tcp_proxy`: pick a host, connect, copy both ways until both sides have closed (half-close
//! respected), close on idle, then write one access log line for the connection.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::access_log::{self, LogRecord, ResponseFlags};
use crate::cluster::LbContext;
use crate::listener::ConnMeta;
use crate::model::{ClusterTarget, TcpProxy};
use crate::snapshot::Snapshot;
use crate::stats;
use crate::upstream;

/// A stream that counts bytes read and remembers when it last saw traffic.
struct Tracked<S> {
    inner: S,
    read: Rc<Cell<u64>>,
    last_activity: Rc<Cell<Instant>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.read.set(self.read.get() + n);
            self.last_activity.set(Instant::now());
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Picks one name of a weighted target.
pub fn pick_cluster(target: &ClusterTarget) -> Option<&str> {
    match target {
        ClusterTarget::Named(n) => Some(n),
        ClusterTarget::Weighted(list) => {
            let total: u32 = list.iter().map(|c| c.weight).sum();
            if total == 0 {
                return list.first().map(|c| &*c.name);
            }
            let mut r = fastrand::u32(0..total);
            for c in list {
                if r < c.weight {
                    return Some(&c.name);
                }
                r -= c.weight;
            }
            list.last().map(|c| &*c.name)
        }
    }
}

/// Proxies one downstream connection.
pub async fn proxy<S>(tp: Arc<TcpProxy>, snap: Arc<Snapshot>, down: S, meta: ConnMeta)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let mut rec = LogRecord::new(meta.destination, meta.peer);
    rec.start_time = Some(std::time::SystemTime::now());
    rec.connection_id = meta.id;
    rec.requested_server_name = meta.server_name.clone();
    rec.downstream_tls_version = meta.tls_version;
    let finish = |mut rec: LogRecord, flags: Option<ResponseFlags>| {
        if let Some(f) = flags {
            rec.flags.insert(f);
        }
        rec.duration = started.elapsed();
        access_log::emit(&tp.access_logs, &rec);
        stats::tcp_closed(&meta, &rec);
    };
    let Some(name) = pick_cluster(&tp.cluster) else {
        return finish(rec, Some(ResponseFlags::NC));
    };
    rec.upstream_cluster = Some(Arc::from(name));
    let Some(cluster) = snap.cluster(name).cloned() else {
        return finish(rec, Some(ResponseFlags::NC));
    };
    let hash = tp
        .hash_source_ip
        .then(|| crate::hash::xxhash64(meta.peer.ip().to_string().as_bytes(), 0));
    let Some(host) = cluster.pick(LbContext {
        original_dst: Some(meta.destination),
        hash,
    }) else {
        cluster.stats.upstream_cx_none_healthy.fetch_add(1, Relaxed);
        return finish(rec, Some(ResponseFlags::UH));
    };
    rec.upstream_host = Some(host.address);
    let Some(slot) = cluster.try_acquire(crate::cluster::SlotKind::Connection) else {
        return finish(rec, Some(ResponseFlags::UO));
    };
    cluster.stats.upstream_cx_total.fetch_add(1, Relaxed);
    host.stats.cx_total.fetch_add(1, Relaxed);
    let up = match upstream::connect(
        host.address,
        cluster.config.bind_address,
        cluster.config.connect_timeout,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            host.stats.cx_connect_fail.fetch_add(1, Relaxed);
            cluster.stats.upstream_cx_connect_fail.fetch_add(1, Relaxed);
            rec.upstream_transport_failure_reason = Some(e.reason());
            return finish(rec, Some(ResponseFlags::UF));
        }
    };
    host.stats.cx_active.fetch_add(1, Relaxed);
    rec.upstream_local_address = up.local_addr().ok();
    stats::tcp_opened(&meta, &cluster);

    let last = Rc::new(Cell::new(Instant::now()));
    let (rx, tx) = (Rc::new(Cell::new(0u64)), Rc::new(Cell::new(0u64)));
    let mut a = Tracked {
        inner: down,
        read: rx.clone(),
        last_activity: last.clone(),
    };
    let mut b = Tracked {
        inner: up,
        read: tx.clone(),
        last_activity: last.clone(),
    };
    let idle = tp.idle_timeout;
    let idle_watch = async {
        let Some(idle) = idle else {
            return std::future::pending::<()>().await;
        };
        loop {
            let since = last.get().elapsed();
            if since >= idle {
                return;
            }
            tokio::time::sleep(idle - since + Duration::from_millis(1)).await;
        }
    };
    let mut termination = None;
    tokio::select! {
        r = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, 16 * 1024, 16 * 1024) => {
            if let Err(e) = r {
                termination = Some(e.to_string());
            }
        }
        () = idle_watch => {
            termination = Some("idle timeout".into());
        }
    }
    host.stats.cx_active.fetch_sub(1, Relaxed);
    drop(slot);
    rec.bytes_received = rx.get();
    rec.bytes_sent = tx.get();
    cluster
        .stats
        .upstream_cx_tx_bytes_total
        .fetch_add(rec.bytes_received, Relaxed);
    cluster
        .stats
        .upstream_cx_rx_bytes_total
        .fetch_add(rec.bytes_sent, Relaxed);
    rec.connection_termination_details = termination;
    finish(rec, None);
}
