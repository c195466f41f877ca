//! [`TopicStream`], a tailing `Stream` of a topic with checkpoint acknowledgements.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use futures::Stream;
use tokio::sync::watch;

use crate::config::ReadConsistency;
use crate::consumer::{ConsumerState, Hold};
use crate::engine::Shared;
use crate::error::{Error, Result};
use crate::reader::Cursor;
use crate::reader::Entry;
use crate::topic::Topic;

/// Entries a stream reads ahead in one go (they are zero-copy views, so this is cheap).
const READ_AHEAD_ENTRIES: usize = 256;
const READ_AHEAD_BYTES: usize = 1 << 20;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A topic read as a `futures::Stream` of [`Entry`], for one consumer.
///
/// Created by [`Walrus::subscribe`](crate::Walrus::subscribe) (the topic's default consumer)
/// or [`Walrus::subscribe_as`](crate::Walrus::subscribe_as) (a named consumer with its own
/// checkpoint). It starts after the consumer's checkpoint, yields entries in offset order, and
/// when it has caught up it waits, woken by the topic's writer (no timer), until the next
/// append becomes visible. It ends (`None`) when the log is closed.
///
/// Acknowledge what you processed with [`ack`](Self::ack): the checkpoint is cumulative and
/// persisted per [`ReadConsistency`]. Only one live stream per (topic, consumer): a second one,
/// and the polling reads of the default consumer, get [`Error::ConsumerBusy`] until this one is
/// dropped.
///
/// The stream is `Send + Unpin + 'static`, so it can be returned as it is from an axum SSE
/// handler or a tonic server-streaming method.
///
/// ```
/// use futures::StreamExt;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> walrus_async::Result<()> {
/// # let dir = tempfile::tempdir()?;
/// let wal = walrus_async::Walrus::open(dir.path()).await?;
/// wal.append_batch("orders", ["a", "b"]).await?;
/// let mut stream = wal.subscribe_as("orders", "billing")?;
/// while let Some(entry) = stream.next().await {
///     let entry = entry?;
///     // ... process entry.data ...
///     stream.ack(entry.offset).await?; // everything up to here is consumed
///     if entry.offset == 1 {
///         break;
///     }
/// }
/// # Ok(()) }
/// ```
///
/// # Errors in the stream
/// An item is `Err(Error::Truncated { requested, oldest })` once when retention limits deleted
/// entries this consumer had not read; the stream then goes on from `oldest`.
pub struct TopicStream {
    shared: Arc<Shared>,
    topic: Arc<Topic>,
    state: Arc<ConsumerState>,
    cursor: Cursor,
    buf: VecDeque<Entry>,
    /// One past the highest offset handed out.
    delivered_end: u64,
    /// The checkpoint value last persisted (next offset).
    persisted: u64,
    visible: watch::Receiver<u64>,
    wait: Option<BoxFuture<()>>,
    /// Durable registration of a named consumer, awaited before the first item.
    registration: Option<BoxFuture<Result<()>>>,
    /// The registration's write failed: it is written again before the next item.
    register_again: bool,
    /// `Error::RuntimeGone` was reported.
    told_gone: bool,
    /// Keeps the consumer busy; dropped after `Drop::drop` has queued the last checkpoint.
    _hold: Hold,
    scratch: Vec<Entry>,
}

impl std::fmt::Debug for TopicStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicStream")
            .field("topic", &self.state.topic)
            .field("consumer", &self.state.name)
            .field("next", &self.cursor.next)
            .finish()
    }
}

impl TopicStream {
    pub(crate) fn new(
        shared: Arc<Shared>,
        topic: Arc<Topic>,
        state: Arc<ConsumerState>,
        hold: Hold,
        persisted: u64,
        registration: Option<BoxFuture<Result<()>>>,
    ) -> TopicStream {
        let at = state.acked.load(Ordering::Acquire);
        TopicStream {
            visible: topic.subscribe(),
            shared,
            topic,
            state,
            cursor: Cursor::new(at),
            buf: VecDeque::new(),
            delivered_end: 0,
            persisted,
            wait: None,
            registration,
            register_again: false,
            told_gone: false,
            _hold: hold,
            scratch: Vec::new(),
        }
    }

    /// The topic read.
    pub fn topic(&self) -> &str {
        &self.state.topic
    }

    /// The consumer (`""` for the topic's default consumer).
    pub fn consumer(&self) -> &str {
        &self.state.name
    }

    /// The checkpoint: the next offset the consumer would read after a restart, as far as it
    /// has acknowledged (persisted or not yet, per [`ReadConsistency`]).
    pub fn checkpoint(&self) -> u64 {
        self.state.acked.load(Ordering::Acquire)
    }

