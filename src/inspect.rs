//! Read-only inspection of a log directory: what the `walrus` tool's `inspect`, `verify`,
//! `consumers`, `dump` and `tail` show.
//!
//! Nothing here takes the directory's lock, creates, writes, syncs or deletes anything, so it is
//! safe on a directory another process has open: segment files are only ever appended to and
//! deleted whole. Files are read with `pread` into private buffers (not mapped), so bytes a live
//! writer is still filling can change under a read without affecting anything but that read's
//! result. What a live log writes after the directory was listed is not seen; a file retention
//! deletes meanwhile is skipped.
//!
//! A scan verifies every frame's checksums, so [`inspect`] is also the checksum scan
//! (`walrus verify`): [`Report::problems`] lists each stretch of damage with its file, byte
//! position and the offsets it took from each topic.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> walrus_async::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let wal = walrus_async::Walrus::builder().data_dir(dir.path()).open().await?;
//! wal.append("orders", "one").await?;
//! wal.append("orders", "two").await?;
//! // Works while `wal` is open: nothing is locked or written.
//! let report = walrus_async::inspect::inspect(dir.path(), None, &mut |_| {})?;
//! assert_eq!(report.topics[0].name, "orders");
//! assert_eq!(report.topics[0].entries, 2);
//! assert!(!report.is_damaged());
//! # wal.close().await }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::checkpoint::{self, FLOOR, Reg};
use crate::error::{Error, Result};
use crate::format::{self, FrameEntries, PAGE, ScanItem, SegmentHeader, SegmentScan};
use crate::storage::{self, DamageKind};

/// The version of the report's JSON schema (`walrus --json`). Bumped when a field changes
/// meaning or goes away; new fields may appear without a bump.
pub const SCHEMA_VERSION: u32 = 1;

/// At most this many names are listed per segment and pin (the counts are always whole).
pub const LIST_MAX: usize = 16;

/// Segment files larger than this are reported, not read (a sparse file of terabytes would
/// otherwise take that much memory).
const MAX_READ: u64 = 16 << 30;

/// What [`inspect`] found in a log directory.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Report {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The namespace directory that was read.
    pub dir: PathBuf,
    /// The segment format version this build reads (older ones are refused).
    pub format_version: u16,
    /// The log's id (hex), from its `LOG_ID` file; `None` when missing or damaged.
    pub log_id: Option<String>,
    /// Whether a process holds the directory's lock (has the log open); `None` when this
    /// system cannot tell.
    pub live: Option<bool>,
    /// The process id holding the lock, when known.
    pub holder_pid: Option<u32>,
    /// Segment files, oldest first.
    pub segments: Vec<SegmentInfo>,
    /// Topics, by name.
    pub topics: Vec<TopicInfo>,
    /// Registered consumers, by topic and name.
    pub consumers: Vec<ConsumerInfo>,
    /// Damage and anything else an operator should know, in file order.
    pub problems: Vec<Problem>,
    /// Sums over the above.
    pub totals: Totals,
}

impl Report {
    /// Whether any [`Problem`] is damage (not just a warning).
    pub fn is_damaged(&self) -> bool {
        self.problems.iter().any(|p| p.severity == Severity::Damage)
    }
}

/// One segment file.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct SegmentInfo {
    /// File name.
    pub file: String,
    /// Creation time from the name, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// The file's length.
    pub file_bytes: u64,
    /// Disk space the file takes (`st_blocks` × 512; preallocated space counts).
    pub allocated_bytes: u64,
    /// Bytes from the start of the file to the end of its last valid frame.
    pub written_bytes: u64,
    /// Valid frames in it.
    pub frames: u64,
    /// Number of topics with frames in it.
    pub topic_count: u64,
    /// Up to [`LIST_MAX`] of those topics.
    pub topics: Vec<String>,
    /// Time of its newest frame (ms since the epoch); 0 when it has none.
    pub newest_ms: u64,
    /// The file belongs to another log (copied or moved in): ignored by the log.
    pub foreign: bool,
    /// The file is a copy of this other segment file (same segment id) and is ignored by the
    /// log, which reads the one of the two with more valid frames.
    pub copy_of: Option<String>,
    /// Whether the log may delete it now: nothing pins it. Retention limits
    /// (`retention_bytes`, `retention_age`) are the application's settings, not known here;
    /// they can delete pinned files too.
    pub reclaimable: bool,
    /// Why it is kept (up to [`LIST_MAX`] reasons).
    pub pinned_by: Vec<Pin>,
    /// How many reasons there are in all.
    pub pin_count: u64,
}

/// Why a segment cannot be deleted yet.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(tag = "kind", rename_all = "snake_case")
)]
#[non_exhaustive]
pub enum Pin {
    /// The newest segment of a live log: the writer appends to it.
    Writer,
    /// A consumer of a topic in it has not read past that topic's entries in it.
    Consumer {
        /// The topic.
        topic: String,
        /// The consumer (`""`: the topic's default consumer).
        consumer: String,
        /// Its checkpoint.
        checkpoint: u64,
    },
    /// A topic in it has no consumer: data nobody reads is kept (unless a retention limit
    /// deletes it).
    Unconsumed {
        /// The topic.
        topic: String,
    },
    /// The checkpoint store was found damaged or missing: no data is deleted on consumers'
    /// account until the `checkpoints.damaged-*` file is removed.
    CheckpointStore,
    /// The file holds no readable frame and is not a spare: kept for a human.
    Unreadable,
    /// A file made ahead for the writer, holding no data yet.
    Spare,
}

