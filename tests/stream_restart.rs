//! Consumer checkpoints across a real crash: a child process consumes and acknowledges, the
//! parent kills it with SIGKILL and reopens the log. The child is this test binary re-run with
//! `WALRUS_STREAM_CHILD=<mode>|<dir>` (the test function takes the child's role).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use futures::StreamExt;
use walrus_async::{ReadConsistency, Walrus};

const CHILD_ENV: &str = "WALRUS_STREAM_CHILD";

fn consistency(mode: &str) -> ReadConsistency {
    match mode {
        "strict" => ReadConsistency::StrictlyAtOnce,
        _ => ReadConsistency::AtLeastOnce { persist_every: 3 },
    }
}

/// Child: consume `n` entries of "t" as consumer "c", acknowledging each, then report and wait
/// at the tail until killed.
async fn child(mode: &str, dir: &str) -> ! {
    let wal = Walrus::builder()
        .data_dir(dir)
        .consistency(consistency(mode))
        .open()
        .await
        .unwrap();
    let n = if mode == "strict" { 5 } else { 7 };
    let mut s = wal.subscribe_as("t", "c").unwrap();
    for _ in 0..n {
        let e = s.next().await.unwrap().unwrap();
        s.ack(e.offset).await.unwrap();
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "ACKED {n}").unwrap();
    out.flush().unwrap();
    drop(out);
    // Poll at the tail: nothing more comes until the parent kills us.
    let next = s.next().await;
    panic!("unexpected item at the tail: {next:?}");
}

fn run_child_and_kill(mode: &str, dir: &str) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_crash_redelivers_nothing_or_at_most_persist_every",
        ])
        .args(["--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{mode}|{dir}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = common::lines_with_deadline(&mut child, std::time::Duration::from_secs(60))
        // The harness prints "test name ... " without a newline: look anywhere in the line.
        .find(|l| l.contains("ACKED "))
        .expect("the child reports its acknowledgements");
    assert!(line.contains("ACKED "));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

#[test]
fn a_crash_redelivers_nothing_or_at_most_persist_every() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let (mode, dir) = spec.split_once('|').unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(child(mode, dir));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (mode, entries, expect_first) in [("strict", 5u64, 5u64), ("atleast", 10, 6)] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap().to_owned();
        rt.block_on(async {
            let wal = Walrus::open(&path).await.unwrap();
            wal.append_batch("t", (0..entries).map(|i| format!("e{i}")))
                .await
                .unwrap();
            wal.close().await.unwrap();
        });
        run_child_and_kill(mode, &path);
        rt.block_on(async {
            let wal = Walrus::builder()
                .data_dir(&path)
                .consistency(consistency(mode))
                .open()
                .await
                .unwrap();
            let lag = wal.consumer_lag("t", "c").unwrap();
            assert_eq!(lag, entries - expect_first, "{mode}");
            let after = wal.append("t", "after").await.unwrap();
            let mut s = wal.subscribe_as("t", "c").unwrap();
            let first = s.next().await.unwrap().unwrap().offset;
            assert_eq!(first, expect_first, "{mode}: first entry after the crash");
            if mode == "strict" {
                assert_eq!(first, after, "consume 5 of 5, crash: nothing redelivered");
            } else {
                // 7 acknowledged, persisted every 3 (at 3 and 6): 1 comes again, at most 2.
                assert!(7 - first <= 2);
            }
        });
    }
}
