//! The source connectors' throughput, as ratios to a baseline measured in the same run.
//!
//! - File source: a file of N JSON lines (about 200 B each) into a 4-partition topic of the
//!   in-process broker, exactly once (records and positions in one transaction a second), with
//!   `format=lines` (each line as it is) and `format=json` (each line parsed and checked). The
//!   baseline does the same reading and appending without a connector or transactions: the
//!   file's lines as records, appended in batches of 2,000 round-robin over the partitions.
//! - Data generator: N records of five generated fields into a topic, against appending the same
//!   number of records made beforehand (so the ratio is what generating costs).
//!
//! Run: `cargo bench -p quiver-connectors --bench sources [-- RECORDS]` (default 1,000,000).

#![allow(clippy::unwrap_used)] // A benchmark: a failure should stop it loudly.

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quiver_broker::{Broker, BrokerConfig, NewTopic, ProducerInfo, Record, records_to_batch};
use quiver_connectors::{Connector, ConnectorConfig, Status};
use quiver_engine::checkpoint::Cluster;

fn line(i: u64) -> String {
    format!(
        r#"{{"id": {i}, "user": "user-{}", "page": "/products/{}/reviews", "ts": {}, "score": {}.{}, "agent": "Mozilla/5.0 (X11; Linux x86_64)"}}"#,
        i % 5000,
        i % 977,
        1_796_000_000_000u64 + i,
        i % 100,
        i % 10
    )
}

async fn broker(dir: &std::path::Path) -> Broker {
    Broker::open(BrokerConfig {
        data_dir: dir.to_owned(),
        ..BrokerConfig::default()
    })
    .await
    .unwrap()
}

/// Appends `records` round-robin over `partitions` in batches of 2,000.
async fn append_all(b: &Broker, topic: &str, records: impl Iterator<Item = Record>) -> u64 {
    let mut batch = Vec::with_capacity(2000);
    let (mut p, mut n) = (0, 0);
    let partitions = b.partition_count(topic).unwrap();
    for r in records {
        batch.push(r);
        if batch.len() == 2000 {
            b.append(topic, p, &records_to_batch(&batch), ProducerInfo::NONE)
                .await
                .unwrap();
            n += batch.len() as u64;
            batch.clear();
            p = (p + 1) % partitions;
        }
    }
    if !batch.is_empty() {
        b.append(topic, p, &records_to_batch(&batch), ProducerInfo::NONE)
            .await
            .unwrap();
        n += batch.len() as u64;
    }
    n
}

/// The baseline: the file's lines as records, appended directly.
async fn direct_file(b: &Broker, topic: &str, file: &std::path::Path) -> Duration {
    b.create_topic(NewTopic::new(topic, 4)).await.unwrap();
    let started = Instant::now();
    let reader = std::io::BufReader::new(std::fs::File::open(file).unwrap());
    let now = quiver_broker::now_ms();
    append_all(
        b,
        topic,
        reader
            .lines()
            .map(|l| Record::new(now, None, Some(l.unwrap().as_bytes()))),
    )
    .await;
    b.flush().await.unwrap();
    started.elapsed()
}

/// Runs the connector of `config` until it finishes; the time taken.
async fn run(b: &Broker, config: &str) -> (Duration, u64) {
    let config = ConnectorConfig::from_properties(config, "bench").unwrap();
    let connector = Arc::new(Connector::from_config(config).unwrap());
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let status = Status::default();
    let started = Instant::now();
    connector
        .run(Cluster::Local(b.clone()), stopped, status.clone())
        .await
        .unwrap();
    (started.elapsed(), status.progress().records)
}

fn rate(n: u64, d: Duration) -> String {
    format!("{:.0}k records/s", n as f64 / d.as_secs_f64() / 1000.0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let b = broker(&dir.path().join("data")).await;
        let file = dir.path().join("events.jsonl");
        {
            let mut out = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
            for i in 0..n {
                writeln!(out, "{}", line(i)).unwrap();
            }
        }
        let bytes = std::fs::metadata(&file).unwrap().len();
        println!(
            "file source: {n} JSON lines, {:.0} MiB, into 4 partitions (medians of 3)",
            bytes as f64 / (1 << 20) as f64
        );
        let (mut direct, mut lines, mut json) = (vec![], vec![], vec![]);
        for round in 0..3 {
            direct.push(direct_file(&b, &format!("direct-{round}"), &file).await);
            for (format, out) in [("lines", &mut lines), ("json", &mut json)] {
                let (d, written) = run(
                    &b,
                    &format!(
                        "name=file-{format}-{round}\nconnector.class=FileSource\nfile={}\n\
                         topic=file-{format}-{round}\nformat={format}\nbatch.size=10000\n\
                         topic.creation.default.partitions=4\n",
                        file.display()
                    ),
                )
                .await;
                assert_eq!(written, n);
                out.push(d);
            }
        }
        let (direct, lines, json) = (median(direct), median(lines), median(json));
        println!(
            "  direct appends:     {:>8.2?}  {}",
            direct,
            rate(n, direct)
        );
        println!(
            "  FileSource lines:   {:>8.2?}  {}  ({:.2} of direct)",
            lines,
            rate(n, lines),
            direct.as_secs_f64() / lines.as_secs_f64()
        );
        println!(
            "  FileSource json:    {:>8.2?}  {}  ({:.2} of direct)",
            json,
            rate(n, json),
            direct.as_secs_f64() / json.as_secs_f64()
        );

        println!("data generator: {n} records of 5 fields into 4 partitions (medians of 3)");
        let fields = "id:sequence(0); user:choice('ann','bob','cy','dee'); \
                      amount:double(1,500); code:string(8); ts:timestamp";
        let (mut made, mut generated) = (vec![], vec![]);
        for round in 0..3 {
            // The same records, made beforehand: what appending alone costs.
            let topic = format!("made-{round}");
            b.create_topic(NewTopic::new(&topic, 4)).await.unwrap();
            let records: Vec<Record> = (0..n)
                .map(|i| {
                    let v = format!(
                        r#"{{"id":{i},"user":"bob","amount":{}.25,"code":"Ab3dE6gH","ts":{}}}"#,
                        i % 500,
                        1_796_000_000_000u64 + i
                    );
                    Record::new(0, None, Some(v.as_bytes()))
                })
                .collect();
            let started = Instant::now();
            append_all(&b, &topic, records.into_iter()).await;
            b.flush().await.unwrap();
            made.push(started.elapsed());
            let (d, written) = run(
                &b,
                &format!(
                    "name=gen-{round}\nconnector.class=DataGen\nkafka.topic=gen-{round}\n\
                     fields={fields}\niterations={n}\ntopic.creation.default.partitions=4\n"
                ),
            )
            .await;
            assert_eq!(written, n);
            generated.push(d);
        }
        let (made, generated) = (median(made), median(generated));
        println!(
            "  appends of made records: {:>8.2?}  {}",
            made,
            rate(n, made)
        );
        println!(
            "  DataGen:                 {:>8.2?}  {}  ({:.2} of appends alone)",
            generated,
            rate(n, generated),
            made.as_secs_f64() / generated.as_secs_f64()
        );
        b.shutdown().await.unwrap();
    });
}