/// One topic.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct TopicInfo {
    /// Name.
    pub name: String,
    /// Entries retained.
    pub entries: u64,
    /// Payload bytes retained.
    pub bytes: u64,
    /// Offset of the oldest retained entry; `None` when none is.
    pub oldest_offset: Option<u64>,
    /// The offset the next append gets.
    pub next_offset: u64,
    /// Time of the oldest retained entry (ms since the epoch).
    pub oldest_ms: Option<u64>,
    /// Time of the newest entry.
    pub newest_ms: Option<u64>,
    /// Segments holding its entries.
    pub segments: u64,
    /// Offsets between the oldest and the next that no valid frame holds (`[start, end)`):
    /// appends that failed, or entries lost to damage (then also in [`Report::problems`]).
    pub gaps: Vec<[u64; 2]>,
}

/// One registered consumer.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct ConsumerInfo {
    /// Topic.
    pub topic: String,
    /// Name (`""`: the topic's default consumer).
    pub consumer: String,
    /// Durable checkpoint: the next offset it reads.
    pub checkpoint: u64,
    /// Entries from the checkpoint to the topic's end.
    pub lag_entries: u64,
    /// Payload bytes of those entries.
    pub lag_bytes: u64,
    /// Time of the oldest entry it has not consumed (ms since the epoch).
    pub oldest_unconsumed_ms: Option<u64>,
    /// Segment files it alone or with others keeps on disk, and their allocated bytes.
    pub pinned_segments: u64,
    /// See `pinned_segments`.
    pub pinned_bytes: u64,
}

/// Damage, or something else worth an operator's attention.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Problem {
    /// File name, relative to the directory.
    pub file: String,
    /// Byte position in the file.
    pub position: u64,
    /// Damage, or a warning.
    pub severity: Severity,
    /// A stable, machine-readable name: `segment_header`, `frame`, `torn_tail` (a warning),
    /// `repeated_frame`, `cut_short`, `foreign_segment`, `copied_segment`, `no_frames`,
    /// `overlapping_segment`, `checkpoint_record`, `checkpoint_torn_tail`,
    /// `checkpoint_store_missing`, `checkpoint_store_damaged_earlier`, `log_id`, `unreadable`.
    pub kind: &'static str,
    /// What was found, for a human.
    pub message: String,
    /// Offsets of topics the damage took (`[start, end)` per topic), where known.
    pub affected: Vec<Affected>,
}

/// Offsets of one topic a stretch of damage took.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Affected {
    /// The topic.
    pub topic: String,
    /// First offset lost.
    pub start: u64,
    /// One past the last offset lost.
    pub end: u64,
}

/// How bad a [`Problem`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "snake_case")
)]
pub enum Severity {
    /// Bytes that should verify and do not: `walrus verify` exits 1.
    Damage,
    /// Expected after a crash or while a writer runs, or a state an operator should know of.
    Warning,
}

/// Sums of a [`Report`].
#[derive(Clone, Debug, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Totals {
    /// Segment files.
    pub segments: u64,
    /// Their lengths.
    pub file_bytes: u64,
    /// Their allocated disk space.
    pub allocated_bytes: u64,
    /// Their written bytes.
    pub written_bytes: u64,
    /// Files the log may delete now.
    pub reclaimable_segments: u64,
    /// Topics.
    pub topics: u64,
    /// Entries retained.
    pub entries: u64,
    /// Payload bytes retained.
    pub bytes: u64,
    /// Registered consumers.
    pub consumers: u64,
    /// Problems that are damage.
    pub damage: u64,
    /// Problems that are warnings.
    pub warnings: u64,
}

/// Progress of a scan, for a progress bar.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Progress {
    /// Bytes of segment files read so far.
    pub done: u64,
    /// Bytes to read in all (the files' written extents, as far as the system tells).
    pub total: u64,
}

/// Resolves the directory a log with instance `key` keeps in `data_dir`, as
/// [`WalrusBuilder::key`](crate::WalrusBuilder::key) does.
pub fn namespace_path(data_dir: &Path, key: Option<&str>) -> Result<PathBuf> {
    match key.filter(|k| !k.is_empty()) {
        Some(k) => Ok(data_dir.join(crate::lifecycle::namespace_dir(k)?)),
        None => Ok(data_dir.to_path_buf()),
    }
}

