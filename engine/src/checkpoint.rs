//! Checkpoints and exactly-once output.
//!
//! A query with [`CheckpointConfig`] takes a checkpoint every [`CheckpointConfig::interval`]
//! (and one more when it stops). A checkpoint is an epoch: the results of the records read
//! before its barrier, the state of every operator after them, and the source offsets to read
//! from next. Its application id is the query's name: the consumer group its source offsets
//! are committed to, and (exactly-once) the transactional id of its output.
//!
//! # The protocol, step by step
//!
//! 1. **Barrier.** The sink task asks the source tasks for epoch `n`'s barrier. Each source
//!    task records its partitions' next offsets and its watermark in the barrier, writes the
//!    state of its operators, and sends the barrier on, after every batch it read before.
//! 2. **State.** Each later task aligns the barrier over its inputs (see the exchange), so
//!    its operators hold exactly the effect of the records before it; it writes each stateful
//!    operator's rows as one Arrow IPC file, `epoch-n/<operator>-<task>.arrow`, adds the file to
//!    the barrier and sends it on. A task whose operators have seen nothing since its last
//!    checkpoint (no rows, no watermark move) names that checkpoint's files again instead of
//!    writing them anew, so a quiet table of a million rows costs nothing per checkpoint.
//! 3. **Manifest.** When the barrier reaches the sink task, every result of epoch `n` has been
//!    written to the sinks and every state file exists. The sink task flushes its sinks, then
//!    writes `epoch-n/manifest.json`: the offsets, watermarks and state files.
//! 4. **Commit.** Exactly-once: in the transaction that holds epoch `n`'s output (every topic
//!    sink, dead-letter and late-data record since epoch `n-1`), the sink task commits the
//!    source offsets to the application's group, with `quiver.epoch=n` as their metadata, and
//!    commits the transaction. At-least-once: the output was written as it came; the offsets
//!    are committed with the same metadata.
//! 5. **Prune.** Checkpoints before `n-1` are deleted, but for the state files that `n-1`'s and
//!    `n`'s manifests still name.
//!
//! # Recovery
//!
//! On start, exactly-once first takes over the transactional id, which fences an older
//! instance still running and aborts a transaction it left open. Then the group's committed
//! offsets name the epoch to restore (their metadata), and that epoch's manifest gives the
//! state: every operator of every task gets back its rows, every task its watermark,
//! and reading resumes at the manifest's offsets (which equal the committed ones). With no
//! committed offsets the query starts from its source's start position with empty state.
//!
//! A query may restart at another parallelism (rescaling): each task then takes, from every
//! task's state files, the rows whose keys the keyed exchange now sends to it (the exchange's
//! hash has a fixed seed), and the watermark its stage had. The partitions are split anew
//! between the source tasks, each resuming at the manifest's offsets.
//!
//! What a crash leaves, by step:
//! - **During 1–3**: the transaction of epoch `n` is open; it is aborted on restart (or by its
//!   timeout), so `read_committed` readers never see its output. The group's offsets still
//!   name epoch `n-1`, whose manifest is complete: the query restores `n-1` and reads the same
//!   records again. A half-written epoch-`n` directory is overwritten.
//! - **During 4, before the decision is durable**: the same as above.
//! - **After the decision is durable**: the commit completes (the broker finishes writing its
//!   markers), the offsets name epoch `n`, whose manifest was written in step 3: the query
//!   restores `n` and does not redo its output.
//! - **During 5**: nothing is lost; old checkpoints are deleted on a later epoch.
//!
//! At-least-once has the same recovery, but output written after the last commit was visible
//! as it was written, so it may appear again.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use futures::TryStreamExt;
use kafka_protocol::error::ResponseError;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use quiver_broker::group::{OffsetCommit, OffsetCommitEntry};
use quiver_broker::{Broker, TransactionalProducer};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::kafka::KafkaCluster;

/// How output and state relate after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarantee {
    /// Topic output is written in one transaction per checkpoint with the source offsets: a
    /// `read_committed` reader sees each result once, whatever crashes.
    ExactlyOnce,
    /// Output is written as it comes and offsets are committed per checkpoint: after a crash,
    /// results since the last checkpoint may appear again. Faster: no transactions, and
    /// results are visible at once.
    AtLeastOnce,
}

