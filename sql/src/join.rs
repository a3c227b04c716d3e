//! Joins in continuous queries: DataFusion's SQL planner gives a plain `Join`; here each one
//! becomes the engine's join for what its inputs are (see [`quiver_engine::join`]):
//!
//! | left | right | engine node | kinds |
//! |---|---|---|---|
//! | stream | table | [`StreamJoinNode`]: each record meets the table's row for its key as of its time | inner, left |
//! | stream | stream | [`WindowJoinNode`], `WITHIN` a time bound | inner, left, full |
//! | table | table | [`TableJoinNode`] on the primary keys: a table keyed by the left's key | inner, left, full |
//! | table | table | [`ForeignKeyJoinNode`], a left column equated with the right's primary key | inner, left |
//!
//! A `RIGHT JOIN` is the left join with its inputs swapped. The `ON` clause's equalities between
//! the two sides are the join keys (a stream–table join must equate one stream expression with
//! each of the table's primary key columns); its other conditions are checked on each joined
//! row. The node is wrapped in a projection that gives back exactly the columns the SQL planner
//! gave the join, so the rest of the plan stands as it was planned. Before that, conditions
//! that read one stream's columns move below the join ([`push_filters_to_streams`]).

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, DFSchemaRef};
use datafusion::logical_expr::utils::{conjunction, split_conjunction_owned};
use datafusion::logical_expr::{
    BinaryExpr, Expr, Filter, JoinType, LogicalPlan, LogicalPlanBuilder, Operator,
};
use quiver_engine::fk_join::ForeignKeyJoinNode;
use quiver_engine::format::{DELETED, ROWTIME};
use quiver_engine::join::{JoinKind, JoinWindow, StreamJoinNode, TableJoinNode, WindowJoinNode};
use quiver_engine::plan::StreamTable;
use quiver_engine::table_aggregate::TableAggregateNode;

use crate::error::SqlError;
use crate::parser::{JoinWithin, Position};

/// A table's key columns, or `None` for a stream.
pub(crate) fn table_key(plan: &LogicalPlan) -> Option<Vec<String>> {
    if !plan.schema().has_column_with_unqualified_name(DELETED) {
        return None;
    }
    match plan {
        LogicalPlan::TableScan(scan) => scan
            .source
            .as_ref()
            .downcast_ref::<StreamTable>()
            .and_then(|t| t.source().table_key()),
        LogicalPlan::SubqueryAlias(a) => table_key(&a.input),
        LogicalPlan::Filter(f) => table_key(&f.input),
        LogicalPlan::Projection(p) => table_key(&p.input),
        LogicalPlan::Extension(e) => {
            let any = e.node.as_any();
            if let Some(n) = any.downcast_ref::<TableJoinNode>() {
                Some(n.left_key.clone())
            } else if let Some(n) = any.downcast_ref::<ForeignKeyJoinNode>() {
                Some(n.left_key.clone())
            } else {
                any.downcast_ref::<TableAggregateNode>().map(|n| {
                    n.schema
                        .fields()
                        .iter()
                        .take(n.group.len())
                        .map(|f| f.name().clone())
                        .collect()
                })
            }
        }
        _ => None,
    }
}

