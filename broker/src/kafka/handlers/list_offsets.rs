//! ListOffsets (earliest, latest, by timestamp, max timestamp) and OffsetForLeaderEpoch.
//! "Latest" is the high watermark, as in Kafka (with `log.flush.on.ack`, the durable offset).
//! Leader epochs come from the partition's epoch checkpoint: a single node is always the
//! leader, but the epoch is bumped after every unclean shutdown, so a client whose position
//! lies past what survived a crash detects it as a truncation.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_request::ListOffsetsRequest;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::offset_for_leader_epoch_request::OffsetForLeaderEpochRequest;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderEpochResponse, OffsetForLeaderTopicResult,
};

use super::{Ctx, check_leader_epoch, error_code};

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;

pub fn handle(ctx: &Ctx, version: i16, req: ListOffsetsRequest) -> ListOffsetsResponse {
    // READ_COMMITTED (v2+): nothing at or past the last stable offset is listed.
    let read_committed = version >= 2 && req.isolation_level == 1;
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let resp = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_leader_epoch(-1);
                    let log = match ctx.broker.log(&t.name.0, p.partition_index) {
                        Ok(log) => log,
                        Err(e) => {
                            return resp
                                .with_error_code(error_code(&e))
                                .with_offset(-1)
                                .with_timestamp(-1);
                        }
                    };
                    if let Err(e) = check_leader_epoch(&log, p.current_leader_epoch) {
                        return resp
                            .with_error_code(e.code())
                            .with_offset(-1)
                            .with_timestamp(-1);
                    }
                    let epochs = log.leader_epochs();
                    let epoch_of = |offset: i64| {
                        if version >= 4 {
                            epochs.epoch_for(offset)
                        } else {
                            -1
                        }
                    };
                    let o = log.offsets();
                    let visible_end = if read_committed {
                        o.last_stable_offset
                    } else {
                        o.high_watermark
                    };
                    let found = match p.timestamp {
                        LATEST => Ok(Some((visible_end, -1))),
                        EARLIEST | EARLIEST_LOCAL => Ok(Some((o.log_start_offset, -1))),
                        MAX_TIMESTAMP => log
                            .max_timestamp()
                            .map_or(Ok(None), |ts| log.offset_for_timestamp(ts)),
                        ts if ts >= 0 => log.offset_for_timestamp(ts),
                        other => {
                            return resp
                                .with_error_code(ResponseError::InvalidRequest.code())
                                .with_offset(-1)
                                .with_timestamp(other);
                        }
                    }
                    // A record found by its timestamp must be one the reader may see.
                    .map(|found| {
                        let by_time = p.timestamp >= 0 || p.timestamp == MAX_TIMESTAMP;
                        found.filter(|&(offset, _)| !by_time || offset < visible_end)
                    });
                    match found {
                        Ok(Some((offset, ts))) => resp
                            .with_offset(offset)
                            .with_timestamp(ts)
                            .with_leader_epoch(epoch_of(offset)),
                        Ok(None) => resp.with_offset(-1).with_timestamp(-1),
                        Err(e) => resp
                            .with_error_code(error_code(&e))
                            .with_offset(-1)
                            .with_timestamp(-1),
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

pub fn offset_for_leader_epoch(
    ctx: &Ctx,
    req: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let resp = EpochEndOffset::default().with_partition(p.partition);
                    let log = match ctx.broker.log(&t.topic.0, p.partition) {
                        Ok(log) => log,
                        Err(e) => {
                            return resp
                                .with_error_code(error_code(&e))
                                .with_leader_epoch(-1)
                                .with_end_offset(-1);
                        }
                    };
                    if let Err(e) = check_leader_epoch(&log, p.current_leader_epoch) {
                        return resp
                            .with_error_code(e.code())
                            .with_leader_epoch(-1)
                            .with_end_offset(-1);
                    }
                    // The end of the current epoch is the high watermark: what a consumer can
                    // have read (Kafka's leader answers with its log end, which on a leader
                    // with replicas a consumer cannot read past either).
                    let (epoch, end) = log
                        .leader_epochs()
                        .end_offset_for(p.leader_epoch, log.high_watermark());
                    resp.with_leader_epoch(epoch).with_end_offset(end)
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
