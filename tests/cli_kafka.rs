//! End-to-end tests of `quiver topics`, `produce`, `consume`, `groups` and `transactions` over the Kafka
//! protocol (`--bootstrap-server`) against a running `quiver server`: the shared scenarios
//! (`tests/common/scenarios.rs`), and what only a server does.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::scenarios::{self, partition_rows};
use common::{Cli, Running};
use quiver::kafka_client::{ClientConfig, IdempotentProducer, KafkaClient, ProducerConfig};

cli_scenarios!(|| Running::start(&[]));

/// A loopback address nothing listens on (a port that was free a moment ago).
fn unused_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    format!("127.0.0.1:{port}")
}

#[test]
fn topics_describe_has_no_segment_counts_over_kafka() {
    let s = Running::start(&[]);
    s.run(&["topics", "create", "orders", "--partitions", "3"], b"")
        .ok();
    let describe = s.run(&["topics", "describe", "orders"], b"").ok().stdout;
    let rows = partition_rows(&describe);
    assert_eq!(rows.len(), 3, "{describe}");
    for row in rows {
        assert_eq!(
            row.last(),
            Some(&"-"),
            "segments are not told over Kafka: {describe}"
        );
    }
}

#[test]
fn keyed_lines_round_trip_into_murmur2_partitions() {
    let mut s = Running::start(&[]);
    let (got, describe) = scenarios::keyed_lines_land_in_murmur2_partitions(&s);

    // The data directory holds the same records, read in-process once the server is gone.
    s.stop();
    let direct = s.data().run(&scenarios::CONSUME_KEYED_LINES, b"").ok();
    let mut a: Vec<&str> = got.stdout.lines().collect();
    let mut b: Vec<&str> = direct.stdout.lines().collect();
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b);
    // So does the description, id included.
    let id = |describe: &str| describe.lines().nth(1).map(str::to_owned);
    let offline = s.data().run(&["topics", "describe", "t"], b"").ok().stdout;
    assert_eq!(id(&describe), id(&offline));
    let ends = |describe: &str| -> Vec<String> {
        partition_rows(describe)
            .iter()
            .map(|r| r[..3].join(" "))
            .collect()
    };
    assert_eq!(ends(&describe), ends(&offline));
}

#[test]
fn consume_follows_records_produced_after_it_started() {
    let s = Running::start(&[]);
    s.run(&["topics", "create", "t", "--partitions", "2"], b"")
        .ok();
    s.run(&["produce", "t", "--partition", "1"], b"a\nb\nc\n")
        .ok();

    // Follow mode: a consumer waiting at the end gets records produced after it started.
    let mut follower = s
        .command(&["consume", "t", "--max-messages", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn consume");
    std::thread::sleep(Duration::from_millis(1500));
    s.run(&["produce", "t", "--partition", "0"], b"late1\nlate2\n")
        .ok();
    let status = common::wait_bounded(&mut follower, common::COMMAND_TIMEOUT);
    let mut stdout = String::new();
    if let Some(mut out) = follower.stdout.take() {
        std::io::Read::read_to_string(&mut out, &mut stdout).expect("read stdout");
    }
    assert!(status.success(), "{status:?}");
    assert_eq!(stdout, "late1\nlate2\n");
}

#[test]
fn an_unreachable_server_is_a_clear_error() {
    let addr = unused_address();
    let expected = format!(
        "error: cannot reach the Kafka broker at {addr}: Connection refused (os error 111); is `quiver server` running?\n"
    );
    for args in [
        &["topics", "list"][..],
        &["topics", "create", "t"],
        &["produce", "t"],
        &["consume", "t", "--timeout-ms", "0"],
        &["groups", "list"],
        &["groups", "describe", "g"],
        &["transactions", "list"],
        &["transactions", "describe", "app"],
        &["transactions", "describe-producers", "--topic", "t"],
    ] {
        let mut all = args.to_vec();
        all.extend(["--bootstrap-server", &addr]);
        let out = common::run(&all, b"x\n");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(out.failed(), expected, "{args:?}");
    }
    let err = common::run(&["topics", "list", "--bootstrap-server", "localhost"], b"").failed();
    assert_eq!(
        err,
        "error: bootstrap server 'localhost' has no port; use HOST:PORT such as localhost:9092\n"
    );
    // One way to reach a broker at a time.
    let both = common::run(
        &[
            "topics",
            "list",
            "--bootstrap-server",
            &addr,
            "--data-dir",
            "/nonexistent",
        ],
        b"",
    );
    assert_eq!(both.status.code(), Some(2));
    assert!(
        both.stderr.contains("cannot be used with"),
        "{}",
        both.stderr
    );
    // Groups live in the server.
    let err = common::run(&["groups", "list"], b"").failed();
    assert!(
        err.starts_with(
            "error: consumer groups live in a running server; pass --bootstrap-server HOST:PORT"
        ),
        "{err}"
    );
    // So do transactions.
    let err = common::run(&["transactions", "list"], b"").failed();
    assert!(
        err.starts_with(
            "error: transactions live in a running server; pass --bootstrap-server HOST:PORT"
        ),
        "{err}"
    );
}

/// Commits offsets for `group` as a client outside the group would.
fn commit(bootstrap: &str, group: &str, offsets: &[(&str, i32, i64)]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = KafkaClient::connect(bootstrap, ClientConfig::default())
            .await
            .expect("connect");
        let results = client.offset_commit(group, offsets).await.expect("commit");
        for (topic, partition, result) in results {
            assert!(result.is_ok(), "{topic}-{partition}: {result:?}");
        }
        client.close().await;
    });
}

