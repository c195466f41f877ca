//! The log over gRPC (feature `grpc`): a tonic service to add to a server, its generated
//! client, and the standard health service.
//!
//! The service is `walrus.v1.Wal` of `proto/walrus.proto` (compiled in pure Rust by the
//! crate's build script: no `protoc` needed). [`service`] makes it on a log; the messages and
//! the generated client are in [`pb`], the client re-exported as [`WalClient`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! use walrus_async::grpc::{WalClient, pb};
//!
//! let wal = walrus_async::Walrus::open(dir.path()).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! let (_health, health) = walrus_async::grpc::health().await;
//! let server = tonic::transport::Server::builder()
//!     .add_service(health)
//!     .add_service(walrus_async::grpc::service(wal.clone()))
//!     .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)));
//! tokio::spawn(server);
//!
//! let mut client = WalClient::connect(format!("http://{addr}")).await?;
//! let reply = client
//!     .append(pb::AppendRequest { topic: "orders".into(), data: "order #1".into() })
//!     .await?;
//! assert_eq!(reply.into_inner().offset, 0);
//! # wal.close().await?;
//! # Ok(()) }
//! ```
//!
//! | method | does |
//! |---|---|
//! | `Append(topic, data)` | one entry: its offset once the append resolved (durable under `SyncEach`) |
//! | `AppendBatch(topic, entries)` | entries at consecutive offsets, atomically: `first`, `end` |
//! | `Read(topic, from, max_bytes)` | entries from `from`, about `max_bytes` of payload (default 1 MiB, at most [`Options::max_read_bytes`]), at least one when any is there |
//! | `Subscribe(topic, consumer, from)` | server streaming: the topic from the consumer's checkpoint (or `from`), tailing; the consumer is held while the call is open and released as soon as it ends |
//! | `Ack(topic, consumer, offset)` | acknowledges, through the consumer's open `Subscribe`, what it delivered up to `offset` |
//! | `ResetConsumer(topic, consumer, offset \| earliest \| latest)` | moves a checkpoint: where the consumer now resumes |
//! | `RemoveConsumer(topic, consumer)` | forgets a named consumer |
//! | `Topics(after, limit)` | topics in name order, a page at a time (1000 by default), with their offsets, entries, bytes and consumers' lag; `next_after` when more follow |
//!
//! An empty consumer name is the topic's default consumer. Errors carry these codes:
//! `INVALID_ARGUMENT` (a bad topic or consumer name, an offset never delivered, a reset
//! without a target), `RESOURCE_EXHAUSTED` (an entry, batch or message too large),
//! `NOT_FOUND` (an unknown topic where it matters), `ABORTED` (the consumer is busy with a live
//! stream), `FAILED_PRECONDITION` (an `Ack` without an open `Subscribe` of that consumer),
//! `OUT_OF_RANGE` (entries deleted by retention: the oldest offset is in the `walrus-oldest`
//! metadata), `UNAVAILABLE` (the log closed), `UNAUTHENTICATED` (a missing or wrong token),
//! `INTERNAL` (I/O failures).
//!
//! A reply of `Read` can be as large as `max_bytes` plus one entry, and a `Subscribe` message
//! as large as one entry (up to the log's `max_entry_bytes`, 16 MiB by default): a client of a
//! log with entries larger than tonic's default 4 MiB message limit raises it with
//! `WalClient::max_decoding_message_size`, or it fails at such an entry every time.
//!
//! A `Subscribe` call ends with the first failure: `OUT_OF_RANGE` when its consumer's next
//! entries were deleted by retention (subscribe again with `from` set to the oldest offset,
//! given in `walrus-oldest`), `UNAVAILABLE` when the log closes or the server shuts down.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::StreamExt as _;
use futures::stream::BoxStream;
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::{Code, Request, Response, Status};

use crate::service::{AckError, Drain, Served, Streams};
use crate::{Error, ResetTo, Walrus};

/// The messages, service and client generated from `proto/walrus.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("walrus.v1");
}

pub use pb::wal_client::WalClient;

/// Settings of [`service_with`].
#[derive(Clone)]
#[non_exhaustive]
pub struct Options {
    /// A bearer token every call requires, as `authorization: Bearer …` metadata.
    pub token: Option<String>,
    /// The most payload one `Read` returns (default 2 MiB), whatever it asks.
    pub max_read_bytes: usize,
    drain: Option<Drain>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("max_read_bytes", &self.max_read_bytes)
            .field("shutdown", &self.drain.is_some())
            .finish()
    }
}

