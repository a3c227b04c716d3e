//! The `Broker` handle end to end: topic lifecycle, validation, persistence across reopen,
//! partitioning and the data directory lock.

use std::collections::BTreeMap;
use std::time::Duration;

use quiver_broker::broker::ConfigChange;
use quiver_broker::{
    Broker, BrokerConfig, BrokerError, NewTopic, ProducerInfo, Record, batch_to_records,
    partition_for_key, records_to_batch,
};

fn config(dir: &std::path::Path) -> BrokerConfig {
    BrokerConfig {
        data_dir: dir.to_owned(),
        ..BrokerConfig::default()
    }
}

async fn open(dir: &std::path::Path) -> Broker {
    match Broker::open(config(dir)).await {
        Ok(b) => b,
        Err(e) => panic!("open broker: {e}"),
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"))
}

#[tokio::test]
async fn topics_configs_and_data_survive_reopen() {
    let dir = tempdir();
    {
        let broker = open(dir.path()).await;
        let created = broker
            .create_topic(
                NewTopic::new("orders", 3)
                    .with_config("retention.ms", "3600000")
                    .with_config("cleanup.policy", "compact"),
            )
            .await;
        assert!(created.is_ok(), "{created:?}");
        broker.create_topic(NewTopic::new("events", 1)).await.ok();
        let records: Vec<Record> = (0..30)
            .map(|i| Record::new(i, Some(format!("k{i}").as_bytes()), Some(b"v")))
            .collect();
        broker.produce("orders", &records).await.ok();
        broker.shutdown().await.ok();
    }
    let broker = open(dir.path()).await;
    assert_eq!(
        broker.list_topics(),
        vec!["events".to_owned(), "orders".to_owned()]
    );
    let d = broker
        .describe_topic("orders")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.partitions.len(), 3);
    assert_eq!(
        d.overrides.get("retention.ms").map(String::as_str),
        Some("3600000")
    );
    assert_eq!(d.config.retention_ms, Some(3_600_000));
    assert!(d.config.cleanup_policy.compact);
    let total: i64 = d.partitions.iter().map(|p| p.offsets.log_end_offset).sum();
    assert_eq!(total, 30);
}

#[tokio::test]
async fn bad_topic_requests_get_precise_errors_and_change_nothing() {
    let dir = tempdir();
    let broker = open(dir.path()).await;
    let cases: Vec<(NewTopic, &str)> = vec![
        (
            NewTopic::new("bad name", 1),
            "invalid topic name 'bad name'",
        ),
        (NewTopic::new("", 1), "invalid topic name ''"),
        (NewTopic::new("..", 1), "invalid topic name '..'"),
        (
            NewTopic::new("x".repeat(250), 1),
            "longer than the limit of 249",
        ),
        (NewTopic::new("ok", 0), "at least 1 partition"),
        (NewTopic::new("ok", -4), "at least 1 partition"),
        (
            NewTopic::new("ok", 1).with_config("retention.msec", "1"),
            "unknown topic config 'retention.msec'",
        ),
        (
            NewTopic::new("ok", 1).with_config("segment.bytes", "lots"),
            "segment.bytes=\"lots\" is not a whole number",
        ),
    ];
    for (topic, expected) in cases {
        let err = broker
            .create_topic(topic.clone())
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains(expected),
            "{topic:?}: got {err:?}, want {expected:?}"
        );
    }
    assert!(broker.list_topics().is_empty());
    broker.create_topic(NewTopic::new("a.b", 1)).await.ok();
    assert!(matches!(
        broker.create_topic(NewTopic::new("a.b", 1)).await,
        Err(BrokerError::TopicExists(_))
    ));
    let err = broker
        .create_topic(NewTopic::new("a_b", 1))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("collides with existing topic 'a.b'"), "{err}");
    assert!(matches!(
        broker.read("nope", 0, 0, 100),
        Err(BrokerError::UnknownTopic(_))
    ));
    assert!(matches!(
        broker.read("a.b", 1, 0, 100),
        Err(BrokerError::UnknownPartition { partitions: 1, .. })
    ));
    assert_eq!(broker.list_topics(), vec!["a.b".to_owned()]);
}

