//! The runnable examples in `examples/` (built by `cargo test` with the tests): each runs to
//! the end against its embedded broker and prints the results a reader of it expects.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{COMMAND_TIMEOUT, run_bounded};

/// An example's binary, next to the `quiver` binary's directory.
fn example(name: &str) -> Command {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_quiver"));
    let dir = bin.parent().expect("the binary has a directory");
    let mut cmd = Command::new(dir.join("examples").join(name));
    cmd.env_remove("RUST_LOG");
    cmd
}

#[test]
fn word_count_prints_a_table_of_counts_as_it_updates() {
    let out = run_bounded(example("word_count"), b"", COMMAND_TIMEOUT).ok();
    // The topology, then one line per update; the last update of a word is its count.
    assert!(out.stdout.contains("Query query_1"), "{}", out.stdout);
    assert!(out.stdout.contains("--> aggregate_"), "{}", out.stdout);
    let mut last = std::collections::BTreeMap::new();
    for line in out.lines() {
        if let Some(json) = line.strip_prefix("[word-counts]: ") {
            let v: serde_json::Value = serde_json::from_str(json).unwrap();
            last.insert(
                v["word"].as_str().unwrap().to_owned(),
                v["count"].as_i64().unwrap(),
            );
        }
    }
    assert_eq!(last.get("the"), Some(&4), "{}", out.stdout);
    assert_eq!(last.get("streams"), Some(&2));
    assert_eq!(last.get("sea"), Some(&2));
    assert_eq!(last.get("again"), Some(&1));
    assert_eq!(last.len(), 17, "{last:?}");
    assert!(out.stdout.contains("done: 4 lines read"), "{}", out.stdout);
}

#[test]
fn page_views_emit_one_count_per_user_and_minute_and_route_the_late_view() {
    let out = run_bounded(example("page_views"), b"", COMMAND_TIMEOUT).ok();
    let w = |m: u32, user: &str, n: u32| {
        format!(
            r#"  {user} {{"window_start":"2026-01-01T00:{m:02}:00","window_end":"2026-01-01T00:{:02}:00","views":{n}}}"#,
            m + 1
        )
    };
    let lines = out.lines();
    for want in [
        w(0, "alice", 2),
        w(0, "bob", 2),
        w(1, "alice", 1),
        w(1, "bob", 1),
        w(2, "carol", 1),
    ] {
        assert!(
            lines.contains(&want.as_str()),
            "missing {want}\n{}",
            out.stdout
        );
    }
    assert!(
        !out.stdout.contains("dave {"),
        "the last window is still open\n{}",
        out.stdout
    );
    assert!(
        lines.contains(&r#"  {"user":"alice","rowtime":"2026-01-01T00:00:10"}"#),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("late rows counted: 1"),
        "{}",
        out.stdout
    );
}

#[test]
fn orders_enrichment_joins_each_order_with_its_customer_as_of_the_orders_time() {
    let out = run_bounded(example("orders_enrichment"), b"", COMMAND_TIMEOUT).ok();
    assert!(out.stdout.contains("--> join_1"), "{}", out.stdout);
    let mut enriched = std::collections::BTreeMap::new();
    for line in out.lines() {
        if let Some(json) = line.strip_prefix("[orders-enriched]: ") {
            let v: serde_json::Value = serde_json::from_str(json).unwrap();
            let tier = v["tier"].as_str().map(str::to_owned);
            enriched.insert(v["order_id"].as_i64().unwrap(), tier);
        }
    }
    let want = [
        (1, Some("gold")),
        // Placed before Brian moved up, though the change was read first.
        (2, Some("silver")),
        // No such customer.
        (3, None),
        (4, Some("gold")),
        // Placed after Cleo left.
        (5, None),
        (6, Some("gold")),
    ]
    .map(|(id, tier)| (id, tier.map(str::to_owned)));
    assert_eq!(
        enriched,
        std::collections::BTreeMap::from(want),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("done: 6 orders enriched"),
        "{}",
        out.stdout
    );
}

#[test]
fn connector_configs_in_examples_are_valid() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/connectors");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 5, "{files:?}");
    for f in files {
        // The stores they name are not running here: check every key and value only.
        let mut cmd = common::quiver();
        cmd.args(["connect", "validate", "--offline", f.to_str().unwrap()]);
        let out = run_bounded(cmd, b"", COMMAND_TIMEOUT).ok();
        assert!(out.stdout.contains(": ok: connector '"), "{}", out.stdout);
    }
}
