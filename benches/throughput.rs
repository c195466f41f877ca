//! walrus-async against Walrus (`walrus-rust` 0.2.0), side by side, in one run.
//!
//! `cargo bench --bench throughput` (full, about 17 min) or `-- --quick` (every workload, briefly;
//! what CI runs). `-- --only W2` runs the workloads whose name starts with `W2`.
//!
//! * Both systems write to data directories on the same disk (`BENCH_DIR`, default the system
//!   temp dir), runs are interleaved in alternating order (A B, B A, A B …, each after a
//!   `sync` so no run shares the disk with the last one's writeback) and each figure is the
//!   median of the runs.
//! * Walrus is driven by threads (its API blocks), walrus-async by tasks on a 2-worker Tokio
//!   runtime, with the same number of concurrent producers.
//! * Every workload reads back what it wrote and checks count, order and a content checksum; a
//!   system that loses entries is reported as such ("LOST"), not timed.
//! * This machine's own limits are measured in the same run (sequential buffered and O_DIRECT
//!   write bandwidth, `fdatasync` latency into fresh and pre-written blocks) and results are also
//!   given as fractions of them.
//! * Results print as a table and go to `target/bench/throughput.jsonl`, one JSON object a line.
//! * A full run runs each group (W1 … W9) in a process of its own, one after the other, each
//!   with its own table and machine limits: walrus-rust keeps the files it deleted open until
//!   its process exits, so in one process their space never came back.
//!
//! The process exits non-zero if walrus-async fails a verification (never on timings).

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;

// ------------------------------------------------------------------------------------------
// Settings

#[derive(Clone, Copy)]
struct Scale {
    quick: bool,
    runs: usize,
    /// How long a timed write phase lasts.
    write_for: Duration,
    /// Entries pre-written for the read workload.
    read_entries: u64,
    /// Bytes written before the reopen workload.
    reopen_bytes: u64,
    /// Bytes for the machine's bandwidth probes.
    probe_bytes: u64,
}

impl Scale {
    fn new(quick: bool) -> Scale {
        if quick {
            Scale {
                quick,
                runs: 1,
                write_for: Duration::from_millis(150),
                read_entries: 20_000,
                reopen_bytes: 64 << 20,
                probe_bytes: 64 << 20,
            }
        } else {
            Scale {
                quick,
                runs: 3,
                write_for: Duration::from_millis(1500),
                read_entries: 1_000_000,
                reopen_bytes: 2 << 30,
                probe_bytes: 1 << 30,
            }
        }
    }
}

fn bench_root() -> PathBuf {
    std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

// ------------------------------------------------------------------------------------------
// Payloads: producer id and sequence number up front, so order and content can be checked.

fn payload(producer: u32, seq: u64, size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size.max(12)];
    v[..4].copy_from_slice(&producer.to_le_bytes());
    v[4..12].copy_from_slice(&seq.to_le_bytes());
    for (i, b) in v[12..].iter_mut().enumerate() {
        *b = (seq as usize + i) as u8;
    }
    v.truncate(size.max(12));
    v
}

/// Order-independent digest of a set of entries (sum of CRCs), plus per-producer order.
#[derive(Default, Clone, PartialEq, Debug)]
struct Digest {
    count: u64,
    crc_sum: u64,
}

impl Digest {
    fn add(&mut self, data: &[u8]) {
        self.count += 1;
        self.crc_sum = self.crc_sum.wrapping_add(u64::from(crc32fast::hash(data)));
    }
    fn merge(&mut self, o: &Digest) {
        self.count += o.count;
        self.crc_sum = self.crc_sum.wrapping_add(o.crc_sum);
    }
}

/// Checks what was read back: same digest, and each producer's entries in sequence order.
struct Checker {
    digest: Digest,
    last_seq: Vec<Option<u64>>,
    out_of_order: u64,
    /// Producers spread their appends over topics (W7): within a topic their sequence
    /// numbers only increase, with gaps.
    gaps_allowed: bool,
}

impl Checker {
    fn new(producers: usize) -> Checker {
        Checker {
            digest: Digest::default(),
            last_seq: vec![None; producers],
            out_of_order: 0,
            gaps_allowed: false,
        }
    }
    /// The entries that follow are another topic's.
    fn next_topic(&mut self) {
        self.last_seq.iter_mut().for_each(|s| *s = None);
    }
    fn add(&mut self, data: &[u8]) {
        let p = u32::from_le_bytes(data[..4].try_into().unwrap()) as usize;
        if p == SEALER as usize {
            return;
        }
        self.digest.add(data);
        let seq = u64::from_le_bytes(data[4..12].try_into().unwrap());
        if let Some(last) = self.last_seq.get_mut(p) {
            if last.is_some_and(|l| seq != l + 1 && !(self.gaps_allowed && seq > l)) {
                self.out_of_order += 1;
            }
            *last = Some(seq);
        }
    }
    fn verdict(&self, written: &Digest) -> Result<(), String> {
        if self.digest.count < written.count {
            return Err(format!(
                "LOST {} of {}",
                written.count - self.digest.count,
                written.count
            ));
        }
        if self.digest != *written || self.out_of_order > 0 {
            return Err(format!(
                "MISMATCH: {} entries read, {} written, {} out of order",
                self.digest.count, written.count, self.out_of_order
            ));
        }
        Ok(())
    }
}

/// Producer id of the entry [`seal_theirs`] appends; checkers ignore it.
const SEALER: u32 = u32::MAX;

/// Walrus reads from a topic's active block cost time in proportion to how full the block is,
/// which makes reading back a run's entries (untimed, for verification) take minutes. One entry
/// as large as a Walrus block moves the topic to a new block, so everything before it is read
/// from sealed blocks. Only used before verification, never inside a timed phase.
fn seal_theirs(wal: &walrus_rust::Walrus, topic: &str) {
    let mut big = payload(SEALER, 0, 16);
    big.resize(10 << 20, 0);
    wal.append_for_topic(topic, &big).expect("sealer");
}

// ------------------------------------------------------------------------------------------
// Results

