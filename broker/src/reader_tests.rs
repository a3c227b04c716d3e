//! The topic reader against a broker on a temporary directory: every record once and in order
//! per partition, within a byte budget and taking turns, transactions as a consumer sees them,
//! partitions added while reading, waiting, progress for watermarks, and checkpoints.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::log::{ProducerInfo, attributes};
use crate::record::{EnvelopeColumns, Record, records_to_batch};
use crate::{BrokerConfig, NewTopic};

async fn broker(dir: &std::path::Path) -> Broker {
    let mut config = BrokerConfig {
        data_dir: dir.to_owned(),
        ..BrokerConfig::default()
    };
    // Reads see records once they are written: these tests are about the reader.
    config.log.flush_on_ack = false;
    Broker::open(config)
        .await
        .unwrap_or_else(|e| panic!("open: {e}"))
}

fn batch(tag: &str, n: usize, ts: i64) -> RecordBatch {
    let recs: Vec<Record> = (0..n)
        .map(|i| {
            Record::new(
                ts + i as i64,
                Some(b"k"),
                Some(format!("{tag}-{i}").as_bytes()),
            )
        })
        .collect();
    records_to_batch(&recs)
}

async fn append(b: &Broker, p: i32, batch: &RecordBatch, producer: ProducerInfo) {
    if let Err(e) = b.append("t", p, batch, producer).await {
        panic!("append: {e}");
    }
}

fn values(batches: &[ReaderBatch]) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for b in batches {
        let cols = EnvelopeColumns::try_new(&b.records).unwrap_or_else(|e| panic!("{e}"));
        for i in 0..b.records.num_rows() {
            let v = cols.value(i).unwrap_or_default();
            out.push((b.partition, String::from_utf8_lossy(v).into_owned()));
        }
    }
    out
}

async fn drain(r: &mut TopicReader) -> (Vec<(i32, String)>, usize) {
    let mut all = Vec::new();
    let mut calls = 0;
    loop {
        let got = r
            .next_batches(Duration::ZERO)
            .await
            .unwrap_or_else(|e| panic!("read: {e}"));
        if got.is_empty() {
            return (all, calls);
        }
        calls += 1;
        all.extend(values(&got));
    }
}

fn options(max_bytes: usize) -> ReaderOptions {
    ReaderOptions {
        max_bytes,
        ..ReaderOptions::default()
    }
}

#[tokio::test]
async fn every_record_once_in_order_within_the_budget_and_taking_turns() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let b = broker(dir.path()).await;
    b.create_topic(NewTopic::new("t", 3)).await.ok();
    for round in 0..10 {
        for p in 0..3 {
            append(
                &b,
                p,
                &batch(&format!("p{p}r{round}"), 5, 1_000),
                ProducerInfo::NONE,
            )
            .await;
        }
    }
    // A budget smaller than one batch: each call returns one batch, partitions taking turns.
    let mut r = b
        .topic_reader("t", StartAt::Earliest, options(1))
        .unwrap_or_else(|e| panic!("reader: {e}"));
    let first: Vec<i32> = {
        let mut firsts = Vec::new();
        for _ in 0..3 {
            let got = r.next_batches(Duration::ZERO).await.unwrap_or_default();
            assert_eq!(got.len(), 1, "one batch per call within a 1-byte budget");
            firsts.push(got[0].partition);
        }
        firsts
    };
    assert_eq!(first, vec![0, 1, 2], "partitions take turns at the front");
    let (rest, _) = drain(&mut r).await;
    assert_eq!(rest.len(), 150 - 15);
    // Per partition, in order, each record once.
    let mut r = b
        .topic_reader("t", StartAt::Earliest, options(4 << 20))
        .unwrap_or_else(|e| panic!("reader: {e}"));
    let (all, calls) = drain(&mut r).await;
    assert_eq!(calls, 1, "a large budget takes everything at once");
    for p in 0..3 {
        let got: Vec<&String> = all
            .iter()
            .filter(|(q, _)| *q == p)
            .map(|(_, v)| v)
            .collect();
        let want: Vec<String> = (0..10)
            .flat_map(|round| (0..5).map(move |i| format!("p{p}r{round}-{i}")))
            .collect();
        assert_eq!(got, want.iter().collect::<Vec<_>>());
    }
    assert_eq!(r.positions(), BTreeMap::from([(0, 50), (1, 50), (2, 50)]));
}

