//! Raft log appends through `walrus_async::raft::LogStore`, durable (`SyncEach`): 1, 16 and
//! 256 Raft groups sharing one log, against the same groups with one log each, in one run.
//!
//! `cargo bench --bench raft --features raft` (about 1 min) or `-- --quick` (CI smoke).
//!
//! * Each group appends one entry (100 B of payload) at a time and waits for it to be durable
//!   before the next, as an openraft 0.9 leader does (one append in flight per group), then
//!   saves it as committed, as openraft does.
//! * The modes run interleaved; each figure is the median of the runs.
//! * Each run then reopens every store and checks that it holds every entry acknowledged.
//! * Results print as a table and go to `target/bench/raft.jsonl`.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt};
use walrus_async::raft::LogStore;
use walrus_async::{FsyncSchedule, Walrus};

openraft::declare_raft_types!(pub Tc: D = String, R = String);

async fn open(dir: &Path) -> Walrus {
    Walrus::builder()
        .data_dir(dir)
        // Small files: 256 logs of the default size (and a spare each) would not fit here.
        .segment_bytes(4 << 20)
        .fsync(FsyncSchedule::SyncEach)
        .open()
        .await
        .expect("open")
}

/// `groups` groups appending for `time`: on one log (`shared`) or one log each. Returns the
/// appends acknowledged, the fsyncs the logs issued and the time the appends took.
async fn run(root: &Path, groups: usize, shared: bool, time: Duration) -> (u64, u64, Duration) {
    let mut logs = Vec::new();
    if shared {
        logs.push(open(&root.join("shared")).await);
    } else {
        for g in 0..groups {
            logs.push(open(&root.join(format!("own-{g}"))).await);
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(groups + 1));
    for g in 0..groups {
        let wal = logs[if shared { 0 } else { g }].clone();
        let start = start.clone();
        tasks.spawn(async move {
            let mut store = LogStore::<Tc>::open(wal, &format!("g{g}")).await.unwrap();
            start.wait().await;
            let deadline = Instant::now() + time;
            let mut index = 1;
            while Instant::now() < deadline {
                let mut e = openraft::testing::blank_ent::<Tc>(1, 1, index);
                e.payload = openraft::EntryPayload::Normal("x".repeat(100));
                store.blocking_append([e]).await.expect("append");
                // As openraft does once the entry is committed (lazy here).
                store
                    .save_committed(Some(openraft::testing::log_id(1, 1, index)))
                    .await
                    .expect("save_committed");
                index += 1;
            }
            (g, index - 1)
        });
    }
    start.wait().await;
    let started = Instant::now();
    let mut appended = Vec::new();
    while let Some(r) = tasks.join_next().await {
        appended.push(r.unwrap());
    }
    let took = started.elapsed();
    let fsyncs: u64 = logs.iter().map(|w| w.stats().fsyncs).sum();
    for w in &logs {
        w.close().await.unwrap();
    }
    // Verify: reopened, every group holds every entry it was told about.
    let mut reopened = Vec::new();
    for (i, _) in logs.iter().enumerate() {
        let dir = if shared {
            root.join("shared")
        } else {
            root.join(format!("own-{i}"))
        };
        reopened.push(open(&dir).await);
    }
    for (g, n) in &appended {
        let wal = reopened[if shared { 0 } else { *g }].clone();
        let mut store = LogStore::<Tc>::open(wal, &format!("g{g}")).await.unwrap();
        let last = store
            .get_log_state()
            .await
            .unwrap()
            .last_log_id
            .map_or(0, |l| l.index);
        let got = store.try_get_log_entries(1..=*n).await.unwrap().len() as u64;
        if last != *n || got != *n {
            eprintln!("VERIFY FAILED: group {g} acknowledged {n}, holds {got} (last {last})");
            std::process::exit(1);
        }
    }
    for w in reopened {
        w.close().await.unwrap();
    }
    (appended.iter().map(|(_, n)| n).sum(), fsyncs, took)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (runs, time) = if quick {
        (1, Duration::from_millis(200))
    } else {
        (3, Duration::from_secs(3))
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let base = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let json_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench/raft.jsonl");
    std::fs::create_dir_all(json_path.parent().unwrap()).unwrap();
    let mut json = String::new();
    println!(
        "{:>6}  {:>16} {:>12}  {:>16} {:>12}  {:>7}",
        "groups", "one log: app/s", "app/fsync", "own logs: app/s", "app/fsync", "ratio"
    );
    for groups in [1usize, 16, 256] {
        let mut rates = [Vec::new(), Vec::new()];
        let mut per_sync = [Vec::new(), Vec::new()];
        for r in 0..runs {
            let order = if r % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for shared in order {
                let root = tempfile::tempdir_in(&base).unwrap();
                let (n, fsyncs, took) = rt.block_on(run(root.path(), groups, shared, time));
                let m = usize::from(!shared);
                rates[m].push(n as f64 / took.as_secs_f64());
                per_sync[m].push(n as f64 / fsyncs.max(1) as f64);
            }
        }
        let (s, o) = (median(rates[0].clone()), median(rates[1].clone()));
        let (ss, os) = (median(per_sync[0].clone()), median(per_sync[1].clone()));
        println!(
            "{groups:>6}  {s:>16.0} {ss:>12.1}  {o:>16.0} {os:>12.1}  {:>6.2}x",
            s / o
        );
        json.push_str(&format!(
            "{{\"groups\":{groups},\"one_log_appends_per_s\":{s:.0},\"one_log_appends_per_fsync\":{ss:.2},\"own_logs_appends_per_s\":{o:.0},\"own_logs_appends_per_fsync\":{os:.2}}}\n"
        ));
    }
    std::fs::write(&json_path, json).unwrap();
    println!("results: {}", json_path.display());
}
