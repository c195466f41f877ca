//! `walrus_async::raft::LogStore` beyond openraft's suite (which never reopens a store): the
//! state after a reopen following every kind of operation, the implicit truncate, purge past
//! the end, retention after purges, many groups on one log, records that do not decode, a
//! failed write. (`tests/raft_kill.rs` kills a writer process.)
#![cfg(feature = "raft")]

use std::io::Cursor;
use std::path::Path;

use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt};
use openraft::testing::{blank_ent, log_id};
use openraft::{LogId, RaftLogId, Vote};
use walrus_async::raft::LogStore;
use walrus_async::{FsyncSchedule, Walrus};

openraft::declare_raft_types!(pub Tc: D = String, R = String);

type Store = LogStore<Tc>;
type Entry = openraft::Entry<Tc>;

async fn open_log(dir: &Path) -> Walrus {
    Walrus::builder()
        .data_dir(dir)
        .segment_bytes(256 << 10)
        .fsync(FsyncSchedule::SyncEach)
        .open()
        .await
        .unwrap()
}

fn ent(term: u64, index: u64) -> Entry {
    let mut e = blank_ent::<Tc>(term, 1, index);
    e.payload = openraft::EntryPayload::Normal(format!("t{term}-i{index}"));
    e
}

/// What a store must show: log state, vote, committed and its entries.
#[derive(Debug, PartialEq)]
struct Seen {
    purged: Option<LogId<u64>>,
    last: Option<LogId<u64>>,
    vote: Option<Vote<u64>>,
    committed: Option<LogId<u64>>,
    entries: Vec<(u64, u64, String)>,
}

async fn seen(s: &mut Store) -> Seen {
    let st = s.get_log_state().await.unwrap();
    let entries = s
        .try_get_log_entries(0..u64::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|e| {
            let data = match &e.payload {
                openraft::EntryPayload::Normal(d) => d.clone(),
                _ => String::new(),
            };
            (e.get_log_id().leader_id.term, e.get_log_id().index, data)
        })
        .collect();
    Seen {
        purged: st.last_purged_log_id,
        last: st.last_log_id,
        vote: s.read_vote().await.unwrap(),
        committed: s.read_committed().await.unwrap(),
        entries,
    }
}

/// Closes the log and opens it and the store again.
async fn reopen(dir: &Path, wal: Walrus, store: Store) -> (Walrus, Store) {
    drop(store);
    wal.close().await.unwrap();
    let wal = open_log(dir).await;
    let store = Store::open(wal.clone(), "g").await.unwrap();
    (wal, store)
}

fn expect(terms_and_indexes: &[(u64, u64)]) -> Vec<(u64, u64, String)> {
    terms_and_indexes
        .iter()
        .map(|&(t, i)| (t, i, format!("t{t}-i{i}")))
        .collect()
}

