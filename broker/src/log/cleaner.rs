//! Log compaction for `cleanup.policy=compact`: keep the latest record per key in closed
//! segments, drop tombstones once they are older than `delete.retention.ms`, keep offsets.
//!
//! Transactions: only segments wholly below the last stable offset are cleaned (an undecided
//! transaction's records may still be aborted). Records of aborted transactions are removed
//! and never shadow an older value of their key, as Kafka's cleaner does. A marker goes once
//! it is obsolete and its segment is past `delete.retention.ms` (Kafka's rule, so a reader
//! that was behind still sees it): an ABORT marker always (its transaction's records are gone
//! after the pass, and its aborted-index entry goes with it), a COMMIT marker when none of its
//! transaction's records were kept. Each pass reads every cleanable segment from the first,
//! so it sees every transaction whose marker it may remove whole. A batch emptied by
//! compaction and kept to end its segment loses its transactional flag, so it can never open
//! a transaction that no marker ends.
//! A segment's last batch is kept even when none of its records is (as an empty batch), so
//! every segment still ends where the next begins.
//!
//! The passes read and write on blocking threads, never on the async runtime, and the
//! partition lock is held only to swap a cleaned segment into the list, not across the rename
//! and directory fsync, so appends to a partition being compacted keep their latency.
//!
//! Crash safety: each segment is rewritten to `<base>.log.cleaned`, fsynced, then renamed over
//! the original (an atomic replace). Its index files are removed before the rename and written
//! after it, so a crash leaves either the old segment (plus a `.cleaned` file that opening the
//! log deletes) or the new one (with missing indexes that opening the log rebuilds).

use std::collections::HashMap;

use quiver_common::batch::attributes;

use crate::txn::AbortedTxn;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::BooleanArray;
use arrow::compute::filter_record_batch;

use super::frame::{self, BatchHeader, FrameEncoder};
use super::segment::{self, Segment, SegmentView};
use super::storage::Storage;
use super::{Log, now_ms};
use crate::error::{BrokerError, IoContext, Result};
use crate::record::EnvelopeColumns;

/// Upper bound on the key → offset map of one cleaning pass (Kafka's dedupe buffer). Segments
/// whose keys do not fit wait for the next pass.
const MAX_KEY_MAP_BYTES: usize = 128 << 20;

/// What one compaction pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CleanStats {
    pub segments_cleaned: usize,
    pub records_kept: u64,
    pub records_removed: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// Where a test may stop a pass to simulate a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// After the cleaned file is written and fsynced, before it replaces the segment.
    BeforeSwap,
    /// After the rename, before the new indexes are written.
    AfterSwap,
}

/// Calls `f` for every frame of a segment view, with its bytes and whether it is the last.
fn for_each_frame(
    view: &SegmentView,
    mut f: impl FnMut(&frame::FrameHeader, &arrow::buffer::Buffer, bool) -> Result<()>,
) -> Result<()> {
    let mut pos = 0;
    while pos < view.end {
        let h = segment::read_header(&*view.file, &view.path, pos, view.end)?;
        let buf = segment::read_aligned(&*view.file, &view.path, pos, h.frame_len as usize)?;
        if !frame::crc_matches(&buf, &h) {
            return Err(BrokerError::Corrupt {
                path: view.path.clone(),
                reason: format!("CRC mismatch at position {pos}"),
            });
        }
        pos += h.frame_len;
        f(&h, &buf, pos >= view.end)?;
    }
    Ok(())
}

impl Log {
    /// Runs one compaction pass over the closed segments. No-op unless the topic is compacted.
    pub async fn compact(&self) -> Result<CleanStats> {
        self.compact_until(now_ms(), None).await
    }

