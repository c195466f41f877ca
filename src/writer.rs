//! The writer actor: one per log, fed by one bounded queue.
//!
//! Each turn it takes everything waiting in the queue (`recv_many`): the appends of every topic
//! that arrived meanwhile. It assigns dense offsets per topic in queue order, lays out one
//! frame per topic in one reusable buffer at the tail of the current segment (the commit
//! stream), and submits it as **one write**. Once the group is as durable as the fsync
//! schedule promises, it publishes each topic's new visible offset and resolves every caller.
//! A request is never split across frames, so a batch is all-or-nothing after a crash.
//!
//! Pipelining: under `SyncEach` the writer does not wait for a group's fsync before writing the
//! next group. Up to [`MAX_IN_FLIGHT`] groups wait for durability at once; they are published
//! and answered strictly in order, so readers and callers never see a later group before an
//! earlier one. While one fsync runs, the next group is already written and its sync request
//! queued, so the durability task's next round covers it.
//!
//! On a failed write or sync the group's callers get the error, the group's offsets stay unused
//! (recorded as gaps) and the writer moves to a fresh segment: nothing is ever written after a
//! failed write in the same file, so recovery never finds a hole in the middle of a stream.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::sync::{mpsc, oneshot};

use crate::config::FsyncSchedule;
use crate::durability::Gather;
use crate::engine::Shared;
use crate::error::Error;
use crate::format::{self, FRAME_HEADER_LEN, FrameBuilder, MAX_FRAME_PAYLOAD, PAGE};
use crate::io::DurableWriteError;
use crate::storage::{FastMap, Segment, Span};
use crate::topic::{Payload, Request, Topic};

/// Buffers above this size are not kept between groups, so one huge batch does not pin memory.
const KEEP_BUF: usize = 4 << 20;

/// How far ahead of the clock a recovered entry time may be and still be continued from.
const MAX_CLOCK_SKEW_MS: u64 = 60_000;

/// Groups written and waiting for their fsync at once.
pub(crate) const MAX_IN_FLIGHT: usize = 4;

type Reply = oneshot::Sender<crate::Result<Range<u64>>>;

/// One frame of a write: some requests of one topic.
struct Planned {
    topic: Arc<Topic>,
    span: Arc<Span>,
    pos: u64,
    /// Where the next frame starts (this one's padded end).
    next: u64,
    timestamp: u64,
    offsets: Range<u64>,
    /// Entries and reply of each request in the frame, in offset order.
    replies: Vec<(u64, Option<Reply>)>,
    bytes: u64,
    batches: u64,
}

/// One write of a group: a run of frames in one segment.
struct Pending {
    segment: Arc<Segment>,
    pos: u64,
    buf: Vec<u8>,
    frames: Vec<Planned>,
    /// The segment's write generation once written (what its fsync must cover).
    generation: u64,
}

impl Pending {
    fn new((segment, pos, frames): (Arc<Segment>, u64, Vec<Planned>), buf: Vec<u8>) -> Pending {
        Pending {
            segment,
            pos,
            buf,
            frames,
            generation: 0,
        }
    }
}

/// A group whose writes completed, with the sync results once durable.
struct Written {
    writes: Vec<Pending>,
    synced: Vec<(Arc<Segment>, Option<Error>)>,
    /// Requests in the group.
    requests: usize,
    /// How long the group waited for durability.
    sync_time: Duration,
}

struct Writer {
    shared: Arc<Shared>,
    /// The segment frames go to, and the position of the next frame in it.
    segment: Option<Arc<Segment>>,
    tail: u64,
    spare_buf: Vec<u8>,
    /// Groups laid out so far: each group's sequence number.
    groups: u64,
    /// The last group that wrote into `segment`.
    segment_last: u64,
    /// Segments no longer written to, with the last group that wrote into each: released for
    /// retention once that group and every one before it is finished (a group waiting for
    /// its fsync may still be published into them).
    retired: Vec<(Arc<Segment>, u64)>,
    /// Timestamp of the last group: timestamps never go back, even if the clock does.
    last_ts: u64,
    /// Scratch: the requests of one group by topic, in order of first appearance.
    buckets: Vec<(Arc<Topic>, Vec<usize>)>,
    bucket_of: FastMap<usize, usize>,
    /// Emptied index vectors of earlier groups, reused.
    spare_idxs: Vec<Vec<usize>>,
}

