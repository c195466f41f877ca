//! Reading a topic: a cursor that walks the topic's spans and frames up to the visible offset.
//!
//! Entries are handed out as `Bytes` slices of the segment's memory map: no copy. A topic's
//! frames in a segment are interleaved with other topics' frames; each frame names the
//! position of the topic's previous frame in the segment, so the cursor finds the frames it
//! needs by walking that chain back from the span's last published frame, reading no other
//! topic's bytes. It keeps the positions it found, so sequential reads verify each frame once
//! and cost O(1) per entry. Where the chain cannot be followed (recovery stepped over damage,
//! or a frame no longer verifies), the cursor walks the segment instead with the same
//! [`SegmentScan`] recovery uses; entries never come back unverified.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::format::{self, Frame, FrameEntries, ScanItem, SegmentScan};
use crate::storage::Span;
use crate::topic::Topic;

/// One entry of a topic.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Entry {
    /// Position in its topic: offsets start at 0 and go up by one per entry appended; the only
    /// offsets that hold no entry are those of appends that failed, or of entries lost to
    /// damage.
    pub offset: u64,
    /// When it was appended: milliseconds since the Unix epoch, as the log's clock read when
    /// its group was written (entries appended together share one). Never lower than an
    /// earlier entry's of the same log, even if the system clock steps back.
    pub timestamp: u64,
    /// The payload; for entries read from disk, a zero-copy view of the memory-mapped file.
    pub data: Bytes,
}

/// Where a reader is inside a verified frame.
#[derive(Clone, Debug)]
struct InFrame {
    span: Arc<Span>,
    /// The whole segment map (entries are slices of it).
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
    /// Positions of the frames of `at`'s span after `at`, found by the last chain walk, and
    /// how many of them were used. Shared, so cloning a cursor stays cheap.
    ahead: Arc<[u64]>,
    used: usize,
}

impl Cursor {
    pub fn new(next: u64) -> Cursor {
        Cursor {
            next,
            ..Cursor::default()
        }
    }

    /// Moves to `next`, dropping the cached frame position.
    pub fn reset(&mut self, next: u64) {
        self.next = next;
        self.at = None;
        self.ahead = Arc::from([]);
        self.used = 0;
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
                    timestamp: at.frame.timestamp,
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
        if self
            .at
            .as_ref()
            .is_some_and(|a| a.span.segment.deleted.load(Ordering::Acquire))
        {
            self.reset(self.next); // let go of the deleted file's mapping
        }
        let usable = |a: &InFrame, next: u64| a.left > 0 && a.offset <= next;
        if !self.at.as_ref().is_some_and(|a| usable(a, self.next)) {
            match self.seek_frame(topic) {
                Some(found) => self.at = Some(found),
                None => return false,
            }
        }
        true
    }

    fn seek_frame(&mut self, topic: &Topic) -> Option<InFrame> {
        // Spans are looked up under the topic's lock, frames walked without it: a long walk
        // must not hold up the writer adding a span, nor retention removing one.
        let cached = self.at.take();
        let (mut span, mut after) = {
            let spans = topic.spans();
            // Continue after the cached frame when it is behind us, else locate by offset.
            // Spans are found again by identity, not index: retention may have removed
            // earlier ones since the cursor was here.
            let found = cached
                .filter(|a| a.frame.end_offset() <= self.next || a.left == 0)
                .and_then(|a| {
                    let i = find(&spans, &a.span)?;
                    Some((spans[i].clone(), Some(a.frame.pos as u64)))
                });
            match found {
                Some(f) => f,
                None => {
                    self.ahead = Arc::from([]);
                    self.used = 0;
                    let idx = spans
                        .partition_point(|s| s.first_offset <= self.next)
                        .saturating_sub(1);
                    (spans.get(idx)?.clone(), None)
                }
            }
        };
        loop {
            let bytes = span.segment.map.clone();
            loop {
                let pos = match self.ahead.get(self.used) {
                    Some(&p) => {
                        self.used += 1;
                        p
                    }
                    None => {
                        let found = frames_after(&span, &topic.name, after, self.next);
                        if found.is_empty() {
                            break;
                        }
                        self.ahead = found.into();
                        self.used = 0;
                        continue;
                    }
                };
                after = Some(pos);
                let f = match format::decode_frame(
                    &bytes,
                    pos as usize,
                    bytes.len(),
                    span.segment.id,
                ) {
                    Ok(f) => f,
                    Err(error) => {
                        // Verified once (by the writer's own checksum, or by recovery): the
                        // file changed under us. Walk the segment instead from here on.
                        tracing::warn!(path = %span.segment.path.display(), position = pos, %error, "frame no longer verifies; skipped");
                        span.broken.store(true, Ordering::Release);
                        continue;
                    }
                };
                if f.end_offset() <= self.next {
                    continue;
                }
                return Some(InFrame {
                    span,
                    pos: f.payload_start,
                    left: f.count,
                    offset: f.first_offset,
                    frame: f,
                    bytes,
                });
            }
            // Exhausted this span: the next one, if the writer has moved on (found by offset,
            // so also when retention removed this one meanwhile).
            span = {
                let spans = topic.spans();
                let i = spans.partition_point(|s| s.first_offset <= span.first_offset);
                spans.get(i)?.clone()
            };
            after = None;
            self.ahead = Arc::from([]);
            self.used = 0;
        }
    }
}

/// The index of `span` in `spans` (ordered by first offset), by identity.
fn find(spans: &[Arc<Span>], span: &Arc<Span>) -> Option<usize> {
    let i = spans.partition_point(|s| s.first_offset < span.first_offset);
    spans[i..]
        .iter()
        .take_while(|s| s.first_offset == span.first_offset)
        .position(|s| Arc::ptr_eq(s, span))
        .map(|p| i + p)
}