#[derive(Clone, Debug)]
struct Run {
    /// Primary figure: operations (entries) per second, or the workload's own unit.
    value: f64,
    extra: Vec<(&'static str, f64)>,
    verified: Result<(), String>,
}

struct Row {
    workload: String,
    unit: &'static str,
    /// Higher is better (throughput) or lower is better (latency, bytes).
    higher_better: bool,
    ours: Vec<Run>,
    theirs: Vec<Run>,
    /// The machine limit this is compared with, if any: (name, value in the same unit).
    limit: Option<(&'static str, f64)>,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn summary(runs: &[Run]) -> (f64, Vec<(&'static str, f64)>, Result<(), String>) {
    let ok = runs
        .iter()
        .find_map(|r| r.verified.clone().err())
        .map_or(Ok(()), Err);
    let value = median(runs.iter().map(|r| r.value).collect());
    let mut extra = Vec::new();
    if let Some(first) = runs.first() {
        for (i, (name, _)) in first.extra.iter().enumerate() {
            extra.push((*name, median(runs.iter().map(|r| r.extra[i].1).collect())));
        }
    }
    (value, extra, ok)
}

fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

// ------------------------------------------------------------------------------------------
// Systems under test

const OURS: &str = "walrus-async";
const THEIRS: &str = "walrus-rust 0.2.0";

#[derive(Clone, Copy, PartialEq)]
enum Fsync {
    Ms200,
    SyncEach,
}

async fn open_ours(dir: &Path, fsync: Fsync) -> walrus_async::Walrus {
    walrus_async::Walrus::builder()
        .data_dir(dir)
        .fsync(match fsync {
            Fsync::Ms200 => walrus_async::FsyncSchedule::Milliseconds(200),
            Fsync::SyncEach => walrus_async::FsyncSchedule::SyncEach,
        })
        .consistency(walrus_async::ReadConsistency::AtLeastOnce {
            persist_every: 100_000,
        })
        .open()
        .await
        .expect("open walrus-async")
}

/// Walrus reads its data dir from `WALRUS_DATA_DIR` (set once at start); each run gets its
/// own key, so its own directory.
fn open_theirs(key: &str, fsync: Fsync) -> walrus_rust::Walrus {
    walrus_rust::Walrus::with_consistency_and_schedule_for_key(
        key,
        walrus_rust::ReadConsistency::AtLeastOnce {
            persist_every: 100_000,
        },
        match fsync {
            Fsync::Ms200 => walrus_rust::FsyncSchedule::Milliseconds(200),
            Fsync::SyncEach => walrus_rust::FsyncSchedule::SyncEach,
        },
    )
    .expect("open walrus-rust")
}

/// Walrus refuses a batch while another batch of the same topic is in flight
/// (`WouldBlock`); a caller has to retry, so the benchmark does.
fn theirs_batch(wal: &walrus_rust::Walrus, topic: &str, refs: &[&[u8]]) {
    loop {
        match wal.batch_append_for_topic(topic, refs) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(e) => panic!("walrus-rust batch append: {e}"),
        }
    }
}

struct Ctx {
    rt: tokio::runtime::Runtime,
    scale: Scale,
    root: PathBuf,
    theirs_root: PathBuf,
    seq: std::sync::atomic::AtomicU64,
}

impl Ctx {
    fn fresh(&self, system: &str) -> (PathBuf, String) {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let key = format!("run{n}");
        if system == OURS {
            (self.root.join(format!("ours-{n}")), key)
        } else {
            (self.theirs_root.join(&key), key)
        }
    }
}

fn remove(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

/// Reads every file under `dir` once, untimed, so what follows finds the data in the page
/// cache: W4 and W5 are defined on a warm cache, and our large writes skip the cache
/// (`WalrusBuilder::uncached_write_min`). Done for both systems alike.
fn warm(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            warm(&p);
        } else if let Ok(mut f) = std::fs::File::open(&p) {
            let _ = std::io::copy(&mut f, &mut std::io::sink());
        }
    }
}

// ------------------------------------------------------------------------------------------
// W1 / W2: single appends for a fixed time

struct AppendSpec {
    size: usize,
    producers: usize,
    shared_topic: bool,
    /// Each append goes to a topic drawn at random from this many (W7); overrides the above.
    random_topics: Option<u32>,
    fsync: Fsync,
    latency: bool,
}

/// Picks each append's topic: the producer's own, the shared one, or one drawn at random.
struct TopicPicker {
    fixed: Option<String>,
    random: u32,
    state: u64,
}

impl TopicPicker {
    fn new(spec: &AppendSpec, p: usize) -> TopicPicker {
        TopicPicker {
            fixed: match (spec.random_topics, spec.shared_topic) {
                (Some(_), _) => None,
                (None, true) => Some("t".into()),
                (None, false) => Some(format!("t{p}")),
            },
            random: spec.random_topics.unwrap_or(1),
            state: 0x9E37_79B9_7F4A_7C15 ^ (p as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9),
        }
    }
    fn next(&mut self) -> std::borrow::Cow<'_, str> {
        if let Some(t) = &self.fixed {
            return std::borrow::Cow::Borrowed(t);
        }
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        std::borrow::Cow::Owned(format!("t{}", self.state % u64::from(self.random)))
    }
}

/// The topics a spec's appends went to.
fn topics_of(spec: &AppendSpec) -> Vec<String> {
    match (spec.random_topics, spec.shared_topic) {
        (Some(n), _) => (0..n).map(|t| format!("t{t}")).collect(),
        (None, true) => vec!["t".into()],
        (None, false) => (0..spec.producers).map(|p| format!("t{p}")).collect(),
    }
}

fn percentiles(mut lat: Vec<Duration>) -> [f64; 3] {
    lat.sort();
    let at = |q: f64| {
        lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e6)
    };
    [at(0.5), at(0.99), at(0.999)]
}

fn appends_ours(ctx: &Ctx, spec: &AppendSpec) -> (Run, Option<f64>) {
    let (dir, _) = ctx.fresh(OURS);
    let dur = ctx.scale.write_for;
    let run = ctx.rt.block_on(async {
        let wal = open_ours(&dir, spec.fsync).await;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for p in 0..spec.producers {
            let wal = wal.clone();
            let mut topics = TopicPicker::new(spec, p);
            let (size, latency) = (spec.size, spec.latency);
            tasks.push(tokio::spawn(async move {
                let mut d = Digest::default();
                let mut lat = Vec::new();
                let mut seq = 0u64;
                while start.elapsed() < dur {
                    let data = payload(p as u32, seq, size);
                    d.add(&data);
                    let topic = topics.next();
                    let t = Instant::now();
                    wal.append(&topic, data).await.expect("append");
                    if latency {
                        lat.push(t.elapsed());
                    }
                    seq += 1;
                }
                (d, lat)
            }));
        }
        let mut written = Digest::default();
        let mut lat = Vec::new();
        for t in tasks {
            let (d, l) = t.await.unwrap();
            written.merge(&d);
            lat.extend(l);
        }
        let secs = start.elapsed().as_secs_f64();
        let stats = wal.stats();
        // Disk use first: reading below must not consume (retention would reclaim files).
        let bytes_per_entry = used_bytes(&dir) as f64 / written.count.max(1) as f64;
        // Read back: every topic, in order, touching no cursor.
        let mut check = Checker::new(spec.producers);
        check.gaps_allowed = spec.random_topics.is_some();
        let topics: Vec<String> = wal.topics();
        for topic in topics {
            check.next_topic();
            let mut at = 0;
            loop {
                let b = wal.read_at(&topic, at, 4 << 20).await.unwrap();
                let Some(last) = b.last() else { break };
                at = last.offset + 1;
                b.iter().for_each(|e| check.add(&e.data));
            }
        }
        wal.close().await.unwrap();
        let mut extra = vec![
            (
                "appends_per_fsync",
                stats.appends as f64 / stats.fsyncs.max(1) as f64,
            ),
            ("bytes_per_entry", bytes_per_entry),
        ];
        if spec.latency {
            let [p50, p99, p999] = percentiles(lat);
            extra.extend([("p50_us", p50), ("p99_us", p99), ("p999_us", p999)]);
        }
        Run {
            value: written.count as f64 / secs,
            extra,
            verified: check.verdict(&written),
        }
    });
    remove(&dir);
    let bpe = run
        .extra
        .iter()
        .find(|e| e.0 == "bytes_per_entry")
        .map(|e| e.1);
    (run, bpe)
}

