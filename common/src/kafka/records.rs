//! Kafka record batches (magic 2) to and from envelope Arrow batches.
//!
//! Both directions work on bytes directly: produce decodes records straight into Arrow builders
//! and fetch encodes Arrow columns straight into the response buffer, with no per-record
//! allocation. `kafka-protocol`'s `Record` type is not used on these paths.

use arrow::array::Array;
use arrow::buffer::NullBuffer;
use arrow::record_batch::RecordBatch;

use super::compression;
use crate::batch::{BatchHeader, attributes};
use crate::record::{EnvelopeBuilder, EnvelopeColumns};

/// Bytes of a v2 batch header, up to and including the record count.
pub const BATCH_HEADER_LEN: usize = 61;
/// Offset of the CRC'd part (attributes onwards).
const CRC_START: usize = 21;
/// The fewest bytes a v2 record takes: its length, attributes, timestamp delta, offset delta,
/// key length, value length and header count, one byte each.
pub const RECORD_BYTES_MIN: usize = 7;

/// How many records `record_bytes` bytes of (uncompressed) records can hold, at most `record_count`:
/// the capacity to reserve for a batch whose count came from outside. A batch's count is
/// untrusted, so it never sizes an allocation by itself.
pub fn records_bound(record_count: i32, record_bytes: usize) -> usize {
    usize::try_from(record_count)
        .unwrap_or(0)
        .min(record_bytes / RECORD_BYTES_MIN)
}

/// Why a batch from a client was refused, with the Kafka error it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// CORRUPT_MESSAGE: framing or CRC is wrong.
    Corrupt(String),
    /// UNSUPPORTED_FOR_MESSAGE_FORMAT: magic 0 or 1.
    UnsupportedMagic(i8),
    /// INVALID_RECORD: a record inside a sound batch is malformed.
    InvalidRecord(String),
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::Corrupt(m) => write!(f, "corrupt record batch: {m}"),
            RecordError::UnsupportedMagic(m) => write!(
                f,
                "record batch magic {m} is not supported; use a client that writes magic 2 (Kafka 0.11+)"
            ),
            RecordError::InvalidRecord(m) => write!(f, "invalid record: {m}"),
        }
    }
}

/// A parsed v2 batch header and its records section (still compressed, if it is).
#[derive(Debug, Clone, Copy)]
pub struct KafkaBatch<'a> {
    pub base_offset: i64,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
    /// The whole batch as sent (for its size).
    pub raw: &'a [u8],
    pub records: &'a [u8],
}

impl KafkaBatch<'_> {
    pub fn compression(&self) -> i16 {
        self.attributes & 0x07
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & attributes::TRANSACTIONAL != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & attributes::CONTROL != 0
    }
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(x)
}

/// Splits a produce payload into its batches, checking length, magic and CRC of each.
pub fn parse_batches(bytes: &[u8]) -> Result<Vec<KafkaBatch<'_>>, RecordError> {
    batches(bytes).collect()
}

/// [`parse_batches`] one batch at a time, without collecting them (clients send one batch per
/// partition and request, which a vector would cost an allocation to hold). It ends after the
/// first error.
pub fn batches(bytes: &[u8]) -> Batches<'_> {
    Batches { bytes }
}

/// The batches of a produce payload ([`batches`]).
#[derive(Debug, Clone)]
pub struct Batches<'a> {
    /// What is left to split; emptied by an error.
    bytes: &'a [u8],
}

impl<'a> Iterator for Batches<'a> {
    type Item = Result<KafkaBatch<'a>, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.bytes.is_empty() {
            return None;
        }
        let parsed = split_batch(self.bytes);
        self.bytes = match &parsed {
            Ok((_, rest)) => rest,
            Err(_) => &[],
        };
        Some(parsed.map(|(batch, _)| batch))
    }
}

/// The first batch of `bytes`, checked, and the bytes after it.
fn split_batch(bytes: &[u8]) -> Result<(KafkaBatch<'_>, &[u8]), RecordError> {
    if bytes.len() < BATCH_HEADER_LEN {
        return Err(RecordError::Corrupt(format!(
            "{} bytes are too few for a batch header",
            bytes.len()
        )));
    }
    let batch_length = be_i32(bytes, 8);
    let magic = bytes[16] as i8;
    if magic != 2 {
        return Err(RecordError::UnsupportedMagic(magic));
    }
    let total = usize::try_from(batch_length)
        .ok()
        .and_then(|l| l.checked_add(12));
    let Some(total) = total.filter(|&t| t >= BATCH_HEADER_LEN && t <= bytes.len()) else {
        return Err(RecordError::Corrupt(format!(
            "batch length {batch_length} does not fit the {} bytes sent",
            bytes.len()
        )));
    };
    let (raw, rest) = bytes.split_at(total);
    let crc = be_i32(raw, 17) as u32;
    if crate::crc::crc32c(&raw[CRC_START..]) != crc {
        return Err(RecordError::Corrupt("CRC mismatch".into()));
    }
    let record_count = be_i32(raw, 57);
    if record_count < 0 {
        return Err(RecordError::Corrupt(format!(
            "negative record count {record_count}"
        )));
    }
    let batch = KafkaBatch {
        base_offset: be_i64(raw, 0),
        attributes: be_i16(raw, 21),
        last_offset_delta: be_i32(raw, 23),
        base_timestamp: be_i64(raw, 27),
        max_timestamp: be_i64(raw, 35),
        producer_id: be_i64(raw, 43),
        producer_epoch: be_i16(raw, 51),
        base_sequence: be_i32(raw, 53),
        record_count,
        raw,
        records: &raw[BATCH_HEADER_LEN..],
    };
    Ok((batch, rest))
}

