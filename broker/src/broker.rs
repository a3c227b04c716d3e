//! The in-process `Broker` handle: topics and their partition logs in one data directory.
//! The Kafka protocol server, the engine, SQL and connectors all go through it.
//!
//! Layout of the data directory: `topics.json` (the catalog), `<topic>-<partition>/` per
//! partition log, `.lock` (held while a process has the directory open), and
//! `.clean-shutdown` (written after the last clean shutdown, removed on open; its absence
//! means the partitions must be recovered as after a crash).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use futures::future::BoxFuture;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{BrokerConfig, LogConfig};
use crate::error::{BrokerError, IoContext, Result};
use crate::group::{GroupConfig, GroupCoordinator, OFFSETS_TOPIC, OffsetsStore, OffsetsTopic};
use crate::log::cleaner::CleanStats;
use crate::log::storage::{FileStorage, Storage};
use crate::log::{Ack, AppendInfo, Log, LogOffsets, ProducerInfo, ReadResult, Shutdown, now_ms};
use crate::partitioner::Partitioner;
use crate::record::{EnvelopeBuilder, Record};
use crate::topic::{self, TopicMeta};
use crate::txn::TxnConfig;
use crate::txn::coordinator::TxnCoordinator;

pub use quiver_common::topic::{ConfigChange, NewTopic};

/// A partition's state, as described to users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: i32,
    pub offsets: LogOffsets,
    /// The current leader epoch (bumped by every open after an unclean shutdown).
    pub leader_epoch: i32,
    /// A failed fsync took the partition offline for writes (until a restart).
    pub offline: bool,
}

/// A topic as described to users.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicDescription {
    pub name: String,
    pub id: String,
    pub partitions: Vec<PartitionInfo>,
    /// Overrides set on the topic.
    pub overrides: BTreeMap<String, String>,
    /// Every topic config with its effective value.
    pub config: LogConfig,
}

struct Topic {
    meta: TopicMeta,
    config: Arc<LogConfig>,
    logs: Vec<Arc<Log>>,
}

struct Inner {
    config: BrokerConfig,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serializes catalog changes (create, delete, alter) so the file matches memory.
    catalog_lock: Mutex<()>,
    partitioner: Partitioner,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    cluster_id: String,
    producer_ids: Mutex<ProducerIdBlock>,
    _lock_file: File,
    /// Consumer groups and committed offsets.
    groups: Arc<GroupCoordinator>,
    /// Transactional ids and their transactions.
    transactions: TxnCoordinator,
    /// The file layer under every partition log.
    storage: Arc<dyn Storage>,
}

/// Producer ids are handed out from blocks whose end is persisted before use, so no id is
/// ever given twice, even across crashes.
#[derive(Debug)]
struct ProducerIdBlock {
    next: i64,
    end: i64,
}

const PRODUCER_ID_BLOCK: i64 = 1000;

/// A broker handle that does not keep the broker alive; `upgrade` gives a [`Broker`] while
/// it is still open.
#[derive(Clone)]
pub(crate) struct WeakBroker(std::sync::Weak<Inner>);

impl WeakBroker {
    pub(crate) fn upgrade(&self) -> Option<Broker> {
        self.0.upgrade().map(|inner| Broker { inner })
    }
}

/// `__consumer_offsets` in this broker's catalog, for the group coordinator's offsets store.
impl OffsetsTopic for WeakBroker {
    fn partitions(&self) -> Option<Vec<Arc<Log>>> {
        let broker = self.upgrade()?;
        let topic = broker.topic(OFFSETS_TOPIC).ok()?;
        Some(topic.logs.clone())
    }

    fn create(
        &self,
        partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> BoxFuture<'_, Result<Vec<Arc<Log>>>> {
        Box::pin(async move {
            let broker = self.upgrade().ok_or(BrokerError::ShuttingDown)?;
            let new = NewTopic {
                name: OFFSETS_TOPIC.to_owned(),
                partitions: Some(partitions),
                configs,
            };
            match broker.create_topic(new).await {
                Ok(_) | Err(BrokerError::TopicExists(_)) => {}
                Err(e) => return Err(e),
            }
            Ok(broker.topic(OFFSETS_TOPIC)?.logs.clone())
        })
    }

    fn topic_exists(&self, topic: &str) -> bool {
        self.upgrade().is_some_and(|b| b.topic_exists(topic))
    }
}

