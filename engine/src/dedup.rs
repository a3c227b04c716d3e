//! Deduplication per key within a window: of the records of one key whose event times fall in
//! one tumbling window, the first to arrive passes and the rest are dropped (for example
//! repeated events from a producer that retried).
//!
//! Records are re-keyed through the exchange, so a key's records meet in one task. Each task
//! remembers, per open window, the keys it has seen; a window is forgotten when the watermark
//! passes its end plus the grace period. A record whose window is already forgotten is late
//! (counted, and sent to the late-data topic when there is one): it could be a duplicate of a
//! record that passed.

use std::collections::BTreeMap;

use datafusion::common::HashSet;
use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Int64Array, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimestampMillisecondType};
use arrow::row::{RowConverter, SortField};
use datafusion::common::DFSchemaRef;
use datafusion::logical_expr::{Expr, LogicalPlan, UserDefinedLogicalNodeCore};
use datafusion::physical_expr::PhysicalExpr;

use crate::error::{EngineError, Result};
use crate::format::ROWTIME;
use crate::operator::{Emit, LateRows, Operator, OperatorMetrics};

/// A deduplication in a `LogicalPlan` (an extension node).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DedupNode {
    pub input: LogicalPlan,
    pub keys: Vec<Expr>,
    pub size_ms: i64,
    pub grace_ms: i64,
}

impl PartialOrd for DedupNode {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        (self.size_ms, self.grace_ms).partial_cmp(&(other.size_ms, other.grace_ms))
    }
}

impl UserDefinedLogicalNodeCore for DedupNode {
    fn name(&self) -> &str {
        "Dedup"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        self.input.schema()
    }

    fn expressions(&self) -> Vec<Expr> {
        self.keys.clone()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "Dedup: within {} ms", self.size_ms)
    }

    fn with_exprs_and_inputs(
        &self,
        exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> datafusion::error::Result<Self> {
        let input = inputs.pop().ok_or_else(|| {
            datafusion::error::DataFusionError::Internal("Dedup needs one input".into())
        })?;
        Ok(DedupNode {
            input,
            keys: exprs,
            ..self.clone()
        })
    }
}

/// The deduplication operator (see the module docs).
pub struct DedupOperator {
    name: String,
    keys: Vec<Arc<dyn PhysicalExpr>>,
    size_ms: i64,
    grace_ms: i64,
    time: usize,
    schema: SchemaRef,
    key_rows: RowConverter,
    /// Keys seen per open window, by window start.
    windows: BTreeMap<i64, HashSet<Box<[u8]>>>,
    watermark: i64,
    metrics: OperatorMetrics,
}

impl fmt::Debug for DedupOperator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dedup({}, {} windows)", self.name, self.windows.len())
    }
}

impl DedupOperator {
    pub(crate) fn new(
        name: String,
        keys: Vec<Arc<dyn PhysicalExpr>>,
        size_ms: i64,
        grace_ms: i64,
        schema: SchemaRef,
    ) -> Result<DedupOperator> {
        if size_ms <= 0 || grace_ms < 0 {
            return Err(EngineError::config(
                "a deduplication window needs a size above 0 and a grace period of 0 or more",
            ));
        }
        let time = schema.index_of(ROWTIME).map_err(|_| {
            EngineError::plan(format!(
                "a deduplication needs the stream's event time ({ROWTIME})"
            ))
        })?;
        let types = keys
            .iter()
            .map(|k| Ok(SortField::new(k.data_type(&schema)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(DedupOperator {
            name,
            keys,
            size_ms,
            grace_ms,
            time,
            key_rows: RowConverter::new(types)?,
            schema,
            windows: BTreeMap::new(),
            watermark: i64::MIN,
            metrics: OperatorMetrics::default(),
        })
    }

    fn start(&self, t: i64) -> i64 {
        t - t.rem_euclid(self.size_ms)
    }

    fn closed(&self, start: i64) -> bool {
        start
            .saturating_add(self.size_ms)
            .saturating_add(self.grace_ms)
            <= self.watermark
    }
}

fn state_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("window", DataType::Int64, false),
        Field::new("key", DataType::Binary, false),
    ]))
}