/// A cursor over record bytes with Kafka's zigzag varints.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    #[inline(always)]
    fn varlong(&mut self) -> Result<i64, RecordError> {
        match self.zigzag() {
            Some(z) => Ok(((z >> 1) as i64) ^ -((z & 1) as i64)),
            None => Err(self.varint_error()),
        }
    }

    /// The next varint's raw (zigzag) value; `None` if it runs past the end or past ten bytes.
    #[inline(always)]
    fn zigzag(&mut self) -> Option<u64> {
        let rest = self.buf.get(self.pos..)?;
        // Most fields of a record (attributes, deltas, short lengths) take one byte.
        let &first = rest.first()?;
        if first < 0x80 {
            self.pos += 1;
            return Some(u64::from(first));
        }
        // Lengths of records and values up to 8 KiB, and offset deltas up to 8,191, take two.
        if let Some(&second) = rest.get(1)
            && second < 0x80
        {
            self.pos += 2;
            return Some(u64::from(first & 0x7f) | u64::from(second) << 7);
        }
        let mut value = 0u64;
        for (i, &b) in rest.iter().take(10).enumerate() {
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                self.pos += i + 1;
                return Some(value);
            }
        }
        None
    }

    /// Why the varint at the cursor did not decode.
    #[cold]
    fn varint_error(&self) -> RecordError {
        if self.buf.len().saturating_sub(self.pos) >= 10 {
            RecordError::InvalidRecord("varint is too long".into())
        } else {
            RecordError::InvalidRecord("varint runs past the end of the batch".into())
        }
    }

    #[inline(always)]
    fn varint(&mut self) -> Result<i32, RecordError> {
        let v = self.varlong()?;
        i32::try_from(v).map_err(|_| Self::out_of_range(v))
    }

    #[cold]
    fn out_of_range(v: i64) -> RecordError {
        RecordError::InvalidRecord(format!("varint {v} is out of range"))
    }

    /// A length-prefixed field; `None` for length -1. Read from the zigzag value directly: a
    /// length n ≥ 0 is 2n, and -1 is 1.
    #[inline(always)]
    fn nullable(&mut self) -> Result<Option<&'a [u8]>, RecordError> {
        let Some(z) = self.zigzag() else {
            return Err(self.varint_error());
        };
        if z & 1 == 1 {
            return if z == 1 {
                Ok(None)
            } else {
                Err(Self::bad_length(z))
            };
        }
        let len = (z >> 1) as usize;
        match self.buf.get(self.pos..).and_then(|rest| rest.get(..len)) {
            Some(field) if z >> 1 <= i32::MAX as u64 => {
                self.pos += len;
                Ok(Some(field))
            }
            _ => Err(Self::bad_length(z)),
        }
    }

    /// Why a field of zigzag length `z` cannot be read.
    #[cold]
    fn bad_length(z: u64) -> RecordError {
        let n = ((z >> 1) as i64) ^ -((z & 1) as i64);
        if i32::try_from(n).is_err() {
            RecordError::InvalidRecord(format!("varint {n} is out of range"))
        } else if n < 0 {
            RecordError::InvalidRecord(format!("negative length {n}"))
        } else {
            RecordError::InvalidRecord(format!(
                "a field of {n} bytes runs past the end of its record"
            ))
        }
    }
}

/// Reusable space for decoding (header slices of one record).
#[derive(Debug, Default)]
pub struct DecodeScratch {
    decompressed: Vec<u8>,
}

/// Decodes the records of `batch` into `builder` (timestamps resolved, offsets left to the log).
/// `max_uncompressed` caps how large a compressed batch may expand.
pub fn decode_records(
    batch: &KafkaBatch<'_>,
    builder: &mut EnvelopeBuilder,
    scratch: &mut DecodeScratch,
    max_uncompressed: usize,
) -> Result<(), RecordError> {
    decode_into(batch, builder, scratch, max_uncompressed)
}

/// Like [`decode_records`], and pushes each record's offset (base offset plus its offset delta)
/// onto `offsets`: what a reader of fetched batches needs, since a compacted batch has gaps.
pub fn decode_records_with_offsets(
    batch: &KafkaBatch<'_>,
    builder: &mut EnvelopeBuilder,
    scratch: &mut DecodeScratch,
    max_uncompressed: usize,
    offsets: &mut Vec<i64>,
) -> Result<(), RecordError> {
    let mut sink = WithOffsets {
        builder,
        offsets,
        base_offset: batch.base_offset,
    };
    decode_into(batch, &mut sink, scratch, max_uncompressed)
}

/// What a check of an uncompressed batch's records found ([`check_records`]): the facts a log
/// needs to store the records as they came, without decoding them into columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordFacts {
    /// Records in the batch.
    pub count: usize,
    /// The first record's timestamp.
    pub first_timestamp: i64,
    pub min_timestamp: i64,
    pub max_timestamp: i64,
    /// The largest record's key, value and header bytes together (what `max.message.bytes`
    /// bounds per record).
    pub max_record_size: usize,
    /// Whether some record has a null key (refused by compacted topics).
    pub null_key: bool,
    /// Whether the records' offset deltas are 0, 1, 2, ... as producers write them: only then
    /// do the bytes read back as the offsets the log assigns.
    pub offsets_in_order: bool,
}

/// Checks every record of an uncompressed `batch` as [`decode_records`] does (the same errors
/// for the same bytes) without decoding them anywhere: what storing a small batch as the bytes
/// it came in needs. A compressed batch is refused: decode it.
pub fn check_records(batch: &KafkaBatch<'_>) -> Result<RecordFacts, RecordError> {
    if batch.compression() != compression::codec::NONE {
        return Err(RecordError::InvalidRecord(
            "a compressed batch is decoded, not checked in place".into(),
        ));
    }
    let mut facts = RecordFacts {
        count: 0,
        first_timestamp: batch.base_timestamp,
        min_timestamp: i64::MAX,
        max_timestamp: i64::MIN,
        max_record_size: 0,
        null_key: false,
        offsets_in_order: true,
    };
    decode_into(batch, &mut facts, &mut DecodeScratch::default(), 0)?;
    Ok(facts)
}

/// Where decoded records go.
trait RecordSink {
    fn record(
        &mut self,
        offset_delta: i32,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    );
}

impl RecordSink for EnvelopeBuilder {
    #[inline(always)]
    fn record(
        &mut self,
        _offset_delta: i32,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) {
        self.append(timestamp, key, value, headers);
    }
}