/// Where checkpoints are kept: a local directory or any `object_store` store.
#[derive(Clone)]
pub struct CheckpointStorage {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    describe: String,
    /// A local directory's store: its files and directories are fsynced after each write
    /// (object_store's local store does not), so a checkpoint whose offsets were committed
    /// survives a power loss.
    local: Option<Arc<object_store::local::LocalFileSystem>>,
}

impl fmt::Debug for CheckpointStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe)
    }
}

impl CheckpointStorage {
    /// A local directory (created if missing).
    pub fn local(dir: impl AsRef<std::path::Path>) -> Result<CheckpointStorage> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| {
            EngineError::Checkpoint(format!(
                "cannot create the checkpoint directory {}: {e}",
                dir.display()
            ))
        })?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir).map_err(|e| {
            EngineError::Checkpoint(format!("cannot use {} for checkpoints: {e}", dir.display()))
        })?;
        let store = Arc::new(store);
        Ok(CheckpointStorage {
            store: store.clone(),
            prefix: Path::default(),
            describe: format!("directory {}", dir.display()),
            local: Some(store),
        })
    }

    /// Any object store (S3, GCS, Azure, memory), under `prefix` in it.
    pub fn object_store(store: Arc<dyn ObjectStore>, prefix: &str) -> CheckpointStorage {
        CheckpointStorage {
            describe: format!("{store} under '{prefix}'"),
            store,
            prefix: Path::from(prefix),
            local: None,
        }
    }

    /// In memory: lost with the process (for tests).
    pub fn in_memory() -> CheckpointStorage {
        CheckpointStorage::object_store(Arc::new(object_store::memory::InMemory::new()), "")
    }

    fn query_dir(&self, query: &str) -> Path {
        self.prefix.clone().join(query)
    }

    fn epoch_dir(&self, query: &str, epoch: u64) -> Path {
        self.query_dir(query).join(format!("epoch-{epoch:012}"))
    }

    fn failed(&self, what: &str, e: impl fmt::Display) -> EngineError {
        EngineError::Checkpoint(format!("{what} in {}: {e}", self.describe))
    }

    /// Writes `bytes` at `path`; in a local directory, durably: the file, then the directories
    /// up to the query's (`sync_dirs` levels above the file), are fsynced.
    async fn put(&self, path: &Path, bytes: Vec<u8>, sync_dirs: usize) -> Result<()> {
        self.store
            .put(path, PutPayload::from(bytes))
            .await
            .map_err(|e| self.failed(&format!("cannot write {path}"), e))?;
        let Some(local) = &self.local else {
            return Ok(());
        };
        let file = local
            .path_to_filesystem(path)
            .map_err(|e| self.failed(&format!("cannot write {path}"), e))?;
        let synced = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::File::open(&file)?.sync_all()?;
            let mut dir = file.as_path();
            for _ in 0..sync_dirs {
                let Some(parent) = dir.parent() else { break };
                std::fs::File::open(parent)?.sync_all()?;
                dir = parent;
            }
            Ok(())
        })
        .await
        .map_err(|e| EngineError::internal(format!("an fsync task failed: {e}")))?;
        synced.map_err(|e| self.failed(&format!("cannot fsync {path}"), e))
    }

    /// Writes one operator's state of one task.
    pub(crate) async fn write_state(
        &self,
        query: &str,
        epoch: u64,
        operator: &str,
        task: usize,
        state: &RecordBatch,
    ) -> Result<StateFile> {
        let bytes = crate::runtime::blocking(|| -> Result<Vec<u8>> {
            let mut bytes = Vec::new();
            let mut writer = StreamWriter::try_new(&mut bytes, &state.schema())?;
            writer.write(state)?;
            writer.finish()?;
            Ok(bytes)
        })?;
        let name = format!("{operator}-{task}.arrow");
        let path = self.epoch_dir(query, epoch).join(name.as_str());
        // The epoch's directory entry itself is synced with the manifest.
        self.put(&path, bytes, 1).await?;
        Ok(StateFile {
            operator: operator.to_owned(),
            task,
            file: name,
            rows: state.num_rows(),
            epoch: None,
        })
    }

    /// Where a state file named by epoch `epoch`'s manifest is.
    fn state_path(&self, query: &str, epoch: u64, file: &StateFile) -> Path {
        self.epoch_dir(query, file.epoch.unwrap_or(epoch))
            .join(file.file.as_str())
    }

    /// Where the state files `manifest` names are.
    fn named_files(&self, query: &str, manifest: &Manifest) -> std::collections::HashSet<Path> {
        manifest
            .state
            .iter()
            .map(|f| self.state_path(query, manifest.epoch, f))
            .collect()
    }

    /// Reads a state file named by epoch `epoch`'s manifest.
    pub(crate) async fn read_state(
        &self,
        query: &str,
        epoch: u64,
        file: &StateFile,
    ) -> Result<Vec<RecordBatch>> {
        let path = self.state_path(query, epoch, file);
        let bytes = self
            .store
            .get(&path)
            .await
            .map_err(|e| self.failed(&format!("cannot read state file {path}"), e))?
            .bytes()
            .await
            .map_err(|e| self.failed(&format!("cannot read state file {path}"), e))?;
        let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(|e| self.failed(&format!("state file {path} is corrupt"), e))?;
        reader
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.failed(&format!("state file {path} is corrupt"), e))
    }

    pub(crate) async fn write_manifest(&self, manifest: &Manifest) -> Result<()> {
        let path = self
            .epoch_dir(&manifest.query, manifest.epoch)
            .join("manifest.json");
        let bytes = serde_json::to_vec_pretty(manifest)
            .map_err(|e| EngineError::internal(format!("a manifest does not serialize: {e}")))?;
        // The manifest, the epoch's directory and the query's: the epoch is durable before its
        // offsets are committed.
        self.put(&path, bytes, 3).await
    }

    /// The manifest of an epoch, if it was written.
    pub(crate) async fn read_manifest(&self, query: &str, epoch: u64) -> Result<Option<Manifest>> {
        let path = self.epoch_dir(query, epoch).join("manifest.json");
        let bytes = match self.store.get(&path).await {
            Ok(got) => got
                .bytes()
                .await
                .map_err(|e| self.failed(&format!("cannot read {path}"), e))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.failed(&format!("cannot read {path}"), e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| self.failed(&format!("{path} is corrupt"), e))
    }

    /// The epochs with a directory (complete or not), oldest first.
    pub(crate) async fn epochs(&self, query: &str) -> Result<Vec<u64>> {
        let dir = self.query_dir(query);
        let listing = self
            .store
            .list_with_delimiter(Some(&dir))
            .await
            .map_err(|e| self.failed(&format!("cannot list {dir}"), e))?;
        let mut epochs: Vec<u64> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename()?.strip_prefix("epoch-")?.parse().ok())
            .collect();
        epochs.sort_unstable();
        Ok(epochs)
    }

    /// Deletes every epoch below `keep_from`, but for the files in `keep` (state files that
    /// later manifests name).
    pub(crate) async fn prune(
        &self,
        query: &str,
        keep_from: u64,
        keep: &std::collections::HashSet<Path>,
    ) -> Result<()> {
        for epoch in self.epochs(query).await? {
            if epoch >= keep_from {
                break;
            }
            let dir = self.epoch_dir(query, epoch);
            let files: Vec<_> = self
                .store
                .list(Some(&dir))
                .try_collect()
                .await
                .map_err(|e| self.failed(&format!("cannot list {dir}"), e))?;
            for f in files.iter().filter(|f| !keep.contains(&f.location)) {
                match self.store.delete(&f.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => {
                        return Err(self.failed(&format!("cannot delete {}", f.location), e));
                    }
                }
            }
            // Object stores have no directories; a local one does, and an epoch's would be
            // left behind empty, one more for every listing to walk.
            if let Some(local) = &self.local
                && let Ok(path) = local.path_to_filesystem(&dir)
            {
                // Not empty while it holds kept files: it goes at a later prune.
                let _ = tokio::fs::remove_dir(path).await;
            }
        }
        Ok(())
    }
}

