//! Connections to upstream hosts: TCP connect (optionally from a fixed source address such as
//! Istio's 127.0.0.6), and per-worker HTTP connection pools — keep-alive HTTP/1.1 connections
//! reused one request at a time, one multiplexed HTTP/2 connection per host — with the cluster's
//! connection and pending-request circuit breakers.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Notify;

use crate::batch_io::{BatchedWrites, Batching};
use crate::cluster::{ClusterState, Host, SlotKind};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Request bodies sent upstream.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Why an upstream exchange failed, in Envoy's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamError {
    /// The circuit breaker refused (`UO`).
    Overflow,
    /// Connecting failed (`UF`); the reason as Envoy words it.
    ConnectFailure(String),
    /// Connecting took longer than `connect_timeout` (`UF`).
    ConnectTimeout,
    /// The connection was reset or closed before the response headers (`UC`/`UR`).
    Reset(String),
}

impl UpstreamError {
    /// `UPSTREAM_TRANSPORT_FAILURE_REASON` / the reset reason Envoy reports.
    pub fn reason(&self) -> String {
        match self {
            UpstreamError::Overflow => "overflow".into(),
            UpstreamError::ConnectFailure(r) => r.clone(),
            UpstreamError::ConnectTimeout => "connection timeout".into(),
            UpstreamError::Reset(r) => r.clone(),
        }
    }
}

/// Envoy's wording for a failed connect (`delayed connect error: Connection refused`).
fn connect_reason(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => format!("delayed connect error: {}", strerror(code)),
        None => e.to_string(),
    }
}

/// The C library's message for an errno ("Connection refused").
fn strerror(code: i32) -> String {
    // `io::Error`'s Display is "<message> (os error N)"; keep the message.
    let full = std::io::Error::from_raw_os_error(code).to_string();
    full.split(" (os error").next().unwrap_or(&full).to_owned()
}

/// Connects to `addr` from `bind` (if set) within `timeout`, with `TCP_NODELAY`.
pub async fn connect(
    addr: SocketAddr,
    bind: Option<IpAddr>,
    timeout: Duration,
) -> Result<TcpStream, UpstreamError> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| UpstreamError::ConnectFailure(connect_reason(&e)))?;
    if let Some(ip) = bind {
        // The inbound passthrough binds 127.0.0.6 (and reuses ports across many connections).
        let _ = socket.set_reuseaddr(true);
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| UpstreamError::ConnectFailure(connect_reason(&e)))?;
    }
    let _ = socket.set_nodelay(true);
    match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(UpstreamError::ConnectFailure(connect_reason(&e))),
        Err(_) => Err(UpstreamError::ConnectTimeout),
    }
}

/// Spawns `!Send` futures on the worker's local task set (hyper's executor for HTTP/2).
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: std::future::Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

/// Identifies a pool: one per host, protocol and source address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PoolKey {
    addr: SocketAddr,
    http2: bool,
    bind: Option<IpAddr>,
}

struct H1Conn {
    sender: http1::SendRequest<Body>,
    used: u32,
    /// The connection's source address (`%UPSTREAM_LOCAL_ADDRESS%`).
    local: Option<SocketAddr>,
}

#[derive(Default)]
struct HostPool {
    idle: RefCell<Vec<H1Conn>>,
    h2: RefCell<Option<(http2::SendRequest<Body>, Option<SocketAddr>)>>,
    released: Notify,
}

/// A worker's connection pools. Not shared across threads: each worker has its own, as Envoy's do.
#[derive(Default)]
pub struct Pools {
    /// Looked up per request (foldhash: the keys are upstream addresses from configuration).
    pools: RefCell<HashMap<PoolKey, Rc<HostPool>, foldhash::fast::RandomState>>,
}

/// Holds the host's and cluster's connection counts for the life of a connection.
struct ConnGuard {
    host: Arc<Host>,
    _slot: crate::cluster::Slot,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.host.stats.cx_active.fetch_sub(1, Relaxed);
    }
}

/// Runs a new upstream connection on the worker, holding its counts until it closes.
fn drive(conn: impl std::future::Future + 'static, guard: ConnGuard) {
    tokio::task::spawn_local(async move {
        let _guard = guard;
        let _ = conn.await;
    });
}

impl Pools {
    fn pool(&self, key: &PoolKey) -> Rc<HostPool> {
        if let Some(p) = self.pools.borrow().get(key) {
            return p.clone();
        }
        self.pools.borrow_mut().entry(key.clone()).or_default().clone()
    }

    /// Opens a new connection to `host`, counting it against the cluster's limit. A request that
    /// waits for the connection is "pending" and counted too.
    async fn open(
        &self,
        cluster: &ClusterState,
        host: &Arc<Host>,
    ) -> Result<(TcpStream, ConnGuard), UpstreamError> {
        let _pending = cluster
            .try_acquire(SlotKind::Pending)
            .ok_or(UpstreamError::Overflow)?;
        let slot = cluster
            .try_acquire(SlotKind::Connection)
            .ok_or(UpstreamError::Overflow)?;
        let cfg = &cluster.config;
        cluster.stats.upstream_cx_total.fetch_add(1, Relaxed);
        host.stats.cx_total.fetch_add(1, Relaxed);
        match connect(host.address, cfg.bind_address, cfg.connect_timeout).await {
            Ok(s) => {
                host.stats.cx_active.fetch_add(1, Relaxed);
                Ok((
                    s,
                    ConnGuard {
                        host: host.clone(),
                        _slot: slot,
                    },
                ))
            }
            Err(e) => {
                host.stats.cx_connect_fail.fetch_add(1, Relaxed);
                cluster.stats.upstream_cx_connect_fail.fetch_add(1, Relaxed);
                if e == UpstreamError::ConnectTimeout {
                    cluster.stats.upstream_cx_connect_timeout.fetch_add(1, Relaxed);
                }
                Err(e)
            }
        }
    }

