//! The injection webhook over HTTPS: `POST /inject` with an AdmissionReview, as istiod serves it
//! on 15017. The certificate is re-read when its files change (cert-manager and Kubernetes
//! Secret volumes replace them in place), so rotation needs no restart.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::settings::Settings;
use crate::webhook;

/// AdmissionReviews are bounded by etcd's object size; anything much larger is not one.
const MAX_BODY: usize = 16 << 20;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot load the webhook certificate {path}: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

fn cert_error(path: &Path, reason: impl fmt::Display) -> ServerError {
    ServerError::Certificate {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Reads a PEM certificate chain and its private key, and checks that they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, ServerError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_error(cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(cert, e))?;
    if chain.is_empty() {
        return Err(cert_error(cert, "no PEM CERTIFICATE block found"));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| cert_error(key, e))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&private).map_err(|e| cert_error(key, e))?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|e| {
        cert_error(
            key,
            format!("does not match the certificate in {}: {e}", cert.display()),
        )
    })?;
    Ok(certified)
}

/// Identity of the files' current contents, cheap enough to check on every handshake.
type Stamp = [(Option<SystemTime>, u64); 2];

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let one = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| (m.modified().ok(), m.len()))
            .unwrap_or((None, 0))
    };
    [one(cert), one(key)]
}

struct Loaded {
    key: Arc<CertifiedKey>,
    /// Stamp of the files `key` came from, and of the last reload attempt.
    loaded: Stamp,
    attempted: Stamp,
}

/// Serves the certificate from files, reloading it when they change. A broken replacement
/// (half-written, key and cert mismatched) is logged and the last good certificate stays.
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    state: RwLock<Loaded>,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

impl ReloadingCert {
    pub fn new(cert: PathBuf, key: PathBuf) -> Result<Self, ServerError> {
        let s = stamp(&cert, &key);
        let loaded = Arc::new(load_certified_key(&cert, &key)?);
        Ok(ReloadingCert {
            cert,
            key,
            state: RwLock::new(Loaded {
                key: loaded,
                loaded: s,
                attempted: s,
            }),
        })
    }

    /// The current certificate, reloaded first if the files changed since the last attempt.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let now = stamp(&self.cert, &self.key);
        {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            if state.attempted == now {
                return state.key.clone();
            }
        }
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if state.attempted != now {
            state.attempted = now;
            match load_certified_key(&self.cert, &self.key) {
                Ok(k) => {
                    state.key = Arc::new(k);
                    state.loaded = now;
                    tracing::info!(cert = %self.cert.display(), "webhook certificate reloaded");
                }
                Err(e) => tracing::warn!(error = %e, "keeping the previous webhook certificate"),
            }
        }
        state.key.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// TLS settings: TLS 1.2+ with the ring provider, HTTP/2 and HTTP/1.1 by ALPN (the API server
/// may use either).
pub fn tls_config(cert: Arc<ReloadingCert>) -> Result<rustls::ServerConfig, ServerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| cert_error(&cert.cert, e))?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.into() + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    r
}

/// One HTTP request. Answers as istiod does: 404 off `/inject`, 415 without a JSON content
/// type, 400 for a body that is not an AdmissionReview, else 200 with the review response.
pub async fn handle(
    req: Request<Incoming>,
    settings: Arc<Settings>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    if path != "/inject" && !path.starts_with("/inject/") {
        return Ok(text(
            StatusCode::NOT_FOUND,
            format!("no handler for {path}; the webhook serves POST /inject"),
        ));
    }
    if req.method() != Method::POST {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "the webhook accepts POST only",
        ));
    }
    let json = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim() == "application/json")
        .unwrap_or(false);
    if !json {
        return Ok(text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid Content-Type, want `application/json`",
        ));
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Ok(text(
                StatusCode::BAD_REQUEST,
                format!("cannot read request body: {e}"),
            ))
        }
    };
    if body.is_empty() {
        return Ok(text(StatusCode::BAD_REQUEST, "no body found"));
    }
    match webhook::review(&body, &settings) {
        Ok(review) => {
            let mut r = Response::new(Full::new(Bytes::from(review.to_string())));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            Ok(r)
        }
        Err(e) => {
            tracing::warn!(error = %e, "bad admission request");
            Ok(text(StatusCode::BAD_REQUEST, e.to_string()))
        }
    }
}

/// A bound webhook server; [`WebhookServer::run`] serves until `shutdown` completes.
pub struct WebhookServer {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    settings: Arc<Settings>,
}

impl WebhookServer {
    pub async fn bind(
        addr: SocketAddr,
        cert: &Path,
        key: &Path,
        settings: Settings,
    ) -> Result<Self, ServerError> {
        let certs = Arc::new(ReloadingCert::new(cert.to_path_buf(), key.to_path_buf())?);
        let acceptor = TlsAcceptor::from(Arc::new(tls_config(certs)?));
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        Ok(WebhookServer {
            listener,
            acceptor,
            settings: Arc::new(settings),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                _ = &mut shutdown => return,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let acceptor = self.acceptor.clone();
            let settings = self.settings.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
                let service = hyper::service::service_fn(move |req| handle(req, settings.clone()));
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
    }
}
