//! Session windows: per key, periods of activity separated by gaps of at least `gap` without
//! records. A session's window is `[first event time, last event time]`, as Kafka Streams
//! defines it. A record within `gap` of a session extends it; one that bridges two sessions
//! merges them (their accumulator states are merged with DataFusion's `merge_batch`).
//!
//! A session closes when the watermark passes its end plus the gap plus the grace period; it
//! is then emitted (EMIT FINAL) and dropped. A record whose own session would already be
//! closed is late. Within a batch, the rows of a key are sorted by time and cut into runs at
//! gaps, so each run updates its session's accumulators in one call.
//!
//! EMIT CHANGES is refused for now: a merge would have to retract the rows already emitted
//! for the sessions it replaces, and changelog retractions come with tables.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StructArray, TimestampMillisecondArray,
    UInt32Array,
};
use arrow::compute::{filter_record_batch, take};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Accumulator;
use datafusion::physical_expr::PhysicalExpr;

use crate::aggregate::{AggregateInputs, AggregateSpec, EmitMode, take_all, to_array};
use crate::error::{EngineError, Result};
use crate::operator::{Emit, LateRows, Operator, OperatorMetrics};
use crate::window::{WindowKind, window_fields};

struct Session {
    start: i64,
    end: i64,
    accumulators: Vec<Box<dyn Accumulator>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session[{}, {}]", self.start, self.end)
    }
}

/// The session-window aggregate operator (see the module docs).
#[derive(Debug)]
pub struct SessionOperator {
    spec: AggregateSpec,
    time: Arc<dyn PhysicalExpr>,
    gap: i64,
    grace: i64,
    converter: RowConverter,
    /// Open sessions per key, by start.
    sessions: HashMap<OwnedRow, Vec<Session>>,
    /// Keys by a time at or before which one of their sessions may close (its end plus the
    /// gap and grace when it was opened; sessions only grow later): a watermark move looks at
    /// the keys whose time it passed, not at every key.
    closing: BTreeMap<i64, Vec<OwnedRow>>,
    /// How many sessions are open.
    open: u64,
    metrics: OperatorMetrics,
}

impl SessionOperator {
    pub fn new(spec: AggregateSpec) -> Result<SessionOperator> {
        let Some((window, time, _)) = &spec.window else {
            return Err(EngineError::internal("a session operator without a window"));
        };
        let WindowKind::Session { gap_ms } = window.kind else {
            return Err(EngineError::internal(
                "a session operator for another window kind",
            ));
        };
        if spec.emit == EmitMode::Changes {
            return Err(EngineError::plan(
                "session windows emit once per session (EMIT FINAL) for now: a merge of \
                 sessions would have to retract rows already emitted; use emit_final / EMIT \
                 FINAL",
            ));
        }
        // Without keys, one constant key: every row is in the same sessions.
        let mut fields: Vec<SortField> = spec
            .key_schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect();
        if fields.is_empty() {
            fields.push(SortField::new(DataType::Boolean));
        }
        let converter = RowConverter::new(fields)?;
        Ok(SessionOperator {
            time: time.clone(),
            gap: gap_ms,
            grace: window.grace_ms,
            converter,
            sessions: HashMap::new(),
            closing: BTreeMap::new(),
            open: 0,
            metrics: OperatorMetrics::default(),
            spec,
        })
    }

    fn closed(&self, end: i64, watermark: i64) -> bool {
        end.saturating_add(self.gap).saturating_add(self.grace) <= watermark
    }

    fn new_accumulators(&self) -> Result<Vec<Box<dyn Accumulator>>> {
        Ok(self
            .spec
            .calls
            .iter()
            .map(|c| c.function.create_accumulator())
            .collect::<datafusion::error::Result<_>>()?)
    }

