//! An ADS client (state of the world), as Envoy's: subscribe to clusters and listeners, then to
//! the endpoints, routes and SDS secrets they name; ACK what applies, NACK what does not (with the reason,
//! keeping the last good version), and reconnect with backoff, re-announcing what it has.
//!
//! What to do with resources is up to a [`ConfigSink`]: the proxy applies them to its store.

use std::collections::BTreeMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// Where configuration goes.
pub trait ConfigSink: Send + 'static {
    /// Applies one response. `Err(reason)` NACKs it; resources that were valid may still have
    /// been applied (Envoy's partial acceptance).
    fn apply(&mut self, type_url: &str, version: &str, resources: &[Any]) -> Result<(), String>;
    /// Resource names to subscribe to for `type_url` (routes, endpoints and secrets the config
    /// names).
    fn wanted(&self, type_url: &str) -> Vec<String>;
}

/// Per-type protocol state.
#[derive(Default, Clone, Debug)]
struct TypeState {
    /// Last accepted version (sent back on NACKs and on reconnect).
    version: String,
    nonce: String,
    names: Vec<String>,
    /// Whether a request for this type has been sent on the current stream.
    requested: bool,
}

/// The ADS client's settings.
#[derive(Clone, Debug)]
pub struct Client {
    /// `host:port` of the management server (plaintext gRPC).
    pub address: String,
    pub node: Node,
    pub max_backoff: Duration,
}

fn request(node: Option<&Node>, type_url: &str, st: &TypeState, error: Option<String>) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: st.version.clone(),
        node: node.cloned(),
        resource_names: st.names.clone(),
        type_url: type_url.to_owned(),
        response_nonce: st.nonce.clone(),
        error_detail: error.map(|message| Status {
            code: 3,
            message,
            details: Vec::new(),
        }),
        ..Default::default()
    }
}

impl Client {
    /// Runs forever: connects, streams, reconnects with exponential backoff.
    pub async fn run<S: ConfigSink>(self, mut sink: S) {
        let mut state: BTreeMap<&'static str, TypeState> = BTreeMap::new();
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = tokio::time::Instant::now();
            if let Err(e) = self.stream_once(&mut sink, &mut state).await {
                // A stream that lived a while was healthy: start backing off afresh.
                if started.elapsed() > Duration::from_secs(10) {
                    backoff = Duration::from_millis(100);
                }
                warn!(address = %self.address, error = %e, "xDS stream ended; reconnecting in {backoff:?}");
            }
            tokio::time::sleep(backoff + Duration::from_millis(fastrand::u64(0..100))).await;
            backoff = (backoff * 2).min(self.max_backoff);
        }
    }

    async fn stream_once<S: ConfigSink>(
        &self,
        sink: &mut S,
        state: &mut BTreeMap<&'static str, TypeState>,
    ) -> Result<(), String> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", self.address))
            .map_err(|e| format!("bad address {}: {e}", self.address))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        let channel = endpoint.connect().await.map_err(|e| format!("connect: {e}"))?;
        let mut client = AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);
        let (tx, rx) = mpsc::unbounded_channel::<DiscoveryRequest>();
        let outbound = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        // Wildcard subscriptions first, as Envoy does: clusters, then listeners. The node is sent
        // on the first request of the stream.
        // Nonces belong to a stream; versions carry over so the server knows what we hold.
        for st in state.values_mut() {
            st.requested = false;
            st.nonce.clear();
        }
        let mut first = true;
        for type_url in [CLUSTER, LISTENER] {
            let st = state.entry(type_url).or_default();
            st.nonce.clear();
            st.requested = true;
            tx.send(request(first.then_some(&self.node), type_url, st, None))
                .map_err(|e| e.to_string())?;
            first = false;
        }
        let mut inbound = client
            .stream_aggregated_resources(outbound)
            .await
            .map_err(|e| format!("stream: {e}"))?
            .into_inner();
        info!(address = %self.address, "xDS stream established");
        loop {
            let resp: DiscoveryResponse = match inbound.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return Err("server closed the stream".into()),
                Err(e) => return Err(format!("stream: {e}")),
            };
            let type_url = match resp.type_url.as_str() {
                CLUSTER => CLUSTER,
                LISTENER => LISTENER,
                ROUTE => ROUTE,
                ENDPOINT => ENDPOINT,
                SECRET => SECRET,
                other => {
                    warn!(type_url = %other, "ignoring an unsubscribed resource type");
                    continue;
                }
            };
            debug!(type_url, version = %resp.version_info, resources = resp.resources.len(), "xDS response");
            let result = sink.apply(type_url, &resp.version_info, &resp.resources);
            let st = state.entry(type_url).or_default();
            st.nonce = resp.nonce.clone();
            let error = match result {
                Ok(()) => {
                    st.version = resp.version_info.clone();
                    None
                }
                Err(reason) => {
                    warn!(type_url, version = %resp.version_info, %reason, "rejecting xDS update (NACK)");
                    Some(reason)
                }
            };
            tx.send(request(None, type_url, st, error))
                .map_err(|e| e.to_string())?;
            // Follow what the config names: endpoints of clusters, routes and secrets of
            // listeners (Envoy asks for SDS secrets while the listener warms). Any response can
            // change the lists (a secret arriving activates a warming listener), so all are
            // rechecked; a request goes out only when a list changed.
            for dep in [ENDPOINT, ROUTE, SECRET] {
                let mut names = sink.wanted(dep);
                names.sort();
                names.dedup();
                let st = state.entry(dep).or_default();
                // An empty first subscription could read as a wildcard: wait for names.
                if (st.requested && st.names != names) || (!st.requested && !names.is_empty()) {
                    st.names = names;
                    st.requested = true;
                    tx.send(request(None, dep, st, None)).map_err(|e| e.to_string())?;
                }
            }
        }
    }
}
