//! Aggregations on streams, with DataFusion's accumulators, so every DataFusion aggregate
//! function (built in or user-defined) works.
//!
//! - **Windowed** (a GROUP BY with a window, [`crate::window`]): each open window holds a
//!   table of groups. A row goes to the windows its event time falls in, unless the window has
//!   closed: a window `[start, end)` closes when the watermark reaches `end + grace`. A row all
//!   of whose windows have closed is late: counted, and handed out as [`LateRows`].
//!   - EMIT FINAL: a window's results are emitted once, when it closes, and its state dropped.
//!     Groups live in DataFusion's vectorized `GroupValues` and `GroupsAccumulator`s (one
//!     update call per window per batch), falling back to per-group `Accumulator`s for
//!     functions that have no groups accumulator.
//!   - EMIT CHANGES: after each batch, the new value of every group it touched is emitted
//!     (one row per group per batch); the state is dropped when the window closes.
//! - **Updating** (a GROUP BY without a window): one table of groups that never closes; after
//!   each batch the touched groups' new values are emitted: the changelog of a table, an upsert
//!   per key.
//!
//! Rows without an event time (a null time column) are late by definition: no window takes them.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StructArray, TimestampMillisecondArray,
    UInt32Array,
};
use arrow::compute::{filter_record_batch, take};
use arrow::datatypes::{DataType, Schema, SchemaRef, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Accumulator, EmitTo, GroupsAccumulator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;

use crate::error::{EngineError, Result};
use crate::operator::{Emit, LateRows, Operator, OperatorMetrics};
use crate::window::{WindowKind, WindowSpec, window_fields};

/// When a windowed aggregation emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EmitMode {
    /// Every update: after each batch, the new value of each group it changed.
    #[default]
    Changes,
    /// Once per window and group, when the window closes.
    Final,
}

/// One aggregate function call of the query.
#[derive(Debug, Clone)]
pub struct AggregateCall {
    pub function: Arc<AggregateFunctionExpr>,
    /// `FILTER (WHERE …)`.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
}

/// What the planner hands the aggregate operator.
#[derive(Debug, Clone)]
pub struct AggregateSpec {
    pub name: String,
    /// GROUP BY expressions other than the window, over the input.
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    /// The schema of the key columns.
    pub key_schema: SchemaRef,
    /// The window, its time expression, and its position among the GROUP BY expressions.
    pub window: Option<(WindowSpec, Arc<dyn PhysicalExpr>, usize)>,
    pub calls: Vec<AggregateCall>,
    pub emit: EmitMode,
    /// The output: GROUP BY columns in their order (the window a struct), then the aggregates.
    pub schema: SchemaRef,
}

/// The accumulators of one table of groups.
enum Accumulators {
    /// One `GroupsAccumulator` per call, over all groups.
    Vectorized(Vec<Box<dyn GroupsAccumulator>>),
    /// One `Accumulator` per call per group.
    PerGroup(Vec<Vec<Box<dyn Accumulator>>>),
}

impl std::fmt::Debug for Accumulators {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Accumulators::Vectorized(a) => write!(f, "Vectorized({} calls)", a.len()),
            Accumulators::PerGroup(a) => write!(f, "PerGroup({} calls)", a.len()),
        }
    }
}

/// The groups of one window (or of an updating aggregate): keys interned to dense group ids,
/// and the accumulators.
struct GroupTable {
    /// `None` when there are no key columns: then there is one group, id 0.
    values: Option<Box<dyn GroupValues>>,
    groups: usize,
    accumulators: Accumulators,
}

impl std::fmt::Debug for GroupTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupTable")
            .field("groups", &self.groups)
            .field("accumulators", &self.accumulators)
            .finish()
    }
}

/// Rows of one window (or all rows) with their evaluated columns.
struct Slice<'a> {
    keys: &'a [ArrayRef],
    args: &'a [Vec<ArrayRef>],
    filters: &'a [Option<BooleanArray>],
    rows: usize,
}

impl GroupTable {
    fn new(spec: &AggregateSpec, vectorized: bool) -> Result<GroupTable> {
        let values = if spec.keys.is_empty() {
            None
        } else {
            Some(new_group_values(
                spec.key_schema.clone(),
                &GroupOrdering::None,
            )?)
        };
        let accumulators = if vectorized {
            Accumulators::Vectorized(
                spec.calls
                    .iter()
                    .map(|c| c.function.create_groups_accumulator())
                    .collect::<datafusion::error::Result<_>>()?,
            )
        } else {
            Accumulators::PerGroup(spec.calls.iter().map(|_| Vec::new()).collect())
        };
        Ok(GroupTable {
            values,
            groups: 0,
            accumulators,
        })
    }

