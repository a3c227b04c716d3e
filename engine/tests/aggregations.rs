//! Every aggregation against a batch oracle: the same events through a continuous query (in
//! batches, out of order within the grace period, some past it) and through a one-shot
//! DataFusion query over all of them must give the same final result per window and key.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::rows;

use arrow::array::{Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::util::display::array_value_to_string;
use datafusion::datasource::MemTable;
use datafusion::functions_aggregate::expr_fn::{avg, max, min, sum};
use datafusion::prelude::{SessionConfig, SessionContext, col, lit};
use quiver_engine::dsl::{StreamsBuilder, Table};
use quiver_engine::{Collector, MemorySource, QueryOptions, Runtime, WindowKind, WindowSpec};

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

#[derive(Debug, Clone)]
struct Event {
    customer: String,
    amount: i64,
    time: i64,
}

/// Deterministic events: times move forward about 100 ms per event with up to `disorder_ms`
/// of jitter back; an event in every `late_every` jumps back by `late_by_ms`.
fn events(n: usize, disorder_ms: i64, late_every: usize, late_by_ms: i64) -> Vec<Event> {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..n)
        .map(|i| {
            let base = 1_700_000_000_000 + i as i64 * 100;
            let mut time = base - (next() % (disorder_ms as u64 + 1)) as i64;
            if late_every > 0 && i % late_every == late_every - 1 {
                time -= late_by_ms;
            }
            Event {
                customer: format!("u{}", next() % 7),
                amount: (next() % 1000) as i64,
                time,
            }
        })
        .collect()
}

fn batch(events: &[Event]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                events.iter().map(|e| e.customer.as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(
                events.iter().map(|e| e.amount),
            )),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                events.iter().map(|e| e.time),
            )),
        ],
    )
    .unwrap()
}

const BATCH: usize = 50;

fn source(events: &[Event]) -> Arc<MemorySource> {
    let batches = events.chunks(BATCH).map(|c| (0, batch(c))).collect();
    Arc::new(MemorySource::new(schema(), batches).unwrap())
}

/// The events a query sees in time: those not late when they arrive. The watermark when batch
/// `i` is processed is the largest time in batches before it; an event is late when the last
/// window it falls in ends (plus grace) at or before that.
fn on_time(events: &[Event], advance: i64, size: i64, grace: i64) -> (Vec<Event>, usize) {
    let mut watermark = i64::MIN;
    let mut kept = Vec::new();
    let mut late = 0;
    for chunk in events.chunks(BATCH) {
        for e in chunk {
            let last_start = e.time - e.time.rem_euclid(advance);
            if last_start + size + grace <= watermark {
                late += 1;
            } else {
                kept.push(e.clone());
            }
        }
        watermark = watermark.max(chunk.iter().map(|e| e.time).max().unwrap());
    }
    (kept, late)
}

/// The last row per key (the first `keys` columns) of a changelog, sorted.
fn final_rows(batches: &[RecordBatch], keys: usize) -> Vec<String> {
    let mut last = BTreeMap::new();
    for b in batches {
        for r in 0..b.num_rows() {
            let cells: Vec<String> = b
                .columns()
                .iter()
                .map(|c| array_value_to_string(c, r).unwrap())
                .collect();
            last.insert(cells[..keys].join(" | "), cells.join(" | "));
        }
    }
    last.into_values().collect()
}

async fn oracle(events: &[Event], sql: &str) -> Vec<String> {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    let table = MemTable::try_new(schema(), vec![vec![batch(events)]]).unwrap();
    ctx.register_table("events", Arc::new(table)).unwrap();
    let out = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    rows(&out)
}

async fn run(table: impl FnOnce(&StreamsBuilder) -> Table) -> (Vec<RecordBatch>, u64) {
    run_with(QueryOptions::default(), table).await
}

async fn run_with(
    options: QueryOptions,
    table: impl FnOnce(&StreamsBuilder) -> Table,
) -> (Vec<RecordBatch>, u64) {
    let builder = StreamsBuilder::new().with_options(options);
    let collector = Collector::new();
    table(&builder).to_stream().to_collector(&collector);
    let running = Runtime::without_broker()
        .run(builder.build().unwrap())
        .await
        .unwrap();
    let metrics = running.wait().await.unwrap();
    (collector.batches(), metrics[0].late_rows)
}

fn windowed_aggregates() -> Vec<datafusion::prelude::Expr> {
    vec![
        datafusion::functions_aggregate::expr_fn::count(lit(1)).alias("n"),
        sum(col("amount")).alias("total"),
        min(col("amount")).alias("low"),
        max(col("amount")).alias("high"),
        avg(col("amount")).alias("mean"),
    ]
}

