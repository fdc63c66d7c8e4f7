//! The Kubernetes source against an API server played back by the test: real HTTP (hyper) on
//! loopback answering kube-rs' list and watch requests with recorded response shapes. The
//! Services' script covers a watch that ends in `410 Gone` (relist, and an object that vanished
//! meanwhile is deleted), a bookmark, a dropped stream (the watch resumes from the last
//! resourceVersion, no relist), a bad object (reported, skipped) and CRDs that are not installed
//! (404: nothing to watch, the source still syncs). Run with `--features kubernetes`.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use pilot::registry::kube::KubeSource;
use pilot::registry::{Event, Source};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

type Body = BoxBody<Bytes, std::io::Error>;
type FrameSender = mpsc::UnboundedSender<Result<Frame<Bytes>, std::io::Error>>;

fn service(name: &str, rv: u32, port: u32) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                     "resourceVersion": rv.to_string(), "creationTimestamp": "2022-01-01T11:40:31Z"},
        "spec": {"clusterIP": "10.100.93.113", "clusterIPs": ["10.100.93.113"], "type": "ClusterIP",
                 "sessionAffinity": "None", "selector": {"app": name},
                 "ports": [{"name": "http", "protocol": "TCP", "port": port, "targetPort": 80}]},
        "status": {"loadBalancer": {}}
    })
}

fn list(kind: &str, rv: u32, items: Vec<serde_json::Value>) -> Body {
    let body = serde_json::json!({
        "kind": format!("{kind}List"), "apiVersion": "v1",
        "metadata": {"resourceVersion": rv.to_string()}, "items": items
    });
    Full::new(Bytes::from(body.to_string()))
        .map_err(|e| match e {})
        .boxed()
}

fn watch_event(kind: &str, object: serde_json::Value) -> Bytes {
    let mut object = object;
    object["kind"] = "Service".into();
    object["apiVersion"] = "v1".into();
    Bytes::from(format!(
        "{}\n",
        serde_json::json!({"type": kind, "object": object})
    ))
}

fn bookmark(rv: u32) -> Bytes {
    Bytes::from(format!(
        "{}\n",
        serde_json::json!({"type": "BOOKMARK", "object": {"kind": "Service", "apiVersion": "v1",
            "metadata": {"resourceVersion": rv.to_string()}}})
    ))
}

fn gone() -> Bytes {
    Bytes::from(format!(
        "{}\n",
        serde_json::json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": "too old resource version: 100 (150)", "reason": "Expired", "code": 410}})
    ))
}

/// How a streamed watch response ends: cleanly, with a dropped connection, or not at all.
enum End {
    Clean,
    Abort,
    Hold,
}

struct Script {
    requests: Mutex<Vec<String>>,
    counters: Mutex<HashMap<String, u32>>,
    held: Mutex<Vec<FrameSender>>,
}

impl Script {
    fn stream(&self, frames: Vec<Bytes>, end: End) -> Body {
        let (tx, rx) = mpsc::unbounded_channel();
        for f in frames {
            tx.send(Ok(Frame::data(f))).unwrap();
        }
        match end {
            End::Clean => drop(tx),
            End::Abort => {
                // After the events reached the client, as a real connection loss would.
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let _ = tx.send(Err(std::io::Error::other("connection dropped")));
                });
            }
            End::Hold => self.held.lock().unwrap().push(tx),
        }
        StreamBody::new(UnboundedReceiverStream::new(rx)).boxed()
    }

    fn answer(&self, req: &Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        self.requests.lock().unwrap().push(format!("{path}?{query}"));
        let watch = query.contains("watch=true");
        let n = {
            let mut c = self.counters.lock().unwrap();
            let e = c.entry(format!("{path} {watch}")).or_insert(0);
            *e += 1;
            *e
        };
        if path.starts_with("/apis/networking.istio.io/") {
            let status = serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": "the server could not find the requested resource",
                "reason": "NotFound", "details": {}, "code": 404});
            let mut r = Response::new(
                Full::new(Bytes::from(status.to_string()))
                    .map_err(|e| match e {})
                    .boxed(),
            );
            *r.status_mut() = hyper::StatusCode::NOT_FOUND;
            return r;
        }
        let body = match (path.as_str(), watch, n) {
            ("/api/v1/services", false, 1) => {
                let mut broken = service("broken", 95, 80);
                broken["spec"]["ports"] = serde_json::json!([
                    {"name": "http", "port": 80}, {"name": "http2", "port": 80}
                ]);
                list("Service", 100, vec![service("nginx", 90, 80), broken])
            }
            ("/api/v1/services", true, 1) => self.stream(
                vec![
                    watch_event("ADDED", service("httpbin", 101, 80)),
                    bookmark(105),
                    gone(),
                ],
                End::Clean,
            ),
            ("/api/v1/services", false, 2) => list("Service", 200, vec![service("httpbin", 101, 80)]),
            ("/api/v1/services", true, 2) => self.stream(
                vec![watch_event("MODIFIED", service("httpbin", 201, 81))],
                End::Abort,
            ),
            ("/api/v1/services", true, 3) => self.stream(
                vec![watch_event("DELETED", service("httpbin", 202, 81))],
                End::Hold,
            ),
            (_, false, _) => {
                let kind = path.rsplit('/').next().unwrap_or("Object").to_owned();
                list(&kind, 1, Vec::new())
            }
            (_, true, _) => self.stream(Vec::new(), End::Hold),
        };
        let mut r = Response::new(body);
        r.headers_mut()
            .insert(hyper::header::CONTENT_TYPE, "application/json".parse().unwrap());
        r
    }
}

