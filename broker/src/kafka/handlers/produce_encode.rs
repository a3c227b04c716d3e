//! Writes Produce responses (v3 to v11) by hand, in one append to the response buffer.
//! `kafka-protocol`'s encoder sizes every nested structure before writing it, and in v10+
//! compares each partition's leader field with a default it builds for the purpose: for a
//! one-record Produce that was a tenth of the broker's instructions. The layout is Kafka's; a
//! test checks every version byte for byte against `kafka-protocol`'s own encoder.

use bytes::BytesMut;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, ProduceResponse};
use kafka_protocol::protocol::StrBytes;

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

    /// A nullable string: compact (length + 1, 0 for null) in flexible versions.
    fn string(&mut self, s: Option<&StrBytes>) {
        match s {
            None if self.flexible => self.uvarint(0),
            None => self.i16(-1),
            Some(s) => {
                if self.flexible {
                    self.uvarint(s.len() as u64 + 1);
                } else {
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

/// Whether `resp` holds only what this writer writes: no tagged field is set (the broker sets
/// none: no current leader, no node endpoints, no unknown fields) and every string fits a
/// non-flexible 16-bit length.
fn plain(resp: &ProduceResponse) -> bool {
    let short = |s: &StrBytes| s.len() <= i16::MAX as usize;
    let partition_plain = |p: &PartitionProduceResponse| {
        p.unknown_tagged_fields.is_empty()
            && p.current_leader.leader_id.0 == -1
            && p.current_leader.leader_epoch == -1
            && p.current_leader.unknown_tagged_fields.is_empty()
            && p.error_message.as_ref().is_none_or(short)
            && p.record_errors.iter().all(|e| {
                e.unknown_tagged_fields.is_empty()
                    && e.batch_index_error_message.as_ref().is_none_or(short)
            })
    };
    resp.unknown_tagged_fields.is_empty()
        && resp.node_endpoints.is_empty()
        && resp.responses.iter().all(|t| {
            t.unknown_tagged_fields.is_empty()
                && short(&t.name.0)
                && t.partition_responses.iter().all(partition_plain)
        })
}

/// Appends the body of `resp` at `version` to `buf`. `false` (and nothing written) for a
/// version or a response this writer does not cover: the caller encodes it the general way.
pub fn encode(resp: &ProduceResponse, version: i16, buf: &mut BytesMut) -> bool {
    if !VERSIONS.contains(&version) || !plain(resp) {
        return false;
    }
    let mut body = Body {
        out: Vec::with_capacity(128),
        flexible: version >= 9,
    };
    body.array_len(resp.responses.len());
    for topic in &resp.responses {
        body.string(Some(&topic.name.0));
        body.array_len(topic.partition_responses.len());
        for p in &topic.partition_responses {
            body.i32(p.index);
            body.i16(p.error_code);
            body.i64(p.base_offset);
            body.i64(p.log_append_time_ms);
            if version >= 5 {
                body.i64(p.log_start_offset);
            }
            if version >= 8 {
                body.array_len(p.record_errors.len());
                for e in &p.record_errors {
                    body.i32(e.batch_index);
                    body.string(e.batch_index_error_message.as_ref());
                    body.no_tags();
                }
                body.string(p.error_message.as_ref());
            }
            body.no_tags();
        }
        body.no_tags();
    }
    body.i32(resp.throttle_time_ms);
    body.no_tags();
    buf.extend_from_slice(&body.out);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::produce_response::{
        BatchIndexAndErrorMessage, LeaderIdAndEpoch, TopicProduceResponse,
    };
    use kafka_protocol::messages::{BrokerId, TopicName};
    use kafka_protocol::protocol::Encodable;

    /// Topics and partitions in the shapes the broker answers with: success, errors with a
    /// message, record errors, a log append time, an empty topic.
    fn sample() -> ProduceResponse {
        let ok = PartitionProduceResponse::default()
            .with_index(0)
            .with_base_offset(41)
            .with_log_append_time_ms(-1)
            .with_log_start_offset(3);
        let failed = PartitionProduceResponse::default()
            .with_index(2)
            .with_error_code(87)
            .with_base_offset(-1)
            .with_log_append_time_ms(1_700_000_000_000)
            .with_log_start_offset(-1)
            .with_record_errors(vec![
                BatchIndexAndErrorMessage::default()
                    .with_batch_index(1)
                    .with_batch_index_error_message(Some(StrBytes::from_static_str("no key"))),
                BatchIndexAndErrorMessage::default().with_batch_index(4),
            ])
            .with_error_message(Some(StrBytes::from_static_str(
                "record 1 has no key; a compacted topic needs one",
            )));
        ProduceResponse::default()
            .with_throttle_time_ms(5)
            .with_responses(vec![
                TopicProduceResponse::default()
                    .with_name(TopicName(StrBytes::from_static_str("orders")))
                    .with_partition_responses(vec![ok, failed]),
                TopicProduceResponse::default()
                    .with_name(TopicName(StrBytes::from_static_str("x")))
                    .with_partition_responses(vec![]),
            ])
    }

    #[test]
    fn produce_responses_match_kafka_protocol_byte_for_byte() {
        for version in VERSIONS {
            let mut resp = sample();
            if version < 8 {
                // Older versions carry no record errors (the handler clears them).
                for t in &mut resp.responses {
                    for p in &mut t.partition_responses {
                        p.record_errors.clear();
                    }
                }
            }
            let mut theirs = BytesMut::new();
            let encoded = resp.encode(&mut theirs, version);
            assert!(encoded.is_ok(), "v{version}: {encoded:?}");
            let mut ours = BytesMut::from(&b"head"[..]);
            assert!(encode(&resp, version, &mut ours), "v{version} is covered");
            assert_eq!(&ours[4..], &theirs[..], "Produce v{version}");
        }
    }

    #[test]
    fn responses_it_does_not_cover_are_left_to_kafka_protocol() {
        let mut buf = BytesMut::new();
        assert!(!encode(&sample(), 2, &mut buf));
        assert!(!encode(&sample(), 12, &mut buf));
        let mut led = sample();
        led.responses[0].partition_responses[0].current_leader = LeaderIdAndEpoch::default()
            .with_leader_id(BrokerId(1))
            .with_leader_epoch(4);
        assert!(!encode(&led, 10, &mut buf));
        let mut long_name = sample();
        long_name.responses[0].name = TopicName(StrBytes::from_string("t".repeat(40_000)));
        assert!(!encode(&long_name, 8, &mut buf));
        assert!(
            buf.is_empty(),
            "nothing is written for a response left to the general way"
        );
    }
}
