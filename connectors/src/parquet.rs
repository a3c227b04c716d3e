//! The Parquet sink: records to Parquet files on any object store, in Hive-style partitioned
//! directories, exactly once.
//!
//! ## Files
//! A file holds records of one Kafka partition that go to one directory (see
//! [`crate::partitioner`]), and is named by the offset of its first record:
//! `<topics.dir>/<topic>/<path>/<topic>+<partition>+<start offset>.parquet`, the offset
//! zero-padded to `filename.offset.zero.pad.width` digits, as Confluent's S3 sink names them. A
//! file is streamed to the store as it fills (a multipart upload, parts of 5 MiB) and becomes
//! visible only when it is complete. On the local filesystem a file is written under a hidden
//! name (`.<name>.inprogress`, which pyarrow, Spark, DuckDB's `*.parquet` globs and DataFusion's
//! listing all pass over), fsynced, and renamed to its name; a reader scanning the tree while
//! files are written, or after a crash, never meets a partial file. What a crash left there is
//! removed when the connector starts again. On S3 a cut-off file's parts stay as an incomplete
//! multipart upload until a bucket lifecycle rule (`AbortIncompleteMultipartUpload`) removes
//! them.
//!
//! A file rolls (is completed) when it holds `flush.size` records, when a record's event time is
//! `rotate.interval.ms` past the file's first (or the partition's event time is), when it
//! reaches `file.max.bytes`, when it has been open `rotate.schedule.interval.ms` of wall-clock
//! time (so a quiet topic's records do not wait for more), and early when the task holds more
//! than `buffer.max.bytes` in open files or more than `open.files.max` files: the largest go
//! first. A stop rolls every open file.
//!
//! ## Exactly once
//! After files roll, the runner commits each partition's offset to the connector's group: the
//! start of the partition's oldest open file (or how far it was read, with none open), with
//! metadata naming, for each directory whose last file ends past that offset, where it ends.
//! After a crash the partition is read again from the committed offset; records below their
//! directory's end are skipped, so each directory's next file starts at the record it started
//! at before the crash and gets the same name, and its upload replaces the one from before.
//! The roll triggers that do not depend on the records alone (the wall clock, memory pressure)
//! roll at most one file per directory before the next commit, so a file they rolled
//! differently before the crash is still replaced by the file with its name: no record is lost
//! or written twice, whichever trigger rolled. Only the moment a replaced file changes is
//! different: until the partition is read again after a crash, a file completed before it may
//! hold records its replacement leaves to the next file.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch, UInt32Array};
use arrow::datatypes::{Int64Type, Schema, SchemaRef, TimestampMillisecondType};
use async_trait::async_trait;
use object_store::ObjectStoreExt;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, GzipLevel, ZstdLevel};
use parquet::file::properties::WriterProperties;
use quiver_engine::format::{ROWOFFSET, ROWPARTITION, ROWTIME};

use crate::config::{ConnectorConfig, Key};
use crate::error::{ConnectError, Result};
use crate::partitioner::Partitioner;
use crate::sink::{Commit, Committed, Sink};
use crate::store::Location;