    /// Adds a run of rows of one key (times `start..=end`, rows `from..to` of the batch's
    /// arguments sorted by key and time) to its sessions. The common case, a run that extends
    /// one session, updates that session's accumulators in place; sessions the run bridges
    /// are merged into the first.
    #[allow(clippy::too_many_arguments)]
    fn add_run(
        &mut self,
        key: arrow::row::Row<'_>,
        start: i64,
        end: i64,
        from: usize,
        to: usize,
        args: &[Vec<ArrayRef>],
        filters: &[Option<BooleanArray>],
    ) -> Result<()> {
        let (gap, grace) = (self.gap, self.grace);
        let touches = |s: &Session| s.start - gap <= end && start <= s.end + gap;
        let mut opened = false;
        let sessions = self.sessions.entry(key.owned()).or_default();
        let mut session = match sessions.iter().position(touches) {
            Some(first) => {
                let mut session = sessions.remove(first);
                // Sessions are sorted by start: the others the run bridges follow.
                while first < sessions.len() && touches(&sessions[first]) {
                    let old = sessions.remove(first);
                    session.start = session.start.min(old.start);
                    session.end = session.end.max(old.end);
                    for (acc, mut other) in session.accumulators.iter_mut().zip(old.accumulators) {
                        let state = other
                            .state()?
                            .into_iter()
                            .map(|v| v.to_array())
                            .collect::<datafusion::error::Result<Vec<_>>>()?;
                        acc.merge_batch(&state)?;
                    }
                    self.open -= 1;
                }
                session.start = session.start.min(start);
                session.end = session.end.max(end);
                session
            }
            None => {
                self.open += 1;
                opened = true;
                Session {
                    start,
                    end,
                    accumulators: self
                        .spec
                        .calls
                        .iter()
                        .map(|c| c.function.create_accumulator())
                        .collect::<datafusion::error::Result<_>>()?,
                }
            }
        };
        for (i, acc) in session.accumulators.iter_mut().enumerate() {
            let mut values: Vec<ArrayRef> =
                args[i].iter().map(|a| a.slice(from, to - from)).collect();
            if let Some(f) = &filters[i] {
                let mask = f.slice(from, to - from);
                values = values
                    .iter()
                    .map(|v| arrow::compute::filter(v.as_ref(), &mask))
                    .collect::<Result<Vec<_>, _>>()?;
            }
            acc.update_batch(&values)?;
        }
        let at = sessions.partition_point(|s| s.start < session.start);
        sessions.insert(at, session);
        if opened {
            let close = end.saturating_add(gap).saturating_add(grace);
            self.closing.entry(close).or_default().push(key.owned());
        }
        Ok(())
    }

    fn output(&self, rows: Vec<(OwnedRow, i64, i64, Vec<ScalarValue>)>) -> Result<RecordBatch> {
        let mut keys = self
            .converter
            .convert_rows(rows.iter().map(|r| r.0.row()))?;
        if self.spec.keys.is_empty() {
            keys.clear();
        }
        let window = StructArray::try_new(
            window_fields(),
            vec![
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    rows.iter().map(|r| r.1),
                )) as ArrayRef,
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    rows.iter().map(|r| r.2),
                )),
            ],
            None,
        )?;
        let position = self.spec.window.as_ref().map_or(0, |w| w.2);
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.spec.schema.fields().len());
        let mut keys = keys.into_iter();
        for i in 0..=self.spec.keys.len() {
            if i == position {
                columns.push(Arc::new(window.clone()));
            } else {
                columns.push(
                    keys.next()
                        .ok_or_else(|| EngineError::internal("a session key column is missing"))?,
                );
            }
        }
        for (c, call) in self.spec.calls.iter().enumerate() {
            let values: Vec<ScalarValue> = rows.iter().map(|r| r.3[c].clone()).collect();
            columns.push(to_array(values, call)?);
        }
        Ok(RecordBatch::try_new(self.spec.schema.clone(), columns)?)
    }
}

impl Operator for SessionOperator {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn schema(&self) -> SchemaRef {
        self.spec.schema.clone()
    }

