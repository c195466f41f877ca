//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use walrus_async::{Error, FsyncSchedule, Walrus, WalrusBuilder};

/// A builder on `dir` with small files so tests roll blocks and segments often.
pub fn small(dir: &Path) -> WalrusBuilder {
    Walrus::builder()
        .data_dir(dir)
        .segment_bytes(256 << 10)
        .fsync(FsyncSchedule::SyncEach)
}

/// The segment files in a namespace directory, oldest first.
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            let ms = p
                .file_name()?
                .to_str()?
                .strip_suffix(".seg")?
                .parse()
                .ok()?;
            Some((ms, p))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

/// Reads every entry of `topic` from offset 0 with `read_at`, returning (offset, data).
pub async fn all_entries(wal: &Walrus, topic: &str) -> Vec<(u64, Vec<u8>)> {
    all_entries_from(wal, topic, 0).await
}

/// Frame layout constants from docs/FORMAT.md, for tests that damage files on purpose.
pub const PAGE: u64 = 4096;
/// The fixed part of a frame header; the topic name follows, then the payload.
pub const FRAME_HEADER: u64 = 44;

/// Positions of the frames of `topic` in a segment file (all topics' frames when `None`),
/// found by reading the length fields from the first frame on (stops at zeros or damage).
pub fn frame_positions(file: &[u8], topic: Option<&str>) -> Vec<u64> {
    let mut pos = PAGE;
    let mut out = Vec::new();
    while (pos + FRAME_HEADER) as usize <= file.len() {
        let p = pos as usize;
        let h = &file[p..p + FRAME_HEADER as usize];
        if h.iter().all(|&b| b == 0) || h[40] != 1 {
            break;
        }
        let topic_len = u64::from(h[41]);
        let payload = u64::from(u32::from_le_bytes(h[8..12].try_into().unwrap()));
        let name = &file[p + 44..p + 44 + topic_len as usize];
        if topic.is_none_or(|t| t.as_bytes() == name) {
            out.push(pos);
        }
        pos = (pos + FRAME_HEADER + topic_len + payload + 7) & !7;
    }
    out
}

/// Where the payload of the frame at `pos` starts.
pub fn payload_start(file: &[u8], pos: u64) -> u64 {
    pos + FRAME_HEADER + u64::from(file[pos as usize + 41])
}

/// Opens once the previous handle's background tasks have let go of the directory lock (they
/// finish draining after the last handle is dropped). Yields to them instead of sleeping.
pub async fn open_when_unlocked(builder: impl Fn() -> WalrusBuilder) -> Walrus {
    for _ in 0..100_000 {
        match builder().open().await {
            Ok(w) => return w,
            Err(Error::Locked { .. }) => tokio::task::yield_now().await,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("the directory lock was never released");
}

/// Lines of a child's stdout, each within `limit` or the child is killed and the test fails:
/// a hung child must fail the test, not hang CI.
pub fn lines_with_deadline(
    child: &mut std::process::Child,
    limit: std::time::Duration,
) -> impl Iterator<Item = String> + use<> {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("piped stdout");
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    std::iter::from_fn(move || match rx.recv_timeout(limit) {
        Ok(line) => Some(line),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => None,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            // SAFETY: plain syscall; the child is ours and not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("the child printed nothing for {limit:?}");
        }
    })
}

/// Like [`all_entries`], from `from` on.
pub async fn all_entries_from(wal: &Walrus, topic: &str, from: u64) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut next = from;
    loop {
        let got = wal.read_at(topic, next, 1 << 20).await.unwrap();
        if got.is_empty() {
            return out;
        }
        for e in got {
            next = e.offset + 1;
            out.push((e.offset, e.data.to_vec()));
        }
    }
}

/// Polls `fut` at most `polls` times, each time after it asked to be woken, and drops it
/// wherever it then stands. `Some(output)` if it finished within that many polls.
///
/// Calling this with `polls` = 1, 2, 3, … until it returns `Some` drops the future at each
/// await point it reaches in turn (what `select!`, `timeout` or a disconnecting client does).
pub async fn poll_then_drop<F: std::future::Future>(fut: F, polls: usize) -> Option<F::Output> {
    struct Wake(std::sync::Arc<tokio::sync::Notify>);
    impl std::task::Wake for Wake {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.notify_one();
        }
    }
    let notify = std::sync::Arc::new(tokio::sync::Notify::new());
    let waker = std::task::Waker::from(std::sync::Arc::new(Wake(notify.clone())));
    let mut fut = std::pin::pin!(fut);
    for i in 0..polls {
        let mut cx = std::task::Context::from_waker(&waker);
        if let std::task::Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return Some(out);
        }
        if i + 1 < polls {
            notify.notified().await;
        }
    }
    None
}

/// Appends batches of 64 × 1000 bytes to `topic` until the directory holds at least `files`
/// segment files; returns the last offset written.
pub async fn fill_segments(wal: &Walrus, dir: &Path, topic: &str, files: usize) -> u64 {
    let mut last = 0;
    while segments(dir).len() < files {
        last = wal
            .append_batch(topic, (0..64).map(|i| vec![i as u8; 1000]))
            .await
            .unwrap()
            .end
            - 1;
    }
    last
}
