//! The log over HTTP (feature `http`): an axum [`Router`] to nest into an application.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> walrus_async::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! let wal = walrus_async::Walrus::open(dir.path()).await?;
//! let app: axum::Router = axum::Router::new()
//!     .route("/", axum::routing::get(|| async { "my service" }))
//!     .nest("/log", walrus_async::http::router(wal.clone()));
//! // axum::serve(listener, app).await …
//! # drop(app);
//! # wal.close().await }
//! ```
//!
//! | route | does |
//! |---|---|
//! | `POST /topics/{topic}` | appends the body as one entry: `{"offset": n}` once the append resolved (durable under `SyncEach`) |
//! | `POST /topics/{topic}/batch` | appends atomically the entries of an NDJSON body (`application/x-ndjson`, one item a line) or a JSON array: an item is a UTF-8 string, `{"data": "…"}` or `{"data_base64": "…"}`; `{"first": n, "end": m}` |
//! | `GET /topics/{topic}/entries?from=N&max_bytes=M` | NDJSON, one entry a line: `offset`, `timestamp_ms`, `data` (UTF-8) or `data_base64`; at least one entry when any is there, about `max_bytes` of payload (default 1 MiB, at most [`Options::max_read_bytes`]) |
//! | `GET /topics/{topic}/stream?consumer=NAME` | Server-Sent Events tailing the topic from the consumer's checkpoint (without `consumer`: the default consumer): event `entry`, id the offset, data as in `entries`; a reconnect with `Last-Event-ID: n` resumes at `n + 1`. A client that goes away releases the consumer at once |
//! | `POST /topics/{topic}/consumers/{name}/ack` | body `{"offset": n}`: acknowledges through the consumer's live stream what it delivered up to `n` (409 `not_streaming` without one) |
//! | `GET /topics?after=&limit=` | `{"topics": [names]}` in name order, a page at a time (1000 by default, at most 10000), with `"next_after"` to pass as `after` when more follow |
//! | `GET /topics/{topic}` | offsets, entries, bytes, and each registered consumer with its lag |
//! | `POST /topics/{topic}/consumers/{name}/reset` | body `{"offset": n}`, `{"to": "earliest"}` or `{"to": "latest"}`: `{"offset": n}` where it now resumes (`_` names the default consumer, so a consumer named `_` is out of reach here) |
//! | `DELETE /topics/{topic}/consumers/{name}` | forgets a named consumer (204) |
//! | `GET /healthz`, `GET /readyz` | 200 while the process runs; 200 while the log is open, 503 once closed |
//! | `GET /metrics` | Prometheus text, with the `metrics` feature and a render given to [`Options::metrics`] |
//!
//! Errors are JSON, `{"error": kind, "message": …}`: 400 an invalid topic or consumer name or a
//! bad body, 401 a missing or wrong token, 404 an unknown topic, 409 a consumer busy with a
//! live stream, 410 entries deleted by retention (with `"oldest"`), 413 an entry, batch or
//! body too large (a body is refused at once when its `Content-Length` passes the route's limit,
//! else as soon as more than that was read; a batch's items are counted while decoded), 503
//! the log closed, 500 I/O failures, and 404/405 JSON for unknown routes and methods.

use std::sync::Arc;

use axum::body::Body;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::service::{AckError, Drain, Streams};
use crate::{Error, ResetTo, Walrus};

