//! openraft log storage on a walrus-async log (feature `raft`, openraft 0.9.25, storage-v2).
//!
//! [`LogStore`] implements openraft's `RaftLogStorage` and `RaftLogReader` for one Raft group
//! over one topic of an open [`Walrus`] (`raft/{group}`): many groups share one log, so their
//! appends share its writer and its group commit. The state machine stays the application's.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! use openraft::storage::RaftLogStorage;
//! use std::io::Cursor;
//! openraft::declare_raft_types!(pub Config: D = String, R = String);
//!
//! let wal = walrus_async::Walrus::builder()
//!     .data_dir(dir.path())
//!     .fsync(walrus_async::FsyncSchedule::SyncEach)
//!     .open()
//!     .await?;
//! let mut group_a = walrus_async::raft::LogStore::<Config>::open(wal.clone(), "a").await?;
//! let mut group_b = walrus_async::raft::LogStore::<Config>::open(wal.clone(), "b").await?;
//! assert_eq!(group_a.get_log_state().await?.last_log_id, None);
//! // Raft::new(node_id, config, network, group_a, state_machine) …
//! # drop((group_a, group_b));
//! # wal.close().await?;
//! # Ok(()) }
//! ```
//!
//! ## What goes where
//!
//! Everything of a group is one ordered stream of records in its topic, so the log's single
//! writer keeps them in the order they were made (a vote is never reordered with log writes):
//!
//! | record | written by | replay |
//! |---|---|---|
//! | entry (its `LogId` inside) | `append` | entries at its index and above are dropped, then it is the entry at its index |
//! | truncate `i` | `truncate` | entries at `i` and above are dropped |
//! | vote | `save_vote` | the vote |
//! | state (vote, committed, last purged, where the kept entries start) | `purge` | all four; entries at or below the purged index, and any mapped below where the kept ones start, are dropped |
//!
//! `save_committed` writes to a second topic, `raft-committed/{group}`, lazily: with the
//! group's next write, in the same group commit (openraft calls it on every commit and allows
//! it to lag). Kept out of the first topic, it does not split the entries' offsets into one
//! stretch per commit.
//!
//! **Raft indexes are not topic offsets.** A Raft log starts at any index, is cut at its end
//! by truncation and at its start by purges, and appends at an index below its end replace
//! what was there (an implicit truncate). The store keeps an in-memory map from index to
//! offset as *runs* (a first `LogId`, a first offset, a length: one run per stretch of
//! entries written one after another in one term), rebuilt on open by replaying the topic
//! from its oldest retained record with the rules above. Readers look indexes up in it, read
//! the records at those offsets, and check that each holds the index asked for.
//!
//! **Durability.** `append` reports `log_io_completed` once the entries and every earlier
//! record are durable: with [`FsyncSchedule::SyncEach`] the append itself resolves then (group
//! commit: appends of many groups share an `fdatasync`); with another schedule the store calls
//! [`Walrus::sync`] after each write. `save_vote`, `truncate` and `purge` are durable before
//! they return; `save_committed` is lazy (below). Each write runs as a task of the log, in the
//! order the calls were made, so a caller that drops a future half-way (openraft shutting
//! down) leaves the store's map matching what is on disk. openraft 0.9 waits for each append's
//! callback before its next storage call, so a `truncate` never meets an unflushed tail.
//!
//! **Retention.** `purge` writes a state record and moves the group's consumer (`raft`) to the
//! lowest offset still needed (the state record, or the oldest entry kept): older segment files
//! go through the log's retention once no other topic needs them. Records below that offset are
//! superseded: vote, committed and last purged log id always survive in a record at or above it.
//! Retention may keep an old file another topic still needs while deleting newer ones: replay
//! steps over the deleted stretch, and the state record tells which mapped entries below it
//! are stale. A group that never purges keeps every file it wrote to.
//! A log with size or age retention limits would delete records regardless, so
//! [`LogStore::open`] refuses it.
//!
//! Records are [postcard](https://docs.rs/postcard); a record that does not decode is a typed
//! `StorageError` (on open: an [`Error::Io`] of kind `InvalidData`), never a panic.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use bytes::Bytes;
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{
    LogId, OptionalSend, RaftLogId, RaftTypeConfig, StorageError, StorageIOError, Vote,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, FsyncSchedule, ResetTo, Walrus};

