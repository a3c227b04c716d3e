//! Exactly-once under `kill -9`: a windowed count (EMIT FINAL, checkpoints every 100 ms) runs
//! in a worker process with its broker, while the worker feeds the input topic at a steady
//! rate. The worker is killed at random points many times (mid-checkpoint and mid-transaction
//! included) and restarted each time; a last run finishes the input. A
//! `read_committed` reader of the output topic then finds each (user, window) count exactly
//! once, with the value a one-shot count of the input gives.
//!
//! This file is its own test binary (no libtest harness): run plainly it is the test; run
//! with `QUIVER_EOS_WORKER` set it is the worker it starts.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::col;
use quiver_broker::{
    Broker, BrokerConfig, Isolation, NewTopic, ReaderOptions, Record, StartAt, batch_to_records,
    partition_for_key,
};
use quiver_engine::dsl::{RunningTopology, StreamsBuilder};
use quiver_engine::{
    CheckpointConfig, CheckpointStorage, Format, QueryOptions, Runtime, TopicFormat, WindowKind,
    WindowSpec,
};

const WORKER: &str = "QUIVER_EOS_WORKER";
const DATA_DIR: &str = "QUIVER_EOS_DIR";
const APPLICATION: &str = "eos-count";
const GROUP: &str = "eos-count-query_1";
const PARTITIONS: i32 = 3;
const USERS: usize = 23;
const RECORDS: usize = 6_000;
/// Event time between two records.
const STEP_MS: i64 = 10;
const WINDOW_MS: i64 = 200;
/// Records the worker feeds per tick of `FEED_EVERY`.
const FEED_CHUNK: usize = 40;
const FEED_EVERY: Duration = Duration::from_millis(100);
const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const KILLS: usize = 12;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    match std::env::var(WORKER) {
        Ok(mode) => {
            let dir = PathBuf::from(std::env::var(DATA_DIR).unwrap());
            let code = runtime.block_on(worker(&dir, mode == "finish"));
            std::process::exit(code);
        }
        Err(_) => runtime.block_on(parent()),
    }
}

async fn open_broker(dir: &Path) -> Broker {
    Broker::open(BrokerConfig {
        data_dir: dir.join("broker"),
        ..BrokerConfig::default()
    })
    .await
    .unwrap()
}

fn user(i: usize) -> String {
    format!("user-{}", (i * 7) % USERS)
}

