//! Hostile inputs for the decoders, run through the same entry points as the fuzz targets in
//! `fuzz/` (`walrus_async::fuzzing`, not public API) and through the public API. Inputs the
//! fuzzers found go here too, with what they broke. Needs `--features fuzzing`.
//!
//! The helpers below build the on-disk format of `docs/FORMAT.md` by hand, with valid
//! checksums, so each input reaches the check it is about instead of failing the CRC first.
#![cfg(feature = "fuzzing")]

use std::path::Path;

use walrus_async::fuzzing::{Summary, fuzz_checkpoints, fuzz_frames, fuzz_segment};
use walrus_async::{IoBackend, MIN_SEGMENT_BYTES, Walrus};

const PAGE: usize = 4096;

fn block_salt(segment_id: u64, block_pos: u64) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&segment_id.to_le_bytes());
    h.update(&block_pos.to_le_bytes());
    h.finalize()
}

/// A frame header and payload as written: `count` and `payload` are taken as given.
fn frame(salt: u32, first_offset: u64, count: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 24];
    f[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    f[8..16].copy_from_slice(&first_offset.to_le_bytes());
    f[16..20].copy_from_slice(&count.to_le_bytes());
    f[20] = 1;
    f.extend_from_slice(payload);
    let mut h = crc32fast::Hasher::new_with_initial(salt);
    h.update(&f[4..]);
    let crc = h.finalize();
    f[0..4].copy_from_slice(&crc.to_le_bytes());
    f
}

/// A frame with well-formed entries.
fn entries_frame(salt: u32, first_offset: u64, entries: &[&[u8]]) -> Vec<u8> {
    let mut payload = Vec::new();
    for e in entries {
        let mut n = e.len();
        while n >= 0x80 {
            payload.push(n as u8 | 0x80);
            n >>= 7;
        }
        payload.push(n as u8);
        payload.extend_from_slice(e);
    }
    frame(salt, first_offset, entries.len() as u32, &payload)
}

/// `fuzz_frames` input: parameters (salt, expected offset, position, cut) then the block.
fn frames_input(salt: u32, expected: u64, pos: u16, cut: u16, block: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&salt.to_le_bytes());
    v.extend_from_slice(&expected.to_le_bytes());
    v.extend_from_slice(&pos.to_le_bytes());
    v.extend_from_slice(&cut.to_le_bytes());
    v.extend_from_slice(block);
    v
}

/// The log id every hand-made segment carries (a directory without a `LOG_ID` file adopts the
/// id of its newest segment).
const LOG_ID: u64 = 0x1D;

fn segment_header(segment_id: u64, len: u64) -> Vec<u8> {
    let mut h = vec![0u8; 56];
    h[0..8].copy_from_slice(b"WALRUSAS");
    h[8..10].copy_from_slice(&2u16.to_le_bytes());
    h[16..24].copy_from_slice(&segment_id.to_le_bytes());
    h[24..32].copy_from_slice(&1000u64.to_le_bytes());
    h[32..40].copy_from_slice(&len.to_le_bytes());
    h[40..48].copy_from_slice(&LOG_ID.to_le_bytes());
    let crc = crc32fast::hash(&h[0..48]);
    h[48..52].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A block header at `pos`; `topic_len` is written as given (it may disagree with `topic`).
fn block_header(
    segment_id: u64,
    pos: u64,
    len: u64,
    first_offset: u64,
    topic_len: u16,
    topic: &[u8],
) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"WBLK");
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&topic_len.to_le_bytes());
    b.extend_from_slice(&segment_id.to_le_bytes());
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(&first_offset.to_le_bytes());
    let mut h = crc32fast::Hasher::new_with_initial(block_salt(segment_id, pos));
    h.update(&b[0..32]);
    h.update(topic);
    b.extend_from_slice(&h.finalize().to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(topic);
    b.resize((40 + topic.len() + 7) & !7, 0);
    b
}

