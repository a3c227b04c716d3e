//! Partition log benchmarks: append and read throughput next to raw file I/O baselines, and group
//! commit under fsync-per-append.
//!
//! Ids are `<group>/<function>/<value size>_x<records per batch>`:
//! - `append`: `log` is `Log::append_unflushed` (no fsync); `raw_frame` writes a buffer as large as
//!   the frame the log stores for that batch, `raw_payload` one as large as the values, with
//!   `File::write_all` and no fsync. `log_acks_all` appends through the write buffer as Produce
//!   does (`Log::append_buffered`), never answered; `log_acks_1` the same with an acks=1 answer
//!   (`Log::acknowledge`, which writes the buffer) after each append, and
//!   `log_acks_1_pipelined_8` after every eight appends.
//! - `append_fsync`: the same with fsync per append: `log` is `Log::append` with
//!   `flush.messages=1`; the raw baselines call `sync_data` after each write.
//! - `produce`: what Produce does with a producer's uncompressed Kafka batch, from its bytes to
//!   its append through the write buffer (never answered): `from_wire` as Produce does it (a
//!   batch of a few records is checked in place and stored as sent, a larger one decoded into
//!   columns), `from_wire_via_columns` with the small batch decoded into columns too, as before.
//!   One record a batch against 1,000: the per-record cost of a producer that does not batch.
//! - `read`: `log` reads a pre-filled log from offset 0 to its end in 1 MiB chunks; `raw_pread`
//!   reads as many bytes from a file with `read_exact_at`.
//! - `group_commit`: `appenders_1` and `appenders_64` tasks append 1-record batches with fsync per
//!   append to one log; one iteration is one append, so the throughput is appends per second.
//! - `compression`: appends of 1,000 JSON events (about 110 bytes each) to topics whose
//!   `compression.type` is `none`, `lz4`, `zstd` or `gzip`, no fsync: the CPU cost of
//!   compression at rest. Each case notes the bytes it stores per record and what the
//!   producer's own batch compressed with that codec weighs (Kafka stores that as sent);
//!   `read_<codec>` reads one such batch back (decompressed and decoded to Arrow).
//!
//! Every append case also notes the bytes of the same records as one Kafka batch on the wire, so
//! the script can print stored bytes against wire bytes (small batches are stored compactly).
//!
//! Byte throughput counts value bytes only, so `log` and `raw_*` of one case are comparable and
//! their time ratio is the log's overhead. `scripts/bench-log` runs this and prints the ratios.
//!
//! Files live in fresh directories under `$QUIVER_BENCH_DIR` (default `/var/tmp`), which should be
//! a real disk: fsync cost is the point. Every sample starts from an empty directory that is
//! deleted afterwards, so nothing grows past one sample's writes. Fsync figures are the device's
//! as much as the log's: on cloud disks with burst credits they change within one run, so compare
//! `log` with its `raw_*` neighbours, which run right after it.

use std::cell::OnceCell;
use std::fs::File;
use std::hint::black_box;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::Int64Array;
use arrow::record_batch::RecordBatch;
use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use futures::FutureExt;
use quiver_broker::kafka::records::{self as kafka_records, DecodeScratch};
use quiver_broker::log::{BatchHeader, PreparedBatch};
use quiver_broker::{Ack, EnvelopeBuilder, Log, LogConfig, ProducerInfo, now_ms};
use tempfile::TempDir;
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

/// Value sizes under test, with the label used in bench ids.
const VALUE_SIZES: [(usize, &str); 2] = [(100, "100B"), (1024, "1KiB")];
/// Records per appended batch: one per produce request, or a producer's full batch.
const BATCH_RECORDS: [usize; 2] = [1, 1000];
/// `segment.bytes` for every log here: large enough that samples seldom roll.
const SEGMENT_BYTES: u64 = 1 << 30;
/// Value bytes in each pre-filled log of the read group.
const READ_LOG_VALUE_BYTES: usize = 32 << 20;
/// Records per batch in the pre-filled logs.
const READ_BATCH_RECORDS: usize = 1000;
/// `max_bytes` of each read, as a consumer's fetch would ask for.
const READ_MAX_BYTES: usize = 1 << 20;
/// Concurrent appenders in the group commit case.
const GROUP_COMMIT_APPENDERS: usize = 64;
/// Value size of the group commit case.
const GROUP_COMMIT_VALUE: (usize, &str) = (100, "100B");

