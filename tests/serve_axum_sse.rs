//! A `TopicStream` served from an axum handler as Server-Sent Events: it compiles as a
//! handler's return value, and events flow as entries are appended.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::Request;
use axum::response::sse::{Event, Sse};
use axum::routing::get;
use futures::{Stream, StreamExt};
use http_body_util::BodyExt;
use tower::ServiceExt;
use walrus_async::Walrus;

/// The handler a service would write: the stream, mapped to SSE events, is the response.
async fn tail(
    State(wal): State<Walrus>,
    Path(topic): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, walrus_async::Error>>>, String> {
    let stream = wal.subscribe_as(&topic, "sse").map_err(|e| e.to_string())?;
    Ok(Sse::new(stream.map(|entry| {
        entry.map(|e| {
            Event::default()
                .id(e.offset.to_string())
                .data(String::from_utf8_lossy(&e.data))
        })
    })))
}

#[tokio::test]
async fn an_sse_handler_streams_appended_entries() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Walrus::open(dir.path()).await.unwrap();
    wal.append("orders", "first").await.unwrap();
    let app = Router::new()
        .route("/tail/{topic}", get(tail))
        .with_state(wal.clone());
    let response = app
        .oneshot(Request::get("/tail/orders").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();

    // Entries appended after the response started still arrive: the stream tails.
    let writer = {
        let wal = wal.clone();
        tokio::spawn(async move {
            for i in 1..=3 {
                wal.append("orders", format!("order {i}")).await.unwrap();
            }
        })
    };
    let mut text = String::new();
    while text.matches("data:").count() < 4 {
        let frame = tokio::time::timeout(Duration::from_secs(30), body.frame())
            .await
            .expect("an event within the deadline")
            .expect("the body goes on")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
    writer.await.unwrap();
    assert!(text.contains("id: 0\ndata: first\n"), "{text}");
    assert!(text.contains("id: 3\ndata: order 3\n"), "{text}");
}
