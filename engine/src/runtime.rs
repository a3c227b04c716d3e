//! Running queries. A [`Query`] (a planned `LogicalPlan` with its sinks) runs as tasks across
//! the tokio runtime, so one query uses every core:
//!
//! ```text
//! source split 0 ─ stateless ops ─┐ keyed exchange ┌─ aggregate ─ ops ─┐
//! source split 1 ─ stateless ops ─┼───────────────-┼─ aggregate ─ ops ─┼─▶ sink task ─▶ sinks
//! …  (parallelism tasks)          ┘ (hash of keys) └─ …                ┘
//! ```
//!
//! - **Stages**: the operator chain is cut before each operator that needs its rows grouped by
//!   key ([`Operator::partition_keys`]); each stage runs as [`QueryOptions::parallelism`]
//!   tasks. The first stage's tasks each read a split of the source's partitions.
//! - **Time**: a source task's watermark is the minimum over its partitions; a task after an
//!   exchange takes the minimum over its inputs. Batches run through a task's operators with
//!   the watermark as it was; when it moves, operators emit what it closes, then it is passed
//!   on. A bounded source that ends sends the end of time, so every window closes.
//! - **Barriers**: the sink task asks the source tasks to inject a barrier; tasks align it over
//!   their inputs and pass it on, so when it reaches the sink task, every result of the records
//!   before it has been written. A stop is such a barrier, marked last: the sinks are flushed
//!   and closed after it, so a graceful stop loses nothing read before it.
//! - **Side outputs** (records that do not decode, rows that arrive after their window closed)
//!   travel with the data to the sink task, which logs them and writes them to the dead-letter
//!   and late-data topics when set.
//! - **Failure**: the first task to fail fails the query and stops the others.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, RecordBatch};
use parking_lot::Mutex;
use quiver_broker::{Broker, Record};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use std::collections::BTreeMap;

use quiver_broker::PartitionSplit;
use tokio::sync::mpsc;

use crate::checkpoint::{
    CheckpointConfig, CheckpointStorage, Checkpointing, Cluster, Manifest, Positions,
    SharedTransaction, StateFile, TaskWatermark,
};
use crate::error::{EngineError, Result};
use crate::exchange::{Barrier, CHANNEL_CAPACITY, Event, Inputs, Message, Output, Route, Side};
use crate::format::{BadRecord, Format, SideEncoder};
use crate::operator::{LateRows, Operator, OperatorMetrics, advance_chain, run_chain, run_input};
use crate::plan::{PhysicalQuery, PlanOptions, QuerySource, plan_query};
use crate::sink::Sink;
use crate::source::{SourcePoll, SourceReader};
use crate::store::TableStore;

/// Options of one query.
#[derive(Debug, Clone)]
pub struct QueryOptions {
    /// How windowed aggregations emit (EMIT CHANGES or EMIT FINAL).
    pub plan: PlanOptions,
    /// How long a poll waits for records before the runtime looks at time and stop requests.
    pub poll_wait: Duration,
    /// Tasks per stage: the source's partitions are split between this many tasks, and rows
    /// are exchanged by key between as many before each aggregation. Defaults to the number of
    /// CPUs.
    pub parallelism: usize,
    /// Undecodable records go to this topic (with the reason in headers), if set.
    pub dead_letter_topic: Option<String>,
    /// Rows that arrive after their window closed go to this topic, if set; otherwise they are
    /// counted and dropped. A late record's value is a JSON object of the columns the
    /// aggregation reads (its keys, arguments and event time), with the reason and the
    /// operator in headers.
    pub late_data_topic: Option<String>,
    /// Checkpoints and their guarantee (see [`crate::checkpoint`]); none by default, when a
    /// restarted query starts over from its source's start position.
    pub checkpoint: Option<CheckpointConfig>,
    /// The most memory the query's operator state may hold, over all its tasks (estimated
    /// about once a second, see [`Operator::state_bytes`]). A query past it fails with
    /// [`EngineError::StateLimit`] rather than exhausting the process's memory (and the
    /// broker's with it); a checkpointing query then restarts from its last checkpoint once
    /// given more, or once changed to keep less (a window, fewer keys). 4 GiB by default.
    pub max_state_bytes: u64,
}

impl Default for QueryOptions {
    fn default() -> Self {
        QueryOptions {
            plan: PlanOptions::default(),
            poll_wait: Duration::from_millis(100),
            parallelism: std::thread::available_parallelism().map_or(1, |n| n.get()),
            dead_letter_topic: None,
            late_data_topic: None,
            checkpoint: None,
            max_state_bytes: 4 << 30,
        }
    }
}

/// A query ready to start: its plan, sinks (each gets every result) and options.
#[derive(Debug)]
pub struct Query {
    pub name: String,
    pub physical: PhysicalQuery,
    pub sinks: Vec<Box<dyn Sink>>,
    pub options: QueryOptions,
}

impl Query {
    /// Plans `plan` (see [`crate::plan`]) to write to `sinks`.
    pub fn new(
        name: impl Into<String>,
        plan: &datafusion::logical_expr::LogicalPlan,
        sinks: Vec<Box<dyn Sink>>,
        options: QueryOptions,
    ) -> Result<Query> {
        if sinks.is_empty() {
            return Err(EngineError::config("a query needs at least one sink"));
        }
        Ok(Query {
            name: name.into(),
            physical: plan_query(plan, options.plan)?,
            sinks,
            options,
        })
    }

    /// One line per stage: source, operators with their names, sink.
    pub fn describe(&self) -> String {
        let mut out = format!("Query {}\n", self.name);
        for s in &self.physical.sources {
            out.push_str(&format!("  Source: {} ({})\n", s.name, s.source.describe()));
        }
        for s in &self.physical.stores {
            out.push_str(&format!(
                "  Store: {} (keyed by {})\n",
                s.name(),
                s.key().join(", ")
            ));
        }
        for op in &self.physical.operators {
            out.push_str(&format!("  --> {}\n", op.name()));
        }
        for sink in &self.sinks {
            out.push_str(&format!("  Sink: {}\n", sink.describe()));
        }
        out
    }
}