/// Where benchmark files go: `$QUIVER_BENCH_DIR`, else `/var/tmp` (disk-backed, unlike `/tmp` on
/// some systems and `/dev/shm` everywhere).
fn bench_root() -> PathBuf {
    std::env::var_os("QUIVER_BENCH_DIR").map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from)
}

/// A fresh directory, removed when dropped.
fn scratch_dir() -> TempDir {
    let root = bench_root();
    tempfile::Builder::new()
        .prefix("quiver-bench-")
        .tempdir_in(&root)
        .unwrap_or_else(|e| {
            panic!(
                "cannot create a directory in {}: {e}; set QUIVER_BENCH_DIR",
                root.display()
            )
        })
}

/// Deterministic incompressible bytes (xorshift64), so no layer below can shortcut zeros.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// An envelope batch of `records` rows, each with no key, no headers and a `value_size` value.
fn envelope_batch(records: usize, value_size: usize) -> RecordBatch {
    let mut builder = EnvelopeBuilder::with_capacity(records, records * value_size);
    let ts = now_ms();
    for i in 0..records {
        builder.append(ts, None, Some(&noise(value_size, i as u64)), &[]);
    }
    builder.finish()
}

fn open_log(dir: &Path, flush_messages: Option<u64>) -> Log {
    open_log_compressed(dir, flush_messages, "producer")
}

fn open_log_compressed(dir: &Path, flush_messages: Option<u64>, compression: &str) -> Log {
    let mut config = LogConfig {
        segment_bytes: SEGMENT_BYTES,
        retention_ms: None,
        flush_messages,
        ..LogConfig::default()
    };
    config
        .set("compression.type", compression)
        .unwrap_or_else(|e| panic!("{e}"));
    Log::open(dir, "bench", 0, Arc::new(config))
        .unwrap_or_else(|e| panic!("open log in {}: {e}", dir.display()))
}

/// Bytes of `batch` as one Kafka batch on the wire, its records compressed with `codec`.
fn kafka_wire_len(batch: &RecordBatch, codec: i16) -> usize {
    let n = batch.num_rows() as i32;
    let header = BatchHeader {
        base_offset: 0,
        last_offset_delta: n - 1,
        record_count: n,
        first_timestamp: 0,
        max_timestamp: 0,
        producer: ProducerInfo::NONE,
    };
    let mut out = Vec::new();
    kafka_records::encode_batch_compressed(&mut out, &header, batch, codec)
        .expect("encode a Kafka batch");
    out.len()
}

