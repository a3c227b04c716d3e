//! The records of `__consumer_offsets`, in Kafka's layouts (the `OffsetCommitKey`,
//! `OffsetCommitValue`, `GroupMetadataKey` and `GroupMetadataValue` schemas of Kafka's
//! group coordinator), so the topic reads like Kafka's:
//!
//! - key version 0 or 1: an offset commit, `group, topic, partition`; value versions 0-4.
//! - key version 2: a group's metadata, `group`; value versions 0-4.
//! - a null value is a tombstone: the offset, or the group's metadata, was removed.
//!
//! Quiver writes offset values as version 3 (version 1 when the commit carries an explicit
//! expiry, as OffsetCommit v2-v4 may) and group values as version 3. It reads every version,
//! including the flexible version 4 that newer Kafka brokers write. No I/O happens here.

use bytes::Bytes;

/// A record that does not follow the layouts (skipped, with a warning, when loading).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed __consumer_offsets record: {0}")]
pub struct MalformedRecord(pub String);

type Result<T> = std::result::Result<T, MalformedRecord>;

/// What a record's key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordKey {
    /// A committed offset of one partition.
    Offset {
        group: String,
        topic: String,
        partition: i32,
    },
    /// A group's metadata (generation, protocol, members).
    Group { group: String },
    /// A key version Quiver does not know (newer record kinds); skipped.
    Other(i16),
}

/// A committed offset as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetValue {
    pub offset: i64,
    /// -1 when unknown.
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
    /// Set by OffsetCommit v2-v4 with an explicit retention time.
    pub expire_timestamp_ms: Option<i64>,
}

/// A group's metadata as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupValue {
    /// Empty when the group has none (offset storage only).
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    /// When the group entered its current state, if known.
    pub current_state_timestamp_ms: Option<i64>,
    pub members: Vec<MemberValue>,
}

/// One member in a group's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberValue {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    /// The member's metadata for the group's protocol.
    pub subscription: Bytes,
    pub assignment: Bytes,
}

// ---------------------------------------------------------------------------------------------
// Writing (non-flexible versions only).

struct Writer(Vec<u8>);

impl Writer {
    fn i16(&mut self, v: i16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i32(&mut self, v: i32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i64(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// A string of at most `i16::MAX` bytes (longer input is cut at a char boundary; callers
    /// only pass strings that came in as Kafka strings, which fit).
    fn string(&mut self, s: &str) -> &mut Self {
        let mut end = s.len().min(i16::MAX as usize);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.i16(end as i16);
        self.0.extend_from_slice(&s.as_bytes()[..end]);
        self
    }
    fn nullable_string(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            Some(s) => self.string(s),
            None => self.i16(-1),
        }
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.i32(i32::try_from(b.len()).unwrap_or(i32::MAX));
        self.0.extend_from_slice(b);
        self
    }
}

/// The key of an offset commit (key version 1).
pub fn offset_key(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(8 + group.len() + topic.len()));
    w.i16(1).string(group).string(topic).i32(partition);
    w.0
}

/// The key of a group's metadata (key version 2).
pub fn group_key(group: &str) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(4 + group.len()));
    w.i16(2).string(group);
    w.0
}

/// An offset value: version 1 when it has an expiry, else version 3.
pub fn encode_offset_value(v: &OffsetValue) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(32 + v.metadata.len()));
    match v.expire_timestamp_ms {
        Some(expire) => {
            w.i16(1)
                .i64(v.offset)
                .string(&v.metadata)
                .i64(v.commit_timestamp_ms)
                .i64(expire);
        }
        None => {
            w.i16(3)
                .i64(v.offset)
                .i32(v.leader_epoch)
                .string(&v.metadata)
                .i64(v.commit_timestamp_ms);
        }
    }
    w.0
}

/// A group value, version 3.
pub fn encode_group_value(v: &GroupValue) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(64));
    w.i16(3)
        .string(&v.protocol_type)
        .i32(v.generation)
        .nullable_string(v.protocol.as_deref())
        .nullable_string(v.leader.as_deref())
        .i64(v.current_state_timestamp_ms.unwrap_or(-1))
        .i32(v.members.len() as i32);
    for m in &v.members {
        w.string(&m.member_id)
            .nullable_string(m.group_instance_id.as_deref())
            .string(&m.client_id)
            .string(&m.client_host)
            .i32(m.rebalance_timeout_ms)
            .i32(m.session_timeout_ms)
            .bytes(&m.subscription)
            .bytes(&m.assignment);
    }
    w.0
}

// ---------------------------------------------------------------------------------------------
// Reading (every version, flexible ones included).

struct Reader<'a> {
    buf: &'a [u8],
    flexible: bool,
}