/// Replaces every `Aggregate` over a table by the engine's aggregation of a table, which
/// follows the table's updates and deletes (see [`quiver_engine::table_aggregate`]); the
/// query's select list keeps the result's delete marker, so a group left empty is deleted
/// from its output.
pub(crate) fn plan_table_aggregates(
    plan: LogicalPlan,
    position: Position,
) -> Result<LogicalPlan, SqlError> {
    let mut error = None;
    let out = plan.transform_up(|node| {
        let LogicalPlan::Aggregate(aggregate) = node else {
            return Ok(Transformed::no(node));
        };
        let key = match table_key(&aggregate.input) {
            Some(key) => key,
            // An aggregation of an aggregation: the inner one's result is a table keyed by its
            // GROUP BY columns, each row replacing the last of its key.
            None => match aggregate_key(&aggregate.input) {
                None => return Ok(Transformed::no(LogicalPlan::Aggregate(aggregate))),
                Some(Ok(key)) => key,
                Some(Err(message)) => {
                    error = Some(SqlError::plan(message, position));
                    return Ok(Transformed::new(
                        LogicalPlan::Aggregate(aggregate),
                        false,
                        TreeNodeRecursion::Stop,
                    ));
                }
            },
        };
        match TableAggregateNode::new(
            aggregate.input.as_ref().clone(),
            key,
            aggregate.group_expr,
            aggregate.aggr_expr,
        ) {
            Ok(node) => Ok(Transformed::yes(LogicalPlan::Extension(
                datafusion::logical_expr::Extension {
                    node: std::sync::Arc::new(node),
                },
            ))),
            Err(e) => {
                error = Some(SqlError::plan(e.to_string(), position));
                Ok(Transformed::new(
                    LogicalPlan::EmptyRelation(datafusion::logical_expr::EmptyRelation {
                        produce_one_row: false,
                        schema: std::sync::Arc::new(DFSchema::empty()),
                    }),
                    true,
                    TreeNodeRecursion::Stop,
                ))
            }
        }
    });
    if let Some(e) = error {
        return Err(e);
    }
    let t = out?;
    if !t.transformed {
        return Ok(t.data);
    }
    // The plan above the aggregation was typed against the `Aggregate`: recompute its schemas,
    // and keep the delete marker through every select list above it (a subquery's too), so a
    // group left empty reaches the output as a delete and a WHERE over it filters a table.
    let plan = t
        .data
        .transform_up(|node| match node {
            LogicalPlan::Extension(_) | LogicalPlan::TableScan(_) => Ok(Transformed::no(node)),
            LogicalPlan::Projection(p) if over_table_aggregate(&p.input) => {
                let p = LogicalPlan::Projection(datafusion::logical_expr::Projection::try_new(
                    p.expr, p.input,
                )?);
                Ok(Transformed::yes(keep_marker(p)?))
            }
            other => Ok(Transformed::yes(other.recompute_schema()?)),
        })?
        .data;
    Ok(plan)
}

/// The key of an aggregation's result under select lists, filters and aliases: its GROUP BY
/// columns, by the names `plan` gives them; `Some(Err)` when a select list leaves one out (the
/// result's rows could not be told apart).
fn aggregate_key(plan: &LogicalPlan) -> Option<Result<Vec<String>, String>> {
    match plan {
        LogicalPlan::Aggregate(a) => Some(Ok(a
            .schema
            .fields()
            .iter()
            .take(a.group_expr.len())
            .map(|f| f.name().clone())
            .collect())),
        LogicalPlan::SubqueryAlias(a) => aggregate_key(&a.input),
        LogicalPlan::Filter(f) => aggregate_key(&f.input),
        LogicalPlan::Projection(p) => {
            let inner = aggregate_key(&p.input)?;
            Some(inner.and_then(|key| {
                selected_as(p, &key, |k| {
                    format!(
                        "an aggregation over an aggregation follows the inner one's groups, and \
                         its GROUP BY column '{k}' is not selected: select it in the inner query"
                    )
                })
            }))
        }
        _ => None,
    }
}

/// The names a select list gives the columns `key` (each selected as it is, or renamed or
/// cast); `missing(column)` says why when one is not selected.
pub(crate) fn selected_as(
    p: &datafusion::logical_expr::Projection,
    key: &[String],
    missing: impl Fn(&str) -> String,
) -> Result<Vec<String>, String> {
    key.iter()
        .map(|k| {
            p.expr
                .iter()
                .zip(p.schema.fields())
                .find_map(|(e, f)| {
                    let mut e = e;
                    loop {
                        e = match e {
                            Expr::Alias(a) => a.expr.as_ref(),
                            Expr::Cast(c) => c.expr.as_ref(),
                            _ => break,
                        };
                    }
                    matches!(e, Expr::Column(c) if &c.name == k).then(|| f.name().clone())
                })
                .ok_or_else(|| missing(k))
        })
        .collect()
}

