//! Writes Produce responses (v3 to v11) by hand, in one append to the response buffer, from
//! the handler's own [`ProduceAnswer`]. `kafka-protocol`'s encoder sizes every nested
//! structure before writing it, and in v10+ compares each partition's leader field with a
//! default it builds for the purpose: for a one-record Produce that was a tenth of the
//! broker's instructions, and building its response structures and dropping them again
//! another twentieth. The layout is Kafka's; a test checks every version byte for byte against
//! `kafka-protocol`'s own encoder.

use super::produce::ProduceAnswer;

/// Versions written here (v12 changes nothing in the response, but no client sends it to a
/// broker that does not advertise it; v13 names topics by id).
const VERSIONS: std::ops::RangeInclusive<i16> = 3..=11;

/// The body as it is written, in a vector: appending a fixed-size array to it compiles to a
/// few moves, where `BufMut`'s integer writers on a `BytesMut` each made a `memcpy` call.
struct Body {
    out: Vec<u8>,
    /// Compact lengths and tagged fields (v9+).
    flexible: bool,
}

impl Body {
    fn i16(&mut self, v: i16) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }

    fn i32(&mut self, v: i32) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }

    fn i64(&mut self, v: i64) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }

    fn uvarint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.out.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.out.push(v as u8);
    }

    /// An array's length: compact (length + 1 as a varint) in flexible versions.
    fn array_len(&mut self, len: usize) {
        if self.flexible {
            self.uvarint(len as u64 + 1);
        } else {
            self.i32(len as i32);
        }
    }

    /// A nullable string: compact (length + 1, 0 for null) in flexible versions. A string
    /// longer than a non-flexible length can say is cut at a character boundary (only an error
    /// message could be: a topic name came in the request with a length of the same kind).
    fn string(&mut self, s: Option<&str>) {
        match s {
            None if self.flexible => self.uvarint(0),
            None => self.i16(-1),
            Some(mut s) => {
                if self.flexible {
                    self.uvarint(s.len() as u64 + 1);
                } else {
                    let mut end = s.len().min(i16::MAX as usize);
                    while !s.is_char_boundary(end) {
                        end -= 1;
                    }
                    s = &s[..end];
                    self.i16(s.len() as i16);
                }
                self.out.extend_from_slice(s.as_bytes());
            }
        }
    }

    /// No tagged fields (flexible versions).
    fn no_tags(&mut self) {
        if self.flexible {
            self.out.push(0);
        }
    }
}

/// Appends the body of `answer` to `out`, in the answer's version. `false` (and nothing
/// written) for a version this writer does not cover (the handler speaks no other).
pub fn encode(answer: &ProduceAnswer, out: &mut Vec<u8>) -> bool {
    let version = answer.version;
    if !VERSIONS.contains(&version) {
        return false;
    }
    let mut body = Body {
        out: std::mem::take(out),
        flexible: version >= 9,
    };
    body.array_len(answer.topics.len());
    for topic in &answer.topics {
        body.string(Some(topic.name.as_str()));
        body.array_len(topic.partitions.len());
        for p in &topic.partitions {
            body.i32(p.index);
            body.i16(p.error_code);
            body.i64(p.base_offset);
            body.i64(p.log_append_time_ms);
            if version >= 5 {
                body.i64(p.log_start_offset);
            }
            if version >= 8 {
                // No record errors: a bad record refuses its whole partition.
                body.array_len(0);
                body.string(p.error_message.as_deref());
            }
            body.no_tags();
        }
        body.no_tags();
    }
    // No throttling.
    body.i32(0);
    body.no_tags();
    *out = body.out;
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