/// What a query has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryMetrics {
    /// Records read and decoded.
    pub records_in: u64,
    /// Records that did not decode.
    pub bad_records: u64,
    /// Tombstones skipped by the source.
    pub skipped_records: u64,
    /// Rows written to the sink.
    pub rows_out: u64,
    /// Rows that arrived after their window closed.
    pub late_rows: u64,
    /// Checkpoints completed.
    pub checkpoints: u64,
    /// The current watermark, once there is one.
    pub watermark: Option<i64>,
    /// The memory operator state holds, estimated (see [`QueryOptions::max_state_bytes`]).
    pub state_bytes: u64,
    /// Each operator's counters, by name.
    pub operators: Vec<(String, OperatorMetrics)>,
}

/// Starts queries. With a broker, dead-letter and late-data topics can be written. The
/// stores of the tables its queries materialize are found by name ([`Runtime::store`]).
#[derive(Debug, Clone, Default)]
pub struct Runtime {
    broker: Option<Broker>,
    stores: Arc<Mutex<BTreeMap<String, TableStore>>>,
}

impl Runtime {
    /// A runtime for queries that use `broker` for side outputs.
    pub fn new(broker: &Broker) -> Runtime {
        Runtime {
            broker: Some(broker.clone()),
            stores: Arc::default(),
        }
    }

    /// A runtime without a broker (memory sources and collectors only).
    pub fn without_broker() -> Runtime {
        Runtime::default()
    }

    /// Starts `query` as a task; fails at once if a side-output topic is missing, or if it
    /// checkpoints and its checkpoint cannot be restored.
    pub async fn start(&self, query: Query) -> Result<QueryHandle> {
        for topic in [
            &query.options.dead_letter_topic,
            &query.options.late_data_topic,
        ]
        .into_iter()
        .flatten()
        {
            let Some(broker) = &self.broker else {
                return Err(EngineError::config(format!(
                    "the side-output topic '{topic}' needs a runtime with a broker"
                )));
            };
            broker.partition_count(topic)?;
        }
        {
            let stores = self.stores.lock();
            for store in &query.physical.stores {
                if let Some(other) = stores.get(store.name())
                    && other != store
                {
                    return Err(EngineError::config(format!(
                        "a store named '{}' is already served by this runtime; give the table \
                         another name",
                        store.name()
                    )));
                }
            }
        }
        let checkpointing = prepare_checkpointing(checkpoint_plan(&query)?).await?;
        self.stores.lock().extend(
            query
                .physical
                .stores
                .iter()
                .map(|s| (s.name().to_owned(), s.clone())),
        );
        let stores = query.physical.stores.clone();
        let (stop_tx, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared::default());
        let name = query.name.clone();
        let task = tokio::spawn(run(
            query,
            checkpointing,
            self.broker.clone(),
            stop_rx,
            shared.clone(),
        ));
        Ok(QueryHandle {
            name,
            stop: stop_tx,
            task,
            shared,
            stores,
        })
    }

    /// The store named `name` of a table a query of this runtime materializes
    /// ([`crate::dsl::Table::materialize`]), for interactive queries.
    pub fn store(&self, name: &str) -> Option<TableStore> {
        self.stores.lock().get(name).cloned()
    }

    /// The names of the stores its queries materialize.
    pub fn stores(&self) -> Vec<String> {
        self.stores.lock().keys().cloned().collect()
    }
}

/// A running query.
#[derive(Debug)]
pub struct QueryHandle {
    name: String,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<()>>,
    shared: Arc<Shared>,
    stores: Vec<TableStore>,
}

impl QueryHandle {
    /// The stores of the tables it materializes.
    pub fn stores(&self) -> &[TableStore] {
        &self.stores
    }

    /// The query's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its counters now.
    pub fn metrics(&self) -> QueryMetrics {
        self.shared.snapshot()
    }

    /// Whether it has ended (its source finished, it failed, or it was stopped).
    /// Whether every task has started with its state restored from the checkpoint: from then
    /// on the query's stores hold at least what it had emitted when the checkpoint was taken.
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops it gracefully (the sink is flushed and closed) and returns its final counters, or
    /// the error it failed with.
    pub async fn stop(self) -> Result<QueryMetrics> {
        let _ = self.stop.send(true);
        self.wait().await
    }

    /// Ends it at once, as a crash would: no last checkpoint, sinks not flushed. A
    /// checkpointing query restarts from its last checkpoint; under exactly-once, its open
    /// transaction is aborted when the next instance starts (or when it times out).
    pub fn abort(self) {
        self.task.abort();
    }

    /// Waits for it to end by itself (a bounded source) and returns its final counters.
    pub async fn wait(self) -> Result<QueryMetrics> {
        match self.task.await {
            Ok(result) => result.map(|()| self.shared.snapshot()),
            Err(e) => Err(EngineError::internal(format!(
                "query '{}' panicked or was cancelled: {e}",
                self.name
            ))),
        }
    }
}

/// Shared between a query's tasks and its handle.
#[derive(Debug, Default)]
struct Shared {
    metrics: Mutex<QueryMetrics>,
    /// Operator counters per (operator, task), summed by name for [`QueryMetrics`].
    operators: Mutex<BTreeMap<(String, usize), OperatorMetrics>>,
    /// The state bytes each task (stage, task) last measured.
    state: Mutex<BTreeMap<(usize, usize), u64>>,
    /// Every task has started, its state restored from the checkpoint (if any).
    ready: std::sync::atomic::AtomicBool,
}

