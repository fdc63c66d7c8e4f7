//! `skiffd`'s monitoring port (istiod's 15014): `/metrics` (Prometheus text), `/ready`, and
//! `/debug/syncz` (each proxy's CDS/LDS/EDS/RDS/ECDS sync state, what `proxy-status` prints) and
//! `/debug/registryz` (the registry's current problems).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::discovery::Discovery;

/// What the monitoring endpoints read.
pub struct Monitor {
    pub registry: Mutex<Registry>,
    pub ready: AtomicBool,
    pub syncz: Box<dyn Fn() -> serde_json::Value + Send + Sync>,
    pub discovery: Arc<Discovery>,
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

impl Monitor {
    fn handle(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        match req.uri().path() {
            "/metrics" | "/stats/prometheus" => {
                let mut text = String::new();
                let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
                match prometheus_client::encoding::text::encode(&mut text, &registry) {
                    Ok(()) => reply(
                        StatusCode::OK,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        text,
                    ),
                    Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", e.to_string()),
                }
            }
            "/ready" => {
                if self.ready.load(Ordering::Relaxed) {
                    reply(StatusCode::OK, "text/plain", "")
                } else {
                    reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        "registry not synced yet\n",
                    )
                }
            }
            "/debug/syncz" => reply(
                StatusCode::OK,
                "application/json",
                serde_json::to_string_pretty(&(self.syncz)()).unwrap_or_default(),
            ),
            "/debug/registryz" => {
                let snap = self.discovery.snapshot();
                let services: Vec<serde_json::Value> = snap
                    .services
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "hostname": s.hostname,
                            "vip": s.vip.map(|v| v.to_string()),
                            "ports": s.ports.iter().map(|p| serde_json::json!({
                                "name": p.name, "port": p.port, "protocol": format!("{:?}", p.protocol),
                            })).collect::<Vec<_>>(),
                            "endpoints": s.endpoints.iter().filter(|e| e.ready)
                                .map(|e| format!("{}:{}", e.ip, e.port)).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                let body = serde_json::json!({"services": services, "problems": snap.problems});
                reply(
                    StatusCode::OK,
                    "application/json",
                    serde_json::to_string_pretty(&body).unwrap_or_default(),
                )
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: try /metrics, /ready, /debug/syncz, /debug/registryz\n",
            ),
        }
    }

    /// Serves until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("monitoring accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let me = self.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let resp = me.handle(&req);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }
}
