//! Stream–table joins in event time.
//!
//! A stream record at event time `t` meets the table as it was at `t`: the latest version of
//! its key's row written at or before `t` (the table's changelog is kept per key as versions,
//! as Kafka Streams' versioned stores keep it). So the result does not depend on how the two
//! inputs' records interleave on arrival: it is the as-of join a batch query over the whole
//! input gives.
//!
//! - **Time**: a stream record waits until the watermark (the minimum over both inputs) passes
//!   its time, so every table version it may need has arrived; then it is joined and emitted.
//!   A record that arrives with its time already more than the grace period behind the
//!   watermark is late (counted, and sent to the late-data topic when there is one): the table
//!   versions it needs are no longer kept. With every table partition idle, the table does not
//!   hold the watermark back (the source's idle timeout).
//! - **Versions**: per key, the versions newer than `watermark - grace`, and the latest one at
//!   or before it (pruned when the key is next written). A tombstone is a version that says
//!   the key has no row. A table without event time (an aggregate's: its rows carry none) is
//!   not versioned: it keeps each key's latest row, and a stream record meets the row its key
//!   has when the watermark releases the record, as Kafka Streams' joins with a non-versioned
//!   store do. Its updates up to the watermark have arrived by then, so the record sees every
//!   update of an earlier time, and may see some of a later one.
//! - **Keys**: both inputs are re-keyed through the exchange by the join key (the table's key
//!   columns, and the stream expressions paired with them), so a key's rows meet in one task.
//!   [`JoinTag`] runs first, in the source tasks: it runs each side's operators and puts the
//!   side and the evaluated key columns in front of the side's columns. Its batches have one of
//!   two layouts (one per side); the exchange reads only the key columns, which both share.
//! - **Kinds**: inner (a stream record without a table row is dropped) and left (it is emitted
//!   with the table's columns null). A filter on top of the key equality is evaluated on the
//!   joined row; a left join keeps the stream record, with nulls, when it fails.
//! - **State** (for checkpoints): one row per table version and per waiting stream record,
//!   with the key and the row in Arrow's row format.

use datafusion::common::HashMap;
use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Int64Array, RecordBatch, UInt8Array,
    UInt32Array,
};
use arrow::compute::{cast, filter_record_batch, take};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimestampMillisecondType};
use arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::common::{DFSchema, DFSchemaRef};
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, UserDefinedLogicalNodeCore};
use datafusion::physical_expr::PhysicalExpr;

use crate::error::{EngineError, Result};
use crate::format::{DELETED, ROWTIME};
use crate::operator::{Emit, LateRows, Operator, OperatorMetrics};

/// How a stream record without a matching table row is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd)]
pub enum JoinKind {
    /// It is dropped.
    Inner,
    /// It is emitted with the table's (the right side's) columns null.
    Left,
    /// Stream–stream joins only: unmatched records of either side are emitted, the other
    /// side's columns null.
    Full,
}

/// How far apart in event time two streams' records may be to join (Kafka Streams'
/// `JoinWindows`, ksqlDB's `WITHIN (before, after)`): a left record at `t` meets the right
/// records at `t - before_ms ..= t + after_ms`. An `i64` is the same bound on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd)]
pub struct JoinWindow {
    pub before_ms: i64,
    pub after_ms: i64,
}

impl JoinWindow {
    /// Right records at most `before_ms` before a left record's time and `after_ms` after it.
    pub fn new(before_ms: i64, after_ms: i64) -> JoinWindow {
        JoinWindow {
            before_ms,
            after_ms,
        }
    }
}

impl From<i64> for JoinWindow {
    fn from(ms: i64) -> JoinWindow {
        JoinWindow::new(ms, ms)
    }
}

impl fmt::Display for JoinWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.before_ms == self.after_ms {
            write!(f, "within {} ms", self.before_ms)
        } else {
            write!(
                f,
                "within {} ms before and {} ms after",
                self.before_ms, self.after_ms
            )
        }
    }
}

/// Two streams joined within a time bound in a `LogicalPlan` (see [`crate::window_join`]),
/// an extension node for the same reasons as [`StreamJoinNode`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WindowJoinNode {
    pub name: String,
    pub left: LogicalPlan,
    pub right: LogicalPlan,
    pub left_keys: Vec<Expr>,
    pub right_keys: Vec<Expr>,
    pub filter: Option<Expr>,
    pub kind: JoinKind,
    pub window: JoinWindow,
    pub grace_ms: i64,
    pub schema: DFSchemaRef,
}