/// A builder that also keeps each record's offset.
struct WithOffsets<'b> {
    builder: &'b mut EnvelopeBuilder,
    offsets: &'b mut Vec<i64>,
    base_offset: i64,
}

impl RecordSink for WithOffsets<'_> {
    #[inline(always)]
    fn record(
        &mut self,
        offset_delta: i32,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) {
        self.offsets
            .push(self.base_offset.wrapping_add(i64::from(offset_delta)));
        self.builder.append(timestamp, key, value, headers);
    }
}

impl RecordSink for RecordFacts {
    #[inline(always)]
    fn record(
        &mut self,
        offset_delta: i32,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) {
        if self.count == 0 {
            self.first_timestamp = timestamp;
        }
        self.offsets_in_order &= i64::from(offset_delta) == self.count as i64;
        self.count += 1;
        self.min_timestamp = self.min_timestamp.min(timestamp);
        self.max_timestamp = self.max_timestamp.max(timestamp);
        self.null_key |= key.is_none();
        let header_bytes: usize = headers
            .iter()
            .map(|(k, v)| k.len() + v.map_or(0, <[u8]>::len))
            .sum();
        let size = key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len) + header_bytes;
        self.max_record_size = self.max_record_size.max(size);
    }
}

fn decode_into(
    batch: &KafkaBatch<'_>,
    sink: &mut impl RecordSink,
    scratch: &mut DecodeScratch,
    max_uncompressed: usize,
) -> Result<(), RecordError> {
    let records: &[u8] = match batch.compression() {
        compression::codec::NONE => batch.records,
        codec => {
            scratch.decompressed = compression::decompress(codec, batch.records, max_uncompressed)
                .map_err(RecordError::Corrupt)?;
            &scratch.decompressed
        }
    };
    // A count the bytes cannot hold is refused before any record is decoded.
    if usize::try_from(batch.record_count).unwrap_or(0) > records.len() / RECORD_BYTES_MIN {
        return Err(RecordError::InvalidRecord(format!(
            "batch says {} records but its {} bytes of records hold at most {}",
            batch.record_count,
            records.len(),
            records.len() / RECORD_BYTES_MIN
        )));
    }
    let mut cur = Cursor {
        buf: records,
        pos: 0,
    };
    let mut headers: Vec<(&str, Option<&[u8]>)> = Vec::new();
    for i in 0..batch.record_count {
        let len = cur.varint()?;
        if len < 0 {
            return Err(RecordError::InvalidRecord(format!(
                "record {i} has negative length {len}"
            )));
        }
        let start = cur.pos;
        let end = start
            .checked_add(len as usize)
            .filter(|&e| e <= records.len());
        let Some(end) = end else {
            return Err(RecordError::InvalidRecord(format!(
                "record {i} of {len} bytes runs past the end of the batch"
            )));
        };
        let mut rec = Cursor {
            buf: &records[..end],
            pos: start,
        };
        // Attributes: unused in v2, and the record is not empty.
        if start == end {
            return Err(RecordError::InvalidRecord(
                "an empty record has no attributes byte".into(),
            ));
        }
        rec.pos += 1;
        let ts_delta = rec.varlong()?;
        let offset_delta = rec.varint()?;
        let key = rec.nullable()?;
        let value = rec.nullable()?;
        let header_count = rec.varint()?;
        if header_count < 0 || header_count as usize > end - rec.pos {
            return Err(RecordError::InvalidRecord(format!(
                "record {i} claims {header_count} headers"
            )));
        }
        headers.clear();
        for _ in 0..header_count {
            let k = rec.nullable()?.ok_or_else(|| {
                RecordError::InvalidRecord(format!("record {i} has a header with a null key"))
            })?;
            let k = std::str::from_utf8(k).map_err(|_| {
                RecordError::InvalidRecord(format!("record {i} has a header key that is not UTF-8"))
            })?;
            let v = rec.nullable()?;
            headers.push((k, v));
        }
        if rec.pos != end {
            return Err(RecordError::InvalidRecord(format!(
                "record {i} has {} bytes left over",
                end - rec.pos
            )));
        }
        cur.pos = end;
        sink.record(
            offset_delta,
            batch.base_timestamp.wrapping_add(ts_delta),
            key,
            value,
            &headers,
        );
    }
    if cur.pos != records.len() {
        return Err(RecordError::InvalidRecord(format!(
            "batch says {} records but has {} more bytes after them",
            batch.record_count,
            records.len() - cur.pos
        )));
    }
    Ok(())
}

#[inline]
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

#[inline]
fn varint_len(v: i64) -> usize {
    let z = zigzag(v);
    (64 - (z | 1).leading_zeros()).div_ceil(7) as usize
}

#[inline]
fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = zigzag(v);
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// A record's length and fixed fields, built on the stack: the fields (a byte and up to four
/// zigzag varints of at most ten bytes) after [`RecordPrefix::ROOM`] bytes, into whose end the
/// record's length goes once the fields are known. The buffer is reused from record to record
/// and indexed modulo its size, which the fields never reach, so writes need no bounds checks.
struct RecordPrefix {
    buf: [u8; RecordPrefix::SIZE],
    len: usize,
}

impl Default for RecordPrefix {
    fn default() -> Self {
        RecordPrefix {
            buf: [0; RecordPrefix::SIZE],
            len: RecordPrefix::ROOM,
        }
    }
}

impl RecordPrefix {
    /// Room for the record length's varint (a record is shorter than 2^31 bytes).
    const ROOM: usize = 5;
    /// A power of two above `ROOM` + 1 + 4 × 10, the most the fields take.
    const SIZE: usize = 64;
    /// Prefixes up to this long are copied out as a fixed-size block, without a `memcpy` call.
    const SHORT: usize = 16;

    /// Starts the next record's fields.
    #[inline]
    fn clear(&mut self) {
        self.len = RecordPrefix::ROOM;
    }

    #[inline]
    fn put_byte(&mut self, b: u8) {
        self.buf[self.len & (RecordPrefix::SIZE - 1)] = b;
        self.len += 1;
    }

