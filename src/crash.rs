//! Crash-consistency simulation (cargo feature `failpoints`; tests only).
//!
//! A [`CrashJournal`] attached to a log (through
//! [`FailPoints::record_into`](crate::FailPoints::record_into)) records the effects the real
//! engine has on the files of its namespace, in the order they completed: file creation, renames,
//! removals, writes, size changes, and the start and the successful end of every `fdatasync`
//! and directory `fsync`. Not recorded: directory creation (images always have the
//! directories), the `LOCK` file, and the bytes of a write that failed midway (an injected short
//! write is recorded as the half it wrote). From that history, [`CrashJournal::crash_image`] builds the files a
//! disk could hold had the machine lost power at any chosen point of it:
//!
//! * a file's bytes are what its last completed sync covered (writes that completed before
//!   that sync *started*), plus an arbitrary subset of the later writes, applied in any order,
//!   one of them possibly torn at any byte;
//! * a directory holds what its last completed directory sync covered, plus any prefix of the
//!   later creations, renames and removals in it. That is how ext4 and xfs behave (their
//!   journals commit metadata in order), not a POSIX promise.
//!
//! The choices are drawn from a seed, so one `(history, crash point, seed)` always gives the
//! same image. The image is written to a new directory, where the test reopens it with the
//! real engine and checks every promise.
//!
//! `// NOTE:` this is "record, then enumerate crash states" (as CrashMonkey and ALICE do)
//! rather than an in-memory file system: the engine under test runs unmodified on real files,
//! including its memory maps (and its io_uring path for writes above `inline_write_max`, and
//! for every fsync), and only the crash is simulated. For file data the model assumes nothing is
//! durable that POSIX does not promise; tears are prefixes, at most one per file.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The recorded history of one or more logs under one data directory. Clones share it.
#[derive(Clone, Debug)]
pub struct CrashJournal {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    root: PathBuf,
    /// Files present when recording started, taken as durable: (relative path, bytes).
    initial: Vec<(PathBuf, Vec<u8>)>,
    /// Inode numbers of the initial files, in the same order.
    initial_inos: Vec<u64>,
    events: Vec<Event>,
    next_token: u64,
}

#[derive(Debug)]
enum Event {
    Create { path: PathBuf, ino: u64 },
    Extend { ino: u64, len: u64 },
    SetLen { ino: u64, len: u64 },
    Write { ino: u64, pos: u64, data: Vec<u8> },
    SyncBegin { ino: u64, token: u64 },
    SyncEnd { token: u64 },
    DirSyncBegin { dir: PathBuf, token: u64 },
    DirSyncEnd { token: u64 },
    Rename { from: PathBuf, to: PathBuf },
    Remove { path: PathBuf },
}

/// What one crash image kept and dropped, for the test's report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrashImage {
    /// Files in the image.
    pub files: usize,
    /// Writes (and size changes) that no completed sync covered.
    pub unsynced_writes: usize,
    /// How many of those the image kept.
    pub kept_writes: usize,
    /// Whether one kept write was torn.
    pub torn: bool,
    /// Directory operations that no completed directory sync covered, and how many were kept.
    pub unsynced_dir_ops: usize,
    /// See `unsynced_dir_ops`.
    pub kept_dir_ops: usize,
}

enum FileOp<'a> {
    Extend(u64),
    /// `set_len`: the file's length becomes exactly this (a cut back).
    SetLen(u64),
    Write(u64, &'a [u8]),
}

#[derive(Default)]
struct SimFile<'a> {
    ops: Vec<FileOp<'a>>,
    durable: usize,
}

enum NameOp {
    Link(OsString, usize),
    Unlink(OsString),
    Rename(OsString, OsString),
}

#[derive(Default)]
struct SimDir {
    initial: BTreeMap<OsString, usize>,
    ops: Vec<NameOp>,
    durable: usize,
}

