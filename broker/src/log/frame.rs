//! One stored batch: a fixed header (length, CRC32C, batch facts) followed by its body.
//!
//! ```text
//!  0 u32 frame_len       whole frame, header included; a multiple of 8
//!  4 u32 crc32c          of bytes 8..frame_len (version 3: of the body, then bytes 8..72)
//!  8 u8  version (1, 2 or 3)
//!  9 u8  form (versions 2, 3): layout << 4 | codec     10 i16 attributes (Kafka's)
//! 12 i32 record_count
//! 16 i64 base_offset
//! 24 i32 last_offset_delta  28 i32 base_sequence
//! 32 i64 first_timestamp   40 i64 max_timestamp
//! 48 i64 producer_id       56 i16 producer_epoch  58 u16 padding (versions 2, 3: after the body)
//! 60 u32 ipc_meta_len      64 u64 body_len (uncompressed)
//! 72 body, then zero padding to a multiple of 8
//! ```
//! All integers little-endian.
//!
//! A version 1 frame (the first format) holds one Arrow IPC record-batch message without a
//! schema (the schema is always the envelope). The header size keeps the IPC body 8-byte aligned
//! inside a 64-byte aligned read buffer, so decoding is zero-copy.
//!
//! Versions 2 and 3 name their body's form in byte 9:
//! - layout 0: the Arrow IPC message, as in version 1;
//! - layout 1, for small batches and compressed ones: the first row's offset and timestamp (two
//!   i64) followed by the rows in Kafka's v2 record encoding (varint deltas). An Arrow message
//!   carries a few hundred bytes of metadata and padding, seven times a 100-byte record; this
//!   costs 16. Compressed, the deltas weigh what the producer's own compressed batch does. A
//!   small uncompressed batch from a producer keeps the rows as the producer encoded them
//!   ([`FrameEncoder::encode_kafka_rows_unsealed`]), so its append decodes nothing.
//! - codec 0: stored as is; 1: LZ4 block; 2: Zstandard (compression at rest, per topic). The CRC
//!   covers the compressed bytes, so damage is found before anything is decompressed.
//!
//! Versions 1 and 2 hold offsets as they are. Version 3, the one written now, holds them relative
//! to `base_offset`: the Arrow offset column, or a Kafka-layout body's first offset, is `offset -
//! base_offset`. So the body does not depend on where the batch lands: an append encodes (and
//! compresses) it before taking the partition's lock, and under the lock writes the base offset
//! and the CRC (see [`Unsealed::seal`]). Reads add the base back. Its CRC runs over the body
//! first and the header after it, so sealing combines the body's CRC, computed before the lock,
//! with the CRC of the 64 header bytes: four table lookups for this one length
//! ([`quiver_common::crc::Concat`]), where the CRC crates' general combine squares GF(2)
//! matrices (8-100 us here) and reading the body again under the lock costs its length.

use std::cell::RefCell;
use std::io::IoSlice;
use std::sync::{Arc, LazyLock};

use arrow::array::{BinaryArray, Int64Array};
use arrow::buffer::{Buffer, MutableBuffer};
use arrow::ipc::reader::FileDecoder;
use arrow::ipc::writer::{IpcWriteOptions, StreamEncoder};
use arrow::ipc::{Block, MetadataVersion};
use arrow::record_batch::RecordBatch;
use quiver_common::crc::{Concat, crc32c, crc32c_append};
use quiver_common::kafka::{compression, records as kafka_records};
use quiver_common::record::{EnvelopeBuilder, EnvelopeColumns};

use crate::error::{BrokerError, Result};
use crate::record::{col, envelope_schema};

/// Bytes of the fixed frame header.
pub const HEADER_LEN: usize = 72;
/// The first format: a plain Arrow IPC message.
const VERSION_ARROW: u8 = 1;
/// Byte 9 names the body's layout and codec.
const VERSION_FORMS: u8 = 2;
/// As version 2, with offsets relative to the frame's base offset.
const VERSION_RELATIVE: u8 = 3;
/// A frame larger than this is treated as damage (no batch is ever this large).
pub const MAX_FRAME_LEN: u64 = 1 << 31;
/// The largest body a compressed frame may declare (it is decompressed into one buffer).
const MAX_BODY_LEN: u64 = 1 << 31;
/// Batches of at most this many rows are stored in the Kafka layout: below it Arrow's fixed
/// metadata outweighs the records.
pub const SMALL_BATCH_ROWS: usize = 8;
/// ... and whose keys and values take at most this many bytes.
pub const SMALL_BATCH_BYTES: usize = 16 << 10;
/// Bytes before the rows of a Kafka-layout body: the first row's offset and timestamp.
const KAFKA_PREFIX_LEN: usize = 16;
/// Extends a version 3 frame's body CRC by its header's bytes after the CRC (see
/// [`Unsealed::seal`]).
static HEADER_CONCAT: Concat = Concat::new(HEADER_LEN - 8);
/// Kafka's default `compression.zstd.level`.
const ZSTD_LEVEL: i32 = 3;
/// Buffers of a batch at least this long go into an appended frame as they lie, written from
/// the batch's own memory (see [`Unsealed`]); shorter ones are copied, as cheap as a piece.
const BORROWED_MIN: usize = 1 << 10;

pub use quiver_common::batch::{BatchHeader, ProducerInfo, attributes};

/// How a frame's body is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One Arrow IPC record-batch message.
    Arrow,
    /// The rows in Kafka's record encoding, after the first row's offset and timestamp.
    Kafka,
}

/// How a frame's body is compressed on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    None,
    Lz4,
    Zstd,
}

impl Codec {
    /// The codec at rest for a batch whose Kafka attributes name `kafka_codec` (the codec its
    /// consumers are sent): LZ4 for the fast codecs, Zstandard for those that trade CPU for size.
    pub fn at_rest(kafka_codec: i16) -> Codec {
        match kafka_codec {
            compression::codec::NONE => Codec::None,
            compression::codec::SNAPPY | compression::codec::LZ4 => Codec::Lz4,
            _ => Codec::Zstd,
        }
    }

    fn id(self) -> u8 {
        match self {
            Codec::None => 0,
            Codec::Lz4 => 1,
            Codec::Zstd => 2,
        }
    }
}