#[test]
fn groups_list_and_describe_show_committed_offsets_and_lag() {
    let s = Running::start(&[]);
    s.run(&["topics", "create", "t", "--partitions", "2"], b"")
        .ok();
    s.run(&["produce", "t", "--partition", "0"], b"1\n2\n3\n4\n5\n")
        .ok();
    s.run(&["produce", "t", "--partition", "1"], b"1\n2\n").ok();
    commit(s.bootstrap(), "billing", &[("t", 0, 3), ("t", 1, 2)]);

    let list = s.run(&["groups", "list"], b"").ok();
    let rows: Vec<Vec<&str>> = list
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["GROUP", "STATE", "PROTOCOL-TYPE", "MEMBERS"],
        "{}",
        list.stdout
    );
    assert_eq!(rows.len(), 2, "{}", list.stdout);
    assert_eq!(rows[1][0], "billing");
    assert_eq!(rows[1][3], "0", "no members: {}", list.stdout);

    let describe = s.run(&["groups", "describe", "billing"], b"").ok().stdout;
    assert!(
        describe.starts_with("Group:          billing\n"),
        "{describe}"
    );
    assert!(describe.contains("\nMembers:        0\n"), "{describe}");
    let table: Vec<Vec<&str>> = describe
        .lines()
        .skip_while(|l| !l.starts_with("TOPIC"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        table,
        [
            vec![
                "TOPIC",
                "PARTITION",
                "COMMITTED-OFFSET",
                "LOG-END-OFFSET",
                "LAG",
                "MEMBER-ID"
            ],
            vec!["t", "0", "3", "5", "2", "-"],
            vec!["t", "1", "2", "2", "0", "-"],
        ],
        "{describe}"
    );

    let err = s.run(&["groups", "describe", "nobody"], b"").failed();
    assert_eq!(
        err,
        "error: unknown group 'nobody'; list groups with `quiver groups list`\n"
    );
}

#[test]
fn help_names_the_bootstrap_server_everywhere() {
    for cmd in [
        &["topics", "--help"][..],
        &["topics", "describe", "--help"],
        &["produce", "--help"],
        &["consume", "--help"],
        &["groups", "--help"],
        &["groups", "describe", "--help"],
        &["transactions", "--help"],
        &["transactions", "list", "--help"],
        &["transactions", "describe", "--help"],
        &["transactions", "describe-producers", "--help"],
    ] {
        let out = common::run(cmd, b"").ok();
        assert!(
            out.stdout.contains("--bootstrap-server <HOST:PORT>"),
            "{cmd:?}: {}",
            out.stdout
        );
    }
    let top = common::run(&["--help"], b"").ok().stdout;
    assert!(top.contains("groups"), "{top}");
    assert!(top.contains("transactions"), "{top}");
}

