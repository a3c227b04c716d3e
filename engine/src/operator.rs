//! Streaming operators: the nodes of a running query. The planner ([`crate::plan`]) makes them
//! from a `LogicalPlan`; the runtime ([`crate::runtime`]) pushes batches and watermarks through
//! them in order.
//!
//! Contract, for every [`Operator`]:
//! - [`Operator::process`] is called with input batches in arrival order, each in the input
//!   schema the planner gave the operator; output goes to [`Emit`], in the operator's
//!   [`Operator::schema`].
//! - [`Operator::advance`] is called when the watermark (the event time below which no more
//!   records are expected, in ms) moves forward; it never moves back. `i64::MAX` means the input
//!   has ended: an operator then emits everything it still holds.
//! - An operator keeps no reference to its input batches beyond what its state needs.
//! - [`Operator::snapshot`] returns the operator's whole state as Arrow rows (at a checkpoint
//!   barrier, between calls); [`Operator::restore`] on a fresh instance takes such rows back
//!   (possibly from several tasks' snapshots, filtered to the keys this task owns), after which
//!   the operator behaves as the one that was snapshotted.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::SchemaRef;
use datafusion::physical_expr::PhysicalExpr;

use crate::error::Result;

/// Rows an operator refused because they arrived after their window closed.
#[derive(Debug, Clone)]
pub struct LateRows {
    /// The operator that refused them.
    pub operator: String,
    /// The rows, in the operator's input schema.
    pub rows: RecordBatch,
    /// Why, for a late-data topic.
    pub reason: String,
}

/// Where an operator puts what it produces.
#[derive(Debug, Default)]
pub struct Emit {
    /// Output batches, in the operator's schema.
    pub batches: Vec<RecordBatch>,
    /// Late rows, for the late-data output.
    pub late: Vec<LateRows>,
}

/// Counters an operator keeps.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OperatorMetrics {
    pub rows_in: u64,
    pub rows_out: u64,
    /// Rows dropped (or routed) because their window had closed.
    pub late_rows: u64,
    /// Groups (windows × keys) held in state now.
    pub groups: u64,
}

/// A streaming operator (see the module docs for the calling contract).
pub trait Operator: Send + std::fmt::Debug {
    /// The operator's stable name in its query (state is found by it after a restart).
    fn name(&self) -> &str;

    /// The schema of the batches it emits.
    fn schema(&self) -> SchemaRef;

    /// Takes one input batch.
    fn process(&mut self, batch: &RecordBatch, watermark: i64, out: &mut Emit) -> Result<()>;

    /// Takes one batch of the query's source `input` (called on a query's first operator,
    /// which for a query of several sources is the merge that tells them apart).
    fn process_input(
        &mut self,
        input: usize,
        batch: &RecordBatch,
        watermark: i64,
        out: &mut Emit,
    ) -> Result<()> {
        let _ = input;
        self.process(batch, watermark, out)
    }

    /// The watermark moved to `watermark`. Operators whose state the watermark does not
    /// expire (row-at-a-time operators, tables) keep the default, which emits nothing.
    fn advance(&mut self, watermark: i64, out: &mut Emit) -> Result<()> {
        let _ = (watermark, out);
        Ok(())
    }

    /// Whether a watermark move alone can change what [`Operator::snapshot`] returns: true
    /// for operators whose [`Operator::advance`] closes, expires or releases state. A task
    /// whose operators all say no, and that has seen no rows since its last checkpoint, names
    /// that checkpoint's state files again instead of writing its whole state once more (a
    /// table of a million keys whose source went idle). The default, true, is always safe.
    fn state_follows_watermark(&self) -> bool {
        true
    }

    /// Its counters.
    fn metrics(&self) -> OperatorMetrics;

    /// An estimate of the memory its state holds, in bytes (keys, accumulators, buffered
    /// rows); the runtime holds a query's total under [`crate::runtime::QueryOptions`]'s limit.
    /// May walk the whole state: the runtime asks about once a second.
    fn state_bytes(&self) -> usize {
        0
    }

