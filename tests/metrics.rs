//! Every metric moves when it should: a recorder installed, a log driven through appends,
//! fsyncs (one failed), reads, acknowledgements, retention and a recovery with damage. Two
//! logs, each gauge under its own `log` label.
//! Needs `--features metrics,failpoints`. One test: the recorder is process-wide.
#![cfg(all(feature = "metrics", feature = "failpoints"))]

mod common;

use std::collections::HashMap;
use std::sync::Mutex;

use futures::StreamExt;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use walrus_async::{FailPoints, FsyncSchedule, ReadConsistency};

/// What the recorder saw, accumulated: a snapshot of the debugging recorder drains every
/// value (counters, gauges and histograms alike), so `refresh` adds counters and histogram
/// samples up across snapshots and keeps the gauges of the latest one.
struct Seen {
    snap: Snapshotter,
    values: Mutex<HashMap<Series, f64>>,
}

/// A metric's name and its sorted labels.
type Series = (String, Vec<(String, String)>);

impl Seen {
    /// Takes what was recorded since the last call.
    fn refresh(&self) {
        let mut values = self.values.lock().unwrap();
        for (k, _, _, v) in self.snap.snapshot().into_vec() {
            let key = k.key();
            let mut l: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            l.sort();
            let e = values.entry((key.name().to_owned(), l)).or_insert(0.0);
            match v {
                DebugValue::Counter(c) => *e += c as f64,
                DebugValue::Gauge(g) => *e = g.0,
                DebugValue::Histogram(h) => *e += h.len() as f64,
            }
        }
    }

