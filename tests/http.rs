//! The HTTP router (feature `http`): every route, every error status, the token, and a real
//! client over TCP against a server on 127.0.0.1.
#![cfg(feature = "http")]

#[path = "common/clients.rs"]
mod clients;
mod common;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;
use walrus_async::Walrus;
use walrus_async::http::{Options, router, router_with};

/// Sends one request to `app`; returns the status and the body (JSON if it parses, else a
/// string of the text).
async fn call(app: &Router, method: &str, uri: &str, body: impl Into<Body>) -> (StatusCode, Value) {
    call_with(app, Request::builder().method(method).uri(uri), body).await
}

async fn call_with(
    app: &Router,
    req: axum::http::request::Builder,
    body: impl Into<Body>,
) -> (StatusCode, Value) {
    let res = app
        .clone()
        .oneshot(req.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, v)
}

fn ndjson(v: &Value) -> Vec<Value> {
    v.as_str()
        .map(|s| {
            s.lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        })
        .unwrap_or_else(|| vec![v.clone()])
}

#[tokio::test]
async fn append_read_and_describe_topics() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    let app = Router::new().nest("/log", router(wal.clone()));

    let (s, v) = call(&app, "POST", "/log/topics/orders", "first").await;
    assert_eq!((s, &v["offset"]), (StatusCode::OK, &Value::from(0)));
    let (s, v) = call(&app, "POST", "/log/topics/orders", vec![0xffu8, 0]).await;
    assert_eq!((s, &v["offset"]), (StatusCode::OK, &Value::from(1)));
    // Appended means readable, through the library too.
    assert_eq!(wal.read_at("orders", 0, 0).await.unwrap()[0].data, "first");

    let req = Request::builder()
        .method("POST")
        .uri("/log/topics/orders/batch")
        .header("content-type", "application/x-ndjson");
    let (s, v) = call_with(
        &app,
        req,
        "\"a\"\n{\"data\":\"b\"}\n\n{\"data_base64\":\"Yw==\"}\n",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v["first"].as_u64(), v["end"].as_u64()), (Some(2), Some(5)));
    let (s, v) = call(
        &app,
        "POST",
        "/log/topics/orders/batch",
        r#"["d", {"data_base64": "ZQ=="}]"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v["first"].as_u64(), v["end"].as_u64()), (Some(5), Some(7)));

    let (s, v) = call(
        &app,
        "GET",
        "/log/topics/orders/entries?from=1",
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let lines = ndjson(&v);
    assert_eq!(lines.len(), 6);
    assert_eq!(lines[0]["offset"], 1);
    assert_eq!(lines[0]["data_base64"], "/wA=");
    assert!(lines[0]["timestamp_ms"].as_u64().unwrap() > 1_600_000_000_000);
    let texts: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l["data"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["a", "b", "c", "d", "e"]);

    let (s, v) = call(&app, "GET", "/log/topics", Body::empty()).await;
    assert_eq!(
        (s, v["topics"].clone()),
        (StatusCode::OK, serde_json::json!(["orders"]))
    );
    let mut stream = wal.subscribe_as("orders", "billing").unwrap();
    use futures::StreamExt;
    let e = stream.next().await.unwrap().unwrap();
    stream.ack(e.offset).await.unwrap();
    let (s, v) = call(&app, "GET", "/log/topics/orders", Body::empty()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (v["oldest_offset"].as_u64(), v["next_offset"].as_u64()),
        (Some(0), Some(7))
    );
    assert_eq!(v["entries"], 7);
    assert_eq!(v["consumers"][0]["consumer"], "billing");
    assert_eq!(v["consumers"][0]["lag"], 6);
    drop(stream);

    let (s, _) = call(&app, "GET", "/log/healthz", Body::empty()).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(&app, "GET", "/log/readyz", Body::empty()).await;
    assert_eq!(s, StatusCode::OK);
    wal.close().await.unwrap();
    let (s, v) = call(&app, "GET", "/log/readyz", Body::empty()).await;
    assert_eq!(
        (s, &v["error"]),
        (StatusCode::SERVICE_UNAVAILABLE, &Value::from("closed"))
    );
    let (s, v) = call(&app, "POST", "/log/topics/orders", "late").await;
    assert_eq!(
        (s, &v["error"]),
        (StatusCode::SERVICE_UNAVAILABLE, &Value::from("closed"))
    );
}

#[tokio::test]
async fn consumers_are_reset_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    wal.append_batch("t", ["a", "b", "c"]).await.unwrap();
    let app = router(wal.clone());
    let (s, v) = call(
        &app,
        "POST",
        "/topics/t/consumers/c/reset",
        r#"{"offset": 2}"#,
    )
    .await;
    assert_eq!((s, &v["offset"]), (StatusCode::OK, &Value::from(2)));
    assert_eq!(wal.consumer_lag("t", "c"), Some(1));
    let (s, v) = call(
        &app,
        "POST",
        "/topics/t/consumers/c/reset",
        r#"{"to": "earliest"}"#,
    )
    .await;
    assert_eq!((s, &v["offset"]), (StatusCode::OK, &Value::from(0)));
    let (s, v) = call(
        &app,
        "POST",
        "/topics/t/consumers/_/reset",
        r#"{"to": "latest"}"#,
    )
    .await;
    assert_eq!((s, &v["offset"]), (StatusCode::OK, &Value::from(3)));
    assert_eq!(
        wal.entry_count("t"),
        0,
        "the default consumer moved to the end"
    );
    // Busy while a stream of it is live.
    let live = wal.subscribe_as("t", "c").unwrap();
    let (s, v) = call(
        &app,
        "POST",
        "/topics/t/consumers/c/reset",
        r#"{"offset": 1}"#,
    )
    .await;
    assert_eq!(
        (s, &v["error"]),
        (StatusCode::CONFLICT, &Value::from("consumer_busy"))
    );
    let (s, _) = call(&app, "DELETE", "/topics/t/consumers/c", Body::empty()).await;
    assert_eq!(s, StatusCode::CONFLICT);
    drop(live);
    let (s, _) = call(&app, "DELETE", "/topics/t/consumers/c", Body::empty()).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(wal.consumer_lag("t", "c"), None);
    let (s, v) = call(
        &app,
        "POST",
        "/topics/t/consumers/c/reset",
        r#"{"to": "sideways"}"#,
    )
    .await;
    assert_eq!(
        (s, &v["error"]),
        (StatusCode::BAD_REQUEST, &Value::from("bad_body"))
    );
    wal.close().await.unwrap();
}

