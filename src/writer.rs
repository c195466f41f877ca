//! The writer actor: one per topic, fed by a bounded queue.
//!
//! Each turn it takes everything waiting in its queue (`recv_many`), assigns dense offsets, lays
//! the whole group out as one frame in one reusable buffer (a new block only when the current
//! one is full), and submits it as one write. Once the group is as durable as the fsync schedule
//! promises, it publishes the new visible offset and resolves every caller. A batch is never
//! split across frames, so it is all-or-nothing after a crash.
//!
//! Pipelining: under `SyncEach` the writer does not wait for a group's fsync before writing the
//! next group. Up to [`MAX_IN_FLIGHT`] groups wait for durability at once; they are published
//! and answered strictly in order, so readers and callers never see a later group before an
//! earlier one. While one fsync runs, the next group is already written and its sync request
//! queued, so the durability task's next round covers it (group commit across groups and
//! topics).
//!
//! On a failed write or sync the group's callers get the error, the group's offsets stay unused
//! (recorded as a gap), and the writer moves to a fresh block; after a failed sync the segment is
//! poisoned and no longer written.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::sync::{mpsc, oneshot};

use crate::config::FsyncSchedule;
use crate::engine::Shared;
use crate::error::Error;
use crate::format::{self, BlockHeader, FrameBuilder, MAX_FRAME_PAYLOAD};
use crate::storage::{Block, Segment};
use crate::topic::{Payload, Request, Topic};

/// Buffers above this size are not kept between groups, so one huge batch does not pin memory.
const KEEP_BUF: usize = 4 << 20;

/// Groups written and waiting for their fsync at once (per topic).
pub(crate) const MAX_IN_FLIGHT: usize = 4;

type Reply = oneshot::Sender<crate::Result<Range<u64>>>;

/// One write of a group: a contiguous run of frames in one block.
struct Pending {
    block: Arc<Block>,
    /// Position of the write relative to the block.
    rel: u64,
    buf: Vec<u8>,
    /// Bytes in the write (kept after `buf` is handed to the engine).
    len: u64,
    offsets: Range<u64>,
    /// Entries and reply of each request in the write, in offset order.
    replies: Vec<(u64, Option<Reply>)>,
    bytes: u64,
    batches: u64,
    /// The segment's write generation once written (what its fsync must cover).
    generation: u64,
}

/// A group whose writes completed, with the sync results once durable.
struct Written {
    writes: Vec<Pending>,
    synced: Vec<(Arc<Segment>, Option<Error>)>,
}

struct Writer {
    shared: Arc<Shared>,
    topic: Arc<Topic>,
    block: Option<Arc<Block>>,
    /// Next free position in `block`, relative to its start.
    rel: u64,
    next: u64,
    spare_buf: Vec<u8>,
    /// Groups laid out so far: each group's sequence number.
    groups: u64,
    /// The last group that wrote into `block`.
    block_last: u64,
    /// Blocks no longer written to, with the last group that may have written into each:
    /// released for retention once that group and every one before it is finished (a group
    /// waiting for its fsync may still be published into them).
    retired: Vec<(Arc<Block>, u64)>,
}

