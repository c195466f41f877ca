//! Entry points for the cargo-fuzz targets in `fuzz/` and for `tests/fuzz_regressions.rs`.
//!
//! **Not public API.** This module exists only with the `fuzzing` feature, is hidden from the
//! documentation and may change or disappear in any release. Each function feeds untrusted
//! bytes to one of the crate's internal decoders, walks everything they decode, and asserts
//! cheap invariants; a panic means a bug.

use std::collections::HashMap;
use std::hint::black_box;
use std::ops::Range;
use std::path::Path;

use crate::format::{
    self, BlockHeader, DecodeError, Frame, FrameBuilder, FrameEntries, FrameScan, PAGE, ScanItem,
    SegmentHeader,
};

/// Bytes of parameters in front of the block in [`fuzz_frames`] input.
pub const FRAME_PARAMS_LEN: usize = 16;

/// What an entry point decoded, for tests to assert on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Valid frames: accepted by the `FrameScan` ([`fuzz_frames`]), or in the blocks found
    /// ([`fuzz_segment`]).
    pub frames: u64,
    /// Entries in those frames.
    pub entries: u64,
    /// Blocks the segment scanner found.
    pub blocks: u64,
    /// Damage the segment scanner counted (`checksum_failures` in `Stats`).
    pub failures: u64,
    /// Checkpoint values decoded (one per topic and consumer).
    pub checkpoints: u64,
    /// The checkpoint decoder stopped at non-zero bytes: damage rather than a clean end.
    pub damaged: bool,
}

/// Frame decoding: `decode_frame`, `FrameScan`, `FrameEntries` and the varint codec.
///
/// Input: 16 bytes of parameters, then the block. Parameters (little-endian): salt `u32`,
/// expected first offset `u64`, start position `u16`, and `u16` bytes cut off the end of the
/// block to give the scan limit (`0xFFFF`: a limit past the end of the block). Missing
/// parameter bytes read as zero.
pub fn fuzz_frames(data: &[u8]) -> Summary {
    let mut params = [0u8; FRAME_PARAMS_LEN];
    let n = data.len().min(FRAME_PARAMS_LEN);
    params[..n].copy_from_slice(&data[..n]);
    let block = data.get(FRAME_PARAMS_LEN..).unwrap_or(&[]);
    let salt = u32::from_le_bytes(params[0..4].try_into().unwrap());
    let expected = u64::from_le_bytes(params[4..12].try_into().unwrap());
    let pos = usize::from(u16::from_le_bytes(params[12..14].try_into().unwrap()));
    let cut = u16::from_le_bytes(params[14..16].try_into().unwrap());
    let limit = if cut == u16::MAX {
        usize::MAX
    } else {
        block.len().saturating_sub(usize::from(cut))
    };

    check_varints(block);
    for at in [pos, 0] {
        if let Ok(f) = format::decode_frame(block, at, limit, salt) {
            assert_eq!(f.pos, at);
            check_frame(block, limit, &f, salt);
        }
    }
    let summary = check_scan(block, pos, limit, salt, expected);
    // Resuming at an arbitrary position of a valid frame stays inside the frame.
    if let Ok(f) = format::decode_frame(block, pos, limit, salt) {
        let resume_at = (expected as usize) % (block.len() + 1);
        let left = (expected >> 32) as u32 % 64;
        for r in FrameEntries::resume(block, &f, resume_at, left) {
            assert!(r.start <= r.end && r.end <= f.end);
            black_box(&block[r]);
        }
    }
    summary
}