/// Runs an append workload on both systems, interleaved, as one row of the table.
fn append_row(
    ctx: &Ctx,
    name: String,
    spec: &AppendSpec,
    limit: Option<(&'static str, f64)>,
) -> Row {
    eprintln!("{name}");
    let (a, b) = interleave(
        ctx,
        || appends_ours(ctx, spec).0,
        || appends_theirs(ctx, spec).0,
    );
    Row {
        workload: name,
        unit: "entries/s",
        higher_better: true,
        ours: a,
        theirs: b,
        limit,
    }
}

fn appends_theirs(ctx: &Ctx, spec: &AppendSpec) -> (Run, Option<f64>) {
    let (dir, key) = ctx.fresh(THEIRS);
    let dur = ctx.scale.write_for;
    let wal = Arc::new(open_theirs(&key, spec.fsync));
    let start = Instant::now();
    let handles: Vec<_> = (0..spec.producers)
        .map(|p| {
            let wal = wal.clone();
            let mut topics = TopicPicker::new(spec, p);
            let (size, latency) = (spec.size, spec.latency);
            std::thread::spawn(move || {
                let mut d = Digest::default();
                let mut lat = Vec::new();
                let mut seq = 0u64;
                while start.elapsed() < dur {
                    let data = payload(p as u32, seq, size);
                    d.add(&data);
                    let topic = topics.next();
                    let t = Instant::now();
                    wal.append_for_topic(&topic, &data).expect("append");
                    if latency {
                        lat.push(t.elapsed());
                    }
                    seq += 1;
                }
                (d, lat)
            })
        })
        .collect();
    let mut written = Digest::default();
    let mut lat = Vec::new();
    for h in handles {
        let (d, l) = h.join().unwrap();
        written.merge(&d);
        lat.extend(l);
    }
    let secs = start.elapsed().as_secs_f64();
    let bytes_per_entry = used_bytes(&dir) as f64 / written.count.max(1) as f64;
    let mut check = Checker::new(spec.producers);
    check.gaps_allowed = spec.random_topics.is_some();
    for topic in topics_of(spec) {
        check.next_topic();
        seal_theirs(&wal, &topic);
        while let Ok(Some(e)) = wal.read_next(&topic, true) {
            check.add(&e.data);
        }
    }
    let mut extra = vec![
        ("appends_per_fsync", f64::NAN),
        ("bytes_per_entry", bytes_per_entry),
    ];
    if spec.latency {
        let [p50, p99, p999] = percentiles(lat);
        extra.extend([("p50_us", p50), ("p99_us", p99), ("p999_us", p999)]);
    }
    let run = Run {
        value: written.count as f64 / secs,
        extra,
        verified: check.verdict(&written),
    };
    drop(wal);
    remove(&dir);
    (run, Some(bytes_per_entry))
}

/// Bytes of log written: for each data file, the offset of its last non-zero byte. Both systems
/// preallocate, so file sizes say nothing; this is the extent actually used.
fn used_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() || name.contains("index") || name.contains("checkpoint") || name == "LOCK" {
            continue;
        }
        if let Ok(data) = std::fs::read(&p) {
            total += data
                .iter()
                .rposition(|&b| b != 0)
                .map_or(0, |i| i as u64 + 1);
        }
    }
    total
}

// ------------------------------------------------------------------------------------------
// W8: read while write

/// RssAnon of this process, KiB (anonymous memory: heap and stacks, not the mapped files).
fn rss_anon_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("RssAnon:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

const W8_TOPICS: usize = 4;
const W8_PRODUCERS: usize = 16;
const W8_ACK_EVERY: u64 = 256;

fn read_while_write_ours(ctx: &Ctx) -> Run {
    let (dir, _) = ctx.fresh(OURS);
    let dur = ctx.scale.write_for;
    let run = ctx.rt.block_on(async {
        let base = rss_anon_kib();
        let wal = walrus_async::Walrus::builder()
            .data_dir(&dir)
            .fsync(walrus_async::FsyncSchedule::Milliseconds(200))
            .consistency(walrus_async::ReadConsistency::AtLeastOnce {
                persist_every: 1000,
            })
            .open()
            .await
            .expect("open walrus-async");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut readers = Vec::new();
        for t in 0..W8_TOPICS {
            let mut stream = wal.subscribe_as(&format!("t{t}"), "reader").unwrap();
            let (stop, received) = (stop.clone(), received.clone());
            readers.push(tokio::spawn(async move {
                let mut check = Checker::new(W8_PRODUCERS);
                check.gaps_allowed = true;
                let mut n = 0u64;
                loop {
                    let batch = tokio::select! {
                        b = stream.next_batch(1 << 20) => b.expect("read"),
                        _ = async { while !stop.load(Ordering::Acquire) { tokio::task::yield_now().await } } => break,
                    };
                    for e in &batch {
                        check.add(&e.data);
                        n += 1;
                        if n.is_multiple_of(W8_ACK_EVERY) {
                            stream.ack(e.offset).await.expect("ack");
                        }
                    }
                    received.fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
                (check, stream)
            }));
        }
        let start = Instant::now();
        let mut producers = Vec::new();
        for p in 0..W8_PRODUCERS {
            let wal = wal.clone();
            let topic = format!("t{}", p % W8_TOPICS);
            producers.push(tokio::spawn(async move {
                let mut d = Digest::default();
                let mut seq = 0u64;
                while start.elapsed() < dur {
                    let data = payload(p as u32, seq, 1024);
                    d.add(&data);
                    wal.append(&topic, data).await.expect("append");
                    seq += 1;
                }
                d
            }));
        }
        let mut peak = 0;
        while start.elapsed() < dur {
            peak = peak.max(rss_anon_kib());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut written = Digest::default();
        for p in producers {
            written.merge(&p.await.unwrap());
        }
        let in_window = received.load(Ordering::Relaxed);
        peak = peak.max(rss_anon_kib());
        // Let the readers catch up (untimed), for verification.
        while received.load(Ordering::Relaxed) < written.count {
            tokio::task::yield_now().await;
        }
        stop.store(true, Ordering::Release);
        let mut check = Checker::new(W8_PRODUCERS);
        check.gaps_allowed = true;
        for r in readers {
            let (c, _stream) = r.await.unwrap();
            check.digest.merge(&c.digest);
            check.out_of_order += c.out_of_order;
        }
        wal.close().await.unwrap();
        let secs = start.elapsed().as_secs_f64();
        let _ = secs;
        Run {
            value: in_window as f64 / dur.as_secs_f64(),
            extra: vec![
                (
                    "delivered_in_window_pct",
                    100.0 * in_window as f64 / written.count.max(1) as f64,
                ),
                ("rss_anon_mib", peak.saturating_sub(base) as f64 / 1024.0),
            ],
            verified: check.verdict(&written),
        }
    });
    remove(&dir);
    run
}

fn read_while_write_theirs(ctx: &Ctx) -> Run {
    let (dir, key) = ctx.fresh(THEIRS);
    let dur = ctx.scale.write_for;
    let wal = Arc::new(
        walrus_rust::Walrus::with_consistency_and_schedule_for_key(
            &key,
            walrus_rust::ReadConsistency::AtLeastOnce {
                persist_every: 1000,
            },
            walrus_rust::FsyncSchedule::Milliseconds(200),
        )
        .expect("open walrus-rust"),
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let readers: Vec<_> = (0..W8_TOPICS)
        .map(|t| {
            let (wal, stop, received) = (wal.clone(), stop.clone(), received.clone());
            std::thread::spawn(move || {
                let topic = format!("t{t}");
                let mut check = Checker::new(W8_PRODUCERS);
                check.gaps_allowed = true;
                while !stop.load(Ordering::Acquire) {
                    match wal.read_next(&topic, true) {
                        Ok(Some(e)) => {
                            check.add(&e.data);
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => std::thread::yield_now(),
                    }
                }
                check
            })
        })
        .collect();
    let start = Instant::now();
    let producers: Vec<_> = (0..W8_PRODUCERS)
        .map(|p| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                let topic = format!("t{}", p % W8_TOPICS);
                let mut d = Digest::default();
                let mut seq = 0u64;
                while start.elapsed() < dur {
                    let data = payload(p as u32, seq, 1024);
                    d.add(&data);
                    wal.append_for_topic(&topic, &data).expect("append");
                    seq += 1;
                }
                d
            })
        })
        .collect();
    let mut written = Digest::default();
    for p in producers {
        written.merge(&p.join().unwrap());
    }
    let in_window = received.load(Ordering::Relaxed);
    // Their readers do not see a topic's active block until it is sealed: give them a
    // bounded time to catch up for verification, then seal.
    let until = Instant::now() + Duration::from_secs(5);
    while received.load(Ordering::Relaxed) < written.count && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Release);
    let mut check = Checker::new(W8_PRODUCERS);
    check.gaps_allowed = true;
    for r in readers {
        let c = r.join().unwrap();
        check.digest.merge(&c.digest);
        check.out_of_order += c.out_of_order;
    }
    for t in 0..W8_TOPICS {
        let topic = format!("t{t}");
        seal_theirs(&wal, &topic);
        while let Ok(Some(e)) = wal.read_next(&topic, true) {
            check.add(&e.data);
        }
    }
    drop(wal);
    remove(&dir);
    Run {
        value: in_window as f64 / dur.as_secs_f64(),
        extra: vec![(
            "delivered_in_window_pct",
            100.0 * in_window as f64 / written.count.max(1) as f64,
        )],
        verified: check.verdict(&written),
    }
}

// ------------------------------------------------------------------------------------------
// W9: a million topics, one entry each

fn allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

/// Appends one 100-byte entry to each of `topics` topics (64 in flight), closes, reopens and
/// reads every entry back. Returns the appends/s run and the figures around it.
fn million_topics(dir: &Path, topics: u64) -> Run {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let names: Arc<Vec<String>> =
            Arc::new((0..topics).map(|t| format!("topic-{t:07}")).collect());
        let base = rss_anon_kib();
        let open = || {
            walrus_async::Walrus::builder()
                .data_dir(dir)
                .fsync(walrus_async::FsyncSchedule::Milliseconds(200))
                .open()
        };
        let wal = open().await.expect("open");
        let start = Instant::now();
        let mut tasks = Vec::new();
        for p in 0..64u64 {
            let (wal, names) = (wal.clone(), names.clone());
            tasks.push(tokio::spawn(async move {
                let mut d = Digest::default();
                let mut t = p;
                while t < topics {
                    let data = payload(p as u32, t, 100);
                    d.add(&data);
                    wal.append(&names[t as usize], data).await.expect("append");
                    t += 64;
                }
                d
            }));
        }
        let mut written = Digest::default();
        for t in tasks {
            written.merge(&t.await.unwrap());
        }
        let secs = start.elapsed().as_secs_f64();
        let per_topic = rss_anon_kib().saturating_sub(base) as f64 * 1024.0 / topics as f64;
        wal.close().await.unwrap();
        drop(wal);
        let disk = allocated_bytes(dir);
        let t = Instant::now();
        let wal = open().await.expect("reopen");
        let reopen_s = t.elapsed().as_secs_f64();
        let mut check = Checker::new(64);
        check.gaps_allowed = true;
        for name in names.iter() {
            check.next_topic();
            for e in wal.read_at(name, 0, usize::MAX).await.unwrap() {
                check.add(&e.data);
            }
        }
        wal.close().await.unwrap();
        let appended = topics * 100;
        Run {
            value: topics as f64 / secs,
            extra: vec![
                ("rss_anon_bytes_per_topic", per_topic),
                ("disk_over_appended", disk as f64 / appended as f64),
                ("disk_mib", disk as f64 / f64::from(1 << 20)),
                // The target: at most twice the bytes appended plus two (default) segments.
                (
                    "disk_target_mib",
                    (2 * appended + (128 << 20)) as f64 / f64::from(1 << 20),
                ),
                ("reopen_s", reopen_s),
            ],
            verified: check.verdict(&written),
        }
    })
}

