//! The Nexmark event generator: the standard streaming benchmark's online auction, emitted as
//! Arrow batches (a [`Source`]).
//!
//! Events come in the proportions of the Beam and Flink generators: of every 50 events, 1 is a
//! new person, 3 are new auctions and 46 are bids. Event `i` has event time
//! `first_event_ms + i * inter_event_us / 1000`; bids go to recent auctions (hot auctions more
//! often) by recent bidders, as the reference generator's defaults do. One schema carries all
//! three kinds, `event_type` telling them apart (0 person, 1 auction, 2 bid) and the other
//! kinds' columns null, so a query filters the kind it reads.
//!
//! A generator is bounded (`events` in total); its splits share the events in blocks of a
//! batch, so any parallelism generates the same events.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    Int8Builder, Int64Builder, RecordBatch, StringBuilder, TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use quiver_broker::PartitionSplit;

use datafusion::functions_aggregate::expr_fn::{avg, max};
use datafusion::prelude::{cast, col, lit};

use crate::dsl::{Stream, StreamsBuilder};
use crate::error::{EngineError, Result};
use crate::format::ROWTIME;
use crate::source::{Source, SourcePoll, SourceReader};
use crate::{JoinKind, JoinWindow, WindowKind, WindowSpec};

pub const PERSON: i8 = 0;
pub const AUCTION: i8 = 1;
pub const BID: i8 = 2;

const PROPORTION: u64 = 50;
const PERSONS: u64 = 1;
const AUCTIONS: u64 = 3;
/// Bids go to one of the last this many auctions; one in `HOT_RATIO` to the hottest.
const ACTIVE_AUCTIONS: u64 = 1000;
const HOT_RATIO: u64 = 2;
const ACTIVE_PEOPLE: u64 = 1000;
const CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];

/// How much and how fast a [`NexmarkSource`] generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NexmarkConfig {
    /// Events in total.
    pub events: u64,
    /// Rows per batch.
    pub batch_size: usize,
    /// Event time of the first event (ms since the epoch).
    pub first_event_ms: i64,
    /// Event-time distance between events, in microseconds (10: 100,000 events per second of
    /// event time).
    pub inter_event_us: i64,
}

impl Default for NexmarkConfig {
    fn default() -> Self {
        NexmarkConfig {
            events: 1_000_000,
            batch_size: 8192,
            first_event_ms: 1_767_225_600_000,
            inter_event_us: 10,
        }
    }
}

/// The Nexmark source (see the module docs).
#[derive(Debug, Clone)]
pub struct NexmarkSource {
    config: NexmarkConfig,
    schema: SchemaRef,
}

impl NexmarkSource {
    pub fn new(config: NexmarkConfig) -> Result<NexmarkSource> {
        if config.batch_size == 0 || config.inter_event_us <= 0 {
            return Err(EngineError::config(
                "a Nexmark generator needs a batch size and an inter-event time above 0",
            ));
        }
        let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
        let schema = Arc::new(Schema::new(vec![
            Field::new("event_type", DataType::Int8, false),
            // Person and auction id.
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("seller", DataType::Int64, true),
            Field::new("category", DataType::Int64, true),
            // Bid.
            Field::new("auction", DataType::Int64, true),
            Field::new("bidder", DataType::Int64, true),
            // A bid's price, an auction's initial bid.
            Field::new("price", DataType::Int64, true),
            Field::new("channel", DataType::Utf8, true),
            Field::new("url", DataType::Utf8, true),
            Field::new(ROWTIME, ts, false),
        ]));
        Ok(NexmarkSource { config, schema })
    }