/// `events` grouped by customer in a window, with [`windowed_aggregates`].
fn windowed(
    b: &StreamsBuilder,
    src: Arc<MemorySource>,
    kind: WindowKind,
    grace_ms: i64,
    emit_final: bool,
) -> Table {
    let w = b
        .stream("events", src)
        .unwrap()
        .group_by([col("customer")])
        .unwrap()
        .window(WindowSpec { kind, grace_ms })
        .unwrap();
    let w = if emit_final { w.emit_final() } else { w };
    w.aggregate(windowed_aggregates()).unwrap()
}

const ORACLE_AGGREGATES: &str = "count(*) AS n, sum(amount) AS total, min(amount) AS low, max(amount) AS high, avg(amount) AS mean";

/// Window starts as the oracle computes them: `k` windows back from the last one.
fn oracle_window_sql(advance: i64, size: i64, hops: i64) -> String {
    let ks = (0..hops)
        .map(|k| format!("({k})"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT customer, to_timestamp_millis(ws) AS window_start, to_timestamp_millis(ws + {size}) AS window_end, \
         {ORACLE_AGGREGATES} FROM (SELECT *, (CAST(rowtime AS BIGINT) - (CAST(rowtime AS BIGINT) % {advance} + {advance}) % {advance}) - k * {advance} AS ws \
         FROM events CROSS JOIN (VALUES {ks}) AS t(k)) GROUP BY customer, ws"
    )
}

#[tokio::test]
async fn tumbling_windows_emit_final_match_the_batch_oracle_with_out_of_order_and_late_events() {
    let all = events(3_000, 2_000, 97, 60_000);
    let (size, grace) = (10_000, 3_000);
    let (kept, late) = on_time(&all, size, size, grace);
    assert!(late > 10, "the test needs late events, got {late}");
    let src = source(&all);
    let (batches, late_rows) =
        run(|b| windowed(b, src, WindowKind::Tumbling { size_ms: size }, grace, true)).await;
    assert_eq!(late_rows, late as u64);
    let got = rows(&batches);
    let want = oracle(&kept, &oracle_window_sql(size, size, 1)).await;
    assert!(!want.is_empty());
    assert_eq!(got, want);
}

#[tokio::test]
async fn hopping_windows_match_the_batch_oracle() {
    let all = events(2_000, 1_500, 0, 0);
    let (size, advance, grace) = (30_000, 10_000, 2_000);
    let (kept, late) = on_time(&all, advance, size, grace);
    assert_eq!(late, 0);
    let src = source(&all);
    let (batches, _) = run(|b| {
        windowed(
            b,
            src,
            WindowKind::Hopping {
                size_ms: size,
                advance_ms: advance,
            },
            grace,
            true,
        )
    })
    .await;
    let want = oracle(&kept, &oracle_window_sql(advance, size, size / advance)).await;
    assert_eq!(rows(&batches), want);
}

#[tokio::test]
async fn windows_emitting_changes_end_at_the_oracle_result() {
    let all = events(1_500, 1_000, 50, 30_000);
    let (size, grace) = (5_000, 1_000);
    let (kept, _) = on_time(&all, size, size, grace);
    let src = source(&all);
    let (batches, _) =
        run(|b| windowed(b, src, WindowKind::Tumbling { size_ms: size }, grace, false)).await;
    let emitted: usize = batches.iter().map(|b| b.num_rows()).sum();
    let got = final_rows(&batches, 2);
    let want = oracle(&kept, &oracle_window_sql(size, size, 1)).await;
    assert!(
        emitted > want.len(),
        "EMIT CHANGES emits updates, not only final rows"
    );
    assert_eq!(got, want);
}

#[tokio::test]
async fn an_updating_aggregate_is_a_changelog_whose_last_values_match_the_oracle() {
    let all = events(2_000, 5_000, 0, 0);
    let src = source(&all);
    let (batches, late) = run(|b| {
        b.stream("events", src)
            .unwrap()
            .filter(col("amount").gt(lit(100)))
            .unwrap()
            .group_by([col("customer")])
            .unwrap()
            .aggregate([
                datafusion::functions_aggregate::expr_fn::count(lit(1)).alias("n"),
                sum(col("amount")).alias("total"),
                datafusion::functions_aggregate::expr_fn::count_distinct(col("amount"))
                    .alias("distinct_amounts"),
            ])
            .unwrap()
    })
    .await;
    assert_eq!(
        late, 0,
        "an updating aggregate has no windows to be late for"
    );
    let want = oracle(
        &all,
        "SELECT customer, count(*) AS n, sum(amount) AS total, count(DISTINCT amount) AS distinct_amounts \
         FROM events WHERE amount > 100 GROUP BY customer",
    )
    .await;
    assert_eq!(final_rows(&batches, 1), want);
    // One update per key per input batch (the changelog is coalesced per batch).
    let updates: usize = all
        .chunks(BATCH)
        .map(|c| {
            let keys: std::collections::BTreeSet<&str> = c
                .iter()
                .filter(|e| e.amount > 100)
                .map(|e| e.customer.as_str())
                .collect();
            keys.len()
        })
        .sum();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), updates);
}

