//! Joins in Quiver SQL: a stream enriched by a table as of each record's time, a join of two
//! streams within a time bound, an aggregation over a join, and the errors for joins that
//! cannot run continuously.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use quiver_sql::ErrorKind;

mod common;
use common::{ok, open, rows, wait_for, wait_rows};

const SETUP: &str = "
    CREATE TABLE customers (id STRING PRIMARY KEY, name STRING, region STRING)
        WITH (KAFKA_TOPIC='customers', VALUE_FORMAT='JSON', PARTITIONS=2);
    CREATE STREAM orders (order_id STRING KEY, customer_id STRING, amount DOUBLE, ms BIGINT)
        WITH (KAFKA_TOPIC='orders', VALUE_FORMAT='JSON', PARTITIONS=2, TIMESTAMP='ms');
    CREATE STREAM shipments (order_id STRING KEY, carrier STRING, ms BIGINT)
        WITH (KAFKA_TOPIC='shipments', VALUE_FORMAT='JSON', PARTITIONS=2, TIMESTAMP='ms');
    SET 'auto.offset.reset' = 'earliest';
    -- Ada moves from eu to us at 5 s; c3 is nobody.
    INSERT INTO customers (rowtime, id, name, region) VALUES
        (1000, 'c1', 'Ada', 'eu'), (1000, 'c2', 'Bo', 'us'), (5000, 'c1', 'Ada', 'us');
    INSERT INTO orders (order_id, customer_id, amount, ms) VALUES
        ('o1', 'c1', 10, 2000), ('o2', 'c2', 20, 3000), ('o3', 'c3', 30, 4000),
        ('o4', 'c1', 40, 6000);
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_joined_with_a_table_sees_each_row_as_of_the_records_time() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, engine) = open(dir.path()).await;
    ok(&engine, SETUP).await;
    ok(
        &engine,
        "CREATE STREAM enriched AS
             SELECT o.order_id, o.amount, c.name, c.region
             FROM orders o LEFT JOIN customers c ON o.customer_id = c.id
             EMIT CHANGES;",
    )
    .await;
    // A later order moves event time past the last one, so every order before it is joined.
    ok(
        &engine,
        "INSERT INTO orders (order_id, customer_id, amount, ms) VALUES ('o5', 'c2', 50, 60000);",
    )
    .await;
    let got = wait_rows(
        &engine,
        "SELECT order_id, amount, name, region FROM enriched ORDER BY order_id;",
        4,
    )
    .await;
    assert_eq!(
        &got[..4],
        [
            "o1|10.0|Ada|eu",
            "o2|20.0|Bo|us",
            "o3|30.0|null|null",
            "o4|40.0|Ada|us"
        ]
    );
    // A condition on the joined row filters the joined rows.
    ok(
        &engine,
        "CREATE STREAM us_orders AS
             SELECT o.order_id, c.name FROM orders o JOIN customers c ON o.customer_id = c.id
             WHERE c.region = 'us' AND o.amount >= 20
             EMIT CHANGES;",
    )
    .await;
    let got = wait_rows(
        &engine,
        "SELECT order_id, name FROM us_orders ORDER BY order_id;",
        3,
    )
    .await;
    assert_eq!(got, ["o2|Bo", "o4|Ada", "o5|Bo"]);
    // An inner join drops the order without a customer (o3); the aggregate over it is a
    // table: us has o2, o4 (Ada had moved) and o5.
    ok(
        &engine,
        "CREATE TABLE revenue_by_region AS
             SELECT c.region, SUM(o.amount) AS revenue, COUNT(*) AS orders
             FROM orders o JOIN customers c ON o.customer_id = c.id
             GROUP BY c.region EMIT CHANGES;",
    )
    .await;
    let last = wait_for(
        &engine,
        "SELECT region, revenue, orders FROM revenue_by_region ORDER BY region;",
        |last| last.len() == 2 && last[1] == "us|110.0|3",
    )
    .await;
    assert_eq!(last, ["eu|10.0|1", "us|110.0|3"]);
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
}

