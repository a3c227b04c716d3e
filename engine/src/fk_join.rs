//! Foreign-key table–table joins (Kafka Streams' `KTable.join(other, foreignKeyExtractor, …)`):
//! each row of the left table meets the right table's row whose key equals the left row's
//! foreign key. The result is a table keyed by the left's key that follows both tables: a left
//! row that changes its foreign key moves to its new partner, a right row's change reaches
//! every left row that points at it.
//!
//! The two tables are partitioned differently (the left by its key, the right by the key the
//! left points at), so the join runs in three steps, each after an exchange of the engine's:
//!
//! ```text
//! left  ─(left key)─▶ Subscribe ─(foreign key)─▶ Match ─(left key)─▶ Resolve ─▶ joined table
//! right ─(its key)──▶ (passed on) ─(its key)───▶
//! ```
//!
//! - [`ForeignKeySubscribe`] keeps each left key's current foreign key and a version counter.
//!   A left row becomes a subscription to its foreign key (carrying the row and its version);
//!   when the foreign key changes, the old one gets an unsubscription; a delete goes to the old
//!   foreign key as one.
//! - [`ForeignKeyMatch`], partitioned by the right table's key, keeps the right table and the
//!   subscriptions to each of its keys. A subscription is answered at once with the right
//!   row it meets (or none); a right row's change answers every subscription to its key.
//! - [`ForeignKeyResolve`], back by the left key, keeps the newest version it has seen per left
//!   key and drops older answers: a left row that moved has answers in flight from its old
//!   partner's task and its new one's, and only the answer about its current row counts. It
//!   emits the joined row (inner: when there is a partner; left: always), or a delete when a
//!   row that was in the result no longer is.
//!
//! The resolver keeps the version of deleted left keys, so a late answer about a deleted row
//! cannot bring it back: its state grows with the number of distinct left keys.
//! A left row without a foreign key (null) has no partner. Only inner and left joins: a right
//! row has no single place in a result keyed by the left's key.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, RecordBatch, RecordBatchOptions,
    UInt8Array, UInt32Array, UInt64Array,
};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt8Type, UInt64Type};
use arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::common::DFSchemaRef;
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, UserDefinedLogicalNodeCore};
use datafusion::physical_expr::PhysicalExpr;

use crate::error::{EngineError, Result};
use crate::format::DELETED;
use crate::join::{JoinKind, encode_keys, table_join_schema, two_inputs};
use crate::operator::{Emit, Operator, OperatorMetrics};

/// A left table joined on a foreign key to a right table's key, in a `LogicalPlan` (see the
/// module docs). The result has the left's columns, the right's (without [`DELETED`]), then
/// [`DELETED`]; it is keyed by the left's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ForeignKeyJoinNode {
    pub name: String,
    pub left: LogicalPlan,
    pub right: LogicalPlan,
    pub left_key: Vec<String>,
    pub right_key: Vec<String>,
    /// Expressions over the left's columns, paired in order with `right_key`.
    pub foreign_key: Vec<Expr>,
    pub kind: JoinKind,
    pub schema: DFSchemaRef,
}

impl ForeignKeyJoinNode {
    /// The node as a plan. Only inner and left joins.
    #[allow(clippy::too_many_arguments)]
    pub fn plan(
        name: impl Into<String>,
        left: LogicalPlan,
        right: LogicalPlan,
        left_key: Vec<String>,
        right_key: Vec<String>,
        foreign_key: Vec<Expr>,
        kind: JoinKind,
    ) -> Result<LogicalPlan> {
        if kind == JoinKind::Full {
            return Err(EngineError::config(
                "a foreign-key join is inner or left: a right row without partners has no \
                 place in a table keyed by the left's key",
            ));
        }
        if foreign_key.len() != right_key.len() || right_key.is_empty() {
            return Err(EngineError::config(format!(
                "a foreign-key join pairs the foreign key's expressions with the right table's \
                 key columns; there are {} and {} ({})",
                foreign_key.len(),
                right_key.len(),
                right_key.join(", ")
            )));
        }
        if left_key.is_empty() {
            return Err(EngineError::config(
                "a foreign-key join needs the left table's key",
            ));
        }
        let schema = table_join_schema(&left, &right)?;
        Ok(LogicalPlan::Extension(Extension {
            node: Arc::new(ForeignKeyJoinNode {
                name: name.into(),
                left,
                right,
                left_key,
                right_key,
                foreign_key,
                kind,
                schema,
            }),
        }))
    }
}

