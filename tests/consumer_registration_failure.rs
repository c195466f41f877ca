//! A failed registration is never silent: when a named consumer's registration record cannot
//! be written (ENOSPC, EIO), the stream says so and writes it again before it delivers
//! anything, so no acknowledgement is ever `Ok` while persisting nothing.
#![cfg(feature = "failpoints")]

use futures::StreamExt;
use walrus_async::{FailPoints, Walrus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_registration_is_retried_before_anything_is_delivered() {
    for errno in [libc::ENOSPC, libc::EIO] {
        let dir = tempfile::tempdir().unwrap();
        let f = FailPoints::new();
        let open = || {
            Walrus::builder()
                .data_dir(dir.path())
                .fail_points(f.clone())
                .open()
        };
        let wal = open().await.unwrap();
        wal.append_batch("t", ["a", "b", "c"]).await.unwrap();
        f.fail_writes(1, errno);
        let mut s = wal.subscribe_as("t", "c").unwrap();
        let first = s.next().await.unwrap();
        assert!(
            matches!(&first, Err(walrus_async::Error::Io(e)) if e.raw_os_error() == Some(errno)),
            "{first:?}"
        );
        // The disk is fine again: the registration is written before entry 0 comes.
        let e = s.next().await.unwrap().unwrap();
        assert_eq!(e.offset, 0);
        s.ack(0).await.unwrap();
        drop(s);
        wal.close().await.unwrap();

        let wal = open().await.unwrap();
        assert_eq!(
            wal.consumer_lag("t", "c"),
            Some(2),
            "errno {errno}: the registration and the acknowledgement are durable"
        );
        wal.close().await.unwrap();
    }
}

fn builder(dir: &std::path::Path, f: &FailPoints) -> walrus_async::WalrusBuilder {
    Walrus::builder().data_dir(dir).fail_points(f.clone())
}

/// A copy of the log's files as they are now (what a crash right now would leave, as far as
/// the page cache goes).
fn snapshot(dir: &std::path::Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap();
        if p.is_file() && name != "LOCK" {
            std::fs::copy(&p, copy.path().join(name)).unwrap();
        }
    }
    copy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_write_that_failed_is_never_read_back() {
    // The record lands but its fsync fails; or only half of it (or of a group) lands.
    for how in ["sync", "short"] {
        let dir = tempfile::tempdir().unwrap();
        let f = FailPoints::new();
        let wal = builder(dir.path(), &f).open().await.unwrap();
        wal.append_batch("t", ["a", "b"]).await.unwrap();
        wal.sync().await.unwrap();
        match how {
            "sync" => f.fail_syncs(1, libc::EIO),
            _ => f.short_writes(1, libc::ENOSPC),
        }
        assert!(wal.read_next("t", true).await.is_err(), "{how}");
        // Right away, before anything else is written or the log closed: the failed record is
        // not in the file.
        let copy = snapshot(dir.path());
        let again = Walrus::open(copy.path()).await.unwrap();
        let e = again.read_next("t", true).await.unwrap().unwrap();
        assert_eq!(e.offset, 0, "{how}: entry 0 was never returned");
        again.close().await.unwrap();
        wal.close().await.unwrap();
        let wal = builder(dir.path(), &f).open().await.unwrap();
        let e = wal.read_next("t", true).await.unwrap().unwrap();
        assert_eq!(e.offset, 0, "{how}: entry 0 was never returned");
        wal.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_removal_can_be_retried() {
    let dir = tempfile::tempdir().unwrap();
    let f = FailPoints::new();
    let wal = builder(dir.path(), &f).open().await.unwrap();
    wal.append("t", "a").await.unwrap();
    drop(wal.subscribe_as("t", "c").unwrap());
    wal.sync().await.unwrap();
    let mut s = wal.subscribe_as("t", "c").unwrap();
    assert_eq!(s.next().await.unwrap().unwrap().offset, 0);
    drop(s);
    f.fail_writes(1, libc::ENOSPC);
    assert!(wal.remove_consumer("t", "c").await.is_err());
    wal.remove_consumer("t", "c").await.unwrap();
    wal.close().await.unwrap();
    let wal = builder(dir.path(), &f).open().await.unwrap();
    assert_eq!(
        wal.consumer_lag("t", "c"),
        None,
        "the retried removal is durable"
    );
    wal.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_a_failed_reset_persists_under_the_reset() {
    let dir = tempfile::tempdir().unwrap();
    let f = FailPoints::new();
    let wal = builder(dir.path(), &f).open().await.unwrap();
    wal.append_batch("t", ["a", "b", "c", "d"]).await.unwrap();
    assert_eq!(wal.read_next("t", true).await.unwrap().unwrap().offset, 0);
    f.fail_writes(1, libc::ENOSPC);
    assert!(
        wal.reset_consumer("t", "", walrus_async::ResetTo::Offset(2))
            .await
            .is_err()
    );
    // The reset holds in memory; the next consuming read makes it durable with its own
    // checkpoint, or fails: never `Ok` with nothing written.
    assert_eq!(wal.read_next("t", true).await.unwrap().unwrap().offset, 2);
    wal.close().await.unwrap();
    let wal = builder(dir.path(), &f).open().await.unwrap();
    assert_eq!(wal.read_next("t", true).await.unwrap().unwrap().offset, 3);
    wal.close().await.unwrap();
}
