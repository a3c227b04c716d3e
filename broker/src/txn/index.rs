//! What a partition keeps about transactions: the open ones (which give the last stable
//! offset) and the aborted ones (which a `read_committed` Fetch returns so the client can drop
//! their records). Kafka keeps the first in its producer state and the second in a `.txnindex`
//! file per segment; Quiver does the same.
//!
//! - [`OngoingTxns`]: per producer, the first offset of its open transaction. The last stable
//!   offset (LSO) is the first offset of the earliest transaction not yet stable (open, or
//!   completed by a marker that is not yet below the high watermark), else the high watermark.
//! - [`AbortedTxnIndex`]: one per segment, an entry per ABORT marker written to that segment:
//!   `(producer id, first offset, last offset = the marker's, LSO after the abort)`.
//!
//! File layout of an index (`<base offset>.txnindex` beside the segment): magic `QTXN`, u32
//! version, u64 segment length the index covers, u64 entry count, entries as four i64
//! `(producer_id, first_offset, last_offset, last_stable_offset)`, u32 CRC32C of everything
//! before it, all little-endian. An index whose covered length differs from the segment's, or
//! whose CRC fails, is stale and is rebuilt ([`rebuild`]) from the segment's batches and the
//! open transactions at the segment's start (from the producer state snapshot).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use crate::error::{IoContext, Result};
use crate::log::index::{decode_rows, encode_rows};

use super::state::TxnResult;

const MAGIC: &[u8; 4] = b"QTXN";
/// Bytes before the first entry of the file (see `encode_rows`).
#[cfg(test)]
const HEADER_BYTES: usize = 24;

/// Most transactions open at once on one partition. Every open transaction belongs to a
/// producer the coordinator let in, so this only stops a runaway; appends past it are refused.
pub(crate) const MAX_ONGOING_TXNS_PER_PARTITION: usize = 100_000;

/// One aborted transaction of a partition (Kafka's `AbortedTxn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    /// Offset of the transaction's first record in this partition.
    pub first_offset: i64,
    /// Offset of the ABORT marker.
    pub last_offset: i64,
    /// The partition's LSO once the abort was written: no aborted transaction that a fetch
    /// below it needs can be in a later segment's index.
    pub last_stable_offset: i64,
}

/// The aborted transactions whose markers are in one segment, in marker order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct AbortedTxnIndex {
    entries: Vec<AbortedTxn>,
}

impl AbortedTxnIndex {
    /// Adds the entry of an ABORT marker just appended.
    pub(crate) fn push(&mut self, entry: AbortedTxn) {
        debug_assert!(entry.first_offset <= entry.last_offset);
        debug_assert!(
            self.entries
                .last()
                .is_none_or(|e| e.last_offset < entry.last_offset),
            "markers are appended in offset order"
        );
        self.entries.push(entry);
    }

    /// The entries, in marker order.
    pub(crate) fn entries(&self) -> &[AbortedTxn] {
        &self.entries
    }

    /// Adds to `out` the aborted transactions with records in `[fetch_offset, upper_bound)`.
    /// Returns true when no later segment can hold more of them (an entry's LSO reached
    /// `upper_bound`), so the search may stop.
    pub(crate) fn collect(
        &self,
        fetch_offset: i64,
        upper_bound: i64,
        out: &mut Vec<AbortedTxn>,
    ) -> bool {
        for e in &self.entries {
            if e.last_offset >= fetch_offset && e.first_offset < upper_bound {
                out.push(*e);
            }
            if e.last_stable_offset >= upper_bound {
                return true;
            }
        }
        false
    }

    #[cfg(test)]
    /// Drops the entries of markers at `offset` or later (the log was truncated there).
    pub(crate) fn truncate_to(&mut self, offset: i64) {
        self.entries.retain(|e| e.last_offset < offset);
    }

    /// Keeps the entries `keep` says to (compaction removed a transaction's records and its
    /// marker; retention removes whole segments with their index).
    pub(crate) fn retain(&mut self, keep: impl FnMut(&AbortedTxn) -> bool) {
        self.entries.retain(keep);
    }

