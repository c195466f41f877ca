//! The `Walrus` handle, the crate's public face: appends, polling reads, subscriptions,
//! consumer administration, introspection and close. The state it works on is in `engine`;
//! opening and closing in `lifecycle`.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures::FutureExt;
use tokio::sync::oneshot;

use crate::config::{IoBackend, ReadConsistency, WalrusBuilder};
use crate::consumer::ConsumerState;
use crate::engine::{ConsumerKey, Shared, insert_topic, join_error, put_state};
use crate::error::{Error, Result};
use crate::lifecycle::{self, Inner, close_log};
use crate::reader::{Cursor, Entry};
use crate::retention;
use crate::storage::lock;
use crate::stream::TopicStream;
use crate::topic::{Payload, Request, Topic, validate_consumer, validate_topic};

/// Counters of an open log. Counters count since this open.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Entries appended (batch entries count one each).
    pub appends: u64,
    /// Payload bytes appended.
    pub bytes_appended: u64,
    /// `append_batch` calls that wrote something.
    pub batches: u64,
    /// Durability barriers issued (`fdatasync` calls).
    pub fsyncs: u64,
    /// Write operations submitted to the I/O engine (one per group commit, usually).
    pub write_submissions: u64,
    /// Live segment files holding the log (the one spare file created ahead of need is not
    /// counted).
    pub segments: u64,
    /// Segment files deleted by retention.
    pub segments_deleted: u64,
    /// Damaged frames and headers found by recovery at open (each counted once; readers step
    /// over them without counting again).
    pub checksum_failures: u64,
    /// The I/O engine in use.
    pub backend: IoBackend,
    /// The checkpoint store was found damaged or missing (with segments present), at this open
    /// or an earlier one: a `checkpoints.damaged-*` file is in the log's directory. While it is,
    /// no data is deleted on consumers' account (retention limits still apply), so every
    /// consumer the damage lost can subscribe again and pin what it has not read. Remove that
    /// file once they have.
    pub checkpoint_store_damaged: bool,
    /// Backlog of every registered consumer (the default consumer of a topic once it has
    /// consumed something), sorted by topic and consumer.
    pub consumers: Vec<ConsumerLag>,
}

/// Backlog of one registered consumer, in [`Stats::consumers`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerLag {
    /// The topic.
    pub topic: String,
    /// The consumer (`""`: the topic's default consumer).
    pub consumer: String,
    /// Entries it has not acknowledged yet.
    pub lag: u64,
}

/// What a topic holds, from [`Walrus::topic_info`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopicInfo {
    /// The topic.
    pub name: String,
    /// Offset of the oldest retained entry (equal to `next_offset` when none is).
    pub oldest_offset: u64,
    /// The offset the next append gets (entries below it are visible to readers).
    pub next_offset: u64,
    /// Entries retained (offsets between the two, less those of failed appends).
    pub entries: u64,
    /// Payload bytes retained.
    pub bytes: u64,
}

/// An open write-ahead log.
///
/// A cheap handle: clone it to share between tasks. See the [crate docs](crate) for an
/// overview and an example.
#[derive(Clone)]
pub struct Walrus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Walrus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Walrus")
            .field("dir", &self.shared().dir)
            .field("backend", &self.shared().io.kind())
            .finish()
    }
}

/// Where [`Walrus::reset_consumer`] moves a consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetTo {
    /// To this offset: the next entry the consumer reads is the one at `offset` (or the first
    /// after it). Below the oldest retained entry it means the oldest; past the end, the end.
    Offset(u64),
    /// To the oldest retained entry: everything retained is read again.
    Earliest,
    /// To the end: only entries appended from now on are read.
    Latest,
}

/// Undoes the checkpoint of a consuming read whose future was dropped before it returned: its
/// entries never reached the caller, so the durable checkpoint must not stay past them.
struct UndoCheckpoint {
    shared: Arc<Shared>,
    state: Arc<ConsumerState>,
    from: u64,
    to: u64,
    armed: bool,
}

impl Drop for UndoCheckpoint {
    fn drop(&mut self) {
        if self.armed {
            self.shared.checkpoints.restore(
                &self.state.topic,
                &self.state.name,
                self.state.epoch,
                self.from,
                self.to,
            );
        }
    }
}

