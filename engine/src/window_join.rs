//! Stream–stream joins within a time bound (Kafka Streams' `JoinWindows`, SQL's interval
//! join): a left record at `t` and a right record at `u` with equal keys join when
//! `t - before <= u <= t + after` ([`crate::join::JoinWindow`]; `|t - u| <= within` when both
//! bounds are `within`).
//!
//! - **Buffers**: each side's records wait, per key, for records of the other side that may
//!   still come. A left record at `t` can meet right records up to `t + after` (a right record
//!   at `u`, left records up to `u + before`); once the watermark less the grace period has
//!   passed that, it is dropped from its buffer. Records of one key meet in one task: both
//!   sides are re-keyed through the exchange ([`crate::join::JoinTag`]).
//! - **Results**: an inner pair is emitted as soon as its second record arrives. A left (or
//!   full outer) join emits a left record that met nothing with the right's columns null when
//!   it leaves its buffer, so it is emitted once and never retracted (as Kafka Streams does
//!   since 3.1); a full outer join does the same for right records.
//! - **Late**: a record that arrives when the other side has already let go of every record
//!   it could meet (the latest of them is older than that side's expiry) is late (counted, and
//!   sent to the late-data topic when there is one).
//! - A condition on top of the key equality is evaluated on each pair; a pair that fails it
//!   does not count as a match.

use std::collections::VecDeque;

use datafusion::common::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Int64Array, RecordBatch, UInt8Array,
    UInt32Array,
};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimestampMillisecondType};
use arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::physical_expr::PhysicalExpr;

use crate::error::{EngineError, Result};
use crate::format::ROWTIME;
use crate::join::JoinKind;
use crate::operator::{Emit, LateRows, Operator, OperatorMetrics};

/// A buffered record.
#[derive(Debug, Clone)]
struct Entry {
    time: i64,
    row: OwnedRow,
    matched: bool,
}

/// Where an entry of time `time` goes in a sequence sorted by time, after the entries of the
/// same time: found from the back, as records come nearly in time order (tasks feeding a join
/// run a little apart), with a binary search when it is far from the back.
fn place<T>(items: &VecDeque<T>, time: i64, time_of: impl Fn(&T) -> i64) -> usize {
    let mut at = items.len();
    while at > 0 && time_of(&items[at - 1]) > time {
        at -= 1;
        if items.len() - at == 32 {
            return items.partition_point(|e| time_of(e) <= time);
        }
    }
    at
}

/// The keys of a buffer's entries by the entries' times, earliest first: one bucket per
/// millisecond that has entries, a key once per entry. Emptied buckets are kept for reuse, so
/// queuing allocates nothing once the buffer's size is steady.
#[derive(Debug, Default)]
struct TimeQueue {
    buckets: VecDeque<(i64, Vec<Arc<[u8]>>)>,
    spare: Vec<Vec<Arc<[u8]>>>,
}

impl TimeQueue {
    fn push(&mut self, time: i64, key: Arc<[u8]>) {
        let at = place(&self.buckets, time, |b| b.0);
        if at > 0 && self.buckets[at - 1].0 == time {
            self.buckets[at - 1].1.push(key);
        } else {
            let mut keys = self.spare.pop().unwrap_or_default();
            keys.push(key);
            self.buckets.insert(at, (time, keys));
        }
    }

    /// The keys of the earliest bucket, when it is older than `before`.
    fn pop_before(&mut self, before: i64) -> Option<Vec<Arc<[u8]>>> {
        if self.buckets.front().is_some_and(|b| b.0 < before) {
            self.buckets.pop_front().map(|b| b.1)
        } else {
            None
        }
    }

    /// A popped bucket back, for reuse.
    fn recycle(&mut self, mut keys: Vec<Arc<[u8]>>) {
        keys.clear();
        if self.spare.len() < 64 {
            self.spare.push(keys);
        }
    }
}

/// One side's buffer.
#[derive(Debug, Default)]
struct Buffer {
    /// Each key's entries in time order, so the watermark expires them from the front.
    by_key: HashMap<Arc<[u8]>, VecDeque<Entry>>,
    /// Keys by the times of their entries, to find what the watermark expires.
    by_time: TimeQueue,
    rows: usize,
    bytes: usize,
}

