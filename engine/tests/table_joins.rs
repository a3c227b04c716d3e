//! Table–table joins against a batch oracle: two changelogs with updates and deletes joined
//! by the streaming join, folded into their final table, equal the inner, left and full outer
//! join of the two final tables computed once by DataFusion; at one and at several tasks, and
//! in a store; and each key's changes on the way are states the inputs pass through.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
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
    common::rows(&ctx.sql(&sql).await.unwrap().collect().await.unwrap())
}

/// The joined row of a key whose inputs hold `x` and `y`, as the changelog prints it.
fn joined_row(kind: JoinKind, key: &str, x: &Option<i64>, y: &Option<i64>) -> Option<String> {
    let present = match kind {
        JoinKind::Inner => x.is_some() && y.is_some(),
        JoinKind::Left => x.is_some(),
        JoinKind::Full => x.is_some() || y.is_some(),
    };
    let cell = |v: &Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
    present.then(|| format!("{key} | {} | {}", cell(x), cell(y)))
}

const COLUMNS: [&str; 3] = ["id", "x", "y"];

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
            let emitted = common::changes_by_key(&batches, &COLUMNS);
            let what = format!("{kind:?} at parallelism {parallelism}");
            assert_eq!(common::fold(&emitted), want, "{what}");
            common::assert_join_history(
                &emitted,
                &common::histories(&a),
                &common::histories(&b),
                |key, x, y| joined_row(kind, key, x, y),
                &what,
            );
            // The store holds the same final table.
            let scan = runtime.store(&store).unwrap().scan().unwrap();
            let stored = common::changes_by_key(&[scan], &COLUMNS);
            assert_eq!(common::fold(&stored), want, "{kind:?} store");
        }
    }
}

#[test]
fn the_history_check_refuses_a_change_no_interleaving_gives() {
    // Key k: x goes 1 then 2, y is 5. A join that emitted the row with x = 1 after the one
    // with x = 2 (a stale row) is refused; the two in order pass.
    let x = common::histories(&[("k".to_string(), Some(1)), ("k".to_string(), Some(2))]);
    let y = common::histories(&[("k".to_string(), Some(5))]);
    let row = |v: i64| Some(format!("k | {v} | 5"));
    let check = |changes: Vec<Option<String>>| {
        let emitted = BTreeMap::from([("k".to_string(), changes)]);
        std::panic::catch_unwind(|| {
            common::assert_join_history(
                &emitted,
                &x,
                &y,
                |key, x, y| joined_row(JoinKind::Inner, key, x, y),
                "inner",
            )
        })
        .is_ok()
    };
    assert!(check(vec![row(1), row(2)]));
    assert!(check(vec![row(2)]));
    assert!(!check(vec![row(2), row(1)]), "a stale row passed");
    assert!(!check(vec![row(3)]), "a row no input gives passed");
    assert!(!check(vec![None]), "a delete of nothing passed");
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
    let emitted = common::changes_by_key(&collector.batches(), &COLUMNS);
    assert_eq!(common::fold(&emitted), want);
}