impl<'a> Reader<'a> {
    /// Starts reading a `what` value: its version, which must be 0 to 4 (flexible from 4 on);
    /// returns the reader positioned after it, and the version.
    fn value(buf: &'a [u8], what: &str) -> Result<(Reader<'a>, i16)> {
        let mut r = Reader {
            buf,
            flexible: false,
        };
        let version = r.i16()?;
        if !(0..=4).contains(&version) {
            return Err(MalformedRecord(format!(
                "{what} value version {version} is unknown"
            )));
        }
        r.flexible = version >= 4;
        Ok((r, version))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(MalformedRecord(format!(
                "wanted {n} more bytes, {} left",
                self.buf.len()
            )));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn i16(&mut self) -> Result<i16> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Result<i32> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i64(&mut self) -> Result<i64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }
    fn uvarint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(MalformedRecord("varint is too long".into()))
    }
    /// A length: `None` for null.
    fn len(&mut self, wide: bool) -> Result<Option<usize>> {
        if self.flexible {
            let n = self.uvarint()?;
            return Ok(n.checked_sub(1).map(|n| n as usize));
        }
        let n = if wide {
            i64::from(self.i32()?)
        } else {
            i64::from(self.i16()?)
        };
        Ok((n >= 0).then_some(n as usize))
    }
    fn nullable_string(&mut self) -> Result<Option<String>> {
        match self.len(false)? {
            None => Ok(None),
            Some(n) => {
                let b = self.take(n)?;
                String::from_utf8(b.to_vec())
                    .map(Some)
                    .map_err(|_| MalformedRecord("a string is not UTF-8".into()))
            }
        }
    }
    fn string(&mut self) -> Result<String> {
        self.nullable_string()?
            .ok_or_else(|| MalformedRecord("a non-null string is null".into()))
    }
    fn bytes(&mut self) -> Result<Bytes> {
        match self.len(true)? {
            None => Ok(Bytes::new()),
            Some(n) => Ok(Bytes::copy_from_slice(self.take(n)?)),
        }
    }
    fn array_len(&mut self) -> Result<usize> {
        Ok(self.len(true)?.unwrap_or(0))
    }
    /// Skips a flexible struct's tagged fields.
    fn tagged_fields(&mut self) -> Result<()> {
        if !self.flexible {
            return Ok(());
        }
        let n = self.uvarint()?;
        for _ in 0..n {
            self.uvarint()?;
            let size = self.uvarint()?;
            self.take(usize::try_from(size).unwrap_or(usize::MAX))?;
        }
        Ok(())
    }
}

/// Reads a record key.
pub fn decode_key(key: &[u8]) -> Result<RecordKey> {
    let mut r = Reader {
        buf: key,
        flexible: false,
    };
    let version = r.i16()?;
    match version {
        0 | 1 => Ok(RecordKey::Offset {
            group: r.string()?,
            topic: r.string()?,
            partition: r.i32()?,
        }),
        2 => Ok(RecordKey::Group { group: r.string()? }),
        v => Ok(RecordKey::Other(v)),
    }
}

/// Reads an offset value (versions 0-4).
pub fn decode_offset_value(value: &[u8]) -> Result<OffsetValue> {
    let (mut r, version) = Reader::value(value, "offset")?;
    let offset = r.i64()?;
    let leader_epoch = if version >= 3 { r.i32()? } else { -1 };
    let metadata = r.string()?;
    let commit_timestamp_ms = r.i64()?;
    let expire_timestamp_ms = if version == 1 {
        Some(r.i64()?).filter(|&t| t >= 0)
    } else {
        None
    };
    r.tagged_fields()?;
    Ok(OffsetValue {
        offset,
        leader_epoch,
        metadata,
        commit_timestamp_ms,
        expire_timestamp_ms,
    })
}

