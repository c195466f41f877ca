//! Settings out of range are `Error::InvalidConfig` naming the setting and its bounds; settings
//! the docs say are capped are capped. Nothing here may panic, at open or at the first append.

use std::time::Duration;

use walrus_async::{Error, FsyncSchedule, Walrus, WalrusBuilder};

fn refused(b: WalrusBuilder, setting: &str) -> impl std::future::Future<Output = ()> {
    let setting = setting.to_owned();
    async move {
        match b.open().await {
            Err(Error::InvalidConfig(msg)) => {
                assert!(msg.contains(&setting), "{msg:?} should name {setting}");
                assert!(msg.contains("..="), "{msg:?} should give the bounds");
            }
            Err(e) => panic!("{setting}: expected InvalidConfig, got {e}"),
            Ok(wal) => {
                // Before the fix this is where it panicked (inside Tokio's channel).
                let r = wal.append("t", "x").await;
                panic!("{setting}: accepted (append: {r:?})");
            }
        }
    }
}

#[tokio::test]
async fn a_queue_capacity_tokio_cannot_hold_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let b = || Walrus::builder().data_dir(dir.path());
    refused(b().queue_capacity(usize::MAX), "queue_capacity").await;
    refused(b().queue_capacity((1 << 20) + 1), "queue_capacity").await;
    refused(b().queue_capacity(0), "queue_capacity").await;
    let wal = b().queue_capacity(1 << 20).open().await.unwrap();
    assert_eq!(wal.append("t", "x").await.unwrap(), 0);
    wal.close().await.unwrap();
}

#[tokio::test]
async fn a_sync_period_past_a_day_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let b = || Walrus::builder().data_dir(dir.path());
    refused(
        b().fsync(FsyncSchedule::Milliseconds(u64::MAX)),
        "Milliseconds",
    )
    .await;
    let wal = b()
        .fsync(FsyncSchedule::Milliseconds(86_400_000))
        .open()
        .await
        .unwrap();
    assert_eq!(wal.append("t", "x").await.unwrap(), 0);
    wal.sync().await.unwrap();
    wal.close().await.unwrap();
}

#[tokio::test]
async fn huge_segment_sizes_are_refused_and_the_block_setting_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let b = || Walrus::builder().data_dir(dir.path());
    refused(b().segment_bytes(u64::MAX), "segment_bytes").await;
    // Format 3 has no blocks: the old setting is accepted and changes nothing.
    for block in [u64::MAX, u64::MAX - 4095, 1 << 63, 0] {
        #[allow(deprecated)]
        let wal = b()
            .segment_bytes(64 << 10)
            .block_bytes(block)
            .open()
            .await
            .unwrap();
        let at = wal.append("t", vec![7u8; 100]).await.unwrap();
        assert_eq!(wal.read_at("t", at, 1).await.unwrap()[0].data.len(), 100);
        wal.close().await.unwrap();
    }
}

#[tokio::test]
async fn an_age_limit_of_any_size_works() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Walrus::builder()
        .data_dir(dir.path())
        .retention_age(Duration::MAX)
        .retention_bytes(u64::MAX)
        .open()
        .await
        .unwrap();
    wal.append("t", "x").await.unwrap();
    assert_eq!(wal.reclaim().await.unwrap(), 0);
    wal.close().await.unwrap();
}