impl WindowJoinNode {
    /// The node as a plan: the left's columns, then the right's (nullable on the side that
    /// may be missing).
    #[allow(clippy::too_many_arguments)]
    pub fn plan(
        name: impl Into<String>,
        left: LogicalPlan,
        right: LogicalPlan,
        left_keys: Vec<Expr>,
        right_keys: Vec<Expr>,
        filter: Option<Expr>,
        kind: JoinKind,
        window: impl Into<JoinWindow>,
        grace_ms: i64,
    ) -> Result<LogicalPlan> {
        let window = window.into();
        if left_keys.len() != right_keys.len() || left_keys.is_empty() {
            return Err(EngineError::config(format!(
                "a stream–stream join pairs each key expression of the left with one of the \
                 right; {} and {} given",
                left_keys.len(),
                right_keys.len()
            )));
        }
        if window.before_ms < 0 || window.after_ms < 0 || grace_ms < 0 {
            return Err(EngineError::config(
                "a join's time bound and grace period cannot be negative",
            ));
        }
        let nullable = |f: &arrow::datatypes::FieldRef, yes: bool| {
            if yes {
                Arc::new(f.as_ref().clone().with_nullable(true))
            } else {
                f.clone()
            }
        };
        let mut fields = Vec::new();
        for (q, f) in left.schema().iter() {
            fields.push((q.cloned(), nullable(f, kind == JoinKind::Full)));
        }
        for (q, f) in right.schema().iter() {
            fields.push((q.cloned(), nullable(f, kind != JoinKind::Inner)));
        }
        let schema = Arc::new(DFSchema::new_with_metadata(fields, Default::default())?);
        Ok(LogicalPlan::Extension(Extension {
            node: Arc::new(WindowJoinNode {
                name: name.into(),
                left,
                right,
                left_keys,
                right_keys,
                filter,
                kind,
                window,
                grace_ms,
                schema,
            }),
        }))
    }
}

impl PartialOrd for WindowJoinNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        self.name.partial_cmp(&other.name)
    }
}

impl UserDefinedLogicalNodeCore for WindowJoinNode {
    fn name(&self) -> &str {
        "StreamStreamJoin"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.left, &self.right]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        let mut out = self.left_keys.clone();
        out.extend(self.right_keys.clone());
        out.extend(self.filter.clone());
        out
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "StreamStreamJoin: {} {:?} {}",
            self.name, self.kind, self.window
        )
    }

    fn with_exprs_and_inputs(
        &self,
        mut exprs: Vec<Expr>,
        inputs: Vec<LogicalPlan>,
    ) -> datafusion::error::Result<Self> {
        let internal = |m: &str| datafusion::error::DataFusionError::Internal(m.into());
        let (left, right) = two_inputs(inputs)?;
        let filter = if self.filter.is_some() {
            exprs.pop()
        } else {
            None
        };
        let n = self.left_keys.len();
        if exprs.len() != 2 * n {
            return Err(internal("a join's keys changed in number"));
        }
        let right_keys = exprs.split_off(n);
        Ok(WindowJoinNode {
            left,
            right,
            left_keys: exprs,
            right_keys,
            filter,
            ..self.clone()
        })
    }
}

/// Two tables joined on their keys in a `LogicalPlan` (see [`crate::table_join`]): the
/// result is a table (it has [`DELETED`]) keyed by the left's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableJoinNode {
    pub name: String,
    pub left: LogicalPlan,
    pub right: LogicalPlan,
    /// Each table's key columns, paired in order.
    pub left_key: Vec<String>,
    pub right_key: Vec<String>,
    pub kind: JoinKind,
    pub schema: DFSchemaRef,
}

impl TableJoinNode {
    /// The node as a plan: the left's columns, the right's (without [`DELETED`]), then
    /// [`DELETED`]. Every column but the key may be null: a delete carries only its key.
    pub fn plan(
        name: impl Into<String>,
        left: LogicalPlan,
        right: LogicalPlan,
        left_key: Vec<String>,
        right_key: Vec<String>,
        kind: JoinKind,
    ) -> Result<LogicalPlan> {
        if left_key.len() != right_key.len() || left_key.is_empty() {
            return Err(EngineError::config(format!(
                "a table–table join pairs the tables' key columns; the left has {} ({}), the \
                 right {} ({})",
                left_key.len(),
                left_key.join(", "),
                right_key.len(),
                right_key.join(", ")
            )));
        }
        let schema = table_join_schema(&left, &right)?;
        Ok(LogicalPlan::Extension(Extension {
            node: Arc::new(TableJoinNode {
                name: name.into(),
                left,
                right,
                left_key,
                right_key,
                kind,
                schema,
            }),
        }))
    }
}

/// The layout of a join of two tables: the left's columns, the right's (without
/// [`DELETED`]), then [`DELETED`]. Every column but the key may be null: a delete carries only
/// its key.
pub(crate) fn table_join_schema(left: &LogicalPlan, right: &LogicalPlan) -> Result<DFSchemaRef> {
    let mut fields = Vec::new();
    for plan in [left, right] {
        for (q, f) in plan.schema().iter() {
            if f.name() == DELETED {
                continue;
            }
            fields.push((q.cloned(), Arc::new(f.as_ref().clone().with_nullable(true))));
        }
    }
    fields.push((
        None,
        Arc::new(Field::new(DELETED, DataType::Boolean, false)),
    ));
    Ok(Arc::new(DFSchema::new_with_metadata(
        fields,
        Default::default(),
    )?))
}

