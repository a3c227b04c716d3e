//! The partition log on a simulated disk ([`super::storage::fault`]): a failing fsync takes
//! the partition offline, and after it nothing is called durable that was not synced before.

use std::path::Path;
use std::sync::Arc;

use super::storage::fault::{FaultyStorage, Rng};
use super::*;
use crate::config::LogConfig;
use crate::kafka::handlers::error_code;
use crate::record::{Record, batch_to_records, records_to_batch};

/// Small segments and a dense index, so crashes land around rolls and index writes too.
fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 256,
        ..LogConfig::default()
    }
}

fn open_on(dir: &Path, storage: &FaultyStorage) -> Log {
    match Log::open_with(dir, "t", 0, Arc::new(config()), storage.shared()) {
        Ok(log) => log,
        Err(e) => panic!("open log: {e}"),
    }
}

/// `(key, value)` of a record, as compared across a crash.
type Kv = (Option<bytes::Bytes>, Option<bytes::Bytes>);

fn kv(r: &Record) -> Kv {
    (r.key.clone(), r.value.clone())
}

/// Every record from the log start to the end.
fn read_everything(log: &Log) -> Vec<Record> {
    let mut out = Vec::new();
    let mut offset = log.offsets().log_start_offset;
    loop {
        let res = match log.read(offset, 64 << 10) {
            Ok(r) => r,
            Err(e) => panic!("read at {offset}: {e}"),
        };
        for b in &res.batches {
            out.extend(batch_to_records(&b.records).unwrap_or_default());
        }
        if res.next_offset == offset {
            return out;
        }
        offset = res.next_offset;
    }
}

fn rec(i: i64) -> Record {
    Record::new(i, Some(b"k"), Some(format!("value-{i}").as_bytes()))
}

/// Appends one record and waits until it is durable, as an acks=all produce does.
async fn append_acked(log: &Log, i: i64) -> Result<AppendInfo> {
    let info = log.append_unflushed(&records_to_batch(&[rec(i)]), ProducerInfo::NONE)?;
    log.flush_to(info.last_offset + 1).await?;
    Ok(info)
}

fn assert_offline(e: &BrokerError) {
    assert!(
        matches!(e, BrokerError::PartitionOffline { .. }),
        "expected the partition offline, got {e}"
    );
    assert_eq!(error_code(e), 56, "KAFKA_STORAGE_ERROR");
    let msg = e.to_string();
    for needle in ["t-0", "os error 5", "restart the broker"] {
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_failure_takes_the_partition_offline() {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let storage = FaultyStorage::new();
    let log = Arc::new(open_on(dir.path(), &storage));
    for i in 0..5 {
        if let Err(e) = append_acked(&log, i).await {
            panic!("append before the failure: {e}");
        }
    }
    let durable = log.offsets().durable_offset;
    assert_eq!(durable, 5);

    storage.fail_syncs_under(dir.path());
    // Several acks=all producers wait on the failing fsync round; each gets the error.
    let waiters: Vec<_> = (0..4)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { append_acked(&log, 100 + i).await })
        })
        .collect();
    for w in waiters {
        match w.await {
            Ok(Ok(info)) => panic!("acknowledged {info:?} although its fsync failed"),
            Ok(Err(e)) => assert_offline(&e),
            Err(e) => panic!("waiter panicked: {e}"),
        }
    }
    assert!(log.is_offline());
    assert_eq!(
        log.offsets().durable_offset,
        durable,
        "nothing new is durable"
    );

    // Later writes fail at once, and no fsync is tried again.
    let syncs_failed = storage.syncs_failed();
    match log.append_unflushed(&records_to_batch(&[rec(9)]), ProducerInfo::NONE) {
        Ok(info) => panic!("appended {info:?} to an offline partition"),
        Err(e) => assert_offline(&e),
    }
    match log.flush().await {
        Ok(()) => panic!("flushed an offline partition"),
        Err(e) => assert_offline(&e),
    }
    assert_eq!(
        storage.syncs_failed(),
        syncs_failed,
        "a failed fsync is never retried"
    );
    assert_eq!(log.offsets().durable_offset, durable);

    // What was durable can still be read.
    let res = match log.read(0, 1 << 20) {
        Ok(r) => r,
        Err(e) => panic!("read of durable records: {e}"),
    };
    assert!(res.record_count() >= 5);

    // A restart (after the worst a power loss can do) recovers normally.
    storage.crash_now();
    drop(res);
    match Arc::try_unwrap(log) {
        Ok(log) => drop(log),
        Err(_) => panic!("the log is still shared"),
    }
    if let Err(e) = storage.power_loss(&mut Rng::new(7)) {
        panic!("power loss: {e}");
    }
    let log = open_on(dir.path(), &storage);
    let records = read_everything(&log);
    assert!(records.len() >= 5);
    for (i, r) in records.iter().take(5).enumerate() {
        assert_eq!(kv(r), kv(&rec(i as i64)), "acknowledged record {i}");
    }
    assert!(!log.is_offline());
    if let Err(e) = append_acked(&log, 200).await {
        panic!("append after restart: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_directory_fsync_takes_the_partition_offline() {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let storage = FaultyStorage::new();
    // A new log's first flush syncs the directory too (its segment file is new).
    let log = open_on(dir.path(), &storage);
    storage.fail_syncs_of(dir.path());
    match append_acked(&log, 0).await {
        Ok(info) => panic!("acknowledged {info:?} although the directory fsync failed"),
        Err(e) => {
            assert!(matches!(e, BrokerError::PartitionOffline { .. }), "{e}");
            assert!(e.to_string().contains(&dir.path().display().to_string()));
        }
    }
    assert_eq!(log.offsets().durable_offset, 0);
    assert!(log.is_offline());
}
