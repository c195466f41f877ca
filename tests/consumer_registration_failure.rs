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
