//! The parts of Kafka's consumer protocol (protocol type `consumer`) the coordinator reads:
//! the topics of a member's subscription, so OffsetDelete can refuse to delete offsets of
//! topics the group consumes, and so offsets of topics nobody subscribes to can expire.
//!
//! `ConsumerProtocolSubscription` (versions 0-3, not flexible) starts with
//! `version: int16, topics: [string]`; later fields (user data, owned partitions, generation,
//! rack) are not needed here. Newer versions keep that prefix, so it is read for any version.

// The reading is the shared crate's, which the Kafka client uses too.
pub use quiver_common::kafka::consumer_protocol::{CONSUMER_PROTOCOL_TYPE, subscribed_topics};

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
