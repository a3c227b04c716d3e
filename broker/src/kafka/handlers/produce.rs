//! Produce: record batches from clients are checked (CRC, magic, sizes, every record), decoded
//! straight into Arrow (a small uncompressed batch is checked in place and stored as sent, see
//! [`PreparedBatch`]) and appended. All batches of a partition are decoded before any is
//! appended, so a bad batch leaves the partition untouched. acks=all is answered once the
//! partition's records are durable (with `log.flush.on.ack`, the default: one group-committed
//! fsync shared with every concurrent producer); acks=0/1 once they are written.
//!
//! A Produce is handled in two stages, as Redpanda does: [`stage`] checks and appends (in
//! request order, so an idempotent producer's pipelined batches land in the order sent), and
//! [`StagedProduce::acknowledge`] waits until the records may be acknowledged. The connection
//! can stage the next request while one waits for its fsync, so pipelined acks=all requests
//! share fsyncs instead of each waiting out its own. Small batches wait in the partition's
//! write buffer whatever the acks, and an acks=0/1 answer writes the buffer first: a connection
//! that stages its pipelined acks=0/1 requests before answering them shares one write among
//! them.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::TopicName;
use kafka_protocol::messages::produce_response::{
    PartitionProduceResponse, ProduceResponse, TopicProduceResponse,
};
use kafka_protocol::protocol::StrBytes;
use smallvec::SmallVec;

use super::produce_decode::ProduceData;
use super::{Ctx, error_code};
use crate::kafka::records::{self, DecodeScratch, RecordError};
use crate::log::{Ack, Log, PreparedBatch, ProducerInfo, attributes};

/// Returns `None` for acks=0 (no response is sent).
pub async fn handle(
    ctx: &Ctx,
    version: i16,
    req: impl Into<ProduceData>,
) -> Option<ProduceResponse> {
    let answer = stage(ctx, version, req.into()).acknowledge().await?;
    Some(answer.into())
}

/// What acknowledging a partition's records waits for: its log and the offset after them.
type AckWait = Option<(Arc<Log>, i64)>;

/// A Produce's answer, as the connection writes it ([`super::produce_encode`]): only the fields
/// the broker sets, without building `kafka-protocol`'s response (and dropping it again), which
/// cost a one-record Produce as much as its decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceAnswer {
    pub version: i16,
    pub topics: SmallVec<[TopicAnswer; 1]>,
}

/// The answer for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicAnswer {
    pub name: StrBytes,
    pub partitions: SmallVec<[PartitionAnswer; 1]>,
}

/// The answer for one partition: where its records landed, or why they did not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionAnswer {
    pub index: i32,
    pub error_code: i16,
    pub base_offset: i64,
    pub log_append_time_ms: i64,
    pub log_start_offset: i64,
    pub error_message: Option<String>,
}

impl From<ProduceAnswer> for ProduceResponse {
    /// The response as `kafka-protocol` holds it, with only the fields of the answer's version.
    fn from(answer: ProduceAnswer) -> Self {
        let version = answer.version;
        let responses = answer
            .topics
            .into_iter()
            .map(|t| {
                TopicProduceResponse::default()
                    .with_name(TopicName(t.name))
                    .with_partition_responses(
                        t.partitions
                            .into_iter()
                            .map(|p| {
                                PartitionProduceResponse::default()
                                    .with_index(p.index)
                                    .with_error_code(p.error_code)
                                    .with_base_offset(p.base_offset)
                                    .with_log_append_time_ms(p.log_append_time_ms)
                                    .with_log_start_offset(if version >= 5 {
                                        p.log_start_offset
                                    } else {
                                        -1
                                    })
                                    .with_error_message(
                                        p.error_message
                                            .filter(|_| version >= 8)
                                            .map(StrBytes::from_string),
                                    )
                            })
                            .collect(),
                    )
            })
            .collect();
        ProduceResponse::default().with_responses(responses)
    }
}

