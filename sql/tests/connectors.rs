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

/// Runs `sql` over the Parquet tree at `dir` as the table `t`, with `hive` as its Hive
/// partition column; rows as `a|b|…`.
async fn lake_query(dir: &std::path::Path, hive: &str, sql: &str) -> Vec<String> {
    use quiver_engine::arrow::datatypes::DataType;
    let ctx = SessionContext::new();
    // Fails while the tree has directories but no completed file yet: not ready.
    if let Err(e) = ctx
        .register_parquet(
            "t",
            dir.to_str().unwrap(),
            ParquetReadOptions::default().table_partition_cols(vec![(hive.into(), DataType::Utf8)]),
        )
        .await
    {
        return vec![format!("not readable yet: {e}")];
    }
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    common::lines(&batches)
}

/// `INSERT INTO orders VALUES` of orders `first..first + n`: region by id, amount `id % 100`.
fn insert_orders(first: u64, n: u64) -> String {
    let rows: Vec<String> = (first..first + n)
        .map(|id| {
            let region = ["eu", "us", "ap"][(id % 3) as usize];
            format!("({id}, '{region}', {}.0)", id % 100)
        })
        .collect();
    format!(
        "INSERT INTO orders (id, region, amount) VALUES {};",
        rows.join(", ")
    )
}

