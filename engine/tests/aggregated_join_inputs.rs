//! Joins whose inputs are aggregated, so a side keeps state of its own before the join: two
//! tables of per-user aggregates joined on the user (against the join of the two GROUP BYs
//! computed once), and Nexmark q7 in its standard form, each tumbling window's highest price
//! joined back to the bids that bid it (against the bids picked directly); at one and at
//! several tasks; and the aggregated tables' join resumed from a checkpoint at another
//! parallelism, each side's state split between the new tasks by key.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::util::display::array_value_to_string;
use datafusion::functions_aggregate::expr_fn::{count, max, sum};
use datafusion::prelude::{Expr, col, lit};
use quiver_broker::{Broker, BrokerConfig, NewTopic, Record};
use quiver_engine::dsl::{RunningTopology, Stream, StreamsBuilder};
use quiver_engine::format::DELETED;
use quiver_engine::{
    CheckpointConfig, CheckpointStorage, Collector, Format, JoinKind, JoinWindow, MemorySource,
    QueryOptions, Runtime, TopicFormat, WindowKind, WindowSpec,
};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("user", DataType::Utf8, false),
        Field::new("amount", DataType::Int64, false),
        Field::new(
            "rowtime",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]))
}

/// `n` events over 25 users, 37 ms apart, amounts 0..100, in batches of 13 over 3 partitions.
fn events(n: usize, mut seed: u64) -> Vec<(String, i64, i64)> {
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..n)
        .map(|i| {
            (
                format!("u{:02}", next() % 25),
                (next() % 100) as i64,
                i as i64 * 37,
            )
        })
        .collect()
}

fn stream(builder: &StreamsBuilder, name: &str, events: &[(String, i64, i64)]) -> Stream {
    let batches = events
        .chunks(13)
        .enumerate()
        .map(|(i, c)| {
            let batch = RecordBatch::try_new(
                schema(),
                vec![
                    Arc::new(StringArray::from_iter_values(
                        c.iter().map(|e| e.0.as_str()),
                    )),
                    Arc::new(Int64Array::from_iter_values(c.iter().map(|e| e.1))),
                    Arc::new(TimestampMillisecondArray::from_iter_values(
                        c.iter().map(|e| e.2),
                    )),
                ],
            )
            .unwrap();
            ((i % 3) as i32, batch)
        })
        .collect();
    builder
        .stream(
            name,
            Arc::new(MemorySource::new(schema(), batches).unwrap()),
        )
        .unwrap()
}

fn options(parallelism: usize) -> QueryOptions {
    QueryOptions {
        parallelism,
        ..QueryOptions::default()
    }
}

async fn run(builder: &StreamsBuilder) {
    Runtime::without_broker()
        .run(builder.build().unwrap())
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
}

#[tokio::test]
async fn two_aggregated_tables_join_as_the_join_of_their_group_bys() {
    let views = events(900, 0x9e37_79b9_7f4a_7c15);
    let clicks: Vec<_> = events(700, 0x2545_f491_4f6c_dd1d)
        .into_iter()
        .filter(|e| e.0.as_str() < "u20")
        .collect();
    let want = joined_oracle(&views, &clicks);
    assert!(want.len() > 10, "{want:?}");
    for parallelism in [1, 3] {
        let builder = StreamsBuilder::new().with_options(options(parallelism));
        let views_per_user = stream(&builder, "views", &views)
            .group_by([col("user")])
            .unwrap()
            .aggregate([count(lit(1)).alias("views")])
            .unwrap();
        let clicked = stream(&builder, "clicks", &clicks)
            .group_by([col("user")])
            .unwrap()
            .aggregate([sum(col("amount")).alias("clicked")])
            .unwrap();
        let collector = Collector::new();
        views_per_user
            .join(&clicked)
            .unwrap()
            .to_stream()
            .select([col("user"), col("views"), col("clicked"), col(DELETED)])
            .unwrap()
            .to_collector(&collector);
        run(&builder).await;
        let mut last = BTreeMap::new();
        for b in collector.batches() {
            let deleted = b.column(3).as_any().downcast_ref::<BooleanArray>().unwrap();
            for r in 0..b.num_rows() {
                let cells: Vec<String> = (0..3)
                    .map(|c| array_value_to_string(b.column(c), r).unwrap())
                    .collect();
                if deleted.value(r) {
                    last.remove(&cells[0]);
                } else {
                    last.insert(cells[0].clone(), cells.join(" | "));
                }
            }
        }
        let got: Vec<String> = last.into_values().collect();
        assert_eq!(got, want, "at parallelism {parallelism}");
    }
}

