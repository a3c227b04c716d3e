//! What a `read_committed` consumer leaves out of fetched batches: the records of aborted
//! transactions, and every control batch (transaction markers).
//!
//! A Fetch at `read_committed` returns records up to the last stable offset and, for each
//! partition, the aborted transactions that overlap them: a producer id and the first offset
//! of its aborted transaction. As in Kafka's consumer, the batches are walked in order: once a
//! batch's last offset reaches an aborted transaction's first offset, that producer's
//! transactional batches are skipped until its ABORT marker (a control batch whose record key
//! says ABORT) ends the transaction. A committed transaction of the same producer before or
//! after is kept.

use std::collections::HashSet;

use quiver_common::EnvelopeBuilder;
use quiver_common::kafka::records::{self, DecodeScratch, KafkaBatch};

/// The control record type of an ABORT marker (the key is `version: int16, type: int16`).
const CONTROL_ABORT: i16 = 0;

/// Transaction state of one partition's fetched batches, walked in offset order.
#[derive(Debug, Default)]
pub(crate) struct AbortedTransactions {
    /// Aborted transactions not reached yet, as `(first_offset, producer_id)`, latest first so
    /// the next one is popped from the end.
    pending: Vec<(i64, i64)>,
    /// Producers inside an aborted transaction at the current batch.
    aborting: HashSet<i64>,
}

impl AbortedTransactions {
    /// The aborted transactions a Fetch response listed, as `(producer_id, first_offset)`.
    pub fn new(aborted: impl IntoIterator<Item = (i64, i64)>) -> Self {
        let mut pending: Vec<(i64, i64)> = aborted.into_iter().map(|(p, o)| (o, p)).collect();
        pending.sort_unstable_by(|a, b| b.cmp(a));
        AbortedTransactions {
            pending,
            aborting: HashSet::new(),
        }
    }

    /// Whether `batch`'s records are for the consumer: false for control batches and for the
    /// batches of an aborted transaction. Call it for every batch, in offset order.
    pub fn keep(&mut self, batch: &KafkaBatch<'_>, uncompressed_bytes_max: usize) -> bool {
        let last_offset = batch
            .base_offset
            .saturating_add(i64::from(batch.last_offset_delta));
        while let Some(&(first_offset, producer_id)) = self.pending.last() {
            if first_offset > last_offset {
                break;
            }
            self.aborting.insert(producer_id);
            self.pending.pop();
        }
        if batch.is_control() {
            if batch.is_transactional()
                && control_type(batch, uncompressed_bytes_max) == Some(CONTROL_ABORT)
            {
                self.aborting.remove(&batch.producer_id);
            }
            return false;
        }
        !(batch.is_transactional() && self.aborting.contains(&batch.producer_id))
    }
}

