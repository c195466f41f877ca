//! What callers see when the disk fails: write errors, fsync errors ("fsyncgate"), ENOSPC,
//! and backpressure while writes stall. Needs `--features failpoints`.
#![cfg(feature = "failpoints")]

mod common;

use tokio_test::{assert_pending, assert_ready, task};
use walrus_async::{Error, FailPoints, FsyncSchedule, Walrus};

async fn open(dir: &std::path::Path, f: &FailPoints, fsync: FsyncSchedule) -> Walrus {
    common::small(dir)
        .fsync(fsync)
        .fail_points(f.clone())
        .open()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_failed_write_fails_every_append_in_its_group_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let f = FailPoints::new();
    let wal = open(dir.path(), &f, FsyncSchedule::SyncEach).await;
    wal.append("t", "before").await.unwrap();

    // Hold the writer on one append so three more queue up and form the next group.
    f.pause_writes();
    let held = tokio::spawn({
        let w = wal.clone();
        async move { w.append("t", "held").await }
    });
    f.writes_blocked(1).await;
    let group: Vec<_> = (0..3)
        .map(|i| {
            let w = wal.clone();
            tokio::spawn(async move { w.append("t", format!("group-{i}")).await })
        })
        .collect();
    for _ in 0..10 {
        tokio::task::yield_now().await; // let the three reach the queue
    }
    f.fail_writes(2, libc::EIO); // the held write, then the group's single write
    f.resume_writes();
    let err = held.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, Error::Io(e) if e.raw_os_error() == Some(libc::EIO)),
        "{err}"
    );
    for g in group {
        let err = g.await.unwrap().unwrap_err();
        assert!(
            matches!(&err, Error::Io(e) if e.raw_os_error() == Some(libc::EIO)),
            "{err}"
        );
    }
    // Failed offsets stay unused; the log goes on.
    assert_eq!(wal.append("t", "after").await.unwrap(), 5);
    assert_eq!(wal.entry_count("t"), 2);
    let all = common::all_entries(&wal, "t").await;
    assert_eq!(all, vec![(0, b"before".to_vec()), (5, b"after".to_vec())]);
    wal.close().await.unwrap();

    let wal = common::small(dir.path()).open().await.unwrap();
    assert_eq!(wal.entry_count("t"), 2);
    assert_eq!(wal.append("t", "next").await.unwrap(), 6);
}

#[tokio::test]
async fn a_failed_fsync_is_reported_to_every_waiter_and_never_papered_over() {
    let dir = tempfile::tempdir().unwrap();
    let f = FailPoints::new();
    let wal = open(dir.path(), &f, FsyncSchedule::SyncEach).await;
    wal.append("t", "durable").await.unwrap();
    f.fail_syncs(1, libc::EIO);
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let w = wal.clone();
            tokio::spawn(async move { w.append(&format!("t{}", i % 2), "x").await })
        })
        .collect();
    let mut failed = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => {}
            Err(e @ Error::SyncFailed { .. }) => {
                assert!(e.to_string().contains("takes no more appends"), "{e}");
                failed += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(failed >= 1);
    // Appends go on, into a fresh segment: the failed one takes no more.
    wal.append("t", "later").await.unwrap();
    assert_eq!(wal.stats().segments, 2);
    // sync() keeps failing: the failed file's unsynced data may be gone.
    for _ in 0..2 {
        assert!(matches!(wal.sync().await, Err(Error::SyncFailed { .. })));
    }
    // Readers never see the entries whose sync failed (SyncEach shows only durable entries).
    let seen: Vec<Vec<u8>> = common::all_entries(&wal, "t")
        .await
        .into_iter()
        .map(|e| e.1)
        .collect();
    assert_eq!(seen.first().map(Vec::as_slice), Some(&b"durable"[..]));
    assert_eq!(seen.last().map(Vec::as_slice), Some(&b"later"[..]));
    assert!(matches!(wal.close().await, Err(Error::SyncFailed { .. })));
}

/// A lone `SyncEach` append is written with its own sync in one operation; when the sync half
/// fails, it is a failed fsync like any other.
#[tokio::test]
async fn a_lone_append_whose_sync_fails_is_a_failed_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let f = FailPoints::new();
    let wal = open(dir.path(), &f, FsyncSchedule::SyncEach).await;
    wal.append("t", "durable").await.unwrap();
    f.fail_syncs(1, libc::EIO);
    match wal.append("t", "lost").await {
        Err(e @ Error::SyncFailed { .. }) => {
            assert!(e.to_string().contains("takes no more appends"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    wal.append("t", "later").await.unwrap();
    assert_eq!(
        wal.stats().segments,
        2,
        "the failed file takes no more appends"
    );
    assert!(matches!(wal.sync().await, Err(Error::SyncFailed { .. })));
    let seen: Vec<Vec<u8>> = common::all_entries(&wal, "t")
        .await
        .into_iter()
        .map(|e| e.1)
        .collect();
    assert_eq!(seen, [&b"durable"[..], &b"later"[..]]);
    assert!(matches!(wal.close().await, Err(Error::SyncFailed { .. })));
}

#[tokio::test]
async fn enospc_fails_the_append_and_clears_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let f = FailPoints::new();
    let wal = open(dir.path(), &f, FsyncSchedule::Milliseconds(10)).await;
    wal.append("t", "a").await.unwrap();
    f.fail_writes(2, libc::ENOSPC);
    for _ in 0..2 {
        let err = wal.append("t", "b").await.unwrap_err();
        let io: std::io::Error = err.into();
        assert_eq!(io.raw_os_error(), Some(libc::ENOSPC));
    }
    assert_eq!(wal.append("t", "c").await.unwrap(), 3);
    assert_eq!(wal.entry_count("t"), 2);
    wal.close().await.unwrap();
}

#[tokio::test]
async fn a_full_queue_makes_append_wait_and_a_dropped_waiter_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let f = FailPoints::new();
    let wal = common::small(dir.path())
        .queue_capacity(2)
        .fail_points(f.clone())
        .open()
        .await
        .unwrap();
    f.pause_writes();
    let mut a = task::spawn(wal.append("t", "a"));
    assert_pending!(a.poll()); // queued
    f.writes_blocked(1).await; // the writer took it and is stuck writing
    let mut b = task::spawn(wal.append("t", "b"));
    let mut c = task::spawn(wal.append("t", "c"));
    assert_pending!(b.poll());
    assert_pending!(c.poll()); // the queue (capacity 2) is now full
    let mut d = task::spawn(wal.append("t", "d"));
    assert_pending!(d.poll()); // waits for room: backpressure
    drop(d); // never got into the queue: nothing of it is written
    f.resume_writes();
    assert_eq!(a.await.unwrap(), 0);
    assert_eq!(b.await.unwrap(), 1);
    assert_eq!(c.await.unwrap(), 2);
    assert_eq!(wal.append("t", "e").await.unwrap(), 3);
    let data: Vec<Vec<u8>> = common::all_entries(&wal, "t")
        .await
        .into_iter()
        .map(|e| e.1)
        .collect();
    assert_eq!(
        data,
        vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), b"e".to_vec()]
    );
}

