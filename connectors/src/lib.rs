//! Quiver's connectors: streams of events into files that any analytics engine reads.
//!
//! - [`sink`]: the contract between a connector's runner and its sink, and how offsets are
//!   committed only once what they cover is durable;
//! - [`parquet`]: the Parquet sink, to any object store ([`store`]), in Hive-style partitioned
//!   directories ([`partitioner`]), exactly once;
//! - [`config`]: connector config files in Kafka Connect's shapes (`.properties`, JSON) and
//!   TOML, every key checked;
//! - [`runner`]: runs a sink connector's tasks against the in-process broker or any
//!   Kafka-compatible cluster;
//! - [`source`]: the source contract, and how a source's records and offsets are committed in
//!   one transaction; the sources: [`datagen`] (generated records, Nexmark) and
//!   [`file_source`] (lines of files, plain, JSON or CSV);
//! - [`worker`]: the connectors of one process, added, paused, resumed and deleted while the
//!   others run, with Kafka Connect's status.

pub mod config;
pub mod datagen;
pub mod error;
pub mod file_source;
pub mod formats;
pub mod parquet;
pub mod partitioner;
pub mod runner;
pub mod sink;
pub mod source;
pub mod store;
pub mod worker;

pub use config::{ConnectorClass, ConnectorConfig};
pub use error::{ConnectError, Result};
pub use parquet::{ParquetSink, ParquetSinkConfig};
pub use runner::{Connector, Progress, SinkConnector, Status, run};
pub use sink::{Commit, Committed, Sink};
pub use source::{SourceBatch, SourceConnector, SourceTask, run_source};
pub use worker::{Refusal, Worker};
