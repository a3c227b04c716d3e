//! From a parsed query to a DataFusion `LogicalPlan` over the catalog's streams and tables.
//!
//! DataFusion's own SQL planner (`SqlToRel`) does the work, with a context that resolves each
//! name to the engine's [`quiver_engine::plan::StreamTable`] and knows every DataFusion
//! function plus the engine's window functions. A `WINDOW` clause becomes a window call in `GROUP BY`
//! (`tumble(rowtime, size, grace)`, see [`quiver_engine::window`]), and `WINDOWSTART` /
//! `WINDOWEND` become the start and end fields of that call, so the engine's planner sees the
//! same plan the DSL builds.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::common::TableReference;
use datafusion::common::config::ConfigOptions;
use datafusion::datasource::DefaultTableSource;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::registry::FunctionRegistry;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::planner::{ContextProvider, ExprPlanner};
use datafusion::logical_expr::{
    AggregateUDF, HigherOrderUDF, LogicalPlan, ScalarUDF, TableSource, WindowUDF,
};
use datafusion::sql::planner::{ParserOptions, SqlToRel};
use quiver_engine::arrow::datatypes::DataType;
use quiver_engine::format::ROWTIME;
use quiver_engine::window::window_udfs;
use sqlparser::ast::{
    Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentList, FunctionArguments,
    GroupByExpr, Ident, ObjectName, ObjectNamePart, Select, SelectItem, SetExpr, TableFactor,
    Value, VisitMut, VisitorMut, visit_expressions, visit_expressions_mut,
};

use crate::error::SqlError;
use crate::parser::{Position, StreamingQuery, WindowClause};

/// The functions a query may call: DataFusion's, the engine's windows, Quiver SQL's own.
pub(crate) fn session_state() -> SessionState {
    let mut config = datafusion::prelude::SessionConfig::new();
    // Spans on planning errors, so an unknown column is reported where it is written.
    config.options_mut().sql_parser.collect_spans = true;
    let mut state = SessionStateBuilder::new()
        .with_default_features()
        .with_config(config)
        .build();
    for udf in window_udfs() {
        // Registering replaces nothing of DataFusion's: the names are the engine's own.
        let _ = state.register_udf(udf);
    }
    crate::functions::register(&mut state);
    state
}

/// Resolves names for `SqlToRel`.
pub(crate) struct Context<'a> {
    pub state: &'a SessionState,
    /// Catalog names (lower case unless quoted) to their tables.
    pub tables: HashMap<String, Arc<dyn TableSource>>,
    /// Names a query may not read, with why (a name being defined by the statement).
    pub error: std::cell::RefCell<Option<String>>,
}

impl ContextProvider for Context<'_> {
    fn get_table_source(
        &self,
        name: TableReference,
    ) -> datafusion::error::Result<Arc<dyn TableSource>> {
        let table = name.table();
        self.tables.get(table).cloned().ok_or_else(|| {
            let known: Vec<&str> = self.tables.keys().map(String::as_str).collect();
            let hint = crate::did_you_mean(table, known.iter().copied())
                .map(|s| format!("; did you mean '{s}'?"))
                .unwrap_or_default();
            let message = format!(
                "no stream or table named '{table}'{hint} (SHOW STREAMS and SHOW TABLES list them)"
            );
            *self.error.borrow_mut() = Some(message.clone());
            datafusion::error::DataFusionError::Plan(message)
        })
    }

    fn get_expr_planners(&self) -> &[Arc<dyn ExprPlanner>] {
        self.state.expr_planners()
    }

    fn get_function_meta(&self, name: &str) -> Option<Arc<ScalarUDF>> {
        self.state.scalar_functions().get(name).cloned()
    }

    fn get_higher_order_meta(&self, name: &str) -> Option<Arc<HigherOrderUDF>> {
        self.state.higher_order_functions().get(name).cloned()
    }

    fn get_aggregate_meta(&self, name: &str) -> Option<Arc<AggregateUDF>> {
        self.state.aggregate_functions().get(name).cloned()
    }

    fn get_window_meta(&self, name: &str) -> Option<Arc<WindowUDF>> {
        self.state.window_functions().get(name).cloned()
    }

    fn get_variable_type(&self, _variable_names: &[String]) -> Option<DataType> {
        None
    }

    fn options(&self) -> &ConfigOptions {
        self.state.config_options()
    }

    fn udf_names(&self) -> Vec<String> {
        self.state.scalar_functions().keys().cloned().collect()
    }

    fn higher_order_function_names(&self) -> Vec<String> {
        self.state
            .higher_order_functions()
            .keys()
            .cloned()
            .collect()
    }

    fn udaf_names(&self) -> Vec<String> {
        self.state.aggregate_functions().keys().cloned().collect()
    }

    fn udwf_names(&self) -> Vec<String> {
        self.state.window_functions().keys().cloned().collect()
    }
}

