//! Reads Produce requests (v3 to v11) by hand, into [`ProduceData`]: the topics' names and the
//! partitions' record bytes as slices of the request frame. `kafka-protocol`'s decoder builds
//! a structure of its own for every topic and partition (each with a map for unknown tagged
//! fields, dropped again after the append): for a one-record Produce that was about a tenth of
//! the broker's instructions. The layout is Kafka's; a test decodes requests that
//! `kafka-protocol` encodes, in every version, and every cut of them.

use bytes::Bytes;
use kafka_protocol::messages::produce_request::ProduceRequest;
use kafka_protocol::protocol::StrBytes;
use smallvec::SmallVec;

use crate::kafka::schema::{Reader, SchemaError};

/// Versions read here: every Produce version the broker speaks.
pub const VERSIONS: std::ops::RangeInclusive<i16> = 3..=11;

/// A Produce request's body. Most requests name one topic and one partition, which it holds
/// without allocating.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProduceData {
    pub transactional_id: Option<StrBytes>,
    pub acks: i16,
    pub timeout_ms: i32,
    pub topics: SmallVec<[TopicData; 1]>,
}

/// One topic of a Produce request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicData {
    pub name: StrBytes,
    pub partitions: SmallVec<[PartitionData; 1]>,
}

/// One partition of a Produce request: its index and its record batches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionData {
    pub index: i32,
    pub records: Option<Bytes>,
}

