//! Durable consumer checkpoints: an append-only log of checksummed records, rewritten whole
//! (temp file, fsync, rename, directory fsync) at open and when it grows.
//!
//! A checkpoint is the *next* offset a consumer will read (so "nothing consumed" is 0, and
//! offsets are topic offsets: stable when older files are deleted). Values only move forward:
//! a persist that would lower a checkpoint is ignored, so concurrent readers cannot regress it.
//!
//! Crash safety: a record is one small write; a torn or damaged record ends the log there. The
//! records before it hold older values, so a damaged store can only cause redelivery, never a
//! skip. Record layout (little-endian), see `docs/FORMAT.md`:
//!
//! ```text
//! crc32 u32 | body_len u16 | op u8 | topic_len u8 | consumer_len u8 | topic | consumer | offset u64
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::Result;
use crate::io::{Io, Trace};
use crate::storage::lock;

const FILE: &str = "checkpoints";
const OP_SET: u8 = 1;
const OP_REMOVE: u8 = 2;
/// Rewrite the file when it grows past this.
const COMPACT_AT: u64 = 4 << 20;

type Key = (String, String);

/// What a record write is for: it decides when the write is skipped.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Move a checkpoint forward (skipped if not forward, or for an unregistered named consumer).
    Update,
    /// Register a consumer (skipped if the registration was withdrawn meanwhile).
    Register,
    /// Forget a consumer.
    Remove,
}

/// Reserved consumer name of a topic's "floor" record: the next offset the topic hands out,
/// written before retention deletes a topic's last entries so offsets never go backwards.
/// Consumer names cannot contain NUL, so it cannot clash with a real consumer.
pub(crate) const FLOOR: &str = "\0next";

/// The store of one namespace.
pub(crate) struct CheckpointStore {
    path: PathBuf,
    dir: PathBuf,
    /// Persisted values.
    values: Mutex<HashMap<Key, u64>>,
    /// Consumers registered but not yet persisted: they already pin data against retention.
    pins: Mutex<HashMap<Key, u64>>,
    file: tokio::sync::Mutex<(Arc<File>, u64)>,
    trace: Trace,
}