    #[inline]
    fn put(&mut self, v: i64) {
        let mut z = zigzag(v);
        if z < 0x80 {
            self.put_byte(z as u8);
            return;
        }
        while z >= 0x80 {
            self.put_byte((z as u8) | 0x80);
            z >>= 7;
        }
        self.put_byte(z as u8);
    }

    /// Bytes of the fields so far.
    #[inline]
    fn fields_len(&self) -> usize {
        self.len - RecordPrefix::ROOM
    }

    /// Appends the record's length `body` as a varint, then the fields, to `out`.
    #[inline]
    fn write_with_length(&mut self, body: i64, out: &mut Vec<u8>) {
        let start = RecordPrefix::ROOM - varint_len(body).min(RecordPrefix::ROOM);
        let mut z = zigzag(body);
        for b in &mut self.buf[start..RecordPrefix::ROOM] {
            *b = (z as u8 & 0x7f) | 0x80;
            z >>= 7;
        }
        self.buf[RecordPrefix::ROOM - 1] &= 0x7f;
        let len = self.len.min(RecordPrefix::SIZE) - start;
        if len <= RecordPrefix::SHORT && start + RecordPrefix::SHORT <= RecordPrefix::SIZE {
            // A fixed-size copy compiles to two moves; the bytes past the prefix are cut off.
            let at = out.len();
            out.extend_from_slice(&self.buf[start..start + RecordPrefix::SHORT]);
            out.truncate(at + len);
        } else {
            out.extend_from_slice(&self.buf[start..start + len]);
        }
    }
}

/// The rows of a batch in the most common shape, encoded by a loop of their own: no headers,
/// every value set, and keys either all null or all set.
struct PlainRows<'a> {
    timestamps: &'a [i64],
    base_ts: i64,
    offsets: &'a [i64],
    base_offset: i64,
    /// Key offsets and data; `None` when every key is null.
    keys: Option<(&'a [i32], &'a [u8])>,
    value_offsets: &'a [i32],
    value_data: &'a [u8],
}

impl PlainRows<'_> {
    fn encode(&self, fixed: &mut RecordPrefix, out: &mut Vec<u8>) {
        let values = self.value_offsets.windows(2);
        let rows = self.timestamps.iter().zip(self.offsets).zip(values);
        for (row, ((&ts, &offset), bounds)) in rows.enumerate() {
            let value = &self.value_data[bounds[0] as usize..bounds[1] as usize];
            fixed.clear();
            fixed.put_byte(0); // attributes
            fixed.put(ts.wrapping_sub(self.base_ts));
            fixed.put(offset - self.base_offset);
            let key = self
                .keys
                .map(|(offsets, data)| &data[offsets[row] as usize..offsets[row + 1] as usize]);
            // The body: the fields, the key and the value's length after it, the value, and
            // a header count of 0 (one byte).
            let body = match key {
                None => {
                    fixed.put_byte(1); // a null key: -1
                    fixed.put(value.len() as i64);
                    fixed.fields_len() + value.len() + 1
                }
                Some(key) => {
                    fixed.put(key.len() as i64);
                    let value_len = value.len() as i64;
                    fixed.fields_len() + key.len() + varint_len(value_len) + value.len() + 1
                }
            };
            fixed.write_with_length(body as i64, out);
            if let Some(key) = key {
                out.extend_from_slice(key);
                put_varint(out, value.len() as i64);
            }
            out.extend_from_slice(value);
            out.push(0);
        }
    }
}

/// Appends one v2 batch (uncompressed) holding the rows of `records` to `out`.
/// `header` gives the batch-level facts; rows may start after its base offset (a sliced batch).
pub fn encode_batch(
    out: &mut Vec<u8>,
    header: &BatchHeader,
    records: &RecordBatch,
) -> crate::Result<()> {
    encode_batch_in_epoch(out, header, records, 0)
}

/// Appends one v2 batch holding the rows of `records` to `out`, its records section compressed
/// with `codec_id` (see [`compression::codec`]; `NONE` writes it uncompressed): what a producer
/// sends. The compression bits of `header`'s attributes are replaced by `codec_id`.
pub fn encode_batch_compressed(
    out: &mut Vec<u8>,
    header: &BatchHeader,
    records: &RecordBatch,
    codec_id: i16,
) -> crate::Result<()> {
    encode_batch_compressed_in_epoch(out, header, records, 0, codec_id)
}

/// [`encode_batch_compressed`] with the partition leader epoch the batch was written in: what
/// Fetch sends for a batch stored with a codec.
pub fn encode_batch_compressed_in_epoch(
    out: &mut Vec<u8>,
    header: &BatchHeader,
    records: &RecordBatch,
    leader_epoch: i32,
    codec_id: i16,
) -> crate::Result<()> {
    if codec_id == compression::codec::NONE {
        return encode_batch_in_epoch(out, header, records, leader_epoch);
    }
    let start = out.len();
    // The CRC covers the compressed records, so it is computed once they are.
    encode_batch_without_crc(out, header, records, leader_epoch)?;
    if out.len() == start {
        return Ok(());
    }
    let compressed = compression::compress(codec_id, &out[start + BATCH_HEADER_LEN..])
        .map_err(crate::Error::InvalidRecords)?;
    let batch_length = i32::try_from(BATCH_HEADER_LEN - 12 + compressed.len()).map_err(|_| {
        crate::Error::InvalidRecords(format!(
            "a batch of {} compressed bytes is too large for Kafka",
            compressed.len()
        ))
    })?;
    out.truncate(start + BATCH_HEADER_LEN);
    out.extend_from_slice(&compressed);
    let h = &mut out[start..start + BATCH_HEADER_LEN];
    h[8..12].copy_from_slice(&batch_length.to_be_bytes());
    let attributes = (be_i16(h, 21) & !0x07) | (codec_id & 0x07);
    h[21..23].copy_from_slice(&attributes.to_be_bytes());
    write_crc(&mut out[start..]);
    Ok(())
}

