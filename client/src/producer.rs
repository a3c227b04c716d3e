//! The idempotent producer: records written exactly once per partition and in order, even when
//! a request is retried after its answer was lost.
//!
//! [`IdempotentProducer::new`] gets a producer id and epoch with InitProducerId. Every batch to
//! a partition carries the partition's next sequence number (Kafka's numbering: the first
//! record's, then one per record, wrapping to 0 after `i32::MAX`). A batch whose request
//! failed in a way that may or may not have appended it (a lost connection, a timeout, a
//! retriable Kafka error) is sent again as the same bytes with the same sequence: the broker
//! appends it if it had not, and answers with the first append's offset if it had. One batch
//! per partition is in flight at a time and retries happen before the next batch of that
//! partition is sent, so a retry never reorders records. Records may be compressed with any
//! of Kafka's codecs.
//!
//! The numbering and the retries live in `BatchSender`, which the transactional producer
//! (`txn_producer`) shares.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use quiver_common::batch::ProducerInfo;
use quiver_common::kafka::compression;

use crate::data::encode_produce_batch;
use crate::{ApiError, ClientError, KafkaClient, ProduceAck, Result, versions};

/// How an [`IdempotentProducer`] writes; [`ProducerConfig::default`] documents the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerConfig {
    /// Kafka's `compression.type`: `none`, `gzip`, `snappy`, `lz4` or `zstd`. Default `none`.
    pub compression_type: String,
    /// How often one batch is sent in all before its error is returned (the first try
    /// included). Default 10.
    pub send_attempts_max: u32,
    /// Wait between tries of one batch (`retry.backoff.ms`). Default 100.
    pub retry_backoff_ms: u64,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            compression_type: "none".into(),
            send_attempts_max: 10,
            retry_backoff_ms: 100,
        }
    }
}

/// Where one partition's numbering stands.
#[derive(Debug, Default)]
pub(crate) struct PartitionSequence {
    /// The sequence of the next batch's first record.
    pub next: i32,
    /// A batch's outcome is unknown (it may have been written): reusing its sequence for other
    /// records would have the broker drop them as duplicates, so no more batches go out.
    pub uncertain: bool,
}

/// A partition's sequence, behind a lock held while its batch is in flight, so batches of a
/// partition go one at a time.
type Sequence = Arc<tokio::sync::Mutex<PartitionSequence>>;

/// An idempotent Kafka producer over a [`KafkaClient`]. Cheap to share by reference: batches
/// to different partitions go out concurrently, those to one partition in call order.
#[derive(Debug)]
pub struct IdempotentProducer {
    pub(crate) batches: BatchSender,
    producer_id: i64,
    producer_epoch: i16,
    sequences: parking_lot::Mutex<HashMap<(String, i32), Sequence>>,
}

/// Errors after which a batch may or may not have been appended, so it is sent again as is.
fn worth_retrying(error: &ClientError) -> bool {
    match error {
        ClientError::Disconnected { .. }
        | ClientError::Timeout { .. }
        | ClientError::Unreachable { .. } => true,
        ClientError::Api { error, .. } => error.is_retriable(),
        _ => false,
    }
}

/// Errors after which the broker may have appended the batch.
fn maybe_written(error: &ClientError) -> bool {
    match error {
        ClientError::Disconnected { .. } | ClientError::Timeout { .. } => true,
        ClientError::Api { error, .. } => matches!(
            error.error,
            ResponseError::RequestTimedOut | ResponseError::NotEnoughReplicasAfterAppend
        ),
        _ => false,
    }
}

/// The sequence after a batch of `count` records starting at `sequence`.
pub(crate) fn next_sequence(sequence: i32, count: usize) -> i32 {
    ((i64::from(sequence) + count as i64) % (i64::from(i32::MAX) + 1)) as i32
}

