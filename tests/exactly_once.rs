//! Exactly-once under `kill -9`: a windowed count (EMIT FINAL, checkpoints every 100 ms) runs
//! in a worker process with its broker, while the worker feeds the input topic at a steady
//! rate. Each view is first joined with its user's team, from a table topic whose teams change
//! halfway through the input (a stream–table join in event time, its versions and waiting
//! views checkpointed with the rest), and counted per user and team. The worker is killed at random points many times (mid-checkpoint and mid-transaction
//! included) and restarted each time; a last run finishes the input. A
//! `read_committed` reader of the output topic then finds each (user, window) count exactly
//! once, with the value a one-shot count of the input gives.
//!
//! Each worker runs at a random parallelism (1 to 3), so most restores also split the state
//! between a different number of tasks.
//!
//! The same again with the source and the output on an external cluster: a `quiver server`
//! process, fed by the test over the wire while the workers come and go; the query reads and writes it through
//! Quiver's Kafka client, with its transactions on that cluster.
//!
//! This file is its own test binary (no libtest harness): run plainly it is the test; run
//! with `QUIVER_EOS_ROLE` set it is one of the processes it starts.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::{DataType, Field, Schema};
use quiver_broker::{
    Broker, BrokerConfig, Isolation, NewTopic, ReaderOptions, Record, StartAt, batch_to_records,
    partition_for_key,
};
use quiver_engine::datafusion::prelude::col;
use quiver_engine::dsl::{RunningTopology, StreamsBuilder};
use quiver_engine::{
    CheckpointConfig, CheckpointStorage, Format, KafkaCluster, KafkaSink, KafkaSource,
    QueryOptions, Runtime, TopicFormat, TopicSource, WindowKind, WindowSpec,
};
use quiver_kafka_client::{ClientConfig, FetchOptions, IsolationLevel, KafkaClient, OffsetSpec};

const ROLE: &str = "QUIVER_EOS_ROLE";
const DATA_DIR: &str = "QUIVER_EOS_DIR";
const BOOTSTRAP: &str = "QUIVER_EOS_BOOTSTRAP";
/// Each worker runs at a parallelism of its own: restores split the state anew.
const PARALLELISM: &str = "QUIVER_EOS_PARALLELISM";
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
/// Some users change team at this event time (a window boundary).
const T_CHANGE: i64 = T0 + (RECORDS as i64 / 2) * STEP_MS;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let Ok(role) = std::env::var(ROLE) else {
        runtime.block_on(local());
        runtime.block_on(remote());
        return;
    };
    let dir = PathBuf::from(std::env::var(DATA_DIR).unwrap());
    let code = match role.as_str() {
        "local-run" => runtime.block_on(local_worker(&dir, false)),
        "local-finish" => runtime.block_on(local_worker(&dir, true)),
        "remote-run" => runtime.block_on(remote_worker(&dir, false)),
        "remote-finish" => runtime.block_on(remote_worker(&dir, true)),
        other => panic!("unknown role {other}"),
    };
    std::process::exit(code);
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

/// The team of user number `n` at event time `t`: every third user changes team at
/// `T_CHANGE`.
fn team(n: usize, t: i64) -> String {
    if n.is_multiple_of(3) && t >= T_CHANGE {
        format!("new-{}", n % 4)
    } else {
        format!("team-{}", n % 4)
    }
}

/// The `teams` table topic: each user's team from before the input, and the changes.
fn teams() -> Vec<Record> {
    let mut out = Vec::new();
    for n in 0..USERS {
        for t in [T0 - 1_000, T_CHANGE] {
            if t == T_CHANGE && !n.is_multiple_of(3) {
                continue;
            }
            let key = format!("user-{n}");
            let value = format!(r#"{{"team":"{}"}}"#, team(n, t));
            out.push(Record::new(t, Some(key.as_bytes()), Some(value.as_bytes())));
        }
    }
    out
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

/// The scenario with the in-process broker in the worker process.
async fn local() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = open_broker(dir.path()).await;
        b.create_topic(NewTopic::new("views", PARTITIONS))
            .await
            .unwrap();
        b.create_topic(NewTopic::new("counts", 2)).await.unwrap();
        b.create_topic(NewTopic::new("teams", PARTITIONS))
            .await
            .unwrap();
        b.produce("teams", &teams()).await.unwrap();
        b.shutdown().await.unwrap();
    }
    kill_and_finish(dir.path(), "local", &[], None).await;
    let b = open_broker(dir.path()).await;
    let committed = read(&b, "counts", Isolation::ReadCommitted).await;
    let uncommitted = read(&b, "counts", Isolation::ReadUncommitted).await;
    check("local", &committed, uncommitted.len());
    b.shutdown().await.unwrap();
}

