//! Hostile inputs for the decoders, run through the same entry points as the fuzz targets in
//! `fuzz/` (`walrus_async::fuzzing`, not public API) and through the public API. Inputs the
//! fuzzers found go here too, with what they broke. Needs `--features fuzzing`.
//!
//! The helpers below build the on-disk format of `docs/FORMAT.md` (version 3) by hand, with
//! valid checksums, so each input reaches the check it is about instead of failing a CRC first.
#![cfg(feature = "fuzzing")]

use std::collections::HashMap;
use std::path::Path;

use walrus_async::fuzzing::{Summary, fuzz_checkpoints, fuzz_frames, fuzz_segment};
use walrus_async::{IoBackend, MIN_SEGMENT_BYTES, Walrus};

const PAGE: usize = 4096;
const LOG_ID: u64 = 0x10;

/// CRC32(segment_id LE ‖ pos LE): the seed of every checksum of the frame at `pos`.
fn frame_salt(segment_id: u64, pos: usize) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&segment_id.to_le_bytes());
    h.update(&(pos as u64).to_le_bytes());
    h.finalize()
}

fn salted(salt: u32, parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(salt);
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// The fields of a frame header, written as given (checksums computed).
#[derive(Clone)]
struct Header<'a> {
    topic: &'a [u8],
    first_offset: u64,
    count: u32,
    timestamp: u64,
    prev: u64,
    kind: u8,
    reserved: u16,
}

impl<'a> Header<'a> {
    fn new(topic: &'a str, first_offset: u64, count: u32) -> Self {
        Header {
            topic: topic.as_bytes(),
            first_offset,
            count,
            timestamp: 1_700_000_000_000,
            prev: 0,
            kind: 1,
            reserved: 0,
        }
    }

    /// The frame at `pos` of segment `segment_id`, padded to 8.
    fn frame(&self, segment_id: u64, pos: usize, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 44];
        f[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        f[12..16].copy_from_slice(&self.count.to_le_bytes());
        f[16..24].copy_from_slice(&self.first_offset.to_le_bytes());
        f[24..32].copy_from_slice(&self.timestamp.to_le_bytes());
        f[32..40].copy_from_slice(&self.prev.to_le_bytes());
        f[40] = self.kind;
        f[41] = self.topic.len() as u8;
        f[42..44].copy_from_slice(&self.reserved.to_le_bytes());
        let salt = frame_salt(segment_id, pos);
        let payload_crc = salted(salt, &[payload]);
        f[4..8].copy_from_slice(&payload_crc.to_le_bytes());
        let header_crc = salted(salt, &[&f[4..44], self.topic]);
        f[0..4].copy_from_slice(&header_crc.to_le_bytes());
        f.extend_from_slice(self.topic);
        f.extend_from_slice(payload);
        f.resize(f.len().div_ceil(8) * 8, 0);
        f
    }
}

fn payload(entries: &[&[u8]]) -> Vec<u8> {
    let mut p = Vec::new();
    for e in entries {
        varint(e.len() as u64, &mut p);
        p.extend_from_slice(e);
    }
    p
}

/// The segment header page (both copies) of version 3.
fn header_page(segment_id: u64, len: u64) -> Vec<u8> {
    let mut h = vec![0u8; 56];
    h[0..8].copy_from_slice(b"WALRUSAS");
    h[8..10].copy_from_slice(&3u16.to_le_bytes());
    h[16..24].copy_from_slice(&segment_id.to_le_bytes());
    h[24..32].copy_from_slice(&1000u64.to_le_bytes());
    h[32..40].copy_from_slice(&len.to_le_bytes());
    h[40..48].copy_from_slice(&LOG_ID.to_le_bytes());
    let crc = crc32fast::hash(&h[0..48]);
    h[48..52].copy_from_slice(&crc.to_le_bytes());
    let mut page = vec![0u8; PAGE];
    page[..56].copy_from_slice(&h);
    page[2048..2048 + 56].copy_from_slice(&h);
    page
}

/// A segment of 4 pages: header, then one frame per `(topic, first_offset, entries)`, each
/// chained to the topic's previous frame.
fn segment(segment_id: u64, frames: &[(&str, u64, &[&[u8]])]) -> Vec<u8> {
    let mut img = header_page(segment_id, 4 * PAGE as u64);
    let mut last: HashMap<&str, u64> = HashMap::new();
    for (topic, first, entries) in frames {
        let pos = img.len();
        let mut h = Header::new(topic, *first, entries.len() as u32);
        h.prev = last.get(topic).copied().unwrap_or(0);
        img.extend(h.frame(segment_id, pos, &payload(entries)));
        last.insert(topic, pos as u64);
    }
    img.resize(img.len().max(4 * PAGE), 0);
    img
}