/// A task's measure of its operators' state against the query's limit (see
/// [`QueryOptions::max_state_bytes`]).
#[derive(Debug)]
struct StateMeter {
    query: String,
    stage: usize,
    task: usize,
    limit: u64,
    next: std::time::Instant,
}

impl StateMeter {
    const EVERY: Duration = Duration::from_secs(1);

    fn new(query: &str, stage: usize, task: usize, limit: u64) -> StateMeter {
        StateMeter {
            query: query.to_owned(),
            stage,
            task,
            limit,
            next: std::time::Instant::now(),
        }
    }

    /// Measures the task's state (at most once per [`StateMeter::EVERY`]) and fails when the
    /// query's total is past its limit.
    fn check(&mut self, shared: &Shared, ops: &[Box<dyn Operator>]) -> Result<()> {
        let now = std::time::Instant::now();
        if now < self.next {
            return Ok(());
        }
        self.next = now + Self::EVERY;
        self.check_now(shared, ops)
    }

    /// Measures now (when the task's input has ended, so a short query is held to the limit
    /// too).
    fn check_now(&mut self, shared: &Shared, ops: &[Box<dyn Operator>]) -> Result<()> {
        let mine: u64 = ops.iter().map(|op| op.state_bytes() as u64).sum();
        let total: u64 = {
            let mut state = shared.state.lock();
            state.insert((self.stage, self.task), mine);
            state.values().sum()
        };
        shared.metrics.lock().state_bytes = total;
        if total <= self.limit {
            return Ok(());
        }
        let largest = ops
            .iter()
            .max_by_key(|op| op.state_bytes())
            .map_or("?", |op| op.name());
        Err(EngineError::StateLimit(format!(
            "query '{}' holds {total} bytes of operator state (this task's largest: \
             '{largest}'), past its limit of {} bytes; raise QueryOptions::max_state_bytes, or \
             keep less state: a window instead of an updating aggregate, or keys with fewer \
             distinct values",
            self.query, self.limit
        )))
    }
}

impl Shared {
    fn report(&self, task: usize, operators: &[Box<dyn Operator>]) {
        let mut map = self.operators.lock();
        for op in operators {
            map.insert((op.name().to_owned(), task), op.metrics());
        }
    }

    fn snapshot(&self) -> QueryMetrics {
        let mut m = self.metrics.lock().clone();
        let mut by_name: Vec<(String, OperatorMetrics)> = Vec::new();
        for ((name, _), om) in self.operators.lock().iter() {
            match by_name.iter_mut().find(|(n, _)| n == name) {
                Some((_, sum)) => {
                    sum.rows_in += om.rows_in;
                    sum.rows_out += om.rows_out;
                    sum.late_rows += om.late_rows;
                    sum.groups += om.groups;
                }
                None => by_name.push((name.clone(), *om)),
            }
        }
        m.operators = by_name;
        m
    }
}

/// A request to the source tasks to inject a barrier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct BarrierRequest {
    epoch: u64,
    stop: bool,
}

/// Takes over the query's transactional id and finds its checkpoint, so a query that cannot
/// restore is refused before it starts.
async fn prepare_checkpointing(plan: Option<CheckpointPlan>) -> Result<Option<Checkpointing>> {
    let Some((config, name, topics, parallelism, cluster, operators)) = plan else {
        return Ok(None);
    };
    let c = Checkpointing::start(config, &name, topics, parallelism, cluster).await?;
    if let Some(m) = &c.restored {
        if m.parallelism != parallelism {
            tracing::info!(
                query = %name,
                from = m.parallelism,
                to = parallelism,
                "rescaling: the checkpoint's state is split between the tasks by key"
            );
        }
        if let Some(f) = m.state.iter().find(|f| !operators.contains(&f.operator)) {
            return Err(EngineError::Checkpoint(format!(
                "checkpoint {} of query '{name}' holds state of operator '{}', which the query \
                 no longer has; a changed query needs a new name",
                m.epoch, f.operator
            )));
        }
    }
    Ok(Some(c))
}

/// What checkpointing a query needs: its config, name, topics, parallelism, cluster and the
/// names of its operators.
type CheckpointPlan = (
    CheckpointConfig,
    String,
    Vec<String>,
    usize,
    Cluster,
    Vec<String>,
);

/// A query's [`CheckpointPlan`], `None` when it does not checkpoint. Taken before anything
/// awaits: a `Query` holds sinks and operators, which need not be `Sync`, and the future of
/// [`Runtime::start`] must be `Send` (a server starts queries from its request tasks).
fn checkpoint_plan(query: &Query) -> Result<Option<CheckpointPlan>> {
    let Some(config) = &query.options.checkpoint else {
        return Ok(None);
    };
    let name = &query.name;
    let parallelism = query.options.parallelism.max(1);
    let mut topics: Vec<String> = Vec::new();
    let mut cluster: Option<Cluster> = None;
    for s in &query.physical.sources {
        let (Some(topic), Some(on)) = (s.source.topic(), s.source.cluster()) else {
            return Err(EngineError::config(format!(
                "the source {} has no offsets to checkpoint; checkpoints need topic sources",
                s.source.describe()
            )));
        };
        if topics.iter().any(|t| t == topic) {
            return Err(EngineError::config(format!(
                "query '{name}' reads topic '{topic}' twice; a checkpoint commits one offset per \
                 partition, so read it once and split the stream (branch) instead"
            )));
        }
        if let Some(first) = &cluster
            && first.id() != on.id()
        {
            return Err(EngineError::config(format!(
                "query '{name}' reads topics of {} and of {}; its offsets commit to one \
                 cluster, so read both from one (copy one topic over first)",
                first.describe(),
                on.describe()
            )));
        }
        topics.push(topic.to_owned());
        cluster.get_or_insert(on);
    }
    let Some(cluster) = cluster else {
        return Err(EngineError::config(format!(
            "query '{name}' has no source to checkpoint"
        )));
    };
    let operators = query
        .physical
        .operators
        .iter()
        .map(|op| op.name().to_owned())
        .collect();
    Ok(Some((
        config.clone(),
        name.clone(),
        topics,
        parallelism,
        cluster,
        operators,
    )))
}