    /// Writes the index for a segment of `covered_len` bytes. Like the offset index it is
    /// derived data (rebuilt when lost or stale), so it is not fsynced.
    pub(crate) fn save(&self, path: &Path, covered_len: u64) -> Result<()> {
        let rows = self.entries.iter().map(|e| {
            [
                e.producer_id,
                e.first_offset,
                e.last_offset,
                e.last_stable_offset,
            ]
        });
        let buf = encode_rows(MAGIC, covered_len, rows);
        let mut file = std::fs::File::create(path).at(path)?;
        file.write_all(&buf).at(path)?;
        Ok(())
    }

    /// Reads an index saved for a segment of `covered_len` bytes; `None` when it is missing,
    /// stale or corrupt (rebuild it then).
    pub(crate) fn load(path: &Path, covered_len: u64) -> Option<AbortedTxnIndex> {
        let bytes = std::fs::read(path).ok()?;
        Self::decode(&bytes, covered_len)
    }

    fn decode(bytes: &[u8], covered_len: u64) -> Option<AbortedTxnIndex> {
        let entries: Vec<AbortedTxn> = decode_rows::<4>(bytes, MAGIC, covered_len)?
            .into_iter()
            .map(
                |[producer_id, first_offset, last_offset, last_stable_offset]| AbortedTxn {
                    producer_id,
                    first_offset,
                    last_offset,
                    last_stable_offset,
                },
            )
            .collect();
        let ordered = entries
            .windows(2)
            .all(|w| w[0].last_offset < w[1].last_offset)
            && entries
                .iter()
                .all(|e| 0 <= e.first_offset && e.first_offset <= e.last_offset);
        ordered.then_some(AbortedTxnIndex { entries })
    }
}

/// The aborted transactions with records in `[fetch_offset, upper_bound)`, from the indexes of
/// the segment holding `fetch_offset` and those after it, in order; what a `read_committed`
/// Fetch answers with (`upper_bound` is the end of the data it returns, at most the LSO).
pub(crate) fn collect_aborted<'a>(
    indexes: impl IntoIterator<Item = &'a AbortedTxnIndex>,
    fetch_offset: i64,
    upper_bound: i64,
) -> Vec<AbortedTxn> {
    let mut out = Vec::new();
    for index in indexes {
        if index.collect(fetch_offset, upper_bound, &mut out) {
            break;
        }
    }
    out
}

/// Too many transactions open on one partition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{open} transactions are open on this partition, the most one partition keeps \
     ({MAX_ONGOING_TXNS_PER_PARTITION}); commit or abort some first"
)]
pub(crate) struct TooManyOngoing {
    pub open: usize,
}

/// A transaction that a marker completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CompletedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    /// The marker's offset.
    pub last_offset: i64,
    pub result: TxnResult,
}

/// The transactions of one partition that are not yet stable, giving its last stable offset.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct OngoingTxns {
    /// Producer id -> first offset of its open transaction.
    open: HashMap<i64, i64>,
    /// First offset -> producer id, of open transactions and of completed ones whose marker is
    /// not yet below the high watermark (so the LSO does not pass data a crash could reopen).
    unstable: BTreeMap<i64, Unstable>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Unstable {
    producer_id: i64,
    /// The marker's offset once completed.
    marker_offset: Option<i64>,
}

impl OngoingTxns {
    /// Records an appended transactional batch of a producer, starting at `first_offset`: it
    /// opens the producer's transaction unless one is open. Refused past
    /// [`MAX_ONGOING_TXNS_PER_PARTITION`] (the append must then be refused too).
    pub(crate) fn on_transactional_append(
        &mut self,
        producer_id: i64,
        first_offset: i64,
    ) -> std::result::Result<(), TooManyOngoing> {
        if self.open.contains_key(&producer_id) {
            return Ok(());
        }
        if self.unstable.len() >= MAX_ONGOING_TXNS_PER_PARTITION {
            return Err(TooManyOngoing {
                open: self.unstable.len(),
            });
        }
        debug_assert!(
            self.unstable
                .last_key_value()
                .is_none_or(|(&o, _)| o < first_offset),
            "appends come in offset order"
        );
        self.open.insert(producer_id, first_offset);
        self.unstable.insert(
            first_offset,
            Unstable {
                producer_id,
                marker_offset: None,
            },
        );
        Ok(())
    }

    /// Whether a new transaction would be refused by
    /// [`OngoingTxns::on_transactional_append`] (the unstable ones are at the limit).
    pub(crate) fn is_full(&self) -> bool {
        self.unstable.len() >= MAX_ONGOING_TXNS_PER_PARTITION
    }

