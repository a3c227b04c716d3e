//! Transactions in the partition log: transactional batches hold back the last stable offset,
//! markers end them, `read_committed` reads stop at the LSO and list the aborted transactions,
//! and all of it survives restarts (clean and unclean) and compaction.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::config::{CleanupPolicy, LogConfig};
use crate::record::{Record, batch_to_records, records_to_batch};

fn config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        flush_on_ack: false,
        segment_bytes,
        index_interval_bytes: 512,
        ..LogConfig::default()
    }
}

fn open(dir: &Path, config: LogConfig, shutdown: Shutdown) -> Log {
    match Log::open_after(dir, "t", 0, Arc::new(config), shutdown) {
        Ok(log) => log,
        Err(e) => panic!("open log: {e}"),
    }
}

fn tempdir() -> tempfile::TempDir {
    match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    }
}

fn records(tag: &str, n: usize) -> RecordBatch {
    let recs: Vec<Record> = (0..n)
        .map(|i| {
            Record::new(
                now_ms(),
                Some(format!("{tag}-key-{i}").as_bytes()),
                Some(format!("{tag}-{i}").as_bytes()),
            )
        })
        .collect();
    records_to_batch(&recs)
}

fn txn(pid: i64, epoch: i16, seq: i32) -> ProducerInfo {
    ProducerInfo {
        producer_id: pid,
        producer_epoch: epoch,
        base_sequence: seq,
        attributes: attributes::TRANSACTIONAL,
    }
}

fn append(log: &Log, batch: &RecordBatch, p: ProducerInfo) -> AppendInfo {
    match log.append_unflushed(batch, p) {
        Ok(info) => info,
        Err(e) => panic!("append: {e}"),
    }
}

fn marker(log: &Log, pid: i64, epoch: i16, result: TxnResult) -> AppendInfo {
    match log.append_marker_unflushed(pid, epoch, result, 0) {
        Ok(info) => info,
        Err(e) => panic!("marker: {e}"),
    }
}

/// Values of every data record from `offset` up to where the isolation level lets a reader
/// go, dropping aborted transactions' records as a Kafka client does; plus the aborted list.
fn read_values(log: &Log, mut offset: i64, isolation: Isolation) -> (Vec<String>, Vec<AbortedTxn>) {
    let mut out = Vec::new();
    let mut aborted_all = Vec::new();
    loop {
        let res = match log.read_isolated(offset, 1000, isolation) {
            Ok(r) => r,
            Err(e) => panic!("read at {offset}: {e}"),
        };
        // Kafka's consumer rule: a listed transaction applies from its first offset until its
        // producer's next marker (one producer may have several aborted transactions listed).
        let mut pending = res.aborted.clone();
        pending.sort_by_key(|a| a.first_offset);
        let mut pending = pending.into_iter().peekable();
        let mut active = Vec::new();
        for a in &res.aborted {
            if !aborted_all.contains(a) {
                aborted_all.push(*a);
            }
        }
        for b in &res.batches {
            let p = &b.header.producer;
            while let Some(a) = pending.next_if(|a| a.first_offset <= b.header.base_offset) {
                active.push(a.producer_id);
            }
            if p.attributes & attributes::CONTROL != 0 {
                active.retain(|&pid| pid != p.producer_id);
                continue;
            }
            if p.attributes & attributes::TRANSACTIONAL != 0 && active.contains(&p.producer_id) {
                continue;
            }
            for r in batch_to_records(&b.records).unwrap_or_default() {
                out.push(String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into());
            }
        }
        if res.next_offset == offset {
            return (out, aborted_all);
        }
        offset = res.next_offset;
    }
}

fn committed(log: &Log) -> Vec<String> {
    read_values(log, 0, Isolation::ReadCommitted).0
}

fn uncommitted(log: &Log) -> Vec<String> {
    read_values(log, 0, Isolation::ReadUncommitted).0
}

