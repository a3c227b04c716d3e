//! A stream's history as a DataFusion table read in place from its topic's log.
//!
//! A query over history without `EMIT` ([`crate::SqlEngine`]) scans each partition of the
//! stream's topic, committed records only, up to where the partition ended when the query
//! started; batches are decoded as DataFusion pulls them, so memory holds a few batches, not
//! the topic. The query's predicates on the pseudo-columns narrow what is read before anything
//! is decoded:
//!
//! - `rowpartition = n` / `rowpartition IN (…)`: only those partitions;
//! - `rowoffset` compared with a constant (`=`, `<`, `<=`, `>`, `>=`, `BETWEEN`): only that
//!   range of each partition's offsets;
//! - `rowtime >= t` (or `>`, `=`, `BETWEEN`) on a stream timed by its records: each partition
//!   from the first record at `t`, found in the log's time index. (Record times need not grow
//!   with offsets, so an upper bound on time cannot end a scan; and a stream whose time is a
//!   column of its values has no index on it.)
//!
//! The predicates are pushed down as inexact: DataFusion still applies them to the rows.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{
    Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType, expr::InList,
};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use quiver_broker::{
    Broker, Isolation, PartitionSplit, ReaderBatch, ReaderOptions, StartAt, TopicReader,
};
use quiver_engine::arrow::array::{AsArray, BooleanArray, RecordBatch};
use quiver_engine::arrow::compute::filter_record_batch;
use quiver_engine::arrow::datatypes::{DataType, Int64Type, SchemaRef, TimeUnit};
use quiver_engine::format::{ROWOFFSET, ROWPARTITION, ROWTIME, RecordDecoder};

/// A stream's topic as a bounded table (see the module docs).
#[derive(Debug)]
pub(crate) struct TopicTable {
    broker: Broker,
    topic: String,
    decoder: RecordDecoder,
    /// Whether `rowtime` is the record timestamp (no TIMESTAMP column): only then does the
    /// log's time index say where a time starts.
    record_time: bool,
}

/// One partition's offsets to read: `start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Range {
    pub partition: i32,
    pub start: i64,
    pub end: i64,
}

/// What a query's predicates say about where to read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Bounds {
    partitions: Option<BTreeSet<i32>>,
    /// Offsets from this one (inclusive)…
    min_offset: Option<i64>,
    /// …to this one (exclusive).
    end_offset: Option<i64>,
    /// Records from the first at this time (ms).
    min_time: Option<i64>,
}

impl Bounds {
    fn partitions(&mut self, set: BTreeSet<i32>) {
        self.partitions = Some(match self.partitions.take() {
            Some(old) => old.intersection(&set).copied().collect(),
            None => set,
        });
    }

    fn start_at_offset(&mut self, o: i64) {
        self.min_offset = Some(self.min_offset.map_or(o, |m| m.max(o)));
    }

    fn end_at_offset(&mut self, end: i64) {
        self.end_offset = Some(self.end_offset.map_or(end, |m| m.min(end)));
    }

    fn start_at_time(&mut self, t: i64) {
        self.min_time = Some(self.min_time.map_or(t, |m| m.max(t)));
    }

