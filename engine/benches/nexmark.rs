//! Nexmark queries through the DSL, in-process, on the generator: events per second, and per
//! second of CPU time (the process's user + system time while the query ran), so the figure
//! per core holds on a noisy machine with any number of cores.
//!
//! ```text
//! scripts/bench-nexmark [EVENTS]        # or: cargo bench -p quiver-engine --bench nexmark -- EVENTS
//! NEXMARK_QUERIES=q11 scripts/bench-nexmark   # only these (queries, `lookups`, `broker`)
//! ```
//!
//! The queries are the DSL programs of `quiver_engine::nexmark::query` (its `QUERIES` docs
//! say what each computes); `sql/benches/nexmark_sql.rs` runs them next to the same queries
//! written in Quiver SQL.
//!
//! Then lookups in a materialized table of 1,000,000 keys while the query keeps updating it
//! (point reads from another task: p50, p99, max).
//!
//! Then q1 through the broker: the bids (of up to 2,000,000 events) as JSON records in a topic
//! of an in-process broker, read and decoded by the engine, converted, and written as JSON to
//! another topic. It runs twice, to say where the time goes: once into a counting sink (read +
//! decode + q1), once into the topic (+ encode + append); the CPU time of each is reported.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark: failing loudly is right.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use datafusion::prelude::{cast, col, lit};
use quiver_engine::dsl::StreamsBuilder;
use quiver_engine::nexmark::{self, BID, NexmarkConfig, NexmarkSource};
use quiver_engine::{CountSink, MemorySource, QueryOptions, Runtime};

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

/// The bids of `events` Nexmark events, as JSON records timestamped with their event time.
fn bid_records(events: u64) -> Vec<quiver_broker::Record> {
    let source = NexmarkSource::new(NexmarkConfig {
        events,
        ..NexmarkConfig::default()
    })
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let batches = rt.block_on(async {
        use quiver_engine::Source;
        let mut reader = source
            .open(quiver_broker::PartitionSplit::ALL)
            .await
            .unwrap();
        let mut out = Vec::new();
        loop {
            let poll = reader.poll(Duration::ZERO).await.unwrap();
            out.extend(poll.batches);
            if poll.finished {
                return out;
            }
        }
    });
    let mut records = Vec::new();
    for batch in batches {
        let is_bid = arrow::compute::kernels::cmp::eq(
            batch.column_by_name("event_type").unwrap(),
            &arrow::array::Int8Array::new_scalar(BID),
        )
        .unwrap();
        let bids = arrow::compute::filter_record_batch(&batch, &is_bid).unwrap();
        let columns = ["auction", "bidder", "price", "channel", "url"];
        let indices: Vec<usize> = columns
            .iter()
            .map(|c| bids.schema().index_of(c).unwrap())
            .collect();
        let values = bids.project(&indices).unwrap();
        let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
        writer.write(&values).unwrap();
        writer.finish().unwrap();
        let text = writer.into_inner();
        let times = bids
            .column_by_name("rowtime")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::TimestampMillisecondArray>()
            .unwrap()
            .clone();
        for (i, line) in text
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .enumerate()
        {
            records.push(quiver_broker::Record::new(times.value(i), None, Some(line)));
        }
    }
    records
}