impl PartialOrd for ForeignKeyJoinNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        self.name.partial_cmp(&other.name)
    }
}

impl UserDefinedLogicalNodeCore for ForeignKeyJoinNode {
    fn name(&self) -> &str {
        "ForeignKeyJoin"
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
        write!(
            f,
            "ForeignKeyJoin: {} {:?} on [{}] = [{}]",
            self.name,
            self.kind,
            self.foreign_key
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            self.right_key.join(", ")
        )
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        inputs: Vec<LogicalPlan>,
    ) -> datafusion::error::Result<Self> {
        let (left, right) = two_inputs(inputs)?;
        Ok(ForeignKeyJoinNode {
            left,
            right,
            ..self.clone()
        })
    }
}

/// What the three operators are made of, from the planner.
#[derive(Debug, Clone)]
pub(crate) struct ForeignKeySpec {
    pub name: String,
    pub kind: JoinKind,
    /// The left's columns (as the join tag carries them after the side and the key).
    pub left: SchemaRef,
    pub right: SchemaRef,
    /// The foreign key, over the left's columns.
    pub foreign_key: Vec<Arc<dyn PhysicalExpr>>,
    /// The right key's types, which the foreign key is cast to.
    pub right_key_types: Vec<DataType>,
    /// The join's output.
    pub schema: SchemaRef,
}

impl ForeignKeySpec {
    /// The three operators, in order.
    pub(crate) fn operators(self) -> Result<Vec<Box<dyn Operator>>> {
        let spec = Arc::new(self);
        Ok(vec![
            Box::new(ForeignKeySubscribe::new(spec.clone())),
            Box::new(ForeignKeyMatch::new(spec.clone())?),
            Box::new(ForeignKeyResolve::new(spec)),
        ])
    }

    fn deleted(schema: &Schema) -> Option<usize> {
        schema.index_of(DELETED).ok()
    }

    /// The layout of a subscription (after the join tag's side and route columns).
    fn subscription_schema(&self) -> SchemaRef {
        let mut fields = vec![
            Field::new("__side", DataType::UInt8, false),
            Field::new("__key0", DataType::Binary, true),
            Field::new("__left_key", DataType::Binary, false),
            Field::new("__version", DataType::UInt64, false),
            Field::new("__op", DataType::UInt8, false),
        ];
        fields.extend(self.left.fields().iter().map(|f| f.as_ref().clone()));
        Arc::new(Schema::new(fields))
    }

    /// The layout of an answer.
    fn answer_schema(&self) -> SchemaRef {
        let mut fields = vec![
            Field::new("__side", DataType::UInt8, false),
            Field::new("__key0", DataType::Binary, false),
            Field::new("__version", DataType::UInt64, false),
            Field::new("__deleted", DataType::Boolean, false),
            Field::new("__matched", DataType::Boolean, false),
        ];
        for f in self.left.fields().iter().chain(self.right.fields().iter()) {
            fields.push(f.as_ref().clone().with_nullable(true));
        }
        Arc::new(Schema::new(fields))
    }
}

/// The route column the exchanges hash (see [`crate::join::JoinTag::encode_keys`]).
fn route() -> Vec<Arc<dyn PhysicalExpr>> {
    vec![Arc::new(
        datafusion::physical_expr::expressions::Column::new("__key0", 1),
    )]
}

fn sort_fields(schema: &Schema) -> Vec<SortField> {
    schema
        .fields()
        .iter()
        .map(|f| SortField::new(f.data_type().clone()))
        .collect()
}

fn is_deleted(deleted: Option<&BooleanArray>, i: usize) -> bool {
    deleted.is_some_and(|d| d.is_valid(i) && d.value(i))
}

/// Subscription kinds.
const SUBSCRIBE: u8 = 0;
const UNSUBSCRIBE: u8 = 1;
/// The left row is deleted: unsubscribe, and answer with a delete.
const DELETE: u8 = 2;
/// The left row has no foreign key: answer that it meets nothing.
const NO_KEY: u8 = 3;

/// A left key's current foreign key (`None`: null, or the row is deleted) and version.
#[derive(Debug, Clone)]
struct Subscription {
    foreign_key: Option<Box<[u8]>>,
    present: bool,
    version: u64,
}

