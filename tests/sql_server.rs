//! SQL over `quiver server`'s HTTP API with real Kafka clients around it: a stream over a topic
//! that kcat produces JSON to, a windowed CTAS whose output kcat reads, and the persistent
//! query going on after a graceful restart and after a `kill -9`, with no duplicates and no
//! gaps. Bad statements get a JSON error with their position and the server keeps serving.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{COMMAND_TIMEOUT, DataDir, Server, bootstrap_of, http, run_bounded, sql_address};

fn ksql(address: &str, statements: &str) -> serde_json::Value {
    let body = serde_json::json!({
        "ksql": statements,
        "streamsProperties": { "auto.offset.reset": "earliest" },
    })
    .to_string();
    let (status, text) = http(address, "POST", "/ksql", &body);
    assert_eq!(status, 200, "{statements}: {text}");
    serde_json::from_str(&text).unwrap()
}

fn kcat(bootstrap: &str, args: &[&str], input: &str) -> String {
    let mut cmd = Command::new("kcat");
    cmd.args(["-b", bootstrap]).args(args);
    let ran = run_bounded(cmd, input.as_bytes(), COMMAND_TIMEOUT);
    assert!(ran.status.success(), "kcat {args:?}: {}", ran.stderr);
    ran.stdout
}

/// Clicks at `minute` of 2026-01-01 for each of `users` in `region`.
fn clicks(region: &str, minute: i64, users: &[&str]) -> String {
    users
        .iter()
        .map(|u| {
            let ts = 1_767_225_600_000 + minute * 60_000;
            format!(r#"{u}|{{"region": "{region}", "ts": {ts}}}"#) + "\n"
        })
        .collect()
}

/// Each (region, window start)'s counts in the output topic, in the order they were written.
fn counts(bootstrap: &str) -> BTreeMap<String, Vec<i64>> {
    let out = kcat(
        bootstrap,
        &[
            "-C",
            "-t",
            "clicks_per_region",
            "-e",
            "-q",
            "-f",
            "%k\t%s\n",
        ],
        "",
    );
    let mut by_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for line in out.lines() {
        let (key, value) = line.split_once('\t').unwrap();
        let value: serde_json::Value = serde_json::from_str(value).unwrap();
        by_key
            .entry(key.to_owned())
            .or_default()
            .push(value["clicks"].as_i64().unwrap());
    }
    by_key
}

/// Waits until the counts' latest values sum to `total`.
fn wait_for(bootstrap: &str, total: i64) -> BTreeMap<String, Vec<i64>> {
    let start = Instant::now();
    loop {
        let c = counts(bootstrap);
        let sum: i64 = c.values().map(|v| *v.last().unwrap()).sum();
        if sum >= total || start.elapsed() > Duration::from_secs(60) {
            assert_eq!(sum, total, "{c:?}");
            return c;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_windowed_query_created_over_http_survives_restarts_and_kill_9_exactly_once() {
    let data = DataDir::new();
    let start = || Server::start(&["--data-dir", data.arg()], &[]);
    let mut server = start();
    let mut bootstrap = bootstrap_of(&server.ready);
    let mut sql = sql_address(&server.ready);
    let (status, health) = http(&sql, "GET", "/healthcheck", "");
    assert_eq!(status, 200, "{health}");

    let created = ksql(
        &sql,
        "CREATE STREAM clicks (user_id STRING KEY, region STRING, ts BIGINT) \
           WITH (KAFKA_TOPIC='clicks', VALUE_FORMAT='JSON', PARTITIONS=2, TIMESTAMP='ts');
         CREATE TABLE clicks_per_region AS SELECT region, COUNT(*) AS clicks FROM clicks \
           WINDOW TUMBLING (SIZE 1 MINUTE, GRACE PERIOD 1 HOUR) GROUP BY region EMIT CHANGES;",
    );
    assert_eq!(created.as_array().unwrap().len(), 2, "{created}");
    assert_eq!(
        created[1]["commandStatus"]["status"], "SUCCESS",
        "{created}"
    );

    kcat(
        &bootstrap,
        &["-P", "-t", "clicks", "-K", "|"],
        &(clicks("eu", 0, &["a", "b"]) + &clicks("us", 0, &["c"])),
    );
    wait_for(&bootstrap, 3);

    // A batch query over the stream's history, through the API.
    let listed = ksql(
        &sql,
        "SELECT region, COUNT(*) AS n FROM clicks GROUP BY region ORDER BY region;",
    );
    assert_eq!(
        listed[0]["rows"],
        serde_json::json!([["eu", 2], ["us", 1]]),
        "{listed}"
    );

    // A graceful restart: the query resumes from its checkpoint.
    server.signal("TERM");
    server.wait().ok();
    server = start();
    bootstrap = bootstrap_of(&server.ready);
    sql = sql_address(&server.ready);
    let queries = ksql(&sql, "SHOW QUERIES;");
    assert_eq!(queries[0]["rows"][0][1], "RUNNING", "{queries}");
    kcat(
        &bootstrap,
        &["-P", "-t", "clicks", "-K", "|"],
        &(clicks("eu", 0, &["d"]) + &clicks("eu", 1, &["a"])),
    );
    wait_for(&bootstrap, 5);

    // kill -9, then a start on the same data: still exactly once.
    server.signal("KILL");
    let killed = server.wait();
    assert!(!killed.status.success());
    let server = start();
    let bootstrap = bootstrap_of(&server.ready);
    kcat(
        &bootstrap,
        &["-P", "-t", "clicks", "-K", "|"],
        &(clicks("us", 0, &["e"]) + &clicks("us", 1, &["f", "g"])),
    );
    let finals = wait_for(&bootstrap, 8);
    // Counts only go up (a replayed record would repeat one, a lost one end lower) and end at
    // the number of clicks.
    for (key, c) in &finals {
        assert!(c.windows(2).all(|w| w[0] < w[1]), "{key}: {finals:?}");
    }
    let last: Vec<i64> = finals.values().map(|c| *c.last().unwrap()).collect();
    assert_eq!(last, [3, 1, 2, 2], "{finals:?}");

    // A push query over HTTP streams rows, ending at its LIMIT.
    let sql = sql_address(&server.ready);
    let body = serde_json::json!({
        "sql": "SELECT user_id, region FROM clicks WHERE region = 'us' EMIT CHANGES LIMIT 3;",
        "properties": { "auto.offset.reset": "earliest" },
    })
    .to_string();
    let (status, text) = http(&sql, "POST", "/query-stream", &body);
    assert_eq!(status, 200, "{text}");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines[0]["columnNames"],
        serde_json::json!(["user_id", "region"]),
        "{text}"
    );
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[1..].iter().all(|l| l[1] == "us"), "{text}");

    // Bad statements: a JSON error with the position, and the server goes on.
    let (status, text) = http(
        &sql,
        "POST",
        "/ksql",
        r#"{"ksql": "SELECT region,\n  nope FROM clicks;"}"#,
    );
    assert_eq!(status, 400, "{text}");
    let e: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(e["@type"], "statement_error", "{text}");
    assert_eq!(
        (e["line"].as_i64(), e["column"].as_i64()),
        (Some(2), Some(3)),
        "{text}"
    );
    for (body, want) in [
        ("not json", "not JSON"),
        (r#"{"sql": "SHOW STREAMS;"}"#, "needs \\\"ksql\\\""),
        (
            r#"{"ksql": "CREATE STREAM x (a INT) WITH (KAFKA_TOPIC='x');"}"#,
            "VALUE_FORMAT",
        ),
    ] {
        let (status, text) = http(&sql, "POST", "/ksql", body);
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(want), "{body}: {text}");
    }
    let (status, _) = http(&sql, "GET", "/info", "");
    assert_eq!(status, 200);
}

/// `quiver shell --server URL` with statements on standard input.
fn remote_shell(sql: &str, stdin: &str) -> common::Output {
    let mut cmd = common::quiver();
    cmd.args(["shell", "--server", &format!("http://{sql}")]);
    run_bounded(cmd, stdin.as_bytes(), COMMAND_TIMEOUT)
}

#[test]
fn the_shell_runs_statements_on_a_server_over_http() {
    let data = DataDir::new();
    let server = Server::start(&["--data-dir", data.arg()], &[]);
    let sql = sql_address(&server.ready);
    // The enrichment example, sent statement by statement; SET stays in the shell and goes
    // with each request.
    let mut cmd = common::quiver();
    cmd.args([
        "shell",
        "--server",
        &format!("http://{sql}/"),
        "-f",
        "examples/sql/orders_enrichment.sql",
    ]);
    let out = run_bounded(cmd, b"", COMMAND_TIMEOUT).ok();
    let lines = out.lines();
    assert!(
        lines.contains(&"5 rows inserted into 'orders'"),
        "{}",
        out.stdout
    );
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
        ]
    );
    assert_eq!(lines[push + 6], "(5 rows)");
    // Results as tables; a bad statement's error points into the script, and the shell stops
    // there (the statement after it does not run).
    let out = remote_shell(
        &sql,
        "SHOW STREAMS;\nSELECT order_id, amount FROM orders WHERE amount > 30 ORDER BY order_id;\n\
         SELECT nope\n  FROM orders;\nSHOW TABLES;\n",
    );
    assert!(!out.status.success());
    assert_eq!(
        out.lines()[..8],
        [
            "name             topic            key_format  value_format",
            "orders           orders           KAFKA       JSON",
            "orders_enriched  orders_enriched  KAFKA       JSON",
            "(2 rows)",
            "order_id  amount",
            "o-2       40.0",
            "o-3       99.0",
            "(2 rows)",
        ],
        "{}",
        out.stdout
    );
    assert_eq!(out.lines().len(), 8, "{}", out.stdout);
    assert!(
        out.stderr.contains("nope") && out.stderr.contains("(at line 3, column 8)"),
        "{}",
        out.stderr
    );
    // SET in the shell goes with its queries: the push query reads the topic from the start.
    let out = remote_shell(
        &sql,
        "SET 'auto.offset.reset' = 'earliest';\nSELECT order_id FROM orders EMIT CHANGES LIMIT 2;\n",
    )
    .ok();
    assert!(out.stdout.ends_with("(2 rows)\n"), "{}", out.stdout);
    // Over /ksql, SET holds for the rest of its request, not for other clients.
    let request = |ksql: &str| {
        let body = serde_json::json!({ "ksql": ksql }).to_string();
        let (status, text) = http(&sql, "POST", "/ksql", &body);
        assert_eq!(status, 200, "{text}");
        serde_json::from_str::<serde_json::Value>(&text).unwrap()
    };
    let set = request("SET 'auto.offset.reset' = 'earliest'; SHOW PROPERTIES;");
    assert_eq!(
        set[1]["rows"],
        serde_json::json!([["auto.offset.reset", "earliest"]]),
        "{set}"
    );
    let other = request("SHOW PROPERTIES;");
    assert_eq!(
        other[0]["rows"],
        serde_json::json!([["auto.offset.reset", "latest"]]),
        "{other}"
    );
    // A server that is not there is named, with what to do.
    let mut cmd = common::quiver();
    cmd.args(["shell", "--server", "http://127.0.0.1:9"]);
    let out = run_bounded(cmd, b"SHOW STREAMS;\n", COMMAND_TIMEOUT);
    assert!(!out.status.success());
    assert!(
        out.stderr
            .contains("cannot reach the Quiver server at http://127.0.0.1:9"),
        "{}",
        out.stderr
    );
    drop(server);
}

