//! End-to-end tests of `quiver topics`, `produce`, `consume` and `groups` over the Kafka
//! protocol (`--bootstrap-server`) against a running `quiver server`.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{DataDir, Output, Server};
use quiver::broker::kafka::client::{ClientConfig, KafkaClient};
use quiver::broker::partition_for_key;

/// A server on a fresh data directory with a free loopback port.
struct Running {
    server: Option<Server>,
    data: DataDir,
    bootstrap: String,
}

impl Running {
    fn start() -> Running {
        let data = DataDir::new();
        let server = Server::start(&["--data-dir", data.arg()], &[]);
        let bootstrap = bootstrap_of(&server.ready);
        Running {
            server: Some(server),
            data,
            bootstrap,
        }
    }

    /// Runs `quiver ARGS --bootstrap-server ADDR`.
    #[track_caller]
    fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut all = args.to_vec();
        all.extend(["--bootstrap-server", &self.bootstrap]);
        common::run(&all, stdin)
    }

    /// Stops the server cleanly, so that the data directory can be opened in-process.
    #[track_caller]
    fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.signal("TERM");
            server.wait().ok();
        }
    }
}

/// `127.0.0.1:PORT` from the ready line `quiver server ready: Kafka on 127.0.0.1:PORT (...`.
#[track_caller]
fn bootstrap_of(ready: &str) -> String {
    let rest = ready
        .strip_prefix("quiver server ready: Kafka on ")
        .unwrap_or_else(|| panic!("unexpected ready line: {ready}"));
    rest.split([' ', ','])
        .next()
        .unwrap_or_else(|| panic!("no address in: {ready}"))
        .to_owned()
}

/// A loopback address nothing listens on (a port that was free a moment ago).
fn unused_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    format!("127.0.0.1:{port}")
}

/// The partition rows of `topics describe` output, as `[partition, start, end, size..., segments]`.
fn partition_rows(describe: &str) -> Vec<Vec<&str>> {
    describe
        .lines()
        .skip_while(|l| !l.starts_with("PARTITION"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect()
}

/// The `CONFIG VALUE SOURCE` row of `key` in `topics describe` output.
fn config_row<'a>(describe: &'a str, key: &str) -> Vec<&'a str> {
    describe
        .lines()
        .find(|l| l.split_whitespace().next() == Some(key))
        .unwrap_or_else(|| panic!("no {key} row in:\n{describe}"))
        .split_whitespace()
        .collect()
}

/// `Partition:P\tOffset:O\tKEY\tVALUE` lines as `(partition, offset, key, value)`.
fn parse_printed(lines: &[&str]) -> Vec<(i32, i64, String, String)> {
    lines
        .iter()
        .map(|l| {
            let fields: Vec<&str> = l.splitn(4, '\t').collect();
            assert_eq!(fields.len(), 4, "{l}");
            let partition = fields[0]
                .trim_start_matches("Partition:")
                .parse()
                .expect("partition");
            let offset = fields[1]
                .trim_start_matches("Offset:")
                .parse()
                .expect("offset");
            (
                partition,
                offset,
                fields[2].to_owned(),
                fields[3].to_owned(),
            )
        })
        .collect()
}

