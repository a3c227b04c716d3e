//! End-to-end tests of `quiver connect` with the Parquet sink: the same scenario writing to the
//! local filesystem and to a real S3-compatible server (moto's, on loopback), read back by
//! independent readers (pyarrow and DuckDB); `kill -9` at random points while sinking; and
//! `quiver connect validate`.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cli, Running, python, quiver, wait_bounded};

/// moto's S3 server on a free loopback port, with one bucket; killed when dropped.
struct S3 {
    child: Child,
    endpoint: String,
}

impl S3 {
    /// A server with `bucket`, taking any credentials.
    #[track_caller]
    fn start(bucket: &str) -> S3 {
        let s3 = S3::spawn(&[]);
        let made = Command::new(python::python())
            .args([
                "-c",
                &format!(
                    "import urllib.request as r; r.urlopen(r.Request('{}/{bucket}', method='PUT'))",
                    s3.endpoint
                ),
            ])
            .status()
            .expect("run python");
        assert!(made.success(), "cannot create the bucket");
        s3
    }

    /// A server that checks credentials against its (empty) IAM: every key is refused.
    #[track_caller]
    fn start_checking_credentials() -> S3 {
        S3::spawn(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")])
    }

    #[track_caller]
    fn spawn(envs: &[(&str, &str)]) -> S3 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let server = python::python().with_file_name("moto_server");
        assert!(
            server.exists(),
            "no moto_server next to {}: run ./scripts/test once, which installs moto[server]",
            python::python().display()
        );
        let child = Command::new(server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let s3 = S3 {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        s3
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SCHEMA: &str = "id BIGINT NOT NULL, region STRING, amount DOUBLE";

/// The region of order `id`.
fn region(id: u64) -> &'static str {
    ["eu", "us", "ap"][(id % 3) as usize]
}

/// Orders `first..first + count` as keyed JSON lines for `quiver produce --key-separator '|'`.
fn orders(first: u64, count: u64) -> Vec<u8> {
    let mut out = String::new();
    for id in first..first + count {
        out.push_str(&format!(
            "c{}|{{\"id\": {id}, \"region\": \"{}\", \"amount\": {}.25}}\n",
            id % 11,
            region(id),
            id % 50
        ));
    }
    out.into_bytes()
}

fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the config");
    path
}

/// `quiver connect CONFIG --bootstrap-server …`, its output lines sent on a channel.
fn connect(server: &Running, config: &Path) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut child = server
        .command(&["connect", config.to_str().expect("UTF-8 path")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn quiver connect");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("stdout is piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

fn signal(child: &Child, name: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(ok.success());
}

/// What pyarrow and DuckDB read from the tree at `root`, waiting for `expect` rows.
fn check_lake(root: &str, s3: Option<&S3>, expect: u64) -> serde_json::Value {
    let mut args = vec!["--root", root];
    let expect = expect.to_string();
    args.extend(["--expect", &expect]);
    if let Some(s3) = s3 {
        args.extend(["--s3-endpoint", &s3.endpoint]);
    }
    let out = python::run("check_lake.py", &args, Duration::from_secs(120));
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// What both readers must find after orders `0..n`.
fn expected(n: u64) -> serde_json::Value {
    let mut by_region = serde_json::Map::new();
    for r in ["ap", "eu", "us"] {
        let count = (0..n).filter(|id| region(*id) == r).count();
        by_region.insert(r.into(), count.into());
    }
    serde_json::json!({
        "rows": n,
        "id_sum": (0..n).sum::<u64>(),
        "by_region": by_region,
        "duplicates": 0,
        "columns": ["amount", "id", "key", "region", "rowheaders", "rowoffset", "rowpartition", "rowtime"],
    })
}

/// Produces 600 orders, sinks them with `quiver connect` to the store `store` names, stops it
/// with SIGTERM, and checks what pyarrow and DuckDB read at `root`.
fn sink_scenario(store: &str, root: &str, s3: Option<&S3>) {
    let server = Running::start(&[]);
    server
        .run(&["topics", "create", "orders", "--partitions", "3"], b"")
        .ok();
    server
        .run(
            &["produce", "orders", "--key-separator", "|"],
            &orders(0, 600),
        )
        .ok();
    let config = write_config(
        server.data().tmp(),
        "lake.properties",
        &format!(
            "name=lake\nconnector.class=S3Sink\ntopics=orders\nvalue.format=json\n\
             value.schema={SCHEMA}\npartitioner.class=field\npartition.field.name=region\n\
             flush.size=100\nrotate.schedule.interval.ms=1000\n{store}"
        ),
    );
    let validated = quiver()
        .args(["connect", "validate", config.to_str().expect("UTF-8")])
        .output()
        .expect("run validate");
    let said = String::from_utf8_lossy(&validated.stdout);
    assert!(
        validated.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&validated.stderr)
    );
    assert!(said.contains(": ok: connector 'lake'"), "{said}");

    let (mut child, lines) = connect(&server, &config);
    let started = lines
        .recv_timeout(Duration::from_secs(60))
        .expect("a start line");
    assert!(
        started.starts_with("connector 'lake' started: topics orders to "),
        "{started}"
    );
    // The schedule completes the last files without a stop.
    let found = check_lake(root, s3, 600);
    signal(&child, "TERM");
    let status = wait_bounded(&mut child, Duration::from_secs(60));
    assert!(status.success(), "quiver connect exited with {status}");
    let last: Vec<String> = lines.try_iter().collect();
    // Every record sunk and committed: the lag the last fetches saw is gone.
    assert!(
        last.iter()
            .any(|l| l.starts_with("lake: 600 records in ") && l.ends_with(", lag 0")),
        "{last:?}"
    );
    let want = expected(600);
    assert_eq!(found["pyarrow"], want, "{found}");
    assert_eq!(found["duckdb"], want, "{found}");
}

#[test]
fn a_topic_sinks_to_parquet_on_the_local_filesystem_and_independent_readers_agree() {
    let lake = tempfile::tempdir().expect("temp dir");
    let url = format!("file://{}", lake.path().display());
    let root = lake.path().join("topics/orders");
    sink_scenario(
        &format!("store.url={url}\n"),
        root.to_str().expect("UTF-8"),
        None,
    );
}

#[test]
fn a_topic_sinks_to_parquet_on_s3_and_independent_readers_agree() {
    let s3 = S3::start("lake");
    // Confluent's shape: the bucket by name, store.url as the endpoint.
    sink_scenario(
        &format!(
            "s3.bucket.name=lake\ns3.region=us-east-1\nstore.url={}\ntopics.dir=raw\n\
             aws.access.key.id=testing\naws.secret.access.key=testing\n",
            s3.endpoint
        ),
        "lake/raw/orders",
        Some(&s3),
    );
}

#[test]
fn kill_9_while_sinking_never_loses_or_duplicates_a_record() {
    // Each restart joins the connector's group while the killed process's member is still in
    // it: short sessions keep the wait for it to expire short.
    let server = Running::start(&[
        ("QUIVER_GROUP_MIN_SESSION_TIMEOUT_MS", "1000"),
        ("QUIVER_GROUP_INITIAL_REBALANCE_DELAY_MS", "0"),
    ]);
    server
        .run(&["topics", "create", "orders", "--partitions", "3"], b"")
        .ok();
    let lake = tempfile::tempdir().expect("temp dir");
    let config = write_config(
        server.data().tmp(),
        "lake.json",
        &serde_json::json!({
            "name": "crashy",
            "config": {
                "connector.class": "ParquetSink",
                "topics": "orders",
                "store.url": format!("file://{}", lake.path().display()),
                "value.format": "json",
                "value.schema": SCHEMA,
                "partitioner.class": "field",
                "partition.field.name": "region",
                "flush.size": 50,
                "rotate.schedule.interval.ms": 700,
                "consumer.override.session.timeout.ms": 1500,
                "consumer.override.heartbeat.interval.ms": 300,
            }
        })
        .to_string(),
    );
    let mut produced = 0;
    // Deterministic "random" kill points, so a failure can be replayed.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..6 {
        server
            .run(
                &["produce", "orders", "--key-separator", "|"],
                &orders(produced, 400),
            )
            .ok();
        produced += 400;
        let (mut child, _lines) = connect(&server, &config);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(300 + seed % 1500));
        signal(&child, "KILL");
        let _ = wait_bounded(&mut child, Duration::from_secs(30));
    }
    let (mut child, _lines) = connect(&server, &config);
    let root = lake.path().join("topics/orders");
    let found = check_lake(root.to_str().expect("UTF-8"), None, produced);
    signal(&child, "TERM");
    assert!(wait_bounded(&mut child, Duration::from_secs(60)).success());
    let want = expected(produced);
    assert_eq!(found["pyarrow"], want, "{found}");
    assert_eq!(found["duckdb"], want, "{found}");
    // Nothing partial is left where readers look.
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                assert!(
                    name.ends_with(".parquet") && !name.starts_with('.'),
                    "a stray file {}",
                    p.display()
                );
            }
        }
    }
}

