//! Nexmark in Quiver SQL next to the same queries in the DSL, on the same engine, in one run.
//!
//! ```text
//! scripts/bench-nexmark-sql [EVENTS]   # or: cargo bench --workspace --bench nexmark_sql -- EVENTS
//! NEXMARK_QUERIES=q5,q8 scripts/bench-nexmark-sql   # only these
//! ```
//!
//! Each query runs over the Nexmark generator (EVENTS events, default 10,000,000) into a
//! counting sink, once as the DSL program of `quiver_engine::nexmark::query` and once as the
//! SQL below, planned by `SqlEngine::continuous_query` over the generator registered as the
//! stream `nexmark` (`SqlEngine::register_stream`). The two alternate, `ROUNDS` times each
//! (default 3), and the best of each side counts. The figure is events per second of CPU time
//! (the process's user + system time while the query ran, from /proc), so it holds on a
//! noisy machine; the SQL / DSL ratio is the result. Both must emit the same number of rows,
//! except for q4 and q9, whose outputs are tables' changelogs: updates to one key within a
//! batch are coalesced, so their row counts depend on how the input happened to be batched
//! (`sql/tests/nexmark.rs` checks their final rows against DataFusion's over all the events).
//!
//! q3's persons are a table made by an aggregating subquery (`LATEST_BY_OFFSET(name) … GROUP
//! BY id`), where the DSL turns the persons' stream into a table directly; its category filter
//! is in the auctions' subquery, before the join, where the DSL has it (continuous plans are
//! not rewritten by DataFusion's optimizer, so a `WHERE` above the join would filter after
//! it). q7 has no SQL form
//! here: it joins a windowed aggregation inside a subquery, where Quiver SQL does not take
//! `WINDOW` yet.

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

/// The queries in SQL, as `quiver_engine::nexmark::query` writes them in the DSL.
const QUERIES: &[(&str, &str)] = &[
    (
        "q0",
        "SELECT auction, bidder, price, channel, url, rowtime FROM nexmark WHERE event_type = 2 \
         EMIT CHANGES",
    ),
    (
        "q1",
        "SELECT auction, bidder, CAST(price AS DOUBLE) * 0.908 AS price, rowtime FROM nexmark \
         WHERE event_type = 2 EMIT CHANGES",
    ),
    (
        "q2",
        "SELECT auction, price FROM nexmark WHERE event_type = 2 AND auction % 123 = 0 \
         EMIT CHANGES",
    ),
    (
        "q3",
        "SELECT p.name, a.auction_id FROM
           (SELECT id AS auction_id, seller, category, rowtime FROM nexmark
            WHERE event_type = 1 AND category = 10) a
         JOIN (SELECT id, LATEST_BY_OFFSET(name) AS name FROM nexmark WHERE event_type = 0
               GROUP BY id) p
         ON a.seller = p.id
         EMIT CHANGES",
    ),
    (
        "q4",
        "SELECT category, AVG(final) AS average FROM
           (SELECT a.id, a.category, MAX(b.price) AS final
            FROM (SELECT id, category, rowtime FROM nexmark WHERE event_type = 1) a
            JOIN (SELECT auction, price, rowtime FROM nexmark WHERE event_type = 2) b
            WITHIN 10 SECONDS ON a.id = b.auction AND b.rowtime >= a.rowtime
            GROUP BY a.id, a.category)
         GROUP BY category EMIT CHANGES",
    ),
    (
        "q5",
        "SELECT auction, COUNT(*) AS n FROM nexmark
         WINDOW HOPPING (SIZE 10 SECONDS, ADVANCE BY 2 SECONDS)
         WHERE event_type = 2 GROUP BY auction EMIT FINAL",
    ),
    (
        "q8",
        "SELECT p.id, p.name, p.w FROM
           (SELECT id, name, rowtime, CAST(rowtime AS BIGINT) / 10000 AS w
            FROM nexmark WHERE event_type = 0) p
         JOIN
           (SELECT id AS auction_id, seller, category, rowtime,
                   CAST(rowtime AS BIGINT) / 10000 AS w
            FROM nexmark WHERE event_type = 1) a
         WITHIN 10 SECONDS ON p.id = a.seller AND p.w = a.w
         EMIT CHANGES",
    ),
    (
        "q9",
        "SELECT * FROM
           (SELECT a.id, a.seller, a.category, b.bidder, b.price,
                   ROW_NUMBER() OVER (PARTITION BY a.id ORDER BY b.price DESC) AS rn
            FROM (SELECT id, seller, category, rowtime FROM nexmark WHERE event_type = 1) a
            JOIN (SELECT auction, bidder, price, rowtime FROM nexmark WHERE event_type = 2) b
            WITHIN 10 SECONDS ON a.id = b.auction AND b.rowtime >= a.rowtime)
         WHERE rn <= 1 EMIT CHANGES",
    ),
    (
        "q11",
        "SELECT bidder, COUNT(*) AS n FROM nexmark WINDOW SESSION (10 SECONDS)
         WHERE event_type = 2 GROUP BY bidder EMIT FINAL",
    ),
];

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
    for (name, text) in QUERIES {
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