/// Writes `counts[p]` records to each partition `p` of `topic` with one idempotent producer;
/// returns its producer id.
fn produce_idempotent(bootstrap: &str, topic: &str, counts: &[usize]) -> i64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = std::sync::Arc::new(
            KafkaClient::connect(bootstrap, ClientConfig::default())
                .await
                .expect("connect"),
        );
        let producer = IdempotentProducer::new(client.clone(), ProducerConfig::default())
            .await
            .expect("producer id");
        for (partition, count) in counts.iter().enumerate() {
            let records: Vec<quiver::common::record::Record> = (0..*count)
                .map(|i| {
                    quiver::common::record::Record::new(1, None, Some(format!("v{i}").as_bytes()))
                })
                .collect();
            let batch = quiver::common::record::records_to_batch(&records);
            producer
                .send(topic, partition as i32, &batch)
                .await
                .expect("send");
        }
        client.close().await;
        producer.producer_id().0
    })
}

#[test]
fn transactions_describe_producers_shows_each_partitions_producers() {
    let s = Running::start(&[]);
    s.run(&["topics", "create", "t", "--partitions", "3"], b"")
        .ok();
    let producer_id = produce_idempotent(s.bootstrap(), "t", &[3, 2]).to_string();

    let table = |out: &str| -> Vec<Vec<String>> {
        out.lines()
            .map(|l| l.split_whitespace().map(str::to_owned).collect())
            .collect()
    };
    let out = s
        .run(&["transactions", "describe-producers", "--topic", "t"], b"")
        .ok()
        .stdout;
    let rows = table(&out);
    assert_eq!(
        rows[0],
        [
            "PARTITION",
            "PRODUCER-ID",
            "EPOCH",
            "LAST-SEQUENCE",
            "LAST-TIMESTAMP",
            "COORDINATOR-EPOCH",
            "TXN-START-OFFSET"
        ],
        "{out}"
    );
    // Partition 2 has no producer; the others one each, with no transaction open.
    let summary: Vec<[&str; 5]> = rows[1..]
        .iter()
        .map(|r| [&*r[0], &*r[1], &*r[2], &*r[3], &*r[6]])
        .collect();
    assert_eq!(
        summary,
        [
            ["0", &*producer_id, "0", "2", "-"],
            ["1", &*producer_id, "0", "1", "-"],
        ],
        "{out}"
    );

    let out = s
        .run(
            &[
                "transactions",
                "describe-producers",
                "--topic",
                "t",
                "--partition",
                "1",
            ],
            b"",
        )
        .ok()
        .stdout;
    let rows = table(&out);
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!(rows[1][..4], ["1", &*producer_id, "0", "1"], "{out}");

    let err = s
        .run(
            &[
                "transactions",
                "describe-producers",
                "--topic",
                "t",
                "--partition",
                "5",
            ],
            b"",
        )
        .failed();
    assert_eq!(
        err,
        "error: unknown partition 5 of topic 't' (it has 3 partitions)\n"
    );
    let err = s
        .run(
            &["transactions", "describe-producers", "--topic", "nope"],
            b"",
        )
        .failed();
    assert_eq!(
        err,
        "error: unknown topic 'nope'; list topics with `quiver topics list`\n"
    );
}

/// Longest one Python client script may run (a debug server on a busy 2-core machine).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(240);

/// Runs `tests/python/txn_admin.py`: `transactional_id` commits offsets for a group in a
/// transaction (`end` = `commit`) or leaves that transaction open (`open`).
fn txn_admin_script(s: &Running, transactional_id: &str, end: &str) {
    let out = common::python::run(
        "txn_admin.py",
        &[s.bootstrap(), transactional_id, end],
        SCRIPT_TIMEOUT,
    );
    assert_eq!(
        out,
        format!(
            "{transactional_id} {}\n",
            if end == "commit" { "committed" } else { "open" }
        )
    );
}

