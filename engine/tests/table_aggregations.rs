//! Aggregations of tables (`Table::group_by`): a changelog of users who move between regions
//! and leave, aggregated per region, folds into the GROUP BY of the final table computed once
//! by DataFusion, at one and at several tasks; a group whose last row leaves is deleted; state
//! restored from a snapshot goes on as the original; functions that cannot take a row back
//! are refused. On the way, each region's changes are states the input passes through.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::util::display::array_value_to_string;
use datafusion::datasource::MemTable;
use datafusion::functions_aggregate::expr_fn::{avg, count, count_distinct, max, sum};
use datafusion::prelude::{SessionConfig, SessionContext, col, lit};
use quiver_engine::dsl::{StreamsBuilder, Table};
use quiver_engine::format::DELETED;
use quiver_engine::operator::{Emit, Operator};
use quiver_engine::plan::{PlanOptions, plan_query};
use quiver_engine::{Collector, EmitMode, MemorySource, QueryOptions, Runtime};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("region", DataType::Utf8, true),
        Field::new("score", DataType::Int64, true),
        Field::new(
            "rowtime",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new(DELETED, DataType::Boolean, false),
    ]))
}

/// A user's row: region and score (`None`: the user is deleted).
type Change = (String, Option<(String, Option<i64>)>);

/// `n` changes over 60 users in 7 regions: moves, score changes, null scores, deletes.
fn changes(n: usize, mut seed: u64) -> Vec<Change> {
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..n)
        .map(|_| {
            let id = format!("u{:02}", next() % 60);
            let row = (next() % 7 != 0).then(|| {
                let region = format!("r{}", next() % 7);
                let score = (next() % 9 != 0).then(|| (next() % 100) as i64);
                (region, score)
            });
            (id, row)
        })
        .collect()
}

fn batch(changes: &[Change], t0: i64) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                changes.iter().map(|c| c.0.as_str()),
            )),
            Arc::new(StringArray::from_iter(
                changes.iter().map(|c| c.1.as_ref().map(|r| r.0.as_str())),
            )),
            Arc::new(Int64Array::from_iter(
                changes.iter().map(|c| c.1.as_ref().and_then(|r| r.1)),
            )),
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

/// Batches as a keyed topic holds them: a user's changes in one partition (of two), in order.
fn batches(changes: &[Change]) -> Vec<(i32, RecordBatch)> {
    let mut out = Vec::new();
    for p in 0..2 {
        let mine: Vec<Change> = changes
            .iter()
            .filter(|(k, _)| k.as_bytes()[k.len() - 1] % 2 == p as u8)
            .cloned()
            .collect();
        for (i, c) in mine.chunks(11).enumerate() {
            out.push((p, batch(c, i as i64 * 11)));
        }
    }
    out
}

fn users(builder: &StreamsBuilder, changes: &[Change]) -> Table {
    let source = MemorySource::new(schema(), batches(changes))
        .unwrap()
        .as_table(&["id"])
        .unwrap();
    builder.table_from("users", Arc::new(source)).unwrap()
}

fn by_region(users: &Table) -> Table {
    users
        .group_by([col("region")])
        .unwrap()
        .aggregate([
            count(lit(1)).alias("users"),
            count(col("score")).alias("scored"),
            sum(col("score")).alias("total"),
            avg(col("score")).alias("mean"),
        ])
        .unwrap()
}

const COLUMNS: [&str; 5] = ["region", "users", "scored", "total", "mean"];

fn cells(b: &RecordBatch, r: usize) -> Vec<String> {
    COLUMNS
        .iter()
        .map(|c| array_value_to_string(b.column_by_name(c).unwrap(), r).unwrap())
        .collect()
}

/// The GROUP BY of the final table, computed once.
async fn oracle(changes: &[Change]) -> Vec<String> {
    let mut last = BTreeMap::new();
    for (id, row) in changes {
        match row {
            Some(r) => last.insert(id.clone(), r.clone()),
            None => last.remove(id),
        };
    }
    let s = Arc::new(Schema::new(vec![
        Field::new("region", DataType::Utf8, true),
        Field::new("score", DataType::Int64, true),
    ]));
    let batch = RecordBatch::try_new(
        s.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(
                last.values().map(|r| r.0.as_str()),
            )),
            Arc::new(Int64Array::from_iter(last.values().map(|r| r.1))),
        ],
    )
    .unwrap();
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    ctx.register_table(
        "users",
        Arc::new(MemTable::try_new(s, vec![vec![batch]]).unwrap()),
    )
    .unwrap();
    let out = ctx
        .sql(
            "SELECT region, count(1) AS users, count(score) AS scored, sum(score) AS total, \
             avg(score) AS mean FROM users GROUP BY region",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut rows: Vec<String> = out
        .iter()
        .flat_map(|b| (0..b.num_rows()).map(move |r| cells(b, r).join(" | ")))
        .collect();
    rows.sort();
    rows
}

