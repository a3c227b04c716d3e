//! Writes Fetch responses (v4 to v12) as a list of chunks, so that record bytes go from the
//! buffer they were encoded into straight to the socket instead of being copied into one large
//! response buffer first. The layout is Kafka's; a test checks every version byte for byte
//! against `kafka-protocol`'s own encoder.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_response::FetchResponse;

/// Highest Fetch version written here (v13 and later use topic ids).
pub const MAX_VERSION: i16 = 12;

fn put_uvarint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

/// Array or string length: compact (length + 1 as a varint) in flexible versions.
fn put_len(buf: &mut BytesMut, flexible: bool, len: usize, wide: bool) {
    match (flexible, wide) {
        (true, _) => put_uvarint(buf, len as u64 + 1),
        (false, true) => buf.put_i32(len as i32),
        (false, false) => buf.put_i16(len as i16),
    }
}

/// Encodes `resp` at `version` into chunks whose concatenation is the response body.
/// Returns `None` for versions this writer does not cover (the caller falls back).
pub fn encode_chunks(resp: &FetchResponse, version: i16) -> Option<Vec<Bytes>> {
    if !(4..=MAX_VERSION).contains(&version) {
        return None;
    }
    let flexible = version >= 12;
    let mut parts = Vec::new();
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(resp.throttle_time_ms);
    if version >= 7 {
        buf.put_i16(resp.error_code);
        buf.put_i32(resp.session_id);
    }
    put_len(&mut buf, flexible, resp.responses.len(), true);
    for topic in &resp.responses {
        let name = topic.topic.0.as_bytes();
        put_len(&mut buf, flexible, name.len(), false);
        buf.put_slice(name);
        put_len(&mut buf, flexible, topic.partitions.len(), true);
        for p in &topic.partitions {
            buf.put_i32(p.partition_index);
            buf.put_i16(p.error_code);
            buf.put_i64(p.high_watermark);
            buf.put_i64(p.last_stable_offset);
            if version >= 5 {
                buf.put_i64(p.log_start_offset);
            }
            match &p.aborted_transactions {
                None if flexible => put_uvarint(&mut buf, 0),
                None => buf.put_i32(-1),
                Some(list) => {
                    put_len(&mut buf, flexible, list.len(), true);
                    for a in list {
                        buf.put_i64(a.producer_id.0);
                        buf.put_i64(a.first_offset);
                        if flexible {
                            put_uvarint(&mut buf, 0);
                        }
                    }
                }
            }
            if version >= 11 {
                buf.put_i32(p.preferred_read_replica.0);
            }
            match &p.records {
                None if flexible => put_uvarint(&mut buf, 0),
                None => buf.put_i32(-1),
                Some(records) => {
                    put_len(&mut buf, flexible, records.len(), true);
                    if !records.is_empty() {
                        parts.push(buf.split().freeze());
                        parts.push(records.clone());
                    }
                }
            }
            if flexible {
                // The tagged fields of a partition (diverging epoch, current leader, snapshot id)
                // are only written when set, and this broker never sets them.
                put_uvarint(&mut buf, 0);
            }
        }
        if flexible {
            put_uvarint(&mut buf, 0);
        }
    }
    if flexible {
        put_uvarint(&mut buf, 0);
    }
    parts.push(buf.freeze());
    Some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_response::{
        AbortedTransaction, FetchableTopicResponse, PartitionData,
    };
    use kafka_protocol::messages::{BrokerId, ProducerId, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    fn sample(version: i16) -> FetchResponse {
        let partition =
            |i: i32, records: Option<Bytes>, aborted: Option<Vec<AbortedTransaction>>| {
                let mut p = PartitionData::default()
                    .with_partition_index(i)
                    .with_error_code(if i == 2 { 1 } else { 0 })
                    .with_high_watermark(1000 + i64::from(i))
                    .with_last_stable_offset(990)
                    .with_aborted_transactions(aborted)
                    .with_records(records);
                if version >= 5 {
                    p = p.with_log_start_offset(7);
                }
                if version >= 11 {
                    p = p.with_preferred_read_replica(BrokerId(-1));
                }
                p
            };
        let aborted = vec![
            AbortedTransaction::default()
                .with_producer_id(ProducerId(5))
                .with_first_offset(9),
        ];
        let mut resp = FetchResponse::default()
            .with_throttle_time_ms(3)
            .with_responses(vec![
                FetchableTopicResponse::default()
                    .with_topic(TopicName(StrBytes::from_static_str("orders")))
                    .with_partitions(vec![
                        partition(0, Some(Bytes::from(vec![1u8; 300])), Some(vec![])),
                        partition(1, Some(Bytes::new()), None),
                        partition(2, None, Some(aborted)),
                    ]),
                FetchableTopicResponse::default()
                    .with_topic(TopicName(StrBytes::from_static_str("x")))
                    .with_partitions(vec![]),
            ]);
        if version >= 7 {
            resp = resp.with_session_id(0).with_error_code(0);
        }
        resp
    }

    #[test]
    fn chunks_match_kafka_protocol_byte_for_byte() {
        for version in 4..=MAX_VERSION {
            let resp = sample(version);
            let mut theirs = BytesMut::new();
            let encoded = resp.encode(&mut theirs, version);
            assert!(encoded.is_ok(), "v{version}: {encoded:?}");
            let ours: Vec<u8> = encode_chunks(&resp, version).unwrap_or_default().concat();
            assert_eq!(ours, theirs.to_vec(), "Fetch v{version}");
        }
        assert!(encode_chunks(&sample(12), 13).is_none());
    }
}
