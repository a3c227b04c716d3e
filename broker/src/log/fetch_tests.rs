//! Fetch's reads ([`Log::read_for_fetch`]): a small batch read whole goes out as the rows the
//! log keeps, once its frame is known whole, and the Kafka batches Fetch sends are byte for
//! byte the ones decoding every batch into columns gives.

use super::prepared_tests::{now_records, parsed, prepare, wire};
use super::tests::{compacted_config, fill_compacted, open, tempdir};
use super::*;
use crate::config::LogConfig;
use crate::kafka::compression;
use crate::record::{Record, records_to_batch};
use crate::txn::state::TxnResult;

/// The Kafka batches a Fetch sends for the log from `offset` on, read 700 bytes at a time as
/// `B` (as Fetch does, [`FetchBatch`], or every batch decoded into columns, [`StoredBatch`]),
/// each with the codec it was stored for; and how many went out as stored rows.
fn fetched<B: ReadBatch + Into<FetchBatch>>(log: &Log, mut offset: i64) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    let mut as_rows = 0;
    loop {
        let read = log.read_as::<B>(offset, 700, Isolation::ReadUncommitted);
        let read = read.unwrap_or_else(|e| panic!("read at {offset}: {e}"));
        if read.next_offset == offset {
            return (out, as_rows);
        }
        offset = read.next_offset;
        for b in read.batches {
            let b: FetchBatch = b.into();
            as_rows += usize::from(matches!(b, FetchBatch::Rows { .. }));
            let header = b.header();
            let codec = header.producer.attributes & attributes::COMPRESSION;
            let epoch = read.epochs.epoch_for(header.base_offset);
            if let Err(e) = b.encode_kafka(&mut out, epoch, codec) {
                panic!("encode at {}: {e}", header.base_offset);
            }
        }
    }
}

/// Fetch from `offset` as stored rows and as columns: the same bytes. Returns how many batches
/// went out as rows.
fn same_as_columns(log: &Log, offset: i64, what: &str) -> usize {
    let (as_fetched, as_rows) = fetched::<FetchBatch>(log, offset);
    let (as_columns, none) = fetched::<StoredBatch>(log, offset);
    assert_eq!(none, 0);
    assert!(!as_columns.is_empty(), "{what}: the log reads empty");
    assert!(
        as_fetched == as_columns,
        "{what}: fetch from {offset} sends other bytes than the columns encode"
    );
    // The batches parse, with their CRCs, as a client takes them.
    let parsed = kafka_records::parse_batches(&as_fetched);
    assert!(parsed.is_ok(), "{what}: {parsed:?}");
    as_rows
}

/// Appends a batch of every kind the log stores: a producer's small batch kept as sent (and
/// another from an idempotent producer), a small batch of columns, a large batch (Arrow), a
/// transaction's batch and its commit marker. Returns how many are small.
fn fill(log: &Log) -> usize {
    let bytes = wire(&now_records(), compression::codec::NONE);
    let batch = parsed(&bytes);
    let config = log.config();
    let appended = log.append_prepared(&prepare(&batch, &config), ProducerInfo::NONE);
    assert!(appended.is_ok(), "{appended:?}");
    let small: Vec<Record> = (0..2)
        .map(|i| Record::new(now_ms() - i, Some(b"key"), None).with_header("h", Some(b"v")))
        .collect();
    let appended = log.append_unflushed(&records_to_batch(&small), ProducerInfo::NONE);
    assert!(appended.is_ok(), "{appended:?}");
    let large: Vec<Record> = (0..20)
        .map(|i| Record::new(now_ms() + i, None, Some(format!("value {i}").as_bytes())))
        .collect();
    let appended = log.append_unflushed(&records_to_batch(&large), ProducerInfo::NONE);
    assert!(appended.is_ok(), "{appended:?}");
    let txn = ProducerInfo {
        producer_id: 9,
        producer_epoch: 1,
        base_sequence: 0,
        attributes: attributes::TRANSACTIONAL,
    };
    let appended = log.append_unflushed(&records_to_batch(&small), txn);
    assert!(appended.is_ok(), "{appended:?}");
    let marked = log.append_marker_unflushed(9, 1, TxnResult::Commit, 0);
    assert!(marked.is_ok(), "{marked:?}");
    let idempotent = ProducerInfo {
        producer_id: 4,
        producer_epoch: 0,
        base_sequence: 0,
        attributes: 0,
    };
    let appended = log.append_prepared(&prepare(&batch, &config), idempotent);
    assert!(appended.is_ok(), "{appended:?}");
    5
}

#[test]
fn small_batches_go_out_as_stored_rows_and_as_their_columns_would() {
    for compression in ["producer", "lz4", "zstd", "snappy", "gzip"] {
        for timestamps in ["CreateTime", "LogAppendTime"] {
            let what = format!("compression.type={compression} {timestamps}");
            let mut config = LogConfig::default();
            let set = config
                .set("compression.type", compression)
                .and_then(|()| config.set("message.timestamp.type", timestamps));
            assert!(set.is_ok(), "{set:?}");
            let dir = tempdir();
            let log = open(dir.path(), config.clone());
            let small = fill(&log);
            // Compressed at rest, the large batch takes the Kafka layout too.
            let kafka_layout = small + usize::from(compression != "producer");
            // Every such batch as its rows: the log wrote them, so they are known whole.
            assert_eq!(same_as_columns(&log, 0, &what), kafka_layout, "{what}");
            // From inside the first batch: that one is sliced from its columns.
            assert_eq!(same_as_columns(&log, 1, &what), kafka_layout - 1, "{what}");
            // Reopened, a frame's first read checks it by decoding it; later ones trust it.
            drop(log);
            let log = open(dir.path(), config);
            assert_eq!(same_as_columns(&log, 0, &what), 0, "{what} reopened");
            let again = same_as_columns(&log, 0, &what);
            assert_eq!(again, kafka_layout, "{what} reopened");
        }
    }
}

#[tokio::test]
async fn compacted_small_batches_keep_their_offsets_when_sent_as_rows() {
    let dir = tempdir();
    let log = open(dir.path(), compacted_config());
    fill_compacted(&log);
    let stats = log.compact_until(10_000, None).await;
    assert!(
        stats.as_ref().is_ok_and(|s| s.records_removed > 0),
        "{stats:?}"
    );
    // Read once (the cleaned segments' frames are checked on it), then as Fetch reads them.
    same_as_columns(&log, 0, "compacted");
    let as_rows = same_as_columns(&log, 0, "compacted");
    assert!(as_rows > 0, "no cleaned batch was small");
}