/// Starts `<kind>-run` workers and kills them at random points, `KILLS` times, then (once
/// `feeder`, if any, has written all the input) runs a `<kind>-finish` worker to its end.
async fn kill_and_finish(
    dir: &Path,
    kind: &str,
    envs: &[(&str, &str)],
    feeder: Option<tokio::task::JoinHandle<()>>,
) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("exactly_once ({kind}): {KILLS} kills, seed {seed}");
    let mut rng = seed | 1;
    for round in 0..KILLS {
        // xorshift: a kill between 0.3 and 2.3 s after the worker starts.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let after = Duration::from_millis(300 + rng % 2_000);
        let parallelism = (1 + (rng >> 32) % 3).to_string();
        let mut envs = envs.to_vec();
        envs.push((PARALLELISM, &parallelism));
        let mut child = spawn(dir, &format!("{kind}-run"), round, &envs);
        tokio::time::sleep(after).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        println!(
            "exactly_once ({kind}): round {round}: parallelism {parallelism}, killed after \
             {after:?}"
        );
    }
    if let Some(feeder) = feeder {
        feeder.await.unwrap();
    }
    let mut child = spawn(dir, &format!("{kind}-finish"), KILLS, envs);
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
        let log = std::fs::read_to_string(dir.join(format!("{kind}-finish-{KILLS}.log")));
        panic!("the last worker failed ({status}): {log:?}");
    }
}

