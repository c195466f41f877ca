//! Durable consumer checkpoints: an append-only log of checksummed records, written by one task
//! per log and rewritten whole (temp file, fsync, rename, directory fsync) at open, when it
//! grows, and after a failed write.
//!
//! A checkpoint is the *next* offset a consumer will read (so "nothing consumed" is 0, and
//! offsets are topic offsets: stable when older files are deleted).
//!
//! **Registrations have an epoch.** Registering a named consumer, or resetting any consumer,
//! draws a new epoch; every later record of that consumer carries it, and a record whose epoch
//! is not the consumer's current one is ignored, in memory and when the file is read back. So no
//! late write of an earlier registration (a dropped stream's checkpoint, say) can touch a later
//! one.
//!
//! **One writer task.** Callers change the in-memory registry at once and queue a job; the task
//! ([`run`]) takes every job waiting, writes their records with one write and one `fdatasync`
//! (group commit), and only then updates the durable view and answers. A caller that stops
//! waiting (a dropped future) never leaves a write half done: the task finishes it, so no
//! cancelled write can land later over another record, and the file's end is always known.
//! Whether a queued record is still worth writing is decided by the task against the durable
//! view, in queue order.
//!
//! Crash safety: a torn record can only be the last one (each group is synced before the next
//! is written; a failed write makes the next group rewrite the file whole). Damage elsewhere is
//! stepped over: decoding resynchronises at the next record whose checksum holds. Record layout
//! (little-endian), see `docs/FORMAT.md`:
//!
//! ```text
//! crc32 u32 | body_len u16 | op u8 | topic_len u8 | consumer_len u8 | topic | consumer | offset u64 [| epoch u64]
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::io::{Io, Trace};
use crate::storage::lock;

pub(crate) const FILE: &str = "checkpoints";
/// Names of kept damaged stores (`checkpoints.damaged-<n>`) and of the marker of a lost one.
pub(crate) const DAMAGED_PREFIX: &str = "checkpoints.damaged-";
/// Format v2 records (no epoch): set (`value = max(value, offset)`) and remove. Still read.
const OP_SET_V2: u8 = 1;
const OP_REMOVE_V2: u8 = 2;
/// Set the offset of the registration with this epoch (ignored for another epoch).
const OP_SET: u8 = 3;
/// A new registration (or a reset): the consumer now has this epoch and offset.
const OP_REGISTER: u8 = 4;
/// Forget the registration with this epoch.
const OP_REMOVE: u8 = 5;
/// Rewrite the file when it grows past this.
const COMPACT_AT: u64 = 4 << 20;
/// Jobs one group takes at most.
const MAX_GROUP: usize = 4096;

type Key = (String, String);

/// Reserved consumer name of a topic's "floor" record: the next offset the topic hands out,
/// written before retention deletes a topic's last entries so offsets never go backwards.
/// Consumer names cannot contain NUL, so it cannot clash with a real consumer.
pub(crate) const FLOOR: &str = "\0next";

/// A consumer's registration: its epoch and checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reg {
    pub epoch: u64,
    pub offset: u64,
}

/// What callers know of a consumer: its current registration, and whether that registration
/// is durable yet.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Member {
    pub epoch: u64,
    /// The durable checkpoint when the registration is durable, else where it was registered.
    pub offset: u64,
    pub durable: bool,
}

/// One record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    Set { key: Key, epoch: u64, offset: u64 },
    Register { key: Key, epoch: u64, offset: u64 },
    Remove { key: Key, epoch: u64 },
}

/// A queued write.
enum Job {
    /// Write `record` if it still changes something when its turn comes.
    Write(Record),
    /// Undo a checkpoint whose reader never got the entries: back to `to` if the durable value
    /// is still `from` (a dropped consuming read).
    Restore {
        key: Key,
        epoch: u64,
        from: u64,
        to: u64,
    },
}

struct Queued {
    job: Job,
    reply: Option<oneshot::Sender<Result<()>>>,
}

/// What one record makes of a consumer's registration `cur`: the one rule for decoding and
/// for the writer's durable view.
fn applied(cur: Option<Reg>, rec: &Record) -> Option<Reg> {
    match rec {
        Record::Set { key, epoch, offset } => match cur {
            // This registration's checkpoint; or a set of a later one whose register record
            // was lost to damage (only a registration of an epoch writes sets of it).
            Some(r) if r.epoch <= *epoch => Some(Reg {
                epoch: *epoch,
                offset: *offset,
            }),
            // A late write of an earlier registration.
            Some(r) => Some(r),
            // The default consumer and floors come into being with their first set; a named
            // consumer only through its registration (a set without one was removed since).
            None if !is_named(&key.1) => Some(Reg {
                epoch: *epoch,
                offset: *offset,
            }),
            None => None,
        },
        Record::Register { epoch, offset, .. } => Some(Reg {
            epoch: *epoch,
            offset: *offset,
        }),
        // Removes the registration of this epoch and any earlier one (epochs only grow).
        Record::Remove { epoch, .. } => cur.filter(|r| r.epoch > *epoch),
    }
}

