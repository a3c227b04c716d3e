//! Quiver SQL, in-process: a query over a stream's history, and pull queries by key.
//!
//! ```text
//! scripts/bench-sql [RECORDS]     # or: cargo bench -p quiver-sql --bench sql -- RECORDS
//! ```
//!
//! 1. **History**: RECORDS JSON orders (`{"region", "customer", "amount"}`, 3 partitions) in a
//!    topic of an in-process broker; `SELECT region, COUNT(*), SUM(amount) … GROUP BY region`
//!    over the stream, read in place from the log. Baselines in the same run, on the same
//!    records: DataFusion alone reading them from a newline-delimited JSON file (the same
//!    decoding work, no log) and from a Parquet file (columnar, no decoding). The Parquet file
//!    is left at `$SQL_BENCH_PARQUET` when set, and `scripts/bench-sql` has DuckDB run the same
//!    query on it.
//! 2. **Pull queries**: `CREATE TABLE … AS SELECT customer, COUNT(*) … GROUP BY customer` over the same
//!    stream (1,000,000 users when RECORDS ≥ 1,000,000), then point queries
//!    `SELECT … FROM totals WHERE customer = '…'` through `SqlEngine::execute` (parse, plan, store
//!    lookup): p50, p99, max.
//!
//! Figures print as one line each, `name value unit`, for the script to read.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark: failing loudly is right.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, Float64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::{JsonReadOptions, ParquetReadOptions, SessionContext};
use quiver_broker::{Broker, BrokerConfig, NewTopic, ProducerInfo, Record, records_to_batch};
use quiver_sql::{Output, SqlEngine};

const PARTITIONS: i32 = 3;
const REGIONS: u64 = 20;
const QUERY: &str = "SELECT region, COUNT(*) AS n, SUM(amount) AS total FROM orders \
                     GROUP BY region ORDER BY region";

fn order(i: u64, users: u64) -> (String, String, f64) {
    (
        format!("r{}", i % REGIONS),
        format!("u{}", (i.wrapping_mul(2_654_435_761)) % users),
        (i % 1000) as f64 / 10.0,
    )
}

fn rows(out: Vec<Output>) -> Vec<RecordBatch> {
    match out.into_iter().last() {
        Some(Output::Rows { batches, .. }) => batches,
        other => panic!("not rows: {other:?}"),
    }
}

