//! Top-N in SQL, as Flink SQL writes it: a `ROW_NUMBER()` over groups, ranked by a column, and
//! a `WHERE` that keeps the first ranks.
//!
//! ```sql
//! SELECT * FROM (
//!   SELECT auction, bidder, price,
//!          ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC) AS rn
//!   FROM bids)
//! WHERE rn <= 3 EMIT CHANGES
//! ```
//!
//! The window function cannot run on a stream as it is (it ranks a whole input); the pair
//! becomes the engine's top-N ([`quiver_engine::top_n`]), which keeps each group's best `n`
//! rows as records arrive and emits the ranks that changed. The query's columns stay as they
//! were: the row number is the top-N's rank.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, ScalarValue};
use datafusion::logical_expr::expr::WindowFunction;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    BinaryExpr, Expr, Filter, LogicalPlan, Operator, Projection, SubqueryAlias, cast,
};
use quiver_engine::top_n::{RANK, TopNNode};

use crate::error::SqlError;
use crate::parser::Position;

/// Replaces each `ROW_NUMBER() OVER (PARTITION BY … ORDER BY c [DESC])` that a `WHERE rn <= N`
/// (or `rn < N`, `rn = 1`) above it bounds by the engine's top-N (see the module docs).
pub(crate) fn plan_top_n(plan: LogicalPlan, position: Position) -> Result<LogicalPlan, SqlError> {
    let mut error = None;
    let out = plan.transform_down(|node| {
        let LogicalPlan::Filter(filter) = &node else {
            return Ok(Transformed::no(node));
        };
        let Some((column, n)) = split_conjunction(&filter.predicate)
            .into_iter()
            .find_map(rank_bound)
        else {
            return Ok(Transformed::no(node));
        };
        match replace_window(&filter.input, &column, n, position) {
            Ok(Some(input)) => Ok(Transformed::yes(LogicalPlan::Filter(Filter::try_new(
                filter.predicate.clone(),
                Arc::new(input),
            )?))),
            Ok(None) => Ok(Transformed::no(node)),
            Err(e) => {
                error = Some(e);
                Ok(Transformed::new(node, false, TreeNodeRecursion::Stop))
            }
        }
    });
    if let Some(e) = error {
        return Err(e);
    }
    Ok(out?.data)
}

/// `(column, n)` when `e` keeps the ranks up to `n` of `column`: `rn <= n`, `rn < n + 1` or
/// `rn = 1`.
fn rank_bound(e: &Expr) -> Option<(String, usize)> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = e else {
        return None;
    };
    let Expr::Column(c) = left.as_ref() else {
        return None;
    };
    let Expr::Literal(value, _) = right.as_ref() else {
        return None;
    };
    let v = match value {
        ScalarValue::Int64(Some(v)) => *v,
        ScalarValue::UInt64(Some(v)) => i64::try_from(*v).ok()?,
        ScalarValue::Int32(Some(v)) => i64::from(*v),
        _ => return None,
    };
    let n = match op {
        Operator::LtEq => v,
        Operator::Lt => v - 1,
        Operator::Eq if v == 1 => 1,
        _ => return None,
    };
    Some((c.name.clone(), usize::try_from(n).ok().filter(|n| *n > 0)?))
}

