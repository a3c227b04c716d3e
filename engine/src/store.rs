//! Materialized tables and interactive queries: a table's latest row per key, kept in a named
//! [`TableStore`] that programs read while the query runs (Kafka Streams' interactive queries,
//! ksqlDB's pull queries).
//!
//! - **Writing**: [`MaterializeOperator`] runs after an exchange by the table's key, so each
//!   task owns the keys the exchange sends it, and writes them to its own shard of the store
//!   (no two tasks write one shard). An upsert replaces the key's row; a row marked
//!   [`DELETED`] removes it. The rows then flow on unchanged, so what a reader sees is what the
//!   table has emitted (or a little more: the store is written before the rows reach the sink).
//! - **Reading**: [`TableStore::get`] (a key), [`TableStore::range`] (keys in order, from one
//!   key up to another) and [`TableStore::scan`] (everything, in key order) return Arrow
//!   batches in the table's schema. Keys are kept in Arrow's row format, whose byte order is the
//!   keys' order, so a range is a range of a sorted map. Writers apply a batch in small slices,
//!   so a read waits at most for one slice.
//! - **Limits**: a store holds at most its byte limit; past it the query fails with an error
//!   naming the store.
//! - **Checkpoints**: each task's shard is its operator state, restored on restart.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use datafusion::common::ScalarValue;
use datafusion::physical_expr::PhysicalExpr;
use parking_lot::{Mutex, RwLock};

use crate::error::{EngineError, Result};
use crate::format::DELETED;
use crate::operator::{Emit, Operator, OperatorMetrics};

/// Rows a writer applies per hold of a shard's lock.
const SLICE: usize = 256;

/// Bytes in Arrow's row format.
type RowBytes = Box<[u8]>;

/// One task's keys: key bytes (row format) → the row (row format, the table's columns).
#[derive(Debug, Default)]
struct Shard {
    rows: BTreeMap<Box<[u8]>, Box<[u8]>>,
    bytes: usize,
}

struct StoreInner {
    name: String,
    schema: SchemaRef,
    key: Vec<String>,
    key_indices: Vec<usize>,
    max_bytes: usize,
    shards: RwLock<Vec<Arc<RwLock<Shard>>>>,
    /// Row converters are not `Sync` for reads of many threads at once; readers take turns.
    keys: Mutex<RowConverter>,
    values: Mutex<RowConverter>,
}

/// A named materialized table (see the module docs). Cheap to clone; every clone is the same
/// store.
#[derive(Clone)]
pub struct TableStore {
    inner: Arc<StoreInner>,
}

impl fmt::Debug for TableStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TableStore({})", self.inner.name)
    }
}

impl PartialEq for TableStore {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for TableStore {}

impl std::hash::Hash for TableStore {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.inner.name.hash(state);
    }
}

fn converter(schema: &Schema, indices: &[usize]) -> Result<RowConverter> {
    Ok(RowConverter::new(
        indices
            .iter()
            .map(|&i| SortField::new(schema.field(i).data_type().clone()))
            .collect(),
    )?)
}