/// Runs a topic's writer until its queue is closed and drained.
pub(crate) async fn run(
    shared: Arc<Shared>,
    topic: Arc<Topic>,
    mut rx: mpsc::Receiver<Request>,
    next: u64,
) {
    let cap = shared.config.queue_capacity;
    let mut reqs = Vec::with_capacity(cap.min(1024));
    let sync_each = shared.config.fsync == FsyncSchedule::SyncEach;
    let mut w = Writer {
        shared,
        topic,
        block: None,
        rel: 0,
        next,
        spare_buf: Vec::new(),
        groups: 0,
        block_last: 0,
        retired: Vec::new(),
    };
    let mut in_flight = FuturesOrdered::new();
    // Sequence numbers of the groups in `in_flight`, oldest first (it finishes them in order).
    let mut in_flight_seqs = std::collections::VecDeque::new();
    let mut open = true;
    while open || !in_flight.is_empty() {
        tokio::select! {
            biased;
            Some(written) = in_flight.next(), if !in_flight.is_empty() => {
                in_flight_seqs.pop_front();
                w.finish(written);
                w.release_retired(in_flight_seqs.front().copied());
            }
            n = rx.recv_many(&mut reqs, cap), if open && in_flight.len() < MAX_IN_FLIGHT => {
                if n == 0 {
                    open = false;
                    continue;
                }
                let written = w.group(&mut reqs).await;
                reqs.clear();
                if sync_each && !written.writes.is_empty() {
                    in_flight_seqs.push_back(w.groups);
                    in_flight.push_back(durable(w.shared.clone(), written));
                } else {
                    w.finish(written);
                }
                w.release_retired(in_flight_seqs.front().copied());
            }
        }
    }
    w.seal();
    w.release_retired(None);
}

/// Waits until every segment a group wrote to is durable up to the group's writes. Each write
/// gets its own segment's result: one failing file does not fail writes in healthy ones.
async fn durable(shared: Arc<Shared>, mut written: Written) -> Written {
    let mut segs: Vec<(Arc<Segment>, u64)> = Vec::new();
    for w in &written.writes {
        match segs
            .iter_mut()
            .find(|(s, _)| Arc::ptr_eq(s, &w.block.segment))
        {
            Some(e) => e.1 = e.1.max(w.generation),
            None => segs.push((w.block.segment.clone(), w.generation)),
        }
    }
    for (seg, generation) in segs {
        let err = shared.durability.sync(seg.clone(), generation).await.err();
        written.synced.push((seg, err));
    }
    written
}

/// The error for appends whose offsets would pass `u64::MAX`.
fn offsets_exhausted(topic: &str) -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!(
            "topic {topic:?} has no offsets left below u64::MAX (recovered from damaged files?)"
        ),
    ))
}

fn payload_bytes(p: &Payload) -> u64 {
    p.entries().iter().map(|e| e.len() as u64).sum()
}

impl Writer {
    fn frame_len(p: &Payload) -> u64 {
        format::frame_len(p.entries().iter().map(|e| e.len()))
    }

    fn room(&self) -> u64 {
        match &self.block {
            Some(b) if !b.segment.poisoned.load(Ordering::Acquire) => b.len - self.rel,
            _ => 0,
        }
    }

    fn take_buf(&mut self) -> Vec<u8> {
        let mut b = std::mem::take(&mut self.spare_buf);
        b.clear();
        b
    }

