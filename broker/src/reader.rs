//! [`TopicReader`]: a topic read as a stream of Arrow batches across all its partitions, the
//! way the engine's sources and the connectors' sinks consume the in-process broker, without
//! the Kafka protocol in between and without copying record bytes.
//!
//! - **Positions** start where [`StartAt`] says, move past what each call returns (and past
//!   transaction markers and aborted records, which a consumer never sees), and can be read
//!   ([`TopicReader::positions`]) and set ([`TopicReader::seek`]) for checkpoints.
//! - **Bounds**: reads stop at the high watermark (the durable offset with `log.flush.on.ack`),
//!   or with [`Isolation::ReadCommitted`] at the last stable offset.
//! - **Budget and backpressure**: one call returns about [`ReaderOptions::max_bytes`] of stored
//!   batches (a partition's first batch whole even if larger) and reads nothing more until the
//!   caller asks again. Partitions take turns at the front of each call, so a busy one cannot
//!   starve the others.
//! - **Time**: [`TopicReader::progress`] gives each partition's largest record timestamp seen
//!   and whether it has been idle (caught up, with nothing new) for
//!   [`ReaderOptions::idle_after`], which is what per-partition watermarks need.
//! - **New partitions** (CreatePartitions) are picked up by the next call and read from their
//!   start, as Kafka consumers do.
//! - **Memory**: a returned batch shares the buffer its segment was read into (no copy on the
//!   read path); [`ReaderBatch::detach`] copies one into buffers of its own, for state that
//!   keeps a few rows of a large read.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;

use crate::broker::Broker;
use crate::error::{BrokerError, Result};
use crate::log::Isolation;
use crate::partition::PartitionHandle;

/// Where a new [`TopicReader`] starts in each partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAt {
    /// The log start offset.
    Earliest,
    /// The end visible at the isolation level: only records written from now on.
    Latest,
    /// The first record whose timestamp is at least this (ms since the epoch); partitions with
    /// no such record start at their end.
    Timestamp(i64),
    /// These offsets; partitions not named start at their log start.
    Offsets(BTreeMap<i32, i64>),
}

/// Which partitions of a topic a [`TopicReader`] reads: those whose number modulo `count` is
/// `index`, so `count` readers with indexes `0..count` split a topic between them, including
/// partitions added later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionSplit {
    pub index: u32,
    pub count: u32,
}

impl PartitionSplit {
    /// Every partition.
    pub const ALL: PartitionSplit = PartitionSplit { index: 0, count: 1 };

    /// Whether `partition` belongs to this split.
    pub fn contains(&self, partition: i32) -> bool {
        u32::try_from(partition).is_ok_and(|p| p % self.count.max(1) == self.index)
    }
}

/// How a [`TopicReader`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReaderOptions {
    pub isolation: Isolation,
    /// About this many stored bytes per call, across partitions.
    pub max_bytes: usize,
    /// A partition caught up with nothing new for this long counts as idle.
    pub idle_after: Duration,
    /// The partitions read.
    pub split: PartitionSplit,
}

impl Default for ReaderOptions {
    fn default() -> Self {
        ReaderOptions {
            isolation: Isolation::ReadUncommitted,
            max_bytes: 4 << 20,
            idle_after: Duration::from_secs(5),
            split: PartitionSplit::ALL,
        }
    }
}

/// Records of one partition, in offset order, in the envelope schema
/// ([`crate::record::envelope_schema`]).
#[derive(Debug, Clone)]
pub struct ReaderBatch {
    pub partition: i32,
    pub records: RecordBatch,
    /// The partition's position after this batch (past markers and aborted records too).
    pub next_offset: i64,
}

