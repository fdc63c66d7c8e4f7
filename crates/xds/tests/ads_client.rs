//! The ADS client against the ADS server over real gRPC on loopback: wildcard CDS/LDS, then the
//! EDS names the clusters ask for; ACKs reach the server's sync status; a rejected response is
//! NACKed with the reason and the last good version; the client reconnects to a restarted
//! server and resubscribes, announcing the versions it holds.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use xds::client::{Client, ConfigSink, CLUSTER, ENDPOINT, LISTENER};
use xds::pb::envoy::config::core::v3::Node;
use xds::pb::google::protobuf::Any;
use xds::server::{AdsServer, Debounce, Generator, PushScope, Pusher, Resource};

/// Opaque resources by (type, name); a body of "bad" is what the sink rejects.
#[derive(Default)]
struct Fake(Mutex<BTreeMap<(String, String), String>>);

impl Fake {
    fn set(&self, t: &str, name: &str, body: &str) {
        self.0
            .lock()
            .unwrap()
            .insert((t.into(), name.into()), body.into());
    }
}

impl Generator for Fake {
    type Proxy = ();
    fn connect(&self, _node: &Node, _peer: Option<std::net::SocketAddr>) -> Result<(), String> {
        Ok(())
    }
    fn generate(&self, _p: &(), type_url: &str, names: &[String]) -> Vec<Resource> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|((t, n), _)| t == type_url && (names.is_empty() || names.contains(n)))
            .map(|((t, n), b)| {
                Resource::new(
                    n.clone(),
                    Any {
                        type_url: t.clone(),
                        value: b.clone().into_bytes(),
                    },
                )
            })
            .collect()
    }
}

/// What the client applied, per type: (version, bodies).
#[derive(Default, Clone)]
struct Seen(Arc<Mutex<Applied>>);

/// type URL → (version, resource bodies).
type Applied = BTreeMap<String, (String, Vec<String>)>;

struct Sink(Seen);

impl ConfigSink for Sink {
    fn apply(&mut self, type_url: &str, version: &str, resources: &[Any]) -> Result<(), String> {
        let bodies: Vec<String> = resources
            .iter()
            .map(|a| String::from_utf8_lossy(&a.value).into_owned())
            .collect();
        if bodies.iter().any(|b| b == "bad") {
            return Err(format!("{type_url}: resource is bad"));
        }
        self.0
             .0
            .lock()
            .unwrap()
            .insert(type_url.into(), (version.into(), bodies));
        Ok(())
    }
    fn wanted(&self, type_url: &str) -> Vec<String> {
        if type_url != ENDPOINT {
            return Vec::new();
        }
        // Every applied cluster body names its endpoints.
        self.0
             .0
            .lock()
            .unwrap()
            .get(CLUSTER)
            .map(|(_, b)| b.iter().map(|c| format!("eds-{c}")).collect())
            .unwrap_or_default()
    }
}

/// An ADS server on its own runtime and thread, so dropping it cuts every stream at once (as a
/// killed control plane does).
struct Server {
    rt: Option<tokio::runtime::Runtime>,
    ads: AdsServer<Fake>,
    pusher: Pusher,
}

impl Server {
    fn start(fake: Arc<Fake>, addr: std::net::SocketAddr) -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let ads = rt.block_on(async {
            AdsServer::new(
                fake,
                Debounce {
                    quiet: Duration::from_millis(10),
                    max: Duration::from_millis(100),
                    endpoints: true,
                },
            )
        });
        let pusher = ads.pusher();
        let svc = ads.service();
        let listener = rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => break l,
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    Err(e) => panic!("bind {addr}: {e}"),
                }
            }
        });
        rt.spawn(async move {
            tonic::transport::Server::builder()
                .serve_with_incoming(svc, tonic::transport::server::TcpIncoming::from(listener))
                .await
                .unwrap();
        });
        Server {
            rt: Some(rt),
            ads,
            pusher,
        }
    }

    fn status(&self, short: &str) -> Option<(String, Option<String>, Option<String>)> {
        let s = self.ads.sync_status().into_iter().next()?;
        let t = s.types.get(short).cloned().unwrap_or_default();
        Some((s.status(short).to_owned(), t.acked_version, t.last_error))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn subscribes_acks_nacks_and_resyncs_after_a_restart() {
    let fake = Arc::new(Fake::default());
    fake.set(CLUSTER, "a", "a");
    fake.set(LISTENER, "l", "l1");
    fake.set(ENDPOINT, "eds-a", "ea1");
    let addr = free_addr();
    let server = Server::start(fake.clone(), addr);

    let seen = Seen::default();
    let client = Client {
        address: addr.to_string(),
        node: Node {
            id: "sidecar~198.18.0.2~a-1.ns~ns.svc.cluster.local".into(),
            ..Default::default()
        },
        max_backoff: Duration::from_millis(400),
    };
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sink = Sink(seen.clone());
    let client_thread = std::thread::spawn(move || client_rt.block_on(client.run(sink)));
    let body = |t: &str| {
        seen.0
            .lock()
            .unwrap()
            .get(t)
            .map(|(_, b)| b.clone())
            .unwrap_or_default()
    };
    let version = |t: &str| {
        seen.0
            .lock()
            .unwrap()
            .get(t)
            .map(|(v, _)| v.clone())
            .unwrap_or_default()
    };

    // Wildcard CDS and LDS, then EDS for the name the cluster asks for.
    wait_for("CDS, LDS and EDS applied", || {
        body(ENDPOINT) == ["ea1"] && body(LISTENER) == ["l1"]
    });
    wait_for("all ACKed", || {
        ["cds", "lds", "eds"]
            .iter()
            .all(|t| server.status(t).is_some_and(|s| s.0 == "SYNCED"))
    });

    // A bad cluster: NACKed with the reason; the client keeps what it had.
    let good_cds = version(CLUSTER);
    fake.set(CLUSTER, "a", "bad");
    server.pusher.push(PushScope::Full);
    wait_for("the NACK reaches the server", || {
        server.status("cds").is_some_and(|(_, acked, err)| {
            acked.as_deref() == Some(good_cds.as_str()) && err.is_some_and(|e| e.contains("resource is bad"))
        })
    });
    assert_eq!(body(CLUSTER), ["a"]);
    assert_eq!(version(CLUSTER), good_cds);

    // Fixed: accepted again, and a new cluster brings a new EDS subscription.
    fake.set(CLUSTER, "a", "a");
    fake.set(CLUSTER, "b", "b");
    fake.set(ENDPOINT, "eds-b", "eb1");
    server.pusher.push(PushScope::Full);
    wait_for("cluster b and its endpoints", || body(ENDPOINT).len() == 2);
    wait_for("error cleared", || {
        server
            .status("cds")
            .is_some_and(|(s, _, e)| s == "SYNCED" && e.is_none())
    });

    // The server goes away and comes back with changed endpoints: the client reconnects,
    // resubscribes (with its versions) and takes the new state.
    drop(server);
    fake.set(ENDPOINT, "eds-a", "ea2");
    let server = Server::start(fake.clone(), addr);
    wait_for("resync after restart", || {
        let mut b = body(ENDPOINT);
        b.sort();

        b == ["ea2", "eb1"]
    });
    wait_for("all ACKed on the new server", || {
        ["cds", "lds", "eds"]
            .iter()
            .all(|t| server.status(t).is_some_and(|s| s.0 == "SYNCED"))
    });
    assert!(
        !client_thread.is_finished(),
        "the client runs until its process ends"
    );
}
