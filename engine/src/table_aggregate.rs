//! Aggregations over a table (Kafka Streams' `KTable.groupBy(…).aggregate(adder, subtractor)`,
//! ksqlDB's `CREATE TABLE … AS SELECT … FROM a_table GROUP BY …`): the result follows the
//! table's updates and deletes, so it always equals the aggregation of the table as it is now.
//!
//! Two operators, each after an exchange:
//!
//! ```text
//! table changelog ─(by the table's key)─▶ Regroup ─(by the GROUP BY keys)─▶ TableAggregate
//! ```
//!
//! - [`Regroup`] keeps the table's latest row per key. An update of a key sends its old row as
//!   a retraction and its new row as an addition; a delete sends the old row as a retraction.
//!   The two may go to different groups (a user who moves region leaves one and joins another).
//! - [`TableAggregate`] keeps per group one accumulator per call and the number of rows in the
//!   group: additions update the accumulators, retractions take their rows back
//!   (`Accumulator::retract_batch`). After each batch every group it touched emits its new
//!   value; a group left with no rows emits a delete ([`DELETED`]), as it is no longer in the
//!   GROUP BY's result.
//!
//! Only functions whose retraction is exact and independent of order can follow a table
//! (COUNT, SUM, AVG, VAR, STDDEV and their variants; not DISTINCT): MIN and MAX would need every
//! value of the group kept, and DataFusion's retractable forms of them (and of ARRAY_AGG) take
//! rows back in arrival order only, as a sliding window frame does. ksqlDB draws the same line.
//! SUM and AVG of floating-point columns take a row back by subtraction, so a group's value
//! carries the rounding of every value that passed through it (as Kafka Streams' subtractors
//! do); integer and decimal sums are exact.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Int64Array, RecordBatch};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::common::{DFSchema, DFSchemaRef, ScalarValue};
use datafusion::logical_expr::{
    Accumulator, Aggregate, Expr, LogicalPlan, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::PhysicalExpr;

use crate::aggregate::{AggregateCall, AggregateSpec, to_array};
use crate::error::{EngineError, Result};
use crate::format::DELETED;
use crate::operator::{Emit, Operator, OperatorMetrics, row_keys};

/// The column [`Regroup`] marks a retracted row with (where the input had [`DELETED`], or
/// last).
pub const RETRACT: &str = "__retract";

/// Functions [`TableAggregate`] can follow a table with (see the module docs).
const RETRACTABLE: &[&str] = &[
    "count",
    "sum",
    "avg",
    "var",
    "var_pop",
    "stddev",
    "stddev_pop",
];

/// A table aggregated in a `LogicalPlan` (see the module docs): the GROUP BY and aggregate
/// expressions of a DataFusion `Aggregate` over `input`, a table keyed by `key`. The result
/// is a table keyed by the GROUP BY columns: the `Aggregate`'s columns (the aggregates
/// nullable: a delete carries only its key), then [`DELETED`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableAggregateNode {
    pub input: LogicalPlan,
    /// The input table's key columns.
    pub key: Vec<String>,
    pub group: Vec<Expr>,
    pub aggregates: Vec<Expr>,
    pub schema: DFSchemaRef,
}

impl TableAggregateNode {
    /// The node over `input` (a table keyed by `key`), typed as DataFusion types the
    /// `Aggregate`.
    pub fn new(
        input: LogicalPlan,
        key: Vec<String>,
        group: Vec<Expr>,
        aggregates: Vec<Expr>,
    ) -> Result<TableAggregateNode> {
        let aggregate = Aggregate::try_new(Arc::new(input.clone()), group, aggregates)?;
        let groups = aggregate.group_expr.len();
        let mut fields = Vec::with_capacity(aggregate.schema.fields().len() + 1);
        for (i, (q, f)) in aggregate.schema.iter().enumerate() {
            let f = if i < groups {
                f.clone()
            } else {
                Arc::new(f.as_ref().clone().with_nullable(true))
            };
            fields.push((q.cloned(), f));
        }
        fields.push((
            None,
            Arc::new(Field::new(DELETED, DataType::Boolean, false)),
        ));
        let schema = Arc::new(DFSchema::new_with_metadata(fields, Default::default())?);
        Ok(TableAggregateNode {
            input,
            key,
            group: aggregate.group_expr,
            aggregates: aggregate.aggr_expr,
            schema,
        })
    }

