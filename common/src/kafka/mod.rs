//! Kafka's record batch format (magic 2), its compression codecs and the consumer protocol, as
//! bytes in and out.

pub mod compression;
pub mod consumer_protocol;
pub mod records;
