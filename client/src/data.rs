//! Records in and out: Produce, Fetch and ListOffsets, each sent to the partitions' leaders.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, TimestampMillisecondArray};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
};
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::{ApiKey, BrokerId, TransactionalId};
use kafka_protocol::protocol::StrBytes;

use quiver_common::batch::{BatchHeader, ProducerInfo, attributes};
use quiver_common::kafka::compression;
use quiver_common::kafka::records::{self, DecodeScratch};
use quiver_common::record::{EnvelopeBuilder, EnvelopeColumns, col};

use crate::transactions::AbortedTransactions;
use crate::{ApiError, ClientError, KafkaClient, Lane, Result, topic_name, versions};

/// Bytes of a record batch's offset and length fields, which precede the length they give.
const LOG_OVERHEAD: usize = 12;

/// What a broker said about records it appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceAck {
    /// The offset given to the first record.
    pub base_offset: i64,
    /// The broker's append time, when the topic uses `LogAppendTime`.
    pub log_append_time_ms: Option<i64>,
    /// Produce v5+.
    pub log_start_offset: Option<i64>,
}

/// Which records a fetch may return (Kafka's `isolation.level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IsolationLevel {
    /// Everything up to the high watermark, including records of open and aborted
    /// transactions. Kafka's default.
    #[default]
    ReadUncommitted,
    /// Only up to the last stable offset (no open transaction's records), without the records
    /// of aborted transactions.
    ReadCommitted,
}

impl IsolationLevel {
    fn code(self) -> i8 {
        match self {
            IsolationLevel::ReadUncommitted => 0,
            IsolationLevel::ReadCommitted => 1,
        }
    }
}

/// Limits of one fetch; [`FetchOptions::default`] has Kafka's consumer defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchOptions {
    /// How long the broker may wait for `min_bytes` to arrive. Default 500 ms.
    pub max_wait: Duration,
    /// Bytes the broker waits for before answering. Default 1.
    pub min_bytes: i32,
    /// Most bytes in the response (the first batch is sent whole even if larger). Default 50 MiB.
    pub max_bytes: i32,
    /// Most bytes from one partition. Default 1 MiB.
    pub partition_max_bytes: i32,
    /// Default read uncommitted.
    pub isolation_level: IsolationLevel,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            max_wait: Duration::from_millis(500),
            min_bytes: 1,
            max_bytes: 50 << 20,
            partition_max_bytes: 1 << 20,
            isolation_level: IsolationLevel::ReadUncommitted,
        }
    }
}

/// Records fetched from one partition.
#[derive(Debug, Clone)]
pub struct FetchedRecords {
    /// Envelope batches ([`quiver_common::envelope_schema`]) with each record's offset; the
    /// first record is at or after the offset asked for. Control records are left out, and so,
    /// at [`IsolationLevel::ReadCommitted`], are the records of aborted transactions.
    pub batches: Vec<RecordBatch>,
    /// Where the next fetch of this partition starts: after every batch received, including
    /// records skipped (control batches, compacted gaps).
    pub next_offset: i64,
    pub high_watermark: i64,
    /// The offset below which no transaction is open (Fetch v4+; `None` when the broker did not
    /// say). A `read_committed` fetch returns nothing at or past it.
    pub last_stable_offset: Option<i64>,
    /// Fetch v5+.
    pub log_start_offset: Option<i64>,
}

/// Which offset ListOffsets looks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The log start offset.
    Earliest,
    /// The log end offset (the next offset to be written).
    Latest,
    /// The first offset whose timestamp is at least this (ms since the epoch).
    Timestamp(i64),
    /// The offset of the record with the largest timestamp (ListOffsets v7+).
    MaxTimestamp,
}

impl OffsetSpec {
    fn timestamp(self) -> i64 {
        match self {
            OffsetSpec::Latest => -1,
            OffsetSpec::Earliest => -2,
            OffsetSpec::MaxTimestamp => -3,
            OffsetSpec::Timestamp(ms) => ms,
        }
    }
}

/// An offset ListOffsets found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListedOffset {
    pub offset: i64,
    /// The record's timestamp, for lookups by timestamp.
    pub timestamp: Option<i64>,
}

