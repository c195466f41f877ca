//! Crash-consistency simulation: random workloads on the real engine, with every effect on its
//! files recorded by a `CrashJournal`; then, at thousands of crash points of each history, the
//! files a disk could hold after a power loss (durable bytes, any subset of unsynced writes in
//! any order, a torn write, a prefix of unsynced directory operations) are rebuilt in a new
//! directory, reopened, and every promise is checked:
//!
//! * every append acknowledged under `SyncEach`, and every one acknowledged before a completed
//!   `sync()` or `close()`, is present (unless a consumer's durable checkpoint had passed it);
//! * no entry is returned that was not appended, none twice, none at another offset, and a
//!   batch is there whole or not at all;
//! * a consumer's recovered checkpoint is never beyond what it was delivered, and under
//!   `AtLeastOnce { persist_every: n }` at most `n` behind what it acknowledged (`0` under
//!   `StrictlyAtOnce`);
//! * offsets handed out after the restart never go below a recovered checkpoint.
//!
//! The workloads also give up on futures at random await points (appends, stream reads,
//! consuming polling reads, acks, `reclaim`, `reset_consumer`, `remove_consumer`, `close`),
//! rewind consumers (`reset_consumer`, `remove_consumer`), read the default consumers with
//! consuming polling reads (their checkpoints must never skip an entry not returned), delete
//! the oldest segment file by hand while the log runs (images after that may lack it: its
//! entries are excused from the loss check, nothing else is), and before an image is reopened,
//! flip a byte of its checkpoint store or cut its newest segment file at a random length now
//! and then. What each move excuses is exactly what it changes: an append
//! given up on may or may not be in the log (never at an acknowledged entry's offset);
//! acknowledgements before a rewind, or in an image whose checkpoint store was damaged, no
//! longer bound the checkpoint (it may go back: redelivery), but it never skips an entry that
//! was not delivered; entries of a cut segment may be gone.
//!
//! Half the workloads send every write through the I/O backend (`inline_write_max(0)`), a
//! quarter run in a namespace (instance key), half ask for every write to skip the page cache
//! (`uncached_write_min(1)`), and half inject faults (EIO and ENOSPC on writes,
//! failed fsyncs, ENOSPC on file creation, short writes). One crash image per workload is reopened and run again,
//! recorded, and crashed a second time.
//!
//! Default: 10,000 crash points (about half a minute). Long mode:
//! `WALRUS_SIM_CRASH_POINTS=1000000 cargo test --release --all-features --test crash_sim`.
//! A failure prints its seed: `WALRUS_SIM_SEED=<seed>` reruns that workload (the seed fixes the
//! workload, the faults and every crash choice; task timing inside the engine can still vary, so
//! the failing image is also kept on disk and its path printed).
//!
//! Needs `--features failpoints`.
#![cfg(feature = "failpoints")]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use futures::future::join_all;
use walrus_async::{
    CrashJournal, Error, FailPoints, FsyncSchedule, ReadConsistency, ResetTo, TopicStream, Walrus,
};

const TOPICS: [&str; 3] = ["t0", "t1", "t2"];
const CONSUMER: &str = "c";

/// Picks below `n` (`0` when `n` is 0).
fn below(r: &mut fastrand::Rng, n: u64) -> u64 {
    r.u64(..n.max(1))
}

/// The payload of entry `id`: its id, then bytes derived from it, of a length derived from it.
fn payload(id: u64) -> Vec<u8> {
    let mut r = fastrand::Rng::with_seed(id.wrapping_mul(31).wrapping_add(7));
    let len = 8 + below(&mut r, 700) as usize;
    let mut v = id.to_le_bytes().to_vec();
    v.extend((8..len).map(|i| (r.u64(..) as u8) ^ (i as u8)));
    v
}

/// Gives up on `fut` after `polls` polls (see `common::poll_then_drop`).
async fn poll_then_drop<F: std::future::Future>(fut: F, polls: u64) -> Option<F::Output> {
    common::poll_then_drop(fut, polls as usize).await
}

#[derive(Clone, Debug)]
struct Rec {
    topic: usize,
    /// The offset the append returned, if it succeeded.
    offset: Option<u64>,
    /// The append's future was dropped: it may or may not be in the log.
    unknown: bool,
    batch: Option<u64>,
    /// Journal position after which it must survive a crash.
    durable_at: Option<usize>,
    /// Journal position when its append returned.
    done_at: usize,
}

#[derive(Clone, Debug, Default)]
struct ConsumerModel {
    /// (journal position, delivered end: one past the last offset delivered).
    delivered: Vec<(usize, u64)>,
    /// (journal position after the ack returned, acknowledged next offset).
    acked: Vec<(usize, u64)>,
    /// (journal position when a rewind started, when it returned): acknowledgements before a
    /// rewind no longer bound the checkpoint after it.
    rewinds: Vec<(usize, usize)>,
    /// Default consumer: from a consuming read given up on to the end of the next one that
    /// finished (which orders the undo before its own checkpoint): a crash in between may find
    /// the given-up read's checkpoint (StrictlyAtOnce's at-most-once window at a crash).
    uncertain: Vec<(usize, usize)>,
}

