//! Format v3, the shared commit stream: frames of many topics interleaved in one file, torn
//! tails in the shared stream, many topics across restarts, entry timestamps and
//! `offset_for_time`, and refusal of a directory written in an older format.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use futures::StreamExt;
use walrus_async::{Error, FsyncSchedule, Walrus};

/// Entries of every topic, read back with `read_at`.
async fn dump(wal: &Walrus) -> BTreeMap<String, Vec<(u64, Vec<u8>)>> {
    let mut out = BTreeMap::new();
    for t in wal.topics() {
        out.insert(t.clone(), common::all_entries(wal, &t).await);
    }
    out
}

#[tokio::test]
async fn interleaved_frames_of_many_topics_recover_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    // 32 producers, each appending to topics drawn from 50, concurrently: their appends land
    // in shared groups, one frame per topic per group, interleaved in the stream.
    let mut tasks = Vec::new();
    for p in 0..32u64 {
        let wal = wal.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(p);
            for i in 0..100u64 {
                let topic = format!("topic-{}", rng.u32(0..50));
                let data = format!("{p}:{i}:{}", "x".repeat(rng.usize(0..300)));
                if i % 10 == 0 {
                    wal.append_batch(&topic, [data.clone(), data + "+"])
                        .await
                        .unwrap();
                } else {
                    wal.append(&topic, data).await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let before = dump(&wal).await;
    assert_eq!(before.len(), 50);
    assert!(wal.stats().segments > 1, "the stream spans several files");
    let per_group = wal.stats().appends as f64 / wal.stats().write_submissions as f64;
    assert!(per_group > 1.0, "appends of several topics share writes");
    wal.close().await.unwrap();
    for _ in 0..2 {
        let wal = common::small(dir.path()).open().await.unwrap();
        assert_eq!(dump(&wal).await, before);
        assert_eq!(wal.stats().checksum_failures, 0);
        wal.close().await.unwrap();
    }
    // Offsets are dense per topic and each producer's entries keep their order in a topic.
    for (topic, entries) in &before {
        let offsets: Vec<u64> = entries.iter().map(|e| e.0).collect();
        assert_eq!(
            offsets,
            (0..entries.len() as u64).collect::<Vec<_>>(),
            "{topic}"
        );
        let mut last: BTreeMap<u64, u64> = BTreeMap::new();
        for (_, data) in entries {
            let s = String::from_utf8_lossy(data);
            let mut parts = s.split(':');
            let p: u64 = parts.next().unwrap().parse().unwrap();
            let i: u64 = parts.next().unwrap().parse().unwrap();
            assert!(
                last.get(&p).is_none_or(|&l| l <= i),
                "{topic}: {p} went back"
            );
            last.insert(p, i);
        }
    }
}

#[tokio::test]
async fn a_torn_tail_in_the_shared_stream_costs_only_the_torn_frame() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    for i in 0..5u64 {
        for t in ["a", "b", "c"] {
            assert_eq!(wal.append(t, format!("{t}{i}")).await.unwrap(), i);
        }
    }
    wal.close().await.unwrap();
    let seg = common::segments(dir.path())[0].clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    let frames = common::frame_positions(&bytes, None);
    assert_eq!(frames.len(), 15, "one frame per append, in append order");
    // Tear the last frame (c4) inside its payload, as a crash in the middle of the write.
    let last = frames[14];
    let p = common::payload_start(&bytes, last) as usize;
    bytes[p + 1..p + 3].fill(0);
    std::fs::write(&seg, &bytes).unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    assert_eq!(wal.stats().checksum_failures, 1);
    for t in ["a", "b"] {
        assert_eq!(common::all_entries(&wal, t).await.len(), 5, "{t}");
    }
    let c = common::all_entries(&wal, "c").await;
    assert_eq!(c.iter().map(|e| e.0).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    // The torn entry's offset is handed out again.
    assert_eq!(wal.append("c", "c4 again").await.unwrap(), 4);
    wal.close().await.unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    assert_eq!(common::all_entries(&wal, "c").await[4].1, b"c4 again");
    wal.close().await.unwrap();
}

#[tokio::test]
async fn damage_in_the_middle_of_the_stream_skips_one_frame_of_one_topic() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    for i in 0..4u64 {
        for t in ["a", "b"] {
            wal.append(t, format!("{t}{i}")).await.unwrap();
        }
    }
    wal.close().await.unwrap();
    let seg = common::segments(dir.path())[0].clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    let frames = common::frame_positions(&bytes, None);
    // b1 (the 4th frame): flip a bit of its payload.
    let p = common::payload_start(&bytes, frames[3]) as usize;
    bytes[p + 1] ^= 0x20;
    std::fs::write(&seg, &bytes).unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    assert_eq!(wal.stats().checksum_failures, 1);
    let offsets = |v: Vec<(u64, Vec<u8>)>| v.into_iter().map(|e| e.0).collect::<Vec<_>>();
    assert_eq!(offsets(common::all_entries(&wal, "a").await), [0, 1, 2, 3]);
    // b's chain passes through the damaged frame: its reader walks the segment instead.
    assert_eq!(offsets(common::all_entries(&wal, "b").await), [0, 2, 3]);
    assert_eq!(wal.read_at("b", 1, 0).await.unwrap()[0].offset, 2);
    assert_eq!(wal.append("b", "b4").await.unwrap(), 4);
    wal.close().await.unwrap();
}

/// An older copy of a segment (made by hand, under a newer name) whose original later lost
/// its first frame: the copy must not stand in for the original, whose later entries would
/// then be dropped and their offsets handed out again.
#[tokio::test]
async fn a_stale_copy_of_a_segment_never_shadows_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    for i in 0..10u64 {
        wal.append("t", format!("e{i}")).await.unwrap();
    }
    wal.close().await.unwrap();
    let seg = common::segments(dir.path())[0].clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    let frames = common::frame_positions(&bytes, None);
    // The copy: as the file was after 5 appends.
    let mut copy = bytes.clone();
    copy[frames[5] as usize..].fill(0);
    let name: u64 = seg.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    std::fs::write(dir.path().join(format!("{}.seg", name + 1000)), &copy).unwrap();
    // The original loses its first frame.
    let p = common::payload_start(&bytes, frames[0]) as usize;
    bytes[p] ^= 0x20;
    std::fs::write(&seg, &bytes).unwrap();

    let wal = common::small(dir.path()).open().await.unwrap();
    // Offset 0 was lost with the original's first frame.
    let offsets: Vec<u64> = common::all_entries_from(&wal, "t", 1)
        .await
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(offsets, (1..10).collect::<Vec<_>>());
    assert_eq!(wal.entry_count("t"), 9);
    assert_eq!(
        wal.append("t", "e10").await.unwrap(),
        10,
        "offsets handed out again"
    );
    wal.close().await.unwrap();
}

