//! Recovery from files damaged on purpose: torn, zeroed and garbage tails, flipped bits,
//! damaged frame and segment headers, truncated and extended files.

mod common;

use std::path::Path;

use common::{FRAME_HEADER, PAGE, frame_positions};
use walrus_async::Walrus;

/// Ten entries in topic "t", each its own frame (awaited one by one), then closed.
async fn ten_frames(dir: &Path) -> Vec<u64> {
    let wal = common::small(dir).open().await.unwrap();
    for i in 0..10u32 {
        assert_eq!(
            wal.append("t", format!("entry-{i}")).await.unwrap(),
            u64::from(i)
        );
    }
    wal.close().await.unwrap();
    let seg = &common::segments(dir)[0];
    let frames = frame_positions(&std::fs::read(seg).unwrap(), Some("t"));
    assert_eq!(frames.len(), 10);
    frames
}

fn edit(dir: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let seg = common::segments(dir)[0].clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    f(&mut bytes);
    std::fs::write(&seg, bytes).unwrap();
}

fn want(range: impl Iterator<Item = u64>) -> Vec<(u64, Vec<u8>)> {
    range
        .map(|i| (i, format!("entry-{i}").into_bytes()))
        .collect()
}

async fn reopen(dir: &Path) -> Walrus {
    common::small(dir).open().await.unwrap()
}

#[tokio::test]
async fn torn_tail_is_cut_and_its_offset_handed_out_again() {
    let dir = tempfile::tempdir().unwrap();
    let frames = ten_frames(dir.path()).await;
    let last = frames[9] as usize;
    edit(dir.path(), |b| b[last + 46..last + 52].fill(0)); // tear inside the payload
    let wal = reopen(dir.path()).await;
    assert_eq!(common::all_entries(&wal, "t").await, want(0..9));
    assert_eq!(wal.stats().checksum_failures, 1);
    assert_eq!(wal.append("t", "entry-9").await.unwrap(), 9);
    assert_eq!(common::all_entries(&wal, "t").await, want(0..10));
}

#[tokio::test]
async fn zeroed_tail_is_cut_without_counting_damage() {
    let dir = tempfile::tempdir().unwrap();
    let frames = ten_frames(dir.path()).await;
    let (a, b) = (frames[8] as usize, frames[9] as usize + 56);
    edit(dir.path(), |bytes| bytes[a..b].fill(0));
    let wal = reopen(dir.path()).await;
    assert_eq!(common::all_entries(&wal, "t").await, want(0..8));
    assert_eq!(wal.stats().checksum_failures, 0);
    assert_eq!(wal.entry_count("t"), 8);
    assert_eq!(wal.append("t", "x").await.unwrap(), 8);
}

#[tokio::test]
async fn garbage_after_the_last_frame_is_not_taken_for_data() {
    let dir = tempfile::tempdir().unwrap();
    let frames = ten_frames(dir.path()).await;
    let end = frames[9] as usize + 56; // 44 + "t" + 8 bytes of payload, padded
    edit(dir.path(), |b| {
        for (i, x) in b[end..end + 3000].iter_mut().enumerate() {
            *x = (i * 7 + 1) as u8;
        }
    });
    let wal = reopen(dir.path()).await;
    assert_eq!(common::all_entries(&wal, "t").await, want(0..10));
    assert_eq!(wal.stats().checksum_failures, 1);
    assert_eq!(wal.append("t", "x").await.unwrap(), 10);
}

#[tokio::test]
async fn flipped_bit_in_the_middle_skips_one_frame_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let frames = ten_frames(dir.path()).await;
    let at = frames[4] as usize + FRAME_HEADER as usize + 1 + 3; // in the payload
    edit(dir.path(), |b| b[at] ^= 0x10);
    let wal = reopen(dir.path()).await;
    let expect: Vec<_> = want((0..10).filter(|&i| i != 4));
    assert_eq!(common::all_entries(&wal, "t").await, expect);
    assert_eq!(wal.stats().checksum_failures, 1);
    assert_eq!(wal.entry_count("t"), 9);
    // The damaged offset stays unused; reading at it yields the next entry.
    assert_eq!(wal.read_at("t", 4, 0).await.unwrap()[0].offset, 5);
    assert_eq!(wal.append("t", "x").await.unwrap(), 10);
    // Polling reads skip it too.
    let got: Vec<u64> = wal
        .batch_read("t", usize::MAX, true)
        .await
        .unwrap()
        .iter()
        .map(|e| e.offset)
        .collect();
    assert_eq!(got, vec![0, 1, 2, 3, 5, 6, 7, 8, 9, 10]);
}

