//! Top-N per key (SQL's `ROW_NUMBER() OVER (PARTITION BY … ORDER BY …) <= N`): a table keyed
//! by the group's key and the rank, whose changelog follows the top rows as records arrive.
//!
//! Each task keeps, per group it owns (rows are re-keyed by the group's key through the
//! exchange), its best `n` rows in order. A record that makes it into them is inserted at its
//! place; the rows it pushes down move to the next rank, and the one that falls out is
//! dropped. After each batch, every rank whose row changed in a group is emitted: an upsert of
//! `(group, rank)`, which replaces the row that held the rank before (the retraction of a row
//! that left the top set, or moved). Rows that tie keep their arrival order.

use datafusion::common::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryArray, Int64Array, RecordBatch};
use arrow::compute::SortOptions;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::common::{DFSchema, DFSchemaRef};
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, UserDefinedLogicalNodeCore};
use datafusion::physical_expr::PhysicalExpr;

use crate::error::{EngineError, Result};
use crate::operator::{Emit, Operator, OperatorMetrics};

/// The rank column of a top-N table (1 is the first).
pub const RANK: &str = "rank";

/// A top-N in a `LogicalPlan` (an extension node).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopNNode {
    pub input: LogicalPlan,
    pub group: Vec<String>,
    pub order_by: String,
    pub descending: bool,
    pub n: usize,
    pub schema: DFSchemaRef,
}

impl TopNNode {
    /// The node as a plan: the input's columns, then [`RANK`].
    pub fn plan(
        input: LogicalPlan,
        group: Vec<String>,
        order_by: String,
        descending: bool,
        n: usize,
    ) -> Result<LogicalPlan> {
        if n == 0 {
            return Err(EngineError::config("a top-N needs n above 0"));
        }
        for c in group.iter().chain(std::iter::once(&order_by)) {
            if !input.schema().has_column_with_unqualified_name(c) {
                return Err(EngineError::config(format!(
                    "a top-N names column '{c}', which the stream does not have"
                )));
            }
            if c == RANK {
                return Err(EngineError::config(format!(
                    "a top-N adds the column '{RANK}'; rename the stream's first"
                )));
            }
        }
        let mut fields: Vec<_> = input
            .schema()
            .iter()
            .map(|(q, f)| (q.cloned(), f.clone()))
            .collect();
        fields.push((None, Arc::new(Field::new(RANK, DataType::Int64, false))));
        let schema = Arc::new(DFSchema::new_with_metadata(fields, Default::default())?);
        Ok(LogicalPlan::Extension(Extension {
            node: Arc::new(TopNNode {
                input,
                group,
                order_by,
                descending,
                n,
                schema,
            }),
        }))
    }
}

impl PartialOrd for TopNNode {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        (&self.group, &self.order_by, self.n).partial_cmp(&(&other.group, &other.order_by, other.n))
    }
}

impl UserDefinedLogicalNodeCore for TopNNode {
    fn name(&self) -> &str {
        "TopN"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
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
            "TopN: {} by {} {} per {}",
            self.n,
            self.order_by,
            if self.descending { "desc" } else { "asc" },
            self.group.join(", ")
        )
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> datafusion::error::Result<Self> {
        let input = inputs.pop().ok_or_else(|| {
            datafusion::error::DataFusionError::Internal("TopN needs one input".into())
        })?;
        Ok(TopNNode {
            input,
            ..self.clone()
        })
    }
}

/// A kept row: its sort key and the row (both in the row format).
#[derive(Debug, Clone)]
struct Ranked {
    sort: Box<[u8]>,
    row: OwnedRow,
}

/// The top-N operator (see the module docs).
pub struct TopNOperator {
    name: String,
    n: usize,
    descending: bool,
    group: Vec<usize>,
    order_by: usize,
    keys: Vec<Arc<dyn PhysicalExpr>>,
    input: SchemaRef,
    schema: SchemaRef,
    group_rows: RowConverter,
    sort_rows: RowConverter,
    value_rows: RowConverter,
    groups: HashMap<Box<[u8]>, Vec<Ranked>>,
    metrics: OperatorMetrics,
}

impl fmt::Debug for TopNOperator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopN({}, {} groups)", self.name, self.groups.len())
    }
}

impl TopNOperator {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: String,
        input: SchemaRef,
        group: Vec<usize>,
        order_by: usize,
        descending: bool,
        n: usize,
        keys: Vec<Arc<dyn PhysicalExpr>>,
        schema: SchemaRef,
    ) -> Result<TopNOperator> {
        let field = |i: usize| SortField::new(input.field(i).data_type().clone());
        Ok(TopNOperator {
            group_rows: RowConverter::new(group.iter().map(|&i| field(i)).collect())?,
            sort_rows: RowConverter::new(vec![SortField::new_with_options(
                input.field(order_by).data_type().clone(),
                SortOptions {
                    descending,
                    nulls_first: false,
                },
            )])?,
            value_rows: RowConverter::new((0..input.fields().len()).map(field).collect())?,
            name,
            n,
            descending,
            group,
            order_by,
            keys,
            input,
            schema,
            groups: HashMap::new(),
            metrics: OperatorMetrics::default(),
        })
    }

    /// Output rows: each (group, rank) with its row.
    fn emit(&self, changed: &[(&[u8], usize)]) -> Result<RecordBatch> {
        let rows: Vec<_> = changed
            .iter()
            .map(|(g, rank)| self.groups[*g][*rank].row.row())
            .collect();
        let mut columns = self.value_rows.convert_rows(rows)?;
        columns.push(Arc::new(Int64Array::from_iter_values(
            changed.iter().map(|(_, rank)| *rank as i64 + 1),
        )));
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

fn state_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("group", DataType::Binary, false),
        Field::new("row", DataType::Binary, false),
    ]))
}

