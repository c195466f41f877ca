//! The I/O engines: positioned writes and data syncs, behind one interface.
//!
//! * `Engine::Blocking`: `pwrite` / `fdatasync` on Tokio's blocking pool. Portable.
//! * `Engine::Uring` (Linux): one io_uring per open log, its fd registered with the caller's Tokio
//!   reactor through `AsyncFd`; completions are reaped by a task on that same runtime.
//!
//! Both take ownership of the write buffer and hand it back when the operation completes, so a
//! buffer stays alive for as long as the kernel may read it — also when the caller's future is
//! dropped. Reads do not go through here: segments are memory-mapped (see `storage`).
//!
//! `// NOTE:` the engine is an enum, not a trait object, so the hot path has no boxed futures.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::IoBackend;

#[cfg(target_os = "linux")]
pub(crate) mod uring;

/// The engine an open log uses, plus (feature `failpoints`) its injected faults.
#[derive(Clone)]
pub(crate) struct Io {
    engine: Engine,
    /// Writes up to this size are made inline (see `WalrusBuilder::inline_write_max`).
    inline_max: usize,
    /// Which writes skip the page cache (see `WalrusBuilder::uncached_write_min`).
    uncached: Arc<Uncached>,
    pub trace: Trace,
}

#[derive(Clone)]
enum Engine {
    Blocking,
    #[cfg(target_os = "linux")]
    Uring(Arc<uring::Driver>),
}

impl Io {
    /// Chooses the engine for `wanted`, probing io_uring when it may be used.
    pub(crate) fn select(
        wanted: IoBackend,
        inline_max: usize,
        uncached_min: usize,
        trace: Trace,
    ) -> crate::Result<Io> {
        let engine = Self::engine(wanted)?;
        Ok(Io {
            engine,
            inline_max,
            uncached: Arc::new(Uncached::new(uncached_min)),
            trace,
        })
    }

    fn engine(wanted: IoBackend) -> crate::Result<Engine> {
        match wanted {
            IoBackend::Blocking => Ok(Engine::Blocking),
            #[cfg(target_os = "linux")]
            IoBackend::Auto | IoBackend::IoUring => match uring::Driver::start() {
                Ok(d) => Ok(Engine::Uring(d)),
                Err(e) if wanted == IoBackend::Auto => {
                    tracing::info!(error = %e, "io_uring unavailable, using the blocking backend");
                    Ok(Engine::Blocking)
                }
                Err(e) => Err(crate::Error::BackendUnavailable {
                    backend: "io_uring",
                    reason: e.to_string(),
                }),
            },
            #[cfg(not(target_os = "linux"))]
            IoBackend::Auto => Ok(Engine::Blocking),
            #[cfg(not(target_os = "linux"))]
            IoBackend::IoUring => Err(crate::Error::BackendUnavailable {
                backend: "io_uring",
                reason: "only available on Linux".into(),
            }),
        }
    }

    /// The backend in use, for `stats()`.
    pub(crate) fn kind(&self) -> IoBackend {
        match self.engine {
            Engine::Blocking => IoBackend::Blocking,
            #[cfg(target_os = "linux")]
            Engine::Uring(_) => IoBackend::IoUring,
        }
    }

    /// Writes all of `buf` at `pos`. Returns the buffer for reuse.
    pub(crate) async fn write_all_at(
        &self,
        file: &Arc<File>,
        pos: u64,
        buf: Vec<u8>,
    ) -> (Vec<u8>, io::Result<()>) {
        #[cfg(feature = "failpoints")]
        let buf = match &self.trace.faults {
            Some(f) => match self.write_all_at_faults(f, file, pos, buf).await {
                (buf, Ok(None)) => buf,
                (buf, Ok(Some(e)) | Err(e)) => return (buf, Err(e)),
            },
            None => buf,
        };
        let (buf, res) = self.write_raw(file, pos, buf).await;
        if res.is_ok() {
            self.trace.wrote(file, pos, &buf);
        }
        (buf, res)
    }