    /// The DataFusion `Aggregate` the node computes, over its input.
    pub fn aggregate(&self) -> Result<Aggregate> {
        Ok(Aggregate::try_new(
            Arc::new(self.input.clone()),
            self.group.clone(),
            self.aggregates.clone(),
        )?)
    }
}

impl PartialOrd for TableAggregateNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        self.key.partial_cmp(&other.key)
    }
}

impl UserDefinedLogicalNodeCore for TableAggregateNode {
    fn name(&self) -> &str {
        "TableAggregate"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    /// The GROUP BY expressions, then the aggregates (so DataFusion's analyzer types them).
    fn expressions(&self) -> Vec<Expr> {
        self.group.iter().chain(&self.aggregates).cloned().collect()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "TableAggregate: key=[{}] groupBy=[{}] aggr=[{}]",
            self.key.join(", "),
            self.group
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            self.aggregates
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    fn with_exprs_and_inputs(
        &self,
        mut exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> datafusion::error::Result<Self> {
        let input = inputs.pop().ok_or_else(|| {
            datafusion::error::DataFusionError::Internal("a table aggregate needs an input".into())
        })?;
        let aggregates = exprs.split_off(self.group.len().min(exprs.len()));
        TableAggregateNode::new(input, self.key.clone(), exprs, aggregates)
            .map_err(|e| datafusion::error::DataFusionError::Plan(e.to_string()))
    }
}

/// Refuses aggregate calls that cannot follow a table (see the module docs).
pub(crate) fn check_retractable(calls: &[AggregateCall]) -> Result<()> {
    for call in calls {
        let name = call.function.fun().name();
        if call.function.is_distinct() || !RETRACTABLE.contains(&name) {
            let what = if call.function.is_distinct() {
                format!("{}(DISTINCT …)", name.to_uppercase())
            } else {
                name.to_uppercase()
            };
            return Err(EngineError::plan(format!(
                "{what} cannot aggregate a table: a table's rows change, and only functions \
                 that can take a row back exactly follow them (COUNT, SUM, AVG, VAR, STDDEV). \
                 To aggregate every change instead, aggregate the table's changelog as a stream \
                 (a STREAM declared over the table's topic, or Table::to_stream in the DSL)"
            )));
        }
        if !call
            .function
            .create_sliding_accumulator()?
            .supports_retract_batch()
        {
            return Err(EngineError::plan(format!(
                "{} cannot take rows back for its argument types, so it cannot aggregate a table",
                name.to_uppercase()
            )));
        }
    }
    Ok(())
}

fn sort_fields(schema: &Schema) -> Vec<SortField> {
    schema
        .fields()
        .iter()
        .map(|f| SortField::new(f.data_type().clone()))
        .collect()
}

/// The schema of [`Regroup`]'s output: its input's, with [`DELETED`] turned into [`RETRACT`]
/// (where it was, so expressions planned over the input read the same columns).
pub(crate) fn regroup_schema(input: &Schema) -> (SchemaRef, Option<usize>) {
    let deleted = input.index_of(DELETED).ok();
    let retract = Arc::new(Field::new(RETRACT, DataType::Boolean, false));
    let mut fields: Vec<_> = input.fields().iter().cloned().collect();
    match deleted {
        Some(i) => fields[i] = retract,
        None => fields.push(retract),
    }
    (
        Arc::new(Schema::new_with_metadata(fields, input.metadata().clone())),
        deleted,
    )
}

/// What [`Regroup`] is made of.
#[derive(Debug, Clone)]
pub(crate) struct RegroupSpec {
    pub name: String,
    /// The table's key, over the input.
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    pub input: SchemaRef,
}

/// Turns a table's changelog into additions and retractions (see the module docs).
pub struct Regroup {
    spec: RegroupSpec,
    schema: SchemaRef,
    /// Where [`DELETED`] is in the input (and [`RETRACT`] in the output), if it is.
    deleted: Option<usize>,
    /// The input's columns but [`DELETED`].
    values: Vec<usize>,
    key_rows: RowConverter,
    value_rows: RowConverter,
    table: HashMap<Box<[u8]>, OwnedRow>,
    metrics: OperatorMetrics,
}

impl fmt::Debug for Regroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Regroup")
            .field("name", &self.spec.name)
            .field("keys", &self.table.len())
            .finish()
    }
}

impl Regroup {
    pub(crate) fn new(spec: RegroupSpec) -> Result<Regroup> {
        let (schema, deleted) = regroup_schema(&spec.input);
        let values: Vec<usize> = (0..spec.input.fields().len())
            .filter(|&i| Some(i) != deleted)
            .collect();
        let value_schema = spec.input.project(&values)?;
        let key_types = spec
            .keys
            .iter()
            .map(|k| k.data_type(&spec.input).map(SortField::new))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        Ok(Regroup {
            key_rows: RowConverter::new(key_types)?,
            value_rows: RowConverter::new(sort_fields(&value_schema))?,
            schema,
            deleted,
            values,
            table: HashMap::new(),
            metrics: OperatorMetrics::default(),
            spec,
        })
    }

