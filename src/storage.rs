//! Segment files, spans, the segment allocator and recovery.
//!
//! A segment is a preallocated file named `<epoch-ms>.seg`, created with `O_EXCL` so no process
//! ever truncates or overwrites an existing one, and never written by a later process: each
//! lifetime writes into segments it created itself. The log's writer appends the frames of all
//! topics to the current segment, one after another (the commit stream). A topic's frames in
//! one segment form a [`Span`]; a topic's log is the chain of its spans ordered by offset.
//! Every segment is memory-mapped once; readers slice the map (zero copy).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::format::{self, DecodeError, PAGE, ScanItem, SegmentHeader, SegmentScan};
use crate::io::Trace;

/// A hash map for keys this crate looks up on every append and by the million at open
/// (topic names, segment names): foldhash, seeded per process, instead of SipHash.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// File name suffix of segment files.
pub(crate) const SEGMENT_SUFFIX: &str = ".seg";

/// One segment file.
pub(crate) struct Segment {
    /// Random id; seeds every checksum in the file.
    pub id: u64,
    /// Creation time in epoch ms; also the file name.
    pub ms: u64,
    pub path: PathBuf,
    pub len: u64,
    /// Open only while the file can still be written (it is current, or has groups the writer
    /// may still write): retained data costs no descriptor, reads go through the map.
    file: Mutex<Option<Arc<File>>>,
    /// The segment the writer appends to.
    pub current: AtomicBool,
    /// The whole file, mapped read-only.
    pub map: Bytes,
    /// A sync of this file failed: it takes no more appends, and `sync()` keeps failing.
    pub poisoned: AtomicBool,
    /// Bumped after every completed write; `synced_gen` is the value seen by the last good sync.
    pub write_gen: AtomicU64,
    pub synced_gen: AtomicU64,
    /// Held while the writer may still write to this file (it is current, or a group written
    /// into it is still waiting to be published). Retention only deletes a file with none.
    pub active: AtomicU32,
    /// Time of the newest frame in the file (epoch ms; 0: none): `retention_age` goes by it.
    pub max_ts: AtomicU64,
    /// End of the last completed write, and how much of that a sync has made durable (for
    /// the `walrus_unsynced_bytes` and `walrus_disk_written_bytes` gauges).
    pub written: AtomicU64,
    pub synced_to: AtomicU64,
    /// Deleted by retention: readers drop what they cached of it.
    pub deleted: AtomicBool,
}

impl Segment {
    /// The descriptor of a segment that can still be written.
    pub fn file(&self) -> Option<Arc<File>> {
        lock(&self.file).clone()
    }

    /// A descriptor to sync the file with: the one held, else the file opened again (a
    /// sealed segment whose last writes were not synced yet, under `Milliseconds` or
    /// `NoFsync`).
    pub fn file_for_sync(&self) -> io::Result<Arc<File>> {
        match self.file() {
            Some(f) => Ok(f),
            None => File::open(&self.path).map(Arc::new),
        }
    }

    /// Lets go of the descriptor once nothing can write to the file any more.
    pub fn close_if_sealed(&self) {
        if !self.current.load(Ordering::SeqCst) && self.active.load(Ordering::SeqCst) == 0 {
            lock(&self.file).take();
        }
    }
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("path", &self.path)
            .field("len", &self.len)
            .finish()
    }
}

/// The frames of one topic in one segment: a run of offsets, its frames chained backwards
/// through each frame's `prev` field.
#[derive(Debug)]
pub(crate) struct Span {
    pub segment: Arc<Segment>,
    /// Offset of the first entry.
    pub first_offset: u64,
    /// Position of the first frame.
    pub first_pos: u64,
    /// Position of the last published frame (0 until the first is published).
    pub last_pos: AtomicU64,
    /// One past the last published entry (published with `last_pos`).
    pub end_offset: AtomicU64,
    /// Payload bytes of the published entries.
    pub bytes: AtomicU64,
    /// Append time of the last published frame.
    pub last_ts: AtomicU64,
    /// The `prev` chain cannot be followed (recovery stepped over damage between two of its
    /// frames, or a reader found a frame that no longer verifies): readers walk the segment.
    pub broken: AtomicBool,
    /// Position of the last frame laid out (published or not): the next frame's `prev`.
    /// Only the writer uses it.
    pub written_last: AtomicU64,
    /// End (padded) of the last published frame: where a walk of the segment for this span
    /// stops.
    pub last_next: AtomicU64,
    /// Published frames.
    pub frames: AtomicU64,
    /// `(first_offset, position)` of every [`SAMPLE_EVERY`]th published frame, from the first:
    /// a reader starts its walk back along `prev` at the sample just past what it needs.
    pub samples: Mutex<Vec<(u64, u64)>>,
}

