//! The facts Kafka keeps per record batch rather than per record: offsets, timestamps, the
//! producer's id, epoch and sequence, and the attribute bits. The broker stores them in each
//! frame's header; the Kafka codec reads and writes them in v2 batch headers.

/// Kafka's batch attribute bits that Quiver keeps.
pub mod attributes {
    /// The codec id (see `kafka::compression::codec`): what the batch is sent to consumers with.
    pub const COMPRESSION: i16 = 0x07;
    pub const LOG_APPEND_TIME: i16 = 1 << 3;
    pub const TRANSACTIONAL: i16 = 1 << 4;
    pub const CONTROL: i16 = 1 << 5;
}

/// The producer facts Kafka keeps per batch. `NONE` for records without an idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerInfo {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    /// Kafka's attribute bits (see [`attributes`]). The compression bits name the codec the
    /// stored batch is sent with (the topic's `compression.type`, or the producer's).
    pub attributes: i16,
}

impl ProducerInfo {
    /// No producer id, epoch or sequence (Kafka's -1s).
    pub const NONE: ProducerInfo = ProducerInfo {
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        attributes: 0,
    };
}

impl Default for ProducerInfo {
    fn default() -> Self {
        Self::NONE
    }
}

/// The batch-level facts of a stored frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub last_offset_delta: i32,
    pub record_count: i32,
    pub first_timestamp: i64,
    pub max_timestamp: i64,
    pub producer: ProducerInfo,
}

impl BatchHeader {
    /// The last offset this batch covers (after compaction, rows may be missing before it).
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// The offset after this batch.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }
}
