//! Retention: segment files are deleted once every registered consumer has passed them (and
//! never before), limits delete regardless, and disk space really returns.

mod common;

use std::path::Path;

use futures::StreamExt;
use walrus_async::{Error, Walrus, WalrusBuilder};

fn builder(dir: &Path) -> WalrusBuilder {
    // 64 KiB segments of 8 KiB blocks: a file every ~60 entries of 1 KiB.
    Walrus::builder().data_dir(dir).segment_bytes(64 << 10)
}

async fn fill(wal: &Walrus, topic: &str, n: u64) {
    for i in 0..n {
        wal.append(topic, vec![(i % 251) as u8; 1000])
            .await
            .unwrap();
    }
}

fn seg_count(dir: &Path) -> usize {
    common::segments(dir).len()
}

fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    common::segments(dir)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().blocks() * 512)
        .sum()
}

/// Consumes `n` entries with a stream of `consumer`, acknowledging each.
/// Runs a pass now (the background task may have deleted some already) and returns how many
/// files retention has deleted in total.
async fn reclaimed(wal: &Walrus) -> u64 {
    wal.reclaim().await.unwrap();
    wal.stats().segments_deleted
}

async fn consume(wal: &Walrus, topic: &str, consumer: &str, n: u64) {
    let mut s = wal.subscribe_as(topic, consumer).unwrap();
    for _ in 0..n {
        let e = s.next().await.unwrap().unwrap();
        s.ack(e.offset).await.unwrap();
    }
}

#[tokio::test]
async fn consumed_files_are_deleted_and_disk_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let wal = builder(dir.path()).open().await.unwrap();
    consume(&wal, "t", "c", 0).await; // register before writing
    fill(&wal, "t", 600).await;
    let before = seg_count(dir.path());
    let bytes_before = disk_bytes(dir.path());
    assert!(before >= 8, "{before} files");
    assert_eq!(
        reclaimed(&wal).await,
        0,
        "nothing consumed, nothing deleted"
    );
    consume(&wal, "t", "c", 600).await;
    let deleted = reclaimed(&wal).await;
    assert!(
        deleted as usize >= before - 2,
        "deleted {deleted} of {before}"
    );
    // On disk: the live segments, plus at most the spare made ahead of need.
    let live = wal.stats().segments;
    assert!((live..=live + 1).contains(&(seg_count(dir.path()) as u64)));
    assert!(
        disk_bytes(dir.path()) * 3 < bytes_before,
        "the blocks went back to the file system"
    );
    // Appends and streams go on; offsets continue.
    assert_eq!(wal.append("t", "next").await.unwrap(), 600);
    let mut s = wal.subscribe_as("t", "c").unwrap();
    assert_eq!(s.next().await.unwrap().unwrap().offset, 600);
}

#[tokio::test]
async fn topics_without_consumers_and_peeks_keep_everything() {
    let dir = tempfile::tempdir().unwrap();
    let wal = builder(dir.path()).open().await.unwrap();
    fill(&wal, "t", 300).await;
    // The list, not the count: a spare segment may still be appearing in the background.
    let before = common::segments(dir.path());
    for _ in 0..100 {
        wal.read_next("t", false).await.unwrap().unwrap(); // peeks
        wal.batch_read("t", 1 << 20, false).await.unwrap();
    }
    let mut s = wal.subscribe_as("t", "reader").unwrap();
    for _ in 0..100 {
        s.next().await.unwrap().unwrap(); // delivered, never acknowledged
    }
    assert_eq!(reclaimed(&wal).await, 0);
    for p in before {
        assert!(
            p.exists(),
            "100 peeks delete nothing, but {} is gone",
            p.display()
        );
    }
}

#[tokio::test]
async fn a_slow_consumer_pins_exactly_the_files_it_still_needs() {
    let dir = tempfile::tempdir().unwrap();
    let wal = builder(dir.path()).open().await.unwrap();
    consume(&wal, "t", "fast", 0).await;
    consume(&wal, "t", "slow", 0).await;
    fill(&wal, "t", 600).await;
    consume(&wal, "t", "fast", 600).await;
    consume(&wal, "t", "slow", 300).await;
    wal.reclaim().await.unwrap();
    // Every entry the slow consumer still needs is retained; files it passed are gone.
    let oldest_needed = 300;
    let all = common::all_entries_from(&wal, "t", oldest_needed).await;
    assert_eq!(all.len(), 300);
    let e = wal.read_at("t", 0, 0).await.unwrap_err();
    assert!(matches!(e, Error::Truncated { requested: 0, oldest } if oldest <= 300 && oldest > 0));
    let kept = seg_count(dir.path());
    // Roughly half the files remain: the ones holding offsets >= 300, at most one before.
    let total = (wal.stats().segments + wal.stats().segments_deleted) as usize;
    assert!(kept <= total / 2 + 2, "kept {kept} of {total}");
    consume(&wal, "t", "slow", 300).await;
    wal.reclaim().await.unwrap();
    assert!(seg_count(dir.path()) <= 2);
}