    /// The injected faults of a write. `Ok(None)`: none, go on and write `buf`. `Ok(Some(e))`:
    /// a short write happened (half of `buf` reached the file) and failed with `e`.
    #[cfg(feature = "failpoints")]
    async fn write_all_at_faults(
        &self,
        f: &crate::FailPoints,
        file: &Arc<File>,
        pos: u64,
        buf: Vec<u8>,
    ) -> (Vec<u8>, io::Result<Option<io::Error>>) {
        match f.before_write().await {
            Ok(None) => (buf, Ok(None)),
            Ok(Some(errno)) => {
                // A short write: half of the bytes reach the file, then the device fails.
                let half = buf.len() / 2;
                let (head, tail) = buf.split_at(half);
                let (tail, head) = (tail.to_vec(), head.to_vec());
                let (mut head, res) = self.write_raw(file, pos, head).await;
                if res.is_ok() {
                    self.trace.wrote(file, pos, &head);
                }
                head.extend_from_slice(&tail);
                (head, Ok(Some(io::Error::from_raw_os_error(errno))))
            }
            Err(e) => (buf, Err(e)),
        }
    }

    async fn write_raw(
        &self,
        file: &Arc<File>,
        pos: u64,
        buf: Vec<u8>,
    ) -> (Vec<u8>, io::Result<()>) {
        let uncached = self.uncached.wanted(buf.len());
        if buf.len() <= self.inline_max {
            let r = pwrite_all(file, &buf, pos, uncached);
            return (buf, r);
        }
        match &self.engine {
            Engine::Blocking => {
                let file = file.clone();
                let len = buf.len();
                let flag = uncached.map(|_| self.uncached.clone());
                let task = tokio::task::spawn_blocking(move || {
                    let r = pwrite_all(&file, &buf, pos, flag.as_deref());
                    (buf, r)
                });
                match task.await {
                    Ok(out) => out,
                    Err(e) => (Vec::with_capacity(len), Err(io::Error::other(e))),
                }
            }
            #[cfg(target_os = "linux")]
            Engine::Uring(d) => d.write_all_at(file, pos, buf, uncached, 0).await,
        }
    }

    /// Writes all of `buf` at `pos` and makes it durable in the same operation, as a write
    /// followed by `fdatasync` would (`RWF_DSYNC`; the blocking engine does both in one trip to
    /// its thread). Never inline: it waits for the device.
    ///
    /// Only for a file whose earlier writes are all durable already: the crash journal records
    /// it as a write followed by a sync of the whole file.
    ///
    /// `// NOTE:` why: a lone `SyncEach` append otherwise goes writer → engine → writer →
    /// durability task → engine → durability task → writer before its caller hears back. One
    /// operation saves the middle hops: one producer's durable 1 KiB appends went from about
    /// 6.4k/s to 7.2k/s here (see ARCHITECTURE.md, "Lone durable appends").
    pub(crate) async fn write_all_at_durable(
        &self,
        file: &Arc<File>,
        pos: u64,
        buf: Vec<u8>,
    ) -> (Vec<u8>, Result<(), DurableWriteError>) {
        // The write half can fail as any write does, the sync half as any sync does.
        #[cfg(feature = "failpoints")]
        let buf = match &self.trace.faults {
            Some(f) => match self.write_all_at_faults(f, file, pos, buf).await {
                (buf, Ok(None)) => buf,
                (buf, Ok(Some(e)) | Err(e)) => return (buf, Err(DurableWriteError::Write(e))),
            },
            None => buf,
        };
        #[cfg(feature = "failpoints")]
        if let Some(f) = &self.trace.faults {
            f.before_segment_sync().await;
            if let Err(e) = f.before_sync().await {
                let (buf, res) = self.write_raw(file, pos, buf).await;
                if res.is_ok() {
                    self.trace.wrote(file, pos, &buf);
                }
                return (
                    buf,
                    Err(res.map_or_else(DurableWriteError::Write, |()| DurableWriteError::Sync(e))),
                );
            }
        }
        let (buf, res) = match &self.engine {
            Engine::Blocking => {
                let file = file.clone();
                let len = buf.len();
                let task = tokio::task::spawn_blocking(move || {
                    let r = match pwrite_all(&file, &buf, pos, None) {
                        Ok(()) => file.sync_data().map_err(DurableWriteError::Sync),
                        Err(e) => Err(DurableWriteError::Write(e)),
                    };
                    (buf, r)
                });
                match task.await {
                    Ok(out) => out,
                    Err(e) => (
                        Vec::with_capacity(len),
                        Err(DurableWriteError::Write(io::Error::other(e))),
                    ),
                }
            }
            #[cfg(target_os = "linux")]
            Engine::Uring(d) => {
                let (buf, res) = d.write_all_at(file, pos, buf, None, libc::RWF_DSYNC).await;
                (buf, res.map_err(DurableWriteError::classify))
            }
        };
        if res.is_ok() {
            self.trace.wrote(file, pos, &buf);
            let token = self.trace.sync_begin(file);
            self.trace.sync_end(token);
        }
        (buf, res)
    }

