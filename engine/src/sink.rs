//! Sinks: where a query's results go, behind one contract ([`Sink`]).
//!
//! - [`Collector`]: keeps the batches in memory, for tests and programs that embed a query.
//! - [`TopicSink`]: a topic of the in-process broker; each row becomes a record whose key and
//!   value are encoded from columns ([`crate::format`]), partitioned by key as Kafka's default
//!   partitioner does, timestamped with the row's `rowtime` (or window end, or now).
//! - [`StdoutSink`]: one JSON line per row.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch, TimestampMillisecondArray, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{DataType, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use parking_lot::Mutex;
use quiver_broker::record::col;
use quiver_broker::{Broker, ProducerInfo, envelope_schema, partition_for_key};
use tokio::sync::Notify;

use crate::checkpoint::SharedTransaction;
use crate::dsl::WINDOW_END;
use crate::error::{EngineError, Result};
use crate::format::{DELETED, Format, KafkaType, ROWTIME, SideEncoder};

/// A sink of a query.
///
/// The runtime calls [`Sink::open`] once with the schema of the rows it will write, then
/// [`Sink::write`] for each output batch in order, [`Sink::flush`] whenever it needs what was
/// written so far to be durable (at a checkpoint, and before it stops), and [`Sink::close`]
/// once at the end. A sink that returns an error from `write` or `flush` stops the query with
/// that error.
#[async_trait]
pub trait Sink: Send + Debug {
    /// A short description for `Topology::describe` (`topic 'counts'`, `collector`).
    fn describe(&self) -> String;

    /// Prepares for rows of `schema`; refuses a schema it cannot write.
    async fn open(&mut self, schema: SchemaRef) -> Result<()>;

    /// Takes one batch of results.
    async fn write(&mut self, batch: RecordBatch) -> Result<()>;

    /// Makes everything written so far durable.
    async fn flush(&mut self) -> Result<()>;

    /// The query has ended.
    async fn close(&mut self) -> Result<()> {
        self.flush().await
    }

    /// The topic it writes to, for sinks that write to one.
    fn topic(&self) -> Option<&str> {
        None
    }

    /// Exactly-once: from now on, write through `transaction`, which the runtime commits at
    /// each checkpoint with the source offsets. Returns `Ok(false)` for a sink outside Kafka
    /// transactions (it sees results as they come, at least once), and an error for a topic
    /// on another cluster than the transaction's (one transaction cannot span two clusters).
    fn set_transaction(&mut self, transaction: &SharedTransaction) -> Result<bool> {
        let _ = transaction;
        Ok(false)
    }
}

/// A sink that keeps nothing and counts the rows it is given (a black hole, as Flink's
/// `blackhole` connector): a query measured without the cost of its output. Clones share the
/// count.
#[derive(Debug, Clone, Default)]
pub struct CountSink {
    rows: Arc<std::sync::atomic::AtomicU64>,
}

impl CountSink {
    pub fn new() -> CountSink {
        CountSink::default()
    }

    /// The rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[async_trait]
impl Sink for CountSink {
    fn describe(&self) -> String {
        "count".into()
    }

    async fn open(&mut self, _schema: SchemaRef) -> Result<()> {
        Ok(())
    }

    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        self.rows.fetch_add(
            batch.num_rows() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Batches collected in memory, shared between the sink (in the running query) and the
/// caller (a test, an embedding program).
#[derive(Debug, Clone, Default)]
pub struct Collector {
    inner: Arc<CollectorInner>,
}

#[derive(Debug, Default)]
struct CollectorInner {
    batches: Mutex<Vec<RecordBatch>>,
    changed: Notify,
}

impl Collector {
    pub fn new() -> Collector {
        Collector::default()
    }

    /// A sink that writes into this collector.
    pub fn sink(&self) -> CollectSink {
        CollectSink {
            collector: self.clone(),
        }
    }

    /// Everything collected so far.
    pub fn batches(&self) -> Vec<RecordBatch> {
        self.inner.batches.lock().clone()
    }

    /// How many rows have been collected.
    pub fn rows(&self) -> usize {
        self.inner.batches.lock().iter().map(|b| b.num_rows()).sum()
    }

    /// Waits until at least `rows` rows are collected, or `timeout` passes; returns the count.
    pub async fn wait_for_rows(&self, rows: usize, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.changed.notified();
            let have = self.rows();
            if have >= rows {
                return have;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.rows();
            }
        }
    }
}

/// The [`Sink`] of a [`Collector`].
#[derive(Debug)]
pub struct CollectSink {
    collector: Collector,
}

#[async_trait]
impl Sink for CollectSink {
    fn describe(&self) -> String {
        "collector".into()
    }