/// Child mode: `--child-w9 <dir> <topics>` runs W9 in a fresh process (so its anonymous
/// memory is its own, not the heap earlier workloads left) and prints the figures.
fn child_w9(dir: &str, topics: u64) {
    let run = million_topics(Path::new(dir), topics);
    let extra: Vec<String> = run.extra.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "W9 {} {} {}",
        run.value,
        run.verified
            .err()
            .map_or_else(|| "ok".into(), |e| e.replace(' ', "_")),
        extra.join(" ")
    );
}

/// Runs W9 in a child process and reads its figures back.
fn million_topics_ours(ctx: &Ctx, topics: u64) -> Run {
    let (dir, _) = ctx.fresh(OURS);
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--child-w9", dir.to_str().unwrap(), &topics.to_string()])
        .env("WALRUS_QUIET", "1")
        .output()
        .expect("child");
    remove(&dir);
    assert!(
        out.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("W9 "))
        .expect("child reports W9");
    let mut parts = line.split(' ');
    let value: f64 = parts.next().unwrap().parse().unwrap();
    let verdict = parts.next().unwrap().to_string();
    let names = [
        "rss_anon_bytes_per_topic",
        "disk_over_appended",
        "disk_mib",
        "disk_target_mib",
        "reopen_s",
    ];
    let extra = parts
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let k = names.iter().find(|n| **n == k)?;
            Some((*k, v.parse().ok()?))
        })
        .collect();
    Run {
        value,
        extra,
        verified: if verdict == "ok" {
            Ok(())
        } else {
            Err(verdict)
        },
    }
}

// W3: batches

fn batches_ours(ctx: &Ctx, batch: usize) -> Run {
    let (dir, _) = ctx.fresh(OURS);
    let dur = ctx.scale.write_for;
    let run = ctx.rt.block_on(async {
        let wal = open_ours(&dir, Fsync::Ms200).await;
        let start = Instant::now();
        let mut written = Digest::default();
        let mut seq = 0u64;
        while start.elapsed() < dur {
            let entries: Vec<Bytes> = (0..batch)
                .map(|i| Bytes::from(payload(0, seq + i as u64, 1024)))
                .collect();
            entries.iter().for_each(|e| written.add(e));
            wal.append_batch("t", entries).await.unwrap();
            seq += batch as u64;
        }
        let secs = start.elapsed().as_secs_f64();
        let mut check = Checker::new(1);
        let mut at = 0;
        loop {
            let got = wal.read_at("t", at, 8 << 20).await.unwrap();
            if got.is_empty() {
                break;
            }
            at = got.last().unwrap().offset + 1;
            got.iter().for_each(|e| check.add(&e.data));
        }
        wal.close().await.unwrap();
        Run {
            value: written.count as f64 / secs,
            extra: vec![("bytes_per_sec", written.count as f64 * 1024.0 / secs)],
            verified: check.verdict(&written),
        }
    });
    remove(&dir);
    run
}

