//! The state of an open log that the handle and its tasks share ([`Shared`]), and what is done
//! to it by more than one of them. Below the public handle (`wal`) and the tasks that take it
//! (`writer`, `retention`, `stream`); above storage, topics, consumers and the checkpoint store.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::checkpoint::{CheckpointStore, Member};
use crate::config::Config;
use crate::consumer::ConsumerState;
use crate::counters::Counters;
use crate::durability::Durability;
use crate::error::{Error, Result};
use crate::io::Io;
use crate::storage::{Allocator, lock};
use crate::topic::{FastMap, Request, Topic};

pub(crate) type ConsumerKey = (Arc<str>, Arc<str>);

/// The outcome of `close`, awaited by every caller of it.
pub(crate) type Closing = futures::future::Shared<
    futures::future::BoxFuture<'static, std::result::Result<(), Arc<Error>>>,
>;

/// State shared by the handle and the background tasks.
pub(crate) struct Shared {
    pub(crate) config: Config,
    /// The runtime that opened the log: every task of the log runs there.
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) dir: PathBuf,
    pub(crate) io: Io,
    pub(crate) alloc: Arc<Allocator>,
    pub(crate) durability: Durability,
    pub(crate) stats: Arc<Counters>,
    pub(crate) checkpoints: Arc<CheckpointStore>,
    pub(crate) topics: RwLock<FastMap<Arc<str>, Arc<Topic>>>,
    pub(crate) consumers: Mutex<HashMap<ConsumerKey, Arc<ConsumerState>>>,
    /// The log writer's queue; `None` once the log stops taking appends.
    pub(crate) writer_tx: RwLock<Option<mpsc::Sender<Request>>>,
    /// The log writer's task.
    pub(crate) writer: Mutex<Option<JoinHandle<()>>>,
    pub(crate) closed: AtomicBool,
    /// The close under way or done, shared by every `close` call.
    pub(crate) closing: Mutex<Option<Closing>>,
    /// The runtime that opened the log has shut down (its tasks were dropped unfinished).
    pub(crate) runtime_gone: AtomicBool,
    /// `close` ran to its end.
    pub(crate) close_finished: AtomicBool,
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The directory lock; the checkpoint writer holds it too, until its last write.
    pub(crate) lock_file: Mutex<Option<Arc<File>>>,
    /// Wakes the retention task (a checkpoint was persisted).
    pub(crate) retention_wake: tokio::sync::Notify,
    /// One retention pass at a time.
    pub(crate) retention_lock: tokio::sync::Mutex<()>,
    /// The checkpoint store was damaged or missing at open: no deletion on consumers' account.
    pub(crate) checkpoint_damage: bool,
    /// The checkpoint store's writer task.
    pub(crate) checkpoint_task: Mutex<Option<JoinHandle<()>>>,
    /// Segment files retention removed from the log whose unlink failed: retried every pass.
    pub(crate) orphans: Mutex<Vec<PathBuf>>,
}

impl Shared {
    /// Spawns `fut` on the runtime that opened the log.
    pub(crate) fn spawn<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime.spawn(fut)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether the runtime that opened the log has shut down.
    pub(crate) fn runtime_gone(&self) -> bool {
        self.runtime_gone.load(Ordering::Acquire)
    }

    /// Why a task of the log did not answer: the log was closed, or its runtime is gone.
    pub(crate) fn stopped(&self) -> Error {
        if self.is_closed() && !self.runtime_gone() {
            Error::Closed
        } else {
            Error::RuntimeGone
        }
    }

    /// After the log's runtime is gone: refuse everything and let go of what needs no task
    /// (the directory lock, the checkpoint store's queue).
    pub(crate) fn abandon(&self) {
        self.runtime_gone.store(true, Ordering::Release);
        self.stop_accepting();
        self.checkpoints.runtime_gone();
        self.stop.send_replace(true);
        self.io.shutdown();
        lock(&self.lock_file).take();
    }

    /// Fires when the log is closed or its last handle dropped.
    pub(crate) fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    pub(crate) fn all_topics(&self) -> Vec<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub(crate) fn consumer_state(&self, topic: &Arc<Topic>, consumer: &str) -> Arc<ConsumerState> {
        let mut consumers = lock(&self.consumers);
        let member = self.checkpoints.member(&topic.name, consumer);
        self.state_locked(&mut consumers, topic, consumer, member)
    }

