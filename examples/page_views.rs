//! Page views per user in one-minute tumbling windows, emitted once per window when it closes
//! (EMIT FINAL), with records that arrive after their window closed sent to a late-data topic.
//!
//! Runs against an embedded broker in a temporary directory, with its own sample views:
//!
//! ```text
//! cargo run --example page_views
//! ```
//!
//! Event time is the record timestamp. Windows close when event time (the watermark: the
//! largest timestamp seen) passes their end plus the grace period, so the sample ends with a
//! view far enough ahead to close the last window.

use std::sync::Arc;
use std::time::Duration;

use quiver::broker::{Broker, BrokerConfig, NewTopic, Record, batch_to_records};
use quiver::engine::arrow::datatypes::{DataType, Field, Schema};
use quiver::engine::prelude::*;

const MINUTE: i64 = 60_000;

fn view(user: &str, page: &str, at_ms: i64) -> Record {
    let json = format!(r#"{{"user":"{user}","page":"{page}"}}"#);
    Record::new(at_ms, Some(user.as_bytes()), Some(json.as_bytes()))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let broker = Broker::open(BrokerConfig {
        data_dir: dir.path().to_owned(),
        ..BrokerConfig::default()
    })
    .await?;
    for topic in ["pageviews", "pageviews-per-user", "pageviews-late"] {
        broker.create_topic(NewTopic::new(topic, 1)).await?;
    }

    let value = Arc::new(Schema::new(vec![
        Field::new("user", DataType::Utf8, false),
        Field::new("page", DataType::Utf8, false),
    ]));
    let builder = StreamsBuilder::with_broker(&broker).with_options(QueryOptions {
        late_data_topic: Some("pageviews-late".into()),
        ..QueryOptions::default()
    });
    let views = builder.topic("pageviews", Format::None, Format::json(value))?;
    let per_user = views
        .group_by([col("user")])?
        .window(WindowSpec {
            kind: WindowKind::Tumbling { size_ms: MINUTE },
            grace_ms: 5_000,
        })?
        .emit_final()
        .aggregate([count(lit(1)).alias("views")])?;
    per_user
        .to_stream()
        .to_topic("pageviews-per-user", TopicFormat::keyed(["user"]))?;
    let running = Runtime::new(&broker).run(builder.build()?).await?;

    let t0 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    let sample = vec![
        view("alice", "/home", t0 + 1_000),
        view("bob", "/home", t0 + 2_000),
        view("alice", "/cart", t0 + 30_000),
        view("alice", "/pay", t0 + MINUTE + 1_000),
        view("bob", "/home", t0 + MINUTE + 2_000),
        // Out of order but within the grace period of the first window: counted.
        view("bob", "/faq", t0 + 50_000),
        view("carol", "/home", t0 + 2 * MINUTE + 10_000),
        // Past the first window's end plus grace: late.
        view("alice", "/late", t0 + 10_000),
        // Moves event time past the last window so it closes.
        view("dave", "/home", t0 + 4 * MINUTE),
    ];
    for v in &sample {
        broker.produce("pageviews", std::slice::from_ref(v)).await?;
        // One record per poll, so the order above is the order the query sees.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    for _ in 0..200 {
        if running.metrics()[0].1.records_in == sample.len() as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let metrics = running.stop().await?;

    println!("views per user and minute:");
    for record in read_topic(&broker, "pageviews-per-user")? {
        println!(
            "  {} {}",
            String::from_utf8_lossy(record.key.as_deref().unwrap_or_default()),
            String::from_utf8_lossy(record.value.as_deref().unwrap_or_default())
        );
    }
    println!("late views:");
    for record in read_topic(&broker, "pageviews-late")? {
        println!(
            "  {}",
            String::from_utf8_lossy(record.value.as_deref().unwrap_or_default())
        );
    }
    println!("late rows counted: {}", metrics[0].late_rows);
    broker.shutdown().await?;
    Ok(())
}

fn read_topic(broker: &Broker, topic: &str) -> Result<Vec<Record>, Box<dyn std::error::Error>> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let read = broker.read(topic, 0, offset, 1 << 20)?;
        if read.batches.is_empty() {
            return Ok(out);
        }
        for b in &read.batches {
            out.extend(batch_to_records(&b.records)?);
        }
        offset = read.next_offset;
    }
}