fn batches_theirs(ctx: &Ctx, batch: usize) -> Run {
    let (dir, key) = ctx.fresh(THEIRS);
    let dur = ctx.scale.write_for;
    let wal = open_theirs(&key, Fsync::Ms200);
    let start = Instant::now();
    let mut written = Digest::default();
    let mut seq = 0u64;
    while start.elapsed() < dur {
        let entries: Vec<Vec<u8>> = (0..batch)
            .map(|i| payload(0, seq + i as u64, 1024))
            .collect();
        entries.iter().for_each(|e| written.add(e));
        let refs: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
        theirs_batch(&wal, "t", &refs);
        seq += batch as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    let mut check = Checker::new(1);
    seal_theirs(&wal, "t");
    while let Ok(Some(e)) = wal.read_next("t", true) {
        check.add(&e.data);
    }
    drop(wal);
    remove(&dir);
    Run {
        value: written.count as f64 / secs,
        extra: vec![("bytes_per_sec", written.count as f64 * 1024.0 / secs)],
        verified: check.verdict(&written),
    }
}

// ------------------------------------------------------------------------------------------
// W4: reads of pre-written entries (warm page cache)

#[derive(Clone, Copy, PartialEq)]
enum ReadMode {
    Stream,
    Batch,
}

fn reads_ours(ctx: &Ctx, mode: ReadMode) -> Run {
    let (dir, _) = ctx.fresh(OURS);
    let n = ctx.scale.read_entries;
    let run = ctx.rt.block_on(async {
        let wal = open_ours(&dir, Fsync::Ms200).await;
        let mut written = Digest::default();
        let mut seq = 0;
        while seq < n {
            let k = 1000.min(n - seq);
            let entries: Vec<Bytes> = (0..k)
                .map(|i| Bytes::from(payload(0, seq + i, 1024)))
                .collect();
            entries.iter().for_each(|e| written.add(e));
            wal.append_batch("t", entries).await.unwrap();
            seq += k;
        }
        warm(&dir);
        let mut check = Checker::new(1);
        let start = Instant::now();
        match mode {
            ReadMode::Stream => {
                let mut s = wal.subscribe("t").unwrap();
                while check.digest.count < n {
                    let e = s.next().await.unwrap().unwrap();
                    check.add(&e.data);
                }
            }
            ReadMode::Batch => loop {
                let b = wal.batch_read("t", 4 << 20, true).await.unwrap();
                if b.is_empty() {
                    break;
                }
                b.iter().for_each(|e| check.add(&e.data));
            },
        }
        let secs = start.elapsed().as_secs_f64();
        wal.close().await.unwrap();
        Run {
            value: check.digest.count as f64 / secs,
            extra: vec![],
            verified: check.verdict(&written),
        }
    });
    remove(&dir);
    run
}

fn reads_theirs(ctx: &Ctx, mode: ReadMode) -> Run {
    let (dir, key) = ctx.fresh(THEIRS);
    let n = ctx.scale.read_entries;
    let wal = open_theirs(&key, Fsync::Ms200);
    let mut written = Digest::default();
    let mut seq = 0;
    while seq < n {
        let k = 1000.min(n - seq);
        let entries: Vec<Vec<u8>> = (0..k).map(|i| payload(0, seq + i, 1024)).collect();
        entries.iter().for_each(|e| written.add(e));
        let refs: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
        theirs_batch(&wal, "t", &refs);
        seq += k;
    }
    warm(&dir);
    let mut check = Checker::new(1);
    let start = Instant::now();
    match mode {
        ReadMode::Stream => {
            while let Ok(Some(e)) = wal.read_next("t", true) {
                check.add(&e.data);
            }
        }
        ReadMode::Batch => loop {
            match wal.batch_read_for_topic("t", 4 << 20, true) {
                Ok(b) if !b.is_empty() => b.iter().for_each(|e| check.add(&e.data)),
                _ => break,
            }
        },
    }
    let secs = start.elapsed().as_secs_f64();
    drop(wal);
    remove(&dir);
    Run {
        value: check.digest.count as f64 / secs,
        extra: vec![],
        verified: check.verdict(&written),
    }
}

// ------------------------------------------------------------------------------------------
// W5: reopen after writing a lot; peak RSS while writing it (in a child process)

/// Child mode: `--child-write <system> <dir-or-key> <bytes>` writes `bytes` of 1 KiB entries
/// with 8 producers and prints `RSS <kib>`.
fn child_write(system: &str, target: &str, bytes: u64) {
    let per = bytes / 1024 / 8;
    if system == OURS {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let wal = open_ours(Path::new(target), Fsync::Ms200).await;
            let tasks: Vec<_> = (0..8u64)
                .map(|p| {
                    let wal = wal.clone();
                    tokio::spawn(async move {
                        // Producer p writes entries p*per .. (p+1)*per, in batches of 100.
                        let (mut seq, end) = (p * per, (p + 1) * per);
                        while seq < end {
                            let k = 100.min(end - seq);
                            let entries: Vec<Bytes> = (0..k)
                                .map(|i| Bytes::from(payload(p as u32, seq + i, 1024)))
                                .collect();
                            wal.append_batch("t", entries).await.unwrap();
                            seq += k;
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            wal.close().await.unwrap();
        });
    } else {
        let wal = Arc::new(open_theirs(target, Fsync::Ms200));
        let hs: Vec<_> = (0..8u64)
            .map(|p| {
                let wal = wal.clone();
                std::thread::spawn(move || {
                    let (mut seq, end) = (p * per, (p + 1) * per);
                    while seq < end {
                        let k = 100.min(end - seq);
                        let entries: Vec<Vec<u8>> =
                            (0..k).map(|i| payload(p as u32, seq + i, 1024)).collect();
                        let refs: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
                        theirs_batch(&wal, "t", &refs);
                        seq += k;
                    }
                })
            })
            .collect();
        hs.into_iter().for_each(|h| h.join().unwrap());
    }
    println!("RSS {}", peak_rss_kib());
}

/// Peak resident set of this process: `VmHWM` belongs to the address space, which `exec`
/// creates anew (`getrusage`'s `ru_maxrss` would carry the forking parent's peak over).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn write_in_child(system: &str, target: &str, bytes: u64) -> u64 {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--child-write", system, target, &bytes.to_string()])
        .env("WALRUS_QUIET", "1")
        .output()
        .expect("child");
    assert!(
        out.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("RSS ")?.trim().parse().ok())
        .expect("child reports RSS")
}

/// Returns (reopen runs, peak RSS of the writer in MiB).
fn reopen(ctx: &Ctx, system: &str) -> (Vec<Run>, f64) {
    let (dir, key) = ctx.fresh(system);
    let bytes = ctx.scale.reopen_bytes;
    let target = if system == OURS {
        dir.to_string_lossy().into_owned()
    } else {
        key.clone()
    };
    let rss = write_in_child(system, &target, bytes) as f64 / 1024.0;
    let n = bytes / 1024 / 8 * 8;
    warm(&dir);
    let mut runs = Vec::new();
    for _ in 0..ctx.scale.runs {
        let start = Instant::now();
        let count = if system == OURS {
            ctx.rt.block_on(async {
                let wal = open_ours(&dir, Fsync::Ms200).await;
                let secs = start.elapsed();
                let c = wal.entry_count("t");
                wal.close().await.unwrap();
                (c, secs)
            })
        } else {
            let wal = open_theirs(&key, Fsync::Ms200);
            let secs = start.elapsed();
            // Walrus has no entry count; peek one entry to show the data is there.
            let c = if wal.read_next("t", false).ok().flatten().is_some() {
                n
            } else {
                0
            };
            (c, secs)
        };
        let secs = count.1.as_secs_f64();
        runs.push(Run {
            value: bytes as f64 / secs,
            extra: vec![("open_ms", secs * 1e3)],
            verified: if count.0 == n {
                Ok(())
            } else {
                Err(format!(
                    "LOST: {} of {n} entries after reopen",
                    n.saturating_sub(count.0)
                ))
            },
        });
    }
    remove(&dir);
    (runs, rss)
}

// ------------------------------------------------------------------------------------------
// The machine's own limits

struct Limits {
    buffered_bps: f64,
    direct_bps: Option<f64>,
    fsync_fresh_us: f64,
    fsync_rewritten_us: f64,
    /// (n, p50 µs of one fdatasync after n 1 KiB writes in n separate 1 MiB regions).
    fsync_spread_us: Vec<(usize, f64)>,
    /// p50 µs of one round of 64 x 512 B written as one contiguous write, then one fdatasync.
    contiguous_64x512_us: f64,
}

impl Limits {
    /// The most durable appends/s `n` producers of `size` bytes each can reach if every round
    /// is one contiguous write of all their entries and one fdatasync.
    fn contiguous_bound(&self, n: usize, size: usize) -> f64 {
        assert_eq!((n, size), (64, 512), "measured for this shape only");
        n as f64 * 1e6 / self.contiguous_64x512_us
    }

    /// The most durable appends/s `n` producers that each await their append can reach with
    /// their writes in `n` separate blocks: `n` per fdatasync of that shape (Little's law).
    fn sync_each_bound(&self, n: usize) -> Option<f64> {
        let (_, us) = self.fsync_spread_us.iter().find(|(k, _)| *k == n)?;
        Some(n as f64 * 1e6 / us)
    }
}

fn measure_limits(root: &Path, scale: Scale) -> Limits {
    let dir = root.join("limits");
    std::fs::create_dir_all(&dir).unwrap();
    let chunk = 4 << 20;
    let seq_write = |direct: bool| -> Option<f64> {
        let path = dir.join(if direct { "direct" } else { "buffered" });
        let _ = std::fs::remove_file(&path);
        let mut opts = std::fs::OpenOptions::new();
        opts.create(true).write(true);
        if direct {
            opts.custom_flags(libc::O_DIRECT);
        }
        let f = opts.open(&path).ok()?;
        let layout = std::alloc::Layout::from_size_align(chunk, 4096).unwrap();
        // SAFETY: non-zero size; freed below with the same layout.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        // SAFETY: ptr is a live allocation of `chunk` bytes.
        let buf = unsafe { std::slice::from_raw_parts_mut(ptr, chunk) };
        buf.iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (i % 251) as u8 | 1);
        let start = Instant::now();
        let mut pos = 0u64;
        let mut ok = true;
        while pos < scale.probe_bytes {
            if f.write_all_at(buf, pos).is_err() {
                ok = false;
                break;
            }
            pos += chunk as u64;
        }
        ok &= f.sync_data().is_ok();
        let secs = start.elapsed().as_secs_f64();
        // SAFETY: allocated above with this layout.
        unsafe { std::alloc::dealloc(ptr, layout) };
        let _ = std::fs::remove_file(&path);
        ok.then(|| scale.probe_bytes as f64 / secs)
    };
    let buffered_bps = seq_write(false).unwrap_or(f64::NAN);
    let direct_bps = seq_write(true);
    // A new file of `len` bytes: written (`prewritten`) or preallocated, and synced.
    let new_file = |name: &str, len: usize, prewritten: bool| -> (PathBuf, std::fs::File) {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        if prewritten {
            f.write_all_at(&vec![1u8; len], 0).unwrap();
        } else {
            // SAFETY: plain syscall on an owned descriptor.
            unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&f), 0, 0, len as i64) };
        }
        f.sync_all().unwrap();
        (path, f)
    };
    let fsync_lat = |prewritten: bool| -> f64 {
        let iters = if scale.quick { 50 } else { 300 };
        let (path, f) = new_file("fsync", iters * 4096, prewritten);
        let block = vec![7u8; 4096];
        let mut lat = Vec::new();
        for i in 0..iters {
            let t = Instant::now();
            f.write_all_at(&block, (i * 4096) as u64).unwrap();
            f.sync_data().unwrap();
            lat.push(t.elapsed());
        }
        let _ = std::fs::remove_file(&path);
        percentiles(lat)[0]
    };
    let fsync_fresh_us = fsync_lat(false);
    let fsync_rewritten_us = fsync_lat(true);
    // One group commit of `n` producers on their own topics: `n` small writes, each in its own
    // block (1 MiB apart), then one fdatasync. Scattered pages in fresh extents cost far more
    // than one page: each write converts its own piece of unwritten extent.
    let fsync_spread = |n: usize| -> f64 {
        let region = 1u64 << 20;
        let (path, f) = new_file("spread", n << 20, false);
        let rounds = if scale.quick { 20 } else { 200 };
        let entry = [7u8; 1024];
        let mut lat = Vec::new();
        for r in 0..rounds {
            for t in 0..n as u64 {
                f.write_all_at(&entry, t * region + r * 1024).unwrap();
            }
            let t = Instant::now();
            f.sync_data().unwrap();
            lat.push(t.elapsed());
        }
        let _ = std::fs::remove_file(&path);
        percentiles(lat)[0]
    };
    let fsync_spread_us = vec![(8, fsync_spread(8)), (64, fsync_spread(64))];
    // The shape a shared commit stream gives W7: each round one write of 64 x 512 B right
    // after the last, in a preallocated file, then one fdatasync.
    let contiguous_64x512_us = {
        let round = 64 * 512;
        let rounds = if scale.quick { 50 } else { 500 };
        let (path, f) = new_file("contiguous", rounds * round, false);
        let buf = vec![7u8; round];
        let mut lat = Vec::new();
        for r in 0..rounds {
            let t = Instant::now();
            f.write_all_at(&buf, (r * round) as u64).unwrap();
            f.sync_data().unwrap();
            lat.push(t.elapsed());
        }
        let _ = std::fs::remove_file(&path);
        percentiles(lat)[0]
    };
    remove(&dir);
    Limits {
        buffered_bps,
        direct_bps,
        fsync_fresh_us,
        fsync_rewritten_us,
        fsync_spread_us,
        contiguous_64x512_us,
    }
}

