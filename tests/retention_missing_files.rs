//! Retention never stops for good: a consumed segment file that is already gone (deleted by an
//! operator, or by an earlier pass whose directory fsync failed or whose future was dropped)
//! counts as deleted, and a failure on one segment does not stop the pass for the others.

mod common;

use futures::StreamExt;

async fn fill(wal: &walrus_async::Walrus, dir: &std::path::Path, files: usize) -> u64 {
    common::fill_segments(wal, dir, "t", files).await
}

async fn consume_all(s: &mut walrus_async::TopicStream, last: u64) {
    while let Some(e) = s.next().await {
        let e = e.unwrap();
        if e.offset == last {
            s.ack(last).await.unwrap();
            return;
        }
    }
    panic!("the stream ended early");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumed_segment_deleted_by_hand_does_not_stop_retention() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    let mut s = wal.subscribe_as("t", "c").unwrap();
    let last = fill(&wal, dir.path(), 5).await;
    let before = common::segments(dir.path());
    // An operator frees space by deleting the oldest file by hand.
    std::fs::remove_file(&before[0]).unwrap();
    consume_all(&mut s, last).await;
    // The background task may get there first; either way every consumed, sealed file goes.
    wal.reclaim().await.unwrap();
    for p in &before[1..3] {
        assert!(
            !p.exists(),
            "{} was consumed and should be deleted",
            p.display()
        );
    }
    wal.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reclaim_dropped_at_any_point_leaves_retention_working() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    let mut s = wal.subscribe_as("t", "c").unwrap();
    // The background task may get to a round's files first; the rounds where `reclaim` does the
    // work are dropped at each of its await points in turn.
    let mut polls = 1;
    let mut rounds = 0;
    loop {
        let last = fill(&wal, dir.path(), common::segments(dir.path()).len() + 2).await;
        let before = common::segments(dir.path());
        consume_all(&mut s, last).await;
        let finished = common::poll_then_drop(wal.reclaim(), polls).await.is_some();
        // Whatever the dropped pass had done, the next one finishes the job.
        wal.reclaim().await.unwrap();
        for p in &before[..before.len() - 2] {
            assert!(!p.exists(), "round {rounds}: {} was consumed", p.display());
        }
        rounds += 1;
        if finished {
            break;
        }
        polls += 1;
        assert!(polls < 1_000, "reclaim never finished");
    }
    wal.close().await.unwrap();
}