    /// The operator's state as rows (`None`: it keeps no state). Leaves the state as it was.
    fn snapshot(&mut self) -> Result<Option<RecordBatch>> {
        Ok(None)
    }

    /// Adds rows of a [`Operator::snapshot`] to this instance's state.
    fn restore(&mut self, state: &RecordBatch) -> Result<()> {
        if state.num_rows() == 0 {
            Ok(())
        } else {
            Err(crate::error::EngineError::internal(format!(
                "operator '{}' keeps no state but was given {} rows",
                self.name(),
                state.num_rows()
            )))
        }
    }

    /// A new instance with the same configuration and empty state: a query runs one per task.
    fn fresh(&self) -> Result<Box<dyn Operator>>;

    /// Tells a fresh instance which of the stage's tasks it runs in (before any state is
    /// restored), for operators whose state is shared outside the task (a materialized
    /// table's store).
    fn assign(&mut self, task: usize, tasks: usize) {
        let _ = (task, tasks);
    }

    /// The key columns of rows of a [`Operator::snapshot`], of the types its
    /// [`Operator::partition_keys`] evaluate to: a restore at another parallelism sends each
    /// row to the task the keyed exchange sends its key to. Empty: all rows to the first task.
    fn state_keys(&self, state: &RecordBatch) -> Result<Vec<arrow::array::ArrayRef>> {
        let _ = state;
        Err(crate::error::EngineError::internal(format!(
            "the state of operator '{}' cannot be split between tasks",
            self.name()
        )))
    }

    /// [`Operator::fresh`] under another name (the planner names the operators of a merged
    /// stream's branches after the merge). Operators that keep state cannot be renamed: their
    /// state is found by name.
    fn renamed(&self, name: String) -> Result<Box<dyn Operator>> {
        Err(crate::error::EngineError::internal(format!(
            "operator '{}' cannot be renamed to '{name}'",
            self.name()
        )))
    }

    /// The keys rows must be partitioned by before they reach this operator, so that all rows
    /// of a key meet in one task (`Some` of no keys: every row in one task); `None` when any
    /// task may take any row.
    fn partition_keys(&self) -> Option<Vec<Arc<dyn PhysicalExpr>>> {
        None
    }

    /// Whether its batches come in more than one layout (a join's tagged inputs): then the
    /// operators after it must tell them apart.
    fn mixes_layouts(&self) -> bool {
        false
    }
}

/// The key columns held in column `column` of a state snapshot as bytes of `converter`'s row
/// format, back as arrays (what [`Operator::state_keys`] gives for operators that keep their
/// keys in the row format).
pub(crate) fn row_keys(
    converter: &arrow::row::RowConverter,
    state: &RecordBatch,
    column: usize,
) -> Result<Vec<arrow::array::ArrayRef>> {
    let keys = state.column(column).as_binary::<i32>();
    let parser = converter.parser();
    let rows: Vec<_> = (0..keys.len())
        .map(|i| parser.parse(keys.value(i)))
        .collect();
    Ok(converter.convert_rows(rows)?)
}

/// Runs `batches` through `operators[from..]` with the watermark as it is, collecting what the
/// last one emits in `outputs` and every late row in `late`.
pub(crate) fn run_chain(
    operators: &mut [Box<dyn Operator>],
    from: usize,
    batches: Vec<RecordBatch>,
    watermark: i64,
    outputs: &mut Vec<RecordBatch>,
    late: &mut Vec<LateRows>,
) -> Result<()> {
    let mut current = batches;
    for op in operators.iter_mut().skip(from) {
        if current.is_empty() {
            return Ok(());
        }
        let mut emit = Emit::default();
        for b in &current {
            op.process(b, watermark, &mut emit)?;
        }
        late.append(&mut emit.late);
        current = emit.batches;
    }
    outputs.extend(current.into_iter().filter(|b| b.num_rows() > 0));
    Ok(())
}