impl ReaderBatch {
    /// The batch with its rows copied into buffers of its own, so keeping it does not keep the
    /// whole read it came from in memory.
    pub fn detach(&self) -> Result<ReaderBatch> {
        let n = u32::try_from(self.records.num_rows()).map_err(|_| {
            BrokerError::Internal(format!("{} rows do not fit a u32", self.records.num_rows()))
        })?;
        let indices = UInt32Array::from_iter_values(0..n);
        Ok(ReaderBatch {
            records: take_record_batch(&self.records, &indices)?,
            ..self.clone()
        })
    }
}

/// Where one partition of a reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionProgress {
    pub partition: i32,
    /// The next offset the reader will return.
    pub position: i64,
    /// The largest record timestamp returned so far.
    pub max_timestamp: Option<i64>,
    /// Caught up, with nothing new for [`ReaderOptions::idle_after`].
    pub idle: bool,
    /// Records (and markers) between the position and the end visible at the isolation level.
    pub lag: i64,
}

#[derive(Debug)]
struct Cursor {
    handle: PartitionHandle,
    position: i64,
    max_timestamp: Option<i64>,
    /// When the partition last returned records, or when the reader was made.
    last_data: Instant,
}

/// A topic read as Arrow batches across its partitions (see the module docs). Made by
/// [`Broker::topic_reader`].
#[derive(Debug)]
pub struct TopicReader {
    broker: Broker,
    topic: String,
    options: ReaderOptions,
    cursors: Vec<Cursor>,
    /// Partitions of the topic looked at so far (read or not, by the split).
    seen: i32,
    /// The partition that goes first in the next call.
    turn: usize,
}

impl Broker {
    /// A reader of every partition of `topic`, from `start` (see [`TopicReader`]).
    pub fn topic_reader(
        &self,
        topic: &str,
        start: StartAt,
        options: ReaderOptions,
    ) -> Result<TopicReader> {
        if options.split.count == 0 || options.split.index >= options.split.count {
            return Err(BrokerError::InvalidConfig(format!(
                "a topic reader split {} of {} does not exist",
                options.split.index, options.split.count
            )));
        }
        if options.max_bytes == 0 {
            return Err(BrokerError::InvalidConfig(
                "a topic reader needs max_bytes above 0".into(),
            ));
        }
        let mut reader = TopicReader {
            broker: self.clone(),
            topic: topic.to_owned(),
            options,
            cursors: Vec::new(),
            seen: 0,
            turn: 0,
        };
        reader.add_new_partitions(&start)?;
        Ok(reader)
    }
}

impl TopicReader {
    /// The topic read.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Cursors for partitions created since the last look, at `start`.
    fn add_new_partitions(&mut self, start: &StartAt) -> Result<()> {
        let count = self.broker.partition_count(&self.topic)?;
        let first = self.seen;
        self.seen = self.seen.max(count);
        for partition in first..count {
            if !self.options.split.contains(partition) {
                continue;
            }
            let handle = self.broker.partition(&self.topic, partition)?;
            let offsets = handle.offsets();
            let visible_end = self.visible_end(&handle);
            let position = match start {
                StartAt::Earliest => offsets.log_start_offset,
                StartAt::Latest => visible_end,
                StartAt::Timestamp(ms) => handle
                    .offset_for_timestamp(*ms)?
                    .map_or(visible_end, |(o, _)| o),
                StartAt::Offsets(map) => map
                    .get(&partition)
                    .copied()
                    .unwrap_or(offsets.log_start_offset),
            };
            self.cursors.push(Cursor {
                handle,
                position,
                max_timestamp: None,
                last_data: Instant::now(),
            });
        }
        Ok(())
    }

    fn visible_end(&self, handle: &PartitionHandle) -> i64 {
        match self.options.isolation {
            Isolation::ReadUncommitted => handle.high_watermark(),
            Isolation::ReadCommitted => handle.last_stable_offset(),
        }
    }

