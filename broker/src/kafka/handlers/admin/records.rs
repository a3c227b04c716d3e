//! DeleteRecords: moves each partition's log start offset (its low watermark) up.

use kafka_protocol::messages::delete_records_request::DeleteRecordsRequest;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsResponse, DeleteRecordsTopicResult,
};

use crate::kafka::handlers::{Ctx, error_code};

/// Kafka's low watermark in a failed partition result.
const INVALID_LOW_WATERMARK: i64 = -1;

/// Each partition is handled on its own: offset -1 means the high watermark; an offset beyond
/// it gets OFFSET_OUT_OF_RANGE; one at or below the current start changes nothing.
pub fn delete_records(ctx: &Ctx, req: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let result = ctx
                        .broker
                        .log(&t.name.0, p.partition_index)
                        .and_then(|log| log.delete_records(p.offset));
                    let out = DeleteRecordsPartitionResult::default()
                        .with_partition_index(p.partition_index);
                    match result {
                        Ok(low_watermark) => out.with_low_watermark(low_watermark),
                        Err(e) => out
                            .with_low_watermark(INVALID_LOW_WATERMARK)
                            .with_error_code(error_code(&e)),
                    }
                })
                .collect();
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    DeleteRecordsResponse::default().with_topics(topics)
}