/// When and how a query checkpoints (see the module docs).
#[derive(Debug, Clone)]
pub struct CheckpointConfig {
    pub storage: CheckpointStorage,
    /// Time between two checkpoints; with exactly-once, also how long results wait before
    /// `read_committed` readers see them.
    pub interval: Duration,
    pub guarantee: Guarantee,
    /// Exactly-once: the transaction timeout; a transaction open longer (its query hung or
    /// died) is aborted by the broker. Must exceed the interval.
    pub transaction_timeout: Duration,
}

impl CheckpointConfig {
    /// Exactly-once output, a checkpoint every second (Kafka Streams commits every 100 ms
    /// under exactly-once; a second amortizes the fsyncs of a commit over more output).
    pub fn exactly_once(storage: CheckpointStorage) -> CheckpointConfig {
        CheckpointConfig {
            storage,
            interval: Duration::from_secs(1),
            guarantee: Guarantee::ExactlyOnce,
            transaction_timeout: Duration::from_secs(60),
        }
    }

    /// At-least-once output, a checkpoint every 5 seconds.
    pub fn at_least_once(storage: CheckpointStorage) -> CheckpointConfig {
        CheckpointConfig {
            storage,
            interval: Duration::from_secs(5),
            guarantee: Guarantee::AtLeastOnce,
            transaction_timeout: Duration::from_secs(60),
        }
    }