    /// Acknowledges every entry up to and including `offset` (cumulative).
    ///
    /// Under `StrictlyAtOnce` the checkpoint is durable when this returns; under
    /// `AtLeastOnce { persist_every: n }` it is persisted once it has moved `n` entries past the
    /// last persisted value, and when the stream is dropped or the log closed.
    ///
    /// Acknowledging an offset this stream never delivered, or one below the last
    /// acknowledged offset, is [`Error::InvalidAck`] and changes nothing; acknowledging the last
    /// acknowledged offset again is a no-op.
    ///
    /// # Cancellation
    /// If the future is dropped, the checkpoint may or may not have moved (and been
    /// persisted); it never moves past `offset`.
    pub async fn ack(&mut self, offset: u64) -> Result<()> {
        if self.shared.is_closed() {
            return Err(self.shared.stopped());
        }
        let invalid = |reason| Error::InvalidAck { offset, reason };
        let current = self.state.acked.load(Ordering::Acquire);
        let next = offset.saturating_add(1);
        if next == current {
            return Ok(()); // the last acknowledged offset again
        }
        if offset >= self.delivered_end {
            return Err(invalid("never delivered by this stream"));
        }
        if next < current {
            return Err(invalid("below the last acknowledged offset"));
        }
        self.state.acked.store(next, Ordering::Release);
        let due = match self.shared.config.consistency {
            ReadConsistency::StrictlyAtOnce => true,
            ReadConsistency::AtLeastOnce { persist_every } => {
                next.saturating_sub(self.persisted) >= u64::from(persist_every.max(1))
            }
        };
        if due {
            if let Err(e) = self.shared.persist_checkpoint(&self.state, next).await {
                // Not durable: under StrictlyAtOnce the ack did not happen.
                if matches!(
                    self.shared.config.consistency,
                    ReadConsistency::StrictlyAtOnce
                ) {
                    self.state.acked.store(current, Ordering::Release);
                }
                return Err(e);
            }
            self.persisted = next;
        }
        Ok(())
    }

    /// Repositions the stream: the next item is the entry at `offset` (or the first after it).
    /// The checkpoint is unchanged. Below the oldest retained offset:
    /// [`Error::Truncated`], and the stream stays where it was.
    pub fn seek(&mut self, offset: u64) -> Result<()> {
        let oldest = self.topic.oldest.load(Ordering::Acquire);
        if offset < oldest {
            return Err(Error::Truncated {
                requested: offset,
                oldest,
            });
        }
        if let Some(end) = self.topic.hole_end(offset) {
            return Err(Error::Truncated {
                requested: offset,
                oldest: end,
            });
        }
        self.cursor.reset(offset);
        self.buf.clear();
        Ok(())
    }

    /// Repositions the stream at the first entry appended at or after `time` (milliseconds
    /// since the Unix epoch; see [`Walrus::offset_for_time`](crate::Walrus::offset_for_time)),
    /// or, if every entry is older, at the end: the next item is then the next entry
    /// appended. The checkpoint is unchanged. [`Error::Truncated`] if retention deletes that
    /// entry between finding it and moving there (the stream stays where it was).
    ///
    /// ```
    /// use futures::StreamExt;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> walrus_async::Result<()> {
    /// # let dir = tempfile::tempdir()?;
    /// let wal = walrus_async::Walrus::open(dir.path()).await?;
    /// wal.append("orders", "old").await?;
    /// let mut stream = wal.subscribe_as("orders", "audit")?;
    /// stream.seek_time(u64::MAX)?; // past everything: only new entries
    /// wal.append("orders", "new").await?;
    /// assert_eq!(&stream.next().await.unwrap()?.data[..], b"new");
    /// # Ok(()) }
    /// ```
    pub fn seek_time(&mut self, time: u64) -> Result<()> {
        if self.shared.is_closed() {
            return Err(self.shared.stopped());
        }
        let target = crate::reader::offset_for_time(&self.topic, time)
            .filter(|&o| o < self.topic.visible())
            .unwrap_or_else(|| self.topic.next_offset());
        let oldest = self.topic.oldest.load(Ordering::Acquire);
        self.seek(target.max(oldest))
    }

    /// The next entries, at least one, and beyond the first no more than `max_bytes` of payload:
    /// for consumers that process in batches. Waits like the stream does; returns an empty
    /// vector once the log is closed.
    ///
    /// # Cancellation
    /// Cancel safe: entries not returned stay in the stream.
    pub async fn next_batch(&mut self, max_bytes: usize) -> Result<Vec<Entry>> {
        futures::future::poll_fn(|cx| self.poll_batch(cx, max_bytes)).await
    }

