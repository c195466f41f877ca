//! Retention: deletes segment files nobody needs any more.
//!
//! A sealed segment (not the one the writer appends to, no group written into it still waiting
//! to be published) is deleted when, for every topic with frames in it, every registered
//! consumer's *persisted* checkpoint is past them. Topics without a registered consumer keep their data.
//! Optional limits (`retention_bytes`, `retention_age`) delete the oldest sealed segments
//! regardless of consumers; consumers that had not read the deleted entries get
//! `Error::Truncated` once and go on from the oldest retained entry.
//!
//! One pass runs at open (files of earlier lifetimes), after checkpoints are persisted, and on a
//! timer, in a task on the runtime that opened the log.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::checkpoint::FLOOR;
use crate::engine::Shared;
use crate::error::Result;
use crate::storage::{Segment, Span, lock};
use crate::topic::{FastMap, Topic};

type TopicSpan = (Arc<Topic>, Arc<Span>);

/// How often the task looks even when nothing asked it to.
pub(crate) const INTERVAL: Duration = Duration::from_secs(1);

/// Runs retention passes until `stop` fires.
pub(crate) async fn run(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
            _ = shared.retention_wake.notified() => {}
            _ = shared.checkpoints.durable_changed.notified() => {}
            _ = tick.tick() => {}
        }
        if let Err(e) = pass(&shared).await {
            tracing::warn!(error = %e, "retention pass failed; retrying later");
        }
    }
}

/// One pass. Returns the number of segment files deleted.
///
/// Which files go is decided on a snapshot; each one is then looked at again, with the
/// consumers lock held, right before it is taken out of the log (its spans leave their
/// topics, `oldest` moves up): a consumer registered or a default consumer that started
/// reading since the snapshot is seen, so nobody is told `Truncated` because a pass was
/// deleting consumed data at that moment. The file is unlinked after that; an unlink that
/// fails is retried by later passes.
#[tracing::instrument(name = "retention_pass", level = "debug", skip_all)]
pub(crate) async fn pass(shared: &Shared) -> Result<u64> {
    let _one_at_a_time = shared.retention_lock.lock().await;
    let started = std::time::Instant::now();
    retry_orphans(shared).await;
    // Registry first, then the current segment: one that became current in between is not in
    // the snapshot, and anything at or after `current` counts as still being written.
    let mut segments = shared.alloc.segments();
    segments.sort_by_key(|s| s.ms);
    let current = shared.alloc.current_ms().await;

    // Lowest checkpoint per topic over its consumers (`None`: no consumer, nothing of the
    // topic may go on consumers' account).
    let need = shared.with_consumers(|c| shared.consumer_pins(c));
    let cfg = &shared.config;
    let limits = cfg.retention_bytes.is_some() || cfg.retention_age.is_some();
    // No consumer pins anything and no limit is set: nothing can go (data nobody reads is
    // kept). Saves walking every span of every topic (a million idle topics at open).
    if need.is_empty() && !limits {
        return Ok(0);
    }
    let topics = shared.all_topics();
    let mut spans_of: FastMap<u64, Vec<TopicSpan>> = FastMap::default();
    for t in &topics {
        for b in t.spans().iter() {
            spans_of
                .entry(b.segment.ms)
                .or_default()
                .push((t.clone(), b.clone()));
        }
    }
    let sealed =
        |s: &Segment| current.is_none_or(|c| s.ms < c) && s.active.load(Ordering::Acquire) == 0;

    let mut doomed: Vec<(Arc<Segment>, bool)> = Vec::new(); // (segment, forced by a limit)
    // A lifetime that found the checkpoint store damaged or missing deletes nothing on
    // consumers' account: consumers it lost must get the chance to subscribe again first.
    if !shared.checkpoint_damage {
        for s in segments.iter().filter(|s| sealed(s)) {
            if consumed(&need, spans_of.get(&s.ms).map(Vec::as_slice)) {
                doomed.push((s.clone(), false));
            }
        }
    }
    if limits {
        let mut total: u64 = segments.iter().map(|s| s.len).sum();
        total -= doomed.iter().map(|(s, _)| s.len).sum::<u64>();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        for s in segments.iter().filter(|s| sealed(s)) {
            if doomed.iter().any(|(d, _)| d.ms == s.ms) {
                continue;
            }
            let over_size = cfg.retention_bytes.is_some_and(|max| total > max);
            // By the time of the newest entry in the file.
            let too_old = cfg.retention_age.is_some_and(|age| {
                now_ms.saturating_sub(s.max_ts.load(Ordering::Acquire))
                    > u64::try_from(age.as_millis()).unwrap_or(u64::MAX)
            });
            if over_size || too_old {
                total -= s.len;
                doomed.push((s.clone(), true));
            }
        }
    }
    let mut deleted = 0;
    let mut first_error = None;
    for (s, forced) in doomed {
        // One segment that cannot go (a failed floor write, a file the process may not
        // unlink) must not keep the others: the pass goes on and a later one retries it.
        match delete(
            shared,
            &s,
            spans_of.remove(&s.ms).unwrap_or_default(),
            forced,
        )
        .await
        {
            Ok(true) => deleted += 1,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(path = %s.path.display(), error = %e, "could not delete a segment; retrying later");
                first_error.get_or_insert(e);
                // Limits delete oldest first: a newer file must not go before an older one.
                if forced {
                    break;
                }
            }
        }
    }
    if deleted > 0 || first_error.is_some() {
        tracing::info!(
            deleted,
            failed = first_error.is_some(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "retention pass"
        );
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(deleted),
    }
}

