//! The [`GroupCoordinator`]: every group of the broker, their timers, and their records in
//! `__consumer_offsets`.
//!
//! Concurrency: the group map and each group have their own `parking_lot` mutex, and no lock is
//! held across an `.await`. A JoinGroup or SyncGroup that must wait registers a oneshot sender
//! in the group under its lock, drops the lock, and awaits the receiver, so a waiting request
//! blocks neither its group nor any other. Lock order: a group's lock may be taken before the
//! map's lock, never after.
//!
//! Writes go to the group's partition of `__consumer_offsets` under the group's lock (the append
//! itself does not wait for the disk), so records reach the log in the order the group changed.
//! An OffsetCommit then waits, without the lock, until its records are acknowledged by the
//! rule acks=all produce follows (fsynced with `log.flush.on.ack`, the default), and only then
//! makes the new offsets visible to OffsetFetch; if the write fails, the old offsets stay. Group metadata is written on a best-effort basis: if it cannot be written the
//! group keeps working, and after a restart it resumes from the last metadata written.
//!
//! Timers: one task sleeps until the earliest deadline of any group (session timeouts, join
//! and sync phases, the initial rebalance delay, offset expiry) and is woken when an operation
//! sets an earlier one. A deadline queue (`timers`) says which groups are due, so a pass looks
//! only at those, not at every group. Its lock is taken last: under a group's lock, never the
//! reverse.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::member::Member;
use super::records::{
    self, GroupValue, MemberValue, RecordKey, decode_group_value, decode_key, decode_offset_value,
};
use super::state::{Cx, Group, JoinStep, SyncStep};
use super::timers::DeadlineQueue;
use super::{
    GroupConfig, GroupState, MAX_GROUPS, MAX_MEMBER_METADATA_BYTES, MAX_OFFSETS_PER_GROUP,
    MAX_OFFSETS_TOTAL, MAX_PROTOCOLS_PER_MEMBER, OFFSETS_TOPIC, partition_for,
};
use crate::broker::{Broker, NewTopic, WeakBroker, stopped};
use crate::error::{BrokerError, Result};
use crate::log::{Ack, Log, ProducerInfo, now_ms};
use crate::record::{EnvelopeBuilder, EnvelopeColumns};

/// Timers never fire more often than this (a burst of deadlines is handled in one pass).
const MIN_TICK: Duration = Duration::from_millis(5);
/// Bytes read per step when loading `__consumer_offsets`.
const LOAD_READ_BYTES: usize = 4 << 20;
/// `max.message.bytes` of `__consumer_offsets` (a group's metadata record holds every
/// member's subscription and assignment).
const OFFSETS_TOPIC_MAX_MESSAGE_BYTES: usize = 16 << 20;
/// `segment.bytes` of `__consumer_offsets` (Kafka's `offsets.topic.segment.bytes`).
const OFFSETS_TOPIC_SEGMENT_BYTES: u64 = 100 << 20;

/// A committed offset: the same facts as stored in `__consumer_offsets`.
pub use super::records::OffsetValue as CommittedOffset;

/// A JoinGroup, as the coordinator needs it.
#[derive(Debug, Clone, Default)]
pub struct JoinRequest {
    pub group_id: String,
    /// Empty for a member joining for the first time.
    pub member_id: String,
    /// `group.instance.id` of a static member (JoinGroup v5+).
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    /// `(name, metadata)`, most preferred first.
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a new dynamic member first gets an id (MEMBER_ID_REQUIRED) and rejoins with it.
    pub require_known_member_id: bool,
    /// JoinGroup v9+: a returning static leader is told to skip the assignment.
    pub supports_skip_assignment: bool,
    pub reason: Option<String>,
}

/// One member as the leader sees it in its JoinGroup response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub metadata: Bytes,
}

/// The answer to a JoinGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinResponse {
    /// A Kafka error code (0 = none).
    pub error: i16,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub skip_assignment: bool,
    pub member_id: String,
    /// Every member, for the leader only.
    pub members: Vec<JoinedMember>,
}

impl JoinResponse {
    /// A failed JoinGroup (no generation, no leader).
    pub fn error(member_id: String, error: ResponseError) -> JoinResponse {
        JoinResponse {
            error: error.code(),
            generation_id: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            skip_assignment: false,
            member_id,
            members: Vec::new(),
        }
    }
}

/// A SyncGroup, as the coordinator needs it.
#[derive(Debug, Clone, Default)]
pub struct SyncRequest {
    pub group_id: String,
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    /// SyncGroup v5+: checked against the group's.
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    /// The leader's assignment: `(member id, assignment)`.
    pub assignments: Vec<(String, Bytes)>,
}

/// The answer to a SyncGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncResponse {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncResponse {
    /// A failed SyncGroup.
    pub fn error(error: ResponseError) -> SyncResponse {
        SyncResponse {
            error: error.code(),
            protocol_type: None,
            protocol_name: None,
            assignment: Bytes::new(),
        }
    }
}

/// A member named in a LeaveGroup.
#[derive(Debug, Clone, Default)]
pub struct LeavingMember {
    /// Empty to remove a static member by its instance id.
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub reason: Option<String>,
}

/// The answer to a LeaveGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaveResponse {
    /// A group-level error (then `members` is empty).
    pub error: i16,
    /// One error code per member, in request order.
    pub members: Vec<i16>,
}

/// One partition's offset in an OffsetCommit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommitEntry {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
}