fn encode(out: &mut Vec<u8>, op: u8, topic: &str, consumer: &str, offset: u64) {
    let start = out.len();
    let body = 3 + topic.len() + consumer.len() + 8;
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(body as u16).to_le_bytes());
    out.push(op);
    out.push(topic.len() as u8);
    out.push(consumer.len() as u8);
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(consumer.as_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    let crc = crc32fast::hash(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes records from `b` into `values`. Returns the position where decoding stopped and
/// whether anything non-zero lay past it (damage rather than a clean end).
pub(crate) fn decode_all(b: &[u8], values: &mut HashMap<Key, u64>) -> (usize, bool) {
    let mut pos = 0usize;
    loop {
        let Some(rec) = decode_one(b, pos) else {
            let damaged = b.get(pos..).is_some_and(|r| r.iter().any(|&x| x != 0));
            return (pos, damaged);
        };
        let (op, topic, consumer, offset, next) = rec;
        let key = (topic, consumer);
        match op {
            OP_SET => {
                let v = values.entry(key).or_insert(0);
                *v = (*v).max(offset);
            }
            _ => {
                values.remove(&key);
            }
        }
        pos = next;
    }
}

fn decode_one(b: &[u8], pos: usize) -> Option<(u8, String, String, u64, usize)> {
    let crc = u32::from_le_bytes(b.get(pos..pos + 4)?.try_into().ok()?);
    let body_len = u16::from_le_bytes(b.get(pos + 4..pos + 6)?.try_into().ok()?) as usize;
    let end = pos.checked_add(6)?.checked_add(body_len)?;
    let body = b.get(pos + 6..end)?;
    if crc32fast::hash(b.get(pos + 4..end)?) != crc || body.iter().all(|&x| x == 0) {
        return None;
    }
    let (&op, rest) = body.split_first()?;
    let (&tl, rest) = rest.split_first()?;
    let (&cl, rest) = rest.split_first()?;
    let (tl, cl) = (tl as usize, cl as usize);
    if rest.len() != tl + cl + 8 || tl == 0 || !(op == OP_SET || op == OP_REMOVE) {
        return None;
    }
    let topic = std::str::from_utf8(&rest[..tl]).ok()?.to_owned();
    // No valid topic name contains NUL: such a record was never written by this crate.
    if topic.contains('\0') {
        return None;
    }
    let consumer = std::str::from_utf8(&rest[tl..tl + cl]).ok()?.to_owned();
    let offset = u64::from_le_bytes(rest[tl + cl..].try_into().ok()?);
    Some((op, topic, consumer, offset, end))
}

fn rewrite(dir: &Path, values: &HashMap<Key, u64>, trace: &Trace) -> io::Result<(File, u64)> {
    let mut buf = Vec::new();
    for ((t, c), off) in values {
        encode(&mut buf, OP_SET, t, c, *off);
    }
    // Through `checkpoints.tmp` (see `replace_file`).
    let f = crate::io::replace_file(trace, dir, FILE, &buf)?;
    Ok((f, buf.len() as u64))
}

impl CheckpointStore {
    /// Loads the store (a missing or damaged one is a warning, not an error) and rewrites it
    /// compactly.
    pub(crate) fn open(dir: &Path, trace: Trace) -> io::Result<CheckpointStore> {
        let path = dir.join(FILE);
        let mut values = HashMap::new();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let (stop, damaged) = decode_all(&bytes, &mut values);
                if damaged {
                    tracing::warn!(
                        path = %path.display(),
                        position = stop,
                        "checkpoint store damaged; consumers past this point restart from an older checkpoint (redelivery)"
                    );
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let has_segments = std::fs::read_dir(dir)?.any(|e| {
                    e.ok()
                        .and_then(|e| e.file_name().to_str().map(|n| n.ends_with(".seg")))
                        .unwrap_or(false)
                });
                if has_segments {
                    tracing::warn!(path = %path.display(), "checkpoint store missing; consumers restart from the oldest retained entry");
                }
            }
            Err(e) => return Err(e),
        }
        let (file, len) = rewrite(dir, &values, &trace)?;
        Ok(CheckpointStore {
            path,
            dir: dir.to_path_buf(),
            trace,
            values: Mutex::new(values),
            pins: Mutex::new(HashMap::new()),
            file: tokio::sync::Mutex::new((Arc::new(file), len)),
        })
    }

    /// The highest persisted checkpoint of each topic, over all its consumers.
    pub(crate) fn max_per_topic(&self) -> HashMap<String, u64> {
        let mut out: HashMap<String, u64> = HashMap::new();
        for ((t, _), v) in lock(&self.values).iter() {
            let e = out.entry(t.clone()).or_default();
            *e = (*e).max(*v);
        }
        out
    }

    /// The persisted checkpoint (next offset to read) of `(topic, consumer)`.
    pub(crate) fn get(&self, topic: &str, consumer: &str) -> Option<u64> {
        lock(&self.values)
            .get(&(topic.to_owned(), consumer.to_owned()))
            .copied()
    }

    /// Durably records that `(topic, consumer)` will next read `offset`. Never lowers a value.
    pub(crate) async fn persist(
        &self,
        io: &Io,
        topic: &str,
        consumer: &str,
        offset: u64,
    ) -> Result<()> {
        self.write(io, OP_SET, topic, consumer, offset, Mode::Update)
            .await
    }

    /// Registers `(topic, consumer)` at `offset` at once in memory (it pins data from then on)
    /// and returns what makes it durable.
    pub(crate) fn register(
        self: &Arc<Self>,
        io: &Io,
        topic: &str,
        consumer: &str,
        offset: u64,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let key = (topic.to_owned(), consumer.to_owned());
        lock(&self.pins).insert(key.clone(), offset);
        let (store, io) = (self.clone(), io.clone());
        async move {
            let res = store
                .write(&io, OP_SET, &key.0, &key.1, offset, Mode::Register)
                .await;
            lock(&store.pins).remove(&key);
            res
        }
    }

    /// Durably forgets `(topic, consumer)`.
    pub(crate) async fn remove(&self, io: &Io, topic: &str, consumer: &str) -> Result<()> {
        // A registration still pending must not land after the removal.
        lock(&self.pins).remove(&(topic.to_owned(), consumer.to_owned()));
        self.write(io, OP_REMOVE, topic, consumer, 0, Mode::Remove)
            .await
    }

    /// Whether `(topic, consumer)` is registered (persisted or pending).
    pub(crate) fn is_registered(&self, topic: &str, consumer: &str) -> bool {
        let key = (topic.to_owned(), consumer.to_owned());
        lock(&self.values).contains_key(&key) || lock(&self.pins).contains_key(&key)
    }

    /// Registered consumers and their checkpoints (persisted, else pinned), floors excluded.
    pub(crate) fn registered(&self) -> Vec<(String, String, u64)> {
        let mut out: HashMap<Key, u64> = lock(&self.pins).clone();
        for (k, v) in lock(&self.values).iter() {
            out.insert(k.clone(), *v);
        }
        out.into_iter()
            .filter(|((_, c), _)| c != FLOOR)
            .map(|((t, c), v)| (t, c, v))
            .collect()
    }

    async fn write(
        &self,
        io: &Io,
        op: u8,
        topic: &str,
        consumer: &str,
        offset: u64,
        mode: Mode,
    ) -> Result<()> {
        let mut file = self.file.lock().await;
        // Decided under the file lock, so it is ordered against removals.
        let key = (topic.to_owned(), consumer.to_owned());
        let skip = match mode {
            Mode::Update => {
                let current = lock(&self.values).get(&key).copied();
                let named = !consumer.is_empty() && consumer != FLOOR;
                // An update never (re)creates a named consumer: a late persist of a dropped
                // stream must not bring back a consumer removed in the meantime.
                current.is_some_and(|v| v >= offset)
                    || (named && current.is_none() && !lock(&self.pins).contains_key(&key))
            }
            Mode::Register => !lock(&self.pins).contains_key(&key),
            Mode::Remove => false,
        };
        if skip {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(32 + topic.len() + consumer.len());
        encode(&mut buf, op, topic, consumer, offset);
        let len = buf.len() as u64;
        let (_, res) = io.write_all_at(&file.0, file.1, buf).await;
        res?;
        io.sync_data(&file.0).await?;
        file.1 += len;
        let v = {
            let mut values = lock(&self.values);
            if op == OP_REMOVE {
                values.remove(&key);
            } else {
                let v = values.entry(key).or_insert(0);
                *v = (*v).max(offset);
            }
            values.clone()
        };
        if file.1 > COMPACT_AT && file.1 > 4 * (v.len() as u64 * 64) {
            let (dir, trace) = (self.dir.clone(), self.trace.clone());
            let (f, len) = crate::io::blocking(move || rewrite(&dir, &v, &trace)).await?;
            *file = (Arc::new(f), len);
            tracing::debug!(path = %self.path.display(), "checkpoint store compacted");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_roundtrip_and_never_regress() {
        let mut b = Vec::new();
        encode(&mut b, OP_SET, "t", "", 5);
        encode(&mut b, OP_SET, "t", "", 3);
        encode(&mut b, OP_SET, "t", "billing", 9);
        encode(&mut b, OP_REMOVE, "t", "billing", 0);
        let mut v = HashMap::new();
        assert_eq!(decode_all(&b, &mut v), (b.len(), false));
        assert_eq!(v.get(&("t".into(), "".into())), Some(&5));
        assert_eq!(v.get(&("t".into(), "billing".into())), None);
    }

    #[test]
    fn a_topic_name_with_nul_is_damage() {
        let mut b = Vec::new();
        encode(&mut b, OP_SET, "t", "", 5);
        let first = b.len();
        encode(&mut b, OP_SET, "a\0b", "", 8);
        let mut v = HashMap::new();
        assert_eq!(decode_all(&b, &mut v), (first, true));
        assert_eq!(v.len(), 1);
    }

    #[test]
    fn damage_stops_decoding_and_is_reported() {
        let mut b = Vec::new();
        encode(&mut b, OP_SET, "t", "", 5);
        let first = b.len();
        encode(&mut b, OP_SET, "t", "", 8);
        b[first + 10] ^= 1;
        let mut v = HashMap::new();
        assert_eq!(decode_all(&b, &mut v), (first, true));
        assert_eq!(v.get(&("t".into(), "".into())), Some(&5));
        // Every truncation decodes a prefix without panicking.
        for cut in 0..b.len() {
            let mut v = HashMap::new();
            decode_all(&b[..cut], &mut v);
        }
    }
}