impl TableStore {
    /// A store named `name` of rows of `schema`, keyed by `key`, holding at most `max_bytes`.
    pub fn new(name: &str, schema: SchemaRef, key: &[String], max_bytes: usize) -> Result<Self> {
        if key.is_empty() {
            return Err(EngineError::config(format!(
                "store '{name}' needs key columns"
            )));
        }
        let key_indices = key
            .iter()
            .map(|k| {
                schema.index_of(k).map_err(|_| {
                    EngineError::config(format!("store '{name}' has no key column '{k}'"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let all: Vec<usize> = (0..schema.fields().len()).collect();
        Ok(TableStore {
            inner: Arc::new(StoreInner {
                name: name.to_owned(),
                keys: Mutex::new(converter(&schema, &key_indices)?),
                values: Mutex::new(converter(&schema, &all)?),
                schema,
                key: key.to_vec(),
                key_indices,
                max_bytes,
                shards: RwLock::new(Vec::new()),
            }),
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The table's columns (what reads return).
    pub fn schema(&self) -> SchemaRef {
        self.inner.schema.clone()
    }

    /// Its key columns.
    pub fn key(&self) -> &[String] {
        &self.inner.key
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .read()
            .iter()
            .map(|s| s.read().rows.len())
            .sum()
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes its rows take (keys and values in row format).
    pub fn bytes(&self) -> usize {
        self.inner
            .shards
            .read()
            .iter()
            .map(|s| s.read().bytes)
            .sum()
    }

    /// The shard of task `task` of `tasks`, made when the query starts.
    fn shard(&self, task: usize, tasks: usize) -> Arc<RwLock<Shard>> {
        let mut shards = self.inner.shards.write();
        if shards.len() != tasks {
            *shards = (0..tasks).map(|_| Arc::default()).collect();
        }
        shards[task].clone()
    }

    /// The key's row in the row format, from one value per key column (cast to its type).
    fn key_row(&self, key: &[ScalarValue]) -> Result<Vec<u8>> {
        if key.len() != self.inner.key.len() {
            return Err(EngineError::config(format!(
                "store '{}' is keyed by {} ({} columns); {} values given",
                self.inner.name,
                self.inner.key.join(", "),
                self.inner.key.len(),
                key.len()
            )));
        }
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(key.len());
        for (v, &i) in key.iter().zip(&self.inner.key_indices) {
            let t = self.inner.schema.field(i).data_type();
            let v = v.cast_to(t).map_err(|e| {
                EngineError::config(format!(
                    "store '{}': {v:?} is not a value of key column '{}' ({t}): {e}",
                    self.inner.name,
                    self.inner.schema.field(i).name()
                ))
            })?;
            columns.push(v.to_array()?);
        }
        let rows = self.inner.keys.lock().convert_columns(&columns)?;
        Ok(rows.row(0).as_ref().to_vec())
    }

    fn to_batch(&self, rows: Vec<Box<[u8]>>) -> Result<RecordBatch> {
        let values = self.inner.values.lock();
        let parser = values.parser();
        let parsed: Vec<_> = rows.iter().map(|r| parser.parse(r)).collect();
        let columns = values.convert_rows(parsed)?;
        Ok(RecordBatch::try_new_with_options(
            self.inner.schema.clone(),
            columns,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(rows.len())),
        )?)
    }

    /// The row of `key` (one value per key column), as a batch of one row; `None` when the
    /// table has no such key.
    pub fn get(&self, key: &[ScalarValue]) -> Result<Option<RecordBatch>> {
        let key = self.key_row(key)?;
        let found = self
            .inner
            .shards
            .read()
            .iter()
            .find_map(|s| s.read().rows.get(key.as_slice()).cloned());
        found.map(|row| self.to_batch(vec![row])).transpose()
    }

    /// The rows with keys from `from` (inclusive) up to `to` (exclusive), in key order; either
    /// bound may be open.
    pub fn range(
        &self,
        from: Option<&[ScalarValue]>,
        to: Option<&[ScalarValue]>,
    ) -> Result<RecordBatch> {
        let from = from.map(|k| self.key_row(k)).transpose()?;
        let to = to.map(|k| self.key_row(k)).transpose()?;
        let lower = from.as_deref().map_or(Bound::Unbounded, Bound::Included);
        let upper = to.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let mut found: Vec<(RowBytes, RowBytes)> = Vec::new();
        for shard in self.inner.shards.read().iter() {
            let shard = shard.read();
            found.extend(
                shard
                    .rows
                    .range::<[u8], _>((lower, upper))
                    .map(|(k, v)| (k.clone(), v.clone())),
            );
        }
        found.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.to_batch(found.into_iter().map(|(_, v)| v).collect())
    }

    /// Every row, in key order.
    pub fn scan(&self) -> Result<RecordBatch> {
        self.range(None, None)
    }
}

/// The state rows of a shard: key and row bytes.
fn state_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Binary, false),
        Field::new("row", DataType::Binary, false),
    ]))
}

/// Writes a table's rows to its store and passes them on (see the module docs).
pub struct MaterializeOperator {
    name: String,
    store: TableStore,
    keys: Vec<Arc<dyn PhysicalExpr>>,
    key_rows: RowConverter,
    value_rows: RowConverter,
    deleted: Option<usize>,
    /// This task's shard, once the runtime said which task this is.
    shard: Option<Arc<RwLock<Shard>>>,
    metrics: OperatorMetrics,
}

impl fmt::Debug for MaterializeOperator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Materialize({} into {})", self.name, self.store.name())
    }
}

impl MaterializeOperator {
    /// Writes rows of the store's schema to `store`; `keys` evaluate its key columns.
    pub(crate) fn new(
        name: String,
        store: TableStore,
        keys: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<MaterializeOperator> {
        let schema = store.schema();
        let all: Vec<usize> = (0..schema.fields().len()).collect();
        Ok(MaterializeOperator {
            name,
            key_rows: converter(&schema, &store.inner.key_indices)?,
            value_rows: converter(&schema, &all)?,
            deleted: schema
                .index_of(DELETED)
                .ok()
                .filter(|&i| schema.field(i).data_type() == &DataType::Boolean),
            store,
            keys,
            shard: None,
            metrics: OperatorMetrics::default(),
        })
    }

    fn shard(&mut self) -> Arc<RwLock<Shard>> {
        self.shard
            .get_or_insert_with(|| self.store.shard(0, 1))
            .clone()
    }
}

impl Operator for MaterializeOperator {
    fn name(&self) -> &str {
        &self.name
    }

    fn schema(&self) -> SchemaRef {
        self.store.schema()
    }

    fn state_follows_watermark(&self) -> bool {
        false
    }

    fn process(&mut self, batch: &RecordBatch, _watermark: i64, out: &mut Emit) -> Result<()> {
        let n = batch.num_rows();
        self.metrics.rows_in += n as u64;
        let key_columns: Vec<ArrayRef> = self
            .store
            .inner
            .key_indices
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        let keys = self.key_rows.convert_columns(&key_columns)?;
        let values = self.value_rows.convert_columns(batch.columns())?;
        let deleted = self.deleted.map(|i| batch.column(i).as_boolean().clone());
        let shard = self.shard();
        let limit = self.store.inner.max_bytes;
        let mut start = 0;
        // Rows are copied before the lock is taken and replaced ones freed after it is let go,
        // so readers wait only for the map's own work.
        let mut slice: Vec<(RowBytes, Option<RowBytes>)> = Vec::with_capacity(SLICE);
        let mut replaced: Vec<RowBytes> = Vec::with_capacity(SLICE);
        while start < n {
            let end = (start + SLICE).min(n);
            slice.extend((start..end).map(|i| {
                let gone = deleted
                    .as_ref()
                    .is_some_and(|d| d.is_valid(i) && d.value(i));
                let value = (!gone).then(|| values.row(i).as_ref().into());
                (keys.row(i).as_ref().into(), value)
            }));
            let mut s = shard.write();
            for (key, value) in slice.drain(..) {
                let klen = key.len();
                let old = match value {
                    None => s.rows.remove(&key),
                    Some(value) => {
                        s.bytes += klen + value.len();
                        s.rows.insert(key, value)
                    }
                };
                if let Some(v) = old {
                    s.bytes -= klen + v.len();
                    replaced.push(v);
                }
            }
            drop(s);
            replaced.clear();
            start = end;
        }
        let held = self.store.bytes();
        if held > limit {
            return Err(EngineError::StateLimit(format!(
                "store '{}' holds {held} bytes, past its limit of {limit}; give it more \
                 (Table::materialize_with), or keep fewer or smaller rows in the table",
                self.store.name()
            )));
        }
        self.metrics.groups = shard.read().rows.len() as u64;
        self.metrics.rows_out += n as u64;
        out.batches.push(batch.clone());
        Ok(())
    }

    fn metrics(&self) -> OperatorMetrics {
        self.metrics
    }

    fn state_bytes(&self) -> usize {
        self.shard.as_ref().map_or(0, |s| s.read().bytes)
    }

    fn assign(&mut self, task: usize, tasks: usize) {
        self.shard = Some(self.store.shard(task, tasks));
    }

    fn snapshot(&mut self) -> Result<Option<RecordBatch>> {
        let shard = self.shard();
        let s = shard.read();
        let keys = BinaryArray::from_iter_values(s.rows.keys());
        let rows = BinaryArray::from_iter_values(s.rows.values());
        Ok(Some(RecordBatch::try_new(
            state_schema(),
            vec![Arc::new(keys), Arc::new(rows)],
        )?))
    }

    fn restore(&mut self, state: &RecordBatch) -> Result<()> {
        if state.num_columns() != 2 {
            return Err(EngineError::Checkpoint(format!(
                "the state of store '{}' has {} columns, not 2",
                self.store.name(),
                state.num_columns()
            )));
        }
        let keys = state.column(0).as_binary::<i32>();
        let rows = state.column(1).as_binary::<i32>();
        let shard = self.shard();
        let mut s = shard.write();
        for i in 0..state.num_rows() {
            let (k, v) = (keys.value(i), rows.value(i));
            s.bytes += k.len() + v.len();
            if let Some(old) = s.rows.insert(k.into(), v.into()) {
                s.bytes -= k.len() + old.len();
            }
        }
        Ok(())
    }

    fn state_keys(&self, state: &RecordBatch) -> Result<Vec<ArrayRef>> {
        crate::operator::row_keys(&self.key_rows, state, 0)
    }

    fn fresh(&self) -> Result<Box<dyn Operator>> {
        Ok(Box::new(MaterializeOperator::new(
            self.name.clone(),
            self.store.clone(),
            self.keys.clone(),
        )?))
    }

    fn partition_keys(&self) -> Option<Vec<Arc<dyn PhysicalExpr>>> {
        Some(self.keys.clone())
    }
}

/// A table materialized into a [`TableStore`] in a `LogicalPlan` (an extension node, so the
/// optimizer keeps every column the store holds).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MaterializeNode {
    pub input: datafusion::logical_expr::LogicalPlan,
    pub store: TableStore,
}

impl PartialOrd for MaterializeNode {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.store.name().partial_cmp(other.store.name())
    }
}

impl datafusion::logical_expr::UserDefinedLogicalNodeCore for MaterializeNode {
    fn name(&self) -> &str {
        "Materialize"
    }

    fn inputs(&self) -> Vec<&datafusion::logical_expr::LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &datafusion::common::DFSchemaRef {
        self.input.schema()
    }

    fn expressions(&self) -> Vec<datafusion::logical_expr::Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "Materialize: {}", self.store.name())
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<datafusion::logical_expr::Expr>,
        mut inputs: Vec<datafusion::logical_expr::LogicalPlan>,
    ) -> datafusion::error::Result<Self> {
        let input = inputs.pop().ok_or_else(|| {
            datafusion::error::DataFusionError::Internal("Materialize needs one input".into())
        })?;
        Ok(MaterializeNode {
            input,
            store: self.store.clone(),
        })
    }
}