/// The broker. Clone it freely: clones share one broker.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("data_dir", &self.inner.config.data_dir)
            .finish_non_exhaustive()
    }
}

fn partition_dir(data_dir: &Path, topic: &str, partition: i32) -> PathBuf {
    data_dir.join(format!("{topic}-{partition}"))
}

/// Takes the data directory's lock file, or says who holds it.
fn lock_data_dir(dir: &Path) -> Result<File> {
    let path = dir.join(".lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .at(&path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            return Err(BrokerError::DataDirLocked {
                dir: dir.to_owned(),
                holder: if holder.is_empty() {
                    "another process".into()
                } else {
                    holder.to_owned()
                },
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(BrokerError::io(path, e)),
    }
    let who = format!(
        "process {} ({})",
        std::process::id(),
        std::env::args().take(2).collect::<Vec<_>>().join(" ")
    );
    file.set_len(0).at(&path)?;
    file.write_all(who.as_bytes()).at(&path)?;
    Ok(file)
}

impl Broker {
    /// Opens the data directory (creating it), recovers every partition log (on blocking
    /// threads, several at once), and starts the background work: retention, compaction,
    /// time-based flushes, producer id expiry and each partition's flusher. Must run inside a
    /// Tokio runtime.
    pub async fn open(config: BrokerConfig) -> Result<Broker> {
        Broker::open_with_storage(config, FileStorage::shared()).await
    }

    /// [`Broker::open`] with every partition log's segment and index files on `storage`
    /// (fault injection in tests).
    pub(crate) async fn open_with_storage(
        config: BrokerConfig,
        storage: Arc<dyn Storage>,
    ) -> Result<Broker> {
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(&dir).at(&dir)?;
        let lock_file = lock_data_dir(&dir)?;
        let shutdown_was = take_clean_shutdown_marker(&dir)?;
        if shutdown_was == Shutdown::Unclean {
            tracing::info!(dir = %dir.display(), "no clean shutdown recorded: recovering every partition's active segment");
        }
        let metas = topic::load_catalog(&dir)?;
        let opened = open_partitions(&dir, &config.log, &metas, &storage, shutdown_was).await?;
        let mut topics = BTreeMap::new();
        for (meta, (config_for_topic, logs)) in metas.into_iter().zip(opened) {
            for log in &logs {
                log.start_flusher();
            }
            topics.insert(
                meta.name.clone(),
                Arc::new(Topic {
                    meta,
                    config: config_for_topic,
                    logs,
                }),
            );
        }
        remove_orphans(&dir, &topics)?;
        let cluster_id = load_or_create_cluster_id(&dir, config.kafka.node_id)?;
        let next_producer_id = read_i64_file(&dir.join("producer-id-block"))?.unwrap_or(0);
        let (shutdown, _) = watch::channel(false);
        let group_config = GroupConfig::from_kafka(&config.kafka);
        let offsets_partitions = group_config.offsets_topic_partitions;
        let broker = Broker {
            // The coordinator's store reaches the catalog through a weak handle: the broker owns
            // the coordinator, which must not keep it alive.
            inner: Arc::new_cyclic(|weak| Inner {
                groups: Arc::new(GroupCoordinator::new(
                    group_config,
                    OffsetsStore::new(Box::new(WeakBroker(weak.clone())), offsets_partitions),
                )),
                transactions: TxnCoordinator::new(
                    TxnConfig::from_kafka(&config.kafka),
                    WeakBroker(weak.clone()),
                ),
                config,
                topics: RwLock::new(topics),
                catalog_lock: Mutex::new(()),
                partitioner: Partitioner::default(),
                shutdown,
                tasks: Mutex::new(Vec::new()),
                cluster_id,
                producer_ids: Mutex::new(ProducerIdBlock {
                    next: next_producer_id,
                    end: next_producer_id,
                }),
                _lock_file: lock_file,
                storage,
            }),
        };
        broker.start_background();
        // After the topics are open: it reads its groups back from __consumer_offsets.
        broker.inner.groups.start()?;
        // After the groups: markers of decided transactions reach __consumer_offsets too.
        broker.inner.transactions.start(&broker)?;
        Ok(broker)
    }

    /// The broker's settings.
    pub fn config(&self) -> &BrokerConfig {
        &self.inner.config
    }

