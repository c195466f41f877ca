//! File descriptors stay bounded by what can still be written, not by the data retained: a
//! log keeps working, and opens again, with many more segment files than the process may have
//! descriptors. Its own test binary, since it lowers the process's `RLIMIT_NOFILE`.

mod common;

use walrus_async::{FsyncSchedule, Walrus};

const LIMIT: u64 = 96;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_more_segments_than_descriptors() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = LIMIT.min(lim.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        Walrus::builder()
            .data_dir(dir.path())
            .segment_bytes(64 << 10)
            .fsync(FsyncSchedule::NoFsync)
            .open()
    };
    let wal = open().await.unwrap();
    let files = 3 * LIMIT as usize;
    let mut batches = 0u64;
    while common::segments(dir.path()).len() < files {
        wal.append_batch("t", (0..15).map(|i| vec![i as u8; 4000]))
            .await
            .unwrap_or_else(|e| panic!("batch {batches}: {e}"));
        // A second topic, so blocks of two writers share the files.
        wal.append("u", format!("u{batches}")).await.unwrap();
        batches += 1;
    }
    wal.sync().await.unwrap();
    wal.close().await.unwrap();

    let wal = open()
        .await
        .expect("opening a log with more files than descriptors");
    assert_eq!(
        common::all_entries(&wal, "t").await.len() as u64,
        15 * batches
    );
    assert_eq!(common::all_entries(&wal, "u").await.len() as u64, batches);
    wal.append("t", "after").await.unwrap();
    wal.close().await.unwrap();
}
