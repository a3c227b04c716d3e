//! Pull queries over the HTTP API of a running `quiver server`, as a client sees them.
//!
//! ```text
//! scripts/bench-sql      # its last part; or: cargo bench --workspace --bench sql_http -- RECORDS
//! ```
//!
//! RECORDS JSON orders (default 1,000,000, over as many customers up to 1,000,000) are written
//! into a data directory; `quiver server` (this checkout's binary, release) is started on it,
//! and over HTTP: `CREATE STREAM orders`, then `CREATE TABLE totals AS SELECT customer,
//! COUNT(*), SUM(amount) … GROUP BY customer`. Once the table has counted every record and
//! its query has checkpointed the final state (two more checkpoints, as `DESCRIBE EXTENDED`
//! counts them), 10,000 point queries `SELECT … FROM totals WHERE customer = '…'` go to `POST
//! /query-stream`, one at a time on one keep-alive connection: p50, p99, max. The baseline in
//! the same run is `GET /healthcheck` on the same connection: the cost of an HTTP round trip
//! with nothing behind it, measured both before any query exists (an idle server) and next to
//! the pull queries (beside the table's running query).
//!
//! Building this bench builds the release `quiver` binary with the same dependency features as
//! the other benches, so it shares their compiled DataFusion (`target/release/quiver`).
//!
//! Figures print as one line each, `name value unit`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark: failing loudly is right.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use quiver::broker::{Broker, BrokerConfig, NewTopic, ProducerInfo, Record, records_to_batch};
use serde_json::{Value, json};

const PARTITIONS: i32 = 3;
const LOOKUPS: u64 = 10_000;

