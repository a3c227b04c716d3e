//! Sparse indexes of a segment, kept in memory and persisted beside the segment when it closes.
//!
//! - Offset index: `(offset, file position)` of a frame start every `index.interval.bytes`.
//! - Time index: `(max timestamp so far, frame base offset)`, added at the same points when the
//!   maximum timestamp grew.
//!
//! File layout (both kinds): magic `QIDX`, u32 version, u64 segment length the index covers,
//! u64 entry count, entries as `(i64, i64)` pairs, u32 CRC32C of everything before it. An index
//! whose covered length differs from the segment file, or whose CRC fails, is stale and is rebuilt.

use std::path::Path;

use super::frame::HEADER_LEN;
use super::storage::{self, OpenMode, Storage};
use crate::error::{IoContext, Result};

const MAGIC: &[u8; 4] = b"QIDX";
const VERSION: u32 = 1;

/// `(offset, position)` entries, both strictly increasing.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OffsetIndex {
    entries: Vec<(i64, u64)>,
}

impl OffsetIndex {
    /// Adds an entry for a frame starting at `position` with base offset `offset`.
    pub fn push(&mut self, offset: i64, position: u64) {
        debug_assert!(
            self.entries
                .last()
                .is_none_or(|&(o, p)| o < offset && p < position)
        );
        self.entries.push((offset, position));
    }

    /// The position of the last indexed frame whose base offset is at most `offset` (0 if none).
    pub fn lookup(&self, offset: i64) -> u64 {
        let i = self.entries.partition_point(|&(o, _)| o <= offset);
        if i == 0 { 0 } else { self.entries[i - 1].1 }
    }

    pub fn save(&self, storage: &dyn Storage, path: &Path, covered_len: u64) -> Result<()> {
        save_pairs(
            storage,
            path,
            covered_len,
            self.entries.iter().map(|&(o, p)| (o, p as i64)),
        )
    }

    pub fn load(storage: &dyn Storage, path: &Path, covered_len: u64) -> Option<Self> {
        let pairs = load_pairs(storage, path, covered_len)?;
        let ok = pairs.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1)
            && pairs
                .iter()
                .all(|&(o, p)| o >= 0 && p >= 0 && (p as u64) < covered_len);
        ok.then(|| OffsetIndex {
            entries: pairs.into_iter().map(|(o, p)| (o, p as u64)).collect(),
        })
    }
}

/// `(max timestamp so far, frame base offset)` entries, both strictly increasing.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TimeIndex {
    entries: Vec<(i64, i64)>,
}

impl TimeIndex {
    /// Records that every record before the frame at `offset` (inclusive) has timestamp <= `max_ts`.
    pub fn push(&mut self, max_ts: i64, offset: i64) {
        if self
            .entries
            .last()
            .is_none_or(|&(t, o)| t < max_ts && o < offset)
        {
            self.entries.push((max_ts, offset));
        }
    }

    /// An offset from which a scan for the first record with timestamp >= `ts` may start:
    /// every record in frames before it is older than `ts`. `None` means scan from the start.
    pub fn lookup(&self, ts: i64) -> Option<i64> {
        let i = self.entries.partition_point(|&(t, _)| t < ts);
        (i > 0).then(|| self.entries[i - 1].1)
    }

    /// The last entry: the largest timestamp indexed and the frame it was seen at.
    pub fn max_entry(&self) -> Option<(i64, i64)> {
        self.entries.last().copied()
    }

    pub fn save(&self, storage: &dyn Storage, path: &Path, covered_len: u64) -> Result<()> {
        save_pairs(storage, path, covered_len, self.entries.iter().copied())
    }

    pub fn load(storage: &dyn Storage, path: &Path, covered_len: u64) -> Option<Self> {
        let pairs = load_pairs(storage, path, covered_len)?;
        pairs
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1)
            .then_some(TimeIndex { entries: pairs })
    }
}

fn save_pairs(
    storage: &dyn Storage,
    path: &Path,
    covered_len: u64,
    pairs: impl ExactSizeIterator<Item = (i64, i64)>,
) -> Result<()> {
    let buf = encode_rows(MAGIC, covered_len, pairs.map(|(a, b)| [a, b]));
    let file = storage.open(path, OpenMode::CreateTruncate).at(path)?;
    file.write_all_at(&buf, 0).at(path)?;
    // Indexes are derived data: a lost or torn index is rebuilt, so no fsync here.
    Ok(())
}