    /// A compaction pass at time `now`, optionally stopping at `crash` (tests).
    pub async fn compact_until(&self, now: i64, crash: Option<CrashPoint>) -> Result<CleanStats> {
        let _one_at_a_time = self.cleaner_lock.lock().await;
        if self.is_offline() {
            // Its disk failed: rewrite nothing there until a restart.
            return Ok(CleanStats::default());
        }
        let hw = self.high_watermark();
        let (config, closed, aborted) = {
            let mut inner = self.inner.lock();
            let lso = inner.last_stable_offset(hw);
            let n = inner.segments.len();
            let closed: Vec<(SegmentView, i64)> = inner
                .segments
                .values()
                .take(n.saturating_sub(1))
                .take_while(|s| s.next_offset <= lso)
                .map(|s| (s.view(), s.max_timestamp))
                .collect();
            let aborted = AbortedRanges::of(inner.segments.values().map(|s| s.aborted.entries()));
            (self.config(), closed, Arc::new(aborted))
        };
        if !config.cleanup_policy.compact {
            return Ok(CleanStats::default());
        }
        // Only segments whose newest record is older than min.compaction.lag.ms.
        let lag_limit = now.saturating_sub(config.min_compaction_lag_ms);
        let mut max_ts = HashMap::new();
        let mut cleanable = Vec::new();
        for (view, newest) in closed {
            if newest > lag_limit {
                break;
            }
            max_ts.insert(view.base_offset, newest);
            cleanable.push(view);
        }

        // Both passes read and write whole segments: they run on blocking threads, and only
        // the swap of a cleaned segment into the list takes the partition lock, briefly.
        let views = cleanable.clone();
        let ranges = aborted.clone();
        let (latest, mapped) = blocking(move || map_latest_offsets(&views, &ranges)).await?;
        let latest = Arc::new(latest);
        let mut stats = CleanStats::default();
        let mut track = TxnTrack::default();
        for view in cleanable.into_iter().take(mapped) {
            let tombstones_expire = max_ts
                .get(&view.base_offset)
                .is_some_and(|&t| t < now.saturating_sub(config.delete_retention_ms));
            let (storage, latest, source) = (self.storage.clone(), latest.clone(), view.clone());
            let ranges = aborted.clone();
            let interval = config.index_interval_bytes;
            let (rewritten, returned) = blocking(move || {
                let rules = Rules {
                    latest: &latest,
                    aborted: &ranges,
                    tombstones_expire,
                };
                let mut track = track;
                let rewritten = rewrite_segment(&*storage, &source, &rules, &mut track, interval)?;
                Ok((rewritten, track))
            })
            .await?;
            track = returned;
            let (cleaned, segment_stats) = match rewritten {
                Ok(r) => r,
                Err((path, e)) => return Err(self.go_offline("fsync", path, &e)),
            };
            stats.records_kept += segment_stats.records_kept;
            stats.records_removed += segment_stats.records_removed;
            stats.bytes_before += segment_stats.bytes_before;
            stats.bytes_after += segment_stats.bytes_after;
            let Some((cleaned, removed_markers)) = cleaned else {
                continue;
            };
            if crash == Some(CrashPoint::BeforeSwap) {
                return Ok(stats);
            }
            if self
                .swap_in(&view, cleaned, &removed_markers, crash)
                .await?
            {
                stats.segments_cleaned += 1;
            }
        }
        if stats.segments_cleaned > 0 {
            tracing::info!(topic = %self.topic, partition = self.partition, segments = stats.segments_cleaned,
                kept = stats.records_kept, removed = stats.records_removed, "compacted");
        }
        Ok(stats)
    }

    /// Replaces a closed segment by its cleaned copy (written and fsynced at its `.cleaned`
    /// path, indexes built in memory), if the segment is still the one that was read. Returns
    /// whether it did.
    ///
    /// The partition lock is held only to check and to insert: the rename and the directory
    /// fsync run on a blocking thread while readers keep using the old file (its inode lives as
    /// long as their handles), and retention leaves the segment alone meanwhile.
    async fn swap_in(
        &self,
        view: &SegmentView,
        mut cleaned: Segment,
        removed_markers: &[i64],
        crash: Option<CrashPoint>,
    ) -> Result<bool> {
        let cleaned_path = cleaned.path.clone();
        {
            let mut inner = self.inner.lock();
            let current = inner
                .segments
                .get(&view.base_offset)
                .filter(|s| Arc::ptr_eq(&s.file, &view.file));
            // The aborted transactions whose markers stay keep their entries.
            if let Some(current) = current {
                cleaned.aborted = current.aborted.clone();
                cleaned
                    .aborted
                    .retain(|e| !removed_markers.contains(&e.last_offset));
            } else {
                // Retention removed it meanwhile.
                drop(inner);
                let _ = self.storage.remove_file(&cleaned_path);
                return Ok(false);
            }
            inner.swapping = Some(view.base_offset);
        }
        let (storage, dir, base, target) = (
            self.storage.clone(),
            self.dir.clone(),
            view.base_offset,
            view.path.clone(),
        );
        let swapped = blocking(move || {
            // Indexes go first: a crash after the rename finds none and rebuilds them.
            for suffix in ["index", "timeindex"] {
                let p = dir.join(segment::file_name(base, suffix));
                if let Err(e) = storage.remove_file(&p)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    return Err(BrokerError::io(p, e));
                }
            }
            storage.rename(&cleaned_path, &target).at(&target)?;
            Ok(storage.sync_dir(&dir).map_err(|e| (dir, e)))
        })
        .await;
        let swapped = match swapped {
            Ok(Ok(())) => Ok(()),
            Ok(Err((dir, e))) => Err(self.go_offline("fsync", dir, &e)),
            Err(e) => Err(e),
        };
        if swapped.is_err() || crash == Some(CrashPoint::AfterSwap) {
            self.inner.lock().swapping = None;
            return swapped.map(|()| false);
        }
        cleaned.path = view.path.clone();
        let storage = self.storage.clone();
        let cleaned = blocking(move || cleaned.save_indexes(&*storage).map(|()| cleaned)).await;
        let mut inner = self.inner.lock();
        inner.swapping = None;
        match cleaned {
            Ok(cleaned) => {
                inner.segments.insert(base, cleaned);
                Ok(true)
            }
            // The renamed file is in place and its indexes are rebuilt at the next open; until
            // then the old handle keeps serving reads of the same records.
            Err(e) => Err(e),
        }
    }
}

