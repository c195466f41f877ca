//! The bytes on disk: segment headers and frames.
//!
//! This module is pure and synchronous: it encodes into caller-provided buffers and decodes from
//! byte slices. Every decoder takes untrusted input (a file may be torn, zeroed, bit-flipped or
//! written by someone else) and returns an error value instead of panicking; all arithmetic on
//! decoded numbers is checked and every slice access goes through `get`.
//!
//! `docs/FORMAT.md` documents every byte; keep the two in step.
//!
//! ```text
//! segment file  = segment header (padded to 4096) , frame* , unwritten space
//! frame         = frame header (44 bytes) , topic name , payload , zero padding to 8
//! payload       = ( varint(len) , len bytes )*      -- `count` entries
//! ```
//!
//! Segments are one shared, append-only commit stream: the frames of every topic follow each
//! other in the order they were written, each tagged with its topic, its first offset, its
//! append time and the position of the previous frame of the same topic in the segment (so a
//! reader walks one topic's frames without reading the others'). Frames start at multiples of
//! 8 and carry two checksums, seeded by the segment's random id and the frame's position: one
//! over the header and topic name, one over the payload. Stale bytes from another file or
//! another position never validate, so torn-tail detection does not rely on zeroed space, and
//! after damage the next frame can be found again by trying each 8-byte position (cheap: the
//! header checksum covers 44 bytes and the name).

use std::fmt;

/// Size of the segment header area: the first frame starts here.
pub const PAGE: u64 = 4096;
/// Magic at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"WALRUSAS";
/// On-disk format version written and read by this crate (3: one commit stream of frames
/// tagged with their topic and time; 2: per-topic blocks; 1: no log id).
pub const FORMAT_VERSION: u16 = 3;
/// Bytes of the segment header that carry data.
pub const SEGMENT_HEADER_LEN: usize = 56;
/// Where the second copy of the segment header starts: every frame checksum is seeded with
/// the segment id, so without a readable header nothing in the file could be verified.
pub const SEGMENT_HEADER_COPY: usize = 2048;
/// Fixed part of a frame header; the topic name follows.
pub const FRAME_HEADER_LEN: usize = 44;
/// Frames start at multiples of this.
pub const FRAME_ALIGN: u64 = 8;
/// Frame kind: a group of entries (single appends coalesced, or one atomic batch).
pub const FRAME_KIND_ENTRIES: u8 = 1;
/// Longest topic name in bytes.
pub const MAX_TOPIC_LEN: usize = 255;
/// Largest payload one frame can carry (its length field is a `u32`).
pub const MAX_FRAME_PAYLOAD: u64 = u32::MAX as u64;

/// Why a piece of bytes did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the structure needs.
    Short,
    /// All bytes zero: space that was never written.
    Zero,
    /// Wrong magic number.
    Magic,
    /// A version this crate does not read.
    Version(u16),
    /// Checksum mismatch.
    Checksum,
    /// A field holds a value that cannot be right.
    Field(&'static str),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Short => f.write_str("truncated"),
            DecodeError::Zero => f.write_str("unwritten (zero) bytes"),
            DecodeError::Magic => f.write_str("bad magic number"),
            DecodeError::Version(v) => write!(f, "unsupported format version {v}"),
            DecodeError::Checksum => f.write_str("checksum mismatch"),
            DecodeError::Field(what) => write!(f, "invalid {what}"),
        }
    }
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Rounds `n` up to a multiple of `to` (a power of two). `None` on overflow.
pub fn align_up(n: u64, to: u64) -> Option<u64> {
    debug_assert!(to.is_power_of_two());
    Some(n.checked_add(to - 1)? & !(to - 1))
}

/// The checksum seed of a frame: ties it to one file and one position.
pub fn frame_salt(segment_id: u64, pos: u64) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&segment_id.to_le_bytes());
    h.update(&pos.to_le_bytes());
    h.finalize()
}

// ---------------------------------------------------------------------------------------------
// Segment header

/// The header at offset 0 of every segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Random id, part of every checksum seed in the file.
    pub segment_id: u64,
    /// Creation time, epoch milliseconds (also the file name).
    pub created_ms: u64,
    /// Length the file was created with.
    pub len: u64,
    /// Random id of the log (namespace) that created the file: recovery ignores segments of
    /// another log that were copied or moved into this one's directory.
    pub log_id: u64,
}

