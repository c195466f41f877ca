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

use crate::config::IoBackend;

#[cfg(target_os = "linux")]
pub(crate) mod uring;

/// The engine an open log uses, plus (feature `failpoints`) its injected faults.
#[derive(Clone)]
pub(crate) struct Io {
    engine: Engine,
    /// Writes up to this size are made inline (see `WalrusBuilder::inline_write_max`).
    inline_max: usize,
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
    pub(crate) fn select(wanted: IoBackend, inline_max: usize, trace: Trace) -> crate::Result<Io> {
        let engine = Self::engine(wanted)?;
        Ok(Io {
            engine,
            inline_max,
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
        if let Some(f) = &self.trace.faults {
            match f.before_write().await {
                Ok(None) => {}
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
                    return (head, Err(io::Error::from_raw_os_error(errno)));
                }
                Err(e) => return (buf, Err(e)),
            }
        }
        let (buf, res) = self.write_raw(file, pos, buf).await;
        if res.is_ok() {
            self.trace.wrote(file, pos, &buf);
        }
        (buf, res)
    }

    async fn write_raw(
        &self,
        file: &Arc<File>,
        pos: u64,
        buf: Vec<u8>,
    ) -> (Vec<u8>, io::Result<()>) {
        if buf.len() <= self.inline_max {
            use std::os::unix::fs::FileExt;
            let r = file.write_all_at(&buf, pos);
            return (buf, r);
        }
        match &self.engine {
            Engine::Blocking => {
                let file = file.clone();
                let len = buf.len();
                let task = tokio::task::spawn_blocking(move || {
                    use std::os::unix::fs::FileExt;
                    let r = file.write_all_at(&buf, pos);
                    (buf, r)
                });
                match task.await {
                    Ok(out) => out,
                    Err(e) => (Vec::with_capacity(len), Err(io::Error::other(e))),
                }
            }
            #[cfg(target_os = "linux")]
            Engine::Uring(d) => d.write_all_at(file, pos, buf).await,
        }
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
