//! Operator state snapshots, the part of checkpoints each operator owns: an operator restored
//! from a snapshot taken midway behaves exactly as the one that went on, for every aggregation
//! kind, and a snapshot split by key between two instances (as a rescaled query splits it)
//! gives the same results between them.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::sync::Arc;

use arrow::array::{AsArray, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::util::display::array_value_to_string;
use datafusion::functions_aggregate::expr_fn::{avg, count, count_distinct, sum};
use datafusion::prelude::{col, lit};
use quiver_engine::dsl::{Stream, StreamsBuilder};
use quiver_engine::operator::{Emit, Operator};
use quiver_engine::plan::{PlanOptions, plan_query};
use quiver_engine::{EmitMode, MemorySource, WindowKind, WindowSpec};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("customer", DataType::Utf8, false),
        Field::new("amount", DataType::Int64, false),
        Field::new(
            "rowtime",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]))
}

/// 40 batches of 50 events, a few seconds of event time each, some out of order.
fn batches() -> Vec<RecordBatch> {
    let mut seed = 7u64;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed >> 33
    };
    (0..40)
        .map(|b| {
            let rows: Vec<(String, i64, i64)> = (0..50)
                .map(|i| {
                    let t = 1_767_225_600_000 + (b * 50 + i) * 97 - (next() % 800) as i64;
                    (format!("c{}", next() % 9), (next() % 500) as i64, t)
                })
                .collect();
            RecordBatch::try_new(
                schema(),
                vec![
                    Arc::new(StringArray::from_iter_values(
                        rows.iter().map(|r| r.0.as_str()),
                    )),
                    Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
                    Arc::new(TimestampMillisecondArray::from_iter_values(
                        rows.iter().map(|r| r.2),
                    )),
                ],
            )
            .unwrap()
        })
        .collect()
}

fn stream() -> Stream {
    let source = MemorySource::new(schema(), vec![]).unwrap();
    StreamsBuilder::new()
        .stream("events", Arc::new(source))
        .unwrap()
}

/// A planned query's operator chain (projections, then its one aggregation).
struct Chain(Vec<Box<dyn Operator>>);

impl Chain {
    fn aggregate(&mut self) -> &mut Box<dyn Operator> {
        self.0
            .iter_mut()
            .find(|o| o.partition_keys().is_some())
            .unwrap()
    }

    fn fresh(&self) -> Chain {
        Chain(self.0.iter().map(|o| o.fresh().unwrap()).collect())
    }

    fn process(&mut self, batch: &RecordBatch, watermark: i64, out: &mut Vec<RecordBatch>) {
        let mut current = vec![batch.clone()];
        for op in &mut self.0 {
            let mut emit = Emit::default();
            for b in &current {
                op.process(b, watermark, &mut emit).unwrap();
            }
            current = emit.batches;
        }
        out.extend(current);
    }

    fn advance(&mut self, watermark: i64, out: &mut Vec<RecordBatch>) {
        for i in 0..self.0.len() {
            let mut emit = Emit::default();
            self.0[i].advance(watermark, &mut emit).unwrap();
            let mut current = emit.batches;
            for op in &mut self.0[i + 1..] {
                let mut next = Emit::default();
                for b in &current {
                    op.process(b, watermark, &mut next).unwrap();
                }
                current = next.batches;
            }
            out.extend(current);
        }
    }
}

fn aggregate(stream: Stream, emit: EmitMode) -> Chain {
    Chain(
        plan_query(stream.plan(), PlanOptions { emit })
            .unwrap()
            .operators,
    )
}

/// Feeds `batches` with the watermark moving to the largest time seen after each, as a single
/// ordered input; `end` closes everything. Returns the output rows as strings, in order.
fn feed(op: &mut Chain, batches: &[RecordBatch], watermark: &mut i64, end: bool) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        op.process(b, *watermark, &mut out);
        let max = arrow::compute::max(
            b.column(2)
                .as_primitive::<arrow::datatypes::TimestampMillisecondType>(),
        )
        .unwrap();
        if max > *watermark {
            *watermark = max;
            op.advance(max, &mut out);
        }
    }
    if end {
        op.advance(i64::MAX, &mut out);
    }
    rows(&out)
}

fn rows(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            let cells: Vec<String> = b
                .columns()
                .iter()
                .map(|c| array_value_to_string(c, r).unwrap())
                .collect();
            out.push(cells.join(" | "));
        }
    }
    out
}

