//! Queries between topics of an in-process broker: JSON records decoded from a topic, a
//! windowed count written to another topic, bad records sent to a dead-letter topic, late
//! records to a late-data topic, and a graceful stop.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::{col, lit};
use quiver_broker::{Broker, BrokerConfig, NewTopic, Record, batch_to_records};
use quiver_engine::dsl::StreamsBuilder;
use quiver_engine::{
    Collector, Format, KafkaType, QueryOptions, Runtime, TopicFormat, WindowKind, WindowSpec,
};

async fn broker(dir: &std::path::Path) -> Broker {
    let config = BrokerConfig {
        data_dir: dir.to_owned(),
        ..BrokerConfig::default()
    };
    Broker::open(config).await.expect("open the broker")
}

async fn create(b: &Broker, topic: &str, partitions: i32) {
    b.create_topic(NewTopic::new(topic, partitions))
        .await
        .expect("create topic");
}

/// Every record of a topic (all partitions), read up to the high watermark.
fn read_all(b: &Broker, topic: &str) -> Vec<Record> {
    let mut out = Vec::new();
    for p in 0..b.partition_count(topic).unwrap() {
        let mut offset = 0;
        loop {
            let read = b.read(topic, p, offset, 1 << 20).unwrap();
            if read.batches.is_empty() {
                break;
            }
            for batch in &read.batches {
                out.extend(batch_to_records(&batch.records).unwrap());
            }
            offset = read.next_offset;
        }
    }
    out
}