impl WalrusBuilder {
    /// Opens (creating or recovering) the log. Its tasks run on the calling Tokio runtime;
    /// if that runtime shuts down before the log is closed, every call on its handles fails
    /// with [`Error::RuntimeGone`].
    ///
    /// # Cancellation
    /// As [`Walrus::open`].
    pub async fn open(self) -> Result<Walrus> {
        let config = self.resolve()?;
        Ok(Walrus {
            inner: lifecycle::open(config).await?,
        })
    }
}

impl Walrus {
    /// Opens the log in `dir` with default settings (see [`WalrusBuilder`]).
    ///
    /// # Cancellation
    /// Dropping the future lets go of the directory lock; nothing a later open needs is lost.
    /// What an open changes on disk: it syncs the segments it found, deletes spare files that
    /// never held data (and files whose creation a crash cut short), rewrites the checkpoint
    /// store, and runs one retention pass (files every consumer has passed, or that a limit
    /// takes, are deleted, after a floor record keeps their topics' next offsets). Torn tails
    /// are not cut on disk: they are read past.
    ///
    /// ```no_run
    /// # async fn demo() -> walrus_async::Result<()> {
    /// let wal = walrus_async::Walrus::open("./wal_files").await?;
    /// # Ok(()) }
    /// ```
    pub async fn open(dir: impl AsRef<Path>) -> Result<Walrus> {
        Walrus::builder().data_dir(dir).open().await
    }

    /// A builder for every setting.
    pub fn builder() -> WalrusBuilder {
        WalrusBuilder::default()
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// The settings the log was opened with.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn config(&self) -> &crate::config::Config {
        &self.shared().config
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.shared().closed.load(Ordering::Acquire) {
            Err(self.shared().stopped())
        } else {
            Ok(())
        }
    }

    /// Appends one entry to `topic` and returns its offset.
    ///
    /// Resolves once the entry is as durable as the [`FsyncSchedule`](crate::FsyncSchedule)
    /// promises. Waits while the log's writer queue is full (backpressure).
    ///
    /// # Errors
    /// A failed write or fsync (`Error::Io`, `Error::SyncFailed`) means the entry is not known
    /// to be durable, not that it is absent: its bytes may have reached the disk and be read
    /// after a restart (at an offset readers of this lifetime skipped as a gap). A producer that
    /// retries after such an error may write the entry twice; make entries idempotent where
    /// that matters. Errors returned before anything is queued (`EntryTooLarge`, `InvalidTopic`,
    /// `Closed`) mean nothing was written.
    ///
    /// # Cancellation
    /// Dropping the future never corrupts the log: the entry is then either written whole or
    /// not at all, and its outcome is not reported.
    ///
    /// ```no_run
    /// # async fn demo(wal: walrus_async::Walrus) -> walrus_async::Result<()> {
    /// let offset = wal.append("orders", "hello").await?;
    /// # Ok(()) }
    /// ```
    pub async fn append(&self, topic: &str, data: impl Into<Bytes>) -> Result<u64> {
        let data = data.into();
        let max = self.shared().config.max_entry_bytes;
        if data.len() > max {
            return Err(Error::EntryTooLarge {
                size: data.len(),
                max,
            });
        }
        self.submit(topic, Payload::One(data))
            .await
            .map(|r| r.start)
    }

    /// Appends `entries` to `topic` atomically and returns their offsets.
    ///
    /// After any crash either every entry of the batch is in the log or none is. An empty
    /// batch writes nothing and returns an empty range.
    ///
    /// # Cancellation
    /// As for [`append`](Self::append): the batch is written whole or not at all.
    ///
    /// ```no_run
    /// # async fn demo(wal: walrus_async::Walrus) -> walrus_async::Result<()> {
    /// let offsets = wal.append_batch("orders", ["a", "b", "c"]).await?;
    /// assert_eq!(offsets.end - offsets.start, 3);
    /// # Ok(()) }
    /// ```
    pub async fn append_batch<I, B>(&self, topic: &str, entries: I) -> Result<Range<u64>>
    where
        I: IntoIterator<Item = B>,
        B: Into<Bytes>,
    {
        let cfg = &self.shared().config;
        let entries: Vec<Bytes> = entries.into_iter().map(Into::into).collect();
        let mut total = 0usize;
        for e in &entries {
            if e.len() > cfg.max_entry_bytes {
                return Err(Error::EntryTooLarge {
                    size: e.len(),
                    max: cfg.max_entry_bytes,
                });
            }
            total += e.len();
        }
        if total > cfg.max_batch_bytes {
            return Err(Error::BatchTooLarge {
                size: total,
                max: cfg.max_batch_bytes,
            });
        }
        if entries.len() > cfg.max_batch_entries {
            return Err(Error::BatchTooLarge {
                size: entries.len(),
                max: cfg.max_batch_entries,
            });
        }
        if entries.is_empty() {
            validate_topic(topic)?;
            self.check_open()?;
            let next = self.topic(topic).map_or(0, |t| t.next_offset());
            return Ok(next..next);
        }
        self.submit(topic, Payload::Batch(entries)).await
    }