    /// The group coordinator: consumer groups and committed offsets.
    pub fn groups(&self) -> &GroupCoordinator {
        &self.inner.groups
    }

    /// The transaction coordinator: transactional ids and their transactions.
    pub fn transactions(&self) -> &TxnCoordinator {
        &self.inner.transactions
    }

    /// The cluster id (made on first start, kept in `meta.properties`).
    pub fn cluster_id(&self) -> &str {
        &self.inner.cluster_id
    }

    /// A producer id never handed out before (for idempotent producers).
    pub fn allocate_producer_id(&self) -> Result<i64> {
        let mut ids = self.inner.producer_ids.lock();
        if ids.next >= ids.end {
            let end = ids.next + PRODUCER_ID_BLOCK;
            write_i64_file(&self.inner.config.data_dir.join("producer-id-block"), end)?;
            ids.end = end;
        }
        let id = ids.next;
        ids.next += 1;
        Ok(id)
    }

    fn start_background(&self) {
        let mut tasks = self.inner.tasks.lock();
        let retention_every = Duration::from_millis(self.inner.config.retention_check_interval_ms);
        let cleaner_every = Duration::from_millis(self.inner.config.cleaner_backoff_ms);
        tasks.push(self.spawn_periodic(retention_every, |b| async move {
            b.run_retention();
        }));
        tasks.push(self.spawn_periodic(cleaner_every, |b| async move {
            b.run_cleaner().await;
        }));
        tasks.push(
            self.spawn_periodic(Duration::from_millis(50), |b| async move {
                b.run_timed_flushes().await;
            }),
        );
        let producers_every =
            Duration::from_millis(self.inner.config.producer_id_expiration_check_interval_ms);
        tasks.push(self.spawn_periodic(producers_every, |b| async move {
            b.expire_producers(now_ms());
        }));
    }