/// One frame in this many of a span is sampled (see [`Span::samples`]): 16 bytes of memory
/// per that many frames bound a walk back along the chain.
pub(crate) const SAMPLE_EVERY: u64 = 64;

impl Span {
    /// A span the writer starts with a frame at `pos`.
    pub fn new(segment: Arc<Segment>, first_offset: u64, first_pos: u64) -> Span {
        Span {
            segment,
            first_offset,
            first_pos,
            last_pos: AtomicU64::new(0),
            end_offset: AtomicU64::new(first_offset),
            bytes: AtomicU64::new(0),
            last_ts: AtomicU64::new(0),
            broken: AtomicBool::new(false),
            written_last: AtomicU64::new(0),
            last_next: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            samples: Mutex::new(Vec::new()),
        }
    }

    /// Records a frame published (or recovered) at `pos`, ending at `next`.
    pub fn add_frame(&self, first_offset: u64, pos: u64, next: u64) {
        if self
            .frames
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(SAMPLE_EVERY)
        {
            lock(&self.samples).push((first_offset, pos));
        }
        self.last_next.store(next, Ordering::Release);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A random 64-bit id without a dependency: std's hasher keys are randomly seeded per process
/// and per `RandomState`.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ms());
    h.write_u32(std::process::id());
    h.finish()
}

fn map_file(file: &File, len: u64) -> io::Result<Bytes> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: the mapping is read-only and this crate never truncates a segment while it is
    // mapped (files are only ever created at full length and deleted whole; a deleted file's
    // pages stay valid while mapped). Readers see bytes a writer is still filling only up to
    // a span's published `last_pos`, which is set after the write completed.
    let map = unsafe { memmap2::MmapOptions::new().len(len as usize).map(file)? };
    Ok(Bytes::from_owner(map))
}

/// Name of the file holding the log's id (8 bytes little-endian, then their CRC-32).
const LOG_ID_FILE: &str = "LOG_ID";