impl Operator for TopNOperator {
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
        self.metrics.rows_in += n as u64;
        let group_columns: Vec<ArrayRef> = self
            .group
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        let groups = self.group_rows.convert_columns(&group_columns)?;
        let sorts = self
            .sort_rows
            .convert_columns(&[batch.column(self.order_by).clone()])?;
        let values = self.value_rows.convert_columns(batch.columns())?;
        // The lowest rank that changed, per touched group (keys borrowed from this batch's
        // rows: nothing is copied per row).
        let mut touched: HashMap<&[u8], usize> = HashMap::new();
        for i in 0..n {
            let sort = sorts.row(i);
            let group = groups.row(i);
            // After the rows it ties with: they came first. A row below the n kept ones
            // changes nothing (and costs no allocation).
            let at = match self.groups.get(group.as_ref()) {
                Some(kept) => kept.partition_point(|r| r.sort.as_ref() <= sort.as_ref()),
                None => 0,
            };
            if at >= self.n {
                continue;
            }
            let ranked = Ranked {
                sort: sort.as_ref().into(),
                row: values.row(i).owned(),
            };
            match self.groups.get_mut(group.as_ref()) {
                Some(kept) => {
                    kept.insert(at, ranked);
                    kept.truncate(self.n);
                }
                None => {
                    self.groups.insert(group.as_ref().into(), vec![ranked]);
                }
            }
            touched
                .entry(group.data())
                .and_modify(|from| *from = (*from).min(at))
                .or_insert(at);
        }
        // A group, once it has a row, always keeps one: rows only come in.
        self.metrics.groups = self.groups.len() as u64;
        if touched.is_empty() {
            return Ok(());
        }
        let mut changed = Vec::new();
        for (g, from) in touched {
            let len = self.groups.get(g).map_or(0, Vec::len);
            changed.extend((from..len).map(|rank| (g, rank)));
        }
        // In group and rank order, whatever the hash map's.
        changed.sort_unstable();
        let batch = self.emit(&changed)?;
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
            .map(|(g, v)| {
                g.len()
                    + v.iter()
                        .map(|r| r.sort.len() + r.row.as_ref().len())
                        .sum::<usize>()
            })
            .sum()
    }

    fn snapshot(&mut self) -> Result<Option<RecordBatch>> {
        let mut groups: Vec<&[u8]> = Vec::new();
        let mut rows: Vec<&[u8]> = Vec::new();
        for (g, kept) in &self.groups {
            for r in kept {
                groups.push(g);
                rows.push(r.row.as_ref());
            }
        }
        Ok(Some(RecordBatch::try_new(
            state_schema(),
            vec![
                Arc::new(BinaryArray::from_iter_values(groups)),
                Arc::new(BinaryArray::from_iter_values(rows)),
            ],
        )?))
    }

    fn restore(&mut self, state: &RecordBatch) -> Result<()> {
        if state.num_columns() != 2 {
            return Err(EngineError::Checkpoint(format!(
                "the state of top-N '{}' has {} columns, not 2",
                self.name,
                state.num_columns()
            )));
        }
        let rows = state.column(1).as_binary::<i32>();
        let parser = self.value_rows.parser();
        let parsed: Vec<_> = (0..rows.len())
            .map(|i| parser.parse(rows.value(i)))
            .collect();
        let columns = self.value_rows.convert_rows(parsed)?;
        // The rows again, in their order (snapshots keep each group's in rank order).
        let batch = RecordBatch::try_new(self.input.clone(), columns)?;
        let mut ignored = Emit::default();
        self.process(&batch, i64::MIN, &mut ignored)?;
        self.metrics = OperatorMetrics {
            groups: self.groups.len() as u64,
            ..OperatorMetrics::default()
        };
        Ok(())
    }

    fn state_keys(&self, state: &RecordBatch) -> Result<Vec<ArrayRef>> {
        crate::operator::row_keys(&self.group_rows, state, 0)
    }

    fn fresh(&self) -> Result<Box<dyn Operator>> {
        Ok(Box::new(TopNOperator::new(
            self.name.clone(),
            self.input.clone(),
            self.group.clone(),
            self.order_by,
            self.descending,
            self.n,
            self.keys.clone(),
            self.schema.clone(),
        )?))
    }

    fn partition_keys(&self) -> Option<Vec<Arc<dyn PhysicalExpr>>> {
        Some(self.keys.clone())
    }
}
