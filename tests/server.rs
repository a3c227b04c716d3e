//! End-to-end tests of `quiver server`: start-up, settings, the data directory lock, and what
//! survives a SIGTERM or a SIGKILL.

mod common;

use std::path::Path;

use common::{Cli, DataDir, Server};

/// The part of the ready line that names the data directory and topic count.
fn ready_line(dir: &Path, topics: &str) -> String {
    let dir = dir
        .canonicalize()
        .expect("data directory exists once the server is ready");
    format!("data in {} ({topics}); stop with Ctrl-C", dir.display())
}

#[track_caller]
fn assert_ready(ready: &str, expected_tail: String) {
    assert!(
        ready.starts_with("quiver server ready: Kafka on 127.0.0.1:"),
        "{ready}"
    );
    assert!(
        ready.ends_with(&expected_tail),
        "{ready} should end with {expected_tail}"
    );
}

#[track_caller]
fn stop(server: Server) {
    server.signal("TERM");
    let out = server.wait().ok();
    assert_eq!(out.stdout, "quiver server stopped\n");
}

#[test]
fn sigterm_stops_cleanly_and_topics_configs_and_data_survive() {
    let d = DataDir::new();
    d.run(
        &[
            "topics",
            "create",
            "orders",
            "--partitions",
            "2",
            "--config",
            "retention.ms=86400000",
        ],
        b"",
    )
    .ok();
    d.run(
        &["produce", "orders", "--key-separator", ":"],
        b"a:1\nb:2\nc:3\n",
    )
    .ok();

    let server = Server::start(&["--data-dir", d.arg()], &[]);
    assert_ready(&server.ready, ready_line(d.path(), "1 topic"));

    // While it runs the directory is the server's: other processes get an error naming it.
    let holder = format!(
        "error: data directory {} is in use by process {} (",
        d.arg(),
        server.pid()
    );
    for args in [
        &["topics", "create", "other"][..],
        &["produce", "orders"],
        &["topics", "list"],
        &["consume", "orders"],
        &["server"],
    ] {
        let err = d.run(args, b"late\n").failed();
        assert!(err.starts_with(&holder), "{args:?}: {err}");
        assert!(
            err.ends_with(" server); stop that process or pass another --data-dir\n"),
            "{args:?}: {err}"
        );
    }

    server.signal("TERM");
    let stopped = server.wait().ok();
    assert_eq!(stopped.stdout, "quiver server stopped\n");
    assert!(
        stopped.stderr.contains("SIGTERM received; shutting down"),
        "{}",
        stopped.stderr
    );

    // Nothing the refused commands asked for happened; everything from before is there.
    assert_eq!(d.run(&["topics", "list"], b"").ok().stdout, "orders\n");
    let describe = d.run(&["topics", "describe", "orders"], b"").ok().stdout;
    assert!(describe.contains("\nPartitions:  2\n"), "{describe}");
    assert!(
        describe.contains("\nOverrides:   retention.ms=86400000\n"),
        "{describe}"
    );
    let mut records = d.consume_all("orders", &["--print-key"]);
    records.sort();
    assert_eq!(records, ["a\t1", "b\t2", "c\t3"]);

    // And it starts again on the same directory.
    let again = Server::start(&["--data-dir", d.arg()], &[]);
    assert_ready(&again.ready, ready_line(d.path(), "1 topic"));
    stop(again);
}

#[test]
fn acknowledged_data_survives_a_killed_server() {
    let d = DataDir::new();
    d.run(
        &["topics", "create", "t", "--config", "segment.bytes=1024"],
        b"",
    )
    .ok();
    let lines: String = (0..50).map(|i| format!("record {i}\n")).collect();
    d.run(&["produce", "t"], lines.as_bytes()).ok();

    let server = Server::start(&["--data-dir", d.arg()], &[]);
    server.signal("KILL");
    let killed = server.wait();
    assert!(
        !killed.status.success(),
        "SIGKILL is not a clean exit: {killed:?}"
    );
    assert!(!killed.stdout.contains("stopped"), "{killed:?}");

    let expected: Vec<String> = (0..50)
        .map(|i| format!("Partition:0\tOffset:{i}\trecord {i}"))
        .collect();
    assert_eq!(d.consume_all("t", &["--print-offset"]), expected);

    // Offsets carry on after the recovered tail, and a new server opens the directory.
    d.run(&["produce", "t"], b"after\n").ok();
    let after = d
        .run(
            &[
                "consume",
                "t",
                "--offset",
                "50",
                "--partition",
                "0",
                "--max-messages",
                "1",
                "--print-offset",
            ],
            b"",
        )
        .ok();
    assert_eq!(after.stdout, "Partition:0\tOffset:50\tafter\n");
    let again = Server::start(&["--data-dir", d.arg()], &[]);
    stop(again);
}