/// A Produce whose records are appended (or refused), waiting to be acknowledged.
#[derive(Debug)]
pub struct StagedProduce {
    acks: i16,
    ack: Ack,
    /// Whether acknowledging may wait for an fsync (see [`StagedProduce::may_wait_for_fsync`]).
    may_flush: bool,
    /// The answer as the appends left it (acknowledging may still put an error in it).
    answer: ProduceAnswer,
    /// Per topic and partition of the answer, what acknowledging it waits for: its log and
    /// the offset after its records.
    waits: SmallVec<[SmallVec<[AckWait; 1]>; 1]>,
}

/// The first stage of a Produce: checks and appends every partition's records, in order.
pub fn stage(ctx: &Ctx, version: i16, req: ProduceData) -> StagedProduce {
    let ack = if req.acks == -1 {
        Ack::All
    } else {
        Ack::Written
    };
    let mut topics = SmallVec::with_capacity(req.topics.len());
    let mut waits = SmallVec::with_capacity(req.topics.len());
    for topic in req.topics {
        let name = topic.name.as_str();
        let mut partitions = SmallVec::with_capacity(topic.partitions.len());
        let mut topic_waits = SmallVec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            let (response, wait) = produce_partition(
                ctx,
                req.transactional_id.as_deref(),
                name,
                p.index,
                p.records,
            );
            partitions.push(response);
            topic_waits.push(wait);
        }
        topics.push(TopicAnswer {
            name: topic.name,
            partitions,
        });
        waits.push(topic_waits);
    }
    // Decided here, once: a reply that only writes is never spawned, so it must not start an
    // fsync round (which would then wait on the connection's turn) if a partition's
    // `flush.messages` is set meanwhile.
    let may_flush = waits
        .iter()
        .flat_map(|w: &SmallVec<[AckWait; 1]>| w.iter().flatten())
        .any(|(log, _)| {
            let config = log.config();
            (ack == Ack::All && config.flush_on_ack) || config.flush_messages.is_some()
        });
    StagedProduce {
        acks: req.acks,
        ack,
        may_flush,
        answer: ProduceAnswer { version, topics },
        waits,
    }
}

impl StagedProduce {
    /// Whether acknowledging may wait for an fsync: acks=all with `log.flush.on.ack`, or a
    /// partition whose `flush.messages` policy may ask for one. Otherwise
    /// [`StagedProduce::acknowledge`] only writes what waits in the partitions' write buffers
    /// (for acks=0/1: their answer must not come before the records are written), and never
    /// waits.
    pub fn may_wait_for_fsync(&self) -> bool {
        self.may_flush
    }

    /// The second stage: waits until every partition's records may be acknowledged (durable
    /// for acks=all), and answers; a partition that fails here gets its error instead.
    /// `None` for acks=0.
    pub async fn acknowledge(self) -> Option<ProduceAnswer> {
        let StagedProduce {
            acks,
            ack,
            may_flush,
            mut answer,
            waits,
        } = self;
        for (topic, waits) in answer.topics.iter_mut().zip(&waits) {
            let partitions = topic.partitions.as_mut_slice();
            if !may_flush {
                for (p, wait) in partitions.iter_mut().zip(waits) {
                    if let Some((log, end)) = wait {
                        settle(p, log.write_through(*end));
                    }
                }
            } else if let ([p], [only]) = (&mut *partitions, waits.as_slice()) {
                // Most requests write one partition: awaited as it is, without the joining's
                // allocations and polling of every partition on each wake-up.
                settle(p, acknowledge_one(only, ack).await);
            } else {
                let results =
                    futures::future::join_all(waits.iter().map(|w| acknowledge_one(w, ack))).await;
                for (p, result) in partitions.iter_mut().zip(results) {
                    settle(p, result);
                }
            }
        }
        (acks != 0).then_some(answer)
    }
}

/// A partition's answer once acknowledging it ended with `result`: its error if it failed.
fn settle(p: &mut PartitionAnswer, result: crate::Result<()>) {
    if let Err(e) = result {
        *p = failed(p.index, error_code(&e), e.to_string());
    }
}

