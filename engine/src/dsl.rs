//! The Rust DSL, shaped like Kafka Streams: a [`StreamsBuilder`] makes [`Stream`]s from sources;
//! streams are filtered, projected with DataFusion [`Expr`]s or mapped with Rust closures,
//! grouped ([`GroupedStream`]), windowed ([`WindowedStream`]) and aggregated into [`Table`]s,
//! and written to sinks. Every step builds a DataFusion `LogicalPlan`, the same one SQL
//! builds, so [`StreamsBuilder::build`] plans each sink's query into streaming operators (and
//! refuses what cannot run on a stream) before anything starts.
//!
//! ```no_run
//! # async fn example(broker: quiver_broker::Broker) -> quiver_engine::Result<()> {
//! use datafusion::prelude::{col, lit};
//! use quiver_engine::dsl::StreamsBuilder;
//! use quiver_engine::{Format, KafkaType, Runtime, TopicFormat};
//!
//! let builder = StreamsBuilder::with_broker(&broker);
//! let words = builder.topic("words", Format::None, Format::kafka("word", KafkaType::String))?;
//! let counts = words.filter(col("word").not_eq(lit("")))?.group_by([col("word")])?.count()?;
//! counts.to_stream().to_topic("word-counts", TopicFormat::keyed(["word"]))?;
//! let running = Runtime::new(&broker).run(builder.build()?).await?;
//! # running.stop().await?; Ok(()) }
//! ```

use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::TreeNode;
use datafusion::error::Result as DfResult;
use datafusion::functions::core::expr_fn::get_field;
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, col, lit};
use parking_lot::Mutex;
use quiver_broker::Broker;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::aggregate::EmitMode;
use crate::error::{EngineError, Result};
use crate::format::{DELETED, Format, ROWHEADERS, ROWOFFSET, ROWPARTITION, ROWTIME, SideEncoder};
use crate::join::{JoinKind, StreamJoinNode, TableJoinNode, WindowJoinNode};
use crate::plan::{BatchFn, MapBatchesNode, PlanOptions, StreamTable};
use crate::runtime::{Query, QueryHandle, QueryMetrics, QueryOptions, Runtime};
use crate::sink::{Collector, Sink, StdoutSink, TopicFormat, TopicSink};
use crate::source::{Source, TopicSource};
use crate::window::{WINDOW_COLUMN, WindowSpec};

/// Column names of a windowed aggregation's window bounds.
pub const WINDOW_START: &str = "window_start";
pub const WINDOW_END: &str = "window_end";

/// Builds a [`Topology`]: sources, the streams made from them, and their sinks.
#[derive(Debug, Clone, Default)]
pub struct StreamsBuilder {
    inner: Arc<Mutex<BuilderInner>>,
    /// The broker topics are read from and written to; without one, topics are only declared
    /// (for [`crate::driver::TopologyTestDriver`]).
    broker: Option<Broker>,
}

#[derive(Debug, Default)]
struct BuilderInner {
    sources: usize,
    outputs: Vec<Output>,
    /// Materialized tables (store name, plan, emit mode): one that no output reads still runs,
    /// into its store alone.
    materialized: Vec<(String, LogicalPlan, EmitMode)>,
    options: QueryOptions,
    application_id: Option<String>,
}

#[derive(Debug)]
struct Output {
    plan: LogicalPlan,
    emit: EmitMode,
    sink: Box<dyn Sink>,
}

impl StreamsBuilder {
    /// A builder without a broker: its topics are declared, and the topology runs in
    /// [`crate::driver::TopologyTestDriver`] (or with other sources and sinks).
    pub fn new() -> StreamsBuilder {
        StreamsBuilder::default()
    }

    /// A builder whose topics are topics of `broker` (checked to exist as they are named).
    pub fn with_broker(broker: &Broker) -> StreamsBuilder {
        StreamsBuilder {
            broker: Some(broker.clone()),
            ..StreamsBuilder::default()
        }
    }

    /// Options every query of the topology gets (dead-letter and late-data topics, poll wait).
    pub fn with_options(self, options: QueryOptions) -> StreamsBuilder {
        self.inner.lock().options = options;
        self
    }

    /// The application id (Kafka Streams' `application.id`): queries are named
    /// `<id>-query_<n>`, and each name is the consumer group its offsets are committed to, the
    /// transactional id of its exactly-once output, and where its checkpoints are kept. A
    /// restarted application finds its state by it; checkpointing needs one.
    pub fn with_application_id(self, id: &str) -> StreamsBuilder {
        self.inner.lock().application_id = Some(id.to_owned());
        self
    }

    /// A stream read from any source, named `name` in plans.
    pub fn stream(&self, name: &str, source: Arc<dyn Source>) -> Result<Stream> {
        self.inner.lock().sources += 1;
        let table = StreamTable::new(name, source);
        let plan = LogicalPlanBuilder::scan(name, table, None)?.build()?;
        Ok(Stream {
            builder: self.clone(),
            plan,
            key: Vec::new(),
            emit: EmitMode::Changes,
        })
    }

    /// A stream of a topic, from its earliest offset, read_committed, with event time from
    /// the record timestamps. For other start positions or an event-time column, make a
    /// [`TopicSource`] and use [`StreamsBuilder::stream`].
    pub fn topic(&self, topic: &str, key: Format, value: Format) -> Result<Stream> {
        let source = match &self.broker {
            Some(broker) => TopicSource::new(broker, topic, key, value)?,
            None => TopicSource::declared(topic, key, value)?,
        };
        self.stream(topic, Arc::new(source))
    }