    async fn open(&mut self, _schema: SchemaRef) -> Result<()> {
        Ok(())
    }

    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        self.collector.inner.batches.lock().push(batch);
        self.collector.inner.changed.notify_waiters();
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Drops every row: the sink of a table that is only materialized (its store is the output).
#[derive(Debug, Default)]
pub struct DiscardSink;

#[async_trait]
impl Sink for DiscardSink {
    fn describe(&self) -> String {
        "none (the table's store)".into()
    }

    async fn open(&mut self, _schema: SchemaRef) -> Result<()> {
        Ok(())
    }

    async fn write(&mut self, _batch: RecordBatch) -> Result<()> {
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Each row as one line of JSON on standard output.
#[derive(Debug, Default)]
pub struct StdoutSink {
    label: String,
    encoder: Option<SideEncoder>,
}

impl StdoutSink {
    /// Lines prefixed with `label` (Kafka Streams' `print` prints `[label]: …`), if not empty.
    pub fn new(label: impl Into<String>) -> StdoutSink {
        StdoutSink {
            label: label.into(),
            encoder: None,
        }
    }
}

#[async_trait]
impl Sink for StdoutSink {
    fn describe(&self) -> String {
        "stdout".into()
    }

    async fn open(&mut self, schema: SchemaRef) -> Result<()> {
        let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        self.encoder = Some(SideEncoder::new(
            Format::Json(schema.clone()),
            &schema,
            &columns,
        )?);
        Ok(())
    }

    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let Some(encoder) = &self.encoder else {
            return Err(EngineError::internal("stdout sink written before open"));
        };
        let lines = encoder.encode(&batch)?;
        let mut text = String::new();
        for i in 0..lines.len() {
            if !self.label.is_empty() {
                text.push('[');
                text.push_str(&self.label);
                text.push_str("]: ");
            }
            text.push_str(&String::from_utf8_lossy(lines.value(i)));
            text.push('\n');
        }
        use std::io::Write;
        std::io::stdout()
            .lock()
            .write_all(text.as_bytes())
            .map_err(|e| EngineError::Sink {
                sink: "stdout".into(),
                message: e.to_string(),
            })
    }

    async fn flush(&mut self) -> Result<()> {
        use std::io::Write;
        std::io::stdout().flush().map_err(|e| EngineError::Sink {
            sink: "stdout".into(),
            message: e.to_string(),
        })
    }
}

/// How rows become records of a topic.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicFormat {
    /// Columns of the key (none: null keys).
    pub key_columns: Vec<String>,
    /// The key's format; [`Format::None`] with key columns picks one: KAFKA for a single
    /// string, integer, double or binary column, JSON otherwise.
    pub key: Format,
    /// Columns of the value (empty: every column not in the key).
    pub value_columns: Vec<String>,
    /// The value's format; a JSON schema is taken from the value columns, so
    /// `Format::Json` of any schema means "JSON of the value columns".
    pub value: Format,
}

impl TopicFormat {
    /// Null keys, every column as a JSON object.
    pub fn json() -> TopicFormat {
        TopicFormat {
            key_columns: vec![],
            key: Format::None,
            value_columns: vec![],
            value: Format::Json(Arc::new(Schema::empty())),
        }
    }