/// A segment image of `pages` pages with a valid header and `blocks` as `(pos, bytes)`.
fn segment(segment_id: u64, pages: usize, blocks: &[(usize, Vec<u8>)]) -> Vec<u8> {
    let mut img = vec![0u8; pages * PAGE];
    img[..56].copy_from_slice(&segment_header(segment_id, (pages * PAGE) as u64));
    for (pos, b) in blocks {
        img[*pos..*pos + b.len()].copy_from_slice(b);
    }
    img
}

/// One block of topic `topic` at page 1 holding `frames` (encoded with the block's salt).
fn one_block_segment(
    segment_id: u64,
    first_offset: u64,
    topic: &str,
    frames: &[(u64, &[&[u8]])],
) -> Vec<u8> {
    let pos = PAGE as u64;
    let mut block = block_header(
        segment_id,
        pos,
        PAGE as u64,
        first_offset,
        topic.len() as u16,
        topic.as_bytes(),
    );
    for (off, entries) in frames {
        block.extend(entries_frame(block_salt(segment_id, pos), *off, entries));
    }
    segment(segment_id, 4, &[(PAGE, block)])
}

/// A checkpoint record; `body_len`, `topic_len` and `consumer_len` are written as given.
fn checkpoint_record(
    body_len: u16,
    op: u8,
    topic_len: u8,
    consumer_len: u8,
    rest: &[u8],
) -> Vec<u8> {
    let mut r = vec![0u8; 4];
    r.extend_from_slice(&body_len.to_le_bytes());
    r.extend_from_slice(&[op, topic_len, consumer_len]);
    r.extend_from_slice(rest);
    let crc = crc32fast::hash(&r[4..]);
    r[0..4].copy_from_slice(&crc.to_le_bytes());
    r
}

fn set_record(topic: &str, consumer: &str, offset: u64) -> Vec<u8> {
    let mut rest = Vec::new();
    rest.extend_from_slice(topic.as_bytes());
    rest.extend_from_slice(consumer.as_bytes());
    rest.extend_from_slice(&offset.to_le_bytes());
    checkpoint_record(
        (3 + rest.len()) as u16,
        1,
        topic.len() as u8,
        consumer.len() as u8,
        &rest,
    )
}

