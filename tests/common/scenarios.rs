//! The end-to-end scenarios of `quiver topics`, `produce` and `consume` that hold whatever the
//! commands point at: a data directory (`--data-dir`, `tests/cli.rs`) or a running server
//! (`--bootstrap-server`, `tests/cli_kafka.rs`). Each test file runs every scenario through
//! [`cli_scenarios!`](crate::cli_scenarios) on a fresh backend of its own, and keeps only the
//! checks that belong to its backend.

use std::process::Stdio;

use super::{Cli, Output};

/// Declares one `#[test]` per scenario, each against a fresh backend from `$fresh` (a function
/// or closure that returns a [`Cli`]). A scenario added here runs against every backend.
#[macro_export]
macro_rules! cli_scenarios {
    ($fresh:expr) => {
        $crate::cli_scenarios!(@tests $fresh;
            topics_are_created_listed_described_altered_and_deleted,
            topics_alter_changes_configs_and_partitions_and_delete_removes,
            produce_keyed_lines_and_consume_them_back,
            unkeyed_lines_from_a_file_and_bytes_that_are_not_utf8,
            consume_follows_partitions_and_start_positions,
            consume_start_positions_in_one_partition,
            produce_to_a_fixed_partition,
            a_line_without_the_key_separator_stops_produce_after_the_lines_before_it,
            consume_stops_quietly_when_its_reader_goes_away,
        );
    };
    (@tests $fresh:expr; $($name:ident),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::common::scenarios::$name(&$fresh());
            }
        )+
    };
}

/// The `CONFIG VALUE SOURCE` row of `key` in `topics describe` output.
#[track_caller]
pub fn config_row<'a>(describe: &'a str, key: &str) -> Vec<&'a str> {
    describe
        .lines()
        .find(|l| l.split_whitespace().next() == Some(key))
        .unwrap_or_else(|| panic!("no {key} row in:\n{describe}"))
        .split_whitespace()
        .collect()
}