#[test]
fn an_open_transaction_holds_back_read_committed_until_its_marker() {
    let dir = tempdir();
    let log = open(dir.path(), config(1 << 20), Shutdown::Unclean);
    append(&log, &records("plain", 2), ProducerInfo::NONE);
    let first = append(&log, &records("a", 3), txn(7, 0, 0));
    append(&log, &records("plain2", 1), ProducerInfo::NONE);
    assert_eq!(log.last_stable_offset(), first.base_offset);
    assert_eq!(log.open_transactions(), vec![(7, first.base_offset)]);
    assert_eq!(committed(&log), vec!["plain-0", "plain-1"]);
    assert_eq!(
        uncommitted(&log).len(),
        6,
        "read_uncommitted sees everything"
    );

    let m = marker(&log, 7, 0, TxnResult::Commit);
    assert_eq!(log.last_stable_offset(), m.last_offset + 1);
    assert!(log.open_transactions().is_empty());
    assert_eq!(
        committed(&log),
        vec!["plain-0", "plain-1", "a-0", "a-1", "a-2", "plain2-0"]
    );
}

#[test]
fn aborted_transactions_are_listed_for_read_committed_readers() {
    let dir = tempdir();
    let log = open(dir.path(), config(1 << 20), Shutdown::Unclean);
    let a = append(&log, &records("a", 2), txn(1, 0, 0));
    append(&log, &records("b", 2), txn(2, 0, 0));
    append(&log, &records("a-more", 1), txn(1, 0, 2));
    let abort = marker(&log, 1, 0, TxnResult::Abort);
    // Producer 2 is still open, so the LSO stays at its first offset.
    assert_eq!(log.last_stable_offset(), a.base_offset + 2);
    marker(&log, 2, 0, TxnResult::Commit);
    let (values, aborted) = read_values(&log, 0, Isolation::ReadCommitted);
    assert_eq!(values, vec!["b-0", "b-1"]);
    assert_eq!(aborted.len(), 1, "{aborted:?}");
    assert_eq!(aborted[0].producer_id, 1);
    assert_eq!(aborted[0].first_offset, a.base_offset);
    assert_eq!(aborted[0].last_offset, abort.base_offset);
    let (_, none) = read_values(&log, 0, Isolation::ReadUncommitted);
    assert!(none.is_empty(), "read_uncommitted gets no aborted list");
    // A read that starts after the aborted transaction ends gets no entry for it.
    let after = read_values(&log, abort.base_offset + 1, Isolation::ReadCommitted).1;
    assert!(after.is_empty(), "{after:?}");
}

#[test]
fn writes_that_break_the_transaction_rules_are_refused_and_write_nothing() {
    let dir = tempdir();
    let log = open(dir.path(), config(1 << 20), Shutdown::Unclean);
    append(&log, &records("a", 1), txn(5, 3, 0));
    let end = log.end_offset();

    let plain_from_same_producer = ProducerInfo {
        attributes: 0,
        ..txn(5, 3, 1)
    };
    let e = log.append_unflushed(&records("x", 1), plain_from_same_producer);
    assert!(matches!(e, Err(BrokerError::InvalidTxnState(_))), "{e:?}");

    let control = ProducerInfo {
        attributes: attributes::TRANSACTIONAL | attributes::CONTROL,
        ..txn(5, 3, 1)
    };
    let e = log.append_unflushed(&records("x", 1), control);
    assert!(matches!(e, Err(BrokerError::InvalidRecords(_))), "{e:?}");

    let no_producer = txn(-1, -1, -1);
    let e = log.append_unflushed(&records("x", 1), no_producer);
    assert!(matches!(e, Err(BrokerError::InvalidRecords(_))), "{e:?}");

    let fenced_marker = log.append_marker_unflushed(5, 2, TxnResult::Commit, 0);
    assert!(
        matches!(fenced_marker, Err(BrokerError::InvalidProducerEpoch { .. })),
        "{fenced_marker:?}"
    );
    assert_eq!(log.end_offset(), end, "nothing was written");

    // The coordinator fences epoch 3 with an abort at epoch 4; epoch 3 is refused after it,
    // with or without a sequence.
    marker(&log, 5, 4, TxnResult::Abort);
    let e = log.append_unflushed(&records("x", 1), txn(5, 3, 1));
    assert!(
        matches!(e, Err(BrokerError::InvalidProducerEpoch { .. })),
        "{e:?}"
    );
    let e = log.append_unflushed(&records("x", 1), txn(5, 3, -1));
    assert!(
        matches!(e, Err(BrokerError::InvalidProducerEpoch { .. })),
        "{e:?}"
    );
    // The new epoch starts again at sequence 0.
    append(&log, &records("b", 1), txn(5, 4, 0));
    // A marker for a producer with nothing open here is written, and changes nothing.
    marker(&log, 9, 0, TxnResult::Commit);
    assert_eq!(log.open_transactions().len(), 1);
}