/// The records a `quiver connect` said it sank when it stopped (`lake: N records in …`).
fn records_sunk(lines: &std::sync::mpsc::Receiver<String>, name: &str) -> u64 {
    let prefix = format!("{name}: ");
    let last: Vec<String> = lines.try_iter().collect();
    last.iter()
        .rev()
        .find_map(|l| {
            l.strip_prefix(&prefix)?
                .split_once(" records in ")?
                .0
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no final count in {last:?}"))
}

#[test]
fn connect_processes_with_one_connector_name_share_its_partitions_and_take_over_from_a_dead_one() {
    // Short sessions so the dead process's partitions move within seconds.
    let server = Running::start(&[
        ("QUIVER_GROUP_MIN_SESSION_TIMEOUT_MS", "1000"),
        ("QUIVER_GROUP_INITIAL_REBALANCE_DELAY_MS", "0"),
    ]);
    server
        .run(&["topics", "create", "orders", "--partitions", "4"], b"")
        .ok();
    let lake = tempfile::tempdir().expect("temp dir");
    let config = write_config(
        server.data().tmp(),
        "shared.properties",
        &format!(
            "name=shared\nconnector.class=ParquetSink\ntopics=orders\nvalue.format=json\n\
             value.schema={SCHEMA}\npartitioner.class=field\npartition.field.name=region\n\
             flush.size=50\nrotate.schedule.interval.ms=700\n\
             consumer.override.session.timeout.ms=2000\n\
             consumer.override.heartbeat.interval.ms=300\nstore.url=file://{}\n",
            lake.path().display()
        ),
    );
    let root = lake.path().join("topics/orders");
    let root = root.to_str().expect("UTF-8");
    let produce = |from: u64, count: u64| {
        server
            .run(
                &["produce", "orders", "--key-separator", "|"],
                &orders(from, count),
            )
            .ok();
    };
    produce(0, 800);
    let (mut a, _a_lines) = connect(&server, &config);
    let (mut b, b_lines) = connect(&server, &config);
    let found = check_lake(root, None, 800);
    assert_eq!(found["duckdb"], expected(800), "{found}");

    // A dies without a word: B takes its partitions once A's session runs out.
    signal(&a, "KILL");
    let _ = wait_bounded(&mut a, Duration::from_secs(30));
    produce(800, 800);
    let found = check_lake(root, None, 1600);
    assert_eq!(found["duckdb"], expected(1600), "{found}");

    // A comes back: the two split the partitions again and both sink what follows.
    let (mut a, a_lines) = connect(&server, &config);
    std::thread::sleep(Duration::from_secs(3));
    produce(1600, 800);
    let found = check_lake(root, None, 2400);
    signal(&a, "TERM");
    assert!(wait_bounded(&mut a, Duration::from_secs(60)).success());
    signal(&b, "TERM");
    assert!(wait_bounded(&mut b, Duration::from_secs(60)).success());
    let want = expected(2400);
    assert_eq!(found["pyarrow"], want, "{found}");
    assert_eq!(found["duckdb"], want, "{found}");
    let (by_a, by_b) = (
        records_sunk(&a_lines, "shared"),
        records_sunk(&b_lines, "shared"),
    );
    assert!(
        by_a > 0 && by_a < 800,
        "the restarted process sank {by_a} of the last 800"
    );
    assert!(
        by_b >= 800,
        "the survivor sank {by_b}: at least A's share after the kill"
    );
}

#[test]
fn validate_names_what_is_wrong() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = write_config(
        dir.path(),
        "bad.properties",
        "name=bad\nconnector.class=ParquetSink\ntopics=t\nstore.url=file:///tmp/x\nflush.sise=10\n",
    );
    let out = quiver()
        .args(["connect", "validate", bad.to_str().expect("UTF-8")])
        .output()
        .expect("run validate");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown key 'flush.sise'") && err.contains("did you mean 'flush.size'?"),
        "{err}"
    );
    // A bucket that does not exist on a reachable S3 server.
    let s3 = S3::start("exists");
    let missing = write_config(
        dir.path(),
        "missing.toml",
        &format!(
            "name = \"m\"\n\"connector.class\" = \"S3Sink\"\ntopics = [\"t\"]\n\
             \"s3.bucket.name\" = \"nope\"\n\"store.url\" = \"{}\"\n\
             \"aws.access.key.id\" = \"testing\"\n\"aws.secret.access.key\" = \"testing\"\n",
            s3.endpoint
        ),
    );
    let out = quiver()
        .args(["connect", "validate", missing.to_str().expect("UTF-8")])
        .output()
        .expect("run validate");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the bucket does not exist"), "{err}");
    // Credentials the server does not know.
    let checking = S3::start_checking_credentials();
    let refused = write_config(
        dir.path(),
        "refused.properties",
        &format!(
            "name=r\nconnector.class=S3Sink\ntopics=t\ns3.bucket.name=lake\nstore.url={}\n\
             aws.access.key.id=wrong\naws.secret.access.key=wrong\n",
            checking.endpoint
        ),
    );
    let out = quiver()
        .args(["connect", "validate", refused.to_str().expect("UTF-8")])
        .output()
        .expect("run validate");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the store refused the credentials"), "{err}");
    assert!(err.contains("InvalidAccessKeyId"), "{err}");
    // `keys` lists every key with its default.
    let keys = quiver()
        .args(["connect", "keys"])
        .output()
        .expect("run keys");
    let text = String::from_utf8_lossy(&keys.stdout);
    assert!(text.starts_with("KEY"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("flush.size") && l.contains("100000")),
        "{text}"
    );
}