#[tokio::test]
async fn a_stream_joined_with_an_aggregated_table_meets_its_latest_rows() {
    // Views up to 33 s, of 20 users of 25; then orders, from 40 s: each order meets its user's
    // count of views (an aggregate's table, which has no event time, so it is not versioned).
    let views: Vec<_> = events(900, 7)
        .into_iter()
        .filter(|e| e.0.as_str() < "u20")
        .collect();
    let orders: Vec<_> = events(200, 8)
        .into_iter()
        .map(|(user, amount, t)| (user, amount, 40_000 + t))
        .collect();
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for v in &views {
        *counts.entry(v.0.as_str()).or_default() += 1;
    }
    for (left, parallelism) in [(false, 1), (true, 1), (false, 3), (true, 3)] {
        let mut want: Vec<String> = orders
            .iter()
            .filter_map(|(user, amount, _)| match counts.get(user.as_str()) {
                Some(n) => Some(format!("{user} | {amount} | {n}")),
                None => left.then(|| format!("{user} | {amount} | ")),
            })
            .collect();
        want.sort();
        let builder = StreamsBuilder::new().with_options(options(parallelism));
        let per_user = stream(&builder, "views", &views)
            .group_by([col("user")])
            .unwrap()
            .aggregate([count(lit(1)).alias("views")])
            .unwrap();
        let orders = stream(&builder, "orders", &orders);
        let joined = if left {
            orders.left_join(&per_user, [col("user")])
        } else {
            orders.join(&per_user, [col("user")])
        }
        .unwrap();
        let collector = Collector::new();
        joined
            .select([col("user"), col("amount"), col("views")])
            .unwrap()
            .to_collector(&collector);
        run(&builder).await;
        assert_eq!(
            common::rows(&collector.batches()),
            want,
            "left {left} at parallelism {parallelism}"
        );
    }
}