impl SegmentHeader {
    /// Encodes into the first [`SEGMENT_HEADER_LEN`] bytes of `out`.
    pub fn encode(&self, out: &mut [u8; SEGMENT_HEADER_LEN]) {
        out.fill(0);
        out[0..8].copy_from_slice(&SEGMENT_MAGIC);
        out[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[16..24].copy_from_slice(&self.segment_id.to_le_bytes());
        out[24..32].copy_from_slice(&self.created_ms.to_le_bytes());
        out[32..40].copy_from_slice(&self.len.to_le_bytes());
        out[40..48].copy_from_slice(&self.log_id.to_le_bytes());
        let crc = crc32fast::hash(&out[0..48]);
        out[48..52].copy_from_slice(&crc.to_le_bytes());
    }

    /// Encodes both copies into the first `SEGMENT_HEADER_COPY + SEGMENT_HEADER_LEN` bytes.
    pub fn encode_page(&self) -> Vec<u8> {
        let mut h = [0u8; SEGMENT_HEADER_LEN];
        self.encode(&mut h);
        let mut out = vec![0u8; SEGMENT_HEADER_COPY + SEGMENT_HEADER_LEN];
        out[..SEGMENT_HEADER_LEN].copy_from_slice(&h);
        out[SEGMENT_HEADER_COPY..].copy_from_slice(&h);
        out
    }

    /// Decodes the segment header from the first page of a file: the first copy, else the
    /// second (the first copy's error if neither decodes).
    pub fn decode_page(b: &[u8]) -> Result<SegmentHeader, DecodeError> {
        match SegmentHeader::decode(b) {
            Ok(h) => Ok(h),
            Err(e) => b
                .get(SEGMENT_HEADER_COPY..)
                .and_then(|copy| SegmentHeader::decode(copy).ok())
                .ok_or(e),
        }
    }

    /// Decodes one copy of a segment header from the start of `b`.
    pub fn decode(b: &[u8]) -> Result<SegmentHeader, DecodeError> {
        let h = b.get(..SEGMENT_HEADER_LEN).ok_or(DecodeError::Short)?;
        if h.iter().all(|&x| x == 0) {
            return Err(DecodeError::Zero);
        }
        if h[0..8] != SEGMENT_MAGIC {
            return Err(DecodeError::Magic);
        }
        let crc = le_u32(h, 48).ok_or(DecodeError::Short)?;
        if crc != crc32fast::hash(&h[0..48]) {
            return Err(DecodeError::Checksum);
        }
        let version = le_u16(h, 8).ok_or(DecodeError::Short)?;
        if version != FORMAT_VERSION {
            return Err(DecodeError::Version(version));
        }
        // Reserved bytes are outside the checksum: they must be zero until given a meaning.
        if h[10..16].iter().chain(&h[52..56]).any(|&b| b != 0) {
            return Err(DecodeError::Field("reserved bytes"));
        }
        Ok(SegmentHeader {
            segment_id: le_u64(h, 16).ok_or(DecodeError::Short)?,
            created_ms: le_u64(h, 24).ok_or(DecodeError::Short)?,
            len: le_u64(h, 32).ok_or(DecodeError::Short)?,
            log_id: le_u64(h, 40).ok_or(DecodeError::Short)?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Frames

/// Number of bytes the varint encoding of `n` takes.
pub fn varint_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

/// Appends the LEB128 encoding of `n`.
pub fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Reads a LEB128 `u32` at `*pos`, advancing it. `None` if truncated or too long.
pub fn get_varint_u32(b: &[u8], pos: &mut usize) -> Option<u32> {
    let mut value: u64 = 0;
    for shift in (0..35).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return u32::try_from(value).ok();
        }
    }
    None
}

/// Encodes one frame at the end of a buffer: begin (header and topic), push entries, finish.
///
/// The writer reuses one buffer for every group, so the coalesced path does not allocate once
/// the buffer has grown to its working size. The buffer's frames must start at file positions
/// that are multiples of [`FRAME_ALIGN`]; `finish` pads each frame so the next one does too.
pub struct FrameBuilder {
    start: usize,
    topic_len: usize,
    first_offset: u64,
    timestamp: u64,
    prev: u64,
    count: u32,
}

impl FrameBuilder {
    /// Starts a frame of `topic` at the end of `out`. `prev` is the position of the topic's
    /// previous frame in the same segment (0: none).
    pub fn begin(
        out: &mut Vec<u8>,
        topic: &str,
        first_offset: u64,
        timestamp: u64,
        prev: u64,
    ) -> FrameBuilder {
        debug_assert!(!topic.is_empty() && topic.len() <= MAX_TOPIC_LEN);
        let start = out.len();
        out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
        out.extend_from_slice(topic.as_bytes());
        FrameBuilder {
            start,
            topic_len: topic.len(),
            first_offset,
            timestamp,
            prev,
            count: 0,
        }
    }

    /// Appends one entry.
    pub fn push(&mut self, out: &mut Vec<u8>, data: &[u8]) {
        put_varint(out, data.len() as u64);
        out.extend_from_slice(data);
        self.count += 1;
    }

    /// Entries pushed so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Fills in the header and checksums and pads the frame to [`FRAME_ALIGN`]. `salt` is
    /// [`frame_salt`] of the frame's position. The frame must hold at least one entry.
    pub fn finish(self, out: &mut Vec<u8>, salt: u32) {
        debug_assert!(self.count > 0);
        let payload_start = self.start + FRAME_HEADER_LEN + self.topic_len;
        let payload_len = (out.len() - payload_start) as u32;
        let mut hasher = crc32fast::Hasher::new_with_initial(salt);
        hasher.update(&out[payload_start..]);
        let payload_crc = hasher.finalize();
        let h = &mut out[self.start..self.start + FRAME_HEADER_LEN];
        h[4..8].copy_from_slice(&payload_crc.to_le_bytes());
        h[8..12].copy_from_slice(&payload_len.to_le_bytes());
        h[12..16].copy_from_slice(&self.count.to_le_bytes());
        h[16..24].copy_from_slice(&self.first_offset.to_le_bytes());
        h[24..32].copy_from_slice(&self.timestamp.to_le_bytes());
        h[32..40].copy_from_slice(&self.prev.to_le_bytes());
        h[40] = FRAME_KIND_ENTRIES;
        h[41] = self.topic_len as u8;
        let mut hasher = crc32fast::Hasher::new_with_initial(salt);
        hasher.update(&out[self.start + 4..payload_start]);
        let header_crc = hasher.finalize();
        out[self.start..self.start + 4].copy_from_slice(&header_crc.to_le_bytes());
        let padded = (out.len() + FRAME_ALIGN as usize - 1) & !(FRAME_ALIGN as usize - 1);
        out.resize(padded, 0);
    }
}

/// Bytes a frame of a topic of `topic_len` bytes with entries of the given lengths takes on
/// disk, padding included.
#[cfg(any(test, feature = "fuzzing"))]
pub fn frame_len(topic_len: usize, entry_lens: impl Iterator<Item = usize>) -> u64 {
    padded(FRAME_HEADER_LEN as u64 + topic_len as u64 + payload_len(entry_lens))
}

/// Payload bytes of entries of the given lengths (length prefixes included).
pub fn payload_len(entry_lens: impl Iterator<Item = usize>) -> u64 {
    entry_lens
        .map(|l| (varint_len(l as u64) + l) as u64)
        .sum::<u64>()
}

/// `n` rounded up to [`FRAME_ALIGN`].
pub fn padded(n: u64) -> u64 {
    (n + FRAME_ALIGN - 1) & !(FRAME_ALIGN - 1)
}

/// A frame whose header decoded and passed its checksum (and, from [`decode_frame`], its
/// payload too). Positions are absolute within the segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Position of the frame header.
    pub pos: usize,
    /// Topic offset of the first entry.
    pub first_offset: u64,
    /// Number of entries (at least one).
    pub count: u32,
    /// Append time, epoch milliseconds.
    pub timestamp: u64,
    /// Position of the previous frame of the same topic in this segment; 0: none.
    pub prev: u64,
    /// Length of the topic name, which starts at `pos + FRAME_HEADER_LEN`.
    pub topic_len: usize,
    /// Where the payload starts.
    pub payload_start: usize,
    /// Where the payload ends.
    pub end: usize,
    /// Where the next frame starts (`end` padded to [`FRAME_ALIGN`]).
    pub next: usize,
    payload_crc: u32,
}

impl Frame {
    /// Offset one past the last entry.
    pub fn end_offset(&self) -> u64 {
        self.first_offset.saturating_add(u64::from(self.count))
    }

    /// The topic name's bytes (valid UTF-8 once decoded).
    pub fn topic<'a>(&self, segment: &'a [u8]) -> &'a [u8] {
        let start = self.pos + FRAME_HEADER_LEN;
        segment.get(start..start + self.topic_len).unwrap_or(&[])
    }
}