    /// Whether the producer has a transaction open here (an append must check this before
    /// accepting a marker or a non-transactional batch from the producer).
    pub(crate) fn is_open(&self, producer_id: i64) -> bool {
        self.open.contains_key(&producer_id)
    }

    /// Records a marker appended at `marker_offset`. Returns the transaction it completed, or
    /// `None` when the producer had none open here (a marker written again after a restart, or
    /// for a partition the producer added but never wrote to); for an abort, the entry for the
    /// segment's [`AbortedTxnIndex`] comes from [`OngoingTxns::aborted_entry`].
    pub(crate) fn on_marker(
        &mut self,
        producer_id: i64,
        result: TxnResult,
        marker_offset: i64,
    ) -> Option<CompletedTxn> {
        let first_offset = self.open.remove(&producer_id)?;
        if let Some(u) = self.unstable.get_mut(&first_offset) {
            u.marker_offset = Some(marker_offset);
        }
        Some(CompletedTxn {
            producer_id,
            first_offset,
            last_offset: marker_offset,
            result,
        })
    }

    /// The index entry of an aborted transaction, just after its marker: the LSO in it is the
    /// first offset of the earliest transaction still open, else the offset after the marker
    /// (as Kafka computes it).
    pub(crate) fn aborted_entry(&self, completed: &CompletedTxn) -> Option<AbortedTxn> {
        (completed.result == TxnResult::Abort).then(|| AbortedTxn {
            producer_id: completed.producer_id,
            first_offset: completed.first_offset,
            last_offset: completed.last_offset,
            last_stable_offset: self
                .open
                .values()
                .copied()
                .min()
                .unwrap_or(completed.last_offset + 1),
        })
    }

    /// The high watermark moved: completed transactions whose marker is below it are stable.
    pub(crate) fn on_high_watermark(&mut self, high_watermark: i64) {
        self.unstable
            .retain(|_, u| u.marker_offset.is_none_or(|m| m >= high_watermark));
    }

    /// The first offset that is not yet stable, if any.
    pub(crate) fn first_unstable_offset(&self) -> Option<i64> {
        self.unstable.first_key_value().map(|(&o, _)| o)
    }

    /// The last stable offset: what `read_committed` consumers may read up to (exclusive).
    pub(crate) fn last_stable_offset(&self, high_watermark: i64) -> i64 {
        self.first_unstable_offset()
            .map_or(high_watermark, |o| o.min(high_watermark))
    }

    /// The open transactions, `(producer id, first offset)`, for the producer state snapshot.
    pub(crate) fn open(&self) -> impl ExactSizeIterator<Item = (i64, i64)> + '_ {
        self.open.iter().map(|(&p, &o)| (p, o))
    }

    /// The state after loading a snapshot: these transactions were open at its offset.
    pub(crate) fn from_open(open: impl IntoIterator<Item = (i64, i64)>) -> OngoingTxns {
        let mut txns = OngoingTxns::default();
        let mut sorted: Vec<(i64, i64)> = open.into_iter().collect();
        sorted.sort_by_key(|&(_, first)| first);
        for (producer_id, first_offset) in sorted {
            // The snapshot came from this bound, so it fits.
            let _ = txns.on_transactional_append(producer_id, first_offset);
        }
        txns
    }

    /// Number of open transactions.
    pub(crate) fn len(&self) -> usize {
        self.open.len()
    }

    #[cfg(test)]
    /// Whether no transaction is open.
    pub(crate) fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

/// What [`rebuild`] needs of a stored batch (its frame header says it all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchSummary {
    pub base_offset: i64,
    pub producer_id: i64,
    pub transactional: bool,
    /// `Some` for a marker (a control batch).
    pub marker: Option<TxnResult>,
}