/// The id of the log in `dir`, which every segment header carries. Created on first open. When
/// the file is missing or damaged, the id the segments carry is taken back if they all agree; a
/// new one is drawn if there are none; and if they disagree (segments of several logs, and
/// nothing to say which is this one) opening fails with [`Error::Corrupt`](crate::Error::Corrupt)
/// rather than guess and hide this log's data behind another's.
pub(crate) fn log_id(dir: &Path, trace: &Trace) -> crate::Result<u64> {
    let io_err = |e: io::Error| crate::Error::DataDir {
        path: dir.to_path_buf(),
        source: e,
    };
    let path = dir.join(LOG_ID_FILE);
    match std::fs::read(&path) {
        Ok(b) if b.len() == 12 && crc32fast::hash(&b[..8]).to_le_bytes() == b[8..12] => {
            return Ok(u64::from_le_bytes(b[..8].try_into().expect("8 bytes")));
        }
        Ok(_) => tracing::warn!(path = %path.display(), "damaged log id file"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    let mut ids = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        if entry.file_name().to_str().and_then(segment_ms).is_none() {
            continue;
        }
        let mut h = [0u8; format::SEGMENT_HEADER_COPY + format::SEGMENT_HEADER_LEN];
        let read = File::open(entry.path()).and_then(|f| f.read_exact_at(&mut h, 0));
        if let (Ok(()), Ok(header)) = (read, SegmentHeader::decode_page(&h)) {
            ids.insert(header.log_id);
        }
    }
    let id = match (ids.len(), ids.first()) {
        (0, _) => random_u64(),
        (1, Some(&id)) => {
            tracing::warn!(path = %path.display(), "log id file missing or damaged; taken back from the segments");
            id
        }
        _ => {
            return Err(crate::Error::Corrupt {
                path,
                position: 0,
                reason: format!(
                    "missing or damaged, and the segment files belong to {} different logs; \
                     restore it, or move the other logs' segments away",
                    ids.len()
                ),
            });
        }
    };
    let mut b = id.to_le_bytes().to_vec();
    b.extend_from_slice(&crc32fast::hash(&b).to_le_bytes());
    crate::io::replace_file(trace, dir, LOG_ID_FILE, &b).map_err(io_err)?;
    Ok(id)
}

/// Refuses a directory holding segment files of another format version: fails with
/// [`Error::UnsupportedFormat`](crate::Error::UnsupportedFormat) naming the first such file.
/// Reads only; a header that does not decode at all is left to recovery (damage).
pub(crate) fn check_format(dir: &Path) -> crate::Result<()> {
    let io_err = |e: io::Error| crate::Error::DataDir {
        path: dir.to_path_buf(),
        source: e,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        if let Some(ms) = entry.file_name().to_str().and_then(segment_ms) {
            names.push((ms, entry.path()));
        }
    }
    names.sort();
    for (_, path) in names {
        let mut h = [0u8; format::SEGMENT_HEADER_COPY + format::SEGMENT_HEADER_LEN];
        let Ok(file) = File::open(&path) else {
            continue;
        };
        let n = file.read_at(&mut h, 0).unwrap_or(0);
        let found = match SegmentHeader::decode_page(&h[..n]) {
            Err(DecodeError::Version(v)) => Some(v),
            // Versions 1 and 2 laid their header out differently (version 1 had no log id and
            // its checksum elsewhere), and had no second copy: their magic and version field
            // are enough to know them.
            Err(_) if h[..8] == format::SEGMENT_MAGIC && n >= 10 => {
                Some(u16::from_le_bytes([h[8], h[9]])).filter(|v| (1..=2).contains(v))
            }
            _ => None,
        };
        if let Some(found) = found {
            return Err(crate::Error::UnsupportedFormat {
                path,
                found,
                supported: format::FORMAT_VERSION,
            });
        }
    }
    Ok(())
}

/// Creates a new segment file of `len` bytes named no earlier than `min_ms`: preallocated, its
/// header written and synced, the directory synced. A failure leaves no file behind.
pub(crate) fn create_segment(
    dir: &Path,
    min_ms: u64,
    len: u64,
    log_id: u64,
    trace: &Trace,
) -> io::Result<Segment> {
    let mut ms = now_ms().max(min_ms);
    let (file, path) = loop {
        let path = dir.join(format!("{ms}{SEGMENT_SUFFIX}"));
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => {
                trace.created(&path, &f);
                break (f, path);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => ms += 1,
            Err(e) => return Err(e),
        }
    };
    let build = || -> io::Result<Segment> {
        trace.before_create()?;
        preallocate(&file, len)?;
        trace.extended(&file, len);
        let header = SegmentHeader {
            segment_id: random_u64(),
            created_ms: ms,
            len,
            log_id,
        };
        crate::io::write_at(trace, &file, 0, &header.encode_page())?;
        crate::io::sync_file(trace, &file)?;
        crate::io::sync_dir(trace, dir)?;
        let map = map_file(&file, len)?;
        Ok(Segment {
            id: header.segment_id,
            ms,
            path: path.clone(),
            len,
            file: Mutex::new(Some(Arc::new(file.try_clone()?))),
            current: AtomicBool::new(false),
            map,
            poisoned: AtomicBool::new(false),
            write_gen: AtomicU64::new(0),
            synced_gen: AtomicU64::new(0),
            active: AtomicU32::new(0),
            max_ts: AtomicU64::new(0),
            written: AtomicU64::new(PAGE),
            synced_to: AtomicU64::new(PAGE),
            deleted: AtomicBool::new(false),
        })
    };
    match build() {
        Ok(s) => {
            tracing::debug!(path = %s.path.display(), len, "segment created");
            Ok(s)
        }
        Err(e) => {
            if std::fs::remove_file(&path).is_ok() {
                trace.removed(&path);
            }
            let _ = crate::io::sync_dir(trace, dir);
            Err(e)
        }
    }
}

fn preallocate(file: &File, len: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: plain syscall on a valid, owned descriptor.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
            return Err(e);
        }
    }
    file.set_len(len)
}

/// Parses `<digits>.seg`.
pub(crate) fn segment_ms(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Only the name the log writes: `0123.seg` would be a second name for `123.seg`.
    if digits.len() > 1 && digits.starts_with('0') {
        return None;
    }
    digits.parse().ok()
}

/// What recovery learned about one span.
pub(crate) struct RecoveredSpan {
    pub span: Arc<Span>,
    /// Offsets of the valid frames, as contiguous runs.
    pub runs: Vec<Range<u64>>,
}

/// What recovery found in a namespace directory.
#[derive(Default)]
pub(crate) struct Recovered {
    pub segments: Vec<Arc<Segment>>,
    pub topics: FastMap<String, Vec<RecoveredSpan>>,
    /// Time of the newest frame found.
    pub max_ts: u64,
    pub checksum_failures: u64,
    pub max_ms: u64,
    pub deleted_empty: u64,
    /// Segments of another log found in the directory (ignored, left in place).
    pub foreign: u64,
    /// This log's id (see [`log_id`]).
    pub log_id: u64,
}