/// The header fields that can be read without the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub frame_len: u64,
    pub crc: u32,
    pub batch: BatchHeader,
    pub layout: Layout,
    pub codec: Codec,
    /// Bytes of the Arrow IPC metadata (0 in the Kafka layout).
    pub ipc_meta_len: u32,
    /// Bytes of the body after the metadata, uncompressed.
    pub ipc_body_len: u64,
    /// Bytes the body takes in the frame (compressed, if it is).
    pub stored_len: u64,
    /// Whether the body's offsets are relative to the base offset (version 3).
    pub relative_offsets: bool,
}

fn le_i16(b: &[u8], at: usize) -> i16 {
    i16::from_le_bytes([b[at], b[at + 1]])
}
fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(x)
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

impl FrameHeader {
    /// Parses and sanity-checks a header; `Err` means the bytes are not a frame start.
    pub fn parse(bytes: &[u8]) -> std::result::Result<FrameHeader, String> {
        if bytes.len() < HEADER_LEN {
            return Err(format!(
                "{} bytes is shorter than a frame header",
                bytes.len()
            ));
        }
        let frame_len = u64::from(le_u32(bytes, 0));
        if frame_len < HEADER_LEN as u64 || frame_len % 8 != 0 || frame_len > MAX_FRAME_LEN {
            return Err(format!("implausible frame length {frame_len}"));
        }
        let ipc_meta_len = le_u32(bytes, 60);
        let ipc_body_len = le_u64(bytes, 64);
        let uncompressed = u64::from(ipc_meta_len).saturating_add(ipc_body_len);
        let room = frame_len - HEADER_LEN as u64;
        let (layout, codec, stored_len) = match bytes[8] {
            VERSION_ARROW => {
                if uncompressed > room {
                    return Err("IPC lengths exceed the frame".into());
                }
                (Layout::Arrow, Codec::None, uncompressed)
            }
            VERSION_FORMS | VERSION_RELATIVE => {
                let form = bytes[9];
                let layout = match form >> 4 {
                    0 => Layout::Arrow,
                    1 => Layout::Kafka,
                    other => return Err(format!("unknown frame layout {other}")),
                };
                let codec = match form & 0x0f {
                    0 => Codec::None,
                    1 => Codec::Lz4,
                    2 => Codec::Zstd,
                    other => return Err(format!("unknown frame codec {other}")),
                };
                let pad = u64::from(le_u16(bytes, 58));
                if pad >= 8 || pad > room {
                    return Err(format!("implausible frame padding {pad}"));
                }
                let stored_len = room - pad;
                let sound = match codec {
                    Codec::None => uncompressed == stored_len,
                    _ => uncompressed <= MAX_BODY_LEN && stored_len > 0,
                };
                if !sound {
                    return Err(format!(
                        "a body of {uncompressed} bytes does not fit {stored_len} stored bytes"
                    ));
                }
                if layout == Layout::Kafka
                    && (ipc_meta_len != 0 || ipc_body_len < KAFKA_PREFIX_LEN as u64)
                {
                    return Err("a Kafka-layout body is too short".into());
                }
                (layout, codec, stored_len)
            }
            other => return Err(format!("unknown frame version {other}")),
        };
        let header = FrameHeader {
            frame_len,
            crc: le_u32(bytes, 4),
            batch: BatchHeader {
                producer: ProducerInfo {
                    attributes: le_i16(bytes, 10),
                    producer_id: le_u64(bytes, 48) as i64,
                    producer_epoch: le_i16(bytes, 56),
                    base_sequence: le_u32(bytes, 28) as i32,
                },
                record_count: le_u32(bytes, 12) as i32,
                base_offset: le_u64(bytes, 16) as i64,
                last_offset_delta: le_u32(bytes, 24) as i32,
                first_timestamp: le_u64(bytes, 32) as i64,
                max_timestamp: le_u64(bytes, 40) as i64,
            },
            layout,
            codec,
            ipc_meta_len,
            ipc_body_len,
            stored_len,
            relative_offsets: bytes[8] == VERSION_RELATIVE,
        };
        let b = &header.batch;
        if b.record_count < 0 || b.last_offset_delta < 0 || b.base_offset < 0 {
            return Err("negative offsets or counts".into());
        }
        Ok(header)
    }
}

/// Checks the CRC of a whole frame (header included).
pub fn crc_matches(frame: &[u8], header: &FrameHeader) -> bool {
    if frame.len() as u64 != header.frame_len {
        return false;
    }
    let crc = if header.relative_offsets {
        HEADER_CONCAT.concat(crc32c(&frame[HEADER_LEN..]), crc32c(&frame[8..HEADER_LEN]))
    } else {
        crc32c(&frame[8..])
    };
    crc == header.crc
}

/// Reusable state for encoding frames (IPC and compression scratch space).
pub struct FrameEncoder {
    /// Arrow's IPC encoder, used for record-batch messages only (its schema message was taken
    /// when it was made). It hands a message back as a list of buffers, the batch's own column
    /// buffers among them, so an append writes those without copying them into the frame.
    ipc: StreamEncoder,
    /// The uncompressed body of a version 2 frame (after `skip` bytes, see `encode_as`).
    body: Vec<u8>,
    zstd: Option<zstd::bulk::Compressor<'static>>,
}

impl std::fmt::Debug for FrameEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameEncoder").finish_non_exhaustive()
    }
}

impl Default for FrameEncoder {
    fn default() -> Self {
        let options = IpcWriteOptions::try_new(8, false, MetadataVersion::V5)
            .unwrap_or_else(|e| unreachable!("8-byte alignment with V5 is valid: {e}"));
        // The stream's schema message comes with the first batch encoded, so an empty batch
        // takes it here: a frame holds a record-batch message only (the schema is always the
        // envelope).
        let mut ipc = StreamEncoder::try_new_with_options(&envelope_schema(), options)
            .unwrap_or_else(|e| unreachable!("the envelope schema is writable: {e}"));
        ipc.encode(&RecordBatch::new_empty(envelope_schema()))
            .unwrap_or_else(|e| unreachable!("an empty envelope batch encodes: {e}"));
        FrameEncoder {
            ipc,
            body: Vec::new(),
            zstd: None,
        }
    }
}

