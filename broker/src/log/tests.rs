//! Behaviour of the partition log: round trips, segment boundaries, recovery, retention,
//! compaction, limits and group commit.

use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;

use super::cleaner::CrashPoint;
use super::*;
use crate::config::{CleanupPolicy, LogConfig};
use crate::record::{Record, batch_to_records, records_to_batch};

fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 512,
        ..LogConfig::default()
    }
}

/// Opens a log whose high watermark is its end (`log.flush.on.ack` off), so these storage tests
/// read what they append without a flusher, and that takes any timestamp (these tests store
/// extreme ones); visibility and timestamp bounds are tested in `visibility_tests`.
pub(super) fn open(dir: &Path, config: LogConfig) -> Log {
    let config = LogConfig {
        flush_on_ack: false,
        timestamp_after_max_ms: None,
        ..config
    };
    match Log::open(dir, "t", 0, Arc::new(config)) {
        Ok(log) => log,
        Err(e) => panic!("open log: {e}"),
    }
}

fn rec(i: i64) -> Record {
    Record::new(
        1_000 + i,
        Some(format!("key-{}", i % 7).as_bytes()),
        Some(format!("value-{i}").as_bytes()),
    )
}

fn append(log: &Log, records: &[Record]) -> AppendInfo {
    match log.append_unflushed(&records_to_batch(records), ProducerInfo::NONE) {
        Ok(info) => info,
        Err(e) => panic!("append: {e}"),
    }
}

/// Every record from `offset` to the end, reading in small chunks.
pub(super) fn read_all(log: &Log, mut offset: i64) -> Vec<Record> {
    let mut out = Vec::new();
    loop {
        let res = match log.read(offset, 700) {
            Ok(r) => r,
            Err(e) => panic!("read at {offset}: {e}"),
        };
        for b in &res.batches {
            out.extend(batch_to_records(&b.records).unwrap_or_default());
        }
        if res.next_offset == offset {
            assert_eq!(
                offset, res.high_watermark,
                "a read that makes no progress must be at the end"
            );
            return out;
        }
        offset = res.next_offset;
    }
}

pub(super) fn tempdir() -> tempfile::TempDir {
    match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    }
}

#[test]
fn round_trip_keys_nulls_headers_timestamps() {
    let dir = tempdir();
    let log = open(dir.path(), LogConfig::default());
    let records = vec![
        Record::new(5, Some(b"k"), Some(b"v"))
            .with_header("trace", Some(b"abc"))
            .with_header("empty", None),
        Record::new(-1, None, None),
        Record::new(i64::MAX, Some(b""), Some(b"")),
        Record::new(7, None, Some(&[0u8, 255, 1])),
    ];
    let info = append(&log, &records);
    assert_eq!((info.base_offset, info.last_offset), (0, 3));
    let got = read_all(&log, 0);
    let expected: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| Record {
            offset: i as i64,
            ..r.clone()
        })
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn reads_from_any_offset_across_segments() {
    let dir = tempdir();
    // Batches of 7 small records take the compact frame: about 250 bytes each.
    let config = LogConfig {
        segment_bytes: 1024,
        ..small_segments()
    };
    let log = open(dir.path(), config);
    let all: Vec<Record> = (0..300).map(rec).collect();
    for chunk in all.chunks(7) {
        append(&log, chunk);
    }
    assert!(
        log.offsets().segments > 5,
        "small segment.bytes must roll: {:?}",
        log.offsets()
    );
    for start in [0, 1, 6, 7, 8, 99, 150, 298, 299, 300] {
        let got = read_all(&log, start);
        let offsets: Vec<i64> = got.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, (start..300).collect::<Vec<_>>(), "from {start}");
        for r in &got {
            assert_eq!(
                Some(r.value.clone().unwrap_or_default()),
                Some(bytes::Bytes::from(format!("value-{}", r.offset)))
            );
        }
    }
    // Beyond the end is out of range; the end itself is empty.
    assert!(matches!(
        log.read(301, 100),
        Err(BrokerError::OffsetOutOfRange { .. })
    ));
    assert_eq!(log.read(300, 100).map(|r| r.batches.len()).ok(), Some(0));
}

