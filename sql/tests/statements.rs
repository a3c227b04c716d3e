//! Quiver SQL against an in-process broker: streams over topics, inserts, queries over history,
//! push queries, persistent queries with windows, and their recovery after a restart from the
//! command log and their checkpoints.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::collections::BTreeMap;
use std::time::Duration;

use quiver_broker::Record;
use quiver_sql::{ErrorKind, Output, SqlEngine};

mod common;
use common::{lines, ok, open, refused, rows, wait_for};

const PAGEVIEWS: &str = "CREATE STREAM pageviews (user_id STRING KEY, page STRING, ms BIGINT) \
     WITH (KAFKA_TOPIC='pageviews', VALUE_FORMAT='JSON', PARTITIONS=2, TIMESTAMP='ms');";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_over_a_topic_answers_queries_over_its_history() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, engine) = open(dir.path()).await;
    assert!(ok(&engine, PAGEVIEWS).await.contains("created"));
    // Records written by any producer are rows of the stream.
    broker
        .produce(
            "pageviews",
            &[Record::new(
                5,
                Some(b"carol"),
                Some(br#"{"page": "/x", "ms": 4000}"#),
            )],
        )
        .await
        .unwrap();
    assert_eq!(
        ok(
            &engine,
            "INSERT INTO pageviews (user_id, page, ms) VALUES ('alice', '/a', 1000), \
             ('bob', '/b', 2000), ('alice', '/c', 3000);"
        )
        .await,
        "3 rows inserted into 'pageviews'"
    );
    assert_eq!(
        rows(
            &engine,
            "SELECT user_id, COUNT(*) AS views, MAX(ms) AS last FROM pageviews \
             GROUP BY user_id ORDER BY user_id;"
        )
        .await,
        ["alice|2|3000", "bob|1|2000", "carol|1|4000"]
    );
    // The event time is the TIMESTAMP column, and the usual functions work on it.
    assert_eq!(
        rows(
            &engine,
            "SELECT page, rowtime FROM pageviews WHERE rowtime >= TIMESTAMP '1970-01-01 00:00:02' \
             ORDER BY rowtime LIMIT 2;"
        )
        .await,
        ["/b|1970-01-01T00:00:02", "/c|1970-01-01T00:00:03"]
    );
    let described = rows(&engine, "DESCRIBE pageviews;").await;
    assert_eq!(
        described,
        [
            "rowtime|TIMESTAMP (record time)",
            "user_id|STRING (key)",
            "page|STRING",
            "ms|BIGINT (event time)"
        ]
    );
    assert_eq!(
        rows(&engine, "SHOW STREAMS;").await,
        ["pageviews|pageviews|KAFKA|JSON"]
    );
    assert!(
        rows(&engine, "SHOW TOPICS;")
            .await
            .contains(&"pageviews|2".to_owned())
    );
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_query_streams_rows_as_they_arrive_and_ends_at_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, engine) = open(dir.path()).await;
    ok(&engine, PAGEVIEWS).await;
    // From the latest offset by default: rows written before the query are not seen.
    ok(&engine, "INSERT INTO pageviews VALUES ('old', '/old', 1);").await;
    let mut out = engine
        .execute("SELECT user_id, UPPER(page) AS page FROM pageviews WHERE page <> '/skip' EMIT CHANGES LIMIT 3;")
        .await
        .unwrap();
    let Some(Output::Push(mut push)) = out.pop() else {
        panic!("not a push query");
    };
    let writer = engine.clone();
    tokio::spawn(async move {
        for (user, page) in [
            ("a", "/1"),
            ("b", "/skip"),
            ("c", "/2"),
            ("d", "/3"),
            ("e", "/4"),
        ] {
            tokio::time::sleep(Duration::from_millis(100)).await;
            writer
                .execute(&format!(
                    "INSERT INTO pageviews VALUES ('{user}', '{page}', 10);"
                ))
                .await
                .unwrap();
        }
    });
    let mut got = Vec::new();
    while let Some(batch) = tokio::time::timeout(Duration::from_secs(30), push.next())
        .await
        .unwrap()
    {
        got.extend(lines(&[batch.unwrap()]));
    }
    assert_eq!(got, ["a|/1", "c|/2", "d|/3"]);
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
}