    /// A topic read as a table (Kafka Streams' `builder.table`): per key (the key format's
    /// columns) its latest record's value; a record with a null value deletes the key. From
    /// the earliest offset, read_committed. The table's rows carry [`crate::format::DELETED`].
    pub fn table(&self, topic: &str, key: Format, value: Format) -> Result<Table> {
        let source = TopicSource::table(self.broker.as_ref(), topic, key, value)?;
        self.table_from(topic, Arc::new(source))
    }

    /// A table read from any source of a changelog ([`Source::table_key`]), named `name`.
    pub fn table_from(&self, name: &str, source: Arc<dyn Source>) -> Result<Table> {
        let Some(key) = source.table_key() else {
            return Err(EngineError::config(format!(
                "the source {} is not a table's changelog; read a topic as a table with \
                 StreamsBuilder::table",
                source.describe()
            )));
        };
        let stream = self.stream(name, source)?;
        Ok(Table {
            stream: Stream { key, ..stream },
        })
    }

    /// Plans every stream that was sent to a sink into a query.
    pub fn build(&self) -> Result<Topology> {
        let mut inner = self.inner.lock();
        let options = inner.options.clone();
        let mut outputs = std::mem::take(&mut inner.outputs);
        // A table that is only materialized runs for its store (Kafka Streams' queryable
        // store without a `to`).
        for (store, plan, emit) in std::mem::take(&mut inner.materialized) {
            let in_store = |p: &LogicalPlan| {
                p.exists(|n| {
                    Ok(matches!(n, LogicalPlan::Extension(e)
                        if e.node.as_any().downcast_ref::<crate::store::MaterializeNode>()
                            .is_some_and(|m| m.store.name() == store)))
                })
                .unwrap_or(false)
            };
            if !outputs.iter().any(|o| in_store(&o.plan)) {
                outputs.push(Output {
                    plan,
                    emit,
                    sink: Box::new(crate::sink::DiscardSink),
                });
            }
        }
        if outputs.is_empty() {
            return Err(EngineError::config(
                "the topology has no sinks; send a stream or table somewhere (to_topic, \
                 to_collector, print)",
            ));
        }
        // Outputs of the same stream share one query, which writes to each of their sinks.
        let mut groups: Vec<SharedOutputs> = Vec::new();
        for out in outputs {
            match groups
                .iter_mut()
                .find(|(plan, emit, _)| *plan == out.plan && *emit == out.emit)
            {
                Some((_, _, sinks)) => sinks.push(out.sink),
                None => groups.push((out.plan, out.emit, vec![out.sink])),
            }
        }
        let application_id = inner.application_id.clone();
        if options.checkpoint.is_some() && application_id.is_none() {
            return Err(EngineError::config(
                "a checkpointing topology needs an application id, which its state and offsets \
                 are kept under (StreamsBuilder::with_application_id)",
            ));
        }
        if let Some(id) = &application_id
            && (id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(EngineError::config(format!(
                "the application id '{id}' may only use ASCII letters, digits, '-', '_' and '.'"
            )));
        }
        let mut queries = Vec::with_capacity(groups.len());
        for (i, (plan, emit, sinks)) in groups.into_iter().enumerate() {
            let mut options = options.clone();
            options.plan = PlanOptions { emit };
            let name = match &application_id {
                Some(id) => format!("{id}-query_{}", i + 1),
                None => format!("query_{}", i + 1),
            };
            queries.push(Query::new(name, &plan, sinks, options)?);
        }
        Ok(Topology { queries })
    }
}

/// A plan, its emit mode, and the sinks that share its query.
type SharedOutputs = (LogicalPlan, EmitMode, Vec<Box<dyn Sink>>);

/// A stream of rows: a plan over a source.
#[derive(Debug, Clone)]
pub struct Stream {
    builder: StreamsBuilder,
    plan: LogicalPlan,
    /// The columns that make the record key when written to a topic.
    key: Vec<String>,
    emit: EmitMode,
}

impl Stream {
    fn with_plan(&self, plan: LogicalPlan) -> Stream {
        Stream {
            plan,
            ..self.clone()
        }
    }

    /// A join of this stream with `other`, as [`Stream::with_plan`]. A query has one emit mode
    /// for its windows: final when either input asked for it.
    fn joined(&self, other: &Stream, plan: LogicalPlan) -> Stream {
        let emit = if other.emit == EmitMode::Final {
            EmitMode::Final
        } else {
            self.emit
        };
        Stream {
            emit,
            ..self.with_plan(plan)
        }
    }

    /// The stream's columns.
    pub fn schema(&self) -> SchemaRef {
        Arc::new(self.plan.schema().as_arrow().clone())
    }

    /// The plan so far.
    pub fn plan(&self) -> &LogicalPlan {
        &self.plan
    }

    /// Keeps the rows where `predicate` is true.
    pub fn filter(&self, predicate: Expr) -> Result<Stream> {
        let plan = LogicalPlanBuilder::from(self.plan.clone())
            .filter(predicate)?
            .build()?;
        Ok(self.with_plan(plan))
    }

    /// Drops the rows where `predicate` is true.
    pub fn filter_not(&self, predicate: Expr) -> Result<Stream> {
        self.filter(predicate.is_not_true())
    }

    /// New columns computed from these (Kafka Streams' `map`, SQL's SELECT list). Keeps the
    /// key columns only if they are selected.
    pub fn select(&self, exprs: impl IntoIterator<Item = Expr>) -> Result<Stream> {
        let plan = LogicalPlanBuilder::from(self.plan.clone())
            .project(exprs)?
            .build()?;
        let mut s = self.with_plan(plan);
        let names: Vec<String> = s
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        s.key.retain(|k| names.contains(k));
        Ok(s)
    }