fn apply(map: &mut HashMap<Key, Reg>, rec: &Record) {
    let key = match rec {
        Record::Set { key, .. } | Record::Register { key, .. } | Record::Remove { key, .. } => key,
    };
    match applied(map.get(key).copied(), rec) {
        Some(r) => {
            map.insert(key.clone(), r);
        }
        None => {
            map.remove(key);
        }
    }
}

fn is_named(consumer: &str) -> bool {
    !consumer.is_empty() && consumer != FLOOR
}

fn encode(out: &mut Vec<u8>, rec: &Record) {
    let (op, key, offset, epoch) = match rec {
        Record::Set { key, epoch, offset } => (OP_SET, key, *offset, *epoch),
        Record::Register { key, epoch, offset } => (OP_REGISTER, key, *offset, *epoch),
        Record::Remove { key, epoch } => (OP_REMOVE, key, 0, *epoch),
    };
    let (topic, consumer) = (&key.0, &key.1);
    let start = out.len();
    let body = 3 + topic.len() + consumer.len() + 16;
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(body as u16).to_le_bytes());
    out.push(op);
    out.push(topic.len() as u8);
    out.push(consumer.len() as u8);
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(consumer.as_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&epoch.to_le_bytes());
    let crc = crc32fast::hash(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// What decoding a store found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Decoded {
    /// Positions where damage began (bytes that are no record, followed by a valid record).
    pub damage: Vec<usize>,
    /// Where the last valid record ended.
    pub end: usize,
    /// Whether non-zero bytes follow `end` (a torn last record, or damage).
    pub torn_tail: bool,
    /// The highest epoch seen.
    pub max_epoch: u64,
}

/// Decodes the records in `b` into `values`, stepping over damage: after a record that does not
/// decode, the next position where one does is where decoding goes on.
pub(crate) fn decode_all(b: &[u8], values: &mut HashMap<Key, Reg>) -> Decoded {
    let mut out = Decoded::default();
    let mut pos = 0usize;
    while pos < b.len() {
        if let Some((rec, next)) = decode_one(b, pos) {
            apply_decoded(values, rec, &mut out.max_epoch);
            pos = next;
            out.end = next;
            continue;
        }
        // Not a record here: the rest may be zeros (a clean end), a torn last record, or damage
        // with valid records after it.
        let Some(found) = (pos + 1..b.len()).find(|&p| decode_one(b, p).is_some()) else {
            out.torn_tail = b[pos..].iter().any(|&x| x != 0);
            return out;
        };
        out.damage.push(pos);
        pos = found;
    }
    out
}

/// A decoded record, v2 ones included.
enum Decodedrec {
    V2Set(Key, u64),
    V2Remove(Key),
    V3(Record),
}

fn apply_decoded(values: &mut HashMap<Key, Reg>, rec: Decodedrec, max_epoch: &mut u64) {
    match rec {
        // Format v2 had no epochs: everything is epoch 0, and sets never lowered a value.
        Decodedrec::V2Set(key, offset) => {
            let r = values.entry(key).or_insert(Reg {
                epoch: 0,
                offset: 0,
            });
            r.offset = r.offset.max(offset);
        }
        Decodedrec::V2Remove(key) => {
            values.remove(&key);
        }
        Decodedrec::V3(rec) => {
            let (Record::Set { epoch, .. }
            | Record::Register { epoch, .. }
            | Record::Remove { epoch, .. }) = &rec;
            *max_epoch = (*max_epoch).max(*epoch);
            apply(values, &rec);
        }
    }
}

