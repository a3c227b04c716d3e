//! Nexmark queries through the DSL, in-process, on the generator: events per second, and per
//! second of CPU time (the process's user + system time while the query ran), so the figure
//! per core holds on a noisy machine with any number of cores.
//!
//! ```text
//! scripts/bench-nexmark [EVENTS]        # or: cargo bench -p quiver-engine --bench nexmark -- EVENTS
//! ```
//!
//! q0 passes bids through, q1 converts their price, q2 selects some auctions, q5 counts bids
//! per auction in hopping windows (10 s every 2 s; the hot-items count, without the join to the
//! per-window maximum, which needs joins), q11 counts bids per bidder in sessions (gap 10 s).

#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark: failing loudly is right.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::prelude::{cast, col, lit};
use quiver_engine::dsl::{Stream, StreamsBuilder};
use quiver_engine::nexmark::{BID, NexmarkConfig, NexmarkSource};
use quiver_engine::{QueryOptions, Runtime, Sink, WindowKind, WindowSpec};

/// Counts rows, keeps nothing.
#[derive(Debug, Clone, Default)]
struct CountSink(Arc<AtomicU64>);

#[async_trait]
impl Sink for CountSink {
    fn describe(&self) -> String {
        "count".into()
    }
    async fn open(&mut self, _schema: SchemaRef) -> quiver_engine::Result<()> {
        Ok(())
    }
    async fn write(&mut self, batch: RecordBatch) -> quiver_engine::Result<()> {
        self.0.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        Ok(())
    }
    async fn flush(&mut self) -> quiver_engine::Result<()> {
        Ok(())
    }
}

fn cpu_time() -> Duration {
    // SAFETY: getrusage writes the struct it is given; a zeroed rusage is a valid value.
    #[allow(unsafe_code)]
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn bids(b: &StreamsBuilder, events: u64) -> Stream {
    let source = NexmarkSource::new(NexmarkConfig {
        events,
        ..NexmarkConfig::default()
    })
    .unwrap();
    b.stream("nexmark", Arc::new(source))
        .unwrap()
        .filter(col("event_type").eq(lit(BID)))
        .unwrap()
}

fn query(name: &str, b: &StreamsBuilder, events: u64) -> Stream {
    let bids = bids(b, events);
    match name {
        "q0" => bids
            .select([
                col("auction"),
                col("bidder"),
                col("price"),
                col("channel"),
                col("url"),
                col("rowtime"),
            ])
            .unwrap(),
        "q1" => bids
            .select([
                col("auction"),
                col("bidder"),
                (cast(col("price"), arrow::datatypes::DataType::Float64) * lit(0.908))
                    .alias("price"),
                col("rowtime"),
            ])
            .unwrap(),
        "q2" => bids
            .filter((col("auction") % lit(123i64)).eq(lit(0i64)))
            .unwrap()
            .select([col("auction"), col("price")])
            .unwrap(),
        "q5" => bids
            .group_by([col("auction")])
            .unwrap()
            .window(WindowSpec {
                kind: WindowKind::Hopping {
                    size_ms: 10_000,
                    advance_ms: 2_000,
                },
                grace_ms: 0,
            })
            .unwrap()
            .emit_final()
            .count()
            .unwrap()
            .to_stream(),
        "q11" => bids
            .group_by([col("bidder")])
            .unwrap()
            .window(WindowSpec {
                kind: WindowKind::Session { gap_ms: 10_000 },
                grace_ms: 0,
            })
            .unwrap()
            .emit_final()
            .count()
            .unwrap()
            .to_stream(),
        other => panic!("unknown query {other}"),
    }
}

fn main() {
    let events: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|a| a.parse().expect("EVENTS is a number"))
        .unwrap_or(10_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "Nexmark, {events} events, {cores} cores, in-process (generator -> DSL -> counting sink)"
    );
    println!(
        "{:<5} {:>14} {:>18} {:>12} {:>10}",
        "query", "events/s", "events/s per core", "rows out", "seconds"
    );
    for name in ["q0", "q1", "q2", "q5", "q11"] {
        let builder = StreamsBuilder::new().with_options(QueryOptions::default());
        let sink = CountSink::default();
        query(name, &builder, events).to_sink(Box::new(sink.clone()));
        let topology = builder.build().unwrap();
        let (cpu0, wall0) = (cpu_time(), Instant::now());
        rt.block_on(async {
            let running = Runtime::without_broker().run(topology).await.unwrap();
            running.wait().await.unwrap();
        });
        let (cpu, wall) = (cpu_time() - cpu0, wall0.elapsed());
        println!(
            "{:<5} {:>14.0} {:>18.0} {:>12} {:>10.2}",
            name,
            events as f64 / wall.as_secs_f64(),
            events as f64 / cpu.as_secs_f64(),
            sink.0.load(Ordering::Relaxed),
            wall.as_secs_f64()
        );
    }
}
