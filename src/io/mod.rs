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
use std::sync::Arc;

use crate::config::IoBackend;

#[cfg(target_os = "linux")]
pub(crate) mod uring;

/// The engine an open log uses, plus (feature `failpoints`) its injected faults.
#[derive(Clone)]
pub(crate) struct Io {
    engine: Engine,
    #[cfg(feature = "failpoints")]
    pub faults: Option<crate::FailPoints>,
}

#[derive(Clone)]
enum Engine {
    Blocking,
    #[cfg(target_os = "linux")]
    Uring(Arc<uring::Driver>),
}

impl Io {
    /// Chooses the engine for `wanted`, probing io_uring when it may be used.
    pub(crate) fn select(wanted: IoBackend) -> crate::Result<Io> {
        let engine = Self::engine(wanted)?;
        Ok(Io {
            engine,
            #[cfg(feature = "failpoints")]
            faults: None,
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
        if let Some(f) = &self.faults
            && let Err(e) = f.before_write().await
        {
            return (buf, Err(e));
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
        if let Some(f) = &self.faults {
            f.before_sync().await?;
        }
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

/// Runs blocking filesystem work (create, rename, remove, directory sync) off the runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
}

/// fsyncs a directory, so entries created, renamed or removed in it are durable.
pub(crate) fn sync_dir(dir: &std::path::Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
