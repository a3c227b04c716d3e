//! End-to-end tests of `quiver topics`, `produce` and `consume` on a data directory: the
//! shared scenarios (`tests/common/scenarios.rs`), and what only a data directory does.

mod common;

use common::{Cli, DataDir, scenarios};

cli_scenarios!(DataDir::new);

#[test]
fn keyed_lines_land_in_murmur2_partitions() {
    scenarios::keyed_lines_land_in_murmur2_partitions(&DataDir::new());
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
    for args in [&["topics", "list"][..], &["consume", "t"]] {
        let err = d.run(args, b"").failed();
        assert!(
            err.starts_with(&format!(
                "error: data directory {} does not exist;",
                d.arg()
            )),
            "{args:?}: {err}"
        );
    }
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