#[tokio::test]
async fn every_operation_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let wal = open_log(dir.path()).await;
    let mut s = Store::open(wal.clone(), "g").await.unwrap();
    let mut wal = wal;
    assert_eq!(
        seen(&mut s).await,
        Seen {
            purged: None,
            last: None,
            vote: None,
            committed: None,
            entries: vec![]
        }
    );

    // Each step: the operation, then what the store shows, before and after a reopen.
    s.blocking_append((1..=5).map(|i| ent(1, i))).await.unwrap();
    let mut want = Seen {
        purged: None,
        last: Some(log_id(1, 1, 5)),
        vote: None,
        committed: None,
        entries: expect(&[(1, 1), (1, 2), (1, 3), (1, 4), (1, 5)]),
    };
    for _ in 0..2 {
        assert_eq!(seen(&mut s).await, want);
        (wal, s) = reopen(dir.path(), wal, s).await;
    }

    // Committed is lazy: kept at once, written with the next write (here the vote's).
    s.save_committed(Some(log_id(1, 1, 3))).await.unwrap();
    assert_eq!(s.read_committed().await.unwrap(), Some(log_id(1, 1, 3)));
    let vote = Vote::new_committed(2, 1);
    s.save_vote(&vote).await.unwrap();
    want.vote = Some(vote);
    want.committed = Some(log_id(1, 1, 3));
    for _ in 0..2 {
        assert_eq!(seen(&mut s).await, want);
        (wal, s) = reopen(dir.path(), wal, s).await;
    }

    // Truncate from 4 on (inclusive).
    s.truncate(log_id(1, 1, 4)).await.unwrap();
    want.last = Some(log_id(1, 1, 3));
    want.entries = expect(&[(1, 1), (1, 2), (1, 3)]);
    for _ in 0..2 {
        assert_eq!(seen(&mut s).await, want);
        (wal, s) = reopen(dir.path(), wal, s).await;
    }

    // An append below the end replaces what was there (an implicit truncate).
    s.blocking_append((3..=6).map(|i| ent(2, i))).await.unwrap();
    want.last = Some(log_id(2, 1, 6));
    want.entries = expect(&[(1, 1), (1, 2), (2, 3), (2, 4), (2, 5), (2, 6)]);
    for _ in 0..2 {
        assert_eq!(seen(&mut s).await, want);
        (wal, s) = reopen(dir.path(), wal, s).await;
    }

    // Purge up to 4 (inclusive): the log id is kept as given.
    s.purge(log_id(2, 1, 4)).await.unwrap();
    want.purged = Some(log_id(2, 1, 4));
    want.entries = expect(&[(2, 5), (2, 6)]);
    for _ in 0..2 {
        assert_eq!(seen(&mut s).await, want);
        (wal, s) = reopen(dir.path(), wal, s).await;
    }

    // Purge past the end (a snapshot installed): the log is empty, its last id the purged one.
    s.purge(log_id(3, 2, 10)).await.unwrap();
    want.purged = Some(log_id(3, 2, 10));
    want.last = Some(log_id(3, 2, 10));
    want.entries = vec![];
    for _ in 0..2 {
        assert_eq!(seen(&mut s).await, want);
        (wal, s) = reopen(dir.path(), wal, s).await;
    }

    // Appends go on after the purged index.
    s.blocking_append((11..=12).map(|i| ent(3, i)))
        .await
        .unwrap();
    want.last = Some(log_id(3, 1, 12));
    want.entries = expect(&[(3, 11), (3, 12)]);
    for _ in 0..2 {
        assert_eq!(seen(&mut s).await, want);
        (wal, s) = reopen(dir.path(), wal, s).await;
    }

    // Truncating everything left: the last log id is the purged one again.
    s.truncate(log_id(3, 1, 11)).await.unwrap();
    want.last = Some(log_id(3, 2, 10));
    want.entries = vec![];
    for _ in 0..2 {
        assert_eq!(seen(&mut s).await, want);
        (wal, s) = reopen(dir.path(), wal, s).await;
    }
    // A purge below the last purged is ignored, never backwards.
    s.purge(log_id(1, 1, 2)).await.unwrap();
    assert_eq!(seen(&mut s).await, want);
    drop(s);
    wal.close().await.unwrap();
}

/// openraft never leaves a gap, but its suite appends 1 then 3: the store keeps what it is
/// given, reads skip what it does not hold, and a reopen rebuilds the same.
#[tokio::test]
async fn an_append_past_the_end_is_kept_and_reads_skip_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open_log(dir.path()).await;
    let mut s = Store::open(wal.clone(), "g").await.unwrap();
    s.blocking_append([ent(1, 2), ent(1, 3)]).await.unwrap();
    s.blocking_append([ent(1, 6), ent(1, 7)]).await.unwrap();
    for _ in 0..2 {
        let got = seen(&mut s).await;
        assert_eq!(got.entries, expect(&[(1, 2), (1, 3), (1, 6), (1, 7)]));
        assert_eq!(got.last, Some(log_id(1, 1, 7)));
        let some = s.try_get_log_entries(3..7).await.unwrap();
        let idx: Vec<u64> = some.iter().map(|e| e.get_log_id().index).collect();
        assert_eq!(idx, [3, 6]);
        (wal, s) = reopen(dir.path(), wal, s).await;
    }
    // Entries of one append must be consecutive.
    assert!(s.blocking_append([ent(1, 8), ent(1, 10)]).await.is_err());
    assert_eq!(
        s.get_log_state().await.unwrap().last_log_id,
        Some(log_id(1, 1, 7))
    );
    drop(s);
    wal.close().await.unwrap();
}

#[tokio::test]
async fn a_log_with_retention_limits_or_a_second_store_of_a_group_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let limited = Walrus::builder()
        .data_dir(dir.path().join("a"))
        .retention_bytes(1 << 30)
        .open()
        .await
        .unwrap();
    let e = Store::open(limited.clone(), "g").await.unwrap_err();
    assert!(matches!(e, walrus_async::Error::InvalidConfig(_)), "{e}");
    limited.close().await.unwrap();

    let wal = open_log(&dir.path().join("b")).await;
    let first = Store::open(wal.clone(), "g").await.unwrap();
    assert!(
        Store::open(wal.clone(), "g").await.is_err(),
        "one store per group"
    );
    assert!(Store::open(wal.clone(), "").await.is_err());
    let other = Store::open(wal.clone(), "h").await.unwrap();
    drop(first);
    let again = Store::open(wal.clone(), "g").await.unwrap();
    drop((other, again));
    wal.close().await.unwrap();
}