/// Starts the tasks of `query` and waits for them (see the module docs): the first error of
/// any task fails the query and stops the rest.
async fn run(
    query: Query,
    checkpointing: Option<Checkpointing>,
    broker: Option<Broker>,
    stop: watch::Receiver<bool>,
    shared: Arc<Shared>,
) -> Result<()> {
    let Query {
        name,
        physical,
        sinks,
        options,
    } = query;
    let parallelism = options.parallelism.max(1);
    let restored = checkpointing.as_ref().and_then(|c| c.restored.clone());
    let task_checkpoint = checkpointing.as_ref().map(|c| TaskCheckpoint {
        storage: c.config.storage.clone(),
        query: name.clone(),
    });
    // Stages: the source's stage, then one starting at each operator that needs an exchange.
    let mut stages: Vec<Vec<Box<dyn Operator>>> = vec![Vec::new()];
    let mut routes: Vec<Route> = Vec::new();
    for op in physical.operators {
        if let Some(keys) = op.partition_keys() {
            routes.push(if keys.is_empty() {
                Route::First
            } else {
                Route::Hash(keys)
            });
            stages.push(Vec::new());
        }
        if let Some(stage) = stages.last_mut() {
            stage.push(op);
        }
    }
    routes.push(Route::First);

    let (request_tx, request_rx) = watch::channel(BarrierRequest::default());
    let mut tasks = tokio::task::JoinSet::new();
    // Channels into each stage after the first: receivers[stage-1][task][upstream task].
    let mut receivers: Vec<Vec<Vec<mpsc::Receiver<Message>>>> = Vec::new();
    let mut senders: Vec<Vec<Vec<mpsc::Sender<Message>>>> = Vec::new();
    for stage in 0..stages.len() {
        // Downstream of `stage`: the next stage's tasks, or the one sink task.
        let downstream = if stage + 1 < stages.len() {
            parallelism
        } else {
            1
        };
        let mut rx: Vec<Vec<mpsc::Receiver<Message>>> =
            (0..downstream).map(|_| Vec::new()).collect();
        let mut tx: Vec<Vec<mpsc::Sender<Message>>> =
            (0..parallelism).map(|_| Vec::new()).collect();
        for up in tx.iter_mut() {
            for down in rx.iter_mut() {
                let (s, r) = mpsc::channel(CHANNEL_CAPACITY);
                up.push(s);
                down.push(r);
            }
        }
        senders.push(tx);
        receivers.push(rx);
    }
    let mut senders = senders.into_iter();
    let mut receivers = receivers.into_iter();
    for (stage, (template, route)) in stages.into_iter().zip(routes).enumerate() {
        let mut outs = senders.next().unwrap_or_default().into_iter();
        let mut ins = if stage == 0 {
            Vec::new()
        } else {
            receivers.next().unwrap_or_default()
        }
        .into_iter();
        for task in 0..parallelism {
            let mut ops = template
                .iter()
                .map(|op| op.fresh())
                .collect::<Result<Vec<_>>>()?;
            for op in &mut ops {
                op.assign(task, parallelism);
            }
            if let (Some(m), Some(ck)) = (&restored, &task_checkpoint) {
                restore_state(ck, m, task, parallelism, &mut ops).await?;
            }
            let output = Output::new(outs.next().unwrap_or_default(), route.clone());
            let shared = shared.clone();
            if stage == 0 {
                let split = PartitionSplit {
                    index: task as u32,
                    count: parallelism as u32,
                };
                let reader = Readers::open(&physical.sources, split, restored.as_ref()).await?;
                let watermark = restored_watermark(restored.as_ref(), stage, task, parallelism);
                tasks.spawn(source_task(SourceTask {
                    task,
                    reader,
                    ops,
                    output,
                    requests: request_rx.clone(),
                    poll_wait: options.poll_wait,
                    watermark,
                    checkpoint: task_checkpoint.clone(),
                    meter: StateMeter::new(&name, stage, task, options.max_state_bytes),
                    shared,
                }));
            } else {
                let inputs = Inputs::new(ins.next().unwrap_or_default());
                tasks.spawn(stage_task(StageTask {
                    stage,
                    task,
                    inputs,
                    ops,
                    output,
                    watermark: restored_watermark(restored.as_ref(), stage, task, parallelism),
                    checkpoint: task_checkpoint.clone(),
                    meter: StateMeter::new(&name, stage, task, options.max_state_bytes),
                    shared,
                }));
            }
        }
    }
    // Every operator's state is back: its stores answer as of the checkpoint.
    shared
        .ready
        .store(true, std::sync::atomic::Ordering::Release);
    let sink_inputs = Inputs::new(
        receivers
            .next()
            .and_then(|mut r| r.pop())
            .unwrap_or_default(),
    );
    tasks.spawn(sink_task(SinkTask {
        name,
        source_names: physical.sources.iter().map(|s| s.name.clone()).collect(),
        schema: physical.schema,
        inputs: sink_inputs,
        sinks,
        options,
        broker,
        stop,
        requests: request_tx,
        checkpointing,
        shared,
    }));
    // A task whose downstream task ended first fails with `DownstreamGone`, and may be
    // joined before the downstream task that ended it: wait for that one's own result.
    while let Some(done) = tasks.join_next().await {
        let failure = match done {
            Ok(Ok(()) | Err(EngineError::DownstreamGone)) => continue,
            Ok(Err(e)) => e,
            Err(e) => EngineError::internal(format!("a task of the query panicked: {e}")),
        };
        tasks.abort_all();
        return Err(failure);
    }
    Ok(())
}

