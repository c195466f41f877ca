//! The `dir_recovery` harness: arbitrary bytes become the files of a data directory, which is
//! opened, read to the end and closed through the public API only.
//!
//! Input layout:
//!
//! ```text
//! byte 0     flags: bits 0-1 number of segment files (0, 1, 2; 3 reads as 2)
//!                   bit 2    write a `checkpoints` file
//!                   bit 3    append one entry after recovery, and read it back
//! per segment: u16 LE content length (clamped to what is left), u8 file length in pages,
//!              then the content. The file `<1000 + i>.seg` holds the content, zero-extended
//!              (sparse) to `pages * 4096` bytes when that is longer.
//! the rest   the `checkpoints` file (if bit 2)
//! ```
//!
//! The default instance (no key) keeps its segments and `checkpoints` at the top level of the
//! data directory (`Walrus::open_with`: the namespace subdirectory exists only with a key).

use std::hint::black_box;
use std::path::Path;
use std::sync::OnceLock;

use walrus_async::{Error, IoBackend, MIN_SEGMENT_BYTES, Walrus};

/// Page size of the segment format (the first frame starts after one page).
pub const PAGE: usize = 4096;

const FLAG_CHECKPOINTS: u8 = 1 << 2;
const FLAG_APPEND: u8 = 1 << 3;

/// One segment file of a [`DirInput`].
pub struct SegmentFile<'a> {
    /// Bytes written at the start of the file.
    pub content: &'a [u8],
    /// File length in pages (the file is never shorter than `content`).
    pub pages: u8,
}

/// A data directory described by fuzz input.
pub struct DirInput<'a> {
    /// Segment files, named `1000.seg`, `1001.seg`, ...
    pub segments: Vec<SegmentFile<'a>>,
    /// Contents of the `checkpoints` file, if there is one.
    pub checkpoints: Option<&'a [u8]>,
    /// Append an entry after recovery.
    pub append: bool,
}

impl<'a> DirInput<'a> {
    /// Splits fuzz input into files; every input is valid.
    pub fn parse(data: &'a [u8]) -> DirInput<'a> {
        let Some((&flags, mut rest)) = data.split_first() else {
            return DirInput {
                segments: Vec::new(),
                checkpoints: None,
                append: false,
            };
        };
        let mut segments = Vec::new();
        for _ in 0..(flags & 3).min(2) {
            let (len, pages) = match rest {
                [a, b, p, tail @ ..] => {
                    rest = tail;
                    (usize::from(u16::from_le_bytes([*a, *b])), *p)
                }
                _ => (0, 0),
            };
            let (content, tail) = rest.split_at(len.min(rest.len()));
            rest = tail;
            segments.push(SegmentFile { content, pages });
        }
        DirInput {
            segments,
            checkpoints: (flags & FLAG_CHECKPOINTS != 0).then_some(rest),
            append: flags & FLAG_APPEND != 0,
        }
    }

    /// The fuzz input that [`parse`](Self::parse)s back to `self` (for seeds).
    pub fn encode(&self) -> Vec<u8> {
        assert!(self.segments.len() <= 2);
        let mut flags = self.segments.len() as u8;
        if self.checkpoints.is_some() {
            flags |= FLAG_CHECKPOINTS;
        }
        if self.append {
            flags |= FLAG_APPEND;
        }
        let mut out = vec![flags];
        for s in &self.segments {
            let len = u16::try_from(s.content.len()).expect("segment content over 64 KiB");
            out.extend_from_slice(&len.to_le_bytes());
            out.push(s.pages);
            out.extend_from_slice(s.content);
        }
        out.extend_from_slice(self.checkpoints.unwrap_or(&[]));
        out
    }

    /// Writes the files into `dir`.
    pub fn write_to(&self, dir: &Path) -> std::io::Result<()> {
        for (i, s) in self.segments.iter().enumerate() {
            let path = dir.join(format!("{}.seg", 1000 + i));
            std::fs::write(&path, s.content)?;
            let len = u64::from(s.pages) * PAGE as u64;
            if len > s.content.len() as u64 {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)?
                    .set_len(len)?;
            }
        }
        if let Some(c) = self.checkpoints {
            std::fs::write(dir.join("checkpoints"), c)?;
        }
        Ok(())
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// Runs one `dir_recovery` input: the files in a fresh temporary directory (in `/dev/shm`
/// when there is one), opened, every topic read to the end, closed; the directory removed.
pub fn dir_recovery(data: &[u8]) {
    let input = DirInput::parse(data);
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = tempfile::Builder::new()
        .prefix("walrus-fuzz-")
        .tempdir_in(base)
        .expect("temporary directory");
    input.write_to(dir.path()).expect("writing the input files");
    runtime().block_on(exercise(dir.path(), input.append, data.len() as u64));
    dir.close().expect("removing the temporary directory");
}

async fn exercise(dir: &Path, append: bool, input_len: u64) {
    let opened = Walrus::builder()
        .data_dir(dir)
        .io_backend(IoBackend::Blocking)
        .segment_bytes(MIN_SEGMENT_BYTES)
        .open()
        .await;
    let wal = match opened {
        Ok(w) => w,
        Err(e) => {
            black_box(e.to_string());
            return;
        }
    };
    black_box(format!("{:?}", wal.stats()));
    let mut topics = wal.topics();
    topics.sort();
    let mut total = 0u64;
    for t in &topics {
        black_box((wal.entry_count(t), wal.topic_size(t)));
        total += read_all(&wal, t).await;
        // Every entry takes at least one byte of the input (its length prefix).
        assert!(total <= input_len, "{total} entries from {input_len} bytes");
        // The default consumer's polling read persists a checkpoint.
        match wal.read_next(t, true).await {
            Ok(e) => black_box(e.map(|e| e.data.len())),
            Err(e) => black_box(Some(e.to_string().len())),
        };
    }
    if append && let Some(t) = topics.first() {
        match wal.append(t, &b"fuzz"[..]).await {
            Ok(off) => {
                let got = wal.read_at(t, off, usize::MAX).await.expect("reading back");
                let first = got.first().expect("the appended entry");
                assert_eq!((first.offset, &first.data[..]), (off, &b"fuzz"[..]));
            }
            Err(e) => {
                black_box(e.to_string());
            }
        }
    }
    if let Err(e) = wal.close().await {
        black_box(e.to_string());
    }
}

/// Reads `topic` from offset 0 to its end with `read_at`; returns the entries read.
async fn read_all(wal: &Walrus, topic: &str) -> u64 {
    let mut next = 0u64;
    let mut n = 0u64;
    loop {
        match wal.read_at(topic, next, 64 << 10).await {
            Ok(entries) if entries.is_empty() => return n,
            Ok(entries) => {
                for e in entries {
                    assert!(e.offset >= next, "offset {} after {next}", e.offset);
                    black_box(e.data.iter().fold(0u8, |a, &x| a ^ x));
                    next = e.offset + 1;
                    n += 1;
                }
            }
            Err(Error::Truncated { oldest, .. }) if oldest > next => next = oldest,
            Err(e) => {
                black_box(e.to_string());
                return n;
            }
        }
    }
}