    /// Sends `req` to `host` over a pooled connection and returns the response head.
    pub async fn send(
        &self,
        cluster: &ClusterState,
        host: &Arc<Host>,
        http2: bool,
        req: Request<Body>,
    ) -> Result<(Response<Incoming>, Option<SocketAddr>), UpstreamError> {
        let key = PoolKey {
            addr: host.address,
            http2,
            bind: cluster.config.bind_address,
        };
        let pool = self.pool(&key);
        if http2 {
            self.send_h2(cluster, host, &pool, req).await
        } else {
            self.send_h1(cluster, host, &pool, req).await
        }
    }

    async fn send_h2(
        &self,
        cluster: &ClusterState,
        host: &Arc<Host>,
        pool: &Rc<HostPool>,
        req: Request<Body>,
    ) -> Result<(Response<Incoming>, Option<SocketAddr>), UpstreamError> {
        let existing = pool.h2.borrow().as_ref().filter(|(s, _)| !s.is_closed()).cloned();
        let (mut sender, local) = match existing {
            Some(s) => s,
            // Boxed: connecting is rare, and its state would otherwise make every request's
            // future (which HTTP/2 moves into a task per stream) larger.
            None => Box::pin(self.connect_h2(cluster, host, pool)).await?,
        };
        sender
            .ready()
            .await
            .map_err(|e| UpstreamError::Reset(format!("connection termination: {e}")))?;
        let resp = sender.send_request(req).await.map_err(reset_reason)?;
        Ok((resp, local))
    }

    async fn connect_h2(
        &self,
        cluster: &ClusterState,
        host: &Arc<Host>,
        pool: &Rc<HostPool>,
    ) -> Result<(http2::SendRequest<Body>, Option<SocketAddr>), UpstreamError> {
        let (stream, guard) = self.open(cluster, host).await?;
        let local = stream.local_addr().ok();
        let (sender, conn) = http2::Builder::new(LocalExec)
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(BatchedWrites::new(stream, Batching::On)))
            .await
            .map_err(|e| UpstreamError::Reset(format!("protocol error: {e}")))?;
        drive(conn, guard);
        *pool.h2.borrow_mut() = Some((sender.clone(), local));
        Ok((sender, local))
    }

    async fn connect_h1(&self, cluster: &ClusterState, host: &Arc<Host>) -> Result<H1Conn, UpstreamError> {
        let (stream, guard) = self.open(cluster, host).await?;
        let local = stream.local_addr().ok();
        let (sender, conn) = http1::Builder::new()
            // One `send` per request, as downstream (`http::serve`).
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Reset(format!("protocol error: {e}")))?;
        drive(conn, guard);
        Ok(H1Conn {
            sender,
            used: 0,
            local,
        })
    }

    async fn send_h1(
        &self,
        cluster: &ClusterState,
        host: &Arc<Host>,
        pool: &Rc<HostPool>,
        req: Request<Body>,
    ) -> Result<(Response<Incoming>, Option<SocketAddr>), UpstreamError> {
        let max_uses = cluster.config.max_requests_per_connection.unwrap_or(u32::MAX);
        let mut conn = loop {
            let candidate = pool.idle.borrow_mut().pop();
            match candidate {
                Some(c) if c.sender.is_ready() && !c.sender.is_closed() => break Some(c),
                Some(_) => continue,
                None => break None,
            }
        };
        if conn.is_none()
            && cluster.stats.open_connections.load(Relaxed) >= cluster.config.limits.max_connections
        {
            // At the connection limit: wait (as a pending request) for one to be released.
            let pending = cluster
                .try_acquire(SlotKind::Pending)
                .ok_or(UpstreamError::Overflow)?;
            let waited = tokio::time::timeout(cluster.config.connect_timeout, pool.released.notified()).await;
            drop(pending);
            if waited.is_err() {
                return Err(UpstreamError::Overflow);
            }
            conn = pool.idle.borrow_mut().pop().filter(|c| c.sender.is_ready());
        }
        let mut conn = match conn {
            Some(c) => c,
            // Boxed, as for HTTP/2: a new connection is the rare case.
            None => Box::pin(self.connect_h1(cluster, host)).await?,
        };
        conn.used += 1;
        let local = conn.local;
        let resp = conn.sender.send_request(req).await.map_err(reset_reason)?;
        if conn.used < max_uses {
            if conn.sender.is_ready() {
                // The whole response has been read off the connection already (its body waits
                // in the body channel) and the connection is idle: back to the pool now, as
                // hyper's own client does, without a task per request.
                pool.idle.borrow_mut().push(conn);
                pool.released.notify_one();
                return Ok((resp, local));
            }
            // Back to the pool once this response body has been read.
            let pool = pool.clone();
            tokio::task::spawn_local(async move {
                if conn.sender.ready().await.is_ok() {
                    pool.idle.borrow_mut().push(conn);
                    pool.released.notify_one();
                }
            });
        }
        Ok((resp, local))
    }
}

fn reset_reason(e: hyper::Error) -> UpstreamError {
    if e.is_canceled() || e.is_incomplete_message() || e.is_closed() {
        UpstreamError::Reset("connection termination".into())
    } else if e.is_parse() {
        UpstreamError::Reset("protocol error".into())
    } else {
        UpstreamError::Reset(format!("connection failure: {e}"))
    }
}