    /// Adds (or replaces) one column.
    pub fn with_column(&self, name: &str, expr: Expr) -> Result<Stream> {
        let mut exprs: Vec<Expr> = self
            .schema()
            .fields()
            .iter()
            .filter(|f| f.name() != name)
            .map(|f| col(datafusion::common::Column::from_name(f.name())))
            .collect();
        exprs.push(expr.alias(name));
        self.select(exprs)
    }

    /// Runs a Rust function over each batch; it returns a batch of `schema` with any number of
    /// rows (Kafka Streams' `flatMap`/`mapValues`, a batch at a time).
    pub fn map_batches<F>(&self, name: &str, schema: SchemaRef, function: F) -> Result<Stream>
    where
        F: Fn(&RecordBatch) -> Result<RecordBatch> + Send + Sync + 'static,
    {
        let function: BatchFn = Arc::new(function);
        let plan = MapBatchesNode::plan(name, self.plan.clone(), schema, function)?;
        Ok(self.with_plan(plan))
    }

    /// Runs a Rust function over typed rows: each row is read into an `I` (serde, by column
    /// name) and becomes any number of `O`s, whose fields are the columns of `schema`. Slower
    /// than [`Stream::map_batches`]; for users who prefer structs to columns.
    pub fn flat_map_rows<I, O, F>(
        &self,
        name: &str,
        schema: SchemaRef,
        function: F,
    ) -> Result<Stream>
    where
        I: DeserializeOwned,
        O: Serialize,
        F: Fn(I) -> Vec<O> + Send + Sync + 'static,
    {
        let input = self.schema();
        let columns: Vec<String> = input.fields().iter().map(|f| f.name().clone()).collect();
        let encoder = SideEncoder::new(Format::Json(input.clone()), &input, &columns)?;
        let out_schema = schema.clone();
        let step = name.to_owned();
        self.map_batches(name, schema, move |batch| {
            let rows = encoder.encode(batch)?;
            let mut out = Vec::new();
            for i in 0..arrow::array::Array::len(&rows) {
                let row: I = serde_json::from_slice(rows.value(i)).map_err(|e| {
                    EngineError::Format(format!(
                        "'{step}' cannot read row {i} as its input type: {e}"
                    ))
                })?;
                out.extend(function(row));
            }
            let mut decoder = arrow::json::ReaderBuilder::new(out_schema.clone())
                .with_batch_size(out.len().max(1))
                .build_decoder()?;
            decoder.serialize(&out)?;
            Ok(decoder
                .flush()?
                .unwrap_or_else(|| RecordBatch::new_empty(out_schema.clone())))
        })
    }

