//! Writes seed inputs for every fuzz target from a real log.
//!
//! `cargo +nightly run --release --bin gen_seeds -- [OUT]` (default `corpus`, relative to the
//! current directory): opens a log in a temporary directory with the blocking backend, appends
//! to two topics over two lifetimes (so two segment files), persists a checkpoint, closes it,
//! and turns its files into `OUT/<target>/seed-*` inputs in each target's format.

use std::path::{Path, PathBuf};

use walrus_async::{IoBackend, MIN_SEGMENT_BYTES, ReadConsistency, Walrus};
use walrus_fuzz::{DirInput, PAGE, SegmentFile};

/// `walrus_async::fuzzing::FRAME_PARAMS_LEN` bytes: segment id, position, cut.
fn frame_params(segment_id: u64, pos: u16) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&segment_id.to_le_bytes());
    p.extend_from_slice(&pos.to_le_bytes());
    p.extend_from_slice(&0u16.to_le_bytes());
    assert_eq!(p.len(), walrus_async::fuzzing::FRAME_PARAMS_LEN);
    p
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// `b` without its trailing zeros, rounded up to whole pages.
fn trimmed(b: &[u8]) -> &[u8] {
    let used = b.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1);
    &b[..used.div_ceil(PAGE) * PAGE]
}

/// A few appends in one lifetime of the log.
async fn lifetime(dir: &Path, round: u32) -> walrus_async::Result<()> {
    let wal = Walrus::builder()
        .data_dir(dir)
        .io_backend(IoBackend::Blocking)
        .segment_bytes(MIN_SEGMENT_BYTES)
        .consistency(ReadConsistency::StrictlyAtOnce)
        .open()
        .await?;
    wal.append("orders", format!("order #{round}")).await?;
    wal.append_batch("orders", [&b"a"[..], b"", &[7u8; 200][..]])
        .await?;
    wal.append("events", vec![round as u8; 130]).await?;
    wal.append_batch("events", ["x", "yy", "zzz"]).await?;
    wal.read_next("orders", true).await?;
    wal.read_next("events", true).await?;
    wal.close().await
}

fn main() {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    let tmp = tempfile::tempdir().expect("temporary directory");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    for round in 0..2 {
        rt.block_on(lifetime(tmp.path(), round))
            .expect("writing the log");
    }

    let mut segs: Vec<PathBuf> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    let images: Vec<Vec<u8>> = segs.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let checkpoints = std::fs::read(tmp.path().join("checkpoints")).unwrap();
    assert!(
        images.len() >= 2,
        "expected two segment files, got {segs:?}"
    );

    let write = |target: &str, name: String, bytes: &[u8]| {
        let dir = out.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    let mut frames = 0;
    for (i, image) in images.iter().enumerate() {
        let seg = trimmed(image);
        write("segment_scanner", format!("seed-{i}"), seg);
        // The stream from its first frame, as a segment image cut to the first 16 KiB: one
        // seed starting at each of its first frames.
        let segment_id = le_u64(seg, 16);
        let image = &seg[..seg.len().min(16 << 10)];
        let mut pos = PAGE;
        while pos + 44 <= image.len() && frames < 8 * (i + 1) {
            let h = &image[pos..pos + 44];
            if h.iter().all(|&x| x == 0) {
                break;
            }
            let mut seed = frame_params(segment_id, pos as u16);
            seed.extend_from_slice(image);
            write("frame_decoder", format!("seed-{frames}"), &seed);
            frames += 1;
            let topic_len = usize::from(h[41]);
            let payload = u32::from_le_bytes(h[8..12].try_into().unwrap()) as usize;
            pos = (pos + 44 + topic_len + payload + 7) & !7;
        }
    }
    write("checkpoint_decoder", "seed-0".into(), &checkpoints);

    let seg = |i: usize| SegmentFile {
        content: trimmed(&images[i]),
        pages: (images[i].len() / PAGE) as u8,
    };
    let dirs = [
        DirInput {
            segments: vec![seg(0), seg(1)],
            checkpoints: Some(&checkpoints),
            append: false,
        },
        DirInput {
            segments: vec![seg(0)],
            checkpoints: None,
            append: true,
        },
        DirInput {
            segments: vec![seg(1), seg(0)],
            checkpoints: Some(&checkpoints),
            append: true,
        },
    ];
    for (i, d) in dirs.iter().enumerate() {
        write("dir_recovery", format!("seed-{i}"), &d.encode());
    }
    println!(
        "seeds in {}: {} segment, {frames} frame, 1 checkpoint, {} directory",
        out.display(),
        images.len(),
        dirs.len()
    );
}