    pub fn with_interval(mut self, interval: Duration) -> CheckpointConfig {
        self.interval = interval;
        self
    }

    pub fn with_transaction_timeout(mut self, timeout: Duration) -> CheckpointConfig {
        self.transaction_timeout = timeout;
        self
    }
}

/// One operator's state of one task in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StateFile {
    pub operator: String,
    pub task: usize,
    /// The file's name in the epoch's directory.
    pub file: String,
    pub rows: usize,
    /// The epoch whose directory holds the file, when it is an earlier one's: a task whose
    /// state had not changed since that checkpoint names its file again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// A task's watermark at a barrier: a restored task starts from it, so rows that were late
/// before the checkpoint are late after it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TaskWatermark {
    pub stage: usize,
    pub task: usize,
    pub watermark: i64,
}

/// Source positions: per topic (or, for sources without offsets, per stream name), each
/// partition's next offset.
pub(crate) type Positions = BTreeMap<String, BTreeMap<i32, i64>>;

/// What a complete checkpoint holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub query: String,
    pub epoch: u64,
    pub parallelism: usize,
    /// Each source topic's partitions' next offsets.
    pub positions: Positions,
    /// Each task's watermark.
    pub watermarks: Vec<TaskWatermark>,
    pub state: Vec<StateFile>,
    pub created_ms: i64,
}

/// The offsets' metadata that names the epoch they belong to.
const EPOCH_METADATA: &str = "quiver.epoch=";

/// The cluster a query's source offsets are committed to (its source's), where its
/// exactly-once transaction runs.
#[derive(Debug, Clone)]
pub enum Cluster {
    /// The in-process broker.
    Local(Broker),
    /// An external Kafka-compatible cluster.
    Remote(KafkaCluster),
}

impl Cluster {
    /// How it is named in messages: `the in-process broker`, `cluster host:9092`.
    pub fn describe(&self) -> String {
        match self {
            Cluster::Local(_) => "the in-process broker".into(),
            Cluster::Remote(c) => format!("cluster {}", c.bootstrap()),
        }
    }

    /// Identifies the cluster, so queries can tell whether two sources are on the same one.
    pub fn id(&self) -> String {
        match self {
            Cluster::Local(broker) => format!("local:{}", broker.cluster_id()),
            Cluster::Remote(c) => format!("remote:{}", c.bootstrap()),
        }
    }

    /// Takes over the transactional id `id` on this cluster (fencing every older holder and
    /// aborting what it left open) and returns its producer, ready for a first transaction.
    pub async fn transaction(&self, id: &str, timeout: Duration) -> Result<Transaction> {
        match self {
            Cluster::Local(broker) => {
                let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
                let producer = broker.transactional_producer(id, timeout_ms).await?;
                // A transaction the previous instance committed may still be writing its
                // markers: its offsets become readable once they are durable.
                producer.wait_completed().await?;
                Ok(Transaction::Local(producer))
            }
            Cluster::Remote(c) => {
                let producer = quiver_kafka_client::TransactionalProducer::new(
                    c.client().clone(),
                    id,
                    timeout,
                )
                .await?;
                Ok(Transaction::Remote {
                    bootstrap: c.bootstrap().to_owned(),
                    producer,
                })
            }
        }
    }