/// Waits until one partition's records may be acknowledged ([`Log::acknowledge`]).
async fn acknowledge_one(wait: &AckWait, ack: Ack) -> crate::Result<()> {
    match wait {
        Some((log, end)) => log.acknowledge(*end, ack).await,
        None => Ok(()),
    }
}

fn failed(index: i32, code: i16, message: String) -> PartitionAnswer {
    PartitionAnswer {
        index,
        error_code: code,
        base_offset: -1,
        log_append_time_ms: -1,
        log_start_offset: -1,
        error_message: Some(message),
    }
}

fn record_error_code(e: &RecordError) -> i16 {
    match e {
        RecordError::Corrupt(_) => ResponseError::CorruptMessage.code(),
        RecordError::UnsupportedMagic(_) => ResponseError::UnsupportedForMessageFormat.code(),
        RecordError::InvalidRecord(_) => ResponseError::InvalidRecord.code(),
    }
}

/// A refused partition: its error code and message.
type Refusal = (i16, String);

/// The checks of a transactional write before the coordinator's: the request names a
/// transactional id, and every batch for the partition comes from the same producer and epoch.
/// Returns the transactional id.
fn check_transactional<'a>(
    transactional_id: Option<&'a str>,
    producer: ProducerInfo,
    decoded: &[(PreparedBatch<'_>, ProducerInfo)],
    topic: &str,
    index: i32,
) -> Result<&'a str, Refusal> {
    let Some(transactional_id) = transactional_id.filter(|t| !t.is_empty()) else {
        return Err((
            ResponseError::InvalidTxnState.code(),
            format!(
                "a transactional batch for {topic}-{index} came in a Produce request without a \
                 transactional id; set transactional.id on the producer"
            ),
        ));
    };
    let mixed = decoded.iter().any(|(_, p)| {
        p.producer_id != producer.producer_id || p.producer_epoch != producer.producer_epoch
    });
    if mixed {
        return Err((
            ResponseError::InvalidRecord.code(),
            format!(
                "the batches for {topic}-{index} come from different producers or epochs; one \
                 transactional producer writes one Produce request"
            ),
        ));
    }
    Ok(transactional_id)
}

