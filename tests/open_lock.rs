//! Opening: directory creation, the exclusive lock, bad data directories, namespaces.

mod common;

use walrus_async::{Error, Walrus};

#[tokio::test]
async fn a_second_open_of_the_same_directory_is_locked_until_close() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Walrus::open(dir.path()).await.unwrap();
    wal.append("t", "x").await.unwrap();
    let err = Walrus::open(dir.path()).await.unwrap_err();
    assert!(
        matches!(&err, Error::Locked { path } if path == dir.path()),
        "{err}"
    );
    assert!(err.to_string().contains(&dir.path().display().to_string()));
    // The first handle is unaffected.
    assert_eq!(wal.append("t", "y").await.unwrap(), 1);
    wal.close().await.unwrap();
    let again = Walrus::open(dir.path()).await.unwrap();
    assert_eq!(again.entry_count("t"), 2);
}

#[tokio::test]
async fn dropping_the_last_handle_releases_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Walrus::open(dir.path()).await.unwrap();
    wal.append("t", "x").await.unwrap();
    drop(wal);
    let reopened = common::open_when_unlocked(|| Walrus::builder().data_dir(dir.path())).await;
    assert_eq!(
        reopened.read_next("t", true).await.unwrap().unwrap().data,
        "x"
    );
}

#[tokio::test]
async fn a_data_dir_that_is_a_file_or_cannot_be_created_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"not a dir").unwrap();
    let err = Walrus::open(&file).await.unwrap_err();
    assert!(
        matches!(&err, Error::DataDir { path, .. } if path == &file),
        "{err}"
    );
    assert!(err.to_string().contains("file"), "{err}");
    let under_file = file.join("sub");
    assert!(matches!(
        Walrus::open(&under_file).await,
        Err(Error::DataDir { .. })
    ));
    // /proc does not take new directories, even for root.
    let proc_dir = std::path::Path::new("/proc/walrus-async-test");
    assert!(matches!(
        Walrus::open(proc_dir).await,
        Err(Error::DataDir { .. })
    ));
    // Nothing was damaged: the file is as it was, and a good directory still opens.
    assert_eq!(std::fs::read(&file).unwrap(), b"not a dir");
    let ok = Walrus::open(dir.path().join("wal")).await.unwrap();
    assert_eq!(ok.append("t", "x").await.unwrap(), 0);
}

#[tokio::test]
async fn keys_are_separate_namespaces_with_separate_locks() {
    let dir = tempfile::tempdir().unwrap();
    let open = |key: &str| Walrus::builder().data_dir(dir.path()).key(key).open();
    let keys = [
        "tenant-1", "tenant-2", "..", "/", "a/b", "a%2Fb", "ns-x", "LOCK", "ü",
    ];
    let mut wals = Vec::new();
    for k in keys {
        let w = open(k).await.unwrap();
        w.append("t", k).await.unwrap();
        wals.push(w);
    }
    let root = Walrus::open(dir.path()).await.unwrap();
    assert!(root.topics().is_empty());
    assert!(matches!(open("tenant-1").await, Err(Error::Locked { .. })));
    // Every key got its own directory directly under the data dir, nothing escaped.
    let subdirs: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .collect();
    assert_eq!(subdirs.len(), keys.len());
    assert!(!dir.path().parent().unwrap().join("t").exists());
    for (w, k) in wals.iter().zip(keys) {
        let e = w.read_next("t", true).await.unwrap().unwrap();
        assert_eq!(e.data, k.as_bytes(), "key {k:?} reads its own data");
        w.close().await.unwrap();
    }
    // An empty key means no key: the root namespace (still held by `root`).
    assert!(matches!(open("").await, Err(Error::Locked { .. })));
    let long = "k".repeat(300);
    let err = open(&long).await.unwrap_err();
    assert!(matches!(err, Error::InvalidKey { .. }), "{err}");
}

#[tokio::test]
async fn invalid_configuration_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    for b in [
        Walrus::builder().segment_bytes(1024),
        Walrus::builder().queue_capacity(0),
        Walrus::builder().max_batch_entries(0),
        Walrus::builder().max_batch_bytes(usize::MAX),
    ] {
        let err = b.data_dir(dir.path()).open().await.unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
    }
    // 64 KiB segments are the documented minimum and work.
    let wal = Walrus::builder()
        .data_dir(dir.path())
        .segment_bytes(64 << 10)
        .open()
        .await
        .unwrap();
    for i in 0..200u64 {
        assert_eq!(wal.append("t", vec![7u8; 1000]).await.unwrap(), i);
    }
    assert!(wal.stats().segments > 1);
}

#[test]
fn works_on_a_multi_thread_runtime_and_futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let wal = Walrus::open(dir.path()).await.unwrap();
        let fut = wal.append("t", "x");
        assert_send(&fut);
        let w = wal.clone();
        let o = tokio::spawn(async move { w.append("t", "y").await })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(fut.await.unwrap() + o, 1);
        let w = wal.clone();
        tokio::spawn(async move { w.read_next("t", true).await })
            .await
            .unwrap()
            .unwrap();
        wal.close().await.unwrap();
    });
}
