//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`).
//!
//! The application installs a recorder (for Prometheus, `metrics-exporter-prometheus`; see
//! `examples/metrics.rs`); without one, recording is an atomic load and a branch. Without the
//! feature every function here is empty and compiles away. Names follow Prometheus rules:
//! `walrus_` prefix, base units (bytes, seconds), counters end in `_total`. Labels are bounded:
//! `topic` and `consumer` appear only on per-consumer series, one per registered consumer
//! (topics nobody consumes get none, so a million idle topics add no series).
//!
//! Events (appends, writes, fsyncs, deletions) are recorded where they happen; states (queue
//! depth, disk use, offsets, lag) are sampled every [`SAMPLE_EVERY`] by a task of the log.

#[cfg(feature = "metrics")]
pub(crate) use imp::*;
#[cfg(not(feature = "metrics"))]
pub(crate) use noop::*;

/// How often the sampler sets the gauges.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

#[cfg(not(feature = "metrics"))]
mod noop {
    use std::time::Duration;

    #[inline(always)]
    pub(crate) fn appended(_entries: u64, _bytes: u64) {}
    #[inline(always)]
    pub(crate) fn wrote(_bytes: usize) {}
    #[inline(always)]
    pub(crate) fn queue_depth(_n: usize) {}
    #[inline(always)]
    pub(crate) fn synced(_elapsed: Duration, _ok: bool) {}
    #[inline(always)]
    pub(crate) fn deleted_segment(_bytes: u64) {}
    #[inline(always)]
    pub(crate) fn opened(_damage: u64) {}
}

#[cfg(feature = "metrics")]
mod imp {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use metrics::{
        Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
    };

    use crate::engine::Shared;
    use crate::reader::Cursor;

    pub(crate) fn appended(entries: u64, bytes: u64) {
        counter!("walrus_appends_total").increment(entries);
        counter!("walrus_append_bytes_total").increment(bytes);
    }

    /// One write submission of `bytes` (frames, headers and padding included).
    pub(crate) fn wrote(bytes: usize) {
        counter!("walrus_write_submissions_total").increment(1);
        counter!("walrus_write_bytes_total").increment(bytes as u64);
        histogram!("walrus_write_size_bytes").record(bytes as f64);
    }

    pub(crate) fn queue_depth(n: usize) {
        gauge!("walrus_writer_queue_depth").set(n as f64);
    }

    /// One fdatasync (or a write that carried its own sync).
    pub(crate) fn synced(elapsed: Duration, ok: bool) {
        counter!("walrus_fsyncs_total").increment(1);
        if !ok {
            counter!("walrus_fsync_errors_total").increment(1);
        }
        histogram!("walrus_fsync_duration_seconds").record(elapsed.as_secs_f64());
    }

    /// An append or batch resolved `Ok`, `elapsed` after it was called.
    pub(crate) fn append_done(elapsed: Duration) {
        histogram!("walrus_append_duration_seconds").record(elapsed.as_secs_f64());
    }

    pub(crate) fn deleted_segment(bytes: u64) {
        counter!("walrus_segments_deleted_total").increment(1);
        counter!("walrus_reclaimed_bytes_total").increment(bytes);
    }

    /// At open: what recovery found damaged.
    pub(crate) fn opened(damage: u64) {
        describe();
        counter!("walrus_checksum_failures_total").increment(damage);
    }

