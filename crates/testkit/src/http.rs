//! Real HTTP peers for tests: an echo upstream (hyper, HTTP/1.1 and h2c) that reports what it
//! received and can be told to fail, delay or send big bodies; and a small hyper client.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// What the echo server saw, returned as the JSON body of its default reply.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Echoed {
    pub name: String,
    pub method: String,
    pub path: String,
    pub version: String,
    pub headers: BTreeMap<String, String>,
    pub body_len: usize,
    pub peer: String,
}

/// An upstream that answers with what it received. Request headers steer it:
/// `x-echo-status: 503`, `x-echo-delay-ms: 200`, `x-echo-body-bytes: 1048576`,
/// `x-echo-fail-first: 2` (503 for the first two requests with the same `x-echo-key`).
pub struct Echo {
    pub addr: SocketAddr,
    pub name: String,
    pub connections: Arc<AtomicU64>,
    pub requests: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

type Fails = Arc<Mutex<BTreeMap<String, u64>>>;

async fn reply(
    name: Arc<str>,
    peer: SocketAddr,
    fails: Fails,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if let Some(ms) = h("x-echo-delay-ms").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = h("x-echo-status")
        .and_then(|v| v.parse::<u16>().ok())
        .unwrap_or(200);
    let fail_first = h("x-echo-fail-first")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let key = h("x-echo-key").unwrap_or_default();
    let body_bytes = h("x-echo-body-bytes").and_then(|v| v.parse::<usize>().ok());
    let mut echoed = Echoed {
        name: name.to_string(),
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        version: format!("{:?}", req.version()),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
        body_len: 0,
        peer: peer.to_string(),
    };
    echoed.body_len = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let mut status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    if fail_first > 0 {
        let mut f = fails.lock().unwrap_or_else(|p| p.into_inner());
        let seen = f.entry(key).or_insert(0);
        *seen += 1;
        if *seen <= fail_first {
            status = StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    let body = match body_bytes {
        Some(n) => Bytes::from(vec![b'x'; n]),
        None => Bytes::from(serde_json::to_vec(&echoed).unwrap_or_default()),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        "x-echo-name",
        name.parse().unwrap_or(http::HeaderValue::from_static("echo")),
    );
    resp.headers_mut()
        .insert("server", http::HeaderValue::from_static("echo"));
    resp
}

impl Echo {
    /// Starts on `addr` (port 0 for any) in the calling thread's network namespace.
    pub fn start(name: &str, addr: SocketAddr) -> Echo {
        let listener = std::net::TcpListener::bind(addr).expect("echo bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let connections = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let (c, r) = (connections.clone(), requests.clone());
        let name_arc: Arc<str> = Arc::from(name);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let fails: Fails = Arc::default();
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        accepted = listener.accept() => {
                            let Ok((stream, peer)) = accepted else { continue };
                            c.fetch_add(1, Relaxed);
                            let (name, fails, r) = (name_arc.clone(), fails.clone(), r.clone());
                            tokio::spawn(async move {
                                let svc = hyper::service::service_fn(move |req| {
                                    r.fetch_add(1, Relaxed);
                                    let (name, fails) = (name.clone(), fails.clone());
                                    async move { Ok::<_, Infallible>(reply(name, peer, fails, req).await) }
                                });
                                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                    .serve_connection(TokioIo::new(stream), svc)
                                    .await;
                            });
                        }
                    }
                }
            });
        });
        Echo {
            addr,
            name: name.to_owned(),
            connections,
            requests,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// Starts on 127.0.0.1 with a free port.
    pub fn local(name: &str) -> Echo {
        Echo::start(name, SocketAddr::from(([127, 0, 0, 1], 0)))
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A response as tests look at it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The echo server's report, if this reply came from one.
    pub fn echoed(&self) -> Option<Echoed> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// A blocking HTTP client (hyper underneath) with keep-alive, HTTP/1.1 or h2c prior knowledge.
pub struct Client {
    rt: tokio::runtime::Runtime,
    client:
        hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Client {
    pub fn http1() -> Client {
        Self::build(false)
    }

    pub fn h2c() -> Client {
        Self::build(true)
    }

    fn build(h2: bool) -> Client {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut b = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
        b.http2_only(h2).pool_idle_timeout(Duration::from_secs(30));
        let client = b.build_http();
        Client { rt, client }
    }

    /// Sends a request; `headers` may include `host`.
    pub fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Reply, String> {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|e| e.to_string())?;
        self.rt.block_on(async {
            let resp = tokio::time::timeout(Duration::from_secs(20), self.client.request(req))
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(|e| format!("{e:?}"))?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok(Reply {
                status,
                headers,
                body,
            })
        })
    }

    pub fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
        self.request("GET", url, headers, b"")
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; fine for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}