/// Reads a group value (versions 0-4).
pub fn decode_group_value(value: &[u8]) -> Result<GroupValue> {
    let (mut r, version) = Reader::value(value, "group")?;
    let protocol_type = r.string()?;
    let generation = r.i32()?;
    let protocol = r.nullable_string()?;
    let leader = r.nullable_string()?;
    let current_state_timestamp_ms = if version >= 2 {
        Some(r.i64()?).filter(|&t| t >= 0)
    } else {
        None
    };
    let n = r.array_len()?;
    // Every member takes at least 20 bytes, so a corrupt count cannot make us allocate much.
    let mut members = Vec::with_capacity(n.min(r.buf.len() / 20));
    for _ in 0..n {
        let member_id = r.string()?;
        let group_instance_id = if version >= 3 {
            r.nullable_string()?
        } else {
            None
        };
        let client_id = r.string()?;
        let client_host = r.string()?;
        let rebalance_timeout_ms = if version >= 1 { Some(r.i32()?) } else { None };
        let session_timeout_ms = r.i32()?;
        let subscription = r.bytes()?;
        let assignment = r.bytes()?;
        r.tagged_fields()?;
        members.push(MemberValue {
            member_id,
            group_instance_id,
            client_id,
            client_host,
            rebalance_timeout_ms: rebalance_timeout_ms.unwrap_or(session_timeout_ms),
            session_timeout_ms,
            subscription,
            assignment,
        });
    }
    r.tagged_fields()?;
    Ok(GroupValue {
        protocol_type,
        generation,
        protocol,
        leader,
        current_state_timestamp_ms,
        members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_round_trip() {
        assert_eq!(
            decode_key(&offset_key("g", "orders", 7)),
            Ok(RecordKey::Offset {
                group: "g".into(),
                topic: "orders".into(),
                partition: 7
            })
        );
        assert_eq!(
            decode_key(&group_key("g")),
            Ok(RecordKey::Group { group: "g".into() })
        );
        assert_eq!(decode_key(&[0, 9, 0, 0]), Ok(RecordKey::Other(9)));
        assert!(decode_key(&[0, 1, 0, 5, b'a']).is_err());
    }

    #[test]
    fn offset_key_matches_kafka_bytes() {
        // Kafka's OffsetCommitKey v1 for ("g", "t", 1): version, then int16-length strings.
        assert_eq!(
            offset_key("g", "t", 1),
            vec![0, 1, 0, 1, b'g', 0, 1, b't', 0, 0, 0, 1]
        );
        assert_eq!(group_key("g"), vec![0, 2, 0, 1, b'g']);
    }

    #[test]
    fn flexible_offset_value_reads() {
        // OffsetCommitValue v4: compact string (length + 1) and an empty tagged-field section.
        let mut v = vec![0, 4];
        v.extend_from_slice(&42i64.to_be_bytes());
        v.extend_from_slice(&5i32.to_be_bytes());
        v.extend_from_slice(&[3, b'h', b'i']);
        v.extend_from_slice(&1000i64.to_be_bytes());
        v.push(0);
        assert_eq!(
            decode_offset_value(&v),
            Ok(OffsetValue {
                offset: 42,
                leader_epoch: 5,
                metadata: "hi".into(),
                commit_timestamp_ms: 1000,
                expire_timestamp_ms: None
            })
        );
    }

    #[test]
    fn old_group_value_without_rebalance_timeout_reads() {
        // GroupMetadataValue v0: no rebalance timeout, no state timestamp, no instance ids.
        let mut w = Writer(Vec::new());
        w.i16(0)
            .string("consumer")
            .i32(4)
            .nullable_string(Some("range"))
            .nullable_string(Some("m1"))
            .i32(1)
            .string("m1")
            .string("client")
            .string("/10.0.0.1")
            .i32(10_000)
            .bytes(b"sub")
            .bytes(b"asg");
        let v = decode_group_value(&w.0).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.generation, 4);
        assert_eq!(v.members[0].rebalance_timeout_ms, 10_000);
        assert_eq!(v.members[0].group_instance_id, None);
        assert_eq!(v.current_state_timestamp_ms, None);
    }

    fn any_string() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9._-]{0,20}"
    }

    proptest! {
        #[test]
        fn offset_values_round_trip(
            offset in any::<i64>(),
            epoch in any::<i32>(),
            metadata in any_string(),
            ts in 0i64..i64::MAX,
            expire in proptest::option::of(0i64..i64::MAX),
        ) {
            let v = OffsetValue {
                offset,
                leader_epoch: if expire.is_some() { -1 } else { epoch },
                metadata,
                commit_timestamp_ms: ts,
                expire_timestamp_ms: expire,
            };
            prop_assert_eq!(decode_offset_value(&encode_offset_value(&v)), Ok(v));
        }

        #[test]
        fn group_values_round_trip(
            protocol_type in any_string(),
            generation in any::<i32>(),
            protocol in proptest::option::of(any_string()),
            leader in proptest::option::of(any_string()),
            ts in proptest::option::of(0i64..i64::MAX),
            members in proptest::collection::vec(
                (any_string(), proptest::option::of(any_string()), any_string(),
                 any::<i32>(), any::<i32>(), proptest::collection::vec(any::<u8>(), 0..40)),
                0..5,
            ),
        ) {
            let v = GroupValue {
                protocol_type,
                generation,
                protocol,
                leader,
                current_state_timestamp_ms: ts,
                members: members
                    .into_iter()
                    .map(|(id, instance, client, rebalance, session, data)| MemberValue {
                        member_id: id,
                        group_instance_id: instance,
                        client_id: client,
                        client_host: String::new(),
                        rebalance_timeout_ms: rebalance,
                        session_timeout_ms: session,
                        subscription: Bytes::from(data.clone()),
                        assignment: Bytes::from(data),
                    })
                    .collect(),
            };
            prop_assert_eq!(decode_group_value(&encode_group_value(&v)), Ok(v));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_key(&bytes);
            let _ = decode_offset_value(&bytes);
            let _ = decode_group_value(&bytes);
        }
    }
}
