//! Planning: a DataFusion `LogicalPlan` over stream sources becomes a chain of streaming
//! operators. The DSL and SQL both produce the `LogicalPlan`; DataFusion types it (the
//! analyzer's coercions) and optimizes it (projection pruning, expression simplification), then
//! [`plan_query`] maps each node:
//!
//! | LogicalPlan node | operator |
//! |---|---|
//! | `TableScan` of a [`StreamTable`] | the query's source (and a projection when pruned) |
//! | `Filter`, `Projection` | [`Stateless`]: DataFusion physical expressions per batch |
//! | `Aggregate` with a window in GROUP BY | [`AggregateOperator`], windowed |
//! | `Aggregate` with a session window | [`SessionOperator`] |
//! | `Aggregate` without | [`AggregateOperator`], updating (a changelog) |
//! | [`MapBatchesNode`] (a Rust closure) | [`MapBatches`] |
//! | [`StreamJoinNode`] (a stream–table join) | [`JoinTag`], then [`StreamTableJoin`] |
//! | [`WindowJoinNode`] (a stream–stream join) | [`JoinTag`], then [`StreamStreamJoin`] |
//! | `Filter` over a table's changelog | a projection that marks failing rows [`DELETED`] |
//! | [`ForeignKeyJoinNode`] (a foreign-key table–table join) | [`JoinTag`], then [`crate::fk_join`]'s three steps |
//! | [`TableAggregateNode`] (a table's GROUP BY) | [`Regroup`], then [`TableAggregate`] |
//! | `SubqueryAlias` | nothing (names only) |
//!
//! Anything else is refused with an error naming the construct and what to do instead: ORDER
//! BY and LIMIT need the end of their input, and a stream has none.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::{DFSchema, DFSchemaRef};
use datafusion::datasource::TableType;
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Aggregate, Expr, Extension, LogicalPlan, TableSource, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::aggregate::LoweredAggregateBuilder;
use datafusion::physical_expr::execution_props::ExecutionProps;
use datafusion::physical_expr::{PhysicalExpr, create_physical_expr};

use crate::aggregate::{AggregateCall, AggregateOperator, AggregateSpec, EmitMode, key_schema};
use crate::dedup::{DedupNode, DedupOperator};
use crate::error::{EngineError, Result};
use crate::fk_join::{ForeignKeyJoinNode, ForeignKeySpec};
use crate::format::DELETED;
use crate::join::{
    JoinSpec, JoinTag, Side, StreamJoinNode, StreamTableJoin, TableJoinNode, WindowJoinNode,
    tagged_schema,
};
use crate::join_side::SideStage;
use crate::operator::{Emit, Operator, OperatorMetrics, Stateless};
use crate::session::SessionOperator;
use crate::source::Source;
use crate::store::{MaterializeNode, MaterializeOperator, TableStore};
use crate::table_aggregate::{
    Regroup, RegroupSpec, TableAggregate, TableAggregateNode, regroup_schema,
};
use crate::table_join::{TableJoinSpec, TableTableJoin};
use crate::top_n::{TopNNode, TopNOperator};
use crate::window::{WindowKind, WindowSpec};
use crate::window_join::{StreamStreamJoin, WindowJoinSpec};

/// A stream as a table in a `LogicalPlan` (the leaf the DSL and SQL scan).
#[derive(Debug, Clone)]
pub struct StreamTable {
    name: String,
    source: Arc<dyn Source>,
}

impl StreamTable {
    pub fn new(name: impl Into<String>, source: Arc<dyn Source>) -> Arc<StreamTable> {
        Arc::new(StreamTable {
            name: name.into(),
            source,
        })
    }

    /// The stream's name in plans.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the stream reads.
    pub fn source(&self) -> &Arc<dyn Source> {
        &self.source
    }
}

impl TableSource for StreamTable {
    fn schema(&self) -> SchemaRef {
        self.source.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }
}

/// A Rust function over whole batches, as the DSL's `map_batches`/`flat_map` give it: takes a
/// batch of the input schema, returns a batch of the declared output schema (any number of
/// rows).
pub type BatchFn = Arc<dyn Fn(&RecordBatch) -> Result<RecordBatch> + Send + Sync>;

/// A [`BatchFn`] in a `LogicalPlan` (an extension node).
#[derive(Clone)]
pub struct MapBatchesNode {
    pub name: String,
    pub input: LogicalPlan,
    pub schema: DFSchemaRef,
    pub function: BatchFn,
}

impl MapBatchesNode {
    /// The node as a plan over `input`, producing `schema`.
    pub fn plan(
        name: impl Into<String>,
        input: LogicalPlan,
        schema: SchemaRef,
        function: BatchFn,
    ) -> Result<LogicalPlan> {
        let schema = Arc::new(DFSchema::try_from(schema.as_ref().clone())?);
        Ok(LogicalPlan::Extension(Extension {
            node: Arc::new(MapBatchesNode {
                name: name.into(),
                input,
                schema,
                function,
            }),
        }))
    }
}

impl fmt::Debug for MapBatchesNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MapBatches({})", self.name)
    }
}

impl PartialEq for MapBatchesNode {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && Arc::ptr_eq(&self.function, &other.function)
            && self.input == other.input
    }
}

impl Eq for MapBatchesNode {}

impl PartialOrd for MapBatchesNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        self.name.partial_cmp(&other.name)
    }
}

impl Hash for MapBatchesNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.input.hash(state);
    }
}

