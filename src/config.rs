//! Settings: the builder, read consistency, fsync schedule and I/O backend choice.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// When a consumer's read position (checkpoint) is made durable.
///
/// | mode | `ack` returns | after a crash |
/// |---|---|---|
/// | `StrictlyAtOnce` | after the checkpoint is on stable storage | nothing acknowledged is delivered again |
/// | `AtLeastOnce { persist_every: n }` | at once; persisted every `n` entries, on stream drop and on `close` | at most the last `n` consumed entries are delivered again |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReadConsistency {
    /// Every checkpoint is durable before the call that made it returns.
    #[default]
    StrictlyAtOnce,
    /// Checkpoints are persisted once they have advanced by `persist_every` entries (`0` acts
    /// as `1`), when a stream is dropped, and on `close`.
    AtLeastOnce {
        /// How many consumed entries may be redelivered after a crash.
        persist_every: u32,
    },
}

/// When appended data is made durable (fdatasync).
///
/// In every mode an acknowledged entry survives the process being killed: it is in the
/// operating system's page cache. The schedule decides when it also survives a power failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncSchedule {
    /// A background task syncs dirty files every `n` milliseconds (`0` acts as 1; at most one
    /// day, 86,400,000). `append` resolves once the entry is handed to the OS.
    Milliseconds(u64),
    /// `append` resolves only after the entry is on stable storage. Concurrent appends, across
    /// all topics, share one fsync per file (group commit).
    SyncEach,
    /// Never sync in the background; data is durable when the OS writes it back, or on
    /// [`Walrus::sync`](crate::Walrus::sync) / [`Walrus::close`](crate::Walrus::close).
    NoFsync,
}

impl Default for FsyncSchedule {
    fn default() -> Self {
        FsyncSchedule::Milliseconds(200)
    }
}

/// Which I/O engine performs writes and syncs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IoBackend {
    /// io_uring where the kernel allows it, else `Blocking` (an `info` event says which).
    #[default]
    Auto,
    /// io_uring on the caller's runtime; opening fails with
    /// [`Error::BackendUnavailable`] when the kernel refuses it.
    IoUring,
    /// `pwrite`/`fdatasync` on Tokio's blocking thread pool. Works everywhere.
    Blocking,
}

impl IoBackend {
    /// The name used in logs and in `WALRUS_IO_BACKEND`.
    pub fn name(self) -> &'static str {
        match self {
            IoBackend::Auto => "auto",
            IoBackend::IoUring => "io_uring",
            IoBackend::Blocking => "blocking",
        }
    }

    fn from_env() -> Option<IoBackend> {
        let v = std::env::var("WALRUS_IO_BACKEND").ok()?;
        match v.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Some(IoBackend::Auto),
            "io_uring" | "uring" | "io-uring" => Some(IoBackend::IoUring),
            "blocking" => Some(IoBackend::Blocking),
            other => {
                tracing::warn!(value = other, "ignoring unknown WALRUS_IO_BACKEND");
                None
            }
        }
    }
}

/// Default `max_entry_bytes`: 16 MiB.
pub const DEFAULT_MAX_ENTRY_BYTES: usize = 16 << 20;
/// Default `max_batch_bytes`: 64 MiB.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 64 << 20;
/// Default `max_batch_entries`: 1 Mi entries.
pub const DEFAULT_MAX_BATCH_ENTRIES: usize = 1 << 20;
/// Default `queue_capacity`: 1024 requests (the log's writer queue).
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;
/// Default `segment_bytes`: 64 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// Smallest accepted `segment_bytes`: 64 KiB.
pub const MIN_SEGMENT_BYTES: u64 = 64 << 10;
/// Default `block_bytes` of format version 2. Format 3 has no blocks.
#[deprecated(
    since = "0.2.0",
    note = "format version 3 has no blocks: every topic appends to one shared commit stream"
)]
pub const DEFAULT_BLOCK_BYTES: u64 = 1 << 20;
/// Default `inline_write_max`: 256 KiB.
pub const DEFAULT_INLINE_WRITE_MAX: usize = 256 << 10;
/// Default `uncached_write_min`: 256 KiB.
pub const DEFAULT_UNCACHED_WRITE_MIN: usize = 256 << 10;
/// Largest accepted `queue_capacity`: 1 Mi requests (Tokio's channels hold fewer than
/// `usize::MAX >> 3`, and a queue this long already buffers seconds of appends).
const MAX_QUEUE_CAPACITY: usize = 1 << 20;
/// Largest accepted `FsyncSchedule::Milliseconds` period: one day.
const MAX_SYNC_PERIOD_MS: u64 = 86_400_000;
/// Largest accepted `segment_bytes`: 1 TiB.
const MAX_SEGMENT_BYTES: u64 = 1 << 40;