    /// The batch of events `[first, first + n)`.
    pub fn generate(&self, first: u64, n: usize) -> Result<RecordBatch> {
        let mut kind = Int8Builder::with_capacity(n);
        let mut id = Int64Builder::with_capacity(n);
        let mut name = StringBuilder::with_capacity(n, n);
        let mut seller = Int64Builder::with_capacity(n);
        let mut category = Int64Builder::with_capacity(n);
        let mut auction = Int64Builder::with_capacity(n);
        let mut bidder = Int64Builder::with_capacity(n);
        let mut price = Int64Builder::with_capacity(n);
        let mut channel = StringBuilder::with_capacity(n, n * 6);
        let mut url = StringBuilder::with_capacity(n, n * 40);
        let mut time = TimestampMillisecondBuilder::with_capacity(n);
        let mut text = String::with_capacity(64);
        for i in first..first + n as u64 {
            let epoch = i / PROPORTION;
            let offset = i % PROPORTION;
            let mut rng = SplitMix(i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5eed);
            time.append_value(
                self.config.first_event_ms + (i as i64 * self.config.inter_event_us) / 1000,
            );
            if offset < PERSONS {
                let person = epoch * PERSONS + offset;
                kind.append_value(PERSON);
                id.append_value(1000 + person as i64);
                text.clear();
                use std::fmt::Write;
                let _ = write!(text, "person-{person}");
                name.append_value(&text);
                seller.append_null();
                category.append_null();
                auction.append_null();
                bidder.append_null();
                price.append_null();
                channel.append_null();
                url.append_null();
            } else if offset < PERSONS + AUCTIONS {
                let a = epoch * AUCTIONS + offset - PERSONS;
                kind.append_value(AUCTION);
                id.append_value(1000 + a as i64);
                name.append_null();
                seller.append_value(1000 + (rng.next() % ((epoch + 1) * PERSONS)) as i64);
                category.append_value(10 + (rng.next() % 5) as i64);
                auction.append_null();
                bidder.append_null();
                price.append_value(1 + (rng.next() % 1000) as i64);
                channel.append_null();
                url.append_null();
            } else {
                kind.append_value(BID);
                id.append_null();
                name.append_null();
                seller.append_null();
                category.append_null();
                let last_auction = (epoch + 1) * AUCTIONS;
                let a = if rng.next().is_multiple_of(HOT_RATIO) {
                    last_auction - 1
                } else {
                    last_auction.saturating_sub(1 + rng.next() % ACTIVE_AUCTIONS.min(last_auction))
                };
                auction.append_value(1000 + a as i64);
                let last_person = (epoch + 1) * PERSONS;
                bidder.append_value(
                    1000 + last_person
                        .saturating_sub(1 + rng.next() % ACTIVE_PEOPLE.min(last_person))
                        as i64,
                );
                price.append_value(100 + (rng.next() % 10_000) as i64);
                let c = (rng.next() % CHANNELS.len() as u64) as usize;
                channel.append_value(CHANNELS[c]);
                text.clear();
                use std::fmt::Write;
                let _ = write!(
                    text,
                    "https://www.nexmark.com/item.htm?query=1&channel_id={c}"
                );
                url.append_value(&text);
            }
        }
        Ok(RecordBatch::try_new(
            self.schema.clone(),
            vec![
                Arc::new(kind.finish()),
                Arc::new(id.finish()),
                Arc::new(name.finish()),
                Arc::new(seller.finish()),
                Arc::new(category.finish()),
                Arc::new(auction.finish()),
                Arc::new(bidder.finish()),
                Arc::new(price.finish()),
                Arc::new(channel.finish()),
                Arc::new(url.finish()),
                Arc::new(time.finish()),
            ],
        )?)
    }
}

// ---- The standard queries, written in the DSL ----

/// The Nexmark queries [`query`] writes, by their standard names:
///
/// - q0 passes bids through, q1 converts their price, q2 selects some auctions;
/// - q3 joins auctions of category 10 with their seller as of the auction's time (a
///   stream–table join; persons as a table keyed by id; the generator has no person state, so
///   the standard state filter is left out);
/// - q4 averages the winning price per category: each auction's highest bid of its first
///   10 s (an updating table), then the average of that table per category, which takes an
///   auction's old maximum back as it rises (a table aggregation);
/// - q5 counts bids per auction in hopping windows (10 s every 2 s; the hot-items count,
///   without the join to the per-window maximum);
/// - q7 finds the highest bids of each 10 s tumbling window: the window's maximum price joined
///   back to the bids (a join whose right side is aggregated);
/// - q8 pairs new persons with the auctions they opened in the same 10 s tumbling window (a
///   stream–stream join on id and window start, one row per auction);
/// - q9 finds each auction's winning bid: auctions joined with their bids of the auction's
///   first 10 s (the generator has no expiry time), then the highest per auction (a top-1
///   table);
/// - q11 counts bids per bidder in sessions (gap 10 s).
pub const QUERIES: [&str; 10] = ["q0", "q1", "q2", "q3", "q4", "q5", "q7", "q8", "q9", "q11"];

/// The bids of a generator's events.
fn bids(b: &StreamsBuilder, config: NexmarkConfig) -> Result<Stream> {
    let source = NexmarkSource::new(config)?;
    b.stream("nexmark", Arc::new(source))?
        .filter(col("event_type").eq(lit(BID)))
}

/// All of a generator's events, as one stream named `nexmark`.
fn events(b: &StreamsBuilder, config: NexmarkConfig) -> Result<Stream> {
    let source = NexmarkSource::new(config)?;
    b.stream("nexmark", Arc::new(source))
}

