//! `WALRUS_DATA_DIR` and `WALRUS_INSTANCE_KEY` are honoured when the builder does not set them,
//! and the builder wins. This is the only test in its binary because it sets process-wide
//! environment variables.

use walrus_async::Walrus;

#[tokio::test]
async fn environment_defaults_and_builder_overrides() {
    let env_dir = tempfile::tempdir().unwrap();
    let builder_dir = tempfile::tempdir().unwrap();
    // SAFETY: no other thread of this test binary reads or writes the environment.
    unsafe {
        std::env::set_var("WALRUS_DATA_DIR", env_dir.path());
        std::env::set_var("WALRUS_INSTANCE_KEY", "from-env");
    }
    let wal = Walrus::builder().open().await.unwrap();
    wal.append("t", "x").await.unwrap();
    wal.close().await.unwrap();
    assert!(env_dir.path().join("ns-from-env").is_dir());

    let wal = Walrus::builder()
        .data_dir(builder_dir.path())
        .key("from-builder")
        .open()
        .await
        .unwrap();
    wal.close().await.unwrap();
    assert!(builder_dir.path().join("ns-from-builder").is_dir());
    assert!(!env_dir.path().join("ns-from-builder").exists());

    // An explicitly empty key selects the root namespace even when the variable is set.
    let wal = Walrus::builder().key("").open().await.unwrap();
    wal.append("root", "x").await.unwrap();
    wal.close().await.unwrap();
    assert!(env_dir.path().join("LOCK").exists());
    unsafe {
        std::env::remove_var("WALRUS_DATA_DIR");
        std::env::remove_var("WALRUS_INSTANCE_KEY");
    }
}