/// `0123.seg` is not a second name for `123.seg`: only names the log writes are segments.
#[tokio::test]
async fn a_segment_name_with_a_leading_zero_is_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    wal.append("t", "x").await.unwrap();
    wal.close().await.unwrap();
    let seg = common::segments(dir.path())[0].clone();
    let alias = dir
        .path()
        .join(format!("0{}", seg.file_name().unwrap().to_str().unwrap()));
    std::fs::rename(&seg, &alias).unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    assert_eq!(wal.entry_count("t"), 0);
    wal.close().await.unwrap();
    assert!(alias.exists(), "left alone");
}

/// Bytes the file system allocated for the segment files.
fn allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    common::segments(dir)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().blocks() * 512)
        .sum()
}

#[tokio::test]
async fn many_topics_share_one_file_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        Walrus::builder()
            .data_dir(dir.path())
            .segment_bytes(4 << 20)
            .fsync(FsyncSchedule::NoFsync)
            .open()
    };
    let wal = open().await.unwrap();
    let n = 5000u64;
    let mut tasks = Vec::new();
    for p in 0..16 {
        let wal = wal.clone();
        tasks.push(tokio::spawn(async move {
            for t in (p..n).step_by(16) {
                assert_eq!(
                    wal.append(&format!("t{t}"), vec![t as u8; 100])
                        .await
                        .unwrap(),
                    0
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    wal.close().await.unwrap();
    // 5000 entries of ~150 bytes on disk: one 4 MiB file, not a block per topic.
    assert_eq!(common::segments(dir.path()).len(), 1);
    assert!(allocated(dir.path()) <= 4 << 20);
    let wal = open().await.unwrap();
    assert_eq!(wal.topics().len(), n as usize);
    for t in (0..n).step_by(97) {
        let got = wal.read_at(&format!("t{t}"), 0, usize::MAX).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].data[..], &vec![t as u8; 100][..]);
    }
    // Each goes on where it stopped; a new topic starts at 0.
    assert_eq!(wal.append("t42", "more").await.unwrap(), 1);
    assert_eq!(wal.append("new", "first").await.unwrap(), 0);
    wal.close().await.unwrap();
    let wal = open().await.unwrap();
    assert_eq!(wal.topics().len(), n as usize + 1);
    assert_eq!(common::all_entries(&wal, "t42").await.len(), 2);
    wal.close().await.unwrap();
}

/// The offset of the first entry with a timestamp at or after `t`, from a read-back.
fn expected(entries: &[(u64, u64)], t: u64) -> Option<u64> {
    entries.iter().find(|e| e.1 >= t).map(|e| e.0)
}

async fn offsets_and_times(wal: &Walrus, topic: &str) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut next = 0;
    loop {
        let got = wal.read_at(topic, next, 1 << 20).await.unwrap();
        let Some(last) = got.last() else { return out };
        next = last.offset + 1;
        out.extend(got.iter().map(|e| (e.offset, e.timestamp)));
    }
}

#[tokio::test]
async fn entry_times_and_offset_for_time_across_segments_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // Enough appends, one at a time, to span several files and many milliseconds.
    for i in 0..1500u64 {
        wal.append("t", vec![i as u8; 600]).await.unwrap();
        if i % 3 == 0 {
            wal.append("other", "x").await.unwrap();
        }
    }
    assert!(wal.stats().segments > 2);
    let entries = offsets_and_times(&wal, "t").await;
    assert_eq!(entries.len(), 1500);
    assert!(entries.first().unwrap().1 >= start);
    assert!(
        entries.windows(2).all(|w| w[0].1 <= w[1].1),
        "times never go back"
    );
    let distinct: std::collections::BTreeSet<u64> = entries.iter().map(|e| e.1).collect();
    assert!(
        distinct.len() > 3,
        "the appends spread over several milliseconds"
    );
    let check = |wal: &Walrus, entries: &[(u64, u64)]| {
        for &t in &distinct {
            for q in [t.saturating_sub(1), t, t + 1] {
                assert_eq!(
                    wal.offset_for_time("t", q).unwrap(),
                    expected(entries, q),
                    "time {q}"
                );
            }
        }
        assert_eq!(wal.offset_for_time("t", 0).unwrap(), Some(entries[0].0));
        assert_eq!(wal.offset_for_time("t", u64::MAX).unwrap(), None);
        assert_eq!(wal.offset_for_time("unknown", 0).unwrap(), None);
    };
    check(&wal, &entries);
    wal.close().await.unwrap();

    let wal = common::small(dir.path()).open().await.unwrap();
    assert_eq!(
        offsets_and_times(&wal, "t").await,
        entries,
        "times survive a restart"
    );
    check(&wal, &entries);
    // New entries are never stamped before the ones already there.
    let o = wal.append("t", "after restart").await.unwrap();
    let e = wal.read_at("t", o, 0).await.unwrap();
    assert!(e[0].timestamp >= entries.last().unwrap().1);
    assert!(wal.offset_for_time("t", e[0].timestamp).unwrap().unwrap() <= o);

    // A stream positioned by time.
    let mid = entries[700].1;
    let mut stream = wal.subscribe_as("t", "by-time").unwrap();
    stream.seek_time(mid).unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(Some(first.offset), expected(&entries, mid));
    stream.seek_time(u64::MAX).unwrap();
    wal.append("t", "newest").await.unwrap();
    assert_eq!(&stream.next().await.unwrap().unwrap().data[..], b"newest");
    drop(stream);
    wal.close().await.unwrap();
    assert!(matches!(wal.offset_for_time("t", 0), Err(Error::Closed)));
}

#[tokio::test]
async fn offset_for_time_answers_from_what_retention_kept() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path())
        .retention_bytes(600 << 10)
        .open()
        .await
        .unwrap();
    for i in 0..3000u64 {
        wal.append("t", vec![i as u8; 600]).await.unwrap();
    }
    wal.reclaim().await.unwrap();
    assert!(wal.stats().segments_deleted > 0);
    let oldest = wal.read_at("t", 0, 0).await.unwrap_err();
    let Error::Truncated { oldest, .. } = oldest else {
        panic!("{oldest}")
    };
    assert_eq!(wal.offset_for_time("t", 0).unwrap(), Some(oldest));
    wal.close().await.unwrap();
}