    /// Narrows the bounds by `filter`; whether it could (the filter is then pushed down).
    fn apply(&mut self, filter: &Expr, record_time: bool) -> bool {
        match filter {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let (column, op, value) = match (left.as_ref(), right.as_ref()) {
                    (Expr::Column(c), Expr::Literal(v, _)) => (c, *op, v),
                    (Expr::Literal(v, _), Expr::Column(c)) => match op.swap() {
                        Some(op) => (c, op, v),
                        None => return false,
                    },
                    _ => return false,
                };
                match column.name.as_str() {
                    ROWOFFSET => {
                        let Some(v) = integer(value) else {
                            return false;
                        };
                        match op {
                            Operator::Eq => {
                                self.start_at_offset(v);
                                self.end_at_offset(v.saturating_add(1));
                            }
                            Operator::Gt => self.start_at_offset(v.saturating_add(1)),
                            Operator::GtEq => self.start_at_offset(v),
                            Operator::Lt => self.end_at_offset(v),
                            Operator::LtEq => self.end_at_offset(v.saturating_add(1)),
                            _ => return false,
                        }
                        true
                    }
                    ROWPARTITION if op == Operator::Eq => match integer(value) {
                        Some(p) => {
                            self.partitions(i32::try_from(p).into_iter().collect());
                            true
                        }
                        None => false,
                    },
                    ROWTIME if record_time => {
                        let Some(t) = millis(value) else {
                            return false;
                        };
                        match op {
                            Operator::Eq | Operator::GtEq => self.start_at_time(t),
                            Operator::Gt => self.start_at_time(t.saturating_add(1)),
                            _ => return false,
                        }
                        true
                    }
                    _ => false,
                }
            }
            Expr::InList(InList {
                expr,
                list,
                negated: false,
            }) => {
                let Expr::Column(c) = expr.as_ref() else {
                    return false;
                };
                if c.name != ROWPARTITION {
                    return false;
                }
                let mut set = BTreeSet::new();
                for e in list {
                    match e {
                        Expr::Literal(v, _) => match integer(v).map(i32::try_from) {
                            Some(Ok(p)) => {
                                set.insert(p);
                            }
                            _ => return false,
                        },
                        _ => return false,
                    }
                }
                self.partitions(set);
                true
            }
            Expr::Between(Between {
                expr,
                negated: false,
                low,
                high,
            }) => {
                let (Expr::Column(c), Expr::Literal(low, _), Expr::Literal(high, _)) =
                    (expr.as_ref(), low.as_ref(), high.as_ref())
                else {
                    return false;
                };
                match c.name.as_str() {
                    ROWOFFSET => match (integer(low), integer(high)) {
                        (Some(l), Some(h)) => {
                            self.start_at_offset(l);
                            self.end_at_offset(h.saturating_add(1));
                            true
                        }
                        _ => false,
                    },
                    ROWTIME if record_time => match millis(low) {
                        Some(t) => {
                            self.start_at_time(t);
                            true
                        }
                        None => false,
                    },
                    _ => false,
                }
            }
            _ => false,
        }
    }
}

fn integer(v: &ScalarValue) -> Option<i64> {
    match v.cast_to(&DataType::Int64).ok()? {
        ScalarValue::Int64(Some(v)) => Some(v),
        _ => None,
    }
}

fn millis(v: &ScalarValue) -> Option<i64> {
    match v
        .cast_to(&DataType::Timestamp(TimeUnit::Millisecond, None))
        .ok()?
    {
        ScalarValue::TimestampMillisecond(Some(v), _) => Some(v),
        _ => None,
    }
}

fn external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

impl TopicTable {
    /// `topic` decoded by `decoder`, a stream's (`record_time` when its `rowtime` is the
    /// record timestamp).
    pub(crate) fn new(
        broker: &Broker,
        topic: &str,
        decoder: RecordDecoder,
        record_time: bool,
    ) -> TopicTable {
        TopicTable {
            broker: broker.clone(),
            topic: topic.to_owned(),
            decoder,
            record_time,
        }
    }

