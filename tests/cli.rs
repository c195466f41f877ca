//! The `walrus` tool on real directories: a clean one, a damaged one, one held open by this
//! (another) process, and its JSON output parsed and checked. Needs `--features cli`.
#![cfg(feature = "cli")]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use assert_cmd::cargo::cargo_bin_cmd;
use predicates::prelude::*;
use serde_json::Value;
use walrus_async::{FsyncSchedule, Walrus};

async fn open(dir: &Path) -> Walrus {
    Walrus::builder()
        .data_dir(dir)
        .fsync(FsyncSchedule::SyncEach)
        .open()
        .await
        .unwrap()
}

/// Topic `a` gets `a-0..a-{n}`, topic `b` gets `b-0..b-{n}`, interleaved, one frame each.
async fn fill(wal: &Walrus, n: usize) {
    for i in 0..n {
        wal.append("a", format!("a-{i}")).await.unwrap();
        wal.append("b", format!("b-{i}")).await.unwrap();
    }
}

/// A closed log filled by [`fill`], and its one segment file.
async fn closed_log(n: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let wal = open(dir.path()).await;
    fill(&wal, n).await;
    wal.close().await.unwrap();
    let seg = segment_files(dir.path()).remove(0);
    (dir, seg)
}

/// Flips `mask` in the byte `at` places into the first occurrence of `needle` in `seg`.
/// Returns the file's bytes afterwards and where the needle starts.
fn flip(seg: &Path, needle: &[u8], at: usize, mask: u8) -> (Vec<u8>, usize) {
    let mut bytes = std::fs::read(seg).unwrap();
    let pos = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("payload in the file");
    bytes[pos + at] ^= mask;
    std::fs::write(seg, &bytes).unwrap();
    (bytes, pos)
}

fn json(args: &[&str]) -> (Value, i32) {
    let out = cargo_bin_cmd!("walrus").args(args).output().unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (v, out.status.code().unwrap())
}

fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn inspect_and_verify_a_clean_log() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let wal = open(dir.path()).await;
    fill(&wal, 5).await;
    // A named consumer that read 2 entries of `a`.
    let mut s = wal.subscribe_as("a", "billing").unwrap();
    use futures::StreamExt;
    for _ in 0..2 {
        let e = s.next().await.unwrap().unwrap();
        s.ack(e.offset).await.unwrap();
    }
    drop(s);
    wal.close().await.unwrap();

    let (v, code) = json(&["inspect", d, "--json"]);
    assert_eq!(code, 0);
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["format_version"], 3);
    assert_eq!(v["live"], false);
    let topics = v["topics"].as_array().unwrap();
    assert_eq!(topics.len(), 2);
    assert_eq!(topics[0]["name"], "a");
    assert_eq!(topics[0]["entries"], 5);
    assert_eq!(topics[0]["oldest_offset"], 0);
    assert_eq!(topics[0]["next_offset"], 5);
    assert_eq!(topics[0]["bytes"], 15);
    assert!(topics[0]["oldest_ms"].as_u64().unwrap() > 1_600_000_000_000);
    let c = &v["consumers"][0];
    assert_eq!(
        (c["topic"].as_str(), c["consumer"].as_str()),
        (Some("a"), Some("billing"))
    );
    assert_eq!(c["checkpoint"], 2);
    assert_eq!(c["lag_entries"], 3);
    assert_eq!(c["lag_bytes"], 9);
    let seg = &v["segments"][0];
    assert_eq!(seg["frames"], 10);
    assert_eq!(seg["topic_count"], 2);
    assert_eq!(seg["reclaimable"], false);
    let pins = seg["pinned_by"].as_array().unwrap();
    assert!(
        pins.iter()
            .any(|p| p["kind"] == "consumer" && p["consumer"] == "billing")
    );
    assert!(
        pins.iter()
            .any(|p| p["kind"] == "unconsumed" && p["topic"] == "b")
    );
    assert_eq!(v["totals"]["entries"], 10);
    assert_eq!(v["totals"]["damage"], 0);

    cargo_bin_cmd!("walrus")
        .args(["verify", d])
        .assert()
        .success()
        .stdout(predicate::str::starts_with("OK: 1 segments, 10 frames"));
    // Tables on stdout; nothing on stderr when it is not a terminal (no progress bar).
    cargo_bin_cmd!("walrus")
        .args(["inspect", d])
        .assert()
        .success()
        .stdout(predicate::str::contains("billing").and(predicate::str::contains("Segments")))
        .stderr(predicate::str::is_empty());
    let (v, code) = json(&["consumers", d, "--json"]);
    assert_eq!(code, 0);
    assert_eq!(v["consumers"][0]["lag_entries"], 3);
}

