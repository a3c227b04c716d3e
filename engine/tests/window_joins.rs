//! Stream–stream joins within a time bound against a batch oracle: the same two streams
//! through the streaming join and through a one-shot DataFusion interval join over the
//! complete input give the same rows, for inner, left and full outer joins, with a condition,
//! at one and at several tasks; records too late for the buffers are counted.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod common;

use std::sync::Arc;

use common::rows;

use arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext, col};
use quiver_engine::dsl::{Stream, StreamsBuilder};
use quiver_engine::{Collector, JoinKind, JoinWindow, MemorySource, QueryOptions, Runtime};

const T0: i64 = 1_700_000_000_000;
const WITHIN: i64 = 50;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("v", DataType::Int64, false),
        Field::new(
            "rowtime",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]))
}

#[derive(Clone)]
struct Event {
    k: String,
    v: i64,
    t: i64,
}

/// `n` events `step_ms` apart (times only grow), keys from `keys` values.
fn events(n: usize, step_ms: i64, keys: u64, mut seed: u64) -> Vec<Event> {
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..n)
        .map(|i| Event {
            k: format!("u{}", next() % keys),
            v: (next() % 100) as i64,
            t: T0 + i as i64 * step_ms,
        })
        .collect()
}

fn batch(events: &[Event]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                events.iter().map(|e| e.k.as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(events.iter().map(|e| e.v))),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                events.iter().map(|e| e.t),
            )),
        ],
    )
    .unwrap()
}

fn source(events: &[Event], chunk: usize) -> Arc<MemorySource> {
    let batches = events
        .chunks(chunk)
        .enumerate()
        .map(|(i, c)| (i as i32 % 2, batch(c)))
        .collect();
    Arc::new(MemorySource::new(schema(), batches).unwrap())
}

async fn oracle(a: &[Event], b: &[Event], join: &str, condition: &str) -> Vec<String> {
    oracle_within(a, b, join, condition, WITHIN, WITHIN).await
}

/// The interval join with `b`'s times from `before` ms ahead of `a`'s to `after` ms behind.
async fn oracle_within(
    a: &[Event],
    b: &[Event],
    join: &str,
    condition: &str,
    before: i64,
    after: i64,
) -> Vec<String> {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    for (name, events) in [("a", a), ("b", b)] {
        let t = MemTable::try_new(schema(), vec![vec![batch(events)]]).unwrap();
        ctx.register_table(name, Arc::new(t)).unwrap();
    }
    let sql = format!(
        "SELECT a.k, a.v, b.k, b.v, greatest(a.rowtime, b.rowtime) \
         FROM a {join} b ON a.k = b.k \
         AND b.rowtime BETWEEN a.rowtime - INTERVAL '{before} milliseconds' \
                           AND a.rowtime + INTERVAL '{after} milliseconds' \
         AND ({condition})"
    );
    rows(&ctx.sql(&sql).await.unwrap().collect().await.unwrap())
}

async fn run(
    a: &[Event],
    b: &[Event],
    parallelism: usize,
    join: impl FnOnce(Stream, Stream) -> Stream,
) -> (Vec<String>, u64) {
    let builder = StreamsBuilder::new().with_options(QueryOptions {
        parallelism,
        ..QueryOptions::default()
    });
    let sa = builder.stream("a", source(a, 30)).unwrap();
    let sb = builder.stream("b", source(b, 23)).unwrap();
    let collector = Collector::new();
    join(sa, sb)
        .select([col("k"), col("v"), col("b_k"), col("b_v"), col("rowtime")])
        .unwrap()
        .to_collector(&collector);
    let running = Runtime::without_broker()
        .run(builder.build().unwrap())
        .await
        .unwrap();
    let metrics = running.wait().await.unwrap();
    (rows(&collector.batches()), metrics[0].late_rows)
}

#[tokio::test]
async fn inner_left_and_full_joins_within_a_bound_match_the_interval_join_oracle() {
    let a = events(1_200, 10, 40, 0x9e37_79b9_7f4a_7c15);
    let b = events(900, 13, 40, 0x2545_f491_4f6c_dd1d);
    for (kind, sql) in [
        (JoinKind::Inner, "JOIN"),
        (JoinKind::Left, "LEFT JOIN"),
        (JoinKind::Full, "FULL JOIN"),
    ] {
        let want = oracle(&a, &b, sql, "true").await;
        assert!(want.len() > 150, "{kind:?}: {}", want.len());
        for parallelism in [1, 3] {
            let (got, late) = run(&a, &b, parallelism, |sa, sb| {
                sa.window_join(&sb, [col("k")], [col("k")], WITHIN, kind)
                    .unwrap()
            })
            .await;
            assert_eq!(late, 0);
            assert_eq!(got, want, "{kind:?} at parallelism {parallelism}");
        }
    }
}

/// Bounds that differ before and after the left record's time (ksqlDB's `WITHIN (before,
/// after)`), one of them zero: each side's buffer is kept as long as its own reach.
#[tokio::test]
async fn joins_within_different_bounds_before_and_after_match_the_oracle() {
    let a = events(1_000, 10, 30, 0x51_7cc1_b727_220a);
    let b = events(900, 13, 30, 0x94d0_49bb_1331_11eb);
    for (before, after) in [(WITHIN / 4, WITHIN * 2), (WITHIN * 2, 0)] {
        for (kind, sql) in [
            (JoinKind::Inner, "JOIN"),
            (JoinKind::Left, "LEFT JOIN"),
            (JoinKind::Full, "FULL JOIN"),
        ] {
            let want = oracle_within(&a, &b, sql, "true", before, after).await;
            assert!(want.len() > 100, "{kind:?}: {}", want.len());
            for parallelism in [1, 3] {
                let (got, late) = run(&a, &b, parallelism, |sa, sb| {
                    sa.window_join(
                        &sb,
                        [col("k")],
                        [col("k")],
                        JoinWindow::new(before, after),
                        kind,
                    )
                    .unwrap()
                })
                .await;
                assert_eq!(late, 0);
                assert_eq!(
                    got, want,
                    "{kind:?} within ({before}, {after}) at parallelism {parallelism}"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_condition_on_each_pair_decides_what_counts_as_a_match() {
    let a = events(800, 10, 20, 7);
    let b = events(700, 11, 20, 11);
    let want = oracle(&a, &b, "LEFT JOIN", "a.v > b.v").await;
    let (got, _) = run(&a, &b, 2, |sa, sb| {
        sa.window_join_with(
            &sb,
            [col("k")],
            [col("k")],
            WITHIN,
            JoinKind::Left,
            Some(col("a.v").gt(col("b.v"))),
            0,
        )
        .unwrap()
    })
    .await;
    assert_eq!(got, want);
}

#[tokio::test]
async fn records_older_than_the_buffers_keep_are_late() {
    let a = events(600, 10, 10, 3);
    let mut b = events(500, 12, 10, 5);
    // The last 20 of b arrive far behind both streams: nothing they could meet is kept.
    let behind: Vec<Event> = b
        .iter()
        .take(20)
        .map(|e| Event {
            t: e.t - 10 * WITHIN,
            ..e.clone()
        })
        .collect();
    b.extend(behind);
    let (_, late) = run(&a, &b, 1, |sa, sb| {
        sa.window_join(&sb, [col("k")], [col("k")], WITHIN, JoinKind::Inner)
            .unwrap()
    })
    .await;
    assert_eq!(late, 20);
}
