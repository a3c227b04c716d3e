//! The broker's error type. Variants say who is at fault: the caller (bad topic name, unknown
//! config, oversized record, offset out of range), the environment (disk), or Quiver itself.

use std::path::PathBuf;

/// Result alias for broker operations.
pub type Result<T, E = BrokerError> = std::result::Result<T, E>;

/// Everything the broker can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A topic name that Kafka would refuse too.
    #[error("invalid topic name '{name}': {reason}")]
    InvalidTopicName { name: String, reason: String },

    /// The topic does not exist.
    #[error("unknown topic '{0}'; list topics with `quiver topics list`")]
    UnknownTopic(String),

    /// The partition does not exist in an existing topic.
    #[error("unknown partition {partition} of topic '{topic}' (it has {partitions} partitions)")]
    UnknownPartition {
        topic: String,
        partition: i32,
        partitions: i32,
    },

    /// Creating a topic that exists.
    #[error("topic '{0}' already exists")]
    TopicExists(String),

    /// Deleting, re-partitioning or reconfiguring an internal topic (`__consumer_offsets`, ...),
    /// which the broker manages itself.
    #[error("topic '{topic}' is an internal topic managed by the broker; it cannot be {action}")]
    InternalTopic { topic: String, action: &'static str },

    /// A partition count that is zero, negative, too large, or not an increase.
    #[error("invalid partition count: {0}")]
    InvalidPartitions(String),

    /// A config key or value that is not accepted.
    #[error("invalid config: {0}")]
    InvalidConfig(String),

    /// A record larger than the topic's `max.message.bytes`.
    #[error(
        "record {index} is {size} bytes, larger than max.message.bytes={max} of topic '{topic}'; \
         raise the topic's max.message.bytes or send smaller records"
    )]
    RecordTooLarge {
        topic: String,
        index: usize,
        size: usize,
        max: usize,
    },

    /// A batch that breaks the envelope contract (wrong schema, null key on a compacted topic, ...).
    #[error("invalid records: {0}")]
    InvalidRecords(String),

    /// A record timestamp outside the topic's `message.timestamp.{before,after}.max.ms`.
    #[error("invalid timestamp: {0}")]
    InvalidTimestamp(String),

    /// An idempotent producer skipped or repeated sequence numbers out of order.
    #[error(
        "out of order sequence number from producer {producer_id} on {topic}-{partition}: expected {expected}, received {received}"
    )]
    OutOfOrderSequence {
        topic: String,
        partition: i32,
        producer_id: i64,
        expected: i32,
        received: i32,
    },

    /// A producer with an old epoch (fenced by a newer instance).
    #[error(
        "producer {producer_id} has epoch {epoch}, older than the current epoch {current_epoch}; it was fenced by a newer instance"
    )]
    InvalidProducerEpoch {
        producer_id: i64,
        epoch: i16,
        current_epoch: i16,
    },

    /// The transaction coordinator refused a transactional call (the producer was fenced, the
    /// transaction is in a state that does not allow it, ...), with the Kafka error a client
    /// would get.
    #[error("transaction refused ({code:?}): {message}")]
    Transaction {
        code: kafka_protocol::error::ResponseError,
        message: String,
    },

    /// A write that does not fit the producer's transaction (Kafka's INVALID_TXN_STATE): a
    /// plain batch while its transaction is open here, or a transactional one the coordinator
    /// did not let in.
    #[error("{0}")]
    InvalidTxnState(String),

    /// A read below the log start offset or beyond the log end offset.
    #[error(
        "offset {offset} is out of range for {topic}-{partition}: valid offsets are \
         {log_start_offset}..={log_end_offset}"
    )]
    OffsetOutOfRange {
        topic: String,
        partition: i32,
        offset: i64,
        log_start_offset: i64,
        log_end_offset: i64,
    },

    /// Another process holds the data directory.
    #[error(
        "data directory {dir} is in use by {holder}; stop that process or pass another --data-dir"
    )]
    DataDirLocked { dir: PathBuf, holder: String },

    /// The broker is shutting down and takes no more work.
    #[error("the broker is shutting down")]
    ShuttingDown,

    /// Disk or file trouble, with the file it concerns.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A failed fsync (or a failed write of buffered records) took the partition offline for
    /// writes (as Kafka takes a failed log directory offline); it stays so until the broker
    /// restarts.
    #[error(
        "partition {topic}-{partition} is offline: {op} of {path} failed ({cause}), so writes \
         since the last successful fsync may not be on disk and the partition takes no more \
         writes; fix the disk (or free space on it), then restart the broker"
    )]
    PartitionOffline {
        topic: String,
        partition: i32,
        /// What failed: "fsync" or "write".
        op: &'static str,
        path: PathBuf,
        cause: String,
    },

    /// Stored data that does not decode (caught by CRC or structure checks).
    #[error("corrupt data in {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },

    /// Arrow refused a batch (a bug in Quiver if it happens on stored data that passed its CRC).
    #[error("arrow error: {0}")]
    Arrow(#[from] arrow::error::ArrowError),

    /// An invariant of Quiver's own was broken.
    #[error("internal error (a bug in Quiver): {0}")]
    Internal(String),
}

impl BrokerError {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        BrokerError::Io {
            path: path.into(),
            source,
        }
    }

    /// True when the caller's input was at fault (as opposed to the disk or Quiver).
    pub fn is_user_error(&self) -> bool {
        !matches!(
            self,
            BrokerError::Io { .. }
                | BrokerError::PartitionOffline { .. }
                | BrokerError::Corrupt { .. }
                | BrokerError::Arrow(_)
                | BrokerError::Internal(_)
                | BrokerError::ShuttingDown
        )
    }
}

/// Adds the path to `std::io::Result`s.
pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| BrokerError::io(path, e))
    }
}

impl From<quiver_common::Error> for BrokerError {
    fn from(e: quiver_common::Error) -> Self {
        match e {
            quiver_common::Error::InvalidRecords(reason) => BrokerError::InvalidRecords(reason),
        }
    }
}