    /// Sets the key columns: the record key when written to a topic, and the grouping of
    /// [`Stream::group_by_key`] (Kafka Streams' `selectKey`; ksqlDB's PARTITION BY).
    pub fn select_key(
        &self,
        columns: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Stream> {
        let key: Vec<String> = columns.into_iter().map(Into::into).collect();
        let schema = self.schema();
        for k in &key {
            schema
                .index_of(k)
                .map_err(|_| EngineError::config(format!("no column '{k}' to key by")))?;
        }
        Ok(Stream {
            key,
            ..self.clone()
        })
    }

    /// The same as [`Stream::select_key`].
    pub fn partition_by(
        &self,
        columns: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Stream> {
        self.select_key(columns)
    }

    /// One stream per predicate: each row goes to the first branch whose predicate holds
    /// (Kafka Streams' `split`/`branch`); rows matching none are dropped.
    pub fn branch(&self, predicates: impl IntoIterator<Item = Expr>) -> Result<Vec<Stream>> {
        let mut out = Vec::new();
        let mut earlier: Option<Expr> = None;
        for p in predicates {
            let this = match &earlier {
                None => p.clone(),
                Some(e) => p.clone().and(e.clone().is_not_true()),
            };
            out.push(self.filter(this)?);
            earlier = Some(match earlier {
                None => p.is_true(),
                Some(e) => e.or(p.is_true()),
            });
        }
        Ok(out)
    }

    /// The rows of both streams as one stream (Kafka Streams' `merge`): the same columns in
    /// the same order (types are unified as SQL's UNION ALL does). The streams may read one
    /// source (branches of a stream, transformed and merged again) or several (two topics):
    /// the merged stream's event time is the minimum of its sources' watermarks, and a
    /// checkpoint commits every topic's offsets. Neither may be aggregated before the merge.
    /// The key columns are this stream's.
    pub fn merge(&self, other: &Stream) -> Result<Stream> {
        let plan = LogicalPlanBuilder::from(self.plan.clone())
            .union(other.plan.clone())?
            .build()?;
        Ok(self.with_plan(plan))
    }

    /// The stream as a table keyed by `key` (Kafka Streams' `toTable`): each record is its
    /// key's row from its event time on, replacing the one before.
    pub fn to_table(&self, key: impl IntoIterator<Item = impl Into<String>>) -> Result<Table> {
        let key: Vec<String> = key.into_iter().map(Into::into).collect();
        if key.is_empty() {
            return Err(EngineError::config("a table needs at least one key column"));
        }
        let schema = self.plan.schema();
        for k in &key {
            if schema.qualified_field_with_unqualified_name(k).is_err() {
                return Err(EngineError::config(format!(
                    "no column '{k}' to key the table by"
                )));
            }
        }
        let mut exprs: Vec<Expr> = schema
            .iter()
            .filter(|(_, f)| f.name() != DELETED)
            .map(|(q, f)| Expr::Column(datafusion::common::Column::new(q.cloned(), f.name())))
            .collect();
        exprs.push(lit(false).alias(DELETED));
        let plan = LogicalPlanBuilder::from(self.plan.clone())
            .project(exprs)?
            .build()?;
        Ok(Table {
            stream: Stream {
                key,
                ..self.with_plan(plan)
            },
        })
    }

    /// Joins each record with `table`'s row for its key, as the table was at the record's
    /// event time (see [`crate::join`]); records without a row are dropped. `keys` are this
    /// stream's expressions, one per key column of the table, in its order. The result has
    /// this stream's columns, then the table's (its event time and other pseudo-columns left
    /// out; a column whose name this stream has is prefixed with the table's name and `_`).
    pub fn join(&self, table: &Table, keys: impl IntoIterator<Item = Expr>) -> Result<Stream> {
        self.join_with(table, keys, JoinKind::Inner, None, 0)
    }

    /// [`Stream::join`], keeping records without a row (the table's columns null).
    pub fn left_join(&self, table: &Table, keys: impl IntoIterator<Item = Expr>) -> Result<Stream> {
        self.join_with(table, keys, JoinKind::Left, None, 0)
    }

    /// A stream–table join with every choice: its kind, a condition on the joined row on top
    /// of the key equality (over this stream's and the table's columns, qualified by their
    /// names when both have one), and a grace period: how far behind the watermark a record
    /// may arrive and still be joined (older ones are late).
    pub fn join_with(
        &self,
        table: &Table,
        keys: impl IntoIterator<Item = Expr>,
        kind: JoinKind,
        filter: Option<Expr>,
        grace_ms: i64,
    ) -> Result<Stream> {
        let (left, stream, right, table_plan) = join_sides(self, &table.stream, "_table")?;
        let joined = StreamJoinNode::plan(
            format!("{left}-{right}"),
            stream,
            table_plan,
            keys.into_iter().collect(),
            table.stream.key.clone(),
            filter,
            kind,
            grace_ms,
        )?;
        // The join's event time is the stream record's.
        Ok(self.joined(
            &table.stream,
            join_output(joined, self, &left, &right, false)?,
        ))
    }

    /// Joins this stream with `other` within a time bound (Kafka Streams' `JoinWindows`, an
    /// interval join): records with equal keys whose event times are at most `within` apart
    /// (milliseconds, or a [`crate::join::JoinWindow`] with a bound before and one after; see
    /// [`crate::window_join`]). `keys` and `other_keys` pair up in order. The result has
    /// this stream's columns, then the other's (its pseudo-columns left out; a name this stream
    /// has is prefixed with the other's name and `_`); its `rowtime` is the later of the two.
    pub fn window_join(
        &self,
        other: &Stream,
        keys: impl IntoIterator<Item = Expr>,
        other_keys: impl IntoIterator<Item = Expr>,
        within: impl Into<crate::join::JoinWindow>,
        kind: JoinKind,
    ) -> Result<Stream> {
        self.window_join_with(other, keys, other_keys, within, kind, None, 0)
    }

    /// [`Stream::window_join`] with a condition on each pair on top of the key equality (over
    /// both streams' columns, qualified by their names where both have one), and a grace
    /// period for records that arrive out of order.
    #[allow(clippy::too_many_arguments)]
    pub fn window_join_with(
        &self,
        other: &Stream,
        keys: impl IntoIterator<Item = Expr>,
        other_keys: impl IntoIterator<Item = Expr>,
        within: impl Into<crate::join::JoinWindow>,
        kind: JoinKind,
        filter: Option<Expr>,
        grace_ms: i64,
    ) -> Result<Stream> {
        let (left, left_plan, right, right_plan) = join_sides(self, other, "_2")?;
        let joined = WindowJoinNode::plan(
            format!("{left}-{right}"),
            left_plan,
            right_plan,
            keys.into_iter().collect(),
            other_keys.into_iter().collect(),
            filter,
            kind,
            within,
            grace_ms,
        )?;
        let later = other
            .plan
            .schema()
            .has_column_with_unqualified_name(ROWTIME);
        Ok(self.joined(other, join_output(joined, self, &left, &right, later)?))
    }

    /// The name its plan's columns are qualified with (its source's, or `stream`).
    fn name(&self) -> String {
        self.plan
            .schema()
            .iter()
            .find_map(|(q, _)| q.map(|q| q.table().to_owned()))
            .unwrap_or_else(|| "stream".to_owned())
    }

    /// Drops repeated records: of the records with equal `keys` whose event times fall in one
    /// tumbling window of `size_ms`, the first to arrive passes (see [`crate::dedup`]); one
    /// that arrives after its window closed (plus `grace_ms`) is late.
    pub fn dedup(
        &self,
        keys: impl IntoIterator<Item = Expr>,
        size_ms: i64,
        grace_ms: i64,
    ) -> Result<Stream> {
        let keys: Vec<Expr> = keys.into_iter().collect();
        if keys.is_empty() {
            return Err(EngineError::config(
                "a deduplication needs at least one key",
            ));
        }
        let plan = LogicalPlan::Extension(datafusion::logical_expr::Extension {
            node: Arc::new(crate::dedup::DedupNode {
                input: self.plan.clone(),
                keys,
                size_ms,
                grace_ms,
            }),
        });
        Ok(self.with_plan(plan))
    }

    /// The `n` first records per group by `order_by` (SQL's `ROW_NUMBER() OVER (PARTITION BY
    /// group ORDER BY order_by) <= n`), as a table keyed by the group's columns and
    /// [`crate::top_n::RANK`] (see [`crate::top_n`]).
    pub fn top_n(
        &self,
        group: impl IntoIterator<Item = impl Into<String>>,
        order_by: &str,
        descending: bool,
        n: usize,
    ) -> Result<Table> {
        let group: Vec<String> = group.into_iter().map(Into::into).collect();
        let plan = crate::top_n::TopNNode::plan(
            self.plan.clone(),
            group.clone(),
            order_by.to_owned(),
            descending,
            n,
        )?;
        let mut key = group;
        key.push(crate::top_n::RANK.to_owned());
        Ok(Table {
            stream: Stream {
                key,
                ..self.with_plan(plan)
            },
        })
    }

    /// Groups by expressions, for an aggregation.
    pub fn group_by(&self, keys: impl IntoIterator<Item = Expr>) -> Result<GroupedStream> {
        Ok(GroupedStream {
            stream: self.clone(),
            keys: keys.into_iter().collect(),
        })
    }

    /// Groups by the key columns.
    pub fn group_by_key(&self) -> Result<GroupedStream> {
        if self.key.is_empty() {
            return Err(EngineError::config(
                "group_by_key on a stream without key columns; call select_key first or use \
                 group_by",
            ));
        }
        let keys: Vec<Expr> = self
            .key
            .iter()
            .map(|k| col(datafusion::common::Column::from_name(k)))
            .collect();
        self.group_by(keys)
    }

    fn output(&self, sink: Box<dyn Sink>) {
        self.builder.inner.lock().outputs.push(Output {
            plan: self.plan.clone(),
            emit: self.emit,
            sink,
        });
    }

    /// Writes the stream to a topic (which must exist when the builder has a broker). Without
    /// key columns in `format`, the stream's key columns are used.
    pub fn to_topic(&self, topic: &str, format: TopicFormat) -> Result<()> {
        let mut format = format;
        if format.key_columns.is_empty() {
            format.key_columns = self.key.clone();
        }
        let sink = match &self.builder.broker {
            Some(broker) => {
                broker.partition_count(topic)?;
                TopicSink::new(broker, topic, format)
            }
            None => TopicSink::declared(topic, format),
        };
        self.output(Box::new(sink));
        Ok(())
    }

    /// Collects the stream's batches in `collector`.
    pub fn to_collector(&self, collector: &Collector) {
        self.output(Box::new(collector.sink()));
    }

    /// Writes the stream to any sink.
    pub fn to_sink(&self, sink: Box<dyn Sink>) {
        self.output(sink);
    }

    /// Prints each row as a line of JSON, prefixed with `[label]: `.
    pub fn print(&self, label: &str) {
        self.output(Box::new(StdoutSink::new(label)));
    }
}

/// The two sides of a join, each qualified by its name (`right` renamed when both are named
/// alike), so names both have stay apart: `(left name, left plan, right name, right plan)`.
fn join_sides(
    left: &Stream,
    right: &Stream,
    suffix: &str,
) -> Result<(String, LogicalPlan, String, LogicalPlan)> {
    let left_name = left.name();
    let mut right_name = right.name();
    if right_name == left_name {
        right_name = format!("{right_name}{suffix}");
    }
    let alias = |s: &Stream, name: &str| -> Result<LogicalPlan> {
        Ok(LogicalPlanBuilder::from(s.plan.clone())
            .alias(name)?
            .build()?)
    };
    Ok((
        left_name.clone(),
        alias(left, &left_name)?,
        right_name.clone(),
        alias(right, &right_name)?,
    ))
}

/// A join's output as the DSL shows it: the left's columns (its `rowtime` the later of the
/// two sides' when `later_time`), then the right's without its pseudo-columns, a name the left
/// has prefixed with the right's name and `_`; [`DELETED`] kept when the join gives one.
fn join_output(
    joined: LogicalPlan,
    left: &Stream,
    left_name: &str,
    right_name: &str,
    later_time: bool,
) -> Result<LogicalPlan> {
    let ours: Vec<String> = left
        .plan
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|n| n != DELETED)
        .collect();
    let column = |q: &str, name: &str| Expr::Column(datafusion::common::Column::new(Some(q), name));
    let mut exprs = Vec::new();
    for (i, (q, f)) in joined.schema().iter().enumerate() {
        let name = f.name().as_str();
        let c = Expr::Column(datafusion::common::Column::new(q.cloned(), name));
        if name == DELETED {
            exprs.push(c);
        } else if i < ours.len() {
            if later_time && name == ROWTIME {
                exprs.push(
                    datafusion::functions::core::expr_fn::greatest(vec![
                        column(left_name, ROWTIME),
                        column(right_name, ROWTIME),
                    ])
                    .alias(ROWTIME),
                );
            } else {
                exprs.push(c.alias(name));
            }
        } else if ![ROWTIME, ROWPARTITION, ROWOFFSET, ROWHEADERS].contains(&name) {
            let alias = if ours.iter().any(|o| o == name) {
                format!("{right_name}_{name}")
            } else {
                name.to_owned()
            };
            exprs.push(c.alias(alias));
        }
    }
    Ok(LogicalPlanBuilder::from(joined).project(exprs)?.build()?)
}

/// A stream grouped by keys, ready for an aggregation or a window.
#[derive(Debug, Clone)]
pub struct GroupedStream {
    stream: Stream,
    keys: Vec<Expr>,
}

impl GroupedStream {
    /// Windows the groups by event time (`rowtime`).
    pub fn window(&self, window: WindowSpec) -> Result<WindowedStream> {
        window.validate()?;
        Ok(WindowedStream {
            grouped: self.clone(),
            window,
            emit: EmitMode::Changes,
        })
    }

