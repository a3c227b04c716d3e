//! The partition log: a directory of segments named by base offset, each a file of framed Arrow
//! record batches with sparse offset and time indexes.
//!
//! Concurrency: one mutex guards the segment list and the append path (offsets are assigned and
//! frames written under it). Reads take the lock only to find the segments and their current
//! ends, then read files without it, so readers never block writers for I/O. Durability is by
//! group commit: appends that must be durable wait on one shared fsync (see [`Log::flush_to`]).
//!
//! Visibility: readers see records up to the high watermark. With `log.flush.on.ack` (the
//! default) that is the durable offset, so no consumer reads (or commits past) a record that a
//! power loss could take away; every append then kicks the partition's flusher (started by the
//! [`Broker`](crate::Broker) with [`Log::start_flusher`]), so the high watermark follows the
//! log end one group-committed fsync behind, whatever the producer's acks. Without it the high
//! watermark is the log end.

pub(crate) mod cleaner;
pub(crate) mod epoch;
#[cfg(test)]
mod fetch_tests;
pub(crate) mod frame;
pub(crate) mod index;
#[cfg(test)]
mod power_loss_tests;
pub mod prepared;
#[cfg(test)]
mod prepared_tests;
pub(crate) mod producer_state;
pub(crate) mod segment;
pub(crate) mod storage;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod txn_tests;
#[cfg(test)]
mod visibility_tests;
#[cfg(test)]
mod write_buffer_tests;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use arrow::array::{Array, ArrayRef, Int64Array, TimestampMillisecondArray};
use arrow::buffer::Buffer;
use arrow::record_batch::RecordBatch;
use parking_lot::Mutex;
use quiver_common::kafka::records as kafka_records;
use tokio::sync::{Notify, watch};

use crate::config::{LogConfig, TimestampType};
use crate::error::{BrokerError, IoContext, Result};
use crate::record::{EnvelopeColumns, col};
use crate::txn::index::{AbortedTxn, MAX_ONGOING_TXNS_PER_PARTITION, OngoingTxns};
use crate::txn::records::{marker_key, marker_value};
use crate::txn::state::TxnResult;
pub use cleaner::{CleanStats, CrashPoint};
pub use epoch::LeaderEpochs;
pub use frame::{BatchHeader, KafkaRows, ProducerInfo, attributes};
use frame::{FrameEncoder, Unsealed};
pub use prepared::{PreparedBatch, SmallRows};
use producer_state::{ProducerStates, SequenceCheck};
use segment::{Segment, SegmentView, Truncation, WriteFailure};
use storage::{FileStorage, Storage};

/// Fsync rounds of one partition that may run at once: one syncing, and one more started by
/// appends that arrived after it began (see [`Log::flush_to`]).
pub const FLUSH_ROUNDS_IN_FLIGHT: usize = 2;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Milliseconds since the Unix epoch as of the kernel's last timer tick
/// (`CLOCK_REALTIME_COARSE`): never ahead of [`now_ms`], at most a tick (1-10 ms) behind it, and
/// a sixth of its cost (on the 2-core VM 11 ns a read against 65 ns, which was 8% of a
/// one-record append). For checks of a batch against bounds seconds to hours wide, where it
/// reads as if the clock had been read a moment earlier, when the request arrived. Elsewhere
/// than Linux, [`now_ms`].
pub fn coarse_now_ms() -> i64 {
    #[cfg(target_os = "linux")]
    {
        coarse_realtime().unwrap_or_else(now_ms)
    }
    #[cfg(not(target_os = "linux"))]
    {
        now_ms()
    }
}

/// `CLOCK_REALTIME_COARSE` in ms, or `None` if the kernel refuses it. Tested by
/// `the_coarse_clock_trails_the_precise_one_by_at_most_a_tick`.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
// `time_t` and `c_long` are i64 here and i32 on 32-bit targets.
#[allow(clippy::unnecessary_cast)]
fn coarse_realtime() -> Option<i64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one `timespec` through the pointer, which is to a local
    // that lives across the call and that nothing else refers to; it reads no other memory.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as i64 * 1000 + ts.tv_nsec as i64 / 1_000_000)
}

/// When an append is acknowledged (Kafka's `acks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// acks=0/1: once written to the log (the page cache).
    Written,
    /// acks=all: once durable when `log.flush.on.ack` is on (the default), else once written.
    All,
}

/// Which records a read may return (Kafka's `isolation_level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// Everything below the high watermark, aborted transactions included.
    #[default]
    ReadUncommitted,
    /// Only below the last stable offset, with the aborted transactions of the range so the
    /// reader can drop their records.
    ReadCommitted,
}

/// How a log is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shutdown {
    /// The last process closed the log cleanly: its persisted indexes are trusted and the
    /// active segment is not rescanned.
    Clean,
    /// It may have crashed: every segment past the recovery point (the active one at least) is
    /// checked frame by frame and fsynced, and the leader epoch is bumped.
    #[default]
    Unclean,
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    /// The broker's timestamp when the topic uses LogAppendTime, else `None`.
    pub log_append_time_ms: Option<i64>,
    pub log_start_offset: i64,
}

/// One stored batch as read: its batch-level facts and its rows (sliced to the requested offset).
#[derive(Debug, Clone)]
pub struct StoredBatch {
    pub header: BatchHeader,
    pub records: RecordBatch,
}

/// A stored batch as Fetch reads it ([`Log::read_for_fetch`]).
#[derive(Debug, Clone)]
pub enum FetchBatch {
    /// Decoded into the envelope's columns: an Arrow-layout frame, or one read from its middle.
    Columns(StoredBatch),
    /// A small batch's rows as the log keeps them, in Kafka's v2 record encoding: a Kafka batch
    /// holds them as they are, so they are neither decoded nor encoded again.
    Rows {
        header: BatchHeader,
        rows: KafkaRows,
    },
}

impl From<StoredBatch> for FetchBatch {
    fn from(batch: StoredBatch) -> Self {
        FetchBatch::Columns(batch)
    }
}

impl FetchBatch {
    /// The stored batch's facts.
    pub fn header(&self) -> &BatchHeader {
        match self {
            FetchBatch::Columns(b) => &b.header,
            FetchBatch::Rows { header, .. } => header,
        }
    }

    /// Appends the batch to `out` as one Kafka batch written in `leader_epoch`, its records
    /// compressed with the Kafka codec `codec_id`.
    pub fn encode_kafka(
        &self,
        out: &mut Vec<u8>,
        leader_epoch: i32,
        codec_id: i16,
    ) -> quiver_common::Result<()> {
        match self {
            FetchBatch::Columns(b) => kafka_records::encode_batch_compressed_in_epoch(
                out,
                &b.header,
                &b.records,
                leader_epoch,
                codec_id,
            ),
            FetchBatch::Rows { header, rows } => kafka_records::encode_rows_in_epoch(
                out,
                header,
                rows.first_offset,
                rows.base_timestamp,
                &rows.rows,
                leader_epoch,
                codec_id,
            ),
        }
    }

    /// Bytes of its Kafka encoding, about.
    pub fn kafka_len_estimate(&self) -> usize {
        match self {
            FetchBatch::Columns(b) => b.records.get_array_memory_size() / 2 + 64,
            FetchBatch::Rows { rows, .. } => rows.rows.len() + kafka_records::BATCH_HEADER_LEN,
        }
    }
}

/// The answer to a read: batches decoded into columns ([`StoredBatch`]), or as Fetch takes them
/// ([`FetchBatch`]).
#[derive(Debug, Clone)]
pub struct ReadResult<B = StoredBatch> {
    pub batches: Vec<B>,
    /// Where the next read should start (after the last batch returned, or the requested offset).
    pub next_offset: i64,
    pub log_start_offset: i64,
    pub high_watermark: i64,
    /// The last stable offset: no transaction is undecided below it.
    pub last_stable_offset: i64,
    /// With [`Isolation::ReadCommitted`], the aborted transactions with records in the range
    /// read (Kafka's `aborted_transactions`); empty otherwise.
    pub aborted: Vec<AbortedTxn>,
    /// The leader epoch each batch was written in, by base offset (for Kafka's batch header).
    pub epochs: Arc<LeaderEpochs>,
}

impl ReadResult {
    /// Number of records in all batches.
    pub fn record_count(&self) -> usize {
        self.batches.iter().map(|b| b.records.num_rows()).sum()
    }

    /// Leaves the batches a consumer gets, as Kafka's clients filter a fetch: control batches
    /// (transaction markers) go, and so do the batches of the aborted transactions listed in
    /// [`ReadResult::aborted`] (only a `read_committed` read lists them). `next_offset` is
    /// unchanged.
    pub fn retain_consumer_batches(&mut self) {
        let mut aborted = std::mem::take(&mut self.aborted);
        aborted.sort_by_key(|a| a.first_offset);
        let mut pending = aborted.iter().peekable();
        let mut active = std::collections::HashSet::new();
        self.batches.retain(|b| {
            while let Some(a) = pending.next_if(|a| a.first_offset <= b.header.base_offset) {
                active.insert(a.producer_id);
            }
            let p = &b.header.producer;
            if p.attributes & attributes::CONTROL != 0 {
                // The end of the producer's transaction: its later batches are another one.
                active.remove(&p.producer_id);
                return false;
            }
            p.attributes & attributes::TRANSACTIONAL == 0 || !active.contains(&p.producer_id)
        });
        self.aborted = aborted;
    }
}

/// Offsets and size of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOffsets {
    pub log_start_offset: i64,
    pub log_end_offset: i64,
    /// Offsets below this are on disk (fsynced).
    pub durable_offset: i64,
    /// What readers may see: the durable offset with `log.flush.on.ack`, else the log end.
    pub high_watermark: i64,
    /// What `read_committed` readers may see: the high watermark, or the first offset of the
    /// earliest transaction not yet decided, if lower.
    pub last_stable_offset: i64,
    pub size_bytes: u64,
    pub segments: usize,
}

/// The largest frame buffer a thread keeps between appends.
const KEPT_FRAME_BUFFER: usize = 16 << 20;

