//! Decompression of Kafka record batches, with a cap on the output so that a small compressed
//! batch cannot expand into unbounded memory (a decompression bomb).

use std::io::Read;

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

/// Java's snappy-java stream framing (what Kafka's Java client writes).
const XERIAL_MAGIC: &[u8] = &[0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
const XERIAL_HEADER_LEN: usize = 16;

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
}