fn decode_one(b: &[u8], pos: usize) -> Option<(Decodedrec, usize)> {
    // The structure is checked before the checksum, so stepping over damage byte by byte
    // costs little per position.
    let head = b.get(pos..pos.checked_add(9)?)?;
    let crc = u32::from_le_bytes(head[0..4].try_into().ok()?);
    let body_len = u16::from_le_bytes(head[4..6].try_into().ok()?) as usize;
    let (op, tl, cl) = (head[6], head[7] as usize, head[8] as usize);
    let tail = match op {
        OP_SET_V2 | OP_REMOVE_V2 => 8,
        OP_SET | OP_REGISTER | OP_REMOVE => 16,
        _ => return None,
    };
    if tl == 0 || body_len != 3 + tl + cl + tail {
        return None;
    }
    let end = pos.checked_add(6)?.checked_add(body_len)?;
    if crc32fast::hash(b.get(pos + 4..end)?) != crc {
        return None;
    }
    let rest = &b[pos + 9..end];
    let topic = std::str::from_utf8(&rest[..tl]).ok()?.to_owned();
    // No valid topic name contains NUL: such a record was never written by this crate.
    if topic.contains('\0') {
        return None;
    }
    let consumer = std::str::from_utf8(&rest[tl..tl + cl]).ok()?.to_owned();
    let offset = u64::from_le_bytes(rest[tl + cl..tl + cl + 8].try_into().ok()?);
    let key = (topic, consumer);
    let rec = match op {
        OP_SET_V2 => Decodedrec::V2Set(key, offset),
        OP_REMOVE_V2 => Decodedrec::V2Remove(key),
        _ => {
            let epoch = u64::from_le_bytes(rest[tl + cl + 8..].try_into().ok()?);
            Decodedrec::V3(match op {
                OP_SET => Record::Set { key, epoch, offset },
                OP_REGISTER => Record::Register { key, epoch, offset },
                _ => Record::Remove { key, epoch },
            })
        }
    };
    Some((rec, end))
}

/// The whole store as records: one registration per key.
fn snapshot(values: &HashMap<Key, Reg>) -> Vec<u8> {
    let mut buf = Vec::new();
    for (key, r) in values {
        encode(
            &mut buf,
            &Record::Register {
                key: key.clone(),
                epoch: r.epoch,
                offset: r.offset,
            },
        );
    }
    buf
}

fn rewrite(dir: &Path, values: &HashMap<Key, Reg>, trace: &Trace) -> io::Result<(File, u64)> {
    let buf = snapshot(values);
    // Through `checkpoints.tmp` (see `replace_file`).
    let f = crate::io::replace_file(trace, dir, FILE, &buf)?;
    Ok((f, buf.len() as u64))
}

/// What opening the store found, for the log's warnings and `stats()`.
#[derive(Clone, Debug, Default)]
pub(crate) struct OpenReport {
    /// The store was damaged (records lost in the middle) or missing while segments exist:
    /// consumers may be unknown or behind their real position until they subscribe again.
    pub damaged: bool,
}

/// Callers' view of registrations plus what the writer task has made durable.
struct Registry {
    /// What the file holds, as far as completed and synced writes go.
    durable: HashMap<Key, Reg>,
    /// Current registrations (durable or not yet), floors excluded.
    members: HashMap<Key, Reg>,
    next_epoch: u64,
}

/// The store of one namespace.
pub(crate) struct CheckpointStore {
    path: PathBuf,
    dir: PathBuf,
    registry: Mutex<Registry>,
    /// The writer task's queue; `None` once closed.
    tx: Mutex<Option<mpsc::UnboundedSender<Queued>>>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Queued>>>,
    /// Set by `close`: a refused job then means "closed", not "runtime gone".
    closed: AtomicBool,
    /// Set when the log's runtime is gone.
    gone: AtomicBool,
    /// Notified after every group made durable (retention may have more to delete).
    pub durable_changed: tokio::sync::Notify,
    file: Mutex<Option<(Arc<File>, u64)>>,
    trace: Trace,
}

/// The answer to a queued write: durable (or not needed) once it resolves `Ok`.
pub(crate) struct Ticket(Option<oneshot::Receiver<Result<()>>>);

impl Ticket {
    /// Nothing to wait for.
    pub(crate) fn done() -> Ticket {
        Ticket(None)
    }

    /// Waits for the write. Dropping this does not cancel it.
    pub(crate) async fn wait(self) -> Result<()> {
        match self.0 {
            None => Ok(()),
            // The writer task is gone without answering: its runtime shut down.
            Some(rx) => rx.await.unwrap_or(Err(Error::RuntimeGone)),
        }
    }
}

