//! The coordinator's records in `__consumer_offsets`: the [`OffsetsStore`] creates the topic on
//! first use (as Kafka does), appends a group's records to the group's partition without
//! waiting for the disk, hands back a [`Written`] to wait on, and reads every group back when
//! the broker opens.
//!
//! Offsets committed in a transaction (TxnOffsetCommit) are a transactional batch of their
//! producer. Loading applies them where the transaction's COMMIT marker is, drops them at an
//! ABORT marker, and hands back those of transactions still open as pending.
//!
//! The store reaches the broker's catalog only through [`OffsetsTopic`], so the coordinator
//! depends on the partition logs of one topic, not on the whole [`Broker`](crate::Broker).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use futures::future::BoxFuture;
use kafka_protocol::error::ResponseError;

use super::messages::CommittedOffset;
use super::records::{
    self, GroupValue, MemberValue, RecordKey, decode_group_value, decode_key, decode_offset_value,
};
use super::state::Group;
use super::{GroupState, OFFSETS_TOPIC, partition_for};
use crate::error::{BrokerError, Result};
use crate::log::{Ack, Log, ProducerInfo, attributes, now_ms};
use crate::record::{EnvelopeBuilder, EnvelopeColumns};
use crate::txn::records::{ControlType, decode_control_key};
use crate::txn::state::TxnResult;

/// Bytes read per step when loading `__consumer_offsets`.
const LOAD_READ_BYTES: usize = 4 << 20;
/// `max.message.bytes` of `__consumer_offsets` (a group's metadata record holds every
/// member's subscription and assignment).
const OFFSETS_TOPIC_MAX_MESSAGE_BYTES: usize = 16 << 20;
/// `segment.bytes` of `__consumer_offsets` (Kafka's `offsets.topic.segment.bytes`).
const OFFSETS_TOPIC_SEGMENT_BYTES: u64 = 100 << 20;

/// What the offsets store needs from the broker's catalog. The broker implements it; it must
/// not keep the broker alive (the coordinator is part of the broker).
pub(crate) trait OffsetsTopic: Send + Sync {
    /// The partition logs of `__consumer_offsets`, in partition order, if the topic exists.
    fn partitions(&self) -> Option<Vec<Arc<Log>>>;

    /// Creates `__consumer_offsets` with `partitions` partitions and these topic configs (or
    /// finds it, if it was made meanwhile) and returns its partition logs in partition order.
    /// [`BrokerError::ShuttingDown`] once the broker is gone.
    fn create(
        &self,
        partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> BoxFuture<'_, Result<Vec<Arc<Log>>>>;

    /// True if a topic of this name exists (offsets of deleted topics are dropped at load).
    fn topic_exists(&self, topic: &str) -> bool;
}

/// Records appended to `__consumer_offsets` and not yet known to be on disk.
#[derive(Debug)]
#[must_use = "the records are not durable until acknowledged or flushed"]
pub(crate) struct Written {
    log: Arc<Log>,
    /// The offset after the records.
    end: i64,
}

impl Written {
    /// Waits until the records are acknowledged by the rule acks=all produce follows: durable
    /// with `log.flush.on.ack` (the default), else written.
    pub(crate) async fn acknowledge(&self) -> Result<()> {
        self.log.acknowledge(self.end, Ack::All).await
    }

    /// Waits until the records are fsynced.
    pub(crate) async fn flush(&self) -> Result<()> {
        self.log.flush_to(self.end).await
    }
}

/// One group's records as read back from `__consumer_offsets`: the last of each key wins, and
/// a tombstone removes.
#[derive(Debug, Default)]
pub(crate) struct LoadedGroup {
    pub metadata: Option<GroupValue>,
    pub offsets: BTreeMap<(String, i32), CommittedOffset>,
    /// Offsets of transactions with no marker yet, by producer id.
    pub pending_txn: HashMap<i64, BTreeMap<(String, i32), CommittedOffset>>,
}

/// The records of one producer's open transaction in one partition, in log order.
type OpenTxnRecords = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// Every group read back from `__consumer_offsets`, with counts for the log.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub groups: HashMap<String, LoadedGroup>,
    pub records_read: usize,
    /// Records skipped because their key or value does not decode.
    pub malformed: usize,
}