const ENTRY: u8 = 1;
const TRUNCATE: u8 = 2;
const VOTE: u8 = 3;
const COMMITTED: u8 = 4;
const STATE: u8 = 5;

/// The consumer whose checkpoint tells retention what a group no longer needs.
const CONSUMER: &str = "raft";

/// What `limited_get_log_entries` reads at most in one call (at least one entry).
const READ_LIMIT: usize = 1 << 20;

type NodeIdOf<C> = <C as RaftTypeConfig>::NodeId;
type StorageResult<T, C> = Result<T, StorageError<NodeIdOf<C>>>;

/// The log storage of one Raft group: a topic of a shared [`Walrus`] log.
///
/// Cheap to keep; at most one per (log, group) at a time ([`LogStore::open`] refuses a second
/// while one lives). Readers from `get_log_reader` see every append, truncation and purge at
/// once.
pub struct LogStore<C: RaftTypeConfig> {
    group: Arc<Group<C>>,
}

/// A reader of a group's log (openraft's `LogReader`), sharing the store's map.
pub struct LogReader<C: RaftTypeConfig> {
    group: Arc<Group<C>>,
}

impl<C: RaftTypeConfig> Clone for LogReader<C> {
    fn clone(&self) -> Self {
        LogReader {
            group: self.group.clone(),
        }
    }
}

impl<C: RaftTypeConfig> Debug for LogStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("topic", &self.group.topic)
            .finish_non_exhaustive()
    }
}

impl<C: RaftTypeConfig> Debug for LogReader<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogReader")
            .field("topic", &self.group.topic)
            .finish_non_exhaustive()
    }
}

struct Group<C: RaftTypeConfig> {
    // First, so it is let go before the log handle: a new log allocated at the same address
    // must not find the old claim.
    claim: Claim,
    wal: Walrus,
    topic: String,
    /// Where committed log ids go (`raft-committed/{group}`): written often and lazily, they
    /// are kept out of the entries' topic so entries stay at consecutive offsets.
    committed_topic: String,
    /// Under `SyncEach` an append is durable when it resolves; otherwise each write syncs.
    sync_each: bool,
    state: RwLock<State<NodeIdOf<C>>>,
    /// One write at a time, in the order they were called.
    writing: Arc<tokio::sync::Mutex<()>>,
    /// A committed log id saved but not written yet: it goes with the group's next write.
    pending_committed: Mutex<Option<Bytes>>,
    _config: PhantomData<fn() -> C>,
}

/// A stretch of entries at consecutive offsets and indexes, of one leader.
#[derive(Clone, Copy, Debug)]
struct Run<NID: openraft::NodeId> {
    first: LogId<NID>,
    offset: u64,
    len: u64,
}

impl<NID: openraft::NodeId> Run<NID> {
    fn end(&self) -> u64 {
        self.first.index + self.len
    }
}

/// A group's state: the index → offset map and what the records say.
#[derive(Debug)]
struct State<NID: openraft::NodeId> {
    runs: VecDeque<Run<NID>>,
    purged: Option<LogId<NID>>,
    vote: Option<Vote<NID>>,
    committed: Option<LogId<NID>>,
}

impl<NID: openraft::NodeId> State<NID> {
    fn new() -> Self {
        State {
            runs: VecDeque::new(),
            purged: None,
            vote: None,
            committed: None,
        }
    }

    /// The index the next append continues at.
    fn next_index(&self) -> u64 {
        match (self.runs.back(), &self.purged) {
            (Some(r), _) => r.end(),
            (None, Some(p)) => p.index + 1,
            (None, None) => 0,
        }
    }