    /// Keys from `columns` (format chosen as [`TopicFormat::key`] says), the other columns as
    /// a JSON object.
    pub fn keyed(columns: impl IntoIterator<Item = impl Into<String>>) -> TopicFormat {
        TopicFormat {
            key_columns: columns.into_iter().map(Into::into).collect(),
            ..TopicFormat::json()
        }
    }
}

/// KAFKA format for one string, integer, double or binary key column; JSON otherwise.
fn default_key_format(schema: &Schema, key: &[String]) -> Result<Format> {
    if let [k] = key {
        let t = schema.field_with_name(k)?.data_type();
        let kind = match t {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Some(KafkaType::String),
            DataType::Int64 => Some(KafkaType::Int64),
            DataType::Int32 => Some(KafkaType::Int32),
            DataType::Binary => Some(KafkaType::Bytes),
            DataType::Float64 => Some(KafkaType::Double),
            _ => None,
        };
        if let Some(kind) = kind {
            return Ok(Format::kafka(k.clone(), kind));
        }
    }
    Ok(Format::Json(Arc::new(project_schema(schema, key)?)))
}

/// A topic of the in-process broker.
#[derive(Debug)]
pub struct TopicSink {
    /// `None` for a sink declared without a broker (it only runs in the test driver).
    broker: Option<Broker>,
    topic: String,
    encoder: TopicEncoder,
    /// Exactly-once: the query's transaction.
    transaction: Option<SharedTransaction>,
}

/// Rows to records of a topic: key and value encoded from columns, the timestamp from
/// `rowtime` (or the window end, or now), the partition from the key as Kafka's default
/// partitioner picks it (round-robin for null keys).
#[derive(Debug)]
pub(crate) struct TopicEncoder {
    format: TopicFormat,
    key: Option<SideEncoder>,
    value: Option<SideEncoder>,
    time_column: Option<TimeColumn>,
    /// A table's changelog: its [`crate::format::DELETED`] column; a deleted row is written
    /// as a tombstone (its key with a null value).
    deleted: Option<usize>,
    next_unkeyed: i32,
}

#[derive(Debug, Clone, Copy)]
enum TimeColumn {
    Rowtime(usize),
    WindowEnd(usize),
}

impl TopicSink {
    /// Writes to `topic` (which must exist when the query starts) in `format`.
    pub fn new(broker: &Broker, topic: &str, format: TopicFormat) -> TopicSink {
        let mut sink = TopicSink::declared(topic, format);
        sink.broker = Some(broker.clone());
        sink
    }

    /// A sink declared without a broker: only [`crate::driver::TopologyTestDriver`] runs it.
    pub fn declared(topic: &str, format: TopicFormat) -> TopicSink {
        TopicSink {
            broker: None,
            topic: topic.to_owned(),
            encoder: TopicEncoder::new(format),
            transaction: None,
        }
    }
}

impl TopicEncoder {
    pub(crate) fn new(format: TopicFormat) -> TopicEncoder {
        TopicEncoder {
            format,
            key: None,
            value: None,
            time_column: None,
            deleted: None,
            next_unkeyed: 0,
        }
    }