#[test]
fn max_bytes_bounds_reads_but_returns_at_least_one_batch() {
    let dir = tempdir();
    let log = open(dir.path(), LogConfig::default());
    for i in 0..10 {
        append(&log, &[Record::new(i, None, Some(&vec![b'x'; 2000]))]);
    }
    let one = log.read(0, 1).ok().map(|r| r.batches.len());
    assert_eq!(
        one,
        Some(1),
        "a tiny max_bytes still returns the first batch"
    );
    let some = log.read(0, 5000).ok().map(|r| r.batches.len()).unwrap_or(0);
    assert!(
        (1..10).contains(&some),
        "5000 bytes holds some but not all 2 KB batches: {some}"
    );
}

#[test]
fn reopen_keeps_data_and_uses_or_rebuilds_indexes() {
    let dir = tempdir();
    {
        let log = open(dir.path(), small_segments());
        for chunk in (0..200).map(rec).collect::<Vec<_>>().chunks(5) {
            append(&log, chunk);
        }
    }
    let log = open(dir.path(), small_segments());
    assert_eq!(log.end_offset(), 200);
    assert_eq!(read_all(&log, 123).len(), 77);
    drop(log);
    // Damage every persisted index: they must be detected as stale and rebuilt.
    for entry in std::fs::read_dir(dir.path())
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = entry.path();
        if p.extension()
            .is_some_and(|e| e == "index" || e == "timeindex")
        {
            let _ = std::fs::write(&p, b"garbage");
        }
    }
    let log = open(dir.path(), small_segments());
    assert_eq!(log.end_offset(), 200);
    assert_eq!(read_all(&log, 0).len(), 200);
    assert_eq!(
        log.offset_for_timestamp(1_000 + 150).ok().flatten(),
        Some((150, 1_150))
    );
}

#[test]
fn offset_for_timestamp_finds_first_at_or_after() {
    let dir = tempdir();
    let log = open(dir.path(), small_segments());
    // Timestamps 0, 10, 20, ... with one out-of-order record.
    let mut records: Vec<Record> = (0..100)
        .map(|i| Record::new(i * 10, None, Some(b"v")))
        .collect();
    records[50].timestamp_ms = 5;
    for chunk in records.chunks(3) {
        append(&log, chunk);
    }
    assert_eq!(log.offset_for_timestamp(0).ok().flatten(), Some((0, 0)));
    assert_eq!(log.offset_for_timestamp(5).ok().flatten(), Some((1, 10)));
    assert_eq!(
        log.offset_for_timestamp(495).ok().flatten(),
        Some((51, 510))
    );
    assert_eq!(
        log.offset_for_timestamp(990).ok().flatten(),
        Some((99, 990))
    );
    assert_eq!(log.offset_for_timestamp(991).ok().flatten(), None);
}

