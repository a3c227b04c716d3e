//! Running a sink connector: its tasks read their share of the topics' partitions through the
//! engine's sources (the in-process broker's log, or any Kafka-compatible cluster), hand the
//! records to their sink, and commit the positions the sink says are durable to the
//! connector's consumer group, `connect-<name>` (see [`crate::sink`] for the contract).
//!
//! `tasks.max` tasks split the partitions: on the in-process broker partition `p` goes to task
//! `p % tasks`; on a Kafka-compatible cluster every task of every process running the
//! connector is a member of its group, which assigns the partitions (see [`run`]). Records
//! that do not decode stop the connector with `errors.tolerance=none` (the default, as in Kafka
//! Connect); with `all` they are skipped, logged, and written to
//! `errors.deadletterqueue.topic.name` if set.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use quiver_broker::PartitionSplit;
use quiver_broker::group::OffsetCommitEntry;
use quiver_common::{Record, partition_for_key, records_to_batch};
use quiver_engine::checkpoint::Cluster;
use quiver_engine::format::BadRecord;
use quiver_engine::kafka::KafkaCluster;
use quiver_engine::{EngineError, KafkaSource, Source, SourceReader, TopicSource};
use quiver_kafka_client::{ClientConfig, GroupMembership, KafkaClient, MembershipConfig};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{ConnectorClass, ConnectorConfig, Key};
use crate::error::{ConnectError, Result};
use crate::formats::{self, Decoding};
use crate::parquet::{self, ParquetSink, ParquetSinkConfig, SinkStats};
use crate::partitioner;
use crate::sink::{Commit, Committed, Sink};
use crate::source::{SourceConnector, SourceStats, run_source};
use crate::{datagen, file_source, source, store};

pub const NAME: Key = Key {
    name: "name",
    default: None,
    doc: "the connector's name; its consumer group is connect-<name>",
};
pub const CLASS: Key = Key {
    name: "connector.class",
    default: None,
    doc: "which connector: ParquetSink (or S3Sink)",
};
pub const TASKS: Key = Key {
    name: "tasks.max",
    default: Some("1"),
    doc: "how many tasks split the partitions",
};
pub const TOPICS: Key = Key {
    name: "topics",
    default: None,
    doc: "the topics to read, comma-separated",
};
pub const TOPICS_REGEX: Key = Key {
    name: "topics.regex",
    default: None,
    doc: "a regular expression the names of the topics to read match (instead of topics)",
};
pub const TOLERANCE: Key = Key {
    name: "errors.tolerance",
    default: Some("none"),
    doc: "none: a record that does not decode stops the connector; all: it is skipped",
};
pub const DEAD_LETTER: Key = Key {
    name: "errors.deadletterqueue.topic.name",
    default: None,
    doc: "with errors.tolerance=all, the topic skipped records are written to",
};
pub const BOOTSTRAP: Key = Key {
    name: "bootstrap.servers",
    default: None,
    doc: "read from this Kafka-compatible cluster instead of the one quiver connect is given",
};

/// The keys every sink connector takes.
pub const COMMON_KEYS: &[Key] = &[
    NAME,
    CLASS,
    TASKS,
    TOPICS,
    TOPICS_REGEX,
    TOLERANCE,
    DEAD_LETTER,
    BOOTSTRAP,
    SESSION_TIMEOUT,
    HEARTBEAT_INTERVAL,
];

/// Every key a connector class takes.
pub fn known_keys(class: ConnectorClass) -> Vec<Key> {
    match class {
        ConnectorClass::ParquetSink => [
            COMMON_KEYS,
            formats::KEYS,
            store::KEYS,
            partitioner::KEYS,
            parquet::KEYS,
        ]
        .concat(),
        ConnectorClass::DataGen => [source::COMMON_KEYS, datagen::KEYS].concat(),
        ConnectorClass::FileSource => [source::COMMON_KEYS, file_source::KEYS].concat(),
    }
}

/// A connector of any class, checked.
#[derive(Debug, Clone)]
pub enum Connector {
    Sink(Box<SinkConnector>),
    Source(Box<SourceConnector>),
}

impl Connector {
    /// Checks every key and value of `config`.
    pub fn from_config(config: ConnectorConfig) -> Result<Connector> {
        Ok(if config.class.is_source() {
            Connector::Source(Box::new(SourceConnector::from_config(config)?))
        } else {
            Connector::Sink(Box::new(SinkConnector::from_config(config)?))
        })
    }

    pub fn config(&self) -> &ConnectorConfig {
        match self {
            Connector::Sink(c) => &c.config,
            Connector::Source(c) => &c.config,
        }
    }

    pub fn name(&self) -> &str {
        &self.config().name
    }