    /// Output rows: `columns` (the input's but [`DELETED`]) with [`RETRACT`] set to `retract`.
    fn output(&self, mut columns: Vec<ArrayRef>, retract: bool) -> Result<RecordBatch> {
        let n = columns.first().map_or(0, |c| c.len());
        let flag: ArrayRef = Arc::new(BooleanArray::from(vec![retract; n]));
        match self.deleted {
            Some(i) => columns.insert(i, flag),
            None => columns.push(flag),
        }
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

fn regroup_state_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Binary, false),
        Field::new("row", DataType::Binary, false),
    ]))
}

impl Operator for Regroup {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn state_follows_watermark(&self) -> bool {
        false
    }

    fn process(&mut self, batch: &RecordBatch, _watermark: i64, out: &mut Emit) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        self.metrics.rows_in += n as u64;
        let key_columns = self
            .spec
            .keys
            .iter()
            .map(|k| k.evaluate(batch).and_then(|v| v.into_array(n)))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let keys = self.key_rows.convert_columns(&key_columns)?;
        let columns: Vec<ArrayRef> = self
            .values
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        let rows = self.value_rows.convert_columns(&columns)?;
        let deleted = self.deleted.map(|i| batch.column(i).as_boolean().clone());
        let mut retracted: Vec<OwnedRow> = Vec::new();
        let mut added: Vec<u32> = Vec::new();
        for i in 0..n {
            // A row without a key is in no table (as a keyed topic's record without a key).
            if key_columns.iter().any(|k| k.is_null(i)) {
                continue;
            }
            let key = keys.row(i);
            let gone = deleted
                .as_ref()
                .is_some_and(|d| d.is_valid(i) && d.value(i));
            let row = rows.row(i);
            let old = if gone {
                self.table.remove(key.as_ref())
            } else {
                match self.table.get_mut(key.as_ref()) {
                    // The same row again changes nothing.
                    Some(old) if old.row() == row => continue,
                    Some(old) => Some(std::mem::replace(old, row.owned())),
                    None => {
                        self.table.insert(key.as_ref().into(), row.owned());
                        None
                    }
                }
            };
            retracted.extend(old);
            if !gone {
                added.push(i as u32);
            }
        }
        let mut batches = Vec::with_capacity(2);
        if !retracted.is_empty() {
            let columns = self
                .value_rows
                .convert_rows(retracted.iter().map(|r| r.row()))?;
            batches.push(self.output(columns, true)?);
        }
        if !added.is_empty() {
            let idx = arrow::array::UInt32Array::from(added);
            let columns = columns
                .iter()
                .map(|c| take(c.as_ref(), &idx, None))
                .collect::<Result<Vec<_>, _>>()?;
            batches.push(self.output(columns, false)?);
        }
        // One batch: the aggregate sees a moved row's retraction and addition together, so a
        // group it leaves and rejoins emits no delete in between.
        if !batches.is_empty() {
            let batch = arrow::compute::concat_batches(&self.schema, &batches)?;
            self.metrics.rows_out += batch.num_rows() as u64;
            out.batches.push(batch);
        }
        self.metrics.groups = self.table.len() as u64;
        Ok(())
    }

    fn metrics(&self) -> OperatorMetrics {
        self.metrics
    }

    fn state_bytes(&self) -> usize {
        self.table
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().len())
            .sum()
    }

    fn snapshot(&mut self) -> Result<Option<RecordBatch>> {
        let keys = BinaryArray::from_iter_values(self.table.keys());
        let rows = BinaryArray::from_iter_values(self.table.values().map(|r| r.as_ref()));
        Ok(Some(RecordBatch::try_new(
            regroup_state_schema(),
            vec![Arc::new(keys), Arc::new(rows)],
        )?))
    }

    fn restore(&mut self, state: &RecordBatch) -> Result<()> {
        if state.num_columns() != 2 {
            return Err(EngineError::Checkpoint(format!(
                "the state of '{}' has {} columns, not 2",
                self.spec.name,
                state.num_columns()
            )));
        }
        let keys = state.column(0).as_binary::<i32>();
        let rows = state.column(1).as_binary::<i32>();
        let parser = self.value_rows.parser();
        for i in 0..state.num_rows() {
            self.table
                .insert(keys.value(i).into(), parser.parse(rows.value(i)).owned());
        }
        self.metrics.groups = self.table.len() as u64;
        Ok(())
    }

    fn state_keys(&self, state: &RecordBatch) -> Result<Vec<ArrayRef>> {
        row_keys(&self.key_rows, state, 0)
    }

    fn fresh(&self) -> Result<Box<dyn Operator>> {
        Ok(Box::new(Regroup::new(self.spec.clone())?))
    }

    fn partition_keys(&self) -> Option<Vec<Arc<dyn PhysicalExpr>>> {
        Some(self.spec.keys.clone())
    }
}

