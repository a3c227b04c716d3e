//! Quiver: stream processing with a bundled Kafka-compatible broker that stores partitions as
//! Apache Arrow record batches.
//!
//! This package is the `quiver` binary and a facade over the workspace's library crates, so a
//! Rust program can depend on `quiver` alone.

/// The broker: the Arrow partition log, topics and the in-process `Broker` handle.
pub use quiver_broker as broker;
/// What the broker and the Kafka client share: the record envelope, the Kafka record batch
/// codec, compression and the partitioner.
pub use quiver_common as common;
/// The engine: continuous queries on DataFusion, sources, sinks and formats.
pub use quiver_engine as engine;
/// The Kafka-Streams-style DSL (`StreamsBuilder`, `Stream`, `Table`, windows).
pub use quiver_engine::dsl;
/// The Kafka client, for any Kafka-compatible cluster.
pub use quiver_kafka_client as kafka_client;
/// Quiver SQL: the dialect, its planner and `SqlEngine`, which runs statements.
pub use quiver_sql as sql;
