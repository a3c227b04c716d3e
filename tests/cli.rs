//! End-to-end tests of `quiver topics`, `produce` and `consume` on a data directory.

mod common;

use common::DataDir;

/// The `CONFIG VALUE SOURCE` row of `key` in `topics describe` output.
fn config_row<'a>(describe: &'a str, key: &str) -> Vec<&'a str> {
    let line = describe
        .lines()
        .find(|l| l.split_whitespace().next() == Some(key));
    line.unwrap_or_else(|| panic!("no {key} row in:\n{describe}"))
        .split_whitespace()
        .collect()
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

#[test]
fn topics_create_with_configs_then_list_and_describe() {
    let d = DataDir::new();
    let out = d
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
    d.run(&["topics", "create", "events"], b"").ok();

    assert_eq!(
        d.run(&["topics", "list"], b"").ok().stdout,
        "events\norders\n"
    );

    let describe = d.run(&["topics", "describe", "orders"], b"").ok().stdout;
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
    }
    assert_eq!(
        config_row(&describe, "retention.ms"),
        ["retention.ms", "60000", "override"]
    );
    assert_eq!(
        config_row(&describe, "cleanup.policy"),
        ["cleanup.policy", "compact", "override"]
    );
    assert_eq!(
        config_row(&describe, "segment.bytes"),
        ["segment.bytes", "1073741824", "default"]
    );

    // Columns line up: every config row puts its value where the VALUE header starts.
    let header = describe
        .lines()
        .find(|l| l.starts_with("CONFIG"))
        .expect("config header");
    let column = header.find("VALUE").expect("VALUE column");
    for key in ["retention.ms", "message.timestamp.type", "cleanup.policy"] {
        let line = describe
            .lines()
            .find(|l| l.starts_with(key))
            .expect("config row");
        assert_eq!(
            line[column..].split_whitespace().next(),
            Some(config_row(&describe, key)[1]),
            "{line}"
        );
    }

    let default_topic = d.run(&["topics", "describe", "events"], b"").ok().stdout;
    assert!(
        default_topic.contains("\nPartitions:  1\n")
            && default_topic.contains("\nOverrides:   none\n"),
        "{default_topic}"
    );
}

#[test]
fn topics_alter_changes_configs_and_partitions_and_delete_removes() {
    let d = DataDir::new();
    d.run(
        &[
            "topics",
            "create",
            "t",
            "--config",
            "retention.ms=1000",
            "--config",
            "segment.bytes=1048576",
        ],
        b"",
    )
    .ok();
    let out = d
        .run(
            &[
                "topics",
                "alter",
                "t",
                "--add-config",
                "retention.ms=5000",
                "--delete-config",
                "segment.bytes",
                "--partitions",
                "4",
            ],
            b"",
        )
        .ok();
    assert_eq!(
        out.stdout,
        "altered topic 't': set retention.ms=5000; removed segment.bytes; partitions 1 -> 4\n"
    );
    let describe = d.run(&["topics", "describe", "t"], b"").ok().stdout;
    assert!(
        describe.contains("\nOverrides:   retention.ms=5000\n"),
        "{describe}"
    );
    assert_eq!(partition_rows(&describe).len(), 4);
    assert_eq!(
        config_row(&describe, "segment.bytes"),
        ["segment.bytes", "1073741824", "default"]
    );

    // A refused partition count changes nothing, configs included.
    let err = d
        .run(
            &[
                "topics",
                "alter",
                "t",
                "--add-config",
                "retention.ms=1",
                "--partitions",
                "2",
            ],
            b"",
        )
        .failed();
    assert_eq!(
        err,
        "error: invalid partition count: topic 't' has 4 partitions; the new count 2 must be larger (partitions cannot be removed)\n"
    );
    let err = d
        .run(
            &["topics", "alter", "t", "--add-config", "retention.msx=1"],
            b"",
        )
        .failed();
    assert!(
        err.starts_with(
            "error: invalid config: unknown topic config 'retention.msx'; known keys: "
        ),
        "{err}"
    );
    let describe = d.run(&["topics", "describe", "t"], b"").ok().stdout;
    assert!(
        describe.contains("\nOverrides:   retention.ms=5000\n"),
        "{describe}"
    );
    assert_eq!(partition_rows(&describe).len(), 4);

    assert_eq!(
        d.run(&["topics", "delete", "t"], b"").ok().stdout,
        "deleted topic 't'\n"
    );
    assert_eq!(d.run(&["topics", "list"], b"").ok().stdout, "");
    let err = d.run(&["topics", "describe", "t"], b"").failed();
    assert_eq!(
        err,
        "error: unknown topic 't'; list topics with `quiver topics list`\n"
    );
}

