//! A segment: one file of frames starting at a base offset, with its sparse indexes.
//! Only the partition's last segment (the active one) is appended to; the others are closed and
//! immutable, except that compaction may replace one wholesale.

use std::io::{BufReader, IoSlice, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::buffer::{Buffer, MutableBuffer};

use super::frame::{self, BatchHeader, FrameHeader, HEADER_LEN};
use super::index::{OffsetIndex, TimeIndex};
use super::storage::{self, OpenMode, Storage, StorageFile};
use crate::error::{BrokerError, IoContext, Result};

/// File name of the segment with this base offset (20 digits, as Kafka).
pub fn file_name(base_offset: i64, suffix: &str) -> String {
    format!("{base_offset:020}.{suffix}")
}

/// Frames of at most this many bytes may wait in the active segment's write buffer (see
/// [`Segment::append_slices`]); larger ones are written at once, from their own buffers.
pub const BUFFERED_FRAME_MAX: usize = 4 << 10;

/// The most bytes of frames a segment's write buffer holds before they are written.
pub const WRITE_BUFFER_BYTES: usize = 64 << 10;

/// A segment write that failed.
#[derive(Debug)]
pub enum WriteFailure {
    /// The frame being appended was not written, and the file is cut back to where it began;
    /// everything before it stands.
    Frame(BrokerError),
    /// Buffered frames, which already had their offsets, could not be written: what the
    /// partition holds in memory no longer matches the file, so it must take no more writes.
    Buffered(PathBuf, std::io::Error),
}

/// What recovery cut off a damaged segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    pub path: PathBuf,
    pub valid_bytes: u64,
    pub dropped_bytes: u64,
    pub reason: String,
}

/// A segment and what is known about its contents.
#[derive(Debug)]
pub struct Segment {
    pub base_offset: i64,
    pub path: PathBuf,
    pub file: Arc<dyn StorageFile>,
    /// Bytes of whole frames, the write buffer's included; appends go here.
    pub size: u64,
    /// Frames appended but not yet written to the file, which ends where they begin
    /// (`size - buffered.len()`). See [`Segment::append_slices`].
    buffered: Vec<u8>,
    /// One past the last offset stored; `base_offset` when empty.
    pub next_offset: i64,
    /// Largest record timestamp; `i64::MIN` when empty.
    pub max_timestamp: i64,
    /// Wall-clock time the segment was started, for `segment.ms`.
    pub created_ms: i64,
    pub offset_index: OffsetIndex,
    pub time_index: TimeIndex,
    /// Opening read and checked every frame, because no persisted index matched the file
    /// (it was the active segment, or changed since its indexes were written).
    pub scanned: bool,
    /// The aborted transactions whose markers are in this segment (its `.txnindex`).
    pub aborted: crate::txn::index::AbortedTxnIndex,
    /// Frames before this position are known to hold what the frame encoder wrote: this
    /// process wrote them, or a read checked their CRC and decoded them with every check; so
    /// reads check them no more (see `frame::decode_known`).
    pub verified: Arc<AtomicU64>,
    bytes_since_index: u64,
    index_interval_bytes: u64,
}

/// A read-only view of a segment for use outside the partition lock.
#[derive(Debug, Clone)]
pub struct SegmentView {
    pub base_offset: i64,
    pub path: PathBuf,
    pub file: Arc<dyn StorageFile>,
    /// Reads stop here (where the segment's file ended when the view was taken).
    pub end: u64,
    /// The segment's [`Segment::verified`].
    pub verified: Arc<AtomicU64>,
}

impl SegmentView {
    /// Whether the frame of `len` bytes at `pos` is known whole.
    pub fn is_verified(&self, pos: u64, len: u64) -> bool {
        pos + len <= self.verified.load(Ordering::Acquire)
    }

    /// Notes that the frame of `len` bytes at `pos` passed its CRC check and decoded with every
    /// check.
    pub fn note_verified(&self, pos: u64, len: u64) {
        extend_verified(&self.verified, pos, len);
    }
}