/// Settings of [`router_with`].
#[derive(Clone)]
#[non_exhaustive]
pub struct Options {
    /// A bearer token every route but `/healthz` requires (`Authorization: Bearer …`).
    pub token: Option<String>,
    /// The largest request body read, in bytes; `None`: what the log takes (`max_entry_bytes`
    /// for an append, twice `max_batch_bytes` for a batch, room for base64). A larger body
    /// gets 413: at once when its `Content-Length` says so, else once that much was read.
    pub max_body_bytes: Option<usize>,
    /// The most payload one `GET …/entries` returns (default 16 MiB), whatever `max_bytes`
    /// asks.
    pub max_read_bytes: usize,
    drain: Option<Drain>,
    #[cfg(feature = "metrics")]
    metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_read_bytes", &self.max_read_bytes)
            .field("shutdown", &self.drain.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for Options {
    fn default() -> Options {
        Options {
            token: None,
            max_body_bytes: None,
            max_read_bytes: 16 << 20,
            drain: None,
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }
}

impl Options {
    /// Requires `token` on every route but `/healthz`.
    pub fn token(mut self, token: impl Into<String>) -> Options {
        self.token = Some(token.into());
        self
    }

    /// Sets [`max_body_bytes`](Self::max_body_bytes).
    pub fn max_body_bytes(mut self, n: usize) -> Options {
        self.max_body_bytes = Some(n);
        self
    }

    /// Sets [`max_read_bytes`](Self::max_read_bytes).
    pub fn max_read_bytes(mut self, n: usize) -> Options {
        self.max_read_bytes = n;
        self
    }

    /// Ends every open event stream when `signal` resolves, so that a server's graceful
    /// shutdown (`axum::serve(..).with_graceful_shutdown(..)`, which waits for responses to
    /// finish) is not held open by clients tailing topics. Give both the same signal.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> walrus_async::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let wal = walrus_async::Walrus::open(dir.path()).await?;
    /// let (stop, stopped) = tokio::sync::watch::channel(false);
    /// let signal = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
    ///     let _ = rx.wait_for(|s| *s).await;
    /// };
    /// let app = walrus_async::http::router_with(
    ///     wal.clone(),
    ///     walrus_async::http::Options::default().shutdown(signal(stopped.clone())),
    /// );
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let server = tokio::spawn(
    ///     axum::serve(listener, app).with_graceful_shutdown(signal(stopped)).into_future(),
    /// );
    /// stop.send_replace(true); // e.g. on SIGTERM
    /// server.await.unwrap()?;
    /// wal.close().await?;
    /// # Ok(()) }
    /// ```
    pub fn shutdown(mut self, signal: impl Future<Output = ()> + Send + 'static) -> Options {
        self.drain = Some(crate::service::drain(signal));
        self
    }

    /// Serves `GET /metrics` with what `render` returns, as Prometheus text (after refreshing
    /// the log's gauges with [`Walrus::record_metrics`]). The crate installs no recorder:
    /// pass your exporter's render, e.g. `metrics-exporter-prometheus`'s
    /// `PrometheusHandle::render`. Without it the route is not there (404).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> walrus_async::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let wal = walrus_async::Walrus::open(dir.path()).await?;
    /// let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
    ///     .install_recorder()
    ///     .expect("no other recorder installed");
    /// let options = walrus_async::http::Options::default().metrics(move || handle.render());
    /// let app = walrus_async::http::router_with(wal.clone(), options);
    /// # drop(app);
    /// # wal.close().await }
    /// ```
    #[cfg(feature = "metrics")]
    pub fn metrics(mut self, render: impl Fn() -> String + Send + Sync + 'static) -> Options {
        self.metrics = Some(Arc::new(render));
        self
    }
}

/// The routes of the module docs, on `wal`, without a token.
pub fn router(wal: Walrus) -> Router {
    router_with(wal, Options::default())
}

/// The routes of the module docs, on `wal`, with `options`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> walrus_async::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let wal = walrus_async::Walrus::open(dir.path()).await?;
/// use walrus_async::http::{Options, router_with};
/// let app = router_with(wal.clone(), Options::default().token("s3cret"));
/// # drop(app);
/// # wal.close().await }
/// ```
pub fn router_with(wal: Walrus, options: Options) -> Router {
    let token: Option<Arc<str>> = options.token.clone().map(Arc::from);
    let cfg = wal.config();
    let limits = Limits {
        entry: options.max_body_bytes.unwrap_or(cfg.max_entry_bytes),
        batch: options
            .max_body_bytes
            .unwrap_or(cfg.max_batch_bytes.saturating_mul(2).max(1 << 20)),
        small: options.max_body_bytes.unwrap_or(64 << 10).min(64 << 10),
        batch_entries: cfg.max_batch_entries,
        read: options.max_read_bytes,
    };
    let state = Ctx {
        wal,
        limits: Arc::new(limits),
        streams: Streams::new(options.drain.clone()),
    };
    let routes = Router::new();
    #[cfg(feature = "metrics")]
    let routes = match options.metrics.clone() {
        None => routes,
        Some(render) => routes.route(
            "/metrics",
            get(move |State(wal): State<Walrus>| {
                let render = render.clone();
                async move {
                    wal.record_metrics();
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        render(),
                    )
                }
            }),
        ),
    };
    routes
        .route("/readyz", get(readyz))
        .route("/topics", get(topics))
        .route("/topics/{topic}", post(append).get(topic_info))
        .route("/topics/{topic}/batch", post(append_batch))
        .route("/topics/{topic}/entries", get(entries))
        .route("/topics/{topic}/stream", get(stream))
        .route("/topics/{topic}/consumers/{name}/ack", post(ack))
        .route(
            "/topics/{topic}/consumers/{name}/reset",
            post(reset_consumer),
        )
        .route(
            "/topics/{topic}/consumers/{name}",
            axum::routing::delete(remove_consumer),
        )
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "the route does not take this method",
            )
        })
        // Bodies are read by `read_body`, with each route's own limit.
        .layer(DefaultBodyLimit::disable())
        // Over the fallbacks too: without the token, 404 and 405 do not tell which routes
        // exist.
        .layer(middleware::from_fn_with_state(token, authorize))
        .with_state(state)
}

