//! What readers see and when an append is acknowledged: the high watermark as the durable
//! offset (`log.flush.on.ack`), acks, leader epochs across clean and unclean restarts, closing,
//! and timestamp bounds.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::config::LogConfig;
use crate::record::{Record, records_to_batch};

fn open_with(dir: &Path, config: LogConfig, shutdown: Shutdown) -> Log {
    match Log::open_after(dir, "t", 0, Arc::new(config), shutdown) {
        Ok(log) => log,
        Err(e) => panic!("open log: {e}"),
    }
}

fn batch(n: i64) -> RecordBatch {
    let now = now_ms();
    let records: Vec<Record> = (0..n)
        .map(|i| Record::new(now, Some(b"k"), Some(format!("v{i}").as_bytes())))
        .collect();
    records_to_batch(&records)
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"))
}

fn offsets_read(log: &Log, from: i64) -> Vec<i64> {
    let read = log
        .read(from, usize::MAX)
        .unwrap_or_else(|e| panic!("read: {e}"));
    read.batches
        .iter()
        .flat_map(|b| {
            let cols = EnvelopeColumns::try_new(&b.records).unwrap_or_else(|e| panic!("{e}"));
            cols.offsets.values().to_vec()
        })
        .collect()
}

#[tokio::test]
async fn consumers_never_read_past_the_durable_offset() {
    let dir = tempdir();
    let log = open_with(dir.path(), LogConfig::default(), Shutdown::Unclean);
    let info = log
        .append_unflushed(&batch(3), ProducerInfo::NONE)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(info.last_offset, 2);
    // Written but not fsynced: nothing is visible, and offsets say so.
    let o = log.offsets();
    assert_eq!(
        (o.log_end_offset, o.durable_offset, o.high_watermark),
        (3, 0, 0)
    );
    assert!(offsets_read(&log, 0).is_empty());
    let read = log.read(0, 1 << 20).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((read.high_watermark, read.next_offset), (0, 0));
    // An offset between the high watermark and the log end is valid and reads nothing yet.
    assert!(log.read(2, 1 << 20).is_ok_and(|r| r.batches.is_empty()));
    assert_eq!(log.offset_for_timestamp(0).ok().flatten(), None);
    log.flush().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(offsets_read(&log, 0), vec![0, 1, 2]);
    assert_eq!(log.offsets().high_watermark, 3);
}

#[tokio::test]
async fn acks_all_is_answered_after_the_fsync() {
    let dir = tempdir();
    let log = open_with(dir.path(), LogConfig::default(), Shutdown::Unclean);
    let info = log
        .append(&batch(2), ProducerInfo::NONE, Ack::All)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let o = log.offsets();
    assert!(o.durable_offset > info.last_offset, "{o:?}");
    assert_eq!(o.high_watermark, 2);
    // acks=1 does not wait (no flusher runs on this bare log, so nothing else syncs it).
    log.append(&batch(1), ProducerInfo::NONE, Ack::Written)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(log.offsets().durable_offset, 2);
}

#[tokio::test]
async fn without_flush_on_ack_the_high_watermark_is_the_log_end() {
    let dir = tempdir();
    let config = LogConfig {
        flush_on_ack: false,
        ..LogConfig::default()
    };
    let log = open_with(dir.path(), config, Shutdown::Unclean);
    log.append(&batch(2), ProducerInfo::NONE, Ack::All)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let o = log.offsets();
    // acks=all answered after the write, as Kafka does with no replicas.
    assert_eq!((o.durable_offset, o.high_watermark), (0, 2));
    assert_eq!(offsets_read(&log, 0), vec![0, 1]);
}

