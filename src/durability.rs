//! The durability task: one per open log, it turns sync requests into as few `fdatasync`s as
//! possible.
//!
//! The writer, under `SyncEach`, sends "make segment S durable up to write generation g" for
//! each group it wrote, and `sync()` asks for every segment. While one round of syncs runs, new
//! requests queue up; the next round serves all of them with one sync per dirty file. Before it
//! starts, it briefly waits for the requests the last round's callers are about to send
//! ([`Gather`]). Under `Milliseconds(n)` the task also syncs every dirty file every `n` ms.
//!
//! A failed sync poisons its segment: the error goes to every waiter, the writer moves to a
//! fresh segment, and every later `sync()` reports the failure instead of retrying and
//! pretending the lost data is durable ("fsyncgate").

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::config::FsyncSchedule;
use crate::counters::Counters;
use crate::error::{Error, Result};
use crate::io::Io;
use crate::storage::Allocator;
use crate::storage::Segment;

enum Target {
    /// One segment (everything written to it so far).
    Segment(Arc<Segment>),
    /// Every segment written so far (`Walrus::sync`).
    All,
}

struct Req {
    target: Target,
    reply: oneshot::Sender<Result<()>>,
}

/// Handle for sending sync requests.
pub(crate) struct Durability {
    tx: mpsc::UnboundedSender<Req>,
}

impl Durability {
    pub(crate) fn new() -> (Durability, DurabilityRx) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Durability { tx }, DurabilityRx(rx))
    }

    /// Waits until `segment` is durable up to write generation `gen`.
    pub(crate) async fn sync(&self, segment: Arc<Segment>, generation: u64) -> Result<()> {
        if segment.synced_gen.load(Ordering::Acquire) >= generation
            && !segment.poisoned.load(Ordering::Acquire)
        {
            return Ok(());
        }
        self.request(Target::Segment(segment)).await
    }

    /// Waits until everything written so far is durable.
    pub(crate) async fn sync_all(&self) -> Result<()> {
        self.request(Target::All).await
    }

    async fn request(&self, target: Target) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Req { target, reply })
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }
}

pub(crate) struct DurabilityRx(mpsc::UnboundedReceiver<Req>);

/// What the durability task works with.
pub(crate) struct Context {
    pub fsync: FsyncSchedule,
    pub io: Io,
    /// Where the segments written so far are found (`sync_all`, the `Milliseconds` timer).
    pub alloc: Arc<Allocator>,
    pub counters: Arc<Counters>,
}

