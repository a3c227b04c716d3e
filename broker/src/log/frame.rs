//! One stored batch: a fixed header (length, CRC32C, batch facts) followed by one Arrow IPC
//! record-batch message without a schema (the schema is always the envelope).
//!
//! ```text
//!  0 u32 frame_len       whole frame, header included; a multiple of 8
//!  4 u32 crc32c          of bytes 8..frame_len
//!  8 u8  version (1)   9 u8 reserved   10 i16 attributes (Kafka's: timestamp type, transactional, control)
//! 12 i32 record_count
//! 16 i64 base_offset
//! 24 i32 last_offset_delta  28 i32 base_sequence
//! 32 i64 first_timestamp   40 i64 max_timestamp
//! 48 i64 producer_id       56 i16 producer_epoch  58 u16 reserved
//! 60 u32 ipc_meta_len      64 u64 ipc_body_len
//! 72 IPC message (metadata + body), 8-byte aligned
//! ```
//! All integers little-endian. The header size keeps the IPC body 8-byte aligned inside a
//! 64-byte aligned read buffer, so decoding is zero-copy.

use std::sync::LazyLock;

use arrow::buffer::Buffer;
use arrow::ipc::reader::FileDecoder;
use arrow::ipc::writer::{
    DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions, write_message,
};
use arrow::ipc::{Block, MetadataVersion};
use arrow::record_batch::RecordBatch;

use crate::error::{BrokerError, Result};
use crate::record::envelope_schema;

/// Bytes of the fixed frame header.
pub const HEADER_LEN: usize = 72;
const VERSION: u8 = 1;
/// A frame larger than this is treated as damage (no batch is ever this large).
pub const MAX_FRAME_LEN: u64 = 1 << 31;

pub use quiver_common::batch::{BatchHeader, ProducerInfo, attributes};

/// The header fields that can be read without the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub frame_len: u64,
    pub crc: u32,
    pub batch: BatchHeader,
    pub ipc_meta_len: u32,
    pub ipc_body_len: u64,
}

fn le_i16(b: &[u8], at: usize) -> i16 {
    i16::from_le_bytes([b[at], b[at + 1]])
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
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
        if bytes[8] != VERSION {
            return Err(format!("unknown frame version {}", bytes[8]));
        }
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
            ipc_meta_len: le_u32(bytes, 60),
            ipc_body_len: le_u64(bytes, 64),
        };
        let b = &header.batch;
        if b.record_count < 0 || b.last_offset_delta < 0 || b.base_offset < 0 {
            return Err("negative offsets or counts".into());
        }
        if HEADER_LEN as u64 + u64::from(header.ipc_meta_len) + header.ipc_body_len > frame_len {
            return Err("IPC lengths exceed the frame".into());
        }
        Ok(header)
    }
}

/// Checks the CRC of a whole frame (header included).
pub fn crc_matches(frame: &[u8], header: &FrameHeader) -> bool {
    frame.len() as u64 == header.frame_len && crc32c::crc32c(&frame[8..]) == header.crc
}

/// Reusable state for encoding frames (IPC scratch buffers).
pub struct FrameEncoder {
    generator: IpcDataGenerator,
    options: IpcWriteOptions,
    context: IpcWriteContext,
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
        let mut context = IpcWriteContext::default();
        context.set_reserve_scratch(true);
        FrameEncoder {
            generator: IpcDataGenerator::default(),
            options,
            context,
        }
    }
}

