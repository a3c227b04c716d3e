//! Leader epochs of a partition: which epoch each range of offsets was written in (Kafka's
//! `leader-epoch-checkpoint`).
//!
//! A single node is always the leader, but its log can still lose an unsynced tail in a crash
//! and then hand out the lost offsets again. So the epoch is bumped every time a partition is
//! opened after an unclean shutdown, starting at the recovered log end. Clients that validate
//! their position with `OffsetForLeaderEpoch` (librdkafka, the Java client) then see that their
//! epoch ended before the offset they hold and treat it as a truncation, instead of silently
//! reading records that reuse those offsets.
//!
//! File format (text, as Kafka's): a version line `0`, a count line, then `epoch start_offset`
//! per line, oldest first. Replaced atomically.

use std::path::Path;

use crate::error::{BrokerError, IoContext, Result};

/// The file name, as Kafka's.
pub const FILE: &str = "leader-epoch-checkpoint";

/// Entries kept at most; the oldest go first (they only answer questions about offsets long
/// gone, and Kafka drops them with the segments too).
const ENTRIES_MAX: usize = 1024;

/// `(epoch, start offset)` pairs, epochs and offsets both ascending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderEpochs {
    entries: Vec<(i32, i64)>,
}

impl LeaderEpochs {
    /// A new partition: epoch 0 from `start_offset`.
    pub fn new(start_offset: i64) -> Self {
        LeaderEpochs {
            entries: vec![(0, start_offset)],
        }
    }

