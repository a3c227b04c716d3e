//! Idempotent producer state of one partition: per producer id, its epoch, its last sequence
//! number and its five most recent batches, so a retried batch is recognised (and answered with
//! its original offsets) and a gap in sequences is refused.
//!
//! The state is snapshotted to `<offset>.snapshot` when a segment rolls and when the log closes,
//! and rebuilt on open from the newest snapshot plus the frame headers after it (each frame
//! keeps its producer id, epoch and base sequence).
//!
//! Producers idle longer than `producer.id.expiration.ms` are forgotten by the broker's timer
//! ([`ProducerStates::expire`]); the next batch of a forgotten producer is accepted whatever its
//! sequence, as Kafka (2.5 and later) accepts it from a producer it has no state for.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use crate::error::{BrokerError, IoContext, Result};

/// Batches remembered per producer (Kafka's `max.in.flight.requests.per.connection` limit).
const RECENT_BATCHES: usize = 5;
const MAGIC: &[u8; 4] = b"QPST";
/// Version 2 adds the open transactions after the producers.
const SNAPSHOT_VERSION: u32 = 2;

/// One producer as DescribeProducers shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerSummary {
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// The last sequence number written; -1 for none.
    pub last_sequence: i32,
    pub last_timestamp_ms: i64,
    /// The first offset of the producer's open transaction here.
    pub current_txn_start_offset: Option<i64>,
}

/// A producer state snapshot as loaded.
#[derive(Debug)]
pub struct Snapshot {
    pub states: ProducerStates,
    /// The offset the snapshot is valid at (replay the log from here).
    pub offset: i64,
    /// `(producer id, first offset)` of the transactions open at `offset`.
    pub open_txns: Vec<(i64, i64)>,
}

/// A batch a producer wrote: its sequence range and the offsets it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedBatch {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: i64,
    pub last_offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    epoch: i16,
    batches: VecDeque<CachedBatch>,
    last_append_ms: i64,
}

/// What to do with a batch from an idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Append it.
    Append,
    /// Already written: answer with these offsets and append nothing.
    Duplicate(CachedBatch),
}

fn last_seq(first: i32, count: i32) -> i32 {
    ((i64::from(first) + i64::from(count) - 1) % (i64::from(i32::MAX) + 1)) as i32
}

fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX { 0 } else { seq + 1 }
}

/// The producer state of one partition.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProducerStates {
    producers: HashMap<i64, Entry>,
}