pub const TOPICS_DIR: Key = Key {
    name: "topics.dir",
    default: Some("topics"),
    doc: "the directory under store.url that holds one directory per topic",
};
pub const FLUSH_SIZE: Key = Key {
    name: "flush.size",
    default: Some("100000"),
    doc: "records per file: a file rolls when it holds this many",
};
pub const FILE_MAX_BYTES: Key = Key {
    name: "file.max.bytes",
    default: None,
    doc: "a file rolls once it has written about this many (compressed) bytes",
};
pub const ROTATE_INTERVAL: Key = Key {
    name: "rotate.interval.ms",
    default: None,
    doc: "event time a file spans at most: a file rolls when a record (or its partition) is this \
          far past its first record",
};
pub const ROTATE_SCHEDULE: Key = Key {
    name: "rotate.schedule.interval.ms",
    default: None,
    doc: "wall-clock time a file stays open at most, also when no record arrives",
};
pub const CODEC: Key = Key {
    name: "parquet.codec",
    default: Some("snappy"),
    doc: "snappy, zstd, lz4, gzip or none",
};
pub const ROW_GROUP_ROWS: Key = Key {
    name: "parquet.row.group.rows",
    default: Some("1048576"),
    doc: "rows per Parquet row group at most",
};
pub const ROW_GROUP_BYTES: Key = Key {
    name: "parquet.row.group.bytes",
    default: Some("67108864"),
    doc: "bytes per Parquet row group at most (before compression)",
};
pub const ZERO_PAD: Key = Key {
    name: "filename.offset.zero.pad.width",
    default: Some("10"),
    doc: "digits of the start offset in file names, zero-padded",
};
pub const MAX_OPEN_FILES: Key = Key {
    name: "open.files.max",
    default: Some("1000"),
    doc: "open files per task at most; past it the largest roll early",
};
pub const MAX_BUFFERED: Key = Key {
    name: "buffer.max.bytes",
    default: Some("268435456"),
    doc: "bytes held in open files per task at most; past it the largest roll early",
};
pub const FORMAT_CLASS: Key = Key {
    name: "format.class",
    default: Some("parquet"),
    doc: "the file format: parquet (Confluent's ParquetFormat class name works too)",
};
pub const STORAGE_CLASS: Key = Key {
    name: "storage.class",
    default: None,
    doc: "accepted for Confluent configs (S3Storage); store.url picks the store",
};

/// The keys of [`ParquetSinkConfig::from_config`] (the store's are in [`crate::store::KEYS`]).
pub const KEYS: &[Key] = &[
    TOPICS_DIR,
    FLUSH_SIZE,
    FILE_MAX_BYTES,
    ROTATE_INTERVAL,
    ROTATE_SCHEDULE,
    CODEC,
    ROW_GROUP_ROWS,
    ROW_GROUP_BYTES,
    ZERO_PAD,
    MAX_OPEN_FILES,
    MAX_BUFFERED,
    FORMAT_CLASS,
    STORAGE_CLASS,
];

/// Bytes a file buffers before its upload starts, and the size of each uploaded part (S3's
/// smallest).
const PART_BYTES: usize = 5 << 20;

/// The metadata prefix of a committed offset that carries directory ends.
const METADATA_PREFIX: &str = "quiver.parquet.v1 ";

/// Longest metadata committed with an offset (Kafka's `offset.metadata.max.bytes` is 4096);
/// past it the partition's open files roll, which empties the metadata.
const METADATA_MAX: usize = 3000;

/// The Parquet sink's settings.
#[derive(Debug, Clone)]
pub struct ParquetSinkConfig {
    pub location: Location,
    pub topics_dir: String,
    pub partitioner: Partitioner,
    pub flush_size: Option<u64>,
    pub file_max_bytes: Option<u64>,
    pub rotate_interval_ms: Option<i64>,
    pub rotate_schedule: Option<Duration>,
    pub properties: WriterProperties,
    pub zero_pad: usize,
    pub max_open_files: usize,
    pub max_buffered_bytes: u64,
}