/// Writes a Kafka-layout body into the empty `body`: the rows as a Kafka batch holds them,
/// after the first row's offset (relative, as `batch`'s are) and timestamp. Returns where the
/// layout's body starts in `body`: the prefix overwrites the end of the Kafka batch header, so
/// the rows stay in place.
fn write_kafka_rows(
    header: &BatchHeader,
    batch: &RecordBatch,
    body: &mut Vec<u8>,
) -> Result<usize> {
    // The Kafka batch's CRC is not kept (the frame has its own), so it is not computed.
    kafka_records::encode_batch_without_crc(body, header, batch, 0)?;
    // The first row's offset and timestamp, as the Kafka batch header holds them. No rows:
    // the encoder writes nothing, and the body is the prefix alone.
    let (first_offset, first_ts) = match body.get(..kafka_records::BATCH_HEADER_LEN) {
        Some(h) => (be_i64(h, 0), be_i64(h, 27)),
        None => (0, header.first_timestamp),
    };
    body.resize(body.len().max(kafka_records::BATCH_HEADER_LEN), 0);
    let skip = kafka_records::BATCH_HEADER_LEN - KAFKA_PREFIX_LEN;
    body[skip..skip + 8].copy_from_slice(&first_offset.to_le_bytes());
    body[skip + 8..kafka_records::BATCH_HEADER_LEN].copy_from_slice(&first_ts.to_le_bytes());
    Ok(skip)
}

/// Whether Arrow's per-batch metadata would outweigh `batch`'s records: at most
/// [`SMALL_BATCH_ROWS`] rows of at most [`SMALL_BATCH_BYTES`] of keys and values. Larger
/// values keep the Arrow layout, which reads without copying them.
fn is_small(batch: &RecordBatch) -> bool {
    let data_len = |i: usize| {
        batch
            .column(i)
            .as_any()
            .downcast_ref::<BinaryArray>()
            .map(|a| a.value_data().len())
    };
    batch.num_rows() <= SMALL_BATCH_ROWS
        && matches!((data_len(col::KEY), data_len(col::VALUE)),
            (Some(k), Some(v)) if k + v <= SMALL_BATCH_BYTES)
}

/// The form a batch is stored in: the codec its attributes ask for ([`Codec::at_rest`]), and
/// the Kafka layout when it is small or compressed (see [`FrameEncoder::encode`]).
fn form_of(header: &BatchHeader, batch: &RecordBatch) -> (Layout, Codec) {
    let codec = Codec::at_rest(header.producer.attributes & attributes::COMPRESSION);
    let layout = if codec != Codec::None || is_small(batch) {
        Layout::Kafka
    } else {
        Layout::Arrow
    };
    (layout, codec)
}