/// Rebuilds a segment's index from its batches in order, starting from the transactions open
/// at its base offset; `txns` ends as the state at the segment's end. Every batch in the
/// segment is already durable, so completed transactions are stable at once.
pub(crate) fn rebuild(
    txns: &mut OngoingTxns,
    batches: impl IntoIterator<Item = BatchSummary>,
) -> AbortedTxnIndex {
    let mut index = AbortedTxnIndex::default();
    for b in batches {
        match b.marker {
            Some(result) => {
                if let Some(done) = txns.on_marker(b.producer_id, result, b.base_offset)
                    && let Some(entry) = txns.aborted_entry(&done)
                {
                    index.push(entry);
                }
                txns.on_high_watermark(b.base_offset + 1);
            }
            None if b.transactional => {
                // Stored batches passed this bound when they were appended.
                let _ = txns.on_transactional_append(b.producer_id, b.base_offset);
            }
            None => {}
        }
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(producer_id: i64, base_offset: i64) -> BatchSummary {
        BatchSummary {
            base_offset,
            producer_id,
            transactional: true,
            marker: None,
        }
    }

    fn marker(producer_id: i64, base_offset: i64, result: TxnResult) -> BatchSummary {
        BatchSummary {
            base_offset,
            producer_id,
            transactional: true,
            marker: Some(result),
        }
    }

    fn entry(producer_id: i64, first: i64, last: i64, lso: i64) -> AbortedTxn {
        AbortedTxn {
            producer_id,
            first_offset: first,
            last_offset: last,
            last_stable_offset: lso,
        }
    }

    #[test]
    fn lso_is_the_first_offset_of_the_earliest_open_transaction() {
        let mut t = OngoingTxns::default();
        assert_eq!(
            t.last_stable_offset(10),
            10,
            "nothing open: the high watermark"
        );
        t.on_transactional_append(1, 10).ok();
        t.on_transactional_append(2, 12).ok();
        t.on_transactional_append(1, 13).ok(); // same transaction, later batch
        assert_eq!(t.len(), 2);
        assert_eq!(t.last_stable_offset(20), 10);
        assert_eq!(t.last_stable_offset(5), 5, "never past the high watermark");
        let done = t.on_marker(1, TxnResult::Commit, 14);
        assert_eq!(
            done,
            Some(CompletedTxn {
                producer_id: 1,
                first_offset: 10,
                last_offset: 14,
                result: TxnResult::Commit
            })
        );
        assert_eq!(
            t.last_stable_offset(14),
            10,
            "the marker is not yet below the high watermark"
        );
        t.on_high_watermark(15);
        assert_eq!(t.last_stable_offset(15), 12, "producer 2 is still open");
        t.on_marker(2, TxnResult::Abort, 15);
        t.on_high_watermark(16);
        assert_eq!(t.last_stable_offset(16), 16);
        assert!(t.is_empty());
    }

    #[test]
    fn marker_for_a_producer_with_nothing_open_completes_nothing() {
        let mut t = OngoingTxns::default();
        assert_eq!(t.on_marker(7, TxnResult::Abort, 3), None);
        assert_eq!(t.first_unstable_offset(), None);
    }

    #[test]
    fn abort_entry_records_the_lso_after_the_abort() {
        let mut t = OngoingTxns::default();
        t.on_transactional_append(1, 0).ok();
        t.on_transactional_append(2, 3).ok();
        let done = t.on_marker(1, TxnResult::Abort, 5);
        let e = done.and_then(|d| t.aborted_entry(&d));
        assert_eq!(
            e,
            Some(entry(1, 0, 5, 3)),
            "producer 2 still holds the LSO at 3"
        );
        let done = t.on_marker(2, TxnResult::Abort, 6);
        assert_eq!(
            done.and_then(|d| t.aborted_entry(&d)),
            Some(entry(2, 3, 6, 7))
        );
        let mut t = OngoingTxns::default();
        t.on_transactional_append(1, 0).ok();
        let done = t.on_marker(1, TxnResult::Commit, 1);
        assert_eq!(
            done.and_then(|d| t.aborted_entry(&d)),
            None,
            "commits have no entry"
        );
    }

    #[test]
    fn too_many_open_transactions_are_refused() {
        let mut t = OngoingTxns::default();
        for pid in 0..MAX_ONGOING_TXNS_PER_PARTITION as i64 {
            assert_eq!(t.on_transactional_append(pid, pid), Ok(()));
        }
        let n = MAX_ONGOING_TXNS_PER_PARTITION as i64;
        assert_eq!(
            t.on_transactional_append(n, n),
            Err(TooManyOngoing {
                open: MAX_ONGOING_TXNS_PER_PARTITION
            })
        );
        assert_eq!(t.on_transactional_append(0, n), Ok(()), "already open");
    }

    #[test]
    fn fetch_gets_aborted_transactions_overlapping_its_range() {
        // Producer 2 was open (from 3) when producer 1's abort was written: the LSO then was 3.
        let mut index = AbortedTxnIndex::default();
        index.push(entry(1, 0, 4, 3));
        index.push(entry(2, 3, 9, 10));
        index.push(entry(3, 12, 15, 16));
        let got = |from, to| {
            let mut out = Vec::new();
            index.collect(from, to, &mut out);
            out.iter().map(|e| e.producer_id).collect::<Vec<_>>()
        };
        assert_eq!(got(0, 3), vec![1]);
        assert_eq!(got(0, 4), vec![1, 2]);
        assert_eq!(got(5, 12), vec![2]);
        assert_eq!(got(10, 12), Vec::<i64>::new());
        assert_eq!(got(10, 20), vec![3]);
        assert_eq!(got(16, 30), Vec::<i64>::new());
        let mut out = Vec::new();
        assert!(
            index.collect(0, 3, &mut out),
            "the LSO 3 after the first abort covers [0, 3)"
        );
        assert!(
            !index.collect(0, 17, &mut out),
            "later segments may hold more"
        );
    }

    #[test]
    fn search_over_segments_stops_once_an_lso_reaches_the_bound() {
        let mut first = AbortedTxnIndex::default();
        first.push(entry(1, 0, 4, 2));
        let mut second = AbortedTxnIndex::default();
        // Producer 2 began in the first segment and was aborted in the second.
        second.push(entry(2, 2, 20, 21));
        let mut third = AbortedTxnIndex::default();
        third.push(entry(3, 25, 30, 31));
        let all = [&first, &second, &third];
        let pids = |v: Vec<AbortedTxn>| v.iter().map(|e| e.producer_id).collect::<Vec<_>>();
        assert_eq!(pids(collect_aborted(all, 0, 10)), vec![1, 2]);
        assert_eq!(pids(collect_aborted(all, 0, 4)), vec![1, 2]);
        // Up to 2, the first segment's LSO (2) says no later abort has records below 2: the
        // later indexes are not read.
        assert_eq!(pids(collect_aborted(all, 0, 2)), vec![1]);
        assert_eq!(pids(collect_aborted(all, 21, 40)), vec![3]);
    }

    #[test]
    fn index_survives_save_and_load_and_refuses_stale_or_corrupt_files() {
        let Some(dir) = tempfile::tempdir().ok() else {
            return;
        };
        let path = dir.path().join("00000000000000000000.txnindex");
        let mut index = AbortedTxnIndex::default();
        index.push(entry(1, 0, 4, 5));
        index.push(entry(2, 3, 9, 10));
        index.save(&path, 4096).ok();
        assert_eq!(AbortedTxnIndex::load(&path, 4096), Some(index.clone()));
        assert_eq!(AbortedTxnIndex::load(&path, 4097), None, "stale");
        let mut bytes = std::fs::read(&path).unwrap_or_default();
        bytes[HEADER_BYTES + 3] ^= 0xff;
        std::fs::write(&path, &bytes).ok();
        assert_eq!(
            AbortedTxnIndex::load(&path, 4096),
            None,
            "corrupt: CRC fails"
        );
        assert_eq!(AbortedTxnIndex::load(&dir.path().join("missing"), 0), None);
        AbortedTxnIndex::default().save(&path, 0).ok();
        assert_eq!(
            AbortedTxnIndex::load(&path, 0),
            Some(AbortedTxnIndex::default())
        );
    }

    #[test]
    fn decode_refuses_a_count_that_does_not_match_the_file() {
        let mut index = AbortedTxnIndex::default();
        index.push(entry(1, 0, 4, 5));
        let Some(dir) = tempfile::tempdir().ok() else {
            return;
        };
        let path = dir.path().join("x.txnindex");
        index.save(&path, 1).ok();
        let mut bytes = std::fs::read(&path).unwrap_or_default();
        bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        let body = bytes.len() - 4;
        let crc = quiver_common::crc::crc32c(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(AbortedTxnIndex::decode(&bytes, 1), None);
        for n in 0..bytes.len() {
            assert_eq!(AbortedTxnIndex::decode(&bytes[..n], 1), None, "cut at {n}");
        }
    }

    #[test]
    fn truncation_and_compaction_drop_entries() {
        let mut index = AbortedTxnIndex::default();
        index.push(entry(1, 0, 4, 5));
        index.push(entry(2, 3, 9, 10));
        let mut cut = index.clone();
        cut.truncate_to(9);
        assert_eq!(cut.entries(), &[entry(1, 0, 4, 5)]);
        index.retain(|e| e.producer_id != 1);
        assert_eq!(index.entries(), &[entry(2, 3, 9, 10)]);
    }

    #[test]
    fn rebuild_from_batches_matches_the_index_written_while_appending() {
        // Segment starting at 10; producer 1 opened its transaction in the previous segment.
        let mut txns = OngoingTxns::from_open([(1, 4)]);
        let batches = [
            data(2, 10),
            BatchSummary {
                base_offset: 11,
                producer_id: -1,
                transactional: false,
                marker: None,
            },
            data(1, 12),
            marker(1, 13, TxnResult::Abort),
            data(3, 14),
            marker(2, 15, TxnResult::Commit),
            marker(3, 16, TxnResult::Abort),
            data(4, 17),
        ];
        let index = rebuild(&mut txns, batches);
        assert_eq!(
            index.entries(),
            &[entry(1, 4, 13, 10), entry(3, 14, 16, 17)]
        );
        assert_eq!(txns.open().collect::<Vec<_>>(), vec![(4, 17)]);
        assert_eq!(txns.last_stable_offset(18), 17);
    }

    /// A batch of a random partition history: producer, and what it is.
    fn any_history() -> impl Strategy<Value = Vec<(i64, u8)>> {
        proptest::collection::vec((0i64..5, 0u8..4), 0..80)
    }

    proptest! {
        /// Against a model that scans the whole history: the LSO is the first offset of the
        /// earliest open transaction, the index holds every abort, and a fetch over segments
        /// (stopping early on an entry's LSO) finds exactly the aborts overlapping its range.
        #[test]
        fn lso_and_aborted_index_match_a_full_scan(
            history in any_history(),
            segment_bytes in 1usize..20,
            from in 0i64..90,
            len in 0i64..90,
        ) {
            let batches: Vec<BatchSummary> = history
                .iter()
                .enumerate()
                .map(|(offset, &(pid, kind))| {
                    let offset = offset as i64;
                    match kind {
                        0 => BatchSummary { base_offset: offset, producer_id: pid, transactional: false, marker: None },
                        1 => data(pid, offset),
                        2 => marker(pid, offset, TxnResult::Commit),
                        _ => marker(pid, offset, TxnResult::Abort),
                    }
                })
                .collect();
            // The model.
            let mut open: HashMap<i64, i64> = HashMap::new();
            let mut aborted = Vec::new();
            for b in &batches {
                match b.marker {
                    Some(result) => {
                        if let Some(first) = open.remove(&b.producer_id)
                            && result == TxnResult::Abort
                        {
                            aborted.push((b.producer_id, first, b.base_offset));
                        }
                    }
                    None if b.transactional => {
                        open.entry(b.producer_id).or_insert(b.base_offset);
                    }
                    None => {}
                }
            }
            // Segments of `segment_bytes` batches, rebuilt one after the other.
            let mut txns = OngoingTxns::default();
            let segments: Vec<(i64, AbortedTxnIndex)> = batches
                .chunks(segment_bytes)
                .map(|chunk| (chunk[0].base_offset, rebuild(&mut txns, chunk.iter().copied())))
                .collect();
            let end = batches.len() as i64;
            prop_assert_eq!(
                txns.last_stable_offset(end),
                open.values().copied().min().unwrap_or(end).min(end)
            );
            let indexed: Vec<(i64, i64, i64)> = segments
                .iter()
                .flat_map(|(_, index)| index.entries().iter())
                .map(|e| (e.producer_id, e.first_offset, e.last_offset))
                .collect();
            prop_assert_eq!(&indexed, &aborted);
            let upper = (from + len).min(end);
            let first_segment = segments.partition_point(|(base, _)| *base <= from).saturating_sub(1);
            let found: Vec<(i64, i64, i64)> = collect_aborted(
                segments[first_segment.min(segments.len())..].iter().map(|(_, index)| index),
                from,
                upper,
            )
            .iter()
            .map(|e| (e.producer_id, e.first_offset, e.last_offset))
            .collect();
            let expected: Vec<(i64, i64, i64)> = aborted
                .iter()
                .copied()
                .filter(|&(_, first, last)| last >= from && first < upper)
                .collect();
            prop_assert_eq!(found, expected);
        }
    }
}