impl ParquetSinkConfig {
    /// The sink's settings from a connector config (its store is not contacted yet).
    pub fn from_config(config: &ConnectorConfig) -> Result<ParquetSinkConfig> {
        let location = Location::from_config(config)?;
        let partitioner = Partitioner::from_config(config)?;
        let format = config.value(&FORMAT_CLASS).unwrap_or("parquet");
        if !format.to_ascii_lowercase().ends_with("parquet")
            && !format.to_ascii_lowercase().ends_with("parquetformat")
        {
            return Err(config.invalid(
                FORMAT_CLASS.name,
                format,
                "this sink writes Parquet only (parquet, or Confluent's ParquetFormat)",
            ));
        }
        let codec = match config
            .choice(
                &CODEC,
                &["snappy", "zstd", "lz4", "gzip", "none", "uncompressed"],
            )?
            .as_deref()
        {
            Some("zstd") => Compression::ZSTD(ZstdLevel::default()),
            Some("lz4") => Compression::LZ4_RAW,
            Some("gzip") => Compression::GZIP(GzipLevel::default()),
            Some("none") | Some("uncompressed") => Compression::UNCOMPRESSED,
            _ => Compression::SNAPPY,
        };
        let rows = config.positive(&ROW_GROUP_ROWS)?.unwrap_or(1 << 20);
        let bytes = config.positive(&ROW_GROUP_BYTES)?.unwrap_or(64 << 20);
        let properties = WriterProperties::builder()
            .set_compression(codec)
            .set_max_row_group_row_count(Some(usize::try_from(rows).unwrap_or(usize::MAX)))
            .set_max_row_group_bytes(Some(usize::try_from(bytes).unwrap_or(usize::MAX)))
            .set_created_by(format!("quiver {}", env!("CARGO_PKG_VERSION")))
            .build();
        let rotate_interval_ms = config
            .positive(&ROTATE_INTERVAL)?
            .map(|ms| i64::try_from(ms).unwrap_or(i64::MAX));
        let flush_size = config.positive(&FLUSH_SIZE)?;
        let topics_dir = config
            .value(&TOPICS_DIR)
            .unwrap_or("topics")
            .trim_matches('/')
            .to_owned();
        let zero_pad = config.u64(&ZERO_PAD)?.unwrap_or(10).min(19) as usize;
        Ok(ParquetSinkConfig {
            location,
            topics_dir,
            partitioner,
            flush_size,
            file_max_bytes: config.positive(&FILE_MAX_BYTES)?,
            rotate_interval_ms,
            rotate_schedule: config.millis(&ROTATE_SCHEDULE)?,
            properties,
            zero_pad,
            max_open_files: config.positive(&MAX_OPEN_FILES)?.unwrap_or(1000).max(1) as usize,
            max_buffered_bytes: config.positive(&MAX_BUFFERED)?.unwrap_or(256 << 20),
        })
    }
}

/// Counters of a sink, shared with status output.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub records: AtomicU64,
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    pub open_files: AtomicU64,
}

/// The Parquet sink of one task (see the module docs).
#[derive(Debug)]
pub struct ParquetSink {
    config: ParquetSinkConfig,
    stats: Arc<SinkStats>,
    topics: HashMap<String, TopicOut>,
    files: HashMap<FileKey, OpenFile>,
    partitions: BTreeMap<(String, i32), PartitionState>,
    /// Partitions whose position to commit may have moved since the last prepare.
    changed: BTreeSet<(String, i32)>,
}

/// One topic's batches and the files' schema.
#[derive(Debug)]
struct TopicOut {
    keep: Vec<usize>,
    schema: SchemaRef,
    offset: usize,
    time: usize,
    partition: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct FileKey {
    topic: String,
    partition: i32,
    path: String,
}

struct OpenFile {
    object: Path,
    /// Where it is written until it is complete, when that is not `object` (local disk).
    staged: Option<Path>,
    start: i64,
    /// One past the offset of its last record.
    next: i64,
    records: u64,
    first_time: i64,
    opened: Instant,
    writer: AsyncArrowWriter<BufWriter>,
}

impl std::fmt::Debug for OpenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenFile")
            .field("object", &self.object)
            .field("start", &self.start)
            .field("records", &self.records)
            .finish()
    }
}

impl OpenFile {
    /// Bytes held in memory for it: the row group being built, and what waits for upload.
    fn buffered(&self) -> u64 {
        (self.writer.memory_size() + self.writer.bytes_written().min(PART_BYTES)) as u64
    }
}

#[derive(Debug, Default)]
struct PartitionState {
    /// The next offset to read.
    position: Option<i64>,
    /// Per directory, one past the last record of its last completed file.
    done: BTreeMap<String, i64>,
    /// One past the last offset written (every record below it is in a file).
    written: Option<i64>,
    /// The largest event time seen.
    max_time: Option<i64>,
    /// What was committed last (offset, metadata).
    last: Option<(i64, String)>,
}