/// Decodes and verifies the header (and topic name) of the frame at `pos` of a segment whose
/// id is `segment_id`, looking no further than `limit`. The payload is not verified: use
/// [`decode_frame`] before reading entries.
pub fn decode_header(
    segment: &[u8],
    pos: usize,
    limit: usize,
    segment_id: u64,
) -> Result<Frame, DecodeError> {
    let region = segment
        .get(..limit.min(segment.len()))
        .ok_or(DecodeError::Short)?;
    let fixed_end = pos
        .checked_add(FRAME_HEADER_LEN)
        .ok_or(DecodeError::Short)?;
    let h = region.get(pos..fixed_end).ok_or(DecodeError::Short)?;
    if h.iter().all(|&x| x == 0) {
        return Err(DecodeError::Zero);
    }
    if !(pos as u64).is_multiple_of(FRAME_ALIGN) {
        return Err(DecodeError::Field("frame position"));
    }
    // Cheap checks first: finding the next frame after damage tries every aligned position.
    if h[40] != FRAME_KIND_ENTRIES || h[42..44] != [0, 0] {
        return Err(DecodeError::Field("frame kind"));
    }
    let topic_len = usize::from(h[41]);
    if topic_len == 0 {
        return Err(DecodeError::Field("topic length"));
    }
    let payload_start = fixed_end + topic_len;
    let topic = region
        .get(fixed_end..payload_start)
        .ok_or(DecodeError::Short)?;
    let mut hasher = crc32fast::Hasher::new_with_initial(frame_salt(segment_id, pos as u64));
    hasher.update(&h[4..]);
    hasher.update(topic);
    if hasher.finalize() != le_u32(h, 0).ok_or(DecodeError::Short)? {
        return Err(DecodeError::Checksum);
    }
    let payload_len = le_u32(h, 8).ok_or(DecodeError::Short)? as usize;
    let count = le_u32(h, 12).ok_or(DecodeError::Short)?;
    let first_offset = le_u64(h, 16).ok_or(DecodeError::Short)?;
    let prev = le_u64(h, 32).ok_or(DecodeError::Short)?;
    if count == 0 {
        return Err(DecodeError::Field("entry count"));
    }
    if first_offset.checked_add(u64::from(count)).is_none() {
        return Err(DecodeError::Field("offset"));
    }
    if prev != 0 && (prev >= pos as u64 || prev < PAGE || prev % FRAME_ALIGN != 0) {
        return Err(DecodeError::Field("previous frame"));
    }
    let name = std::str::from_utf8(topic).map_err(|_| DecodeError::Field("topic name"))?;
    if name.contains('\0') {
        return Err(DecodeError::Field("topic name"));
    }
    let end = payload_start
        .checked_add(payload_len)
        .ok_or(DecodeError::Short)?;
    if end > region.len() {
        return Err(DecodeError::Short);
    }
    Ok(Frame {
        pos,
        first_offset,
        count,
        timestamp: le_u64(h, 24).ok_or(DecodeError::Short)?,
        prev,
        topic_len,
        payload_start,
        end,
        next: padded(end as u64) as usize,
        payload_crc: le_u32(h, 4).ok_or(DecodeError::Short)?,
    })
}

