//! Quiver's broker: the Arrow partition log, topics, and the in-process [`Broker`] handle that the
//! Kafka protocol server, the engine, SQL and connectors all use.
//!
//! Every partition is a sequence of Arrow record batches with one envelope schema
//! ([`record::envelope_schema`]); batch-level producer facts travel in [`ProducerInfo`].
//!
//! Other crates append with [`Broker::append`] (or in transactions, through
//! [`Broker::transactional_producer`]) and read through [`Broker::partition`] (a
//! [`PartitionHandle`]) or a whole topic through [`Broker::topic_reader`] (a [`TopicReader`]); the storage modules under [`log`] (frames, segments, indexes, the
//! file layer, the cleaner) are private to this crate. [`Log`] itself stays public so the
//! benches can measure the partition log without a broker around it.

pub mod alloc;
pub mod broker;
pub mod config;
pub mod error;
pub mod group;
pub mod kafka;
pub mod log;
pub mod partition;
pub mod reader;
pub mod topic;
pub mod txn;

// Shared with the Kafka client; re-exported at their old paths.
pub use quiver_common::{partitioner, record};

pub use broker::{Broker, NewTopic, PartitionInfo, TopicDescription};
pub use config::{BrokerConfig, CleanupPolicy, CompressionType, LogConfig, TimestampType};
pub use error::{BrokerError, Result};
pub use log::{
    Ack, AppendInfo, BatchHeader, CleanStats, FetchBatch, Isolation, KafkaRows, Log, LogOffsets,
    ProducerInfo, ReadResult, Shutdown, StoredBatch, now_ms,
};
pub use partition::PartitionHandle;
pub use partitioner::{Partitioner, murmur2, partition_for_key};
pub use reader::{
    PartitionProgress, PartitionSplit, ReaderBatch, ReaderOptions, StartAt, TopicReader,
};
pub use record::{
    EnvelopeBuilder, EnvelopeColumns, Header, Record, batch_to_records, envelope_schema,
    records_to_batch,
};
pub use txn::TransactionalProducer;