    /// The number of rows per key, as an updating table (column `count`).
    pub fn count(&self) -> Result<Table> {
        self.aggregate([count(lit(1)).alias("count")])
    }

    /// Kafka Streams' `reduce`: per key, the values of `column` combined by `f` (the running
    /// value, the next value → the new running value; nulls are skipped), as an updating table
    /// with the result in a column of the same name. `f` must be associative: values combined
    /// in different tasks (or restored) are merged with it too.
    pub fn reduce<F>(&self, column: &str, f: F) -> Result<Table>
    where
        F: Fn(&ScalarValue, &ScalarValue) -> Result<ScalarValue> + Send + Sync + 'static,
    {
        let schema = self.stream.schema();
        let data_type = schema
            .field_with_name(column)
            .map_err(|_| EngineError::config(format!("reduce: no column '{column}'")))?
            .data_type()
            .clone();
        let f: ReduceFn = Arc::new(f);
        let out = data_type.clone();
        let udaf = datafusion::logical_expr::create_udaf(
            &format!("reduce_{column}"),
            vec![data_type.clone()],
            Arc::new(data_type.clone()),
            datafusion::logical_expr::Volatility::Immutable,
            Arc::new(move |_| {
                Ok(Box::new(ReduceAccumulator {
                    value: None,
                    data_type: out.clone(),
                    f: f.clone(),
                }))
            }),
            Arc::new(vec![data_type]),
        );
        self.aggregate([udaf.call(vec![col(column)]).alias(column)])
    }