/// Runs until `stop` fires; then answers what is queued and returns.
pub(crate) async fn run(
    cx: Context,
    rx: DurabilityRx,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut rx = rx.0;
    let period = match cx.fsync {
        FsyncSchedule::Milliseconds(n) => Some(Duration::from_millis(n.max(1))),
        _ => None,
    };
    let mut tick = tokio::time::interval(period.unwrap_or(Duration::from_secs(3600)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reqs = Vec::new();
    let mut next = Gather::default();
    loop {
        tokio::select! {
            biased;
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
            n = rx.recv_many(&mut reqs, 4096) => {
                if n == 0 {
                    break;
                }
                next.gather(&mut reqs, usize::MAX, || rx.try_recv().ok()).await;
                let served = reqs.len();
                let started = Instant::now();
                serve(&cx, &mut reqs).await;
                next = Gather {
                    expect: served + rx.len(),
                    patience: started.elapsed() / 4,
                };
            }
            _ = tick.tick(), if period.is_some() => {
                let _ = sync_segments(&cx, cx.alloc.segments()).await;
            }
        }
    }
    // Answer anything still queued so no caller waits forever.
    rx.close();
    while let Ok(r) = rx.try_recv() {
        reqs.push(r);
    }
    serve(&cx, &mut reqs).await;
}

/// How long the next round of work may wait for requests that are about to arrive. Used by
/// the writer (before a `SyncEach` group) and by this task (before a round of syncs).
///
/// `// NOTE:` why: the callers a round answers come back with their next request a few task
/// hops later, while a round that starts right away serves only the requests that queued up
/// during the last one. Without waiting, `n` callers settle into cohorts that take turns
/// (each request waits two rounds: with 8 producers, 4 per fsync). So the next round first
/// gives them a chance: it yields to the runtime until as many requests wait as it expects,
/// for at most `patience` (Tokio's timers are too coarse for tens of microseconds; yields are
/// not). A lone caller never waits: its request alone is all the round expects.
#[derive(Default)]
pub(crate) struct Gather {
    /// Requests the round expects: those the last round served (plus any that queued during it).
    pub expect: usize,
    /// A quarter of the last round's sync time.
    pub patience: Duration,
}

/// Yields at most this many times per round while gathering.
const GATHER_YIELDS: usize = 16;

impl Gather {
    /// Adds to `reqs` what `try_recv` yields, up to `cap`, until `expect` are there or the
    /// patience is used up.
    pub(crate) async fn gather<T>(
        &self,
        reqs: &mut Vec<T>,
        cap: usize,
        mut try_recv: impl FnMut() -> Option<T>,
    ) {
        let expect = self.expect.min(cap);
        if reqs.len() >= expect || self.patience.is_zero() {
            return;
        }
        let until = Instant::now() + self.patience;
        for _ in 0..GATHER_YIELDS {
            tokio::task::yield_now().await;
            while reqs.len() < cap
                && let Some(r) = try_recv()
            {
                reqs.push(r);
            }
            if reqs.len() >= expect || Instant::now() >= until {
                return;
            }
        }
    }
}

async fn serve(cx: &Context, reqs: &mut Vec<Req>) {
    if reqs.is_empty() {
        return;
    }
    let mut segs: Vec<Arc<Segment>> = Vec::new();
    let mut all = false;
    for r in reqs.iter() {
        match &r.target {
            Target::All => all = true,
            Target::Segment(s) => {
                if !segs.iter().any(|x| Arc::ptr_eq(x, s)) {
                    segs.push(s.clone());
                }
            }
        }
    }
    if all {
        segs = cx.alloc.segments();
    }
    let results = sync_segments(cx, segs).await;
    for r in reqs.drain(..) {
        let res = match &r.target {
            Target::All => results
                .iter()
                .find_map(|(_, res)| res.as_ref().err())
                .map_or(Ok(()), |e| Err(e.duplicate())),
            Target::Segment(s) => {
                results
                    .iter()
                    .find(|(x, _)| Arc::ptr_eq(x, s))
                    .map_or(Ok(()), |(_, res)| match res {
                        Ok(()) => Ok(()),
                        Err(e) => Err(e.duplicate()),
                    })
            }
        };
        let _ = r.reply.send(res);
    }
}

/// Syncs each segment that needs it, concurrently. A poisoned segment reports its failure.
async fn sync_segments(cx: &Context, segs: Vec<Arc<Segment>>) -> Vec<(Arc<Segment>, Result<()>)> {
    // Files still open are synced concurrently; sealed ones that must be opened again to be
    // synced (their last writes were never synced) one at a time, so a `sync()` after much
    // unsynced data needs one descriptor more, not one per file.
    let (open, sealed): (Vec<_>, Vec<_>) = segs.into_iter().partition(|s| s.file().is_some());
    let work = open.into_iter().map(|s| async move {
        let res = sync_one(cx, &s).await;
        (s, res)
    });
    let mut out = futures::future::join_all(work).await;
    for s in sealed {
        let res = sync_one(cx, &s).await;
        out.push((s, res));
    }
    out
}

async fn sync_one(cx: &Context, s: &Segment) -> Result<()> {
    let failed = || Error::SyncFailed {
        path: s.path.clone(),
        reason: "an earlier fsync of this file failed".into(),
    };
    if s.poisoned.load(Ordering::Acquire) {
        return Err(failed());
    }
    let generation = s.write_gen.load(Ordering::Acquire);
    if s.synced_gen.load(Ordering::Acquire) >= generation {
        return Ok(());
    }
    // Loaded before the sync starts, so the sync covers at least this much.
    let written = s.written.load(Ordering::Acquire);
    #[cfg(feature = "failpoints")]
    if let Some(f) = &cx.io.trace.faults {
        f.before_segment_sync().await;
    }
    let started = std::time::Instant::now();
    let res = match s.file_for_sync() {
        Ok(file) => cx.io.sync_data(&file).await,
        // Deleted by retention meanwhile: nothing of it is left to make durable.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && s.deleted.load(Ordering::Acquire) => {
            return Ok(());
        }
        // Deleted by hand with unsynced writes in it: they are lost, as after a failed sync.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(e),
        // No descriptor to be had (EMFILE, ENFILE): nothing was lost, try again later.
        Err(e) => {
            return Err(Error::SyncFailed {
                path: s.path.clone(),
                reason: format!("cannot open the file to sync it: {e}"),
            });
        }
    };
    cx.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
    crate::telemetry::synced(started.elapsed(), res.is_ok());
    match res {
        Ok(()) => {
            s.synced_gen.fetch_max(generation, Ordering::AcqRel);
            s.synced_to.fetch_max(written, Ordering::AcqRel);
            Ok(())
        }
        Err(e) => {
            s.poisoned.store(true, Ordering::Release);
            tracing::error!(path = %s.path.display(), error = %e, "fdatasync failed; the file takes no more appends");
            Err(Error::SyncFailed {
                path: s.path.clone(),
                reason: e.to_string(),
            })
        }
    }
}