/// Runs `f` with this thread's frame encoder and an empty frame buffer. Appends encode before
/// taking their partition's lock, on whichever thread runs them, so a thread keeps one encoder
/// and one buffer for every partition it appends to.
fn with_frame_encoder<R>(f: impl FnOnce(&mut FrameEncoder, &mut Vec<u8>) -> R) -> R {
    // Boxed, so taking it out and putting it back moves a pointer, not the encoder.
    type Encoding = Box<(FrameEncoder, Vec<u8>)>;
    thread_local! {
        static ENCODING: Cell<Option<Encoding>> = const { Cell::new(None) };
    }
    // Taken out for the call, so a nested use (or one while the thread exits) gets fresh ones.
    let mut encoding: Encoding = ENCODING
        .try_with(Cell::take)
        .ok()
        .flatten()
        .unwrap_or_default();
    let (encoder, frame) = &mut *encoding;
    frame.clear();
    let result = f(encoder, frame);
    if frame.capacity() > KEPT_FRAME_BUFFER {
        *frame = Vec::new();
    }
    let _ = ENCODING.try_with(|cell| cell.set(Some(encoding)));
    result
}

struct Inner {
    segments: BTreeMap<i64, Segment>,
    next_offset: i64,
    log_start_offset: i64,
    /// A segment file was created or removed since the last directory fsync.
    /// Bumped whenever a segment file is created or removed; the directory needs an fsync
    /// while it is ahead of `dir_synced_gen`.
    dir_gen: u64,
    /// The `dir_gen` the last completed directory fsync covered.
    dir_synced_gen: u64,
    producers: ProducerStates,
    /// Transactions not yet stable here (they hold back the last stable offset).
    txns: OngoingTxns,
    /// The base of a segment the cleaner is swapping for its cleaned copy: retention and
    /// DeleteRecords leave it alone until the swap is done.
    swapping: Option<i64>,
}

impl Inner {
    fn active(&mut self) -> Result<&mut Segment> {
        self.segments
            .values_mut()
            .next_back()
            .ok_or_else(|| BrokerError::Internal("log has no segment".into()))
    }

    fn size_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.size).sum()
    }

    /// The last stable offset given the high watermark `hw`.
    fn last_stable_offset(&mut self, hw: i64) -> i64 {
        self.txns.on_high_watermark(hw);
        self.txns.last_stable_offset(hw)
    }
}

/// One partition's log. Cheap to share (`Arc<Log>`); every method takes `&self`.
pub struct Log {
    topic: String,
    partition: i32,
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// The topic's config: a lock of its own, held only to clone it, so that appends and
    /// acknowledgements read it without waiting for an append's write under `inner`.
    config: Mutex<Arc<LogConfig>>,
    /// Where the current config lies (its `Arc`'s pointer), set with it under its lock: an
    /// append handed the config its batch was checked against tells without the lock whether
    /// it is still the current one ([`Log::is_current_config`]).
    config_at: AtomicUsize,
    durable_offset: AtomicI64,
    /// The recovery point last persisted (see [`RECOVERY_POINT_FILE`]); held while a newer
    /// one is written, so fsync rounds finishing together write it one at a time.
    recovery_point: Arc<Mutex<i64>>,
    /// Records below this offset are in the segment files: none of them waits in the active
    /// segment's write buffer (see [`Segment::append_slices`]).
    file_end: AtomicI64,
    last_flush_ms: AtomicI64,
    /// Fsync rounds that may run at once (see [`Log::flush_to`]).
    flush_slots: tokio::sync::Semaphore,
    /// The end offsets the fsync rounds in flight will make durable, by round id.
    in_flight: Mutex<Vec<(u64, i64)>>,
    /// Ids of fsync rounds.
    next_round: std::sync::atomic::AtomicU64,
    /// Bumped after every fsync round; waiters watch it.
    flush_rounds: watch::Sender<u64>,
    cleaner_lock: tokio::sync::Mutex<()>,
    /// The log end offset (also under `inner`; here so it is read without the lock).
    log_end: AtomicI64,
    /// The high watermark; readers wait on it.
    high_watermark: watch::Sender<i64>,
    /// Wakes the flusher task after an append (see [`Log::start_flusher`]).
    flush_kick: Arc<Notify>,
    /// Leader epochs; replaced whole (readers hold an `Arc` to the one they saw).
    epochs: parking_lot::RwLock<Arc<LeaderEpochs>>,
    deleted: AtomicBool,
    /// Set by `close`: no append lands after it.
    closed: AtomicBool,
    /// The file layer under the segments and indexes.
    storage: Arc<dyn Storage>,
    /// Set once, when a sync fails: from then on the partition takes no writes.
    offline: OnceLock<Offline>,
}

/// One fsync round of a log. However it ends (done, failed, or its caller gone), it leaves the
/// rounds in flight, frees its slot and wakes the waiters, so none waits on a round that will
/// never finish.
struct RoundGuard<'a> {
    log: &'a Log,
    id: u64,
    slot: Option<tokio::sync::SemaphorePermit<'a>>,
}

impl RoundGuard<'_> {
    async fn run(self) -> Result<()> {
        self.log.fsync_written(self.id).await
    }
}

impl Drop for RoundGuard<'_> {
    fn drop(&mut self) {
        // The slot is free before anyone wakes, so a waiter not covered by this round can start
        // the next one; every waiter wakes at once, not one handoff each.
        drop(self.slot.take());
        self.log.in_flight.lock().retain(|&(id, _)| id != self.id);
        self.log
            .flush_rounds
            .send_modify(|n| *n = n.wrapping_add(1));
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        // Lets the flusher task see the log is gone and end.
        self.flush_kick.notify_one();
    }
}

/// Why a partition went offline.
#[derive(Debug, Clone)]
struct Offline {
    /// What failed: "fsync" or "write".
    op: &'static str,
    path: PathBuf,
    cause: String,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .finish_non_exhaustive()
    }
}

impl Log {
    /// Opens (or creates) the log in `dir` as after an unclean shutdown (see [`Log::open_after`]).
    pub fn open(dir: &Path, topic: &str, partition: i32, config: Arc<LogConfig>) -> Result<Log> {
        Self::open_after(dir, topic, partition, config, Shutdown::Unclean)
    }

    /// Opens (or creates) the log in `dir` on the real file system. After an unclean
    /// `shutdown` the active segment is recovered and the leader epoch bumped; after a clean
    /// one the persisted indexes are trusted.
    pub fn open_after(
        dir: &Path,
        topic: &str,
        partition: i32,
        config: Arc<LogConfig>,
        shutdown: Shutdown,
    ) -> Result<Log> {
        Self::open_with(
            dir,
            topic,
            partition,
            config,
            FileStorage::shared(),
            shutdown,
        )
    }

