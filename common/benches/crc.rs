//! CRC-32C as the broker computes it ([`quiver_common::crc`]) next to the `crc32c` crate (a
//! three-way CRC32-instruction loop, what it used before), over the lengths it checksums: a
//! frame header (64 B), a one-record producer batch (170 B), a 1 KiB record, a 16 KiB batch and
//! a 1 MiB one.
//!
//! Ids are `<ours|crc32c_crate>/<length>`; the throughput is bytes, so the two of a length
//! compare directly.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const LENGTHS: [(usize, &str); 5] = [
    (64, "64B"),
    (170, "170B"),
    (1 << 10, "1KiB"),
    (16 << 10, "16KiB"),
    (1 << 20, "1MiB"),
];

fn crc(c: &mut Criterion) {
    let data: Vec<u8> = (0..1usize << 20).map(|i| (i * 31 + 7) as u8).collect();
    let mut group = c.benchmark_group("crc32c");
    for (len, label) in LENGTHS {
        let bytes = &data[..len];
        assert_eq!(quiver_common::crc::crc32c(bytes), crc32c::crc32c(bytes));
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(BenchmarkId::new("ours", label), |b| {
            b.iter(|| quiver_common::crc::crc32c(black_box(bytes)))
        });
        group.bench_function(BenchmarkId::new("crc32c_crate", label), |b| {
            b.iter(|| crc32c::crc32c(black_box(bytes)))
        });
    }
    group.finish();
}

criterion_group!(benches, crc);
criterion_main!(benches);