/// The type of a control batch's marker (its first record's key), if it decodes.
fn control_type(batch: &KafkaBatch<'_>, uncompressed_bytes_max: usize) -> Option<i16> {
    let mut builder = EnvelopeBuilder::default();
    records::decode_records(
        batch,
        &mut builder,
        &mut DecodeScratch::default(),
        uncompressed_bytes_max,
    )
    .ok()?;
    let decoded = builder.finish();
    if decoded.num_rows() == 0 {
        return None;
    }
    let columns = quiver_common::EnvelopeColumns::try_new(&decoded).ok()?;
    let key = columns.key(0)?;
    Some(i16::from_be_bytes([*key.get(2)?, *key.get(3)?]))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use quiver_common::batch::{BatchHeader, ProducerInfo, attributes};
    use quiver_common::record::{Record, records_to_batch};

    /// A Kafka batch of `count` records from `producer_id` at `base_offset`, as a broker sends it.
    pub(crate) fn batch(
        base_offset: i64,
        count: i64,
        producer_id: i64,
        attrs: i16,
        key: Option<&[u8]>,
    ) -> Vec<u8> {
        let records: Vec<Record> = (0..count)
            .map(|i| Record::new(10, key, Some(format!("v{}", base_offset + i).as_bytes())))
            .collect();
        let batch = records_to_batch(&records);
        let mut columns = batch.columns().to_vec();
        columns[0] = std::sync::Arc::new(arrow::array::Int64Array::from_iter_values(
            base_offset..base_offset + count,
        ));
        let batch = arrow::record_batch::RecordBatch::try_new(batch.schema(), columns)
            .unwrap_or_else(|e| panic!("{e}"));
        let header = BatchHeader {
            base_offset,
            last_offset_delta: (count - 1) as i32,
            record_count: count as i32,
            first_timestamp: 10,
            max_timestamp: 10,
            producer: ProducerInfo {
                producer_id,
                producer_epoch: 0,
                base_sequence: 0,
                attributes: attrs,
            },
        };
        let mut out = Vec::new();
        records::encode_batch(&mut out, &header, &batch).unwrap_or_else(|e| panic!("{e}"));
        out
    }

    const TXN: i16 = attributes::TRANSACTIONAL;
    const MARKER: i16 = attributes::TRANSACTIONAL | attributes::CONTROL;
    const ABORT_KEY: &[u8] = &[0, 0, 0, 0];
    const COMMIT_KEY: &[u8] = &[0, 0, 0, 1];

    /// Producer 1 aborts a transaction, producer 2 commits one interleaved with it, then
    /// producer 1 commits a second one; a plain batch follows.
    pub(crate) fn interleaved_transactions() -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend(batch(0, 2, 1, TXN, None)); // aborted below
        bytes.extend(batch(2, 2, 2, TXN, None)); // committed
        bytes.extend(batch(4, 1, 1, MARKER, Some(ABORT_KEY)));
        bytes.extend(batch(5, 1, 2, MARKER, Some(COMMIT_KEY)));
        bytes.extend(batch(6, 2, 1, TXN, None)); // producer 1's next transaction, committed
        bytes.extend(batch(8, 1, 1, MARKER, Some(COMMIT_KEY)));
        bytes.extend(batch(9, 1, -1, 0, None)); // not transactional
        bytes
    }

    fn kept(bytes: &[u8], aborted: &[(i64, i64)]) -> Vec<i64> {
        let batches = records::parse_batches(bytes).unwrap_or_else(|e| panic!("{e}"));
        let mut txns = AbortedTransactions::new(aborted.iter().copied());
        batches
            .iter()
            .filter(|b| txns.keep(b, 1 << 20))
            .flat_map(|b| b.base_offset..=b.base_offset + i64::from(b.last_offset_delta))
            .collect()
    }

    #[test]
    fn an_aborted_transaction_is_dropped_up_to_its_abort_marker_and_no_further() {
        assert_eq!(
            kept(&interleaved_transactions(), &[(1, 0)]),
            [2, 3, 6, 7, 9]
        );
    }

    #[test]
    fn nothing_aborted_keeps_every_data_batch_and_no_marker() {
        assert_eq!(
            kept(&interleaved_transactions(), &[]),
            [0, 1, 2, 3, 6, 7, 9]
        );
    }

    #[test]
    fn aborted_transactions_listed_out_of_order_or_for_other_producers_are_applied_by_offset() {
        let mut bytes = Vec::new();
        bytes.extend(batch(0, 1, 1, TXN, None));
        bytes.extend(batch(1, 1, 1, MARKER, Some(ABORT_KEY)));
        bytes.extend(batch(2, 1, 1, TXN, None));
        bytes.extend(batch(3, 1, 1, MARKER, Some(ABORT_KEY)));
        bytes.extend(batch(4, 1, 3, TXN, None));
        // Both of producer 1's transactions aborted, listed latest first; producer 7 is not
        // in these batches at all.
        assert_eq!(kept(&bytes, &[(1, 2), (7, 1), (1, 0)]), [4]);
    }

    #[test]
    fn a_plain_batch_of_an_aborting_producer_id_is_kept() {
        // Only transactional batches belong to a transaction.
        let mut bytes = batch(0, 1, 5, TXN, None);
        bytes.extend(batch(1, 1, 5, 0, None));
        assert_eq!(kept(&bytes, &[(5, 0)]), [1]);
    }
}