impl UserDefinedLogicalNodeCore for MapBatchesNode {
    fn name(&self) -> &str {
        "MapBatches"
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
        write!(f, "MapBatches: {}", self.name)
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> datafusion::error::Result<Self> {
        let input = inputs.pop().ok_or_else(|| {
            datafusion::error::DataFusionError::Internal("MapBatches needs one input".into())
        })?;
        Ok(MapBatchesNode {
            input,
            ..self.clone()
        })
    }
}

/// The operator of a [`MapBatchesNode`].
pub struct MapBatches {
    name: String,
    function: BatchFn,
    schema: SchemaRef,
    metrics: OperatorMetrics,
}

impl fmt::Debug for MapBatches {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MapBatches({})", self.name)
    }
}

impl Operator for MapBatches {
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
        let result = (self.function)(batch)?;
        if result.schema().fields() != self.schema.fields() {
            return Err(EngineError::Plan(format!(
                "the function of '{}' returned columns {:?}, not the declared {:?}",
                self.name,
                result.schema().fields(),
                self.schema.fields()
            )));
        }
        if result.num_rows() > 0 {
            self.metrics.rows_out += result.num_rows() as u64;
            out.batches.push(RecordBatch::try_new(
                self.schema.clone(),
                result.columns().to_vec(),
            )?);
        }
        Ok(())
    }

    fn metrics(&self) -> OperatorMetrics {
        self.metrics
    }

    fn renamed(&self, name: String) -> Result<Box<dyn Operator>> {
        Ok(Box::new(MapBatches {
            name,
            function: self.function.clone(),
            schema: self.schema.clone(),
            metrics: OperatorMetrics::default(),
        }))
    }

    fn fresh(&self) -> Result<Box<dyn Operator>> {
        self.renamed(self.name.clone())
    }
}

/// Merged streams: a batch of input `i` (the query's source `i`) runs through the (stateless)
/// chain of each branch that reads that source, and what they emit is the merge's output, in
/// the merge's schema. Branches of one source (a stream split and merged again) each see its
/// every batch.
#[derive(Debug)]
pub struct Merge {
    name: String,
    branches: Vec<Branch>,
    schema: SchemaRef,
    metrics: OperatorMetrics,
}

/// One merged stream: the source it reads (`None`: a merge itself, which takes any input), and
/// its operators.
#[derive(Debug)]
struct Branch {
    input: Option<usize>,
    operators: Vec<Box<dyn Operator>>,
}

impl Merge {
    fn restamp(&self, outputs: Vec<RecordBatch>, out: &mut Emit) -> Result<u64> {
        let mut rows = 0;
        for b in outputs {
            rows += b.num_rows() as u64;
            // The branches' columns may be named differently; the merge's names hold.
            out.batches.push(RecordBatch::try_new(
                self.schema.clone(),
                b.columns().to_vec(),
            )?);
        }
        Ok(rows)
    }
}