async fn api_server() -> (String, Arc<Script>) {
    let script = Arc::new(Script {
        requests: Mutex::new(Vec::new()),
        counters: Mutex::new(HashMap::new()),
        held: Mutex::new(Vec::new()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let s = script.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let r = s.answer(&req);
                    async move { Ok::<_, Infallible>(r) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (url, script)
}

fn describe(e: &Event) -> String {
    match e {
        Event::Added(o) => format!("+{}", o.key()),
        Event::Updated(o) => {
            let port = match &**o {
                pilot::model::Object::Service(s) => s.spec.ports[0].port,
                _ => 0,
            };
            format!("~{} port {port}", o.key())
        }
        Event::Deleted(k) => format!("-{k}"),
        Event::Problem { origin, problem } => format!("!{origin}: {}", problem.as_deref().unwrap_or("ok")),
        Event::Synced => "synced".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_relist_on_gone_and_resume_after_a_dropped_stream() {
    let (url, script) = api_server().await;
    let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    Box::new(KubeSource::new(client)).start(tx);

    let mut seen: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !seen.iter().any(|e| e == "-Service default/httpbin") {
        let e = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out; events so far: {seen:#?}"))
            .unwrap();
        seen.push(describe(&e));
    }
    let pos = |want: &str| {
        seen.iter()
            .position(|e| e.starts_with(want))
            .unwrap_or_else(|| panic!("{want} not in {seen:#?}"))
    };
    // Initial list, the bad object reported, then ready.
    let nginx = pos("+Service default/nginx");
    let broken = pos("!Service default/broken: watch services: document 0 (Service default/broken): spec.ports[1].port: duplicate port 80/TCP");
    let synced = pos("synced");
    assert!(nginx < synced && broken < synced, "{seen:#?}");
    // Watch: httpbin added; then 410 Gone → relist, where nginx is gone.
    let added = pos("+Service default/httpbin");
    let nginx_gone = pos("-Service default/nginx");
    assert!(nginx < added && added < nginx_gone, "{seen:#?}");
    // The watch after the relist: modified, then the stream drops; resumed: deleted.
    let modified = pos("~Service default/httpbin port 81");
    let deleted = pos("-Service default/httpbin");
    assert!(nginx_gone < modified && modified < deleted, "{seen:#?}");
    assert_eq!(seen.iter().filter(|e| *e == "synced").count(), 1);

    let requests = script.requests.lock().unwrap().clone();
    let service_watches: Vec<&String> = requests
        .iter()
        .filter(|r| r.starts_with("/api/v1/services?") && r.contains("watch=true"))
        .collect();
    assert!(service_watches.len() >= 3, "{requests:#?}");
    assert!(
        service_watches[0].contains("resourceVersion=100"),
        "{requests:#?}"
    );
    assert!(
        service_watches[0].contains("allowWatchBookmarks=true"),
        "{requests:#?}"
    );
    assert!(
        service_watches[1].contains("resourceVersion=200"),
        "after the relist: {requests:#?}"
    );
    assert!(
        service_watches[2].contains("resourceVersion=201"),
        "resumed where the dropped stream ended: {requests:#?}"
    );
    let service_lists = requests
        .iter()
        .filter(|r| r.starts_with("/api/v1/services?") && !r.contains("watch=true"))
        .count();
    assert_eq!(service_lists, 2, "one relist, for the 410 only: {requests:#?}");
}