    /// Reads the checkpoint of `dir`; `None` when there is none. A damaged file is an error
    /// naming it (silently starting over at epoch 0 would defeat the point).
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(BrokerError::io(path, e)),
        };
        let corrupt = |reason: String| BrokerError::Corrupt {
            path: path.clone(),
            reason,
        };
        let mut lines = text.lines();
        if lines.next().map(str::trim) != Some("0") {
            return Err(corrupt("expected version 0 on the first line".into()));
        }
        let count: usize = lines
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| corrupt("expected an entry count on the second line".into()))?;
        if count == 0 || count > ENTRIES_MAX {
            return Err(corrupt(format!(
                "entry count {count} is not within 1..={ENTRIES_MAX}"
            )));
        }
        let mut entries: Vec<(i32, i64)> = Vec::with_capacity(count);
        for (i, line) in lines.enumerate() {
            let mut parts = line.split_whitespace();
            let parsed = (|| Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?)))();
            let Some((epoch, start)) = parsed else {
                return Err(corrupt(format!(
                    "line {}: expected 'epoch start_offset'",
                    i + 3
                )));
            };
            if let Some(&(e, s)) = entries.last()
                && (epoch <= e || start < s)
            {
                return Err(corrupt(format!(
                    "line {}: epoch {epoch} at {start} does not follow epoch {e} at {s}",
                    i + 3
                )));
            }
            if epoch < 0 || start < 0 {
                return Err(corrupt(format!("line {}: negative epoch or offset", i + 3)));
            }
            entries.push((epoch, start));
        }
        if entries.len() != count {
            return Err(corrupt(format!(
                "{} entries where the header says {count}",
                entries.len()
            )));
        }
        Ok(Some(LeaderEpochs { entries }))
    }

    /// Writes the checkpoint atomically (temporary file, fsync, rename, directory fsync).
    pub fn save(&self, dir: &Path) -> Result<()> {
        use std::io::Write;
        let path = dir.join(FILE);
        let tmp = dir.join(format!("{FILE}.tmp"));
        let mut text = format!("0\n{}\n", self.entries.len());
        for (epoch, start) in &self.entries {
            text.push_str(&format!("{epoch} {start}\n"));
        }
        let mut f = std::fs::File::create(&tmp).at(&tmp)?;
        f.write_all(text.as_bytes()).at(&tmp)?;
        f.sync_all().at(&tmp)?;
        std::fs::rename(&tmp, &path).at(&path)?;
        std::fs::File::open(dir).and_then(|d| d.sync_all()).at(dir)
    }

    /// The current (latest) epoch.
    pub fn current(&self) -> i32 {
        self.entries.last().map_or(0, |&(e, _)| e)
    }

    /// Starts the next epoch at `start_offset` (the log end after recovery).
    pub fn bump(&mut self, start_offset: i64) {
        let next = self.current().saturating_add(1);
        let start = self
            .entries
            .last()
            .map_or(start_offset, |&(_, s)| start_offset.max(s));
        // An epoch that never got a record says nothing; replace it rather than pile them up.
        if self.entries.len() > 1 && self.entries.last().is_some_and(|&(_, s)| s == start) {
            self.entries.pop();
        }
        self.entries.push((next, start));
        if self.entries.len() > ENTRIES_MAX {
            let extra = self.entries.len() - ENTRIES_MAX;
            self.entries.drain(..extra);
        }
    }

    /// The epoch the record at `offset` was written in.
    pub fn epoch_for(&self, offset: i64) -> i32 {
        let i = self.entries.partition_point(|&(_, s)| s <= offset);
        match i {
            0 => self.entries.first().map_or(0, |&(e, _)| e),
            i => self.entries[i - 1].0,
        }
    }

    /// Kafka's `OffsetForLeaderEpoch` answer for `requested`: the largest epoch at most
    /// `requested` and the offset where the epoch after it starts (the log end for the current
    /// epoch); `(-1, -1)` for an epoch newer than any.
    pub fn end_offset_for(&self, requested: i32, log_end_offset: i64) -> (i32, i64) {
        if requested < 0 {
            return (-1, -1);
        }
        if requested == self.current() {
            return (requested, log_end_offset);
        }
        let higher = self.entries.iter().find(|&&(e, _)| e > requested);
        let Some(&(_, higher_start)) = higher else {
            return (-1, -1);
        };
        match self.entries.iter().rev().find(|&&(e, _)| e <= requested) {
            Some(&(e, _)) => (e, higher_start),
            // Older than anything known: Kafka answers with the requested epoch itself.
            None => (requested, higher_start),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_answer_like_kafka() {
        let mut e = LeaderEpochs::new(0);
        e.bump(10);
        e.bump(25);
        assert_eq!(e.current(), 2);
        assert_eq!(e.epoch_for(0), 0);
        assert_eq!(e.epoch_for(9), 0);
        assert_eq!(e.epoch_for(10), 1);
        assert_eq!(e.epoch_for(30), 2);
        assert_eq!(e.end_offset_for(0, 40), (0, 10));
        assert_eq!(e.end_offset_for(1, 40), (1, 25));
        assert_eq!(e.end_offset_for(2, 40), (2, 40));
        assert_eq!(e.end_offset_for(3, 40), (-1, -1));
        assert_eq!(e.end_offset_for(-1, 40), (-1, -1));
    }

    #[test]
    fn an_epoch_without_records_is_replaced() {
        let mut e = LeaderEpochs::new(0);
        e.bump(10);
        e.bump(10);
        assert_eq!(e.entries, vec![(0, 0), (2, 10)]);
        assert_eq!(e.end_offset_for(1, 10), (0, 10));
    }

    #[test]
    fn checkpoint_round_trips_and_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(LeaderEpochs::load(dir.path()).ok().flatten(), None);
        let mut e = LeaderEpochs::new(0);
        e.bump(7);
        e.save(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(LeaderEpochs::load(dir.path()).ok().flatten(), Some(e));
        std::fs::write(dir.path().join(FILE), "0\n2\n0 0\n").unwrap_or_else(|e| panic!("{e}"));
        let err = LeaderEpochs::load(dir.path()).err().map(|e| e.to_string());
        assert!(err.as_deref().is_some_and(|m| m.contains(FILE)), "{err:?}");
    }
}
