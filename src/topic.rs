//! A topic's shared state: its chain of spans, the published "visible up to" offset, the
//! offsets lost to damage, and the next offset the writer hands out.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use crate::error::{Error, Result};
use crate::format::MAX_TOPIC_LEN;
pub(crate) use crate::storage::FastMap;
use crate::storage::Span;

/// What a writer is asked to append: one entry, or one atomic batch.
pub(crate) enum Payload {
    One(Bytes),
    Batch(Vec<Bytes>),
}

impl Payload {
    pub fn len(&self) -> usize {
        match self {
            Payload::One(_) => 1,
            Payload::Batch(v) => v.len(),
        }
    }
    pub fn entries(&self) -> &[Bytes] {
        match self {
            Payload::One(b) => std::slice::from_ref(b),
            Payload::Batch(v) => v,
        }
    }
}

/// One request in the log writer's queue.
pub(crate) struct Request {
    pub topic: Arc<Topic>,
    pub payload: Payload,
    /// Taken when answered.
    pub reply: Option<oneshot::Sender<Result<Range<u64>>>>,
}

/// Shared state of one topic.
pub(crate) struct Topic {
    pub name: Arc<str>,
    /// Spans ordered by first offset; appended to by the writer only.
    pub spans: RwLock<Vec<Arc<Span>>>,
    /// One past the last entry readers may see (durable under `SyncEach`).
    visible: AtomicU64,
    /// Wakes streams waiting for `visible` to move. Made by the first stream: a watch costs
    /// some 400 bytes, and most topics of a log with many are never tailed.
    watch: OnceLock<watch::Sender<u64>>,
    /// Oldest retained offset.
    pub oldest: AtomicU64,
    /// Offsets that hold no entry (lost to damage, or consumed by a failed write).
    pub gaps: Mutex<Vec<Range<u64>>>,
    /// Ranges above `oldest` whose spans retention deleted (every consumer had passed them
    /// while older spans were still pinned by another topic's consumers).
    pub holes: Mutex<Vec<Range<u64>>>,
    /// Payload bytes retained.
    pub bytes: AtomicU64,
    /// The offset the writer hands out next (offsets of groups not yet published included).
    /// Only the writer changes it.
    pub write_next: AtomicU64,
}

impl Topic {
    pub fn new(name: Arc<str>, next: u64) -> Topic {
        Topic {
            name,
            spans: RwLock::new(Vec::new()),
            visible: AtomicU64::new(next),
            watch: OnceLock::new(),
            oldest: AtomicU64::new(0),
            gaps: Mutex::new(Vec::new()),
            holes: Mutex::new(Vec::new()),
            bytes: AtomicU64::new(0),
            write_next: AtomicU64::new(next),
        }
    }

    /// The offset the writer hands out next: past every entry and every gap.
    pub fn next_offset(&self) -> u64 {
        let gaps_end = crate::storage::lock(&self.gaps)
            .iter()
            .map(|g| g.end)
            .max()
            .unwrap_or(0);
        self.visible().max(gaps_end)
    }

    /// One past the last visible offset.
    pub fn visible(&self) -> u64 {
        self.visible.load(Ordering::SeqCst)
    }

    /// Makes entries up to `end` visible and wakes the streams waiting for them.
    pub fn publish(&self, end: u64) {
        self.visible.store(end, Ordering::SeqCst);
        // Pairs with the fence in `subscribe`: either this sees the watch a stream just made,
        // or that stream's first read sees `end`. No wake-up falls between.
        fence(Ordering::SeqCst);
        if let Some(w) = self.watch.get() {
            w.send_replace(end);
        }
    }