    /// Records for `batch` in the envelope schema, and the partition of each row.
    pub(crate) fn encode(
        &mut self,
        batch: &RecordBatch,
        partitions: i32,
    ) -> Result<Vec<(i32, RecordBatch)>> {
        let (Some(key_encoder), Some(value_encoder)) = (&self.key, &self.value) else {
            return Err(EngineError::internal("topic sink written before open"));
        };
        let n = batch.num_rows();
        let keys = key_encoder.encode(batch)?;
        let mut values: arrow::array::ArrayRef = Arc::new(value_encoder.encode(batch)?);
        if let Some(i) = self.deleted {
            values = arrow::compute::nullif(&values, batch.column(i).as_boolean())?;
        }
        let times: TimestampMillisecondArray = match self.time_column {
            Some(TimeColumn::Rowtime(i)) => {
                let times = batch
                    .column(i)
                    .as_primitive::<arrow::datatypes::TimestampMillisecondType>();
                if times.null_count() == 0 {
                    times.clone()
                } else {
                    // A row without a time (the missing side of an outer join) is stamped now.
                    let now = quiver_broker::now_ms();
                    times.iter().map(|t| Some(t.unwrap_or(now))).collect()
                }
            }
            // Kafka Streams stamps a window's result with the window's last instant.
            Some(TimeColumn::WindowEnd(i)) => batch
                .column(i)
                .as_primitive::<arrow::datatypes::TimestampMillisecondType>()
                .unary(|e| e - 1),
            None => TimestampMillisecondArray::from_value(quiver_broker::now_ms(), n),
        };
        let mut by_partition: Vec<Vec<u32>> = vec![Vec::new(); partitions as usize];
        for i in 0..n {
            let p = if keys.is_valid(i) {
                partition_for_key(keys.value(i), partitions)
            } else {
                let p = self.next_unkeyed % partitions;
                self.next_unkeyed = self.next_unkeyed.wrapping_add(1).rem_euclid(partitions);
                p
            };
            by_partition[p as usize].push(i as u32);
        }
        let mut out = Vec::new();
        for (p, rows) in by_partition.into_iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let idx = UInt32Array::from(rows);
            let m = idx.len();
            let empty_headers = empty_headers(m)?;
            let columns = vec![
                Arc::new(arrow::array::Int64Array::from_iter_values(0..m as i64)) as _,
                take(&times, &idx, None)?,
                take(&keys, &idx, None)?,
                take(&values, &idx, None)?,
                empty_headers,
            ];
            out.push((p as i32, RecordBatch::try_new(envelope_schema(), columns)?));
        }
        Ok(out)
    }
}

impl TopicEncoder {
    /// Chooses the encoders for rows of `schema`; refuses columns it does not have.
    pub(crate) fn open(&mut self, schema: &SchemaRef) -> Result<()> {
        let value_columns = if self.format.value_columns.is_empty() {
            schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .filter(|n| !self.format.key_columns.contains(n) && n != DELETED)
                .collect()
        } else {
            self.format.value_columns.clone()
        };
        let value_format = match &self.format.value {
            // A JSON value of the chosen columns: its schema is theirs.
            Format::Json(_) => Format::Json(Arc::new(project_schema(schema, &value_columns)?)),
            other => other.clone(),
        };
        let key_format = match &self.format.key {
            _ if self.format.key_columns.is_empty() => Format::None,
            Format::None => default_key_format(schema, &self.format.key_columns)?,
            Format::Json(_) => {
                Format::Json(Arc::new(project_schema(schema, &self.format.key_columns)?))
            }
            other => other.clone(),
        };
        self.key = Some(SideEncoder::new(
            key_format,
            schema,
            &self.format.key_columns,
        )?);
        self.value = Some(SideEncoder::new(value_format, schema, &value_columns)?);
        self.deleted = schema
            .index_of(DELETED)
            .ok()
            .filter(|&i| schema.field(i).data_type() == &DataType::Boolean);
        let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
        self.time_column = match (schema.index_of(ROWTIME), schema.index_of(WINDOW_END)) {
            (Ok(i), _) if schema.field(i).data_type() == &ts => Some(TimeColumn::Rowtime(i)),
            (_, Ok(i)) if schema.field(i).data_type() == &ts => Some(TimeColumn::WindowEnd(i)),
            _ => None,
        };
        Ok(())
    }
}

/// `m` empty header lists.
fn empty_headers(m: usize) -> Result<arrow::array::ArrayRef> {
    let DataType::List(item) = envelope_schema().field(col::HEADERS).data_type().clone() else {
        return Err(EngineError::internal(
            "the envelope's headers are not a list",
        ));
    };
    let values = arrow::array::new_empty_array(item.data_type());
    Ok(Arc::new(arrow::array::ListArray::try_new(
        item,
        arrow::buffer::OffsetBuffer::new_zeroed(m),
        values,
        None,
    )?))
}

#[async_trait]
impl Sink for TopicSink {
    fn describe(&self) -> String {
        format!("topic '{}'", self.topic)
    }

    fn topic(&self) -> Option<&str> {
        Some(&self.topic)
    }

    async fn open(&mut self, schema: SchemaRef) -> Result<()> {
        let Some(broker) = &self.broker else {
            return Err(EngineError::config(format!(
                "the sink topic '{}' was declared without a broker; build the topology with \
                 StreamsBuilder::with_broker to run it",
                self.topic
            )));
        };
        broker.partition_count(&self.topic)?;
        self.encoder.open(&schema)
    }

    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let Some(broker) = self.broker.clone() else {
            return Err(EngineError::internal("a declared topic sink was written"));
        };
        let partitions = broker.partition_count(&self.topic)?;
        let encoded = self.encoder.encode(&batch, partitions)?;
        if let Some(txn) = &self.transaction {
            for (p, records) in encoded {
                txn.append(&self.topic, p, &records).await?;
            }
            return Ok(());
        }
        for (p, records) in encoded {
            broker
                .append(&self.topic, p, &records, ProducerInfo::NONE)
                .await?;
        }
        Ok(())
    }

    fn set_transaction(&mut self, transaction: &SharedTransaction) -> Result<bool> {
        if let Some(cluster) = transaction.bootstrap() {
            return Err(EngineError::config(format!(
                "exactly-once output to topic '{}' of the in-process broker needs the source \
                 there too, but it reads from cluster {cluster}; write to a topic of that \
                 cluster, or use at-least-once",
                self.topic
            )));
        }
        self.transaction = Some(transaction.clone());
        Ok(true)
    }

    async fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

fn project_schema(schema: &Schema, columns: &[String]) -> Result<Schema> {
    let indices = columns
        .iter()
        .map(|c| {
            schema
                .index_of(c)
                .map_err(|_| EngineError::config(format!("no column '{c}' in the output")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(schema.project(&indices)?)
}
