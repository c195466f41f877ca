//! Opening and closing a log: directories, the lock, recovery into topics, the tasks of the
//! log, and the close that ends them. Above every task it starts; used by the handle (`wal`).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{mpsc, watch};

use crate::checkpoint::{self, CheckpointStore};
use crate::config::Config;
use crate::counters::Counters;
use crate::durability::{self, Durability};
use crate::engine::Shared;
use crate::error::{Error, Result};
use crate::io::{Io, Trace};
use crate::retention;
use crate::storage::{self, Allocator, lock};
use crate::topic::{FastMap, Topic};

pub(crate) struct Inner {
    pub(crate) shared: Arc<Shared>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone without `close`: let the writer drain and exit, stop the
        // durability task. The io_uring reaper is *not* stopped here: writes already queued must
        // still complete; it ends by itself once the tasks holding the engine are gone. The
        // directory lock goes with the last of them.
        // A close under way finishes on its own, and still needs the checkpoint store.
        if lock(&self.shared.closing).is_some() {
            return;
        }
        self.shared.stop_accepting();
        self.shared.stop.send_replace(true);
        // Its writer task writes what is queued, then ends (and lets go of the lock).
        self.shared.checkpoints.close();
    }
}

/// Maps an instance key to one directory name: `ns-` followed by the key with every byte
/// outside `[A-Za-z0-9_-]` percent-encoded. Injective (distinct keys never share a directory),
/// and never `.`, `..` or anything with a `/`.
pub(crate) fn namespace_dir(key: &str) -> Result<String> {
    let mut name = String::from("ns-");
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            name.push(b as char);
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    if name.len() > 240 {
        return Err(Error::InvalidKey {
            key: key.chars().take(64).collect::<String>() + "…",
            reason: "too long: its directory name would pass 240 bytes",
        });
    }
    Ok(name)
}

fn dir_error(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::DataDir {
        path: path.to_path_buf(),
        source,
    }
}

/// Opens the log `config` describes, on the calling runtime.
#[tracing::instrument(
    name = "walrus_open",
    skip_all,
    fields(data_dir = %config.data_dir.display(), key = config.key.as_deref().unwrap_or(""))
)]
pub(crate) async fn open(config: Config) -> Result<Arc<Inner>> {
    let dir = match &config.key {
        Some(k) => config.data_dir.join(namespace_dir(k)?),
        None => config.data_dir.clone(),
    };
    #[cfg(feature = "failpoints")]
    let trace = Trace::new(config.fail_points.clone());
    #[cfg(not(feature = "failpoints"))]
    let trace = Trace::default();
    let (lock_file, recovered, (checkpoints, checkpoint_report)) = {
        let dir = dir.clone();
        let data_dir = config.data_dir.clone();
        let trace = trace.clone();
        // Recovery runs on the blocking pool: carry the open's span there.
        let span = tracing::Span::current();
        crate::io::blocking(move || {
            let _open = span.enter();
            Ok(prepare(&data_dir, &dir, trace))
        })
        .await
        .map_err(Error::Io)??
    };
    let io = Io::select(
        config.io_backend,
        config.inline_write_max,
        config.uncached_write_min,
        trace.clone(),
    )?;
    tracing::info!(backend = io.kind().name(), dir = %dir.display(), "I/O backend selected");

    let alloc = Arc::new(Allocator::new(
        dir.clone(),
        config.segment_bytes,
        &recovered.segments,
        recovered.max_ms,
        recovered.log_id,
        trace,
    ));
    let (durability, durability_rx) = Durability::new();
    let (writer_tx, writer_rx) = mpsc::channel(config.queue_capacity);
    let (stop, stop_rx) = watch::channel(false);
    let stats = Arc::new(Counters::default());
    let mut floors = checkpoints.max_per_topic();
    let recovered_max_ts = recovered.max_ts;
    let mut topics = FastMap::with_capacity_and_hasher(recovered.topics.len(), Default::default());
    let mut entries = 0u64;
    let mut overlapping = 0u64;
    let mut add = |name: String, spans, floor| {
        let (topic, dropped) = build_topic(name, spans, floor);
        overlapping += dropped;
        entries += topic.entries_between(topic.oldest.load(Ordering::Relaxed), topic.visible());
        topics.insert(topic.name.clone(), Arc::new(topic));
    };
    // Topics with entries, then those that only have checkpoints.
    for (name, spans) in recovered.topics {
        let floor = floors.remove(&name).unwrap_or(0);
        add(name, spans, floor);
    }
    for (name, floor) in floors {
        add(name, Vec::new(), floor);
    }
    let checksum_failures = recovered.checksum_failures + overlapping;
    stats
        .checksum_failures
        .store(checksum_failures, Ordering::Relaxed);
    tracing::info!(
        dir = %dir.display(),
        segments = recovered.segments.len(),
        topics = topics.len(),
        entries,
        checksum_failures,
        "log opened"
    );
    let shared = Arc::new(Shared {
        config,
        runtime: tokio::runtime::Handle::current(),
        dir,
        io,
        alloc,
        durability,
        stats,
        checkpoints: Arc::new(checkpoints),
        topics: RwLock::new(topics),
        consumers: Mutex::new(HashMap::new()),
        writer_tx: RwLock::new(Some(writer_tx)),
        writer: Mutex::new(None),
        closed: AtomicBool::new(false),
        closing: Mutex::new(None),
        runtime_gone: AtomicBool::new(false),
        close_finished: AtomicBool::new(false),
        stop,
        tasks: Mutex::new(Vec::new()),
        lock_file: Mutex::new(Some(Arc::new(lock_file))),
        retention_wake: tokio::sync::Notify::new(),
        retention_lock: tokio::sync::Mutex::new(()),
        checkpoint_damage: checkpoint_report.damaged,
        checkpoint_task: Mutex::new(None),
        orphans: Mutex::new(Vec::new()),
    });
    let checkpoint_writer = checkpoint::run(
        shared.checkpoints.clone(),
        shared.io.clone(),
        lock(&shared.lock_file).clone(),
    );
    *lock(&shared.checkpoint_task) = Some(tokio::spawn(checkpoint_writer));
    // Dropped on an error below, it lets go of what was started.
    let inner = Arc::new(Inner {
        shared: shared.clone(),
    });
    // Files of earlier lifetimes that every consumer has passed go now. A failure here is
    // no reason to refuse the log: the background task retries.
    match retention::pass(&shared).await {
        Ok(0) => {}
        Ok(deleted) => tracing::info!(deleted, "reclaimed segments consumed before this open"),
        Err(e) => tracing::warn!(error = %e, "reclaiming at open failed; retrying later"),
    }
    let watch = RuntimeWatch {
        shared: Arc::downgrade(&shared),
        finished: false,
    };
    let durability = tokio::spawn({
        let context = durability::Context {
            fsync: shared.config.fsync,
            io: shared.io.clone(),
            alloc: shared.alloc.clone(),
            counters: shared.stats.clone(),
        };
        async move {
            let mut watch = watch; // the whole guard, not just a field, lives in the task
            durability::run(context, durability_rx, stop_rx).await;
            watch.finished = true;
        }
    });
    let retention = tokio::spawn(retention::run(shared.clone(), shared.stop.subscribe()));
    lock(&shared.tasks).extend([durability, retention]);
    crate::telemetry::opened(checksum_failures);
    #[cfg(feature = "metrics")]
    crate::telemetry::sample(&shared);
    #[cfg(feature = "metrics")]
    lock(&shared.tasks).push(tokio::spawn(crate::telemetry::run(
        shared.clone(),
        shared.stop.subscribe(),
    )));
    *lock(&shared.writer) = Some(tokio::spawn(crate::writer::run(
        shared.clone(),
        writer_rx,
        recovered_max_ts,
    )));
    Ok(inner)
}

