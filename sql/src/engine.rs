//! Running statements: the catalog, persistent queries, push queries and the command log.
//!
//! Every statement that changes what runs (CREATE, CREATE … AS SELECT, INSERT INTO … SELECT,
//! DROP, TERMINATE) is appended, once it has succeeded, to the command topic
//! [`COMMAND_TOPIC`] of the broker, with the properties it ran with. [`SqlEngine::open`]
//! replays that log, so after a restart every stream and table is back and every persistent
//! query resumes from its last checkpoint (exactly-once: its output has no duplicates and no
//! gaps). A persistent query's id is derived from the offset of its command, so it is the same
//! in every replay, and with it the checkpoint it resumes from.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::common::tree_node::TreeNode;
use datafusion::common::{DFSchemaRef, ScalarValue};
use datafusion::datasource::MemTable;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::{LogicalPlan, TableSource};
use datafusion::physical_plan::collect;
use parking_lot::Mutex;
use quiver_broker::{
    Broker, Isolation, NewTopic, ReaderOptions, Record, StartAt, batch_to_records,
};
use quiver_engine::arrow::array::{ArrayRef, RecordBatch, StringArray};
use quiver_engine::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit};
use quiver_engine::checkpoint::CheckpointStorage;
use quiver_engine::format::{DELETED, ROWHEADERS, ROWOFFSET, ROWPARTITION, ROWTIME, RecordDecoder};
use quiver_engine::plan::{PlanOptions, StreamTable};
use quiver_engine::source::StartFrom;
use quiver_engine::store::{MaterializeNode, TableStore};
use quiver_engine::table_aggregate::TableAggregateNode;
use quiver_engine::{
    CheckpointConfig, EmitMode, Query, QueryHandle, QueryOptions, Runtime, Sink, TopicSink,
};
use sqlparser::ast::SetExpr;
use tokio::sync::mpsc;

use crate::catalog::{FormatName, SourceInfo, declared_field, kafka_type};
use crate::error::SqlError;
use crate::parser::{
    ConnectorKind, Emit, Parsed, Position, Property, PropertyValue, ShowWhat, SourceKind,
    Statement, StreamingQuery, normalize, parse,
};
use crate::plan::{
    Context, batch_source, plan_query, rewrite_window, select_window_bounds, session_state,
};
use crate::types::{arrow_type, sql_name};

/// The topic the command log is kept in.
pub const COMMAND_TOPIC: &str = "_quiver_sql_commands";

/// A connector's target states in the command log, in Kafka Connect's words.
const PAUSED: &str = "PAUSED";
const RUNNING: &str = "RUNNING";

/// The property that says where new queries start reading a stream.
pub const OFFSET_RESET: &str = "auto.offset.reset";

/// The most bytes a table's store (for pull queries) holds; past it, its query fails naming
/// the store.
const STORE_MAX_BYTES: usize = 1 << 30;

/// How long (in 20 ms rounds) a pull query waits for a starting query to restore its store.
const STORE_WAIT_ROUNDS: usize = 250;

/// What a statement gives back.
#[derive(Debug)]
pub enum Output {
    /// A confirmation (`Stream 'pageviews' created`).
    Message(String),
    /// A finite result: listings, descriptions, pull and history queries.
    Rows {
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    },
    /// Rows as they come, until cancelled or its limit.
    Push(PushQuery),
}