    /// The offsets a scan with `filters` reads, per partition (partitions with none left out):
    /// up to each partition's last stable offset now.
    pub(crate) fn ranges(&self, filters: &[Expr]) -> datafusion::error::Result<Vec<Range>> {
        let mut bounds = Bounds::default();
        for f in filters {
            bounds.apply(f, self.record_time);
        }
        let count = self.broker.partition_count(&self.topic).map_err(external)?;
        let mut out = Vec::new();
        for partition in 0..count {
            if bounds
                .partitions
                .as_ref()
                .is_some_and(|set| !set.contains(&partition))
            {
                continue;
            }
            let offsets = self
                .broker
                .offsets(&self.topic, partition)
                .map_err(external)?;
            let end = offsets
                .last_stable_offset
                .min(bounds.end_offset.unwrap_or(i64::MAX));
            let mut start = offsets.log_start_offset.max(bounds.min_offset.unwrap_or(0));
            if let Some(t) = bounds.min_time {
                let from = self
                    .broker
                    .offset_for_timestamp(&self.topic, partition, t)
                    .map_err(external)?
                    .map_or(end, |(o, _)| o);
                start = start.max(from);
            }
            if start < end {
                out.push(Range {
                    partition,
                    start,
                    end,
                });
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl TableProvider for TopicTable {
    fn schema(&self) -> SchemaRef {
        self.decoder.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if Bounds::default().apply(f, self.record_time) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let schema = self.schema();
        let ranges = self.ranges(filters)?;
        if ranges.is_empty() {
            let projected = match projection {
                Some(p) => Arc::new(schema.project(p)?),
                None => schema,
            };
            return Ok(Arc::new(EmptyExec::new(projected)));
        }
        let count = self.broker.partition_count(&self.topic).map_err(external)?;
        let partitions: Vec<Arc<dyn PartitionStream>> = ranges
            .into_iter()
            .map(|range| {
                Arc::new(PartitionScan {
                    broker: self.broker.clone(),
                    topic: self.topic.clone(),
                    partitions: count,
                    range,
                    decoder: self.decoder.clone(),
                    schema: schema.clone(),
                }) as Arc<dyn PartitionStream>
            })
            .collect();
        Ok(Arc::new(StreamingTableExec::try_new(
            schema,
            partitions,
            projection,
            [],
            false,
            limit,
        )?))
    }
}

/// One partition's range, decoded as it is pulled.
#[derive(Debug)]
struct PartitionScan {
    broker: Broker,
    topic: String,
    /// The topic's partition count (the reader's split).
    partitions: i32,
    range: Range,
    decoder: RecordDecoder,
    schema: SchemaRef,
}

struct ScanState {
    reader: TopicReader,
    range: Range,
    decoder: RecordDecoder,
    /// Stored batches read but not yet decoded (one read gives several).
    pending: VecDeque<ReaderBatch>,
    done: bool,
}

impl ScanState {
    /// The next non-empty decoded batch of the range, `None` past its end. Each stored batch
    /// is decoded when it is pulled, and handed on as it is (never concatenated).
    async fn next(&mut self) -> datafusion::error::Result<Option<RecordBatch>> {
        loop {
            let Some(b) = self.pending.pop_front() else {
                if self.done {
                    return Ok(None);
                }
                let read = self
                    .reader
                    .next_batches(Duration::ZERO)
                    .await
                    .map_err(external)?;
                if read.is_empty() {
                    self.done = true;
                }
                self.pending.extend(
                    read.into_iter()
                        .filter(|b| b.partition == self.range.partition),
                );
                continue;
            };
            if b.next_offset >= self.range.end {
                // What is left of this read is past the range too.
                self.done = true;
                self.pending.clear();
            }
            let decoded = self
                .decoder
                .decode(b.partition, &b.records)
                .map_err(external)?;
            let batch = self.trim(decoded.batch)?;
            if batch.num_rows() > 0 {
                return Ok(Some(batch));
            }
        }
    }

    /// The rows of `batch` inside the range (a stored batch may straddle its ends).
    fn trim(&self, batch: RecordBatch) -> datafusion::error::Result<RecordBatch> {
        let Ok(i) = batch.schema().index_of(ROWOFFSET) else {
            return Ok(batch);
        };
        let offsets = batch.column(i).as_primitive::<Int64Type>();
        let (Some(first), Some(last)) = (
            quiver_engine::arrow::compute::min(offsets),
            quiver_engine::arrow::compute::max(offsets),
        ) else {
            return Ok(batch);
        };
        if first >= self.range.start && last < self.range.end {
            return Ok(batch);
        }
        let keep: BooleanArray = offsets
            .iter()
            .map(|o| o.map(|o| o >= self.range.start && o < self.range.end))
            .collect();
        Ok(filter_record_batch(&batch, &keep)?)
    }
}

impl PartitionStream for PartitionScan {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let opened = self
            .broker
            .topic_reader(
                &self.topic,
                StartAt::Offsets([(self.range.partition, self.range.start)].into()),
                ReaderOptions {
                    // Committed records only: a persistent query's output holds aborted
                    // transactions.
                    isolation: Isolation::ReadCommitted,
                    split: PartitionSplit {
                        index: self.range.partition as u32,
                        count: self.partitions.max(1) as u32,
                    },
                    ..ReaderOptions::default()
                },
            )
            .map_err(external);
        let state = opened.map(|reader| ScanState {
            reader,
            range: self.range,
            decoder: self.decoder.clone(),
            pending: VecDeque::new(),
            done: false,
        });
        let stream = futures::stream::unfold(Some(state), |state| async move {
            match state? {
                Err(e) => Some((Err(e), None)),
                Ok(mut scan) => match scan.next().await {
                    Ok(Some(batch)) => Some((Ok(batch), Some(Ok(scan)))),
                    Ok(None) => None,
                    Err(e) => Some((Err(e), None)),
                },
            }
        });
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

    use datafusion::common::Column;
    use datafusion::logical_expr::{col, lit};

    use super::*;

    fn bounds(filters: &[Expr]) -> (Bounds, Vec<bool>) {
        let mut b = Bounds::default();
        let pushed = filters.iter().map(|f| b.apply(f, true)).collect();
        (b, pushed)
    }

    #[test]
    fn predicates_on_the_pseudo_columns_narrow_the_scan() {
        let t = ScalarValue::TimestampMillisecond(Some(5_000), None);
        let (b, pushed) = bounds(&[
            col(ROWOFFSET).gt_eq(lit(10i64)),
            lit(20i64).gt(col(ROWOFFSET)),
            col(ROWPARTITION).in_list(vec![lit(0i32), lit(2i32)], false),
            col(ROWPARTITION).eq(lit(2i32)),
            Expr::Column(Column::from_name(ROWTIME)).gt(Expr::Literal(t, None)),
            col("v").eq(lit(1i64)),
            col(ROWTIME).lt(lit(ScalarValue::TimestampMillisecond(Some(9), None))),
        ]);
        assert_eq!(pushed, [true, true, true, true, true, false, false]);
        assert_eq!(
            b,
            Bounds {
                partitions: Some([2].into()),
                min_offset: Some(10),
                end_offset: Some(20),
                min_time: Some(5_001),
            }
        );
        let (b, _) = bounds(&[col(ROWOFFSET).between(lit(3i64), lit(7i64))]);
        assert_eq!((b.min_offset, b.end_offset), (Some(3), Some(8)));
        // A stream timed by a value column has no index on its time.
        let mut b = Bounds::default();
        let since = col(ROWTIME).gt_eq(lit(ScalarValue::TimestampMillisecond(Some(1), None)));
        assert!(!b.apply(&since, false));
    }

    /// The time index and the offsets bound what is read before anything is decoded.
    #[tokio::test]
    async fn a_scan_reads_only_the_offsets_its_predicates_leave() {
        use quiver_broker::{BrokerConfig, NewTopic, ProducerInfo, Record, records_to_batch};
        use quiver_engine::Format;
        use quiver_engine::arrow::datatypes::{Field, Schema};

        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(BrokerConfig {
            data_dir: dir.path().to_owned(),
            ..BrokerConfig::default()
        })
        .await
        .unwrap();
        broker.create_topic(NewTopic::new("ev", 2)).await.unwrap();
        for i in 0..100i64 {
            let value = format!(r#"{{"n": {i}}}"#);
            let batch = records_to_batch(&[Record::new(i * 1000, None, Some(value.as_bytes()))]);
            broker
                .append("ev", (i % 2) as i32, &batch, ProducerInfo::NONE)
                .await
                .unwrap();
        }
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
        let decoder = RecordDecoder::new(Format::None, Format::json(schema), None).unwrap();
        let table = TopicTable::new(&broker, "ev", decoder, true);
        let all = table.ranges(&[]).unwrap();
        assert_eq!(
            all,
            [
                Range {
                    partition: 0,
                    start: 0,
                    end: 50
                },
                Range {
                    partition: 1,
                    start: 0,
                    end: 50
                }
            ]
        );
        // Times from 80 s: records 80.. (offsets 40.. in each partition).
        let since = col(ROWTIME).gt_eq(lit(ScalarValue::TimestampMillisecond(Some(80_000), None)));
        let ranges = table.ranges(std::slice::from_ref(&since)).unwrap();
        assert_eq!(
            ranges
                .iter()
                .map(|r| (r.partition, r.start, r.end))
                .collect::<Vec<_>>(),
            [(0, 40, 50), (1, 40, 50)]
        );
        let ranges = table
            .ranges(&[
                since,
                col(ROWPARTITION).eq(lit(1i32)),
                col(ROWOFFSET).lt(lit(45i64)),
            ])
            .unwrap();
        assert_eq!(
            ranges
                .iter()
                .map(|r| (r.partition, r.start, r.end))
                .collect::<Vec<_>>(),
            [(1, 40, 45)]
        );
        assert!(
            table
                .ranges(&[col(ROWOFFSET).gt(lit(60i64))])
                .unwrap()
                .is_empty()
        );
        broker.shutdown().await.unwrap();
    }
}