#[tokio::test]
async fn read_committed_sees_only_committed_transactions_and_moves_past_markers() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let b = broker(dir.path()).await;
    b.create_topic(NewTopic::new("t", 1)).await.ok();
    let mut committed = b
        .topic_reader(
            "t",
            StartAt::Earliest,
            ReaderOptions {
                isolation: Isolation::ReadCommitted,
                ..ReaderOptions::default()
            },
        )
        .unwrap_or_else(|e| panic!("reader: {e}"));
    let mut all = b
        .topic_reader("t", StartAt::Earliest, ReaderOptions::default())
        .unwrap_or_else(|e| panic!("reader: {e}"));
    let mut keep = b
        .transactional_producer("keep", 60_000)
        .await
        .unwrap_or_else(|e| panic!("producer: {e}"));
    let mut drop_it = b
        .transactional_producer("drop", 60_000)
        .await
        .unwrap_or_else(|e| panic!("producer: {e}"));
    for (p, tag) in [(&mut keep, "kept"), (&mut drop_it, "dropped")] {
        if let Err(e) = p.append("t", 0, &batch(tag, 2, 1_000)).await {
            panic!("append: {e}");
        }
    }
    append(&b, 0, &batch("plain", 1, 1_000), ProducerInfo::NONE).await;
    assert!(
        drain(&mut committed).await.0.is_empty(),
        "nothing is decided yet"
    );
    let undecided = committed.progress()[0];
    assert_eq!(undecided.position, 0);
    if let Err(e) = keep.commit_and_wait().await {
        panic!("commit: {e}");
    }
    if let Err(e) = drop_it.abort().await {
        panic!("abort: {e}");
    }
    if let Err(e) = drop_it.wait_completed().await {
        panic!("abort: {e}");
    }
    let seen: Vec<String> = drain(&mut committed)
        .await
        .0
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(seen, vec!["kept-0", "kept-1", "plain-0"]);
    let end = b.offsets("t", 0).map(|o| o.log_end_offset).unwrap_or(-1);
    assert_eq!(committed.positions()[&0], end, "past both markers");
    assert_eq!(committed.progress()[0].lag, 0);
    let everything: Vec<String> = drain(&mut all)
        .await
        .0
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        everything.len(),
        5,
        "read_uncommitted: all data, no markers: {everything:?}"
    );
    let marker_shaped = ProducerInfo {
        attributes: attributes::CONTROL,
        ..ProducerInfo::NONE
    };
    assert!(
        b.append("t", 0, &batch("x", 1, 1), marker_shaped)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn waits_for_records_and_picks_up_new_partitions_from_their_start() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let b = broker(dir.path()).await;
    b.create_topic(NewTopic::new("t", 1)).await.ok();
    append(&b, 0, &batch("old", 3, 1_000), ProducerInfo::NONE).await;
    let mut r = b
        .topic_reader("t", StartAt::Latest, ReaderOptions::default())
        .unwrap_or_else(|e| panic!("reader: {e}"));
    assert_eq!(r.positions()[&0], 3, "latest: only what comes next");
    let writer = b.clone();
    let task = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        append(&writer, 0, &batch("new", 1, 2_000), ProducerInfo::NONE).await;
    });
    let got = r
        .next_batches(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("read: {e}"));
    assert_eq!(
        values(&got),
        vec![(0, "new-0".to_owned())],
        "woken by the append"
    );
    task.await.ok();

    if let Err(e) = b.add_partitions("t", 3).await {
        panic!("add partitions: {e}");
    }
    append(&b, 2, &batch("added", 2, 3_000), ProducerInfo::NONE).await;
    let got = r
        .next_batches(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("read: {e}"));
    assert_eq!(
        values(&got),
        vec![(2, "added-0".to_owned()), (2, "added-1".to_owned())],
        "a new partition is read from its start"
    );
    assert_eq!(r.positions().len(), 3);
}