    /// `fdatasync(2)` on `file`.
    pub(crate) async fn sync_data(&self, file: &Arc<File>) -> io::Result<()> {
        #[cfg(feature = "failpoints")]
        if let Some(f) = &self.trace.faults {
            f.before_sync().await?;
        }
        let token = self.trace.sync_begin(file);
        let res = self.sync_raw(file).await;
        if res.is_ok() {
            self.trace.sync_end(token);
        }
        res
    }

    async fn sync_raw(&self, file: &Arc<File>) -> io::Result<()> {
        match &self.engine {
            Engine::Blocking => {
                let file = file.clone();
                tokio::task::spawn_blocking(move || file.sync_data())
                    .await
                    .map_err(io::Error::other)?
            }
            #[cfg(target_os = "linux")]
            Engine::Uring(d) => d.sync_data(file).await,
        }
    }

    /// Stops background work of the engine (the io_uring reaper).
    pub(crate) fn shutdown(&self) {
        #[cfg(target_os = "linux")]
        if let Engine::Uring(d) = &self.engine {
            d.shutdown();
        }
    }
}

/// How a durable write failed.
#[derive(Debug)]
pub(crate) enum DurableWriteError {
    /// The bytes did not all reach the file.
    Write(io::Error),
    /// They did, but making them durable failed: as after a failed `fdatasync`, nothing
    /// written to the file may be durable.
    Sync(io::Error),
}

impl DurableWriteError {
    /// `RWF_DSYNC` reports one error for both halves; `EIO` is what failed writeback reports.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fn classify(e: io::Error) -> DurableWriteError {
        if e.raw_os_error() == Some(libc::EIO) {
            DurableWriteError::Sync(e)
        } else {
            DurableWriteError::Write(e)
        }
    }
}

/// `RWF_DONTCACHE` (Linux 6.14): a buffered write whose page-cache pages are dropped once
/// written back.
#[cfg(target_os = "linux")]
pub(crate) const RWF_DONTCACHE: i32 = libc::RWF_DONTCACHE;

/// Which writes ask the kernel not to keep their pages cached (`RWF_DONTCACHE`), and whether
/// it still accepts that.
///
/// `// NOTE:` why: on this kind of VM the cost of a large buffered write is mostly getting
/// *fresh* page-cache pages (the host reclaims guest memory the page cache let go of, and
/// faults it back in, zeroed, on the next allocation). Pages a write is told not to keep are
/// freed after writeback and reused by the next write, so large sequential writes stay on a
/// small, warm set of pages. Measured (1 MiB `pwrite`s into a fallocated file, then one
/// `fdatasync`, this 2-core VM): 0.7–1.5 GB/s buffered, 1.0–1.6 GB/s `O_DIRECT`, 2.0–2.2 GB/s
/// uncached; for 4 KiB writes uncached is 4× *slower* (a writeback kick per write), hence the
/// size threshold. Unlike `O_DIRECT` this needs no alignment and stays coherent with the
/// segments' memory maps, which is why it was chosen over direct I/O (see ARCHITECTURE.md).
pub(crate) struct Uncached {
    min: usize,
    ok: AtomicBool,
}

impl Uncached {
    fn new(min: usize) -> Uncached {
        Uncached {
            min,
            ok: AtomicBool::new(cfg!(all(target_os = "linux", not(miri)))),
        }
    }

    /// `Some(self)` when a write of `len` bytes should skip the page cache.
    fn wanted(&self, len: usize) -> Option<&Uncached> {
        (len >= self.min && self.ok.load(Ordering::Relaxed)).then_some(self)
    }