#[tokio::test]
async fn tokio_test_sees_a_waiting_append_wake_when_the_write_completes() {
    let dir = tempfile::tempdir().unwrap();
    let f = FailPoints::new();
    let wal = open(dir.path(), &f, FsyncSchedule::NoFsync).await;
    f.pause_writes();
    let mut a = task::spawn(wal.append("t", "a"));
    assert_pending!(a.poll());
    f.writes_blocked(1).await;
    assert!(!a.is_woken());
    f.resume_writes();
    // The writer answers in queue order: once a later append on the topic is answered, `a`
    // has been woken (without polling it in a loop).
    let w = wal.clone();
    tokio::spawn(async move { w.append("t", "b").await })
        .await
        .unwrap()
        .unwrap();
    assert!(a.is_woken());
    assert_eq!(assert_ready!(a.poll()).unwrap(), 0);
}

#[tokio::test]
async fn enospc_creating_a_segment_fails_the_append_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = FailPoints::new();
    let wal = open(dir.path(), &f, FsyncSchedule::SyncEach).await;
    // The first append creates the first segment; the disk is full just then.
    f.fail_creates(1, libc::ENOSPC);
    let err = wal.append("t", "lost").await.unwrap_err();
    let io: std::io::Error = err.into();
    assert_eq!(io.raw_os_error(), Some(libc::ENOSPC));
    assert!(
        common::segments(dir.path()).is_empty(),
        "a half-created segment was left behind"
    );
    // Space is back: appends work without a restart.
    let at = wal.append("t", "kept").await.unwrap();
    wal.close().await.unwrap();
    let wal = open(dir.path(), &FailPoints::new(), FsyncSchedule::SyncEach).await;
    assert_eq!(
        common::all_entries(&wal, "t").await,
        vec![(at, b"kept".to_vec())]
    );
    wal.close().await.unwrap();
}

#[tokio::test]
async fn a_failed_checkpoint_rewrite_fails_open_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let wal = open(dir.path(), &FailPoints::new(), FsyncSchedule::SyncEach).await;
    for i in 0..3 {
        wal.append("t", format!("e{i}")).await.unwrap();
    }
    assert!(wal.read_next("t", true).await.unwrap().is_some());
    wal.close().await.unwrap();

    // Open rewrites the checkpoint store; the disk is full just then.
    let f = FailPoints::new();
    f.fail_creates(1, libc::ENOSPC);
    let err = common::small(dir.path())
        .fail_points(f)
        .open()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DataDir { .. }), "{err}");
    assert!(
        !dir.path().join("checkpoints.tmp").exists(),
        "a half-written temp file was left behind"
    );
    // The old store is intact: the consumer goes on after the entry it read.
    let wal = open(dir.path(), &FailPoints::new(), FsyncSchedule::SyncEach).await;
    let next = wal.read_next("t", true).await.unwrap().unwrap();
    assert_eq!((next.offset, &next.data[..]), (1, &b"e1"[..]));
    wal.close().await.unwrap();
}

#[tokio::test]
async fn a_short_write_fails_its_append_and_its_half_frame_is_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let f = FailPoints::new();
    let wal = open(dir.path(), &f, FsyncSchedule::SyncEach).await;
    let a = wal.append("t", "before").await.unwrap();
    // Half of the frame reaches the file, then the disk is full.
    f.short_writes(1, libc::ENOSPC);
    let err = wal.append("t", vec![7u8; 3000]).await.unwrap_err();
    let io: std::io::Error = err.into();
    assert_eq!(io.raw_os_error(), Some(libc::ENOSPC));
    let c = wal.append("t", "after").await.unwrap();
    let expected = vec![(a, b"before".to_vec()), (c, b"after".to_vec())];
    assert_eq!(common::all_entries(&wal, "t").await, expected);
    wal.close().await.unwrap();

    // Recovery finds the half frame, does not return it, and keeps everything acknowledged.
    let wal = open(dir.path(), &FailPoints::new(), FsyncSchedule::SyncEach).await;
    assert_eq!(common::all_entries(&wal, "t").await, expected);
    let next = wal.append("t", "later").await.unwrap();
    assert!(next > c);
    wal.close().await.unwrap();
}
