//! The ksqlDB functions users reach for, next to every DataFusion function:
//!
//! | function | what it gives |
//! |---|---|
//! | `LATEST_BY_OFFSET(x [, ignore_nulls])` | the group's last value as records arrived (nulls skipped unless `false`) |
//! | `EARLIEST_BY_OFFSET(x [, ignore_nulls])` | its first |
//! | `COLLECT_LIST(x)` | every value, in arrival order (DataFusion's `array_agg`) |
//! | `COLLECT_SET(x)` | the distinct values but null, in order of arrival, at most 1,000 (as ksqlDB) |
//! | `TOPK(x, k)` | the k greatest values, greatest first (only k kept per group) |
//! | `EXTRACTJSONFIELD(json, '$.a.b[0]')` | a field of a JSON string, as a string |
//! | `TIMESTAMPTOSTRING(ms, 'yyyy-MM-dd HH:mm:ss' [, tz])` | epoch milliseconds formatted with a Java `DateTimeFormatter` pattern |
//! | `STRINGTOTIMESTAMP(text, pattern [, tz])` | the reverse, as epoch milliseconds |
//!
//! The aggregates are DataFusion accumulators with state, so they run in continuous queries
//! (checkpointed like any other) and in queries over history alike.

use std::ops::ControlFlow;
use std::sync::Arc;

use chrono::TimeZone;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, EmitTo, Expr, GroupsAccumulator,
    LogicalPlan, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use quiver_engine::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, ListArray, RecordBatch, StringArray,
};
use quiver_engine::arrow::compute::{SortOptions, cast, sort_limit};
use quiver_engine::arrow::datatypes::{DataType, Field, FieldRef, Schema};
use quiver_engine::format::{TextTime, parse_text_time};
use sqlparser::ast::ObjectNamePart;

/// Every function of this module, for the SQL session.
pub(crate) fn register(state: &mut datafusion::execution::session_state::SessionState) {
    use datafusion::execution::registry::FunctionRegistry;
    for latest in [true, false] {
        let _ = state.register_udaf(Arc::new(AggregateUDF::from(ByOffset::new(latest))));
    }
    let _ = state.register_udaf(Arc::new(AggregateUDF::from(TopK::new())));
    let _ = state.register_udaf(Arc::new(AggregateUDF::from(CollectSet::new())));
    for f in [
        Text::ExtractJsonField,
        Text::TimestampToString,
        Text::StringToTimestamp,
    ] {
        let _ = state.register_udf(Arc::new(ScalarUDF::from(TextFunction::new(f))));
    }
}

/// `COLLECT_LIST(x)` is DataFusion's `array_agg(x)`: renamed in the query before it is
/// planned.
pub(crate) fn rewrite_aliases(query: &mut sqlparser::ast::Query) {
    let _ = sqlparser::ast::visit_expressions_mut(query, |e| {
        if let sqlparser::ast::Expr::Function(f) = e
            && let [ObjectNamePart::Identifier(name)] = f.name.0.as_mut_slice()
            && name.quote_style.is_none()
            && name.value.eq_ignore_ascii_case("collect_list")
        {
            name.value = "array_agg".to_owned();
        }
        ControlFlow::<()>::Continue(())
    });
}

/// Checks the constant arguments of this module's functions in a plan (TOPK's k, a JSON path,
/// a time pattern or zone), so a bad one is the statement's error when it is planned rather
/// than a failure of the running query.
pub(crate) fn check_arguments(plan: &LogicalPlan) -> std::result::Result<(), String> {
    let mut error = None;
    let _ = plan.apply(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                let checked = match e {
                    Expr::AggregateFunction(f) => check_aggregate(f.func.name(), &f.params.args),
                    Expr::ScalarFunction(f) => check_scalar(f.name(), &f.args),
                    _ => Ok(()),
                };
                Ok(match checked {
                    Ok(()) => TreeNodeRecursion::Continue,
                    Err(m) => {
                        error = Some(m);
                        TreeNodeRecursion::Stop
                    }
                })
            })
        })
    });
    error.map_or(Ok(()), Err)
}

/// A literal argument (under any casts the planner put around it).
fn literal(e: &Expr) -> Option<&ScalarValue> {
    match e {
        Expr::Literal(v, _) => Some(v),
        Expr::Cast(c) => literal(&c.expr),
        Expr::TryCast(c) => literal(&c.expr),
        _ => None,
    }
}