impl Default for Options {
    fn default() -> Options {
        Options {
            token: None,
            max_read_bytes: 2 << 20,
            drain: None,
        }
    }
}

impl Options {
    /// Requires `token` on every call.
    pub fn token(mut self, token: impl Into<String>) -> Options {
        self.token = Some(token.into());
        self
    }

    /// Sets [`max_read_bytes`](Self::max_read_bytes).
    pub fn max_read_bytes(mut self, n: usize) -> Options {
        self.max_read_bytes = n;
        self
    }

    /// Ends every open `Subscribe` call (with status OK) when `signal` resolves, so that the
    /// server's graceful shutdown (`Server::serve_with_shutdown`, which waits for calls to
    /// finish) is not held open by clients tailing topics. Give both the same signal.
    pub fn shutdown(mut self, signal: impl Future<Output = ()> + Send + 'static) -> Options {
        self.drain = Some(crate::service::drain(signal));
        self
    }
}

/// The `walrus.v1.Wal` service on `wal`, without a token.
pub fn service(wal: Walrus) -> WalGrpc {
    service_with(wal, Options::default())
}

/// The `walrus.v1.Wal` service on `wal`, with `options`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> walrus_async::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let wal = walrus_async::Walrus::open(dir.path()).await?;
/// use walrus_async::grpc::{Options, service_with};
/// let router = tonic::transport::Server::builder()
///     .add_service(service_with(wal.clone(), Options::default().token("s3cret")));
/// # drop(router);
/// # wal.close().await }
/// ```
pub fn service_with(wal: Walrus, options: Options) -> WalGrpc {
    let cfg = wal.config();
    // The largest message the log can take: a whole batch, with each entry's field header
    // (at most 11 bytes), or one entry, plus room for the topic name.
    let max_message = cfg
        .max_batch_bytes
        .saturating_add(cfg.max_batch_entries.saturating_mul(11))
        .max(cfg.max_entry_bytes)
        .saturating_add(4096);
    let inner = WalService {
        streams: Streams::new(options.drain),
        max_read_bytes: options.max_read_bytes,
        wal,
    };
    WalGrpc {
        inner: pb::wal_server::WalServer::new(inner).max_decoding_message_size(max_message),
        token: options.token.map(Arc::from),
    }
}

/// The standard gRPC health service (`grpc.health.v1.Health`), reporting `walrus.v1.Wal` and
/// the server as a whole (`""`) serving. The health service needs no token.
///
/// Keep the reporter for the shutdown: `set_not_serving`, then `clear_service_status` of both
/// names, which ends open `Watch` calls (load balancers keep one open; a graceful shutdown
/// waits for them otherwise).
pub async fn health() -> (
    tonic_health::server::HealthReporter,
    tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>,
) {
    let reporter = tonic_health::server::HealthReporter::new();
    for name in [pb::wal_server::SERVICE_NAME, ""] {
        reporter
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
    let service = tonic_health::server::HealthService::from_health_reporter(reporter.clone());
    (
        reporter,
        tonic_health::pb::health_server::HealthServer::new(service),
    )
}

/// The `walrus.v1.Wal` service, ready for `tonic::transport::Server::add_service`.
///
/// It is the generated `WalServer` over [`WalService`], with two changes: the token is checked
/// on the call's headers before its message is read, and a message larger than the service
/// takes is answered `RESOURCE_EXHAUSTED`, as gRPC specifies, where tonic says `OUT_OF_RANGE`
/// (which this service keeps for entries deleted by retention).
#[derive(Clone)]
pub struct WalGrpc {
    inner: pb::wal_server::WalServer<WalService>,
    token: Option<Arc<str>>,
}

impl std::fmt::Debug for WalGrpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalGrpc").finish_non_exhaustive()
    }
}

impl tonic::server::NamedService for WalGrpc {
    const NAME: &'static str = pb::wal_server::SERVICE_NAME;
}

