//! The parts of Kafka's consumer protocol (protocol type `consumer`) the coordinator reads:
//! the topics of a member's subscription, so OffsetDelete can refuse to delete offsets of
//! topics the group consumes, and so offsets of topics nobody subscribes to can expire.
//!
//! `ConsumerProtocolSubscription` (versions 0-3, not flexible) starts with
//! `version: int16, topics: [string]`; later fields (user data, owned partitions, generation,
//! rack) are not needed here. Newer versions keep that prefix, so it is read for any version.

/// The protocol type of Kafka consumers.
pub const CONSUMER_PROTOCOL_TYPE: &str = "consumer";

/// Most topics read from one subscription (a subscription is bounded by the member metadata
/// limit anyway; this keeps a corrupt count from allocating).
const MAX_TOPICS: usize = 100_000;

/// The topics of a consumer subscription, or `None` if it does not parse.
pub fn subscribed_topics(metadata: &[u8]) -> Option<Vec<String>> {
    let mut buf = metadata;
    let mut take = |n: usize| -> Option<&[u8]> {
        if buf.len() < n {
            return None;
        }
        let (head, tail) = buf.split_at(n);
        buf = tail;
        Some(head)
    };
    let version = i16::from_be_bytes(take(2)?.try_into().ok()?);
    if version < 0 {
        return None;
    }
    let count = i32::from_be_bytes(take(4)?.try_into().ok()?);
    let count = usize::try_from(count).ok()?;
    if count > MAX_TOPICS {
        return None;
    }
    let mut topics = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let len = i16::from_be_bytes(take(2)?.try_into().ok()?);
        let len = usize::try_from(len).ok()?;
        let name = std::str::from_utf8(take(len)?).ok()?;
        topics.push(name.to_owned());
    }
    Some(topics)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v1 subscription as Kafka's Java consumer writes it.
    fn subscription(topics: &[&str]) -> Vec<u8> {
        let mut b = vec![0, 1];
        b.extend_from_slice(&(topics.len() as i32).to_be_bytes());
        for t in topics {
            b.extend_from_slice(&(t.len() as i16).to_be_bytes());
            b.extend_from_slice(t.as_bytes());
        }
        b.extend_from_slice(&(-1i32).to_be_bytes()); // null user data
        b.extend_from_slice(&0i32.to_be_bytes()); // no owned partitions
        b
    }

    #[test]
    fn reads_topics() {
        assert_eq!(
            subscribed_topics(&subscription(&["orders", "payments"])),
            Some(vec!["orders".to_owned(), "payments".to_owned()])
        );
        assert_eq!(subscribed_topics(&subscription(&[])), Some(vec![]));
    }

    #[test]
    fn garbage_is_none() {
        assert_eq!(subscribed_topics(b""), None);
        assert_eq!(subscribed_topics(&[0, 0, 0, 0, 0, 9, 0, 3, b'a']), None);
        assert_eq!(subscribed_topics(&[0, 0, 0x7f, 0xff, 0xff, 0xff]), None);
    }
}
