//! Cancelling administrative calls leaves nothing stuck: `remove_consumer`, `reset_consumer`,
//! `reclaim` and `close` dropped at each of their await points, and a `close` that failed.

mod common;

use walrus_async::{Error, ResetTo, Walrus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_consumer_dropped_at_each_await_point_leaves_the_consumer_usable() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    wal.append_batch("t", ["a", "b"]).await.unwrap();
    for polls in 1..50 {
        let mut s = wal.subscribe_as("t", "c").unwrap();
        futures::StreamExt::next(&mut s).await.unwrap().unwrap();
        s.ack(0).await.unwrap();
        drop(s);
        let done = common::poll_then_drop(wal.remove_consumer("t", "c"), polls).await;
        // Never stuck busy: a new stream can start, and it starts over or where it was.
        let mut s = wal
            .subscribe_as("t", "c")
            .expect("not busy after a dropped removal");
        let first = futures::StreamExt::next(&mut s)
            .await
            .unwrap()
            .unwrap()
            .offset;
        assert!(first <= 1, "{first}");
        drop(s);
        wal.remove_consumer("t", "c").await.unwrap();
        assert_eq!(wal.consumer_lag("t", "c"), None);
        if done.is_some() {
            break;
        }
    }
    wal.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_consumer_dropped_at_each_await_point_leaves_the_consumer_usable() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    wal.append_batch("t", ["a", "b", "c"]).await.unwrap();
    for polls in 1..50 {
        let done =
            common::poll_then_drop(wal.reset_consumer("t", "c", ResetTo::Offset(2)), polls).await;
        // Once polled the reset is made: the consumer stands at 2, and is not busy.
        assert_eq!(wal.consumer_lag("t", "c"), Some(1));
        wal.reset_consumer("t", "c", ResetTo::Earliest)
            .await
            .expect("not busy after a dropped reset");
        if done.is_some() {
            break;
        }
    }
    wal.close().await.unwrap();
    let wal = Walrus::open(dir.path()).await.unwrap();
    assert_eq!(wal.consumer_lag("t", "c"), Some(3));
    wal.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_dropped_at_each_await_point_is_finished_by_the_next_close() {
    for polls in 1..200 {
        let dir = tempfile::tempdir().unwrap();
        let wal = common::small(dir.path()).open().await.unwrap();
        let mut s = wal.subscribe_as("t", "c").unwrap();
        for i in 0..20 {
            wal.append("t", format!("e{i}")).await.unwrap();
        }
        futures::StreamExt::next(&mut s).await.unwrap().unwrap();
        drop(s);
        let done = common::poll_then_drop(wal.close(), polls).await;
        // Whatever the dropped close had done, this one finishes it: the lock is released
        // and everything is on disk once it returns.
        wal.close().await.unwrap();
        assert!(matches!(wal.append("t", "x").await, Err(Error::Closed)));
        let wal = Walrus::open(dir.path())
            .await
            .expect("close released the lock");
        assert_eq!(common::all_entries(&wal, "t").await.len(), 20);
        assert_eq!(wal.consumer_lag("t", "c"), Some(20));
        wal.close().await.unwrap();
        if done.is_some() {
            return;
        }
    }
    panic!("close never finished");
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_close_fails_again_when_asked_again() {
    let dir = tempfile::tempdir().unwrap();
    let f = walrus_async::FailPoints::new();
    let wal = Walrus::builder()
        .data_dir(dir.path())
        .fsync(walrus_async::FsyncSchedule::NoFsync)
        .fail_points(f.clone())
        .open()
        .await
        .unwrap();
    wal.append("t", "x").await.unwrap();
    f.fail_syncs(1, libc::EIO);
    let first = wal.close().await;
    assert!(matches!(first, Err(Error::SyncFailed { .. })), "{first:?}");
    let second = wal.close().await;
    assert!(
        matches!(second, Err(Error::SyncFailed { .. })),
        "a second close must not report success: {second:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_dropped_at_each_await_point_leaves_the_directory_openable() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    wal.append_batch("t", ["a", "b"]).await.unwrap();
    wal.close().await.unwrap();
    for polls in 1..200 {
        let done = common::poll_then_drop(common::small(dir.path()).open(), polls).await;
        if let Some(wal) = done {
            let wal = wal.unwrap();
            assert_eq!(common::all_entries(&wal, "t").await.len(), 2);
            wal.close().await.unwrap();
            return;
        }
        // The half-opened log let go of the lock and changed nothing that matters.
        let wal = common::open_when_unlocked(|| common::small(dir.path())).await;
        assert_eq!(common::all_entries(&wal, "t").await.len(), 2);
        wal.close().await.unwrap();
    }
    panic!("open never finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_append_and_ack_dropped_at_each_await_point() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path())
        .fsync(walrus_async::FsyncSchedule::NoFsync)
        .open()
        .await
        .unwrap();
    // A consumer that never reads keeps everything for the checks at the end.
    drop(wal.subscribe_as("t", "keep").unwrap());
    let mut given_up = Vec::new();
    let mut acked = 0u64;
    let mut s = wal.subscribe_as("t", "c").unwrap();
    for polls in 1..12 {
        let payload = format!("dropped-{polls}");
        if common::poll_then_drop(wal.append("t", payload.clone()), polls)
            .await
            .is_none()
        {
            given_up.push(payload);
        }
        let at = wal.append("t", format!("kept-{polls}")).await.unwrap();
        let _ = common::poll_then_drop(wal.sync(), polls).await;
        wal.sync().await.unwrap();
        // Deliver up to `at`, then give up on an ack of it.
        while futures::StreamExt::next(&mut s)
            .await
            .unwrap()
            .unwrap()
            .offset
            < at
        {}
        match common::poll_then_drop(s.ack(at), polls).await {
            Some(r) => r.unwrap(),
            None => {
                // Never past `at`, and acknowledging it again works.
                assert!(s.checkpoint() <= at + 1);
                s.ack(at).await.unwrap();
            }
        }
        acked = at + 1;
    }
    drop(s);
    wal.close().await.unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    let all = common::all_entries(&wal, "t").await;
    for (i, (o, _)) in all.iter().enumerate() {
        assert_eq!(*o, i as u64, "offsets stay dense");
    }
    for p in &given_up {
        let n = all.iter().filter(|(_, d)| d == p.as_bytes()).count();
        assert!(n <= 1, "{p} written {n} times");
    }
    assert_eq!(wal.consumer_lag("t", "c"), Some(all.len() as u64 - acked));
    wal.close().await.unwrap();
}