impl FrameEncoder {
    /// Encodes `batch` (envelope schema, offsets already assigned) as one frame appended to `out`.
    pub fn encode(
        &mut self,
        header: &BatchHeader,
        batch: &RecordBatch,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let start = out.len();
        out.resize(start + HEADER_LEN, 0);
        let mut tracker = DictionaryTracker::new(false);
        let (_dicts, encoded) =
            self.generator
                .encode(batch, &mut tracker, &self.options, &mut self.context)?;
        let (meta_len, body_len) = write_message(&mut *out, encoded, &self.options)?;
        let pad = (8 - (out.len() - start) % 8) % 8;
        out.resize(out.len() + pad, 0);
        let frame_len = out.len() - start;
        let frame_len_u32 = u32::try_from(frame_len).map_err(|_| {
            BrokerError::InvalidRecords(format!("batch of {frame_len} bytes is too large to store"))
        })?;
        let h = &mut out[start..start + HEADER_LEN];
        h[0..4].copy_from_slice(&frame_len_u32.to_le_bytes());
        h[8] = VERSION;
        h[10..12].copy_from_slice(&header.producer.attributes.to_le_bytes());
        h[12..16].copy_from_slice(&header.record_count.to_le_bytes());
        h[16..24].copy_from_slice(&header.base_offset.to_le_bytes());
        h[24..28].copy_from_slice(&header.last_offset_delta.to_le_bytes());
        h[28..32].copy_from_slice(&header.producer.base_sequence.to_le_bytes());
        h[32..40].copy_from_slice(&header.first_timestamp.to_le_bytes());
        h[40..48].copy_from_slice(&header.max_timestamp.to_le_bytes());
        h[48..56].copy_from_slice(&header.producer.producer_id.to_le_bytes());
        h[56..58].copy_from_slice(&header.producer.producer_epoch.to_le_bytes());
        h[60..64].copy_from_slice(&(meta_len as u32).to_le_bytes());
        h[64..72].copy_from_slice(&(body_len as u64).to_le_bytes());
        let crc = crc32c::crc32c(&out[start + 8..]);
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        Ok(())
    }
}

static DECODER: LazyLock<FileDecoder> =
    LazyLock::new(|| FileDecoder::new(envelope_schema(), MetadataVersion::V5));

/// Decodes the record batch of a frame. `frame` must start at the frame header and hold the
/// whole frame; slices of a 64-byte aligned buffer decode without copying.
pub fn decode(frame: &Buffer, header: &FrameHeader) -> Result<RecordBatch> {
    let ipc_len = u64::from(header.ipc_meta_len) + header.ipc_body_len;
    if (frame.len() as u64) < HEADER_LEN as u64 + ipc_len || header.ipc_meta_len < 8 {
        return Err(BrokerError::Internal(
            "frame shorter than its IPC message".into(),
        ));
    }
    let ipc = frame.slice_with_length(HEADER_LEN, ipc_len as usize);
    let block = Block::new(0, header.ipc_meta_len as i32, header.ipc_body_len as i64);
    DECODER
        .read_record_batch(&block, &ipc)?
        .ok_or_else(|| BrokerError::Internal("frame holds no record batch".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Record, batch_to_records, records_to_batch};

    #[test]
    fn frame_round_trip() {
        let batch =
            records_to_batch(
                &[Record::new(5, Some(b"k"), Some(b"v")).with_header("a", Some(b"b"))],
            );
        let header = BatchHeader {
            base_offset: 0,
            last_offset_delta: 0,
            record_count: 1,
            first_timestamp: 5,
            max_timestamp: 5,
            producer: ProducerInfo {
                producer_id: 7,
                producer_epoch: 1,
                base_sequence: 3,
                attributes: 0,
            },
        };
        let mut out = Vec::new();
        FrameEncoder::default()
            .encode(&header, &batch, &mut out)
            .ok();
        assert_eq!(out.len() % 8, 0);
        let parsed = FrameHeader::parse(&out).ok();
        let Some(parsed) = parsed else {
            panic!("header parses")
        };
        assert_eq!(parsed.batch, header);
        assert!(crc_matches(&out, &parsed));
        let buf = Buffer::from_vec(out.clone());
        let decoded = decode(&buf, &parsed).ok();
        assert_eq!(
            decoded.map(|b| batch_to_records(&b).unwrap_or_default()),
            Some(batch_to_records(&batch).unwrap_or_default())
        );
        out[HEADER_LEN + 3] ^= 1;
        assert!(!crc_matches(&out, &parsed));
    }
}
