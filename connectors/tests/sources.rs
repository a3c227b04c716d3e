//! The source connectors against the in-process broker: the data generator and the file
//! source write what they should, resume where they committed, and lose or duplicate nothing
//! when killed at any point; bad configs and bad lines are refused with the reason. The same
//! connectors through `quiver connect` against a server are in the root package's
//! `tests/connect.rs`.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use arrow::array::{Array, AsArray};
use common::{broker, connector, fence_source, start};
use quiver_broker::{Broker, PartitionSplit};
use quiver_connectors::{Connector, ConnectorConfig};
use quiver_engine::{Format, KafkaType, Source, StartFrom, TopicSource};
use serde_json::Value;

fn refused(text: &str) -> String {
    let config = match ConnectorConfig::from_properties(text, "test.properties") {
        Ok(c) => c,
        Err(e) => return e.to_string(),
    };
    Connector::from_config(config).unwrap_err().to_string()
}

/// What a `read_committed` consumer reads of `topic`: (partition, key, value, time) in offset order
/// per partition.
async fn committed(b: &Broker, topic: &str) -> Vec<(i32, Option<String>, String, i64)> {
    let source = TopicSource::new(
        b,
        topic,
        Format::kafka("key", KafkaType::String),
        Format::kafka("value", KafkaType::String),
    )
    .unwrap()
    .with_start(StartFrom::Earliest);
    let mut ends = BTreeMap::new();
    for p in 0..b.partition_count(topic).unwrap() {
        ends.insert(p, b.offsets(topic, p).unwrap().high_watermark);
    }
    let mut reader = source
        .open(PartitionSplit { index: 0, count: 1 })
        .await
        .unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let positions = reader.positions();
        if ends
            .iter()
            .all(|(p, end)| *end == 0 || positions.get(p).is_some_and(|at| at >= end))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{topic} read to its end"
        );
        for batch in reader
            .poll(Duration::from_millis(100))
            .await
            .unwrap()
            .batches
        {
            let keys = batch.column_by_name("key").unwrap().as_string::<i32>();
            let values = batch.column_by_name("value").unwrap().as_string::<i32>();
            let partitions = batch
                .column_by_name("rowpartition")
                .unwrap()
                .as_primitive::<arrow::datatypes::Int32Type>();
            let times = batch
                .column_by_name("rowtime")
                .unwrap()
                .as_primitive::<arrow::datatypes::TimestampMillisecondType>();
            for row in 0..batch.num_rows() {
                out.push((
                    partitions.value(row),
                    (!keys.is_null(row)).then(|| keys.value(row).to_owned()),
                    values.value(row).to_owned(),
                    times.value(row),
                ));
            }
        }
    }
    out
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

#[tokio::test]
async fn datagen_writes_its_fields_keyed_and_a_restart_continues_the_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let config = |iterations: u64| {
        format!(
            "name=gen\nconnector.class=DataGen\nkafka.topic=orders\n\
             fields=id:sequence(1); region:choice('eu','us'); amount:double(1,10,1); \
             code:string(4); ts:timestamp\n\
             key.field=id\niterations={iterations}\ntopic.creation.default.partitions=3\n\
             transaction.boundary.interval.ms=50\n"
        )
    };
    let started = quiver_broker::now_ms();
    start(&b, &connector(&config(500))).finished().await;
    let rows = committed(&b, "orders").await;
    assert_eq!(rows.len(), 500);
    assert_eq!(b.partition_count("orders").unwrap(), 3);
    let mut ids = Vec::new();
    for (partition, key, value, _) in &rows {
        let v = json(value);
        let id = v["id"].as_i64().unwrap();
        ids.push(id);
        assert_eq!(key.as_deref(), Some(id.to_string().as_str()));
        assert_eq!(
            *partition,
            quiver_common::partition_for_key(id.to_string().as_bytes(), 3),
            "records go to their key's partition"
        );
        assert!(["eu", "us"].contains(&v["region"].as_str().unwrap()));
        let amount = v["amount"].as_f64().unwrap();
        assert!((1.0..=10.0).contains(&amount));
        assert_eq!(v["code"].as_str().unwrap().len(), 4);
        assert!(v["ts"].as_i64().unwrap() >= started);
    }
    ids.sort();
    assert_eq!(ids, (1..=500).collect::<Vec<i64>>());

    // Same name, more iterations: it goes on from 501.
    start(&b, &connector(&config(800))).finished().await;
    let mut ids: Vec<i64> = committed(&b, "orders")
        .await
        .iter()
        .map(|(_, _, v, _)| json(v)["id"].as_i64().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, (1..=800).collect::<Vec<i64>>());
}