impl Operator for Merge {
    fn name(&self) -> &str {
        &self.name
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn state_follows_watermark(&self) -> bool {
        self.branches
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
        let mut outputs = Vec::new();
        for branch in &mut self.branches {
            if branch.input.is_some_and(|i| i != input) {
                continue;
            }
            crate::operator::run_input(
                &mut branch.operators,
                input,
                batch.clone(),
                watermark,
                &mut outputs,
                &mut out.late,
            )?;
        }
        self.metrics.rows_out += self.restamp(outputs, out)?;
        Ok(())
    }

    fn advance(&mut self, watermark: i64, out: &mut Emit) -> Result<()> {
        let mut outputs = Vec::new();
        for branch in &mut self.branches {
            crate::operator::advance_chain(
                &mut branch.operators,
                watermark,
                &mut outputs,
                &mut out.late,
            )?;
        }
        self.metrics.rows_out += self.restamp(outputs, out)?;
        Ok(())
    }

    fn metrics(&self) -> OperatorMetrics {
        self.metrics
    }

    fn state_bytes(&self) -> usize {
        self.branches
            .iter()
            .flat_map(|b| &b.operators)
            .map(|op| op.state_bytes())
            .sum()
    }

    fn fresh(&self) -> Result<Box<dyn Operator>> {
        Ok(Box::new(Merge {
            name: self.name.clone(),
            branches: self
                .branches
                .iter()
                .map(|b| {
                    Ok(Branch {
                        input: b.input,
                        operators: b
                            .operators
                            .iter()
                            .map(|op| op.fresh())
                            .collect::<Result<Vec<_>>>()?,
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            schema: self.schema.clone(),
            metrics: OperatorMetrics::default(),
        }))
    }

    fn renamed(&self, name: String) -> Result<Box<dyn Operator>> {
        let mut op = Merge {
            name: self.name.clone(),
            branches: Vec::new(),
            schema: self.schema.clone(),
            metrics: OperatorMetrics::default(),
        };
        for (i, branch) in self.branches.iter().enumerate() {
            op.branches.push(Branch {
                input: branch.input,
                operators: branch
                    .operators
                    .iter()
                    .enumerate()
                    .map(|(j, o)| o.renamed(format!("{name}.{}.{}", i + 1, j + 1)))
                    .collect::<Result<Vec<_>>>()?,
            });
        }
        op.name = name;
        Ok(Box::new(op))
    }
}

/// Choices the plan does not carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// When windowed aggregations emit.
    pub emit: EmitMode,
}

/// A source of a query, with the name of its stream in the plan.
#[derive(Debug, Clone)]
pub struct QuerySource {
    pub source: Arc<dyn Source>,
    pub name: String,
}

/// A plan ready to run: its sources, its operators in order, its output schema.
#[derive(Debug)]
pub struct PhysicalQuery {
    /// The sources read: a batch of source `i` enters the first operator as input `i` (only a
    /// merge reads more than one).
    pub sources: Vec<QuerySource>,
    pub operators: Vec<Box<dyn Operator>>,
    /// The stores its tables are materialized in (interactive queries).
    pub stores: Vec<TableStore>,
    pub schema: SchemaRef,
    /// The optimized logical plan, for `describe`/EXPLAIN.
    pub plan: LogicalPlan,
}

/// Types and optimizes a plan with DataFusion's analyzer and optimizer.
pub fn optimize(plan: &LogicalPlan) -> Result<LogicalPlan> {
    let state = SessionStateBuilder::new().with_default_features().build();
    state
        .optimize(plan)
        .map_err(|e| EngineError::Plan(e.strip_backtrace()))
}

/// Plans `plan` into operators (see the module docs).
pub fn plan_query(plan: &LogicalPlan, options: PlanOptions) -> Result<PhysicalQuery> {
    let optimized = optimize(plan)?;
    let mut planner = Planner {
        options,
        operators: Vec::new(),
        sources: Vec::new(),
        stores: Vec::new(),
    };
    planner.node(&optimized)?;
    let schema = Arc::new(optimized.schema().as_arrow().clone());
    Ok(PhysicalQuery {
        sources: planner.sources,
        operators: planner.operators,
        stores: planner.stores,
        schema,
        plan: optimized,
    })
}

impl PhysicalQuery {
    /// The names of its sources' streams, for messages: `bids` or `bids, auctions`.
    pub fn source_names(&self) -> String {
        let names: Vec<&str> = self.sources.iter().map(|s| s.name.as_str()).collect();
        names.join(", ")
    }
}

/// The columns `names` of `schema` as expressions (qualified as the schema has them); `what`
/// names the plan that must have them, for the error.
fn key_columns(schema: &DFSchema, names: &[String], what: &str) -> Result<Vec<Expr>> {
    names
        .iter()
        .map(|k| {
            schema
                .qualified_field_with_unqualified_name(k)
                .map(|(q, f)| Expr::Column(datafusion::common::Column::new(q.cloned(), f.name())))
                .map_err(|_| EngineError::plan(format!("{what} has no key column '{k}'")))
        })
        .collect()
}

/// Whether `plan` gives a table: a changelog (with [`DELETED`]) or an aggregation's updates
/// (under projections, filters, aliases and stores).
fn is_table(plan: &LogicalPlan) -> bool {
    if is_changelog(plan.schema()) {
        return true;
    }
    match plan {
        LogicalPlan::Aggregate(_) => true,
        LogicalPlan::Projection(p) => is_table(&p.input),
        LogicalPlan::Filter(f) => is_table(&f.input),
        LogicalPlan::SubqueryAlias(a) => is_table(&a.input),
        LogicalPlan::Extension(e) => e
            .node
            .as_any()
            .downcast_ref::<MaterializeNode>()
            .is_some_and(|m| is_table(&m.input)),
        _ => false,
    }
}

/// Whether rows of `schema` are a table's changelog (they carry [`DELETED`]).
fn is_changelog(schema: &DFSchema) -> bool {
    schema.fields().iter().any(|f| f.name() == DELETED)
}

/// What a chain of operators starts at: one source's batches (its index in the query's
/// sources), or those of several (`None`: the chain starts with a merge).
type Input = Option<usize>;

/// A join's inputs as planned (see [`Planner::tag_inputs`]).
struct JoinInputs {
    tag: JoinTag,
    /// The [`SideStage`]s of sides that keep state.
    stages: Vec<Box<dyn Operator>>,
    /// Each side's tagged layout as the join takes it.
    schemas: [SchemaRef; 2],
    /// How many key columns the layouts have.
    keys: usize,
    /// When the keys are one binary column: the (left side's) types they encode.
    decoded: Option<Vec<arrow::datatypes::DataType>>,
}

struct Planner {
    options: PlanOptions,
    operators: Vec<Box<dyn Operator>>,
    /// The query's sources, shared by the branches of a merge.
    sources: Vec<QuerySource>,
    /// The stores its tables are materialized in.
    stores: Vec<TableStore>,
}

impl Planner {
    /// A stable operator name: its kind and its place in the query.
    fn name(&self, kind: &str) -> String {
        format!("{kind}_{}", self.operators.len() + 1)
    }

    fn physical(&self, expr: &Expr, input: &DFSchema) -> Result<Arc<dyn PhysicalExpr>> {
        create_physical_expr(
            expr,
            input,
            &ExecutionProps::new(),
            &PhysicalPlanningContext::default(),
        )
        .map_err(|e| EngineError::Plan(e.strip_backtrace()))
    }

    /// The index of `source` among the query's sources, added if new.
    fn input(&mut self, source: &Arc<dyn Source>, name: &str) -> usize {
        if let Some(i) = self
            .sources
            .iter()
            .position(|s| Arc::ptr_eq(&s.source, source))
        {
            return i;
        }
        self.sources.push(QuerySource {
            source: source.clone(),
            name: name.to_owned(),
        });
        self.sources.len() - 1
    }

    /// Plans `plan`'s inputs, then `plan` itself; returns what the chain starts at.
    fn node(&mut self, plan: &LogicalPlan) -> Result<Input> {
        match plan {
            LogicalPlan::TableScan(scan) => {
                let Some(stream) = scan.source.as_ref().downcast_ref::<StreamTable>() else {
                    return Err(EngineError::plan(format!(
                        "'{}' is not a stream; a continuous query reads streams (topics, \
                         generators)",
                        scan.table_name
                    )));
                };
                let source = Some(self.input(&stream.source, &stream.name));
                let full = DFSchema::try_from_qualified_schema(
                    scan.table_name.clone(),
                    &stream.source.schema(),
                )?;
                if !scan.filters.is_empty() {
                    let predicate = scan
                        .filters
                        .iter()
                        .cloned()
                        .reduce(|a, b| a.and(b))
                        .ok_or_else(|| EngineError::internal("no filters"))?;
                    let physical = self.physical(&predicate, &full)?;
                    let name = self.name("filter");
                    self.operators.push(Box::new(Stateless::filter(
                        name,
                        physical,
                        Arc::new(full.as_arrow().clone()),
                    )));
                }
                if let Some(projection) = &scan.projection {
                    let exprs = projection
                        .iter()
                        .map(|&i| {
                            let (q, f) = full.qualified_field(i);
                            self.physical(
                                &Expr::Column(datafusion::common::Column::new(
                                    q.cloned(),
                                    f.name(),
                                )),
                                &full,
                            )
                        })
                        .collect::<Result<Vec<_>>>()?;
                    let name = self.name("project");
                    self.operators.push(Box::new(Stateless::project(
                        name,
                        exprs,
                        Arc::new(scan.projected_schema.as_arrow().clone()),
                    )));
                }
                Ok(source)
            }
            LogicalPlan::Filter(filter) if is_changelog(filter.input.schema()) => {
                // A table's row that fails the filter leaves the filtered table: it deletes
                // its key (the key may have passed before).
                let source = self.node(&filter.input)?;
                let input = filter.input.schema();
                let exprs = input
                    .columns()
                    .into_iter()
                    .map(|c| {
                        let e = Expr::Column(c.clone());
                        if c.name == DELETED {
                            e.or(filter.predicate.clone().is_not_true()).alias(DELETED)
                        } else {
                            e
                        }
                    })
                    .map(|e| self.physical(&e, input))
                    .collect::<Result<Vec<_>>>()?;
                let name = self.name("filter");
                self.operators.push(Box::new(Stateless::project(
                    name,
                    exprs,
                    Arc::new(input.as_arrow().clone()),
                )));
                Ok(source)
            }
            LogicalPlan::Filter(filter) => {
                let source = self.node(&filter.input)?;
                let predicate = self.physical(&filter.predicate, filter.input.schema())?;
                let name = self.name("filter");
                self.operators.push(Box::new(Stateless::filter(
                    name,
                    predicate,
                    Arc::new(filter.input.schema().as_arrow().clone()),
                )));
                Ok(source)
            }
            LogicalPlan::Projection(projection) => {
                let source = self.node(&projection.input)?;
                let exprs = projection
                    .expr
                    .iter()
                    .map(|e| self.physical(e, projection.input.schema()))
                    .collect::<Result<Vec<_>>>()?;
                let name = self.name("project");
                self.operators.push(Box::new(Stateless::project(
                    name,
                    exprs,
                    Arc::new(projection.schema.as_arrow().clone()),
                )));
                Ok(source)
            }
            LogicalPlan::SubqueryAlias(alias) => self.node(&alias.input),
            LogicalPlan::Aggregate(aggregate) => {
                let source = self.node(&aggregate.input)?;
                let operator = self.aggregate(aggregate)?;
                self.operators.push(operator);
                Ok(source)
            }
            LogicalPlan::Extension(ext) => self.extension(ext),
            LogicalPlan::Sort(_) => Err(EngineError::plan(
                "ORDER BY cannot run on a stream: sorting needs the end of the input, and a \
                 stream has none. Drop the ORDER BY, or sort the results of a bounded query \
                 over the topic's history",
            )),
            LogicalPlan::Limit(_) => Err(EngineError::plan(
                "LIMIT cannot be planned inside a continuous query; ask the runtime to stop \
                 after n results instead (a push query's LIMIT)",
            )),
            LogicalPlan::Join(_) => Err(EngineError::plan(
                "a plain join cannot run continuously: it does not say how its inputs meet in \
                 time. Join a stream with a table (Stream::join), two streams within a time \
                 bound (Stream::window_join) or two tables (Table::join)",
            )),
            LogicalPlan::Union(union) => {
                let operator = self.union(union)?;
                self.operators.push(Box::new(operator));
                Ok(None)
            }
            LogicalPlan::Window(_) => Err(EngineError::plan(
                "OVER (...) window functions cannot run on a stream; group by a window \
                 (tumble, hop, session) instead",
            )),
            LogicalPlan::Distinct(_) => Err(EngineError::plan(
                "DISTINCT on a stream is not supported; GROUP BY the columns instead",
            )),
            other => Err(EngineError::plan(format!(
                "'{}' cannot run in a continuous query",
                other.display()
            ))),
        }
    }

    /// A merge of streams: each input is planned as its own chain from its source; a batch of
    /// a source runs through the chains that read it. The inputs keep no state before the
    /// merge (their rows would need an exchange of their own).
    fn union(&mut self, union: &datafusion::logical_expr::Union) -> Result<Merge> {
        let mut branches = Vec::with_capacity(union.inputs.len());
        let name = self.name("merge");
        for input in &union.inputs {
            let (input, operators) = self.branch(
                input,
                Some("a merged stream is aggregated before the merge"),
            )?;
            // Unique names: the branch's operators under the merge's.
            let operators = operators
                .into_iter()
                .enumerate()
                .map(|(i, op)| op.renamed(format!("{name}.{}.{}", branches.len() + 1, i + 1)))
                .collect::<Result<Vec<_>>>()?;
            branches.push(Branch { input, operators });
        }
        if branches.is_empty() {
            return Err(EngineError::plan("a merge of no streams"));
        }
        Ok(Merge {
            name,
            branches,
            schema: Arc::new(union.schema.as_arrow().clone()),
            metrics: OperatorMetrics::default(),
        })
    }

    /// Plans an extension node: Quiver's own (materialize, dedup, top-N, joins, Rust
    /// closures over batches); any other cannot run continuously.
    fn extension(&mut self, ext: &Extension) -> Result<Input> {
        let any = ext.node.as_any();
        if let Some(node) = any.downcast_ref::<MaterializeNode>() {
            return self.materialize(node);
        }
        if let Some(node) = any.downcast_ref::<DedupNode>() {
            return self.dedup(node);
        }
        if let Some(node) = any.downcast_ref::<TopNNode>() {
            return self.top_n(node);
        }
        if let Some(node) = any.downcast_ref::<TableAggregateNode>() {
            return self.table_aggregate(node);
        }
        let (inputs, join): (JoinInputs, Vec<Box<dyn Operator>>) =
            if let Some(node) = any.downcast_ref::<ForeignKeyJoinNode>() {
                self.foreign_key_join(node)?
            } else if let Some(node) = any.downcast_ref::<TableJoinNode>() {
                let (inputs, join) = self.table_join(node)?;
                (inputs, vec![Box::new(join)])
            } else if let Some(node) = any.downcast_ref::<WindowJoinNode>() {
                let (inputs, join) = self.window_join(node)?;
                (inputs, vec![Box::new(join)])
            } else if let Some(node) = any.downcast_ref::<StreamJoinNode>() {
                let (inputs, join) = self.join(node)?;
                (inputs, vec![Box::new(join)])
            } else if let Some(node) = any.downcast_ref::<MapBatchesNode>() {
                let source = self.node(&node.input)?;
                self.operators.push(Box::new(MapBatches {
                    name: node.name.clone(),
                    function: node.function.clone(),
                    schema: Arc::new(node.schema.as_arrow().clone()),
                    metrics: OperatorMetrics::default(),
                }));
                return Ok(source);
            } else {
                return Err(EngineError::plan(format!(
                    "the plan node '{}' cannot run in a continuous query",
                    ext.node.name()
                )));
            };
        // A join's inputs are planned in its tag: the chain starts with several sources. Sides
        // that keep state run their keyed operators in stages of their own before the join.
        self.operators.push(Box::new(inputs.tag));
        self.operators.extend(inputs.stages);
        self.operators.extend(join);
        Ok(None)
    }

    /// A table kept in a store (see [`crate::store`]).
    fn materialize(&mut self, node: &MaterializeNode) -> Result<Input> {
        let source = self.node(&node.input)?;
        let schema = node.input.schema();
        let keys = key_columns(
            schema,
            node.store.key(),
            &format!("the table of store '{}'", node.store.name()),
        )?
        .iter()
        .map(|k| self.physical(k, schema))
        .collect::<Result<Vec<_>>>()?;
        let name = self.name("materialize");
        self.operators.push(Box::new(MaterializeOperator::new(
            name,
            node.store.clone(),
            keys,
        )?));
        self.stores.push(node.store.clone());
        Ok(source)
    }

    /// A deduplication (see [`crate::dedup`]).
    fn dedup(&mut self, node: &DedupNode) -> Result<Input> {
        let source = self.node(&node.input)?;
        let schema = node.input.schema();
        let keys = node
            .keys
            .iter()
            .map(|k| self.physical(k, schema))
            .collect::<Result<Vec<_>>>()?;
        let name = self.name("dedup");
        self.operators.push(Box::new(DedupOperator::new(
            name,
            keys,
            node.size_ms,
            node.grace_ms,
            Arc::new(schema.as_arrow().clone()),
        )?));
        Ok(source)
    }

    /// A top-N (see [`crate::top_n`]).
    fn top_n(&mut self, node: &TopNNode) -> Result<Input> {
        let source = self.node(&node.input)?;
        let schema = node.input.schema();
        let index = |c: &str| {
            schema
                .qualified_field_with_unqualified_name(c)
                .and_then(|(q, f)| {
                    schema.index_of_column(&datafusion::common::Column::new(q.cloned(), f.name()))
                })
                .map_err(|e| EngineError::Plan(e.strip_backtrace()))
        };
        let group = node
            .group
            .iter()
            .map(|c| index(c))
            .collect::<Result<Vec<_>>>()?;
        let keys = group
            .iter()
            .map(|&i| {
                let f = schema.field(i);
                Arc::new(datafusion::physical_expr::expressions::Column::new(
                    f.name(),
                    i,
                )) as Arc<dyn PhysicalExpr>
            })
            .collect();
        let name = self.name("top_n");
        self.operators.push(Box::new(TopNOperator::new(
            name,
            Arc::new(schema.as_arrow().clone()),
            group,
            index(&node.order_by)?,
            node.descending,
            node.n,
            keys,
            Arc::new(node.schema.as_arrow().clone()),
        )?));
        Ok(source)
    }

    /// One side of a merge or join, planned from its source with the query's sources shared.
    /// A merge's inputs may keep no state (`what` says why, when one does); a join's may (see
    /// [`crate::join_side`]).
    fn branch(
        &mut self,
        plan: &LogicalPlan,
        what: Option<&str>,
    ) -> Result<(Input, Vec<Box<dyn Operator>>)> {
        let mut branch = Planner {
            options: self.options,
            operators: Vec::new(),
            sources: std::mem::take(&mut self.sources),
            stores: Vec::new(),
        };
        let planned = branch.node(plan);
        self.sources = std::mem::take(&mut branch.sources);
        self.stores.append(&mut branch.stores);
        let input = planned?;
        if let Some(what) = what
            && let Some(op) = branch
                .operators
                .iter()
                .find(|op| op.partition_keys().is_some())
        {
            return Err(EngineError::plan(format!(
                "{what} ('{}'); this is not supported yet: write the aggregated stream to a \
                 topic and read that",
                op.name()
            )));
        }
        Ok((input, branch.operators))
    }

    /// Both sides of a join planned from their sources and tagged with their keys (see
    /// [`crate::join`]): the [`JoinTag`] that runs first, and the stages of sides that keep
    /// state. Keys compare in the right side's types.
    fn join_inputs(
        &mut self,
        name: &str,
        sides: [(&LogicalPlan, &[Expr], &str); 2],
    ) -> Result<JoinInputs> {
        self.tag_inputs(name, sides, false)
    }

    /// [`Planner::join_inputs`]; with `own_types`, each side's keys keep their own number and
    /// types and are compared as bytes (a foreign-key join's). Keys are one binary column (see
    /// [`JoinTag::encode_keys`]) then, and whenever a side keeps state: such a side is routed
    /// by its first keyed operator's keys, and each of its keyed operators runs in a
    /// [`SideStage`] that routes what it emits by the next one's keys, or the join key.
    fn tag_inputs(
        &mut self,
        name: &str,
        sides: [(&LogicalPlan, &[Expr], &str); 2],
        own_types: bool,
    ) -> Result<JoinInputs> {
        use arrow::datatypes::DataType;
        let tag_name = format!("{name}.inputs");
        let mut planned = Vec::with_capacity(2);
        for (plan, keys, what) in sides {
            let (input, operators) = self.branch(plan, None)?;
            if let Some(op) = operators.iter().find(|op| op.mixes_layouts()) {
                return Err(EngineError::plan(format!(
                    "the {what} side of join '{name}' is itself a join ('{}'); this is not \
                     supported yet: write the joined stream to a topic and join that",
                    op.name()
                )));
            }
            let keys = keys
                .iter()
                .map(|k| self.physical(k, plan.schema()))
                .collect::<Result<Vec<_>>>()?;
            planned.push((input, operators, keys, plan.schema().clone()));
        }
        // The types each side's join keys compare in.
        let mut join_types: [Vec<DataType>; 2] = [Vec::new(), Vec::new()];
        if own_types {
            for (side, p) in planned.iter().enumerate() {
                join_types[side] =
                    p.2.iter()
                        .map(|k| k.data_type(p.3.as_arrow()))
                        .collect::<datafusion::error::Result<_>>()?;
            }
        } else {
            for (i, k) in planned[1].2.iter().enumerate() {
                let right = k.data_type(planned[1].3.as_arrow())?;
                let left = planned[0].2[i].data_type(planned[0].3.as_arrow())?;
                if !arrow::compute::can_cast_types(&left, &right) {
                    return Err(EngineError::plan(format!(
                        "join '{name}': the key {} is {left} on the {} side, which does not \
                         compare with {} ({right}) on the {} side",
                        sides[0].1[i], sides[0].2, sides[1].1[i], sides[1].2
                    )));
                }
                join_types[1].push(right);
            }
            join_types[0] = join_types[1].clone();
        }
        let stateful = planned
            .iter()
            .any(|p| p.1.iter().any(|op| op.partition_keys().is_some()));
        let encode = own_types || stateful;
        let tag_types = if encode {
            vec![DataType::Binary]
        } else {
            join_types[1].clone()
        };
        let mut built = Vec::with_capacity(2);
        let mut stages: Vec<Box<dyn Operator>> = Vec::new();
        let mut schemas = Vec::with_capacity(2);
        for (side, (input, ops, join_keys, schema)) in planned.into_iter().enumerate() {
            schemas.push(tagged_schema(&tag_types, schema.as_arrow()));
            let first_keyed = ops
                .iter()
                .position(|op| op.partition_keys().is_some())
                .unwrap_or(ops.len());
            let mut ops = ops.into_iter();
            let prefix = ops
                .by_ref()
                .take(first_keyed)
                .enumerate()
                .map(|(i, op)| op.renamed(format!("{tag_name}.{}.{}", side + 1, i + 1)))
                .collect::<Result<Vec<_>>>()?;
            // The keyed operators, each with the stateless ones after it.
            let mut segments: Vec<Vec<Box<dyn Operator>>> = Vec::new();
            for op in ops {
                match segments.last_mut() {
                    Some(segment) if op.partition_keys().is_none() => segment.push(op),
                    _ => segments.push(vec![op]),
                }
            }
            let prefix_out: SchemaRef = match (prefix.last(), input) {
                (Some(op), _) => op.schema(),
                (None, Some(i)) => self.sources[i].source.schema(),
                (None, None) => Arc::new(schema.as_arrow().clone()),
            };
            let route = |segment: &[Box<dyn Operator>], input: &SchemaRef| -> Result<_> {
                let keys = segment
                    .first()
                    .and_then(|op| op.partition_keys())
                    .unwrap_or_default();
                let types = keys
                    .iter()
                    .map(|k| k.data_type(input))
                    .collect::<datafusion::error::Result<Vec<_>>>()?;
                Ok((keys, types))
            };
            let (keys, key_types) = match segments.first() {
                Some(segment) => route(segment, &prefix_out)?,
                None => (join_keys.clone(), join_types[side].clone()),
            };
            built.push(Side {
                input,
                operators: prefix,
                keys,
                key_types,
                schema: tagged_schema(
                    if encode {
                        &tag_types
                    } else {
                        &join_types[side]
                    },
                    &prefix_out,
                ),
            });
            let mut stage_input = prefix_out;
            let count = segments.len();
            let mut segments = segments.into_iter().enumerate().peekable();
            while let Some((j, segment)) = segments.next() {
                let output = segment.last().map_or(stage_input.clone(), |op| op.schema());
                let (next, next_types) = match segments.peek() {
                    Some((_, following)) => route(following, &output)?,
                    None => (join_keys.clone(), join_types[side].clone()),
                };
                let stage_name = if count == 1 {
                    format!("{tag_name}.{}.state", side + 1)
                } else {
                    format!("{tag_name}.{}.state{}", side + 1, j + 1)
                };
                stages.push(Box::new(SideStage::new(
                    stage_name,
                    side as u8,
                    stage_input,
                    segment,
                    next,
                    next_types,
                )?));
                stage_input = output;
            }
        }
        let (Some(right), Some(left)) = (built.pop(), built.pop()) else {
            return Err(EngineError::internal("a join without two sides"));
        };
        let (Some(right_schema), Some(left_schema)) = (schemas.pop(), schemas.pop()) else {
            return Err(EngineError::internal("a join without two sides"));
        };
        Ok(JoinInputs {
            tag: JoinTag {
                name: tag_name,
                sides: [left, right],
                key_types: tag_types.clone(),
                encode_keys: encode,
                metrics: OperatorMetrics::default(),
            },
            stages,
            schemas: [left_schema, right_schema],
            keys: tag_types.len(),
            decoded: encode.then(|| join_types[0].clone()),
        })
    }

    /// A stream–table join (see [`crate::join`]): the tagged inputs, then the join after an
    /// exchange by key.
    fn join(&mut self, node: &StreamJoinNode) -> Result<(JoinInputs, StreamTableJoin)> {
        let name = self.name("join");
        if !is_table(&node.table) {
            return Err(EngineError::plan(format!(
                "the right side of join '{}' is not a table (it has no {DELETED} column); join \
                 a stream with a table (StreamsBuilder::table)",
                node.name
            )));
        }
        if is_changelog(node.stream.schema()) {
            return Err(EngineError::plan(format!(
                "the left side of join '{}' is a table; a stream–table join reads a stream on \
                 the left (table–table joins are not supported yet)",
                node.name
            )));
        }
        let table_keys = key_columns(
            node.table.schema(),
            &node.table_key,
            &format!("the table of join '{}'", node.name),
        )?;
        let inputs = self.join_inputs(
            &name,
            [
                (&node.stream, &node.keys, "stream"),
                (&node.table, &table_keys, "table"),
            ],
        )?;
        let table_out = node.schema.fields().len() - node.stream.schema().fields().len();
        let filter = node
            .filter
            .as_ref()
            .map(|f| self.physical(f, &node.schema))
            .transpose()?;
        let join = StreamTableJoin::new(JoinSpec {
            name,
            kind: node.kind,
            grace_ms: node.grace_ms,
            keys: inputs.keys,
            stream_schema: inputs.schemas[0].clone(),
            table_schema: inputs.schemas[1].clone(),
            table_out,
            filter,
            schema: Arc::new(node.schema.as_arrow().clone()),
        })?;
        Ok((inputs, join))
    }

    /// A foreign-key join of two tables (see [`crate::fk_join`]): the tagged inputs (each
    /// side by its key, as bytes), then its three steps.
    fn foreign_key_join(
        &mut self,
        node: &ForeignKeyJoinNode,
    ) -> Result<(JoinInputs, Vec<Box<dyn Operator>>)> {
        let name = self.name("join");
        let mut keys: Vec<Vec<Expr>> = Vec::with_capacity(2);
        for (plan, key, side) in [
            (&node.left, &node.left_key, "left"),
            (&node.right, &node.right_key, "right"),
        ] {
            if !is_table(plan) {
                return Err(EngineError::plan(format!(
                    "the {side} side of join '{}' is not a table (it has no {DELETED} column)",
                    node.name
                )));
            }
            keys.push(key_columns(
                plan.schema(),
                key,
                &format!("the {side} table of join '{}'", node.name),
            )?);
        }
        let left_schema = node.left.schema();
        let right_schema = node.right.schema();
        let foreign_key = node
            .foreign_key
            .iter()
            .map(|e| self.physical(e, left_schema))
            .collect::<Result<Vec<_>>>()?;
        let mut right_key_types = Vec::with_capacity(keys[1].len());
        for (i, k) in keys[1].iter().enumerate() {
            let right = self
                .physical(k, right_schema)?
                .data_type(right_schema.as_arrow())?;
            let left = foreign_key[i].data_type(left_schema.as_arrow())?;
            if !arrow::compute::can_cast_types(&left, &right) {
                return Err(EngineError::plan(format!(
                    "join '{}': the foreign key {} is {left}, which does not compare with the \
                     right table's key {} ({right})",
                    node.name, node.foreign_key[i], node.right_key[i]
                )));
            }
            right_key_types.push(right);
        }
        let inputs = self.tag_inputs(
            &name,
            [
                (&node.left, &keys[0], "left"),
                (&node.right, &keys[1], "right"),
            ],
            true,
        )?;
        let operators = ForeignKeySpec {
            name,
            kind: node.kind,
            left: Arc::new(left_schema.as_arrow().clone()),
            right: Arc::new(right_schema.as_arrow().clone()),
            foreign_key,
            right_key_types,
            schema: Arc::new(node.schema.as_arrow().clone()),
        }
        .operators()?;
        Ok((inputs, operators))
    }

    /// A table–table join on the tables' keys (see [`crate::table_join`]).
    fn table_join(&mut self, node: &TableJoinNode) -> Result<(JoinInputs, TableTableJoin)> {
        let name = self.name("join");
        let mut keys: Vec<Vec<Expr>> = Vec::with_capacity(2);
        for (plan, key, side) in [
            (&node.left, &node.left_key, "left"),
            (&node.right, &node.right_key, "right"),
        ] {
            if !is_table(plan) {
                return Err(EngineError::plan(format!(
                    "the {side} side of join '{}' is not a table (it has no {DELETED} column)",
                    node.name
                )));
            }
            keys.push(key_columns(
                plan.schema(),
                key,
                &format!("the {side} table of join '{}'", node.name),
            )?);
        }
        let inputs = self.join_inputs(
            &name,
            [
                (&node.left, &keys[0], "left"),
                (&node.right, &keys[1], "right"),
            ],
        )?;
        let left_fields = node.left.schema().fields();
        let left_key_columns = node
            .left_key
            .iter()
            .map(|k| {
                left_fields
                    .iter()
                    .position(|f| f.name() == k)
                    .ok_or_else(|| EngineError::internal("a left key column vanished"))
            })
            .collect::<Result<Vec<_>>>()?;
        let join = TableTableJoin::new(TableJoinSpec {
            name,
            kind: node.kind,
            keys: inputs.keys,
            schemas: inputs.schemas.clone(),
            left_key_columns,
            decoded: inputs.decoded.clone(),
            schema: Arc::new(node.schema.as_arrow().clone()),
        })?;
        Ok((inputs, join))
    }

    /// A stream–stream join within a time bound (see [`crate::window_join`]).
    fn window_join(&mut self, node: &WindowJoinNode) -> Result<(JoinInputs, StreamStreamJoin)> {
        let name = self.name("join");
        for (plan, side) in [(&node.left, "left"), (&node.right, "right")] {
            if is_changelog(plan.schema()) {
                return Err(EngineError::plan(format!(
                    "the {side} side of join '{}' is a table; a join within a time bound reads \
                     two streams (join a stream with a table with Stream::join)",
                    node.name
                )));
            }
        }
        let inputs = self.join_inputs(
            &name,
            [
                (&node.left, &node.left_keys, "left"),
                (&node.right, &node.right_keys, "right"),
            ],
        )?;
        let filter = node
            .filter
            .as_ref()
            .map(|f| self.physical(f, &node.schema))
            .transpose()?;
        let join = StreamStreamJoin::new(WindowJoinSpec {
            name,
            kind: node.kind,
            window: node.window,
            grace_ms: node.grace_ms,
            keys: inputs.keys,
            schemas: inputs.schemas.clone(),
            filter,
            schema: Arc::new(node.schema.as_arrow().clone()),
        })?;
        Ok((inputs, join))
    }

    fn aggregate(&mut self, aggregate: &Aggregate) -> Result<Box<dyn Operator>> {
        let spec = self.aggregate_spec(aggregate, None)?;
        let session = spec
            .window
            .as_ref()
            .is_some_and(|w| matches!(w.0.kind, WindowKind::Session { .. }));
        Ok(if session {
            Box::new(SessionOperator::new(spec)?)
        } else {
            Box::new(AggregateOperator::new(spec)?)
        })
    }

    /// A table's aggregation (see [`crate::table_aggregate`]): its rows regrouped by the
    /// table's key, then aggregated by the GROUP BY keys with retractions.
    fn table_aggregate(&mut self, node: &TableAggregateNode) -> Result<Input> {
        let source = self.node(&node.input)?;
        let input = node.input.schema();
        if node.key.is_empty() {
            return Err(EngineError::plan(
                "an aggregation of a table needs the table's key",
            ));
        }
        let keys = key_columns(input, &node.key, "the aggregated table")?
            .iter()
            .map(|k| self.physical(k, input))
            .collect::<Result<Vec<_>>>()?;
        let regroup = Regroup::new(RegroupSpec {
            name: self.name("regroup"),
            keys,
            input: Arc::new(input.as_arrow().clone()),
        })?;
        let (regrouped, deleted) = regroup_schema(input.as_arrow());
        let retract = deleted.unwrap_or(regrouped.fields().len() - 1);
        self.operators.push(Box::new(regroup));
        let aggregate = node.aggregate()?;
        let mut spec = self.aggregate_spec(&aggregate, Some("table_aggregate"))?;
        if spec.window.is_some() {
            return Err(EngineError::plan(
                "a table cannot be aggregated by windows: its rows have no single time. \
                 Aggregate the table's changelog as a stream to window it",
            ));
        }
        spec.schema = Arc::new(node.schema.as_arrow().clone());
        self.operators
            .push(Box::new(TableAggregate::new(spec, retract)?));
        Ok(source)
    }

    /// The spec of an aggregation; `name` the operator's kind when not the default.
    fn aggregate_spec(
        &mut self,
        aggregate: &Aggregate,
        name: Option<&str>,
    ) -> Result<AggregateSpec> {
        let input = aggregate.input.schema();
        let props = ExecutionProps::new();
        let context = PhysicalPlanningContext::default();
        let mut window = None;
        let mut keys = Vec::new();
        for (i, e) in aggregate.group_expr.iter().enumerate() {
            if matches!(e, Expr::GroupingSet(_)) {
                return Err(EngineError::plan(
                    "GROUPING SETS, CUBE and ROLLUP are not supported in continuous queries",
                ));
            }
            match WindowSpec::from_expr(e)? {
                Some((spec, time)) => {
                    if window.is_some() {
                        return Err(EngineError::plan(
                            "a GROUP BY can hold one window, not several",
                        ));
                    }
                    window = Some((spec, self.physical(&time, input)?, i));
                }
                None => keys.push(self.physical(e, input)?),
            }
        }
        let group_count = aggregate.group_expr.len();
        let output = aggregate.schema.as_arrow();
        let mut calls = Vec::with_capacity(aggregate.aggr_expr.len());
        for (i, e) in aggregate.aggr_expr.iter().enumerate() {
            let name = output.field(group_count + i).name().clone();
            let lowered =
                LoweredAggregateBuilder::new(e, input, input.as_arrow(), &props, &context)
                    .with_name(name)
                    .build()
                    .map_err(|e| EngineError::Plan(e.strip_backtrace()))?;
            if !lowered.order_bys.is_empty() {
                return Err(EngineError::plan(format!(
                    "an aggregate with ORDER BY ({e}) is not supported in continuous queries"
                )));
            }
            calls.push(AggregateCall {
                function: lowered.aggregate,
                filter: lowered.filter,
            });
        }
        let emit = if window.is_some() {
            self.options.emit
        } else {
            EmitMode::Changes
        };
        let name = self.name(match name {
            Some(name) => name,
            None if window.is_some() => "window_aggregate",
            None => "aggregate",
        });
        Ok(AggregateSpec {
            name,
            keys,
            key_schema: key_schema(output, window.as_ref().map(|w| w.2), group_count),
            window,
            calls,
            emit,
            schema: Arc::new(output.clone()),
        })
    }
}