#[test]
fn bad_input_is_refused_and_nothing_is_appended() {
    let dir = tempdir();
    let log = open(
        dir.path(),
        LogConfig {
            max_message_bytes: 100,
            ..LogConfig::default()
        },
    );
    append(&log, &[rec(0)]);
    let too_big = vec![
        Record::new(1, None, Some(b"ok")),
        Record::new(1, None, Some(&[0u8; 101])),
    ];
    let err = log.append_unflushed(&records_to_batch(&too_big), ProducerInfo::NONE);
    assert!(
        matches!(
            err,
            Err(BrokerError::RecordTooLarge {
                index: 1,
                size: 101,
                max: 100,
                ..
            })
        ),
        "{err:?}"
    );
    // Headers count towards the size too.
    let big_header = vec![Record::new(1, None, Some(b"x")).with_header("h", Some(&[0u8; 100]))];
    assert!(
        log.append_unflushed(&records_to_batch(&big_header), ProducerInfo::NONE)
            .is_err()
    );
    let empty = records_to_batch(&[]);
    assert!(matches!(
        log.append_unflushed(&empty, ProducerInfo::NONE),
        Err(BrokerError::InvalidRecords(_))
    ));
    assert_eq!(log.end_offset(), 1, "nothing appended by refused batches");
    assert_eq!(read_all(&log, 0).len(), 1);

    let compacted = tempdir();
    let log = open(
        compacted.path(),
        LogConfig {
            cleanup_policy: CleanupPolicy {
                compact: true,
                delete: false,
            },
            ..LogConfig::default()
        },
    );
    let err = log.append_unflushed(
        &records_to_batch(&[Record::new(1, None, Some(b"v"))]),
        ProducerInfo::NONE,
    );
    let msg = err.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        msg.contains("has no key") && msg.contains("compacted"),
        "{msg}"
    );
    assert_eq!(log.end_offset(), 0);
}

#[test]
fn log_append_time_overrides_timestamps() {
    let dir = tempdir();
    let log = open(
        dir.path(),
        LogConfig {
            timestamp_type: crate::config::TimestampType::LogAppendTime,
            ..LogConfig::default()
        },
    );
    let before = now_ms();
    let info = append(&log, &[Record::new(1, None, Some(b"v"))]);
    let stamped = info.log_append_time_ms.unwrap_or(0);
    assert!(stamped >= before);
    let got = read_all(&log, 0);
    assert_eq!(got[0].timestamp_ms, stamped);
    let res = log.read(0, 1000).ok();
    assert_eq!(
        res.map(|r| r.batches[0].header.producer.attributes & attributes::LOG_APPEND_TIME),
        Some(attributes::LOG_APPEND_TIME)
    );
}

#[test]
fn retention_deletes_only_closed_segments_past_limits() {
    let dir = tempdir();
    let config = LogConfig {
        retention_ms: Some(60_000),
        segment_bytes: 600,
        ..small_segments()
    };
    let log = open(dir.path(), config);
    // Old records (timestamp 1_000..) fill several segments; the last segment stays active.
    for chunk in (0..100).map(rec).collect::<Vec<_>>().chunks(5) {
        append(&log, chunk);
    }
    let before = log.offsets();
    assert!(before.segments > 3);
    // Nothing is old enough yet relative to a clock just after the records.
    assert_eq!(log.enforce_retention(2_000).ok(), Some(0));
    let deleted = log.enforce_retention(now_ms()).unwrap_or(0);
    let after = log.offsets();
    assert_eq!(
        deleted,
        before.segments - 1,
        "every closed segment expired; the active one stays"
    );
    assert_eq!(after.segments, 1);
    assert!(after.log_start_offset > 0 && after.log_start_offset < 100);
    assert_eq!(after.log_end_offset, 100);
    let err = log.read(0, 100);
    assert!(
        matches!(err, Err(BrokerError::OffsetOutOfRange { offset: 0, .. })),
        "{err:?}"
    );
    let msg = err.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.contains("valid offsets are"), "{msg}");
    assert_eq!(
        read_all(&log, after.log_start_offset).len() as i64,
        100 - after.log_start_offset
    );
    // The start offset survives a reopen.
    drop(log);
    let log = open(dir.path(), small_segments());
    assert_eq!(log.offsets().log_start_offset, after.log_start_offset);
}

#[test]
fn retention_by_bytes_keeps_the_newest() {
    let dir = tempdir();
    let log = open(
        dir.path(),
        LogConfig {
            retention_ms: None,
            retention_bytes: Some(8192),
            segment_bytes: 1024,
            ..small_segments()
        },
    );
    for chunk in (0..600).map(rec).collect::<Vec<_>>().chunks(5) {
        append(&log, chunk);
    }
    let total = log.offsets().size_bytes;
    assert!(total > 8192 * 2);
    let deleted = log.enforce_retention(now_ms()).unwrap_or(0);
    let after = log.offsets();
    assert!(deleted > 0);
    assert!(
        after.size_bytes >= 8192,
        "never below the limit: {}",
        after.size_bytes
    );
    assert!(
        after.size_bytes < 8192 + 4096,
        "within one segment of it: {}",
        after.size_bytes
    );
    assert_eq!(after.log_end_offset, 600);
}