    /// Lays out and writes one group. Requests that could not be written are answered here;
    /// the rest are answered by [`finish`](Self::finish) once durable enough.
    async fn group(&mut self, reqs: &mut [Request]) -> Written {
        self.groups += 1;
        let mut writes: Vec<Pending> = Vec::new();
        let mut buf = self.take_buf();
        // The write being laid out: block, position in it, first request, first offset.
        let mut cur: Option<(Arc<Block>, u64, usize, u64)> = None;
        let mut i = 0;
        let mut failed: Option<(usize, Error)> = None;
        while i < reqs.len() {
            // A frame's `first_offset + count` must fit in a u64 (`decode_frame` rejects it
            // otherwise). Only offsets recovered from a damaged or hostile file (a block header
            // or checkpoint near u64::MAX) get here; refuse instead of overflowing `self.next`
            // (seen while fuzzing recovery: a panic in debug builds, reused offsets in release).
            if self
                .next
                .checked_add(reqs[i].payload.len() as u64)
                .is_none()
            {
                failed = Some((i, offsets_exhausted(&self.topic.name)));
                break;
            }
            let one = Self::frame_len(&reqs[i].payload);
            if self.room() < one {
                if let Some((block, rel, first, off)) = cur.take() {
                    let buf = std::mem::take(&mut buf);
                    writes.push(self.pending(reqs, block, rel, buf, first..i, off));
                }
                let header = format::block_header_len(self.topic.name.len()) as u64;
                let (segment, pos, len) = match self.shared.alloc.allocate(header + one).await {
                    Ok(a) => a,
                    Err(e) => {
                        failed = Some((i, Error::Io(e)));
                        break;
                    }
                };
                let block = Arc::new(Block {
                    salt: format::block_salt(segment.id, pos),
                    segment,
                    pos,
                    len,
                    data_start: header as usize,
                    first_offset: self.next,
                    frames_end: header.into(),
                    end_offset: self.next.into(),
                    bytes: 0.into(),
                });
                BlockHeader {
                    segment_id: block.segment.id,
                    len,
                    first_offset: self.next,
                    topic: &self.topic.name,
                }
                .encode(pos, &mut buf);
                self.topic.push_block(block.clone());
                cur = Some((block.clone(), 0, i, self.next));
                let last = self.block_last;
                self.retired
                    .extend(self.block.replace(block).map(|b| (b, last)));
                self.rel = header;
                tracing::debug!(topic = %self.topic.name, pos, len, "block allocated");
            } else if cur.is_none() {
                let block = self.block.clone().expect("room > 0 implies a block");
                cur = Some((block, self.rel, i, self.next));
            }
            // One frame with as many requests as fit in the block.
            let salt = cur.as_ref().map(|c| c.0.salt).unwrap_or(0);
            let mut fb = FrameBuilder::begin(&mut buf, self.next);
            let mut used = format::FRAME_HEADER_LEN as u64;
            while i < reqs.len() {
                let p = &reqs[i].payload;
                let add = Self::frame_len(p) - format::FRAME_HEADER_LEN as u64;
                if fb.count() > 0
                    && (used + add > self.room()
                        || used + add > MAX_FRAME_PAYLOAD
                        || self.next.checked_add(p.len() as u64).is_none())
                {
                    break;
                }
                for e in p.entries() {
                    fb.push(&mut buf, e);
                }
                used += add;
                self.next += p.len() as u64;
                i += 1;
            }
            fb.finish(&mut buf, salt);
            self.rel += used;
            self.block_last = self.groups;
        }
        if let Some((block, rel, first, off)) = cur.take() {
            writes.push(self.pending(reqs, block, rel, buf, first..i, off));
        }
        if let Some((at, e)) = failed {
            for r in &mut reqs[at..] {
                if let Some(reply) = r.reply.take() {
                    let _ = reply.send(Err(e.duplicate()));
                }
            }
        }
        self.write(writes).await
    }

    /// Moves the replies of `reqs[range]` into a pending write.
    fn pending(
        &self,
        reqs: &mut [Request],
        block: Arc<Block>,
        rel: u64,
        buf: Vec<u8>,
        range: Range<usize>,
        first_offset: u64,
    ) -> Pending {
        let mut replies = Vec::with_capacity(range.len());
        let (mut bytes, mut batches, mut entries) = (0u64, 0u64, 0u64);
        for r in &mut reqs[range] {
            let n = r.payload.len() as u64;
            bytes += payload_bytes(&r.payload);
            batches += u64::from(matches!(r.payload, Payload::Batch(_)));
            entries += n;
            replies.push((n, r.reply.take()));
        }
        Pending {
            block,
            rel,
            len: buf.len() as u64,
            buf,
            offsets: first_offset..first_offset + entries,
            replies,
            bytes,
            batches,
            generation: 0,
        }
    }