impl Buffer {
    fn insert(&mut self, key: &[u8], entry: Entry) {
        self.rows += 1;
        self.bytes += key.len() + entry.row.as_ref().len() + std::mem::size_of::<Entry>();
        let time = entry.time;
        let key = match self.by_key.get_key_value_mut(key) {
            Some((key, entries)) => {
                let at = place(entries, entry.time, |e| e.time);
                entries.insert(at, entry);
                key.clone()
            }
            None => {
                let key: Arc<[u8]> = key.into();
                self.by_key.insert(key.clone(), VecDeque::from([entry]));
                key
            }
        };
        self.by_time.push(time, key);
    }

    /// Removes the entries older than `before`, returning those that never matched.
    fn expire(&mut self, before: i64) -> Vec<OwnedRow> {
        let mut unmatched = Vec::new();
        while let Some(keys) = self.by_time.pop_before(before) {
            for key in &keys {
                let Some(entries) = self.by_key.get_mut(key) else {
                    continue;
                };
                // A key queued at several expired times is emptied of them the first time.
                while entries.front().is_some_and(|e| e.time < before) {
                    let Some(e) = entries.pop_front() else {
                        break;
                    };
                    self.rows -= 1;
                    self.bytes -= key.len() + e.row.as_ref().len() + std::mem::size_of::<Entry>();
                    if !e.matched {
                        unmatched.push(e.row);
                    }
                }
                if entries.is_empty() {
                    self.by_key.remove(key);
                }
            }
            self.by_time.recycle(keys);
        }
        unmatched
    }
}

/// What a [`StreamStreamJoin`] is made of, from the planner.
#[derive(Debug, Clone)]
pub(crate) struct WindowJoinSpec {
    pub name: String,
    pub kind: JoinKind,
    pub window: crate::join::JoinWindow,
    pub grace_ms: i64,
    pub keys: usize,
    /// Each side's tagged layout (see [`crate::join::JoinTag`]).
    pub schemas: [SchemaRef; 2],
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    pub schema: SchemaRef,
}

/// The stream–stream join operator (see the module docs).
pub struct StreamStreamJoin {
    spec: WindowJoinSpec,
    time: [usize; 2],
    key_rows: RowConverter,
    /// Each side's columns (after the tag and keys), as rows.
    side_rows: [RowConverter; 2],
    buffers: [Buffer; 2],
    watermark: i64,
    metrics: OperatorMetrics,
}

impl fmt::Debug for StreamStreamJoin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamStreamJoin")
            .field("name", &self.spec.name)
            .field("kind", &self.spec.kind)
            .field("buffered", &(self.buffers[0].rows + self.buffers[1].rows))
            .finish()
    }
}

fn sort_fields(fields: &[arrow::datatypes::FieldRef]) -> Vec<SortField> {
    fields
        .iter()
        .map(|f| SortField::new(f.data_type().clone()))
        .collect()
}

impl StreamStreamJoin {
    pub(crate) fn new(spec: WindowJoinSpec) -> Result<StreamStreamJoin> {
        if spec.window.before_ms < 0 || spec.window.after_ms < 0 || spec.grace_ms < 0 {
            return Err(EngineError::config(format!(
                "join '{}': the time bound and the grace period cannot be negative",
                spec.name
            )));
        }
        let time = |s: &Schema, side: &str| {
            s.index_of(ROWTIME).map_err(|_| {
                EngineError::plan(format!(
                    "the {side} side of join '{}' has no event time ({ROWTIME}); keep it in the \
                     {side} stream's columns",
                    spec.name
                ))
            })
        };
        let time = [
            time(&spec.schemas[0], "left")?,
            time(&spec.schemas[1], "right")?,
        ];
        let key_fields = spec.schemas[0].fields()[1..=spec.keys].to_vec();
        let side =
            |i: usize| RowConverter::new(sort_fields(&spec.schemas[i].fields()[1 + spec.keys..]));
        Ok(StreamStreamJoin {
            time,
            key_rows: RowConverter::new(sort_fields(&key_fields))?,
            side_rows: [side(0)?, side(1)?],
            buffers: [Buffer::default(), Buffer::default()],
            watermark: i64::MIN,
            metrics: OperatorMetrics::default(),
            spec,
        })
    }

    /// How far after its own time a record of `side` can meet the other side's records.
    fn reach(&self, side: usize) -> i64 {
        if side == 0 {
            self.spec.window.after_ms
        } else {
            self.spec.window.before_ms
        }
    }

