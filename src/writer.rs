//! The writer actor: one per topic, fed by a bounded queue.
//!
//! Each turn it takes everything waiting in its queue (`recv_many`), assigns dense offsets, lays
//! the whole group out as one frame in one reusable buffer (a new block only when the current
//! one is full), submits it as one write, waits for the durability the fsync schedule promises,
//! then publishes the new visible offset and resolves every caller. A batch is never split
//! across frames, so it is all-or-nothing after a crash.
//!
//! On a failed write or sync the group's callers get the error, the group's offsets stay unused
//! (recorded as a gap), and the writer moves to a fresh block; after a failed sync the segment is
//! poisoned and no longer written.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use crate::config::FsyncSchedule;
use crate::error::Error;
use crate::format::{self, BlockHeader, FrameBuilder, MAX_FRAME_PAYLOAD};
use crate::storage::Block;
use crate::topic::{Payload, Request, Topic};
use crate::wal::Shared;

/// Buffers above this size are not kept between groups, so one huge batch does not pin memory.
const KEEP_BUF: usize = 4 << 20;

struct Pending {
    block: Arc<Block>,
    /// Position of the write relative to the block.
    rel: u64,
    buf: Vec<u8>,
    /// Bytes in the write (kept after `buf` is handed to the engine).
    len: u64,
    /// Requests `reqs[range]` are in this write.
    reqs: Range<usize>,
    offsets: Range<u64>,
}

struct Writer {
    shared: Arc<Shared>,
    topic: Arc<Topic>,
    block: Option<Arc<Block>>,
    /// Next free position in `block`, relative to its start.
    rel: u64,
    next: u64,
    spare_buf: Vec<u8>,
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
    let mut w = Writer {
        shared,
        topic,
        block: None,
        rel: 0,
        next,
        spare_buf: Vec::new(),
    };
    while rx.recv_many(&mut reqs, cap).await > 0 {
        w.group(&mut reqs).await;
        reqs.clear();
    }
    w.seal();
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