/// Folds a changelog of regions into its final rows.
fn fold(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = BTreeMap::new();
    for b in batches {
        let deleted = b.column_by_name(DELETED).unwrap();
        let deleted = deleted.as_any().downcast_ref::<BooleanArray>().unwrap();
        for r in 0..b.num_rows() {
            let cells = cells(b, r);
            if deleted.value(r) {
                assert!(
                    out.remove(&cells[0]).is_some(),
                    "a delete of region {} that was not in the table",
                    cells[0]
                );
            } else {
                out.insert(cells[0].clone(), cells.join(" | "));
            }
        }
    }
    out.into_values().collect()
}

/// A region's users, users with a score, and the scores' total (`None`: no users).
type RegionState = Option<(i64, i64, i64)>;

/// Each region's states as partition `p`'s users change one at a time (the two partitions
/// hold different users, so a region's row is the sum of its states in the two).
fn region_histories(changes: &[Change], p: u8) -> BTreeMap<String, Vec<RegionState>> {
    let mut users: BTreeMap<&str, (&str, Option<i64>)> = BTreeMap::new();
    let mut out: BTreeMap<String, Vec<RegionState>> = BTreeMap::new();
    for (id, row) in changes {
        if id.as_bytes()[id.len() - 1] % 2 != p {
            continue;
        }
        let before = users.get(id.as_str()).map(|u| u.0);
        match row {
            Some((region, score)) => users.insert(id, (region, *score)),
            None => users.remove(id.as_str()),
        };
        let after = row.as_ref().map(|r| r.0.as_str());
        for region in [before, after].into_iter().flatten() {
            let mine = users.values().filter(|u| u.0 == region);
            let state = mine.fold((0, 0, 0), |(n, scored, total), u| {
                (
                    n + 1,
                    scored + i64::from(u.1.is_some()),
                    total + u.1.unwrap_or(0),
                )
            });
            let state = (state.0 > 0).then_some(state);
            let history = out.entry(region.to_string()).or_insert_with(|| vec![None]);
            if history.last() != Some(&state) {
                history.push(state);
            }
        }
    }
    out
}

/// A region's row when the two partitions' users in it are `a` and `b`, as the changelog
/// prints it (a total of no scores is null).
fn region_row(region: &str, a: &RegionState, b: &RegionState) -> Option<String> {
    let (n, scored, total) = [a, b]
        .into_iter()
        .flatten()
        .fold((0, 0, 0), |s, x| (s.0 + x.0, s.1 + x.1, s.2 + x.2));
    let total = if scored == 0 {
        String::new()
    } else {
        total.to_string()
    };
    (n > 0).then(|| format!("{region} | {n} | {scored} | {total}"))
}

#[tokio::test]
async fn a_table_grouped_by_a_column_ends_as_the_group_by_of_the_final_table() {
    let changes = changes(900, 0x9e37_79b9_7f4a_7c15);
    let want = oracle(&changes).await;
    assert!(want.len() >= 5, "{want:?}");
    for parallelism in [1, 3] {
        let builder = StreamsBuilder::new().with_options(QueryOptions {
            parallelism,
            ..QueryOptions::default()
        });
        let table = by_region(&users(&builder, &changes));
        assert_eq!(table.key(), ["region"]);
        let collector = Collector::new();
        let store = format!("regions-{parallelism}");
        table
            .materialize(&store)
            .unwrap()
            .to_stream()
            .to_collector(&collector);
        let runtime = Runtime::without_broker();
        runtime
            .run(builder.build().unwrap())
            .await
            .unwrap()
            .wait()
            .await
            .unwrap();
        let batches = collector.batches();
        let emitted: usize = batches.iter().map(RecordBatch::num_rows).sum();
        assert!(emitted > want.len(), "{emitted} changes");
        assert_eq!(fold(&batches), want, "at parallelism {parallelism}");
        // At one task the two partitions' changes arrive each in its order, so every change
        // of a region is its row after some prefix of each (never a user retracted from a
        // region without the update that moved it, say). At several tasks users are re-keyed
        // by id before they are re-grouped, so a region's rows interleave user by user, and
        // only the final table is compared.
        if parallelism == 1 {
            common::assert_join_history(
                &common::changes_by_key(&batches, &["region", "users", "scored", "total"]),
                &region_histories(&changes, 0),
                &region_histories(&changes, 1),
                region_row,
                "at one task",
            );
        }
        let scan = runtime.store(&store).unwrap().scan().unwrap();
        assert_eq!(
            fold(&[scan]),
            want,
            "the store at parallelism {parallelism}"
        );
    }
}

fn change(id: &str, region: Option<&str>, score: i64) -> Change {
    (id.into(), region.map(|r| (r.into(), Some(score))))
}