/// Whether `plan` is an aggregation of a table, under select lists, filters and aliases.
fn over_table_aggregate(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Extension(e) => e.node.as_any().is::<TableAggregateNode>(),
        LogicalPlan::Projection(p) => over_table_aggregate(&p.input),
        LogicalPlan::Filter(f) => over_table_aggregate(&f.input),
        LogicalPlan::SubqueryAlias(a) => over_table_aggregate(&a.input),
        _ => false,
    }
}

/// The name a join input's columns are qualified with (its alias or its stream's name).
fn relation(plan: &LogicalPlan) -> String {
    plan.schema()
        .iter()
        .find_map(|(q, _)| q.map(|q| q.table().to_owned()))
        .unwrap_or_else(|| "input".to_owned())
}

#[derive(PartialEq)]
enum SideOf {
    Left,
    Right,
    Neither,
}

fn side_of(e: &Expr, left: &DFSchema, right: &DFSchema) -> SideOf {
    let refs = e.column_refs();
    if refs.is_empty() {
        SideOf::Neither
    } else if refs.iter().all(|c| left.has_column(c)) {
        SideOf::Left
    } else if refs.iter().all(|c| right.has_column(c)) {
        SideOf::Right
    } else {
        SideOf::Neither
    }
}

/// The `ON` clause as (left, right) equalities and the other conditions.
fn split_on(
    on: Vec<(Expr, Expr)>,
    filter: Option<Expr>,
    left: &DFSchema,
    right: &DFSchema,
) -> (Vec<(Expr, Expr)>, Vec<Expr>) {
    let mut pairs = on;
    let mut rest = Vec::new();
    for e in filter.map(split_conjunction_owned).unwrap_or_default() {
        if let Expr::BinaryExpr(BinaryExpr {
            left: l,
            op: Operator::Eq,
            right: r,
        }) = &e
        {
            match (side_of(l, left, right), side_of(r, left, right)) {
                (SideOf::Left, SideOf::Right) => {
                    pairs.push((l.as_ref().clone(), r.as_ref().clone()));
                    continue;
                }
                (SideOf::Right, SideOf::Left) => {
                    pairs.push((r.as_ref().clone(), l.as_ref().clone()));
                    continue;
                }
                _ => {}
            }
        }
        rest.push(e);
    }
    (pairs, rest)
}

/// Moves the conditions of a continuous query that read one stream's columns below the join
/// that brings the stream in, so that records are dropped before the join buffers or looks
/// them up, not after (DataFusion's optimizer does not run on continuous plans: its rules
/// assume bounded inputs). Only what filters the same rows either way moves:
/// - a `WHERE` conjunct right above a join, onto a side whose every row the join keeps (both
///   of an inner join, the left of a left join, the right of a right join), when it does not
///   read `rowtime` (above the join, that is the pair's time);
/// - an `ON` conjunct, onto a side whose unmatched rows the join drops (both of an inner join,
///   the right of a left join, the left of a right join);
///
/// and only onto a side that is a stream, whose rows are records: a filter below a table, an
/// aggregation or a ranking would drop updates and retractions of rows that pass it.
pub(crate) fn push_filters_to_streams(plan: LogicalPlan) -> Result<LogicalPlan, SqlError> {
    let out = plan.transform_down(|node| {
        Ok(match node {
            LogicalPlan::Filter(filter) => {
                let LogicalPlan::Join(join) = filter.input.as_ref() else {
                    return Ok(Transformed::no(LogicalPlan::Filter(filter)));
                };
                let mut moved = Moved::new(join, Clause::Where);
                let kept = moved.take_all(filter.predicate.clone());
                if moved.is_empty() {
                    return Ok(Transformed::no(LogicalPlan::Filter(filter)));
                }
                let join = push_on(moved.apply(join.clone())?)?.data;
                Transformed::yes(match conjunction(kept) {
                    Some(predicate) => {
                        LogicalPlan::Filter(Filter::try_new(predicate, Arc::new(join))?)
                    }
                    None => join,
                })
            }
            LogicalPlan::Join(join) => push_on(join)?,
            other => Transformed::no(other),
        })
    });
    Ok(out?.data)
}