/// The first step: left rows to subscriptions (see the module docs).
pub struct ForeignKeySubscribe {
    spec: Arc<ForeignKeySpec>,
    name: String,
    schema: SchemaRef,
    keys: HashMap<Box<[u8]>, Subscription>,
    metrics: OperatorMetrics,
}

impl fmt::Debug for ForeignKeySubscribe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForeignKeySubscribe")
            .field("name", &self.name)
            .finish()
    }
}

impl ForeignKeySubscribe {
    fn new(spec: Arc<ForeignKeySpec>) -> ForeignKeySubscribe {
        ForeignKeySubscribe {
            name: format!("{}.subscribe", spec.name),
            schema: spec.subscription_schema(),
            spec,
            keys: HashMap::new(),
            metrics: OperatorMetrics::default(),
        }
    }
}

fn subscribe_state_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("left_key", DataType::Binary, false),
        Field::new("foreign_key", DataType::Binary, true),
        Field::new("present", DataType::Boolean, false),
        Field::new("version", DataType::UInt64, false),
    ]))
}

impl Operator for ForeignKeySubscribe {
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
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        self.metrics.rows_in += n as u64;
        let side = batch.column(0).as_primitive::<UInt8Type>();
        if side.value(0) == 1 {
            // Right rows go on to their key's task.
            self.metrics.rows_out += n as u64;
            out.batches.push(batch.clone());
            return Ok(());
        }
        let left_keys = batch.column(1).as_binary::<i32>().clone();
        let left = RecordBatch::try_new_with_options(
            self.spec.left.clone(),
            batch.columns()[2..].to_vec(),
            &RecordBatchOptions::new().with_row_count(Some(n)),
        )?;
        let foreign = self
            .spec
            .foreign_key
            .iter()
            .map(|e| e.evaluate(&left).and_then(|v| v.into_array(n)))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let foreign = encode_keys(&foreign, &self.spec.right_key_types, n)?;
        let foreign = foreign.as_binary::<i32>();
        let deleted =
            ForeignKeySpec::deleted(&self.spec.left).map(|i| left.column(i).as_boolean().clone());
        // Each message: its route, its left key, version, kind, and the left row it carries.
        let mut routes: Vec<Vec<u8>> = Vec::new();
        let mut lefts: Vec<&[u8]> = Vec::new();
        let mut versions = Vec::new();
        let mut ops = Vec::new();
        let mut rows = Vec::new();
        for i in 0..n {
            if left_keys.is_null(i) {
                continue;
            }
            let key = left_keys.value(i);
            let old = self.keys.get(key).cloned();
            let version = old.as_ref().map_or(0, |o| o.version) + 1;
            let mut send = |route: &[u8], op: u8| {
                routes.push(route.to_vec());
                lefts.push(key);
                versions.push(version);
                ops.push(op);
                rows.push(i as u32);
            };
            let old_foreign = old
                .as_ref()
                .filter(|o| o.present)
                .and_then(|o| o.foreign_key.clone());
            if is_deleted(deleted.as_ref(), i) {
                if !old.as_ref().is_some_and(|o| o.present) {
                    continue;
                }
                send(old_foreign.as_deref().unwrap_or(key), DELETE);
                self.keys.insert(
                    key.into(),
                    Subscription {
                        foreign_key: None,
                        present: false,
                        version,
                    },
                );
                continue;
            }
            let new_foreign = foreign.is_valid(i).then(|| foreign.value(i));
            if let Some(old) = &old_foreign
                && Some(old.as_ref()) != new_foreign
            {
                send(old, UNSUBSCRIBE);
            }
            match new_foreign {
                Some(f) => send(f, SUBSCRIBE),
                None => send(key, NO_KEY),
            }
            self.keys.insert(
                key.into(),
                Subscription {
                    foreign_key: new_foreign.map(Into::into),
                    present: true,
                    version,
                },
            );
        }
        self.metrics.groups = self.keys.len() as u64;
        if rows.is_empty() {
            return Ok(());
        }
        let m = rows.len();
        let idx = UInt32Array::from(rows);
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(UInt8Array::from_value(0, m)),
            Arc::new(BinaryArray::from_iter_values(routes)),
            Arc::new(BinaryArray::from_iter_values(lefts)),
            Arc::new(UInt64Array::from(versions)),
            Arc::new(UInt8Array::from(ops)),
        ];
        for c in left.columns() {
            columns.push(take(c.as_ref(), &idx, None)?);
        }
        self.metrics.rows_out += m as u64;
        out.batches
            .push(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }

    fn metrics(&self) -> OperatorMetrics {
        self.metrics
    }

    fn state_bytes(&self) -> usize {
        self.keys
            .iter()
            .map(|(k, s)| k.len() + s.foreign_key.as_ref().map_or(0, |f| f.len()) + 16)
            .sum()
    }

    fn snapshot(&mut self) -> Result<Option<RecordBatch>> {
        let keys = BinaryArray::from_iter_values(self.keys.keys());
        let foreign: BinaryArray = self
            .keys
            .values()
            .map(|s| s.foreign_key.as_deref())
            .collect();
        let present: BooleanArray = self.keys.values().map(|s| Some(s.present)).collect();
        let versions = UInt64Array::from_iter_values(self.keys.values().map(|s| s.version));
        Ok(Some(RecordBatch::try_new(
            subscribe_state_schema(),
            vec![
                Arc::new(keys),
                Arc::new(foreign),
                Arc::new(present),
                Arc::new(versions),
            ],
        )?))
    }

    fn restore(&mut self, state: &RecordBatch) -> Result<()> {
        check_columns(&self.name, state, 4)?;
        let keys = state.column(0).as_binary::<i32>();
        let foreign = state.column(1).as_binary::<i32>();
        let present = state.column(2).as_boolean();
        let versions = state.column(3).as_primitive::<UInt64Type>();
        for i in 0..state.num_rows() {
            self.keys.insert(
                keys.value(i).into(),
                Subscription {
                    foreign_key: foreign.is_valid(i).then(|| foreign.value(i).into()),
                    present: present.value(i),
                    version: versions.value(i),
                },
            );
        }
        Ok(())
    }

    fn state_keys(&self, state: &RecordBatch) -> Result<Vec<ArrayRef>> {
        Ok(vec![state.column(0).clone()])
    }

    fn fresh(&self) -> Result<Box<dyn Operator>> {
        Ok(Box::new(ForeignKeySubscribe::new(self.spec.clone())))
    }

    fn partition_keys(&self) -> Option<Vec<Arc<dyn PhysicalExpr>>> {
        Some(route())
    }
}