impl ProducerStates {
    /// Checks a batch of `count` sequence numbers from `first_seq` against the producer's state.
    pub fn check(
        &self,
        topic: &str,
        partition: i32,
        pid: i64,
        epoch: i16,
        first_seq: i32,
        count: i32,
    ) -> Result<SequenceCheck> {
        let Some(entry) = self.producers.get(&pid) else {
            // Unknown producer (new, or its state expired): accept, as Kafka does.
            return Ok(SequenceCheck::Append);
        };
        if epoch < entry.epoch {
            return Err(BrokerError::InvalidProducerEpoch {
                producer_id: pid,
                epoch,
                current_epoch: entry.epoch,
            });
        }
        if epoch > entry.epoch {
            return if first_seq == 0 {
                Ok(SequenceCheck::Append)
            } else {
                Err(BrokerError::OutOfOrderSequence {
                    topic: topic.to_owned(),
                    partition,
                    producer_id: pid,
                    expected: 0,
                    received: first_seq,
                })
            };
        }
        let last = last_seq(first_seq, count);
        if let Some(dup) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == first_seq && b.last_seq == last)
        {
            return Ok(SequenceCheck::Duplicate(*dup));
        }
        let expected = entry.batches.back().map_or(0, |b| next_seq(b.last_seq));
        if first_seq != expected {
            return Err(BrokerError::OutOfOrderSequence {
                topic: topic.to_owned(),
                partition,
                producer_id: pid,
                expected,
                received: first_seq,
            });
        }
        Ok(SequenceCheck::Append)
    }

    /// Records an appended batch.
    pub fn update(
        &mut self,
        pid: i64,
        epoch: i16,
        first_seq: i32,
        count: i32,
        (base_offset, last_offset): (i64, i64),
        now: i64,
    ) {
        let entry = self.producers.entry(pid).or_insert_with(|| Entry {
            epoch,
            batches: VecDeque::new(),
            last_append_ms: now,
        });
        if epoch != entry.epoch {
            entry.epoch = epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == RECENT_BATCHES {
            entry.batches.pop_front();
        }
        entry.batches.push_back(CachedBatch {
            first_seq,
            last_seq: last_seq(first_seq, count),
            base_offset,
            last_offset,
        });
        entry.last_append_ms = now;
    }

    /// Refuses a write of `pid` at `epoch` when a newer epoch of it was seen (a fenced
    /// producer), for writes that carry no sequence (transactional offsets, markers).
    pub fn check_epoch(&self, pid: i64, epoch: i16) -> Result<()> {
        match self.producers.get(&pid) {
            Some(entry) if epoch < entry.epoch => Err(BrokerError::InvalidProducerEpoch {
                producer_id: pid,
                epoch,
                current_epoch: entry.epoch,
            }),
            _ => Ok(()),
        }
    }

    /// Records that `pid` wrote at `epoch` without a sequence (a marker, or transactional
    /// offsets): a newer epoch replaces the old one and its sequences start over, so later
    /// writes of the older epoch are refused.
    pub fn note_epoch(&mut self, pid: i64, epoch: i16, now: i64) {
        let entry = self.producers.entry(pid).or_insert_with(|| Entry {
            epoch,
            batches: VecDeque::new(),
            last_append_ms: now,
        });
        if epoch > entry.epoch {
            entry.epoch = epoch;
            entry.batches.clear();
        }
        entry.last_append_ms = entry.last_append_ms.max(now);
    }

    /// Every producer known here, for Kafka's DescribeProducers; `open_txn` gives the first
    /// offset of a producer's open transaction.
    pub fn summaries(&self, open_txn: impl Fn(i64) -> Option<i64>) -> Vec<ProducerSummary> {
        let mut out: Vec<ProducerSummary> = self
            .producers
            .iter()
            .map(|(&pid, e)| ProducerSummary {
                producer_id: pid,
                producer_epoch: e.epoch,
                last_sequence: e.batches.back().map_or(-1, |b| b.last_seq),
                last_timestamp_ms: e.last_append_ms,
                current_txn_start_offset: open_txn(pid),
            })
            .collect();
        out.sort_by_key(|p| p.producer_id);
        out
    }

    /// Number of producers tracked.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// Forgets producers whose last append is `expiration_ms` or more before `now_ms` (Kafka's
    /// `producer.id.expiration.ms`). Returns how many were forgotten.
    /// Producers for which `keep` is true (those with a transaction open) stay.
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64, keep: impl Fn(i64) -> bool) -> usize {
        let before = self.producers.len();
        self.producers
            .retain(|&pid, e| now_ms.saturating_sub(e.last_append_ms) < expiration_ms || keep(pid));
        before - self.producers.len()
    }

    /// Writes a snapshot of the state as of `offset`, with the transactions open then
    /// (`(producer id, first offset)`), and removes all but the newest two snapshots.
    pub fn save(
        &mut self,
        dir: &Path,
        offset: i64,
        open_txns: impl ExactSizeIterator<Item = (i64, i64)>,
    ) -> Result<()> {
        let mut buf = Vec::with_capacity(40 + self.producers.len() * 64 + open_txns.len() * 16);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        buf.extend_from_slice(&offset.to_le_bytes());
        buf.extend_from_slice(&(self.producers.len() as u64).to_le_bytes());
        for (pid, e) in &self.producers {
            buf.extend_from_slice(&pid.to_le_bytes());
            buf.extend_from_slice(&e.epoch.to_le_bytes());
            buf.extend_from_slice(&e.last_append_ms.to_le_bytes());
            buf.push(e.batches.len() as u8);
            for b in &e.batches {
                buf.extend_from_slice(&b.first_seq.to_le_bytes());
                buf.extend_from_slice(&b.last_seq.to_le_bytes());
                buf.extend_from_slice(&b.base_offset.to_le_bytes());
                buf.extend_from_slice(&b.last_offset.to_le_bytes());
            }
        }
        buf.extend_from_slice(&(open_txns.len() as u64).to_le_bytes());
        for (pid, first_offset) in open_txns {
            buf.extend_from_slice(&pid.to_le_bytes());
            buf.extend_from_slice(&first_offset.to_le_bytes());
        }
        let crc = quiver_common::crc::crc32c(&buf);
        buf.extend_from_slice(&crc.to_le_bytes());
        let path = snapshot_path(dir, offset);
        let tmp = path.with_extension("snapshot.tmp");
        std::fs::write(&tmp, &buf).at(&tmp)?;
        std::fs::rename(&tmp, &path).at(&path)?;
        let mut all = list_snapshots(dir)?;
        all.sort_unstable();
        let keep_from = all.len().saturating_sub(2);
        for old in &all[..keep_from] {
            let p = snapshot_path(dir, *old);
            std::fs::remove_file(&p).at(&p)?;
        }
        Ok(())
    }

    /// Loads the newest snapshot at or below `end_offset` (deleting any above it, which a
    /// truncated log has outrun). Returns the state, the offset it is valid at and the
    /// transactions open then.
    pub fn load(dir: &Path, end_offset: i64) -> Result<Option<Snapshot>> {
        let mut all = list_snapshots(dir)?;
        all.sort_unstable();
        for &offset in all.iter().rev() {
            let path = snapshot_path(dir, offset);
            if offset > end_offset {
                std::fs::remove_file(&path).at(&path)?;
                continue;
            }
            if let Some((states, open_txns)) = std::fs::read(&path).ok().and_then(|b| parse(&b)) {
                return Ok(Some(Snapshot {
                    states,
                    offset,
                    open_txns,
                }));
            }
            tracing::warn!(file = %path.display(), "ignoring an unreadable producer state snapshot");
        }
        Ok(None)
    }
}

