//! The live state of a consumer of a topic (one per registration), and the guard that holds
//! it busy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::reader::Cursor;

/// The live state of one consumer of one topic, for one registration (epoch) of it: a removed
/// or reset consumer gets a new state, so nothing of the old one can touch the new.
pub(crate) struct ConsumerState {
    pub topic: Arc<str>,
    /// `""` is the topic's default consumer.
    pub name: Arc<str>,
    /// The registration this state belongs to (see `checkpoint`); `0` for a default consumer
    /// never reset.
    pub epoch: u64,
    /// Next offset after the last acknowledgement: the checkpoint, in memory.
    pub acked: AtomicU64,
    /// Where it stood when this process first used it; not having moved means nothing to
    /// persist at close.
    pub start: u64,
    /// Held by a live stream.
    pub busy: AtomicBool,
    /// The polling cursor of the default consumer (`read_next`, `batch_read`); also serialises
    /// concurrent polls.
    pub poll: tokio::sync::Mutex<Cursor>,
    /// The default consumer pins its data in memory (at `acked`) from its first stream or
    /// consuming read on, like a named consumer does from its registration.
    pub reading: AtomicBool,
}

/// Holds a consumer busy (one live reader, or an administrative call on it); lets go on drop,
/// also when the future holding it is dropped.
pub(crate) struct Hold(Arc<ConsumerState>);

impl Drop for Hold {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::Release);
    }
}

impl ConsumerState {
    pub fn new(topic: Arc<str>, name: Arc<str>, epoch: u64, at: u64) -> ConsumerState {
        ConsumerState {
            topic,
            name,
            epoch,
            acked: AtomicU64::new(at),
            start: at,
            busy: AtomicBool::new(false),
            poll: tokio::sync::Mutex::new(Cursor::new(at)),
            reading: AtomicBool::new(false),
        }
    }

    /// Holds the consumer for an administrative call: busy while a stream lives or a polling
    /// read is in flight.
    pub fn hold(self: &Arc<Self>) -> Result<Hold> {
        if !self.try_hold() {
            return Err(self.busy_error());
        }
        let hold = Hold(self.clone());
        if self.poll.try_lock().is_err() {
            return Err(self.busy_error());
        }
        Ok(hold)
    }

    pub fn busy_error(&self) -> Error {
        Error::ConsumerBusy {
            topic: self.topic.to_string(),
            consumer: self.name.to_string(),
        }
    }

    /// Marks the consumer as held by a stream; `false` if it already was.
    pub fn try_hold(&self) -> bool {
        !self.busy.swap(true, Ordering::AcqRel)
    }
}
