//! The partition log on a simulated disk ([`super::storage::fault`]): power fails at random
//! points while acks=all appenders and a reader run, and a failing fsync takes the partition
//! offline. What must hold: every acknowledged record survives, at its offset; offsets stay
//! contiguous; no reader saw a record that a crash took back; after a failed fsync nothing
//! is called durable that was not synced before it.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

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
    match Log::open_with(
        dir,
        "t",
        0,
        Arc::new(config()),
        storage.shared(),
        Shutdown::Unclean,
    ) {
        Ok(log) => log,
        Err(e) => panic!("open log: {e}"),
    }
}

/// `(key, value)` of a record, as compared across a crash.
type Kv = (Option<bytes::Bytes>, Option<bytes::Bytes>);

fn kv(r: &Record) -> Kv {
    (r.key.clone(), r.value.clone())
}

/// Every record from the log start to the end; a failed read panics naming `context`.
fn read_everything(log: &Log, context: &str) -> Vec<Record> {
    let mut out = Vec::new();
    let mut offset = log.offsets().log_start_offset;
    loop {
        let res = match log.read(offset, 64 << 10) {
            Ok(r) => r,
            Err(e) => panic!("{context}: read at {offset}: {e}"),
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

/// One acks=all producer: appends batches and counts one acknowledged when `flush_to` says it
/// is durable. Stops at the first error, which only a crash may cause. With `buffered`, its
/// batches may wait in the write buffer until the fsync round (as a Produce appends them);
/// otherwise each is written as it is appended.
async fn producer(
    log: Arc<Log>,
    storage: FaultyStorage,
    tag: String,
    seed: u64,
    buffered: bool,
) -> Vec<(i64, Record)> {
    let mut rng = Rng::new(seed);
    let mut acked = Vec::new();
    for j in 0..12 {
        let n = 1 + rng.below(3) as usize;
        let records: Vec<Record> = (0..n)
            .map(|r| {
                let pad = "x".repeat(rng.below(300) as usize);
                let value = format!("{tag}-{j}-{r}-{pad}");
                Record::new(j, Some(tag.as_bytes()), Some(value.as_bytes()))
            })
            .collect();
        let batch = records_to_batch(&records);
        let appended = if buffered {
            log.append_buffered(&batch, ProducerInfo::NONE)
        } else {
            log.append_unflushed(&batch, ProducerInfo::NONE)
        };
        let info = match appended {
            Ok(info) => info,
            Err(e) => {
                assert!(storage.crashed(), "append failed without a crash: {e}");
                break;
            }
        };
        if let Err(e) = log.flush_to(info.last_offset + 1).await {
            assert!(storage.crashed(), "flush failed without a crash: {e}");
            break;
        }
        assert!(log.offsets().durable_offset > info.last_offset);
        for (i, r) in records.into_iter().enumerate() {
            acked.push((info.base_offset + i as i64, r));
        }
        tokio::task::yield_now().await;
    }
    acked
}

/// A consumer that reads only what is durable, as a fetch bounded by the high watermark does.
async fn reader(log: Arc<Log>, storage: FaultyStorage, done: Arc<AtomicBool>) -> Vec<Record> {
    let mut seen = Vec::new();
    let mut next = log.offsets().log_start_offset;
    loop {
        let finished = done.load(Ordering::Acquire);
        let durable = log.offsets().durable_offset;
        if next < durable {
            match log.read(next, 2048) {
                Ok(res) => {
                    for b in &res.batches {
                        for r in batch_to_records(&b.records).unwrap_or_default() {
                            if r.offset >= next && r.offset < durable {
                                next = r.offset + 1;
                                seen.push(r);
                            }
                        }
                    }
                }
                Err(e) => {
                    assert!(storage.crashed(), "read failed without a crash: {e}");
                    return seen;
                }
            }
        } else if finished {
            return seen;
        }
        tokio::task::yield_now().await;
    }
}

/// What the log must hold after each crash: every record acknowledged or read so far.
#[derive(Default)]
struct Model {
    must_have: BTreeMap<i64, Kv>,
}

impl Model {
    fn require(&mut self, offset: i64, r: &Record, what: &str) {
        let prev = self.must_have.insert(offset, kv(r));
        assert!(
            prev.is_none_or(|p| p == kv(r)),
            "{what} record at offset {offset} differs from an earlier one"
        );
    }

    fn check(&self, log: &Log, context: &str) {
        let records = read_everything(log, context);
        let start = log.offsets().log_start_offset;
        for (i, r) in records.iter().enumerate() {
            assert_eq!(
                r.offset,
                start + i as i64,
                "{context}: offsets are contiguous"
            );
        }
        let values: HashSet<&Option<bytes::Bytes>> = records.iter().map(|r| &r.value).collect();
        assert_eq!(values.len(), records.len(), "{context}: no record twice");
        let end = log.end_offset();
        for (&offset, want) in &self.must_have {
            assert!(
                offset < end,
                "{context}: acknowledged or read offset {offset} is gone (log ends at {end})"
            );
            let got = kv(&records[(offset - start) as usize]);
            assert_eq!(&got, want, "{context}: offset {offset} changed");
        }
    }
}

/// One scenario: a few cycles on one directory of run, crash at a random point, reopen, check.
/// With `buffered`, half the producers append through the write buffer.
async fn power_loss_scenario(seed: u64, cycles: u64, buffered: bool) {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let mut rng = Rng::new(seed);
    let storage = FaultyStorage::new();
    let mut model = Model::default();
    let mut log = Arc::new(open_on(dir.path(), &storage));
    for cycle in 0..cycles {
        // About 3 operations per append (write, sync, and now and then a roll), so this puts
        // most crash points inside the run and some after it.
        storage.crash_after(rng.below(200));
        let done = Arc::new(AtomicBool::new(false));
        let read = tokio::spawn(reader(log.clone(), storage.clone(), done.clone()));
        let producers: Vec<_> = (0..4)
            .map(|p| {
                let tag = format!("s{seed}-c{cycle}-p{p}");
                let buffered = buffered && p % 2 == 0;
                let seed = rng.next_u64();
                tokio::spawn(producer(log.clone(), storage.clone(), tag, seed, buffered))
            })
            .collect();
        for task in producers {
            match task.await {
                Ok(acked) => {
                    for (offset, r) in &acked {
                        model.require(*offset, r, "acknowledged");
                    }
                }
                Err(e) => panic!("seed {seed} cycle {cycle}: producer panicked: {e}"),
            }
        }
        done.store(true, Ordering::Release);
        let seen = match read.await {
            Ok(seen) => seen,
            Err(e) => panic!("seed {seed} cycle {cycle}: reader panicked: {e}"),
        };
        for r in &seen {
            model.require(r.offset, r, "read");
        }
        // The power fails (if it has not yet); the process dies without closing anything.
        storage.crash_now();
        drop(log);
        if let Err(e) = storage.power_loss(&mut rng) {
            panic!("seed {seed} cycle {cycle}: power loss: {e}");
        }
        log = match Log::open_with(
            dir.path(),
            "t",
            0,
            Arc::new(config()),
            storage.shared(),
            Shutdown::Unclean,
        ) {
            Ok(l) => Arc::new(l),
            Err(e) => panic!("seed {seed} cycle {cycle}: reopen after power loss: {e}"),
        };
        model.check(&log, &format!("seed {seed} cycle {cycle}"));
        let o = log.offsets();
        assert_eq!(
            o.durable_offset, o.log_end_offset,
            "what survived a crash is durable"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_power_loss_at_random_points() {
    // 70 scenarios of 3 crash cycles: 210 crashes, each at a seeded random point.
    for seed in 0..70 {
        power_loss_scenario(seed, 3, false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_power_loss_with_buffered_appends() {
    // The same sweep with half the producers appending through the write buffer, so crashes
    // fall before, inside and after the writes of buffered batches (alone, or together with
    // a batch written at once).
    for seed in 1000..1070 {
        power_loss_scenario(seed, 3, true).await;
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

/// `e` is the partition's offline error, its message holding each of `needles`.
fn assert_offline_because(e: &BrokerError, needles: &[&str]) {
    assert!(
        matches!(e, BrokerError::PartitionOffline { .. }),
        "expected the partition offline, got {e}"
    );
    assert_eq!(error_code(e), 56, "KAFKA_STORAGE_ERROR");
    let msg = e.to_string();
    for needle in needles {
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    }
}

fn assert_offline(e: &BrokerError) {
    assert_offline_because(e, &["t-0", "os error 5", "restart the broker"]);
}

/// A log on a simulated disk holding `n` acknowledged records (`rec(0..n)`).
async fn log_with_acked(n: i64) -> (tempfile::TempDir, FaultyStorage, Log) {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let storage = FaultyStorage::new();
    let log = open_on(dir.path(), &storage);
    for i in 0..n {
        if let Err(e) = append_acked(&log, i).await {
            panic!("append before the failure: {e}");
        }
    }
    (dir, storage, log)
}

/// Closes nothing (as a crash), reopens the log and checks that its first records are
/// `rec(0..n)`, the acknowledged ones.
fn reopen_holding_acked(dir: &Path, storage: &FaultyStorage, log: Arc<Log>, n: usize) -> Log {
    match Arc::try_unwrap(log) {
        Ok(log) => drop(log),
        Err(_) => panic!("the log is still shared"),
    }
    let log = open_on(dir, storage);
    let records = read_everything(&log, "reopened log");
    assert!(records.len() >= n);
    for (i, r) in records.iter().take(n).enumerate() {
        assert_eq!(kv(r), kv(&rec(i as i64)), "acknowledged record {i}");
    }
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_failure_takes_the_partition_offline() {
    let (dir, storage, log) = log_with_acked(5).await;
    let log = Arc::new(log);
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
    if let Err(e) = storage.power_loss(&mut Rng::new(7)) {
        panic!("power loss: {e}");
    }
    let log = reopen_holding_acked(dir.path(), &storage, log, 5);
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

#[test]
fn a_segment_after_a_lost_tail_is_dropped_at_recovery() {
    // The crash that the power-loss test found: the closed segment lost its unsynced tail
    // while the next segment's file survived, which left a hole in the offsets.
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let storage = FaultyStorage::new();
    {
        let log = open_on(dir.path(), &storage);
        let mut i = 0;
        while log.offsets().segments < 3 {
            let value = "v".repeat(500);
            let r = Record::new(i, Some(b"k"), Some(value.as_bytes()));
            if let Err(e) = log.append_unflushed(&records_to_batch(&[r]), ProducerInfo::NONE) {
                panic!("append: {e}");
            }
            i += 1;
        }
    }
    // Cut the first segment's last frame, as a lost unsynced tail would.
    let first = dir.path().join(segment::file_name(0, "log"));
    let len = std::fs::metadata(&first).map_or(0, |m| m.len());
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&first) {
        f.set_len(len - 8).ok();
    }
    let log = open_on(dir.path(), &storage);
    let records = read_everything(&log, "reopened log");
    assert!(!records.is_empty());
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.offset, i as i64, "offsets are contiguous");
    }
    assert_eq!(log.end_offset(), records.len() as i64);
    assert_eq!(log.offsets().segments, 1, "later segments are dropped");
    // Appends continue right after the cut.
    match log.append_unflushed(&records_to_batch(&[rec(0)]), ProducerInfo::NONE) {
        Ok(info) => assert_eq!(info.base_offset, records.len() as i64),
        Err(e) => panic!("append after recovery: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_segments_whose_tails_were_not_synced_are_recovered() {
    // Segments rolled after the last fsync round: the power loss may leave a closed segment
    // at its full length with its unsynced tail garbled or zeroed, and its indexes (written at
    // the roll) whole, so they match the file. Every such segment must be checked at
    // recovery, not only the last one.
    for seed in 0..2000 {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("tempdir: {e}"),
        };
        let storage = FaultyStorage::new();
        let mut rng = Rng::new(seed);
        let acked = 1 + rng.below(6) as i64;
        {
            let log = open_on(dir.path(), &storage);
            for i in 0..acked {
                if let Err(e) = append_acked(&log, i).await {
                    panic!("seed {seed}: acked append: {e}");
                }
            }
            // Unsynced appends that roll to a new segment four times.
            let segments = log.offsets().segments;
            let mut i = acked;
            while log.offsets().segments < segments + 4 {
                let value = format!("{i}-{}", "v".repeat(300 + rng.below(300) as usize));
                let r = Record::new(i, Some(b"k"), Some(value.as_bytes()));
                if let Err(e) = log.append_unflushed(&records_to_batch(&[r]), ProducerInfo::NONE) {
                    panic!("seed {seed}: append: {e}");
                }
                i += 1;
            }
            storage.crash_now();
        }
        if let Err(e) = storage.power_loss(&mut rng) {
            panic!("seed {seed}: power loss: {e}");
        }
        let log = open_on(dir.path(), &storage);
        let mut model = Model::default();
        for i in 0..acked {
            model.require(i, &rec(i), "acknowledged");
        }
        model.check(&log, &format!("seed {seed}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_checks_every_segment_past_the_recovery_point() {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let checkpoint = || match read_offset_checkpoint(&FileStorage, dir.path(), RECOVERY_POINT_FILE)
    {
        Ok(point) => point,
        Err(e) => panic!("read the recovery point: {e}"),
    };
    let config = Arc::new(config());
    let append = |log: &Log, i: i64| {
        let value = format!("{i}-{}", "v".repeat(400));
        let batch = records_to_batch(&[Record::new(i, Some(b"k"), Some(value.as_bytes()))]);
        match log.append_unflushed(&batch, ProducerInfo::NONE) {
            Ok(info) => info,
            Err(e) => panic!("append {i}: {e}"),
        }
    };
    let second = {
        let log = match Log::open(dir.path(), "t", 0, config.clone()) {
            Ok(log) => log,
            Err(e) => panic!("open: {e}"),
        };
        // Acknowledged appends that roll once: the round after the roll persists the new
        // segment's base as the recovery point.
        let mut i = 0;
        while log.offsets().segments < 2 {
            append(&log, i);
            if let Err(e) = log.flush().await {
                panic!("flush: {e}");
            }
            i += 1;
        }
        let second = log.next_segment_base(0).unwrap_or(-1);
        assert_eq!(checkpoint(), Some(second));
        // Then unsynced appends roll twice more; the process dies without a round.
        while log.offsets().segments < 4 {
            append(&log, i);
            i += 1;
        }
        assert_eq!(
            checkpoint(),
            Some(second),
            "no round, no new recovery point"
        );
        second
    };
    // The power loss garbled the second segment's unsynced tail at its full length, so its
    // indexes written at the roll still match it.
    let path = dir.path().join(segment::file_name(second, "log"));
    let len = std::fs::metadata(&path).map_or(0, |m| m.len());
    match std::fs::OpenOptions::new().write(true).open(&path) {
        Ok(f) => {
            if let Err(e) = std::os::unix::fs::FileExt::write_all_at(&f, &[0u8; 64], len - 64) {
                panic!("garble: {e}");
            }
        }
        Err(e) => panic!("open {}: {e}", path.display()),
    }
    let log = match Log::open(dir.path(), "t", 0, config) {
        Ok(log) => log,
        Err(e) => panic!("reopen: {e}"),
    };
    let records = read_everything(&log, "recovered log");
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.offset, i as i64, "offsets are contiguous");
    }
    assert!(
        records.len() as i64 > second,
        "the acknowledged records stay"
    );
    assert_eq!(
        log.offsets().segments,
        2,
        "the segment after the cut is dropped"
    );
    // Recovery made what it kept durable and moved the recovery point to the last segment.
    assert_eq!(checkpoint(), Some(second));
    let o = log.offsets();
    assert_eq!(o.durable_offset, o.log_end_offset);
}

#[tokio::test]
async fn a_compacted_log_reopened_without_its_indexes_keeps_every_segment() {
    // Compaction empties whole batches, and a crash can take the unsynced index files with
    // it; recovery must not take compaction's holes for lost writes.
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let config = LogConfig {
        cleanup_policy: crate::config::CleanupPolicy {
            compact: true,
            delete: false,
        },
        ..config()
    };
    let storage = FaultyStorage::new();
    let open = |storage: &FaultyStorage| match Log::open_with(
        dir.path(),
        "t",
        0,
        Arc::new(config.clone()),
        storage.shared(),
        Shutdown::Unclean,
    ) {
        Ok(log) => log,
        Err(e) => panic!("open: {e}"),
    };
    let log = open(&storage);
    // Every batch of a segment but the newest is superseded by the next segment's.
    for version in 0..8 {
        for k in 0..6 {
            let value = format!("k{k}-v{version}-{}", "x".repeat(200));
            let r = Record::new(0, Some(format!("k{k}").as_bytes()), Some(value.as_bytes()));
            if let Err(e) = log.append_unflushed(&records_to_batch(&[r]), ProducerInfo::NONE) {
                panic!("append: {e}");
            }
        }
    }
    // Durable, so readers see it (the high watermark is the durable offset).
    if let Err(e) = log.flush().await {
        panic!("flush: {e}");
    }
    let segments = log.offsets().segments;
    assert!(segments > 2, "{segments} segments");
    let stats = match log.compact_until(i64::MAX / 2, None).await {
        Ok(s) => s,
        Err(e) => panic!("compact: {e}"),
    };
    assert!(stats.segments_cleaned > 0, "{stats:?}");
    let before = read_everything(&log, "compacted log");
    let end = log.end_offset();
    drop(log);
    for entry in std::fs::read_dir(dir.path())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with("index") {
            std::fs::remove_file(entry.path()).ok();
        }
    }
    let log = open(&storage);
    assert_eq!(log.offsets().segments, segments);
    assert_eq!(log.end_offset(), end);
    let after = read_everything(&log, "reopened log");
    assert_eq!(after.len(), before.len());
    assert!(
        after
            .iter()
            .zip(&before)
            .all(|(a, b)| kv(a) == kv(b) && a.offset == b.offset)
    );
}

#[tokio::test]
async fn a_small_read_inside_an_emptied_batch_reaches_the_next_records() {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let config = LogConfig {
        cleanup_policy: crate::config::CleanupPolicy {
            compact: true,
            delete: false,
        },
        ..config()
    };
    let log = match Log::open(dir.path(), "t", 0, Arc::new(config)) {
        Ok(log) => log,
        Err(e) => panic!("open: {e}"),
    };
    // Each segment's last batch holds only a key that the next segment writes again.
    for i in 0..40 {
        let key = if i % 2 == 0 { "even" } else { "odd" };
        let value = format!("{i}-{}", "x".repeat(600));
        let r = Record::new(0, Some(key.as_bytes()), Some(value.as_bytes()));
        if let Err(e) = log.append_unflushed(&records_to_batch(&[r]), ProducerInfo::NONE) {
            panic!("append: {e}");
        }
    }
    if let Err(e) = log.flush().await {
        panic!("flush: {e}");
    }
    if let Err(e) = log.compact_until(i64::MAX / 2, None).await {
        panic!("compact: {e}");
    }
    let end = log.end_offset();
    let mut offset = 0;
    while offset < end {
        let res = match log.read(offset, 1) {
            Ok(r) => r,
            Err(e) => panic!("read at {offset}: {e}"),
        };
        let Some(first) = res.batches.first() else {
            panic!("a 1-byte read at {offset} returned no records before the end {end}")
        };
        assert!(first.records.num_rows() > 0);
        assert!(res.next_offset > offset);
        offset = res.next_offset;
    }
}

/// Appends one record through the write buffer and waits until it is durable, as a Produce
/// with acks=all does.
async fn append_acked_buffered(log: &Log, i: i64) -> Result<AppendInfo> {
    let info = log.append_buffered(&records_to_batch(&[rec(i)]), ProducerInfo::NONE)?;
    log.acknowledge(info.last_offset + 1, Ack::All).await?;
    Ok(info)
}

fn assert_disk_full_offline(e: &BrokerError) {
    let needles = [
        "t-0",
        "write of",
        "os error 28",
        "free space",
        "restart the broker",
    ];
    assert_offline_because(e, &needles);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_of_buffered_batches_takes_the_partition_offline() {
    let (dir, storage, log) = log_with_acked(5).await;
    let log = Arc::new(log);
    // Buffered, with offsets, not yet written: then the disk fills.
    for i in 5..8 {
        if let Err(e) = log.append_buffered(&records_to_batch(&[rec(i)]), ProducerInfo::NONE) {
            panic!("buffered append: {e}");
        }
    }
    storage.fail_writes_under(dir.path());
    match log.acknowledge(8, Ack::All).await {
        Ok(()) => panic!("acknowledged buffered records whose write failed"),
        Err(e) => assert_disk_full_offline(&e),
    }
    assert!(log.is_offline());
    assert_eq!(log.offsets().durable_offset, 5, "nothing new is durable");
    // Freeing space does not bring it back: offsets 5..8 were given out, and are not there.
    storage.heal_writes();
    match append_acked_buffered(&log, 9).await {
        Ok(info) => panic!("appended {info:?} to an offline partition"),
        Err(e) => assert_disk_full_offline(&e),
    }
    let res = match log.read(0, 1 << 20) {
        Ok(r) => r,
        Err(e) => panic!("read of durable records: {e}"),
    };
    assert_eq!(res.record_count(), 5, "what was durable is still read");
    drop(res);

    // A restart serves what was acknowledged, and nothing else, and takes writes again.
    let log = reopen_holding_acked(dir.path(), &storage, log, 5);
    assert_eq!(log.end_offset(), 5);
    match append_acked_buffered(&log, 10).await {
        Ok(info) => assert_eq!(info.base_offset, 5),
        Err(e) => panic!("append after restart: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_of_a_batch_of_its_own_fails_that_append_only() {
    let (dir, storage, log) = log_with_acked(3).await;
    storage.fail_writes_under(dir.path());
    match log.append_unflushed(&records_to_batch(&[rec(3)]), ProducerInfo::NONE) {
        Ok(info) => panic!("appended {info:?} although its write failed"),
        Err(e) => {
            assert!(matches!(e, BrokerError::Io { .. }), "{e}");
            assert!(e.to_string().contains("os error 28"), "{e}");
        }
    }
    assert!(!log.is_offline(), "nothing written before is in doubt");
    assert_eq!(log.end_offset(), 3, "the failed batch took no offsets");
    storage.heal_writes();
    match append_acked(&log, 4).await {
        Ok(info) => assert_eq!(info.base_offset, 3),
        Err(e) => panic!("append after space was freed: {e}"),
    }
    let values: Vec<Kv> = read_everything(&log, "log after the disk had room again")
        .iter()
        .map(kv)
        .collect();
    let want: Vec<Kv> = [0, 1, 2, 4].iter().map(|&i| kv(&rec(i))).collect();
    assert_eq!(values, want);
}