#[tokio::test]
async fn each_windows_highest_price_joined_back_to_its_bids_finds_the_winning_bids() {
    let bids = events(1500, 42);
    // The oracle: per 10 s window, the bids at its highest amount.
    let mut highest: BTreeMap<i64, i64> = BTreeMap::new();
    for b in &bids {
        let top = highest.entry(b.2 / 10_000).or_insert(b.1);
        *top = (*top).max(b.1);
    }
    let mut want: Vec<String> = bids
        .iter()
        .filter(|b| highest[&(b.2 / 10_000)] == b.1)
        // A joined bid is timed at its window's last millisecond (the later of the two).
        .map(|b| format!("{} | {} | {}", b.0, b.1, b.2 / 10_000 * 10_000 + 9_999))
        .collect();
    want.sort();
    assert!(want.len() >= highest.len(), "{want:?}");
    for parallelism in [1, 3] {
        let builder = StreamsBuilder::new().with_options(options(parallelism));
        let all = stream(&builder, "bids", &bids);
        // Each window's highest amount, timed at the window's last millisecond.
        let maxima = all
            .group_by(Vec::<Expr>::new())
            .unwrap()
            .window(WindowSpec {
                kind: WindowKind::Tumbling { size_ms: 10_000 },
                grace_ms: 0,
            })
            .unwrap()
            .emit_final()
            .aggregate([max(col("amount")).alias("top")])
            .unwrap()
            .to_stream()
            .select([
                col("top"),
                col("window_start"),
                (col("window_end")
                    - lit(datafusion::scalar::ScalarValue::DurationMillisecond(Some(
                        1,
                    ))))
                .alias("rowtime"),
            ])
            .unwrap();
        let collector = Collector::new();
        all.window_join_with(
            &maxima,
            [col("amount")],
            [col("top")],
            JoinWindow::new(0, 10_000),
            JoinKind::Inner,
            Some(col("bids.rowtime").gt_eq(col("stream.window_start"))),
            10_000,
        )
        .unwrap()
        .select([col("user"), col("amount"), col("rowtime")])
        .unwrap()
        .to_collector(&collector);
        run(&builder).await;
        let mut got: Vec<String> = collector
            .batches()
            .iter()
            .flat_map(|b| {
                (0..b.num_rows())
                    .map(|r| {
                        let user = array_value_to_string(b.column(0), r).unwrap();
                        let amount = array_value_to_string(b.column(1), r).unwrap();
                        let time = b
                            .column(2)
                            .as_any()
                            .downcast_ref::<TimestampMillisecondArray>()
                            .unwrap()
                            .value(r);
                        format!("{user} | {amount} | {time}")
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        got.sort();
        assert_eq!(got, want, "at parallelism {parallelism}");
    }
}

/// Per user, views counted and click amounts summed: `user | views | clicked`, users in both.
fn joined_oracle(views: &[(String, i64, i64)], clicks: &[(String, i64, i64)]) -> Vec<String> {
    let mut counted: BTreeMap<&str, i64> = BTreeMap::new();
    for v in views {
        *counted.entry(&v.0).or_default() += 1;
    }
    let mut summed: BTreeMap<&str, i64> = BTreeMap::new();
    for c in clicks {
        *summed.entry(&c.0).or_default() += c.1;
    }
    counted
        .iter()
        .filter_map(|(u, n)| summed.get(u).map(|s| format!("{u} | {n} | {s}")))
        .collect()
}

async fn produce(b: &Broker, topic: &str, events: &[(String, i64, i64)]) {
    let records: Vec<Record> = events
        .iter()
        .map(|(user, amount, _)| {
            let value = serde_json::json!({"user": user, "amount": amount}).to_string();
            Record::new(1, Some(user.as_bytes()), Some(value.as_bytes()))
        })
        .collect();
    b.produce(topic, &records).await.unwrap();
}

async fn views_and_clicks(
    b: &Broker,
    checkpoint: CheckpointConfig,
    parallelism: usize,
) -> quiver_engine::Result<RunningTopology> {
    let builder = StreamsBuilder::with_broker(b)
        .with_application_id("views-and-clicks")
        .with_options(QueryOptions {
            checkpoint: Some(checkpoint),
            poll_wait: Duration::from_millis(20),
            ..options(parallelism)
        });
    let value = Arc::new(Schema::new(vec![
        Field::new("user", DataType::Utf8, false),
        Field::new("amount", DataType::Int64, false),
    ]));
    let views = builder
        .topic("views", Format::None, Format::json(value.clone()))?
        .group_by([col("user")])?
        .aggregate([count(lit(1)).alias("views")])?;
    let clicks = builder
        .topic("clicks", Format::None, Format::json(value))?
        .group_by([col("user")])?
        .aggregate([sum(col("amount")).alias("clicked")])?;
    views
        .join(&clicks)?
        .to_stream()
        .select([col("user"), col("views"), col("clicked"), col(DELETED)])?
        .to_topic("joined", TopicFormat::keyed(["user"]))?;
    Runtime::new(b).run(builder.build()?).await
}

async fn wait(b: &Broker, want: &[String], what: &str) {
    let row =
        |user: &str, v: &serde_json::Value| format!("{user} | {} | {}", v["views"], v["clicked"]);
    common::wait_for_table(b, "joined", want, row, what).await;
}

#[tokio::test]
async fn a_join_of_aggregated_tables_resumes_from_its_checkpoint_at_another_parallelism() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::open(BrokerConfig {
        data_dir: dir.path().to_owned(),
        ..BrokerConfig::default()
    })
    .await
    .unwrap();
    for (topic, partitions) in [("views", 3), ("clicks", 2), ("joined", 2)] {
        b.create_topic(NewTopic::new(topic, partitions))
            .await
            .unwrap();
    }
    let storage = CheckpointStorage::local(dir.path().join("checkpoints")).unwrap();
    let config = CheckpointConfig::exactly_once(storage).with_interval(Duration::from_millis(50));
    let views = events(600, 5);
    let clicks = events(400, 6);
    let (v1, v2) = views.split_at(300);
    let (c1, c2) = clicks.split_at(200);

    let running = views_and_clicks(&b, config.clone(), 2).await.unwrap();
    produce(&b, "views", v1).await;
    produce(&b, "clicks", c1).await;
    wait(&b, &joined_oracle(v1, c1), "the first half is joined").await;
    let metrics = running.stop().await.unwrap();
    assert!(metrics[0].checkpoints >= 1, "{metrics:?}");

    // The rest while the query is down, then a restart at 3 tasks: the counts and sums go on
    // from the checkpoint's, split between the tasks by user.
    produce(&b, "views", v2).await;
    produce(&b, "clicks", c2).await;
    let running = views_and_clicks(&b, config, 3).await.unwrap();
    wait(&b, &joined_oracle(&views, &clicks), "everything is joined").await;
    running.stop().await.unwrap();
}

#[test]
fn a_join_whose_input_is_a_join_is_refused_with_a_reason() {
    let builder = StreamsBuilder::new();
    let views = stream(&builder, "views", &events(10, 1));
    let per_user = |name: &str| {
        stream(&builder, name, &events(10, 2))
            .group_by([col("user")])
            .unwrap()
            .count()
            .unwrap()
    };
    let joined = per_user("a").join(&per_user("b")).unwrap();
    views
        .join(&joined, [col("user")])
        .unwrap()
        .to_collector(&Collector::new());
    let err = builder.build().unwrap_err().to_string();
    assert!(err.contains("is itself a join"), "{err}");
}