pub(super) fn compacted_config() -> LogConfig {
    LogConfig {
        cleanup_policy: CleanupPolicy {
            compact: true,
            delete: false,
        },
        delete_retention_ms: 60_000,
        ..small_segments()
    }
}

/// Writes 50 keys x 6 versions, with tombstones for keys 0..5 at the end; returns the latest
/// offset and value of each key.
pub(super) fn fill_compacted(
    log: &Log,
) -> std::collections::BTreeMap<String, (i64, Option<String>)> {
    let mut latest = std::collections::BTreeMap::new();
    let mut offset = 0;
    for version in 0..6 {
        let batch: Vec<Record> = (0..50)
            .map(|k| {
                Record::new(
                    1_000 + offset,
                    Some(format!("k{k}").as_bytes()),
                    Some(format!("k{k}-v{version}").as_bytes()),
                )
            })
            .collect();
        for (k, _) in batch.iter().enumerate() {
            latest.insert(
                format!("k{k}"),
                (offset + k as i64, Some(format!("k{k}-v{version}"))),
            );
        }
        offset += batch.len() as i64;
        for chunk in batch.chunks(10) {
            append(log, chunk);
        }
    }
    let tombstones: Vec<Record> = (0..5)
        .map(|k| Record::new(5_000, Some(format!("k{k}").as_bytes()), None))
        .collect();
    append(log, &tombstones);
    for k in 0..5 {
        latest.insert(format!("k{k}"), (offset + k, None));
    }
    // One more batch so the tombstones sit in a closed segment.
    for _ in 0..30 {
        append(
            log,
            &[Record::new(9_000, Some(b"filler"), Some(&[0u8; 200]))],
        );
    }
    latest
}

fn check_latest(
    log: &Log,
    latest: &std::collections::BTreeMap<String, (i64, Option<String>)>,
    tombstones_expected: bool,
) {
    let all = read_all(log, log.offsets().log_start_offset);
    let mut seen = std::collections::BTreeMap::new();
    for r in &all {
        let key = String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned();
        seen.insert(
            key,
            (
                r.offset,
                r.value
                    .as_ref()
                    .map(|v| String::from_utf8_lossy(v).into_owned()),
            ),
        );
    }
    for (key, (offset, value)) in latest {
        match (seen.get(key), value, tombstones_expected) {
            (Some(got), _, _) => assert_eq!(got, &(*offset, value.clone()), "key {key}"),
            (None, None, false) => {}
            (None, _, _) => panic!("key {key} lost"),
        }
    }
}

#[tokio::test]
async fn compaction_keeps_latest_per_key_at_original_offsets() {
    let dir = tempdir();
    let log = open(dir.path(), compacted_config());
    let latest = fill_compacted(&log);
    let end = log.end_offset();
    let before = read_all(&log, 0).len();
    // Clock: tombstones are younger than delete.retention.ms, so they stay this time.
    let stats = log.compact_until(10_000, None).await.unwrap_or_default();
    assert!(
        stats.segments_cleaned > 0 && stats.records_removed > 0,
        "{stats:?}"
    );
    let after = read_all(&log, 0);
    assert!(after.len() < before);
    check_latest(&log, &latest, true);
    // Older versions are gone: each key (other than the filler in the active segment) once at most.
    let mut keys: Vec<_> = after
        .iter()
        .filter(|r| r.key.as_deref() != Some(b"filler"))
        .map(|r| r.key.clone())
        .collect();
    let n = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), n, "one record per key after a clean");
    // Offsets are kept: the log end does not move and offsets stay increasing.
    assert_eq!(log.end_offset(), end);
    assert!(after.windows(2).all(|w| w[0].offset < w[1].offset));
    // Later: tombstones have expired and are removed too.
    log.compact_until(i64::MAX / 2, None).await.ok();
    let after = read_all(&log, 0);
    assert!(
        after
            .iter()
            .all(|r| r.value.is_some() || r.offset >= end - 30),
        "expired tombstones removed"
    );
    check_latest(&log, &latest, false);
    // Reading from an offset inside a gap starts at the next surviving record.
    let from_gap = read_all(&log, 1);
    assert!(from_gap.first().is_some_and(|r| r.offset > 1));
}