/// The bad-statement corpus over HTTP and through the shell: each gets the error it gets in
/// process (the same message and position), and the server serves on unchanged.
#[test]
fn every_bad_statement_of_the_corpus_is_refused_over_http_and_in_the_shell() {
    let data = DataDir::new();
    let server = Server::start(&["--data-dir", data.arg()], &[]);
    let sql = sql_address(&server.ready);
    let setup = ksql(&sql, &common::corpus::setup());
    assert_eq!(setup.as_array().unwrap().len(), 3, "{setup}");
    let cases = common::corpus::cases();
    let expected = common::corpus::expected();
    assert_eq!(
        cases.len(),
        expected.len(),
        "run the SQL crate's corpus test first"
    );
    assert!(cases.len() >= 100);
    let mut failures = Vec::new();
    for (case, want) in cases.iter().zip(&expected) {
        let mut parts = want.splitn(3, ' ');
        let (_, at, message) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap().replace("\\n", "\n"),
        );
        let (line, column) = at.split_once(':').unwrap();
        let body = serde_json::json!({ "ksql": case }).to_string();
        let (status, text) = http(&sql, "POST", "/ksql", &body);
        let got: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let got_at = format!("{}:{}", got["line"], got["column"]);
        if status != 400 || got["message"] != message.as_str() || got_at != at {
            failures.push(format!(
                "HTTP {case}\n  got  {status} {got_at} {}\n  want 400 {at} {message}",
                got["message"]
            ));
        }
        let out = remote_shell(&sql, case);
        let shown = format!("{message} (at line {line}, column {column})");
        if out.status.success() || !out.stderr.contains(&shown) {
            failures.push(format!(
                "shell {case}\n  got  {}\n  want {shown}",
                out.stderr.trim()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let (status, _) = http(&sql, "GET", "/healthcheck", "");
    assert_eq!(status, 200);
    let streams = ksql(&sql, "SHOW STREAMS; SHOW TABLES; SHOW QUERIES;");
    let counts: Vec<usize> = streams
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rows"].as_array().unwrap().len())
        .collect();
    assert_eq!(counts, [2, 1, 0], "{streams}");
    drop(server);
}

#[test]
fn the_parquet_sink_example_puts_the_big_orders_in_a_lake_duckdb_reads() {
    let data = DataDir::new();
    let lake = data.tmp().join("lake");
    // The example writes to /tmp/quiver-lake; this run writes to its own directory.
    let example = std::fs::read_to_string("examples/sql/orders_to_parquet.sql").unwrap();
    assert!(example.contains("'file:///tmp/quiver-lake'"), "{example}");
    let script = example.replace(
        "file:///tmp/quiver-lake",
        &format!("file://{}", lake.display()),
    );
    let path = data.tmp().join("orders_to_parquet.sql");
    std::fs::write(&path, script).unwrap();
    let server = Server::start(&["--data-dir", data.arg()], &[]);
    let sql = sql_address(&server.ready);
    let mut cmd = common::quiver();
    cmd.args([
        "shell",
        "--server",
        &format!("http://{sql}"),
        "-f",
        path.to_str().unwrap(),
    ]);
    let out = run_bounded(cmd, b"", COMMAND_TIMEOUT).ok();
    assert!(
        out.stdout
            .contains("sink 'big_orders' created: query CSAS_BIG_ORDERS_"),
        "{}",
        out.stdout
    );
    assert!(
        out.lines()
            .iter()
            .any(|l| l.starts_with("big_orders") && l.contains("ParquetSink")),
        "{}",
        out.stdout
    );
    // DuckDB reads the directory tree as a table partitioned by region.
    let root = lake.join("topics/big_orders");
    let query = "SELECT region, order_id, amount, tax FROM lake ORDER BY order_id";
    let want = serde_json::json!([
        ["eu", "o-1", 120.0, 24.0],
        ["eu", "o-3", 410.0, 82.0],
        ["us", "o-5", 250.0, 50.0],
        ["ap", "o-6", 180.0, 36.0]
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = serde_json::Value::Null;
    while Instant::now() < deadline {
        let out = common::python::run(
            "lake_query.py",
            &["--root", root.to_str().unwrap(), "--sql", query],
            Duration::from_secs(60),
        );
        got = serde_json::from_str(out.trim()).unwrap();
        if got == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(got, want);
}
