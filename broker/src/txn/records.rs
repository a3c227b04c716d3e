//! The records of `__transaction_state` and the transaction markers, in Kafka's layouts, so the
//! topic and the partitions read like Kafka's:
//!
//! - key (`TransactionLogKey`): int16 version 0 (in Kafka 4 the coordinator record type, also
//!   0), then the transactional id as an int16-length string.
//! - value (`TransactionLogValue`) version 0: int16 version, int64 producer id, int16 producer
//!   epoch, int32 transaction timeout, int8 status ([`TxnState::id`]), a nullable array (int32
//!   count) of `{ topic: string, partition_ids: [int32] }`, int64 last update timestamp, int64
//!   start timestamp.
//! - value version 1 is flexible: the same fields with compact lengths (unsigned varint of
//!   length + 1, 0 for null), a tagged-field section at the end of every struct, and tagged
//!   fields 0 `PreviousProducerId` (int64, default -1), 1 `NextProducerId` (int64, -1),
//!   2 `ClientTransactionVersion` (int16, 0) and 3 `NextProducerEpoch` (int16, -1), written
//!   only when not at their default.
//! - a null value is a tombstone: the transactional id expired.
//!
//! Quiver writes value version 1 (Kafka's with `transaction.version` 1 or more); it reads both.
//! Partitions are written as null when the state is `Empty`, as Kafka does.
//!
//! Markers are control records: key int16 version 0 + int16 type (0 ABORT, 1 COMMIT), value
//! (`EndTxnMarker`) int16 version 0 + int32 coordinator epoch.
//!
//! No I/O happens here. Decoding never panics and never sizes an allocation from a count it
//! has not checked against the bytes left.

use std::collections::{BTreeSet, HashMap};

use crate::kafka::schema::{Reader, SchemaError, Writer};

use super::state::{NO_PRODUCER_EPOCH, TxnMetadata, TxnPartition, TxnResult, TxnState, TxnVersion};

/// A record that does not follow the layouts (skipped, with a warning, when loading).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed __transaction_state record: {0}")]
pub(crate) struct MalformedRecord(pub String);

/// A control record that does not follow Kafka's layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed control record: {0}")]
pub(crate) struct MalformedMarker(pub String);

type Result<T, E = MalformedRecord> = std::result::Result<T, E>;

impl From<SchemaError> for MalformedRecord {
    fn from(e: SchemaError) -> Self {
        MalformedRecord(e.0)
    }
}

/// The value version Quiver writes.
pub(crate) const VALUE_VERSION: i16 = 1;

/// What a key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RecordKey {
    /// The state of one transactional id.
    Transaction(String),
    /// A key version Quiver does not know (newer record kinds); skipped.
    Other(i16),
}

/// One transactional id's state as stored (Kafka's `TransactionLogValue`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TxnLogValue {
    pub producer_id: i64,
    /// -1 when none (and in version 0, which does not have it).
    pub previous_producer_id: i64,
    /// -1 when none (and in version 0).
    pub next_producer_id: i64,
    /// -1 when none (and in version 0).
    pub next_producer_epoch: i16,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    /// Empty when the state is `Empty` (whatever was stored).
    pub partitions: BTreeSet<TxnPartition>,
    pub last_update_timestamp_ms: i64,
    pub start_timestamp_ms: i64,
    /// `V0` in version 0.
    pub client_version: TxnVersion,
}

impl TxnLogValue {
    /// The stored form of a transactional id's metadata.
    pub(crate) fn of(meta: &TxnMetadata) -> TxnLogValue {
        TxnLogValue {
            producer_id: meta.producer_id,
            previous_producer_id: meta.previous_producer_id,
            next_producer_id: meta.next_producer_id,
            next_producer_epoch: NO_PRODUCER_EPOCH,
            producer_epoch: meta.producer_epoch,
            timeout_ms: meta.timeout_ms,
            state: meta.state,
            partitions: if meta.state == TxnState::Empty {
                BTreeSet::new()
            } else {
                meta.partitions.clone()
            },
            last_update_timestamp_ms: meta.last_update_timestamp_ms,
            start_timestamp_ms: meta.start_timestamp_ms,
            client_version: meta.client_version,
        }
    }