/// q1 through an in-process broker (see the module docs).
fn q1_through_the_broker(rt: &tokio::runtime::Runtime, events: u64) {
    let events = events.min(2_000_000);
    let records = bid_records(events);
    let bids = records.len() as u64;
    let bytes: usize = records
        .iter()
        .map(|r| r.value.as_ref().map_or(0, |v| v.len()))
        .sum();
    let dir = tempfile::tempdir().unwrap();
    let broker = rt.block_on(async {
        let broker = quiver_broker::Broker::open(quiver_broker::BrokerConfig {
            data_dir: dir.path().to_owned(),
            ..quiver_broker::BrokerConfig::default()
        })
        .await
        .unwrap();
        for topic in ["bids", "q1"] {
            broker
                .create_topic(quiver_broker::NewTopic::new(topic, 2))
                .await
                .unwrap();
        }
        let load = Instant::now();
        for (i, chunk) in records.chunks(10_000).enumerate() {
            let mut envelope = quiver_broker::record::EnvelopeBuilder::default();
            for r in chunk {
                envelope.append_record(r);
            }
            broker
                .append(
                    "bids",
                    (i % 2) as i32,
                    &envelope.finish(),
                    quiver_broker::ProducerInfo::NONE,
                )
                .await
                .unwrap();
        }
        println!(
            "\nq1 through the broker: {bids} bids as JSON ({:.0} bytes each) loaded in {:.2} s",
            bytes as f64 / bids as f64,
            load.elapsed().as_secs_f64()
        );
        broker
    });
    println!(
        "{:<28} {:>14} {:>18} {:>10}",
        "run", "events/s", "events/s per core", "cpu s"
    );
    let mut cpu_of = Vec::new();
    for to_topic in [false, true] {
        let value = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("auction", arrow::datatypes::DataType::Int64, true),
            arrow::datatypes::Field::new("bidder", arrow::datatypes::DataType::Int64, true),
            arrow::datatypes::Field::new("price", arrow::datatypes::DataType::Int64, true),
            arrow::datatypes::Field::new("channel", arrow::datatypes::DataType::Utf8, true),
            arrow::datatypes::Field::new("url", arrow::datatypes::DataType::Utf8, true),
        ]));
        let builder = StreamsBuilder::with_broker(&broker).with_options(QueryOptions::default());
        let q1 = builder
            .topic(
                "bids",
                quiver_engine::Format::None,
                quiver_engine::Format::Json(value),
            )
            .unwrap()
            .select([
                col("auction"),
                col("bidder"),
                (cast(col("price"), arrow::datatypes::DataType::Float64) * lit(0.908))
                    .alias("price"),
                col("rowtime"),
            ])
            .unwrap();
        let sink = CountSink::new();
        if to_topic {
            q1.to_topic("q1", quiver_engine::TopicFormat::json())
                .unwrap();
        } else {
            q1.to_sink(Box::new(sink.clone()));
        }
        let topology = builder.build().unwrap();
        let (cpu0, wall0) = (cpu_time(), Instant::now());
        rt.block_on(async {
            let running = Runtime::new(&broker).run(topology).await.unwrap();
            loop {
                let out = running.metrics()[0].1.rows_out;
                if out >= bids {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            running.stop().await.unwrap();
        });
        let (cpu, wall) = (cpu_time() - cpu0, wall0.elapsed());
        cpu_of.push(cpu);
        let run = if to_topic {
            "topic -> q1 -> topic"
        } else {
            "topic -> q1 -> count"
        };
        println!(
            "{:<28} {:>14.0} {:>18.0} {:>10.2}",
            run,
            bids as f64 / wall.as_secs_f64(),
            bids as f64 / cpu.as_secs_f64(),
            cpu.as_secs_f64()
        );
    }
    let (decode, full) = (cpu_of[0], cpu_of[1]);
    println!(
        "where the time goes: read + JSON decode + q1 {:.0}% of the CPU, JSON encode + append \
         {:.0}%",
        100.0 * decode.as_secs_f64() / full.as_secs_f64(),
        100.0 * (full.as_secs_f64() - decode.as_secs_f64()).max(0.0) / full.as_secs_f64()
    );
    rt.block_on(broker.shutdown()).unwrap();
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
    // NEXMARK_QUERIES=q5,q11 runs only those (for a profile), and nothing else; `lookups` and
    // `broker` name the last two parts.
    let only: Option<Vec<String>> = std::env::var("NEXMARK_QUERIES")
        .ok()
        .map(|q| q.split(',').map(str::to_owned).collect());
    let runs = |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|q| q == name));
    for name in nexmark::QUERIES {
        if !runs(name) {
            continue;
        }
        let builder = StreamsBuilder::new().with_options(QueryOptions::default());
        let sink = CountSink::new();
        let config = NexmarkConfig {
            events,
            ..NexmarkConfig::default()
        };
        nexmark::query(name, &builder, config)
            .unwrap()
            .to_sink(Box::new(sink.clone()));
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
            sink.rows(),
            wall.as_secs_f64()
        );
    }
    if runs("lookups") {
        store_lookups(&rt);
    }
    if runs("broker") {
        q1_through_the_broker(&rt, events);
    }
}

/// Point lookups in a materialized table of 1,000,000 keys while the query goes on updating
/// it (see the module docs).
fn store_lookups(rt: &tokio::runtime::Runtime) {
    const KEYS: i64 = 1_000_000;
    const UPDATES: i64 = 4_000_000;
    let schema = Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("k", arrow::datatypes::DataType::Int64, false),
        arrow::datatypes::Field::new("v", arrow::datatypes::DataType::Int64, false),
        arrow::datatypes::Field::new(
            "rowtime",
            arrow::datatypes::DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None),
            false,
        ),
    ]));
    let batch = |from: i64, n: i64| {
        let keys: Vec<i64> = (from..from + n)
            .map(|i| (i.wrapping_mul(2_654_435_761)).rem_euclid(KEYS))
            .collect();
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(arrow::array::Int64Array::from(keys)),
                Arc::new(arrow::array::Int64Array::from_iter_values(from..from + n)),
                Arc::new(arrow::array::TimestampMillisecondArray::from_iter_values(
                    from..from + n,
                )),
            ],
        )
        .unwrap()
    };
    let batches = (0..(KEYS + UPDATES) / 8192)
        .map(|b| ((b % 4) as i32, batch(b * 8192, 8192)))
        .collect();
    let source = MemorySource::new(schema.clone(), batches).unwrap();
    let builder = StreamsBuilder::new();
    builder
        .stream("kv", Arc::new(source))
        .unwrap()
        .to_table(["k"])
        .unwrap()
        .materialize("kv")
        .unwrap()
        .to_stream()
        .to_sink(Box::new(CountSink::new()));
    let runtime = Runtime::without_broker();
    let (latencies, len) = rt.block_on(async {
        let running = runtime.run(builder.build().unwrap()).await.unwrap();
        let store = runtime.store("kv").unwrap();
        while store.len() < KEYS as usize / 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let reader = tokio::task::spawn_blocking(move || {
            let mut latencies = Vec::new();
            let mut x = 1u64;
            while latencies.len() < 200_000 {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let k = (x >> 33) as i64 % KEYS;
                let t = Instant::now();
                let row = store.get(&[datafusion::common::ScalarValue::Int64(Some(k))]);
                latencies.push(t.elapsed());
                assert!(row.is_ok());
            }
            (latencies, store.len())
        });
        let out = reader.await.unwrap();
        running.wait().await.unwrap();
        out
    });
    let mut sorted = latencies;
    sorted.sort_unstable();
    let pct = |p: f64| sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)];
    println!();
    println!(
        "table store lookups while ingesting ({len} keys at the end of the reads): p50 {:?}, \
         p99 {:?}, max {:?}",
        pct(0.50),
        pct(0.99),
        sorted[sorted.len() - 1]
    );
}
