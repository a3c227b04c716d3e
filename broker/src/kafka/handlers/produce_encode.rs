//! Writes Produce responses (v3 to v11) by hand, in one append to the response buffer, from
//! the handler's own [`ProduceAnswer`]. `kafka-protocol`'s encoder sizes every nested
//! structure before writing it, and in v10+ compares each partition's leader field with a
//! default it builds for the purpose: for a one-record Produce that was a tenth of the
//! broker's instructions, and building its response structures and dropping them again
//! another twentieth. The layout is Kafka's; a test checks every version byte for byte against
//! `kafka-protocol`'s own encoder.

use super::produce::ProduceAnswer;
use crate::kafka::schema::Writer;

/// Versions written here (v12 changes nothing in the response, but no client sends it to a
/// broker that does not advertise it; v13 names topics by id).
const VERSIONS: std::ops::RangeInclusive<i16> = 3..=11;

/// Appends the body of `answer` to `out`, in the answer's version. `false` (and nothing
/// written) for a version this writer does not cover (the handler speaks no other).
pub fn encode(answer: &ProduceAnswer, out: &mut Vec<u8>) -> bool {
    let version = answer.version;
    if !VERSIONS.contains(&version) {
        return false;
    }
    // The schema writer of the internal topics' records: it appends to a vector, where
    // `BufMut`'s integer writers on a `BytesMut` each made a `memcpy` call.
    let mut w = Writer {
        buf: std::mem::take(out),
        flexible: version >= 9,
    };
    w.len(Some(answer.topics.len()));
    for topic in &answer.topics {
        w.string(topic.name.as_str());
        w.len(Some(topic.partitions.len()));
        for p in &topic.partitions {
            w.i32(p.index)
                .i16(p.error_code)
                .i64(p.base_offset)
                .i64(p.log_append_time_ms);
            if version >= 5 {
                w.i64(p.log_start_offset);
            }
            if version >= 8 {
                // No record errors: a bad record refuses its whole partition. A message longer
                // than a non-flexible length can say is cut at a character boundary.
                w.len(Some(0)).nullable_string(p.error_message.as_deref());
            }
            w.tagged_fields(&[]);
        }
        w.tagged_fields(&[]);
    }
    // No throttling.
    w.i32(0).tagged_fields(&[]);
    *out = w.buf;
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::handlers::produce::{PartitionAnswer, TopicAnswer};
    use bytes::BytesMut;
    use kafka_protocol::messages::produce_response::ProduceResponse;
    use kafka_protocol::protocol::{Encodable, StrBytes};

    /// Topics and partitions in the shapes the broker answers with: success, an error with a
    /// message, a log append time, an empty topic.
    fn sample(version: i16) -> ProduceAnswer {
        let ok = PartitionAnswer {
            index: 0,
            error_code: 0,
            base_offset: 41,
            log_append_time_ms: -1,
            log_start_offset: 3,
            error_message: None,
        };
        let failed = PartitionAnswer {
            index: 2,
            error_code: 87,
            base_offset: -1,
            log_append_time_ms: 1_700_000_000_000,
            log_start_offset: -1,
            error_message: Some("record 1 has no key; a compacted topic needs one".into()),
        };
        ProduceAnswer {
            version,
            topics: smallvec::smallvec![
                TopicAnswer {
                    name: StrBytes::from_static_str("orders"),
                    partitions: smallvec::smallvec![ok, failed],
                },
                TopicAnswer {
                    name: StrBytes::from_static_str("x"),
                    partitions: smallvec::SmallVec::new(),
                },
            ],
        }
    }

    #[test]
    fn produce_responses_match_kafka_protocol_byte_for_byte() {
        for version in VERSIONS {
            let answer = sample(version);
            let mut theirs = BytesMut::new();
            let encoded = ProduceResponse::from(answer.clone()).encode(&mut theirs, version);
            assert!(encoded.is_ok(), "v{version}: {encoded:?}");
            let mut ours = b"head".to_vec();
            assert!(encode(&answer, &mut ours), "v{version} is covered");
            assert_eq!(&ours[4..], &theirs[..], "Produce v{version}");
        }
    }

    #[test]
    fn a_message_too_long_for_its_version_is_cut_at_a_character() {
        let mut answer = sample(8);
        answer.topics[0].partitions[1].error_message = Some("é".repeat(20_000));
        let mut buf = Vec::new();
        assert!(encode(&answer, &mut buf));
        let cut = "é".repeat(16_383);
        let at = buf
            .windows(cut.len())
            .position(|w| w == cut.as_bytes())
            .unwrap_or_else(|| panic!("the message is not written"));
        assert_eq!(&buf[at - 2..at], &(cut.len() as i16).to_be_bytes());
        let next = at + cut.len();
        assert_eq!(
            &buf[next..next + 3],
            &[0, 1, b'x'],
            "the next topic follows"
        );
    }

    #[test]
    fn versions_it_does_not_cover_write_nothing() {
        let mut buf = Vec::new();
        assert!(!encode(&sample(2), &mut buf));
        assert!(!encode(&sample(12), &mut buf));
        assert!(buf.is_empty());
    }
}
