//! A producer's Kafka batch made ready to append, checked before anything is appended (so a bad
//! batch in a request leaves the partition untouched).
//!
//! Most batches are decoded into the envelope's Arrow columns. A small uncompressed one (a
//! producer that does not batch sends one record a request) is checked in place instead and
//! stored as the bytes it came in: the frame's Kafka layout holds exactly the producer's record
//! encoding, so decoding it into columns only to encode it back would cost most of the append.

use arrow::record_batch::RecordBatch;
use quiver_common::kafka::compression;
use quiver_common::kafka::records::{
    self as kafka_records, DecodeScratch, KafkaBatch, RecordError, RecordFacts,
};
use quiver_common::record::EnvelopeBuilder;

use super::frame::{SMALL_BATCH_BYTES, SMALL_BATCH_ROWS};
use crate::config::{LogConfig, TimestampType};
use crate::error::BrokerError;

/// A producer's batch, checked, as [`Log::append_prepared`](super::Log::append_prepared) takes
/// it.
#[derive(Debug)]
pub enum PreparedBatch<'a> {
    /// Decoded into the envelope's columns.
    Columns(RecordBatch),
    /// A small uncompressed batch whose records passed every check, kept as sent.
    Rows(SmallRows<'a>),
}

/// The records of a small uncompressed Kafka batch, checked ([`kafka_records::check_records`])
/// and found fit for its topic as it was configured when they were checked.
#[derive(Debug, Clone, Copy)]
pub struct SmallRows<'a> {
    batch: KafkaBatch<'a>,
    facts: RecordFacts,
    /// The config they were checked against.
    config: &'a LogConfig,
    /// The clock (ms since the epoch) the rows were checked against.
    checked_at: i64,
}

impl<'a> PreparedBatch<'a> {
    /// Checks every record of `batch` for a partition configured as `config`: a small
    /// uncompressed batch in place, any other by decoding it (a compressed one expands to at
    /// most `max_uncompressed` bytes). `None` for a batch with no records.
    ///
    /// `config` is best the partition's own, as [`Log::config`](super::Log::config) hands it
    /// out: the append of a small batch then stores it under that config without reading the
    /// partition's again, unless it has been replaced since.
    pub fn from_kafka(
        batch: &KafkaBatch<'a>,
        config: &'a LogConfig,
        scratch: &mut DecodeScratch,
        max_uncompressed: usize,
    ) -> Result<Option<Self>, RecordError> {
        // The clock the rows are checked against is also the append's: an idempotent
        // producer's last write time (DescribeProducers) comes from it, so that one is read
        // precisely; for others only the timestamp bounds and a time-based roll use it, which a
        // tick does not move (see `coarse_now_ms`).
        let now = if batch.producer_id >= 0 {
            crate::log::now_ms()
        } else {
            crate::log::coarse_now_ms()
        };
        if let Some(rows) = SmallRows::check(batch, config, now)? {
            return Ok(Some(PreparedBatch::Rows(rows)));
        }
        // The count is the client's; the bytes bound it (for a compressed batch the hint is low
        // and the builder grows).
        let capacity = kafka_records::records_bound(batch.record_count, batch.records.len());
        let mut builder = EnvelopeBuilder::with_capacity(capacity, batch.records.len());
        kafka_records::decode_records(batch, &mut builder, scratch, max_uncompressed)?;
        if builder.is_empty() {
            return Ok(None);
        }
        Ok(Some(PreparedBatch::Columns(builder.finish())))
    }

    /// Records in the batch.
    pub fn num_rows(&self) -> usize {
        match self {
            PreparedBatch::Columns(batch) => batch.num_rows(),
            PreparedBatch::Rows(rows) => rows.facts.count,
        }
    }
}

impl<'a> SmallRows<'a> {
    /// `batch`'s records, checked, when they may be stored as sent: an uncompressed batch of at
    /// most 8 records and 16 KiB (the frame's small-batch limits) whose records pass every check
    /// of the log under `config` at `now` ([`SmallRows::fit`]). `None` when the batch is of
    /// another kind, or one of the log's checks fails (decoding it lets the append say why).
    /// An error when a record is malformed.
    pub fn check(
        batch: &KafkaBatch<'a>,
        config: &'a LogConfig,
        now: i64,
    ) -> Result<Option<SmallRows<'a>>, RecordError> {
        // A topic that stamps its own timestamps rewrites every batch: checking one in place
        // first would only add a pass before its decoding.
        let small = batch.compression() == compression::codec::NONE
            && (1..=SMALL_BATCH_ROWS as i32).contains(&batch.record_count)
            && batch.records.len() <= SMALL_BATCH_BYTES
            && !batch.is_control()
            && config.timestamp_type == TimestampType::CreateTime;
        if !small {
            return Ok(None);
        }
        let rows = SmallRows {
            batch: *batch,
            facts: kafka_records::check_records(batch)?,
            config,
            checked_at: now,
        };
        Ok(rows.fit(config, now).then_some(rows))
    }

    /// Whether the log stores these records as they came under `config` at `now`: its checks
    /// pass (record sizes, timestamps, keys of a compacted topic), the timestamps are the
    /// producer's (`CreateTime`), and the offset deltas are the ones the log would write.
    pub fn fit(&self, config: &LogConfig, now: i64) -> bool {
        let f = &self.facts;
        let timestamps_fit = config
            .timestamp_after_max_ms
            .is_none_or(|after| f.max_timestamp <= now.saturating_add(after))
            && config
                .timestamp_before_max_ms
                .is_none_or(|before| f.min_timestamp >= now.saturating_sub(before));
        f.count > 0
            && f.offsets_in_order
            && config.timestamp_type == TimestampType::CreateTime
            && timestamps_fit
            && f.max_record_size <= config.max_message_bytes
            && !(config.cleanup_policy.compact && f.null_key)
    }

    /// The config the rows were checked against.
    pub fn config(&self) -> &'a LogConfig {
        self.config
    }

    /// The clock (ms since the epoch) the rows were checked against.
    pub fn checked_at(&self) -> i64 {
        self.checked_at
    }

    /// Records in the batch.
    pub fn count(&self) -> usize {
        self.facts.count
    }

    /// The records' encoding as the producer sent it.
    pub fn rows(&self) -> &'a [u8] {
        self.batch.records
    }

    /// The timestamp the records' timestamp deltas count from.
    pub fn base_timestamp(&self) -> i64 {
        self.batch.base_timestamp
    }

    /// What the check found.
    pub fn facts(&self) -> &RecordFacts {
        &self.facts
    }

    /// The records decoded into the envelope's columns: for an append that cannot store them as
    /// they came after all (the topic's configuration changed since they were checked).
    pub fn decode(&self) -> crate::error::Result<RecordBatch> {
        let mut builder = EnvelopeBuilder::with_capacity(self.facts.count, self.rows().len());
        kafka_records::decode_records(
            &self.batch,
            &mut builder,
            &mut DecodeScratch::default(),
            self.rows().len(),
        )
        .map_err(|e| BrokerError::InvalidRecords(e.to_string()))?;
        Ok(builder.finish())
    }
}