#[test]
fn topics_are_managed_over_the_admin_apis() {
    let s = Running::start();
    let out = s
        .run(
            &[
                "topics",
                "create",
                "orders",
                "--partitions",
                "3",
                "--config",
                "retention.ms=60000",
                "--config",
                "cleanup.policy=compact",
            ],
            b"",
        )
        .ok();
    assert_eq!(
        out.stdout,
        "created topic 'orders' with 3 partitions and configs cleanup.policy=compact, retention.ms=60000\n"
    );
    s.run(&["topics", "create", "events"], b"").ok();
    assert_eq!(
        s.run(&["topics", "list"], b"").ok().stdout,
        "events\norders\n"
    );

    let describe = s.run(&["topics", "describe", "orders"], b"").ok().stdout;
    assert!(
        describe.starts_with("Topic:       orders\nId:          "),
        "{describe}"
    );
    assert!(describe.contains("\nPartitions:  3\n"), "{describe}");
    assert!(
        describe.contains("\nOverrides:   cleanup.policy=compact, retention.ms=60000\n"),
        "{describe}"
    );
    let rows = partition_rows(&describe);
    assert_eq!(rows.len(), 3, "{describe}");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row[..3], [i.to_string().as_str(), "0", "0"], "{describe}");
        assert_eq!(
            row.last(),
            Some(&"-"),
            "segments are not told over Kafka: {describe}"
        );
    }
    assert_eq!(
        config_row(&describe, "retention.ms"),
        ["retention.ms", "60000", "override"]
    );
    assert_eq!(
        config_row(&describe, "segment.bytes"),
        ["segment.bytes", "1073741824", "default"]
    );

    let out = s
        .run(
            &[
                "topics",
                "alter",
                "orders",
                "--add-config",
                "retention.ms=5000",
                "--delete-config",
                "cleanup.policy",
                "--partitions",
                "4",
            ],
            b"",
        )
        .ok();
    assert_eq!(
        out.stdout,
        "altered topic 'orders': set retention.ms=5000; removed cleanup.policy; partitions 3 -> 4\n"
    );
    let describe = s.run(&["topics", "describe", "orders"], b"").ok().stdout;
    assert!(
        describe.contains("\nOverrides:   retention.ms=5000\n"),
        "{describe}"
    );
    assert_eq!(partition_rows(&describe).len(), 4);

    // The server's refusals, worded as with --data-dir.
    let cases: &[(&[&str], &str)] = &[
        (
            &["topics", "create", "a b"],
            "error: invalid topic name 'a b': character ' ' is not allowed; use ASCII letters, digits, '.', '_' and '-'\n",
        ),
        (
            &["topics", "create", "orders"],
            "error: topic 'orders' already exists\n",
        ),
        (
            &["topics", "describe", "missing"],
            "error: unknown topic 'missing'; list topics with `quiver topics list`\n",
        ),
        (
            &["produce", "a/b"],
            "error: invalid topic name 'a/b': character '/' is not allowed; use ASCII letters, digits, '.', '_' and '-'\n",
        ),
        (
            &["topics", "alter", "orders", "--partitions", "2"],
            "error: invalid partition count: topic 'orders' has 4 partitions; the new count 2 must be larger (partitions cannot be removed)\n",
        ),
    ];
    for (args, expected) in cases {
        assert_eq!(&s.run(args, b"x\n").failed(), expected, "{args:?}");
    }
    let err = s
        .run(
            &["topics", "create", "t", "--config", "retention.ms=soon"],
            b"",
        )
        .failed();
    assert!(err.contains("retention.ms"), "{err}");
    let err = s
        .run(
            &[
                "topics",
                "alter",
                "orders",
                "--add-config",
                "retention.msx=1",
            ],
            b"",
        )
        .failed();
    assert!(
        err.starts_with(
            "error: invalid config: unknown topic config 'retention.msx'; known keys: "
        ),
        "{err}"
    );

    assert_eq!(
        s.run(&["topics", "delete", "orders"], b"").ok().stdout,
        "deleted topic 'orders'\n"
    );
    assert_eq!(s.run(&["topics", "list"], b"").ok().stdout, "events\n");
}