#[tokio::test]
async fn every_error_has_its_status_and_a_json_body() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path())
        .max_entry_bytes(64)
        .max_batch_entries(8)
        .segment_bytes(64 << 10)
        .retention_bytes(1)
        .open()
        .await
        .unwrap();
    let app = router_with(wal.clone(), Options::default().max_body_bytes(1 << 10));
    let long = "x".repeat(300);
    let (s, v) = call(&app, "POST", &format!("/topics/{long}"), "x").await;
    assert_eq!(
        (s, &v["error"]),
        (StatusCode::BAD_REQUEST, &Value::from("invalid_topic"))
    );
    // A path that does not decode: a JSON 400 like every other error.
    let (s, v) = call(&app, "POST", "/topics/%FF", "x").await;
    assert_eq!(
        (s, &v["error"]),
        (StatusCode::BAD_REQUEST, &Value::from("bad_path"))
    );
    let (s, v) = call(&app, "POST", "/topics/t/batch", "not json").await;
    assert_eq!(
        (s, &v["error"]),
        (StatusCode::BAD_REQUEST, &Value::from("bad_body"))
    );
    let (s, v) = call(
        &app,
        "POST",
        "/topics/t/batch",
        r#"[{"data_base64": "!!"}]"#,
    )
    .await;
    assert_eq!(
        (s, &v["error"]),
        (StatusCode::BAD_REQUEST, &Value::from("bad_body"))
    );
    let (s, v) = call(&app, "GET", "/topics/t/entries?from=minus", Body::empty()).await;
    assert_eq!(
        (s, &v["error"]),
        (StatusCode::BAD_REQUEST, &Value::from("bad_query"))
    );
    let (s, v) = call(&app, "GET", "/topics/none", Body::empty()).await;
    assert_eq!(
        (s, &v["error"]),
        (StatusCode::NOT_FOUND, &Value::from("unknown_topic"))
    );
    let (s, _) = call(&app, "GET", "/topics/none/entries", Body::empty()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // The entry limit, and the body limit while the body is read.
    let (s, v) = call(&app, "POST", "/topics/t", vec![1u8; 65]).await;
    assert_eq!(
        (s, &v["error"]),
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            &Value::from("entry_too_large")
        )
    );
    let (s, v) = call(&app, "POST", "/topics/t", vec![1u8; 2 << 10]).await;
    assert_eq!(
        (s, &v["error"]),
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            &Value::from("body_too_large")
        )
    );
    let chunks = futures::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(vec![1u8; 512])));
    let (s, _) = call(&app, "POST", "/topics/t", Body::from_stream(chunks)).await;
    assert_eq!(
        s,
        StatusCode::PAYLOAD_TOO_LARGE,
        "a streamed body without a length"
    );
    assert_eq!(
        wal.topic_info("t"),
        None,
        "nothing was appended by a refused request"
    );
    // Entries deleted by retention: 410 with the oldest offset.
    for _ in 0..3000 {
        wal.append("t", vec![7u8; 64]).await.unwrap();
    }
    wal.reclaim().await.unwrap();
    let oldest = wal.topic_info("t").unwrap().oldest_offset;
    assert!(oldest > 0);
    let (s, v) = call(&app, "GET", "/topics/t/entries?from=0", Body::empty()).await;
    assert_eq!(
        (s, &v["error"]),
        (StatusCode::GONE, &Value::from("truncated"))
    );
    assert_eq!(v["oldest"], oldest);
    wal.close().await.unwrap();
}

