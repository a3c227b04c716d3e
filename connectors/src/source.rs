//! The source contract, and the runner that writes a source connector's records into a topic
//! exactly once.
//!
//! A source task reads something outside Kafka (files, a generator) and says, with each batch
//! of records, how far it has read: Kafka Connect's *source partition* (a JSON object naming
//! what is read, such as `{"filename": "/data/a.json"}`) and *source offset* (`{"position":
//! 1024}`). The runner ([`run_source`]):
//!
//! 1. takes over each task's transactional id, `connect-<name>-<task>`, on the cluster, which
//!    fences an older instance of the task and aborts what it left open;
//! 2. reads the offsets topic (`offsets.storage.topic`, default `connect-offsets`, compacted)
//!    to its end with `read_committed`, and gives each task the offsets stored for this
//!    connector in [`SourceTask::open`];
//! 3. polls the task, and every `transaction.boundary.interval.ms` writes what it got, and the
//!    offsets that go with it, in one transaction: records into the connector's topic, offsets
//!    into the offsets topic, keyed `["<name>", <source partition>]` as Kafka Connect keys
//!    them;
//! 4. on a stop, commits what it has; a bounded task (a file source without `follow`) that says
//!    it has finished ends after a last commit.
//!
//! A crash anywhere aborts the open transaction: its records are never seen by `read_committed`
//! consumers, and the restarted task resumes from the offsets committed with the records before
//! them. So every record reaches the topic exactly once, as Kafka Connect's exactly-once source
//! support (KIP-618) gives.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::array::Array;
use async_trait::async_trait;
use quiver_broker::PartitionSplit;
use quiver_common::topic::NewTopic;
use quiver_common::{Record, partition_for_key, records_to_batch};
use quiver_engine::checkpoint::{Cluster, Transaction};
use quiver_engine::{Format, KafkaSource, KafkaType, Source, StartFrom, TopicSource};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{ConnectorClass, ConnectorConfig, Key};
use crate::datagen::DataGenConfig;
use crate::error::{ConnectError, Result};
use crate::file_source::FileSourceConfig;
use crate::runner::{BOOTSTRAP, CLASS, NAME, TASKS, TOLERANCE};

/// Where a source was, by source partition: the canonical JSON text of the partition, and its
/// offset.
pub type SourceOffsets = BTreeMap<String, Value>;

/// What a poll of a [`SourceTask`] gave.
#[derive(Debug, Default)]
pub struct SourceBatch {
    /// Records for the connector's topic, in order.
    pub records: Vec<Record>,
    /// How far the task has read once these records are written: source partition and source
    /// offset (a later entry for a partition replaces an earlier one).
    pub offsets: Vec<(Value, Value)>,
    /// The source has ended (a bounded source): nothing more will come.
    pub finished: bool,
}

/// A source task (see the module docs for the order of calls).
#[async_trait]
pub trait SourceTask: Send + Debug {
    /// A short description for status output (`files /data/*.json`).
    fn describe(&self) -> String;

    /// Resumes from the offsets this connector committed before (empty on a first start).
    async fn open(&mut self, committed: &SourceOffsets) -> Result<()>;

    /// Records that are ready, waiting at most about `max_wait` for some.
    async fn poll(&mut self, max_wait: Duration) -> Result<SourceBatch>;
}

/// The canonical text of a source partition (object keys sorted, as `serde_json` keeps them).
pub fn partition_key(partition: &Value) -> String {
    partition.to_string()
}

pub const OFFSETS_TOPIC: Key = Key {
    name: "offsets.storage.topic",
    default: Some("connect-offsets"),
    doc: "the compacted topic source offsets are committed to, in the records' transaction",
};
pub const BOUNDARY: Key = Key {
    name: "transaction.boundary.interval.ms",
    default: Some("1000"),
    doc: "how often a source task commits its records and offsets (one transaction each time)",
};
pub const PARTITIONS: Key = Key {
    name: "topic.creation.default.partitions",
    default: Some("1"),
    doc: "partitions of the connector's topic when it does not exist and is created",
};

/// The keys every source connector takes.
pub const COMMON_KEYS: &[Key] = &[
    NAME,
    CLASS,
    TASKS,
    TOLERANCE,
    BOOTSTRAP,
    OFFSETS_TOPIC,
    BOUNDARY,
    PARTITIONS,
];

/// The buffered bytes at which a task commits before its interval is up.
const BUFFER_MAX_BYTES: usize = 8 << 20;

/// What a source connector runs.
#[derive(Debug, Clone)]
pub enum SourceKind {
    DataGen(DataGenConfig),
    File(FileSourceConfig),
}