// ------------------------------------------------------------------------------------------
// Driver

fn interleave(
    ctx: &Ctx,
    mut ours: impl FnMut() -> Run,
    mut theirs: impl FnMut() -> Run,
) -> (Vec<Run>, Vec<Run>) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let verbose = std::env::var_os("BENCH_VERBOSE").is_some();
    for i in 0..ctx.scale.runs {
        // A B, then B A, …: neither system always runs right after the other one.
        let ours_first = i % 2 == 0;
        let mut took = [Duration::ZERO; 2];
        for ours_turn in [ours_first, !ours_first] {
            settle();
            let t = Instant::now();
            if ours_turn {
                a.push(ours());
            } else {
                b.push(theirs());
            }
            took[usize::from(!ours_turn)] = t.elapsed();
        }
        if verbose {
            eprintln!(
                "  runs took {:?} (ours) and {:?} (theirs)",
                took[0], took[1]
            );
        }
    }
    (a, b)
}

/// Writes back whatever dirty data earlier runs left (`sync(1)`), so a run does not share the
/// disk with the previous run's writeback.
fn settle() {
    let _ = std::process::Command::new("sync").status();
}

/// Set in the processes a full run starts, one per group: results are appended to the JSON
/// lines file instead of replacing it.
const GROUP_CHILD: &str = "WALRUS_BENCH_GROUP_CHILD";

