//! What the SQL test files share: an engine on an in-process broker, rows as text, and waiting
//! for a persistent query's results.

#![allow(dead_code)] // Each test file uses some of these.

use std::time::Duration;

use quiver_broker::{Broker, BrokerConfig};
use quiver_engine::arrow::array::RecordBatch;
use quiver_engine::arrow::util::display::{ArrayFormatter, FormatOptions};
use quiver_sql::{Output, SqlEngine};

/// A broker and a SQL engine on the data directory `dir`.
pub async fn open(dir: &std::path::Path) -> (Broker, SqlEngine) {
    let broker = Broker::open(BrokerConfig {
        data_dir: dir.to_owned(),
        ..BrokerConfig::default()
    })
    .await
    .unwrap();
    let engine = SqlEngine::open(&broker, dir).await.unwrap();
    (broker, engine)
}

/// Rows as lines of `a|b|c` (nulls as `null`).
pub fn lines(batches: &[RecordBatch]) -> Vec<String> {
    let options = FormatOptions::default().with_null("null");
    let mut out = Vec::new();
    for b in batches {
        let f: Vec<_> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for i in 0..b.num_rows() {
            out.push(
                f.iter()
                    .map(|f| f.value(i).to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            );
        }
    }
    out
}

/// The rows of the last statement of `sql`, which must be a query.
pub async fn rows(engine: &SqlEngine, sql: &str) -> Vec<String> {
    match engine.execute(sql).await {
        Ok(mut out) => match out.pop() {
            Some(Output::Rows { batches, .. }) => lines(&batches),
            other => panic!("{sql}: not rows: {other:?}"),
        },
        Err(e) => panic!("{sql}: {e}"),
    }
}

/// Runs `sql`, which must succeed; the message of its last statement.
pub async fn ok(engine: &SqlEngine, sql: &str) -> String {
    let mut out = engine
        .execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    match out.pop() {
        Some(Output::Message(m)) => m,
        other => panic!("{sql}: not a message: {other:?}"),
    }
}

/// Polls the query `sql` (about 20 s at most) until its rows satisfy `done`; the last rows
/// (for the caller to assert on).
pub async fn wait_for(
    engine: &SqlEngine,
    sql: &str,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let mut got = Vec::new();
    for _ in 0..400 {
        got = rows(engine, sql).await;
        if done(&got) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    got
}

/// Polls the query `sql` until it returns at least `n` rows (a persistent query writes them).
pub async fn wait_rows(engine: &SqlEngine, sql: &str, n: usize) -> Vec<String> {
    let got = wait_for(engine, sql, |rows| rows.len() >= n).await;
    assert!(got.len() >= n, "{sql}: {n} rows never came; last {got:?}");
    got
}

/// Each statement of `cases` fails with an error whose message contains its text.
pub async fn refused(engine: &SqlEngine, cases: &[(&str, &str)]) {
    for (sql, message) in cases {
        let e = engine.execute(sql).await.unwrap_err();
        assert!(e.message.contains(message), "{sql}: {e}");
    }
}