    /// The cluster its config names, if any.
    pub fn bootstrap(&self) -> Option<&str> {
        match self {
            Connector::Sink(c) => c.bootstrap.as_deref(),
            Connector::Source(c) => c.bootstrap.as_deref(),
        }
    }

    /// What it moves where: `topics orders to file:///lake`, `files /data/*.json to topic
    /// events`.
    pub fn describe(&self) -> String {
        match self {
            Connector::Sink(c) => {
                let topics = match &c.topics {
                    Topics::List(l) => format!("topics {}", l.join(", ")),
                    Topics::Regex(r) => format!(
                        "topics matching {}",
                        r.as_str().trim_start_matches("^(?:").trim_end_matches(")$")
                    ),
                };
                format!("{topics} to {}", c.sink.location.describe)
            }
            Connector::Source(c) => format!("{} to topic {}", c.describe(), c.topic),
        }
    }

    /// Contacts what it writes to outside Kafka (a sink's store) to check it is usable.
    pub async fn check(&self) -> Result<()> {
        match self {
            Connector::Sink(c) => c.sink.location.check().await,
            Connector::Source(_) => Ok(()),
        }
    }

    /// Runs it (see [`run`] and [`crate::source::run_source`]).
    pub async fn run(
        self: Arc<Self>,
        cluster: Cluster,
        stop: watch::Receiver<bool>,
        status: Status,
    ) -> Result<()> {
        match &*self {
            Connector::Sink(c) => run(Arc::new((**c).clone()), cluster, stop, status).await,
            Connector::Source(c) => {
                *status.cluster.lock() = Some(cluster.clone());
                let stats = status.source_stats();
                run_source(Arc::new((**c).clone()), cluster, stop, stats).await
            }
        }
    }
}

/// Which topics a connector reads.
#[derive(Debug, Clone)]
pub enum Topics {
    List(Vec<String>),
    Regex(regex::Regex),
}

/// A sink connector's config, checked (nothing is contacted yet).
#[derive(Debug, Clone)]
pub struct SinkConnector {
    pub config: ConnectorConfig,
    pub sink: ParquetSinkConfig,
    pub topics: Topics,
    pub tasks: u32,
    pub tolerate_errors: bool,
    pub dead_letter_topic: Option<String>,
    pub decoding: Decoding,
    pub bootstrap: Option<String>,
    /// On a Kafka-compatible cluster, each task's group session timeout and heartbeat
    /// interval.
    pub session_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
}