/// Writes, over several small segments, committed and aborted transactions and one left open.
fn mixed_history(log: &Log) -> i64 {
    for round in 0..6 {
        let tag = format!("c{round}");
        append(log, &records(&tag, 8), txn(1, 0, round * 8));
        marker(log, 1, 0, TxnResult::Commit);
        let tag = format!("x{round}");
        append(log, &records(&tag, 8), txn(2, round as i16, 0));
        marker(log, 2, round as i16, TxnResult::Abort);
    }
    append(log, &records("open", 2), txn(3, 0, 0)).base_offset
}

#[tokio::test]
async fn transactions_survive_clean_and_unclean_restarts_and_lost_indexes() {
    let dir = tempdir();
    let (expected, open_at) = {
        let log = open(dir.path(), config(700), Shutdown::Unclean);
        let open_at = mixed_history(&log);
        assert!(log.offsets().segments > 3, "the history spans segments");
        let expected = read_values(&log, 0, Isolation::ReadCommitted);
        if let Err(e) = log.close().await {
            panic!("close: {e}");
        }
        (expected, open_at)
    };
    assert_eq!(expected.0.len(), 48, "six committed rounds of eight");
    assert_eq!(expected.1.len(), 6, "six aborted rounds");

    let check = |log: &Log, what: &str| {
        assert_eq!(
            log.last_stable_offset(),
            open_at,
            "{what}: the open transaction"
        );
        assert_eq!(log.open_transactions(), vec![(3, open_at)], "{what}");
        assert_eq!(
            read_values(log, 0, Isolation::ReadCommitted),
            expected,
            "{what}"
        );
    };
    let log = open(dir.path(), config(700), Shutdown::Clean);
    check(&log, "clean restart");
    // More appends, then a crash: the snapshot of the clean close is mid-segment.
    append(&log, &records("late", 1), txn(4, 0, 0));
    marker(&log, 4, 0, TxnResult::Abort);
    let expected_after = read_values(&log, 0, Isolation::ReadCommitted);
    if let Err(e) = log.flush().await {
        panic!("flush: {e}");
    }
    drop(log);
    let log = open(dir.path(), config(700), Shutdown::Unclean);
    assert_eq!(log.last_stable_offset(), open_at, "unclean restart");
    assert_eq!(
        read_values(&log, 0, Isolation::ReadCommitted),
        expected_after
    );
    drop(log);

    // Every saved index lost: rebuilt from the markers.
    for entry in std::fs::read_dir(dir.path())
        .into_iter()
        .flatten()
        .flatten()
    {
        if entry.path().extension().is_some_and(|e| e == "txnindex") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let log = open(dir.path(), config(700), Shutdown::Unclean);
    assert_eq!(log.last_stable_offset(), open_at, "rebuilt");
    assert_eq!(
        read_values(&log, 0, Isolation::ReadCommitted),
        expected_after
    );
    // The open transaction still ends normally.
    marker(&log, 3, 0, TxnResult::Commit);
    let (values, _) = read_values(&log, 0, Isolation::ReadCommitted);
    assert_eq!(&values[values.len() - 2..], ["open-0", "open-1"]);
}

#[tokio::test]
async fn compaction_drops_aborted_records_keeps_markers_and_stops_at_the_lso() {
    let dir = tempdir();
    let compacted = LogConfig {
        cleanup_policy: CleanupPolicy {
            delete: false,
            compact: true,
        },
        min_compaction_lag_ms: 0,
        ..config(1024)
    };
    let log = open(dir.path(), compacted, Shutdown::Unclean);
    let keyed = |value: &str| {
        records_to_batch(&[Record::new(now_ms(), Some(b"k"), Some(value.as_bytes()))])
    };
    // Committed value, then an aborted newer value of the same key: the committed one must
    // survive compaction.
    append(&log, &keyed("committed"), txn(1, 0, 0));
    marker(&log, 1, 0, TxnResult::Commit);
    append(&log, &keyed("aborted"), txn(2, 0, 0));
    marker(&log, 2, 0, TxnResult::Abort);
    // Filler to close segments.
    for i in 0..40 {
        let batch = records_to_batch(&[Record::new(
            now_ms(),
            Some(format!("f{i}").as_bytes()),
            Some(&[b'x'; 64][..]),
        )]);
        append(&log, &batch, ProducerInfo::NONE);
    }
    // An open transaction: nothing at or after it is cleaned.
    let open_at = append(&log, &keyed("undecided"), txn(3, 0, 0)).base_offset;
    for i in 0..40 {
        let batch = records_to_batch(&[Record::new(
            now_ms(),
            Some(format!("f{i}").as_bytes()),
            Some(&[b'y'; 64][..]),
        )]);
        append(&log, &batch, ProducerInfo::NONE);
    }
    let before = read_values(&log, 0, Isolation::ReadCommitted).0;
    let stats = match log.compact().await {
        Ok(s) => s,
        Err(e) => panic!("compact: {e}"),
    };
    assert!(stats.segments_cleaned > 0, "{stats:?}");
    let after = read_values(&log, 0, Isolation::ReadCommitted).0;
    assert!(after.contains(&"committed".to_owned()), "{after:?}");
    let all = uncommitted(&log);
    assert!(
        !all.contains(&"aborted".to_owned()),
        "aborted records are removed: {all:?}"
    );
    assert!(all.contains(&"undecided".to_owned()));
    // Filler keys written twice keep only the later value when both were below the LSO;
    // the later copies are above it, so the first copies stay.
    assert_eq!(
        after.iter().filter(|v| v.starts_with('x')).count(),
        before.iter().filter(|v| v.starts_with('x')).count(),
        "nothing at or after the LSO ({open_at}) shadows older records"
    );
    // Markers stay: the transactions still read as committed and aborted after a restart.
    if let Err(e) = log.close().await {
        panic!("close: {e}");
    }
    drop(log);
    let log = open(dir.path(), compacted_again(), Shutdown::Unclean);
    assert_eq!(log.last_stable_offset(), open_at);
    assert_eq!(read_values(&log, 0, Isolation::ReadCommitted).0, after);
}

fn compacted_again() -> LogConfig {
    LogConfig {
        cleanup_policy: CleanupPolicy {
            delete: false,
            compact: true,
        },
        min_compaction_lag_ms: 0,
        ..config(1024)
    }
}

#[test]
fn the_consumer_view_drops_markers_and_aborted_batches() {
    let dir = tempdir();
    let log = open(dir.path(), config(1 << 20), Shutdown::Unclean);
    append(&log, &records("a", 1), txn(1, 0, 0));
    append(&log, &records("b", 1), txn(2, 0, 0));
    append(&log, &records("plain", 1), ProducerInfo::NONE);
    marker(&log, 1, 0, TxnResult::Abort);
    append(&log, &records("a2", 1), txn(1, 1, 0));
    marker(&log, 2, 0, TxnResult::Commit);
    marker(&log, 1, 1, TxnResult::Commit);
    let values = |isolation| {
        let mut read = match log.read_isolated(0, 1 << 20, isolation) {
            Ok(r) => r,
            Err(e) => panic!("read: {e}"),
        };
        let end = read.next_offset;
        read.retain_consumer_batches();
        assert_eq!(
            read.next_offset, end,
            "the position still moves past what is dropped"
        );
        read.batches
            .iter()
            .flat_map(|b| batch_to_records(&b.records).unwrap_or_default())
            .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
            .collect::<Vec<String>>()
    };
    // Producer 1's first transaction is aborted, its second (a later one) is committed.
    assert_eq!(
        values(Isolation::ReadCommitted),
        vec!["b-0", "plain-0", "a2-0"]
    );
    assert_eq!(
        values(Isolation::ReadUncommitted),
        vec!["a-0", "b-0", "plain-0", "a2-0"],
        "read_uncommitted keeps aborted records, never markers"
    );
}

#[tokio::test]
async fn compaction_removes_obsolete_markers_after_delete_retention() {
    let dir = tempdir();
    let compacted = |segment_bytes| LogConfig {
        cleanup_policy: CleanupPolicy {
            delete: false,
            compact: true,
        },
        min_compaction_lag_ms: 0,
        delete_retention_ms: 0,
        ..config(segment_bytes)
    };
    let log = open(dir.path(), compacted(1 << 20), Shutdown::Unclean);
    let keyed = |key: &str, value: &str| {
        records_to_batch(&[Record::new(
            now_ms() - 10,
            Some(key.as_bytes()),
            Some(value.as_bytes()),
        )])
    };
    append(&log, &keyed("k", "v1"), txn(1, 0, 0));
    let superseded_commit = marker(&log, 1, 0, TxnResult::Commit).base_offset;
    append(&log, &keyed("k", "aborted"), txn(2, 0, 0));
    let abort = marker(&log, 2, 0, TxnResult::Abort).base_offset;
    append(&log, &keyed("k", "v2"), txn(3, 0, 0));
    let live_commit = marker(&log, 3, 0, TxnResult::Commit).base_offset;
    append(&log, &keyed("other", "x"), ProducerInfo::NONE);
    // Close the segment holding all of it: the next append rolls.
    log.set_config(Arc::new(compacted(1)));
    append(&log, &keyed("tail", "y"), ProducerInfo::NONE);
    assert_eq!(log.offsets().segments, 2);

    let markers_at = |log: &Log| -> Vec<i64> {
        let read = match log.read_isolated(0, 1 << 20, Isolation::ReadUncommitted) {
            Ok(r) => r,
            Err(e) => panic!("read: {e}"),
        };
        read.batches
            .iter()
            .filter(|b| b.header.producer.attributes & attributes::CONTROL != 0)
            .map(|b| b.header.base_offset)
            .collect()
    };
    assert_eq!(
        markers_at(&log),
        vec![superseded_commit, abort, live_commit]
    );
    // A second on, so the segment is past delete.retention.ms=0 whatever the clock's grain.
    let stats = match log.compact_until(now_ms() + 1000, None).await {
        Ok(s) => s,
        Err(e) => panic!("compact: {e}"),
    };
    assert_eq!(stats.segments_cleaned, 1, "{stats:?}");
    assert_eq!(
        markers_at(&log),
        vec![live_commit],
        "the abort's and the superseded commit's markers go; the one whose record stays, stays"
    );
    let (values, aborted) = read_values(&log, 0, Isolation::ReadCommitted);
    assert_eq!(values, vec!["v2", "x", "y"]);
    assert!(
        aborted.is_empty(),
        "the abort's index entry went with its marker"
    );
    if let Err(e) = log.close().await {
        panic!("close: {e}");
    }
    drop(log);
    let log = open(dir.path(), compacted(1), Shutdown::Unclean);
    assert_eq!(
        log.last_stable_offset(),
        log.end_offset(),
        "no transaction reopens"
    );
    assert_eq!(
        read_values(&log, 0, Isolation::ReadCommitted).0,
        vec!["v2", "x", "y"]
    );
}

#[tokio::test]
async fn a_fencing_marker_still_fences_after_an_unclean_restart() {
    let dir = tempdir();
    {
        let log = open(dir.path(), config(1 << 20), Shutdown::Unclean);
        append(&log, &records("a", 1), txn(5, 0, 0));
        // The coordinator fences epoch 0 with an abort at epoch 1.
        marker(&log, 5, 1, TxnResult::Abort);
        if let Err(e) = log.flush().await {
            panic!("flush: {e}");
        }
        // Dropped without a close: no producer snapshot; the restart replays the log.
    }
    let log = open(dir.path(), config(1 << 20), Shutdown::Unclean);
    let e = log.append_unflushed(&records("zombie", 1), txn(5, 0, -1));
    assert!(
        matches!(e, Err(BrokerError::InvalidProducerEpoch { .. })),
        "{e:?}"
    );
    let e = log.append_unflushed(&records("zombie", 1), txn(5, 0, 1));
    assert!(
        matches!(e, Err(BrokerError::InvalidProducerEpoch { .. })),
        "{e:?}"
    );
    append(&log, &records("new", 1), txn(5, 1, 0));
}