    /// Records of `side` older than this can meet nothing that is still to come.
    fn expiry(&self, side: usize) -> i64 {
        self.watermark
            .saturating_sub(self.spec.grace_ms)
            .saturating_sub(self.reach(side))
    }

    /// Whether a record of `side` at `t` and one of the other side at `u` are within the
    /// bounds.
    fn within(&self, side: usize, t: i64, u: i64) -> bool {
        let (left, right) = if side == 0 { (t, u) } else { (u, t) };
        let d = right.saturating_sub(left);
        -self.spec.window.before_ms <= d && d <= self.spec.window.after_ms
    }

    /// Whether unmatched records of `side` are emitted (with the other side null).
    fn keeps_unmatched(&self, side: usize) -> bool {
        match self.spec.kind {
            JoinKind::Inner => false,
            JoinKind::Left => side == 0,
            JoinKind::Full => true,
        }
    }

    /// Output rows from pairs of rows (either side `None`: nulls), in the output schema.
    fn assemble(
        &self,
        left: &[Option<&OwnedRow>],
        right: &[Option<&OwnedRow>],
    ) -> Result<RecordBatch> {
        let n = left.len();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.spec.schema.fields().len());
        for (side, rows) in [left, right].into_iter().enumerate() {
            let present: Vec<_> = rows.iter().flatten().map(|r| r.row()).collect();
            let values = self.side_rows[side].convert_rows(present)?;
            let mut next = 0u32;
            let idx: UInt32Array = rows
                .iter()
                .map(|r| {
                    r.map(|_| {
                        next += 1;
                        next - 1
                    })
                })
                .collect();
            for c in values {
                columns.push(take(c.as_ref(), &idx, None)?);
            }
        }
        Ok(RecordBatch::try_new_with_options(
            self.spec.schema.clone(),
            columns,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(n)),
        )?)
    }

    /// A batch of `side`: each record meets the other side's buffered records of its key
    /// within the bound, then waits in its own buffer.
    fn take_side(&mut self, side: usize, batch: &RecordBatch, out: &mut Emit) -> Result<()> {
        let other = 1 - side;
        let key_columns = batch.columns()[1..=self.spec.keys].to_vec();
        let keys = self.key_rows.convert_columns(&key_columns)?;
        let rows = self.side_rows[side].convert_columns(&batch.columns()[1 + self.spec.keys..])?;
        let times = batch
            .column(self.time[side])
            .as_primitive::<TimestampMillisecondType>();
        // Late: every record of the other side this one could meet is gone.
        let expiry = self.expiry(other);
        let reach = self.reach(side);
        let mut late = Vec::new();
        // Candidate pairs: (this record, the other's entry by key and position).
        let mut pairs: Vec<(usize, usize)> = Vec::new();
        let mut fresh: Vec<(usize, Entry)> = Vec::new();
        for i in 0..batch.num_rows() {
            let null_key = key_columns.iter().any(|k| k.is_null(i));
            if times.is_null(i) || times.value(i).saturating_add(reach) < expiry {
                late.push(i as u32);
                continue;
            }
            let t = times.value(i);
            let key = keys.row(i);
            if !null_key && let Some(entries) = self.buffers[other].by_key.get(key.as_ref()) {
                for (j, e) in entries.iter().enumerate() {
                    if self.within(side, t, e.time) {
                        pairs.push((i, j));
                    }
                }
            }
            fresh.push((
                i,
                Entry {
                    time: t,
                    row: rows.row(i).owned(),
                    matched: false,
                },
            ));
        }
        if !late.is_empty() {
            let rows = arrow::compute::take_record_batch(batch, &UInt32Array::from(late))?;
            self.metrics.late_rows += rows.num_rows() as u64;
            let indices: Vec<usize> = (1 + self.spec.keys..rows.num_columns()).collect();
            out.late.push(LateRows {
                operator: self.spec.name.clone(),
                rows: rows.project(&indices)?,
                reason: format!(
                    "it arrived after the join's buffers let go of its time ({}, grace {} ms)",
                    self.spec.window, self.spec.grace_ms
                ),
            });
        }
        // Evaluate the pairs (and the condition) in one batch: this side's columns taken from
        // the batch, the other's converted from its buffered rows.
        let mut matched_this: Vec<bool> = vec![false; batch.num_rows()];
        if !pairs.is_empty() {
            let mine_idx = UInt32Array::from_iter_values(pairs.iter().map(|(i, _)| *i as u32));
            let mine: Vec<ArrayRef> = batch.columns()[1 + self.spec.keys..]
                .iter()
                .map(|c| take(c.as_ref(), &mine_idx, None))
                .collect::<std::result::Result<_, _>>()?;
            let theirs_rows: Vec<_> = pairs
                .iter()
                .filter_map(|(i, j)| {
                    self.buffers[other]
                        .by_key
                        .get(keys.row(*i).as_ref())
                        .map(|entries| entries[*j].row.row())
                })
                .collect();
            let theirs = self.side_rows[other].convert_rows(theirs_rows)?;
            let (left, right) = if side == 0 {
                (mine, theirs)
            } else {
                (theirs, mine)
            };
            let mut columns = left;
            columns.extend(right);
            let mut joined = RecordBatch::try_new_with_options(
                self.spec.schema.clone(),
                columns,
                &arrow::array::RecordBatchOptions::new().with_row_count(Some(pairs.len())),
            )?;
            let mut keep: Vec<bool> = vec![true; pairs.len()];
            if let Some(filter) = &self.spec.filter {
                let holds = filter.evaluate(&joined)?.into_array(joined.num_rows())?;
                let holds = holds.as_boolean();
                for (p, k) in keep.iter_mut().enumerate() {
                    *k = holds.is_valid(p) && holds.value(p);
                }
                joined = arrow::compute::filter_record_batch(
                    &joined,
                    &BooleanArray::from(keep.clone()),
                )?;
            }
            for (p, (i, j)) in pairs.iter().enumerate() {
                if keep[p] {
                    matched_this[*i] = true;
                    if let Some(entries) = self.buffers[other].by_key.get_mut(keys.row(*i).as_ref())
                    {
                        entries[*j].matched = true;
                    }
                }
            }
            self.metrics.rows_out += joined.num_rows() as u64;
            if joined.num_rows() > 0 {
                out.batches.push(joined);
            }
        }
        for (i, mut entry) in fresh {
            entry.matched = matched_this[i];
            self.buffers[side].insert(keys.row(i).as_ref(), entry);
        }
        self.metrics.groups = (self.buffers[0].rows + self.buffers[1].rows) as u64;
        Ok(())
    }
}