/// Where a task writes its operators' state at a barrier.
#[derive(Debug, Clone)]
struct TaskCheckpoint {
    storage: CheckpointStorage,
    query: String,
}

/// Runs `f`, which may take a while (copying a large state), on this thread, letting the
/// runtime hand the worker's other tasks to another thread meanwhile, so that they (an HTTP
/// request, another query) do not wait behind it. On a runtime of one thread (tests), there is
/// no other thread: `f` just runs.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// A task's last checkpointed state, and whether its operators have seen anything since.
#[derive(Debug)]
struct LastSnapshot {
    changed: bool,
    /// The files written for it, each with the epoch whose directory holds it.
    files: Option<Vec<StateFile>>,
}

impl LastSnapshot {
    fn new() -> LastSnapshot {
        LastSnapshot {
            changed: true,
            files: None,
        }
    }
}

/// Whether a watermark move can change the state of any of a task's operators.
fn follows_watermark(ops: &[Box<dyn Operator>]) -> bool {
    ops.iter().any(|o| o.state_follows_watermark())
}

/// Writes the state of `ops` for `epoch` (step 2 of the protocol in [`crate::checkpoint`]).
/// Operators change state only on rows and watermark moves (only for those whose state follows
/// the watermark): when they have seen neither since the last checkpoint, its files are named
/// again and nothing is written.
async fn snapshot_state(
    checkpoint: Option<&TaskCheckpoint>,
    epoch: u64,
    task: usize,
    ops: &mut [Box<dyn Operator>],
    last: &mut LastSnapshot,
) -> Result<Vec<StateFile>> {
    let Some(ck) = checkpoint else {
        return Ok(Vec::new());
    };
    if !last.changed
        && let Some(files) = &last.files
    {
        return Ok(files.clone());
    }
    let mut files = Vec::new();
    for op in ops.iter_mut() {
        // Copying a large state takes a while: other tasks of this worker move on meanwhile.
        if let Some(state) = blocking(|| op.snapshot())?
            && state.num_rows() > 0
        {
            files.push(
                ck.storage
                    .write_state(&ck.query, epoch, op.name(), task, &state)
                    .await?,
            );
        }
    }
    last.changed = false;
    last.files = Some(
        files
            .iter()
            .map(|f| StateFile {
                epoch: Some(epoch),
                ..f.clone()
            })
            .collect(),
    );
    Ok(files)
}

/// Gives each of a task's operators back its rows of checkpoint `manifest`: the task's own
/// files at the same parallelism; at another, the rows of every task's files whose keys the
/// exchange now sends to this task.
async fn restore_state(
    ck: &TaskCheckpoint,
    manifest: &Manifest,
    task: usize,
    parallelism: usize,
    ops: &mut [Box<dyn Operator>],
) -> Result<()> {
    let same = manifest.parallelism == parallelism;
    let mut hashes = Vec::new();
    for op in ops.iter_mut() {
        let name = op.name().to_owned();
        for f in manifest
            .state
            .iter()
            .filter(|f| f.operator == name && (!same || f.task == task))
        {
            for batch in ck.storage.read_state(&ck.query, manifest.epoch, f).await? {
                if same {
                    op.restore(&batch)?;
                    continue;
                }
                let keys = op.state_keys(&batch)?;
                let mine: arrow::array::BooleanArray = if keys.is_empty() {
                    std::iter::repeat_n(Some(task == 0), batch.num_rows()).collect()
                } else {
                    crate::exchange::route_rows(&keys, parallelism, &mut hashes)?
                        .into_iter()
                        .map(|to| Some(to == task))
                        .collect()
                };
                op.restore(&arrow::compute::filter_record_batch(&batch, &mine)?)?;
            }
        }
    }
    Ok(())
}

/// A source task's readers: one per source of the query, each over the task's split of its
/// partitions. Their batches are tagged with the source they came from; their watermarks
/// merge as the minimum over the readers that have not ended and are not idle.
#[derive(Debug)]
struct Readers {
    readers: Vec<InputReader>,
    /// The reader the next poll starts at, so one with a steady flow does not starve others.
    next: usize,
}

#[derive(Debug)]
struct InputReader {
    reader: Box<dyn SourceReader>,
    /// The key of its positions in a checkpoint: its topic, or its stream's name.
    key: String,
    watermark: Option<i64>,
    idle: bool,
    finished: bool,
}

/// What one poll of [`Readers`] gave.
#[derive(Debug, Default)]
struct InputPoll {
    batches: Vec<(usize, RecordBatch)>,
    bad: Vec<(usize, Vec<crate::format::BadRecord>)>,
    skipped: usize,
    watermark: Option<i64>,
    finished: bool,
    idle: bool,
}

impl Readers {
    /// Opens `split` of every source; from `restored`'s positions when given.
    async fn open(
        sources: &[QuerySource],
        split: PartitionSplit,
        restored: Option<&Manifest>,
    ) -> Result<Readers> {
        let mut readers = Vec::with_capacity(sources.len());
        for s in sources {
            let key = s.source.topic().unwrap_or(&s.name).to_owned();
            let reader = match restored {
                Some(m) => {
                    let none = BTreeMap::new();
                    let positions = m.positions.get(&key).unwrap_or(&none);
                    s.source.open_at(split, positions).await?
                }
                None => s.source.open(split).await?,
            };
            readers.push(InputReader {
                reader,
                key,
                watermark: None,
                idle: false,
                finished: false,
            });
        }
        Ok(Readers { readers, next: 0 })
    }

    fn positions(&self) -> Positions {
        self.readers
            .iter()
            .map(|r| (r.key.clone(), r.reader.positions()))
            .collect()
    }