/// Reads the log in `data_dir` (namespace `key`) without changing anything, verifying every
/// checksum. `progress` is called after each segment file.
///
/// Fails with [`Error::NotALog`] when the directory holds no log, and with
/// [`Error::UnsupportedFormat`] when its segments are of another format version. Damage is
/// not an error: it is reported in [`Report::problems`].
pub fn inspect(
    data_dir: &Path,
    key: Option<&str>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Report> {
    let dir = namespace_path(data_dir, key)?;
    let names = list(&dir)?;
    storage::check_format(&dir)?;
    let mut problems = Vec::new();
    let log_id = read_log_id(&dir, &mut problems)?;
    let (live, holder_pid) = lock_holder(&dir);
    let store = read_checkpoints(&dir, !names.segments.is_empty(), &mut problems)?;

    // Consumers per topic, for the lag sums taken while scanning.
    let mut members: HashMap<String, Vec<Member>> = HashMap::new();
    let mut floors: HashMap<String, u64> = HashMap::new();
    for ((topic, consumer), reg) in &store.values {
        if consumer == FLOOR {
            floors.insert(topic.clone(), reg.offset);
        } else {
            members.entry(topic.clone()).or_default().push(Member {
                name: consumer.clone(),
                checkpoint: reg.offset,
                lag_entries: 0,
                pinned_segments: 0,
                pinned_bytes: 0,
            });
        }
    }
    for m in members.values_mut() {
        m.sort_by(|a, b| a.name.cmp(&b.name));
    }
    // Per topic, per consumer (in `members` order): bytes not yet read, and the time of the
    // oldest entry not yet read.
    let mut unread: HashMap<String, Vec<(u64, Option<u64>)>> = members
        .iter()
        .map(|(t, ms)| (t.clone(), vec![(0, None); ms.len()]))
        .collect();

    let total: u64 = names
        .segments
        .iter()
        .map(|(_, p)| written_extent(p).unwrap_or(0))
        .sum();
    let mut done = 0u64;
    let mut segments: Vec<SegmentInfo> = Vec::new();
    // Per topic: (first offset, segment index, runs, bytes, first_ts, last_ts) of each span.
    let mut spans: BTreeMap<String, Vec<SpanFound>> = BTreeMap::new();
    // (segment id, index in `segments`) of each file with frames.
    let mut ids: Vec<(u64, usize)> = Vec::new();
    for (ms, path) in &names.segments {
        let file_name = name_of(path);
        let Some(seg) = read_segment(path)? else {
            continue; // deleted by retention since the listing
        };
        done += seg.extent;
        let mut info = SegmentInfo {
            file: file_name.clone(),
            created_ms: *ms,
            file_bytes: seg.len,
            allocated_bytes: seg.allocated,
            written_bytes: 0,
            frames: 0,
            topic_count: 0,
            topics: Vec::new(),
            newest_ms: 0,
            foreign: false,
            copy_of: None,
            reclaimable: false,
            pinned_by: Vec::new(),
            pin_count: 0,
        };
        if let (Ok(h), Some(id)) = (SegmentHeader::decode_page(&seg.bytes), log_id)
            && h.log_id != id
        {
            info.foreign = true;
            problems.push(Problem {
                file: file_name,
                position: 0,
                severity: Severity::Warning,
                kind: "foreign_segment",
                message: "belongs to another log (copied or moved here); the log ignores it".into(),
                affected: Vec::new(),
            });
            segments.push(info);
            progress(Progress { done, total });
            continue;
        }
        let index = segments.len();
        let file = File::open(path).ok();
        let next_data = |pos: u64| match &file {
            Some(f) => storage::next_data(f, pos),
            None => Some(pos),
        };
        let scanned = storage::scan_segment_with(path, &seg.bytes, next_data, |topic, f| {
            // Bytes and time of the entries each consumer of the topic has not read.
            let (Some(ms), Some(acc)) = (members.get(topic), unread.get_mut(topic)) else {
                return;
            };
            for (m, (bytes, oldest)) in ms.iter().zip(acc.iter_mut()) {
                if f.end_offset() <= m.checkpoint {
                    continue;
                }
                *bytes += FrameEntries::new(&seg.bytes, f)
                    .enumerate()
                    .filter(|(i, _)| f.first_offset + *i as u64 >= m.checkpoint)
                    .map(|(_, r)| r.len() as u64)
                    .sum::<u64>();
                oldest.get_or_insert(f.timestamp);
            }
        });
        for d in &scanned.damage {
            let (severity, kind, message) = match d.kind {
                DamageKind::Header => (
                    Severity::Damage,
                    "segment_header",
                    format!("segment header: {}", d.error),
                ),
                DamageKind::Frame => (
                    Severity::Damage,
                    "frame",
                    format!(
                        "damaged frame ({}); valid frames resume at byte {}",
                        d.error,
                        d.next.unwrap_or(0)
                    ),
                ),
                // Bytes that are no frame with nothing valid after them: what a write in
                // progress, or one a crash cut short, leaves (never acknowledged as durable
                // under `SyncEach`; recovery cuts it). Damage to a file's last frames looks
                // the same; it is reported, but not as damage.
                DamageKind::Tail => (
                    Severity::Warning,
                    "torn_tail",
                    format!(
                        "no valid frame from here to the end ({}): an interrupted write (a \
                         crash, or a write in progress), which the log cuts at open",
                        d.error
                    ),
                ),
                DamageKind::Repeat => (Severity::Damage, "repeated_frame", d.error.clone()),
                DamageKind::CutShort => (Severity::Damage, "cut_short", d.error.clone()),
            };
            problems.push(Problem {
                file: file_name.clone(),
                position: d.pos,
                severity,
                kind,
                message,
                affected: d
                    .affected
                    .iter()
                    .map(|(t, r)| Affected {
                        topic: t.clone(),
                        start: r.start,
                        end: r.end,
                    })
                    .collect(),
            });
        }
        if scanned.spans.is_empty() && scanned.damage.is_empty() {
            // A spare made ahead, or a file whose creation a crash cut short: nothing to say,
            // unless it is older than files with data (emptied while the log was down).
            if names.newest_with_data.is_some_and(|n| *ms < n) {
                problems.push(Problem {
                    file: file_name.clone(),
                    position: 0,
                    severity: Severity::Warning,
                    kind: "no_frames",
                    message: "holds no frame but is older than files that do (cut or emptied \
                              while the log was down); the log keeps it for a human"
                        .into(),
                    affected: Vec::new(),
                });
            }
        }
        for s in &scanned.spans {
            info.frames += s.frames;
            info.written_bytes = info.written_bytes.max(s.last_next);
            info.newest_ms = info.newest_ms.max(s.last_ts);
            if info.topics.len() < LIST_MAX {
                info.topics.push(s.topic.clone());
            }
            spans.entry(s.topic.clone()).or_default().push(SpanFound {
                segment: index,
                runs: s.runs.clone(),
                bytes: s.bytes,
                first_ts: s.first_ts,
                last_ts: s.last_ts,
            });
        }
        info.topic_count = scanned.spans.len() as u64;
        if let Some(id) = scanned.segment_id.filter(|_| info.frames > 0) {
            ids.push((id, index));
        }
        segments.push(info);
        progress(Progress { done, total });
    }

    // Two files with one segment id: one is a copy; the log reads the one with more frames
    // (the earlier name on a tie), as here.
    let mut by_id: HashMap<u64, usize> = HashMap::new();
    let mut copies: Vec<(usize, usize)> = Vec::new();
    for &(id, i) in &ids {
        match by_id.get(&id).copied() {
            Some(j) => {
                let (drop, kept) = if segments[i].frames > segments[j].frames {
                    (j, i)
                } else {
                    (i, j)
                };
                copies.push((drop, kept));
                by_id.insert(id, kept);
            }
            None => {
                by_id.insert(id, i);
            }
        }
    }
    for &(drop, kept) in &copies {
        let original = segments[kept].file.clone();
        segments[drop].copy_of = Some(original.clone());
        problems.push(Problem {
            file: segments[drop].file.clone(),
            position: 0,
            severity: Severity::Warning,
            kind: "copied_segment",
            message: format!(
                "a copy of {original} (same segment id); the log ignores it and leaves it in place"
            ),
            affected: Vec::new(),
        });
    }
    for found in spans.values_mut() {
        found.retain(|s| segments[s.segment].copy_of.is_none());
    }
    spans.retain(|_, found| !found.is_empty());

    let mut topics: Vec<TopicInfo> = Vec::new();
    let mut pins: Vec<Vec<Pin>> = vec![Vec::new(); segments.len()];
    let store_damaged = store.damaged;
    for (name, mut found) in spans {
        found.sort_by_key(|s| (s.runs.first().map_or(0, |r| r.start), s.segment));
        // A span whose offsets another one already holds: a copied segment (left out, as the
        // log does).
        let mut kept: Vec<SpanFound> = Vec::new();
        let mut end_so_far: Option<u64> = None;
        for s in found {
            let start = s.runs.first().map_or(0, |r| r.start);
            if end_so_far.is_some_and(|e| start < e) {
                problems.push(Problem {
                    file: segments[s.segment].file.clone(),
                    position: 0,
                    severity: Severity::Warning,
                    kind: "overlapping_segment",
                    message: format!(
                        "its frames of topic {name:?} repeat offsets another segment holds \
                         (a copied file?); the log ignores them"
                    ),
                    affected: Vec::new(),
                });
                continue;
            }
            let end = s.runs.last().map_or(0, |r| r.end);
            end_so_far = Some(end_so_far.map_or(end, |e| e.max(end)));
            kept.push(s);
        }
        let runs: Vec<Range<u64>> = kept.iter().flat_map(|s| s.runs.iter().cloned()).collect();
        let entries: u64 = runs.iter().map(|r| r.end - r.start).sum();
        let oldest = runs.first().map(|r| r.start);
        let end = runs.last().map_or(0, |r| r.end);
        // As the log: offsets below any consumer's checkpoint (or the floor record) were
        // handed out before, even if their entries are gone.
        let highest_checkpoint = members
            .get(&name)
            .and_then(|ms| ms.iter().map(|m| m.checkpoint).max())
            .unwrap_or(0);
        let next = end
            .max(floors.remove(&name).unwrap_or(0))
            .max(highest_checkpoint);
        let mut gaps = Vec::new();
        for w in runs.windows(2) {
            if w[0].end < w[1].start {
                gaps.push([w[0].end, w[1].start]);
            }
        }
        let mut consumers = members.get_mut(&name);
        for m in consumers.iter_mut().flat_map(|ms| ms.iter_mut()) {
            // Entries that exist from the checkpoint on.
            m.lag_entries = runs
                .iter()
                .map(|r| r.end.saturating_sub(r.start.max(m.checkpoint)))
                .sum();
        }
        // Pins: each segment keeps the entries of this topic until every consumer is past
        // them; a topic nobody consumes pins everything of it.
        for s in &kept {
            let s_end = s.runs.last().map_or(0, |r| r.end);
            match &consumers {
                None => pins[s.segment].push(Pin::Unconsumed {
                    topic: name.clone(),
                }),
                Some(ms) => {
                    for m in ms.iter().filter(|m| m.checkpoint < s_end) {
                        pins[s.segment].push(Pin::Consumer {
                            topic: name.clone(),
                            consumer: m.name.clone(),
                            checkpoint: m.checkpoint,
                        });
                    }
                }
            }
        }
        if let Some(ms) = consumers {
            for m in ms.iter_mut() {
                for s in &kept {
                    let s_end = s.runs.last().map_or(0, |r| r.end);
                    if m.checkpoint < s_end {
                        m.pinned_segments += 1;
                        m.pinned_bytes += segments[s.segment].allocated_bytes;
                    }
                }
            }
        }
        topics.push(TopicInfo {
            name,
            entries,
            bytes: kept.iter().map(|s| s.bytes).sum(),
            oldest_offset: oldest,
            next_offset: next,
            oldest_ms: kept.first().map(|s| s.first_ts),
            newest_ms: kept.iter().map(|s| s.last_ts).max(),
            segments: kept.len() as u64,
            gaps,
        });
    }
    // Topics known only from checkpoints (every entry deleted by retention, or a consumer
    // registered before anything was appended): the log has them, empty.
    let listed: std::collections::HashSet<String> = topics.iter().map(|t| t.name.clone()).collect();
    for (name, ms) in &members {
        if !listed.contains(name) {
            let highest = ms.iter().map(|m| m.checkpoint).max().unwrap_or(0);
            let e = floors.entry(name.clone()).or_insert(0);
            *e = (*e).max(highest);
        }
    }
    for (name, next) in floors {
        topics.push(TopicInfo {
            name,
            entries: 0,
            bytes: 0,
            oldest_offset: None,
            next_offset: next,
            oldest_ms: None,
            newest_ms: None,
            segments: 0,
            gaps: Vec::new(),
        });
    }
    topics.sort_by(|a, b| a.name.cmp(&b.name));

    let newest_index = segments
        .iter()
        .rposition(|s| !s.foreign && s.frames > 0 && Some(s.created_ms) >= names.newest_with_data);
    for (i, seg) in segments.iter_mut().enumerate() {
        let mut p = std::mem::take(&mut pins[i]);
        if seg.foreign || seg.copy_of.is_some() {
            seg.reclaimable = false;
            continue;
        }
        if live == Some(true) && newest_index == Some(i) {
            p.insert(0, Pin::Writer);
        }
        if seg.frames == 0 {
            let damaged = problems
                .iter()
                .any(|pr| pr.file == seg.file && pr.severity == Severity::Damage);
            let newest = names.newest_with_data.is_none_or(|n| seg.created_ms > n);
            p.push(if newest && !damaged {
                Pin::Spare
            } else {
                Pin::Unreadable
            });
        }
        if store_damaged && seg.frames > 0 {
            p.push(Pin::CheckpointStore);
        }
        seg.pin_count = p.len() as u64;
        seg.reclaimable = p.is_empty() && seg.frames > 0;
        p.truncate(LIST_MAX);
        seg.pinned_by = p;
    }

    let mut consumers: Vec<ConsumerInfo> = Vec::new();
    for (topic, ms) in members {
        let acc = unread.remove(&topic).unwrap_or_default();
        for (m, (lag_bytes, oldest_ms)) in ms.into_iter().zip(acc) {
            let lag_entries = m.lag_entries;
            consumers.push(ConsumerInfo {
                topic: topic.clone(),
                consumer: m.name,
                checkpoint: m.checkpoint,
                lag_entries,
                lag_bytes,
                oldest_unconsumed_ms: if lag_entries > 0 { oldest_ms } else { None },
                pinned_segments: m.pinned_segments,
                pinned_bytes: m.pinned_bytes,
            });
        }
    }
    consumers.sort_by(|a, b| (&a.topic, &a.consumer).cmp(&(&b.topic, &b.consumer)));

    problems.sort_by(|a, b| (&a.file, a.position).cmp(&(&b.file, b.position)));
    let totals = Totals {
        segments: segments.len() as u64,
        file_bytes: segments.iter().map(|s| s.file_bytes).sum(),
        allocated_bytes: segments.iter().map(|s| s.allocated_bytes).sum(),
        written_bytes: segments.iter().map(|s| s.written_bytes).sum(),
        reclaimable_segments: segments.iter().filter(|s| s.reclaimable).count() as u64,
        topics: topics.len() as u64,
        entries: topics.iter().map(|t| t.entries).sum(),
        bytes: topics.iter().map(|t| t.bytes).sum(),
        consumers: consumers.len() as u64,
        damage: problems
            .iter()
            .filter(|p| p.severity == Severity::Damage)
            .count() as u64,
        warnings: problems
            .iter()
            .filter(|p| p.severity == Severity::Warning)
            .count() as u64,
    };
    Ok(Report {
        schema_version: SCHEMA_VERSION,
        dir,
        format_version: format::FORMAT_VERSION,
        log_id: log_id.map(|id| format!("{id:016x}")),
        live,
        holder_pid,
        segments,
        topics,
        consumers,
        problems,
        totals,
    })
}

struct Member {
    name: String,
    checkpoint: u64,
    lag_entries: u64,
    pinned_segments: u64,
    pinned_bytes: u64,
}

struct SpanFound {
    segment: usize,
    runs: Vec<Range<u64>>,
    bytes: u64,
    first_ts: u64,
    last_ts: u64,
}

struct Listing {
    /// Segment files by name, oldest first.
    segments: Vec<(u64, PathBuf)>,
    /// The newest segment file that has a frame past its header (a cheap look: see `list`).
    newest_with_data: Option<u64>,
}

/// Lists the segments of `dir`, or says it holds no log.
fn list(dir: &Path) -> Result<Listing> {
    let not_a_log = || Error::NotALog {
        path: dir.to_path_buf(),
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Err(not_a_log());
        }
        Err(e) => {
            return Err(Error::DataDir {
                path: dir.to_path_buf(),
                source: e,
            });
        }
    };
    let mut segments = Vec::new();
    let mut marker = false;
    for entry in entries {
        let entry = entry.map_err(|e| Error::DataDir {
            path: dir.to_path_buf(),
            source: e,
        })?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(ms) = storage::segment_ms(name) {
            segments.push((ms, entry.path()));
        } else if matches!(name, "LOCK" | "LOG_ID" | "checkpoints") {
            marker = true;
        }
    }
    if segments.is_empty() && !marker {
        return Err(not_a_log());
    }
    segments.sort();
    let newest_with_data = segments
        .iter()
        .rev()
        .find(|(_, p)| {
            File::open(p)
                .ok()
                .and_then(|f| storage::next_data(&f, PAGE))
                .is_some()
        })
        .map(|(ms, _)| *ms);
    Ok(Listing {
        segments,
        newest_with_data,
    })
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A segment file's bytes: the file's length, zeros past what is written.
struct SegmentBytes {
    bytes: Vec<u8>,
    len: u64,
    allocated: u64,
    extent: u64,
}

/// Reads a segment; `None` when it is gone (deleted since it was listed).
fn read_segment(path: &Path) -> Result<Option<SegmentBytes>> {
    let io_err = |e: io::Error| Error::DataDir {
        path: path.to_path_buf(),
        source: e,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    let meta = file.metadata().map_err(io_err)?;
    let len = meta.len();
    let allocated = {
        use std::os::unix::fs::MetadataExt;
        meta.blocks() * 512
    };
    let cap = match usize::try_from(len) {
        Ok(cap) if len <= MAX_READ => cap,
        _ => {
            return Err(io_err(io::Error::other(
                "a segment file larger than 16 GiB: not read",
            )));
        }
    };
    // Zeroed pages come from the allocator untouched; only the written part is read.
    let mut bytes = vec![0u8; cap];
    let extent = written_end(&file, len);
    let mut at = 0usize;
    while (at as u64) < extent {
        let end = (extent as usize).min(cap);
        match file.read_at(&mut bytes[at..end], at as u64) {
            Ok(0) => break, // cut shorter meanwhile
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(e)),
        }
    }
    Ok(Some(SegmentBytes {
        bytes,
        len,
        allocated,
        extent,
    }))
}

/// Where the written part of a segment ends: the first hole (unwritten space) after the
/// header page, or the file's end.
fn written_end(file: &File, len: u64) -> u64 {
    match storage::next_hole(file, PAGE) {
        Some(h) => h.clamp(PAGE.min(len), len),
        None => len,
    }
}

fn written_extent(path: &Path) -> Option<u64> {
    let f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    Some(written_end(&f, len))
}

/// Reads `LOG_ID` without creating or repairing it.
fn read_log_id(dir: &Path, problems: &mut Vec<Problem>) -> Result<Option<u64>> {
    let path = dir.join("LOG_ID");
    match std::fs::read(&path) {
        Ok(b) if b.len() == 12 && crc32fast::hash(&b[..8]).to_le_bytes() == b[8..12] => {
            let mut id = [0u8; 8];
            id.copy_from_slice(&b[..8]);
            Ok(Some(u64::from_le_bytes(id)))
        }
        Ok(_) => {
            problems.push(Problem {
                file: "LOG_ID".into(),
                position: 0,
                severity: Severity::Warning,
                kind: "log_id",
                message: "damaged: the next open takes the id back from the segments".into(),
                affected: Vec::new(),
            });
            Ok(None)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::DataDir { path, source: e }),
    }
}

struct Store {
    values: HashMap<(String, String), Reg>,
    damaged: bool,
}

/// Reads the checkpoint store without rewriting it or setting damage aside.
fn read_checkpoints(dir: &Path, has_segments: bool, problems: &mut Vec<Problem>) -> Result<Store> {
    let path = dir.join(checkpoint::FILE);
    let mut values = HashMap::new();
    let mut damaged = false;
    match std::fs::read(&path) {
        Ok(bytes) => {
            let d = checkpoint::decode_all(&bytes, &mut values);
            for &at in &d.damage {
                damaged = true;
                problems.push(Problem {
                    file: checkpoint::FILE.into(),
                    position: at as u64,
                    severity: Severity::Damage,
                    kind: "checkpoint_record",
                    message: "bytes that are no checkpoint record; records after them were \
                              read (the next open sets the damaged file aside and deletes \
                              no data on consumers' account until it is removed)"
                        .into(),
                    affected: Vec::new(),
                });
            }
            if d.torn_tail {
                problems.push(Problem {
                    file: checkpoint::FILE.into(),
                    position: d.end as u64,
                    severity: Severity::Warning,
                    kind: "checkpoint_torn_tail",
                    message: "ends in an unfinished record: a write in progress, or one a \
                              crash cut short (the next open cuts it)"
                        .into(),
                    affected: Vec::new(),
                });
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if has_segments {
                damaged = true;
                problems.push(Problem {
                    file: checkpoint::FILE.into(),
                    position: 0,
                    severity: Severity::Warning,
                    kind: "checkpoint_store_missing",
                    message: "missing while segments exist: consumers restart from the oldest \
                              retained entry"
                        .into(),
                    affected: Vec::new(),
                });
            }
        }
        Err(e) => return Err(Error::DataDir { path, source: e }),
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(checkpoint::DAMAGED_PREFIX) {
                damaged = true;
                problems.push(Problem {
                    file: name.to_owned(),
                    position: 0,
                    severity: Severity::Warning,
                    kind: "checkpoint_store_damaged_earlier",
                    message: "an earlier open found the checkpoint store damaged or missing: \
                              no data is deleted on consumers' account until this file is \
                              removed (do so once every consumer has subscribed again)"
                        .into(),
                    affected: Vec::new(),
                });
            }
        }
    }
    Ok(Store { values, damaged })
}

/// Whether a process holds `dir`'s lock, and which, read from `/proc/locks` (Linux) without
/// taking it.
fn lock_holder(dir: &Path) -> (Option<bool>, Option<u32>) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(dir.join("LOCK")) else {
        return (Some(false), None);
    };
    let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
        return (None, None);
    };
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let want = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    for line in locks.lines() {
        // "1: FLOCK  ADVISORY  WRITE 4242 fd:01:123456 0 EOF"
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let Some(i) = fields.iter().position(|f| *f == want)
            && fields.get(1) == Some(&"FLOCK")
            && i >= 1
        {
            let pid = fields.get(i - 1).and_then(|p| p.parse().ok());
            return (Some(true), pid);
        }
    }
    (Some(false), None)
}

