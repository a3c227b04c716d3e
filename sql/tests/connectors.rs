//! Connectors from SQL: `CREATE SOURCE|SINK CONNECTOR` with the keys of a connector config
//! file, `SHOW CONNECTORS`, `DESCRIBE CONNECTOR`, `DROP CONNECTOR`; connectors come back with
//! the command log after a restart, and nothing is written twice.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod common;

use std::time::Duration;

use common::{ok, open, refused, rows, wait_for};
use quiver_engine::datafusion::prelude::{ParquetReadOptions, SessionContext};

/// Rows in the Parquet files under `dir` (0 while there are none).
async fn parquet_rows(dir: &std::path::Path) -> usize {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                files.push(p);
            }
        }
    }
    let ctx = SessionContext::new();
    let mut n = 0;
    for f in files {
        let df = ctx
            .read_parquet(f.to_str().unwrap(), ParquetReadOptions::default())
            .await
            .unwrap();
        n += df.count().await.unwrap();
    }
    n
}

#[tokio::test]
async fn connectors_from_sql_feed_a_stream_sink_it_and_come_back_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let lake = dir.path().join("lake");
    let (broker, engine) = open(&data).await;
    let created = ok(
        &engine,
        "CREATE SOURCE CONNECTOR orders_gen WITH (
           'connector.class' = 'DataGen', 'kafka.topic' = 'orders',
           'fields' = 'id:sequence(0); region:choice(''eu'', ''us''); amount:double(1, 100)',
           'key.field' = 'id', 'iterations' = 300, 'transaction.boundary.interval.ms' = 50);",
    )
    .await;
    assert_eq!(
        created,
        "connector 'orders_gen' created: datagen (3 fields) to topic orders"
    );
    ok(
        &engine,
        "CREATE STREAM orders (id BIGINT, region STRING, amount DOUBLE)
           WITH (kafka_topic = 'orders', value_format = 'JSON');",
    )
    .await;
    let count = "SELECT COUNT(*) AS n, COUNT(DISTINCT id) AS ids, MIN(id), MAX(id) FROM orders;";
    let got = wait_for(&engine, count, |r| r == ["300|300|0|299"]).await;
    assert_eq!(got, ["300|300|0|299"]);
    let shown = wait_for(&engine, "SHOW CONNECTORS;", |r| {
        r.iter().any(|l| l.contains("FINISHED"))
    })
    .await;
    assert_eq!(
        shown,
        ["orders_gen|source|DataGen|FINISHED|datagen (3 fields) to topic orders"]
    );
    let described = rows(&engine, "DESCRIBE CONNECTOR orders_gen;").await;
    for line in [
        "type|source",
        "records|300",
        "kafka.topic|orders",
        "iterations|300",
    ] {
        assert!(described.iter().any(|l| l == line), "{line}: {described:?}");
    }

    ok(
        &engine,
        &format!(
            "CREATE SINK CONNECTOR lake WITH ('connector.class' = 'ParquetSink',
               'topics' = 'orders', 'store.url' = 'file://{}', 'value.format' = 'json',
               'value.schema' = 'id BIGINT, region STRING, amount DOUBLE',
               'rotate.schedule.interval.ms' = 200);",
            lake.display()
        ),
    )
    .await;
    for _ in 0..200 {
        if parquet_rows(&lake).await >= 300 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(parquet_rows(&lake).await, 300);

    refused(
        &engine,
        &[
            (
                "CREATE SINK CONNECTOR g WITH ('connector.class' = 'DataGen', \
                 'kafka.topic' = 't', 'fields' = 'id:uuid');",
                "DataGen is a source connector; write CREATE SOURCE CONNECTOR",
            ),
            (
                "CREATE SOURCE CONNECTOR g WITH ('connector.class' = 'DataGen', \
                 'kafka.topic' = 't', 'fields' = 'id:uuid', 'rate' = 5);",
                "unknown key 'rate'",
            ),
            (
                "CREATE SOURCE CONNECTOR orders_gen WITH ('connector.class' = 'DataGen', \
                 'kafka.topic' = 't', 'fields' = 'id:uuid');",
                "a connector named 'orders_gen' exists; DROP CONNECTOR it first",
            ),
            (
                "CREATE SOURCE CONNECTOR g WITH ('connector.class' = 'Nope');",
                "unknown connector.class 'Nope'",
            ),
            ("CREATE SOURCE CONNECTOR g;", "WITH ('connector.class'"),
            ("DROP CONNECTOR nope;", "no connector named 'nope'"),
            ("DESCRIBE CONNECTOR nope;", "no connector named 'nope'"),
        ],
    )
    .await;
    assert_eq!(
        ok(&engine, "DROP CONNECTOR IF EXISTS nope;").await,
        "no connector named 'nope'"
    );

    // A restart brings both back from the command log; the generator has nothing left to make.
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
    drop((engine, broker));
    let (broker, engine) = open(&data).await;
    let shown = wait_for(&engine, "SHOW CONNECTORS;", |r| {
        r.len() == 2 && r[1].contains("FINISHED")
    })
    .await;
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert!(
        shown[0].starts_with("lake|sink|ParquetSink|RUNNING|"),
        "{shown:?}"
    );
    assert!(
        shown[1].starts_with("orders_gen|source|DataGen|FINISHED|"),
        "{shown:?}"
    );
    assert_eq!(rows(&engine, count).await, ["300|300|0|299"]);
    assert_eq!(
        ok(&engine, "DROP CONNECTOR lake;").await,
        "connector 'lake' dropped (it committed what it had)"
    );
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
    drop((engine, broker));
    let (broker, engine) = open(&data).await;
    let shown = rows(&engine, "SHOW CONNECTORS;").await;
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert!(shown[0].starts_with("orders_gen|"), "{shown:?}");
    assert_eq!(parquet_rows(&lake).await, 300);
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
}
