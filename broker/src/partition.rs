//! [`PartitionHandle`]: what code outside the broker may do with one partition besides
//! appending (which goes through [`Broker::append`](crate::Broker::append)): read, wait for
//! records, and look at its offsets. It hands out no storage internals. A read that should
//! also end when the broker shuts down is [`Broker::read_wait`](crate::Broker::read_wait).
//!
//! The partition `Log` itself and the storage modules stay inside the broker crate:
//!
//! ```compile_fail,E0624
//! # async fn f(broker: quiver_broker::Broker) {
//! let log = broker.log("orders", 0); // private: use `Broker::partition`
//! # }
//! ```
//! ```compile_fail,E0603
//! use quiver_broker::log::segment::Segment;
//! ```
//! ```compile_fail,E0603
//! use quiver_broker::log::frame::FrameEncoder;
//! ```
//! ```compile_fail,E0603
//! use quiver_broker::log::index::OffsetIndex;
//! ```
//! ```compile_fail,E0603
//! use quiver_broker::log::storage::FileStorage;
//! ```

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::error::Result;
use crate::log::{Isolation, Log, LogOffsets, ReadResult};

/// A read handle on one partition, from [`Broker::partition`](crate::Broker::partition).
/// Cheap to clone; it stays valid while the broker runs (reads fail once the topic is
/// deleted).
#[derive(Debug, Clone)]
pub struct PartitionHandle {
    log: Arc<Log>,
}

impl PartitionHandle {
    pub(crate) fn new(log: Arc<Log>) -> PartitionHandle {
        PartitionHandle { log }
    }

    /// The topic's name.
    pub fn topic(&self) -> &str {
        self.log.topic()
    }

    /// The partition's index in its topic.
    pub fn partition(&self) -> i32 {
        self.log.partition()
    }

    /// Reads from `offset`, about `max_bytes` of batches (the first batch whole even if
    /// larger), up to the high watermark.
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<ReadResult> {
        self.log.read(offset, max_bytes)
    }

    /// Reads from `offset` as a consumer at `isolation` sees the partition: with
    /// [`Isolation::ReadCommitted`] up to the last stable offset and without the records of
    /// aborted transactions; either way without transaction markers (see
    /// [`ReadResult::retain_consumer_batches`]). `next_offset` says where to read next, past
    /// what was left out.
    pub fn read_isolated(
        &self,
        offset: i64,
        max_bytes: usize,
        isolation: Isolation,
    ) -> Result<ReadResult> {
        let mut read = self.log.read_isolated(offset, max_bytes, isolation)?;
        read.retain_consumer_batches();
        Ok(read)
    }

    /// The last stable offset: `read_committed` readers see records below it.
    pub fn last_stable_offset(&self) -> i64 {
        self.log.last_stable_offset()
    }

    /// Waits until the high watermark is past `offset`, or `timeout` passes. True if records
    /// at `offset` are visible.
    pub async fn wait_for(&self, offset: i64, timeout: Duration) -> bool {
        self.log.wait_for(offset, timeout).await
    }

    /// Waits until a reader at `isolation` can see a record at `offset` (the high watermark, or
    /// for `read_committed` the last stable offset, is past it), or `timeout` passes. True if
    /// it can.
    pub async fn wait_for_isolated(
        &self,
        offset: i64,
        timeout: Duration,
        isolation: Isolation,
    ) -> bool {
        let visible = || match isolation {
            Isolation::ReadUncommitted => self.log.high_watermark() > offset,
            Isolation::ReadCommitted => self.log.last_stable_offset() > offset,
        };
        // The LSO moves only when the high watermark does, so its changes are the wake-ups.
        let mut rx = self.log.subscribe();
        let wait = async {
            loop {
                if visible() {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
        visible()
    }

    /// A receiver that sees the high watermark move.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.log.subscribe()
    }

    /// The high watermark: readers see records below it.
    pub fn high_watermark(&self) -> i64 {
        self.log.high_watermark()
    }

    /// Log start, end and durable offsets, size and segment count.
    pub fn offsets(&self) -> LogOffsets {
        self.log.offsets()
    }

    /// The earliest offset with a timestamp at least `timestamp_ms`, with its timestamp.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<(i64, i64)>> {
        self.log.offset_for_timestamp(timestamp_ms)
    }

    /// The current leader epoch (bumped by every open after an unclean shutdown).
    pub fn leader_epoch(&self) -> i32 {
        self.log.leader_epoch()
    }

    /// Idempotent producers whose sequences the partition tracks.
    pub fn producer_count(&self) -> usize {
        self.log.producer_count()
    }
}
