//! Property tests over bytes from outside: request frames (every supported API key and version,
//! random bodies and mutations of valid ones) and record batches must decode or be refused,
//! never panic and never abort.

use bytes::Bytes;
use proptest::prelude::*;
use quiver_broker::alloc::GuardedAlloc;
use quiver_broker::kafka::handlers::supported;
use quiver_broker::kafka::records::{
    DecodeScratch, check_records, decode_records, encode_batch, parse_batches,
};
use quiver_broker::kafka::server::decode_request;
use quiver_broker::log::{BatchHeader, ProducerInfo};
use quiver_broker::{EnvelopeBuilder, Record, records_to_batch};

// Random counts in request bodies ask for huge allocations; the server runs under this guard.
#[global_allocator]
static ALLOC: GuardedAlloc = GuardedAlloc;

fn header(api: i16, version: i16) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&api.to_be_bytes());
    h.extend_from_slice(&version.to_be_bytes());
    h.extend_from_slice(&7i32.to_be_bytes());
    h.extend_from_slice(&(-1i16).to_be_bytes()); // null client id
    h
}

fn valid_batch() -> Vec<u8> {
    let records: Vec<Record> = (0..5)
        .map(|i| Record::new(i, Some(b"key"), Some(b"value")).with_header("h", Some(b"v")))
        .collect();
    let batch = records_to_batch(&records);
    let header = BatchHeader {
        base_offset: 0,
        last_offset_delta: 4,
        record_count: 5,
        first_timestamp: 0,
        max_timestamp: 4,
        producer: ProducerInfo::NONE,
    };
    let mut out = Vec::new();
    let _ = encode_batch(&mut out, &header, &batch);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn random_request_bodies_never_panic(pick in 0usize..64, version_off in 0i16..20, body in proptest::collection::vec(any::<u8>(), 0..200), flexible_header in any::<bool>()) {
        let apis: Vec<(i16, i16, i16)> = supported().map(|(k, lo, hi)| (k as i16, lo, hi)).collect();
        let (api, lo, hi) = apis[pick % apis.len()];
        let version = lo + version_off % (hi - lo + 1);
        let mut frame = header(api, version);
        if flexible_header {
            frame.push(0); // empty tagged fields of a v2 header
        }
        frame.extend_from_slice(&body);
        let _ = decode_request(Bytes::from(frame));
    }

    #[test]
    fn arbitrary_frames_never_panic(frame in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode_request(Bytes::from(frame));
    }

    #[test]
    fn mutated_record_batches_are_refused_or_decoded(flips in proptest::collection::vec((0usize..400, any::<u8>()), 1..6), cut in 0usize..400, fix_crc in any::<bool>()) {
        let mut bytes = valid_batch();
        for (at, v) in flips {
            let i = at % bytes.len();
            bytes[i] = v;
        }
        if fix_crc && bytes.len() > 61 {
            // Keep the CRC valid so the record decoder itself sees the damage.
            let crc = quiver_common::crc::crc32c(&bytes[21..]);
            bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        }
        bytes.truncate(cut.max(1).min(bytes.len()));
        if let Ok(batches) = parse_batches(&bytes) {
            for b in &batches {
                let mut builder = EnvelopeBuilder::default();
                let decoded = decode_records(b, &mut builder, &mut DecodeScratch::default(), 1 << 20);
                // A small batch stored as sent is checked in place: the check refuses exactly
                // what decoding refuses, with the same error, and counts what it decodes.
                if b.compression() == 0 {
                    let checked = check_records(b);
                    prop_assert_eq!(checked.as_ref().err(), decoded.as_ref().err());
                    if let Ok(facts) = checked {
                        prop_assert_eq!(facts.count, builder.finish().num_rows());
                    }
                }
            }
        }
    }
}
