//! Table–table joins against a batch oracle: two changelogs with updates and deletes joined
//! by the streaming join, folded into their final table, equal the inner, left and full outer
//! join of the two final tables computed once by DataFusion; at one and at several tasks, and
//! in a store.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::util::display::array_value_to_string;
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext, col};
use quiver_engine::dsl::StreamsBuilder;
use quiver_engine::format::DELETED;
use quiver_engine::{Collector, JoinKind, MemorySource, QueryOptions, Runtime};

fn schema(value: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new(value, DataType::Int64, true),
        Field::new(
            "rowtime",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new(DELETED, DataType::Boolean, false),
    ]))
}

/// A changelog of `n` changes over 40 keys: mostly upserts, one in `delete_every` a delete.
fn changes(n: usize, delete_every: u64, mut seed: u64) -> Vec<(String, Option<i64>)> {
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..n)
        .map(|_| {
            let k = format!("k{:02}", next() % 40);
            let v = (next() % delete_every != 0).then(|| (next() % 1000) as i64);
            (k, v)
        })
        .collect()
}

fn batch(value: &str, changes: &[(String, Option<i64>)], t0: i64) -> RecordBatch {
    RecordBatch::try_new(
        schema(value),
        vec![
            Arc::new(StringArray::from_iter_values(
                changes.iter().map(|c| c.0.as_str()),
            )),
            Arc::new(Int64Array::from_iter(changes.iter().map(|c| c.1))),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                (0..changes.len() as i64).map(|i| t0 + i),
            )),
            Arc::new(BooleanArray::from_iter(
                changes.iter().map(|c| Some(c.1.is_none())),
            )),
        ],
    )
    .unwrap()
}

/// A changelog as a keyed topic holds one: a key's changes in one partition (of two), in order.
fn table(value: &str, changes: &[(String, Option<i64>)]) -> Arc<MemorySource> {
    let mut batches = Vec::new();
    for p in 0..2 {
        let mine: Vec<(String, Option<i64>)> = changes
            .iter()
            .filter(|(k, _)| k.as_bytes()[k.len() - 1] % 2 == p as u8)
            .cloned()
            .collect();
        for (i, c) in mine.chunks(9).enumerate() {
            batches.push((p, batch(value, c, i as i64 * 9)));
        }
    }
    Arc::new(
        MemorySource::new(schema(value), batches)
            .unwrap()
            .as_table(&["id"])
            .unwrap(),
    )
}

/// The final value per key of a changelog (deleted keys absent).
fn last(changes: &[(String, Option<i64>)]) -> Vec<(String, i64)> {
    let mut out = BTreeMap::new();
    for (k, v) in changes {
        match v {
            Some(v) => out.insert(k.clone(), *v),
            None => out.remove(k),
        };
    }
    out.into_iter().collect()
}

async fn oracle(
    a: &[(String, Option<i64>)],
    b: &[(String, Option<i64>)],
    join: &str,
) -> Vec<String> {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    for (name, value, changes) in [("a", "x", a), ("b", "y", b)] {
        let rows = last(changes);
        let s = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new(value, DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            s.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    rows.iter().map(|r| r.0.as_str()),
                )),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .unwrap();
        let t = MemTable::try_new(s, vec![vec![batch]]).unwrap();
        ctx.register_table(name, Arc::new(t)).unwrap();
    }
    let sql = format!("SELECT coalesce(a.id, b.id), a.x, b.y FROM a {join} b ON a.id = b.id");
    let out = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
    let mut rows = Vec::new();
    for b in &out {
        for r in 0..b.num_rows() {
            let cells: Vec<String> = b
                .columns()
                .iter()
                .map(|c| array_value_to_string(c, r).unwrap())
                .collect();
            rows.push(cells.join(" | "));
        }
    }
    rows.sort();
    rows
}

