//! Fault injection for tests (cargo feature `failpoints`; never enable it in production).
//!
//! A [`FailPoints`] handle given to [`WalrusBuilder::fail_points`](crate::WalrusBuilder::fail_points)
//! makes the I/O layer fail or stall chosen operations of that one log, so tests can show what
//! callers see when a disk misbehaves.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use walrus_async::{FailPoints, Walrus};
//! let dir = tempfile::tempdir().unwrap();
//! let faults = FailPoints::new();
//! let wal = Walrus::builder().data_dir(dir.path()).fail_points(faults.clone()).open().await.unwrap();
//! faults.fail_writes(1, libc::ENOSPC);
//! assert!(wal.append("t", "x").await.is_err());
//! assert_eq!(wal.append("t", "x").await.unwrap(), 1); // works again, no restart
//! # }
//! ```

use std::io;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::CrashJournal;

use tokio::sync::watch;

/// A handle to the injected faults of one log. Clones share state.
#[derive(Clone, Debug)]
pub struct FailPoints {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    writes: AtomicU32,
    write_errno: AtomicI32,
    syncs: AtomicU32,
    sync_errno: AtomicI32,
    /// `true` while writes are paused.
    paused: watch::Sender<bool>,
    /// Number of writes waiting at the pause.
    blocked: watch::Sender<u32>,
    /// The same for syncs.
    syncs_paused: watch::Sender<bool>,
    syncs_blocked: watch::Sender<u32>,
    /// Segment syncs only (the durability task's), with passes that let single syncs by.
    segment_syncs_paused: watch::Sender<bool>,
    segment_syncs_blocked: watch::Sender<u32>,
    segment_sync_passes: watch::Sender<u32>,
    creates: AtomicU32,
    create_errno: AtomicI32,
    short_writes: AtomicU32,
    short_errno: AtomicI32,
    journal: Mutex<Option<CrashJournal>>,
}

impl Default for FailPoints {
    fn default() -> Self {
        FailPoints::new()
    }
}

impl FailPoints {
    /// No faults.
    pub fn new() -> FailPoints {
        FailPoints {
            inner: Arc::new(Inner {
                writes: AtomicU32::new(0),
                write_errno: AtomicI32::new(libc::EIO),
                syncs: AtomicU32::new(0),
                sync_errno: AtomicI32::new(libc::EIO),
                paused: watch::Sender::new(false),
                blocked: watch::Sender::new(0),
                syncs_paused: watch::Sender::new(false),
                syncs_blocked: watch::Sender::new(0),
                segment_syncs_paused: watch::Sender::new(false),
                segment_syncs_blocked: watch::Sender::new(0),
                segment_sync_passes: watch::Sender::new(0),
                creates: AtomicU32::new(0),
                create_errno: AtomicI32::new(libc::ENOSPC),
                short_writes: AtomicU32::new(0),
                short_errno: AtomicI32::new(libc::ENOSPC),
                journal: Mutex::new(None),
            }),
        }
    }

    /// The next `n` writes (segment or checkpoint) fail with `errno` and write nothing.
    pub fn fail_writes(&self, n: u32, errno: i32) {
        self.inner.write_errno.store(errno, Ordering::SeqCst);
        self.inner.writes.store(n, Ordering::SeqCst);
    }

    /// The next `n` fdatasyncs fail with `errno`.
    pub fn fail_syncs(&self, n: u32, errno: i32) {
        self.inner.sync_errno.store(errno, Ordering::SeqCst);
        self.inner.syncs.store(n, Ordering::SeqCst);
    }

    /// The next `n` file creations (segments, the checkpoint store's rewrite, the `LOG_ID` file) fail with
    /// `errno` just after the file was created and before anything was written to it, where
    /// `fallocate` on a full disk fails: the engine must remove what it created.
    pub fn fail_creates(&self, n: u32, errno: i32) {
        self.inner.create_errno.store(errno, Ordering::SeqCst);
        self.inner.creates.store(n, Ordering::SeqCst);
    }

    /// The next `n` writes are short: the first half of their bytes reaches the file, then the
    /// write fails with `errno` (what a write that runs out of space midway returns).
    pub fn short_writes(&self, n: u32, errno: i32) {
        self.inner.short_errno.store(errno, Ordering::SeqCst);
        self.inner.short_writes.store(n, Ordering::SeqCst);
    }

    /// Records every effect this log has on its files into `journal`, for crash simulation
    /// (see [`CrashJournal`]). Set it before opening the log.
    pub fn record_into(&self, journal: &CrashJournal) {
        *self.inner.journal.lock().unwrap_or_else(|p| p.into_inner()) = Some(journal.clone());
    }