/// Nexmark query `name` (one of [`QUERIES`]) written in the DSL, over a generator of `config`'s
/// events; the result stream, for the caller to send to a sink. See [`QUERIES`] for what each
/// computes.
pub fn query(name: &str, b: &StreamsBuilder, config: NexmarkConfig) -> Result<Stream> {
    if name == "q4" {
        // Average winning price per category: each auction's highest bid of its first 10 s
        // (an updating table per auction), then the average per category of that table, which
        // takes back an auction's old maximum whenever it rises.
        let all = events(b, config)?;
        let auctions = all.filter(col("event_type").eq(lit(AUCTION)))?.select([
            col("id"),
            col("category"),
            col("rowtime"),
        ])?;
        let bids = all.filter(col("event_type").eq(lit(BID)))?.select([
            col("auction"),
            col("price"),
            col("rowtime"),
        ])?;
        return Ok(auctions
            .window_join_with(
                &bids,
                [col("id")],
                [col("auction")],
                10_000,
                JoinKind::Inner,
                Some(col("nexmark_2.rowtime").gt_eq(col("nexmark.rowtime"))),
                0,
            )?
            .group_by([col("id"), col("category")])?
            .aggregate([max(col("price")).alias("final")])?
            .group_by([col("category")])?
            .aggregate([avg(col("final")).alias("average")])?
            .to_stream());
    }
    if name == "q9" {
        // Winning bids: each auction's bids in its first 10 s (the generator has no expiry
        // time), the highest per auction (a top-1 table).
        let all = events(b, config)?;
        let auctions = all.filter(col("event_type").eq(lit(AUCTION)))?.select([
            col("id"),
            col("seller"),
            col("category"),
            col("rowtime"),
        ])?;
        let bids = all.filter(col("event_type").eq(lit(BID)))?.select([
            col("auction"),
            col("bidder"),
            col("price"),
            col("rowtime"),
        ])?;
        let won = auctions.window_join_with(
            &bids,
            [col("id")],
            [col("auction")],
            10_000,
            JoinKind::Inner,
            Some(col("nexmark_2.rowtime").gt_eq(col("nexmark.rowtime"))),
            0,
        )?;
        return Ok(won.top_n(["id"], "price", true, 1)?.to_stream());
    }
    if name == "q3" || name == "q8" {
        let all = events(b, config)?;
        let persons = all.filter(col("event_type").eq(lit(PERSON)))?.select([
            col("id"),
            col("name"),
            col("rowtime"),
        ])?;
        let auctions = all.filter(col("event_type").eq(lit(AUCTION)))?.select([
            col("id").alias("auction_id"),
            col("seller"),
            col("category"),
            col("rowtime"),
        ])?;
        if name == "q3" {
            let persons = persons.to_table(["id"])?;
            return auctions
                .filter(col("category").eq(lit(10i64)))?
                .join(&persons, [col("seller")])?
                .select([col("name"), col("auction_id")]);
        }
        let start = |s: &Stream| -> Result<Stream> {
            let mut columns: Vec<_> = s.schema().fields().iter().map(|f| col(f.name())).collect();
            columns.push(
                (cast(col("rowtime"), arrow::datatypes::DataType::Int64) / lit(10_000i64))
                    .alias("window"),
            );
            s.select(columns)
        };
        return start(&persons)?
            .window_join(
                &start(&auctions)?,
                [col("id"), col("window")],
                [col("seller"), col("window")],
                10_000,
                JoinKind::Inner,
            )?
            .select([col("id"), col("name"), col("window")]);
    }
    let bids = bids(b, config)?;
    Ok(match name {
        "q0" => bids.select([
            col("auction"),
            col("bidder"),
            col("price"),
            col("channel"),
            col("url"),
            col("rowtime"),
        ])?,
        "q1" => bids.select([
            col("auction"),
            col("bidder"),
            (cast(col("price"), arrow::datatypes::DataType::Float64) * lit(0.908)).alias("price"),
            col("rowtime"),
        ])?,
        "q2" => bids
            .filter((col("auction") % lit(123i64)).eq(lit(0i64)))?
            .select([col("auction"), col("price")])?,
        "q5" => bids
            .group_by([col("auction")])?
            .window(WindowSpec {
                kind: WindowKind::Hopping {
                    size_ms: 10_000,
                    advance_ms: 2_000,
                },
                grace_ms: 0,
            })?
            .emit_final()
            .count()?
            .to_stream(),
        "q7" => {
            // The highest bid of each 10 s tumbling window: the window's maximum price (one
            // global aggregate), joined back to the bids of that window at that price.
            let maxima = bids
                .group_by(Vec::<datafusion::prelude::Expr>::new())?
                .window(WindowSpec {
                    kind: WindowKind::Tumbling { size_ms: 10_000 },
                    grace_ms: 0,
                })?
                .emit_final()
                .aggregate([max(col("price")).alias("top")])?
                .to_stream()
                .select([
                    col("top"),
                    col("window_start"),
                    (col("window_end")
                        - lit(datafusion::scalar::ScalarValue::DurationMillisecond(Some(
                            1,
                        ))))
                    .alias("rowtime"),
                ])?;
            bids.select([col("auction"), col("bidder"), col("price"), col("rowtime")])?
                .window_join_with(
                    &maxima,
                    [col("price")],
                    [col("top")],
                    JoinWindow::new(0, 10_000),
                    JoinKind::Inner,
                    Some(col("nexmark.rowtime").gt_eq(col("stream.window_start"))),
                    10_000,
                )?
                .select([col("auction"), col("bidder"), col("price"), col("rowtime")])?
        }
        "q11" => bids
            .group_by([col("bidder")])?
            .window(WindowSpec {
                kind: WindowKind::Session { gap_ms: 10_000 },
                grace_ms: 0,
            })?
            .emit_final()
            .count()?
            .to_stream(),
        other => {
            return Err(EngineError::config(format!(
                "no Nexmark query '{other}'; the queries are {}",
                QUERIES.join(", ")
            )));
        }
    })
}

