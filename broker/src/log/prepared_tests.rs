//! Small producer batches stored as the bytes they came in ([`PreparedBatch::Rows`]): they read
//! back as the same batches appended as columns do, and every batch the log would refuse or
//! rewrite is decoded instead.

use super::tests::{open, read_all, tempdir};
use super::*;
use crate::config::{CleanupPolicy, LogConfig};
use crate::kafka::records::{self as kafka_records, DecodeScratch, KafkaBatch};
use crate::record::{Record, records_to_batch};

/// `records` as a producer's uncompressed Kafka batch (offset deltas 0, 1, 2, ...).
pub(super) fn wire(records: &[Record], codec: i16) -> Vec<u8> {
    let built = records_to_batch(records);
    let mut columns = built.columns().to_vec();
    columns[crate::record::col::OFFSET] = Arc::new(arrow::array::Int64Array::from_iter_values(
        0..records.len() as i64,
    ));
    let batch = match RecordBatch::try_new(built.schema(), columns) {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    };
    let n = records.len() as i32;
    let header = BatchHeader {
        base_offset: 0,
        last_offset_delta: n - 1,
        record_count: n,
        first_timestamp: records[0].timestamp_ms,
        max_timestamp: records.iter().map(|r| r.timestamp_ms).max().unwrap_or(0),
        producer: ProducerInfo::NONE,
    };
    let mut out = Vec::new();
    if let Err(e) = kafka_records::encode_batch_compressed(&mut out, &header, &batch, codec) {
        panic!("encode: {e}");
    }
    out
}

pub(super) fn parsed(bytes: &[u8]) -> KafkaBatch<'_> {
    match kafka_records::parse_batches(bytes) {
        Ok(batches) if batches.len() == 1 => batches[0],
        other => panic!("one batch expected: {other:?}"),
    }
}

pub(super) fn prepare<'a>(batch: &KafkaBatch<'a>, config: &'a LogConfig) -> PreparedBatch<'a> {
    match PreparedBatch::from_kafka(batch, config, &mut DecodeScratch::default(), 1 << 20) {
        Ok(Some(p)) => p,
        other => panic!("prepare: {other:?}"),
    }
}

pub(super) fn now_records() -> Vec<Record> {
    let t = now_ms();
    vec![
        Record::new(t, Some(b"k"), Some(b"v"))
            .with_header("trace", Some(b"abc"))
            .with_header("empty", None),
        Record::new(t - 5, None, None),
        Record::new(t + 3, Some(b""), Some(&[0u8, 255, 1])),
    ]
}

fn with_offsets(records: &[Record], base: i64) -> Vec<Record> {
    (base..)
        .zip(records)
        .map(|(offset, r)| Record {
            offset,
            ..r.clone()
        })
        .collect()
}

#[test]
fn small_batches_stored_as_sent_read_back_as_appended_columns_do() {
    for compression in ["producer", "lz4", "zstd"] {
        let mut config = LogConfig::default();
        if let Err(e) = config.set("compression.type", compression) {
            panic!("{e}");
        }
        let records = now_records();
        let bytes = wire(&records, 0);
        let batch = parsed(&bytes);
        let prepared = prepare(&batch, &config);
        assert!(matches!(prepared, PreparedBatch::Rows(_)), "{prepared:?}");
        assert_eq!(prepared.num_rows(), 3);

        let rows_dir = tempdir();
        let columns_dir = tempdir();
        let rows_log = open(rows_dir.path(), config.clone());
        let columns_log = open(columns_dir.path(), config.clone());
        for log in [&rows_log, &columns_log] {
            // A batch ahead of it, so the rows land at a base offset other than 0.
            let first = log.append_unflushed(&records_to_batch(&records[..1]), ProducerInfo::NONE);
            assert!(first.is_ok(), "{first:?}");
        }
        let rows_info = rows_log.append_prepared(&prepared, ProducerInfo::NONE);
        let columns = match prepared {
            PreparedBatch::Rows(rows) => rows.decode(),
            PreparedBatch::Columns(_) => unreachable!("checked above"),
        };
        let columns_info = columns_log.append_buffered(
            &columns.unwrap_or_else(|e| panic!("decode: {e}")),
            ProducerInfo::NONE,
        );
        assert_eq!(
            rows_info
                .as_ref()
                .ok()
                .map(|i| (i.base_offset, i.last_offset)),
            Some((1, 3)),
            "{rows_info:?}"
        );
        assert_eq!(
            rows_info.ok().map(|i| (i.base_offset, i.last_offset)),
            columns_info.ok().map(|i| (i.base_offset, i.last_offset))
        );
        let expected: Vec<Record> = with_offsets(&records[..1], 0)
            .into_iter()
            .chain(with_offsets(&records, 1))
            .collect();
        assert_eq!(read_all(&rows_log, 0), expected, "{compression}");
        assert_eq!(read_all(&columns_log, 0), expected, "{compression}");
        // The stored batch's facts are the records' (what fetch and the time index use).
        let read = rows_log
            .read(1, 1 << 20)
            .unwrap_or_else(|e| panic!("read: {e}"));
        let header = read.batches[0].header;
        assert_eq!(
            (
                header.record_count,
                header.first_timestamp,
                header.max_timestamp
            ),
            (3, records[0].timestamp_ms, records[2].timestamp_ms)
        );
        // The same after recovery from the files.
        drop(rows_log);
        let reopened = open(rows_dir.path(), config);
        assert_eq!(read_all(&reopened, 0), expected, "{compression} reopened");
    }
}