/// A join node's two inputs, back from DataFusion's rewrites.
pub(crate) fn two_inputs(
    mut inputs: Vec<LogicalPlan>,
) -> datafusion::error::Result<(LogicalPlan, LogicalPlan)> {
    let internal =
        || datafusion::error::DataFusionError::Internal("a join needs two inputs".into());
    let right = inputs.pop().ok_or_else(internal)?;
    let left = inputs.pop().ok_or_else(internal)?;
    Ok((left, right))
}

impl PartialOrd for TableJoinNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        self.name.partial_cmp(&other.name)
    }
}

impl UserDefinedLogicalNodeCore for TableJoinNode {
    fn name(&self) -> &str {
        "TableTableJoin"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.left, &self.right]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "TableTableJoin: {} {:?}", self.name, self.kind)
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        inputs: Vec<LogicalPlan>,
    ) -> datafusion::error::Result<Self> {
        let (left, right) = two_inputs(inputs)?;
        Ok(TableJoinNode {
            left,
            right,
            ..self.clone()
        })
    }
}

/// The key columns of [`JoinTag`]'s layouts, which the exchange hashes.
pub(crate) fn key_columns(keys: usize) -> Vec<Arc<dyn PhysicalExpr>> {
    (0..keys)
        .map(|i| {
            Arc::new(datafusion::physical_expr::expressions::Column::new(
                &format!("__key{i}"),
                i + 1,
            )) as Arc<dyn PhysicalExpr>
        })
        .collect()
}

/// A stream joined with a table in a `LogicalPlan` (an extension node, so DataFusion's
/// optimizer neither prunes the columns the join needs, its event time and the table's
/// [`DELETED`], nor pushes filters on the joined rows into the table's changelog).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamJoinNode {
    pub name: String,
    pub stream: LogicalPlan,
    pub table: LogicalPlan,
    /// Stream expressions, one per table key column, in the table's key order.
    pub keys: Vec<Expr>,
    /// The table's key columns.
    pub table_key: Vec<String>,
    pub filter: Option<Expr>,
    pub kind: JoinKind,
    pub grace_ms: i64,
    pub schema: DFSchemaRef,
}

impl StreamJoinNode {
    /// The node as a plan: the stream's columns, then the table's (without [`DELETED`]),
    /// nullable for a left join.
    #[allow(clippy::too_many_arguments)]
    pub fn plan(
        name: impl Into<String>,
        stream: LogicalPlan,
        table: LogicalPlan,
        keys: Vec<Expr>,
        table_key: Vec<String>,
        filter: Option<Expr>,
        kind: JoinKind,
        grace_ms: i64,
    ) -> Result<LogicalPlan> {
        if kind == JoinKind::Full {
            return Err(EngineError::config(
                "a stream–table join is inner or left (a full outer join needs two streams or \
                 two tables)",
            ));
        }
        if keys.len() != table_key.len() || keys.is_empty() {
            return Err(EngineError::config(format!(
                "a stream–table join pairs one stream expression with each of the table's key \
                 columns ({}); {} given",
                table_key.join(", "),
                keys.len()
            )));
        }
        let schema = Arc::new(joined_schema(stream.schema(), table.schema(), kind)?);
        Ok(LogicalPlan::Extension(Extension {
            node: Arc::new(StreamJoinNode {
                name: name.into(),
                stream,
                table,
                keys,
                table_key,
                filter,
                kind,
                grace_ms,
                schema,
            }),
        }))
    }
}

/// The stream's qualified fields, then the table's but [`DELETED`] (nullable for a left join).
fn joined_schema(stream: &DFSchemaRef, table: &DFSchemaRef, kind: JoinKind) -> Result<DFSchema> {
    let mut fields = Vec::new();
    for (q, f) in stream.iter() {
        fields.push((q.cloned(), f.clone()));
    }
    for (q, f) in table.iter() {
        if f.name() == DELETED {
            continue;
        }
        let f = if kind == JoinKind::Left {
            Arc::new(f.as_ref().clone().with_nullable(true))
        } else {
            f.clone()
        };
        fields.push((q.cloned(), f));
    }
    Ok(DFSchema::new_with_metadata(fields, Default::default())?)
}

impl PartialOrd for StreamJoinNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        self.name.partial_cmp(&other.name)
    }
}

impl UserDefinedLogicalNodeCore for StreamJoinNode {
    fn name(&self) -> &str {
        "StreamTableJoin"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.stream, &self.table]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        let mut out = self.keys.clone();
        out.extend(self.filter.clone());
        out
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "StreamTableJoin: {} {:?} on [{}] = [{}]",
            self.name,
            self.kind,
            self.keys
                .iter()
                .map(|k| k.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            self.table_key.join(", ")
        )
    }

    fn with_exprs_and_inputs(
        &self,
        mut exprs: Vec<Expr>,
        inputs: Vec<LogicalPlan>,
    ) -> datafusion::error::Result<Self> {
        let (stream, table) = two_inputs(inputs)?;
        let filter = if self.filter.is_some() {
            exprs.pop()
        } else {
            None
        };
        Ok(StreamJoinNode {
            stream,
            table,
            keys: exprs,
            filter,
            ..self.clone()
        })
    }
}

