//! Recovered data is made durable at open: entries that survived a `kill -9` only in the page
//! cache must not vanish in a power cut after the restart (consumers may already have
//! checkpointed past them). Uses the crash journal (`--features failpoints`).
#![cfg(feature = "failpoints")]

mod common;

use walrus_async::{CrashJournal, FailPoints, FsyncSchedule, Walrus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_recovered_from_the_page_cache_are_synced_at_open() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("wal");
    std::fs::create_dir(&dir).unwrap();
    let journal = CrashJournal::start(&dir).unwrap();
    let faults = FailPoints::new();
    faults.record_into(&journal);
    let open = || {
        Walrus::builder()
            .data_dir(&dir)
            .fsync(FsyncSchedule::NoFsync)
            .fail_points(faults.clone())
    };
    // First lifetime: appends handed to the OS, never synced, then the process "dies" (the
    // handle is dropped without close: nothing syncs the data).
    let wal = open().open().await.unwrap();
    for i in 0..50u32 {
        wal.append("t", format!("entry {i}")).await.unwrap();
    }
    drop(wal);
    // Second lifetime: recovery reads all 50 from the page cache.
    let wal = common::open_when_unlocked(open).await;
    assert_eq!(common::all_entries(&wal, "t").await.len(), 50);
    let at = journal.position();
    // Power cut right after the open: whatever the disk may then hold must have them all.
    for seed in 0..8 {
        let image = tempfile::tempdir().unwrap();
        journal.crash_image(at, seed, image.path()).unwrap();
        let again = Walrus::builder()
            .data_dir(image.path())
            .open()
            .await
            .unwrap();
        assert_eq!(
            common::all_entries(&again, "t").await.len(),
            50,
            "seed {seed}: entries recovered at open were lost in a later power cut"
        );
        again.close().await.unwrap();
    }
    wal.close().await.unwrap();
}
