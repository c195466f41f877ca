//! Consuming reads are cancel safe: a `read_next(_, true)` or `batch_read(_, _, true)` whose
//! future is dropped never leaves the persisted checkpoint past what was returned, and no
//! cancelled checkpoint write lands over a later one.

mod common;

use walrus_async::{FsyncSchedule, ReadConsistency, Walrus};

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_dropped_while_its_checkpoint_is_synced_does_not_move_it() {
    use walrus_async::FailPoints;
    let dir = tempfile::tempdir().unwrap();
    let f = FailPoints::new();
    let open = || {
        Walrus::builder()
            .data_dir(dir.path())
            .fsync(FsyncSchedule::SyncEach)
            .consistency(ReadConsistency::StrictlyAtOnce)
            .fail_points(f.clone())
            .open()
    };
    let wal = open().await.unwrap();
    wal.append_batch("t", ["a", "b"]).await.unwrap();
    f.pause_syncs();
    // The checkpoint record is queued or written, its fsync held: the caller gives up.
    let read = wal.read_next("t", true);
    assert!(common::poll_then_drop(read, 1).await.is_none());
    f.syncs_blocked(1).await;
    f.resume_syncs();
    wal.close().await.unwrap();

    let wal = open().await.unwrap();
    let e = wal.read_next("t", true).await.unwrap().unwrap();
    assert_eq!(e.offset, 0, "entry 0 was never returned, so it comes now");
    wal.close().await.unwrap();
}

/// Reads dropped at every await point in turn, each followed by a restart, on both paths a
/// write can take (`inline_write_max(0)`: through the I/O engine, where a write outlives the
/// future that submitted it), and a read that finishes right after a dropped one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_dropped_at_each_await_point_never_skip() {
    for (inline, batch, then_read) in [
        (usize::MAX, false, false),
        (usize::MAX, true, false),
        (usize::MAX, false, true),
        (0, false, false),
        (0, true, true),
        (0, false, true),
    ] {
        {
            let dir = tempfile::tempdir().unwrap();
            let builder = || {
                Walrus::builder()
                    .data_dir(dir.path())
                    .fsync(FsyncSchedule::SyncEach)
                    .inline_write_max(inline)
            };
            let mut wal = builder().open().await.unwrap();
            for i in 0..60u64 {
                wal.append("t", format!("e{i}")).await.unwrap();
            }
            let mut expected = 0u64;
            for polls in 1.. {
                let read = async {
                    if batch {
                        wal.batch_read("t", 0, true)
                            .await
                            .map(|v| v.first().map(|e| e.offset))
                    } else {
                        wal.read_next("t", true).await.map(|e| e.map(|e| e.offset))
                    }
                };
                let done = common::poll_then_drop(read, polls).await;
                if done.is_none() && then_read {
                    // Another read right away, then a restart: neither may skip.
                    assert_eq!(
                        wal.read_next("t", true).await.unwrap().unwrap().offset,
                        expected,
                        "inline {inline}, batch {batch}, polls {polls}"
                    );
                    expected += 1;
                }
                wal.close().await.unwrap();
                wal = builder().open().await.unwrap();
                let got = wal.read_next("t", true).await.unwrap().unwrap().offset;
                match done {
                    Some(first) => {
                        assert_eq!(first.unwrap(), Some(expected));
                        assert_eq!(got, expected + 1, "inline {inline}, batch {batch}");
                        break;
                    }
                    None => assert_eq!(
                        got, expected,
                        "inline {inline}, batch {batch}, then_read {then_read}, dropped after {polls} polls"
                    ),
                }
                expected += 1;
            }
            wal.close().await.unwrap();
        }
    }
}