    /// DataFusion aggregate expressions per key (any built-in or user-defined aggregate
    /// function), as an updating table: one upsert per key per input batch.
    pub fn aggregate(&self, aggregates: impl IntoIterator<Item = Expr>) -> Result<Table> {
        let plan = LogicalPlanBuilder::from(self.stream.plan.clone())
            .aggregate(self.keys.clone(), aggregates)?
            .build()?;
        let key = key_names(&plan, self.keys.len());
        Ok(Table {
            stream: Stream {
                plan,
                key,
                emit: EmitMode::Changes,
                builder: self.stream.builder.clone(),
            },
        })
    }
}

/// The function of a [`GroupedStream::reduce`].
type ReduceFn = Arc<dyn Fn(&ScalarValue, &ScalarValue) -> Result<ScalarValue> + Send + Sync>;

/// The accumulator of a reduce: the running value.
struct ReduceAccumulator {
    value: Option<ScalarValue>,
    data_type: DataType,
    f: ReduceFn,
}

impl std::fmt::Debug for ReduceAccumulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Reduce({:?})", self.value)
    }
}

impl datafusion::logical_expr::Accumulator for ReduceAccumulator {
    fn update_batch(&mut self, values: &[arrow::array::ArrayRef]) -> DfResult<()> {
        let Some(values) = values.first() else {
            return Ok(());
        };
        for i in 0..values.len() {
            if values.is_null(i) {
                continue;
            }
            let v = ScalarValue::try_from_array(values, i)?;
            self.value = Some(match self.value.take() {
                None => v,
                Some(acc) => (self.f)(&acc, &v).map_err(|e| {
                    datafusion::error::DataFusionError::Execution(format!("reduce: {e}"))
                })?,
            });
        }
        Ok(())
    }

    fn merge_batch(&mut self, states: &[arrow::array::ArrayRef]) -> DfResult<()> {
        self.update_batch(states)
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        Ok(vec![self.evaluate()?])
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        match &self.value {
            Some(v) => Ok(v.clone()),
            None => ScalarValue::try_from(&self.data_type),
        }
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.value.as_ref().map_or(0, ScalarValue::size)
    }
}

/// The names of the first `n` output columns of an aggregate plan (its GROUP BY columns).
fn key_names(plan: &LogicalPlan, n: usize) -> Vec<String> {
    plan.schema()
        .fields()
        .iter()
        .take(n)
        .map(|f| f.name().clone())
        .collect()
}

/// A grouped stream in windows.
#[derive(Debug, Clone)]
pub struct WindowedStream {
    grouped: GroupedStream,
    window: WindowSpec,
    emit: EmitMode,
}

impl WindowedStream {
    /// Emits each window's results once, when it closes (EMIT FINAL; Kafka Streams'
    /// `suppress(untilWindowCloses)`), instead of on every update.
    pub fn emit_final(mut self) -> WindowedStream {
        self.emit = EmitMode::Final;
        self
    }

    /// The number of rows per key and window (column `count`).
    pub fn count(&self) -> Result<Table> {
        self.aggregate([count(lit(1)).alias("count")])
    }

    /// DataFusion aggregate expressions per key and window. The result's columns are the
    /// keys, `window_start`, `window_end`, then the aggregates.
    pub fn aggregate(&self, aggregates: impl IntoIterator<Item = Expr>) -> Result<Table> {
        let mut groups = self.grouped.keys.clone();
        groups.push(self.window.to_expr(col(ROWTIME)).alias(WINDOW_COLUMN));
        let aggregated = LogicalPlanBuilder::from(self.grouped.stream.plan.clone())
            .aggregate(groups, aggregates)?
            .build()?;
        let fields = aggregated.schema().fields().clone();
        let n_keys = self.grouped.keys.len();
        let mut exprs: Vec<Expr> = Vec::with_capacity(fields.len() + 1);
        for (i, f) in fields.iter().enumerate() {
            let c = col(datafusion::common::Column::from_name(f.name()));
            if i == n_keys {
                exprs.push(get_field(c.clone(), "start").alias(WINDOW_START));
                exprs.push(get_field(c, "end").alias(WINDOW_END));
            } else {
                exprs.push(c);
            }
        }
        let plan = LogicalPlanBuilder::from(aggregated)
            .project(exprs)?
            .build()?;
        let mut key = key_names(&plan, n_keys);
        key.push(WINDOW_START.to_owned());
        Ok(Table {
            stream: Stream {
                plan,
                key,
                emit: self.emit,
                builder: self.grouped.stream.builder.clone(),
            },
        })
    }
}

/// A table: a topic read as one ([`StreamsBuilder::table`]), or the result of an aggregation;
/// a changelog of upserts (and, for topic tables, deletes) per key.
#[derive(Debug, Clone)]
pub struct Table {
    stream: Stream,
}