    /// What has arrived, waiting up to `max_wait` when nothing has. With one source, its own
    /// poll; with several, each is asked without waiting, and when none had anything, the
    /// first to get something within `max_wait` answers.
    async fn poll(&mut self, max_wait: Duration) -> Result<InputPoll> {
        let mut out = InputPoll::default();
        if self.readers.len() == 1 {
            let poll = self.readers[0].reader.poll(max_wait).await?;
            self.take(0, poll, &mut out);
        } else {
            let n = self.readers.len();
            let start = self.next;
            self.next = (self.next + 1) % n;
            for i in (0..n).map(|k| (start + k) % n) {
                if self.readers[i].finished {
                    continue;
                }
                let poll = self.readers[i].reader.poll(Duration::ZERO).await?;
                self.take(i, poll, &mut out);
            }
            if out.batches.is_empty() && out.bad.is_empty() && !max_wait.is_zero() {
                let waits = self
                    .readers
                    .iter_mut()
                    .enumerate()
                    .filter(|(_, r)| !r.finished)
                    .map(|(i, r)| Box::pin(async move { (i, r.reader.poll(max_wait).await) }))
                    .collect::<Vec<_>>();
                if !waits.is_empty() {
                    let ((i, poll), _, _) = futures::future::select_all(waits).await;
                    self.take(i, poll?, &mut out);
                }
            }
        }
        self.merge_time(&mut out);
        Ok(out)
    }

    fn take(&mut self, input: usize, poll: SourcePoll, out: &mut InputPoll) {
        let r = &mut self.readers[input];
        if poll.watermark.is_some() {
            r.watermark = poll.watermark;
        }
        r.idle = poll.idle;
        r.finished |= poll.finished;
        out.batches
            .extend(poll.batches.into_iter().map(|b| (input, b)));
        if !poll.bad.is_empty() {
            out.bad.push((input, poll.bad));
        }
        out.skipped += poll.skipped;
    }

    /// The merged watermark: the minimum over readers that have not ended and are not idle
    /// (`None` while one of them has none yet); when all left are idle, the largest of theirs.
    fn merge_time(&self, out: &mut InputPoll) {
        let live: Vec<&InputReader> = self.readers.iter().filter(|r| !r.finished).collect();
        out.finished = live.is_empty();
        out.idle = !live.is_empty() && live.iter().all(|r| r.idle);
        let active: Vec<&&InputReader> = live.iter().filter(|r| !r.idle).collect();
        out.watermark = if out.finished {
            None
        } else if active.is_empty() {
            live.iter().filter_map(|r| r.watermark).max()
        } else {
            active
                .iter()
                .map(|r| r.watermark)
                .collect::<Option<Vec<i64>>>()
                .and_then(|w| w.into_iter().min())
        };
    }
}

struct SourceTask {
    task: usize,
    reader: Readers,
    ops: Vec<Box<dyn Operator>>,
    output: Output,
    requests: watch::Receiver<BarrierRequest>,
    poll_wait: Duration,
    /// The watermark to start from (a restored checkpoint's).
    watermark: i64,
    checkpoint: Option<TaskCheckpoint>,
    meter: StateMeter,
    shared: Arc<Shared>,
}

/// A task of the source's stage: polls its split of the source, runs the stage's operators,
/// sends results on, and injects the barriers the sink task asks for.
async fn source_task(t: SourceTask) -> Result<()> {
    let SourceTask {
        task,
        mut reader,
        mut ops,
        mut output,
        mut requests,
        poll_wait,
        mut watermark,
        checkpoint,
        mut meter,
        shared,
    } = t;
    if watermark > i64::MIN {
        output.broadcast(|| Message::Watermark(watermark)).await?;
    }
    let mut idle = false;
    let mut injected = 0u64;
    let mut last_snapshot = LastSnapshot::new();
    let timed = follows_watermark(&ops);
    loop {
        let request = *requests.borrow_and_update();
        if request.epoch > injected {
            injected = request.epoch;
            let state = snapshot_state(
                checkpoint.as_ref(),
                request.epoch,
                task,
                &mut ops,
                &mut last_snapshot,
            )
            .await?;
            let barrier = Barrier {
                epoch: request.epoch,
                positions: reader.positions(),
                stop: request.stop,
                watermarks: vec![TaskWatermark {
                    stage: 0,
                    task,
                    watermark,
                }],
                state,
            };
            output
                .broadcast(|| Message::Barrier(barrier.clone()))
                .await?;
            if request.stop {
                return Ok(());
            }
        }
        let poll = tokio::select! {
            poll = reader.poll(poll_wait) => poll?,
            changed = requests.changed() => {
                if changed.is_err() {
                    // The sink task has gone: the query is ending.
                    return Ok(());
                }
                continue;
            }
        };
        for (input, records) in poll.bad {
            if !records.is_empty() {
                output.side(Side::Bad { input, records }).await?;
            }
        }
        let mut records = 0u64;
        for (input, batch) in poll.batches {
            records += batch.num_rows() as u64;
            last_snapshot.changed = true;
            let mut late = Vec::new();
            let mut outputs = Vec::new();
            run_input(&mut ops, input, batch, watermark, &mut outputs, &mut late)?;
            send(&mut output, outputs, late).await?;
        }
        {
            let mut m = shared.metrics.lock();
            m.records_in += records;
            m.skipped_records += poll.skipped as u64;
        }
        let next = if poll.finished {
            Some(i64::MAX)
        } else {
            poll.watermark
        };
        if let Some(next) = next
            && next > watermark
        {
            watermark = next;
            last_snapshot.changed |= timed;
            let mut outputs = Vec::new();
            let mut late = Vec::new();
            advance_chain(&mut ops, watermark, &mut outputs, &mut late)?;
            send(&mut output, outputs, late).await?;
            output.broadcast(|| Message::Watermark(watermark)).await?;
            idle = false;
        } else if poll.idle && !idle {
            idle = true;
            output.broadcast(|| Message::Idle).await?;
        }
        shared.report(task, &ops);
        if poll.finished {
            return meter.check_now(&shared, &ops);
        }
        meter.check(&shared, &ops)?;
    }
}