/// Whether anything was written where a segment's first frame goes.
fn has_frames(path: &Path) -> bool {
    let mut b = [0u8; 8];
    File::open(path)
        .and_then(|f| f.read_exact_at(&mut b, PAGE))
        .is_ok_and(|()| b != [0u8; 8])
}

/// One entry read by [`read_topic`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RawEntry {
    /// Its offset in the topic.
    pub offset: u64,
    /// Append time, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The payload.
    pub data: Vec<u8>,
}

/// Where [`read_topic`] stopped: pass it back to read what was appended since.
///
/// It keeps the bytes of the segment it stopped in, so reading on (`walrus tail --follow`)
/// reads only what was written since, not the file again.
#[derive(Default)]
pub struct TopicCursor {
    /// The next offset wanted.
    pub next_offset: u64,
    /// Segment (by name time) and byte position of the next frame to look at.
    at: Option<(u64, u64)>,
    /// The bytes of segment `at.0` read so far (its length).
    cached: Option<(u64, Vec<u8>)>,
    /// Ids of the segments read: a later file with one of them is a copy.
    ids: std::collections::HashSet<u64>,
}

impl std::fmt::Debug for TopicCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicCursor")
            .field("next_offset", &self.next_offset)
            .field("at", &self.at)
            .finish_non_exhaustive()
    }
}

