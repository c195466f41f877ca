//! The bytes on disk: segment headers, block headers and frames.
//!
//! This module is pure and synchronous: it encodes into caller-provided buffers and decodes from
//! byte slices. Every decoder takes untrusted input (a file may be torn, zeroed, bit-flipped or
//! written by someone else) and returns an error value instead of panicking; all arithmetic on
//! decoded numbers is checked and every slice access goes through `get`.
//!
//! `docs/FORMAT.md` documents every byte; keep the two in step.
//!
//! ```text
//! segment file  = segment header (padded to 4096) , block* , unwritten space
//! block         = block header , topic name , padding to 8 , frame* , zeros
//! frame         = frame header (24 bytes) , payload
//! payload       = ( varint(len) , len bytes )*      -- `count` entries
//! ```
//!
//! Every block starts at a multiple of [`PAGE`] and its length is a multiple of [`PAGE`], so
//! recovery can find blocks that follow a block that was allocated but never written by probing
//! page boundaries. Block headers and frames are checksummed with CRC32 seeded by a salt derived
//! from the segment's random id and the block's position: stale bytes from another file or
//! another position never validate, so torn-tail detection does not rely on zeroed space.

use std::fmt;

/// Alignment of blocks inside a segment file, and size of the segment header area.
pub const PAGE: u64 = 4096;
/// Magic at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"WALRUSAS";
/// Magic at the start of every block.
pub const BLOCK_MAGIC: [u8; 4] = *b"WBLK";
/// On-disk format version written by this crate (2: segment headers carry the log id).
pub const FORMAT_VERSION: u16 = 2;
/// Bytes of the segment header that carry data (the rest of the first page is zero).
pub const SEGMENT_HEADER_LEN: usize = 56;
/// Fixed part of a block header; the topic name follows.
pub const BLOCK_HEADER_FIXED: usize = 40;
/// Size of a frame header.
pub const FRAME_HEADER_LEN: usize = 24;
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

/// The checksum seed of a block: ties every block header and frame to one file and one position.
pub fn block_salt(segment_id: u64, block_pos: u64) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&segment_id.to_le_bytes());
    h.update(&block_pos.to_le_bytes());
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

    /// Decodes a segment header from the start of a file.
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
// Block header

/// The header that starts every block; a block holds frames of one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockHeader<'a> {
    /// Id of the segment the block lives in.
    pub segment_id: u64,
    /// Length of the block in bytes, a multiple of [`PAGE`].
    pub len: u64,
    /// Topic offset of the first entry written into the block.
    pub first_offset: u64,
    /// Topic name, 1..=255 bytes of UTF-8.
    pub topic: &'a str,
}

/// Size of the block header for a topic name of `topic_len` bytes: where its first frame starts.
pub fn block_header_len(topic_len: usize) -> usize {
    (BLOCK_HEADER_FIXED + topic_len + 7) & !7
}

