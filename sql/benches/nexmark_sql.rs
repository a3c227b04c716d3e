//! Nexmark in Quiver SQL next to the same queries in the DSL, on the same engine, in one run.
//!
//! ```text
//! scripts/bench-nexmark-sql [EVENTS]   # or: cargo bench --workspace --bench nexmark_sql -- EVENTS
//! NEXMARK_QUERIES=q5,q8 scripts/bench-nexmark-sql   # only these
//! ```
//!
//! Each query runs over the Nexmark generator (EVENTS events, default 10,000,000) into a
//! counting sink, once as the DSL program of `quiver_engine::nexmark::query` and once as its
//! SQL (`quiver_sql::nexmark::QUERIES`), planned by `SqlEngine::continuous_query` over the
//! generator registered as the stream `nexmark` (`SqlEngine::register_stream`). The two alternate, `ROUNDS` times each
//! (default 3), and the best of each side counts. The figure is events per second of CPU time
//! (the process's user + system time while the query ran, from /proc), so it holds on a
//! noisy machine; the SQL / DSL ratio is the result. Both must emit the same number of rows,
//! except for q4 and q9, whose outputs are tables' changelogs: updates to one key within a
//! batch are coalesced, so their row counts depend on how the input happened to be batched
//! (`sql/tests/nexmark.rs` checks their final rows against DataFusion's over all the events).

#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark: failing loudly is right.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quiver_broker::{Broker, BrokerConfig};
use quiver_engine::dsl::StreamsBuilder;
use quiver_engine::nexmark::{self, NexmarkConfig, NexmarkSource};
use quiver_engine::{CountSink, QueryOptions, Runtime};
use quiver_sql::SqlEngine;

/// Queries whose output is a table's changelog (see the module docs).
const CHANGELOGS: &[&str] = &["q4", "q9"];

/// The process's user + system CPU time, from /proc/self/stat (in USER_HZ, 100 per second on
/// Linux).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // The fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// One run: rows out, CPU time, wall time.
struct Run {
    rows: u64,
    cpu: Duration,
    wall: Duration,
}

async fn run(query: quiver_engine::Query, sink: &CountSink) -> Run {
    let (cpu0, wall0) = (cpu_time(), Instant::now());
    let handle = Runtime::without_broker().start(query).await.unwrap();
    handle.wait().await.unwrap();
    Run {
        rows: sink.rows(),
        cpu: cpu_time() - cpu0,
        wall: wall0.elapsed(),
    }
}

async fn dsl(name: &str, config: NexmarkConfig) -> Run {
    let builder = StreamsBuilder::new().with_options(QueryOptions::default());
    let sink = CountSink::new();
    nexmark::query(name, &builder, config)
        .unwrap()
        .to_sink(Box::new(sink.clone()));
    let mut topology = builder.build().unwrap().into_queries();
    assert_eq!(topology.len(), 1, "{name} is one query");
    run(topology.remove(0), &sink).await
}

async fn sql(engine: &SqlEngine, name: &str, text: &str) -> Run {
    let sink = CountSink::new();
    let query = engine
        .continuous_query(name, text, vec![Box::new(sink.clone())])
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    run(query, &sink).await
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let events: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|a| a.parse().expect("EVENTS is a number"))
        .unwrap_or(10_000_000);
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let only: Option<Vec<String>> = std::env::var("NEXMARK_QUERIES")
        .ok()
        .map(|q| q.split(',').map(str::to_owned).collect());
    let config = NexmarkConfig {
        events,
        ..NexmarkConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(BrokerConfig {
        data_dir: dir.path().join("data"),
        ..BrokerConfig::default()
    })
    .await
    .unwrap();
    let engine = SqlEngine::open(&broker, &dir.path().join("data"))
        .await
        .unwrap();
    engine
        .register_stream("nexmark", Arc::new(NexmarkSource::new(config).unwrap()))
        .unwrap();

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "Nexmark, {events} events, {cores} cores, best of {rounds}: the DSL and Quiver SQL \
         (generator -> query -> counting sink)"
    );
    println!(
        "{:<5} {:>20} {:>20} {:>10} {:>12}",
        "query", "DSL events/s/core", "SQL events/s/core", "SQL/DSL", "rows out"
    );
    let mut ratios = Vec::new();
    for (name, text) in quiver_sql::nexmark::QUERIES {
        if only.as_ref().is_some_and(|o| !o.iter().any(|q| q == name)) {
            continue;
        }
        let (mut best_dsl, mut best_sql) = (Duration::MAX, Duration::MAX);
        let mut rows = None;
        for round in 0..rounds {
            // Alternate which goes first, so that neither always meets a warmer machine.
            let (a, b) = if round % 2 == 0 {
                let a = dsl(name, config).await;
                (a, sql(&engine, name, text).await)
            } else {
                let b = sql(&engine, name, text).await;
                (dsl(name, config).await, b)
            };
            if !CHANGELOGS.contains(name) {
                assert_eq!(
                    a.rows, b.rows,
                    "{name}: the DSL emitted {} rows, SQL {}",
                    a.rows, b.rows
                );
            }
            rows = Some(a.rows);
            eprintln!(
                "{name} round {round}: DSL {:.2} s CPU ({:.2} s wall), SQL {:.2} s CPU ({:.2} s \
                 wall)",
                a.cpu.as_secs_f64(),
                a.wall.as_secs_f64(),
                b.cpu.as_secs_f64(),
                b.wall.as_secs_f64()
            );
            best_dsl = best_dsl.min(a.cpu);
            best_sql = best_sql.min(b.cpu);
        }
        let per_core = |d: Duration| events as f64 / d.as_secs_f64();
        let ratio = best_dsl.as_secs_f64() / best_sql.as_secs_f64();
        ratios.push(ratio);
        println!(
            "{:<5} {:>20.0} {:>20.0} {:>10.2} {:>12}",
            name,
            per_core(best_dsl),
            per_core(best_sql),
            ratio,
            rows.unwrap_or(0)
        );
    }
    if let Some(worst) = ratios.iter().copied().reduce(f64::min) {
        println!("lowest SQL/DSL ratio {worst:.2}");
    }
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
}