/// Each (user, window)'s count as the output topic's changelog gives it, in order.
async fn changelog(engine: &SqlEngine) -> BTreeMap<(String, String), Vec<i64>> {
    let mut out: BTreeMap<(String, String), Vec<i64>> = BTreeMap::new();
    let all = rows(
        engine,
        "SELECT user_id, CAST(windowstart AS STRING), views FROM views_raw ORDER BY rowoffset;",
    )
    .await;
    for line in all {
        let parts: Vec<&str> = line.split('|').collect();
        out.entry((parts[0].to_owned(), parts[1].to_owned()))
            .or_default()
            .push(parts[2].parse().unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_windowed_table_query_resumes_after_a_restart_without_duplicates_or_gaps() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (broker, engine) = open(dir.path()).await;
        ok(&engine, PAGEVIEWS).await;
        ok(&engine, "SET 'auto.offset.reset' = 'earliest';").await;
        ok(
            &engine,
            "INSERT INTO pageviews VALUES ('alice', '/a', 1000), ('bob', '/b', 2000), \
             ('alice', '/c', 61000);",
        )
        .await;
        let created = ok(
            &engine,
            "CREATE TABLE views_per_minute WITH (KAFKA_TOPIC='views_per_minute', PARTITIONS=2) AS \
             SELECT user_id, COUNT(*) AS views FROM pageviews \
             WINDOW TUMBLING (SIZE 1 MINUTE, GRACE PERIOD 1 HOUR) GROUP BY user_id EMIT CHANGES;",
        )
        .await;
        assert!(created.contains("CTAS_VIEWS_PER_MINUTE_"), "{created}");
        let described = rows(&engine, "DESCRIBE views_per_minute;").await;
        assert_eq!(
            described,
            [
                "rowtime|TIMESTAMP (record time)",
                "user_id|STRING (primary key)",
                "windowstart|TIMESTAMP (primary key)",
                "views|BIGINT",
                "windowend|TIMESTAMP"
            ]
        );
        // A stream over the table's topic sees every update (the table itself, its latest).
        ok(
            &engine,
            "CREATE STREAM views_raw (user_id STRING KEY, windowstart TIMESTAMP KEY, views BIGINT) \
             WITH (KAFKA_TOPIC='views_per_minute', VALUE_FORMAT='JSON', KEY_FORMAT='JSON');",
        )
        .await;
        wait_for_total(&engine, 3).await;
        // DESCRIBE EXTENDED shows what the query writing the table has done.
        let extended = rows(&engine, "DESCRIBE EXTENDED views_per_minute;").await;
        let stat = |name: &str| {
            extended
                .iter()
                .find_map(|r| r.strip_prefix(&format!("{name}|")))
                .unwrap_or_else(|| panic!("no {name} in {extended:#?}"))
                .to_owned()
        };
        assert!(stat("written by").starts_with("CTAS_VIEWS_PER_MINUTE_"));
        assert_eq!(stat("records read"), "3");
        assert_eq!(stat("records that did not decode"), "0");
        assert_eq!(stat("rows written"), "3");
        // The lowest of the partitions' times (bob's 2 s), or alice's 61 s once bob's partition
        // has been idle for a while.
        let watermark = stat("watermark");
        assert!(
            ["1970-01-01T00:00:02.000", "1970-01-01T00:01:01.000"].contains(&watermark.as_str()),
            "{watermark}"
        );
        assert!(stat("state bytes").parse::<u64>().unwrap() > 0);
        stat("checkpoints").parse::<u64>().unwrap();
        let running = rows(&engine, "SHOW QUERIES;").await;
        assert_eq!(running.len(), 1, "{running:?}");
        assert!(
            running[0].contains("|RUNNING|views_per_minute|"),
            "{running:?}"
        );
        engine.shutdown().await.unwrap();
        broker.shutdown().await.unwrap();
    }
    // After the restart the command log brings the streams, the table and its query back.
    let (broker, engine) = open(dir.path()).await;
    assert_eq!(rows(&engine, "SHOW QUERIES;").await.len(), 1);
    ok(
        &engine,
        "INSERT INTO pageviews VALUES ('bob', '/d', 3000), ('alice', '/e', 62000);",
    )
    .await;
    wait_for_total(&engine, 5).await;
    let log = changelog(&engine).await;
    // Every update of a window's count is one more than the last: nothing counted twice,
    // nothing skipped.
    for (key, counts) in &log {
        let want: Vec<i64> = (1..=counts.len() as i64).collect();
        assert_eq!(counts, &want, "{key:?}: {log:?}");
    }
    let finals: Vec<i64> = log.values().map(|c| *c.last().unwrap()).collect();
    assert_eq!(finals, [1, 2, 2], "{log:?}");
    // The table's rows are its latest per key and window.
    assert_eq!(
        rows(
            &engine,
            "SELECT user_id, views FROM views_per_minute ORDER BY user_id, windowstart;"
        )
        .await,
        ["alice|1", "alice|2", "bob|2"]
    );
    assert!(
        ok(&engine, "TERMINATE ALL;")
            .await
            .contains("CTAS_VIEWS_PER_MINUTE_")
    );
    ok(&engine, "DROP TABLE views_per_minute;").await;
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
    drop((engine, broker));
    // Dropped and terminated stay so.
    let (broker, engine) = open(dir.path()).await;
    assert!(rows(&engine, "SHOW QUERIES;").await.is_empty());
    assert!(rows(&engine, "SHOW TABLES;").await.is_empty());
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
}

/// Waits until the table's output holds updates summing to `views` final views.
async fn wait_for_total(engine: &SqlEngine, views: i64) {
    let mut last = BTreeMap::new();
    for _ in 0..300 {
        last = changelog(engine).await;
        let total: i64 = last.values().map(|c| *c.last().unwrap()).sum();
        if total >= views {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the query's output never reached {views} views: {last:?}");
}

/// Bad statements: each gets a precise error at the right place, and the engine goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_statements_get_errors_with_their_position_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, engine) = open(dir.path()).await;
    ok(&engine, PAGEVIEWS).await;
    let cases: &[(&str, ErrorKind, &str, (u64, u64))] = &[
        (
            "SELEC * FROM pageviews;",
            ErrorKind::Syntax,
            "does not start a statement",
            (1, 1),
        ),
        (
            "SELECT * FROM pageview;",
            ErrorKind::Statement,
            "did you mean 'pageviews'",
            (1, 15),
        ),
        (
            "SELECT nope FROM pageviews;",
            ErrorKind::Statement,
            "nope",
            (1, 8),
        ),
        (
            "SELECT user_id FROM pageviews\n  WHERE bogus > 1;",
            ErrorKind::Statement,
            "bogus",
            (2, 9),
        ),
        (
            "CREATE STREAM s (a INT) WITH (KAFKA_TOPIK='s', VALUE_FORMAT='JSON');",
            ErrorKind::Statement,
            "did you mean KAFKA_TOPIC",
            (1, 31),
        ),
        (
            "CREATE STREAM s (a INT) WITH (KAFKA_TOPIC='missing', VALUE_FORMAT='JSON');",
            ErrorKind::Statement,
            "PARTITIONS",
            (1, 31),
        ),
        (
            "CREATE STREAM s (a INT) WITH (KAFKA_TOPIC='s', VALUE_FORMAT='XML', PARTITIONS=1);",
            ErrorKind::Statement,
            "not a format",
            (1, 48),
        ),
        (
            "CREATE TABLE t (a INT) WITH (KAFKA_TOPIC='t', VALUE_FORMAT='JSON', PARTITIONS=1);",
            ErrorKind::Statement,
            "PRIMARY KEY",
            (1, 1),
        ),
        (
            "CREATE STREAM s (a INT PRIMARY KEY) WITH (KAFKA_TOPIC='s');",
            ErrorKind::Syntax,
            "a stream has no primary key",
            (1, 18),
        ),
        (
            "CREATE STREAM s (a WIDGET) WITH (KAFKA_TOPIC='s');",
            ErrorKind::Statement,
            "not supported",
            (1, 18),
        ),
        (
            "SELECT user_id, COUNT(*) FROM pageviews WINDOW TUMBLING (SIZE 0 FORTNIGHTS) \
             GROUP BY user_id EMIT CHANGES;",
            ErrorKind::Syntax,
            "not a time unit",
            (1, 65),
        ),
        (
            "SELECT user_id, COUNT(*) FROM pageviews WINDOW HOPPING (SIZE 1 MINUTE) \
             GROUP BY user_id EMIT CHANGES;",
            ErrorKind::Syntax,
            "Expected: ,",
            (1, 70),
        ),
        (
            "SELECT user_id FROM pageviews EMIT SOMETIMES;",
            ErrorKind::Syntax,
            "CHANGES or FINAL",
            (1, 36),
        ),
        (
            "SELECT user_id, WINDOWSTART FROM pageviews EMIT CHANGES;",
            ErrorKind::Statement,
            "WINDOW clause",
            (1, 17),
        ),
        (
            "SELECT user_id FROM pageviews EMIT FINAL;",
            ErrorKind::Statement,
            "EMIT FINAL needs a windowed aggregation",
            (1, 1),
        ),
        (
            "SELECT user_id FROM pageviews ORDER BY ms EMIT CHANGES;",
            ErrorKind::Statement,
            "ORDER BY cannot run on a stream",
            (1, 1),
        ),
        (
            "CREATE TABLE x AS SELECT user_id FROM pageviews;",
            ErrorKind::Statement,
            "needs an aggregation",
            (1, 19),
        ),
        (
            "DROP TABLE pageviews;",
            ErrorKind::Statement,
            "DROP STREAM pageviews",
            (1, 12),
        ),
        (
            "DROP STREAM nothing;",
            ErrorKind::Statement,
            "no stream or table named",
            (1, 13),
        ),
        (
            "DESCRIBE nothing;",
            ErrorKind::Statement,
            "no stream or table",
            (1, 10),
        ),
        (
            "TERMINATE CSAS_NOPE_1;",
            ErrorKind::Statement,
            "no running query",
            (1, 1),
        ),
        (
            "SHOW WIDGETS;",
            ErrorKind::Syntax,
            "STREAMS, TABLES",
            (1, 6),
        ),
        (
            "PRINT nothing;",
            ErrorKind::Statement,
            "no topic named",
            (1, 1),
        ),
        (
            "INSERT INTO pageviews (user_id, nope) VALUES ('a', 1);",
            ErrorKind::Statement,
            "no column 'nope'",
            (1, 1),
        ),
        (
            "INSERT INTO pageviews VALUES ('a');",
            ErrorKind::Statement,
            "1 values for 3 columns",
            (1, 1),
        ),
        (
            "SELECT 'unterminated FROM pageviews;",
            ErrorKind::Syntax,
            "Unterminated",
            (1, 8),
        ),
        (
            "SELECT * FROM pageviews WHERE;",
            ErrorKind::Syntax,
            "Expected",
            (1, 30),
        ),
        (
            "SET 'auto.offset.reset' = 'sometime';",
            ErrorKind::Statement,
            "earliest",
            (1, 1),
        ),
    ];
    let mut failures = Vec::new();
    for (sql, kind, message, (line, column)) in cases {
        match engine.execute(sql).await {
            Ok(_) => failures.push(format!("{sql}: accepted")),
            Err(e) => {
                let position = e.position.map_or((0, 0), |p| (p.line, p.column));
                if e.kind != *kind || !e.message.contains(message) || position != (*line, *column) {
                    failures.push(format!(
                        "{sql}\n  got {:?} at {position:?}: {}\n  want {kind:?} at ({line}, {column}) with '{message}'",
                        e.kind, e.message
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Nothing was created or changed by the refused statements.
    assert_eq!(rows(&engine, "SHOW STREAMS;").await.len(), 1);
    assert!(rows(&engine, "SHOW TABLES;").await.is_empty());
    assert!(rows(&engine, "SHOW QUERIES;").await.is_empty());
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
}

#[test]
fn the_parser_reads_every_statement_kind() {
    use quiver_sql::parser::{Emit, ShowWhat, SourceKind, Statement, WindowClause};
    let script = "
        CREATE OR REPLACE STREAM IF NOT EXISTS s (id BIGINT KEY, v STRING) WITH (kafka_topic='s', value_format='JSON');
        CREATE TABLE t WITH (PARTITIONS=3) AS SELECT id, COUNT(*) FROM s
          WINDOW HOPPING (SIZE 10 SECONDS, ADVANCE BY 5 SECONDS, GRACE PERIOD 1 MINUTE) GROUP BY id EMIT FINAL;
        INSERT INTO s SELECT * FROM s2 EMIT CHANGES;
        INSERT INTO s (id, v) VALUES (1, 'a'), (2, 'b');
        SELECT * FROM s WINDOW SESSION (30 SECONDS) GROUP BY id EMIT CHANGES LIMIT 5;
        SHOW STREAMS; LIST TOPICS; SHOW QUERIES; SHOW PROPERTIES; SHOW TABLES;
        DESCRIBE EXTENDED s;
        EXPLAIN SELECT * FROM s;
        DROP TABLE IF EXISTS t DELETE TOPIC;
        TERMINATE CTAS_T_1; TERMINATE ALL;
        PRINT 's' FROM BEGINNING LIMIT 10;
        SET 'auto.offset.reset' = 'earliest'; UNSET 'auto.offset.reset';
        RUN SCRIPT 'more.sql'
    ";
    let parsed = quiver_sql::parse(script).unwrap();
    assert_eq!(parsed.len(), 19);
    assert!(matches!(
        &parsed[0].statement,
        Statement::CreateSource { kind: SourceKind::Stream, or_replace: true, if_not_exists: true, columns, properties, .. }
            if columns.len() == 2 && columns[0].key && properties[0].name == "KAFKA_TOPIC"
    ));
    assert_eq!(parsed[0].position.line, 2);
    match &parsed[1].statement {
        Statement::CreateAs {
            kind: SourceKind::Table,
            query,
            ..
        } => {
            assert_eq!(
                query.window.map(|w| w.0),
                Some(WindowClause::Hopping {
                    size_ms: 10_000,
                    advance_ms: 5_000,
                    grace_ms: Some(60_000)
                })
            );
            assert_eq!(query.emit, Some(Emit::Final));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&parsed[2].statement, Statement::InsertSelect { query, .. } if query.emit == Some(Emit::Changes))
    );
    assert!(
        matches!(&parsed[3].statement, Statement::InsertValues { rows, columns, .. } if rows.len() == 2 && columns.len() == 2)
    );
    match &parsed[4].statement {
        Statement::Select(q) => {
            assert_eq!(
                q.window.map(|w| w.0),
                Some(WindowClause::Session {
                    gap_ms: 30_000,
                    grace_ms: None
                })
            );
            assert_eq!(q.limit, Some(5));
            assert!(q.query.limit_clause.is_none());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(parsed[5].statement, Statement::Show(ShowWhat::Streams));
    assert_eq!(parsed[6].statement, Statement::Show(ShowWhat::Topics));
    assert!(matches!(
        &parsed[10].statement,
        Statement::Describe { extended: true, .. }
    ));
    assert!(matches!(&parsed[11].statement, Statement::Explain(_)));
    assert!(matches!(
        &parsed[12].statement,
        Statement::Drop {
            kind: SourceKind::Table,
            if_exists: true,
            delete_topic: true,
            ..
        }
    ));
    assert_eq!(
        parsed[13].statement,
        Statement::Terminate(Some("CTAS_T_1".into()))
    );
    assert_eq!(parsed[14].statement, Statement::Terminate(None));
    assert_eq!(
        parsed[15].statement,
        Statement::Print {
            topic: "s".into(),
            from_beginning: true,
            limit: Some(10)
        }
    );
    assert_eq!(
        parsed[16].statement,
        Statement::Set {
            name: "auto.offset.reset".into(),
            value: "earliest".into()
        }
    );
    assert_eq!(
        parsed[17].statement,
        Statement::Unset("auto.offset.reset".into())
    );
    assert_eq!(
        parsed[18].statement,
        Statement::RunScript("more.sql".into())
    );
    // The text of each statement is kept for the command log, without its ';'.
    assert_eq!(parsed[13].text, "TERMINATE CTAS_T_1");
}

/// A pull query on a table a running query maintains answers from the query's store: by key,
/// and for any other WHERE over all rows. Once the query is terminated, the table's topic
/// answers instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_queries_on_a_maintained_table_read_its_store() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, engine) = open(dir.path()).await;
    ok(&engine, PAGEVIEWS).await;
    ok(&engine, "SET 'auto.offset.reset' = 'earliest';").await;
    ok(
        &engine,
        "INSERT INTO pageviews VALUES ('alice', '/a', 1000), ('bob', '/b', 2000), \
         ('alice', '/c', 3000), ('carol', '/d', 4000);",
    )
    .await;
    ok(
        &engine,
        "CREATE TABLE views_per_user AS SELECT user_id, COUNT(*) AS views FROM pageviews \
         GROUP BY user_id EMIT CHANGES;",
    )
    .await;
    let got = wait_for(
        &engine,
        "SELECT user_id, views FROM views_per_user ORDER BY user_id;",
        |got| got.len() == 3 && got[0] == "alice|2",
    )
    .await;
    assert_eq!(got, ["alice|2", "bob|1", "carol|1"]);
    // The store runs ahead of the topic (whose records commit with the query's checkpoint):
    // wait for the topic, so that the record below comes after the query's.
    ok(
        &engine,
        "CREATE STREAM views_raw (user_id STRING KEY, views BIGINT) \
         WITH (KAFKA_TOPIC='views_per_user', VALUE_FORMAT='JSON');",
    )
    .await;
    let written = wait_for(
        &engine,
        "SELECT views FROM views_raw WHERE user_id = 'alice' ORDER BY views DESC LIMIT 1;",
        |written| written == ["2"],
    )
    .await;
    assert_eq!(written, ["2"]);
    // A record written to the table's topic by someone else is not the query's state.
    broker
        .produce(
            "views_per_user",
            &[Record::new(9000, Some(b"alice"), Some(br#"{"views": 99}"#))],
        )
        .await
        .unwrap();
    assert_eq!(
        rows(
            &engine,
            "SELECT views FROM views_per_user WHERE user_id = 'alice';"
        )
        .await,
        ["2"]
    );
    assert_eq!(
        rows(
            &engine,
            "SELECT user_id FROM views_per_user WHERE user_id > 'b' AND views = 1 ORDER BY user_id;"
        )
        .await,
        ["bob", "carol"]
    );
    assert!(
        rows(
            &engine,
            "SELECT views FROM views_per_user WHERE user_id = 'nobody';"
        )
        .await
        .is_empty()
    );
    // A lookup of one key's columns is answered from the store without planning it; the same
    // query with a condition that changes nothing is planned by DataFusion: the answers (names,
    // types, rows) are the same.
    for (fast, planned) in [
        (
            "SELECT * FROM views_per_user WHERE user_id = 'alice';",
            "SELECT * FROM views_per_user WHERE user_id = 'alice' AND 1 = 1;",
        ),
        (
            "SELECT views AS n, v.user_id FROM views_per_user v WHERE 'bob' = user_id LIMIT 5;",
            "SELECT views AS n, v.user_id FROM views_per_user v WHERE 'bob' = user_id AND 1 = 1 \
             LIMIT 5;",
        ),
        (
            "SELECT Views FROM views_per_user WHERE (user_id = 'nobody');",
            "SELECT Views FROM views_per_user WHERE (user_id = 'nobody') AND 1 = 1;",
        ),
    ] {
        let answer = |sql: &'static str| {
            let engine = &engine;
            async move {
                match engine.execute(sql).await.unwrap().pop().unwrap() {
                    quiver_sql::Output::Rows { schema, batches } => {
                        let fields: Vec<String> = schema
                            .fields()
                            .iter()
                            .map(|f| format!("{}:{}:{}", f.name(), f.data_type(), f.is_nullable()))
                            .collect();
                        (fields, common::lines(&batches))
                    }
                    other => panic!("{sql}: {other:?}"),
                }
            }
        };
        assert_eq!(answer(fast).await, answer(planned).await, "{fast}");
    }
    // A column qualified by a name the query does not use is an error either way.
    assert!(
        engine
            .execute("SELECT x.views FROM views_per_user v WHERE user_id = 'alice';")
            .await
            .is_err()
    );
    // Terminated, the table is its topic's latest rows.
    ok(&engine, "TERMINATE ALL;").await;
    assert_eq!(
        rows(
            &engine,
            "SELECT views FROM views_per_user WHERE user_id = 'alice';"
        )
        .await,
        ["99"]
    );
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
}

/// `PARTITION BY` re-keys a stream's output: its records are keyed, and so partitioned, by the
/// named columns. Without it, a stream query keeps its source's key when it selects it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_by_rekeys_a_stream_and_a_selected_key_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, engine) = open(dir.path()).await;
    ok(&engine, PAGEVIEWS).await;
    ok(&engine, "SET 'auto.offset.reset' = 'earliest';").await;
    let mut values = Vec::new();
    for i in 0..40 {
        values.push(format!("('u{}', '/p{}', {})", i % 7, i % 5, 1000 + i));
    }
    ok(
        &engine,
        &format!("INSERT INTO pageviews VALUES {};", values.join(", ")),
    )
    .await;
    ok(
        &engine,
        "CREATE STREAM by_page WITH (PARTITIONS=3) AS SELECT page, user_id, ms FROM pageviews \
         PARTITION BY page EMIT CHANGES;",
    )
    .await;
    ok(
        &engine,
        "CREATE STREAM same_key AS SELECT user_id, UPPER(page) AS page FROM pageviews EMIT CHANGES;",
    )
    .await;
    assert_eq!(
        rows(&engine, "DESCRIBE by_page;").await[1..],
        ["page|STRING (key)", "user_id|STRING", "ms|BIGINT"]
    );
    assert_eq!(
        rows(&engine, "DESCRIBE same_key;").await[1..],
        ["user_id|STRING (key)", "page|STRING"]
    );
    let got = wait_for(
        &engine,
        "SELECT page, COUNT(*), COUNT(DISTINCT rowpartition) FROM by_page GROUP BY page \
             ORDER BY page;",
        |got| {
            got.iter()
                .map(|r| r.split('|').nth(1).unwrap().parse::<i64>().unwrap())
                .sum::<i64>()
                == 40
        },
    )
    .await;
    // Each page's records went to one partition, as their key says.
    assert_eq!(got, ["/p0|8|1", "/p1|8|1", "/p2|8|1", "/p3|8|1", "/p4|8|1"]);
    refused(
        &engine,
        &[
        (
            "CREATE STREAM bad AS SELECT page FROM pageviews PARTITION BY user_id EMIT CHANGES;",
            "no column 'user_id'",
        ),
        (
            "CREATE TABLE bad AS SELECT page, COUNT(*) AS n FROM pageviews GROUP BY page \
             PARTITION BY page EMIT CHANGES;",
            "keyed by its GROUP BY",
        ),
        (
            "SELECT page FROM pageviews PARTITION BY page EMIT CHANGES;",
            "belongs to CREATE STREAM",
        ),
        ],
    )
    .await;
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
}

/// A persistent query's records carry the time of what they came from, as ksqlDB's do: a
/// stream's rows their source record's time (so a query over the derived stream windows by
/// event time, not by when it ran), a windowed table's rows their window's last instant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_streams_and_tables_keep_event_time_in_their_records() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, engine) = open(dir.path()).await;
    ok(&engine, PAGEVIEWS).await;
    ok(&engine, "SET 'auto.offset.reset' = 'earliest';").await;
    ok(
        &engine,
        "INSERT INTO pageviews VALUES ('alice', '/a', 1000), ('bob', '/b', 2500), \
         ('alice', '/c', 61000);",
    )
    .await;
    ok(
        &engine,
        "CREATE STREAM upper_views AS SELECT user_id, UPPER(page) AS page FROM pageviews \
         EMIT CHANGES;",
    )
    .await;
    ok(
        &engine,
        "CREATE TABLE per_minute WITH (PARTITIONS=1) AS SELECT user_id, COUNT(*) AS views \
         FROM pageviews WINDOW TUMBLING (SIZE 1 MINUTE) GROUP BY user_id EMIT CHANGES;",
    )
    .await;
    // A window over the derived stream groups by the times the records had at the source.
    ok(
        &engine,
        "CREATE TABLE derived_per_minute WITH (PARTITIONS=1) AS SELECT user_id, COUNT(*) AS views \
         FROM upper_views WINDOW TUMBLING (SIZE 1 MINUTE) GROUP BY user_id EMIT CHANGES;",
    )
    .await;
    ok(
        &engine,
        "CREATE STREAM per_minute_raw (user_id STRING KEY, windowstart TIMESTAMP KEY, views BIGINT) \
         WITH (KAFKA_TOPIC='per_minute', VALUE_FORMAT='JSON', KEY_FORMAT='JSON');",
    )
    .await;
    let got = wait_for(
        &engine,
        "SELECT user_id, page, CAST(rowtime AS BIGINT) AS t FROM upper_views ORDER BY t;",
        |got| got.len() == 3,
    )
    .await;
    assert_eq!(got, ["alice|/A|1000", "bob|/B|2500", "alice|/C|61000"]);
    let mut windows = wait_for(
        &engine,
        "SELECT user_id, CAST(windowstart AS BIGINT), views, CAST(rowtime AS BIGINT) \
             FROM per_minute_raw ORDER BY rowoffset;",
        |windows| windows.len() == 3,
    )
    .await;
    // Each window's result is stamped with the window's last millisecond.
    windows.sort();
    assert_eq!(
        windows,
        ["alice|0|1|59999", "alice|60000|1|119999", "bob|0|1|59999"]
    );
    let derived = wait_for(
        &engine,
        "SELECT user_id, CAST(windowstart AS BIGINT) AS w, views FROM derived_per_minute \
             ORDER BY user_id, w;",
        |derived| derived.len() == 3,
    )
    .await;
    assert_eq!(derived, ["alice|0|1", "alice|60000|1", "bob|0|1"]);
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
}

/// `LATE DATA TO 'topic'` routes the records that come after their window closed to a topic
/// (created when missing) instead of dropping them, and they count nowhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_records_go_to_the_topic_late_data_to_names() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, engine) = open(dir.path()).await;
    ok(
        &engine,
        "CREATE STREAM clicks (user_id STRING KEY, ms BIGINT) WITH (KAFKA_TOPIC='clicks', \
         VALUE_FORMAT='JSON', PARTITIONS=1, TIMESTAMP='ms');",
    )
    .await;
    ok(&engine, "SET 'auto.offset.reset' = 'earliest';").await;
    ok(
        &engine,
        "CREATE TABLE clicks_per_minute AS SELECT user_id, COUNT(*) AS n FROM clicks \
         WINDOW TUMBLING (SIZE 1 MINUTE, GRACE PERIOD 0 SECONDS) GROUP BY user_id \
         LATE DATA TO 'clicks_late' EMIT CHANGES;",
    )
    .await;
    assert_eq!(broker.partition_count("clicks_late").unwrap(), 1);
    ok(
        &engine,
        "INSERT INTO clicks VALUES ('alice', 1000), ('bob', 125000);",
    )
    .await;
    let table = "SELECT user_id, CAST(windowstart AS BIGINT), n FROM clicks_per_minute \
                 ORDER BY user_id;";
    let got = wait_for(&engine, table, |got| got.len() == 2).await;
    assert_eq!(got, ["alice|0|1", "bob|120000|1"]);
    // Time is at 125 s: the first minute's window has closed.
    ok(&engine, "INSERT INTO clicks VALUES ('carol', 2000);").await;
    let mut late = Vec::new();
    for _ in 0..400 {
        let read = broker.read("clicks_late", 0, 0, 1 << 20).unwrap();
        late = read
            .batches
            .iter()
            .flat_map(|b| quiver_broker::batch_to_records(&b.records).unwrap())
            .filter_map(|r| r.value.map(|v| String::from_utf8(v.to_vec()).unwrap()))
            .collect();
        if !late.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(late.len(), 1, "{late:?}");
    assert!(late[0].contains("carol"), "{late:?}");
    assert_eq!(rows(&engine, table).await, ["alice|0|1", "bob|120000|1"]);
    refused(
        &engine,
        &[
            (
                "SELECT user_id FROM clicks LATE DATA TO 'x' EMIT CHANGES;",
                "goes with a WINDOW",
            ),
            (
                "SELECT user_id, COUNT(*) FROM clicks WINDOW TUMBLING (SIZE 1 MINUTE) \
             GROUP BY user_id LATE DATA 'x' EMIT CHANGES;",
                "expected TO after LATE DATA",
            ),
            (
                "SELECT user_id, COUNT(*) FROM clicks GROUP BY user_id LATE DATA TO 'x';",
                "belongs to a continuous query",
            ),
        ],
    )
    .await;
    assert!(broker.partition_count("x").is_err());
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
}

/// `TIMESTAMP_FORMAT` reads a STRING event-time column with a Java pattern (as ksqlDB does):
/// queries over history and windows see the parsed time; text that is not a time is a bad
/// record, left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_string_event_time_is_read_with_its_timestamp_format() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, engine) = open(dir.path()).await;
    ok(
        &engine,
        "CREATE STREAM logins (user_id STRING KEY, at STRING) WITH (KAFKA_TOPIC='logins', \
         VALUE_FORMAT='JSON', PARTITIONS=1, TIMESTAMP='at', \
         TIMESTAMP_FORMAT='yyyy-MM-dd''T''HH:mm:ss');",
    )
    .await;
    ok(&engine, "SET 'auto.offset.reset' = 'earliest';").await;
    ok(
        &engine,
        "INSERT INTO logins VALUES ('ann', '2026-01-01T00:00:05'), ('bo', 'yesterday'), \
         ('cy', '2026-01-01T00:01:30'), ('ann', '2026-01-01T00:00:59');",
    )
    .await;
    assert_eq!(
        rows(
            &engine,
            "SELECT user_id, CAST(rowtime AS BIGINT) FROM logins ORDER BY rowoffset;"
        )
        .await,
        ["ann|1767225605000", "cy|1767225690000", "ann|1767225659000"]
    );
    ok(
        &engine,
        "CREATE TABLE logins_per_minute AS SELECT user_id, COUNT(*) AS n FROM logins \
         WINDOW TUMBLING (SIZE 1 MINUTE) GROUP BY user_id EMIT CHANGES;",
    )
    .await;
    let got = wait_for(
        &engine,
        "SELECT user_id, CAST(windowstart AS STRING), n FROM logins_per_minute \
             ORDER BY user_id;",
        |got| got.len() == 2 && got[0].ends_with("|2"),
    )
    .await;
    assert_eq!(
        got,
        ["ann|2026-01-01T00:00:00|2", "cy|2026-01-01T00:01:00|1"]
    );
    refused(
        &engine,
        &[
            (
                "CREATE STREAM l2 (at STRING) WITH (KAFKA_TOPIC='logins', VALUE_FORMAT='JSON', \
             TIMESTAMP='at');",
                "add TIMESTAMP_FORMAT",
            ),
            (
                "CREATE STREAM l2 (at STRING) WITH (KAFKA_TOPIC='logins', VALUE_FORMAT='JSON', \
             TIMESTAMP_FORMAT='yyyy');",
                "add TIMESTAMP='column'",
            ),
            (
                "CREATE STREAM l2 (at BIGINT) WITH (KAFKA_TOPIC='logins', VALUE_FORMAT='JSON', \
             TIMESTAMP='at', TIMESTAMP_FORMAT='yyyy');",
                "is not a STRING",
            ),
            (
                "CREATE STREAM l2 (at STRING) WITH (KAFKA_TOPIC='logins', VALUE_FORMAT='JSON', \
             TIMESTAMP='at', TIMESTAMP_FORMAT='yyyy-QQ');",
                "pattern letter 'Q'",
            ),
        ],
    )
    .await;
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
}

/// A query over a stream's history reads its topic in place, and its predicates on
/// `rowtime`, `rowoffset` and `rowpartition` narrow the scan: whatever they are, the rows are
/// those of the whole history filtered afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_queries_with_pseudo_column_predicates_agree_with_a_full_scan() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, engine) = open(dir.path()).await;
    ok(
        &engine,
        "CREATE STREAM ev (k STRING KEY, n BIGINT) WITH (KAFKA_TOPIC='ev', VALUE_FORMAT='JSON', \
         PARTITIONS=2);",
    )
    .await;
    let values: Vec<String> = (0..200)
        .map(|i| format!("({}, 'k{}', {i})", i * 1000, i % 10))
        .collect();
    ok(
        &engine,
        &format!(
            "INSERT INTO ev (ROWTIME, k, n) VALUES {};",
            values.join(", ")
        ),
    )
    .await;
    // (partition, offset, time, n) of every record, read without predicates.
    let all: Vec<(i64, i64, i64, i64)> = rows(
        &engine,
        "SELECT rowpartition, rowoffset, CAST(rowtime AS BIGINT), n FROM ev;",
    )
    .await
    .iter()
    .map(|r| {
        let v: Vec<i64> = r.split('|').map(|x| x.parse().unwrap()).collect();
        (v[0], v[1], v[2], v[3])
    })
    .collect();
    assert_eq!(all.len(), 200);
    assert!(all.iter().any(|r| r.0 == 1) && all.iter().any(|r| r.0 == 0));
    type Pred = fn(&(i64, i64, i64, i64)) -> bool;
    let cases: &[(&str, Pred)] = &[
        ("rowtime >= '1970-01-01T00:02:30'", |r| r.2 >= 150_000),
        (
            "rowtime > '1970-01-01T00:02:30' AND rowtime < '1970-01-01T00:02:40'",
            |r| r.2 > 150_000 && r.2 < 160_000,
        ),
        ("rowpartition = 1 AND rowoffset BETWEEN 5 AND 9", |r| {
            r.0 == 1 && (5..=9).contains(&r.1)
        }),
        ("rowpartition IN (0) AND rowoffset < 3", |r| {
            r.0 == 0 && r.1 < 3
        }),
        ("rowoffset > 40 AND rowtime >= '1970-01-01T00:01:40'", |r| {
            r.1 > 40 && r.2 >= 100_000
        }),
        ("rowoffset = 7", |r| r.1 == 7),
        ("rowtime > '1970-01-01T00:03:19'", |r| r.2 > 199_000),
        ("n % 7 = 0 OR rowoffset < 2", |r| r.3 % 7 == 0 || r.1 < 2),
    ];
    for (predicate, holds) in cases {
        let expected: Vec<&(i64, i64, i64, i64)> = all.iter().filter(|r| holds(r)).collect();
        let sum: i64 = expected.iter().map(|r| r.3).sum();
        let got = rows(
            &engine,
            &format!("SELECT COUNT(*), COALESCE(SUM(n), 0) FROM ev WHERE {predicate};"),
        )
        .await;
        assert_eq!(got, [format!("{}|{sum}", expected.len())], "{predicate}");
    }
    // Every batch feature works on the scan: ORDER BY, LIMIT, window functions.
    assert_eq!(
        rows(
            &engine,
            "SELECT n, ROW_NUMBER() OVER (PARTITION BY k ORDER BY n DESC) AS r FROM ev \
             WHERE k = 'k3' ORDER BY n DESC LIMIT 2;"
        )
        .await,
        ["193|1", "183|2"]
    );
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_top_n_is_a_table_of_each_groups_first_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, engine) = open(dir.path()).await;
    ok(
        &engine,
        "CREATE STREAM bids (auction STRING KEY, bidder STRING, price BIGINT) \
         WITH (KAFKA_TOPIC='bids', VALUE_FORMAT='JSON', PARTITIONS=2);",
    )
    .await;
    ok(&engine, "SET 'auto.offset.reset' = 'earliest';").await;
    ok(
        &engine,
        "INSERT INTO bids VALUES ('a1', 'ann', 10), ('a1', 'bob', 30), ('a2', 'cy', 5), \
         ('a1', 'dee', 20), ('a1', 'eve', 25), ('a2', 'fay', 7);",
    )
    .await;
    let created = ok(
        &engine,
        "CREATE TABLE top_bids AS SELECT auction, rn, bidder, price FROM \
           (SELECT auction, bidder, price, \
                   ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC) AS rn \
            FROM bids) \
         WHERE rn <= 2 EMIT CHANGES;",
    )
    .await;
    assert!(created.contains("CTAS_TOP_BIDS_"), "{created}");
    let described = rows(&engine, "DESCRIBE top_bids;").await;
    assert_eq!(
        described,
        [
            "rowtime|TIMESTAMP (record time)",
            "auction|STRING (primary key)",
            "rn|BIGINT UNSIGNED (primary key)",
            "bidder|STRING",
            "price|BIGINT"
        ]
    );
    // Each auction's two highest bids, from its store, as the ranks settled.
    let want = ["a1|1|bob|30", "a1|2|eve|25", "a2|1|fay|7", "a2|2|cy|5"];
    let got = wait_for(
        &engine,
        "SELECT auction, rn, bidder, price FROM top_bids ORDER BY auction, rn;",
        |got| got == want,
    )
    .await;
    assert_eq!(got, want);
    // A higher bid moves the others down a rank.
    ok(&engine, "INSERT INTO bids VALUES ('a2', 'gus', 9);").await;
    let want = ["a1|1|bob|30", "a1|2|eve|25", "a2|1|gus|9", "a2|2|fay|7"];
    let got = wait_for(
        &engine,
        "SELECT auction, rn, bidder, price FROM top_bids ORDER BY auction, rn;",
        |got| got == want,
    )
    .await;
    assert_eq!(got, want);
    refused(
        &engine,
        &[
            (
                "CREATE STREAM top_stream AS SELECT * FROM (SELECT auction, price, ROW_NUMBER() \
                 OVER (PARTITION BY auction ORDER BY price) AS rn FROM bids) WHERE rn = 1 \
                 EMIT CHANGES;",
                "an aggregation (GROUP BY) or a top-N gives a table",
            ),
            (
                "CREATE TABLE top_no_rank AS SELECT auction, price FROM (SELECT auction, price, \
                 ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price) AS rn FROM bids) \
                 WHERE rn = 1 EMIT CHANGES;",
                "'rn' is not selected",
            ),
        ],
    )
    .await;
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
}
