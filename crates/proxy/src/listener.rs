//! Listeners at run time: binding (one `SO_REUSEPORT` socket per worker, as Envoy does), the
//! accept loop, the `use_original_dst` hand-off to the listener of the original destination,
//! listener-filter sniffing, and dispatch to the chosen filter chain.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::access_log::{self, LogRecord, ResponseFlags};
use crate::detect::{self, Sniffed};
use crate::filter_chain::{self, ConnInfo};
use crate::model::{Direction, Listener, NetworkFilter};
use crate::worker::Worker;

/// What is known about a downstream connection once its listener and chain are chosen.
#[derive(Clone, Debug)]
pub struct ConnMeta {
    pub id: u64,
    /// The listener whose filter chain serves the connection.
    pub listener: Arc<str>,
    pub direction: Direction,
    /// The original destination (or the listener address).
    pub destination: SocketAddr,
    pub peer: SocketAddr,
    pub server_name: Option<String>,
    /// TLS was terminated on this connection (downstream `https`).
    pub tls: bool,
    /// The negotiated TLS version (`TLSv1.3`), for `%DOWNSTREAM_TLS_VERSION%`.
    pub tls_version: Option<&'static str>,
}

static CONNECTION_IDS: AtomicU64 = AtomicU64::new(1);

/// Binds a listening socket the way Envoy does for a worker.
pub fn bind(addr: SocketAddr, transparent: bool) -> io::Result<TcpListener> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if transparent {
        if addr.is_ipv4() {
            socket.set_ip_transparent_v4(true)?;
        } else {
            socket.set_ip_transparent_v6(true)?;
        }
    }
    if addr.is_ipv6() {
        socket.set_only_v6(!addr.ip().is_unspecified())?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Accepts connections until `stop` fires.
pub async fn accept_loop(worker: Rc<Worker>, name: String, listener: TcpListener, stop: Rc<Notify>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let w = worker.clone();
                    let n = name.clone();
                    tokio::task::spawn_local(async move { handle(w, n, stream, peer).await });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = stop.notified() => return,
        }
    }
}

/// Peeks until the listener filters can decide (or the timeout passes).
async fn sniff(stream: &TcpStream, l: &Listener) -> Option<Sniffed> {
    let deadline = Instant::now() + l.listener_filters_timeout.min(Duration::from_secs(3600));
    let mut buf = vec![0u8; 16 * 1024];
    let mut have = 0usize;
    loop {
        let verdict = detect::sniff(&buf[..have], l.tls_inspector, l.http_inspector);
        if verdict != Sniffed::NeedMore {
            return Some(verdict);
        }
        if have == buf.len() {
            return Some(Sniffed::Other);
        }
        let wait = stream.async_io(Interest::READABLE, || {
            let sock = socket2::SockRef::from(stream);
            // SAFETY: recv only writes initialised bytes into the slice.
            let uninit = unsafe { &mut *(&mut buf[..] as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
            match sock.peek(uninit) {
                // Wake only when there is more than before (or EOF).
                Ok(0) => Ok(0),
                Ok(n) if n > have => Ok(n),
                Ok(_) => Err(io::ErrorKind::WouldBlock.into()),
                Err(e) => Err(e),
            }
        });
        match tokio::time::timeout_at(deadline.into(), wait).await {
            Ok(Ok(0)) => return Some(Sniffed::Other),
            Ok(Ok(n)) => have = n,
            Ok(Err(_)) => return None,
            Err(_) => {
                return if l.continue_on_listener_filters_timeout {
                    Some(Sniffed::Other)
                } else {
                    None
                };
            }
        }
    }
}

/// Serves one accepted connection.
async fn handle(worker: Rc<Worker>, name: String, stream: TcpStream, peer: SocketAddr) {
    let _gauge = crate::stats::ConnGauge::new();
    let snap = worker.snapshot();
    let Some(receiving) = snap.listener(&name).cloned() else {
        return;
    };
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let mut listener = receiving.clone();
    let mut destination = local;
    if receiving.restore_original_dst {
        // REDIRECT: SO_ORIGINAL_DST; TPROXY (or no capture): the local address already is it.
        destination = capture::original_dst(&stream).unwrap_or(local);
    }
    if receiving.use_original_dst {
        if let Some(target) = snap.listener_for(destination) {
            if target.name != receiving.name {
                listener = target.clone();
            }
        }
    }
    let sniffed =
        if listener.needs_sniffing() || (receiving.needs_sniffing() && Arc::ptr_eq(&listener, &receiving)) {
            match sniff(&stream, &listener).await {
                Some(s) => s,
                None => return,
            }
        } else {
            Sniffed::Other
        };
    let (transport, server_name, alpn) = match sniffed {
        Sniffed::Tls { server_name, alpn } => ("tls", server_name, alpn),
        Sniffed::Http(p) => ("raw_buffer", None, vec![p.to_string()]),
        _ => ("raw_buffer", None, Vec::new()),
    };
    let info = ConnInfo {
        destination,
        source: peer,
        direct_source: peer,
        server_name: server_name.as_deref(),
        transport_protocol: transport,
        application_protocols: &alpn,
    };
    let id = CONNECTION_IDS.fetch_add(1, Relaxed);
    let Some(chain) = filter_chain::select(&listener, &info) else {
        debug!(listener = %listener.name, %destination, "no filter chain matches; closing");
        let mut rec = LogRecord::new(destination, peer);
        rec.start_time = SystemTime::now();
        rec.flags.insert(ResponseFlags::NR);
        rec.connection_termination_details = Some("filter_chain_not_found".into());
        rec.connection_id = id;
        access_log::emit(&listener.access_logs, &rec);
        return;
    };
    let mut meta = ConnMeta {
        id,
        listener: Arc::from(listener.name.as_str()),
        direction: listener.direction,
        destination,
        peer,
        server_name,
        tls: false,
        tls_version: None,
    };
    let Some(ctx) = &chain.tls else {
        return match &chain.filter {
            NetworkFilter::Tcp(tp) => crate::tcp::proxy(tp.clone(), snap.clone(), stream, meta).await,
            NetworkFilter::Http(hcm) => {
                crate::http::serve(worker.clone(), hcm.clone(), stream, meta, None).await
            }
        };
    };
    // The server was built with this snapshot; a chain without one has no context at all.
    let Some(server) = snap.tls(ctx) else {
        debug!(listener = %listener.name, "TLS chain without a server context; closing");
        return;
    };
    let Some((tls, negotiated)) = crate::tls::accept(server, stream, peer).await else {
        return;
    };
    meta.tls = true;
    meta.tls_version = negotiated.version;
    if meta.server_name.is_none() {
        meta.server_name = negotiated.server_name;
    }
    match &chain.filter {
        NetworkFilter::Tcp(tp) => crate::tcp::proxy(tp.clone(), snap.clone(), tls, meta).await,
        NetworkFilter::Http(hcm) => {
            let alpn = negotiated.alpn.as_deref().map(|p| p == b"h2");
            crate::http::serve(worker.clone(), hcm.clone(), tls, meta, alpn).await
        }
    }
}