/// Every position of `b` decoded as a varint; what decodes re-encodes to the same value.
fn check_varints(b: &[u8]) {
    for start in 0..b.len() {
        let mut p = start;
        let decoded = format::get_varint_u32(b, &mut p);
        assert!(p > start && p - start <= 5 && p <= b.len());
        let Some(v) = decoded else { continue };
        let mut enc = Vec::new();
        format::put_varint(&mut enc, u64::from(v));
        assert_eq!(enc.len(), format::varint_len(u64::from(v)));
        // The decoder accepts non-minimal encodings; a minimal one is byte for byte ours.
        assert!(p - start >= enc.len());
        if p - start == enc.len() {
            assert_eq!(&b[start..p], &enc[..]);
        }
        let mut q = 0;
        assert_eq!(format::get_varint_u32(&enc, &mut q), Some(v));
        assert_eq!(q, enc.len());
    }
}

/// A frame `decode_frame` accepted: its layout lies inside the block, its entries tile its
/// payload, and re-encoding them gives a frame that decodes to the same entries.
fn check_frame(block: &[u8], limit: usize, f: &Frame, salt: u32) {
    assert!(f.count >= 1);
    assert_eq!(f.payload_start, f.pos + format::FRAME_HEADER_LEN);
    assert!(f.payload_start <= f.end && f.end <= limit.min(block.len()));
    assert!(f.first_offset.checked_add(u64::from(f.count)).is_some());
    assert_eq!(f.end_offset(), f.first_offset + u64::from(f.count));

    let mut it = FrameEntries::new(block, f);
    let mut ranges: Vec<Range<usize>> = Vec::new();
    let mut starts = Vec::new();
    let mut prev_end = f.payload_start;
    loop {
        let at = it.position();
        let Some(r) = it.next() else { break };
        // Each entry is its varint prefix (1..=5 bytes) then its bytes, right after the last.
        assert_eq!(at, prev_end);
        assert!(r.start > at && r.start - at <= 5 && r.start <= r.end && r.end <= f.end);
        black_box(block[r.clone()].iter().fold(0u8, |a, &x| a ^ x));
        prev_end = r.end;
        starts.push(at);
        ranges.push(r);
    }
    assert_eq!(ranges.len() as u64, u64::from(f.count));
    assert_eq!(prev_end, f.end);
    assert!(it.next().is_none());
    // Resuming at a recorded position yields the rest of the frame.
    for (i, &at) in starts.iter().enumerate().take(4) {
        let rest: Vec<_> = FrameEntries::resume(block, f, at, f.count - i as u32).collect();
        assert_eq!(rest, ranges[i..]);
    }

    let mut out = Vec::new();
    let mut fb = FrameBuilder::begin(&mut out, f.first_offset);
    for r in &ranges {
        fb.push(&mut out, &block[r.clone()]);
    }
    assert_eq!(fb.count(), f.count);
    fb.finish(&mut out, salt);
    assert_eq!(
        format::frame_len(ranges.iter().map(|r| r.len())),
        out.len() as u64
    );
    // Our encoding is minimal: never longer than what was read, identical when as long.
    assert!(out.len() <= f.end - f.pos);
    if out.len() == f.end - f.pos {
        assert_eq!(&out[..], &block[f.pos..f.end]);
    }
    let g = format::decode_frame(&out, 0, out.len(), salt).expect("re-encoded frame decodes");
    assert_eq!(
        (g.first_offset, g.count, g.end),
        (f.first_offset, f.count, out.len())
    );
    let again: Vec<&[u8]> = FrameEntries::new(&out, &g).map(|r| &out[r]).collect();
    let orig: Vec<&[u8]> = ranges.iter().map(|r| &block[r.clone()]).collect();
    assert_eq!(again, orig);
}

