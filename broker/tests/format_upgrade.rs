//! A data directory written by the first frame format (every batch a plain Arrow IPC message;
//! made by the broker before small batches and compression at rest) opens and serves
//! unchanged, and takes new batches in the new forms beside the old ones.
//!
//! `tests/data/format-v1` was made by that broker with kafka-python: topic `orders` (2
//! partitions): five one-record batches with keys and headers in partition 0, one batch of 300
//! records and a tombstone in partition 1; group `billing` committed 3 and 100.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::path::Path;

use quiver_broker::broker::ConfigChange;
use quiver_broker::{
    Broker, BrokerConfig, NewTopic, ProducerInfo, Record, batch_to_records, records_to_batch,
};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

async fn open(dir: &Path) -> Broker {
    Broker::open(BrokerConfig {
        data_dir: dir.to_owned(),
        ..BrokerConfig::default()
    })
    .await
    .unwrap()
}

fn read_all(broker: &Broker, partition: i32) -> Vec<Record> {
    read_topic(broker, "orders", partition)
}

fn read_topic(broker: &Broker, topic: &str, partition: i32) -> Vec<Record> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let read = broker.read(topic, partition, offset, 1 << 20).unwrap();
        for b in &read.batches {
            out.extend(batch_to_records(&b.records).unwrap());
        }
        if read.next_offset == offset {
            return out;
        }
        offset = read.next_offset;
    }
}

/// A copy of the data directory `tests/data/<name>`, at `data` inside the returned directory.
fn fixture(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name),
        &data,
    );
    (dir, data)
}

fn at(offset: i64, mut record: Record) -> Record {
    record.offset = offset;
    record
}

fn expected_partition_0() -> Vec<Record> {
    (0..5)
        .map(|i| {
            let value = format!("order {i}");
            let record = Record::new(
                1_700_000_000_000 + i,
                Some(format!("k{i}").as_bytes()),
                Some(value.as_bytes()),
            )
            .with_header("h", Some(format!("x{i}").as_bytes()));
            at(i, record)
        })
        .collect()
}

fn expected_partition_1() -> Vec<Record> {
    let mut rows: Vec<Record> = (5..305)
        .map(|i| {
            let value = format!("order {i} ").repeat(3);
            let record = Record::new(
                1_700_000_000_000 + i,
                Some(format!("k{i}").as_bytes()),
                Some(value.as_bytes()),
            );
            at(i - 5, record)
        })
        .collect();
    rows.push(at(300, Record::new(1_700_000_001_000, Some(b"gone"), None)));
    rows
}

#[tokio::test]
async fn a_data_directory_of_the_first_format_is_served_and_extended() {
    let (_dir, data) = fixture("format-v1");
    let broker = open(&data).await;
    assert_eq!(read_all(&broker, 0), expected_partition_0());
    assert_eq!(read_all(&broker, 1), expected_partition_1());
    let committed = broker.groups().fetch_offsets("billing", None, false);
    let mut committed: Vec<(String, i32, i64)> = committed
        .into_iter()
        .filter_map(|(t, p, o)| o.map(|o| (t, p, o.offset)))
        .collect();
    committed.sort();
    assert_eq!(
        committed,
        vec![("orders".into(), 0, 3), ("orders".into(), 1, 100)]
    );

    // New batches in the new forms (a small one, a compressed one) follow the old frames.
    let small = [Record::new(1_750_000_000_000, Some(b"new"), Some(b"small"))];
    let appended = broker
        .append("orders", 0, &records_to_batch(&small), ProducerInfo::NONE)
        .await
        .unwrap();
    assert_eq!(appended.base_offset, 5);
    broker
        .alter_topic_config(
            "orders",
            &[ConfigChange::Set("compression.type".into(), "zstd".into())],
        )
        .await
        .unwrap();
    let big: Vec<Record> = (0..50)
        .map(|i| Record::new(1_750_000_000_001 + i, None, Some(b"compressed value")))
        .collect();
    broker
        .append("orders", 0, &records_to_batch(&big), ProducerInfo::NONE)
        .await
        .unwrap();
    broker.shutdown().await.unwrap();
    drop(broker); // releases the data directory

    let broker = open(&data).await;
    let mut expected = expected_partition_0();
    expected.push(at(5, small[0].clone()));
    expected.extend(
        big.iter()
            .cloned()
            .enumerate()
            .map(|(i, r)| at(6 + i as i64, r)),
    );
    assert_eq!(read_all(&broker, 0), expected);
    assert_eq!(read_all(&broker, 1), expected_partition_1());
    broker
        .create_topic(NewTopic::new("after", 1))
        .await
        .unwrap();
    broker.shutdown().await.unwrap();
}

