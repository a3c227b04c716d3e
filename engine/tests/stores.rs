//! Interactive queries on materialized tables: a store holds the same rows as the table's
//! changelog (its last row per key), serves keys, key ranges and scans while the query runs
//! and after a restart from a checkpoint, forgets deleted keys, and stops the query when it
//! outgrows its limit.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::util::display::array_value_to_string;
use datafusion::common::ScalarValue;
use datafusion::functions_aggregate::expr_fn::sum;
use datafusion::prelude::{col, lit};
use quiver_broker::{Broker, BrokerConfig, NewTopic, Record};
use quiver_engine::dsl::{StreamsBuilder, Table};
use quiver_engine::{
    CheckpointConfig, CheckpointStorage, Collector, EngineError, Format, KafkaType, MemorySource,
    QueryOptions, Runtime, TableStore,
};

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

fn source(n: usize) -> Arc<MemorySource> {
    let batches = (0..n)
        .collect::<Vec<_>>()
        .chunks(25)
        .enumerate()
        .map(|(b, chunk)| {
            let batch = RecordBatch::try_new(
                schema(),
                vec![
                    Arc::new(StringArray::from_iter_values(
                        chunk.iter().map(|i| format!("c{:02}", (i * 7) % 30)),
                    )),
                    Arc::new(Int64Array::from_iter_values(
                        chunk.iter().map(|i| (*i as i64 * 13) % 100),
                    )),
                    Arc::new(TimestampMillisecondArray::from_iter_values(
                        chunk.iter().map(|i| 1_000 + *i as i64),
                    )),
                ],
            )
            .unwrap();
            (b as i32 % 3, batch)
        })
        .collect();
    Arc::new(MemorySource::new(schema(), batches).unwrap())
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

/// The last row per key (the first column) of a changelog, in key order.
fn last_per_key(batches: &[RecordBatch]) -> Vec<String> {
    let mut last = BTreeMap::new();
    for row in rows(batches) {
        let key = row.split(" | ").next().unwrap().to_owned();
        last.insert(key, row);
    }
    last.into_values().collect()
}

/// The orders' amounts summed per customer, materialized as the store `name`.
fn customer_totals(builder: &StreamsBuilder, name: &str) -> Table {
    builder
        .stream("orders", source(600))
        .unwrap()
        .group_by([col("customer")])
        .unwrap()
        .aggregate([sum(col("amount")).alias("total")])
        .unwrap()
        .materialize(name)
        .unwrap()
}

fn key(k: &str) -> Vec<ScalarValue> {
    vec![ScalarValue::Utf8(Some(k.to_owned()))]
}

#[tokio::test]
async fn a_store_holds_the_changelogs_last_row_per_key_and_serves_keys_ranges_and_scans() {
    let builder = StreamsBuilder::new().with_options(QueryOptions {
        parallelism: 2,
        ..QueryOptions::default()
    });
    let collector = Collector::new();
    customer_totals(&builder, "totals")
        .to_stream()
        .to_collector(&collector);
    let topology = builder.build().unwrap();
    assert!(
        topology
            .describe()
            .contains("Store: totals (keyed by customer)")
    );
    let runtime = Runtime::without_broker();
    let running = runtime.run(topology).await.unwrap();
    running.wait().await.unwrap();
    assert_eq!(runtime.stores(), ["totals"]);
    let store = runtime.store("totals").unwrap();

    let changelog = last_per_key(&collector.batches());
    assert_eq!(changelog.len(), 30);
    assert_eq!(rows(&[store.scan().unwrap()]), changelog);
    assert_eq!(store.len(), 30);

    let c07 = store.get(&key("c07")).unwrap().unwrap();
    assert_eq!(
        rows(&[c07]),
        changelog
            .iter()
            .filter(|r| r.starts_with("c07 |"))
            .cloned()
            .collect::<Vec<_>>()
    );
    assert!(store.get(&key("nobody")).unwrap().is_none());
    let range = store.range(Some(&key("c10")), Some(&key("c15"))).unwrap();
    let want: Vec<String> = changelog
        .iter()
        .filter(|r| r.as_str() >= "c10" && r.as_str() < "c15")
        .cloned()
        .collect();
    assert_eq!(want.len(), 5);
    assert_eq!(rows(&[range]), want);
    let err = store.get(&[]).unwrap_err().to_string();
    assert!(err.contains("keyed by customer"), "{err}");
}

#[tokio::test]
async fn a_table_that_is_only_materialized_runs_into_its_store() {
    let builder = StreamsBuilder::new();
    customer_totals(&builder, "only-totals");
    let topology = builder.build().unwrap();
    assert_eq!(topology.queries().len(), 1);
    let runtime = Runtime::without_broker();
    runtime.run(topology).await.unwrap().wait().await.unwrap();
    let store = runtime.store("only-totals").unwrap();
    assert_eq!(store.len(), 30);
    assert!(store.get(&key("c07")).unwrap().is_some());
}

#[tokio::test]
async fn a_store_past_its_limit_fails_the_query_naming_it() {
    let builder = StreamsBuilder::new();
    builder
        .stream("orders", source(600))
        .unwrap()
        .group_by([col("customer")])
        .unwrap()
        .count()
        .unwrap()
        .materialize_with("counts", 200)
        .unwrap()
        .to_stream()
        .to_collector(&Collector::new());
    let running = Runtime::without_broker()
        .run(builder.build().unwrap())
        .await
        .unwrap();
    let err = running.wait().await.unwrap_err();
    assert!(matches!(err, EngineError::StateLimit(_)), "{err}");
    assert!(err.to_string().contains("store 'counts'"), "{err}");
}

async fn broker(dir: &std::path::Path) -> Broker {
    Broker::open(BrokerConfig {
        data_dir: dir.to_owned(),
        ..BrokerConfig::default()
    })
    .await
    .unwrap()
}

/// A topic table of customer names, materialized as `names`, checkpointed in `storage`.
async fn names(
    b: &Broker,
    storage: &CheckpointStorage,
) -> (Runtime, quiver_engine::dsl::RunningTopology) {
    let builder = StreamsBuilder::with_broker(b)
        .with_application_id("names")
        .with_options(QueryOptions {
            parallelism: 2,
            poll_wait: Duration::from_millis(20),
            checkpoint: Some(
                CheckpointConfig::at_least_once(storage.clone())
                    .with_interval(Duration::from_millis(50)),
            ),
            ..QueryOptions::default()
        });
    let value = Arc::new(Schema::new(vec![Field::new("name", DataType::Utf8, true)]));
    builder
        .table(
            "customers",
            Format::kafka("id", KafkaType::String),
            Format::Json(value),
        )
        .unwrap()
        .materialize("names")
        .unwrap()
        .to_stream()
        .to_collector(&Collector::new());
    let runtime = Runtime::new(b);
    let running = runtime.run(builder.build().unwrap()).await.unwrap();
    (runtime, running)
}

async fn produce(b: &Broker, records: &[(&str, Option<&str>)]) {
    let records: Vec<Record> = records
        .iter()
        .map(|(k, v)| Record::new(1, Some(k.as_bytes()), v.map(str::as_bytes)))
        .collect();
    b.produce("customers", &records).await.unwrap();
}

/// Each key's name in the store, once it holds `n` keys.
async fn names_in(store: &TableStore, n: usize) -> BTreeMap<String, String> {
    for _ in 0..400 {
        if store.len() == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let all = store.scan().unwrap();
    let ids = all.column_by_name("id").unwrap();
    let names = all.column_by_name("name").unwrap();
    (0..all.num_rows())
        .map(|i| {
            (
                array_value_to_string(ids, i).unwrap(),
                array_value_to_string(names, i).unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_topic_tables_store_forgets_deleted_keys_and_comes_back_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    b.create_topic(NewTopic::new("customers", 3)).await.unwrap();
    let storage = CheckpointStorage::local(dir.path().join("checkpoints")).unwrap();

    let (runtime, running) = names(&b, &storage).await;
    let store = runtime.store("names").unwrap();
    produce(
        &b,
        &[
            ("c1", Some(r#"{"name":"Ada"}"#)),
            ("c2", Some(r#"{"name":"Bo"}"#)),
        ],
    )
    .await;
    produce(&b, &[("c3", Some(r#"{"name":"Cy"}"#)), ("c2", None)]).await;
    produce(&b, &[("c1", Some(r#"{"name":"Ada L."}"#))]).await;
    // While it runs: c2 is gone, c1 has its last name.
    let want = BTreeMap::from([
        ("c1".to_string(), "Ada L.".to_string()),
        ("c3".to_string(), "Cy".to_string()),
    ]);
    for _ in 0..400 {
        if names_in(&store, 2).await == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(names_in(&store, 2).await, want);
    assert!(store.get(&key("c2")).unwrap().is_none());
    running.stop().await.unwrap();

    // A new instance restores the store from its checkpoint without reading the topic again.
    let (runtime, running) = names(&b, &storage).await;
    let store = runtime.store("names").unwrap();
    assert_eq!(names_in(&store, 2).await, want);
    produce(&b, &[("c4", Some(r#"{"name":"Di"}"#))]).await;
    assert_eq!(
        names_in(&store, 3).await.get("c4").map(String::as_str),
        Some("Di")
    );
    let metrics = running.stop().await.unwrap();
    assert_eq!(metrics[0].records_in, 1, "{metrics:?}");
}

#[tokio::test]
async fn two_tables_cannot_share_a_store_name_in_one_runtime() {
    let runtime = Runtime::without_broker();
    for expect_ok in [true, false] {
        let builder = StreamsBuilder::new();
        builder
            .stream("orders", source(10))
            .unwrap()
            .group_by([col("customer")])
            .unwrap()
            .count()
            .unwrap()
            .materialize("same")
            .unwrap()
            .to_stream()
            .filter(lit(true))
            .unwrap()
            .to_collector(&Collector::new());
        let started = runtime.run(builder.build().unwrap()).await;
        match started {
            Ok(running) => {
                assert!(expect_ok);
                running.wait().await.unwrap();
            }
            Err(e) => {
                assert!(!expect_ok);
                assert!(e.to_string().contains("already served"), "{e}");
            }
        }
    }
}