#[derive(Clone, Copy, Debug)]
struct Settings {
    fsync: FsyncSchedule,
    consistency: ReadConsistency,
    faults: bool,
    /// Small writes inline (the default) or all through the I/O backend.
    inline: bool,
    /// A namespace (instance key): the log lives in a sub-directory of the data dir.
    key: bool,
    /// Every write asks to skip the page cache (`uncached_write_min(1)`), or only large ones.
    uncached: bool,
}

impl Settings {
    fn from_seed(seed: u64) -> Settings {
        let mut r = fastrand::Rng::with_seed(seed ^ 0x5EED);
        let fsync = match below(&mut r, 3) {
            0 => FsyncSchedule::SyncEach,
            1 => FsyncSchedule::NoFsync,
            _ => FsyncSchedule::Milliseconds(1),
        };
        let consistency = match below(&mut r, 2) {
            0 => ReadConsistency::StrictlyAtOnce,
            _ => ReadConsistency::AtLeastOnce {
                persist_every: 1 + below(&mut r, 4) as u32,
            },
        };
        Settings {
            fsync,
            consistency,
            faults: below(&mut r, 2) == 0,
            inline: below(&mut r, 2) == 0,
            key: below(&mut r, 4) == 0,
            uncached: below(&mut r, 2) == 0,
        }
    }

    fn redelivery(&self) -> u64 {
        match self.consistency {
            ReadConsistency::StrictlyAtOnce => 0,
            ReadConsistency::AtLeastOnce { persist_every } => u64::from(persist_every.max(1)),
        }
    }
}

#[derive(Default, Debug)]
struct Totals {
    workloads: u64,
    crash_points: u64,
    entries_checked: u64,
    durable_checked: u64,
    unsynced_writes: u64,
    kept_writes: u64,
    torn: u64,
    dir_ops_dropped: u64,
    faults: u64,
    failed_appends: u64,
    second_crashes: u64,
    dropped_futures: u64,
    rewinds: u64,
    removals: u64,
    consuming_reads: u64,
    deleted_by_hand: u64,
    damaged_stores: u64,
    truncated_segments: u64,
}

/// Entry and batch ids, unique across the lifetimes of one workload.
#[derive(Default)]
struct Ids {
    entry: u64,
    batch: u64,
}

/// One recorded lifetime of a log and what the workload learned while running it.
struct Epoch {
    journal: CrashJournal,
    entries: HashMap<u64, Rec>,
    /// Batch id -> entries in it (failed batches too: they must not survive in part either).
    batches: HashMap<u64, u64>,
    consumers: Vec<ConsumerModel>,
    /// The default consumer of each topic, read with consuming polling reads.
    defaults: Vec<ConsumerModel>,
    /// Journal position after which a segment file was deleted by hand: entries may be gone.
    deleted_by_hand: Option<usize>,
}

fn builder(dir: &Path, s: Settings, faults: &FailPoints) -> walrus_async::WalrusBuilder {
    Walrus::builder()
        .data_dir(dir)
        .segment_bytes(walrus_async::MIN_SEGMENT_BYTES)
        .fsync(s.fsync)
        .consistency(s.consistency)
        .fail_points(faults.clone())
        .inline_write_max(if s.inline {
            walrus_async::DEFAULT_INLINE_WRITE_MAX
        } else {
            0
        })
        .key(if s.key { "tenant/1" } else { "" })
        .uncached_write_min(if s.uncached {
            1
        } else {
            walrus_async::DEFAULT_UNCACHED_WRITE_MIN
        })
}

/// Appends `jobs` (entry id, topic, polls before the future is dropped) concurrently and
/// records each outcome, with the journal position at the moment its append returned.
async fn append_group(
    wal: &Walrus,
    ep: &mut Epoch,
    jobs: &[(u64, usize, Option<u64>)],
    sync_each: bool,
    max_ok: &mut [Option<u64>],
    totals: &mut Totals,
) {
    let journal = &ep.journal;
    let results = join_all(jobs.iter().map(|&(id, t, drop_after)| async move {
        let append = wal.append(TOPICS[t], payload(id));
        let r = match drop_after {
            Some(polls) => poll_then_drop(append, polls).await,
            None => Some(append.await),
        };
        (r, journal.position())
    }))
    .await;
    for (&(id, t, _), (r, at)) in jobs.iter().zip(results) {
        let unknown = r.is_none();
        if unknown {
            totals.dropped_futures += 1;
        }
        let r = r.unwrap_or(Err(Error::Closed));
        if r.is_err() && !unknown {
            totals.failed_appends += 1;
        }
        let offset = r.ok();
        if let Some(o) = offset {
            max_ok[t] = Some(max_ok[t].map_or(o, |m| m.max(o)));
        }
        ep.entries.insert(
            id,
            Rec {
                topic: t,
                offset,
                unknown,
                batch: None,
                durable_at: offset.filter(|_| sync_each).map(|_| at),
                done_at: at,
            },
        );
    }
}

