//! Running queries: a [`Query`] (a planned `LogicalPlan` with its sinks) runs as a tokio task that
//! polls its source, pushes batches and watermarks through its operators in order, and writes
//! results to every sink. [`Runtime`] starts them; a [`QueryHandle`] watches and stops one.
//!
//! Each poll: decode what arrived (bad records are counted, logged with their position, and
//! sent to the dead-letter topic when one is set), run each batch through the operators with
//! the watermark as it was, then advance the watermark (operators emit what it closes), then
//! write the outputs. A stop request ends the loop between polls; the sinks are flushed and
//! closed, so a graceful stop loses nothing a sink took. A bounded source that ends advances
//! the watermark to the end of time, so every window closes and emits.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, RecordBatch};
use parking_lot::Mutex;
use quiver_broker::{Broker, Record};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{EngineError, Result};
use crate::format::{BadRecord, Format, SideEncoder};
use crate::operator::{Emit, LateRows, Operator, OperatorMetrics};
use crate::plan::{PhysicalQuery, PlanOptions, plan_query};
use crate::sink::Sink;
use crate::source::SourceReader;

/// Options of one query.
#[derive(Debug, Clone)]
pub struct QueryOptions {
    /// How windowed aggregations emit (EMIT CHANGES or EMIT FINAL).
    pub plan: PlanOptions,
    /// How long a poll waits for records before the runtime looks at time and stop requests.
    pub poll_wait: Duration,
    /// Undecodable records go to this topic (with the reason in headers), if set.
    pub dead_letter_topic: Option<String>,
    /// Rows that arrive after their window closed go to this topic, if set; otherwise they are
    /// counted and dropped. A late record's value is a JSON object of the columns the
    /// aggregation reads (its keys, arguments and event time), with the reason and the
    /// operator in headers.
    pub late_data_topic: Option<String>,
}

impl Default for QueryOptions {
    fn default() -> Self {
        QueryOptions {
            plan: PlanOptions::default(),
            poll_wait: Duration::from_millis(100),
            dead_letter_topic: None,
            late_data_topic: None,
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
        let mut out = format!(
            "Query {}\n  Source: {} ({})\n",
            self.name,
            self.physical.source_name,
            self.physical.source.describe()
        );
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
    /// The current watermark, once there is one.
    pub watermark: Option<i64>,
    /// Each operator's counters, by name.
    pub operators: Vec<(String, OperatorMetrics)>,
}

/// Starts queries. With a broker, dead-letter and late-data topics can be written.
#[derive(Debug, Clone, Default)]
pub struct Runtime {
    broker: Option<Broker>,
}

impl Runtime {
    /// A runtime for queries that use `broker` for side outputs.
    pub fn new(broker: &Broker) -> Runtime {
        Runtime {
            broker: Some(broker.clone()),
        }
    }

    /// A runtime without a broker (memory sources and collectors only).
    pub fn without_broker() -> Runtime {
        Runtime { broker: None }
    }

    /// Starts `query` as a task; fails at once if a side-output topic is missing.
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
        let (stop_tx, stop_rx) = watch::channel(false);
        let metrics = Arc::new(Mutex::new(QueryMetrics::default()));
        let name = query.name.clone();
        let task = tokio::spawn(run(query, self.broker.clone(), stop_rx, metrics.clone()));
        Ok(QueryHandle {
            name,
            stop: stop_tx,
            task,
            metrics,
        })
    }
}

/// A running query.
#[derive(Debug)]
pub struct QueryHandle {
    name: String,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<()>>,
    metrics: Arc<Mutex<QueryMetrics>>,
}

impl QueryHandle {
    /// The query's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its counters now.
    pub fn metrics(&self) -> QueryMetrics {
        self.metrics.lock().clone()
    }

    /// Whether it has ended (its source finished, it failed, or it was stopped).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops it gracefully (the sink is flushed and closed) and returns its final counters, or
    /// the error it failed with.
    pub async fn stop(self) -> Result<QueryMetrics> {
        let _ = self.stop.send(true);
        self.wait().await
    }