/// Runs the log's writer until its queue is closed and drained.
pub(crate) async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Request>, last_ts: u64) {
    let cap = shared.config.queue_capacity;
    let mut reqs = Vec::with_capacity(cap.min(1024));
    // Times never go back within a log, also across restarts; but one written while the
    // clock was far ahead (a wrong clock before NTP set it) must not pin every later time.
    let now = now_ms();
    let last_ts = if last_ts > now.saturating_add(MAX_CLOCK_SKEW_MS) {
        tracing::warn!(
            newest_entry_ms = last_ts,
            now_ms = now,
            "the newest entry's time is far in the future; new entries are stamped with the clock"
        );
        now
    } else {
        last_ts
    };
    let sync_each = shared.config.fsync == FsyncSchedule::SyncEach;
    let mut w = Writer {
        shared,
        segment: None,
        tail: 0,
        spare_buf: Vec::new(),
        groups: 0,
        segment_last: 0,
        retired: Vec::new(),
        last_ts,
        buckets: Vec::new(),
        bucket_of: FastMap::default(),
        spare_idxs: Vec::new(),
    };
    let mut in_flight = FuturesOrdered::new();
    // Sequence numbers of the groups in `in_flight`, oldest first (it finishes them in order).
    let mut in_flight_seqs = std::collections::VecDeque::new();
    let mut open = true;
    let mut gather = Gather::default();
    while open || !in_flight.is_empty() {
        tokio::select! {
            biased;
            Some(written) = in_flight.next(), if !in_flight.is_empty() => {
                let written: Written = written;
                in_flight_seqs.pop_front();
                gather = Gather {
                    expect: written.requests,
                    patience: written.sync_time / 4,
                };
                w.finish(written);
                w.release_retired(in_flight_seqs.front().copied());
            }
            n = rx.recv_many(&mut reqs, cap), if open && in_flight.len() < MAX_IN_FLIGHT => {
                if n == 0 {
                    open = false;
                    continue;
                }
                crate::telemetry::queue_depth(rx.len());
                // The producers the last group answered come back a few task hops later: a
                // group taken at once would be synced without them, and `n` producers would
                // settle into cohorts that take turns (each append waiting two fsyncs).
                if sync_each && in_flight.is_empty() {
                    gather
                        .gather(&mut reqs, cap, || rx.try_recv().ok())
                        .await;
                }
                // A lone append with nothing in flight is written with its own sync, in one
                // operation (`Io::write_all_at_durable`). Not a larger group: the writer
                // would wait for each sync before writing the next group, and producers
                // then split into cohorts that take turns (appends per fsync halved, W2).
                let lone = sync_each && in_flight.is_empty() && reqs.len() == 1 && w.all_synced();
                let written = w.group(&mut reqs, lone).await;
                reqs.clear();
                if lone {
                    gather = Gather {
                        expect: written.requests,
                        patience: written.sync_time / 4,
                    };
                    w.finish(written);
                } else if sync_each && !written.writes.is_empty() {
                    in_flight_seqs.push_back(w.groups);
                    in_flight.push_back(durable(w.shared.clone(), written));
                } else {
                    w.finish(written);
                }
                w.release_retired(in_flight_seqs.front().copied());
            }
        }
    }
    w.retire();
    w.release_retired(None);
}

