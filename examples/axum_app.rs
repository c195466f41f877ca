//! An axum service with its own routes, the log's HTTP API nested under `/log`, and a
//! background task that processes a topic as a consumer and acknowledges what it handled.
//!
//! Run: `cargo run --example axum_app --features http -- [DATA_DIR] [ADDR]`
//! (default: a temporary directory, `127.0.0.1:3000`), then:
//!
//! ```text
//! curl -X POST localhost:3000/orders -H 'content-type: application/json' \
//!      -d '{"item": "tea", "qty": 2}'                                  # the app's own route
//! curl localhost:3000/stats                                         # what the worker did
//! curl localhost:3000/log/topics/orders                             # the log's API
//! curl 'localhost:3000/log/topics/orders/entries?from=0'
//! ```
//!
//! Ctrl-C stops it: the server drains, the worker finishes its entry, the log is closed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::serve::ListenerExt as _;
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::{Value, json};
use walrus_async::{FsyncSchedule, Walrus};

#[derive(Clone)]
struct App {
    wal: Walrus,
    /// Orders the worker has processed (the app's own state).
    processed: Arc<AtomicU64>,
    /// Their total quantity.
    quantity: Arc<AtomicU64>,
}

/// The app's own route: validates an order and appends it, answering once it is durable.
async fn place_order(
    State(app): State<App>,
    Json(order): Json<Value>,
) -> Result<Json<Value>, (StatusCode, String)> {
    let valid = order["item"].is_string() && order["qty"].as_u64().is_some_and(|q| q > 0);
    if !valid {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            r#"expected {"item": "…", "qty": n}"#.into(),
        ));
    }
    let offset = app
        .wal
        .append("orders", order.to_string())
        .await
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(Json(json!({ "order": offset })))
}

async fn stats(State(app): State<App>) -> Json<Value> {
    Json(json!({
        "processed": app.processed.load(Ordering::Relaxed),
        "quantity": app.quantity.load(Ordering::Relaxed),
        "lag": app.wal.consumer_lag("orders", "fulfilment"),
    }))
}

/// The background consumer: each order once it is durable, acknowledged after it was
/// handled, so a restart resumes after the last one handled (at-least-once).
async fn fulfilment(
    app: App,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> walrus_async::Result<()> {
    let mut orders = app.wal.subscribe_as("orders", "fulfilment")?;
    loop {
        let entry = tokio::select! {
            _ = stop.wait_for(|s| *s) => return Ok(()),
            entry = orders.next() => match entry {
                Some(entry) => entry?,
                None => return Ok(()), // the log was closed
            },
        };
        let order: Value = serde_json::from_slice(&entry.data).unwrap_or_default();
        let qty = order["qty"].as_u64().unwrap_or(0);
        app.processed.fetch_add(1, Ordering::Relaxed);
        app.quantity.fetch_add(qty, Ordering::Relaxed);
        tracing::info!(offset = entry.offset, item = %order["item"], qty, "order fulfilled");
        orders.ack(entry.offset).await?;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let temp = tempfile::tempdir()?;
    let dir = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| temp.path().to_path_buf());
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:3000".into());

    let wal = Walrus::builder()
        .data_dir(&dir)
        .fsync(FsyncSchedule::SyncEach)
        .open()
        .await?;
    let app = App {
        wal: wal.clone(),
        processed: Arc::default(),
        quantity: Arc::default(),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let signal = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let worker = tokio::spawn(fulfilment(app.clone(), stopped.clone()));

    let log_api = walrus_async::http::router_with(
        wal.clone(),
        walrus_async::http::Options::default().shutdown(signal(stopped.clone())),
    );
    let router = Router::new()
        .route("/orders", post(place_order))
        .route("/stats", get(stats))
        .with_state(app)
        .nest("/log", log_api);

    let listener = tokio::net::TcpListener::bind(&addr).await?;
    tracing::info!(addr = %listener.local_addr()?, dir = %dir.display(), "listening");
    let server = tokio::spawn(
        axum::serve(
            listener.tap_io(|s| {
                let _ = s.set_nodelay(true);
            }),
            router,
        )
        .with_graceful_shutdown(signal(stopped))
        .into_future(),
    );
    tokio::signal::ctrl_c().await?;
    tracing::info!("shutting down");
    stop.send_replace(true);
    server.await??;
    worker.await??;
    wal.close().await?;
    Ok(())
}