    /// Waits for it to end by itself (a bounded source) and returns its final counters.
    pub async fn wait(self) -> Result<QueryMetrics> {
        match self.task.await {
            Ok(result) => result.map(|()| self.metrics.lock().clone()),
            Err(e) => Err(EngineError::internal(format!(
                "query '{}' panicked or was cancelled: {e}",
                self.name
            ))),
        }
    }
}

/// The query loop (see the module docs).
async fn run(
    mut query: Query,
    broker: Option<Broker>,
    mut stop: watch::Receiver<bool>,
    metrics: Arc<Mutex<QueryMetrics>>,
) -> Result<()> {
    let mut reader: Box<dyn SourceReader> = query.physical.source.open().await?;
    for sink in &mut query.sinks {
        sink.open(query.physical.schema.clone()).await?;
    }
    let mut watermark = i64::MIN;
    let result = loop {
        if *stop.borrow() {
            break Ok(());
        }
        let poll = tokio::select! {
            poll = reader.poll(query.options.poll_wait) => poll,
            _ = stop.changed() => break Ok(()),
        };
        let poll = match poll {
            Ok(p) => p,
            Err(e) => break Err(e),
        };
        let step = async {
            side_bad_records(
                &query.name,
                &query.physical.source_name,
                query.options.dead_letter_topic.as_deref(),
                broker.as_ref(),
                &poll.bad,
            )
            .await?;
            let mut outputs = Vec::new();
            let mut late = Vec::new();
            let mut records = 0u64;
            for batch in &poll.batches {
                records += batch.num_rows() as u64;
                push(
                    &mut query.physical.operators,
                    0,
                    batch.clone(),
                    watermark,
                    &mut outputs,
                    &mut late,
                )?;
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
                advance(
                    &mut query.physical.operators,
                    watermark,
                    &mut outputs,
                    &mut late,
                )?;
            }
            let mut rows_out = 0;
            for batch in outputs {
                rows_out += batch.num_rows() as u64;
                for sink in &mut query.sinks {
                    sink.write(batch.clone()).await?;
                }
            }
            side_late_rows(
                query.options.late_data_topic.as_deref(),
                broker.as_ref(),
                &late,
            )
            .await?;
            let mut m = metrics.lock();
            m.records_in += records;
            m.bad_records += poll.bad.len() as u64;
            m.skipped_records += poll.skipped as u64;
            m.rows_out += rows_out;
            m.late_rows += late.iter().map(|l| l.rows.num_rows() as u64).sum::<u64>();
            m.watermark = (watermark != i64::MIN).then_some(watermark);
            m.operators = query
                .physical
                .operators
                .iter()
                .map(|o| (o.name().to_owned(), o.metrics()))
                .collect();
            Ok::<bool, EngineError>(poll.finished)
        };
        match step.await {
            Ok(true) => break Ok(()),
            Ok(false) => {}
            Err(e) => break Err(e),
        }
    };
    match result {
        Ok(()) => {
            for sink in &mut query.sinks {
                sink.close().await?;
            }
            Ok(())
        }
        Err(e) => {
            tracing::error!(query = %query.name, error = %e, "query failed");
            Err(e)
        }
    }
}

/// Runs `batch` through operators `from..`, collecting the last one's output.
fn push(
    operators: &mut [Box<dyn Operator>],
    from: usize,
    batch: RecordBatch,
    watermark: i64,
    outputs: &mut Vec<RecordBatch>,
    late: &mut Vec<LateRows>,
) -> Result<()> {
    let mut current = vec![batch];
    for op in operators.iter_mut().skip(from) {
        let mut emit = Emit::default();
        for b in &current {
            op.process(b, watermark, &mut emit)?;
        }
        late.append(&mut emit.late);
        current = emit.batches;
        if current.is_empty() {
            return Ok(());
        }
    }
    outputs.extend(current);
    Ok(())
}

/// Advances every operator to `watermark`, in order, pushing what each emits downstream.
fn advance(
    operators: &mut [Box<dyn Operator>],
    watermark: i64,
    outputs: &mut Vec<RecordBatch>,
    late: &mut Vec<LateRows>,
) -> Result<()> {
    for i in 0..operators.len() {
        let mut emit = Emit::default();
        operators[i].advance(watermark, &mut emit)?;
        late.append(&mut emit.late);
        for batch in emit.batches {
            push(operators, i + 1, batch, watermark, outputs, late)?;
        }
    }
    Ok(())
}

/// Logs bad records and writes them to the dead-letter topic, if there is one.
async fn side_bad_records(
    query: &str,
    source: &str,
    topic: Option<&str>,
    broker: Option<&Broker>,
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
    broker.produce(topic, &records).await?;
    Ok(())
}

/// Writes late rows to the late-data topic, if there is one, as JSON with the reason.
async fn side_late_rows(
    topic: Option<&str>,
    broker: Option<&Broker>,
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
        broker.produce(topic, &records).await?;
    }
    Ok(())
}
