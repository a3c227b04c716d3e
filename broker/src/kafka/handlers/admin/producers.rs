//! DescribeProducers: the producers each partition keeps state for (what
//! `kafka-transactions.sh describe-producers` shows), with the first offset of each one's open
//! transaction, so an operator can find the transaction holding back a partition's LSO.

use kafka_protocol::messages::ProducerId;
use kafka_protocol::messages::describe_producers_request::DescribeProducersRequest;
use kafka_protocol::messages::describe_producers_response::{
    DescribeProducersResponse, PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::protocol::StrBytes;

use crate::kafka::handlers::{Ctx, error_code};

/// Each partition is answered on its own; an unknown one gets UNKNOWN_TOPIC_OR_PARTITION.
pub fn describe_producers(ctx: &Ctx, req: DescribeProducersRequest) -> DescribeProducersResponse {
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partition_indexes
                .iter()
                .map(|&p| {
                    let out = PartitionResponse::default().with_partition_index(p);
                    match ctx.broker.log(&t.name.0, p) {
                        Ok(log) => out.with_active_producers(
                            log.producers()
                                .into_iter()
                                .map(|s| {
                                    ProducerState::default()
                                        .with_producer_id(ProducerId(s.producer_id))
                                        .with_producer_epoch(i32::from(s.producer_epoch))
                                        .with_last_sequence(s.last_sequence)
                                        .with_last_timestamp(s.last_timestamp_ms)
                                        .with_coordinator_epoch(-1)
                                        .with_current_txn_start_offset(
                                            s.current_txn_start_offset.unwrap_or(-1),
                                        )
                                })
                                .collect(),
                        ),
                        Err(e) => out
                            .with_error_code(error_code(&e))
                            .with_error_message(Some(StrBytes::from_string(e.to_string()))),
                    }
                })
                .collect();
            TopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    DescribeProducersResponse::default().with_topics(topics)
}
