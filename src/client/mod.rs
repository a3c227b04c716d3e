//! What the `topics`, `produce` and `consume` commands need from a broker, and the backends that
//! provide it.
//!
//! Today there is one backend, [`direct::DirectClient`], which opens the data directory in this
//! process (so it cannot run while `quiver server` holds the directory). A Kafka-protocol backend
//! (`--bootstrap-server`) will implement the same [`Client`] trait and be chosen in [`connect`];
//! the commands are generic over the trait and do not change.

pub mod direct;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use arrow::record_batch::RecordBatch;
use quiver_broker::broker::ConfigChange;
use quiver_broker::{NewTopic, Record};

/// How the commands reach a broker.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// Data directory to open in this process, the one `quiver server` uses (QUIVER_LOG_DIRS
    /// also sets it). Only one process at a time may have it open [default: ./quiver-data]
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
}

/// Opens the backend `args` choose.
pub fn connect(args: &ConnectArgs) -> Result<direct::DirectClient> {
    direct::DirectClient::new(args.data_dir.as_deref())
}

/// A partition's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    pub partition: i32,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
    pub size_bytes: u64,
    pub segments: usize,
}

/// A topic as the commands show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub id: String,
    pub partitions: Vec<PartitionState>,
    /// Configs set on the topic.
    pub overrides: BTreeMap<String, String>,
    /// Every topic config with its effective value, sorted by key.
    pub effective: Vec<(String, String)>,
}

/// Records fetched from one partition.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub partition: i32,
    /// Envelope batches (see `quiver_broker::envelope_schema`); the first starts at the
    /// requested offset.
    pub batches: Vec<RecordBatch>,
    /// Where the next fetch of this partition starts.
    pub next_offset: i64,
}

/// A broker as the commands use it. Errors are for people: they say what went wrong and, where
/// it helps, what to do.
///
/// Callers use one client at a time from one task, and call [`Client::close`] last, also after
/// an error, so that what was written is flushed.
pub trait Client {
    /// Creates a topic; `partitions: None` takes the broker's `num.partitions`.
    async fn create_topic(&self, topic: &NewTopic) -> Result<TopicInfo>;

    /// Deletes a topic and its data.
    async fn delete_topic(&self, name: &str) -> Result<()>;

    /// Names of all topics, sorted.
    async fn list_topics(&self) -> Result<Vec<String>>;

    async fn describe_topic(&self, name: &str) -> Result<TopicInfo>;

    /// Applies all `changes` or none.
    async fn alter_topic_config(&self, name: &str, changes: &[ConfigChange]) -> Result<()>;

    /// Raises the partition count to `total`.
    async fn create_partitions(&self, name: &str, total: i32) -> Result<()>;

    /// Checks, before any input is read, that records can be sent to `topic` (and `partition`):
    /// the name is valid, the broker is reachable, the partition exists or will once the topic
    /// is auto-created. Creates nothing.
    async fn prepare_produce(&self, topic: &str, partition: Option<i32>) -> Result<()>;

    /// Writes records, to `partition` or else partitioned by key like Kafka's default
    /// partitioner; creates a missing topic when the broker auto-creates topics. Returns the
    /// partitions written. When this returns, the records are acknowledged.
    async fn produce(
        &self,
        topic: &str,
        partition: Option<i32>,
        records: &[Record],
    ) -> Result<Vec<i32>>;

    /// The earliest offset with a timestamp at least `timestamp_ms`, or `None` when every record
    /// is older.
    async fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: i32,
        timestamp_ms: i64,
    ) -> Result<Option<i64>>;

    /// Reads from each `(partition, offset)`. When no partition has records, waits up to
    /// `max_wait` for one to get some. Partitions earlier in `positions` are read first when the
    /// fetch is limited in size, so callers rotate the order for fairness.
    async fn fetch(
        &self,
        topic: &str,
        positions: &[(i32, i64)],
        max_wait: Duration,
    ) -> Result<Vec<Fetched>>;

    /// Flushes and releases the broker (or the connection).
    async fn close(self) -> Result<()>;
}
