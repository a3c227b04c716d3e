//! Windows in a `LogicalPlan`. A windowed aggregation is an `Aggregate` whose GROUP BY holds one
//! call of a window function: `tumble(time, size[, grace])`, `hop(time, advance, size[, grace])`
//! or `session(time, gap[, grace])`. Sizes are milliseconds (integers) or intervals. The call's
//! value is the window, a struct of `start` and `end` timestamps; the planner replaces the
//! aggregation with Quiver's windowed aggregate operator. SQL's `WINDOW TUMBLING (…)` and the
//! DSL's `window(…)` both compile to these calls.
//!
//! `tumble` is also an ordinary scalar function (the window a time falls in), so a batch query
//! over a topic's history can group by it too; `hop` and `session` put a row in several windows
//! or in windows that depend on other rows, so they only run in continuous queries.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, StructArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Fields, IntervalMonthDayNano, TimeUnit};
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use crate::error::{EngineError, Result};

/// The name of the window column a windowed aggregation outputs (a struct of `start`, `end`).
pub const WINDOW_COLUMN: &str = "window";

/// The fields of a window value.
pub fn window_fields() -> Fields {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
    Fields::from(vec![
        Field::new("start", ts.clone(), false),
        Field::new("end", ts, false),
    ])
}

/// The type of a window value.
pub fn window_type() -> DataType {
    DataType::Struct(window_fields())
}

/// How rows are assigned to windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// Fixed windows of `size_ms`, back to back, aligned to the epoch.
    Tumbling { size_ms: i64 },
    /// Windows of `size_ms` starting every `advance_ms` (aligned to the epoch); a row is in
    /// `size_ms / advance_ms` of them.
    Hopping { size_ms: i64, advance_ms: i64 },
    /// Windows of activity per key, closed by a gap of `gap_ms` without records.
    Session { gap_ms: i64 },
}

/// A window kind with its grace period: how long after a window's end records for it are still
/// accepted (measured in event time, against the watermark).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    pub kind: WindowKind,
    pub grace_ms: i64,
}

impl WindowSpec {
    /// Checks sizes: positive, an advance that divides the size.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(EngineError::config(m));
        match self.kind {
            WindowKind::Tumbling { size_ms } if size_ms <= 0 => {
                return bad(format!(
                    "a tumbling window needs a size above 0, not {size_ms} ms"
                ));
            }
            WindowKind::Hopping {
                size_ms,
                advance_ms,
            } => {
                if size_ms <= 0 || advance_ms <= 0 {
                    return bad(format!(
                        "a hopping window needs a size and an advance above 0, not {size_ms} ms \
                         and {advance_ms} ms"
                    ));
                }
                if advance_ms > size_ms {
                    return bad(format!(
                        "a hopping window's advance ({advance_ms} ms) cannot exceed its size \
                         ({size_ms} ms): records would fall between windows"
                    ));
                }
                if size_ms % advance_ms != 0 {
                    return bad(format!(
                        "a hopping window's size ({size_ms} ms) must be a multiple of its \
                         advance ({advance_ms} ms)"
                    ));
                }
            }
            WindowKind::Session { gap_ms } if gap_ms <= 0 => {
                return bad(format!(
                    "a session window needs a gap above 0, not {gap_ms} ms"
                ));
            }
            _ => {}
        }
        if self.grace_ms < 0 {
            return bad(format!(
                "a grace period cannot be negative ({} ms)",
                self.grace_ms
            ));
        }
        Ok(())
    }

    /// The function name and literal arguments (after the time) that express this window.
    fn call_args(&self) -> (&'static str, Vec<i64>) {
        match self.kind {
            WindowKind::Tumbling { size_ms } => ("tumble", vec![size_ms, self.grace_ms]),
            WindowKind::Hopping {
                size_ms,
                advance_ms,
            } => ("hop", vec![advance_ms, size_ms, self.grace_ms]),
            WindowKind::Session { gap_ms } => ("session", vec![gap_ms, self.grace_ms]),
        }
    }

    /// The GROUP BY expression for this window over `time`.
    pub fn to_expr(&self, time: Expr) -> Expr {
        let (name, args) = self.call_args();
        let mut all = vec![time];
        all.extend(
            args.into_iter()
                .map(|a| Expr::Literal(ScalarValue::Int64(Some(a)), None)),
        );
        window_udf(name).call(all)
    }

    /// Reads a window call back from an expression (unwrapping an alias). `Ok(None)` when the
    /// expression is not a window call.
    pub fn from_expr(expr: &Expr) -> Result<Option<(WindowSpec, Expr)>> {
        let expr = match expr {
            Expr::Alias(a) => a.expr.as_ref(),
            e => e,
        };
        let Expr::ScalarFunction(f) = expr else {
            return Ok(None);
        };
        let name = f.func.name();
        if !matches!(name, "tumble" | "hop" | "session") {
            return Ok(None);
        }
        let (time, rest) = f.args.split_first().ok_or_else(|| {
            EngineError::plan(format!(
                "{name}() needs a time column as its first argument"
            ))
        })?;
        let sizes = rest
            .iter()
            .map(|a| duration_ms(name, a))
            .collect::<Result<Vec<_>>>()?;
        let kind_and_grace = match (name, sizes.as_slice()) {
            ("tumble", [size]) => (WindowKind::Tumbling { size_ms: *size }, 0),
            ("tumble", [size, grace]) => (WindowKind::Tumbling { size_ms: *size }, *grace),
            ("hop", [advance, size]) => (
                WindowKind::Hopping {
                    size_ms: *size,
                    advance_ms: *advance,
                },
                0,
            ),
            ("hop", [advance, size, grace]) => (
                WindowKind::Hopping {
                    size_ms: *size,
                    advance_ms: *advance,
                },
                *grace,
            ),
            ("session", [gap]) => (WindowKind::Session { gap_ms: *gap }, 0),
            ("session", [gap, grace]) => (WindowKind::Session { gap_ms: *gap }, *grace),
            _ => {
                return Err(EngineError::plan(format!(
                    "{name}() takes a time column then {}; got {} arguments",
                    match name {
                        "tumble" => "size[, grace]",
                        "hop" => "advance, size[, grace]",
                        _ => "gap[, grace]",
                    },
                    f.args.len()
                )));
            }
        };
        let spec = WindowSpec {
            kind: kind_and_grace.0,
            grace_ms: kind_and_grace.1,
        };
        spec.validate()?;
        Ok(Some((spec, time.clone())))
    }
}