#[tokio::test]
async fn a_damaged_length_field_skips_that_frame_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let frames = ten_frames(dir.path()).await;
    let at = frames[4] as usize + 9; // the payload length field, under the header checksum
    edit(dir.path(), |b| b[at] ^= 0x01);
    let wal = reopen(dir.path()).await;
    let expect: Vec<_> = want((0..10).filter(|&i| i != 4));
    assert_eq!(common::all_entries(&wal, "t").await, expect);
    assert_eq!(wal.stats().checksum_failures, 1);
    assert_eq!(wal.append("t", "x").await.unwrap(), 10);
}

#[tokio::test]
async fn a_damaged_segment_header_is_read_from_its_copy() {
    let dir = tempfile::tempdir().unwrap();
    ten_frames(dir.path()).await;
    edit(dir.path(), |b| b[20] ^= 0xff);
    let wal = reopen(dir.path()).await;
    assert_eq!(common::all_entries(&wal, "t").await, want(0..10));
    assert_eq!(wal.stats().checksum_failures, 1);
}

#[tokio::test]
async fn truncated_extended_and_foreign_files_never_stop_opening() {
    let dir = tempfile::tempdir().unwrap();
    ten_frames(dir.path()).await;
    // A file extended with garbage beyond its length.
    edit(dir.path(), |b| {
        b.extend((0..100_000u32).map(|i| (i * 31) as u8))
    });
    // A segment truncated to less than a header, and one that is pure garbage.
    std::fs::write(dir.path().join("1.seg"), b"WALRUS").unwrap();
    std::fs::write(dir.path().join("2.seg"), vec![0xA5u8; 70_000]).unwrap();
    // Files that are not segments are ignored.
    std::fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
    std::fs::create_dir(dir.path().join("3.seg.d")).unwrap();
    let wal = reopen(dir.path()).await;
    assert_eq!(common::all_entries(&wal, "t").await, want(0..10));
    assert_eq!(wal.append("t", "x").await.unwrap(), 10);
    wal.close().await.unwrap();
    assert!(
        dir.path().join("1.seg").exists(),
        "unreadable files are left in place"
    );
}

#[tokio::test]
async fn random_damage_never_panics_and_never_returns_wrong_data() {
    let mut seed: u64 = 0x2545F4914F6CDD1D;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    for i in 0..300u32 {
        if i % 7 == 0 {
            wal.append_batch("t", [format!("entry-{i}"), format!("entry-{}", i + 1)])
                .await
                .unwrap();
        }
    }
    wal.close().await.unwrap();
    let pristine = std::fs::read(&common::segments(dir.path())[0]).unwrap();
    let written: Vec<u64> = (0..300u32)
        .filter(|i| i % 7 == 0)
        .flat_map(|i| [i, i + 1])
        .map(u64::from)
        .collect();
    for round in 0..40 {
        let mut bytes = pristine.clone();
        for _ in 0..(1 + round % 5) {
            let at = (next() as usize) % 40_000;
            match next() % 3 {
                0 => bytes[at] ^= 1 << (next() % 8),
                1 => {
                    let end = (at + 64).min(bytes.len());
                    bytes[at..end].fill(0)
                }
                _ => bytes[at] = next() as u8,
            }
        }
        std::fs::write(&common::segments(dir.path())[0], &bytes).unwrap();
        let wal = reopen(dir.path()).await;
        let got = common::all_entries(&wal, "t").await;
        let mut last = None;
        for (offset, data) in got {
            assert!(last < Some(offset), "offsets strictly increase");
            last = Some(offset);
            let i = offset as usize;
            assert_eq!(
                data,
                format!("entry-{}", written[i]).into_bytes(),
                "round {round}"
            );
        }
        wal.close().await.unwrap();
        // Restore for the next round (this run's own writes are discarded with the file).
        for s in common::segments(dir.path()).iter().skip(1) {
            std::fs::remove_file(s).unwrap();
        }
    }
}