/// The input: `RECORDS` views spread over the users, in event-time order, then one record per
/// partition far in the future, which closes every window of the input.
fn input() -> Vec<Record> {
    let mut out: Vec<Record> = (0..RECORDS)
        .map(|i| {
            let u = user(i);
            let value = format!(r#"{{"user":"{u}","seq":{i}}}"#);
            Record::new(
                T0 + i as i64 * STEP_MS,
                Some(u.as_bytes()),
                Some(value.as_bytes()),
            )
        })
        .collect();
    let end = T0 + 100 * (RECORDS as i64) * STEP_MS;
    for (seq, p) in (RECORDS..).zip(0..PARTITIONS) {
        let key = (0..)
            .map(|k| format!("end-{k}"))
            .find(|k| partition_for_key(k.as_bytes(), PARTITIONS) == p)
            .unwrap();
        let value = format!(r#"{{"user":"{key}","seq":{seq}}}"#);
        out.push(Record::new(
            end,
            Some(key.as_bytes()),
            Some(value.as_bytes()),
        ));
    }
    out
}

/// What a one-shot count of the input gives: (user, window start) → count.
fn expected() -> BTreeMap<(String, i64), i64> {
    let mut out = BTreeMap::new();
    for i in 0..RECORDS {
        let t = T0 + i as i64 * STEP_MS;
        let start = t - t.rem_euclid(WINDOW_MS);
        *out.entry((user(i), start)).or_insert(0) += 1;
    }
    out
}

async fn parent() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = open_broker(dir.path()).await;
        b.create_topic(NewTopic::new("views", PARTITIONS))
            .await
            .unwrap();
        b.create_topic(NewTopic::new("counts", 2)).await.unwrap();
        b.shutdown().await.unwrap();
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("exactly_once: {KILLS} kills, seed {seed}");
    let mut rng = seed | 1;
    for round in 0..KILLS {
        // xorshift: a kill between 0.3 and 2.3 s after the worker starts.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let after = Duration::from_millis(300 + rng % 2_000);
        let mut child = spawn_worker(dir.path(), "run", round);
        tokio::time::sleep(after).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        println!("exactly_once: round {round}: killed after {after:?}");
    }
    let mut child = spawn_worker(dir.path(), "finish", KILLS);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(300) {
            child.kill().unwrap();
            panic!("the last worker did not finish the input in 300 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if !status.success() {
        let log = std::fs::read_to_string(dir.path().join(format!("worker-{KILLS}.log")));
        panic!("the last worker failed ({status}): {log:?}");
    }

    let b = open_broker(dir.path()).await;
    let committed = read(&b, "counts", Isolation::ReadCommitted).await;
    let uncommitted = read(&b, "counts", Isolation::ReadUncommitted).await;
    let mut seen: BTreeMap<(String, i64), Vec<i64>> = BTreeMap::new();
    for r in &committed {
        let user = String::from_utf8(r.key.clone().unwrap().to_vec()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        let start = window_start(&v["window_start"]);
        seen.entry((user, start))
            .or_default()
            .push(v["count"].as_i64().unwrap());
    }
    println!(
        "exactly_once: {} results committed; {} records in the log with aborted ones",
        committed.len(),
        uncommitted.len()
    );
    // The kills did hit open transactions: their output is in the log, aborted.
    assert!(uncommitted.len() > committed.len());
    let expected = expected();
    let duplicated: Vec<_> = seen.iter().filter(|(_, c)| c.len() > 1).collect();
    assert!(
        duplicated.is_empty(),
        "results seen more than once: {duplicated:?}"
    );
    let got: BTreeMap<(String, i64), i64> = seen.into_iter().map(|(k, c)| (k, c[0])).collect();
    let missing: Vec<_> = expected.keys().filter(|k| !got.contains_key(*k)).collect();
    assert!(missing.is_empty(), "results missing: {missing:?}");
    assert_eq!(got, expected);
    b.shutdown().await.unwrap();
}

/// A window start as JSON writes it: a timestamp string (`2026-01-01T00:00:01`) or millis.
fn window_start(v: &serde_json::Value) -> i64 {
    if let Some(ms) = v.as_i64() {
        return ms;
    }
    let s = v.as_str().unwrap();
    let t = arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(s).unwrap();
    t / 1_000_000
}

fn spawn_worker(dir: &Path, mode: &str, round: usize) -> std::process::Child {
    let log = std::fs::File::create(dir.join(format!("worker-{round}.log"))).unwrap();
    Command::new(std::env::current_exe().unwrap())
        .env(WORKER, mode)
        .env(DATA_DIR, dir)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

async fn read(b: &Broker, topic: &str, isolation: Isolation) -> Vec<Record> {
    let options = ReaderOptions {
        isolation,
        ..ReaderOptions::default()
    };
    let mut reader = b.topic_reader(topic, StartAt::Earliest, options).unwrap();
    let mut out = Vec::new();
    loop {
        let batches = reader.next_batches(Duration::ZERO).await.unwrap();
        if batches.is_empty() {
            return out;
        }
        for batch in batches {
            out.extend(batch_to_records(&batch.records).unwrap());
        }
    }
}

async fn start(b: &Broker, dir: &Path) -> RunningTopology {
    let storage = CheckpointStorage::local(dir.join("checkpoints")).unwrap();
    let builder = StreamsBuilder::with_broker(b)
        .with_application_id(APPLICATION)
        .with_options(QueryOptions {
            checkpoint: Some(
                CheckpointConfig::exactly_once(storage).with_interval(Duration::from_millis(100)),
            ),
            parallelism: 2,
            poll_wait: Duration::from_millis(20),
            ..QueryOptions::default()
        });
    let value = Arc::new(Schema::new(vec![
        Field::new("user", DataType::Utf8, false),
        Field::new("seq", DataType::Int64, false),
    ]));
    builder
        .topic("views", Format::None, Format::Json(value))
        .unwrap()
        .group_by([col("user")])
        .unwrap()
        .window(WindowSpec {
            kind: WindowKind::Tumbling { size_ms: WINDOW_MS },
            grace_ms: 0,
        })
        .unwrap()
        .emit_final()
        .count()
        .unwrap()
        .to_stream()
        .to_topic("counts", TopicFormat::keyed(["user"]))
        .unwrap();
    Runtime::new(b).run(builder.build().unwrap()).await.unwrap()
}

/// Produces the input records not yet in the topic, in order, `FEED_CHUNK` per tick. (A kill
/// can leave a chunk in some partitions only; each partition still gets its records in
/// order.)
async fn feed(b: Broker) {
    let present: std::collections::HashSet<i64> = read(&b, "views", Isolation::ReadUncommitted)
        .await
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
            v["seq"].as_i64().unwrap()
        })
        .collect();
    let missing: Vec<Record> = input()
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !present.contains(&(*i as i64)))
        .map(|(_, r)| r)
        .collect();
    println!("worker: {} records to feed", missing.len());
    for chunk in missing.chunks(FEED_CHUNK) {
        b.produce("views", chunk).await.unwrap();
        tokio::time::sleep(FEED_EVERY).await;
    }
}

/// Runs the query; with `finish`, until the group's committed offsets reach the end of the
/// input, then stops it gracefully. Returns the exit code.
async fn worker(dir: &Path, finish: bool) -> i32 {
    let b = open_broker(dir).await;
    let running = start(&b, dir).await;
    println!("worker: started");
    let feeding = tokio::spawn(feed(b.clone()));
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if !finish || !feeding.is_finished() {
            continue;
        }
        let committed: BTreeMap<i32, i64> = b
            .groups()
            .fetch_offsets_checked(GROUP, None, true)
            .into_iter()
            .filter_map(|(_, p, o)| Some((p, o.ok()??.offset)))
            .collect();
        let done = (0..PARTITIONS).all(|p| {
            let end = b.offsets("views", p).unwrap().log_end_offset;
            committed.get(&p) == Some(&end)
        });
        if done {
            break;
        }
        if started.elapsed() > Duration::from_secs(240) {
            println!("worker: the input was not consumed in 240 s: {committed:?}");
            return 1;
        }
    }
    match running.stop().await {
        Ok(m) => println!("worker: stopped: {m:?}"),
        Err(e) => {
            println!("worker: the query failed: {e}");
            return 1;
        }
    }
    b.shutdown().await.unwrap();
    0
}