/// A window argument: an integer of milliseconds or an interval without months.
fn duration_ms(function: &str, arg: &Expr) -> Result<i64> {
    let arg = match arg {
        Expr::Cast(c) => c.expr.as_ref(),
        Expr::TryCast(c) => c.expr.as_ref(),
        a => a,
    };
    let Expr::Literal(value, _) = arg else {
        return Err(EngineError::plan(format!(
            "{function}() takes constant sizes (milliseconds or an INTERVAL), not {arg}"
        )));
    };
    let ms = match value {
        ScalarValue::Int64(Some(v)) => Some(*v),
        ScalarValue::Int32(Some(v)) => Some(i64::from(*v)),
        ScalarValue::UInt32(Some(v)) => Some(i64::from(*v)),
        ScalarValue::IntervalDayTime(Some(v)) => {
            Some(i64::from(v.days) * 86_400_000 + i64::from(v.milliseconds))
        }
        ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano {
            months: 0,
            days,
            nanoseconds,
        })) => Some(i64::from(*days) * 86_400_000 + nanoseconds / 1_000_000),
        ScalarValue::DurationMillisecond(Some(v)) => Some(*v),
        ScalarValue::DurationSecond(Some(v)) => Some(v * 1000),
        _ => None,
    };
    ms.ok_or_else(|| {
        EngineError::plan(format!(
            "{function}() sizes are milliseconds or day/time INTERVALs (months vary in length), \
             not {value}"
        ))
    })
}

/// The window function `name` (`tumble`, `hop` or `session`).
pub fn window_udf(name: &str) -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::new_from_impl(WindowFunction {
        name: name.to_owned(),
        signature: Signature::variadic_any(Volatility::Immutable),
    }))
}

/// All window functions, to register in a session.
pub fn window_udfs() -> Vec<Arc<ScalarUDF>> {
    ["tumble", "hop", "session"]
        .into_iter()
        .map(window_udf)
        .collect()
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct WindowFunction {
    name: String,
    signature: Signature,
}

impl ScalarUDFImpl for WindowFunction {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(window_type())
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        if self.name != "tumble" {
            return plan_err!(
                "{}() puts a row in several windows, or in windows that depend on other rows; \
                 it only runs in a continuous query's GROUP BY",
                self.name
            );
        }
        let [time, size, ..] = args.args.as_slice() else {
            return exec_err!("tumble() takes a time column and a size");
        };
        let size_ms = match size {
            ColumnarValue::Scalar(ScalarValue::Int64(Some(v))) if *v > 0 => *v,
            other => return exec_err!("tumble() needs a constant size above 0 ms, not {other:?}"),
        };
        let times = time.to_array(args.number_rows)?;
        let times =
            arrow::compute::cast(&times, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
        let times = times.as_primitive::<arrow::datatypes::TimestampMillisecondType>();
        let starts: TimestampMillisecondArray = times.unary(|t| t - t.rem_euclid(size_ms));
        let ends: TimestampMillisecondArray = starts.unary(|s| s + size_ms);
        let out = StructArray::try_new(
            window_fields(),
            vec![Arc::new(starts) as ArrayRef, Arc::new(ends)],
            arrow::array::Array::nulls(times).cloned(),
        )?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}