/// The 56-byte segment header of an older format version, with a valid checksum.
fn old_header(version: u16) -> Vec<u8> {
    let mut h = vec![0u8; 56];
    h[0..8].copy_from_slice(b"WALRUSAS");
    h[8..10].copy_from_slice(&version.to_le_bytes());
    h[16..24].copy_from_slice(&7u64.to_le_bytes());
    h[24..32].copy_from_slice(&1_700_000_000_000u64.to_le_bytes());
    h[32..40].copy_from_slice(&(64u64 << 10).to_le_bytes());
    h[40..48].copy_from_slice(&9u64.to_le_bytes());
    let crc = crc32fast::hash(&h[0..48]);
    h[48..52].copy_from_slice(&crc.to_le_bytes());
    h
}

fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

/// A version-1 header: no log id, its checksum over bytes 0..40 at 40.
fn v1_header() -> Vec<u8> {
    let mut h = vec![0u8; 48];
    h[0..8].copy_from_slice(b"WALRUSAS");
    h[8..10].copy_from_slice(&1u16.to_le_bytes());
    h[16..24].copy_from_slice(&7u64.to_le_bytes());
    h[24..32].copy_from_slice(&1_700_000_000_000u64.to_le_bytes());
    h[32..40].copy_from_slice(&(64u64 << 10).to_le_bytes());
    let crc = crc32fast::hash(&h[0..40]);
    h[40..44].copy_from_slice(&crc.to_le_bytes());
    h
}

