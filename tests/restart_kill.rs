//! Crash a real process with SIGKILL while it appends and consumes, reopen, and check that every
//! acknowledged entry is there, in order, without duplicates, and that the consumer's checkpoint
//! keeps its promise.
//!
//! The test re-runs its own binary as the child (filtered to this test, with
//! `WALRUS_KILL_CHILD` set): the child appends mixed single entries and batches to several topics
//! and prints `ACK topic first count` after each acknowledgement; meanwhile a named consumer
//! streams one topic and prints `DLV offset` when an entry is delivered (before acknowledging
//! it) and `ACKD offset` once its acknowledgement returned. The parent kills the child at a
//! varying moment, reads everything it printed, reopens the log and checks it: the recovered
//! checkpoint is never past a delivered entry, and at most `persist_every` behind the last
//! acknowledgement (`0` under `StrictlyAtOnce`). The log is reused across rounds, so offsets and
//! the checkpoint must also continue across each restart.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};

use futures::StreamExt;
use walrus_async::{FsyncSchedule, ReadConsistency, Walrus};

const CHILD_ENV: &str = "WALRUS_KILL_CHILD";
const TOPICS: [&str; 3] = ["alpha", "beta", "gamma"];
const CONSUMER: &str = "k";

fn content(topic: &str, offset: u64) -> Vec<u8> {
    // Variable sizes so frames and blocks have uneven boundaries.
    let mut v = format!("{topic}:{offset}:").into_bytes();
    v.resize(v.len() + (offset as usize * 37) % 300, b'.');
    v
}

fn schedule(round: u32) -> FsyncSchedule {
    match round % 3 {
        0 => FsyncSchedule::NoFsync,
        1 => FsyncSchedule::Milliseconds(5),
        _ => FsyncSchedule::SyncEach,
    }
}

fn consistency(round: u32) -> ReadConsistency {
    if round.is_multiple_of(2) {
        ReadConsistency::StrictlyAtOnce
    } else {
        ReadConsistency::AtLeastOnce { persist_every: 3 }
    }
}

fn builder(dir: &str, round: u32) -> walrus_async::WalrusBuilder {
    Walrus::builder()
        .data_dir(dir)
        .segment_bytes(256 << 10)
        .fsync(schedule(round))
        .consistency(consistency(round))
        // Half the rounds send every write through the I/O backend (io_uring under CI's first
        // pass) instead of writing small ones inline.
        .inline_write_max(if round % 4 < 2 {
            walrus_async::DEFAULT_INLINE_WRITE_MAX
        } else {
            0
        })
}