async fn wait_for_records(b: &Broker, topic: &str, n: usize) -> Vec<Record> {
    for _ in 0..200 {
        let records = read_all(b, topic);
        if records.len() >= n {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    read_all(b, topic)
}

fn view(user: &str, page: &str, time: i64) -> Record {
    let value = format!(r#"{{"user": "{user}", "page": "{page}"}}"#);
    Record::new(time, Some(user.as_bytes()), Some(value.as_bytes()))
}

#[tokio::test]
async fn a_windowed_count_from_json_records_lands_in_a_topic_with_bad_and_late_records_routed() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    for (t, p) in [("views", 2), ("counts", 2), ("bad", 1), ("late", 1)] {
        create(&b, t, p).await;
    }
    let value = Arc::new(Schema::new(vec![
        Field::new("user", DataType::Utf8, false),
        Field::new("page", DataType::Utf8, true),
    ]));
    let t0 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    // Window [t0, t0+10s) for alice (3) and bob (1); one bad record; then time moves to close
    // the first window, and a record for it arrives late.
    b.produce(
        "views",
        &[
            view("alice", "/", t0),
            view("alice", "/a", t0 + 1_000),
            view("bob", "/", t0 + 2_000),
            view("alice", "/b", t0 + 9_999),
        ],
    )
    .await
    .unwrap();
    b.produce(
        "views",
        &[Record::new(t0 + 3_000, Some(b"bob"), Some(b"{not json"))],
    )
    .await
    .unwrap();

    let builder = StreamsBuilder::with_broker(&b).with_options(QueryOptions {
        dead_letter_topic: Some("bad".into()),
        late_data_topic: Some("late".into()),
        ..QueryOptions::default()
    });
    let views = builder
        .topic("views", Format::None, Format::json(value))
        .unwrap();
    let collector = Collector::new();
    let counts = views
        .filter(col("page").is_not_null())
        .unwrap()
        .group_by([col("user")])
        .unwrap()
        .window(WindowSpec {
            kind: WindowKind::Tumbling { size_ms: 10_000 },
            grace_ms: 0,
        })
        .unwrap()
        .emit_final()
        .count()
        .unwrap();
    counts
        .to_stream()
        .to_topic("counts", TopicFormat::keyed(["user"]))
        .unwrap();
    counts.to_stream().to_collector(&collector);
    let topology = builder.build().unwrap();
    let described = topology.describe();
    assert!(described.contains("window_aggregate"), "{described}");
    assert!(described.contains("topic 'counts'"), "{described}");
    let running = Runtime::new(&b).run(topology).await.unwrap();

    // Both partitions must pass the window's end before it closes (the watermark is the
    // minimum over partitions): send records past it to each.
    let mut later = Vec::new();
    for user in ["alice", "bob", "carol", "dave"] {
        later.push(view(user, "/later", t0 + 20_000));
    }
    b.produce("views", &later).await.unwrap();
    assert_eq!(collector.wait_for_rows(2, Duration::from_secs(10)).await, 2);
    b.produce("views", &[view("bob", "/too-late", t0 + 5_000)])
        .await
        .unwrap();

    let counts = wait_for_records(&b, "counts", 2).await;
    let mut got: Vec<(String, String, i64)> = counts
        .iter()
        .map(|r| {
            (
                String::from_utf8(r.key.clone().unwrap().to_vec()).unwrap(),
                String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap(),
                r.timestamp_ms,
            )
        })
        .collect();
    got.sort();
    let start = "2026-01-01T00:00:00";
    let end = "2026-01-01T00:00:10";
    assert_eq!(
        got,
        [
            (
                "alice".to_string(),
                format!(r#"{{"window_start":"{start}","window_end":"{end}","count":3}}"#),
                t0 + 9_999
            ),
            (
                "bob".to_string(),
                format!(r#"{{"window_start":"{start}","window_end":"{end}","count":1}}"#),
                t0 + 9_999
            ),
        ]
    );

    let bad = wait_for_records(&b, "bad", 1).await;
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].value.as_deref(), Some(&b"{not json"[..]));
    let reason = bad[0]
        .headers
        .iter()
        .find(|h| h.key == "quiver.error.reason")
        .unwrap();
    assert!(
        String::from_utf8_lossy(reason.value.as_deref().unwrap()).contains("not valid JSON"),
        "{reason:?}"
    );

    let late = wait_for_records(&b, "late", 1).await;
    assert_eq!(late.len(), 1);
    let late_value = String::from_utf8(late[0].value.clone().unwrap().to_vec()).unwrap();
    // The columns the aggregation reads: its key and the event time.
    assert_eq!(
        late_value,
        r#"{"user":"bob","rowtime":"2026-01-01T00:00:05"}"#
    );
    let reason = late[0]
        .headers
        .iter()
        .find(|h| h.key == "quiver.late.reason")
        .unwrap();
    assert!(
        String::from_utf8_lossy(reason.value.as_deref().unwrap()).contains("grace period (0 ms)"),
        "{reason:?}"
    );

    let metrics = running.stop().await.unwrap();
    let m = &metrics[0];
    assert_eq!(m.bad_records, 1);
    assert_eq!(m.late_rows, 1);
    assert_eq!(m.records_in, 9);
}

#[tokio::test]
async fn a_word_count_table_updates_per_batch_and_is_written_keyed_by_word() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    create(&b, "lines", 1).await;
    create(&b, "word-counts", 3).await;
    let builder = StreamsBuilder::with_broker(&b);
    let lines = builder
        .topic(
            "lines",
            Format::None,
            Format::kafka("line", KafkaType::String),
        )
        .unwrap();
    let words_schema = Arc::new(Schema::new(vec![Field::new("word", DataType::Utf8, false)]));
    let words = lines
        .map_batches("split_words", words_schema.clone(), move |batch| {
            let lines = arrow::array::AsArray::as_string::<i32>(batch.column(0));
            let words: arrow::array::StringArray = lines
                .iter()
                .flatten()
                .flat_map(|l| {
                    l.split_whitespace()
                        .map(str::to_lowercase)
                        .collect::<Vec<_>>()
                })
                .map(Some)
                .collect();
            Ok(arrow::array::RecordBatch::try_new(
                words_schema.clone(),
                vec![Arc::new(words)],
            )?)
        })
        .unwrap();
    words
        .filter(col("word").not_eq(lit("the")))
        .unwrap()
        .group_by([col("word")])
        .unwrap()
        .count()
        .unwrap()
        .to_stream()
        .to_topic("word-counts", TopicFormat::keyed(["word"]))
        .unwrap();
    let running = Runtime::new(&b)
        .run(builder.build().unwrap())
        .await
        .unwrap();
    b.produce(
        "lines",
        &[Record::new(1, None, Some(b"The cat and the hat"))],
    )
    .await
    .unwrap();
    wait_for_records(&b, "word-counts", 3).await;
    b.produce("lines", &[Record::new(2, None, Some(b"a cat"))])
        .await
        .unwrap();
    let records = wait_for_records(&b, "word-counts", 5).await;
    running.stop().await.unwrap();

    // The last value per key is the count; "cat" was updated once per batch it appeared in.
    let mut last = std::collections::BTreeMap::new();
    let mut cat_updates = 0;
    for r in &records {
        let word = String::from_utf8(r.key.clone().unwrap().to_vec()).unwrap();
        if word == "cat" {
            cat_updates += 1;
        }
        last.insert(
            word,
            String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap(),
        );
    }
    assert_eq!(cat_updates, 2);
    let want: std::collections::BTreeMap<String, String> =
        [("a", 1), ("and", 1), ("cat", 2), ("hat", 1)]
            .into_iter()
            .map(|(w, n)| (w.to_string(), format!(r#"{{"count":{n}}}"#)))
            .collect();
    assert_eq!(last, want);
}

#[tokio::test]
async fn unsupported_plans_and_unknown_topics_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let builder = StreamsBuilder::with_broker(&b);
    let err = builder
        .topic(
            "missing",
            Format::None,
            Format::kafka("v", KafkaType::Bytes),
        )
        .unwrap_err();
    assert!(err.to_string().contains("unknown topic 'missing'"), "{err}");

    create(&b, "t", 1).await;
    let s = builder
        .topic("t", Format::None, Format::kafka("v", KafkaType::String))
        .unwrap();
    let sorted = datafusion::logical_expr::LogicalPlanBuilder::from(s.plan().clone())
        .sort(vec![col("v").sort(true, false)])
        .unwrap()
        .build()
        .unwrap();
    let err = quiver_engine::plan::plan_query(&sorted, Default::default()).unwrap_err();
    assert!(
        err.to_string().contains("ORDER BY cannot run on a stream"),
        "{err}"
    );

    let err = s
        .group_by([col("v")])
        .unwrap()
        .window(WindowSpec {
            kind: WindowKind::Hopping {
                size_ms: 10,
                advance_ms: 3,
            },
            grace_ms: 0,
        })
        .unwrap_err();
    assert!(err.to_string().contains("multiple of its advance"), "{err}");
    let err = builder.build().unwrap_err();
    assert!(err.to_string().contains("no sinks"), "{err}");

    s.group_by([col("v")])
        .unwrap()
        .window(WindowSpec {
            kind: WindowKind::Session { gap_ms: 10 },
            grace_ms: 0,
        })
        .unwrap()
        .count()
        .unwrap()
        .to_stream()
        .to_collector(&Collector::new());
    let err = builder.build().unwrap_err();
    assert!(err.to_string().contains("EMIT FINAL"), "{err}");
}

#[tokio::test]
async fn with_wall_clock_advance_a_window_on_a_quiet_topic_still_closes() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    create(&b, "quiet", 2).await;
    let value = Arc::new(Schema::new(vec![
        Field::new("user", DataType::Utf8, false),
        Field::new("page", DataType::Utf8, true),
    ]));
    let source = quiver_engine::TopicSource::new(&b, "quiet", Format::None, Format::json(value))
        .unwrap()
        .with_idle_timeout(Duration::from_millis(200))
        .with_wall_clock_advance(Duration::ZERO);
    let builder = StreamsBuilder::with_broker(&b);
    let collector = Collector::new();
    builder
        .stream("quiet", Arc::new(source))
        .unwrap()
        .group_by([col("user")])
        .unwrap()
        .window(WindowSpec {
            kind: WindowKind::Tumbling { size_ms: 500 },
            grace_ms: 0,
        })
        .unwrap()
        .emit_final()
        .count()
        .unwrap()
        .to_stream()
        .to_collector(&collector);
    let running = Runtime::new(&b)
        .run(builder.build().unwrap())
        .await
        .unwrap();
    let now = quiver_broker::now_ms();
    b.produce("quiet", &[view("ann", "/", now), view("ann", "/x", now)])
        .await
        .unwrap();
    // Nothing else arrives: only the wall clock can close the window.
    assert_eq!(collector.wait_for_rows(1, Duration::from_secs(10)).await, 1);
    running.stop().await.unwrap();
    let batch = &collector.batches()[0];
    let count = batch
        .column(3)
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap();
    assert_eq!(count.value(0), 2);
}

/// A stop used to fail now and then with "a downstream task of the query has gone": after the
/// stop barrier, a source task that had nothing to read closed, the merged watermark of the
/// aggregation's task moved, and the task sent it on to a sink task that had already ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopping_a_query_whose_source_tasks_end_unevenly_always_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    create(&b, "views", 1).await;
    for round in 0..20 {
        let collector = Collector::new();
        let builder = StreamsBuilder::with_broker(&b).with_options(QueryOptions {
            parallelism: 3,
            poll_wait: Duration::from_millis(5),
            ..QueryOptions::default()
        });
        builder
            .topic(
                "views",
                Format::None,
                Format::json(Arc::new(Schema::new(vec![
                    Field::new("user", DataType::Utf8, false),
                    Field::new("page", DataType::Utf8, false),
                ]))),
            )
            .unwrap()
            .group_by([col("user")])
            .unwrap()
            .count()
            .unwrap()
            .to_stream()
            .to_collector(&collector);
        let running = Runtime::new(&b)
            .run(builder.build().unwrap())
            .await
            .unwrap();
        b.produce("views", &[view("ann", "/", 1000 + round)])
            .await
            .unwrap();
        for _ in 0..200 {
            if running
                .metrics()
                .iter()
                .all(|(_, m)| m.records_in == round as u64 + 1)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let metrics = running.stop().await;
        assert!(metrics.is_ok(), "round {round}: {metrics:?}");
    }
}
