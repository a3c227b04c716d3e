//! Sources: where a query's records come from, behind one contract ([`Source`] and
//! [`SourceReader`]). A source gives batches in its decoded schema (the columns of
//! [`crate::format::RecordDecoder`] for topics) and the watermark, the event time below which
//! it expects no more records.
//!
//! - [`TopicSource`]: a topic of the in-process broker, read as Arrow batches straight from the
//!   log (no network hop, no copy of record bytes), bounded by the durable offset.
//! - [`MemorySource`]: batches given up front, for tests and the test driver; it ends.
//!
//! Watermarks are per partition, merged as the minimum: a partition's watermark is the largest
//! event time seen in it. A partition that has been idle (caught up, nothing new) for the idle
//! timeout stops holding the merged watermark back; one that has never had a record holds it
//! back until then.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use quiver_broker::{Broker, Isolation, PartitionSplit, ReaderOptions, StartAt, TopicReader};

use crate::checkpoint::Cluster;
use crate::error::{EngineError, Result};
use crate::format::{BadRecord, Format, ROWTIME, RecordDecoder};

/// What one poll of a [`SourceReader`] gave.
#[derive(Debug, Default)]
pub struct SourcePoll {
    /// Records, in the source's schema.
    pub batches: Vec<RecordBatch>,
    /// Records that did not decode.
    pub bad: Vec<BadRecord>,
    /// Records skipped because they were tombstones.
    pub skipped: usize,
    /// The source's watermark now, if it has one.
    pub watermark: Option<i64>,
    /// The source has ended (bounded sources only): nothing more will come.
    pub finished: bool,
    /// The reader has nothing to read (no partitions in its split, or every one has been quiet
    /// for the idle timeout): it does not hold the watermark back.
    pub idle: bool,
}

/// A source of a query: its schema, and readers of it.
///
/// The runtime calls [`Source::open`] once per task of a query, each with its split of the
/// source's partitions (`index` of `count`; together the splits cover every partition once),
/// then polls each reader until the query stops or the reader says it has finished.
#[async_trait]
pub trait Source: Send + Sync + Debug {
    /// The schema of the batches readers give.
    fn schema(&self) -> SchemaRef;

    /// A short description for `Topology::describe` (`topic 'orders'`, `memory`).
    fn describe(&self) -> String;

    /// A reader of the partitions in `split`, from the source's start position.
    async fn open(&self, split: PartitionSplit) -> Result<Box<dyn SourceReader>>;

    /// For sources of Kafka records: how their records are decoded (the test driver feeds
    /// records through it).
    fn decoder(&self) -> Option<&RecordDecoder> {
        None
    }

    /// For a table's changelog (rows with a [`crate::format::DELETED`] column; upserts and
    /// deletes per key): its key columns. `None` for a stream.
    fn table_key(&self) -> Option<Vec<String>> {
        None
    }

    /// The topic read, for sources whose positions are a topic's offsets (checkpoints commit
    /// them to the query's consumer group).
    fn topic(&self) -> Option<&str> {
        None
    }

    /// The cluster of [`Source::topic`], where a checkpointing query commits its offsets.
    fn cluster(&self) -> Option<Cluster> {
        None
    }

    /// A reader of the partitions in `split` that resumes at `positions` (partition → next
    /// offset, from a checkpoint); partitions not in it start at the earliest offset (they were
    /// added since).
    async fn open_at(
        &self,
        split: PartitionSplit,
        positions: &BTreeMap<i32, i64>,
    ) -> Result<Box<dyn SourceReader>> {
        let _ = (split, positions);
        Err(EngineError::config(format!(
            "the source {} cannot resume from a checkpoint",
            self.describe()
        )))
    }

    /// A reader of exactly `partitions` (those a consumer group assigned), resuming at
    /// `positions` (partition → next offset); partitions not in it start at the earliest
    /// offset. It never gains partitions: the group's next assignment says when it should.
    async fn open_partitions(
        &self,
        partitions: &[i32],
        positions: &BTreeMap<i32, i64>,
    ) -> Result<Box<dyn SourceReader>> {
        let _ = (partitions, positions);
        Err(EngineError::config(format!(
            "the source {} cannot read a group's assignment",
            self.describe()
        )))
    }
}

/// A reader of a [`Source`].
#[async_trait]
pub trait SourceReader: Send + Debug {
    /// What has arrived, waiting up to `max_wait` when nothing has. May return no batches.
    async fn poll(&mut self, max_wait: Duration) -> Result<SourcePoll>;

    /// Each partition's next offset (for checkpoints and committed offsets); empty for sources
    /// without offsets.
    fn positions(&self) -> BTreeMap<i32, i64>;