/// Builder for [`Walrus`](crate::Walrus); start with [`Walrus::builder`](crate::Walrus::builder).
///
/// ```no_run
/// use walrus_async::{FsyncSchedule, ReadConsistency, Walrus};
/// # async fn demo() -> walrus_async::Result<()> {
/// let wal = Walrus::builder()
///     .data_dir("/var/lib/app/wal")
///     .key("tenant-123")
///     .consistency(ReadConsistency::AtLeastOnce { persist_every: 1_000 })
///     .fsync(FsyncSchedule::SyncEach)
///     .open()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct WalrusBuilder {
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) key: Option<String>,
    pub(crate) consistency: ReadConsistency,
    pub(crate) fsync: FsyncSchedule,
    pub(crate) io_backend: Option<IoBackend>,
    pub(crate) max_entry_bytes: Option<usize>,
    pub(crate) max_batch_bytes: Option<usize>,
    pub(crate) max_batch_entries: Option<usize>,
    pub(crate) queue_capacity: Option<usize>,
    pub(crate) inline_write_max: Option<usize>,
    pub(crate) uncached_write_min: Option<usize>,
    pub(crate) segment_bytes: Option<u64>,
    pub(crate) retention_bytes: Option<u64>,
    pub(crate) retention_age: Option<std::time::Duration>,
    #[cfg(feature = "failpoints")]
    pub(crate) fail_points: Option<crate::FailPoints>,
}

/// The settings after defaults and environment variables are applied and checked.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub data_dir: PathBuf,
    pub key: Option<String>,
    pub consistency: ReadConsistency,
    pub fsync: FsyncSchedule,
    pub io_backend: IoBackend,
    pub max_entry_bytes: usize,
    pub max_batch_bytes: usize,
    pub max_batch_entries: usize,
    pub queue_capacity: usize,
    pub inline_write_max: usize,
    pub uncached_write_min: usize,
    pub segment_bytes: u64,
    pub retention_bytes: Option<u64>,
    pub retention_age: Option<std::time::Duration>,
    #[cfg(feature = "failpoints")]
    pub fail_points: Option<crate::FailPoints>,
}

impl WalrusBuilder {
    /// Directory that holds the log. Default: `$WALRUS_DATA_DIR`, else `./wal_files`.
    /// Created when missing.
    pub fn data_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.data_dir = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Namespace: the log lives in its own sub-directory of the data directory, with its own
    /// lock, so several instances can share one data directory. Default:
    /// `$WALRUS_INSTANCE_KEY`, else none. An empty key means none.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// When consumer checkpoints are persisted. Default: [`ReadConsistency::StrictlyAtOnce`].
    pub fn consistency(mut self, c: ReadConsistency) -> Self {
        self.consistency = c;
        self
    }

    /// When appends are made durable. Default: [`FsyncSchedule::Milliseconds`]`(200)`.
    pub fn fsync(mut self, f: FsyncSchedule) -> Self {
        self.fsync = f;
        self
    }

    /// I/O engine. Default: `$WALRUS_IO_BACKEND` (`auto`, `io_uring`, `blocking`), else
    /// [`IoBackend::Auto`].
    pub fn io_backend(mut self, b: IoBackend) -> Self {
        self.io_backend = Some(b);
        self
    }

