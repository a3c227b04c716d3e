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

use crate::error::{EngineError, Result};
use crate::format::ROWTIME;
use crate::source::{Source, SourcePoll, SourceReader};

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
