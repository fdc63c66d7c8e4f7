//! The ADS gRPC methods served without tonic's generated server. tonic encodes each stream's
//! responses into one buffer that keeps the capacity of the largest message it ever carried: after
//! a full push that is ≈1 MiB per connected proxy, held for the life of the stream. Here a
//! state-of-the-world response is written in bounded chunks straight from the shared resources,
//! only as fast as HTTP/2 flow control takes them, so a connected proxy costs its bookkeeping, not
//! its biggest push, and no proxy gets its own copy of a resource's bytes.
//!
//! Requests are still decoded by tonic (`Streaming` with the prost decoder); errors travel as
//! `grpc-status` trailers, as any gRPC server sends them.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use prost::encoding::{message, string};
use prost::Message;
use tokio::sync::mpsc;
use tonic::codec::{Codec, Streaming};
use tonic::Status;

use crate::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest,
};
use crate::pb::google::protobuf::Any;
use crate::server::{AdsServer, Generator};

const SOTW_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
/// Largest request accepted (a proxy subscribing to many thousands of names).
const MAX_REQUEST: usize = 16 << 20;
/// A response goes out in pieces of about this size (one resource may make a piece bigger).
const CHUNK: usize = 16 << 10;

/// A state-of-the-world `DiscoveryResponse` whose resources are shared, not owned.
#[derive(Debug)]
pub(crate) struct SotwResponse {
    pub version_info: String,
    pub resources: Vec<Arc<Any>>,
    pub type_url: String,
    pub nonce: String,
}

/// What a stream's connection task hands to the response body.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Sotw(SotwResponse),
    Delta(DeltaDiscoveryResponse),
    /// Ends the stream with this status.
    Error(Status),
}

/// `DiscoveryResponse` field numbers (envoy/service/discovery/v3/discovery.proto).
const VERSION_INFO: u32 = 1;
const RESOURCES: u32 = 2;
const TYPE_URL: u32 = 4;
const NONCE: u32 = 5;

fn grpc_header(buf: &mut BytesMut, len: usize) {
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
}

/// Writes one state-of-the-world response as a gRPC message, a chunk at a time.
struct SotwWriter {
    response: SotwResponse,
    /// Next resource to write; `None` before the header.
    next: Option<usize>,
}

impl SotwWriter {
    fn encoded_len(r: &SotwResponse) -> usize {
        let strings = [
            (VERSION_INFO, &r.version_info),
            (TYPE_URL, &r.type_url),
            (NONCE, &r.nonce),
        ];
        strings
            .iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(tag, s)| string::encoded_len(*tag, s))
            .sum::<usize>()
            + r.resources
                .iter()
                .map(|a| message::encoded_len(RESOURCES, &**a))
                .sum::<usize>()
    }

    /// The next piece of the message, `None` when all of it was written.
    fn chunk(&mut self) -> Option<Bytes> {
        let r = &self.response;
        let mut buf = BytesMut::with_capacity(CHUNK + 64);
        let mut i = match self.next {
            Some(i) if i > r.resources.len() => return None,
            Some(i) => i,
            None => {
                grpc_header(&mut buf, Self::encoded_len(r));
                if !r.version_info.is_empty() {
                    string::encode(VERSION_INFO, &r.version_info, &mut buf);
                }
                0
            }
        };
        while i < r.resources.len() && buf.len() < CHUNK {
            message::encode(RESOURCES, &*r.resources[i], &mut buf);
            i += 1;
        }
        if i == r.resources.len() && buf.len() < CHUNK {
            for (tag, s) in [(TYPE_URL, &r.type_url), (NONCE, &r.nonce)] {
                if !s.is_empty() {
                    string::encode(tag, s, &mut buf);
                }
            }
            i += 1;
        }
        self.next = Some(i);
        Some(buf.freeze())
    }
}

/// The response body of one ADS stream: gRPC messages from the connection task, then the
/// `grpc-status` trailers.
pub(crate) struct ResponseBody {
    rx: mpsc::UnboundedReceiver<Outgoing>,
    writing: Option<SotwWriter>,
    ready: VecDeque<Bytes>,
    done: bool,
}

impl ResponseBody {
    pub(crate) fn new(rx: mpsc::UnboundedReceiver<Outgoing>) -> ResponseBody {
        ResponseBody {
            rx,
            writing: None,
            ready: VecDeque::new(),
            done: false,
        }
    }

    fn trailers(status: &Status) -> Frame<Bytes> {
        let mut trailers = http::HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            trailers.insert("grpc-status", http::HeaderValue::from_static("13"));
        }
        Frame::trailers(trailers)
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        loop {
            if let Some(b) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            if let Some(w) = &mut this.writing {
                match w.chunk() {
                    Some(b) => return Poll::Ready(Some(Ok(Frame::data(b)))),
                    None => this.writing = None,
                }
            }
            if this.done {
                return Poll::Ready(None);
            }
            match this.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Outgoing::Sotw(r))) => {
                    this.writing = Some(SotwWriter {
                        response: r,
                        next: None,
                    })
                }
                Poll::Ready(Some(Outgoing::Delta(r))) => {
                    let mut head = BytesMut::with_capacity(5);
                    grpc_header(&mut head, r.encoded_len());
                    this.ready.push_back(head.freeze());
                    this.ready.push_back(Bytes::from(r.encode_to_vec()));
                }
                Poll::Ready(Some(Outgoing::Error(status))) => {
                    this.done = true;
                    return Poll::Ready(Some(Ok(Self::trailers(&status))));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(Some(Ok(Self::trailers(&Status::ok("")))));
                }
            }
        }
    }
}