/// What each route reads at most.
struct Limits {
    entry: usize,
    batch: usize,
    small: usize,
    batch_entries: usize,
    read: usize,
}

/// The routes' state.
#[derive(Clone)]
struct Ctx {
    wal: Walrus,
    limits: Arc<Limits>,
    /// The live SSE streams: where their acknowledgements go.
    streams: Streams,
}

impl axum::extract::FromRef<Ctx> for Walrus {
    fn from_ref(c: &Ctx) -> Walrus {
        c.wal.clone()
    }
}

/// Reads a request body of at most `limit` bytes: 413 at once when `Content-Length` says it
/// is larger (nothing is read, and no `100 Continue` is sent), else once more was read.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is larger than {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let length_limit = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if length_limit {
            too_large()
        } else {
            ApiError::bad_body(format!("reading the body: {e}"))
        }
    })
}

/// Path parameters, with a JSON 400 when they cannot be decoded (`/topics/%FF`).
struct PathParams<T>(T);

impl<S, T> axum::extract::FromRequestParts<S> for PathParams<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(t)) => Ok(PathParams(t)),
            Err(r) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_path",
                r.body_text(),
            )),
        }
    }
}

/// An error as the API reports it.
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    oldest: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
            oldest: None,
        }
    }

    fn bad_body(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_body", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.kind, "message": self.message});
        if let Some(oldest) = self.oldest {
            body["oldest"] = json!(oldest);
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let (status, kind) = match &e {
            Error::InvalidTopic { .. } => (StatusCode::BAD_REQUEST, "invalid_topic"),
            Error::InvalidConsumer { .. } => (StatusCode::BAD_REQUEST, "invalid_consumer"),
            Error::InvalidAck { .. } => (StatusCode::BAD_REQUEST, "invalid_ack"),
            Error::EntryTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "entry_too_large"),
            Error::BatchTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "batch_too_large"),
            Error::ConsumerBusy { .. } => (StatusCode::CONFLICT, "consumer_busy"),
            Error::Truncated { .. } => (StatusCode::GONE, "truncated"),
            Error::Closed | Error::RuntimeGone => (StatusCode::SERVICE_UNAVAILABLE, "closed"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let oldest = match &e {
            Error::Truncated { oldest, .. } => Some(*oldest),
            _ => None,
        };
        ApiError {
            status,
            kind,
            message: e.to_string(),
            oldest,
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_query", r.body_text())
    }
}

async fn authorize(
    State(token): State<Option<Arc<str>>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    // The liveness probe needs no token (the path as nested: `/log/healthz` arrives here as
    // `/healthz`).
    let open = request.uri().path() == "/healthz" && request.method() == axum::http::Method::GET;
    if let Some(token) = token.as_ref().filter(|_| !open) {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !crate::service::bearer_matches(given, token) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required",
            )
            .into_response();
        }
    }
    next.run(request).await
}

async fn readyz(State(ctx): State<Ctx>) -> Response {
    if ctx.streams.draining() {
        shutting_down().into_response()
    } else if ctx.wal.check_open().is_err() {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "closed",
            "the log is closed",
        )
        .into_response()
    } else {
        Json(json!({"status": "ready"})).into_response()
    }
}

#[derive(Deserialize)]
struct TopicsQuery {
    #[serde(default)]
    after: String,
    #[serde(default)]
    limit: usize,
}

async fn topics(
    State(wal): State<Walrus>,
    query: Result<Query<TopicsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query?;
    wal.check_open()?;
    let (names, next) = crate::service::page(wal.topics(), &q.after, q.limit);
    let mut body = json!({ "topics": names });
    if let Some(next) = next {
        body["next_after"] = json!(next);
    }
    Ok(Json(body))
}

async fn topic_info(
    State(wal): State<Walrus>,
    PathParams(topic): PathParams<String>,
) -> Result<Json<Value>, ApiError> {
    let info = known(&wal, &topic)?;
    let consumers: Vec<Value> = wal
        .stats()
        .consumers
        .into_iter()
        .filter(|c| c.topic == topic)
        .map(|c| json!({"consumer": c.consumer, "lag": c.lag}))
        .collect();
    Ok(Json(json!({
        "name": info.name,
        "oldest_offset": info.oldest_offset,
        "next_offset": info.next_offset,
        "entries": info.entries,
        "bytes": info.bytes,
        "consumers": consumers,
    })))
}