    fn spawn_periodic<F, Fut>(&self, every: Duration, job: F) -> JoinHandle<()>
    where
        F: Fn(Broker) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        // Hold a weak reference so background tasks do not keep a dropped broker alive.
        let weak = Arc::downgrade(&self.inner);
        let mut stop = self.inner.shutdown.subscribe();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return,
                }
                let Some(inner) = weak.upgrade() else { return };
                job(Broker { inner }).await;
            }
        })
    }

    fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        self.inner
            .topics
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_owned()))
    }

    /// A read handle on one partition (appends go through [`Broker::append`]).
    pub fn partition(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<crate::partition::PartitionHandle> {
        self.log(topic, partition)
            .map(crate::partition::PartitionHandle::new)
    }

    /// The partition logs of a topic in partition order, if it exists.
    pub(crate) fn log_set(&self, topic: &str) -> Option<Vec<Arc<Log>>> {
        self.topic(topic).ok().map(|t| t.logs.clone())
    }

    /// The log of one partition: the whole storage API, for the broker crate only.
    pub(crate) fn log(&self, topic: &str, partition: i32) -> Result<Arc<Log>> {
        let t = self.topic(topic)?;
        usize::try_from(partition)
            .ok()
            .and_then(|p| t.logs.get(p))
            .cloned()
            .ok_or_else(|| BrokerError::UnknownPartition {
                topic: topic.to_owned(),
                partition,
                partitions: t.meta.partitions,
            })
    }

    fn persist(&self, topics: &BTreeMap<String, Arc<Topic>>) -> Result<()> {
        let metas: Vec<TopicMeta> = topics.values().map(|t| t.meta.clone()).collect();
        topic::save_catalog(&self.inner.config.data_dir, &metas)
    }

    /// Creates a topic. Name, partition count and every config are checked first.
    pub async fn create_topic(&self, new: NewTopic) -> Result<TopicDescription> {
        {
            let _catalog = self.inner.catalog_lock.lock();
            let (partitions, config) = self.check_new_topic(&new)?;
            let config = Arc::new(config);
            let current = self.inner.topics.read().clone();
            let dir = &self.inner.config.data_dir;
            let mut logs = Vec::with_capacity(partitions as usize);
            for p in 0..partitions {
                let pdir = partition_dir(dir, &new.name, p);
                // A leftover directory from an interrupted delete must not leak old data.
                if pdir.exists() {
                    std::fs::remove_dir_all(&pdir).at(&pdir)?;
                }
                let storage = self.inner.storage.clone();
                let log = Arc::new(Log::open_with(
                    &pdir,
                    &new.name,
                    p,
                    config.clone(),
                    storage,
                    Shutdown::Unclean,
                )?);
                log.start_flusher();
                logs.push(log);
            }
            let meta = TopicMeta {
                name: new.name.clone(),
                id: topic::new_topic_id(),
                partitions,
                configs: new.configs.clone(),
                created_ms: now_ms(),
            };
            let mut next = current;
            next.insert(new.name.clone(), Arc::new(Topic { meta, config, logs }));
            self.persist(&next)?;
            *self.inner.topics.write() = next;
            tracing::info!(topic = %new.name, partitions, "created topic");
        }
        self.describe_topic(&new.name)
    }

    /// Every check `create_topic` makes, without creating anything (CreateTopics with
    /// `validate_only`): name, partition count, configs, and no existing topic of the same or a
    /// colliding name. Returns the partition count and the effective config.
    pub fn check_new_topic(&self, new: &NewTopic) -> Result<(i32, LogConfig)> {
        topic::validate_name(&new.name)?;
        let partitions = new.partitions.unwrap_or(self.inner.config.num_partitions);
        topic::validate_partitions(partitions)?;
        let config = self.inner.config.log.with_overrides(&new.configs)?;
        let topics = self.inner.topics.read();
        if topics.contains_key(&new.name) {
            return Err(BrokerError::TopicExists(new.name.clone()));
        }
        if let Some(other) = topics.keys().find(|k| topic::collides(k, &new.name)) {
            return Err(BrokerError::InvalidTopicName {
                name: new.name.clone(),
                reason: format!(
                    "it collides with existing topic '{other}' ('.' and '_' are treated alike)"
                ),
            });
        }
        Ok((partitions, config))
    }

    /// Deletes a topic and its data, and every group's committed offsets of it. Internal
    /// topics are refused.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let removed = {
            let _catalog = self.inner.catalog_lock.lock();
            let mut next = self.inner.topics.read().clone();
            let removed = next
                .remove(name)
                .ok_or_else(|| BrokerError::UnknownTopic(name.to_owned()))?;
            topic::refuse_internal(name, "deleted")?;
            self.persist(&next)?;
            *self.inner.topics.write() = next;
            removed
        };
        for log in &removed.logs {
            log.delete()?;
        }
        tracing::info!(topic = %name, "deleted topic");
        self.inner.groups.remove_topic_offsets(name).await;
        Ok(())
    }

    /// Names of all topics, sorted.
    pub fn list_topics(&self) -> Vec<String> {
        self.inner.topics.read().keys().cloned().collect()
    }

    /// True if the topic exists.
    pub fn topic_exists(&self, name: &str) -> bool {
        self.inner.topics.read().contains_key(name)
    }

    /// The name of the topic with this Kafka topic id, if any.
    pub fn topic_name_by_id(&self, id: &uuid::Uuid) -> Option<String> {
        if id.is_nil() {
            return None;
        }
        let hex = id.simple().to_string();
        let topics = self.inner.topics.read();
        topics
            .values()
            .find(|t| t.meta.id == hex)
            .map(|t| t.meta.name.clone())
    }

    /// Number of partitions of a topic.
    pub fn partition_count(&self, name: &str) -> Result<i32> {
        Ok(self.topic(name)?.meta.partitions)
    }

    /// Partitions, offsets and configs of a topic.
    pub fn describe_topic(&self, name: &str) -> Result<TopicDescription> {
        let t = self.topic(name)?;
        Ok(TopicDescription {
            name: t.meta.name.clone(),
            id: t.meta.id.clone(),
            partitions: t
                .logs
                .iter()
                .map(|l| PartitionInfo {
                    partition: l.partition(),
                    offsets: l.offsets(),
                    leader_epoch: l.leader_epoch(),
                    offline: l.is_offline(),
                })
                .collect(),
            overrides: t.meta.configs.clone(),
            config: (*t.config).clone(),
        })
    }

    /// Raises a topic's partition count to `total`. Internal topics are refused.
    pub async fn add_partitions(&self, name: &str, total: i32) -> Result<TopicDescription> {
        {
            let _catalog = self.inner.catalog_lock.lock();
            let mut next = self.inner.topics.read().clone();
            let t = next
                .get(name)
                .cloned()
                .ok_or_else(|| BrokerError::UnknownTopic(name.to_owned()))?;
            topic::refuse_internal(name, "re-partitioned")?;
            if total <= t.meta.partitions {
                return Err(BrokerError::InvalidPartitions(format!(
                    "topic '{name}' has {} partitions; the new count {total} must be larger (partitions cannot be removed)",
                    t.meta.partitions
                )));
            }
            topic::validate_partitions(total)?;
            let mut logs = t.logs.clone();
            for p in t.meta.partitions..total {
                let pdir = partition_dir(&self.inner.config.data_dir, name, p);
                if pdir.exists() {
                    std::fs::remove_dir_all(&pdir).at(&pdir)?;
                }
                let storage = self.inner.storage.clone();
                let log = Arc::new(Log::open_with(
                    &pdir,
                    name,
                    p,
                    t.config.clone(),
                    storage,
                    Shutdown::Unclean,
                )?);
                log.start_flusher();
                logs.push(log);
            }
            let mut meta = t.meta.clone();
            meta.partitions = total;
            next.insert(
                name.to_owned(),
                Arc::new(Topic {
                    meta,
                    config: t.config.clone(),
                    logs,
                }),
            );
            self.persist(&next)?;
            *self.inner.topics.write() = next;
        }
        self.describe_topic(name)
    }

    /// Changes topic configs. All changes are checked before any takes effect. Internal topics
    /// are refused.
    pub async fn alter_topic_config(
        &self,
        name: &str,
        changes: &[ConfigChange],
    ) -> Result<TopicDescription> {
        {
            let _catalog = self.inner.catalog_lock.lock();
            let mut next = self.inner.topics.read().clone();
            let t = next
                .get(name)
                .cloned()
                .ok_or_else(|| BrokerError::UnknownTopic(name.to_owned()))?;
            topic::refuse_internal(name, "reconfigured")?;
            let mut overrides = t.meta.configs.clone();
            for change in changes {
                match change {
                    ConfigChange::Set(k, v) => {
                        overrides.insert(k.clone(), v.clone());
                    }
                    ConfigChange::Delete(k) => {
                        if LogConfig::default().get(k).is_none() {
                            return Err(BrokerError::InvalidConfig(format!(
                                "unknown topic config '{k}'"
                            )));
                        }
                        overrides.remove(k);
                    }
                }
            }
            let config = Arc::new(self.inner.config.log.with_overrides(&overrides)?);
            let mut meta = t.meta.clone();
            meta.configs = overrides;
            for log in &t.logs {
                log.set_config(config.clone());
            }
            next.insert(
                name.to_owned(),
                Arc::new(Topic {
                    meta,
                    config,
                    logs: t.logs.clone(),
                }),
            );
            self.persist(&next)?;
            *self.inner.topics.write() = next;
        }
        self.describe_topic(name)
    }

    /// Appends an envelope batch to one partition (offsets assigned by the log) and returns once
    /// it is acknowledged as Kafka's acks=all would be: durable with `log.flush.on.ack` (the
    /// default), else written.
    pub async fn append(
        &self,
        topic: &str,
        partition: i32,
        batch: &RecordBatch,
        producer: ProducerInfo,
    ) -> Result<AppendInfo> {
        if *self.inner.shutdown.borrow() {
            return Err(BrokerError::ShuttingDown);
        }
        self.log(topic, partition)?
            .append(batch, producer, Ack::All)
            .await
    }

    /// Sends records to a topic, choosing partitions like Kafka's default partitioner (murmur2
    /// of the key; round-robin per call for null keys). Returns `(partition, AppendInfo)` per
    /// partition written. Creates the topic if missing and `auto.create.topics.enable` is on.
    pub async fn produce(&self, topic: &str, records: &[Record]) -> Result<Vec<(i32, AppendInfo)>> {
        let partitions = match self.partition_count(topic) {
            Ok(n) => n,
            Err(BrokerError::UnknownTopic(_)) if self.inner.config.auto_create_topics => match self
                .create_topic(NewTopic {
                    name: topic.to_owned(),
                    ..NewTopic::default()
                })
                .await
            {
                Ok(d) => d.partitions.len() as i32,
                Err(BrokerError::TopicExists(_)) => self.partition_count(topic)?,
                Err(e) => return Err(e),
            },
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for (p, batch) in self.partition_records(partitions, records) {
            out.push((p, self.append(topic, p, &batch, ProducerInfo::NONE).await?));
        }
        Ok(out)
    }

    /// `records` as one envelope batch per partition of a topic of `partitions` partitions,
    /// partitioned as [`Broker::produce`] does (murmur2 of the key; round-robin per call for
    /// null keys), for callers that append them another way (in a transaction).
    pub fn partition_records(
        &self,
        partitions: i32,
        records: &[Record],
    ) -> Vec<(i32, RecordBatch)> {
        let unkeyed = self.inner.partitioner.partition(None, partitions);
        let mut by_partition: BTreeMap<i32, EnvelopeBuilder> = BTreeMap::new();
        for r in records {
            let p = match &r.key {
                Some(k) => crate::partitioner::partition_for_key(k, partitions),
                None => unkeyed,
            };
            by_partition.entry(p).or_default().append_record(r);
        }
        by_partition
            .into_iter()
            .map(|(p, mut builder)| (p, builder.finish()))
            .collect()
    }

    /// Reads from `offset`, about `max_bytes` of batches, up to the high watermark.
    pub fn read(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: usize,
    ) -> Result<ReadResult> {
        self.log(topic, partition)?.read(offset, max_bytes)
    }

    /// Like `read`, but waits up to `timeout` for records at `offset` when none are visible yet.
    pub async fn read_wait(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: usize,
        timeout: Duration,
    ) -> Result<ReadResult> {
        let log = self.log(topic, partition)?;
        if log.high_watermark() <= offset {
            let mut stop = self.inner.shutdown.subscribe();
            tokio::select! {
                _ = log.wait_for(offset, timeout) => {}
                _ = stopped(&mut stop) => {}
            }
        }
        log.read(offset, max_bytes)
    }

    /// The earliest offset with a timestamp at least `timestamp_ms`, with its timestamp.
    pub fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: i32,
        timestamp_ms: i64,
    ) -> Result<Option<(i64, i64)>> {
        self.log(topic, partition)?
            .offset_for_timestamp(timestamp_ms)
    }

    /// Log start, end and durable offsets of a partition.
    pub fn offsets(&self, topic: &str, partition: i32) -> Result<LogOffsets> {
        Ok(self.log(topic, partition)?.offsets())
    }

    /// Every partition log, for background work.
    fn all_logs(&self) -> Vec<Arc<Log>> {
        self.inner
            .topics
            .read()
            .values()
            .flat_map(|t| t.logs.iter().cloned())
            .collect()
    }

    /// Applies retention to every partition now. Returns segments deleted.
    pub fn run_retention(&self) -> usize {
        let now = now_ms();
        let mut deleted = 0;
        for log in self.all_logs() {
            match log.enforce_retention(now) {
                Ok(n) => deleted += n,
                Err(e) => {
                    tracing::error!(topic = log.topic(), partition = log.partition(), error = %e, "retention failed")
                }
            }
        }
        deleted
    }

    /// Forgets idempotent producers idle for `producer.id.expiration.ms` as of `now_ms`, in
    /// every partition. Runs every `producer.id.expiration.check.interval.ms`. Returns how many
    /// were forgotten.
    pub fn expire_producers(&self, now_ms: i64) -> usize {
        let expiration_ms = self.inner.config.producer_id_expiration_ms;
        let expired: usize = self
            .all_logs()
            .iter()
            .map(|log| log.expire_producers(now_ms, expiration_ms))
            .sum();
        if expired > 0 {
            tracing::info!(expired, expiration_ms, "forgot idle idempotent producers");
        }
        expired
    }

    /// Runs one compaction pass over every compacted partition now.
    pub async fn run_cleaner(&self) -> CleanStats {
        let mut total = CleanStats::default();
        for log in self.all_logs() {
            if !log.config().cleanup_policy.compact {
                continue;
            }
            match log.compact().await {
                Ok(s) => {
                    total.segments_cleaned += s.segments_cleaned;
                    total.records_kept += s.records_kept;
                    total.records_removed += s.records_removed;
                    total.bytes_before += s.bytes_before;
                    total.bytes_after += s.bytes_after;
                }
                Err(e) => {
                    tracing::error!(topic = log.topic(), partition = log.partition(), error = %e, "compaction failed")
                }
            }
        }
        total
    }

    async fn run_timed_flushes(&self) {
        let now = now_ms();
        for log in self.all_logs() {
            if let Err(e) = log.flush_if_due(now).await {
                tracing::error!(topic = log.topic(), partition = log.partition(), error = %e, "flush failed");
            }
        }
    }

    /// Fsyncs every partition.
    pub async fn flush(&self) -> Result<()> {
        for log in self.all_logs() {
            log.flush().await?;
        }
        Ok(())
    }

    /// Stops background work, closes every log (fsynced, indexes persisted) and, when all of
    /// that succeeded, records a clean shutdown so the next open skips recovery. Appends fail
    /// afterwards. Callers that serve requests (the Kafka server) stop serving first.
    pub async fn shutdown(&self) -> Result<()> {
        self.inner.transactions.shutdown().await;
        self.inner.groups.shutdown().await;
        self.inner.shutdown.send_replace(true);
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.inner.tasks.lock());
        for t in tasks {
            let _ = t.await;
        }
        // One partition whose disk failed must not keep the others from closing cleanly.
        let mut first_error = None;
        for log in self.all_logs() {
            if let Err(e) = log.close().await {
                tracing::error!(topic = log.topic(), partition = log.partition(), error = %e, "closing the partition failed");
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => write_clean_shutdown_marker(&self.inner.config.data_dir),
        }
    }
}