    fn last_log_id(&self) -> Option<LogId<NID>> {
        match self.runs.back() {
            Some(r) => Some(LogId::new(r.first.leader_id.clone(), r.end() - 1)),
            None => self.purged.clone(),
        }
    }

    /// Drops the entries at `index` and above.
    fn truncate(&mut self, index: u64) {
        while let Some(r) = self.runs.back_mut() {
            if r.first.index >= index {
                self.runs.pop_back();
            } else {
                r.len = r.len.min(index - r.first.index);
                break;
            }
        }
    }

    /// Drops the entries at `log_id.index` and below; remembers `log_id` as given (never
    /// backwards).
    fn purge(&mut self, log_id: LogId<NID>) {
        if self
            .purged
            .as_ref()
            .is_some_and(|p| p.index >= log_id.index)
        {
            return;
        }
        let index = log_id.index;
        self.purged = Some(log_id);
        while let Some(r) = self.runs.front_mut() {
            if r.end() <= index + 1 {
                self.runs.pop_front();
            } else {
                if r.first.index <= index {
                    let cut = index + 1 - r.first.index;
                    r.first.index += cut;
                    r.offset += cut;
                    r.len -= cut;
                }
                break;
            }
        }
    }

    /// Drops what is mapped below `offset`: records a state record says are superseded.
    /// Runs are in offset order as well as index order (an entry is written after every entry
    /// below it that is still there).
    fn drop_below(&mut self, offset: Option<u64>) {
        let Some(offset) = offset else {
            self.runs.clear();
            return;
        };
        while let Some(r) = self.runs.front_mut() {
            if r.offset + r.len <= offset {
                self.runs.pop_front();
            } else {
                if r.offset < offset {
                    let cut = offset - r.offset;
                    r.first.index += cut;
                    r.offset += cut;
                    r.len -= cut;
                }
                break;
            }
        }
    }

    /// Where the entries a purge up to `index` keeps start, if any.
    fn kept_from(&self, index: u64) -> Option<u64> {
        let r = self.runs.iter().find(|r| r.end() > index + 1)?;
        Some(r.offset + (index + 1).saturating_sub(r.first.index))
    }

    /// The committed log id, never moved back (lazy writes may land out of order).
    fn commit(&mut self, committed: Option<LogId<NID>>) {
        if committed.as_ref().map(|c| c.index) > self.committed.as_ref().map(|c| c.index) {
            self.committed = committed;
        }
    }

    /// The entry `log_id` is at `offset`: what was at its index and above is replaced.
    fn push(&mut self, log_id: LogId<NID>, offset: u64) {
        self.truncate(log_id.index);
        if let Some(r) = self.runs.back_mut()
            && r.end() == log_id.index
            && r.offset + r.len == offset
            && r.first.leader_id == log_id.leader_id
        {
            r.len += 1;
            return;
        }
        self.runs.push_back(Run {
            first: log_id,
            offset,
            len: 1,
        });
    }
}

/// Which (log, group) pairs have a live store in this process, and which had a write fail
/// in this lifetime of their log.
static CLAIMS: Mutex<Vec<(usize, String)>> = Mutex::new(Vec::new());
static FAILED: Mutex<Vec<(Weak<crate::engine::Shared>, String)>> = Mutex::new(Vec::new());

/// A group claimed by a live store; let go on drop.
struct Claim {
    key: (usize, String),
    log: Weak<crate::engine::Shared>,
    /// A write of the group failed: what the log holds may differ from what the store
    /// showed (a record whose sync failed may still reach the disk).
    failed: AtomicBool,
}

