//! io_uring engine on the caller's Tokio runtime.
//!
//! One ring per open log. Any task submits (a short `std::sync::Mutex` section, never held
//! across an `.await`); a reaper task spawned on the runtime that opened the log waits for the
//! ring fd to become readable through [`AsyncFd`], drains the completion queue and wakes the
//! waiting operations. There is no second runtime and no dedicated thread.
//!
//! `// NOTE:` DESIGN.md suggested one ring per submitting task. One ring per log keeps the number
//! of file descriptors independent of the number of topics (a ring per topic would run into
//! `RLIMIT_NOFILE` at a thousand topics) at the cost of one extra task wake per completion,
//! which group commit amortises over every append in the group.
//!
//! Ownership: an operation's buffer and file live in the driver's slab until the kernel reports
//! completion. A dropped future marks its slot abandoned; the reaper frees it when the completion
//! arrives. The driver's `Drop` waits for anything still in flight before the ring is unmapped.

use std::fs::File;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use io_uring::{IoUring, opcode, squeue, types};
use slab::Slab;
use tokio::io::unix::AsyncFd;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Submission queue size; also the cap on operations in flight.
const RING_ENTRIES: u32 = 256;
/// Safety net: drain the completion queue at least this often even without a readiness event.
const TIMED_DRAIN: Duration = Duration::from_millis(20);

struct RingFd(RawFd);
impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

enum State {
    Pending(Option<Waker>),
    Done(i32),
    Abandoned,
}

/// What the kernel may touch while an operation is in flight.
struct Op {
    state: State,
    buf: Option<Vec<u8>>,
    _file: Arc<File>,
    _permit: OwnedSemaphorePermit,
}

pub(crate) struct Driver {
    // NOTE: declared before `ring` so it is deregistered before the ring's fd is closed.
    fd: AsyncFd<RingFd>,
    ring: Mutex<IoUring>,
    ops: Mutex<Slab<Op>>,
    permits: Arc<Semaphore>,
    stop: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them inconsistent (single assignments).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Driver {
    /// Creates the ring, checks the kernel supports the opcodes we use, registers the ring fd
    /// with the current runtime and spawns the reaper. Any refusal is an error, never a panic.
    pub(crate) fn start() -> io::Result<Arc<Driver>> {
        let ring = IoUring::new(RING_ENTRIES)?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for code in [opcode::Write::CODE, opcode::Fsync::CODE] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("io_uring opcode {code} not supported by this kernel"),
                ));
            }
        }
        let raw = ring.as_raw_fd();
        // AsyncFd panics (instead of failing) on a runtime built without the I/O driver.
        let fd = std::panic::catch_unwind(|| {
            // SAFETY: `raw` is the ring's fd, owned by the `IoUring` stored next to this
            // `AsyncFd` in `Driver`, which drops the `AsyncFd` first (field order).
            unsafe { AsyncFd::register_with_interest(RingFd(raw), tokio::io::Interest::READABLE) }
        })
        .map_err(|_| io::Error::other("the Tokio runtime has no I/O driver enabled"))?
        .map_err(|e| e.into_parts().1)?;
        let driver = Arc::new(Driver {
            ring: Mutex::new(ring),
            ops: Mutex::new(Slab::with_capacity(RING_ENTRIES as usize)),
            fd,
            permits: Arc::new(Semaphore::new(RING_ENTRIES as usize)),
            stop: Notify::new(),
        });
        tokio::spawn(reap(Arc::downgrade(&driver)));
        Ok(driver)
    }

    pub(crate) fn shutdown(&self) {
        self.stop.notify_one();
    }

    async fn submit(
        self: &Arc<Self>,
        file: &Arc<File>,
        buf: Option<Vec<u8>>,
        build: impl FnOnce(Option<&[u8]>) -> squeue::Entry,
    ) -> (Option<Vec<u8>>, io::Result<i32>) {
        let permit = match self.permits.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => return (buf, Err(io::Error::other("io_uring driver closed"))),
        };
        let (key, sqe) = {
            let mut ops = lock(&self.ops);
            let key = ops.insert(Op {
                state: State::Pending(None),
                buf,
                _file: file.clone(),
                _permit: permit,
            });
            // The buffer now lives in the slab; its heap allocation does not move there.
            let sqe = build(ops[key].buf.as_deref()).user_data(key as u64);
            (key, sqe)
        };
        let pushed = {
            let mut ring = lock(&self.ring);
            // SAFETY: the entry points into a buffer and a file kept alive in the slab until its
            // completion is reaped (or until `Drop` has waited for it); the permit bounds the
            // operations in flight by the queue size, so the queue has room after a submit.
            let res = unsafe { ring.submission().push(&sqe) };
            let res = match res {
                Ok(()) => Ok(()),
                Err(_) => ring.submit().and_then(|_| {
                    // SAFETY: as above.
                    unsafe { ring.submission().push(&sqe) }
                        .map_err(|_| io::Error::other("io_uring submission queue full"))
                }),
            };
            res.and_then(|()| ring.submit().map(|_| ()))
        };
        if let Err(e) = pushed {
            // A failed `submit` may still have handed the entry to the kernel: leave the slot
            // to the reaper, which frees it if a completion ever arrives.
            if let Some(op) = lock(&self.ops).get_mut(key)
                && let State::Pending(_) = op.state
            {
                op.state = State::Abandoned;
            }
            return (None, Err(e));
        }
        OpFuture {
            driver: self,
            key,
            done: false,
        }
        .await
    }

    /// Writes all of `buf` at `pos`; with `uncached`, asks for `RWF_DONTCACHE` while the
    /// kernel accepts it (see [`super::Uncached`]).
    pub(crate) async fn write_all_at(
        self: &Arc<Self>,
        file: &Arc<File>,
        pos: u64,
        buf: Vec<u8>,
        uncached: Option<&super::Uncached>,
        extra: i32,
    ) -> (Vec<u8>, io::Result<()>) {
        let fd = file.as_raw_fd();
        let total = buf.len();
        let mut done = 0usize;
        let mut buf = buf;
        let mut flags = extra
            | if uncached.is_some() {
                super::RWF_DONTCACHE
            } else {
                0
            };
        loop {
            let start = done;
            let (back, res) = self
                .submit(file, Some(buf), |b| {
                    let b = b.unwrap_or_default();
                    let rest = b.get(start..).unwrap_or_default();
                    opcode::Write::new(types::Fd(fd), rest.as_ptr(), rest.len() as u32)
                        .offset(pos + start as u64)
                        .rw_flags(flags)
                        .build()
                })
                .await;
            buf = back.unwrap_or_default();
            match res {
                // Refused before anything was written: the filesystem or kernel has no
                // uncached writes. Write it the ordinary way and stop asking.
                Err(e) if flags & super::RWF_DONTCACHE != 0 && super::Uncached::is_refusal(&e) => {
                    if let Some(u) = uncached {
                        u.refused(&e);
                    }
                    flags &= !super::RWF_DONTCACHE;
                }
                Ok(n) if n > 0 => {
                    done += n as usize;
                    if done >= total {
                        return (buf, Ok(()));
                    }
                }
                Ok(_) => return (buf, Err(io::ErrorKind::WriteZero.into())),
                Err(e) => return (buf, Err(e)),
            }
        }
    }

    pub(crate) async fn sync_data(self: &Arc<Self>, file: &Arc<File>) -> io::Result<()> {
        let fd = file.as_raw_fd();
        self.submit(file, None, |_| {
            opcode::Fsync::new(types::Fd(fd))
                .flags(types::FsyncFlags::DATASYNC)
                .build()
        })
        .await
        .1
        .map(|_| ())
    }

    /// Moves completions from the ring to their operations and wakes them.
    fn drain(&self, scratch: &mut Vec<(u64, i32)>) {
        {
            let mut ring = lock(&self.ring);
            scratch.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        }
        if scratch.is_empty() {
            return;
        }
        let mut wake = Vec::new();
        {
            let mut ops = lock(&self.ops);
            for &(key, res) in scratch.iter() {
                let key = key as usize;
                let Some(op) = ops.get_mut(key) else { continue };
                match std::mem::replace(&mut op.state, State::Done(res)) {
                    State::Pending(w) => wake.extend(w),
                    State::Abandoned => drop(ops.remove(key)),
                    State::Done(_) => {}
                }
            }
        }
        scratch.clear();
        wake.into_iter().for_each(Waker::wake);
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Wait for operations the kernel may still be using before their memory goes away.
        let ring = self.ring.get_mut().unwrap_or_else(|p| p.into_inner());
        let ops = self.ops.get_mut().unwrap_or_else(|p| p.into_inner());
        let mut pending = ops
            .iter()
            .filter(|(_, op)| !matches!(op.state, State::Done(_)))
            .count();
        while pending > 0 {
            match ring.submit_and_wait(1) {
                Ok(_) => pending = pending.saturating_sub(ring.completion().count()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // The kernel may still read or write these buffers: leak them rather than
                    // free memory it could touch.
                    tracing::error!(error = %e, pending, "io_uring: cannot wait for operations in flight; leaking their buffers");
                    for (_, op) in ops.iter_mut() {
                        if !matches!(op.state, State::Done(_)) {
                            std::mem::forget(op.buf.take());
                        }
                    }
                    break;
                }
            }
        }
    }
}