impl From<ProduceRequest> for ProduceData {
    fn from(req: ProduceRequest) -> Self {
        ProduceData {
            transactional_id: req.transactional_id.map(|t| t.0),
            acks: req.acks,
            timeout_ms: req.timeout_ms,
            topics: req
                .topic_data
                .into_iter()
                .map(|t| TopicData {
                    name: t.name.0,
                    partitions: t
                        .partition_data
                        .into_iter()
                        .map(|p| PartitionData {
                            index: p.index,
                            records: p.records,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// Decodes the body of a Produce request of `version` (the bytes after the request header),
/// with the field readers of `kafka::schema`; names and records are slices of `body`.
/// Never panics, and never allocates by a count before checking that the bytes left could
/// hold that many entries.
pub fn decode(body: Bytes, version: i16) -> Result<ProduceData, String> {
    if !VERSIONS.contains(&version) {
        return Err(format!("Produce version {version} is not read here"));
    }
    let mut r = Reader::new(&body, version >= 9);
    let transactional_id = string(&body, &mut r, "transactional_id")?;
    let acks = r.i16().map_err(at("acks"))?;
    let timeout_ms = r.i32().map_err(at("timeout_ms"))?;
    // A topic takes at least its name's length, its partitions' count and, flexible, its tags.
    let topic_count = array_len(&mut r, "topic_data", 3)?;
    let mut topics = SmallVec::with_capacity(topic_count);
    for _ in 0..topic_count {
        let name = string(&body, &mut r, "topic name")?
            .ok_or("a topic name is null: every topic of a Produce request needs its name")?;
        // A partition takes at least its index, its records' length and, flexible, its tags.
        let partition_count = array_len(&mut r, "partition_data", 5)?;
        let mut partitions = SmallVec::with_capacity(partition_count);
        for _ in 0..partition_count {
            let index = r.i32().map_err(at("partition index"))?;
            let records = match r.len(true).map_err(at("records"))? {
                None => None,
                Some(len) => Some(slice(&body, &mut r, len, "records")?),
            };
            r.skip_tagged_fields()
                .map_err(at("a partition's tagged fields"))?;
            partitions.push(PartitionData { index, records });
        }
        r.skip_tagged_fields()
            .map_err(at("a topic's tagged fields"))?;
        topics.push(TopicData { name, partitions });
    }
    r.skip_tagged_fields()
        .map_err(at("the request's tagged fields"))?;
    if r.left() != 0 {
        return Err(format!(
            "{} bytes follow the end of the Produce request",
            r.left()
        ));
    }
    Ok(ProduceData {
        transactional_id,
        acks,
        timeout_ms,
        topics,
    })
}

/// Names the field a schema error came from.
fn at(what: &'static str) -> impl FnOnce(SchemaError) -> String {
    move |e| format!("{what}: {}", e.0)
}

/// The next `len` bytes, as a slice of `body`.
#[inline]
fn slice(
    body: &Bytes,
    r: &mut Reader<'_>,
    len: usize,
    what: &'static str,
) -> Result<Bytes, String> {
    if len > r.left() {
        return Err(format!(
            "{what} says {len} bytes but {} are left in the request",
            r.left()
        ));
    }
    r.take(len).map(|s| body.slice_ref(s)).map_err(at(what))
}

/// A nullable UTF-8 string, as a slice of `body`.
#[inline]
fn string(
    body: &Bytes,
    r: &mut Reader<'_>,
    what: &'static str,
) -> Result<Option<StrBytes>, String> {
    let Some(len) = r.len(false).map_err(at(what))? else {
        return Ok(None);
    };
    let bytes = slice(body, r, len, what)?;
    StrBytes::try_from(bytes)
        .map(Some)
        .map_err(|e| format!("{what} is not UTF-8: {e}"))
}

/// An array's length, refused unless the bytes left could hold that many entries of at least
/// `min_entry` bytes each (so a forged count allocates nothing). Null is refused: no array of
/// a Produce request is nullable.
#[inline]
fn array_len(r: &mut Reader<'_>, what: &'static str, min_entry: usize) -> Result<usize, String> {
    let len = r
        .len(true)
        .map_err(at(what))?
        .ok_or_else(|| format!("{what} is null, which it may not be"))?;
    if len > r.left() / min_entry {
        return Err(format!(
            "{what} says {len} entries but only {} bytes are left in the request",
            r.left()
        ));
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{TopicName, TransactionalId};
    use kafka_protocol::protocol::Encodable;

    /// Requests in the shapes clients send: one topic and partition; several of each, with a
    /// null records field, an empty one and a transactional id; a topic with no partitions.
    fn samples() -> Vec<ProduceRequest> {
        let partition = |index: i32, records: Option<&'static [u8]>| {
            PartitionProduceData::default()
                .with_index(index)
                .with_records(records.map(Bytes::from_static))
        };
        let topic = |name: &'static str, partitions: Vec<PartitionProduceData>| {
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str(name)))
                .with_partition_data(partitions)
        };
        vec![
            ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(30_000)
                .with_topic_data(vec![topic(
                    "orders",
                    vec![partition(0, Some(b"batch bytes"))],
                )]),
            ProduceRequest::default()
                .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str("txn-é"))))
                .with_acks(1)
                .with_timeout_ms(5)
                .with_topic_data(vec![
                    topic(
                        "a",
                        vec![
                            partition(2, Some(b"x")),
                            partition(0, None),
                            partition(7, Some(b"")),
                        ],
                    ),
                    topic("b.c-d_e", vec![partition(1, Some(&[0u8; 300]))]),
                    topic("empty", vec![]),
                ]),
            ProduceRequest::default().with_acks(0),
        ]
    }

    fn encoded(req: &ProduceRequest, version: i16) -> Bytes {
        let mut buf = BytesMut::new();
        if let Err(e) = req.encode(&mut buf, version) {
            panic!("v{version}: kafka-protocol does not encode the sample: {e}");
        }
        buf.freeze()
    }

    #[test]
    fn requests_kafka_protocol_encodes_decode_to_the_same_fields() {
        for version in VERSIONS {
            for req in samples() {
                let want = ProduceData::from(req.clone());
                match decode(encoded(&req, version), version) {
                    Ok(got) => assert_eq!(got, want, "v{version}"),
                    Err(e) => panic!("v{version}: {e}"),
                }
            }
        }
    }

    #[test]
    fn unknown_tagged_fields_are_skipped() {
        let req = samples().swap_remove(1);
        let mut tagged = req.clone();
        tagged
            .unknown_tagged_fields
            .insert(90, Bytes::from_static(b"later"));
        tagged.topic_data[0].partition_data[0]
            .unknown_tagged_fields
            .insert(7, Bytes::from_static(b"?"));
        match decode(encoded(&tagged, 11), 11) {
            Ok(got) => assert_eq!(got, ProduceData::from(req)),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn every_cut_and_trailing_byte_is_refused() {
        for version in VERSIONS {
            for req in samples() {
                let full = encoded(&req, version);
                for cut in 0..full.len() {
                    let got = decode(full.slice(..cut), version);
                    assert!(got.is_err(), "v{version} cut at {cut} of {}", full.len());
                }
                let mut longer = full.to_vec();
                longer.push(0);
                let got = decode(Bytes::from(longer), version);
                assert!(
                    got.as_ref().is_err_and(|e| e.contains("follow the end")),
                    "v{version}: {got:?}"
                );
            }
        }
    }

    #[test]
    fn forged_counts_and_lengths_are_refused_with_what_they_claim() {
        // v8: transactional id null, acks, timeout, then a topic count of 2^31 - 1.
        let mut body = vec![0xff, 0xff, 0, 1, 0, 0, 0, 5];
        body.extend_from_slice(&i32::MAX.to_be_bytes());
        let got = decode(Bytes::from(body), 8);
        assert!(
            got.as_ref()
                .is_err_and(|e| e.contains("topic_data says 2147483647 entries")),
            "{got:?}"
        );
        // v11: one topic "t" with one partition whose records claim 1,000 bytes.
        let body = vec![0, 0, 1, 0, 0, 0, 5, 2, 2, b't', 2, 0, 0, 0, 0, 0xe9, 0x07];
        let got = decode(Bytes::from(body), 11);
        assert!(
            got.as_ref()
                .is_err_and(|e| e.contains("records says 1000 bytes but 0 are left")),
            "{got:?}"
        );
        // A name that is not UTF-8.
        let body = vec![0xff, 0xff, 0, 1, 0, 0, 0, 5, 0, 0, 0, 1, 0, 1, 0xc3];
        let got = decode(Bytes::from(body), 3);
        assert!(
            got.as_ref().is_err_and(|e| e.contains("not UTF-8")),
            "{got:?}"
        );
    }
}
