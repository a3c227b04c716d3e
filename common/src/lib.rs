//! What Quiver's broker and its Kafka client share, with no I/O: the record envelope (the one
//! Arrow schema every partition stores), the batch-level facts Kafka keeps per record batch,
//! Kafka's v2 record batches to and from envelope batches, their compression codecs, Kafka's
//! default partitioner, and the admin vocabulary (a topic to create, a config change).
//!
//! The engine and connectors can talk to an external Kafka cluster through
//! `quiver-kafka-client`, which builds on this crate without linking the broker's log or
//! coordinators.

pub mod batch;
pub mod crc;
pub mod error;
pub mod kafka;
pub mod names;
pub mod partitioner;
pub mod properties;
pub mod record;
pub mod topic;

pub use batch::{BatchHeader, ProducerInfo, attributes};
pub use error::{Error, Result};
pub use partitioner::{Partitioner, murmur2, partition_for_key};
pub use record::{
    EnvelopeBuilder, EnvelopeColumns, Header, Record, batch_to_records, envelope_schema,
    records_to_batch,
};
pub use topic::{ConfigChange, NewTopic};
