//! The ksqlDB functions in Quiver SQL, over a stream's history and in a continuous query.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod common;
use common::{open, rows, wait_for};

const SETUP: &str = "
    CREATE STREAM readings (sensor STRING KEY, temp DOUBLE, meta STRING, at STRING)
        WITH (KAFKA_TOPIC='readings', VALUE_FORMAT='JSON', PARTITIONS=1);
    SET 'auto.offset.reset' = 'earliest';
    INSERT INTO readings (sensor, temp, meta, at) VALUES
        ('s1', 20.5, '{\"site\": {\"name\": \"north\"}, \"tags\": [\"a\", \"b\"]}', '2026-01-01 10:00:00'),
        ('s1', 23.0, '{\"site\": {\"name\": \"north\"}}', '2026-01-01 10:05:00'),
        ('s2', 18.0, 'not json', '2026-01-01 10:01:00'),
        ('s1', NULL, NULL, '2026-01-01 10:10:00'),
        ('s1', 21.0, '{}', '2026-01-01 10:15:00'),
        ('s2', 18.0, '{\"tags\": []}', '2026-01-01 10:20:00');
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ksqldb_functions_answer_over_history_and_continuously() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, engine) = open(dir.path()).await;
    engine.execute(SETUP).await.unwrap();
    assert_eq!(
        rows(
            &engine,
            "SELECT sensor, LATEST_BY_OFFSET(temp), EARLIEST_BY_OFFSET(temp), \
             LATEST_BY_OFFSET(temp, false), COLLECT_LIST(temp), COLLECT_SET(temp), TOPK(temp, 2) \
             FROM readings GROUP BY sensor ORDER BY sensor;"
        )
        .await,
        [
            "s1|21.0|20.5|21.0|[20.5, 23.0, null, 21.0]|[20.5, 23.0, 21.0]|[23.0, 21.0]",
            "s2|18.0|18.0|18.0|[18.0, 18.0]|[18.0]|[18.0, 18.0]"
        ]
    );
    assert_eq!(
        rows(
            &engine,
            "SELECT EXTRACTJSONFIELD(meta, '$.site.name'), EXTRACTJSONFIELD(meta, '$.tags[1]'), \
             STRINGTOTIMESTAMP(at, 'yyyy-MM-dd HH:mm:ss'), \
             TIMESTAMPTOSTRING(STRINGTOTIMESTAMP(at, 'yyyy-MM-dd HH:mm:ss'), \
                 'dd MMM yyyy HH:mm', 'Europe/Berlin') \
             FROM readings ORDER BY rowoffset LIMIT 3;"
        )
        .await,
        [
            "north|b|1767261600000|01 Jan 2026 11:00",
            "north|null|1767261900000|01 Jan 2026 11:05",
            "null|null|1767261660000|01 Jan 2026 11:01"
        ]
    );
    // Bad arguments are the statement's fault, and say what to write.
    for (sql, message) in [
        (
            "SELECT TOPK(temp, 0) FROM readings GROUP BY sensor;",
            "keeps 1 to 10000 values",
        ),
        (
            "SELECT EXTRACTJSONFIELD(meta, 'site') FROM readings;",
            "is not a JSON path",
        ),
        (
            "SELECT TIMESTAMPTOSTRING(1, 'yyyy QQ') FROM readings;",
            "pattern letter 'Q'",
        ),
        (
            "SELECT STRINGTOTIMESTAMP(at, 'yyyy', 'Mars/Base') FROM readings;",
            "not a time zone",
        ),
    ] {
        let e = engine.execute(sql).await.unwrap_err();
        assert!(e.message.contains(message), "{sql}: {e}");
    }
    // The same aggregates in a persistent query, updated as records arrive.
    engine
        .execute(
            "CREATE TABLE sensor_state AS SELECT sensor, LATEST_BY_OFFSET(temp) AS temp, \
             TOPK(temp, 2) AS hottest, COLLECT_SET(EXTRACTJSONFIELD(meta, '$.site.name')) AS sites \
             FROM readings GROUP BY sensor EMIT CHANGES;",
        )
        .await
        .unwrap();
    let want = ["s1|21.0|[23.0, 21.0]|[north]", "s2|18.0|[18.0, 18.0]|[]"];
    let got = wait_for(
        &engine,
        "SELECT sensor, temp, hottest, sites FROM sensor_state ORDER BY sensor;",
        |got| got == want,
    )
    .await;
    assert_eq!(got, want);
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
}