/// Each (user, window) count committed once, as the one-shot count has it; and the kills did
/// hit open transactions (`in_log` counts their aborted output too).
fn check(kind: &str, committed: &[Record], in_log: usize) {
    println!(
        "exactly_once ({kind}): {} results committed; {in_log} records in the log with aborted \
         ones",
        committed.len(),
    );
    assert!(in_log > committed.len(), "no kill hit an open transaction");
    let mut seen: BTreeMap<(String, i64), Vec<i64>> = BTreeMap::new();
    for r in committed {
        let user = String::from_utf8(r.key.clone().unwrap().to_vec()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        let start = window_start(&v["window_start"]);
        if kind == "local" {
            let n: usize = user.trim_start_matches("user-").parse().unwrap();
            assert_eq!(
                v["team"].as_str(),
                Some(team(n, start).as_str()),
                "{user}'s team in the window at {start}"
            );
        }
        seen.entry((user, start))
            .or_default()
            .push(v["count"].as_i64().unwrap());
    }
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

fn spawn(dir: &Path, role: &str, round: usize, envs: &[(&str, &str)]) -> std::process::Child {
    let log = std::fs::File::create(dir.join(format!("{role}-{round}.log"))).unwrap();
    Command::new(std::env::current_exe().unwrap())
        .env(ROLE, role)
        .env(DATA_DIR, dir)
        .envs(envs.iter().copied())
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

/// The query: a count per user in tumbling windows, EMIT FINAL, exactly-once, from `views`
/// (the in-process broker's, or `cluster`'s) to `counts` on the same.
async fn start(b: &Broker, dir: &Path, cluster: Option<&KafkaCluster>) -> RunningTopology {
    let storage = CheckpointStorage::local(dir.join("checkpoints")).unwrap();
    let builder = StreamsBuilder::with_broker(b)
        .with_application_id(APPLICATION)
        .with_options(QueryOptions {
            checkpoint: Some(
                CheckpointConfig::exactly_once(storage).with_interval(Duration::from_millis(100)),
            ),
            parallelism: std::env::var(PARALLELISM)
                .ok()
                .and_then(|p| p.parse().ok())
                .unwrap_or(2),
            poll_wait: Duration::from_millis(20),
            ..QueryOptions::default()
        });
    let value = Arc::new(Schema::new(vec![
        Field::new("user", DataType::Utf8, false),
        Field::new("seq", DataType::Int64, false),
    ]));
    let views = match cluster {
        None => builder
            .topic("views", Format::None, Format::Json(value))
            .unwrap(),
        Some(c) => {
            let source = KafkaSource::new(c, "views", Format::None, Format::Json(value))
                .await
                .unwrap();
            builder.stream("views", Arc::new(source)).unwrap()
        }
    };
    // Locally, each view gets its user's team as of the view's time first.
    let (views, keys) = match cluster {
        None => {
            let team = Arc::new(Schema::new(vec![Field::new("team", DataType::Utf8, true)]));
            let teams = TopicSource::table(
                Some(b),
                "teams",
                Format::kafka("user", quiver_engine::KafkaType::String),
                Format::Json(team),
            )
            .unwrap()
            .with_idle_timeout(Duration::from_millis(200));
            let teams = builder.table_from("teams", Arc::new(teams)).unwrap();
            let joined = views.join(&teams, [col("user")]).unwrap();
            (joined, vec![col("user"), col("team")])
        }
        Some(_) => (views, vec![col("user")]),
    };
    let counts = views
        .group_by(keys)
        .unwrap()
        .window(WindowSpec {
            kind: WindowKind::Tumbling { size_ms: WINDOW_MS },
            grace_ms: 0,
        })
        .unwrap()
        .emit_final()
        .count()
        .unwrap()
        .to_stream();
    match cluster {
        None => counts
            .to_topic("counts", TopicFormat::keyed(["user"]))
            .unwrap(),
        Some(c) => counts.to_sink(Box::new(
            KafkaSink::new(c, "counts", TopicFormat::keyed(["user"]))
                .await
                .unwrap(),
        )),
    }
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

/// Runs the query against the in-process broker, feeding the input (see [`run_worker`]).
async fn local_worker(dir: &Path, finish: bool) -> i32 {
    let b = open_broker(dir).await;
    let running = start(&b, dir, None).await;
    println!("worker: started");
    let feeding = tokio::spawn(feed(b.clone()));
    // What the last check saw, printed if the worker gives up.
    let seen = std::cell::RefCell::new(String::from("nothing checked yet"));
    let code = run_worker(running, finish, async || {
        if !feeding.is_finished() {
            return false;
        }
        // The group also holds the teams table's offsets.
        let committed: BTreeMap<i32, i64> = b
            .groups()
            .fetch_offsets_checked(GROUP, None, true)
            .into_iter()
            .filter(|(t, _, _)| t == "views")
            .filter_map(|(_, p, o)| Some((p, o.ok()??.offset)))
            .collect();
        let consumed = (0..PARTITIONS).all(|p| {
            let end = b.offsets("views", p).unwrap().log_end_offset;
            committed.get(&p) == Some(&end)
        });
        // Offsets are committed with the state that holds the views still waiting in the join
        // for the teams table's watermark: a stop then keeps them for a next run, and leaves
        // the last windows unwritten. Finishing waits for the results too.
        let results = read(&b, "counts", Isolation::ReadCommitted).await.len();
        let ends: Vec<i64> = (0..PARTITIONS)
            .map(|p| b.offsets("views", p).unwrap().log_end_offset)
            .collect();
        *seen.borrow_mut() = format!(
            "committed input offsets {committed:?} of log ends {ends:?}; {results} of {} results \
             committed",
            expected().len()
        );
        consumed && results >= expected().len()
    })
    .await;
    if code != 0 {
        println!("worker: the last check saw {}", seen.borrow());
    }
    b.shutdown().await.unwrap();
    code
}

/// Lets the query run; with `finish`, until `consumed` says the group's committed offsets
/// reached the end of the input, then stops it gracefully. Returns the exit code.
async fn run_worker(
    running: RunningTopology,
    finish: bool,
    mut consumed: impl AsyncFnMut() -> bool,
) -> i32 {
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if finish && consumed().await {
            break;
        }
        if finish && started.elapsed() > Duration::from_secs(240) {
            println!(
                "worker: the input was not consumed in 240 s; the query's metrics: {:?}",
                running.metrics()
            );
            return 1;
        }
    }
    match running.stop().await {
        Ok(m) => {
            println!("worker: stopped: {m:?}");
            0
        }
        Err(e) => {
            println!("worker: the query failed: {e}");
            1
        }
    }
}

/// The scenario with the source and the output on an external cluster.
async fn remote() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let errors = dir.path().join("server.err");
    let mut command = Command::new(env!("CARGO_BIN_EXE_quiver"));
    // The server reads QUIVER_* settings from the environment: it gets none of the test's.
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|n| n.starts_with("QUIVER_")) {
            command.env_remove(&name);
        }
    }
    let mut server = KillOnDrop(
        command
            .arg("server")
            .arg("--data-dir")
            .arg(dir.path().join("cluster"))
            .args(["--listeners", "PLAINTEXT://127.0.0.1:0"])
            .args(["--http-port", "0", "--http-host", "127.0.0.1"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&errors).unwrap())
            .spawn()
            .unwrap(),
    );
    // "quiver server ready: Kafka on HOST:PORT (advertised as PLAINTEXT://HOST:PORT), …"
    let started = Instant::now();
    let bootstrap = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.starts_with("quiver server ready")) {
            let advertised = line.split("(advertised as ").nth(1).unwrap();
            let advertised = advertised.split(')').next().unwrap();
            break advertised.trim_start_matches("PLAINTEXT://").to_owned();
        }
        if let Some(status) = server.0.try_wait().unwrap() {
            let errors = std::fs::read_to_string(&errors).unwrap_or_default();
            panic!("the server exited ({status}): {text}{errors}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no ready line from quiver server: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let client = KafkaClient::connect(&bootstrap, ClientConfig::default())
        .await
        .unwrap();
    for (topic, partitions) in [("views", PARTITIONS), ("counts", 2)] {
        let created = client
            .create_topics(
                &[quiver_common::topic::NewTopic::new(topic, partitions)],
                false,
            )
            .await
            .unwrap();
        assert!(created.iter().all(|(_, r)| r.is_ok()), "{created:?}");
    }
    // The input arrives over the wire while workers come and go.
    let feeder = {
        let client = Arc::new(client);
        let feeding = client.clone();
        let task = tokio::spawn(async move {
            for chunk in input().chunks(FEED_CHUNK) {
                let mut by_partition: BTreeMap<i32, quiver_common::record::EnvelopeBuilder> =
                    BTreeMap::new();
                for r in chunk {
                    let p = partition_for_key(r.key.as_deref().unwrap(), PARTITIONS);
                    by_partition.entry(p).or_default().append_record(r);
                }
                for (p, mut builder) in by_partition {
                    feeding
                        .produce("views", p, &builder.finish())
                        .await
                        .unwrap();
                }
                tokio::time::sleep(FEED_EVERY).await;
            }
        });
        (client, task)
    };
    let envs = [(BOOTSTRAP, bootstrap.as_str())];
    let (client, task) = feeder;
    kill_and_finish(dir.path(), "remote", &envs, Some(task)).await;
    let committed = fetch_all(&client, IsolationLevel::ReadCommitted).await;
    let in_log = fetch_all(&client, IsolationLevel::ReadUncommitted)
        .await
        .len();
    check("remote", &committed, in_log);
    client.close().await;
    drop(server);
}

/// A child process killed when the test is done with it, or fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every record of `counts` on the cluster, once no transaction is open on it.
async fn fetch_all(client: &KafkaClient, isolation: IsolationLevel) -> Vec<Record> {
    let mut out = Vec::new();
    for p in 0..2 {
        let started = Instant::now();
        let mut offset = 0;
        loop {
            let options = FetchOptions {
                max_wait: Duration::from_millis(100),
                isolation_level: isolation,
                ..FetchOptions::default()
            };
            let fetched = client
                .fetch("counts", &[(p, offset)], &options)
                .await
                .unwrap();
            let (_, f) = fetched.into_iter().next().unwrap();
            let f = f.unwrap();
            for b in &f.batches {
                out.extend(batch_to_records(b).unwrap());
            }
            offset = f.next_offset;
            let stable = f.last_stable_offset.unwrap_or(f.high_watermark);
            if offset >= f.high_watermark && stable == f.high_watermark {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "counts-{p} did not become stable"
            );
        }
    }
    out
}

/// Runs the query against the external cluster (the in-process broker only holds side
/// topics); with `finish`, until the group's committed offsets reach the end of the input.
async fn remote_worker(dir: &Path, finish: bool) -> i32 {
    let bootstrap = std::env::var(BOOTSTRAP).unwrap();
    let cluster = KafkaCluster::connect(&bootstrap).await.unwrap();
    let b = Broker::open(BrokerConfig {
        data_dir: dir.join("worker"),
        ..BrokerConfig::default()
    })
    .await
    .unwrap();
    let running = start(&b, dir, Some(&cluster)).await;
    println!("worker: started");
    let client = cluster.client();
    run_worker(running, finish, async || {
        let committed: BTreeMap<i32, i64> = match client.offset_fetch_stable(GROUP, None).await {
            Ok(offsets) => offsets
                .into_iter()
                .filter(|o| o.error.is_none())
                .filter_map(|o| Some((o.partition, o.offset?)))
                .collect(),
            Err(_) => BTreeMap::new(),
        };
        let specs: Vec<(i32, OffsetSpec)> =
            (0..PARTITIONS).map(|p| (p, OffsetSpec::Latest)).collect();
        let ends = client.list_offsets("views", &specs).await.unwrap();
        ends.into_iter().all(|(p, end)| {
            let end = end.unwrap().unwrap().offset;
            committed.get(&p) == Some(&end)
        })
    })
    .await
}