/// Scans every segment in `dir`. Damage is logged, counted and stepped over; only I/O errors
/// reading the directory or opening a file fail recovery.
pub(crate) fn recover(dir: &Path, log_id: u64, trace: &Trace) -> io::Result<Recovered> {
    let started = std::time::Instant::now();
    let mut names: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(ms) = entry.file_name().to_str().and_then(segment_ms)
            && entry.file_type()?.is_file()
        {
            names.push((ms, entry.path()));
        }
    }
    names.sort();
    let mut out = Recovered {
        log_id,
        ..Recovered::default()
    };
    let mut removed_any = false;
    // Segments with frames, their spans and number of frames, in name order.
    let mut scanned: Vec<(Arc<Segment>, Vec<ScannedSpan>, u64)> = Vec::new();
    // Files without a frame that may be deleted: (name, path, map, full-length spare).
    let mut empties: Vec<(u64, PathBuf, Bytes, bool)> = Vec::new();
    for (ms, path) in names {
        out.max_ms = out.max_ms.max(ms);
        let file = OpenOptions::new().read(true).open(&path)?;
        let len = file.metadata()?.len();
        let map = map_file(&file, len)?;
        if let Ok(h) = SegmentHeader::decode_page(&map)
            && h.log_id != log_id
        {
            // Copied or moved here from another log: its offsets are not this log's.
            tracing::warn!(path = %path.display(), "segment belongs to another log; ignored and left in place");
            out.foreign += 1;
            out.checksum_failures += 1;
            continue;
        }
        let next_data = |pos: u64| next_data(&file, pos);
        let Scanned {
            segment_id,
            spans,
            damage,
        } = scan_segment(&path, &map, next_data);
        let failures = damage.len() as u64;
        let Some(segment_id) = segment_id.filter(|_| !spans.is_empty()) else {
            // No frame: either a spare that was never used, or a file whose creation was cut
            // short by a crash (its header is only written, and synced, before first use). If
            // nothing but zeros lies past a valid or unwritten header, no data was ever in it.
            // Only a valid header or none at all: a torn or foreign one is kept for a human.
            let first_page = map.get(..PAGE as usize).unwrap_or(&map);
            let header = SegmentHeader::decode_page(&map);
            let unwritten = first_page.iter().all(|&b| b == 0);
            let rest_empty = next_data(PAGE).is_none_or(|d| {
                map.get(d as usize..)
                    .is_none_or(|r| r.iter().all(|&b| b == 0))
            });
            // A valid header at its full length: a spare that was never used. Cut shorter than
            // its header says: a file cut while the log was down, kept for a human (its
            // offsets are not known any more).
            let full_spare = header.is_ok_and(|h| h.len <= len);
            if full_spare && rest_empty {
                empties.push((ms, path, map, true));
            } else if (unwritten || len == 0) && rest_empty {
                // Creation cut short, or a file emptied by hand: decided below by its name.
                empties.push((ms, path, map, false));
            } else {
                out.checksum_failures += failures.max(1);
                tracing::warn!(path = %path.display(), "segment holds no readable frame; left in place");
            }
            continue;
        };
        out.checksum_failures += failures;
        // What a killed process left in the page cache is read back as if durable, and
        // consumers may checkpoint past it: make it so before anyone sees it. Cheap when clean.
        crate::io::sync_file(trace, &file)?;
        let max_ts = spans.iter().map(|s| s.last_ts).max().unwrap_or(0);
        let stream_end = spans.iter().map(|s| s.last_next).max().unwrap_or(PAGE);
        let segment = Arc::new(Segment {
            id: segment_id,
            ms,
            path: path.clone(),
            len,
            // Recovered segments are never written again (each lifetime writes only files
            // it created): the map is all that is kept.
            file: Mutex::new(None),
            current: AtomicBool::new(false),
            map,
            poisoned: AtomicBool::new(false),
            write_gen: AtomicU64::new(0),
            synced_gen: AtomicU64::new(0),
            active: AtomicU32::new(0),
            max_ts: AtomicU64::new(max_ts),
            // Synced just above.
            written: AtomicU64::new(stream_end),
            synced_to: AtomicU64::new(stream_end),
            deleted: AtomicBool::new(false),
        });
        let frames: u64 = spans.iter().map(|s| s.frames).sum();
        scanned.push((segment, spans, frames));
    }
    // Two files with one segment id: a copy of a segment made by hand (the id is random per
    // file). Reading both would let the copy's frames stand in for the original's; keep the
    // one with more valid frames (the earlier name on a tie) and leave the other alone.
    let mut by_id: FastMap<u64, usize> = FastMap::default();
    let mut keep = vec![true; scanned.len()];
    for (i, (seg, _, frames)) in scanned.iter().enumerate() {
        if let Some(&j) = by_id.get(&seg.id) {
            let (drop, kept) = if *frames > scanned[j].2 {
                (j, i)
            } else {
                (i, j)
            };
            keep[drop] = false;
            by_id.insert(seg.id, kept);
            out.checksum_failures += 1;
            tracing::warn!(
                path = %scanned[drop].0.path.display(),
                original = %scanned[kept].0.path.display(),
                "segment is a copy of another file (same segment id); ignored and left in place"
            );
        } else {
            by_id.insert(seg.id, i);
        }
    }
    for ((segment, spans, _), keep) in scanned.into_iter().zip(keep) {
        if !keep {
            continue;
        }
        for s in spans {
            let span = Span {
                segment: segment.clone(),
                first_offset: s.runs.first().map_or(0, |r| r.start),
                first_pos: s.first_pos,
                last_pos: AtomicU64::new(s.last_pos),
                end_offset: AtomicU64::new(s.runs.last().map_or(0, |r| r.end)),
                bytes: AtomicU64::new(s.bytes),
                last_ts: AtomicU64::new(s.last_ts),
                broken: AtomicBool::new(s.broken),
                written_last: AtomicU64::new(s.last_pos),
                last_next: AtomicU64::new(s.last_next),
                frames: AtomicU64::new(s.frames),
                samples: Mutex::new(s.samples),
            };
            out.topics.entry(s.topic).or_default().push(RecoveredSpan {
                span: Arc::new(span),
                runs: s.runs,
            });
        }
        out.max_ts = out.max_ts.max(segment.max_ts.load(Ordering::Relaxed));
        out.segments.push(segment);
    }
    // A file whose creation a crash cut short is newer than every file with data (a new
    // segment is only made after the one before it); an empty file older than that was
    // emptied by hand, and its offsets are not known: kept for a human.
    let newest_data = out.segments.iter().map(|s| s.ms).max().unwrap_or(0);
    for (ms, path, map, spare) in empties {
        if spare || ms > newest_data {
            drop(map);
            std::fs::remove_file(&path)?;
            trace.removed(&path);
            removed_any = true;
            out.deleted_empty += 1;
            tracing::debug!(path = %path.display(), "deleted a segment that never held data");
        } else {
            out.checksum_failures += 1;
            tracing::warn!(path = %path.display(), "an empty segment file older than others with data (cut or emptied while the log was down); left in place");
        }
    }
    if removed_any {
        crate::io::sync_dir(trace, dir)?;
    }
    for spans in out.topics.values_mut() {
        spans.sort_by_key(|s| (s.span.first_offset, s.span.segment.ms));
    }
    tracing::info!(
        segments = out.segments.len(),
        topics = out.topics.len(),
        damaged = out.checksum_failures,
        foreign = out.foreign,
        deleted_empty = out.deleted_empty,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "recovered"
    );
    Ok(out)
}

