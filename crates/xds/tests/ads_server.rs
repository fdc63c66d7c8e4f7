//! The ADS server over real gRPC (tonic client and server on loopback): versions and nonces, ACK,
//! NACK (a rejected resource is not sent again until it changes; wildcard types keep the accepted
//! copy), stale nonces ignored, endpoint-only pushes as EDS only, subscription changes answered,
//! sync status, and a node id that is refused.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;
use xds::pb::envoy::config::core::v3::Node;
use xds::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use xds::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use xds::pb::google::protobuf::Any;
use xds::pb::google::rpc::Status;
use xds::server::{
    AdsServer, Debounce, Generator, PushScope, Resource, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE,
};

/// Resources as (name, content) per type; content is opaque to the server.
#[derive(Default)]
struct Fake {
    resources: Mutex<Vec<(&'static str, String, String)>>,
}

impl Fake {
    fn set(&self, type_url: &'static str, name: &str, content: &str) {
        let mut r = self.resources.lock().unwrap();
        r.retain(|(t, n, _)| !(*t == type_url && n == name));
        r.push((type_url, name.to_owned(), content.to_owned()));
    }

    fn remove(&self, type_url: &'static str, name: &str) {
        self.resources
            .lock()
            .unwrap()
            .retain(|(t, n, _)| !(*t == type_url && n == name));
    }
}

impl Generator for Fake {
    type Proxy = String;

    fn connect(&self, node: &Node, _peer: Option<std::net::SocketAddr>) -> Result<String, String> {
        if node.id.starts_with("sidecar~") {
            Ok(node.id.clone())
        } else {
            Err("not an Istio sidecar node id".into())
        }
    }

    fn generate(&self, _proxy: &String, type_url: &str, names: &[String]) -> Vec<Resource> {
        let mut out: Vec<Resource> = self
            .resources
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, n, _)| *t == type_url && (names.is_empty() || names.contains(n)))
            .map(|(t, n, c)| {
                Resource::new(
                    n.clone(),
                    Any {
                        type_url: (*t).to_owned(),
                        value: c.as_bytes().to_vec(),
                    },
                )
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

struct Harness {
    fake: Arc<Fake>,
    ads: AdsServer<Fake>,
    addr: std::net::SocketAddr,
}

async fn start() -> Harness {
    start_with(Debounce {
        quiet: Duration::from_millis(20),
        max: Duration::from_millis(200),
        endpoints: true,
    })
    .await
}

async fn start_with(debounce: Debounce) -> Harness {
    let fake = Arc::new(Fake::default());
    fake.set(CLUSTER_TYPE, "a", "a1");
    fake.set(CLUSTER_TYPE, "b", "b1");
    fake.set(ENDPOINT_TYPE, "a", "ea1");
    fake.set(ENDPOINT_TYPE, "b", "eb1");
    fake.set(LISTENER_TYPE, "l", "l1");
    let ads = AdsServer::new(fake.clone(), debounce);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = ads.service();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .serve_with_incoming_shutdown(
                svc,
                tonic::transport::server::TcpIncoming::from(listener),
                std::future::pending::<()>(),
            )
            .await
            .unwrap();
    });
    Harness { fake, ads, addr }
}

struct Proxy {
    tx: mpsc::UnboundedSender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
}

async fn connect(addr: std::net::SocketAddr, id: &str) -> Result<Proxy, tonic::Status> {
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: id.into(),
            ..Default::default()
        }),
        type_url: CLUSTER_TYPE.into(),
        ..Default::default()
    })
    .unwrap();
    let resp = client
        .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await?;
    Ok(Proxy {
        tx,
        rx: resp.into_inner(),
    })
}