    /// The next batches: about [`ReaderOptions::max_bytes`] from the partitions with records,
    /// each starting where the last call left it. When none has any, waits up to `max_wait`
    /// for one to get some (and returns nothing if none does). Partitions created meanwhile
    /// join, read from their start.
    pub async fn next_batches(&mut self, max_wait: Duration) -> Result<Vec<ReaderBatch>> {
        // Partitions added later are read from their beginning, whatever the first start was.
        self.add_new_partitions(&StartAt::Earliest)?;
        let out = self.read_once()?;
        if !out.is_empty() || max_wait.is_zero() {
            return Ok(out);
        }
        let waits = self.cursors.iter().map(|c| {
            let handle = c.handle.clone();
            let (offset, isolation) = (c.position, self.options.isolation);
            Box::pin(async move { handle.wait_for_isolated(offset, max_wait, isolation).await })
        });
        if self.cursors.is_empty() {
            tokio::time::sleep(max_wait).await;
        } else {
            futures::future::select_all(waits).await;
        }
        self.read_once()
    }

    /// One pass over the partitions, starting at the one whose turn it is.
    fn read_once(&mut self) -> Result<Vec<ReaderBatch>> {
        let n = self.cursors.len();
        let mut out = Vec::new();
        let mut budget = self.options.max_bytes;
        let now = Instant::now();
        for i in 0..n {
            if budget == 0 {
                break;
            }
            let cursor = &mut self.cursors[(self.turn + i) % n];
            let read =
                cursor
                    .handle
                    .read_isolated(cursor.position, budget, self.options.isolation)?;
            let mut bytes = 0usize;
            for b in read.batches {
                bytes += b.records.get_array_memory_size();
                if let Some(ts) = crate::record::EnvelopeColumns::try_new(&b.records)
                    .ok()
                    .and_then(|c| c.timestamps.values().iter().copied().max())
                {
                    cursor.max_timestamp = Some(cursor.max_timestamp.map_or(ts, |m| m.max(ts)));
                }
                out.push(ReaderBatch {
                    partition: cursor.handle.partition(),
                    records: b.records,
                    next_offset: b.header.next_offset(),
                });
            }
            if read.next_offset > cursor.position {
                cursor.position = read.next_offset;
                cursor.last_data = now;
            }
            if let Some(last) = out.last_mut()
                && last.partition == cursor.handle.partition()
            {
                last.next_offset = cursor.position;
            }
            budget = budget.saturating_sub(bytes.max(1));
        }
        if n > 0 {
            self.turn = (self.turn + 1) % n;
        }
        Ok(out)
    }

    /// Each partition's next offset, for a checkpoint.
    pub fn positions(&self) -> BTreeMap<i32, i64> {
        self.cursors
            .iter()
            .map(|c| (c.handle.partition(), c.position))
            .collect()
    }

    /// Moves a partition's position (restoring a checkpoint). An offset outside the log fails
    /// on the next read with [`BrokerError::OffsetOutOfRange`].
    pub fn seek(&mut self, partition: i32, offset: i64) -> Result<()> {
        let count = self.seen;
        let cursor = self
            .cursors
            .iter_mut()
            .find(|c| c.handle.partition() == partition)
            .ok_or_else(|| BrokerError::UnknownPartition {
                topic: self.topic.clone(),
                partition,
                partitions: count,
            })?;
        cursor.position = offset;
        cursor.last_data = Instant::now();
        Ok(())
    }

    /// Where each partition is: position, largest timestamp seen, idleness and lag.
    pub fn progress(&self) -> Vec<PartitionProgress> {
        let now = Instant::now();
        self.cursors
            .iter()
            .map(|c| {
                let lag = (self.visible_end(&c.handle) - c.position).max(0);
                PartitionProgress {
                    partition: c.handle.partition(),
                    position: c.position,
                    max_timestamp: c.max_timestamp,
                    idle: lag == 0 && now.duration_since(c.last_data) >= self.options.idle_after,
                    lag,
                }
            })
            .collect()
    }
}

#[cfg(test)]
#[path = "reader_tests.rs"]
mod tests;