/// One group of a [`TableAggregate`]: an accumulator per call, and its rows.
struct Group {
    accumulators: Vec<Box<dyn Accumulator>>,
    rows: i64,
}

/// The aggregation of a table's additions and retractions (see the module docs).
pub struct TableAggregate {
    /// The GROUP BY keys and calls, over [`Regroup`]'s output; `spec.schema` is the output's.
    spec: AggregateSpec,
    /// Where [`RETRACT`] is in the input.
    retract: usize,
    /// `None` without GROUP BY keys (one group).
    key_rows: Option<RowConverter>,
    /// Each call's state field types (of its retractable accumulator).
    state_types: Vec<Vec<DataType>>,
    groups: HashMap<Box<[u8]>, Group>,
    metrics: OperatorMetrics,
}

impl fmt::Debug for TableAggregate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableAggregate")
            .field("name", &self.spec.name)
            .field("groups", &self.groups.len())
            .finish()
    }
}

impl TableAggregate {
    pub(crate) fn new(spec: AggregateSpec, retract: usize) -> Result<TableAggregate> {
        check_retractable(&spec.calls)?;
        let key_rows = if spec.keys.is_empty() {
            None
        } else {
            Some(RowConverter::new(sort_fields(&spec.key_schema))?)
        };
        let mut state_types = Vec::with_capacity(spec.calls.len());
        for call in &spec.calls {
            let state = call.function.create_sliding_accumulator()?.state()?;
            state_types.push(state.iter().map(ScalarValue::data_type).collect());
        }
        Ok(TableAggregate {
            spec,
            retract,
            key_rows,
            state_types,
            groups: HashMap::new(),
            metrics: OperatorMetrics::default(),
        })
    }

    fn new_group(&self) -> Result<Group> {
        Ok(Group {
            accumulators: self
                .spec
                .calls
                .iter()
                .map(|c| c.function.create_sliding_accumulator())
                .collect::<datafusion::error::Result<_>>()?,
            rows: 0,
        })
    }