/// The topic's state, or 404 (and 400 for a name no topic can have, 503 once closed).
fn known(wal: &Walrus, topic: &str) -> Result<crate::TopicInfo, ApiError> {
    wal.check_open()?;
    crate::topic::validate_topic(topic)?;
    wal.topic_info(topic).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_topic",
            format!("no topic {topic:?}"),
        )
    })
}

async fn append(
    State(ctx): State<Ctx>,
    PathParams(topic): PathParams<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let body = read_body(&headers, body, ctx.limits.entry).await?;
    let offset = ctx.wal.append(&topic, body).await?;
    Ok(Json(json!({ "offset": offset })))
}

/// One item of a batch body.
#[derive(Deserialize)]
#[serde(untagged)]
enum Item {
    Text(String),
    Data { data: String },
    Base64 { data_base64: String },
}

impl Item {
    fn into_bytes(self) -> Result<Bytes, ApiError> {
        match self {
            Item::Text(s) | Item::Data { data: s } => Ok(Bytes::from(s)),
            Item::Base64 { data_base64 } => base64::engine::general_purpose::STANDARD
                .decode(data_base64)
                .map(Bytes::from)
                .map_err(|e| ApiError::bad_body(format!("data_base64: {e}"))),
        }
    }
}

async fn append_batch(
    State(ctx): State<Ctx>,
    PathParams(topic): PathParams<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let body = read_body(&headers, body, ctx.limits.batch).await?;
    let max = ctx.limits.batch_entries;
    let too_many = || ApiError::from(Error::BatchTooLarge { size: max + 1, max });
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-ndjson"));
    // Items are decoded one at a time and counted, so a body of a million tiny items stops
    // at the log's limit instead of growing in memory first.
    let mut entries: Vec<Bytes> = Vec::new();
    if ndjson {
        for (i, line) in body.split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if entries.len() == max {
                return Err(too_many());
            }
            let item: Item = serde_json::from_slice(line)
                .map_err(|e| ApiError::bad_body(format!("line {}: {e}", i + 1)))?;
            entries.push(item.into_bytes()?);
        }
    } else {
        let mut de = serde_json::Deserializer::from_slice(&body);
        let seed = Items {
            max,
            out: &mut entries,
        };
        match serde::de::DeserializeSeed::deserialize(seed, &mut de).and_then(|r| {
            de.end()?;
            Ok(r)
        }) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => {
                return Err(ApiError::bad_body(format!(
                    "expected a JSON array of entries (or application/x-ndjson): {e}"
                )));
            }
        }
    }
    let range = ctx.wal.append_batch(&topic, entries).await?;
    Ok(Json(json!({"first": range.start, "end": range.end})))
}

/// Decodes a JSON array of items into entries, stopping at `max`.
struct Items<'a> {
    max: usize,
    out: &'a mut Vec<Bytes>,
}

impl<'de> serde::de::DeserializeSeed<'de> for Items<'_> {
    type Value = Result<(), ApiError>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Items<'_> {
    type Value = Result<(), ApiError>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of entries")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while let Some(item) = seq.next_element::<Item>()? {
            if self.out.len() == self.max {
                return Ok(Err(ApiError::from(Error::BatchTooLarge {
                    size: self.max + 1,
                    max: self.max,
                })));
            }
            match item.into_bytes() {
                Ok(b) => self.out.push(b),
                Err(e) => return Ok(Err(e)),
            }
        }
        Ok(Ok(()))
    }
}

#[derive(Deserialize)]
struct EntriesQuery {
    #[serde(default)]
    from: u64,
    max_bytes: Option<usize>,
}

async fn entries(
    State(ctx): State<Ctx>,
    PathParams(topic): PathParams<String>,
    query: Result<Query<EntriesQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    let wal = &ctx.wal;
    known(wal, &topic)?;
    let max_bytes = q.max_bytes.unwrap_or(1 << 20).min(ctx.limits.read);
    let got = wal.read_at(&topic, q.from, max_bytes).await?;
    let mut out = Vec::new();
    for e in got {
        serde_json::to_writer(&mut out, &entry_json(&e)).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })?;
        out.push(b'\n');
    }
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], out).into_response())
}

#[derive(Deserialize)]
struct StreamQuery {
    consumer: Option<String>,
}

/// An entry as the API shows it.
fn entry_json(e: &crate::Entry) -> Value {
    match std::str::from_utf8(&e.data) {
        Ok(s) => json!({"offset": e.offset, "timestamp_ms": e.timestamp, "data": s}),
        Err(_) => json!({
            "offset": e.offset,
            "timestamp_ms": e.timestamp,
            "data_base64": base64::engine::general_purpose::STANDARD.encode(&e.data),
        }),
    }
}