/// Resolves once the flag is true (or its sender is gone). Unlike `watch::Receiver::wait_for`,
/// the future holds no guard, so it can be awaited inside spawned tasks.
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Partitions recovered at once on start (Kafka's `num.recovery.threads.per.data.dir` role).
const RECOVERY_THREADS_MAX: usize = 8;

/// Opens every partition of `metas` on blocking threads, several at a time (recovery reads
/// whole segments and must not stall the runtime). Returns each topic's effective config and
/// its logs, in the order of `metas`.
async fn open_partitions(
    dir: &Path,
    defaults: &LogConfig,
    metas: &[TopicMeta],
    storage: &Arc<dyn Storage>,
    shutdown_was: Shutdown,
) -> Result<Vec<(Arc<LogConfig>, Vec<Arc<Log>>)>> {
    let mut configs = Vec::with_capacity(metas.len());
    for meta in metas {
        configs.push(Arc::new(defaults.with_overrides(&meta.configs)?));
    }
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, RECOVERY_THREADS_MAX);
    let mut pending = metas
        .iter()
        .zip(&configs)
        .enumerate()
        .flat_map(|(t, (meta, config))| {
            (0..meta.partitions).map(move |p| (t, p, meta.name.clone(), config.clone()))
        });
    let mut opened: Vec<Vec<Option<Arc<Log>>>> = metas
        .iter()
        .map(|m| vec![None; m.partitions.max(0) as usize])
        .collect();
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.len() < threads {
            let Some((t, p, name, config)) = pending.next() else {
                break;
            };
            let pdir = partition_dir(dir, &name, p);
            let storage = storage.clone();
            running.spawn_blocking(move || {
                Log::open_with(&pdir, &name, p, config, storage, shutdown_was)
                    .map(|log| (t, p, log))
            });
        }
        let Some(done) = running.join_next().await else {
            break;
        };
        let (t, p, log) = done.map_err(|e| {
            BrokerError::Internal(format!("a partition recovery task failed: {e}"))
        })??;
        opened[t][p as usize] = Some(Arc::new(log));
    }
    Ok(configs
        .into_iter()
        .zip(opened)
        .map(|(config, logs)| (config, logs.into_iter().flatten().collect()))
        .collect())
}

