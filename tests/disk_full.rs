//! A real full disk: a small tmpfs (mounted by `.ci/run`, path in `WALRUS_ENOSPC_DIR`). Appends
//! fail with ENOSPC as a typed error, nothing acknowledged is lost, no segment file is left
//! half-created, and once space is freed appends work again without a restart.

mod common;

use walrus_async::{Error, FsyncSchedule, Walrus};

#[tokio::test]
#[ignore = "needs a small tmpfs: `.ci/run` mounts one and runs this with --ignored"]
async fn enospc_fails_cleanly_and_clears_without_restart() {
    let root = std::env::var("WALRUS_ENOSPC_DIR").expect("WALRUS_ENOSPC_DIR: a small tmpfs");
    let dir = tempfile::tempdir_in(&root).unwrap();
    let ballast = dir.path().join("ballast");
    // Take a third of the file system so freeing it makes room again later.
    let total = {
        // SAFETY: statvfs fills the struct we pass.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let path = std::ffi::CString::new(root.as_bytes()).unwrap();
        // SAFETY: valid NUL-terminated path and out-pointer.
        assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut st) }, 0);
        st.f_blocks * st.f_frsize
    };
    std::fs::write(&ballast, vec![1u8; (total / 3) as usize]).unwrap();

    let open = || {
        Walrus::builder()
            .data_dir(dir.path().join("wal"))
            .segment_bytes(64 << 10)
            .fsync(FsyncSchedule::SyncEach)
            .open()
    };
    let wal = open().await.unwrap();
    let mut acked = Vec::new();
    let err = loop {
        let data = vec![(acked.len() % 251) as u8; 1000];
        match wal.append("t", data).await {
            Ok(o) => acked.push(o),
            Err(e) => break e,
        }
        assert!(acked.len() < 1_000_000, "the disk never filled");
    };
    let io: std::io::Error = match err {
        Error::Io(e) => e,
        other => panic!("expected an I/O error, got {other}"),
    };
    assert_eq!(io.raw_os_error(), Some(libc::ENOSPC), "{io}");
    assert!(!acked.is_empty());
    // Still full: still a clean error, nothing half-created.
    assert!(wal.append("t", vec![0u8; 1000]).await.is_err());
    for seg in common::segments(&dir.path().join("wal")) {
        let head = std::fs::read(&seg).unwrap();
        assert_eq!(
            &head[..8],
            b"WALRUSAS",
            "{} is a whole segment",
            seg.display()
        );
        assert_eq!(head.len(), 64 << 10);
    }
    // Free space: appends work again, no restart, offsets continue after the acknowledged ones.
    std::fs::remove_file(&ballast).unwrap();
    let next = wal.append("t", vec![7u8; 1000]).await.unwrap();
    assert_eq!(next, *acked.last().unwrap() + 1);
    acked.push(next);
    wal.close().await.unwrap();
    let wal = open().await.unwrap();
    let all = common::all_entries(&wal, "t").await;
    assert_eq!(all.len(), acked.len(), "every acknowledged entry survived");
    for (i, (o, data)) in all.iter().enumerate() {
        assert_eq!(*o, i as u64);
        assert_eq!(data.len(), 1000);
    }
}