    fn process(&mut self, batch: &RecordBatch, watermark: i64, out: &mut Emit) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        self.metrics.rows_in += n as u64;
        let AggregateInputs {
            keys,
            args,
            filters,
        } = self.spec.inputs(batch)?;
        let times = arrow::compute::cast(
            &self.time.evaluate(batch)?.into_array(n)?,
            &DataType::Timestamp(TimeUnit::Millisecond, None),
        )?;
        let times = times.as_primitive::<arrow::datatypes::TimestampMillisecondType>();
        let late: BooleanArray = (0..n)
            .map(|i| Some(times.is_null(i) || self.closed(times.value(i), watermark)))
            .collect();
        let late_count = late.true_count();
        if late_count > 0 {
            self.metrics.late_rows += late_count as u64;
            out.late.push(LateRows {
                operator: self.spec.name.clone(),
                rows: filter_record_batch(batch, &late)?,
                reason: format!(
                    "event time past the session gap ({} ms) plus the grace period ({} ms) at \
                     watermark {watermark}, or no event time",
                    self.gap, self.grace
                ),
            });
        }
        let keys = if keys.is_empty() {
            vec![Arc::new(BooleanArray::from(vec![true; n])) as ArrayRef]
        } else {
            keys
        };
        let key_rows = self.converter.convert_columns(&keys)?;
        // Rows by key, then time: runs of one key without a gap update a session at once.
        let mut order: Vec<u32> = (0..n as u32).filter(|&i| !late.value(i as usize)).collect();
        order.sort_unstable_by(|&a, &b| {
            key_rows
                .row(a as usize)
                .cmp(&key_rows.row(b as usize))
                .then(times.value(a as usize).cmp(&times.value(b as usize)))
                .then(a.cmp(&b))
        });
        // The arguments in that order, once: each run is then a slice of them.
        let indices = UInt32Array::from(order.clone());
        let args = args
            .iter()
            .map(|a| take_all(a, &indices))
            .collect::<Result<Vec<_>>>()?;
        let filters = filters
            .iter()
            .map(|f| {
                f.as_ref()
                    .map(|f| take(f, &indices, None).map(|m| m.as_boolean().clone()))
                    .transpose()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut i = 0;
        while i < order.len() {
            let first = order[i] as usize;
            let (start, mut end) = (times.value(first), times.value(first));
            let mut j = i + 1;
            while j < order.len() {
                let r = order[j] as usize;
                if key_rows.row(r) != key_rows.row(first) || times.value(r) - end > self.gap {
                    break;
                }
                end = times.value(r);
                j += 1;
            }
            self.add_run(key_rows.row(first), start, end, i, j, &args, &filters)?;
            i = j;
        }
        self.metrics.groups = self.open;
        Ok(())
    }

    fn advance(&mut self, watermark: i64, out: &mut Emit) -> Result<()> {
        let (gap, grace) = (self.gap, self.grace);
        let close_of = |s: &Session| s.end.saturating_add(gap).saturating_add(grace);
        let mut closed = Vec::new();
        while let Some(entry) = self.closing.first_entry() {
            if *entry.key() > watermark {
                break;
            }
            for key in entry.remove() {
                let Some(sessions) = self.sessions.get_mut(&key) else {
                    continue;
                };
                let (done, open): (Vec<Session>, Vec<Session>) =
                    sessions.drain(..).partition(|s| close_of(s) <= watermark);
                *sessions = open;
                for s in done {
                    closed.push((key.clone(), s));
                }
                match sessions.iter().map(close_of).min() {
                    // Still open (it grew since it was indexed): looked at again then.
                    Some(next) => self.closing.entry(next).or_default().push(key),
                    None => {
                        self.sessions.remove(&key);
                    }
                }
            }
        }
        if closed.is_empty() {
            return Ok(());
        }
        closed.sort_by(|a, b| a.1.start.cmp(&b.1.start).then_with(|| a.0.cmp(&b.0)));
        let mut rows = Vec::with_capacity(closed.len());
        for (key, mut s) in closed {
            let values = s
                .accumulators
                .iter_mut()
                .map(|a| a.evaluate())
                .collect::<datafusion::error::Result<Vec<_>>>()?;
            rows.push((key, s.start, s.end, values));
        }
        let batch = self.output(rows)?;
        self.metrics.rows_out += batch.num_rows() as u64;
        self.open -= batch.num_rows() as u64;
        self.metrics.groups = self.open;
        out.batches.push(batch);
        Ok(())
    }

    fn metrics(&self) -> OperatorMetrics {
        self.metrics
    }

    fn state_bytes(&self) -> usize {
        self.sessions
            .iter()
            .map(|(key, sessions)| {
                key.as_ref().len()
                    + sessions
                        .iter()
                        .map(|s| {
                            std::mem::size_of::<Session>()
                                + s.accumulators.iter().map(|a| a.size()).sum::<usize>()
                        })
                        .sum::<usize>()
            })
            .sum()
    }

    fn fresh(&self) -> Result<Box<dyn Operator>> {
        Ok(Box::new(SessionOperator::new(self.spec.clone())?))
    }

    fn snapshot(&mut self) -> Result<Option<RecordBatch>> {
        let mut fields: Vec<arrow::datatypes::FieldRef> = vec![
            Arc::new(arrow::datatypes::Field::new(
                "__start",
                DataType::Int64,
                false,
            )),
            Arc::new(arrow::datatypes::Field::new(
                "__end",
                DataType::Int64,
                false,
            )),
            Arc::new(arrow::datatypes::Field::new(
                "__key",
                DataType::Binary,
                false,
            )),
        ];
        let mut call_fields = Vec::new();
        for (i, call) in self.spec.calls.iter().enumerate() {
            for f in call.function.state_fields()? {
                let f = f
                    .as_ref()
                    .clone()
                    .with_name(format!("__{i}_{}", f.name()))
                    .with_nullable(true);
                call_fields.push(f.clone());
                fields.push(Arc::new(f));
            }
        }
        let schema = Arc::new(arrow::datatypes::Schema::new(fields));
        let mut starts = Vec::new();
        let mut ends = Vec::new();
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut states: Vec<Vec<ScalarValue>> = vec![Vec::new(); call_fields.len()];
        for (key, sessions) in &mut self.sessions {
            for session in sessions.iter_mut() {
                starts.push(session.start);
                ends.push(session.end);
                keys.push(key.as_ref().to_vec());
                let mut at = 0;
                let mut rebuilt = Vec::with_capacity(session.accumulators.len());
                for (c, acc) in session.accumulators.iter_mut().enumerate() {
                    // `state` consumes: rebuild the accumulator from what it gave.
                    let values = acc.state()?;
                    let arrays = values
                        .iter()
                        .map(|v| v.to_array())
                        .collect::<datafusion::error::Result<Vec<_>>>()?;
                    let mut fresh = self.spec.calls[c].function.create_accumulator()?;
                    fresh.merge_batch(&arrays)?;
                    rebuilt.push(fresh);
                    for v in values {
                        states[at].push(v);
                        at += 1;
                    }
                }
                session.accumulators = rebuilt;
            }
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(arrow::array::Int64Array::from(starts)),
            Arc::new(arrow::array::Int64Array::from(ends)),
            Arc::new(arrow::array::BinaryArray::from_iter_values(keys.iter())),
        ];
        for (values, field) in states.into_iter().zip(&call_fields) {
            columns.push(if values.is_empty() {
                arrow::array::new_empty_array(field.data_type())
            } else {
                ScalarValue::iter_to_array(values)?
            });
        }
        Ok(Some(RecordBatch::try_new(schema, columns)?))
    }

    fn restore(&mut self, state: &RecordBatch) -> Result<()> {
        let starts = state
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>();
        let ends = state
            .column(1)
            .as_primitive::<arrow::datatypes::Int64Type>();
        let keys = state.column(2).as_binary::<i32>();
        let parser = self.converter.parser();
        for row in 0..state.num_rows() {
            let key = parser.parse(keys.value(row)).owned();
            let mut accumulators = self.new_accumulators()?;
            let mut at = 3;
            for (c, acc) in accumulators.iter_mut().enumerate() {
                let n = self.spec.calls[c].function.state_fields()?.len();
                let one: Vec<ArrayRef> = state.columns()[at..at + n]
                    .iter()
                    .map(|a| a.slice(row, 1))
                    .collect();
                acc.merge_batch(&one)?;
                at += n;
            }
            let session = Session {
                start: starts.value(row),
                end: ends.value(row),
                accumulators,
            };
            let close = session
                .end
                .saturating_add(self.gap)
                .saturating_add(self.grace);
            self.closing.entry(close).or_default().push(key.clone());
            let sessions = self.sessions.entry(key).or_default();
            let i = sessions.partition_point(|s| s.start < session.start);
            sessions.insert(i, session);
            self.open += 1;
        }
        self.metrics.groups = self.open;
        Ok(())
    }

    fn partition_keys(&self) -> Option<Vec<Arc<dyn PhysicalExpr>>> {
        Some(self.spec.keys.clone())
    }

    fn state_keys(&self, state: &RecordBatch) -> Result<Vec<ArrayRef>> {
        if self.spec.keys.is_empty() {
            return Ok(Vec::new());
        }
        let keys = state.column(2).as_binary::<i32>();
        let parser = self.converter.parser();
        Ok(self
            .converter
            .convert_rows((0..keys.len()).map(|i| parser.parse(keys.value(i))))?)
    }
}
