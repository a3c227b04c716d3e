//! Real Kafka clients against the `quiver` binary on loopback: kafka-python and confluent-kafka
//! (librdkafka) through the scripts in `tests/python/`, and Debian's kcat.
//!
//! `./scripts/test` installs the clients: kcat, and a venv in `.venv` with the versions pinned in
//! `tests/python/requirements.txt`; it exports `QUIVER_PYTHON` (default `./.venv/bin/python`).
//! A missing client fails the test with that hint rather than skipping it, so that a green run
//! always means the clients were exercised.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Output, Running, drain, python, run_bounded};

/// Longest one client script may run (a debug server on a busy 2-core machine).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(240);
/// Longest one kcat invocation may run.
const KCAT_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// Checks that a stopped server said so (see [`Running::stop`]); returns its standard error.
#[track_caller]
fn stopped_cleanly(out: Output) -> String {
    assert_eq!(out.stdout, "quiver server stopped\n", "{out:#?}");
    out.stderr
}

/// Runs `tests/python/SCRIPT ARGS` and returns its standard output; fails the test with both
/// outputs unless it succeeds.
#[track_caller]
fn py(script: &str, args: &[&str]) -> String {
    python::run(script, args, SCRIPT_TIMEOUT)
}

#[track_caller]
fn require_kcat() {
    let ok = Command::new("kcat")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "kcat is not installed; run ./scripts/test once, which installs it"
    );
}

/// Runs `kcat -b BOOTSTRAP ARGS` with `input` and returns its standard output; fails the test
/// unless it succeeds.
#[track_caller]
fn kcat(bootstrap: &str, args: &[&str], input: &str) -> String {
    let mut cmd = Command::new("kcat");
    cmd.args(["-b", bootstrap]).args(args);
    let ran = run_bounded(cmd, input.as_bytes(), KCAT_TIMEOUT);
    assert!(
        ran.status.success(),
        "kcat {args:?} failed\n--- stdout\n{}\n--- stderr\n{}",
        ran.stdout,
        ran.stderr
    );
    ran.stdout
}

// ---------------------------------------------------------------------------------------------
// kafka-python
// ---------------------------------------------------------------------------------------------

#[test]
fn kafka_python_seed_snippets() {
    let b = Running::start(&[]);
    let out = py("kafka_python_clients.py", &["seed", &b.port().to_string()]);
    assert!(out.contains("seed snippets: ok"), "{out}");
}

#[test]
fn kafka_python_every_codec_round_trips() {
    let b = Running::start(&[]);
    let out = py("kafka_python_clients.py", &["codecs", b.bootstrap()]);
    assert!(out.contains("codecs: ok"), "{out}");
}

#[test]
fn kafka_python_reads_topics_stored_compressed_in_every_codec() {
    let b = Running::start(&[]);
    let out = py("kafka_python_clients.py", &["at-rest", b.bootstrap()]);
    assert!(out.contains("at-rest: ok"), "{out}");
}

// ---------------------------------------------------------------------------------------------
// confluent-kafka (librdkafka)
// ---------------------------------------------------------------------------------------------

#[test]
fn confluent_idempotent_producer_consumer_group_rebalances_and_commits_survive_a_restart() {
    // No initial rebalance delay: members join at once (Kafka's default waits 3 s).
    let envs = [("QUIVER_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")];
    let mut b = Running::start(&envs);
    let state = b.data().tmp().join("groups-state.json");
    let state = state.to_str().expect("temp paths are UTF-8");
    let out = py(
        "consumer_groups.py",
        &["produce-and-consume", b.bootstrap(), state],
    );
    assert!(out.contains("produce-and-consume: ok"), "{out}");

    stopped_cleanly(b.restart(&envs));
    let out = py("consumer_groups.py", &["resume", b.bootstrap(), state]);
    assert!(out.contains("resume: 600 records"), "{out}");
    stopped_cleanly(b.stop());
}

#[test]
fn confluent_transactional_producer_commits_and_aborts_group_offsets_and_is_fenced() {
    let mut b = Running::start(&[]);
    let out = py("transactions.py", &["group-offsets", b.bootstrap()]);
    for step in ["commit: ok", "abort: ok", "transactions: ok"] {
        assert!(out.contains(step), "{step}\n{out}");
    }
    stopped_cleanly(b.stop());
}