impl Claim {
    fn take(wal: &Walrus, topic: &str) -> Result<Claim, Error> {
        let shared = wal.shared();
        {
            let mut failed = FAILED.lock().unwrap_or_else(|p| p.into_inner());
            failed.retain(|(log, _)| log.strong_count() > 0);
            if failed
                .iter()
                .any(|(log, t)| t == topic && std::ptr::eq(log.as_ptr(), Arc::as_ptr(shared)))
            {
                return Err(Error::Io(std::io::Error::other(format!(
                    "a write of the Raft group of topic {topic:?} failed in this lifetime of \
                     the log: open the log again before the group"
                ))));
            }
        }
        let key = (Arc::as_ptr(shared) as usize, topic.to_owned());
        let mut claims = CLAIMS.lock().unwrap_or_else(|p| p.into_inner());
        if claims.contains(&key) {
            return Err(Error::InvalidConfig(format!(
                "the Raft group of topic {topic:?} already has a live LogStore on this log"
            )));
        }
        claims.push(key.clone());
        Ok(Claim {
            key,
            log: Arc::downgrade(shared),
            failed: AtomicBool::new(false),
        })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.failed.load(Ordering::Acquire) {
            let mut failed = FAILED.lock().unwrap_or_else(|p| p.into_inner());
            failed.push((self.log.clone(), self.key.1.clone()));
        }
        let mut claims = CLAIMS.lock().unwrap_or_else(|p| p.into_inner());
        claims.retain(|k| *k != self.key);
    }
}

fn encode<T: Serialize + ?Sized>(tag: u8, value: &T) -> Result<Bytes, Error> {
    let mut out = vec![tag];
    let body = postcard::to_allocvec(value)
        .map_err(|e| Error::InvalidConfig(format!("encoding a Raft record: {e}")))?;
    out.extend_from_slice(&body);
    Ok(Bytes::from(out))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| e.to_string())
}

/// What the state record holds: vote, committed, last purged, and the offset of the oldest
/// entry kept (`None`: no entry below the record itself is kept).
type StateRecord<NID> = (
    Option<Vote<NID>>,
    Option<LogId<NID>>,
    Option<LogId<NID>>,
    Option<u64>,
);

/// An index the arithmetic of the map cannot take (it adds one to indexes).
fn check_index(index: u64) -> Result<u64, String> {
    if index == u64::MAX {
        Err("index u64::MAX".into())
    } else {
        Ok(index)
    }
}

/// Applies one record read back (at `offset`) to `state`.
fn replay<C>(state: &mut State<NodeIdOf<C>>, offset: u64, record: &[u8]) -> Result<(), String>
where
    C: RaftTypeConfig,
    C::Entry: DeserializeOwned,
{
    let Some((&tag, body)) = record.split_first() else {
        return Err("an empty record".into());
    };
    match tag {
        ENTRY => {
            let e: C::Entry = decode(body)?;
            check_index(e.get_log_id().index)?;
            state.push(e.get_log_id().clone(), offset);
        }
        TRUNCATE => state.truncate(decode(body)?),
        VOTE => state.vote = Some(decode(body)?),
        COMMITTED => state.commit(decode(body)?),
        STATE => {
            let (vote, committed, purged, kept_from): StateRecord<NodeIdOf<C>> = decode(body)?;
            state.vote = vote;
            state.commit(committed);
            if let Some(p) = purged {
                check_index(p.index)?;
                state.purge(p);
            }
            // Entries below what the purge kept are stale, even where retention left them
            // (a segment pinned by another topic) while deleting what superseded them.
            state.drop_below(kept_from);
        }
        other => return Err(format!("unknown record kind {other}")),
    }
    Ok(())
}

fn write_error<NID: openraft::NodeId>(
    e: impl std::error::Error + Send + Sync + 'static,
) -> StorageError<NID> {
    StorageIOError::write_logs(&e).into()
}