#[tokio::test]
async fn a_global_window_without_keys_counts_everything_once() {
    let all = events(1_000, 0, 0, 0);
    let src = source(&all);
    let (batches, _) = run(|b| {
        b.stream("events", src)
            .unwrap()
            .group_by(Vec::new())
            .unwrap()
            .window(WindowSpec {
                kind: WindowKind::Tumbling { size_ms: 60_000 },
                grace_ms: 0,
            })
            .unwrap()
            .emit_final()
            .count()
            .unwrap()
    })
    .await;
    let total: i64 = batches
        .iter()
        .map(|b| {
            let c = b.column(2).as_any().downcast_ref::<Int64Array>().unwrap();
            c.values().iter().sum::<i64>()
        })
        .sum();
    assert_eq!(total, 1_000);
}

/// Events spread over `partitions` partitions, each partition's batches in time order.
fn partitioned_source(events: &[Event], partitions: i32) -> Arc<MemorySource> {
    let batches = events
        .chunks(BATCH)
        .enumerate()
        .map(|(i, c)| (i as i32 % partitions, batch(c)))
        .collect();
    Arc::new(MemorySource::new(schema(), batches).unwrap())
}

#[tokio::test]
async fn parallel_tasks_over_many_partitions_give_the_oracle_result() {
    // Grace covers the disorder, so no event is late however the tasks interleave.
    let all = events(4_000, 1_000, 0, 0);
    let (size, advance, grace) = (20_000, 5_000, 60_000);
    for parallelism in [1, 2, 3, 5] {
        let options = QueryOptions {
            parallelism,
            ..QueryOptions::default()
        };
        let src = partitioned_source(&all, 4);
        let (batches, late) = run_with(options.clone(), |b| {
            windowed(
                b,
                src,
                WindowKind::Hopping {
                    size_ms: size,
                    advance_ms: advance,
                },
                grace,
                true,
            )
        })
        .await;
        assert_eq!(late, 0);
        let want = oracle(&all, &oracle_window_sql(advance, size, size / advance)).await;
        assert_eq!(rows(&batches), want, "parallelism {parallelism}");

        let src = partitioned_source(&all, 4);
        let (batches, _) = run_with(options, |b| {
            b.stream("events", src)
                .unwrap()
                .group_by([col("customer")])
                .unwrap()
                .aggregate([sum(col("amount")).alias("total")])
                .unwrap()
        })
        .await;
        let want = oracle(
            &all,
            "SELECT customer, sum(amount) AS total FROM events GROUP BY customer",
        )
        .await;
        assert_eq!(final_rows(&batches, 1), want, "parallelism {parallelism}");
    }
}