/// Encodes and sends one partition's batches under a producer id and sequence numbers, each
/// retried as the module docs say: what the idempotent and the transactional producer share.
/// The caller keeps the partition's [`PartitionSequence`] and sends one batch of a partition
/// at a time.
#[derive(Debug)]
pub(crate) struct BatchSender {
    pub(crate) client: Arc<KafkaClient>,
    codec_id: i16,
    /// Tries of one batch in all, at least 1.
    attempts_max: u32,
    backoff: Duration,
    /// Tests: the answers to lose, as if the connection dropped after the broker appended.
    #[cfg(test)]
    pub(crate) answers_to_lose: std::sync::atomic::AtomicU32,
}

impl BatchSender {
    /// A sender compressing with `codec_id`, trying each batch `attempts_max` times (at least
    /// once) with `backoff` between tries.
    pub(crate) fn new(
        client: Arc<KafkaClient>,
        codec_id: i16,
        attempts_max: u32,
        backoff: Duration,
    ) -> BatchSender {
        BatchSender {
            client,
            codec_id,
            attempts_max: attempts_max.max(1),
            backoff,
            #[cfg(test)]
            answers_to_lose: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// `records` as one Kafka record batch from `producer` (id, epoch, first sequence,
    /// attributes). An empty or malformed batch is an [`ClientError::InvalidArgument`].
    pub(crate) fn encode(
        &self,
        records: &RecordBatch,
        producer: ProducerInfo,
    ) -> Result<bytes::Bytes> {
        encode_produce_batch(records, producer, self.codec_id)
    }

    /// Sends `encoded` (made by [`BatchSender::encode`] with `sequence.next`; `rows` records)
    /// to `topic`-`partition`, acks=all, with `transactional_id` on the request when there is
    /// one. On success `sequence` moves past the batch; after a failure that may have appended
    /// it, `sequence` is marked uncertain.
    pub(crate) async fn send(
        &self,
        transactional_id: Option<&str>,
        topic: &str,
        partition: i32,
        encoded: &bytes::Bytes,
        rows: usize,
        sequence: &mut PartitionSequence,
    ) -> Result<ProduceAck> {
        debug_assert!(
            !sequence.uncertain,
            "no batch goes out after an uncertain one"
        );
        let mut attempt = 1;
        let mut written_maybe = false;
        loop {
            let outcome = self
                .send_once(transactional_id, topic, partition, encoded)
                .await;
            if let Err(e) = &outcome {
                written_maybe |= maybe_written(e);
            }
            match outcome {
                Ok(ack) => {
                    sequence.next = next_sequence(sequence.next, rows);
                    return Ok(ack);
                }
                Err(e) if worth_retrying(&e) && attempt < self.attempts_max => {
                    tracing::debug!(%topic, partition, attempt, error = %e, "retrying an idempotent batch");
                    attempt += 1;
                    tokio::time::sleep(self.backoff).await;
                }
                Err(e) => {
                    sequence.uncertain = written_maybe;
                    return Err(e);
                }
            }
        }
    }

    async fn send_once(
        &self,
        transactional_id: Option<&str>,
        topic: &str,
        partition: i32,
        encoded: &bytes::Bytes,
    ) -> Result<ProduceAck> {
        let mut results = self
            .client
            .produce_encoded(topic, &[(partition, encoded.clone())], transactional_id)
            .await?;
        #[cfg(test)]
        if self
            .answers_to_lose
            .fetch_update(
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
                |n| n.checked_sub(1),
            )
            .is_ok()
        {
            return Err(ClientError::Disconnected {
                addr: "test".into(),
                reason: "the answer was lost on purpose".into(),
            });
        }
        match results.pop() {
            Some((_, Ok(ack))) => Ok(ack),
            // An older broker's answer to a batch it already has: written once, as wanted.
            Some((_, Err(error))) if error.error == ResponseError::DuplicateSequenceNumber => {
                Ok(ProduceAck {
                    base_offset: -1,
                    log_append_time_ms: None,
                    log_start_offset: None,
                })
            }
            Some((_, Err(error))) => Err(ClientError::Api {
                context: format!("cannot write to {topic}-{partition}"),
                error,
            }),
            None => Err(ClientError::Protocol {
                addr: self.client.bootstrap.join(","),
                reason: format!("the produce response has no answer for {topic}-{partition}"),
            }),
        }
    }
}

impl IdempotentProducer {
    /// Gets a producer id for a new idempotent producer.
    pub async fn new(client: Arc<KafkaClient>, config: ProducerConfig) -> Result<Self> {
        let codec_id = compression::codec_id(&config.compression_type).ok_or_else(|| {
            ClientError::InvalidArgument(format!(
                "unknown compression.type '{}'; use none, gzip, snappy, lz4 or zstd",
                config.compression_type
            ))
        })?;
        let (producer_id, producer_epoch) = init_producer_id(&client).await?;
        Ok(IdempotentProducer {
            batches: BatchSender::new(
                client,
                codec_id,
                config.send_attempts_max,
                Duration::from_millis(config.retry_backoff_ms),
            ),
            producer_id,
            producer_epoch,
            sequences: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    /// The producer id and epoch the broker gave.
    pub fn producer_id(&self) -> (i64, i16) {
        (self.producer_id, self.producer_epoch)
    }

    /// Writes `records` (an envelope batch; its offsets are ignored) to one partition as one
    /// batch, acks=all, retrying as the module docs say. An error means the batch may not
    /// have been written. After an error that leaves that open (retries ran out), later
    /// batches to the partition fail with [`ClientError::ProducerStateUnknown`]; after that or
    /// an OUT_OF_ORDER_SEQUENCE_NUMBER, UNKNOWN_PRODUCER_ID or INVALID_PRODUCER_EPOCH, the
    /// producer's state no longer matches the broker's: make a new producer.
    pub async fn send(
        &self,
        topic: &str,
        partition: i32,
        records: &RecordBatch,
    ) -> Result<ProduceAck> {
        let sequence = self
            .sequences
            .lock()
            .entry((topic.to_owned(), partition))
            .or_default()
            .clone();
        let mut sequence = sequence.lock().await;
        if sequence.uncertain {
            return Err(ClientError::ProducerStateUnknown {
                topic: topic.to_owned(),
                partition,
            });
        }
        let producer = ProducerInfo {
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            base_sequence: sequence.next,
            attributes: 0,
        };
        let encoded = self.batches.encode(records, producer)?;
        self.batches
            .send(
                None,
                topic,
                partition,
                &encoded,
                records.num_rows(),
                &mut sequence,
            )
            .await
    }
}

/// InitProducerId without a transactional id: a fresh producer id and epoch.
async fn init_producer_id(client: &KafkaClient) -> Result<(i64, i16)> {
    let attempts = client.config.retry_attempts_max.max(1);
    let mut attempt = 1;
    loop {
        // Any broker answers for a producer without a transactional id.
        let conn = client.bootstrap_connection().await?;
        let (_, response) = client
            .call(
                &conn,
                ApiKey::InitProducerId,
                versions::INIT_PRODUCER_ID,
                client.request_timeout(),
                |_| {
                    // No transactional id: the timeout is unused, Kafka's default is sent.
                    Ok(InitProducerIdRequest::default()
                        .with_transactional_id(None)
                        .with_transaction_timeout_ms(60_000))
                },
            )
            .await?;
        match ApiError::from_code(response.error_code, None) {
            None => return Ok((response.producer_id.0, response.producer_epoch)),
            Some(e) if e.is_retriable() && attempt < attempts => {
                attempt += 1;
                client.backoff().await;
            }
            Some(error) => {
                return Err(ClientError::Api {
                    context: "cannot get a producer id".into(),
                    error,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_count_records_and_wrap_at_i32_max() {
        assert_eq!(next_sequence(0, 3), 3);
        assert_eq!(next_sequence(i32::MAX - 1, 1), i32::MAX);
        assert_eq!(next_sequence(i32::MAX, 1), 0);
        assert_eq!(next_sequence(i32::MAX - 1, 4), 2);
    }
}