#[tokio::test]
async fn the_flusher_moves_the_high_watermark_without_acks_all() {
    let dir = tempdir();
    let log = Arc::new(open_with(
        dir.path(),
        LogConfig::default(),
        Shutdown::Unclean,
    ));
    log.start_flusher();
    for _ in 0..20 {
        log.append(&batch(5), ProducerInfo::NONE, Ack::Written)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    // Woken by the durable offset moving; the bound is a safety net, not a timing claim.
    assert!(log.wait_for(99, Duration::from_secs(30)).await);
    assert_eq!(log.offsets().durable_offset, 100);
    assert_eq!(offsets_read(&log, 95), vec![95, 96, 97, 98, 99]);
}

#[tokio::test]
async fn leader_epoch_is_bumped_after_an_unclean_shutdown_only() {
    let dir = tempdir();
    let log = open_with(dir.path(), LogConfig::default(), Shutdown::Unclean);
    assert_eq!(log.leader_epoch(), 0, "a new partition starts at epoch 0");
    log.append(&batch(4), ProducerInfo::NONE, Ack::All)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    drop(log); // a crash: no close

    let log = open_with(dir.path(), LogConfig::default(), Shutdown::Unclean);
    assert_eq!(log.leader_epoch(), 1);
    let epochs = log.leader_epochs();
    assert_eq!(
        epochs.end_offset_for(0, 4),
        (0, 4),
        "epoch 0 ended at the recovered end"
    );
    log.append(&batch(2), ProducerInfo::NONE, Ack::All)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let read = log.read(0, usize::MAX).unwrap_or_else(|e| panic!("{e}"));
    let epochs_of: Vec<i32> = read
        .batches
        .iter()
        .map(|b| read.epochs.epoch_for(b.header.base_offset))
        .collect();
    assert_eq!(
        epochs_of,
        vec![0, 1],
        "each batch keeps the epoch it was written in"
    );
    log.close().await.unwrap_or_else(|e| panic!("{e}"));
    drop(log);

    let log = open_with(dir.path(), LogConfig::default(), Shutdown::Clean);
    assert_eq!(log.leader_epoch(), 1, "a clean restart keeps the epoch");
    assert_eq!(log.end_offset(), 6);
}

#[tokio::test]
async fn clean_restart_trusts_the_active_segment_without_a_rescan() {
    let dir = tempdir();
    let log = open_with(dir.path(), LogConfig::default(), Shutdown::Unclean);
    for _ in 0..3 {
        log.append(&batch(2), ProducerInfo::NONE, Ack::All)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    log.close().await.unwrap_or_else(|e| panic!("{e}"));
    drop(log);
    // Damage the last frame's body without changing the file length: a rescan would cut it
    // off, a trusted open keeps the end (the read path still checks every frame's CRC).
    let seg = dir.path().join(segment::file_name(0, "log"));
    let mut bytes = std::fs::read(&seg).unwrap_or_else(|e| panic!("{e}"));
    let last = bytes.len() - 9;
    bytes[last] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap_or_else(|e| panic!("{e}"));

    let clean = open_with(dir.path(), LogConfig::default(), Shutdown::Clean);
    assert_eq!(clean.end_offset(), 6, "clean open did not rescan");
    drop(clean);
    let unclean = open_with(dir.path(), LogConfig::default(), Shutdown::Unclean);
    assert_eq!(unclean.end_offset(), 4, "recovery cuts the damaged batch");
}

#[tokio::test]
async fn no_append_lands_after_close() {
    let dir = tempdir();
    let log = open_with(dir.path(), LogConfig::default(), Shutdown::Unclean);
    log.append(&batch(1), ProducerInfo::NONE, Ack::All)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    log.close().await.unwrap_or_else(|e| panic!("{e}"));
    let late = log.append_unflushed(&batch(1), ProducerInfo::NONE);
    assert!(matches!(late, Err(BrokerError::ShuttingDown)), "{late:?}");
    assert_eq!(log.end_offset(), 1);
}

#[test]
fn record_timestamps_far_from_the_broker_clock_are_refused() {
    let dir = tempdir();
    let config = LogConfig {
        timestamp_before_max_ms: Some(24 * 3_600_000),
        ..LogConfig::default()
    };
    let log = open_with(dir.path(), config, Shutdown::Unclean);
    let now = now_ms();
    let at = |ts: i64| records_to_batch(&[Record::new(ts, Some(b"k"), Some(b"v"))]);
    // One hour ahead is Kafka 4's default bound; a year ahead would stall retention.
    let future = log.append_unflushed(&at(now + 365 * 24 * 3_600_000), ProducerInfo::NONE);
    assert!(
        matches!(&future, Err(BrokerError::InvalidTimestamp(m)) if m.contains("message.timestamp.after.max.ms")),
        "{future:?}"
    );
    let past = log.append_unflushed(&at(now - 2 * 24 * 3_600_000), ProducerInfo::NONE);
    assert!(
        matches!(&past, Err(BrokerError::InvalidTimestamp(m)) if m.contains("message.timestamp.before.max.ms")),
        "{past:?}"
    );
    assert_eq!(log.end_offset(), 0, "nothing was appended");
    assert!(
        log.append_unflushed(&at(now + 60_000), ProducerInfo::NONE)
            .is_ok()
    );
    // LogAppendTime stamps the broker's clock, so producer timestamps are not checked.
    let stamped = LogConfig {
        timestamp_type: crate::config::TimestampType::LogAppendTime,
        ..LogConfig::default()
    };
    log.set_config(Arc::new(stamped));
    assert!(
        log.append_unflushed(&at(now + 365 * 24 * 3_600_000), ProducerInfo::NONE)
            .is_ok()
    );
}

#[test]
fn an_idle_producer_replayed_after_a_crash_keeps_its_idle_clock() {
    let dir = tempdir();
    let day_ms = 24 * 3_600_000;
    let two_days_ago = now_ms() - 2 * day_ms;
    let log = open_with(dir.path(), LogConfig::default(), Shutdown::Unclean);
    let producer = ProducerInfo {
        producer_id: 7,
        producer_epoch: 0,
        base_sequence: 0,
        attributes: 0,
    };
    let old = records_to_batch(&[Record::new(two_days_ago, Some(b"k"), Some(b"v"))]);
    log.append_unflushed(&old, producer)
        .unwrap_or_else(|e| panic!("{e}"));
    drop(log); // a crash: the state is rebuilt from the batch headers
    let log = open_with(dir.path(), LogConfig::default(), Shutdown::Unclean);
    assert_eq!(log.producer_count(), 1);
    // Last active two days ago, not when the restart read it back.
    log.expire_producers(now_ms(), day_ms);
    assert_eq!(log.producer_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_whose_caller_gives_up_never_holds_back_the_next() {
    let dir = tempdir();
    let log = Arc::new(open_with(
        dir.path(),
        LogConfig::default(),
        Shutdown::Unclean,
    ));
    for round in 0..50 {
        let first = match log.append_unflushed(&batch(3), ProducerInfo::NONE) {
            Ok(info) => info.last_offset + 1,
            Err(e) => panic!("append: {e}"),
        };
        // The caller is dropped while its round is in flight (or before it starts).
        let _ = tokio::time::timeout(Duration::ZERO, log.flush_to(first)).await;
        let second = match log.append_unflushed(&batch(2), ProducerInfo::NONE) {
            Ok(info) => info.last_offset + 1,
            Err(e) => panic!("append: {e}"),
        };
        // Concurrent acknowledgements of both appends all complete, each durable after it.
        // The first target is the abandoned round's: no one may wait on that round.
        let waits = [first, second, second].map(|target| {
            let log = log.clone();
            tokio::spawn(async move { log.flush_to(target).await })
        });
        let done =
            tokio::time::timeout(Duration::from_secs(10), futures::future::join_all(waits)).await;
        let Ok(results) = done else {
            panic!("round {round}: a flush hung after an abandoned one")
        };
        for r in results {
            assert!(matches!(r, Ok(Ok(()))), "round {round}: {r:?}");
        }
        assert!(log.offsets().durable_offset >= second);
    }
    assert!(
        log.in_flight.lock().is_empty(),
        "no round is left in flight"
    );
}