/// Moves the conditions of `join`'s `ON` that read one side's columns onto that side, where
/// the join drops the side's unmatched rows (see [`push_filters_to_streams`]).
fn push_on(
    mut join: datafusion::logical_expr::Join,
) -> datafusion::error::Result<Transformed<LogicalPlan>> {
    let Some(on) = join.filter.take() else {
        return Ok(Transformed::no(LogicalPlan::Join(join)));
    };
    let mut moved = Moved::new(&join, Clause::On);
    join.filter = conjunction(moved.take_all(on));
    if moved.is_empty() {
        return Ok(Transformed::no(LogicalPlan::Join(join)));
    }
    Ok(Transformed::yes(LogicalPlan::Join(moved.apply(join)?)))
}

/// Where a join's conditions are written.
#[derive(Clone, Copy, PartialEq)]
enum Clause {
    /// Right above the join: they filter its output.
    Where,
    /// In its `ON`: they decide which pairs match.
    On,
}

/// Conditions on their way below a join, per side.
struct Moved {
    clause: Clause,
    /// Per side: whether conditions may move onto it.
    open: [bool; 2],
    schemas: [DFSchemaRef; 2],
    sides: [Vec<Expr>; 2],
}

impl Moved {
    fn new(join: &datafusion::logical_expr::Join, clause: Clause) -> Moved {
        // A WHERE moves onto a side whose every row the join keeps; an ON onto a side whose
        // unmatched rows it drops.
        let (left, right) = match (clause, join.join_type) {
            (_, JoinType::Inner) => (true, true),
            (Clause::Where, JoinType::Left) | (Clause::On, JoinType::Right) => (true, false),
            (Clause::Where, JoinType::Right) | (Clause::On, JoinType::Left) => (false, true),
            _ => (false, false),
        };
        Moved {
            clause,
            open: [
                left && is_stream(&join.left),
                right && is_stream(&join.right),
            ],
            schemas: [join.left.schema().clone(), join.right.schema().clone()],
            sides: [Vec::new(), Vec::new()],
        }
    }

    fn is_empty(&self) -> bool {
        self.sides.iter().all(Vec::is_empty)
    }

    /// Takes the conjuncts of `conditions` that may move; the others, which stay.
    fn take_all(&mut self, conditions: Expr) -> Vec<Expr> {
        split_conjunction_owned(conditions)
            .into_iter()
            .filter_map(|e| self.take(e))
            .collect()
    }

    /// Takes `e` when it reads columns of one side only, a side it may move onto; gives it
    /// back otherwise. Above a join, `rowtime` is the pair's time: a WHERE on it stays.
    fn take(&mut self, e: Expr) -> Option<Expr> {
        let reads_time = || e.column_refs().iter().any(|c| c.name == ROWTIME);
        if e.is_volatile() || (self.clause == Clause::Where && reads_time()) {
            return Some(e);
        }
        let side = match side_of(&e, &self.schemas[0], &self.schemas[1]) {
            SideOf::Left => 0,
            SideOf::Right => 1,
            SideOf::Neither => return Some(e),
        };
        if !self.open[side] {
            return Some(e);
        }
        self.sides[side].push(e);
        None
    }