/// Moves both streams' time on past every join's bound (an order o8 shipped at once, at
/// 99,000 s), so the unmatched orders are known to be unmatched.
async fn past_every_bound(engine: &quiver_sql::SqlEngine) {
    ok(
        engine,
        "INSERT INTO orders (order_id, customer_id, amount, ms) VALUES ('o8', 'c2', 1, 99000000);
         INSERT INTO shipments (order_id, carrier, ms) VALUES ('o8', 'van', 99000000);",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_streams_join_within_a_time_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, engine) = open(dir.path()).await;
    ok(&engine, SETUP).await;
    // o1 ships within the hour, o2 two hours late, o3 never.
    ok(
        &engine,
        "INSERT INTO shipments (order_id, carrier, ms) VALUES
             ('o1', 'post', 602000), ('o2', 'van', 7203000), ('o9', 'post', 9000000);",
    )
    .await;
    ok(
        &engine,
        "CREATE STREAM shipped AS
             SELECT o.order_id, s.carrier, (s.ms - o.ms) / 1000 AS after_s
             FROM orders o LEFT JOIN shipments s WITHIN 1 HOUR ON o.order_id = s.order_id
             EMIT CHANGES;",
    )
    .await;
    past_every_bound(&engine).await;
    let got = wait_rows(
        &engine,
        "SELECT order_id, carrier, after_s FROM shipped ORDER BY order_id;",
        5,
    )
    .await;
    assert_eq!(
        &got[..4],
        [
            "o1|post|600",
            "o2|null|null",
            "o3|null|null",
            "o4|null|null"
        ],
        "{got:?}"
    );
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
}

/// The lines of `EXPLAIN sql`, and the index of the first that contains `what`.
async fn explain(
    engine: &quiver_sql::SqlEngine,
    sql: &str,
) -> (Vec<String>, impl Fn(&str) -> usize) {
    let lines = rows(engine, &format!("EXPLAIN {sql}")).await;
    let find = {
        let lines = lines.clone();
        move |what: &str| {
            lines
                .iter()
                .position(|l| l.contains(what))
                .unwrap_or_else(|| panic!("no '{what}' in the plan:\n{}", lines.join("\n")))
        }
    };
    (lines, find)
}

/// Conditions that read one stream's columns run before the join, where they filter the same
/// rows; those on a table, on the side a join keeps unmatched, or on the pair's time stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditions_on_one_stream_run_before_its_join() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, engine) = open(dir.path()).await;
    ok(&engine, SETUP).await;
    // Stream–table: the order's condition moves below the join, the customer's stays above
    // (a filter below a table would drop the update that moves Ada out of eu).
    let (lines, at) = explain(
        &engine,
        "SELECT o.order_id, c.name FROM orders o JOIN customers c ON o.customer_id = c.id
         WHERE c.region = 'us' AND o.amount >= 20 EMIT CHANGES",
    )
    .await;
    let join = at("StreamTableJoin");
    assert!(at("o.amount >= ") > join, "{lines:#?}");
    assert!(at("c.region = ") < join, "{lines:#?}");
    // Two streams, a left join: the left's WHERE and the right's ON conditions move; the
    // right's WHERE stays (it sees the unmatched orders' nulls), as does the pair's time.
    let left_join = "SELECT o.order_id, s.carrier FROM orders o
         LEFT JOIN shipments s WITHIN 3 HOURS ON o.order_id = s.order_id AND s.carrier = 'van'
         WHERE o.amount >= 20 AND s.ms IS NULL OR o.amount >= 40 EMIT CHANGES";
    let (lines, at) = explain(&engine, left_join).await;
    let join = at("StreamStreamJoin");
    assert!(at("s.carrier = ") > join, "{lines:#?}");
    assert!(at("OR o.amount >= ") < join, "{lines:#?}");
    let (lines, at) = explain(
        &engine,
        "SELECT o.order_id, s.carrier FROM orders o
         LEFT JOIN shipments s WITHIN 3 HOURS ON o.order_id = s.order_id
         WHERE o.amount >= 20 AND s.carrier IS NULL AND o.rowtime > 0 EMIT CHANGES",
    )
    .await;
    let join = at("StreamStreamJoin");
    assert!(at("o.amount >= ") > join, "{lines:#?}");
    assert!(at("s.carrier IS NULL") < join, "{lines:#?}");
    assert!(at("o.rowtime > ") < join, "{lines:#?}");
    // The rows are those the conditions give over the joined rows: o1 ships by post, o2 by
    // van two hours late, o3 and o4 never; o8 is small.
    ok(
        &engine,
        "INSERT INTO shipments (order_id, carrier, ms) VALUES
             ('o1', 'post', 602000), ('o2', 'van', 7203000);
         CREATE STREAM unshipped AS SELECT o.order_id, s.carrier FROM orders o
             LEFT JOIN shipments s WITHIN 3 HOURS ON o.order_id = s.order_id
             WHERE o.amount >= 20 AND s.carrier IS NULL EMIT CHANGES;
         CREATE STREAM by_van AS SELECT o.order_id, s.carrier FROM orders o
             LEFT JOIN shipments s WITHIN 3 HOURS ON o.order_id = s.order_id AND s.carrier = 'van'
             WHERE o.amount >= 10 EMIT CHANGES;",
    )
    .await;
    past_every_bound(&engine).await;
    let got = wait_rows(
        &engine,
        "SELECT order_id, carrier FROM unshipped ORDER BY order_id;",
        2,
    )
    .await;
    assert_eq!(got, ["o3|null", "o4|null"]);
    let got = wait_rows(
        &engine,
        "SELECT order_id, carrier FROM by_van ORDER BY order_id;",
        4,
    )
    .await;
    assert_eq!(got, ["o1|null", "o2|van", "o3|null", "o4|null"]);
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
}