impl<'a> BlockHeader<'a> {
    /// Appends the encoded header (with padding) to `out`. `block_pos` seeds the checksum.
    pub fn encode(&self, block_pos: u64, out: &mut Vec<u8>) {
        let start = out.len();
        let topic = self.topic.as_bytes();
        debug_assert!(!topic.is_empty() && topic.len() <= MAX_TOPIC_LEN);
        out.extend_from_slice(&BLOCK_MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(topic.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.segment_id.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&self.first_offset.to_le_bytes());
        let mut h = crc32fast::Hasher::new_with_initial(block_salt(self.segment_id, block_pos));
        h.update(&out[start..start + 32]);
        h.update(topic);
        out.extend_from_slice(&h.finalize().to_le_bytes());
        out.extend_from_slice(&[0u8; 4]);
        out.extend_from_slice(topic);
        out.resize(start + block_header_len(topic.len()), 0);
    }

    /// Decodes the block header at the start of `b`, which sits at `block_pos` in its file.
    pub fn decode(b: &'a [u8], block_pos: u64) -> Result<BlockHeader<'a>, DecodeError> {
        let fixed = b.get(..BLOCK_HEADER_FIXED).ok_or(DecodeError::Short)?;
        if fixed.iter().all(|&x| x == 0) {
            return Err(DecodeError::Zero);
        }
        if fixed[0..4] != BLOCK_MAGIC {
            return Err(DecodeError::Magic);
        }
        let version = le_u16(fixed, 4).ok_or(DecodeError::Short)?;
        let topic_len = le_u16(fixed, 6).ok_or(DecodeError::Short)? as usize;
        if topic_len == 0 || topic_len > MAX_TOPIC_LEN {
            return Err(DecodeError::Field("topic length"));
        }
        let segment_id = le_u64(fixed, 8).ok_or(DecodeError::Short)?;
        let topic = b
            .get(BLOCK_HEADER_FIXED..BLOCK_HEADER_FIXED + topic_len)
            .ok_or(DecodeError::Short)?;
        let crc = le_u32(fixed, 32).ok_or(DecodeError::Short)?;
        let mut h = crc32fast::Hasher::new_with_initial(block_salt(segment_id, block_pos));
        h.update(&fixed[0..32]);
        h.update(topic);
        if h.finalize() != crc {
            return Err(DecodeError::Checksum);
        }
        if version != FORMAT_VERSION {
            return Err(DecodeError::Version(version));
        }
        let padding = b
            .get(BLOCK_HEADER_FIXED + topic_len..block_header_len(topic_len))
            .ok_or(DecodeError::Short)?;
        // Reserved bytes and padding are outside the checksum: they must be zero.
        if fixed[36..40] != [0; 4] || padding.iter().any(|&x| x != 0) {
            return Err(DecodeError::Field("reserved bytes"));
        }
        let len = le_u64(fixed, 16).ok_or(DecodeError::Short)?;
        if len == 0 || len % PAGE != 0 || (len as usize) < block_header_len(topic_len) {
            return Err(DecodeError::Field("block length"));
        }
        let topic = std::str::from_utf8(topic).map_err(|_| DecodeError::Field("topic name"))?;
        if topic.contains('\0') {
            return Err(DecodeError::Field("topic name"));
        }
        Ok(BlockHeader {
            segment_id,
            len,
            first_offset: le_u64(fixed, 24).ok_or(DecodeError::Short)?,
            topic,
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

/// Encodes frames into a buffer: reserve a header, push entries, then seal.
///
/// The writer actor reuses one `FrameWriter` buffer for every group, so the coalesced path does
/// not allocate once the buffer has grown to its working size.
pub struct FrameBuilder {
    start: usize,
    first_offset: u64,
    count: u32,
}

impl FrameBuilder {
    /// Starts a frame at the end of `out`.
    pub fn begin(out: &mut Vec<u8>, first_offset: u64) -> FrameBuilder {
        let start = out.len();
        out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
        FrameBuilder {
            start,
            first_offset,
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

    /// Fills in the header and checksum. The frame must hold at least one entry.
    pub fn finish(self, out: &mut [u8], salt: u32) {
        debug_assert!(self.count > 0);
        let payload_len = (out.len() - self.start - FRAME_HEADER_LEN) as u32;
        let h = &mut out[self.start..self.start + FRAME_HEADER_LEN];
        h[4..8].copy_from_slice(&payload_len.to_le_bytes());
        h[8..16].copy_from_slice(&self.first_offset.to_le_bytes());
        h[16..20].copy_from_slice(&self.count.to_le_bytes());
        h[20] = FRAME_KIND_ENTRIES;
        let mut hasher = crc32fast::Hasher::new_with_initial(salt);
        hasher.update(&out[self.start + 4..]);
        let crc = hasher.finalize();
        out[self.start..self.start + 4].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Bytes a frame with entries of the given lengths takes on disk.
pub fn frame_len(entry_lens: impl Iterator<Item = usize>) -> u64 {
    FRAME_HEADER_LEN as u64
        + entry_lens
            .map(|l| (varint_len(l as u64) + l) as u64)
            .sum::<u64>()
}

/// A frame that decoded and passed its checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Position of the frame header within the block.
    pub pos: usize,
    /// Topic offset of the first entry.
    pub first_offset: u64,
    /// Number of entries (at least one).
    pub count: u32,
    /// Where the payload starts within the block.
    pub payload_start: usize,
    /// Where the frame ends within the block (next frame's position).
    pub end: usize,
}

impl Frame {
    /// Offset one past the last entry.
    pub fn end_offset(&self) -> u64 {
        self.first_offset.saturating_add(u64::from(self.count))
    }
}

/// Decodes and verifies the frame at `pos` in `block`, looking no further than `limit`.
pub fn decode_frame(
    block: &[u8],
    pos: usize,
    limit: usize,
    salt: u32,
) -> Result<Frame, DecodeError> {
    let region = block.get(..limit).ok_or(DecodeError::Short)?;
    let h = region
        .get(
            pos..pos
                .checked_add(FRAME_HEADER_LEN)
                .ok_or(DecodeError::Short)?,
        )
        .ok_or(DecodeError::Short)?;
    if h.iter().all(|&x| x == 0) {
        return Err(DecodeError::Zero);
    }
    let payload_len = le_u32(h, 4).ok_or(DecodeError::Short)? as usize;
    let payload_start = pos + FRAME_HEADER_LEN;
    let end = payload_start
        .checked_add(payload_len)
        .ok_or(DecodeError::Short)?;
    let payload = region.get(payload_start..end).ok_or(DecodeError::Short)?;
    let mut hasher = crc32fast::Hasher::new_with_initial(salt);
    hasher.update(&h[4..]);
    hasher.update(payload);
    if hasher.finalize() != le_u32(h, 0).ok_or(DecodeError::Short)? {
        return Err(DecodeError::Checksum);
    }
    if h[20] != FRAME_KIND_ENTRIES || h[21..24] != [0, 0, 0] {
        return Err(DecodeError::Field("frame kind"));
    }
    let count = le_u32(h, 16).ok_or(DecodeError::Short)?;
    if count == 0 {
        return Err(DecodeError::Field("entry count"));
    }
    let first_offset = le_u64(h, 8).ok_or(DecodeError::Short)?;
    if first_offset.checked_add(u64::from(count)).is_none() {
        return Err(DecodeError::Field("offset"));
    }
    // The checksum matched, but the layout must still add up before anyone slices by it.
    let mut p = 0usize;
    for _ in 0..count {
        let len = get_varint_u32(payload, &mut p).ok_or(DecodeError::Field("entry length"))?;
        p = p
            .checked_add(len as usize)
            .filter(|&e| e <= payload.len())
            .ok_or(DecodeError::Field("entry length"))?;
    }
    if p != payload.len() {
        return Err(DecodeError::Field("payload length"));
    }
    Ok(Frame {
        pos,
        first_offset,
        count,
        payload_start,
        end,
    })
}

/// Iterates over the entries of a verified frame as byte ranges within the block.
pub struct FrameEntries<'a> {
    block: &'a [u8],
    pos: usize,
    end: usize,
    left: u32,
}

impl<'a> FrameEntries<'a> {
    /// Entries of `frame`, which must have come from [`decode_frame`] on the same `block`.
    pub fn new(block: &'a [u8], frame: &Frame) -> Self {
        FrameEntries {
            block,
            pos: frame.payload_start,
            end: frame.end,
            left: frame.count,
        }
    }

    /// Starts at byte `pos` of the block with `left` entries to go: resumes a saved cursor.
    pub fn resume(block: &'a [u8], frame: &Frame, pos: usize, left: u32) -> Self {
        FrameEntries {
            block,
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
        let region = self.block.get(..self.end)?;
        let mut p = self.pos;
        let len = get_varint_u32(region, &mut p)? as usize;
        let end = p.checked_add(len).filter(|&e| e <= self.end)?;
        self.pos = end;
        self.left -= 1;
        Some(p..end)
    }
}

/// What [`FrameScan`] found at one position of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanItem {
    /// A valid frame.
    Frame(Frame),
    /// A damaged frame at `pos`, skipped because a valid frame was located at `next`.
    Skipped {
        /// Where the damaged frame starts.
        pos: usize,
        /// Where the next valid frame starts.
        next: usize,
        /// Why it failed.
        error: DecodeError,
    },
    /// Nothing more can be read from `pos` on: unwritten space (`Zero`), or damage with no
    /// locatable frame after it.
    End {
        /// Where reading stopped.
        pos: usize,
        /// Why it stopped.
        error: DecodeError,
    },
}

/// Walks the frames of a block from `pos`, expecting the next entry to be `expected`.
///
/// A frame is accepted when its checksum holds and its first offset is `expected` (or, after a
/// damaged frame was skipped, not below it). A damaged frame is skipped only when the length in its
/// header leads to a valid frame; otherwise the rest of the block is given up. Both recovery and
/// readers use this one function, so they agree on what a block holds.
pub struct FrameScan<'a> {
    block: &'a [u8],
    pos: usize,
    limit: usize,
    salt: u32,
    expected: u64,
    relaxed: bool,
    done: bool,
}

impl<'a> FrameScan<'a> {
    /// Scans `block[pos..limit]`.
    pub fn new(block: &'a [u8], pos: usize, limit: usize, salt: u32, expected: u64) -> Self {
        FrameScan {
            block,
            pos,
            limit: limit.min(block.len()),
            salt,
            expected,
            relaxed: false,
            done: false,
        }
    }

    fn accept(&self, f: &Frame) -> bool {
        if self.relaxed {
            f.first_offset >= self.expected
        } else {
            f.first_offset == self.expected
        }
    }
}

impl Iterator for FrameScan<'_> {
    type Item = ScanItem;

    fn next(&mut self) -> Option<ScanItem> {
        if self.done {
            return None;
        }
        if self.limit.saturating_sub(self.pos) < FRAME_HEADER_LEN {
            self.done = true;
            return if self.pos >= self.limit {
                None
            } else {
                let rest = &self.block[self.pos..self.limit];
                let error = if rest.iter().all(|&b| b == 0) {
                    DecodeError::Zero
                } else {
                    DecodeError::Short
                };
                Some(ScanItem::End {
                    pos: self.pos,
                    error,
                })
            };
        }
        let here = self.pos;
        let error = match decode_frame(self.block, here, self.limit, self.salt) {
            Ok(f) if self.accept(&f) => {
                self.pos = f.end;
                self.expected = f.end_offset();
                self.relaxed = false;
                return Some(ScanItem::Frame(f));
            }
            Ok(_) => DecodeError::Field("frame offset"),
            Err(e) => e,
        };
        self.done = true;
        if error == DecodeError::Zero {
            return Some(ScanItem::End { pos: here, error });
        }
        // Try to step over the damaged frame using the length its header claims.
        let claimed = le_u32(self.block, here + 4).map(|l| l as usize);
        if let Some(next) = claimed
            .and_then(|l| here.checked_add(FRAME_HEADER_LEN)?.checked_add(l))
            .filter(|&n| n < self.limit)
            && let Ok(f) = decode_frame(self.block, next, self.limit, self.salt)
            && f.first_offset >= self.expected
        {
            self.done = false;
            self.relaxed = true;
            self.pos = next;
            return Some(ScanItem::Skipped {
                pos: here,
                next,
                error,
            });
        }
        Some(ScanItem::End { pos: here, error })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_with(frames: &[&[&[u8]]], salt: u32) -> (Vec<u8>, Vec<usize>) {
        let mut out = Vec::new();
        let mut starts = Vec::new();
        let mut off = 0u64;
        for entries in frames {
            starts.push(out.len());
            let mut fb = FrameBuilder::begin(&mut out, off);
            for e in *entries {
                fb.push(&mut out, e);
            }
            off += u64::from(fb.count());
            fb.finish(&mut out, salt);
        }
        (out, starts)
    }

    #[test]
    fn segment_header_roundtrip_and_damage() {
        let h = SegmentHeader {
            segment_id: 7,
            created_ms: 1234,
            len: 1 << 20,
            log_id: 99,
        };
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        h.encode(&mut b);
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        for i in 0..52 {
            let mut c = b;
            c[i] ^= 1;
            assert!(SegmentHeader::decode(&c).is_err(), "flip at {i}");
        }
        assert_eq!(
            SegmentHeader::decode(&[0; SEGMENT_HEADER_LEN]),
            Err(DecodeError::Zero)
        );
        assert_eq!(SegmentHeader::decode(&b[..10]), Err(DecodeError::Short));
    }

    #[test]
    fn block_header_roundtrip_is_position_bound() {
        let h = BlockHeader {
            segment_id: 99,
            len: 8 * PAGE,
            first_offset: 42,
            topic: "orders",
        };
        let mut b = Vec::new();
        h.encode(4096, &mut b);
        assert_eq!(b.len(), block_header_len(6));
        assert_eq!(b.len() % 8, 0);
        assert_eq!(BlockHeader::decode(&b, 4096), Ok(h));
        // The same bytes at another position do not validate.
        assert_eq!(BlockHeader::decode(&b, 8192), Err(DecodeError::Checksum));
    }

    #[test]
    fn reserved_bytes_must_be_zero() {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        SegmentHeader {
            segment_id: 1,
            created_ms: 2,
            len: 3,
            log_id: 4,
        }
        .encode(&mut b);
        b[53] = 1;
        assert_eq!(
            SegmentHeader::decode(&b),
            Err(DecodeError::Field("reserved bytes"))
        );
        let mut v = Vec::new();
        BlockHeader {
            segment_id: 1,
            len: PAGE,
            first_offset: 0,
            topic: "t",
        }
        .encode(0, &mut v);
        let last = v.len() - 1; // padding after the topic name
        v[last] = 1;
        assert_eq!(
            BlockHeader::decode(&v, 0),
            Err(DecodeError::Field("reserved bytes"))
        );
    }

    #[test]
    fn frames_roundtrip() {
        let salt = block_salt(1, 4096);
        let big = vec![7u8; 300];
        let (b, _) = block_with(&[&[b"a", b"", &big], &[b"zz"]], salt);
        let items: Vec<_> = FrameScan::new(&b, 0, b.len(), salt, 0).collect();
        assert_eq!(items.len(), 2);
        let ScanItem::Frame(f0) = items[0] else {
            panic!("{items:?}")
        };
        assert_eq!((f0.first_offset, f0.count), (0, 3));
        let got: Vec<&[u8]> = FrameEntries::new(&b, &f0).map(|r| &b[r]).collect();
        assert_eq!(got, vec![&b"a"[..], b"", &big[..]]);
        let ScanItem::Frame(f1) = items[1] else {
            panic!()
        };
        assert_eq!((f1.first_offset, f1.count), (3, 1));
        assert_eq!(
            frame_len([1usize, 0, 300].into_iter()),
            (f0.end - f0.pos) as u64
        );
    }

    #[test]
    fn scan_skips_a_damaged_frame_when_the_next_is_locatable() {
        let salt = block_salt(1, 0);
        let (mut b, starts) = block_with(&[&[b"one"], &[b"two"], &[b"three"]], salt);
        b[starts[1] + FRAME_HEADER_LEN + 1] ^= 0xff; // payload byte of frame 2
        let items: Vec<_> = FrameScan::new(&b, 0, b.len(), salt, 0).collect();
        assert!(matches!(items[0], ScanItem::Frame(_)));
        assert!(
            matches!(items[1], ScanItem::Skipped { pos, next, .. } if pos == starts[1] && next == starts[2])
        );
        assert!(matches!(items[2], ScanItem::Frame(f) if f.first_offset == 2));
        assert_eq!(items.len(), 3);
    }

    #[test]
    fn scan_stops_when_the_length_is_damaged() {
        let salt = block_salt(1, 0);
        let (mut b, starts) = block_with(&[&[b"one"], &[b"two"], &[b"three"]], salt);
        b[starts[1] + 4] ^= 0x40; // payload length of frame 2
        let items: Vec<_> = FrameScan::new(&b, 0, b.len(), salt, 0).collect();
        assert_eq!(items.len(), 2);
        assert!(
            matches!(items[1], ScanItem::End { pos, error: DecodeError::Checksum | DecodeError::Short } if pos == starts[1])
        );
    }

    #[test]
    fn scan_treats_zeros_and_torn_tails_as_the_end() {
        let salt = block_salt(3, 0);
        let (mut b, starts) = block_with(&[&[b"one"], &[b"two"]], salt);
        let full = b.len();
        b.resize(full + 100, 0);
        let items: Vec<_> = FrameScan::new(&b, 0, b.len(), salt, 0).collect();
        assert!(matches!(
            items[2],
            ScanItem::End {
                error: DecodeError::Zero,
                ..
            }
        ));
        // Tear the last frame at every byte: never a panic, never a frame past the tear.
        for cut in starts[1]..full {
            let items: Vec<_> = FrameScan::new(&b[..cut], 0, cut, salt, 0).collect();
            let frames = items
                .iter()
                .filter(|i| matches!(i, ScanItem::Frame(_)))
                .count();
            assert_eq!(frames, 1, "cut at {cut}");
        }
    }

    #[test]
    fn stale_frames_from_another_block_do_not_validate() {
        let (b, _) = block_with(&[&[b"one"]], block_salt(1, 0));
        let items: Vec<_> = FrameScan::new(&b, 0, b.len(), block_salt(2, 0), 0).collect();
        assert!(matches!(
            items[0],
            ScanItem::End {
                error: DecodeError::Checksum,
                ..
            }
        ));
    }

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes() {
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for len in 0..400usize {
            let mut b = vec![0u8; len];
            for byte in b.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *byte = x as u8;
            }
            let _ = SegmentHeader::decode(&b);
            let _ = BlockHeader::decode(&b, 0);
            let _ = FrameScan::new(&b, 0, b.len(), 0, 0).count();
            let _ = decode_frame(&b, 3, b.len(), 0);
        }
    }

    #[test]
    fn varints() {
        for n in [0u64, 1, 127, 128, 300, 16383, 16384, u32::MAX as u64] {
            let mut v = Vec::new();
            put_varint(&mut v, n);
            assert_eq!(v.len(), varint_len(n));
            let mut p = 0;
            assert_eq!(get_varint_u32(&v, &mut p), Some(n as u32));
            assert_eq!(p, v.len());
        }
        let mut p = 0;
        assert_eq!(get_varint_u32(&[0xff; 6], &mut p), None);
    }
}