fn text_literal<'a>(
    args: &'a [Expr],
    i: usize,
    name: &str,
    what: &str,
) -> std::result::Result<Option<&'a str>, String> {
    let Some(arg) = args.get(i) else {
        return Ok(None);
    };
    match literal(arg) {
        Some(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)),
        ) => Ok(Some(s)),
        _ => Err(format!(
            "{name}()'s {what} must be a constant string, as in {}",
            example(name)
        )),
    }
}

fn example(name: &str) -> &'static str {
    match name {
        "extractjsonfield" => "EXTRACTJSONFIELD(payload, '$.user.id')",
        "timestamptostring" => "TIMESTAMPTOSTRING(ms, 'yyyy-MM-dd HH:mm:ss', 'UTC')",
        _ => "STRINGTOTIMESTAMP(text, 'yyyy-MM-dd HH:mm:ss', 'UTC')",
    }
}

fn check_scalar(name: &str, args: &[Expr]) -> std::result::Result<(), String> {
    let error = |e: datafusion::error::DataFusionError| crate::plan::describe_plan_error(&e);
    match name {
        "extractjsonfield" => {
            if let Some(path) = text_literal(args, 1, name, "JSON path")? {
                parse_json_path(path).map_err(error)?;
            }
        }
        "timestamptostring" | "stringtotimestamp" => {
            if let Some(pattern) = text_literal(args, 1, name, "pattern")? {
                java_pattern(pattern).map_err(error)?;
            }
            if let Some(tz) = text_literal(args, 2, name, "time zone")? {
                tz.parse::<chrono_tz::Tz>().map_err(|_| {
                    format!("{name}(): '{tz}' is not a time zone; use a name such as 'UTC' or 'Europe/Berlin'")
                })?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn check_aggregate(name: &str, args: &[Expr]) -> std::result::Result<(), String> {
    match name {
        "topk" => {
            let k = args
                .get(1)
                .and_then(literal)
                .and_then(|v| v.cast_to(&DataType::Int64).ok());
            match k {
                Some(ScalarValue::Int64(Some(k))) if (1..=10_000).contains(&k) => Ok(()),
                Some(v) => Err(format!("topk(x, k) keeps 1 to 10000 values; k is {v}")),
                None => Err(
                    "topk(x, k)'s k, how many values to keep, must be a constant number".to_owned(),
                ),
            }
        }
        "latest_by_offset" | "earliest_by_offset" => match args.get(1) {
            None => Ok(()),
            Some(arg) => match literal(arg) {
                Some(ScalarValue::Boolean(Some(_))) => Ok(()),
                _ => Err(format!(
                    "{name}(x, ignore_nulls)'s second argument says whether nulls are skipped: \
                     true or false"
                )),
            },
        },
        _ => Ok(()),
    }
}

/// `LATEST_BY_OFFSET` / `EARLIEST_BY_OFFSET`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ByOffset {
    latest: bool,
    signature: Signature,
}

impl ByOffset {
    fn new(latest: bool) -> ByOffset {
        ByOffset {
            latest,
            signature: Signature::one_of(
                vec![TypeSignature::Any(1), TypeSignature::Any(2)],
                Volatility::Immutable,
            ),
        }
    }
}

/// A constant argument of an aggregate call (evaluated once, on no rows).
fn constant(args: &AccumulatorArgs, i: usize) -> Result<Option<ScalarValue>> {
    let Some(e) = args.exprs.get(i) else {
        return Ok(None);
    };
    let empty = RecordBatch::new_empty(Arc::new(Schema::empty()));
    match e.evaluate(&empty) {
        Ok(ColumnarValue::Scalar(v)) => Ok(Some(v)),
        _ => plan_err!("{}()'s argument {} must be a constant", args.name, i + 1),
    }
}

impl ByOffset {
    /// The call's second argument: whether nulls are skipped (true when left out).
    fn ignore_nulls(&self, args: &AccumulatorArgs) -> Result<bool> {
        match constant(args, 1)? {
            None => Ok(true),
            Some(ScalarValue::Boolean(Some(b))) => Ok(b),
            Some(other) => plan_err!(
                "{}()'s second argument says whether nulls are skipped: true or false, not \
                 {other}",
                self.name()
            ),
        }
    }
}

impl AggregateUDFImpl for ByOffset {
    fn name(&self) -> &str {
        if self.latest {
            "latest_by_offset"
        } else {
            "earliest_by_offset"
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types.first().cloned().unwrap_or(DataType::Null))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(
                args.return_field
                    .as_ref()
                    .clone()
                    .with_name("value")
                    .with_nullable(true),
            ),
            Arc::new(Field::new("set", DataType::Boolean, true)),
        ])
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let ignore_nulls = self.ignore_nulls(&args)?;
        Ok(Box::new(ByOffsetAccumulator {
            latest: self.latest,
            ignore_nulls,
            value: ScalarValue::try_from(args.return_field.data_type())?,
            set: false,
        }))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        let ignore_nulls = self.ignore_nulls(&args)?;
        Ok(Box::new(ByOffsetGroups {
            latest: self.latest,
            ignore_nulls,
            null: ScalarValue::try_from(args.return_field.data_type())?,
            values: Vec::new(),
            heap: 0,
            chosen: Vec::new(),
            touched: Vec::new(),
        }))
    }
}

/// `LATEST_BY_OFFSET` / `EARLIEST_BY_OFFSET` over many groups at once: per group, the value
/// taken (`None` before one is). A batch takes, per group, only the row that counts (its last,
/// or its first while the group has none), so a group pays one copy per batch, not per row.
#[derive(Debug)]
struct ByOffsetGroups {
    latest: bool,
    ignore_nulls: bool,
    /// A null of the result's type, for groups with no value.
    null: ScalarValue,
    values: Vec<Option<ScalarValue>>,
    /// Heap bytes held by `values`.
    heap: usize,
    /// Per group, the row of the batch at hand that counts (`usize::MAX`: none).
    chosen: Vec<usize>,
    /// The groups with a row chosen in the batch at hand.
    touched: Vec<usize>,
}

impl ByOffsetGroups {
    /// Takes, for each group, the row of `values` that counts among those `take` allows.
    fn offer(
        &mut self,
        values: &ArrayRef,
        group_indices: &[usize],
        total_num_groups: usize,
        take: impl Fn(usize) -> bool,
    ) -> Result<()> {
        self.values.resize(total_num_groups, None);
        self.chosen.resize(total_num_groups, usize::MAX);
        for (row, &group) in group_indices.iter().enumerate() {
            if !take(row) {
                continue;
            }
            let chosen = &mut self.chosen[group];
            if *chosen == usize::MAX {
                if !self.latest && self.values[group].is_some() {
                    continue;
                }
                self.touched.push(group);
                *chosen = row;
            } else if self.latest {
                *chosen = row;
            }
        }
        for group in std::mem::take(&mut self.touched) {
            let row = std::mem::replace(&mut self.chosen[group], usize::MAX);
            let value = ScalarValue::try_from_array(values, row)?;
            self.heap += value.size();
            if let Some(old) = self.values[group].replace(value) {
                self.heap = self.heap.saturating_sub(old.size());
            }
        }
        Ok(())
    }

    fn take(&mut self, emit_to: EmitTo) -> Vec<Option<ScalarValue>> {
        let taken = emit_to.take_needed(&mut self.values);
        let freed: usize = taken.iter().flatten().map(ScalarValue::size).sum();
        self.heap = self.heap.saturating_sub(freed);
        taken
    }
}

impl GroupsAccumulator for ByOffsetGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        let Some(v) = values.first() else {
            return Ok(());
        };
        let ignore_nulls = self.ignore_nulls;
        self.offer(v, group_indices, total_num_groups, |row| {
            opt_filter.is_none_or(|f| f.is_valid(row) && f.value(row))
                && !(ignore_nulls && v.is_null(row))
        })
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        let [v, set] = values else {
            return exec_err!("{} state has two columns", "by-offset");
        };
        // A merged state is a value that was taken (a null that counted, too).
        let set = set.as_boolean();
        self.offer(v, group_indices, total_num_groups, |row| {
            set.is_valid(row) && set.value(row)
        })
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let null = self.null.clone();
        let taken = self.take(emit_to);
        if taken.is_empty() {
            return Ok(quiver_engine::arrow::array::new_empty_array(
                &null.data_type(),
            ));
        }
        ScalarValue::iter_to_array(taken.into_iter().map(|v| v.unwrap_or_else(|| null.clone())))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let null = self.null.clone();
        let taken = self.take(emit_to);
        let set = BooleanArray::from(taken.iter().map(|v| Some(v.is_some())).collect::<Vec<_>>());
        let values: ArrayRef = if taken.is_empty() {
            quiver_engine::arrow::array::new_empty_array(&null.data_type())
        } else {
            ScalarValue::iter_to_array(
                taken.into_iter().map(|v| v.unwrap_or_else(|| null.clone())),
            )?
        };
        Ok(vec![values, Arc::new(set)])
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let Some(v) = values.first() else {
            return exec_err!("{} takes a value", "by-offset");
        };
        // Each row its own group: taken unless filtered out (or a null that is skipped).
        let set: BooleanArray = (0..v.len())
            .map(|row| {
                Some(
                    opt_filter.is_none_or(|f| f.is_valid(row) && f.value(row))
                        && !(self.ignore_nulls && v.is_null(row)),
                )
            })
            .collect();
        Ok(vec![v.clone(), Arc::new(set)])
    }

    fn size(&self) -> usize {
        self.values.capacity() * std::mem::size_of::<Option<ScalarValue>>()
            + self.chosen.capacity() * std::mem::size_of::<usize>()
            + self.heap
    }
}