#[tokio::test]
async fn crash_in_the_middle_of_a_clean_loses_nothing() {
    for crash in [CrashPoint::BeforeSwap, CrashPoint::AfterSwap] {
        let dir = tempdir();
        let latest = {
            let log = open(dir.path(), compacted_config());
            let latest = fill_compacted(&log);
            log.compact_until(10_000, Some(crash)).await.ok();
            latest
        };
        // "Restart": the unfinished clean is either discarded or completed by the rename.
        let log = open(dir.path(), compacted_config());
        let leftovers = std::fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().to_string_lossy().ends_with(".cleaned"))
            .count();
        assert_eq!(leftovers, 0, "{crash:?}: unfinished output removed");
        check_latest(&log, &latest, true);
        // Cleaning again works and still keeps everything.
        log.compact_until(10_000, None).await.ok();
        check_latest(&log, &latest, true);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_makes_concurrent_appends_durable() {
    let dir = tempdir();
    let log = Arc::new(open(
        dir.path(),
        LogConfig {
            flush_messages: Some(1),
            ..LogConfig::default()
        },
    ));
    let mut tasks = Vec::new();
    for t in 0..64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..40 {
                let info = log
                    .append(
                        &records_to_batch(&[rec(t * 100 + i)]),
                        ProducerInfo::NONE,
                        Ack::Written,
                    )
                    .await;
                let Ok(info) = info else {
                    panic!("append failed: {info:?}")
                };
                // Acknowledged means durable.
                assert!(log.offsets().durable_offset > info.last_offset);
            }
        }));
    }
    // A lost wake-up between flush rounds would hang here; bound the wait.
    let all = futures::future::join_all(tasks);
    let joined = tokio::time::timeout(std::time::Duration::from_secs(120), all).await;
    let Ok(results) = joined else {
        panic!("group commit hung: an appender was never woken")
    };
    assert!(results.iter().all(Result::is_ok));
    let o = log.offsets();
    assert_eq!((o.log_end_offset, o.durable_offset), (2560, 2560));
}

/// Writes batches, then damages the active segment's tail (truncation or a flipped byte at
/// `damage_at`), reopens, and checks that exactly the whole batches before the damage survive.
fn crash_case(batch_sizes: &[usize], damage_at_fraction: f64, flip: bool) {
    crash_case_compressed(batch_sizes, damage_at_fraction, flip, "producer");
}