/// Walks a `FrameScan`, checking that its items chain up as documented.
fn check_scan(block: &[u8], pos: usize, limit: usize, salt: u32, expected: u64) -> Summary {
    let mut summary = Summary::default();
    let end = limit.min(block.len());
    let mut scan = FrameScan::new(block, pos, limit, salt, expected);
    let expected0 = expected;
    let mut cursor = pos;
    let mut expected = expected;
    let mut relaxed = false;
    let mut must_be_frame_at = None;
    let mut items = 0usize;
    let mut first_frame_end = None;
    while let Some(item) = scan.next() {
        items += 1;
        assert!(items <= block.len() / format::FRAME_HEADER_LEN + 2);
        match item {
            ScanItem::Frame(f) => {
                assert_eq!(f.pos, cursor);
                assert!(must_be_frame_at.is_none_or(|p| p == f.pos));
                must_be_frame_at = None;
                if relaxed {
                    assert!(f.first_offset >= expected);
                } else {
                    assert_eq!(f.first_offset, expected);
                }
                check_frame(block, limit, &f, salt);
                summary.frames += 1;
                summary.entries += u64::from(f.count);
                cursor = f.end;
                expected = f.end_offset();
                relaxed = false;
                first_frame_end.get_or_insert((f.end, expected, items));
            }
            ScanItem::Skipped { pos, next, error } => {
                assert!(must_be_frame_at.is_none());
                assert_eq!(pos, cursor);
                assert!(next >= pos + format::FRAME_HEADER_LEN && next < end);
                assert_ne!(error, DecodeError::Zero);
                black_box(error.to_string());
                cursor = next;
                relaxed = true;
                must_be_frame_at = Some(next);
            }
            ScanItem::End { pos, error } => {
                assert!(must_be_frame_at.is_none());
                assert_eq!(pos, cursor);
                assert!(pos < end);
                black_box(error.to_string());
                assert!(scan.next().is_none(), "nothing after End");
                break;
            }
        }
    }
    assert!(must_be_frame_at.is_none());
    // A reader resumes after a cached frame with a fresh scan: it must see the same items.
    if let Some((at, exp, seen)) = first_frame_end {
        let resumed: Vec<_> = FrameScan::new(block, at, limit, salt, exp).collect();
        let rest: Vec<_> = FrameScan::new(block, pos, limit, salt, expected0)
            .skip(seen)
            .collect();
        assert_eq!(resumed, rest);
    }
    summary
}

/// Segment scanning: `scan_segment` on `bytes` as a whole segment image (every page probed),
/// plus `SegmentHeader::decode` and `BlockHeader::decode`.
pub fn fuzz_segment(bytes: &[u8]) -> Summary {
    let header = SegmentHeader::decode(bytes);
    if let Ok(h) = header {
        let mut enc = [0u8; format::SEGMENT_HEADER_LEN];
        h.encode(&mut enc);
        assert_eq!(&enc[..], &bytes[..format::SEGMENT_HEADER_LEN]);
    }
    for at in [0, PAGE as usize] {
        check_block_header(bytes.get(at..).unwrap_or(&[]), at as u64);
    }

    let (segment_id, blocks, failures) =
        crate::storage::scan_segment(Path::new("fuzz.seg"), bytes, Some);
    let mut summary = Summary {
        blocks: blocks.len() as u64,
        failures,
        ..Summary::default()
    };
    if let Ok(h) = header {
        assert_eq!(segment_id, Some(h.segment_id));
    }
    assert!(blocks.is_empty() || segment_id.is_some());
    let mut prev_end = PAGE;
    for b in &blocks {
        let id = segment_id.expect("blocks imply an id");
        // Page aligned, starting inside the file, in order and not overlapping. The last one
        // may claim more than the file holds (a file cut short): only what is there is read.
        assert!(b.pos % PAGE == 0 && b.pos >= prev_end);
        assert!(b.len % PAGE == 0 && b.len > 0);
        assert!(b.pos < bytes.len() as u64);
        let end = b.pos.saturating_add(b.len).min(bytes.len() as u64);
        prev_end = b.pos.saturating_add(b.len);
        let image = &bytes[b.pos as usize..end as usize];
        let h = BlockHeader::decode(image, b.pos).expect("a scanned block's header decodes");
        assert_eq!(
            (h.segment_id, h.len, h.first_offset, h.topic),
            (id, b.len, b.first_offset, b.topic.as_str())
        );
        assert_eq!(b.data_start, format::block_header_len(b.topic.len()));
        assert!(b.data_start as u64 <= b.frames_end && b.frames_end <= end - b.pos);
        assert!(b.bytes <= b.frames_end - b.data_start as u64);
        // Runs: non-empty, from the header's first offset on, ascending, never adjacent
        // (adjacent runs are merged).
        let mut last: Option<&Range<u64>> = None;
        for r in &b.runs {
            assert!(r.start < r.end && r.start >= b.first_offset);
            assert!(last.is_none_or(|l| l.end < r.start), "runs {:?}", b.runs);
            last = Some(r);
        }
        // The frames readers will find are exactly the runs recovery recorded.
        let salt = format::block_salt(id, b.pos);
        let mut runs: Vec<Range<u64>> = Vec::new();
        let mut frames_end = b.data_start;
        let mut payload = 0u64;
        let limit = image.len();
        for item in FrameScan::new(image, b.data_start, limit, salt, b.first_offset) {
            if let ScanItem::Frame(f) = item {
                check_frame(image, limit, &f, salt);
                summary.frames += 1;
                summary.entries += u64::from(f.count);
                match runs.last_mut() {
                    Some(r) if r.end == f.first_offset => r.end = f.end_offset(),
                    _ => runs.push(f.first_offset..f.end_offset()),
                }
                frames_end = f.end;
                payload += FrameEntries::new(image, &f)
                    .map(|r| r.len() as u64)
                    .sum::<u64>();
            }
        }
        assert_eq!(runs, b.runs);
        assert_eq!(frames_end as u64, b.frames_end);
        assert_eq!(payload, b.bytes);
    }
    // Where nothing was written, nothing is found.
    let (_, none, _) = crate::storage::scan_segment(Path::new("fuzz.seg"), bytes, |_| None);
    assert!(none.is_empty());
    summary
}