/// The errors after which a partition's leader may have moved.
fn leader_may_have_moved(e: &ApiError) -> bool {
    matches!(
        e.error,
        ResponseError::NotLeaderOrFollower
            | ResponseError::LeaderNotAvailable
            | ResponseError::UnknownTopicOrPartition
            | ResponseError::FencedLeaderEpoch
            | ResponseError::UnknownLeaderEpoch
    )
}

/// One Kafka record batch (uncompressed, no producer id) holding the rows of `records`.
fn encode_for_produce(records: &RecordBatch) -> Result<Bytes> {
    encode_produce_batch(records, ProducerInfo::NONE, compression::codec::NONE)
}

/// One Kafka record batch holding the rows of `records`, numbered from offset delta 0, from
/// `producer` (id, epoch, first sequence), its records compressed with `codec_id`.
pub(crate) fn encode_produce_batch(
    records: &RecordBatch,
    producer: ProducerInfo,
    codec_id: i16,
) -> Result<Bytes> {
    let n = records.num_rows();
    let invalid = |why: String| ClientError::InvalidArgument(format!("cannot send records: {why}"));
    if n == 0 {
        return Err(invalid("the batch is empty".into()));
    }
    let count =
        i32::try_from(n).map_err(|_| invalid(format!("{n} records are too many for one batch")))?;
    // Kafka wants offset deltas 0, 1, 2, ... whatever offsets the rows carry.
    let mut columns = records.columns().to_vec();
    if columns.is_empty() {
        return Err(invalid("the batch is not an envelope batch".into()));
    }
    columns[col::OFFSET] = Arc::new(Int64Array::from_iter_values(0..n as i64)) as ArrayRef;
    let batch =
        RecordBatch::try_new(records.schema(), columns).map_err(|e| invalid(e.to_string()))?;
    let cols = EnvelopeColumns::try_new(&batch).map_err(|e| invalid(e.to_string()))?;
    let timestamps = cols.timestamps.values();
    let header = BatchHeader {
        base_offset: 0,
        last_offset_delta: count - 1,
        record_count: count,
        first_timestamp: timestamps[0],
        max_timestamp: timestamps.iter().copied().max().unwrap_or(timestamps[0]),
        producer,
    };
    let mut out = Vec::new();
    records::encode_batch_compressed(&mut out, &header, &batch, codec_id)
        .map_err(|e| invalid(e.to_string()))?;
    Ok(Bytes::from(out))
}