#[derive(Debug)]
struct ByOffsetAccumulator {
    latest: bool,
    ignore_nulls: bool,
    value: ScalarValue,
    set: bool,
}

impl ByOffsetAccumulator {
    /// Takes row `i` of `values` when it is a candidate (`set` says whether it is a value).
    fn offer(&mut self, values: &ArrayRef, rows: impl Iterator<Item = usize>) -> Result<()> {
        if !self.latest && self.set {
            return Ok(());
        }
        for i in rows {
            if self.ignore_nulls && values.is_null(i) {
                continue;
            }
            self.value = ScalarValue::try_from_array(values, i)?;
            self.set = true;
            return Ok(());
        }
        Ok(())
    }
}

impl Accumulator for ByOffsetAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let Some(v) = values.first() else {
            return Ok(());
        };
        if self.latest {
            self.offer(v, (0..v.len()).rev())
        } else {
            self.offer(v, 0..v.len())
        }
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let [values, set] = states else {
            return exec_err!("{} state has two columns", "by-offset");
        };
        let set = set.as_boolean();
        let rows: Vec<usize> = (0..set.len())
            .filter(|&i| set.is_valid(i) && set.value(i))
            .collect();
        let saved = self.ignore_nulls;
        // A merged state is a value that was taken (a null that counted, too).
        self.ignore_nulls = false;
        let out = if self.latest {
            self.offer(values, rows.into_iter().rev())
        } else {
            self.offer(values, rows.into_iter())
        };
        self.ignore_nulls = saved;
        out
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![
            self.value.clone(),
            ScalarValue::Boolean(Some(self.set)),
        ])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(self.value.clone())
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.value.size() - std::mem::size_of_val(&self.value)
    }
}