async fn stream(
    State(ctx): State<Ctx>,
    PathParams(topic): PathParams<String>,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    use crate::service::Served;
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt as _;
    let Query(q) = query?;
    if ctx.streams.draining() {
        return Err(shutting_down());
    }
    let consumer = q.consumer.unwrap_or_default();
    if !consumer.is_empty() {
        crate::topic::validate_consumer(&consumer)?;
    }
    // A topic without entries yet is tailed from its first (consumers may start before
    // producers), as `Walrus::subscribe` does.
    ctx.wal.check_open()?;
    let mut s = if consumer.is_empty() {
        ctx.wal.subscribe(&topic)?
    } else {
        ctx.wal.subscribe_as(&topic, &consumer)?
    };
    if let Some(last) = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        s.seek(last.saturating_add(1))?;
    }
    // A task owns the stream and ends it (releasing the consumer) as soon as the client
    // goes away. Failures are events, so the client learns why the stream ended (a body
    // error would only abort the connection).
    let events = ctx.streams.serve(s).map(|item| {
        Ok::<_, std::convert::Infallible>(match item {
            Served::Entry(e) => Event::default()
                .event("entry")
                .id(e.offset.to_string())
                .data(entry_json(&e).to_string()),
            Served::Failed(Error::Truncated {
                requested, oldest, ..
            }) => Event::default()
                .event("truncated")
                .data(json!({"requested": requested, "oldest": oldest}).to_string()),
            Served::Failed(e) => {
                let e = ApiError::from(e);
                Event::default()
                    .event("error")
                    .data(json!({"error": e.kind, "message": e.message}).to_string())
            }
            Served::ShuttingDown => Event::default().event("error").data(
                json!({"error": "shutting_down", "message": "the server is shutting down"})
                    .to_string(),
            ),
        })
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// 503 while the service drains for a shutdown.
fn shutting_down() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
        "the server is shutting down",
    )
}

#[derive(Deserialize)]
struct AckBody {
    offset: u64,
}

async fn ack(
    State(ctx): State<Ctx>,
    PathParams((topic, name)): PathParams<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let body = read_body(&headers, body, ctx.limits.small).await?;
    let AckBody { offset } =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_body(e.to_string()))?;
    ctx.wal.check_open()?;
    crate::topic::validate_topic(&topic)?;
    if !consumer_name(&name).is_empty() {
        crate::topic::validate_consumer(consumer_name(&name))?;
    }
    match ctx.streams.ack(&topic, consumer_name(&name), offset).await {
        Ok(()) => Ok(Json(json!({ "acked": offset }))),
        Err(AckError::Wal(e)) => Err(e.into()),
        Err(AckError::NotStreaming) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_streaming",
            "no live stream of this consumer: acknowledge what a stream delivered while it is open",
        )),
    }
}

/// The body of a reset: `{"offset": n}` or `{"to": "earliest" | "latest"}`.
#[derive(Deserialize)]
struct ResetBody {
    offset: Option<u64>,
    to: Option<String>,
}

/// `_` in a path names the topic's default consumer (whose name is empty).
fn consumer_name(name: &str) -> &str {
    if name == "_" { "" } else { name }
}

async fn reset_consumer(
    State(ctx): State<Ctx>,
    PathParams((topic, name)): PathParams<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let wal = &ctx.wal;
    let body = read_body(&headers, body, ctx.limits.small).await?;
    // JSON whatever the content type says: `curl -d '{"offset": 3}'` sends a form type.
    let body: ResetBody =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_body(e.to_string()))?;
    // Not a typo's topic created with a consumer registered on it.
    known(wal, &topic)?;
    let to = match (body.offset, body.to.as_deref()) {
        (Some(n), None) => ResetTo::Offset(n),
        (None, Some("earliest")) => ResetTo::Earliest,
        (None, Some("latest")) => ResetTo::Latest,
        _ => {
            return Err(ApiError::bad_body(
                r#"expected {"offset": n}, {"to": "earliest"} or {"to": "latest"}"#,
            ));
        }
    };
    let at = wal.reset_consumer(&topic, consumer_name(&name), to).await?;
    Ok(Json(json!({ "offset": at })))
}

async fn remove_consumer(
    State(wal): State<Walrus>,
    PathParams((topic, name)): PathParams<(String, String)>,
) -> Result<StatusCode, ApiError> {
    known(&wal, &topic)?;
    wal.remove_consumer(&topic, consumer_name(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}