/// `batch` with `delta` added to its offsets (wrapping: offsets never come near the ends).
fn shift_offsets(batch: &RecordBatch, delta: i64) -> Result<RecordBatch> {
    if delta == 0 {
        return Ok(batch.clone());
    }
    let cols = EnvelopeColumns::try_new(batch)?;
    let shifted: Int64Array = cols.offsets.unary(|o| o.wrapping_add(delta));
    let mut columns = batch.columns().to_vec();
    columns[col::OFFSET] = Arc::new(shifted);
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

fn too_large(len: usize) -> BrokerError {
    BrokerError::InvalidRecords(format!("batch of {len} bytes is too large to store"))
}

/// A frame encoded before its base offset is known, its offsets relative to it:
/// [`Unsealed::seal`] makes it whole. An append encodes (and compresses) outside the
/// partition's lock and seals under it, so appenders to one partition encode in parallel.
///
/// An Arrow-layout frame encoded for an append is not all in the vector: the batch's larger
/// column buffers ([`BORROWED_MIN`] bytes or more) are held here and written from where they
/// lie ([`Unsealed::io_slices`], one vectored write), so a record's bytes are not copied
/// between the batch and the write. The frame's bytes are the vector's and these buffers,
/// interleaved; they are what [`FrameEncoder::encode`] would have written in one piece.
#[derive(Debug)]
#[must_use = "a frame is whole once sealed"]
pub struct Unsealed {
    /// Where the frame starts in the vector it was encoded into, and how many of its bytes
    /// the vector holds (the header always among them).
    start: usize,
    in_vec: usize,
    /// The frame's buffers not in the vector, each after the vector's bytes up to the first
    /// number (counted from `start`).
    borrowed: Vec<(usize, Buffer)>,
    /// The frame's length.
    len: usize,
    /// CRC32C of the frame after its header (the body and its padding).
    body_crc: u32,
}

impl Unsealed {
    /// The frame's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Writes `base_offset` into the frame's header (in `out`, the vector it was encoded into)
    /// and the frame's CRC: the body's, computed when it was encoded, extended by the header's
    /// bytes.
    pub fn seal(&self, out: &mut [u8], base_offset: i64) {
        let header = &mut out[self.start..self.start + HEADER_LEN];
        header[16..24].copy_from_slice(&base_offset.to_le_bytes());
        let crc = HEADER_CONCAT.concat(self.body_crc, crc32c(&header[8..HEADER_LEN]));
        header[4..8].copy_from_slice(&crc.to_le_bytes());
    }

    /// The frame's bytes in order, for one vectored write: runs of `out` (the vector it was
    /// encoded into) and the borrowed buffers between them.
    pub fn io_slices<'a>(&'a self, out: &'a [u8]) -> Vec<IoSlice<'a>> {
        self.pieces(out).map(IoSlice::new).collect()
    }

    /// Calls `f` with [`Unsealed::io_slices`], collected only when the frame is in more than
    /// one piece (a frame all in the vector, as every small one is, costs no allocation).
    pub fn with_io_slices<R>(&self, out: &[u8], f: impl FnOnce(&mut [IoSlice<'_>]) -> R) -> R {
        if self.borrowed.is_empty() {
            f(&mut [IoSlice::new(&out[self.start..self.start + self.in_vec])])
        } else {
            f(&mut self.io_slices(out))
        }
    }

    /// [`Unsealed::io_slices`] as byte slices, without collecting them.
    fn pieces<'a>(&'a self, out: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
        let mut at = self.start;
        let runs = self.borrowed.iter().flat_map(move |(before, buffer)| {
            let end = self.start + before;
            let run = &out[at..end];
            at = end;
            [run, buffer.as_slice()]
        });
        let last = self.borrowed.last().map_or(0, |(before, _)| *before);
        runs.chain(std::iter::once(
            &out[self.start + last..self.start + self.in_vec],
        ))
    }
}

impl FrameEncoder {
    /// Encodes `batch` (envelope schema, offsets assigned, `header.base_offset` the first) as
    /// one frame appended to `out`, compressed as the codec in `header`'s attributes asks
    /// ([`Codec::at_rest`]).
    ///
    /// Small batches and compressed ones take the Kafka layout. Compressed, Arrow's
    /// fixed-width offset and timestamp columns weigh 1.85 times what the producer's own
    /// zstd batch does (1,000 JSON events of 110 bytes: 24.2 against 13.1 bytes a record),
    /// where the record encoding's varint deltas compress as the producer's batch does; and
    /// a compressed frame is decompressed on every read anyway, so Arrow's zero-copy decode
    /// is lost either way.
    pub fn encode(
        &mut self,
        header: &BatchHeader,
        batch: &RecordBatch,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let (layout, codec) = form_of(header, batch);
        self.encode_as(header, batch, layout, codec, out)
    }

    /// [`FrameEncoder::encode`] of a batch whose offsets are relative to a base offset not yet
    /// known (`header.base_offset` is not used): the frame is whole once sealed with it, and
    /// its bytes are [`Unsealed::io_slices`] (`out` holds only part of them).
    pub fn encode_unsealed(
        &mut self,
        header: &BatchHeader,
        batch: &RecordBatch,
        out: &mut Vec<u8>,
    ) -> Result<Unsealed> {
        self.encode_relative(header, batch, form_of(header, batch), out, true)
    }

    /// Encodes `batch` (offsets assigned, `header.base_offset` the first) in the given form.
    pub fn encode_as(
        &mut self,
        header: &BatchHeader,
        batch: &RecordBatch,
        layout: Layout,
        codec: Codec,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let relative = shift_offsets(batch, header.base_offset.wrapping_neg())?;
        self.encode_relative(header, &relative, (layout, codec), out, false)?
            .seal(out, header.base_offset);
        Ok(())
    }

    /// Encodes `batch`, its offsets relative to the base offset, in the given form, unsealed;
    /// with `borrow`, an uncompressed Arrow body keeps the batch's larger buffers out of `out`
    /// (see [`Unsealed`]).
    fn encode_relative(
        &mut self,
        header: &BatchHeader,
        batch: &RecordBatch,
        (layout, codec): (Layout, Codec),
        out: &mut Vec<u8>,
        borrow: bool,
    ) -> Result<Unsealed> {
        let start = out.len();
        out.resize(start + HEADER_LEN, 0);
        let mut borrowed = Vec::new();
        let (meta_len, body_len) = if layout == Layout::Arrow && codec == Codec::None {
            let into = borrow.then_some((&mut borrowed, start));
            self.write_ipc(batch, out, into)?
        } else {
            let mut body = std::mem::take(&mut self.body);
            body.clear();
            // (bytes of `body` before the frame's body, metadata length, body length)
            let lengths = match layout {
                Layout::Arrow => self
                    .write_ipc(batch, &mut body, None)
                    .map(|(m, b)| (0, m, b)),
                Layout::Kafka => write_kafka_rows(header, batch, &mut body)
                    .map(|skip| (skip, 0, body.len() - skip)),
            };
            let stored = match lengths {
                Ok((skip, meta_len, body_len)) => self
                    .store(&body[skip..], codec, out)
                    .map(|()| (meta_len, body_len)),
                Err(e) => Err(e),
            };
            self.body = body;
            stored?
        };
        finish_frame(
            out,
            start,
            borrowed,
            header,
            (layout, codec),
            meta_len,
            body_len,
        )
    }

    /// Encodes the rows of a small batch as its producer sent them (Kafka's record encoding,
    /// offset deltas 0, 1, 2, ... and timestamps as deltas from `base_timestamp`) as a
    /// Kafka-layout frame, unsealed, compressed as `header`'s attributes ask: the records
    /// [`FrameEncoder::encode_unsealed`] would store, without decoding them into columns and
    /// encoding them again. `header.first_timestamp` and `max_timestamp` must be the rows'.
    pub fn encode_kafka_rows_unsealed(
        &mut self,
        header: &BatchHeader,
        base_timestamp: i64,
        rows: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Unsealed> {
        let codec = Codec::at_rest(header.producer.attributes & attributes::COMPRESSION);
        let start = out.len();
        out.resize(start + HEADER_LEN, 0);
        // The first row's offset (relative: 0) and the timestamp the deltas count from.
        let mut prefix = [0u8; KAFKA_PREFIX_LEN];
        prefix[8..].copy_from_slice(&base_timestamp.to_le_bytes());
        if codec == Codec::None {
            out.extend_from_slice(&prefix);
            out.extend_from_slice(rows);
        } else {
            let mut body = std::mem::take(&mut self.body);
            body.clear();
            body.extend_from_slice(&prefix);
            body.extend_from_slice(rows);
            let stored = self.store(&body, codec, out);
            self.body = body;
            stored?;
        }
        let body_len = KAFKA_PREFIX_LEN + rows.len();
        finish_frame(
            out,
            start,
            Vec::new(),
            header,
            (Layout::Kafka, codec),
            0,
            body_len,
        )
    }

    /// Appends the IPC message of `batch` to `out`; returns its metadata and body lengths.
    /// With `borrowed` (a list and where the frame starts in `out`), buffers of
    /// [`BORROWED_MIN`] bytes or more are listed there instead, each after the frame's bytes in
    /// `out` so far, as [`Unsealed`] holds them.
    fn write_ipc(
        &mut self,
        batch: &RecordBatch,
        out: &mut Vec<u8>,
        mut borrowed: Option<(&mut Vec<(usize, Buffer)>, usize)>,
    ) -> Result<(usize, usize)> {
        let start = out.len();
        let mut borrowed_len = 0;
        for buffer in self.ipc.encode(batch)? {
            match &mut borrowed {
                Some((list, frame_start)) if buffer.len() >= BORROWED_MIN => {
                    borrowed_len += buffer.len();
                    list.push((out.len() - *frame_start, buffer));
                }
                _ => out.extend_from_slice(buffer.as_slice()),
            }
        }
        // The message: a continuation marker, the padded metadata's length (the two are one
        // 8-byte buffer, always copied), the metadata, then the body.
        let message = &out[start..];
        if message.len() < 8 {
            return Err(BrokerError::Internal(
                "the IPC encoder wrote no message".into(),
            ));
        }
        let meta_len = 8 + le_u32(message, 4) as usize;
        let body_len = (message.len() + borrowed_len)
            .checked_sub(meta_len)
            .ok_or_else(|| {
                BrokerError::Internal("the IPC message is shorter than its metadata".into())
            })?;
        Ok((meta_len, body_len))
    }

    /// Appends `body` to `out` compressed with `codec`.
    fn store(&mut self, body: &[u8], codec: Codec, out: &mut Vec<u8>) -> Result<()> {
        let failed = |e: std::io::Error| {
            BrokerError::Internal(format!("compressing a batch of {} bytes: {e}", body.len()))
        };
        let at = out.len();
        match codec {
            Codec::None => out.extend_from_slice(body),
            Codec::Lz4 => {
                let bound = lz4::block::compress_bound(body.len()).map_err(failed)?;
                out.resize(at + bound, 0);
                let n = lz4::block::compress_to_buffer(body, None, false, &mut out[at..])
                    .map_err(failed)?;
                out.truncate(at + n);
            }
            Codec::Zstd => {
                let zstd = match &mut self.zstd {
                    Some(z) => z,
                    None => self
                        .zstd
                        .insert(zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(failed)?),
                };
                out.resize(at + zstd::zstd_safe::compress_bound(body.len()), 0);
                let n = zstd
                    .compress_to_buffer(body, &mut out[at..])
                    .map_err(failed)?;
                out.truncate(at + n);
            }
        }
        Ok(())
    }
}

/// Ends a frame encoded into `out` from `start` (its header's bytes reserved, its body after
/// them, `borrowed` buffers aside): pads it, fills in its header and computes its body's CRC.
fn finish_frame(
    out: &mut Vec<u8>,
    start: usize,
    borrowed: Vec<(usize, Buffer)>,
    header: &BatchHeader,
    (layout, codec): (Layout, Codec),
    meta_len: usize,
    body_len: usize,
) -> Result<Unsealed> {
    let borrowed_len: usize = borrowed.iter().map(|(_, b)| b.len()).sum();
    let pad = (8 - (out.len() - start + borrowed_len) % 8) % 8;
    out.resize(out.len() + pad, 0);
    let in_vec = out.len() - start;
    let frame_len = in_vec + borrowed_len;
    let frame_len_u32 = u32::try_from(frame_len)
        .ok()
        .filter(|&l| u64::from(l) <= MAX_FRAME_LEN)
        .ok_or_else(|| too_large(frame_len))?;
    let meta_len = u32::try_from(meta_len).map_err(|_| too_large(meta_len))?;
    let h = &mut out[start..start + HEADER_LEN];
    h[0..4].copy_from_slice(&frame_len_u32.to_le_bytes());
    h[8] = VERSION_RELATIVE;
    let layout_id: u8 = match layout {
        Layout::Arrow => 0,
        Layout::Kafka => 1,
    };
    h[9] = layout_id << 4 | codec.id();
    h[58..60].copy_from_slice(&(pad as u16).to_le_bytes());
    h[10..12].copy_from_slice(&header.producer.attributes.to_le_bytes());
    h[12..16].copy_from_slice(&header.record_count.to_le_bytes());
    h[24..28].copy_from_slice(&header.last_offset_delta.to_le_bytes());
    h[28..32].copy_from_slice(&header.producer.base_sequence.to_le_bytes());
    h[32..40].copy_from_slice(&header.first_timestamp.to_le_bytes());
    h[40..48].copy_from_slice(&header.max_timestamp.to_le_bytes());
    h[48..56].copy_from_slice(&header.producer.producer_id.to_le_bytes());
    h[56..58].copy_from_slice(&header.producer.producer_epoch.to_le_bytes());
    h[60..64].copy_from_slice(&meta_len.to_le_bytes());
    h[64..72].copy_from_slice(&(body_len as u64).to_le_bytes());
    let mut unsealed = Unsealed {
        start,
        in_vec,
        borrowed,
        len: frame_len,
        body_crc: 0,
    };
    // The CRC of the bytes after the header (the header lies in the first slice).
    let mut body_crc = 0;
    let mut skip = HEADER_LEN;
    for slice in unsealed.pieces(out) {
        let from = skip.min(slice.len());
        skip -= from;
        body_crc = crc32c_append(body_crc, &slice[from..]);
    }
    unsealed.body_crc = body_crc;
    Ok(unsealed)
}

static DECODER: LazyLock<FileDecoder> =
    LazyLock::new(|| FileDecoder::new(envelope_schema(), MetadataVersion::V5));
static TRUSTING_DECODER: LazyLock<FileDecoder> = LazyLock::new(trusting_decoder);

/// The decoder of frames known to hold what [`FrameEncoder`] wrote: it skips Arrow's checks of
/// offsets and UTF-8, a sixth of a read's time.
#[allow(unsafe_code)]
fn trusting_decoder() -> FileDecoder {
    let decoder = FileDecoder::new(envelope_schema(), MetadataVersion::V5);
    // SAFETY: only `decode_known` uses it, and its callers pass only frames that are byte for
    // byte what `FrameEncoder::encode` wrote in this process, or that an earlier read decoded
    // with every check (`decode`) and whose CRC it matched (see `SegmentView::is_verified`).
    // The encoder writes the IPC message of a `RecordBatch`, whose arrays were built through
    // Arrow's checked constructors (nothing here builds an array unchecked), so its offsets lie
    // within their buffers and its strings are UTF-8: the checks skipped here would pass.
    // This rests on storage returning the bytes written to it (the file system's contract; a
    // frame's CRC is checked on its first read from disk, not on later ones), as Kafka's reads
    // rest on it. Exercised by every read of a log's own appends, and by
    // `known_frames_decode_the_same`.
    unsafe { decoder.with_skip_validation(true) }
}

thread_local! {
    static ZSTD: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Decodes the record batch of a frame, checking it whole. `frame` must start at the frame
/// header and hold the whole frame; uncompressed Arrow frames in a 64-byte aligned buffer
/// decode without copying.
pub fn decode(frame: &Buffer, header: &FrameHeader) -> Result<RecordBatch> {
    decode_with(frame, header, &DECODER)
}

/// [`decode`] without Arrow's checks of offsets and UTF-8, for a frame known to hold what
/// [`FrameEncoder`] wrote: one this process wrote, or one an earlier [`decode`] checked whole
/// (and whose CRC matched since).
pub fn decode_known(frame: &Buffer, header: &FrameHeader) -> Result<RecordBatch> {
    decode_with(frame, header, &TRUSTING_DECODER)
}

fn decode_with(frame: &Buffer, header: &FrameHeader, decoder: &FileDecoder) -> Result<RecordBatch> {
    let body = body(frame, header)?;
    match header.layout {
        Layout::Arrow if header.relative_offsets => shift_offsets(
            &decode_ipc(&body, header, decoder)?,
            header.batch.base_offset,
        ),
        Layout::Arrow => decode_ipc(&body, header, decoder),
        Layout::Kafka => decode_kafka_rows(&split_kafka_body(&body, header)?, header),
    }
}

/// The body of `frame` (whose header is `header`), decompressed if it was compressed at rest.
fn body(frame: &Buffer, header: &FrameHeader) -> Result<Buffer> {
    let uncompressed = u64::from(header.ipc_meta_len) + header.ipc_body_len;
    if (frame.len() as u64) < HEADER_LEN as u64 + header.stored_len {
        return Err(BrokerError::Internal("frame shorter than its body".into()));
    }
    let stored = frame.slice_with_length(HEADER_LEN, header.stored_len as usize);
    decompress(stored, header.codec, uncompressed as usize)
}

/// The body of a frame stored as `stored` with `codec`, `len` bytes uncompressed.
fn decompress(stored: Buffer, codec: Codec, len: usize) -> Result<Buffer> {
    if codec == Codec::None {
        return Ok(stored);
    }
    let failed = |e: std::io::Error| {
        BrokerError::Internal(format!(
            "a stored batch does not decompress to its {len} bytes: {e}"
        ))
    };
    let mut out = MutableBuffer::from_len_zeroed(len);
    let n = match codec {
        Codec::None => len,
        Codec::Lz4 => {
            let size = i32::try_from(len).map_err(|_| {
                BrokerError::Internal(format!("an LZ4 body of {len} bytes is too large"))
            })?;
            lz4::block::decompress_to_buffer(&stored, Some(size), out.as_slice_mut())
                .map_err(failed)?
        }
        Codec::Zstd => ZSTD.with(|cell| {
            let mut cell = cell.borrow_mut();
            let zstd = match &mut *cell {
                Some(z) => z,
                None => cell.insert(zstd::bulk::Decompressor::new().map_err(failed)?),
            };
            zstd.decompress_to_buffer(&stored, out.as_slice_mut())
                .map_err(failed)
        })?,
    };
    if n != len {
        return Err(BrokerError::Internal(format!(
            "a stored batch decompressed to {n} bytes, not its {len}"
        )));
    }
    Ok(out.into())
}

fn decode_ipc(ipc: &Buffer, header: &FrameHeader, decoder: &FileDecoder) -> Result<RecordBatch> {
    if header.ipc_meta_len < 8 {
        return Err(BrokerError::Internal("frame holds no IPC message".into()));
    }
    let block = Block::new(0, header.ipc_meta_len as i32, header.ipc_body_len as i64);
    decoder
        .read_record_batch(&block, ipc)?
        .ok_or_else(|| BrokerError::Internal("frame holds no record batch".into()))
}

/// The rows of a version 3 Kafka-layout frame as stored (decompressed if they were
/// compressed at rest), with the offset of the first row and the timestamp their deltas count
/// from: what a Kafka batch holds, so Fetch sends them without decoding them. `None` for a frame
/// of another form. `frame` must start at the frame header, hold the whole frame and be known to
/// be what [`FrameEncoder`] wrote (see [`decode_known`]): the rows are not checked here.
pub fn kafka_rows(frame: &Buffer, header: &FrameHeader) -> Result<Option<KafkaRows>> {
    if header.layout != Layout::Kafka || !header.relative_offsets {
        return Ok(None);
    }
    split_kafka_body(&body(frame, header)?, header).map(Some)
}

/// A Kafka-layout `body` split into its prefix's facts and its rows (no copy).
fn split_kafka_body(body: &Buffer, header: &FrameHeader) -> Result<KafkaRows> {
    if body.len() < KAFKA_PREFIX_LEN {
        return Err(BrokerError::Internal(
            "a stored small batch is shorter than its prefix".into(),
        ));
    }
    let base = if header.relative_offsets {
        header.batch.base_offset
    } else {
        0
    };
    Ok(KafkaRows {
        first_offset: (le_u64(body, 0) as i64).wrapping_add(base),
        base_timestamp: le_u64(body, 8) as i64,
        rows: body.slice(KAFKA_PREFIX_LEN),
    })
}

/// A Kafka-layout frame's rows, as Fetch reads them
/// ([`Log::read_for_fetch`](super::Log::read_for_fetch)).
#[derive(Debug, Clone)]
pub struct KafkaRows {
    /// The offset of the first row; the rows' offset deltas count from it.
    pub first_offset: i64,
    /// The timestamp the rows' timestamp deltas count from.
    pub base_timestamp: i64,
    /// The rows in Kafka's v2 record encoding.
    pub rows: Buffer,
}

fn decode_kafka_rows(stored: &KafkaRows, header: &FrameHeader) -> Result<RecordBatch> {
    let corrupt = |reason: String| BrokerError::Internal(format!("a stored small batch: {reason}"));
    let rows: &[u8] = &stored.rows;
    let count = header.batch.record_count;
    let batch = kafka_records::KafkaBatch {
        base_offset: stored.first_offset,
        attributes: 0,
        last_offset_delta: header.batch.last_offset_delta,
        base_timestamp: stored.base_timestamp,
        max_timestamp: header.batch.max_timestamp,
        producer_id: header.batch.producer.producer_id,
        producer_epoch: header.batch.producer.producer_epoch,
        base_sequence: header.batch.producer.base_sequence,
        record_count: count,
        raw: rows,
        records: rows,
    };
    let n = kafka_records::records_bound(count, rows.len());
    let mut builder = EnvelopeBuilder::with_capacity(n, rows.len());
    let mut offsets = Vec::with_capacity(n);
    kafka_records::decode_records_with_offsets(
        &batch,
        &mut builder,
        &mut kafka_records::DecodeScratch::default(),
        rows.len(),
        &mut offsets,
    )
    .map_err(|e| corrupt(e.to_string()))?;
    let decoded = builder.finish();
    let mut columns = decoded.columns().to_vec();
    columns[col::OFFSET] = Arc::new(Int64Array::from(offsets));
    Ok(RecordBatch::try_new(decoded.schema(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Record, batch_to_records, records_to_batch};
    use std::sync::Arc;

    fn batch_at(records: &[Record], base: i64) -> RecordBatch {
        let batch = records_to_batch(records);
        let mut cols = batch.columns().to_vec();
        cols[0] = Arc::new(Int64Array::from_iter_values(
            base..base + records.len() as i64,
        ));
        RecordBatch::try_new(batch.schema(), cols).unwrap_or(batch)
    }

    fn header_for(records: &[Record], base: i64, attributes: i16) -> BatchHeader {
        let ts = records.iter().map(|r| r.timestamp_ms);
        BatchHeader {
            base_offset: base,
            last_offset_delta: records.len().saturating_sub(1) as i32,
            record_count: records.len() as i32,
            first_timestamp: records.first().map_or(0, |r| r.timestamp_ms),
            max_timestamp: ts.max().unwrap_or(0),
            producer: ProducerInfo {
                producer_id: 7,
                producer_epoch: 1,
                base_sequence: 3,
                attributes,
            },
        }
    }

    fn sample(n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| match i % 3 {
                0 => Record::new(1_000 + i as i64, Some(b"k"), Some(b"v"))
                    .with_header("a", Some(b"b"))
                    .with_header("n", None),
                1 => Record::new(900 - i as i64, None, None),
                _ => Record::new(5, Some(b""), Some(&[i as u8; 300])),
            })
            .collect()
    }

    /// Encodes, checks the header and CRC, decodes, and returns the frame.
    fn round_trip(records: &[Record], layout: Layout, codec: Codec) -> Vec<u8> {
        let header = header_for(records, 40, 0);
        let batch = batch_at(records, 40);
        let mut out = vec![0xAA; 8]; // frames are appended after what is there
        FrameEncoder::default()
            .encode_as(&header, &batch, layout, codec, &mut out)
            .unwrap_or_else(|e| panic!("encode {layout:?} {codec:?}: {e}"));
        let out = out.split_off(8);
        assert_eq!(out.len() % 8, 0);
        let parsed = FrameHeader::parse(&out).unwrap_or_else(|e| panic!("parse: {e}"));
        assert_eq!(parsed.batch, header);
        assert_eq!((parsed.layout, parsed.codec), (layout, codec));
        assert_eq!(parsed.frame_len as usize, out.len());
        assert!(crc_matches(&out, &parsed));
        let decoded = decode(&Buffer::from_vec(out.clone()), &parsed)
            .unwrap_or_else(|e| panic!("decode {layout:?} {codec:?}: {e}"));
        assert_eq!(decoded.column(0).as_ref(), batch.column(0).as_ref());
        assert_eq!(
            batch_to_records(&decoded).unwrap_or_default(),
            batch_to_records(&batch).unwrap_or_default()
        );
        out
    }

    #[test]
    fn every_form_round_trips() {
        for n in [0, 1, 3, 20] {
            for layout in [Layout::Arrow, Layout::Kafka] {
                for codec in [Codec::None, Codec::Lz4, Codec::Zstd] {
                    if n == 0 && layout == Layout::Arrow {
                        continue; // the log never stores an empty Arrow batch
                    }
                    let out = round_trip(&sample(n), layout, codec);
                    assert_eq!(out[8], VERSION_RELATIVE, "every new frame is version 3");
                }
            }
        }
    }

    #[test]
    fn known_frames_decode_the_same() {
        for layout in [Layout::Arrow, Layout::Kafka] {
            let out = round_trip(&sample(20), layout, Codec::None);
            let parsed = FrameHeader::parse(&out).unwrap_or_else(|e| panic!("{e}"));
            let buf = Buffer::from_vec(out);
            let checked = decode(&buf, &parsed).unwrap_or_else(|e| panic!("{e}"));
            let known = decode_known(&buf, &parsed).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(checked, known, "{layout:?}");
        }
    }

    #[test]
    fn small_batches_take_the_kafka_layout_and_few_bytes() {
        let one = [Record::new(
            1_700_000_000_000,
            Some(b"key-0001"),
            Some(&[b'x'; 100]),
        )];
        let mut out = Vec::new();
        let header = header_for(&one, 12, 0);
        FrameEncoder::default()
            .encode(&header, &batch_at(&one, 12), &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        let parsed = FrameHeader::parse(&out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.layout, Layout::Kafka);
        let mut wire = Vec::new();
        kafka_records::encode_batch(&mut wire, &header, &batch_at(&one, 12))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.len() <= 2 * wire.len(),
            "a 1-record frame takes {} bytes, its Kafka batch {}",
            out.len(),
            wire.len()
        );
        let large = [Record::new(1, None, Some(&[7u8; SMALL_BATCH_BYTES + 1]))];
        let mut out = Vec::new();
        FrameEncoder::default()
            .encode(&header_for(&large, 0, 0), &batch_at(&large, 0), &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        let parsed = FrameHeader::parse(&out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            parsed.layout,
            Layout::Arrow,
            "large values are read without copying"
        );
        let many = sample(SMALL_BATCH_ROWS + 1);
        let mut out = Vec::new();
        FrameEncoder::default()
            .encode(&header_for(&many, 0, 0), &batch_at(&many, 0), &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        let parsed = FrameHeader::parse(&out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((parsed.layout, parsed.codec), (Layout::Arrow, Codec::None));
    }

    /// Rewrites a frame's version (and form), base offset, last offset delta and CRC in place.
    fn rewrite(frame: &mut [u8], version: u8, form: u8, base: i64, last_delta: i32) {
        frame[8] = version;
        frame[9] = form;
        frame[16..24].copy_from_slice(&base.to_le_bytes());
        frame[24..28].copy_from_slice(&last_delta.to_le_bytes());
        let crc = quiver_common::crc::crc32c(&frame[8..]);
        frame[4..8].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn frames_sealed_after_encoding_are_the_frames_encoded_whole() {
        // (records, attributes, whether column buffers are written from the batch)
        for (records, attrs, borrows) in [
            (sample(1), 0, false),
            (sample(20), 0, true),
            (sample(1_000), 0, true),
            (sample(20), compression::codec::LZ4, false),
            (sample(0), compression::codec::ZSTD, false),
        ] {
            let base = 1_234_567;
            let mut whole = vec![0xAA; 8];
            FrameEncoder::default()
                .encode(
                    &header_for(&records, base, attrs),
                    &batch_at(&records, base),
                    &mut whole,
                )
                .unwrap_or_else(|e| panic!("{e}"));
            let mut sealed = vec![0xAA; 8];
            let unsealed = FrameEncoder::default()
                .encode_unsealed(
                    &header_for(&records, 0, attrs),
                    &batch_at(&records, 0),
                    &mut sealed,
                )
                .unwrap_or_else(|e| panic!("{e}"));
            unsealed.seal(&mut sealed, base);
            assert_eq!(
                !unsealed.borrowed.is_empty(),
                borrows,
                "{} records",
                records.len()
            );
            let sealed: Vec<u8> = sealed[..8]
                .iter()
                .chain(unsealed.io_slices(&sealed).iter().flat_map(|s| s.iter()))
                .copied()
                .collect();
            assert_eq!(unsealed.len(), sealed.len() - 8);
            assert_eq!(
                sealed,
                whole,
                "{} records, attributes {attrs}",
                records.len()
            );
            let frame = sealed[8..].to_vec();
            let parsed = FrameHeader::parse(&frame).unwrap_or_else(|e| panic!("{e}"));
            assert!(parsed.relative_offsets && crc_matches(&frame, &parsed));
            assert_eq!(parsed.batch.base_offset, base);
            let decoded =
                decode(&Buffer::from_vec(frame), &parsed).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                decoded.column(0).as_ref(),
                batch_at(&records, base).column(0).as_ref()
            );
        }
    }

    #[test]
    fn frames_of_earlier_versions_hold_offsets_as_they_are() {
        let records = sample(20);
        for (layout, codec, version) in [
            (Layout::Arrow, Codec::None, VERSION_ARROW),
            (Layout::Arrow, Codec::Zstd, VERSION_FORMS),
            (Layout::Kafka, Codec::None, VERSION_FORMS),
            (Layout::Kafka, Codec::Lz4, VERSION_FORMS),
        ] {
            // Encoded at base 0, the body holds the offsets 40.. as they are: what versions 1
            // and 2 wrote for a batch at 40.
            let mut frame = Vec::new();
            let header = BatchHeader {
                last_offset_delta: 59,
                ..header_for(&records, 0, 0)
            };
            FrameEncoder::default()
                .encode_as(&header, &batch_at(&records, 40), layout, codec, &mut frame)
                .unwrap_or_else(|e| panic!("{e}"));
            let form = if version == VERSION_ARROW {
                0
            } else {
                frame[9]
            };
            rewrite(&mut frame, version, form, 40, 19);
            let parsed = FrameHeader::parse(&frame).unwrap_or_else(|e| panic!("{e}"));
            assert!(!parsed.relative_offsets && crc_matches(&frame, &parsed));
            let buf = Buffer::from_vec(frame);
            for decoded in [decode(&buf, &parsed), decode_known(&buf, &parsed)] {
                let decoded = decoded.unwrap_or_else(|e| panic!("{layout:?} {codec:?}: {e}"));
                assert_eq!(
                    decoded.column(0).as_ref(),
                    batch_at(&records, 40).column(0).as_ref(),
                    "version {version}, {layout:?} {codec:?}"
                );
            }
        }
    }

    #[test]
    fn the_kafka_codec_in_the_attributes_picks_the_codec_at_rest() {
        let rows = sample(50);
        for (kafka, at_rest) in [
            (compression::codec::NONE, Codec::None),
            (compression::codec::GZIP, Codec::Zstd),
            (compression::codec::SNAPPY, Codec::Lz4),
            (compression::codec::LZ4, Codec::Lz4),
            (compression::codec::ZSTD, Codec::Zstd),
        ] {
            let header = header_for(&rows, 0, kafka | attributes::TRANSACTIONAL);
            let mut out = Vec::new();
            FrameEncoder::default()
                .encode(&header, &batch_at(&rows, 0), &mut out)
                .unwrap_or_else(|e| panic!("{e}"));
            let parsed = FrameHeader::parse(&out).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(parsed.codec, at_rest);
            let layout = if at_rest == Codec::None {
                Layout::Arrow
            } else {
                Layout::Kafka
            };
            assert_eq!(
                parsed.layout, layout,
                "compressed frames hold the record encoding"
            );
            assert_eq!(parsed.batch.producer.attributes, header.producer.attributes);
        }
    }

    #[test]
    fn compressible_records_are_stored_compressed() {
        let rows: Vec<Record> = (0..1_000)
            .map(|i| {
                let json = format!(
                    r#"{{"order_id":{i},"region":"eu-west","amount":{}.5}}"#,
                    i % 97
                );
                Record::new(
                    1_700_000_000_000 + i,
                    Some(b"customer-1"),
                    Some(json.as_bytes()),
                )
            })
            .collect();
        let plain = round_trip(&rows, Layout::Arrow, Codec::None).len();
        for codec in [Codec::Lz4, Codec::Zstd] {
            let packed = round_trip(&rows, Layout::Arrow, codec).len();
            assert!(packed * 3 < plain, "{codec:?}: {packed} bytes of {plain}");
        }
    }

    #[test]
    fn damage_is_found_before_decompression() {
        for codec in [Codec::None, Codec::Lz4, Codec::Zstd] {
            let mut out = round_trip(&sample(20), Layout::Arrow, codec);
            let parsed = FrameHeader::parse(&out).unwrap_or_else(|e| panic!("{e}"));
            let mut header_hit = out.clone();
            out[HEADER_LEN + 3] ^= 1;
            assert!(!crc_matches(&out, &parsed), "{codec:?}");
            // The CRC covers the header too, after the body: a changed base offset is found.
            header_hit[17] ^= 1;
            assert!(!crc_matches(&header_hit, &parsed), "{codec:?} header");
        }
    }

    #[test]
    fn unknown_forms_and_bad_padding_are_refused() {
        let out = round_trip(&sample(3), Layout::Kafka, Codec::Lz4);
        let mut bad = out.clone();
        bad[9] = 0x21;
        assert!(FrameHeader::parse(&bad).is_err_and(|e| e.contains("layout")));
        let mut bad = out.clone();
        bad[9] = 0x13;
        assert!(FrameHeader::parse(&bad).is_err_and(|e| e.contains("codec")));
        let mut bad = out.clone();
        bad[58] = 9;
        assert!(FrameHeader::parse(&bad).is_err_and(|e| e.contains("padding")));
        let mut bad = out;
        bad[8] = 4;
        assert!(FrameHeader::parse(&bad).is_err_and(|e| e.contains("version")));
    }
}