#[tokio::test]
async fn verify_names_the_file_position_and_offsets_of_a_flipped_byte() {
    let (dir, seg) = closed_log(10).await;
    let d = dir.path().to_str().unwrap();
    let (bytes, at) = flip(&seg, b"b-4", 2, 0x40);
    let at = at + 2;

    let (v, code) = json(&["verify", d, "--json"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["ok"], false);
    let p = &v["problems"][0];
    let name = seg.file_name().unwrap().to_str().unwrap();
    assert_eq!(p["file"], name);
    assert_eq!(p["severity"], "damage");
    assert_eq!(p["kind"], "frame");
    let pos = p["position"].as_u64().unwrap();
    assert!(
        pos <= at as u64 && at as u64 - pos < 128,
        "frame at {pos}, byte at {at}"
    );
    assert_eq!(p["affected"][0]["topic"], "b");
    assert_eq!(p["affected"][0]["start"], 4);
    assert_eq!(p["affected"][0]["end"], 5);
    cargo_bin_cmd!("walrus")
        .args(["verify", d])
        .assert()
        .code(1)
        .stdout(
            predicate::str::contains(format!("{name} at byte {pos}"))
                .and(predicate::str::contains("topic \"b\" offsets 4..5"))
                .and(predicate::str::contains("DAMAGED")),
        );
    // The damage does not stop the rest from being read.
    let out = cargo_bin_cmd!("walrus")
        .args(["dump", d, "b", "--format", "text"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 9, "{text}");
    assert!(!text.contains("b-4"));
    // And nothing was changed by looking.
    assert_eq!(std::fs::read(&seg).unwrap(), bytes);
}

/// An interrupted last write (what a crash leaves) is a warning, not damage: `verify` passes.
#[tokio::test]
async fn a_torn_tail_is_a_warning_and_verify_passes() {
    let (dir, seg) = closed_log(3).await;
    let d = dir.path().to_str().unwrap();
    flip(&seg, b"b-2", 0, 0x40); // the last frame
    let (v, code) = json(&["verify", d, "--json"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["ok"], true);
    assert_eq!(v["problems"][0]["kind"], "torn_tail");
    assert_eq!(v["problems"][0]["severity"], "warning");
}

/// A copy of a segment (same id, newer name) is read once, as the log reads it.
#[tokio::test]
async fn dump_reads_a_copied_segment_once() {
    let (dir, seg) = closed_log(3).await;
    let d = dir.path().to_str().unwrap();
    let name: u64 = seg.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    std::fs::copy(&seg, dir.path().join(format!("{}.seg", name + 1000))).unwrap();
    let out = cargo_bin_cmd!("walrus")
        .args(["dump", d, "a"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 3);
    let (v, _) = json(&["inspect", d, "--json"]);
    assert_eq!(v["topics"][0]["entries"], 3);
    assert_eq!(
        v["segments"][1]["copy_of"],
        seg.file_name().unwrap().to_str().unwrap()
    );
}

#[tokio::test]
async fn read_only_commands_work_on_a_log_open_in_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    // This test's process holds the log open (and its lock) while the tool runs.
    let wal = open(dir.path()).await;
    fill(&wal, 3).await;
    let names_before: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();

    let (v, code) = json(&["inspect", d, "--json"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["live"], true);
    assert_eq!(v["holder_pid"], std::process::id());
    assert_eq!(v["topics"][1]["entries"], 3);
    assert_eq!(v["segments"][0]["pinned_by"][0]["kind"], "writer");
    cargo_bin_cmd!("walrus")
        .args(["verify", d])
        .assert()
        .success();
    cargo_bin_cmd!("walrus")
        .args(["dump", d, "a", "--from", "1"])
        .assert()
        .success()
        .stdout(predicate::str::contains("a-1").and(predicate::str::contains("a-0").not()));
    cargo_bin_cmd!("walrus")
        .args(["tail", d, "b", "-n", "1"])
        .assert()
        .success()
        .stdout(predicate::str::contains("b-2").and(predicate::str::contains("b-1").not()));
    cargo_bin_cmd!("walrus")
        .args(["produce", d, "a"])
        .write_stdin("refused\n")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("open in another process"));
    cargo_bin_cmd!("walrus")
        .args([
            "consumers",
            "reset",
            d,
            "a",
            "c",
            "--to-earliest",
            "--execute",
        ])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("open in another process"));
    // Looking created, removed and locked nothing: the log goes on. (The log itself may
    // have made its spare segment meanwhile.)
    let names_after: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    for n in &names_before {
        assert!(names_after.contains(n), "{n:?} went away");
    }
    for n in &names_after {
        let seg = n.to_str().unwrap().ends_with(".seg");
        assert!(names_before.contains(n) || seg, "{n:?} appeared");
    }
    wal.append("a", "after").await.unwrap();
    wal.close().await.unwrap();
}

#[tokio::test]
async fn tail_follow_prints_entries_appended_by_the_live_process() {
    let dir = tempfile::tempdir().unwrap();
    let wal = open(dir.path()).await;
    wal.append("t", "first").await.unwrap();
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin!("walrus"))
        .args([
            "tail",
            dir.path().to_str().unwrap(),
            "t",
            "--follow",
            "--json",
        ])
        .args(["--interval-ms", "20"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let line = |rx: &std::sync::mpsc::Receiver<String>| -> Value {
        let l = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("a line from tail");
        serde_json::from_str(&l).unwrap()
    };
    let v = line(&rx);
    assert_eq!(
        (v["offset"].as_u64(), v["data"].as_str()),
        (Some(0), Some("first"))
    );
    wal.append("t", "second").await.unwrap();
    wal.append("other", "not this topic").await.unwrap();
    wal.append("t", vec![0xffu8, 0]).await.unwrap();
    let v = line(&rx);
    assert_eq!(
        (v["offset"].as_u64(), v["data"].as_str()),
        (Some(1), Some("second"))
    );
    let v = line(&rx);
    assert_eq!(v["offset"], 2);
    assert_eq!(v["data_base64"], "/wA=");
    child.kill().unwrap();
    child.wait().unwrap();
    wal.close().await.unwrap();
}

#[tokio::test]
async fn produce_dump_and_consumer_reset_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = cargo_bin_cmd!("walrus")
        .args(["produce", d, "lines", "--json", "--batch", "2"])
        .write_stdin("one\ntwo\nthree\n")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["entries"].as_u64(), v["first_offset"].as_u64()),
        (Some(3), Some(0))
    );
    assert_eq!(v["next_offset"], 3);

    let out = cargo_bin_cmd!("walrus")
        .args(["dump", d, "lines", "--json", "--from", "1", "--limit", "1"])
        .output()
        .unwrap();
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(
        (lines[0]["offset"].as_u64(), lines[0]["data"].as_str()),
        (Some(1), Some("two"))
    );
    cargo_bin_cmd!("walrus")
        .args(["dump", d, "lines", "--format", "hex", "--limit", "1"])
        .assert()
        .success()
        .stdout(predicate::str::ends_with("\t6f6e65\n"));

    // Dry run by default: nothing changes.
    cargo_bin_cmd!("walrus")
        .args([
            "consumers",
            "reset",
            d,
            "lines",
            "audit",
            "--to-offset",
            "2",
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "would move from not registered to 2",
        ));
    let (v, _) = json(&["consumers", d, "--json"]);
    assert_eq!(v["consumers"].as_array().unwrap().len(), 0);
    // --execute does it, through the library.
    let (v, code) = json(&[
        "consumers",
        "reset",
        d,
        "lines",
        "audit",
        "--to-offset",
        "2",
        "--execute",
        "--json",
    ]);
    assert_eq!(code, 0);
    assert_eq!(
        (v["target"].as_u64(), v["executed"].as_bool()),
        (Some(2), Some(true))
    );
    let (v, _) = json(&["consumers", d, "--json"]);
    assert_eq!(v["consumers"][0]["consumer"], "audit");
    assert_eq!(v["consumers"][0]["checkpoint"], 2);
    assert_eq!(v["consumers"][0]["lag_entries"], 1);
    // The library sees the same.
    let wal = open(dir.path()).await;
    let mut s = wal.subscribe_as("lines", "audit").unwrap();
    use futures::StreamExt;
    let e = s.next().await.unwrap().unwrap();
    assert_eq!((e.offset, &e.data[..]), (2, &b"three"[..]));
    drop(s);
    wal.close().await.unwrap();
}

#[test]
fn usage_errors_and_directories_without_a_log_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    cargo_bin_cmd!("walrus")
        .args(["inspect", d])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("holds no walrus-async log"));
    cargo_bin_cmd!("walrus")
        .args(["verify", &format!("{d}/missing")])
        .assert()
        .code(2);
    cargo_bin_cmd!("walrus").args(["dump", d]).assert().code(2);
    cargo_bin_cmd!("walrus")
        .args(["frobnicate"])
        .assert()
        .code(2);
    cargo_bin_cmd!("walrus")
        .args(["consumers", "reset", d, "t", "c"])
        .assert()
        .code(2);
    // Nothing was created by looking.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn bench_quick_reports_each_workload() {
    let dir = tempfile::tempdir().unwrap();
    let (v, code) = json(&[
        "bench",
        "--quick",
        "--json",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{v}");
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for r in rows {
        assert!(r["appends_per_sec"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["p99_us"].as_f64().unwrap() >= r["p50_us"].as_f64().unwrap());
    }
    // SyncEach rows synced.
    assert!(rows[1]["fsyncs"].as_u64().unwrap() > 0);
    // Its temporary directory is gone.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