fn check_columns(name: &str, state: &RecordBatch, want: usize) -> Result<()> {
    if state.num_columns() == want {
        Ok(())
    } else {
        Err(EngineError::Checkpoint(format!(
            "the state of join '{name}' has {} columns, not {want}",
            state.num_columns()
        )))
    }
}

/// One answer of [`ForeignKeyMatch`].
struct Answer {
    left_key: Box<[u8]>,
    version: u64,
    deleted: bool,
    left: OwnedRow,
    right: Option<OwnedRow>,
}

/// The left keys subscribed to one right key: each one's version and row.
type Subscribers = HashMap<Box<[u8]>, (u64, OwnedRow)>;

/// The second step: subscriptions meet the right table (see the module docs).
pub struct ForeignKeyMatch {
    spec: Arc<ForeignKeySpec>,
    name: String,
    schema: SchemaRef,
    left_rows: RowConverter,
    right_rows: RowConverter,
    /// The right table by key.
    right: HashMap<Box<[u8]>, OwnedRow>,
    /// Per right key, the left keys subscribed to it: their version and row.
    subscriptions: HashMap<Box<[u8]>, Subscribers>,
    metrics: OperatorMetrics,
}

impl fmt::Debug for ForeignKeyMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForeignKeyMatch")
            .field("name", &self.name)
            .finish()
    }
}

fn match_state_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        // 0: a right row (key, row); 1: a subscription (key, left key, version, row).
        Field::new("kind", DataType::UInt8, false),
        Field::new("key", DataType::Binary, false),
        Field::new("left_key", DataType::Binary, true),
        Field::new("version", DataType::UInt64, false),
        Field::new("row", DataType::Binary, false),
    ]))
}

impl ForeignKeyMatch {
    fn new(spec: Arc<ForeignKeySpec>) -> Result<ForeignKeyMatch> {
        Ok(ForeignKeyMatch {
            name: format!("{}.match", spec.name),
            schema: spec.answer_schema(),
            left_rows: RowConverter::new(sort_fields(&spec.left))?,
            right_rows: RowConverter::new(sort_fields(&spec.right))?,
            right: HashMap::new(),
            subscriptions: HashMap::new(),
            metrics: OperatorMetrics::default(),
            spec,
        })
    }

