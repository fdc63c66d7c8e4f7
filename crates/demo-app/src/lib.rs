//! `skiff-agent demo-app`: the small HTTP app the walkthroughs run where a pod's image would be
//! nginx or an httpbin-like demo. HTTP/1.1 and h2c (prior knowledge) on one port; `/` names the
//! pod and version so canary splits show in `curl` output; httpbin-style `/headers`,
//! `/status/CODE`, `/delay/SECONDS`, `/ip`; one nginx-format access-log line per request on stdout,
//! so the seeds' `k logs` lines (source `127.0.0.6` behind a sidecar) read the same.
//!
//! It identifies itself honestly (`server: skiff-demo-app`).

mod access_log;
mod routes;

use std::convert::Infallible;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, REFERER, SERVER, USER_AGENT};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub use access_log::{format as format_access_log, Entry as AccessLogEntry};
pub use routes::{identity, MAX_DELAY};

/// The flags of `skiff-agent demo-app`.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct DemoAppArgs {
    /// Port(s) to listen on: repeat the flag or give a comma list (`--port 80,8080`).
    #[arg(long = "port", short = 'p', value_delimiter = ',', default_value = "80", num_args = 1..)]
    pub ports: Vec<u16>,
    /// Name shown by `/` [default: $POD_NAME, else $HOSTNAME, else the host name].
    #[arg(long)]
    pub name: Option<String>,
    /// Version shown by `/`, e.g. v1 or v2 of a canary [default: $VERSION].
    #[arg(long)]
    pub version: Option<String>,
    /// What `/` answers instead of the default page (HTML if it starts with `<`, else text).
    #[arg(long)]
    pub body: Option<String>,
    /// The status code `/` answers with (e.g. 503 for a version that fails).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(200..=599))]
    pub status: u16,
    /// `/` answers these codes in turn, one per request (`503,503,200`: two failures, then a
    /// success), so retries have something to recover from, deterministically.
    #[arg(long = "status-cycle", value_delimiter = ',', value_parser = clap::value_parser!(u16).range(200..=599))]
    pub status_cycle: Vec<u16>,
    /// Listen on this address only [default: every IPv4 and IPv6 address].
    #[arg(long)]
    pub address: Option<IpAddr>,
}

/// The app's settings with defaults resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub ports: Vec<u16>,
    pub name: String,
    pub version: Option<String>,
    pub body: Option<String>,
    pub status: StatusCode,
    /// Overrides `status` for `/`, request by request, in a cycle.
    pub status_cycle: Vec<StatusCode>,
    pub address: Option<IpAddr>,
}

/// Why the app could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--status {0}: give a final status code, 200-599")]
    Status(u16),
    #[error("no --port given")]
    NoPort,
    #[error("cannot listen on {addr}: {source} (is another server on that port, or is it below 1024 without root?)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl DemoAppArgs {
    /// Resolves defaults from the process environment (as a pod's env would set them).
    pub fn config(&self) -> Result<Config, Error> {
        self.config_with_env(|var| std::env::var(var).ok())
    }

    /// Resolves defaults from `env`: `--name` falls back to `POD_NAME`, `HOSTNAME`, then the
    /// kernel's host name; `--version` to `VERSION`.
    pub fn config_with_env(&self, env: impl Fn(&str) -> Option<String>) -> Result<Config, Error> {
        let non_empty = |v: Option<String>| v.filter(|s| !s.is_empty());
        let name = non_empty(self.name.clone())
            .or_else(|| non_empty(env("POD_NAME")))
            .or_else(|| non_empty(env("HOSTNAME")))
            .or_else(|| {
                non_empty(
                    std::fs::read_to_string("/proc/sys/kernel/hostname")
                        .ok()
                        .map(|h| h.trim().to_owned()),
                )
            })
            .unwrap_or_else(|| "demo-app".to_owned());
        let status = match StatusCode::from_u16(self.status) {
            Ok(s) if (200..=599).contains(&self.status) => s,
            _ => return Err(Error::Status(self.status)),
        };
        if self.ports.is_empty() {
            return Err(Error::NoPort);
        }
        let status_cycle = self
            .status_cycle
            .iter()
            .map(|&c| StatusCode::from_u16(c).map_err(|_| Error::Status(c)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Config {
            ports: self.ports.clone(),
            name,
            version: non_empty(self.version.clone()).or_else(|| non_empty(env("VERSION"))),
            body: self.body.clone(),
            status,
            status_cycle,
            address: self.address,
        })
    }
}

/// The app with its sockets bound, ready to serve.
pub struct DemoApp {
    config: Arc<Config>,
    listeners: Vec<TcpListener>,
}