/// `TOPK(x, k)`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct TopK {
    signature: Signature,
}

impl TopK {
    fn new() -> TopK {
        TopK {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for TopK {
    fn name(&self) -> &str {
        "topk"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        let item = arg_types.first().cloned().unwrap_or(DataType::Null);
        Ok(DataType::new_list(item, true))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(
            args.return_field.as_ref().clone().with_name("top"),
        )])
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let k = match constant(&args, 1)? {
            Some(v) => match v.cast_to(&DataType::Int64)? {
                ScalarValue::Int64(Some(k)) if (1..=10_000).contains(&k) => k as usize,
                _ => return plan_err!("topk(x, k) keeps 1 to 10000 values; k is {v}"),
            },
            None => return plan_err!("topk(x, k) needs k, how many values to keep"),
        };
        let DataType::List(item) = args.return_field.data_type() else {
            return exec_err!("topk returns a list");
        };
        Ok(Box::new(TopKAccumulator {
            k,
            item: item.data_type().clone(),
            top: Vec::new(),
        }))
    }
}

#[derive(Debug)]
struct TopKAccumulator {
    k: usize,
    item: DataType,
    /// Greatest first, at most `k`.
    top: Vec<ScalarValue>,
}

impl TopKAccumulator {
    fn add(&mut self, values: &ArrayRef) -> Result<()> {
        let options = SortOptions {
            descending: true,
            nulls_first: false,
        };
        let best = sort_limit(values, Some(options), Some(self.k))?;
        for i in 0..best.len() {
            if best.is_null(i) {
                break;
            }
            let v = ScalarValue::try_from_array(&best, i)?;
            let at = self
                .top
                .iter()
                .position(|t| t.partial_cmp(&v) == Some(std::cmp::Ordering::Less))
                .unwrap_or(self.top.len());
            if at >= self.k {
                // Sorted: the rest of the batch is no greater.
                break;
            }
            self.top.insert(at, v);
            self.top.truncate(self.k);
        }
        Ok(())
    }
}

impl Accumulator for TopKAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        match values.first() {
            Some(v) => self.add(v),
            None => Ok(()),
        }
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let Some(lists) = states.first() else {
            return Ok(());
        };
        let lists: &ListArray = lists.as_list();
        for i in 0..lists.len() {
            if lists.is_valid(i) {
                self.add(&lists.value(i))?;
            }
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.evaluate()?])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::List(ScalarValue::new_list(
            &self.top, &self.item, true,
        )))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.top.iter().map(ScalarValue::size).sum::<usize>()
    }
}