fn snapshot_path(dir: &Path, offset: i64) -> PathBuf {
    dir.join(format!("{offset:020}.snapshot"))
}

fn list_snapshots(dir: &Path) -> Result<Vec<i64>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).at(dir)? {
        let name = entry.at(dir)?.file_name();
        if let Some(stem) = name.to_string_lossy().strip_suffix(".snapshot")
            && let Ok(o) = stem.parse::<i64>()
        {
            out.push(o);
        }
    }
    Ok(out)
}

fn parse(bytes: &[u8]) -> Option<(ProducerStates, Vec<(i64, i64)>)> {
    if bytes.len() < 28 || &bytes[..4] != MAGIC {
        return None;
    }
    let version = u32::from_le_bytes(bytes[4..8].try_into().ok()?);
    if !(1..=SNAPSHOT_VERSION).contains(&version) {
        return None;
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if quiver_common::crc::crc32c(body).to_le_bytes() != crc {
        return None;
    }
    let mut at = 8 + 8;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = body.get(at..at + n)?;
        at += n;
        Some(s)
    };
    let u64_of = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap_or([0; 8]));
    let count = u64_of(take(8)?) as usize;
    let mut producers = HashMap::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        let pid = u64_of(take(8)?) as i64;
        let epoch = i16::from_le_bytes(take(2)?.try_into().ok()?);
        let last_append_ms = u64_of(take(8)?) as i64;
        let n = take(1)?[0] as usize;
        let mut batches = VecDeque::with_capacity(n.min(RECENT_BATCHES));
        for _ in 0..n {
            let first_seq = i32::from_le_bytes(take(4)?.try_into().ok()?);
            let last_seq = i32::from_le_bytes(take(4)?.try_into().ok()?);
            let base_offset = u64_of(take(8)?) as i64;
            let last_offset = u64_of(take(8)?) as i64;
            batches.push_back(CachedBatch {
                first_seq,
                last_seq,
                base_offset,
                last_offset,
            });
        }
        producers.insert(
            pid,
            Entry {
                epoch,
                batches,
                last_append_ms,
            },
        );
    }
    let mut open_txns = Vec::new();
    if version >= 2 {
        let n = u64_of(take(8)?) as usize;
        open_txns.reserve(n.min(1 << 16));
        for _ in 0..n {
            let pid = u64_of(take(8)?) as i64;
            let first_offset = u64_of(take(8)?) as i64;
            open_txns.push((pid, first_offset));
        }
    }
    Some((ProducerStates { producers }, open_txns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_duplicates_gaps_and_epochs() {
        let mut s = ProducerStates::default();
        assert_eq!(
            s.check("t", 0, 1, 0, 0, 5).ok(),
            Some(SequenceCheck::Append)
        );
        s.update(1, 0, 0, 5, (100, 104), 0);
        assert_eq!(
            s.check("t", 0, 1, 0, 5, 5).ok(),
            Some(SequenceCheck::Append)
        );
        let dup = s.check("t", 0, 1, 0, 0, 5).ok();
        assert_eq!(
            dup,
            Some(SequenceCheck::Duplicate(CachedBatch {
                first_seq: 0,
                last_seq: 4,
                base_offset: 100,
                last_offset: 104
            }))
        );
        assert!(matches!(
            s.check("t", 0, 1, 0, 7, 1),
            Err(BrokerError::OutOfOrderSequence {
                expected: 5,
                received: 7,
                ..
            })
        ));
        // A newer epoch must start at 0; an older one is fenced.
        assert!(s.check("t", 0, 1, 1, 3, 1).is_err());
        assert_eq!(
            s.check("t", 0, 1, 1, 0, 1).ok(),
            Some(SequenceCheck::Append)
        );
        s.update(1, 1, 0, 1, (105, 105), 0);
        assert!(matches!(
            s.check("t", 0, 1, 0, 5, 1),
            Err(BrokerError::InvalidProducerEpoch { .. })
        ));
        // Wrap-around at i32::MAX.
        s.update(2, 0, i32::MAX - 1, 2, (0, 1), 0);
        assert_eq!(
            s.check("t", 0, 2, 0, 0, 1).ok(),
            Some(SequenceCheck::Append)
        );
    }

    #[test]
    fn snapshots_round_trip_and_outrun_ones_are_dropped() {
        let Ok(dir) = tempfile::tempdir() else { return };
        let mut s = ProducerStates::default();
        s.update(7, 3, 0, 10, (0, 9), crate::log::now_ms());
        s.save(dir.path(), 10, [(7, 4)].into_iter()).ok();
        s.update(7, 3, 10, 10, (10, 19), crate::log::now_ms());
        s.save(dir.path(), 20, std::iter::empty()).ok();
        let loaded = ProducerStates::load(dir.path(), 15).ok().flatten();
        assert_eq!(loaded.as_ref().map(|s| s.offset), Some(10));
        assert_eq!(
            loaded.as_ref().map(|s| s.open_txns.clone()),
            Some(vec![(7, 4)]),
            "the transactions open at the snapshot come back"
        );
        assert_eq!(
            loaded.map(|snap| snap.states.check("t", 0, 7, 3, 10, 10).ok()),
            Some(Some(SequenceCheck::Append))
        );
        assert!(
            !dir.path().join(format!("{:020}.snapshot", 20)).exists(),
            "a snapshot past the log end is removed"
        );
    }

    #[test]
    fn idle_producer_is_forgotten_after_expiration_ms_and_then_accepted_at_any_sequence() {
        let mut s = ProducerStates::default();
        s.update(1, 0, 0, 5, (0, 4), 1_000);
        s.update(2, 0, 0, 5, (5, 9), 1_500);
        // Still known: a gap is refused.
        assert!(matches!(
            s.check("t", 0, 1, 0, 7, 1),
            Err(BrokerError::OutOfOrderSequence { .. })
        ));
        assert_eq!(s.expire(1_999, 1_000, |_| false), 0, "idle 999 ms of 1000");
        assert_eq!(
            s.expire(2_000, 1_000, |pid| pid == 1),
            0,
            "a producer with an open transaction stays"
        );
        assert_eq!(
            s.expire(2_000, 1_000, |_| false),
            1,
            "producer 1 idle 1000 ms"
        );
        assert_eq!(s.len(), 1);
        // Kafka 2.5+: no state for the producer, so any sequence is accepted.
        assert_eq!(
            s.check("t", 0, 1, 0, 7, 1).ok(),
            Some(SequenceCheck::Append)
        );
        assert!(s.check("t", 0, 2, 0, 7, 1).is_err(), "producer 2 is kept");
    }

    #[test]
    fn a_marker_epoch_fences_older_writes_and_restarts_sequences() {
        let mut s = ProducerStates::default();
        s.update(1, 0, 0, 5, (0, 4), 0);
        assert!(s.check_epoch(1, 0).is_ok());
        s.note_epoch(1, 1, 10);
        assert!(matches!(
            s.check_epoch(1, 0),
            Err(BrokerError::InvalidProducerEpoch {
                current_epoch: 1,
                ..
            })
        ));
        assert!(
            s.check("t", 0, 1, 0, 5, 1).is_err(),
            "the old epoch is fenced"
        );
        assert_eq!(
            s.check("t", 0, 1, 1, 0, 1).ok(),
            Some(SequenceCheck::Append),
            "the new epoch starts at sequence 0"
        );
        s.note_epoch(1, 0, 20);
        assert!(
            s.check_epoch(1, 0).is_err(),
            "an older epoch never lowers it"
        );
    }
}