#[tokio::test]
async fn alter_configs_and_add_partitions() {
    let dir = tempdir();
    let broker = open(dir.path()).await;
    broker.create_topic(NewTopic::new("t", 2)).await.ok();
    let d = broker
        .alter_topic_config(
            "t",
            &[ConfigChange::Set("max.message.bytes".into(), "10".into())],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.config.max_message_bytes, 10);
    let big = records_to_batch(&[Record::new(0, None, Some(&[0u8; 11]))]);
    assert!(matches!(
        broker.append("t", 0, &big, ProducerInfo::NONE).await,
        Err(BrokerError::RecordTooLarge { .. })
    ));
    broker
        .alter_topic_config("t", &[ConfigChange::Delete("max.message.bytes".into())])
        .await
        .ok();
    assert!(
        broker
            .append("t", 0, &big, ProducerInfo::NONE)
            .await
            .is_ok()
    );
    assert!(
        broker
            .alter_topic_config("t", &[ConfigChange::Set("nope".into(), "1".into())])
            .await
            .is_err()
    );

    assert!(
        broker.add_partitions("t", 2).await.is_err(),
        "not an increase"
    );
    let d = broker
        .add_partitions("t", 5)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.partitions.len(), 5);
    assert!(
        broker
            .append("t", 4, &big, ProducerInfo::NONE)
            .await
            .is_ok()
    );
    broker.shutdown().await.ok();
    drop(broker);
    let broker = open(dir.path()).await;
    assert_eq!(broker.partition_count("t").ok(), Some(5));
    assert_eq!(
        broker.offsets("t", 4).map(|o| o.log_end_offset).ok(),
        Some(1)
    );
}

#[tokio::test]
async fn produce_partitions_like_kafka() {
    let dir = tempdir();
    let broker = open(dir.path()).await;
    broker.create_topic(NewTopic::new("keyed", 6)).await.ok();
    let keys = ["alpha", "beta", "gamma", "delta", "21", "foobar"];
    let records: Vec<Record> = keys
        .iter()
        .map(|k| Record::new(0, Some(k.as_bytes()), Some(k.as_bytes())))
        .collect();
    broker.produce("keyed", &records).await.ok();
    for p in 0..6 {
        let res = broker
            .read("keyed", p, 0, 1 << 20)
            .unwrap_or_else(|e| panic!("{e}"));
        for b in &res.batches {
            for r in batch_to_records(&b.records).unwrap_or_default() {
                let key = r.key.unwrap_or_default();
                assert_eq!(partition_for_key(&key, 6), p);
            }
        }
    }
    // "foobar" hashes to -790332482 in Java: toPositive(..) % 6 = 1357151166 % 6 = 0.
    assert_eq!(
        broker
            .offsets("keyed", 0)
            .map(|o| o.log_end_offset > 0)
            .ok(),
        Some(true)
    );
    // Auto-create with num.partitions.
    broker
        .produce("fresh", &[Record::new(0, None, Some(b"x"))])
        .await
        .ok();
    assert_eq!(broker.partition_count("fresh").ok(), Some(1));
}

#[tokio::test]
async fn delete_topic_removes_data_and_name_can_be_reused() {
    let dir = tempdir();
    let broker = open(dir.path()).await;
    broker.create_topic(NewTopic::new("gone", 2)).await.ok();
    broker
        .produce("gone", &[Record::new(0, Some(b"k"), Some(b"v"))])
        .await
        .ok();
    broker.delete_topic("gone").await.ok();
    assert!(!dir.path().join("gone-0").exists());
    assert!(matches!(
        broker.delete_topic("gone").await,
        Err(BrokerError::UnknownTopic(_))
    ));
    broker.create_topic(NewTopic::new("gone", 1)).await.ok();
    assert_eq!(
        broker.offsets("gone", 0).map(|o| o.log_end_offset).ok(),
        Some(0),
        "no old data comes back"
    );
}