/// Runs `ops` random operations on the log in `dir` (recorded from its open on), then drops it.
async fn run_epoch(
    dir: &Path,
    s: Settings,
    rng: &mut fastrand::Rng,
    ids: &mut Ids,
    ops: usize,
    totals: &mut Totals,
) -> Epoch {
    let journal = CrashJournal::start(dir).unwrap();
    let faults = FailPoints::new();
    faults.record_into(&journal);
    let wal = builder(dir, s, &faults).open().await.unwrap();
    let mut ep = Epoch {
        journal: journal.clone(),
        entries: HashMap::new(),
        batches: HashMap::new(),
        consumers: vec![ConsumerModel::default(); TOPICS.len()],
        defaults: vec![ConsumerModel::default(); TOPICS.len()],
        deleted_by_hand: None,
    };
    let mut streams: Vec<Option<TopicStream>> = (0..TOPICS.len()).map(|_| None).collect();
    let mut max_ok: Vec<Option<u64>> = vec![None; TOPICS.len()];
    let sync_each = matches!(s.fsync, FsyncSchedule::SyncEach);
    for _ in 0..ops {
        let roll = below(rng, 100);
        match roll {
            0..45 => {
                let k = 1 + below(rng, 6);
                let jobs: Vec<(u64, usize, Option<u64>)> = (0..k)
                    .map(|_| {
                        ids.entry += 1;
                        // One append in eight is given up on after a few polls.
                        let drop_after = (below(rng, 8) == 0).then(|| 1 + below(rng, 4));
                        (
                            ids.entry,
                            below(rng, TOPICS.len() as u64) as usize,
                            drop_after,
                        )
                    })
                    .collect();
                append_group(&wal, &mut ep, &jobs, sync_each, &mut max_ok, totals).await;
            }
            45..57 => {
                let t = below(rng, TOPICS.len() as u64) as usize;
                let n = 1 + below(rng, 12);
                let batch: Vec<u64> = (0..n)
                    .map(|_| {
                        ids.entry += 1;
                        ids.entry
                    })
                    .collect();
                let r = wal
                    .append_batch(TOPICS[t], batch.iter().map(|&id| payload(id)))
                    .await;
                let at = journal.position();
                ids.batch += 1;
                let batch_id = ids.batch;
                ep.batches.insert(batch_id, n);
                if let Ok(range) = &r {
                    assert_eq!(range.end - range.start, n);
                    max_ok[t] = Some(range.end - 1);
                } else {
                    totals.failed_appends += n;
                }
                for (i, &id) in batch.iter().enumerate() {
                    let offset = r.as_ref().ok().map(|range| range.start + i as u64);
                    ep.entries.insert(
                        id,
                        Rec {
                            topic: t,
                            offset,
                            unknown: false,
                            batch: Some(batch_id),
                            durable_at: offset.filter(|_| sync_each).map(|_| at),
                            done_at: at,
                        },
                    );
                }
            }
            57..75 => {
                let t = below(rng, TOPICS.len() as u64) as usize;
                if streams[t].is_none() {
                    let st = wal.subscribe_as(TOPICS[t], CONSUMER).unwrap();
                    ep.consumers[t]
                        .delivered
                        .push((journal.position(), st.checkpoint()));
                    streams[t] = Some(st);
                }
                let st = streams[t].as_mut().unwrap();
                let end = ep.consumers[t].delivered.last().map_or(0, |d| d.1);
                // Read only what is there, so the call cannot wait.
                if max_ok[t].is_some_and(|m| m >= end.max(st.checkpoint())) {
                    let max_bytes = 1 + below(rng, 4000) as usize;
                    let read = if below(rng, 8) == 0 {
                        // Given up on: cancel safe, so nothing was delivered.
                        let polls = 1 + below(rng, 3);
                        match poll_then_drop(st.next_batch(max_bytes), polls).await {
                            Some(r) => r,
                            None => {
                                totals.dropped_futures += 1;
                                continue;
                            }
                        }
                    } else {
                        st.next_batch(max_bytes).await
                    };
                    let got = match read {
                        Ok(got) => got,
                        Err(Error::Truncated { .. }) => continue,
                        // An injected fault failed the consumer's registration: start over.
                        Err(_) if s.faults => {
                            streams[t] = None;
                            continue;
                        }
                        Err(e) => panic!("read failed: {e}"),
                    };
                    let Some(last) = got.last() else { continue };
                    let delivered_end = last.offset + 1;
                    ep.consumers[t]
                        .delivered
                        .push((journal.position(), delivered_end));
                    let upto = got[below(rng, got.len() as u64) as usize].offset;
                    if below(rng, 8) == 0 {
                        // An ack given up on may or may not have moved the checkpoint; it never
                        // moves it past `upto`, which was delivered.
                        let polls = 1 + below(rng, 3);
                        match poll_then_drop(st.ack(upto), polls).await {
                            Some(Ok(())) => {
                                ep.consumers[t].acked.push((journal.position(), upto + 1))
                            }
                            Some(Err(_)) => {}
                            None => totals.dropped_futures += 1,
                        }
                    } else if st.ack(upto).await.is_ok() {
                        ep.consumers[t].acked.push((journal.position(), upto + 1));
                    }
                }
            }
            75..81 => {
                let start = journal.position();
                if wal.sync().await.is_ok() {
                    let at = journal.position();
                    for r in ep.entries.values_mut() {
                        if r.offset.is_some() && r.done_at <= start {
                            r.durable_at = Some(r.durable_at.map_or(at, |d| d.min(at)));
                        }
                    }
                }
            }
            81..82 => {
                // Dropping a stream persists its unpersisted acks.
                let t = below(rng, TOPICS.len() as u64) as usize;
                streams[t] = None;
            }
            82..83 => {
                // Remove the consumer (its next subscription starts over at the oldest entry:
                // a rewind), now and then giving up on the call.
                let t = below(rng, TOPICS.len() as u64) as usize;
                streams[t] = None;
                let start = journal.position();
                let remove = wal.remove_consumer(TOPICS[t], CONSUMER);
                let done = if below(rng, 3) == 0 {
                    let r = poll_then_drop(remove, 1 + below(rng, 3)).await;
                    if r.is_none() {
                        totals.dropped_futures += 1;
                    }
                    r
                } else {
                    Some(remove.await)
                };
                totals.removals += 1;
                let end = match done {
                    Some(Ok(())) => journal.position(),
                    _ => usize::MAX,
                };
                ep.consumers[t].rewinds.push((start, end));
            }
            83..84 | 92..97 => {
                // A consuming polling read of the default consumer, now and then given up on
                // (then nothing was delivered, and its checkpoint must not stay moved).
                let t = below(rng, TOPICS.len() as u64) as usize;
                let max_bytes = below(rng, 3000) as usize;
                let one = below(rng, 2) == 0;
                let read = async {
                    if one {
                        wal.read_next(TOPICS[t], true)
                            .await
                            .map(|e| e.into_iter().collect())
                    } else {
                        wal.batch_read(TOPICS[t], max_bytes, true).await
                    }
                };
                let polls = 1 + below(rng, 3);
                // A consuming read's checkpoint is durable before it returns: its entries count
                // as delivered from its start.
                let start = journal.position();
                let got: Option<walrus_async::Result<Vec<walrus_async::Entry>>> =
                    if below(rng, 2) == 0 {
                        let r = poll_then_drop(read, polls).await;
                        if r.is_none() {
                            totals.dropped_futures += 1;
                        }
                        r
                    } else {
                        Some(read.await)
                    };
                let d = &mut ep.defaults[t];
                match got {
                    None => d.uncertain.push((start, usize::MAX)),
                    Some(r) => {
                        let end = journal.position();
                        // The undo of a read given up on is queued to the checkpoint writer
                        // before any later read of the consumer; it is known durable only once
                        // a later read's own checkpoint is: under `StrictlyAtOnce`, a read that
                        // returned entries. A read that failed, found nothing, or (under
                        // `AtLeastOnce`) was not due to persist proves nothing: the window stays
                        // open until one that does, or until `close`.
                        let persisted = matches!(s.consistency, ReadConsistency::StrictlyAtOnce)
                            && r.as_ref().is_ok_and(|got| !got.is_empty());
                        if persisted
                            && let Some(w) = d.uncertain.last_mut().filter(|w| w.1 == usize::MAX)
                        {
                            w.1 = end;
                        }
                        // A read that failed may have written its checkpoint before its
                        // fsync failed; it is cut back before the read returns.
                        if r.is_err() {
                            d.uncertain.push((start, end));
                        }
                        if let Ok(got) = r
                            && let Some(last) = got.last()
                        {
                            d.delivered.push((start, last.offset + 1));
                            d.acked.push((end, last.offset + 1));
                            totals.consuming_reads += 1;
                        }
                    }
                }
            }
            84..86 => {
                if below(rng, 4) == 0 {
                    // An operator deletes the oldest segment file by hand (recorded in the
                    // journal, so later images may lack it: its entries are excused from the
                    // loss check, every other promise still holds). The running log must go on
                    // (retention, syncs, reads, close).
                    let ns = if s.key {
                        dir.join("ns-tenant%2F1")
                    } else {
                        dir.to_path_buf()
                    };
                    let oldest = std::fs::read_dir(&ns).ok().and_then(|d| {
                        d.filter_map(|e| e.ok().map(|e| e.path()))
                            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
                            .min()
                    });
                    if let Some(p) = oldest
                        && std::fs::remove_file(&p).is_ok()
                    {
                        journal.removed_by_hand(&p);
                        ep.deleted_by_hand.get_or_insert(journal.position());
                        totals.deleted_by_hand += 1;
                    }
                }
                if below(rng, 2) == 0 {
                    let _ = wal.reclaim().await;
                } else if poll_then_drop(wal.reclaim(), 1 + below(rng, 3))
                    .await
                    .is_none()
                {
                    totals.dropped_futures += 1;
                }
            }
            86..87 => {
                // Rewind a consumer (its stream dropped first: a live one is busy) to somewhere
                // it has already been, or to the oldest entry.
                let t = below(rng, TOPICS.len() as u64) as usize;
                streams[t] = None;
                let delivered = ep.consumers[t].delivered.last().map_or(0, |d| d.1);
                let to = if below(rng, 2) == 0 {
                    ResetTo::Earliest
                } else {
                    ResetTo::Offset(below(rng, delivered + 1))
                };
                let start = journal.position();
                let reset = wal.reset_consumer(TOPICS[t], CONSUMER, to);
                let done = if below(rng, 4) == 0 {
                    let r = poll_then_drop(reset, 1 + below(rng, 3)).await;
                    if r.is_none() {
                        totals.dropped_futures += 1;
                    }
                    r
                } else {
                    Some(reset.await)
                };
                totals.rewinds += 1;
                // A rewind given up on still happens (it is a task of the log once polled),
                // and so may a failed one (written again by the next stream): either way,
                // earlier acknowledgements stop binding the checkpoint from its start on.
                let end = match done {
                    Some(Ok(_)) => journal.position(),
                    _ => usize::MAX,
                };
                ep.consumers[t].rewinds.push((start, end));
            }
            87..92 if s.faults => {
                totals.faults += 1;
                match below(rng, 5) {
                    0 => faults.fail_writes(1, libc::EIO),
                    1 => faults.fail_writes(1, libc::ENOSPC),
                    2 => faults.fail_syncs(1, libc::EIO),
                    3 => faults.fail_creates(1, libc::ENOSPC),
                    _ => faults.short_writes(1, libc::ENOSPC),
                }
            }
            _ => {
                ids.entry += 1;
                let job = [(ids.entry, below(rng, TOPICS.len() as u64) as usize, None)];
                append_group(&wal, &mut ep, &job, sync_each, &mut max_ok, totals).await;
            }
        }
    }
    // Faults still armed would fail the close; disarm them.
    faults.fail_writes(0, 0);
    faults.fail_syncs(0, 0);
    faults.fail_creates(0, 0);
    faults.short_writes(0, 0);
    drop(streams);
    if below(rng, 2) == 0 {
        let start = journal.position();
        // A close given up on goes on as a task of the log; a second close waits for it.
        if below(rng, 4) == 0
            && poll_then_drop(wal.close(), 1 + below(rng, 4))
                .await
                .is_none()
        {
            totals.dropped_futures += 1;
        }
        if wal.close().await.is_ok() {
            let at = journal.position();
            for r in ep.entries.values_mut() {
                if r.offset.is_some() && r.done_at <= start {
                    r.durable_at = Some(r.durable_at.map_or(at, |d| d.min(at)));
                }
            }
            // A clean close has written the undo of every consuming read given up on.
            for d in &mut ep.defaults {
                for w in d.uncertain.iter_mut().filter(|w| w.1 == usize::MAX) {
                    w.1 = at;
                }
            }
        }
    }
    drop(wal);
    ep
}