    fn answers(&self, answers: Vec<Answer>) -> Result<RecordBatch> {
        let n = answers.len();
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(UInt8Array::from_value(2, n)),
            Arc::new(BinaryArray::from_iter_values(
                answers.iter().map(|a| &a.left_key),
            )),
            Arc::new(UInt64Array::from_iter_values(
                answers.iter().map(|a| a.version),
            )),
            Arc::new(BooleanArray::from_iter(
                answers.iter().map(|a| Some(a.deleted)),
            )),
            Arc::new(BooleanArray::from_iter(
                answers.iter().map(|a| Some(a.right.is_some())),
            )),
        ];
        columns.extend(
            self.left_rows
                .convert_rows(answers.iter().map(|a| a.left.row()))?,
        );
        let rights = self.right_rows.convert_rows(
            answers
                .iter()
                .filter_map(|a| a.right.as_ref().map(|r| r.row())),
        )?;
        let mut next = 0u32;
        let idx: UInt32Array = answers
            .iter()
            .map(|a| {
                a.right.as_ref().map(|_| {
                    next += 1;
                    next - 1
                })
            })
            .collect();
        for r in rights {
            columns.push(take(r.as_ref(), &idx, None)?);
        }
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    fn right_batch(&mut self, batch: &RecordBatch, out: &mut Vec<Answer>) -> Result<()> {
        let keys = batch.column(1).as_binary::<i32>();
        let columns = batch.columns()[2..].to_vec();
        let rows = self.right_rows.convert_columns(&columns)?;
        let deleted = ForeignKeySpec::deleted(&self.spec.right)
            .map(|i| batch.column(2 + i).as_boolean().clone());
        for i in 0..batch.num_rows() {
            // A right row without a key meets nothing.
            if keys.is_null(i) {
                continue;
            }
            let key = keys.value(i);
            let right = if is_deleted(deleted.as_ref(), i) {
                if self.right.remove(key).is_none() {
                    continue;
                }
                None
            } else {
                let row = rows.row(i).owned();
                self.right.insert(key.into(), row.clone());
                Some(row)
            };
            if let Some(subscribers) = self.subscriptions.get(key) {
                for (left_key, (version, left)) in subscribers {
                    out.push(Answer {
                        left_key: left_key.clone(),
                        version: *version,
                        deleted: false,
                        left: left.clone(),
                        right: right.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    fn left_batch(&mut self, batch: &RecordBatch, out: &mut Vec<Answer>) -> Result<()> {
        let routes = batch.column(1).as_binary::<i32>();
        let left_keys = batch.column(2).as_binary::<i32>();
        let versions = batch.column(3).as_primitive::<UInt64Type>();
        let ops = batch.column(4).as_primitive::<UInt8Type>();
        let rows = self.left_rows.convert_columns(&batch.columns()[5..])?;
        for i in 0..batch.num_rows() {
            let route = routes.value(i);
            let left_key: Box<[u8]> = left_keys.value(i).into();
            let version = versions.value(i);
            let left = rows.row(i).owned();
            match ops.value(i) {
                SUBSCRIBE => {
                    let right = self.right.get(route).cloned();
                    self.subscriptions
                        .entry(route.into())
                        .or_default()
                        .insert(left_key.clone(), (version, left.clone()));
                    out.push(Answer {
                        left_key,
                        version,
                        deleted: false,
                        left,
                        right,
                    });
                }
                UNSUBSCRIBE | DELETE => {
                    if let Some(subscribers) = self.subscriptions.get_mut(route) {
                        subscribers.remove(&left_key);
                        if subscribers.is_empty() {
                            self.subscriptions.remove(route);
                        }
                    }
                    if ops.value(i) == DELETE {
                        out.push(Answer {
                            left_key,
                            version,
                            deleted: true,
                            left,
                            right: None,
                        });
                    }
                }
                NO_KEY => out.push(Answer {
                    left_key,
                    version,
                    deleted: false,
                    left,
                    right: None,
                }),
                other => {
                    return Err(EngineError::internal(format!(
                        "join '{}': a subscription of unknown kind {other}",
                        self.spec.name
                    )));
                }
            }
        }
        Ok(())
    }
}

impl Operator for ForeignKeyMatch {
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
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        self.metrics.rows_in += n as u64;
        let mut answers = Vec::new();
        match batch.column(0).as_primitive::<UInt8Type>().value(0) {
            0 => self.left_batch(batch, &mut answers)?,
            1 => self.right_batch(batch, &mut answers)?,
            other => {
                return Err(EngineError::internal(format!(
                    "join '{}': a batch of unknown side {other}",
                    self.spec.name
                )));
            }
        }
        self.metrics.groups = self.right.len() as u64;
        if !answers.is_empty() {
            let batch = self.answers(answers)?;
            self.metrics.rows_out += batch.num_rows() as u64;
            out.batches.push(batch);
        }
        Ok(())
    }

    fn metrics(&self) -> OperatorMetrics {
        self.metrics
    }

    fn state_bytes(&self) -> usize {
        let right: usize = self
            .right
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().len())
            .sum();
        let subscriptions: usize = self
            .subscriptions
            .iter()
            .map(|(k, s)| {
                k.len()
                    + s.iter()
                        .map(|(l, (_, r))| l.len() + 8 + r.as_ref().len())
                        .sum::<usize>()
            })
            .sum();
        right + subscriptions
    }

    fn snapshot(&mut self) -> Result<Option<RecordBatch>> {
        let mut kinds = Vec::new();
        let mut keys: Vec<&[u8]> = Vec::new();
        let mut left_keys: Vec<Option<&[u8]>> = Vec::new();
        let mut versions = Vec::new();
        let mut rows: Vec<&[u8]> = Vec::new();
        for (k, r) in &self.right {
            kinds.push(0u8);
            keys.push(k);
            left_keys.push(None);
            versions.push(0u64);
            rows.push(r.as_ref());
        }
        for (k, subscribers) in &self.subscriptions {
            for (l, (v, r)) in subscribers {
                kinds.push(1);
                keys.push(k);
                left_keys.push(Some(l));
                versions.push(*v);
                rows.push(r.as_ref());
            }
        }
        Ok(Some(RecordBatch::try_new(
            match_state_schema(),
            vec![
                Arc::new(UInt8Array::from(kinds)),
                Arc::new(BinaryArray::from_iter_values(keys)),
                Arc::new(left_keys.into_iter().collect::<BinaryArray>()),
                Arc::new(UInt64Array::from(versions)),
                Arc::new(BinaryArray::from_iter_values(rows)),
            ],
        )?))
    }

    fn restore(&mut self, state: &RecordBatch) -> Result<()> {
        check_columns(&self.name, state, 5)?;
        let kinds = state.column(0).as_primitive::<UInt8Type>();
        let keys = state.column(1).as_binary::<i32>();
        let left_keys = state.column(2).as_binary::<i32>();
        let versions = state.column(3).as_primitive::<UInt64Type>();
        let rows = state.column(4).as_binary::<i32>();
        let left = self.left_rows.parser();
        let right = self.right_rows.parser();
        for i in 0..state.num_rows() {
            if kinds.value(i) == 0 {
                self.right
                    .insert(keys.value(i).into(), right.parse(rows.value(i)).owned());
            } else {
                self.subscriptions
                    .entry(keys.value(i).into())
                    .or_default()
                    .insert(
                        left_keys.value(i).into(),
                        (versions.value(i), left.parse(rows.value(i)).owned()),
                    );
            }
        }
        Ok(())
    }

    fn state_keys(&self, state: &RecordBatch) -> Result<Vec<ArrayRef>> {
        Ok(vec![state.column(1).clone()])
    }

    fn fresh(&self) -> Result<Box<dyn Operator>> {
        Ok(Box::new(ForeignKeyMatch::new(self.spec.clone())?))
    }

    fn partition_keys(&self) -> Option<Vec<Arc<dyn PhysicalExpr>>> {
        Some(route())
    }
}

/// The third step: the newest answer per left key becomes the joined row (see the module
/// docs).
pub struct ForeignKeyResolve {
    spec: Arc<ForeignKeySpec>,
    name: String,
    /// The answer columns the output takes (the left's and right's but [`DELETED`]).
    columns: Vec<usize>,
    /// Per left key: the newest version seen, and whether the result holds the key.
    keys: HashMap<Box<[u8]>, (u64, bool)>,
    metrics: OperatorMetrics,
}

impl fmt::Debug for ForeignKeyResolve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForeignKeyResolve")
            .field("name", &self.name)
            .finish()
    }
}

fn resolve_state_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("left_key", DataType::Binary, false),
        Field::new("version", DataType::UInt64, false),
        Field::new("joined", DataType::Boolean, false),
    ]))
}