    fn state_schema(&self) -> SchemaRef {
        let mut fields = vec![
            Field::new("__key", DataType::Binary, false),
            Field::new("__rows", DataType::Int64, false),
        ];
        for (i, types) in self.state_types.iter().enumerate() {
            for (j, t) in types.iter().enumerate() {
                fields.push(Field::new(format!("__{i}_{j}"), t.clone(), true));
            }
        }
        Arc::new(Schema::new(fields))
    }
}

/// A group's rows in one batch: its key, its first row, the rows added and retracted.
type Touched = (Box<[u8]>, u32, Vec<u32>, Vec<u32>);

/// The rows `rows` of `args` that pass `filter`.
fn pick(args: &[ArrayRef], filter: Option<&BooleanArray>, rows: &[u32]) -> Result<Vec<ArrayRef>> {
    let idx = arrow::array::UInt32Array::from(rows.to_vec());
    let mut values = args
        .iter()
        .map(|a| take(a.as_ref(), &idx, None))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(filter) = filter {
        let mask = take(filter, &idx, None)?;
        let mask = mask.as_boolean();
        values = values
            .iter()
            .map(|v| arrow::compute::filter(v.as_ref(), mask))
            .collect::<Result<Vec<_>, _>>()?;
    }
    Ok(values)
}

impl Operator for TableAggregate {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn schema(&self) -> SchemaRef {
        self.spec.schema.clone()
    }

    fn state_follows_watermark(&self) -> bool {
        false
    }