fn frames(frames: u64, entries: u64) -> Summary {
    Summary {
        frames,
        entries,
        ..Summary::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Frames

#[test]
fn well_formed_frames_decode() {
    let salt = 0xdead_beef;
    let mut block = entries_frame(salt, 5, &[b"a", b"", &[9; 300]]);
    block.extend(entries_frame(salt, 8, &[b"zz"]));
    assert_eq!(
        fuzz_frames(&frames_input(salt, 5, 0, 0, &block)),
        frames(2, 4)
    );
    // Expecting another offset, the first frame is damage stepped over (the length in its
    // header leads to a valid frame); expecting one past both, nothing is taken.
    assert_eq!(
        fuzz_frames(&frames_input(salt, 6, 0, 0, &block)),
        frames(1, 1)
    );
    assert_eq!(
        fuzz_frames(&frames_input(salt, 9, 0, 0, &block)),
        frames(0, 0)
    );
    // With the salt of another block: nothing.
    assert_eq!(fuzz_frames(&frames_input(1, 5, 0, 0, &block)), frames(0, 0));
}

#[test]
fn frame_claiming_a_huge_payload_is_rejected() {
    let mut f = frame(0, 0, 1, b"\x01x");
    f[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    for cut in [0, u16::MAX] {
        assert_eq!(fuzz_frames(&frames_input(0, 0, 0, cut, &f)), frames(0, 0));
    }
}

#[test]
fn varint_overflow_in_a_checksummed_frame_is_rejected() {
    for payload in [
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0x0f][..], // six bytes: longer than a u32 varint
        &[0xff, 0xff, 0xff, 0xff, 0x1f],           // five bytes, value above u32::MAX
        &[0x80],                                   // truncated
    ] {
        let f = frame(7, 0, 1, payload);
        assert_eq!(fuzz_frames(&frames_input(7, 0, 0, 0, &f)), frames(0, 0));
    }
}

#[test]
fn frame_fields_that_cannot_be_right_are_rejected() {
    let bad = [
        frame(0, 0, 1000, &[0]),            // more entries than the payload holds
        frame(0, 0, 1, &[5, b'a']),         // an entry past the end of the payload
        frame(0, 0, 1, &[1, b'a', b'b']),   // bytes left over after the last entry
        frame(0, 0, 0, &[]),                // no entries
        frame(0, u64::MAX, 1, &[1, b'a']),  // offsets past u64::MAX
        frame(0, u64::MAX - 1, 2, &[0, 0]), // same, by one
    ];
    for f in &bad {
        let expected = u64::from_le_bytes(f[8..16].try_into().unwrap());
        assert_eq!(
            fuzz_frames(&frames_input(0, expected, 0, 0, f)),
            frames(0, 0)
        );
    }
    // The last offset that still fits is fine.
    let f = frame(0, u64::MAX - 1, 1, &[1, b'a']);
    assert_eq!(
        fuzz_frames(&frames_input(0, u64::MAX - 1, 0, 0, &f)),
        frames(1, 1)
    );
}

#[test]
fn non_minimal_varints_are_accepted_as_written() {
    let f = frame(3, 0, 2, &[0x80, 0x00, 0x81, 0x00, b'q']);
    assert_eq!(fuzz_frames(&frames_input(3, 0, 0, 0, &f)), frames(1, 2));
}

#[test]
fn scan_positions_and_limits_out_of_range_do_not_panic() {
    let f = entries_frame(0, 0, &[b"abc"]);
    for (pos, cut) in [
        (0, 0),
        (u16::MAX, 0),
        (1, 0),
        (0, 1),
        (0, u16::MAX),
        (u16::MAX, u16::MAX),
    ] {
        fuzz_frames(&frames_input(0, 0, pos, cut, &f));
    }
    for len in 0..40 {
        fuzz_frames(&vec![0xff; len]);
        fuzz_frames(&vec![0; len]);
    }
}

// ---------------------------------------------------------------------------------------------
// Segments

#[test]
fn well_formed_segment_scans() {
    let img = one_block_segment(42, 10, "orders", &[(10, &[b"a", b"b"]), (12, &[b"c"])]);
    let s = fuzz_segment(&img);
    assert_eq!((s.blocks, s.frames, s.entries, s.failures), (1, 2, 3, 0));
}

#[test]
fn block_header_claiming_a_length_past_the_end_is_read_to_the_end() {
    // What a file cut short looks like: the block is kept, counted once as damage, and read
    // up to the end of the file.
    for len in [8 * PAGE as u64, 1 << 40, u64::MAX - (PAGE as u64 - 1)] {
        let b = block_header(1, PAGE as u64, len, 0, 1, b"t");
        let s = fuzz_segment(&segment(1, 4, &[(PAGE, b)]));
        assert_eq!((s.blocks, s.failures), (1, 1), "len {len}");
    }
}

#[test]
fn block_header_fields_that_cannot_be_right_are_damage() {
    let p = PAGE as u64;
    let bad = [
        block_header(1, p, p, 0, 0, b""),            // zero-length topic
        block_header(1, p, p, 0, 256, &[b'x'; 256]), // topic longer than 255 bytes
        block_header(1, p, 0, 0, 1, b"t"),           // zero-length block
        block_header(1, p, p + 1, 0, 1, b"t"),       // length not a page multiple
        block_header(1, p, p, 0, 2, b"\xff\xfe"),    // topic not UTF-8
        block_header(1, p, p, 0, 2, b"a\0"),         // topic with a NUL
        block_header(1, 2 * p, p, 0, 1, b"t"),       // written for another position
        block_header(2, p, p, 0, 1, b"t"),           // from another segment
    ];
    for (i, b) in bad.into_iter().enumerate() {
        let s = fuzz_segment(&segment(1, 4, &[(PAGE, b)]));
        assert_eq!((s.blocks, s.failures), (0, 1), "case {i}");
    }
}

#[test]
fn topic_length_beyond_the_image_does_not_panic() {
    let mut b = block_header(1, PAGE as u64, PAGE as u64, 0, 255, &[b'x'; 255]);
    b.truncate(60);
    let mut img = segment(1, 1, &[]);
    img.extend_from_slice(&b);
    fuzz_segment(&img);
    fuzz_segment(&b);
}

#[test]
fn degenerate_segment_images_hold_nothing() {
    let zero = Summary::default();
    for img in [
        Vec::new(),
        vec![0; 10],
        vec![0; 16 * PAGE],
        segment(9, 1, &[]),
        segment(9, 16, &[]),
    ] {
        assert_eq!(fuzz_segment(&img), zero);
    }
    // A damaged header is damage; the blocks behind it are still found.
    let mut img = one_block_segment(42, 0, "t", &[(0, &[b"a"])]);
    img[3] ^= 1;
    let s = fuzz_segment(&img);
    assert_eq!((s.blocks, s.entries, s.failures), (1, 1, 1));
}

// ---------------------------------------------------------------------------------------------
// Checkpoints

#[test]
fn checkpoint_records_decode() {
    let mut b = set_record("orders", "", 5);
    b.extend(set_record("orders", "billing", 9));
    b.extend([0; 16]);
    let s = fuzz_checkpoints(&b);
    assert_eq!((s.checkpoints, s.damaged), (2, false));
}

#[test]
fn checkpoint_record_with_body_len_0xffff_is_damage() {
    // Claimed but not there.
    let mut short = set_record("t", "", 1);
    short[4..6].copy_from_slice(&0xffffu16.to_le_bytes());
    // There, checksummed, but not a record of that length.
    let mut rest = vec![b't'];
    rest.resize(0xffff - 3, 0x55);
    let long = checkpoint_record(0xffff, 1, 1, 0, &rest);
    for b in [short, long] {
        let mut with_good = set_record("good", "", 3);
        with_good.extend_from_slice(&b);
        let s = fuzz_checkpoints(&with_good);
        assert_eq!((s.checkpoints, s.damaged), (1, true));
    }
}

#[test]
fn checkpoint_record_fields_that_cannot_be_right_are_damage() {
    let off = 7u64.to_le_bytes();
    let bad = [
        checkpoint_record(3 + 8, 1, 0, 0, &off), // zero-length topic
        {
            let mut rest = b"t".to_vec();
            rest.extend_from_slice(&off);
            checkpoint_record(3 + 9, 9, 1, 0, &rest) // unknown op
        },
        {
            let mut rest = b"\xff".to_vec();
            rest.extend_from_slice(&off);
            checkpoint_record(3 + 9, 1, 1, 0, &rest) // topic not UTF-8
        },
        {
            let mut rest = b"tc".to_vec();
            rest.extend_from_slice(&off);
            checkpoint_record(3 + 10, 1, 1, 5, &rest) // lengths disagree with the body
        },
        checkpoint_record(0, 0, 0, 0, &[]), // empty body: cut to the header
    ];
    for (i, b) in bad.iter().enumerate() {
        let s = fuzz_checkpoints(b);
        assert_eq!((s.checkpoints, s.damaged), (0, true), "case {i}");
    }
}

// ---------------------------------------------------------------------------------------------
// Whole directories through the public API

async fn open(dir: &Path) -> walrus_async::Result<Walrus> {
    Walrus::builder()
        .data_dir(dir)
        .io_backend(IoBackend::Blocking)
        .segment_bytes(MIN_SEGMENT_BYTES)
        .block_bytes(PAGE as u64)
        .open()
        .await
}

/// Writes `files` into a fresh directory, opens it and returns every topic's entries.
async fn recover(files: &[(&str, Vec<u8>)]) -> (tempfile::TempDir, Walrus) {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let wal = open(dir.path()).await.expect("opening a damaged directory");
    (dir, wal)
}

async fn read_all(wal: &Walrus, topic: &str) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut next = 0;
    loop {
        let got = match wal.read_at(topic, next, usize::MAX).await {
            Ok(got) => got,
            Err(walrus_async::Error::Truncated { oldest, .. }) if oldest > next => {
                next = oldest;
                continue;
            }
            Err(e) => panic!("{e}"),
        };
        if got.is_empty() {
            return out;
        }
        for e in got {
            next = e.offset + 1;
            out.push((e.offset, e.data.to_vec()));
        }
    }
}

#[tokio::test]
async fn hostile_directory_opens_and_reads() {
    let mut ck = set_record("t", "", 2);
    ck.extend(set_record("ghost", "", 1 << 40));
    ck.extend(set_record("nul\0name", "", 3));
    let (_dir, wal) = recover(&[
        (
            "1000.seg",
            one_block_segment(5, 0, "t", &[(0, &[b"a", b"b"]), (2, &[b"c"])]),
        ),
        ("1001.seg", vec![0xAB; 3 * PAGE]),
        ("1002.seg", Vec::new()),
        ("checkpoints", ck),
    ])
    .await;
    let mut topics = wal.topics();
    topics.sort();
    // A topic name with NUL was never written by this crate: that record is damage, and no
    // topic appears that `read_at` would reject.
    assert_eq!(topics, ["ghost", "t"]);
    assert_eq!(
        read_all(&wal, "t").await,
        [(0, b"a".to_vec()), (1, b"b".to_vec()), (2, b"c".to_vec())]
    );
    assert!(read_all(&wal, "ghost").await.is_empty());
    assert_eq!(wal.append("ghost", "x").await.unwrap(), 1 << 40);
    wal.close().await.unwrap();
}

/// Offsets recovered near `u64::MAX` (a block header or a checkpoint claims them) used to
/// overflow the writer's next offset: a panic in debug builds that left the topic's writer dead
/// (every later append `Closed`), wrapped offsets in release. Appends that do not fit now fail
/// with an error, the ones that fit still work and survive a restart.
#[tokio::test]
async fn offsets_near_u64_max_refuse_appends_instead_of_overflowing() {
    let no_offsets_left = |r: walrus_async::Result<u64>| matches!(r, Err(walrus_async::Error::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData);
    // A block header claims u64::MAX: no entry fits (its end offset would be 2^64).
    let (_dir, wal) = recover(&[("1000.seg", one_block_segment(5, u64::MAX, "t", &[]))]).await;
    assert_eq!(wal.entry_count("t"), 0);
    assert!(no_offsets_left(wal.append("t", "x").await));
    assert!(no_offsets_left(wal.append("t", "y").await));
    assert_eq!(wal.append("other", "z").await.unwrap(), 0);
    wal.close().await.unwrap();

    // A checkpoint floor one below: exactly one more entry fits.
    let (dir, wal) = recover(&[("checkpoints", set_record("u", "", u64::MAX - 1))]).await;
    let batch = wal.append_batch("u", ["a", "b"]).await.map(|r| r.start);
    assert!(no_offsets_left(batch));
    assert_eq!(wal.append("u", "x").await.unwrap(), u64::MAX - 1);
    assert!(no_offsets_left(wal.append("u", "y").await));
    wal.close().await.unwrap();
    let wal = open(dir.path()).await.unwrap();
    let got = wal.read_at("u", u64::MAX - 1, usize::MAX).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].offset, &got[0].data[..]), (u64::MAX - 1, &b"x"[..]));
    assert!(no_offsets_left(wal.append("u", "y").await));
    wal.close().await.unwrap();
}