impl ForeignKeyResolve {
    fn new(spec: Arc<ForeignKeySpec>) -> ForeignKeyResolve {
        let left = spec.left.fields().len();
        let deleted = [
            ForeignKeySpec::deleted(&spec.left),
            ForeignKeySpec::deleted(&spec.right).map(|i| left + i),
        ];
        let columns = (0..left + spec.right.fields().len())
            .filter(|i| !deleted.contains(&Some(*i)))
            .map(|i| 5 + i)
            .collect();
        ForeignKeyResolve {
            name: format!("{}.resolve", spec.name),
            columns,
            keys: HashMap::new(),
            metrics: OperatorMetrics::default(),
            spec,
        }
    }
}

impl Operator for ForeignKeyResolve {
    fn name(&self) -> &str {
        &self.name
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
        let keys = batch.column(1).as_binary::<i32>();
        let versions = batch.column(2).as_primitive::<UInt64Type>();
        let deletes = batch.column(3).as_boolean();
        let matched = batch.column(4).as_boolean();
        let mut rows = Vec::new();
        let mut deleted = Vec::new();
        for i in 0..n {
            let key = keys.value(i);
            let version = versions.value(i);
            let (newest, held) = self.keys.get(key).copied().unwrap_or((0, false));
            // An answer about an older row of the key: it has moved on since.
            if version < newest {
                continue;
            }
            let joined =
                !deletes.value(i) && (matched.value(i) || self.spec.kind == JoinKind::Left);
            if joined || held {
                rows.push(i as u32);
                deleted.push(!joined);
            }
            self.keys.insert(key.into(), (version, joined));
        }
        self.metrics.groups = self.keys.len() as u64;
        if rows.is_empty() {
            return Ok(());
        }
        let idx = UInt32Array::from(rows);
        let mut columns = self
            .columns
            .iter()
            .map(|&c| take(batch.column(c).as_ref(), &idx, None))
            .collect::<Result<Vec<_>, _>>()?;
        columns.push(Arc::new(BooleanArray::from(deleted)));
        let out_batch = RecordBatch::try_new(self.spec.schema.clone(), columns)?;
        self.metrics.rows_out += out_batch.num_rows() as u64;
        out.batches.push(out_batch);
        Ok(())
    }