#[tokio::test]
async fn a_record_that_does_not_decode_is_an_error_not_a_panic() {
    for garbage in [
        &b""[..],
        &[1u8, 0xff, 0xff, 0xff][..],
        &[9u8, 1, 2][..],
        &[5u8][..],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let wal = open_log(dir.path()).await;
        let mut s = Store::open(wal.clone(), "g").await.unwrap();
        s.blocking_append([ent(1, 1)]).await.unwrap();
        drop(s);
        // Written by hand into the group's topic.
        wal.append("raft/g", garbage.to_vec()).await.unwrap();
        let e = Store::open(wal.clone(), "g").await.unwrap_err();
        assert!(
            matches!(&e, walrus_async::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData),
            "{garbage:?}: {e}"
        );
        wal.close().await.unwrap();
    }
}

#[tokio::test]
async fn purges_let_retention_delete_old_files_and_the_state_survives() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open_log(dir.path()).await;
    let mut s = Store::open(wal.clone(), "g").await.unwrap();
    let vote = Vote::new_committed(7, 1);
    s.save_vote(&vote).await.unwrap();
    s.save_committed(Some(log_id(1, 1, 2))).await.unwrap();
    let big = |i: u64| {
        let mut e = blank_ent::<Tc>(1, 1, i);
        e.payload = openraft::EntryPayload::Normal("x".repeat(16 << 10));
        e
    };
    for chunk in 0..20u64 {
        s.blocking_append((chunk * 10 + 1..=chunk * 10 + 10).map(big))
            .await
            .unwrap();
    }
    let files = |d: &Path| std::fs::read_dir(d).unwrap().count();
    let before = files(dir.path());
    // Up to 185: 186..=190 are in a sealed file that must stay (the floor is the oldest entry
    // kept, not the state record).
    s.purge(log_id(1, 1, 185)).await.unwrap();
    wal.reclaim().await.unwrap();
    assert!(files(dir.path()) < before, "segment files were deleted");
    (wal, s) = reopen(dir.path(), wal, s).await;
    assert_eq!(s.read_vote().await.unwrap(), Some(vote));
    assert_eq!(s.read_committed().await.unwrap(), Some(log_id(1, 1, 2)));
    let st = s.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id, Some(log_id(1, 1, 185)));
    assert_eq!(st.last_log_id, Some(log_id(1, 1, 200)));
    let kept = s.try_get_log_entries(0..u64::MAX).await.unwrap();
    let indexes: Vec<u64> = kept.iter().map(|e| e.get_log_id().index).collect();
    assert_eq!(indexes, (186..=200).collect::<Vec<_>>());
    drop(s);
    wal.close().await.unwrap();
}

