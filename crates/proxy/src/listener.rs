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
use crate::model::{Codec, Direction, Listener, NetworkFilter};
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

/// Peeks the connection's first bytes into `buf` (nothing is consumed), waiting until there are
/// more than `have` of them; 0 at end of stream. `have` must be below `buf.len()`.
async fn peek_more(stream: &TcpStream, buf: &mut [u8], have: usize) -> io::Result<usize> {
    stream
        .async_io(Interest::READABLE, || {
            let sock = socket2::SockRef::from(stream);
            // SAFETY: recv only writes initialised bytes into the slice.
            let uninit = unsafe { &mut *(&mut *buf as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
            match sock.peek(uninit) {
                // Wake only when there is more than before (or EOF).
                Ok(n) if n == 0 || n > have => Ok(n),
                Ok(_) => Err(io::ErrorKind::WouldBlock.into()),
                Err(e) => Err(e),
            }
        })
        .await
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
        match tokio::time::timeout_at(deadline.into(), peek_more(stream, &mut buf, have)).await {
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

/// Whether a plaintext connection opens with the HTTP/2 preface; `None` if the client has not
/// said within `wait` (hyper's own detection and header timeout take over).
async fn h2_prior_knowledge(stream: &TcpStream, wait: Duration) -> Option<bool> {
    let mut buf = [0u8; 24];
    let mut have = 0usize;
    let peek = async {
        loop {
            if let Some(h2) = detect::h2_preface(&buf[..have]) {
                return Some(h2);
            }
            match peek_more(stream, &mut buf, have).await {
                // Closed before a request: HTTP/1.1 handles that quietly.
                Ok(0) => return Some(false),
                Ok(n) => have = n,
                Err(_) => return None,
            }
        }
    };
    tokio::time::timeout(wait, peek).await.ok().flatten()
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
        rec.start_time = Some(SystemTime::now());
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
                // The codec is chosen before serving (see `http::serve`): from the HTTP inspector
                // if the listener has one, else from the first bytes.
                let h2 = match (hcm.codec, alpn.first().map(String::as_str)) {
                    (Codec::Auto, Some("h2c")) => Some(true),
                    (Codec::Auto, Some(_)) => Some(false),
                    (Codec::Auto, None) => h2_prior_knowledge(&stream, hcm.header_timeout()).await,
                    _ => None,
                };
                crate::http::serve(worker.clone(), hcm.clone(), stream, meta, h2).await
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// What `h2_prior_knowledge` decides for a client that sends `pieces` (with a pause between
    /// them) and then either closes or stays silent.
    async fn decide(pieces: &[&'static [u8]], close: bool, wait: Duration) -> Option<bool> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let pieces = pieces.to_vec();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            for p in pieces {
                c.write_all(p).await.expect("write");
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            if !close {
                tokio::time::sleep(wait * 2).await;
            }
        });
        let (server, _) = listener.accept().await.expect("accept");
        let decided = h2_prior_knowledge(&server, wait).await;
        client.abort();
        decided
    }

    #[tokio::test]
    async fn the_codec_is_chosen_from_the_first_bytes() {
        let long = Duration::from_secs(5);
        let preface: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        assert_eq!(decide(&[preface], false, long).await, Some(true));
        assert_eq!(
            decide(&[&preface[..7], &preface[7..]], false, long).await,
            Some(true),
            "in pieces"
        );
        assert_eq!(
            decide(&[b"GET / HTTP/1.1\r\n\r\n"], false, long).await,
            Some(false)
        );
        assert_eq!(decide(&[b"PRI / HTTP/1.1"], false, long).await, Some(false));
        assert_eq!(decide(&[], true, long).await, Some(false), "closed before a byte");
        let short = Duration::from_millis(100);
        assert_eq!(
            decide(&[b"PRI"], false, short).await,
            None,
            "silent after a prefix"
        );
    }

    #[tokio::test]
    async fn peeking_leaves_the_bytes_for_the_codec() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
            c
        });
        let (mut server, _) = listener.accept().await.expect("accept");
        assert_eq!(
            h2_prior_knowledge(&server, Duration::from_secs(5)).await,
            Some(false)
        );
        let mut got = vec![0u8; 18];
        tokio::io::AsyncReadExt::read_exact(&mut server, &mut got)
            .await
            .expect("read");
        assert_eq!(got, b"GET / HTTP/1.1\r\n\r\n");
        drop(client.await);
    }
}
