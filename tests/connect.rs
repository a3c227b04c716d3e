//! End-to-end tests of `quiver connect` with the Parquet sink: the same scenario writing to the
//! local filesystem and to a real S3-compatible server (moto's, on loopback), read back by
//! independent readers (pyarrow and DuckDB); `kill -9` at random points while sinking; and
//! `quiver connect validate`.

mod common;

use std::io::{BufRead, BufReader};
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
    assert!(
        last.iter().any(|l| l.starts_with("lake: 600 records in ")),
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
    let server = Running::start(&[]);
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
                assert!(name.ends_with(".parquet"), "a stray file {}", p.display());
            }
        }
    }
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
