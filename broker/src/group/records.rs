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

use crate::kafka::schema::{Reader, SchemaError, Writer};

/// A record that does not follow the layouts (skipped, with a warning, when loading).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed __consumer_offsets record: {0}")]
pub struct MalformedRecord(pub String);

type Result<T> = std::result::Result<T, MalformedRecord>;

impl From<SchemaError> for MalformedRecord {
    fn from(e: SchemaError) -> Self {
        MalformedRecord(e.0)
    }
}

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

/// The key of an offset commit (key version 1).
pub fn offset_key(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    let mut w = Writer::new(8 + group.len() + topic.len(), false);
    w.i16(1).string(group).string(topic).i32(partition);
    w.buf
}

/// The key of a group's metadata (key version 2).
pub fn group_key(group: &str) -> Vec<u8> {
    let mut w = Writer::new(4 + group.len(), false);
    w.i16(2).string(group);
    w.buf
}

/// An offset value: version 1 when it has an expiry, else version 3.
pub fn encode_offset_value(v: &OffsetValue) -> Vec<u8> {
    let mut w = Writer::new(32 + v.metadata.len(), false);
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
    w.buf
}

/// A group value, version 3.
pub fn encode_group_value(v: &GroupValue) -> Vec<u8> {
    let mut w = Writer::new(64, false);
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
    w.buf
}

// ---------------------------------------------------------------------------------------------
// Reading (every version, flexible ones included).

/// Starts reading a `what` value: its version, which must be 0 to 4 (flexible from 4 on);
/// returns the reader positioned after it, and the version.
fn value_reader<'a>(buf: &'a [u8], what: &str) -> Result<(Reader<'a>, i16)> {
    let mut r = Reader::new(buf, false);
    let version = r.i16()?;
    if !(0..=4).contains(&version) {
        return Err(MalformedRecord(format!(
            "{what} value version {version} is unknown"
        )));
    }
    r.flexible = version >= 4;
    Ok((r, version))
}

/// Reads a record key.
pub fn decode_key(key: &[u8]) -> Result<RecordKey> {
    let mut r = Reader::new(key, false);
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
    let (mut r, version) = value_reader(value, "offset")?;
    let offset = r.i64()?;
    let leader_epoch = if version >= 3 { r.i32()? } else { -1 };
    let metadata = r.string()?;
    let commit_timestamp_ms = r.i64()?;
    let expire_timestamp_ms = if version == 1 {
        Some(r.i64()?).filter(|&t| t >= 0)
    } else {
        None
    };
    r.skip_tagged_fields()?;
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
    let (mut r, version) = value_reader(value, "group")?;
    let protocol_type = r.string()?;
    let generation = r.i32()?;
    let protocol = r.nullable_string()?;
    let leader = r.nullable_string()?;
    let current_state_timestamp_ms = if version >= 2 {
        Some(r.i64()?).filter(|&t| t >= 0)
    } else {
        None
    };
    let n = r.array_len(1)?.unwrap_or(0);
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
        r.skip_tagged_fields()?;
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
    r.skip_tagged_fields()?;
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
        let mut w = Writer::new(0, false);
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
        let v = decode_group_value(&w.buf).unwrap_or_else(|e| panic!("{e}"));
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