    /// The kernel refuses the flag before writing anything: `EOPNOTSUPP` from kernels before
    /// 6.14 and from filesystems without support (tmpfs, for one); `ENOSYS` without `pwritev2`;
    /// `EINVAL` just in case (a genuine `EINVAL` fails the ordinary write that follows too).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn is_refusal(e: &io::Error) -> bool {
        matches!(
            e.raw_os_error(),
            Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS)
        )
    }

    /// Stops asking, once per log.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn refused(&self, e: &io::Error) {
        if self.ok.swap(false, Ordering::Relaxed) {
            tracing::debug!(error = %e, "uncached writes refused here, writing through the page cache");
        }
    }
}

/// Writes all of `buf` at `pos` on the calling thread, uncached when `uncached` says so.
fn pwrite_all(file: &File, buf: &[u8], pos: u64, uncached: Option<&Uncached>) -> io::Result<()> {
    #[cfg(all(target_os = "linux", not(miri)))]
    if let Some(u) = uncached {
        match pwrite_uncached(file, buf, pos) {
            Err((0, e)) if Uncached::is_refusal(&e) => u.refused(&e),
            Err((_, e)) => return Err(e),
            Ok(()) => return Ok(()),
        }
    }
    #[cfg(not(all(target_os = "linux", not(miri))))]
    let _ = uncached;
    use std::os::unix::fs::FileExt;
    file.write_all_at(buf, pos)
}

/// `pwritev2(.., RWF_DONTCACHE)` until all of `buf` is written. An error comes with the number
/// of bytes written before it.
#[cfg(all(target_os = "linux", not(miri)))]
fn pwrite_uncached(file: &File, buf: &[u8], pos: u64) -> Result<(), (usize, io::Error)> {
    use std::os::fd::AsRawFd;
    let mut done = 0;
    while done < buf.len() {
        let rest = &buf[done..];
        let iov = libc::iovec {
            iov_base: rest.as_ptr() as *mut libc::c_void,
            iov_len: rest.len(),
        };
        let at = libc::off_t::try_from(pos + done as u64)
            .map_err(|_| (done, io::Error::from(io::ErrorKind::InvalidInput)))?;
        // SAFETY: `iov` describes `rest`, which is borrowed for the whole call; the kernel only
        // reads from it. `file` keeps the descriptor open. Buys the uncached path measured above.
        let n = unsafe { libc::pwritev2(file.as_raw_fd(), &iov, 1, at, RWF_DONTCACHE) };
        match n {
            n if n > 0 => done += n as usize,
            0 => return Err((done, io::ErrorKind::WriteZero.into())),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err((done, e));
                }
            }
        }
    }
    Ok(())
}

// `// NOTE:` on inline writes (`Io::inline_max`): a write into a fresh (preallocated,
// unwritten) extent only copies into the page cache, microseconds for a small write. Handing it
// to a thread costs more than the copy: the blocking pool's wake-up, or for io_uring an io-wq
// worker, since ext4 cannot do buffered writes without blocking (`RWF_NOWAIT` is refused) and
// io_uring punts every such write. Measured with `cargo bench --bench throughput`: one
// producer's 1 KiB appends went from 82k/s to 171k/s, 64 producers on their own topics from
// 134k/s to 328k/s. Larger writes and every fsync still go to the engine. A buffered write can
// still sleep under dirty-page throttling; `inline_write_max(0)` avoids that.

/// Runs blocking filesystem work (create, rename, remove, directory sync) off the runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
}

/// Writes all of `bytes` at `pos` of `file`, on the calling thread, and reports it to `trace`.
pub(crate) fn write_at(trace: &Trace, file: &File, pos: u64, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(bytes, pos)?;
    trace.wrote(file, pos, bytes);
    Ok(())
}

/// `fdatasync(2)` on `file`, on the calling thread, reported to `trace`.
pub(crate) fn sync_file(trace: &Trace, file: &File) -> io::Result<()> {
    let token = trace.sync_begin(file);
    file.sync_data()?;
    trace.sync_end(token);
    Ok(())
}

