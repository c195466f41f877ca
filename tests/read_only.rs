//! A data directory on a read-only file system (a tmpfs mounted by `.ci/run`, path in
//! `WALRUS_READONLY_DIR`, remounted read-only by this test; needs root): opening is a typed
//! `Error::DataDir` naming the path, and the log's files are left exactly as they were.

mod common;

use std::process::Command;

use walrus_async::Error;

fn remount(dir: &str, mode: &str) -> bool {
    Command::new("mount")
        .args(["-o", &format!("remount,{mode}"), dir])
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes the file system writable again however the test ends.
struct Writable<'a>(&'a str);

impl Drop for Writable<'_> {
    fn drop(&mut self) {
        // A remount can be refused while a descriptor opened for writing is still closing.
        for _ in 0..50 {
            if remount(self.0, "rw") {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20)); // a retry, not a wait for a condition we could await
        }
        eprintln!("could not remount {} read-write", self.0);
    }
}

#[tokio::test]
#[ignore = "needs a tmpfs it may remount read-only: `.ci/run` mounts one and runs this with --ignored"]
async fn a_read_only_data_dir_is_a_typed_error_and_nothing_changes() {
    let root = std::env::var("WALRUS_READONLY_DIR").expect("WALRUS_READONLY_DIR: a tmpfs");
    let dir = std::path::Path::new(&root).join("wal");
    // The blocking backend: no io_uring teardown still holding files when we remount.
    let open = |d: &std::path::Path| common::small(d).io_backend(walrus_async::IoBackend::Blocking);
    let wal = open(&dir).open().await.unwrap();
    for i in 0..5 {
        wal.append("t", format!("e{i}")).await.unwrap();
    }
    wal.close().await.unwrap();
    drop(wal);
    let snapshot = |d: &std::path::Path| {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                (p.display().to_string(), std::fs::read(&p).unwrap())
            })
            .collect();
        v.sort();
        v
    };
    let before = snapshot(&dir);

    let mut ro = false;
    for _ in 0..50 {
        ro = remount(&root, "ro");
        if ro {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20)); // retry of a refused remount
    }
    assert!(ro, "could not remount {root} read-only");
    let writable = Writable(&root);
    let existing = open(&dir).open().await;
    let fresh = open(&dir.join("new")).open().await;
    drop(writable);

    for (what, r) in [("existing log", existing), ("new log", fresh)] {
        match r {
            Err(Error::DataDir { path, source }) => {
                assert!(path.starts_with(&dir), "{what}: {}", path.display());
                assert_eq!(source.raw_os_error(), Some(libc::EROFS), "{what}: {source}");
            }
            Err(e) => panic!("{what}: expected Error::DataDir, got {e}"),
            Ok(_) => panic!("{what}: opened on a read-only file system"),
        }
    }
    assert_eq!(snapshot(&dir), before, "files changed");
    let wal = open(&dir).open().await.unwrap();
    assert_eq!(common::all_entries(&wal, "t").await.len(), 5);
    wal.close().await.unwrap();
}