    fn poll_batch(&mut self, cx: &mut Context<'_>, max_bytes: usize) -> Poll<Result<Vec<Entry>>> {
        match ready!(self.poll_fill(cx)) {
            None => Poll::Ready(Ok(Vec::new())),
            Some(Err(e)) => Poll::Ready(Err(e)),
            Some(Ok(())) => {
                let mut out = Vec::new();
                let mut total = 0usize;
                while let Some(e) = self.buf.front() {
                    if !out.is_empty() && total + e.data.len() > max_bytes {
                        break;
                    }
                    total += e.data.len();
                    out.extend(self.buf.pop_front());
                }
                if let Some(last) = out.last() {
                    self.delivered_end = self.delivered_end.max(last.offset + 1);
                }
                Poll::Ready(Ok(out))
            }
        }
    }

    /// Makes `buf` non-empty, or reports the end (`None`) or an error.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<()>>> {
        if self.register_again {
            let again = self.shared.checkpoints.reregister(
                &self.state.topic,
                &self.state.name,
                self.state.epoch,
            );
            match again {
                Ok(ticket) => self.registration = Some(Box::pin(ticket.wait())),
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
            self.register_again = false;
        }
        if let Some(reg) = self.registration.as_mut() {
            let res = ready!(reg.as_mut().poll(cx));
            self.registration = None;
            if let Err(e) = res {
                // Not durable: say so, and write it again before going on (a consumer whose
                // registration is not durable would be unknown after a restart).
                self.register_again = true;
                return Poll::Ready(Some(Err(e)));
            }
        }
        loop {
            if !self.buf.is_empty() {
                return Poll::Ready(Some(Ok(())));
            }
            if self.shared.is_closed() {
                // A log whose runtime is gone says so once before the stream ends.
                if self.shared.runtime_gone() && !self.told_gone {
                    self.told_gone = true;
                    return Poll::Ready(Some(Err(Error::RuntimeGone)));
                }
                return Poll::Ready(None);
            }
            let oldest = self.topic.oldest.load(Ordering::Acquire);
            let resume = if self.cursor.next < oldest {
                Some(oldest)
            } else {
                self.topic.hole_end(self.cursor.next)
            };
            if let Some(oldest) = resume {
                let requested = self.cursor.next;
                self.cursor.reset(oldest);
                return Poll::Ready(Some(Err(Error::Truncated { requested, oldest })));
            }
            // Mark the current version seen *before* reading, so an append published after
            // the read below wakes the wait.
            self.visible.borrow_and_update();
            self.cursor.read(
                &self.topic,
                READ_AHEAD_BYTES,
                READ_AHEAD_ENTRIES,
                &mut self.scratch,
            );
            if !self.scratch.is_empty() {
                self.buf.extend(self.scratch.drain(..));
                continue;
            }
            if self.cursor.next < self.topic.oldest.load(Ordering::Acquire)
                || self.topic.hole_end(self.cursor.next).is_some()
            {
                continue; // deleted meanwhile: reported at the top
            }
            let wait = self.wait.get_or_insert_with(|| {
                let mut visible = self.visible.clone();
                let mut stop = self.shared.stop_signal();
                Box::pin(async move {
                    tokio::select! {
                        _ = visible.changed() => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                })
            });
            ready!(wait.as_mut().poll(cx));
            self.wait = None;
        }
    }
}

impl Stream for TopicStream {
    type Item = Result<Entry>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match ready!(this.poll_fill(cx)) {
            None => Poll::Ready(None),
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
            Some(Ok(())) => {
                let e = this.buf.pop_front().expect("poll_fill filled the buffer");
                this.delivered_end = this.delivered_end.max(e.offset + 1);
                Poll::Ready(Some(Ok(e)))
            }
        }
    }
}

impl Drop for TopicStream {
    fn drop(&mut self) {
        // AtLeastOnce: persist what was acknowledged but not yet persisted. Queued to the
        // checkpoint writer before the consumer is let go (the `_hold` field drops after this
        // body), so it is ordered before anything a later reader of this consumer writes (and
        // its epoch keeps it off a later registration). Needs no runtime here.
        let acked = self.state.acked.load(Ordering::Acquire);
        if acked > self.persisted && !self.shared.is_closed() {
            let queued = self.shared.checkpoints.persist(
                &self.state.topic,
                &self.state.name,
                self.state.epoch,
                acked,
                self.persisted,
            );
            if let Err(e) = queued {
                tracing::warn!(topic = %self.state.topic, consumer = %self.state.name, error = %e, "persisting a dropped stream's checkpoint failed");
            }
        }
    }
}