#[tokio::test]
async fn a_deleted_older_file_never_shifts_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let wal = builder(dir.path()).open().await.unwrap();
    consume(&wal, "t", "a", 0).await;
    consume(&wal, "t", "b", 0).await;
    fill(&wal, "t", 400).await;
    let mut b = wal.subscribe_as("t", "b").unwrap();
    for _ in 0..350 {
        let e = b.next().await.unwrap().unwrap();
        b.ack(e.offset).await.unwrap();
    }
    // `a` catches up past b, so files behind b are deleted while b's stream is live.
    consume(&wal, "t", "a", 400).await;
    assert!(reclaimed(&wal).await > 0);
    for want in 350..400 {
        let e = b.next().await.unwrap().unwrap();
        assert_eq!(e.offset, want);
        assert_eq!(e.data[0], (want % 251) as u8);
    }
    drop(b);
    wal.close().await.unwrap();
    // After a restart too, positions are offsets, not file indexes.
    let wal = builder(dir.path()).open().await.unwrap();
    let mut b = wal.subscribe_as("t", "b").unwrap();
    assert_eq!(b.next().await.unwrap().unwrap().offset, 350);
}

#[tokio::test]
async fn entries_held_by_a_reader_stay_valid_after_their_file_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let wal = builder(dir.path()).open().await.unwrap();
    consume(&wal, "t", "c", 0).await;
    fill(&wal, "t", 200).await;
    let held = wal.read_at("t", 0, 1 << 20).await.unwrap();
    consume(&wal, "t", "c", 200).await;
    assert!(reclaimed(&wal).await > 0);
    assert!(matches!(
        wal.read_at("t", 0, 10).await,
        Err(Error::Truncated { .. })
    ));
    for e in &held {
        assert_eq!(e.data.len(), 1000);
        assert!(e.data.iter().all(|&b| b == (e.offset % 251) as u8));
    }
}

#[tokio::test]
async fn files_from_earlier_lifetimes_are_reclaimed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = builder(dir.path()).open().await.unwrap();
        consume(&wal, "t", "c", 0).await;
        fill(&wal, "t", 300).await;
        wal.close().await.unwrap();
    }
    let before = seg_count(dir.path());
    {
        let wal = builder(dir.path()).open().await.unwrap();
        assert_eq!(seg_count(dir.path()), before, "nothing consumed yet");
        let mut s = wal.subscribe_as("t", "c").unwrap();
        for _ in 0..300 {
            let e = s.next().await.unwrap().unwrap();
            s.ack(e.offset).await.unwrap();
        }
        drop(s);
        // Close without waiting for the background pass.
        wal.close().await.unwrap();
    }
    let wal = builder(dir.path()).open().await.unwrap();
    assert!(seg_count(dir.path()) < before, "reclaimed at open");
    // Offsets never go backwards, also when every entry was deleted.
    assert_eq!(wal.append("t", "x").await.unwrap(), 300);
}

#[tokio::test]
async fn removing_a_consumer_releases_what_it_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let wal = builder(dir.path()).open().await.unwrap();
    consume(&wal, "t", "done", 0).await;
    consume(&wal, "t", "gone", 0).await;
    fill(&wal, "t", 300).await;
    consume(&wal, "t", "done", 300).await;
    assert_eq!(reclaimed(&wal).await, 0, "`gone` pins everything");
    wal.remove_consumer("t", "gone").await.unwrap();
    assert!(reclaimed(&wal).await > 0);
    assert_eq!(wal.consumer_lag("t", "gone"), None);
    wal.close().await.unwrap();
    let wal = builder(dir.path()).open().await.unwrap();
    assert_eq!(wal.consumer_lag("t", "gone"), None, "removal is durable");
    // Everything was consumed by `done` and reclaimed; a new `gone` starts at the oldest
    // retained entry, which is the next one appended.
    assert_eq!(wal.append("t", "x").await.unwrap(), 300);
    let mut s = wal.subscribe_as("t", "gone").unwrap();
    assert_eq!(s.next().await.unwrap().unwrap().offset, 300);
}

#[tokio::test]
async fn two_instances_in_one_process_do_not_affect_each_other() {
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let a = builder(a_dir.path()).open().await.unwrap();
    let b = builder(b_dir.path()).key("tenant").open().await.unwrap();
    for wal in [&a, &b] {
        consume(wal, "t", "c", 0).await;
        fill(wal, "t", 300).await;
    }
    // The list, not the count: a spare segment may still be appearing in the background.
    let b_files = common::segments(&b_dir.path().join("ns-tenant"));
    consume(&a, "t", "c", 300).await;
    assert!(reclaimed(&a).await > 0);
    assert_eq!(reclaimed(&b).await, 0);
    for p in b_files {
        assert!(p.exists(), "{} of the other instance is gone", p.display());
    }
    assert_eq!(common::all_entries(&b, "t").await.len(), 300);
}