    fn metrics(&self) -> OperatorMetrics {
        self.metrics
    }

    fn state_bytes(&self) -> usize {
        self.keys.keys().map(|k| k.len() + 9).sum()
    }

    fn snapshot(&mut self) -> Result<Option<RecordBatch>> {
        Ok(Some(RecordBatch::try_new(
            resolve_state_schema(),
            vec![
                Arc::new(BinaryArray::from_iter_values(self.keys.keys())),
                Arc::new(UInt64Array::from_iter_values(
                    self.keys.values().map(|v| v.0),
                )),
                Arc::new(
                    self.keys
                        .values()
                        .map(|v| Some(v.1))
                        .collect::<BooleanArray>(),
                ),
            ],
        )?))
    }

    fn restore(&mut self, state: &RecordBatch) -> Result<()> {
        check_columns(&self.name, state, 3)?;
        let keys = state.column(0).as_binary::<i32>();
        let versions = state.column(1).as_primitive::<UInt64Type>();
        let joined = state.column(2).as_boolean();
        for i in 0..state.num_rows() {
            self.keys
                .insert(keys.value(i).into(), (versions.value(i), joined.value(i)));
        }
        Ok(())
    }

    fn state_keys(&self, state: &RecordBatch) -> Result<Vec<ArrayRef>> {
        Ok(vec![state.column(0).clone()])
    }

    fn fresh(&self) -> Result<Box<dyn Operator>> {
        Ok(Box::new(ForeignKeyResolve::new(self.spec.clone())))
    }

    fn partition_keys(&self) -> Option<Vec<Arc<dyn PhysicalExpr>>> {
        Some(route())
    }
}