impl SinkConnector {
    /// Checks every key and value of `config`.
    pub fn from_config(config: ConnectorConfig) -> Result<SinkConnector> {
        config.check_keys(&known_keys(config.class))?;
        let topics = match (config.get(TOPICS.name), config.get(TOPICS_REGEX.name)) {
            (Some(_), Some(_)) => {
                return Err(ConnectError::config(format!(
                    "{}: give either topics or topics.regex, not both",
                    config.origin
                )));
            }
            (None, None) => {
                return Err(ConnectError::config(format!(
                    "{}: the key 'topics' is missing for connector '{}': name the topics to read \
                     (or give topics.regex)",
                    config.origin, config.name
                )));
            }
            (Some(_), None) => Topics::List(config.list(&TOPICS)),
            (None, Some(re)) => Topics::Regex(
                regex::Regex::new(&format!("^(?:{re})$"))
                    .map_err(|e| config.invalid(TOPICS_REGEX.name, re, &e.to_string()))?,
            ),
        };
        let tasks = config.positive(&TASKS)?.unwrap_or(1);
        let tasks = u32::try_from(tasks)
            .ok()
            .filter(|t| *t <= 1024)
            .ok_or_else(|| config.invalid(TASKS.name, &tasks.to_string(), "at most 1024"))?;
        let tolerate_errors =
            config.choice(&TOLERANCE, &["none", "all"])?.as_deref() == Some("all");
        let dead_letter_topic = config.value(&DEAD_LETTER).map(String::from);
        if dead_letter_topic.is_some() && !tolerate_errors {
            return Err(config.invalid(
                DEAD_LETTER.name,
                dead_letter_topic.as_deref().unwrap_or_default(),
                "a dead letter queue needs errors.tolerance=all (with none, a bad record stops \
                 the connector)",
            ));
        }
        let session_timeout_ms = config.positive(&SESSION_TIMEOUT)?.unwrap_or(10_000);
        let heartbeat_interval_ms = config.positive(&HEARTBEAT_INTERVAL)?.unwrap_or(3_000);
        if session_timeout_ms > i32::MAX as u64 {
            return Err(config.invalid(
                SESSION_TIMEOUT.name,
                &session_timeout_ms.to_string(),
                "at most 2147483647",
            ));
        }
        if heartbeat_interval_ms >= session_timeout_ms {
            return Err(config.invalid(
                HEARTBEAT_INTERVAL.name,
                &heartbeat_interval_ms.to_string(),
                &format!(
                    "must be below {}={session_timeout_ms}",
                    SESSION_TIMEOUT.name
                ),
            ));
        }
        Ok(SinkConnector {
            session_timeout_ms,
            heartbeat_interval_ms,
            sink: ParquetSinkConfig::from_config(&config)?,
            decoding: Decoding::from_config(&config)?,
            bootstrap: config.value(&BOOTSTRAP).map(String::from),
            config,
            topics,
            tasks,
            tolerate_errors,
            dead_letter_topic,
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The consumer group its offsets are committed to.
    pub fn group(&self) -> String {
        format!("connect-{}", self.config.name)
    }

    /// The topics it reads on `cluster` now.
    pub async fn resolve_topics(&self, cluster: &Cluster) -> Result<Vec<String>> {
        let names: Vec<String> = match cluster {
            Cluster::Local(broker) => broker.list_topics(),
            Cluster::Remote(c) => c
                .client()
                .metadata(None, false)
                .await
                .map_err(quiver_engine::EngineError::from)?
                .topics
                .into_iter()
                .filter(|t| t.error.is_none())
                .map(|t| t.name)
                .collect(),
        };
        match &self.topics {
            Topics::List(list) => {
                for t in list {
                    if !names.contains(t) {
                        return Err(ConnectError::NoTopic(format!(
                            "connector '{}': the topic '{t}' does not exist on {}; create it \
                             first (quiver topics create {t})",
                            self.config.name,
                            cluster.describe()
                        )));
                    }
                }
                Ok(list.clone())
            }
            Topics::Regex(re) => {
                let mut out: Vec<String> = names
                    .into_iter()
                    .filter(|n| !n.starts_with("__") && re.is_match(n))
                    .collect();
                out.sort();
                if out.is_empty() {
                    return Err(ConnectError::NoTopic(format!(
                        "connector '{}': no topic on {} matches topics.regex '{}'",
                        self.config.name,
                        cluster.describe(),
                        re.as_str()
                            .trim_start_matches("^(?:")
                            .trim_end_matches(")$")
                    )));
                }
                Ok(out)
            }
        }
    }

    async fn source(&self, cluster: &Cluster, topic: &str) -> Result<Box<dyn Source>> {
        let d = &self.decoding;
        Ok(match cluster {
            Cluster::Local(broker) => {
                let mut s = TopicSource::new(broker, topic, d.key.clone(), d.value.clone())?;
                if let Some(c) = &d.time_column {
                    s = s.with_time_column(c, d.key.clone(), d.value.clone())?;
                }
                Box::new(s)
            }
            Cluster::Remote(kafka) => {
                let mut s = KafkaSource::new(kafka, topic, d.key.clone(), d.value.clone()).await?;
                if let Some(c) = &d.time_column {
                    s = s.with_time_column(c, d.key.clone(), d.value.clone())?;
                }
                Box::new(s)
            }
        })
    }
}

/// A running connector's counters, for status and progress output.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub records: u64,
    pub files: u64,
    pub bytes: u64,
    pub open_files: u64,
    /// Records not yet committed: each partition's end less its committed offset. On a remote
    /// cluster, the ends are what the tasks' last fetches saw, over the partitions this
    /// process's tasks own; none before the first fetch.
    pub lag: Option<i64>,
    /// A source: records and bytes are what it has committed to its topic, in this many
    /// transactions.
    pub source_transactions: Option<u64>,
}

/// Topic partitions, as `(topic, partition)`.
type Partitions = Vec<(String, i32)>;

/// A handle on a running connector's counters.
#[derive(Debug, Clone, Default)]
pub struct Status {
    stats: Arc<parking_lot::Mutex<Vec<Arc<SinkStats>>>>,
    committed: Arc<parking_lot::Mutex<BTreeMap<(String, i32), i64>>>,
    /// Partitions' ends as a remote cluster's last fetches reported them.
    ends: Arc<parking_lot::Mutex<BTreeMap<(String, i32), i64>>>,
    /// Each task's partitions, by task index.
    assigned: Arc<parking_lot::Mutex<BTreeMap<u32, Partitions>>>,
    cluster: Arc<parking_lot::Mutex<Option<Cluster>>>,
    source: Arc<parking_lot::Mutex<Option<Arc<SourceStats>>>>,
}

impl Status {
    fn source_stats(&self) -> Arc<SourceStats> {
        self.source
            .lock()
            .get_or_insert_with(Default::default)
            .clone()
    }

    /// Each sink task's partitions now (`topic-partition`), by task index; a task that has
    /// none (more tasks than partitions, or not yet joined) is absent or empty.
    pub fn assigned(&self) -> BTreeMap<u32, Vec<String>> {
        self.assigned
            .lock()
            .iter()
            .map(|(task, owned)| {
                let names = owned.iter().map(|(t, p)| format!("{t}-{p}")).collect();
                (*task, names)
            })
            .collect()
    }

    pub fn progress(&self) -> Progress {
        let mut p = Progress::default();
        if let Some(s) = self.source.lock().as_ref() {
            p.records = s.records.load(Ordering::Relaxed);
            p.bytes = s.bytes.load(Ordering::Relaxed);
            p.source_transactions = Some(s.transactions.load(Ordering::Relaxed));
            return p;
        }
        for s in self.stats.lock().iter() {
            p.records += s.records.load(Ordering::Relaxed);
            p.files += s.files.load(Ordering::Relaxed);
            p.bytes += s.bytes.load(Ordering::Relaxed);
            p.open_files += s.open_files.load(Ordering::Relaxed);
        }
        if let Some(Cluster::Local(broker)) = self.cluster.lock().as_ref() {
            let committed = self.committed.lock();
            let mut lag = 0;
            for ((topic, partition), offset) in committed.iter() {
                if let Ok(o) = broker.offsets(topic, *partition) {
                    lag += (o.high_watermark - offset).max(0);
                }
            }
            p.lag = Some(lag);
        } else {
            // A remote cluster: its ends as the tasks' last fetches saw them, against the
            // offsets committed (partitions with both).
            let committed = self.committed.lock();
            let ends = self.ends.lock();
            let mut lag = None;
            for (key, end) in ends.iter() {
                if let Some(offset) = committed.get(key) {
                    *lag.get_or_insert(0) += (end - offset).max(0);
                }
            }
            p.lag = lag;
        }
        p
    }
}

/// Runs `connector` against `cluster` until `stop` turns true (then every task closes its
/// files and commits) or a task fails (then the others stop too, and the first error is
/// returned).
///
/// On the in-process broker the tasks split the partitions among themselves (partition `p` to
/// task `p % tasks.max`): the process owns the data directory, so no other process runs the
/// connector. On a Kafka-compatible cluster every task is a member of the connector's
/// consumer group instead, so the tasks of every process that runs the connector share the
/// partitions, as Kafka Connect's distributed workers do.
pub async fn run(
    connector: Arc<SinkConnector>,
    cluster: Cluster,
    stop: watch::Receiver<bool>,
    status: Status,
) -> Result<()> {
    let topics = connector.resolve_topics(&cluster).await?;
    let mut sources = Vec::with_capacity(topics.len());
    for t in &topics {
        sources.push((
            t.clone(),
            Arc::<dyn Source>::from(connector.source(&cluster, t).await?),
        ));
    }
    // Check the store once before the tasks start, so a bad endpoint or bucket is one error.
    connector.sink.location.check().await?;
    *status.cluster.lock() = Some(cluster.clone());
    let (stop_all, stop_tasks) = watch::channel(false);
    let mut tasks = JoinSet::new();
    match &cluster {
        Cluster::Remote(kafka) => {
            for index in 0..connector.tasks {
                let stats = Arc::<SinkStats>::default();
                status.stats.lock().push(stats.clone());
                tasks.spawn(run_member(Member {
                    connector: connector.clone(),
                    kafka: kafka.clone(),
                    cluster: cluster.clone(),
                    sources: sources.clone(),
                    index,
                    stats,
                    stop: stop_tasks.clone(),
                    status: status.clone(),
                }));
            }
        }
        Cluster::Local(broker) => {
            let group = connector.group();
            let committed = committed_offsets(&cluster, &group, &topics).await?;
            let mut counts = BTreeMap::new();
            {
                let mut c = status.committed.lock();
                for (k, v) in &committed {
                    c.insert(k.clone(), v.offset);
                }
                for t in &topics {
                    let count = broker.partition_count(t)?;
                    counts.insert(t.clone(), count);
                    // Partitions never committed count from their start.
                    for p in 0..count {
                        if let Ok(o) = broker.offsets(t, p) {
                            c.entry((t.clone(), p)).or_insert(o.log_start_offset);
                        }
                    }
                }
            }
            for index in 0..connector.tasks {
                let split = PartitionSplit {
                    index,
                    count: connector.tasks,
                };
                let sink = ParquetSink::new(connector.sink.clone());
                status.stats.lock().push(sink.stats());
                let owned: Vec<(String, i32)> = counts
                    .iter()
                    .flat_map(|(t, count)| {
                        (0..*count)
                            .filter(|p| split.contains(*p))
                            .map(|p| (t.clone(), p))
                    })
                    .collect();
                status.assigned.lock().insert(index, owned.clone());
                let mine: BTreeMap<(String, i32), Committed> = committed
                    .iter()
                    .filter(|((_, p), _)| split.contains(*p))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let session = Session {
                    connector: connector.clone(),
                    schemas: schemas_of(&sources),
                    cluster: cluster.clone(),
                    committer: Committer::Group {
                        cluster: cluster.clone(),
                        group: group.clone(),
                    },
                    stop: stop_tasks.clone(),
                    status: status.clone(),
                };
                let sources = sources.clone();
                tasks.spawn(async move {
                    let mut readers = Vec::with_capacity(sources.len());
                    for (topic, source) in &sources {
                        let positions = positions_of(&mine, topic);
                        readers.push((topic.clone(), source.open_at(split, &positions).await?));
                    }
                    session.run(sink, &owned, &mine, readers).await?;
                    Ok(())
                });
            }
        }
    }
    supervise(tasks, stop, stop_all).await
}

fn schemas_of(sources: &[(String, Arc<dyn Source>)]) -> Vec<(String, SchemaRef)> {
    sources
        .iter()
        .map(|(topic, s)| (topic.clone(), s.schema()))
        .collect()
}

/// Each partition of `topic`'s committed offset.
fn positions_of(committed: &BTreeMap<(String, i32), Committed>, topic: &str) -> BTreeMap<i32, i64> {
    committed
        .iter()
        .filter(|((t, _), _)| t == topic)
        .map(|((_, p), c)| (*p, c.offset))
        .collect()
}

/// Waits for a connector's `tasks`: when `stop` turns true, or one of them fails, tells every
/// task to stop (through `stop_all`) and waits for the rest; the first error, if any.
pub(crate) async fn supervise(
    mut tasks: JoinSet<Result<()>>,
    mut stop: watch::Receiver<bool>,
    stop_all: watch::Sender<bool>,
) -> Result<()> {
    let mut first_error = None;
    loop {
        tokio::select! {
            done = tasks.join_next() => {
                let Some(done) = done else { break };
                let result = done.unwrap_or_else(|e| {
                    Err(ConnectError::Record(format!("a task of the connector failed: {e}")))
                });
                if let Err(e) = result {
                    if first_error.is_none() {
                        first_error = Some(e);
                    }
                    stop_all.send_replace(true);
                }
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    stop_all.send_replace(true);
                }
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The group's committed offsets for `topics`, once no transaction holds them.
async fn committed_offsets(
    cluster: &Cluster,
    group: &str,
    topics: &[String],
) -> Result<BTreeMap<(String, i32), Committed>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(offsets) = cluster.committed(group, topics).await? {
            return Ok(offsets
                .into_iter()
                .map(|(k, (offset, metadata))| (k, Committed { offset, metadata }))
                .collect());
        }
        if Instant::now() >= deadline {
            return Err(ConnectError::config(format!(
                "the offsets of group '{group}' stay held by an open transaction; is another \
                 process using that group?"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How long a task may go without a heartbeat before the group gives its partitions to the
/// others (Kafka Connect's worker default), and the heartbeat interval.
pub const SESSION_TIMEOUT: Key = Key {
    name: "consumer.override.session.timeout.ms",
    default: Some("10000"),
    doc: "on a Kafka-compatible cluster: how long a task may go silent (a crashed process) \
          before the other members of the connector's group take its partitions",
};
pub const HEARTBEAT_INTERVAL: Key = Key {
    name: "consumer.override.heartbeat.interval.ms",
    default: Some("3000"),
    doc: "on a Kafka-compatible cluster: how often each task tells the group it is alive \
          (below consumer.override.session.timeout.ms)",
};
/// How long the group waits for every member to rejoin in a rebalance: a task closes its
/// files (uploads complete) within it.
const REBALANCE_TIMEOUT_MS: u64 = 60_000;

/// One task of a connector on a Kafka-compatible cluster: a member of the connector's group.
struct Member {
    connector: Arc<SinkConnector>,
    kafka: KafkaCluster,
    cluster: Cluster,
    sources: Vec<(String, Arc<dyn Source>)>,
    index: u32,
    stats: Arc<SinkStats>,
    stop: watch::Receiver<bool>,
    status: Status,
}

/// Runs a task as a member of the connector's group `connect-<name>`: it sinks the partitions
/// the group assigns it, and when the group rebalances (a process started, stopped or died)
/// closes its files, commits, rejoins and carries on with its new share. Its commits carry
/// its generation, so a member the group has moved past cannot commit over the new owner of
/// a partition.
///
/// A member that misses heartbeats for the session timeout is taken out of the group while
/// it may still be writing (a paused process): it learns it lost its partitions on its next
/// heartbeat or commit and then drops its open files instead of completing them. A file it
/// completed in between has the name the new owner's file from the same offset gets; the
/// new owner's file replaces it when the two roll at the same record, as count, size and
/// event-time rolls do. Only a wall-clock or memory-pressure roll in that window can leave
/// the zombie's shorter file in place of the owner's (the same window Kafka Connect's S3 sink
/// has).
async fn run_member(mut m: Member) -> Result<()> {
    let topics: Vec<String> = m.sources.iter().map(|(t, _)| t.clone()).collect();
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    let mut config = MembershipConfig::new(m.connector.group(), &topic_refs);
    config.session_timeout_ms = m.connector.session_timeout_ms;
    config.heartbeat_interval_ms = m.connector.heartbeat_interval_ms;
    config.rebalance_timeout_ms = REBALANCE_TIMEOUT_MS;
    let client_config = ClientConfig {
        client_id: format!("{}-{}", m.connector.group(), m.index),
        ..ClientConfig::default()
    };
    let client = KafkaClient::connect(m.kafka.bootstrap(), client_config)
        .await
        .map_err(EngineError::from)?;
    let mut no_listener = ();
    let joined = tokio::select! {
        joined = GroupMembership::join(Arc::new(client), config, &mut no_listener) => joined,
        _ = m.stop.wait_for(|stop| *stop) => return Ok(()),
    };
    let membership = Arc::new(joined.map_err(EngineError::from)?);
    let session = Session {
        connector: m.connector.clone(),
        schemas: schemas_of(&m.sources),
        cluster: m.cluster.clone(),
        committer: Committer::Member(membership.clone()),
        stop: m.stop.clone(),
        status: m.status.clone(),
    };
    loop {
        let assignment = membership.assignment();
        tracing::info!(
            connector = %m.connector.name(),
            task = m.index,
            generation = membership.generation_id(),
            partitions = ?assignment.iter().map(|tp| format!("{}-{}", tp.topic, tp.partition)).collect::<Vec<_>>(),
            "task assigned"
        );
        let owned: Vec<(String, i32)> = assignment
            .iter()
            .map(|tp| (tp.topic.clone(), tp.partition))
            .collect();
        let mut committed = BTreeMap::new();
        let offsets = if assignment.is_empty() {
            Vec::new()
        } else {
            membership
                .committed(&assignment)
                .await
                .map_err(EngineError::from)?
        };
        for c in offsets {
            if !owned.contains(&(c.topic.clone(), c.partition)) {
                continue;
            }
            if let Some(error) = c.error {
                return Err(ConnectError::Engine(EngineError::config(format!(
                    "cannot read the offset group '{}' committed for {}-{}: {error}",
                    m.connector.group(),
                    c.topic,
                    c.partition
                ))));
            }
            if let Some(offset) = c.offset {
                committed.insert(
                    (c.topic, c.partition),
                    Committed {
                        offset,
                        metadata: c.metadata.unwrap_or_default(),
                    },
                );
            }
        }
        {
            // Partitions this task gave up are another member's now: their lag is not ours.
            let previously = m.status.assigned.lock().insert(m.index, owned.clone());
            let mut c = m.status.committed.lock();
            let mut ends = m.status.ends.lock();
            for gone in previously.iter().flatten().filter(|k| !owned.contains(k)) {
                c.remove(gone);
                ends.remove(gone);
            }
            for (k, v) in &committed {
                c.insert(k.clone(), v.offset);
            }
        }
        let mut readers = Vec::new();
        for (topic, source) in &m.sources {
            let partitions: Vec<i32> = owned
                .iter()
                .filter(|(t, _)| t == topic)
                .map(|(_, p)| *p)
                .collect();
            if !partitions.is_empty() {
                let positions = positions_of(&committed, topic);
                readers.push((
                    topic.clone(),
                    source.open_partitions(&partitions, &positions).await?,
                ));
            }
        }
        let sink = ParquetSink::new(m.connector.sink.clone()).with_stats(m.stats.clone());
        match session.run(sink, &owned, &committed, readers).await? {
            Ended::Stopped => {
                membership.leave(&mut ()).await.map_err(EngineError::from)?;
                return Ok(());
            }
            Ended::Rebalance => {
                let rejoined = tokio::select! {
                    rejoined = membership.poll(&mut no_listener) => rejoined,
                    _ = m.stop.wait_for(|stop| *stop) => return Ok(()),
                };
                rejoined.map_err(EngineError::from)?;
            }
        }
    }
}

/// Where a task commits its positions.
enum Committer {
    /// Straight to the group, from outside it (the in-process broker).
    Group { cluster: Cluster, group: String },
    /// As a member of the group, in its generation.
    Member(Arc<GroupMembership>),
}

/// Why a [`Session`] ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Stopped,
    /// The group is rebalancing: the task must rejoin.
    Rebalance,
}

/// What a task needs to sink its partitions until it stops or its group rebalances.
struct Session {
    connector: Arc<SinkConnector>,
    /// Each topic's schema.
    schemas: Vec<(String, SchemaRef)>,
    cluster: Cluster,
    committer: Committer,
    stop: watch::Receiver<bool>,
    status: Status,
}

impl Session {
    /// Sinks what `readers` read into `sink` (opened for `owned` and what was `committed`
    /// for them), committing what the sink says is durable, until a stop (files closed and
    /// committed) or a rebalance (files closed and committed while the member may still
    /// commit, or dropped when it lost its partitions).
    async fn run(
        &self,
        mut sink: ParquetSink,
        owned: &[(String, i32)],
        committed: &BTreeMap<(String, i32), Committed>,
        readers: Vec<(String, Box<dyn SourceReader>)>,
    ) -> Result<Ended> {
        sink.open(&self.schemas, owned, committed).await?;
        let mut stop = self.stop.clone();
        let membership = match &self.committer {
            Committer::Member(m) => Some(m.clone()),
            Committer::Group { .. } => None,
        };
        let rebalance = async {
            match &membership {
                Some(m) => m.rebalance_signal().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(rebalance);
        let wait = Duration::from_millis(200);
        let mut last_tick = Instant::now();
        let mut bad_seen = 0u64;
        // Each reader polls in a task of its own, one poll ahead of the sink, so that the next
        // records are read and decoded while the sink encodes the last ones: the two halves of
        // a sink's work run on two cores. A poll comes with the positions after it, and the
        // sink takes polls in order, so it never learns of a position before its records.
        // The tasks end with the session (the set aborts them when dropped).
        let topics: Vec<String> = readers.iter().map(|(t, _)| t.clone()).collect();
        let (polled, mut polls) = tokio::sync::mpsc::channel::<PollAhead>(readers.len().max(1));
        let mut pollers = JoinSet::new();
        for (index, (_, mut reader)) in readers.into_iter().enumerate() {
            let polled = polled.clone();
            pollers.spawn(async move {
                loop {
                    let poll = reader.poll(wait).await.map(|poll| Polled {
                        index,
                        poll,
                        positions: reader.positions(),
                        ends: reader.ends(),
                    });
                    let failed = poll.is_err();
                    if polled.send(poll).await.is_err() || failed {
                        return;
                    }
                }
            });
        }
        drop(polled);
        let ended = 'session: loop {
            if *stop.borrow() {
                break Ended::Stopped;
            }
            if membership.as_ref().is_some_and(|m| m.rebalance_needed()) {
                break Ended::Rebalance;
            }
            if topics.is_empty() {
                tokio::select! {
                    _ = stop.changed() => {}
                    _ = &mut rebalance => {}
                }
                continue;
            }
            let next = tokio::select! {
                next = polls.recv() => next,
                _ = stop.changed() => continue 'session,
                _ = &mut rebalance => continue 'session,
            };
            let Some(next) = next else {
                return Err(ConnectError::Record(
                    "every reader of the sink's topics ended".into(),
                ));
            };
            let Polled {
                index,
                poll,
                positions,
                ends,
            } = next?;
            let topic = &topics[index];
            for batch in poll.batches {
                sink.write(topic, batch).await?;
                // Commit what rolled before the next write: see the Parquet sink's docs
                // on exactly-once for why no write may wait for the next poll.
                let commits = sink.prepare().await?;
                if !self.commit(&commits).await? {
                    break 'session Ended::Rebalance;
                }
                sink.committed(&commits);
            }
            if !poll.bad.is_empty() {
                bad_seen += poll.bad.len() as u64;
                skip_bad(&self.connector, &self.cluster, topic, &poll.bad, bad_seen).await?;
            }
            for (partition, next) in positions {
                sink.read_up_to(topic, partition, next);
            }
            if !ends.is_empty() {
                let mut known = self.status.ends.lock();
                for (partition, end) in ends {
                    known.insert((topic.clone(), partition), end);
                }
            }
            if last_tick.elapsed() >= Duration::from_millis(500) {
                last_tick = Instant::now();
                sink.tick().await?;
            }
            let commits = sink.prepare().await?;
            if !self.commit(&commits).await? {
                break Ended::Rebalance;
            }
            sink.committed(&commits);
        };
        // Nothing more is read: the readers' tasks end here.
        drop(pollers);
        drop(polls);
        if membership.as_ref().is_some_and(|m| m.partitions_lost()) {
            // Another member may own them already: complete nothing, commit nothing.
            tracing::warn!(
                connector = %self.connector.name(),
                "a task lost its partitions to the group without a chance to commit; its open \
                 files are dropped and their records are read again by the new owners"
            );
            return Ok(Ended::Rebalance);
        }
        let commits = sink.close().await?;
        if !self.commit(&commits).await? {
            tracing::warn!(
                connector = %self.connector.name(),
                "the group moved on before a task committed its last files; their records are \
                 read again by the partitions' new owners, whose files replace them"
            );
        }
        Ok(ended)
    }

    /// Commits `commits`; false when the group no longer takes this member's commits (it must
    /// rejoin, and must not tell the sink they are committed).
    async fn commit(&self, commits: &[Commit]) -> Result<bool> {
        if commits.is_empty() {
            return Ok(true);
        }
        match &self.committer {
            Committer::Group { cluster, group } => {
                let entries: Vec<OffsetCommitEntry> = commits
                    .iter()
                    .map(|c| OffsetCommitEntry {
                        topic: c.topic.clone(),
                        partition: c.partition,
                        offset: c.offset,
                        leader_epoch: -1,
                        metadata: c.metadata.clone(),
                    })
                    .collect();
                cluster.commit_offsets(group, &entries).await?;
            }
            Committer::Member(membership) => {
                let offsets: Vec<(&str, i32, i64, &str)> = commits
                    .iter()
                    .map(|c| (c.topic.as_str(), c.partition, c.offset, c.metadata.as_str()))
                    .collect();
                let results = membership
                    .commit_with_metadata(&offsets)
                    .await
                    .map_err(EngineError::from)?;
                for (topic, partition, result) in results {
                    if let Err(error) = result {
                        if membership.rebalance_needed() {
                            return Ok(false);
                        }
                        return Err(ConnectError::Engine(EngineError::config(format!(
                            "cannot commit the offset of {topic}-{partition} to group '{}': \
                             {error}",
                            membership.group_id()
                        ))));
                    }
                }
            }
        }
        let mut committed = self.status.committed.lock();
        for c in commits {
            committed.insert((c.topic.clone(), c.partition), c.offset);
        }
        Ok(true)
    }
}

/// Records that did not decode: the connector stops (errors.tolerance=none), or they are
/// logged and go to the dead letter queue.
/// A reader task's poll: the reader's index, what it read, and its positions and the
/// partitions' ends after it.
struct Polled {
    index: usize,
    poll: quiver_engine::source::SourcePoll,
    positions: BTreeMap<i32, i64>,
    ends: BTreeMap<i32, i64>,
}

type PollAhead = std::result::Result<Polled, EngineError>;

async fn skip_bad(
    connector: &SinkConnector,
    cluster: &Cluster,
    topic: &str,
    bad: &[BadRecord],
    seen: u64,
) -> Result<()> {
    let Some(first) = bad.first() else {
        return Ok(());
    };
    if !connector.tolerate_errors {
        return Err(ConnectError::Record(format!(
            "connector '{}': the record at {topic}-{} offset {} does not decode: {}; set \
             errors.tolerance=all to skip such records (and errors.deadletterqueue.topic.name \
             to keep them)",
            connector.name(),
            first.partition,
            first.offset,
            first.reason
        )));
    }
    // Log the first few, then one in a thousand.
    if seen <= 10 || seen.is_multiple_of(1000) {
        tracing::warn!(
            connector = %connector.name(),
            topic = %topic,
            partition = first.partition,
            offset = first.offset,
            reason = %first.reason,
            skipped = seen,
            "skipping records that do not decode"
        );
    }
    let Some(dlq) = &connector.dead_letter_topic else {
        return Ok(());
    };
    let now = quiver_broker::now_ms();
    let records: Vec<Record> = bad
        .iter()
        .map(|b| {
            Record::new(now, b.key.as_deref(), b.value.as_deref())
                .with_header("__connect.errors.topic", Some(topic.as_bytes()))
                .with_header(
                    "__connect.errors.partition",
                    Some(b.partition.to_string().as_bytes()),
                )
                .with_header(
                    "__connect.errors.offset",
                    Some(b.offset.to_string().as_bytes()),
                )
                .with_header(
                    "__connect.errors.exception.message",
                    Some(b.reason.as_bytes()),
                )
        })
        .collect();
    match cluster {
        Cluster::Local(broker) => {
            broker.produce(dlq, &records).await?;
        }
        Cluster::Remote(kafka) => {
            let partitions = kafka.partition_count(dlq).await?;
            let mut by_partition: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
            for (i, r) in records.into_iter().enumerate() {
                let p = match &r.key {
                    Some(k) => partition_for_key(k, partitions),
                    None => (i as i32) % partitions.max(1),
                };
                by_partition.entry(p).or_default().push(r);
            }
            for (p, rs) in by_partition {
                kafka
                    .client()
                    .produce(dlq, p, &records_to_batch(&rs))
                    .await
                    .map_err(quiver_engine::EngineError::from)?;
            }
        }
    }
    Ok(())
}