/// Grows a verified prefix by the whole frame of `len` bytes at `pos`, when the frame continues
/// it.
fn extend_verified(verified: &AtomicU64, pos: u64, len: u64) {
    if pos <= verified.load(Ordering::Acquire) {
        verified.fetch_max(pos + len, Ordering::AcqRel);
    }
}

impl Segment {
    /// Creates an empty segment file (fails if it exists).
    pub fn create(
        storage: &dyn Storage,
        dir: &Path,
        base_offset: i64,
        index_interval_bytes: u64,
        now_ms: i64,
    ) -> Result<Segment> {
        let path = dir.join(file_name(base_offset, "log"));
        let file = storage.open(&path, OpenMode::CreateNew).at(&path)?;
        Ok(Segment::empty(
            path,
            file,
            base_offset,
            index_interval_bytes,
            now_ms,
        ))
    }

    /// Creates (or truncates) an empty segment file at `path`, which need not be its final
    /// name (compaction writes `<base>.log.cleaned` and renames it later).
    pub fn create_at(
        storage: &dyn Storage,
        path: &Path,
        base_offset: i64,
        index_interval_bytes: u64,
        now_ms: i64,
    ) -> Result<Segment> {
        let file = storage.open(path, OpenMode::CreateTruncate).at(path)?;
        Ok(Segment::empty(
            path.to_owned(),
            file,
            base_offset,
            index_interval_bytes,
            now_ms,
        ))
    }

    fn empty(
        path: PathBuf,
        file: Arc<dyn StorageFile>,
        base_offset: i64,
        index_interval_bytes: u64,
        now_ms: i64,
    ) -> Segment {
        Segment {
            base_offset,
            path,
            file,
            size: 0,
            buffered: Vec::new(),
            next_offset: base_offset,
            max_timestamp: i64::MIN,
            created_ms: now_ms,
            offset_index: OffsetIndex::default(),
            time_index: TimeIndex::default(),
            scanned: false,
            aborted: Default::default(),
            verified: Arc::new(AtomicU64::new(0)),
            bytes_since_index: 0,
            index_interval_bytes,
        }
    }

    /// Opens an existing segment. A closed segment with valid index files is trusted; otherwise
    /// every frame is read and checked, and a torn or corrupt tail is cut off (and reported).
    pub fn open(
        storage: &dyn Storage,
        dir: &Path,
        base_offset: i64,
        active: bool,
        index_interval_bytes: u64,
    ) -> Result<(Segment, Option<Truncation>)> {
        let path = dir.join(file_name(base_offset, "log"));
        let file = storage.open(&path, OpenMode::ReadWrite).at(&path)?;
        let created_ms = file.created_ms().unwrap_or(0);
        let len = file.size_bytes().at(&path)?;
        let mut segment = Segment {
            base_offset,
            path,
            file,
            size: 0,
            buffered: Vec::new(),
            next_offset: base_offset,
            max_timestamp: i64::MIN,
            created_ms,
            offset_index: OffsetIndex::default(),
            time_index: TimeIndex::default(),
            scanned: false,
            aborted: Default::default(),
            verified: Arc::new(AtomicU64::new(0)),
            bytes_since_index: 0,
            index_interval_bytes,
        };
        if !active && segment.load_indexes(storage, dir, len)? {
            return Ok((segment, None));
        }
        segment.scanned = true;
        // Recovery checks CRCs only; the first read of each frame checks the rest.
        let truncation = segment.recover(len)?;
        Ok((segment, truncation))
    }