#[tokio::test]
async fn datagen_killed_at_any_point_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let config = |iterations: &str| {
        format!(
            "name=crashy\nconnector.class=DataGen\nkafka.topic=events\n\
             fields=id:sequence(0); n:int(1,6)\ntasks.max=2\niterations={iterations}\n\
             messages.per.second=20000\ntransaction.boundary.interval.ms=30\n\
             topic.creation.default.partitions=2\n"
        )
    };
    let waits = [70u64, 230, 15, 160, 310, 45];
    for wait in waits {
        let running = start(&b, &connector(&config("-1")));
        tokio::time::sleep(Duration::from_millis(wait)).await;
        running.kill().await;
    }
    fence_source(&b, "crashy", 2).await;
    let so_far = committed(&b, "events").await.len() as u64;
    assert!(so_far > 0, "some transactions committed before the kills");
    // Each task makes `iterations` records in all; ids are task + 2 × its record number.
    let iterations = so_far + 500;
    start(&b, &connector(&config(&iterations.to_string())))
        .finished()
        .await;
    let mut ids: Vec<u64> = committed(&b, "events")
        .await
        .iter()
        .map(|(_, _, v, _)| json(v)["id"].as_u64().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, (0..2 * iterations).collect::<Vec<u64>>());
}

#[tokio::test]
async fn nexmark_preset_writes_events_in_its_proportions_with_event_time() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let before = quiver_broker::now_ms();
    start(
        &b,
        &connector(
            "name=nex\nconnector.class=io.confluent.kafka.connect.datagen.DatagenConnector\n\
             kafka.topic=nexmark\nquickstart=nexmark\niterations=5000\n",
        ),
    )
    .finished()
    .await;
    let rows = committed(&b, "nexmark").await;
    assert_eq!(rows.len(), 5000);
    let mut kinds = BTreeMap::new();
    for (_, _, v, _) in &rows {
        let v = json(v);
        *kinds.entry(v["event_type"].as_i64().unwrap()).or_insert(0) += 1;
        if v["event_type"] == 2 {
            assert!(v["auction"].as_i64().unwrap() >= 1000);
            assert!(v["price"].as_i64().unwrap() > 0);
        }
    }
    assert_eq!(kinds, BTreeMap::from([(0, 100), (1, 300), (2, 4600)]));
    // Event time counts from the connector's start, 10 µs apart.
    let first = rows.iter().map(|r| r.3).min().unwrap();
    let last = rows.iter().map(|r| r.3).max().unwrap();
    assert!(first >= before && first <= quiver_broker::now_ms());
    assert_eq!(last - first, 4999 * 10 / 1000);
}

fn write_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