#[test]
fn produce_keyed_lines_and_consume_them_back() {
    let d = DataDir::new();
    let input = b"k1:v1\nk2:v2 has: colons\nk1:v3\n:no key\nk4:\n";
    let out = d
        .run(&["produce", "orders", "--key-separator", ":"], input)
        .ok();
    assert_eq!(
        out.stderr,
        "produced 5 records to topic 'orders' (partition 0)\n"
    );

    let values = d
        .run(
            &[
                "consume",
                "orders",
                "--from-beginning",
                "--max-messages",
                "5",
            ],
            b"",
        )
        .ok();
    assert_eq!(values.stdout, "v1\nv2 has: colons\nv3\nno key\n\n");
    assert_eq!(values.stderr, "consumed 5 records from topic 'orders'\n");

    let keyed = d
        .run(
            &[
                "consume",
                "orders",
                "--from-beginning",
                "--max-messages",
                "5",
                "--print-key",
            ],
            b"",
        )
        .ok();
    assert_eq!(
        keyed.stdout,
        "k1\tv1\nk2\tv2 has: colons\nk1\tv3\n\tno key\nk4\t\n"
    );

    let custom = d.consume_all(
        "orders",
        &["--print-key", "--print-offset", "--key-separator", "="],
    );
    assert_eq!(custom[0], "Partition:0=Offset:0=k1=v1");
    assert_eq!(custom[4], "Partition:0=Offset:4=k4=");

    // --max-messages stops early even though more is there.
    let two = d
        .run(
            &[
                "consume",
                "orders",
                "--from-beginning",
                "--max-messages",
                "2",
            ],
            b"",
        )
        .ok();
    assert_eq!(two.lines(), ["v1", "v2 has: colons"]);

    // The topic was auto-created with the default partition count and holds exactly the records.
    let describe = d.run(&["topics", "describe", "orders"], b"").ok().stdout;
    let rows = partition_rows(&describe);
    assert_eq!(rows.len(), 1, "{describe}");
    assert_eq!(rows[0][..3], ["0", "0", "5"], "{describe}");
}

#[test]
fn unkeyed_lines_from_a_file_and_bytes_that_are_not_utf8() {
    let d = DataDir::new();
    let file = d.tmp().join("input.txt");
    std::fs::write(
        &file,
        b"plain a:b\r\nbad \xff byte\n\nlast line without newline",
    )
    .expect("write input");
    let file = file.to_str().expect("utf-8 path");
    let out = d
        .run(&["produce", "t", "--file", file], b"ignored stdin\n")
        .ok();
    assert_eq!(
        out.stderr,
        "produced 4 records to topic 't' (partition 0)\n"
    );
    let keyed = d.consume_all("t", &["--print-key"]);
    assert_eq!(
        keyed,
        [
            "null\tplain a:b",
            "null\tbad \u{fffd} byte",
            "null\t",
            "null\tlast line without newline"
        ]
    );
}