    /// Trusts persisted indexes if both cover exactly `len` bytes; reads the last frame for the
    /// segment's end offset. Returns false when they are missing or stale.
    fn load_indexes(&mut self, storage: &dyn Storage, dir: &Path, len: u64) -> Result<bool> {
        let (Some(oi), Some(ti)) = (
            OffsetIndex::load(
                storage,
                &dir.join(file_name(self.base_offset, "index")),
                len,
            ),
            TimeIndex::load(
                storage,
                &dir.join(file_name(self.base_offset, "timeindex")),
                len,
            ),
        ) else {
            return Ok(false);
        };
        // Walk frame headers from the last index entry to learn the end offset and max timestamp.
        let mut pos = oi.lookup(i64::MAX);
        let mut max_ts = i64::MIN;
        let mut next = self.base_offset;
        while pos < len {
            let Ok(h) = self.read_header(pos, len) else {
                return Ok(false);
            };
            next = h.batch.next_offset();
            max_ts = max_ts.max(h.batch.max_timestamp);
            pos += h.frame_len;
        }
        if pos != len {
            return Ok(false);
        }
        // The max timestamp of earlier frames is in the time index.
        self.max_timestamp = max_ts.max(ti.max_entry().map_or(i64::MIN, |(t, _)| t));
        self.next_offset = next;
        self.size = len;
        self.offset_index = oi;
        self.time_index = ti;
        Ok(true)
    }

    /// Reads every frame, checks CRC and offset order, and truncates at the first bad one.
    fn recover(&mut self, len: u64) -> Result<Option<Truncation>> {
        let file = self.file.clone();
        let mut reader = BufReader::with_capacity(1 << 20, storage::Reader::new(&*file, 0));
        let mut pos = 0u64;
        let mut frame = Vec::new();
        let mut reason = None;
        while pos < len {
            if len - pos < HEADER_LEN as u64 {
                reason = Some(format!(
                    "{} trailing bytes are shorter than a frame header",
                    len - pos
                ));
                break;
            }
            frame.resize(HEADER_LEN, 0);
            if let Err(e) = reader.read_exact(&mut frame) {
                reason = Some(format!("read failed: {e}"));
                break;
            }
            let header = match FrameHeader::parse(&frame) {
                Ok(h) => h,
                Err(e) => {
                    reason = Some(e);
                    break;
                }
            };
            if header.frame_len > len - pos {
                reason = Some(format!(
                    "frame of {} bytes is cut off at {} bytes",
                    header.frame_len,
                    len - pos
                ));
                break;
            }
            frame.resize(header.frame_len as usize, 0);
            if let Err(e) = reader.read_exact(&mut frame[HEADER_LEN..]) {
                reason = Some(format!("read failed: {e}"));
                break;
            }
            if !frame::crc_matches(&frame, &header) {
                reason = Some("CRC mismatch".into());
                break;
            }
            // An empty batch is compaction's end marker (see the cleaner); a negative count or
            // an offset that goes back is damage.
            if header.batch.base_offset < self.next_offset || header.batch.record_count < 0 {
                reason = Some(format!(
                    "batch at offset {} does not follow offset {}",
                    header.batch.base_offset, self.next_offset
                ));
                break;
            }
            self.note_frame(pos, &header.batch, header.frame_len);
            pos += header.frame_len;
        }
        self.size = pos;
        if pos < len {
            self.file.truncate(pos).at(&self.path)?;
            self.file.sync_data().at(&self.path)?;
            return Ok(Some(Truncation {
                path: self.path.clone(),
                valid_bytes: pos,
                dropped_bytes: len - pos,
                reason: reason.unwrap_or_default(),
            }));
        }
        Ok(None)
    }