#[tokio::test]
async fn a_size_limit_deletes_unread_data_and_the_consumer_hears_once() {
    let dir = tempfile::tempdir().unwrap();
    let wal = builder(dir.path())
        .retention_bytes(256 << 10)
        .open()
        .await
        .unwrap();
    consume(&wal, "t", "late", 0).await;
    fill(&wal, "t", 800).await;
    assert!(reclaimed(&wal).await > 0);
    let on_disk: u64 = common::segments(dir.path())
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(on_disk <= (256 << 10) + (64 << 10), "{on_disk} bytes left");
    let mut s = wal.subscribe_as("t", "late").unwrap();
    let err = s.next().await.unwrap().unwrap_err();
    let Error::Truncated { requested, oldest } = err else {
        panic!("{err}")
    };
    assert_eq!(requested, 0);
    let e = s.next().await.unwrap().unwrap();
    assert_eq!(
        e.offset, oldest,
        "then it goes on from the oldest retained entry"
    );
    assert_eq!(wal.consumer_lag("t", "late"), Some(800 - oldest));
    wal.close().await.unwrap();
    // A topic whose every file the limit took still continues its offsets after a restart.
    let wal = builder(dir.path()).retention_bytes(1).open().await.unwrap();
    wal.reclaim().await.unwrap();
    wal.close().await.unwrap();
    let wal = builder(dir.path()).open().await.unwrap();
    assert_eq!(wal.append("t", "x").await.unwrap(), 800);
}

#[tokio::test]
async fn offsets_continue_after_every_entry_and_every_consumer_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let wal = builder(dir.path()).open().await.unwrap();
    consume(&wal, "t", "c", 0).await;
    fill(&wal, "t", 300).await;
    consume(&wal, "t", "c", 300).await;
    wal.append("other", "rolls the current segment away from t")
        .await
        .unwrap();
    reclaimed(&wal).await;
    wal.remove_consumer("t", "c").await.unwrap();
    wal.close().await.unwrap();
    let wal = builder(dir.path()).open().await.unwrap();
    assert_eq!(
        wal.append("t", "x").await.unwrap(),
        300,
        "never handed out again"
    );
}

#[tokio::test]
async fn truncation_is_reported_after_a_restart_too() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = builder(dir.path()).open().await.unwrap();
        consume(&wal, "t", "late", 0).await;
        fill(&wal, "t", 800).await;
        // The default consumer reads a little, so it has a checkpoint as well.
        assert_eq!(wal.read_next("t", true).await.unwrap().unwrap().offset, 0);
        wal.close().await.unwrap();
    }
    // Reopen with a size limit: the open-time pass deletes what `late` never read.
    let wal = builder(dir.path())
        .retention_bytes(256 << 10)
        .open()
        .await
        .unwrap();
    let mut s = wal.subscribe_as("t", "late").unwrap();
    let err = s.next().await.unwrap().unwrap_err();
    assert!(
        matches!(err, Error::Truncated { requested: 0, oldest } if oldest > 0),
        "{err}"
    );
    assert!(s.next().await.unwrap().is_ok());
    // Polling reads say so once too, then go on.
    let err = wal.read_next("t", true).await.unwrap_err();
    let Error::Truncated {
        requested: 1,
        oldest,
    } = err
    else {
        panic!("{err}")
    };
    assert_eq!(
        wal.read_next("t", true).await.unwrap().unwrap().offset,
        oldest
    );
}

#[tokio::test]
async fn a_removed_consumer_is_not_brought_back_by_a_late_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let c = walrus_async::ReadConsistency::AtLeastOnce { persist_every: 100 };
    let wal = builder(dir.path()).consistency(c).open().await.unwrap();
    fill(&wal, "t", 10).await;
    let mut s = wal.subscribe_as("t", "gone").unwrap();
    let e = s.next().await.unwrap().unwrap();
    s.ack(e.offset).await.unwrap(); // not persisted yet (every 100)
    drop(s); // persists in a spawned task...
    wal.remove_consumer("t", "gone").await.unwrap(); // ...racing this removal
    tokio::task::yield_now().await;
    // Never-polled registrations cannot bring it back either.
    drop(wal.subscribe_as("t", "never-polled").unwrap());
    wal.remove_consumer("t", "never-polled").await.unwrap();
    wal.close().await.unwrap();
    let wal = builder(dir.path()).open().await.unwrap();
    assert_eq!(wal.consumer_lag("t", "gone"), None);
    assert_eq!(wal.consumer_lag("t", "never-polled"), None);
    assert!(wal.stats().consumers.is_empty());
}