    /// The group's committed offsets (with their metadata) for `topics`, by topic and
    /// partition; `None` while some wait in an open transaction.
    pub async fn committed(
        &self,
        group: &str,
        topics: &[String],
    ) -> Result<Option<BTreeMap<(String, i32), (i64, String)>>> {
        let mut out = BTreeMap::new();
        match self {
            Cluster::Local(broker) => {
                for (t, partition, offset) in
                    broker.groups().fetch_offsets_checked(group, None, true)
                {
                    if !topics.contains(&t) {
                        continue;
                    }
                    match offset {
                        Ok(Some(o)) => {
                            out.insert((t, partition), (o.offset, o.metadata.clone()));
                        }
                        Ok(None) => {}
                        Err(_) => return Ok(None),
                    }
                }
            }
            Cluster::Remote(c) => {
                let offsets = match c.client().offset_fetch_stable(group, None).await {
                    Ok(offsets) => offsets,
                    Err(quiver_kafka_client::ClientError::Api { error, .. })
                        if error.error == ResponseError::UnstableOffsetCommit =>
                    {
                        return Ok(None);
                    }
                    Err(e) => return Err(e.into()),
                };
                for o in offsets {
                    if !topics.contains(&o.topic) {
                        continue;
                    }
                    if let Some(e) = o.error {
                        if e.error == ResponseError::UnstableOffsetCommit {
                            return Ok(None);
                        }
                        return Err(EngineError::Checkpoint(format!(
                            "cannot read the committed offset of group '{group}' for \
                             {}-{}: {e}",
                            o.topic, o.partition
                        )));
                    }
                    if let Some(offset) = o.offset {
                        out.insert(
                            (o.topic, o.partition),
                            (offset, o.metadata.unwrap_or_default()),
                        );
                    }
                }
            }
        }
        Ok(Some(out))
    }

    /// Commits offsets outside a transaction (at-least-once).
    pub async fn commit_offsets(&self, group: &str, offsets: &[OffsetCommitEntry]) -> Result<()> {
        let refused = |what: String| {
            EngineError::Checkpoint(format!(
                "{} refused the offsets of group '{group}': {what}",
                self.describe()
            ))
        };
        match self {
            Cluster::Local(broker) => {
                let codes = broker
                    .groups()
                    .commit_offsets(OffsetCommit {
                        group_id: group.to_owned(),
                        generation_id: -1,
                        member_id: String::new(),
                        group_instance_id: None,
                        retention_ms: None,
                        offsets: offsets.to_vec(),
                    })
                    .await;
                if let Some(code) = codes.iter().find(|&&c| c != 0) {
                    return Err(refused(format!("error code {code}")));
                }
            }
            Cluster::Remote(c) => {
                let list: Vec<(&str, i32, i64, &str)> = offsets
                    .iter()
                    .map(|o| (o.topic.as_str(), o.partition, o.offset, o.metadata.as_str()))
                    .collect();
                for (topic, partition, result) in
                    c.client().offset_commit_with_metadata(group, &list).await?
                {
                    if let Err(e) = result {
                        return Err(refused(format!("{topic}-{partition}: {e}")));
                    }
                }
            }
        }
        Ok(())
    }
}

/// An exactly-once query's open transaction, on its source's cluster.
#[derive(Debug)]
pub enum Transaction {
    Local(TransactionalProducer),
    Remote {
        bootstrap: String,
        producer: quiver_kafka_client::TransactionalProducer,
    },
}

impl Transaction {
    /// Appends an envelope batch to a partition in the open transaction.
    pub async fn append(&mut self, topic: &str, partition: i32, batch: &RecordBatch) -> Result<()> {
        match self {
            Transaction::Local(p) => {
                p.append(topic, partition, batch).await?;
            }
            Transaction::Remote { producer, .. } => {
                producer.send(topic, partition, batch).await?;
            }
        }
        Ok(())
    }

    /// The bootstrap servers of its cluster; `None` for the in-process broker.
    pub fn bootstrap(&self) -> Option<&str> {
        match self {
            Transaction::Local(_) => None,
            Transaction::Remote { bootstrap, .. } => Some(bootstrap),
        }
    }