    /// Opens (or creates) the log in `dir`, its segment and index files on `storage` (tests
    /// put a fault-injecting layer there). After an unclean shutdown the active segment is
    /// recovered (a torn or corrupt tail is cut to the last whole batch, and the cut is
    /// logged) and the leader epoch is bumped; after a clean one the persisted indexes are
    /// trusted.
    pub(crate) fn open_with(
        dir: &Path,
        topic: &str,
        partition: i32,
        config: Arc<LogConfig>,
        storage: Arc<dyn Storage>,
        shutdown: Shutdown,
    ) -> Result<Log> {
        let existed = dir.exists();
        std::fs::create_dir_all(dir).at(dir)?;
        let mut bases = Vec::new();
        for entry in std::fs::read_dir(dir).at(dir)? {
            let entry = entry.at(dir)?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".cleaned") {
                // A compaction that did not finish: the original segment is still in place.
                tracing::warn!(file = %entry.path().display(), "removing unfinished compaction output");
                storage.remove_file(&entry.path()).at(&entry.path())?;
            } else if let Some(stem) = name.strip_suffix(".log")
                && let Ok(base) = stem.parse::<i64>()
            {
                bases.push(base);
            }
        }
        bases.sort_unstable();
        // After an unclean shutdown every segment that may hold records at or past the recovery
        // point is checked frame by frame: not only the active one, since a segment closed by
        // a roll after the last fsync round may have lost its tail (or had it garbled at its
        // full length, which its indexes written at the roll would not tell). Without a
        // checkpoint (a log written before there was one, or whose checkpoint a crash lost)
        // every segment is. After a clean shutdown the indexes saved at close are trusted,
        // the active segment's too (they are checked against the file length).
        let checkpoint = read_offset_checkpoint(&*storage, dir, RECOVERY_POINT_FILE)?;
        let mut segments = BTreeMap::new();
        let mut truncations: Vec<Truncation> = Vec::new();
        let mut scanned = Vec::new();
        for (i, &base) in bases.iter().enumerate() {
            let end = bases.get(i + 1).copied().unwrap_or(i64::MAX);
            let scan = shutdown == Shutdown::Unclean && checkpoint.is_none_or(|point| end > point);
            let (seg, cut) =
                Segment::open(&*storage, dir, base, scan, config.index_interval_bytes)?;
            if let Some(cut) = cut {
                truncations.push(cut);
            }
            if scan {
                scanned.push(base);
            }
            segments.insert(base, seg);
        }
        drop_segments_after_gap(&*storage, dir, &mut segments, &mut truncations)?;
        let recovery_point = match shutdown {
            Shutdown::Unclean => {
                make_recovered_durable(&*storage, dir, &segments, &scanned, checkpoint)?
            }
            Shutdown::Clean => checkpoint.unwrap_or(i64::MIN),
        };
        for t in &truncations {
            tracing::warn!(
                file = %t.path.display(), kept_bytes = t.valid_bytes, dropped_bytes = t.dropped_bytes,
                reason = %t.reason, "recovered a damaged segment: dropped its tail after the last whole batch"
            );
        }
        if segments.is_empty() {
            segments.insert(
                0,
                Segment::create(&*storage, dir, 0, config.index_interval_bytes, now_ms())?,
            );
        }
        let next_offset = segments.values().next_back().map_or(0, |s| s.next_offset);
        let first_base = segments.keys().next().copied().unwrap_or(0);
        let log_start_offset = read_offset_checkpoint(&*storage, dir, LOG_START_FILE)?
            .unwrap_or(first_base)
            .clamp(first_base, next_offset);
        let (mut producers, replay_from, open_txns) = match ProducerStates::load(dir, next_offset)?
        {
            Some(snap) => (snap.states, snap.offset, snap.open_txns),
            None => (ProducerStates::default(), first_base, Vec::new()),
        };
        replay_producers(&segments, replay_from, &mut producers)?;
        let txns = recover_txns(dir, &mut segments, replay_from, open_txns)?;
        let epochs = match LeaderEpochs::load(dir)? {
            Some(mut epochs) if existed => {
                if shutdown == Shutdown::Unclean {
                    epochs.bump(next_offset);
                    epochs.save(dir)?;
                }
                epochs
            }
            _ => {
                // No checkpoint means epoch 0 from the start, so a new partition writes none
                // (creating a topic costs no extra fsyncs); one is written at the first bump.
                let mut epochs = LeaderEpochs::new(log_start_offset);
                if existed && shutdown == Shutdown::Unclean && next_offset > log_start_offset {
                    epochs.bump(next_offset);
                    epochs.save(dir)?;
                }
                epochs
            }
        };
        if shutdown == Shutdown::Unclean && existed {
            tracing::info!(
                topic,
                partition,
                leader_epoch = epochs.current(),
                log_end_offset = next_offset,
                "opened a partition after an unclean shutdown; new leader epoch"
            );
        }
        Ok(Log {
            topic: topic.to_owned(),
            partition,
            dir: dir.to_owned(),
            inner: Mutex::new(Inner {
                segments,
                next_offset,
                log_start_offset,
                dir_gen: 1,
                dir_synced_gen: 0,
                producers,
                txns,
                swapping: None,
            }),
            config_at: AtomicUsize::new(Arc::as_ptr(&config) as usize),
            config: Mutex::new(config),
            // What survived recovery is what the disk holds; a crash cannot lose it again.
            durable_offset: AtomicI64::new(next_offset),
            // A recovery point at the first segment is as good as none: rounds write the first
            // one after a roll.
            recovery_point: Arc::new(Mutex::new(recovery_point.max(first_base))),
            file_end: AtomicI64::new(next_offset),
            last_flush_ms: AtomicI64::new(now_ms()),
            flush_slots: tokio::sync::Semaphore::new(FLUSH_ROUNDS_IN_FLIGHT),
            in_flight: Mutex::new(Vec::with_capacity(FLUSH_ROUNDS_IN_FLIGHT)),
            next_round: std::sync::atomic::AtomicU64::new(0),
            flush_rounds: watch::channel(0).0,
            cleaner_lock: tokio::sync::Mutex::new(()),
            log_end: AtomicI64::new(next_offset),
            high_watermark: watch::channel(next_offset).0,
            flush_kick: Arc::new(Notify::new()),
            epochs: parking_lot::RwLock::new(Arc::new(epochs)),
            deleted: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            storage,
            offline: OnceLock::new(),
        })
    }

    /// Starts the task that makes appends durable in the background (one group-committed fsync
    /// round after another while appends arrive), so the high watermark advances by itself with
    /// `log.flush.on.ack` whatever the producers' acks. The task holds no strong reference: it
    /// ends when the log is dropped, deleted or closed, or when an fsync fails (the partition is
    /// then offline for writes). Call once, from a Tokio runtime.
    pub fn start_flusher(self: &Arc<Self>) {
        let weak: Weak<Log> = Arc::downgrade(self);
        let kick = self.flush_kick.clone();
        tokio::spawn(async move {
            loop {
                kick.notified().await;
                let Some(log) = weak.upgrade() else { return };
                if log.deleted.load(Ordering::Acquire) || log.closed.load(Ordering::Acquire) {
                    return;
                }
                let end = log.end_offset();
                if let Err(e) = log.flush_to(end).await {
                    // A failed fsync took the partition offline and was reported there, once.
                    if !log.is_offline() {
                        tracing::error!(topic = %log.topic, partition = log.partition, error = %e,
                            "background flush failed");
                    }
                    return;
                }
            }
        });
    }

    /// The current leader epoch.
    pub fn leader_epoch(&self) -> i32 {
        self.epochs.read().current()
    }

    /// The leader epochs (which epoch each offset range was written in).
    pub fn leader_epochs(&self) -> Arc<LeaderEpochs> {
        self.epochs.read().clone()
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> Arc<LogConfig> {
        self.config.lock().clone()
    }

    /// Replaces the config (takes effect on the next append, roll, retention or clean).
    pub fn set_config(&self, config: Arc<LogConfig>) {
        let mut current = self.config.lock();
        self.config_at
            .store(Arc::as_ptr(&config) as usize, Ordering::Release);
        *current = config;
    }

    /// Whether `config` is the current config ([`Log::config`]) itself, read without taking
    /// its lock. A config handed in is alive, so no later config can lie where it does.
    fn is_current_config(&self, config: &LogConfig) -> bool {
        std::ptr::from_ref(config) as usize == self.config_at.load(Ordering::Acquire)
    }

    /// Current offsets and size.
    pub fn offsets(&self) -> LogOffsets {
        let mut inner = self.inner.lock();
        let high_watermark = self.high_watermark();
        LogOffsets {
            log_start_offset: inner.log_start_offset,
            log_end_offset: inner.next_offset,
            durable_offset: self.durable_offset.load(Ordering::Acquire),
            high_watermark,
            last_stable_offset: inner.last_stable_offset(high_watermark),
            size_bytes: inner.size_bytes(),
            segments: inner.segments.len(),
        }
    }

    /// The base offset of the first segment after the one holding `offset` (to skip a damaged
    /// segment), if there is one.
    pub fn next_segment_base(&self, offset: i64) -> Option<i64> {
        let inner = self.inner.lock();
        inner
            .segments
            .range(offset + 1..)
            .next()
            .map(|(&base, _)| base)
    }

    /// The largest record timestamp in the log, if it has records.
    pub fn max_timestamp(&self) -> Option<i64> {
        let inner = self.inner.lock();
        inner
            .segments
            .values()
            .map(|s| s.max_timestamp)
            .max()
            .filter(|&t| t != i64::MIN)
    }

    /// The log end offset (the offset the next record will get).
    pub fn end_offset(&self) -> i64 {
        self.log_end.load(Ordering::Acquire)
    }

    /// The high watermark: readers see records below it (see the module docs).
    pub fn high_watermark(&self) -> i64 {
        *self.high_watermark.borrow()
    }

    /// The last stable offset: `read_committed` readers see records below it. It moves only
    /// when the high watermark does (a marker becoming durable), so waiting on
    /// [`Log::subscribe`] sees it move too.
    pub fn last_stable_offset(&self) -> i64 {
        let hw = self.high_watermark();
        self.inner.lock().last_stable_offset(hw)
    }

    /// The transactions open on this partition: `(producer id, first offset)`, oldest first.
    pub fn open_transactions(&self) -> Vec<(i64, i64)> {
        let mut open: Vec<(i64, i64)> = self.inner.lock().txns.open().collect();
        open.sort_by_key(|&(_, first)| first);
        open
    }

    /// The producers this partition knows, for Kafka's DescribeProducers: `(producer id,
    /// epoch, last sequence, last append time, first offset of its open transaction)`.
    pub fn producers(&self) -> Vec<producer_state::ProducerSummary> {
        let inner = self.inner.lock();
        let open: std::collections::HashMap<i64, i64> = inner.txns.open().collect();
        inner.producers.summaries(|pid| open.get(&pid).copied())
    }

    /// A receiver that sees the high watermark move (for waiting readers).
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.high_watermark.subscribe()
    }

    /// Raises the high watermark to `offset` (never lowers it) and wakes readers.
    fn publish_high_watermark(&self, offset: i64) {
        self.high_watermark.send_if_modified(|hw| {
            let raise = offset > *hw;
            if raise {
                *hw = offset;
            }
            raise
        });
    }

    /// Waits until the high watermark is past `offset`, or `timeout` passes. True if data is there.
    pub async fn wait_for(&self, offset: i64, timeout: Duration) -> bool {
        let mut rx = self.subscribe();
        let wait = rx.wait_for(|&end| end > offset);
        matches!(tokio::time::timeout(timeout, wait).await, Ok(Ok(_)))
    }

    /// True once a failed fsync has taken the partition offline for writes (until a restart).
    pub fn is_offline(&self) -> bool {
        self.offline.get().is_some()
    }

    /// The error every write gets once the partition is offline.
    fn offline_error(&self) -> Option<BrokerError> {
        self.offline.get().map(|o| BrokerError::PartitionOffline {
            topic: self.topic.clone(),
            partition: self.partition,
            op: o.op,
            path: o.path.clone(),
            cause: o.cause.clone(),
        })
    }

    /// Takes the partition offline after `op` of `path` failed: an fsync, or a write of
    /// buffered records (which already had their offsets, so the log in memory no longer
    /// matches the file). After a failed fsync the kernel may have dropped the dirty pages and
    /// marked them clean, so a retry could succeed without the data being on disk: nothing
    /// written since the last good sync can be called durable, and only a restart (which
    /// re-reads what the disk really holds) brings the partition back, as Kafka does for a
    /// failed log directory.
    fn go_offline(&self, op: &'static str, path: PathBuf, error: &std::io::Error) -> BrokerError {
        let offline = Offline {
            op,
            path,
            cause: error.to_string(),
        };
        if self.offline.set(offline.clone()).is_ok() {
            tracing::error!(
                topic = %self.topic, partition = self.partition, file = %offline.path.display(),
                error = %offline.cause, durable_offset = self.durable_offset.load(Ordering::Acquire),
                "{} failed: partition is offline for writes until the broker is restarted after the disk is fixed",
                offline.op
            );
        }
        self.offline_error()
            .unwrap_or_else(|| BrokerError::io(offline.path, std::io::Error::other(offline.cause)))
    }

    /// Checks a batch against the envelope schema and the topic's limits before anything is written.
    /// `now` is the broker's clock, which bounds producer timestamps.
    fn validate(&self, config: &LogConfig, batch: &RecordBatch, now: i64) -> Result<()> {
        let cols = EnvelopeColumns::try_new(batch)?;
        if batch.num_rows() == 0 {
            return Err(BrokerError::InvalidRecords(
                "a batch needs at least one record".into(),
            ));
        }
        if i32::try_from(batch.num_rows()).is_err() {
            return Err(BrokerError::InvalidRecords(format!(
                "{} records do not fit one batch",
                batch.num_rows()
            )));
        }
        if cols.timestamps.null_count() > 0 {
            return Err(BrokerError::InvalidRecords(
                "timestamps must not be null".into(),
            ));
        }
        if config.timestamp_type == TimestampType::CreateTime {
            self.check_timestamps(config, cols.timestamps.values(), now)?;
        }
        // No record can be larger than all of them together: most batches skip the per-row pass.
        let header_bytes = cols
            .header_children()
            .map_or(0, |(k, v)| k.value_data().len() + v.value_data().len());
        let all_bytes =
            cols.keys.value_data().len() + cols.values.value_data().len() + header_bytes;
        let sizes = (all_bytes > config.max_message_bytes).then(|| cols.record_sizes());
        for (i, size) in sizes.into_iter().flatten().enumerate() {
            if size > config.max_message_bytes {
                return Err(BrokerError::RecordTooLarge {
                    topic: self.topic.clone(),
                    index: i,
                    size,
                    max: config.max_message_bytes,
                });
            }
        }
        if config.cleanup_policy.compact && cols.keys.null_count() > 0 {
            let i = (0..batch.num_rows())
                .find(|&i| cols.keys.is_null(i))
                .unwrap_or(0);
            return Err(BrokerError::InvalidRecords(format!(
                "record {i} has no key; topic '{}' is compacted (cleanup.policy=compact) and every record needs a key",
                self.topic
            )));
        }
        Ok(())
    }

    /// Refuses a batch with a timestamp outside `message.timestamp.before.max.ms` /
    /// `message.timestamp.after.max.ms` of `now` (Kafka's INVALID_TIMESTAMP), so one record
    /// from a broken clock cannot hold back time-based retention for years.
    fn check_timestamps(&self, config: &LogConfig, timestamps: &[i64], now: i64) -> Result<()> {
        let (min, max) = timestamps
            .iter()
            .fold((i64::MAX, i64::MIN), |(lo, hi), &t| (lo.min(t), hi.max(t)));
        if let Some(after) = config.timestamp_after_max_ms
            && max > now.saturating_add(after)
        {
            return Err(BrokerError::InvalidTimestamp(format!(
                "record timestamp {max} is {} ms ahead of the broker's clock ({now}); topic '{}' \
                 allows at most message.timestamp.after.max.ms={after}",
                max - now,
                self.topic
            )));
        }
        if let Some(before) = config.timestamp_before_max_ms
            && min < now.saturating_sub(before)
        {
            return Err(BrokerError::InvalidTimestamp(format!(
                "record timestamp {min} is {} ms behind the broker's clock ({now}); topic '{}' \
                 allows at most message.timestamp.before.max.ms={before}",
                now.saturating_sub(min),
                self.topic
            )));
        }
        Ok(())
    }

    /// Appends a batch (envelope schema; its offset column is ignored and replaced) without
    /// waiting for fsync. Returns the offsets assigned. Nothing is written if validation fails.
    ///
    /// A batch with [`attributes::TRANSACTIONAL`] joins (or opens) its producer's transaction
    /// here: it holds back the last stable offset until the producer's marker. It needs a
    /// producer id and epoch; its sequence may be -1 (transactional offset commits have none).
    /// Control batches are refused: only [`Log::append_marker`] writes them.
    pub fn append_unflushed(
        &self,
        batch: &RecordBatch,
        producer: ProducerInfo,
    ) -> Result<AppendInfo> {
        if producer.attributes & attributes::CONTROL != 0 {
            return Err(BrokerError::InvalidRecords(
                "control batches (transaction markers) are written by the transaction \
                 coordinator only"
                    .into(),
            ));
        }
        self.append_inner(batch, producer, None, false)
    }

    /// [`Log::append_unflushed`] of a batch its caller acknowledges (see [`Log::acknowledge`])
    /// before answering for it. With `log.flush.on.ack` (the default), a small batch may wait
    /// in the active segment's write buffer, whatever the producer's acks: no one reads
    /// it before the fsync round that makes it durable, and that round writes it, with every
    /// other buffered batch, in one write. An acks=0/1 answer writes the buffer first
    /// ([`Log::acknowledge`] with [`Ack::Written`]), so a connection that appends several
    /// pipelined requests before answering any of them shares one write among them. Until its
    /// write a crash of the process loses the batch, as it would lose any batch not yet
    /// answered.
    pub fn append_buffered(
        &self,
        batch: &RecordBatch,
        producer: ProducerInfo,
    ) -> Result<AppendInfo> {
        if producer.attributes & attributes::CONTROL != 0 {
            return self.append_unflushed(batch, producer);
        }
        self.append_inner(batch, producer, None, true)
    }

    /// Writes a transaction marker (a control batch) for `producer_id` at `producer_epoch`
    /// without waiting for fsync: the producer's transaction on this partition ends with
    /// `result`, and an aborted one enters the segment's aborted-transaction index. A marker
    /// for a producer with no transaction open here is written too (markers written again
    /// after a restart are harmless). Refused with [`BrokerError::InvalidProducerEpoch`] when
    /// the partition saw a newer epoch of the producer.
    pub fn append_marker_unflushed(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        result: TxnResult,
        coordinator_epoch: i32,
    ) -> Result<AppendInfo> {
        let key = marker_key(result);
        let value = marker_value(coordinator_epoch);
        let mut b = crate::record::EnvelopeBuilder::with_capacity(1, key.len() + value.len());
        b.append(now_ms(), Some(&key), Some(&value), &[]);
        let producer = ProducerInfo {
            producer_id,
            producer_epoch,
            base_sequence: -1,
            attributes: attributes::TRANSACTIONAL | attributes::CONTROL,
        };
        self.append_inner(&b.finish(), producer, Some(result), false)
    }

    /// [`Log::append_marker_unflushed`], then waits until the marker is durable (the acks=all
    /// rule): once this returns, readers of the partition see the transaction's outcome.
    pub async fn append_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        result: TxnResult,
        coordinator_epoch: i32,
    ) -> Result<AppendInfo> {
        let info =
            self.append_marker_unflushed(producer_id, producer_epoch, result, coordinator_epoch)?;
        self.acknowledge(info.last_offset + 1, Ack::All).await?;
        Ok(info)
    }

    /// Refuses an append to a deleted partition or one taken offline by a disk error.
    fn check_writable(&self) -> Result<()> {
        if self.deleted.load(Ordering::Acquire) {
            return Err(BrokerError::UnknownTopic(self.topic.clone()));
        }
        match self.offline_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// An append; `buffer` lets a small frame wait in the write buffer (see
    /// [`Log::append_buffered`]).
    fn append_inner(
        &self,
        batch: &RecordBatch,
        producer: ProducerInfo,
        marker: Option<TxnResult>,
        buffer: bool,
    ) -> Result<AppendInfo> {
        self.check_writable()?;
        let config = self.config();
        let now = now_ms();
        self.validate(&config, batch, now)?;
        let n = batch.num_rows();
        let producer = stored_attributes(&config, producer);
        let log_append_time = config.timestamp_type == TimestampType::LogAppendTime;
        // The frame holds offsets relative to its base. A batch that has them already (a
        // single record at 0, as Produce builds it) is encoded as it is.
        let relative_already = batch
            .column(col::OFFSET)
            .as_any()
            .downcast_ref::<Int64Array>()
            .is_some_and(|o| {
                o.null_count() == 0 && o.values().iter().zip(0..).all(|(&v, i)| v == i)
            });
        let rebuilt;
        let relative = if relative_already && !log_append_time {
            batch
        } else {
            let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
            if log_append_time {
                columns[col::TIMESTAMP] = Arc::new(TimestampMillisecondArray::from(vec![now; n]));
            }
            columns[col::OFFSET] = Arc::new(Int64Array::from_iter_values(0..n as i64));
            rebuilt = RecordBatch::try_new(batch.schema(), columns)?;
            &rebuilt
        };
        let (first_ts, max_ts) = {
            let ts = relative
                .column(col::TIMESTAMP)
                .as_any()
                .downcast_ref::<TimestampMillisecondArray>()
                .ok_or_else(|| BrokerError::Internal("timestamp column type".into()))?;
            (
                ts.value(0),
                ts.values().iter().copied().max().unwrap_or(i64::MIN),
            )
        };
        let header = BatchHeader {
            base_offset: 0, // assigned under the lock
            last_offset_delta: (n - 1) as i32,
            record_count: n as i32,
            first_timestamp: first_ts,
            max_timestamp: max_ts,
            producer,
        };
        // Encoded (and compressed) before the lock, so appenders to this partition encode in
        // parallel; under the lock the frame gets its offsets and CRC, and is written.
        with_frame_encoder(|encoder, frame| {
            let unsealed = encoder.encode_unsealed(&header, relative, frame)?;
            let buffer = buffer && config.flush_on_ack;
            self.append_frame(frame, unsealed, header, marker, &config, now, buffer)
        })
    }

    /// [`Log::append_buffered`] of a producer's batch as [`PreparedBatch::from_kafka`] made it
    /// ready: a small uncompressed batch is stored as the bytes it came in.
    pub fn append_prepared(
        &self,
        batch: &PreparedBatch<'_>,
        producer: ProducerInfo,
    ) -> Result<AppendInfo> {
        let rows = match batch {
            PreparedBatch::Columns(batch) => return self.append_buffered(batch, producer),
            PreparedBatch::Rows(rows) => rows,
        };
        if producer.attributes & attributes::CONTROL != 0 {
            return self.append_unflushed(&rows.decode()?, producer);
        }
        self.check_writable()?;
        // The clock as the rows were checked, a moment ago (coarsely: see `coarse_now_ms`):
        // reading it again costs a tenth of such an append on some machines.
        let now = rows.checked_at();
        // Taking the config's lock and a reference to it again costs as much as a tenth of
        // such an append too, so the one the rows were checked against serves while it is the
        // current one (a change landing after this is as if it came after the append).
        let current;
        let config = if self.is_current_config(rows.config()) {
            rows.config()
        } else {
            current = self.config();
            if !rows.fit(&current, now) {
                // The topic's configuration changed since the rows were checked: the append of
                // their columns says why they are refused, or stores them as the topic now
                // asks.
                return self.append_inner(&rows.decode()?, producer, None, true);
            }
            &current
        };
        let facts = rows.facts();
        let n = rows.count() as i32;
        let header = BatchHeader {
            base_offset: 0, // assigned under the lock
            last_offset_delta: n - 1,
            record_count: n,
            first_timestamp: facts.first_timestamp,
            max_timestamp: facts.max_timestamp,
            producer: stored_attributes(config, producer),
        };
        with_frame_encoder(|encoder, frame| {
            let unsealed = encoder.encode_kafka_rows_unsealed(
                &header,
                rows.base_timestamp(),
                rows.rows(),
                frame,
            )?;
            let buffer = config.flush_on_ack;
            self.append_frame(frame, unsealed, header, None, config, now, buffer)
        })
    }

    /// The part of an append under the partition lock: the producer's checks, the offsets,
    /// the write, and the producer and transaction state. `frame` (with the buffers `unsealed`
    /// holds) is the batch encoded with offsets relative to its base, which is assigned here;
    /// `config` is the one the batch was checked and encoded with; `buffer` lets a small frame
    /// wait in the write buffer.
    #[allow(clippy::too_many_arguments)]
    fn append_frame(
        &self,
        frame: &mut [u8],
        unsealed: Unsealed,
        mut header: BatchHeader,
        marker: Option<TxnResult>,
        config: &LogConfig,
        now: i64,
        buffer: bool,
    ) -> Result<AppendInfo> {
        let producer = header.producer;
        let n = header.record_count;
        let log_append_time =
            (producer.attributes & attributes::LOG_APPEND_TIME != 0).then_some(now);
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        // Checked under the lock `close` takes, so no append lands after a close.
        if self.closed.load(Ordering::Acquire) {
            return Err(BrokerError::ShuttingDown);
        }
        let transactional = producer.attributes & attributes::TRANSACTIONAL != 0;
        let pid = producer.producer_id;
        if transactional && (pid < 0 || producer.producer_epoch < 0) {
            return Err(BrokerError::InvalidRecords(format!(
                "a transactional batch needs a producer id and epoch (got {pid} and {}); call \
                 InitProducerId with a transactional id first",
                producer.producer_epoch
            )));
        }
        if pid >= 0 {
            self.check_transaction(inner, &producer, transactional, marker.is_some())?;
        }
        let idempotent = pid >= 0 && producer.base_sequence >= 0;
        if idempotent {
            let check = inner.producers.check(
                &self.topic,
                self.partition,
                producer.producer_id,
                producer.producer_epoch,
                producer.base_sequence,
                n,
            )?;
            if let SequenceCheck::Duplicate(dup) = check {
                return Ok(AppendInfo {
                    base_offset: dup.base_offset,
                    last_offset: dup.last_offset,
                    log_append_time_ms: log_append_time,
                    log_start_offset: inner.log_start_offset,
                });
            }
        }
        let base = inner.next_offset;
        header.base_offset = base;
        unsealed.seal(frame, base);
        self.maybe_roll(inner, config, unsealed.len() as u64, now)?;
        let active = inner.active()?;
        match unsealed.with_io_slices(frame, |slices| {
            active.append_slices(slices, &header, buffer)
        }) {
            Ok(()) => {}
            Err(WriteFailure::Frame(e)) => return Err(e),
            Err(WriteFailure::Buffered(path, e)) => {
                return Err(self.go_offline("write", path, &e));
            }
        }
        let in_file = !active.has_buffered();
        inner.next_offset = header.next_offset();
        if in_file {
            self.file_end.store(inner.next_offset, Ordering::Release);
        }
        if idempotent {
            inner.producers.update(
                producer.producer_id,
                producer.producer_epoch,
                producer.base_sequence,
                n,
                (base, header.last_offset()),
                now,
            );
        } else if pid >= 0 && transactional {
            inner
                .producers
                .note_epoch(pid, producer.producer_epoch, now);
        }
        if let Some(result) = marker {
            if let Some(done) = inner.txns.on_marker(pid, result, base)
                && let Some(entry) = inner.txns.aborted_entry(&done)
            {
                inner.active()?.aborted.push(entry);
            }
        } else if transactional {
            // Checked above, under the same lock.
            let _ = inner.txns.on_transactional_append(pid, base);
        }
        let info = AppendInfo {
            base_offset: base,
            last_offset: header.last_offset(),
            log_append_time_ms: log_append_time,
            log_start_offset: inner.log_start_offset,
        };
        let end = inner.next_offset;
        let flush_on_ack = config.flush_on_ack;
        self.log_end.store(end, Ordering::Release);
        drop(guard);
        if flush_on_ack {
            self.flush_kick.notify_one();
        } else {
            self.publish_high_watermark(end);
        }
        Ok(info)
    }

    /// The transaction checks of a write by producer `p`, under the partition lock: a marker
    /// or a write without a sequence must not come from a fenced epoch; a plain batch must not
    /// come while the producer's transaction is open here; a new transaction must fit.
    fn check_transaction(
        &self,
        inner: &Inner,
        p: &ProducerInfo,
        transactional: bool,
        is_marker: bool,
    ) -> Result<()> {
        let pid = p.producer_id;
        if is_marker || (transactional && p.base_sequence < 0) {
            inner.producers.check_epoch(pid, p.producer_epoch)?;
        }
        if is_marker {
            return Ok(());
        }
        let open = inner.txns.is_open(pid);
        if !transactional && open {
            return Err(BrokerError::InvalidTxnState(format!(
                "producer {pid} has a transaction open on {}-{}; a non-transactional batch \
                 from it must wait until the transaction is committed or aborted",
                self.topic, self.partition
            )));
        }
        if transactional && !open && inner.txns.is_full() {
            return Err(BrokerError::InvalidTxnState(format!(
                "{} transactions are open on {}-{}, the most one partition keeps \
                 ({MAX_ONGOING_TXNS_PER_PARTITION}); commit or abort some first",
                inner.txns.len(),
                self.topic,
                self.partition
            )));
        }
        Ok(())
    }

    /// Appends a batch and waits as `ack` asks (see [`Log::acknowledge`]). Concurrent appends
    /// share fsyncs (group commit).
    pub async fn append(
        &self,
        batch: &RecordBatch,
        producer: ProducerInfo,
        ack: Ack,
    ) -> Result<AppendInfo> {
        let info = self.append_buffered(batch, producer)?;
        self.acknowledge(info.last_offset + 1, ack).await?;
        Ok(info)
    }

    /// Waits until appends that ended at `end` may be acknowledged: with [`Ack::All`] and
    /// `log.flush.on.ack`, until they are durable; otherwise at once, unless the topic's
    /// `flush.messages` policy asks for an fsync now.
    pub async fn acknowledge(&self, end: i64, ack: Ack) -> Result<()> {
        let config = self.config();
        let durable = self.durable_offset.load(Ordering::Acquire);
        let policy_due = config
            .flush_messages
            .is_some_and(|every| (end - durable).max(0) as u64 >= every);
        if policy_due || (ack == Ack::All && config.flush_on_ack) {
            self.flush_to(end).await
        } else {
            // Written to the file (the page cache) before the answer, so a crash of the process
            // does not lose what it acknowledged.
            self.write_through(end)
        }
    }

    /// Writes the active segment's write buffer if it holds records below `end`: what an
    /// acks=0/1 answer for records ending at `end` waits for. Never waits for an fsync.
    pub(crate) fn write_through(&self, end: i64) -> Result<()> {
        if self.file_end.load(Ordering::Acquire) >= end {
            return Ok(());
        }
        let mut inner = self.inner.lock();
        // The buffer's memory is kept: more answers are likely to come. The next round lets
        // it go.
        self.write_buffered(&mut inner, false)
    }

    /// Writes the active segment's write buffer, under the partition lock, releasing its memory
    /// with `release`. A failed write takes the partition offline: the buffered records
    /// already have their offsets.
    fn write_buffered(&self, inner: &mut Inner, release: bool) -> Result<()> {
        if let Some(e) = self.offline_error() {
            return Err(e);
        }
        if let Err((path, e)) = inner.active()?.write_buffered(release) {
            return Err(self.go_offline("write", path, &e));
        }
        self.file_end.store(inner.next_offset, Ordering::Release);
        Ok(())
    }

    /// Rolls to a new segment when the frame would push the active one past `segment.bytes`, or
    /// the active one is older than `segment.ms`. The closed segment's indexes are persisted.
    fn maybe_roll(
        &self,
        inner: &mut Inner,
        config: &LogConfig,
        frame_len: u64,
        now: i64,
    ) -> Result<()> {
        let (segment_bytes, segment_ms) = (config.segment_bytes, config.segment_ms);
        let interval = config.index_interval_bytes;
        let next = inner.next_offset;
        let active = inner.active()?;
        let full = active.size + frame_len > segment_bytes;
        let old = now.saturating_sub(active.created_ms) >= segment_ms;
        if active.is_empty() || !(full || old) {
            return Ok(());
        }
        self.write_buffered(inner, true)?;
        inner.active()?.save_indexes(&*self.storage)?;
        inner.producers.save(&self.dir, next, inner.txns.open())?;
        let seg = Segment::create(&*self.storage, &self.dir, next, interval, now)?;
        inner.segments.insert(next, seg);
        inner.dir_gen += 1;
        Ok(())
    }

    /// Makes every record below `target` durable (group commit): a caller whose records a
    /// round in flight covers waits for it; otherwise it starts a round of its own, which
    /// fsyncs everything written so far, so N concurrent appends cost about two fsyncs, not
    /// N. Up to [`FLUSH_ROUNDS_IN_FLIGHT`] rounds run at once: records written while a round
    /// is in flight start the next one at once instead of waiting for it to end, so an
    /// acknowledgement waits for one fsync, not two. Once a sync has failed, every caller
    /// whose records are not yet durable gets [`BrokerError::PartitionOffline`].
    pub async fn flush_to(&self, target: i64) -> Result<()> {
        // Subscribed before the first check, so a round that ends after it is never missed.
        let mut rounds = self.flush_rounds.subscribe();
        loop {
            if self.durable_offset.load(Ordering::Acquire) >= target {
                return Ok(());
            }
            if let Some(e) = self.offline_error() {
                return Err(e);
            }
            let covered = self.in_flight.lock().iter().any(|&(_, end)| end >= target);
            if !covered && let Ok(slot) = self.flush_slots.try_acquire() {
                let round = RoundGuard {
                    log: self,
                    id: self.next_round.fetch_add(1, Ordering::Relaxed),
                    slot: Some(slot),
                };
                round.run().await?;
                continue;
            }
            if rounds.changed().await.is_err() {
                return Err(BrokerError::Internal("flush round channel closed".into()));
            }
        }
    }

    /// One fsync round: fsyncs every segment written past the durable offset (and the
    /// directory, unless a completed round synced it since the last segment was created or
    /// deleted), then moves the durable offset to what was written before the round began.
    /// Each round syncs all it depends on itself, so rounds in flight at once may finish in
    /// any order. A failed sync takes the partition offline and leaves the durable offset
    /// where it was. Callers hold a `flush_slots` permit.
    async fn fsync_written(&self, round: u64) -> Result<()> {
        if let Some(e) = self.offline_error() {
            return Err(e);
        }
        // The round reads where the log ends only after every task already runnable has run:
        // appenders woken together by the last round's end (and requests the runtime's poll of
        // its sockets hands over meanwhile) write first and join this round, where otherwise
        // the first of them would start a round of its own record alone and the rest wait
        // for the next. With nothing else to run this costs one trip through the scheduler.
        // 64 appenders with an fsync per append: 21-27 times one appender's rate with it
        // (median 24), 15-24 times without (median 20), in 14 alternating pairs of runs of
        // `benches/log.rs` `group_commit`.
        tokio::task::yield_now().await;
        let durable = self.durable_offset.load(Ordering::Acquire);
        let (files, dir, dir_gen, end, active_base, flush_on_ack) = {
            let mut inner = self.inner.lock();
            // The appends this round covers are in the file before it is fsynced.
            self.write_buffered(&mut inner, true)?;
            let files: Vec<SegmentView> = inner
                .segments
                .values()
                .filter(|s| s.next_offset > durable)
                .map(Segment::view)
                .collect();
            let dir = (inner.dir_gen > inner.dir_synced_gen).then(|| self.dir.clone());
            let end = inner.next_offset;
            let active_base = inner.segments.keys().next_back().copied().unwrap_or(0);
            self.in_flight.lock().push((round, end));
            let flush_on_ack = self.config().flush_on_ack;
            (files, dir, inner.dir_gen, end, active_base, flush_on_ack)
        };
        let syncs_dir = dir.is_some();
        let storage = self.storage.clone();
        let log_dir = self.dir.clone();
        let recovery_point = self.recovery_point.clone();
        let synced = tokio::task::spawn_blocking(move || {
            for view in &files {
                view.file.sync_data().map_err(|e| (view.path.clone(), e))?;
            }
            if let Some(dir) = dir {
                storage.sync_dir(&dir).map_err(|e| (dir, e))?;
            }
            // Every segment below the active one is now durable whole, its name too (segments
            // wholly below the durable offset were synced by earlier rounds, the rest and the
            // directory by this one): after a roll, the first round moves the recovery point
            // up, so the next recovery checks no segment this one closed.
            let mut point = recovery_point.lock();
            if active_base > *point {
                match write_offset_checkpoint(
                    &*storage,
                    &log_dir,
                    RECOVERY_POINT_FILE,
                    active_base,
                    false,
                ) {
                    Ok(()) => *point = active_base,
                    // A recovery point left behind only makes the next recovery check more.
                    Err(e) => tracing::warn!(dir = %log_dir.display(), error = %e,
                        "could not persist the recovery point"),
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| BrokerError::Internal(format!("fsync task failed: {e}")))?;
        if let Err((path, e)) = synced {
            return Err(self.go_offline("fsync", path, &e));
        }
        if syncs_dir {
            let mut inner = self.inner.lock();
            inner.dir_synced_gen = inner.dir_synced_gen.max(dir_gen);
        }
        self.durable_offset.fetch_max(end, Ordering::AcqRel);
        self.last_flush_ms.store(now_ms(), Ordering::Release);
        if flush_on_ack {
            self.publish_high_watermark(end);
        }
        Ok(())
    }

    /// Fsyncs everything appended so far.
    pub async fn flush(&self) -> Result<()> {
        self.flush_to(self.end_offset()).await
    }

    /// Flushes if `flush.ms` has passed since the last flush and something is unflushed.
    pub async fn flush_if_due(&self, now: i64) -> Result<()> {
        let Some(every) = self.config().flush_ms else {
            return Ok(());
        };
        if self.is_offline() {
            // Already reported once; a timer has nothing to add.
            return Ok(());
        }
        let due = now - self.last_flush_ms.load(Ordering::Acquire) >= every as i64;
        if due && self.durable_offset.load(Ordering::Acquire) < self.end_offset() {
            self.flush().await?;
        }
        Ok(())
    }

    fn out_of_range(&self, offset: i64, inner: &Inner) -> BrokerError {
        BrokerError::OffsetOutOfRange {
            topic: self.topic.clone(),
            partition: self.partition,
            offset,
            log_start_offset: inner.log_start_offset,
            log_end_offset: inner.next_offset,
        }
    }

    /// Reads batches starting at `offset`, about `max_bytes` of stored frames (the first batch is
    /// always returned whole, even if larger). The first batch is sliced so that it starts
    /// exactly at `offset`. Reading at the log end returns no batches.
    ///
    /// Only records below the high watermark are returned; an offset between it and the log
    /// end is valid and reads nothing yet.
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<ReadResult> {
        self.read_isolated(offset, max_bytes, Isolation::ReadUncommitted)
    }

    /// [`Log::read`] at an isolation level: with [`Isolation::ReadCommitted`] only records below
    /// the last stable offset are returned, with the aborted transactions among them.
    pub fn read_isolated(
        &self,
        offset: i64,
        max_bytes: usize,
        isolation: Isolation,
    ) -> Result<ReadResult> {
        self.read_as(offset, max_bytes, isolation)
    }

    /// [`Log::read_isolated`] for Fetch: a small batch read whole comes as the rows the log
    /// keeps ([`FetchBatch::Rows`]), which a Kafka batch carries unchanged, once its frame is
    /// known whole (this process wrote it, or an earlier read checked it); any other batch as
    /// its columns, sliced to `offset`.
    pub fn read_for_fetch(
        &self,
        offset: i64,
        max_bytes: usize,
        isolation: Isolation,
    ) -> Result<ReadResult<FetchBatch>> {
        self.read_as(offset, max_bytes, isolation)
    }

    fn read_as<B: ReadBatch>(
        &self,
        offset: i64,
        max_bytes: usize,
        isolation: Isolation,
    ) -> Result<ReadResult<B>> {
        let (views, start_pos, log_start, hw, lso, mut aborted) = {
            let mut inner = self.inner.lock();
            if offset < inner.log_start_offset || offset > inner.next_offset {
                return Err(self.out_of_range(offset, &inner));
            }
            let hw = self.high_watermark().min(inner.next_offset);
            let lso = inner.last_stable_offset(hw);
            let (bound, aborted) = match isolation {
                Isolation::ReadUncommitted => (hw, Vec::new()),
                Isolation::ReadCommitted => {
                    let from = inner
                        .segments
                        .range(..=offset)
                        .next_back()
                        .map_or(offset, |(&b, _)| b);
                    let indexes = inner.segments.range(from..).map(|(_, s)| &s.aborted);
                    (
                        lso,
                        crate::txn::index::collect_aborted(indexes, offset, lso),
                    )
                }
            };
            let mut views = Vec::new();
            let mut start_pos = 0;
            if offset < bound {
                if let Some((_, first)) = inner.segments.range(..=offset).next_back() {
                    start_pos = first.offset_index.lookup(offset);
                    views.push(first.view());
                }
                views.extend(inner.segments.range(offset + 1..).map(|(_, s)| s.view()));
            }
            (
                views,
                start_pos,
                inner.log_start_offset,
                (hw, bound),
                lso,
                aborted,
            )
        };
        let (hw, bound) = hw;
        let mut result = ReadResult {
            batches: Vec::new(),
            next_offset: offset,
            log_start_offset: log_start,
            high_watermark: hw,
            last_stable_offset: lso,
            aborted: Vec::new(),
            epochs: self.leader_epochs(),
        };
        let mut budget = max_bytes;
        for (i, view) in views.iter().enumerate() {
            let from = if i == 0 { start_pos } else { 0 };
            if !read_segment(view, from, offset, bound, &mut budget, &mut result)? || budget == 0 {
                break;
            }
        }
        // Only the transactions with records in what is returned.
        let end = result.next_offset;
        aborted.retain(|a| a.first_offset < end);
        result.aborted = aborted;
        Ok(result)
    }

    /// Reads the whole log, from its start to the high watermark, `read_bytes` at a time, and
    /// hands every stored batch (markers included) to `apply` in order: how the coordinators
    /// read their internal topics back on start. A damaged segment does not stop it: what it
    /// held is skipped (and logged), the rest is read.
    pub(crate) fn replay(
        &self,
        read_bytes: usize,
        mut apply: impl FnMut(&StoredBatch) -> Result<()>,
    ) -> Result<()> {
        let mut offset = self.offsets().log_start_offset;
        loop {
            let read = match self.read(offset, read_bytes) {
                Ok(read) => read,
                Err(e @ BrokerError::Corrupt { .. }) => match self.next_segment_base(offset) {
                    Some(next) => {
                        tracing::error!(topic = %self.topic, partition = self.partition, offset,
                            resume_at = next, error = %e,
                            "damaged data; skipping to the next segment (what the damaged range held is lost)");
                        offset = next;
                        continue;
                    }
                    None => {
                        tracing::error!(topic = %self.topic, partition = self.partition, offset,
                            error = %e, "damaged data at the end of the log; what follows is lost");
                        return Ok(());
                    }
                },
                Err(e) => return Err(e),
            };
            if read.batches.is_empty() || read.next_offset <= offset {
                return Ok(());
            }
            for batch in &read.batches {
                apply(batch)?;
            }
            offset = read.next_offset;
            if offset >= read.high_watermark {
                return Ok(());
            }
        }
    }

    /// The earliest offset below the high watermark whose record timestamp is at least
    /// `timestamp_ms`, with that timestamp; `None` when every record is older.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<(i64, i64)>> {
        let hw = self.high_watermark();
        let (views, start_pos, log_start) = {
            let inner = self.inner.lock();
            let Some((_, seg)) = inner
                .segments
                .iter()
                .find(|(_, s)| s.max_timestamp >= timestamp_ms)
            else {
                return Ok(None);
            };
            let from_offset = seg
                .time_index
                .lookup(timestamp_ms)
                .unwrap_or(seg.base_offset);
            let pos = seg.offset_index.lookup(from_offset);
            let views: Vec<SegmentView> = inner
                .segments
                .range(seg.base_offset..)
                .map(|(_, s)| s.view())
                .collect();
            (views, pos, inner.log_start_offset)
        };
        for (i, view) in views.iter().enumerate() {
            let mut pos = if i == 0 { start_pos } else { 0 };
            while pos < view.end {
                let h = segment::read_header(&*view.file, &view.path, pos, view.end)?;
                if h.batch.base_offset >= hw {
                    return Ok(None);
                }
                if h.batch.max_timestamp >= timestamp_ms && h.batch.last_offset() >= log_start {
                    let buf =
                        segment::read_aligned(&*view.file, &view.path, pos, h.frame_len as usize)?;
                    let batch = frame::decode(&buf, &h)?;
                    let cols = EnvelopeColumns::try_new(&batch)?;
                    for row in 0..batch.num_rows() {
                        let (o, t) = (cols.offsets.value(row), cols.timestamps.value(row));
                        if t >= timestamp_ms && o >= log_start {
                            return Ok(Some((o, t)));
                        }
                    }
                }
                pos += h.frame_len;
            }
        }
        Ok(None)
    }

    /// Deletes closed segments past `retention.ms` (by their newest record) or while the log is
    /// larger than `retention.bytes`, oldest first. The active segment is never deleted.
    /// Returns the number of segments deleted.
    pub fn enforce_retention(&self, now: i64) -> Result<usize> {
        let config = self.config();
        let mut inner = self.inner.lock();
        if !config.cleanup_policy.delete {
            return Ok(0);
        }
        let closed: Vec<(i64, u64, i64)> = {
            let n = inner.segments.len();
            inner
                .segments
                .values()
                .take(n.saturating_sub(1))
                .map(|s| (s.base_offset, s.size, s.max_timestamp))
                .collect()
        };
        let mut size = inner.size_bytes();
        let mut doomed = Vec::new();
        for (base, seg_size, max_ts) in closed {
            if inner.swapping == Some(base) {
                // Being swapped for its compacted copy; the next run takes it.
                break;
            }
            let expired = config
                .retention_ms
                .is_some_and(|ms| max_ts < now.saturating_sub(ms));
            let oversized = config
                .retention_bytes
                .is_some_and(|limit| size.saturating_sub(seg_size) >= limit);
            if !(expired || oversized) {
                break;
            }
            size -= seg_size;
            doomed.push(base);
        }
        for base in &doomed {
            if let Some(seg) = inner.segments.remove(base) {
                seg.delete_files(&*self.storage)?;
                inner.dir_gen += 1;
            }
        }
        if let Some(&first) = inner.segments.keys().next() {
            inner.log_start_offset = inner.log_start_offset.max(first);
        }
        if !doomed.is_empty() {
            tracing::info!(topic = %self.topic, partition = self.partition, segments = doomed.len(),
                log_start_offset = inner.log_start_offset, "retention deleted old segments");
        }
        Ok(doomed.len())
    }

    /// Closes the log for a clean shutdown: appends fail from now on, everything is fsynced and
    /// the active segment's indexes and the producer state are persisted (so the next open need
    /// not rescan).
    pub async fn close(&self) -> Result<()> {
        {
            let _inner = self.inner.lock();
            self.closed.store(true, Ordering::Release);
        }
        self.flush_kick.notify_one();
        self.flush().await?;
        let mut inner = self.inner.lock();
        inner.active()?.save_indexes(&*self.storage)?;
        let end = inner.next_offset;
        let Inner {
            producers, txns, ..
        } = &mut *inner;
        producers.save(&self.dir, end, txns.open())
    }

    /// Forgets idempotent producers idle for `expiration_ms` or longer as of `now_ms` (Kafka's
    /// `producer.id.expiration.ms`). Returns how many were forgotten.
    /// A producer with a transaction open here is kept whatever its age (the coordinator
    /// ends the transaction first).
    pub fn expire_producers(&self, now_ms: i64, expiration_ms: i64) -> usize {
        let mut inner = self.inner.lock();
        let Inner {
            producers, txns, ..
        } = &mut *inner;
        producers.expire(now_ms, expiration_ms, |pid| txns.is_open(pid))
    }

    /// Number of idempotent producers whose state this partition keeps.
    pub fn producer_count(&self) -> usize {
        self.inner.lock().producers.len()
    }

    /// Kafka's DeleteRecords: moves the log start offset up to `offset` (persisted), so reads
    /// below it fail, and deletes closed segments that lie wholly below it. Returns the new log
    /// start offset.
    pub fn delete_records(&self, offset: i64) -> Result<i64> {
        let mut inner = self.inner.lock();
        let target = if offset == -1 {
            inner.next_offset
        } else {
            offset
        };
        if target < 0 || target > inner.next_offset {
            return Err(self.out_of_range(offset, &inner));
        }
        if target <= inner.log_start_offset {
            return Ok(inner.log_start_offset);
        }
        write_offset_checkpoint(&*self.storage, &self.dir, LOG_START_FILE, target, true)?;
        inner.log_start_offset = target;
        let n = inner.segments.len();
        let doomed: Vec<i64> = inner
            .segments
            .values()
            .take(n.saturating_sub(1))
            .take_while(|s| s.next_offset <= target && inner.swapping != Some(s.base_offset))
            .map(|s| s.base_offset)
            .collect();
        for base in doomed {
            if let Some(seg) = inner.segments.remove(&base) {
                seg.delete_files(&*self.storage)?;
                inner.dir_gen += 1;
            }
        }
        Ok(target)
    }

    /// Marks the log deleted (appends fail from now on) and removes its directory.
    pub fn delete(&self) -> Result<()> {
        self.deleted.store(true, Ordering::Release);
        let _inner = self.inner.lock();
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BrokerError::io(&self.dir, e)),
        }
    }
}