    fn process(&mut self, batch: &RecordBatch, _watermark: i64, out: &mut Emit) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        self.metrics.rows_in += n as u64;
        let inputs = self.spec.inputs(batch)?;
        let retract = batch.column(self.retract).as_boolean();
        let keys = self
            .key_rows
            .as_ref()
            .map(|c| c.convert_columns(&inputs.keys))
            .transpose()?;
        // Rows by group, in order of first appearance.
        let mut order: Vec<Touched> = Vec::new();
        let mut at: HashMap<Box<[u8]>, usize> = HashMap::new();
        for i in 0..n {
            // Looked up by slice: a key is copied only for a group new to this batch.
            let key: &[u8] = keys.as_ref().map_or(&[], |k| k.row(i).data());
            let slot = match at.get(key) {
                Some(&s) => s,
                None => {
                    let key: Box<[u8]> = key.into();
                    at.insert(key.clone(), order.len());
                    order.push((key, i as u32, Vec::new(), Vec::new()));
                    order.len() - 1
                }
            };
            if retract.value(i) {
                order[slot].3.push(i as u32);
            } else {
                order[slot].2.push(i as u32);
            }
        }
        let calls = self.spec.calls.len();
        let mut firsts = Vec::with_capacity(order.len());
        let mut values: Vec<Vec<ScalarValue>> = vec![Vec::with_capacity(order.len()); calls];
        let mut deletes = Vec::with_capacity(order.len());
        for (key, first, added, retracted) in order {
            let existed = self.groups.contains_key(&key);
            let mut group = match self.groups.remove(&key) {
                Some(g) => g,
                None => self.new_group()?,
            };
            for (c, acc) in group.accumulators.iter_mut().enumerate() {
                let filter = inputs.filters[c].as_ref();
                if !added.is_empty() {
                    acc.update_batch(&pick(&inputs.args[c], filter, &added)?)?;
                }
                if !retracted.is_empty() {
                    acc.retract_batch(&pick(&inputs.args[c], filter, &retracted)?)?;
                }
            }
            group.rows += added.len() as i64 - retracted.len() as i64;
            if group.rows > 0 {
                for (c, acc) in group.accumulators.iter_mut().enumerate() {
                    values[c].push(acc.evaluate()?);
                }
                self.groups.insert(key, group);
                firsts.push(first);
                deletes.push(false);
            } else if existed {
                // The group is gone from the result: a delete, carrying only its key.
                for (c, call) in self.spec.calls.iter().enumerate() {
                    values[c].push(ScalarValue::try_from(call.function.field().data_type())?);
                }
                firsts.push(first);
                deletes.push(true);
            }
        }
        self.metrics.groups = self.groups.len() as u64;
        if firsts.is_empty() {
            return Ok(());
        }
        let idx = arrow::array::UInt32Array::from(firsts);
        let mut columns = inputs
            .keys
            .iter()
            .map(|k| take(k.as_ref(), &idx, None))
            .collect::<Result<Vec<_>, _>>()?;
        for (values, call) in values.into_iter().zip(&self.spec.calls) {
            columns.push(to_array(values, call)?);
        }
        columns.push(Arc::new(BooleanArray::from(deletes)));
        let batch = RecordBatch::try_new(self.spec.schema.clone(), columns)?;
        self.metrics.rows_out += batch.num_rows() as u64;
        out.batches.push(batch);
        Ok(())
    }

    fn metrics(&self) -> OperatorMetrics {
        self.metrics
    }

    fn state_bytes(&self) -> usize {
        self.groups
            .iter()
            .map(|(k, g)| k.len() + g.accumulators.iter().map(|a| a.size()).sum::<usize>())
            .sum()
    }

    fn snapshot(&mut self) -> Result<Option<RecordBatch>> {
        let schema = self.state_schema();
        let keys = BinaryArray::from_iter_values(self.groups.keys());
        let rows = Int64Array::from_iter_values(self.groups.values().map(|g| g.rows));
        let mut columns: Vec<ArrayRef> = vec![Arc::new(keys), Arc::new(rows)];
        let mut states: Vec<Vec<ScalarValue>> = self
            .state_types
            .iter()
            .flatten()
            .map(|_| Vec::with_capacity(self.groups.len()))
            .collect();
        for group in self.groups.values_mut() {
            let mut field = 0;
            for acc in &mut group.accumulators {
                for value in acc.state()? {
                    let Some(column) = states.get_mut(field) else {
                        return Err(EngineError::internal(
                            "an accumulator's state has more fields than it had",
                        ));
                    };
                    column.push(value);
                    field += 1;
                }
            }
        }
        for (values, t) in states.into_iter().zip(self.state_types.iter().flatten()) {
            columns.push(if values.is_empty() {
                arrow::array::new_empty_array(t)
            } else {
                ScalarValue::iter_to_array(values)?
            });
        }
        Ok(Some(RecordBatch::try_new(schema, columns)?))
    }

    fn restore(&mut self, state: &RecordBatch) -> Result<()> {
        let fields: usize = self.state_types.iter().map(Vec::len).sum();
        if state.num_columns() != 2 + fields {
            return Err(EngineError::Checkpoint(format!(
                "the state of '{}' has {} columns, not {}",
                self.spec.name,
                state.num_columns(),
                2 + fields
            )));
        }
        let keys = state.column(0).as_binary::<i32>();
        let rows = state
            .column(1)
            .as_primitive::<arrow::datatypes::Int64Type>();
        for i in 0..state.num_rows() {
            let mut group = self.new_group()?;
            group.rows = rows.value(i);
            let mut at = 2;
            for (acc, types) in group.accumulators.iter_mut().zip(&self.state_types) {
                let one: Vec<ArrayRef> = (at..at + types.len())
                    .map(|c| state.column(c).slice(i, 1))
                    .collect();
                acc.merge_batch(&one)?;
                at += types.len();
            }
            self.groups.insert(keys.value(i).into(), group);
        }
        self.metrics.groups = self.groups.len() as u64;
        Ok(())
    }

    fn state_keys(&self, state: &RecordBatch) -> Result<Vec<ArrayRef>> {
        match &self.key_rows {
            Some(c) => row_keys(c, state, 0),
            None => Ok(Vec::new()),
        }
    }

    fn fresh(&self) -> Result<Box<dyn Operator>> {
        Ok(Box::new(TableAggregate::new(
            self.spec.clone(),
            self.retract,
        )?))
    }

    fn partition_keys(&self) -> Option<Vec<Arc<dyn PhysicalExpr>>> {
        Some(self.spec.keys.clone())
    }
}