/// The coordinator's handle on `__consumer_offsets`.
pub(crate) struct OffsetsStore {
    topic: Box<dyn OffsetsTopic>,
    /// `offsets.topic.num.partitions`: partitions of the topic when the store creates it.
    partitions_when_created: i32,
    /// The topic's partition logs, once it exists. Set once: internal topics are neither
    /// deleted nor re-partitioned.
    logs: OnceLock<Vec<Arc<Log>>>,
    /// Serializes creating the topic.
    create_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for OffsetsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OffsetsStore")
            .field("partitions", &self.partition_count())
            .finish_non_exhaustive()
    }
}

impl OffsetsStore {
    /// A store over `topic` that creates `__consumer_offsets` with `partitions_when_created`
    /// partitions when it is first needed.
    pub(crate) fn new(topic: Box<dyn OffsetsTopic>, partitions_when_created: i32) -> OffsetsStore {
        OffsetsStore {
            topic,
            partitions_when_created,
            logs: OnceLock::new(),
            create_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Partitions of `__consumer_offsets` (0 until it exists).
    pub(crate) fn partition_count(&self) -> i32 {
        self.logs.get().map_or(0, |logs| logs.len() as i32)
    }

    /// True if a topic of this name exists.
    pub(crate) fn topic_exists(&self, topic: &str) -> bool {
        self.topic.topic_exists(topic)
    }

    /// Makes sure `__consumer_offsets` exists, creating it on first use.
    pub(crate) async fn ensure_exists(&self) -> Result<(), ResponseError> {
        if self.logs.get().is_some() {
            return Ok(());
        }
        let _one_at_a_time = self.create_lock.lock().await;
        if self.logs.get().is_some() {
            return Ok(());
        }
        let logs = match self.topic.partitions() {
            Some(logs) => logs,
            None => {
                let configs = BTreeMap::from([
                    ("cleanup.policy".to_owned(), "compact".to_owned()),
                    (
                        "segment.bytes".to_owned(),
                        OFFSETS_TOPIC_SEGMENT_BYTES.to_string(),
                    ),
                    (
                        "max.message.bytes".to_owned(),
                        OFFSETS_TOPIC_MAX_MESSAGE_BYTES.to_string(),
                    ),
                ]);
                match self
                    .topic
                    .create(self.partitions_when_created, configs)
                    .await
                {
                    Ok(logs) => logs,
                    Err(BrokerError::ShuttingDown) => return Err(ResponseError::NotCoordinator),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot create {OFFSETS_TOPIC}; groups are unavailable");
                        return Err(ResponseError::CoordinatorNotAvailable);
                    }
                }
            }
        };
        let _ = self.logs.set(logs);
        Ok(())
    }

    /// The partition of `__consumer_offsets` that holds a group's records, once the topic
    /// exists.
    pub(crate) fn partition_of(&self, group_id: &str) -> Option<i32> {
        self.logs
            .get()
            .filter(|logs| !logs.is_empty())
            .map(|logs| partition_for(group_id, logs.len() as i32))
    }

    /// Appends records to the group's partition without waiting for the disk.
    fn append(&self, group_id: &str, batch: &mut EnvelopeBuilder) -> Result<Written> {
        self.append_as(group_id, batch, ProducerInfo::NONE)
    }

    /// [`OffsetsStore::append`] as a batch of `producer`.
    fn append_as(
        &self,
        group_id: &str,
        batch: &mut EnvelopeBuilder,
        producer: ProducerInfo,
    ) -> Result<Written> {
        let logs = self
            .logs
            .get()
            .filter(|logs| !logs.is_empty())
            .ok_or_else(|| BrokerError::UnknownTopic(OFFSETS_TOPIC.to_owned()))?;
        let p = partition_for(group_id, logs.len() as i32);
        let log = logs
            .get(p as usize)
            .cloned()
            .ok_or_else(|| BrokerError::UnknownPartition {
                topic: OFFSETS_TOPIC.to_owned(),
                partition: p,
                partitions: logs.len() as i32,
            })?;
        let info = log.append_unflushed(&batch.finish(), producer)?;
        Ok(Written {
            log,
            end: info.last_offset + 1,
        })
    }

    /// Appends committed offsets of a group, one record per `(topic, partition, offset)`.
    /// With `transaction` (producer id and epoch) they are a transactional batch of that
    /// producer, which takes effect with the transaction's COMMIT marker.
    pub(crate) fn write_offsets<'a>(
        &self,
        group_id: &str,
        timestamp_ms: i64,
        offsets: impl ExactSizeIterator<Item = (&'a str, i32, &'a CommittedOffset)>,
        transaction: Option<(i64, i16)>,
    ) -> Result<Written> {
        let n = offsets.len();
        let mut batch = EnvelopeBuilder::with_capacity(n, n * 64);
        for (topic, partition, v) in offsets {
            let key = records::offset_key(group_id, topic, partition);
            let value = records::encode_offset_value(v);
            batch.append(timestamp_ms, Some(&key), Some(&value), &[]);
        }
        let producer = match transaction {
            None => ProducerInfo::NONE,
            Some((producer_id, producer_epoch)) => ProducerInfo {
                producer_id,
                producer_epoch,
                // Kafka writes transactional offset commits without a sequence.
                base_sequence: -1,
                attributes: attributes::TRANSACTIONAL,
            },
        };
        self.append_as(group_id, &mut batch, producer)
    }