struct StageTask {
    stage: usize,
    task: usize,
    inputs: Inputs,
    ops: Vec<Box<dyn Operator>>,
    output: Output,
    /// The watermark to start from (a restored checkpoint's).
    watermark: i64,
    checkpoint: Option<TaskCheckpoint>,
    meter: StateMeter,
    shared: Arc<Shared>,
}

/// The watermark task `task` of stage `stage` had at the checkpoint, if one was restored. At
/// another parallelism: a source task (stateless) takes the lowest of its stage's, a later
/// task the highest of its stage's (they all had the same, broadcast to them before the
/// barrier), so a window closed before the checkpoint stays closed.
fn restored_watermark(
    manifest: Option<&Manifest>,
    stage: usize,
    task: usize,
    parallelism: usize,
) -> i64 {
    let Some(m) = manifest else {
        return i64::MIN;
    };
    let of_stage = m.watermarks.iter().filter(|w| w.stage == stage);
    let found = if m.parallelism == parallelism {
        of_stage
            .filter(|w| w.task == task)
            .map(|w| w.watermark)
            .next()
    } else if stage == 0 {
        of_stage.map(|w| w.watermark).min()
    } else {
        of_stage.map(|w| w.watermark).max()
    };
    found.unwrap_or(i64::MIN)
}

/// A task after an exchange: runs its operators on what its inputs send.
async fn stage_task(t: StageTask) -> Result<()> {
    let StageTask {
        stage,
        task,
        mut inputs,
        mut ops,
        mut output,
        mut watermark,
        checkpoint,
        mut meter,
        shared,
    } = t;
    let mut last_snapshot = LastSnapshot::new();
    let timed = follows_watermark(&ops);
    while let Some(event) = inputs.next().await? {
        let mut outputs = Vec::new();
        let mut late = Vec::new();
        // A restored task starts from its checkpoint's watermark: its inputs' may be behind.
        let moved_to = match &event {
            Event::Watermark(w) if *w > watermark => Some(*w),
            _ => None,
        };
        match event {
            Event::Batch(batch) => {
                last_snapshot.changed = true;
                run_chain(&mut ops, 0, vec![batch], watermark, &mut outputs, &mut late)?
            }
            Event::Side(side) => output.side(side).await?,
            Event::Watermark(w) => {
                if w > watermark {
                    watermark = w;
                    last_snapshot.changed |= timed;
                    advance_chain(&mut ops, watermark, &mut outputs, &mut late)?;
                }
            }
            Event::Barrier(mut barrier) => {
                let files = snapshot_state(
                    checkpoint.as_ref(),
                    barrier.epoch,
                    task,
                    &mut ops,
                    &mut last_snapshot,
                )
                .await?;
                barrier.state.extend(files);
                barrier.watermarks.push(TaskWatermark {
                    stage,
                    task,
                    watermark,
                });
                let stop = barrier.stop;
                output
                    .broadcast(|| Message::Barrier(barrier.clone()))
                    .await?;
                if stop {
                    // The sink task ends at this barrier: anything sent after it (such as the
                    // watermark an upstream task's closing releases) would find it gone.
                    shared.report(task, &ops);
                    return meter.check_now(&shared, &ops);
                }
            }
        }
        send(&mut output, outputs, late).await?;
        if let Some(w) = moved_to {
            output.broadcast(|| Message::Watermark(w)).await?;
        }
        shared.report(task, &ops);
        meter.check(&shared, &ops)?;
    }
    meter.check_now(&shared, &ops)
}

async fn send(output: &mut Output, batches: Vec<RecordBatch>, late: Vec<LateRows>) -> Result<()> {
    if !late.is_empty() {
        output.side(Side::Late(late)).await?;
    }
    for b in batches {
        output.batch(b).await?;
    }
    Ok(())
}

struct SinkTask {
    name: String,
    /// The streams' names, by input.
    source_names: Vec<String>,
    schema: arrow::datatypes::SchemaRef,
    inputs: Inputs,
    sinks: Vec<Box<dyn Sink>>,
    options: QueryOptions,
    broker: Option<Broker>,
    stop: watch::Receiver<bool>,
    requests: watch::Sender<BarrierRequest>,
    checkpointing: Option<Checkpointing>,
    shared: Arc<Shared>,
}

