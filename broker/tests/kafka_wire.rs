//! The Kafka listener in-process, driven over TCP: kcat when it is installed, and raw frames.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::have_kcat;
use quiver_broker::BrokerConfig;
use quiver_broker::alloc::GuardedAlloc;
use quiver_broker::kafka::LocalServer;

// The server process registers this allocator; so does this test, which feeds it hostile frames.
#[global_allocator]
static ALLOC: GuardedAlloc = GuardedAlloc;

/// A broker serving Kafka on loopback, on a fresh temporary data directory.
async fn start() -> (LocalServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let mut config = BrokerConfig {
        data_dir: dir.path().to_owned(),
        ..BrokerConfig::default()
    };
    config.set("group.initial.rebalance.delay.ms", "0").ok();
    let server = LocalServer::start(config)
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    (server, dir)
}

/// Runs kcat with `args`, feeding `input`, and returns its stdout.
fn kcat(addr: SocketAddr, args: &[&str], input: &str) -> String {
    let mut child = Command::new("kcat")
        .arg("-b")
        .arg(addr.to_string())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("kcat: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).ok();
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("kcat: {e}"));
    assert!(
        out.status.success(),
        "kcat {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_metadata_produce_consume_every_codec() {
    assert!(
        have_kcat(),
        "kcat is not installed: run ./scripts/test, which installs it (Debian package kcat)"
    );
    let (s, _dir) = start().await;
    let addr = s.addr();
    let out = tokio::task::spawn_blocking(move || {
        let mut log = String::new();
        for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
            let topic = format!("kcat-{codec}");
            let input: String = (0..50)
                .map(|i| format!("key{i}:value {i} via {codec}\n"))
                .collect();
            kcat(
                addr,
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
                ],
                &input,
            );
            let consumed = kcat(
                addr,
                &[
                    "-C",
                    "-t",
                    &topic,
                    "-o",
                    "beginning",
                    "-e",
                    "-f",
                    "%k=%s|%h\n",
                ],
                "",
            );
            log.push_str(&consumed);
            let lines: Vec<&str> = consumed.lines().collect();
            assert_eq!(lines.len(), 50, "{codec}: {consumed}");
            for i in 0..50 {
                assert!(
                    lines.contains(&format!("key{i}=value {i} via {codec}|trace=abc").as_str()),
                    "{codec}: missing {i}"
                );
            }
            // From an offset, and from the end (nothing).
            let tail = kcat(
                addr,
                &[
                    "-C", "-t", &topic, "-p", "0", "-o", "45", "-e", "-f", "%o\n",
                ],
                "",
            );
            assert_eq!(
                tail.lines().collect::<Vec<_>>(),
                vec!["45", "46", "47", "48", "49"]
            );
            let end = kcat(addr, &["-C", "-t", &topic, "-o", "end", "-e"], "");
            assert_eq!(end, "");
        }
        let meta = kcat(addr, &["-L"], "");
        assert!(
            meta.contains("topic \"kcat-zstd\" with 1 partitions"),
            "{meta}"
        );
        log
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.is_empty());
    assert_eq!(
        s.broker()
            .offsets("kcat-gzip", 0)
            .map(|o| o.log_end_offset)
            .ok(),
        Some(50)
    );
    s.stop().await.ok();
}

fn api_versions_frame(correlation: i32) -> Vec<u8> {
    // ApiVersions v0: api_key 18, version 0, correlation id, client id "t".
    let mut body = Vec::new();
    body.extend_from_slice(&18i16.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&correlation.to_be_bytes());
    body.extend_from_slice(&1i16.to_be_bytes());
    body.push(b't');
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// Sends ApiVersions v0 and returns the correlation id of the answer.
fn api_versions_round_trip(addr: SocketAddr) -> Option<i32> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(&api_versions_frame(77)).ok()?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).ok()?;
    Some(i32::from_be_bytes([body[0], body[1], body[2], body[3]]))
}

