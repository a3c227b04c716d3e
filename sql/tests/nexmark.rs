//! Nexmark queries written in Quiver SQL end where the same work ends done at once over all
//! the events by DataFusion (and, for q4 and q7, where the DSL's ends): the same generator's
//! events, the continuous queries' outputs folded to their final rows.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::collections::BTreeMap;
use std::sync::Arc;

use quiver_broker::{Broker, BrokerConfig};
use quiver_engine::arrow::array::RecordBatch;
use quiver_engine::arrow::util::display::array_value_to_string;
use quiver_engine::datafusion::datasource::MemTable;
use quiver_engine::datafusion::prelude::SessionContext;
use quiver_engine::dsl::StreamsBuilder;
use quiver_engine::nexmark::{self, NexmarkConfig, NexmarkSource};
use quiver_engine::{Collector, QueryOptions, Runtime};
use quiver_sql::SqlEngine;

fn config() -> NexmarkConfig {
    NexmarkConfig {
        events: 50_000,
        ..NexmarkConfig::default()
    }
}

/// Rows as `key -> value` text (the first `keys` columns name a row, the rest are its value):
/// the last row per key, keys deleted on the way left out.
fn fold(batches: &[RecordBatch], keys: usize) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for b in batches {
        let deleted = b.schema().index_of("__deleted").ok();
        let columns: Vec<usize> = (0..b.num_columns())
            .filter(|i| Some(*i) != deleted)
            .collect();
        for row in 0..b.num_rows() {
            let text: Vec<String> = columns
                .iter()
                .map(|&i| array_value_to_string(b.column(i), row).unwrap())
                .collect();
            let key = text[..keys].join("|");
            let gone =
                deleted.is_some_and(|i| array_value_to_string(b.column(i), row).unwrap() == "true");
            if gone {
                out.remove(&key);
            } else {
                out.insert(key, text[keys..].join("|"));
            }
        }
    }
    out
}

async fn run(query: quiver_engine::Query) {
    let handle = Runtime::without_broker().start(query).await.unwrap();
    handle.wait().await.unwrap();
}

/// Every event of the generator, as DataFusion's table `ev`.
async fn all_events() -> SessionContext {
    all_events_of(config()).await
}

async fn all_events_of(config: NexmarkConfig) -> SessionContext {
    let builder = StreamsBuilder::new().with_options(QueryOptions::default());
    let all = Collector::new();
    builder
        .stream("nexmark", Arc::new(NexmarkSource::new(config).unwrap()))
        .unwrap()
        .to_sink(Box::new(all.sink()));
    run(builder.build().unwrap().into_queries().remove(0)).await;
    let batches = all.batches();
    let ctx = SessionContext::new();
    let table = MemTable::try_new(batches[0].schema(), vec![batches]).unwrap();
    ctx.register_table("ev", Arc::new(table)).unwrap();
    ctx
}

async fn truth(ctx: &SessionContext, sql: &str, keys: usize) -> BTreeMap<String, String> {
    let out = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    fold(&out, keys)
}

async fn engine(dir: &std::path::Path) -> (Broker, SqlEngine) {
    engine_of(dir, config()).await
}

async fn engine_of(dir: &std::path::Path, config: NexmarkConfig) -> (Broker, SqlEngine) {
    let broker = Broker::open(BrokerConfig {
        data_dir: dir.join("data"),
        ..BrokerConfig::default()
    })
    .await
    .unwrap();
    let engine = SqlEngine::open(&broker, &dir.join("data")).await.unwrap();
    engine
        .register_stream("nexmark", Arc::new(NexmarkSource::new(config).unwrap()))
        .unwrap();
    (broker, engine)
}

async fn continuous(engine: &SqlEngine, sql: &str, keys: usize) -> BTreeMap<String, String> {
    let collector = Collector::new();
    let query = engine
        .continuous_query("q", sql, vec![Box::new(collector.sink())])
        .await
        .unwrap();
    run(query).await;
    fold(&collector.batches(), keys)
}