/// `tests/data/format-v2` was made by the broker of the second format (small batches in Kafka's
/// record encoding, compression at rest, offsets stored as they are) with kafka-python: topic
/// `orders` (2 partitions) holds five one-record batches with keys and headers in partition 0
/// (small-batch frames), one record and then a batch of 300 in partition 1 (an Arrow frame at
/// offset 1); topic `zipped` (`compression.type=zstd`) holds one record and then a gzip batch
/// of 100 from the producer (compressed frames, the second at offset 1). Frames written now
/// hold offsets relative to their base, so an old frame read as a new one would shift them.
fn expected_v2(topic: &str, partition: i32) -> Vec<Record> {
    const T: i64 = 1_700_000_000_000;
    match (topic, partition) {
        ("orders", 0) => expected_partition_0(),
        ("orders", 1) => std::iter::once(Record::new(T, Some(b"first"), Some(b"alone")))
            .chain((1..301).map(|i| {
                let value = format!("order {i} ").repeat(3);
                Record::new(
                    T + i,
                    Some(format!("k{i}").as_bytes()),
                    Some(value.as_bytes()),
                )
            }))
            .enumerate()
            .map(|(i, r)| at(i as i64, r))
            .collect(),
        _ => std::iter::once(Record::new(T, Some(b"z"), Some(b"zero")))
            .chain((1..101).map(|i| {
                let value = format!(r#"{{"event":{i},"kind":"click"}}"#);
                Record::new(T + i, None, Some(value.as_bytes()))
            }))
            .enumerate()
            .map(|(i, r)| at(i as i64, r))
            .collect(),
    }
}

#[tokio::test]
async fn a_data_directory_of_the_second_format_is_served_and_extended() {
    let (_dir, data) = fixture("format-v2");
    let parts = [("orders", 0), ("orders", 1), ("zipped", 0)];
    let broker = open(&data).await;
    for (topic, partition) in parts {
        assert_eq!(
            read_topic(&broker, topic, partition),
            expected_v2(topic, partition),
            "{topic}-{partition}"
        );
    }
    // New frames (relative offsets) follow the old ones in each form, and both read back after
    // a restart.
    let small = [Record::new(1_750_000_000_000, Some(b"new"), Some(b"small"))];
    let large: Vec<Record> = (0..40)
        .map(|i| Record::new(1_750_000_000_001 + i, None, Some(b"a new batch of forty")))
        .collect();
    let mut expected: Vec<Vec<Record>> = parts.iter().map(|&(t, p)| expected_v2(t, p)).collect();
    for (i, &(topic, partition)) in parts.iter().enumerate() {
        for batch in [&small[..], &large[..]] {
            let appended = broker
                .append(
                    topic,
                    partition,
                    &records_to_batch(batch),
                    ProducerInfo::NONE,
                )
                .await
                .unwrap();
            assert_eq!(appended.base_offset, expected[i].len() as i64);
            let base = appended.base_offset;
            expected[i].extend(
                batch
                    .iter()
                    .cloned()
                    .enumerate()
                    .map(|(j, r)| at(base + j as i64, r)),
            );
        }
        assert_eq!(read_topic(&broker, topic, partition), expected[i]);
    }
    broker.shutdown().await.unwrap();
    drop(broker); // releases the data directory

    let broker = open(&data).await;
    for (i, &(topic, partition)) in parts.iter().enumerate() {
        assert_eq!(
            read_topic(&broker, topic, partition),
            expected[i],
            "{topic}-{partition} after a restart"
        );
    }
    broker.shutdown().await.unwrap();
}
