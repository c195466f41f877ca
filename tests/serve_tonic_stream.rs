//! A `TopicStream` served as a tonic server-streaming gRPC method, over a real loopback
//! connection. No protobuf and no `protoc`: a small codec carries raw bytes, and the service
//! is wired with the same `tonic::server::Grpc` / `tonic::client::Grpc` calls generated code
//! makes.

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http;
use tonic::{Request, Response, Status};
use walrus_async::Walrus;

#[derive(Clone, Copy, Default)]
struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;
    fn encoder(&mut self) -> Self::Encoder {
        BytesCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        BytesCodec
    }
}

impl Encoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// The method: request = topic name, response = a stream of entry payloads.
struct Tail {
    wal: Walrus,
}

type EntryStream = BoxStream<'static, Result<Bytes, Status>>;

impl tower::Service<Request<Bytes>> for Tail {
    type Response = Response<EntryStream>;
    type Error = Status;
    type Future = futures::future::Ready<Result<Self::Response, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let topic = String::from_utf8_lossy(req.get_ref()).into_owned();
        futures::future::ready(match self.wal.subscribe_as(&topic, "grpc") {
            // The TopicStream itself is the response stream, mapped to tonic's item type.
            Ok(stream) => Ok(Response::new(
                stream
                    .map(|r| {
                        r.map(|e| e.data)
                            .map_err(|e| Status::internal(e.to_string()))
                    })
                    .boxed(),
            )),
            Err(e) => Err(Status::failed_precondition(e.to_string())),
        })
    }
}

/// The gRPC service routing `/walrus.Log/Tail`.
#[derive(Clone)]
struct LogService {
    wal: Walrus,
}

impl tonic::server::NamedService for LogService {
    const NAME: &'static str = "walrus.Log";
}

impl tower::Service<http::Request<tonic::body::Body>> for LogService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let wal = self.wal.clone();
        Box::pin(async move {
            if req.uri().path() != "/walrus.Log/Tail" {
                return Ok(Status::unimplemented("no such method").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(BytesCodec);
            Ok(grpc.server_streaming(Tail { wal }, req).await)
        })
    }
}

async fn next(s: &mut tonic::Streaming<Bytes>) -> Bytes {
    tokio::time::timeout(Duration::from_secs(30), s.message())
        .await
        .expect("a message within the deadline")
        .unwrap()
        .expect("the stream goes on")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_server_streaming_method_tails_a_topic() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Walrus::open(dir.path()).await.unwrap();
    wal.append("orders", "first").await.unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(LogService { wal: wal.clone() })
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            ),
    );

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.unwrap();
    let mut stream = client
        .server_streaming(
            Request::new(Bytes::from_static(b"orders")),
            http::uri::PathAndQuery::from_static("/walrus.Log/Tail"),
            BytesCodec,
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut stream).await, "first");
    for i in 1..=3 {
        wal.append("orders", format!("order {i}")).await.unwrap();
        assert_eq!(next(&mut stream).await, format!("order {i}").as_bytes());
    }
    // A second subscriber of the same consumer is refused while the first streams.
    client.ready().await.unwrap();
    let refused = client
        .server_streaming(
            Request::new(Bytes::from_static(b"orders")),
            http::uri::PathAndQuery::from_static("/walrus.Log/Tail"),
            BytesCodec,
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains("busy"), "{}", refused.message());
    drop(stream);
    server.abort();
}