/// A running push query (or `PRINT`): its rows as they arrive.
#[derive(Debug)]
pub struct PushQuery {
    pub schema: SchemaRef,
    rows: mpsc::Receiver<Result<RecordBatch, SqlError>>,
    limit: Option<u64>,
    sent: u64,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl PushQuery {
    /// The next rows; `None` once the limit is reached or the query ended.
    pub async fn next(&mut self) -> Option<Result<RecordBatch, SqlError>> {
        if self.limit.is_some_and(|l| self.sent >= l) {
            self.cancel().await;
            return None;
        }
        let batch = match self.rows.recv().await? {
            Ok(b) => b,
            Err(e) => return Some(Err(e)),
        };
        let batch = match self.limit {
            Some(l) if self.sent + batch.num_rows() as u64 > l => {
                batch.slice(0, (l - self.sent) as usize)
            }
            _ => batch,
        };
        self.sent += batch.num_rows() as u64;
        Some(Ok(batch))
    }

    /// Stops it.
    pub async fn cancel(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.rows.close();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// A sink that hands batches to a push query's reader.
#[derive(Debug)]
struct ChannelSink {
    tx: mpsc::Sender<Result<RecordBatch, SqlError>>,
}

#[async_trait]
impl Sink for ChannelSink {
    fn describe(&self) -> String {
        "push query".into()
    }

    async fn open(&mut self, _schema: SchemaRef) -> quiver_engine::Result<()> {
        Ok(())
    }

    async fn write(&mut self, batch: RecordBatch) -> quiver_engine::Result<()> {
        let batch = strip_deleted(batch)?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        // A reader that has gone (cancelled, limit reached) stops the query from its side.
        let _ = self.tx.send(Ok(batch)).await;
        Ok(())
    }

    async fn flush(&mut self) -> quiver_engine::Result<()> {
        Ok(())
    }
}

/// Rows of a table's changelog as a user sees them: without the deletion marker column.
fn strip_deleted(batch: RecordBatch) -> quiver_engine::Result<RecordBatch> {
    match batch.schema().index_of(DELETED) {
        Ok(i) => {
            let mut b = batch;
            b.remove_column(i);
            Ok(b)
        }
        Err(_) => Ok(batch),
    }
}

/// A persistent query.
#[derive(Debug)]
struct Persistent {
    sql: String,
    sink: String,
    handle: Option<QueryHandle>,
}

#[derive(Debug, Default)]
struct State {
    sources: BTreeMap<String, SourceInfo>,
    /// Streams the embedding program registered (`register_stream`): not in the command log.
    registered: BTreeMap<String, Arc<dyn quiver_engine::Source>>,
    queries: BTreeMap<String, Persistent>,
    properties: BTreeMap<String, String>,
}

/// Runs Quiver SQL against a broker.
#[derive(Debug, Clone)]
pub struct SqlEngine {
    inner: Arc<Inner>,
}

struct Inner {
    broker: Broker,
    runtime: Runtime,
    checkpoints: PathBuf,
    state: Mutex<State>,
    functions: SessionState,
    /// Statements run one at a time: the command log's order is the order they took effect.
    order: tokio::sync::Mutex<()>,
    /// The connectors `CREATE … CONNECTOR` made (and the server's others).
    connectors: quiver_connectors::Worker,
    /// While the command log is replayed: each connector it created, and whether its last
    /// recorded target state is paused. They start once the replay is done.
    replayed_connectors: Mutex<Option<BTreeMap<String, bool>>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlEngine")
            .field("checkpoints", &self.checkpoints)
            .finish_non_exhaustive()
    }
}

/// The WITH properties `CREATE STREAM|TABLE` takes.
const SOURCE_PROPERTIES: &[&str] = &[
    "KAFKA_TOPIC",
    "VALUE_FORMAT",
    "KEY_FORMAT",
    "FORMAT",
    "PARTITIONS",
    "REPLICAS",
    "TIMESTAMP",
    "TIMESTAMP_FORMAT",
    "VALUE_DELIMITER",
];

impl SqlEngine {
    /// An engine on `broker`, keeping query checkpoints under `data_dir`; replays the command
    /// log, restarting every persistent query from its checkpoint.
    pub async fn open(broker: &Broker, data_dir: &std::path::Path) -> Result<SqlEngine, SqlError> {
        let engine = SqlEngine {
            inner: Arc::new(Inner {
                broker: broker.clone(),
                runtime: Runtime::new(broker),
                checkpoints: data_dir.join("sql-checkpoints"),
                state: Mutex::new(State::default()),
                functions: session_state(),
                order: tokio::sync::Mutex::new(()),
                connectors: quiver_connectors::Worker::new(broker),
                replayed_connectors: Mutex::new(None),
            }),
        };
        // The command topic is made by the first command, so a broker without SQL has none.
        if broker.partition_count(COMMAND_TOPIC).is_ok() {
            engine.replay().await?;
        }
        Ok(engine)
    }

    /// The broker it runs on.
    pub fn broker(&self) -> &Broker {
        &self.inner.broker
    }

    /// The connectors running beside its queries: those `CREATE … CONNECTOR` made (they come
    /// back with the command log), and any the caller adds.
    pub fn connectors(&self) -> &quiver_connectors::Worker {
        &self.inner.connectors
    }

    /// Registers `source` as the stream `name` for continuous queries, as DataFusion's
    /// `register_table` does for batch queries: an in-process source (a generator, a program's
    /// own data) that SQL reads without a topic. The name is kept as given (SQL folds unquoted
    /// names to lower case). It is not written to the command log, so it
    /// lasts as long as this engine: persistent queries (`CREATE … AS SELECT`, `INSERT INTO …
    /// SELECT`), which must restart with the server, may not read it, and neither may queries
    /// over history, which read topics. Push queries and [`SqlEngine::continuous_query`] may.
    pub fn register_stream(
        &self,
        name: &str,
        source: Arc<dyn quiver_engine::Source>,
    ) -> Result<(), SqlError> {
        let name = name.to_owned();
        let mut state = self.inner.state.lock();
        if state.sources.contains_key(&name) || state.registered.contains_key(&name) {
            return Err(SqlError::plan(
                format!("a stream or table named '{name}' exists already"),
                Position::default(),
            ));
        }
        state.registered.insert(name, source);
        Ok(())
    }

    /// Plans one continuous query (`SELECT … EMIT CHANGES` or `EMIT FINAL`) into an engine
    /// [`Query`] that writes its rows to `sinks`, for the caller to run on a
    /// [`quiver_engine::Runtime`]: what a push query runs, with the caller's sinks in place of
    /// the push query's channel. The properties `SET` gave apply.
    pub async fn continuous_query(
        &self,
        name: &str,
        sql: &str,
        sinks: Vec<Box<dyn Sink>>,
    ) -> Result<Query, SqlError> {
        let parsed = parse(sql)?;
        let [p] = parsed.as_slice() else {
            return Err(SqlError::plan(
                format!("give one query, not {} statements", parsed.len()),
                Position::default(),
            ));
        };
        let Statement::Select(query) = &p.statement else {
            return Err(SqlError::plan(
                "a continuous query is a SELECT … EMIT CHANGES (or EMIT FINAL)",
                p.position,
            ));
        };
        if query.emit.is_none() {
            return Err(SqlError::plan(
                "a continuous query needs EMIT CHANGES (or EMIT FINAL); without it a SELECT \
                 reads the history once",
                p.position,
            ));
        }
        no_partition_by(query)?;
        let properties = self.inner.state.lock().properties.clone();
        let (plan, options) = self.continuous(query, &properties).await?;
        Ok(Query::new(name, &plan, sinks, options)?)
    }

    /// The plan and options of a continuous query's run (a push query's, or a caller's).
    async fn continuous(
        &self,
        query: &StreamingQuery,
        properties: &BTreeMap<String, String>,
    ) -> Result<(LogicalPlan, QueryOptions), SqlError> {
        let (plan, emit) = self.plan_streaming(query, properties)?;
        let late_data_topic = self.late_data_topic(query, &plan).await?;
        let options = QueryOptions {
            plan: PlanOptions { emit },
            late_data_topic,
            ..QueryOptions::default()
        };
        Ok((plan, options))
    }

    /// The first registered stream `query` reads, if any.
    fn registered_in(&self, query: &StreamingQuery) -> Option<String> {
        let state = self.inner.state.lock();
        names_in(&query.query)
            .into_iter()
            .find(|n| state.registered.contains_key(n))
    }

    /// Refuses a persistent query that reads a registered stream: it could not restart.
    fn not_registered(&self, query: &StreamingQuery) -> Result<(), SqlError> {
        match self.registered_in(query) {
            Some(name) => Err(SqlError::plan(
                format!(
                    "'{name}' is a stream this program registered, not a topic: a persistent \
                     query cannot restart from it; read it with a push query (EMIT CHANGES)"
                ),
                query.position,
            )),
            None => Ok(()),
        }
    }

    async fn replay(&self) -> Result<(), SqlError> {
        let _order = self.inner.order.lock().await;
        *self.inner.replayed_connectors.lock() = Some(BTreeMap::new());
        let replayed = self.replay_log().await;
        let connectors = self
            .inner
            .replayed_connectors
            .lock()
            .take()
            .unwrap_or_default();
        for (name, paused) in connectors {
            if !paused && let Err(e) = self.inner.connectors.resume(&name) {
                tracing::error!(connector = %name, "cannot start a connector of the command log: {e:?}");
            }
        }
        replayed
    }

    async fn replay_log(&self) -> Result<(), SqlError> {
        let mut offset = 0;
        loop {
            let read = self.inner.broker.read(COMMAND_TOPIC, 0, offset, 1 << 20)?;
            if read.batches.is_empty() {
                break;
            }
            for batch in &read.batches {
                for record in batch_to_records(&batch.records)
                    .map_err(|e| SqlError::runtime(e.to_string()))?
                {
                    self.replay_one(&record).await;
                }
            }
            offset = read.next_offset;
        }
        Ok(())
    }

    async fn replay_one(&self, record: &Record) {
        let Some(value) = &record.value else { return };
        let command: serde_json::Value = match serde_json::from_slice(value) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(
                    offset = record.offset,
                    "skipping an unreadable command: {e}"
                );
                return;
            }
        };
        if let (Some(name), Some(target)) = (
            command["connector"].as_str(),
            command["target_state"].as_str(),
        ) {
            if let Some(replayed) = self.inner.replayed_connectors.lock().as_mut()
                && let Some(paused) = replayed.get_mut(name)
            {
                *paused = target == PAUSED;
            }
            return;
        }
        let Some(sql) = command["sql"].as_str() else {
            return;
        };
        let properties: BTreeMap<String, String> = command["properties"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        let parsed = match parse(sql) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(
                    offset = record.offset,
                    "skipping a command that no longer parses: {e}"
                );
                return;
            }
        };
        for p in parsed {
            if let Err(e) = self.run(&p, &properties, Some(record.offset)).await {
                tracing::error!(
                    offset = record.offset,
                    statement = %p.text,
                    "a replayed command failed: {e}"
                );
            }
        }
    }

    /// Runs a script of statements, stopping at the first that fails. A push query must be
    /// the script's last statement.
    pub async fn execute(&self, sql: &str) -> Result<Vec<Output>, SqlError> {
        let parsed = parse(sql)?;
        let mut out = Vec::with_capacity(parsed.len());
        let n = parsed.len();
        for (i, p) in parsed.iter().enumerate() {
            let output = self.execute_parsed(p).await?;
            if matches!(output, Output::Push(_)) && i + 1 < n {
                return Err(SqlError::plan(
                    "a push query runs until cancelled: make it the last statement",
                    p.position,
                ));
            }
            out.push(output);
        }
        Ok(out)
    }

    /// Runs one parsed statement (errors point into the script it was parsed from).
    pub async fn execute_parsed(&self, p: &Parsed) -> Result<Output, SqlError> {
        self.execute_with(p, &BTreeMap::new()).await
    }

    /// Runs one parsed statement with `overrides` on top of the properties `SET` gave (an HTTP
    /// request's own, as ksqlDB's `streamsProperties`).
    pub async fn execute_with(
        &self,
        p: &Parsed,
        overrides: &BTreeMap<String, String>,
    ) -> Result<Output, SqlError> {
        let mut properties = self.inner.state.lock().properties.clone();
        properties.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
        let _order = self.inner.order.lock().await;
        self.run(p, &properties, None).await.map_err(|mut e| {
            // The engine's refusals are about the statement, which starts here.
            if e.position.is_none() && e.kind != crate::error::ErrorKind::Runtime {
                e.position = Some(p.position);
            }
            e
        })
    }

    /// Pauses connector `name` (it commits first), and records it in the command log so that
    /// it stays paused across restarts, as Kafka Connect keeps a connector's target state.
    pub async fn pause_connector(&self, name: &str) -> Result<(), quiver_connectors::Refusal> {
        self.connector_target(name, PAUSED).await
    }

    /// Starts a paused (or failed) connector again from its committed position; recorded in
    /// the command log as [`Self::pause_connector`] is.
    pub async fn resume_connector(&self, name: &str) -> Result<(), quiver_connectors::Refusal> {
        self.connector_target(name, RUNNING).await
    }

    async fn connector_target(
        &self,
        name: &str,
        target: &str,
    ) -> Result<(), quiver_connectors::Refusal> {
        let _order = self.inner.order.lock().await;
        if target == PAUSED {
            self.inner.connectors.pause(name).await?;
        } else {
            self.inner.connectors.resume(name)?;
        }
        let command = serde_json::json!({ "connector": name, "target_state": target });
        self.log_command(command).await.map_err(|e| {
            quiver_connectors::Refusal::Invalid(format!(
                "connector '{name}' is {} but the command log did not take it, so a restart \
                 forgets it: {e}",
                target.to_lowercase()
            ))
        })?;
        Ok(())
    }

    /// Appends a command that took effect to the log; returns its offset.
    async fn log(
        &self,
        text: &str,
        properties: &BTreeMap<String, String>,
    ) -> Result<i64, SqlError> {
        self.log_command(serde_json::json!({ "sql": text, "properties": properties }))
            .await
    }

    /// Appends `command` (a JSON object) to the log; returns its offset.
    async fn log_command(&self, command: serde_json::Value) -> Result<i64, SqlError> {
        if self.inner.broker.partition_count(COMMAND_TOPIC).is_err() {
            self.inner
                .broker
                .create_topic(
                    NewTopic::new(COMMAND_TOPIC, 1)
                        .with_config("retention.ms", "-1")
                        .with_config("retention.bytes", "-1"),
                )
                .await?;
        }
        let value = command.to_string();
        let record = Record::new(quiver_broker::now_ms(), None, Some(value.as_bytes()));
        let offsets = self
            .inner
            .broker
            .produce(COMMAND_TOPIC, std::slice::from_ref(&record))
            .await?;
        offsets
            .first()
            .map(|(_, a)| a.base_offset)
            .ok_or_else(|| SqlError::runtime("the command log took no record"))
    }

    /// The offset the command will get, to name its query before it runs.
    fn next_command_offset(&self) -> Result<i64, SqlError> {
        if self.inner.broker.partition_count(COMMAND_TOPIC).is_err() {
            return Ok(0);
        }
        Ok(self.inner.broker.offsets(COMMAND_TOPIC, 0)?.log_end_offset)
    }

    async fn run(
        &self,
        p: &Parsed,
        properties: &BTreeMap<String, String>,
        replay: Option<i64>,
    ) -> Result<Output, SqlError> {
        match &p.statement {
            Statement::CreateSource {
                kind,
                name,
                or_replace,
                if_not_exists,
                columns,
                properties: with,
            } => {
                let name_s = normalize(name);
                if let Some(done) =
                    self.exists(*kind, &name_s, name, *if_not_exists, *or_replace)?
                {
                    return Ok(done);
                }
                let info = self
                    .declare(*kind, &name_s, columns, with, &p.text, p.position)
                    .await?;
                if replay.is_none() {
                    self.log(&p.text, properties).await?;
                }
                let message = format!(
                    "{} '{}' created over topic '{}'",
                    title(info.kind),
                    info.name,
                    info.topic
                );
                self.inner.state.lock().sources.insert(name_s, info);
                Ok(Output::Message(message))
            }
            Statement::CreateAs {
                kind,
                name,
                or_replace,
                if_not_exists,
                properties: with,
                query,
            } => {
                let name_s = normalize(name);
                if let Some(done) =
                    self.exists(*kind, &name_s, name, *if_not_exists, *or_replace)?
                {
                    return Ok(done);
                }
                let offset = match replay {
                    Some(o) => o,
                    None => self.next_command_offset()?,
                };
                let prefix = match kind {
                    SourceKind::Stream => "CSAS",
                    SourceKind::Table => "CTAS",
                };
                let id = format!("{prefix}_{}_{offset}", name_s.to_uppercase());
                let message = self
                    .create_as(*kind, &name_s, with, query, &id, &p.text, properties, false)
                    .await?;
                if replay.is_none() {
                    self.log(&p.text, properties).await?;
                }
                Ok(Output::Message(message))
            }
            Statement::InsertSelect { target, query } => {
                let target_s = normalize(target);
                let Some(info) = self.inner.state.lock().sources.get(&target_s).cloned() else {
                    return Err(self.unknown(&target_s, Position::from(target.span.start)));
                };
                if info.kind == SourceKind::Table {
                    return Err(SqlError::plan(
                        format!("INSERT INTO writes to streams; '{target_s}' is a table"),
                        Position::from(target.span.start),
                    ));
                }
                let offset = match replay {
                    Some(o) => o,
                    None => self.next_command_offset()?,
                };
                let id = format!("INSERTQUERY_{offset}");
                no_partition_by(query)?;
                self.not_registered(query)?;
                let (plan, emit) = self.plan_streaming(query, properties)?;
                if find_aggregate(&plan).is_some() || crate::top_n::result_key(&plan).is_some() {
                    return Err(SqlError::plan(
                        format!(
                            "an aggregation (GROUP BY) or a top-N gives a table, and INSERT INTO \
                             writes to the stream '{target_s}': write CREATE TABLE … AS SELECT"
                        ),
                        query.position,
                    ));
                }
                check_columns(&plan, &info, query.position)?;
                let plan = crate::plan::with_record_time(plan)?;
                let late = self.late_data_topic(query, &plan).await?;
                self.start_persistent(&id, &p.text, &info, &plan, emit, late)
                    .await?;
                if replay.is_none() {
                    self.log(&p.text, properties).await?;
                }
                Ok(Output::Message(format!(
                    "query {id} inserts into '{target_s}'"
                )))
            }
            Statement::InsertValues {
                target,
                columns,
                rows,
            } => self.insert_values(target, columns, rows, p.position).await,
            Statement::Select(query) => self.select(query, properties).await,
            Statement::Explain(query) => {
                let (plan, _) = self.plan_streaming(query, properties)?;
                let text = format!("{}", plan.display_indent());
                Ok(single_column(
                    "plan",
                    text.lines().map(str::to_owned).collect(),
                ))
            }
            Statement::Show(what) => Ok(self.show(*what, properties)),
            Statement::CreateConnector {
                kind,
                name,
                if_not_exists,
                properties: with,
            } => {
                let message = self
                    .create_connector(*kind, name, *if_not_exists, with, p.position)
                    .await?;
                self.created(message, replay, &p.text, properties).await
            }
            Statement::CreateSinkAs {
                name,
                if_not_exists,
                properties: with,
                query,
            } => {
                let message = self
                    .create_sink_as(
                        name,
                        *if_not_exists,
                        with,
                        query,
                        replay,
                        &p.text,
                        properties,
                    )
                    .await?;
                self.created(message, replay, &p.text, properties).await
            }
            Statement::DropSink {
                name,
                if_exists,
                delete_topic,
            } => {
                let name_s = normalize(name);
                let made_by_sink = self
                    .inner
                    .state
                    .lock()
                    .sources
                    .get(&name_s)
                    .is_some_and(|info| is_create_sink(&info.statement));
                let connector = self.inner.connectors.names().contains(&name_s);
                if !made_by_sink && !connector {
                    if *if_exists {
                        return Ok(Output::Message(format!("no sink named '{name_s}'")));
                    }
                    return Err(SqlError::plan(
                        format!(
                            "no sink named '{name_s}' (a sink is what CREATE SINK … AS SELECT \
                             made; SHOW CONNECTORS lists the connectors)"
                        ),
                        Position::from(name.span.start),
                    ));
                }
                let message = self
                    .remove_sink(&name_s, made_by_sink, *delete_topic)
                    .await?;
                if replay.is_none() {
                    self.log(&p.text, properties).await?;
                }
                Ok(Output::Message(message))
            }
            Statement::DropConnector { name, if_exists } => {
                match self.inner.connectors.delete(&name.value).await {
                    Ok(()) => {
                        if let Some(replayed) = self.inner.replayed_connectors.lock().as_mut() {
                            replayed.remove(&name.value);
                        }
                        if replay.is_none() {
                            self.log(&p.text, properties).await?;
                        }
                        Ok(Output::Message(format!(
                            "connector '{}' dropped (it committed what it had)",
                            name.value
                        )))
                    }
                    Err(_) if *if_exists => Ok(Output::Message(format!(
                        "no connector named '{}'",
                        name.value
                    ))),
                    Err(_) => Err(SqlError::plan(
                        format!(
                            "no connector named '{}'; SHOW CONNECTORS lists them",
                            name.value
                        ),
                        Position::from(name.span.start),
                    )),
                }
            }
            Statement::DescribeConnector(name) => {
                let unknown = || {
                    SqlError::plan(
                        format!(
                            "no connector named '{}'; SHOW CONNECTORS lists them",
                            name.value
                        ),
                        Position::from(name.span.start),
                    )
                };
                let status = self
                    .inner
                    .connectors
                    .status(&name.value)
                    .map_err(|_| unknown())?;
                let info = self
                    .inner
                    .connectors
                    .info(&name.value)
                    .map_err(|_| unknown())?;
                let text = |v: &serde_json::Value| match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let mut rows = vec![
                    vec!["name".to_owned(), name.value.clone()],
                    vec!["type".to_owned(), text(&status["type"])],
                    vec!["state".to_owned(), text(&status["connector"]["state"])],
                ];
                if let Some(trace) = status["connector"].get("trace") {
                    rows.push(vec!["error".to_owned(), text(trace)]);
                }
                if let Some(progress) = status["progress"].as_object() {
                    for (k, v) in progress {
                        rows.push(vec![k.clone(), text(v)]);
                    }
                }
                if let Some(config) = info["config"].as_object() {
                    for (k, v) in config.iter().filter(|(k, _)| k.as_str() != "name") {
                        rows.push(vec![k.clone(), text(v)]);
                    }
                }
                Ok(table(&["property", "value"], rows))
            }
            Statement::Describe { name, extended } => {
                let name_s = normalize(name);
                let Some(info) = self.inner.state.lock().sources.get(&name_s).cloned() else {
                    return Err(self.unknown(&name_s, Position::from(name.span.start)));
                };
                Ok(self.describe(&info, *extended))
            }
            Statement::Drop {
                kind,
                name,
                if_exists,
                delete_topic,
            } => {
                let name_s = normalize(name);
                let info = self.inner.state.lock().sources.get(&name_s).cloned();
                let Some(info) = info else {
                    if *if_exists {
                        return Ok(Output::Message(format!("no {kind} named '{name_s}'")));
                    }
                    return Err(self.unknown(&name_s, Position::from(name.span.start)));
                };
                if info.kind != *kind {
                    return Err(SqlError::plan(
                        format!(
                            "'{name_s}' is a {}; write DROP {} {name_s}",
                            info.kind.as_str().to_lowercase(),
                            info.kind
                        ),
                        Position::from(name.span.start),
                    ));
                }
                let writers = self.writers_of(&name_s);
                if !writers.is_empty() {
                    return Err(SqlError::plan(
                        format!(
                            "cannot drop '{name_s}': the quer{} {} write{} to it; TERMINATE {} \
                             first",
                            if writers.len() == 1 { "y" } else { "ies" },
                            writers.join(", "),
                            if writers.len() == 1 { "s" } else { "" },
                            if writers.len() == 1 { "it" } else { "them" },
                        ),
                        Position::from(name.span.start),
                    ));
                }
                self.inner.state.lock().sources.remove(&name_s);
                if *delete_topic && self.inner.broker.partition_count(&info.topic).is_ok() {
                    self.inner.broker.delete_topic(&info.topic).await?;
                }
                if replay.is_none() {
                    self.log(&p.text, properties).await?;
                }
                Ok(Output::Message(format!(
                    "{} '{name_s}' dropped{}",
                    title(info.kind),
                    if *delete_topic {
                        format!(", topic '{}' deleted", info.topic)
                    } else {
                        String::new()
                    }
                )))
            }
            Statement::Terminate(id) => {
                let ids: Vec<String> = {
                    let state = self.inner.state.lock();
                    match id {
                        Some(id) => {
                            let found = state
                                .queries
                                .keys()
                                .find(|k| k.eq_ignore_ascii_case(id))
                                .cloned();
                            match found {
                                Some(k) => vec![k],
                                None => {
                                    return Err(SqlError::plan(
                                        format!(
                                            "no running query '{id}' (SHOW QUERIES lists them)"
                                        ),
                                        p.position,
                                    ));
                                }
                            }
                        }
                        None => state.queries.keys().cloned().collect(),
                    }
                };
                for id in &ids {
                    self.terminate(id).await?;
                }
                if replay.is_none() {
                    self.log(&p.text, properties).await?;
                }
                Ok(Output::Message(format!(
                    "terminated {}",
                    if ids.is_empty() {
                        "no queries".to_owned()
                    } else {
                        ids.join(", ")
                    }
                )))
            }
            Statement::Print {
                topic,
                from_beginning,
                limit,
            } => self.print(topic, *from_beginning, *limit, p.position),
            Statement::Set { name, value } => {
                if let Some(message) = property_error(name, value) {
                    return Err(SqlError::plan(message, p.position));
                }
                self.inner
                    .state
                    .lock()
                    .properties
                    .insert(name.clone(), value.clone());
                Ok(Output::Message(format!("'{name}' set to '{value}'")))
            }
            Statement::Unset(name) => {
                self.inner.state.lock().properties.remove(name);
                Ok(Output::Message(format!("'{name}' unset")))
            }
            Statement::RunScript(path) => Err(SqlError::plan(
                format!(
                    "RUN SCRIPT '{path}' reads a file where the statements are typed: run it in \
                     the shell (quiver shell), or send the file's statements"
                ),
                p.position,
            )),
        }
    }

    /// A name already in the catalog: `IF NOT EXISTS` makes the statement a no-op (its
    /// message returned), `OR REPLACE` lets it go on, anything else is refused.
    fn exists(
        &self,
        kind: SourceKind,
        name_s: &str,
        name: &sqlparser::ast::Ident,
        if_not_exists: bool,
        or_replace: bool,
    ) -> Result<Option<Output>, SqlError> {
        let state = self.inner.state.lock();
        if state.registered.contains_key(name_s) {
            return Err(SqlError::plan(
                format!(
                    "'{name_s}' is a stream this program registered; give the new one another \
                     name"
                ),
                Position::from(name.span.start),
            ));
        }
        let Some(existing) = state.sources.get(name_s) else {
            return Ok(None);
        };
        if if_not_exists {
            return Ok(Some(Output::Message(format!(
                "{} '{name_s}' already exists",
                existing.kind
            ))));
        }
        if or_replace && existing.kind == kind {
            return Ok(None);
        }
        if or_replace {
            let what = existing.kind.as_str();
            return Err(SqlError::plan(
                format!(
                    "'{name_s}' is a {}, and CREATE OR REPLACE {} cannot replace it with a {}: \
                     DROP {what} {name_s} first",
                    what.to_lowercase(),
                    kind.as_str(),
                    kind.as_str().to_lowercase()
                ),
                Position::from(name.span.start),
            ));
        }
        Err(SqlError::plan(
            format!(
                "a {} named '{name_s}' already exists; DROP it first, or write CREATE OR \
                 REPLACE / IF NOT EXISTS",
                existing.kind.as_str().to_lowercase()
            ),
            Position::from(name.span.start),
        ))
    }

    fn unknown(&self, name: &str, position: Position) -> SqlError {
        let state = self.inner.state.lock();
        let hint = crate::did_you_mean(name, state.sources.keys().map(String::as_str))
            .map(|s| format!("; did you mean '{s}'?"))
            .unwrap_or_default();
        SqlError::plan(format!("no stream or table named '{name}'{hint}"), position)
    }

    /// Checks a `CREATE STREAM|TABLE (…) WITH (…)` and creates its topic if asked to.
    async fn declare(
        &self,
        kind: SourceKind,
        name: &str,
        columns: &[crate::parser::ColumnDef],
        with: &[Property],
        statement: &str,
        position: Position,
    ) -> Result<SourceInfo, SqlError> {
        check_properties(with, SOURCE_PROPERTIES)?;
        let get = |n: &str| with.iter().find(|p| p.name == n);
        let Some(topic) = get("KAFKA_TOPIC") else {
            return Err(SqlError::plan(
                format!(
                    "CREATE {kind} needs the topic it reads: add WITH (KAFKA_TOPIC='{name}', \
                     VALUE_FORMAT='JSON')"
                ),
                position,
            ));
        };
        let topic_name = topic.value.text();
        let format_of = |key: &str, default: FormatName| -> Result<FormatName, SqlError> {
            match get(key).or_else(|| get("FORMAT")) {
                None => Ok(default),
                Some(p) => FormatName::parse(&p.value.text()).ok_or_else(|| {
                    SqlError::plan(
                        format!(
                            "{}='{}' is not a format; use JSON, DELIMITED, KAFKA or NONE",
                            p.name,
                            p.value.text()
                        ),
                        p.position,
                    )
                }),
            }
        };
        let mut key_columns: Vec<FieldRef> = Vec::new();
        let mut value_columns: Vec<FieldRef> = Vec::new();
        if columns.is_empty() {
            return Err(SqlError::plan(
                format!(
                    "CREATE {kind} {name} needs its columns: CREATE {kind} {name} (id BIGINT, …)"
                ),
                position,
            ));
        }
        for c in columns {
            let t = arrow_type(&c.data_type).map_err(|m| SqlError::plan(m, c.position))?;
            let column = normalize(&c.name);
            if matches!(
                column.as_str(),
                ROWTIME | ROWPARTITION | ROWOFFSET | ROWHEADERS
            ) {
                return Err(SqlError::plan(
                    format!(
                        "'{column}' is a pseudo-column every {kind} has; name the column otherwise"
                    ),
                    c.position,
                ));
            }
            if key_columns
                .iter()
                .chain(&value_columns)
                .any(|f| f.name() == &column)
            {
                return Err(SqlError::plan(
                    format!("the column '{column}' is declared twice"),
                    c.position,
                ));
            }
            let f = Arc::new(Field::new(column, t, !c.key));
            if c.key {
                key_columns.push(f);
            } else {
                value_columns.push(f);
            }
        }
        if kind == SourceKind::Table && key_columns.is_empty() {
            return Err(SqlError::plan(
                "a table needs a PRIMARY KEY: mark its key column, as in 'id BIGINT PRIMARY KEY'",
                position,
            ));
        }
        let key_default = key_format_for(&key_columns);
        let key_format = format_of("KEY_FORMAT", key_default)?;
        let value_format = match get("VALUE_FORMAT").or_else(|| get("FORMAT")) {
            Some(_) => format_of("VALUE_FORMAT", FormatName::Json)?,
            None => {
                return Err(SqlError::plan(
                    format!(
                        "CREATE {kind} needs VALUE_FORMAT: add VALUE_FORMAT='JSON' (or DELIMITED or KAFKA) to WITH"
                    ),
                    position,
                ));
            }
        };
        let delimiter = match get("VALUE_DELIMITER") {
            None => b',',
            Some(p) => match p.value.text().as_str() {
                "TAB" => b'\t',
                "SPACE" => b' ',
                d if d.len() == 1 => d.as_bytes()[0],
                d => {
                    return Err(SqlError::plan(
                        format!("VALUE_DELIMITER is one character, TAB or SPACE, not '{d}'"),
                        p.position,
                    ));
                }
            },
        };
        let timestamp = match get("TIMESTAMP") {
            None => None,
            Some(p) => {
                let column = p.value.text().to_lowercase();
                let Some(f) = value_columns.iter().find(|f| f.name() == &column) else {
                    return Err(SqlError::plan(
                        format!("TIMESTAMP='{column}' names no value column"),
                        p.position,
                    ));
                };
                let text = f.data_type() == &DataType::Utf8;
                if text && get("TIMESTAMP_FORMAT").is_none() {
                    return Err(SqlError::plan(
                        format!(
                            "TIMESTAMP='{column}' is a STRING: add TIMESTAMP_FORMAT (e.g. \
                             TIMESTAMP_FORMAT='yyyy-MM-dd HH:mm:ss') to say how to read it"
                        ),
                        p.position,
                    ));
                }
                if !text && !matches!(f.data_type(), DataType::Int64 | DataType::Timestamp(_, _)) {
                    return Err(SqlError::plan(
                        format!(
                            "TIMESTAMP='{column}' must be a BIGINT of milliseconds, a TIMESTAMP, \
                             or a STRING with a TIMESTAMP_FORMAT, not {}",
                            sql_name(f.data_type())
                        ),
                        p.position,
                    ));
                }
                Some((column, text))
            }
        };
        // ksqlDB's TIMESTAMP_FORMAT is a Java DateTimeFormatter pattern; the engine reads
        // chrono's.
        let timestamp_format = match get("TIMESTAMP_FORMAT") {
            None => None,
            Some(p) => {
                let Some((column, text)) = &timestamp else {
                    return Err(SqlError::plan(
                        "TIMESTAMP_FORMAT says how to read the TIMESTAMP column's text: add \
                         TIMESTAMP='column'",
                        p.position,
                    ));
                };
                if !text {
                    return Err(SqlError::plan(
                        format!(
                            "TIMESTAMP_FORMAT reads text, and TIMESTAMP='{column}' is not a STRING"
                        ),
                        p.position,
                    ));
                }
                let pattern = p.value.text();
                let chrono = crate::functions::java_pattern(&pattern).map_err(|e| {
                    SqlError::plan(
                        format!(
                            "TIMESTAMP_FORMAT='{pattern}': {}",
                            crate::plan::describe_plan_error(&e)
                        ),
                        p.position,
                    )
                })?;
                Some(chrono)
            }
        };
        let info = SourceInfo {
            kind,
            name: name.to_owned(),
            topic: topic_name.clone(),
            key_columns,
            value_columns,
            key_format,
            value_format,
            delimiter,
            timestamp: timestamp.map(|(column, _)| column),
            timestamp_format,
            written_by: None,
            statement: statement.to_owned(),
        };
        info.formats().map_err(|m| SqlError::plan(m, position))?;
        if self.inner.broker.partition_count(&topic_name).is_err() {
            let Some(partitions) = get("PARTITIONS") else {
                return Err(SqlError::plan(
                    format!(
                        "the topic '{topic_name}' does not exist; create it, or add \
                         PARTITIONS=n to WITH to have it created"
                    ),
                    topic.position,
                ));
            };
            let n = partition_count(partitions)?;
            self.inner
                .broker
                .create_topic(NewTopic::new(&topic_name, n))
                .await?;
        }
        Ok(info)
    }

    /// The tables a query can read: every stream and table, read from `start`.
    fn context(&self, start: &StartFrom) -> Result<Context<'_>, SqlError> {
        let state = self.inner.state.lock();
        let mut tables: std::collections::HashMap<String, Arc<dyn TableSource>> =
            std::collections::HashMap::new();
        for (name, info) in &state.sources {
            let source = info.source(&self.inner.broker, start.clone())?;
            tables.insert(
                name.clone(),
                StreamTable::new(name.clone(), Arc::new(source)) as Arc<dyn TableSource>,
            );
        }
        for (name, source) in &state.registered {
            tables.insert(
                name.clone(),
                StreamTable::new(name.clone(), source.clone()) as Arc<dyn TableSource>,
            );
        }
        Ok(Context {
            state: &self.inner.functions,
            tables,
            error: std::cell::RefCell::new(None),
        })
    }

    fn start_from(properties: &BTreeMap<String, String>) -> StartFrom {
        match properties.get(OFFSET_RESET).map(String::as_str) {
            Some("earliest") => StartFrom::Earliest,
            _ => StartFrom::Latest,
        }
    }

    /// Plans a continuous query.
    fn plan_streaming(
        &self,
        query: &StreamingQuery,
        properties: &BTreeMap<String, String>,
    ) -> Result<(LogicalPlan, EmitMode), SqlError> {
        let mut query = query.clone();
        let functions = self.inner.functions.aggregate_functions();
        rewrite_window(&mut query, &|name| functions.contains_key(name))?;
        let context = self.context(&Self::start_from(properties))?;
        let plan = plan_query(&context, &query)?;
        let plan = crate::join::push_filters_to_streams(plan)?;
        // Aggregations of tables before the joins (an aggregated table may be joined), and
        // again after them (a join of tables may be aggregated).
        let plan = crate::join::plan_table_aggregates(plan, query.position)?;
        let plan = crate::join::plan_joins(plan, &query.within, query.position)?;
        let plan = crate::join::plan_table_aggregates(plan, query.position)?;
        let plan = crate::top_n::plan_top_n(plan, query.position)?;
        let emit = match query.emit {
            Some(Emit::Final) => {
                if query.window.is_none() && query.inner_windows.is_empty() {
                    return Err(SqlError::plan(
                        "EMIT FINAL needs a windowed aggregation (a WINDOW clause): a window's \
                         final result is known when it closes",
                        query.position,
                    ));
                }
                EmitMode::Final
            }
            _ => EmitMode::Changes,
        };
        Ok((plan, emit))
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_as(
        &self,
        kind: SourceKind,
        name: &str,
        with: &[Property],
        query: &StreamingQuery,
        id: &str,
        text: &str,
        properties: &BTreeMap<String, String>,
        json_key: bool,
    ) -> Result<String, SqlError> {
        check_properties(
            with,
            &[
                "KAFKA_TOPIC",
                "VALUE_FORMAT",
                "KEY_FORMAT",
                "FORMAT",
                "PARTITIONS",
                "REPLICAS",
            ],
        )?;
        let get = |n: &str| with.iter().find(|p| p.name == n);
        let mut query = query.clone();
        if kind == SourceKind::Table {
            select_window_bounds(&mut query);
        }
        let query = &query;
        self.not_registered(query)?;
        let (plan, emit) = self.plan_streaming(query, properties)?;
        let output = plan.schema().as_arrow().clone();
        let aggregated = find_aggregate(&plan).is_some();
        // A join of tables is a table too, keyed by the left table's key.
        let joined_tables = if aggregated || output.field_with_name(DELETED).is_err() {
            None
        } else {
            crate::join::result_key(&plan)
        };
        // A top-N is a table too, keyed by its groups and rank.
        let top_n = crate::top_n::result_key(&plan)
            .transpose()
            .map_err(|m| SqlError::plan(m, query.position))?;
        let is_table = aggregated || joined_tables.is_some() || top_n.is_some();
        let key = match &query.partition_by {
            Some((_, at)) if is_table => {
                return Err(SqlError::plan(
                    "a table is keyed by its GROUP BY columns; PARTITION BY re-keys a stream \
                     (CREATE STREAM … AS SELECT … PARTITION BY column)",
                    *at,
                ));
            }
            Some((columns, at)) => partition_key(columns, &output, *at)?,
            None if is_table => top_n.or(joined_tables).unwrap_or_else(|| output_key(&plan)),
            None => self.source_key(&plan, &output),
        };
        if kind == SourceKind::Table
            && !is_table
            && output.field_with_name(DELETED).is_ok()
            && let Some(key) = crate::join::unselected_key(&plan)
        {
            return Err(SqlError::plan(
                format!(
                    "a table's query must select its key columns ({}): they are the new \
                     table's key",
                    key.join(", ")
                ),
                query.position,
            ));
        }
        if kind == SourceKind::Table && !is_table {
            return Err(SqlError::plan(
                "CREATE TABLE … AS SELECT needs an aggregation (GROUP BY), a join of tables or a \
                 top-N: a query without one is a stream; write CREATE STREAM … AS SELECT",
                query.position,
            ));
        }
        if kind == SourceKind::Stream && is_table {
            return Err(SqlError::plan(
                "an aggregation (GROUP BY) or a top-N gives a table: write CREATE TABLE … AS SELECT",
                query.position,
            ));
        }
        if is_table && key.is_empty() {
            return Err(SqlError::plan(
                "a table's query must select its GROUP BY columns: they are the table's key",
                query.position,
            ));
        }
        let mut key_columns = Vec::new();
        let mut value_columns = Vec::new();
        for f in output.fields() {
            if f.name() == DELETED {
                continue;
            }
            if matches!(f.name().as_str(), ROWPARTITION | ROWOFFSET | ROWHEADERS) {
                continue;
            }
            if key.contains(f.name()) {
                key_columns.push(declared_field(f));
            } else if f.name() != ROWTIME {
                value_columns.push(declared_field(f));
            }
        }
        let topic = get("KAFKA_TOPIC").map_or_else(|| name.to_owned(), |p| p.value.text());
        let key_default = if json_key && !key_columns.is_empty() {
            FormatName::Json
        } else {
            key_format_for(&key_columns)
        };
        let format = |k: &str, default| match get(k).or_else(|| get("FORMAT")) {
            None => Ok(default),
            Some(p) => FormatName::parse(&p.value.text()).ok_or_else(|| {
                SqlError::plan(
                    format!(
                        "{}='{}' is not a format; use JSON, DELIMITED or KAFKA",
                        p.name,
                        p.value.text()
                    ),
                    p.position,
                )
            }),
        };
        let info = SourceInfo {
            kind,
            name: name.to_owned(),
            topic: topic.clone(),
            key_columns,
            value_columns,
            key_format: format("KEY_FORMAT", key_default)?,
            value_format: format("VALUE_FORMAT", FormatName::Json)?,
            delimiter: b',',
            timestamp: None,
            timestamp_format: None,
            written_by: Some(id.to_owned()),
            statement: text.to_owned(),
        };
        info.formats()
            .map_err(|m| SqlError::plan(m, query.position))?;
        let late = self.late_data_topic(query, &plan).await?;
        if self.inner.broker.partition_count(&topic).is_err() {
            let partitions = match get("PARTITIONS") {
                Some(p) => partition_count(p)?,
                None => self.input_partitions(&plan).unwrap_or(1),
            };
            self.inner
                .broker
                .create_topic(NewTopic::new(&topic, partitions))
                .await?;
        }
        let plan = crate::plan::with_record_time(plan)?;
        // A table's rows are kept in a store as well, for pull queries.
        let plan = if is_table {
            let schema = Arc::new(plan.schema().as_arrow().clone());
            let store = TableStore::new(name, schema, &key, STORE_MAX_BYTES)?;
            LogicalPlan::Extension(datafusion::logical_expr::Extension {
                node: Arc::new(MaterializeNode { input: plan, store }),
            })
        } else {
            plan
        };
        self.start_persistent(id, text, &info, &plan, emit, late)
            .await?;
        self.inner
            .state
            .lock()
            .sources
            .insert(name.to_owned(), info);
        Ok(format!(
            "{} '{name}' created over topic '{topic}', written by query {id}",
            title(kind)
        ))
    }

    /// A stream query's key when it has no PARTITION BY: its first source's key columns, when
    /// it selects them all under their names (as ksqlDB keeps a stream's key).
    fn source_key(&self, plan: &LogicalPlan, output: &Schema) -> Vec<String> {
        let mut first = None;
        let _ = plan.apply(|node| {
            if let LogicalPlan::TableScan(scan) = node {
                first = Some(scan.table_name.table().to_owned());
                return Ok(datafusion::common::tree_node::TreeNodeRecursion::Stop);
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        });
        let Some(info) = first.and_then(|n| self.inner.state.lock().sources.get(&n).cloned())
        else {
            return Vec::new();
        };
        let key: Vec<String> = info.key_columns.iter().map(|f| f.name().clone()).collect();
        if !key.is_empty() && key.iter().all(|k| output.field_with_name(k).is_ok()) {
            key
        } else {
            Vec::new()
        }
    }

    /// The most partitions of the topics a plan reads (its output's default partitioning).
    fn input_partitions(&self, plan: &LogicalPlan) -> Option<i32> {
        let mut most = None;
        let _ = plan.apply(|node| {
            if let LogicalPlan::TableScan(scan) = node
                && let Some(info) = self.inner.state.lock().sources.get(scan.table_name.table())
                && let Ok(n) = self.inner.broker.partition_count(&info.topic)
            {
                most = Some(most.map_or(n, |m: i32| m.max(n)));
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        });
        most
    }

    /// The topic of a query's `LATE DATA TO`, created (with as many partitions as the query's
    /// inputs) when it does not exist.
    async fn late_data_topic(
        &self,
        query: &StreamingQuery,
        plan: &LogicalPlan,
    ) -> Result<Option<String>, SqlError> {
        let Some((topic, at)) = &query.late_data else {
            return Ok(None);
        };
        if query.window.is_none() && query.inner_windows.is_empty() && query.within.is_empty() {
            return Err(SqlError::plan(
                "LATE DATA TO goes with a WINDOW or a join WITHIN a time bound: only they have \
                 records that come too late",
                *at,
            ));
        }
        if self.inner.broker.partition_count(topic).is_err() {
            let partitions = self.input_partitions(plan).unwrap_or(1);
            self.inner
                .broker
                .create_topic(NewTopic::new(topic, partitions))
                .await
                .map_err(|e| SqlError::plan(format!("LATE DATA TO '{topic}': {e}"), *at))?;
        }
        Ok(Some(topic.clone()))
    }

    #[allow(clippy::too_many_arguments)]
    async fn start_persistent(
        &self,
        id: &str,
        text: &str,
        info: &SourceInfo,
        plan: &LogicalPlan,
        emit: EmitMode,
        late_data_topic: Option<String>,
    ) -> Result<(), SqlError> {
        let format = info.topic_format().map_err(SqlError::runtime)?;
        let sink = TopicSink::new(&self.inner.broker, &info.topic, format);
        let storage = CheckpointStorage::local(&self.inner.checkpoints)?;
        let options = QueryOptions {
            plan: PlanOptions { emit },
            checkpoint: Some(CheckpointConfig::exactly_once(storage)),
            late_data_topic,
            ..QueryOptions::default()
        };
        let query = Query::new(id, plan, vec![Box::new(sink)], options)?;
        let handle = self.inner.runtime.start(query).await?;
        self.inner.state.lock().queries.insert(
            id.to_owned(),
            Persistent {
                sql: text.to_owned(),
                sink: info.name.clone(),
                handle: Some(handle),
            },
        );
        Ok(())
    }

    async fn select(
        &self,
        query: &StreamingQuery,
        properties: &BTreeMap<String, String>,
    ) -> Result<Output, SqlError> {
        no_partition_by(query)?;
        if query.emit.is_none() {
            if let Some((_, at)) = &query.late_data {
                return Err(SqlError::plan(
                    "LATE DATA TO belongs to a continuous query (EMIT CHANGES or EMIT FINAL): a \
                     query over history has no late records",
                    *at,
                ));
            }
            return self.history(query).await;
        }
        let (plan, options) = self.continuous(query, properties).await?;
        let (tx, rx) = mpsc::channel(16);
        // Rows reach the client sooner than the default poll would bring them.
        let options = QueryOptions {
            poll_wait: Duration::from_millis(50),
            ..options
        };
        let schema = Arc::new(plan.schema().as_arrow().clone());
        let schema = match schema.index_of(DELETED) {
            Ok(i) => {
                let mut fields: Vec<FieldRef> = schema.fields().iter().cloned().collect();
                fields.remove(i);
                Arc::new(Schema::new(fields))
            }
            Err(_) => schema,
        };
        let sink = ChannelSink { tx: tx.clone() };
        let q = Query::new("push", &plan, vec![Box::new(sink)], options)?;
        let handle = self.inner.runtime.start(q).await?;
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            // Until cancelled, the reader gone, or the query ended: a bounded source (a
            // registered one) ends it, and then the rows end, after a failure's error.
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = &mut stop_rx => {
                        let _ = handle.stop().await;
                        return;
                    }
                    _ = tx.closed() => return,
                    _ = tick.tick() => {
                        if handle.is_finished() {
                            if let Err(e) = handle.wait().await {
                                let _ = tx.send(Err(SqlError::from(e))).await;
                            }
                            return;
                        }
                    }
                }
            }
        });
        Ok(Output::Push(PushQuery {
            schema,
            rows: rx,
            limit: query.limit,
            sent: 0,
            stop: Some(stop_tx),
            task: Some(task),
        }))
    }

    /// A query without EMIT: over the streams' history and the tables' current rows, as
    /// one batch query.
    async fn history(&self, query: &StreamingQuery) -> Result<Output, SqlError> {
        if let Some(position) = query
            .window
            .map(|(_, p)| p)
            .or(query.inner_windows.first().map(|w| w.position))
        {
            return Err(SqlError::plan(
                "a WINDOW clause makes a continuous query: add EMIT CHANGES (or EMIT FINAL)",
                position,
            ));
        }
        if let Some(output) = self.point_lookup(query).await? {
            return Ok(output);
        }
        if let Some(name) = self.registered_in(query) {
            return Err(SqlError::plan(
                format!(
                    "'{name}' is a stream this program registered, not a topic: it has no \
                     history to read; add EMIT CHANGES to read it as it comes"
                ),
                query.position,
            ));
        }
        let mut tables: std::collections::HashMap<String, Arc<dyn TableSource>> =
            std::collections::HashMap::new();
        let sources: Vec<SourceInfo> = self.inner.state.lock().sources.values().cloned().collect();
        // Only the sources the query names are read.
        let named = names_in(&query.query);
        for info in sources.iter().filter(|s| named.contains(&s.name)) {
            let rows = |batch: RecordBatch| {
                MemTable::try_new(batch.schema(), vec![vec![batch]])
                    .map(|t| Arc::new(t) as Arc<dyn datafusion::catalog::TableProvider>)
            };
            let table = match self.materialized(&info.name).await {
                Some(store) => rows(self.store_rows(&store, info, query)?)?,
                // A stream's records are read in place, as the query pulls them.
                None if info.kind == SourceKind::Stream => {
                    Arc::new(crate::history::TopicTable::new(
                        &self.inner.broker,
                        &info.topic,
                        decoder(info)?,
                        info.timestamp.is_none(),
                    ))
                }
                None => rows(self.table_rows(info).await?)?,
            };
            tables.insert(info.name.clone(), batch_source(table));
        }
        for info in sources.iter().filter(|s| !named.contains(&s.name)) {
            let schema = Arc::new(info.schema());
            let table = MemTable::try_new(schema, vec![vec![]])?;
            tables.insert(info.name.clone(), batch_source(Arc::new(table)));
        }
        let context = Context {
            state: &self.inner.functions,
            tables,
            error: std::cell::RefCell::new(None),
        };
        let mut q = query.clone();
        if let Some(limit) = q.limit.take() {
            q.query.limit_clause = Some(sqlparser::ast::LimitClause::LimitOffset {
                limit: Some(sqlparser::ast::Expr::value(sqlparser::ast::Value::Number(
                    limit.to_string(),
                    false,
                ))),
                offset: None,
                limit_by: vec![],
            });
        }
        let plan = plan_query(&context, &q)?;
        let state = &self.inner.functions;
        // A type error DataFusion finds only while optimizing (a literal that does not cast,
        // operands no operator takes) is still the statement's.
        let at = |e: datafusion::error::DataFusionError| {
            SqlError::plan(crate::plan::describe_plan_error(&e), q.position)
        };
        let plan = state.optimize(&plan).map_err(at)?;
        // The plan is optimized: plan it physically without optimizing it a second time (as
        // SessionState::create_physical_plan would).
        let physical = state
            .query_planner()
            .create_physical_plan(&plan, state)
            .await
            .map_err(at)?;
        let schema = physical.schema();
        let batches = collect(physical, state.task_ctx()).await?;
        Ok(Output::Rows { schema, batches })
    }

    /// A pull query that only reads columns of one key's row (`SELECT a, b AS c FROM t WHERE
    /// key = 'k'`, `SELECT *`) answered straight from the table's store, without planning it
    /// through DataFusion; `None` for any other query (it is planned as usual, with the same
    /// result for these).
    async fn point_lookup(&self, query: &StreamingQuery) -> Result<Option<Output>, SqlError> {
        use sqlparser::ast::{GroupByExpr, SelectItem, TableFactor};
        if query.limit == Some(0) {
            return Ok(None);
        }
        let q = &query.query;
        if q.with.is_some()
            || q.order_by.is_some()
            || q.limit_clause.is_some()
            || q.fetch.is_some()
            || !q.locks.is_empty()
        {
            return Ok(None);
        }
        let SetExpr::Select(select) = q.body.as_ref() else {
            return Ok(None);
        };
        let plain = select.distinct.is_none()
            && select.top.is_none()
            && select.into.is_none()
            && select.having.is_none()
            && select.qualify.is_none()
            && select.named_window.is_empty()
            && select.lateral_views.is_empty()
            && select.cluster_by.is_empty()
            && select.distribute_by.is_empty()
            && select.sort_by.is_empty()
            && matches!(&select.group_by, GroupByExpr::Expressions(g, m) if g.is_empty() && m.is_empty())
            && select.from.len() == 1
            && select.from[0].joins.is_empty();
        if !plain {
            return Ok(None);
        }
        let TableFactor::Table {
            name,
            alias,
            args: None,
            with_hints,
            ..
        } = &select.from[0].relation
        else {
            return Ok(None);
        };
        // What a qualified column may be qualified with: the alias, else the table's name.
        let qualifier = match alias {
            Some(a) => normalize(&a.name),
            None => crate::parser::normalize_object(name),
        };
        if !with_hints.is_empty() {
            return Ok(None);
        }
        let info = {
            let state = self.inner.state.lock();
            match state.sources.get(&crate::parser::normalize_object(name)) {
                Some(info) if info.kind == SourceKind::Table => info.clone(),
                _ => return Ok(None),
            }
        };
        // The WHERE clause is exactly an equality per key column.
        let Some(selection) = &select.selection else {
            return Ok(None);
        };
        let mut equalities = 0;
        for e in conjuncts(selection) {
            use sqlparser::ast::{BinaryOperator, Expr as E};
            match e {
                E::BinaryOp {
                    left,
                    op: BinaryOperator::Eq,
                    right,
                } if matches!(
                    (left.as_ref(), right.as_ref()),
                    (E::Identifier(_) | E::CompoundIdentifier(_), E::Value(_))
                        | (E::Value(_), E::Identifier(_) | E::CompoundIdentifier(_))
                ) =>
                {
                    equalities += 1
                }
                _ => return Ok(None),
            }
        }
        if equalities != info.key_columns.len() {
            return Ok(None);
        }
        if key_lookup(query, &info).is_none() {
            return Ok(None);
        }
        // The select list: `*`, or columns of the table (aliased or not).
        let schema = info.schema();
        let mut picked: Vec<(usize, String)> = Vec::new();
        for item in &select.projection {
            use sqlparser::ast::Expr as E;
            let (expr, alias) = match item {
                SelectItem::Wildcard(options)
                    if options.opt_exclude.is_none()
                        && options.opt_except.is_none()
                        && options.opt_replace.is_none()
                        && options.opt_rename.is_none()
                        && options.opt_ilike.is_none() =>
                {
                    picked.extend(
                        schema
                            .fields()
                            .iter()
                            .enumerate()
                            .map(|(i, f)| (i, f.name().clone())),
                    );
                    continue;
                }
                SelectItem::UnnamedExpr(e) => (e, None),
                SelectItem::ExprWithAlias { expr, alias } => (expr, Some(normalize(alias))),
                _ => return Ok(None),
            };
            let column = match expr {
                E::Identifier(i) => normalize(i),
                E::CompoundIdentifier(parts)
                    if parts.len() == 2 && normalize(&parts[0]) == qualifier =>
                {
                    normalize(&parts[1])
                }
                _ => return Ok(None),
            };
            let Ok(i) = schema.index_of(&column) else {
                return Ok(None);
            };
            picked.push((i, alias.unwrap_or(column)));
        }
        // Names must be unique (DataFusion refuses the query otherwise: let it say so).
        let mut names: Vec<&String> = picked.iter().map(|(_, n)| n).collect();
        names.sort();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Ok(None);
        }
        let Some(store) = self.materialized(&info.name).await else {
            return Ok(None);
        };
        // The key's row, or none.
        let rows = self.store_rows(&store, &info, query)?;
        let fields: Vec<Field> = picked
            .iter()
            .map(|(i, name)| rows.schema().field(*i).clone().with_name(name))
            .collect();
        let columns: Vec<ArrayRef> = picked
            .iter()
            .map(|(i, _)| rows.column(*i).clone())
            .collect();
        let schema = Arc::new(Schema::new(fields));
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        Ok(Some(Output::Rows {
            schema,
            batches: vec![batch],
        }))
    }

    /// The store of a table a running query materializes, once the query has restored it
    /// (waiting a little for a query that is starting; `None` past that, and the table is
    /// read from its topic).
    async fn materialized(&self, name: &str) -> Option<TableStore> {
        for _ in 0..STORE_WAIT_ROUNDS {
            let (store, ready) = {
                let state = self.inner.state.lock();
                let handle = state
                    .queries
                    .values()
                    .filter(|q| q.sink == name)
                    .find_map(|q| q.handle.as_ref())?;
                if handle.is_finished() {
                    return None;
                }
                (handle.stores().first().cloned()?, handle.is_ready())
            };
            if ready {
                return Some(store);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// A pull query's rows from a table's store: the row of one key when the query's WHERE
    /// fixes every key column to a value, else every row; in the table's columns (the
    /// pseudo-columns a store does not keep are null).
    fn store_rows(
        &self,
        store: &TableStore,
        info: &SourceInfo,
        query: &StreamingQuery,
    ) -> Result<RecordBatch, SqlError> {
        let schema = Arc::new(info.schema());
        let rows = match key_lookup(query, info) {
            Some(key) => match store.get(&key)? {
                Some(row) => row,
                None => RecordBatch::new_empty(store.schema()),
            },
            None => store.scan()?,
        };
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for f in schema.fields() {
            columns.push(match rows.schema().index_of(f.name()) {
                Ok(i) => quiver_engine::arrow::compute::cast(rows.column(i), f.data_type())?,
                Err(_) => {
                    quiver_engine::arrow::array::new_null_array(f.data_type(), rows.num_rows())
                }
            });
        }
        let nullable = Arc::new(Schema::new(
            schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        Ok(RecordBatch::try_new(nullable, columns)?)
    }

    /// A table's current rows, from its changelog up to now (latest per key, deleted keys
    /// left out).
    async fn table_rows(&self, info: &SourceInfo) -> Result<RecordBatch, SqlError> {
        let decoder = decoder(info)?;
        let schema = decoder.schema();
        let mut batches = Vec::new();
        // Committed records only: a persistent query's output holds aborted transactions.
        let mut reader = self.inner.broker.topic_reader(
            &info.topic,
            StartAt::Earliest,
            ReaderOptions {
                isolation: Isolation::ReadCommitted,
                ..ReaderOptions::default()
            },
        )?;
        loop {
            let read = reader.next_batches(Duration::ZERO).await?;
            if read.is_empty() {
                break;
            }
            for b in &read {
                let decoded = decoder.decode(b.partition, &b.records)?;
                if decoded.batch.num_rows() > 0 {
                    batches.push(decoded.batch);
                }
            }
        }
        let all = quiver_engine::arrow::compute::concat_batches(&schema, &batches)?;
        latest_per_key(&all, &info.key_columns)
    }

    async fn insert_values(
        &self,
        target: &sqlparser::ast::Ident,
        columns: &[sqlparser::ast::Ident],
        rows: &[Vec<sqlparser::ast::Expr>],
        position: Position,
    ) -> Result<Output, SqlError> {
        let name = normalize(target);
        let Some(info) = self.inner.state.lock().sources.get(&name).cloned() else {
            return Err(self.unknown(&name, Position::from(target.span.start)));
        };
        let mut schema = info.schema();
        let names: Vec<String> = if columns.is_empty() {
            schema.fields().iter().map(|f| f.name().clone()).collect()
        } else {
            columns.iter().map(normalize).collect()
        };
        // `INSERT INTO s (ROWTIME, …)` sets the records' timestamps (otherwise they are now,
        // or the stream's TIMESTAMP column).
        if names.iter().any(|n| n == ROWTIME) && schema.field_with_name(ROWTIME).is_err() {
            let mut fields: Vec<FieldRef> = schema.fields().iter().cloned().collect();
            fields.push(Arc::new(Field::new(
                ROWTIME,
                DataType::Timestamp(TimeUnit::Millisecond, None),
                true,
            )));
            schema = Schema::new(fields);
        }
        for n in &names {
            if schema.field_with_name(n).is_err() {
                return Err(SqlError::plan(
                    format!("'{name}' has no column '{n}'"),
                    position,
                ));
            }
        }
        // The rows as a VALUES query, typed by DataFusion, then cast to the columns.
        let values = sqlparser::ast::Values {
            explicit_row: false,
            value_keyword: false,
            rows: rows
                .iter()
                .map(|r| sqlparser::ast::Parens::with_empty_span(r.clone()))
                .collect(),
        };
        for (i, row) in rows.iter().enumerate() {
            if row.len() != names.len() {
                return Err(SqlError::plan(
                    format!(
                        "row {} has {} values for {} columns ({})",
                        i + 1,
                        row.len(),
                        names.len(),
                        names.join(", ")
                    ),
                    position,
                ));
            }
        }
        let query = StreamingQuery {
            query: Box::new(sqlparser::ast::Query {
                with: None,
                body: Box::new(sqlparser::ast::SetExpr::Values(values)),
                order_by: None,
                limit_clause: None,
                fetch: None,
                locks: vec![],
                for_clause: None,
                settings: None,
                format_clause: None,
                pipe_operators: vec![],
            }),
            window: None,
            inner_windows: Vec::new(),
            within: Vec::new(),
            partition_by: None,
            late_data: None,
            emit: None,
            limit: None,
            position,
        };
        let context = Context {
            state: &self.inner.functions,
            tables: Default::default(),
            error: std::cell::RefCell::new(None),
        };
        let plan = plan_query(&context, &query)?;
        let state = &self.inner.functions;
        let physical = state.create_physical_plan(&plan).await?;
        let batches = collect(physical, state.task_ctx()).await?;
        let mut written = 0;
        let format = info.topic_format().map_err(SqlError::runtime)?;
        let mut sink = TopicSink::new(&self.inner.broker, &info.topic, format);
        sink.open(Arc::new(schema.clone())).await?;
        for b in batches {
            let mut arrays: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
            for f in schema.fields() {
                let column = match names.iter().position(|n| n == f.name()) {
                    Some(i) => {
                        let a = b.column(i);
                        // Strict: a value that does not convert is an error, never a null.
                        let strict = quiver_engine::arrow::compute::CastOptions {
                            safe: false,
                            ..Default::default()
                        };
                        quiver_engine::arrow::compute::cast_with_options(a, f.data_type(), &strict)
                            .map_err(|e| {
                                SqlError::plan(
                                    format!(
                                        "a value for '{}' is not a {}: {e}",
                                        f.name(),
                                        sql_name(f.data_type())
                                    ),
                                    position,
                                )
                            })?
                    }
                    None => {
                        quiver_engine::arrow::array::new_null_array(f.data_type(), b.num_rows())
                    }
                };
                arrays.push(column);
            }
            let nullable = Arc::new(Schema::new(
                schema
                    .fields()
                    .iter()
                    .map(|f| Field::new(f.name(), f.data_type().clone(), true))
                    .collect::<Vec<_>>(),
            ));
            let batch = RecordBatch::try_new(nullable, arrays)?;
            written += batch.num_rows();
            sink.write(batch).await?;
        }
        Ok(Output::Message(format!(
            "{written} row{} inserted into '{name}'",
            if written == 1 { "" } else { "s" }
        )))
    }

    fn print(
        &self,
        topic: &str,
        from_beginning: bool,
        limit: Option<u64>,
        position: Position,
    ) -> Result<Output, SqlError> {
        let partitions = self.inner.broker.partition_count(topic).map_err(|_| {
            SqlError::plan(
                format!("no topic named '{topic}' (SHOW TOPICS lists them)"),
                position,
            )
        })?;
        let schema = Arc::new(Schema::new(vec![
            Field::new("rowtime", DataType::Utf8, false),
            Field::new("partition", DataType::Utf8, false),
            Field::new("offset", DataType::Utf8, false),
            Field::new("key", DataType::Utf8, true),
            Field::new("value", DataType::Utf8, true),
        ]));
        let (tx, rx) = mpsc::channel(16);
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let broker = self.inner.broker.clone();
        let topic = topic.to_owned();
        let out_schema = schema.clone();
        let task = tokio::spawn(async move {
            let mut next = Vec::with_capacity(partitions as usize);
            for p in 0..partitions {
                let offsets = match broker.offsets(&topic, p) {
                    Ok(o) => o,
                    Err(e) => {
                        let _ = tx.send(Err(SqlError::from(e))).await;
                        return;
                    }
                };
                next.push(if from_beginning {
                    offsets.log_start_offset
                } else {
                    offsets.high_watermark
                });
            }
            loop {
                let mut any = false;
                for p in 0..partitions {
                    let read = match broker.read(&topic, p, next[p as usize], 1 << 20) {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = tx.send(Err(SqlError::from(e))).await;
                            return;
                        }
                    };
                    next[p as usize] = read.next_offset;
                    for b in &read.batches {
                        let Ok(records) = batch_to_records(&b.records) else {
                            continue;
                        };
                        any |= !records.is_empty();
                        let text = |v: &Option<bytes::Bytes>| {
                            v.as_ref().map(|v| String::from_utf8_lossy(v).into_owned())
                        };
                        let columns: Vec<ArrayRef> = vec![
                            Arc::new(StringArray::from_iter_values(
                                records.iter().map(|r| chrono_like(r.timestamp_ms)),
                            )),
                            Arc::new(StringArray::from_iter_values(
                                records.iter().map(|_| p.to_string()),
                            )),
                            Arc::new(StringArray::from_iter_values(
                                records.iter().map(|r| r.offset.to_string()),
                            )),
                            Arc::new(StringArray::from_iter(records.iter().map(|r| text(&r.key)))),
                            Arc::new(StringArray::from_iter(
                                records.iter().map(|r| text(&r.value)),
                            )),
                        ];
                        match RecordBatch::try_new(out_schema.clone(), columns) {
                            Ok(batch) => {
                                if tx.send(Ok(batch)).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                let _ = tx.send(Err(SqlError::from(e))).await;
                                return;
                            }
                        }
                    }
                }
                if !any {
                    tokio::select! {
                        _ = &mut stop_rx => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        });
        Ok(Output::Push(PushQuery {
            schema,
            rows: rx,
            limit,
            sent: 0,
            stop: Some(stop_tx),
            task: Some(task),
        }))
    }

    /// `CREATE SOURCE|SINK CONNECTOR`: the WITH properties are the keys of a connector config
    /// file (one config model under files, the REST API and SQL).
    async fn create_connector(
        &self,
        kind: ConnectorKind,
        name: &sqlparser::ast::Ident,
        if_not_exists: bool,
        with: &[Property],
        position: Position,
    ) -> Result<String, SqlError> {
        let name_s = name.value.clone();
        let at = Position::from(name.span.start);
        if self.inner.connectors.names().contains(&name_s) {
            if if_not_exists {
                return Ok(format!("connector '{name_s}' exists"));
            }
            return Err(SqlError::plan(
                format!("a connector named '{name_s}' exists; DROP CONNECTOR it first"),
                at,
            ));
        }
        let mut settings = BTreeMap::new();
        for p in with {
            if p.written == "name" && p.value.text() != name_s {
                return Err(SqlError::plan(
                    format!(
                        "the property 'name' says '{}' where the statement names '{name_s}'",
                        p.value.text()
                    ),
                    p.position,
                ));
            }
            settings.insert(p.written.clone(), p.value.text());
        }
        settings.insert("name".to_owned(), name_s.clone());
        let kind_word = match kind {
            ConnectorKind::Source => "SOURCE",
            ConnectorKind::Sink => "SINK",
        };
        let origin = format!("CREATE {kind_word} CONNECTOR {name_s}");
        let refused = |e: quiver_connectors::ConnectError| SqlError::plan(e.to_string(), position);
        let config = quiver_connectors::ConnectorConfig::from_settings(settings, &origin)
            .map_err(refused)?;
        if config.class.is_source() != (kind == ConnectorKind::Source) {
            let (is, write) = if config.class.is_source() {
                ("source", "SOURCE")
            } else {
                ("sink", "SINK")
            };
            return Err(SqlError::plan(
                format!(
                    "{:?} is a {is} connector; write CREATE {write} CONNECTOR",
                    config.class
                ),
                position,
            ));
        }
        let connector = quiver_connectors::Connector::from_config(config).map_err(refused)?;
        self.add_connector(connector, &name_s, at)
    }

    /// Adds a connector to the worker: started now, or after the replay of the command log
    /// (unless the log says it was paused).
    fn add_connector(
        &self,
        connector: quiver_connectors::Connector,
        name_s: &str,
        at: Position,
    ) -> Result<String, SqlError> {
        let describe = connector.describe();
        let replaying = {
            let mut replayed = self.inner.replayed_connectors.lock();
            match replayed.as_mut() {
                Some(r) => {
                    r.insert(name_s.to_owned(), false);
                    true
                }
                None => false,
            }
        };
        let added = if replaying {
            // Started after the replay, unless the log says it was paused.
            self.inner.connectors.add_paused(connector)
        } else {
            self.inner.connectors.add(connector)
        };
        added.map_err(|r| {
            let message = match r {
                quiver_connectors::Refusal::NotFound(m)
                | quiver_connectors::Refusal::Exists(m)
                | quiver_connectors::Refusal::Invalid(m) => m,
            };
            SqlError::plan(message, at)
        })?;
        Ok(format!("connector '{name_s}' created: {describe}"))
    }

    /// Logs a `CREATE` that made something (not one that found it there, nor a replayed one)
    /// and says what it did.
    async fn created(
        &self,
        message: String,
        replay: Option<i64>,
        text: &str,
        properties: &BTreeMap<String, String>,
    ) -> Result<Output, SqlError> {
        if replay.is_none() && !message.ends_with("exists") {
            self.log(text, properties).await?;
        }
        Ok(Output::Message(message))
    }

    /// `CREATE SINK name WITH (…) AS SELECT …`: the query writes a stream (or a table, for an
    /// aggregation) named like the sink, over a topic of JSON keys and values, and a sink
    /// connector of that name reads the topic with the query's columns. One config model: the
    /// WITH keys are a sink connector's, checked by the same code as a config file's.
    #[allow(clippy::too_many_arguments)]
    async fn create_sink_as(
        &self,
        name: &sqlparser::ast::Ident,
        if_not_exists: bool,
        with: &[Property],
        query: &StreamingQuery,
        replay: Option<i64>,
        text: &str,
        properties: &BTreeMap<String, String>,
    ) -> Result<String, SqlError> {
        let name_s = normalize(name);
        let at = Position::from(name.span.start);
        let connector_exists = self.inner.connectors.names().contains(&name_s);
        if connector_exists || self.inner.state.lock().sources.contains_key(&name_s) {
            if if_not_exists {
                return Ok(format!("sink '{name_s}' exists"));
            }
            return Err(SqlError::plan(
                format!(
                    "a {} named '{name_s}' exists; a sink takes a name no stream, table or \
                     connector has",
                    if connector_exists {
                        "connector"
                    } else {
                        "stream or table"
                    }
                ),
                at,
            ));
        }
        let (topic_with, connector_with): (Vec<Property>, Vec<Property>) = with
            .iter()
            .cloned()
            .partition(|p| matches!(p.name.as_str(), "KAFKA_TOPIC" | "PARTITIONS" | "REPLICAS"));
        let mut settings = BTreeMap::new();
        for p in &connector_with {
            if SINK_SETS.contains(&p.written.as_str()) {
                return Err(SqlError::plan(
                    format!(
                        "CREATE SINK … AS SELECT sets '{}' itself (it sinks the query's rows \
                         and columns); leave it out",
                        p.written
                    ),
                    p.position,
                ));
            }
            settings.insert(p.written.clone(), p.value.text());
        }
        settings
            .entry("connector.class".to_owned())
            .or_insert_with(|| "ParquetSink".to_owned());
        settings.insert("name".to_owned(), name_s.clone());
        let topic = topic_with
            .iter()
            .find(|p| p.name == "KAFKA_TOPIC")
            .map_or_else(|| name_s.clone(), |p| p.value.text());
        settings.insert("topics".to_owned(), topic.clone());
        let origin = format!("CREATE SINK {name_s}");
        let position = query.position;
        let build = |settings: BTreeMap<String, String>| {
            let refused = |e: quiver_connectors::ConnectError| SqlError::plan(e.to_string(), at);
            let config = quiver_connectors::ConnectorConfig::from_settings(settings, &origin)
                .map_err(refused)?;
            if config.class.is_source() {
                return Err(SqlError::plan(
                    format!(
                        "{:?} is a source connector; a sink writes out with a sink connector \
                         (ParquetSink, S3Sink)",
                        config.class
                    ),
                    at,
                ));
            }
            quiver_connectors::Connector::from_config(config).map_err(refused)
        };
        // The config is checked before anything is made.
        build(settings.clone())?;
        self.not_registered(query)?;
        let (plan, _) = self.plan_streaming(query, properties)?;
        let is_table = find_aggregate(&plan).is_some()
            || crate::top_n::result_key(&plan).is_some()
            || (plan.schema().as_arrow().field_with_name(DELETED).is_ok()
                && crate::join::result_key(&plan).is_some());
        let (kind, prefix) = if is_table {
            (SourceKind::Table, "CTAS")
        } else {
            (SourceKind::Stream, "CSAS")
        };
        let offset = match replay {
            Some(o) => o,
            None => self.next_command_offset()?,
        };
        let id = format!("{prefix}_{}_{offset}", name_s.to_uppercase());
        let topic_existed = self.inner.broker.partition_count(&topic).is_ok();
        self.create_as(
            kind,
            &name_s,
            &topic_with,
            query,
            &id,
            text,
            properties,
            true,
        )
        .await?;
        let made = (|| {
            let info = self
                .inner
                .state
                .lock()
                .sources
                .get(&name_s)
                .cloned()
                .ok_or_else(|| SqlError::plan("the sink's stream went missing", position))?;
            let columns =
                |fields: &[FieldRef]| schema_text(fields).map_err(|m| SqlError::plan(m, position));
            if info.key_columns.is_empty() {
                settings.insert("key.format".to_owned(), "none".to_owned());
            } else {
                settings.insert("key.format".to_owned(), "json".to_owned());
                settings.insert("key.schema".to_owned(), columns(&info.key_columns)?);
            }
            settings.insert("value.format".to_owned(), "json".to_owned());
            settings.insert("value.schema".to_owned(), columns(&info.value_columns)?);
            let connector = build(settings)?;
            let describe = connector.describe();
            self.add_connector(connector, &name_s, at)?;
            Ok(describe)
        })();
        match made {
            Ok(describe) => Ok(format!(
                "sink '{name_s}' created: query {id} writes its rows to the topic '{topic}', \
                 and the connector '{name_s}' sinks them ({describe})"
            )),
            Err(e) => {
                // Nothing half made stays behind (the topic, when this statement made it).
                let made_topic = !topic_existed && replay.is_none();
                if let Err(undo) = self.remove_sink(&name_s, true, made_topic).await {
                    tracing::warn!(sink = %name_s, "cannot undo a failed CREATE SINK: {undo}");
                }
                Err(e)
            }
        }
    }

    /// The persistent queries writing to the stream or table `name`.
    fn writers_of(&self, name: &str) -> Vec<String> {
        self.inner
            .state
            .lock()
            .queries
            .iter()
            .filter(|(_, q)| q.sink == name)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Stops the persistent query `id` and forgets it; what it wrote is no longer written by
    /// a query.
    async fn terminate(&self, id: &str) -> Result<(), SqlError> {
        let query = self.inner.state.lock().queries.remove(id);
        if let Some(handle) = query.and_then(|q| q.handle) {
            handle.stop().await?;
        }
        if let Some(source) = self
            .inner
            .state
            .lock()
            .sources
            .values_mut()
            .find(|s| s.written_by.as_deref() == Some(id))
        {
            source.written_by = None;
        }
        Ok(())
    }

    /// Removes what `CREATE SINK … AS SELECT` made: its connector (which commits what it
    /// had), then the query and the stream (`stream`), and the topic when asked.
    async fn remove_sink(
        &self,
        name_s: &str,
        stream: bool,
        delete_topic: bool,
    ) -> Result<String, SqlError> {
        let mut parts = vec![];
        if self.inner.connectors.delete(name_s).await.is_ok() {
            parts.push(format!("connector '{name_s}' dropped"));
        }
        if let Some(replayed) = self.inner.replayed_connectors.lock().as_mut() {
            replayed.remove(name_s);
        }
        if !stream {
            return Ok(parts.join(", "));
        }
        let writers = self.writers_of(name_s);
        for id in writers {
            self.terminate(&id).await?;
            parts.push(format!("query {id} terminated"));
        }
        let info = self.inner.state.lock().sources.remove(name_s);
        if let Some(info) = info {
            parts.push(format!(
                "{} '{name_s}' dropped",
                info.kind.as_str().to_lowercase()
            ));
            if delete_topic && self.inner.broker.partition_count(&info.topic).is_ok() {
                self.inner.broker.delete_topic(&info.topic).await?;
                parts.push(format!("topic '{}' deleted", info.topic));
            }
        }
        Ok(parts.join(", "))
    }

    fn show(&self, what: ShowWhat, properties: &BTreeMap<String, String>) -> Output {
        let state = self.inner.state.lock();
        match what {
            ShowWhat::Streams | ShowWhat::Tables => {
                let kind = if what == ShowWhat::Streams {
                    SourceKind::Stream
                } else {
                    SourceKind::Table
                };
                let rows: Vec<&SourceInfo> =
                    state.sources.values().filter(|s| s.kind == kind).collect();
                table(
                    &["name", "topic", "key_format", "value_format"],
                    rows.iter()
                        .map(|s| {
                            vec![
                                s.name.clone(),
                                s.topic.clone(),
                                s.key_format.as_str().to_owned(),
                                s.value_format.as_str().to_owned(),
                            ]
                        })
                        .collect(),
                )
            }
            ShowWhat::Topics => {
                let mut topics = self.inner.broker.list_topics();
                topics.retain(|t| !t.starts_with("__") && t != COMMAND_TOPIC);
                topics.sort();
                table(
                    &["topic", "partitions"],
                    topics
                        .iter()
                        .map(|t| {
                            vec![
                                t.clone(),
                                self.inner
                                    .broker
                                    .partition_count(t)
                                    .map_or_else(|_| "?".into(), |n| n.to_string()),
                            ]
                        })
                        .collect(),
                )
            }
            ShowWhat::Queries => table(
                &["query_id", "status", "sink", "sql"],
                state
                    .queries
                    .iter()
                    .map(|(id, q)| {
                        let status = match &q.handle {
                            Some(h) if h.is_finished() => "FAILED",
                            Some(_) => "RUNNING",
                            None => "STOPPED",
                        };
                        vec![id.clone(), status.into(), q.sink.clone(), q.sql.clone()]
                    })
                    .collect(),
            ),
            ShowWhat::Connectors => table(
                &["name", "type", "class", "state", "moves"],
                self.inner
                    .connectors
                    .list()
                    .into_iter()
                    .map(Vec::from)
                    .collect(),
            ),
            ShowWhat::Properties => {
                let mut all: BTreeMap<String, String> = BTreeMap::new();
                all.insert(OFFSET_RESET.into(), "latest".into());
                all.extend(properties.clone());
                table(
                    &["property", "value"],
                    all.into_iter().map(|(k, v)| vec![k, v]).collect(),
                )
            }
        }
    }

    fn describe(&self, info: &SourceInfo, extended: bool) -> Output {
        let mut rows: Vec<Vec<String>> =
            vec![vec![ROWTIME.into(), "TIMESTAMP (record time)".into()]];
        let key = match info.kind {
            SourceKind::Stream => "(key)",
            SourceKind::Table => "(primary key)",
        };
        for f in &info.key_columns {
            rows.push(vec![
                f.name().clone(),
                format!("{} {key}", sql_name(f.data_type())),
            ]);
        }
        for f in &info.value_columns {
            let t = sql_name(f.data_type());
            let t = if info.timestamp.as_deref() == Some(f.name()) {
                format!("{t} (event time)")
            } else {
                t
            };
            rows.push(vec![f.name().clone(), t]);
        }
        if extended {
            rows.push(vec![String::new(), String::new()]);
            rows.push(vec!["type".into(), info.kind.to_string()]);
            rows.push(vec!["topic".into(), info.topic.clone()]);
            rows.push(vec!["key format".into(), info.key_format.as_str().into()]);
            rows.push(vec![
                "value format".into(),
                info.value_format.as_str().into(),
            ]);
            if let Some(q) = &info.written_by {
                rows.push(vec!["written by".into(), q.clone()]);
                rows.extend(self.query_statistics(q));
            }
            let statement: Vec<&str> = info.statement.split_whitespace().collect();
            rows.push(vec!["statement".into(), statement.join(" ")]);
        }
        table(&["field", "type"], rows)
    }

    /// What a running query has done since it started, as `DESCRIBE EXTENDED` shows it (as
    /// ksqlDB's runtime statistics): one `[name, value]` row each; none when it is not running.
    fn query_statistics(&self, id: &str) -> Vec<Vec<String>> {
        let metrics = {
            let state = self.inner.state.lock();
            match state.queries.get(id).and_then(|q| q.handle.as_ref()) {
                Some(handle) => handle.metrics(),
                None => return Vec::new(),
            }
        };
        let watermark = metrics.watermark.map_or_else(
            || "none yet".to_owned(),
            |w| match chrono::DateTime::from_timestamp_millis(w) {
                Some(t) if w > i64::MIN && w < i64::MAX => {
                    t.format("%Y-%m-%dT%H:%M:%S%.3f").to_string()
                }
                _ => w.to_string(),
            },
        );
        [
            ("records read", metrics.records_in.to_string()),
            (
                "records that did not decode",
                metrics.bad_records.to_string(),
            ),
            ("late rows", metrics.late_rows.to_string()),
            ("rows written", metrics.rows_out.to_string()),
            ("checkpoints", metrics.checkpoints.to_string()),
            ("watermark", watermark),
            ("state bytes", metrics.state_bytes.to_string()),
        ]
        .into_iter()
        .map(|(name, value)| vec![name.to_owned(), value])
        .collect()
    }

    /// Stops every persistent query (they resume from their checkpoints at the next open).
    pub async fn shutdown(&self) -> Result<(), SqlError> {
        // Connectors first: each commits what it wrote.
        self.inner.connectors.stop().await;
        let handles: Vec<QueryHandle> = self
            .inner
            .state
            .lock()
            .queries
            .values_mut()
            .filter_map(|q| q.handle.take())
            .collect();
        for h in handles {
            h.stop().await?;
        }
        Ok(())
    }
}

/// The key format when none is given: KAFKA for one column it can hold, JSON for several, NONE
/// without key columns.
/// The connector keys `CREATE SINK … AS SELECT` sets from its query.
const SINK_SETS: &[&str] = &[
    "name",
    "topics",
    "topics.regex",
    "key.format",
    "key.schema",
    "value.format",
    "value.schema",
];

/// Whether `statement` (a catalog entry's) is a `CREATE SINK … AS SELECT`.
fn is_create_sink(statement: &str) -> bool {
    crate::parser::parse(statement).is_ok_and(|p| {
        p.first()
            .is_some_and(|p| matches!(p.statement, Statement::CreateSinkAs { .. }))
    })
}

/// Columns as a connector's `key.schema`/`value.schema` (`id BIGINT, region STRING`).
fn schema_text(fields: &[FieldRef]) -> Result<String, String> {
    let mut out = Vec::with_capacity(fields.len());
    for f in fields {
        let name = f.name();
        if name.is_empty() || name.contains(|c: char| c.is_whitespace() || ",()`\"".contains(c)) {
            return Err(format!(
                "the column '{name}' cannot be sunk under that name; give it a plain one \
                 (… AS {})",
                name.replace(|c: char| !c.is_alphanumeric(), "_")
            ));
        }
        let ty = match f.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "STRING".to_owned(),
            DataType::Int64 => "BIGINT".to_owned(),
            DataType::Int32 => "INT".to_owned(),
            DataType::Int16 => "SMALLINT".to_owned(),
            DataType::Int8 => "TINYINT".to_owned(),
            DataType::Float64 => "DOUBLE".to_owned(),
            DataType::Float32 => "FLOAT".to_owned(),
            DataType::Boolean => "BOOLEAN".to_owned(),
            DataType::Timestamp(_, _) => "TIMESTAMP".to_owned(),
            DataType::Date32 => "DATE".to_owned(),
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "BYTES".to_owned(),
            DataType::Decimal128(p, s) => format!("DECIMAL({p}, {s})"),
            other => {
                return Err(format!(
                    "the column '{name}' is {other}, which a sink does not write yet; CAST it \
                     to STRING, BIGINT, DOUBLE, BOOLEAN, TIMESTAMP or DECIMAL"
                ));
            }
        };
        out.push(format!(
            "{name} {ty}{}",
            if f.is_nullable() { "" } else { " NOT NULL" }
        ));
    }
    Ok(out.join(", "))
}

fn key_format_for(key_columns: &[FieldRef]) -> FormatName {
    match key_columns {
        [] => FormatName::None,
        [one] if kafka_type(one.data_type()).is_some() => FormatName::Kafka,
        _ => FormatName::Json,
    }
}

fn title(kind: SourceKind) -> &'static str {
    match kind {
        SourceKind::Stream => "Stream",
        SourceKind::Table => "Table",
    }
}

/// A timestamp in milliseconds as ISO-8601 UTC.
fn chrono_like(ms: i64) -> String {
    quiver_engine::arrow::array::TimestampMillisecondArray::from(vec![ms])
        .value_as_datetime(0)
        .map_or_else(
            || ms.to_string(),
            |t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        )
}

fn partition_count(p: &Property) -> Result<i32, SqlError> {
    match &p.value {
        PropertyValue::Number(n) => match n.parse::<i32>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(SqlError::plan(
                format!("PARTITIONS is a whole number above 0, not {n}"),
                p.position,
            )),
        },
        other => Err(SqlError::plan(
            format!(
                "PARTITIONS is a whole number above 0, not '{}'",
                other.text()
            ),
            p.position,
        )),
    }
}

fn check_properties(with: &[Property], known: &[&str]) -> Result<(), SqlError> {
    for p in with {
        if known.contains(&p.name.as_str()) {
            continue;
        }
        let hint = crate::did_you_mean(&p.name, known.iter().copied())
            .map(|s| format!("; did you mean {s}?"))
            .unwrap_or_default();
        return Err(SqlError::plan(
            format!(
                "unknown property {}{hint} (known: {})",
                p.name,
                known.join(", ")
            ),
            p.position,
        ));
    }
    if let Some(r) = with.iter().find(|p| p.name == "REPLICAS")
        && r.value.text() != "1"
    {
        return Err(SqlError::plan(
            format!(
                "REPLICAS={} needs a cluster; this broker keeps one replica",
                r.value.text()
            ),
            r.position,
        ));
    }
    Ok(())
}

/// `PARTITION BY` columns: each one of the output's own.
fn partition_key(
    columns: &[sqlparser::ast::Ident],
    output: &Schema,
    at: Position,
) -> Result<Vec<String>, SqlError> {
    let mut key = Vec::new();
    for c in columns {
        let name = normalize(c);
        let pseudo = matches!(
            name.as_str(),
            ROWTIME | ROWPARTITION | ROWOFFSET | ROWHEADERS | DELETED
        );
        if pseudo || output.field_with_name(&name).is_err() {
            return Err(SqlError::plan(
                format!(
                    "PARTITION BY {name}: the query's output has no column '{name}'; select it \
                     (with AS to name an expression), then partition by that name"
                ),
                Position::from(c.span.start).max(at),
            ));
        }
        if !key.contains(&name) {
            key.push(name);
        }
    }
    Ok(key)
}

/// Why `value` cannot be the property `name` (`SET`), if it cannot.
pub fn property_error(name: &str, value: &str) -> Option<String> {
    (name == OFFSET_RESET && !matches!(value, "earliest" | "latest"))
        .then(|| format!("{OFFSET_RESET} is 'earliest' or 'latest', not '{value}'"))
}

/// How a source's records decode: a stream's with its event-time column, a table's as a
/// changelog.
fn decoder(info: &SourceInfo) -> Result<RecordDecoder, SqlError> {
    let (key, value) = info.formats().map_err(SqlError::runtime)?;
    Ok(match info.kind {
        SourceKind::Stream => {
            let d = RecordDecoder::new(key, value, info.timestamp.as_deref())?;
            match &info.timestamp_format {
                Some(f) => d.with_time_format(f)?,
                None => d,
            }
        }
        SourceKind::Table => RecordDecoder::table(key, value, None)?,
    })
}

/// A PARTITION BY outside CREATE STREAM … AS SELECT.
fn no_partition_by(query: &StreamingQuery) -> Result<(), SqlError> {
    match &query.partition_by {
        Some((_, at)) => Err(SqlError::plan(
            "PARTITION BY sets the key of a stream's topic: it belongs to CREATE STREAM … AS \
             SELECT",
            *at,
        )),
        None => Ok(()),
    }
}

/// The terms of `e` joined by AND (parentheses looked through).
fn conjuncts(e: &sqlparser::ast::Expr) -> Vec<&sqlparser::ast::Expr> {
    use sqlparser::ast::{BinaryOperator, Expr as E};
    let (mut pending, mut terms) = (vec![e], Vec::new());
    while let Some(e) = pending.pop() {
        match e {
            E::BinaryOp {
                left,
                op: BinaryOperator::And,
                right,
            } => {
                pending.push(left);
                pending.push(right);
            }
            E::Nested(inner) => pending.push(inner),
            term => terms.push(term),
        }
    }
    terms
}

/// The values a query's WHERE gives every key column of `info` (`k = 'v' AND …`), cast to the
/// key's types; `None` when it does not fix them all.
fn key_lookup(query: &StreamingQuery, info: &SourceInfo) -> Option<Vec<ScalarValue>> {
    use sqlparser::ast::{BinaryOperator, Expr as E};
    let SetExpr::Select(select) = query.query.body.as_ref() else {
        return None;
    };
    if select.from.len() != 1 || !select.from[0].joins.is_empty() {
        return None;
    }
    let column = |e: &E| match e {
        E::Identifier(i) => Some(normalize(i)),
        E::CompoundIdentifier(parts) => parts.last().map(normalize),
        // A column named like a niladic SQL function (`user`) parses as a call.
        E::Function(f) if matches!(f.args, sqlparser::ast::FunctionArguments::None) => {
            match f.name.0.last() {
                Some(sqlparser::ast::ObjectNamePart::Identifier(i)) => Some(normalize(i)),
                _ => None,
            }
        }
        _ => None,
    };
    let value = |e: &E| match e {
        E::Value(v) => match &v.value {
            sqlparser::ast::Value::SingleQuotedString(s) => Some(s.clone()),
            sqlparser::ast::Value::Number(n, _) => Some(n.clone()),
            _ => None,
        },
        _ => None,
    };
    let mut found: BTreeMap<String, String> = BTreeMap::new();
    for e in conjuncts(select.selection.as_ref()?) {
        let E::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } = e
        else {
            continue;
        };
        if let (Some(c), Some(v)) = (column(left), value(right)) {
            found.insert(c, v);
        } else if let (Some(c), Some(v)) = (column(right), value(left)) {
            found.insert(c, v);
        }
    }
    info.key_columns
        .iter()
        .map(|k| {
            let text = found.get(k.name())?;
            ScalarValue::try_from_string(text.clone(), k.data_type()).ok()
        })
        .collect()
}

/// The aggregation at the top of a query (under its select list, HAVING and alias): its
/// output schema and the number of GROUP BY columns that lead it.
fn find_aggregate(plan: &LogicalPlan) -> Option<(&DFSchemaRef, usize)> {
    match plan {
        LogicalPlan::Aggregate(a) => Some((&a.schema, a.group_expr.len())),
        LogicalPlan::Extension(e) => e
            .node
            .as_any()
            .downcast_ref::<TableAggregateNode>()
            .map(|n| (&n.schema, n.group.len())),
        LogicalPlan::Projection(p) => find_aggregate(&p.input),
        LogicalPlan::Filter(f) => find_aggregate(&f.input),
        LogicalPlan::SubqueryAlias(s) => find_aggregate(&s.input),
        _ => None,
    }
}

/// The output columns that are the aggregation's keys (its GROUP BY columns and the window
/// start): a table's primary key.
fn output_key(plan: &LogicalPlan) -> Vec<String> {
    let Some((schema, group_count)) = find_aggregate(plan) else {
        return Vec::new();
    };
    let groups: Vec<String> = schema
        .fields()
        .iter()
        .take(group_count)
        .map(|f| f.name().clone())
        .collect();
    let LogicalPlan::Projection(projection) = plan else {
        return groups;
    };
    let mut key = Vec::new();
    for (expr, field) in projection.expr.iter().zip(projection.schema.fields()) {
        let inner = match expr {
            datafusion::logical_expr::Expr::Alias(a) => a.expr.as_ref(),
            e => e,
        };
        let is_key = match inner {
            datafusion::logical_expr::Expr::Column(c) => groups.contains(&c.name),
            datafusion::logical_expr::Expr::ScalarFunction(f) if f.name() == "get_field" => {
                matches!(
                    (f.args.first(), f.args.get(1)),
                    (
                        Some(datafusion::logical_expr::Expr::Column(c)),
                        Some(datafusion::logical_expr::Expr::Literal(v, _))
                    ) if groups.contains(&c.name) && v.to_string() == "start"
                )
            }
            _ => false,
        };
        if is_key {
            key.push(field.name().clone());
        }
    }
    key
}

/// `INSERT INTO s SELECT …` writes the query's columns by name: each must be one of the
/// stream's, with a type that casts.
fn check_columns(
    plan: &LogicalPlan,
    info: &SourceInfo,
    position: Position,
) -> Result<(), SqlError> {
    let schema = info.schema();
    for f in plan.schema().fields() {
        if matches!(
            f.name().as_str(),
            ROWTIME | ROWPARTITION | ROWOFFSET | ROWHEADERS
        ) {
            continue;
        }
        match schema.field_with_name(f.name()) {
            Ok(target)
                if quiver_engine::arrow::compute::can_cast_types(
                    f.data_type(),
                    target.data_type(),
                ) => {}
            Ok(target) => {
                return Err(SqlError::plan(
                    format!(
                        "the query's '{}' is {}, but '{}' has it as {}",
                        f.name(),
                        sql_name(f.data_type()),
                        info.name,
                        sql_name(target.data_type())
                    ),
                    position,
                ));
            }
            Err(_) => {
                return Err(SqlError::plan(
                    format!("'{}' has no column '{}'", info.name, f.name()),
                    position,
                ));
            }
        }
    }
    Ok(())
}

/// The table names a query mentions (to read only those for a history query).
fn names_in(query: &sqlparser::ast::Query) -> Vec<String> {
    let mut out = Vec::new();
    let _ = sqlparser::ast::visit_relations(query, |name| {
        out.push(crate::parser::normalize_object(name));
        std::ops::ControlFlow::<()>::Continue(())
    });
    out
}

/// A table's changelog folded to its current rows: the last row per key, unless it deletes.
fn latest_per_key(all: &RecordBatch, key: &[FieldRef]) -> Result<RecordBatch, SqlError> {
    use quiver_engine::arrow::row::{RowConverter, SortField};
    let schema = all.schema();
    let columns: Vec<ArrayRef> = key
        .iter()
        .map(|f| schema.index_of(f.name()).map(|i| all.column(i).clone()))
        .collect::<Result<_, _>>()?;
    let converter = RowConverter::new(
        columns
            .iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect(),
    )?;
    let rows = converter.convert_columns(&columns)?;
    let mut last: std::collections::HashMap<Vec<u8>, usize> = std::collections::HashMap::new();
    for i in 0..all.num_rows() {
        last.insert(rows.row(i).as_ref().to_vec(), i);
    }
    let deleted = schema.index_of(DELETED).ok().and_then(|i| {
        all.column(i)
            .as_any()
            .downcast_ref::<quiver_engine::arrow::array::BooleanArray>()
            .cloned()
    });
    let mut keep: Vec<u32> = last
        .into_values()
        .filter(|i| deleted.as_ref().is_none_or(|d| !d.value(*i)))
        .map(|i| i as u32)
        .collect();
    keep.sort_unstable();
    let taken = quiver_engine::arrow::compute::take_record_batch(
        all,
        &quiver_engine::arrow::array::UInt32Array::from(keep),
    )?;
    Ok(strip_deleted(taken)?)
}

/// One string column of lines.
fn single_column(name: &str, lines: Vec<String>) -> Output {
    table(&[name], lines.into_iter().map(|l| vec![l]).collect())
}

/// String columns of rows.
fn table(columns: &[&str], rows: Vec<Vec<String>>) -> Output {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|c| Field::new(*c, DataType::Utf8, false))
            .collect::<Vec<_>>(),
    ));
    let arrays: Vec<ArrayRef> = (0..columns.len())
        .map(|i| {
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.get(i).cloned().unwrap_or_default()),
            )) as ArrayRef
        })
        .collect();
    match RecordBatch::try_new(schema.clone(), arrays) {
        Ok(b) => Output::Rows {
            schema,
            batches: vec![b],
        },
        Err(e) => Output::Message(format!("cannot build the listing: {e}")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

    use super::*;

    fn query(sql: &str) -> StreamingQuery {
        match parse(sql).unwrap().remove(0).statement {
            Statement::Select(q) => q,
            other => panic!("not a query: {other:?}"),
        }
    }

    /// A pull query whose WHERE fixes the key is a store lookup, whatever the key is called
    /// (`user` parses as a call of the SQL function USER).
    #[test]
    fn a_where_that_fixes_the_key_is_a_key_lookup() {
        for key in ["id", "user"] {
            let info = SourceInfo {
                kind: SourceKind::Table,
                name: "t".into(),
                topic: "t".into(),
                key_columns: vec![Arc::new(Field::new(key, DataType::Utf8, false))],
                value_columns: vec![Arc::new(Field::new("n", DataType::Int64, true))],
                key_format: FormatName::Kafka,
                value_format: FormatName::Json,
                delimiter: b',',
                timestamp: None,
                timestamp_format: None,
                written_by: None,
                statement: String::new(),
            };
            let lookup = |sql: String| key_lookup(&query(&sql), &info);
            assert_eq!(
                lookup(format!("SELECT n FROM t WHERE {key} = 'a';")),
                Some(vec![ScalarValue::Utf8(Some("a".into()))]),
                "{key}"
            );
            assert_eq!(
                lookup(format!("SELECT n FROM t WHERE n = 1 AND ('b' = {key});")),
                Some(vec![ScalarValue::Utf8(Some("b".into()))]),
                "{key}"
            );
            assert_eq!(lookup(format!("SELECT n FROM t WHERE {key} > 'a';")), None);
        }
    }
}
