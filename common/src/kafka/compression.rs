//! Compression of Kafka record batches' records sections, and decompression with a cap on the
//! output so that a small compressed batch cannot expand into unbounded memory (a
//! decompression bomb). Compressed output is what Kafka's Java producer writes, so every broker
//! and client reads it.

use std::io::{Read, Write};

/// Kafka's codec ids (the low 3 bits of a batch's attributes).
pub mod codec {
    pub const NONE: i16 = 0;
    pub const GZIP: i16 = 1;
    pub const SNAPPY: i16 = 2;
    pub const LZ4: i16 = 3;
    pub const ZSTD: i16 = 4;
}

/// The name of a codec id, for messages.
pub fn codec_name(id: i16) -> &'static str {
    match id {
        codec::NONE => "none",
        codec::GZIP => "gzip",
        codec::SNAPPY => "snappy",
        codec::LZ4 => "lz4",
        codec::ZSTD => "zstd",
        _ => "unknown",
    }
}

/// The codec id of a codec name as Kafka spells it in `compression.type` (`none`, `gzip`,
/// `snappy`, `lz4`, `zstd`).
pub fn codec_id(name: &str) -> Option<i16> {
    match name {
        "none" => Some(codec::NONE),
        "gzip" => Some(codec::GZIP),
        "snappy" => Some(codec::SNAPPY),
        "lz4" => Some(codec::LZ4),
        "zstd" => Some(codec::ZSTD),
        _ => None,
    }
}

/// Java's snappy-java stream framing (what Kafka's Java client writes).
const XERIAL_MAGIC: &[u8] = &[0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
const XERIAL_HEADER_LEN: usize = 16;
/// Uncompressed bytes per snappy block in the xerial framing (snappy-java's default).
const XERIAL_BLOCK_BYTES: usize = 32 << 10;

/// Compresses the records section of a batch with `codec_id` (not [`codec::NONE`]), as Kafka's
/// Java producer does: gzip, snappy in snappy-java's xerial framing, lz4 frames with
/// independent blocks and no content checksum (what Kafka's lz4 reader accepts), zstd.
pub fn compress(codec_id: i16, input: &[u8]) -> Result<Vec<u8>, String> {
    let failed = |what: &str, e: &dyn std::fmt::Display| format!("{what} compression failed: {e}");
    match codec_id {
        codec::GZIP => {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(input.len() / 2),
                flate2::Compression::default(),
            );
            enc.write_all(input).map_err(|e| failed("gzip", &e))?;
            enc.finish().map_err(|e| failed("gzip", &e))
        }
        codec::SNAPPY => {
            let mut out = Vec::with_capacity(XERIAL_HEADER_LEN + input.len() / 2);
            out.extend_from_slice(XERIAL_MAGIC);
            // Stream format version 1, compatible with readers of version 1.
            out.extend_from_slice(&1i32.to_be_bytes());
            out.extend_from_slice(&1i32.to_be_bytes());
            let mut encoder = snap::raw::Encoder::new();
            for block in input.chunks(XERIAL_BLOCK_BYTES) {
                let compressed = encoder
                    .compress_vec(block)
                    .map_err(|e| failed("snappy", &e))?;
                out.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
                out.extend_from_slice(&compressed);
            }
            Ok(out)
        }
        codec::LZ4 => {
            let mut enc = lz4::EncoderBuilder::new()
                .block_mode(lz4::BlockMode::Independent)
                .checksum(lz4::ContentChecksum::NoChecksum)
                .build(Vec::with_capacity(input.len() / 2))
                .map_err(|e| failed("lz4", &e))?;
            enc.write_all(input).map_err(|e| failed("lz4", &e))?;
            let (out, result) = enc.finish();
            result.map_err(|e| failed("lz4", &e))?;
            Ok(out)
        }
        codec::ZSTD => zstd::encode_all(input, 3).map_err(|e| failed("zstd", &e)),
        other => Err(format!("cannot compress with codec id {other}")),
    }
}

fn read_capped(mut reader: impl Read, limit: usize, what: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    (&mut reader)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("{what} data does not decompress: {e}"))?;
    if out.len() > limit {
        return Err(format!(
            "{what} batch decompresses to more than {limit} bytes"
        ));
    }
    Ok(out)
}

