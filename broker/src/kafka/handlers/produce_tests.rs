//! Produce against a partition whose disk failed: the client gets KAFKA_STORAGE_ERROR with a
//! message, and the broker keeps serving the other partitions.

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::TopicName;
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
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