impl CheckpointStore {
    /// Loads the store and rewrites it compactly. A damaged file is kept aside (renamed) first;
    /// a missing or damaged store is reported, never an error.
    pub(crate) fn open(dir: &Path, trace: Trace) -> io::Result<(CheckpointStore, OpenReport)> {
        let path = dir.join(FILE);
        let mut values = HashMap::new();
        let mut report = OpenReport::default();
        let mut max_epoch = 0;
        match std::fs::read(&path) {
            Ok(bytes) => {
                let d = decode_all(&bytes, &mut values);
                max_epoch = d.max_epoch;
                if d.torn_tail {
                    tracing::info!(path = %path.display(), position = d.end, "checkpoint store ends in a torn record (an interrupted write); cut there");
                }
                if let Some(&at) = d.damage.first() {
                    report.damaged = true;
                    // A second name for the damaged file: the rewrite below replaces
                    // `checkpoints` atomically, and the old bytes stay under this one.
                    let aside =
                        dir.join(format!("{DAMAGED_PREFIX}{}", crate::storage::random_u64()));
                    std::fs::hard_link(&path, &aside)?;
                    crate::io::sync_dir(&trace, dir)?;
                    tracing::warn!(
                        path = %path.display(),
                        position = at,
                        stretches = d.damage.len(),
                        kept = %aside.display(),
                        "checkpoint store damaged: records past the damage were read where they could be; the damaged file is kept aside, and this lifetime deletes no data on consumers' account so every consumer can subscribe again first"
                    );
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let has_segments = std::fs::read_dir(dir)?.any(|e| {
                    e.ok()
                        .and_then(|e| e.file_name().to_str().map(|n| n.ends_with(".seg")))
                        .unwrap_or(false)
                });
                if has_segments {
                    report.damaged = true;
                    tracing::warn!(path = %path.display(), "checkpoint store missing: consumers restart from the oldest retained entry, and this lifetime deletes no data on consumers' account so every consumer can subscribe again first");
                    // Marks the loss for later lifetimes too (see below).
                    let marker = dir.join(format!("{DAMAGED_PREFIX}missing"));
                    std::fs::write(&marker, b"")?;
                    crate::io::sync_dir(&trace, dir)?;
                }
            }
            Err(e) => return Err(e),
        }
        // A kept damaged store (or the marker of a lost one) keeps consumers' data until an
        // operator removes it, once every consumer has subscribed again: a restart in between
        // must not let retention delete what a consumer the damage lost has not read.
        if !report.damaged
            && let Some(kept) = std::fs::read_dir(dir)?.find_map(|e| {
                let e = e.ok()?;
                e.file_name()
                    .to_str()?
                    .starts_with(DAMAGED_PREFIX)
                    .then(|| e.path())
            })
        {
            report.damaged = true;
            tracing::warn!(kept = %kept.display(), "an earlier lifetime found the checkpoint store damaged or missing: no data is deleted on consumers' account until this file is removed (do so once every consumer has subscribed again)");
        }
        let (file, len) = rewrite(dir, &values, &trace)?;
        let members = values
            .iter()
            .filter(|(k, _)| k.1 != FLOOR)
            .map(|(k, r)| (k.clone(), *r))
            .collect();
        let (tx, rx) = mpsc::unbounded_channel();
        Ok((
            CheckpointStore {
                path,
                dir: dir.to_path_buf(),
                trace,
                registry: Mutex::new(Registry {
                    durable: values,
                    members,
                    next_epoch: max_epoch.saturating_add(1),
                }),
                tx: Mutex::new(Some(tx)),
                rx: Mutex::new(Some(rx)),
                closed: AtomicBool::new(false),
                gone: AtomicBool::new(false),
                durable_changed: tokio::sync::Notify::new(),
                file: Mutex::new(Some((Arc::new(file), len))),
            },
            report,
        ))
    }

    /// The highest durable value of each topic, over its consumers and floor.
    pub(crate) fn max_per_topic(&self) -> HashMap<String, u64> {
        let mut out: HashMap<String, u64> = HashMap::new();
        for ((t, _), r) in lock(&self.registry).durable.iter() {
            let e = out.entry(t.clone()).or_default();
            *e = (*e).max(r.offset);
        }
        out
    }

    /// The current registration of `(topic, consumer)`.
    pub(crate) fn member(&self, topic: &str, consumer: &str) -> Option<Member> {
        let key = (topic.to_owned(), consumer.to_owned());
        let reg = lock(&self.registry);
        let m = reg.members.get(&key)?;
        Some(match reg.durable.get(&key) {
            Some(d) if d.epoch == m.epoch => Member {
                epoch: m.epoch,
                offset: d.offset,
                durable: true,
            },
            _ => Member {
                epoch: m.epoch,
                offset: m.offset,
                durable: false,
            },
        })
    }

    /// Whether `(topic, consumer)` is registered (durably or not yet).
    pub(crate) fn is_registered(&self, topic: &str, consumer: &str) -> bool {
        lock(&self.registry)
            .members
            .contains_key(&(topic.to_owned(), consumer.to_owned()))
    }

    /// Registered consumers (the default consumer once it has a checkpoint), floors excluded.
    pub(crate) fn registered(&self) -> Vec<(String, String)> {
        lock(&self.registry).members.keys().cloned().collect()
    }

    /// The lowest offset each topic's consumers may resume from after a crash or now: per
    /// consumer the lower of its durable checkpoint (also while its removal is being written)
    /// and a registration not yet durable. Topics without consumers are absent.
    pub(crate) fn pins(&self) -> HashMap<String, u64> {
        let reg = lock(&self.registry);
        let mut out: HashMap<String, u64> = HashMap::new();
        let mut pin = |topic: &String, at: u64| {
            let e = out.entry(topic.clone()).or_insert(u64::MAX);
            *e = (*e).min(at);
        };
        for (key, d) in &reg.durable {
            if key.1 != FLOOR {
                pin(&key.0, d.offset);
            }
        }
        for (key, m) in &reg.members {
            if reg.durable.get(key).is_none_or(|d| d.epoch != m.epoch) {
                pin(&key.0, m.offset);
            }
        }
        out
    }

    fn send(&self, job: Job, wait: bool) -> Result<Ticket> {
        let (reply, rx) = if wait {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let tx = lock(&self.tx);
        let sent = tx
            .as_ref()
            .is_some_and(|tx| tx.send(Queued { job, reply }).is_ok());
        if sent {
            Ok(Ticket(rx))
        } else if self.closed.load(Ordering::Acquire) && !self.gone.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Err(Error::RuntimeGone)
        }
    }

    /// Durably records that `(topic, consumer)`'s registration `epoch` will next read `offset`.
    /// Written only if it moves the durable value forward when its turn comes; a record of an
    /// epoch that is no longer current is dropped (a late write of an earlier registration).
    /// A registration whose own record did not land is written again with it.
    ///
    /// `start` is where the consumer stood before (for a default consumer's first checkpoint:
    /// what it pins until this one is durable).
    pub(crate) fn persist(
        &self,
        topic: &str,
        consumer: &str,
        epoch: u64,
        offset: u64,
        start: u64,
    ) -> Result<Ticket> {
        let key = (topic.to_owned(), consumer.to_owned());
        {
            let mut reg = lock(&self.registry);
            match reg.members.get(&key) {
                Some(m) if m.epoch != epoch => return Ok(Ticket::done()),
                Some(_) => {}
                None if is_named(consumer) => return Ok(Ticket::done()),
                // The default consumer becomes a member with its first checkpoint.
                None if consumer.is_empty() => {
                    reg.members.insert(
                        key.clone(),
                        Reg {
                            epoch,
                            offset: start.min(offset),
                        },
                    );
                }
                None => {}
            }
        }
        self.send(Job::Write(Record::Set { key, epoch, offset }), true)
    }

    /// Undoes a checkpoint `from` whose reader never got its entries, back to `to`, unless the
    /// durable value has moved on. Not waited for.
    pub(crate) fn restore(&self, topic: &str, consumer: &str, epoch: u64, from: u64, to: u64) {
        let key = (topic.to_owned(), consumer.to_owned());
        let _ = self.send(
            Job::Restore {
                key,
                epoch,
                from,
                to,
            },
            false,
        );
    }

    /// Registers `(topic, consumer)` at `offset` under a new epoch, replacing any earlier
    /// registration (a reset). It pins data at once; the ticket says when it is durable.
    pub(crate) fn register(
        &self,
        topic: &str,
        consumer: &str,
        offset: u64,
    ) -> Result<(u64, Ticket)> {
        let key = (topic.to_owned(), consumer.to_owned());
        let mut reg = lock(&self.registry);
        let epoch = reg.next_epoch;
        // Queued under the registry lock, so the queue's order is the order of registrations.
        let ticket = self.send(
            Job::Write(Record::Register {
                key: key.clone(),
                epoch,
                offset,
            }),
            true,
        )?;
        reg.next_epoch = reg.next_epoch.saturating_add(1);
        reg.members.insert(key, Reg { epoch, offset });
        Ok((epoch, ticket))
    }

    /// Writes a registration again whose record did not land (a failed write).
    pub(crate) fn reregister(&self, topic: &str, consumer: &str, epoch: u64) -> Result<Ticket> {
        let key = (topic.to_owned(), consumer.to_owned());
        let reg = lock(&self.registry);
        match reg.members.get(&key) {
            Some(m) if m.epoch == epoch => {
                if reg.durable.get(&key).is_some_and(|d| d.epoch == epoch) {
                    return Ok(Ticket::done());
                }
                let offset = m.offset;
                self.send(Job::Write(Record::Register { key, epoch, offset }), true)
            }
            // Removed or replaced meanwhile: nothing of this registration is to be written.
            _ => Ok(Ticket::done()),
        }
    }

    /// Forgets `(topic, consumer)` at once in memory (a later registration starts afresh);
    /// the ticket says when that is durable. Its durable checkpoint pins data until then.
    pub(crate) fn remove(&self, topic: &str, consumer: &str) -> Result<Ticket> {
        let key = (topic.to_owned(), consumer.to_owned());
        let mut reg = lock(&self.registry);
        // The current registration, or a durable one whose removal failed to be written: the
        // remove record covers every epoch up to its own.
        let epoch = reg
            .members
            .get(&key)
            .map(|m| m.epoch)
            .max(reg.durable.get(&key).map(|d| d.epoch));
        let Some(epoch) = epoch else {
            return Ok(Ticket::done());
        };
        let ticket = self.send(
            Job::Write(Record::Remove {
                key: key.clone(),
                epoch,
            }),
            true,
        )?;
        reg.members.remove(&key);
        Ok(ticket)
    }

    /// Takes the writer task's queue (once).
    fn take_queue(&self) -> Option<mpsc::UnboundedReceiver<Queued>> {
        lock(&self.rx).take()
    }

    /// The log's runtime is gone: a refused job means that, not "closed".
    pub(crate) fn runtime_gone(&self) {
        self.gone.store(true, Ordering::Release);
        lock(&self.tx).take();
    }

    /// Refuses new jobs; the writer task writes what is queued and ends.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        lock(&self.tx).take();
    }