#[test]
fn settings_come_from_the_file_then_env_then_flags() {
    let d = DataDir::new();
    let tmp = d.tmp();
    let file = tmp.join("quiver.toml");
    let (from_file, from_env, from_flag) = (
        tmp.join("from-file"),
        tmp.join("from-env"),
        tmp.join("from-flag"),
    );
    std::fs::write(
        &file,
        format!(
            "# Kafka's server keys\nlog.dirs = \"{}\"\n\"num.partitions\" = 2\nlog.retention.hours = 1\n\
             auto.create.topics.enable = true\n[log.cleaner]\nbackoff.ms = 1000\n",
            from_file.display()
        ),
    )
    .expect("write config");
    let config = file.to_str().expect("utf-8 path");
    let env_dir = from_env.to_str().expect("utf-8 path");

    let server = Server::start(&["--config", config], &[]);
    assert_ready(&server.ready, ready_line(&from_file, "0 topics"));
    stop(server);

    let server = Server::start(&["--config", config], &[("QUIVER_LOG_DIRS", env_dir)]);
    assert_ready(&server.ready, ready_line(&from_env, "0 topics"));
    stop(server);

    let flag_dir = from_flag.to_str().expect("utf-8 path");
    let server = Server::start(
        &["--config", config, "--data-dir", flag_dir],
        &[("QUIVER_LOG_DIRS", env_dir)],
    );
    assert_ready(&server.ready, ready_line(&from_flag, "0 topics"));
    stop(server);

    // Client commands read QUIVER_* too: the data directory and the default partition count.
    let envs = [("QUIVER_LOG_DIRS", env_dir), ("QUIVER_NUM_PARTITIONS", "4")];
    let created = common::run_with_env(&["topics", "create", "t"], b"", &envs).ok();
    assert_eq!(created.stdout, "created topic 't' with 4 partitions\n");
    let listed = common::run(&["topics", "list", "--data-dir", env_dir], b"").ok();
    assert_eq!(listed.stdout, "t\n");
}

#[test]
fn bad_settings_are_refused_naming_their_source() {
    let d = DataDir::new();
    let file = d.tmp().join("bad.toml");
    std::fs::write(&file, "log.dirz = \"/somewhere\"\n").expect("write config");
    let config = file.to_str().expect("utf-8 path");
    let err = common::run(&["server", "--config", config, "--data-dir", d.arg()], b"").failed();
    assert!(
        err.starts_with(&format!(
            "error: {config}: invalid config: unknown server config 'log.dirz'; known keys: "
        )),
        "{err}"
    );
    assert!(err.contains("log.dirs"), "{err}");

    std::fs::write(&file, "log.dirs = [\"/a\", \"/b\"]\n").expect("write config");
    let err = common::run(&["server", "--config", config, "--data-dir", d.arg()], b"").failed();
    assert_eq!(
        err,
        format!("error: {config}: log.dirs: expected a string, integer or boolean, got a array\n")
    );

    let err = common::run_with_env(
        &["server", "--data-dir", d.arg()],
        b"",
        &[("QUIVER_NUM_PARTITIONS", "0")],
    )
    .failed();
    assert_eq!(
        err,
        "error: environment variable QUIVER_NUM_PARTITIONS: invalid config: num.partitions=0 must be at least 1\n"
    );

    let missing = d.tmp().join("missing.toml");
    let err = common::run(
        &["server", "--config", missing.to_str().expect("utf-8 path")],
        b"",
    )
    .failed();
    assert!(
        err.starts_with(&format!(
            "error: cannot read config file {}: ",
            missing.display()
        )),
        "{err}"
    );

    assert!(
        !d.path().exists(),
        "a refused start created the data directory"
    );
}

/// A Kafka KRaft `server.properties` with the keys of Kafka's stock file.
const KAFKA_SERVER_PROPERTIES: &str = include_str!("data/kafka-kraft-server.properties");

#[test]
fn kafka_stock_server_properties_starts_the_server() {
    let d = DataDir::new();
    let file = d.tmp().join("server.properties");
    std::fs::write(&file, KAFKA_SERVER_PROPERTIES).expect("write config");
    let config = file.to_str().expect("utf-8 path");

    // The data directory and listener flags win over the file's log.dirs and listeners.
    let server = Server::start(&["--config", config, "--data-dir", d.arg()], &[]);
    assert_ready(&server.ready, ready_line(d.path(), "0 topics"));
    server.signal("TERM");
    let out = server.wait().ok();
    assert_eq!(out.stdout, "quiver server stopped\n");
    let line_of = |key: &str| {
        KAFKA_SERVER_PROPERTIES
            .lines()
            .position(|l| l.starts_with(&format!("{key}=")))
            .expect("the key is in the file")
            + 1
    };
    // One warning line per key that means nothing here, naming where it is.
    for key in [
        "process.roles",
        "controller.quorum.voters",
        "num.recovery.threads.per.data.dir",
        "offsets.topic.replication.factor",
    ] {
        let line = line_of(key);
        let warning = format!("{config}:{line}: {key} has no effect in Quiver: ");
        assert_eq!(
            out.stderr.matches(&warning).count(),
            1,
            "{warning}\n{}",
            out.stderr
        );
    }
    assert!(
        out.stderr.contains(&format!(
            "{config}:{}: listeners entry CONTROLLER://:9093 has no effect in Quiver",
            line_of("listeners")
        )),
        "{}",
        out.stderr
    );
}

#[test]
fn typo_in_server_properties_is_refused_naming_file_and_line() {
    let d = DataDir::new();
    let file = d.tmp().join("server.properties");
    let text = KAFKA_SERVER_PROPERTIES.replace("num.partitions=1", "num.partitons=1");
    let line = text
        .lines()
        .position(|l| l.starts_with("num.partitons="))
        .expect("the typo is in the file")
        + 1;
    std::fs::write(&file, text).expect("write config");
    let config = file.to_str().expect("utf-8 path");
    let stderr = common::run(&["server", "--config", config, "--data-dir", d.arg()], b"").failed();
    // The warnings about keys read before it come first; the error is the last line.
    let err = stderr.lines().last().unwrap_or_default();
    assert!(
        err.starts_with(&format!(
            "error: {config}:{line}: invalid config: unknown server config 'num.partitons'; known keys: "
        )),
        "{stderr}"
    );
    assert!(err.contains("num.partitions"), "{err}");
    assert!(
        !d.path().exists(),
        "a refused start created the data directory"
    );
}
