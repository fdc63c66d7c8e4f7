//! The floor under Skiff's HTTP data path: the same runtime (one current-thread worker with a
//! `LocalSet`), the same hyper server and client connections and the same kind of per-worker
//! HTTP/1.1 keep-alive pool as `proxy::upstream`, and nothing else: no routing, no header
//! rewriting, no request id, no stats, no access log. Like Skiff, it writes each HTTP/1.1
//! message with one `send` (hyper's `writev(false)`). `bench/proxy.py --targets hyper-floor`
//! runs it beside Skiff, so the benchmark can say how much of Skiff's cost per request is its
//! own and how much is hyper's and tokio's.
//!
//! Usage: `hyper_floor LISTEN_ADDR UPSTREAM_ADDR` (both `ip:port`).

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;

#[derive(Clone, Copy)]
struct LocalExec;

impl<F: std::future::Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

/// Idle keep-alive connections to the one upstream.
struct Pool {
    upstream: SocketAddr,
    idle: RefCell<Vec<http1::SendRequest<Body>>>,
}

impl Pool {
    async fn send(self: &Rc<Self>, req: Request<Body>) -> Result<Response<Incoming>, BoxError> {
        let idle = loop {
            match self.idle.borrow_mut().pop() {
                Some(s) if s.is_ready() => break Some(s),
                Some(_) => continue,
                None => break None,
            }
        };
        let mut sender = match idle {
            Some(s) => s,
            None => {
                let stream = TcpStream::connect(self.upstream).await?;
                stream.set_nodelay(true)?;
                let (sender, conn) = http1::Builder::new()
                    .writev(false)
                    .handshake(TokioIo::new(stream))
                    .await?;
                tokio::task::spawn_local(conn);
                sender
            }
        };
        let resp = sender.send_request(req).await?;
        if sender.is_ready() {
            self.idle.borrow_mut().push(sender);
        } else {
            let pool = self.clone();
            tokio::task::spawn_local(async move {
                if sender.ready().await.is_ok() {
                    pool.idle.borrow_mut().push(sender);
                }
            });
        }
        Ok(resp)
    }
}

async fn forward(pool: Rc<Pool>, req: Request<Incoming>) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    if parts.version == hyper::Version::HTTP_2 {
        // HTTP/1.1 upstream: origin-form target and a Host header, as any proxy must send.
        if let Some(authority) = parts.uri.authority() {
            if let Ok(host) = hyper::header::HeaderValue::from_str(authority.as_str()) {
                parts.headers.insert(hyper::header::HOST, host);
            }
        }
        if let Some(pq) = parts.uri.path_and_query() {
            if let Ok(uri) = pq.as_str().parse() {
                parts.uri = uri;
            }
        }
        parts.version = hyper::Version::HTTP_11;
    }
    let req = Request::from_parts(parts, body.map_err(BoxError::from).boxed_unsync());
    match pool.send(req).await {
        Ok(resp) => resp.map(|b| b.map_err(BoxError::from).boxed_unsync()),
        Err(_) => {
            let mut r = Response::new(Body::default());
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r
        }
    }
}

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        return Err("usage: hyper_floor LISTEN_ADDR UPSTREAM_ADDR".into());
    };
    let listen: SocketAddr = listen.parse()?;
    let upstream: SocketAddr = upstream.parse()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let pool = Rc::new(Pool {
            upstream,
            idle: RefCell::new(Vec::new()),
        });
        let listener = TcpListener::bind(listen).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let pool = pool.clone();
            tokio::task::spawn_local(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let pool = pool.clone();
                    async move { Ok::<_, Infallible>(forward(pool, req).await) }
                });
                let mut builder = hyper_util::server::conn::auto::Builder::new(LocalExec);
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .writev(false)
                    .keep_alive(true);
                builder.http2().timer(TokioTimer::new());
                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    })
}