    async fn submit(&self, topic: &str, payload: Payload) -> Result<Range<u64>> {
        // Append latency is a metric; without the feature, no clock read per append.
        #[cfg(feature = "metrics")]
        let started = std::time::Instant::now();
        validate_topic(topic)?;
        self.check_open()?;
        let shared = self.shared();
        let tx = shared
            .writer_tx
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| shared.stopped())?;
        let topic = self.topic_or_create(topic);
        let (reply, rx) = oneshot::channel();
        tx.send(Request {
            topic,
            payload,
            reply: Some(reply),
        })
        .await
        .map_err(|_| shared.stopped())?;
        drop(tx);
        let res = rx.await.map_err(|_| shared.stopped())?;
        #[cfg(feature = "metrics")]
        if res.is_ok() {
            crate::telemetry::append_done(started.elapsed());
        }
        res
    }

    fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.shared()
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// The live state of `(topic, consumer)`, created at its persisted checkpoint (or the
    /// oldest retained entry).
    fn consumer_state(&self, topic: &Arc<Topic>, consumer: &str) -> Arc<ConsumerState> {
        self.shared().consumer_state(topic, consumer)
    }

    /// Reads the next entry of `topic` for the default consumer.
    ///
    /// With `checkpoint = true` the entry counts as consumed: the cursor moves past it and is
    /// persisted per [`ReadConsistency`] (under `StrictlyAtOnce`, durably before this returns).
    /// With `false` it is a peek: the same entry comes again. Unknown topics read as `None`.
    ///
    /// # Cancellation
    /// Cancel safe: if the future is dropped, the cursor did not move, and a checkpoint it was
    /// writing is put back (in the order of the checkpoint writes, before any later read of
    /// this consumer writes one), so the entry comes again, also after a restart.
    pub async fn read_next(&self, topic: &str, checkpoint: bool) -> Result<Option<Entry>> {
        Ok(self
            .poll_read(topic, usize::MAX, 1, checkpoint)
            .await?
            .pop())
    }

    /// Reads entries of `topic` for the default consumer: at least one when any is available,
    /// and no more than `max_bytes` of payload beyond the first. `checkpoint` as for
    /// [`read_next`](Self::read_next).
    ///
    /// # Cancellation
    /// Cancel safe, as [`read_next`](Self::read_next): the entries come again.
    pub async fn batch_read(
        &self,
        topic: &str,
        max_bytes: usize,
        checkpoint: bool,
    ) -> Result<Vec<Entry>> {
        self.poll_read(topic, max_bytes, usize::MAX, checkpoint)
            .await
    }

    async fn poll_read(
        &self,
        topic: &str,
        max_bytes: usize,
        max_entries: usize,
        checkpoint: bool,
    ) -> Result<Vec<Entry>> {
        self.check_open()?;
        validate_topic(topic)?;
        let Some(t) = self.topic(topic) else {
            return Ok(Vec::new());
        };
        let shared = self.shared();
        loop {
            let state = self.consumer_state(&t, "");
            let mut guard = state.poll.lock().await;
            // A reset while this waited replaced the state: read with the current one.
            if shared.checkpoints.member(topic, "").map_or(0, |m| m.epoch) != state.epoch {
                continue;
            }
            if state.busy.load(Ordering::Acquire) {
                return Err(state.busy_error());
            }
            // Pinned before `oldest` is looked at: retention's last look before a deletion and
            // this take the same lock, so what this read is about to read cannot go meanwhile.
            if checkpoint {
                shared.pin_reader(&state);
            }
            let mut cursor = guard.clone();
            let acked = state.acked.load(Ordering::Acquire);
            if cursor.next != acked {
                cursor.reset(acked); // a stream of this consumer moved it
            }
            // Retention limits deleted entries this consumer had not read: say so once, then go
            // on from the oldest retained entry.
            let oldest = t.oldest.load(Ordering::Acquire);
            let resume = if cursor.next < oldest {
                Some(oldest)
            } else {
                t.hole_end(cursor.next)
            };
            if let Some(oldest) = resume {
                let requested = cursor.next;
                cursor.reset(oldest);
                state.acked.store(oldest, Ordering::Release);
                *guard = cursor;
                return Err(Error::Truncated { requested, oldest });
            }
            let mut out = Vec::new();
            cursor.read(&t, max_bytes, max_entries, &mut out);
            if out.is_empty()
                && (cursor.next < t.oldest.load(Ordering::Acquire)
                    || t.hole_end(cursor.next).is_some())
            {
                // A limit deleted the cursor's position meanwhile: reported by the next turn.
                drop(guard);
                continue;
            }
            if !checkpoint || out.is_empty() {
                return Ok(out);
            }
            let persisted = shared.checkpoints.member(topic, "").map_or(0, |m| m.offset);
            let due = match shared.config.consistency {
                ReadConsistency::StrictlyAtOnce => true,
                ReadConsistency::AtLeastOnce { persist_every } => {
                    cursor.next.saturating_sub(persisted) >= u64::from(persist_every.max(1))
                }
            };
            if due {
                let ticket =
                    shared
                        .checkpoints
                        .persist(topic, "", state.epoch, cursor.next, acked)?;
                // Declared after the poll guard, so dropped before it: the undo is queued before
                // another read of this consumer can queue anything.
                let mut undo = UndoCheckpoint {
                    shared: shared.clone(),
                    state: state.clone(),
                    from: cursor.next,
                    to: acked,
                    armed: true,
                };
                let res = ticket.wait().await;
                undo.armed = false;
                res?;
                shared.retention_wake.notify_one();
            }
            state.acked.store(cursor.next, Ordering::Release);
            *guard = cursor;
            return Ok(out);
        }
    }

    /// Reads entries of `topic` from `offset` on, without touching any cursor. Same
    /// `max_bytes` rule as [`batch_read`](Self::batch_read). At or past the end, or on an
    /// unknown topic: empty. Below the oldest retained offset, or inside a range retention
    /// deleted: [`Error::Truncated`] (its `oldest` is where retained entries go on).
    ///
    /// # Cancellation
    /// Cancel safe: it only reads.
    pub async fn read_at(&self, topic: &str, offset: u64, max_bytes: usize) -> Result<Vec<Entry>> {
        self.read_at_most(topic, offset, max_bytes, usize::MAX)
    }

    /// [`read_at`](Self::read_at), stopping after `max_entries` entries too.
    pub(crate) fn read_at_most(
        &self,
        topic: &str,
        offset: u64,
        max_bytes: usize,
        max_entries: usize,
    ) -> Result<Vec<Entry>> {
        self.check_open()?;
        validate_topic(topic)?;
        let Some(t) = self.topic(topic) else {
            return Ok(Vec::new());
        };
        let oldest = t.oldest.load(Ordering::Acquire);
        if offset < oldest {
            return Err(Error::Truncated {
                requested: offset,
                oldest,
            });
        }
        if let Some(end) = t.hole_end(offset) {
            return Err(Error::Truncated {
                requested: offset,
                oldest: end,
            });
        }
        let mut cursor = Cursor::new(offset);
        let mut out = Vec::new();
        cursor.read(&t, max_bytes, max_entries, &mut out);
        let oldest = t.oldest.load(Ordering::Acquire);
        if out.is_empty() && offset < oldest {
            // Deleted since it was looked at above.
            return Err(Error::Truncated {
                requested: offset,
                oldest,
            });
        }
        Ok(out)
    }

    /// The offset of the first entry of `topic` appended at or after `time` (milliseconds
    /// since the Unix epoch, as [`Entry::timestamp`]), or `None` if every retained entry is
    /// older (or the topic has none). A time before the oldest retained entry gives that
    /// entry's offset.
    ///
    /// Entry times come from the log's clock when their group was written and never go back
    /// (see [`Entry::timestamp`]), so the answer is found by binary search over the topic's
    /// spans and a walk within one.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> walrus_async::Result<()> {
    /// # let dir = tempfile::tempdir()?;
    /// let wal = walrus_async::Walrus::open(dir.path()).await?;
    /// wal.append("orders", "a").await?;
    /// let t = wal.read_at("orders", 0, 0).await?[0].timestamp;
    /// assert_eq!(wal.offset_for_time("orders", t)?, Some(0));
    /// assert_eq!(wal.offset_for_time("orders", t + 1)?, None);
    /// # Ok(()) }
    /// ```
    pub fn offset_for_time(&self, topic: &str, time: u64) -> Result<Option<u64>> {
        self.check_open()?;
        validate_topic(topic)?;
        let Some(t) = self.topic(topic) else {
            return Ok(None);
        };
        Ok(crate::reader::offset_for_time(&t, time).and_then(|o| {
            let oldest = t.oldest.load(Ordering::Acquire);
            // Only what a reader may see: visible, and still retained.
            (o < t.visible()).then(|| o.max(oldest))
        }))
    }

    /// A tailing stream of `topic` for its default consumer: the cursor `read_next` and
    /// `batch_read` use, so while the stream lives they get [`Error::ConsumerBusy`].
    ///
    /// Subscribing to a topic with no entries yet is fine: the stream waits.
    pub fn subscribe(&self, topic: &str) -> Result<TopicStream> {
        self.subscribe_inner(topic, "")
    }

    /// A tailing stream of `topic` for the named `consumer`, which has its own durable
    /// checkpoint. A consumer is registered on first use (durably, before the stream yields
    /// its first item) and from then on pins the data it has not acknowledged against
    /// retention, until [`remove_consumer`](Self::remove_consumer). A new consumer starts at
    /// the oldest retained entry.
    ///
    /// Names are 1..=255 bytes of UTF-8 without NUL ([`Error::InvalidConsumer`]). One live
    /// stream per (topic, consumer): a second gets [`Error::ConsumerBusy`] until the first is
    /// dropped.
    pub fn subscribe_as(&self, topic: &str, consumer: &str) -> Result<TopicStream> {
        validate_consumer(consumer)?;
        self.subscribe_inner(topic, consumer)
    }

    fn subscribe_inner(&self, topic: &str, consumer: &str) -> Result<TopicStream> {
        self.check_open()?;
        validate_topic(topic)?;
        let t = self.topic_or_create(topic);
        let shared = self.shared();
        // Under the consumers lock: one registration per consumer, and ordered against
        // retention's last look before it deletes (see `retention::pass`).
        let mut consumers = lock(&shared.consumers);
        let member = shared.checkpoints.member(topic, consumer);
        let key: ConsumerKey = (t.name.clone(), Arc::from(consumer));
        let (state, hold, registration, persisted) = match member {
            // A named consumer's first subscription registers it, at the oldest retained
            // entry; it pins data from now on, and the stream waits for the record to be
            // durable before its first item. Nothing else holds a state of an unregistered
            // consumer busy (removal and reset need it idle).
            None if !consumer.is_empty() => {
                if consumers
                    .get(&key)
                    .is_some_and(|s| s.busy.load(Ordering::Acquire))
                {
                    return Err(Error::ConsumerBusy {
                        topic: topic.to_owned(),
                        consumer: consumer.to_owned(),
                    });
                }
                let at = t.oldest.load(Ordering::Acquire);
                let (epoch, ticket) = shared.checkpoints.register(topic, consumer, at)?;
                let state = put_state(&mut consumers, key, epoch, at);
                let hold = state.hold()?;
                (state, hold, Some(ticket), at)
            }
            member => {
                let state = shared.state_locked(&mut consumers, &t, consumer, member);
                // Busy while another stream, or a polling read of the default consumer, has it.
                let hold = state.hold()?;
                let registration = match member {
                    Some(m) if !m.durable => {
                        Some(shared.checkpoints.reregister(topic, consumer, m.epoch)?)
                    }
                    _ => None,
                };
                if consumer.is_empty() {
                    state.reading.store(true, Ordering::Release);
                }
                let persisted = member.map_or(state.start, |m| m.offset);
                (state, hold, registration, persisted)
            }
        };
        drop(consumers);
        let registration = registration.map(|t| {
            Box::pin(t.wait())
                as std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>
        });
        Ok(TopicStream::new(
            shared.clone(),
            t,
            state,
            hold,
            persisted,
            registration,
        ))
    }

    /// The topic, created empty if unknown (streams may wait on topics nobody wrote yet).
    fn topic_or_create(&self, name: &str) -> Arc<Topic> {
        if let Some(t) = self.topic(name) {
            return t;
        }
        let mut topics = self
            .shared()
            .topics
            .write()
            .unwrap_or_else(|p| p.into_inner());
        insert_topic(&mut topics, name)
    }

    /// Forgets the named `consumer` of `topic`, durably: it no longer pins data, and a later
    /// `subscribe_as` starts it afresh at the oldest retained entry (a new registration: no
    /// late checkpoint of an earlier stream of it can land on the new one). Fails with
    /// [`Error::ConsumerBusy`] while a stream of it is live. Unknown consumers: `Ok`.
    ///
    /// # Cancellation
    /// Once polled, the removal is made whatever happens to the future (its record is written
    /// by the log's checkpoint task); dropping it only stops the wait for it to be durable.
    /// The consumer is never left busy.
    pub async fn remove_consumer(&self, topic: &str, consumer: &str) -> Result<()> {
        self.check_open()?;
        validate_topic(topic)?;
        validate_consumer(consumer)?;
        let shared = self.shared();
        let key: ConsumerKey = (Arc::from(topic), Arc::from(consumer));
        let ticket = {
            let mut consumers = lock(&shared.consumers);
            // Refused while a stream of it lives; held (and let go on drop, whatever happens
            // to this future) while the removal is queued.
            let _hold = consumers.get(&key).map(|s| s.hold()).transpose()?;
            // From here on the consumer is gone for every caller: a later `subscribe_as`
            // registers it afresh. Its durable checkpoint pins data until the removal is
            // durable.
            let ticket = shared.checkpoints.remove(topic, consumer)?;
            consumers.remove(&key);
            ticket
        };
        // Dropping this wait does not cancel the removal.
        ticket.wait().await?;
        shared.retention_wake.notify_one();
        Ok(())
    }

    /// Moves `consumer`'s checkpoint of `topic` to `to`, durably, and returns where it now
    /// stands: the next offset the consumer will read. `""` is the topic's default consumer
    /// (the polling reads and `subscribe`). A named consumer not registered yet is registered
    /// there.
    ///
    /// An offset below the oldest retained entry moves the consumer to the oldest; one past
    /// the end moves it to the end. The reset starts a new registration of the consumer: no
    /// checkpoint written by an earlier stream of it (a late write of a dropped stream, say)
    /// can land on it. Refused with [`Error::ConsumerBusy`] while a stream of the consumer is
    /// live or a polling read of it is in flight.
    ///
    /// # Cancellation
    /// Once polled, the reset is made whatever happens to the future: dropping it only stops
    /// the wait for it to be durable. A failed write is reported to the caller, and the
    /// consumer's next stream writes the new position again before its first item.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> walrus_async::Result<()> {
    /// use walrus_async::{ResetTo, Walrus};
    /// let dir = tempfile::tempdir()?;
    /// let wal = Walrus::open(dir.path()).await?;
    /// wal.append_batch("orders", ["a", "b", "c"]).await?;
    /// assert_eq!(wal.reset_consumer("orders", "billing", ResetTo::Latest).await?, 3);
    /// assert_eq!(wal.reset_consumer("orders", "billing", ResetTo::Offset(1)).await?, 1);
    /// assert_eq!(wal.consumer_lag("orders", "billing"), Some(2));
    /// # wal.close().await }
    /// ```
    pub async fn reset_consumer(&self, topic: &str, consumer: &str, to: ResetTo) -> Result<u64> {
        self.check_open()?;
        validate_topic(topic)?;
        if !consumer.is_empty() {
            validate_consumer(consumer)?;
        }
        let t = self.topic_or_create(topic);
        let shared = self.shared();
        let (at, ticket) = {
            let mut consumers = lock(&shared.consumers);
            let key: ConsumerKey = (t.name.clone(), Arc::from(consumer));
            let _hold = consumers.get(&key).map(|s| s.hold()).transpose()?;
            let oldest = t.oldest.load(Ordering::Acquire);
            let end = t.next_offset().max(oldest);
            let at = match to {
                ResetTo::Earliest => oldest,
                ResetTo::Latest => end,
                ResetTo::Offset(n) => n.clamp(oldest, end),
            };
            let (epoch, ticket) = shared.checkpoints.register(topic, consumer, at)?;
            // A default consumer that was reading keeps pinning from its new position.
            let reading = consumers
                .get(&key)
                .is_some_and(|old| old.reading.load(Ordering::Acquire));
            let state = put_state(&mut consumers, key, epoch, at);
            state.reading.store(reading, Ordering::Release);
            (at, ticket)
        };
        ticket.wait().await?;
        shared.retention_wake.notify_one();
        Ok(at)
    }

    /// Entries of `topic` the consumer has not acknowledged (`""`: the default consumer).
    /// `None` for a named consumer that is not registered.
    pub fn consumer_lag(&self, topic: &str, consumer: &str) -> Option<u64> {
        let shared = self.shared();
        if !consumer.is_empty() && !shared.checkpoints.is_registered(topic, consumer) {
            return None;
        }
        let Some(t) = self.topic(topic) else {
            return Some(0);
        };
        let acked = self
            .consumer_state(&t, consumer)
            .acked
            .load(Ordering::Acquire);
        Some(t.entries_between(acked.max(t.oldest.load(Ordering::Acquire)), t.visible()))
    }

    /// Runs a retention pass now instead of waiting for the background task (which runs one
    /// within about a second of a checkpoint moving). Returns the number of segment files
    /// deleted. A file that cannot be deleted (its unlink failed, say) does not stop the pass:
    /// the others go, the first error is returned, and later passes try again. A file already
    /// gone (deleted by hand) counts as deleted.
    ///
    /// # Cancellation
    /// The pass runs as a task of the log: dropping the future does not stop it half way.
    pub async fn reclaim(&self) -> Result<u64> {
        self.check_open()?;
        // A task of the log's own, so a caller that stops waiting (a dropped future) never
        // leaves a pass half done.
        let shared = self.shared().clone();
        let task = self
            .shared()
            .spawn(async move { retention::pass(&shared).await });
        task.await.unwrap_or_else(|e| Err(join_error(e)))
    }

    /// Names of the topics this log knows, sorted: those with entries, those appended to or
    /// subscribed to in this lifetime, and those whose entries were all deleted but whose next
    /// offset is remembered (so it never goes back).
    pub fn topics(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .shared()
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .map(|k| k.to_string())
            .collect();
        v.sort();
        v
    }

    /// Entries of `topic` the default consumer has not consumed yet (0 for unknown topics).
    pub fn entry_count(&self, topic: &str) -> u64 {
        let Some(t) = self.topic(topic) else { return 0 };
        let acked = self.consumer_state(&t, "").acked.load(Ordering::Acquire);
        t.entries_between(acked.max(t.oldest.load(Ordering::Acquire)), t.visible())
    }

    /// What `topic` holds now: its oldest retained and next offsets, entries and payload
    /// bytes retained. `None` for a topic the log does not have.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> walrus_async::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let wal = walrus_async::Walrus::open(dir.path()).await?;
    /// wal.append_batch("orders", ["a", "b"]).await?;
    /// let info = wal.topic_info("orders").unwrap();
    /// assert_eq!((info.oldest_offset, info.next_offset, info.entries), (0, 2, 2));
    /// assert!(wal.topic_info("nothing").is_none());
    /// # wal.close().await }
    /// ```
    pub fn topic_info(&self, topic: &str) -> Option<TopicInfo> {
        let t = self.topic(topic)?;
        // Past failed appends' offsets too (they are gaps, never published).
        let next = t.next_offset();
        let oldest = t.oldest.load(Ordering::Acquire).min(next);
        Some(TopicInfo {
            name: t.name.to_string(),
            oldest_offset: oldest,
            next_offset: next,
            entries: t.entries_between(oldest, t.visible()),
            bytes: t.retained_bytes(),
        })
    }

    /// Payload bytes of `topic` retained on disk (framing not counted).
    pub fn topic_size(&self, topic: &str) -> u64 {
        self.topic(topic).map_or(0, |t| t.retained_bytes())
    }

    /// Sets the log's gauges (feature `metrics`) from its state now: segments, disk bytes
    /// allocated and written, bytes not yet durable, topics, and per registered consumer its
    /// topic's offsets, checkpoint, lag in entries and bytes, age of its oldest unconsumed
    /// entry and the disk it pins. The log does this every second by itself; call it before
    /// reading a recorder's snapshot when that second matters (tests, a scrape handler).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> walrus_async::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let wal = walrus_async::Walrus::builder().data_dir(dir.path()).open().await?;
    /// wal.append("t", "x").await?;
    /// wal.record_metrics(); // walrus_consumer_lag_entries and the rest, up to date
    /// # wal.close().await }
    /// ```
    #[cfg(feature = "metrics")]
    pub fn record_metrics(&self) {
        crate::telemetry::sample(self.shared());
    }

    /// Counters since open. Also answers after [`close`](Self::close).
    pub fn stats(&self) -> Stats {
        let s = &self.shared().stats;
        Stats {
            appends: s.appends.load(Ordering::Relaxed),
            bytes_appended: s.bytes_appended.load(Ordering::Relaxed),
            batches: s.batches.load(Ordering::Relaxed),
            fsyncs: s.fsyncs.load(Ordering::Relaxed),
            write_submissions: s.write_submissions.load(Ordering::Relaxed),
            segments: lock(&self.shared().alloc.registry).len() as u64,
            segments_deleted: s.segments_deleted.load(Ordering::Relaxed),
            checksum_failures: s.checksum_failures.load(Ordering::Relaxed),
            backend: self.shared().io.kind(),
            consumers: self.lags(),
            checkpoint_store_damaged: self.shared().checkpoint_damage,
        }
    }

    fn lags(&self) -> Vec<ConsumerLag> {
        let mut out: Vec<ConsumerLag> = self
            .shared()
            .checkpoints
            .registered()
            .into_iter()
            .filter_map(|(topic, consumer)| {
                let lag = self.consumer_lag(&topic, &consumer)?;
                Some(ConsumerLag {
                    topic,
                    consumer,
                    lag,
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.topic, &a.consumer).cmp(&(&b.topic, &b.consumer)));
        out
    }

    /// Makes everything acknowledged so far durable, whatever the fsync schedule.
    ///
    /// Fails with [`Error::SyncFailed`] if any sync of a file still in the log has ever failed:
    /// data acknowledged before that failure may be lost, and a later success would be a lie.
    ///
    /// # Cancellation
    /// Cancel safe: the sync may still run; nothing is lost either way.
    pub async fn sync(&self) -> Result<()> {
        self.check_open()?;
        self.shared()
            .durability
            .sync_all()
            .await
            .map_err(|e| match e {
                Error::Closed => self.shared().stopped(),
                e => e,
            })
    }

    /// Closes the log: stops taking appends, finishes queued ones, syncs, persists
    /// checkpoints, ends the background tasks and releases the directory lock.
    ///
    /// Every later call returns [`Error::Closed`], except [`stats`](Self::stats) and `close`
    /// itself, which returns the outcome of the first close again: `Ok(())` only if everything
    /// was made durable.
    ///
    /// # Cancellation
    /// The close runs as a task of the log once this future is first polled: dropping the
    /// future does not stop it, and the next `close` waits for it to finish and returns its
    /// result.
    pub async fn close(&self) -> Result<()> {
        let shared = self.shared().clone();
        let closing = lock(&shared.closing)
            .get_or_insert_with(|| {
                let task = shared.spawn(close_log(shared.clone()));
                // Weak: this future is kept in `Shared` itself.
                let weak = Arc::downgrade(&shared);
                async move {
                    match task.await {
                        Ok(res) => res.map_err(Arc::new),
                        Err(e) => {
                            // The log's runtime is gone: let go of what needs no task.
                            if let Some(shared) = weak.upgrade() {
                                shared.abandon();
                            }
                            Err(Arc::new(join_error(e)))
                        }
                    }
                }
                .boxed()
                .shared()
            })
            .clone();
        closing.await.map_err(|e| e.duplicate())
    }
}
