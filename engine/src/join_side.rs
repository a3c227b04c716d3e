//! Join inputs that keep state: a side of a join that is aggregated (a window's maximum
//! joined back to the bids, two aggregated tables joined) runs its keyed operators in stages
//! of their own, between the join tag and the join, so its rows meet their keys' state before
//! they meet the other side:
//!
//! ```text
//! source ─ JoinTag ─(side's group key | other's join key)─▶ SideStage ─(join key)─▶ join
//! ```
//!
//! The tag routes each side by one binary column (its keys in Arrow's row format): a side with
//! keyed operators by the first one's keys, the other by its join key. A [`SideStage`] runs one
//! keyed operator (and the stateless ones after it) on its side's rows and passes the other
//! side's rows on; it tags what its operators emit with the next route: the next keyed
//! operator's keys, or the join key. The join then meets both sides by the join key's bytes.

use std::fmt;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, RecordBatch, RecordBatchOptions, UInt8Array};
use arrow::datatypes::{DataType, SchemaRef, UInt8Type};
use datafusion::physical_expr::PhysicalExpr;

use crate::error::{EngineError, Result};
use crate::join::{encode_keys, tagged_schema};
use crate::operator::{Emit, Operator, OperatorMetrics, advance_chain, run_chain};

/// One keyed operator of a join's side, and the stateless ones after it (see the module docs).
pub struct SideStage {
    pub(crate) name: String,
    pub(crate) side: u8,
    /// The untagged layout of the rows it runs (its first operator's input).
    pub(crate) input: SchemaRef,
    /// The first keeps state and is keyed; the others keep none.
    pub(crate) operators: Vec<Box<dyn Operator>>,
    /// The types of the first operator's keys, as the route it is partitioned by encodes them.
    pub(crate) route_types: Vec<DataType>,
    /// The next route, over what the operators emit, and its types.
    pub(crate) next: Vec<Arc<dyn PhysicalExpr>>,
    pub(crate) next_types: Vec<DataType>,
    /// The tagged layout of what it emits for its side.
    pub(crate) schema: SchemaRef,
    pub(crate) metrics: OperatorMetrics,
}

impl fmt::Debug for SideStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SideStage")
            .field("name", &self.name)
            .field("side", &self.side)
            .field("operators", &self.operators)
            .finish()
    }
}

impl SideStage {
    /// A stage of `operators` (the first keyed) on `side`'s rows of layout `input`, tagging
    /// what they emit by `next` (cast to `next_types`).
    pub(crate) fn new(
        name: String,
        side: u8,
        input: SchemaRef,
        operators: Vec<Box<dyn Operator>>,
        next: Vec<Arc<dyn PhysicalExpr>>,
        next_types: Vec<DataType>,
    ) -> Result<SideStage> {
        let Some(first) = operators.first() else {
            return Err(EngineError::internal(
                "a join side's stage without operators",
            ));
        };
        let route_types = first
            .partition_keys()
            .unwrap_or_default()
            .iter()
            .map(|k| k.data_type(&input))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let output = operators.last().map_or(input.clone(), |o| o.schema());
        Ok(SideStage {
            schema: tagged_schema(&[DataType::Binary], &output),
            name,
            side,
            input,
            operators,
            route_types,
            next,
            next_types,
            metrics: OperatorMetrics::default(),
        })
    }

    /// `batches` of this side, tagged with the next route.
    fn tag(&mut self, batches: Vec<RecordBatch>, out: &mut Emit) -> Result<()> {
        for b in batches {
            let n = b.num_rows();
            let keys = self
                .next
                .iter()
                .map(|k| k.evaluate(&b).and_then(|v| v.into_array(n)))
                .collect::<datafusion::error::Result<Vec<_>>>()?;
            let mut columns: Vec<ArrayRef> = vec![
                Arc::new(UInt8Array::from_value(self.side, n)),
                encode_keys(&keys, &self.next_types, n)?,
            ];
            columns.extend(b.columns().iter().cloned());
            self.metrics.rows_out += n as u64;
            out.batches.push(RecordBatch::try_new_with_options(
                self.schema.clone(),
                columns,
                &RecordBatchOptions::new().with_row_count(Some(n)),
            )?);
        }
        Ok(())
    }
}

impl Operator for SideStage {
    fn name(&self) -> &str {
        &self.name
    }

    /// Its side's tagged layout (the other side's rows pass with theirs).
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn process(&mut self, batch: &RecordBatch, watermark: i64, out: &mut Emit) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        if batch.column(0).as_primitive::<UInt8Type>().value(0) != self.side {
            out.batches.push(batch.clone());
            return Ok(());
        }
        self.metrics.rows_in += n as u64;
        let rows = RecordBatch::try_new_with_options(
            self.input.clone(),
            batch.columns()[2..].to_vec(),
            &RecordBatchOptions::new().with_row_count(Some(n)),
        )?;
        let mut outputs = Vec::new();
        run_chain(
            &mut self.operators,
            0,
            vec![rows],
            watermark,
            &mut outputs,
            &mut out.late,
        )?;
        self.tag(outputs, out)
    }

    fn advance(&mut self, watermark: i64, out: &mut Emit) -> Result<()> {
        let mut outputs = Vec::new();
        advance_chain(&mut self.operators, watermark, &mut outputs, &mut out.late)?;
        self.tag(outputs, out)
    }

    fn metrics(&self) -> OperatorMetrics {
        let inner = self
            .operators
            .first()
            .map(|o| o.metrics())
            .unwrap_or_default();
        OperatorMetrics {
            rows_in: self.metrics.rows_in,
            rows_out: self.metrics.rows_out,
            ..inner
        }
    }

    fn state_bytes(&self) -> usize {
        self.operators.iter().map(|o| o.state_bytes()).sum()
    }

    fn snapshot(&mut self) -> Result<Option<RecordBatch>> {
        match self.operators.first_mut() {
            Some(first) => first.snapshot(),
            None => Ok(None),
        }
    }

    fn restore(&mut self, state: &RecordBatch) -> Result<()> {
        match self.operators.first_mut() {
            Some(first) => first.restore(state),
            None => Ok(()),
        }
    }

    /// The first operator's keys, encoded as the route is.
    fn state_keys(&self, state: &RecordBatch) -> Result<Vec<ArrayRef>> {
        let Some(first) = self.operators.first() else {
            return Ok(Vec::new());
        };
        let keys = first.state_keys(state)?;
        Ok(vec![encode_keys(
            &keys,
            &self.route_types,
            state.num_rows(),
        )?])
    }

    fn fresh(&self) -> Result<Box<dyn Operator>> {
        Ok(Box::new(SideStage {
            name: self.name.clone(),
            side: self.side,
            input: self.input.clone(),
            operators: self
                .operators
                .iter()
                .map(|o| o.fresh())
                .collect::<Result<Vec<_>>>()?,
            route_types: self.route_types.clone(),
            next: self.next.clone(),
            next_types: self.next_types.clone(),
            schema: self.schema.clone(),
            metrics: OperatorMetrics::default(),
        }))
    }

    fn assign(&mut self, task: usize, tasks: usize) {
        for o in &mut self.operators {
            o.assign(task, tasks);
        }
    }

    fn partition_keys(&self) -> Option<Vec<Arc<dyn PhysicalExpr>>> {
        Some(crate::join::key_columns(1))
    }
}
