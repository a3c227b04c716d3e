//! The listener's limits over TCP: connections (`max.connections`, `connections.max.idle.ms`),
//! the read-ahead budget (`queued.max.request.bytes`) and fetch sizes (`fetch.max.bytes`,
//! `min_bytes`).
//!
//! This test binary keeps the system allocator (no `GuardedAlloc`), as a program embedding the
//! broker would.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use quiver_broker::kafka::LocalServer;
use quiver_broker::kafka::records::{encode_batch, parse_batches};
use quiver_broker::{BatchHeader, BrokerConfig, NewTopic, ProducerInfo, Record, records_to_batch};

/// Long enough for anything that should happen; tests fail rather than hang past it.
const PATIENCE: Duration = Duration::from_secs(20);

/// A server with `keys` set and topics `empty`, `data`, `big` and `wide` of one partition.
async fn start(keys: &[(&str, &str)]) -> (LocalServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let mut config = BrokerConfig {
        data_dir: dir.path().to_owned(),
        ..BrokerConfig::default()
    };
    for (k, v) in keys {
        config.set(k, v).unwrap_or_else(|e| panic!("{k}={v}: {e}"));
    }
    let server = LocalServer::start(config)
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    for topic in ["empty", "data", "big", "wide", "pipe"] {
        server
            .broker()
            .create_topic(NewTopic::new(topic, 1))
            .await
            .unwrap_or_else(|e| panic!("create {topic}: {e}"));
    }
    (server, dir)
}

fn st(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

fn api_of(req: &RequestKind) -> ApiKey {
    match req {
        RequestKind::ApiVersions(_) => ApiKey::ApiVersions,
        RequestKind::Fetch(_) => ApiKey::Fetch,
        RequestKind::Produce(_) => ApiKey::Produce,
        other => panic!("not used here: {other:?}"),
    }
}

/// One client connection speaking raw Kafka frames; requests may be pipelined.
struct Conn {
    stream: TcpStream,
    correlation: i32,
    sent: std::collections::VecDeque<(i32, ApiKey, i16)>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        Conn {
            stream: TcpStream::connect(addr)
                .await
                .unwrap_or_else(|e| panic!("connect: {e}")),
            correlation: 0,
            sent: Default::default(),
        }
    }

    async fn send(&mut self, version: i16, body: RequestKind) {
        let api = api_of(&body);
        self.correlation += 1;
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(st("limits-test")))
            .encode(&mut buf, api.request_header_version(version))
            .unwrap_or_else(|e| panic!("{e}"));
        body.encode(&mut buf, version)
            .unwrap_or_else(|e| panic!("{api:?} v{version}: {e}"));
        let len = (buf.len() - 4) as i32;
        buf[0..4].copy_from_slice(&len.to_be_bytes());
        self.stream
            .write_all(&buf)
            .await
            .unwrap_or_else(|e| panic!("write: {e}"));
        self.sent.push_back((self.correlation, api, version));
    }

    /// The response to the oldest request not yet answered; `None` if the server closed.
    async fn recv(&mut self) -> Option<ResponseKind> {
        let (correlation, api, version) = self.sent.pop_front()?;
        let n = tokio::time::timeout(PATIENCE, self.stream.read_i32())
            .await
            .unwrap_or_else(|_| panic!("no {api:?} response within {PATIENCE:?}"))
            .ok()?;
        let mut frame = vec![0u8; n as usize];
        self.stream.read_exact(&mut frame).await.ok()?;
        let mut frame = Bytes::from(frame);
        let header = ResponseHeader::decode(&mut frame, api.response_header_version(version))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(header.correlation_id, correlation);
        let resp = ResponseKind::decode(api, &mut frame, version)
            .unwrap_or_else(|e| panic!("{api:?} v{version}: {e}"));
        assert!(!frame.has_remaining(), "{api:?}: bytes left over");
        Some(resp)
    }

    async fn call(&mut self, version: i16, body: RequestKind) -> Option<ResponseKind> {
        self.send(version, body).await;
        self.recv().await
    }

    /// True when an ApiVersions round trip works.
    async fn works(&mut self) -> bool {
        let req = RequestKind::ApiVersions(ApiVersionsRequest::default());
        matches!(self.call(0, req).await, Some(ResponseKind::ApiVersions(r)) if r.error_code == 0)
    }

    /// True when the server closes the connection (within [`PATIENCE`]).
    async fn closed_by_server(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(PATIENCE, self.stream.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        )
    }
}

