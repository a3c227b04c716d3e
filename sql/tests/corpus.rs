//! The bad-statement corpus (`tests/corpus/`), in process: every statement is refused with the
//! expected message and position, and none of them changes the catalog.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

#[path = "../../tests/common/corpus.rs"]
mod corpus;

use quiver_broker::{Broker, BrokerConfig};
use quiver_sql::{Output, SqlEngine};

async fn count(engine: &SqlEngine, sql: &str) -> usize {
    match engine.execute(sql).await.unwrap().pop() {
        Some(Output::Rows { batches, .. }) => batches.iter().map(|b| b.num_rows()).sum(),
        other => panic!("{sql}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_statement_of_the_corpus_gets_its_error_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(BrokerConfig {
        data_dir: dir.path().to_owned(),
        ..BrokerConfig::default()
    })
    .await
    .unwrap();
    let engine = SqlEngine::open(&broker, dir.path()).await.unwrap();
    engine.execute(&corpus::setup()).await.unwrap();
    let cases = corpus::cases();
    assert!(cases.len() >= 100, "the corpus has {} cases", cases.len());
    let mut got = Vec::new();
    for case in &cases {
        got.push(match engine.execute(case).await {
            Ok(out) => format!("ACCEPTED {out:?}"),
            Err(e) => corpus::line(
                &format!("{:?}", e.kind),
                e.position.map(|p| (p.line, p.column)),
                &e.message,
            ),
        });
    }
    if std::env::var_os("QUIVER_BLESS").is_some() {
        corpus::bless(&cases, &got);
    }
    let expected = corpus::expected();
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let want = expected.get(i).map(String::as_str).unwrap_or("(none)");
        if got[i] != want {
            failures.push(format!("{case}\n  got  {}\n  want {want}", got[i]));
        }
        if got[i].starts_with("ACCEPTED") || got[i].split(' ').nth(1) == Some("-") {
            failures.push(format!("{case}\n  must fail with a position: {}", got[i]));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        expected.len(),
        cases.len(),
        "the expected file has a line per case"
    );
    // The refused statements created, changed and started nothing.
    assert_eq!(count(&engine, "SHOW STREAMS;").await, 2);
    assert_eq!(count(&engine, "SHOW TABLES;").await, 1);
    assert_eq!(count(&engine, "SHOW QUERIES;").await, 0);
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
}
