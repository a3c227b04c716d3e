//! CRC-32C (Castagnoli): the checksum of Kafka's record batches and of every file the broker
//! writes (frames, indexes, snapshots).
//!
//! Computed by `crc-fast`, which folds with carry-less multiplication (PCLMULQDQ, VPCLMULQDQ
//! where the CPU has it) and picks its kernel at run time. `benches/crc.rs` measures it against
//! the `crc32c` crate's three-way CRC32-instruction loop (what the broker used before) in the
//! same run: on the 2-core VM it takes 0.58 of the time for a 64-byte frame header, 0.74 for a
//! 170-byte one-record batch, 0.45 for 1 KiB and 0.22-0.23 from 16 KiB up (63 GB/s against
//! 14 GB/s at 1 MiB). A produced batch is checksummed twice (the client's CRC is verified, the
//! stored frame's is written), so this was most of the broker's user-space time per byte of
//! large records.

use crc_fast::{CrcAlgorithm, Digest};

/// The CRC-32C of `data`.
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    crc_fast::crc32_iscsi(data)
}

/// The CRC-32C of the bytes whose CRC-32C is `crc`, followed by `data`.
#[inline]
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    // Any bytes whose CRC is 0 (the empty ones among them) leave the register where a fresh
    // computation starts, so the one-shot call serves, without the digest's set-up (it copies
    // the algorithm's parameters, a few hundred bytes, which costs more than a short input).
    if crc == 0 {
        return crc32c(data);
    }
    // The register holds the CRC before its final inversion.
    let mut digest = Digest::new_with_init_state(CrcAlgorithm::Crc32Iscsi, u64::from(!crc));
    digest.update(data);
    digest.finalize() as u32
}

/// The reflected CRC-32C polynomial.
const POLY: u32 = 0x82F6_3B78;

/// The CRC-32C of two pieces of bytes from the CRC of each, for second pieces of one length
/// fixed when it is made: `concat(crc32c(a), crc32c(b)) == crc32c(a ++ b)` whenever `b` is
/// `len` bytes long.
///
/// CRC-32C without its pre- and post-inversion is linear, and the inversions cancel out here,
/// so the CRC of `a ++ b` is the CRC of `b` XOR that of `a` carried over `len` zero bytes; the
/// carry is linear too, so four tables of 256 entries (one per byte of the CRC) made at compile
/// time do it in four lookups. The CRC crates' general combine squares matrices for the length
/// each time (microseconds); extending a CRC by a short piece through a digest costs more than
/// the piece.
#[derive(Debug, Clone)]
pub struct Concat {
    tables: [[u32; 256]; 4],
}

impl Concat {
    /// For second pieces of `len` bytes.
    pub const fn new(len: usize) -> Concat {
        // The carry of each single bit of the register over `len` zero bytes...
        let mut basis = [0u32; 32];
        let mut bit = 0;
        while bit < 32 {
            let mut register = 1u32 << bit;
            let mut step = 0;
            while step < len * 8 {
                register = if register & 1 == 1 {
                    (register >> 1) ^ POLY
                } else {
                    register >> 1
                };
                step += 1;
            }
            basis[bit] = register;
            bit += 1;
        }
        // ... and of each value of each byte, the XOR of its bits' carries.
        let mut tables = [[0u32; 256]; 4];
        let mut byte = 0;
        while byte < 4 {
            let mut value = 0;
            while value < 256 {
                let mut carried = 0;
                let mut b = 0;
                while b < 8 {
                    if value >> b & 1 == 1 {
                        carried ^= basis[byte * 8 + b];
                    }
                    b += 1;
                }
                tables[byte][value] = carried;
                value += 1;
            }
            byte += 1;
        }
        Concat { tables }
    }

    /// The CRC-32C of `a ++ b` from `crc_a`, the CRC-32C of `a`, and `crc_b`, that of `b` (of
    /// the length this was made for).
    #[inline]
    pub fn concat(&self, crc_a: u32, crc_b: u32) -> u32 {
        let [b0, b1, b2, b3] = crc_a.to_le_bytes();
        self.tables[0][usize::from(b0)]
            ^ self.tables[1][usize::from(b1)]
            ^ self.tables[2][usize::from(b2)]
            ^ self.tables[3][usize::from(b3)]
            ^ crc_b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    static CONCAT_64: Concat = Concat::new(64);

    /// A bit-at-a-time CRC-32C (reflected polynomial 0x82F63B78), the definition itself.
    fn reference(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in data {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0x82F6_3B78
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn check_values() {
        // The catalogue's check value (CRC-32/ISCSI over "123456789") and the empty input.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c_append(crc32c(b"1234"), b"56789"), 0xE306_9283);
        assert_eq!(crc32c_append(crc32c(b"123456789"), b""), 0xE306_9283);
        let concat = Concat::new(5);
        assert_eq!(
            concat.concat(crc32c(b"1234"), crc32c(b"56789")),
            0xE306_9283
        );
    }

    proptest! {
        /// Every length the folding kernels split differently (under 16 bytes, one block, many
        /// blocks with a tail) agrees with the definition, whole and appended at any split.
        #[test]
        fn matches_the_definition(data in proptest::collection::vec(any::<u8>(), 0..5000),
                                  split in 0usize..5000) {
            let whole = reference(&data);
            prop_assert_eq!(crc32c(&data), whole);
            let at = split.min(data.len());
            prop_assert_eq!(crc32c_append(crc32c(&data[..at]), &data[at..]), whole);
        }

        /// Concatenation by tables agrees with the definition for second pieces of the lengths
        /// the broker uses (a frame header's 64 bytes) and others, the first piece of any
        /// length (the empty one among them).
        #[test]
        fn concat_matches_the_definition(a in proptest::collection::vec(any::<u8>(), 0..300),
                                         b in proptest::collection::vec(any::<u8>(), 64)) {
            let whole = reference(&[a.as_slice(), b.as_slice()].concat());
            prop_assert_eq!(CONCAT_64.concat(crc32c(&a), crc32c(&b)), whole);
            for len in [0, 1, 5, 63] {
                let b = &b[..len];
                let whole = reference(&[a.as_slice(), b].concat());
                prop_assert_eq!(Concat::new(len).concat(crc32c(&a), crc32c(b)), whole);
            }
        }
    }
}