/// Decodes one partition of a fetch response into envelope batches from `fetch_offset` on.
fn decode_partition(
    fetch_offset: i64,
    data: &PartitionData,
    isolation_level: IsolationLevel,
    partition_max_bytes: i32,
    uncompressed_bytes_max: usize,
) -> Result<FetchedRecords, ApiError> {
    let corrupt = |why: String| ApiError {
        error: ResponseError::CorruptMessage,
        message: Some(format!(
            "fetched records at offset {fetch_offset} do not decode: {why}"
        )),
    };
    let bytes = data.records.clone().unwrap_or_default();
    let mut rest: &[u8] = &bytes;
    let mut next_offset = fetch_offset;
    let mut batches = Vec::new();
    let mut builder = EnvelopeBuilder::default();
    let mut scratch = DecodeScratch::default();
    let mut offsets = Vec::new();
    let mut complete = 0usize;
    let mut transactions = match isolation_level {
        IsolationLevel::ReadCommitted => Some(AbortedTransactions::new(
            data.aborted_transactions
                .iter()
                .flatten()
                .map(|t| (t.producer_id.0, t.first_offset)),
        )),
        IsolationLevel::ReadUncommitted => None,
    };
    while rest.len() >= LOG_OVERHEAD {
        let length = i32::from_be_bytes([rest[8], rest[9], rest[10], rest[11]]);
        let Some(total) = usize::try_from(length).ok().map(|l| l + LOG_OVERHEAD) else {
            return Err(corrupt(format!("negative batch length {length}")));
        };
        if total > rest.len() {
            // Brokers cut the last batch short at the size limit; it comes whole next time.
            break;
        }
        let (raw, tail) = rest.split_at(total);
        rest = tail;
        complete += 1;
        let parsed = records::parse_batches(raw).map_err(|e| corrupt(e.to_string()))?;
        for batch in &parsed {
            let end = batch
                .base_offset
                .checked_add(i64::from(batch.last_offset_delta) + 1)
                .ok_or_else(|| corrupt("a batch's offsets overflow".into()))?;
            next_offset = next_offset.max(end);
            let keep = match transactions.as_mut() {
                Some(txns) => txns.keep(batch, uncompressed_bytes_max),
                None => !batch.is_control(),
            };
            if !keep {
                continue;
            }
            offsets.clear();
            records::decode_records_with_offsets(
                batch,
                &mut builder,
                &mut scratch,
                uncompressed_bytes_max,
                &mut offsets,
            )
            .map_err(|e| corrupt(e.to_string()))?;
            let decoded = builder.finish();
            debug_assert!(offsets.windows(2).all(|w| w[0] < w[1]), "offsets increase");
            let log_append_time = (batch.attributes & attributes::LOG_APPEND_TIME != 0)
                .then_some(batch.max_timestamp);
            let batch = with_offsets(decoded, &offsets, log_append_time)
                .map_err(|e| corrupt(e.to_string()))?;
            // A batch may start before the offset asked for (brokers send whole batches).
            let skip = offsets.iter().take_while(|&&o| o < fetch_offset).count();
            if skip < batch.num_rows() {
                batches.push(batch.slice(skip, batch.num_rows() - skip));
            }
        }
    }
    if complete == 0 && !rest.is_empty() {
        return Err(ApiError {
            error: ResponseError::RecordListTooLarge,
            message: Some(format!(
                "the record batch at offset {fetch_offset} is larger than the fetch size of {partition_max_bytes} bytes"
            )),
        });
    }
    Ok(FetchedRecords {
        batches,
        next_offset,
        high_watermark: data.high_watermark,
        last_stable_offset: Some(data.last_stable_offset).filter(|&o| o >= 0),
        log_start_offset: Some(data.log_start_offset).filter(|&o| o >= 0),
    })
}

/// `batch` with its offset column set to `offsets` and, for a `LogAppendTime` batch, every
/// timestamp set to the broker's append time.
fn with_offsets(
    batch: RecordBatch,
    offsets: &[i64],
    log_append_time: Option<i64>,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let mut columns = batch.columns().to_vec();
    columns[col::OFFSET] = Arc::new(Int64Array::from(offsets.to_vec())) as ArrayRef;
    if let Some(ts) = log_append_time {
        columns[col::TIMESTAMP] =
            Arc::new(TimestampMillisecondArray::from(vec![ts; batch.num_rows()]));
    }
    RecordBatch::try_new(batch.schema(), columns)
}

impl KafkaClient {
    /// Writes `records` (an envelope batch; its offsets are ignored) to one partition as one
    /// Kafka record batch, and waits for every in-sync replica (acks=all). Keep a batch under
    /// the topic's `max.message.bytes`.
    pub async fn produce(
        &self,
        topic: &str,
        partition: i32,
        records: &RecordBatch,
    ) -> Result<ProduceAck> {
        let mut results = self
            .produce_partitions(topic, &[(partition, records)])
            .await?;
        match results.pop() {
            Some((_, Ok(ack))) => Ok(ack),
            Some((_, Err(error))) => Err(ClientError::Api {
                context: format!("cannot write to {topic}-{partition}"),
                error,
            }),
            None => Err(ClientError::Protocol {
                addr: self.bootstrap.join(","),
                reason: format!("the produce response has no answer for {topic}-{partition}"),
            }),
        }
    }

    /// Writes one envelope batch to each of several partitions, one request per leader, and
    /// returns each partition's outcome in the order given. An `Err` means a leader could not
    /// be reached; partitions led by others may have been written.
    pub async fn produce_partitions(
        &self,
        topic: &str,
        batches: &[(i32, &RecordBatch)],
    ) -> Result<Vec<(i32, Result<ProduceAck, ApiError>)>> {
        let mut seen = BTreeSet::new();
        let mut encoded = Vec::with_capacity(batches.len());
        for (partition, records) in batches {
            if !seen.insert(*partition) {
                return Err(ClientError::InvalidArgument(format!(
                    "partition {partition} is given twice; send one batch per partition"
                )));
            }
            encoded.push((*partition, encode_for_produce(records)?));
        }
        self.produce_encoded(topic, &encoded, None).await
    }