/// Bytes the log stores for one append of `batch` (frame header plus Arrow IPC message).
fn stored_frame_len(batch: &RecordBatch) -> usize {
    let dir = scratch_dir();
    let log = open_log(dir.path(), None);
    log.append_unflushed(batch, ProducerInfo::NONE)
        .expect("append to a fresh log");
    log.offsets().size_bytes as usize
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// How a case's appends are made and answered, as Produce makes them.
#[derive(Clone, Copy)]
enum Answer {
    /// Written at once (`Log::append_unflushed`), the baseline for the buffered cases.
    AtOnce,
    /// Through the write buffer and never answered within the sample: acks=all, its fsync
    /// rounds aside (small batches are written when the buffer fills).
    Round,
    /// Through the write buffer, with an acks=0/1 answer (`Log::acknowledge`, which writes the
    /// buffer) after every `n` appends: a connection that appends `n` pipelined requests
    /// before answering them.
    Every(u64),
}

/// Times `iters` appends of `batch` to a fresh log, without fsync, made and answered as `how`
/// says.
fn log_append_unflushed(iters: u64, batch: &RecordBatch, how: Answer) -> Duration {
    let dir = scratch_dir();
    let log = open_log(dir.path(), None);
    let start = Instant::now();
    for i in 1..=iters {
        let info = match how {
            Answer::AtOnce => log.append_unflushed(batch, ProducerInfo::NONE),
            Answer::Round | Answer::Every(_) => log.append_buffered(batch, ProducerInfo::NONE),
        }
        .expect("append");
        if let Answer::Every(n) = how
            && (i % n == 0 || i == iters)
        {
            // An acks=0/1 answer only writes: it never waits.
            log.acknowledge(info.last_offset + 1, Ack::Written)
                .now_or_never()
                .expect("an acks=1 answer does not wait")
                .expect("write");
        }
        black_box(info);
    }
    start.elapsed()
}

/// Times `iters` appends of `batch` to a fresh log that fsyncs every append.
fn log_append_fsync(rt: &Runtime, iters: u64, batch: &RecordBatch) -> Duration {
    let dir = scratch_dir();
    let log = open_log(dir.path(), Some(1));
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            black_box(
                log.append(batch, ProducerInfo::NONE, Ack::Written)
                    .await
                    .expect("append"),
            );
        }
        start.elapsed()
    })
}