#[test]
fn consume_follows_partitions_and_start_positions() {
    let d = DataDir::new();
    d.run(&["topics", "create", "t", "--partitions", "3"], b"")
        .ok();
    let input: String = (0..30)
        .map(|i| format!("key{}:value{i}\n", i % 6))
        .collect();
    d.run(&["produce", "t", "--key-separator", ":"], input.as_bytes())
        .ok();

    // Across all partitions: every record once; per key, in the order produced.
    let got = d
        .run(
            &[
                "consume",
                "t",
                "--from-beginning",
                "--max-messages",
                "30",
                "--print-key",
            ],
            b"",
        )
        .ok();
    let mut lines: Vec<&str> = got.lines();
    assert_eq!(lines.len(), 30, "{got:?}");
    for k in 0..6 {
        let key = format!("key{k}\t");
        let values: Vec<&str> = lines
            .iter()
            .filter(|l| l.starts_with(&key))
            .map(|l| &l[key.len()..])
            .collect();
        let expected: Vec<String> = (0..30)
            .filter(|i| i % 6 == k)
            .map(|i| format!("value{i}"))
            .collect();
        assert_eq!(values, expected, "key{k}");
    }
    lines.sort_unstable();
    lines.dedup();
    assert_eq!(lines.len(), 30);

    // Each partition alone: together they are the whole topic.
    let mut per_partition = 0;
    for p in ["0", "1", "2"] {
        per_partition += d.consume_all("t", &["--partition", p]).len();
    }
    assert_eq!(per_partition, 30);

    // The default start is the end of the log: nothing old is printed before the timeout.
    let tail = d.run(&["consume", "t", "--timeout-ms", "200"], b"").ok();
    assert_eq!(
        (tail.stdout.as_str(), tail.stderr.as_str()),
        ("", "consumed 0 records from topic 't'\n")
    );

    // --offset in one partition.
    let first = d.consume_all("t", &["--partition", "1", "--print-offset"]);
    let third = d
        .run(
            &[
                "consume",
                "t",
                "--partition",
                "1",
                "--offset",
                "2",
                "--max-messages",
                "1",
                "--print-offset",
            ],
            b"",
        )
        .ok();
    assert_eq!(third.lines(), [first[2].as_str()]);
    let err = d
        .run(
            &[
                "consume",
                "t",
                "--partition",
                "1",
                "--offset",
                "999",
                "--timeout-ms",
                "0",
            ],
            b"",
        )
        .failed();
    assert_eq!(
        err,
        format!(
            "error: offset 999 is out of range for t-1: valid offsets are 0..={}\n",
            first.len()
        )
    );

    // --timestamp: from the epoch is everything, from the far future nothing.
    assert_eq!(
        d.run(
            &["consume", "t", "--timestamp", "0", "--timeout-ms", "0"],
            b""
        )
        .ok()
        .lines()
        .len(),
        30
    );
    assert_eq!(
        d.run(
            &[
                "consume",
                "t",
                "--timestamp",
                "99999999999999",
                "--timeout-ms",
                "0"
            ],
            b""
        )
        .ok()
        .stdout,
        ""
    );

    let err = d
        .run(
            &["consume", "t", "--partition", "7", "--timeout-ms", "0"],
            b"",
        )
        .failed();
    assert_eq!(
        err,
        "error: unknown partition 7 of topic 't' (it has 3 partitions)\n"
    );
    let err = d
        .run(&["consume", "t", "--from-beginning", "--offset", "1"], b"")
        .failed();
    assert!(
        err.contains("'--from-beginning' cannot be used with '--offset <OFFSET>'"),
        "{err}"
    );
}

#[test]
fn produce_to_a_fixed_partition() {
    let d = DataDir::new();
    d.run(&["topics", "create", "t", "--partitions", "3"], b"")
        .ok();
    let out = d
        .run(&["produce", "t", "--partition", "2"], b"a\nb\nc\n")
        .ok();
    assert_eq!(
        out.stderr,
        "produced 3 records to topic 't' (partition 2)\n"
    );
    assert_eq!(d.consume_all("t", &["--partition", "2"]), ["a", "b", "c"]);
    assert!(d.consume_all("t", &["--partition", "0"]).is_empty());

    let err = d
        .run(&["produce", "t", "--partition", "3"], b"x\n")
        .failed();
    assert_eq!(
        err,
        "error: unknown partition 3 of topic 't' (it has 3 partitions)\n"
    );
    let err = d
        .run(&["produce", "missing", "--partition", "1"], b"x\n")
        .failed();
    assert!(err.starts_with("error: topic 'missing' does not exist, and auto-creating it (num.partitions=1) would not make partition 1;"), "{err}");
    assert_eq!(d.run(&["topics", "list"], b"").ok().stdout, "t\n");
}

#[test]
fn a_line_without_the_key_separator_stops_produce_after_the_lines_before_it() {
    let d = DataDir::new();
    let out = d.run(
        &["produce", "t", "--key-separator", "::"],
        b"a::1\nb::2\nno separator\nc::3\n",
    );
    let err = out.failed();
    assert_eq!(
        err,
        "produced 2 records to topic 't' (partition 0)\n\
         error: line 3 has no key separator \"::\"; the 2 records before it were sent\n"
    );
    assert_eq!(d.consume_all("t", &["--print-key"]), ["a\t1", "b\t2"]);
}