/// Replaces `dir/name` with a file holding `bytes`, atomically and durably: `name.tmp` is
/// written and synced, renamed over `name`, and the directory synced. A failure before the
/// rename removes the temp file. Returns the new file, open for reading and writing.
pub(crate) fn replace_file(
    trace: &Trace,
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> io::Result<File> {
    let tmp = dir.join(format!("{name}.tmp"));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    trace.created(&tmp, &f);
    let fill = || -> io::Result<()> {
        trace.before_create()?;
        write_at(trace, &f, 0, bytes)?;
        sync_file(trace, &f)
    };
    if let Err(e) = fill() {
        // A half-written temp file is never read, but would sit there until the next attempt.
        if std::fs::remove_file(&tmp).is_ok() {
            trace.removed(&tmp);
        }
        return Err(e);
    }
    let path = dir.join(name);
    std::fs::rename(&tmp, &path)?;
    trace.renamed(&tmp, &path);
    sync_dir(trace, dir)?;
    Ok(f)
}

/// fsyncs a directory, so entries created, renamed or removed in it are durable.
pub(crate) fn sync_dir(trace: &Trace, dir: &Path) -> io::Result<()> {
    let token = trace.dir_sync_begin(dir);
    File::open(dir)?.sync_all()?;
    trace.dir_sync_end(token);
    Ok(())
}

/// Where tests see what the engine does to its files (feature `failpoints`): injected faults
/// on file creation and, for crash simulation, a [`CrashJournal`](crate::CrashJournal) of every
/// effect. Without the feature it is empty and every method compiles to nothing.
#[derive(Clone, Default)]
pub(crate) struct Trace {
    #[cfg(feature = "failpoints")]
    pub faults: Option<crate::FailPoints>,
}

#[cfg(feature = "failpoints")]
macro_rules! journal {
    ($self:ident, $j:ident => $body:expr) => {
        if let Some($j) = $self.faults.as_ref().and_then(|f| f.journal()) {
            $body;
        }
    };
}

#[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
impl Trace {
    #[cfg(feature = "failpoints")]
    pub(crate) fn new(faults: Option<crate::FailPoints>) -> Trace {
        Trace { faults }
    }

    /// Before creating a file: an injected failure, if any.
    pub(crate) fn before_create(&self) -> io::Result<()> {
        #[cfg(feature = "failpoints")]
        if let Some(f) = &self.faults {
            return f.before_create();
        }
        Ok(())
    }

    pub(crate) fn created(&self, path: &Path, file: &File) {
        #[cfg(feature = "failpoints")]
        journal!(self, j => j.created(path, file));
    }

    pub(crate) fn extended(&self, file: &File, len: u64) {
        #[cfg(feature = "failpoints")]
        journal!(self, j => j.extended(file, len));
    }

    pub(crate) fn set_len(&self, file: &File, len: u64) {
        #[cfg(feature = "failpoints")]
        journal!(self, j => j.set_len(file, len));
    }

    pub(crate) fn wrote(&self, file: &File, pos: u64, data: &[u8]) {
        #[cfg(feature = "failpoints")]
        journal!(self, j => j.wrote(file, pos, data));
    }

    pub(crate) fn sync_begin(&self, file: &File) -> Option<u64> {
        #[cfg(feature = "failpoints")]
        if let Some(j) = self.faults.as_ref().and_then(|f| f.journal()) {
            return j.sync_begin(file);
        }
        None
    }

    pub(crate) fn sync_end(&self, token: Option<u64>) {
        #[cfg(feature = "failpoints")]
        if let Some(t) = token {
            journal!(self, j => j.sync_end(t));
        }
    }

    pub(crate) fn dir_sync_begin(&self, dir: &Path) -> Option<u64> {
        #[cfg(feature = "failpoints")]
        if let Some(j) = self.faults.as_ref().and_then(|f| f.journal()) {
            return j.dir_sync_begin(dir);
        }
        None
    }

    pub(crate) fn dir_sync_end(&self, token: Option<u64>) {
        #[cfg(feature = "failpoints")]
        if let Some(t) = token {
            journal!(self, j => j.dir_sync_end(t));
        }
    }

    pub(crate) fn renamed(&self, from: &Path, to: &Path) {
        #[cfg(feature = "failpoints")]
        journal!(self, j => j.renamed(from, to));
    }

    pub(crate) fn removed(&self, path: &Path) {
        #[cfg(feature = "failpoints")]
        journal!(self, j => j.removed(path));
    }
}