    /// The durable value of `key`, with this group's changes so far on top.
    fn current(&self, changes: &HashMap<Key, Option<Reg>>, key: &Key) -> Option<Reg> {
        match changes.get(key) {
            Some(v) => *v,
            None => lock(&self.registry).durable.get(key).copied(),
        }
    }

    /// The record `job` still calls for, decided against what is durable plus this group.
    fn record_for(&self, changes: &HashMap<Key, Option<Reg>>, job: &Job) -> Option<Record> {
        match job {
            Job::Write(rec @ Record::Set { key, epoch, offset }) => {
                match self.current(changes, key) {
                    Some(r) if r.epoch == *epoch => (r.offset < *offset).then(|| rec.clone()),
                    // The default consumer's first checkpoint, or a floor.
                    None if !is_named(&key.1) => Some(rec.clone()),
                    _ => {
                        // Not this registration on disk: if it is still the current one, its
                        // own record never landed (a failed write), so it is written now, at
                        // this position; else it is an earlier registration's late write.
                        let current = lock(&self.registry).members.get(key).copied();
                        current
                            .filter(|m| m.epoch == *epoch)
                            .map(|_| Record::Register {
                                key: key.clone(),
                                epoch: *epoch,
                                offset: *offset,
                            })
                    }
                }
            }
            Job::Write(rec @ Record::Remove { key, epoch }) => self
                .current(changes, key)
                .is_some_and(|r| r.epoch <= *epoch)
                .then(|| rec.clone()),
            // Written once: a registration already on disk is not written again (a retry
            // after a failure must not bring back an offset taken back since).
            Job::Write(rec @ Record::Register { key, epoch, .. }) => self
                .current(changes, key)
                .is_none_or(|r| r.epoch != *epoch)
                .then(|| rec.clone()),
            Job::Restore {
                key,
                epoch,
                from,
                to,
            } => {
                let written = Some(Reg {
                    epoch: *epoch,
                    offset: *from,
                });
                (self.current(changes, key) == written).then(|| Record::Set {
                    key: key.clone(),
                    epoch: *epoch,
                    offset: *to,
                })
            }
        }
    }