    /// The metadata a stored value gives after a restart (no transition in flight, the epoch
    /// before the last bump unknown, as in Kafka).
    pub(crate) fn into_metadata(self, transactional_id: String) -> TxnMetadata {
        TxnMetadata {
            transactional_id,
            producer_id: self.producer_id,
            previous_producer_id: self.previous_producer_id,
            next_producer_id: self.next_producer_id,
            producer_epoch: self.producer_epoch,
            last_producer_epoch: NO_PRODUCER_EPOCH,
            timeout_ms: self.timeout_ms,
            state: self.state,
            partitions: self.partitions,
            start_timestamp_ms: self.start_timestamp_ms,
            last_update_timestamp_ms: self.last_update_timestamp_ms,
            client_version: self.client_version,
            pending: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writing.

/// The key of a transactional id's state.
pub(crate) fn encode_key(transactional_id: &str) -> Vec<u8> {
    let mut w = Writer::new(4 + transactional_id.len(), false);
    w.i16(0).string(transactional_id);
    w.buf
}

/// A value in [`VALUE_VERSION`].
pub(crate) fn encode_value(v: &TxnLogValue) -> Vec<u8> {
    encode_value_version(v, VALUE_VERSION)
}

/// A value in `version` 0 or 1 (version 0 drops the tagged fields, as Kafka does).
pub(crate) fn encode_value_version(v: &TxnLogValue, version: i16) -> Vec<u8> {
    let flexible = version >= 1;
    let mut w = Writer::new(64 + v.partitions.len() * 8, flexible);
    w.i16(if flexible { 1 } else { 0 })
        .i64(v.producer_id)
        .i16(v.producer_epoch)
        .i32(v.timeout_ms)
        .i8(v.state.id());
    if v.state == TxnState::Empty {
        w.len(None);
    } else {
        let topics = group_by_topic(&v.partitions);
        w.len(Some(topics.len()));
        for (topic, ids) in topics {
            w.string(topic).len(Some(ids.len()));
            for id in ids {
                w.i32(id);
            }
            w.tagged_fields(&[]);
        }
    }
    w.i64(v.last_update_timestamp_ms).i64(v.start_timestamp_ms);
    let mut tagged = Vec::new();
    if v.previous_producer_id != -1 {
        tagged.push((0, v.previous_producer_id.to_be_bytes().to_vec()));
    }
    if v.next_producer_id != -1 {
        tagged.push((1, v.next_producer_id.to_be_bytes().to_vec()));
    }
    if v.client_version.level() != 0 {
        tagged.push((2, v.client_version.level().to_be_bytes().to_vec()));
    }
    if v.next_producer_epoch != -1 {
        tagged.push((3, v.next_producer_epoch.to_be_bytes().to_vec()));
    }
    w.tagged_fields(&tagged);
    w.buf
}

/// An upper bound of the bytes [`encode_value`] takes for a transaction over `partitions`
/// (either version), without encoding it.
pub(crate) fn value_bytes_max(partitions: &BTreeSet<TxnPartition>) -> usize {
    // Fixed fields plus the four tagged fields at their largest.
    const FIXED_BYTES: usize = 2 + 8 + 2 + 4 + 1 + 4 + 8 + 8 + 1 + 4 * 11;
    group_by_topic(partitions)
        .iter()
        .map(|(topic, ids)| 2 + topic.len() + 4 + 1 + ids.len() * 4)
        .sum::<usize>()
        + FIXED_BYTES
}

/// Partitions grouped by topic, in order.
fn group_by_topic(partitions: &BTreeSet<TxnPartition>) -> Vec<(&str, Vec<i32>)> {
    let mut topics: Vec<(&str, Vec<i32>)> = Vec::new();
    for p in partitions {
        match topics.last_mut() {
            Some((topic, ids)) if *topic == p.topic => ids.push(p.partition),
            _ => topics.push((&p.topic, vec![p.partition])),
        }
    }
    topics
}

// ---------------------------------------------------------------------------------------------
// Reading.

/// Reads a key.
pub(crate) fn decode_key(key: &[u8]) -> Result<RecordKey> {
    let mut r = Reader::new(key, false);
    match r.i16()? {
        0 => Ok(RecordKey::Transaction(r.string()?)),
        v => Ok(RecordKey::Other(v)),
    }
}

fn fixed<const N: usize>(tag: u64, data: &[u8]) -> Result<[u8; N]> {
    <[u8; N]>::try_from(data).map_err(|_| {
        MalformedRecord(format!(
            "tagged field {tag} has {} bytes, not {N}",
            data.len()
        ))
    })
}

/// Reads a value (versions 0 and 1).
pub(crate) fn decode_value(value: &[u8]) -> Result<TxnLogValue> {
    let mut r = Reader::new(value, false);
    let version = r.i16()?;
    if !(0..=1).contains(&version) {
        return Err(MalformedRecord(format!(
            "transaction value version {version} is unknown (0 and 1 are)"
        )));
    }
    r.flexible = version >= 1;
    let producer_id = r.i64()?;
    let producer_epoch = r.i16()?;
    let timeout_ms = r.i32()?;
    let status = r.i8()?;
    let state = TxnState::from_id(status)
        .ok_or_else(|| MalformedRecord(format!("transaction status {status} is unknown")))?;
    let mut partitions = BTreeSet::new();
    // A topic entry takes at least a string length and an array length.
    let topics = r.array_len(2)?.unwrap_or(0);
    for _ in 0..topics {
        let topic = r.string()?;
        let ids = r.array_len(4)?.unwrap_or(0);
        for _ in 0..ids {
            let id = r.i32()?;
            // Kafka ignores the partitions of an `Empty` transaction.
            if state != TxnState::Empty {
                partitions.insert(TxnPartition::new(topic.clone(), id));
            }
        }
        r.skip_tagged_fields()?;
    }
    let last_update_timestamp_ms = r.i64()?;
    let start_timestamp_ms = r.i64()?;
    let mut v = TxnLogValue {
        producer_id,
        previous_producer_id: -1,
        next_producer_id: -1,
        next_producer_epoch: -1,
        producer_epoch,
        timeout_ms,
        state,
        partitions,
        last_update_timestamp_ms,
        start_timestamp_ms,
        client_version: TxnVersion::V0,
    };
    r.tagged_fields(|tag, data| {
        match tag {
            0 => v.previous_producer_id = i64::from_be_bytes(fixed(tag, data)?),
            1 => v.next_producer_id = i64::from_be_bytes(fixed(tag, data)?),
            2 => {
                let level = i16::from_be_bytes(fixed(tag, data)?);
                v.client_version = TxnVersion::from_level(level).ok_or_else(|| {
                    MalformedRecord(format!("client transaction version {level} is unknown"))
                })?;
            }
            3 => v.next_producer_epoch = i16::from_be_bytes(fixed(tag, data)?),
            _ => {}
        }
        Ok::<(), MalformedRecord>(())
    })?;
    if !r.buf.is_empty() {
        return Err(MalformedRecord(format!(
            "{} bytes follow the value",
            r.buf.len()
        )));
    }
    Ok(v)
}

// ---------------------------------------------------------------------------------------------
// Replaying.

/// The transactional ids `__transaction_state` holds, rebuilt by feeding it every record from
/// the start of each partition, in log order (what the coordinator does on start).
#[derive(Debug, Default)]
pub(crate) struct Replay {
    ids: HashMap<String, TxnMetadata>,
}

impl Replay {
    /// Applies one record: a value replaces what the id had, a tombstone (or a `Dead` value)
    /// removes it, keys of other kinds are skipped. A malformed record changes nothing; the
    /// error is for the caller to count and log.
    pub(crate) fn apply(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        let RecordKey::Transaction(id) = decode_key(key)? else {
            return Ok(());
        };
        let Some(value) = value else {
            self.ids.remove(&id);
            return Ok(());
        };
        let v = decode_value(value)?;
        match v.state {
            TxnState::Dead => {
                self.ids.remove(&id);
            }
            TxnState::PrepareEpochFence => {
                return Err(MalformedRecord(format!(
                    "transactional id '{id}' is stored in state {}, which is never written",
                    v.state
                )));
            }
            _ => {
                self.ids.insert(id.clone(), v.into_metadata(id));
            }
        }
        Ok(())
    }

    /// The transactional ids and their metadata once every record is applied.
    pub(crate) fn finish(self) -> HashMap<String, TxnMetadata> {
        self.ids
    }
}

// ---------------------------------------------------------------------------------------------
// Markers.

/// What a control record's key says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ControlType {
    /// A transaction marker.
    Marker(TxnResult),
    /// Another control record (Kafka's KRaft records); not a transaction's.
    Other(i16),
}

/// The key of a marker record.
pub(crate) fn marker_key(result: TxnResult) -> [u8; 4] {
    let kind: i16 = match result {
        TxnResult::Abort => 0,
        TxnResult::Commit => 1,
    };
    let mut key = [0u8; 4];
    key[2..].copy_from_slice(&kind.to_be_bytes());
    key
}

/// The value of a marker record (`EndTxnMarker` version 0).
pub(crate) fn marker_value(coordinator_epoch: i32) -> [u8; 6] {
    let mut value = [0u8; 6];
    value[2..].copy_from_slice(&coordinator_epoch.to_be_bytes());
    value
}

/// The outcome a stored control batch (envelope schema) marks, if it is a transaction marker.
pub(crate) fn marker_of(batch: &arrow::record_batch::RecordBatch) -> Option<TxnResult> {
    let cols = crate::record::EnvelopeColumns::try_new(batch).ok()?;
    match cols.key(0).map(decode_control_key) {
        Some(Ok(ControlType::Marker(result))) => Some(result),
        _ => None,
    }
}

/// Reads a control record's key. A newer key version is read as version 0, as Kafka does.
pub(crate) fn decode_control_key(key: &[u8]) -> Result<ControlType, MalformedMarker> {
    let [v0, v1, t0, t1] = <[u8; 4]>::try_from(key.get(..4).unwrap_or(key)).map_err(|_| {
        MalformedMarker(format!(
            "a control key has {} bytes, at least 4 needed",
            key.len()
        ))
    })?;
    let version = i16::from_be_bytes([v0, v1]);
    if version < 0 {
        return Err(MalformedMarker(format!("control key version {version}")));
    }
    Ok(match i16::from_be_bytes([t0, t1]) {
        0 => ControlType::Marker(TxnResult::Abort),
        1 => ControlType::Marker(TxnResult::Commit),
        other => ControlType::Other(other),
    })
}

#[cfg(test)]
/// Reads a marker's value: the coordinator epoch. A newer version is read as version 0.
pub(crate) fn decode_marker_value(value: &[u8]) -> Result<i32, MalformedMarker> {
    let bytes = <[u8; 6]>::try_from(value.get(..6).unwrap_or(value)).map_err(|_| {
        MalformedMarker(format!(
            "a marker value has {} bytes, at least 6 needed",
            value.len()
        ))
    })?;
    let version = i16::from_be_bytes([bytes[0], bytes[1]]);
    if version < 0 {
        return Err(MalformedMarker(format!("marker value version {version}")));
    }
    Ok(i32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value(state: TxnState, partitions: &[(&str, i32)]) -> TxnLogValue {
        TxnLogValue {
            producer_id: 1000,
            previous_producer_id: -1,
            next_producer_id: -1,
            next_producer_epoch: -1,
            producer_epoch: 3,
            timeout_ms: 60_000,
            state,
            partitions: partitions
                .iter()
                .map(|&(t, p)| TxnPartition::new(t, p))
                .collect(),
            last_update_timestamp_ms: 1_700_000_000_123,
            start_timestamp_ms: 1_700_000_000_000,
            client_version: TxnVersion::V0,
        }
    }

    #[test]
    fn key_matches_kafka_bytes() {
        assert_eq!(encode_key("tx"), vec![0, 0, 0, 2, b't', b'x']);
        assert_eq!(
            decode_key(&[0, 0, 0, 2, b't', b'x']),
            Ok(RecordKey::Transaction("tx".into()))
        );
        assert_eq!(decode_key(&[0, 7, 0, 0]), Ok(RecordKey::Other(7)));
        assert!(decode_key(&[0, 0, 0, 5, b'a']).is_err(), "truncated id");
        assert!(decode_key(&[0]).is_err(), "truncated version");
    }

    #[test]
    fn state_ids_are_kafkas() {
        let ids: Vec<i8> = TxnState::ALL.iter().map(|s| s.id()).collect();
        assert_eq!(ids, vec![0, 1, 2, 3, 4, 5, 6, 7]);
        for s in TxnState::ALL {
            assert_eq!(TxnState::from_id(s.id()), Some(s));
        }
        assert_eq!(TxnState::from_id(8), None);
        assert_eq!(TxnState::from_id(-1), None);
    }

    /// The version 0 bytes of an Ongoing transaction over `t-0`, `t-2` and `u-1`, assembled by
    /// hand from Kafka's `TransactionLogValue` schema.
    fn kafka_v0_ongoing() -> Vec<u8> {
        let mut b = vec![0, 0];
        b.extend_from_slice(&1000i64.to_be_bytes());
        b.extend_from_slice(&3i16.to_be_bytes());
        b.extend_from_slice(&60_000i32.to_be_bytes());
        b.push(1);
        b.extend_from_slice(&2i32.to_be_bytes());
        b.extend_from_slice(&[0, 1, b't']);
        b.extend_from_slice(&2i32.to_be_bytes());
        b.extend_from_slice(&0i32.to_be_bytes());
        b.extend_from_slice(&2i32.to_be_bytes());
        b.extend_from_slice(&[0, 1, b'u']);
        b.extend_from_slice(&1i32.to_be_bytes());
        b.extend_from_slice(&1i32.to_be_bytes());
        b.extend_from_slice(&1_700_000_000_123i64.to_be_bytes());
        b.extend_from_slice(&1_700_000_000_000i64.to_be_bytes());
        b
    }

    #[test]
    fn version_0_value_matches_kafka_bytes() {
        let v = value(TxnState::Ongoing, &[("t", 0), ("t", 2), ("u", 1)]);
        assert_eq!(encode_value_version(&v, 0), kafka_v0_ongoing());
        assert_eq!(decode_value(&kafka_v0_ongoing()), Ok(v));
    }

    #[test]
    fn version_1_value_matches_kafka_bytes() {
        // Compact lengths (n + 1), an empty tagged-field section after each topic, and tagged
        // fields 0 (previous producer id), 2 (client transaction version) and 3 (next epoch).
        let mut b = vec![0, 1];
        b.extend_from_slice(&1000i64.to_be_bytes());
        b.extend_from_slice(&3i16.to_be_bytes());
        b.extend_from_slice(&60_000i32.to_be_bytes());
        b.push(2);
        b.push(2); // one topic
        b.extend_from_slice(&[2, b't']);
        b.push(3); // two partitions
        b.extend_from_slice(&0i32.to_be_bytes());
        b.extend_from_slice(&2i32.to_be_bytes());
        b.push(0); // the topic's tagged fields
        b.extend_from_slice(&1_700_000_000_123i64.to_be_bytes());
        b.extend_from_slice(&1_700_000_000_000i64.to_be_bytes());
        b.push(3); // three tagged fields
        b.extend_from_slice(&[0, 8]);
        b.extend_from_slice(&999i64.to_be_bytes());
        b.extend_from_slice(&[2, 2, 0, 2]);
        b.extend_from_slice(&[3, 2, 0, 4]);
        let v = TxnLogValue {
            previous_producer_id: 999,
            next_producer_epoch: 4,
            client_version: TxnVersion::V2,
            ..value(TxnState::PrepareCommit, &[("t", 0), ("t", 2)])
        };
        assert_eq!(encode_value(&v), b);
        assert_eq!(decode_value(&b), Ok(v));
    }

    #[test]
    fn empty_state_writes_null_partitions_and_ignores_stored_ones() {
        let v = value(TxnState::Empty, &[]);
        let bytes = encode_value_version(&v, 0);
        // Null array: int32 -1 right after the status byte.
        assert_eq!(&bytes[17..21], &(-1i32).to_be_bytes());
        assert_eq!(decode_value(&bytes), Ok(v.clone()));
        let flexible = encode_value(&v);
        assert_eq!(flexible[17], 0, "compact null array");
        assert_eq!(decode_value(&flexible), Ok(v));
        // Kafka drops partitions stored with an Empty status; so does Quiver.
        let mut stored = kafka_v0_ongoing();
        stored[16] = 0;
        let read = decode_value(&stored).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read.state, TxnState::Empty);
        assert!(read.partitions.is_empty());
    }

    #[test]
    fn unknown_tagged_fields_are_skipped_and_bad_known_ones_refused() {
        let v = value(TxnState::Ongoing, &[("t", 1)]);
        let mut b = encode_value(&v);
        let last = b.len() - 1;
        assert_eq!(b[last], 0, "no tagged fields at default values");
        b[last] = 1;
        b.extend_from_slice(&[9, 3, 1, 2, 3]);
        assert_eq!(decode_value(&b), Ok(v.clone()));
        let mut b = encode_value(&v);
        b[last] = 1;
        b.extend_from_slice(&[0, 2, 1, 2]);
        assert!(decode_value(&b).is_err(), "previous producer id of 2 bytes");
    }

    #[test]
    fn malformed_values_are_refused_with_the_reason() {
        let v = encode_value(&value(TxnState::Ongoing, &[("t", 1)]));
        let err = |b: &[u8]| decode_value(b).err().map(|e| e.0).unwrap_or_default();
        assert!(err(&[0, 2]).contains("version 2 is unknown"));
        let mut bad_status = v.clone();
        bad_status[16] = 9;
        assert!(err(&bad_status).contains("status 9"));
        assert!(err(&v[..v.len() - 3]).contains("more bytes"));
        let mut trailing = v.clone();
        trailing.push(0);
        assert!(err(&trailing).contains("follow the value"));
        // A topic count of two billion in version 0 is refused before anything is allocated.
        let mut huge = kafka_v0_ongoing();
        huge[17..21].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(err(&huge).contains("claims"));
    }

    #[test]
    fn value_size_bound_holds() {
        for partitions in [
            vec![],
            vec![("t", 0)],
            vec![("t", 0), ("t", 1), ("a-much-longer-topic-name", 7)],
        ] {
            let v = TxnLogValue {
                previous_producer_id: 1,
                next_producer_id: 2,
                next_producer_epoch: 3,
                client_version: TxnVersion::V2,
                ..value(TxnState::Ongoing, &partitions)
            };
            let bound = value_bytes_max(&v.partitions);
            assert!(encode_value(&v).len() <= bound);
            assert!(encode_value_version(&v, 0).len() <= bound);
        }
    }

    #[test]
    fn markers_match_kafka_bytes() {
        assert_eq!(marker_key(TxnResult::Abort), [0, 0, 0, 0]);
        assert_eq!(marker_key(TxnResult::Commit), [0, 0, 0, 1]);
        assert_eq!(marker_value(5), [0, 0, 0, 0, 0, 5]);
        assert_eq!(
            decode_control_key(&[0, 0, 0, 1]),
            Ok(ControlType::Marker(TxnResult::Commit))
        );
        assert_eq!(
            decode_control_key(&[0, 0, 0, 0]),
            Ok(ControlType::Marker(TxnResult::Abort))
        );
        assert_eq!(decode_control_key(&[0, 0, 0, 3]), Ok(ControlType::Other(3)));
        // A newer version is read as version 0.
        assert_eq!(
            decode_control_key(&[0, 1, 0, 1, 9]),
            Ok(ControlType::Marker(TxnResult::Commit))
        );
        assert!(decode_control_key(&[0, 0, 0]).is_err());
        assert!(decode_control_key(&[0xff, 0xff, 0, 0]).is_err());
        assert_eq!(decode_marker_value(&[0, 0, 0, 0, 0, 5]), Ok(5));
        assert_eq!(decode_marker_value(&[0, 1, 0, 0, 1, 0, 7, 7]), Ok(256));
        assert!(decode_marker_value(&[0, 0, 0, 0, 5]).is_err());
        assert!(decode_marker_value(&[0x80, 0, 0, 0, 0, 5]).is_err());
    }

    #[test]
    fn replay_keeps_the_last_record_of_each_id_and_drops_tombstones() {
        let ongoing = value(TxnState::Ongoing, &[("t", 0)]);
        let committed = TxnLogValue {
            producer_epoch: 4,
            ..value(TxnState::CompleteCommit, &[])
        };
        let mut replay = Replay::default();
        let ok = |r: Result<()>| r.unwrap_or_else(|e| panic!("{e}"));
        ok(replay.apply(&encode_key("a"), Some(&encode_value(&ongoing))));
        ok(replay.apply(&encode_key("b"), Some(&encode_value(&ongoing))));
        ok(replay.apply(&encode_key("a"), Some(&encode_value(&committed))));
        ok(replay.apply(&encode_key("b"), None));
        ok(replay.apply(&encode_key("c"), Some(&encode_value(&ongoing))));
        ok(replay.apply(
            &encode_key("c"),
            Some(&encode_value(&value(TxnState::Dead, &[]))),
        ));
        // Newer record kinds are skipped; malformed records change nothing.
        ok(replay.apply(&[0, 9, 0, 0], Some(b"whatever")));
        assert!(replay.apply(&encode_key("a"), Some(&[0, 1, 2])).is_err());
        assert!(replay.apply(&[0], None).is_err());
        let fence = value(TxnState::PrepareEpochFence, &[("t", 0)]);
        assert!(
            replay
                .apply(&encode_key("a"), Some(&encode_value(&fence)))
                .is_err()
        );
        let ids = replay.finish();
        assert_eq!(ids.len(), 1);
        let a = &ids["a"];
        assert_eq!(a.transactional_id, "a");
        assert_eq!(a.state, TxnState::CompleteCommit);
        assert_eq!(a.producer_epoch, 4);
        assert_eq!(a.last_producer_epoch, NO_PRODUCER_EPOCH);
        assert_eq!(a.pending, None);
    }

    fn any_state() -> impl Strategy<Value = TxnState> {
        proptest::sample::select(TxnState::ALL.to_vec())
    }

    fn any_version() -> impl Strategy<Value = TxnVersion> {
        proptest::sample::select(vec![TxnVersion::V0, TxnVersion::V1, TxnVersion::V2])
    }

    proptest! {
        #[test]
        fn values_round_trip(
            producer_id in any::<i64>(),
            previous_producer_id in any::<i64>(),
            next_producer_id in any::<i64>(),
            next_producer_epoch in any::<i16>(),
            producer_epoch in any::<i16>(),
            timeout_ms in any::<i32>(),
            state in any_state(),
            partitions in proptest::collection::btree_set(("[a-z._-]{1,12}", 0i32..1000), 0..20),
            last in any::<i64>(),
            start in any::<i64>(),
            client_version in any_version(),
        ) {
            let v = TxnLogValue {
                producer_id,
                previous_producer_id,
                next_producer_id,
                next_producer_epoch,
                producer_epoch,
                timeout_ms,
                state,
                partitions: if state == TxnState::Empty {
                    BTreeSet::new()
                } else {
                    partitions.into_iter().map(|(t, p)| TxnPartition::new(t, p)).collect()
                },
                last_update_timestamp_ms: last,
                start_timestamp_ms: start,
                client_version,
            };
            prop_assert_eq!(decode_value(&encode_value(&v)), Ok(v.clone()));
            // Version 0 keeps everything but the tagged fields.
            let v0 = TxnLogValue {
                previous_producer_id: -1,
                next_producer_id: -1,
                next_producer_epoch: -1,
                client_version: TxnVersion::V0,
                ..v.clone()
            };
            prop_assert_eq!(decode_value(&encode_value_version(&v, 0)), Ok(v0));
        }

        #[test]
        fn keys_round_trip(id in "\\PC{0,40}") {
            prop_assert_eq!(decode_key(&encode_key(&id)), Ok(RecordKey::Transaction(id)));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_key(&bytes);
            let _ = decode_value(&bytes);
            let _ = decode_control_key(&bytes);
            let _ = decode_marker_value(&bytes);
        }

        #[test]
        fn flipped_bytes_of_a_value_never_panic(
            at in 0usize..200,
            byte in any::<u8>(),
            version in 0i16..2,
        ) {
            let mut b = encode_value_version(
                &value(TxnState::Ongoing, &[("t", 0), ("t", 2), ("u", 1)]),
                version,
            );
            let at = at % b.len();
            b[at] = byte;
            let _ = decode_value(&b);
        }
    }
}