/// How long `close` waits for a consuming read in flight.
const CLOSE_POLL_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The work of `Walrus::close`, a task of the log.
#[tracing::instrument(name = "walrus_close", skip_all, fields(dir = %shared.dir.display()))]
pub(crate) async fn close_log(shared: Arc<Shared>) -> Result<()> {
    shared.stop_accepting();
    let writer = lock(&shared.writer).take();
    if let Some(w) = writer {
        let _ = w.await;
    }
    let mut result = Ok(());
    let states: Vec<_> = lock(&shared.consumers).values().cloned().collect();
    // Polling reads in flight finish (or are dropped and queue their undo) first. Bounded: a
    // read future kept but never polled again must not hold the close forever.
    for state in &states {
        if tokio::time::timeout(CLOSE_POLL_WAIT, state.poll.lock())
            .await
            .is_err()
        {
            tracing::warn!(topic = %state.topic, "a consuming read still in flight at close: if it is dropped later, its checkpoint is not taken back");
        }
    }
    // Persist consumer positions that AtLeastOnce has not written yet: all queued, then
    // awaited, so they share the checkpoint writer's group commits.
    let mut persists = Vec::new();
    for state in &states {
        let acked = state.acked.load(Ordering::Acquire);
        let persisted = shared
            .checkpoints
            .member(&state.topic, &state.name)
            .filter(|m| m.epoch == state.epoch)
            .map_or(state.start, |m| m.offset);
        if acked > persisted {
            let queued = shared.checkpoints.persist(
                &state.topic,
                &state.name,
                state.epoch,
                acked,
                persisted,
            );
            persists.push(queued);
        }
    }
    for p in persists {
        if let Err(e) = async { p?.wait().await }.await {
            result = Err(e);
        }
    }
    if let Err(e) = shared.durability.sync_all().await
        && result.is_ok()
    {
        result = Err(e);
    }
    // Registrations, removals and dropped streams' checkpoints still queued are written
    // before the lock is let go.
    shared.checkpoints.close();
    let writer = lock(&shared.checkpoint_task).take();
    if let Some(w) = writer {
        let _ = w.await;
    }
    shared.stop.send_replace(true);
    let tasks: Vec<_> = std::mem::take(&mut *lock(&shared.tasks));
    for t in tasks {
        let _ = t.await;
    }
    shared.alloc.discard_spare().await;
    shared.io.shutdown();
    lock(&shared.lock_file).take();
    shared.close_finished.store(true, Ordering::Release);
    tracing::info!(dir = %shared.dir.display(), "log closed");
    result
}