/// A batch table (for queries over history) as a `TableSource`.
pub(crate) fn batch_source(
    provider: Arc<dyn datafusion::catalog::TableProvider>,
) -> Arc<dyn TableSource> {
    Arc::new(DefaultTableSource::new(provider))
}

fn call(name: &str, args: Vec<Expr>) -> Expr {
    Expr::Function(Function {
        name: ObjectName(vec![ObjectNamePart::Identifier(Ident::new(name))]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|e| FunctionArg::Unnamed(FunctionArgExpr::Expr(e)))
                .collect(),
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

fn number(n: i64) -> Expr {
    Expr::value(Value::Number(n.to_string(), false))
}

/// The event time a window groups by: `rowtime`, or in a join the first input's
/// (`orders.rowtime`; a join of two streams gives it the later time of each pair).
fn event_time(select: &sqlparser::ast::Select) -> Expr {
    let time = Ident::new(ROWTIME);
    let Some(first) = select.from.first().filter(|f| !f.joins.is_empty()) else {
        return Expr::Identifier(time);
    };
    match &first.relation {
        TableFactor::Table {
            alias: Some(alias), ..
        } => Expr::CompoundIdentifier(vec![alias.name.clone(), time]),
        TableFactor::Table { name, .. } => match name.0.last() {
            Some(ObjectNamePart::Identifier(i)) => Expr::CompoundIdentifier(vec![i.clone(), time]),
            _ => Expr::Identifier(time),
        },
        _ => Expr::Identifier(time),
    }
}

/// The window call `WINDOW …` stands for.
fn window_call(window: WindowClause, time: Expr) -> Expr {
    match window {
        WindowClause::Tumbling { size_ms, grace_ms } => call(
            "tumble",
            vec![time, number(size_ms), number(grace_ms.unwrap_or(0))],
        ),
        WindowClause::Hopping {
            size_ms,
            advance_ms,
            grace_ms,
        } => call(
            "hop",
            vec![
                time,
                number(advance_ms),
                number(size_ms),
                number(grace_ms.unwrap_or(0)),
            ],
        ),
        WindowClause::Session { gap_ms, grace_ms } => call(
            "session",
            vec![time, number(gap_ms), number(grace_ms.unwrap_or(0))],
        ),
    }
}

fn is_word(e: &Expr, word: &str) -> bool {
    matches!(e, Expr::Identifier(i) if ident_is(i, word))
}

/// Whether `i` is the unquoted word `word`, in any case.
fn ident_is(i: &Ident, word: &str) -> bool {
    i.quote_style.is_none() && i.value.eq_ignore_ascii_case(word)
}

/// A windowed table's key is its GROUP BY columns and its window: `CREATE TABLE … AS SELECT`
/// selects `WINDOWSTART` and `WINDOWEND` when the query does not (as ksqlDB's windowed keys
/// carry the window).
pub(crate) fn select_window_bounds(query: &mut StreamingQuery) {
    if query.window.is_none() {
        return;
    }
    let SetExpr::Select(select) = query.query.body.as_mut() else {
        return;
    };
    for bound in ["WINDOWSTART", "WINDOWEND"] {
        let mut found = false;
        for item in &mut select.projection {
            let _ = visit_expressions_mut(item, |e| {
                found |= is_word(e, bound);
                ControlFlow::<()>::Continue(())
            });
        }
        if !found {
            select.projection.push(SelectItem::ExprWithAlias {
                expr: Expr::Identifier(Ident::new(bound)),
                alias: Ident::new(bound.to_lowercase()),
            });
        }
    }
}

/// Rewrites the streaming clauses of `query` into standard SQL the engine plans: each window
/// joins its select's GROUP BY, and `WINDOWSTART`/`WINDOWEND` become its bounds.
/// `is_aggregate` tells aggregate functions by name: a window over a select without GROUP BY
/// groups its aggregates by window alone.
pub(crate) fn rewrite_window(
    query: &mut StreamingQuery,
    is_aggregate: &dyn Fn(&str) -> bool,
) -> Result<(), SqlError> {
    // The innermost first: a WINDOWSTART belongs to the window of the nearest select around
    // it, and a select's rewrite reaches into its subqueries.
    let mut inner = query.inner_windows.clone();
    inner.sort_by_key(|w| std::cmp::Reverse(w.depth));
    for w in inner {
        let mut finder = SelectAt {
            at: w.select,
            found: None,
            apply: |select: &mut Select| window_select(select, w.window, w.position, is_aggregate),
        };
        let _ = query.query.visit(&mut finder);
        match finder.found {
            Some(result) => result?,
            None => {
                return Err(SqlError::plan(
                    "a WINDOW clause belongs to a single SELECT … GROUP BY",
                    w.position,
                ));
            }
        }
    }
    let Some((window, position)) = query.window else {
        // WINDOWSTART without a window: say so instead of "no column windowstart".
        let mut found = None;
        let _ = visit_expressions_mut(&mut query.query, |e| {
            if let Expr::Identifier(i) = e
                && (ident_is(i, "WINDOWSTART") || ident_is(i, "WINDOWEND"))
            {
                found = Some(Position::from(i.span.start));
                return ControlFlow::Break(());
            }
            ControlFlow::<()>::Continue(())
        });
        if let Some(at) = found {
            return Err(SqlError::plan(
                "WINDOWSTART and WINDOWEND exist only in a query with a WINDOW clause",
                at,
            ));
        }
        return Ok(());
    };
    let SetExpr::Select(select) = query.query.body.as_mut() else {
        return Err(SqlError::plan(
            "a WINDOW clause belongs to a single SELECT … GROUP BY",
            position,
        ));
    };
    window_select(select, window, position, is_aggregate)
}

/// Finds the select whose `SELECT` keyword is at `at` (the body of a query or subquery) and
/// applies `apply` to it.
struct SelectAt<F> {
    at: Position,
    found: Option<Result<(), SqlError>>,
    apply: F,
}

impl<F: FnMut(&mut Select) -> Result<(), SqlError>> VisitorMut for SelectAt<F> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut sqlparser::ast::Query) -> ControlFlow<()> {
        if let SetExpr::Select(select) = query.body.as_mut()
            && Position::from(select.select_token.0.span.start) == self.at
        {
            self.found = Some((self.apply)(select));
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }
}

/// Groups `select` by `window` too: the window call joins its GROUP BY (or is all of it, for
/// a select of aggregates without one), and its `WINDOWSTART`/`WINDOWEND` become the bounds.
fn window_select(
    select: &mut Select,
    window: WindowClause,
    position: Position,
    is_aggregate: &dyn Fn(&str) -> bool,
) -> Result<(), SqlError> {
    let call = window_call(window, event_time(select));
    let aggregating = aggregates(select, is_aggregate);
    match &mut select.group_by {
        GroupByExpr::Expressions(exprs, modifiers) if modifiers.is_empty() => {
            if exprs.is_empty() && !aggregating {
                return Err(SqlError::plan(
                    "a WINDOW clause needs an aggregation: add GROUP BY (a windowed count is \
                     SELECT k, COUNT(*) FROM s WINDOW TUMBLING (SIZE 1 MINUTE) GROUP BY k)",
                    position,
                ));
            }
            exprs.push(call.clone());
        }
        _ => {
            return Err(SqlError::plan(
                "a WINDOW clause works with a plain GROUP BY list (not ALL, ROLLUP, CUBE or \
                 GROUPING SETS)",
                position,
            ));
        }
    }
    let bound = |field: &str| call_field(call.clone(), field);
    let _ = visit_expressions_mut(select, |e| {
        if is_word(e, "WINDOWSTART") {
            *e = bound("start");
        } else if is_word(e, "WINDOWEND") {
            *e = bound("end");
        }
        ControlFlow::<()>::Continue(())
    });
    Ok(())
}

/// Whether the select list of `select` calls an aggregate function.
fn aggregates(select: &Select, is_aggregate: &dyn Fn(&str) -> bool) -> bool {
    let mut found = false;
    let _ = visit_expressions(&select.projection, |e| {
        if let Expr::Function(f) = e
            && let Some(ObjectNamePart::Identifier(name)) = f.name.0.last()
            && is_aggregate(&name.value.to_lowercase())
        {
            found = true;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    found
}

fn call_field(window: Expr, field: &str) -> Expr {
    call(
        "get_field",
        vec![
            window,
            Expr::value(Value::SingleQuotedString(field.to_owned())),
        ],
    )
}

/// Plans a standard query (the streaming clauses already rewritten).
pub(crate) fn plan_query(
    context: &Context<'_>,
    query: &StreamingQuery,
) -> Result<LogicalPlan, SqlError> {
    let planner = SqlToRel::new_with_options(
        context,
        ParserOptions {
            enable_ident_normalization: true,
            collect_spans: true,
            ..ParserOptions::default()
        },
    );
    let mut q = query.query.clone();
    crate::functions::rewrite_aliases(&mut q);
    let statement = sqlparser::ast::Statement::Query(q);
    let plan = planner.sql_statement_to_plan(statement).map_err(|e| {
        let position = e
            .diagnostic()
            .and_then(|d| d.span)
            .filter(|s| s.start.line > 0)
            .map_or(query.position, |s| Position {
                line: s.start.line,
                column: s.start.column,
            });
        match context.error.borrow_mut().take() {
            Some(message) => SqlError::plan(message, position),
            None => SqlError::plan(unknown_function(context, &e), position),
        }
    })?;
    crate::functions::check_arguments(&plan).map_err(|m| SqlError::plan(m, query.position))?;
    Ok(plan)
}

/// An unknown function named with the closest known one (DataFusion's own suggestion picks
/// among equally close names at random), other errors as [`describe_plan_error`] gives them.
fn unknown_function(context: &Context<'_>, e: &datafusion::error::DataFusionError) -> String {
    let message = describe_plan_error(e);
    let Some(name) = message
        .strip_prefix("Invalid function '")
        .and_then(|rest| rest.split_once('\''))
        .map(|(name, _)| name.to_owned())
    else {
        return message;
    };
    let mut known = context.udf_names();
    known.extend(context.udaf_names());
    known.extend(context.udwf_names());
    known.sort_unstable();
    let hint = crate::did_you_mean(&name, known.iter().map(String::as_str))
        .map(|k| format!("; did you mean {k}?"))
        .unwrap_or_default();
    format!("no function named '{name}'{hint}")
}

/// DataFusion's message without its "Error during planning: " prefix and backtrace.
pub(crate) fn describe_plan_error(e: &datafusion::error::DataFusionError) -> String {
    let e = e.find_root();
    match e {
        datafusion::error::DataFusionError::Plan(m)
        | datafusion::error::DataFusionError::SQL(_, Some(m))
        | datafusion::error::DataFusionError::NotImplemented(m) => m.clone(),
        datafusion::error::DataFusionError::SchemaError(s, _) => s.to_string(),
        other => other.to_string(),
    }
}

/// A persistent query's output with the time its records are stamped with, as ksqlDB stamps
/// them: a stream's rows keep their source record's time (`rowtime`, the first relation's in a
/// join), a windowed table's rows take their window's last instant (the engine's topic sink
/// reads `window_end`). The added column is not one of the output's declared columns, so it is
/// not written into the values. A plan whose output already has a time, or whose top is not a
/// projection (an aggregate without a window: its rows are stamped when written), is returned
/// as it is.
pub(crate) fn with_record_time(plan: LogicalPlan) -> Result<LogicalPlan, SqlError> {
    use datafusion::common::{Column, ScalarValue};
    use datafusion::logical_expr::{Expr as DfExpr, Projection};
    use quiver_engine::dsl::WINDOW_END;

    let out = plan.schema();
    if out.has_column_with_unqualified_name(ROWTIME)
        || out.has_column_with_unqualified_name(WINDOW_END)
    {
        return Ok(plan);
    }
    let LogicalPlan::Projection(projection) = plan else {
        return Ok(plan);
    };
    let window_end = projection
        .expr
        .iter()
        .find_map(|e| match e.clone().unalias() {
            DfExpr::ScalarFunction(f)
                if f.name() == "get_field"
                    && matches!(
                        f.args.get(1),
                        Some(DfExpr::Literal(ScalarValue::Utf8(Some(s)), _)) if s == "end"
                    ) =>
            {
                Some(DfExpr::ScalarFunction(f))
            }
            _ => None,
        });
    let time = match window_end {
        Some(end) => Some(end.alias(WINDOW_END)),
        None => {
            // In a join, the first relation's time (the pair's, see `crate::join`); the
            // side a left join may miss has a nullable one, and is the last choice.
            let input = projection.input.schema();
            let times: Vec<_> = input
                .iter()
                .filter(|(_, f)| {
                    f.name() == ROWTIME
                        && matches!(
                            f.data_type(),
                            DataType::Timestamp(
                                quiver_engine::arrow::datatypes::TimeUnit::Millisecond,
                                None
                            )
                        )
                })
                .collect();
            times
                .iter()
                .find(|(_, f)| !f.is_nullable())
                .or(times.first())
                .map(|(q, f)| DfExpr::Column(Column::new(q.cloned(), f.name())).alias(ROWTIME))
        }
    };
    let Some(time) = time else {
        return Ok(LogicalPlan::Projection(projection));
    };
    let Projection {
        mut expr, input, ..
    } = projection;
    expr.push(time);
    Ok(LogicalPlan::Projection(Projection::try_new(expr, input)?))
}