/// Positions of published frames of `span` after position `after` (from the frame holding
/// offset `from` when `None`), in order: at most about [`SAMPLE_EVERY`] of them per call, so
/// a reader far behind, or paging with `read_at`, pays per frame it reads, not per frame of
/// the span after it.
fn frames_after(span: &Span, topic: &str, after: Option<u64>, from: u64) -> Vec<u64> {
    let last = span.last_pos.load(Ordering::Acquire);
    if last == 0 || after.is_some_and(|a| a >= last) {
        return Vec::new();
    }
    if !span.broken.load(Ordering::Acquire) {
        // Walk back from the first sampled frame past what is needed, not from the end.
        let start = {
            let samples = crate::storage::lock(&span.samples);
            let i = match after {
                Some(a) => samples.partition_point(|s| s.1 <= a),
                None => samples.partition_point(|s| s.0 <= from),
            };
            samples.get(i).map(|s| s.1)
        }
        .filter(|&p| p <= last)
        .unwrap_or(last);
        if let Some(found) = walk_back(span, topic, after, from, start) {
            return found;
        }
        span.broken.store(true, Ordering::Release);
    }
    scan_forward(span, topic, after)
}

/// Follows the `prev` chain from `start` down to `after` (or to the frame holding `from`, or
/// the span's first frame). `None` if the chain does not lead there.
fn walk_back(
    span: &Span,
    topic: &str,
    after: Option<u64>,
    from: u64,
    start: u64,
) -> Option<Vec<u64>> {
    let map = &span.segment.map;
    let mut found = Vec::new();
    let mut p = start;
    loop {
        if Some(p) == after {
            break;
        }
        if after.is_some_and(|a| p < a) || p < span.first_pos {
            return None;
        }
        let h = format::decode_header(map, p as usize, map.len(), span.segment.id).ok()?;
        if h.topic(map) != topic.as_bytes() {
            return None;
        }
        found.push(p);
        if h.prev == 0 {
            // The first frame of the span; `after` (if any) was not on the chain.
            if after.is_some() || p != span.first_pos {
                return None;
            }
            break;
        }
        if after.is_none() && h.first_offset <= from {
            break;
        }
        p = h.prev;
    }
    found.reverse();
    Some(found)
}

/// Walks the segment from the span's first frame (or the frame after `after`) to the end of
/// its last published frame, keeping the topic's frames whose offsets go up (as recovery
/// does): slow, only for spans whose chain is broken.
fn scan_forward(span: &Span, topic: &str, after: Option<u64>) -> Vec<u64> {
    let map = &span.segment.map;
    let id = span.segment.id;
    let end = span.last_next.load(Ordering::Acquire) as usize;
    let mut found = Vec::new();
    let mut expected = 0u64;
    for item in SegmentScan::new(map, id, span.first_pos as usize, end) {
        if let ScanItem::Frame(f) = item
            && f.topic(map) == topic.as_bytes()
            && f.first_offset >= expected
        {
            expected = f.end_offset();
            if after.is_none_or(|a| f.pos as u64 > a) {
                found.push(f.pos as u64);
            }
        }
    }
    found
}

/// The first offset of `topic` whose entry was appended at or after `t` (ms since the Unix
/// epoch), among its published frames; `None` if every published entry is older.
///
/// Timestamps never go back within a log (the writer takes the larger of the clock and the
/// last one, also across restarts), so spans and the frames in each are ordered by time:
/// a binary search finds the span, and its chain is walked back only as far as `t`.
pub(crate) fn offset_for_time(topic: &Topic, t: u64) -> Option<u64> {
    let spans: Vec<Arc<Span>> = {
        let spans = topic.spans();
        // Spans never published (the writer's newest, or one whose write failed) carry no
        // time and may sit anywhere: the search can land early, never late, and the scan
        // below moves on to the first span that has an entry that recent.
        let idx = spans.partition_point(|s| {
            s.last_pos.load(Ordering::Acquire) != 0 && s.last_ts.load(Ordering::Acquire) < t
        });
        spans[idx..]
            .iter()
            .filter(|s| {
                s.last_pos.load(Ordering::Acquire) != 0 && s.last_ts.load(Ordering::Acquire) >= t
            })
            .take(2)
            .cloned()
            .collect()
    };
    spans
        .iter()
        .find_map(|s| span_offset_for_time(s, &topic.name, t))
}

fn span_offset_for_time(span: &Span, topic: &str, t: u64) -> Option<u64> {
    let map = &span.segment.map;
    let id = span.segment.id;
    if !span.broken.load(Ordering::Acquire) {
        let mut p = span.last_pos.load(Ordering::Acquire);
        let mut found = None;
        while p >= span.first_pos && p != 0 {
            let h = match format::decode_header(map, p as usize, map.len(), id) {
                Ok(h) if h.topic(map) == topic.as_bytes() => h,
                _ => {
                    span.broken.store(true, Ordering::Release);
                    return offset_for_time_scan(span, topic, t);
                }
            };
            if h.timestamp < t {
                break;
            }
            found = Some(h.first_offset);
            p = h.prev;
        }
        return found;
    }
    offset_for_time_scan(span, topic, t)
}

fn offset_for_time_scan(span: &Span, topic: &str, t: u64) -> Option<u64> {
    let map = &span.segment.map;
    scan_forward(span, topic, None)
        .into_iter()
        .filter_map(|p| format::decode_header(map, p as usize, map.len(), span.segment.id).ok())
        .find(|h| h.timestamp >= t)
        .map(|h| h.first_offset)
}
