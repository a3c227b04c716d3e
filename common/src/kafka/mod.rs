//! Kafka's record batch format (magic 2) and its compression codecs, as bytes in and out.

pub mod compression;
pub mod records;
