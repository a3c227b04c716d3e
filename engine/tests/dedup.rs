//! Deduplication against a batch oracle: the records that pass are, per key and window, the
//! first of each (`ROW_NUMBER() OVER (PARTITION BY key, window ORDER BY rowtime) = 1` over
//! the whole input), at one and at several tasks; a repeat whose window closed is late.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod common;

use std::sync::Arc;

use common::rows;

use arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext, col};
use quiver_engine::dsl::StreamsBuilder;
use quiver_engine::{Collector, MemorySource, QueryOptions, Runtime};

const WINDOW: i64 = 1_000;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("seq", DataType::Int64, false),
        Field::new(
            "rowtime",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]))
}

/// Events every 7 ms, each sent one to three times (the repeats up to 900 ms later), in time
/// order, split by event id over two partitions as a keyed topic would.
fn sent(events: usize) -> Vec<(i32, RecordBatch)> {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut rows: Vec<(String, i64)> = Vec::new();
    for e in 0..events {
        let t = e as i64 * 7;
        for r in 0..1 + next() % 3 {
            rows.push((format!("e{e}"), t + r as i64 * (next() % 450) as i64));
        }
    }
    rows.sort_by_key(|r| r.1);
    let mut out = Vec::new();
    for p in 0..2 {
        let mine: Vec<&(String, i64)> = rows
            .iter()
            .filter(|(id, _)| id[1..].parse::<usize>().unwrap() % 2 == p as usize)
            .collect();
        for chunk in mine.chunks(50) {
            let batch = RecordBatch::try_new(
                schema(),
                vec![
                    Arc::new(StringArray::from_iter_values(
                        chunk.iter().map(|r| r.0.as_str()),
                    )),
                    Arc::new(Int64Array::from_iter_values(chunk.iter().map(|r| r.1))),
                    Arc::new(TimestampMillisecondArray::from_iter_values(
                        chunk.iter().map(|r| r.1),
                    )),
                ],
            )
            .unwrap();
            out.push((p, batch));
        }
    }
    // Read in about time order, as partitions consumed side by side are (the batches of one
    // overlap those of the other in time: the grace period covers it).
    out.sort_by_key(|(_, b)| {
        b.column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0)
    });
    out
}

#[tokio::test]
async fn the_first_record_per_key_and_window_passes_and_repeats_are_dropped() {
    let batches = sent(1_500);
    let all: Vec<RecordBatch> = batches.iter().map(|(_, b)| b.clone()).collect();
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    ctx.register_table(
        "sent",
        Arc::new(MemTable::try_new(schema(), vec![all]).unwrap()),
    )
    .unwrap();
    let sql = format!(
        "SELECT event_id, seq, rowtime FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY \
         event_id, CAST(rowtime AS BIGINT) / {WINDOW} ORDER BY rowtime) AS rn FROM sent) \
         WHERE rn = 1"
    );
    let want = rows(&ctx.sql(&sql).await.unwrap().collect().await.unwrap());
    let total: usize = batches.iter().map(|(_, b)| b.num_rows()).sum();
    assert!(
        want.len() > 1_500 && want.len() < total,
        "{} of {total}",
        want.len()
    );

    for parallelism in [1, 3] {
        let builder = StreamsBuilder::new().with_options(QueryOptions {
            parallelism,
            ..QueryOptions::default()
        });
        let source = Arc::new(MemorySource::new(schema(), batches.clone()).unwrap());
        let collector = Collector::new();
        builder
            .stream("sent", source)
            .unwrap()
            .dedup([col("event_id")], WINDOW, 2 * WINDOW)
            .unwrap()
            .to_collector(&collector);
        let running = Runtime::without_broker()
            .run(builder.build().unwrap())
            .await
            .unwrap();
        let metrics = running.wait().await.unwrap();
        assert_eq!(metrics[0].late_rows, 0);
        assert_eq!(
            rows(&collector.batches()),
            want,
            "parallelism {parallelism}"
        );
    }
}

#[tokio::test]
async fn a_repeat_whose_window_closed_is_late() {
    let mut batches = sent(300);
    // e1 again, long after its window closed.
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from(vec!["e1"])),
            Arc::new(Int64Array::from(vec![7])),
            Arc::new(TimestampMillisecondArray::from(vec![7])),
        ],
    )
    .unwrap();
    batches.push((0, batch));
    let builder = StreamsBuilder::new().with_options(QueryOptions {
        parallelism: 1,
        ..QueryOptions::default()
    });
    let collector = Collector::new();
    builder
        .stream(
            "sent",
            Arc::new(MemorySource::new(schema(), batches).unwrap()),
        )
        .unwrap()
        .dedup([col("event_id")], WINDOW, WINDOW + WINDOW / 2)
        .unwrap()
        .to_collector(&collector);
    let metrics = Runtime::without_broker()
        .run(builder.build().unwrap())
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(metrics[0].late_rows, 1);
}