#[test]
fn keyed_lines_round_trip_into_murmur2_partitions() {
    let mut s = Running::start();
    s.run(&["topics", "create", "t", "--partitions", "3"], b"")
        .ok();
    let input: String = (0..30)
        .map(|i| format!("key{}:value{i}\n", i % 7))
        .collect();
    let out = s
        .run(&["produce", "t", "--key-separator", ":"], input.as_bytes())
        .ok();
    assert!(
        out.stderr
            .starts_with("produced 30 records to topic 't' (partition"),
        "{}",
        out.stderr
    );

    let got = s
        .run(
            &[
                "consume",
                "t",
                "--from-beginning",
                "--max-messages",
                "30",
                "--print-key",
                "--print-offset",
            ],
            b"",
        )
        .ok();
    assert_eq!(got.stderr, "consumed 30 records from topic 't'\n");
    let records = parse_printed(&got.lines());
    assert_eq!(records.len(), 30);
    // Each key where Kafka's default partitioner puts it, in the order produced, offsets dense.
    let mut per_partition = [0i64; 3];
    for k in 0..7 {
        let key = format!("key{k}");
        let expected_partition = partition_for_key(key.as_bytes(), 3);
        let mine: Vec<&(i32, i64, String, String)> =
            records.iter().filter(|r| r.2 == key).collect();
        let values: Vec<&str> = mine.iter().map(|r| r.3.as_str()).collect();
        let expected: Vec<String> = (0..30)
            .filter(|i| i % 7 == k)
            .map(|i| format!("value{i}"))
            .collect();
        assert_eq!(values, expected, "{key}");
        for r in mine {
            assert_eq!(r.0, expected_partition, "{key} in partition {}", r.0);
        }
    }
    for (p, offset, _, _) in &records {
        assert_eq!(
            *offset, per_partition[*p as usize],
            "offsets of partition {p} are dense"
        );
        per_partition[*p as usize] += 1;
    }

    // describe shows each partition's end offset.
    let describe = s.run(&["topics", "describe", "t"], b"").ok().stdout;
    let rows = partition_rows(&describe);
    for (p, row) in rows.iter().enumerate() {
        assert_eq!(row[1], "0", "{describe}");
        assert_eq!(row[2], per_partition[p].to_string(), "{describe}");
    }

    // The data directory holds the same records, read in-process once the server is gone.
    let before = got.stdout.clone();
    s.stop();
    let direct = common::run(
        &[
            "consume",
            "t",
            "--from-beginning",
            "--max-messages",
            "30",
            "--print-key",
            "--print-offset",
            "--data-dir",
            s.data.arg(),
        ],
        b"",
    )
    .ok();
    let mut a: Vec<&str> = before.lines().collect();
    let mut b: Vec<&str> = direct.stdout.lines().collect();
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b);
    // So does the description, id included.
    let id = |describe: &str| describe.lines().nth(1).map(str::to_owned);
    let offline = s.data.run(&["topics", "describe", "t"], b"").ok().stdout;
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
fn consume_start_positions_partitions_and_follow_mode() {
    let s = Running::start();
    s.run(&["topics", "create", "t", "--partitions", "2"], b"")
        .ok();
    s.run(&["produce", "t", "--partition", "1"], b"a\nb\nc\n")
        .ok();
    let err = s
        .run(&["produce", "t", "--partition", "2"], b"x\n")
        .failed();
    assert_eq!(
        err,
        "error: unknown partition 2 of topic 't' (it has 2 partitions)\n"
    );

    let all = s
        .run(
            &["consume", "t", "--from-beginning", "--timeout-ms", "0"],
            b"",
        )
        .ok();
    assert_eq!(all.lines(), ["a", "b", "c"]);
    let from = s
        .run(
            &[
                "consume",
                "t",
                "--partition",
                "1",
                "--offset",
                "1",
                "--timeout-ms",
                "0",
                "--print-offset",
            ],
            b"",
        )
        .ok();
    assert_eq!(
        from.lines(),
        ["Partition:1\tOffset:1\tb", "Partition:1\tOffset:2\tc"]
    );
    assert!(
        s.run(
            &[
                "consume",
                "t",
                "--partition",
                "0",
                "--from-beginning",
                "--timeout-ms",
                "0"
            ],
            b""
        )
        .ok()
        .stdout
        .is_empty()
    );
    let err = s
        .run(
            &[
                "consume",
                "t",
                "--partition",
                "1",
                "--offset",
                "9",
                "--timeout-ms",
                "0",
            ],
            b"",
        )
        .failed();
    assert_eq!(
        err,
        "error: offset 9 is out of range for t-1: valid offsets are 0..=3\n"
    );
    let future = s
        .run(
            &[
                "consume",
                "t",
                "--timestamp",
                "99999999999999",
                "--timeout-ms",
                "0",
            ],
            b"",
        )
        .ok();
    assert_eq!(future.stdout, "");
    let past = s
        .run(
            &["consume", "t", "--timestamp", "0", "--timeout-ms", "0"],
            b"",
        )
        .ok();
    assert_eq!(past.lines().len(), 3);
    // The default start is the end: nothing old before the timeout.
    let tail = s.run(&["consume", "t", "--timeout-ms", "300"], b"").ok();
    assert_eq!(
        (tail.stdout.as_str(), tail.stderr.as_str()),
        ("", "consumed 0 records from topic 't'\n")
    );

    // Follow mode: a consumer waiting at the end gets records produced after it started.
    let mut follower = common::quiver()
        .args([
            "consume",
            "t",
            "--max-messages",
            "2",
            "--bootstrap-server",
            &s.bootstrap,
        ])
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
    let s = Running::start();
    s.run(&["topics", "create", "t", "--partitions", "2"], b"")
        .ok();
    s.run(&["produce", "t", "--partition", "0"], b"1\n2\n3\n4\n5\n")
        .ok();
    s.run(&["produce", "t", "--partition", "1"], b"1\n2\n").ok();
    commit(&s.bootstrap, "billing", &[("t", 0, 3), ("t", 1, 2)]);

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
}