    /// Largest single entry, inclusive. Default: 16 MiB. Larger entries get
    /// [`Error::EntryTooLarge`]. Entries larger than a segment are fine (that segment is made larger).
    pub fn max_entry_bytes(mut self, n: usize) -> Self {
        self.max_entry_bytes = Some(n);
        self
    }

    /// Largest total payload of one `append_batch`, inclusive. Default: 64 MiB; at most 4 GiB
    /// minus framing (a batch is one frame).
    pub fn max_batch_bytes(mut self, n: usize) -> Self {
        self.max_batch_bytes = Some(n);
        self
    }

    /// Most entries in one `append_batch`, inclusive. Default: 1 Mi.
    pub fn max_batch_entries(mut self, n: usize) -> Self {
        self.max_batch_entries = Some(n);
        self
    }

    /// Capacity of the log's writer queue (one for all topics); a full queue makes `append`
    /// wait (backpressure). It also bounds how many requests one group commit takes. Default: 1024; at most 1 Mi
    /// (more is [`Error::InvalidConfig`]).
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = Some(n);
        self
    }

    /// Writes of up to this many bytes are made by the log's writer task itself, with one
    /// `pwrite` into the page cache, instead of going through the I/O backend; larger writes and
    /// every fsync always use the backend. Default: 256 KiB.
    ///
    /// A copy into the page cache takes microseconds, less than handing the write to a thread
    /// (io_uring punts buffered ext4 writes to kernel worker threads). But a buffered write can
    /// sleep when the kernel throttles writers with too many dirty pages; `0` sends every write
    /// through the backend so no runtime thread ever waits on one.
    pub fn inline_write_max(mut self, bytes: usize) -> Self {
        self.inline_write_max = Some(bytes);
        self
    }

    /// Writes of at least this many bytes (one group commit's write: a large batch, or many
    /// appends coalesced) ask the kernel not to keep their pages in the page cache once they
    /// are written back (`RWF_DONTCACHE`, Linux 6.14 and later, on filesystems that support
    /// it, ext4 and xfs among them). Default: 256 KiB. `usize::MAX` turns it off.
    ///
    /// Large sequential writes then reuse a small set of page-cache pages instead of taking
    /// fresh ones for every byte written, which is faster where fresh pages are costly (VMs
    /// whose host reclaims guest memory), and they no longer push the service's other data
    /// out of the cache. The cost: a consumer far enough behind such writes reads them back
    /// from disk rather than from memory. The data is the same either way; where the kernel
    /// or filesystem refuses the flag, writes go through the page cache as usual, silently.
    ///
    /// ```
    /// # async fn demo() -> walrus_async::Result<()> {
    /// let dir = tempfile::tempdir()?;
    /// let wal = walrus_async::Walrus::builder()
    ///     .data_dir(dir.path())
    ///     .uncached_write_min(usize::MAX) // keep everything cached
    ///     .open()
    ///     .await?;
    /// # wal.close().await }
    /// ```
    pub fn uncached_write_min(mut self, bytes: usize) -> Self {
        self.uncached_write_min = Some(bytes);
        self
    }

    /// Size of one segment file. Default: 64 MiB; any value down to 64 KiB works (rounded up to
    /// 4 KiB). Larger files mean fewer files; smaller ones let retention reclaim sooner.
    pub fn segment_bytes(mut self, n: u64) -> Self {
        self.segment_bytes = Some(n);
        self
    }

    /// Had a meaning in format version 2 (the unit a segment was shared out in among
    /// topics); ignored since format 3, where the frames of all topics follow each other in
    /// one commit stream and an idle topic reserves no space.
    #[deprecated(
        since = "0.2.0",
        note = "format version 3 has no blocks: every topic appends to one shared commit stream; this setting is ignored"
    )]
    pub fn block_bytes(self, n: u64) -> Self {
        let _ = n;
        self
    }

    /// Injects faults into this log's I/O (tests only; cargo feature `failpoints`).
    #[cfg(feature = "failpoints")]
    pub fn fail_points(mut self, f: crate::FailPoints) -> Self {
        self.fail_points = Some(f);
        self
    }

    /// Caps the disk the log may use: when its segment files add up to more than `bytes`, the
    /// oldest sealed segments are deleted even if consumers have not read them (they get
    /// [`Error::Truncated`] once). Default: no cap; data stays until every consumer passed it.
    pub fn retention_bytes(mut self, bytes: u64) -> Self {
        self.retention_bytes = Some(bytes);
        self
    }

    /// Deletes sealed segments whose newest entry was appended more than `age` ago (by
    /// [`Entry::timestamp`](crate::Entry::timestamp)), even if consumers have not read them
    /// (they get [`Error::Truncated`] once). Default: no limit.
    pub fn retention_age(mut self, age: std::time::Duration) -> Self {
        self.retention_age = Some(age);
        self
    }

    pub(crate) fn resolve(self) -> Result<Config> {
        let data_dir = self
            .data_dir
            .or_else(|| std::env::var_os("WALRUS_DATA_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("./wal_files"));
        let key = self
            .key
            .or_else(|| std::env::var("WALRUS_INSTANCE_KEY").ok())
            .filter(|k| !k.is_empty());
        let io_backend = self
            .io_backend
            .or_else(IoBackend::from_env)
            .unwrap_or_default();
        let bad = |msg: String| Err(Error::InvalidConfig(msg));
        let max_entry_bytes = self.max_entry_bytes.unwrap_or(DEFAULT_MAX_ENTRY_BYTES);
        let max_batch_bytes = self.max_batch_bytes.unwrap_or(DEFAULT_MAX_BATCH_BYTES);
        let max_batch_entries = self.max_batch_entries.unwrap_or(DEFAULT_MAX_BATCH_ENTRIES);
        // One batch is one frame with a u32 payload length, which also holds a length prefix
        // (at most 5 bytes) per entry.
        let frame_cap = u32::MAX as u64;
        if max_batch_entries == 0 || max_batch_entries as u64 > (1 << 24) {
            return bad(format!(
                "max_batch_entries must be in 1..=16777216, got {max_batch_entries}"
            ));
        }
        if (max_batch_bytes as u64).saturating_add(5 * max_batch_entries as u64) > frame_cap
            || (max_entry_bytes as u64).saturating_add(5) > frame_cap
        {
            return bad(format!(
                "max_batch_bytes + 5 * max_batch_entries and max_entry_bytes must fit in a frame of {frame_cap} bytes"
            ));
        }
        let queue_capacity = self.queue_capacity.unwrap_or(DEFAULT_QUEUE_CAPACITY);
        if !(1..=MAX_QUEUE_CAPACITY).contains(&queue_capacity) {
            return bad(format!(
                "queue_capacity must be in 1..={MAX_QUEUE_CAPACITY}, got {queue_capacity}"
            ));
        }
        if let FsyncSchedule::Milliseconds(n) = self.fsync
            && n > MAX_SYNC_PERIOD_MS
        {
            return bad(format!(
                "fsync Milliseconds(n) must be in 0..={MAX_SYNC_PERIOD_MS} (one day), got {n}"
            ));
        }
        let segment_bytes = self.segment_bytes.unwrap_or(DEFAULT_SEGMENT_BYTES);
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&segment_bytes) {
            return bad(format!(
                "segment_bytes must be in {MIN_SEGMENT_BYTES}..={MAX_SEGMENT_BYTES} (1 TiB), got {segment_bytes}"
            ));
        }
        let page = crate::format::PAGE;
        let segment_bytes = segment_bytes.div_ceil(page) * page;
        Ok(Config {
            data_dir,
            key,
            consistency: self.consistency,
            fsync: self.fsync,
            io_backend,
            max_entry_bytes,
            max_batch_bytes,
            max_batch_entries,
            queue_capacity,
            inline_write_max: self.inline_write_max.unwrap_or(DEFAULT_INLINE_WRITE_MAX),
            uncached_write_min: self
                .uncached_write_min
                .unwrap_or(DEFAULT_UNCACHED_WRITE_MIN),
            segment_bytes,
            retention_bytes: self.retention_bytes,
            retention_age: self.retention_age,
            #[cfg(feature = "failpoints")]
            fail_points: self.fail_points,
        })
    }
}
