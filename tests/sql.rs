//! `quiver shell` as a user drives it: scripts with `-f` (the SQL examples among them) and
//! statements on standard input, against a data directory; results as tables, push queries'
//! rows as they come, errors with their position, and the catalog and persistent queries back
//! after a restart.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod common;

use common::{COMMAND_TIMEOUT, DataDir, quiver, run_bounded};

fn shell(data: &DataDir, args: &[&str], stdin: &str) -> common::Output {
    let mut cmd = quiver();
    cmd.args(["shell", "--data-dir", data.arg()]).args(args);
    run_bounded(cmd, stdin.as_bytes(), COMMAND_TIMEOUT)
}

#[test]
fn the_pageviews_example_counts_views_per_region_and_minute() {
    let data = DataDir::new();
    let out = shell(&data, &["-f", "examples/sql/pageviews_per_region.sql"], "").ok();
    let lines = out.lines();
    assert!(
        lines.contains(&"Stream 'pageviews' created over topic 'pageviews'"),
        "{}",
        out.stdout
    );
    assert!(
        lines.contains(&"6 rows inserted into 'pageviews'"),
        "{}",
        out.stdout
    );
    // The batch query over the history, as a table.
    let history = lines
        .iter()
        .position(|l| l.starts_with("region  views"))
        .unwrap();
    assert_eq!(
        lines[history + 1..history + 4],
        ["eu      3", "us      3", "(2 rows)"]
    );
    // The two windows that closed, once each.
    let push = lines
        .iter()
        .position(|l| *l == "region | window_start | views")
        .unwrap();
    let mut closed = lines[push + 1..push + 3].to_vec();
    closed.sort_unstable();
    assert_eq!(
        closed,
        [
            "eu | 2026-01-01T00:00:00 | 3",
            "us | 2026-01-01T00:00:00 | 1"
        ]
    );
    assert_eq!(lines[push + 3], "(2 rows)");
    // The persistent query wrote its table's topic, and runs again after a restart.
    let out = shell(&data, &[], "SHOW QUERIES;\nSELECT region, views, users FROM views_per_region ORDER BY region, windowstart;\n").ok();
    assert!(
        out.stdout.contains("CTAS_VIEWS_PER_REGION_1  RUNNING"),
        "{}",
        out.stdout
    );
    let table: Vec<&str> = out
        .lines()
        .into_iter()
        .skip_while(|l| !l.starts_with("region  views  users"))
        .collect();
    assert_eq!(
        table[1..],
        [
            "eu      3      2",
            "us      1      1",
            "us      2      2",
            "(3 rows)"
        ],
        "{}",
        out.stdout
    );
}

#[test]
fn the_fraud_rule_example_flags_the_card_with_two_risky_payments() {
    let data = DataDir::new();
    let out = shell(&data, &["-f", "examples/sql/fraud_rule.sql"], "").ok();
    let flagged: Vec<&str> = out
        .lines()
        .into_iter()
        .filter(|l| l.contains("\"card_id\""))
        .collect();
    // card-1's two payments abroad fall together in five of its ten-minute windows.
    assert_eq!(flagged.len(), 5, "{}", out.stdout);
    assert!(flagged.iter().all(|l| l.contains(r#""card_id":"card-1""#)
        && l.contains(r#""risky_payments":2,"total":1420.0"#)));
}

#[test]
fn the_enrichment_example_joins_each_order_with_its_customer_as_of_the_order() {
    let data = DataDir::new();
    let out = shell(&data, &["-f", "examples/sql/orders_enrichment.sql"], "").ok();
    let lines = out.lines();
    let push = lines
        .iter()
        .position(|l| *l == "order_id | amount | customer | region")
        .unwrap_or_else(|| panic!("{}", out.stdout));
    let mut enriched = lines[push + 1..push + 6].to_vec();
    enriched.sort_unstable();
    assert_eq!(
        enriched,
        [
            "o-1 | 25.0 | Ada | eu",
            "o-2 | 40.0 | Bo | us",
            "o-3 | 99.0 | null | null",
            "o-4 | 15.0 | Ada | us",
            "o-5 | 10.0 | Bo | us"
        ],
        "{}",
        out.stdout
    );
    // The table over the inner join: the unknown customer's order counts nowhere. The
    // persistent query runs again in the next shell and catches up.
    let mut table = Vec::new();
    for _ in 0..20 {
        let out = shell(
            &data,
            &[],
            "SELECT region, orders, revenue FROM revenue_per_region ORDER BY region;\n",
        )
        .ok();
        table = out
            .lines()
            .into_iter()
            .skip_while(|l| !l.starts_with("region"))
            .map(str::to_owned)
            .collect();
        if table.len() == 4 && table[2].starts_with("us      3") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert_eq!(
        table[1..],
        ["eu      1       25.0", "us      3       65.0", "(2 rows)"],
        "{table:?}"
    );
}

#[test]
fn a_bad_statement_on_standard_input_is_reported_with_its_position() {
    let data = DataDir::new();
    let err = shell(
        &data,
        &[],
        "CREATE STREAM s (a INT) WITH (KAFKA_TOPIC='s', VALUE_FORMAT='JSON', PARTITIONS=1);\nSELECT b FROM s;\n",
    )
    .failed_with_output();
    assert!(err.contains("No field named b"), "{err}");
    assert!(err.contains("at line 2, column 8"), "{err}");
}

#[test]
fn the_shell_at_a_terminal_edits_lines_cancels_queries_with_ctrl_c_and_keeps_history() {
    let data = DataDir::new();
    let home = tempfile::tempdir().unwrap();
    let mut cmd =
        common::python::command("shell_pty.py", &[env!("CARGO_BIN_EXE_quiver"), data.arg()]);
    cmd.env("HOME", home.path());
    // The script starts the binary itself: keep the test run's own settings (`QUIVER_PYTHON`)
    // out of its environment, where they would read as server config.
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|n| n.starts_with("QUIVER_")) {
            cmd.env_remove(&name);
        }
    }
    cmd.env_remove("RUST_LOG");
    // The script bounds each step itself (a minute); on a loaded machine the whole takes long.
    run_bounded(cmd, b"", std::time::Duration::from_secs(300)).ok();
    // The statements typed are the next session's history.
    let history = std::fs::read_to_string(home.path().join(".quiver_history")).unwrap();
    assert!(history.contains("SHOW STREAMS;"), "{history}");
    assert!(
        history.contains("SELECT k, v FROM s EMIT CHANGES;"),
        "{history}"
    );
}