/// How many values `COLLECT_SET` keeps per group (ksqlDB's default limit).
const COLLECT_SET_LIMIT: usize = 1_000;

/// `COLLECT_SET(x)`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CollectSet {
    signature: Signature,
}

impl CollectSet {
    fn new() -> CollectSet {
        CollectSet {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for CollectSet {
    fn name(&self) -> &str {
        "collect_set"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        let item = arg_types.first().cloned().unwrap_or(DataType::Null);
        Ok(DataType::new_list(item, true))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(
            args.return_field.as_ref().clone().with_name("set"),
        )])
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let DataType::List(item) = args.return_field.data_type() else {
            return exec_err!("collect_set returns a list");
        };
        Ok(Box::new(CollectSetAccumulator {
            item: item.data_type().clone(),
            values: Vec::new(),
            seen: std::collections::HashSet::new(),
        }))
    }
}

#[derive(Debug)]
struct CollectSetAccumulator {
    item: DataType,
    /// In order of arrival.
    values: Vec<ScalarValue>,
    seen: std::collections::HashSet<ScalarValue>,
}

impl CollectSetAccumulator {
    fn add(&mut self, values: &ArrayRef) -> Result<()> {
        for i in 0..values.len() {
            if self.values.len() >= COLLECT_SET_LIMIT {
                break;
            }
            if values.is_null(i) {
                continue;
            }
            let v = ScalarValue::try_from_array(values, i)?;
            if self.seen.insert(v.clone()) {
                self.values.push(v);
            }
        }
        Ok(())
    }
}

impl Accumulator for CollectSetAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        match values.first() {
            Some(v) => self.add(v),
            None => Ok(()),
        }
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let Some(lists) = states.first() else {
            return Ok(());
        };
        let lists: &ListArray = lists.as_list();
        for i in 0..lists.len() {
            if lists.is_valid(i) {
                self.add(&lists.value(i))?;
            }
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.evaluate()?])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::List(ScalarValue::new_list(
            &self.values,
            &self.item,
            true,
        )))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + 2 * self.values.iter().map(ScalarValue::size).sum::<usize>()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Text {
    ExtractJsonField,
    TimestampToString,
    StringToTimestamp,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct TextFunction {
    which: Text,
    signature: Signature,
}

impl TextFunction {
    fn new(which: Text) -> TextFunction {
        let first = match which {
            Text::TimestampToString => DataType::Int64,
            _ => DataType::Utf8,
        };
        let two = vec![first.clone(), DataType::Utf8];
        let three = vec![first, DataType::Utf8, DataType::Utf8];
        let signature = match which {
            Text::ExtractJsonField => Signature::exact(two, Volatility::Immutable),
            _ => Signature::one_of(
                vec![TypeSignature::Exact(two), TypeSignature::Exact(three)],
                Volatility::Immutable,
            ),
        };
        TextFunction { which, signature }
    }
}

/// A constant text argument of a scalar call.
fn text_arg<'a>(args: &'a [ColumnarValue], i: usize, name: &str, what: &str) -> Result<&'a str> {
    match args.get(i) {
        Some(ColumnarValue::Scalar(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)),
        )) => Ok(s),
        _ => exec_err!("{name}()'s {what} must be a constant string"),
    }
}