    /// Writes one group; every request in `reqs` is answered.
    async fn group(&mut self, reqs: &mut Vec<Request>) {
        let mut writes: Vec<Pending> = Vec::new();
        let mut buf = self.take_buf();
        let mut cur: Option<(Arc<Block>, u64, usize, u64)> = None; // block, rel, first req, first offset
        let mut i = 0;
        let mut failed: Option<(usize, Error)> = None;
        let mut retired: Vec<Arc<Block>> = Vec::new();
        while i < reqs.len() {
            let one = Self::frame_len(&reqs[i].payload);
            if self.room() < one {
                if let Some((block, rel, first, off)) = cur.take() {
                    writes.push(Pending {
                        block,
                        rel,
                        len: buf.len() as u64,
                        buf: std::mem::take(&mut buf),
                        reqs: first..i,
                        offsets: off..self.next,
                    });
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
                // The old block may still have a write of this group pending: it is released
                // for retention only once that write is done (below).
                retired.extend(self.block.replace(block));
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
                if fb.count() > 0 && (used + add > self.room() || used + add > MAX_FRAME_PAYLOAD) {
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
        }
        if let Some((block, rel, first, off)) = cur.take() {
            writes.push(Pending {
                block,
                rel,
                len: buf.len() as u64,
                buf,
                reqs: first..i,
                offsets: off..self.next,
            });
        }
        if let Some((at, e)) = failed {
            for r in reqs.drain(at..) {
                if let Some(reply) = r.reply {
                    let _ = reply.send(Err(e.duplicate()));
                }
            }
        }
        self.submit(reqs, writes).await;
        for b in retired {
            b.segment.active.fetch_sub(1, Ordering::AcqRel);
        }
    }

    async fn submit(&mut self, reqs: &mut [Request], writes: Vec<Pending>) {
        let shared = self.shared.clone();
        let stats = &shared.stats;
        let mut error: Option<Error> = None;
        let mut done: Vec<(Pending, u64)> = Vec::with_capacity(writes.len());
        for mut w in writes {
            if error.is_some() {
                self.fail(reqs, &w, error.as_ref().map(Error::duplicate));
                continue;
            }
            let seg = w.block.segment.clone();
            let buf = std::mem::take(&mut w.buf);
            let (buf, res) = shared
                .io
                .write_all_at(&seg.file, w.block.pos + w.rel, buf)
                .await;
            stats.write_submissions.fetch_add(1, Ordering::Relaxed);
            if buf.capacity() <= KEEP_BUF {
                self.spare_buf = buf;
            }
            match res {
                Ok(()) => {
                    let g = seg.write_gen.fetch_add(1, Ordering::AcqRel) + 1;
                    done.push((w, g));
                }
                Err(e) => {
                    tracing::error!(topic = %self.topic.name, path = %seg.path.display(), error = %e, "write failed");
                    let e = Error::Io(e);
                    self.fail(reqs, &w, Some(e.duplicate()));
                    error = Some(e);
                }
            }
        }
        if done.is_empty() {
            return;
        }
        // Durability per schedule, then publish and answer. Each write gets the result of
        // its own segment's sync: one failing file does not fail writes in healthy ones.
        let mut synced: Vec<(Arc<crate::storage::Segment>, u64, Option<Error>)> = Vec::new();
        if shared.config.fsync == FsyncSchedule::SyncEach {
            for (w, g) in &done {
                match synced
                    .iter_mut()
                    .find(|(s, _, _)| Arc::ptr_eq(s, &w.block.segment))
                {
                    Some(e) => e.1 = e.1.max(*g),
                    None => synced.push((w.block.segment.clone(), *g, None)),
                }
            }
            for (seg, g, err) in &mut synced {
                *err = shared.durability.sync(seg.clone(), *g).await.err();
            }
        }
        for (w, _) in done {
            let sync_err = synced
                .iter()
                .find(|(s, _, _)| Arc::ptr_eq(s, &w.block.segment))
                .and_then(|(_, _, e)| e.as_ref());
            if let Some(e) = sync_err {
                self.fail(reqs, &w, Some(e.duplicate()));
                continue;
            }
            let mut bytes = 0u64;
            let mut batches = 0u64;
            for r in &reqs[w.reqs.clone()] {
                bytes += payload_bytes(&r.payload);
                batches += u64::from(matches!(r.payload, Payload::Batch(_)));
            }
            w.block.bytes.fetch_add(bytes, Ordering::Relaxed);
            w.block.end_offset.store(w.offsets.end, Ordering::Release);
            w.block.frames_end.store(w.rel + w.len, Ordering::Release);
            stats
                .appends
                .fetch_add(w.offsets.end - w.offsets.start, Ordering::Relaxed);
            stats.bytes_appended.fetch_add(bytes, Ordering::Relaxed);
            stats.batches.fetch_add(batches, Ordering::Relaxed);
            self.topic.bytes.fetch_add(bytes, Ordering::Relaxed);
            self.topic.visible.send_replace(w.offsets.end);
            let mut off = w.offsets.start;
            for r in &mut reqs[w.reqs.clone()] {
                let n = r.payload.len() as u64;
                if let Some(reply) = r.reply.take() {
                    let _ = reply.send(Ok(off..off + n));
                }
                off += n;
            }
        }
    }

    /// Answers the requests of a write that did not complete, records its offsets as a gap and
    /// abandons the block.
    fn fail(&mut self, reqs: &mut [Request], w: &Pending, e: Option<Error>) {
        let e = e.unwrap_or(Error::Closed);
        for r in &mut reqs[w.reqs.clone()] {
            if let Some(reply) = r.reply.take() {
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

    /// Stops writing the current block: its segment may be reclaimed once nothing else is
    /// written there.
    fn seal(&mut self) {
        if let Some(b) = self.block.take() {
            b.segment.active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}