    pub(crate) fn journal(&self) -> Option<CrashJournal> {
        self.inner
            .journal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Writes wait (before touching the disk) until [`resume_writes`](Self::resume_writes).
    pub fn pause_writes(&self) {
        self.inner.paused.send_replace(true);
    }

    /// Lets paused writes go on.
    pub fn resume_writes(&self) {
        self.inner.paused.send_replace(false);
    }

    /// Waits until at least `n` writes are waiting at the pause.
    pub async fn writes_blocked(&self, n: u32) {
        let mut rx = self.inner.blocked.subscribe();
        let _ = rx.wait_for(|b| *b >= n).await;
    }

    /// fdatasyncs wait (before reaching the disk) until [`resume_syncs`](Self::resume_syncs):
    /// a disk whose flushes are slow.
    pub fn pause_syncs(&self) {
        self.inner.syncs_paused.send_replace(true);
    }

    /// Lets paused syncs go on.
    pub fn resume_syncs(&self) {
        self.inner.syncs_paused.send_replace(false);
    }

    /// Waits until at least `n` syncs are waiting at the pause.
    pub async fn syncs_blocked(&self, n: u32) {
        let mut rx = self.inner.syncs_blocked.subscribe();
        let _ = rx.wait_for(|b| *b >= n).await;
    }

    /// Syncs of segment files (the group commit's, not the checkpoint store's) wait until
    /// [`resume_segment_syncs`](Self::resume_segment_syncs) or a
    /// [`release_segment_syncs`](Self::release_segment_syncs) pass.
    pub fn pause_segment_syncs(&self) {
        self.inner.segment_syncs_paused.send_replace(true);
    }

    /// Lets `n` waiting (or coming) segment syncs by, one each, while staying paused.
    pub fn release_segment_syncs(&self, n: u32) {
        self.inner.segment_sync_passes.send_modify(|p| *p += n);
    }

    /// Lets paused segment syncs go on.
    pub fn resume_segment_syncs(&self) {
        self.inner.segment_syncs_paused.send_replace(false);
    }

    /// Waits until at least `n` segment syncs are waiting at the pause.
    pub async fn segment_syncs_blocked(&self, n: u32) {
        let mut rx = self.inner.segment_syncs_blocked.subscribe();
        let _ = rx.wait_for(|b| *b >= n).await;
    }

    pub(crate) async fn before_segment_sync(&self) {
        let mut paused = self.inner.segment_syncs_paused.subscribe();
        let mut passes = self.inner.segment_sync_passes.subscribe();
        if !*paused.borrow_and_update() {
            return;
        }
        self.inner.segment_syncs_blocked.send_modify(|b| *b += 1);
        loop {
            let mut took = false;
            self.inner.segment_sync_passes.send_if_modified(|p| {
                took = *p > 0;
                if took {
                    *p -= 1;
                }
                took
            });
            if took || !*paused.borrow_and_update() {
                break;
            }
            tokio::select! {
                _ = paused.changed() => {}
                _ = passes.changed() => {}
            }
        }
        self.inner.segment_syncs_blocked.send_modify(|b| *b -= 1);
    }

    /// `Ok(Some(errno))`: make this write short, then fail it with `errno`.
    pub(crate) async fn before_write(&self) -> io::Result<Option<i32>> {
        gate(&self.inner.paused, &self.inner.blocked).await;
        take(&self.inner.writes, &self.inner.write_errno)?;
        Ok(take(&self.inner.short_writes, &self.inner.short_errno)
            .err()
            .and_then(|e| e.raw_os_error()))
    }

    pub(crate) fn before_create(&self) -> io::Result<()> {
        take(&self.inner.creates, &self.inner.create_errno)
    }

    pub(crate) async fn before_sync(&self) -> io::Result<()> {
        gate(&self.inner.syncs_paused, &self.inner.syncs_blocked).await;
        take(&self.inner.syncs, &self.inner.sync_errno)
    }
}

async fn gate(paused: &watch::Sender<bool>, blocked: &watch::Sender<u32>) {
    let mut rx = paused.subscribe();
    if *rx.borrow() {
        blocked.send_modify(|b| *b += 1);
        let _ = rx.wait_for(|p| !*p).await;
        blocked.send_modify(|b| *b -= 1);
    }
}

fn take(count: &AtomicU32, errno: &AtomicI32) -> io::Result<()> {
    let hit = count
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if hit {
        Err(io::Error::from_raw_os_error(errno.load(Ordering::SeqCst)))
    } else {
        Ok(())
    }
}