    /// Writes one group of jobs: one write and one sync (or a whole rewrite after a failure).
    async fn write_group(&self, io: &Io, jobs: &[Queued]) -> Result<()> {
        // Only the keys this group touches, on top of the durable view: the cost of a group
        // does not grow with the number of consumers.
        let mut changes: HashMap<Key, Option<Reg>> = HashMap::new();
        let mut buf = Vec::new();
        for q in jobs {
            let Some(rec) = self.record_for(&changes, &q.job) else {
                continue;
            };
            let key = match &rec {
                Record::Set { key, .. }
                | Record::Register { key, .. }
                | Record::Remove { key, .. } => key.clone(),
            };
            let next = applied(self.current(&changes, &key), &rec);
            changes.insert(key, next);
            encode(&mut buf, &rec);
        }
        if buf.is_empty() {
            return Ok(());
        }
        let file = lock(&self.file).clone();
        let len = buf.len() as u64;
        let res = match &file {
            Some((f, end)) => {
                let (_, res) = io.write_all_at(f, *end, buf).await;
                match res {
                    Ok(()) => io.sync_data(f).await.map(|()| (f.clone(), end + len)),
                    Err(e) => Err(e),
                }
            }
            // An earlier write failed and the file could not be put back yet: written anew,
            // with this group's records applied.
            None => {
                let mut all = lock(&self.registry).durable.clone();
                apply_changes(&mut all, &changes);
                let (dir, trace) = (self.dir.clone(), self.trace.clone());
                crate::io::blocking(move || rewrite(&dir, &all, &trace))
                    .await
                    .map(|(f, len)| (Arc::new(f), len))
            }
        };
        match res {
            Ok((f, end)) => {
                let keys = {
                    let mut reg = lock(&self.registry);
                    apply_changes(&mut reg.durable, &changes);
                    reg.durable.len() as u64
                };
                *lock(&self.file) = Some((f, end));
                self.durable_changed.notify_one();
                if end > COMPACT_AT
                    && end > 4 * (keys * 64)
                    && let Err(e) = self.rewrite_durable().await
                {
                    // The rename may have happened before the failure (a failed directory
                    // sync): the open file may no longer be `checkpoints`, so the next group
                    // writes the file anew rather than append to it.
                    tracing::warn!(path = %self.path.display(), error = %e, "compacting the checkpoint store failed");
                    lock(&self.file).take();
                }
                Ok(())
            }
            Err(e) => {
                // The records may be in the file (a write that landed, a failed sync): put the
                // file back to what is durable before anyone is told they were not written, so
                // no failed record is read back at the next open.
                tracing::warn!(path = %self.path.display(), error = %e, "checkpoint write failed; putting the store back");
                lock(&self.file).take();
                // First cut the file back to where this group began, on the descriptor already
                // open (needs no space and no new descriptor, unlike a rewrite); else rewrite.
                let cut = match file {
                    Some((f, end)) => {
                        let trace = self.trace.clone();
                        crate::io::blocking(move || {
                            f.set_len(end)?;
                            trace.set_len(&f, end);
                            crate::io::sync_file(&trace, &f)?;
                            Ok((f, end))
                        })
                        .await
                        .ok()
                    }
                    None => None,
                };
                match cut {
                    Some(back) => *lock(&self.file) = Some(back),
                    None => {
                        if let Err(e) = self.rewrite_durable().await {
                            tracing::warn!(path = %self.path.display(), error = %e, "rewriting the checkpoint store failed; the next write retries");
                        }
                    }
                }
                Err(Error::Io(e))
            }
        }
    }