/// The tag of the stream side in [`JoinTag`]'s batches.
pub(crate) const STREAM: u8 = 0;
/// The tag of the table side.
pub(crate) const TABLE: u8 = 1;

/// One side of a join before the exchange: the source it reads, its (stateless) operators, and
/// its key expressions over what they emit.
#[derive(Debug)]
pub(crate) struct Side {
    pub input: Option<usize>,
    pub operators: Vec<Box<dyn Operator>>,
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    /// The types its keys are cast to before they are encoded (with
    /// [`JoinTag::encode_keys`]).
    pub key_types: Vec<DataType>,
    /// The tagged layout: the side (UInt8), the keys (in `key_types`), the side's columns.
    pub schema: SchemaRef,
}

/// Runs both sides of a join and tags their batches (see the module docs).
#[derive(Debug)]
pub struct JoinTag {
    pub(crate) name: String,
    pub(crate) sides: [Side; 2],
    pub(crate) key_types: Vec<DataType>,
    /// The keys as one binary column (`key_types` is `[Binary]`): each side's key columns in
    /// Arrow's row format, null when any of them is. Sides whose keys differ in number and
    /// types (a foreign-key join's) are partitioned by it.
    pub(crate) encode_keys: bool,
    pub(crate) metrics: OperatorMetrics,
}

/// Key columns as one binary column in Arrow's row format (for types `types`), null where any
/// is null: equal keys give equal bytes, so the exchange sends them to one task.
/// `n` rows; without key columns, every row has the same (empty) key.
pub(crate) fn encode_keys(columns: &[ArrayRef], types: &[DataType], n: usize) -> Result<ArrayRef> {
    if columns.is_empty() {
        return Ok(Arc::new(arrow::array::BinaryArray::from_iter_values(
            std::iter::repeat_n(&[] as &[u8], n),
        )));
    }
    let mut cast_columns = Vec::with_capacity(columns.len());
    for (c, t) in columns.iter().zip(types) {
        cast_columns.push(if c.data_type() == t {
            c.clone()
        } else {
            cast(c.as_ref(), t)?
        });
    }
    let converter = RowConverter::new(types.iter().map(|t| SortField::new(t.clone())).collect())?;
    let rows = converter.convert_columns(&cast_columns)?;
    Ok(Arc::new(
        (0..n)
            .map(|i| {
                (!cast_columns.iter().any(|c| c.is_null(i))).then(|| rows.row(i).as_ref().to_vec())
            })
            .collect::<arrow::array::BinaryArray>(),
    ))
}

/// The tagged layout of a side with `columns`.
pub(crate) fn tagged_schema(key_types: &[DataType], columns: &Schema) -> SchemaRef {
    let mut fields = vec![Field::new("__side", DataType::UInt8, false)];
    for (i, t) in key_types.iter().enumerate() {
        fields.push(Field::new(format!("__key{i}"), t.clone(), true));
    }
    fields.extend(columns.fields().iter().map(|f| f.as_ref().clone()));
    Arc::new(Schema::new(fields))
}

impl JoinTag {
    fn tag(&mut self, side: usize, batches: Vec<RecordBatch>, out: &mut Emit) -> Result<()> {
        let s = &self.sides[side];
        for b in batches {
            let n = b.num_rows();
            let mut columns: Vec<ArrayRef> = Vec::with_capacity(s.schema.fields().len());
            columns.push(Arc::new(UInt8Array::from_value(side as u8, n)));
            if self.encode_keys {
                let keys = s
                    .keys
                    .iter()
                    .map(|k| k.evaluate(&b).and_then(|v| v.into_array(n)))
                    .collect::<datafusion::error::Result<Vec<_>>>()?;
                columns.push(encode_keys(&keys, &s.key_types, n)?);
            } else {
                for (k, t) in s.keys.iter().zip(&self.key_types) {
                    let v = k.evaluate(&b)?.into_array(n)?;
                    columns.push(if v.data_type() == t {
                        v
                    } else {
                        cast(v.as_ref(), t)?
                    });
                }
            }
            columns.extend(b.columns().iter().cloned());
            self.metrics.rows_out += n as u64;
            out.batches
                .push(RecordBatch::try_new(s.schema.clone(), columns)?);
        }
        Ok(())
    }
}

impl Operator for JoinTag {
    fn name(&self) -> &str {
        &self.name
    }

    fn mixes_layouts(&self) -> bool {
        true
    }

    /// The stream side's layout (the table side's differs after the key columns).
    fn schema(&self) -> SchemaRef {
        self.sides[0].schema.clone()
    }

    fn state_follows_watermark(&self) -> bool {
        self.sides
            .iter()
            .flat_map(|b| &b.operators)
            .any(|o| o.state_follows_watermark())
    }

    fn process(&mut self, batch: &RecordBatch, watermark: i64, out: &mut Emit) -> Result<()> {
        self.process_input(0, batch, watermark, out)
    }