#[test]
fn confluent_admin_client_topic_lifecycle_and_errors() {
    let b = Running::start(&[]);
    let out = py("admin.py", &[b.bootstrap()]);
    assert!(out.contains("admin: ok"), "{out}");
}

#[test]
fn confluent_keyed_records_land_where_javas_partitioner_puts_them() {
    let b = Running::start(&[]);
    let out = py("partitioner.py", &[b.bootstrap()]);
    assert!(
        out.contains("keys in the partitions Java picks: ok"),
        "{out}"
    );
}

// ---------------------------------------------------------------------------------------------
// kcat
// ---------------------------------------------------------------------------------------------

/// One record as printed by kcat with `-f '%p\t%o\t%k\t%s\t%h\n'`.
#[derive(Debug, Clone, PartialEq)]
struct Consumed {
    partition: i32,
    offset: i64,
    key: String,
    value: String,
    headers: String,
}

#[track_caller]
fn parse_consumed(out: &str) -> Vec<Consumed> {
    out.lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(f.len(), 5, "unexpected kcat line {line:?}");
            Consumed {
                partition: f[0].parse().expect("partition"),
                offset: f[1].parse().expect("offset"),
                key: f[2].to_owned(),
                value: f[3].to_owned(),
                headers: f[4].to_owned(),
            }
        })
        .collect()
}

const KCAT_FORMAT: &str = "%p\t%o\t%k\t%s\t%h\n";