impl ParquetSink {
    pub fn new(config: ParquetSinkConfig) -> ParquetSink {
        ParquetSink {
            config,
            stats: Arc::default(),
            topics: HashMap::new(),
            files: HashMap::new(),
            partitions: BTreeMap::new(),
            changed: BTreeSet::new(),
        }
    }

    /// Counts into `stats` (a task's counters across the sinks it opens in turn).
    pub fn with_stats(mut self, stats: Arc<SinkStats>) -> ParquetSink {
        self.stats = stats;
        self
    }

    /// Counters shared with status output.
    pub fn stats(&self) -> Arc<SinkStats> {
        self.stats.clone()
    }

    fn object(&self, key: &FileKey, start: i64) -> Path {
        let name = format!(
            "{}+{}+{:0width$}.parquet",
            key.topic,
            key.partition,
            start,
            width = self.config.zero_pad
        );
        let mut rel = String::new();
        if !self.config.topics_dir.is_empty() {
            rel.push_str(&self.config.topics_dir);
            rel.push('/');
        }
        rel.push_str(&key.topic);
        rel.push('/');
        rel.push_str(&key.path);
        rel.push('/');
        rel.push_str(&name);
        self.config.location.child(&rel)
    }

    /// Appends `rows` (one partition's rows for one directory, in offset order) to the
    /// directory's files, rolling them on the per-record triggers.
    async fn append(&mut self, key: &FileKey, mut rows: RecordBatch) -> Result<()> {
        let Some(out) = self.topics.get(&key.topic) else {
            return Err(ConnectError::Record(format!(
                "records of '{}', which the sink was not opened for",
                key.topic
            )));
        };
        let (offset_col, time_col) = (out.offset, out.time);
        let keep = out.keep.clone();
        let schema = out.schema.clone();
        while rows.num_rows() > 0 {
            let offsets = rows.column(offset_col).as_primitive::<Int64Type>().clone();
            let times = rows
                .column(time_col)
                .as_primitive::<TimestampMillisecondType>()
                .clone();
            if !self.files.contains_key(key) {
                let start = offsets.value(0);
                let object = self.object(key, start);
                let staged = self
                    .config
                    .location
                    .local_root
                    .as_ref()
                    .map(|_| staging_name(&object));
                let upload = BufWriter::with_capacity(
                    self.config.location.store.clone(),
                    staged.clone().unwrap_or_else(|| object.clone()),
                    PART_BYTES,
                )
                .with_max_concurrency(2);
                let writer = AsyncArrowWriter::try_new(
                    upload,
                    schema.clone(),
                    Some(self.config.properties.clone()),
                )?;
                self.files.insert(
                    key.clone(),
                    OpenFile {
                        object,
                        staged,
                        start,
                        next: start,
                        records: 0,
                        first_time: times.value(0),
                        opened: Instant::now(),
                        writer,
                    },
                );
                self.stats.open_files.fetch_add(1, Ordering::Relaxed);
            }
            let Some(file) = self.files.get_mut(key) else {
                return Err(ConnectError::Record("an open file went missing".into()));
            };
            let mut n = rows.num_rows();
            if let Some(size) = self.config.flush_size {
                n = n.min(size.saturating_sub(file.records) as usize);
            }
            if let Some(interval) = self.config.rotate_interval_ms {
                let end = file.first_time.saturating_add(interval);
                if let Some(i) = (0..n).find(|&i| times.value(i) >= end) {
                    n = i;
                }
            }
            if n == 0 {
                self.roll(key).await?;
                continue;
            }
            let part = rows.slice(0, n);
            file.writer.write(&part.project(&keep)?).await?;
            file.records += n as u64;
            file.next = offsets.value(n - 1) + 1;
            self.stats.records.fetch_add(n as u64, Ordering::Relaxed);
            let full = self
                .config
                .flush_size
                .is_some_and(|size| file.records >= size);
            rows = rows.slice(n, rows.num_rows() - n);
            if full {
                self.roll(key).await?;
            }
        }
        Ok(())
    }