    async fn send_offsets(&mut self, group: &str, offsets: &[OffsetCommitEntry]) -> Result<()> {
        match self {
            Transaction::Local(p) => p.send_offsets(group, offsets).await?,
            Transaction::Remote { producer, .. } => {
                let offsets: Vec<quiver_kafka_client::TxnOffset> = offsets
                    .iter()
                    .map(|o| quiver_kafka_client::TxnOffset {
                        topic: o.topic.clone(),
                        partition: o.partition,
                        offset: o.offset,
                        metadata: o.metadata.clone(),
                    })
                    .collect();
                producer.send_offsets(group, &offsets).await?;
            }
        }
        Ok(())
    }

    /// Commits; with `wait`, returns once the result is visible to readers (in-process: a
    /// remote commit returns once the coordinator has decided, and a reader that asks for
    /// stable offsets waits out the markers).
    pub async fn commit(&mut self, wait: bool) -> Result<()> {
        match self {
            Transaction::Local(p) if wait => p.commit_and_wait().await?,
            Transaction::Local(p) => p.commit().await?,
            Transaction::Remote { producer, .. } => producer.commit().await?,
        }
        Ok(())
    }
}

/// The transaction shared by a query's topic sinks under exactly-once.
#[derive(Debug, Clone)]
pub struct SharedTransaction {
    bootstrap: Option<String>,
    inner: Arc<tokio::sync::Mutex<Transaction>>,
}

impl SharedTransaction {
    fn new(txn: Transaction) -> SharedTransaction {
        SharedTransaction {
            bootstrap: txn.bootstrap().map(str::to_owned),
            inner: Arc::new(tokio::sync::Mutex::new(txn)),
        }
    }

    /// The bootstrap servers of its cluster; `None` for the in-process broker. A sink writes
    /// through it only to topics of that cluster.
    pub fn bootstrap(&self) -> Option<&str> {
        self.bootstrap.as_deref()
    }

    /// Appends an envelope batch to a partition in the open transaction.
    pub async fn append(&self, topic: &str, partition: i32, batch: &RecordBatch) -> Result<()> {
        self.inner
            .lock()
            .await
            .append(topic, partition, batch)
            .await
    }
}

/// A query's checkpointing, driven by its sink task.
#[derive(Debug)]
pub(crate) struct Checkpointing {
    pub config: CheckpointConfig,
    pub query: String,
    /// The source topics, whose offsets are committed.
    pub topics: Vec<String>,
    pub parallelism: usize,
    cluster: Cluster,
    /// Exactly-once: the open transaction.
    pub transaction: Option<SharedTransaction>,
    /// The checkpoint restored at start, if any.
    pub restored: Option<Manifest>,
    /// The state files the last manifest written (or restored) names: pruning keeps them.
    named: parking_lot::Mutex<std::collections::HashSet<Path>>,
}

impl Checkpointing {
    /// Takes over the query's transactional id (exactly-once), then finds the checkpoint to
    /// restore (see the module docs).
    pub async fn start(
        config: CheckpointConfig,
        query: &str,
        topics: Vec<String>,
        parallelism: usize,
        cluster: Cluster,
    ) -> Result<Checkpointing> {
        if config.interval.is_zero() {
            return Err(EngineError::config(
                "the checkpoint interval must be above zero",
            ));
        }
        let transaction = match config.guarantee {
            Guarantee::ExactlyOnce => {
                if config.transaction_timeout <= config.interval {
                    return Err(EngineError::config(format!(
                        "the transaction timeout ({:?}) must exceed the checkpoint interval \
                         ({:?})",
                        config.transaction_timeout, config.interval
                    )));
                }
                let txn = cluster
                    .transaction(query, config.transaction_timeout)
                    .await?;
                Some(SharedTransaction::new(txn))
            }
            Guarantee::AtLeastOnce => None,
        };
        let restored = recover(&config.storage, &cluster, query, &topics).await?;
        if let Some(m) = &restored {
            tracing::info!(
                query = %query,
                epoch = m.epoch,
                state_files = m.state.len(),
                "restoring the query from its checkpoint"
            );
        }
        let named = parking_lot::Mutex::new(
            restored
                .as_ref()
                .map(|m| config.storage.named_files(query, m))
                .unwrap_or_default(),
        );
        Ok(Checkpointing {
            named,
            config,
            query: query.to_owned(),
            topics,
            parallelism,
            cluster,
            transaction,
            restored,
        })
    }