    /// Adds rows; returns, for the per-group form, each touched group with its first row.
    fn update(&mut self, spec: &AggregateSpec, slice: &Slice<'_>) -> Result<Vec<(usize, u32)>> {
        let mut ids = Vec::with_capacity(slice.rows);
        match &mut self.values {
            Some(values) => values.intern(slice.keys, &mut ids)?,
            None => ids.resize(slice.rows, 0),
        }
        self.groups = match &self.values {
            Some(v) => v.len(),
            None => 1,
        };
        match &mut self.accumulators {
            Accumulators::Vectorized(accs) => {
                for (i, acc) in accs.iter_mut().enumerate() {
                    acc.update_batch(&slice.args[i], &ids, slice.filters[i].as_ref(), self.groups)?;
                }
                Ok(Vec::new())
            }
            Accumulators::PerGroup(accs) => {
                for (call, per_group) in spec.calls.iter().zip(accs.iter_mut()) {
                    while per_group.len() < self.groups {
                        per_group.push(call.function.create_accumulator()?);
                    }
                }
                // Rows grouped by id, in arrival order within a group (order-sensitive
                // functions such as first_value see rows as they came).
                let mut order: Vec<u32> = (0..slice.rows as u32).collect();
                order.sort_by_key(|&r| ids[r as usize]);
                let mut touched = Vec::new();
                let mut start = 0;
                while start < order.len() {
                    let group = ids[order[start] as usize];
                    let mut end = start + 1;
                    while end < order.len() && ids[order[end] as usize] == group {
                        end += 1;
                    }
                    let run = &order[start..end];
                    let all = run.len() == slice.rows;
                    let indices = (!all).then(|| UInt32Array::from(run.to_vec()));
                    for (i, per_group) in accs.iter_mut().enumerate() {
                        let mut values = match &indices {
                            None => slice.args[i].clone(),
                            Some(idx) => slice.args[i]
                                .iter()
                                .map(|a| take(a.as_ref(), idx, None))
                                .collect::<Result<Vec<_>, _>>()?,
                        };
                        if let Some(filter) = &slice.filters[i] {
                            let mask = match &indices {
                                None => filter.clone(),
                                Some(idx) => take(filter, idx, None)?.as_boolean().clone(),
                            };
                            values = values
                                .iter()
                                .map(|v| arrow::compute::filter(v.as_ref(), &mask))
                                .collect::<Result<Vec<_>, _>>()?;
                        }
                        per_group[group].update_batch(&values)?;
                    }
                    touched.push((group, run[0]));
                    start = end;
                }
                Ok(touched)
            }
        }
    }

    /// The current values of `groups` (per-group form), one array per call.
    fn current(&mut self, spec: &AggregateSpec, groups: &[usize]) -> Result<Vec<ArrayRef>> {
        let Accumulators::PerGroup(accs) = &mut self.accumulators else {
            return Err(EngineError::internal(
                "current values asked of vectorized accumulators",
            ));
        };
        let mut out = Vec::with_capacity(accs.len());
        for (call, per_group) in spec.calls.iter().zip(accs.iter_mut()) {
            let values = groups
                .iter()
                .map(|&g| per_group[g].evaluate())
                .collect::<datafusion::error::Result<Vec<ScalarValue>>>()?;
            out.push(to_array(values, call)?);
        }
        Ok(out)
    }

    /// Every group's keys and accumulator states (one array per state field of each call, in
    /// call order), consuming the table.
    fn drain_state(mut self) -> Result<(Vec<ArrayRef>, Vec<ArrayRef>)> {
        let keys = match &mut self.values {
            Some(v) => v.emit(EmitTo::All)?,
            None => vec![],
        };
        let mut states = Vec::new();
        match &mut self.accumulators {
            Accumulators::Vectorized(accs) => {
                for acc in accs {
                    states.extend(acc.state(EmitTo::All)?);
                }
            }
            Accumulators::PerGroup(accs) => {
                for per_group in accs {
                    let rows = per_group
                        .iter_mut()
                        .map(|a| a.state())
                        .collect::<datafusion::error::Result<Vec<Vec<ScalarValue>>>>()?;
                    let fields = rows.first().map_or(0, Vec::len);
                    for f in 0..fields {
                        states.push(ScalarValue::iter_to_array(
                            rows.iter().map(|r| r[f].clone()),
                        )?);
                    }
                }
            }
        }
        Ok((keys, states))
    }