#[test]
fn the_server_runs_the_connectors_of_its_directory() {
    let data = common::DataDir::new();
    let lake = tempfile::tempdir().expect("temp dir");
    let dir = data.tmp().join("connectors");
    std::fs::create_dir(&dir).expect("mkdir");
    write_config(
        &dir,
        "lake.toml",
        &format!(
            "name = \"lake\"\n\"connector.class\" = \"ParquetSink\"\ntopics = \"orders\"\n\
             \"store.url\" = \"file://{}\"\n\"value.format\" = \"json\"\n\"value.schema\" = \"{SCHEMA}\"\n\
             \"rotate.schedule.interval.ms\" = 500\n",
            lake.path().display()
        ),
    );
    let server = common::Server::start(
        &[
            "--data-dir",
            data.arg(),
            "--connectors",
            dir.to_str().expect("UTF-8"),
        ],
        &[],
    );
    let bootstrap = common::bootstrap_of(&server.ready);
    // The topic is created after the server (and its connector) started: the connector waits.
    std::thread::sleep(Duration::from_millis(500));
    let target = ["--bootstrap-server", bootstrap.as_str()];
    let mut create = vec!["topics", "create", "orders", "--partitions", "2"];
    create.extend(target);
    common::run(&create, b"").ok();
    let mut produce = vec!["produce", "orders", "--key-separator", "|"];
    produce.extend(target);
    common::run(&produce, &orders(0, 300)).ok();
    let root = lake.path().join("topics/orders");
    let found = check_lake(root.to_str().expect("UTF-8"), None, 300);
    server.signal("TERM");
    let out = server.wait().ok();
    assert!(
        out.stdout
            .contains("connector 'lake' running: topics orders to file://"),
        "{}",
        out.stdout
    );
    let mut want = expected(300);
    // The default partitioner: no region directories, so region is a column of the files.
    want["columns"] = serde_json::json!([
        "amount",
        "id",
        "key",
        "partition",
        "region",
        "rowheaders",
        "rowoffset",
        "rowpartition",
        "rowtime"
    ]);
    assert_eq!(found["pyarrow"], want, "{found}");
}