/// Runs a batch of the query's source `input` through `operators` (see
/// [`Operator::process_input`]), as [`run_chain`] does.
pub(crate) fn run_input(
    operators: &mut [Box<dyn Operator>],
    input: usize,
    batch: RecordBatch,
    watermark: i64,
    outputs: &mut Vec<RecordBatch>,
    late: &mut Vec<LateRows>,
) -> Result<()> {
    let Some(first) = operators.first_mut() else {
        if batch.num_rows() > 0 {
            outputs.push(batch);
        }
        return Ok(());
    };
    let mut emit = Emit::default();
    first.process_input(input, &batch, watermark, &mut emit)?;
    late.append(&mut emit.late);
    run_chain(operators, 1, emit.batches, watermark, outputs, late)
}

/// Moves every operator of the chain to `watermark`, in order, running what each emits
/// through the ones after it.
pub(crate) fn advance_chain(
    operators: &mut [Box<dyn Operator>],
    watermark: i64,
    outputs: &mut Vec<RecordBatch>,
    late: &mut Vec<LateRows>,
) -> Result<()> {
    for i in 0..operators.len() {
        let mut emit = Emit::default();
        operators[i].advance(watermark, &mut emit)?;
        late.append(&mut emit.late);
        run_chain(operators, i + 1, emit.batches, watermark, outputs, late)?;
    }
    Ok(())
}

/// Filter and projection: DataFusion physical expressions evaluated over each batch.
#[derive(Debug, Clone)]
pub struct Stateless {
    name: String,
    predicate: Option<Arc<dyn PhysicalExpr>>,
    projection: Option<Vec<Arc<dyn PhysicalExpr>>>,
    schema: SchemaRef,
    metrics: OperatorMetrics,
}

impl Stateless {
    /// Keeps the rows where `predicate` is true.
    pub fn filter(name: String, predicate: Arc<dyn PhysicalExpr>, schema: SchemaRef) -> Self {
        Stateless {
            name,
            predicate: Some(predicate),
            projection: None,
            schema,
            metrics: OperatorMetrics::default(),
        }
    }

    /// Computes `exprs` as the columns of `schema`.
    pub fn project(name: String, exprs: Vec<Arc<dyn PhysicalExpr>>, schema: SchemaRef) -> Self {
        Stateless {
            name,
            predicate: None,
            projection: Some(exprs),
            schema,
            metrics: OperatorMetrics::default(),
        }
    }
}

impl Operator for Stateless {
    fn name(&self) -> &str {
        &self.name
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn state_follows_watermark(&self) -> bool {
        false
    }

    fn process(&mut self, batch: &RecordBatch, _watermark: i64, out: &mut Emit) -> Result<()> {
        self.metrics.rows_in += batch.num_rows() as u64;
        let mut batch = batch.clone();
        if let Some(predicate) = &self.predicate {
            let mask = predicate.evaluate(&batch)?.into_array(batch.num_rows())?;
            batch = arrow::compute::filter_record_batch(&batch, mask.as_boolean())?;
            if batch.num_rows() == 0 {
                return Ok(());
            }
            // A filter keeps the input's columns; only nullability metadata may differ.
            batch = RecordBatch::try_new(self.schema.clone(), batch.columns().to_vec())?;
        }
        if let Some(exprs) = &self.projection {
            let n = batch.num_rows();
            let columns = exprs
                .iter()
                .map(|e| e.evaluate(&batch).and_then(|v| v.into_array(n)))
                .collect::<datafusion::error::Result<Vec<_>>>()?;
            batch = RecordBatch::try_new_with_options(
                self.schema.clone(),
                columns,
                &arrow::array::RecordBatchOptions::new().with_row_count(Some(n)),
            )?;
        }
        self.metrics.rows_out += batch.num_rows() as u64;
        out.batches.push(batch);
        Ok(())
    }

    fn metrics(&self) -> OperatorMetrics {
        self.metrics
    }

    fn fresh(&self) -> Result<Box<dyn Operator>> {
        self.renamed(self.name.clone())
    }

    fn renamed(&self, name: String) -> Result<Box<dyn Operator>> {
        Ok(Box::new(Stateless {
            name,
            metrics: OperatorMetrics::default(),
            ..self.clone()
        }))
    }
}
