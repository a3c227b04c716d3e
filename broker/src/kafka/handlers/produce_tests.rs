//! Produce against a partition whose disk failed: the client gets KAFKA_STORAGE_ERROR with a
//! message, and the broker keeps serving the other partitions. Transactional produce: only to
//! the partitions of the producer's open transaction.

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use kafka_protocol::messages::{TopicName, TransactionalId};
use kafka_protocol::protocol::StrBytes;

use super::{Ctx, produce};
use crate::broker::{Broker, NewTopic};
use crate::config::BrokerConfig;
use crate::log::storage::fault::FaultyStorage;
use crate::log::{BatchHeader, ProducerInfo};
use crate::record::{Record, records_to_batch};

fn kafka_batch(value: &str) -> Bytes {
    let batch = records_to_batch(&[Record::new(5, Some(b"k"), Some(value.as_bytes()))]);
    let header = BatchHeader {
        base_offset: 0,
        last_offset_delta: 0,
        record_count: 1,
        first_timestamp: 5,
        max_timestamp: 5,
        producer: ProducerInfo::NONE,
    };
    let mut out = Vec::new();
    if let Err(e) = crate::kafka::records::encode_batch(&mut out, &header, &batch) {
        panic!("encode batch: {e}");
    }
    Bytes::from(out)
}

/// An acks=all produce of `records` to partition 0 of `topic`.
pub(super) fn partition_0_acks_all(topic: &'static str, records: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str(topic)))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(records)),
                ]),
        ])
}

/// One acks=all produce of one record to each of `partitions`; the responses in that order.
async fn produce_acks_all(ctx: &Ctx, partitions: &[i32]) -> Vec<PartitionProduceResponse> {
    let data = partitions
        .iter()
        .map(|&p| {
            PartitionProduceData::default()
                .with_index(p)
                .with_records(Some(kafka_batch(&format!("to {p}"))))
        })
        .collect();
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partition_data(data),
        ]);
    let Some(resp) = produce::handle(ctx, 9, req).await else {
        panic!("acks=all gets a response")
    };
    resp.responses
        .into_iter()
        .flat_map(|t| t.partition_responses)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_to_a_partition_whose_fsync_failed_gets_kafka_storage_error() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let config = BrokerConfig {
        data_dir: dir.path().to_owned(),
        ..BrokerConfig::default()
    };
    let storage = FaultyStorage::new();
    let broker = Broker::open_with_storage(config, storage.shared())
        .await
        .unwrap_or_else(|e| panic!("open: {e}"));
    // flush.messages=1: acks=all is answered after the fsync.
    let topic = NewTopic::new("t", 2).with_config("flush.messages", "1");
    if let Err(e) = broker.create_topic(topic).await {
        panic!("create topic: {e}");
    }
    let ctx = Ctx::for_tests(broker.clone());
    let ok = produce_acks_all(&ctx, &[0, 1]).await;
    assert!(ok.iter().all(|p| p.error_code == 0), "{ok:?}");

    storage.fail_syncs_under(&dir.path().join("t-0"));
    let storage_error = ResponseError::KafkaStorageError.code();
    for round in 0..2 {
        let resp = produce_acks_all(&ctx, &[0, 1]).await;
        assert_eq!(resp.len(), 2);
        let (failed, served) = (&resp[0], &resp[1]);
        assert_eq!(failed.index, 0);
        assert_eq!(
            failed.error_code, storage_error,
            "round {round}: {failed:?}"
        );
        let msg = failed
            .error_message
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default();
        assert!(
            msg.contains("t-0") && msg.contains("restart the broker"),
            "round {round}: {msg:?}"
        );
        assert_eq!(served.index, 1);
        assert_eq!(served.error_code, 0, "round {round}: {served:?}");
        assert_eq!(served.base_offset, 1 + round);
    }
    let failed_log = broker.log("t", 0).unwrap_or_else(|e| panic!("log: {e}"));
    assert!(failed_log.is_offline());
    assert_eq!(failed_log.offsets().durable_offset, 1);

    // Metadata shows the partition without a leader, as Kafka shows an offline partition.
    let meta = super::metadata::handle(
        &ctx,
        12,
        kafka_protocol::messages::metadata_request::MetadataRequest::default().with_topics(Some(
            vec![
                kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                    .with_name(Some(TopicName(StrBytes::from_static_str("t")))),
            ],
        )),
    )
    .await;
    let parts = &meta.topics[0].partitions;
    assert_eq!(
        (
            parts[0].error_code,
            parts[0].leader_id.0,
            parts[0].offline_replicas.len()
        ),
        (ResponseError::LeaderNotAvailable.code(), -1, 1)
    );
    assert_eq!((parts[1].error_code, parts[1].leader_id.0), (0, 0));
}

/// A Kafka batch of one record with the producer's facts and attribute bits.
fn kafka_batch_of(value: &str, producer: ProducerInfo) -> Bytes {
    let batch = records_to_batch(&[Record::new(5, Some(b"k"), Some(value.as_bytes()))]);
    let header = BatchHeader {
        base_offset: 0,
        last_offset_delta: 0,
        record_count: 1,
        first_timestamp: 5,
        max_timestamp: 5,
        producer,
    };
    let mut out = Vec::new();
    if let Err(e) = crate::kafka::records::encode_batch(&mut out, &header, &batch) {
        panic!("encode batch: {e}");
    }
    Bytes::from(out)
}