    /// Each partition's end as the last read saw it (the high watermark, or the last stable
    /// offset for `read_committed` readers), for lag; empty when the source does not know.
    fn ends(&self) -> BTreeMap<i32, i64> {
        BTreeMap::new()
    }
}

/// Per-partition watermarks merged as the minimum (see the module docs).
#[derive(Debug, Default, Clone)]
pub struct Watermarks {
    max_time: BTreeMap<i32, i64>,
}

impl Watermarks {
    /// Notes the event times of a batch from `partition` (its `rowtime` column).
    pub fn observe(&mut self, partition: i32, batch: &RecordBatch) {
        let Ok(i) = batch.schema().index_of(ROWTIME) else {
            return;
        };
        let times = batch
            .column(i)
            .as_primitive::<arrow::datatypes::TimestampMillisecondType>();
        if let Some(max) = arrow::compute::max(times) {
            let e = self.max_time.entry(partition).or_insert(max);
            *e = (*e).max(max);
        }
    }

    /// The merged watermark over `partitions` (partition, idle); `None` while a partition that
    /// is not idle has never had a record.
    pub fn merged(&self, partitions: impl IntoIterator<Item = (i32, bool)>) -> Option<i64> {
        let mut out: Option<i64> = None;
        let mut any_active = false;
        let mut idle_max: Option<i64> = None;
        for (p, idle) in partitions {
            let seen = self.max_time.get(&p).copied();
            if idle {
                idle_max = idle_max.max(seen);
                continue;
            }
            any_active = true;
            let t = seen?;
            out = Some(out.map_or(t, |o| o.min(t)));
        }
        if any_active { out } else { idle_max }
    }
}

/// Where a topic source starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartFrom {
    Earliest,
    Latest,
    /// The first record at or after this timestamp (ms) in each partition.
    Timestamp(i64),
    /// Given offsets per partition (others from the earliest).
    Offsets(BTreeMap<i32, i64>),
    /// The committed offsets of a consumer group (partitions without one from `fallback`).
    Committed {
        group: String,
        fallback: Box<StartFrom>,
    },
}

/// A topic of the in-process broker.
#[derive(Debug, Clone)]
pub struct TopicSource {
    /// `None` for a topic declared without a broker, which only the test driver can feed.
    broker: Option<Broker>,
    topic: String,
    decoder: RecordDecoder,
    start: StartFrom,
    isolation: Isolation,
    idle_after: Duration,
    /// With every partition idle, event time follows the wall clock less this lag.
    wall_clock_lag: Option<Duration>,
    max_bytes: usize,
}

impl TopicSource {
    /// Reads `topic` with `key` and `value` formats, from the earliest offset, read_committed.
    /// Fails if the topic does not exist.
    pub fn new(broker: &Broker, topic: &str, key: Format, value: Format) -> Result<TopicSource> {
        broker.partition_count(topic)?;
        Ok(TopicSource {
            broker: Some(broker.clone()),
            ..TopicSource::declared(topic, key, value)?
        })
    }

    /// Reads `topic` as a table: its latest record per key is the key's row, a record with a
    /// null value deletes it (see [`RecordDecoder::table`]). The key format must give columns.
    pub fn table(
        broker: Option<&Broker>,
        topic: &str,
        key: Format,
        value: Format,
    ) -> Result<TopicSource> {
        if let Some(b) = broker {
            b.partition_count(topic)?;
        }
        Ok(TopicSource {
            broker: broker.cloned(),
            decoder: RecordDecoder::table(key, value, None)?,
            ..TopicSource::declared(topic, Format::None, Format::None)?
        })
    }

    /// A topic declared without a broker: it cannot run, but
    /// [`crate::driver::TopologyTestDriver`] can feed it records.
    pub fn declared(topic: &str, key: Format, value: Format) -> Result<TopicSource> {
        Ok(TopicSource {
            broker: None,
            topic: topic.to_owned(),
            decoder: RecordDecoder::new(key, value, None)?,
            start: StartFrom::Earliest,
            isolation: Isolation::ReadCommitted,
            idle_after: Duration::from_secs(5),
            wall_clock_lag: None,
            max_bytes: 4 << 20,
        })
    }

    fn broker(&self) -> Result<&Broker> {
        self.broker.as_ref().ok_or_else(|| {
            EngineError::config(format!(
                "topic '{}' was declared without a broker; build the topology with \
                 StreamsBuilder::with_broker to run it (or feed it with TopologyTestDriver)",
                self.topic
            ))
        })
    }