/// `WITHIN (before, after)`: the right's records from `before` ahead of the left's time to
/// `after` behind it; a RIGHT JOIN written the other way round gives the same pairs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_streams_join_within_bounds_before_and_after() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, engine) = open(dir.path()).await;
    ok(&engine, SETUP).await;
    // Shipments of o1 2 s before its order, o2 30 s after, o3 2 min after, o4 6 s before.
    ok(
        &engine,
        "INSERT INTO shipments (order_id, carrier, ms) VALUES
             ('o1', 'post', 0), ('o2', 'van', 33000), ('o3', 'post', 124000), ('o4', 'van', 0);",
    )
    .await;
    ok(
        &engine,
        "CREATE STREAM shipped AS
             SELECT o.order_id, s.carrier
             FROM orders o LEFT JOIN shipments s WITHIN (5 SECONDS, 1 MINUTE)
             ON o.order_id = s.order_id EMIT CHANGES;
         CREATE STREAM shipped_right AS
             SELECT o.order_id, s.carrier
             FROM shipments s RIGHT JOIN orders o WITHIN (1 MINUTE, 5 SECONDS)
             ON s.order_id = o.order_id EMIT CHANGES;",
    )
    .await;
    past_every_bound(&engine).await;
    for stream in ["shipped", "shipped_right"] {
        let got = wait_rows(
            &engine,
            &format!("SELECT order_id, carrier FROM {stream} ORDER BY order_id;"),
            5,
        )
        .await;
        assert_eq!(
            &got[..4],
            ["o1|post", "o2|van", "o3|null", "o4|null"],
            "{stream}: {got:?}"
        );
    }
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_that_cannot_run_continuously_say_why_and_where() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, engine) = open(dir.path()).await;
    ok(&engine, SETUP).await;
    let cases: &[(&str, &str, (u64, u64))] = &[
        (
            "SELECT * FROM orders o JOIN shipments s ON o.order_id = s.order_id EMIT CHANGES;",
            "needs a time bound",
            (1, 1),
        ),
        (
            "SELECT * FROM customers c JOIN orders o ON o.customer_id = c.id EMIT CHANGES;",
            "written stream first",
            (1, 1),
        ),
        (
            "SELECT * FROM orders o JOIN customers c ON o.customer_id = c.name EMIT CHANGES;",
            "PRIMARY KEY (id)",
            (1, 1),
        ),
        (
            "SELECT * FROM orders o\n  JOIN customers c WITHIN 1 HOUR ON o.customer_id = c.id EMIT CHANGES;",
            "needs none",
            (2, 20),
        ),
        (
            "SELECT * FROM orders o JOIN shipments s WITHIN 1 PARSEC ON o.order_id = s.order_id \
             EMIT CHANGES;",
            "not a time unit",
            (1, 50),
        ),
        (
            "SELECT * FROM orders o JOIN shipments s WITHIN 1 HOUR ON o.ms < s.ms EMIT CHANGES;",
            "equality between the two sides",
            (1, 41),
        ),
        (
            "SELECT * FROM orders o FULL JOIN customers c ON o.customer_id = c.id EMIT CHANGES;",
            "[INNER] JOIN or LEFT JOIN",
            (1, 1),
        ),
        (
            "SELECT * FROM orders WITHIN 1 HOUR EMIT CHANGES;",
            "WITHIN belongs to a join",
            (1, 22),
        ),
    ];
    for (sql, message, (line, column)) in cases {
        let e = engine.execute(sql).await.unwrap_err();
        let kind = if message.contains("time unit") {
            ErrorKind::Syntax
        } else {
            ErrorKind::Statement
        };
        assert_eq!(e.kind, kind, "{sql}: {e}");
        assert!(e.message.contains(message), "{sql}: {e}");
        let p = e.position.unwrap();
        assert_eq!((p.line, p.column), (*line, *column), "{sql}: {e}");
    }
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tables_join_on_their_keys_into_a_table_that_follows_both() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, engine) = open(dir.path()).await;
    ok(&engine, SETUP).await;
    ok(
        &engine,
        "CREATE TABLE accounts (id STRING PRIMARY KEY, tier STRING)
             WITH (KAFKA_TOPIC='accounts', VALUE_FORMAT='JSON', PARTITIONS=2);
         INSERT INTO accounts (rowtime, id, tier) VALUES (1000, 'c1', 'gold');
         CREATE TABLE customer_tiers AS
             SELECT c.id, c.name, a.tier FROM customers c LEFT JOIN accounts a ON c.id = a.id
             EMIT CHANGES;",
    )
    .await;
    let query = "SELECT id, name, tier FROM customer_tiers ORDER BY id;";
    let want = ["c1|Ada|gold", "c2|Bo|null"];
    let got = wait_for(&engine, query, |got| got == want).await;
    assert_eq!(got, want);
    // An update on either side updates the joined row.
    ok(
        &engine,
        "INSERT INTO accounts (rowtime, id, tier) VALUES (7000, 'c2', 'silver'), (7000, 'c1', 'platinum');",
    )
    .await;
    let want = ["c1|Ada|platinum", "c2|Bo|silver"];
    let got = wait_for(&engine, query, |got| got == want).await;
    assert_eq!(got, want);
    let described = rows(&engine, "DESCRIBE customer_tiers;").await;
    assert_eq!(described[1], "id|STRING (primary key)", "{described:?}");
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_aggregated_by_a_column_follows_its_rows_as_they_move_and_leave() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, engine) = open(dir.path()).await;
    ok(&engine, SETUP).await;
    ok(
        &engine,
        "CREATE TABLE customers_per_region AS
             SELECT region, COUNT(*) AS customers, COUNT(name) AS named FROM customers
             GROUP BY region EMIT CHANGES;
         CREATE TABLE busy_regions AS
             SELECT region, customers FROM
                 (SELECT region, COUNT(*) AS customers FROM customers GROUP BY region)
             WHERE customers > 1 EMIT CHANGES;",
    )
    .await;
    // Ada moved from eu to us: eu has nobody left, so it is not in the table.
    let query = "SELECT region, customers, named FROM customers_per_region ORDER BY region;";
    let want = ["us|2|2"];
    let got = wait_for(&engine, query, |got| got == want).await;
    assert_eq!(got, want);
    ok(
        &engine,
        "INSERT INTO customers (rowtime, id, name, region) VALUES
             (8000, 'c2', 'Bo', 'apac'), (8000, 'c3', 'Cy', 'apac');",
    )
    .await;
    let want = ["apac|2|2", "us|1|1"];
    let got = wait_for(&engine, query, |got| got == want).await;
    assert_eq!(got, want);
    // Through a subquery and a WHERE: us falls to one customer and leaves the busy regions.
    let busy = "SELECT region, customers FROM busy_regions ORDER BY region;";
    let got = wait_for(&engine, busy, |got| got == ["apac|2"]).await;
    assert_eq!(got, ["apac|2"]);
    let described = rows(&engine, "DESCRIBE customers_per_region;").await;
    assert_eq!(described[1], "region|STRING (primary key)", "{described:?}");
    // MAX would need every value of a group kept to take one back.
    let e = engine
        .execute(
            "CREATE TABLE top_names AS SELECT region, MAX(name) FROM customers GROUP BY region;",
        )
        .await
        .unwrap_err();
    assert!(e.message.contains("MAX cannot aggregate a table"), "{e}");
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_joined_on_a_foreign_key_follows_moves_and_partner_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, engine) = open(dir.path()).await;
    ok(&engine, SETUP).await;
    ok(
        &engine,
        "CREATE TABLE subscriptions (id STRING PRIMARY KEY, customer_id STRING, plan STRING)
             WITH (KAFKA_TOPIC='subscriptions', VALUE_FORMAT='JSON', PARTITIONS=3);
         INSERT INTO subscriptions (rowtime, id, customer_id, plan) VALUES
             (1000, 's1', 'c1', 'pro'), (1000, 's2', 'c2', 'free'), (1000, 's3', 'c9', 'pro');
         CREATE TABLE subscription_owners AS
             SELECT s.id, s.plan, c.name FROM subscriptions s LEFT JOIN customers c
             ON s.customer_id = c.id EMIT CHANGES;",
    )
    .await;
    let query = "SELECT id, plan, name FROM subscription_owners ORDER BY id;";
    let want = ["s1|pro|Ada", "s2|free|Bo", "s3|pro|null"];
    let got = wait_for(&engine, query, |got| got == want).await;
    assert_eq!(got, want);
    // s2 moves to Ada; Ada's rename reaches both her subscriptions; c9 appears for s3.
    ok(
        &engine,
        "INSERT INTO subscriptions (rowtime, id, customer_id, plan) VALUES (9000, 's2', 'c1', 'free');
         INSERT INTO customers (rowtime, id, name, region) VALUES
             (9000, 'c1', 'Ada L.', 'us'), (9000, 'c9', 'Cy', 'eu');",
    )
    .await;
    let want = ["s1|pro|Ada L.", "s2|free|Ada L.", "s3|pro|Cy"];
    let got = wait_for(&engine, query, |got| got == want).await;
    assert_eq!(got, want);
    let described = rows(&engine, "DESCRIBE subscription_owners;").await;
    assert_eq!(described[1], "id|STRING (primary key)", "{described:?}");
    let e = engine
        .execute(
            "CREATE TABLE nope AS SELECT s.id, c.name FROM subscriptions s FULL JOIN customers c \
             ON s.customer_id = c.id;",
        )
        .await
        .unwrap_err();
    assert!(e.message.contains("is [INNER] JOIN or LEFT JOIN"), "{e}");
    engine.shutdown().await.unwrap();
    broker.shutdown().await.unwrap();
}
