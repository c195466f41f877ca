//! I/O backend selection: explicit choice, `WALRUS_IO_BACKEND`, and fallback without panics.

use walrus_async::{Error, IoBackend, Walrus};

#[tokio::test]
async fn the_backend_in_use_is_reported_and_follows_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Walrus::open(dir.path()).await.unwrap();
    let used = wal.stats().backend;
    assert_ne!(
        used,
        IoBackend::Auto,
        "stats name the backend actually in use"
    );
    match std::env::var("WALRUS_IO_BACKEND").as_deref() {
        Ok("blocking") => assert_eq!(used, IoBackend::Blocking),
        Ok("io_uring") => assert_eq!(used, IoBackend::IoUring),
        _ => {}
    }
    wal.append("t", "x").await.unwrap();
    wal.close().await.unwrap();
}

#[tokio::test]
async fn an_explicit_builder_choice_beats_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Walrus::builder()
        .data_dir(dir.path())
        .io_backend(IoBackend::Blocking)
        .open()
        .await
        .unwrap();
    assert_eq!(wal.stats().backend, IoBackend::Blocking);
    wal.append("t", "x").await.unwrap();
}

/// A runtime without an I/O driver cannot host io_uring completions: `Auto` falls back to the
/// blocking backend and `IoUring` is a typed error. Neither panics.
#[test]
fn no_io_driver_falls_back_or_fails_cleanly() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let wal = Walrus::builder()
            .data_dir(dir.path().join("auto"))
            .io_backend(IoBackend::Auto)
            .open()
            .await
            .unwrap();
        assert_eq!(wal.stats().backend, IoBackend::Blocking);
        assert_eq!(wal.append("t", "x").await.unwrap(), 0);
        wal.close().await.unwrap();
        if cfg!(target_os = "linux") {
            let err = Walrus::builder()
                .data_dir(dir.path().join("uring"))
                .io_backend(IoBackend::IoUring)
                .open()
                .await
                .unwrap_err();
            assert!(matches!(err, Error::BackendUnavailable { .. }), "{err}");
            assert!(err.to_string().contains("io_uring"));
        }
    });
}
