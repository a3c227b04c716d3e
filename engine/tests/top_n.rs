//! Top-N per key against a batch oracle: the changelog of the top bids per auction, folded by
//! (auction, rank), ends as `ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC) <= 3`
//! over the whole input, at one and at several tasks, and in a store; on the way, each rank
//! holds real bids of its auction at prices that only rise.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::util::display::array_value_to_string;
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext, col};
use quiver_engine::dsl::StreamsBuilder;
use quiver_engine::{Collector, MemorySource, QueryOptions, Runtime};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Utf8, false),
        Field::new("bidder", DataType::Int64, false),
        Field::new("price", DataType::Int64, false),
        Field::new(
            "rowtime",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]))
}

/// Bids on 12 auctions; every price is different.
fn bids(n: usize) -> RecordBatch {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let auctions: Vec<String> = (0..n).map(|_| format!("a{:02}", next() % 12)).collect();
    let prices: Vec<i64> = (0..n as i64).map(|i| (i * 7_919) % 100_003).collect();
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                auctions.iter().map(String::as_str),
            )),
            Arc::new(Int64Array::from_iter_values(0..n as i64)),
            Arc::new(Int64Array::from(prices)),
            Arc::new(TimestampMillisecondArray::from_iter_values(0..n as i64)),
        ],
    )
    .unwrap()
}

fn cells(b: &RecordBatch, r: usize, columns: &[&str]) -> Vec<String> {
    columns
        .iter()
        .map(|c| array_value_to_string(b.column_by_name(c).unwrap(), r).unwrap())
        .collect()
}

#[tokio::test]
async fn the_top_bids_per_auction_end_as_row_number_over_the_whole_input() {
    let all = bids(3_000);
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    ctx.register_table(
        "bids",
        Arc::new(MemTable::try_new(schema(), vec![vec![all.clone()]]).unwrap()),
    )
    .unwrap();
    let sql = "SELECT auction, rn, bidder, price FROM (SELECT *, ROW_NUMBER() OVER \
               (PARTITION BY auction ORDER BY price DESC) AS rn FROM bids) WHERE rn <= 3";
    let mut want = Vec::new();
    for b in ctx.sql(sql).await.unwrap().collect().await.unwrap() {
        for r in 0..b.num_rows() {
            want.push(cells(&b, r, &["auction", "rn", "bidder", "price"]).join(" | "));
        }
    }
    want.sort();
    assert_eq!(want.len(), 36);
    let sent: std::collections::BTreeSet<String> = (0..all.num_rows())
        .map(|r| cells(&all, r, &["auction", "bidder", "price"]).join(" | "))
        .collect();

    for parallelism in [1, 3] {
        let batches = (0..30)
            .map(|i| (i % 3, all.slice(i as usize * 100, 100)))
            .collect();
        let source = Arc::new(MemorySource::new(schema(), batches).unwrap());
        let builder = StreamsBuilder::new().with_options(QueryOptions {
            parallelism,
            ..QueryOptions::default()
        });
        let top = builder
            .stream("bids", source)
            .unwrap()
            .top_n(["auction"], "price", true, 3)
            .unwrap();
        assert_eq!(top.key(), ["auction", "rank"]);
        let collector = Collector::new();
        let store = format!("top-{parallelism}");
        top.materialize(&store)
            .unwrap()
            .to_stream()
            .select([col("auction"), col("rank"), col("bidder"), col("price")])
            .unwrap()
            .to_collector(&collector);
        let runtime = Runtime::without_broker();
        runtime
            .run(builder.build().unwrap())
            .await
            .unwrap()
            .wait()
            .await
            .unwrap();
        let mut last = BTreeMap::new();
        let mut changes = 0;
        // Bids only arrive, so the k-th highest price of an auction never falls: each rank's
        // changes (one task emits all of an auction's, in order) are real bids at rising prices.
        let mut price_of_rank: BTreeMap<(String, String), i64> = BTreeMap::new();
        for b in collector.batches() {
            for r in 0..b.num_rows() {
                let row = cells(&b, r, &["auction", "rank", "bidder", "price"]);
                let bid = format!("{} | {} | {}", row[0], row[2], row[3]);
                assert!(sent.contains(&bid), "{bid} is not a bid that was sent");
                let price: i64 = row[3].parse().unwrap();
                let rank = (row[0].clone(), row[1].clone());
                if let Some(before) = price_of_rank.insert(rank.clone(), price) {
                    assert!(
                        price > before,
                        "rank {rank:?} fell from {before} to {price} at parallelism {parallelism}"
                    );
                }
                last.insert(rank, row.join(" | "));
                changes += 1;
            }
        }
        // Rows moved down and out as better bids came.
        assert!(changes > 36, "{changes} changes");
        let got: Vec<String> = last.into_values().collect();
        assert_eq!(got, want, "parallelism {parallelism}");
        let scan = runtime.store(&store).unwrap().scan().unwrap();
        let mut stored: Vec<String> = (0..scan.num_rows())
            .map(|r| cells(&scan, r, &["auction", "rank", "bidder", "price"]).join(" | "))
            .collect();
        stored.sort();
        assert_eq!(stored, want, "store at parallelism {parallelism}");
    }
}