struct OpFuture<'a> {
    driver: &'a Driver,
    key: usize,
    done: bool,
}

impl Future for OpFuture<'_> {
    type Output = (Option<Vec<u8>>, io::Result<i32>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut ops = lock(&self.driver.ops);
        let Some(op) = ops.get_mut(self.key) else {
            return Poll::Ready((None, Err(io::Error::other("io_uring operation lost"))));
        };
        match &mut op.state {
            State::Done(res) => {
                let res = *res;
                let op = ops.remove(self.key);
                drop(ops);
                self.done = true;
                let out = if res < 0 {
                    Err(io::Error::from_raw_os_error(-res))
                } else {
                    Ok(res)
                };
                Poll::Ready((op.buf, out))
            }
            State::Pending(w) => {
                match w {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *w = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            State::Abandoned => Poll::Ready((None, Err(io::Error::other("operation abandoned")))),
        }
    }
}

impl Drop for OpFuture<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut ops = lock(&self.driver.ops);
        if let Some(op) = ops.get_mut(self.key) {
            if matches!(op.state, State::Done(_)) {
                ops.remove(self.key);
            } else {
                op.state = State::Abandoned;
            }
        }
    }
}

/// The reaper: waits for completions on the ring fd and dispatches them.
async fn reap(weak: std::sync::Weak<Driver>) {
    let mut scratch = Vec::with_capacity(RING_ENTRIES as usize);
    loop {
        let Some(driver) = weak.upgrade() else { return };
        driver.drain(&mut scratch);
        tokio::select! {
            _ = driver.stop.notified() => {
                driver.drain(&mut scratch);
                return;
            }
            ready = driver.fd.readable() => match ready {
                // Clear first, then drain at the top of the loop: a completion that lands
                // after the clear raises a new readiness event, one before it is drained.
                Ok(mut guard) => guard.clear_ready(),
                Err(e) => {
                    tracing::error!(error = %e, "io_uring readiness failed; polling on a timer");
                    tokio::time::sleep(TIMED_DRAIN).await;
                }
            },
            _ = tokio::time::sleep(TIMED_DRAIN) => {}
        }
    }
}
