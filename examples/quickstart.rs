//! Appends to a few topics, reads them back, restarts the log and shows what survived.
//!
//! Run: `cargo run --release --example quickstart`
//! The log lives in a temporary directory that is removed at the end; give a directory
//! (`cargo run --release --example quickstart -- /tmp/qs`) to keep it for `walrus inspect`.

use std::time::Instant;

use walrus_async::{FsyncSchedule, Walrus};

#[tokio::main]
async fn main() -> walrus_async::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "walrus_async=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // A directory given on the command line is kept; otherwise a temporary one is used.
    let temp = tempfile::tempdir()?;
    let kept = std::env::args_os().nth(1).map(std::path::PathBuf::from);
    let path = kept.clone().unwrap_or_else(|| temp.path().to_path_buf());
    let open = || {
        Walrus::builder()
            .data_dir(&path)
            .fsync(FsyncSchedule::SyncEach)
            .open()
    };

    let wal = open().await?;
    println!(
        "opened {} with the {} backend",
        path.display(),
        wal.stats().backend.name()
    );

    // 64 producers append concurrently; under SyncEach they share fsyncs (group commit).
    let started = Instant::now();
    let mut producers = Vec::new();
    for p in 0..64 {
        let wal = wal.clone();
        producers.push(tokio::spawn(async move {
            let topic = format!("orders-{}", p % 4);
            for i in 0..100 {
                wal.append(&topic, format!("producer {p} order {i}"))
                    .await?;
            }
            Ok::<(), walrus_async::Error>(())
        }));
    }
    for p in producers {
        p.await.expect("producer task")?;
    }
    let elapsed = started.elapsed();
    let batch = wal
        .append_batch("audit", ["created", "paid", "shipped"])
        .await?;
    let stats = wal.stats();
    println!(
        "appended {} durable entries in {:.1?}: {} fsyncs ({:.1} appends per fsync), {} write submissions",
        stats.appends,
        elapsed,
        stats.fsyncs,
        stats.appends as f64 / stats.fsyncs.max(1) as f64,
        stats.write_submissions,
    );
    println!("atomic batch on 'audit' got offsets {batch:?}");

    // Consume part of a topic; the checkpoint is durable before read_next returns.
    for _ in 0..3 {
        let e = wal.read_next("orders-0", true).await?.expect("entry");
        println!(
            "orders-0 @{}: {}",
            e.offset,
            String::from_utf8_lossy(&e.data)
        );
    }
    let batch = wal.batch_read("audit", 1 << 20, true).await?;
    println!(
        "audit: {:?}",
        batch
            .iter()
            .map(|e| String::from_utf8_lossy(&e.data))
            .collect::<Vec<_>>()
    );
    wal.close().await?;

    // Reopen: everything is recovered and the read positions persisted.
    let wal = open().await?;
    for topic in wal.topics() {
        println!(
            "after restart: {topic}: {} unconsumed entries",
            wal.entry_count(&topic)
        );
    }
    let next = wal.read_next("orders-0", true).await?.expect("entry");
    println!("orders-0 resumes at offset {}", next.offset);
    let at = wal.read_at("orders-1", 10, 0).await?;
    println!(
        "read_at(orders-1, 10): {:?}",
        String::from_utf8_lossy(&at[0].data)
    );
    wal.close().await?;
    if let Some(dir) = kept {
        println!(
            "kept {}: look at it with `cargo run --release --features cli --bin walrus -- inspect {}`",
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}