fn zone(args: &[ColumnarValue], name: &str) -> Result<chrono_tz::Tz> {
    if args.len() < 3 {
        return Ok(chrono_tz::UTC);
    }
    let tz = text_arg(args, 2, name, "time zone")?;
    tz.parse::<chrono_tz::Tz>().or_else(|_| {
        exec_err!(
            "{name}(): '{tz}' is not a time zone; use a name such as 'UTC' or 'Europe/Berlin'"
        )
    })
}

impl ScalarUDFImpl for TextFunction {
    fn name(&self) -> &str {
        match self.which {
            Text::ExtractJsonField => "extractjsonfield",
            Text::TimestampToString => "timestamptostring",
            Text::StringToTimestamp => "stringtotimestamp",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(match self.which {
            Text::StringToTimestamp => DataType::Int64,
            _ => DataType::Utf8,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = self.name();
        let n = args.number_rows;
        let Some(first) = args.args.first() else {
            return exec_err!("{name}() needs arguments");
        };
        let first = first.to_array(n)?;
        let out: ArrayRef = match self.which {
            Text::ExtractJsonField => {
                let path = parse_json_path(text_arg(&args.args, 1, name, "JSON path")?)?;
                let text = cast(&first, &DataType::Utf8)?;
                let text = text.as_string::<i32>();
                Arc::new(
                    text.iter()
                        .map(|t| t.and_then(|t| extract_json(t, &path)))
                        .collect::<StringArray>(),
                )
            }
            Text::TimestampToString => {
                let pattern = java_pattern(text_arg(&args.args, 1, name, "pattern")?)?;
                let tz = zone(&args.args, name)?;
                let ms = cast(&first, &DataType::Int64)?;
                let ms: &Int64Array = ms.as_primitive();
                Arc::new(
                    ms.iter()
                        .map(|m| {
                            m.and_then(|m| tz.timestamp_millis_opt(m).single())
                                .map(|t| t.format(&pattern).to_string())
                        })
                        .collect::<StringArray>(),
                )
            }
            Text::StringToTimestamp => {
                let pattern = java_pattern(text_arg(&args.args, 1, name, "pattern")?)?;
                let tz = zone(&args.args, name)?;
                let text = cast(&first, &DataType::Utf8)?;
                let text = text.as_string::<i32>();
                let mut out = Vec::with_capacity(n);
                for t in text.iter() {
                    out.push(match t {
                        None => None,
                        Some(t) => Some(parse_time(t, &pattern, tz).ok_or_else(|| {
                            datafusion::error::DataFusionError::Execution(format!(
                                "stringtotimestamp(): '{t}' does not match the pattern"
                            ))
                        })?),
                    });
                }
                Arc::new(Int64Array::from(out))
            }
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// A text in a chrono format, as epoch milliseconds in `tz` (unless it gives its own offset).
fn parse_time(text: &str, pattern: &str, tz: chrono_tz::Tz) -> Option<i64> {
    match parse_text_time(text, pattern)? {
        TextTime::Instant(ms) => Some(ms),
        TextTime::Local(t) => tz
            .from_local_datetime(&t)
            .earliest()
            .map(|t| t.timestamp_millis()),
    }
}

/// A Java `DateTimeFormatter` pattern (what ksqlDB takes) as a chrono format string.
pub(crate) fn java_pattern(java: &str) -> Result<String> {
    let chars: Vec<char> = java.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            // 'quoted text', and '' for a quote.
            if chars.get(i + 1) == Some(&'\'') {
                out.push('\'');
                i += 2;
                continue;
            }
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                if chars[i] == '%' {
                    out.push('%');
                }
                out.push(chars[i]);
                i += 1;
            }
            i += 1;
            continue;
        }
        if !c.is_ascii_alphabetic() {
            if c == '%' {
                out.push('%');
            }
            out.push(c);
            i += 1;
            continue;
        }
        let mut n = 1;
        while chars.get(i + n) == Some(&c) {
            n += 1;
        }
        i += n;
        let spec = match (c, n) {
            ('y' | 'u', 2) => "%y",
            ('y' | 'u', _) => "%Y",
            ('M', 1) => "%-m",
            ('M', 2) => "%m",
            ('M', 3) => "%b",
            ('M', _) => "%B",
            ('d', 1) => "%-d",
            ('d', _) => "%d",
            ('D', _) => "%j",
            ('H', 1) => "%-H",
            ('H', _) => "%H",
            ('h', 1) => "%-I",
            ('h', _) => "%I",
            ('m', 1) => "%-M",
            ('m', _) => "%M",
            ('s', 1) => "%-S",
            ('s', _) => "%S",
            ('S', 1..=3) => "%3f",
            ('S', 4..=6) => "%6f",
            ('S', 7..=9) => "%9f",
            ('a', _) => "%p",
            ('E', 1..=3) => "%a",
            ('E', _) => "%A",
            ('X' | 'x', 1 | 2) | ('Z', 1..=3) => "%z",
            ('X' | 'x', _) | ('Z', _) => "%:z",
            ('z', _) => "%Z",
            _ => {
                return plan_err!(
                    "the pattern letter '{c}' is not supported; use y, M, d, D, H, h, m, s, S, a, \
                     E, X, Z or z, and quote text as in 'T'"
                );
            }
        };
        out.push_str(spec);
    }
    Ok(out)
}

#[derive(Debug, Clone)]
enum Step {
    Field(String),
    Index(usize),
}

/// `$.a.b[0]['c d']` as steps.
fn parse_json_path(path: &str) -> Result<Vec<Step>> {
    let bad = || {
        plan_err!("'{path}' is not a JSON path; write it as $.field.nested[0] (or $['field name'])")
    };
    let Some(mut rest) = path.strip_prefix('$') else {
        return bad();
    };
    let mut steps = Vec::new();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end == 0 {
                return bad();
            }
            steps.push(Step::Field(r[..end].to_owned()));
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let Some(end) = r.find(']') else {
                return bad();
            };
            let inside = r[..end].trim();
            if let Some(name) = inside
                .strip_prefix('\'')
                .and_then(|s| s.strip_suffix('\''))
                .or_else(|| inside.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
            {
                steps.push(Step::Field(name.to_owned()));
            } else if let Ok(i) = inside.parse::<usize>() {
                steps.push(Step::Index(i));
            } else {
                return bad();
            }
            rest = &r[end + 1..];
        } else {
            return bad();
        }
    }
    Ok(steps)
}

/// The value at `path` in a JSON text: a string as it is, anything else as JSON; `None` when
/// the text is not JSON, the path leads nowhere, or the value is null.
fn extract_json(text: &str, path: &[Step]) -> Option<String> {
    let mut v: serde_json::Value = serde_json::from_str(text).ok()?;
    for step in path {
        v = match (step, v) {
            (Step::Field(f), serde_json::Value::Object(mut m)) => m.remove(f)?,
            (Step::Index(i), serde_json::Value::Array(mut a)) if *i < a.len() => a.swap_remove(*i),
            _ => return None,
        };
    }
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

    use super::*;

    fn groups(latest: bool, ignore_nulls: bool) -> ByOffsetGroups {
        ByOffsetGroups {
            latest,
            ignore_nulls,
            null: ScalarValue::Utf8(None),
            values: Vec::new(),
            heap: 0,
            chosen: Vec::new(),
            touched: Vec::new(),
        }
    }

    fn texts(a: &ArrayRef) -> Vec<Option<String>> {
        a.as_string::<i32>()
            .iter()
            .map(|v| v.map(str::to_owned))
            .collect()
    }

    #[test]
    fn by_offset_over_groups_takes_each_groups_last_or_first_row() {
        let batch = |v: Vec<Option<&str>>| -> ArrayRef { Arc::new(StringArray::from(v)) };
        let one = batch(vec![Some("a1"), Some("b1"), None, Some("a2"), None]);
        let two = batch(vec![None, Some("b2"), Some("c1")]);
        let (g1, g2) = ([0, 1, 0, 0, 1], [0, 1, 2]);
        // The latest of both batches, per group.
        let latest = |ignore_nulls: bool| {
            let mut g = groups(true, ignore_nulls);
            g.update_batch(std::slice::from_ref(&one), &g1, None, 2)
                .unwrap();
            g.update_batch(std::slice::from_ref(&two), &g2, None, 3)
                .unwrap();
            texts(&g.evaluate(EmitTo::All).unwrap())
        };
        // Latest, nulls skipped: a null does not replace a value, in a batch or after it.
        assert_eq!(
            latest(true),
            [Some("a2".into()), Some("b2".into()), Some("c1".into())]
        );
        // Latest, nulls taken.
        assert_eq!(latest(false), [None, Some("b2".into()), Some("c1".into())]);
        // Earliest: the first value stays; a filtered-out row is not a candidate.
        let mut earliest = groups(false, true);
        let filter = BooleanArray::from(vec![false, true, true, true, true]);
        earliest
            .update_batch(std::slice::from_ref(&one), &g1, Some(&filter), 2)
            .unwrap();
        earliest
            .update_batch(std::slice::from_ref(&two), &g2, None, 3)
            .unwrap();
        // The first group's first emitted, the others kept.
        let first = earliest.evaluate(EmitTo::First(1)).unwrap();
        assert_eq!(texts(&first), [Some("a2".into())]);
        let rest = earliest.evaluate(EmitTo::All).unwrap();
        assert_eq!(texts(&rest), [Some("b1".into()), Some("c1".into())]);
        // States merge: a set null counts, an unset row does not.
        let mut partial = groups(true, false);
        partial.update_batch(&[one], &g1, None, 2).unwrap();
        let state = partial.state(EmitTo::All).unwrap();
        let mut merged = groups(true, true);
        merged.update_batch(&[two], &g2, None, 3).unwrap();
        merged.merge_batch(&state, &[0, 1], 3).unwrap();
        let out = merged.evaluate(EmitTo::All).unwrap();
        assert_eq!(texts(&out), [Some("a2".into()), None, Some("c1".into())]);
        assert_eq!(merged.heap, 0);
    }

    #[test]
    fn java_patterns_become_chrono_formats() {
        assert_eq!(
            java_pattern("yyyy-MM-dd'T'HH:mm:ss.SSSXXX").unwrap(),
            "%Y-%m-%dT%H:%M:%S.%3f%:z"
        );
        assert_eq!(
            java_pattern("d MMM yy, h:mm a").unwrap(),
            "%-d %b %y, %-I:%M %p"
        );
        assert_eq!(java_pattern("'100%' yyyy").unwrap(), "100%% %Y");
        assert!(java_pattern("yyyy-QQ").is_err());
    }

    #[test]
    fn times_parse_in_their_zone() {
        let utc = chrono_tz::UTC;
        let f = java_pattern("yyyy-MM-dd HH:mm:ss").unwrap();
        assert_eq!(
            parse_time("2026-01-01 00:00:01", &f, utc),
            Some(1_767_225_601_000)
        );
        let berlin: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
        assert_eq!(
            parse_time("2026-01-01 01:00:01", &f, berlin),
            Some(1_767_225_601_000)
        );
        let d = java_pattern("yyyy-MM-dd").unwrap();
        assert_eq!(parse_time("2026-01-01", &d, utc), Some(1_767_225_600_000));
        let z = java_pattern("yyyy-MM-dd HH:mm:ssXXX").unwrap();
        assert_eq!(
            parse_time("2026-01-01 02:00:00+02:00", &z, utc),
            Some(1_767_225_600_000)
        );
        assert_eq!(parse_time("yesterday", &f, utc), None);
    }

    #[test]
    fn json_paths_find_nested_fields() {
        let doc = r#"{"a": {"b": [10, {"c d": "x"}]}, "n": null, "s": "text"}"#;
        let get = |p: &str| extract_json(doc, &parse_json_path(p).unwrap());
        assert_eq!(get("$.a.b[0]").as_deref(), Some("10"));
        assert_eq!(get("$.a.b[1]['c d']").as_deref(), Some("x"));
        assert_eq!(get("$.s").as_deref(), Some("text"));
        assert_eq!(get("$.a.b").as_deref(), Some(r#"[10,{"c d":"x"}]"#));
        assert_eq!(get("$.n"), None);
        assert_eq!(get("$.missing.x"), None);
        assert_eq!(
            extract_json("not json", &parse_json_path("$.a").unwrap()),
            None
        );
        assert!(parse_json_path("a.b").is_err());
        assert!(parse_json_path("$.a[").is_err());
    }
}