/// Every entry of `topic`, in offset order, stepping over deleted ranges.
async fn read_all(wal: &Walrus, topic: &str) -> Vec<(u64, Vec<u8>)> {
    let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut at = 0u64;
    loop {
        match wal.read_at(topic, at, 1 << 20).await {
            Ok(v) if v.is_empty() => return out,
            Ok(v) => {
                at = v.last().unwrap().offset + 1;
                out.extend(v.into_iter().map(|e| (e.offset, e.data.to_vec())));
            }
            Err(Error::Truncated { oldest, .. }) if oldest > at => at = oldest,
            Err(e) => panic!("read_at({topic}, {at}) failed: {e}"),
        }
    }
}

/// What the reopened image held, for a second epoch to build on.
struct Survivors {
    entries: HashMap<u64, Rec>,
    checkpoints: Vec<Option<u64>>,
}

/// Reopens the crash image in `dir` and checks every promise for crash point `at`.
/// What was done to a crash image by hand before it was reopened, and what that excuses.
#[derive(Clone, Copy, Debug, Default)]
struct Tampered {
    /// A byte of the checkpoint store flipped: checkpoints may go back (redelivery), never
    /// forward past an undelivered entry.
    store: bool,
    /// The newest segment file cut at a random length: entries in the cut part are gone.
    segment: bool,
}