#[tokio::test]
async fn a_token_guards_every_route_but_healthz() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    let app = router_with(wal.clone(), Options::default().token("s3cret"));
    let (s, _) = call(&app, "GET", "/healthz", Body::empty()).await;
    assert_eq!(s, StatusCode::OK);
    // The fallbacks too: without the token an unknown route and a wrong method look alike.
    for (method, uri) in [
        ("GET", "/topics"),
        ("POST", "/topics/t"),
        ("GET", "/readyz"),
        ("GET", "/no/such/route"),
        ("DELETE", "/topics"),
        ("POST", "/healthz"),
    ] {
        let (s, v) = call(&app, method, uri, "x").await;
        assert_eq!(
            (s, &v["error"]),
            (StatusCode::UNAUTHORIZED, &Value::from("unauthorized"))
        );
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", "Bearer wrong");
        let (s, _) = call_with(&app, req, "x").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(wal.topic_info("t"), None, "refused requests append nothing");
    let req = Request::builder()
        .method("POST")
        .uri("/topics/t")
        .header("authorization", "Bearer s3cret");
    let (s, v) = call_with(&app, req, "x").await;
    assert_eq!((s, &v["offset"]), (StatusCode::OK, &Value::from(0)));
    // The scheme is case-insensitive (RFC 7235).
    let req = Request::builder()
        .method("GET")
        .uri("/topics")
        .header("authorization", "bearer s3cret");
    let (s, _) = call_with(&app, req, Body::empty()).await;
    assert_eq!(s, StatusCode::OK);
    // Nested in an application, its /healthz still needs no token.
    let nested = Router::new().nest("/log", app);
    let (s, _) = call(&nested, "GET", "/log/healthz", Body::empty()).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(&nested, "GET", "/log/topics", Body::empty()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    wal.close().await.unwrap();
}

/// Over a real socket: a server on 127.0.0.1 and an HTTP/1.1 client writing bytes.
#[tokio::test]
async fn a_real_client_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Walrus::open(dir.path()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().nest("/log", router(wal.clone()));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    async fn http(addr: std::net::SocketAddr, request: String) -> String {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        conn.read_to_string(&mut out).await.unwrap();
        out
    }
    let res = http(
        addr,
        "POST /log/topics/tcp HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
            .into(),
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    assert!(res.ends_with(r#"{"offset":0}"#), "{res}");
    let res = http(
        addr,
        "GET /log/topics/tcp/entries HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(),
    )
    .await;
    assert!(res.contains("content-type: application/x-ndjson"), "{res}");
    assert!(res.contains(r#""data":"hello""#), "{res}");
    server.abort();
    wal.close().await.unwrap();
}

/// Reads SSE events from `body` until `n` more entry events arrived: (id, data) of each.
/// Keep-alive comments do not count; 30 s in all.
async fn events(body: &mut Body, n: usize) -> Vec<(u64, Value)> {
    tokio::time::timeout(std::time::Duration::from_secs(30), events_inner(body, n))
        .await
        .expect("the events within 30 s")
}

async fn events_inner(body: &mut Body, n: usize) -> Vec<(u64, Value)> {
    let mut text = String::new();
    loop {
        let got: Vec<(u64, Value)> = text
            .split("\n\n")
            .filter(|e| e.contains("event: entry"))
            .filter(|e| e.ends_with('}') || e.contains("\ndata: "))
            .filter_map(|e| {
                let id = e
                    .lines()
                    .find_map(|l| l.strip_prefix("id: "))?
                    .parse()
                    .ok()?;
                let data = e.lines().find_map(|l| l.strip_prefix("data: "))?;
                Some((id, serde_json::from_str(data).ok()?))
            })
            .collect();
        if got.len() >= n {
            return got;
        }
        let frame = tokio::time::timeout(std::time::Duration::from_secs(30), body.frame())
            .await
            .expect("an event within 30 s")
            .expect("the stream goes on")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
}

async fn open_stream(app: &Router, uri: &str, last_id: Option<u64>) -> Body {
    let mut req = Request::builder().method("GET").uri(uri);
    if let Some(id) = last_id {
        req = req.header("last-event-id", id.to_string());
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    res.into_body()
}

#[tokio::test]
async fn sse_streams_acks_resume_and_release_on_disconnect() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    wal.append_batch("t", ["a", "b"]).await.unwrap();
    let app = router(wal.clone());
    let (s, v) = call(
        &app,
        "POST",
        "/topics/t/consumers/c/ack",
        r#"{"offset": 0}"#,
    )
    .await;
    assert_eq!(
        (s, &v["error"]),
        (StatusCode::CONFLICT, &Value::from("not_streaming"))
    );

    let mut body = open_stream(&app, "/topics/t/stream?consumer=c", None).await;
    let got = events(&mut body, 2).await;
    assert_eq!(got[0].0, 0);
    assert_eq!(got[1].1["data"], "b");
    // Entries appended while the client listens arrive too.
    wal.append("t", vec![0xffu8]).await.unwrap();
    let got = events(&mut body, 1).await;
    assert_eq!(
        (got[0].0, &got[0].1["data_base64"]),
        (2, &Value::from("/w=="))
    );
    // Acknowledged through the live stream: the consumer's checkpoint moves.
    let (s, v) = call(
        &app,
        "POST",
        "/topics/t/consumers/c/ack",
        r#"{"offset": 1}"#,
    )
    .await;
    assert_eq!((s, &v["acked"]), (StatusCode::OK, &Value::from(1)));
    assert_eq!(wal.consumer_lag("t", "c"), Some(1));
    // An offset it never delivered is refused.
    let (s, v) = call(
        &app,
        "POST",
        "/topics/t/consumers/c/ack",
        r#"{"offset": 9}"#,
    )
    .await;
    assert_eq!(
        (s, &v["error"]),
        (StatusCode::BAD_REQUEST, &Value::from("invalid_ack"))
    );
    // A second stream of the same consumer while this one lives: busy.
    let (s, v) = call(&app, "GET", "/topics/t/stream?consumer=c", Body::empty()).await;
    assert_eq!(
        (s, &v["error"]),
        (StatusCode::CONFLICT, &Value::from("consumer_busy"))
    );

    // The client goes away: the consumer is released at once (no timeout to wait out).
    drop(body);
    let released = async {
        loop {
            match wal
                .reset_consumer("t", "c", walrus_async::ResetTo::Offset(2))
                .await
            {
                Ok(_) => break,
                Err(walrus_async::Error::ConsumerBusy { .. }) => tokio::task::yield_now().await,
                Err(e) => panic!("{e}"),
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), released)
        .await
        .expect("released");

    // Reconnecting resumes at the checkpoint, or after Last-Event-ID.
    let mut body = open_stream(&app, "/topics/t/stream?consumer=c", None).await;
    assert_eq!(events(&mut body, 1).await[0].0, 2);
    drop(body);
    let resumed = async {
        loop {
            let req = Request::builder()
                .method("GET")
                .uri("/topics/t/stream?consumer=c")
                .header("last-event-id", "0");
            let res = app
                .clone()
                .oneshot(req.body(Body::empty()).unwrap())
                .await
                .unwrap();
            if res.status() == StatusCode::OK {
                return res.into_body();
            }
            tokio::task::yield_now().await;
        }
    };
    let mut body = tokio::time::timeout(std::time::Duration::from_secs(10), resumed)
        .await
        .expect("released again");
    let got = events(&mut body, 2).await;
    assert_eq!((got[0].0, got[1].0), (1, 2), "after the last event id");
    drop(body);
    wal.close().await.unwrap();
}

#[cfg(feature = "metrics")]
#[tokio::test]
async fn metrics_route_serves_the_exporters_text() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    let (s, _) = call(&router(wal.clone()), "GET", "/metrics", Body::empty()).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "no route without a render");

    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap();
    let app = router_with(
        wal.clone(),
        Options::default()
            .token("t")
            .metrics(move || handle.render()),
    );
    wal.append("m", "x").await.unwrap();
    let (s, _) = call(&app, "GET", "/metrics", Body::empty()).await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "behind the token like the rest"
    );
    let req = Request::builder()
        .uri("/metrics")
        .header("authorization", "Bearer t");
    let (s, v) = call_with(&app, req, Body::empty()).await;
    assert_eq!(s, StatusCode::OK);
    let text = v.as_str().unwrap();
    assert!(text.contains("walrus_appends_total"), "{text}");
    // The gauges are refreshed on each scrape, not only by the once-a-second sampler.
    assert!(
        text.lines()
            .any(|l| l.starts_with("walrus_topics{") && l.ends_with(" 1")),
        "{text}"
    );
    wal.close().await.unwrap();
}

#[tokio::test]
async fn the_shutdown_signal_ends_open_event_streams() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    wal.append("t", "a").await.unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let app = router_with(
        wal.clone(),
        Options::default().shutdown(async move {
            let mut stopped = stopped;
            let _ = stopped.wait_for(|s| *s).await;
        }),
    );
    let mut body = open_stream(&app, "/topics/t/stream?consumer=c", None).await;
    assert_eq!(events(&mut body, 1).await[0].0, 0);
    stop.send_replace(true);
    let end = async {
        let mut text = String::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                text.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
        text
    };
    let text = tokio::time::timeout(std::time::Duration::from_secs(10), end)
        .await
        .expect("the stream ends on the signal");
    assert!(
        text.contains("event: error") && text.contains("shutting_down"),
        "the client is told why: {text:?}"
    );
    // No new stream starts, and the service reports itself not ready.
    let (s, v) = call(&app, "GET", "/topics/t/stream?consumer=d", Body::empty()).await;
    assert_eq!(
        (s, &v["error"]),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            &Value::from("shutting_down")
        )
    );
    let (s, _) = call(&app, "GET", "/readyz", Body::empty()).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    // And the consumer is free again (its task dropped the stream).
    let released = async {
        loop {
            match wal
                .reset_consumer("t", "c", walrus_async::ResetTo::Earliest)
                .await
            {
                Ok(_) => break,
                Err(walrus_async::Error::ConsumerBusy { .. }) => tokio::task::yield_now().await,
                Err(e) => panic!("{e}"),
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), released)
        .await
        .expect("released");
    wal.close().await.unwrap();
}

#[tokio::test]
async fn topics_come_a_page_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    for t in ["c", "a", "b"] {
        wal.append(t, "x").await.unwrap();
    }
    let app = router(wal.clone());
    let (s, v) = call(&app, "GET", "/topics?limit=2", Body::empty()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v,
        serde_json::json!({"topics": ["a", "b"], "next_after": "b"})
    );
    let (_, v) = call(&app, "GET", "/topics?after=b&limit=2", Body::empty()).await;
    assert_eq!(v, serde_json::json!({"topics": ["c"]}));
    let (s, _) = call(&app, "GET", "/topics?limit=x", Body::empty()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    wal.close().await.unwrap();
}

#[tokio::test]
async fn sse_over_tcp_resumes_after_last_event_id_and_a_disconnect_releases_the_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    wal.append_batch("t", ["a", "b", "c"]).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, router(wal.clone())).into_future());
    let http = clients::Http::new(addr, None);

    let mut s = http
        .events("/topics/t/stream?consumer=c", None)
        .await
        .unwrap();
    assert_eq!(s.next().await.unwrap().0, 0);
    assert_eq!(s.next().await.unwrap().0, 1);
    let (st, v) = http
        .call("POST", "/topics/t/consumers/c/ack", r#"{"offset": 0}"#)
        .await;
    assert_eq!(st, 200, "{v}");
    // A second stream of the consumer meanwhile: 409.
    let (st, v) = http
        .events("/topics/t/stream?consumer=c", None)
        .await
        .err()
        .unwrap();
    assert_eq!((st, &v["error"]), (409, &Value::from("consumer_busy")));
    // The client disconnects (the connection closes): the server lets the consumer go.
    drop(s);
    let reconnect = async {
        loop {
            match http.events("/topics/t/stream?consumer=c", Some(1)).await {
                Ok(s) => return s,
                Err((409, _)) => tokio::task::yield_now().await,
                Err(e) => panic!("{e:?}"),
            }
        }
    };
    let mut s = tokio::time::timeout(std::time::Duration::from_secs(10), reconnect)
        .await
        .expect("released within 10 s");
    // Resumed after Last-Event-ID 1, though the checkpoint is at 1.
    let (id, v) = s.next().await.unwrap();
    assert_eq!((id, &v["data"]), (2, &Value::from("c")));
    drop(s);
    wal.close().await.unwrap();
}

#[tokio::test]
async fn a_consumer_behind_retention_is_told_and_goes_on_from_the_oldest_entry() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path())
        .segment_bytes(64 << 10)
        .retention_bytes(1)
        .open()
        .await
        .unwrap();
    wal.append("t", "first").await.unwrap();
    wal.reset_consumer("t", "late", walrus_async::ResetTo::Offset(0))
        .await
        .unwrap();
    for _ in 0..3000 {
        wal.append("t", vec![b'x'; 64]).await.unwrap();
    }
    wal.reclaim().await.unwrap();
    let oldest = wal.topic_info("t").unwrap().oldest_offset;
    assert!(oldest > 0);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, router(wal.clone())).into_future());
    let http = clients::Http::new(addr, None);
    let mut s = http
        .events("/topics/t/stream?consumer=late", None)
        .await
        .unwrap();
    let (name, _, v) = s.next_any().await.unwrap();
    assert_eq!(name, "truncated");
    assert_eq!(
        (v["requested"].as_u64(), v["oldest"].as_u64()),
        (Some(0), Some(oldest))
    );
    let (name, id, _) = s.next_any().await.unwrap();
    assert_eq!(
        (name.as_str(), id),
        ("entry", Some(oldest)),
        "and the stream goes on"
    );
    drop(s);
    wal.close().await.unwrap();
}