/// `fuzz_frames` input: parameters (segment id, position, cut) then the segment image.
fn frames_input(segment_id: u64, pos: u16, cut: u16, image: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&segment_id.to_le_bytes());
    v.extend_from_slice(&pos.to_le_bytes());
    v.extend_from_slice(&cut.to_le_bytes());
    v.extend_from_slice(image);
    v
}

/// A small image: `frame` at position 8 (positions are absolute, and frames start at 8s).
fn at8(frame: Vec<u8>) -> Vec<u8> {
    let mut v = vec![0u8; 8];
    v.extend(frame);
    v
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
    let img = segment(
        9,
        &[
            ("a", 0, &[b"x", b"yy"]),
            ("b", 0, &[b""]),
            ("a", 2, &[b"z"]),
        ],
    );
    assert_eq!(
        fuzz_frames(&frames_input(9, PAGE as u16, 0, &img)),
        frames(3, 4)
    );
    // Another segment's id: no checksum holds.
    assert_eq!(
        fuzz_frames(&frames_input(8, PAGE as u16, 0, &img)),
        frames(0, 0)
    );
    // The same bytes at another position do not validate either.
    let f = Header::new("a", 0, 1).frame(9, 8, &payload(&[b"x"]));
    assert_eq!(
        fuzz_frames(&frames_input(9, 8, 0, &at8(f.clone()))),
        frames(1, 1)
    );
    let mut moved = vec![0u8; 16];
    moved.extend(f);
    assert_eq!(fuzz_frames(&frames_input(9, 16, 0, &moved)), frames(0, 0));
}