/// One acks=all produce of `records` to partition `p` of topic `t`.
async fn produce_one(
    ctx: &Ctx,
    transactional_id: Option<&str>,
    p: i32,
    records: Bytes,
) -> PartitionProduceResponse {
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_transactional_id(
            transactional_id.map(|t| TransactionalId(StrBytes::from_string(t.to_owned()))),
        )
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(p)
                        .with_records(Some(records)),
                ]),
        ]);
    let Some(resp) = produce::handle(ctx, 9, req).await else {
        panic!("acks=all gets a response")
    };
    match resp
        .responses
        .into_iter()
        .flat_map(|t| t.partition_responses)
        .next()
    {
        Some(r) => r,
        None => panic!("no partition response"),
    }
}

#[tokio::test]
async fn transactional_produce_is_let_in_only_to_the_partitions_of_an_open_transaction() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let broker = Ctx::open_test_broker(dir.path()).await;
    if let Err(e) = broker.create_topic(NewTopic::new("t", 2)).await {
        panic!("create topic: {e}");
    }
    let ctx = Ctx::for_tests(broker.clone());
    let mut txn = match broker.transactional_producer("tx", 60_000).await {
        Ok(t) => t,
        Err(e) => panic!("transactional producer: {e}"),
    };
    // Partition 0 joins the transaction (the in-process producer adds it).
    let first = records_to_batch(&[Record::new(5, Some(b"k"), Some(b"in-process"))]);
    if let Err(e) = txn.append("t", 0, &first).await {
        panic!("append: {e}");
    }
    let producer = ProducerInfo {
        producer_id: txn.producer_id(),
        producer_epoch: txn.producer_epoch(),
        base_sequence: 1,
        attributes: crate::log::attributes::TRANSACTIONAL,
    };
    let ok = produce_one(&ctx, Some("tx"), 0, kafka_batch_of("wire", producer)).await;
    assert_eq!(ok.error_code, 0, "{:?}", ok.error_message);

    let end_1 = broker.offsets("t", 1).map(|o| o.log_end_offset).ok();
    let not_added = ProducerInfo {
        base_sequence: 0,
        ..producer
    };
    let r = produce_one(&ctx, Some("tx"), 1, kafka_batch_of("x", not_added)).await;
    assert_eq!(r.error_code, ResponseError::InvalidTxnState.code());
    assert!(
        r.error_message
            .as_deref()
            .is_some_and(|m| m.contains("AddPartitionsToTxn")),
        "{:?}",
        r.error_message
    );
    let r = produce_one(&ctx, None, 1, kafka_batch_of("x", not_added)).await;
    assert_eq!(r.error_code, ResponseError::InvalidTxnState.code());
    assert!(
        r.error_message
            .as_deref()
            .is_some_and(|m| m.contains("transactional.id")),
        "{:?}",
        r.error_message
    );
    let marker_shaped = ProducerInfo {
        attributes: crate::log::attributes::TRANSACTIONAL | crate::log::attributes::CONTROL,
        ..not_added
    };
    let r = produce_one(&ctx, Some("tx"), 1, kafka_batch_of("x", marker_shaped)).await;
    assert_eq!(r.error_code, ResponseError::InvalidRecord.code());
    let fenced = ProducerInfo {
        producer_epoch: producer.producer_epoch - 1,
        base_sequence: 2,
        ..producer
    };
    if producer.producer_epoch > 0 {
        let r = produce_one(&ctx, Some("tx"), 0, kafka_batch_of("x", fenced)).await;
        assert_eq!(r.error_code, ResponseError::InvalidProducerEpoch.code());
    }
    assert_eq!(
        broker.offsets("t", 1).map(|o| o.log_end_offset).ok(),
        end_1,
        "nothing refused was written"
    );
    // Once the transaction ends, the same producer's batch is refused until it adds the
    // partition to a new transaction.
    if let Err(e) = txn.commit_and_wait().await {
        panic!("commit: {e}");
    }
    let late = ProducerInfo {
        base_sequence: 2,
        ..producer
    };
    let r = produce_one(&ctx, Some("tx"), 0, kafka_batch_of("late", late)).await;
    assert_eq!(r.error_code, ResponseError::InvalidTxnState.code());
    let handle = broker
        .partition("t", 0)
        .unwrap_or_else(|e| panic!("partition: {e}"));
    assert_eq!(
        handle.last_stable_offset(),
        handle.high_watermark(),
        "no batch is left open after the marker"
    );
    drop(ctx);
    let _ = broker.shutdown().await;
}

#[tokio::test]
async fn clients_cannot_produce_to_the_internal_topics() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let broker = Ctx::open_test_broker(dir.path()).await;
    let ctx = Ctx::for_tests(broker.clone());
    // Make both internal topics exist, as they do once groups and transactions are used.
    if let Err(e) = broker.groups().ensure_ready().await {
        panic!("groups: {e:?}");
    }
    if let Err(e) = broker.transactions().ensure_ready().await {
        panic!("transactions: {e:?}");
    }
    for topic in crate::topic::INTERNAL_TOPICS {
        let end = broker.offsets(topic, 0).map(|o| o.log_end_offset).ok();
        let req = partition_0_acks_all(topic, kafka_batch("forged"));
        let Some(resp) = produce::handle(&ctx, 9, req).await else {
            panic!("acks=all gets a response")
        };
        let p = &resp.responses[0].partition_responses[0];
        assert_eq!(
            p.error_code,
            ResponseError::InvalidTopicException.code(),
            "{topic}"
        );
        assert_eq!(
            broker.offsets(topic, 0).map(|o| o.log_end_offset).ok(),
            end,
            "nothing was written to {topic}"
        );
    }
    drop(ctx);
    let _ = broker.shutdown().await;
}