impl<C> LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    /// The store of Raft group `group` (its topic is `raft/{group}`) on `wal`: replays the
    /// topic to rebuild the group's state.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when the log has size or age retention limits (they would
    /// delete the group's records regardless), when `group` is empty or too long, or when a
    /// store of this group is live on this log already; when a record
    /// does not decode (an [`Error::Io`] of kind `InvalidData`); the log's own errors.
    pub async fn open(wal: Walrus, group: &str) -> Result<LogStore<C>, Error> {
        let cfg = wal.config();
        if cfg.retention_bytes.is_some() || cfg.retention_age.is_some() {
            return Err(Error::InvalidConfig(
                "a log holding Raft groups must not have retention_bytes or retention_age: \
                 they would delete votes and entries Raft still needs"
                    .into(),
            ));
        }
        if group.is_empty() || group.contains('\0') || group.len() > 200 {
            return Err(Error::InvalidConfig(format!(
                "a Raft group name is 1 to 200 bytes without NUL, not {:?}",
                group.chars().take(220).collect::<String>()
            )));
        }
        let sync_each = cfg.fsync == FsyncSchedule::SyncEach;
        let topic = format!("raft/{group}");
        let claim = Claim::take(&wal, &topic)?;
        let mut state = State::new();
        let committed_topic = format!("raft-committed/{group}");
        let bad = |topic: &str, offset: u64, reason: String| {
            Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "the Raft record at offset {offset} of topic {topic:?} does not decode: {reason}"
                ),
            ))
        };
        if let Some(info) = wal.topic_info(&topic) {
            let mut offset = info.oldest_offset;
            while offset < info.next_offset {
                let got = match wal.read_at(&topic, offset, 4 << 20).await {
                    Ok(got) => got,
                    // A stretch retention deleted (another topic pinned older files): what
                    // it held was superseded by a state record further on.
                    Err(Error::Truncated { oldest, .. }) if oldest > offset => {
                        offset = oldest;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let Some(last) = got.last() else { break };
                let next = last.offset + 1;
                for e in got {
                    replay::<C>(&mut state, e.offset, &e.data)
                        .map_err(|reason| bad(&topic, e.offset, reason))?;
                }
                offset = next;
            }
        }
        // The newest committed log id written there (lazily: it may lag, never lead).
        if let Some(info) = wal.topic_info(&committed_topic)
            && info.entries > 0
        {
            let last = info.next_offset - 1;
            // A last write that failed left a gap there: the state record still has an id.
            let got = match wal.read_at(&committed_topic, last, 1).await {
                Ok(got) => got,
                Err(Error::Truncated { .. }) => Vec::new(),
                Err(e) => return Err(e),
            };
            if let Some(e) = got.first() {
                let committed = match e.data.split_first() {
                    Some((&COMMITTED, body)) => decode(body),
                    _ => Err("not a committed record".to_owned()),
                }
                .map_err(|r| bad(&committed_topic, e.offset, r))?;
                state.commit(committed);
            }
        }
        Ok(LogStore {
            group: Arc::new(Group {
                wal,
                topic,
                sync_each,
                state: RwLock::new(state),
                writing: Arc::default(),
                pending_committed: Mutex::new(None),
                claim,
                committed_topic,
                _config: PhantomData,
            }),
        })
    }
}