#[tokio::test]
async fn second_open_of_a_data_dir_names_the_holder() {
    let dir = tempdir();
    let _first = open(dir.path()).await;
    let err = Broker::open(config(dir.path()))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("is in use by process"), "{err}");
    assert!(err.contains(&std::process::id().to_string()), "{err}");
}

#[tokio::test]
async fn read_wait_wakes_on_append() {
    let dir = tempdir();
    let broker = open(dir.path()).await;
    broker.create_topic(NewTopic::new("w", 1)).await.ok();
    let reader = {
        let broker = broker.clone();
        tokio::spawn(async move {
            broker
                .read_wait("w", 0, 0, 1 << 20, Duration::from_secs(30))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    broker
        .produce("w", &[Record::new(0, None, Some(b"hello"))])
        .await
        .ok();
    let res = reader
        .await
        .ok()
        .and_then(Result::ok)
        .map(|r| r.record_count());
    assert_eq!(res, Some(1));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woken by the append, not the timeout"
    );
}

#[tokio::test]
async fn compaction_runs_through_the_broker() {
    let dir = tempdir();
    let broker = open(dir.path()).await;
    let mut configs = BTreeMap::new();
    configs.insert("cleanup.policy".to_owned(), "compact".to_owned());
    configs.insert("segment.bytes".to_owned(), "2048".to_owned());
    broker
        .create_topic(NewTopic {
            name: "table".into(),
            partitions: Some(1),
            configs,
        })
        .await
        .ok();
    for v in 0..40 {
        broker
            .produce(
                "table",
                &[Record::new(
                    0,
                    Some(b"same-key"),
                    Some(format!("v{v}").as_bytes()),
                )],
            )
            .await
            .ok();
    }
    let stats = broker.run_cleaner().await;
    assert!(stats.records_removed > 0, "{stats:?}");
    let res = broker
        .read("table", 0, 0, 1 << 20)
        .unwrap_or_else(|e| panic!("{e}"));
    let values: Vec<String> = res
        .batches
        .iter()
        .flat_map(|b| batch_to_records(&b.records).unwrap_or_default())
        .map(|r| String::from_utf8_lossy(&r.value.unwrap_or_default()).into_owned())
        .collect();
    assert_eq!(values.last().map(String::as_str), Some("v39"));
    assert!(values.len() < 40);
}

#[tokio::test]
async fn foreign_directories_in_the_data_dir_are_left_alone() {
    let dir = tempdir();
    // Looks like "<topic>-<partition>" but is someone else's.
    let foreign = dir.path().join("backup-2024");
    std::fs::create_dir_all(&foreign).ok();
    std::fs::write(foreign.join("notes.txt"), b"keep me").ok();
    // A real leftover of a deleted topic: a partition log with every file a log writes
    // (several segments with their indexes, the log start and recovery point checkpoints,
    // the producer snapshot and the leader epochs).
    let leftover = dir.path().join("gone-0");
    {
        let log_config = std::sync::Arc::new(quiver_broker::LogConfig {
            segment_bytes: 1024,
            ..quiver_broker::LogConfig::default()
        });
        let log = quiver_broker::log::Log::open(&leftover, "gone", 0, log_config)
            .unwrap_or_else(|e| panic!("open log: {e}"));
        for i in 0..40 {
            let value = format!("{i:0>100}");
            let batch = records_to_batch(&[Record::new(i, Some(b"k"), Some(value.as_bytes()))]);
            if let Err(e) = log.append_unflushed(&batch, ProducerInfo::NONE) {
                panic!("append: {e}");
            }
            if let Err(e) = log.flush().await {
                panic!("flush: {e}");
            }
        }
        if let Err(e) = log.delete_records(3) {
            panic!("delete records: {e}");
        }
        if let Err(e) = log.close().await {
            panic!("close: {e}");
        }
    }
    let files: Vec<String> = std::fs::read_dir(&leftover)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for name in [
        "recovery-point-offset",
        "log-start-offset",
        ".txnindex",
        ".snapshot",
    ] {
        assert!(
            files.iter().any(|f| f.ends_with(name)),
            "{files:?} lack {name}"
        );
    }
    let broker = open(dir.path()).await;
    assert!(
        foreign.join("notes.txt").exists(),
        "a directory that is not a partition log is never removed"
    );
    assert!(
        !leftover.exists(),
        "a partition directory of no topic is removed"
    );
    drop(broker);
}

#[tokio::test]
async fn idempotent_producer_state_survives_restart() {
    let dir = tempdir();
    let batch = |n: usize| {
        records_to_batch(
            &(0..n)
                .map(|i| Record::new(i as i64, Some(b"k"), Some(b"v")))
                .collect::<Vec<_>>(),
        )
    };
    let producer = |seq: i32| ProducerInfo {
        producer_id: 42,
        producer_epoch: 0,
        base_sequence: seq,
        attributes: 0,
    };
    {
        let broker = open(dir.path()).await;
        broker.create_topic(NewTopic::new("idem", 1)).await.ok();
        let first = broker
            .append("idem", 0, &batch(5), producer(0))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((first.base_offset, first.last_offset), (0, 4));
        broker.append("idem", 0, &batch(3), producer(5)).await.ok();
        // Crash: no clean shutdown, so no snapshot; state comes from the frame headers.
    }
    let broker = open(dir.path()).await;
    // A retry of the last batch is recognised and answered with its original offsets.
    let retry = broker
        .append("idem", 0, &batch(3), producer(5))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((retry.base_offset, retry.last_offset), (5, 7));
    assert_eq!(
        broker.offsets("idem", 0).map(|o| o.log_end_offset).ok(),
        Some(8),
        "nothing appended twice"
    );
    // A gap is refused.
    let gap = broker.append("idem", 0, &batch(1), producer(10)).await;
    assert!(
        matches!(
            gap,
            Err(BrokerError::OutOfOrderSequence {
                expected: 8,
                received: 10,
                ..
            })
        ),
        "{gap:?}"
    );
    // The next batch in sequence is appended.
    let next = broker
        .append("idem", 0, &batch(2), producer(8))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(next.base_offset, 8);
    broker.shutdown().await.ok();
    drop(broker);
    // After a clean shutdown the state comes from the snapshot.
    let broker = open(dir.path()).await;
    let retry = broker
        .append("idem", 0, &batch(2), producer(8))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(retry.base_offset, 8);
    assert_eq!(
        broker.offsets("idem", 0).map(|o| o.log_end_offset).ok(),
        Some(10)
    );
}

#[tokio::test]
async fn leader_epoch_bumps_after_a_crash_not_after_a_clean_shutdown() {
    let dir = tempdir();
    let epoch_of = |b: &Broker| {
        b.describe_topic("e")
            .map(|d| d.partitions[0].leader_epoch)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let broker = open(dir.path()).await;
    broker
        .create_topic(NewTopic::new("e", 1))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let batch = records_to_batch(&[Record::new(quiver_broker::now_ms(), Some(b"k"), Some(b"v"))]);
    broker
        .append("e", 0, &batch, ProducerInfo::NONE)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(epoch_of(&broker), 0);
    broker.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    drop(broker);
    assert!(dir.path().join(".clean-shutdown").exists());

    let broker = open(dir.path()).await;
    assert!(
        !dir.path().join(".clean-shutdown").exists(),
        "the marker is consumed on open, so a crash from now on is seen"
    );
    assert_eq!(epoch_of(&broker), 0, "clean shutdown: same epoch");
    broker
        .append("e", 0, &batch, ProducerInfo::NONE)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    drop(broker); // a crash

    let broker = open(dir.path()).await;
    assert_eq!(epoch_of(&broker), 1, "unclean shutdown: new epoch");
    let o = broker.offsets("e", 0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((o.log_end_offset, o.high_watermark), (2, 2));
}

#[tokio::test]
async fn idle_producer_expires_on_the_timer_not_only_at_segment_roll() {
    let dir = tempdir();
    let mut config = config(dir.path());
    config.producer_id_expiration_ms = 200;
    config.producer_id_expiration_check_interval_ms = 20;
    let broker = Broker::open(config)
        .await
        .unwrap_or_else(|e| panic!("open broker: {e}"));
    broker.create_topic(NewTopic::new("idem", 1)).await.ok();
    let batch = records_to_batch(&[Record::new(0, Some(b"k"), Some(b"v"))]);
    let producer = |seq: i32| ProducerInfo {
        producer_id: 42,
        producer_epoch: 0,
        base_sequence: seq,
        attributes: 0,
    };
    broker
        .append("idem", 0, &batch, producer(0))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // While the producer is known, a gap in its sequence is refused.
    let gap = broker.append("idem", 0, &batch, producer(7)).await;
    assert!(
        matches!(gap, Err(BrokerError::OutOfOrderSequence { .. })),
        "{gap:?}"
    );
    let log = broker
        .partition("idem", 0)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(log.producer_count(), 1);
    // No segment rolls here (segment.bytes and segment.ms are far off): only the timer expires it.
    let mut expired = false;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        if log.producer_count() == 0 {
            expired = true;
            break;
        }
    }
    assert!(expired, "the idle producer was not expired");
    assert_eq!(log.offsets().segments, 1, "no segment rolled");
    // Kafka (2.5 and later) accepts any sequence from a producer it has no state for.
    let next = broker
        .append("idem", 0, &batch, producer(7))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(next.base_offset, 1);
    // And from there on the producer is tracked again.
    let gap = broker.append("idem", 0, &batch, producer(9)).await;
    assert!(
        matches!(
            gap,
            Err(BrokerError::OutOfOrderSequence {
                expected: 8,
                received: 9,
                ..
            })
        ),
        "{gap:?}"
    );
    broker.shutdown().await.ok();
}

/// Other crates used to get the whole partition `Log` from the broker; they now get a read
/// handle, which reads, waits for records and shows offsets.
#[tokio::test]
async fn a_partition_handle_reads_and_waits_without_the_log() {
    let dir = tempdir();
    let broker = open(dir.path()).await;
    broker
        .create_topic(NewTopic::new("handle", 2))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let handle = broker
        .partition("handle", 1)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((handle.topic(), handle.partition()), ("handle", 1));
    assert!(matches!(
        broker.partition("handle", 2),
        Err(BrokerError::UnknownPartition { .. })
    ));
    let mut watermark = handle.subscribe();
    let waiting = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.wait_for(0, Duration::from_secs(30)).await })
    };
    let batch = records_to_batch(&[Record::new(1_000, Some(b"k"), Some(b"v"))]);
    broker
        .append("handle", 1, &batch, ProducerInfo::NONE)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(waiting.await.ok(), Some(true), "the waiter saw the record");
    assert_eq!(*watermark.borrow_and_update(), 1);
    assert_eq!(handle.high_watermark(), 1);
    assert_eq!(handle.offsets().log_end_offset, 1);
    assert_eq!(
        handle.offset_for_timestamp(500).ok(),
        Some(Some((0, 1_000)))
    );
    let read = handle.read(0, 1 << 20).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read.record_count(), 1);
    assert_eq!(
        handle.leader_epoch(),
        broker
            .describe_topic("handle")
            .map_or(-1, |d| d.partitions[1].leader_epoch)
    );
    broker.shutdown().await.ok();
}