pub(crate) const LOG_START_FILE: &str = "log-start-offset";

/// Where the log's recovery point is persisted: every segment wholly below it was fsynced
/// whole (and its name with it), so recovery after an unclean shutdown need not check it.
pub(crate) const RECOVERY_POINT_FILE: &str = "recovery-point-offset";

/// `producer` with the attributes its batch is stored with under `config`: the codec consumers
/// are sent, which also picks the codec at rest (see `frame`; transaction markers are never
/// compressed, as in Kafka), and whose timestamps the records carry.
fn stored_attributes(config: &LogConfig, mut producer: ProducerInfo) -> ProducerInfo {
    producer.attributes &= attributes::LOG_APPEND_TIME
        | attributes::TRANSACTIONAL
        | attributes::CONTROL
        | attributes::COMPRESSION;
    let codec = if producer.attributes & attributes::CONTROL != 0 {
        0
    } else {
        config
            .compression
            .codec_for(producer.attributes & attributes::COMPRESSION)
    };
    producer.attributes = (producer.attributes & !attributes::COMPRESSION) | codec;
    if config.timestamp_type == TimestampType::LogAppendTime {
        producer.attributes |= attributes::LOG_APPEND_TIME;
    } else {
        producer.attributes &= !attributes::LOG_APPEND_TIME;
    }
    producer
}