    /// Completes a file: its upload finishes (and on local disk it is fsynced), and its
    /// directory's end moves past it.
    async fn roll(&mut self, key: &FileKey) -> Result<()> {
        let Some(file) = self.files.remove(key) else {
            return Ok(());
        };
        self.stats.open_files.fetch_sub(1, Ordering::Relaxed);
        let object = file.object.clone();
        file.writer.close().await.map_err(|e| {
            ConnectError::Store(format!(
                "cannot complete {} in {}: {e}",
                object, self.config.location.describe
            ))
        })?;
        if let (Some(root), Some(staged)) = (&self.config.location.local_root, &file.staged) {
            publish(root.clone(), staged.to_string(), object.to_string()).await?;
        }
        let written = self
            .config
            .location
            .store
            .head(&object)
            .await
            .map(|m| m.size)
            .unwrap_or(0);
        self.stats.bytes.fetch_add(written, Ordering::Relaxed);
        self.stats.files.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(file = %object, records = file.records, "file committed to the store");
        let state = self
            .partitions
            .entry((key.topic.clone(), key.partition))
            .or_default();
        state.done.insert(key.path.clone(), file.next);
        self.changed.insert((key.topic.clone(), key.partition));
        Ok(())
    }

    /// The triggers checked once per write: bytes per file, time past the partition's event
    /// time, and the task's limits on open files and buffered bytes.
    async fn roll_after_write(&mut self, topic: &str, partition: i32) -> Result<()> {
        let max_time = self
            .partitions
            .get(&(topic.to_owned(), partition))
            .and_then(|s| s.max_time);
        let mut due = vec![];
        for (key, file) in &self.files {
            if key.topic != topic || key.partition != partition {
                continue;
            }
            let too_big = self.config.file_max_bytes.is_some_and(|max| {
                (file.writer.bytes_written() + file.writer.in_progress_size()) as u64 >= max
            });
            let too_old = match (self.config.rotate_interval_ms, max_time) {
                (Some(interval), Some(t)) => t >= file.first_time.saturating_add(interval),
                _ => false,
            };
            if too_big || too_old {
                due.push(key.clone());
            }
        }
        for key in due {
            self.roll(&key).await?;
        }
        self.enforce_limits().await
    }

    /// Rolls the largest open files while the task holds too many or too many bytes.
    async fn enforce_limits(&mut self) -> Result<()> {
        loop {
            let buffered: u64 = self.files.values().map(OpenFile::buffered).sum();
            if self.files.len() <= self.config.max_open_files
                && buffered <= self.config.max_buffered_bytes
            {
                return Ok(());
            }
            let Some(largest) = self
                .files
                .iter()
                .max_by_key(|(_, f)| f.buffered())
                .map(|(k, _)| k.clone())
            else {
                return Ok(());
            };
            self.roll(&largest).await?;
        }
    }

    /// The position to commit for a partition now, and its metadata.
    fn position(
        &self,
        topic: &str,
        partition: i32,
        state: &PartitionState,
    ) -> Option<(i64, String)> {
        let oldest_open = self
            .files
            .iter()
            .filter(|(k, _)| k.topic == topic && k.partition == partition)
            .map(|(_, f)| f.start)
            .min();
        let offset = oldest_open.or(state.position.max(state.written))?;
        let ends: BTreeMap<&str, i64> = state
            .done
            .iter()
            .filter(|(_, end)| **end > offset)
            .map(|(p, e)| (p.as_str(), *e))
            .collect();
        let metadata = if ends.is_empty() {
            String::new()
        } else {
            format!(
                "{METADATA_PREFIX}{}",
                serde_json::to_string(&ends).unwrap_or_default()
            )
        };
        Some((offset, metadata))
    }
}

#[async_trait]
impl Sink for ParquetSink {
    fn describe(&self) -> String {
        format!("parquet to {}", self.config.location.describe)
    }

