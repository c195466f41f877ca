//! Reading a topic: a cursor that walks the topic's blocks and frames up to the visible offset.
//!
//! Entries are handed out as `Bytes` slices of the segment's memory map: no copy. A cursor
//! remembers the frame it is in, so sequential reads verify each frame's checksum once and cost
//! O(1) per entry. Damaged frames are stepped over with the same [`FrameScan`] rules recovery
//! uses; entries never come back unverified.

use bytes::Bytes;

use crate::format::{Frame, FrameEntries, FrameScan, ScanItem};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::storage::Block;
use crate::topic::Topic;

/// One entry of a topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Position in its topic: dense, from 0.
    pub offset: u64,
    /// The payload; for entries read from disk, a zero-copy view of the memory-mapped file.
    pub data: Bytes,
}

/// Where a reader is inside a verified frame.
#[derive(Clone, Debug)]
struct InFrame {
    block: Arc<Block>,
    bytes: Bytes,
    frame: Frame,
    /// Byte position of the next entry's length prefix.
    pos: usize,
    /// Entries left in the frame.
    left: u32,
    /// Offset of the next entry.
    offset: u64,
}

/// A read position in one topic. Cloning it gives an independent position (a peek).
#[derive(Clone, Debug, Default)]
pub(crate) struct Cursor {
    /// Next offset to deliver.
    pub next: u64,
    at: Option<InFrame>,
}

impl Cursor {
    pub fn new(next: u64) -> Cursor {
        Cursor { next, at: None }
    }

    /// Moves to `next`, dropping the cached frame position.
    pub fn reset(&mut self, next: u64) {
        self.next = next;
        self.at = None;
    }

    /// Appends to `out` the entries from `self.next` on that are visible, stopping before the
    /// sum of their lengths would pass `max_bytes` (the first entry always comes) or at
    /// `max_entries`. Advances the cursor past what it returned.
    ///
    /// Damaged frames are stepped over silently: recovery found, logged and counted them.
    pub fn read(
        &mut self,
        topic: &Topic,
        max_bytes: usize,
        max_entries: usize,
        out: &mut Vec<Entry>,
    ) {
        let visible = topic.visible();
        // Below `oldest` (a limit deleted it since the caller looked): nothing, so the caller
        // reports `Truncated` instead of this skipping to what is left.
        if self.next < topic.oldest.load(Ordering::Acquire) {
            return;
        }
        let mut total = 0usize;
        let start_len = out.len();
        while out.len() - start_len < max_entries && self.next < visible {
            if !self.position(topic) {
                break;
            }
            let Some(at) = self.at.as_mut() else { break };
            if at.offset >= visible {
                break;
            }
            let mut it = FrameEntries::resume(&at.bytes, &at.frame, at.pos, at.left);
            let Some(range) = it.next() else {
                // Cannot happen for a verified frame; give up on the rest of it.
                at.left = 0;
                continue;
            };
            let offset = at.offset;
            // A jump over a range retention deleted is for the caller to report, not to skip.
            if offset > self.next
                && (topic.hole_end(self.next).is_some()
                    || self.next < topic.oldest.load(Ordering::Acquire))
            {
                break;
            }
            if offset >= self.next {
                if out.len() > start_len && total + range.len() > max_bytes {
                    break;
                }
                total += range.len();
                out.push(Entry {
                    offset,
                    data: at.bytes.slice(range),
                });
                self.next = offset + 1;
            }
            at.pos = it.position();
            at.left -= 1;
            at.offset += 1;
        }
    }

    /// Positions `self.at` in the frame holding `self.next` (or the first entry after it).
    fn position(&mut self, topic: &Topic) -> bool {
        let usable = |a: &InFrame, next: u64| {
            a.left > 0 && a.offset <= next && !a.block.segment.deleted.load(Ordering::Acquire)
        };
        if self
            .at
            .as_ref()
            .is_some_and(|a| a.block.segment.deleted.load(Ordering::Acquire))
        {
            self.at = None; // let go of the deleted file's mapping
        }
        if !self.at.as_ref().is_some_and(|a| usable(a, self.next)) {
            match self.seek_frame(topic) {
                Some(found) => self.at = Some(found),
                None => return false,
            }
        }
        true
    }

    fn seek_frame(&mut self, topic: &Topic) -> Option<InFrame> {
        let blocks = topic.blocks();
        // Continue after the cached frame when it is behind us, else locate by offset.
        // Blocks are found again by identity, not index: retention may have removed earlier
        // ones since the cursor was here.
        let cached = self.at.take().and_then(|a| {
            let idx = blocks.iter().position(|b| Arc::ptr_eq(b, &a.block))?;
            (a.frame.end_offset() <= self.next || a.left == 0)
                .then(|| (idx, a.frame.end, a.frame.end_offset()))
        });
        let (mut idx, mut pos, mut expected) = match cached {
            Some(c) => c,
            None => {
                let idx = blocks
                    .partition_point(|b| b.first_offset <= self.next)
                    .saturating_sub(1);
                let b = blocks.get(idx)?;
                (idx, b.data_start, b.first_offset)
            }
        };
        loop {
            let block = blocks.get(idx)?.clone();
            let bytes = block.bytes();
            for item in FrameScan::new(&bytes, pos, bytes.len(), block.salt, expected) {
                match item {
                    ScanItem::Frame(f) if f.end_offset() <= self.next => {}
                    ScanItem::Frame(f) => {
                        return Some(InFrame {
                            block: block.clone(),
                            pos: f.payload_start,
                            left: f.count,
                            offset: f.first_offset,
                            frame: f,
                            bytes,
                        });
                    }
                    ScanItem::Skipped {
                        pos: p,
                        next,
                        error,
                    } => {
                        // Recovery found, logged and counted it already.
                        tracing::debug!(path = %block.segment.path.display(), position = block.pos + p as u64, next, %error, "skipping damaged frame");
                    }
                    // The written part of a block only ends in a damaged frame where recovery cut
                    // a torn tail; either way the block has nothing more.
                    ScanItem::End { .. } => {}
                }
            }
            // Exhausted this block: the next one, if the writer has moved on.
            if idx + 1 >= blocks.len() {
                return None;
            }
            idx += 1;
            let b = blocks.get(idx)?;
            pos = b.data_start;
            expected = b.first_offset;
        }
    }
}