const CLEAN_SHUTDOWN_FILE: &str = ".clean-shutdown";

/// Whether the last process shut down cleanly; removes the marker (durably) before anything
/// is written, so a crash from here on is seen as unclean by the next start.
fn take_clean_shutdown_marker(dir: &Path) -> Result<Shutdown> {
    let path = dir.join(CLEAN_SHUTDOWN_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => {
            File::open(dir).and_then(|d| d.sync_all()).at(dir)?;
            Ok(Shutdown::Clean)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Shutdown::Unclean),
        Err(e) => Err(BrokerError::io(path, e)),
    }
}

fn write_clean_shutdown_marker(dir: &Path) -> Result<()> {
    let path = dir.join(CLEAN_SHUTDOWN_FILE);
    let f = File::create(&path).at(&path)?;
    f.sync_all().at(&path)?;
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

fn read_i64_file(path: &Path) -> Result<Option<i64>> {
    match std::fs::read_to_string(path) {
        Ok(s) => s
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| BrokerError::Corrupt {
                path: path.to_owned(),
                reason: format!("expected a number, found {s:?}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(BrokerError::io(path, e)),
    }
}

/// Writes a number durably (temp file, fsync, rename, fsync directory).
fn write_i64_file(path: &Path, value: i64) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).at(&tmp)?;
    f.write_all(value.to_string().as_bytes()).at(&tmp)?;
    f.sync_all().at(&tmp)?;
    std::fs::rename(&tmp, path).at(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Kafka-style cluster id: 22 characters of URL-safe base64 of a random UUID.
fn new_cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let mut bits: u32 = 0;
    let mut nbits = 0;
    let mut out = String::with_capacity(22);
    for b in bytes {
        bits = (bits << 8) | u32::from(b);
        nbits += 8;
        while nbits >= 6 {
            nbits -= 6;
            out.push(ALPHABET[((bits >> nbits) & 63) as usize] as char);
        }
    }
    if nbits > 0 {
        out.push(ALPHABET[((bits << (6 - nbits)) & 63) as usize] as char);
    }
    out
}

/// Reads `cluster.id` from `meta.properties`, creating the file on first start.
fn load_or_create_cluster_id(dir: &Path, node_id: i32) -> Result<String> {
    let path = dir.join("meta.properties");
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .lines()
            .find_map(|l| l.trim().strip_prefix("cluster.id="))
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| BrokerError::Corrupt {
                path: path.clone(),
                reason: "no cluster.id line".into(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = new_cluster_id();
            let tmp = path.with_extension("tmp");
            let mut f = File::create(&tmp).at(&tmp)?;
            writeln!(
                f,
                "# Written by Quiver on first start.\nversion=1\ncluster.id={id}\nnode.id={node_id}"
            )
            .at(&tmp)?;
            f.sync_all().at(&tmp)?;
            std::fs::rename(&tmp, &path).at(&path)?;
            Ok(id)
        }
        Err(e) => Err(BrokerError::io(path, e)),
    }
}

/// Removes partition directories that belong to no topic (left by a delete interrupted by a crash).
fn remove_orphans(dir: &Path, topics: &BTreeMap<String, Arc<Topic>>) -> Result<()> {
    for entry in std::fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        if !entry.file_type().at(&entry.path())?.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((topic, partition)) = name.rsplit_once('-') else {
            continue;
        };
        let Ok(partition) = partition.parse::<i32>() else {
            continue;
        };
        if topic::validate_name(topic).is_err() {
            continue;
        }
        let known = topics
            .get(topic)
            .is_some_and(|t| partition < t.meta.partitions);
        if known {
            continue;
        }
        // Only a directory that holds nothing but a partition log's own files is ours to remove;
        // anything else in the data directory is left alone (and reported).
        if is_partition_dir(&entry.path())? {
            tracing::warn!(dir = %entry.path().display(), "removing partition directory of a deleted topic");
            std::fs::remove_dir_all(entry.path()).at(&entry.path())?;
        } else {
            tracing::warn!(dir = %entry.path().display(), "ignoring a directory that is not a Quiver partition");
        }
    }
    Ok(())
}

/// True when every file in `dir` is one a partition log writes (segments, indexes, snapshots,
/// checkpoints and their temporaries), and there are no subdirectories.
fn is_partition_dir(dir: &Path) -> Result<bool> {
    const SUFFIXES: &[&str] = &[
        ".log",
        ".index",
        ".timeindex",
        ".txnindex",
        ".snapshot",
        ".cleaned",
        ".tmp",
    ];
    for entry in std::fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        if !entry.file_type().at(&entry.path())?.is_file() {
            return Ok(false);
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let own = [
            crate::log::LOG_START_FILE,
            crate::log::RECOVERY_POINT_FILE,
            crate::log::epoch::FILE,
        ];
        if !own.contains(&name.as_str()) && !SUFFIXES.iter().any(|s| name.ends_with(s)) {
            return Ok(false);
        }
    }
    Ok(true)
}
