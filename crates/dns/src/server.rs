//! The DNS server: hickory's UDP/TCP transport around a [`Zone`] that can be swapped while it
//! serves.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_server::net::runtime::Time;
use hickory_server::net::NetError;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::{DNSClass, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};

use crate::model::{ClusterData, ZoneConfig};
use crate::zone::{Zone, ZoneError};

/// How long a TCP client may stay silent before its connection is closed. Resolvers open TCP
/// only to retry a truncated answer, so a short idle time bounds what an idle client holds.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Responses queued per TCP connection (hickory's own default in its server).
const TCP_RESPONSE_BUFFER: usize = 32;
/// The EDNS version this server speaks (RFC 6891).
const EDNS_VERSION: u8 = 0;

/// The zone being served, shared between the server and whoever updates it. Cloning is cheap
/// and every clone sees the same zone; [`ZoneHandle::store`] swaps it atomically, so a query is
/// answered entirely from the old or entirely from the new zone.
#[derive(Clone, Debug)]
pub struct ZoneHandle {
    zone: Arc<ArcSwap<Zone>>,
}

impl ZoneHandle {
    /// Starts serving `zone`.
    pub fn new(zone: Zone) -> Self {
        Self {
            zone: Arc::new(ArcSwap::from_pointee(zone)),
        }
    }

    /// Replaces the zone for every query from now on.
    pub fn store(&self, zone: Zone) {
        self.zone.store(Arc::new(zone));
    }

    /// Builds a zone from `data` and serves it; on bad data returns the problems and keeps
    /// serving the last good zone.
    pub fn update(&self, config: &ZoneConfig, data: &ClusterData) -> Result<(), ZoneError> {
        self.store(Zone::new(config, data)?);
        Ok(())
    }

    /// The zone in force now.
    pub fn load(&self) -> Arc<Zone> {
        self.zone.load_full()
    }
}

/// The server stopped: one of its sockets failed for good.
#[derive(Debug, thiserror::Error)]
#[error("cluster DNS server stopped: {0}")]
pub struct ServeError(#[source] NetError);

/// Serves the zone in `zone` on already-bound sockets (the caller binds them, e.g. on the
/// kube-dns VIP port 53 inside a network namespace) until a socket fails. Dropping the future
/// stops the server and closes the sockets.
///
/// Both transports are needed: UDP answers larger than the client's buffer (512 bytes without
/// EDNS) come back truncated, and the client retries over TCP.
pub async fn serve(udp: UdpSocket, tcp: TcpListener, zone: ZoneHandle) -> Result<(), ServeError> {
    let mut server = Server::new(Handler { zone });
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE, TCP_RESPONSE_BUFFER);
    server.block_until_done().await.map_err(ServeError)
}

/// Answers each request from the current zone.
struct Handler {
    zone: ZoneHandle,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let mut edns = None;
        if let Some(req) = &request.edns {
            let mut resp = Edns::new();
            resp.set_max_payload(req.max_payload().max(512));
            resp.set_version(EDNS_VERSION);
            if req.version() > EDNS_VERSION {
                // BADVERS needs the extended rcode bits, which travel in the OPT record.
                resp.set_rcode_high(ResponseCode::BADVERS.high());
                return send_error(request, ResponseCode::BADVERS, Some(&resp), response).await;
            }
            edns = Some(resp);
        }
        let edns = edns.as_ref();

        if request.metadata.message_type != MessageType::Query {
            return send_error(request, ResponseCode::FormErr, edns, response).await;
        }
        if request.metadata.op_code != OpCode::Query {
            return send_error(request, ResponseCode::NotImp, edns, response).await;
        }
        let query = match request.queries.queries() {
            [query] => query,
            _ => return send_error(request, ResponseCode::FormErr, edns, response).await,
        };
        let qtype = query.query_type();
        if query.query_class() != DNSClass::IN || matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            // Other classes are not data we have; zone transfers are not offered.
            return send_error(request, ResponseCode::Refused, edns, response).await;
        }

        let zone = self.zone.load();
        let answer = zone.lookup(query.original().name(), qtype);
        tracing::debug!(
            target: "dns",
            name = %query.name(),
            %qtype,
            code = %answer.code,
            answers = answer.answers.len(),
            src = %request.src(),
            "query"
        );
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = answer.authoritative;
        metadata.recursion_available = false;
        metadata.response_code = answer.code;
        let message = MessageResponseBuilder::new(&request.queries, edns).build(
            metadata,
            answer.answers.iter(),
            answer.authorities.iter(),
            std::iter::empty(),
            answer.additionals.iter(),
        );
        match response.send_response(message).await {
            Ok(info) => info,
            Err(error) => {
                tracing::warn!(target: "dns", %error, src = %request.src(), "failed to send a DNS response");
                serve_failed(request)
            }
        }
    }
}

async fn send_error<R: ResponseHandler>(
    request: &Request,
    code: ResponseCode,
    edns: Option<&Edns>,
    mut response: R,
) -> ResponseInfo {
    let message = MessageResponseBuilder::new(&request.queries, edns).error_msg(&request.metadata, code);
    match response.send_response(message).await {
        Ok(info) => info,
        Err(error) => {
            tracing::warn!(target: "dns", %error, src = %request.src(), "failed to send a DNS error response");
            serve_failed(request)
        }
    }
}

/// What the server records for a request it could not answer.
fn serve_failed(request: &Request) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}
