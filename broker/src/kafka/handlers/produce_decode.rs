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

/// Decodes the body of a Produce request of `version` (the bytes after the request header).
/// Never panics, and never allocates by a count before checking that the bytes left could
/// hold that many entries.
pub fn decode(body: Bytes, version: i16) -> Result<ProduceData, String> {
    if !VERSIONS.contains(&version) {
        return Err(format!("Produce version {version} is not read here"));
    }
    let mut r = Reader {
        buf: body,
        pos: 0,
        flexible: version >= 9,
    };
    let transactional_id = r.string("transactional_id")?;
    let acks = r.i16("acks")?;
    let timeout_ms = r.i32("timeout_ms")?;
    // A topic takes at least its name's length, its partitions' count and, flexible, its tags.
    let topic_count = r.array_len("topic_data", 3)?;
    let mut topics = SmallVec::with_capacity(topic_count);
    for _ in 0..topic_count {
        let name = r
            .string("topic name")?
            .ok_or("a topic name is null: every topic of a Produce request needs its name")?;
        // A partition takes at least its index, its records' length and, flexible, its tags.
        let partition_count = r.array_len("partition_data", 5)?;
        let mut partitions = SmallVec::with_capacity(partition_count);
        for _ in 0..partition_count {
            let index = r.i32("partition index")?;
            let records = r.bytes("records")?;
            r.skip_tags()?;
            partitions.push(PartitionData { index, records });
        }
        r.skip_tags()?;
        topics.push(TopicData { name, partitions });
    }
    r.skip_tags()?;
    if r.pos != r.buf.len() {
        return Err(format!(
            "{} bytes follow the end of the Produce request",
            r.buf.len() - r.pos
        ));
    }
    Ok(ProduceData {
        transactional_id,
        acks,
        timeout_ms,
        topics,
    })
}

/// A cursor over the body; every read checks the bytes left.
struct Reader {
    buf: Bytes,
    pos: usize,
    /// Compact lengths and tagged fields (v9+).
    flexible: bool,
}

/// The message for a request that ends inside `what`; out of line, so the reads that may
/// fail this way stay small enough to inline.
#[cold]
#[inline(never)]
fn ends_inside(what: &str) -> String {
    format!("the request ends inside {what}")
}

#[cold]
#[inline(never)]
fn too_long(what: &str, len: usize, left: usize) -> String {
    format!("{what} says {len} bytes but {left} are left in the request")
}

impl Reader {
    #[inline]
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    #[inline]
    fn take<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        match self
            .buf
            .get(self.pos..self.pos + N)
            .and_then(|s| <[u8; N]>::try_from(s).ok())
        {
            Some(bytes) => {
                self.pos += N;
                Ok(bytes)
            }
            None => Err(ends_inside(what)),
        }
    }

    #[inline]
    fn i16(&mut self, what: &str) -> Result<i16, String> {
        self.take::<2>(what).map(i16::from_be_bytes)
    }

    #[inline]
    fn i32(&mut self, what: &str) -> Result<i32, String> {
        self.take::<4>(what).map(i32::from_be_bytes)
    }

    /// An unsigned varint of at most 32 bits; one byte (every count and length under 128)
    /// is read inline.
    #[inline]
    fn uvarint(&mut self, what: &str) -> Result<u32, String> {
        match self.buf.get(self.pos) {
            Some(&b) if b < 0x80 => {
                self.pos += 1;
                Ok(u32::from(b))
            }
            _ => self.long_uvarint(what),
        }
    }

    #[inline(never)]
    fn long_uvarint(&mut self, what: &str) -> Result<u32, String> {
        let mut value = 0u32;
        for i in 0..5 {
            let [b] = self.take::<1>(what)?;
            if i == 4 && b > 0x0f {
                return Err(format!("{what} is a varint longer than 32 bits"));
            }
            value |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!("{what} is a varint longer than 32 bits"))
    }

    /// The next `len` bytes, as a slice of the request.
    #[inline]
    fn slice(&mut self, len: usize, what: &str) -> Result<Bytes, String> {
        if len > self.left() {
            return Err(too_long(what, len, self.left()));
        }
        let s = self.buf.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(s)
    }

    /// A nullable length: `None` for null; compact (length + 1, 0 for null) when flexible,
    /// else `wide` (an `i32` length) or an `i16` one, -1 for null.
    #[inline]
    fn length(&mut self, wide: bool, what: &str) -> Result<Option<usize>, String> {
        if self.flexible {
            return Ok(self.uvarint(what)?.checked_sub(1).map(|n| n as usize));
        }
        let len = if wide {
            self.i32(what)?
        } else {
            i32::from(self.i16(what)?)
        };
        match len {
            -1 => Ok(None),
            n if n < 0 => Err(format!("{what} has the negative length {n}")),
            n => Ok(Some(n as usize)),
        }
    }

    /// A nullable UTF-8 string.
    #[inline]
    fn string(&mut self, what: &str) -> Result<Option<StrBytes>, String> {
        let Some(len) = self.length(false, what)? else {
            return Ok(None);
        };
        let bytes = self.slice(len, what)?;
        StrBytes::try_from(bytes)
            .map(Some)
            .map_err(|e| format!("{what} is not UTF-8: {e}"))
    }

    /// Nullable bytes.
    #[inline]
    fn bytes(&mut self, what: &str) -> Result<Option<Bytes>, String> {
        match self.length(true, what)? {
            None => Ok(None),
            Some(len) => self.slice(len, what).map(Some),
        }
    }

    /// An array's length, refused unless the bytes left could hold that many entries of at
    /// least `min_entry` bytes each (so a forged count allocates nothing). Null is refused:
    /// no array of a Produce request is nullable.
    #[inline]
    fn array_len(&mut self, what: &str, min_entry: usize) -> Result<usize, String> {
        let len = if self.flexible {
            self.uvarint(what)?.checked_sub(1).map(|n| n as usize)
        } else {
            match self.i32(what)? {
                n if n < 0 => None,
                n => Some(n as usize),
            }
        };
        let len = len.ok_or_else(|| format!("{what} is null, which it may not be"))?;
        if len > self.left() / min_entry {
            return Err(format!(
                "{what} says {len} entries but only {} bytes are left in the request",
                self.left()
            ));
        }
        Ok(len)
    }

    /// Skips a tagged-field section (flexible versions; Produce defines no tagged fields).
    #[inline]
    fn skip_tags(&mut self) -> Result<(), String> {
        if !self.flexible {
            return Ok(());
        }
        match self.uvarint("tagged fields")? {
            0 => Ok(()),
            count => self.skip_tagged_fields(count),
        }
    }

    #[inline(never)]
    fn skip_tagged_fields(&mut self, count: u32) -> Result<(), String> {
        for _ in 0..count {
            self.uvarint("a tag")?;
            let size = self.uvarint("a tagged field's size")? as usize;
            self.slice(size, "a tagged field")?;
        }
        Ok(())
    }
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
