//! The active segment's write buffer: small batches appended by Produce wait in memory until
//! the fsync round that makes them durable writes them, all in one write; an acks=0/1 answer,
//! a batch written at once, a full buffer and a roll write them sooner.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::config::LogConfig;
use crate::record::{Record, batch_to_records, records_to_batch};

fn open_with(dir: &Path, config: LogConfig, shutdown: Shutdown) -> Log {
    Log::open_after(dir, "t", 0, Arc::new(config), shutdown).unwrap()
}

fn rec(i: i64, value_len: usize) -> Record {
    let value = format!("{i}-{}", "v".repeat(value_len));
    Record::new(1_000 + i, Some(b"k"), Some(value.as_bytes()))
}

/// How a test appends a record.
#[derive(Clone, Copy)]
enum Append {
    /// As Produce does, acknowledged later ([`Log::append_buffered`]).
    Buffered,
    /// Written at once ([`Log::append_unflushed`]).
    AtOnce,
}

/// Appends record `i` alone.
fn append_one(log: &Log, i: i64, value_len: usize, how: Append) -> AppendInfo {
    let batch = records_to_batch(&[rec(i, value_len)]);
    match how {
        Append::Buffered => log.append_buffered(&batch, ProducerInfo::NONE),
        Append::AtOnce => log.append_unflushed(&batch, ProducerInfo::NONE),
    }
    .unwrap()
}

/// Bytes in the partition's segment files.
fn bytes_in_files(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

/// The values of every record below the high watermark, in offset order, after checking the
/// offsets run from 0 without a gap.
fn values(log: &Log) -> Vec<String> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let res = log.read(offset, 1 << 20).unwrap();
        for b in &res.batches {
            for r in batch_to_records(&b.records).unwrap() {
                assert_eq!(r.offset, out.len() as i64, "offsets run without a gap");
                out.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
            }
        }
        if res.next_offset == offset {
            return out;
        }
        offset = res.next_offset;
    }
}

