//! Retention keeps up under sustained load: a block the writer moved past is released as soon
//! as the last group written into it is finished, not only when no group at all is in flight
//! (which never happens under continuous pipelined `SyncEach` appends).
#![cfg(feature = "failpoints")]

mod common;

use walrus_async::{FailPoints, FsyncSchedule, Walrus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_block_is_released_while_a_later_group_waits_for_its_sync() {
    let dir = tempfile::tempdir().unwrap();
    let f = FailPoints::new();
    // One block per segment, and 40 KiB entries: every append opens a new block in a new file.
    let wal = Walrus::builder()
        .data_dir(dir.path())
        .segment_bytes(64 << 10)
        .fsync(FsyncSchedule::SyncEach)
        .retention_bytes(1) // every sealed file may go
        .fail_points(f.clone())
        .open()
        .await
        .unwrap();
    f.pause_segment_syncs();
    let first = tokio::spawn({
        let wal = wal.clone();
        async move { wal.append("t", vec![1u8; 40 << 10]).await }
    });
    f.segment_syncs_blocked(1).await; // group 1 written, its sync held
    let first_file = common::segments(dir.path())[0].clone();
    let second = tokio::spawn({
        let wal = wal.clone();
        async move { wal.append("t", vec![2u8; 40 << 10]).await }
    });
    f.release_segment_syncs(1); // group 1's sync goes
    assert_eq!(first.await.unwrap().unwrap(), 0);
    f.segment_syncs_blocked(1).await; // group 2 written into the next file, its sync held

    // Group 2 is still in flight; group 1's file is finished with and over the limit.
    // The background pass may have deleted it already; either way it must be gone.
    wal.reclaim().await.unwrap();
    assert!(
        wal.stats().segments_deleted >= 1 && !first_file.exists(),
        "the first file was not released while a later group was in flight"
    );
    f.resume_segment_syncs();
    assert_eq!(second.await.unwrap().unwrap(), 1);
    wal.close().await.unwrap();
}
