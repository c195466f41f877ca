//! Counters of an open log, reported by `Walrus::stats`.

use std::sync::atomic::AtomicU64;

/// What an open log has done since it was opened; bumped by the tasks that do it.
#[derive(Default)]
pub(crate) struct Counters {
    pub appends: AtomicU64,
    pub bytes_appended: AtomicU64,
    pub batches: AtomicU64,
    pub fsyncs: AtomicU64,
    pub write_submissions: AtomicU64,
    pub segments_deleted: AtomicU64,
    pub checksum_failures: AtomicU64,
}