    /// Takes event time from a key or value column instead of the record timestamp.
    pub fn with_time_column(mut self, column: &str, key: Format, value: Format) -> Result<Self> {
        self.decoder = if self.decoder.is_table() {
            RecordDecoder::table(key, value, Some(column))?
        } else {
            RecordDecoder::new(key, value, Some(column))?
        };
        Ok(self)
    }

    /// Reads its text time column with a chrono `strftime` format (see
    /// [`RecordDecoder::with_time_format`]).
    pub fn with_time_format(mut self, format: &str) -> Result<Self> {
        self.decoder = self.decoder.with_time_format(format)?;
        Ok(self)
    }

    pub fn with_start(mut self, start: StartFrom) -> Self {
        self.start = start;
        self
    }

    pub fn with_isolation(mut self, isolation: Isolation) -> Self {
        self.isolation = isolation;
        self
    }

    /// How long a caught-up partition waits before it stops holding the watermark back.
    pub fn with_idle_timeout(mut self, idle_after: Duration) -> Self {
        self.idle_after = idle_after;
        self
    }

    /// Opt-in: when every partition has been idle for the idle timeout, the watermark follows
    /// the wall clock less `lag`, so windows on a quiet topic still close. Records that arrive
    /// later with older timestamps are then late for closed windows.
    pub fn with_wall_clock_advance(mut self, lag: Duration) -> Self {
        self.wall_clock_lag = Some(lag);
        self
    }

    /// The topic read.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn start_at(&self, start: &StartFrom) -> Result<StartAt> {
        Ok(match start {
            StartFrom::Earliest => StartAt::Earliest,
            StartFrom::Latest => StartAt::Latest,
            StartFrom::Timestamp(ms) => StartAt::Timestamp(*ms),
            StartFrom::Offsets(map) => StartAt::Offsets(map.clone()),
            StartFrom::Committed { group, fallback } => {
                let mut committed = BTreeMap::new();
                for (topic, partition, offset) in self
                    .broker()?
                    .groups()
                    .fetch_offsets_checked(group, None, true)
                {
                    if topic != self.topic {
                        continue;
                    }
                    match offset {
                        Ok(Some(o)) => {
                            committed.insert(partition, o.offset);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            return Err(EngineError::Config(format!(
                                "the committed offsets of group '{group}' for '{}' are not \
                                 readable yet ({e:?}); retry once its transaction completes",
                                self.topic
                            )));
                        }
                    }
                }
                if committed.is_empty() {
                    return self.start_at(fallback);
                }
                StartAt::Offsets(committed)
            }
        })
    }
}

#[async_trait]
impl Source for TopicSource {
    fn schema(&self) -> SchemaRef {
        self.decoder.schema()
    }

    fn describe(&self) -> String {
        format!("topic '{}'", self.topic)
    }

    async fn open(&self, split: PartitionSplit) -> Result<Box<dyn SourceReader>> {
        let start = self.start_at(&self.start)?;
        self.reader(split, start)
    }

    async fn open_at(
        &self,
        split: PartitionSplit,
        positions: &BTreeMap<i32, i64>,
    ) -> Result<Box<dyn SourceReader>> {
        self.reader(split, StartAt::Offsets(positions.clone()))
    }

    fn decoder(&self) -> Option<&RecordDecoder> {
        Some(&self.decoder)
    }

    fn table_key(&self) -> Option<Vec<String>> {
        self.decoder.table_key()
    }

    fn topic(&self) -> Option<&str> {
        Some(&self.topic)
    }

    fn cluster(&self) -> Option<Cluster> {
        self.broker.clone().map(Cluster::Local)
    }
}

impl TopicSource {
    fn reader(&self, split: PartitionSplit, start: StartAt) -> Result<Box<dyn SourceReader>> {
        let reader = self.broker()?.topic_reader(
            &self.topic,
            start,
            ReaderOptions {
                isolation: self.isolation,
                max_bytes: self.max_bytes,
                idle_after: self.idle_after,
                split,
            },
        )?;
        Ok(Box::new(TopicSourceReader {
            reader,
            decoder: self.decoder.clone(),
            watermarks: Watermarks::default(),
            wall_clock_lag: self.wall_clock_lag,
            polled: false,
        }))
    }
}

#[derive(Debug)]
struct TopicSourceReader {
    reader: TopicReader,
    decoder: RecordDecoder,
    watermarks: Watermarks,
    wall_clock_lag: Option<Duration>,
    /// Whether it has been polled: a reader without partitions (a task beyond the topic's
    /// partition count) answers its first poll at once, so that it says it is idle before
    /// the other tasks' first records are judged against the watermark it would hold back.
    polled: bool,
}