    async fn open(
        &mut self,
        topics: &[(String, SchemaRef)],
        owned: &[(String, i32)],
        committed: &BTreeMap<(String, i32), Committed>,
    ) -> Result<()> {
        self.config.location.check().await?;
        for (topic, schema) in topics {
            self.config.partitioner.check(schema, topic)?;
            let index = |name: &str| {
                schema.index_of(name).map_err(|_| {
                    ConnectError::config(format!(
                        "records of '{topic}' have no {name} column: the sink needs the record \
                         offsets, partitions and times"
                    ))
                })
            };
            let (offset, time, partition) =
                (index(ROWOFFSET)?, index(ROWTIME)?, index(ROWPARTITION)?);
            let dropped = self.config.partitioner.path_columns();
            let keep: Vec<usize> = (0..schema.fields().len())
                .filter(|i| !dropped.contains(schema.field(*i).name()))
                .collect();
            let files_schema = Arc::new(Schema::new(
                keep.iter()
                    .map(|i| schema.field(*i).clone())
                    .collect::<Vec<_>>(),
            ));
            self.topics.insert(
                topic.clone(),
                TopicOut {
                    keep,
                    schema: files_schema,
                    offset,
                    time,
                    partition,
                },
            );
            if let Some(root) = &self.config.location.local_root {
                let dir = root
                    .join(self.config.location.prefix.as_ref())
                    .join(&self.config.topics_dir)
                    .join(topic);
                let mine: BTreeSet<i32> = owned
                    .iter()
                    .filter(|(t, _)| t == topic)
                    .map(|(_, p)| *p)
                    .collect();
                remove_partial_uploads(dir, topic.clone(), mine).await;
            }
        }
        for ((topic, partition), c) in committed {
            let done = match c.metadata.strip_prefix(METADATA_PREFIX) {
                Some(json) => serde_json::from_str::<BTreeMap<String, i64>>(json).map_err(|e| {
                    ConnectError::config(format!(
                        "the offset committed for {topic}-{partition} carries metadata this \
                         sink cannot read ({e}); was the connector's group used by something \
                         else?"
                    ))
                })?,
                None => BTreeMap::new(),
            };
            self.partitions.insert(
                (topic.clone(), *partition),
                PartitionState {
                    position: Some(c.offset),
                    done,
                    written: None,
                    max_time: None,
                    last: Some((c.offset, c.metadata.clone())),
                },
            );
        }
        Ok(())
    }

    async fn write(&mut self, topic: &str, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let Some(out) = self.topics.get(topic) else {
            return Err(ConnectError::Record(format!(
                "records of '{topic}', which the sink was not opened for"
            )));
        };
        let partition = batch
            .column(out.partition)
            .as_primitive::<arrow::datatypes::Int32Type>()
            .value(0);
        let (offset_col, time_col) = (out.offset, out.time);
        let times = batch
            .column(time_col)
            .as_primitive::<TimestampMillisecondType>();
        let batch_max = arrow::compute::max(times);
        let state = self
            .partitions
            .entry((topic.to_owned(), partition))
            .or_default();
        state.max_time = state.max_time.max(batch_max);
        let offsets = batch.column(offset_col).as_primitive::<Int64Type>();
        state.written = state
            .written
            .max(Some(offsets.value(offsets.len() - 1) + 1));
        self.changed.insert((topic.to_owned(), partition));
        let paths = self.config.partitioner.paths(partition, &batch)?;
        let mut groups: Vec<(String, RecordBatch)> = Vec::with_capacity(paths.paths.len());
        if paths.paths.len() == 1 {
            groups.push((paths.paths[0].clone(), batch));
        } else {
            let mut indices: Vec<Vec<u32>> = vec![vec![]; paths.paths.len()];
            for (row, path) in paths.rows.iter().enumerate() {
                indices[*path as usize].push(row as u32);
            }
            for (path, rows) in paths.paths.into_iter().zip(indices) {
                let rows = UInt32Array::from(rows);
                let columns = batch
                    .columns()
                    .iter()
                    .map(|c| arrow::compute::take(c, &rows, None))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                groups.push((path, RecordBatch::try_new(batch.schema(), columns)?));
            }
        }
        for (path, rows) in groups {
            // After a restart: skip what the directory's completed files already hold.
            let end = self
                .partitions
                .get(&(topic.to_owned(), partition))
                .and_then(|s| s.done.get(&path).copied());
            let rows = match end {
                Some(end) => {
                    let offsets = rows.column(offset_col).as_primitive::<Int64Type>();
                    let skip = offsets.values().partition_point(|o| *o < end);
                    rows.slice(skip, rows.num_rows() - skip)
                }
                None => rows,
            };
            if rows.num_rows() == 0 {
                continue;
            }
            let key = FileKey {
                topic: topic.to_owned(),
                partition,
                path,
            };
            self.append(&key, rows).await?;
        }
        self.roll_after_write(topic, partition).await
    }