/// An offset persisted in `dir/name` (8 bytes little-endian and their CRC32C); `None` when the
/// file is missing, or damaged (which is logged).
fn read_offset_checkpoint(storage: &dyn Storage, dir: &Path, name: &str) -> Result<Option<i64>> {
    let path = dir.join(name);
    match storage::read_file(storage, &path, 64) {
        Ok(b) if b.len() == 12 && quiver_common::crc::crc32c(&b[..8]).to_le_bytes() == b[8..12] => {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[..8]);
            Ok(Some(i64::from_le_bytes(x)))
        }
        Ok(_) => {
            tracing::warn!(file = %path.display(), "ignoring an unreadable offset checkpoint");
            Ok(None)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(BrokerError::io(path, e)),
    }
}

/// Persists `offset` in `dir/name` atomically: written to a temporary file, fsynced, renamed
/// over the old one, and with `sync_dir` the directory fsynced. Without it, a crash may bring
/// back the previous checkpoint (or none), which must then be as good an answer.
fn write_offset_checkpoint(
    storage: &dyn Storage,
    dir: &Path,
    name: &str,
    offset: i64,
    sync_dir: bool,
) -> Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut b = offset.to_le_bytes().to_vec();
    let crc = quiver_common::crc::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    let f = storage
        .open(&tmp, storage::OpenMode::CreateTruncate)
        .at(&tmp)?;
    f.write_all_at(&b, 0).at(&tmp)?;
    f.sync_data().at(&tmp)?;
    storage.rename(&tmp, &path).at(&path)?;
    if sync_dir {
        storage.sync_dir(dir).at(dir)?;
    }
    Ok(())
}