#[tokio::test(flavor = "multi_thread")]
async fn q4_a_window_join_in_a_subquery_then_an_aggregation_of_its_aggregation() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, engine) = engine(dir.path()).await;
    // Each auction's highest bid of its first 10 s, then their average per category: the
    // outer aggregation follows the inner one's updates (an auction's old maximum leaves the
    // average when a higher bid comes).
    let by_sql = continuous(&engine, quiver_sql::nexmark::query("q4").unwrap(), 1).await;
    let want = truth(
        &all_events().await,
        "SELECT category, AVG(final) FROM
           (SELECT a.id, a.category, MAX(b.price) AS final FROM ev a JOIN ev b
              ON a.id = b.auction AND b.rowtime >= a.rowtime
             AND CAST(b.rowtime AS BIGINT) - CAST(a.rowtime AS BIGINT) <= 10000
            WHERE a.event_type = 1 AND b.event_type = 2 GROUP BY a.id, a.category)
         GROUP BY category",
        1,
    )
    .await;
    assert_eq!(want.len(), 5, "{want:?}");
    assert_eq!(by_sql, want);
    // The DSL's q4 ends there too.
    let builder = StreamsBuilder::new().with_options(QueryOptions::default());
    let by_dsl = Collector::new();
    nexmark::query("q4", &builder, config())
        .unwrap()
        .to_sink(Box::new(by_dsl.sink()));
    run(builder.build().unwrap().into_queries().remove(0)).await;
    assert_eq!(fold(&by_dsl.batches(), 1), want);
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn q7_a_window_in_a_subquery_joined_back_to_its_stream() {
    let dir = tempfile::tempdir().unwrap();
    // 500 events per second of event time: the events span a hundred seconds, ten windows.
    let config = NexmarkConfig {
        inter_event_us: 2_000,
        ..config()
    };
    let (broker, engine) = engine_of(dir.path(), config).await;
    // The highest bids of each 10 s tumbling window: the window's maximum (its final value,
    // once the window closes) joined back to the window's bids at that price.
    let q7 = quiver_sql::nexmark::query("q7").unwrap();
    let by_sql = continuous(&engine, q7, 3).await;
    let want = truth(
        &all_events_of(config).await,
        "SELECT b.auction, b.bidder, b.price FROM ev b JOIN
           (SELECT MAX(price) AS top, CAST(rowtime AS BIGINT) / 10000 AS w FROM ev
            WHERE event_type = 2 GROUP BY CAST(rowtime AS BIGINT) / 10000) m
           ON b.price = m.top AND CAST(b.rowtime AS BIGINT) / 10000 = m.w
         WHERE b.event_type = 2",
        3,
    )
    .await;
    assert!(want.len() > 10, "{want:?}");
    assert_eq!(by_sql, want);
    // The DSL's q7 ends there too.
    let builder = StreamsBuilder::new().with_options(QueryOptions::default());
    let by_dsl = Collector::new();
    nexmark::query("q7", &builder, config)
        .unwrap()
        .to_sink(Box::new(by_dsl.sink()));
    run(builder.build().unwrap().into_queries().remove(0)).await;
    // (Its rows carry their time as well: the pair's, the later of the two.)
    let by_dsl: Vec<String> = fold(&by_dsl.batches(), 3).into_keys().collect();
    assert_eq!(by_dsl, want.into_keys().collect::<Vec<_>>());
    // A window belongs to the select it is written in: its bounds are that select's, and
    // another select's WINDOWSTART has none.
    for (sql, message) in [
        (
            "SELECT WINDOWSTART AS w, best FROM (SELECT MAX(price) AS best FROM nexmark \
             WINDOW TUMBLING (SIZE 10 SECONDS)) EMIT FINAL",
            "WINDOWSTART and WINDOWEND exist only in a query with a WINDOW clause",
        ),
        (
            "SELECT best FROM (SELECT price AS best FROM nexmark \
             WINDOW TUMBLING (SIZE 10 SECONDS)) EMIT FINAL",
            "a WINDOW clause needs an aggregation",
        ),
        (
            "SELECT best FROM (SELECT MAX(price) AS best FROM nexmark \
             WINDOW TUMBLING (SIZE 10 SECONDS) WINDOW TUMBLING (SIZE 5 SECONDS)) EMIT FINAL",
            "a query has one WINDOW clause",
        ),
        (
            "SELECT b.auction FROM nexmark b JOIN (SELECT MAX(price) AS best FROM nexmark \
             WINDOW TUMBLING (SIZE 10 SECONDS)) m WITHIN 10 SECONDS ON b.price = m.best \
             EMIT FINAL",
            "'m' has no event time to join WITHIN a time bound: select its rowtime (a \
             windowed aggregation's is its window's: WINDOWEND AS rowtime)",
        ),
    ] {
        let e = engine
            .continuous_query("bad", sql, vec![])
            .await
            .unwrap_err();
        assert!(e.message.contains(message), "{sql}: {e}");
    }
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_aggregation_of_an_aggregation_follows_its_groups_updates() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, engine) = engine(dir.path()).await;
    // How many auctions got n bids: an auction moves from n to n + 1 with each bid.
    let by_sql = continuous(
        &engine,
        "SELECT n, COUNT(*) AS auctions FROM
           (SELECT auction, COUNT(*) AS n FROM nexmark WHERE event_type = 2 GROUP BY auction)
         GROUP BY n EMIT CHANGES",
        1,
    )
    .await;
    let want = truth(
        &all_events().await,
        "SELECT n, COUNT(*) FROM
           (SELECT auction, COUNT(*) AS n FROM ev WHERE event_type = 2 GROUP BY auction)
         GROUP BY n",
        1,
    )
    .await;
    assert!(want.len() > 3, "{want:?}");
    assert_eq!(by_sql, want);
    // Without the inner groups' key its rows cannot be told apart.
    let e = engine
        .continuous_query(
            "bad",
            "SELECT n, COUNT(*) AS auctions FROM
               (SELECT COUNT(*) AS n FROM nexmark WHERE event_type = 2 GROUP BY auction)
             GROUP BY n EMIT CHANGES",
            vec![],
        )
        .await
        .unwrap_err();
    assert!(
        e.message
            .contains("its GROUP BY column 'auction' is not selected"),
        "{e}"
    );
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn q9_and_top_n_rank_as_row_number_does_over_all_the_events() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, engine) = engine(dir.path()).await;
    let ctx = all_events().await;
    // q9: each auction's winning bid among its bids of its first 10 s (top 1 per auction).
    let by_sql = continuous(
        &engine,
        "SELECT id, price FROM
           (SELECT a.id, a.seller, b.bidder, b.price,
                   ROW_NUMBER() OVER (PARTITION BY a.id ORDER BY b.price DESC) AS rn
            FROM (SELECT id, seller, rowtime FROM nexmark WHERE event_type = 1) a
            JOIN (SELECT auction, bidder, price, rowtime FROM nexmark WHERE event_type = 2) b
            WITHIN 10 SECONDS ON a.id = b.auction AND b.rowtime >= a.rowtime)
         WHERE rn = 1 EMIT CHANGES",
        1,
    )
    .await;
    let want = truth(
        &ctx,
        "SELECT a.id, MAX(b.price) FROM ev a JOIN ev b
           ON a.id = b.auction AND b.rowtime >= a.rowtime
          AND CAST(b.rowtime AS BIGINT) - CAST(a.rowtime AS BIGINT) <= 10000
         WHERE a.event_type = 1 AND b.event_type = 2 GROUP BY a.id",
        1,
    )
    .await;
    assert!(want.len() > 100, "{}", want.len());
    assert_eq!(by_sql, want);
    // The three lowest bids of each bidder, by rank (ties rank in arrival order, and have the
    // same price whichever comes first).
    let by_sql = continuous(
        &engine,
        "SELECT bidder, rn, price FROM
           (SELECT bidder, price, auction,
                   ROW_NUMBER() OVER (PARTITION BY bidder ORDER BY price) AS rn
            FROM nexmark WHERE event_type = 2)
         WHERE rn < 4 EMIT CHANGES",
        2,
    )
    .await;
    let want = truth(
        &ctx,
        "SELECT bidder, rn, price FROM
           (SELECT bidder, price,
                   ROW_NUMBER() OVER (PARTITION BY bidder ORDER BY price) AS rn
            FROM ev WHERE event_type = 2)
         WHERE rn < 4",
        2,
    )
    .await;
    assert!(want.len() > 100, "{}", want.len());
    assert_eq!(by_sql, want);
    // What a top-N cannot be.
    for (sql, message) in [
        (
            "SELECT * FROM (SELECT bidder, price, ROW_NUMBER() OVER (PARTITION BY bidder \
             ORDER BY price, auction) AS rn FROM nexmark) WHERE rn <= 2 EMIT CHANGES",
            "orders by one column",
        ),
        (
            "SELECT * FROM (SELECT bidder, price, ROW_NUMBER() OVER (PARTITION BY bidder \
             ORDER BY price * 2) AS rn FROM nexmark) WHERE rn <= 2 EMIT CHANGES",
            "orders by a column",
        ),
        (
            "SELECT * FROM (SELECT bidder, price, ROW_NUMBER() OVER (PARTITION BY bidder \
             ORDER BY price) AS rn FROM nexmark) EMIT CHANGES",
            "OVER (...) window functions cannot run on a stream",
        ),
    ] {
        let e = engine
            .continuous_query("bad", sql, vec![Box::new(Collector::new().sink())])
            .await
            .unwrap_err();
        assert!(e.message.contains(message), "{sql}: {e}");
    }
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn q3_a_stream_joined_with_a_table_an_aggregating_subquery_makes() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, engine) = engine(dir.path()).await;
    // Auctions of category 10 with their seller's name: the persons as a table keyed by id,
    // each auction meeting its seller's row as of the auction's time.
    let by_sql = continuous(
        &engine,
        "SELECT a.auction_id, p.name FROM
           (SELECT id AS auction_id, seller, category, rowtime FROM nexmark
            WHERE event_type = 1) a
         JOIN (SELECT id, LATEST_BY_OFFSET(name) AS name FROM nexmark WHERE event_type = 0
               GROUP BY id) p
         ON a.seller = p.id
         WHERE a.category = 10 EMIT CHANGES",
        1,
    )
    .await;
    let want = truth(
        &all_events().await,
        "SELECT a.id, p.name FROM ev a JOIN ev p ON a.seller = p.id AND p.rowtime <= a.rowtime
         WHERE a.event_type = 1 AND p.event_type = 0 AND a.category = 10",
        1,
    )
    .await;
    assert!(want.len() > 50, "{}", want.len());
    assert_eq!(by_sql, want);
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
}