/// One topic's frames in one scanned segment.
pub(crate) struct ScannedSpan {
    pub topic: String,
    pub first_pos: u64,
    /// Time of the first accepted frame.
    pub first_ts: u64,
    pub last_pos: u64,
    /// Offsets of the accepted frames, as contiguous runs (in file order, so increasing).
    pub runs: Vec<Range<u64>>,
    pub bytes: u64,
    pub last_ts: u64,
    /// Some frame's `prev` does not lead to the topic's frame before it.
    pub broken: bool,
    /// Every `SAMPLE_EVERY`th accepted frame: (first offset, position).
    pub samples: Vec<(u64, u64)>,
    pub frames: u64,
    /// End (padded) of the last accepted frame.
    pub last_next: u64,
}

/// The first position at or after `pos` that may hold written data: `lseek(SEEK_DATA)`, which
/// on ext4, xfs and tmpfs skips holes and preallocated-but-unwritten extents. `None` when
/// nothing is written from `pos` on; `pos` itself where the call is not supported.
///
/// `// NOTE:` without it, recovery would fault in every page of a preallocated segment's
/// unwritten space (64 MiB by default) just to see zeros.
pub(crate) fn next_data(file: &File, pos: u64) -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: plain syscall on a valid, owned descriptor; it moves only this descriptor's
        // file offset, which nothing else uses (all I/O is positioned).
        let r = unsafe { libc::lseek(file.as_raw_fd(), pos as libc::off_t, libc::SEEK_DATA) };
        if r >= 0 {
            return Some(r as u64);
        }
        if io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
            return None;
        }
    }
    let _ = file;
    Some(pos)
}

/// One stretch of damage a segment scan found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Damage {
    /// Byte position in the file where it starts.
    pub pos: u64,
    /// Where the next valid frame starts (`None`: nothing valid after it in the file).
    pub next: Option<u64>,
    pub kind: DamageKind,
    pub error: String,
    /// Offsets of topics whose frames are missing across this stretch (a topic's next frame
    /// after it did not continue where its frame before it ended).
    pub affected: Vec<(String, Range<u64>)>,
}

