//! [`TopologyTestDriver`]: a topology run by hand, as Kafka Streams' driver of the same name
//! runs one: feed records to its input topics, move event time, read what each sink got, all
//! in the calling thread, deterministically, with no broker.
//!
//! Each query's operators run in one instance, in order. Piped records are decoded by the
//! topic's formats (bad records are kept for [`TopologyTestDriver::bad_records`]); after each
//! pipe the watermark moves to the largest event time seen (Kafka Streams' stream time), so
//! windows close as they would on a single partition. [`TopologyTestDriver::advance_time`]
//! moves it further without records, and [`TopologyTestDriver::finish`] ends the input.

use std::collections::BTreeMap;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::TimestampMillisecondType;
use quiver_broker::{Record, records_to_batch};

use crate::dsl::Topology;
use crate::error::{EngineError, Result};
use crate::format::{BadRecord, ROWTIME};
use crate::operator::{LateRows, advance_chain, run_input};
use crate::plan::PhysicalQuery;

#[derive(Debug)]
struct DriverQuery {
    physical: PhysicalQuery,
    /// The topics (or descriptions) of its sinks.
    sinks: Vec<String>,
    watermark: i64,
    output: Vec<RecordBatch>,
    late: Vec<LateRows>,
}

/// Runs a [`Topology`] by hand (see the module docs).
#[derive(Debug)]
pub struct TopologyTestDriver {
    queries: Vec<DriverQuery>,
    /// The next offset per input stream.
    offsets: BTreeMap<String, i64>,
    bad: Vec<BadRecord>,
}

impl TopologyTestDriver {
    /// A driver for `topology`; its sinks are not opened: what they would get is kept here.
    pub fn new(topology: Topology) -> TopologyTestDriver {
        let queries = topology
            .into_queries()
            .into_iter()
            .map(|q| DriverQuery {
                sinks: q
                    .sinks
                    .iter()
                    .map(|s| s.topic().map_or_else(|| s.describe(), str::to_owned))
                    .collect(),
                physical: {
                    let mut physical = q.physical;
                    for op in &mut physical.operators {
                        op.assign(0, 1);
                    }
                    physical
                },
                watermark: i64::MIN,
                output: Vec::new(),
                late: Vec::new(),
            })
            .collect();
        TopologyTestDriver {
            queries,
            offsets: BTreeMap::new(),
            bad: Vec::new(),
        }
    }

    /// Feeds `records` to the stream named `stream` (a topic's name), as if read from its
    /// partition 0, then moves event time to the largest seen.
    pub fn pipe(&mut self, stream: &str, records: &[Record]) -> Result<()> {
        let mut found = false;
        let first = *self.offsets.get(stream).unwrap_or(&0);
        let mut envelope = records_to_batch(records);
        let offsets =
            arrow::array::Int64Array::from_iter_values(first..first + records.len() as i64);
        let mut columns = envelope.columns().to_vec();
        columns[quiver_broker::record::col::OFFSET] = std::sync::Arc::new(offsets);
        envelope = RecordBatch::try_new(envelope.schema(), columns)?;
        for q in &mut self.queries {
            let Some(input) = q.physical.sources.iter().position(|s| s.name == stream) else {
                continue;
            };
            let decoder = q.physical.sources[input].source.decoder().ok_or_else(|| {
                EngineError::config(format!(
                    "stream '{stream}' does not read Kafka records; pipe batches with pipe_batch"
                ))
            })?;
            let decoded = decoder.decode(0, &envelope)?;
            // Each query reading the stream decodes it; report its bad records once.
            if !found {
                self.bad.extend(decoded.bad);
            }
            found = true;
            feed(q, input, decoded.batch)?;
        }
        self.offsets
            .insert(stream.to_owned(), first + records.len() as i64);
        if !found {
            return Err(self.unknown(stream));
        }
        Ok(())
    }

    /// Feeds a batch already in the stream's schema (for sources that are not topics).
    pub fn pipe_batch(&mut self, stream: &str, batch: RecordBatch) -> Result<()> {
        let mut found = false;
        for q in &mut self.queries {
            if let Some(input) = q.physical.sources.iter().position(|s| s.name == stream) {
                found = true;
                feed(q, input, batch.clone())?;
            }
        }
        if found {
            Ok(())
        } else {
            Err(self.unknown(stream))
        }
    }

    fn unknown(&self, stream: &str) -> EngineError {
        let mut names: Vec<&str> = self
            .queries
            .iter()
            .flat_map(|q| q.physical.sources.iter().map(|s| s.name.as_str()))
            .collect();
        names.sort_unstable();
        names.dedup();
        EngineError::config(format!(
            "no query reads a stream named '{stream}'; the topology reads {}",
            names.join(", ")
        ))
    }

    /// Moves event time to `watermark_ms` in every query (windows that end, plus grace, by
    /// then close).
    pub fn advance_time(&mut self, watermark_ms: i64) -> Result<()> {
        for q in &mut self.queries {
            advance(q, watermark_ms)?;
        }
        Ok(())
    }

    /// Ends the input: every window closes.
    pub fn finish(&mut self) -> Result<()> {
        self.advance_time(i64::MAX)
    }

    /// What the sinks writing to `topic` (or described as `topic`) have got so far.
    pub fn output(&self, topic: &str) -> Vec<RecordBatch> {
        self.queries
            .iter()
            .filter(|q| q.sinks.iter().any(|s| s == topic))
            .flat_map(|q| q.output.iter().cloned())
            .collect()
    }

    /// Takes what the sinks writing to `topic` have got so far.
    pub fn take_output(&mut self, topic: &str) -> Vec<RecordBatch> {
        let mut out = Vec::new();
        for q in &mut self.queries {
            if q.sinks.iter().any(|s| s == topic) {
                out.append(&mut q.output);
            }
        }
        out
    }

    /// Rows that arrived after their window closed, in every query.
    pub fn late_rows(&self) -> Vec<LateRows> {
        self.queries
            .iter()
            .flat_map(|q| q.late.iter().cloned())
            .collect()
    }

    /// Records that did not decode.
    pub fn bad_records(&self) -> &[BadRecord] {
        &self.bad
    }
}

fn feed(q: &mut DriverQuery, input: usize, batch: RecordBatch) -> Result<()> {
    let next = max_time(&batch);
    let ops = &mut q.physical.operators;
    run_input(ops, input, batch, q.watermark, &mut q.output, &mut q.late)?;
    match next {
        Some(t) => advance(q, t),
        None => Ok(()),
    }
}

fn max_time(batch: &RecordBatch) -> Option<i64> {
    let i = batch.schema().index_of(ROWTIME).ok()?;
    arrow::compute::max(batch.column(i).as_primitive::<TimestampMillisecondType>())
}

fn advance(q: &mut DriverQuery, watermark: i64) -> Result<()> {
    if watermark <= q.watermark {
        return Ok(());
    }
    q.watermark = watermark;
    advance_chain(
        &mut q.physical.operators,
        watermark,
        &mut q.output,
        &mut q.late,
    )
}