#[tokio::test]
async fn a_row_that_moves_leaves_its_old_group_and_an_emptied_group_is_deleted() {
    // One task, so each batch's changes come out together.
    let builder = StreamsBuilder::new().with_options(QueryOptions {
        parallelism: 1,
        ..QueryOptions::default()
    });
    let steps = [
        vec![
            change("a", Some("north"), 10),
            change("b", Some("north"), 5),
        ],
        vec![change("a", Some("south"), 7)],
        vec![change("b", None, 0)],
        vec![change("a", Some("south"), 7)],
        vec![change("a", Some("south"), 8)],
    ];
    let batches: Vec<(i32, RecordBatch)> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (0, batch(s, i as i64 * 10)))
        .collect();
    let source = MemorySource::new(schema(), batches)
        .unwrap()
        .as_table(&["id"])
        .unwrap();
    let table = builder.table_from("users", Arc::new(source)).unwrap();
    let collector = Collector::new();
    by_region(&table).to_stream().to_collector(&collector);
    Runtime::without_broker()
        .run(builder.build().unwrap())
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    let mut log = Vec::new();
    for b in collector.batches() {
        let deleted = b.column_by_name(DELETED).unwrap();
        let deleted = deleted.as_any().downcast_ref::<BooleanArray>().unwrap();
        for r in 0..b.num_rows() {
            let mut row = cells(&b, r).join(" | ");
            if deleted.value(r) {
                row.push_str(" (deleted)");
            }
            log.push(row);
        }
    }
    assert_eq!(
        log,
        [
            "north | 2 | 2 | 15 | 7.5",
            // a moves: north keeps b, south gets a.
            "north | 1 | 1 | 5 | 5.0",
            "south | 1 | 1 | 7 | 7.0",
            // b leaves: north is empty, so it is gone.
            "north |  |  |  |  (deleted)",
            // An update with the same values (a later time) restates south; a new score
            // changes it.
            "south | 1 | 1 | 7 | 7.0",
            "south | 1 | 1 | 8 | 8.0",
        ]
    );
}

/// The operators of a planned table aggregation, run in one chain.
struct Chain(Vec<Box<dyn Operator>>);

impl Chain {
    fn process(&mut self, batch: &RecordBatch) -> Vec<RecordBatch> {
        let mut current = vec![batch.clone()];
        for op in &mut self.0 {
            let mut emit = Emit::default();
            for b in &current {
                op.process(b, 0, &mut emit).unwrap();
            }
            current = emit.batches;
        }
        current
    }

    fn feed(&mut self, batches: &[(i32, RecordBatch)]) -> Vec<String> {
        let mut out = Vec::new();
        for (_, b) in batches {
            for o in self.process(b) {
                let deleted = o.column_by_name(DELETED).unwrap();
                let deleted = deleted.as_any().downcast_ref::<BooleanArray>().unwrap();
                for r in 0..o.num_rows() {
                    out.push(format!("{} {}", cells(&o, r).join(" | "), deleted.value(r)));
                }
            }
        }
        out
    }
}

#[test]
fn table_aggregation_state_restored_from_a_snapshot_goes_on_as_the_original() {
    let all = batches(&changes(700, 0x2545_f491_4f6c_dd1d));
    let (before, after) = all.split_at(all.len() / 2);
    let builder = StreamsBuilder::new();
    let plan = by_region(&users(&builder, &[])).to_stream().plan().clone();
    let mut original = Chain(
        plan_query(
            &plan,
            PlanOptions {
                emit: EmitMode::Changes,
            },
        )
        .unwrap()
        .operators,
    );
    let names: Vec<&str> = original.0.iter().map(|o| o.name()).collect();
    assert!(
        names.iter().any(|n| n.starts_with("regroup"))
            && names.iter().any(|n| n.starts_with("table_aggregate")),
        "{names:?}"
    );
    original.feed(before);
    let mut restored = Chain(original.0.iter().map(|o| o.fresh().unwrap()).collect());
    for (from, to) in original.0.iter_mut().zip(restored.0.iter_mut()) {
        if let Some(state) = from.snapshot().unwrap() {
            assert!(state.num_rows() > 0, "{}: no state", from.name());
            to.restore(&state).unwrap();
        }
    }
    let went_on = original.feed(after);
    assert!(went_on.len() > 10);
    assert_eq!(restored.feed(after), went_on);
}

#[test]
fn functions_that_cannot_take_a_row_back_are_refused_on_a_table() {
    for (aggregate, name) in [
        (max(col("score")), "MAX"),
        (count_distinct(col("score")), "COUNT(DISTINCT"),
    ] {
        let builder = StreamsBuilder::new();
        let table = users(&builder, &[])
            .group_by([col("region")])
            .unwrap()
            .aggregate([aggregate.alias("x")])
            .unwrap();
        table.to_stream().to_collector(&Collector::new());
        let err = builder.build().unwrap_err().to_string();
        assert!(
            err.contains(name) && err.contains("cannot aggregate a table"),
            "{err}"
        );
    }
}