impl Table {
    /// The table's changelog as a stream (each update a row). A topic's table keeps its
    /// [`crate::format::DELETED`] column: a deleted key is a row with it set (written to a topic
    /// as a tombstone), and a filter on the changelog deletes the keys whose rows fail it, as
    /// on the table.
    pub fn to_stream(&self) -> Stream {
        self.stream.clone()
    }

    /// The key columns.
    pub fn key(&self) -> &[String] {
        &self.stream.key
    }

    /// The table's columns.
    pub fn schema(&self) -> SchemaRef {
        self.stream.schema()
    }

    /// Joins this table with `other` on their keys (Kafka Streams' `KTable.join`): a table
    /// keyed by this table's key whose rows follow both tables' changes (see
    /// [`crate::table_join`]). It has this table's columns, then the other's (pseudo-columns
    /// left out, names this table has prefixed with the other's name and `_`); its `rowtime`
    /// is the later of the two rows'.
    pub fn join(&self, other: &Table) -> Result<Table> {
        self.join_kind(other, JoinKind::Inner)
    }

    /// [`Table::join`], keeping this table's rows that have no partner (its columns null).
    pub fn left_join(&self, other: &Table) -> Result<Table> {
        self.join_kind(other, JoinKind::Left)
    }

    /// [`Table::join`], keeping the rows of either table that have no partner.
    pub fn outer_join(&self, other: &Table) -> Result<Table> {
        self.join_kind(other, JoinKind::Full)
    }

    fn join_kind(&self, other: &Table, kind: JoinKind) -> Result<Table> {
        let (left, left_plan, right, right_plan) = join_sides(&self.stream, &other.stream, "_2")?;
        let joined = TableJoinNode::plan(
            format!("{left}-{right}"),
            left_plan,
            right_plan,
            self.stream.key.clone(),
            other.stream.key.clone(),
            kind,
        )?;
        let later = self
            .stream
            .plan
            .schema()
            .has_column_with_unqualified_name(ROWTIME)
            && other
                .stream
                .plan
                .schema()
                .has_column_with_unqualified_name(ROWTIME);
        let plan = join_output(joined, &self.stream, &left, &right, later)?;
        Ok(Table {
            stream: Stream {
                key: self.stream.key.clone(),
                ..self.stream.joined(&other.stream, plan)
            },
        })
    }

    /// Joins this table on a foreign key to `other`'s key (Kafka Streams' foreign-key
    /// `KTable.join`): each row meets the row of `other` whose key equals `foreign_key` (one
    /// expression over this table's columns per key column of `other`). The result is keyed
    /// by this table's key and follows both tables: a row whose foreign key changes moves to
    /// its new partner, and a change of `other`'s row reaches every row pointing at it (see
    /// [`crate::fk_join`]). Columns as [`Table::join`]'s.
    pub fn join_foreign_key(
        &self,
        other: &Table,
        foreign_key: impl IntoIterator<Item = Expr>,
    ) -> Result<Table> {
        self.foreign_key_join(other, foreign_key.into_iter().collect(), JoinKind::Inner)
    }

    /// [`Table::join_foreign_key`], keeping this table's rows that have no partner (the other
    /// table's columns null).
    pub fn left_join_foreign_key(
        &self,
        other: &Table,
        foreign_key: impl IntoIterator<Item = Expr>,
    ) -> Result<Table> {
        self.foreign_key_join(other, foreign_key.into_iter().collect(), JoinKind::Left)
    }

    fn foreign_key_join(
        &self,
        other: &Table,
        foreign_key: Vec<Expr>,
        kind: JoinKind,
    ) -> Result<Table> {
        let (left, left_plan, right, right_plan) = join_sides(&self.stream, &other.stream, "_2")?;
        let joined = crate::fk_join::ForeignKeyJoinNode::plan(
            format!("{left}-{right}"),
            left_plan,
            right_plan,
            self.stream.key.clone(),
            other.stream.key.clone(),
            foreign_key,
            kind,
        )?;
        let later = self
            .stream
            .plan
            .schema()
            .has_column_with_unqualified_name(ROWTIME)
            && other
                .stream
                .plan
                .schema()
                .has_column_with_unqualified_name(ROWTIME);
        let plan = join_output(joined, &self.stream, &left, &right, later)?;
        Ok(Table {
            stream: Stream {
                key: self.stream.key.clone(),
                ..self.stream.joined(&other.stream, plan)
            },
        })
    }

    /// The table's rows with the columns `exprs` compute (Kafka Streams' `mapValues`): the key
    /// columns, the event time and the [`crate::format::DELETED`] marker are kept as they are,
    /// so the result is the same table with other values.
    pub fn map_values(&self, exprs: impl IntoIterator<Item = Expr>) -> Result<Table> {
        let schema = self.stream.plan.schema();
        let mut out: Vec<Expr> = Vec::new();
        for keep in self
            .stream
            .key
            .iter()
            .map(String::as_str)
            .chain([ROWTIME, DELETED])
        {
            if let Ok((q, f)) = schema.qualified_field_with_unqualified_name(keep) {
                out.push(Expr::Column(datafusion::common::Column::new(
                    q.cloned(),
                    f.name(),
                )));
            }
        }
        out.extend(exprs);
        let plan = LogicalPlanBuilder::from(self.stream.plan.clone())
            .project(out)?
            .build()?;
        Ok(Table {
            stream: self.stream.with_plan(plan),
        })
    }

    /// Keeps the table's latest row per key in a store named `name`, readable while the query
    /// runs ([`Runtime::store`], [`crate::store`]), holding at most 1 GiB.
    pub fn materialize(&self, name: &str) -> Result<Table> {
        self.materialize_with(name, 1 << 30)
    }

