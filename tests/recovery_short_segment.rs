//! A segment file cut short in the middle of a block (an interrupted copy, a tool that trims
//! files) keeps every intact entry before the cut.

mod common;

use common::FRAME_HEADER;
use walrus_async::Walrus;

#[tokio::test]
async fn a_segment_cut_inside_an_entry_keeps_the_entries_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        Walrus::builder()
            .data_dir(dir.path())
            .fsync(walrus_async::FsyncSchedule::SyncEach)
            .open()
    };
    let wal = open().await.unwrap();
    for i in 0..20u8 {
        assert_eq!(wal.append("t", vec![i; 1024]).await.unwrap(), u64::from(i));
    }
    wal.close().await.unwrap();

    let segs = common::segments(dir.path());
    assert_eq!(segs.len(), 1);
    let bytes = std::fs::read(&segs[0]).unwrap();
    let frames = common::frame_positions(&bytes, Some("t"));
    assert_eq!(frames.len(), 20, "one frame per sequential append");
    // Inside entry 19's payload (after its 2-byte length prefix).
    let cut = frames[19] + FRAME_HEADER + 1 + 2 + 500;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segs[0])
        .unwrap()
        .set_len(cut)
        .unwrap();

    let wal = open().await.unwrap();
    let all = common::all_entries(&wal, "t").await;
    assert_eq!(all.len(), 19, "entries 0..=18 survive the cut");
    for (i, (o, data)) in all.iter().enumerate() {
        assert_eq!((*o, data.as_slice()), (i as u64, &[i as u8; 1024][..]));
    }
    assert!(
        wal.stats().checksum_failures >= 1,
        "the cut is counted as damage"
    );
    // The torn entry's offset is handed out again, and the log goes on.
    assert_eq!(wal.append("t", "next").await.unwrap(), 19);
    wal.close().await.unwrap();
    let wal = open().await.unwrap();
    assert_eq!(common::all_entries(&wal, "t").await.len(), 20);
    wal.close().await.unwrap();
}