fn count(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

/// Runs `f` `rounds` times; the best time (the least disturbed by the machine).
async fn best<F, Fut>(rounds: usize, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut best = Duration::MAX;
    for _ in 0..rounds {
        let t = Instant::now();
        f().await;
        best = best.min(t.elapsed());
    }
    best
}

fn report(name: &str, value: f64, unit: &str) {
    println!("{name} {value:.3} {unit}");
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let records: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let users = records.clamp(1, 1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(BrokerConfig {
        data_dir: dir.path().join("data"),
        ..BrokerConfig::default()
    })
    .await
    .unwrap();
    broker
        .create_topic(NewTopic::new("orders", PARTITIONS))
        .await
        .unwrap();

    // The same records into the topic, an NDJSON file and a Parquet file.
    let json_path = dir.path().join("orders.json");
    let parquet_path = std::env::var_os("SQL_BENCH_PARQUET")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.path().join("orders.parquet"));
    let schema = Arc::new(Schema::new(vec![
        Field::new("region", DataType::Utf8, false),
        Field::new("customer", DataType::Utf8, false),
        Field::new("amount", DataType::Float64, false),
    ]));
    let mut json = std::io::BufWriter::new(std::fs::File::create(&json_path).unwrap());
    let mut parquet = ArrowWriter::try_new(
        std::fs::File::create(&parquet_path).unwrap(),
        schema.clone(),
        None,
    )
    .unwrap();
    let chunk = 10_000u64;
    let t = Instant::now();
    let mut i = 0u64;
    while i < records {
        let n = chunk.min(records - i);
        let mut per_partition: Vec<Vec<Record>> = vec![Vec::new(); PARTITIONS as usize];
        let (mut regions, mut us, mut amounts) = (Vec::new(), Vec::new(), Vec::new());
        for k in i..i + n {
            let (region, user, amount) = order(k, users);
            let value = format!(r#"{{"region":"{region}","customer":"{user}","amount":{amount}}}"#);
            writeln!(json, "{value}").unwrap();
            per_partition[(k % PARTITIONS as u64) as usize].push(Record::new(
                1_767_225_600_000 + k as i64,
                None,
                Some(value.as_bytes()),
            ));
            regions.push(region);
            us.push(user);
            amounts.push(amount);
        }
        for (p, batch) in per_partition.iter().enumerate() {
            broker
                .append(
                    "orders",
                    p as i32,
                    &records_to_batch(batch),
                    ProducerInfo::NONE,
                )
                .await
                .unwrap();
        }
        parquet
            .write(
                &RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        Arc::new(StringArray::from(regions)),
                        Arc::new(StringArray::from(us)),
                        Arc::new(Float64Array::from(amounts)),
                    ],
                )
                .unwrap(),
            )
            .unwrap();
        i += n;
    }
    json.flush().unwrap();
    drop(json);
    parquet.close().unwrap();
    eprintln!(
        "wrote {records} records to the topic, {} and {} in {:.1?}",
        json_path.display(),
        parquet_path.display(),
        t.elapsed()
    );

    let engine = SqlEngine::open(&broker, &dir.path().join("data"))
        .await
        .unwrap();
    engine
        .execute(
            "CREATE STREAM orders (region STRING, customer STRING, amount DOUBLE) \
             WITH (KAFKA_TOPIC='orders', VALUE_FORMAT='JSON');",
        )
        .await
        .unwrap();

    // 1. History.
    let sql = format!("{QUERY};");
    let ours = best(3, || async {
        let out = rows(engine.execute(&sql).await.unwrap());
        assert_eq!(count(&out), REGIONS.min(records) as usize);
    })
    .await;
    let ctx = SessionContext::new();
    ctx.register_json(
        "orders",
        json_path.to_str().unwrap(),
        JsonReadOptions::default().schema(&schema),
    )
    .await
    .unwrap();
    let on_json = best(3, || async {
        let out = ctx.sql(QUERY).await.unwrap().collect().await.unwrap();
        assert_eq!(count(&out), REGIONS.min(records) as usize);
    })
    .await;
    let ctx = SessionContext::new();
    ctx.register_parquet(
        "orders",
        parquet_path.to_str().unwrap(),
        ParquetReadOptions::default(),
    )
    .await
    .unwrap();
    let on_parquet = best(3, || async {
        let out = ctx.sql(QUERY).await.unwrap().collect().await.unwrap();
        assert_eq!(count(&out), REGIONS.min(records) as usize);
    })
    .await;
    let per_s = |d: Duration| records as f64 / d.as_secs_f64();
    report("history_quiver", per_s(ours), "records/s");
    report("history_datafusion_ndjson", per_s(on_json), "records/s");
    report("history_datafusion_parquet", per_s(on_parquet), "records/s");
    report(
        "history_ratio_to_datafusion_ndjson",
        on_json.as_secs_f64() / ours.as_secs_f64(),
        "x",
    );

    // 2. Pull queries on a maintained table.
    engine
        .execute(
            "SET 'auto.offset.reset' = 'earliest';
             CREATE TABLE totals AS SELECT customer, COUNT(*) AS n, SUM(amount) AS total \
             FROM orders GROUP BY customer EMIT CHANGES;",
        )
        .await
        .unwrap();
    // Lookups once the query has counted every record (a quiet table), so that the figure is
    // the pull path's, not the CPU the ingesting query takes on two cores.
    let t = Instant::now();
    loop {
        let out = rows(
            engine
                .execute("SELECT COUNT(*), SUM(n) FROM totals;")
                .await
                .unwrap(),
        );
        let value = |i: usize| {
            out[0]
                .column(i)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::Int64Array>()
                .filter(|a| a.is_valid(0))
                .map_or(0, |a| a.value(0))
        };
        let (keys, counted) = (value(0), value(1));
        if keys as u64 >= users && counted as u64 >= records {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(900),
            "the table has {keys} of {users} keys, {counted} of {records} records after 15 \
             minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "the table holds {users} keys, all {records} records counted, after {:.1?}",
        t.elapsed()
    );
    let lookups = 10_000u64;
    let mut times = Vec::with_capacity(lookups as usize);
    for k in 0..lookups {
        let user = format!("u{}", k.wrapping_mul(7_919) % users);
        let sql = format!("SELECT customer, n, total FROM totals WHERE customer = '{user}';");
        let t = Instant::now();
        let out = rows(engine.execute(&sql).await.unwrap());
        times.push(t.elapsed());
        assert_eq!(count(&out), 1, "{sql}");
    }
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    report("pull_keys", users as f64, "keys");
    report("pull_p50", at(0.50).as_secs_f64() * 1e6, "us");
    report("pull_p99", at(0.99).as_secs_f64() * 1e6, "us");
    report(
        "pull_max",
        times.last().copied().unwrap_or_default().as_secs_f64() * 1e6,
        "us",
    );
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
}