fn say(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

/// The child's role: append until killed.
async fn child(dir: &str, round: u32) -> ! {
    let wal = builder(dir, round).open().await.expect("child open");
    let mut stream = wal.subscribe_as(TOPICS[0], CONSUMER).expect("subscribe");
    tokio::spawn(async move {
        while let Some(e) = stream.next().await {
            let e = e.expect("stream");
            say(format_args!("DLV {}", e.offset));
            stream.ack(e.offset).await.expect("ack");
            say(format_args!("ACKD {}", e.offset));
        }
    });
    say(format_args!("READY"));
    let mut i = 0u64;
    loop {
        let topic = TOPICS[(i % 3) as usize];
        // Single writer per topic, so the next offset is the number of entries so far.
        let next = wal.entry_count(topic);
        let (first, count) = if i.is_multiple_of(4) {
            let n = 1 + i % 5;
            let batch: Vec<Vec<u8>> = (next..next + n).map(|o| content(topic, o)).collect();
            let r = wal.append_batch(topic, batch).await.expect("batch");
            (r.start, r.end - r.start)
        } else {
            (
                wal.append(topic, content(topic, next))
                    .await
                    .expect("append"),
                1,
            )
        };
        assert_eq!(first, next, "offsets dense and predicted");
        say(format_args!("ACK {topic} {first} {count}"));
        i += 1;
    }
}

#[test]
fn kill_9_while_appending_loses_nothing_acknowledged() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let (dir, round) = spec.rsplit_once('|').unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(child(dir, round.parse().unwrap()));
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap().to_owned();
    let mut acked: HashMap<String, u64> = HashMap::new(); // topic -> one past the last acked
    // The consumer: one past the last delivered (ever), and one past the last acknowledged in
    // the current round (an earlier round's unpersisted acks may be lost with it).
    let mut delivered = 0u64;
    let mut consumer_checks = 0u32;
    let rounds = 50u32;
    for round in 0..rounds {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "kill_9_while_appending_loses_nothing_acknowledged",
            ])
            .args(["--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, format!("{path}|{round}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let kill_after = 40 + (round as usize * 97) % 400;
        let mut seen = 0;
        let mut consumed = 0u64;
        // After the kill, the rest of what the child printed is still read (to the end of the
        // pipe): a checkpoint can only be as far as a `DLV` line the child got out.
        for line in common::lines_with_deadline(&mut child, std::time::Duration::from_secs(60)) {
            // The harness prints "test name ... " without a newline, so the first line shares
            // its line: look for the markers anywhere.
            if let Some(at) = line.find("DLV ") {
                let o: u64 = line[at + 4..].trim().parse().unwrap();
                delivered = delivered.max(o + 1);
                continue;
            }
            if let Some(at) = line.find("ACKD ") {
                let o: u64 = line[at + 5..].trim().parse().unwrap();
                consumed = consumed.max(o + 1);
                continue;
            }
            let Some(at) = line.find("ACK ") else {
                continue;
            };
            if seen == kill_after {
                continue; // printed after the kill was decided: not counted as acknowledged
            }
            let mut parts = line[at..].split_whitespace();
            parts.next();
            let topic = parts.next().unwrap().to_owned();
            let first: u64 = parts.next().unwrap().parse().unwrap();
            let count: u64 = parts.next().unwrap().parse().unwrap();
            let e = acked.entry(topic).or_default();
            *e = (*e).max(first + count);
            seen += 1;
            if seen == kill_after {
                child.kill().unwrap(); // SIGKILL
            }
        }
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "round {round}: the child was killed, not finished"
        );
        assert_eq!(seen, kill_after, "round {round}: child stopped early");

        // Reopen in this process and check every acknowledged entry.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let wal = builder(&path, round).open().await.unwrap();
            for topic in TOPICS {
                let entries = common::all_entries(&wal, topic).await;
                let want = acked.get(topic).copied().unwrap_or(0);
                assert!(
                    entries.len() as u64 >= want,
                    "round {round} {topic}: {} entries, {want} acknowledged",
                    entries.len()
                );
                for (i, (offset, data)) in entries.iter().enumerate() {
                    assert_eq!(*offset, i as u64, "round {round} {topic}: dense, in order");
                    assert_eq!(
                        data,
                        &content(topic, *offset),
                        "round {round} {topic}@{offset}"
                    );
                }
                // Entries written but not acknowledged before the kill may be there too; they
                // become the baseline the next round continues from.
                acked.insert(topic.to_owned(), entries.len() as u64);
            }
            // (No claim that nothing is torn: SIGKILL can stop a write that spans pages midway,
            // leaving an unacknowledged, damaged tail that recovery cuts.)
            // The consumer's checkpoint: never past what it was delivered, at most
            // `persist_every` behind what it acknowledged.
            let checkpoint = wal.subscribe_as(TOPICS[0], CONSUMER).unwrap().checkpoint();
            let allowed = match consistency(round) {
                ReadConsistency::StrictlyAtOnce => 0,
                ReadConsistency::AtLeastOnce { persist_every } => u64::from(persist_every),
            };
            assert!(
                checkpoint <= delivered,
                "round {round}: checkpoint {checkpoint} past the last delivered ({delivered})"
            );
            assert!(
                checkpoint + allowed >= consumed,
                "round {round}: checkpoint {checkpoint}, {consumed} acknowledged, {allowed} allowed"
            );
            consumer_checks += u32::from(consumed > 0);
            wal.close().await.unwrap();
        });
    }
    assert!(
        consumer_checks > rounds / 2,
        "the consumer had acknowledged something in only {consumer_checks} rounds"
    );
}