/// The ADS service as a tower service for `tonic::transport::Server` (see the module docs).
pub struct AdsService<G: Generator> {
    server: AdsServer<G>,
}

impl<G: Generator> Clone for AdsService<G> {
    fn clone(&self) -> Self {
        AdsService {
            server: self.server.clone(),
        }
    }
}

impl<G: Generator> AdsService<G> {
    pub(crate) fn new(server: AdsServer<G>) -> AdsService<G> {
        AdsService { server }
    }
}

impl<G: Generator> tonic::server::NamedService for AdsService<G> {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

impl<G, B> tonic::codegen::Service<http::Request<B>> for AdsService<G>
where
    G: Generator,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let server = self.server.clone();
        Box::pin(async move {
            let peer: Option<SocketAddr> = req
                .extensions()
                .get::<tonic::transport::server::TcpConnectInfo>()
                .and_then(|i| i.remote_addr());
            let path = req.uri().path().to_owned();
            let body = req.into_body();
            let (tx, rx) = mpsc::unbounded_channel();
            match path.as_str() {
                SOTW_PATH => {
                    let mut codec = tonic_prost::ProstCodec::<(), DiscoveryRequest>::default();
                    let inbound = Streaming::new_request(codec.decoder(), body, None, Some(MAX_REQUEST));
                    server.open_sotw(peer, inbound, tx).await;
                }
                DELTA_PATH => {
                    let mut codec = tonic_prost::ProstCodec::<(), DeltaDiscoveryRequest>::default();
                    let inbound = Streaming::new_request(codec.decoder(), body, None, Some(MAX_REQUEST));
                    server.open_delta(peer, inbound, tx).await;
                }
                _ => return Ok(Status::unimplemented(format!("no method {path}")).into_http()),
            }
            let mut response = http::Response::new(tonic::body::Body::new(ResponseBody::new(rx)));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::envoy::service::discovery::v3::DiscoveryResponse;
    use http_body_util::BodyExt;

    /// The chunked writer's bytes are exactly prost's encoding of the same response.
    #[tokio::test]
    async fn chunked_responses_decode_as_prost_encodes_them() {
        let resources: Vec<Arc<Any>> = (0..200)
            .map(|i| {
                Arc::new(Any {
                    type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
                    value: vec![i as u8; 100 + i * 7],
                })
            })
            .collect();
        let (tx, rx) = mpsc::unbounded_channel();
        for n in [0, 1, 200] {
            tx.send(Outgoing::Sotw(SotwResponse {
                version_info: format!("v{n}"),
                resources: resources[..n].to_vec(),
                type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
                nonce: format!("nonce-{n}"),
            }))
            .unwrap();
        }
        tx.send(Outgoing::Delta(DeltaDiscoveryResponse {
            nonce: "d".into(),
            removed_resources: vec!["gone".into()],
            ..Default::default()
        }))
        .unwrap();
        drop(tx);
        let mut body = ResponseBody::new(rx);
        let mut bytes = BytesMut::new();
        let mut chunks = 0;
        let trailers = loop {
            let frame = body.frame().await.unwrap().unwrap();
            match frame.into_data() {
                Ok(d) => {
                    assert!(d.len() <= CHUNK + 2048, "bounded pieces");
                    chunks += 1;
                    bytes.extend_from_slice(&d);
                }
                Err(f) => break f.into_trailers().unwrap(),
            }
        };
        assert_eq!(trailers.get("grpc-status").unwrap(), "0");
        assert!(body.frame().await.is_none());
        assert!(chunks > 8, "{chunks} pieces for ~150 KiB");
        let mut messages = Vec::new();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            assert_eq!(rest[0], 0, "not compressed");
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            messages.push(rest[5..5 + len].to_vec());
            rest = &rest[5 + len..];
        }
        assert_eq!(messages.len(), 4);
        for (m, n) in messages.iter().zip([0, 1, 200]) {
            let expected = DiscoveryResponse {
                version_info: format!("v{n}"),
                resources: resources[..n].iter().map(|a| (**a).clone()).collect(),
                type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
                nonce: format!("nonce-{n}"),
                ..Default::default()
            };
            assert_eq!(m, &expected.encode_to_vec());
        }
        let delta = DeltaDiscoveryResponse::decode(&messages[3][..]).unwrap();
        assert_eq!(delta.removed_resources, ["gone"]);
    }

    #[tokio::test]
    async fn an_error_ends_the_stream_with_its_status() {
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(Outgoing::Error(Status::invalid_argument("bad node")))
            .unwrap();
        let mut body = ResponseBody::new(rx);
        let trailers = body.frame().await.unwrap().unwrap().into_trailers().unwrap();
        assert_eq!(trailers.get("grpc-status").unwrap(), "3");
        assert_eq!(
            trailers.get("grpc-message").unwrap(),
            "bad%20node",
            "percent-encoded, as gRPC sends it"
        );
        assert!(body.frame().await.is_none());
    }
}
