//! The Kafka record batch codec on its own: decoding a producer's batch into the envelope
//! columns (what Produce does per record) and encoding stored rows as a Kafka batch (what Fetch
//! does per record), for batches of 1,000 records of 100 B and 1 KiB values with null keys and
//! no headers (what `loadgen.py` sends), and of 100 B values with 8-byte keys and a header.
//!
//! Ids are `<decode|encode>/<case>`; the throughput is records. `scripts/bench-kafka` measures
//! the same work inside the broker, over the wire; this isolates the codec, so a change to it
//! shows here without a server (and runs under callgrind in seconds).

use std::hint::black_box;

use arrow::record_batch::RecordBatch;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use quiver_common::batch::{BatchHeader, ProducerInfo};
use quiver_common::kafka::records::{
    DecodeScratch, decode_records, encode_batch, parse_batches, records_bound,
};
use quiver_common::record::EnvelopeBuilder;

/// Records per batch.
const RECORDS: usize = 1000;

/// (case name, value size, with a key and a header)
const CASES: [(&str, usize, bool); 3] = [
    ("100B", 100, false),
    ("1KiB", 1024, false),
    ("100B_key_header", 100, true),
];

fn rows(value_size: usize, keyed: bool) -> RecordBatch {
    let mut builder = EnvelopeBuilder::with_capacity(RECORDS, RECORDS * (value_size + 8));
    let value = vec![b'x'; value_size];
    let header: [(&str, Option<&[u8]>); 1] = [("source", Some(b"web"))];
    for i in 0..RECORDS {
        let key = format!("key{:05}", i % 10_000);
        let (key, headers) = if keyed {
            (Some(key.as_bytes()), &header[..])
        } else {
            (None, &header[..0])
        };
        builder.append(1_700_000_000_000 + i as i64, key, Some(&value), headers);
    }
    builder.finish()
}

fn header() -> BatchHeader {
    BatchHeader {
        base_offset: 0,
        last_offset_delta: RECORDS as i32 - 1,
        record_count: RECORDS as i32,
        first_timestamp: 1_700_000_000_000,
        max_timestamp: 1_700_000_000_000 + RECORDS as i64 - 1,
        producer: ProducerInfo::NONE,
    }
}

fn codec(c: &mut Criterion) {
    let mut decode = c.benchmark_group("decode");
    decode.throughput(Throughput::Elements(RECORDS as u64));
    for (name, value_size, keyed) in CASES {
        let mut wire = Vec::new();
        encode_batch(&mut wire, &header(), &rows(value_size, keyed)).expect("encode");
        let mut scratch = DecodeScratch::default();
        decode.bench_function(name, |b| {
            b.iter(|| {
                let batches = parse_batches(black_box(&wire)).expect("parse");
                let batch = &batches[0];
                let bound = records_bound(batch.record_count, batch.records.len());
                let mut builder = EnvelopeBuilder::with_capacity(bound, batch.records.len());
                decode_records(batch, &mut builder, &mut scratch, 1 << 30).expect("decode");
                black_box(builder.finish())
            })
        });
    }
    decode.finish();

    let mut encode = c.benchmark_group("encode");
    encode.throughput(Throughput::Elements(RECORDS as u64));
    for (name, value_size, keyed) in CASES {
        let batch = rows(value_size, keyed);
        let mut out = Vec::new();
        encode.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                encode_batch(&mut out, &header(), black_box(&batch)).expect("encode");
                black_box(out.len())
            })
        });
    }
    encode.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