impl DemoApp {
    /// Binds every port: on `--address`, else on `[::]` accepting IPv4 too (nginx's `listen 80;
    /// listen [::]:80;`), falling back to `0.0.0.0` where IPv6 is off. Port 0 picks a free port
    /// (see [`DemoApp::local_addrs`]). Must run inside a tokio runtime.
    pub fn bind(config: Config) -> Result<Self, Error> {
        let mut listeners = Vec::new();
        for &port in &config.ports {
            let std_listener = match config.address {
                Some(ip) => listen(SocketAddr::new(ip, port), false),
                None => listen(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port), true)
                    .or_else(|_| listen(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port), false)),
            }?;
            let addr = std_listener
                .local_addr()
                .unwrap_or(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port));
            listeners
                .push(TcpListener::from_std(std_listener).map_err(|source| Error::Bind { addr, source })?);
        }
        Ok(Self {
            config: Arc::new(config),
            listeners,
        })
    }

    /// Where the app listens (ports resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Serves until the future is dropped.
    pub async fn serve(self) {
        let mut tasks = tokio::task::JoinSet::new();
        // Requests to `/` so far, on every port: the position in `--status-cycle`.
        let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for listener in self.listeners {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, name = %self.config.name, version = self.config.version.as_deref().unwrap_or("-"), "demo-app listening");
            }
            tasks.spawn(accept_loop(listener, self.config.clone(), served.clone()));
        }
        while tasks.join_next().await.is_some() {}
    }
}

fn listen(addr: SocketAddr, dual_stack: bool) -> Result<std::net::TcpListener, Error> {
    use socket2::{Domain, Socket, Type};
    let bind = || -> std::io::Result<std::net::TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        if dual_stack {
            socket.set_only_v6(false)?;
        }
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        Ok(socket.into())
    };
    bind().map_err(|source| Error::Bind { addr, source })
}

async fn accept_loop(
    listener: TcpListener,
    config: Arc<Config>,
    served: Arc<std::sync::atomic::AtomicUsize>,
) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let config = config.clone();
        let served = served.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            // A v4 client on the dual-stack socket shows as ::ffff:a.b.c.d; log it as nginx does.
            let peer = peer.ip().to_canonical();
            let service =
                hyper::service::service_fn(move |req| handle(config.clone(), served.clone(), peer, req));
            if let Err(error) = builder.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
}

async fn handle(
    config: Arc<Config>,
    served: Arc<std::sync::atomic::AtomicUsize>,
    peer: IpAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, _body) = req.into_parts();
    let view = routes::RequestView {
        method: &parts.method,
        path: parts.uri.path(),
        headers: &parts.headers,
        authority: parts.uri.authority().map(|a| a.as_str()),
        peer,
    };
    let mut reply = routes::route(&config, &view, |n| fastrand::usize(..n.max(1)));
    if !config.status_cycle.is_empty() && matches!(view.path, "/" | "/index.html") {
        let i = served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        reply.status = config.status_cycle[i % config.status_cycle.len()];
    }
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }

    let head = parts.method == Method::HEAD;
    let length = reply.body.len();
    let mut response = Response::new(Full::new(if head { Bytes::new() } else { reply.body }));
    *response.status_mut() = reply.status;
    let headers = response.headers_mut();
    headers.insert(SERVER, HeaderValue::from_static("skiff-demo-app"));
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    // Canary splits show in `curl -sI` too, where there is no body.
    if let Some(v) = config
        .version
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        headers.insert("x-demo-version", v);
    }
    if let Ok(v) = HeaderValue::from_str(&config.name) {
        headers.insert("x-demo-name", v);
    }

    let target = if parts.version == Version::HTTP_2 {
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into())
    } else {
        parts.uri.to_string()
    };
    let request_line = format!("{} {} {:?}", parts.method, target, parts.version);
    let header = |name| {
        parts
            .headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let line = access_log::format(&access_log::Entry {
        remote_addr: peer,
        request: &request_line,
        status: reply.status.as_u16(),
        body_bytes_sent: if head { 0 } else { length as u64 },
        referer: header(REFERER),
        user_agent: header(USER_AGENT),
        x_forwarded_for: header(http::HeaderName::from_static("x-forwarded-for")),
        time: access_log::now(),
    });
    let _ = writeln!(std::io::stdout().lock(), "{line}");
    Ok(response)
}

/// Runs the app until SIGTERM or SIGINT; the process exit code (0 on a signal, 1 if it cannot
/// start).
pub fn run(args: &DemoAppArgs) -> u8 {
    let config = match args.config() {
        Ok(c) => c,
        Err(error) => {
            tracing::error!("{error}");
            return 1;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(error) => {
            tracing::error!(%error, "cannot start the runtime");
            return 1;
        }
    };
    runtime.block_on(async move {
        let app = match DemoApp::bind(config) {
            Ok(app) => app,
            Err(error) => {
                tracing::error!("{error}");
                return 1;
            }
        };
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(error) => {
                tracing::error!(%error, "cannot watch SIGTERM");
                return 1;
            }
        };
        tokio::select! {
            _ = app.serve() => 0,
            _ = term.recv() => 0,
            _ = tokio::signal::ctrl_c() => 0,
        }
    })
}