/// Runs `f` on a blocking thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BrokerError::Internal(format!("a compaction task failed: {e}")))?
}

/// The aborted transactions of a partition, by producer: `(first offset, marker offset)`.
#[derive(Debug, Default)]
struct AbortedRanges(HashMap<i64, Vec<(i64, i64)>>);

impl AbortedRanges {
    fn of<'a>(indexes: impl Iterator<Item = &'a [AbortedTxn]>) -> AbortedRanges {
        let mut ranges: HashMap<i64, Vec<(i64, i64)>> = HashMap::new();
        for e in indexes.flatten() {
            ranges
                .entry(e.producer_id)
                .or_default()
                .push((e.first_offset, e.last_offset));
        }
        AbortedRanges(ranges)
    }

    /// Whether a stored batch holds records of an aborted transaction.
    fn holds(&self, h: &BatchHeader) -> bool {
        let p = &h.producer;
        p.attributes & attributes::TRANSACTIONAL != 0
            && p.attributes & attributes::CONTROL == 0
            && self.0.get(&p.producer_id).is_some_and(|ranges| {
                ranges
                    .iter()
                    .any(|&(first, last)| first <= h.base_offset && h.base_offset < last)
            })
    }
}

/// Whether a stored batch is a control batch (a transaction marker).
fn is_control(h: &BatchHeader) -> bool {
    h.producer.attributes & attributes::CONTROL != 0
}

/// Pass 1: the latest offset of every key, over as many segments as fit the key map. Returns
/// the map and how many segments it covers. Markers and aborted records are not mapped: they
/// never shadow a key's value.
fn map_latest_offsets(
    cleanable: &[SegmentView],
    aborted: &AbortedRanges,
) -> Result<(HashMap<Vec<u8>, i64>, usize)> {
    let mut latest: HashMap<Vec<u8>, i64> = HashMap::new();
    let mut map_bytes = 0usize;
    let mut mapped = 0;
    for view in cleanable {
        for_each_frame(view, |h, buf, _| {
            if is_control(&h.batch) || aborted.holds(&h.batch) {
                return Ok(());
            }
            let batch = frame::decode(buf, h)?;
            let cols = EnvelopeColumns::try_new(&batch)?;
            for row in 0..batch.num_rows() {
                let key = cols.key(row).unwrap_or_default();
                let offset = cols.offsets.value(row);
                if let Some(o) = latest.get_mut(key) {
                    *o = offset;
                } else {
                    map_bytes += key.len() + 48;
                    latest.insert(key.to_vec(), offset);
                }
            }
            Ok(())
        })?;
        mapped += 1;
        if map_bytes > MAX_KEY_MAP_BYTES {
            break;
        }
    }
    Ok((latest, mapped))
}

/// What rewriting a segment gave: the cleaned segment (`None` when nothing changed), written
/// and fsynced at its `.cleaned` path with its indexes in memory, with the offsets of the
/// ABORT markers it no longer holds, and its counts. The inner `Err` is a failed fsync (the
/// partition must go offline).
type Rewritten =
    std::result::Result<(Option<(Segment, Vec<i64>)>, CleanStats), (PathBuf, std::io::Error)>;

/// What pass 2 knows of transactions from the segments before the one it rewrites: per
/// producer, whether a record of its current transaction was kept.
#[derive(Debug, Default)]
struct TxnTrack {
    retained: HashMap<i64, bool>,
}

