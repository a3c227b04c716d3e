//! The Nexmark queries in Quiver SQL, as [`quiver_engine::nexmark::query`] writes them in the
//! DSL, over the generator's events registered as the stream `nexmark`
//! ([`crate::SqlEngine::register_stream`]). The SQL bench runs each next to its DSL program;
//! `sql/tests/nexmark.rs` checks their final rows against DataFusion's over all the events.
//!
//! - q3's persons are a table made by an aggregating subquery (`LATEST_BY_OFFSET(name) …
//!   GROUP BY id`), where the DSL turns the persons' stream into a table directly; its category
//!   filter is in the auctions' subquery, before the join, where the DSL has it (a `WHERE` on
//!   the auctions' columns above the join would move there too).
//! - q7's maxima are a windowed aggregation in a subquery, joined back to the bids as the
//!   stream of each window's final maximum (`EMIT FINAL`), at the window's end (`WINDOWEND AS
//!   rowtime`).

/// Each query's name and SQL.
pub const QUERIES: &[(&str, &str)] = &[
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
        "q7",
        "SELECT b.auction, b.bidder, b.price FROM
           (SELECT auction, bidder, price, rowtime FROM nexmark WHERE event_type = 2) b
         JOIN
           (SELECT MAX(price) AS top, WINDOWSTART AS window_start, WINDOWEND AS rowtime
            FROM nexmark WINDOW TUMBLING (SIZE 10 SECONDS) WHERE event_type = 2) m
         WITHIN (0 SECONDS, 10 SECONDS) ON b.price = m.top AND b.rowtime >= m.window_start
         EMIT FINAL",
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

/// The SQL of query `name` (`q0` … `q11`), if it has one.
pub fn query(name: &str) -> Option<&'static str> {
    QUERIES.iter().find(|(n, _)| *n == name).map(|(_, q)| *q)
}
