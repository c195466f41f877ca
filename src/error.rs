//! The crate's error type.

use std::io;
use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in walrus-async.
///
/// Each variant names the value or path at fault, so the message alone tells what to fix.
/// Input errors (`InvalidTopic`, `EntryTooLarge`, …) are returned before anything is written:
/// the log is unchanged and keeps working.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O error.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),

    /// The data directory cannot be used: it is a file, cannot be created, or is not writable.
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },

    /// The log was closed; it takes no more calls (except `close`, `stats`).
    #[error("the log is closed")]
    Closed,

    /// A topic name outside the rules (1..=255 bytes of UTF-8 without NUL).
    #[error("invalid topic name {topic:?}: {reason}")]
    InvalidTopic {
        /// The name as given (lossy for display).
        topic: String,
        /// Which rule it broke.
        reason: &'static str,
    },

    /// An instance key that cannot name a namespace directory.
    #[error("invalid instance key {key:?}: {reason}")]
    InvalidKey {
        /// The key as given.
        key: String,
        /// Which rule it broke.
        reason: &'static str,
    },

    /// A consumer name outside the rules (1..=255 bytes of UTF-8 without NUL).
    #[error("invalid consumer name {consumer:?}: {reason}")]
    InvalidConsumer {
        /// The name as given.
        consumer: String,
        /// Which rule it broke.
        reason: &'static str,
    },

    /// An acknowledgement that cannot be right; nothing changed.
    #[error("cannot acknowledge offset {offset}: {reason}")]
    InvalidAck {
        /// The offset given.
        offset: u64,
        /// Why it was refused.
        reason: &'static str,
    },

    /// A builder setting out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// One entry is larger than `max_entry_bytes`.
    #[error("entry of {size} bytes exceeds max_entry_bytes = {max}")]
    EntryTooLarge {
        /// Bytes in the entry.
        size: usize,
        /// The configured limit.
        max: usize,
    },

    /// A batch's payload (or entry count) is larger than its limit.
    #[error("batch of {size} exceeds its limit of {max} (max_batch_bytes / max_batch_entries)")]
    BatchTooLarge {
        /// Payload bytes (or entries) in the batch.
        size: usize,
        /// The configured limit.
        max: usize,
    },

    /// The cursor of `(topic, consumer)` is held by a live reader.
    #[error("consumer {consumer:?} of topic {topic:?} is busy (held by a live reader)")]
    ConsumerBusy {
        /// The topic.
        topic: String,
        /// The consumer (`""` is the default consumer).
        consumer: String,
    },

    /// Another handle (in this or another process) has the namespace directory open.
    #[error("the log directory {path} is locked by another open handle")]
    Locked {
        /// The namespace directory.
        path: PathBuf,
    },

    /// The requested offset is no longer retained: deleted by retention, or lost to damage.
    #[error("offset {requested} is no longer retained; the oldest retained offset is {oldest}")]
    Truncated {
        /// The offset asked for.
        requested: u64,
        /// The oldest offset still on disk.
        oldest: u64,
    },

    /// Damage on disk that recovery could not repair without guessing, so the log refuses to
    /// open: for example a lost or damaged `LOG_ID` file with segments of several logs in the
    /// directory. Damage recovery can step over (torn tails, bad frames) is logged and counted
    /// in [`Stats::checksum_failures`](crate::Stats::checksum_failures) instead.
    #[error("corrupt data in {path} at byte {position}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte position in the file.
        position: u64,
        /// What is wrong.
        reason: String,
    },

    /// The directory holds segment files of an on-disk format version this crate does not
    /// read (an older walrus-async wrote them). Nothing in the directory was changed: open it
    /// with the version that wrote it, and move its data over through the API if it is still
    /// needed.
    #[error(
        "{path} is in on-disk format version {found}; this walrus-async reads version {supported} only (nothing in the directory was changed)"
    )]
    UnsupportedFormat {
        /// The first segment file found in that format.
        path: PathBuf,
        /// The version the file carries.
        found: u16,
        /// The version this crate reads and writes.
        supported: u16,
    },

    /// The directory holds no log: no segment file, no `LOG_ID`, `LOCK` or `checkpoints` file
    /// (or it does not exist). Returned by the read-only [`inspect`](crate::inspect) functions,
    /// which never create a log; [`WalrusBuilder::open`](crate::WalrusBuilder::open) creates
    /// one instead.
    #[error("{path} holds no walrus-async log (wrong directory, or a missing --key?)")]
    NotALog {
        /// The directory looked at.
        path: PathBuf,
    },

    /// An fsync (fdatasync) failed. Data written to `path` since its last successful sync may be
    /// lost, so the file takes no more appends; later syncs keep reporting the failure rather
    /// than pretend the lost data is durable.
    #[error(
        "fsync of {path} failed ({reason}); unsynced data in it may be lost and the file takes no more appends"
    )]
    SyncFailed {
        /// The file whose sync failed.
        path: PathBuf,
        /// What the operating system said.
        reason: String,
    },

    /// The Tokio runtime that opened the log has shut down, and with it the log's background
    /// tasks (writers, group commit, retention): the call was not carried out. Nothing was
    /// acknowledged with less durability than promised. Open the log again from a running
    /// runtime (a handle kept in a `static` across `#[tokio::test]`s meets this).
    #[error(
        "the Tokio runtime that opened this log has shut down; open the log again from a running runtime"
    )]
    RuntimeGone,

    /// The I/O backend asked for cannot run here.
    #[error("I/O backend {backend} is unavailable: {reason}")]
    BackendUnavailable {
        /// The backend's name.
        backend: &'static str,
        /// Why.
        reason: String,
    },
}

impl Error {
    /// A copy of this error for a second caller hit by the same failure (`io::Error` is not
    /// `Clone`, so the kind and message are carried over).
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Io(e) => Error::Io(match e.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(e.kind(), e.to_string()),
            }),
            Error::SyncFailed { path, reason } => Error::SyncFailed {
                path: path.clone(),
                reason: reason.clone(),
            },
            Error::Closed => Error::Closed,
            Error::RuntimeGone => Error::RuntimeGone,
            other => Error::Io(io::Error::other(other.to_string())),
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let e = match e {
            Error::Io(inner) => return inner,
            other => other,
        };
        let kind = match &e {
            Error::Io(_) => io::ErrorKind::Other,
            Error::DataDir { source, .. } => source.kind(),
            Error::Closed | Error::RuntimeGone => io::ErrorKind::BrokenPipe,
            Error::InvalidTopic { .. }
            | Error::InvalidKey { .. }
            | Error::InvalidConsumer { .. }
            | Error::InvalidAck { .. }
            | Error::InvalidConfig(_)
            | Error::EntryTooLarge { .. }
            | Error::BatchTooLarge { .. } => io::ErrorKind::InvalidInput,
            Error::ConsumerBusy { .. } | Error::Locked { .. } => io::ErrorKind::WouldBlock,
            Error::Truncated { .. } | Error::NotALog { .. } => io::ErrorKind::NotFound,
            Error::Corrupt { .. } | Error::UnsupportedFormat { .. } => io::ErrorKind::InvalidData,
            Error::SyncFailed { .. } | Error::BackendUnavailable { .. } => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}