/// What kind of damage a [`Damage`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DamageKind {
    /// The segment header (or one of its two copies) does not verify.
    Header,
    /// Bytes that are no frame, with valid frames after them.
    Frame,
    /// Bytes that are no frame, with nothing valid after them: a torn or damaged tail.
    Tail,
    /// A valid frame that repeats offsets its topic already had in this segment.
    Repeat,
    /// The file is shorter than its header says.
    CutShort,
}

/// What [`scan_segment`] found in one segment.
pub(crate) struct Scanned {
    /// From the header; `None` when no header copy verifies (nothing can be read then).
    pub segment_id: Option<u64>,
    pub spans: Vec<ScannedSpan>,
    pub damage: Vec<Damage>,
}

/// The first position at or after `pos` that is not written data (`lseek(SEEK_HOLE)`): the end
/// of a segment's written part. `None` where the call is not supported.
pub(crate) fn next_hole(file: &File, pos: u64) -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: as in `next_data`.
        let r = unsafe { libc::lseek(file.as_raw_fd(), pos as libc::off_t, libc::SEEK_HOLE) };
        if r >= 0 {
            return Some(r as u64);
        }
    }
    let _ = (file, pos);
    None
}

/// Finds the frames of one segment and groups them by topic, in file order, with the damage
/// found (each stretch once).
///
/// A frame whose offsets do not follow the topic's frames before it in this segment (it
/// starts below their end) is counted as damage and left out: a topic's frames in one segment
/// only ever go up.
pub(crate) fn scan_segment(
    path: &Path,
    map: &[u8],
    next_data: impl Fn(u64) -> Option<u64>,
) -> Scanned {
    scan_segment_with(path, map, next_data, |_, _| {})
}

/// [`scan_segment`], calling `on_frame` with each accepted frame and its topic.
pub(crate) fn scan_segment_with(
    path: &Path,
    map: &[u8],
    next_data: impl Fn(u64) -> Option<u64>,
    mut on_frame: impl FnMut(&str, &format::Frame),
) -> Scanned {
    let mut damage: Vec<Damage> = Vec::new();
    let out = |pos: u64, next: Option<u64>, kind: DamageKind, error: String| Damage {
        pos,
        next,
        kind,
        error,
        affected: Vec::new(),
    };
    let segment_id = match SegmentHeader::decode_page(map) {
        Ok(h) => {
            if let Err(e) = SegmentHeader::decode(map) {
                tracing::warn!(path = %path.display(), position = 0, error = %e, "damaged segment header; read from its copy");
                damage.push(out(
                    0,
                    Some(PAGE),
                    DamageKind::Header,
                    format!("first header copy: {e}"),
                ));
            }
            h.segment_id
        }
        // An unwritten header (creation cut short) holds no frames either; not damage.
        Err(DecodeError::Zero | DecodeError::Short) => {
            return Scanned {
                segment_id: None,
                spans: Vec::new(),
                damage,
            };
        }
        Err(e) => {
            // Every frame's checksum is seeded with the id in the header: without it nothing
            // in the file can be verified.
            tracing::warn!(path = %path.display(), position = 0, error = %e, "damaged segment header; the file is left in place unread");
            damage.push(out(0, None, DamageKind::Header, e.to_string()));
            return Scanned {
                segment_id: None,
                spans: Vec::new(),
                damage,
            };
        }
    };
    let mut spans: Vec<ScannedSpan> = Vec::new();
    let mut index: FastMap<&[u8], usize> = FastMap::default();
    // Nothing written at all past the header: not even a page to look at.
    if next_data(PAGE).is_none() {
        return Scanned {
            segment_id: Some(segment_id),
            spans,
            damage,
        };
    }
    let len = map.len();
    // For each span, the number of damage stretches seen when its last frame was accepted:
    // a hole in its offsets after a later stretch is put down to that stretch.
    let mut seen_damage: Vec<usize> = Vec::new();
    for item in SegmentScan::new(map, segment_id, PAGE as usize, len) {
        match item {
            ScanItem::Frame(f) => {
                let topic = f.topic(map);
                let i = *index.entry(topic).or_insert_with(|| {
                    spans.push(ScannedSpan {
                        // Valid UTF-8: `decode_frame` checked it.
                        topic: String::from_utf8_lossy(topic).into_owned(),
                        first_pos: f.pos as u64,
                        first_ts: f.timestamp,
                        last_pos: 0,
                        runs: Vec::new(),
                        bytes: 0,
                        last_ts: 0,
                        broken: false,
                        samples: Vec::new(),
                        frames: 0,
                        last_next: 0,
                    });
                    seen_damage.push(damage.len());
                    spans.len() - 1
                });
                let s = &mut spans[i];
                if s.runs.last().is_some_and(|r| f.first_offset < r.end) {
                    s.broken = true;
                    tracing::warn!(path = %path.display(), position = f.pos, first_offset = f.first_offset, "frame repeats offsets of its topic; ignored");
                    damage.push(out(
                        f.pos as u64,
                        Some(f.next as u64),
                        DamageKind::Repeat,
                        format!(
                            "frame of topic {:?} repeats offsets from {}",
                            s.topic, f.first_offset
                        ),
                    ));
                    continue;
                }
                if f.prev != s.last_pos {
                    s.broken = true;
                }
                match s.runs.last_mut() {
                    Some(r) if r.end == f.first_offset => r.end = f.end_offset(),
                    Some(r) => {
                        // A hole: the frames between were lost to the damage since the last.
                        let hole = r.end..f.first_offset;
                        if seen_damage[i] < damage.len()
                            && let Some(d) = damage.last_mut()
                        {
                            d.affected.push((s.topic.clone(), hole));
                        }
                        s.runs.push(f.first_offset..f.end_offset());
                    }
                    None => s.runs.push(f.first_offset..f.end_offset()),
                }
                seen_damage[i] = damage.len();
                if s.frames.is_multiple_of(SAMPLE_EVERY) {
                    s.samples.push((f.first_offset, f.pos as u64));
                }
                on_frame(&s.topic, &f);
                s.frames += 1;
                s.last_pos = f.pos as u64;
                s.last_next = f.next as u64;
                s.last_ts = s.last_ts.max(f.timestamp);
                s.bytes += format::FrameEntries::new(map, &f)
                    .map(|r| r.len() as u64)
                    .sum::<u64>();
            }
            ScanItem::Skipped { pos, next, error } => {
                tracing::warn!(path = %path.display(), position = pos, next, %error, "skipped damaged frame");
                damage.push(out(
                    pos as u64,
                    Some(next as u64),
                    DamageKind::Frame,
                    error.to_string(),
                ));
            }
            ScanItem::End {
                error: DecodeError::Zero,
                ..
            } => {}
            ScanItem::End { pos, error } => {
                tracing::warn!(path = %path.display(), position = pos, %error, "cut damaged or torn tail of segment");
                damage.push(out(pos as u64, None, DamageKind::Tail, error.to_string()));
            }
        }
    }
    if len as u64 > PAGE
        && let Ok(h) = SegmentHeader::decode_page(map)
        && h.len > len as u64
    {
        tracing::warn!(path = %path.display(), file_len = len, "segment cut short by the end of the file; keeping the frames before the cut");
        damage.push(out(
            len as u64,
            None,
            DamageKind::CutShort,
            format!("the file has {len} bytes, its header says {}", h.len),
        ));
    }
    Scanned {
        segment_id: Some(segment_id),
        spans,
        damage,
    }
}