#[async_trait]
impl SourceReader for TopicSourceReader {
    async fn poll(&mut self, max_wait: Duration) -> Result<SourcePoll> {
        let wait = if !self.polled && self.reader.progress().is_empty() {
            Duration::ZERO
        } else {
            max_wait
        };
        self.polled = true;
        let batches = self.reader.next_batches(wait).await?;
        let mut poll = SourcePoll::default();
        for b in batches {
            let decoded = self.decoder.decode(b.partition, &b.records)?;
            poll.skipped += decoded.skipped_nulls;
            poll.bad.extend(decoded.bad);
            if decoded.batch.num_rows() > 0 {
                self.watermarks.observe(b.partition, &decoded.batch);
                poll.batches.push(decoded.batch);
            }
        }
        let progress = self.reader.progress();
        // No partitions, or every one quiet: this reader does not hold the watermark back.
        poll.idle = progress.iter().all(|p| p.idle);
        poll.watermark = self
            .watermarks
            .merged(progress.iter().map(|p| (p.partition, p.idle)));
        if let Some(lag) = self.wall_clock_lag
            && !progress.is_empty()
            && progress.iter().all(|p| p.idle)
        {
            let wall = quiver_broker::now_ms().saturating_sub(lag.as_millis() as i64);
            poll.watermark = Some(poll.watermark.map_or(wall, |w| w.max(wall)));
        }
        Ok(poll)
    }

    fn positions(&self) -> BTreeMap<i32, i64> {
        self.reader.positions()
    }
}

/// Batches given up front (each with the partition it counts as), read once in order; the
/// watermark follows the largest `rowtime` seen per partition. For tests and the test driver.
#[derive(Debug, Clone)]
pub struct MemorySource {
    schema: SchemaRef,
    batches: Arc<Vec<(i32, RecordBatch)>>,
    table_key: Option<Vec<String>>,
}

impl MemorySource {
    /// A source of `batches`, all in `schema` (checked).
    pub fn new(schema: SchemaRef, batches: Vec<(i32, RecordBatch)>) -> Result<MemorySource> {
        for (_, b) in &batches {
            if b.schema().fields() != schema.fields() {
                return Err(EngineError::config(format!(
                    "a memory source batch has schema {:?}, not the source's {:?}",
                    b.schema(),
                    schema
                )));
            }
        }
        Ok(MemorySource {
            schema,
            batches: Arc::new(batches),
            table_key: None,
        })
    }

    /// The batches are a table's changelog keyed by `key` (the schema must have those columns
    /// and a Boolean [`crate::format::DELETED`]).
    pub fn as_table(mut self, key: &[&str]) -> Result<MemorySource> {
        for c in key.iter().chain(std::iter::once(&crate::format::DELETED)) {
            if self.schema.index_of(c).is_err() {
                return Err(EngineError::config(format!(
                    "a memory table needs the column '{c}'"
                )));
            }
        }
        self.table_key = Some(key.iter().map(|k| (*k).to_owned()).collect());
        Ok(self)
    }
}

#[async_trait]
impl Source for MemorySource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn describe(&self) -> String {
        format!("memory ({} batches)", self.batches.len())
    }

    fn table_key(&self) -> Option<Vec<String>> {
        self.table_key.clone()
    }

    async fn open(&self, split: PartitionSplit) -> Result<Box<dyn SourceReader>> {
        let batches = self
            .batches
            .iter()
            .filter(|(p, _)| split.contains(*p))
            .cloned()
            .collect();
        Ok(Box::new(MemoryReader {
            batches: Arc::new(batches),
            next: 0,
            watermarks: Watermarks::default(),
        }))
    }
}

#[derive(Debug)]
struct MemoryReader {
    batches: Arc<Vec<(i32, RecordBatch)>>,
    next: usize,
    watermarks: Watermarks,
}

#[async_trait]
impl SourceReader for MemoryReader {
    async fn poll(&mut self, _max_wait: Duration) -> Result<SourcePoll> {
        let mut poll = SourcePoll::default();
        if let Some((partition, batch)) = self.batches.get(self.next) {
            self.next += 1;
            self.watermarks.observe(*partition, batch);
            poll.batches.push(batch.clone());
        }
        // One partition at a time: the watermark is the largest time seen anywhere, as a
        // single ordered input would give.
        poll.watermark = self.watermarks.max_time.values().copied().max();
        poll.finished = self.next >= self.batches.len();
        Ok(poll)
    }

    fn positions(&self) -> BTreeMap<i32, i64> {
        BTreeMap::new()
    }
}