/// [`crash_case`] on a topic with this `compression.type` (every frame form: small batches take
/// the Kafka layout, larger ones Arrow; a codec compresses either).
fn crash_case_compressed(
    batch_sizes: &[usize],
    damage_at_fraction: f64,
    flip: bool,
    compression: &str,
) {
    let mut config = LogConfig::default();
    if let Err(e) = config.set("compression.type", compression) {
        panic!("{e}");
    }
    let dir = tempdir();
    let mut ends = Vec::new(); // (file position after the batch, log end offset after it)
    {
        let log = open(dir.path(), config.clone());
        for (i, &n) in batch_sizes.iter().enumerate() {
            let records: Vec<Record> = (0..n)
                .map(|j| Record::new(j as i64, Some(&[i as u8]), Some(&vec![b'a'; j * 3])))
                .collect();
            append(&log, &records);
            ends.push((log.offsets().size_bytes, log.end_offset()));
        }
    }
    let seg = dir.path().join(segment::file_name(0, "log"));
    let len = std::fs::metadata(&seg).map(|m| m.len()).unwrap_or(0);
    let at = ((len as f64) * damage_at_fraction) as u64;
    if flip {
        let mut bytes = std::fs::read(&seg).unwrap_or_default();
        if (at as usize) < bytes.len() {
            bytes[at as usize] ^= 0x5a;
        }
        let _ = std::fs::write(&seg, bytes);
    } else if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&seg) {
        let _ = f.set_len(at);
    }
    // Whole batches that end at or before the damage survive; nothing after it.
    let expected_end = ends
        .iter()
        .take_while(|(pos, _)| *pos <= at)
        .last()
        .map_or(0, |&(_, end)| end);
    let log = open(dir.path(), config);
    assert_eq!(
        log.end_offset(),
        expected_end,
        "damage at {at} of {len} (flip {flip})"
    );
    let got = read_all(&log, 0);
    assert_eq!(got.len() as i64, expected_end);
    assert!(
        got.iter().enumerate().all(|(i, r)| r.offset == i as i64),
        "offsets stay contiguous"
    );
    // The log keeps working after recovery.
    let info = append(&log, &[rec(0)]);
    assert_eq!(info.base_offset, expected_end);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn recovery_keeps_every_whole_batch_before_damage(
        sizes in proptest::collection::vec(1usize..20, 1..12),
        fraction in 0.0f64..1.0,
        flip in any::<bool>(),
    ) {
        crash_case(&sizes, fraction, flip);
    }

    #[test]
    fn recovery_keeps_every_whole_compressed_batch_before_damage(
        sizes in proptest::collection::vec(1usize..20, 1..12),
        fraction in 0.0f64..1.0,
        flip in any::<bool>(),
        compression in prop_oneof![Just("lz4"), Just("zstd"), Just("gzip")],
    ) {
        crash_case_compressed(&sizes, fraction, flip, compression);
    }
}

#[test]
fn recovery_at_every_byte_of_a_small_log() {
    // Exhaustive over truncation points of a two-batch log.
    let sizes = [2usize, 3];
    let dir = tempdir();
    {
        let log = open(dir.path(), LogConfig::default());
        for &n in &sizes {
            append(&log, &(0..n).map(|i| rec(i as i64)).collect::<Vec<_>>());
        }
    }
    let seg = dir.path().join(segment::file_name(0, "log"));
    let len = std::fs::metadata(&seg).map(|m| m.len()).unwrap_or(0);
    for step in (0..len).step_by(37) {
        crash_case(&sizes, step as f64 / len as f64, false);
    }
}

/// Compaction reads and rewrites whole segments; on the async runtime's own thread that stalled
/// every other task of the runtime (appends, fetches, heartbeats) until the pass was done.
#[test]
fn compaction_does_not_stall_the_async_runtime() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let dir = tempdir();
    let config = LogConfig {
        segment_bytes: 1 << 20,
        ..compacted_config()
    };
    let log = open(dir.path(), config);
    // About 8 MiB over 8 closed segments, every key written 4 times.
    let value = "v".repeat(1000);
    for round in 0..4 {
        for chunk in 0..20 {
            let records: Vec<Record> = (0..100)
                .map(|i| {
                    let key = format!("key-{}", chunk * 100 + i);
                    Record::new(round, Some(key.as_bytes()), Some(value.as_bytes()))
                })
                .collect();
            append(&log, &records);
        }
    }
    append(&log, &[rec(0)]);
    rt.block_on(async {
        let ticks = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                tokio::task::yield_now().await;
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        tokio::task::yield_now().await;
        let before = ticks.load(std::sync::atomic::Ordering::Relaxed);
        let stats = log
            .compact_until(i64::MAX / 2, None)
            .await
            .unwrap_or_else(|e| panic!("compact: {e}"));
        let during = ticks.load(std::sync::atomic::Ordering::Relaxed) - before;
        ticker.abort();
        assert!(stats.segments_cleaned > 0, "{stats:?}");
        // On a one-thread runtime, other tasks run only while compaction waits for its
        // blocking threads.
        assert!(
            during > 10,
            "other tasks ran {during} times during compaction"
        );
    });
}

