//! `walrus_async::raft::LogStore` under `kill -9`: a child process appends, rewrites,
//! truncates, votes and purges (with retention deleting files meanwhile) until it is killed;
//! the store reopened holds exactly what the child confirmed, with or without the operation in
//! flight. In a test binary of its own: a child forked while another test thread holds a log's
//! lock file would keep that lock until it execs.
#![cfg(feature = "raft")]

use std::io::{BufRead, Cursor};
use std::path::Path;

use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt};
use openraft::testing::{blank_ent, log_id};
use openraft::{RaftLogId, Vote};
use walrus_async::raft::LogStore;
use walrus_async::{FsyncSchedule, Walrus};

openraft::declare_raft_types!(pub Tc: D = String, R = String);

type Store = LogStore<Tc>;

async fn open_log(dir: &Path) -> Walrus {
    Walrus::builder()
        .data_dir(dir)
        .segment_bytes(64 << 10)
        .fsync(FsyncSchedule::SyncEach)
        .open()
        .await
        .unwrap()
}

/// The child of `kill_minus_nine_loses_nothing_acknowledged`: appends, truncates and purges
/// until killed, printing each operation once it is durable.
#[test]
#[ignore = "run by kill_minus_nine_loses_nothing_acknowledged in a child process"]
fn child_raft_writer() {
    let Some(dir) = std::env::var_os("WALRUS_RAFT_CHILD_DIR") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        // Small files and 2 KiB entries, so purges let retention delete files meanwhile.
        let wal = open_log(Path::new(&dir)).await;
        let ent = |term: u64, i: u64| {
            let mut e = blank_ent::<Tc>(term, 1, i);
            e.payload = openraft::EntryPayload::Normal("x".repeat(2 << 10));
            e
        };
        let mut s = Store::open(wal.clone(), "g").await.unwrap();
        let mut out = std::io::stdout();
        // Each operation is announced before it starts and confirmed once it returned, so
        // the parent knows the one in flight when it was killed.
        let mut say = |line: String| {
            use std::io::Write;
            writeln!(out, "{line}").unwrap();
            out.flush().unwrap();
        };
        let (mut term, mut next) = (1u64, 1u64);
        for round in 0u64.. {
            say(format!("begin appended {term} {}", next + 2));
            s.blocking_append((next..next + 3).map(|i| ent(term, i)))
                .await
                .unwrap();
            next += 3;
            say("done".into());
            if round % 7 == 6 {
                // A new term rewrites the last two entries (an implicit truncate).
                term += 1;
                next -= 2;
                say(format!("begin rewrote {term} {next}"));
                s.blocking_append((next..next + 2).map(|i| ent(term, i)))
                    .await
                    .unwrap();
                next += 2;
                say("done".into());
            }
            if round % 11 == 10 {
                say(format!("begin truncated {}", next - 1));
                s.truncate(log_id(term, 1, next - 1)).await.unwrap();
                next -= 1;
                say("done".into());
            }
            if round % 13 == 12 {
                let vote = Vote::new_committed(term, 1);
                say(format!("begin voted {term}"));
                s.save_vote(&vote).await.unwrap();
                say("done".into());
                say(format!("begin purged {}", next - 10));
                s.purge(log_id(term, 1, next - 10)).await.unwrap();
                say("done".into());
                wal.reclaim().await.unwrap();
            }
        }
    });
}

/// What the child's confirmed operations leave: entries (index → term), last purged index,
/// last vote's term.
#[derive(Clone, Debug, Default, PartialEq)]
struct Model {
    entries: std::collections::BTreeMap<u64, u64>,
    purged: u64,
    vote: Option<u64>,
}

impl Model {
    fn apply(&mut self, op: &str) {
        let w: Vec<&str> = op.split(' ').collect();
        let n = |k: usize| w[k].parse::<u64>().unwrap();
        match w[0] {
            "appended" => {
                self.entries.split_off(&(n(2) - 2));
                for i in n(2) - 2..=n(2) {
                    self.entries.insert(i, n(1));
                }
            }
            "rewrote" => {
                self.entries.split_off(&n(2));
                self.entries.insert(n(2), n(1));
                self.entries.insert(n(2) + 1, n(1));
            }
            "truncated" => {
                self.entries.split_off(&n(1));
            }
            "voted" => self.vote = Some(n(1)),
            "purged" => {
                self.purged = n(1);
                self.entries = self.entries.split_off(&(self.purged + 1));
            }
            other => panic!("unknown operation {other}"),
        }
    }
}

#[test]
fn kill_minus_nine_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "child_raft_writer",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("WALRUS_RAFT_CHILD_DIR", dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The model of what is durable: the operations the child confirmed, and the one it had
    // begun when it was killed (which may or may not have reached the disk).
    let mut model = Model::default();
    let mut in_flight: Option<String> = None;
    let mut read = |line: &str, model: &mut Model| -> bool {
        // (libtest may have printed the test's name on the same line first.)
        if let Some((_, op)) = line.split_once("begin ") {
            in_flight = Some(op.to_owned());
        } else if line == "done" {
            model.apply(&in_flight.take().expect("a begun operation"));
            return true;
        }
        false
    };
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut ops = 0;
    while ops < 400 {
        let line = lines.next().expect("the child goes on").unwrap();
        ops += usize::from(read(&line, &mut model));
    }
    child.kill().unwrap(); // SIGKILL, in the middle of whatever it was doing
    child.wait().unwrap();
    // What it printed before it died counts too.
    for line in lines {
        read(&line.unwrap(), &mut model);
    }
    let mut with_in_flight = model.clone();
    if let Some(op) = &in_flight {
        with_in_flight.apply(op);
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let wal = open_log(dir.path()).await;
        assert!(
            wal.topic_info("raft/g").unwrap().oldest_offset > 0,
            "retention deleted files meanwhile"
        );
        let mut s = Store::open(wal.clone(), "g").await.unwrap();
        let st = s.get_log_state().await.unwrap();
        let entries = s.try_get_log_entries(0..u64::MAX).await.unwrap();
        let found = Model {
            entries: entries
                .iter()
                .map(|e| (e.get_log_id().index, e.get_log_id().leader_id.term))
                .collect(),
            purged: st.last_purged_log_id.map_or(0, |p| p.index),
            vote: s.read_vote().await.unwrap().map(|v| v.leader_id.term),
        };
        // Exactly what was confirmed, with or without the operation in flight: nothing
        // confirmed is lost, nothing removed comes back, and the log is contiguous.
        assert!(
            found == model || found == with_in_flight,
            "found {found:?}\nconfirmed {model:?}\nin flight {in_flight:?}"
        );
        drop(s);
        wal.close().await.unwrap();
    });
}
