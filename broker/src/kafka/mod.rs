//! The Kafka wire protocol server. The `kafka-protocol` crate encodes and decodes messages;
//! this module owns connections (read-ahead, in-order responses), limits, version negotiation,
//! and one handler per API key (`handlers/`). Record batches are converted to and from Arrow
//! by `records` without going through per-record structs.

pub mod handlers;
pub mod limits;
pub(crate) mod schema;
pub mod server;

// Shared with the Kafka client (`quiver-kafka-client`); re-exported at their old paths.
pub use quiver_common::kafka::{compression, records};

pub use server::{KafkaServer, LocalServer};