    /// A receiver that changes whenever `publish` runs from now on. Read `visible()` only
    /// after marking the receiver seen.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        let rx = self
            .watch
            .get_or_init(|| watch::Sender::new(self.visible()))
            .subscribe();
        fence(Ordering::SeqCst);
        rx
    }

    /// Entries that exist in `[from, to)`: the offsets minus the gaps.
    pub fn entries_between(&self, from: u64, to: u64) -> u64 {
        if from >= to {
            return 0;
        }
        let overlap = |g: &Range<u64>| g.end.min(to).saturating_sub(g.start.max(from));
        // One lock at a time: `remove_span` takes them in another order.
        let in_gaps: u64 = crate::storage::lock(&self.gaps).iter().map(overlap).sum();
        let in_holes: u64 = crate::storage::lock(&self.holes).iter().map(overlap).sum();
        let missing = in_gaps + in_holes;
        (to - from).saturating_sub(missing)
    }

    pub fn add_gap(&self, gap: Range<u64>) {
        if gap.start < gap.end {
            crate::storage::lock(&self.gaps).push(gap);
        }
    }

    pub fn spans(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Span>>> {
        self.spans.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push_span(&self, s: Arc<Span>) {
        self.spans
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(s);
    }

    /// Drops a span deleted by retention. Removing the first span moves `oldest` up to the
    /// next one; removing a later one leaves a hole.
    pub fn remove_span(&self, b: &Arc<Span>) {
        let mut spans = self.spans.write().unwrap_or_else(|p| p.into_inner());
        let Some(idx) = spans.iter().position(|x| Arc::ptr_eq(x, b)) else {
            return;
        };
        spans.remove(idx);
        self.bytes
            .fetch_sub(b.bytes.load(Ordering::Relaxed), Ordering::Relaxed);
        if idx == 0 {
            // Moved while the span list is still locked, so no reader finds the next span
            // without also finding `oldest` moved, and no writer adds a span meanwhile.
            // (Lock order: spans, then gaps inside `next_offset`, then holes; never reversed.)
            let oldest = spans
                .first()
                .map_or_else(|| self.next_offset(), |f| f.first_offset);
            let oldest = self.oldest.fetch_max(oldest, Ordering::AcqRel).max(oldest);
            drop(spans);
            crate::storage::lock(&self.holes).retain(|h| h.end > oldest);
        } else {
            drop(spans);
            crate::storage::lock(&self.holes)
                .push(b.first_offset..b.end_offset.load(Ordering::Acquire));
        }
    }

    /// Where the retained entries go on if `offset` lies in a deleted hole (adjacent holes
    /// are followed to their common end).
    pub fn hole_end(&self, offset: u64) -> Option<u64> {
        let holes = crate::storage::lock(&self.holes);
        let mut end = holes.iter().find(|h| h.contains(&offset))?.end;
        while let Some(h) = holes.iter().find(|h| h.contains(&end)) {
            end = h.end;
        }
        Some(end)
    }

    pub fn retained_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Checks a consumer name: 1..=255 bytes, no NUL (`""` is the default consumer, reached
/// through `subscribe` and the polling reads).
pub(crate) fn validate_consumer(consumer: &str) -> Result<()> {
    name_problem(
        consumer,
        "must not be empty (the default consumer is `subscribe`)",
    )
    .map_or(Ok(()), |reason| {
        Err(Error::InvalidConsumer {
            consumer: consumer.chars().take(300).collect(),
            reason,
        })
    })
}

/// What is wrong with a topic or consumer name, if anything: both are 1..=255 bytes, no NUL.
fn name_problem(name: &str, empty: &'static str) -> Option<&'static str> {
    if name.is_empty() {
        Some(empty)
    } else if name.len() > MAX_TOPIC_LEN {
        Some("longer than 255 bytes")
    } else if name.contains('\0') {
        Some("contains a NUL byte")
    } else {
        None
    }
}

/// Checks a topic name: 1..=255 bytes, no NUL.
pub(crate) fn validate_topic(topic: &str) -> Result<()> {
    name_problem(topic, "must not be empty").map_or(Ok(()), |reason| {
        Err(Error::InvalidTopic {
            topic: topic.chars().take(300).collect(),
            reason,
        })
    })
}
