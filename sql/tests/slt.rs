//! Quiver SQL in DataFusion-style sqllogictest files (`tests/slt/*.slt`): each file runs against
//! a fresh broker and engine; `statement ok|error`, and `query` with the rows a statement gives
//! (history, pull and SHOW/DESCRIBE results, and push queries ended by their `LIMIT`).
//!
//! Run: `cargo test -p quiver-sql --test slt`.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::path::PathBuf;

use quiver_broker::{Broker, BrokerConfig};
use quiver_engine::arrow::array::RecordBatch;
use quiver_engine::arrow::datatypes::DataType;
use quiver_engine::arrow::util::display::{ArrayFormatter, FormatOptions};
use quiver_sql::{Output, SqlEngine, SqlError};
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};

struct Db {
    _dir: tempfile::TempDir,
    broker: Broker,
    engine: SqlEngine,
}

impl Db {
    async fn open() -> Result<Db, SqlError> {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(BrokerConfig {
            data_dir: dir.path().to_owned(),
            ..BrokerConfig::default()
        })
        .await
        .unwrap();
        let engine = SqlEngine::open(&broker, dir.path()).await?;
        Ok(Db {
            _dir: dir,
            broker,
            engine,
        })
    }
}

fn column_type(t: &DataType) -> DefaultColumnType {
    if t.is_integer() {
        DefaultColumnType::Integer
    } else if t.is_floating() || matches!(t, DataType::Decimal128(..)) {
        DefaultColumnType::FloatingPoint
    } else {
        DefaultColumnType::Text
    }
}

fn rows(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for b in batches {
        let formatters: Vec<_> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for i in 0..b.num_rows() {
            out.push(formatters.iter().map(|f| f.value(i).to_string()).collect());
        }
    }
    out
}

#[async_trait::async_trait]
impl AsyncDB for Db {
    type Error = SqlError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SqlError> {
        let out = self.engine.execute(sql).await?.pop();
        let (schema, batches) = match out {
            Some(Output::Rows { schema, batches }) => (schema, batches),
            Some(Output::Push(mut push)) => {
                // A push query in a file ends at its LIMIT.
                let schema = push.schema.clone();
                let mut batches = Vec::new();
                while let Some(b) = push.next().await {
                    batches.push(b?);
                }
                (schema, batches)
            }
            Some(Output::Message(_)) | None => return Ok(DBOutput::StatementComplete(0)),
        };
        Ok(DBOutput::Rows {
            types: schema
                .fields()
                .iter()
                .map(|f| column_type(f.data_type()))
                .collect(),
            rows: rows(&batches),
        })
    }

    async fn shutdown(&mut self) {
        self.engine.shutdown().await.unwrap();
        self.broker.shutdown().await.unwrap();
    }

    fn engine_name(&self) -> &str {
        "quiver"
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await;
    }
}

fn main() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/slt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", dir.display());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut failed = 0;
    for f in &files {
        let result = runtime.block_on(async {
            let mut runner = sqllogictest::Runner::new(Db::open);
            runner
                .with_column_validator(sqllogictest::strict_column_validator::<DefaultColumnType>);
            let result = runner.run_file_async(f).await;
            runner.shutdown_async().await;
            result
        });
        match result {
            Ok(()) => println!("ok   {}", f.display()),
            Err(e) => {
                failed += 1;
                eprintln!("FAIL {}\n{e}", f.display());
            }
        }
    }
    assert_eq!(failed, 0, "{failed} of {} .slt files failed", files.len());
}