    /// A counter's total, a gauge's value, or a histogram's number of samples, as of the
    /// last `refresh`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let values = self.values.lock().unwrap();
        let mut want: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        want.sort();
        values.get(&(name.to_owned(), want)).copied()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_moves_when_it_should() {
    let recorder = DebuggingRecorder::new();
    let seen = Seen {
        snap: recorder.snapshotter(),
        values: Mutex::new(HashMap::new()),
    };
    recorder.install().unwrap();
    let get = |name: &str, labels: &[(&str, &str)]| {
        seen.value(name, labels)
            .unwrap_or_else(|| panic!("{name} {labels:?} not recorded"))
    };
    let value = |name: &str, labels: &[(&str, &str)]| seen.value(name, labels);

    let dir = tempfile::tempdir().unwrap();
    let f = FailPoints::new();
    let wal = common::small(dir.path())
        .consistency(ReadConsistency::StrictlyAtOnce)
        .fail_points(f.clone())
        .open()
        .await
        .unwrap();
    seen.refresh();
    let backend = wal.stats().backend.name();
    // Gauges carry the log's directory.
    let log = dir.path().display().to_string();
    let l = [("log", log.as_str())];
    assert_eq!(
        get(
            "walrus_backend_info",
            &[("log", &log), ("backend", backend)]
        ),
        1.0
    );
    assert_eq!(get("walrus_recovered_damage", &l), 0.0);
    for i in 0..10 {
        wal.append("t", format!("entry-{i}")).await.unwrap();
    }
    wal.append_batch("u", ["a", "b", "c"]).await.unwrap();
    seen.refresh();
    assert_eq!(get("walrus_appends_total", &[]), 13.0);
    assert_eq!(get("walrus_append_bytes_total", &[]), 10.0 * 7.0 + 3.0);
    assert_eq!(get("walrus_append_duration_seconds", &[]), 11.0);
    let writes = get("walrus_write_submissions_total", &[]);
    assert!(writes >= 11.0);
    assert_eq!(get("walrus_write_size_bytes", &[]), writes);
    assert!(get("walrus_write_bytes_total", &[]) > 13.0 * 44.0);
    let fsyncs = get("walrus_fsyncs_total", &[]);
    assert!(
        fsyncs >= 11.0,
        "SyncEach: every append waited for a sync ({fsyncs})"
    );
    assert_eq!(get("walrus_fsync_duration_seconds", &[]), fsyncs);
    assert!(value("walrus_writer_queue_depth", &[]).is_some());

    // A consumer three entries in.
    let mut s = wal.subscribe_as("t", "billing").unwrap();
    for _ in 0..3 {
        let e = s.next().await.unwrap().unwrap();
        s.ack(e.offset).await.unwrap();
    }
    wal.record_metrics();
    seen.refresh();
    let c = [
        ("log", log.as_str()),
        ("topic", "t"),
        ("consumer", "billing"),
    ];
    assert_eq!(get("walrus_consumer_checkpoint", &c), 3.0);
    assert_eq!(get("walrus_consumer_lag_entries", &c), 7.0);
    assert_eq!(get("walrus_consumer_lag_bytes", &c), 7.0 * 7.0);
    assert!(get("walrus_consumer_oldest_unconsumed_age_seconds", &c) >= 0.0);
    assert_eq!(get("walrus_consumer_pinned_bytes", &c), (256 << 10) as f64);
    assert_eq!(
        get("walrus_topic_next_offset", &[("log", &log), ("topic", "t")]),
        10.0
    );
    assert_eq!(
        get(
            "walrus_topic_oldest_offset",
            &[("log", &log), ("topic", "t")]
        ),
        0.0
    );
    // Topics nobody consumes get no series of their own.
    assert!(value("walrus_topic_next_offset", &[("log", &log), ("topic", "u")]).is_none());
    assert_eq!(get("walrus_topics", &l), 2.0);
    assert!(get("walrus_segments", &l) >= 1.0);
    assert!(get("walrus_disk_allocated_bytes", &l) >= (256 << 10) as f64);
    assert!(get("walrus_disk_written_bytes", &l) > 13.0 * 44.0);
    assert_eq!(get("walrus_unsynced_bytes", &l), 0.0, "SyncEach");

    // The consumer reads everything and more is written: consumed files are deleted.
    for i in 0..40 {
        wal.append("t", vec![i as u8; 16 << 10]).await.unwrap();
    }
    loop {
        let e = s.next().await.unwrap().unwrap();
        s.ack(e.offset).await.unwrap();
        if e.offset == 49 {
            break;
        }
    }
    drop(s);
    // `u` pins its files: give it a consumer that has read it.
    wal.reset_consumer("u", "audit", walrus_async::ResetTo::Latest)
        .await
        .unwrap();
    // The background pass (woken by the checkpoints) may have deleted them already.
    wal.reclaim().await.unwrap();
    seen.refresh();
    let deleted = wal.stats().segments_deleted;
    assert!(deleted >= 1);
    assert_eq!(get("walrus_segments_deleted_total", &[]), deleted as f64);
    assert!(get("walrus_reclaimed_bytes_total", &[]) >= (deleted * (256 << 10)) as f64);
    wal.record_metrics();
    seen.refresh();
    assert_eq!(get("walrus_consumer_lag_entries", &c), 0.0);
    assert_eq!(
        get("walrus_consumer_oldest_unconsumed_age_seconds", &c),
        0.0
    );

    // A failed fsync.
    f.fail_syncs(1, libc::EIO);
    assert!(wal.append("t", "lost").await.is_err());
    seen.refresh();
    assert_eq!(get("walrus_fsync_errors_total", &[]), 1.0);
    let _ = wal.close().await;

    // Not yet durable: written under NoFsync, then synced.
    let dir2 = tempfile::tempdir().unwrap();
    let wal = common::small(dir2.path())
        .fsync(FsyncSchedule::NoFsync)
        .open()
        .await
        .unwrap();
    let log2 = dir2.path().display().to_string();
    let l2 = [("log", log2.as_str())];
    wal.append("n", vec![1u8; 1000]).await.unwrap();
    wal.record_metrics();
    seen.refresh();
    assert!(get("walrus_unsynced_bytes", &l2) >= 1000.0);
    wal.sync().await.unwrap();
    wal.record_metrics();
    seen.refresh();
    assert_eq!(get("walrus_unsynced_bytes", &l2), 0.0);
    wal.close().await.unwrap();

    // Damage found by recovery.
    let seg = common::segments(dir2.path())[0].clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    let frames = common::frame_positions(&bytes, None);
    let p = common::payload_start(&bytes, frames[0]) as usize;
    bytes[p] ^= 1;
    std::fs::write(&seg, &bytes).unwrap();
    seen.refresh();
    let before = get("walrus_checksum_failures_total", &[]);
    let wal = common::small(dir2.path()).open().await.unwrap();
    seen.refresh();
    assert_eq!(get("walrus_checksum_failures_total", &[]), before + 1.0);
    assert_eq!(get("walrus_recovered_damage", &l2), 1.0);
    assert_eq!(wal.stats().checksum_failures, 1);
    wal.close().await.unwrap();
}
