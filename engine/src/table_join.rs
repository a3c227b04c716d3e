//! Table–table joins on the tables' keys: the result is a table with the left table's key,
//! whose changelog follows both inputs' changes (updates and deletes flow through).
//!
//! Each task keeps both tables' latest rows for the keys the exchange sends it (both sides are
//! re-keyed by their key columns through [`crate::join::JoinTag`]). A change to either side
//! recomputes that key's joined row: an upsert when there is one (inner: both sides have the
//! key; left: the left has it; full outer: either has it), a delete when there was one and is
//! no more. Changes apply in the order they arrive, so the final table is the join of the two
//! final tables whatever the interleaving; the output's event time is the later of the two
//! rows'.

use datafusion::common::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, RecordBatch, UInt8Array, UInt32Array,
};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::physical_expr::PhysicalExpr;

use crate::error::{EngineError, Result};
use crate::format::DELETED;
use crate::join::JoinKind;
use crate::operator::{Emit, Operator, OperatorMetrics};

/// One output row: the key (row format), the left and right rows (either may be missing),
/// and whether it deletes the key.
struct Change {
    key: Box<[u8]>,
    left: Option<OwnedRow>,
    right: Option<OwnedRow>,
    deleted: bool,
}

/// What a [`TableTableJoin`] is made of, from the planner.
#[derive(Debug, Clone)]
pub(crate) struct TableJoinSpec {
    pub name: String,
    pub kind: JoinKind,
    pub keys: usize,
    /// Each side's tagged layout (see [`crate::join::JoinTag`]).
    pub schemas: [SchemaRef; 2],
    /// Where the left's key columns are among its columns (after the tag and keys): a delete
    /// of a key whose left row is gone still carries the key.
    pub left_key_columns: Vec<usize>,
    /// When the key is one binary column (a side keeps state, see [`crate::join_side`]): the
    /// types of the key columns it encodes.
    pub decoded: Option<Vec<DataType>>,
    pub schema: SchemaRef,
}

/// The table–table join operator (see the module docs).
pub struct TableTableJoin {
    spec: TableJoinSpec,
    key_rows: RowConverter,
    side_rows: [RowConverter; 2],
    /// Where each side's [`DELETED`] is among its columns, if it has one.
    deleted: [Option<usize>; 2],
    tables: [HashMap<Box<[u8]>, OwnedRow>; 2],
    metrics: OperatorMetrics,
}

impl fmt::Debug for TableTableJoin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableTableJoin")
            .field("name", &self.spec.name)
            .field("kind", &self.spec.kind)
            .finish()
    }
}

fn sort_fields(fields: &[arrow::datatypes::FieldRef]) -> Vec<SortField> {
    fields
        .iter()
        .map(|f| SortField::new(f.data_type().clone()))
        .collect()
}

impl TableTableJoin {
    pub(crate) fn new(spec: TableJoinSpec) -> Result<TableTableJoin> {
        let columns = |i: usize| spec.schemas[i].fields()[1 + spec.keys..].to_vec();
        let deleted = |i: usize| columns(i).iter().position(|f| f.name() == DELETED);
        Ok(TableTableJoin {
            key_rows: RowConverter::new(sort_fields(&spec.schemas[0].fields()[1..=spec.keys]))?,
            side_rows: [
                RowConverter::new(sort_fields(&columns(0)))?,
                RowConverter::new(sort_fields(&columns(1)))?,
            ],
            deleted: [deleted(0), deleted(1)],
            tables: [HashMap::new(), HashMap::new()],
            metrics: OperatorMetrics::default(),
            spec,
        })
    }

    /// Whether a key with these rows has a joined row.
    fn joined(&self, left: bool, right: bool) -> bool {
        match self.spec.kind {
            JoinKind::Inner => left && right,
            JoinKind::Left => left,
            JoinKind::Full => left || right,
        }
    }

    /// The output rows of `out`.
    fn assemble(&self, out: &[Change]) -> Result<RecordBatch> {
        let n = out.len();
        let parser = self.key_rows.parser();
        let mut keys = self
            .key_rows
            .convert_rows(out.iter().map(|c| parser.parse(&c.key)))?;
        if let (Some(types), Some(encoded)) = (&self.spec.decoded, keys.first()) {
            let decoder =
                RowConverter::new(types.iter().map(|t| SortField::new(t.clone())).collect())?;
            let encoded = encoded.as_binary::<i32>();
            let parser = decoder.parser();
            keys =
                decoder.convert_rows((0..encoded.len()).map(|i| parser.parse(encoded.value(i))))?;
        }
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.spec.schema.fields().len());
        for side in 0..2 {
            let rows: Vec<_> = out
                .iter()
                .filter_map(|o| {
                    if side == 0 {
                        o.left.as_ref()
                    } else {
                        o.right.as_ref()
                    }
                })
                .map(|r| r.row())
                .collect();
            let values = self.side_rows[side].convert_rows(rows)?;
            let mut next = 0u32;
            let idx: UInt32Array = out
                .iter()
                .map(|o| {
                    let present = if side == 0 {
                        o.left.is_some()
                    } else {
                        o.right.is_some()
                    };
                    present.then(|| {
                        next += 1;
                        next - 1
                    })
                })
                .collect();
            for (c, values) in values.iter().enumerate() {
                if Some(c) == self.deleted[side] {
                    continue;
                }
                let key_at = (side == 0)
                    .then(|| self.spec.left_key_columns.iter().position(|&k| k == c))
                    .flatten();
                columns.push(match key_at {
                    Some(k) => {
                        let want = self.spec.schema.field(columns.len()).data_type();
                        if keys[k].data_type() == want {
                            keys[k].clone()
                        } else {
                            arrow::compute::cast(&keys[k], want)?
                        }
                    }
                    None => take(values.as_ref(), &idx, None)?,
                });
            }
        }
        columns.push(Arc::new(BooleanArray::from_iter(
            out.iter().map(|o| Some(o.deleted)),
        )));
        Ok(RecordBatch::try_new_with_options(
            self.spec.schema.clone(),
            columns,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(n)),
        )?)
    }
}