    fn process_input(
        &mut self,
        input: usize,
        batch: &RecordBatch,
        watermark: i64,
        out: &mut Emit,
    ) -> Result<()> {
        self.metrics.rows_in += batch.num_rows() as u64;
        for side in 0..2 {
            if self.sides[side].input.is_some_and(|i| i != input) {
                continue;
            }
            let mut outputs = Vec::new();
            crate::operator::run_input(
                &mut self.sides[side].operators,
                input,
                batch.clone(),
                watermark,
                &mut outputs,
                &mut out.late,
            )?;
            self.tag(side, outputs, out)?;
        }
        Ok(())
    }

    fn advance(&mut self, watermark: i64, out: &mut Emit) -> Result<()> {
        for side in 0..2 {
            let mut outputs = Vec::new();
            crate::operator::advance_chain(
                &mut self.sides[side].operators,
                watermark,
                &mut outputs,
                &mut out.late,
            )?;
            self.tag(side, outputs, out)?;
        }
        Ok(())
    }

    fn metrics(&self) -> OperatorMetrics {
        self.metrics
    }

    fn fresh(&self) -> Result<Box<dyn Operator>> {
        self.renamed(self.name.clone())
    }

    fn renamed(&self, name: String) -> Result<Box<dyn Operator>> {
        let side = |s: &Side| -> Result<Side> {
            Ok(Side {
                input: s.input,
                operators: s
                    .operators
                    .iter()
                    .map(|op| op.fresh())
                    .collect::<Result<Vec<_>>>()?,
                keys: s.keys.clone(),
                key_types: s.key_types.clone(),
                schema: s.schema.clone(),
            })
        };
        Ok(Box::new(JoinTag {
            name,
            sides: [side(&self.sides[0])?, side(&self.sides[1])?],
            key_types: self.key_types.clone(),
            encode_keys: self.encode_keys,
            metrics: OperatorMetrics::default(),
        }))
    }
}

/// One version of a key's table row: from `time` on, `row` (`None`: the key has no row).
#[derive(Debug, Clone)]
struct Version {
    time: i64,
    row: Option<OwnedRow>,
}

/// The join itself, after the exchange (see the module docs).
pub struct StreamTableJoin {
    name: String,
    kind: JoinKind,
    grace_ms: i64,
    keys: usize,
    /// The stream side's tagged layout, and where its event time is in it.
    stream_schema: SchemaRef,
    stream_time: usize,
    /// The table side's tagged layout, where [`DELETED`] is in it (if it has one), and how many
    /// of its columns (after the tag and keys) are output.
    table_schema: SchemaRef,
    /// `None`: the table has no event time (an aggregate's), so it is not versioned.
    table_time: Option<usize>,
    table_deleted: Option<usize>,
    table_out: usize,
    filter: Option<Arc<dyn PhysicalExpr>>,
    schema: SchemaRef,
    key_rows: RowConverter,
    /// The table's columns (after the tag and keys), as rows.
    table_rows: RowConverter,
    /// The stream's tagged rows, for waiting records in a snapshot.
    stream_rows: RowConverter,
    /// Versions by key (in the key converter's row format).
    versions: HashMap<Box<[u8]>, Vec<Version>>,
    /// Stream records waiting for the watermark, in the stream's tagged layout, each batch with
    /// its earliest event time (a watermark short of it passes the batch by unread).
    waiting: Vec<(i64, RecordBatch)>,
    watermark: i64,
    metrics: OperatorMetrics,
}

impl fmt::Debug for StreamTableJoin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamTableJoin")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("keys", &self.versions.len())
            .finish()
    }
}

/// What a [`StreamTableJoin`] is made of, from the planner.
#[derive(Debug, Clone)]
pub(crate) struct JoinSpec {
    pub name: String,
    pub kind: JoinKind,
    pub grace_ms: i64,
    pub keys: usize,
    pub stream_schema: SchemaRef,
    pub table_schema: SchemaRef,
    /// How many of the table's columns the output has (the rest: [`DELETED`], added by the
    /// planner when a projection had dropped it).
    pub table_out: usize,
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    pub schema: SchemaRef,
}

fn sort_fields(fields: &[arrow::datatypes::FieldRef]) -> Vec<SortField> {
    fields
        .iter()
        .map(|f| SortField::new(f.data_type().clone()))
        .collect()
}

impl StreamTableJoin {
    pub(crate) fn new(spec: JoinSpec) -> Result<StreamTableJoin> {
        let time_of = |schema: &Schema, side: &str| {
            schema.index_of(ROWTIME).map_err(|_| {
                EngineError::plan(format!(
                    "the {side} side of a join has no event time ({ROWTIME}); keep it in the \
                     {side}'s columns"
                ))
            })
        };
        let stream_time = time_of(&spec.stream_schema, "stream")?;
        // A table without event time (an aggregate's carries none) keeps one version per key,
        // its latest row.
        let table_time = spec.table_schema.index_of(ROWTIME).ok();
        let table_deleted = spec.table_schema.index_of(DELETED).ok();
        let key_fields: Vec<_> = spec.stream_schema.fields()[1..=spec.keys].to_vec();
        let table_fields: Vec<_> = spec.table_schema.fields()[1 + spec.keys..].to_vec();
        Ok(StreamTableJoin {
            name: spec.name,
            kind: spec.kind,
            grace_ms: spec.grace_ms.max(0),
            keys: spec.keys,
            stream_time,
            table_time,
            table_deleted,
            table_out: spec.table_out,
            filter: spec.filter,
            schema: spec.schema,
            key_rows: RowConverter::new(sort_fields(&key_fields))?,
            table_rows: RowConverter::new(sort_fields(&table_fields))?,
            stream_rows: RowConverter::new(sort_fields(spec.stream_schema.fields()))?,
            stream_schema: spec.stream_schema,
            table_schema: spec.table_schema,
            versions: HashMap::new(),
            waiting: Vec::new(),
            watermark: i64::MIN,
            metrics: OperatorMetrics::default(),
        })
    }