fn fetch(
    topic: &str,
    offset: i64,
    max_wait_ms: i32,
    min_bytes: i32,
    max_bytes: i32,
) -> RequestKind {
    RequestKind::Fetch(
        FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(max_wait_ms)
            .with_min_bytes(min_bytes)
            .with_max_bytes(max_bytes)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(TopicName(st(topic)))
                    .with_partitions(vec![
                        FetchPartition::default()
                            .with_partition(0)
                            .with_fetch_offset(offset)
                            .with_partition_max_bytes(max_bytes),
                    ]),
            ]),
    )
}

/// A Kafka batch of `count` records with `value_bytes`-byte values.
fn kafka_batch(count: usize, value_bytes: usize) -> Bytes {
    let value = vec![b'x'; value_bytes];
    let records: Vec<Record> = (0..count)
        .map(|i| Record::new(i as i64, Some(b"k"), Some(&value)))
        .collect();
    let header = BatchHeader {
        base_offset: 0,
        last_offset_delta: count as i32 - 1,
        record_count: count as i32,
        first_timestamp: 0,
        max_timestamp: count as i64 - 1,
        producer: ProducerInfo::NONE,
    };
    let mut out = Vec::new();
    encode_batch(&mut out, &header, &records_to_batch(&records))
        .unwrap_or_else(|e| panic!("encode: {e}"));
    Bytes::from(out)
}

/// acks=all: answered once the records are durable, so they are visible to the fetches that follow.
fn produce(topic: &str, records: Bytes) -> RequestKind {
    produce_acks(topic, records, -1)
}

fn produce_acks(topic: &str, records: Bytes, acks: i16) -> RequestKind {
    RequestKind::Produce(
        ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(5000)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(st(topic)))
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(records)),
                    ]),
            ]),
    )
}

fn produced_ok(resp: Option<ResponseKind>) -> bool {
    matches!(resp, Some(ResponseKind::Produce(r))
        if r.responses[0].partition_responses[0].error_code == 0)
}

/// The record bytes of the only partition in a Fetch response.
fn fetched(resp: Option<ResponseKind>) -> (i16, Bytes) {
    let Some(ResponseKind::Fetch(r)) = resp else {
        panic!("not a fetch response: {resp:?}")
    };
    let p = &r.responses[0].partitions[0];
    (p.error_code, p.records.clone().unwrap_or_default())
}

async fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < PATIENCE,
            "{what}: not within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_refused_and_the_server_keeps_serving() {
    let (s, _dir) = start(&[("max.connections", "2")]).await;
    let mut first = Conn::open(s.addr()).await;
    let mut second = Conn::open(s.addr()).await;
    assert!(first.works().await && second.works().await);
    let mut third = Conn::open(s.addr()).await;
    assert!(
        third.closed_by_server().await,
        "the third connection is closed"
    );
    assert!(first.works().await, "the others keep being served");
    drop(first);
    wait_until("the closed connection frees its place", || {
        s.open_connections() == 1
    })
    .await;
    let mut again = Conn::open(s.addr()).await;
    assert!(
        again.works().await,
        "a freed place is taken by a new connection"
    );
    assert!(second.works().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_but_a_long_poll_is_not_idleness() {
    let (s, _dir) = start(&[("connections.max.idle.ms", "300")]).await;
    let mut quiet = Conn::open(s.addr()).await;
    assert!(quiet.works().await);
    assert!(
        quiet.closed_by_server().await,
        "idle past connections.max.idle.ms"
    );

    // A fetch waiting three idle periods for data is a request in progress, not idleness.
    let mut polling = Conn::open(s.addr()).await;
    let (code, records) = fetched(polling.call(12, fetch("empty", 0, 1000, 1, 1 << 20)).await);
    assert_eq!((code, records.len()), (0, 0));
    assert!(polling.works().await);
    assert!(polling.closed_by_server().await);
    wait_until("closed connections are counted out", || {
        s.open_connections() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_asking_for_2_gib_is_served_within_the_cap() {
    let cap = 64 * 1024;
    let (s, _dir) = start(&[("fetch.max.bytes", "65536")]).await;
    let mut conn = Conn::open(s.addr()).await;
    // 40 batches of about 10 KiB: 400 KiB in the log.
    for _ in 0..40 {
        assert!(produced_ok(
            conn.call(9, produce("big", kafka_batch(50, 200))).await
        ));
    }
    let mut offset = 0;
    let mut fetches = 0;
    while offset < 2000 {
        let (code, records) = fetched(conn.call(12, fetch("big", offset, 0, 1, i32::MAX)).await);
        assert_eq!(code, 0);
        assert!(!records.is_empty(), "progress at offset {offset}");
        assert!(
            records.len() <= cap,
            "{} record bytes at offset {offset}",
            records.len()
        );
        let batches = parse_batches(&records).unwrap_or_else(|e| panic!("{e}"));
        let last = batches
            .last()
            .map(|b| b.base_offset + i64::from(b.last_offset_delta));
        offset = last.unwrap_or(offset) + 1;
        fetches += 1;
    }
    assert_eq!(offset, 2000);
    assert!(fetches >= 400 * 1024 / cap, "{fetches} fetches");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_sends_a_first_batch_larger_than_the_cap_whole() {
    let (s, _dir) = start(&[("fetch.max.bytes", "1024")]).await;
    let mut conn = Conn::open(s.addr()).await;
    assert!(produced_ok(
        conn.call(9, produce("wide", kafka_batch(10, 500))).await
    ));
    let (code, records) = fetched(conn.call(12, fetch("wide", 0, 0, 1, i32::MAX)).await);
    assert_eq!(code, 0);
    let batches = parse_batches(&records).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].record_count, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_with_min_bytes_0_answers_at_once() {
    let (s, _dir) = start(&[]).await;
    let mut conn = Conn::open(s.addr()).await;
    let asked = Instant::now();
    let (code, records) = fetched(conn.call(12, fetch("empty", 0, 10_000, 0, 1 << 20)).await);
    assert_eq!((code, records.len()), (0, 0));
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "min_bytes=0 waited {:?} of max_wait_ms=10000",
        asked.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_read_ahead_budget_wait_for_room() {
    let (s, _dir) = start(&[("queued.max.request.bytes", "4096")]).await;
    let batch = kafka_batch(10, 280); // about 3 KiB
    let mut a = Conn::open(s.addr()).await;
    // A long poll, then a produce read ahead behind it: together about 3 KiB of the 4 KiB.
    a.send(12, fetch("empty", 0, 2000, 1, 1 << 20)).await;
    a.send(9, produce("data", batch.clone())).await;
    wait_until("the produce behind the long poll is read ahead", || {
        s.queued_request_bytes() > 2900
    })
    .await;
    // Another connection's 3 KiB do not fit: the server reads them only once the first
    // connection's requests are handled, so its records land after that produce's, although
    // that produce waited for the long poll and this one was sent while it waited.
    let mut b = Conn::open(s.addr()).await;
    b.send(9, produce("data", batch.clone())).await;
    let base_offset = |resp: Option<ResponseKind>| match resp {
        Some(ResponseKind::Produce(r)) => {
            let p = &r.responses[0].partition_responses[0];
            assert_eq!(p.error_code, 0);
            p.base_offset
        }
        other => panic!("not a produce response: {other:?}"),
    };
    let (code, _) = fetched(a.recv().await);
    assert_eq!(code, 0);
    assert_eq!(base_offset(a.recv().await), 0);
    assert_eq!(base_offset(b.recv().await), 10);
    // A request larger than the whole budget goes through once nothing else is queued.
    assert!(produced_ok(
        b.call(9, produce("data", kafka_batch(20, 500))).await
    ));
    assert_eq!(s.queued_request_bytes(), 0);
    let end = s.broker().offsets("data", 0).map(|o| o.log_end_offset);
    assert_eq!(end.ok(), Some(40));
}

/// acks=all requests pipelined on one connection are appended in the order sent and answered
/// in that order, each once its records are durable (the connection stages the next request
/// while one waits for its fsync; mixing in other requests keeps the order too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_acks_all_produces_are_appended_and_answered_in_order() {
    let (s, _dir) = start(&[]).await;
    let mut conn = Conn::open(s.addr()).await;
    assert!(produced_ok(
        conn.call(9, produce("pipe", kafka_batch(1, 10))).await
    ));
    for i in 0..40 {
        conn.send(9, produce("pipe", kafka_batch(5, 10))).await;
        if i % 10 == 0 {
            conn.send(0, RequestKind::ApiVersions(ApiVersionsRequest::default()))
                .await;
        }
    }
    let mut next_base = 1;
    for i in 0..40 {
        let Some(ResponseKind::Produce(r)) = conn.recv().await else {
            panic!("produce {i} unanswered")
        };
        let p = &r.responses[0].partition_responses[0];
        assert_eq!((p.error_code, p.base_offset), (0, next_base), "produce {i}");
        next_base += 5;
        if i % 10 == 0 {
            assert!(matches!(
                conn.recv().await,
                Some(ResponseKind::ApiVersions(_))
            ));
        }
    }
    let offsets = s
        .broker()
        .offsets("pipe", 0)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        offsets.durable_offset, next_base,
        "every answered record is durable"
    );
}

/// acks=0 and acks=1 requests pipelined on one connection are appended in the order sent and
/// answered in that order (acks=0 not at all), and each answer comes after its records were
/// written: a copy of the partition's files taken then, as a crash of the process would leave
/// them, holds every record answered so far. (The partition's flusher may write them first;
/// `handlers::produce`'s `an_acks_1_answer_writes_every_batch_staged_before_it` shows that the
/// answer does it without the flusher.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_acks_1_produces_are_written_before_they_are_answered() {
    let (s, dir) = start(&[]).await;
    let mut conn = Conn::open(s.addr()).await;
    let mut answered = 0;
    for round in 0..5 {
        // 40 one-record requests sent before any answer is read; every fourth is acks=0.
        let acks = |i: i64| if i % 4 == 1 { 0 } else { 1 };
        for i in 0..40 {
            conn.send(9, produce_acks("pipe", kafka_batch(1, 100), acks(i)))
                .await;
            if acks(i) == 0 {
                conn.sent.pop_back(); // no response comes
            }
        }
        for i in (0..40).filter(|&i| acks(i) == 1) {
            let Some(ResponseKind::Produce(r)) = conn.recv().await else {
                panic!("round {round}: produce {i} unanswered")
            };
            let p = &r.responses[0].partition_responses[0];
            assert_eq!(
                (p.error_code, p.base_offset),
                (0, round * 40 + i),
                "round {round}: produce {i}"
            );
            answered = round * 40 + i + 1;
        }
        // What a crash of the process now would leave: the files as they are.
        let copy = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        for entry in std::fs::read_dir(dir.path().join("pipe-0")).unwrap_or_else(|e| panic!("{e}"))
        {
            let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
            if path.is_file() {
                let to = copy.path().join(path.file_name().unwrap_or_default());
                std::fs::copy(&path, &to).unwrap_or_else(|e| panic!("copy: {e}"));
            }
        }
        let log = quiver_broker::Log::open(copy.path(), "pipe", 0, Default::default())
            .unwrap_or_else(|e| panic!("open the copy: {e}"));
        assert!(
            log.end_offset() >= answered,
            "round {round}: {answered} records answered, {} in the files",
            log.end_offset()
        );
    }
    assert_eq!(answered, 5 * 40, "the last request of each round is acks=1");
}