/// Times `iters` sequential writes of `buf` to a fresh file, with `sync_data` after each if `fsync`.
fn raw_write(iters: u64, buf: &[u8], fsync: bool) -> Duration {
    let dir = scratch_dir();
    let path = dir.path().join("raw");
    let mut file =
        File::create_new(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let start = Instant::now();
    for _ in 0..iters {
        file.write_all(buf).expect("write");
        if fsync {
            file.sync_data().expect("sync_data");
        }
    }
    start.elapsed()
}

/// One log case and its two raw baselines, in `group`, under the id `<value>_x<records>`.
fn append_cases(
    group: &mut BenchmarkGroup<'_, WallTime>,
    mut log_case: impl FnMut(u64, &RecordBatch) -> Duration,
    fsync: bool,
) {
    for (value_size, label) in VALUE_SIZES {
        for records in BATCH_RECORDS {
            let batch = envelope_batch(records, value_size);
            let frame = noise(stored_frame_len(&batch), 1);
            let payload = noise(records * value_size, 2);
            let id = format!("{label}_x{records}");
            // scripts/bench-log reads this line for its table.
            eprintln!(
                "note: append case {id} stores {} bytes per append for {} value bytes",
                frame.len(),
                payload.len()
            );
            eprintln!(
                "note: append case {id} is {} bytes as a Kafka batch",
                kafka_wire_len(&batch, 0)
            );
            group.throughput(Throughput::BytesDecimal(payload.len() as u64));
            group.bench_function(BenchmarkId::new("log", &id), |b| {
                b.iter_custom(|iters| log_case(iters, &batch))
            });
            group.bench_function(BenchmarkId::new("raw_frame", &id), |b| {
                b.iter_custom(|iters| raw_write(iters, &frame, fsync))
            });
            group.bench_function(BenchmarkId::new("raw_payload", &id), |b| {
                b.iter_custom(|iters| raw_write(iters, &payload, fsync))
            });
        }
    }
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    append_cases(
        &mut group,
        |iters, batch| log_append_unflushed(iters, batch, Answer::AtOnce),
        false,
    );
    // The same appends through the write buffer, as Produce makes them: for acks=all; for
    // acks=0/1 answered one by one; and for acks=0/1 on a connection with eight requests
    // pipelined.
    for (value_size, label) in VALUE_SIZES {
        for records in BATCH_RECORDS {
            let batch = envelope_batch(records, value_size);
            group.throughput(Throughput::BytesDecimal((records * value_size) as u64));
            for (function, how) in [
                ("log_acks_all", Answer::Round),
                ("log_acks_1", Answer::Every(1)),
                ("log_acks_1_pipelined_8", Answer::Every(8)),
            ] {
                group.bench_function(
                    BenchmarkId::new(function, format!("{label}_x{records}")),
                    |b| b.iter_custom(|iters| log_append_unflushed(iters, &batch, how)),
                );
            }
        }
    }
    group.finish();
}

fn append_fsync(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("append_fsync");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    append_cases(
        &mut group,
        |iters, batch| log_append_fsync(&rt, iters, batch),
        true,
    );
    group.finish();
}

/// How the `produce` group makes a producer's batch ready to append.
#[derive(Clone, Copy)]
enum Prepare {
    /// As Produce does ([`PreparedBatch::from_kafka`]): a small batch checked in place and
    /// stored as sent, any other decoded into columns.
    AsProduce,
    /// Always decoded into columns, as every batch was before small ones were stored as sent.
    Columns,
}

/// `records` records of `value_size` bytes as one uncompressed Kafka batch from a producer
/// (offset deltas 0, 1, 2, ...).
fn producer_batch(records: usize, value_size: usize) -> Vec<u8> {
    let batch = envelope_batch(records, value_size);
    let mut columns = batch.columns().to_vec();
    columns[0] = Arc::new(Int64Array::from_iter_values(0..records as i64));
    let batch = RecordBatch::try_new(batch.schema(), columns).expect("offsets 0, 1, 2, ...");
    let n = records as i32;
    let header = BatchHeader {
        base_offset: 0,
        last_offset_delta: n - 1,
        record_count: n,
        first_timestamp: now_ms(),
        max_timestamp: now_ms(),
        producer: ProducerInfo::NONE,
    };
    let mut out = Vec::new();
    kafka_records::encode_batch(&mut out, &header, &batch).expect("encode a Kafka batch");
    out
}

/// Times `iters` appends of the Kafka batch `wire` as Produce makes them: the batch parsed (its
/// CRC checked), made ready as `how` says and appended through the write buffer (acks=all, the
/// fsync rounds aside).
fn produce_appends(iters: u64, wire: &[u8], how: Prepare) -> Duration {
    let dir = scratch_dir();
    let log = open_log(dir.path(), None);
    let config = log.config();
    let mut scratch = DecodeScratch::default();
    let start = Instant::now();
    for _ in 0..iters {
        for batch in kafka_records::batches(wire) {
            let batch = &batch.expect("a sound batch");
            let prepared = match how {
                Prepare::AsProduce => {
                    PreparedBatch::from_kafka(batch, &config, &mut scratch, 1 << 20)
                        .expect("records to append")
                        .expect("records to append")
                }
                Prepare::Columns => {
                    let mut builder = EnvelopeBuilder::with_capacity(
                        batch.record_count as usize,
                        batch.records.len(),
                    );
                    kafka_records::decode_records(batch, &mut builder, &mut scratch, 1 << 20)
                        .expect("records to decode");
                    PreparedBatch::Columns(builder.finish())
                }
            };
            black_box(
                log.append_prepared(&prepared, ProducerInfo::NONE)
                    .expect("append"),
            );
        }
    }
    start.elapsed()
}

/// Produce's work per record on a batch from a producer, from its bytes to its append: one
/// record a batch (a producer that does not batch) against 1,000.
fn produce(c: &mut Criterion) {
    let mut group = c.benchmark_group("produce");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (value_size, label) in VALUE_SIZES {
        for records in BATCH_RECORDS {
            let wire = producer_batch(records, value_size);
            group.throughput(Throughput::BytesDecimal((records * value_size) as u64));
            let id = format!("{label}_x{records}");
            group.bench_function(BenchmarkId::new("from_wire", &id), |b| {
                b.iter_custom(|iters| produce_appends(iters, &wire, Prepare::AsProduce))
            });
            if records == 1 {
                group.bench_function(BenchmarkId::new("from_wire_via_columns", &id), |b| {
                    b.iter_custom(|iters| produce_appends(iters, &wire, Prepare::Columns))
                });
            }
        }
    }
    group.finish();
}

/// A pre-filled log and a raw file of the same size, for the read group.
struct ReadFixture {
    log: Log,
    raw: File,
    /// The log's end offset (and record count: the log starts at 0).
    end: i64,
    /// Bytes of the segment file, and of the raw file.
    stored_bytes: u64,
    _dir: TempDir,
}

impl ReadFixture {
    /// `batches` appends of `READ_BATCH_RECORDS` records with `value_size` values each.
    fn new(value_size: usize, batches: usize) -> ReadFixture {
        let dir = scratch_dir();
        let log = open_log(dir.path(), None);
        let batch = envelope_batch(READ_BATCH_RECORDS, value_size);
        for _ in 0..batches {
            log.append_unflushed(&batch, ProducerInfo::NONE)
                .expect("prefill append");
        }
        // Reads stop at the high watermark, which is the durable offset.
        runtime()
            .block_on(log.flush())
            .expect("flush the prefilled log");
        let stored_bytes = log.offsets().size_bytes;
        let raw_path = dir.path().join("raw");
        let mut raw = File::create_new(&raw_path)
            .unwrap_or_else(|e| panic!("create {}: {e}", raw_path.display()));
        for chunk in 0..stored_bytes.div_ceil(READ_MAX_BYTES as u64) {
            let len = (stored_bytes - chunk * READ_MAX_BYTES as u64).min(READ_MAX_BYTES as u64);
            raw.write_all(&noise(len as usize, chunk))
                .expect("prefill raw file");
        }
        ReadFixture {
            end: log.end_offset(),
            log,
            raw,
            stored_bytes,
            _dir: dir,
        }
    }
}

fn read(c: &mut Criterion) {
    let mut group = c.benchmark_group("read");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (value_size, label) in VALUE_SIZES {
        let batches = READ_LOG_VALUE_BYTES / (value_size * READ_BATCH_RECORDS);
        let records = batches * READ_BATCH_RECORDS;
        // Filled on first use, so a run filtered to other groups does not pay for it.
        let fixture = OnceCell::new();
        let fixture = || fixture.get_or_init(|| ReadFixture::new(value_size, batches));
        let id = format!("{label}_x{READ_BATCH_RECORDS}");
        group.throughput(Throughput::BytesDecimal((records * value_size) as u64));
        group.bench_function(BenchmarkId::new("log", &id), |b| {
            let f = fixture();
            b.iter(|| {
                let (mut offset, mut seen) = (0, 0);
                while offset < f.end {
                    let result = f.log.read(offset, READ_MAX_BYTES).expect("read");
                    assert!(
                        result.next_offset > offset,
                        "the read moved on from {offset}"
                    );
                    seen += result.record_count();
                    offset = result.next_offset;
                    black_box(result);
                }
                assert_eq!(seen, records, "the read returned every record once");
            })
        });
        let mut buf = vec![0u8; READ_MAX_BYTES];
        group.bench_function(BenchmarkId::new("raw_pread", &id), |b| {
            let f = fixture();
            b.iter(|| {
                let mut pos = 0;
                while pos < f.stored_bytes {
                    let len = (f.stored_bytes - pos).min(READ_MAX_BYTES as u64) as usize;
                    f.raw.read_exact_at(&mut buf[..len], pos).expect("pread");
                    black_box(&buf);
                    pos += len as u64;
                }
            })
        });
    }
    group.finish();
}

/// Times `iters` appends of `batch` with acks=all, each waiting for its (group-committed)
/// fsync, spread over `appenders` tasks on one log.
fn concurrent_appends(rt: &Runtime, appenders: usize, iters: u64, batch: &RecordBatch) -> Duration {
    let dir = scratch_dir();
    let log = Arc::new(open_log(dir.path(), Some(1)));
    let appenders = appenders as u64;
    rt.block_on(async {
        let start = Instant::now();
        let mut tasks = JoinSet::new();
        for task in 0..appenders {
            let appends = iters / appenders + u64::from(task < iters % appenders);
            let (log, batch) = (log.clone(), batch.clone());
            tasks.spawn(async move {
                for _ in 0..appends {
                    log.append(&batch, ProducerInfo::NONE, Ack::All)
                        .await
                        .expect("append");
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("appender task");
        }
        start.elapsed()
    })
}

fn group_commit(c: &mut Criterion) {
    let rt = runtime();
    let (value_size, label) = GROUP_COMMIT_VALUE;
    let batch = envelope_batch(1, value_size);
    let mut group = c.benchmark_group("group_commit");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Elements(1));
    for appenders in [1, GROUP_COMMIT_APPENDERS] {
        group.bench_function(
            BenchmarkId::new(format!("appenders_{appenders}"), format!("{label}_x1")),
            |b| b.iter_custom(|iters| concurrent_appends(&rt, appenders, iters, &batch)),
        );
    }
    group.finish();
}

/// 1,000 JSON events as a producer would send them: compressible, as most topics' values are.
fn json_batch(records: usize) -> RecordBatch {
    let mut builder = EnvelopeBuilder::with_capacity(records, records * 120);
    let ts = now_ms();
    let regions = ["eu-west-1", "us-east-1", "ap-south-1"];
    for i in 0..records {
        let json = format!(
            r#"{{"order_id":{},"customer":"customer-{:05}","region":"{}","amount":{}.{:02},"status":"created"}}"#,
            1_000_000 + i,
            (i * 7919) % 20_000,
            regions[i % 3],
            (i * 31) % 1_000,
            i % 100
        );
        let key = format!("customer-{:05}", (i * 7919) % 20_000);
        builder.append(
            ts + i as i64,
            Some(key.as_bytes()),
            Some(json.as_bytes()),
            &[],
        );
    }
    builder.finish()
}

fn compression(c: &mut Criterion) {
    let batch = json_batch(1_000);
    let mut group = c.benchmark_group("compression");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(batch.num_rows() as u64));
    for (name, codec) in [("none", 0), ("lz4", 3), ("zstd", 4), ("gzip", 1)] {
        let dir = scratch_dir();
        let log = open_log_compressed(dir.path(), None, name);
        log.append_unflushed(&batch, ProducerInfo::NONE)
            .expect("append");
        // Reads stop at the high watermark, which is the durable offset.
        runtime().block_on(log.flush()).expect("flush");
        // scripts/bench-log reads these lines.
        eprintln!(
            "note: compression case {name} stores {} bytes per 1000 records; the producer's batch is {} bytes",
            log.offsets().size_bytes,
            kafka_wire_len(&batch, codec)
        );
        // Reading it back: decompression and decoding, per batch of 1,000.
        group.bench_function(
            BenchmarkId::new(format!("read_{name}"), "json_x1000"),
            |b| {
                b.iter(|| {
                    let read = log.read(0, 1).expect("read");
                    assert_eq!(read.record_count(), 1_000, "one batch read whole");
                    black_box(read)
                })
            },
        );
        group.bench_function(BenchmarkId::new(name, "json_x1000"), |b| {
            b.iter_custom(|iters| {
                let dir = scratch_dir();
                let log = open_log_compressed(dir.path(), None, name);
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(
                        log.append_unflushed(&batch, ProducerInfo::NONE)
                            .expect("append"),
                    );
                }
                start.elapsed()
            })
        });
    }
    group.finish();
}

// The fsync groups run first: the no-fsync appends leave gigabytes of dirty pages whose writeback
// would otherwise slow the fsyncs measured after them.
criterion_group!(
    benches,
    group_commit,
    append_fsync,
    append,
    produce,
    read,
    compression
);
criterion_main!(benches);