    /// Merges rows of state (keys, then each call's state fields) into the table.
    fn merge_state(
        &mut self,
        spec: &AggregateSpec,
        keys: &[ArrayRef],
        states: &[Vec<ArrayRef>],
        rows: usize,
    ) -> Result<()> {
        let mut ids = Vec::with_capacity(rows);
        match &mut self.values {
            Some(values) => values.intern(keys, &mut ids)?,
            None => ids.resize(rows, 0),
        }
        self.groups = match &self.values {
            Some(v) => v.len(),
            None => 1,
        };
        match &mut self.accumulators {
            Accumulators::Vectorized(accs) => {
                for (acc, state) in accs.iter_mut().zip(states) {
                    acc.merge_batch(state, &ids, self.groups)?;
                }
            }
            Accumulators::PerGroup(accs) => {
                for ((call, per_group), state) in spec.calls.iter().zip(accs.iter_mut()).zip(states)
                {
                    while per_group.len() < self.groups {
                        per_group.push(call.function.create_accumulator()?);
                    }
                    for (row, &group) in ids.iter().enumerate() {
                        let one: Vec<ArrayRef> = state.iter().map(|a| a.slice(row, 1)).collect();
                        per_group[group].merge_batch(&one)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Every group's keys and final values, consuming the table.
    fn finish(mut self, spec: &AggregateSpec) -> Result<(Vec<ArrayRef>, Vec<ArrayRef>)> {
        let keys = match &mut self.values {
            Some(v) => v.emit(EmitTo::All)?,
            None => vec![],
        };
        let values = match &mut self.accumulators {
            Accumulators::Vectorized(accs) => accs
                .iter_mut()
                .map(|a| a.evaluate(EmitTo::All))
                .collect::<datafusion::error::Result<Vec<_>>>()?,
            Accumulators::PerGroup(_) => {
                let all: Vec<usize> = (0..self.groups).collect();
                self.current(spec, &all)?
            }
        };
        Ok((keys, values))
    }
}

/// Scalars of one aggregate into an array of its output type.
pub(crate) fn to_array(values: Vec<ScalarValue>, call: &AggregateCall) -> Result<ArrayRef> {
    let field = call.function.field();
    if values.is_empty() {
        return Ok(arrow::array::new_empty_array(field.data_type()));
    }
    let array = ScalarValue::iter_to_array(values)?;
    if array.data_type() == field.data_type() {
        Ok(array)
    } else {
        Ok(arrow::compute::cast(&array, field.data_type())?)
    }
}

/// The windowed or updating aggregate operator (see the module docs).
#[derive(Debug)]
pub struct AggregateOperator {
    spec: AggregateSpec,
    vectorized: bool,
    /// Open windows by start; an updating aggregate keeps its one table at `i64::MIN`.
    tables: BTreeMap<i64, GroupTable>,
    metrics: OperatorMetrics,
}

impl AggregateOperator {
    /// An operator for `spec`. EMIT FINAL without a window is refused: an updating aggregate
    /// never closes.
    pub fn new(spec: AggregateSpec) -> Result<AggregateOperator> {
        if spec.window.is_none() && spec.emit == EmitMode::Final {
            return Err(EngineError::plan(
                "EMIT FINAL needs a windowed aggregation (a GROUP BY without a window never \
                 closes); use EMIT CHANGES, or group by a window",
            ));
        }
        let vectorized = spec.emit == EmitMode::Final
            && spec
                .calls
                .iter()
                .all(|c| c.function.groups_accumulator_supported());
        Ok(AggregateOperator {
            spec,
            vectorized,
            tables: BTreeMap::new(),
            metrics: OperatorMetrics::default(),
        })
    }

    fn window_size(&self) -> i64 {
        match self.spec.window.as_ref().map(|w| w.0.kind) {
            Some(WindowKind::Tumbling { size_ms }) | Some(WindowKind::Hopping { size_ms, .. }) => {
                size_ms
            }
            _ => 0,
        }
    }

    /// Output rows for one window (or the updating table, `window` `None`): keys, values.
    fn output(
        &self,
        window: Option<i64>,
        keys: Vec<ArrayRef>,
        values: Vec<ArrayRef>,
        rows: usize,
    ) -> Result<RecordBatch> {
        let mut columns = Vec::with_capacity(self.spec.schema.fields().len());
        let mut keys = keys.into_iter();
        let key_count = self.spec.keys.len() + usize::from(self.spec.window.is_some());
        for i in 0..key_count {
            match (&self.spec.window, window) {
                (Some((_, _, position)), Some(start)) if *position == i => {
                    let end = start + self.window_size();
                    columns.push(Arc::new(StructArray::try_new(
                        window_fields(),
                        vec![
                            Arc::new(TimestampMillisecondArray::from_value(start, rows))
                                as ArrayRef,
                            Arc::new(TimestampMillisecondArray::from_value(end, rows)),
                        ],
                        None,
                    )?) as ArrayRef);
                }
                _ => columns.push(keys.next().ok_or_else(|| {
                    EngineError::internal("fewer key columns than GROUP BY expressions")
                })?),
            }
        }
        columns.extend(values);
        Ok(RecordBatch::try_new(self.spec.schema.clone(), columns)?)
    }

    /// Updates one table with a slice of rows, emitting changes when asked.
    fn update_table(
        &mut self,
        table_key: i64,
        window: Option<i64>,
        slice: &Slice<'_>,
        out: &mut Emit,
    ) -> Result<()> {
        let vectorized = self.vectorized;
        if !self.tables.contains_key(&table_key) {
            let table = GroupTable::new(&self.spec, vectorized)?;
            self.tables.insert(table_key, table);
        }
        let Some(table) = self.tables.get_mut(&table_key) else {
            return Err(EngineError::internal("a group table vanished"));
        };
        let touched = table.update(&self.spec, slice)?;
        if self.spec.emit == EmitMode::Changes && !touched.is_empty() {
            let groups: Vec<usize> = touched.iter().map(|t| t.0).collect();
            let values = table.current(&self.spec, &groups)?;
            let first_rows = UInt32Array::from_iter_values(touched.iter().map(|t| t.1));
            let keys = slice
                .keys
                .iter()
                .map(|k| take(k.as_ref(), &first_rows, None))
                .collect::<Result<Vec<_>, _>>()?;
            let batch = self.output(window, keys, values, groups.len())?;
            self.metrics.rows_out += batch.num_rows() as u64;
            out.batches.push(batch);
        }
        Ok(())
    }

    fn table_bytes(table: &GroupTable) -> usize {
        let keys = table.values.as_ref().map_or(0, |v| v.size());
        let accumulators: usize = match &table.accumulators {
            Accumulators::Vectorized(a) => a.iter().map(|acc| acc.size()).sum(),
            Accumulators::PerGroup(calls) => calls
                .iter()
                .flat_map(|per_group| per_group.iter().map(|acc| acc.size()))
                .sum(),
        };
        keys + accumulators
    }

    fn refresh_group_count(&mut self) {
        self.metrics.groups = self.tables.values().map(|t| t.groups as u64).sum();
    }
}

/// A batch's GROUP BY keys (without the window), and each call's arguments and filter.
pub(crate) struct AggregateInputs {
    pub keys: Vec<ArrayRef>,
    pub args: Vec<Vec<ArrayRef>>,
    pub filters: Vec<Option<BooleanArray>>,
}

impl AggregateSpec {
    /// Evaluates what the aggregation reads from `batch`.
    pub(crate) fn inputs(&self, batch: &RecordBatch) -> Result<AggregateInputs> {
        let n = batch.num_rows();
        let keys = evaluate(&self.keys, batch)?;
        let mut args = Vec::with_capacity(self.calls.len());
        let mut filters = Vec::with_capacity(self.calls.len());
        for call in &self.calls {
            args.push(evaluate(&call.function.expressions(), batch)?);
            filters.push(match &call.filter {
                Some(f) => Some(f.evaluate(batch)?.into_array(n)?.as_boolean().clone()),
                None => None,
            });
        }
        Ok(AggregateInputs {
            keys,
            args,
            filters,
        })
    }
}

/// Evaluates expressions over a batch into arrays.
fn evaluate(exprs: &[Arc<dyn PhysicalExpr>], batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
    let n = batch.num_rows();
    Ok(exprs
        .iter()
        .map(|e| e.evaluate(batch).and_then(|v| v.into_array(n)))
        .collect::<datafusion::error::Result<Vec<_>>>()?)
}

pub(crate) fn take_all(arrays: &[ArrayRef], rows: &UInt32Array) -> Result<Vec<ArrayRef>> {
    Ok(arrays
        .iter()
        .map(|a| take(a.as_ref(), rows, None))
        .collect::<Result<Vec<_>, _>>()?)
}

impl Operator for AggregateOperator {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn schema(&self) -> SchemaRef {
        self.spec.schema.clone()
    }

    /// A watermark closes windows; an aggregation without windows keeps every group.
    fn state_follows_watermark(&self) -> bool {
        self.spec.window.is_some()
    }

    fn process(&mut self, batch: &RecordBatch, watermark: i64, out: &mut Emit) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        self.metrics.rows_in += n as u64;
        let AggregateInputs {
            keys,
            args,
            filters,
        } = self.spec.inputs(batch)?;

        let Some((spec, time, _)) = self.spec.window.clone() else {
            let slice = Slice {
                keys: &keys,
                args: &args,
                filters: &filters,
                rows: n,
            };
            self.update_table(i64::MIN, None, &slice, out)?;
            self.refresh_group_count();
            return Ok(());
        };

        let times = time.evaluate(batch)?.into_array(n)?;
        let times =
            arrow::compute::cast(&times, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
        let times = times.as_primitive::<arrow::datatypes::TimestampMillisecondType>();
        let (size, advance) = match spec.kind {
            WindowKind::Tumbling { size_ms } => (size_ms, size_ms),
            WindowKind::Hopping {
                size_ms,
                advance_ms,
            } => (size_ms, advance_ms),
            WindowKind::Session { .. } => {
                return Err(EngineError::plan(
                    "session windows are not supported yet; use tumbling or hopping windows",
                ));
            }
        };
        let grace = spec.grace_ms;
        // A row is late when even its last window (the one starting last) has closed.
        let closed = |start: i64| start.saturating_add(size).saturating_add(grace) <= watermark;
        let last_start = |t: i64| t - t.rem_euclid(advance);
        let late: BooleanArray = (0..n)
            .map(|i| Some(times.is_null(i) || closed(last_start(times.value(i)))))
            .collect();
        let late_count = late.true_count();
        if late_count > 0 {
            self.metrics.late_rows += late_count as u64;
            out.late.push(LateRows {
                operator: self.spec.name.clone(),
                rows: filter_record_batch(batch, &late)?,
                reason: format!(
                    "event time past the window end plus the grace period ({grace} ms) at \
                     watermark {watermark}, or no event time"
                ),
            });
        }

        // Rows by window start, over every window each row falls in.
        let mut by_window: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        let hops = size / advance;
        for i in 0..n {
            if late.value(i) {
                continue;
            }
            let last = last_start(times.value(i));
            for k in 0..hops {
                let start = last - k * advance;
                if !closed(start) {
                    by_window.entry(start).or_default().push(i as u32);
                }
            }
        }
        for (start, rows) in by_window {
            if rows.len() == n {
                let slice = Slice {
                    keys: &keys,
                    args: &args,
                    filters: &filters,
                    rows: n,
                };
                self.update_table(start, Some(start), &slice, out)?;
                continue;
            }
            let idx = UInt32Array::from(rows);
            let keys_w = take_all(&keys, &idx)?;
            let args_w = args
                .iter()
                .map(|a| take_all(a, &idx))
                .collect::<Result<Vec<_>>>()?;
            let filters_w = filters
                .iter()
                .map(|f| {
                    f.as_ref()
                        .map(|f| take(f, &idx, None).map(|a| a.as_boolean().clone()))
                        .transpose()
                })
                .collect::<Result<Vec<_>, _>>()?;
            let slice = Slice {
                keys: &keys_w,
                args: &args_w,
                filters: &filters_w,
                rows: idx.len(),
            };
            self.update_table(start, Some(start), &slice, out)?;
        }
        self.refresh_group_count();
        Ok(())
    }

    fn advance(&mut self, watermark: i64, out: &mut Emit) -> Result<()> {
        let Some((spec, _, _)) = &self.spec.window else {
            return Ok(());
        };
        let (size, grace) = (self.window_size(), spec.grace_ms);
        while let Some(entry) = self.tables.first_entry() {
            let start = *entry.key();
            if start.saturating_add(size).saturating_add(grace) > watermark {
                break;
            }
            let table = entry.remove();
            if self.spec.emit == EmitMode::Final && table.groups > 0 {
                let rows = table.groups;
                let (keys, values) = table.finish(&self.spec)?;
                let batch = self.output(Some(start), keys, values, rows)?;
                self.metrics.rows_out += batch.num_rows() as u64;
                out.batches.push(batch);
            }
        }
        self.refresh_group_count();
        Ok(())
    }

    fn metrics(&self) -> OperatorMetrics {
        self.metrics
    }

    fn state_bytes(&self) -> usize {
        self.tables.values().map(Self::table_bytes).sum()
    }

    fn fresh(&self) -> Result<Box<dyn Operator>> {
        Ok(Box::new(AggregateOperator::new(self.spec.clone())?))
    }

    fn snapshot(&mut self) -> Result<Option<RecordBatch>> {
        let schema = state_schema(&self.spec)?;
        let tables = std::mem::take(&mut self.tables);
        let mut batches = Vec::with_capacity(tables.len());
        for (table_key, table) in tables {
            let (keys, states) = table.drain_state()?;
            let rows = keys.first().or(states.first()).map_or(0, |a| a.len());
            let mut columns: Vec<ArrayRef> = vec![Arc::new(arrow::array::Int64Array::from_value(
                table_key, rows,
            ))];
            columns.extend(keys);
            columns.extend(states);
            batches.push(RecordBatch::try_new(schema.clone(), columns)?);
        }
        let state = arrow::compute::concat_batches(&schema, &batches)?;
        // Draining emptied the tables: put the state back.
        self.restore(&state)?;
        Ok(Some(state))
    }

    fn restore(&mut self, state: &RecordBatch) -> Result<()> {
        if state.num_rows() == 0 {
            return Ok(());
        }
        let table_keys = state
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .clone();
        let key_count = self.spec.key_schema.fields().len();
        let mut distinct: Vec<i64> = table_keys.values().to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        for table_key in distinct {
            let mask: BooleanArray = table_keys
                .iter()
                .map(|k| Some(k == Some(table_key)))
                .collect();
            let part = filter_record_batch(state, &mask)?;
            let keys: Vec<ArrayRef> = part.columns()[1..1 + key_count].to_vec();
            let mut states = Vec::with_capacity(self.spec.calls.len());
            let mut at = 1 + key_count;
            for call in &self.spec.calls {
                let n = call.function.state_fields()?.len();
                states.push(part.columns()[at..at + n].to_vec());
                at += n;
            }
            if !self.tables.contains_key(&table_key) {
                let table = GroupTable::new(&self.spec, self.vectorized)?;
                self.tables.insert(table_key, table);
            }
            if let Some(table) = self.tables.get_mut(&table_key) {
                table.merge_state(&self.spec, &keys, &states, part.num_rows())?;
            }
        }
        self.refresh_group_count();
        Ok(())
    }

    fn partition_keys(&self) -> Option<Vec<Arc<dyn PhysicalExpr>>> {
        Some(self.spec.keys.clone())
    }

    fn state_keys(&self, state: &RecordBatch) -> Result<Vec<ArrayRef>> {
        let k = self.spec.keys.len();
        Ok(state.columns()[1..1 + k].to_vec())
    }
}

/// The schema of an aggregate operator's snapshot: the table (window start, or `i64::MIN` for an
/// updating aggregate), the key columns, then each call's state fields (prefixed with the
/// call's position, as two calls may name their fields alike).
fn state_schema(spec: &AggregateSpec) -> Result<SchemaRef> {
    let mut fields: Vec<arrow::datatypes::FieldRef> = vec![Arc::new(arrow::datatypes::Field::new(
        "__table",
        DataType::Int64,
        false,
    ))];
    fields.extend(spec.key_schema.fields().iter().cloned());
    for (i, call) in spec.calls.iter().enumerate() {
        for f in call.function.state_fields()? {
            fields.push(Arc::new(
                f.as_ref()
                    .clone()
                    .with_name(format!("__{i}_{}", f.name()))
                    .with_nullable(true),
            ));
        }
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// The schema of the GROUP BY key columns (without the window) of an aggregate's output.
pub fn key_schema(
    output: &Schema,
    window_position: Option<usize>,
    group_count: usize,
) -> SchemaRef {
    let fields = (0..group_count)
        .filter(|i| Some(*i) != window_position)
        .map(|i| output.field(i).clone())
        .collect::<Vec<_>>();
    Arc::new(Schema::new(fields))
}