/// Writes the CRC of the batch that `batch` holds (its header and records, complete).
fn write_crc(batch: &mut [u8]) {
    let crc = crate::crc::crc32c(&batch[CRC_START..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// [`encode_batch`] with the partition leader epoch the batch was written in (what Fetch
/// sends, so clients can validate their position with `OffsetForLeaderEpoch`).
pub fn encode_batch_in_epoch(
    out: &mut Vec<u8>,
    header: &BatchHeader,
    records: &RecordBatch,
    leader_epoch: i32,
) -> crate::Result<()> {
    let start = out.len();
    encode_batch_without_crc(out, header, records, leader_epoch)?;
    if out.len() > start {
        write_crc(&mut out[start..]);
    }
    Ok(())
}

/// [`encode_batch_in_epoch`] with the batch's CRC left zero: for a caller that keeps the
/// records and not the batch header (the log's Kafka-layout frames, which have a CRC of their
/// own). Nothing is written for a batch without rows.
pub fn encode_batch_without_crc(
    out: &mut Vec<u8>,
    header: &BatchHeader,
    records: &RecordBatch,
    leader_epoch: i32,
) -> crate::Result<()> {
    let cols = EnvelopeColumns::try_new(records)?;
    let n = records.num_rows();
    if n == 0 {
        return Ok(());
    }
    let base_offset = cols.offsets.value(0);
    let ts = cols.timestamps.values();
    let base_ts = ts[0];
    let start = out.len();
    let data_bytes = cols.values.values().len() + cols.keys.values().len();
    // Each row adds its fixed fields and length (a short prefix is written 16 bytes wide).
    out.reserve(BATCH_HEADER_LEN + data_bytes + n * 24);
    out.resize(start + BATCH_HEADER_LEN, 0);

    let key_nulls = cols.keys.nulls().cloned();
    let value_nulls = cols.values.nulls().cloned();
    let key_offsets = cols.keys.value_offsets();
    let value_offsets = cols.values.value_offsets();
    let key_data = cols.keys.value_data();
    let value_data = cols.values.value_data();
    let offsets = cols.offsets.values();
    let lists = cols.headers.value_offsets();
    let any_headers = lists[n] != lists[0];
    let field_len =
        |f: Option<&[u8]>| f.map_or(varint_len(-1), |b| varint_len(b.len() as i64) + b.len());
    let put_field = |out: &mut Vec<u8>, f: Option<&[u8]>| match f {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    };
    let mut fixed = RecordPrefix::default();
    let null_keys = key_nulls.as_ref().map_or(0, NullBuffer::null_count);
    let null_values = value_nulls.as_ref().map_or(0, NullBuffer::null_count);
    let plain = !any_headers && null_values == 0 && (null_keys == 0 || null_keys == n);
    if plain {
        let keys = (null_keys == 0).then_some((key_offsets, key_data));
        let rows = PlainRows {
            timestamps: &ts[..n],
            base_ts,
            offsets: &offsets[..n],
            base_offset,
            keys,
            value_offsets,
            value_data,
        };
        rows.encode(&mut fixed, out);
    }
    // The general loop, for the batches `PlainRows` does not take.
    let general_rows = if plain { 0 } else { n };
    for row in 0..general_rows {
        let key = if key_nulls.as_ref().is_some_and(|b| b.is_null(row)) {
            None
        } else {
            Some(&key_data[key_offsets[row] as usize..key_offsets[row + 1] as usize])
        };
        let value = if value_nulls.as_ref().is_some_and(|b| b.is_null(row)) {
            None
        } else {
            Some(&value_data[value_offsets[row] as usize..value_offsets[row + 1] as usize])
        };
        let ts_delta = ts[row].wrapping_sub(base_ts);
        let offset_delta = offsets[row] - base_offset;
        // Headers are read in place from the Arrow columns: no per-record allocation.
        let headers = if any_headers {
            cols.header_range(row)
        } else {
            None
        };
        let header_at = |j: usize| {
            headers
                .as_ref()
                .map(|(k, v, _)| (k.value(j).as_bytes(), v.is_valid(j).then(|| v.value(j))))
        };
        let header_indexes = headers.as_ref().map_or(0..0, |(_, _, r)| r.clone());
        // The record's fixed fields, and the value's length when no key sits between them, go
        // through one stack buffer (after room for the record's length, which depends on
        // them), so a record costs a few copies rather than a capacity check per byte.
        let value_len = value.map_or(-1, |v| v.len() as i64);
        fixed.clear();
        fixed.put_byte(0); // attributes
        fixed.put(ts_delta);
        fixed.put(offset_delta);
        fixed.put(key.map_or(-1, |k| k.len() as i64));
        if key.is_none() {
            fixed.put(value_len);
        }
        let mut body = fixed.fields_len()
            + key.map_or(0, |k| k.len() + varint_len(value_len))
            + value.map_or(0, <[u8]>::len)
            + varint_len(header_indexes.len() as i64);
        for (hk, hv) in header_indexes.clone().filter_map(header_at) {
            body += field_len(Some(hk)) + field_len(hv);
        }
        fixed.write_with_length(body as i64, out);
        if let Some(k) = key {
            out.extend_from_slice(k);
            put_varint(out, value_len);
        }
        if let Some(v) = value {
            out.extend_from_slice(v);
        }
        put_varint(out, header_indexes.len() as i64);
        for (hk, hv) in header_indexes.filter_map(header_at) {
            put_field(out, Some(hk));
            put_field(out, hv);
        }
    }
    let max_ts = if header.producer.attributes & attributes::LOG_APPEND_TIME != 0 {
        header.max_timestamp
    } else {
        ts.iter().copied().max().unwrap_or(base_ts)
    };
    // The stored batch may end past its last surviving row (compaction); its end is kept.
    debug_assert!(header.last_offset() >= cols.offsets.value(n - 1));
    let batch_length = (out.len() - start - 12) as i32;
    let rows = BatchRows {
        first_offset: base_offset,
        base_timestamp: base_ts,
        max_timestamp: max_ts,
        count: n as i32,
    };
    rows.write_header(
        header,
        batch_length,
        leader_epoch,
        compression::codec::NONE,
        &mut out[start..start + BATCH_HEADER_LEN],
    );
    Ok(())
}

/// What a Kafka batch header says of the rows it holds, beyond the stored batch's own header.
struct BatchRows {
    /// Offset of the first row (the batch's base offset).
    first_offset: i64,
    /// The timestamp the rows' deltas count from.
    base_timestamp: i64,
    max_timestamp: i64,
    count: i32,
}

impl BatchRows {
    /// Fills in the 61 header bytes of a batch (of `batch_length` bytes after its first 12)
    /// holding these rows of the stored batch `header`, compressed with `codec_id`, the CRC left
    /// zero.
    fn write_header(
        &self,
        header: &BatchHeader,
        batch_length: i32,
        leader_epoch: i32,
        codec_id: i16,
        h: &mut [u8],
    ) {
        // A sliced batch keeps its producer's sequence numbering.
        let skipped = (self.first_offset - header.base_offset).max(0);
        let base_sequence = if header.producer.base_sequence >= 0 {
            ((i64::from(header.producer.base_sequence) + skipped) % (i64::from(i32::MAX) + 1))
                as i32
        } else {
            -1
        };
        let last_offset_delta = (header.last_offset() - self.first_offset) as i32;
        h[0..8].copy_from_slice(&self.first_offset.to_be_bytes());
        h[8..12].copy_from_slice(&batch_length.to_be_bytes());
        h[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
        h[16] = 2;
        h[17..21].fill(0);
        let attributes = (header.producer.attributes & !0x07) | (codec_id & 0x07);
        h[21..23].copy_from_slice(&attributes.to_be_bytes());
        h[23..27].copy_from_slice(&last_offset_delta.to_be_bytes());
        h[27..35].copy_from_slice(&self.base_timestamp.to_be_bytes());
        h[35..43].copy_from_slice(&self.max_timestamp.to_be_bytes());
        h[43..51].copy_from_slice(&header.producer.producer_id.to_be_bytes());
        h[51..53].copy_from_slice(&header.producer.producer_epoch.to_be_bytes());
        h[53..57].copy_from_slice(&base_sequence.to_be_bytes());
        h[57..61].copy_from_slice(&self.count.to_be_bytes());
    }
}

/// Writes one Kafka batch (with its CRC) holding rows already in Kafka's v2 record encoding, as
/// the log keeps a small batch: `header`'s `record_count` rows, their offset deltas counting
/// from `first_offset` and their timestamp deltas from `base_timestamp`, the largest timestamp
/// `header.max_timestamp`. Compressed with `codec_id`: what Fetch sends for such a batch
/// without decoding its rows. Nothing is written for a batch without rows.
pub fn encode_rows_in_epoch(
    out: &mut Vec<u8>,
    header: &BatchHeader,
    first_offset: i64,
    base_timestamp: i64,
    rows: &[u8],
    leader_epoch: i32,
    codec_id: i16,
) -> crate::Result<()> {
    if header.record_count <= 0 {
        return Ok(());
    }
    let compressed;
    let records = if codec_id == compression::codec::NONE {
        rows
    } else {
        compressed = compression::compress(codec_id, rows).map_err(crate::Error::InvalidRecords)?;
        &compressed[..]
    };
    let batch_length = i32::try_from(BATCH_HEADER_LEN - 12 + records.len()).map_err(|_| {
        crate::Error::InvalidRecords(format!(
            "a batch of {} bytes of records is too large for Kafka",
            records.len()
        ))
    })?;
    let start = out.len();
    out.reserve(BATCH_HEADER_LEN + records.len());
    out.resize(start + BATCH_HEADER_LEN, 0);
    let batch = BatchRows {
        first_offset,
        base_timestamp,
        max_timestamp: header.max_timestamp,
        count: header.record_count,
    };
    batch.write_header(
        header,
        batch_length,
        leader_epoch,
        codec_id,
        &mut out[start..],
    );
    out.extend_from_slice(records);
    write_crc(&mut out[start..]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::ProducerInfo;
    use crate::record::{Record, batch_to_records, records_to_batch};
    use arrow::array::Int64Array;
    use std::sync::Arc;

    /// Our decoder's records of one batch (offsets left at 0).
    fn decode_to_records(batch: &KafkaBatch<'_>) -> Result<Vec<Record>, RecordError> {
        let mut builder = EnvelopeBuilder::default();
        decode_records(batch, &mut builder, &mut DecodeScratch::default(), 1 << 20)?;
        Ok(batch_to_records(&builder.finish()).unwrap_or_default())
    }

    fn with_offsets(batch: RecordBatch, base: i64) -> RecordBatch {
        let mut cols = batch.columns().to_vec();
        cols[0] = Arc::new(Int64Array::from_iter_values(
            base..base + batch.num_rows() as i64,
        ));
        RecordBatch::try_new(batch.schema(), cols).unwrap_or(batch)
    }

    #[test]
    fn encode_then_decode_round_trips() {
        let records = vec![
            Record::new(1000, Some(b"k1"), Some(b"v1"))
                .with_header("h1", Some(b"x"))
                .with_header("h2", None),
            Record::new(999, None, None),
            Record::new(1005, Some(b""), Some(&[7u8; 300])),
        ];
        let batch = with_offsets(records_to_batch(&records), 40);
        let header = BatchHeader {
            base_offset: 40,
            last_offset_delta: 2,
            record_count: 3,
            first_timestamp: 1000,
            max_timestamp: 1005,
            producer: ProducerInfo {
                producer_id: 9,
                producer_epoch: 2,
                base_sequence: 17,
                attributes: 0,
            },
        };
        let mut out = Vec::new();
        encode_batch(&mut out, &header, &batch).ok();
        let parsed = parse_batches(&out).unwrap_or_default();
        assert_eq!(parsed.len(), 1);
        let b = parsed[0];
        assert_eq!(
            (
                b.base_offset,
                b.last_offset_delta,
                b.record_count,
                b.producer_id,
                b.base_sequence
            ),
            (40, 2, 3, 9, 17)
        );
        assert_eq!((b.base_timestamp, b.max_timestamp), (1000, 1005));
        let mut builder = EnvelopeBuilder::default();
        decode_records(&b, &mut builder, &mut DecodeScratch::default(), 1 << 20).ok();
        let decoded = batch_to_records(&builder.finish()).unwrap_or_default();
        let expected: Vec<Record> = records
            .iter()
            .map(|r| Record {
                offset: 0,
                ..r.clone()
            })
            .collect();
        assert_eq!(decoded, expected);

        // The same bytes decode with kafka-protocol's own decoder (a second opinion on the format).
        let mut bytes = bytes::Bytes::from(out.clone());
        let theirs = kafka_protocol::records::RecordBatchDecoder::decode_all(&mut bytes).ok();
        let theirs = theirs
            .map(|bs| bs.into_iter().flat_map(|b| b.records).collect::<Vec<_>>())
            .unwrap_or_default();
        assert_eq!(theirs.len(), 3);
        assert_eq!(theirs[0].offset, 40);
        assert_eq!(theirs[2].offset, 42);
        assert_eq!(theirs[0].headers.len(), 2);
        assert_eq!(theirs[1].value, None);
        assert_eq!(theirs[1].timestamp, 999);

        // A sliced batch starts at its first row and keeps the sequence numbering.
        let sliced = batch.slice(1, 2);
        let mut out2 = Vec::new();
        encode_batch(&mut out2, &header, &sliced).ok();
        let p2 = parse_batches(&out2).unwrap_or_default();
        assert_eq!(
            (
                p2[0].base_offset,
                p2[0].last_offset_delta,
                p2[0].base_sequence,
                p2[0].record_count
            ),
            (41, 1, 18, 2)
        );

        // Damage is caught by the CRC.
        out[70] ^= 1;
        assert!(matches!(parse_batches(&out), Err(RecordError::Corrupt(_))));
    }

    /// A Kafka batch of one record (key "k", value "v") at offset 0.
    fn one_record_batch() -> Vec<u8> {
        let batch = with_offsets(
            records_to_batch(&[Record::new(1, Some(b"k"), Some(b"v"))]),
            0,
        );
        let header = BatchHeader {
            base_offset: 0,
            last_offset_delta: 0,
            record_count: 1,
            first_timestamp: 1,
            max_timestamp: 1,
            producer: ProducerInfo::NONE,
        };
        let mut out = Vec::new();
        encode_batch(&mut out, &header, &batch).ok();
        out
    }

    #[test]
    fn batches_one_at_a_time_end_after_the_first_error() {
        let one = one_record_batch();
        let mut payload = [one.as_slice(), one.as_slice()].concat();
        let split: Vec<_> = batches(&payload).collect();
        assert_eq!(split.len(), 2);
        assert!(split.iter().all(|b| b.as_ref().is_ok_and(|b| b.raw == one)));
        // Damage in the second batch: the first still comes, then the error, then nothing (the
        // bytes after it are not taken for batches).
        let second_crc_covered = one.len() + CRC_START + 1;
        payload[second_crc_covered] ^= 1;
        payload.extend_from_slice(&one);
        let mut split = batches(&payload);
        assert!(split.next().is_some_and(|b| b.is_ok()));
        assert!(matches!(split.next(), Some(Err(RecordError::Corrupt(_)))));
        assert!(split.next().is_none());
        assert!(batches(&[]).next().is_none());
    }

    #[test]
    fn hostile_batches_are_refused_without_panics() {
        let good = one_record_batch();
        // Truncations at every length.
        for cut in 0..good.len() {
            assert!(parse_batches(&good[..cut]).is_err() || cut == 0);
        }
        // A record count far beyond the bytes, with a valid CRC.
        let mut lying = good.clone();
        lying[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
        let crc = crate::crc::crc32c(&lying[CRC_START..]);
        lying[17..21].copy_from_slice(&crc.to_be_bytes());
        let parsed = parse_batches(&lying).unwrap_or_default();
        let res = decode_records(
            &parsed[0],
            &mut EnvelopeBuilder::default(),
            &mut DecodeScratch::default(),
            1 << 20,
        );
        assert!(matches!(res, Err(RecordError::InvalidRecord(_))), "{res:?}");
        // Old magic.
        let mut old = good.clone();
        old[16] = 1;
        assert_eq!(
            parse_batches(&old).err(),
            Some(RecordError::UnsupportedMagic(1))
        );
    }

    #[test]
    fn compressed_batches_decode_to_the_same_records_with_every_codec() {
        let records: Vec<Record> = (0..200)
            .map(|i| {
                Record::new(
                    1000 + i,
                    Some(format!("k{i}").as_bytes()),
                    Some(&[b'x'; 100]),
                )
                .with_header("h", Some(b"v"))
            })
            .collect();
        let batch = with_offsets(records_to_batch(&records), 0);
        let header = BatchHeader {
            base_offset: 0,
            last_offset_delta: 199,
            record_count: 200,
            first_timestamp: 1000,
            max_timestamp: 1199,
            producer: ProducerInfo {
                producer_id: 4,
                producer_epoch: 0,
                base_sequence: 10,
                attributes: 0,
            },
        };
        let mut plain = Vec::new();
        encode_batch(&mut plain, &header, &batch).ok();
        for codec in [
            compression::codec::GZIP,
            compression::codec::SNAPPY,
            compression::codec::LZ4,
            compression::codec::ZSTD,
        ] {
            let mut out = Vec::new();
            encode_batch_compressed(&mut out, &header, &batch, codec)
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(out.len() < plain.len() / 2, "codec {codec} compresses");
            let parsed = parse_batches(&out).unwrap_or_default();
            assert_eq!(parsed.len(), 1);
            assert_eq!(parsed[0].compression(), codec);
            assert_eq!((parsed[0].producer_id, parsed[0].base_sequence), (4, 10));
            let decoded =
                decode_to_records(&parsed[0]).unwrap_or_else(|e| panic!("codec {codec}: {e}"));
            assert_eq!(decoded.len(), 200);
            assert_eq!(decoded[199].key.as_deref(), Some(&b"k199"[..]));
            assert_eq!(decoded[5].headers.len(), 1);
        }
    }

    #[test]
    fn record_capacity_is_bounded_by_the_bytes_not_the_count() {
        assert_eq!(records_bound(i32::MAX, 70), 10);
        assert_eq!(records_bound(3, 70), 3);
        assert_eq!(records_bound(-5, 70), 0);
        assert_eq!(records_bound(i32::MAX, 0), 0);
    }

    #[test]
    fn a_check_finds_what_the_log_needs_without_decoding() {
        let records = vec![
            Record::new(1000, Some(b"k1"), Some(b"v1"))
                .with_header("h1", Some(b"xy"))
                .with_header("h2", None),
            Record::new(990, None, Some(&[7u8; 300])),
            Record::new(1005, Some(b""), None),
        ];
        let header = BatchHeader {
            base_offset: 0,
            last_offset_delta: 2,
            record_count: 3,
            first_timestamp: 1000,
            max_timestamp: 1005,
            producer: ProducerInfo::NONE,
        };
        let encode = |offsets: [i64; 3]| {
            let batch = records_to_batch(&records);
            let mut cols = batch.columns().to_vec();
            cols[0] = Arc::new(Int64Array::from(offsets.to_vec()));
            let header = BatchHeader {
                last_offset_delta: offsets[2] as i32,
                ..header
            };
            let mut out = Vec::new();
            if let Ok(batch) = RecordBatch::try_new(batch.schema(), cols) {
                encode_batch(&mut out, &header, &batch).ok();
            }
            out
        };
        let in_order = encode([0, 1, 2]);
        let parsed = parse_batches(&in_order).unwrap_or_default();
        assert_eq!(
            check_records(&parsed[0]),
            Ok(RecordFacts {
                count: 3,
                first_timestamp: 1000,
                min_timestamp: 990,
                max_timestamp: 1005,
                // "k1" "v1" "h1" "xy" "h2" against 300 bytes of value.
                max_record_size: 300,
                null_key: true,
                offsets_in_order: true,
            })
        );
        // Offset deltas with gaps (a compacted batch) are not the ones the log assigns.
        let gaps = encode([0, 2, 5]);
        let parsed = parse_batches(&gaps).unwrap_or_default();
        let facts = check_records(&parsed[0]);
        assert_eq!(facts.map(|f| f.offsets_in_order), Ok(false));
        // A compressed batch is never checked in place.
        let mut lz4 = Vec::new();
        encode_batch_compressed(
            &mut lz4,
            &header,
            &with_offsets(records_to_batch(&records), 0),
            compression::codec::LZ4,
        )
        .ok();
        let parsed = parse_batches(&lz4).unwrap_or_default();
        assert!(check_records(&parsed[0]).is_err());
    }

    /// Batches without headers take their own encoding loop when their keys are all null or all
    /// set; it must write what the general loop writes, for our decoder and kafka-protocol's.
    #[test]
    fn batches_without_headers_decode_the_same_in_every_key_shape() {
        for shape in ["null keys", "keys", "mixed keys", "a null value"] {
            let values: Vec<Vec<u8>> = (0..200).map(|i| vec![i as u8; i * 37 % 300]).collect();
            let records: Vec<Record> = (0..200)
                .map(|i| {
                    let key = format!("key-{i}");
                    let key = match shape {
                        "null keys" | "a null value" => None,
                        "keys" => Some(key.as_bytes()),
                        _ => (i % 3 == 0).then_some(key.as_bytes()),
                    };
                    let value = (shape != "a null value" || i != 7).then_some(&values[i][..]);
                    // Timestamps jump back and forth, so some deltas take several bytes.
                    Record::new(1_000_000 + (i as i64 % 7 - 3) * 100_000, key, value)
                })
                .collect();
            let whole = with_offsets(records_to_batch(&records), 40);
            for (batch, skip) in [(whole.clone(), 0), (whole.slice(5, 150), 5)] {
                let header = BatchHeader {
                    base_offset: 40,
                    last_offset_delta: 199,
                    record_count: 200,
                    first_timestamp: 0,
                    max_timestamp: 1_300_000,
                    producer: ProducerInfo::NONE,
                };
                let mut out = Vec::new();
                encode_batch(&mut out, &header, &batch).unwrap_or_else(|e| panic!("{e}"));
                let expected = &records[skip..skip + batch.num_rows()];
                let parsed = parse_batches(&out).unwrap_or_else(|e| panic!("{shape}: {e}"));
                let ours = decode_to_records(&parsed[0]).unwrap_or_else(|e| panic!("{shape}: {e}"));
                assert_eq!(ours.len(), expected.len(), "{shape}");
                for (got, want) in ours.iter().zip(expected) {
                    assert_eq!(
                        (got.timestamp_ms, &got.key, &got.value),
                        (want.timestamp_ms, &want.key, &want.value),
                        "{shape}"
                    );
                }
                let mut bytes = bytes::Bytes::from(out);
                let theirs = kafka_protocol::records::RecordBatchDecoder::decode_all(&mut bytes)
                    .unwrap_or_else(|e| panic!("{shape}: {e}"));
                let theirs: Vec<_> = theirs.into_iter().flat_map(|b| b.records).collect();
                assert_eq!(theirs.len(), expected.len(), "{shape}");
                for (i, (got, want)) in theirs.iter().zip(expected).enumerate() {
                    assert_eq!(got.offset, 40 + (skip + i) as i64, "{shape}");
                    assert_eq!(got.timestamp, want.timestamp_ms, "{shape}");
                    assert_eq!(got.key.as_deref(), want.key.as_deref(), "{shape}");
                    assert_eq!(got.value.as_deref(), want.value.as_deref(), "{shape}");
                    assert!(got.headers.is_empty());
                }
            }
        }
    }

    #[test]
    fn varint_sizes() {
        for v in [
            0i64,
            1,
            -1,
            63,
            -64,
            64,
            8191,
            -8192,
            1 << 40,
            i64::MIN,
            i64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
            let mut c = Cursor { buf: &out, pos: 0 };
            assert_eq!(c.varlong().ok(), Some(v));
        }
    }
}