fn cases() -> Vec<(&'static str, Chain)> {
    let window = |kind| WindowSpec {
        kind,
        grace_ms: 500,
    };
    let aggs = || {
        vec![
            count(lit(1)).alias("n"),
            sum(col("amount")).alias("total"),
            avg(col("amount")).alias("mean"),
            count_distinct(col("amount")).alias("distinct"),
        ]
    };
    let grouped = || stream().group_by([col("customer")]).unwrap();
    vec![
        (
            "tumbling, EMIT FINAL",
            aggregate(
                grouped()
                    .window(window(WindowKind::Tumbling { size_ms: 2_000 }))
                    .unwrap()
                    .emit_final()
                    .aggregate(aggs())
                    .unwrap()
                    .to_stream(),
                EmitMode::Final,
            ),
        ),
        (
            "hopping, EMIT CHANGES",
            aggregate(
                grouped()
                    .window(window(WindowKind::Hopping {
                        size_ms: 3_000,
                        advance_ms: 1_000,
                    }))
                    .unwrap()
                    .aggregate(aggs())
                    .unwrap()
                    .to_stream(),
                EmitMode::Changes,
            ),
        ),
        (
            "updating",
            aggregate(
                grouped().aggregate(aggs()).unwrap().to_stream(),
                EmitMode::Changes,
            ),
        ),
        (
            "session, EMIT FINAL",
            aggregate(
                grouped()
                    .window(window(WindowKind::Session { gap_ms: 300 }))
                    .unwrap()
                    .emit_final()
                    .aggregate(aggs())
                    .unwrap()
                    .to_stream(),
                EmitMode::Final,
            ),
        ),
        (
            "tumbling without keys",
            aggregate(
                stream()
                    .group_by(Vec::new())
                    .unwrap()
                    .window(window(WindowKind::Tumbling { size_ms: 5_000 }))
                    .unwrap()
                    .emit_final()
                    .aggregate(aggs())
                    .unwrap()
                    .to_stream(),
                EmitMode::Final,
            ),
        ),
        (
            "top 3 per key",
            aggregate(
                stream()
                    .top_n(["customer"], "amount", true, 3)
                    .unwrap()
                    .to_stream(),
                EmitMode::Changes,
            ),
        ),
        (
            "deduplication",
            aggregate(
                stream().dedup([col("customer")], 1_000, 500).unwrap(),
                EmitMode::Changes,
            ),
        ),
    ]
}

#[test]
fn an_operator_restored_from_a_snapshot_goes_on_exactly_as_the_original() {
    let all = batches();
    let (before, after) = all.split_at(17);
    for (name, mut original) in cases() {
        // A twin that is never snapshotted: taking a snapshot must not change the original.
        let mut twin = original.fresh();
        let mut watermark = i64::MIN;
        feed(&mut original, before, &mut watermark, false);
        let mut tw = i64::MIN;
        feed(&mut twin, before, &mut tw, false);
        let untouched = feed(&mut twin, after, &mut tw, true);
        let state = original.aggregate().snapshot().unwrap().unwrap();
        assert!(state.num_rows() > 0, "{name}: no state at the snapshot");
        let mut restored = original.fresh();
        restored.aggregate().restore(&state).unwrap();
        let mut w1 = watermark;
        let mut w2 = watermark;
        let went_on = feed(&mut original, after, &mut w1, true);
        let from_snapshot = feed(&mut restored, after, &mut w2, true);
        assert!(!went_on.is_empty(), "{name}");
        assert_eq!(
            went_on, untouched,
            "{name}: the snapshot changed the original"
        );
        assert_eq!(from_snapshot, went_on, "{name}");
    }
}

/// Rows whose customer ends in an even digit (`first`) or an odd one.
fn half(batch: &RecordBatch, column: usize, first: bool) -> RecordBatch {
    let c = batch.column(column).as_string::<i32>();
    let mask: arrow::array::BooleanArray = (0..batch.num_rows())
        .map(|r| Some(c.value(r).ends_with(['0', '2', '4', '6', '8']) == first))
        .collect();
    filter_record_batch(batch, &mask).unwrap()
}

#[test]
fn a_snapshot_split_by_key_between_two_instances_gives_the_same_results() {
    let all = batches();
    let (before, after) = all.split_at(23);
    // Keyed aggregations whose snapshots carry the key as a column.
    for (name, mut original) in cases().into_iter().take(3) {
        let mut watermark = i64::MIN;
        feed(&mut original, before, &mut watermark, false);
        let state = original.aggregate().snapshot().unwrap().unwrap();
        let key = state.schema().index_of("customer").unwrap();
        let mut halves = Vec::new();
        for first in [true, false] {
            let mut op = original.fresh();
            op.aggregate().restore(&half(&state, key, first)).unwrap();
            halves.push((op, first));
        }
        let mut w = watermark;
        let mut together = feed(&mut original, after, &mut w, true);
        let mut apart = Vec::new();
        for (mut op, first) in halves {
            // The watermark is global: each half moves with the whole input's.
            let mut w = watermark;
            for b in after {
                let max = arrow::compute::max(
                    b.column(2)
                        .as_primitive::<arrow::datatypes::TimestampMillisecondType>(),
                )
                .unwrap();
                let mut out = Vec::new();
                op.process(&half(b, 0, first), w, &mut out);
                if max > w {
                    w = max;
                    op.advance(max, &mut out);
                }
                apart.extend(rows(&out));
            }
            let mut out = Vec::new();
            op.advance(i64::MAX, &mut out);
            apart.extend(rows(&out));
        }
        together.sort();
        apart.sort();
        assert!(!together.is_empty());
        assert_eq!(apart, together, "{name}");
    }
}