/// Checks and appends one partition's records; returns its response and, when something was
/// appended, its log and the offset after the records (what acknowledging waits for).
fn produce_partition(
    ctx: &Ctx,
    transactional_id: Option<&str>,
    topic: &str,
    index: i32,
    records: Option<Bytes>,
) -> (PartitionAnswer, AckWait) {
    if crate::topic::is_internal(topic) {
        // Kafka's rule: only the broker's coordinators write their internal topics.
        let msg = format!(
            "topic '{topic}' is internal: only the broker writes it (commit offsets with \
             OffsetCommit or TxnOffsetCommit)"
        );
        return (
            failed(index, ResponseError::InvalidTopicException.code(), msg),
            None,
        );
    }
    let log = match ctx.broker.log(topic, index) {
        Ok(log) => log,
        Err(e) => return (failed(index, error_code(&e), e.to_string()), None),
    };
    let bytes = records.unwrap_or_default();
    let config = log.config();
    let max_uncompressed = ctx.broker.config().kafka.socket_request_max_bytes;
    let mut decoded: SmallVec<[_; 1]> = SmallVec::new();
    let mut scratch = DecodeScratch::default();
    // Every batch is checked before any is appended, so a bad one leaves the partition as it
    // was.
    for batch in records::batches(&bytes) {
        let batch = match batch {
            Ok(b) => b,
            Err(e) => return (failed(index, record_error_code(&e), e.to_string()), None),
        };
        if batch.raw.len() > config.max_message_bytes {
            let msg = format!(
                "record batch of {} bytes is larger than max.message.bytes={} of topic '{topic}'",
                batch.raw.len(),
                config.max_message_bytes
            );
            return (
                failed(index, ResponseError::MessageTooLarge.code(), msg),
                None,
            );
        }
        if batch.is_control() {
            let msg = "control batches (transaction markers) are written by the transaction \
                       coordinator only; a client may not produce them"
                .into();
            return (
                failed(index, ResponseError::InvalidRecord.code(), msg),
                None,
            );
        }
        let prepared =
            match PreparedBatch::from_kafka(&batch, &config, &mut scratch, max_uncompressed) {
                Ok(Some(prepared)) => prepared,
                Ok(None) => continue,
                Err(e) => return (failed(index, record_error_code(&e), e.to_string()), None),
            };
        let producer = ProducerInfo {
            producer_id: batch.producer_id,
            producer_epoch: batch.producer_epoch,
            base_sequence: batch.base_sequence,
            // The producer's codec is kept when the topic's `compression.type` is `producer`.
            attributes: batch.attributes
                & (attributes::TRANSACTIONAL | attributes::CONTROL | attributes::COMPRESSION),
        };
        decoded.push((prepared, producer));
    }
    let append_all = || {
        let mut first = None;
        let mut end = None;
        for (batch, producer) in &decoded {
            match log.append_prepared(batch, *producer) {
                Ok(info) => {
                    first.get_or_insert(info);
                    end = Some(info.last_offset + 1);
                }
                Err(e) => return Err((error_code(&e), e.to_string())),
            }
        }
        Ok((first, end))
    };
    let transactional = decoded
        .iter()
        .map(|(_, p)| *p)
        .find(|p| p.attributes & attributes::TRANSACTIONAL != 0);
    let appended = match transactional {
        None => append_all(),
        Some(p) => match check_transactional(transactional_id, p, &decoded, topic, index) {
            Err(refused) => Err(refused),
            Ok(txn_id) => ctx
                .broker
                .transactions()
                .append_verified(
                    txn_id,
                    p.producer_id,
                    p.producer_epoch,
                    topic,
                    index,
                    append_all,
                )
                .unwrap_or_else(|code| {
                    Err((
                        code.code(),
                        format!(
                            "{topic}-{index} is not in an open transaction of transactional \
                                 id '{txn_id}' with producer {} epoch {}: add it with \
                                 AddPartitionsToTxn first; a fenced producer must call \
                                 InitProducerId again",
                            p.producer_id, p.producer_epoch
                        ),
                    ))
                }),
        },
    };
    let (first, end) = match appended {
        Ok(done) => done,
        Err((code, message)) => return (failed(index, code, message), None),
    };
    let response = match first {
        // The log start offset as the append saw it, as Kafka reports it.
        Some(info) => PartitionAnswer {
            index,
            error_code: 0,
            base_offset: info.base_offset,
            log_append_time_ms: info.log_append_time_ms.unwrap_or(-1),
            log_start_offset: info.log_start_offset,
            error_message: None,
        },
        None => {
            let offsets = log.offsets();
            PartitionAnswer {
                index,
                error_code: 0,
                base_offset: offsets.log_end_offset,
                log_append_time_ms: -1,
                log_start_offset: offsets.log_start_offset,
                error_message: None,
            }
        }
    };
    (response, end.map(|end| (log, end)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NewTopic;
    use crate::log::BatchHeader;
    use crate::record::{Record, records_to_batch};
    use kafka_protocol::messages::produce_request::{
        PartitionProduceData, ProduceRequest, TopicProduceData,
    };

    /// A valid one-record batch whose record count is then rewritten to `count` (CRC fixed up).
    fn batch_claiming(count: i32) -> Bytes {
        let header = BatchHeader {
            base_offset: 0,
            last_offset_delta: 0,
            record_count: 1,
            first_timestamp: 1,
            max_timestamp: 1,
            producer: ProducerInfo::NONE,
        };
        let batch = records_to_batch(&[Record::new(1, Some(b"k"), Some(b"v"))]);
        let mut out = Vec::new();
        records::encode_batch(&mut out, &header, &batch).ok();
        out[57..61].copy_from_slice(&count.to_be_bytes());
        let crc = quiver_common::crc::crc32c(&out[21..]);
        out[17..21].copy_from_slice(&crc.to_be_bytes());
        Bytes::from(out)
    }

    /// A Produce of `records` to partition 0 of topic `t`.
    fn produce_to_t0(acks: i16, records: Bytes) -> ProduceRequest {
        ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(1000)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_static_str("t")))
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(records)),
                    ]),
            ])
    }

    // This test binary runs on the system allocator, not `crate::alloc::GuardedAlloc`: a
    // capacity taken from the count (2^31 rows) would abort it or commit gigabytes.
    #[tokio::test]
    async fn produce_with_a_record_count_its_bytes_cannot_hold_is_refused_without_allocating_for_it()
     {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let broker = Ctx::open_test_broker(dir.path()).await;
        broker.create_topic(NewTopic::new("t", 1)).await.ok();
        let ctx = Ctx::for_tests(broker);
        let produce = |records: Bytes| produce_to_t0(1, records);
        let Some(resp) = handle(&ctx, 9, produce(batch_claiming(i32::MAX))).await else {
            panic!("acks=1 gets a response")
        };
        let p = &resp.responses[0].partition_responses[0];
        assert_eq!(p.error_code, ResponseError::InvalidRecord.code());
        let message = p.error_message.as_ref().map(|m| m.to_string());
        assert!(
            message
                .as_deref()
                .is_some_and(|m| m.contains("batch says 2147483647 records")),
            "{message:?}"
        );
        // The partition is untouched and still takes honest batches.
        let Some(resp) = handle(&ctx, 9, produce(batch_claiming(1))).await else {
            panic!("acks=1 gets a response")
        };
        let p = &resp.responses[0].partition_responses[0];
        assert_eq!((p.error_code, p.base_offset), (0, 0));
    }

    /// Bytes in the segment files of partition `t-0` under `data`.
    fn bytes_in_segments(data: &std::path::Path) -> u64 {
        std::fs::read_dir(data.join("t-0"))
            .unwrap_or_else(|e| panic!("{e}"))
            .map(|e| e.unwrap_or_else(|e| panic!("{e}")).path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .sum()
    }

    /// Small acks=1 batches wait in the write buffer once staged; the first answer writes them
    /// all, before it is given. A single-threaded runtime that this test never yields keeps the
    /// partition's background flusher from writing them first.
    #[tokio::test(flavor = "current_thread")]
    async fn an_acks_1_answer_writes_every_batch_staged_before_it() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let broker = Ctx::open_test_broker(dir.path()).await;
        broker
            .create_topic(NewTopic::new("t", 1))
            .await
            .unwrap_or_else(|e| panic!("create: {e}"));
        let ctx = Ctx::for_tests(broker);
        let produce = |acks: i16| produce_to_t0(acks, batch_claiming(1));
        let before = bytes_in_segments(dir.path());
        // Pipelined: acks=1, acks=1, acks=0, acks=1, all staged before any is answered.
        let acks = [1, 1, 0, 1];
        let staged: Vec<StagedProduce> = acks
            .iter()
            .map(|&a| stage(&ctx, 9, produce(a).into()))
            .collect();
        assert!(staged.iter().all(|s| !s.may_wait_for_fsync()));
        assert_eq!(
            bytes_in_segments(dir.path()),
            before,
            "staged, not yet written"
        );
        let mut written = 0;
        for (i, staged) in staged.into_iter().enumerate() {
            let answer = staged.acknowledge().await;
            if i == 0 {
                // Four one-record frames of over 80 bytes each are in the file.
                written = bytes_in_segments(dir.path()) - before;
                assert!(written > 4 * 80, "{written} bytes written");
            }
            match answer {
                Some(resp) => {
                    let p = &resp.topics[0].partitions[0];
                    assert_eq!((p.error_code, p.base_offset), (0, i as i64));
                }
                None => assert_eq!(acks[i], 0, "only acks=0 goes unanswered"),
            }
        }
        assert_eq!(
            bytes_in_segments(dir.path()) - before,
            written,
            "nothing left to write"
        );
        assert!(stage(&ctx, 9, produce(-1).into()).may_wait_for_fsync());
    }
}