#[tokio::test]
async fn file_source_follows_growing_and_new_files_and_resumes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(&dir.path().join("data")).await;
    let files = dir.path().join("in");
    std::fs::create_dir(&files).unwrap();
    let a = files.join("a.json");
    write_file(
        &a,
        "{\"user\": \"ann\", \"n\": 1}\n\n{\"user\": \"bob\", \"n\": 2}\n",
    );
    let config = connector(&format!(
        "name=tail\nconnector.class=FileStreamSource\nfile={}/*.json\ntopic=events\n\
         format=json\nkey.field=user\nfollow=true\nfile.poll.interval.ms=50\n\
         transaction.boundary.interval.ms=50\n",
        files.display()
    ));
    let running = start(&b, &config);
    running.wait_records(2).await;
    // A line written in two pieces is one record, once its line break is there.
    append(&a, "{\"user\": \"cy\",");
    tokio::time::sleep(Duration::from_millis(300)).await;
    append(&a, " \"n\": 3}\n");
    write_file(&files.join("b.json"), "{\"user\": \"dee\", \"n\": 4}\n");
    write_file(&files.join("ignored.txt"), "not json\n");
    running.wait_records(4).await;
    running.stop().await;

    append(&a, "{\"user\": \"eve\", \"n\": 5}\n");
    let running = start(&b, &config);
    running.wait_records(1).await;
    running.stop().await;

    let rows = committed(&b, "events").await;
    let mut seen: Vec<(String, i64)> = rows
        .iter()
        .map(|(_, k, v, _)| (k.clone().unwrap(), json(v)["n"].as_i64().unwrap()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("ann".into(), 1),
            ("bob".into(), 2),
            ("cy".into(), 3),
            ("dee".into(), 4),
            ("eve".into(), 5)
        ]
    );
}

#[tokio::test]
async fn file_source_killed_at_any_point_keeps_every_line_once_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(&dir.path().join("data")).await;
    let file = dir.path().join("big.log");
    let lines: Vec<String> = (0..200_000)
        .map(|i| format!("line {i:06} of the log"))
        .collect();
    write_file(&file, &(lines.join("\n") + "\n"));
    let config = |follow: bool| {
        connector(&format!(
            "name=log\nconnector.class=FileSource\nfile={}\ntopic=log\nbatch.size=20\n\
             follow={follow}\ntransaction.boundary.interval.ms=5\n",
            file.display()
        ))
    };
    for wait in [40u64, 5, 120, 75, 20] {
        let running = start(&b, &config(true));
        tokio::time::sleep(Duration::from_millis(wait)).await;
        running.kill().await;
    }
    fence_source(&b, "log", 1).await;
    let so_far = committed(&b, "log").await.len();
    eprintln!("{so_far} lines committed before the last run");
    assert!(so_far < lines.len(), "the kills came before the end");
    start(&b, &config(false)).finished().await;
    let values: Vec<String> = committed(&b, "log")
        .await
        .into_iter()
        .map(|(_, _, v, _)| v)
        .collect();
    assert_eq!(values.len(), lines.len(), "{so_far} before the last run");
    assert_eq!(values, lines);
}