#[tokio::test]
async fn a_version_1_directory_is_refused_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut seg = v1_header();
    seg.resize(64 << 10, 0);
    std::fs::write(dir.path().join("1700000000000.seg"), &seg).unwrap();
    let before = snapshot(dir.path());
    match Walrus::open(dir.path()).await.unwrap_err() {
        Error::UnsupportedFormat {
            found: 1,
            supported: 3,
            ..
        } => {}
        e => panic!("{e}"),
    }
    assert_eq!(snapshot(dir.path()), before);
}

#[tokio::test]
async fn a_directory_of_an_older_format_is_refused_and_left_untouched() {
    for version in [1u16, 2] {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = old_header(version);
        seg.resize(64 << 10, 0);
        seg[4096..4100].copy_from_slice(b"WBLK");
        std::fs::write(dir.path().join("1700000000000.seg"), &seg).unwrap();
        std::fs::write(dir.path().join("checkpoints"), b"").unwrap();
        let before = snapshot(dir.path());
        let err = Walrus::open(dir.path()).await.unwrap_err();
        match &err {
            Error::UnsupportedFormat {
                path,
                found,
                supported,
            } => {
                assert_eq!((*found, *supported), (version, 3));
                assert!(path.ends_with("1700000000000.seg"));
            }
            e => panic!("{e}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&format!("version {version}")) && msg.contains("version 3"));
        assert_eq!(
            snapshot(dir.path()),
            before,
            "nothing in the directory changed"
        );
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Waits until the wall clock reads `ms` (this test is about wall-clock age: nothing to await).
async fn until_ms(ms: u64) {
    let now = now_ms();
    if ms > now {
        tokio::time::sleep(std::time::Duration::from_millis(ms - now)).await;
    }
}

#[tokio::test]
async fn retention_age_goes_by_the_newest_entry_in_a_file_not_its_creation() {
    let dir = tempfile::tempdir().unwrap();
    let age = 2_000u64;
    let wal = Walrus::builder()
        .data_dir(dir.path())
        .segment_bytes(64 << 10)
        .fsync(FsyncSchedule::NoFsync)
        .retention_age(std::time::Duration::from_millis(age))
        .open()
        .await
        .unwrap();
    // 1000-byte entries: 58 frames fit in a 64 KiB file after its header page.
    let created = now_ms();
    for _ in 0..10 {
        wal.append("t", vec![1u8; 1000]).await.unwrap();
    }
    until_ms(created + 1_200).await;
    for _ in 0..48 {
        wal.append("t", vec![2u8; 1000]).await.unwrap();
    }
    wal.append("t", vec![3u8; 1000]).await.unwrap(); // the next file
    assert_eq!(wal.stats().segments, 2);
    let newest = wal.read_at("t", 57, 0).await.unwrap()[0].timestamp;
    assert!(newest >= created + 1_200);
    // The first file was made more than `age` ago, but its newest entry was not: kept.
    until_ms(created + age + 100).await;
    assert!(
        now_ms() < newest + age,
        "the machine stalled past the window this test needs"
    );
    assert_eq!(wal.reclaim().await.unwrap(), 0);
    assert_eq!(wal.read_at("t", 0, 0).await.unwrap()[0].offset, 0);
    // Once its newest entry is older than `age`, it goes.
    until_ms(newest + age + 100).await;
    assert_eq!(wal.reclaim().await.unwrap(), 1);
    assert!(matches!(
        wal.read_at("t", 0, 0).await,
        Err(Error::Truncated { oldest: 58, .. })
    ));
    wal.close().await.unwrap();
}

#[tokio::test]
async fn random_reads_anywhere_in_long_spans_find_their_entry() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Walrus::builder()
        .data_dir(dir.path())
        .segment_bytes(1 << 20)
        .open()
        .await
        .unwrap();
    // One frame per append, two topics interleaved: spans of hundreds of frames, walked
    // through their samples.
    for i in 0..3000u64 {
        wal.append("a", format!("a{i}")).await.unwrap();
        if i % 3 == 0 {
            wal.append("b", format!("b{i}")).await.unwrap();
        }
    }
    for reopen in [false, true] {
        let wal = if reopen {
            Walrus::builder()
                .data_dir(dir.path())
                .segment_bytes(1 << 20)
                .open()
                .await
                .unwrap()
        } else {
            wal.clone()
        };
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..500 {
            let o = rng.u64(0..3000);
            let got = wal.read_at("a", o, 0).await.unwrap();
            assert_eq!(
                (got[0].offset, &got[0].data[..]),
                (o, format!("a{o}").as_bytes())
            );
        }
        // Paging through everything in small pages returns each entry once, in order.
        let mut next = 0;
        while next < 3000 {
            let got = wal.read_at("a", next, 200).await.unwrap();
            for e in &got {
                assert_eq!(e.offset, next);
                next += 1;
            }
        }
        wal.close().await.unwrap();
    }
}
