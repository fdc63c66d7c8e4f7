//! The sidecar against an ADS server that sends what it is given (real Envoy protos over real
//! gRPC): a cluster the proxy cannot take is NACKed with the field and the reason, the last good
//! configuration keeps serving, and the fixed version is taken. Loopback only.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::{Message, Name};
use serde_json::Value;
use testkit::http::{free_port, Client, Echo};
use testkit::proxy::{admin_request, Kind, ProxyProc};
use xds::pb::envoy::config::cluster::v3::Cluster;
use xds::pb::envoy::config::core::v3::Node;
use xds::pb::envoy::config::listener::v3::Listener;
use xds::pb::google::protobuf::Any;
use xds::server::{AdsServer, Debounce, Generator, PushScope, Resource};

const AGENT: &str = env!("CARGO_BIN_EXE_skiff-agent");

#[derive(Default)]
struct Static(Mutex<BTreeMap<(String, String), Any>>);

impl Static {
    fn set<M: Message + Name>(&self, name: &str, m: &M) {
        let any = Any {
            type_url: M::type_url(),
            value: m.encode_to_vec(),
        };
        self.0.lock().unwrap().insert((M::type_url(), name.into()), any);
    }
}

impl Generator for Static {
    type Proxy = ();
    fn connect(&self, _node: &Node, _peer: Option<SocketAddr>) -> Result<(), String> {
        Ok(())
    }
    fn generate(&self, _p: &(), type_url: &str, names: &[String]) -> Vec<Resource> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|((t, n), _)| t == type_url && (names.is_empty() || names.contains(n)))
            .map(|((_, n), a)| Resource::new(n.clone(), a.clone()))
            .collect()
    }
}

fn cluster(port: u32) -> Cluster {
    let pool = xds::json::descriptor_pool().unwrap();
    xds::json::from_yaml(
        &pool,
        &format!(
            r#"
name: backend
type: STATIC
connect_timeout: 1s
load_assignment:
  cluster_name: backend
  endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }} }}] }}]
"#
        ),
    )
    .unwrap()
}

fn listener(port: u16) -> Listener {
    let pool = xds::json::descriptor_pool().unwrap();
    xds::json::from_yaml(
        &pool,
        &format!(
            r#"
name: front
address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: front
      route_config:
        name: front
        virtual_hosts: [{{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: backend }} }}] }}]
      http_filters:
      - name: envoy.filters.http.router
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#
        ),
    )
    .unwrap()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_rejected_cluster_is_nacked_and_the_last_good_one_serves() {
    let backend = Echo::local("backend");
    let front = free_port();
    let config = Arc::new(Static::default());
    config.set("backend", &cluster(u32::from(backend.addr.port())));
    config.set("front", &listener(front));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let xds_addr = listener.local_addr().unwrap();
    let ads = rt.block_on(async {
        AdsServer::new(
            config.clone(),
            Debounce {
                quiet: Duration::from_millis(10),
                max: Duration::from_millis(100),
                endpoints: true,
            },
        )
    });
    let svc = ads.service();
    rt.spawn(
        tonic::transport::Server::builder()
            .serve_with_incoming(svc, tonic::transport::server::TcpIncoming::from(listener)),
    );

    let (admin, health, status, metrics) = (free_port(), free_port(), free_port(), free_port());
    let mut cmd = std::process::Command::new(AGENT);
    cmd.args(["proxy", "sidecar", "--concurrency", "1", "--drain-time-s", "1"])
        .arg(format!("--discovery-address={xds_addr}"))
        .args([
            "--admin-port",
            &admin.to_string(),
            "--health-port",
            &health.to_string(),
        ])
        .args([
            "--status-port",
            &status.to_string(),
            "--metrics-port",
            &metrics.to_string(),
        ])
        .env("POD_NAME", "nack-1")
        .env("POD_NAMESPACE", "test")
        .env("INSTANCE_IP", "127.0.0.1");
    let proxy = ProxyProc::spawn_command(Kind::Skiff, cmd, admin);
    wait_for("ready", || {
        admin_request(health, "GET", "/healthz/ready").is_ok_and(|(c, _)| c == 200)
    });
    let get = || {
        Client::http1()
            .get(&format!("http://127.0.0.1:{front}/"), &[])
            .map(|r| r.echoed().map(|e| e.name))
    };
    assert_eq!(get().unwrap().as_deref(), Some("backend"));
    let cds_version = |ads: &AdsServer<Static>| {
        ads.sync_status()
            .first()
            .and_then(|s| s.types.get("cds").cloned())
            .unwrap_or_default()
    };
    wait_for("CDS acked", || cds_version(&ads).acked_version.is_some());
    let good = cds_version(&ads).acked_version.unwrap();

    // An endpoint port no socket can have: NACKed, with the resource, field and reason.
    config.set("backend", &cluster(70_000));
    ads.pusher().push(PushScope::Full);
    wait_for("the NACK", || cds_version(&ads).last_error.is_some());
    let err = cds_version(&ads).last_error.unwrap();
    assert!(
        err.contains("backend") && err.contains("port_value") && err.contains("70000"),
        "{err}"
    );
    assert_eq!(cds_version(&ads).acked_version.as_deref(), Some(good.as_str()));
    // The last good cluster keeps serving, and the dump still shows it at its version.
    assert_eq!(get().unwrap().as_deref(), Some("backend"));
    let dump: Value = serde_json::from_str(
        &proxy
            .admin("/config_dump?resource=dynamic_active_clusters")
            .unwrap()
            .1,
    )
    .unwrap();
    let backend_dump = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cluster"]["name"] == "backend")
        .unwrap();
    assert_eq!(backend_dump["version_info"], good.as_str());
    let dump: Value = serde_json::from_str(&proxy.admin("/config_dump").unwrap().1).unwrap();
    let cds_dump = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["@type"].as_str().unwrap().ends_with("ClustersConfigDump"))
        .unwrap();
    assert_eq!(
        cds_dump["version_info"],
        good.as_str(),
        "the dump reports the last accepted version"
    );
    let port = &backend_dump["cluster"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        ["address"]["socket_address"]["port_value"];
    assert_eq!(port, u64::from(backend.addr.port()));
    let stats = proxy.admin("/stats").unwrap().1;
    assert!(
        stats
            .lines()
            .any(|l| l == "cluster_manager.cds.update_rejected: 1"),
        "{stats}"
    );

    // Fixed: taken, and the error clears.
    let other = Echo::local("backend-2");
    config.set("backend", &cluster(u32::from(other.addr.port())));
    ads.pusher().push(PushScope::Full);
    wait_for("the fix", || {
        cds_version(&ads).last_error.is_none() && cds_version(&ads).acked_version.as_deref() != Some(&good)
    });
    wait_for("traffic on the new cluster", || {
        get().ok().flatten().as_deref() == Some("backend-2")
    });
    rt.shutdown_background();
}