    /// Submits the writes of a group in order; after a failed one, the rest fail too.
    async fn write(&mut self, writes: Vec<Pending>) -> Written {
        let shared = self.shared.clone();
        let mut error: Option<Error> = None;
        let mut done = Vec::with_capacity(writes.len());
        for mut w in writes {
            if let Some(e) = &error {
                self.fail(&mut w, e.duplicate());
                continue;
            }
            let seg = w.block.segment.clone();
            let buf = std::mem::take(&mut w.buf);
            // A block being written keeps its segment's descriptor open.
            let Some(file) = seg.file() else {
                let e = Error::Io(std::io::Error::other(
                    "segment file closed while being written",
                ));
                self.fail(&mut w, e.duplicate());
                error = Some(e);
                continue;
            };
            let (buf, res) = shared
                .io
                .write_all_at(&file, w.block.pos + w.rel, buf)
                .await;
            shared
                .stats
                .write_submissions
                .fetch_add(1, Ordering::Relaxed);
            if buf.capacity() <= KEEP_BUF {
                self.spare_buf = buf;
            }
            match res {
                Ok(()) => {
                    w.generation = seg.write_gen.fetch_add(1, Ordering::AcqRel) + 1;
                    done.push(w);
                }
                Err(e) => {
                    tracing::error!(topic = %self.topic.name, path = %seg.path.display(), error = %e, "write failed");
                    let e = Error::Io(e);
                    self.fail(&mut w, e.duplicate());
                    error = Some(e);
                }
            }
        }
        Written {
            writes: done,
            synced: Vec::new(),
        }
    }

    /// Publishes a written group (or fails the writes whose sync failed) and answers callers.
    fn finish(&mut self, written: Written) {
        let shared = self.shared.clone();
        let stats = &shared.stats;
        for mut w in written.writes {
            let sync_err = written
                .synced
                .iter()
                .find(|(s, _)| Arc::ptr_eq(s, &w.block.segment))
                .and_then(|(_, e)| e.as_ref());
            if let Some(e) = sync_err {
                let e = e.duplicate();
                self.fail(&mut w, e);
                continue;
            }
            w.block.bytes.fetch_add(w.bytes, Ordering::Relaxed);
            w.block.end_offset.store(w.offsets.end, Ordering::Release);
            w.block.frames_end.store(w.rel + w.len, Ordering::Release);
            stats
                .appends
                .fetch_add(w.offsets.end - w.offsets.start, Ordering::Relaxed);
            stats.bytes_appended.fetch_add(w.bytes, Ordering::Relaxed);
            stats.batches.fetch_add(w.batches, Ordering::Relaxed);
            self.topic.bytes.fetch_add(w.bytes, Ordering::Relaxed);
            self.topic.visible.send_replace(w.offsets.end);
            let mut off = w.offsets.start;
            for (n, reply) in w.replies {
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(off..off + n));
                }
                off += n;
            }
        }
    }

    /// Answers the requests of a write that did not complete, records its offsets as a gap and
    /// abandons the block.
    fn fail(&mut self, w: &mut Pending, e: Error) {
        for (_, reply) in &mut w.replies {
            if let Some(reply) = reply.take() {
                let _ = reply.send(Err(e.duplicate()));
            }
        }
        self.topic.add_gap(w.offsets.clone());
        if self
            .block
            .as_ref()
            .is_some_and(|b| Arc::ptr_eq(b, &w.block))
        {
            self.seal();
            self.rel = 0;
        }
    }

    /// Stops writing the current block.
    fn seal(&mut self) {
        let last = self.block_last;
        self.retired.extend(self.block.take().map(|b| (b, last)));
    }

    /// Lets retention reclaim the segments of retired blocks whose last group is finished:
    /// older than `oldest_in_flight`, the oldest group still waiting (none: all finished).
    /// Under sustained pipelined load some group is always in flight, so this is per block,
    /// not "when nothing is in flight".
    fn release_retired(&mut self, oldest_in_flight: Option<u64>) {
        self.retired.retain(|(b, last)| {
            let done = oldest_in_flight.is_none_or(|oldest| *last < oldest);
            if done {
                b.segment.active.fetch_sub(1, Ordering::SeqCst);
                b.segment.close_if_sealed();
            }
            !done
        });
    }
}