/// Reads check a frame (CRC and Arrow's checks) until it is known whole, then trust it: the
/// log's own writes are known; a segment opened from disk is checked on its first read, and
/// damage there is reported, not served.
#[tokio::test]
async fn reads_check_each_frame_once_and_find_damage_in_a_trusted_segment() {
    let dir = tempdir();
    let config = LogConfig {
        segment_bytes: 1024,
        flush_on_ack: false,
        timestamp_after_max_ms: None,
        ..small_segments()
    };
    {
        let log = match Log::open_after(
            dir.path(),
            "t",
            0,
            Arc::new(config.clone()),
            Shutdown::Unclean,
        ) {
            Ok(log) => log,
            Err(e) => panic!("open: {e}"),
        };
        for chunk in (0..200).map(rec).collect::<Vec<_>>().chunks(7) {
            append(&log, chunk);
        }
        {
            let inner = log.inner.lock();
            assert!(inner.segments.len() > 3);
            for s in inner.segments.values() {
                assert_eq!(
                    s.verified.load(Ordering::Acquire),
                    s.size,
                    "own writes are known"
                );
            }
        }
        if let Err(e) = log.close().await {
            panic!("close: {e}");
        }
    }
    // Damage the second frame of the second segment, inside its body.
    let second = {
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        names.retain(|p: &std::path::PathBuf| p.extension().is_some_and(|x| x == "log"));
        names.sort();
        names[1].clone()
    };
    let mut bytes = std::fs::read(&second).unwrap_or_default();
    let first_len = frame::FrameHeader::parse(&bytes).map_or(0, |h| h.frame_len as usize);
    bytes[first_len + frame::HEADER_LEN + 4] ^= 0x40;
    if let Err(e) = std::fs::write(&second, &bytes) {
        panic!("{e}");
    }
    let log = match Log::open_after(dir.path(), "t", 0, Arc::new(config), Shutdown::Clean) {
        Ok(log) => log,
        Err(e) => panic!("reopen: {e}"),
    };
    let (first_size, first_verified) = {
        let inner = log.inner.lock();
        let s = inner
            .segments
            .values()
            .next()
            .map(|s| (s.size, s.verified.clone()));
        s.unwrap_or_else(|| panic!("a segment"))
    };
    assert_eq!(
        first_verified.load(Ordering::Acquire),
        0,
        "trusted indexes, frames unchecked"
    );
    // Reading the first segment checks its frames once.
    let mut offset = 0;
    loop {
        match log.read(offset, 64) {
            Ok(r) if r.next_offset > offset => offset = r.next_offset,
            Ok(_) => panic!("the damage stops the read at {offset} first"),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("CRC mismatch"), "{msg}");
                assert!(msg.contains(&second.display().to_string()), "{msg}");
                break;
            }
        }
    }
    assert_eq!(first_verified.load(Ordering::Acquire), first_size);
}

/// The coarse clock small batches are checked against is never ahead of the precise one and
/// trails it by at most a timer tick (10 ms at the slowest kernel tick rate; 50 ms of slack for a
/// descheduled test thread).
#[test]
fn the_coarse_clock_trails_the_precise_one_by_at_most_a_tick() {
    for _ in 0..1000 {
        let before = now_ms();
        let coarse = coarse_now_ms();
        let after = now_ms();
        assert!(coarse <= after, "coarse {coarse} ahead of precise {after}");
        assert!(
            coarse >= before - 50,
            "coarse {coarse} trails {before} by more than a tick"
        );
    }
}
