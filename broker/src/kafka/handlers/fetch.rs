//! Fetch: reads stored batches from the logs and encodes them as Kafka record batches: Arrow
//! frames from their columns, small batches (kept in Kafka's record encoding) by putting a Kafka
//! batch header before their rows, without decoding them.
//!
//! When less than `min_bytes` is available, the request waits (up to `max_wait_ms`) on the logs'
//! append notifications — it wakes when the high watermark moves (with `log.flush.on.ack`, once
//! new records are durable), it does not poll.
//!
//! With `isolation_level=READ_COMMITTED` a partition is read up to its last stable offset and
//! answers the aborted transactions of the range read, so the client drops their records. The
//! LSO moves only when the high watermark does (a marker becoming durable), so the same wake-ups
//! serve such readers.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::FetchRequest;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchResponse, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{BrokerId, ProducerId};

use super::{Ctx, check_leader_epoch, error_code};
use crate::kafka::compression;
use crate::log::{FetchBatch, Isolation, attributes};

/// Longest wait a client may ask for.
const MAX_WAIT_CAP: Duration = Duration::from_secs(60);

pub async fn handle(ctx: &Ctx, version: i16, req: FetchRequest) -> FetchResponse {
    let wait = Duration::from_millis(req.max_wait_ms.max(0) as u64).min(MAX_WAIT_CAP);
    let deadline = Instant::now() + wait;
    let min_bytes = req.min_bytes.max(0) as usize;
    loop {
        // Subscribe before reading, so an append between the read and the wait is not missed.
        let mut watchers = Vec::new();
        for t in &req.topics {
            for p in &t.partitions {
                if let Ok(log) = ctx.broker.log(&t.topic.0, p.partition) {
                    watchers.push(log.subscribe());
                }
            }
        }
        let mut draining = ctx.draining.subscribe();
        let (resp, bytes, any_error) = read_once(ctx, version, &req);
        let now = Instant::now();
        // min_bytes=0 asks for an answer at once, data or not (Kafka's semantics).
        let enough = min_bytes == 0 || bytes >= min_bytes;
        if enough || any_error || now >= deadline || *draining.borrow() {
            return resp;
        }
        let changes = watchers
            .iter_mut()
            .map(|w| w.changed().boxed())
            .chain(std::iter::once(draining.changed().boxed()));
        let _ = tokio::time::timeout(deadline - now, futures::future::select_all(changes)).await;
    }
}

/// One pass over the requested partitions. Returns the response, record bytes in it, and
/// whether any partition had an error (which answers the fetch at once).
fn read_once(ctx: &Ctx, version: i16, req: &FetchRequest) -> (FetchResponse, usize, bool) {
    // What the client asks for, within `fetch.max.bytes`: a read never allocates for more, so a
    // fetch asking for 2 GiB is served like one asking for the cap.
    let mut budget = (req.max_bytes.max(0) as usize).min(ctx.broker.config().kafka.fetch_max_bytes);
    let mut total = 0usize;
    let mut any_error = false;
    let read_committed = req.isolation_level == 1;
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in &req.topics {
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let mut data = PartitionData::default()
                .with_partition_index(p.partition)
                .with_high_watermark(-1)
                .with_last_stable_offset(-1)
                .with_log_start_offset(-1)
                .with_preferred_read_replica(BrokerId(-1))
                .with_aborted_transactions(read_committed.then(Vec::new));
            let log = match ctx.broker.log(&t.topic.0, p.partition) {
                Ok(log) => log,
                Err(e) => {
                    any_error = true;
                    partitions.push(data.with_error_code(error_code(&e)));
                    continue;
                }
            };
            if let Err(e) = check_leader_epoch(&log, p.current_leader_epoch) {
                any_error = true;
                partitions.push(data.with_error_code(e.code()));
                continue;
            }
            let per_partition = (p.partition_max_bytes.max(0) as usize).min(budget);
            // The first batch of a response is always sent whole, so a large batch cannot stall a consumer.
            let max = if total == 0 {
                per_partition.max(1)
            } else {
                per_partition
            };
            let isolation = if read_committed {
                Isolation::ReadCommitted
            } else {
                Isolation::ReadUncommitted
            };
            let read = if max == 0 {
                log.read_for_fetch(p.fetch_offset, 0, isolation)
                    .map(|mut r| {
                        r.batches.clear();
                        r.aborted.clear();
                        r
                    })
            } else {
                log.read_for_fetch(p.fetch_offset, max, isolation)
            };
            match read {
                Ok(result) => {
                    // Kafka's encoding of these rows is about the size of their Arrow frames.
                    let estimate: usize = result
                        .batches
                        .iter()
                        .map(FetchBatch::kafka_len_estimate)
                        .sum();
                    let mut out = Vec::with_capacity(estimate.min(max));
                    for b in &result.batches {
                        let before = out.len();
                        let header = b.header();
                        let epoch = result.epochs.epoch_for(header.base_offset);
                        // Sent with the codec it was stored for; zstd only to clients that
                        // asked with Fetch v10+ (older ones cannot read it), the rest plain.
                        let mut codec = header.producer.attributes & attributes::COMPRESSION;
                        if codec == compression::codec::ZSTD && version < 10 {
                            codec = compression::codec::NONE;
                        }
                        if let Err(e) = b.encode_kafka(&mut out, epoch, codec) {
                            tracing::error!(topic = %t.topic.0.as_str(), partition = p.partition, error = %e, "cannot encode a stored batch");
                            any_error = true;
                            data = data.with_error_code(ResponseError::CorruptMessage.code());
                            break;
                        }
                        // A Kafka batch can be larger than its stored frame: one that takes the
                        // partition past its share waits for the next fetch, unless it is the first.
                        if out.len() > max && (before > 0 || total > 0) {
                            out.truncate(before);
                            break;
                        }
                    }
                    total += out.len();
                    budget = budget.saturating_sub(out.len());
                    if read_committed {
                        let aborted = result
                            .aborted
                            .iter()
                            .map(|a| {
                                AbortedTransaction::default()
                                    .with_producer_id(ProducerId(a.producer_id))
                                    .with_first_offset(a.first_offset)
                            })
                            .collect();
                        data = data.with_aborted_transactions(Some(aborted));
                    }
                    data = data
                        .with_high_watermark(result.high_watermark)
                        .with_last_stable_offset(result.last_stable_offset)
                        .with_log_start_offset(result.log_start_offset)
                        .with_records(Some(Bytes::from(out)));
                }
                Err(e) => {
                    any_error = true;
                    let o = log.offsets();
                    data = data
                        .with_error_code(error_code(&e))
                        .with_high_watermark(o.high_watermark)
                        .with_last_stable_offset(o.last_stable_offset)
                        .with_log_start_offset(o.log_start_offset);
                }
            }
            if version < 5 {
                data.log_start_offset = -1;
            }
            partitions.push(data);
        }
        topics.push(
            FetchableTopicResponse::default()
                .with_topic(t.topic.clone())
                .with_topic_id(t.topic_id)
                .with_partitions(partitions),
        );
    }
    (
        FetchResponse::default().with_responses(topics),
        total,
        any_error,
    )
}