/// The layout of a stream–stream join's state rows.
fn state_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("side", DataType::UInt8, false),
        Field::new("key", DataType::Binary, false),
        Field::new("time", DataType::Int64, false),
        Field::new("row", DataType::Binary, false),
        Field::new("matched", DataType::Boolean, false),
    ]))
}

impl Operator for StreamStreamJoin {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn schema(&self) -> SchemaRef {
        self.spec.schema.clone()
    }

    fn process(&mut self, batch: &RecordBatch, watermark: i64, out: &mut Emit) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.advance(watermark, out)?;
        self.metrics.rows_in += batch.num_rows() as u64;
        let sides = batch
            .column(0)
            .as_primitive::<arrow::datatypes::UInt8Type>();
        let side = sides.value(0) as usize;
        if side > 1 || sides.iter().any(|s| s != Some(side as u8)) {
            return Err(EngineError::internal(
                "a join batch mixes rows of both sides",
            ));
        }
        self.take_side(side, batch, out)
    }

    fn advance(&mut self, watermark: i64, out: &mut Emit) -> Result<()> {
        if watermark <= self.watermark {
            return Ok(());
        }
        self.watermark = watermark;
        for side in 0..2 {
            let unmatched = self.buffers[side].expire(self.expiry(side));
            if unmatched.is_empty() || !self.keeps_unmatched(side) {
                continue;
            }
            let present: Vec<Option<&OwnedRow>> = unmatched.iter().map(Some).collect();
            let none: Vec<Option<&OwnedRow>> = vec![None; unmatched.len()];
            let batch = if side == 0 {
                self.assemble(&present, &none)?
            } else {
                self.assemble(&none, &present)?
            };
            self.metrics.rows_out += batch.num_rows() as u64;
            out.batches.push(batch);
        }
        self.metrics.groups = (self.buffers[0].rows + self.buffers[1].rows) as u64;
        Ok(())
    }

    fn metrics(&self) -> OperatorMetrics {
        self.metrics
    }

    fn state_bytes(&self) -> usize {
        self.buffers.iter().map(|b| b.bytes).sum()
    }

    fn snapshot(&mut self) -> Result<Option<RecordBatch>> {
        let mut sides = Vec::new();
        let mut keys: Vec<&[u8]> = Vec::new();
        let mut times = Vec::new();
        let mut rows: Vec<&[u8]> = Vec::new();
        let mut matched = Vec::new();
        for (side, buffer) in self.buffers.iter().enumerate() {
            for (key, entries) in &buffer.by_key {
                for e in entries {
                    sides.push(side as u8);
                    keys.push(key);
                    times.push(e.time);
                    rows.push(e.row.as_ref());
                    matched.push(e.matched);
                }
            }
        }
        Ok(Some(RecordBatch::try_new(
            state_schema(),
            vec![
                Arc::new(UInt8Array::from(sides)),
                Arc::new(BinaryArray::from_iter_values(keys)),
                Arc::new(Int64Array::from(times)),
                Arc::new(BinaryArray::from_iter_values(rows)),
                Arc::new(BooleanArray::from(matched)),
            ],
        )?))
    }

    fn restore(&mut self, state: &RecordBatch) -> Result<()> {
        if state.num_columns() != 5 {
            return Err(EngineError::Checkpoint(format!(
                "the state of join '{}' has {} columns, not 5",
                self.spec.name,
                state.num_columns()
            )));
        }
        let sides = state
            .column(0)
            .as_primitive::<arrow::datatypes::UInt8Type>();
        let keys = state.column(1).as_binary::<i32>();
        let times = state
            .column(2)
            .as_primitive::<arrow::datatypes::Int64Type>();
        let rows = state.column(3).as_binary::<i32>();
        let matched = state.column(4).as_boolean();
        let parsers = [self.side_rows[0].parser(), self.side_rows[1].parser()];
        for i in 0..state.num_rows() {
            let side = (sides.value(i) as usize).min(1);
            let entry = Entry {
                time: times.value(i),
                row: parsers[side].parse(rows.value(i)).owned(),
                matched: matched.value(i),
            };
            self.buffers[side].insert(keys.value(i), entry);
        }
        self.metrics.groups = (self.buffers[0].rows + self.buffers[1].rows) as u64;
        Ok(())
    }

    fn state_keys(&self, state: &RecordBatch) -> Result<Vec<ArrayRef>> {
        crate::operator::row_keys(&self.key_rows, state, 1)
    }

    fn fresh(&self) -> Result<Box<dyn Operator>> {
        Ok(Box::new(StreamStreamJoin::new(self.spec.clone())?))
    }

    fn partition_keys(&self) -> Option<Vec<Arc<dyn PhysicalExpr>>> {
        Some(crate::join::key_columns(self.spec.keys))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

    use super::*;

    #[test]
    fn the_time_queue_gives_keys_back_in_time_order_however_far_back_they_came() {
        // Mostly in order, some a little behind, some far behind (past the scan from the back).
        let mut times: Vec<i64> = (0..500).collect();
        for i in (0..500).step_by(7) {
            times.swap(i, (i + 3).min(499));
        }
        times.swap(450, 5);
        times.extend([2, 2, 499, 250]);
        let mut queue = TimeQueue::default();
        for (n, &t) in times.iter().enumerate() {
            queue.push(t, Arc::from(format!("{t}/{n}").into_bytes()));
        }
        let mut popped = Vec::new();
        while let Some(keys) = queue.pop_before(300) {
            popped.extend(keys.iter().map(|k| String::from_utf8(k.to_vec()).unwrap()));
            queue.recycle(keys);
        }
        let mut want: Vec<(i64, usize)> = times
            .iter()
            .enumerate()
            .filter(|(_, t)| **t < 300)
            .map(|(n, t)| (*t, n))
            .collect();
        // Stable by time: a bucket keeps its keys in arrival order.
        want.sort_by_key(|(t, _)| *t);
        let want: Vec<String> = want.iter().map(|(t, n)| format!("{t}/{n}")).collect();
        assert_eq!(popped, want);
        assert!(queue.buckets.front().is_some_and(|b| b.0 == 300));
        assert!(!queue.spare.is_empty(), "popped buckets are kept for reuse");
    }
}