/// What the lake must hold after orders `0..n`: per region, the orders with amount > 50 and
/// their doubled amounts.
fn big_orders(n: u64) -> Vec<String> {
    let mut out = vec![];
    for (r, region) in ["eu", "us", "ap"].iter().enumerate() {
        let ids: Vec<u64> = (0..n)
            .filter(|id| id % 3 == r as u64 && id % 100 > 50)
            .collect();
        let doubled: u64 = ids.iter().map(|id| 2 * (id % 100)).sum();
        out.push(format!("{region}|{}|{}|{doubled}.0", ids.len(), ids.len()));
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_query_sinks_to_parquet_in_one_statement_and_comes_back_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let lake = dir.path().join("lake");
    let (broker, engine) = open(&data).await;
    ok(
        &engine,
        "CREATE STREAM orders (id BIGINT, region STRING, amount DOUBLE)
           WITH (kafka_topic = 'orders', value_format = 'JSON', partitions = 2);",
    )
    .await;
    ok(&engine, &insert_orders(0, 300)).await;
    // The query reads the orders from the start (ksqlDB's default is the end).
    ok(&engine, "SET 'auto.offset.reset' = 'earliest';").await;
    let create = format!(
        "CREATE SINK big_orders WITH ('store.url' = 'file://{}',
           'partitioner.class' = 'field', 'partition.field.name' = 'region',
           'rotate.schedule.interval.ms' = 200)
         AS SELECT id, region, amount * 2 AS doubled FROM orders WHERE amount > 50
         EMIT CHANGES;",
        lake.display()
    );
    let created = ok(&engine, &create).await;
    assert!(
        created.starts_with(
            "sink 'big_orders' created: query CSAS_BIG_ORDERS_1 writes its rows to the topic \
             'big_orders', and the connector 'big_orders' sinks them (topics big_orders to \
             file://"
        ),
        "{created}"
    );
    let tree = lake.join("topics/big_orders");
    let per_region = "SELECT region, COUNT(*), COUNT(DISTINCT id), SUM(doubled) FROM t \
                      GROUP BY region ORDER BY region";
    let want = big_orders(300);
    let mut got = vec![];
    for _ in 0..300 {
        if tree.exists() {
            got = lake_query(&tree, "region", per_region).await;
            if got == want {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got, want);
    // An aggregation sinks its table's changes, keyed by its GROUP BY columns.
    ok(
        &engine,
        &format!(
            "CREATE SINK region_totals WITH ('store.url' = 'file://{}',
               'rotate.schedule.interval.ms' = 200)
             AS SELECT region, COUNT(*) AS n FROM orders GROUP BY region EMIT CHANGES;",
            lake.display()
        ),
    )
    .await;
    let totals = lake.join("topics/region_totals");
    let latest = "SELECT region, MAX(n) FROM t GROUP BY region ORDER BY region";
    let want_totals = ["ap|100", "eu|100", "us|100"];
    let mut got_totals = vec![];
    for _ in 0..300 {
        if totals.exists() {
            got_totals = lake_query(&totals, "partition", latest).await;
            if got_totals == want_totals {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got_totals, want_totals);
    assert!(
        rows(&engine, "SHOW TABLES;")
            .await
            .iter()
            .any(|l| l == "region_totals|region_totals|JSON|JSON"),
    );
    // The stream between the two is a stream like any other, and the connector is listed.
    let streams = rows(&engine, "SHOW STREAMS;").await;
    assert!(
        streams
            .iter()
            .any(|l| l == "big_orders|big_orders|NONE|JSON"),
        "{streams:?}"
    );
    let connectors = rows(&engine, "SHOW CONNECTORS;").await;
    assert!(
        connectors
            .iter()
            .any(|l| l.starts_with("big_orders|sink|ParquetSink|RUNNING|")),
        "{connectors:?}"
    );

    let lake_url = format!("file://{}", lake.display());
    refused(
        &engine,
        &[
            (
                &create,
                "a connector named 'big_orders' exists; a sink takes a name no stream, table \
                 or connector has",
            ),
            (
                &format!(
                    "CREATE SINK s2 WITH ('store.url' = '{lake_url}', 'topics' = 'orders') \
                     AS SELECT * FROM orders EMIT CHANGES;"
                ),
                "CREATE SINK … AS SELECT sets 'topics' itself",
            ),
            (
                &format!(
                    "CREATE SINK s2 WITH ('store.url' = '{lake_url}', 'flush.sise' = 5) \
                     AS SELECT * FROM orders EMIT CHANGES;"
                ),
                "unknown key 'flush.sise'",
            ),
            (
                "CREATE SINK s2 WITH ('connector.class' = 'DataGen', 'fields' = 'id:uuid') \
                 AS SELECT * FROM orders EMIT CHANGES;",
                "DataGen is a source connector",
            ),
            (
                &format!(
                    "CREATE SINK s2 WITH ('store.url' = '{lake_url}') \
                     AS SELECT region, COLLECT_LIST(id) AS ids FROM orders GROUP BY region \
                     EMIT CHANGES;"
                ),
                "the column 'ids' is List",
            ),
            (
                &format!(
                    "CREATE OR REPLACE SINK s2 WITH ('store.url' = '{lake_url}') \
                     AS SELECT * FROM orders EMIT CHANGES;"
                ),
                "a sink cannot be created OR REPLACE",
            ),
            ("CREATE SINK s2 WITH ('store.url' = 'x');", "AS SELECT"),
            ("DROP SINK nope;", "no sink named 'nope'"),
            ("DROP SINK orders;", "no sink named 'orders'"),
        ],
    )
    .await;
    // A refused sink leaves nothing behind: no stream, no topic, no query, no connector.
    assert!(
        !rows(&engine, "SHOW STREAMS;")
            .await
            .iter()
            .any(|l| l.starts_with("s2|"))
    );
    assert!(
        !rows(&engine, "SHOW TOPICS;")
            .await
            .iter()
            .any(|l| l.starts_with("s2|"))
    );
    assert!(
        !rows(&engine, "SHOW QUERIES;")
            .await
            .iter()
            .any(|l| l.contains("S2"))
    );
    assert!(
        !rows(&engine, "SHOW CONNECTORS;")
            .await
            .iter()
            .any(|l| l.starts_with("s2|"))
    );
    assert_eq!(
        ok(&engine, "DROP SINK IF EXISTS nope;").await,
        "no sink named 'nope'"
    );

    // After a restart the query and the connector go on from where they were: new orders
    // reach the lake, none twice.
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
    drop((engine, broker));
    let (broker, engine) = open(&data).await;
    ok(&engine, &insert_orders(300, 300)).await;
    let want = big_orders(600);
    for _ in 0..300 {
        got = lake_query(&tree, "region", per_region).await;
        if got == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got, want);
    assert_eq!(
        ok(&engine, "DROP SINK big_orders DELETE TOPIC;").await,
        "connector 'big_orders' dropped, query CSAS_BIG_ORDERS_1 terminated, stream \
         'big_orders' dropped, topic 'big_orders' deleted"
    );
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
    drop((engine, broker));
    // Dropped for good: a restart does not bring it back, and the files stay.
    let (broker, engine) = open(&data).await;
    assert!(
        !rows(&engine, "SHOW CONNECTORS;")
            .await
            .iter()
            .any(|l| l.starts_with("big_orders|"))
    );
    assert!(
        !rows(&engine, "SHOW STREAMS;")
            .await
            .iter()
            .any(|l| l.starts_with("big_orders|"))
    );
    assert_eq!(lake_query(&tree, "region", per_region).await, want);
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
}