/// A source connector's config, checked (nothing is contacted yet).
#[derive(Debug, Clone)]
pub struct SourceConnector {
    pub config: ConnectorConfig,
    pub kind: SourceKind,
    /// The topic its records go to.
    pub topic: String,
    pub tasks: u32,
    pub offsets_topic: String,
    pub boundary: Duration,
    pub partitions: i32,
    pub tolerate_errors: bool,
    pub bootstrap: Option<String>,
}

impl SourceConnector {
    /// Checks every key and value of `config`.
    pub fn from_config(config: ConnectorConfig) -> Result<SourceConnector> {
        config.check_keys(&crate::runner::known_keys(config.class))?;
        let tolerate_errors =
            config.choice(&TOLERANCE, &["none", "all"])?.as_deref() == Some("all");
        let (kind, topic) = match config.class {
            ConnectorClass::DataGen => {
                let c = DataGenConfig::from_config(&config)?;
                let topic = c.topic.clone();
                (SourceKind::DataGen(c), topic)
            }
            ConnectorClass::FileSource => {
                let c = FileSourceConfig::from_config(&config, tolerate_errors)?;
                let topic = c.topic.clone();
                (SourceKind::File(c), topic)
            }
            ConnectorClass::ParquetSink => {
                return Err(ConnectError::config(format!(
                    "{}: connector '{}' is a sink, not a source",
                    config.origin, config.name
                )));
            }
        };
        let tasks = config.positive(&TASKS)?.unwrap_or(1);
        let tasks = u32::try_from(tasks)
            .ok()
            .filter(|t| *t <= 1024)
            .ok_or_else(|| config.invalid(TASKS.name, &tasks.to_string(), "at most 1024"))?;
        let boundary = config.millis(&BOUNDARY)?.unwrap_or(Duration::from_secs(1));
        if boundary > Duration::from_secs(300) {
            return Err(config.invalid(
                BOUNDARY.name,
                &boundary.as_millis().to_string(),
                "at most 300000 (a transaction stays open that long, and brokers abort \
                 transactions open past transaction.max.timeout.ms)",
            ));
        }
        let partitions = config.positive(&PARTITIONS)?.unwrap_or(1);
        let partitions = i32::try_from(partitions)
            .ok()
            .filter(|p| *p <= 10_000)
            .ok_or_else(|| {
                config.invalid(PARTITIONS.name, &partitions.to_string(), "at most 10000")
            })?;
        Ok(SourceConnector {
            offsets_topic: config
                .value(&OFFSETS_TOPIC)
                .unwrap_or("connect-offsets")
                .to_owned(),
            bootstrap: config.value(&BOOTSTRAP).map(String::from),
            kind,
            topic,
            tasks,
            boundary,
            partitions,
            tolerate_errors,
            config,
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// What it reads, for messages: `datagen (nexmark)`, `files /data/*.json`.
    pub fn describe(&self) -> String {
        match &self.kind {
            SourceKind::DataGen(c) => c.describe(),
            SourceKind::File(c) => c.describe(),
        }
    }

    fn task(&self, split: PartitionSplit) -> Box<dyn SourceTask> {
        match &self.kind {
            SourceKind::DataGen(c) => Box::new(c.task(split)),
            SourceKind::File(c) => Box::new(c.task(split)),
        }
    }
}

/// A running source connector's counters.
#[derive(Debug, Default)]
pub struct SourceStats {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub transactions: AtomicU64,
}

/// Runs `connector` against `cluster` until `stop` turns true (then every task commits what
/// it has), every task has finished, or a task fails (then the others stop too, and the first
/// error is returned).
pub async fn run_source(
    connector: Arc<SourceConnector>,
    cluster: Cluster,
    stop: watch::Receiver<bool>,
    stats: Arc<SourceStats>,
) -> Result<()> {
    ensure_topic(
        &cluster,
        NewTopic::new(&connector.topic, connector.partitions),
    )
    .await?;
    ensure_topic(
        &cluster,
        NewTopic::new(&connector.offsets_topic, 1).with_config("cleanup.policy", "compact"),
    )
    .await?;
    // Fence every older instance of the tasks first, so what they left open is aborted before
    // the offsets are read.
    let mut transactions = Vec::with_capacity(connector.tasks as usize);
    for index in 0..connector.tasks {
        let id = format!("connect-{}-{index}", connector.name());
        // Long enough for a slow commit, within brokers' transaction.max.timeout.ms (15 min).
        let timeout = (connector.boundary * 3).max(Duration::from_secs(60));
        transactions.push(cluster.transaction(&id, timeout).await?);
    }
    let committed = read_offsets(&cluster, &connector.offsets_topic, connector.name()).await?;
    let (stop_all, stop_tasks) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for (index, txn) in (0..connector.tasks).zip(transactions) {
        let mut task = connector.task(PartitionSplit {
            index,
            count: connector.tasks,
        });
        task.open(&committed).await?;
        tasks.spawn(run_task(SourceRun {
            connector: connector.clone(),
            cluster: cluster.clone(),
            txn,
            task,
            stop: stop_tasks.clone(),
            stats: stats.clone(),
            round_robin: index as usize,
        }));
    }
    crate::runner::supervise(tasks, stop, stop_all).await
}

/// Creates `new` unless it exists.
async fn ensure_topic(cluster: &Cluster, new: NewTopic) -> Result<()> {
    match cluster {
        Cluster::Local(broker) => {
            if !broker.topic_exists(&new.name)
                && let Err(e) = broker.create_topic(new.clone()).await
                && !broker.topic_exists(&new.name)
            {
                return Err(e.into());
            }
        }
        Cluster::Remote(kafka) => {
            if kafka.partition_count(&new.name).await.is_ok() {
                return Ok(());
            }
            let created = kafka
                .client()
                .create_topics(std::slice::from_ref(&new), false)
                .await
                .map_err(quiver_engine::EngineError::from)?;
            for (name, result) in created {
                if let Err(e) = result
                    && kafka.partition_count(&name).await.is_err()
                {
                    return Err(ConnectError::NoTopic(format!(
                        "cannot create the topic '{name}' on {}: {e}",
                        cluster.describe()
                    )));
                }
            }
        }
    }
    Ok(())
}

/// The offsets `connector` committed, read from `topic` to its end (`read_committed`).
async fn read_offsets(cluster: &Cluster, topic: &str, connector: &str) -> Result<SourceOffsets> {
    let key = Format::kafka("key", KafkaType::String);
    let value = Format::kafka("value", KafkaType::String);
    let (source, ends): (Box<dyn Source>, BTreeMap<i32, i64>) = match cluster {
        Cluster::Local(broker) => {
            let mut ends = BTreeMap::new();
            for p in 0..broker.partition_count(topic)? {
                ends.insert(p, broker.offsets(topic, p)?.high_watermark);
            }
            let source =
                TopicSource::new(broker, topic, key, value)?.with_start(StartFrom::Earliest);
            (Box::new(source), ends)
        }
        Cluster::Remote(kafka) => {
            let count = kafka.partition_count(topic).await?;
            let specs: Vec<(i32, quiver_kafka_client::OffsetSpec)> = (0..count)
                .map(|p| (p, quiver_kafka_client::OffsetSpec::Latest))
                .collect();
            let mut ends = BTreeMap::new();
            for (p, listed) in kafka
                .client()
                .list_offsets(topic, &specs)
                .await
                .map_err(quiver_engine::EngineError::from)?
            {
                let listed = listed.map_err(|e| {
                    ConnectError::Engine(quiver_engine::EngineError::config(format!(
                        "cannot read the end of {topic}-{p}: {e}"
                    )))
                })?;
                ends.insert(p, listed.map_or(0, |o| o.offset));
            }
            let source = KafkaSource::new(kafka, topic, key, value)
                .await?
                .with_start(StartFrom::Earliest);
            (Box::new(source), ends)
        }
    };
    let mut out = SourceOffsets::new();
    let mut reader = source.open(PartitionSplit { index: 0, count: 1 }).await?;
    // Another connector's open transaction holds read_committed readers back until it ends
    // (at most its transaction timeout).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let positions = reader.positions();
        let caught_up = ends
            .iter()
            .all(|(p, end)| positions.get(p).is_some_and(|at| at >= end) || *end == 0);
        if caught_up {
            break;
        }
        if Instant::now() >= deadline {
            return Err(ConnectError::Engine(quiver_engine::EngineError::config(
                format!(
                    "the offsets topic '{topic}' could not be read to its end in 2 minutes; \
                     a transaction on it stays open"
                ),
            )));
        }
        let poll = reader.poll(Duration::from_millis(200)).await?;
        for batch in poll.batches {
            let (Some(keys), Some(values)) = (
                batch
                    .column_by_name("key")
                    .and_then(|c| c.as_any().downcast_ref::<arrow::array::StringArray>()),
                batch
                    .column_by_name("value")
                    .and_then(|c| c.as_any().downcast_ref::<arrow::array::StringArray>()),
            ) else {
                continue;
            };
            for row in 0..batch.num_rows() {
                if keys.is_null(row) {
                    continue;
                }
                // Kafka Connect's key: ["<connector>", <source partition>].
                let Ok(Value::Array(key)) = serde_json::from_str::<Value>(keys.value(row)) else {
                    continue;
                };
                let [Value::String(name), partition] = key.as_slice() else {
                    continue;
                };
                if name != connector {
                    continue;
                }
                let offset = if values.is_null(row) {
                    None
                } else {
                    serde_json::from_str::<Value>(values.value(row)).ok()
                };
                match offset {
                    Some(o) => out.insert(partition_key(partition), o),
                    None => out.remove(&partition_key(partition)),
                };
            }
        }
    }
    Ok(out)
}

struct SourceRun {
    connector: Arc<SourceConnector>,
    cluster: Cluster,
    txn: Transaction,
    task: Box<dyn SourceTask>,
    stop: watch::Receiver<bool>,
    stats: Arc<SourceStats>,
    /// The partition the next keyless records go to.
    round_robin: usize,
}

async fn run_task(mut t: SourceRun) -> Result<()> {
    let mut records: Vec<Record> = Vec::new();
    let mut bytes = 0usize;
    let mut offsets: BTreeMap<String, (Value, Value)> = BTreeMap::new();
    let mut since = Instant::now();
    loop {
        if *t.stop.borrow() {
            break;
        }
        let wait = t
            .connector
            .boundary
            .saturating_sub(since.elapsed())
            .min(Duration::from_millis(200));
        let poll = tokio::select! {
            poll = t.task.poll(wait) => poll?,
            _ = t.stop.changed() => break,
        };
        for r in &poll.records {
            bytes += r.key.as_ref().map_or(0, |k| k.len())
                + r.value.as_ref().map_or(0, |v| v.len())
                + 16;
        }
        records.extend(poll.records);
        for (partition, offset) in poll.offsets {
            offsets.insert(partition_key(&partition), (partition, offset));
        }
        if poll.finished {
            // Finished: the last records are visible to readers when the connector ends.
            return commit(&mut t, records, offsets, true).await;
        }
        if since.elapsed() >= t.connector.boundary || bytes >= BUFFER_MAX_BYTES {
            commit(
                &mut t,
                std::mem::take(&mut records),
                std::mem::take(&mut offsets),
                false,
            )
            .await?;
            bytes = 0;
            since = Instant::now();
        }
    }
    commit(&mut t, records, offsets, true).await
}

/// Writes `records` and `offsets` in one transaction, and commits it; with `last`, returns
/// once readers see the result.
async fn commit(
    t: &mut SourceRun,
    records: Vec<Record>,
    offsets: BTreeMap<String, (Value, Value)>,
    last: bool,
) -> Result<()> {
    if records.is_empty() && offsets.is_empty() {
        return Ok(());
    }
    let topic = t.connector.topic.clone();
    let partitions = partition_count(&t.cluster, &topic).await?;
    let mut by_partition: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
    let written = records.len() as u64;
    let mut bytes = 0u64;
    for r in records {
        bytes += r.value.as_ref().map_or(0, |v| v.len() as u64);
        let p = match &r.key {
            Some(k) => partition_for_key(k, partitions),
            None => {
                t.round_robin = t.round_robin.wrapping_add(1);
                (t.round_robin % partitions.max(1) as usize) as i32
            }
        };
        by_partition.entry(p).or_default().push(r);
    }
    for (p, rs) in &by_partition {
        t.txn.append(&topic, *p, &records_to_batch(rs)).await?;
    }
    if !offsets.is_empty() {
        let offsets_partitions = partition_count(&t.cluster, &t.connector.offsets_topic).await?;
        let now = quiver_broker::now_ms();
        let mut by_partition: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
        for (partition, offset) in offsets.into_values() {
            let key = Value::Array(vec![
                Value::String(t.connector.name().to_owned()),
                partition,
            ])
            .to_string();
            let value = offset.to_string();
            let p = partition_for_key(key.as_bytes(), offsets_partitions);
            by_partition.entry(p).or_default().push(Record::new(
                now,
                Some(key.as_bytes()),
                Some(value.as_bytes()),
            ));
        }
        for (p, rs) in &by_partition {
            t.txn
                .append(&t.connector.offsets_topic, *p, &records_to_batch(rs))
                .await?;
        }
    }
    t.txn.commit(last).await?;
    t.stats.records.fetch_add(written, Ordering::Relaxed);
    t.stats.bytes.fetch_add(bytes, Ordering::Relaxed);
    t.stats.transactions.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

async fn partition_count(cluster: &Cluster, topic: &str) -> Result<i32> {
    Ok(match cluster {
        Cluster::Local(broker) => broker.partition_count(topic)?,
        Cluster::Remote(kafka) => kafka.partition_count(topic).await?,
    })
}