    /// Persists the group's metadata (a tombstone for a dead group). Best effort: a failure is
    /// logged, and the group goes on in memory.
    pub(crate) fn write_group_metadata(&self, g: &Group) {
        let value =
            (g.state != GroupState::Dead).then(|| records::encode_group_value(&group_value(g)));
        let mut batch = EnvelopeBuilder::with_capacity(1, value.as_ref().map_or(0, Vec::len));
        batch.append(
            now_ms(),
            Some(&records::group_key(&g.id)),
            value.as_deref(),
            &[],
        );
        if let Err(e) = self.append(&g.id, &mut batch) {
            tracing::warn!(group = %g.id, generation = g.generation, error = %e, "cannot persist the group's metadata; it goes on in memory, and after a restart resumes from the last metadata persisted");
        }
    }

    /// Writes tombstones for `offsets` (and for the group itself when `group_too`). Returns
    /// what to wait on, if anything was written.
    pub(crate) fn write_tombstones(
        &self,
        group_id: &str,
        offsets: &[(String, i32)],
        group_too: bool,
    ) -> Option<Written> {
        let ts = now_ms();
        let mut batch = EnvelopeBuilder::with_capacity(offsets.len() + 1, 0);
        for (t, p) in offsets {
            batch.append(ts, Some(&records::offset_key(group_id, t, *p)), None, &[]);
        }
        if group_too {
            batch.append(ts, Some(&records::group_key(group_id)), None, &[]);
        }
        if batch.is_empty() {
            return None;
        }
        match self.append(group_id, &mut batch) {
            Ok(done) => Some(done),
            Err(e) => {
                tracing::warn!(group = %group_id, error = %e, "cannot write tombstones; the removal holds in memory but may come back after a restart");
                None
            }
        }
    }

    /// Reads `__consumer_offsets` from the start, if it exists, and folds its records into the
    /// groups they describe. A damaged segment does not stop the load: what it held is lost
    /// (groups fall back to older commits), the rest is read.
    pub(crate) fn load(&self) -> Result<Loaded> {
        let mut loaded = Loaded::default();
        let Some(logs) = self.topic.partitions() else {
            return Ok(loaded);
        };
        for (p, log) in self.logs.get_or_init(|| logs).iter().enumerate() {
            read_partition(p as i32, log, &mut loaded)?;
        }
        Ok(loaded)
    }
}