fn expected(range: std::ops::Range<i64>, value_len: usize) -> Vec<String> {
    range
        .map(|i| String::from_utf8(rec(i, value_len).value.unwrap().to_vec()).unwrap())
        .collect()
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[tokio::test]
async fn buffered_batches_reach_the_file_with_their_round() {
    let dir = tempdir();
    let log = open_with(dir.path(), LogConfig::default(), Shutdown::Unclean);
    for i in 0..10 {
        assert_eq!(append_one(&log, i, 100, Append::Buffered).base_offset, i);
    }
    assert_eq!(log.end_offset(), 10);
    assert_eq!(
        bytes_in_files(dir.path()),
        0,
        "ten small batches wait in memory"
    );
    assert!(
        values(&log).is_empty(),
        "nothing is visible before its round"
    );

    log.acknowledge(10, Ack::All).await.unwrap();
    assert_eq!(log.offsets().durable_offset, 10);
    let written = bytes_in_files(dir.path());
    assert!(
        written > 10 * 100,
        "the round wrote the ten batches ({written} bytes)"
    );
    assert_eq!(values(&log), expected(0..10, 100));

    // A round with nothing buffered writes nothing more.
    log.flush().await.unwrap();
    assert_eq!(bytes_in_files(dir.path()), written);
}

#[tokio::test]
async fn an_acks_1_answer_writes_the_buffer_before_it_and_a_crash_keeps_it() {
    let dir = tempdir();
    let log = open_with(dir.path(), LogConfig::default(), Shutdown::Unclean);
    for i in 0..3 {
        append_one(&log, i, 100, Append::Buffered);
    }
    assert_eq!(bytes_in_files(dir.path()), 0);
    // An acks=1 answer covering them: they are written (the page cache) before it.
    log.acknowledge(3, Ack::Written).await.unwrap();
    assert!(bytes_in_files(dir.path()) > 3 * 100);
    assert!(log.offsets().durable_offset < 3, "written, not fsynced");
    drop(log); // the process dies; the page cache survives it
    let log = open_with(dir.path(), LogConfig::default(), Shutdown::Unclean);
    assert_eq!(log.end_offset(), 3);
    assert_eq!(values(&log), expected(0..3, 100));
}

#[test]
fn a_batch_written_at_once_takes_the_buffered_ones_with_it() {
    let dir = tempdir();
    let log = open_with(dir.path(), LogConfig::default(), Shutdown::Unclean);
    for i in 0..3 {
        append_one(&log, i, 100, Append::Buffered);
    }
    assert_eq!(bytes_in_files(dir.path()), 0);
    // A batch written at once takes the three buffered batches to the file before it.
    append_one(&log, 3, 100, Append::AtOnce);
    let four = bytes_in_files(dir.path());
    assert!(four > 4 * 100);
    // So does a batch too large for the buffer.
    append_one(&log, 4, 100, Append::Buffered);
    append_one(&log, 5, 10_000, Append::Buffered);
    assert!(bytes_in_files(dir.path()) > four + 100 + 10_000);
    drop(log); // a crash: everything was written
    let log = open_with(dir.path(), LogConfig::default(), Shutdown::Unclean);
    assert_eq!(log.end_offset(), 6);
    let mut want = expected(0..5, 100);
    want.extend(expected(5..6, 10_000));
    assert_eq!(values(&log), want);
}

#[test]
fn a_full_buffer_is_written_without_waiting_for_a_round() {
    let dir = tempdir();
    let log = open_with(dir.path(), LogConfig::default(), Shutdown::Unclean);
    // 290 batches of about 1.1 KiB each: several buffers' worth, and some left in the last.
    for i in 0..290 {
        append_one(&log, i, 1_000, Append::Buffered);
    }
    let in_files = bytes_in_files(dir.path());
    assert!(in_files > 290 * 1_000 - segment::WRITE_BUFFER_BYTES as u64);
    drop(log); // a crash: the batches still buffered are lost, the written ones are whole
    let log = open_with(dir.path(), LogConfig::default(), Shutdown::Unclean);
    let kept = log.end_offset();
    let per_buffer = (segment::WRITE_BUFFER_BYTES / 1_000) as i64;
    assert!(
        (290 - per_buffer..290).contains(&kept),
        "kept {kept} of 290"
    );
    assert_eq!(bytes_in_files(dir.path()), in_files, "no torn frame to cut");
    assert_eq!(values(&log), expected(0..kept, 1_000));
}

#[tokio::test]
async fn rolls_and_a_clean_close_write_the_buffer() {
    let dir = tempdir();
    let config = LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 512,
        ..LogConfig::default()
    };
    let log = open_with(dir.path(), config.clone(), Shutdown::Unclean);
    for i in 0..200 {
        append_one(&log, i, 100, Append::Buffered);
    }
    assert!(
        bytes_in_files(dir.path()) > 100 * 100,
        "each roll wrote the closed segment's buffer"
    );
    log.close().await.unwrap();
    drop(log);
    // Reopened as after a clean shutdown: each closed segment's saved indexes must cover its
    // whole file to be trusted, and every record is there.
    let log = open_with(dir.path(), config.clone(), Shutdown::Clean);
    assert_eq!(log.end_offset(), 200);
    assert_eq!(values(&log), expected(0..200, 100));
    drop(log);
    let log = open_with(dir.path(), config, Shutdown::Unclean);
    assert_eq!(values(&log), expected(0..200, 100));
}

#[test]
fn without_flush_on_ack_nothing_waits_in_memory() {
    let dir = tempdir();
    let config = LogConfig {
        flush_on_ack: false,
        ..LogConfig::default()
    };
    let log = open_with(dir.path(), config, Shutdown::Unclean);
    append_one(&log, 0, 100, Append::Buffered);
    // Readers see it at once (the high watermark is the log's end), so it is in the file.
    assert!(bytes_in_files(dir.path()) > 100);
    assert_eq!(values(&log), expected(0..1, 100));
}
