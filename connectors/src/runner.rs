//! Running a sink connector: its tasks read their share of the topics' partitions through the
//! engine's sources (the in-process broker's log, or any Kafka-compatible cluster), hand the
//! records to their sink, and commit the positions the sink says are durable to the
//! connector's consumer group, `connect-<name>` (see [`crate::sink`] for the contract).
//!
//! `tasks.max` tasks split the partitions (partition `p` goes to task `p % tasks`). Records
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
use quiver_engine::{KafkaSource, Source, TopicSource};
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
        Ok(SinkConnector {
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
    /// Records not yet committed: each partition's end less its committed offset (the
    /// in-process broker only).
    pub lag: Option<i64>,
    /// A source: records and bytes are what it has committed to its topic, in this many
    /// transactions.
    pub source_transactions: Option<u64>,
}

/// A handle on a running connector's counters.
#[derive(Debug, Clone, Default)]
pub struct Status {
    stats: Arc<parking_lot::Mutex<Vec<Arc<SinkStats>>>>,
    committed: Arc<parking_lot::Mutex<BTreeMap<(String, i32), i64>>>,
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
        }
        p
    }
}

/// Runs `connector` against `cluster` until `stop` turns true (then every task closes its
/// files and commits) or a task fails (then the others stop too, and the first error is
/// returned).
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
    let group = connector.group();
    let committed = committed_offsets(&cluster, &group, &topics).await?;
    *status.cluster.lock() = Some(cluster.clone());
    {
        let mut c = status.committed.lock();
        for (k, v) in &committed {
            c.insert(k.clone(), v.offset);
        }
        // Partitions never committed count from their start.
        if let Cluster::Local(broker) = &cluster {
            for t in &topics {
                for p in 0..broker.partition_count(t)? {
                    if let Ok(o) = broker.offsets(t, p) {
                        c.entry((t.clone(), p)).or_insert(o.log_start_offset);
                    }
                }
            }
        }
    }
    let (stop_all, stop_tasks) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for index in 0..connector.tasks {
        let sink = ParquetSink::new(connector.sink.clone());
        status.stats.lock().push(sink.stats());
        tasks.spawn(run_task(Task {
            connector: connector.clone(),
            cluster: cluster.clone(),
            sources: sources.clone(),
            split: PartitionSplit {
                index,
                count: connector.tasks,
            },
            committed: committed.clone(),
            sink,
            stop: stop_tasks.clone(),
            status: status.clone(),
        }));
    }
    supervise(tasks, stop, stop_all).await
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

struct Task {
    connector: Arc<SinkConnector>,
    cluster: Cluster,
    sources: Vec<(String, Arc<dyn Source>)>,
    split: PartitionSplit,
    committed: BTreeMap<(String, i32), Committed>,
    sink: ParquetSink,
    stop: watch::Receiver<bool>,
    status: Status,
}

async fn run_task(mut t: Task) -> Result<()> {
    let schemas: Vec<(String, SchemaRef)> = t
        .sources
        .iter()
        .map(|(topic, s)| (topic.clone(), s.schema()))
        .collect();
    let mine: BTreeMap<(String, i32), Committed> = t
        .committed
        .iter()
        .filter(|((_, p), _)| t.split.contains(*p))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    t.sink.open(&schemas, &mine).await?;
    let mut readers = Vec::with_capacity(t.sources.len());
    for (topic, source) in &t.sources {
        let positions: BTreeMap<i32, i64> = mine
            .iter()
            .filter(|((tp, _), _)| tp == topic)
            .map(|((_, p), c)| (*p, c.offset))
            .collect();
        readers.push((topic.clone(), source.open_at(t.split, &positions).await?));
    }
    let group = t.connector.group();
    let wait = Duration::from_millis(200 / readers.len().max(1) as u64);
    let mut last_tick = Instant::now();
    let mut bad_seen = 0u64;
    loop {
        if *t.stop.borrow() {
            break;
        }
        for (topic, reader) in &mut readers {
            let poll = tokio::select! {
                poll = reader.poll(wait) => poll?,
                _ = t.stop.changed() => break,
            };
            for batch in poll.batches {
                t.sink.write(topic, batch).await?;
                // Commit what rolled before the next write: see the Parquet sink's docs on
                // exactly-once for why no write may wait for the next poll.
                let commits = t.sink.prepare().await?;
                commit(&t.cluster, &t.status, &group, &commits).await?;
                t.sink.committed(&commits);
            }
            if !poll.bad.is_empty() {
                bad_seen += poll.bad.len() as u64;
                skip_bad(&t.connector, &t.cluster, topic, &poll.bad, bad_seen).await?;
            }
            for (partition, next) in reader.positions() {
                t.sink.read_up_to(topic, partition, next);
            }
        }
        if last_tick.elapsed() >= Duration::from_millis(500) {
            last_tick = Instant::now();
            t.sink.tick().await?;
        }
        let commits = t.sink.prepare().await?;
        commit(&t.cluster, &t.status, &group, &commits).await?;
        t.sink.committed(&commits);
    }
    let commits = t.sink.close().await?;
    commit(&t.cluster, &t.status, &group, &commits).await
}

async fn commit(cluster: &Cluster, status: &Status, group: &str, commits: &[Commit]) -> Result<()> {
    if commits.is_empty() {
        return Ok(());
    }
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
    let mut committed = status.committed.lock();
    for c in commits {
        committed.insert((c.topic.clone(), c.partition), c.offset);
    }
    Ok(())
}

/// Records that did not decode: the connector stops (errors.tolerance=none), or they are
/// logged and go to the dead letter queue.
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