/// Sends bytes and reports whether the server closed the connection (read returns 0 or an error).
fn send_and_expect_close(addr: SocketAddr, bytes: &[u8]) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let _ = s.write_all(bytes);
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(0) | Err(_))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_never_takes_the_server_down() {
    let (s, _dir) = start().await;
    let addr = s.addr();
    tokio::task::spawn_blocking(move || {
        assert_eq!(api_versions_round_trip(addr), Some(77));
        let mut hostile: Vec<Vec<u8>> = vec![
            // 2 GiB length prefix: refused before anything is read.
            0x7fff_ffffi32.to_be_bytes().to_vec(),
            // Negative length.
            (-5i32).to_be_bytes().to_vec(),
            // Unknown API key 999.
            [
                &10i32.to_be_bytes()[..],
                &999i16.to_be_bytes(),
                &0i16.to_be_bytes(),
                &1i32.to_be_bytes(),
                &[0, 0],
            ]
            .concat(),
            // Metadata v0 claiming 54 million topics in 5 bytes (an allocation bomb).
            [
                &13i32.to_be_bytes()[..],
                &3i16.to_be_bytes(),
                &0i16.to_be_bytes(),
                &1i32.to_be_bytes(),
                &(-1i16).to_be_bytes(),
                &0x033c_0c00i32.to_be_bytes(),
                &[0xb6],
            ]
            .concat(),
            // Produce v9 with garbage after the header.
            [
                &16i32.to_be_bytes()[..],
                &0i16.to_be_bytes(),
                &9i16.to_be_bytes(),
                &1i32.to_be_bytes(),
                &[0xff; 8],
            ]
            .concat(),
            // Fetch v12 claiming 2^31 - 1 topics (compact array).
            [
                &20i32.to_be_bytes()[..],
                &1i16.to_be_bytes(),
                &12i16.to_be_bytes(),
                &1i32.to_be_bytes(),
                &(-1i16).to_be_bytes(),
                &[0],
                &[0xff; 10],
            ]
            .concat(),
        ];
        // Truncated frames: a length that promises more than is sent, then the socket closes.
        hostile.push([&100i32.to_be_bytes()[..], &18i16.to_be_bytes()].concat());
        for (i, bytes) in hostile.iter().enumerate() {
            if i < 6 {
                assert!(
                    send_and_expect_close(addr, bytes),
                    "case {i}: the server closes the connection"
                );
            } else if let Ok(mut s) = TcpStream::connect(addr) {
                let _ = s.write_all(bytes);
            }
            assert_eq!(
                api_versions_round_trip(addr),
                Some(77),
                "case {i}: the server still answers"
            );
        }
        // Random bytes.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..200 {
            let len = (seed % 64) as usize + 4;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let mut frame = ((len as i32) - 4).to_be_bytes().to_vec();
            frame.extend_from_slice(&bytes[4..]);
            if let Ok(mut s) = TcpStream::connect(addr) {
                let _ = s.write_all(&frame);
                let mut buf = [0u8; 256];
                s.set_read_timeout(Some(Duration::from_millis(200))).ok();
                let _ = s.read(&mut buf);
            }
        }
        assert_eq!(
            api_versions_round_trip(addr),
            Some(77),
            "still serving after random frames"
        );
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    s.stop().await.ok();
}

/// A Fetch v12 (without its length prefix) of `topic`'s partition 0 from offset 0 that waits up
/// to 60 s for a byte.
fn long_poll_fetch(topic: &'static str, correlation: i32) -> bytes::BytesMut {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
    use kafka_protocol::messages::{ApiKey, RequestHeader, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    let version = 12;
    let mut body = bytes::BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(ApiKey::Fetch as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation)
        .with_client_id(Some(StrBytes::from_static_str("long-poll")))
        .encode(&mut body, ApiKey::Fetch.request_header_version(version))
        .unwrap_or_else(|e| panic!("{e}"));
    FetchRequest::default()
        .with_max_wait_ms(60_000)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str(topic)))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(0)
                        .with_current_leader_epoch(-1)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ])
        .encode(&mut body, version)
        .unwrap_or_else(|e| panic!("{e}"));
    body
}