    fn describe() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            use Unit::{Bytes, Count, Seconds};
            for (name, unit, help) in [
                ("walrus_appends_total", Count, "Entries appended (resolved Ok)."),
                ("walrus_append_bytes_total", Bytes, "Payload bytes appended."),
                ("walrus_write_submissions_total", Count, "Writes submitted to the I/O engine."),
                ("walrus_write_bytes_total", Bytes, "Bytes written to segment files, framing included."),
                ("walrus_fsyncs_total", Count, "fdatasyncs of segment files (and writes that carried their own sync)."),
                ("walrus_fsync_errors_total", Count, "Failed fdatasyncs: the file takes no more appends."),
                ("walrus_segments_deleted_total", Count, "Segment files deleted by retention."),
                ("walrus_reclaimed_bytes_total", Bytes, "Disk bytes of the segment files deleted."),
                ("walrus_checksum_failures_total", Count, "Stretches of damage found by recovery (counted at each open of this process)."),
            ] {
                describe_counter!(name, unit, help);
            }
            for (name, unit, help) in [
                ("walrus_write_size_bytes", Bytes, "Size of each write submission."),
                ("walrus_fsync_duration_seconds", Seconds, "Time of each fdatasync."),
                ("walrus_append_duration_seconds", Seconds, "Time from an append's call to its Ok (durable under SyncEach)."),
            ] {
                describe_histogram!(name, unit, help);
            }
            for (name, unit, help) in [
                ("walrus_writer_queue_depth", Count, "Requests waiting in the writer's queue."),
                ("walrus_unsynced_bytes", Bytes, "Bytes written but not yet fdatasynced."),
                ("walrus_segments", Count, "Live segment files."),
                ("walrus_disk_allocated_bytes", Bytes, "Length of the live segment files (preallocated)."),
                ("walrus_disk_written_bytes", Bytes, "Bytes written into the live segment files."),
                ("walrus_topics", Count, "Topics."),
                ("walrus_backend_info", Count, "The I/O backend in use (label backend), always 1."),
                ("walrus_recovered_damage", Count, "Stretches of damage the last open stepped over (still on disk)."),
                ("walrus_topic_next_offset", Count, "The offset the next append to a consumed topic gets."),
                ("walrus_topic_oldest_offset", Count, "The oldest retained offset of a consumed topic."),
                ("walrus_consumer_checkpoint", Count, "A consumer's durable checkpoint (the next offset it reads)."),
                ("walrus_consumer_lag_entries", Count, "Entries a consumer has not acknowledged."),
                ("walrus_consumer_lag_bytes", Bytes, "Payload bytes of those entries (estimated within the file holding the checkpoint)."),
                ("walrus_consumer_oldest_unconsumed_age_seconds", Seconds, "Age of the oldest entry a consumer has not acknowledged (0: none)."),
                ("walrus_consumer_pinned_bytes", Bytes, "Disk bytes of the segment files a consumer keeps from deletion."),
            ] {
                describe_gauge!(name, unit, help);
            }
        });
    }

    /// Sets the gauges every [`super::SAMPLE_EVERY`] until the log stops.
    pub(crate) async fn run(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(super::SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
                _ = tick.tick() => sample(&shared),
            }
        }
    }

    /// Sets every gauge from the log's state now.
    pub(crate) fn sample(shared: &Shared) {
        let log = shared.dir.display().to_string();
        let segments = shared.alloc.segments();
        let (mut allocated, mut written, mut unsynced) = (0u64, 0u64, 0u64);
        for s in &segments {
            let w = s.written.load(Ordering::Acquire);
            allocated += s.len;
            written += w;
            unsynced += w.saturating_sub(s.synced_to.load(Ordering::Acquire));
        }
        gauge!("walrus_segments", "log" => log.clone()).set(segments.len() as f64);
        gauge!("walrus_disk_allocated_bytes", "log" => log.clone()).set(allocated as f64);
        gauge!("walrus_disk_written_bytes", "log" => log.clone()).set(written as f64);
        gauge!("walrus_unsynced_bytes", "log" => log.clone()).set(unsynced as f64);
        let topics = shared
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        gauge!("walrus_topics", "log" => log.clone()).set(topics as f64);
        gauge!("walrus_backend_info", "log" => log.clone(), "backend" => shared.io.kind().name())
            .set(1.0);
        gauge!("walrus_recovered_damage", "log" => log.clone())
            .set(shared.stats.checksum_failures.load(Ordering::Relaxed) as f64);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut seen_topics = std::collections::HashSet::new();
        for (topic, consumer) in shared.checkpoints.registered() {
            let Some(t) = shared
                .topics
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(topic.as_str())
                .cloned()
            else {
                continue;
            };
            let oldest = t.oldest.load(Ordering::Acquire);
            let visible = t.visible();
            if seen_topics.insert(topic.clone()) {
                let labels = [("log", log.clone()), ("topic", topic.clone())];
                gauge!("walrus_topic_next_offset", &labels).set(visible as f64);
                gauge!("walrus_topic_oldest_offset", &labels).set(oldest as f64);
            }
            let durable = shared
                .checkpoints
                .member(&topic, &consumer)
                .map_or(0, |m| m.offset);
            // What it acknowledged, persisted or not yet (as `Walrus::consumer_lag`).
            let key: crate::engine::ConsumerKey =
                (Arc::from(topic.as_str()), Arc::from(consumer.as_str()));
            let acked =
                shared.with_consumers(|c| c.get(&key).map(|s| s.acked.load(Ordering::Acquire)));
            let from = acked.unwrap_or(durable).max(oldest);
            let lag = t.entries_between(from, visible);
            let (mut lag_bytes, mut pinned) = (0u64, 0u64);
            for span in t.spans().iter() {
                let end = span.end_offset.load(Ordering::Acquire);
                if end <= from {
                    continue;
                }
                let bytes = span.bytes.load(Ordering::Acquire);
                let first = span.first_offset;
                lag_bytes += if first >= from {
                    bytes
                } else {
                    // Entries of one span are not indexed by size: share out its bytes.
                    (u128::from(bytes) * u128::from(end - from) / u128::from(end - first)) as u64
                };
                if durable < end {
                    pinned += span.segment.len;
                }
            }
            let age = if lag == 0 {
                0.0
            } else {
                let mut out = Vec::new();
                Cursor::new(from).read(&t, 0, 1, &mut out);
                out.first()
                    .map_or(0.0, |e| now_ms.saturating_sub(e.timestamp) as f64 / 1000.0)
            };
            let labels = [
                ("log", log.clone()),
                ("topic", topic.clone()),
                ("consumer", consumer.clone()),
            ];
            gauge!("walrus_consumer_checkpoint", &labels).set(durable as f64);
            gauge!("walrus_consumer_lag_entries", &labels).set(lag as f64);
            gauge!("walrus_consumer_lag_bytes", &labels).set(lag_bytes as f64);
            gauge!("walrus_consumer_oldest_unconsumed_age_seconds", &labels).set(age);
            gauge!("walrus_consumer_pinned_bytes", &labels).set(pinned as f64);
        }
    }
}
