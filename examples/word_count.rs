//! Word count: lines of text in a topic become a table of counts per word, printed as it
//! updates and written to a topic keyed by word (as Kafka Streams' WordCountDemo does).
//!
//! Runs against an embedded broker in a temporary directory, with its own sample lines:
//!
//! ```text
//! cargo run --example word_count
//! ```

use std::sync::Arc;
use std::time::Duration;

use quiver::broker::{Broker, BrokerConfig, NewTopic, Record};
use quiver::engine::arrow::array::{AsArray, RecordBatch, StringArray};
use quiver::engine::arrow::datatypes::{DataType, Field, Schema};
use quiver::engine::prelude::*;

const LINES: &[&str] = &[
    "all streams flow to the sea",
    "yet the sea is not full",
    "to the place the streams come from",
    "there they return again",
];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let broker = Broker::open(BrokerConfig {
        data_dir: dir.path().to_owned(),
        ..BrokerConfig::default()
    })
    .await?;
    broker.create_topic(NewTopic::new("lines", 1)).await?;
    broker.create_topic(NewTopic::new("word-counts", 3)).await?;

    // lines (a string per record) -> words -> count per word
    let builder = StreamsBuilder::with_broker(&broker);
    let lines = builder.topic(
        "lines",
        Format::None,
        Format::kafka("line", KafkaType::String),
    )?;
    let word_schema = Arc::new(Schema::new(vec![Field::new("word", DataType::Utf8, false)]));
    let out_schema = word_schema.clone();
    let words = lines.map_batches("split_into_words", word_schema, move |batch| {
        let lines = batch.column(0).as_string::<i32>();
        let words: StringArray = lines
            .iter()
            .flatten()
            .flat_map(|line| {
                line.split_whitespace()
                    .map(str::to_lowercase)
                    .collect::<Vec<_>>()
            })
            .map(Some)
            .collect();
        Ok(RecordBatch::try_new(
            out_schema.clone(),
            vec![Arc::new(words)],
        )?)
    })?;
    let counts = words.group_by([col("word")])?.count()?;
    counts.to_stream().print("word-counts");
    counts
        .to_stream()
        .to_topic("word-counts", TopicFormat::keyed(["word"]))?;

    let topology = builder.build()?;
    println!("{}", topology.describe());
    let running = Runtime::new(&broker).run(topology).await?;

    for line in LINES {
        broker
            .produce(
                "lines",
                &[Record::new(
                    quiver::broker::now_ms(),
                    None,
                    Some(line.as_bytes()),
                )],
            )
            .await?;
    }
    // Wait until the query has read every line, then stop it.
    for _ in 0..200 {
        if running
            .metrics()
            .iter()
            .all(|(_, m)| m.records_in == LINES.len() as u64)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let metrics = running.stop().await?;
    println!(
        "done: {} lines read, {} updates written",
        metrics[0].records_in, metrics[0].rows_out
    );
    broker.shutdown().await?;
    Ok(())
}