#[tokio::test]
async fn progress_start_positions_seek_and_detach() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let b = broker(dir.path()).await;
    b.create_topic(NewTopic::new("t", 2)).await.ok();
    append(&b, 0, &batch("a", 10, 1_000), ProducerInfo::NONE).await;
    append(&b, 1, &batch("b", 10, 5_000), ProducerInfo::NONE).await;
    let idle_now = ReaderOptions {
        idle_after: Duration::ZERO,
        ..ReaderOptions::default()
    };
    let mut r = b
        .topic_reader("t", StartAt::Timestamp(1_005), idle_now)
        .unwrap_or_else(|e| panic!("reader: {e}"));
    assert_eq!(r.positions(), BTreeMap::from([(0, 5), (1, 0)]));
    let before = r.progress();
    assert_eq!(
        (before[0].lag, before[0].idle),
        (5, false),
        "records wait: not idle"
    );
    let (got, _) = drain(&mut r).await;
    assert_eq!(got.len(), 15);
    let after = r.progress();
    assert_eq!(after[0].max_timestamp, Some(1_009));
    assert_eq!(after[1].max_timestamp, Some(5_009));
    assert!(after.iter().all(|p| p.idle && p.lag == 0), "{after:?}");

    let mut r = b
        .topic_reader(
            "t",
            StartAt::Offsets(BTreeMap::from([(1, 8)])),
            ReaderOptions::default(),
        )
        .unwrap_or_else(|e| panic!("reader: {e}"));
    assert_eq!(r.positions(), BTreeMap::from([(0, 0), (1, 8)]));
    if let Err(e) = r.seek(0, 9) {
        panic!("seek: {e}");
    }
    assert!(r.seek(5, 0).is_err(), "no partition 5");
    let got = r.next_batches(Duration::ZERO).await.unwrap_or_default();
    assert_eq!(
        values(&got),
        vec![
            (0, "a-9".to_owned()),
            (1, "b-8".to_owned()),
            (1, "b-9".to_owned())
        ]
    );
    let detached = got[0].detach().unwrap_or_else(|e| panic!("detach: {e}"));
    assert_eq!(values(std::slice::from_ref(&detached)), values(&got[..1]));
    let buffer = |b: &ReaderBatch| {
        b.records
            .column(crate::record::col::VALUE)
            .to_data()
            .buffers()[1]
            .as_ptr()
    };
    assert_ne!(buffer(&detached), buffer(&got[0]), "its own buffers");
    r.seek(1, 100).ok();
    assert!(
        matches!(
            r.next_batches(Duration::ZERO).await,
            Err(BrokerError::OffsetOutOfRange { .. })
        ),
        "a position past the end is an error, not a silent skip"
    );
    assert!(
        b.topic_reader("nope", StartAt::Earliest, ReaderOptions::default())
            .is_err()
    );
}

#[tokio::test]
async fn split_readers_share_a_topic_between_them_including_partitions_added_later() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let b = broker(dir.path()).await;
    b.create_topic(NewTopic::new("t", 3)).await.ok();
    for p in 0..3 {
        append(
            &b,
            p,
            &batch(&format!("p{p}"), 2, 1_000),
            ProducerInfo::NONE,
        )
        .await;
    }
    let split = |index| ReaderOptions {
        split: PartitionSplit { index, count: 2 },
        ..ReaderOptions::default()
    };
    let mut even = b
        .topic_reader("t", StartAt::Earliest, split(0))
        .unwrap_or_else(|e| panic!("reader: {e}"));
    let mut odd = b
        .topic_reader("t", StartAt::Earliest, split(1))
        .unwrap_or_else(|e| panic!("reader: {e}"));
    let partitions = |v: &[(i32, String)]| {
        let mut p: Vec<i32> = v.iter().map(|(p, _)| *p).collect();
        p.dedup();
        p
    };
    let (got_even, _) = drain(&mut even).await;
    let (got_odd, _) = drain(&mut odd).await;
    assert_eq!(partitions(&got_even), [0, 2]);
    assert_eq!(partitions(&got_odd), [1]);
    assert_eq!(got_even.len() + got_odd.len(), 6);

    b.add_partitions("t", 4)
        .await
        .unwrap_or_else(|e| panic!("add partitions: {e}"));
    append(&b, 3, &batch("p3", 1, 1_000), ProducerInfo::NONE).await;
    let (more_even, _) = drain(&mut even).await;
    let (more_odd, _) = drain(&mut odd).await;
    assert!(more_even.is_empty());
    assert_eq!(more_odd, [(3, "p3-0".to_string())]);
    assert_eq!(odd.positions(), BTreeMap::from([(1, 2), (3, 1)]));
    odd.seek(3, 0).unwrap_or_else(|e| panic!("seek: {e}"));
    assert!(
        even.seek(3, 0).is_err(),
        "partition 3 is not in the even split"
    );
    let bad = ReaderOptions {
        split: PartitionSplit { index: 2, count: 2 },
        ..ReaderOptions::default()
    };
    assert!(b.topic_reader("t", StartAt::Earliest, bad).is_err());
}