/// Reads one response frame and returns its correlation id.
fn read_correlation(conn: &mut TcpStream) -> std::io::Result<i32> {
    let mut len = [0u8; 4];
    conn.read_exact(&mut len)?;
    let mut resp = vec![0u8; i32::from_be_bytes(len).max(4) as usize];
    conn.read_exact(&mut resp)?;
    Ok(i32::from_be_bytes([resp[0], resp[1], resp[2], resp[3]]))
}

/// A request answered at once and a long-poll Fetch sent behind it on one connection: the first
/// answer reaches the client while the Fetch waits (it used to sit unflushed until the Fetch
/// returned), and the Fetch is answered after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_ahead_of_a_long_poll_does_not_wait_for_it() {
    let (s, _dir) = start().await;
    s.broker()
        .create_topic(quiver_broker::NewTopic::new("quiet", 1))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let fetch = long_poll_fetch("quiet", 78);
    let mut pipelined = api_versions_frame(77);
    pipelined.extend_from_slice(&(fetch.len() as i32).to_be_bytes());
    pipelined.extend_from_slice(&fetch);
    let addr = s.addr();
    let client = std::thread::spawn(move || -> std::io::Result<(i32, TcpStream)> {
        let mut conn = TcpStream::connect(addr)?;
        // Far below the Fetch's 60 s wait: the first answer must not be behind it.
        conn.set_read_timeout(Some(Duration::from_secs(20)))?;
        conn.write_all(&pipelined)?;
        Ok((read_correlation(&mut conn)?, conn))
    });
    let first = tokio::task::spawn_blocking(move || client.join())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|_| panic!("client thread panicked"));
    let (correlation, mut conn) =
        first.unwrap_or_else(|e| panic!("no answer to ApiVersions while the Fetch waits: {e}"));
    assert_eq!(correlation, 77);
    // The Fetch is still waiting; stopping the server answers it at once.
    s.stop().await.unwrap_or_else(|e| panic!("stop: {e}"));
    let fetched = tokio::task::spawn_blocking(move || read_correlation(&mut conn))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        fetched.unwrap_or_else(|e| panic!("no answer to the Fetch: {e}")),
        78
    );
}

/// A long-poll Fetch in flight when the server stops is answered (at once, not after its wait),
/// and only then does the broker close its logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_answers_a_long_poll_in_flight_instead_of_cutting_it_off() {
    let (s, _dir) = start().await;
    s.broker()
        .create_topic(quiver_broker::NewTopic::new("quiet", 1))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let body = long_poll_fetch("quiet", 77);
    let addr = s.addr();
    let started = std::time::Instant::now();
    let client = std::thread::spawn(move || -> std::io::Result<(i32, i32)> {
        let mut conn = TcpStream::connect(addr)?;
        conn.set_read_timeout(Some(Duration::from_secs(120)))?;
        conn.write_all(&(body.len() as i32).to_be_bytes())?;
        conn.write_all(&body)?;
        let mut len = [0u8; 4];
        conn.read_exact(&mut len)?;
        let mut resp = vec![0u8; i32::from_be_bytes(len) as usize];
        conn.read_exact(&mut resp)?;
        Ok((
            i32::from_be_bytes(len),
            i32::from_be_bytes([resp[0], resp[1], resp[2], resp[3]]),
        ))
    });
    // Let the request reach the broker and start waiting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.stop().await.unwrap_or_else(|e| panic!("stop: {e}"));
    let answered = tokio::task::spawn_blocking(move || client.join())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|_| panic!("client thread panicked"));
    let (len, correlation_id) =
        answered.unwrap_or_else(|e| panic!("no answer before the close: {e}"));
    assert!(len > 4);
    assert_eq!(correlation_id, 77);
    // Answered when the server stopped, not when the client's 60 s wait ran out.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}