/// Retention deletes a middle stretch of a group's topic while another group pins an older
/// file: the old records left there are stale (truncated since, purged since), and a reopen,
/// in the same process or after a restart, must not bring them back.
#[tokio::test]
async fn stale_records_left_by_retention_do_not_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Walrus::builder()
        .data_dir(dir.path())
        .segment_bytes(64 << 10)
        .fsync(FsyncSchedule::SyncEach)
        .open()
        .await
        .unwrap();
    let big = |term: u64, i: u64| {
        let mut e = blank_ent::<Tc>(term, 1, i);
        e.payload = openraft::EntryPayload::Normal("x".repeat(16 << 10));
        e
    };
    // Group c fills files and purges them, so they hold nothing anyone needs.
    let mut c = Store::open(wal.clone(), "c").await.unwrap();
    let mut c_next = 1;
    let mut fill = async |c: &mut Store| {
        c.blocking_append((c_next..c_next + 12).map(|i| big(1, i)))
            .await
            .unwrap();
        c_next += 12;
        c.purge(log_id(1, 1, c_next - 1)).await.unwrap();
    };
    // The first file: group b (never purges: it pins the file) and a's 1..=30 of term 1.
    let mut b = Store::open(wal.clone(), "b").await.unwrap();
    b.blocking_append([ent(1, 1)]).await.unwrap();
    let mut a = Store::open(wal.clone(), "a").await.unwrap();
    a.blocking_append((1..=30).map(|i| ent(1, i)))
        .await
        .unwrap();
    fill(&mut c).await;
    // In later files: a truncates from 11 and appends 11..=12 of term 2 ...
    a.truncate(log_id(1, 1, 11)).await.unwrap();
    a.blocking_append((11..=12).map(|i| ent(2, i)))
        .await
        .unwrap();
    fill(&mut c).await;
    // ... and purges everything it has: its later files can go, the first stays (b).
    let before = common_segments(dir.path());
    a.purge(log_id(2, 1, 12)).await.unwrap();
    fill(&mut c).await;
    wal.reclaim().await.unwrap();
    let after = common_segments(dir.path());
    assert_eq!(after[0], before[0], "the first file stays (b pins it)");
    assert!(
        before[1..].iter().any(|f| !after.contains(f)),
        "files after it were deleted: {before:?} → {after:?}"
    );
    let want = |st: &Seen| {
        assert_eq!(st.purged, Some(log_id(2, 1, 12)));
        assert_eq!(
            st.last,
            Some(log_id(2, 1, 12)),
            "13..=30 of term 1 were truncated"
        );
        assert_eq!(st.entries, vec![]);
    };
    want(&seen(&mut a).await);
    // The first file is still there (b pins it).
    assert_eq!(b.try_get_log_entries(0..).await.unwrap().len(), 1);
    drop((a, c));
    let mut a = Store::open(wal.clone(), "a").await.unwrap();
    want(&seen(&mut a).await);
    drop((a, b));
    wal.close().await.unwrap();
    wal = open_log(dir.path()).await;
    let mut a = Store::open(wal.clone(), "a").await.unwrap();
    want(&seen(&mut a).await);
    let mut b = Store::open(wal.clone(), "b").await.unwrap();
    assert_eq!(seen(&mut b).await.entries, expect(&[(1, 1)]));
    drop((a, b));
    wal.close().await.unwrap();
}
fn common_segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn many_groups_share_one_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = open_log(dir.path()).await;
    let mut stores = Vec::new();
    for g in 0..16 {
        stores.push(
            Store::open(wal.clone(), &format!("group-{g}"))
                .await
                .unwrap(),
        );
    }
    // Concurrent appends of every group: one writer, shared syncs.
    let mut tasks = Vec::new();
    for (g, mut s) in stores.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for i in 1..=20u64 {
                s.blocking_append([ent(g as u64 + 1, i)]).await.unwrap();
            }
            s
        }));
    }
    let mut stores = Vec::new();
    for t in tasks {
        stores.push(t.await.unwrap());
    }
    drop(stores);
    wal.close().await.unwrap();
    wal = open_log(dir.path()).await;
    for g in 0..16u64 {
        let mut s = Store::open(wal.clone(), &format!("group-{g}"))
            .await
            .unwrap();
        let got = seen(&mut s).await.entries;
        let want: Vec<(u64, u64)> = (1..=20).map(|i| (g + 1, i)).collect();
        assert_eq!(got, expect(&want), "group {g}");
    }
    wal.close().await.unwrap();
}

/// A write whose sync failed may still reach the disk: the group takes no more writes, and
/// cannot be opened again on this lifetime of the log (it would not know what is there).
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_failed_write_stops_the_group_until_the_log_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let f = walrus_async::FailPoints::new();
    let wal = Walrus::builder()
        .data_dir(dir.path())
        .fsync(FsyncSchedule::SyncEach)
        .fail_points(f.clone())
        .open()
        .await
        .unwrap();
    let mut s = Store::open(wal.clone(), "g").await.unwrap();
    s.blocking_append((1..=3).map(|i| ent(1, i))).await.unwrap();
    f.fail_syncs(1, libc::EIO);
    assert!(s.truncate(log_id(1, 1, 2)).await.is_err());
    assert!(
        s.blocking_append([ent(1, 4)]).await.is_err(),
        "no write after a failed one"
    );
    drop(s);
    let e = Store::open(wal.clone(), "g").await.unwrap_err();
    assert!(e.to_string().contains("failed"), "{e}");
    // Other groups of the log go on.
    let mut other = Store::open(wal.clone(), "h").await.unwrap();
    drop(other.blocking_append([ent(1, 1)]).await);
    drop(other);
    drop(wal.close().await);
    let wal = open_log(dir.path()).await;
    let mut s = Store::open(wal.clone(), "g").await.unwrap();
    let st = s.get_log_state().await.unwrap();
    assert!(st.last_log_id.is_some());
    drop(s);
    wal.close().await.unwrap();
}