impl<C: RaftTypeConfig> Group<C> {
    fn state(&self) -> std::sync::RwLockReadGuard<'_, State<NodeIdOf<C>>> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn state_mut(&self) -> std::sync::RwLockWriteGuard<'_, State<NodeIdOf<C>>> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends the records `make` builds from the current state and makes them durable;
    /// then `then` updates the state with their offsets (those written, when a write fails
    /// half-way). Runs as a task of the log: dropping the caller's future does not stop it
    /// half-way, so the state always matches the disk. The turn is taken before the task
    /// starts, so writes run in the order they were called.
    async fn write<T: Send + 'static>(
        self: &Arc<Self>,
        make: impl FnOnce(&State<NodeIdOf<C>>) -> Result<Vec<Bytes>, Error> + Send + 'static,
        then: impl FnOnce(&mut State<NodeIdOf<C>>, &[u64]) -> T + Send + 'static,
    ) -> Result<T, Error> {
        let turn = self.writing.clone().lock_owned().await;
        if self.claim.failed.load(Ordering::Acquire) {
            return Err(Error::Io(std::io::Error::other(
                "an earlier write of this Raft group failed: reopen the log",
            )));
        }
        let group = self.clone();
        let task = self.wal.shared().spawn(async move {
            let _turn = turn;
            let records = make(&group.state())?;
            let committed = group
                .pending_committed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            // Into the same log: both ride one group commit, no sync of their own.
            let (written, committed) = futures::join!(group.append_in_batches(records), async {
                match committed {
                    Some(r) => group.wal.append(&group.committed_topic, r).await.map(drop),
                    None => Ok(()),
                }
            });
            if let Err(e) = committed {
                tracing::debug!(error = %e, topic = group.committed_topic, "committed log id not written");
            }
            let (offsets, failed) = written;
            let failed = match failed {
                None if !group.sync_each => group.wal.sync().await.err(),
                other => other,
            };
            let out = then(&mut group.state_mut(), &offsets);
            match failed {
                Some(e) => {
                    // What reached the disk is unknown now: no more writes, and no reopen of
                    // the group until the log itself is opened again.
                    group.claim.failed.store(true, Ordering::Release);
                    Err(e)
                }
                None => Ok(out),
            }
        });
        task.await.map_err(crate::engine::join_error)?
    }

    /// Appends `records` in as few atomic batches as the log's limits allow (a follower may
    /// be sent more than one batch takes); the offsets written, and the error that stopped it.
    async fn append_in_batches(&self, records: Vec<Bytes>) -> (Vec<u64>, Option<Error>) {
        let cfg = self.wal.config();
        let mut offsets = Vec::with_capacity(records.len());
        let mut rest = records.as_slice();
        while !rest.is_empty() {
            let mut n = 0;
            let mut bytes = 0usize;
            while n < rest.len() && n < cfg.max_batch_entries.max(1) {
                bytes = bytes.saturating_add(rest[n].len());
                if n > 0 && bytes > cfg.max_batch_bytes {
                    break;
                }
                n += 1;
            }
            // One entry above `max_batch_bytes` (but within `max_entry_bytes`) goes alone.
            let written = if n == 1 {
                self.wal
                    .append(&self.topic, rest[0].clone())
                    .await
                    .map(|o| o..o + 1)
            } else {
                self.wal.append_batch(&self.topic, rest[..n].to_vec()).await
            };
            match written {
                Ok(range) => offsets.extend(range),
                Err(e) => return (offsets, Some(e)),
            }
            rest = &rest[n..];
        }
        (offsets, None)
    }
}

impl<C> LogStore<C>
where
    C: RaftTypeConfig,
{
    fn reader(&self) -> LogReader<C> {
        LogReader {
            group: self.group.clone(),
        }
    }
}

impl<C> RaftLogReader<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned + Clone,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<C::Entry>, C> {
        self.reader().try_get_log_entries(range).await
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> StorageResult<Vec<C::Entry>, C> {
        self.reader().limited_get_log_entries(start, end).await
    }
}