/// Waits until every segment a group wrote to is durable up to the group's writes. Each write
/// gets its own segment's result.
async fn durable(shared: Arc<Shared>, mut written: Written) -> Written {
    let started = Instant::now();
    let mut segs: Vec<(Arc<Segment>, u64)> = Vec::new();
    for w in &written.writes {
        match segs.iter_mut().find(|(s, _)| Arc::ptr_eq(s, &w.segment)) {
            Some(e) => e.1 = e.1.max(w.generation),
            None => segs.push((w.segment.clone(), w.generation)),
        }
    }
    for (seg, generation) in segs {
        let err = shared.durability.sync(seg.clone(), generation).await.err();
        written.synced.push((seg, err));
    }
    written.sync_time = started.elapsed();
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

fn payload_len(p: &Payload) -> u64 {
    format::payload_len(p.entries().iter().map(|e| e.len()))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn answer(reply: Option<Reply>, e: &Error) {
    if let Some(reply) = reply {
        let _ = reply.send(Err(e.duplicate()));
    }
}

impl Writer {
    /// Bytes left for frames in the current segment.
    fn room(&self) -> u64 {
        match &self.segment {
            Some(s) if !s.poisoned.load(Ordering::Acquire) => s.len.saturating_sub(self.tail),
            _ => 0,
        }
    }

    fn take_buf(&mut self) -> Vec<u8> {
        let mut b = std::mem::take(&mut self.spare_buf);
        b.clear();
        b
    }

    /// The topic's span in the current segment, started at `pos` if it has none there yet.
    fn span_for(&self, topic: &Topic, first_offset: u64, pos: u64) -> Arc<Span> {
        let seg = self.segment.as_ref().expect("a current segment");
        if let Some(s) = topic.spans().last()
            && Arc::ptr_eq(&s.segment, seg)
        {
            return s.clone();
        }
        let span = Arc::new(Span::new(seg.clone(), first_offset, pos));
        topic.push_span(span.clone());
        span
    }

    /// Groups the requests by topic, keeping each topic's requests in queue order.
    fn bucket(&mut self, reqs: &[Request]) {
        for (_, mut idxs) in self.buckets.drain(..) {
            idxs.clear();
            self.spare_idxs.push(idxs);
        }
        self.bucket_of.clear();
        for (i, r) in reqs.iter().enumerate() {
            let key = Arc::as_ptr(&r.topic) as usize;
            match self.bucket_of.get(&key) {
                Some(&b) => self.buckets[b].1.push(i),
                None => {
                    self.bucket_of.insert(key, self.buckets.len());
                    let mut idxs = self.spare_idxs.pop().unwrap_or_default();
                    idxs.push(i);
                    self.buckets.push((r.topic.clone(), idxs));
                }
            }
        }
        // A huge group must not pin its index vectors forever.
        self.spare_idxs.truncate(1024);
    }

    /// Lays out and writes one group. Requests that could not be written are answered here;
    /// the rest are answered by [`finish`](Self::finish) once durable enough. With `durable`,
    /// each write carries its own sync.
    async fn group(&mut self, reqs: &mut [Request], durable: bool) -> Written {
        self.groups += 1;
        let ts = now_ms().max(self.last_ts);
        self.last_ts = ts;
        self.bucket(reqs);
        let buckets = std::mem::take(&mut self.buckets);
        let mut writes: Vec<Pending> = Vec::new();
        let mut buf = self.take_buf();
        // The write being laid out: its segment, position and frames.
        let mut cur: Option<(Arc<Segment>, u64, Vec<Planned>)> = None;
        let mut failed: Option<Error> = None;
        for (topic, idxs) in &buckets {
            let mut k = 0;
            while k < idxs.len() {
                if let Some(e) = &failed {
                    answer(reqs[idxs[k]].reply.take(), e);
                    k += 1;
                    continue;
                }
                let next = topic.write_next.load(Ordering::Relaxed);
                // A frame's `first_offset + count` must fit in a u64 (`decode_frame` rejects
                // it otherwise). Only offsets recovered from a damaged or hostile file get
                // here; refuse instead of overflowing.
                if next
                    .checked_add(reqs[idxs[k]].payload.len() as u64)
                    .is_none()
                {
                    answer(reqs[idxs[k]].reply.take(), &offsets_exhausted(&topic.name));
                    k += 1;
                    continue;
                }
                let head = (FRAME_HEADER_LEN + topic.name.len()) as u64;
                let one = format::padded(head + payload_len(&reqs[idxs[k]].payload));
                if self.room() < one {
                    if let Some(c) = cur.take() {
                        writes.push(Pending::new(c, std::mem::take(&mut buf)));
                    }
                    if let Err(e) = self.rotate(one).await {
                        let e = Error::Io(e);
                        answer(reqs[idxs[k]].reply.take(), &e);
                        k += 1;
                        failed = Some(e);
                        continue;
                    }
                }
                let seg = self.segment.clone().expect("room > 0 implies a segment");
                let cur_frames = &mut cur
                    .get_or_insert_with(|| (seg.clone(), self.tail, Vec::new()))
                    .2;
                let pos = self.tail;
                let span = self.span_for(topic, next, pos);
                let prev = span.written_last.load(Ordering::Relaxed);
                let room = self.room();
                let mut fb = FrameBuilder::begin(&mut buf, &topic.name, next, ts, prev);
                let mut payload = 0u64;
                let (mut entries, mut bytes, mut batches) = (0u64, 0u64, 0u64);
                let mut replies = Vec::new();
                while k < idxs.len() {
                    let r = &mut reqs[idxs[k]];
                    let add = payload_len(&r.payload);
                    let n = r.payload.len() as u64;
                    if fb.count() > 0
                        && (format::padded(head + payload + add) > room
                            || payload + add > MAX_FRAME_PAYLOAD
                            || (next + entries).checked_add(n).is_none())
                    {
                        break;
                    }
                    for e in r.payload.entries() {
                        fb.push(&mut buf, e);
                    }
                    payload += add;
                    entries += n;
                    bytes += payload_bytes(&r.payload);
                    batches += u64::from(matches!(r.payload, Payload::Batch(_)));
                    replies.push((n, r.reply.take()));
                    k += 1;
                }
                fb.finish(&mut buf, format::frame_salt(seg.id, pos));
                self.tail += format::padded(head + payload);
                let frame_next = self.tail;
                span.written_last.store(pos, Ordering::Relaxed);
                topic.write_next.store(next + entries, Ordering::Relaxed);
                self.segment_last = self.groups;
                cur_frames.push(Planned {
                    topic: topic.clone(),
                    span,
                    pos,
                    next: frame_next,
                    timestamp: ts,
                    offsets: next..next + entries,
                    replies,
                    bytes,
                    batches,
                });
            }
        }
        if let Some(c) = cur.take() {
            writes.push(Pending::new(c, buf));
        }
        self.buckets = buckets;
        let mut written = self.write(writes, durable).await;
        written.requests = reqs.len();
        written
    }

    /// Starts a new segment with room for `need` bytes.
    async fn rotate(&mut self, need: u64) -> std::io::Result<()> {
        let seg = self.shared.alloc.rotate(need).await?;
        self.retire();
        self.segment = Some(seg);
        self.tail = PAGE;
        Ok(())
    }

    /// Submits the writes of a group in order; after a failed one, the rest fail too. With
    /// `durable` (nothing in flight, so every earlier write is durable), each write is made
    /// durable by itself.
    async fn write(&mut self, writes: Vec<Pending>, durable: bool) -> Written {
        let shared = self.shared.clone();
        let started = Instant::now();
        if durable {
            // Segments this group moved past are finished with: no need to hold them
            // while its sync runs.
            self.release_retired(Some(self.groups));
        }
        let mut error: Option<Error> = None;
        let mut done = Vec::with_capacity(writes.len());
        for mut w in writes {
            if let Some(e) = &error {
                self.fail(&mut w, e);
                continue;
            }
            let seg = w.segment.clone();
            let buf = std::mem::take(&mut w.buf);
            // The current segment keeps its descriptor open.
            let Some(file) = seg.file() else {
                let e = Error::Io(std::io::Error::other(
                    "segment file closed while being written",
                ));
                self.fail(&mut w, &e);
                error = Some(e);
                continue;
            };
            let len = buf.len() as u64;
            let (buf, res) = if durable {
                let sync_started = Instant::now();
                let (buf, res) = shared.io.write_all_at_durable(&file, w.pos, buf).await;
                // A sync was attempted unless the write half failed. Its time includes the
                // write's (one operation).
                if !matches!(res, Err(DurableWriteError::Write(_))) {
                    shared.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                    crate::telemetry::synced(sync_started.elapsed(), res.is_ok());
                }
                let res = res.map_err(|e| match e {
                    DurableWriteError::Write(e) => Error::Io(e),
                    DurableWriteError::Sync(e) => {
                        // As after a failed fdatasync ("fsyncgate"): nothing of the file may
                        // be trusted to be durable, and every later `sync()` says so.
                        seg.poisoned.store(true, Ordering::Release);
                        tracing::error!(path = %seg.path.display(), position = w.pos, error = %e, "durable write failed; the file takes no more appends");
                        Error::SyncFailed {
                            path: seg.path.clone(),
                            reason: e.to_string(),
                        }
                    }
                });
                (buf, res)
            } else {
                let (buf, res) = shared.io.write_all_at(&file, w.pos, buf).await;
                (buf, res.map_err(|e| {
                    tracing::error!(path = %seg.path.display(), position = w.pos, error = %e, "write failed");
                    Error::Io(e)
                }))
            };
            shared
                .stats
                .write_submissions
                .fetch_add(1, Ordering::Relaxed);
            crate::telemetry::wrote(len as usize);
            if buf.capacity() <= KEEP_BUF {
                self.spare_buf = buf;
            }
            match res {
                Ok(()) => {
                    // Before the generation: a sync that sees the generation sees this too.
                    seg.written.fetch_max(w.pos + len, Ordering::AcqRel);
                    w.generation = seg.write_gen.fetch_add(1, Ordering::AcqRel) + 1;
                    if durable {
                        seg.synced_gen.fetch_max(w.generation, Ordering::AcqRel);
                        seg.synced_to.fetch_max(w.pos + len, Ordering::AcqRel);
                    }
                    done.push(w);
                }
                Err(e) => {
                    self.fail(&mut w, &e);
                    error = Some(e);
                }
            }
        }
        Written {
            writes: done,
            synced: Vec::new(),
            requests: 0,
            sync_time: if durable {
                started.elapsed()
            } else {
                Duration::ZERO
            },
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
                .find(|(s, _)| Arc::ptr_eq(s, &w.segment))
                .and_then(|(_, e)| e.as_ref());
            if let Some(e) = sync_err {
                let e = e.duplicate();
                self.fail(&mut w, &e);
                continue;
            }
            for f in w.frames {
                let span = &f.span;
                span.bytes.fetch_add(f.bytes, Ordering::Relaxed);
                span.last_ts.fetch_max(f.timestamp, Ordering::Relaxed);
                span.add_frame(f.offsets.start, f.pos, f.next);
                span.end_offset.store(f.offsets.end, Ordering::Release);
                span.last_pos.store(f.pos, Ordering::Release);
                w.segment.max_ts.fetch_max(f.timestamp, Ordering::Relaxed);
                stats
                    .appends
                    .fetch_add(f.offsets.end - f.offsets.start, Ordering::Relaxed);
                stats.bytes_appended.fetch_add(f.bytes, Ordering::Relaxed);
                crate::telemetry::appended(f.offsets.end - f.offsets.start, f.bytes);
                stats.batches.fetch_add(f.batches, Ordering::Relaxed);
                f.topic.bytes.fetch_add(f.bytes, Ordering::Relaxed);
                f.topic.publish(f.offsets.end);
                let mut off = f.offsets.start;
                for (n, reply) in f.replies {
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(off..off + n));
                    }
                    off += n;
                }
            }
        }
    }

    /// Answers the requests of a write that did not complete, records their offsets as gaps
    /// and stops writing its segment.
    fn fail(&mut self, w: &mut Pending, e: &Error) {
        for f in &mut w.frames {
            for (_, reply) in &mut f.replies {
                answer(reply.take(), e);
            }
            f.topic.add_gap(f.offsets.clone());
        }
        if self
            .segment
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, &w.segment))
        {
            self.retire();
        }
    }

    /// Whether every write to the current segment so far is durable: the condition for a
    /// write that carries its own sync (only that write's bytes are made durable by it).
    fn all_synced(&self) -> bool {
        self.segment.as_ref().is_none_or(|s| {
            !s.poisoned.load(Ordering::Acquire)
                && s.synced_gen.load(Ordering::Acquire) >= s.write_gen.load(Ordering::Acquire)
        })
    }

    /// Stops writing the current segment.
    fn retire(&mut self) {
        let last = self.segment_last;
        self.retired.extend(self.segment.take().map(|s| (s, last)));
    }

    /// Lets retention reclaim retired segments whose last group is finished: older than
    /// `oldest_in_flight`, the oldest group still waiting (none: all finished). Under
    /// sustained pipelined load some group is always in flight, so this is per segment, not
    /// "when nothing is in flight".
    fn release_retired(&mut self, oldest_in_flight: Option<u64>) {
        self.retired.retain(|(s, last)| {
            let done = oldest_in_flight.is_none_or(|oldest| *last < oldest);
            if done {
                s.active.fetch_sub(1, Ordering::SeqCst);
                s.close_if_sealed();
            }
            !done
        });
    }
}