/// Decodes and verifies the whole frame at `pos`: header, topic, payload checksum, and the
/// entries' layout.
pub fn decode_frame(
    segment: &[u8],
    pos: usize,
    limit: usize,
    segment_id: u64,
) -> Result<Frame, DecodeError> {
    let f = decode_header(segment, pos, limit, segment_id)?;
    verify_payload(segment, &f, segment_id)?;
    Ok(f)
}

/// Verifies the payload of a frame [`decode_header`] returned for the same bytes.
pub fn verify_payload(segment: &[u8], f: &Frame, segment_id: u64) -> Result<(), DecodeError> {
    let payload = segment
        .get(f.payload_start..f.end)
        .ok_or(DecodeError::Short)?;
    let mut hasher = crc32fast::Hasher::new_with_initial(frame_salt(segment_id, f.pos as u64));
    hasher.update(payload);
    if hasher.finalize() != f.payload_crc {
        return Err(DecodeError::Checksum);
    }
    // The checksum matched, but the layout must still add up before anyone slices by it.
    let mut p = 0usize;
    for _ in 0..f.count {
        let len = get_varint_u32(payload, &mut p).ok_or(DecodeError::Field("entry length"))?;
        p = p
            .checked_add(len as usize)
            .filter(|&e| e <= payload.len())
            .ok_or(DecodeError::Field("entry length"))?;
    }
    if p != payload.len() {
        return Err(DecodeError::Field("payload length"));
    }
    Ok(())
}