    fn spec(&self) -> JoinSpec {
        JoinSpec {
            name: self.name.clone(),
            kind: self.kind,
            grace_ms: self.grace_ms,
            keys: self.keys,
            stream_schema: self.stream_schema.clone(),
            table_schema: self.table_schema.clone(),
            table_out: self.table_out,
            filter: self.filter.clone(),
            schema: self.schema.clone(),
        }
    }

    /// The oldest event time whose table versions are still kept.
    fn horizon(&self) -> i64 {
        self.watermark.saturating_sub(self.grace_ms)
    }

    fn key_columns(&self, batch: &RecordBatch) -> Vec<ArrayRef> {
        batch.columns()[1..=self.keys].to_vec()
    }

    /// Adds a batch of table changes as versions.
    fn update_table(&mut self, batch: &RecordBatch) -> Result<()> {
        let n = batch.num_rows();
        let key_columns = self.key_columns(batch);
        let keys = self.key_rows.convert_columns(&key_columns)?;
        let values = self
            .table_rows
            .convert_columns(&batch.columns()[1 + self.keys..])?;
        let times = self
            .table_time
            .map(|t| batch.column(t).as_primitive::<TimestampMillisecondType>());
        let deleted = self
            .table_deleted
            .map(|i| batch.column(i).as_boolean().clone());
        let horizon = self.horizon();
        for i in 0..n {
            let key = keys.row(i);
            // A key that is null never matches (SQL's equality), so it is not kept.
            if key_columns.iter().any(|k| k.is_null(i)) {
                continue;
            }
            // Without a time, the version holds from the start: the latest row wins.
            let time = match times {
                Some(times) if times.is_valid(i) => times.value(i),
                _ => i64::MIN,
            };
            let gone = deleted
                .as_ref()
                .is_some_and(|d| d.is_valid(i) && d.value(i));
            let row = (!gone).then(|| values.row(i).owned());
            let versions = self.versions.entry(key.as_ref().into()).or_default();
            // Usually the newest; a version written out of order goes to its place in time, and
            // one at the same time as another replaces it (the later write wins).
            let at = versions.partition_point(|v| v.time <= time);
            if at > 0 && versions[at - 1].time == time {
                versions[at - 1].row = row;
            } else {
                versions.insert(at, Version { time, row });
            }
            prune(versions, horizon);
            if versions.is_empty() {
                self.versions.remove(key.as_ref());
            }
        }
        self.metrics.groups = self.versions.len() as u64;
        Ok(())
    }