/// Folds a changelog (id, x, y, deleted) into its final rows.
fn fold(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = BTreeMap::new();
    for b in batches {
        let deleted = b.column_by_name(DELETED).unwrap();
        let deleted = deleted.as_any().downcast_ref::<BooleanArray>().unwrap();
        for r in 0..b.num_rows() {
            let cells: Vec<String> = ["id", "x", "y"]
                .iter()
                .map(|c| array_value_to_string(b.column_by_name(c).unwrap(), r).unwrap())
                .collect();
            if deleted.value(r) {
                out.remove(&cells[0]);
            } else {
                out.insert(cells[0].clone(), cells.join(" | "));
            }
        }
    }
    out.into_values().collect()
}

#[tokio::test]
async fn inner_left_and_full_table_joins_end_as_the_join_of_the_final_tables() {
    let a = changes(700, 6, 0x9e37_79b9_7f4a_7c15);
    let b = changes(500, 5, 0x2545_f491_4f6c_dd1d);
    for (kind, sql) in [
        (JoinKind::Inner, "JOIN"),
        (JoinKind::Left, "LEFT JOIN"),
        (JoinKind::Full, "FULL JOIN"),
    ] {
        let want = oracle(&a, &b, sql).await;
        assert!(want.len() > 10, "{kind:?}: {want:?}");
        for parallelism in [1, 3] {
            let builder = StreamsBuilder::new().with_options(QueryOptions {
                parallelism,
                ..QueryOptions::default()
            });
            let ta = builder.table_from("a", table("x", &a)).unwrap();
            let tb = builder.table_from("b", table("y", &b)).unwrap();
            let joined = match kind {
                JoinKind::Inner => ta.join(&tb),
                JoinKind::Left => ta.left_join(&tb),
                JoinKind::Full => ta.outer_join(&tb),
            }
            .unwrap();
            assert_eq!(joined.key(), ["id"]);
            let collector = Collector::new();
            let store = format!("joined-{kind:?}-{parallelism}");
            joined
                .materialize(&store)
                .unwrap()
                .to_stream()
                .select([col("id"), col("x"), col("y"), col(DELETED)])
                .unwrap()
                .to_collector(&collector);
            let runtime = Runtime::without_broker();
            let running = runtime.run(builder.build().unwrap()).await.unwrap();
            running.wait().await.unwrap();
            let batches = collector.batches();
            // Updates and deletes flowed through: the changelog is longer than the result.
            let changes: usize = batches.iter().map(RecordBatch::num_rows).sum();
            assert!(changes > want.len(), "{kind:?}: {changes} changes");
            assert_eq!(
                fold(&batches),
                want,
                "{kind:?} at parallelism {parallelism}"
            );
            // The store holds the same final table.
            let scan = runtime.store(&store).unwrap().scan().unwrap();
            assert_eq!(fold(&[scan]), want, "{kind:?} store");
        }
    }
}

#[test]
fn tables_with_different_key_widths_cannot_join() {
    let builder = StreamsBuilder::new();
    let ta = builder
        .table_from("a", table("x", &changes(10, 3, 1)))
        .unwrap();
    let tb = builder
        .stream("b", table("y", &changes(10, 3, 2)))
        .unwrap()
        .select([col("id"), col("y"), col("rowtime")])
        .unwrap()
        .to_table(["id", "y"])
        .unwrap();
    let err = ta.join(&tb).unwrap_err().to_string();
    assert!(err.contains("pairs the tables' key columns"), "{err}");
}

#[tokio::test]
async fn map_values_keeps_the_key_and_deletes_of_a_table() {
    let a = changes(300, 4, 3);
    let builder = StreamsBuilder::new();
    let doubled = builder
        .table_from("a", table("x", &a))
        .unwrap()
        .map_values([
            (col("x") * datafusion::prelude::lit(2i64)).alias("x"),
            col("x").alias("y"),
        ])
        .unwrap();
    assert_eq!(doubled.key(), ["id"]);
    let collector = Collector::new();
    doubled
        .to_stream()
        .select([col("id"), col("x"), col("y"), col(DELETED)])
        .unwrap()
        .to_collector(&collector);
    Runtime::without_broker()
        .run(builder.build().unwrap())
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    let want: Vec<String> = last(&a)
        .into_iter()
        .map(|(k, v)| format!("{k} | {} | {v}", v * 2))
        .collect();
    assert_eq!(fold(&collector.batches()), want);
}
