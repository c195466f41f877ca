//! openraft's own storage conformance suite (`openraft::testing::Suite::test_all`, 35 tests)
//! against `walrus_async::raft::LogStore`, with the key-value state machine of
//! `examples/raft_cluster.rs`. A plain `#[test]`: the suite builds a runtime per sub-test.
//! Run on both I/O backends by CI, under `SyncEach` (durable appends) and under a timed
//! schedule (where the store syncs after each write).
#![cfg(feature = "raft")]

#[allow(dead_code)]
#[path = "../examples/raft_cluster.rs"]
mod cluster;

use cluster::{Kv, TypeConfig};
use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use walrus_async::raft::LogStore;
use walrus_async::{FsyncSchedule, Walrus};

struct Builder(FsyncSchedule);

impl StoreBuilder<TypeConfig, LogStore<TypeConfig>, Kv, (Walrus, tempfile::TempDir)> for Builder {
    async fn build(
        &self,
    ) -> Result<((Walrus, tempfile::TempDir), LogStore<TypeConfig>, Kv), StorageError<u64>> {
        let io = |e: walrus_async::Error| StorageError::from(openraft::StorageIOError::write(&e));
        let dir = tempfile::tempdir().unwrap();
        let wal = Walrus::builder()
            .data_dir(dir.path())
            .fsync(self.0)
            .open()
            .await
            .map_err(io)?;
        let store = LogStore::open(wal.clone(), "suite").await.map_err(io)?;
        Ok(((wal, dir), store, Kv::default()))
    }
}

#[test]
fn openraft_suite_with_sync_each() {
    Suite::test_all(Builder(FsyncSchedule::SyncEach)).unwrap();
}

#[test]
fn openraft_suite_with_a_timed_schedule() {
    Suite::test_all(Builder(FsyncSchedule::Milliseconds(1000))).unwrap();
}