/// The examples' pipeline from a file: `orders-from-file.properties` reads the JSON-lines file
/// into `orders` and finishes; run again, it writes nothing twice; `orders-to-lake.properties`
/// then sinks the topic to Parquet that pyarrow and DuckDB read.
#[test]
fn the_file_source_example_feeds_the_lake_example() {
    let server = Running::start(&[]);
    let example = |name: &str| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("examples/connectors")
            .join(name)
    };
    let source = example("orders-from-file.properties");
    let source = source.to_str().expect("UTF-8");
    for _ in 0..2 {
        let out = server.run(&["connect", source], b"").ok();
        assert!(
            out.stdout
                .contains("connector 'orders-from-file' started: files examples/data/orders.jsonl (json) to topic orders"),
            "{}",
            out.stdout
        );
    }
    let records = server.consume_all(
        "orders",
        &["--print-key", "--isolation-level", "read_committed"],
    );
    assert_eq!(records.len(), 8, "{records:?}");
    assert!(
        records.iter().any(|r| r.starts_with("eu\t{\"id\": 1,")),
        "{records:?}"
    );

    let lake = tempfile::tempdir().expect("temp dir");
    let text = std::fs::read_to_string(example("orders-to-lake.properties")).expect("example");
    let text = text.replace(
        "store.url=file:///tmp/quiver-lake",
        &format!("store.url=file://{}", lake.path().display()),
    ) + "rotate.schedule.interval.ms=500\n";
    assert!(text.contains(&lake.path().display().to_string()));
    let config = write_config(lake.path(), "lake.properties", &text);
    let (mut child, _lines) = connect(&server, &config);
    let root = lake.path().join("topics/orders");
    let found = check_lake(root.to_str().expect("UTF-8"), None, 8);
    signal(&child, "TERM");
    assert!(wait_bounded(&mut child, Duration::from_secs(60)).success());
    let want = serde_json::json!({
        "rows": 8,
        "id_sum": 36,
        "by_region": {"eu": 3, "us": 3, "ap": 2},
        "duplicates": 0,
        "columns": ["amount", "id", "key", "region", "rowheaders", "rowoffset", "rowpartition", "rowtime"],
    });
    assert_eq!(found["pyarrow"], want, "{found}");
    assert_eq!(found["duckdb"], want, "{found}");
}

