//! Kafka's default partitioner: murmur2 of the key for keyed records, so a key lands in the same
//! partition as with the Java client; round-robin for records without a key.

use std::sync::atomic::{AtomicU32, Ordering};

/// Kafka's murmur2 (the variant in `org.apache.kafka.common.utils.Utils.murmur2`, seed 0x9747b28c).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner picks for a key: `toPositive(murmur2(key)) % n`.
pub fn partition_for_key(key: &[u8], num_partitions: i32) -> i32 {
    debug_assert!(num_partitions > 0);
    (murmur2(key) & 0x7fff_ffff) % num_partitions.max(1)
}

/// Picks partitions like Kafka's producer: by key hash, or round-robin for null keys.
#[derive(Debug, Default)]
pub struct Partitioner {
    next: AtomicU32,
}

impl Partitioner {
    /// A partitioner whose round-robin starts at `start` (e.g. from the clock, so that many
    /// short-lived producers do not all begin on partition 0, as Kafka's start at random).
    pub fn starting_at(start: u32) -> Self {
        Partitioner {
            next: AtomicU32::new(start),
        }
    }

    /// The partition for a record with this key in a topic of `num_partitions`.
    pub fn partition(&self, key: Option<&[u8]>, num_partitions: i32) -> i32 {
        match key {
            Some(key) => partition_for_key(key, num_partitions),
            None => {
                (self.next.fetch_add(1, Ordering::Relaxed) % num_partitions.max(1) as u32) as i32
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values computed by Kafka's Java `Utils.murmur2` (from Kafka's own UtilsTest).
    #[test]
    fn murmur2_matches_java() {
        let cases: &[(&str, i32)] = &[
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            ("abc", 479470107),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input.as_bytes()), *expected, "murmur2({input:?})");
        }
    }

    #[test]
    fn keyed_partition_is_positive_and_stable() {
        for n in 1..20 {
            let p = partition_for_key(b"foobar", n);
            assert!((0..n).contains(&p));
            assert_eq!(p, partition_for_key(b"foobar", n));
        }
        // toPositive(-790332482) % 3
        assert_eq!(
            partition_for_key(b"foobar", 3),
            ((-790332482i32 & 0x7fffffff) % 3)
        );
    }

    #[test]
    fn null_keys_round_robin() {
        let p = Partitioner::default();
        let picks: Vec<i32> = (0..6).map(|_| p.partition(None, 3)).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }
}