/// Whether every span is behind every consumer of its topic.
fn consumed(need: &HashMap<String, u64>, spans: Option<&[TopicSpan]>) -> bool {
    spans.is_none_or(|spans| {
        spans.iter().all(|(t, b)| {
            need.get(&*t.name)
                .is_some_and(|&n| b.end_offset.load(Ordering::Acquire) <= n)
        })
    })
}

/// Takes `s` out of the log and unlinks it. `Ok(false)` if a consumer that appeared since the
/// snapshot still needs it.
async fn delete(
    shared: &Shared,
    s: &Arc<Segment>,
    spans: Vec<TopicSpan>,
    forced: bool,
) -> Result<bool> {
    // Make each topic's next offset survive a restart even if nothing of it is left on disk
    // and its consumers are later removed (a no-op when the floor is already that high). Only
    // where this file holds the topic's last entries: a later span tells recovery where its
    // offsets go on. A file holds one span per topic, so each topic comes once. All queued
    // first, so they share the checkpoint writer's group commits.
    let mut floors = Vec::new();
    for (t, span) in &spans {
        let last_with_entries = t
            .spans()
            .iter()
            .rev()
            .find(|x| x.last_pos.load(Ordering::Acquire) != 0)
            .cloned();
        if last_with_entries.is_none_or(|x| Arc::ptr_eq(&x, span)) {
            let next = t.next_offset();
            floors.push(shared.checkpoints.persist(&t.name, FLOOR, 0, next, next)?);
        }
    }
    for floor in floors {
        floor.wait().await?;
    }
    // The last look, and the commit, under the consumers lock (see `pass`).
    let taken = shared.with_consumers(|c| {
        if !forced && !consumed(&shared.consumer_pins(c), Some(&spans)) {
            return false;
        }
        s.deleted.store(true, Ordering::Release);
        for (t, b) in &spans {
            t.remove_span(b);
        }
        shared.alloc.forget(s.ms);
        true
    });
    if !taken {
        tracing::debug!(path = %s.path.display(), "segment pinned by a new consumer; kept");
        return Ok(false);
    }
    shared
        .stats
        .segments_deleted
        .fetch_add(1, Ordering::Relaxed);
    crate::telemetry::deleted_segment(s.len);
    tracing::debug!(path = %s.path.display(), forced, "segment deleted");
    if let Err(e) = unlink(shared, s.path.clone()).await {
        lock(&shared.orphans).push(s.path.clone());
        return Err(e.into());
    }
    Ok(true)
}

/// Unlinks a segment file and syncs the directory. A file already gone counts as deleted (an
/// operator freed the space, or an earlier unlink succeeded and its directory sync failed):
/// the directory is synced anyway.
async fn unlink(shared: &Shared, path: PathBuf) -> std::io::Result<()> {
    let (dir, trace) = (shared.dir.clone(), shared.io.trace.clone());
    crate::io::blocking(move || {
        match std::fs::remove_file(&path) {
            Ok(()) => trace.removed(&path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(path = %path.display(), "segment file already deleted");
            }
            Err(e) => return Err(e),
        }
        crate::io::sync_dir(&trace, &dir)
    })
    .await
}

/// Files taken out of the log whose unlink failed: tried again.
async fn retry_orphans(shared: &Shared) {
    let orphans = std::mem::take(&mut *lock(&shared.orphans));
    for path in orphans {
        if let Err(e) = unlink(shared, path.clone()).await {
            tracing::warn!(path = %path.display(), error = %e, "could not delete a segment file; retrying later");
            lock(&shared.orphans).push(path);
        }
    }
}