fn snappy_raw(input: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), String> {
    let len = snap::raw::decompress_len(input)
        .map_err(|e| format!("snappy data does not decompress: {e}"))?;
    if out.len() + len > limit {
        return Err(format!(
            "snappy batch decompresses to more than {limit} bytes"
        ));
    }
    let start = out.len();
    out.resize(start + len, 0);
    snap::raw::Decoder::new()
        .decompress(input, &mut out[start..])
        .map_err(|e| format!("snappy data does not decompress: {e}"))?;
    Ok(())
}

/// Decompresses the records section of a batch compressed with `codec_id`, refusing output
/// larger than `limit` bytes.
pub fn decompress(codec_id: i16, input: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    match codec_id {
        codec::GZIP => read_capped(flate2::read::GzDecoder::new(input), limit, "gzip"),
        codec::LZ4 => {
            let decoder = lz4::Decoder::new(input)
                .map_err(|e| format!("lz4 data does not decompress: {e}"))?;
            read_capped(decoder, limit, "lz4")
        }
        codec::ZSTD => {
            let decoder = zstd::stream::read::Decoder::new(input)
                .map_err(|e| format!("zstd data does not decompress: {e}"))?;
            read_capped(decoder, limit, "zstd")
        }
        codec::SNAPPY => {
            let mut out = Vec::new();
            if input.len() >= XERIAL_HEADER_LEN && input.starts_with(XERIAL_MAGIC) {
                let mut rest = &input[XERIAL_HEADER_LEN..];
                while !rest.is_empty() {
                    if rest.len() < 4 {
                        return Err("snappy block length is cut off".into());
                    }
                    let n = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                    let block = rest.get(4..4 + n).ok_or("snappy block is cut off")?;
                    snappy_raw(block, limit, &mut out)?;
                    rest = &rest[4 + n..];
                }
            } else {
                snappy_raw(input, limit, &mut out)?;
            }
            Ok(out)
        }
        other => Err(format!("unknown compression codec id {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn each_codec_round_trips_and_bombs_are_refused() {
        let data = vec![b'q'; 100_000];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).ok();
        let gz = gz.finish().unwrap_or_default();
        assert_eq!(
            decompress(codec::GZIP, &gz, 1 << 20).ok(),
            Some(data.clone())
        );
        let err = decompress(codec::GZIP, &gz, 1000).err().unwrap_or_default();
        assert!(err.contains("more than 1000 bytes"), "{err}");

        let raw = snap::raw::Encoder::new()
            .compress_vec(&data)
            .unwrap_or_default();
        assert_eq!(
            decompress(codec::SNAPPY, &raw, 1 << 20).ok(),
            Some(data.clone())
        );
        assert!(decompress(codec::SNAPPY, &raw, 1000).is_err());
        let mut xerial = XERIAL_MAGIC.to_vec();
        xerial.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
        xerial.extend_from_slice(&(raw.len() as u32).to_be_bytes());
        xerial.extend_from_slice(&raw);
        assert_eq!(
            decompress(codec::SNAPPY, &xerial, 1 << 20).ok(),
            Some(data.clone())
        );

        let mut lz = lz4::EncoderBuilder::new().build(Vec::new()).ok();
        if let Some(enc) = lz.as_mut() {
            enc.write_all(&data).ok();
        }
        let lz = lz.map(|e| e.finish().0).unwrap_or_default();
        assert_eq!(
            decompress(codec::LZ4, &lz, 1 << 20).ok(),
            Some(data.clone())
        );

        let zs = zstd::encode_all(&data[..], 1).unwrap_or_default();
        assert_eq!(
            decompress(codec::ZSTD, &zs, 1 << 20).ok(),
            Some(data.clone())
        );
        assert!(decompress(codec::ZSTD, &zs, 10).is_err());

        assert!(decompress(codec::GZIP, b"not gzip", 1 << 20).is_err());
        assert!(decompress(7, b"x", 10).is_err());
    }

    #[test]
    fn what_compress_writes_decompresses_with_every_codec() {
        // More than one snappy block, and data that compresses.
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_be_bytes())
            .collect();
        for name in ["gzip", "snappy", "lz4", "zstd"] {
            let id = codec_id(name).unwrap_or(-1);
            let compressed = compress(id, &data).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(compressed.len() < data.len(), "{name} compresses");
            assert_eq!(
                decompress(id, &compressed, data.len()).as_deref(),
                Ok(&data[..]),
                "{name}"
            );
            assert_eq!(codec_name(id), name);
        }
        assert!(compress(codec::NONE, b"x").is_err());
        assert_eq!(codec_id("brotli"), None);
    }
}