/// An OffsetCommit, as the coordinator needs it.
#[derive(Debug, Clone, Default)]
pub struct OffsetCommit {
    pub group_id: String,
    /// -1 with an empty member id: a commit from outside group management.
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    /// OffsetCommit v2-v4's retention time; `None` uses `offsets.retention.minutes`.
    pub retention_ms: Option<i64>,
    pub offsets: Vec<OffsetCommitEntry>,
}

/// A group as ListGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    pub group_id: String,
    pub protocol_type: String,
    pub state: GroupState,
}

/// A member as DescribeGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

/// A group as DescribeGroups shows it. An unknown group is described as `Dead` with no members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub error: i16,
    pub group_id: String,
    pub state: GroupState,
    pub protocol_type: String,
    /// The selected protocol (only while stable).
    pub protocol: String,
    pub members: Vec<MemberDescription>,
}

type GroupRef = Arc<Mutex<Group>>;

/// The group coordinator of one broker. Owned by the [`Broker`]; reach it with
/// [`Broker::groups`]. Every method answers with Kafka error codes, never panics on client
/// input, and bounds what it keeps (see the limits in [`crate::group`]).
pub struct GroupCoordinator {
    config: GroupConfig,
    groups: Mutex<HashMap<String, GroupRef>>,
    broker: OnceLock<WeakBroker>,
    /// Partitions of `__consumer_offsets` (0 until it exists).
    partitions: AtomicI32,
    /// Serializes creating `__consumer_offsets`.
    topic_lock: tokio::sync::Mutex<()>,
    offsets_total: AtomicUsize,
    wake: Arc<Notify>,
    /// Which group is due when.
    timers: Mutex<DeadlineQueue>,
    /// When the timer task will next wake; `None` while it scans.
    next_wake: Mutex<Option<Instant>>,
    next_expiry_check: Mutex<Instant>,
    stopped: AtomicBool,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for GroupCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCoordinator")
            .field("groups", &self.groups.lock().len())
            .field("partitions", &self.partitions.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The Kafka error for a failed write to `__consumer_offsets` (Kafka's mapping of append errors).
fn write_error(e: &BrokerError) -> ResponseError {
    match e {
        BrokerError::UnknownTopic(_) | BrokerError::UnknownPartition { .. } => {
            ResponseError::CoordinatorNotAvailable
        }
        BrokerError::ShuttingDown => ResponseError::NotCoordinator,
        BrokerError::RecordTooLarge { .. } => ResponseError::InvalidCommitOffsetSize,
        _ => ResponseError::CoordinatorNotAvailable,
    }
}

impl GroupCoordinator {
    /// A coordinator with no groups. [`Broker::open`] starts it with `GroupCoordinator::start`.
    pub fn new(config: GroupConfig) -> GroupCoordinator {
        let check_every = Duration::from_millis(config.offsets_retention_check_interval_ms);
        GroupCoordinator {
            config,
            groups: Mutex::new(HashMap::new()),
            broker: OnceLock::new(),
            partitions: AtomicI32::new(0),
            topic_lock: tokio::sync::Mutex::new(()),
            offsets_total: AtomicUsize::new(0),
            wake: Arc::new(Notify::new()),
            timers: Mutex::new(DeadlineQueue::default()),
            next_wake: Mutex::new(None),
            next_expiry_check: Mutex::new(Instant::now() + check_every),
            stopped: AtomicBool::new(false),
            stop: watch::channel(false).0,
            task: Mutex::new(None),
        }
    }

    /// The coordinator's settings.
    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    /// Loads the groups and offsets stored in `__consumer_offsets` (if it exists) and starts
    /// the timers. Called once by [`Broker::open`], inside a Tokio runtime.
    pub(crate) fn start(&self, broker: &Broker) -> Result<()> {
        let _ = self.broker.set(broker.downgrade());
        self.load(broker)?;
        let weak = broker.downgrade();
        let wake = self.wake.clone();
        let mut stop = self.stop.subscribe();
        let task = tokio::spawn(async move {
            loop {
                let next = {
                    let Some(broker) = weak.upgrade() else { return };
                    broker.groups().tick()
                };
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => {}
                    _ = wake.notified() => {}
                    _ = stopped(&mut stop) => return,
                }
            }
        });
        *self.task.lock() = Some(task);
        Ok(())
    }

    /// Stops the timers and answers every waiting JoinGroup and SyncGroup with NOT_COORDINATOR.
    /// Requests after this get NOT_COORDINATOR.
    pub async fn shutdown(&self) {
        self.stopped.store(true, Ordering::Release);
        self.stop.send_replace(true);
        let task = self.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
        for g in self.snapshot() {
            g.lock().fail_waiters(ResponseError::NotCoordinator);
        }
    }

    fn snapshot(&self) -> Vec<GroupRef> {
        self.groups.lock().values().cloned().collect()
    }

    fn cx(&self) -> Cx<'_> {
        Cx {
            now: Instant::now(),
            now_ms: now_ms(),
            config: &self.config,
        }
    }

    /// Wakes the timer task if `at` is earlier than its next wake-up.
    fn schedule(&self, at: Instant) {
        let wake_at = *self.next_wake.lock();
        if wake_at.is_none_or(|w| at < w) {
            self.wake.notify_one();
        }
    }

    /// Bookkeeping after an operation on a group, under its lock: persist its metadata if it
    /// changed, and arm the timer for its next deadline.
    fn after_op(&self, broker: Option<&Broker>, g: &mut Group) {
        self.persist_if_dirty(broker, g);
        g.hint = g.next_deadline();
        if let Some(at) = g.hint
            && self.timers.lock().schedule(&g.id, at)
        {
            self.schedule(at);
        }
    }

    /// Writes the group's metadata if an operation changed it.
    fn persist_if_dirty(&self, broker: Option<&Broker>, g: &mut Group) {
        if std::mem::take(&mut g.metadata_dirty)
            && let Some(broker) = broker
        {
            self.write_group_metadata(broker, g);
        }
    }

    /// One pass of the timer task: fires what is due, returns when to run again. Looks only
    /// at the groups whose deadline has passed.
    fn tick(&self) -> Instant {
        *self.next_wake.lock() = None;
        let now = Instant::now();
        let cx = Cx {
            now,
            now_ms: now_ms(),
            config: &self.config,
        };
        let broker = self.broker.get().and_then(WeakBroker::upgrade);
        let due = self.timers.lock().pop_due(now);
        for id in due {
            // Gone since it was scheduled; a group made later under the same name schedules itself.
            let Some(group) = self.existing(&id) else {
                continue;
            };
            let mut g = group.lock();
            // An entry may be earlier than the group's deadline (a heartbeat moved it later).
            if g.hint.is_some_and(|at| at <= now) {
                g.fire_timers(&cx);
                self.persist_if_dirty(broker.as_ref(), &mut g);
            }
            g.hint = g.next_deadline();
            if let Some(at) = g.hint {
                self.timers.lock().schedule(&g.id, at);
            }
        }
        let next = self
            .timers
            .lock()
            .next()
            .unwrap_or(now + Duration::from_secs(60));
        let expiry_due = *self.next_expiry_check.lock() <= now;
        if expiry_due {
            self.expire_offsets_at(cx.now_ms);
            *self.next_expiry_check.lock() =
                now + Duration::from_millis(self.config.offsets_retention_check_interval_ms);
        }
        let next = next.min(*self.next_expiry_check.lock()).max(now + MIN_TICK);
        *self.next_wake.lock() = Some(next);
        next
    }

    // ------------------------------------------------------------------------------------------
    // __consumer_offsets

    /// The broker, once `__consumer_offsets` exists (it is created on first use, as Kafka does).
    async fn ready(&self) -> Result<Broker, ResponseError> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(ResponseError::NotCoordinator);
        }
        let broker = self
            .broker
            .get()
            .and_then(WeakBroker::upgrade)
            .ok_or(ResponseError::NotCoordinator)?;
        if self.partitions.load(Ordering::Acquire) > 0 && broker.topic_exists(OFFSETS_TOPIC) {
            return Ok(broker);
        }
        let _one_at_a_time = self.topic_lock.lock().await;
        if let Ok(n) = broker.partition_count(OFFSETS_TOPIC) {
            self.partitions.store(n, Ordering::Release);
            return Ok(broker);
        }
        let new = NewTopic::new(OFFSETS_TOPIC, self.config.offsets_topic_partitions)
            .with_config("cleanup.policy", "compact")
            .with_config("segment.bytes", &OFFSETS_TOPIC_SEGMENT_BYTES.to_string())
            .with_config(
                "max.message.bytes",
                &OFFSETS_TOPIC_MAX_MESSAGE_BYTES.to_string(),
            );
        match broker.create_topic(new).await {
            Ok(_) | Err(BrokerError::TopicExists(_)) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot create {OFFSETS_TOPIC}; groups are unavailable");
                return Err(ResponseError::CoordinatorNotAvailable);
            }
        }
        let n = broker.partition_count(OFFSETS_TOPIC).map_err(|e| {
            tracing::error!(error = %e, "{OFFSETS_TOPIC} vanished after it was created");
            ResponseError::CoordinatorNotAvailable
        })?;
        self.partitions.store(n, Ordering::Release);
        Ok(broker)
    }

    /// Makes sure `__consumer_offsets` exists (FindCoordinator does this, as in Kafka).
    pub async fn ensure_ready(&self) -> Result<(), ResponseError> {
        self.ready().await.map(|_| ())
    }

    /// Appends records to the group's partition without waiting for the disk. Returns the log
    /// and the offset after the records (to wait for with `flush_to`).
    fn append(
        &self,
        broker: &Broker,
        group_id: &str,
        batch: &mut EnvelopeBuilder,
    ) -> Result<(Arc<Log>, i64)> {
        let partitions = self.partitions.load(Ordering::Acquire);
        if partitions <= 0 {
            return Err(BrokerError::UnknownTopic(OFFSETS_TOPIC.to_owned()));
        }
        let log = broker.log(OFFSETS_TOPIC, partition_for(group_id, partitions))?;
        let info = log.append_unflushed(&batch.finish(), ProducerInfo::NONE)?;
        Ok((log, info.last_offset + 1))
    }

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

    /// Persists the group's metadata (a tombstone for a dead group). Best effort: a failure is
    /// logged, and the group goes on in memory.
    fn write_group_metadata(&self, broker: &Broker, g: &Group) {
        let value = (g.state != GroupState::Dead)
            .then(|| records::encode_group_value(&Self::group_value(g)));
        let mut batch = EnvelopeBuilder::with_capacity(1, value.as_ref().map_or(0, Vec::len));
        batch.append(
            now_ms(),
            Some(&records::group_key(&g.id)),
            value.as_deref(),
            &[],
        );
        if let Err(e) = self.append(broker, &g.id, &mut batch) {
            tracing::warn!(group = %g.id, generation = g.generation, error = %e, "cannot persist the group's metadata; it goes on in memory, and after a restart resumes from the last metadata persisted");
        }
    }

    /// Writes tombstones for `offsets` (and for the group itself when `group_too`).
    fn write_tombstones(
        &self,
        broker: &Broker,
        group_id: &str,
        offsets: &[(String, i32)],
        group_too: bool,
    ) -> Option<(Arc<Log>, i64)> {
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
        match self.append(broker, group_id, &mut batch) {
            Ok(done) => Some(done),
            Err(e) => {
                tracing::warn!(group = %group_id, error = %e, "cannot write tombstones; the removal holds in memory but may come back after a restart");
                None
            }
        }
    }

    /// Removes a dead group from the map and the offset count.
    fn forget(&self, g: &Group) {
        self.offsets_total
            .fetch_sub(g.offsets.len(), Ordering::AcqRel);
        let mut groups = self.groups.lock();
        // Only this group object: a new group of the same name may exist already.
        if groups
            .get(&g.id)
            .is_some_and(|r| r.data_ptr().cast_const() == std::ptr::from_ref(g))
        {
            groups.remove(&g.id);
            self.timers.lock().remove(&g.id);
        }
    }

    /// Reads `__consumer_offsets` from the start and rebuilds every group.
    fn load(&self, broker: &Broker) -> Result<()> {
        let Ok(partitions) = broker.partition_count(OFFSETS_TOPIC) else {
            return Ok(());
        };
        self.partitions.store(partitions, Ordering::Release);
        #[derive(Default)]
        struct Loaded {
            metadata: Option<GroupValue>,
            offsets: BTreeMap<(String, i32), CommittedOffset>,
        }
        let mut loaded: HashMap<String, Loaded> = HashMap::new();
        let mut malformed = 0usize;
        let mut records_read = 0usize;
        for p in 0..partitions {
            let log = broker.log(OFFSETS_TOPIC, p)?;
            let mut offset = log.offsets().log_start_offset;
            loop {
                let read = match log.read(offset, LOAD_READ_BYTES) {
                    Ok(read) => read,
                    // A damaged segment must not keep the broker from starting: what it held
                    // is lost (groups fall back to older commits), the rest is loaded.
                    Err(e @ BrokerError::Corrupt { .. }) => match log.next_segment_base(offset) {
                        Some(next) => {
                            tracing::error!(partition = p, offset, resume_at = next, error = %e,
                                "damaged data in {OFFSETS_TOPIC}; skipping to the next segment (commits in the damaged range are lost)");
                            offset = next;
                            continue;
                        }
                        None => {
                            tracing::error!(partition = p, offset, error = %e,
                                "damaged data at the end of {OFFSETS_TOPIC}; commits from here on are lost");
                            break;
                        }
                    },
                    Err(e) => return Err(e),
                };
                if read.batches.is_empty() || read.next_offset <= offset {
                    break;
                }
                for batch in &read.batches {
                    let cols = EnvelopeColumns::try_new(&batch.records)?;
                    for i in 0..batch.records.num_rows() {
                        records_read += 1;
                        let Some(key) = cols.key(i) else {
                            malformed += 1;
                            continue;
                        };
                        let applied = match decode_key(key) {
                            Ok(RecordKey::Offset {
                                group,
                                topic,
                                partition,
                            }) => {
                                let entry = loaded.entry(group).or_default();
                                match cols.value(i).map(decode_offset_value) {
                                    None => {
                                        entry.offsets.remove(&(topic, partition));
                                        Ok(())
                                    }
                                    Some(Ok(v)) => {
                                        entry.offsets.insert((topic, partition), v);
                                        Ok(())
                                    }
                                    Some(Err(e)) => Err(e),
                                }
                            }
                            Ok(RecordKey::Group { group }) => {
                                let entry = loaded.entry(group).or_default();
                                match cols.value(i).map(decode_group_value) {
                                    None => {
                                        entry.metadata = None;
                                        Ok(())
                                    }
                                    Some(Ok(v)) => {
                                        entry.metadata = Some(v);
                                        Ok(())
                                    }
                                    Some(Err(e)) => Err(e),
                                }
                            }
                            Ok(RecordKey::Other(_)) => Ok(()),
                            Err(e) => Err(e),
                        };
                        if let Err(e) = applied {
                            malformed += 1;
                            tracing::warn!(partition = p, error = %e, "skipping a record of {OFFSETS_TOPIC}");
                        }
                    }
                }
                offset = read.next_offset;
                if offset >= read.high_watermark {
                    break;
                }
            }
        }
        // Offsets of topics deleted while the broker stopped before their tombstones were
        // written (commits of unknown topics are refused, so nothing else leaves these).
        let mut orphaned = 0usize;
        for (id, l) in &mut loaded {
            let gone: Vec<(String, i32)> = l
                .offsets
                .keys()
                .filter(|(t, _)| !broker.topic_exists(t))
                .cloned()
                .collect();
            if gone.is_empty() {
                continue;
            }
            for k in &gone {
                l.offsets.remove(k);
            }
            orphaned += gone.len();
            let now_dead = l.metadata.is_none() && l.offsets.is_empty();
            self.write_tombstones(broker, id, &gone, now_dead);
        }
        let now = Instant::now();
        let wall = now_ms();
        let mut groups = self.groups.lock();
        let mut total = 0;
        for (id, l) in loaded {
            if l.metadata.is_none() && l.offsets.is_empty() {
                continue;
            }
            let mut g = Group::new(id.clone(), wall);
            if let Some(meta) = l.metadata {
                restore_metadata(&mut g, meta, now, wall);
            }
            total += l.offsets.len();
            g.offsets = l.offsets;
            g.hint = g.next_deadline();
            if let Some(at) = g.hint {
                self.timers.lock().schedule(&id, at);
            }
            groups.insert(id, Arc::new(Mutex::new(g)));
        }
        self.offsets_total.store(total, Ordering::Release);
        tracing::info!(
            groups = groups.len(),
            offsets = total,
            records = records_read,
            malformed,
            orphaned,
            "loaded consumer groups from {OFFSETS_TOPIC}"
        );
        Ok(())
    }

    // ------------------------------------------------------------------------------------------
    // The group protocol

    fn existing(&self, group_id: &str) -> Option<GroupRef> {
        self.groups.lock().get(group_id).cloned()
    }

    /// The group, created (empty) if missing and `create` is set.
    fn get_or_create(
        &self,
        group_id: &str,
        create: bool,
    ) -> Result<Option<GroupRef>, ResponseError> {
        let mut groups = self.groups.lock();
        if let Some(g) = groups.get(group_id) {
            return Ok(Some(g.clone()));
        }
        if !create {
            return Ok(None);
        }
        if groups.len() >= MAX_GROUPS {
            tracing::warn!(group = %group_id, limit = MAX_GROUPS, "refusing a new group: the broker holds the most groups it keeps; delete unused groups");
            return Err(ResponseError::PolicyViolation);
        }
        let g = Arc::new(Mutex::new(Group::new(group_id.to_owned(), now_ms())));
        groups.insert(group_id.to_owned(), g.clone());
        Ok(Some(g))
    }

    /// Handles a JoinGroup. Waits (without holding locks) until the rebalance's join phase
    /// completes when the member must.
    pub async fn join_group(&self, req: JoinRequest) -> JoinResponse {
        let fail = |e: ResponseError| JoinResponse::error(req.member_id.clone(), e);
        if req.group_id.is_empty() {
            return fail(ResponseError::InvalidGroupId);
        }
        if req.session_timeout_ms < self.config.min_session_timeout_ms
            || req.session_timeout_ms > self.config.max_session_timeout_ms
        {
            return fail(ResponseError::InvalidSessionTimeout);
        }
        let metadata_bytes: usize = req.protocols.iter().map(|(n, m)| n.len() + m.len()).sum();
        if req.protocols.len() > MAX_PROTOCOLS_PER_MEMBER
            || metadata_bytes > MAX_MEMBER_METADATA_BYTES
        {
            tracing::warn!(group = %req.group_id, protocols = req.protocols.len(), metadata_bytes,
                "refusing a JoinGroup: at most {MAX_PROTOCOLS_PER_MEMBER} protocols and {MAX_MEMBER_METADATA_BYTES} bytes of metadata per member");
            return fail(ResponseError::PolicyViolation);
        }
        let broker = match self.ready().await {
            Ok(b) => b,
            Err(e) => return fail(e),
        };
        let group = match self.get_or_create(&req.group_id, req.member_id.is_empty()) {
            Ok(Some(g)) => g,
            Ok(None) => return fail(ResponseError::UnknownMemberId),
            Err(e) => return fail(e),
        };
        let step = {
            let mut g = group.lock();
            let step = g.join(&req, &self.cx());
            self.after_op(Some(&broker), &mut g);
            step
        };
        // A waiting member must not keep the broker alive (shutdown answers it).
        drop(broker);
        match step {
            JoinStep::Done(resp) => resp,
            JoinStep::Wait(rx) => rx
                .await
                .unwrap_or_else(|_| fail(ResponseError::NotCoordinator)),
        }
    }

    /// Handles a SyncGroup. A follower waits (without holding locks) for the leader's assignment.
    pub async fn sync_group(&self, req: SyncRequest) -> SyncResponse {
        if req.group_id.is_empty() {
            return SyncResponse::error(ResponseError::InvalidGroupId);
        }
        let broker = match self.ready().await {
            Ok(b) => b,
            Err(e) => return SyncResponse::error(e),
        };
        let Some(group) = self.existing(&req.group_id) else {
            return SyncResponse::error(ResponseError::UnknownMemberId);
        };
        let step = {
            let mut g = group.lock();
            let step = g.sync(&req, &self.cx());
            self.after_op(Some(&broker), &mut g);
            step
        };
        drop(broker);
        match step {
            SyncStep::Done(resp) => resp,
            SyncStep::Wait(rx) => rx
                .await
                .unwrap_or_else(|_| SyncResponse::error(ResponseError::NotCoordinator)),
        }
    }

    /// Handles a Heartbeat; returns its error code.
    pub fn heartbeat(
        &self,
        group_id: &str,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation_id: i32,
    ) -> i16 {
        if group_id.is_empty() {
            return ResponseError::InvalidGroupId.code();
        }
        if self.stopped.load(Ordering::Acquire) {
            return ResponseError::NotCoordinator.code();
        }
        let Some(group) = self.existing(group_id) else {
            return ResponseError::UnknownMemberId.code();
        };
        let mut g = group.lock();
        let result = g.heartbeat(member_id, group_instance_id, generation_id, &self.cx());
        self.after_op(None, &mut g);
        result.err().map_or(0, |e| e.code())
    }

    /// Handles a LeaveGroup.
    pub fn leave_group(&self, group_id: &str, leaving: &[LeavingMember]) -> LeaveResponse {
        let group_error = |e: ResponseError| LeaveResponse {
            error: e.code(),
            members: Vec::new(),
        };
        if group_id.is_empty() {
            return group_error(ResponseError::InvalidGroupId);
        }
        if self.stopped.load(Ordering::Acquire) {
            return group_error(ResponseError::NotCoordinator);
        }
        let Some(group) = self.existing(group_id) else {
            return LeaveResponse {
                error: 0,
                members: vec![ResponseError::UnknownMemberId.code(); leaving.len()],
            };
        };
        let broker = self.broker.get().and_then(WeakBroker::upgrade);
        let mut g = group.lock();
        let result = g.leave(leaving, &self.cx());
        self.after_op(broker.as_ref(), &mut g);
        match result {
            Ok(members) => LeaveResponse {
                error: 0,
                members: members
                    .into_iter()
                    .map(|r| r.err().map_or(0, |e| e.code()))
                    .collect(),
            },
            Err(e) => group_error(e),
        }
    }

    // ------------------------------------------------------------------------------------------
    // Offsets

    /// Handles an OffsetCommit: checks the member and generation, writes the offsets to
    /// `__consumer_offsets`, waits until they are on disk. Returns one error code per entry.
    /// Topic and metadata checks are the caller's (the protocol handler's).
    pub async fn commit_offsets(&self, commit: OffsetCommit) -> Vec<i16> {
        let all = |e: ResponseError| vec![e.code(); commit.offsets.len()];
        if commit.offsets.is_empty() {
            return Vec::new();
        }
        let broker = match self.ready().await {
            Ok(b) => b,
            Err(e) => return all(e),
        };
        let group = match self.get_or_create(&commit.group_id, commit.generation_id < 0) {
            Ok(Some(g)) => g,
            // A commit for a generation of a group that is gone.
            Ok(None) => return all(ResponseError::IllegalGeneration),
            Err(e) => return all(e),
        };
        let cx = self.cx();
        let written = {
            let mut g = group.lock();
            let written = self.commit_locked(&broker, &mut g, &commit, &cx);
            self.after_op(Some(&broker), &mut g);
            written
        };
        let (log, end, seq, values) = match written {
            Ok(w) => w,
            Err(e) => return all(e),
        };
        let acked = log.acknowledge(end, Ack::All).await;
        let mut g = group.lock();
        for (o, v) in commit.offsets.iter().zip(values) {
            let key = (o.topic.clone(), o.partition);
            if g.pending_offsets.get(&key) != Some(&seq) {
                // A newer commit of this partition is in flight; it decides what is visible.
                continue;
            }
            g.pending_offsets.remove(&key);
            if acked.is_ok() && g.state != GroupState::Dead && g.offsets.insert(key, v).is_none() {
                self.offsets_total.fetch_add(1, Ordering::AcqRel);
            }
        }
        drop(g);
        if let Err(e) = acked {
            tracing::error!(group = %commit.group_id, error = %e, "cannot make committed offsets durable; the previous offsets stay");
            return all(ResponseError::CoordinatorNotAvailable);
        }
        vec![0; commit.offsets.len()]
    }

    fn commit_locked(
        &self,
        broker: &Broker,
        g: &mut Group,
        commit: &OffsetCommit,
        cx: &Cx,
    ) -> Result<(Arc<Log>, i64, u64, Vec<CommittedOffset>), ResponseError> {
        g.validate_commit(
            commit.generation_id,
            &commit.member_id,
            commit.group_instance_id.as_deref(),
            cx,
        )?;
        let mut new_keys: Vec<(&str, i32)> = commit
            .offsets
            .iter()
            .filter(|o| !g.offsets.contains_key(&(o.topic.clone(), o.partition)))
            .map(|o| (o.topic.as_str(), o.partition))
            .collect();
        new_keys.sort_unstable();
        new_keys.dedup();
        let added = new_keys.len();
        if g.offsets.len() + added > MAX_OFFSETS_PER_GROUP
            || self.offsets_total.load(Ordering::Acquire) + added > MAX_OFFSETS_TOTAL
        {
            tracing::warn!(group = %g.id, "refusing an offset commit: at most {MAX_OFFSETS_PER_GROUP} offsets per group and {MAX_OFFSETS_TOTAL} in all; delete unused groups or offsets");
            return Err(ResponseError::PolicyViolation);
        }
        let expire = commit.retention_ms.map(|r| cx.now_ms.saturating_add(r));
        let values: Vec<CommittedOffset> = commit
            .offsets
            .iter()
            .map(|o| CommittedOffset {
                offset: o.offset,
                leader_epoch: o.leader_epoch,
                metadata: o.metadata.clone(),
                commit_timestamp_ms: cx.now_ms,
                expire_timestamp_ms: expire,
            })
            .collect();
        let mut batch = EnvelopeBuilder::with_capacity(values.len(), values.len() * 64);
        for (o, v) in commit.offsets.iter().zip(&values) {
            let key = records::offset_key(&g.id, &o.topic, o.partition);
            let value = records::encode_offset_value(v);
            batch.append(cx.now_ms, Some(&key), Some(&value), &[]);
        }
        let (log, end) = self.append(broker, &g.id, &mut batch).map_err(|e| {
            tracing::error!(group = %g.id, error = %e, "cannot write committed offsets");
            write_error(&e)
        })?;
        g.commit_seq += 1;
        let seq = g.commit_seq;
        for o in &commit.offsets {
            g.pending_offsets
                .insert((o.topic.clone(), o.partition), seq);
        }
        Ok((log, end, seq, values))
    }

    /// Handles an OffsetFetch of one group: the committed offset of each partition asked for
    /// (`None` if none), or of every partition with one when `partitions` is `None`.
    ///
    /// `require_stable` asks to wait out pending transactional commits; Quiver has no
    /// transactions, so committed offsets are always stable and it changes nothing.
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        partitions: Option<&[(String, i32)]>,
        _require_stable: bool,
    ) -> Vec<(String, i32, Option<CommittedOffset>)> {
        let group = self.existing(group_id);
        let g = group.as_ref().map(|g| g.lock());
        let offsets = g
            .as_ref()
            .filter(|g| g.state != GroupState::Dead)
            .map(|g| &g.offsets);
        match partitions {
            Some(list) => list
                .iter()
                .map(|(t, p)| {
                    let found = offsets.and_then(|o| o.get(&(t.clone(), *p))).cloned();
                    (t.clone(), *p, found)
                })
                .collect(),
            None => offsets
                .into_iter()
                .flatten()
                .map(|((t, p), o)| (t.clone(), *p, Some(o.clone())))
                .collect(),
        }
    }

    /// Handles an OffsetDelete. `Err` is a group-level error; otherwise one code per partition.
    /// Offsets of topics a member of a live consumer group subscribes to are kept
    /// (GROUP_SUBSCRIBED_TO_TOPIC); a subscription that does not parse counts as subscribing
    /// to everything.
    pub async fn delete_offsets(
        &self,
        group_id: &str,
        partitions: &[(String, i32)],
    ) -> Result<Vec<i16>, i16> {
        let broker = self.ready().await.map_err(|e| e.code())?;
        let group = self
            .existing(group_id)
            .ok_or(ResponseError::GroupIdNotFound.code())?;
        let cx = self.cx();
        let (codes, flush) = {
            let mut g = group.lock();
            let codes: Vec<i16> = match g.state {
                GroupState::Dead => return Err(ResponseError::GroupIdNotFound.code()),
                GroupState::Empty => vec![0; partitions.len()],
                _ if g.protocol_type.as_deref()
                    == Some(super::consumer_protocol::CONSUMER_PROTOCOL_TYPE) =>
                {
                    partitions
                        .iter()
                        .map(|(t, _)| {
                            if g.is_subscribed(t) {
                                ResponseError::GroupSubscribedToTopic.code()
                            } else {
                                0
                            }
                        })
                        .collect()
                }
                _ => return Err(ResponseError::NonEmptyGroup.code()),
            };
            let removed: Vec<(String, i32)> = partitions
                .iter()
                .zip(&codes)
                .filter(|(k, code)| **code == 0 && g.offsets.contains_key(k))
                .map(|(k, _)| k.clone())
                .collect();
            for k in &removed {
                g.offsets.remove(k);
            }
            self.offsets_total
                .fetch_sub(removed.len(), Ordering::AcqRel);
            let now_dead = g.state == GroupState::Empty && g.offsets.is_empty();
            let flush = self.write_tombstones(&broker, group_id, &removed, now_dead);
            if now_dead {
                g.mark_dead(&cx);
                self.forget(&g);
            }
            self.after_op(Some(&broker), &mut g);
            (codes, flush)
        };
        if let Some((log, end)) = flush {
            let _ = log.flush_to(end).await;
        }
        Ok(codes)
    }

    /// Handles a DeleteGroups: empty groups are removed with their offsets; groups with
    /// members get NON_EMPTY_GROUP. One code per group.
    pub async fn delete_groups(&self, group_ids: &[String]) -> Vec<i16> {
        let broker = match self.ready().await {
            Ok(b) => b,
            Err(e) => return vec![e.code(); group_ids.len()],
        };
        let cx = self.cx();
        let mut codes = Vec::with_capacity(group_ids.len());
        let mut flushes = Vec::new();
        for id in group_ids {
            let Some(group) = self.existing(id) else {
                codes.push(ResponseError::GroupIdNotFound.code());
                continue;
            };
            let mut g = group.lock();
            match g.state {
                GroupState::Dead => codes.push(ResponseError::GroupIdNotFound.code()),
                GroupState::Empty => {
                    let offsets: Vec<(String, i32)> = g.offsets.keys().cloned().collect();
                    flushes.extend(self.write_tombstones(&broker, id, &offsets, true));
                    g.mark_dead(&cx);
                    self.forget(&g);
                    g.offsets.clear();
                    tracing::info!(group = %id, offsets = offsets.len(), "deleted group");
                    codes.push(0);
                }
                _ => codes.push(ResponseError::NonEmptyGroup.code()),
            }
        }
        for (log, end) in flushes {
            let _ = log.flush_to(end).await;
        }
        codes
    }

    /// Expires offsets as of `now_ms` (see [`Group::expire_offsets`]) and removes groups left
    /// empty with no offsets. Runs every `offsets.retention.check.interval.ms`; callable
    /// directly (tests, operators). Returns the number of offsets removed.
    pub fn expire_offsets_at(&self, now_ms: i64) -> usize {
        let broker = self.broker.get().and_then(WeakBroker::upgrade);
        let cx = Cx {
            now: Instant::now(),
            now_ms,
            config: &self.config,
        };
        let mut removed_total = 0;
        for group in self.snapshot() {
            let mut g = group.lock();
            if g.state == GroupState::Dead {
                continue;
            }
            let expired = g.expire_offsets(now_ms, self.config.offsets_retention_ms);
            removed_total += expired.len();
            if !expired.is_empty() {
                tracing::info!(group = %g.id, offsets = expired.len(), "expired committed offsets");
            }
            self.offsets_removed(broker.as_ref(), &mut g, &expired, &cx);
        }
        removed_total
    }

    /// Drops every group's committed offsets of a deleted topic and writes their tombstones,
    /// as Kafka does on topic deletion, so that a topic created again under the same name does
    /// not inherit them. Groups left empty with no offsets are removed. Returns the number of
    /// offsets removed. Called by [`Broker::delete_topic`].
    pub(crate) async fn remove_topic_offsets(&self, broker: &Broker, topic: &str) -> usize {
        let cx = self.cx();
        let mut removed_total = 0;
        let mut flushes = Vec::new();
        for group in self.snapshot() {
            let mut g = group.lock();
            if g.state == GroupState::Dead {
                continue;
            }
            let of_topic = (topic.to_owned(), i32::MIN)..=(topic.to_owned(), i32::MAX);
            let removed: Vec<(String, i32)> =
                g.offsets.range(of_topic).map(|(k, _)| k.clone()).collect();
            if removed.is_empty() {
                continue;
            }
            for k in &removed {
                g.offsets.remove(k);
            }
            removed_total += removed.len();
            tracing::info!(group = %g.id, topic, offsets = removed.len(), "removed committed offsets of a deleted topic");
            flushes.extend(self.offsets_removed(Some(broker), &mut g, &removed, &cx));
        }
        for (log, end) in flushes {
            if let Err(e) = log.flush_to(end).await {
                tracing::warn!(topic, error = %e, "cannot fsync the tombstones of a deleted topic's offsets; they are written and reach the disk with the next flush");
            }
        }
        removed_total
    }

    /// Bookkeeping after offsets were taken out of `g.offsets`: the count, their tombstones,
    /// and the group's removal when it is left empty with no offsets. Returns what to fsync.
    fn offsets_removed(
        &self,
        broker: Option<&Broker>,
        g: &mut Group,
        removed: &[(String, i32)],
        cx: &Cx,
    ) -> Option<(Arc<Log>, i64)> {
        self.offsets_total
            .fetch_sub(removed.len(), Ordering::AcqRel);
        let now_dead = g.state == GroupState::Empty && g.offsets.is_empty();
        let flush = broker.and_then(|b| self.write_tombstones(b, &g.id, removed, now_dead));
        if now_dead {
            tracing::info!(group = %g.id, "removing group: it is empty and has no offsets left");
            g.mark_dead(cx);
            self.forget(g);
        }
        flush
    }

    // ------------------------------------------------------------------------------------------
    // Listing

    /// Handles a ListGroups: live groups, filtered by state names and types (case-insensitive;
    /// an empty filter takes all). Every group here is of type `classic`.
    pub fn list_groups(&self, states: &[String], types: &[String]) -> Vec<GroupListing> {
        if !types.is_empty() && !types.iter().any(|t| t.eq_ignore_ascii_case("classic")) {
            return Vec::new();
        }
        let mut out: Vec<GroupListing> = self
            .snapshot()
            .iter()
            .filter_map(|g| {
                let g = g.lock();
                let keep = g.state != GroupState::Dead
                    && (states.is_empty()
                        || states
                            .iter()
                            .any(|s| s.eq_ignore_ascii_case(g.state.as_str())));
                keep.then(|| GroupListing {
                    group_id: g.id.clone(),
                    protocol_type: g.protocol_type.clone().unwrap_or_default(),
                    state: g.state,
                })
            })
            .collect();
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        out
    }

    /// Handles one group of a DescribeGroups.
    pub fn describe_group(&self, group_id: &str) -> GroupDescription {
        let dead = || GroupDescription {
            error: 0,
            group_id: group_id.to_owned(),
            state: GroupState::Dead,
            protocol_type: String::new(),
            protocol: String::new(),
            members: Vec::new(),
        };
        if self.stopped.load(Ordering::Acquire) {
            return GroupDescription {
                error: ResponseError::NotCoordinator.code(),
                ..dead()
            };
        }
        match self.existing(group_id) {
            Some(g) => g.lock().describe(),
            None => dead(),
        }
    }

    /// Number of groups with a deadline in the timer queue (for tests).
    #[cfg(test)]
    pub(crate) fn scheduled_groups(&self) -> usize {
        self.timers.lock().len()
    }

    /// The group's state, generation and member ids (for tests).
    #[cfg(test)]
    pub(crate) fn group_summary(&self, group_id: &str) -> Option<(GroupState, i32, Vec<String>)> {
        let g = self.existing(group_id)?;
        let g = g.lock();
        Some((g.state, g.generation, g.members.keys().cloned().collect()))
    }
}

