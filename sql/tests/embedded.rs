//! SQL embedded in a program: a program's own source registered as a stream, read by push
//! queries and by continuous queries the program runs with its own sinks; what may not read
//! it is refused with a reason.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::sync::Arc;
use std::time::Duration;

use quiver_engine::arrow::array::{
    Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use quiver_engine::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use quiver_engine::{Collector, MemorySource, Runtime};
use quiver_sql::Output;

mod common;
use common::{lines, open, refused};

/// Payments in two partitions: (user, amount) at times 1 s, 2 s, ….
fn payments() -> MemorySource {
    let schema = Arc::new(Schema::new(vec![
        Field::new("user", DataType::Utf8, false),
        Field::new("amount", DataType::Int64, false),
        Field::new(
            "rowtime",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]));
    let batch = |rows: &[(&str, i64, i64)]| {
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    rows.iter().map(|r| r.2 * 1000),
                )),
            ],
        )
        .unwrap()
    };
    MemorySource::new(
        schema.clone(),
        vec![
            (0, batch(&[("ann", 5, 1), ("bob", 20, 2), ("ann", 30, 3)])),
            (1, batch(&[("cy", 12, 1), ("cy", 3, 4)])),
        ],
    )
    .unwrap()
}

#[tokio::test]
async fn a_registered_stream_is_read_by_push_and_continuous_queries_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, engine) = open(dir.path()).await;
    engine
        .register_stream("payments", Arc::new(payments()))
        .unwrap();

    // A continuous query into the program's own sink, on the program's own runtime: it ends
    // with its bounded source.
    let collector = Collector::new();
    let query = engine
        .continuous_query(
            "big_payments",
            "SELECT user, amount * 2 AS doubled FROM payments WHERE amount >= 10 EMIT CHANGES",
            vec![Box::new(collector.sink())],
        )
        .await
        .unwrap();
    let handle = Runtime::without_broker().start(query).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), handle.wait())
        .await
        .unwrap()
        .unwrap();
    let mut got = lines(&collector.batches());
    got.sort();
    assert_eq!(got, ["ann|60", "bob|40", "cy|24"]);

    // A push query: its rows, then the end, since the source ends.
    let mut out = engine
        .execute("SELECT user, amount FROM payments WHERE user = 'cy' EMIT CHANGES;")
        .await
        .unwrap();
    let Some(Output::Push(mut push)) = out.pop() else {
        panic!("not a push query");
    };
    let mut batches = Vec::new();
    while let Some(batch) = tokio::time::timeout(Duration::from_secs(30), push.next())
        .await
        .unwrap()
    {
        batches.push(batch.unwrap());
    }
    let mut got = lines(&batches);
    got.sort();
    assert_eq!(got, ["cy|12", "cy|3"]);

    // Persistent queries must restart with the server, and queries over history read topics:
    // neither can read it.
    refused(
        &engine,
        &[
            (
                "CREATE STREAM copies AS SELECT * FROM payments EMIT CHANGES;",
                "'payments' is a stream this program registered",
            ),
            (
                "CREATE TABLE totals AS SELECT user, SUM(amount) AS total FROM payments \
                 GROUP BY user EMIT CHANGES;",
                "a persistent query cannot restart from it",
            ),
            (
                "SELECT * FROM payments;",
                "it has no history to read; add EMIT CHANGES",
            ),
            (
                "CREATE STREAM payments (user STRING) WITH (KAFKA_TOPIC='payments', \
                 PARTITIONS=1);",
                "'payments' is a stream this program registered; give the new one another name",
            ),
        ],
    )
    .await;
    let taken = engine
        .register_stream("payments", Arc::new(payments()))
        .unwrap_err();
    assert!(
        taken.message.contains("'payments' exists already"),
        "{taken}"
    );
    for (sql, message) in [
        ("SELECT user FROM payments", "needs EMIT CHANGES"),
        ("SHOW STREAMS", "a continuous query is a SELECT"),
        (
            "SELECT user FROM payments EMIT CHANGES; SELECT 1 EMIT CHANGES",
            "give one query, not 2 statements",
        ),
    ] {
        let e = engine
            .continuous_query("q", sql, Vec::new())
            .await
            .unwrap_err();
        assert!(e.message.contains(message), "{sql}: {e}");
    }
}