/// What pass 2 keeps.
struct Rules<'a> {
    /// The latest offset of each key.
    latest: &'a HashMap<Vec<u8>, i64>,
    aborted: &'a AbortedRanges,
    /// The segment's tombstones are past `delete.retention.ms`.
    tombstones_expire: bool,
}

/// Pass 2 for one segment: keeps only the latest record of each key (and tombstones until
/// they expire) and the markers still needed, and drops aborted records, as a new segment
/// file beside it.
fn rewrite_segment(
    storage: &dyn Storage,
    view: &SegmentView,
    rules: &Rules<'_>,
    track: &mut TxnTrack,
    index_interval_bytes: u64,
) -> Result<Rewritten> {
    let cleaned_path = view.path.with_extension("log.cleaned");
    let mut out = Segment::create_at(
        storage,
        &cleaned_path,
        view.base_offset,
        index_interval_bytes,
        now_ms(),
    )?;
    let mut stats = CleanStats::default();
    let mut encoder = FrameEncoder::default();
    let mut scratch = Vec::new();
    let mut changed = false;
    let mut removed_markers = Vec::new();
    for_each_frame(view, |h, buf, last_frame| {
        let pid = h.batch.producer.producer_id;
        let transactional = h.batch.producer.attributes & attributes::TRANSACTIONAL != 0;
        if is_control(&h.batch) {
            stats.bytes_before += h.frame_len;
            let marker = crate::txn::records::marker_of(&frame::decode(buf, h)?);
            let retained = track.retained.remove(&pid).unwrap_or(false);
            let obsolete = match marker {
                Some(crate::txn::TxnResult::Abort) => true,
                Some(crate::txn::TxnResult::Commit) => !retained,
                None => false,
            };
            // The last frame stays whatever it is, so the segment still ends where it did.
            if obsolete && rules.tombstones_expire && !last_frame {
                changed = true;
                stats.records_removed += h.batch.record_count.max(0) as u64;
                if marker == Some(crate::txn::TxnResult::Abort) {
                    removed_markers.push(h.batch.base_offset);
                }
                return Ok(());
            }
            stats.records_kept += h.batch.record_count.max(0) as u64;
            return out.append(buf.as_slice(), &h.batch);
        }
        let batch = frame::decode(buf, h)?;
        let cols = EnvelopeColumns::try_new(&batch)?;
        let aborted = rules.aborted.holds(&h.batch);
        let keep: BooleanArray = (0..batch.num_rows())
            .map(|row| {
                let key = cols.key(row).unwrap_or_default();
                let is_latest = rules.latest.get(key) == Some(&cols.offsets.value(row));
                let expired_tombstone = cols.value(row).is_none() && rules.tombstones_expire;
                Some(is_latest && !expired_tombstone && !aborted)
            })
            .collect();
        let kept = keep.true_count();
        if transactional && !aborted {
            *track.retained.entry(pid).or_default() |= kept > 0;
        }
        stats.records_kept += kept as u64;
        stats.records_removed += (batch.num_rows() - kept) as u64;
        stats.bytes_before += h.frame_len;
        // The last batch stays, emptied if need be, so the segment still ends where the next
        // one starts: recovery takes a hole between segments for writes that a crash lost (as
        // Kafka keeps empty batches, this keeps the offsets).
        if kept == 0 && !last_frame {
            changed = true;
            return Ok(());
        }
        if kept == batch.num_rows() {
            return out.append(buf.as_slice(), &h.batch);
        }
        changed = true;
        let filtered = filter_record_batch(&batch, &keep)?;
        let fcols = EnvelopeColumns::try_new(&filtered)?;
        let ts = fcols.timestamps.values();
        let mut producer = h.batch.producer;
        if kept == 0 {
            // Kept only to end the segment: it must not open a transaction when the partition's
            // transactions are rebuilt, since its marker may go.
            producer.attributes &= !attributes::TRANSACTIONAL;
        }
        let header = BatchHeader {
            record_count: kept as i32,
            first_timestamp: ts.first().copied().unwrap_or(h.batch.first_timestamp),
            max_timestamp: ts.iter().copied().max().unwrap_or(h.batch.max_timestamp),
            producer,
            ..h.batch
        };
        scratch.clear();
        encoder.encode(&header, &filtered, &mut scratch)?;
        out.append(&scratch, &header)
    })?;
    stats.bytes_after += out.size;
    if !changed {
        drop(out);
        storage.remove_file(&cleaned_path).at(&cleaned_path)?;
        return Ok(Ok((None, stats)));
    }
    if let Err(e) = out.file.sync_data() {
        return Ok(Err((cleaned_path, e)));
    }
    Ok(Ok((Some((out, removed_markers)), stats)))
}