/// Rebuilds a loaded group from its persisted metadata: with members it is stable in its
/// generation (members that are still alive just keep heartbeating), without it is empty.
fn restore_metadata(g: &mut Group, meta: GroupValue, now: Instant, now_ms: i64) {
    g.generation = meta.generation;
    g.protocol_type = Some(meta.protocol_type).filter(|t| !t.is_empty());
    g.state_since_ms = meta.current_state_timestamp_ms.unwrap_or(now_ms);
    let protocol = meta.protocol.filter(|p| !p.is_empty());
    let (Some(protocol), false) = (protocol, meta.members.is_empty()) else {
        return;
    };
    for m in meta.members {
        if let Some(instance) = &m.group_instance_id {
            g.static_members
                .insert(instance.clone(), m.member_id.clone());
        }
        let deadline = now + Duration::from_millis(m.session_timeout_ms.max(0) as u64);
        g.members.insert(
            m.member_id.clone(),
            Member {
                id: m.member_id,
                instance_id: m.group_instance_id,
                client_id: m.client_id,
                client_host: m.client_host,
                rebalance_timeout_ms: m.rebalance_timeout_ms,
                session_timeout_ms: m.session_timeout_ms,
                protocols: vec![(protocol.clone(), m.subscription)],
                assignment: m.assignment,
                join_waiter: None,
                sync_waiter: None,
                is_new: false,
                heartbeat_deadline: Some(deadline),
            },
        );
    }
    g.leader = meta
        .leader
        .filter(|l| g.members.contains_key(l))
        .or_else(|| g.members.keys().next().cloned());
    g.protocol_name = Some(protocol);
    g.state = GroupState::Stable;
    g.subscribed_topics = g.compute_subscribed_topics();
}