#[test]
fn kcat_metadata_keys_headers_offsets_in_every_codec() {
    require_kcat();
    // Topics are created by the first produce, with num.partitions partitions.
    let b = Running::start(&[("QUIVER_NUM_PARTITIONS", "3")]);
    let bs = b.bootstrap();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("kcat-{codec}");
        let n = 60;
        let input: String = (0..n)
            .map(|i| format!("key{}:value {i} via {codec}\n", i % 7))
            .collect();
        let codec_header = format!("codec={codec}");
        kcat(
            bs,
            &[
                "-P",
                "-t",
                &topic,
                "-K",
                ":",
                "-z",
                codec,
                "-H",
                "trace=abc",
                "-H",
                &codec_header,
            ],
            &input,
        );

        let meta = kcat(bs, &["-L", "-t", &topic], "");
        assert!(
            meta.contains(&format!(" broker 0 at 127.0.0.1:{}", b.port())),
            "{meta}"
        );
        assert!(
            meta.contains(&format!("topic \"{topic}\" with 3 partitions:")),
            "{meta}"
        );
        for p in 0..3 {
            assert!(
                meta.contains(&format!("partition {p}, leader 0, replicas: 0, isrs: 0")),
                "{meta}"
            );
        }

        // Everything from the beginning: offsets dense per partition, each key in one partition
        // and in the order sent, headers as sent.
        let all = parse_consumed(&kcat(
            bs,
            &[
                "-C",
                "-t",
                &topic,
                "-o",
                "beginning",
                "-e",
                "-f",
                KCAT_FORMAT,
            ],
            "",
        ));
        assert_eq!(all.len(), n, "{codec}: {all:#?}");
        let mut by_partition: Vec<Vec<&Consumed>> = vec![Vec::new(); 3];
        for r in &all {
            assert_eq!(
                r.headers,
                format!("trace=abc,{codec_header}"),
                "{codec}: {r:?}"
            );
            let i: usize = r
                .value
                .strip_prefix("value ")
                .and_then(|v| v.strip_suffix(&format!(" via {codec}")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{codec}: unexpected value in {r:?}"));
            assert_eq!(r.key, format!("key{}", i % 7), "{codec}: {r:?}");
            by_partition[r.partition as usize].push(r);
        }
        for (p, records) in by_partition.iter().enumerate() {
            let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
            let dense: Vec<i64> = (0..records.len() as i64).collect();
            assert_eq!(offsets, dense, "{codec}: partition {p}");
        }
        for k in 0..7 {
            let key = format!("key{k}");
            let partitions: std::collections::BTreeSet<i32> = all
                .iter()
                .filter(|r| r.key == key)
                .map(|r| r.partition)
                .collect();
            assert_eq!(partitions.len(), 1, "{codec}: {key} in {partitions:?}");
            let values: Vec<&str> = all
                .iter()
                .filter(|r| r.key == key)
                .map(|r| r.value.as_str())
                .collect();
            let sent: Vec<String> = (k..n)
                .step_by(7)
                .map(|i| format!("value {i} via {codec}"))
                .collect();
            assert_eq!(values, sent, "{codec}: {key} out of order");
        }

        // From an offset, relative to the end, and from the end.
        let (p, records) = by_partition
            .iter()
            .enumerate()
            .max_by_key(|(_, r)| r.len())
            .expect("3 partitions");
        let len = records.len();
        assert!(len >= 3, "{codec}: {by_partition:#?}");
        let p = p.to_string();
        let from = (len - 3).to_string();
        let tail = parse_consumed(&kcat(
            bs,
            &[
                "-C",
                "-t",
                &topic,
                "-p",
                &p,
                "-o",
                &from,
                "-e",
                "-f",
                KCAT_FORMAT,
            ],
            "",
        ));
        let want: Vec<Consumed> = records[len - 3..].iter().map(|r| (*r).clone()).collect();
        assert_eq!(tail, want, "{codec}: from offset {from}");
        let last2 = parse_consumed(&kcat(
            bs,
            &[
                "-C",
                "-t",
                &topic,
                "-p",
                &p,
                "-o",
                "-2",
                "-e",
                "-f",
                KCAT_FORMAT,
            ],
            "",
        ));
        assert_eq!(last2, want[1..], "{codec}: the last 2");
        let end = kcat(bs, &["-C", "-t", &topic, "-o", "end", "-e"], "");
        assert_eq!(end, "", "{codec}: from the end");
    }
}

#[test]
fn kcat_from_the_end_gets_what_is_produced_after_it_started() {
    require_kcat();
    let b = Running::start(&[]);
    let bs = b.bootstrap();
    kcat(
        bs,
        &["-P", "-t", "live", "-p", "0"],
        "old 0\nold 1\nold 2\n",
    );

    let mut consumer = Command::new("kcat")
        .args([
            "-b", bs, "-C", "-t", "live", "-p", "0", "-o", "end", "-c", "1",
        ])
        .args(["-f", "%o\t%s\n"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kcat");
    let out = drain(consumer.stdout.take().expect("stdout is piped"));
    let err = drain(consumer.stderr.take().expect("stderr is piped"));
    // The consumer looks up the end asynchronously: send until it has one (bounded).
    let deadline = Instant::now() + KCAT_TIMEOUT;
    let mut sent = 0;
    let status = loop {
        if let Ok(Some(status)) = consumer.try_wait() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = consumer.kill();
            let _ = consumer.wait();
            break None;
        }
        kcat(
            bs,
            &["-P", "-t", "live", "-p", "0"],
            &format!("new {sent}\n"),
        );
        sent += 1;
        std::thread::sleep(Duration::from_millis(300));
    };
    let stdout = String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
    assert!(
        status.is_some_and(|s| s.success()),
        "kcat -o end -c 1 got nothing after {sent} new records: {status:?}\n{stdout}\n{stderr}"
    );
    let (offset, value) = stdout
        .trim_end()
        .split_once('\t')
        .unwrap_or_else(|| panic!("unexpected kcat output {stdout:?}"));
    let offset: i64 = offset.parse().expect("offset");
    let k: i64 = value
        .strip_prefix("new ")
        .and_then(|k| k.parse().ok())
        .unwrap_or_else(|| panic!("started before the end: {stdout:?}"));
    assert_eq!(offset, 3 + k, "{stdout}");
}

// ---------------------------------------------------------------------------------------------
// Hostile input
// ---------------------------------------------------------------------------------------------

/// A request frame: length, api key, version, correlation id, client id "t", then `body`.
fn frame(api_key: i16, version: i16, correlation: i32, body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::new();
    msg.extend_from_slice(&api_key.to_be_bytes());
    msg.extend_from_slice(&version.to_be_bytes());
    msg.extend_from_slice(&correlation.to_be_bytes());
    msg.extend_from_slice(&1i16.to_be_bytes());
    msg.push(b't');
    msg.extend_from_slice(body);
    let mut out = (msg.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&msg);
    out
}

/// Sends ApiVersions v0 on a new connection and returns the correlation id of the answer.
fn api_versions(bootstrap: &str) -> Result<i32, String> {
    let mut s = TcpStream::connect(bootstrap).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(&frame(18, 0, 4242, &[]))
        .map_err(|e| format!("write: {e}"))?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).map_err(|e| format!("read: {e}"))?;
    let len = i32::from_be_bytes(len);
    if !(4..=1 << 20).contains(&len) {
        return Err(format!("response length {len}"));
    }
    let mut body = vec![0u8; len as usize];
    s.read_exact(&mut body).map_err(|e| format!("read: {e}"))?;
    Ok(i32::from_be_bytes([body[0], body[1], body[2], body[3]]))
}

/// Sends `bytes` on a new connection; true when the server then closes it (EOF or reset)
/// within 10 s.
fn closed_after(bootstrap: &str, bytes: &[u8]) -> bool {
    let Ok(mut s) = TcpStream::connect(bootstrap) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.write_all(bytes);
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            // An answer (e.g. an error response) before the close is fine; keep reading.
            Ok(_) => continue,
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
            }
        }
    }
}