/// A small, fast generator of well-mixed numbers (SplitMix64), seeded per event so that an
/// event is the same whichever split makes it.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[async_trait]
impl Source for NexmarkSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn describe(&self) -> String {
        format!("nexmark ({} events)", self.config.events)
    }

    async fn open(&self, split: PartitionSplit) -> Result<Box<dyn SourceReader>> {
        Ok(Box::new(NexmarkReader {
            source: self.clone(),
            split,
            block: u64::from(split.index),
        }))
    }
}

#[derive(Debug)]
struct NexmarkReader {
    source: NexmarkSource,
    split: PartitionSplit,
    /// The next block (of `batch_size` events) this split makes.
    block: u64,
}

#[async_trait]
impl SourceReader for NexmarkReader {
    async fn poll(&mut self, _max_wait: Duration) -> Result<SourcePoll> {
        let size = self.source.config.batch_size as u64;
        let total = self.source.config.events;
        let first = self.block * size;
        let mut poll = SourcePoll::default();
        if first < total {
            let n = size.min(total - first) as usize;
            let batch = self.source.generate(first, n)?;
            let last = first + n as u64 - 1;
            poll.watermark = Some(
                self.source.config.first_event_ms
                    + (last as i64 * self.source.config.inter_event_us) / 1000,
            );
            poll.batches.push(batch);
            self.block += u64::from(self.split.count.max(1));
        }
        poll.finished = self.block * size >= total;
        // Let other tasks run between batches.
        tokio::task::yield_now().await;
        Ok(poll)
    }

    fn positions(&self) -> BTreeMap<i32, i64> {
        BTreeMap::from([(
            self.split.index as i32,
            (self.block * self.source.config.batch_size as u64) as i64,
        )])
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int8Type;

    use super::*;

    #[test]
    fn events_come_in_the_standard_proportions_and_bids_reference_earlier_entities() {
        let source = NexmarkSource::new(NexmarkConfig::default()).unwrap_or_else(|e| panic!("{e}"));
        let batch = source.generate(0, 50_000).unwrap_or_else(|e| panic!("{e}"));
        let kinds = batch.column(0).as_primitive::<Int8Type>();
        let count = |k| kinds.values().iter().filter(|&&v| v == k).count();
        assert_eq!(
            (count(PERSON), count(AUCTION), count(BID)),
            (1_000, 3_000, 46_000)
        );
        let auction = batch
            .column(5)
            .as_primitive::<arrow::datatypes::Int64Type>();
        let max_auction = batch
            .column(1)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .iter()
            .zip(kinds.values().iter())
            .filter(|(_, k)| **k == AUCTION)
            .filter_map(|(v, _)| v)
            .max()
            .unwrap_or_default();
        assert!(
            auction
                .iter()
                .flatten()
                .all(|a| (1000..=max_auction).contains(&a))
        );
        assert_eq!(auction.null_count(), 4_000);
        // The same events whatever the batch boundaries.
        let again = source
            .generate(25_000, 10)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again, batch.slice(25_000, 10));
    }
}
