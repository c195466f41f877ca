//! The library reports through `tracing` (never stdout): open and recovery at `info`, the
//! backend at `info`, segment creation and deletion at `debug`, damage at `warn` with the file
//! and position. The only test in its binary, because it installs a global subscriber.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn events_at_the_documented_levels() {
    let cap = Capture::default();
    let writer = cap.clone();
    tracing_subscriber::fmt()
        .with_env_filter("walrus_async=debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    for i in 0..3 {
        wal.append("t", format!("entry-{i}")).await.unwrap();
    }
    wal.close().await.unwrap();
    let seg = common::segments(dir.path())[0].clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    let frames = common::frame_positions(&bytes, Some("t"));
    bytes[frames[1] as usize + 30] ^= 1;
    std::fs::write(&seg, bytes).unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    assert_eq!(wal.stats().checksum_failures, 1);
    wal.close().await.unwrap();

    let log = String::from_utf8(cap.0.lock().unwrap().clone()).unwrap();
    let has = |level: &str, msg: &str| log.lines().any(|l| l.contains(level) && l.contains(msg));
    assert!(has("INFO", "I/O backend selected"), "{log}");
    assert!(has("INFO", "log opened"), "{log}");
    assert!(has("DEBUG", "segment created"), "{log}");
    assert!(has("DEBUG", "unused spare segment deleted"), "{log}");
    let warn = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("skipped damaged frame"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(warn.contains(&seg.display().to_string()), "{warn}");
    assert!(warn.contains(&format!("position={}", frames[1])), "{warn}");
}