#[test]
fn batches_the_log_would_refuse_or_rewrite_are_decoded() {
    let records = now_records();
    let plain = wire(&records, 0);
    let compressed = wire(&records, crate::kafka::compression::codec::LZ4);
    let mut shuffled = plain.clone();
    {
        // Offset deltas 0, 2, 1: readers would see them, where the log assigns 0, 1, 2.
        let batch = parsed(&plain);
        let rows_at = plain.len() - batch.records.len();
        let mut at = rows_at;
        let mut deltas_at = Vec::new();
        for _ in 0..3 {
            let len = plain[at] as usize / 2; // one-byte zigzag lengths here
            // length, attributes, timestamp delta (one byte each here), then the offset delta
            deltas_at.push(at + 3);
            at += 1 + len;
        }
        shuffled[deltas_at[1]] = 4; // zigzag 2
        shuffled[deltas_at[2]] = 2; // zigzag 1
        let crc = quiver_common::crc::crc32c(&shuffled[21..]);
        shuffled[17..21].copy_from_slice(&crc.to_be_bytes());
    }
    let many: Vec<Record> = (0..9)
        .map(|i| Record::new(now_ms(), Some(b"k"), Some(format!("v{i}").as_bytes())))
        .collect();
    let many = wire(&many, 0);
    let log_append_time = LogConfig {
        timestamp_type: crate::config::TimestampType::LogAppendTime,
        ..LogConfig::default()
    };
    let compact = LogConfig {
        cleanup_policy: CleanupPolicy {
            compact: true,
            delete: false,
        },
        ..LogConfig::default()
    };
    let small_max = LogConfig {
        max_message_bytes: 2,
        ..LogConfig::default()
    };
    let cases: [(&str, &[u8], LogConfig); 6] = [
        ("compressed", &compressed, LogConfig::default()),
        (
            "offset deltas out of order",
            &shuffled,
            LogConfig::default(),
        ),
        (
            "more than the small batch's rows",
            &many,
            LogConfig::default(),
        ),
        ("log append time", &plain, log_append_time),
        ("a null key on a compacted topic", &plain, compact),
        ("a record larger than max.message.bytes", &plain, small_max),
    ];
    for (what, bytes, config) in cases {
        let batch = parsed(bytes);
        let prepared = prepare(&batch, &config);
        assert!(
            matches!(prepared, PreparedBatch::Columns(_)),
            "{what}: {prepared:?}"
        );
    }
    // Decoded, the shuffled batch reads back with the offsets the log assigned.
    let dir = tempdir();
    let log = open(dir.path(), LogConfig::default());
    let batch = parsed(&shuffled);
    let appended = log.append_prepared(&prepare(&batch, &LogConfig::default()), ProducerInfo::NONE);
    assert!(appended.is_ok(), "{appended:?}");
    assert_eq!(read_all(&log, 0), with_offsets(&records, 0));
}

#[test]
fn a_topic_config_changed_after_the_check_is_honoured() {
    let dir = tempdir();
    let log = open(dir.path(), LogConfig::default());
    let records = now_records();
    let bytes = wire(&records, 0);
    let batch = parsed(&bytes);
    let checked_with = log.config();
    let prepared = prepare(&batch, &checked_with);
    assert!(matches!(prepared, PreparedBatch::Rows(_)));
    // The topic becomes compacted between the check and the append: the record without a key
    // is refused as it would have been had the batch come after the change.
    let compact = LogConfig {
        cleanup_policy: CleanupPolicy {
            compact: true,
            delete: false,
        },
        ..(*log.config()).clone()
    };
    log.set_config(Arc::new(compact));
    let refused = log.append_prepared(&prepared, ProducerInfo::NONE);
    match refused {
        Err(BrokerError::InvalidRecords(msg)) => {
            assert!(msg.contains("record 1 has no key"), "{msg}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(log.end_offset(), 0, "nothing is appended");
}