#[tokio::test]
async fn csv_rows_become_typed_json_and_bad_lines_stop_the_connector_unless_tolerated() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(&dir.path().join("data")).await;
    let csv = dir.path().join("rates.csv");
    write_file(
        &csv,
        "code;rate;note\r\n007;1.25;\"a; b\"\r\nEUR;2;\r\nUSD;-3;x\r\nGBP;4;", // no final break
    );
    start(
        &b,
        &connector(&format!(
            "name=csv\nconnector.class=FileSource\nfile={}\ntopic=rates\nformat=csv\n\
             csv.delimiter=;\nkey.field=code\n",
            csv.display()
        )),
    )
    .finished()
    .await;
    let rows = committed(&b, "rates").await;
    let values: Vec<(Option<String>, Value)> = rows
        .iter()
        .map(|(_, k, v, _)| (k.clone(), json(v)))
        .collect();
    let expected = [
        ("007", r#"{"code": "007", "rate": 1.25, "note": "a; b"}"#),
        ("EUR", r#"{"code": "EUR", "rate": 2, "note": null}"#),
        ("USD", r#"{"code": "USD", "rate": -3, "note": "x"}"#),
        ("GBP", r#"{"code": "GBP", "rate": 4, "note": null}"#),
    ];
    assert_eq!(
        values,
        expected
            .iter()
            .map(|(k, v)| (Some(k.to_string()), json(v)))
            .collect::<Vec<_>>()
    );

    let bad = dir.path().join("bad.json");
    write_file(&bad, "{\"n\": 1}\n[1, 2]\n{\"n\": 3\n{\"n\": 4}\n");
    let text = |tolerance: &str| {
        format!(
            "name=bad-{tolerance}\nconnector.class=FileSource\nfile={}\ntopic=bad-{tolerance}\n\
             format=json\nerrors.tolerance={tolerance}\n",
            bad.display()
        )
    };
    let running = start(&b, &connector(&text("none")));
    let e = running.task.await.unwrap().unwrap_err().to_string();
    assert!(e.contains("bad.json:2: not a JSON object"), "{e}");
    assert!(e.contains("errors.tolerance=all"), "{e}");
    start(&b, &connector(&text("all"))).finished().await;
    let values: Vec<String> = committed(&b, "bad-all")
        .await
        .into_iter()
        .map(|(_, _, v, _)| v)
        .collect();
    assert_eq!(values, vec!["{\"n\": 1}", "{\"n\": 4}"]);
}

#[test]
fn bad_source_configs_name_the_problem() {
    for (text, says) in [
        (
            "name=g\nconnector.class=DataGen\nkafka.topic=t\nfields=id:uuid\nrate=5\n",
            "unknown key 'rate'",
        ),
        (
            "name=g\nconnector.class=DataGen\nfields=id:uuid\n",
            "'kafka.topic' is missing",
        ),
        (
            "name=g\nconnector.class=DataGen\nkafka.topic=t\n",
            "needs fields",
        ),
        (
            "name=g\nconnector.class=DataGen\nkafka.topic=t\nfields=id:uuid\nquickstart=users\n",
            "either quickstart or fields",
        ),
        (
            "name=g\nconnector.class=DataGen\nkafka.topic=t\nquickstart=clicks\n",
            "nexmark, users, pageviews or orders",
        ),
        (
            "name=g\nconnector.class=DataGen\nkafka.topic=t\nfields=id:sequence(1,2,3)\n",
            "sequence takes at most 2 arguments",
        ),
        (
            "name=g\nconnector.class=DataGen\nkafka.topic=t\nfields=id:uuid\nkey.field=user\n",
            "one of the fields: id",
        ),
        (
            "name=g\nconnector.class=DataGen\nkafka.topic=t\nfields=id:uuid\n\
             messages.per.second=-4\n",
            "a number above 0",
        ),
        (
            "name=f\nconnector.class=FileSource\nfile=/tmp/x\n",
            "'topic' is missing",
        ),
        (
            "name=f\nconnector.class=FileSource\nfile=/tmp/x\ntopic=t\n\
             transaction.boundary.interval.ms=600000\n",
            "at most 300000",
        ),
        (
            "name=f\nconnector.class=FileSource\nfile=/tmp/x\ntopic=t\nkey.field=a\n",
            "needs format=json or format=csv",
        ),
        (
            "name=f\nconnector.class=FileSource\nfile=/tmp/x\ntopic=t\nformat=xml\n",
            "one of lines, json, csv",
        ),
        (
            "name=f\nconnector.class=FileSource\nfile=/tmp/[x\ntopic=t\n",
            "a path or glob",
        ),
    ] {
        let e = refused(text);
        assert!(e.contains(says), "{text}\n-> {e}");
    }
}

#[tokio::test]
async fn a_file_source_without_files_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let running = start(
        &b,
        &connector(&format!(
            "name=none\nconnector.class=FileSource\nfile={}/nothing-*.csv\ntopic=t\n",
            dir.path().display()
        )),
    );
    let e = running.task.await.unwrap().unwrap_err().to_string();
    assert!(e.contains("no file matches"), "{e}");
    assert!(e.contains("follow=true"), "{e}");
}