/// Iterates over the entries of a verified frame as byte ranges within the segment.
pub struct FrameEntries<'a> {
    bytes: &'a [u8],
    pos: usize,
    end: usize,
    left: u32,
}

impl<'a> FrameEntries<'a> {
    /// Entries of `frame`, which must have come from [`decode_frame`] on the same bytes.
    pub fn new(bytes: &'a [u8], frame: &Frame) -> Self {
        FrameEntries {
            bytes,
            pos: frame.payload_start,
            end: frame.end,
            left: frame.count,
        }
    }

    /// Starts at byte `pos` with `left` entries to go: resumes a saved cursor.
    pub fn resume(bytes: &'a [u8], frame: &Frame, pos: usize, left: u32) -> Self {
        FrameEntries {
            bytes,
            pos,
            end: frame.end,
            left,
        }
    }

    /// Byte position of the next entry's length prefix.
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl Iterator for FrameEntries<'_> {
    type Item = std::ops::Range<usize>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        let region = self.bytes.get(..self.end)?;
        let mut p = self.pos;
        let len = get_varint_u32(region, &mut p)? as usize;
        let end = p.checked_add(len).filter(|&e| e <= self.end)?;
        self.pos = end;
        self.left -= 1;
        Some(p..end)
    }
}

/// What [`SegmentScan`] found at one position of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanItem {
    /// A valid frame.
    Frame(Frame),
    /// Bytes at `pos` that are no frame, stepped over because a valid frame starts at `next`.
    Skipped {
        /// Where the damage starts.
        pos: usize,
        /// Where the next valid frame starts.
        next: usize,
        /// Why the bytes at `pos` did not decode.
        error: DecodeError,
    },
    /// Nothing more can be read from `pos` on: unwritten space (`Zero`), or damage with no
    /// valid frame after it (a torn tail).
    End {
        /// Where reading stopped.
        pos: usize,
        /// Why it stopped.
        error: DecodeError,
    },
}

/// Walks the frames of a segment from `pos` up to `limit`.
///
/// Zeros where a frame would start end the walk cleanly (never-written space). Anything else
/// that does not decode is damage: the walk tries each later aligned position until a whole
/// frame verifies there and goes on from it (`Skipped`), or reports `End` with the error if
/// none does. Recovery and readers use this one walker, so they agree on what a segment holds.
pub struct SegmentScan<'a> {
    segment: &'a [u8],
    segment_id: u64,
    pos: usize,
    limit: usize,
    done: bool,
}

impl<'a> SegmentScan<'a> {
    /// Scans `segment[pos..limit]`; `segment_id` seeds the checksums.
    pub fn new(segment: &'a [u8], segment_id: u64, pos: usize, limit: usize) -> Self {
        SegmentScan {
            segment,
            segment_id,
            pos,
            limit: limit.min(segment.len()),
            done: false,
        }
    }

    /// The next position after `from` where a whole frame verifies.
    fn resync(&self, from: usize) -> Option<usize> {
        let align = FRAME_ALIGN as usize;
        let mut q = (from + align) & !(align - 1);
        while q + FRAME_HEADER_LEN <= self.limit {
            let h = &self.segment[q..q + FRAME_HEADER_LEN];
            if h[40] == FRAME_KIND_ENTRIES
                && h[41] != 0
                && h[42..44] == [0, 0]
                && decode_frame(self.segment, q, self.limit, self.segment_id).is_ok()
            {
                return Some(q);
            }
            q += align;
        }
        None
    }
}

