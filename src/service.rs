//! What the HTTP and gRPC services share: the live consumer streams they serve, where the
//! acknowledgements of each go, and the signal that ends them on shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, Shared};
use futures::{FutureExt as _, Stream, StreamExt as _};
use tokio::sync::{mpsc, oneshot};

use crate::{Entry, Error, Result, TopicStream};

/// Entries a served stream reads ahead of a slow client (each is a zero-copy view).
const FORWARD_AHEAD: usize = 64;

/// An acknowledgement for a live stream, and where its result goes.
type AckTx = mpsc::Sender<(u64, oneshot::Sender<Result<()>>)>;

/// Resolves when the services should end their streams (a graceful shutdown).
pub(crate) type Drain = Shared<BoxFuture<'static, ()>>;

/// Makes a [`Drain`] of a user's shutdown future.
pub(crate) fn drain(signal: impl Future<Output = ()> + Send + 'static) -> Drain {
    signal.boxed().shared()
}

/// Why an acknowledgement through a live stream failed.
pub(crate) enum AckError {
    /// No stream of this (topic, consumer) is open in this service.
    NotStreaming,
    /// The log refused it.
    Wal(crate::Error),
}

/// What a served stream yields.
pub(crate) enum Served {
    /// The next entry.
    Entry(Entry),
    /// A failed read. After [`Error::Truncated`] the stream goes on from the oldest retained
    /// entry; after anything else it ends (a closed log gives [`Error::Closed`]).
    Failed(Error),
    /// The service is shutting down: the stream ends here.
    ShuttingDown,
}

/// The streams a service is serving, keyed by (topic, consumer).
#[derive(Clone, Default)]
pub(crate) struct Streams {
    live: Arc<Mutex<HashMap<(String, String), AckTx>>>,
    drain: Option<Drain>,
}

impl Streams {
    pub(crate) fn new(drain: Option<Drain>) -> Streams {
        Streams {
            live: Arc::default(),
            drain,
        }
    }

    /// Whether the drain signal has fired: no new stream should start.
    pub(crate) fn draining(&self) -> bool {
        self.drain
            .as_ref()
            .is_some_and(|d| d.clone().now_or_never().is_some())
    }

    /// Serves `s`: a task of the current runtime owns it, forwards its entries to the
    /// returned stream and serves acknowledgements, and ends (dropping `s`, which releases
    /// the consumer) as soon as the returned stream is dropped, the log closes, a read fails
    /// for good, or the drain signal fires. Acknowledgements are served while a slow client
    /// keeps the stream from taking more entries.
    pub(crate) fn serve(&self, mut s: TopicStream) -> impl Stream<Item = Served> + Send + 'static {
        let (tx, mut rx) = mpsc::channel::<Served>(FORWARD_AHEAD);
        let (ack_tx, mut ack_rx) = mpsc::channel(16);
        let key = (s.topic().to_owned(), s.consumer().to_owned());
        self.lock().insert(key.clone(), ack_tx.clone());
        let live = self.live.clone();
        let drain = self.drain.clone();
        tokio::spawn(async move {
            let drained = async {
                match drain {
                    Some(d) => d.await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(drained);
            // The item read but not yet taken by the response, and whether it is the last.
            let mut pending: Option<Served> = None;
            let mut last = false;
            loop {
                tokio::select! {
                    biased;
                    _ = tx.closed() => break,
                    _ = &mut drained => {
                        // Whatever the client has not taken yet is dropped with the stream.
                        let _ = tx.try_send(Served::ShuttingDown);
                        break;
                    }
                    Some((offset, reply)) = ack_rx.recv() => {
                        let _ = reply.send(s.ack(offset).await);
                    }
                    permit = tx.reserve(), if pending.is_some() => {
                        let Ok(permit) = permit else { break };
                        if let Some(item) = pending.take() {
                            permit.send(item);
                        }
                        if last {
                            break;
                        }
                    }
                    item = s.next(), if pending.is_none() => {
                        pending = Some(match item {
                            Some(Ok(e)) => Served::Entry(e),
                            Some(Err(e)) => {
                                last = !matches!(e, Error::Truncated { .. });
                                Served::Failed(e)
                            }
                            None => {
                                last = true;
                                Served::Failed(Error::Closed)
                            }
                        });
                    }
                }
            }
            drop(s);
            let mut map = live.lock().unwrap_or_else(|p| p.into_inner());
            // A later stream of the same consumer may have replaced this one's entry.
            if map.get(&key).is_some_and(|t| t.same_channel(&ack_tx)) {
                map.remove(&key);
            }
        });
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    /// Acknowledges `offset` through the live stream of (`topic`, `consumer`).
    pub(crate) async fn ack(
        &self,
        topic: &str,
        consumer: &str,
        offset: u64,
    ) -> std::result::Result<(), AckError> {
        let tx = self
            .lock()
            .get(&(topic.to_owned(), consumer.to_owned()))
            .cloned()
            .ok_or(AckError::NotStreaming)?;
        let (reply, rx) = oneshot::channel();
        tx.send((offset, reply))
            .await
            .map_err(|_| AckError::NotStreaming)?;
        rx.await
            .map_err(|_| AckError::NotStreaming)?
            .map_err(AckError::Wal)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), AckTx>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether `header` (an `Authorization` value) carries `token` as a bearer token. The scheme
/// is case-insensitive. The comparison runs over the whole expected token whatever was given,
/// so its time tells neither how much of a guess was right nor how long the token is.
pub(crate) fn bearer_matches(header: Option<&str>, token: &str) -> bool {
    let given = header
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, t)| t.trim())
        .as_bytes();
    let expected = token.as_bytes();
    let mut diff = u8::from(given.len() != expected.len() || expected.is_empty());
    for (i, &b) in expected.iter().enumerate() {
        diff |= b ^ given.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// The most names one page of topics holds, and how many without a limit.
const PAGE_MAX: usize = 10_000;
const PAGE_DEFAULT: usize = 1_000;

/// One page of topic names in name order: those after `after` (all when empty), at most
/// `limit` (0: the default), and the name to pass as `after` for the next page when more
/// follow.
pub(crate) fn page(
    mut names: Vec<String>,
    after: &str,
    limit: usize,
) -> (Vec<String>, Option<String>) {
    let limit = match limit {
        0 => PAGE_DEFAULT,
        n => n.min(PAGE_MAX),
    };
    if !after.is_empty() {
        names.retain(|n| n.as_str() > after);
    }
    // Only the page is sorted in full.
    let more = names.len() > limit;
    if more {
        names.select_nth_unstable(limit);
        names.truncate(limit);
    }
    names.sort_unstable();
    let next = more.then(|| names.last().cloned()).flatten();
    (names, next)
}
