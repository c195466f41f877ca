//! `walrus`: the operator's tool for walrus-async log directories.
//!
//! Read-only commands (`inspect`, `verify`, `dump`, `tail`, `consumers`) never take the
//! directory's lock and never write, so they work while an application has the log open.
//! Commands that change the log (`produce`, `consumers reset --execute`) open it through the
//! library and are refused, with a message, while another process has it open.
//!
//! Exit status: 0 fine, 1 damage or a failed check or operation, 2 usage error or not a log
//! directory. Every command takes `--json` (one JSON document; NDJSON for entries), whose
//! schema is versioned by `schema_version` (see the README's "Operations" section).

#[path = "walrus/serve.rs"]
mod serve;

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use base64::Engine as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use comfy_table::{Table, presets};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use walrus_async::inspect::{self, Pin, Report, Severity, TopicCursor};
use walrus_async::{Error, FsyncSchedule, ResetTo, Walrus};

#[derive(Parser)]
#[command(
    name = "walrus",
    version,
    about = "Inspect, verify and operate walrus-async logs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Target {
    /// The log's data directory (`WalrusBuilder::data_dir`).
    dir: PathBuf,
    /// The instance key (`WalrusBuilder::key`), if the log was opened with one.
    #[arg(long, env = "WALRUS_INSTANCE_KEY")]
    key: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Segments, topics, consumers and totals of a log. Read-only; works on a live log.
    Inspect {
        #[command(flatten)]
        target: Target,
        /// Print one JSON document instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Verify every frame's checksums and the checkpoint store; exit 1 on damage.
    /// Read-only; works on a live log.
    Verify {
        #[command(flatten)]
        target: Target,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a topic's entries. Read-only; works on a live log.
    Dump {
        #[command(flatten)]
        target: Target,
        /// The topic.
        topic: String,
        /// First offset to print.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Print at most this many entries.
        #[arg(long)]
        limit: Option<u64>,
        /// How to print each entry.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Same as `--format json`.
        #[arg(long)]
        json: bool,
    },
    /// Print a topic's last entries, and with `--follow` new ones as they are appended.
    /// Read-only; works on a live log.
    Tail {
        #[command(flatten)]
        target: Target,
        /// The topic.
        topic: String,
        /// How many of the last entries to print first.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: u64,
        /// Keep printing entries as they are appended (polls the files; Ctrl-C stops).
        #[arg(short, long)]
        follow: bool,
        /// How often `--follow` looks, in milliseconds.
        #[arg(long, default_value_t = 200)]
        interval_ms: u64,
        /// How to print each entry.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Same as `--format json`.
        #[arg(long)]
        json: bool,
    },
    /// Append each line of stdin to a topic (opens the log: refused while another process
    /// has it open).
    Produce {
        #[command(flatten)]
        target: Target,
        /// The topic.
        topic: String,
        /// Lines per atomic batch (1 when stdin is a terminal).
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Consumers and their lag; `consumers reset` moves one.
    Consumers(ConsumersArgs),
    /// Serve the log over HTTP and gRPC until SIGTERM or Ctrl-C, then drain and close it.
    /// Logs go to stderr (`RUST_LOG` filters them).
    Serve {
        #[command(flatten)]
        target: Target,
        /// Serve the HTTP API here, e.g. `127.0.0.1:8080` (port 0: any free port, logged).
        #[arg(long, value_name = "ADDR")]
        http: Option<std::net::SocketAddr>,
        /// Serve the gRPC API here, e.g. `127.0.0.1:50051`.
        #[arg(long, value_name = "ADDR")]
        grpc: Option<std::net::SocketAddr>,
        /// Require the bearer token this file holds on every request but health checks.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// Sync every this many milliseconds instead of before each acknowledgement (0: each
        /// append is durable before it is acknowledged).
        #[arg(long, default_value_t = 0)]
        fsync_ms: u64,
        /// On SIGTERM, wait at most this many seconds for open requests and streams before
        /// closing the log anyway.
        #[arg(long, default_value_t = 10)]
        drain_timeout_secs: u64,
    },
    /// Run a standard workload in a temporary directory and print what this disk does.
    Bench {
        /// A short run (about 2 seconds instead of 10).
        #[arg(long)]
        quick: bool,
        /// Where to make the temporary directory (default: the system's temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct ConsumersArgs {
    #[command(subcommand)]
    action: Option<ConsumersAction>,
    /// The log's data directory.
    dir: Option<PathBuf>,
    /// The instance key, if the log was opened with one.
    #[arg(long, env = "WALRUS_INSTANCE_KEY")]
    key: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum ConsumersAction {
    /// Move a consumer's checkpoint. Prints what it would do unless `--execute` is given.
    Reset {
        #[command(flatten)]
        target: Target,
        /// The topic.
        topic: String,
        /// The consumer (`""` for the topic's default consumer).
        consumer: String,
        /// Move it to this offset (clamped to the retained entries).
        #[arg(long, group = "to", required = true)]
        to_offset: Option<u64>,
        /// Move it to the oldest retained entry.
        #[arg(long, group = "to")]
        to_earliest: bool,
        /// Move it to the end (only new entries are read).
        #[arg(long, group = "to")]
        to_latest: bool,
        /// Do it (opens the log: refused while another process has it open).
        #[arg(long)]
        execute: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// `offset<TAB>time<TAB>payload` (non-UTF-8 payloads as base64, marked `b64:`).
    Text,
    /// `offset<TAB>time<TAB>payload in hex`.
    Hex,
    /// NDJSON: `{"offset", "timestamp_ms", "data" | "data_base64"}` per line.
    Json,
}

/// What went wrong, with the exit status it maps to.
enum Failure {
    /// The reader of our output went away (`walrus dump … | head`): stop quietly.
    Gone,
    /// Exit 1: damage found, or an operation failed.
    Failed(String),
    /// Exit 2: not a log directory, or input the tool cannot use.
    Usage(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        match e {
            Error::Io(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Failure::Gone,
            Error::NotALog { .. }
            | Error::UnsupportedFormat { .. }
            | Error::InvalidKey { .. }
            | Error::InvalidTopic { .. }
            | Error::InvalidConsumer { .. } => Failure::Usage(e.to_string()),
            Error::Locked { path } => Failure::Failed(format!(
                "{} is open in another process: stop it first (read-only commands such as \
                 `walrus inspect` work meanwhile)",
                path.display()
            )),
            e => Failure::Failed(e.to_string()),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return Failure::Gone;
        }
        Failure::Failed(e.to_string())
    }
}

type Outcome = Result<ExitCode, Failure>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Inspect { target, json } => cmd_inspect(&target, json),
        Command::Verify { target, json } => cmd_verify(&target, json),
        Command::Dump {
            target,
            topic,
            from,
            limit,
            format,
            json,
        } => cmd_dump(&target, &topic, from, limit, pick(format, json)),
        Command::Tail {
            target,
            topic,
            lines,
            follow,
            interval_ms,
            format,
            json,
        } => cmd_tail(
            &target,
            &topic,
            lines,
            follow.then(|| Duration::from_millis(interval_ms.max(10))),
            pick(format, json),
        ),
        Command::Produce {
            target,
            topic,
            batch,
            json,
        } => cmd_produce(&target, &topic, batch, json),
        Command::Consumers(args) => match args.action {
            Some(ConsumersAction::Reset {
                target,
                topic,
                consumer,
                to_offset,
                to_earliest,
                to_latest,
                execute,
                json,
            }) => {
                let to = match (to_offset, to_earliest, to_latest) {
                    (Some(n), _, _) => ResetTo::Offset(n),
                    (_, true, _) => ResetTo::Earliest,
                    (_, _, true) => ResetTo::Latest,
                    _ => unreachable!("clap requires one of the group"),
                };
                cmd_reset(&target, &topic, &consumer, to, execute, json)
            }
            None => match args.dir {
                Some(dir) => cmd_consumers(&Target { dir, key: args.key }, args.json),
                None => Err(Failure::Usage(
                    "the log's directory is missing: walrus consumers DIR".into(),
                )),
            },
        },
        Command::Serve {
            target,
            http,
            grpc,
            token_file,
            fsync_ms,
            drain_timeout_secs,
        } => serve::run(serve::Serve {
            target,
            http,
            grpc,
            token_file,
            fsync_ms,
            drain_timeout: Duration::from_secs(drain_timeout_secs),
        }),
        Command::Bench { quick, dir, json } => cmd_bench(quick, dir.as_deref(), json),
    };
    match res {
        Ok(code) => code,
        Err(Failure::Gone) => ExitCode::SUCCESS,
        Err(Failure::Failed(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(1)
        }
        Err(Failure::Usage(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(2)
        }
    }
}

fn pick(format: Format, json: bool) -> Format {
    if json { Format::Json } else { format }
}

fn key(t: &Target) -> Option<&str> {
    t.key.as_deref().filter(|k| !k.is_empty())
}

/// A progress bar on stderr when it is a terminal; hidden otherwise.
fn bar(len: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} ({eta})")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

fn scan(t: &Target, what: &str) -> Result<Report, Failure> {
    let pb = bar(0);
    pb.set_message(what.to_owned());
    let report = inspect::inspect(&t.dir, key(t), &mut |p| {
        pb.set_length(p.total);
        pb.set_position(p.done);
    });
    pb.finish_and_clear();
    Ok(report?)
}

fn print_json<T: Serialize>(v: &T) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v).map_err(|e| Failure::Failed(e.to_string()))?;
    writeln!(out)?;
    Ok(())
}

fn status(report: &Report) -> ExitCode {
    if report.is_damaged() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED);
    t.set_header(header.iter().copied());
    t
}

fn cmd_inspect(t: &Target, json: bool) -> Outcome {
    let report = scan(t, "reading")?;
    if json {
        print_json(&report)?;
        return Ok(status(&report));
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "log {} (format {}, id {}, {})",
        report.dir.display(),
        report.format_version,
        report.log_id.as_deref().unwrap_or("unknown"),
        match (report.live, report.holder_pid) {
            (Some(true), Some(pid)) => format!("open in process {pid}"),
            (Some(true), None) => "open in another process".into(),
            (Some(false), _) => "not open".into(),
            (None, _) => "cannot tell whether open".into(),
        }
    )?;
    writeln!(out, "\nSegments")?;
    let mut st = table(&[
        "file",
        "created",
        "allocated",
        "written",
        "frames",
        "topics",
        "reclaimable",
        "pinned by",
    ]);
    for s in &report.segments {
        let mut pins: Vec<String> = s.pinned_by.iter().map(pin_text).collect();
        if s.pin_count > s.pinned_by.len() as u64 {
            pins.push(format!("… {} more", s.pin_count - s.pinned_by.len() as u64));
        }
        st.add_row(vec![
            s.file.clone(),
            time_text(s.created_ms),
            bytes_text(s.allocated_bytes),
            bytes_text(s.written_bytes),
            s.frames.to_string(),
            s.topic_count.to_string(),
            if s.foreign {
                "no (another log's)".into()
            } else if let Some(of) = &s.copy_of {
                format!("no (a copy of {of})")
            } else if s.reclaimable {
                "yes".into()
            } else {
                "no".into()
            },
            pins.join(", "),
        ]);
    }
    writeln!(out, "{st}")?;
    writeln!(out, "\nTopics")?;
    let mut tt = table(&[
        "topic",
        "entries",
        "bytes",
        "oldest",
        "next",
        "oldest at",
        "newest at",
    ]);
    for t in &report.topics {
        tt.add_row(vec![
            t.name.clone(),
            t.entries.to_string(),
            bytes_text(t.bytes),
            t.oldest_offset.map_or("-".into(), |o| o.to_string()),
            t.next_offset.to_string(),
            t.oldest_ms.map_or("-".into(), time_text),
            t.newest_ms.map_or("-".into(), time_text),
        ]);
    }
    writeln!(out, "{tt}")?;
    write_consumers(&mut out, &report)?;
    write_problems(&mut out, &report)?;
    let tot = &report.totals;
    writeln!(
        out,
        "\n{} segments ({} allocated, {} written, {} reclaimable), {} topics, {} entries ({}), \
         {} consumers, {} damaged, {} warnings",
        tot.segments,
        bytes_text(tot.allocated_bytes),
        bytes_text(tot.written_bytes),
        tot.reclaimable_segments,
        tot.topics,
        tot.entries,
        bytes_text(tot.bytes),
        tot.consumers,
        tot.damage,
        tot.warnings
    )?;
    Ok(status(&report))
}

fn write_consumers(out: &mut impl Write, report: &Report) -> std::io::Result<()> {
    writeln!(out, "\nConsumers")?;
    let mut ct = table(&[
        "topic",
        "consumer",
        "checkpoint",
        "lag (entries)",
        "lag (bytes)",
        "oldest unconsumed",
        "pins",
    ]);
    for c in &report.consumers {
        ct.add_row(vec![
            c.topic.clone(),
            consumer_text(&c.consumer),
            c.checkpoint.to_string(),
            c.lag_entries.to_string(),
            bytes_text(c.lag_bytes),
            c.oldest_unconsumed_ms.map_or("-".into(), time_text),
            format!(
                "{} in {} files",
                bytes_text(c.pinned_bytes),
                c.pinned_segments
            ),
        ]);
    }
    writeln!(out, "{ct}")
}

fn write_problems(out: &mut impl Write, report: &Report) -> std::io::Result<()> {
    if report.problems.is_empty() {
        return writeln!(out, "\nNo problems found.");
    }
    writeln!(out, "\nProblems")?;
    let mut pt = table(&["", "file", "position", "kind", "what", "offsets lost"]);
    for p in &report.problems {
        pt.add_row(vec![
            match p.severity {
                Severity::Damage => "DAMAGE".to_string(),
                _ => "warning".to_string(),
            },
            p.file.clone(),
            p.position.to_string(),
            p.kind.to_string(),
            p.message.clone(),
            p.affected
                .iter()
                .map(|a| format!("{} {}..{}", a.topic, a.start, a.end))
                .collect::<Vec<_>>()
                .join(", "),
        ]);
    }
    writeln!(out, "{pt}")
}

fn cmd_verify(t: &Target, json: bool) -> Outcome {
    let report = scan(t, "verifying")?;
    if json {
        #[derive(Serialize)]
        struct Verified<'a> {
            schema_version: u32,
            dir: &'a Path,
            ok: bool,
            segments: u64,
            bytes_checked: u64,
            frames: u64,
            problems: &'a [inspect::Problem],
        }
        print_json(&Verified {
            schema_version: report.schema_version,
            dir: &report.dir,
            ok: !report.is_damaged(),
            segments: report.totals.segments,
            bytes_checked: report.totals.written_bytes,
            frames: report.segments.iter().map(|s| s.frames).sum(),
            problems: &report.problems,
        })?;
        return Ok(status(&report));
    }
    let mut out = std::io::stdout().lock();
    for p in &report.problems {
        let lost = p
            .affected
            .iter()
            .map(|a| format!(" topic {:?} offsets {}..{}", a.topic, a.start, a.end))
            .collect::<String>();
        writeln!(
            out,
            "{}: {} at byte {}: {} [{}]{lost}",
            match p.severity {
                Severity::Damage => "DAMAGE",
                _ => "warning",
            },
            p.file,
            p.position,
            p.message,
            p.kind
        )?;
    }
    let frames: u64 = report.segments.iter().map(|s| s.frames).sum();
    writeln!(
        out,
        "{}: {} segments, {} frames, {} checked; {} damaged, {} warnings",
        if report.is_damaged() { "DAMAGED" } else { "OK" },
        report.totals.segments,
        frames,
        bytes_text(report.totals.written_bytes),
        report.totals.damage,
        report.totals.warnings
    )?;
    Ok(status(&report))
}

fn print_entry(out: &mut impl Write, e: &inspect::RawEntry, format: Format) -> std::io::Result<()> {
    match format {
        Format::Text => match std::str::from_utf8(&e.data) {
            Ok(s) => writeln!(
                out,
                "{}\t{}\t{}",
                e.offset,
                time_text(e.timestamp_ms),
                s.escape_debug()
            ),
            Err(_) => writeln!(
                out,
                "{}\t{}\tb64:{}",
                e.offset,
                time_text(e.timestamp_ms),
                base64::engine::general_purpose::STANDARD.encode(&e.data)
            ),
        },
        Format::Hex => {
            let hex: String = e.data.iter().map(|b| format!("{b:02x}")).collect();
            writeln!(out, "{}\t{}\t{hex}", e.offset, time_text(e.timestamp_ms))
        }
        Format::Json => {
            let v = match std::str::from_utf8(&e.data) {
                Ok(s) => serde_json::json!({
                    "offset": e.offset, "timestamp_ms": e.timestamp_ms, "data": s,
                }),
                Err(_) => serde_json::json!({
                    "offset": e.offset, "timestamp_ms": e.timestamp_ms,
                    "data_base64": base64::engine::general_purpose::STANDARD.encode(&e.data),
                }),
            };
            writeln!(out, "{v}")
        }
    }
}

fn cmd_dump(t: &Target, topic: &str, from: u64, limit: Option<u64>, format: Format) -> Outcome {
    let mut cursor = TopicCursor::from_offset(from);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    inspect::read_topic_with(
        &t.dir,
        key(t),
        topic,
        &mut cursor,
        limit.unwrap_or(u64::MAX),
        &mut |e| print_entry(&mut out, &e, format),
    )?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn cmd_tail(
    t: &Target,
    topic: &str,
    lines: u64,
    follow: Option<Duration>,
    format: Format,
) -> Outcome {
    // One pass over the topic, keeping the last `lines` entries.
    let mut cursor = TopicCursor::from_offset(0);
    let mut last = std::collections::VecDeque::new();
    inspect::read_topic_with(&t.dir, key(t), topic, &mut cursor, u64::MAX, &mut |e| {
        if lines > 0 {
            if last.len() as u64 == lines {
                last.pop_front();
            }
            last.push_back(e);
        }
        Ok(())
    })?;
    let mut out = std::io::stdout().lock();
    for e in &last {
        print_entry(&mut out, e, format)?;
    }
    out.flush()?;
    let Some(every) = follow else {
        return Ok(ExitCode::SUCCESS);
    };
    loop {
        let n = inspect::read_topic_with(&t.dir, key(t), topic, &mut cursor, u64::MAX, &mut |e| {
            print_entry(&mut out, &e, format)
        })?;
        if n > 0 {
            out.flush()?;
        }
        std::thread::sleep(every);
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn open(rt: &tokio::runtime::Runtime, t: &Target, fsync: FsyncSchedule) -> Result<Walrus, Failure> {
    let mut b = Walrus::builder().data_dir(&t.dir).fsync(fsync);
    if let Some(k) = key(t) {
        b = b.key(k);
    }
    Ok(rt.block_on(b.open())?)
}

fn cmd_produce(t: &Target, topic: &str, batch: usize, json: bool) -> Outcome {
    let rt = runtime()?;
    let wal = open(&rt, t, FsyncSchedule::Milliseconds(200))?;
    let stdin = std::io::stdin();
    // No larger than the library takes in one batch.
    let batch = if stdin.is_terminal() {
        1
    } else {
        batch.clamp(1, walrus_async::DEFAULT_MAX_BATCH_ENTRIES)
    };
    let mut lines = stdin.lock().lines();
    let (mut first, mut next, mut entries) = (None, 0u64, 0u64);
    let res: Result<(), Failure> = (|| {
        loop {
            let mut chunk = Vec::with_capacity(batch.min(4096));
            for line in lines.by_ref() {
                chunk.push(line?);
                if chunk.len() >= batch {
                    break;
                }
            }
            if chunk.is_empty() {
                return Ok(());
            }
            entries += chunk.len() as u64;
            let r = rt.block_on(wal.append_batch(topic, chunk))?;
            first.get_or_insert(r.start);
            next = r.end;
        }
    })();
    // Durable before saying so, whatever the schedule.
    let closed = rt.block_on(wal.close());
    res?;
    closed?;
    if json {
        print_json(&serde_json::json!({
            "schema_version": inspect::SCHEMA_VERSION,
            "topic": topic,
            "entries": entries,
            "first_offset": first,
            "next_offset": next,
        }))?;
    } else {
        match first {
            Some(f) => eprintln!("appended {entries} entries to {topic:?}: offsets {f}..{next}"),
            None => eprintln!("nothing to append (stdin was empty)"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_consumers(t: &Target, json: bool) -> Outcome {
    let report = inspect::inspect(&t.dir, key(t), &mut |_| {})?;
    if json {
        print_json(&serde_json::json!({
            "schema_version": report.schema_version,
            "consumers": report.consumers,
        }))?;
    } else {
        write_consumers(&mut std::io::stdout().lock(), &report)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_reset(
    t: &Target,
    topic: &str,
    consumer: &str,
    to: ResetTo,
    execute: bool,
    json: bool,
) -> Outcome {
    let report = inspect::inspect(&t.dir, key(t), &mut |_| {})?;
    let now = report
        .consumers
        .iter()
        .find(|c| c.topic == topic && c.consumer == consumer)
        .map(|c| c.checkpoint);
    let (oldest, end) = report
        .topics
        .iter()
        .find(|x| x.name == topic)
        .map_or((0, 0), |x| {
            (x.oldest_offset.unwrap_or(x.next_offset), x.next_offset)
        });
    let target = match to {
        ResetTo::Earliest => oldest,
        ResetTo::Latest => end,
        ResetTo::Offset(n) => n.clamp(oldest, end.max(oldest)),
    };
    let done = if execute {
        let rt = runtime()?;
        let wal = open(&rt, t, FsyncSchedule::SyncEach)?;
        let res = rt.block_on(wal.reset_consumer(topic, consumer, to));
        let closed = rt.block_on(wal.close());
        let at = res?;
        closed?;
        Some(at)
    } else {
        None
    };
    let who = consumer_text(consumer);
    let from = now.map_or("not registered".to_string(), |n| n.to_string());
    if json {
        print_json(&serde_json::json!({
            "schema_version": inspect::SCHEMA_VERSION,
            "topic": topic,
            "consumer": consumer,
            "checkpoint": now,
            "target": done.unwrap_or(target),
            "executed": execute,
        }))?;
    } else if let Some(at) = done {
        println!("consumer {who} of {topic:?}: moved from {from} to {at}");
    } else {
        println!(
            "consumer {who} of {topic:?}: would move from {from} to {target} (nothing changed; \
             add --execute to do it)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct BenchRow {
    workload: String,
    appends_per_sec: f64,
    mb_per_sec: f64,
    fsyncs: u64,
    p50_us: f64,
    p99_us: f64,
}

fn cmd_bench(quick: bool, dir: Option<&Path>, json: bool) -> Outcome {
    let base = dir.map_or_else(std::env::temp_dir, Path::to_path_buf);
    let work = base.join(format!(
        "walrus-bench-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&work)?;
    let res = bench_in(&work, quick);
    let _ = std::fs::remove_dir_all(&work);
    let rows = res?;
    if json {
        print_json(&serde_json::json!({
            "schema_version": inspect::SCHEMA_VERSION,
            "dir": base,
            "rows": rows,
        }))?;
    } else {
        let mut t = table(&["workload", "appends/s", "MB/s", "fsyncs", "p50", "p99"]);
        for r in &rows {
            t.add_row(vec![
                r.workload.clone(),
                format!("{:.0}", r.appends_per_sec),
                format!("{:.1}", r.mb_per_sec),
                r.fsyncs.to_string(),
                format!("{:.0} µs", r.p50_us),
                format!("{:.0} µs", r.p99_us),
            ]);
        }
        println!("{t}");
    }
    Ok(ExitCode::SUCCESS)
}

fn bench_in(work: &Path, quick: bool) -> Result<Vec<BenchRow>, Failure> {
    const SIZE: usize = 1024;
    let secs = if quick { 1 } else { 5 };
    let workloads = [
        (
            "1 KiB appends, 16 producers, Milliseconds(200)",
            FsyncSchedule::Milliseconds(200),
            16usize,
        ),
        (
            "1 KiB durable appends, 16 producers, SyncEach",
            FsyncSchedule::SyncEach,
            16,
        ),
        (
            "1 KiB durable appends, 1 producer, SyncEach",
            FsyncSchedule::SyncEach,
            1,
        ),
    ];
    let rt = runtime()?;
    let pb = if std::io::stderr().is_terminal() {
        let pb = ProgressBar::new((workloads.len() * secs) as u64);
        if let Ok(s) = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} s") {
            pb.set_style(s.progress_chars("=> "));
        }
        pb
    } else {
        ProgressBar::hidden()
    };
    let mut rows = Vec::new();
    for (i, (name, fsync, producers)) in workloads.into_iter().enumerate() {
        pb.set_message(name);
        let t = Target {
            dir: work.join(format!("w{i}")),
            key: None,
        };
        let wal = open(&rt, &t, fsync)?;
        let before = wal.stats();
        let window = Duration::from_secs(secs as u64);
        let started = Instant::now();
        let lat = rt.block_on(async {
            let tasks: Vec<_> = (0..producers)
                .map(|p| {
                    let wal = wal.clone();
                    tokio::spawn(async move {
                        let topic = format!("bench-{p}");
                        let payload = bytes::Bytes::from(vec![b'x'; SIZE]);
                        let mut lat = Vec::new();
                        while started.elapsed() < window {
                            let t0 = Instant::now();
                            wal.append(&topic, payload.clone()).await?;
                            lat.push(t0.elapsed());
                        }
                        Ok::<_, Error>(lat)
                    })
                })
                .collect();
            let ticker = async {
                while started.elapsed() < window {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    pb.set_position((i * secs) as u64 + started.elapsed().as_secs());
                }
            };
            let (all, ()) = tokio::join!(futures::future::join_all(tasks), ticker);
            let mut lat = Vec::new();
            for r in all {
                lat.extend(r.map_err(|e| Failure::Failed(e.to_string()))??);
            }
            Ok::<_, Failure>(lat)
        })?;
        let elapsed = started.elapsed().as_secs_f64();
        let after = wal.stats();
        rt.block_on(wal.close())?;
        let mut lat = lat;
        lat.sort();
        let pct = |q: f64| {
            lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
                .map_or(0.0, |d| d.as_secs_f64() * 1e6)
        };
        let n = lat.len() as f64;
        rows.push(BenchRow {
            workload: name.to_owned(),
            appends_per_sec: n / elapsed,
            mb_per_sec: n * SIZE as f64 / elapsed / 1e6,
            fsyncs: after.fsyncs - before.fsyncs,
            p50_us: pct(0.50),
            p99_us: pct(0.99),
        });
    }
    pb.finish_and_clear();
    Ok(rows)
}

fn consumer_text(c: &str) -> String {
    if c.is_empty() {
        "(default)".into()
    } else {
        c.to_owned()
    }
}

fn pin_text(p: &Pin) -> String {
    match p {
        Pin::Writer => "the writer".into(),
        Pin::Consumer {
            topic,
            consumer,
            checkpoint,
        } => format!("{} of {topic} at {checkpoint}", consumer_text(consumer)),
        Pin::Unconsumed { topic } => format!("{topic} (no consumer)"),
        Pin::CheckpointStore => "damaged checkpoint store".into(),
        Pin::Unreadable => "unreadable, kept for a human".into(),
        Pin::Spare => "a spare for the writer".into(),
        _ => "other".into(),
    }
}

fn bytes_text(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC) for milliseconds since the Unix epoch.
fn time_text(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm), for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}
