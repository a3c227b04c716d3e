//! The client against an in-process [`LocalServer`] on a loopback port, and against fake
//! brokers that misbehave on purpose.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use kafka_protocol::error::ResponseError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use quiver_broker::BrokerConfig;
use quiver_broker::kafka::LocalServer;
use quiver_common::record::{Record, batch_to_records, records_to_batch};
use quiver_common::topic::{ConfigChange, NewTopic};

use super::*;

/// A broker serving Kafka on loopback, on a fresh temporary data directory.
pub(crate) async fn start() -> (LocalServer, tempfile::TempDir) {
    start_with(|_| {}).await
}

/// [`start`] with changes to the broker's config.
pub(crate) async fn start_with(
    change: impl FnOnce(&mut BrokerConfig),
) -> (LocalServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let mut config = BrokerConfig {
        data_dir: dir.path().to_owned(),
        ..BrokerConfig::default()
    };
    change(&mut config);
    let server = LocalServer::start(config)
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    (server, dir)
}

pub(crate) async fn client(addr: SocketAddr) -> KafkaClient {
    KafkaClient::connect(&addr.to_string(), ClientConfig::default())
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

pub(crate) fn new_topic(name: &str, partitions: Option<i32>, configs: &[(&str, &str)]) -> NewTopic {
    NewTopic {
        name: name.into(),
        partitions,
        configs: configs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

pub(crate) fn records(batches: &[RecordBatch]) -> Vec<Record> {
    batches
        .iter()
        .flat_map(|b| batch_to_records(b).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_created_described_altered_and_deleted() -> Result<()> {
    let (s, _dir) = start().await;
    let c = client(s.addr()).await;

    let metadata = c.metadata(None, false).await?;
    assert_eq!(metadata.brokers.len(), 1);
    assert!(metadata.topics.is_empty());

    let created = c
        .create_topics(
            &[
                new_topic("orders", Some(3), &[("retention.ms", "60000")]),
                new_topic("bad name", None, &[]),
                new_topic("defaults", None, &[]),
            ],
            false,
        )
        .await?;
    assert_eq!(created.len(), 3);
    let orders = created[0].1.as_ref().map_err(Clone::clone);
    let orders = orders.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(orders.partitions, Some(3));
    assert!(orders.id.is_some());
    let bad = created[1].1.as_ref().err().cloned();
    let bad = bad.unwrap_or_else(|| panic!("a bad name was accepted"));
    assert_eq!(bad.error, ResponseError::InvalidTopicException);
    assert!(
        bad.to_string().starts_with("invalid topic name 'bad name'"),
        "the server's message: {bad}"
    );
    assert_eq!(
        created[2].1.as_ref().ok().and_then(|t| t.partitions),
        Some(1)
    );

    // Again: the broker says it exists.
    let again = c
        .create_topics(&[new_topic("orders", None, &[])], false)
        .await?;
    assert_eq!(
        again[0].1.as_ref().err().map(|e| e.error),
        Some(ResponseError::TopicAlreadyExists)
    );

    let metadata = c.metadata(Some(&["orders", "missing"]), false).await?;
    let partitions: Vec<i32> = metadata.topics[0]
        .partitions
        .iter()
        .map(|p| p.partition)
        .collect();
    assert_eq!(partitions, [0, 1, 2]);
    assert_eq!(
        metadata.topics[1].error.as_ref().map(|e| e.error),
        Some(ResponseError::UnknownTopicOrPartition)
    );
    assert!(
        !s.broker().topic_exists("missing"),
        "metadata without auto-creation created a topic"
    );

    let topic = ConfigResource::Topic("orders".into());
    let described = c.describe_configs(std::slice::from_ref(&topic)).await?;
    let entries = described[0].1.clone().unwrap_or_else(|e| panic!("{e}"));
    let retention = entries.iter().find(|e| e.name == "retention.ms");
    assert_eq!(
        retention.map(|e| (e.value.as_deref(), e.source)),
        Some((Some("60000"), ConfigSource::Topic))
    );
    let segment = entries.iter().find(|e| e.name == "segment.bytes");
    assert_eq!(segment.map(|e| e.source), Some(ConfigSource::Default));

    let altered = c
        .incremental_alter_configs(
            &[(
                topic.clone(),
                vec![
                    ConfigChange::Set("segment.bytes".into(), "1048576".into()),
                    ConfigChange::Delete("retention.ms".into()),
                ],
            )],
            false,
        )
        .await?;
    assert_eq!(altered, vec![(topic.clone(), Ok(()))]);
    let overrides = s.broker().describe_topic("orders").map(|d| d.overrides);
    assert_eq!(
        overrides.ok(),
        Some(BTreeMap::from([(
            "segment.bytes".to_owned(),
            "1048576".to_owned()
        )]))
    );
    let refused = c
        .incremental_alter_configs(
            &[(
                topic,
                vec![ConfigChange::Set("retention.msx".into(), "1".into())],
            )],
            false,
        )
        .await?;
    assert_eq!(
        refused[0].1.as_ref().err().map(|e| e.error),
        Some(ResponseError::InvalidConfig)
    );

    let grown = c
        .create_partitions(&[("orders", 5), ("orders-x", 2)], false)
        .await?;
    assert_eq!(grown[0], ("orders".to_owned(), Ok(())));
    assert!(grown[1].1.is_err());
    assert_eq!(s.broker().partition_count("orders").ok(), Some(5));

    let sizes = c.partition_sizes("orders", &[0, 1, 2, 3, 4]).await?;
    assert_eq!(sizes.len(), 5);

    let deleted = c.delete_topics(&["orders", "missing"]).await?;
    assert_eq!(deleted[0], ("orders".to_owned(), Ok(())));
    assert_eq!(
        deleted[1].1.as_ref().err().map(|e| e.error),
        Some(ResponseError::UnknownTopicOrPartition)
    );
    assert!(!s.broker().topic_exists("orders"));
    c.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_round_trip_with_offsets_keys_and_headers() -> Result<()> {
    let (s, _dir) = start().await;
    let c = client(s.addr()).await;
    c.create_topics(&[new_topic("t", Some(2), &[])], false)
        .await?;

    let first: Vec<Record> = (0..5)
        .map(|i| {
            Record::new(1000 + i, Some(format!("k{i}").as_bytes()), Some(b"v"))
                .with_header("h", Some(b"x"))
        })
        .collect();
    let ack = c.produce("t", 1, &records_to_batch(&first)).await?;
    assert_eq!(ack.base_offset, 0);
    let second = vec![
        Record::new(2000, None, None),
        Record::new(2001, None, Some(b"last")),
    ];
    let ack = c.produce("t", 1, &records_to_batch(&second)).await?;
    assert_eq!(ack.base_offset, 5);

    // From the middle of the first batch: the broker sends it whole, the client trims it.
    let fetched = c
        .fetch("t", &[(0, 0), (1, 3)], &FetchOptions::default())
        .await?;
    assert_eq!(fetched.len(), 2);
    let p0 = fetched[0].1.clone().unwrap_or_else(|e| panic!("{e}"));
    assert!(p0.batches.is_empty());
    assert_eq!((p0.next_offset, p0.high_watermark), (0, 0));
    let p1 = fetched[1].1.clone().unwrap_or_else(|e| panic!("{e}"));
    let got = records(&p1.batches);
    let offsets: Vec<i64> = got.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, [3, 4, 5, 6]);
    assert_eq!(got[0].key.as_deref(), Some(&b"k3"[..]));
    assert_eq!(got[0].timestamp_ms, 1003);
    assert_eq!(got[0].headers, first[3].headers);
    assert_eq!((got[2].key.clone(), got[2].value.clone()), (None, None));
    assert_eq!(p1.next_offset, 7);
    assert_eq!(p1.high_watermark, 7);

    let listed = c
        .list_offsets(
            "t",
            &[(0, OffsetSpec::Earliest), (1, OffsetSpec::Timestamp(2000))],
        )
        .await?;
    assert_eq!(
        listed[0].1.clone().ok().flatten().map(|o| o.offset),
        Some(0)
    );
    assert_eq!(
        listed[1].1.clone().ok().flatten().map(|o| o.offset),
        Some(5)
    );
    let latest = c
        .list_offsets(
            "t",
            &[(1, OffsetSpec::Latest), (0, OffsetSpec::Timestamp(1))],
        )
        .await?;
    assert_eq!(
        latest[0].1.clone().ok().flatten().map(|o| o.offset),
        Some(7)
    );
    assert_eq!(
        latest[1].1.clone().ok().flatten(),
        None,
        "no record at or after"
    );
    assert!(
        c.list_offsets("t", &[(0, OffsetSpec::Latest), (0, OffsetSpec::Earliest)])
            .await
            .is_err()
    );

    // An unknown partition fails alone.
    let fetched = c
        .fetch("t", &[(1, 7), (9, 0)], &FetchOptions::default())
        .await?;
    assert_eq!(
        fetched[1].1.as_ref().err().map(|e| e.error),
        Some(ResponseError::UnknownTopicOrPartition)
    );
    let err = c
        .produce("t", 9, &records_to_batch(&second))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert_eq!(err, "cannot write to t-9: topic 't' has no partition 9");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_fetch_wakes_when_records_arrive() -> Result<()> {
    let (s, _dir) = start().await;
    let c = std::sync::Arc::new(client(s.addr()).await);
    c.create_topics(&[new_topic("t", Some(1), &[])], false)
        .await?;
    let reader = {
        let c = c.clone();
        tokio::spawn(async move {
            let options = FetchOptions {
                max_wait: Duration::from_secs(20),
                ..FetchOptions::default()
            };
            let started = Instant::now();
            let fetched = c.fetch("t", &[(0, 0)], &options).await;
            (fetched, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The same connection carries the produce while the fetch waits.
    c.produce(
        "t",
        0,
        &records_to_batch(&[Record::new(1, None, Some(b"hi"))]),
    )
    .await?;
    let (fetched, waited) = reader.await.unwrap_or_else(|e| panic!("{e}"));
    let fetched = fetched?;
    let got = records(
        &fetched[0]
            .1
            .clone()
            .unwrap_or_else(|e| panic!("{e}"))
            .batches,
    );
    assert_eq!(got.len(), 1);
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");
    Ok(())
}

#[tokio::test]
async fn unreachable_and_bad_addresses_say_what_to_do() {
    // A port that was free a moment ago.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        l.local_addr().map(|a| a.port()).unwrap_or(1)
    };
    let addr = format!("127.0.0.1:{port}");
    let err = KafkaClient::connect(&addr, ClientConfig::default())
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.starts_with(&format!("cannot reach the Kafka broker at {addr}: "))
            && err.ends_with("is `quiver server` running?"),
        "{err}"
    );
    for (bad, why) in [
        ("localhost", "has no port"),
        (":9092", "has no host"),
        ("host:x", "has no valid port"),
        ("", "no bootstrap server given"),
    ] {
        let err = KafkaClient::connect(bad, ClientConfig::default())
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(why), "{bad:?}: {err}");
    }
}

/// A fake broker: accepts one connection and answers each request frame with `answer`.
async fn fake_broker(
    answer: impl Fn(i16, i16, i32) -> Option<Vec<u8>> + Send + 'static,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        loop {
            let Ok(len) = stream.read_i32().await else {
                return;
            };
            let mut frame = vec![0u8; len.max(0) as usize];
            if stream.read_exact(&mut frame).await.is_err() || frame.len() < 8 {
                return;
            }
            let key = i16::from_be_bytes([frame[0], frame[1]]);
            let version = i16::from_be_bytes([frame[2], frame[3]]);
            let correlation = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
            if let Some(bytes) = answer(key, version, correlation)
                && stream.write_all(&bytes).await.is_err()
            {
                return;
            }
        }
    });
    addr
}

/// An ApiVersions response body of `version` listing `apis`, framed with `correlation`.
fn api_versions_answer(
    correlation: i32,
    version: i16,
    error: i16,
    apis: &[(i16, i16, i16)],
) -> Vec<u8> {
    use kafka_protocol::messages::api_versions_response::{ApiVersion, ApiVersionsResponse};
    use kafka_protocol::protocol::Encodable;
    let body = ApiVersionsResponse::default()
        .with_error_code(error)
        .with_api_keys(
            apis.iter()
                .map(|(k, lo, hi)| {
                    ApiVersion::default()
                        .with_api_key(*k)
                        .with_min_version(*lo)
                        .with_max_version(*hi)
                })
                .collect(),
        );
    let mut buf = bytes::BytesMut::new();
    body.encode(&mut buf, version)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    out.extend_from_slice(&((buf.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(&correlation.to_be_bytes());
    out.extend_from_slice(&buf);
    out
}

#[tokio::test]
async fn api_versions_falls_back_to_what_an_older_broker_speaks() -> Result<()> {
    let asked = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen = asked.clone();
    let addr = fake_broker(move |key, version, correlation| {
        seen.lock().push((key, version));
        Some(if version > 2 {
            api_versions_answer(correlation, 0, 35, &[(18, 0, 2)])
        } else {
            api_versions_answer(correlation, version, 0, &[(18, 0, 2), (3, 0, 4)])
        })
    })
    .await;
    let c = KafkaClient::connect(&addr.to_string(), ClientConfig::default()).await?;
    assert_eq!(*asked.lock(), [(18, 3), (18, 2)]);
    // Metadata 0..=4 overlaps ours; CreateTopics is not served at all.
    let err = c
        .create_topics(&[new_topic("t", None, &[])], false)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert_eq!(
        err,
        format!(
            "the Kafka broker at {addr} does not serve CreateTopics requests; it may be an older Kafka or a Quiver build without that API"
        )
    );
    Ok(())
}

#[tokio::test]
async fn no_common_version_is_a_clear_error() {
    let addr = fake_broker(|_, version, correlation| {
        Some(api_versions_answer(
            correlation,
            version,
            0,
            &[(18, 0, 3), (3, 0, 0)],
        ))
    })
    .await;
    let c = KafkaClient::connect(&addr.to_string(), ClientConfig::default()).await;
    let c = c.unwrap_or_else(|e| panic!("{e}"));
    let err = c
        .metadata(None, false)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert_eq!(
        err,
        format!(
            "the Kafka broker at {addr} speaks Metadata versions 0 to 0, and this client 1 to 12; no version in common"
        )
    );
}

#[tokio::test]
async fn a_silent_or_foreign_server_times_out_or_is_refused() {
    let silent = fake_broker(|_, _, _| None).await;
    let config = ClientConfig {
        request_timeout_ms: 200,
        ..ClientConfig::default()
    };
    let err = KafkaClient::connect(&silent.to_string(), config.clone())
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert_eq!(
        err,
        format!(
            "the Kafka broker at {silent} did not answer ApiVersions within 200 ms; is it overloaded, or is the address not a Kafka broker?"
        )
    );
    // An HTTP server answers with text, whose first bytes read as a huge length.
    let http = fake_broker(|_, _, _| Some(b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec())).await;
    let err = KafkaClient::connect(&http.to_string(), config)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.starts_with(&format!(
            "the Kafka broker at {http} sent a bad response: a response of 1213486160 bytes"
        )),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_committed_from_outside_a_group_are_listed_and_described() -> Result<()> {
    let (s, _dir) = start().await;
    let c = client(s.addr()).await;
    c.create_topics(&[new_topic("t", Some(2), &[])], false)
        .await?;

    let coordinator = c.find_coordinator("g").await?;
    assert_eq!(coordinator.port, i32::from(s.addr().port()));

    let committed = c.offset_commit("g", &[("t", 0, 5), ("t", 1, 7)]).await?;
    assert_eq!(
        committed,
        vec![("t".to_owned(), 0, Ok(())), ("t".to_owned(), 1, Ok(()))]
    );

    let all = c.offset_fetch("g", None).await?;
    let offsets: Vec<(String, i32, Option<i64>)> = all
        .iter()
        .map(|o| (o.topic.clone(), o.partition, o.offset))
        .collect();
    assert_eq!(
        offsets,
        [("t".to_owned(), 0, Some(5)), ("t".to_owned(), 1, Some(7))]
    );
    let some = c.offset_fetch("g", Some(&[("t", vec![1])])).await?;
    assert_eq!(some.len(), 1);
    assert_eq!((some[0].partition, some[0].offset), (1, Some(7)));

    let groups = c.list_groups().await?;
    assert_eq!(
        groups
            .iter()
            .map(|g| g.group_id.as_str())
            .collect::<Vec<_>>(),
        ["g"]
    );
    let described = c.describe_groups(&["g", "unknown"]).await?;
    let g = described[0].1.clone().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((g.state.as_str(), g.members.len()), ("Empty", 0));
    match &described[1].1 {
        Ok(d) => assert_eq!(d.state, "Dead"),
        Err(e) => assert_eq!(e.error, ResponseError::GroupIdNotFound),
    }
    Ok(())
}

/// Every operation at every version both sides speak: the encoder refuses a request that sets
/// a field its version lacks, so each version's request must be built for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_works_at_every_version() -> Result<()> {
    let (s, _dir) = start().await;
    for below in 0..=12 {
        let config = ClientConfig {
            versions_below_max: below,
            ..ClientConfig::default()
        };
        let c = KafkaClient::connect(&s.addr().to_string(), config).await?;
        let topic = format!("v{below}");
        let name = topic.as_str();
        let created = c
            .create_topics(
                &[new_topic(name, Some(1), &[("retention.ms", "1000")])],
                false,
            )
            .await?;
        assert!(created[0].1.is_ok(), "{below}: {created:?}");
        let resource = ConfigResource::Topic(topic.clone());
        let described = c.describe_configs(std::slice::from_ref(&resource)).await?;
        assert!(described[0].1.is_ok(), "{below}: {described:?}");
        let altered = c
            .incremental_alter_configs(
                &[(resource, vec![ConfigChange::Delete("retention.ms".into())])],
                false,
            )
            .await?;
        assert!(altered[0].1.is_ok(), "{below}: {altered:?}");
        let grown = c.create_partitions(&[(name, 2)], false).await?;
        assert!(grown[0].1.is_ok(), "{below}: {grown:?}");

        let batch = records_to_batch(&[Record::new(7, Some(b"k"), Some(b"v"))]);
        assert_eq!(c.produce(name, 1, &batch).await?.base_offset, 0, "{below}");
        let fetched = c.fetch(name, &[(1, 0)], &FetchOptions::default()).await?;
        let got = records(
            &fetched[0]
                .1
                .clone()
                .unwrap_or_else(|e| panic!("{below}: {e}"))
                .batches,
        );
        assert_eq!(got.len(), 1, "{below}");
        let listed = c
            .list_offsets(
                name,
                &[(0, OffsetSpec::Earliest), (1, OffsetSpec::Timestamp(7))],
            )
            .await?;
        assert_eq!(
            listed[1].1.clone().ok().flatten().map(|o| o.offset),
            Some(0),
            "{below}"
        );
        assert_eq!(c.partition_sizes(name, &[0, 1]).await?.len(), 2, "{below}");
        assert!(
            c.metadata(None, false)
                .await?
                .topics
                .iter()
                .any(|t| t.name == topic)
        );

        let group = format!("group-{below}");
        c.find_coordinator(&group).await?;
        let committed = c.offset_commit(&group, &[(name, 1, 1)]).await?;
        assert!(committed[0].2.is_ok(), "{below}: {committed:?}");
        let fetched = c.offset_fetch(&group, Some(&[(name, vec![1])])).await?;
        assert_eq!(fetched.first().and_then(|o| o.offset), Some(1), "{below}");
        assert!(
            c.list_groups().await?.iter().any(|g| g.group_id == group),
            "{below}"
        );
        let described = c.describe_groups(&[group.as_str()]).await?;
        assert!(described[0].1.is_ok(), "{below}: {described:?}");

        let deleted = c.delete_topics(&[name]).await?;
        assert!(deleted[0].1.is_ok(), "{below}: {deleted:?}");
        c.close().await;
    }
    Ok(())
}

/// Reads every record of `topic`'s `partition` from offset 0.
async fn read_all(c: &KafkaClient, topic: &str, partition: i32) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let mut fetched = c
            .fetch(topic, &[(partition, offset)], &FetchOptions::default())
            .await?;
        let Some((_, result)) = fetched.pop() else {
            panic!("no answer for {topic}-{partition}")
        };
        let got = result.unwrap_or_else(|e| panic!("{e}"));
        out.extend(records(&got.batches));
        offset = got.next_offset;
        if offset >= got.high_watermark {
            return Ok(out);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_batch_retried_after_its_answer_was_lost_is_written_once() -> Result<()> {
    let (s, _dir) = start().await;
    let c = Arc::new(client(s.addr()).await);
    c.create_topics(&[new_topic("t", Some(1), &[])], false)
        .await?;
    let producer = IdempotentProducer::new(c.clone(), ProducerConfig::default()).await?;
    assert!(producer.producer_id().0 >= 0);

    let first: Vec<Record> = (0..3)
        .map(|i| Record::new(10 + i, None, Some(format!("a{i}").as_bytes())))
        .collect();
    // The broker appends the batch; its answer is lost and the batch is sent again.
    producer
        .batches
        .answers_to_lose
        .store(1, std::sync::atomic::Ordering::Relaxed);
    let ack = producer.send("t", 0, &records_to_batch(&first)).await?;
    assert_eq!(
        ack.base_offset, 0,
        "the retry is answered with the first append's offset"
    );
    let second = vec![Record::new(20, None, Some(b"b0"))];
    let ack = producer.send("t", 0, &records_to_batch(&second)).await?;
    assert_eq!(ack.base_offset, 3);

    // Every answer lost until the tries run out: the batch may be written, so the producer
    // refuses to number another one rather than have the broker take it for a duplicate.
    let unlucky = IdempotentProducer::new(
        c.clone(),
        ProducerConfig {
            send_attempts_max: 2,
            retry_backoff_ms: 1,
            ..ProducerConfig::default()
        },
    )
    .await?;
    unlucky
        .batches
        .answers_to_lose
        .store(2, std::sync::atomic::Ordering::Relaxed);
    let lost = unlucky.send("t", 0, &records_to_batch(&second)).await;
    assert!(
        matches!(lost, Err(ClientError::Disconnected { .. })),
        "{lost:?}"
    );
    let refused = unlucky.send("t", 0, &records_to_batch(&second)).await;
    assert!(
        matches!(
            refused,
            Err(ClientError::ProducerStateUnknown { partition: 0, .. })
        ),
        "{refused:?}"
    );

    let values: Vec<Option<bytes::Bytes>> = read_all(&c, "t", 0)
        .await?
        .into_iter()
        .map(|r| r.value)
        .collect();
    let expected: Vec<Option<bytes::Bytes>> = ["a0", "a1", "a2", "b0", "b0"]
        .iter()
        .map(|v| Some(bytes::Bytes::from_static(v.as_bytes())))
        .collect();
    assert_eq!(values, expected);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_batches_compressed_with_every_codec_read_back_whole() -> Result<()> {
    let (s, _dir) = start().await;
    let c = Arc::new(client(s.addr()).await);
    let codecs = ["none", "gzip", "snappy", "lz4", "zstd"];
    let topics: Vec<NewTopic> = codecs
        .iter()
        .map(|codec| new_topic(codec, Some(1), &[]))
        .collect();
    c.create_topics(&topics, false).await?;
    for codec in codecs {
        let producer = IdempotentProducer::new(
            c.clone(),
            ProducerConfig {
                compression_type: codec.into(),
                ..ProducerConfig::default()
            },
        )
        .await?;
        let sent: Vec<Record> = (0..50)
            .map(|i| {
                Record::new(
                    100 + i,
                    Some(format!("k{i}").as_bytes()),
                    Some(&[b'x'; 200]),
                )
                .with_header("codec", Some(codec.as_bytes()))
            })
            .collect();
        for chunk in sent.chunks(25) {
            producer.send(codec, 0, &records_to_batch(chunk)).await?;
        }
        let got = read_all(&c, codec, 0).await?;
        let expected: Vec<Record> = sent
            .iter()
            .enumerate()
            .map(|(i, r)| Record {
                offset: i as i64,
                ..r.clone()
            })
            .collect();
        assert_eq!(got, expected, "{codec}");
    }
    let err = IdempotentProducer::new(
        c.clone(),
        ProducerConfig {
            compression_type: "brotli".into(),
            ..ProducerConfig::default()
        },
    )
    .await
    .err()
    .map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some("unknown compression.type 'brotli'; use none, gzip, snappy, lz4 or zstd")
    );
    Ok(())
}
