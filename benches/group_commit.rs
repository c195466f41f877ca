//! Group commit under `SyncEach`: durable appends per second and appends per fsync for 1, 8 and
//! 64 concurrent producers, on each I/O backend. `cargo bench --bench group_commit`
//! (`-- --quick` for a short run). The median of 3 runs is printed; the machine is shared and
//! noisy, so compare figures from the same run only.

use std::time::{Duration, Instant};

use walrus_async::{FsyncSchedule, IoBackend, Walrus};

struct Run {
    rate: f64,
    per_fsync: f64,
}

async fn run(backend: IoBackend, producers: usize, topics: usize, dur: Duration) -> Run {
    // BENCH_DIR picks the disk to measure; the default is the system temp dir.
    let dir = tempfile::tempdir_in(
        std::env::var_os("BENCH_DIR").unwrap_or_else(|| std::env::temp_dir().into()),
    )
    .expect("bench dir");
    let wal = Walrus::builder()
        .data_dir(dir.path())
        .fsync(FsyncSchedule::SyncEach)
        .io_backend(backend)
        .open()
        .await
        .unwrap();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..producers {
        let wal = wal.clone();
        let topic = format!("t{}", p % topics);
        tasks.push(tokio::spawn(async move {
            let payload = bytes::Bytes::from(vec![7u8; 1024]);
            let mut n = 0u64;
            while start.elapsed() < dur {
                wal.append(&topic, payload.clone()).await.unwrap();
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let s = wal.stats();
    wal.close().await.unwrap();
    Run {
        rate: total as f64 / secs,
        per_fsync: s.appends as f64 / s.fsyncs.max(1) as f64,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let dur = Duration::from_millis(if quick { 200 } else { 2000 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "SyncEach, 1 KiB entries, {} ms per run, median of 3",
        dur.as_millis()
    );
    println!(
        "{:<10} {:>9} {:>7} {:>14} {:>15}",
        "backend", "producers", "topics", "appends/s", "appends/fsync"
    );
    for backend in [IoBackend::IoUring, IoBackend::Blocking] {
        for (producers, topics) in [(1, 1), (8, 8), (64, 64), (64, 1)] {
            let runs: Vec<Run> = (0..3)
                .map(|_| rt.block_on(run(backend, producers, topics, dur)))
                .collect();
            println!(
                "{:<10} {:>9} {:>7} {:>14.0} {:>15.1}",
                backend.name(),
                producers,
                topics,
                median(runs.iter().map(|r| r.rate).collect()),
                median(runs.iter().map(|r| r.per_fsync).collect()),
            );
        }
    }
}