/// Runs every group, each in a fresh process (see `main`), one after the other.
fn full_run_in_children() {
    let json_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench/throughput.jsonl");
    std::fs::create_dir_all(json_path.parent().unwrap()).unwrap();
    std::fs::File::create(&json_path).unwrap();
    let exe = std::env::current_exe().expect("own path");
    let mut failed = Vec::new();
    for group in ["W1", "W2", "W3", "W4", "W5", "W7", "W8", "W9"] {
        let status = std::process::Command::new(&exe)
            .args(["--bench", "--only", group])
            .env(GROUP_CHILD, "1")
            .status()
            .expect("start a group's process");
        if !status.success() {
            failed.push(group);
        }
    }
    if !failed.is_empty() {
        eprintln!("groups that failed: {failed:?}");
        std::process::exit(1);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child-w9") {
        child_w9(&args[i + 1], args[i + 2].parse().unwrap());
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--child-write") {
        child_write(&args[i + 1], &args[i + 2], args[i + 3].parse().unwrap());
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    // `--only W1` selects a group; `--only "W1 append 1024 B, 1 producers"` one configuration.
    let want = |w: &str| {
        only.as_deref()
            .is_none_or(|o| w.starts_with(o) || o.starts_with(w))
    };
    let want_config = |name: &str| {
        only.as_deref()
            .is_none_or(|o| o.len() <= 2 || name.starts_with(o))
    };
    // A full run runs each group in a process of its own: walrus-rust keeps the descriptors of
    // files it deleted open until its process exits (seen in /proc/PID/fd), so in one process
    // the earlier workloads' space never comes back and W8 ran out of disk (ENOSPC) here.
    if !quick && only.is_none() && std::env::var_os(GROUP_CHILD).is_none() {
        full_run_in_children();
        return;
    }
    let scale = Scale::new(quick);
    let root = tempfile::tempdir_in(bench_root()).expect("bench dir");
    let theirs_root = root.path().join("walrus-rust");
    // SAFETY: set before any thread starts; Walrus reads these on open.
    unsafe {
        std::env::set_var("WALRUS_DATA_DIR", &theirs_root);
        std::env::set_var("WALRUS_QUIET", "1");
    }
    let ctx = Ctx {
        rt: tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
        scale,
        root: root.path().to_path_buf(),
        theirs_root,
        seq: 0.into(),
    };
    let started = Instant::now();
    eprintln!("measuring this machine's limits…");
    let limits = measure_limits(root.path(), scale);
    let mut rows: Vec<Row> = Vec::new();
    let w6 = std::cell::RefCell::new((Vec::new(), Vec::new()));

    if want("W1") {
        for size in [100usize, 1024, 4096] {
            for producers in [1usize, 8, 64] {
                for shared in [false, true] {
                    if producers == 1 && shared {
                        continue;
                    }
                    // Quick mode: one configuration, the one W6 also reads its figure from.
                    if scale.quick && !(size == 100 && producers == 64 && shared) {
                        continue;
                    }
                    let spec = AppendSpec {
                        size,
                        producers,
                        shared_topic: shared,
                        random_topics: None,
                        fsync: Fsync::Ms200,
                        latency: false,
                    };
                    let name = format!(
                        "W1 append {size} B, {producers} producers, {}",
                        if shared { "one topic" } else { "own topics" }
                    );
                    if !want_config(&name) {
                        continue;
                    }
                    eprintln!("{name}");
                    let (a, b) = interleave(
                        &ctx,
                        || {
                            let (r, bpe) = appends_ours(&ctx, &spec);
                            if size == 100 && producers == 64 && shared {
                                w6.borrow_mut().0.extend(bpe);
                            }
                            r
                        },
                        || {
                            let (r, bpe) = appends_theirs(&ctx, &spec);
                            if size == 100 && producers == 64 && shared {
                                w6.borrow_mut().1.extend(bpe);
                            }
                            r
                        },
                    );
                    rows.push(Row {
                        workload: name,
                        unit: "entries/s",
                        higher_better: true,
                        ours: a,
                        theirs: b,
                        limit: None,
                    });
                }
            }
        }
    }
    if want("W2") {
        for producers in [1usize, 8, 64] {
            let spec = AppendSpec {
                size: 1024,
                producers,
                shared_topic: false,
                random_topics: None,
                fsync: Fsync::SyncEach,
                latency: true,
            };
            let name = format!("W2 SyncEach 1 KiB, {producers} producers, own topics");
            if want_config(&name) {
                let limit = limits
                    .sync_each_bound(producers)
                    .map(|l| ("the fsync bound", l));
                rows.push(append_row(&ctx, name, &spec, limit));
            }
        }
    }
    if want("W3") {
        for batch in [100usize, 1000] {
            let name = format!("W3 batches of {batch} x 1 KiB");
            eprintln!("{name}");
            let (a, b) = interleave(
                &ctx,
                || batches_ours(&ctx, batch),
                || batches_theirs(&ctx, batch),
            );
            rows.push(Row {
                workload: name,
                unit: "entries/s",
                higher_better: true,
                ours: a,
                theirs: b,
                limit: limits.direct_bps.map(|d| ("O_DIRECT write", d / 1024.0)),
            });
        }
    }
    if want("W4") {
        for (mode, label) in [
            (ReadMode::Stream, "stream / read_next"),
            (ReadMode::Batch, "batch reads"),
        ] {
            let name = format!("W4 read {} x 1 KiB, {label}", scale.read_entries);
            eprintln!("{name}");
            let (a, b) = interleave(&ctx, || reads_ours(&ctx, mode), || reads_theirs(&ctx, mode));
            rows.push(Row {
                workload: name,
                unit: "entries/s",
                higher_better: true,
                ours: a,
                theirs: b,
                limit: None,
            });
        }
    }
    let mut rss = (f64::NAN, f64::NAN);
    if want("W5") {
        let name = format!(
            "W5 reopen after {} MiB (scan rate)",
            scale.reopen_bytes >> 20
        );
        eprintln!("{name}");
        let (a, ra) = reopen(&ctx, OURS);
        let (b, rb) = reopen(&ctx, THEIRS);
        rss = (ra, rb);
        rows.push(Row {
            workload: name,
            unit: "bytes/s",
            higher_better: true,
            ours: a,
            theirs: b,
            limit: None,
        });
    }
    let (w6_ours, w6_theirs) = w6.into_inner();
    if !w6_ours.is_empty() {
        let (a, b) = (w6_ours, w6_theirs);
        let run = |v: Vec<f64>| {
            vec![Run {
                value: median(v),
                extra: vec![],
                verified: Ok(()),
            }]
        };
        rows.push(Row {
            workload: "W6 disk bytes per 100 B entry (W1 64 producers, one topic)".into(),
            unit: "bytes",
            higher_better: false,
            ours: run(a),
            theirs: run(b),
            limit: None,
        });
    }

    // The workloads added with format 3 run last, so W1–W6 run as they always did (W9 leaves a
    // large heap and much page cache behind).
    if want("W7") {
        let spec = AppendSpec {
            size: 512,
            producers: 64,
            shared_topic: false,
            random_topics: Some(1000),
            fsync: Fsync::SyncEach,
            latency: true,
        };
        let name = "W7 SyncEach 512 B, 64 producers, random of 1000 topics".to_string();
        if want_config(&name) {
            let limit = Some(("the contiguous bound", limits.contiguous_bound(64, 512)));
            rows.push(append_row(&ctx, name, &spec, limit));
        }
    }
    if want("W8") {
        let name = "W8 read while write: 16 producers, 4 topics, 4 streams, 1 KiB".to_string();
        if want_config(&name) {
            eprintln!("{name}");
            let (a, b) = interleave(
                &ctx,
                || read_while_write_ours(&ctx),
                || read_while_write_theirs(&ctx),
            );
            rows.push(Row {
                workload: name,
                unit: "entries/s",
                higher_better: true,
                ours: a,
                theirs: b,
                limit: None,
            });
        }
    }
    if want("W9") {
        let topics: u64 = if scale.quick { 100_000 } else { 1_000_000 };
        let name = format!("W9 {topics} topics, one 100 B entry each (ours only)");
        if want_config(&name) {
            eprintln!("{name}");
            let runs: Vec<Run> = (0..scale.runs)
                .map(|_| {
                    settle();
                    million_topics_ours(&ctx, topics)
                })
                .collect();
            rows.push(Row {
                workload: name,
                unit: "appends/s",
                higher_better: true,
                ours: runs,
                theirs: Vec::new(),
                limit: None,
            });
        }
    }
    // Report.
    let mut table = String::new();
    writeln!(
        table,
        "\nwalrus-async vs {THEIRS} — {} mode, median of {} run(s) each, interleaved",
        if quick { "quick" } else { "full" },
        scale.runs
    )
    .unwrap();
    writeln!(
        table,
        "machine: sequential write buffered {}B/s, O_DIRECT {}; 4 KiB write+fdatasync p50 {:.0} µs fresh, {:.0} µs pre-written",
        fmt_num(limits.buffered_bps),
        limits.direct_bps.map_or("unsupported here".into(), |d| format!("{}B/s", fmt_num(d))),
        limits.fsync_fresh_us,
        limits.fsync_rewritten_us
    )
    .unwrap();
    for (n, us) in &limits.fsync_spread_us {
        writeln!(
            table,
            "         fdatasync after {n} x 1 KiB writes in {n} separate blocks p50 {us:.0} µs: \
             {n} producers awaiting durable appends on their own topics cannot pass {}/s",
            fmt_num(limits.sync_each_bound(*n).unwrap_or(f64::NAN))
        )
        .unwrap();
    }
    writeln!(
        table,
        "{:<62} {:>11} {:>11} {:>7}  notes",
        "workload", OURS, "walrus-rust", "ratio"
    )
    .unwrap();
    let json_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench/throughput.jsonl");
    std::fs::create_dir_all(json_path.parent().unwrap()).unwrap();
    let mut json = if std::env::var_os(GROUP_CHILD).is_some() {
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&json_path)
            .unwrap()
    } else {
        std::fs::File::create(&json_path).unwrap()
    };
    let mut failed = false;
    for r in &rows {
        let (a, a_extra, a_ok) = summary(&r.ours);
        let (b, b_extra, b_ok) = summary(&r.theirs);
        let ratio = if r.higher_better { a / b } else { b / a };
        let mut notes = String::new();
        for (k, v) in &a_extra {
            if v.is_finite() {
                write!(notes, "{k}={} ", fmt_num(*v)).unwrap();
            }
        }
        if let Some((name, lim)) = r.limit {
            write!(notes, "= {:.0}% of {name} ", 100.0 * a / lim).unwrap();
        }
        if r.workload.starts_with("W2")
            && r.workload.contains(" 1 producers")
            && let (Some(p50), Some(p99)) = (
                a_extra.iter().find(|e| e.0 == "p50_us"),
                a_extra.iter().find(|e| e.0 == "p99_us"),
            )
        {
            write!(
                notes,
                "p50 {:.2}x p99 {:.2}x fsync ",
                p50.1 / limits.fsync_fresh_us,
                p99.1 / limits.fsync_fresh_us
            )
            .unwrap();
        }
        if let Err(e) = &a_ok {
            failed = true;
            write!(notes, "OURS {e} ").unwrap();
        }
        let b_cell = match &b_ok {
            Ok(()) if r.theirs.is_empty() => "not run".into(),
            Ok(()) => fmt_num(b),
            Err(e) if e.starts_with("LOST") => "LOST".into(),
            Err(_) => "BAD".into(),
        };
        if let Err(e) = &b_ok {
            write!(notes, "walrus-rust {e} ").unwrap();
        }
        for (k, v) in &b_extra {
            if *k == "delivered_in_window_pct" && v.is_finite() {
                write!(notes, "walrus-rust {k}={} ", fmt_num(*v)).unwrap();
            }
        }
        writeln!(
            table,
            "{:<62} {:>11} {:>11} {:>6.2}x  {}",
            r.workload,
            fmt_num(a),
            b_cell,
            if b_ok.as_ref().is_ok() || b_cell == "BAD" {
                ratio
            } else {
                f64::NAN
            },
            notes.trim_end()
        )
        .unwrap();
        let obj = format!(
            "{{\"workload\":{:?},\"unit\":{:?},\"ours\":{a},\"theirs\":{},\"ratio\":{},\"ours_runs\":{:?},\"theirs_runs\":{:?},\"ours_extra\":{{{}}},\"theirs_extra\":{{{}}},\"ours_verified\":{},\"theirs_verified\":{:?},\"quick\":{quick}}}",
            r.workload,
            r.unit,
            if b.is_finite() {
                b.to_string()
            } else {
                "null".into()
            },
            if ratio.is_finite() {
                ratio.to_string()
            } else {
                "null".into()
            },
            r.ours.iter().map(|x| x.value).collect::<Vec<_>>(),
            r.theirs.iter().map(|x| x.value).collect::<Vec<_>>(),
            a_extra
                .iter()
                .filter(|e| e.1.is_finite())
                .map(|(k, v)| format!("{k:?}:{v}"))
                .collect::<Vec<_>>()
                .join(","),
            b_extra
                .iter()
                .filter(|e| e.1.is_finite())
                .map(|(k, v)| format!("{k:?}:{v}"))
                .collect::<Vec<_>>()
                .join(","),
            a_ok.is_ok(),
            b_ok.err().unwrap_or_else(|| "ok".into()),
        );
        writeln!(json, "{}", obj.replace("NaN", "null")).unwrap();
    }
    if rss.0.is_finite() {
        writeln!(
            table,
            "peak RSS while writing {} MiB with 8 producers: {OURS} {:.0} MiB, walrus-rust {:.0} MiB",
            scale.reopen_bytes >> 20,
            rss.0,
            rss.1
        )
        .unwrap();
        writeln!(
            json,
            "{{\"workload\":\"peak_rss_mib\",\"ours\":{},\"theirs\":{},\"quick\":{quick}}}",
            rss.0, rss.1
        )
        .unwrap();
    }
    writeln!(
        json,
        "{{\"workload\":\"machine\",\"buffered_bps\":{},\"direct_bps\":{},\"fsync_fresh_us\":{},\"fsync_rewritten_us\":{},\"fsync_spread_us\":{{{}}}}}",
        limits.buffered_bps,
        limits.direct_bps.map_or("null".into(), |d| d.to_string()),
        limits.fsync_fresh_us,
        limits.fsync_rewritten_us,
        limits
            .fsync_spread_us
            .iter()
            .map(|(n, us)| format!("\"{n}\":{us}"))
            .collect::<Vec<_>>()
            .join(",")
    )
    .unwrap();
    writeln!(
        table,
        "total time {:.0} s; JSON lines in {}",
        started.elapsed().as_secs_f64(),
        json_path.display()
    )
    .unwrap();
    print!("{table}");
    std::io::stdout().flush().unwrap();
    if failed {
        eprintln!("walrus-async failed a verification");
        std::process::exit(1);
    }
}