/// Fsyncs the segments recovery checked (what a crashed process wrote may still be only in the
/// page cache, and from now on it counts as durable) and the directory, then moves the
/// recovery point to the last segment if it is not there yet (and there is more than one).
/// Returns the recovery point persisted.
fn make_recovered_durable(
    storage: &dyn Storage,
    dir: &Path,
    segments: &BTreeMap<i64, Segment>,
    scanned: &[i64],
    recovery_point: Option<i64>,
) -> Result<i64> {
    if segments.is_empty() {
        return Ok(i64::MIN);
    }
    for base in scanned {
        if let Some(seg) = segments.get(base) {
            let view = seg.view();
            view.file.sync_data().at(&view.path)?;
        }
    }
    storage.sync_dir(dir).at(dir)?;
    let last = segments.keys().next_back().copied().unwrap_or(0);
    // With one segment there is nothing below it to spare from the next recovery.
    if recovery_point == Some(last) || segments.len() == 1 {
        return Ok(recovery_point.unwrap_or(i64::MIN));
    }
    write_offset_checkpoint(storage, dir, RECOVERY_POINT_FILE, last, false)?;
    Ok(last)
}

/// Keeps the segments' offsets contiguous after recovery. A closed segment whose unsynced
/// tail was lost (or cut as damaged) ends before the next segment starts, and a segment whose
/// name was lost leaves a hole; everything after such a gap was written after the lost bytes
/// and was never synced ahead of them (a sync covers every segment written), so it was never
/// acknowledged as durable. Those later segments are deleted (durably, so that a second crash
/// cannot bring them back behind new appends) and the cut is reported.
///
/// A segment whose persisted indexes still match it lost nothing since it was closed, so a
/// hole after it is compaction's (segments that older versions compacted may end early);
/// compaction now keeps each segment's last batch, so it makes no such holes.
fn drop_segments_after_gap(
    storage: &dyn Storage,
    dir: &Path,
    segments: &mut BTreeMap<i64, Segment>,
    truncations: &mut Vec<Truncation>,
) -> Result<()> {
    let gap = segments
        .values()
        .zip(segments.values().skip(1))
        .find(|(a, b)| a.scanned && a.next_offset != b.base_offset)
        .map(|(a, b)| (a.next_offset, b.base_offset));
    let Some((end, next_base)) = gap else {
        return Ok(());
    };
    let doomed = segments.split_off(&next_base);
    for seg in doomed.values() {
        seg.delete_files(storage)?;
        truncations.push(Truncation {
            path: seg.path.clone(),
            valid_bytes: 0,
            dropped_bytes: seg.size,
            reason: format!(
                "the log before it ends at offset {end} but this segment starts at {}",
                seg.base_offset
            ),
        });
    }
    storage.sync_dir(dir).at(dir)
}