/// Creates segment files for the writer (keeping one spare created ahead) and keeps the
/// registry of live segments.
pub(crate) struct Allocator {
    dir: PathBuf,
    log_id: u64,
    segment_bytes: u64,
    state: tokio::sync::Mutex<AllocState>,
    trace: Trace,
    /// Every live segment, by name.
    pub registry: Mutex<BTreeMap<u64, Arc<Segment>>>,
}

struct AllocState {
    current: Option<Arc<Segment>>,
    next_ms: u64,
    spare: Option<tokio::task::JoinHandle<io::Result<Segment>>>,
}

impl Allocator {
    pub(crate) fn new(
        dir: PathBuf,
        segment_bytes: u64,
        recovered: &[Arc<Segment>],
        max_ms: u64,
        log_id: u64,
        trace: Trace,
    ) -> Allocator {
        let registry = recovered.iter().map(|s| (s.ms, s.clone())).collect();
        Allocator {
            dir,
            log_id,
            segment_bytes,
            state: tokio::sync::Mutex::new(AllocState {
                current: None,
                next_ms: max_ms + 1,
                spare: None,
            }),
            trace,
            registry: Mutex::new(registry),
        }
    }

    /// Makes a new segment with room for at least `need` bytes of frames the current one, and
    /// returns it. The caller (the writer) holds one `active` count on it; the previous
    /// current segment is no longer current.
    pub(crate) async fn rotate(&self, need: u64) -> io::Result<Arc<Segment>> {
        let min = format::align_up(need, PAGE)
            .and_then(|n| n.checked_add(PAGE))
            .ok_or_else(|| io::Error::other("frame too large"))?;
        let seg_len = self.segment_bytes.max(min);
        let mut st = self.state.lock().await;
        let mut segment = None;
        if let Some(spare) = st.spare.take() {
            match spare.await {
                Ok(Ok(s)) if s.len >= seg_len => segment = Some(s),
                // Too small for this frame. Not kept for later: its name is older than the
                // larger file made now, and names must follow the order files are written in.
                Ok(Ok(s)) => {
                    let (dir, trace, path) = (self.dir.clone(), self.trace.clone(), s.path.clone());
                    drop(s);
                    if let Err(e) = crate::io::blocking(move || {
                        std::fs::remove_file(&path)?;
                        trace.removed(&path);
                        crate::io::sync_dir(&trace, &dir)
                    })
                    .await
                    {
                        tracing::warn!(error = %e, "could not delete a spare segment too small to use");
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "creating a spare segment failed"),
                Err(e) => tracing::warn!(error = %e, "spare segment task failed"),
            }
        }
        let segment = match segment {
            Some(s) => s,
            None => {
                let (dir, ms, trace) = (self.dir.clone(), st.next_ms, self.trace.clone());
                let id = self.log_id;
                crate::io::blocking(move || create_segment(&dir, ms, seg_len, id, &trace)).await?
            }
        };
        st.next_ms = st.next_ms.max(segment.ms + 1);
        let segment = Arc::new(segment);
        // Counted as written to before retention can see it in the registry.
        segment.active.fetch_add(1, Ordering::AcqRel);
        segment.current.store(true, Ordering::SeqCst);
        lock(&self.registry).insert(segment.ms, segment.clone());
        if let Some(old) = st.current.replace(segment.clone()) {
            old.current.store(false, Ordering::SeqCst);
            old.close_if_sealed();
        }
        if st.spare.is_none() {
            let (dir, ms, size) = (self.dir.clone(), st.next_ms, self.segment_bytes);
            let (trace, id) = (self.trace.clone(), self.log_id);
            st.next_ms += 1;
            st.spare = Some(tokio::task::spawn_blocking(move || {
                create_segment(&dir, ms, size, id, &trace)
            }));
        }
        tracing::debug!(path = %segment.path.display(), len = segment.len, "segment started");
        Ok(segment)
    }

    /// Removes the spare segment if one was made (at close).
    pub(crate) async fn discard_spare(&self) {
        let spare = self.state.lock().await.spare.take();
        if let Some(Ok(Ok(s))) = match spare {
            Some(h) => Some(h.await),
            None => None,
        } {
            let (dir, trace) = (self.dir.clone(), self.trace.clone());
            let path = s.path.clone();
            drop(s);
            match crate::io::blocking(move || {
                std::fs::remove_file(&path)?;
                trace.removed(&path);
                crate::io::sync_dir(&trace, &dir)
            })
            .await
            {
                Ok(()) => tracing::debug!("unused spare segment deleted"),
                Err(e) => tracing::warn!(error = %e, "could not delete the unused spare segment"),
            }
        }
    }

    pub(crate) fn segments(&self) -> Vec<Arc<Segment>> {
        lock(&self.registry).values().cloned().collect()
    }

    /// The segment the writer appends to (never deleted by retention).
    pub(crate) async fn current_ms(&self) -> Option<u64> {
        self.state.lock().await.current.as_ref().map(|s| s.ms)
    }

    /// Drops `ms` from the live segments.
    pub(crate) fn forget(&self, ms: u64) -> Option<Arc<Segment>> {
        lock(&self.registry).remove(&ms)
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(
        miri,
        ignore = "Miri cannot call fallocate or memory-map a file (create_segment)"
    )]
    fn new_segments_never_reuse_an_existing_name() {
        let dir = tempfile::tempdir().unwrap();
        // A file "from the future", as if the clock had stepped backwards since it was made.
        let future = now_ms() + 1_000_000;
        let taken = dir.path().join(format!("{future}{SEGMENT_SUFFIX}"));
        std::fs::write(&taken, b"precious").unwrap();
        let a = create_segment(dir.path(), future, 64 << 10, 1, &Trace::default()).unwrap();
        let b = create_segment(dir.path(), future, 64 << 10, 1, &Trace::default()).unwrap();
        assert_eq!((a.ms, b.ms), (future + 1, future + 2));
        assert_eq!(std::fs::read(&taken).unwrap(), b"precious");
        assert_eq!(a.len, 64 << 10);
        assert_eq!(SegmentHeader::decode_page(&a.map).unwrap().created_ms, a.ms);
        assert_ne!(a.id, b.id);
    }

    #[test]
    fn segment_names_parse_strictly() {
        assert_eq!(segment_ms("123.seg"), Some(123));
        for bad in ["", ".seg", "12a.seg", "123.seg.tmp", "-1.seg", "123"] {
            assert_eq!(segment_ms(bad), None, "{bad}");
        }
    }
}