    /// Sends Kafka record batches already encoded, one per partition (each partition once),
    /// one request per leader; each partition's outcome in the order given. A transactional
    /// producer's batches go with its `transactional_id`.
    pub(crate) async fn produce_encoded(
        &self,
        topic: &str,
        encoded: &[(i32, Bytes)],
        transactional_id: Option<&str>,
    ) -> Result<Vec<(i32, Result<ProduceAck, ApiError>)>> {
        let partitions: Vec<i32> = encoded.iter().map(|(p, _)| *p).collect();
        let (by_leader, failed) = self.by_leader(topic, &partitions).await?;
        let timeout_ms = self.request_timeout_ms();
        let requests = by_leader.into_iter().map(|(node, partitions)| {
            let data: Vec<PartitionProduceData> = encoded
                .iter()
                .filter(|(p, _)| partitions.contains(p))
                .map(|(p, bytes)| {
                    PartitionProduceData::default()
                        .with_index(*p)
                        .with_records(Some(bytes.clone()))
                })
                .collect();
            async move {
                let conn = self.node_connection(node).await?;
                let request = ProduceRequest::default()
                    .with_transactional_id(
                        transactional_id
                            .map(|t| TransactionalId(StrBytes::from_string(t.to_owned()))),
                    )
                    .with_acks(-1)
                    .with_timeout_ms(timeout_ms)
                    .with_topic_data(vec![
                        TopicProduceData::default()
                            .with_name(topic_name(topic))
                            .with_partition_data(data),
                    ]);
                let (_, response) = self
                    .call(
                        &conn,
                        ApiKey::Produce,
                        versions::PRODUCE,
                        self.request_timeout(),
                        |_| Ok(request),
                    )
                    .await?;
                let mut results = Vec::new();
                for t in response.responses {
                    for p in t.partition_responses {
                        let message = p.error_message.as_deref().map(str::to_owned).or_else(|| {
                            p.record_errors.first().and_then(|r| {
                                r.batch_index_error_message.as_deref().map(str::to_owned)
                            })
                        });
                        let result = match ApiError::from_code(p.error_code, message.as_deref()) {
                            Some(e) => Err(e),
                            None => Ok(ProduceAck {
                                base_offset: p.base_offset,
                                log_append_time_ms: Some(p.log_append_time_ms).filter(|&t| t >= 0),
                                log_start_offset: Some(p.log_start_offset).filter(|&o| o >= 0),
                            }),
                        };
                        results.push((p.index, result));
                    }
                }
                Ok::<_, ClientError>(results)
            }
        });
        self.gather(topic, failed, requests, &partitions).await
    }