    fn apply(
        self,
        mut join: datafusion::logical_expr::Join,
    ) -> datafusion::error::Result<datafusion::logical_expr::Join> {
        let [left, right] = self.sides;
        let below = |input: Arc<LogicalPlan>, conditions: Vec<Expr>| match conjunction(conditions) {
            Some(p) => Filter::try_new(p, input).map(|f| Arc::new(LogicalPlan::Filter(f))),
            None => Ok(input),
        };
        join.left = below(join.left, left)?;
        join.right = below(join.right, right)?;
        Ok(join)
    }
}

/// Whether every row of `plan` is a record of a stream: no table, aggregation, ranking or
/// distinct is under it.
fn is_stream(plan: &LogicalPlan) -> bool {
    if plan.schema().has_column_with_unqualified_name(DELETED) {
        return false;
    }
    let mut stream = true;
    let _ = plan.apply(|node| {
        if matches!(
            node,
            LogicalPlan::Aggregate(_)
                | LogicalPlan::Window(_)
                | LogicalPlan::Distinct(_)
                | LogicalPlan::Extension(_)
                | LogicalPlan::Limit(_)
                | LogicalPlan::Sort(_)
        ) {
            stream = false;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    stream
}

/// Replaces every `Join` in a continuous query's plan by the engine's join for its inputs.
/// `within` are the query's `WITHIN` clauses in the order its joins are written (which is the
/// order a bottom-up walk meets them).
pub(crate) fn plan_joins(
    plan: LogicalPlan,
    within: &[(JoinWithin, Position)],
    position: Position,
) -> Result<LogicalPlan, SqlError> {
    let mut subquery = false;
    let _ = plan.apply(|node| {
        subquery |= matches!(node, LogicalPlan::Subquery(_));
        node.apply_expressions(|e| {
            e.apply(|e| {
                subquery |= matches!(
                    e,
                    Expr::Exists(_) | Expr::InSubquery(_) | Expr::ScalarSubquery(_)
                );
                Ok(TreeNodeRecursion::Continue)
            })
        })
    });
    if subquery {
        return Err(SqlError::plan(
            "a subquery (IN (SELECT …), EXISTS, or a SELECT in an expression) cannot run in a \
             continuous query; join the stream with a table instead (FROM s JOIN t ON …)",
            position,
        ));
    }
    let mut next = 0usize;
    let mut error = None;
    let out = plan.transform_up(|node| {
        let LogicalPlan::Join(join) = node else {
            return Ok(Transformed::no(node));
        };
        let clause = within.get(next).copied();
        next += 1;
        match stream_join(join, clause, next, position) {
            Ok(plan) => Ok(Transformed::yes(plan)),
            Err(e) => {
                error = Some(e);
                Err(datafusion::error::DataFusionError::Plan("join".into()))
            }
        }
    });
    match (out, error) {
        (_, Some(e)) => Err(e),
        (Ok(t), None) => {
            if next < within.len() {
                let (_, at) = within[next];
                return Err(SqlError::plan(
                    "WITHIN belongs to a join of two streams (FROM a JOIN b WITHIN 1 HOUR ON …)",
                    at,
                ));
            }
            if t.transformed {
                return Ok(keep_marker(drop_lost_markers(t.data)?)?);
            }
            Ok(t.data)
        }
        (Err(e), None) => Err(e.into()),
    }
}

/// The plan above a stream's join as planned for the SQL join, but without the tables' delete
/// markers the join no longer has (a `SELECT *` selects them), its schemas recomputed.
fn drop_lost_markers(plan: LogicalPlan) -> datafusion::error::Result<LogicalPlan> {
    Ok(plan
        .transform_up(|node| match node {
            LogicalPlan::Projection(p) => {
                let input = p.input.schema().clone();
                let lost = |e: &Expr| {
                    e.column_refs()
                        .iter()
                        .any(|c| !input.has_column(c) && c.name == DELETED)
                };
                if !p.expr.iter().any(lost) {
                    return Ok(Transformed::no(LogicalPlan::Projection(p)));
                }
                let exprs: Vec<Expr> = p.expr.into_iter().filter(|e| !lost(e)).collect();
                Ok(Transformed::yes(LogicalPlan::Projection(
                    datafusion::logical_expr::Projection::try_new(exprs, p.input)?,
                )))
            }
            other => Ok(Transformed::yes(other.recompute_schema()?)),
        })?
        .data)
}

/// A query whose result is a table (a join of tables, not aggregated) keeps the delete marker
/// the query's select list leaves out, so deletes reach its output.
fn keep_marker(plan: LogicalPlan) -> datafusion::error::Result<LogicalPlan> {
    let LogicalPlan::Projection(p) = &plan else {
        return Ok(plan);
    };
    if p.schema.has_column_with_unqualified_name(DELETED)
        || !p.input.schema().has_column_with_unqualified_name(DELETED)
        || table_key(&p.input).is_none()
    {
        return Ok(plan);
    }
    let Some((q, _)) = p.input.schema().iter().find(|(_, f)| f.name() == DELETED) else {
        return Ok(plan);
    };
    let marker = Expr::Column(Column::new(q.cloned(), DELETED)).alias(DELETED);
    let mut exprs = p.expr.clone();
    exprs.push(marker);
    Ok(LogicalPlan::Projection(
        datafusion::logical_expr::Projection::try_new(exprs, p.input.clone())?,
    ))
}

/// The key of the table a query's select list is over (selected or not).
pub(crate) fn unselected_key(plan: &LogicalPlan) -> Option<Vec<String>> {
    match plan {
        LogicalPlan::Projection(p) => table_key(&p.input),
        _ => None,
    }
}

/// The key of a query's result when it is a table that is not an aggregation (a join of
/// tables): the key columns, if the query selects them all.
pub(crate) fn result_key(plan: &LogicalPlan) -> Option<Vec<String>> {
    let LogicalPlan::Projection(p) = plan else {
        return None;
    };
    let key = unselected_key(plan)?;
    let out = p.schema.as_ref();
    key.iter()
        .all(|k| out.has_column_with_unqualified_name(k))
        .then_some(key)
}

fn stream_join(
    join: datafusion::logical_expr::Join,
    within: Option<(JoinWithin, Position)>,
    number: usize,
    position: Position,
) -> Result<LogicalPlan, SqlError> {
    let at = within.map_or(position, |(_, p)| p);
    let fail = |m: String| Err(SqlError::plan(m, at));
    let (mut left, mut right) = (join.left.as_ref().clone(), join.right.as_ref().clone());
    let (mut pairs, rest) = split_on(join.on, join.filter, left.schema(), right.schema());
    // `WITHIN (before, after)` bounds the right's times around the left's.
    let mut bounds = within.map(|(w, _)| JoinWindow::new(w.before_ms, w.after_ms));
    let kind = match join.join_type {
        JoinType::Inner => JoinKind::Inner,
        JoinType::Left => JoinKind::Left,
        JoinType::Full => JoinKind::Full,
        JoinType::Right => {
            std::mem::swap(&mut left, &mut right);
            for p in &mut pairs {
                std::mem::swap(&mut p.0, &mut p.1);
            }
            // With the sides swapped, what was after the left is before the new left.
            bounds = bounds.map(|b| JoinWindow::new(b.after_ms, b.before_ms));
            JoinKind::Left
        }
        other => {
            return fail(format!(
                "a continuous query joins with [INNER] JOIN, LEFT JOIN, RIGHT JOIN or FULL JOIN \
                 (not {other})"
            ));
        }
    };
    if pairs.is_empty() {
        return fail(
            "a join needs ON with an equality between the two sides (ON a.id = b.id): records \
             meet by key"
                .to_owned(),
        );
    }
    let (left_name, right_name) = (relation(&left), relation(&right));
    let name = format!("join{number}-{left_name}-{right_name}");
    let filter = conjunction(rest);
    // An aggregating subquery is a table, keyed by its groups (the right side of a
    // stream–table join: FROM s JOIN (SELECT id, LATEST_BY_OFFSET(name) … GROUP BY id) t);
    // with WITHIN, it is the stream of its results (a windowed aggregation's, EMIT FINAL).
    let right_key = table_key(&right).or_else(|| {
        if within.is_some() || table_key(&left).is_some() || aggregate_key(&left).is_some() {
            return None;
        }
        aggregate_key(&right).and_then(Result::ok)
    });
    let (node, later_time) = match (table_key(&left), right_key) {
        (None, Some(key)) => {
            if let Some((_, p)) = within {
                return Err(SqlError::plan(
                    "WITHIN bounds a join of two streams; a stream–table join looks up the \
                     table's row as of each record's time and needs none",
                    p,
                ));
            }
            if kind == JoinKind::Full {
                return fail(
                    "a stream–table join is [INNER] JOIN or LEFT JOIN (a FULL JOIN needs two \
                     streams with WITHIN, or two tables)"
                        .to_owned(),
                );
            }
            let mut keys = Vec::new();
            let mut extra = Vec::new();
            let mut unused: Vec<(Expr, Expr)> = pairs;
            for k in &key {
                let found = unused
                    .iter()
                    .position(|(_, r)| matches!(r, Expr::Column(c) if c.name == *k));
                match found {
                    Some(i) => keys.push(unused.remove(i).0),
                    None => {
                        return fail(format!(
                            "a stream–table join looks up the table '{right_name}' by its \
                             PRIMARY KEY ({}): the ON clause must equate a stream expression \
                             with '{right_name}.{k}'",
                            key.join(", ")
                        ));
                    }
                }
            }
            for (l, r) in unused {
                extra.push(l.eq(r));
            }
            let filter = conjunction(extra.into_iter().chain(filter));
            (
                StreamJoinNode::plan(
                    name,
                    left.clone(),
                    right.clone(),
                    keys,
                    key,
                    filter,
                    kind,
                    0,
                )?,
                false,
            )
        }
        (Some(_), None) => {
            return fail(format!(
                "a table joined with a stream is written stream first: FROM {right_name} JOIN \
                 {left_name} ON … (each stream record looks up the table)"
            ));
        }
        (Some(left_key), Some(key))
            if !left_key.iter().all(|k| {
                pairs.iter().any(|(l, r)| {
                    matches!((l, r), (Expr::Column(l), Expr::Column(r))
                        if l.name == *k && key.contains(&r.name))
                })
            }) && key.iter().all(|k| {
                pairs
                    .iter()
                    .any(|(_, r)| matches!(r, Expr::Column(r) if r.name == *k))
            }) =>
        {
            // The right table's key equals expressions of the left's columns: a foreign key.
            if kind == JoinKind::Full {
                return fail(
                    "a foreign-key join (the ON clause equates a column of the left table with \
                     the right table's PRIMARY KEY) is [INNER] JOIN or LEFT JOIN"
                        .to_owned(),
                );
            }
            let mut foreign_key = Vec::new();
            let mut unused = pairs;
            for k in &key {
                if let Some(i) = unused
                    .iter()
                    .position(|(_, r)| matches!(r, Expr::Column(r) if r.name == *k))
                {
                    foreign_key.push(unused.remove(i).0);
                }
            }
            if !unused.is_empty() || filter.is_some() {
                return fail(format!(
                    "a foreign-key join's ON clause equates {right_name}'s PRIMARY KEY ({}) with \
                     expressions of {left_name}'s columns and nothing else; put other \
                     conditions in WHERE",
                    key.join(", ")
                ));
            }
            (
                ForeignKeyJoinNode::plan(
                    name,
                    left.clone(),
                    right.clone(),
                    left_key,
                    key,
                    foreign_key,
                    kind,
                )?,
                true,
            )
        }
        (Some(left_key), Some(key)) => {
            // Each left key column equals one right key column, and nothing else.
            let mut right_key = Vec::new();
            for k in &left_key {
                let found = pairs.iter().find_map(|(l, r)| match (l, r) {
                    (Expr::Column(l), Expr::Column(r)) if l.name == *k && key.contains(&r.name) => {
                        Some(r.name.clone())
                    }
                    _ => None,
                });
                match found {
                    Some(r) => right_key.push(r),
                    None => {
                        return fail(format!(
                            "a table–table join's ON clause equates {left_name}'s PRIMARY KEY \
                             ({}) with {right_name}'s ({}), or columns of {left_name} with \
                             {right_name}'s PRIMARY KEY (a foreign-key join)",
                            left_key.join(", "),
                            key.join(", ")
                        ));
                    }
                }
            }
            if pairs.len() != left_key.len() || filter.is_some() || right_key.len() != key.len() {
                return fail(format!(
                    "a table–table join's ON clause equates the tables' PRIMARY KEYs ({} with \
                     {}) and nothing else; put other conditions in WHERE",
                    left_key.join(", "),
                    key.join(", ")
                ));
            }
            (
                TableJoinNode::plan(name, left.clone(), right.clone(), left_key, right_key, kind)?,
                true,
            )
        }
        (None, None) => {
            let Some((w, _)) = within else {
                return fail(format!(
                    "a join of two streams needs a time bound: FROM {left_name} JOIN \
                     {right_name} WITHIN 1 HOUR ON … (records join when their times are at most \
                     that far apart)"
                ));
            };
            for (side, name) in [(&left, &left_name), (&right, &right_name)] {
                if !side.schema().has_column_with_unqualified_name(ROWTIME) {
                    return fail(format!(
                        "'{name}' has no event time to join WITHIN a time bound: select its \
                         rowtime (a windowed aggregation's is its window's: WINDOWEND AS \
                         rowtime)"
                    ));
                }
            }
            let (l, r): (Vec<Expr>, Vec<Expr>) = pairs.into_iter().unzip();
            (
                WindowJoinNode::plan(
                    name,
                    left.clone(),
                    right.clone(),
                    l,
                    r,
                    filter,
                    kind,
                    bounds.unwrap_or_else(|| JoinWindow::new(w.before_ms, w.after_ms)),
                    w.grace_ms.unwrap_or(0),
                )?,
                true,
            )
        }
    };
    // Back to the columns the SQL planner gave the join (in its order, with its qualifiers).
    let schema = node.schema().clone();
    let mut exprs = Vec::new();
    for (q, f) in join.schema.iter() {
        let column = Column::new(q.cloned(), f.name());
        let is_left_time = f.name() == ROWTIME
            && q.is_some_and(|q| q.table() == left_name)
            && right.schema().has_column_with_unqualified_name(ROWTIME);
        if later_time && is_left_time {
            // A pair's time is the later of its two records'.
            let time = datafusion::functions::core::expr_fn::greatest(vec![
                Expr::Column(column.clone()),
                Expr::Column(Column::new(Some(right_name.as_str()), ROWTIME)),
            ]);
            exprs.push(time.alias_qualified(q.cloned(), ROWTIME));
        } else if schema.has_column(&column) {
            exprs.push(Expr::Column(column));
        } else if f.name() == DELETED {
            // A join of tables deletes a row when its delete marker says so; a stream's join
            // has no marker (the plan above drops its references, see `drop_lost_markers`).
            if schema.has_column_with_unqualified_name(DELETED) {
                exprs.push(
                    Expr::Column(Column::new_unqualified(DELETED))
                        .alias_qualified(q.cloned(), DELETED),
                );
            }
        } else {
            return fail(format!(
                "the join lost the column {column}; this is a bug in Quiver's planner"
            ));
        }
    }
    Ok(LogicalPlanBuilder::from(node).project(exprs)?.build()?)
}
