//! Writes of at least `uncached_write_min` bytes ask the kernel to drop their pages after
//! writeback (`RWF_DONTCACHE`). What comes back — live through a tailing stream while the
//! writes happen, and after a reopen — must be exactly what was written, both on a filesystem
//! that honours the flag (ext4 or xfs in a temporary directory) and on one that refuses it
//! (tmpfs in `/dev/shm`, where the log falls back to ordinary buffered writes). The suite runs
//! once per I/O backend (see `.ci/run`), which covers the io_uring and the blocking-pool paths.

use std::path::Path;

use bytes::Bytes;
use futures::StreamExt;
use walrus_async::{FsyncSchedule, Walrus};

/// Entry `j` of batch `i`: a length from 1 byte to 300 KiB and content tied to `(i, j)`.
fn entry(i: usize, j: usize) -> Bytes {
    let len = (i * 7919 + j * 104_729) % (300 << 10) + 1;
    (0..len)
        .map(|k| (k.wrapping_mul(31) ^ (j * 7 + i)) as u8)
        .collect::<Vec<u8>>()
        .into()
}

fn batch(i: usize) -> Vec<Bytes> {
    (0..i % 4 + 1).map(|j| entry(i, j)).collect()
}

const BATCHES: usize = 30;

async fn round_trip(dir: &Path, uncached_min: usize, inline_max: usize) {
    let open = || {
        Walrus::builder()
            .data_dir(dir)
            .uncached_write_min(uncached_min)
            .inline_write_max(inline_max)
            .segment_bytes(4 << 20)
            .fsync(FsyncSchedule::Milliseconds(5))
            .open()
    };
    let wal = open().await.unwrap();
    let expected: Vec<Bytes> = (0..BATCHES).flat_map(batch).collect();

    // A consumer tails the topic while the writes land. It acknowledges nothing, so retention
    // keeps every file for the check after the reopen.
    let mut stream = wal.subscribe("t").unwrap();
    let want = expected.clone();
    let consumer = tokio::spawn(async move {
        for (n, e) in want.iter().enumerate() {
            let got = stream.next().await.unwrap().unwrap();
            assert_eq!(got.offset, n as u64);
            assert!(got.data == *e, "entry {n} read back differently");
        }
    });
    let mut next = 0u64;
    for i in 0..BATCHES {
        let b = batch(i);
        let k = b.len() as u64;
        let range = wal.append_batch("t", b).await.unwrap();
        assert_eq!(range, next..next + k);
        next += k;
    }
    consumer.await.unwrap();
    wal.close().await.unwrap();

    let wal = open().await.unwrap();
    let mut at = 0u64;
    while at < next {
        let got = wal.read_at("t", at, 4 << 20).await.unwrap();
        assert!(
            !got.is_empty(),
            "entries from {at} on are missing after reopen"
        );
        for e in got {
            assert_eq!(e.offset, at);
            assert!(
                e.data == expected[at as usize],
                "entry {at} differs after reopen"
            );
            at += 1;
        }
    }
    assert!(wal.read_at("t", at, 1).await.unwrap().is_empty());
    assert_eq!(wal.stats().checksum_failures, 0);
    wal.close().await.unwrap();
}

/// Every write uncached, made inline by the writer task (`pwritev2`) or, with
/// `inline_write_max(0)`, by the backend; then the defaults (large writes only).
async fn all_configurations(root: &Path) {
    for (n, (min, inline)) in [(1, 1 << 30), (1, 0), (256 << 10, 256 << 10)]
        .into_iter()
        .enumerate()
    {
        round_trip(&root.join(n.to_string()), min, inline).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_writes_read_back_exactly_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    all_configurations(dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_writes_read_back_exactly_where_the_flag_is_refused() {
    // tmpfs refuses RWF_DONTCACHE; without /dev/shm (not Linux) there is nothing to test.
    let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
        eprintln!("no /dev/shm: the refusal path is not exercised on this system");
        return;
    };
    all_configurations(dir.path()).await;
}