    /// Joins stream records (tagged layout) with the table as of each one's time.
    fn join(&mut self, batch: &RecordBatch, out: &mut Emit) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let keys = self.key_rows.convert_columns(&self.key_columns(batch))?;
        let times = batch
            .column(self.stream_time)
            .as_primitive::<TimestampMillisecondType>();
        let mut found: Vec<u32> = Vec::new();
        let mut rows = Vec::new();
        for i in 0..n {
            let t = if times.is_valid(i) {
                times.value(i)
            } else {
                i64::MIN
            };
            let Some(versions) = self.versions.get(keys.row(i).as_ref()) else {
                continue;
            };
            let at = versions.partition_point(|v| v.time <= t);
            if at == 0 {
                continue;
            }
            if let Some(row) = &versions[at - 1].row {
                found.push(i as u32);
                rows.push(row.row());
            }
        }
        let table_columns = self.table_rows.convert_rows(rows)?;
        // Each stream row with its match (a null index: none).
        let mut stream_idx: Vec<u32> = Vec::with_capacity(n);
        let mut table_idx: Vec<Option<u32>> = Vec::with_capacity(n);
        let mut next = 0usize;
        for i in 0..n as u32 {
            if found.get(next) == Some(&i) {
                stream_idx.push(i);
                table_idx.push(Some(next as u32));
                next += 1;
            } else if self.kind != JoinKind::Inner {
                stream_idx.push(i);
                table_idx.push(None);
            }
        }
        let mut table_idx = UInt32Array::from(table_idx);
        let stream_idx = UInt32Array::from(stream_idx);
        let mut joined = self.assemble(batch, &stream_idx, &table_columns, &table_idx)?;
        if let Some(filter) = &self.filter
            && joined.num_rows() > 0
        {
            let holds = filter.evaluate(&joined)?.into_array(joined.num_rows())?;
            let holds = holds.as_boolean();
            let keep: BooleanArray = (0..holds.len())
                .map(|r| Some(holds.is_valid(r) && holds.value(r)))
                .collect();
            match self.kind {
                JoinKind::Inner => {
                    joined = filter_record_batch(&joined, &keep)?;
                }
                JoinKind::Left | JoinKind::Full => {
                    // A stream record whose match fails the filter keeps its row, unmatched.
                    if keep.false_count() > 0 {
                        table_idx = table_idx
                            .iter()
                            .zip(keep.iter())
                            .map(|(t, k)| if k == Some(true) { t } else { None })
                            .collect();
                        joined = self.assemble(batch, &stream_idx, &table_columns, &table_idx)?;
                    }
                }
            }
        }
        self.metrics.rows_out += joined.num_rows() as u64;
        if joined.num_rows() > 0 {
            out.batches.push(joined);
        }
        Ok(())
    }

    /// Output rows: the stream's columns at `stream_idx`, the table's at `table_idx`.
    fn assemble(
        &self,
        batch: &RecordBatch,
        stream_idx: &UInt32Array,
        table_columns: &[ArrayRef],
        table_idx: &UInt32Array,
    ) -> Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for c in &batch.columns()[1 + self.keys..] {
            columns.push(take(c.as_ref(), stream_idx, None)?);
        }
        for c in table_columns.iter().take(self.table_out) {
            columns.push(take(c.as_ref(), table_idx, None)?);
        }
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(stream_idx.len())),
        )?)
    }

    /// Keeps stream records (none of them null in time) until the watermark passes them.
    fn wait(&mut self, batch: RecordBatch) {
        let times = batch
            .column(self.stream_time)
            .as_primitive::<TimestampMillisecondType>();
        let first = arrow::compute::min(times).unwrap_or(i64::MIN);
        self.waiting.push((first, batch));
    }

    /// Stream records: those already behind the watermark are joined now (or are late),
    /// the rest wait.
    fn take_stream(&mut self, batch: &RecordBatch, out: &mut Emit) -> Result<()> {
        let times = batch
            .column(self.stream_time)
            .as_primitive::<TimestampMillisecondType>();
        let horizon = self.horizon();
        let watermark = self.watermark;
        let mut now = Vec::new();
        let mut late = Vec::new();
        let mut wait = Vec::new();
        for i in 0..batch.num_rows() {
            let t = if times.is_valid(i) {
                times.value(i)
            } else {
                i64::MIN
            };
            if t > watermark {
                wait.push(i as u32);
            } else if t >= horizon && times.is_valid(i) {
                now.push(i as u32);
            } else {
                late.push(i as u32);
            }
        }
        if !late.is_empty() {
            let rows = arrow::compute::take_record_batch(batch, &UInt32Array::from(late))?;
            self.metrics.late_rows += rows.num_rows() as u64;
            out.late.push(LateRows {
                operator: self.name.clone(),
                rows: strip_tag(&rows, self.keys)?,
                reason: format!(
                    "its event time is more than the join's grace period ({} ms) behind the \
                     watermark: the table versions it needs are gone",
                    self.grace_ms
                ),
            });
        }
        if !now.is_empty() {
            let rows = arrow::compute::take_record_batch(batch, &UInt32Array::from(now))?;
            self.join(&rows, out)?;
        }
        if wait.len() == batch.num_rows() {
            self.wait(batch.clone());
        } else if !wait.is_empty() {
            self.wait(arrow::compute::take_record_batch(
                batch,
                &UInt32Array::from(wait),
            )?);
        }
        Ok(())
    }
}

/// Drops the versions no stream record can ask for: all but the latest at or before `horizon`.
fn prune(versions: &mut Vec<Version>, horizon: i64) {
    let at = versions.partition_point(|v| v.time <= horizon);
    if at > 1 {
        versions.drain(..at - 1);
    }
    if versions.len() == 1 && versions[0].row.is_none() && versions[0].time <= horizon {
        versions.clear();
    }
}

/// A tagged batch without its tag and key columns.
fn strip_tag(batch: &RecordBatch, keys: usize) -> Result<RecordBatch> {
    let indices: Vec<usize> = (1 + keys..batch.num_columns()).collect();
    Ok(batch.project(&indices)?)
}

/// The layout of a join's state rows.
fn state_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("side", DataType::UInt8, false),
        Field::new("key", DataType::Binary, false),
        Field::new("time", DataType::Int64, false),
        Field::new("row", DataType::Binary, true),
    ]))
}

impl Operator for StreamTableJoin {
    fn name(&self) -> &str {
        &self.name
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn process(&mut self, batch: &RecordBatch, watermark: i64, out: &mut Emit) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        // A task restored from a checkpoint starts at its watermark before any moves it.
        self.advance(watermark, out)?;
        self.metrics.rows_in += batch.num_rows() as u64;
        let sides = batch
            .column(0)
            .as_primitive::<arrow::datatypes::UInt8Type>();
        let side = sides.value(0);
        if sides.iter().any(|s| s != Some(side)) {
            return Err(EngineError::internal(
                "a join batch mixes rows of both sides",
            ));
        }
        if side == TABLE {
            self.update_table(batch)
        } else {
            self.take_stream(batch, out)
        }
    }