/// The examples' datagen → topic → Parquet-on-S3 pipeline, both connectors in one `quiver
/// connect` against a running server, the S3 sink pointed at moto's server: every generated
/// click is in the hourly Parquet tree once.
#[test]
fn the_datagen_example_feeds_the_s3_sink_example() {
    let s3 = S3::start("lake");
    let server = Running::start(&[]);
    let dir = tempfile::tempdir().expect("temp dir");
    let example = |name: &str| {
        std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("examples/connectors")
                .join(name),
        )
        .expect("example")
    };
    // 400 clicks, faster than the example's 50 a second.
    let datagen = example("clicks-datagen.properties")
        .replace("messages.per.second=50", "messages.per.second=400")
        + "iterations=400\n";
    let datagen = write_config(dir.path(), "clicks-datagen.properties", &datagen);
    let sink = example("clicks-to-s3.json")
        .replace("http://127.0.0.1:5000", &s3.endpoint)
        .replace(
            "\"flush.size\": \"50000\"",
            "\"flush.size\": \"50000\", \"rotate.schedule.interval.ms\": \"1000\"",
        );
    assert!(sink.contains(&s3.endpoint) && sink.contains("rotate.schedule"));
    let sink = write_config(dir.path(), "clicks-to-s3.json", &sink);
    let mut child = server
        .command(&[
            "connect",
            datagen.to_str().expect("UTF-8"),
            sink.to_str().expect("UTF-8"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn quiver connect");
    let found = check_lake("lake/topics/clicks", Some(&s3), 400);
    signal(&child, "TERM");
    let status = wait_bounded(&mut child, Duration::from_secs(60));
    let mut said = String::new();
    for out in [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn std::io::Read>),
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn std::io::Read>),
    ]
    .into_iter()
    .flatten()
    {
        let mut out = out;
        out.read_to_string(&mut said).expect("read the output");
    }
    assert!(
        status.success(),
        "quiver connect exited with {status}: {said}"
    );
    assert!(
        said.contains("connector 'clicks-datagen' finished"),
        "{said}"
    );
    assert!(
        said.contains("clicks-datagen: 400 records written"),
        "{said}"
    );
    for reader in ["pyarrow", "duckdb"] {
        let f = &found[reader];
        assert_eq!(f["rows"], 400, "{found}");
        assert_eq!(f["duplicates"], 0, "{found}");
        let columns: Vec<&str> = f["columns"]
            .as_array()
            .expect("columns")
            .iter()
            .filter_map(|c| c.as_str())
            .collect();
        for c in ["user", "page", "ms", "year", "month", "day", "hour"] {
            assert!(columns.contains(&c), "{reader} lacks {c}: {found}");
        }
    }
}