impl Iterator for SegmentScan<'_> {
    type Item = ScanItem;

    fn next(&mut self) -> Option<ScanItem> {
        if self.done || self.pos >= self.limit {
            self.done = true;
            return None;
        }
        let pos = self.pos;
        match decode_frame(self.segment, pos, self.limit, self.segment_id) {
            Ok(f) => {
                self.pos = f.next;
                Some(ScanItem::Frame(f))
            }
            Err(DecodeError::Zero) => {
                self.done = true;
                Some(ScanItem::End {
                    pos,
                    error: DecodeError::Zero,
                })
            }
            Err(DecodeError::Short) if self.segment[pos..self.limit].iter().all(|&b| b == 0) => {
                self.done = true;
                Some(ScanItem::End {
                    pos,
                    error: DecodeError::Zero,
                })
            }
            Err(error) => match self.resync(pos) {
                Some(next) => {
                    self.pos = next;
                    Some(ScanItem::Skipped { pos, next, error })
                }
                None => {
                    self.done = true;
                    Some(ScanItem::End { pos, error })
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_at(
        pos: usize,
        id: u64,
        topic: &str,
        first: u64,
        entries: &[&[u8]],
        prev: u64,
    ) -> Vec<u8> {
        let mut out = vec![0u8; pos];
        let mut fb = FrameBuilder::begin(&mut out, topic, first, 42, prev);
        for e in entries {
            fb.push(&mut out, e);
        }
        fb.finish(&mut out, frame_salt(id, pos as u64));
        out
    }

    #[test]
    fn segment_header_roundtrip_and_copy() {
        let h = SegmentHeader {
            segment_id: 1,
            created_ms: 2,
            len: 3,
            log_id: 4,
        };
        let mut page = h.encode_page();
        assert_eq!(SegmentHeader::decode_page(&page), Ok(h));
        page[20] ^= 1;
        assert_eq!(SegmentHeader::decode(&page), Err(DecodeError::Checksum));
        assert_eq!(SegmentHeader::decode_page(&page), Ok(h), "the copy");
        page[SEGMENT_HEADER_COPY + 20] ^= 1;
        assert_eq!(
            SegmentHeader::decode_page(&page),
            Err(DecodeError::Checksum)
        );
        assert_eq!(
            SegmentHeader::decode_page(&[0u8; 100]),
            Err(DecodeError::Zero)
        );
    }

    #[test]
    fn frames_roundtrip_and_are_bound_to_their_position() {
        let img = frame_at(8192, 9, "orders", 7, &[b"a", b"", &[1u8; 300]], 4096);
        assert_eq!(img.len() % 8, 0);
        let f = decode_frame(&img, 8192, img.len(), 9).unwrap();
        assert_eq!(
            (f.first_offset, f.count, f.timestamp, f.prev),
            (7, 3, 42, 4096)
        );
        assert_eq!(f.topic(&img), b"orders");
        assert_eq!(f.next, img.len());
        assert_eq!(
            frame_len(6, [1usize, 0, 300].into_iter()),
            (img.len() - 8192) as u64
        );
        let got: Vec<&[u8]> = FrameEntries::new(&img, &f).map(|r| &img[r]).collect();
        assert_eq!(got, [&b"a"[..], b"", &[1u8; 300]]);
        // Another segment, or another position: no checksum holds.
        assert_eq!(
            decode_frame(&img, 8192, img.len(), 8),
            Err(DecodeError::Checksum)
        );
        let mut moved = vec![0u8; 8];
        moved.extend_from_slice(&img);
        assert!(decode_frame(&moved, 8200, moved.len(), 9).is_err());
        // Cut short.
        assert_eq!(
            decode_frame(&img, 8192, img.len() - 8, 9),
            Err(DecodeError::Short)
        );
    }

    #[test]
    fn scan_steps_over_damage_and_stops_at_zeros() {
        let mut img = frame_at(4096, 1, "t", 0, &[b"one"], 0);
        let second = img.len();
        img = {
            let mut v = frame_at(second, 1, "t", 1, &[b"two"], 4096);
            v[..second].copy_from_slice(&img);
            v
        };
        let third = img.len();
        img = {
            let mut v = frame_at(third, 1, "u", 0, &[b"three"], 0);
            v[..third].copy_from_slice(&img);
            v
        };
        img.extend_from_slice(&[0u8; 64]);
        let kinds = |img: &[u8]| -> Vec<(char, usize)> {
            SegmentScan::new(img, 1, 4096, img.len())
                .map(|i| match i {
                    ScanItem::Frame(f) => ('F', f.pos),
                    ScanItem::Skipped { pos, .. } => ('S', pos),
                    ScanItem::End { pos, error } => {
                        (if error == DecodeError::Zero { 'Z' } else { 'E' }, pos)
                    }
                })
                .collect()
        };
        let end = img.len() - 64;
        assert_eq!(
            kinds(&img),
            [('F', 4096), ('F', second), ('F', third), ('Z', end)]
        );
        let mut damaged = img.clone();
        damaged[second + 46] ^= 1; // in its payload
        assert_eq!(
            kinds(&damaged),
            [('F', 4096), ('S', second), ('F', third), ('Z', end)]
        );
        let mut torn = img.clone();
        torn[third + 46] ^= 1;
        assert_eq!(kinds(&torn), [('F', 4096), ('F', second), ('E', third)]);
    }
}