    /// [`Table::materialize`] with a byte limit: past it, the query fails naming the store.
    pub fn materialize_with(&self, name: &str, max_bytes: usize) -> Result<Table> {
        let store =
            crate::store::TableStore::new(name, self.schema(), &self.stream.key, max_bytes)?;
        let plan = LogicalPlan::Extension(datafusion::logical_expr::Extension {
            node: Arc::new(crate::store::MaterializeNode {
                input: self.stream.plan.clone(),
                store,
            }),
        });
        self.stream.builder.inner.lock().materialized.push((
            name.to_owned(),
            plan.clone(),
            self.stream.emit,
        ));
        Ok(Table {
            stream: self.stream.with_plan(plan),
        })
    }

    /// Keeps the rows where `predicate` holds. In a topic's table, a row that fails it deletes
    /// its key from the filtered table (as Kafka Streams' `KTable.filter` does).
    pub fn filter(&self, predicate: Expr) -> Result<Table> {
        Ok(Table {
            stream: self.stream.filter(predicate)?,
        })
    }

    /// Re-groups the table's rows by expressions of their columns (Kafka Streams'
    /// `KTable.groupBy`), for an aggregation that follows the table's updates and deletes: a
    /// row that changes group leaves the old one (see [`crate::table_aggregate`]).
    pub fn group_by(&self, keys: impl IntoIterator<Item = Expr>) -> Result<GroupedTable> {
        if self.stream.key.is_empty() {
            return Err(EngineError::config(
                "group_by on a table without key columns: its rows cannot be told apart to \
                 follow their updates",
            ));
        }
        Ok(GroupedTable {
            table: self.clone(),
            keys: keys.into_iter().collect(),
        })
    }
}

/// A table's rows grouped by new keys ([`Table::group_by`]), ready for an aggregation.
#[derive(Debug, Clone)]
pub struct GroupedTable {
    table: Table,
    keys: Vec<Expr>,
}

impl GroupedTable {
    /// The number of the table's rows per group, as a table (column `count`); a group whose
    /// last row leaves it is deleted.
    pub fn count(&self) -> Result<Table> {
        self.aggregate([count(lit(1)).alias("count")])
    }

    /// DataFusion aggregate expressions per group, as a table that follows the grouped table:
    /// an update moves a row's contribution from its old group to its new one, a delete takes
    /// it back, and a group left empty is deleted. Only functions that can take a row back
    /// exactly are allowed (COUNT, SUM, AVG, VAR, STDDEV and their variants, not DISTINCT):
    /// others are refused when the topology is built.
    pub fn aggregate(&self, aggregates: impl IntoIterator<Item = Expr>) -> Result<Table> {
        let stream = &self.table.stream;
        let node = crate::table_aggregate::TableAggregateNode::new(
            stream.plan.clone(),
            stream.key.clone(),
            self.keys.clone(),
            aggregates.into_iter().collect(),
        )?;
        let plan = LogicalPlan::Extension(datafusion::logical_expr::Extension {
            node: Arc::new(node),
        });
        let key = key_names(&plan, self.keys.len());
        Ok(Table {
            stream: Stream {
                plan,
                key,
                emit: EmitMode::Changes,
                builder: stream.builder.clone(),
            },
        })
    }
}

/// The queries of a built [`StreamsBuilder`], planned and ready to run.
#[derive(Debug)]
pub struct Topology {
    queries: Vec<Query>,
}

impl Topology {
    /// Each query: its source, operators (with the names their state is kept under) and sink,
    /// as Kafka Streams' `Topology.describe()` shows them.
    pub fn describe(&self) -> String {
        self.queries.iter().map(Query::describe).collect()
    }

    /// The queries.
    pub fn queries(&self) -> &[Query] {
        &self.queries
    }

    /// The queries, to run by other means (the test driver).
    pub fn into_queries(self) -> Vec<Query> {
        self.queries
    }
}

/// A running [`Topology`].
#[derive(Debug)]
pub struct RunningTopology {
    handles: Vec<QueryHandle>,
}

impl RunningTopology {
    /// Each query's counters.
    pub fn metrics(&self) -> Vec<(String, QueryMetrics)> {
        self.handles
            .iter()
            .map(|h| (h.name().to_owned(), h.metrics()))
            .collect()
    }

    /// Stops every query gracefully; the first error any of them failed with, if any.
    pub async fn stop(self) -> Result<Vec<QueryMetrics>> {
        let mut out = Vec::new();
        let mut first_error = None;
        for h in self.handles {
            match h.stop().await {
                Ok(m) => out.push(m),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(out), Err)
    }

    /// Whether any of its queries has ended (failed, or its bounded source finished).
    pub fn is_finished(&self) -> bool {
        self.handles.iter().any(QueryHandle::is_finished)
    }

    /// Ends every query at once, as a crash would (see [`QueryHandle::abort`]).
    pub fn abort(self) {
        for h in self.handles {
            h.abort();
        }
    }

    /// Waits for every query to end by itself (bounded sources).
    pub async fn wait(self) -> Result<Vec<QueryMetrics>> {
        let mut out = Vec::new();
        for h in self.handles {
            out.push(h.wait().await?);
        }
        Ok(out)
    }
}

impl Runtime {
    /// Starts every query of `topology`.
    pub async fn run(&self, topology: Topology) -> Result<RunningTopology> {
        let mut handles = Vec::with_capacity(topology.queries.len());
        for q in topology.queries {
            match self.start(q).await {
                Ok(h) => handles.push(h),
                Err(e) => {
                    for h in handles {
                        let _ = h.stop().await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(RunningTopology { handles })
    }
}