    /// The state of `consumer`'s current registration `member`, created if the one held is
    /// of an earlier registration (removed or reset since) or there is none.
    pub(crate) fn state_locked(
        &self,
        consumers: &mut HashMap<ConsumerKey, Arc<ConsumerState>>,
        topic: &Arc<Topic>,
        consumer: &str,
        member: Option<Member>,
    ) -> Arc<ConsumerState> {
        let key: ConsumerKey = (topic.name.clone(), Arc::from(consumer));
        let epoch = member.map_or(0, |m| m.epoch);
        if let Some(s) = consumers.get(&key)
            && s.epoch == epoch
        {
            return s.clone();
        }
        // A checkpoint below `oldest` is kept: its reader reports `Truncated` once.
        let at = member.map_or_else(|| topic.oldest.load(Ordering::Acquire), |m| m.offset);
        put_state(consumers, key, epoch, at)
    }

    /// The default consumer pins its data from its first read on.
    pub(crate) fn pin_reader(&self, state: &ConsumerState) {
        if !state.reading.load(Ordering::Acquire) {
            // Under the consumers lock, so retention's last look before a deletion sees it.
            let _consumers = lock(&self.consumers);
            state.reading.store(true, Ordering::Release);
        }
    }

    /// Per topic, the lowest offset any consumer may still read from: registered consumers'
    /// durable and pending checkpoints, and default consumers that are reading. Call with the
    /// consumers lock held when the answer must stay true until a deletion is committed.
    pub(crate) fn consumer_pins(
        &self,
        consumers: &HashMap<ConsumerKey, Arc<ConsumerState>>,
    ) -> HashMap<String, u64> {
        let mut pins = self.checkpoints.pins();
        for s in consumers.values() {
            if s.name.is_empty() && s.reading.load(Ordering::Acquire) {
                let e = pins.entry(s.topic.to_string()).or_insert(u64::MAX);
                *e = (*e).min(s.acked.load(Ordering::Acquire));
            }
        }
        pins
    }

    /// Runs `f` with the consumers lock held (see [`consumer_pins`](Self::consumer_pins)).
    pub(crate) fn with_consumers<R>(
        &self,
        f: impl FnOnce(&HashMap<ConsumerKey, Arc<ConsumerState>>) -> R,
    ) -> R {
        f(&lock(&self.consumers))
    }

    /// Durably records a consumer's checkpoint and lets retention look again.
    pub(crate) async fn persist_checkpoint(&self, state: &ConsumerState, next: u64) -> Result<()> {
        self.checkpoints
            .persist(
                &state.topic,
                &state.name,
                state.epoch,
                next,
                state.start.min(next),
            )?
            .wait()
            .await?;
        self.retention_wake.notify_one();
        Ok(())
    }

    /// Refuses new appends and closes the writer's queue (queued requests still run).
    pub(crate) fn stop_accepting(&self) {
        let mut tx = self.writer_tx.write().unwrap_or_else(|p| p.into_inner());
        self.closed.store(true, Ordering::Release);
        tx.take();
    }
}

/// A new state for a consumer's registration `epoch`, at `at`, replacing the one held.
pub(crate) fn put_state(
    consumers: &mut HashMap<ConsumerKey, Arc<ConsumerState>>,
    key: ConsumerKey,
    epoch: u64,
    at: u64,
) -> Arc<ConsumerState> {
    let state = Arc::new(ConsumerState::new(key.0.clone(), key.1.clone(), epoch, at));
    consumers.insert(key, state.clone());
    state
}

/// What a task of the log that did not finish means to its caller: its runtime shut down (or
/// it panicked, which is a bug).
pub(crate) fn join_error(e: tokio::task::JoinError) -> Error {
    if e.is_cancelled() {
        Error::RuntimeGone
    } else {
        Error::Io(io::Error::other(format!("a task of the log panicked: {e}")))
    }
}

/// The topic `name`, created empty (offsets from 0) if the registry has none.
pub(crate) fn insert_topic(topics: &mut FastMap<Arc<str>, Arc<Topic>>, name: &str) -> Arc<Topic> {
    topics
        .entry(Arc::from(name))
        .or_insert_with(|| Arc::new(Topic::new(Arc::from(name), 0)))
        .clone()
}