#[tokio::test]
async fn offsets_never_go_below_a_persisted_checkpoint_after_a_lost_tail() {
    let dir = tempfile::tempdir().unwrap();
    let frames = ten_frames(dir.path()).await;
    {
        let wal = reopen(dir.path()).await;
        // A registered consumer that reads nothing keeps the file from being reclaimed once
        // the default consumer has consumed everything (registration is durable once the
        // stream yields).
        let mut laggard = wal.subscribe_as("t", "laggard").unwrap();
        futures::StreamExt::next(&mut laggard)
            .await
            .unwrap()
            .unwrap();
        drop(laggard);
        for i in 0..10 {
            assert_eq!(wal.read_next("t", true).await.unwrap().unwrap().offset, i);
        }
        wal.close().await.unwrap();
    }
    // A power failure takes the unsynced tail (entries 5..10) but the checkpoint (10) is durable.
    let from = frames[5] as usize;
    edit(dir.path(), |b| b[from..from + 4096].fill(0));
    let wal = reopen(dir.path()).await;
    assert_eq!(common::all_entries(&wal, "t").await, want(0..5));
    assert_eq!(wal.entry_count("t"), 0);
    // New entries continue past the checkpoint, so the consumer sees them instead of skipping.
    assert_eq!(wal.append("t", "new").await.unwrap(), 10);
    let e = wal.read_next("t", true).await.unwrap().unwrap();
    assert_eq!((e.offset, &e.data[..]), (10, &b"new"[..]));
}

#[tokio::test]
async fn segments_whose_creation_was_cut_short_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    ten_frames(dir.path()).await;
    // Newer than every file with data, as a crash while making the next one leaves them.
    let newest: u64 = common::segments(dir.path())
        .iter()
        .filter_map(|p| p.file_stem()?.to_str()?.parse().ok())
        .max()
        .unwrap();
    let (a, b) = (newest + 1, newest + 2);
    std::fs::write(dir.path().join(format!("{a}.seg")), b"").unwrap();
    std::fs::write(dir.path().join(format!("{b}.seg")), vec![0u8; 64 << 10]).unwrap();
    let wal = reopen(dir.path()).await;
    assert_eq!(wal.stats().checksum_failures, 0);
    assert!(!dir.path().join(format!("{a}.seg")).exists());
    assert!(!dir.path().join(format!("{b}.seg")).exists());
    assert_eq!(common::all_entries(&wal, "t").await, want(0..10));
}

#[tokio::test]
async fn a_segment_emptied_or_cut_to_its_header_while_down_is_kept_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    ten_frames(dir.path()).await;
    let seg = common::segments(dir.path())[0].clone();
    // Older than the data a later lifetime writes: not a file whose creation was cut short.
    let wal = reopen(dir.path()).await;
    wal.append("t", "entry-10").await.unwrap();
    wal.close().await.unwrap();
    for len in [0u64, 4096] {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len)
            .unwrap();
        let wal = reopen(dir.path()).await;
        assert!(seg.exists(), "cut to {len}: left for a human");
        assert!(wal.stats().checksum_failures >= 1, "cut to {len}: counted");
        // The later entry is still there, and offsets are not handed out again below it.
        assert_eq!(common::all_entries_from(&wal, "t", 10).await, want(10..11));
        wal.close().await.unwrap();
    }
}

#[tokio::test]
async fn a_damaged_frame_header_of_one_topic_does_not_hide_the_next_frames() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    wal.append("a", "a0").await.unwrap(); // the first frame, at 4096
    wal.append("b", "b0").await.unwrap(); // the next one
    wal.close().await.unwrap();
    edit(dir.path(), |b| b[PAGE as usize + 20] ^= 0x40); // a's first offset
    let wal = reopen(dir.path()).await;
    assert!(common::all_entries(&wal, "a").await.is_empty());
    assert_eq!(
        common::all_entries(&wal, "b").await,
        vec![(0, b"b0".to_vec())]
    );
    assert_eq!(wal.stats().checksum_failures, 1);
}

#[tokio::test]
async fn a_file_of_pure_garbage_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    ten_frames(dir.path()).await;
    std::fs::write(dir.path().join("2.seg"), vec![0xA5u8; 70_000]).unwrap();
    let wal = reopen(dir.path()).await;
    assert_eq!(common::all_entries(&wal, "t").await, want(0..10));
    assert!(wal.stats().checksum_failures >= 1, "{:?}", wal.stats());
    wal.close().await.unwrap();
}