    fn read_up_to(&mut self, topic: &str, partition: i32, next: i64) {
        // Called for every partition after every poll: no allocation unless it moved.
        let key = (topic.to_owned(), partition);
        if let Some(state) = self.partitions.get_mut(&key) {
            if state.position.is_some_and(|p| p >= next) {
                return;
            }
            state.position = Some(next);
        } else {
            self.partitions.insert(
                key.clone(),
                PartitionState {
                    position: Some(next),
                    ..PartitionState::default()
                },
            );
        }
        self.changed.insert(key);
    }

    async fn tick(&mut self) -> Result<()> {
        let Some(schedule) = self.config.rotate_schedule else {
            return Ok(());
        };
        let due: Vec<FileKey> = self
            .files
            .iter()
            .filter(|(_, f)| f.opened.elapsed() >= schedule)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            self.roll(&key).await?;
        }
        Ok(())
    }

    async fn prepare(&mut self) -> Result<Vec<Commit>> {
        let mut out = vec![];
        let changed = std::mem::take(&mut self.changed);
        for (topic, partition) in changed {
            let Some(state) = self.partitions.get(&(topic.clone(), partition)) else {
                continue;
            };
            let Some(mut now) = self.position(&topic, partition, state) else {
                continue;
            };
            if now.1.len() > METADATA_MAX {
                // Too many directories end past the oldest open file: roll the partition's
                // open files, after which no end is past the committed offset.
                let open: Vec<FileKey> = self
                    .files
                    .keys()
                    .filter(|k| k.topic == topic && k.partition == partition)
                    .cloned()
                    .collect();
                for key in open {
                    self.roll(&key).await?;
                }
                let Some(state) = self.partitions.get(&(topic.clone(), partition)) else {
                    continue;
                };
                let Some(again) = self.position(&topic, partition, state) else {
                    continue;
                };
                now = again;
            }
            let Some(state) = self.partitions.get_mut(&(topic.clone(), partition)) else {
                continue;
            };
            let (offset, metadata) = now;
            state.done.retain(|_, end| *end > offset);
            if state.last.as_ref() != Some(&(offset, metadata.clone())) {
                out.push(Commit {
                    topic,
                    partition,
                    offset,
                    metadata,
                });
            }
        }
        Ok(out)
    }

    fn committed(&mut self, commits: &[Commit]) {
        for c in commits {
            if let Some(state) = self.partitions.get_mut(&(c.topic.clone(), c.partition)) {
                state.last = Some((c.offset, c.metadata.clone()));
            }
        }
    }

    async fn close(&mut self) -> Result<Vec<Commit>> {
        let open: Vec<FileKey> = self.files.keys().cloned().collect();
        for key in open {
            self.roll(&key).await?;
        }
        self.prepare().await
    }
}

/// Where a local file is written until it is complete: beside it, under a hidden name that
/// does not end in `.parquet`.
fn staging_name(object: &Path) -> Path {
    let mut parts: Vec<_> = object.parts().collect();
    let name = parts
        .pop()
        .map(|p| p.as_ref().to_owned())
        .unwrap_or_default();
    Path::from_iter(parts).join(format!(".{name}{STAGING_SUFFIX}").as_str())
}

const STAGING_SUFFIX: &str = ".inprogress";

