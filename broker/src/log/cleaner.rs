//! Log compaction for `cleanup.policy=compact`: keep the latest record per key in closed
//! segments, drop tombstones once they are older than `delete.retention.ms`, keep offsets.
//! A segment's last batch is kept even when none of its records is (as an empty batch), so
//! every segment still ends where the next begins.
//!
//! Crash safety: each segment is rewritten to `<base>.log.cleaned`, fsynced, then renamed over
//! the original (an atomic replace). Its index files are removed before the rename and written
//! after it, so a crash leaves either the old segment (plus a `.cleaned` file that opening the
//! log deletes) or the new one (with missing indexes that opening the log rebuilds).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::BooleanArray;
use arrow::compute::filter_record_batch;

use super::frame::{self, BatchHeader, FrameEncoder};
use super::segment::{self, Segment, SegmentView};
use super::storage::OpenMode;
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
        let (config, closed) = {
            let inner = self.inner.lock();
            let n = inner.segments.len();
            let closed: Vec<(SegmentView, i64)> = inner
                .segments
                .values()
                .take(n.saturating_sub(1))
                .map(|s| (s.view(), s.max_timestamp))
                .collect();
            (inner.config.clone(), closed)
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

        // Pass 1: the latest offset of every key.
        let mut latest: HashMap<Vec<u8>, i64> = HashMap::new();
        let mut map_bytes = 0usize;
        let mut mapped = 0;
        for view in &cleanable {
            for_each_frame(view, |h, buf, _| {
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

        // Pass 2: rewrite each mapped segment with only the latest records.
        let mut stats = CleanStats::default();
        let mut encoder = FrameEncoder::default();
        for view in cleanable.iter().take(mapped) {
            let tombstones_expire = max_ts
                .get(&view.base_offset)
                .is_some_and(|&t| t < now.saturating_sub(config.delete_retention_ms));
            let cleaned_path = view.path.with_extension("log.cleaned");
            let out = self
                .storage
                .open(&cleaned_path, OpenMode::CreateTruncate)
                .at(&cleaned_path)?;
            let mut out_pos = 0u64;
            let mut scratch = Vec::new();
            let mut changed = false;
            for_each_frame(view, |h, buf, last_frame| {
                let batch = frame::decode(buf, h)?;
                let cols = EnvelopeColumns::try_new(&batch)?;
                let keep: BooleanArray = (0..batch.num_rows())
                    .map(|row| {
                        let key = cols.key(row).unwrap_or_default();
                        let is_latest = latest.get(key) == Some(&cols.offsets.value(row));
                        let expired_tombstone = cols.value(row).is_none() && tombstones_expire;
                        Some(is_latest && !expired_tombstone)
                    })
                    .collect();
                let kept = keep.true_count();
                stats.records_kept += kept as u64;
                stats.records_removed += (batch.num_rows() - kept) as u64;
                stats.bytes_before += h.frame_len;
                // The last batch stays, emptied if need be, so the segment still ends where
                // the next one starts: recovery takes a hole between segments for writes that
                // a crash lost (as Kafka keeps empty batches, this keeps the offsets).
                if kept == 0 && !last_frame {
                    changed = true;
                    return Ok(());
                }
                let bytes: &[u8] = if kept == batch.num_rows() {
                    buf.as_slice()
                } else {
                    changed = true;
                    let filtered = filter_record_batch(&batch, &keep)?;
                    let fcols = EnvelopeColumns::try_new(&filtered)?;
                    let ts = fcols.timestamps.values();
                    let header = BatchHeader {
                        record_count: kept as i32,
                        first_timestamp: ts.first().copied().unwrap_or(h.batch.first_timestamp),
                        max_timestamp: ts.iter().copied().max().unwrap_or(h.batch.max_timestamp),
                        ..h.batch
                    };
                    scratch.clear();
                    encoder.encode(&header, &filtered, &mut scratch)?;
                    &scratch
                };
                out.write_all_at(bytes, out_pos).at(&cleaned_path)?;
                out_pos += bytes.len() as u64;
                Ok(())
            })?;
            stats.bytes_after += out_pos;
            if !changed {
                drop(out);
                self.storage.remove_file(&cleaned_path).at(&cleaned_path)?;
                continue;
            }
            if let Err(e) = out.sync_data() {
                return Err(self.go_offline(cleaned_path, &e));
            }
            drop(out);
            if crash == Some(CrashPoint::BeforeSwap) {
                return Ok(stats);
            }
            self.swap_in(view, &cleaned_path, crash)?;
            stats.segments_cleaned += 1;
        }
        if stats.segments_cleaned > 0 {
            tracing::info!(topic = %self.topic, partition = self.partition, segments = stats.segments_cleaned,
                kept = stats.records_kept, removed = stats.records_removed, "compacted");
        }
        Ok(stats)
    }

    /// Replaces a closed segment by its cleaned copy, if the segment is still the one we read.
    fn swap_in(
        &self,
        view: &SegmentView,
        cleaned: &std::path::Path,
        crash: Option<CrashPoint>,
    ) -> Result<()> {
        let mut inner = self.inner.lock();
        let interval = inner.config.index_interval_bytes;
        let still_there = inner
            .segments
            .get(&view.base_offset)
            .is_some_and(|s| Arc::ptr_eq(&s.file, &view.file));
        if !still_there {
            // Retention removed it meanwhile.
            let _ = self.storage.remove_file(cleaned);
            return Ok(());
        }
        let dir = self.dir.clone();
        for suffix in ["index", "timeindex"] {
            let p = dir.join(segment::file_name(view.base_offset, suffix));
            if let Err(e) = self.storage.remove_file(&p)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(BrokerError::io(p, e));
            }
        }
        self.storage.rename(cleaned, &view.path).at(&view.path)?;
        if let Err(e) = self.storage.sync_dir(&dir) {
            return Err(self.go_offline(dir, &e));
        }
        if crash == Some(CrashPoint::AfterSwap) {
            return Ok(());
        }
        // The indexes are gone, so opening scans the new file and rebuilds them.
        let (seg, _) = Segment::open(&*self.storage, &dir, view.base_offset, false, interval)?;
        seg.save_indexes(&*self.storage)?;
        inner.segments.insert(view.base_offset, seg);
        Ok(())
    }
}