/// Sessions per customer computed directly: times sorted, cut where the gap exceeds `gap`.
fn session_oracle(events: &[Event], gap: i64) -> Vec<String> {
    let mut by_key: BTreeMap<&str, Vec<(i64, i64)>> = BTreeMap::new();
    for e in events {
        by_key
            .entry(&e.customer)
            .or_default()
            .push((e.time, e.amount));
    }
    let ts =
        |ms: i64| array_value_to_string(&TimestampMillisecondArray::from(vec![ms]), 0).unwrap();
    let mut out = Vec::new();
    for (key, mut rows) in by_key {
        rows.sort();
        let mut i = 0;
        while i < rows.len() {
            let mut j = i + 1;
            while j < rows.len() && rows[j].0 - rows[j - 1].0 <= gap {
                j += 1;
            }
            let total: i64 = rows[i..j].iter().map(|r| r.1).sum();
            out.push(format!(
                "{key} | {} | {} | {} | {total}",
                ts(rows[i].0),
                ts(rows[j - 1].0),
                j - i
            ));
            i = j;
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn session_windows_match_sessions_computed_directly_at_any_parallelism() {
    // Sparse events (about 3 s apart per customer on average) so sessions open and close;
    // grace covers the disorder, so none is late.
    let mut all = events(1_500, 1_500, 0, 0);
    for (i, e) in all.iter_mut().enumerate() {
        e.time += (i as i64 / 40) * 20_000;
    }
    let gap = 700;
    let want = session_oracle(&all, gap);
    assert!(
        want.len() > 100,
        "the test needs many sessions, got {}",
        want.len()
    );
    for parallelism in [1, 3] {
        let src = partitioned_source(&all, 2);
        let (batches, late) = run_with(
            QueryOptions {
                parallelism,
                ..QueryOptions::default()
            },
            |b| {
                b.stream("events", src)
                    .unwrap()
                    .group_by([col("customer")])
                    .unwrap()
                    .window(WindowSpec {
                        kind: WindowKind::Session { gap_ms: gap },
                        grace_ms: 10_000,
                    })
                    .unwrap()
                    .emit_final()
                    .aggregate([
                        datafusion::functions_aggregate::expr_fn::count(lit(1)).alias("n"),
                        sum(col("amount")).alias("total"),
                    ])
                    .unwrap()
            },
        )
        .await;
        assert_eq!(late, 0);
        assert_eq!(rows(&batches), want, "parallelism {parallelism}");
    }
}

#[tokio::test]
async fn branches_transformed_and_merged_again_match_the_batch_oracle() {
    let all = events(1_500, 0, 0, 0);
    let src = source(&all);
    // Small amounts are counted as they are, large ones in hundreds; both per customer.
    let (batches, _) = run(|b| {
        let events = b.stream("events", src).unwrap();
        let branches = events
            .branch([col("amount").lt(lit(500)), lit(true)])
            .unwrap();
        let small = branches[0]
            .select([col("customer"), col("amount").alias("units")])
            .unwrap();
        let large = branches[1]
            .select([
                col("customer"),
                (col("amount") / lit(100)).alias("hundreds"),
            ])
            .unwrap();
        small
            .merge(&large)
            .unwrap()
            .group_by([col("customer")])
            .unwrap()
            .aggregate([
                datafusion::functions_aggregate::expr_fn::count(lit(1)).alias("n"),
                sum(col("units")).alias("units"),
            ])
            .unwrap()
    })
    .await;
    let want = oracle(
        &all,
        "SELECT customer, count(*) AS n, \
         sum(CASE WHEN amount < 500 THEN amount ELSE amount / 100 END) AS units \
         FROM events GROUP BY customer",
    )
    .await;
    assert_eq!(want.len(), 7);
    assert_eq!(final_rows(&batches, 1), want);
}

#[tokio::test]
async fn streams_of_two_sources_merged_and_windowed_match_the_batch_oracle() {
    let all = events(2_000, 0, 0, 0);
    // Even events in one source, odd ones in another whose customer column is named `buyer`;
    // each source's batches spread over two partitions, read by two tasks.
    let split = |parity: usize, schema: SchemaRef| {
        let mine: Vec<Event> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == parity)
            .map(|(_, e)| e.clone())
            .collect();
        let batches = mine
            .chunks(BATCH)
            .enumerate()
            .map(|(i, c)| {
                let b = batch(c);
                (
                    i as i32 % 2,
                    RecordBatch::try_new(schema.clone(), b.columns().to_vec()).unwrap(),
                )
            })
            .collect();
        Arc::new(MemorySource::new(schema, batches).unwrap())
    };
    let buyers = Arc::new(Schema::new(vec![
        Field::new("buyer", DataType::Utf8, false),
        Field::new("amount", DataType::Int64, false),
        Field::new(
            "rowtime",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]));
    let (a, b) = (split(0, schema()), split(1, buyers));
    let options = QueryOptions {
        parallelism: 2,
        ..QueryOptions::default()
    };
    let (batches, late) = run_with(options, |builder| {
        let a = builder.stream("orders", a).unwrap();
        let b = builder
            .stream("purchases", b)
            .unwrap()
            .select([
                col("buyer").alias("customer"),
                col("amount"),
                col("rowtime"),
            ])
            .unwrap();
        a.merge(&b)
            .unwrap()
            .group_by([col("customer")])
            .unwrap()
            .window(WindowSpec {
                kind: WindowKind::Tumbling { size_ms: 10_000 },
                grace_ms: 0,
            })
            .unwrap()
            .emit_final()
            .aggregate(windowed_aggregates())
            .unwrap()
    })
    .await;
    assert_eq!(late, 0, "each source's event times only grow");
    let want = oracle(&all, &oracle_window_sql(10_000, 10_000, 1)).await;
    assert!(want.len() > 100, "{}", want.len());
    assert_eq!(rows(&batches), want);
}

#[tokio::test]
async fn merging_streams_after_an_aggregation_is_refused() {
    let all = events(10, 0, 0, 0);
    let builder = StreamsBuilder::new();
    let a = builder.stream("a", source(&all)).unwrap();
    let counts = a
        .group_by([col("customer")])
        .unwrap()
        .count()
        .unwrap()
        .to_stream();
    counts
        .merge(&counts)
        .unwrap()
        .to_collector(&Collector::new());
    let err = builder.build().unwrap_err().to_string();
    assert!(err.contains("before the merge"), "{err}");
}

#[tokio::test]
async fn reduce_combines_each_keys_values_with_a_rust_function() {
    let all = events(800, 0, 0, 0);
    let src = source(&all);
    // The largest amount per customer, by a Rust function over values, at two tasks.
    let options = QueryOptions {
        parallelism: 2,
        ..QueryOptions::default()
    };
    let (batches, _) = run_with(options, |b| {
        b.stream("events", src)
            .unwrap()
            .group_by([col("customer")])
            .unwrap()
            .reduce("amount", |a, b| {
                Ok(if a >= b { a.clone() } else { b.clone() })
            })
            .unwrap()
    })
    .await;
    let want = oracle(
        &all,
        "SELECT customer, max(amount) AS amount FROM events GROUP BY customer",
    )
    .await;
    assert_eq!(want.len(), 7);
    assert_eq!(final_rows(&batches, 1), want);
}

#[tokio::test]
async fn state_past_the_querys_memory_limit_fails_the_query_with_what_to_do() {
    let all = events(3_000, 0, 0, 0);
    let query = |options: QueryOptions| {
        let builder = StreamsBuilder::new().with_options(options);
        // Every distinct (amount, time) pair is kept: state grows with the input.
        builder
            .stream("events", source(&all))
            .unwrap()
            .group_by([col("amount")])
            .unwrap()
            .aggregate([
                datafusion::functions_aggregate::expr_fn::count_distinct(col("rowtime"))
                    .alias("times"),
            ])
            .unwrap()
            .to_stream()
            .to_collector(&Collector::new());
        builder.build().unwrap()
    };

    let running = Runtime::without_broker()
        .run(query(QueryOptions::default()))
        .await
        .unwrap();
    let metrics = running.wait().await.unwrap();
    let used = metrics[0].state_bytes;
    assert!(
        used > 64 * 1024,
        "3,000 distinct values held in {used} bytes"
    );

    let limited = QueryOptions {
        max_state_bytes: used / 4,
        ..QueryOptions::default()
    };
    let running = Runtime::without_broker().run(query(limited)).await.unwrap();
    let err = running.wait().await.unwrap_err();
    assert!(
        matches!(err, quiver_engine::EngineError::StateLimit(_)),
        "{err}"
    );
    let message = err.to_string();
    assert!(message.contains("max_state_bytes"), "{message}");
    assert!(message.contains("aggregate"), "{message}");
}

/// A sink that refuses its second batch.
#[derive(Debug, Default)]
struct RefusingSink {
    written: usize,
}

#[async_trait::async_trait]
impl quiver_engine::Sink for RefusingSink {
    fn describe(&self) -> String {
        "refusing".into()
    }

    async fn open(&mut self, _schema: SchemaRef) -> quiver_engine::Result<()> {
        Ok(())
    }

    async fn write(&mut self, _batch: RecordBatch) -> quiver_engine::Result<()> {
        self.written += 1;
        if self.written > 1 {
            return Err(quiver_engine::EngineError::Sink {
                sink: "refusing".into(),
                message: "the disk is full".into(),
            });
        }
        Ok(())
    }

    async fn flush(&mut self) -> quiver_engine::Result<()> {
        Ok(())
    }
}

/// When the sink fails, the tasks upstream of it fail too (their output has gone), and may be
/// joined first: the query must still report the sink's error, not theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_sink_is_what_the_query_reports_not_the_tasks_it_cut_off() {
    for round in 0..50 {
        let builder = StreamsBuilder::new().with_options(QueryOptions {
            parallelism: 3,
            ..QueryOptions::default()
        });
        builder
            .stream("orders", source(&events(2_000, 0, 0, 0)))
            .unwrap()
            .group_by([col("customer")])
            .unwrap()
            .aggregate([sum(col("amount")).alias("total")])
            .unwrap()
            .to_stream()
            .to_sink(Box::new(RefusingSink::default()));
        let running = Runtime::without_broker()
            .run(builder.build().unwrap())
            .await
            .unwrap();
        let err = running.wait().await.unwrap_err();
        assert!(
            matches!(&err, quiver_engine::EngineError::Sink { message, .. } if message == "the disk is full"),
            "round {round}: {err}"
        );
    }
}