#[test]
fn hostile_bytes_over_tcp_leave_the_server_serving_real_clients() {
    require_kcat();
    let mut b = Running::start(&[]);
    let bs = b.bootstrap();
    assert_eq!(api_versions(bs), Ok(4242));

    // Frames the server must refuse by closing the connection.
    let refused: Vec<(&str, Vec<u8>)> = vec![
        (
            "a 2 GiB length prefix",
            0x7fff_ffffi32.to_be_bytes().to_vec(),
        ),
        (
            "a 2 GiB length prefix followed by data",
            [&i32::MAX.to_be_bytes()[..], &[0xab; 4096]].concat(),
        ),
        ("a negative length", (-1i32).to_be_bytes().to_vec()),
        ("unknown API key 999", frame(999, 0, 1, &[0; 8])),
        ("unknown API key -1", frame(-1, 0, 1, &[])),
        (
            "Produce v9 with garbage for a body",
            frame(0, 9, 1, &[0xff; 32]),
        ),
        (
            "Metadata v1 claiming 2^31-1 topics",
            frame(3, 1, 1, &i32::MAX.to_be_bytes()),
        ),
    ];
    for (what, bytes) in &refused {
        assert!(closed_after(bs, bytes), "{what}: the connection stays open");
        assert_eq!(api_versions(bs), Ok(4242), "after {what}");
    }

    // Truncated frames: promise more than is sent, then hang up; or send half a length.
    for bytes in [
        [&100i32.to_be_bytes()[..], &18i16.to_be_bytes()].concat(),
        frame(18, 3, 7, &[0; 20])[..9].to_vec(),
        vec![0, 0],
    ] {
        let mut s = TcpStream::connect(bs).expect("connect");
        s.write_all(&bytes).expect("write");
        drop(s);
        assert_eq!(api_versions(bs), Ok(4242), "after truncated {bytes:?}");
    }
    // A truncated frame on a connection that stays open does not block anyone else.
    let mut stalled = TcpStream::connect(bs).expect("connect");
    stalled
        .write_all(&[&64i32.to_be_bytes()[..], &[0; 10]].concat())
        .expect("write");

    // Garbage: random bytes, some with a plausible length in front.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..100 {
        let len = (next() % 200) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 2 == 0 {
            let mut framed = (len as i32).to_be_bytes().to_vec();
            framed.append(&mut bytes);
            bytes = framed;
        }
        if let Ok(mut s) = TcpStream::connect(bs) {
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
            let _ = s.write_all(&bytes);
            let _ = s.read(&mut [0u8; 256]);
        }
    }
    assert!(b.is_running(), "the server exited");
    assert_eq!(api_versions(bs), Ok(4242), "after garbage");

    // A real client still works.
    kcat(
        bs,
        &["-P", "-t", "after-garbage", "-K", ":"],
        "k1:still\nk2:serving\n",
    );
    let got = kcat(
        bs,
        &[
            "-C",
            "-t",
            "after-garbage",
            "-o",
            "beginning",
            "-e",
            "-f",
            "%o %k=%s\n",
        ],
        "",
    );
    assert_eq!(got, "0 k1=still\n1 k2=serving\n");
    drop(stalled);

    let stderr = stopped_cleanly(b.stop());
    assert!(!stderr.contains("panicked"), "{stderr}");
}