/// Rebuilds what the partition knows of transactions after opening: the transactions open
/// at the end, and each segment's aborted-transaction index.
///
/// Segments before `replay_from` (the producer snapshot's offset, `open_txns` the transactions
/// open there) keep their saved `.txnindex` when it covers them up to that point; the batches
/// from `replay_from` on are replayed on top. If a saved index is missing or stale, every
/// segment's index is rebuilt from the log start instead (a scan of every frame header, and
/// of every marker's record) and saved again.
fn recover_txns(
    dir: &Path,
    segments: &mut BTreeMap<i64, Segment>,
    replay_from: i64,
    open_txns: Vec<(i64, i64)>,
) -> Result<OngoingTxns> {
    let mut trusted = true;
    for seg in segments.values_mut() {
        if seg.base_offset >= replay_from {
            break;
        }
        let covered = if seg.next_offset <= replay_from {
            seg.size
        } else {
            position_of(seg, replay_from)?
        };
        match seg.load_aborted_index(covered) {
            Some(index) => seg.aborted = index,
            None => {
                trusted = false;
                break;
            }
        }
    }
    if trusted {
        let mut txns = OngoingTxns::from_open(open_txns);
        for seg in segments
            .values_mut()
            .filter(|s| s.next_offset > replay_from)
        {
            let rebuilt = crate::txn::index::rebuild(&mut txns, batch_summaries(seg, replay_from)?);
            for entry in rebuilt.entries() {
                seg.aborted.push(*entry);
            }
        }
        return Ok(txns);
    }
    tracing::info!(dir = %dir.display(), "rebuilding the aborted-transaction indexes from the log");
    let mut txns = OngoingTxns::default();
    let last = segments.keys().next_back().copied();
    for seg in segments.values_mut() {
        seg.aborted = crate::txn::index::rebuild(&mut txns, batch_summaries(seg, i64::MIN)?);
        if Some(seg.base_offset) != last {
            // Closed segments do not change: saved now, they are trusted next time.
            seg.save_aborted_index()?;
        }
    }
    Ok(txns)
}