/// `(status, JSON body)` of an HTTP request to the server's API.
fn rest(api: &str, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let (status, text) = common::http(api, method, path, body);
    let value = if text.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
    };
    (status, value)
}

/// Waits until the connector's status satisfies `check`.
fn wait_status(api: &str, name: &str, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
    let start = Instant::now();
    loop {
        let (code, status) = rest(api, "GET", &format!("/connectors/{name}/status"), "");
        if code == 200 && check(&status) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{name} never {what}: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The ids of the records kcat reads (read_committed, librdkafka's default) from `topic`.
fn kcat_ids(bootstrap: &str, topic: &str) -> Vec<u64> {
    let mut cmd = Command::new("kcat");
    cmd.args(["-b", bootstrap, "-C", "-t", topic, "-e", "-q", "-f", "%s\n"]);
    let out = common::run_bounded(cmd, b"", common::COMMAND_TIMEOUT);
    assert!(out.status.success(), "kcat: {}", out.stderr);
    let mut ids: Vec<u64> = out
        .stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON record");
            v["id"].as_u64().expect("an id")
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// Kafka Connect's REST API on the server's HTTP port: a datagen connector is created, refused
/// twice (same name, unknown key), paused, resumed and deleted; kcat reads every generated id
/// once, with no gap across the pause. A connector made with PUT survives a restart.
#[test]
fn the_rest_api_creates_pauses_resumes_and_deletes_connectors() {
    let data = common::DataDir::new();
    let server = common::Server::start(&["--data-dir", data.arg()], &[]);
    let api = common::sql_address(&server.ready);
    let bootstrap = common::bootstrap_of(&server.ready);
    assert_eq!(
        rest(&api, "GET", "/connectors", ""),
        (200, serde_json::json!([]))
    );
    let datagen = serde_json::json!({
        "name": "gen",
        "config": {
            "connector.class": "DataGen",
            "kafka.topic": "ids",
            "fields": "id:sequence(0); user:choice(ann, bob)",
            "messages.per.second": 300,
            "topic.creation.default.partitions": 2,
            "transaction.boundary.interval.ms": 100,
        }
    })
    .to_string();
    let (code, created) = rest(&api, "POST", "/connectors", &datagen);
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["name"], "gen");
    assert_eq!(created["type"], "source");
    assert_eq!(created["config"]["kafka.topic"], "ids");
    let (code, again) = rest(&api, "POST", "/connectors", &datagen);
    assert_eq!(code, 409, "{again}");
    let bad = datagen.replace("messages.per.second", "messages.per.sec");
    let (code, refused) = rest(
        &api,
        "POST",
        "/connectors",
        &bad.replace("\"gen\"", "\"bad\""),
    );
    assert_eq!(code, 400, "{refused}");
    let message = refused["message"].as_str().expect("a message");
    assert!(
        message.contains("unknown key 'messages.per.sec'"),
        "{message}"
    );
    assert_eq!(
        rest(&api, "GET", "/connectors", ""),
        (200, serde_json::json!(["gen"]))
    );

    let (code, expanded) = rest(&api, "GET", "/connectors?expand=status&expand=info", "");
    assert_eq!(code, 200, "{expanded}");
    assert_eq!(expanded["gen"]["status"]["type"], "source", "{expanded}");
    assert_eq!(
        expanded["gen"]["info"]["config"]["kafka.topic"], "ids",
        "{expanded}"
    );
    wait_status(&api, "gen", "wrote 100 records", |s| {
        s["connector"]["state"] == "RUNNING" && s["progress"]["records"].as_u64() >= Some(100)
    });
    assert_eq!(rest(&api, "PUT", "/connectors/gen/pause", "").0, 202);
    wait_status(&api, "gen", "paused", |s| {
        s["connector"]["state"] == "PAUSED"
    });
    let paused = kcat_ids(&bootstrap, "ids");
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        kcat_ids(&bootstrap, "ids").len(),
        paused.len(),
        "nothing is written while paused"
    );
    assert_eq!(rest(&api, "PUT", "/connectors/gen/resume", "").0, 202);
    let written = paused.len() as u64;
    wait_status(&api, "gen", "went on after the resume", |s| {
        s["connector"]["state"] == "RUNNING" && s["progress"]["records"].as_u64() >= Some(100)
    });
    assert_eq!(rest(&api, "DELETE", "/connectors/gen", "").0, 204);
    let (code, gone) = rest(&api, "GET", "/connectors/gen", "");
    assert_eq!(code, 404, "{gone}");
    assert_eq!(gone["message"], "connector gen not found");
    let ids = kcat_ids(&bootstrap, "ids");
    assert!(
        ids.len() as u64 >= written + 100,
        "{} after {written}",
        ids.len()
    );
    assert_eq!(ids, (0..ids.len() as u64).collect::<Vec<u64>>());

    // PUT creates (201), then replaces (200); the connector is a SQL statement in the command
    // log, so it is back after a restart, and resumes where it committed. So is a pause.
    let kept = serde_json::json!({
        "connector.class": "DataGen",
        "kafka.topic": "kept",
        "fields": "id:sequence(0)",
        "iterations": 200,
        "messages.per.second": 1000,
    })
    .to_string();
    assert_eq!(rest(&api, "PUT", "/connectors/keep/config", &kept).0, 201);
    assert_eq!(rest(&api, "PUT", "/connectors/keep/config", &kept).0, 200);
    wait_status(&api, "keep", "finished", |s| {
        s["connector"]["state"] == "FINISHED"
    });
    // A paused connector stays paused across a restart, as in Kafka Connect.
    let later = serde_json::json!({
        "connector.class": "DataGen",
        "kafka.topic": "later",
        "fields": "id:sequence(0)",
        "messages.per.second": 300,
        "transaction.boundary.interval.ms": 100,
    })
    .to_string();
    assert_eq!(rest(&api, "PUT", "/connectors/later/config", &later).0, 201);
    wait_status(&api, "later", "wrote 50 records", |s| {
        s["progress"]["records"].as_u64() >= Some(50)
    });
    assert_eq!(rest(&api, "PUT", "/connectors/later/pause", "").0, 202);
    server.signal("TERM");
    server.wait().ok();
    let server = common::Server::start(&["--data-dir", data.arg()], &[]);
    let api = common::sql_address(&server.ready);
    let bootstrap = common::bootstrap_of(&server.ready);
    assert_eq!(
        rest(&api, "GET", "/connectors", ""),
        (200, serde_json::json!(["keep", "later"]))
    );
    wait_status(&api, "keep", "finished again", |s| {
        s["connector"]["state"] == "FINISHED"
    });
    assert_eq!(kcat_ids(&bootstrap, "kept"), (0..200).collect::<Vec<u64>>());
    let (_, status) = rest(&api, "GET", "/connectors/later/status", "");
    assert_eq!(status["connector"]["state"], "PAUSED", "{status}");
    let before = kcat_ids(&bootstrap, "later");
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        kcat_ids(&bootstrap, "later"),
        before,
        "a paused connector writes nothing after a restart"
    );
    assert_eq!(rest(&api, "PUT", "/connectors/later/resume", "").0, 202);
    wait_status(&api, "later", "went on after the restart", |s| {
        s["connector"]["state"] == "RUNNING" && s["progress"]["records"].as_u64() >= Some(50)
    });
    assert_eq!(rest(&api, "DELETE", "/connectors/later", "").0, 204);
    let ids = kcat_ids(&bootstrap, "later");
    assert!(
        ids.len() >= before.len() + 50,
        "{} after {}",
        ids.len(),
        before.len()
    );
    assert_eq!(ids, (0..ids.len() as u64).collect::<Vec<u64>>());
    server.signal("TERM");
    server.wait().ok();
}
