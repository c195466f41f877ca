//! Prometheus metrics and tracing for a walrus-async log.
//!
//! Run: `cargo run --release --features metrics --example metrics`
//!
//! Installs a Prometheus recorder (`metrics-exporter-prometheus`; histograms with buckets from
//! 25 µs) and a `tracing-subscriber` that prints the log's spans and events, drives a log a
//! little, and prints the `walrus_*` series as a scrape would see them. A service serves
//! `handle.render()` on its `/metrics` route instead.

use futures::StreamExt;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use metrics_util::MetricKindMask;
use walrus_async::{FsyncSchedule, Walrus};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Spans on open, recovery, retention passes and close, with their figures; warnings and
    // errors name the file, position, topic and offsets.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "walrus_async=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // Install the recorder before opening the log.
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[
                25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1,
                0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        )?
        // Gauges the log stops setting (a removed consumer's) go after a minute.
        .idle_timeout(
            MetricKindMask::GAUGE,
            Some(std::time::Duration::from_secs(60)),
        )
        .install_recorder()?;

    let dir = tempfile::tempdir()?;
    let wal = Walrus::builder()
        .data_dir(dir.path())
        .fsync(FsyncSchedule::SyncEach)
        .open()
        .await?;
    let mut producers = Vec::new();
    for p in 0..16 {
        let wal = wal.clone();
        producers.push(tokio::spawn(async move {
            for i in 0..50 {
                wal.append("orders", format!("order {p}-{i}")).await?;
            }
            Ok::<_, walrus_async::Error>(())
        }));
    }
    for p in producers {
        p.await??;
    }
    let mut billing = wal.subscribe_as("orders", "billing")?;
    for _ in 0..100 {
        let e = billing.next().await.expect("entry")?;
        billing.ack(e.offset).await?;
    }
    wal.record_metrics(); // the log also does this every second
    for line in handle.render().lines() {
        if line.contains("walrus_") && !line.starts_with("# HELP") {
            println!("{line}");
        }
    }
    drop(billing);
    wal.close().await?;
    Ok(())
}