async fn check_image(
    dir: &Path,
    s: Settings,
    ep: &Epoch,
    at: usize,
    probe: bool,
    tampered: Tampered,
    totals: &mut Totals,
) -> Result<Survivors, String> {
    let probe = probe && !tampered.store;
    let wal = Walrus::builder()
        .data_dir(dir)
        .segment_bytes(walrus_async::MIN_SEGMENT_BYTES)
        .fsync(FsyncSchedule::NoFsync)
        .consistency(s.consistency)
        .key(if s.key { "tenant/1" } else { "" })
        .open()
        .await
        .map_err(|e| format!("reopen failed: {e}"))?;
    let mut survivors = Survivors {
        entries: HashMap::new(),
        checkpoints: vec![None; TOPICS.len()],
    };
    let mut batch_seen: HashMap<u64, u64> = HashMap::new();
    // Which entry each (topic, offset) was acknowledged to.
    let owner: HashMap<(usize, u64), u64> = ep
        .entries
        .iter()
        .filter_map(|(id, r)| Some(((r.topic, r.offset?), *id)))
        .collect();
    for (t, topic) in TOPICS.iter().enumerate() {
        let entries = read_all(&wal, topic).await;
        totals.entries_checked += entries.len() as u64;
        let mut prev: Option<u64> = None;
        for (offset, data) in &entries {
            if prev.is_some_and(|p| p >= *offset) {
                return Err(format!("{topic}: offset {offset} after {prev:?}"));
            }
            prev = Some(*offset);
            let id = data
                .get(..8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
                .ok_or_else(|| format!("{topic}@{offset}: entry too short"))?;
            let rec = ep
                .entries
                .get(&id)
                .ok_or_else(|| format!("{topic}@{offset}: entry {id} was never appended"))?;
            if rec.topic != t || *data != payload(id) {
                return Err(format!(
                    "{topic}@{offset}: entry {id} has wrong topic or bytes"
                ));
            }
            match rec.offset {
                Some(o) if o != *offset => {
                    return Err(format!(
                        "{topic}@{offset}: entry {id} was appended at offset {o}"
                    ));
                }
                Some(_) => {}
                // A failed append's entry may exist after a crash only if its bytes were written
                // (its fsync failed, so the outcome was unknown) — at an offset nobody else has.
                None if !s.faults && !rec.unknown => {
                    return Err(format!("{topic}@{offset}: entry {id} of a failed append"));
                }
                None => {
                    if let Some(other) = owner.get(&(t, *offset)) {
                        return Err(format!(
                            "{topic}@{offset}: entry {id} of a failed append, at the offset of entry {other}"
                        ));
                    }
                }
            }
            if survivors.entries.contains_key(&id) {
                return Err(format!("{topic}@{offset}: entry {id} a second time"));
            }
            if let Some(b) = rec.batch {
                *batch_seen.entry(b).or_default() += 1;
            }
            survivors.entries.insert(
                id,
                Rec {
                    offset: Some(*offset),
                    durable_at: Some(0),
                    done_at: 0,
                    ..rec.clone()
                },
            );
        }
        // The consumer's checkpoint, as recovered.
        let c_model = &ep.consumers[t];
        let delivered = c_model
            .delivered
            .iter()
            .filter(|d| d.0 <= at)
            .map(|d| d.1)
            .max();
        let acked_ever = c_model
            .acked
            .iter()
            .filter(|a| a.0 <= at)
            .map(|a| a.1)
            .max();
        // Acknowledgements bind the checkpoint only since the last rewind, once it returned;
        // a rewind under way (or given up on) may or may not have landed.
        let since = match c_model
            .rewinds
            .iter()
            .filter(|r| r.0 <= at)
            .map(|r| r.1)
            .max()
        {
            Some(end) if end > at => None,
            Some(end) => Some(end),
            None => Some(0),
        };
        let acked = since.and_then(|since| {
            c_model
                .acked
                .iter()
                .filter(|a| a.0 <= at && (since == 0 || a.0 > since))
                .map(|a| a.1)
                .max()
        });
        let acked = acked.filter(|_| !tampered.store);
        // Below this, retention may have deleted entries: the recovered checkpoint, but never
        // above what was delivered (a checkpoint retention acted on was persisted after the
        // delivery it covers), so a wrong, high checkpoint cannot hide a loss.
        let mut floor = 0;
        let mut deleted_below = 0;
        if let Some(delivered) = delivered {
            let st = wal
                .subscribe_as(topic, CONSUMER)
                .map_err(|e| format!("subscribe: {e}"))?;
            let c = st.checkpoint();
            drop(st);
            survivors.checkpoints[t] = Some(c);
            // Past what was delivered is fine only where no entry survived (an unregistered
            // consumer starts at the oldest entry); skipping an existing entry is not.
            if let Some((skipped, _)) = entries.iter().find(|e| e.0 >= delivered && e.0 < c) {
                return Err(format!(
                    "{topic}: checkpoint {c} skips entry {skipped}, never delivered (delivered up to {delivered})"
                ));
            }
            if let Some(a) = acked
                && c + s.redelivery() < a
            {
                return Err(format!(
                    "{topic}: checkpoint {c} but {a} was acknowledged (redelivery allowed: {})",
                    s.redelivery()
                ));
            }
            floor = c.min(delivered);
            // Retention may have deleted below any checkpoint persisted so far, also one a
            // rewind or damage took back.
            deleted_below = c.max(acked_ever.unwrap_or(0)).min(delivered);
        }
        // The default consumer: a consuming read's checkpoint is durable before the read
        // returns, so retention may delete what it read from the read's start on; a read given
        // up on (or damage that lost its undo) may leave its checkpoint past entries never
        // returned, until the undo is durable, and retention may act on it.
        let d_model = &ep.defaults[t];
        let d_delivered = d_model
            .delivered
            .iter()
            .filter(|d| d.0 <= at)
            .map(|d| d.1)
            .max();
        let d_uncertain = tampered.store || d_model.uncertain.iter().any(|w| w.0 <= at && at < w.1);
        let deleted_below = if d_uncertain {
            u64::MAX
        } else {
            deleted_below.max(d_delivered.unwrap_or(0))
        };
        for (id, rec) in &ep.entries {
            if rec.topic == t
                && !tampered.segment
                && ep.deleted_by_hand.is_none_or(|d| d > at)
                && rec.durable_at.is_some_and(|d| d <= at)
                && rec.offset.is_some_and(|o| o >= deleted_below)
            {
                if !survivors.entries.contains_key(id) {
                    return Err(format!(
                        "{topic}: durable entry {id} at offset {:?} lost",
                        rec.offset
                    ));
                }
                totals.durable_checked += 1;
            }
        }
        // The default consumer's checkpoint never skips an entry it was not handed.
        if let Some(d_delivered) = d_delivered.filter(|_| !d_uncertain)
            && let Ok(Some(next)) = wal.read_next(topic, false).await
            && let Some((skipped, _)) = entries
                .iter()
                .find(|e| e.0 >= d_delivered && e.0 < next.offset)
        {
            return Err(format!(
                "{topic}: the default consumer's checkpoint skips entry {skipped}, never delivered (delivered up to {d_delivered})"
            ));
        }
        if probe {
            let o = wal
                .append(topic, payload(u64::MAX - t as u64))
                .await
                .map_err(|e| format!("append after reopen: {e}"))?;
            let last = entries.last().map_or(0, |e| e.0 + 1);
            if o < last || o < floor {
                return Err(format!(
                    "{topic}: new offset {o} below {last} (last entry) or {floor} (checkpoint)"
                ));
            }
        }
    }
    for (b, seen) in batch_seen {
        let len = ep.batches[&b];
        if seen != len {
            return Err(format!("batch {b}: {seen} of {len} entries survived"));
        }
    }
    wal.close().await.map_err(|e| format!("close: {e}"))?;
    Ok(survivors)
}

/// Now and then does to a crash image what an operator or a failing disk might: flips a byte
/// of the checkpoint store, or cuts the newest segment file at a random length.
fn tamper(image: &Path, s: Settings, rng: &mut fastrand::Rng, totals: &mut Totals) -> Tampered {
    let ns = if s.key {
        image.join("ns-tenant%2F1")
    } else {
        image.to_path_buf()
    };
    let mut out = Tampered::default();
    if below(rng, 16) == 0 {
        let store = ns.join("checkpoints");
        if let Ok(mut b) = std::fs::read(&store)
            && !b.is_empty()
        {
            let i = below(rng, b.len() as u64) as usize;
            b[i] ^= 1 << below(rng, 8);
            std::fs::write(&store, &b).unwrap();
            out.store = true;
            totals.damaged_stores += 1;
        }
    }
    if below(rng, 16) == 0 {
        let newest = std::fs::read_dir(&ns).ok().and_then(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "seg"))
                .max()
        });
        if let Some(seg) = newest {
            let len = std::fs::metadata(&seg).unwrap().len();
            let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
            f.set_len(below(rng, len + 1)).unwrap();
            out.segment = true;
            totals.truncated_segments += 1;
        }
    }
    out
}