impl<B> Service<http::Request<B>> for WalGrpc
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The token is checked on the headers, before the message is read and decoded: a
        // client without it cannot make the server buffer a large message.
        if let Some(token) = &self.token {
            let given = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            if !crate::service::bearer_matches(given, token) {
                let denied = Status::unauthenticated("a valid bearer token is required");
                return Box::pin(std::future::ready(Ok(denied.into_http())));
            }
        }
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut res = fut.await?;
            too_large_is_resource_exhausted(&mut res);
            Ok(res)
        })
    }
}

/// tonic refuses a message over the decoding limit before the method runs, with a
/// trailers-only response saying `OUT_OF_RANGE`: say `RESOURCE_EXHAUSTED` instead.
fn too_large_is_resource_exhausted<B>(res: &mut http::Response<B>) {
    let h = res.headers_mut();
    let out_of_range = h.get("grpc-status").is_some_and(|v| v.as_bytes() == b"11");
    let too_large = h.get("grpc-message").is_some_and(|v| {
        v.as_bytes()
            .starts_with(b"Error,%20decoded%20message%20length%20too%20large")
    });
    if out_of_range && too_large {
        h.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
}

/// The methods of `walrus.v1.Wal` on a log. Made by [`service`] / [`service_with`].
pub struct WalService {
    wal: Walrus,
    streams: Streams,
    max_read_bytes: usize,
}

impl WalService {
    /// The topic exists: else `NOT_FOUND` (and `INVALID_ARGUMENT` for a name no topic can
    /// have, `UNAVAILABLE` once closed).
    fn known(&self, topic: &str) -> Result<crate::TopicInfo, Status> {
        self.wal.check_open().map_err(status)?;
        crate::topic::validate_topic(topic).map_err(status)?;
        self.wal
            .topic_info(topic)
            .ok_or_else(|| Status::not_found(format!("no topic {topic:?}")))
    }
}

fn shutting_down() -> Status {
    Status::unavailable("the server is shutting down")
}

/// The status of a log error.
fn status(e: Error) -> Status {
    let code = match &e {
        Error::InvalidTopic { .. } | Error::InvalidConsumer { .. } | Error::InvalidAck { .. } => {
            Code::InvalidArgument
        }
        Error::EntryTooLarge { .. } | Error::BatchTooLarge { .. } => Code::ResourceExhausted,
        Error::ConsumerBusy { .. } => Code::Aborted,
        Error::Truncated { .. } => Code::OutOfRange,
        Error::Closed | Error::RuntimeGone => Code::Unavailable,
        _ => Code::Internal,
    };
    let mut s = Status::new(code, e.to_string());
    if let Error::Truncated { oldest, .. } = e {
        s.metadata_mut().insert(
            "walrus-oldest",
            tonic::metadata::MetadataValue::from(oldest),
        );
    }
    s
}

fn entry(e: crate::Entry) -> pb::Entry {
    pb::Entry {
        offset: e.offset,
        timestamp_ms: e.timestamp,
        data: e.data,
    }
}

#[tonic::async_trait]
impl pb::wal_server::Wal for WalService {
    async fn append(
        &self,
        req: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendReply>, Status> {
        let pb::AppendRequest { topic, data } = req.into_inner();
        let offset = self.wal.append(&topic, data).await.map_err(status)?;
        Ok(Response::new(pb::AppendReply { offset }))
    }

    async fn append_batch(
        &self,
        req: Request<pb::AppendBatchRequest>,
    ) -> Result<Response<pb::AppendBatchReply>, Status> {
        let pb::AppendBatchRequest { topic, entries } = req.into_inner();
        let range = self
            .wal
            .append_batch(&topic, entries)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::AppendBatchReply {
            first: range.start,
            end: range.end,
        }))
    }

    async fn read(&self, req: Request<pb::ReadRequest>) -> Result<Response<pb::ReadReply>, Status> {
        let pb::ReadRequest {
            topic,
            from,
            max_bytes,
        } = req.into_inner();
        self.known(&topic)?;
        let max_bytes = match usize::try_from(max_bytes) {
            Ok(0) => 1 << 20,
            Ok(n) => n,
            Err(_) => usize::MAX,
        }
        .min(self.max_read_bytes);
        let got = self
            .wal
            .read_at(&topic, from, max_bytes)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ReadReply {
            entries: got.into_iter().map(entry).collect(),
        }))
    }

    type SubscribeStream = BoxStream<'static, Result<pb::Entry, Status>>;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let pb::SubscribeRequest {
            topic,
            consumer,
            from,
        } = req.into_inner();
        if self.streams.draining() {
            return Err(shutting_down());
        }
        if !consumer.is_empty() {
            crate::topic::validate_consumer(&consumer).map_err(status)?;
        }
        // A topic without entries yet is tailed from its first (consumers may start before
        // producers), as `Walrus::subscribe` does.
        let mut s = if consumer.is_empty() {
            self.wal.subscribe(&topic)
        } else {
            self.wal.subscribe_as(&topic, &consumer)
        }
        .map_err(status)?;
        if let Some(from) = from {
            s.seek(from).map_err(status)?;
        }
        // The call ends with the first failure: `OUT_OF_RANGE` for entries deleted by
        // retention (subscribe again with `from` at the oldest offset), `UNAVAILABLE` when
        // the log closes or the server shuts down.
        let entries = self.streams.serve(s).map(|item| match item {
            Served::Entry(e) => Ok(entry(e)),
            Served::Failed(e) => Err(status(e)),
            Served::ShuttingDown => Err(shutting_down()),
        });
        Ok(Response::new(entries.boxed()))
    }

    async fn ack(&self, req: Request<pb::AckRequest>) -> Result<Response<pb::AckReply>, Status> {
        let pb::AckRequest {
            topic,
            consumer,
            offset,
        } = req.into_inner();
        self.wal.check_open().map_err(status)?;
        crate::topic::validate_topic(&topic).map_err(status)?;
        if !consumer.is_empty() {
            crate::topic::validate_consumer(&consumer).map_err(status)?;
        }
        match self.streams.ack(&topic, &consumer, offset).await {
            Ok(()) => Ok(Response::new(pb::AckReply {})),
            Err(AckError::Wal(e)) => Err(status(e)),
            Err(AckError::NotStreaming) => Err(Status::failed_precondition(
                "no open Subscribe of this consumer: acknowledge what a stream delivered while it is open",
            )),
        }
    }

    async fn reset_consumer(
        &self,
        req: Request<pb::ResetConsumerRequest>,
    ) -> Result<Response<pb::ResetConsumerReply>, Status> {
        use pb::reset_consumer_request::To;
        let pb::ResetConsumerRequest {
            topic,
            consumer,
            to,
        } = req.into_inner();
        self.known(&topic)?;
        let to = match to {
            Some(To::Offset(n)) => ResetTo::Offset(n),
            Some(To::Earliest(true)) => ResetTo::Earliest,
            Some(To::Latest(true)) => ResetTo::Latest,
            _ => {
                return Err(Status::invalid_argument(
                    "set one of offset, earliest = true or latest = true",
                ));
            }
        };
        let offset = self
            .wal
            .reset_consumer(&topic, &consumer, to)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ResetConsumerReply { offset }))
    }

    async fn remove_consumer(
        &self,
        req: Request<pb::RemoveConsumerRequest>,
    ) -> Result<Response<pb::RemoveConsumerReply>, Status> {
        let pb::RemoveConsumerRequest { topic, consumer } = req.into_inner();
        self.known(&topic)?;
        self.wal
            .remove_consumer(&topic, &consumer)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RemoveConsumerReply {}))
    }

    async fn topics(
        &self,
        req: Request<pb::TopicsRequest>,
    ) -> Result<Response<pb::TopicsReply>, Status> {
        let pb::TopicsRequest { after, limit } = req.into_inner();
        self.wal.check_open().map_err(status)?;
        let (names, next_after) = crate::service::page(self.wal.topics(), &after, limit as usize);
        let mut lags: std::collections::HashMap<String, Vec<pb::ConsumerLag>> =
            std::collections::HashMap::new();
        for c in self.wal.stats().consumers {
            lags.entry(c.topic).or_default().push(pb::ConsumerLag {
                consumer: c.consumer,
                lag: c.lag,
            });
        }
        let topics = names
            .into_iter()
            .filter_map(|name| self.wal.topic_info(&name))
            .map(|info| pb::TopicInfo {
                consumers: lags.remove(&info.name).unwrap_or_default(),
                name: info.name,
                oldest_offset: info.oldest_offset,
                next_offset: info.next_offset,
                entries: info.entries,
                bytes: info.bytes,
            })
            .collect();
        Ok(Response::new(pb::TopicsReply { topics, next_after }))
    }
}
