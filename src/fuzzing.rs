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
    self, DecodeError, Frame, FrameBuilder, FrameEntries, PAGE, ScanItem, SegmentHeader,
    SegmentScan,
};

/// Bytes of parameters in front of the segment image in [`fuzz_frames`] input.
pub const FRAME_PARAMS_LEN: usize = 12;

/// What an entry point decoded, for tests to assert on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Valid frames: found by the `SegmentScan` ([`fuzz_frames`]), or in the spans found
    /// ([`fuzz_segment`]).
    pub frames: u64,
    /// Entries in those frames.
    pub entries: u64,
    /// Spans (one topic's frames in the segment) the segment scanner found.
    pub spans: u64,
    /// Damage the segment scanner counted (`checksum_failures` in `Stats`).
    pub failures: u64,
    /// Checkpoint values decoded (one per topic and consumer).
    pub checkpoints: u64,
    /// The checkpoint decoder stopped at non-zero bytes: damage rather than a clean end.
    pub damaged: bool,
}

/// Frame decoding: `decode_header`, `decode_frame`, `SegmentScan`, `FrameEntries` and the
/// varint codec.
///
/// Input: 12 bytes of parameters, then a segment image (positions are absolute in it).
/// Parameters (little-endian): segment id `u64`, start position `u16`, and `u16` bytes cut
/// off the end to give the scan limit (`0xFFFF`: a limit past the end). Missing parameter
/// bytes read as zero.
pub fn fuzz_frames(data: &[u8]) -> Summary {
    let mut params = [0u8; FRAME_PARAMS_LEN];
    let n = data.len().min(FRAME_PARAMS_LEN);
    params[..n].copy_from_slice(&data[..n]);
    let seg = data.get(FRAME_PARAMS_LEN..).unwrap_or(&[]);
    let id = u64::from_le_bytes(params[0..8].try_into().unwrap());
    let pos = usize::from(u16::from_le_bytes(params[8..10].try_into().unwrap()));
    let cut = u16::from_le_bytes(params[10..12].try_into().unwrap());
    let limit = if cut == u16::MAX {
        usize::MAX
    } else {
        seg.len().saturating_sub(usize::from(cut))
    };

    check_varints(seg);
    for at in [pos, 0, pos & !7] {
        if let Ok(f) = format::decode_frame(seg, at, limit, id) {
            assert_eq!(f.pos, at);
            check_frame(seg, limit, &f, id);
        }
        if let Ok(h) = format::decode_header(seg, at, limit, id) {
            assert!(h.end <= limit.min(seg.len()) && h.next >= h.end && h.next % 8 == 0);
        }
    }
    check_scan(seg, pos, limit, id)
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

/// A frame `decode_frame` accepted: its layout lies inside the segment, its entries tile its
/// payload, and re-encoding them at the same position gives a frame that decodes to the same
/// entries.
fn check_frame(seg: &[u8], limit: usize, f: &Frame, id: u64) {
    assert!(f.count >= 1);
    assert_eq!(f.pos % 8, 0);
    assert_eq!(
        f.payload_start,
        f.pos + format::FRAME_HEADER_LEN + f.topic_len
    );
    assert!(f.payload_start <= f.end && f.end <= limit.min(seg.len()));
    assert_eq!(f.next, format::padded(f.end as u64) as usize);
    assert!(f.first_offset.checked_add(u64::from(f.count)).is_some());
    assert!(f.prev == 0 || (f.prev < f.pos as u64 && f.prev >= PAGE && f.prev.is_multiple_of(8)));
    let topic = std::str::from_utf8(f.topic(seg)).expect("a decoded topic is UTF-8");
    assert!(!topic.is_empty() && !topic.contains('\0'));

    let mut it = FrameEntries::new(seg, f);
    let mut ranges: Vec<Range<usize>> = Vec::new();
    let mut starts = Vec::new();
    let mut prev_end = f.payload_start;
    loop {
        let at = it.position();
        let Some(r) = it.next() else { break };
        // Each entry is its varint prefix (1..=5 bytes) then its bytes, right after the last.
        assert_eq!(at, prev_end);
        assert!(r.start > at && r.start - at <= 5 && r.start <= r.end && r.end <= f.end);
        black_box(seg[r.clone()].iter().fold(0u8, |a, &x| a ^ x));
        prev_end = r.end;
        starts.push(at);
        ranges.push(r);
    }
    assert_eq!(ranges.len() as u64, u64::from(f.count));
    assert_eq!(prev_end, f.end);
    assert!(it.next().is_none());
    // Resuming at a recorded position yields the rest of the frame.
    for (i, &at) in starts.iter().enumerate().take(4) {
        let rest: Vec<_> = FrameEntries::resume(seg, f, at, f.count - i as u32).collect();
        assert_eq!(rest, ranges[i..]);
    }

    let mut out = vec![0u8; f.pos];
    let mut fb = FrameBuilder::begin(&mut out, topic, f.first_offset, f.timestamp, f.prev);
    for r in &ranges {
        fb.push(&mut out, &seg[r.clone()]);
    }
    assert_eq!(fb.count(), f.count);
    fb.finish(&mut out, format::frame_salt(id, f.pos as u64));
    let len = out.len() - f.pos;
    assert_eq!(
        format::frame_len(f.topic_len, ranges.iter().map(|r| r.len())),
        len as u64
    );
    // Our encoding is minimal: never longer than what was read, identical when as long.
    assert!(len <= f.next - f.pos);
    if len == f.next - f.pos && f.next <= seg.len() {
        assert_eq!(&out[f.pos..f.end], &seg[f.pos..f.end]);
    }
    let g = format::decode_frame(&out, f.pos, out.len(), id).expect("re-encoded frame decodes");
    assert_eq!(
        (g.first_offset, g.count, g.timestamp, g.prev),
        (f.first_offset, f.count, f.timestamp, f.prev)
    );
    let again: Vec<&[u8]> = FrameEntries::new(&out, &g).map(|r| &out[r]).collect();
    let orig: Vec<&[u8]> = ranges.iter().map(|r| &seg[r.clone()]).collect();
    assert_eq!(again, orig);
}

/// Walks a `SegmentScan`, checking that its items chain up as documented.
fn check_scan(seg: &[u8], pos: usize, limit: usize, id: u64) -> Summary {
    let mut summary = Summary::default();
    let end = limit.min(seg.len());
    let mut scan = SegmentScan::new(seg, id, pos, limit);
    let mut cursor = pos;
    let mut must_be_frame_at = None;
    let mut items = 0usize;
    let mut first_frame = None;
    while let Some(item) = scan.next() {
        items += 1;
        assert!(items <= seg.len() / 8 + 2);
        match item {
            ScanItem::Frame(f) => {
                assert_eq!(f.pos, cursor);
                assert!(must_be_frame_at.is_none_or(|p| p == f.pos));
                must_be_frame_at = None;
                check_frame(seg, limit, &f, id);
                summary.frames += 1;
                summary.entries += u64::from(f.count);
                cursor = f.next;
                first_frame.get_or_insert((f.next, items));
            }
            ScanItem::Skipped { pos, next, error } => {
                assert!(must_be_frame_at.is_none());
                assert_eq!(pos, cursor);
                assert!(next > pos && next % 8 == 0 && next < end);
                assert_ne!(error, DecodeError::Zero);
                black_box(error.to_string());
                cursor = next;
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
    // A scan started after the first frame sees the same items as the whole scan from there.
    if let Some((at, seen)) = first_frame {
        let resumed: Vec<_> = SegmentScan::new(seg, id, at, limit).collect();
        let rest: Vec<_> = SegmentScan::new(seg, id, pos, limit).skip(seen).collect();
        assert_eq!(resumed, rest);
    }
    summary
}

/// Segment scanning: `scan_segment` on `bytes` as a whole segment image, plus
/// `SegmentHeader::decode_page`; every span's frames are found again by following their
/// `prev` chain where the scanner says it is whole.
pub fn fuzz_segment(bytes: &[u8]) -> Summary {
    let header = SegmentHeader::decode_page(bytes);
    if let Ok(h) = header {
        let page = h.encode_page();
        let first = SegmentHeader::decode(bytes).is_ok();
        if first {
            assert_eq!(
                &page[..format::SEGMENT_HEADER_LEN],
                &bytes[..format::SEGMENT_HEADER_LEN]
            );
        }
    }
    let crate::storage::Scanned {
        segment_id,
        spans,
        damage,
    } = crate::storage::scan_segment(Path::new("fuzz.seg"), bytes, Some);
    let failures = damage.len() as u64;
    let mut summary = Summary {
        spans: spans.len() as u64,
        failures,
        ..Summary::default()
    };
    if let Ok(h) = header {
        assert_eq!(segment_id, Some(h.segment_id));
    }
    assert!(spans.is_empty() || segment_id.is_some());
    for s in &spans {
        let id = segment_id.expect("spans imply an id");
        assert!(s.first_pos >= PAGE && s.first_pos <= s.last_pos);
        assert!((s.last_pos as usize) < bytes.len());
        // Runs: non-empty, ascending, never adjacent (adjacent runs are merged).
        assert!(!s.runs.is_empty());
        let mut last: Option<&Range<u64>> = None;
        for r in &s.runs {
            assert!(r.start < r.end);
            assert!(last.is_none_or(|l| l.end < r.start), "runs {:?}", s.runs);
            last = Some(r);
        }
        // The topic's frames, found by walking the segment, are exactly the runs recorded.
        let mut runs: Vec<Range<u64>> = Vec::new();
        let mut payload = 0u64;
        let mut positions = Vec::new();
        for item in SegmentScan::new(bytes, id, PAGE as usize, bytes.len()) {
            if let ScanItem::Frame(f) = item
                && f.topic(bytes) == s.topic.as_bytes()
            {
                if runs.last().is_some_and(|r| f.first_offset < r.end) {
                    continue;
                }
                summary.frames += 1;
                summary.entries += u64::from(f.count);
                match runs.last_mut() {
                    Some(r) if r.end == f.first_offset => r.end = f.end_offset(),
                    _ => runs.push(f.first_offset..f.end_offset()),
                }
                positions.push(f.pos as u64);
                payload += FrameEntries::new(bytes, &f)
                    .map(|r| r.len() as u64)
                    .sum::<u64>();
            }
        }
        assert_eq!(runs, s.runs);
        assert_eq!(payload, s.bytes);
        assert_eq!(positions.first().copied(), Some(s.first_pos));
        assert_eq!(positions.last().copied(), Some(s.last_pos));
        if !s.broken {
            // The chain from the last frame leads through exactly these frames.
            let mut chain = Vec::new();
            let mut p = s.last_pos;
            while p != 0 {
                chain.push(p);
                p = format::decode_header(bytes, p as usize, bytes.len(), id)
                    .expect("a chained frame decodes")
                    .prev;
            }
            chain.reverse();
            assert_eq!(chain, positions);
        }
    }
    // Where nothing was written, nothing is found.
    let none = crate::storage::scan_segment(Path::new("fuzz.seg"), bytes, |_| None);
    assert!(none.spans.is_empty());
    summary
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
