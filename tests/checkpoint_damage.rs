//! Damage to the checkpoint store never costs unconsumed data: records past the damage are
//! still read, the damaged file is kept aside, and a lifetime that found the store damaged or
//! missing deletes nothing on consumers' account until they could subscribe again.

mod common;

use futures::StreamExt;
use walrus_async::Walrus;

async fn fill(wal: &Walrus, dir: &std::path::Path, files: usize) -> u64 {
    common::fill_segments(wal, dir, "t", files).await
}

async fn read_and_ack(wal: &Walrus, consumer: &str, upto: u64) {
    let mut s = wal.subscribe_as("t", consumer).unwrap();
    if s.checkpoint() > upto {
        return;
    }
    while let Some(e) = s.next().await {
        let e = e.unwrap();
        if e.offset == upto {
            s.ack(upto).await.unwrap();
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_after_damage_survive_and_nothing_is_deleted_for_consumers() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    // Three consumers registered in this order: their records follow each other.
    for c in ["a", "b", "c"] {
        drop(wal.subscribe_as("t", c).unwrap());
    }
    let last = fill(&wal, dir.path(), 5).await;
    read_and_ack(&wal, "a", last).await;
    read_and_ack(&wal, "b", last).await;
    read_and_ack(&wal, "c", last / 2).await;
    wal.close().await.unwrap();

    // Damage the first record of the store: it is `a`'s registration or one before it.
    let store = dir.path().join("checkpoints");
    let mut bytes = std::fs::read(&store).unwrap();
    bytes[2] ^= 0xff;
    std::fs::write(&store, &bytes).unwrap();
    let segments_before = common::segments(dir.path());

    let wal = common::small(dir.path()).open().await.unwrap();
    assert!(wal.stats().checkpoint_store_damaged);
    // `c` is known, where it was.
    assert_eq!(wal.consumer_lag("t", "c"), Some(last - last / 2));
    let mut s = wal.subscribe_as("t", "c").unwrap();
    assert_eq!(s.next().await.unwrap().unwrap().offset, last / 2 + 1);
    drop(s);
    // The damaged file is kept, byte for byte.
    let kept: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("checkpoints.damaged-")
        })
        .collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(std::fs::read(&kept[0]).unwrap(), bytes);
    // Nothing is deleted on consumers' account in this lifetime, even what every known
    // consumer has passed: a consumer the damage lost may still come back for it.
    read_and_ack(&wal, "b", last).await;
    read_and_ack(&wal, "c", last).await;
    assert_eq!(wal.reclaim().await.unwrap(), 0);
    for p in &segments_before {
        assert!(p.exists(), "{} deleted", p.display());
    }
    wal.close().await.unwrap();

    // A restart does not end the protection: the kept file does, once removed by an operator
    // (every consumer has subscribed again).
    let wal = common::small(dir.path()).open().await.unwrap();
    assert!(wal.stats().checkpoint_store_damaged);
    assert_eq!(wal.reclaim().await.unwrap(), 0);
    wal.close().await.unwrap();
    std::fs::remove_file(&kept[0]).unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    assert!(!wal.stats().checkpoint_store_damaged);
    let deleted = wal.reclaim().await.unwrap() + wal.stats().segments_deleted;
    assert!(deleted > 0, "consumed data goes again (at open or now)");
    wal.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_store_with_segments_deletes_nothing_for_consumers() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    drop(wal.subscribe_as("t", "a").unwrap());
    let last = fill(&wal, dir.path(), 4).await;
    wal.close().await.unwrap();
    std::fs::remove_file(dir.path().join("checkpoints")).unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    assert!(wal.stats().checkpoint_store_damaged);
    read_and_ack(&wal, "b", last).await;
    assert_eq!(wal.reclaim().await.unwrap(), 0);
    // `a` comes back and finds everything.
    let mut s = wal.subscribe_as("t", "a").unwrap();
    assert_eq!(s.next().await.unwrap().unwrap().offset, 0);
    drop(s);
    wal.close().await.unwrap();
    // The loss is remembered across restarts by a marker file, until an operator removes it.
    let marker = dir.path().join("checkpoints.damaged-missing");
    assert!(marker.exists());
    let wal = common::small(dir.path()).open().await.unwrap();
    assert!(wal.stats().checkpoint_store_damaged);
    wal.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_consumer_pins_from_its_first_read() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    let last = fill(&wal, dir.path(), 5).await;
    // A stream of the default consumer has read one entry, acknowledged nothing, and is
    // still reading.
    let mut stream = wal.subscribe("t").unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap().offset, 0);
    // A named consumer has read everything.
    read_and_ack(&wal, "n", last).await;
    wal.reclaim().await.unwrap();
    for want in 1..=last {
        assert_eq!(
            stream.next().await.unwrap().unwrap().offset,
            want,
            "the default consumer's unread entries were deleted"
        );
    }
    // Once it has acknowledged them, they go.
    stream.ack(last).await.unwrap();
    drop(stream);
    assert!(wal.reclaim().await.unwrap() > 0 || wal.stats().segments_deleted > 0);
    wal.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_consumer_never_hears_truncated_from_a_pass_deleting_consumed_data() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    let mut s = wal.subscribe_as("t", "old").unwrap();
    for round in 0..20 {
        let last = fill(&wal, dir.path(), common::segments(dir.path()).len() + 2).await;
        while let Some(e) = s.next().await {
            if e.unwrap().offset == last {
                break;
            }
        }
        // The ack wakes retention, which deletes what "old" consumed while the new consumer
        // subscribes.
        let ack = s.ack(last);
        let name = format!("new{round}");
        let subscribe = async {
            tokio::task::yield_now().await;
            wal.subscribe_as("t", &name)
        };
        let (acked, new) = tokio::join!(ack, subscribe);
        acked.unwrap();
        let mut new = new.unwrap();
        let reclaim = wal.reclaim();
        let (first, _) = tokio::join!(new.next(), reclaim);
        let first = first.unwrap();
        assert!(first.is_ok(), "round {round}: {first:?}");
        drop(new);
        wal.remove_consumer("t", &name).await.unwrap();
    }
    drop(s);
    wal.close().await.unwrap();
}