/// The whitespace-separated cells of each line.
fn cells(out: &str) -> Vec<Vec<&str>> {
    out.lines()
        .map(|l| l.split_whitespace().collect())
        .collect()
}

#[test]
fn transactions_describe_producers_finds_the_open_transaction_of_a_partition() {
    let s = Running::start(&[]);
    s.run(&["topics", "create", "txn-admin-input"], b"").ok();
    txn_admin_script(&s, "app-done", "commit");
    txn_admin_script(&s, "app-open", "open");

    // Both transactions wrote the group's offsets to the same __consumer_offsets partition:
    // the committed one holds nothing back, the open one from where it started.
    let out = s
        .run(
            &[
                "transactions",
                "describe-producers",
                "--topic",
                "__consumer_offsets",
            ],
            b"",
        )
        .ok()
        .stdout;
    let rows = cells(&out);
    assert_eq!(rows.len(), 3, "{out}");
    assert_eq!(rows[1][0], rows[2][0], "one partition: {out}");
    assert_ne!(rows[1][1], rows[2][1], "two producer ids: {out}");
    let starts: Vec<&str> = rows[1..].iter().map(|r| r[6]).collect();
    assert!(
        starts.contains(&"-") && starts.iter().any(|s| s.parse::<i64>().is_ok()),
        "one committed, one open: {out}"
    );
    // Offsets written in a transaction carry no sequence number.
    assert!(rows[1..].iter().all(|r| r[3] == "-1"), "{out}");
}

#[test]
fn transactions_list_and_describe_show_what_the_coordinator_knows() {
    let s = Running::start(&[]);
    s.run(&["topics", "create", "txn-admin-input"], b"").ok();
    txn_admin_script(&s, "app-done", "commit");
    txn_admin_script(&s, "app-open", "open");

    let out = s.run(&["transactions", "list"], b"").ok().stdout;
    let rows = cells(&out);
    assert_eq!(
        rows[0],
        ["TRANSACTIONAL-ID", "PRODUCER-ID", "STATE"],
        "{out}"
    );
    let listed: Vec<(&str, &str)> = rows[1..].iter().map(|r| (r[0], r[2])).collect();
    assert_eq!(
        listed,
        [("app-done", "CompleteCommit"), ("app-open", "Ongoing")],
        "{out}"
    );
    let open_producer_id = rows[2][1];

    let out = s
        .run(&["transactions", "list", "--state", "Ongoing"], b"")
        .ok()
        .stdout;
    let ids: Vec<&str> = cells(&out)[1..].iter().map(|r| r[0]).collect();
    assert_eq!(ids, ["app-open"], "{out}");
    let out = s
        .run(
            &["transactions", "list", "--producer-id", open_producer_id],
            b"",
        )
        .ok()
        .stdout;
    let ids: Vec<&str> = cells(&out)[1..].iter().map(|r| r[0]).collect();
    assert_eq!(ids, ["app-open"], "{out}");

    let out = s
        .run(&["transactions", "describe", "app-open"], b"")
        .ok()
        .stdout;
    let field = |name: &str| -> String {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no {name} in {out}"))
    };
    assert_eq!(field("Transactional id:"), "app-open");
    assert_eq!(field("State:"), "Ongoing");
    assert_eq!(field("Producer id:"), open_producer_id);
    assert_eq!(field("Timeout ms:"), "60000");
    assert!(field("Start time ms:").parse::<i64>().is_ok(), "{out}");
    assert!(
        field("Partitions:").starts_with("__consumer_offsets-"),
        "the group's offsets are in the transaction: {out}"
    );

    let out = s
        .run(&["transactions", "describe", "app-done"], b"")
        .ok()
        .stdout;
    assert!(
        out.contains("\nState:             CompleteCommit\n")
            && out.contains("\nDuration ms:       -\nPartitions:        -\n"),
        "an ended transaction lasts no longer and holds no partitions: {out}"
    );

    let err = s.run(&["transactions", "describe", "nobody"], b"").failed();
    assert_eq!(
        err,
        "error: unknown transactional id 'nobody'; list transactional ids with `quiver transactions list`\n"
    );
}
