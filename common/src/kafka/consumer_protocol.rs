//! Kafka's consumer protocol (protocol type `consumer`): what a consumer group member sends in
//! JoinGroup (its subscription) and what the leader hands out in SyncGroup (each member's
//! assignment). Both are versioned byte strings opaque to the coordinator.
//!
//! Written at version 0 (`version: int16, topics: [string], user_data: bytes` and
//! `version: int16, partitions: [topic: string, partitions: [int32]], user_data: bytes`), which
//! every Kafka client reads. Read at any version: later versions only append fields, which are
//! skipped. Reading never sizes an allocation by a count from the bytes: a count larger than the
//! bytes left could hold is refused.

/// The protocol type of Kafka consumers.
pub const CONSUMER_PROTOCOL_TYPE: &str = "consumer";

/// A cursor over big-endian protocol bytes; `None` when the bytes run out.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }

    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    fn string(&mut self) -> Option<&'a str> {
        let len = usize::try_from(self.i16()?).ok()?;
        std::str::from_utf8(self.take(len)?).ok()
    }

    /// An array count, refused when the bytes left cannot hold that many elements of at least
    /// `element_bytes_min` bytes each.
    fn count(&mut self, element_bytes_min: usize) -> Option<usize> {
        let count = usize::try_from(self.i32()?).ok()?;
        (count <= self.buf.len() / element_bytes_min.max(1)).then_some(count)
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    // Topic names are at most 249 bytes; a longer one is cut rather than mis-framed.
    let bytes = &s.as_bytes()[..s.len().min(i16::MAX as usize)];
    out.extend_from_slice(&(bytes.len() as i16).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A subscription to `topics` (version 0, no user data).
pub fn encode_subscription(topics: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + topics.iter().map(|t| t.len() + 2).sum::<usize>());
    out.extend_from_slice(&0i16.to_be_bytes());
    out.extend_from_slice(&(topics.len() as i32).to_be_bytes());
    for t in topics {
        put_string(&mut out, t);
    }
    out.extend_from_slice(&(-1i32).to_be_bytes());
    out
}

/// The topics of a subscription, or `None` if it does not parse.
pub fn subscribed_topics(metadata: &[u8]) -> Option<Vec<String>> {
    let mut r = Reader { buf: metadata };
    if r.i16()? < 0 {
        return None;
    }
    let count = r.count(2)?;
    let mut topics = Vec::with_capacity(count);
    for _ in 0..count {
        topics.push(r.string()?.to_owned());
    }
    Some(topics)
}

/// An assignment of partitions by topic (version 0, no user data).
pub fn encode_assignment(assignment: &[(String, Vec<i32>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0i16.to_be_bytes());
    out.extend_from_slice(&(assignment.len() as i32).to_be_bytes());
    for (topic, partitions) in assignment {
        put_string(&mut out, topic);
        out.extend_from_slice(&(partitions.len() as i32).to_be_bytes());
        for p in partitions {
            out.extend_from_slice(&p.to_be_bytes());
        }
    }
    out.extend_from_slice(&(-1i32).to_be_bytes());
    out
}

/// The partitions of an assignment by topic, or `None` if it does not parse. Empty bytes are
/// an empty assignment (what a coordinator sends a member the leader gave nothing).
pub fn decode_assignment(bytes: &[u8]) -> Option<Vec<(String, Vec<i32>)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let mut r = Reader { buf: bytes };
    if r.i16()? < 0 {
        return None;
    }
    let count = r.count(6)?;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let topic = r.string()?.to_owned();
        let n = r.count(4)?;
        let mut partitions = Vec::with_capacity(n);
        for _ in 0..n {
            partitions.push(r.i32()?);
        }
        out.push((topic, partitions));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;
    use kafka_protocol::messages::consumer_protocol_assignment::ConsumerProtocolAssignment;
    use kafka_protocol::messages::consumer_protocol_subscription::ConsumerProtocolSubscription;
    use kafka_protocol::protocol::Decodable;

    #[test]
    fn subscriptions_round_trip_and_read_as_kafka_reads_them() {
        let topics = vec!["orders".to_owned(), "payments".to_owned()];
        let bytes = encode_subscription(&topics);
        assert_eq!(subscribed_topics(&bytes), Some(topics.clone()));
        let mut buf = bytes::Bytes::from(bytes);
        let version = buf.get_i16();
        let theirs = ConsumerProtocolSubscription::decode(&mut buf, version).ok();
        let theirs: Option<Vec<String>> =
            theirs.map(|s| s.topics.iter().map(ToString::to_string).collect());
        assert_eq!(theirs, Some(topics));
    }

    #[test]
    fn assignments_round_trip_and_read_as_kafka_reads_them() {
        let assignment = vec![("orders".to_owned(), vec![0, 2]), ("x".to_owned(), vec![])];
        let bytes = encode_assignment(&assignment);
        assert_eq!(decode_assignment(&bytes), Some(assignment.clone()));
        let mut buf = bytes::Bytes::from(bytes);
        let version = buf.get_i16();
        let theirs = ConsumerProtocolAssignment::decode(&mut buf, version).ok();
        let theirs: Option<Vec<(String, Vec<i32>)>> = theirs.map(|a| {
            a.assigned_partitions
                .into_iter()
                .map(|tp| (tp.topic.0.to_string(), tp.partitions))
                .collect()
        });
        assert_eq!(theirs, Some(assignment));
        assert_eq!(decode_assignment(&[]), Some(Vec::new()));
    }

    #[test]
    fn hostile_counts_are_refused_without_allocating() {
        let mut lying = 0i16.to_be_bytes().to_vec();
        lying.extend_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(subscribed_topics(&lying), None);
        assert_eq!(decode_assignment(&lying), None);
        let good = encode_assignment(&[("t".to_owned(), vec![1, 2, 3])]);
        for cut in 1..good.len() - 4 {
            assert_eq!(decode_assignment(&good[..cut]), None, "cut at {cut}");
        }
        assert_eq!(subscribed_topics(&[0xff, 0xff]), None, "negative version");
    }
}