/// A block header that decodes is valid and re-encodes to the same bytes.
fn check_block_header(b: &[u8], block_pos: u64) {
    let Ok(h) = BlockHeader::decode(b, block_pos) else {
        return;
    };
    assert!(!h.topic.is_empty() && h.topic.len() <= format::MAX_TOPIC_LEN);
    assert!(!h.topic.contains('\0'));
    assert!(h.len % PAGE == 0 && h.len >= format::block_header_len(h.topic.len()) as u64);
    let mut enc = Vec::new();
    h.encode(block_pos, &mut enc);
    assert_eq!(enc.len(), format::block_header_len(h.topic.len()));
    assert_eq!(&enc[..], &b[..enc.len()]);
}

/// Checkpoint store decoding: `decode_all` on `bytes` as a whole `checkpoints` file.
pub fn fuzz_checkpoints(bytes: &[u8]) -> Summary {
    let mut values = HashMap::new();
    let d = crate::checkpoint::decode_all(bytes, &mut values);
    assert!(d.end <= bytes.len());
    assert_eq!(d.torn_tail, bytes[d.end..].iter().any(|&b| b != 0));
    assert!(d.damage.iter().all(|&p| p < d.end));
    for ((topic, consumer), reg) in &values {
        assert!(!topic.is_empty() && topic.len() <= 255 && consumer.len() <= 255);
        assert!(reg.epoch <= d.max_epoch);
        black_box((topic.as_str(), consumer.as_str(), reg.offset));
    }
    // The decoded part alone decodes to the same values, with the same damage and a clean end.
    let mut again = HashMap::new();
    let d2 = crate::checkpoint::decode_all(&bytes[..d.end], &mut again);
    assert_eq!(
        (d2.end, d2.torn_tail, &d2.damage),
        (d.end, false, &d.damage)
    );
    assert_eq!(again, values);
    Summary {
        checkpoints: values.len() as u64,
        damaged: d.torn_tail || !d.damage.is_empty(),
        ..Summary::default()
    }
}