#[test]
fn bad_input_is_refused_with_a_precise_error_and_creates_nothing() {
    let d = DataDir::new();
    let cases: &[(&[&str], &str)] = &[
        (
            &["topics", "create", "a b"],
            "error: invalid topic name 'a b': character ' ' is not allowed; use ASCII letters, digits, '.', '_' and '-'\n",
        ),
        (
            &["topics", "create", "t", "--partitions", "0"],
            "error: invalid partition count: 0: a topic needs at least 1 partition\n",
        ),
        (
            &["topics", "create", "t", "--partitions", "-1"],
            "error: invalid partition count: -1: a topic needs at least 1 partition\n",
        ),
        (
            &["topics", "create", "t", "--config", "retention.ms=soon"],
            "error: invalid config: retention.ms=\"soon\" is not a whole number\n",
        ),
        (
            &["produce", "a/b"],
            "error: invalid topic name 'a/b': character '/' is not allowed; use ASCII letters, digits, '.', '_' and '-'\n",
        ),
    ];
    for (args, expected) in cases {
        assert_eq!(&d.run(args, b"x\n").failed(), expected, "{args:?}");
    }
    let err = d
        .run(
            &["topics", "create", "t", "--config", "retention.msx=1"],
            b"",
        )
        .failed();
    assert!(
        err.starts_with("error: invalid config: unknown topic config 'retention.msx'; known keys: cleanup.policy, "),
        "{err}"
    );
    // Usage errors come from the argument parser (exit code 2).
    let usage = d.run(&["topics", "create", "t", "--config", "novalue"], b"");
    assert_eq!(usage.status.code(), Some(2));
    assert!(
        usage.stderr.contains("expected KEY=VALUE, got 'novalue'"),
        "{}",
        usage.stderr
    );
    assert!(
        !d.path().exists(),
        "a refused command created the data directory"
    );

    // Commands that read do not create a data directory either.
    let err = d.run(&["topics", "list"], b"").failed();
    assert!(
        err.starts_with(&format!(
            "error: data directory {} does not exist;",
            d.arg()
        )),
        "{err}"
    );
    let err = d.run(&["consume", "t"], b"").failed();
    assert!(
        err.starts_with(&format!(
            "error: data directory {} does not exist;",
            d.arg()
        )),
        "{err}"
    );
    assert!(!d.path().exists());

    // Once it exists, refused creates still leave no topic behind.
    d.run(&["topics", "create", "good"], b"").ok();
    d.run(&["topics", "create", "bad name"], b"").failed();
    let err = d.run(&["topics", "create", "good"], b"").failed();
    assert_eq!(err, "error: topic 'good' already exists\n");
    assert_eq!(d.run(&["topics", "list"], b"").ok().stdout, "good\n");
}

#[test]
fn a_directory_that_is_not_a_data_directory_is_left_alone() {
    let d = DataDir::new();
    let precious = d.path().join("backup-2024");
    std::fs::create_dir_all(&precious).expect("create dir");
    let err = d.run(&["topics", "create", "t"], b"").failed();
    assert!(err.contains("is not a Quiver data directory"), "{err}");
    assert!(
        precious.exists(),
        "the broker would have removed it as a stray partition directory"
    );
}

#[test]
fn help_describes_every_command() {
    for cmd in [
        &["--help"][..],
        &["server", "--help"],
        &["topics", "--help"],
        &["topics", "create", "--help"],
        &["topics", "alter", "--help"],
        &["produce", "--help"],
        &["consume", "--help"],
    ] {
        let out = common::run(cmd, b"").ok();
        assert!(
            out.stdout.contains("Usage: quiver"),
            "{cmd:?}: {}",
            out.stdout
        );
    }
    let create = common::run(&["topics", "create", "--help"], b"")
        .ok()
        .stdout;
    assert!(
        create.contains("retention.ms") && create.contains("--partitions <N>"),
        "{create}"
    );
    let consume = common::run(&["consume", "--help"], b"").ok().stdout;
    for flag in [
        "--from-beginning",
        "--offset",
        "--timestamp",
        "--partition",
        "--max-messages",
        "--timeout-ms",
        "--print-key",
        "--print-offset",
        "--key-separator",
    ] {
        assert!(consume.contains(flag), "{flag} missing from:\n{consume}");
    }
}

#[test]
fn consume_stops_quietly_when_its_reader_goes_away() {
    let d = DataDir::new();
    // More than a pipe buffer holds, so the consumer must write after the reader is gone.
    let lines: String = (0..4000).map(|i| format!("{i:0>100}\n")).collect();
    d.run(&["produce", "t"], lines.as_bytes()).ok();
    // No --timeout-ms or --max-messages: only the closed pipe can end it.
    let mut child = common::quiver()
        .args(["consume", "t", "--from-beginning", "--data-dir", d.arg()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn quiver consume");
    drop(child.stdout.take());
    let status = common::wait_bounded(&mut child, common::COMMAND_TIMEOUT);
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        std::io::Read::read_to_string(&mut err, &mut stderr).expect("read stderr");
    }
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
}