    /// Updates the in-memory facts and indexes for a frame written at `pos`.
    fn note_frame(&mut self, pos: u64, batch: &BatchHeader, frame_len: u64) {
        debug_assert!(
            batch.base_offset >= self.next_offset,
            "offsets must increase"
        );
        if pos == 0 || self.bytes_since_index >= self.index_interval_bytes {
            self.offset_index.push(batch.base_offset, pos);
            self.time_index.push(
                self.max_timestamp.max(batch.max_timestamp),
                batch.base_offset,
            );
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += frame_len;
        self.next_offset = batch.next_offset();
        self.max_timestamp = self.max_timestamp.max(batch.max_timestamp);
    }

    /// Appends one encoded frame, written at once. On a write error the file is cut back, so
    /// nothing partial stays.
    pub fn append(&mut self, frame_bytes: &[u8], batch: &BatchHeader) -> Result<()> {
        match self.append_slices(&mut [IoSlice::new(frame_bytes)], batch, false) {
            Ok(()) => Ok(()),
            Err(WriteFailure::Frame(e)) => Err(e),
            Err(WriteFailure::Buffered(path, e)) => Err(BrokerError::io(path, e)),
        }
    }

    /// Appends a frame given in pieces (see [`super::frame::Unsealed::io_slices`]).
    ///
    /// With `buffer`, a frame of at most [`BUFFERED_FRAME_MAX`] bytes is copied to the write
    /// buffer instead of the file, while the buffer has room: small appends then cost a copy
    /// each and share one write, where each would otherwise be a system call of its own. The
    /// buffer must be written ([`Segment::write_buffered`]) before anyone relies on its frames
    /// being in the file: before they are fsynced, acknowledged as written, or read.
    /// Otherwise the buffered frames and this one go to the file in one vectored write.
    pub fn append_slices(
        &mut self,
        frame: &mut [IoSlice<'_>],
        batch: &BatchHeader,
        buffer: bool,
    ) -> std::result::Result<(), WriteFailure> {
        let pos = self.size;
        let len: u64 = frame.iter().map(|s| s.len() as u64).sum();
        let fits = (len as usize) <= BUFFERED_FRAME_MAX
            && self.buffered.len() + len as usize <= WRITE_BUFFER_BYTES;
        if buffer && fits {
            if self.buffered.capacity() == 0 {
                self.buffered.reserve_exact(WRITE_BUFFER_BYTES);
            }
            for piece in frame.iter() {
                self.buffered.extend_from_slice(piece);
            }
        } else if self.buffered.is_empty() {
            if let Err(e) = self.file.write_all_vectored_at(frame, pos) {
                // Best effort: the partial frame would also be cut by recovery.
                let _ = self.file.truncate(pos);
                return Err(WriteFailure::Frame(BrokerError::io(&self.path, e)));
            }
        } else {
            let at = self.written();
            let mut pieces = Vec::with_capacity(frame.len() + 1);
            pieces.push(IoSlice::new(&self.buffered));
            pieces.extend(frame.iter().map(|s| IoSlice::new(s)));
            if let Err(e) = self.file.write_all_vectored_at(&mut pieces, at) {
                let _ = self.file.truncate(at);
                return Err(WriteFailure::Buffered(self.path.clone(), e));
            }
            // Kept for the next buffered frames: this partition is appended to in small batches.
            self.buffered.clear();
        }
        self.note_frame(pos, batch, len);
        self.size = pos + len;
        // What this process wrote is whole (as Kafka, reads trust the log's own writes).
        extend_verified(&self.verified, pos, len);
        Ok(())
    }

    /// Where the file ends: every frame before it is in the file; the write buffer's follow.
    pub fn written(&self) -> u64 {
        self.size - self.buffered.len() as u64
    }

    /// Whether frames wait in the write buffer.
    pub fn has_buffered(&self) -> bool {
        !self.buffered.is_empty()
    }

    /// Writes the frames in the write buffer to the file. With `release` the buffer's memory
    /// goes too (a partition appended to again soon takes it back with its next small frame);
    /// without, it is kept for the next frames. On an error the file is cut back to where the
    /// buffer began and the buffer is kept, but the caller must treat the partition as failed
    /// (see [`WriteFailure::Buffered`]).
    pub fn write_buffered(
        &mut self,
        release: bool,
    ) -> std::result::Result<(), (PathBuf, std::io::Error)> {
        if !self.buffered.is_empty() {
            let at = self.written();
            if let Err(e) = self.file.write_all_at(&self.buffered, at) {
                let _ = self.file.truncate(at);
                return Err((self.path.clone(), e));
            }
        }
        if release {
            self.buffered = Vec::new();
        } else {
            self.buffered.clear();
        }
        Ok(())
    }

    /// Reads the frame header at `pos`, which must lie before `end`.
    pub fn read_header(&self, pos: u64, end: u64) -> Result<FrameHeader> {
        read_header(&*self.file, &self.path, pos, end)
    }

    /// Persists the indexes (done when the segment closes or the log shuts down).
    pub fn save_indexes(&self, storage: &dyn Storage) -> Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        self.offset_index.save(
            storage,
            &dir.join(file_name(self.base_offset, "index")),
            self.size,
        )?;
        self.time_index.save(
            storage,
            &dir.join(file_name(self.base_offset, "timeindex")),
            self.size,
        )?;
        self.save_aborted_index()
    }

    fn aborted_index_path(&self) -> PathBuf {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        dir.join(file_name(self.base_offset, "txnindex"))
    }

    /// Persists the aborted-transaction index, covering the segment as it is now. Written for
    /// every segment (even with no entries), so a missing file means "rebuild", never "none".
    pub fn save_aborted_index(&self) -> Result<()> {
        self.aborted.save(&self.aborted_index_path(), self.size)
    }

    /// The saved aborted-transaction index if it covers the first `covered_len` bytes of the
    /// segment; `None` when missing, stale or damaged.
    pub fn load_aborted_index(
        &self,
        covered_len: u64,
    ) -> Option<crate::txn::index::AbortedTxnIndex> {
        if covered_len == 0 {
            return Some(Default::default());
        }
        crate::txn::index::AbortedTxnIndex::load(&self.aborted_index_path(), covered_len)
    }

    /// Removes the segment's files.
    pub fn delete_files(&self, storage: &dyn Storage) -> Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        for suffix in ["index", "timeindex", "txnindex"] {
            let p = dir.join(file_name(self.base_offset, suffix));
            match storage.remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(BrokerError::io(p, e)),
            }
        }
        storage.remove_file(&self.path).at(&self.path)
    }

    pub fn view(&self) -> SegmentView {
        SegmentView {
            base_offset: self.base_offset,
            path: self.path.clone(),
            file: self.file.clone(),
            // The write buffer's frames are not in the file yet; the high watermark never
            // passes them (a round writes them before it fsyncs).
            end: self.written(),
            verified: self.verified.clone(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }
}

/// Reads and parses a frame header at `pos` of `file`, refusing one that runs past `end`.
pub fn read_header(file: &dyn StorageFile, path: &Path, pos: u64, end: u64) -> Result<FrameHeader> {
    let mut buf = [0u8; HEADER_LEN];
    if end.saturating_sub(pos) < HEADER_LEN as u64 {
        return Err(BrokerError::Corrupt {
            path: path.to_owned(),
            reason: format!("no frame header at position {pos}"),
        });
    }
    file.read_exact_at(&mut buf, pos).at(path)?;
    let header = FrameHeader::parse(&buf).map_err(|reason| BrokerError::Corrupt {
        path: path.to_owned(),
        reason: format!("at position {pos}: {reason}"),
    })?;
    if pos + header.frame_len > end {
        return Err(BrokerError::Corrupt {
            path: path.to_owned(),
            reason: format!("frame at {pos} runs past {end}"),
        });
    }
    Ok(header)
}

/// Reads `len` bytes at `pos` into a 64-byte aligned buffer (so Arrow decodes without copying).
pub fn read_aligned(file: &dyn StorageFile, path: &Path, pos: u64, len: usize) -> Result<Buffer> {
    // Not zero-filled first: the read writes every byte, so the memory is touched once.
    let mut buf = MutableBuffer::with_capacity(len);
    file.read_exact_into(&mut buf, len, pos).at(path)?;
    Ok(buf.into())
}