    /// Writes the file anew from the durable view (temp file, fsync, rename).
    async fn rewrite_durable(&self) -> io::Result<()> {
        let all = lock(&self.registry).durable.clone();
        let (dir, trace) = (self.dir.clone(), self.trace.clone());
        let (f, len) = crate::io::blocking(move || rewrite(&dir, &all, &trace)).await?;
        *lock(&self.file) = Some((Arc::new(f), len));
        tracing::debug!(path = %self.path.display(), "checkpoint store rewritten");
        Ok(())
    }
}

fn apply_changes(map: &mut HashMap<Key, Reg>, changes: &HashMap<Key, Option<Reg>>) {
    for (k, v) in changes {
        match v {
            Some(r) => {
                map.insert(k.clone(), *r);
            }
            None => {
                map.remove(k);
            }
        }
    }
}

/// The writer task: runs until the store is closed and its queue drained. `_lock` is the log's
/// directory lock: held until this task has written its last record, so no later open of the
/// directory can see the store change under it.
pub(crate) async fn run(store: Arc<CheckpointStore>, io: Io, _lock: Option<Arc<File>>) {
    let Some(mut rx) = store.take_queue() else {
        return;
    };
    let mut jobs = Vec::new();
    // Undos of dropped reads whose group failed: tried again with the next group.
    let mut carried: Vec<Queued> = Vec::new();
    loop {
        let open = rx.recv_many(&mut jobs, MAX_GROUP).await > 0;
        if !open && carried.is_empty() {
            break;
        }
        jobs.splice(0..0, carried.drain(..));
        let res = store.write_group(&io, &jobs).await;
        for q in jobs.drain(..) {
            if res.is_err() && matches!(q.job, Job::Restore { .. }) {
                carried.push(q);
                continue;
            }
            if let Some(reply) = q.reply {
                let _ = reply.send(match &res {
                    Ok(()) => Ok(()),
                    Err(e) => Err(e.duplicate()),
                });
            }
        }
        if !open {
            if !carried.is_empty() {
                tracing::warn!(
                    count = carried.len(),
                    "could not take back the checkpoints of dropped reads: their entries may be skipped after a restart"
                );
            }
            break;
        }
    }
    if lock(&store.file).is_none()
        && let Err(e) = store.rewrite_durable().await
    {
        tracing::warn!(error = %e, "the checkpoint store could not be rewritten at close");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(t: &str, c: &str) -> Key {
        (t.into(), c.into())
    }

    fn set(t: &str, c: &str, epoch: u64, offset: u64) -> Record {
        Record::Set {
            key: key(t, c),
            epoch,
            offset,
        }
    }

    fn v2(out: &mut Vec<u8>, op: u8, t: &str, c: &str, offset: u64) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&((3 + t.len() + c.len() + 8) as u16).to_le_bytes());
        out.extend_from_slice(&[op, t.len() as u8, c.len() as u8]);
        out.extend_from_slice(t.as_bytes());
        out.extend_from_slice(c.as_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        let crc = crc32fast::hash(&out[start + 4..]);
        out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn records_of_an_earlier_registration_are_ignored() {
        let mut b = Vec::new();
        let reg = |epoch, offset| Record::Register {
            key: key("t", "c"),
            epoch,
            offset,
        };
        encode(&mut b, &reg(1, 0));
        encode(&mut b, &set("t", "c", 1, 6));
        encode(
            &mut b,
            &Record::Remove {
                key: key("t", "c"),
                epoch: 1,
            },
        );
        encode(&mut b, &reg(2, 0));
        encode(&mut b, &set("t", "c", 1, 9)); // late write of epoch 1
        encode(&mut b, &set("t", "", 0, 5));
        encode(&mut b, &set("t", "", 0, 3)); // a restore: last wins
        let mut v = HashMap::new();
        let d = decode_all(&b, &mut v);
        assert_eq!(
            (d.damage.len(), d.end, d.torn_tail, d.max_epoch),
            (0, b.len(), false, 2)
        );
        assert_eq!(
            v[&key("t", "c")],
            Reg {
                epoch: 2,
                offset: 0
            }
        );
        assert_eq!(
            v[&key("t", "")],
            Reg {
                epoch: 0,
                offset: 3
            }
        );
    }

    #[test]
    fn v2_records_still_read() {
        let mut b = Vec::new();
        v2(&mut b, OP_SET_V2, "t", "", 5);
        v2(&mut b, OP_SET_V2, "t", "", 3);
        v2(&mut b, OP_SET_V2, "t", "billing", 9);
        v2(&mut b, OP_REMOVE_V2, "t", "billing", 0);
        v2(&mut b, OP_SET_V2, "t", "late", 2);
        let mut v = HashMap::new();
        assert_eq!(decode_all(&b, &mut v).end, b.len());
        assert_eq!(
            v[&key("t", "")],
            Reg {
                epoch: 0,
                offset: 5
            }
        );
        assert_eq!(v.get(&key("t", "billing")), None);
        assert_eq!(
            v[&key("t", "late")],
            Reg {
                epoch: 0,
                offset: 2
            }
        );
    }

    #[test]
    fn a_topic_name_with_nul_is_damage() {
        let mut b = Vec::new();
        encode(&mut b, &set("t", "", 0, 5));
        let first = b.len();
        encode(&mut b, &set("a\0b", "", 0, 8));
        let mut v = HashMap::new();
        let d = decode_all(&b, &mut v);
        assert_eq!((d.end, d.torn_tail), (first, true));
        assert_eq!(v.len(), 1);
    }

    #[test]
    fn decoding_resynchronises_after_damage() {
        let mut b = Vec::new();
        encode(&mut b, &set("t", "", 0, 5));
        let first = b.len();
        encode(&mut b, &set("t", "", 0, 8));
        encode(
            &mut b,
            &Record::Register {
                key: key("t", "c"),
                epoch: 4,
                offset: 2,
            },
        );
        b[first + 10] ^= 1;
        let mut v = HashMap::new();
        let d = decode_all(&b, &mut v);
        assert_eq!(d.damage, vec![first]);
        assert!(!d.torn_tail);
        assert_eq!(v[&key("t", "")].offset, 5, "the damaged record is lost");
        assert_eq!(
            v[&key("t", "c")],
            Reg {
                epoch: 4,
                offset: 2
            },
            "the one after it is not"
        );
        // Every truncation decodes a prefix without panicking, and never reports damage
        // for a torn last record.
        for cut in 0..b.len() {
            let mut v = HashMap::new();
            let d = decode_all(&b[..cut], &mut v);
            assert!(d.end <= cut);
        }
    }
}