fn load_pairs(storage: &dyn Storage, path: &Path, covered_len: u64) -> Option<Vec<(i64, i64)>> {
    // At most one entry per frame, so a longer file is not an index of this segment.
    let max_entries = covered_len / HEADER_LEN as u64 + 1;
    let bytes = storage::read_file(storage, path, 28 + max_entries * 16).ok()?;
    let rows = decode_rows::<2>(&bytes, MAGIC, covered_len)?;
    Some(rows.into_iter().map(|[a, b]| (a, b)).collect())
}

/// Bytes before the rows of an index file: magic, version, covered length, row count.
const ROWS_HEADER_BYTES: usize = 24;

/// An index file of a segment (the offset and time indexes here, the aborted-transaction
/// index in `txn`): `magic`, a version, the segment length it covers, the row count, rows of
/// `N` little-endian `i64`s, and a CRC32C of all that.
pub(crate) fn encode_rows<const N: usize>(
    magic: &[u8; 4],
    covered_len: u64,
    rows: impl ExactSizeIterator<Item = [i64; N]>,
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(ROWS_HEADER_BYTES + rows.len() * N * 8 + 4);
    buf.extend_from_slice(magic);
    buf.extend_from_slice(&VERSION.to_le_bytes());
    buf.extend_from_slice(&covered_len.to_le_bytes());
    buf.extend_from_slice(&(rows.len() as u64).to_le_bytes());
    for row in rows {
        for v in row {
            buf.extend_from_slice(&v.to_le_bytes());
        }
    }
    let crc = quiver_common::crc::crc32c(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    buf
}

/// The rows of an index file written by [`encode_rows`] for a segment of `covered_len`
/// bytes; `None` when it is another kind of file, another version, stale or corrupt.
pub(crate) fn decode_rows<const N: usize>(
    bytes: &[u8],
    magic: &[u8; 4],
    covered_len: u64,
) -> Option<Vec<[i64; N]>> {
    if bytes.len() < ROWS_HEADER_BYTES + 4 || &bytes[0..4] != magic {
        return None;
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if quiver_common::crc::crc32c(body).to_le_bytes() != crc {
        return None;
    }
    let word = |at: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&body[at..at + 8]);
        x
    };
    let version = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
    let covered = u64::from_le_bytes(word(8));
    let count = usize::try_from(u64::from_le_bytes(word(16))).ok()?;
    let expected_len = count.checked_mul(N * 8)?.checked_add(ROWS_HEADER_BYTES)?;
    if version != VERSION || covered != covered_len || body.len() != expected_len {
        return None;
    }
    Some(
        (0..count)
            .map(|i| {
                let at = ROWS_HEADER_BYTES + i * N * 8;
                std::array::from_fn(|j| i64::from_le_bytes(word(at + j * 8)))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_lookup_finds_floor_entry() {
        let mut idx = OffsetIndex::default();
        idx.push(10, 0);
        idx.push(20, 4096);
        idx.push(30, 9000);
        assert_eq!(idx.lookup(5), 0);
        assert_eq!(idx.lookup(10), 0);
        assert_eq!(idx.lookup(25), 4096);
        assert_eq!(idx.lookup(1000), 9000);
    }

    #[test]
    fn time_lookup_is_conservative() {
        let mut idx = TimeIndex::default();
        idx.push(100, 0);
        idx.push(200, 10);
        idx.push(150, 20); // not increasing: ignored
        idx.push(300, 30);
        assert_eq!(idx.lookup(50), None);
        assert_eq!(idx.lookup(150), Some(0));
        assert_eq!(idx.lookup(250), Some(10));
        assert_eq!(idx.lookup(301), Some(30));
    }

    #[test]
    fn save_and_load_checks_covered_length_and_crc() {
        let dir = tempfile::tempdir().ok();
        let Some(dir) = dir else { return };
        let path = dir.path().join("x.index");
        let mut idx = OffsetIndex::default();
        idx.push(0, 0);
        idx.push(5, 100);
        let fs = storage::FileStorage;
        idx.save(&fs, &path, 200).ok();
        assert_eq!(OffsetIndex::load(&fs, &path, 200), Some(idx.clone()));
        assert_eq!(
            OffsetIndex::load(&fs, &path, 201),
            None,
            "stale: segment length changed"
        );
        let mut bytes = std::fs::read(&path).unwrap_or_default();
        bytes[30] ^= 0xff;
        std::fs::write(&path, bytes).ok();
        assert_eq!(
            OffsetIndex::load(&fs, &path, 200),
            None,
            "corrupt: CRC fails"
        );
    }
}