#[test]
fn frame_claiming_a_huge_payload_is_rejected() {
    let mut f = Header::new("t", 0, 1).frame(1, 8, &payload(&[b"abc"]));
    f[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    // Re-checksum the header so the length is what fails.
    let salt = frame_salt(1, 8);
    let crc = salted(salt, &[&f[4..44], b"t"]);
    f[0..4].copy_from_slice(&crc.to_le_bytes());
    for cut in [0, 1, u16::MAX] {
        assert_eq!(
            fuzz_frames(&frames_input(1, 8, cut, &at8(f.clone()))),
            frames(0, 0)
        );
    }
}

#[test]
fn varint_overflow_in_a_checksummed_frame_is_rejected() {
    for p in [
        vec![0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
        vec![0x80, 0x80, 0x80, 0x80, 0x10],
        vec![0x05, b'a'],
    ] {
        let f = Header::new("t", 0, 1).frame(7, 8, &p);
        assert_eq!(fuzz_frames(&frames_input(7, 8, 0, &at8(f))), frames(0, 0));
    }
}

#[test]
fn frame_fields_that_cannot_be_right_are_rejected() {
    let p = payload(&[b"e"]);
    let base = Header::new("t", 0, 1);
    let bad = [
        Header {
            count: 0,
            ..base.clone()
        },
        Header {
            kind: 2,
            ..base.clone()
        },
        Header {
            reserved: 1,
            ..base.clone()
        },
        Header {
            prev: 8,
            ..base.clone()
        }, // not before the frame
        Header {
            prev: 4097,
            ..base.clone()
        }, // unaligned
        Header {
            first_offset: u64::MAX,
            ..base.clone()
        },
        Header {
            topic: b"a\0b",
            ..base.clone()
        },
        Header {
            topic: b"\xff",
            ..base.clone()
        },
        Header {
            topic: b"",
            ..base.clone()
        },
    ];
    for (i, h) in bad.iter().enumerate() {
        let f = h.frame(3, 8, &p);
        assert_eq!(
            fuzz_frames(&frames_input(3, 8, 0, &at8(f))),
            frames(0, 0),
            "case {i}"
        );
    }
    // Count disagreeing with the payload.
    let f = Header::new("t", 0, 2).frame(3, 8, &p);
    assert_eq!(fuzz_frames(&frames_input(3, 8, 0, &at8(f))), frames(0, 0));
    // The largest valid end offset is fine.
    let f = Header::new("t", u64::MAX - 1, 1).frame(3, 8, &p);
    assert_eq!(fuzz_frames(&frames_input(3, 8, 0, &at8(f))), frames(1, 1));
}

#[test]
fn non_minimal_varints_are_accepted_as_written() {
    let f = Header::new("t", 0, 2).frame(3, 8, &[0x81, 0x00, b'a', 0x80, 0x00]);
    assert_eq!(fuzz_frames(&frames_input(3, 8, 0, &at8(f))), frames(1, 2));
}

#[test]
fn scan_positions_and_limits_out_of_range_do_not_panic() {
    let img = segment(2, &[("t", 0, &[b"abc"]), ("t", 1, &[b"d"])]);
    for pos in [0, 7, 8, 4095, 4096, 4100, 8000, u16::MAX] {
        for cut in [0, 1, 44, 4096, 12000, u16::MAX - 1, u16::MAX] {
            fuzz_frames(&frames_input(2, pos, cut, &img));
        }
    }
    for len in [0, 1, 11, 12, 13, 56, 100] {
        fuzz_frames(&vec![0xff; len]);
        fuzz_frames(&vec![0; len]);
    }
}

#[test]
fn damage_between_frames_is_stepped_over_to_the_next_frame() {
    let mut img = segment(
        4,
        &[
            ("a", 0, &[b"first"]),
            ("a", 1, &[b"second"]),
            ("b", 0, &[b"third"]),
        ],
    );
    // Garbage over the second frame: the scan finds the third again.
    let second = PAGE + 56;
    img[second..second + 30].fill(0x5a);
    let s = fuzz_segment(&img);
    assert_eq!((s.spans, s.frames, s.entries, s.failures), (2, 2, 2, 1));
}

// ---------------------------------------------------------------------------------------------
// Segments

#[test]
fn well_formed_segment_scans() {
    let img = segment(
        6,
        &[
            ("a", 0, &[b"1", b"2"]),
            ("b", 0, &[b"3"]),
            ("a", 2, &[b"4"]),
        ],
    );
    let s = fuzz_segment(&img);
    assert_eq!((s.spans, s.frames, s.entries, s.failures), (2, 3, 4, 0));
}

#[test]
fn a_damaged_first_header_copy_is_counted_and_the_second_used() {
    let mut img = segment(6, &[("a", 0, &[b"1"])]);
    img[20] ^= 1;
    let s = fuzz_segment(&img);
    assert_eq!((s.spans, s.entries, s.failures), (1, 1, 1));
    img[2048 + 20] ^= 1; // both copies: nothing can be verified
    let s = fuzz_segment(&img);
    assert_eq!((s.spans, s.failures), (0, 1));
}

#[test]
fn a_broken_chain_is_flagged_and_its_frames_still_found() {
    let mut img = header_page(5, 4 * PAGE as u64);
    let p1 = img.len();
    img.extend(Header::new("a", 0, 1).frame(5, p1, &payload(&[b"x"])));
    let p2 = img.len();
    // prev points at nothing of topic a.
    let h = Header {
        prev: 4104,
        ..Header::new("a", 1, 1)
    };
    img.extend(h.frame(5, p2, &payload(&[b"y"])));
    img.resize(4 * PAGE, 0);
    let s = fuzz_segment(&img);
    assert_eq!((s.spans, s.frames, s.entries, s.failures), (1, 2, 2, 0));
}

#[test]
fn a_frame_repeating_its_topics_offsets_is_damage() {
    let img = segment(5, &[("a", 0, &[b"x", b"y"]), ("a", 1, &[b"again"])]);
    let s = fuzz_segment(&img);
    assert_eq!((s.spans, s.entries, s.failures), (1, 2, 1));
}

#[test]
fn degenerate_segment_images_hold_nothing() {
    let zero = Summary::default();
    for img in [
        Vec::new(),
        vec![0; PAGE],
        vec![0; 3 * PAGE],
        header_page(1, 0),
    ] {
        assert_eq!(fuzz_segment(&img), zero);
    }
    // A header and garbage: damage, counted once.
    let mut img = header_page(1, 3 * PAGE as u64);
    img.extend(vec![0xA5; 2 * PAGE]);
    let s = fuzz_segment(&img);
    assert_eq!((s.spans, s.failures), (0, 1));
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
            segment(5, &[("t", 0, &[b"a", b"b"]), ("t", 2, &[b"c"])]),
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

/// Offsets recovered near `u64::MAX` (a frame or a checkpoint claims them) used to
/// overflow the writer's next offset: a panic in debug builds that left the topic's writer dead
/// (every later append `Closed`), wrapped offsets in release. Appends that do not fit now fail
/// with an error, the ones that fit still work and survive a restart.
#[tokio::test]
async fn offsets_near_u64_max_refuse_appends_instead_of_overflowing() {
    let no_offsets_left = |r: walrus_async::Result<u64>| matches!(r, Err(walrus_async::Error::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData);
    // A frame ends at u64::MAX: no entry fits after it (its end offset would be 2^64).
    let (_dir, wal) =
        recover(&[("1000.seg", segment(5, &[("t", u64::MAX - 1, &[b"last"])]))]).await;
    assert_eq!(wal.entry_count("t"), 1);
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