/// Held by the durability task, which lives as long as the log: dropped without being
/// forgotten means the task was dropped unfinished, which happens when its runtime shuts down.
/// Then every caller is told so, instead of waiting for tasks that no longer exist.
struct RuntimeWatch {
    shared: std::sync::Weak<Shared>,
    finished: bool,
}

impl Drop for RuntimeWatch {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Also when a close had started: it cannot finish without the runtime either.
        if let Some(shared) = self.shared.upgrade()
            && !shared.close_finished.load(Ordering::Acquire)
        {
            tracing::warn!(dir = %shared.dir.display(), "the runtime that opened this log has shut down; calls on its handles now fail with RuntimeGone");
            shared.abandon();
        }
    }
}

/// Creates the directories, takes the lock, recovers segments and loads checkpoints.
#[tracing::instrument(name = "recovery", skip_all, fields(dir = %dir.display()))]
fn prepare(
    data_dir: &Path,
    dir: &Path,
    trace: Trace,
) -> Result<(
    File,
    storage::Recovered,
    (CheckpointStore, checkpoint::OpenReport),
)> {
    if data_dir.exists() && !data_dir.is_dir() {
        return Err(Error::DataDir {
            path: data_dir.to_path_buf(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    // Directories this open creates: each entry is durable only once its parent is synced.
    let mut created = Vec::new();
    let mut missing = Some(dir);
    while let Some(d) = missing.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        created.push(d.to_path_buf());
        missing = d.parent();
    }
    std::fs::create_dir_all(dir).map_err(dir_error(dir))?;
    for d in created.iter().rev() {
        let parent = match d.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        crate::io::sync_dir(&trace, parent).map_err(dir_error(parent))?;
    }
    // Before anything in the directory is written (the lock file included): a log of another
    // format is refused whole.
    storage::check_format(dir)?;
    let lock_path = dir.join("LOCK");
    let lock_file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(dir_error(dir))?;
    match lock_file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(Error::Locked {
                path: dir.to_path_buf(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(dir_error(dir)(e)),
    }
    let log_id = storage::log_id(dir, &trace)?;
    let recovered = storage::recover(dir, log_id, &trace).map_err(dir_error(dir))?;
    let checkpoints = CheckpointStore::open(dir, trace).map_err(dir_error(dir))?;
    Ok((lock_file, recovered, checkpoints))
}

/// Builds a topic from its recovered spans (sorted by first offset).
///
/// `floor` is the highest persisted checkpoint of any consumer of the topic: offsets below it
/// were handed out before, even if a power failure took their entries (an unsynced tail).
/// Handing them out again would make that consumer skip the new entries.
///
/// A span whose offsets overlap an earlier one's (a copy of a segment, or a hand-made file)
/// is left out, warned about and counted in the returned number: readers find a span by its
/// first offset, and two spans claiming the same offsets would make them skip entries.
fn build_topic(name: String, spans: Vec<storage::RecoveredSpan>, floor: u64) -> (Topic, u64) {
    let mut kept = Vec::with_capacity(spans.len());
    let mut covered = 0u64;
    let mut dropped = 0u64;
    for s in spans {
        let start = s.runs.first().map_or(s.span.first_offset, |r| r.start);
        let end = s.runs.last().map_or(start, |r| r.end);
        if start < covered {
            dropped += 1;
            tracing::warn!(topic = %name, path = %s.span.segment.path.display(), first_offset = start, "frames repeat offsets another segment holds (a copied file?); left out");
            continue;
        }
        covered = covered.max(end);
        kept.push(s);
    }
    let spans = kept;
    let mut runs: Vec<Range<u64>> = spans.iter().flat_map(|s| s.runs.clone()).collect();
    runs.sort_by_key(|r| r.start);
    let runs_end = runs.iter().map(|r| r.end).max().unwrap_or(0);
    let next = runs_end.max(floor);
    let oldest = runs.first().map_or(next, |r| r.start);
    // Past the last entry lie only offsets that hold none: readers may look up to `next`.
    let topic = Topic::new(Arc::from(name.as_str()), next);
    let mut prev = oldest;
    for r in &runs {
        if r.start > prev {
            topic.add_gap(prev..r.start);
        }
        prev = prev.max(r.end);
    }
    if next > prev {
        topic.add_gap(prev..next);
    }
    topic.oldest.store(oldest, Ordering::Release);
    topic.bytes.store(
        spans
            .iter()
            .map(|s| s.span.bytes.load(Ordering::Relaxed))
            .sum::<u64>(),
        Ordering::Relaxed,
    );
    for s in spans {
        topic.push_span(s.span);
    }
    (topic, dropped)
}