    /// Reads `topic` from each `(partition, offset)`, one request per leader. When no partition
    /// has `min_bytes`, the broker waits up to `max_wait`. Earlier partitions are read first
    /// when the response is size-limited, so rotate the order between calls for fairness.
    pub async fn fetch(
        &self,
        topic: &str,
        positions: &[(i32, i64)],
        options: &FetchOptions,
    ) -> Result<Vec<(i32, Result<FetchedRecords, ApiError>)>> {
        let partitions: Vec<i32> = positions.iter().map(|(p, _)| *p).collect();
        let (by_leader, failed) = self.by_leader(topic, &partitions).await?;
        let max_wait_ms = options.max_wait.as_millis().min(i32::MAX as u128) as i32;
        let max_bytes = options
            .max_bytes
            .min(i32::try_from(self.config.response_bytes_max / 2).unwrap_or(i32::MAX));
        let timeout = self.request_timeout() + options.max_wait;
        let uncompressed_max = self.config.response_bytes_max;
        let requests = by_leader.into_iter().map(|(node, led)| {
            let wanted: Vec<(i32, i64)> = positions
                .iter()
                .filter(|(p, _)| led.contains(p))
                .copied()
                .collect();
            async move {
                let conn = self.node_connection_on(node, Lane::Fetch).await?;
                let request = FetchRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_max_wait_ms(max_wait_ms)
                    .with_min_bytes(options.min_bytes)
                    .with_max_bytes(max_bytes)
                    .with_isolation_level(options.isolation_level.code())
                    .with_topics(vec![
                        FetchTopic::default()
                            .with_topic(topic_name(topic))
                            .with_partitions(
                                wanted
                                    .iter()
                                    .map(|(p, offset)| {
                                        FetchPartition::default()
                                            .with_partition(*p)
                                            .with_fetch_offset(*offset)
                                            .with_partition_max_bytes(options.partition_max_bytes)
                                    })
                                    .collect(),
                            ),
                    ]);
                let (_, response) = self
                    .call(&conn, ApiKey::Fetch, versions::FETCH, timeout, |_| {
                        Ok(request)
                    })
                    .await?;
                if let Some(error) = ApiError::from_code(response.error_code, None) {
                    return Err(ClientError::Api {
                        context: format!("cannot fetch from topic '{topic}'"),
                        error,
                    });
                }
                let mut results = Vec::new();
                for t in &response.responses {
                    for data in &t.partitions {
                        let Some(&(p, offset)) =
                            wanted.iter().find(|(p, _)| *p == data.partition_index)
                        else {
                            continue;
                        };
                        let result = match ApiError::from_code(data.error_code, None) {
                            Some(e) => Err(e),
                            None => decode_partition(
                                offset,
                                data,
                                options.isolation_level,
                                options.partition_max_bytes,
                                uncompressed_max,
                            ),
                        };
                        results.push((p, result));
                    }
                }
                Ok::<_, ClientError>(results)
            }
        });
        self.gather(topic, failed, requests, &partitions).await
    }

    /// Looks up offsets of `topic`, one spec per partition. `Ok(None)` when there is no such
    /// offset (a timestamp later than every record).
    pub async fn list_offsets(
        &self,
        topic: &str,
        specs: &[(i32, OffsetSpec)],
    ) -> Result<Vec<(i32, Result<Option<ListedOffset>, ApiError>)>> {
        self.list_offsets_isolated(topic, specs, IsolationLevel::ReadUncommitted)
            .await
    }

    /// [`KafkaClient::list_offsets`] as a reader at `isolation` sees the partitions: with
    /// `ReadCommitted`, the latest offset is the last stable offset (what a `read_committed`
    /// consumer can reach, so the lag it reports is the lag that consumer has).
    pub async fn list_offsets_isolated(
        &self,
        topic: &str,
        specs: &[(i32, OffsetSpec)],
        isolation: IsolationLevel,
    ) -> Result<Vec<(i32, Result<Option<ListedOffset>, ApiError>)>> {
        let mut seen = BTreeSet::new();
        if let Some((p, _)) = specs.iter().find(|(p, _)| !seen.insert(*p)) {
            return Err(ClientError::InvalidArgument(format!(
                "partition {p} is given twice; ask one offset per partition per call"
            )));
        }
        let partitions: Vec<i32> = specs.iter().map(|(p, _)| *p).collect();
        let (by_leader, failed) = self.by_leader(topic, &partitions).await?;
        let requests = by_leader.into_iter().map(|(node, led)| {
            let wanted: Vec<(i32, OffsetSpec)> =
                specs.iter().filter(|(p, _)| led.contains(p)).copied().collect();
            async move {
                let conn = self.node_connection(node).await?;
                let version = conn.version(ApiKey::ListOffsets, versions::LIST_OFFSETS)?;
                let mut results = Vec::new();
                let mut asked = Vec::new();
                for (p, spec) in &wanted {
                    if *spec == OffsetSpec::MaxTimestamp && version < 7 {
                        results.push((
                            *p,
                            Err(ApiError {
                                error: ResponseError::UnsupportedVersion,
                                message: Some(format!(
                                    "the broker speaks ListOffsets v{version}; the largest timestamp needs v7"
                                )),
                            }),
                        ));
                    } else {
                        asked.push(
                            ListOffsetsPartition::default()
                                .with_partition_index(*p)
                                .with_timestamp(spec.timestamp()),
                        );
                    }
                }
                if asked.is_empty() {
                    return Ok(results);
                }
                let request = ListOffsetsRequest::default()
                    .with_replica_id(BrokerId(-1))
                    // v0-1 have no isolation level (and read as uncommitted).
                    .with_isolation_level(if version >= 2 { isolation.code() } else { 0 })
                    .with_topics(vec![
                        ListOffsetsTopic::default()
                            .with_name(topic_name(topic))
                            .with_partitions(asked),
                    ]);
                let (_, response) = self
                    .call(&conn, ApiKey::ListOffsets, versions::LIST_OFFSETS, self.request_timeout(), |_| {
                        Ok(request)
                    })
                    .await?;
                for t in response.topics {
                    for p in t.partitions {
                        let result = match ApiError::from_code(p.error_code, None) {
                            Some(e) => Err(e),
                            None if p.offset < 0 => Ok(None),
                            None => Ok(Some(ListedOffset {
                                offset: p.offset,
                                timestamp: Some(p.timestamp).filter(|&t| t >= 0),
                            })),
                        };
                        results.push((p.partition_index, result));
                    }
                }
                Ok::<_, ClientError>(results)
            }
        });
        self.gather(topic, failed, requests, &partitions).await
    }