/// `plan` with the `ROW_NUMBER()` that makes its column `column` replaced by a top-N of `n`;
/// `None` when the column is not such a row number (under select lists, filters and aliases).
fn replace_window(
    plan: &LogicalPlan,
    column: &str,
    n: usize,
    position: Position,
) -> Result<Option<LogicalPlan>, SqlError> {
    match plan {
        LogicalPlan::Projection(p) => {
            let Some(i) = p.schema.fields().iter().position(|f| f.name() == column) else {
                return Ok(None);
            };
            let inner = match &p.expr[i] {
                Expr::Alias(a) => a.expr.as_ref(),
                e => e,
            };
            let Expr::Column(c) = inner else {
                return Ok(None);
            };
            let Some(input) = replace_window(&p.input, &c.name, n, position)? else {
                return Ok(None);
            };
            Ok(Some(LogicalPlan::Projection(Projection::try_new(
                p.expr.clone(),
                Arc::new(input),
            )?)))
        }
        LogicalPlan::SubqueryAlias(a) => {
            let Some(input) = replace_window(&a.input, column, n, position)? else {
                return Ok(None);
            };
            Ok(Some(LogicalPlan::SubqueryAlias(SubqueryAlias::try_new(
                Arc::new(input),
                a.alias.clone(),
            )?)))
        }
        LogicalPlan::Filter(f) => {
            let Some(input) = replace_window(&f.input, column, n, position)? else {
                return Ok(None);
            };
            Ok(Some(LogicalPlan::Filter(Filter::try_new(
                f.predicate.clone(),
                Arc::new(input),
            )?)))
        }
        LogicalPlan::Window(w) => {
            let first = w.schema.fields().len() - w.window_expr.len();
            let Some(i) = w.schema.fields()[first..]
                .iter()
                .position(|f| f.name() == column)
            else {
                return Ok(None);
            };
            let field = w.schema.field(first + i).clone();
            let expr = match &w.window_expr[i] {
                Expr::Alias(a) => a.expr.as_ref(),
                e => e,
            };
            let Expr::WindowFunction(f) = expr else {
                return Ok(None);
            };
            let WindowFunction { fun, params } = f.as_ref();
            if !fun.name().eq_ignore_ascii_case("row_number") {
                return Ok(None);
            }
            let refuse = |what: &str| {
                SqlError::plan(
                    format!(
                        "a top-N (ROW_NUMBER() OVER (PARTITION BY … ORDER BY …) with WHERE on \
                         it) {what}"
                    ),
                    position,
                )
            };
            if w.window_expr.len() != 1 {
                return Err(refuse(
                    "is the only window function of its SELECT; compute the others in another \
                     query",
                ));
            }
            let mut group = Vec::with_capacity(params.partition_by.len());
            for e in &params.partition_by {
                let Expr::Column(c) = e else {
                    return Err(refuse(
                        "partitions by columns; select the expression as a column in a \
                         subquery first",
                    ));
                };
                group.push(c.name.clone());
            }
            let [order] = params.order_by.as_slice() else {
                return Err(refuse("orders by one column"));
            };
            let Expr::Column(by) = &order.expr else {
                return Err(refuse(
                    "orders by a column; select the expression as a column in a subquery \
                     first",
                ));
            };
            let top = TopNNode::plan(
                w.input.as_ref().clone(),
                group,
                by.name.clone(),
                !order.asc,
                n,
            )
            .map_err(|e| SqlError::plan(e.to_string(), position))?;
            // The window's columns as they were: its input's, then the rank as the row number.
            let mut exprs: Vec<Expr> = w
                .input
                .schema()
                .iter()
                .map(|(q, f)| Expr::Column(Column::new(q.cloned(), f.name())))
                .collect();
            exprs.push(
                cast(
                    Expr::Column(Column::new_unqualified(RANK)),
                    field.data_type().clone(),
                )
                .alias(field.name()),
            );
            Ok(Some(LogicalPlan::Projection(Projection::try_new(
                exprs,
                Arc::new(top),
            )?)))
        }
        _ => Ok(None),
    }
}

/// The key of a top-N's result under select lists, filters and aliases: its group columns and
/// its rank (the row number), by the names `plan` gives them; `None` when `plan` is not a
/// top-N's; `Some(Err)` when a select list leaves a key column out.
pub(crate) fn result_key(plan: &LogicalPlan) -> Option<Result<Vec<String>, String>> {
    match plan {
        LogicalPlan::Extension(e) => {
            let node = e.node.as_any().downcast_ref::<TopNNode>()?;
            let mut key = node.group.clone();
            key.push(RANK.to_owned());
            Some(Ok(key))
        }
        LogicalPlan::SubqueryAlias(a) => result_key(&a.input),
        LogicalPlan::Filter(f) => result_key(&f.input),
        LogicalPlan::Projection(p) => {
            let inner = result_key(&p.input)?;
            Some(inner.and_then(|key| {
                crate::join::selected_as(p, &key, |k| {
                    format!(
                        "a top-N's rows are told apart by its PARTITION BY columns and its row \
                         number, and '{k}' is not selected: select it"
                    )
                })
            }))
        }
        _ => None,
    }
}