/// The sink task: writes results and side outputs, decides when barriers are injected, and
/// completes checkpoints (steps 3–5 in [`crate::checkpoint`]); a stop is a last barrier, so
/// everything read before it reaches the sinks.
async fn sink_task(mut t: SinkTask) -> Result<()> {
    for sink in &mut t.sinks {
        sink.open(t.schema.clone()).await?;
    }
    let transaction = t.checkpointing.as_ref().and_then(|c| c.transaction.clone());
    if let Some(txn) = &transaction {
        for sink in &mut t.sinks {
            if !sink.set_transaction(txn)? {
                tracing::warn!(
                    query = %t.name,
                    sink = %sink.describe(),
                    "this sink is outside the broker's transactions: it sees results at least once"
                );
            }
        }
    }
    let interval = t
        .checkpointing
        .as_ref()
        .map_or(Duration::from_secs(3600), |c| c.config.interval);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut epoch = t.checkpointing.as_ref().map_or(1, |c| c.first_epoch()) - 1;
    // The barrier requested and not yet back, and whether a stop waits for it.
    let mut in_flight = false;
    let mut stop_wanted = false;
    let mut stopping = false;
    loop {
        if stop_wanted && !in_flight && !stopping {
            stopping = true;
            in_flight = true;
            epoch += 1;
            t.requests
                .send_replace(BarrierRequest { epoch, stop: true });
        }
        let event = tokio::select! {
            event = t.inputs.next() => event?,
            changed = t.stop.changed(), if !stop_wanted => {
                if changed.is_ok() && !*t.stop.borrow() {
                    continue;
                }
                stop_wanted = true;
                continue;
            }
            _ = ticker.tick(), if t.checkpointing.is_some() && !in_flight && !stop_wanted => {
                in_flight = true;
                epoch += 1;
                t.requests.send_replace(BarrierRequest { epoch, stop: false });
                continue;
            }
        };
        let Some(event) = event else { break };
        match event {
            Event::Batch(batch) => {
                let rows = batch.num_rows() as u64;
                for sink in &mut t.sinks {
                    sink.write(batch.clone()).await?;
                }
                t.shared.metrics.lock().rows_out += rows;
            }
            Event::Side(Side::Bad {
                input,
                records: bad,
            }) => {
                side_bad_records(
                    &t.name,
                    t.source_names.get(input).map_or("?", String::as_str),
                    t.options.dead_letter_topic.as_deref(),
                    t.broker.as_ref(),
                    transaction.as_ref(),
                    &bad,
                )
                .await?;
                t.shared.metrics.lock().bad_records += bad.len() as u64;
            }
            Event::Side(Side::Late(late)) => {
                side_late_rows(
                    t.options.late_data_topic.as_deref(),
                    t.broker.as_ref(),
                    transaction.as_ref(),
                    &late,
                )
                .await?;
                t.shared.metrics.lock().late_rows +=
                    late.iter().map(|l| l.rows.num_rows() as u64).sum::<u64>();
            }
            Event::Watermark(w) => t.shared.metrics.lock().watermark = Some(w),
            Event::Barrier(barrier) => {
                if barrier.epoch != epoch {
                    return Err(EngineError::internal(format!(
                        "barrier {} reached the sink task while {epoch} was expected",
                        barrier.epoch
                    )));
                }
                for sink in &mut t.sinks {
                    sink.flush().await?;
                }
                if let Some(c) = &t.checkpointing {
                    c.complete(
                        barrier.epoch,
                        barrier.positions,
                        barrier.watermarks,
                        barrier.state,
                        barrier.stop,
                    )
                    .await?;
                    t.shared.metrics.lock().checkpoints += 1;
                }
                in_flight = false;
                if barrier.stop {
                    break;
                }
            }
        }
    }
    for sink in &mut t.sinks {
        sink.close().await?;
    }
    Ok(())
}

/// Writes `records` to `topic` of the in-process broker, partitioned as Kafka's default
/// partitioner does: through the query's transaction under exactly-once (when it runs on the
/// in-process broker), straight to the log otherwise.
async fn write_records(
    broker: &Broker,
    transaction: Option<&SharedTransaction>,
    topic: &str,
    records: &[Record],
) -> Result<()> {
    // Side topics are in-process: a transaction on another cluster cannot hold them.
    let Some(txn) = transaction.filter(|t| t.bootstrap().is_none()) else {
        broker.produce(topic, records).await?;
        return Ok(());
    };
    let partitions = broker.partition_count(topic)?;
    for (p, batch) in broker.partition_records(partitions, records) {
        txn.append(topic, p, &batch).await?;
    }
    Ok(())
}

/// Logs bad records and writes them to the dead-letter topic, if there is one.
async fn side_bad_records(
    query: &str,
    source: &str,
    topic: Option<&str>,
    broker: Option<&Broker>,
    transaction: Option<&SharedTransaction>,
    bad: &[BadRecord],
) -> Result<()> {
    if bad.is_empty() {
        return Ok(());
    }
    for b in bad.iter().take(10) {
        tracing::warn!(
            query = %query,
            source = %source,
            partition = b.partition,
            offset = b.offset,
            reason = %b.reason,
            "skipping a record that does not decode"
        );
    }
    let (Some(topic), Some(broker)) = (topic, broker) else {
        return Ok(());
    };
    let now = quiver_broker::now_ms();
    let records: Vec<Record> = bad
        .iter()
        .map(|b| {
            Record::new(now, b.key.as_deref(), b.value.as_deref())
                .with_header("quiver.error.reason", Some(b.reason.as_bytes()))
                .with_header("quiver.error.source", Some(source.as_bytes()))
                .with_header(
                    "quiver.error.partition",
                    Some(b.partition.to_string().as_bytes()),
                )
                .with_header("quiver.error.offset", Some(b.offset.to_string().as_bytes()))
        })
        .collect();
    write_records(broker, transaction, topic, &records).await
}

/// Writes late rows to the late-data topic, if there is one, as JSON with the reason.
async fn side_late_rows(
    topic: Option<&str>,
    broker: Option<&Broker>,
    transaction: Option<&SharedTransaction>,
    late: &[LateRows],
) -> Result<()> {
    let (Some(topic), Some(broker)) = (topic, broker) else {
        return Ok(());
    };
    for l in late {
        let schema = l.rows.schema();
        let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let encoder = SideEncoder::new(Format::Json(schema.clone()), &schema, &columns)?;
        let values = encoder.encode(&l.rows)?;
        let now = quiver_broker::now_ms();
        let records: Vec<Record> = (0..values.len())
            .map(|i| {
                Record::new(now, None, Some(values.value(i)))
                    .with_header("quiver.late.reason", Some(l.reason.as_bytes()))
                    .with_header("quiver.late.operator", Some(l.operator.as_bytes()))
            })
            .collect();
        write_records(broker, transaction, topic, &records).await?;
    }
    Ok(())
}
