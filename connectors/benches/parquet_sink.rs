//! The Parquet sink's throughput and memory, as ratios to a baseline measured in the same run.
//!
//! - Throughput: N records of about 1 KiB of JSON, decoded into typed columns and written as
//!   Parquet (snappy) to the local disk. The baseline does the same work directly: arrow-json's
//!   decoder over the values, then arrow-rs's `ArrowWriter` into one file. Quiver's run reads
//!   the records from a topic of the in-process broker through a running connector until every
//!   file is complete and its offsets committed.
//! - Memory: a connector with 100 open files (100 partitions, each with records below
//!   `flush.size`), peak RSS over the process's RSS before it started.
//!
//! Run: `cargo bench --workspace --bench parquet_sink [-- RECORDS]` (default 200,000).

#![allow(clippy::unwrap_used)] // A benchmark: a failure should stop it loudly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use quiver_broker::{Broker, BrokerConfig, NewTopic, ProducerInfo, Record, records_to_batch};
use quiver_connectors::{ConnectorConfig, SinkConnector, Status};
use quiver_engine::checkpoint::Cluster;

const SCHEMA: &str = "id BIGINT NOT NULL, user STRING, page STRING, ts TIMESTAMP, score DOUBLE, \
                      agent STRING, body STRING";

fn arrow_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("user", DataType::Utf8, true),
        Field::new("page", DataType::Utf8, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("score", DataType::Float64, true),
        Field::new("agent", DataType::Utf8, true),
        Field::new("body", DataType::Utf8, true),
    ]))
}

/// Record `i`: about 1 KiB of JSON.
fn value(i: u64) -> Vec<u8> {
    let body: String = (0..14)
        .map(|w| {
            format!(
                "word{:x}{} ",
                i.wrapping_mul(2654435761).rotate_left(w) % 9973,
                w
            )
        })
        .collect::<String>()
        .repeat(5);
    format!(
        r#"{{"id": {i}, "user": "user-{}", "page": "/products/{}/reviews", "ts": {}, "score": {}.{}, "agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36", "body": "{}"}}"#,
        i % 5000,
        i % 977,
        1_796_000_000_000u64 + i,
        i % 100,
        i % 10,
        &body[..body.len().min(760)]
    )
    .into_bytes()
}

/// Rounds of each, alternating, so that the machine's slow spells fall on both sides.
const ROUNDS: usize = 5;

fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn broker(dir: &std::path::Path) -> Broker {
    Broker::open(BrokerConfig {
        data_dir: dir.to_owned(),
        ..BrokerConfig::default()
    })
    .await
    .unwrap()
}

async fn produce(b: &Broker, topic: &str, n: u64, partitions: i32) {
    let mut batch = Vec::with_capacity(1000);
    for i in 0..n {
        batch.push(Record::new(
            1_796_000_000_000 + i as i64,
            None,
            Some(&value(i)),
        ));
        if batch.len() == 1000 || i + 1 == n {
            let p = ((i / 1000) % partitions as u64) as i32;
            b.append(topic, p, &records_to_batch(&batch), ProducerInfo::NONE)
                .await
                .unwrap();
            batch.clear();
        }
    }
}

/// Runs a connector named `name` (its own group, so it reads everything) over `topic` until it
/// has written `n` records, then stops it (closing and committing every file); returns the time
/// taken.
async fn sink(b: &Broker, name: &str, topic: &str, lake: &std::path::Path, n: u64) -> Duration {
    let config = ConnectorConfig::from_properties(
        &format!(
            "name={name}\nconnector.class=ParquetSink\ntopics={topic}\n\
             store.url=file://{}\nvalue.format=json\nvalue.schema={SCHEMA}\nkey.format=none\n\
             flush.size=1000000\n",
            lake.display()
        ),
        "bench",
    )
    .unwrap();
    let connector = Arc::new(SinkConnector::from_config(config).unwrap());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let status = Status::default();
    let started = Instant::now();
    let task = tokio::spawn(quiver_connectors::run(
        connector,
        Cluster::Local(b.clone()),
        stopped,
        status.clone(),
    ));
    while status.progress().records < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.send_replace(true);
    task.await.unwrap().unwrap();
    started.elapsed()
}

fn baseline(n: u64, path: &std::path::Path) -> Duration {
    let values: Vec<Vec<u8>> = (0..n).map(value).collect();
    let schema = arrow_schema();
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let started = Instant::now();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).unwrap();
    let mut decoder = arrow::json::ReaderBuilder::new(schema)
        .with_batch_size(8192)
        .build_decoder()
        .unwrap();
    for v in &values {
        decoder.decode(v).unwrap();
        if decoder.len() >= 8192 {
            writer.write(&decoder.flush().unwrap().unwrap()).unwrap();
        }
    }
    if let Some(b) = decoder.flush().unwrap() {
        writer.write(&b).unwrap();
    }
    writer.close().unwrap();
    started.elapsed()
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let b = broker(&dir.path().join("data")).await;

        // Memory first, so that the peak is this phase's: 100 partitions, 200 records each,
        // all in open files.
        b.create_topic(NewTopic::new("wide", 100)).await.unwrap();
        for p in 0..100 {
            let batch: Vec<Record> = (0..200)
                .map(|i| Record::new(1_796_000_000_000 + i, None, Some(&value(i as u64))))
                .collect();
            b.append("wide", p, &records_to_batch(&batch), ProducerInfo::NONE)
                .await
                .unwrap();
        }
        let before = rss_kib("VmRSS:");
        let wide = sink(&b, "wide", "wide", &dir.path().join("wide"), 20_000).await;
        let peak = rss_kib("VmHWM:");
        println!(
            "100 open files (100 partitions x 200 records of 1 KiB): peak RSS {:.1} MiB over {:.1} MiB before ({:.2?})",
            peak.saturating_sub(before) as f64 / 1024.0,
            before as f64 / 1024.0,
            wide
        );

        b.create_topic(NewTopic::new("events", 4)).await.unwrap();
        produce(&b, "events", n, 4).await;
        let bytes: u64 = (0..1000).map(|i| value(i).len() as u64).sum::<u64>() * n / 1000;
        let mut direct = vec![];
        let mut ours = vec![];
        for round in 0..ROUNDS {
            direct.push(baseline(n, &dir.path().join(format!("baseline-{round}.parquet"))));
            let lake = dir.path().join(format!("lake-{round}"));
            ours.push(sink(&b, &format!("bench-{round}"), "events", &lake, n).await);
        }
        direct.sort();
        ours.sort();
        let (d, o) = (direct[ROUNDS / 2], ours[ROUNDS / 2]);
        let rate = |t: Duration| n as f64 / t.as_secs_f64();
        println!(
            "{n} records, {:.0} B each: arrow-json + ArrowWriter {:.0} records/s ({:.1} MiB/s); \
             Quiver topic -> Parquet sink {:.0} records/s ({:.1} MiB/s); ratio {:.2} (medians of {ROUNDS}, alternating)",
            bytes as f64 / n as f64,
            rate(d),
            bytes as f64 / d.as_secs_f64() / (1 << 20) as f64,
            rate(o),
            bytes as f64 / o.as_secs_f64() / (1 << 20) as f64,
            d.as_secs_f64() / o.as_secs_f64()
        );
        b.shutdown().await.unwrap();
    });
}
