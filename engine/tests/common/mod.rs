//! Helpers the engine's test binaries share.

#![allow(dead_code)] // Each test binary uses some of them.

use std::collections::BTreeMap;

use arrow::array::{AsArray, RecordBatch};
use arrow::util::display::array_value_to_string;
use quiver_engine::format::DELETED;

/// Each row of `batches` as its cells joined by ` | `, sorted: results to compare with an
/// oracle's whatever order they came in.
pub fn rows(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            let cells: Vec<String> = b
                .columns()
                .iter()
                .map(|c| array_value_to_string(c, r).expect("a printable cell"))
                .collect();
            out.push(cells.join(" | "));
        }
    }
    out.sort();
    out
}

/// A table's changes per key, in the order they were emitted: `Some(row)` an upsert (the
/// `columns`' cells joined by ` | `, a null as the empty string), `None` a delete. The key is
/// the first of `columns`. Each key's changes come from the one task that owns it, so they
/// keep its order whatever the number of tasks.
pub fn changes_by_key(
    batches: &[RecordBatch],
    columns: &[&str],
) -> BTreeMap<String, Vec<Option<String>>> {
    let mut out: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
    for b in batches {
        let deleted = b.column_by_name(DELETED).map(|c| c.as_boolean().clone());
        for r in 0..b.num_rows() {
            let cells: Vec<String> = columns
                .iter()
                .map(|c| {
                    let column = b.column_by_name(c).expect("a column of the changelog");
                    array_value_to_string(column, r).expect("a printable cell")
                })
                .collect();
            let change = match &deleted {
                Some(d) if d.value(r) => None,
                _ => Some(cells.join(" | ")),
            };
            out.entry(cells[0].clone()).or_default().push(change);
        }
    }
    out
}

/// The latest row per key of a changelog from [`changes_by_key`].
pub fn fold(changes: &BTreeMap<String, Vec<Option<String>>>) -> Vec<String> {
    changes
        .values()
        .filter_map(|c| c.last().cloned().flatten())
        .collect()
}

/// Each key's states as its input changes one at a time: absent first, then the state after
/// each change (`None` for a delete).
pub fn histories<V: Clone>(changes: &[(String, Option<V>)]) -> BTreeMap<String, Vec<Option<V>>> {
    let mut out: BTreeMap<String, Vec<Option<V>>> = BTreeMap::new();
    for (k, v) in changes {
        out.entry(k.clone())
            .or_insert_with(|| vec![None])
            .push(v.clone());
    }
    out
}

/// Asserts that a join's changelog passes only through states the join's inputs pass
/// through: each key's changes are `join(left state, right state)` for positions in the two
/// inputs' histories of that key (from [`histories`]) that never move back, whatever way the
/// two inputs interleave. A half-applied update, a retraction emitted after its replacement, a
/// stale row or a delete of a row that is not there fails, with the key and its changes so
/// far.
pub fn assert_join_history<L: std::fmt::Debug, R: std::fmt::Debug>(
    emitted: &BTreeMap<String, Vec<Option<String>>>,
    left: &BTreeMap<String, Vec<Option<L>>>,
    right: &BTreeMap<String, Vec<Option<R>>>,
    join: impl Fn(&str, &Option<L>, &Option<R>) -> Option<String>,
    what: &str,
) {
    let (absent_left, absent_right) = (vec![None], vec![None]);
    for (key, changes) in emitted {
        let l = left.get(key).unwrap_or(&absent_left);
        let r = right.get(key).unwrap_or(&absent_right);
        let width = r.len();
        // reach[i * width + j]: the inputs may be at (i, j) after the changes so far.
        let mut reach = vec![false; l.len() * width];
        reach[0] = true;
        let mut before: Option<&String> = None;
        for (n, change) in changes.iter().enumerate() {
            assert!(
                change.is_some() || before.is_some(),
                "{what}: key {key} deleted when it held no row; changes {:?}",
                &changes[..=n]
            );
            // Every position at or after a reachable one...
            for i in 0..l.len() {
                for j in 0..width {
                    let up = i > 0 && reach[(i - 1) * width + j];
                    let left_of = j > 0 && reach[i * width + j - 1];
                    reach[i * width + j] |= up || left_of;
                }
            }
            // ...where the join of the inputs is this change.
            let mut any = false;
            for (i, a) in l.iter().enumerate() {
                for (j, b) in r.iter().enumerate() {
                    let at = i * width + j;
                    reach[at] = reach[at] && join(key, a, b) == *change;
                    any |= reach[at];
                }
            }
            assert!(
                any,
                "{what}: key {key} emitted {change:?}, which no interleaving of its inputs \
                 gives after the changes before it; changes {:?}, left {:?}, right {:?}",
                &changes[..=n],
                l,
                r
            );
            before = change.as_ref();
        }
    }
}

/// Every record of `topic` from its start, as a reader at `isolation` sees it now.
pub async fn records(
    b: &quiver_broker::Broker,
    topic: &str,
    isolation: quiver_broker::Isolation,
) -> Vec<quiver_broker::Record> {
    let options = quiver_broker::ReaderOptions {
        isolation,
        ..quiver_broker::ReaderOptions::default()
    };
    let mut reader = b
        .topic_reader(topic, quiver_broker::StartAt::Earliest, options)
        .expect("a reader of the topic");
    let mut out = Vec::new();
    loop {
        let batches = reader
            .next_batches(std::time::Duration::ZERO)
            .await
            .expect("a read of the topic");
        if batches.is_empty() {
            return out;
        }
        for batch in batches {
            out.extend(quiver_broker::batch_to_records(&batch.records).expect("its records"));
        }
    }
}

/// The latest value per key of a keyed topic of JSON values, as a `read_committed` reader
/// sees it now (a tombstone deletes its key): each as `row(key, value)`, in key order.
pub async fn committed_table(
    b: &quiver_broker::Broker,
    topic: &str,
    row: impl Fn(&str, &serde_json::Value) -> String,
) -> Vec<String> {
    let mut last = BTreeMap::new();
    for r in records(b, topic, quiver_broker::Isolation::ReadCommitted).await {
        let key = String::from_utf8(r.key.expect("a keyed record").to_vec()).expect("a text key");
        match r.value {
            None => {
                last.remove(&key);
            }
            Some(v) => {
                let v: serde_json::Value = serde_json::from_slice(&v).expect("a JSON value");
                let row = row(&key, &v);
                last.insert(key, row);
            }
        }
    }
    last.into_values().collect()
}

/// Waits (up to 10 s) until [`committed_table`] of `topic` is `want`.
pub async fn wait_for_table(
    b: &quiver_broker::Broker,
    topic: &str,
    want: &[String],
    row: impl Fn(&str, &serde_json::Value) -> String,
    what: &str,
) {
    for _ in 0..400 {
        if committed_table(b, topic, &row).await == want {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let got = committed_table(b, topic, &row).await;
    assert_eq!(got, want, "timed out waiting until {what}");
}