/// The byte position of the first frame at or after `offset` in `seg`.
fn position_of(seg: &Segment, offset: i64) -> Result<u64> {
    let mut pos = seg.offset_index.lookup(offset);
    while pos < seg.size {
        let h = seg.read_header(pos, seg.size)?;
        if h.batch.base_offset >= offset {
            break;
        }
        pos += h.frame_len;
    }
    Ok(pos)
}

/// What the transaction index needs of every batch of `seg` at or after `from`: frame headers,
/// and for a marker its record (whether it commits or aborts).
fn batch_summaries(seg: &Segment, from: i64) -> Result<Vec<crate::txn::index::BatchSummary>> {
    let mut out = Vec::new();
    let mut pos = if from == i64::MIN {
        0
    } else {
        seg.offset_index.lookup(from)
    };
    while pos < seg.size {
        let h = seg.read_header(pos, seg.size)?;
        let b = &h.batch;
        let attrs = b.producer.attributes;
        if b.base_offset >= from && attrs & attributes::TRANSACTIONAL != 0 {
            let marker = if attrs & attributes::CONTROL != 0 {
                let buf = segment::read_aligned(&*seg.file, &seg.path, pos, h.frame_len as usize)?;
                let marker = crate::txn::records::marker_of(&frame::decode(&buf, &h)?);
                if marker.is_none() {
                    tracing::warn!(file = %seg.path.display(), offset = b.base_offset,
                        "skipping a control batch that is not a transaction marker");
                }
                marker
            } else {
                None
            };
            // A control batch that is no marker is neither data nor an end.
            if marker.is_some() || attrs & attributes::CONTROL == 0 {
                out.push(crate::txn::index::BatchSummary {
                    base_offset: b.base_offset,
                    producer_id: b.producer.producer_id,
                    transactional: true,
                    marker,
                });
            }
        }
        pos += h.frame_len;
    }
    Ok(out)
}

/// Rebuilds producer state from frame headers at or after `from`.
fn replay_producers(
    segments: &BTreeMap<i64, Segment>,
    from: i64,
    states: &mut ProducerStates,
) -> Result<()> {
    let now = now_ms();
    for seg in segments.values().filter(|s| s.next_offset > from) {
        let mut pos = seg.offset_index.lookup(from);
        while pos < seg.size {
            let h = seg.read_header(pos, seg.size)?;
            let b = &h.batch;
            let sequenceless_epoch = b.producer.producer_id >= 0
                && b.producer.base_sequence < 0
                && b.producer.attributes & attributes::TRANSACTIONAL != 0;
            if b.base_offset >= from && sequenceless_epoch {
                // A marker or transactional offsets: only the epoch (which fences) is kept.
                states.note_epoch(
                    b.producer.producer_id,
                    b.producer.producer_epoch,
                    b.max_timestamp.min(now),
                );
            } else if b.base_offset >= from
                && b.producer.producer_id >= 0
                && b.producer.base_sequence >= 0
            {
                states.update(
                    b.producer.producer_id,
                    b.producer.producer_epoch,
                    b.producer.base_sequence,
                    b.last_offset_delta + 1,
                    (b.base_offset, b.last_offset()),
                    // As Kafka: a producer was last active when its batch was stamped (not when
                    // a restart read it back), so restarts do not keep idle producers alive.
                    b.max_timestamp.min(now),
                );
            }
            pos += h.frame_len;
        }
    }
    Ok(())
}

/// A batch as a read returns it, made from one frame.
trait ReadBatch: Sized {
    /// The batch in the frame `bytes` (whose header is `h`), read at `pos` of `view`, from
    /// `offset` on; `None` when none of its rows are left (compaction's end marker).
    fn from_frame(
        view: &SegmentView,
        pos: u64,
        bytes: &Buffer,
        h: &frame::FrameHeader,
        offset: i64,
    ) -> Result<Option<Self>>;
}

impl ReadBatch for StoredBatch {
    fn from_frame(
        view: &SegmentView,
        pos: u64,
        bytes: &Buffer,
        h: &frame::FrameHeader,
        offset: i64,
    ) -> Result<Option<Self>> {
        let known = view.is_verified(pos, h.frame_len);
        if !known && !frame::crc_matches(bytes, h) {
            return Err(BrokerError::Corrupt {
                path: view.path.clone(),
                reason: format!("CRC mismatch in batch at offset {}", h.batch.base_offset),
            });
        }
        let mut records = if known {
            frame::decode_known(bytes, h)?
        } else {
            let checked = frame::decode(bytes, h)?;
            view.note_verified(pos, h.frame_len);
            checked
        };
        if h.batch.base_offset < offset {
            let offsets = records
                .column(col::OFFSET)
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or_else(|| BrokerError::Internal("offset column type".into()))?;
            let skip = offsets.values().partition_point(|&o| o < offset);
            records = records.slice(skip, records.num_rows() - skip);
        }
        Ok((records.num_rows() > 0).then_some(StoredBatch {
            header: h.batch,
            records,
        }))
    }
}

impl ReadBatch for FetchBatch {
    fn from_frame(
        view: &SegmentView,
        pos: u64,
        bytes: &Buffer,
        h: &frame::FrameHeader,
        offset: i64,
    ) -> Result<Option<Self>> {
        // The rows go out unchecked, so only from a frame known whole; a frame's first read
        // since the log opened checks it by decoding it.
        let whole = h.batch.base_offset >= offset && h.batch.record_count > 0;
        if whole
            && view.is_verified(pos, h.frame_len)
            && let Some(rows) = frame::kafka_rows(bytes, h)?
        {
            return Ok(Some(FetchBatch::Rows {
                header: h.batch,
                rows,
            }));
        }
        Ok(StoredBatch::from_frame(view, pos, bytes, h, offset)?.map(FetchBatch::Columns))
    }
}

/// Reads frames of one segment from `pos`, skipping those that end before `offset`, into
/// `result` until `budget` runs out. Returns false when the budget stopped it.
fn read_segment<B: ReadBatch>(
    view: &SegmentView,
    mut pos: u64,
    offset: i64,
    high_watermark: i64,
    budget: &mut usize,
    result: &mut ReadResult<B>,
) -> Result<bool> {
    // Skip frames that end before the requested offset (at most one index interval of them).
    let first = loop {
        if pos >= view.end {
            return Ok(true);
        }
        let h = segment::read_header(&*view.file, &view.path, pos, view.end)?;
        if h.batch.base_offset >= high_watermark {
            return Ok(false);
        }
        if h.batch.last_offset() >= offset.max(result.next_offset) {
            break h;
        }
        pos += h.frame_len;
    };
    let want = (first.frame_len as usize)
        .max(*budget)
        .min((view.end - pos) as usize);
    let chunk = segment::read_aligned(&*view.file, &view.path, pos, want)?;
    // A partition's frames are mostly alike in size: room for as many as the chunk holds of the
    // first one's, so a read of many small batches does not grow (and copy) its list again and
    // again. A frame takes at least its 72-byte header, so the room is about the chunk's size.
    result
        .batches
        .reserve(chunk.len() / (first.frame_len as usize).max(1));
    let mut at = 0usize;
    while at + frame::HEADER_LEN <= chunk.len() {
        let h = frame::FrameHeader::parse(&chunk[at..]).map_err(|reason| BrokerError::Corrupt {
            path: view.path.clone(),
            reason,
        })?;
        let len = h.frame_len as usize;
        if h.batch.base_offset >= high_watermark {
            return Ok(false);
        }
        if at + len > chunk.len() || (!result.batches.is_empty() && len > *budget) {
            break;
        }
        let bytes = chunk.slice_with_length(at, len);
        let batch = B::from_frame(view, pos + at as u64, &bytes, &h, offset)?;
        result.next_offset = h.batch.next_offset();
        // An emptied batch (compaction's end marker) costs no budget, so a small read still
        // reaches the records after it.
        if let Some(batch) = batch {
            *budget = budget.saturating_sub(len);
            result.batches.push(batch);
        }
        at += len;
        if *budget == 0 {
            return Ok(false);
        }
    }
    Ok(pos + (at as u64) >= view.end)
}