impl Proxy {
    async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(5), self.rx.next())
            .await
            .expect("a response")
            .unwrap()
            .unwrap()
    }

    async fn nothing(&mut self) {
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(300), self.rx.next()).await {
            panic!("unexpected response: {r:?}");
        }
    }

    fn ack(&self, r: &DiscoveryResponse, names: &[&str]) {
        self.tx
            .send(DiscoveryRequest {
                version_info: r.version_info.clone(),
                response_nonce: r.nonce.clone(),
                type_url: r.type_url.clone(),
                resource_names: names.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            })
            .unwrap();
    }

    fn nack(&self, r: &DiscoveryResponse, error: &str) {
        self.tx
            .send(DiscoveryRequest {
                response_nonce: r.nonce.clone(),
                type_url: r.type_url.clone(),
                error_detail: Some(Status {
                    code: 3,
                    message: error.into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .unwrap();
    }

    fn subscribe(&self, type_url: &str, names: &[&str]) {
        self.tx
            .send(DiscoveryRequest {
                type_url: type_url.into(),
                resource_names: names.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            })
            .unwrap();
    }
}

fn contents(r: &DiscoveryResponse) -> Vec<String> {
    r.resources
        .iter()
        .map(|a| String::from_utf8(a.value.clone()).unwrap())
        .collect()
}

const NODE: &str = "sidecar~198.18.0.7~toolbox-97948fc8-ptlct.sidecar~sidecar.svc.cluster.local";

#[tokio::test]
async fn ack_nack_and_pushes_follow_the_protocol() {
    let h = start().await;
    let mut p = connect(h.addr, NODE).await.unwrap();

    // First request: everything, with a version and a nonce.
    let cds = p.next().await;
    assert_eq!(cds.type_url, CLUSTER_TYPE);
    assert_eq!(contents(&cds), ["a1", "b1"]);
    assert!(!cds.nonce.is_empty() && cds.version_info.contains('/'));
    let status = &h.ads.sync_status()[0];
    assert_eq!(status.proxy, "toolbox-97948fc8-ptlct.sidecar");
    assert_eq!(status.status("cds"), "STALE");
    p.ack(&cds, &[]);
    p.subscribe(ENDPOINT_TYPE, &["a"]);
    let eds = p.next().await;
    assert_eq!(contents(&eds), ["ea1"]);
    p.ack(&eds, &["a"]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = &h.ads.sync_status()[0];
    assert_eq!(status.status("cds"), "SYNCED");
    assert_eq!(status.status("eds"), "SYNCED");
    assert_eq!(status.status("lds"), "NOT SENT");

    // The subscription grows: answered with the new set.
    p.ack(&eds, &["a", "b"]);
    assert_eq!(contents(&p.next().await), ["ea1", "eb1"]);

    // A full push with nothing changed sends nothing.
    h.ads.pusher().push(PushScope::Full);
    p.nothing().await;

    // A cluster change that the proxy rejects: logged, and not sent again until it changes.
    h.fake.set(CLUSTER_TYPE, "b", "b2-bad");
    h.ads.pusher().push(PushScope::Full);
    let cds2 = p.next().await;
    assert_eq!(contents(&cds2), ["a1", "b2-bad"]);
    // EDS follows a cluster update (re-created clusters wait for their endpoints).
    let eds2 = p.next().await;
    assert_eq!(eds2.type_url, ENDPOINT_TYPE);
    p.nack(&cds2, "cluster b: invalid");
    p.ack(&eds2, &["a", "b"]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = &h.ads.sync_status()[0];
    assert_eq!(status.status("cds"), "STALE");
    assert_eq!(
        status.types["cds"].last_error.as_deref(),
        Some("cluster b: invalid")
    );
    // Another push: `a` changes, `b` is still the rejected version, so the accepted `b1` goes.
    h.fake.set(CLUSTER_TYPE, "a", "a2");
    h.ads.pusher().push(PushScope::Full);
    let cds3 = p.next().await;
    assert_eq!(contents(&cds3), ["a2", "b1"]);
    let _ = p.next().await; // EDS after CDS
    p.ack(&cds3, &[]);
    // And nothing new while the rejected version stands.
    h.ads.pusher().push(PushScope::Full);
    p.nothing().await;
    // Fixed: sent.
    h.fake.set(CLUSTER_TYPE, "b", "b3");
    h.ads.pusher().push(PushScope::Full);
    assert_eq!(contents(&p.next().await), ["a2", "b3"]);
    assert_eq!(p.next().await.type_url, ENDPOINT_TYPE);

    // Endpoint-only pushes: EDS only, only what changed, only when the proxy watches the cluster.
    h.fake.set(ENDPOINT_TYPE, "b", "eb2");
    h.ads
        .pusher()
        .push(PushScope::Endpoints(["b".to_string()].into_iter().collect()));
    let e = p.next().await;
    assert_eq!(e.type_url, ENDPOINT_TYPE);
    assert_eq!(contents(&e), ["eb2"], "only the changed assignment");
    h.ads
        .pusher()
        .push(PushScope::Endpoints(["zzz".to_string()].into_iter().collect()));
    p.nothing().await;

    // A stale nonce (an old response's) is ignored.
    p.nack(&cds, "old news");
    p.nothing().await;
    assert!(h.ads.sync_status()[0].types["cds"].last_error.is_none());

    // A deleted cluster leaves the proxy's set; the same cluster back is sent again.
    h.fake.remove(CLUSTER_TYPE, "b");
    h.ads.pusher().push(PushScope::Full);
    assert_eq!(contents(&p.next().await), ["a2"]);
    assert_eq!(p.next().await.type_url, ENDPOINT_TYPE);
    h.fake.set(CLUSTER_TYPE, "b", "b3");
    h.ads.pusher().push(PushScope::Full);
    assert_eq!(contents(&p.next().await), ["a2", "b3"]);
}

#[tokio::test]
async fn pushes_are_debounced_and_nodes_are_checked() {
    let h = start().await;
    let mut p = connect(h.addr, NODE).await.unwrap();
    let cds = p.next().await;
    p.ack(&cds, &[]);
    for i in 0..20 {
        h.fake.set(CLUSTER_TYPE, "a", &format!("a-{i}"));
        h.ads.pusher().push(PushScope::Full);
    }
    let r = p.next().await;
    assert_eq!(contents(&r), ["a-19", "b1"], "one push with the last state");
    p.ack(&r, &[]);
    p.nothing().await;

    let err = match connect(h.addr, "toolbox").await {
        Ok(mut p) => match tokio::time::timeout(Duration::from_secs(5), p.rx.next()).await {
            Ok(Some(Err(e))) => e,
            other => panic!("expected an error, got {other:?}"),
        },
        Err(e) => e,
    };
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("not an Istio sidecar node id"), "{err}");

    // A first request without a node is refused by name.
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", h.addr))
        .await
        .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(DiscoveryRequest {
        type_url: CLUSTER_TYPE.into(),
        ..Default::default()
    })
    .unwrap();
    let err = match client
        .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await
    {
        Ok(resp) => {
            let mut rx = resp.into_inner();
            match tokio::time::timeout(Duration::from_secs(5), rx.next()).await {
                Ok(Some(Err(e))) => e,
                other => panic!("expected an error, got {other:?}"),
            }
        }
        Err(e) => e,
    };
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(err.message(), "the first DiscoveryRequest has no node");
    drop(tx);
    drop(p);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        h.ads.sync_status().is_empty(),
        "disconnected proxies are forgotten"
    );
}

/// With EDS debouncing off (`PILOT_ENABLE_EDS_DEBOUNCE=false`), endpoint-only pushes skip the
/// quiet period; full pushes still wait for it.
#[tokio::test]
async fn endpoint_pushes_can_skip_the_debounce() {
    let h = start_with(Debounce {
        quiet: Duration::from_secs(2),
        max: Duration::from_secs(4),
        endpoints: false,
    })
    .await;
    let mut p = connect(h.addr, NODE).await.unwrap();
    let cds = p.next().await;
    p.ack(&cds, &[]);
    p.subscribe(ENDPOINT_TYPE, &["a", "b"]);
    let eds = p.next().await;
    p.ack(&eds, &["a", "b"]);
    // A full push starts the 2 s wait; an endpoint change meanwhile goes out at once.
    h.fake.set(CLUSTER_TYPE, "a", "a2");
    h.ads.pusher().push(PushScope::Full);
    h.fake.set(ENDPOINT_TYPE, "b", "eb2");
    let t0 = std::time::Instant::now();
    h.ads
        .pusher()
        .push(PushScope::Endpoints(["b".to_string()].into_iter().collect()));
    let e = p.next().await;
    assert_eq!(
        (e.type_url.as_str(), contents(&e)),
        (ENDPOINT_TYPE, vec!["eb2".to_string()])
    );
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "not debounced: {:?}",
        t0.elapsed()
    );
    p.ack(&e, &["a", "b"]);
    let c = p.next().await;
    assert_eq!(contents(&c), ["a2", "b1"]);
    assert!(
        t0.elapsed() >= Duration::from_millis(1900),
        "debounced: {:?}",
        t0.elapsed()
    );
}

// === Delta ===

struct DeltaProxy {
    tx: mpsc::UnboundedSender<DeltaDiscoveryRequest>,
    rx: tonic::Streaming<DeltaDiscoveryResponse>,
}

impl DeltaProxy {
    async fn connect(addr: std::net::SocketAddr) -> DeltaProxy {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(DeltaDiscoveryRequest {
            node: Some(Node {
                id: NODE.into(),
                ..Default::default()
            }),
            type_url: CLUSTER_TYPE.into(),
            ..Default::default()
        })
        .unwrap();
        let resp = client
            .delta_aggregated_resources(UnboundedReceiverStream::new(rx))
            .await
            .unwrap();
        DeltaProxy {
            tx,
            rx: resp.into_inner(),
        }
    }

    async fn next(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(5), self.rx.next())
            .await
            .expect("a response")
            .unwrap()
            .unwrap()
    }

    async fn nothing(&mut self) {
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(300), self.rx.next()).await {
            panic!("unexpected response: {r:?}");
        }
    }

    fn reply(&self, r: &DeltaDiscoveryResponse, error: Option<&str>, subscribe: &[&str]) {
        self.tx
            .send(DeltaDiscoveryRequest {
                type_url: r.type_url.clone(),
                response_nonce: r.nonce.clone(),
                resource_names_subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
                error_detail: error.map(|e| Status {
                    code: 3,
                    message: e.into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .unwrap();
    }
}

fn delta_contents(r: &DeltaDiscoveryResponse) -> Vec<String> {
    r.resources
        .iter()
        .map(|res| String::from_utf8(res.resource.as_ref().unwrap().value.clone()).unwrap())
        .collect()
}

#[tokio::test]
async fn delta_sends_only_what_changed() {
    let h = start().await;
    let mut p = DeltaProxy::connect(h.addr).await;
    let cds = p.next().await;
    assert_eq!(delta_contents(&cds), ["a1", "b1"]);
    assert!(cds.resources.iter().all(|r| r.version.len() == 16));
    p.reply(&cds, None, &[]);
    // EDS: one known and one unknown name; the unknown one is reported removed.
    p.tx.send(DeltaDiscoveryRequest {
        type_url: ENDPOINT_TYPE.into(),
        resource_names_subscribe: vec!["a".into(), "nope".into()],
        ..Default::default()
    })
    .unwrap();
    let eds = p.next().await;
    assert_eq!(delta_contents(&eds), ["ea1"]);
    assert_eq!(eds.removed_resources, ["nope"]);
    p.reply(&eds, None, &[]);

    // One cluster changes: only it is sent (no EDS: nothing subscribes to b's endpoints).
    h.fake.set(CLUSTER_TYPE, "b", "b2");
    h.ads.pusher().push(PushScope::Full);
    let cds2 = p.next().await;
    assert_eq!(delta_contents(&cds2), ["b2"]);
    assert!(cds2.removed_resources.is_empty());
    p.reply(&cds2, None, &[]);
    p.nothing().await;

    // A removal.
    h.fake
        .resources
        .lock()
        .unwrap()
        .retain(|(t, n, _)| !(*t == CLUSTER_TYPE && n == "b"));
    h.ads.pusher().push(PushScope::Full);
    let cds3 = p.next().await;
    assert!(cds3.resources.is_empty());
    assert_eq!(cds3.removed_resources, ["b"]);
    p.reply(&cds3, None, &[]);

    // A rejected change is not sent again until it changes.
    h.fake.set(CLUSTER_TYPE, "a", "a-bad");
    h.ads.pusher().push(PushScope::Full);
    let bad = p.next().await;
    assert_eq!(delta_contents(&bad), ["a-bad"]);
    // The endpoints of a changed cluster follow it, so a re-created cluster can warm.
    let eds_after = p.next().await;
    assert_eq!(eds_after.type_url, ENDPOINT_TYPE);
    assert_eq!(delta_contents(&eds_after), ["ea1"]);
    p.reply(&eds_after, None, &[]);
    p.reply(&bad, Some("cluster a: invalid"), &[]);
    h.ads.pusher().push(PushScope::Full);
    p.nothing().await;
    h.fake.set(CLUSTER_TYPE, "a", "a-good");
    h.ads.pusher().push(PushScope::Full);
    let good = p.next().await;
    assert_eq!(delta_contents(&good), ["a-good"]);
    p.reply(&good, None, &[]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = &h.ads.sync_status()[0];
    assert_eq!(status.status("cds"), "SYNCED");
}
