//! `compression.type`: batches are stored compressed and sent to consumers with the codec the
//! topic names, or the producer's when it says `producer`, as Kafka does.

use bytes::Bytes;
use kafka_protocol::messages::TopicName;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::protocol::StrBytes;

use super::{Ctx, fetch, produce};
use crate::broker::{Broker, NewTopic};
use crate::kafka::compression::codec;
use crate::kafka::records::{self, DecodeScratch};
use crate::log::{BatchHeader, ProducerInfo};
use crate::record::{EnvelopeBuilder, Record, batch_to_records, records_to_batch};

fn events(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let json = format!(
                r#"{{"order_id":{i},"customer":"c-{}","region":"eu-west-1","amount":{}.25}}"#,
                i % 50,
                i % 997
            );
            Record::new(
                1_700_000_000_000 + i as i64,
                Some(b"key"),
                Some(json.as_bytes()),
            )
        })
        .collect()
}

/// A producer's batch of `records`, its records compressed with `codec_id`.
fn wire_batch(records: &[Record], codec_id: i16) -> Bytes {
    let batch = records_to_batch(records);
    let header = BatchHeader {
        base_offset: 0,
        last_offset_delta: records.len() as i32 - 1,
        record_count: records.len() as i32,
        first_timestamp: records[0].timestamp_ms,
        max_timestamp: records[records.len() - 1].timestamp_ms,
        producer: ProducerInfo::NONE,
    };
    let mut out = Vec::new();
    records::encode_batch_compressed(&mut out, &header, &batch, codec_id)
        .unwrap_or_else(|e| panic!("encode: {e}"));
    Bytes::from(out)
}

async fn produce_to(ctx: &Ctx, topic: &'static str, wire: Bytes) {
    let req = super::produce_tests::partition_0_acks_all(topic, wire);
    let Some(resp) = produce::handle(ctx, 9, req).await else {
        panic!("acks=all gets a response")
    };
    let p = &resp.responses[0].partition_responses[0];
    assert_eq!(p.error_code, 0, "{p:?}");
}

/// Fetches partition 0 of `topic` from offset 0; each batch's codec and all the records.
async fn fetch_all(ctx: &Ctx, topic: &'static str, version: i16) -> (Vec<i16>, Vec<Record>) {
    let req = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(16 << 20)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str(topic)))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(16 << 20),
                ]),
        ]);
    let resp = fetch::handle(ctx, version, req).await;
    let data = &resp.responses[0].partitions[0];
    assert_eq!(data.error_code, 0, "{data:?}");
    let bytes = data.records.clone().unwrap_or_default();
    let batches = records::parse_batches(&bytes).unwrap_or_else(|e| panic!("parse: {e}"));
    let mut codecs = Vec::new();
    let mut all = Vec::new();
    for b in &batches {
        codecs.push(b.compression());
        let mut builder = EnvelopeBuilder::default();
        records::decode_records(b, &mut builder, &mut DecodeScratch::default(), 64 << 20)
            .unwrap_or_else(|e| panic!("decode: {e}"));
        all.extend(batch_to_records(&builder.finish()).unwrap_or_default());
    }
    (codecs, all)
}

async fn open(dir: &std::path::Path) -> (Broker, Ctx) {
    let broker = Ctx::open_test_broker(dir).await;
    let ctx = Ctx::for_tests(broker.clone());
    (broker, ctx)
}

async fn create(broker: &Broker, topic: &str, compression: &str) {
    broker
        .create_topic(NewTopic::new(topic, 1).with_config("compression.type", compression))
        .await
        .unwrap_or_else(|e| panic!("create {topic}: {e}"));
}

fn stored_bytes(broker: &Broker, topic: &str) -> u64 {
    let log = broker.log(topic, 0).unwrap_or_else(|e| panic!("{e}"));
    log.offsets().size_bytes
}

#[tokio::test]
async fn consumers_get_the_codec_the_topic_names_or_the_producers() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (broker, ctx) = open(dir.path()).await;
    let rows = events(500);
    // (topic, compression.type, the producer's codec, the codec consumers get)
    let cases: [(&'static str, &str, i16, i16); 6] = [
        ("keep-gzip", "producer", codec::GZIP, codec::GZIP),
        ("keep-plain", "producer", codec::NONE, codec::NONE),
        ("to-zstd", "zstd", codec::NONE, codec::ZSTD),
        ("to-snappy", "snappy", codec::ZSTD, codec::SNAPPY),
        ("to-lz4", "lz4", codec::GZIP, codec::LZ4),
        ("to-none", "none", codec::LZ4, codec::NONE),
    ];
    for (topic, compression, sent, _) in cases {
        create(&broker, topic, compression).await;
        produce_to(&ctx, topic, wire_batch(&rows, sent)).await;
        // Small batches too: one record per request, as a producer that does not linger sends.
        for r in events(3) {
            produce_to(&ctx, topic, wire_batch(&[r], sent)).await;
        }
    }
    let mut expected = rows.clone();
    expected.extend(events(3));
    for (topic, _, _, got) in cases {
        let (codecs, records) = fetch_all(&ctx, topic, 12).await;
        assert_eq!(codecs, vec![got; 4], "{topic}");
        assert_eq!(records, expected, "{topic}");
    }
    // Stored compressed whenever consumers get a codec.
    let plain = stored_bytes(&broker, "keep-plain");
    for (topic, _, _, got) in cases {
        let stored = stored_bytes(&broker, topic);
        if got == codec::NONE {
            assert!(stored * 10 > plain * 9, "{topic}: {stored} of {plain}");
        } else {
            assert!(
                stored * 3 < plain,
                "{topic}: {stored} bytes against {plain} plain"
            );
        }
    }
}

#[tokio::test]
async fn old_fetch_versions_get_zstd_topics_uncompressed() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (broker, ctx) = open(dir.path()).await;
    create(&broker, "z", "zstd").await;
    produce_to(&ctx, "z", wire_batch(&events(100), codec::NONE)).await;
    let (codecs, records) = fetch_all(&ctx, "z", 9).await;
    assert_eq!(codecs, vec![codec::NONE]);
    assert_eq!(records, events(100));
    let (codecs, _) = fetch_all(&ctx, "z", 10).await;
    assert_eq!(codecs, vec![codec::ZSTD]);
}

#[tokio::test]
async fn compressed_data_survives_a_restart_and_a_config_change_applies_to_new_batches() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    {
        let (broker, ctx) = open(dir.path()).await;
        create(&broker, "t", "lz4").await;
        produce_to(&ctx, "t", wire_batch(&events(200), codec::NONE)).await;
        broker.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    }
    let (broker, ctx) = open(dir.path()).await;
    broker
        .alter_topic_config(
            "t",
            &[crate::broker::ConfigChange::Set(
                "compression.type".into(),
                "gzip".into(),
            )],
        )
        .await
        .unwrap_or_else(|e| panic!("alter: {e}"));
    produce_to(&ctx, "t", wire_batch(&events(10), codec::NONE)).await;
    let (codecs, records) = fetch_all(&ctx, "t", 12).await;
    assert_eq!(codecs, vec![codec::LZ4, codec::GZIP]);
    let mut expected = events(200);
    expected.extend(events(10));
    assert_eq!(records, expected);
}

#[tokio::test]
async fn a_bad_compression_type_is_refused_with_the_choices() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (broker, _ctx) = open(dir.path()).await;
    let err = broker
        .create_topic(NewTopic::new("b", 1).with_config("compression.type", "brotli"))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("compression.type=\"brotli\"") && err.contains("zstd"),
        "{err}"
    );
}