    /// The epoch after the restored one.
    pub fn first_epoch(&self) -> u64 {
        self.restored.as_ref().map_or(1, |m| m.epoch + 1)
    }

    /// Steps 3–5 of the protocol for a barrier that reached the sink task (sinks flushed);
    /// `last` for the barrier of a stop.
    pub async fn complete(
        &self,
        epoch: u64,
        positions: Positions,
        watermarks: Vec<TaskWatermark>,
        state: Vec<StateFile>,
        last: bool,
    ) -> Result<()> {
        let manifest = Manifest {
            query: self.query.clone(),
            epoch,
            parallelism: self.parallelism,
            positions,
            watermarks,
            state,
            created_ms: quiver_broker::now_ms(),
        };
        self.config.storage.write_manifest(&manifest).await?;
        let offsets: Vec<OffsetCommitEntry> = manifest
            .positions
            .iter()
            .filter(|(topic, _)| self.topics.contains(topic))
            .flat_map(|(topic, partitions)| {
                partitions
                    .iter()
                    .map(move |(&partition, &offset)| OffsetCommitEntry {
                        topic: topic.clone(),
                        partition,
                        offset,
                        leader_epoch: -1,
                        metadata: format!("{EPOCH_METADATA}{epoch}"),
                    })
            })
            .collect();
        match &self.transaction {
            Some(txn) => {
                let mut txn = txn.inner.lock().await;
                txn.send_offsets(&self.query, &offsets).await?;
                // A stopped query's output and offsets are visible when the stop returns.
                txn.commit(last).await?;
            }
            None => self.cluster.commit_offsets(&self.query, &offsets).await?,
        }
        // What this manifest and the one before it name stays; the rest of older epochs goes.
        let named = self.config.storage.named_files(&self.query, &manifest);
        let mut keep = std::mem::replace(&mut *self.named.lock(), named.clone());
        keep.extend(named);
        if epoch >= 2 {
            self.config
                .storage
                .prune(&self.query, epoch - 1, &keep)
                .await?;
        }
        Ok(())
    }
}

/// The checkpoint the group's committed offsets name, if any (see the module docs).
async fn recover(
    storage: &CheckpointStorage,
    cluster: &Cluster,
    query: &str,
    topics: &[String],
) -> Result<Option<Manifest>> {
    let mut tries = 0;
    let committed = loop {
        if let Some(committed) = cluster.committed(query, topics).await? {
            break committed;
        }
        tries += 1;
        if tries > 100 {
            return Err(EngineError::Checkpoint(format!(
                "the committed offsets of group '{query}' stay in an open transaction; \
                 retry once it ends"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if committed.is_empty() {
        return Ok(None);
    }
    let mut epoch = None;
    for ((topic, partition), (_, metadata)) in &committed {
        let e = metadata
            .strip_prefix(EPOCH_METADATA)
            .and_then(|e| e.parse::<u64>().ok())
            .ok_or_else(|| {
                EngineError::Checkpoint(format!(
                    "group '{query}' has an offset for {topic}-{partition} that no checkpoint \
                     of query '{query}' committed (metadata '{metadata}'); delete the group's \
                     offsets or give the query another name"
                ))
            })?;
        if epoch.is_some_and(|seen| seen != e) {
            return Err(EngineError::Checkpoint(format!(
                "the offsets of group '{query}' name different checkpoints; delete the \
                 group's offsets to start over"
            )));
        }
        epoch = Some(e);
    }
    let Some(epoch) = epoch else { return Ok(None) };
    let Some(manifest) = storage.read_manifest(query, epoch).await? else {
        return Err(EngineError::Checkpoint(format!(
            "group '{query}' committed checkpoint {epoch}, but its manifest is missing from \
             {storage:?}; the query's state is lost (restore the checkpoint files, or delete \
             the group's offsets to start over)"
        )));
    };
    for ((topic, partition), (offset, _)) in &committed {
        if manifest.positions.get(topic).and_then(|p| p.get(partition)) != Some(offset) {
            return Err(EngineError::Checkpoint(format!(
                "checkpoint {epoch} of query '{query}' does not match the offset committed for \
                 {topic}-{partition} ({offset})"
            )));
        }
    }
    Ok(Some(manifest))
}