/// Reads one partition of `__consumer_offsets` into `loaded`.
fn read_partition(p: i32, log: &Log, loaded: &mut Loaded) -> Result<()> {
    let mut open: HashMap<i64, OpenTxnRecords> = HashMap::new();
    log.replay(LOAD_READ_BYTES, |batch| {
        let cols = EnvelopeColumns::try_new(&batch.records)?;
        let producer = batch.header.producer;
        let control = producer.attributes & attributes::CONTROL != 0;
        let transactional = producer.attributes & attributes::TRANSACTIONAL != 0;
        for i in 0..batch.records.num_rows() {
            loaded.records_read += 1;
            let Some(key) = cols.key(i) else {
                loaded.malformed += 1;
                continue;
            };
            if control {
                match decode_control_key(key) {
                    Ok(ControlType::Marker(result)) => {
                        let records = open.remove(&producer.producer_id).unwrap_or_default();
                        if result == TxnResult::Commit {
                            for (key, value) in records {
                                apply_logged(p, loaded, &key, value.as_deref());
                            }
                        }
                    }
                    Ok(ControlType::Other(_)) => {}
                    Err(e) => {
                        loaded.malformed += 1;
                        tracing::warn!(partition = p, error = %e, "skipping a control record of {OFFSETS_TOPIC}");
                    }
                }
            } else if transactional {
                open.entry(producer.producer_id)
                    .or_default()
                    .push((key.to_vec(), cols.value(i).map(<[u8]>::to_vec)));
            } else {
                // A plain commit after a transactional one of the same partition wins
                // when the transaction commits, as in Kafka (the later record counts).
                for records in open.values_mut() {
                    records.retain(|(k, _)| k.as_slice() != key);
                }
                apply_logged(p, loaded, key, cols.value(i));
            }
        }
        Ok(())
    })?;
    // Transactions with no marker yet: their offsets wait for it, as they did before the stop.
    for (producer_id, records) in open {
        for (key, value) in records {
            if let Err(e) = apply_pending(&mut loaded.groups, producer_id, &key, value.as_deref()) {
                loaded.malformed += 1;
                tracing::warn!(partition = p, error = %e, "skipping a transactional record of {OFFSETS_TOPIC}");
            }
        }
    }
    Ok(())
}

/// [`apply`], counting and logging a record that does not decode.
fn apply_logged(p: i32, loaded: &mut Loaded, key: &[u8], value: Option<&[u8]>) {
    if let Err(e) = apply(&mut loaded.groups, key, value) {
        loaded.malformed += 1;
        tracing::warn!(partition = p, error = %e, "skipping a record of {OFFSETS_TOPIC}");
    }
}

/// Folds one record of a still-open transaction into its group's pending offsets (only offset
/// commits are written in transactions).
fn apply_pending(
    groups: &mut HashMap<String, LoadedGroup>,
    producer_id: i64,
    key: &[u8],
    value: Option<&[u8]>,
) -> std::result::Result<(), records::MalformedRecord> {
    if let RecordKey::Offset {
        group,
        topic,
        partition,
    } = decode_key(key)?
        && let Some(value) = value
    {
        let v = decode_offset_value(value)?;
        groups
            .entry(group)
            .or_default()
            .pending_txn
            .entry(producer_id)
            .or_default()
            .insert((topic, partition), v);
    }
    Ok(())
}

/// Folds one record into the groups read so far.
fn apply(
    groups: &mut HashMap<String, LoadedGroup>,
    key: &[u8],
    value: Option<&[u8]>,
) -> std::result::Result<(), records::MalformedRecord> {
    match decode_key(key)? {
        RecordKey::Offset {
            group,
            topic,
            partition,
        } => {
            let entry = groups.entry(group).or_default();
            match value.map(decode_offset_value) {
                None => {
                    entry.offsets.remove(&(topic, partition));
                }
                Some(v) => {
                    entry.offsets.insert((topic, partition), v?);
                }
            }
        }
        RecordKey::Group { group } => {
            let entry = groups.entry(group).or_default();
            entry.metadata = value.map(decode_group_value).transpose()?;
        }
        RecordKey::Other(_) => {}
    }
    Ok(())
}

/// The group's metadata as stored.
fn group_value(g: &Group) -> GroupValue {
    let protocol = g.protocol_name.clone().unwrap_or_default();
    GroupValue {
        protocol_type: g.protocol_type.clone().unwrap_or_default(),
        generation: g.generation,
        protocol: g.protocol_name.clone(),
        leader: g.leader.clone(),
        current_state_timestamp_ms: Some(g.state_since_ms),
        members: g
            .members
            .values()
            .map(|m| MemberValue {
                member_id: m.id.clone(),
                group_instance_id: m.instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                rebalance_timeout_ms: m.rebalance_timeout_ms,
                session_timeout_ms: m.session_timeout_ms,
                subscription: m.metadata(&protocol),
                assignment: m.assignment.clone(),
            })
            .collect(),
    }
}