    /// Waits for the per-leader `requests` of `topic` and returns their per-partition results
    /// with those of the partitions no leader was found for (`failed`), in the partition order
    /// of `order`; an `Err` when a leader was not reached. When a result says a leader may have
    /// moved, forgets the topic's leaders so that the next call looks them up again.
    pub(crate) async fn gather<T>(
        &self,
        topic: &str,
        failed: Vec<(i32, ApiError)>,
        requests: impl IntoIterator<
            Item = impl Future<Output = Result<Vec<(i32, Result<T, ApiError>)>>>,
        >,
        order: &[i32],
    ) -> Result<Vec<(i32, Result<T, ApiError>)>> {
        let mut out: Vec<(i32, Result<T, ApiError>)> =
            failed.into_iter().map(|(p, e)| (p, Err(e))).collect();
        for answered in futures::future::join_all(requests).await {
            out.extend(answered?);
        }
        if out
            .iter()
            .any(|(_, r)| r.as_ref().is_err_and(leader_may_have_moved))
        {
            self.forget_leaders(topic);
        }
        out.sort_by_key(|(p, _)| order.iter().position(|q| q == p));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_common::record::{Record, batch_to_records, records_to_batch};

    const UNCOMMITTED: IsolationLevel = IsolationLevel::ReadUncommitted;

    /// A Kafka batch of `values` at `offsets`, as a broker stores and sends it.
    fn kafka_batch(offsets: &[i64], attributes: i16) -> Vec<u8> {
        let records: Vec<Record> = offsets
            .iter()
            .map(|o| Record::new(100 + o, None, Some(format!("v{o}").as_bytes())))
            .collect();
        let batch = with_offsets(records_to_batch(&records), offsets, None)
            .unwrap_or_else(|e| panic!("{e}"));
        let header = BatchHeader {
            base_offset: offsets[0],
            last_offset_delta: (offsets[offsets.len() - 1] - offsets[0]) as i32,
            record_count: offsets.len() as i32,
            first_timestamp: 100 + offsets[0],
            max_timestamp: 999,
            producer: ProducerInfo {
                attributes,
                ..ProducerInfo::NONE
            },
        };
        let mut out = Vec::new();
        records::encode_batch(&mut out, &header, &batch).unwrap_or_else(|e| panic!("{e}"));
        out
    }

    fn partition_data(bytes: Vec<u8>) -> PartitionData {
        PartitionData::default()
            .with_high_watermark(20)
            .with_records(Some(Bytes::from(bytes)))
    }

    #[test]
    fn fetched_batches_keep_compacted_offsets_and_skip_control_and_cut_batches() {
        let mut bytes = kafka_batch(&[10, 12, 15], 0);
        bytes.extend(kafka_batch(&[16], attributes::CONTROL));
        let cut = kafka_batch(&[17, 18], 0);
        bytes.extend_from_slice(&cut[..cut.len() - 3]);
        let fetched = decode_partition(12, &partition_data(bytes), UNCOMMITTED, 1 << 20, 1 << 20)
            .unwrap_or_else(|e| panic!("{e}"));
        let got: Vec<(i64, i64)> = fetched
            .batches
            .iter()
            .flat_map(|b| batch_to_records(b).unwrap_or_default())
            .map(|r| (r.offset, r.timestamp_ms))
            .collect();
        assert_eq!(got, [(12, 112), (15, 115)]);
        assert_eq!(
            fetched.next_offset, 17,
            "past the control batch, before the cut one"
        );
        assert_eq!(fetched.high_watermark, 20);
    }

    #[test]
    fn log_append_time_batches_take_the_brokers_time() {
        let bytes = kafka_batch(&[0, 1], attributes::LOG_APPEND_TIME);
        let fetched = decode_partition(0, &partition_data(bytes), UNCOMMITTED, 1 << 20, 1 << 20)
            .unwrap_or_else(|e| panic!("{e}"));
        let times: Vec<i64> = fetched
            .batches
            .iter()
            .flat_map(|b| batch_to_records(b).unwrap_or_default())
            .map(|r| r.timestamp_ms)
            .collect();
        assert_eq!(times, [999, 999]);
    }

    #[test]
    fn a_batch_too_large_for_the_fetch_and_damage_are_errors() {
        let whole = kafka_batch(&[0, 1], 0);
        let err = decode_partition(
            0,
            &partition_data(whole[..whole.len() - 1].to_vec()),
            UNCOMMITTED,
            64,
            1 << 20,
        )
        .err()
        .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("the record batch at offset 0 is larger than the fetch size of 64 bytes")
        );
        let mut damaged = whole;
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        let err =
            decode_partition(0, &partition_data(damaged), UNCOMMITTED, 1 << 20, 1 << 20).err();
        assert_eq!(err.map(|e| e.error), Some(ResponseError::CorruptMessage));
    }