    fn advance(&mut self, watermark: i64, out: &mut Emit) -> Result<()> {
        if watermark <= self.watermark {
            return Ok(());
        }
        self.watermark = watermark;
        if self.waiting.is_empty() {
            return Ok(());
        }
        let waiting = std::mem::take(&mut self.waiting);
        for (first, batch) in waiting {
            if first > watermark {
                self.waiting.push((first, batch));
                continue;
            }
            let times = batch
                .column(self.stream_time)
                .as_primitive::<TimestampMillisecondType>();
            let due: BooleanArray = times
                .iter()
                .map(|t| Some(t.unwrap_or(i64::MIN) <= watermark))
                .collect();
            if due.true_count() == batch.num_rows() {
                self.join(&batch, out)?;
            } else {
                self.join(&filter_record_batch(&batch, &due)?, out)?;
                let later = arrow::compute::not(&due)?;
                self.wait(filter_record_batch(&batch, &later)?);
            }
        }
        Ok(())
    }

    fn metrics(&self) -> OperatorMetrics {
        self.metrics
    }

    fn state_bytes(&self) -> usize {
        let versions: usize = self
            .versions
            .iter()
            .map(|(k, v)| {
                k.as_ref().len()
                    + v.iter()
                        .map(|v| {
                            std::mem::size_of::<Version>()
                                + v.row.as_ref().map_or(0, |r| r.as_ref().len())
                        })
                        .sum::<usize>()
            })
            .sum();
        let waiting: usize = self
            .waiting
            .iter()
            .map(|(_, b)| b.get_array_memory_size())
            .sum();
        versions + waiting
    }

    fn snapshot(&mut self) -> Result<Option<RecordBatch>> {
        let mut sides = Vec::new();
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut times = Vec::new();
        let mut rows: Vec<Option<Vec<u8>>> = Vec::new();
        for (key, versions) in &self.versions {
            for v in versions {
                sides.push(TABLE);
                keys.push(key.as_ref().to_vec());
                times.push(v.time);
                rows.push(v.row.as_ref().map(|r| r.as_ref().to_vec()));
            }
        }
        for (_, batch) in &self.waiting {
            let k = self.key_rows.convert_columns(&self.key_columns(batch))?;
            let r = self.stream_rows.convert_columns(batch.columns())?;
            let t = batch
                .column(self.stream_time)
                .as_primitive::<TimestampMillisecondType>();
            for i in 0..batch.num_rows() {
                sides.push(STREAM);
                keys.push(k.row(i).as_ref().to_vec());
                times.push(if t.is_valid(i) { t.value(i) } else { i64::MIN });
                rows.push(Some(r.row(i).as_ref().to_vec()));
            }
        }
        Ok(Some(RecordBatch::try_new(
            state_schema(),
            vec![
                Arc::new(UInt8Array::from(sides)),
                Arc::new(BinaryArray::from_iter_values(keys.iter())),
                Arc::new(Int64Array::from(times)),
                Arc::new(BinaryArray::from_iter(rows.iter().map(|r| r.as_deref()))),
            ],
        )?))
    }

    fn restore(&mut self, state: &RecordBatch) -> Result<()> {
        if state.num_columns() != 4 {
            return Err(EngineError::Checkpoint(format!(
                "the state of join '{}' has {} columns, not 4",
                self.name,
                state.num_columns()
            )));
        }
        let sides = state
            .column(0)
            .as_primitive::<arrow::datatypes::UInt8Type>();
        let keys = state.column(1).as_binary::<i32>();
        let times = state
            .column(2)
            .as_primitive::<arrow::datatypes::Int64Type>();
        let rows = state.column(3).as_binary::<i32>();
        let table_parser = self.table_rows.parser();
        let stream_parser = self.stream_rows.parser();
        let mut waiting = Vec::new();
        for i in 0..state.num_rows() {
            if sides.value(i) == TABLE {
                let key: Box<[u8]> = keys.value(i).into();
                let row = rows
                    .is_valid(i)
                    .then(|| table_parser.parse(rows.value(i)).owned());
                let versions = self.versions.entry(key).or_default();
                let time = times.value(i);
                let at = versions.partition_point(|v| v.time <= time);
                versions.insert(at, Version { time, row });
            } else {
                waiting.push(stream_parser.parse(rows.value(i)));
            }
        }
        if !waiting.is_empty() {
            let columns = self.stream_rows.convert_rows(waiting)?;
            self.wait(RecordBatch::try_new(self.stream_schema.clone(), columns)?);
        }
        self.metrics.groups = self.versions.len() as u64;
        Ok(())
    }

    fn state_keys(&self, state: &RecordBatch) -> Result<Vec<ArrayRef>> {
        crate::operator::row_keys(&self.key_rows, state, 1)
    }

    fn fresh(&self) -> Result<Box<dyn Operator>> {
        Ok(Box::new(StreamTableJoin::new(self.spec())?))
    }

    fn partition_keys(&self) -> Option<Vec<Arc<dyn PhysicalExpr>>> {
        Some(key_columns(self.keys))
    }
}
