//! What the `topics`, `produce` and `consume` commands need from a broker, and the backends that
//! provide it.
//!
//! Two backends implement [`Client`]: [`kafka::KafkaBackend`] talks to a running broker over the
//! Kafka protocol (`--bootstrap-server`), and [`direct::DirectClient`] opens the data directory
//! in this process (so it cannot run while `quiver server` holds the directory). [`connect`]
//! picks one from the flags; the commands are generic over the trait and do not care which.

pub mod direct;
pub mod kafka;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use arrow::record_batch::RecordBatch;
use quiver_broker::broker::ConfigChange;
use quiver_broker::{BrokerError, Isolation, NewTopic, Record};

/// How the commands reach a broker.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// A running broker to talk to over the Kafka protocol, HOST:PORT (`quiver server`'s
    /// listener, or any Kafka broker); comma-separate several to try in turn
    #[arg(
        long,
        value_name = "HOST:PORT",
        global = true,
        conflicts_with = "data_dir"
    )]
    pub bootstrap_server: Option<String>,

    /// Data directory to open in this process instead, the one `quiver server` uses
    /// (QUIVER_LOG_DIRS also sets it); only while no server has it open. Used when
    /// --bootstrap-server is not given [default: ./quiver-data]
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
}

/// Checks that `partition` is one of the `count` partitions of the existing `topic`.
fn check_partition(topic: &str, count: i32, partition: i32) -> Result<()> {
    if (0..count).contains(&partition) {
        return Ok(());
    }
    Err(BrokerError::UnknownPartition {
        topic: topic.to_owned(),
        partition,
        partitions: count,
    }
    .into())
}

/// Checks that auto-creating the missing `topic` with `count` partitions (the broker's
/// `num.partitions`) would make `partition`.
fn check_auto_created_partition(topic: &str, count: i32, partition: i32) -> Result<()> {
    if !(0..count).contains(&partition) {
        bail!(
            "topic '{topic}' does not exist, and auto-creating it (num.partitions={count}) would not \
             make partition {partition}; create it first with `quiver topics create {topic} --partitions N`"
        );
    }
    Ok(())
}

/// Picks the backend `args` choose: the Kafka protocol with `--bootstrap-server`, else the data
/// directory. Nothing is opened or connected until the first request.
pub fn connect(args: &ConnectArgs) -> Result<AnyClient> {
    Ok(match &args.bootstrap_server {
        Some(bootstrap) => AnyClient::Kafka(kafka::KafkaBackend::new(bootstrap)),
        None => AnyClient::Direct(direct::DirectClient::new(args.data_dir.as_deref())?),
    })
}

/// A partition's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    pub partition: i32,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
    /// `None` when the backend cannot tell (a broker without DescribeLogDirs).
    pub size_bytes: Option<u64>,
    /// `None` over the Kafka protocol, which does not tell.
    pub segments: Option<usize>,
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
    /// Transaction markers are never returned; with [`Isolation::ReadCommitted`] reads stop at
    /// the last stable offset and aborted transactions' records are left out.
    async fn fetch(
        &self,
        topic: &str,
        positions: &[(i32, i64)],
        max_wait: Duration,
        isolation: Isolation,
    ) -> Result<Vec<Fetched>>;

    /// Flushes and releases the broker (or the connection).
    async fn close(self) -> Result<()>;
}

/// The backend [`connect`] chose; forwards every call to it.
#[derive(Debug)]
pub enum AnyClient {
    Direct(direct::DirectClient),
    Kafka(kafka::KafkaBackend),
}

/// Calls `$call` on whichever backend `$self` holds.
macro_rules! forward {
    ($self:expr, $client:ident => $call:expr) => {
        match $self {
            AnyClient::Direct($client) => $call,
            AnyClient::Kafka($client) => $call,
        }
    };
}

impl Client for AnyClient {
    async fn create_topic(&self, topic: &NewTopic) -> Result<TopicInfo> {
        forward!(self, c => c.create_topic(topic).await)
    }

    async fn delete_topic(&self, name: &str) -> Result<()> {
        forward!(self, c => c.delete_topic(name).await)
    }

    async fn list_topics(&self) -> Result<Vec<String>> {
        forward!(self, c => c.list_topics().await)
    }

    async fn describe_topic(&self, name: &str) -> Result<TopicInfo> {
        forward!(self, c => c.describe_topic(name).await)
    }

    async fn alter_topic_config(&self, name: &str, changes: &[ConfigChange]) -> Result<()> {
        forward!(self, c => c.alter_topic_config(name, changes).await)
    }

    async fn create_partitions(&self, name: &str, total: i32) -> Result<()> {
        forward!(self, c => c.create_partitions(name, total).await)
    }

    async fn prepare_produce(&self, topic: &str, partition: Option<i32>) -> Result<()> {
        forward!(self, c => c.prepare_produce(topic, partition).await)
    }

    async fn produce(
        &self,
        topic: &str,
        partition: Option<i32>,
        records: &[Record],
    ) -> Result<Vec<i32>> {
        forward!(self, c => c.produce(topic, partition, records).await)
    }

    async fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: i32,
        timestamp_ms: i64,
    ) -> Result<Option<i64>> {
        forward!(self, c => c.offset_for_timestamp(topic, partition, timestamp_ms).await)
    }

    async fn fetch(
        &self,
        topic: &str,
        positions: &[(i32, i64)],
        max_wait: Duration,
        isolation: Isolation,
    ) -> Result<Vec<Fetched>> {
        forward!(self, c => c.fetch(topic, positions, max_wait, isolation).await)
    }

    async fn close(self) -> Result<()> {
        forward!(self, c => c.close().await)
    }
}
