//! A handle never hangs when the runtime that opened the log is gone: every call finishes in
//! bounded time, works where it needs no task of the log (reads, peeks, stats), and otherwise
//! fails with `Error::RuntimeGone`; nothing returns `Ok` with less durability than promised.
//! A handle kept in a `static` across `#[tokio::test]` runtimes meets exactly this.

use std::time::Duration;

use futures::StreamExt;
use walrus_async::{Error, FsyncSchedule, IoBackend, Walrus};

/// Fails the test instead of hanging it (not a timing assertion: any bound would do).
async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("{what} hung after the log's runtime ended"))
}

fn gone<T: std::fmt::Debug>(what: &str, r: walrus_async::Result<T>) {
    assert!(matches!(r, Err(Error::RuntimeGone)), "{what}: {r:?}");
}

#[test]
fn a_handle_outlives_the_runtime_that_opened_it() {
    for backend in [IoBackend::IoUring, IoBackend::Blocking] {
        for fsync in [FsyncSchedule::SyncEach, FsyncSchedule::Milliseconds(5)] {
            let dir = tempfile::tempdir().unwrap();
            let first = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let wal = first.block_on(async {
                let wal = match Walrus::builder()
                    .data_dir(dir.path())
                    .io_backend(backend)
                    .fsync(fsync)
                    .open()
                    .await
                {
                    Ok(w) => w,
                    Err(Error::BackendUnavailable { .. }) => return None,
                    Err(e) => panic!("{e}"),
                };
                wal.append_batch("t", ["a", "b"]).await.unwrap();
                wal.sync().await.unwrap();
                let mut stream = wal.subscribe_as("t", "c").unwrap();
                assert_eq!(stream.next().await.unwrap().unwrap().offset, 0);
                Some((wal, stream))
            });
            let Some((wal, stream)) = wal else { continue };
            drop(first);

            let second = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            second.block_on(async {
                let ctx = format!("{backend:?} {fsync:?}");
                gone(&ctx, bounded("append", wal.append("t", "c")).await);
                gone(
                    &ctx,
                    bounded("append to a new topic", wal.append("u", "c")).await,
                );
                gone(
                    &ctx,
                    bounded("consuming read", wal.read_next("t", true)).await,
                );
                gone(&ctx, bounded("sync", wal.sync()).await);
                gone(&ctx, bounded("reclaim", wal.reclaim()).await);
                gone(
                    &ctx,
                    bounded("remove_consumer", wal.remove_consumer("t", "c")).await,
                );
                // What needs no task of the log still works.
                let peek = bounded("peek", wal.read_next("t", false)).await;
                assert!(matches!(peek, Err(Error::RuntimeGone)) || peek.unwrap().is_some());
                assert_eq!(
                    bounded("read_at", wal.read_at("t", 0, 1 << 20))
                        .await
                        .map(|v| v.len())
                        .unwrap_or(2),
                    2
                );
                assert_eq!(wal.topics(), vec!["t".to_string()]);
                gone(&ctx, wal.subscribe_as("t", "late"));
                gone(&ctx, wal.subscribe("t"));
                // A stream opened before says so once, then ends.
                {
                    let mut s = stream;
                    let mut saw_gone = false;
                    while let Some(item) = bounded("stream", s.next()).await {
                        match item {
                            Err(Error::RuntimeGone) => saw_gone = true,
                            Err(e) => panic!("{ctx}: {e}"),
                            Ok(_) => {}
                        }
                    }
                    assert!(saw_gone, "{ctx}");
                }
                gone(&ctx, bounded("close", wal.close()).await);
                gone(&ctx, bounded("close again", wal.close()).await);
                // The lock was let go: the log opens again here, with everything acknowledged.
                let again = Walrus::builder()
                    .data_dir(dir.path())
                    .io_backend(backend)
                    .open()
                    .await
                    .unwrap();
                let all = again.read_at("t", 0, 1 << 20).await.unwrap();
                assert_eq!(all.len(), 2, "{ctx}");
                again.close().await.unwrap();
            });
        }
    }
}