fn state_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("side", DataType::UInt8, false),
        Field::new("key", DataType::Binary, false),
        Field::new("row", DataType::Binary, false),
    ]))
}

impl Operator for TableTableJoin {
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
        let sides = batch
            .column(0)
            .as_primitive::<arrow::datatypes::UInt8Type>();
        let side = sides.value(0) as usize;
        if side > 1 || sides.iter().any(|s| s != Some(side as u8)) {
            return Err(EngineError::internal(
                "a join batch mixes rows of both sides",
            ));
        }
        let key_columns = batch.columns()[1..=self.spec.keys].to_vec();
        let keys = self.key_rows.convert_columns(&key_columns)?;
        let rows = self.side_rows[side].convert_columns(&batch.columns()[1 + self.spec.keys..])?;
        let deleted =
            self.deleted[side].map(|i| batch.column(1 + self.spec.keys + i).as_boolean().clone());
        let mut changes = Vec::new();
        for i in 0..n {
            // A null key never joins (SQL's equality).
            if key_columns.iter().any(|k| k.is_null(i)) {
                continue;
            }
            let key: Box<[u8]> = keys.row(i).as_ref().into();
            let before = self.joined(
                self.tables[0].contains_key(&key),
                self.tables[1].contains_key(&key),
            );
            let gone = deleted
                .as_ref()
                .is_some_and(|d| d.is_valid(i) && d.value(i));
            if gone {
                self.tables[side].remove(&key);
            } else {
                self.tables[side].insert(key.clone(), rows.row(i).owned());
            }
            let left = self.tables[0].get(&key).cloned();
            let right = self.tables[1].get(&key).cloned();
            if self.joined(left.is_some(), right.is_some()) {
                changes.push(Change {
                    key,
                    left,
                    right,
                    deleted: false,
                });
            } else if before {
                changes.push(Change {
                    key,
                    left: None,
                    right: None,
                    deleted: true,
                });
            }
        }
        self.metrics.groups = self.tables[0].len().max(self.tables[1].len()) as u64;
        if !changes.is_empty() {
            let batch = self.assemble(&changes)?;
            self.metrics.rows_out += batch.num_rows() as u64;
            out.batches.push(batch);
        }
        Ok(())
    }

    fn metrics(&self) -> OperatorMetrics {
        self.metrics
    }

    fn state_bytes(&self) -> usize {
        self.tables
            .iter()
            .flat_map(|t| t.iter())
            .map(|(k, v)| k.len() + v.as_ref().len())
            .sum()
    }

    fn snapshot(&mut self) -> Result<Option<RecordBatch>> {
        let mut sides = Vec::new();
        let mut keys: Vec<&[u8]> = Vec::new();
        let mut rows: Vec<&[u8]> = Vec::new();
        for (side, table) in self.tables.iter().enumerate() {
            for (k, v) in table {
                sides.push(side as u8);
                keys.push(k);
                rows.push(v.as_ref());
            }
        }
        Ok(Some(RecordBatch::try_new(
            state_schema(),
            vec![
                Arc::new(UInt8Array::from(sides)),
                Arc::new(BinaryArray::from_iter_values(keys)),
                Arc::new(BinaryArray::from_iter_values(rows)),
            ],
        )?))
    }

    fn restore(&mut self, state: &RecordBatch) -> Result<()> {
        if state.num_columns() != 3 {
            return Err(EngineError::Checkpoint(format!(
                "the state of join '{}' has {} columns, not 3",
                self.spec.name,
                state.num_columns()
            )));
        }
        let sides = state
            .column(0)
            .as_primitive::<arrow::datatypes::UInt8Type>();
        let keys = state.column(1).as_binary::<i32>();
        let rows = state.column(2).as_binary::<i32>();
        let parsers = [self.side_rows[0].parser(), self.side_rows[1].parser()];
        for i in 0..state.num_rows() {
            let side = (sides.value(i) as usize).min(1);
            self.tables[side].insert(
                keys.value(i).into(),
                parsers[side].parse(rows.value(i)).owned(),
            );
        }
        Ok(())
    }

    fn state_keys(&self, state: &RecordBatch) -> Result<Vec<ArrayRef>> {
        crate::operator::row_keys(&self.key_rows, state, 1)
    }

    fn fresh(&self) -> Result<Box<dyn Operator>> {
        Ok(Box::new(TableTableJoin::new(self.spec.clone())?))
    }

    fn partition_keys(&self) -> Option<Vec<Arc<dyn PhysicalExpr>>> {
        Some(crate::join::key_columns(self.spec.keys))
    }
}