impl Operator for DedupOperator {
    fn name(&self) -> &str {
        &self.name
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn process(&mut self, batch: &RecordBatch, watermark: i64, out: &mut Emit) -> Result<()> {
        let n = batch.num_rows();
        self.metrics.rows_in += n as u64;
        self.advance(watermark, out)?;
        let key_columns = self
            .keys
            .iter()
            .map(|k| k.evaluate(batch).and_then(|v| v.into_array(n)))
            .collect::<datafusion::error::Result<Vec<ArrayRef>>>()?;
        let keys = self.key_rows.convert_columns(&key_columns)?;
        let times = batch
            .column(self.time)
            .as_primitive::<TimestampMillisecondType>();
        let mut keep = Vec::with_capacity(n);
        let mut late = Vec::new();
        for i in 0..n {
            if times.is_null(i) {
                late.push(i as u32);
                keep.push(false);
                continue;
            }
            let start = self.start(times.value(i));
            if self.closed(start) {
                late.push(i as u32);
                keep.push(false);
                continue;
            }
            keep.push(
                self.windows
                    .entry(start)
                    .or_default()
                    .insert(keys.row(i).as_ref().into()),
            );
        }
        if !late.is_empty() {
            let rows =
                arrow::compute::take_record_batch(batch, &arrow::array::UInt32Array::from(late))?;
            self.metrics.late_rows += rows.num_rows() as u64;
            out.late.push(LateRows {
                operator: self.name.clone(),
                rows,
                reason: "its deduplication window had closed".into(),
            });
        }
        let passed = filter_record_batch(batch, &BooleanArray::from(keep))?;
        self.metrics.rows_out += passed.num_rows() as u64;
        self.metrics.groups = self.windows.values().map(|w| w.len() as u64).sum();
        if passed.num_rows() > 0 {
            out.batches.push(passed);
        }
        Ok(())
    }

    fn advance(&mut self, watermark: i64, _out: &mut Emit) -> Result<()> {
        if watermark <= self.watermark {
            return Ok(());
        }
        self.watermark = watermark;
        while let Some((&start, _)) = self.windows.first_key_value() {
            if !self.closed(start) {
                break;
            }
            self.windows.pop_first();
        }
        Ok(())
    }

    fn metrics(&self) -> OperatorMetrics {
        self.metrics
    }

    fn state_bytes(&self) -> usize {
        self.windows
            .values()
            .flat_map(|w| w.iter())
            .map(|k| k.len() + 16)
            .sum()
    }

    fn snapshot(&mut self) -> Result<Option<RecordBatch>> {
        let mut windows = Vec::new();
        let mut keys: Vec<&[u8]> = Vec::new();
        for (start, seen) in &self.windows {
            for k in seen {
                windows.push(*start);
                keys.push(k);
            }
        }
        Ok(Some(RecordBatch::try_new(
            state_schema(),
            vec![
                Arc::new(Int64Array::from(windows)),
                Arc::new(BinaryArray::from_iter_values(keys)),
            ],
        )?))
    }

    fn restore(&mut self, state: &RecordBatch) -> Result<()> {
        if state.num_columns() != 2 {
            return Err(EngineError::Checkpoint(format!(
                "the state of deduplication '{}' has {} columns, not 2",
                self.name,
                state.num_columns()
            )));
        }
        let windows = state
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>();
        let keys = state.column(1).as_binary::<i32>();
        for i in 0..state.num_rows() {
            self.windows
                .entry(windows.value(i))
                .or_default()
                .insert(keys.value(i).into());
        }
        Ok(())
    }

    fn state_keys(&self, state: &RecordBatch) -> Result<Vec<ArrayRef>> {
        crate::operator::row_keys(&self.key_rows, state, 1)
    }

    fn fresh(&self) -> Result<Box<dyn Operator>> {
        Ok(Box::new(DedupOperator::new(
            self.name.clone(),
            self.keys.clone(),
            self.size_ms,
            self.grace_ms,
            self.schema.clone(),
        )?))
    }

    fn partition_keys(&self) -> Option<Vec<Arc<dyn PhysicalExpr>>> {
        Some(self.keys.clone())
    }
}