fn scratch_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Crash points of one history: where acknowledgements happened (the moments promises start
/// to hold) and uniformly random ones.
fn crash_points(ep: &Epoch, n: usize, rng: &mut fastrand::Rng) -> Vec<usize> {
    let len = ep.journal.position();
    let mut marks: Vec<usize> = ep
        .entries
        .values()
        .map(|r| r.done_at)
        .chain(
            ep.consumers
                .iter()
                .flat_map(|c| c.acked.iter().map(|a| a.0)),
        )
        .collect();
    marks.sort_unstable();
    marks.dedup();
    let mut out = vec![len];
    while out.len() < n {
        if below(rng, 3) == 0 && !marks.is_empty() {
            out.push(marks[below(rng, marks.len() as u64) as usize]);
        } else {
            out.push(below(rng, len as u64 + 1) as usize);
        }
    }
    out
}

async fn run_seed(seed: u64, points: usize, totals: &mut Totals) {
    let s = Settings::from_seed(seed);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut ids = Ids::default();
    let root = tempfile::tempdir_in(scratch_root()).unwrap();
    let live = root.path().join("live");
    let ep = run_epoch(&live, s, &mut rng, &mut ids, 60, totals).await;
    totals.workloads += 1;
    let chained = below(&mut rng, points as u64) as usize;
    for (i, at) in crash_points(&ep, points, &mut rng).into_iter().enumerate() {
        let image = root.path().join(format!("crash-{i}"));
        let crash_seed = rng.u64(..);
        let report = ep.journal.crash_image(at, crash_seed, &image).unwrap();
        totals.crash_points += 1;
        totals.unsynced_writes += report.unsynced_writes as u64;
        totals.kept_writes += report.kept_writes as u64;
        totals.torn += u64::from(report.torn);
        totals.dir_ops_dropped += (report.unsynced_dir_ops - report.kept_dir_ops) as u64;
        let probe = i % 8 == 0 && i != chained;
        let tampered = if i == chained {
            Tampered::default()
        } else {
            tamper(&image, s, &mut rng, totals)
        };
        match check_image(&image, s, &ep, at, probe, tampered, totals).await {
            Ok(survivors) if i == chained => {
                // Run again on the recovered files, then crash that lifetime too.
                let mut ep2 = run_epoch(&image, s, &mut rng, &mut ids, 30, totals).await;
                for (id, rec) in survivors.entries {
                    ep2.entries.entry(id).or_insert(rec);
                }
                for (t, c) in survivors.checkpoints.iter().enumerate() {
                    if let Some(c) = *c {
                        ep2.consumers[t].delivered.insert(0, (0, c));
                        ep2.consumers[t].acked.insert(0, (0, c));
                    }
                }
                // Batch ids are unique across lifetimes (`Ids`).
                ep2.batches.extend(ep.batches.iter().map(|(k, v)| (*k, *v)));
                for (j, at2) in crash_points(&ep2, 8, &mut rng).into_iter().enumerate() {
                    let image2 = root.path().join(format!("crash-{i}-again-{j}"));
                    ep2.journal.crash_image(at2, rng.u64(..), &image2).unwrap();
                    totals.second_crashes += 1;
                    let tampered = Tampered::default();
                    if let Err(why) =
                        check_image(&image2, s, &ep2, at2, false, tampered, totals).await
                    {
                        let kept = image2.clone();
                        std::mem::forget(root);
                        panic!(
                            "seed {seed}: second crash at {at2} of {}: {why}\n\
                             image kept in {}\nsettings: {s:?}\n\
                             replay: WALRUS_SIM_SEED={seed} cargo test --all-features --test crash_sim",
                            ep2.journal.position(),
                            kept.display()
                        );
                    }
                    std::fs::remove_dir_all(&image2).unwrap();
                }
            }
            Ok(_) => {}
            Err(why) => {
                let kept = image.clone();
                std::mem::forget(root);
                panic!(
                    "seed {seed}: crash at {at} of {} (image seed {crash_seed}): {why}\n\
                     image kept in {}\nsettings: {s:?}\n\
                     replay: WALRUS_SIM_SEED={seed} cargo test --all-features --test crash_sim",
                    ep.journal.position(),
                    kept.display()
                );
            }
        }
        std::fs::remove_dir_all(&image).unwrap();
    }
}

#[test]
fn crash_points_keep_every_promise() {
    let total_points = env_u64("WALRUS_SIM_CRASH_POINTS").unwrap_or(10_000) as usize;
    let per_workload = 250;
    let seeds: Vec<u64> = match env_u64("WALRUS_SIM_SEED") {
        Some(s) => vec![s],
        None => {
            let base = env_u64("WALRUS_SIM_BASE_SEED").unwrap_or(0xC0FFEE);
            (0..total_points.div_ceil(per_workload) as u64)
                .map(|i| base.wrapping_add(i))
                .collect()
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut totals = Totals::default();
    rt.block_on(async {
        for seed in seeds {
            run_seed(seed, per_workload, &mut totals).await;
        }
    });
    eprintln!("crash simulation: {totals:?}");
    // The checks above must have had something to bite on.
    assert!(
        totals.durable_checked > 0,
        "no durable entry was ever checked"
    );
    assert!(
        totals.dir_ops_dropped > 0,
        "no directory operation was ever dropped"
    );
    assert!(
        totals.kept_writes > 0 && totals.torn > 0,
        "the model never dropped or tore anything"
    );
    assert!(
        totals.dropped_futures > 0 && totals.rewinds > 0,
        "no future was dropped and no consumer rewound"
    );
    assert!(
        totals.damaged_stores > 0 && totals.truncated_segments > 0,
        "no image was tampered with"
    );
}
