//! Durability as Kafka clients see it: acks=all answered after the fsync, and leader epochs
//! and the high watermark in Fetch, ListOffsets and OffsetForLeaderEpoch after an unclean
//! restart.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::TopicName;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderEpochRequest, OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::protocol::StrBytes;

use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};

use super::{Ctx, fetch, list_offsets, produce};
use crate::broker::{Broker, NewTopic};
use crate::log::ProducerInfo;
use crate::record::{Record, records_to_batch};

fn ctx(broker: Broker) -> Ctx {
    Ctx::for_tests(broker)
}

fn topic() -> TopicName {
    TopicName(StrBytes::from_static_str("e"))
}

async fn open(dir: &std::path::Path) -> Broker {
    Ctx::open_test_broker(dir).await
}

async fn append(broker: &Broker, n: usize) {
    let now = crate::log::now_ms();
    let records: Vec<Record> = (0..n)
        .map(|_| Record::new(now, Some(b"k"), Some(b"v")))
        .collect();
    broker
        .append("e", 0, &records_to_batch(&records), ProducerInfo::NONE)
        .await
        .unwrap_or_else(|e| panic!("append: {e}"));
}

fn fetch_request(current_leader_epoch: i32) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(topic())
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(0)
                        .with_current_leader_epoch(current_leader_epoch)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ])
}

/// The partition leader epoch field of every batch in a Fetch answer's records.
fn batch_epochs(mut records: &[u8]) -> Vec<i32> {
    let mut epochs = Vec::new();
    while records.len() >= 61 {
        let len = i32::from_be_bytes([records[8], records[9], records[10], records[11]]) as usize;
        epochs.push(i32::from_be_bytes([
            records[12],
            records[13],
            records[14],
            records[15],
        ]));
        records = &records[(12 + len).min(records.len())..];
    }
    epochs
}

#[tokio::test]
async fn clients_see_the_epoch_that_ended_at_a_crash() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let broker = open(dir.path()).await;
    broker
        .create_topic(NewTopic::new("e", 1))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    append(&broker, 3).await;
    drop(broker); // a crash: no clean shutdown
    let broker = open(dir.path()).await;
    append(&broker, 2).await;
    let ctx = ctx(broker);

    // A client still on epoch 0 is told its metadata is stale; one on epoch 2 that we are behind.
    for (epoch, want) in [
        (0, ResponseError::FencedLeaderEpoch.code()),
        (2, ResponseError::UnknownLeaderEpoch.code()),
    ] {
        let resp = fetch::handle(&ctx, 12, fetch_request(epoch)).await;
        assert_eq!(
            resp.responses[0].partitions[0].error_code, want,
            "epoch {epoch}"
        );
    }
    let resp = fetch::handle(&ctx, 12, fetch_request(1)).await;
    let p = &resp.responses[0].partitions[0];
    assert_eq!((p.error_code, p.high_watermark), (0, 5));
    let records = p.records.clone().unwrap_or_default();
    assert_eq!(
        batch_epochs(&records),
        vec![0, 1],
        "each batch carries its own epoch"
    );

    // OffsetForLeaderEpoch: epoch 0 ended where the crash left the log.
    let ask = |leader_epoch: i32, current: i32| {
        OffsetForLeaderEpochRequest::default().with_topics(vec![
            OffsetForLeaderTopic::default()
                .with_topic(topic())
                .with_partitions(vec![
                    OffsetForLeaderPartition::default()
                        .with_partition(0)
                        .with_current_leader_epoch(current)
                        .with_leader_epoch(leader_epoch),
                ]),
        ])
    };
    let answer = |req| {
        let resp = list_offsets::offset_for_leader_epoch(&ctx, req);
        let p = resp.topics[0].partitions[0].clone();
        (p.error_code, p.leader_epoch, p.end_offset)
    };
    assert_eq!(answer(ask(0, -1)), (0, 0, 3));
    assert_eq!(answer(ask(1, 1)), (0, 1, 5));
    assert_eq!(answer(ask(5, -1)), (0, -1, -1));
    assert_eq!(
        answer(ask(0, 3)).0,
        ResponseError::UnknownLeaderEpoch.code()
    );

    // ListOffsets: latest is the high watermark, with the epoch of that offset.
    let req = ListOffsetsRequest::default().with_topics(vec![
        ListOffsetsTopic::default()
            .with_name(topic())
            .with_partitions(vec![
                ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_current_leader_epoch(1)
                    .with_timestamp(-1),
            ]),
    ]);
    let resp = list_offsets::handle(&ctx, 8, req);
    let p = &resp.topics[0].partitions[0];
    assert_eq!((p.error_code, p.offset, p.leader_epoch), (0, 5, 1));
}

#[tokio::test]
async fn produce_acks_all_is_answered_once_durable() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let broker = open(dir.path()).await;
    broker
        .create_topic(NewTopic::new("e", 1))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ctx = ctx(broker.clone());
    let now = crate::log::now_ms();
    let rows: Vec<Record> = (0..10)
        .map(|_| Record::new(now, Some(b"k"), Some(b"v")))
        .collect();
    let header = crate::log::BatchHeader {
        base_offset: 0,
        last_offset_delta: 9,
        record_count: 10,
        first_timestamp: now,
        max_timestamp: now,
        producer: ProducerInfo::NONE,
    };
    let mut wire = Vec::new();
    crate::kafka::records::encode_batch(&mut wire, &header, &records_to_batch(&rows))
        .unwrap_or_else(|e| panic!("{e}"));
    for round in 0..20 {
        let req = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(topic())
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(bytes::Bytes::from(wire.clone()))),
                    ]),
            ]);
        let resp = produce::handle(&ctx, 9, req)
            .await
            .unwrap_or_else(|| panic!("acks=all gets an answer"));
        let p = &resp.responses[0].partition_responses[0];
        assert_eq!((p.error_code, p.base_offset), (0, round * 10));
        // The answer came after the fsync: a power loss now could not take these records.
        let o = broker.offsets("e", 0).unwrap_or_else(|e| panic!("{e}"));
        assert!(o.durable_offset >= (round + 1) * 10, "{o:?}");
    }
}
