//! Concurrency stress: producers, batch producers, streaming consumers with acks, polling
//! readers, `sync()`, `reclaim()` and finally `close()` all race on a multi-thread runtime.
//! Every phase is bounded by a timeout that fails the test, so a deadlock or a lost wakeup (a
//! consumer that never sees an entry it should) cannot hang CI. Then the log is reopened and
//! every acknowledged append is checked.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::task::JoinSet;
use walrus_async::{Error, FsyncSchedule, ReadConsistency, Walrus};

const TOPICS: [&str; 4] = ["a", "b", "c", "d"];
/// Generous: the phases take well under a second each here; only a hang gets near it.
const BOUND: Duration = Duration::from_secs(60);

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(BOUND, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no progress within {BOUND:?} (deadlock or lost wakeup)"),
    }
}

fn entry(topic: usize, producer: usize, i: usize) -> String {
    format!("{}/{producer}/{i}", TOPICS[topic])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn everything_races_and_nothing_is_lost_or_stuck() {
    for round in 0..9 {
        let dir = tempfile::tempdir().unwrap();
        let schedule = [
            FsyncSchedule::SyncEach,
            FsyncSchedule::Milliseconds(1),
            FsyncSchedule::NoFsync,
        ][round % 3];
        let wal = common::small(dir.path())
            .segment_bytes(walrus_async::MIN_SEGMENT_BYTES)
            .fsync(schedule)
            .consistency(ReadConsistency::AtLeastOnce { persist_every: 7 })
            .queue_capacity(8)
            .open()
            .await
            .unwrap();
        race(&wal, dir.path(), round).await;
        drop(wal);
    }
}

async fn race(wal: &Walrus, dir: &std::path::Path, round: usize) {
    // Acknowledged appends: (topic, offset) -> data.
    let acked = Arc::new(std::sync::Mutex::new(HashMap::<(usize, u64), String>::new()));

    // Phase 1: producers, consumers, syncs and reclaims race.
    let mut consumers = JoinSet::new();
    let (done_tx, done_rx) = tokio::sync::watch::channel(HashMap::<usize, u64>::new());
    for (t, topic) in TOPICS.iter().enumerate() {
        let mut stream = wal.subscribe_as(topic, "stress").unwrap();
        let mut want = done_rx.clone();
        consumers.spawn(async move {
            let mut next = 0u64;
            let mut seen = 0u64;
            loop {
                // Done when everything acknowledged on this topic has been delivered.
                let target = want.borrow_and_update().get(&t).copied();
                if target.is_some_and(|end| next >= end) {
                    return seen;
                }
                tokio::select! {
                    item = stream.next() => {
                        let e = item.expect("stream ended early").expect("stream error");
                        assert!(e.offset >= next, "{topic}: offset {} after {next}", e.offset);
                        next = e.offset + 1;
                        seen += 1;
                        if seen.is_multiple_of(5) {
                            stream.ack(e.offset).await.unwrap();
                        }
                    }
                    r = want.changed() => r.unwrap(),
                }
            }
        });
    }
    let mut producers = JoinSet::new();
    for p in 0..12 {
        let (wal, acked) = (wal.clone(), acked.clone());
        producers.spawn(async move {
            for i in 0..60 {
                let t = (p + i) % TOPICS.len();
                if p % 4 == 0 && i % 10 == 0 {
                    let items: Vec<String> = (0..5).map(|k| entry(t, p, i * 100 + k)).collect();
                    let r = wal.append_batch(TOPICS[t], items.clone()).await.unwrap();
                    let mut a = acked.lock().unwrap();
                    for (o, d) in r.zip(items) {
                        a.insert((t, o), d);
                    }
                } else {
                    let d = entry(t, p, i);
                    let o = wal.append(TOPICS[t], d.clone()).await.unwrap();
                    acked.lock().unwrap().insert((t, o), d);
                }
            }
        });
    }
    let background = {
        let wal = wal.clone();
        tokio::spawn(async move {
            for i in 0..40 {
                wal.sync().await.unwrap();
                if i % 4 == 0 {
                    wal.reclaim().await.unwrap();
                }
                // Polling reads of the default consumer race with everything else.
                let _ = wal.read_next(TOPICS[i % TOPICS.len()], i % 2 == 0).await;
                tokio::task::yield_now().await;
            }
        })
    };
    bounded("producers", async {
        while let Some(r) = producers.join_next().await {
            r.unwrap();
        }
    })
    .await;
    bounded("sync/reclaim/read_next", background).await.unwrap();
    let ends: HashMap<usize, u64> = {
        let a = acked.lock().unwrap();
        (0..TOPICS.len())
            .map(|t| {
                let end = a.keys().filter(|k| k.0 == t).map(|k| k.1 + 1).max();
                (t, end.unwrap_or(0))
            })
            .collect()
    };
    done_tx.send_replace(ends);
    let delivered: u64 = bounded("consumers catching up", async {
        let mut n = 0;
        while let Some(r) = consumers.join_next().await {
            n += r.unwrap();
        }
        n
    })
    .await;
    assert_eq!(
        delivered as usize,
        acked.lock().unwrap().len(),
        "round {round}"
    );

    // Phase 2: close() races with appends, syncs and a waiting stream.
    let mut racers = JoinSet::new();
    for p in 0..6 {
        let (wal, acked) = (wal.clone(), acked.clone());
        racers.spawn(async move {
            for i in 0.. {
                let t = p % TOPICS.len();
                let d = entry(t, 100 + p, i);
                match wal.append(TOPICS[t], d.clone()).await {
                    Ok(o) => {
                        acked.lock().unwrap().insert((t, o), d);
                    }
                    Err(Error::Closed) => return,
                    Err(e) => panic!("append during close: {e}"),
                }
            }
        });
    }
    {
        let wal = wal.clone();
        racers.spawn(async move {
            loop {
                match wal.sync().await {
                    Ok(()) => tokio::task::yield_now().await,
                    Err(Error::Closed) => return,
                    Err(e) => panic!("sync during close: {e}"),
                }
            }
        });
    }
    let mut waiting = wal.subscribe_as("quiet", "w").unwrap();
    let waiter = tokio::spawn(async move { waiting.next().await.is_none() });
    // Let the racers get going, then close under them.
    let before = acked.lock().unwrap().len();
    bounded("racers making progress", async {
        while acked.lock().unwrap().len() < before + 50 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    bounded("close", wal.close()).await.unwrap();
    bounded("racers after close", async {
        while let Some(r) = racers.join_next().await {
            r.unwrap();
        }
    })
    .await;
    assert!(
        bounded("a waiting stream at close", waiter).await.unwrap(),
        "a stream waiting at close must end"
    );
    assert!(matches!(wal.append("a", "x").await, Err(Error::Closed)));

    // Everything acknowledged is there after a restart, exactly once and in place (retention
    // may have deleted what the consumer had durably acknowledged).
    let reopened = Walrus::builder()
        .data_dir(dir)
        .segment_bytes(walrus_async::MIN_SEGMENT_BYTES)
        .open()
        .await
        .unwrap();
    let a = acked.lock().unwrap().clone();
    for (t, topic) in TOPICS.iter().enumerate() {
        let from = reopened.subscribe_as(topic, "stress").unwrap().checkpoint();
        let all: Vec<(u64, Vec<u8>)> = common::all_entries(&reopened, topic)
            .await
            .into_iter()
            .filter(|e| e.0 >= from)
            .collect();
        let want: Vec<(u64, Vec<u8>)> = {
            let mut v: Vec<_> = a
                .iter()
                .filter(|(k, _)| k.0 == t && k.1 >= from)
                .map(|(k, d)| (k.1, d.clone().into_bytes()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(all, want, "round {round}, topic {topic}");
    }
    reopened.close().await.unwrap();
}