impl<C> LogReader<C>
where
    C: RaftTypeConfig,
    C::Entry: DeserializeOwned,
{
    /// The entries in `[start, end)` that the group holds, in order (skipping indexes it does
    /// not hold), stopping after about `budget` bytes (at least one entry).
    async fn read(
        &self,
        start: u64,
        end: u64,
        budget: usize,
        contiguous: bool,
    ) -> StorageResult<Vec<C::Entry>, C> {
        let g = &self.group;
        let mut out = Vec::new();
        let mut index = start;
        let mut bytes = 0usize;
        while index < end && (out.is_empty() || bytes < budget) {
            // The run holding `index`, or the next one (below the first entry, or in a gap).
            let found = {
                let s = g.state();
                let i = s.runs.partition_point(|r| r.end() <= index);
                s.runs.get(i).map(|r| {
                    let at = index.max(r.first.index);
                    (
                        at,
                        r.first.leader_id.clone(),
                        r.offset + (at - r.first.index),
                        r.end() - at,
                    )
                })
            };
            let Some((at, leader, offset, run_left)) =
                found.filter(|(at, _, _, _)| *at < end && (!contiguous || *at == index))
            else {
                break;
            };
            index = at;
            let want = usize::try_from(run_left.min(end - index)).unwrap_or(usize::MAX);
            // At most the run's entries: what follows them in the topic is not theirs.
            let got = match g.wal.read_at_most(
                &g.topic,
                offset,
                budget.saturating_sub(bytes).max(1),
                want,
            ) {
                Ok(got) => got,
                // Purged and deleted meanwhile: what is gone is not asked for any more.
                Err(Error::Truncated { .. }) => break,
                Err(e) => {
                    return Err(StorageIOError::read_log_at_index(index, &e).into());
                }
            };
            if got.first().is_none_or(|e| e.offset != offset) {
                break;
            }
            for e in got {
                let bad = |reason: String| {
                    StorageError::from(StorageIOError::read_log_at_index(
                        index,
                        openraft::AnyError::error(reason),
                    ))
                };
                let Some((&ENTRY, body)) = e.data.split_first() else {
                    return Err(bad(format!("offset {} is not an entry record", e.offset)));
                };
                let entry: C::Entry = decode(body).map_err(bad)?;
                // Records never change: a mismatch is damage, or a bug, never a race.
                if entry.get_log_id().index != index
                    || *entry.get_log_id().committed_leader_id() != leader
                {
                    return Err(bad(format!(
                        "offset {} holds {}, not index {index} of {leader}",
                        e.offset,
                        entry.get_log_id()
                    )));
                }
                bytes += e.data.len();
                out.push(entry);
                index += 1;
            }
        }
        Ok(out)
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl<C> RaftLogReader<C> for LogReader<C>
where
    C: RaftTypeConfig,
    C::Entry: DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<C::Entry>, C> {
        let (start, end) = bounds(&range);
        self.read(start, end, usize::MAX, false).await
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> StorageResult<Vec<C::Entry>, C> {
        // Replication builds AppendEntries from this: contiguous from `start`, or nothing.
        self.read(start, end, READ_LIMIT, true).await
    }
}

impl<C> RaftLogStorage<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned + Clone,
{
    type LogReader = LogReader<C>;

    async fn get_log_state(&mut self) -> StorageResult<LogState<C>, C> {
        let s = self.group.state();
        Ok(LogState {
            last_purged_log_id: s.purged.clone(),
            last_log_id: s.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeIdOf<C>>) -> StorageResult<(), C> {
        let record = encode(VOTE, vote).map_err(|e| StorageIOError::write_vote(&e))?;
        let vote = vote.clone();
        self.group
            .write(
                move |_| Ok(vec![record]),
                move |s, written| {
                    if !written.is_empty() {
                        s.vote = Some(vote);
                    }
                },
            )
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeIdOf<C>>>, C> {
        Ok(self.group.state().vote.clone())
    }

    /// Lazy, as openraft allows: the id is kept at once for `read_committed` and written to
    /// the group's committed topic with the group's next write (in the same group commit:
    /// openraft calls this on every commit, and a sync of its own each time would double a
    /// leader's syncs). After a crash the store may report an older committed id, never a
    /// newer one (the state record of each purge carries it too).
    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeIdOf<C>>>,
    ) -> StorageResult<(), C> {
        let record = encode(COMMITTED, &committed).map_err(write_error)?;
        self.group.state_mut().commit(committed);
        *self
            .group
            .pending_committed
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(record);
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeIdOf<C>>>, C> {
        Ok(self.group.state().committed.clone())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> StorageResult<(), C>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let refuse = |callback: LogFlushed<C>, reason: String| -> StorageError<NodeIdOf<C>> {
            let e = StorageIOError::write_logs(openraft::AnyError::error(reason));
            callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
            e.into()
        };
        let mut ids = Vec::new();
        let mut records = Vec::new();
        for e in entries {
            let id = e.get_log_id().clone();
            if id.index == u64::MAX {
                return Err(refuse(callback, "a log index of u64::MAX".into()));
            }
            if let Some(prev) = ids.last().map(|p: &LogId<_>| p.index)
                && id.index != prev + 1
            {
                return Err(refuse(
                    callback,
                    format!(
                        "entries of one append must have consecutive indexes: {prev} then {}",
                        id.index
                    ),
                ));
            }
            match encode(ENTRY, &e) {
                Ok(r) => records.push(r),
                Err(e) => return Err(refuse(callback, e.to_string())),
            }
            ids.push(id);
        }
        if ids.is_empty() {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        // An append continues the log, replaces its tail from its first index (an implicit
        // truncate), or starts past its end: openraft itself never leaves a gap, but its
        // storage suite does (1 then 3), and reads then return what is held.
        let res = self
            .group
            .write(
                move |_| Ok(records),
                move |s, written| {
                    for (id, offset) in ids.into_iter().zip(written) {
                        s.push(id, *offset);
                    }
                },
            )
            .await;
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(write_error(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeIdOf<C>>) -> StorageResult<(), C> {
        let index = log_id.index;
        let record = encode(TRUNCATE, &index).map_err(write_error)?;
        self.group
            .write(
                // Decided in the write's turn: an earlier append still landing counts.
                move |s| {
                    Ok(if index >= s.next_index() {
                        Vec::new() // nothing there
                    } else {
                        vec![record]
                    })
                },
                move |s, written| {
                    if !written.is_empty() {
                        s.truncate(index);
                    }
                },
            )
            .await
            .map_err(write_error)
    }

    async fn purge(&mut self, log_id: LogId<NodeIdOf<C>>) -> StorageResult<(), C> {
        if log_id.index == u64::MAX {
            return Err(write_error(Error::InvalidConfig(
                "a purge up to log index u64::MAX".into(),
            )));
        }
        let floor = self
            .group
            .write(
                {
                    let log_id = log_id.clone();
                    // Built in the write's turn, from the state every earlier write left.
                    move |s| {
                        if s.purged.as_ref().is_some_and(|p| p.index >= log_id.index) {
                            return Ok(Vec::new()); // never backwards
                        }
                        let record: StateRecord<NodeIdOf<C>> = (
                            s.vote.clone(),
                            s.committed.clone(),
                            Some(log_id.clone()),
                            s.kept_from(log_id.index),
                        );
                        Ok(vec![encode(STATE, &record)?])
                    }
                },
                move |s, written| {
                    let at = *written.first()?;
                    s.purge(log_id);
                    // What this group still needs: the state record and the entries kept.
                    Some(s.runs.front().map_or(at, |r| r.offset.min(at)))
                },
            )
            .await
            .map_err(write_error)?;
        let Some(floor) = floor else { return Ok(()) };
        // Lets retention delete what is below (superseded). The purge is done whatever
        // happens here: a failure only keeps files longer, until the next purge.
        let g = &self.group;
        if let Err(e) = g
            .wal
            .reset_consumer(&g.topic, CONSUMER, ResetTo::Offset(floor))
            .await
        {
            tracing::warn!(error = %e, topic = g.topic, "Raft purge: retention checkpoint not moved");
        }
        if let Some(info) = g.wal.topic_info(&g.committed_topic)
            && info.entries > 0
            && let Err(e) = g
                .wal
                .reset_consumer(
                    &g.committed_topic,
                    CONSUMER,
                    ResetTo::Offset(info.next_offset - 1),
                )
                .await
        {
            tracing::warn!(error = %e, topic = g.committed_topic, "Raft purge: retention checkpoint not moved");
        }
        Ok(())
    }
}