impl TopicCursor {
    /// A cursor that reads from `offset` on.
    pub fn from_offset(offset: u64) -> TopicCursor {
        TopicCursor {
            next_offset: offset,
            ..TopicCursor::default()
        }
    }
}

/// Reads up to `limit` entries of `topic` from `cursor` on, without the lock, and moves the
/// cursor past them. See [`read_topic_with`].
pub fn read_topic(
    data_dir: &Path,
    key: Option<&str>,
    topic: &str,
    cursor: &mut TopicCursor,
    limit: usize,
) -> Result<Vec<RawEntry>> {
    let mut out = Vec::new();
    read_topic_with(data_dir, key, topic, cursor, limit as u64, &mut |e| {
        out.push(e);
        Ok(())
    })?;
    Ok(out)
}

/// Hands up to `limit` entries of `topic` from `cursor` on to `each`, in offset order, without
/// the lock, and moves the cursor past them; returns how many. An error from `each` stops
/// the read (the cursor stays past the entries handed out).
///
/// Frames are found by walking the segment files, from the cursor's segment on: the first
/// call walks every file up to the entries wanted, later calls only what was written since.
/// Segments of another log and copies of a segment (an id seen before) are skipped, as the
/// log skips them. A live writer's unfinished frame is not read; a later call reads it once
/// complete.
pub fn read_topic_with(
    data_dir: &Path,
    key: Option<&str>,
    topic: &str,
    cursor: &mut TopicCursor,
    limit: u64,
    each: &mut dyn FnMut(RawEntry) -> std::io::Result<()>,
) -> Result<u64> {
    let dir = namespace_path(data_dir, key)?;
    let names = list(&dir)?;
    storage::check_format(&dir)?;
    let log_id = read_log_id(&dir, &mut Vec::new())?;
    // Which files the writer has started writing frames to, looked at before any is read: a
    // file found started here means the writer had left every earlier one, so reading those
    // afterwards sees them whole. A spare made ahead is not read (nor moved to) until then.
    let started: Vec<bool> = names.segments.iter().map(|(_, p)| has_frames(p)).collect();
    let mut n = 0u64;
    for ((ms, path), started) in names.segments.iter().zip(started) {
        if n >= limit {
            break;
        }
        if !started || cursor.at.is_some_and(|(seg, _)| *ms < seg) {
            continue;
        }
        // The cached bytes of the cursor's file, topped up with what was written since.
        let mut bytes = match cursor.cached.take() {
            Some((seg, b)) if seg == *ms => b,
            _ => Vec::new(),
        };
        let from = match cursor.at {
            Some((s, pos)) if s == *ms => pos,
            _ => PAGE,
        };
        if !top_up(path, &mut bytes, from)? {
            continue; // deleted since the listing
        }
        let Ok(h) = SegmentHeader::decode_page(&bytes) else {
            continue;
        };
        let resumed = cursor.at.is_some_and(|(s, _)| s == *ms);
        if log_id.is_some_and(|id| h.log_id != id) || (!resumed && !cursor.ids.insert(h.segment_id))
        {
            continue; // another log's file, or a copy of one read already
        }
        let mut resume = from as usize;
        let mut stopped = false;
        for item in SegmentScan::new(&bytes, h.segment_id, from as usize, bytes.len()) {
            let f = match item {
                ScanItem::Frame(f) => f,
                ScanItem::End { pos, .. } => {
                    resume = pos;
                    continue;
                }
                ScanItem::Skipped { next, .. } => {
                    resume = next;
                    continue;
                }
            };
            if f.topic(&bytes) == topic.as_bytes() && f.end_offset() > cursor.next_offset {
                for (i, r) in FrameEntries::new(&bytes, &f).enumerate() {
                    let offset = f.first_offset + i as u64;
                    if offset < cursor.next_offset {
                        continue;
                    }
                    if n >= limit {
                        stopped = true;
                        break;
                    }
                    cursor.next_offset = offset + 1;
                    n += 1;
                    let e = RawEntry {
                        offset,
                        timestamp_ms: f.timestamp,
                        data: bytes[r].to_vec(),
                    };
                    if let Err(e) = each(e) {
                        cursor.at = Some((*ms, f.pos as u64));
                        return Err(Error::Io(e));
                    }
                }
            }
            if stopped {
                resume = f.pos;
                break;
            }
            resume = f.next;
        }
        cursor.at = Some((*ms, resume as u64));
        cursor.cached = Some((*ms, bytes));
    }
    Ok(n)
}

/// Makes `bytes` the file's bytes up to the end of its written part, reading again from
/// `from` (bytes before it are final: segments are only appended to). `false`: the file is gone.
fn top_up(path: &Path, bytes: &mut Vec<u8>, from: u64) -> Result<bool> {
    let io_err = |e: io::Error| Error::DataDir {
        path: path.to_path_buf(),
        source: e,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err(e)),
    };
    let len = file.metadata().map_err(io_err)?.len();
    let end = written_end(&file, len).min(MAX_READ);
    let from = if bytes.is_empty() {
        0
    } else {
        from.min(bytes.len() as u64)
    };
    bytes.resize(end.max(from) as usize, 0);
    let mut at = from as usize;
    while at < bytes.len() {
        match file.read_at(&mut bytes[at..], at as u64) {
            Ok(0) => break,
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(e)),
        }
    }
    bytes.truncate(at);
    // Zeros past the written part end the walk there, as in the file.
    bytes.resize(bytes.len() + crate::format::FRAME_HEADER_LEN, 0);
    Ok(true)
}