/// Makes a completed local file durable and visible: the staged file is fsynced, renamed to
/// its name, and its directories up to the root are fsynced.
async fn publish(root: std::path::PathBuf, staged: String, object: String) -> Result<()> {
    let name = object.clone();
    let done = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let from = root.join(&staged);
        std::fs::File::open(&from)?.sync_all()?;
        let file = root.join(&name);
        std::fs::rename(&from, &file)?;
        let mut dir = file.parent();
        while let Some(d) = dir {
            std::fs::File::open(d)?.sync_all()?;
            if d == root {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    })
    .await
    .map_err(|e| ConnectError::Store(format!("an fsync task failed: {e}")))?;
    done.map_err(|e| ConnectError::Store(format!("cannot complete {object}: {e}")))
}

/// Removes what a crash left of local uploads: staged files (`.<name>.inprogress`, and
/// object_store's `.<name>.inprogress#<n>` while one was being written), and the `<name>#<n>`
/// that versions before staging left where readers look.
async fn remove_partial_uploads(dir: std::path::PathBuf, topic: String, partitions: BTreeSet<i32>) {
    let _ = tokio::task::spawn_blocking(move || {
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let path = e.path();
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(path);
                } else if path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| partial_upload_partition(n, &topic))
                    .is_some_and(|p| partitions.contains(&p))
                    && let Err(err) = std::fs::remove_file(&path)
                {
                    tracing::warn!(file = %path.display(), "cannot remove a partial upload: {err}");
                }
            }
        }
    })
    .await;
}

/// The partition of a partial upload of one of `topic`'s files
/// (`.<topic>+<partition>+<offset>.parquet.inprogress`, with or without `#<n>`, or
/// `<topic>+<partition>+<offset>.parquet#<n>`), if `name` is one.
fn partial_upload_partition(name: &str, topic: &str) -> Option<i32> {
    let file = match name.strip_prefix('.') {
        Some(hidden) => {
            let (file, rest) = hidden.split_once(".parquet")?;
            let rest = rest.strip_prefix(STAGING_SUFFIX)?;
            if !(rest.is_empty() || rest.starts_with('#')) {
                return None;
            }
            file
        }
        None => name.split_once(".parquet#")?.0,
    };
    let rest = file.strip_prefix(topic)?.strip_prefix('+')?;
    let (partition, offset) = rest.split_once('+')?;
    offset.parse::<i64>().ok()?;
    partition.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::partial_upload_partition;
    use object_store::path::Path;

    #[test]
    fn partial_uploads_are_told_apart_by_topic_and_partition() {
        assert_eq!(
            partial_upload_partition("orders+2+00000000000000000150.parquet#3", "orders"),
            Some(2)
        );
        // Another topic whose name starts the same, a complete file, and strangers.
        assert_eq!(
            partial_upload_partition("orders2+2+0000.parquet#3", "orders"),
            None
        );
        assert_eq!(
            partial_upload_partition("orders+2+0000.parquet", "orders"),
            None
        );
        assert_eq!(
            partial_upload_partition("orders+x+0000.parquet#1", "orders"),
            None
        );
        assert_eq!(partial_upload_partition("notes.txt", "orders"), None);
        // Staged files, being written or complete but not yet renamed.
        assert_eq!(
            partial_upload_partition(".orders+7+0000.parquet.inprogress#12", "orders"),
            Some(7)
        );
        assert_eq!(
            partial_upload_partition(".orders+7+0000.parquet.inprogress", "orders"),
            Some(7)
        );
        assert_eq!(
            partial_upload_partition(".orders+7+0000.parquet.other", "orders"),
            None
        );
        assert_eq!(
            partial_upload_partition(".orders2+7+0000.parquet.inprogress", "orders"),
            None
        );
    }

    #[test]
    fn a_local_file_is_staged_beside_it_under_a_hidden_name() {
        assert_eq!(
            super::staging_name(&Path::from("lake/topics/o/partition=1/o+1+0005.parquet")).as_ref(),
            "lake/topics/o/partition=1/.o+1+0005.parquet.inprogress"
        );
        assert_eq!(
            super::staging_name(&Path::from("o+1+0005.parquet")).as_ref(),
            ".o+1+0005.parquet.inprogress"
        );
    }
}