/// Stops the server when the bench ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes the orders straight into the data directory's log (the server is not running yet).
async fn load(data: &std::path::Path, records: u64, users: u64) {
    let broker = Broker::open(BrokerConfig {
        data_dir: data.to_path_buf(),
        ..BrokerConfig::default()
    })
    .await
    .unwrap();
    broker
        .create_topic(NewTopic::new("orders", PARTITIONS))
        .await
        .unwrap();
    let t = Instant::now();
    let chunk = 10_000u64;
    let mut i = 0;
    while i < records {
        let n = chunk.min(records - i);
        let mut per_partition: Vec<Vec<Record>> = vec![Vec::new(); PARTITIONS as usize];
        let values: Vec<String> = (i..i + n)
            .map(|k| {
                let user = k.wrapping_mul(2_654_435_761) % users;
                format!(
                    r#"{{"region":"r{}","customer":"u{user}","amount":{}}}"#,
                    k % 20,
                    (k % 1000) as f64 / 10.0
                )
            })
            .collect();
        for (k, value) in (i..i + n).zip(&values) {
            per_partition[(k % PARTITIONS as u64) as usize].push(Record::new(
                1_767_225_600_000 + k as i64,
                None,
                Some(value.as_bytes()),
            ));
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
        i += n;
    }
    broker.shutdown().await.unwrap();
    eprintln!("wrote {records} orders in {:.1?}", t.elapsed());
}

/// Starts the server on `data`; its SQL API's base URL.
fn start(data: &std::path::Path) -> (Server, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quiver"));
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|n| n.starts_with("QUIVER_")) {
            cmd.env_remove(&name);
        }
    }
    let mut child = cmd
        .env("RUST_LOG", "warn")
        .args(["server", "--data-dir"])
        .arg(data)
        .args([
            "--listeners",
            "PLAINTEXT://127.0.0.1:0",
            "--http-port",
            "0",
            "--http-host",
            "127.0.0.1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    let mut lines = BufReader::new(stdout).lines();
    let ready = loop {
        let line = lines
            .next()
            .expect("the server exited before it was ready")
            .unwrap();
        if line.starts_with("quiver server ready") {
            break line;
        }
    };
    // Keep reading its output so that it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let url = ready
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .trim_end_matches(',')
        .to_owned();
    (server, url)
}

/// POSTs `body` to `path`; the response's text, which must be a success.
async fn post(client: &reqwest::Client, url: &str, path: &str, body: &Value) -> String {
    let response = client
        .post(format!("{url}{path}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "{path}: {status}: {text}");
    text
}

/// The rows (after the header line) of a `/query-stream` answer.
fn rows(text: &str) -> Vec<Value> {
    text.lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The checkpoints the query writing `totals` has completed (`DESCRIBE EXTENDED`).
async fn checkpoints(client: &reqwest::Client, url: &str) -> u64 {
    let text = post(
        client,
        url,
        "/ksql",
        &json!({ "ksql": "DESCRIBE EXTENDED totals;" }),
    )
    .await;
    let answer: Value = serde_json::from_str(&text).unwrap();
    let rows = answer[0]["rows"].as_array().unwrap();
    let row = rows.iter().find(|r| r[0] == "checkpoints");
    row.and_then(|r| r[1].as_str()?.parse().ok())
        .unwrap_or_else(|| panic!("no checkpoints in {text}"))
}

/// `LOOKUPS` round trips of `GET /healthcheck`: an HTTP request with nothing behind it.
async fn round_trips(client: &reqwest::Client, url: &str) -> Vec<Duration> {
    let mut times = Vec::with_capacity(LOOKUPS as usize);
    for _ in 0..LOOKUPS {
        let t = Instant::now();
        let response = client
            .get(format!("{url}/healthcheck"))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
        response.bytes().await.unwrap();
        times.push(t.elapsed());
    }
    times
}

fn quantiles(name: &str, mut times: Vec<Duration>) -> (Duration, Duration) {
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let (p50, p99) = (at(0.50), at(0.99));
    println!("{name}_p50 {:.1} us", us(p50));
    println!("{name}_p99 {:.1} us", us(p99));
    println!(
        "{name}_max {:.1} us",
        us(times.last().copied().unwrap_or_default())
    );
    (p50, p99)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let records: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let users = records.clamp(1, 1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    load(&data, records, users).await;
    let (_server, url) = start(&data);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    // The server with no query at all: what the machine gives an HTTP round trip.
    let idle = round_trips(&client, &url).await;
    post(
        &client,
        &url,
        "/ksql",
        &json!({ "ksql": "CREATE STREAM orders (region STRING, customer STRING, amount DOUBLE) \
                  WITH (KAFKA_TOPIC='orders', VALUE_FORMAT='JSON');
                  SET 'auto.offset.reset' = 'earliest';
                  CREATE TABLE totals AS SELECT customer, COUNT(*) AS n, SUM(amount) AS total \
                  FROM orders GROUP BY customer EMIT CHANGES;" }),
    )
    .await;

    // Lookups once the query has counted every record (a quiet table): the figure is the pull
    // path's, not the CPU the ingesting query takes on two cores.
    let t = Instant::now();
    loop {
        let text = post(
            &client,
            &url,
            "/query-stream",
            &json!({ "sql": "SELECT COUNT(*), SUM(n) FROM totals;" }),
        )
        .await;
        let row = rows(&text);
        let value = |i: usize| row.first().and_then(|r| r[i].as_u64()).unwrap_or(0);
        let (keys, counted) = (value(0), value(1));
        if keys >= users && counted >= records {
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
    // The first checkpoint after the last change copies the whole state (a million groups and
    // rows, a second or so of CPU on this machine); the quiet ones after it name its files
    // again. Lookups start once two more checkpoints have completed (the one under way when
    // the last record was counted, and the one after it, which took the final state), so
    // that the figure is a quiet table's.
    let t = Instant::now();
    let counted_at = checkpoints(&client, &url).await;
    while checkpoints(&client, &url).await < counted_at + 2 {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "the table's query took no two checkpoints in 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("its state is checkpointed, after {:.1?}", t.elapsed());

    // The baseline: an HTTP round trip to the same server with no query behind it.
    let health = round_trips(&client, &url).await;
    let mut pulls = Vec::with_capacity(LOOKUPS as usize);
    for k in 0..LOOKUPS {
        let user = format!("u{}", k.wrapping_mul(7_919) % users);
        let body = json!({
            "sql": format!("SELECT customer, n, total FROM totals WHERE customer = '{user}';")
        });
        let t = Instant::now();
        let text = post(&client, &url, "/query-stream", &body).await;
        pulls.push(t.elapsed());
        let row = rows(&text);
        assert_eq!(row.len(), 1, "{user}: {text}");
        assert_eq!(row[0][0], user.as_str(), "{text}");
    }
    println!("pull_keys {users} keys");
    quantiles("healthcheck_idle_server", idle);
    let (h50, h99) = quantiles("healthcheck", health);
    let (p50, p99) = quantiles("pull_http", pulls);
    println!(
        "pull_http_p50_over_healthcheck {:.2} x",
        p50.as_secs_f64() / h50.as_secs_f64()
    );
    println!(
        "pull_http_p99_over_healthcheck {:.2} x",
        p99.as_secs_f64() / h99.as_secs_f64()
    );
}
