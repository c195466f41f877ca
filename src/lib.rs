//! # walrus-async
//!
//! An async-first, Tokio-native write-ahead log: topics you append to and read from, that
//! survive crashes with nothing acknowledged lost.
//!
//! * **Appends are awaited.** [`Walrus::append`] and [`Walrus::append_batch`] resolve once the
//!   entry is as durable as the [`FsyncSchedule`] promises. One writer task per log, fed by a
//!   bounded queue, takes every append waiting, of every topic, and writes them as one run of
//!   frames at the end of a shared commit stream with one I/O submission and, under
//!   [`FsyncSchedule::SyncEach`], one `fdatasync` (group commit). An idle topic costs a few
//!   hundred bytes of memory and no disk.
//! * **io_uring on your runtime.** On Linux, writes and syncs go through io_uring, with the
//!   ring registered on the Tokio reactor that opened the log: no second runtime, no extra
//!   thread. Where io_uring is refused, a blocking-pool backend takes over ([`IoBackend`]).
//! * **Reads are zero copy.** Segment files are memory-mapped; [`Entry::data`] is a `Bytes`
//!   view of the mapping. Default-consumer polling reads ([`Walrus::read_next`],
//!   [`Walrus::batch_read`]) persist their checkpoint per [`ReadConsistency`].
//! * **Entries carry their time.** [`Entry::timestamp`], [`Walrus::offset_for_time`] and
//!   [`TopicStream::seek_time`] find the first entry at or after a time.
//! * **Recovery is checksummed.** Every frame carries two CRC32s; opening cuts torn tails,
//!   steps over damage to the next frame that verifies, and never panics on what it reads.
//!
//! ```
//! use walrus_async::{FsyncSchedule, Walrus};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> walrus_async::Result<()> {
//! # let tmp = tempfile::tempdir()?;
//! let wal = Walrus::builder()
//!     .data_dir(tmp.path())
//!     .fsync(FsyncSchedule::SyncEach)
//!     .open()
//!     .await?;
//! let first = wal.append("orders", "order #1").await?;
//! let more = wal.append_batch("orders", ["order #2", "order #3"]).await?;
//! assert_eq!((first, more), (0, 1..3));
//!
//! let entry = wal.read_next("orders", true).await?.expect("an entry");
//! assert_eq!(&entry.data[..], b"order #1");
//! assert_eq!(wal.entry_count("orders"), 2);
//! wal.close().await?;
//! # Ok(()) }
//! ```
//!
//! ## Runtime requirements
//! The log runs all its tasks on the Tokio runtime that calls [`WalrusBuilder::open`], whichever
//! runtime later calls come from; that runtime needs the I/O and time drivers (`#[tokio::main]`
//! and `#[tokio::test]` enable both). It works on multi-thread and current-thread runtimes. If
//! that runtime shuts down before [`Walrus::close`], calls that need the log's tasks fail at
//! once with [`Error::RuntimeGone`] (reads of what is there still work) and the directory lock
//! is let go.
//!
//! ## Cancellation
//! Every async method can be dropped at any `.await`: each documents what that leaves, and
//! none leaves the log stuck or promises more than it did. Administrative calls (`close`,
//! `reclaim`, `remove_consumer`, `reset_consumer`) finish their work as tasks of the log once
//! polled.
//!
//! See `docs/ARCHITECTURE.md` and `docs/FORMAT.md` in the repository for the design and the
//! on-disk format.

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod checkpoint;
mod config;
mod consumer;
mod counters;
#[cfg(feature = "failpoints")]
mod crash;
mod durability;
mod engine;
mod error;
#[cfg(feature = "failpoints")]
mod failpoints;
mod format;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "grpc")]
pub mod grpc;
#[cfg(feature = "http")]
pub mod http;
pub mod inspect;
mod io;
mod lifecycle;
#[cfg(feature = "raft")]
pub mod raft;
mod reader;
mod retention;
#[cfg(any(feature = "http", feature = "grpc"))]
mod service;
mod storage;
mod stream;
mod telemetry;
mod topic;
mod wal;
mod writer;

#[allow(deprecated)]
pub use config::DEFAULT_BLOCK_BYTES;
pub use config::{
    DEFAULT_INLINE_WRITE_MAX, DEFAULT_MAX_BATCH_BYTES, DEFAULT_MAX_BATCH_ENTRIES,
    DEFAULT_MAX_ENTRY_BYTES, DEFAULT_QUEUE_CAPACITY, DEFAULT_SEGMENT_BYTES,
    DEFAULT_UNCACHED_WRITE_MIN, FsyncSchedule, IoBackend, MIN_SEGMENT_BYTES, ReadConsistency,
    WalrusBuilder,
};
#[cfg(feature = "failpoints")]
pub use crash::{CrashImage, CrashJournal};
pub use error::{Error, Result};
#[cfg(feature = "failpoints")]
pub use failpoints::FailPoints;
pub use reader::Entry;
pub use stream::TopicStream;
pub use wal::{ConsumerLag, ResetTo, Stats, TopicInfo, Walrus};

/// The README's examples, compiled and run as doctests so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