/// The partition rows of `topics describe` output, as `[partition, start, end, size..., segments]`.
pub fn partition_rows(describe: &str) -> Vec<Vec<&str>> {
    describe
        .lines()
        .skip_while(|l| !l.starts_with("PARTITION"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect()
}

/// `Partition:P\tOffset:O\tKEY\tVALUE` lines as `(partition, offset, key, value)`.
#[track_caller]
pub fn parse_printed(lines: &[&str]) -> Vec<(i32, i64, String, String)> {
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

pub fn topics_are_created_listed_described_altered_and_deleted(cli: &impl Cli) {
    let out = cli
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
    cli.run(&["topics", "create", "events"], b"").ok();

    assert_eq!(
        cli.run(&["topics", "list"], b"").ok().stdout,
        "events\norders\n"
    );

    let describe = cli.run(&["topics", "describe", "orders"], b"").ok().stdout;
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

    let default_topic = cli.run(&["topics", "describe", "events"], b"").ok().stdout;
    assert!(
        default_topic.contains("\nPartitions:  1\n")
            && default_topic.contains("\nOverrides:   none\n"),
        "{default_topic}"
    );

    alter_to_four_partitions(cli, "orders", "cleanup.policy", 3);

    // Refusals, worded alike whichever way the command reaches the broker.
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
        assert_eq!(&cli.run(args, b"x\n").failed(), expected, "{args:?}");
    }
    let err = cli
        .run(
            &["topics", "create", "t", "--config", "retention.ms=soon"],
            b"",
        )
        .failed();
    assert!(err.contains("retention.ms"), "{err}");
    refuse_unknown_config(cli, "orders");

    delete(cli, "orders", "events\n");
}

pub fn topics_alter_changes_configs_and_partitions_and_delete_removes(cli: &impl Cli) {
    cli.run(
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
    let describe = alter_to_four_partitions(cli, "t", "segment.bytes", 1);
    assert_eq!(
        config_row(&describe, "segment.bytes"),
        ["segment.bytes", "1073741824", "default"]
    );

    // A refused partition count changes nothing, configs included.
    let err = cli
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
    refuse_unknown_config(cli, "t");
    describe_altered(cli, "t");

    delete(cli, "t", "");
    let err = cli.run(&["topics", "describe", "t"], b"").failed();
    assert_eq!(
        err,
        "error: unknown topic 't'; list topics with `quiver topics list`\n"
    );
}

pub fn produce_keyed_lines_and_consume_them_back(cli: &impl Cli) {
    let input = b"k1:v1\nk2:v2 has: colons\nk1:v3\n:no key\nk4:\n";
    let out = cli
        .run(&["produce", "orders", "--key-separator", ":"], input)
        .ok();
    assert_eq!(
        out.stderr,
        "produced 5 records to topic 'orders' (partition 0)\n"
    );

    // The first `max` records, printed with `extra` flags.
    let first = |max: &str, extra: &[&str]| {
        let mut args = vec![
            "consume",
            "orders",
            "--from-beginning",
            "--max-messages",
            max,
        ];
        args.extend(extra);
        cli.run(&args, b"").ok()
    };
    let values = first("5", &[]);
    assert_eq!(values.stdout, "v1\nv2 has: colons\nv3\nno key\n\n");
    assert_eq!(values.stderr, "consumed 5 records from topic 'orders'\n");

    let keyed = first("5", &["--print-key"]);
    assert_eq!(
        keyed.stdout,
        "k1\tv1\nk2\tv2 has: colons\nk1\tv3\n\tno key\nk4\t\n"
    );

    let custom = cli.consume_all(
        "orders",
        &["--print-key", "--print-offset", "--key-separator", "="],
    );
    assert_eq!(custom[0], "Partition:0=Offset:0=k1=v1");
    assert_eq!(custom[4], "Partition:0=Offset:4=k4=");

    // --max-messages stops early even though more is there.
    let two = first("2", &[]);
    assert_eq!(two.lines(), ["v1", "v2 has: colons"]);

    // The topic was auto-created with the default partition count and holds exactly the records.
    let describe = cli.run(&["topics", "describe", "orders"], b"").ok().stdout;
    let rows = partition_rows(&describe);
    assert_eq!(rows.len(), 1, "{describe}");
    assert_eq!(rows[0][..3], ["0", "0", "5"], "{describe}");
}

pub fn unkeyed_lines_from_a_file_and_bytes_that_are_not_utf8(cli: &impl Cli) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let file = tmp.path().join("input.txt");
    std::fs::write(
        &file,
        b"plain a:b\r\nbad \xff byte\n\nlast line without newline",
    )
    .expect("write input");
    let file = file.to_str().expect("utf-8 path");
    let out = cli
        .run(&["produce", "t", "--file", file], b"ignored stdin\n")
        .ok();
    assert_eq!(
        out.stderr,
        "produced 4 records to topic 't' (partition 0)\n"
    );
    let keyed = cli.consume_all("t", &["--print-key"]);
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

/// `consume` of the lines [`produce_keyed_lines`] wrote, keys and offsets printed.
pub const CONSUME_KEYED_LINES: [&str; 7] = [
    "consume",
    "t",
    "--from-beginning",
    "--max-messages",
    "30",
    "--print-key",
    "--print-offset",
];

/// Produces keyed lines to three partitions and reads them back; returns the `consume` output
/// (`--print-key --print-offset`) and the `topics describe` output, for the checks that compare
/// backends. Not in [`cli_scenarios!`](crate::cli_scenarios): each test file calls it from a
/// test of its own, so that it can go on from there.
pub fn keyed_lines_land_in_murmur2_partitions(cli: &impl Cli) -> (Output, String) {
    let out = produce_keyed_lines(cli, 7);
    assert!(
        out.stderr
            .starts_with("produced 30 records to topic 't' (partition"),
        "{}",
        out.stderr
    );

    let got = cli.run(&CONSUME_KEYED_LINES, b"").ok();
    assert_eq!(got.stderr, "consumed 30 records from topic 't'\n");
    let records = parse_printed(&got.lines());
    assert_eq!(records.len(), 30);
    // Each key where Kafka's default partitioner puts it, in the order produced, offsets dense.
    let mut per_partition = [0i64; 3];
    for k in 0..7 {
        let key = format!("key{k}");
        let expected_partition = quiver::broker::partition_for_key(key.as_bytes(), 3);
        let mine: Vec<&(i32, i64, String, String)> =
            records.iter().filter(|r| r.2 == key).collect();
        let values: Vec<&str> = mine.iter().map(|r| r.3.as_str()).collect();
        assert_eq!(values, values_of_key(7, k), "{key}");
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
    let describe = cli.run(&["topics", "describe", "t"], b"").ok().stdout;
    let rows = partition_rows(&describe);
    for (p, row) in rows.iter().enumerate() {
        assert_eq!(row[1], "0", "{describe}");
        assert_eq!(row[2], per_partition[p].to_string(), "{describe}");
    }
    (got, describe)
}

pub fn consume_follows_partitions_and_start_positions(cli: &impl Cli) {
    produce_keyed_lines(cli, 6);

    // Across all partitions: every record once; per key, in the order produced.
    let got = cli
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
        assert_eq!(values, values_of_key(6, k), "key{k}");
    }
    lines.sort_unstable();
    lines.dedup();
    assert_eq!(lines.len(), 30);

    // Each partition alone: together they are the whole topic.
    let mut per_partition = 0;
    for p in ["0", "1", "2"] {
        per_partition += cli.consume_all("t", &["--partition", p]).len();
    }
    assert_eq!(per_partition, 30);

    consume_from_the_end(cli, "200");

    // --offset in one partition.
    let first = cli.consume_all("t", &["--partition", "1", "--print-offset"]);
    let third = cli
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
    refuse_offset_out_of_range(cli, 999, first.len());

    // --timestamp: from the epoch is everything, from the far future nothing.
    consume_by_timestamp(cli, 30);

    let err = cli
        .run(
            &["consume", "t", "--partition", "7", "--timeout-ms", "0"],
            b"",
        )
        .failed();
    assert_eq!(
        err,
        "error: unknown partition 7 of topic 't' (it has 3 partitions)\n"
    );
    let err = cli
        .run(&["consume", "t", "--from-beginning", "--offset", "1"], b"")
        .failed();
    assert!(
        err.contains("'--from-beginning' cannot be used with '--offset <OFFSET>'"),
        "{err}"
    );
}

pub fn consume_start_positions_in_one_partition(cli: &impl Cli) {
    produce_abc_to_one_partition(cli, 2, 1);

    let all = cli
        .run(
            &["consume", "t", "--from-beginning", "--timeout-ms", "0"],
            b"",
        )
        .ok();
    assert_eq!(all.lines(), ["a", "b", "c"]);
    let from = cli
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
        cli.run(
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
    refuse_offset_out_of_range(cli, 9, 3);
    consume_by_timestamp(cli, 3);
    // The default start is the end: nothing old before the timeout.
    consume_from_the_end(cli, "300");
}

pub fn produce_to_a_fixed_partition(cli: &impl Cli) {
    let out = produce_abc_to_one_partition(cli, 3, 2);
    assert_eq!(
        out.stderr,
        "produced 3 records to topic 't' (partition 2)\n"
    );
    assert_eq!(cli.consume_all("t", &["--partition", "2"]), ["a", "b", "c"]);
    assert!(cli.consume_all("t", &["--partition", "0"]).is_empty());

    let err = cli
        .run(&["produce", "missing", "--partition", "1"], b"x\n")
        .failed();
    assert!(err.starts_with("error: topic 'missing' does not exist, and auto-creating it (num.partitions=1) would not make partition 1;"), "{err}");
    assert_eq!(cli.run(&["topics", "list"], b"").ok().stdout, "t\n");
}

pub fn a_line_without_the_key_separator_stops_produce_after_the_lines_before_it(cli: &impl Cli) {
    let out = cli.run(
        &["produce", "t", "--key-separator", "::"],
        b"a::1\nb::2\nno separator\nc::3\n",
    );
    let err = out.failed();
    assert_eq!(
        err,
        "produced 2 records to topic 't' (partition 0)\n\
         error: line 3 has no key separator \"::\"; the 2 records before it were sent\n"
    );
    assert_eq!(cli.consume_all("t", &["--print-key"]), ["a\t1", "b\t2"]);
}

pub fn consume_stops_quietly_when_its_reader_goes_away(cli: &impl Cli) {
    // More than a pipe buffer holds, so the consumer must write after the reader is gone.
    let lines: String = (0..4000).map(|i| format!("{i:0>100}\n")).collect();
    cli.run(&["produce", "t"], lines.as_bytes()).ok();
    // No --timeout-ms or --max-messages: only the closed pipe can end it.
    let mut child = cli
        .command(&["consume", "t", "--from-beginning"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn quiver consume");
    drop(child.stdout.take());
    let status = super::wait_bounded(&mut child, super::COMMAND_TIMEOUT);
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        std::io::Read::read_to_string(&mut err, &mut stderr).expect("read stderr");
    }
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
}

/// Alters `topic`, which has `partitions_before` partitions, to 4 partitions and the override
/// retention.ms=5000, deleting the override `removed`; checks what `alter` says and what
/// `describe` shows after. Returns the description.
#[track_caller]
fn alter_to_four_partitions(
    cli: &impl Cli,
    topic: &str,
    removed: &str,
    partitions_before: u32,
) -> String {
    let out = cli
        .run(
            &[
                "topics",
                "alter",
                topic,
                "--add-config",
                "retention.ms=5000",
                "--delete-config",
                removed,
                "--partitions",
                "4",
            ],
            b"",
        )
        .ok();
    assert_eq!(
        out.stdout,
        format!(
            "altered topic '{topic}': set retention.ms=5000; removed {removed}; partitions {partitions_before} -> 4\n"
        )
    );
    describe_altered(cli, topic)
}

/// Checks that `topic` has 4 partitions and the one override retention.ms=5000; returns its
/// description.
#[track_caller]
fn describe_altered(cli: &impl Cli, topic: &str) -> String {
    let describe = cli.run(&["topics", "describe", topic], b"").ok().stdout;
    assert!(
        describe.contains("\nOverrides:   retention.ms=5000\n"),
        "{describe}"
    );
    assert_eq!(partition_rows(&describe).len(), 4);
    describe
}

/// Checks that `alter` refuses a misspelt config key, naming the known ones.
#[track_caller]
fn refuse_unknown_config(cli: &impl Cli, topic: &str) {
    let err = cli
        .run(
            &["topics", "alter", topic, "--add-config", "retention.msx=1"],
            b"",
        )
        .failed();
    assert!(
        err.starts_with(
            "error: invalid config: unknown topic config 'retention.msx'; known keys: "
        ),
        "{err}"
    );
}

/// Deletes `topic` and checks that `topics list` then prints `left`.
#[track_caller]
fn delete(cli: &impl Cli, topic: &str, left: &str) {
    assert_eq!(
        cli.run(&["topics", "delete", topic], b"").ok().stdout,
        format!("deleted topic '{topic}'\n")
    );
    assert_eq!(cli.run(&["topics", "list"], b"").ok().stdout, left);
}

/// Checks that reading partition 1 of topic `t` from `offset` is refused, the valid offsets
/// being `0..=end`.
#[track_caller]
fn refuse_offset_out_of_range(cli: &impl Cli, offset: u64, end: usize) {
    let offset = offset.to_string();
    let err = cli
        .run(
            &[
                "consume",
                "t",
                "--partition",
                "1",
                "--offset",
                &offset,
                "--timeout-ms",
                "0",
            ],
            b"",
        )
        .failed();
    assert_eq!(
        err,
        format!("error: offset {offset} is out of range for t-1: valid offsets are 0..={end}\n")
    );
}

/// Checks `--timestamp` on topic `t`: from the epoch is all its `records`, from the far
/// future nothing.
#[track_caller]
fn consume_by_timestamp(cli: &impl Cli, records: usize) {
    let past = cli
        .run(
            &["consume", "t", "--timestamp", "0", "--timeout-ms", "0"],
            b"",
        )
        .ok();
    assert_eq!(past.lines().len(), records);
    let future = cli
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
}

/// Checks that the default start is the end of the log: nothing old of topic `t` is printed
/// before the timeout.
#[track_caller]
fn consume_from_the_end(cli: &impl Cli, timeout_ms: &str) {
    let tail = cli
        .run(&["consume", "t", "--timeout-ms", timeout_ms], b"")
        .ok();
    assert_eq!(
        (tail.stdout.as_str(), tail.stderr.as_str()),
        ("", "consumed 0 records from topic 't'\n")
    );
}

/// Creates topic `t` with 3 partitions and produces to it 30 lines `keyK:valueI`, K being I
/// modulo `keys`; returns what `produce` printed.
#[track_caller]
fn produce_keyed_lines(cli: &impl Cli, keys: usize) -> Output {
    cli.run(&["topics", "create", "t", "--partitions", "3"], b"")
        .ok();
    let input: String = (0..30)
        .map(|i| format!("key{}:value{i}\n", i % keys))
        .collect();
    cli.run(&["produce", "t", "--key-separator", ":"], input.as_bytes())
        .ok()
}

/// The values [`produce_keyed_lines`] gave key `keyK`, in the order produced.
fn values_of_key(keys: usize, k: usize) -> Vec<String> {
    (0..30)
        .filter(|i| i % keys == k)
        .map(|i| format!("value{i}"))
        .collect()
}

/// Creates topic `t` with `partitions` partitions and produces the lines `a`, `b`, `c` to
/// `partition`; checks that producing to a partition past the last is refused. Returns what
/// the first `produce` printed.
#[track_caller]
fn produce_abc_to_one_partition(cli: &impl Cli, partitions: u32, partition: u32) -> Output {
    let (partitions, partition) = (partitions.to_string(), partition.to_string());
    cli.run(&["topics", "create", "t", "--partitions", &partitions], b"")
        .ok();
    let out = cli
        .run(&["produce", "t", "--partition", &partition], b"a\nb\nc\n")
        .ok();
    let err = cli
        .run(&["produce", "t", "--partition", &partitions], b"x\n")
        .failed();
    assert_eq!(
        err,
        format!(
            "error: unknown partition {partitions} of topic 't' (it has {partitions} partitions)\n"
        )
    );
    out
}