impl CrashJournal {
    /// Starts recording under `root` (a log's data directory). Files already there count as
    /// durable: they are what an earlier crash image left.
    pub fn start(root: &Path) -> io::Result<CrashJournal> {
        let mut initial = Vec::new();
        let mut initial_inos = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let meta = entry.metadata()?;
                if meta.is_dir() {
                    stack.push(entry.path());
                } else if meta.is_file() {
                    let rel = entry
                        .path()
                        .strip_prefix(root)
                        .map_err(io::Error::other)?
                        .into();
                    initial.push((rel, std::fs::read(entry.path())?));
                    initial_inos.push(meta.ino());
                }
            }
        }
        Ok(CrashJournal {
            inner: Arc::new(Mutex::new(State {
                root: root.to_path_buf(),
                initial,
                initial_inos,
                events: Vec::new(),
                next_token: 0,
            })),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The number of recorded effects: a crash point after everything that happened so far.
    pub fn position(&self) -> usize {
        self.state().events.len()
    }

    fn push(&self, e: Event) {
        self.state().events.push(e);
    }

    fn rel(&self, path: &Path) -> Option<PathBuf> {
        let st = self.state();
        path.strip_prefix(&st.root).ok().map(Path::to_path_buf)
    }

    pub(crate) fn created(&self, path: &Path, file: &File) {
        if let (Some(path), Ok(m)) = (self.rel(path), file.metadata()) {
            self.push(Event::Create { path, ino: m.ino() });
        }
    }

    pub(crate) fn extended(&self, file: &File, len: u64) {
        if let Ok(m) = file.metadata() {
            self.push(Event::Extend { ino: m.ino(), len });
        }
    }

    pub(crate) fn set_len(&self, file: &File, len: u64) {
        if let Ok(m) = file.metadata() {
            self.push(Event::SetLen { ino: m.ino(), len });
        }
    }

    pub(crate) fn wrote(&self, file: &File, pos: u64, data: &[u8]) {
        if let Ok(m) = file.metadata() {
            self.push(Event::Write {
                ino: m.ino(),
                pos,
                data: data.to_vec(),
            });
        }
    }

    pub(crate) fn sync_begin(&self, file: &File) -> Option<u64> {
        let ino = file.metadata().ok()?.ino();
        let mut st = self.state();
        let token = st.next_token;
        st.next_token += 1;
        st.events.push(Event::SyncBegin { ino, token });
        Some(token)
    }

    pub(crate) fn sync_end(&self, token: u64) {
        self.push(Event::SyncEnd { token });
    }

    pub(crate) fn dir_sync_begin(&self, dir: &Path) -> Option<u64> {
        let dir = self.rel(dir)?;
        let mut st = self.state();
        let token = st.next_token;
        st.next_token += 1;
        st.events.push(Event::DirSyncBegin { dir, token });
        Some(token)
    }

    pub(crate) fn dir_sync_end(&self, token: u64) {
        self.push(Event::DirSyncEnd { token });
    }

    pub(crate) fn renamed(&self, from: &Path, to: &Path) {
        if let (Some(from), Some(to)) = (self.rel(from), self.rel(to)) {
            self.push(Event::Rename { from, to });
        }
    }

    /// Records that `path` was removed by someone other than the log (an operator, a test):
    /// crash images from then on may or may not hold it, like any unlink not yet synced.
    pub fn removed_by_hand(&self, path: &Path) {
        self.removed(path);
    }

    pub(crate) fn removed(&self, path: &Path) {
        if let Some(path) = self.rel(path) {
            self.push(Event::Remove { path });
        }
    }

    /// Writes to `dest` (a new, empty directory) the files a disk could hold after a power
    /// loss once the first `at` recorded effects had happened, with the choices the model leaves
    /// open drawn from `seed`. `dest` then stands in for the data directory.
    pub fn crash_image(&self, at: usize, seed: u64, dest: &Path) -> io::Result<CrashImage> {
        let st = self.state();
        let at = at.min(st.events.len());
        let mut files: Vec<SimFile<'_>> = Vec::new();
        let mut dirs: BTreeMap<PathBuf, SimDir> = BTreeMap::new();
        let mut by_ino: HashMap<u64, usize> = HashMap::new();
        let split = |p: &Path| -> (PathBuf, OsString) {
            (
                p.parent().map(Path::to_path_buf).unwrap_or_default(),
                p.file_name().map(OsString::from).unwrap_or_default(),
            )
        };
        for ((path, bytes), ino) in st.initial.iter().zip(&st.initial_inos) {
            let id = files.len();
            files.push(SimFile {
                ops: vec![FileOp::Write(0, bytes)],
                durable: 1,
            });
            by_ino.insert(*ino, id);
            let (dir, name) = split(path);
            dirs.entry(dir).or_default().initial.insert(name, id);
        }
        // Path -> file, to forget a removed file's inode (ext4 reuses inode numbers).
        let mut live: HashMap<PathBuf, usize> = HashMap::new();
        for ((path, _), ino) in st.initial.iter().zip(&st.initial_inos) {
            if let Some(&id) = by_ino.get(ino) {
                live.insert(path.clone(), id);
            }
        }
        let mut syncs: HashMap<u64, (usize, usize)> = HashMap::new();
        let mut dir_syncs: HashMap<u64, (PathBuf, usize)> = HashMap::new();
        for e in &st.events[..at] {
            match e {
                Event::Create { path, ino } => {
                    let id = files.len();
                    files.push(SimFile::default());
                    by_ino.insert(*ino, id);
                    live.insert(path.clone(), id);
                    let (dir, name) = split(path);
                    dirs.entry(dir)
                        .or_default()
                        .ops
                        .push(NameOp::Link(name, id));
                }
                Event::Extend { ino, len } => {
                    if let Some(&id) = by_ino.get(ino) {
                        files[id].ops.push(FileOp::Extend(*len));
                    }
                }
                Event::SetLen { ino, len } => {
                    if let Some(&id) = by_ino.get(ino) {
                        files[id].ops.push(FileOp::SetLen(*len));
                    }
                }
                Event::Write { ino, pos, data } => {
                    if let Some(&id) = by_ino.get(ino) {
                        files[id].ops.push(FileOp::Write(*pos, data));
                    }
                }
                Event::SyncBegin { ino, token } => {
                    if let Some(&id) = by_ino.get(ino) {
                        syncs.insert(*token, (id, files[id].ops.len()));
                    }
                }
                Event::SyncEnd { token } => {
                    if let Some(&(id, n)) = syncs.get(token) {
                        files[id].durable = files[id].durable.max(n);
                    }
                }
                Event::DirSyncBegin { dir, token } => {
                    let n = dirs.entry(dir.clone()).or_default().ops.len();
                    dir_syncs.insert(*token, (dir.clone(), n));
                }
                Event::DirSyncEnd { token } => {
                    if let Some((dir, n)) = dir_syncs.get(token)
                        && let Some(d) = dirs.get_mut(dir)
                    {
                        d.durable = d.durable.max(*n);
                    }
                }
                Event::Rename { from, to } => {
                    if let Some(id) = live.remove(from) {
                        live.insert(to.clone(), id);
                    }
                    let (dir, from) = split(from);
                    let (_, to) = split(to);
                    dirs.entry(dir)
                        .or_default()
                        .ops
                        .push(NameOp::Rename(from, to));
                }
                Event::Remove { path } => {
                    if let Some(id) = live.remove(path) {
                        by_ino.retain(|_, f| *f != id);
                    }
                    let (dir, name) = split(path);
                    dirs.entry(dir).or_default().ops.push(NameOp::Unlink(name));
                }
            }
        }
        // Seeded: the image depends on the seed alone.
        let mut rng =
            fastrand::Rng::with_seed(seed ^ (at as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
        let mut report = CrashImage::default();
        for (dir, d) in &dirs {
            let cut = d.durable + rng.usize(..=d.ops.len() - d.durable);
            report.unsynced_dir_ops += d.ops.len() - d.durable;
            report.kept_dir_ops += cut - d.durable;
            let mut names = d.initial.clone();
            for op in &d.ops[..cut] {
                match op {
                    NameOp::Link(n, id) => {
                        names.insert(n.clone(), *id);
                    }
                    NameOp::Unlink(n) => {
                        names.remove(n);
                    }
                    NameOp::Rename(from, to) => {
                        if let Some(id) = names.remove(from) {
                            names.insert(to.clone(), id);
                        }
                    }
                }
            }
            let out_dir = dest.join(dir);
            std::fs::create_dir_all(&out_dir)?;
            for (name, id) in names {
                let content = image_of(&files[id], &mut rng, &mut report);
                write_sparse(&out_dir.join(name), &content)?;
                report.files += 1;
            }
        }
        Ok(report)
    }
}

/// The bytes of one file after the crash: its durable operations, then a random subset of the
/// rest in random order, one possibly torn.
fn image_of(f: &SimFile<'_>, rng: &mut fastrand::Rng, report: &mut CrashImage) -> Vec<u8> {
    let mut out = Vec::new();
    let apply = |out: &mut Vec<u8>, op: &FileOp<'_>, cut: Option<usize>| match *op {
        FileOp::Extend(len) => {
            if out.len() < len as usize {
                out.resize(len as usize, 0);
            }
        }
        FileOp::SetLen(len) => out.resize(len as usize, 0),
        FileOp::Write(pos, data) => {
            let data = &data[..cut.unwrap_or(data.len()).min(data.len())];
            let end = pos as usize + data.len();
            if out.len() < end {
                out.resize(end, 0);
            }
            out[pos as usize..end].copy_from_slice(data);
        }
    };
    for op in &f.ops[..f.durable] {
        apply(&mut out, op, None);
    }
    let pending = &f.ops[f.durable..];
    report.unsynced_writes += pending.len();
    let mut kept: Vec<&FileOp<'_>> = pending.iter().filter(|_| rng.bool()).collect();
    // Fisher-Yates: the disk may have written them in any order.
    for i in (1..kept.len()).rev() {
        kept.swap(i, rng.usize(..=i));
    }
    report.kept_writes += kept.len();
    let torn = if kept.is_empty() || rng.u8(..4) != 0 {
        None
    } else {
        Some(rng.usize(..kept.len()))
    };
    for (i, op) in kept.into_iter().enumerate() {
        let cut = match (torn == Some(i), op) {
            (true, FileOp::Write(_, data)) => {
                report.torn = true;
                Some(rng.usize(..=data.len()))
            }
            _ => None,
        };
        apply(&mut out, op, cut);
    }
    out
}

/// Writes `content` leaving its all-zero pages as holes, as preallocated space would be.
fn write_sparse(path: &Path, content: &[u8]) -> io::Result<()> {
    let f = File::create_new(path)?;
    f.set_len(content.len() as u64)?;
    for (i, page) in content.chunks(4096).enumerate() {
        if page.iter().any(|&b| b != 0) {
            f.write_all_at(page, i as u64 * 4096)?;
        }
    }
    Ok(())
}

// Not under Miri: these create and read real files.
#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;

    fn file(j: &CrashJournal, path: &Path) -> File {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .unwrap();
        j.created(path, &f);
        f
    }

    fn write(j: &CrashJournal, f: &File, pos: u64, data: &[u8]) {
        f.write_all_at(data, pos).unwrap();
        j.wrote(f, pos, data);
    }

    fn sync(j: &CrashJournal, f: &File) {
        let t = j.sync_begin(f).unwrap();
        j.sync_end(t);
    }

    fn dir_sync(j: &CrashJournal, dir: &Path) {
        let t = j.dir_sync_begin(dir).unwrap();
        j.dir_sync_end(t);
    }

    /// The image at the end of the history for `seeds` seeds.
    fn images(j: &CrashJournal, seeds: u64) -> Vec<(tempfile::TempDir, CrashImage)> {
        (0..seeds)
            .map(|seed| {
                let out = tempfile::tempdir().unwrap();
                let report = j.crash_image(j.position(), seed, out.path()).unwrap();
                (out, report)
            })
            .collect()
    }

    #[test]
    fn synced_bytes_always_survive_and_unsynced_ones_only_sometimes() {
        let root = tempfile::tempdir().unwrap();
        let j = CrashJournal::start(root.path()).unwrap();
        let f = file(&j, &root.path().join("f"));
        dir_sync(&j, root.path());
        write(&j, &f, 0, b"synced");
        sync(&j, &f);
        write(&j, &f, 6, b"-later");
        let (mut with, mut without, mut torn) = (0, 0, 0);
        for (out, report) in images(&j, 200) {
            let b = std::fs::read(out.path().join("f")).unwrap();
            assert!(b.starts_with(b"synced"), "{b:?}");
            match &b[6..] {
                b"-later" => with += 1,
                b"" => without += 1,
                t if b"-later".starts_with(t) => torn += 1,
                other => panic!("not a prefix of the write: {other:?}"),
            }
            assert_eq!(report.unsynced_writes, 1);
        }
        assert!(
            with > 0 && without > 0 && torn > 0,
            "{with} {without} {torn}"
        );
    }

    #[test]
    fn a_sync_covers_only_writes_that_completed_before_it_started() {
        let root = tempfile::tempdir().unwrap();
        let j = CrashJournal::start(root.path()).unwrap();
        let f = file(&j, &root.path().join("f"));
        dir_sync(&j, root.path());
        write(&j, &f, 0, b"a");
        let t = j.sync_begin(&f).unwrap();
        write(&j, &f, 1, b"b"); // completes while the sync runs
        j.sync_end(t);
        let mut lost_b = false;
        for (out, _) in images(&j, 100) {
            let b = std::fs::read(out.path().join("f")).unwrap();
            assert_eq!(b.first(), Some(&b'a'));
            lost_b |= b.len() == 1;
        }
        assert!(lost_b, "the write during the sync was treated as synced");
    }

    #[test]
    fn unsynced_directory_operations_survive_as_a_prefix() {
        let root = tempfile::tempdir().unwrap();
        let j = CrashJournal::start(root.path()).unwrap();
        let f1 = root.path().join("f1");
        drop(file(&j, &f1));
        dir_sync(&j, root.path());
        let (f2, f3) = (root.path().join("f2"), root.path().join("f3"));
        drop(file(&j, &f2));
        std::fs::rename(&f2, &f3).unwrap();
        j.renamed(&f2, &f3);
        std::fs::remove_file(&f1).unwrap();
        j.removed(&f1);
        let mut seen = std::collections::BTreeSet::new();
        for (out, _) in images(&j, 200) {
            let names: Vec<String> = std::fs::read_dir(out.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            seen.insert(names.join(","));
        }
        let prefixes: std::collections::BTreeSet<String> = ["f1", "f1,f2", "f1,f3", "f3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(seen, prefixes);
    }

    #[test]
    fn files_present_at_the_start_are_durable() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("ns")).unwrap();
        std::fs::write(root.path().join("ns/old"), b"kept").unwrap();
        let j = CrashJournal::start(root.path()).unwrap();
        for (out, _) in images(&j, 10) {
            assert_eq!(std::fs::read(out.path().join("ns/old")).unwrap(), b"kept");
        }
    }
}