    #[test]
    fn produced_batches_number_records_from_zero() {
        let batch = with_offsets(
            records_to_batch(&[
                Record::new(5, None, Some(b"a")),
                Record::new(6, None, Some(b"b")),
            ]),
            &[40, 40],
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let bytes = encode_for_produce(&batch).unwrap_or_else(|e| panic!("{e}"));
        let parsed = records::parse_batches(&bytes).unwrap_or_default();
        assert_eq!(parsed.len(), 1);
        assert_eq!(
            (
                parsed[0].base_offset,
                parsed[0].last_offset_delta,
                parsed[0].record_count
            ),
            (0, 1, 2)
        );
        assert_eq!((parsed[0].base_timestamp, parsed[0].max_timestamp), (5, 6));
        let mut offsets = Vec::new();
        records::decode_records_with_offsets(
            &parsed[0],
            &mut EnvelopeBuilder::default(),
            &mut DecodeScratch::default(),
            1 << 20,
            &mut offsets,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(offsets, [0, 1]);
        assert!(encode_for_produce(&records_to_batch(&[])).is_err());
    }

    #[test]
    fn read_committed_drops_aborted_transactions_and_read_uncommitted_keeps_them() {
        use kafka_protocol::messages::ProducerId;
        use kafka_protocol::messages::fetch_response::AbortedTransaction;
        let data = partition_data(crate::transactions::tests::interleaved_transactions())
            .with_last_stable_offset(10)
            .with_aborted_transactions(Some(vec![
                AbortedTransaction::default()
                    .with_producer_id(ProducerId(1))
                    .with_first_offset(0),
            ]));
        let offsets = |level| {
            let fetched = decode_partition(0, &data, level, 1 << 20, 1 << 20)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                fetched.next_offset, 10,
                "past every batch, markers included"
            );
            assert_eq!(fetched.last_stable_offset, Some(10));
            fetched
                .batches
                .iter()
                .flat_map(|b| batch_to_records(b).unwrap_or_default())
                .map(|r| r.offset)
                .collect::<Vec<_>>()
        };
        assert_eq!(offsets(IsolationLevel::ReadCommitted), [2, 3, 6, 7, 9]);
        assert_eq!(offsets(UNCOMMITTED), [0, 1, 2, 3, 6, 7, 9]);
    }
}
