//! The [`GroupCoordinator`]: every group of the broker, the group protocol, and the timers.
//! Its records in `__consumer_offsets` go through the `OffsetsStore` (`store`), its API's
//! requests and answers are in `messages`.
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
//! makes the new offsets visible to OffsetFetch; if the write fails, the old offsets stay. Group
//! metadata is written on a best-effort basis: if it cannot be written the group keeps working, and after a restart it resumes from the last metadata written.
//!
//! Timers: one task sleeps until the earliest deadline of any group (session timeouts, join
//! and sync phases, the initial rebalance delay, offset expiry) and is woken when an operation
//! sets an earlier one. A deadline queue (`timers`) says which groups are due, so a pass looks
//! only at those, not at every group. Its lock is taken last: under a group's lock, never the
//! reverse.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::member::Member;
use super::messages::{
    CommittedOffset, GroupDescription, GroupListing, JoinRequest, JoinResponse, LeaveResponse,
    LeavingMember, OffsetCommit, SyncRequest, SyncResponse,
};
use super::records::GroupValue;
use super::state::{Cx, Group, JoinStep, SyncStep};
use super::store::{OffsetsStore, Written};
use super::timers::DeadlineQueue;
use super::{
    GroupConfig, GroupState, MAX_GROUPS, MAX_MEMBER_METADATA_BYTES, MAX_OFFSETS_PER_GROUP,
    MAX_OFFSETS_TOTAL, MAX_PROTOCOLS_PER_MEMBER, OFFSETS_TOPIC,
};
use crate::error::{BrokerError, Result};
use crate::log::now_ms;

/// Timers never fire more often than this (a burst of deadlines is handled in one pass).
const MIN_TICK: Duration = Duration::from_millis(5);

type GroupRef = Arc<Mutex<Group>>;

/// The group coordinator of one broker. Owned by the [`Broker`](crate::Broker); reach it with
/// [`Broker::groups`](crate::Broker::groups). Every method answers with Kafka error codes,
/// never panics on client input, and bounds what it keeps (see the limits in [`crate::group`]).
pub struct GroupCoordinator {
    config: GroupConfig,
    groups: Mutex<HashMap<String, GroupRef>>,
    /// `__consumer_offsets`.
    store: OffsetsStore,
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
    /// Groups with offsets pending in an open transaction, by producer id (so a marker finds
    /// them without a scan of every group).
    txn_groups: Mutex<HashMap<i64, HashSet<String>>>,
}

impl std::fmt::Debug for GroupCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCoordinator")
            .field("groups", &self.groups.lock().len())
            .field("store", &self.store)
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
    /// A coordinator with no groups that keeps its records in `store`.
    /// [`Broker::open`](crate::Broker::open) starts it with `GroupCoordinator::start`.
    pub(crate) fn new(config: GroupConfig, store: OffsetsStore) -> GroupCoordinator {
        let check_every = Duration::from_millis(config.offsets_retention_check_interval_ms);
        GroupCoordinator {
            config,
            groups: Mutex::new(HashMap::new()),
            store,
            offsets_total: AtomicUsize::new(0),
            wake: Arc::new(Notify::new()),
            timers: Mutex::new(DeadlineQueue::default()),
            next_wake: Mutex::new(None),
            next_expiry_check: Mutex::new(Instant::now() + check_every),
            stopped: AtomicBool::new(false),
            stop: watch::channel(false).0,
            task: Mutex::new(None),
            txn_groups: Mutex::new(HashMap::new()),
        }
    }

    /// The coordinator's settings.
    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    /// Loads the groups and offsets stored in `__consumer_offsets` (if it exists) and starts
    /// the timers. Called once by [`Broker::open`](crate::Broker::open), after the topics are
    /// open, inside a Tokio runtime.
    pub(crate) fn start(self: &Arc<Self>) -> Result<()> {
        self.load()?;
        // Weak: the timer task must not keep a dropped broker's coordinator alive.
        let weak: Weak<GroupCoordinator> = Arc::downgrade(self);
        let wake = self.wake.clone();
        let mut stop = self.stop.subscribe();
        let task = tokio::spawn(async move {
            loop {
                let next = {
                    let Some(coordinator) = weak.upgrade() else {
                        return;
                    };
                    coordinator.tick()
                };
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => {}
                    _ = wake.notified() => {}
                    // The flag only ever turns true, so any change (or a dropped sender) stops.
                    _ = stop.changed() => return,
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
    /// `persist: false` leaves the metadata unwritten (a heartbeat changes nothing worth it).
    fn after_op(&self, persist: bool, g: &mut Group) {
        self.persist_if_dirty(persist, g);
        g.hint = g.next_deadline();
        if let Some(at) = g.hint
            && self.timers.lock().schedule(&g.id, at)
        {
            self.schedule(at);
        }
    }

    /// Writes the group's metadata if an operation changed it.
    fn persist_if_dirty(&self, persist: bool, g: &mut Group) {
        if std::mem::take(&mut g.metadata_dirty) && persist {
            self.store.write_group_metadata(g);
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
                self.persist_if_dirty(true, &mut g);
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

    /// `__consumer_offsets`, once it exists (it is created on first use, as Kafka does).
    async fn ready(&self) -> Result<&OffsetsStore, ResponseError> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(ResponseError::NotCoordinator);
        }
        self.store.ensure_exists().await?;
        Ok(&self.store)
    }

    /// Makes sure `__consumer_offsets` exists (FindCoordinator does this, as in Kafka).
    pub async fn ensure_ready(&self) -> Result<(), ResponseError> {
        self.ready().await.map(|_| ())
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

    /// Reads `__consumer_offsets` back and rebuilds every group.
    fn load(&self) -> Result<()> {
        let loaded = self.store.load()?;
        let mut groups_read = loaded.groups;
        // Offsets of topics deleted while the broker stopped before their tombstones were
        // written (commits of unknown topics are refused, so nothing else leaves these).
        let mut orphaned = 0usize;
        for (id, l) in &mut groups_read {
            let gone: Vec<(String, i32)> = l
                .offsets
                .keys()
                .filter(|(t, _)| !self.store.topic_exists(t))
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
            // Reaches the disk with the partition's next flush.
            drop(self.store.write_tombstones(id, &gone, now_dead));
        }
        let now = Instant::now();
        let wall = now_ms();
        let mut groups = self.groups.lock();
        let mut total = 0;
        let mut txn_groups = self.txn_groups.lock();
        for (id, l) in groups_read {
            if l.metadata.is_none() && l.offsets.is_empty() && l.pending_txn.is_empty() {
                continue;
            }
            let mut g = Group::new(id.clone(), wall);
            if let Some(meta) = l.metadata {
                restore_metadata(&mut g, meta, now, wall);
            }
            total += l.offsets.len();
            g.offsets = l.offsets;
            for producer_id in l.pending_txn.keys() {
                txn_groups
                    .entry(*producer_id)
                    .or_default()
                    .insert(id.clone());
            }
            g.pending_txn_offsets = l.pending_txn;
            g.hint = g.next_deadline();
            if let Some(at) = g.hint {
                self.timers.lock().schedule(&id, at);
            }
            groups.insert(id, Arc::new(Mutex::new(g)));
        }
        drop(txn_groups);
        self.offsets_total.store(total, Ordering::Release);
        tracing::info!(
            groups = groups.len(),
            offsets = total,
            records = loaded.records_read,
            malformed = loaded.malformed,
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
        if let Err(e) = self.ready().await {
            return fail(e);
        }
        let group = match self.get_or_create(&req.group_id, req.member_id.is_empty()) {
            Ok(Some(g)) => g,
            Ok(None) => return fail(ResponseError::UnknownMemberId),
            Err(e) => return fail(e),
        };
        let step = {
            let mut g = group.lock();
            let step = g.join(&req, &self.cx());
            self.after_op(true, &mut g);
            step
        };
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
        if let Err(e) = self.ready().await {
            return SyncResponse::error(e);
        }
        let Some(group) = self.existing(&req.group_id) else {
            return SyncResponse::error(ResponseError::UnknownMemberId);
        };
        let step = {
            let mut g = group.lock();
            let step = g.sync(&req, &self.cx());
            self.after_op(true, &mut g);
            step
        };
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
        self.after_op(false, &mut g);
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
        let mut g = group.lock();
        let result = g.leave(leaving, &self.cx());
        self.after_op(true, &mut g);
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
        let store = match self.ready().await {
            Ok(store) => store,
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
            let written = self.commit_locked(store, &mut g, &commit, None, &cx);
            self.after_op(true, &mut g);
            written
        };
        let (written, seq, values) = match written {
            Ok(w) => w,
            Err(e) => return all(e),
        };
        let acked = written.acknowledge().await;
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

    /// Checks and writes a commit under the group's lock; `transaction` (producer id and
    /// epoch) makes it a transactional one, which is kept in `g.pending_txn_offsets` instead of
    /// `g.pending_offsets`.
    fn commit_locked(
        &self,
        store: &OffsetsStore,
        g: &mut Group,
        commit: &OffsetCommit,
        transaction: Option<(i64, i16)>,
        cx: &Cx,
    ) -> Result<(Written, u64, Vec<CommittedOffset>), ResponseError> {
        g.validate_commit(
            commit.generation_id,
            &commit.member_id,
            commit.group_instance_id.as_deref(),
            transaction.is_some(),
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
        // Offsets pending in open transactions are held too, until their markers.
        let pending: usize = g.pending_txn_offsets.values().map(|p| p.len()).sum();
        if g.offsets.len() + pending + added > MAX_OFFSETS_PER_GROUP
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
        let entries = commit
            .offsets
            .iter()
            .zip(&values)
            .map(|(o, v)| (o.topic.as_str(), o.partition, v));
        let written = store
            .write_offsets(&g.id, cx.now_ms, entries, transaction)
            .map_err(|e| {
                tracing::error!(group = %g.id, error = %e, "cannot write committed offsets");
                write_error(&e)
            })?;
        if let Some((producer_id, _)) = transaction {
            let pending = g.pending_txn_offsets.entry(producer_id).or_default();
            for (o, v) in commit.offsets.iter().zip(&values) {
                pending.insert((o.topic.clone(), o.partition), v.clone());
            }
            self.txn_groups
                .lock()
                .entry(producer_id)
                .or_default()
                .insert(g.id.clone());
            return Ok((written, 0, values));
        }
        g.commit_seq += 1;
        let seq = g.commit_seq;
        for o in &commit.offsets {
            let key = (o.topic.clone(), o.partition);
            // This record is later than any transactional offset of the partition still
            // pending: it wins when that transaction commits, as in Kafka (and as a restart
            // reading the log, or compaction keeping the later record, decides).
            for pending in g.pending_txn_offsets.values_mut() {
                pending.remove(&key);
            }
            g.pending_offsets.insert(key, seq);
        }
        Ok((written, seq, values))
    }

    /// Handles an OffsetFetch of one group: the committed offset of each partition asked for
    /// (`None` if none), or of every partition with one when `partitions` is `None`.
    ///
    /// `require_stable` asks to wait out pending transactional commits: see
    /// [`GroupCoordinator::fetch_offsets_checked`], whose per-partition errors this answers as
    /// `None`.
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        partitions: Option<&[(String, i32)]>,
        require_stable: bool,
    ) -> Vec<(String, i32, Option<CommittedOffset>)> {
        self.fetch_offsets_checked(group_id, partitions, require_stable)
            .into_iter()
            .map(|(t, p, o)| (t, p, o.ok().flatten()))
            .collect()
    }

    /// [`GroupCoordinator::fetch_offsets`] with an error per partition: with `require_stable`,
    /// a partition with offsets pending in an open transaction answers UNSTABLE_OFFSET_COMMIT
    /// (Kafka's behaviour; the client retries until the transaction ends).
    pub fn fetch_offsets_checked(
        &self,
        group_id: &str,
        partitions: Option<&[(String, i32)]>,
        require_stable: bool,
    ) -> Vec<(String, i32, Result<Option<CommittedOffset>, ResponseError>)> {
        let group = self.existing(group_id);
        let g = group.as_ref().map(|g| g.lock());
        let live = g.as_ref().filter(|g| g.state != GroupState::Dead);
        let offsets = live.map(|g| &g.offsets);
        let unstable = |key: &(String, i32)| {
            require_stable
                && live.is_some_and(|g| {
                    g.pending_txn_offsets
                        .values()
                        .any(|pending| pending.contains_key(key))
                })
        };
        let answer = |key: &(String, i32), found: Option<&CommittedOffset>| {
            if unstable(key) {
                Err(ResponseError::UnstableOffsetCommit)
            } else {
                Ok(found.cloned())
            }
        };
        match partitions {
            Some(list) => list
                .iter()
                .map(|key| {
                    let found = offsets.and_then(|o| o.get(key));
                    (key.0.clone(), key.1, answer(key, found))
                })
                .collect(),
            None => {
                let mut keys: std::collections::BTreeSet<&(String, i32)> =
                    offsets.into_iter().flat_map(|o| o.keys()).collect();
                if require_stable && let Some(g) = live {
                    keys.extend(g.pending_txn_offsets.values().flat_map(|p| p.keys()));
                }
                keys.into_iter()
                    .map(|key| {
                        let found = offsets.and_then(|o| o.get(key));
                        (key.0.clone(), key.1, answer(key, found))
                    })
                    .collect()
            }
        }
    }

    // ------------------------------------------------------------------------------------------
    // Transactions

    /// The partition of `__consumer_offsets` that holds the group's records (created on first
    /// use): the partition AddOffsetsToTxn adds to a transaction.
    pub(crate) async fn offsets_partition_for(&self, group_id: &str) -> Result<i32, ResponseError> {
        let store = self.ready().await?;
        store
            .partition_of(group_id)
            .ok_or(ResponseError::CoordinatorNotAvailable)
    }

    /// Partitions of `__consumer_offsets` (0 until it exists).
    pub(crate) fn offsets_partitions(&self) -> i32 {
        self.store.partition_count()
    }

    /// Handles a TxnOffsetCommit: checks the group like an OffsetCommit (member and
    /// generation only when named), writes the offsets as a transactional batch of the
    /// producer to the group's partition of `__consumer_offsets`, and waits until it is
    /// durable. The offsets stay invisible to OffsetFetch until the transaction's COMMIT
    /// marker on that partition is durable (`GroupCoordinator::complete_transaction`).
    /// Returns one error code per entry. Whether the partition is in the producer's
    /// transaction is the caller's check (the transaction coordinator's): `guard` is given the
    /// write (which does not wait) and runs it under that check, or refuses with an error,
    /// so the offsets cannot land after the transaction's marker.
    pub async fn txn_commit_offsets<G>(
        &self,
        commit: OffsetCommit,
        producer_id: i64,
        producer_epoch: i16,
        guard: G,
    ) -> Vec<i16>
    where
        G: FnOnce(&mut dyn FnMut()) -> Result<(), ResponseError>,
    {
        let all = |e: ResponseError| vec![e.code(); commit.offsets.len()];
        if commit.offsets.is_empty() {
            return Vec::new();
        }
        let store = match self.ready().await {
            Ok(store) => store,
            Err(e) => return all(e),
        };
        let group = match self.get_or_create(&commit.group_id, commit.generation_id < 0) {
            Ok(Some(g)) => g,
            Ok(None) => return all(ResponseError::IllegalGeneration),
            Err(e) => return all(e),
        };
        let cx = self.cx();
        let mut written = None;
        let guarded = guard(&mut || {
            let mut g = group.lock();
            written = Some(self.commit_locked(
                store,
                &mut g,
                &commit,
                Some((producer_id, producer_epoch)),
                &cx,
            ));
            self.after_op(true, &mut g);
        });
        if let Err(e) = guarded {
            return all(e);
        }
        let (written, _, values) = match written {
            Some(Ok(w)) => w,
            Some(Err(e)) => return all(e),
            None => return all(ResponseError::InvalidTxnState),
        };
        if let Err(e) = written.acknowledge().await {
            tracing::error!(group = %commit.group_id, producer_id, error = %e, "cannot make transactional offsets durable");
            let mut g = group.lock();
            if let Some(pending) = g.pending_txn_offsets.get_mut(&producer_id) {
                for (o, v) in commit.offsets.iter().zip(&values) {
                    let key = (o.topic.clone(), o.partition);
                    if pending.get(&key) == Some(v) {
                        pending.remove(&key);
                    }
                }
            }
            return all(ResponseError::CoordinatorNotAvailable);
        }
        vec![0; commit.offsets.len()]
    }

    /// The marker of `producer_id`'s transaction on partition `offsets_partition` of
    /// `__consumer_offsets` is durable: its pending offsets there become the committed offsets
    /// (`committed`) or are dropped. Called by the transaction coordinator.
    pub(crate) fn complete_transaction(
        &self,
        offsets_partition: i32,
        producer_id: i64,
        committed: bool,
    ) {
        let partitions = self.store.partition_count();
        let group_ids: Vec<String> = {
            let mut txn_groups = self.txn_groups.lock();
            let Some(ids) = txn_groups.get_mut(&producer_id) else {
                return;
            };
            let here: Vec<String> = ids
                .iter()
                .filter(|id| super::partition_for(id, partitions) == offsets_partition)
                .cloned()
                .collect();
            for id in &here {
                ids.remove(id);
            }
            if ids.is_empty() {
                txn_groups.remove(&producer_id);
            }
            here
        };
        for id in group_ids {
            let Some(group) = self.existing(&id) else {
                continue;
            };
            let mut g = group.lock();
            let Some(pending) = g.pending_txn_offsets.remove(&producer_id) else {
                continue;
            };
            if !committed || g.state == GroupState::Dead {
                continue;
            }
            let mut added = 0;
            for (key, v) in pending {
                if g.offsets.insert(key, v).is_none() {
                    added += 1;
                }
            }
            self.offsets_total.fetch_add(added, Ordering::AcqRel);
            tracing::debug!(group = %id, producer_id, "transactional offsets committed");
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
        let store = self.ready().await.map_err(|e| e.code())?;
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
            let flush = store.write_tombstones(group_id, &removed, now_dead);
            if now_dead {
                g.mark_dead(&cx);
                self.forget(&g);
            }
            self.after_op(true, &mut g);
            (codes, flush)
        };
        if let Some(written) = flush {
            let _ = written.flush().await;
        }
        Ok(codes)
    }

    /// Handles a DeleteGroups: empty groups are removed with their offsets; groups with
    /// members get NON_EMPTY_GROUP. One code per group.
    pub async fn delete_groups(&self, group_ids: &[String]) -> Vec<i16> {
        let store = match self.ready().await {
            Ok(store) => store,
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
                    flushes.extend(store.write_tombstones(id, &offsets, true));
                    g.mark_dead(&cx);
                    self.forget(&g);
                    g.offsets.clear();
                    tracing::info!(group = %id, offsets = offsets.len(), "deleted group");
                    codes.push(0);
                }
                _ => codes.push(ResponseError::NonEmptyGroup.code()),
            }
        }
        for written in flushes {
            let _ = written.flush().await;
        }
        codes
    }

    /// Expires offsets as of `now_ms` (see [`Group::expire_offsets`]) and removes groups left
    /// empty with no offsets. Runs every `offsets.retention.check.interval.ms`; callable
    /// directly (tests, operators). Returns the number of offsets removed.
    pub fn expire_offsets_at(&self, now_ms: i64) -> usize {
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
            // Reach the disk with the partition's next flush.
            drop(self.offsets_removed(&mut g, &expired, &cx));
        }
        removed_total
    }

    /// Drops every group's committed offsets of a deleted topic and writes their tombstones,
    /// as Kafka does on topic deletion, so that a topic created again under the same name does
    /// not inherit them. Groups left empty with no offsets are removed. Returns the number of
    /// offsets removed. Called by [`Broker::delete_topic`](crate::Broker::delete_topic).
    pub(crate) async fn remove_topic_offsets(&self, topic: &str) -> usize {
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
            flushes.extend(self.offsets_removed(&mut g, &removed, &cx));
        }
        for written in flushes {
            if let Err(e) = written.flush().await {
                tracing::warn!(topic, error = %e, "cannot fsync the tombstones of a deleted topic's offsets; they are written and reach the disk with the next flush");
            }
        }
        removed_total
    }

    /// Bookkeeping after offsets were taken out of `g.offsets`: the count, their tombstones,
    /// and the group's removal when it is left empty with no offsets. Returns what to fsync.
    fn offsets_removed(
        &self,
        g: &mut Group,
        removed: &[(String, i32)],
        cx: &Cx,
    ) -> Option<Written> {
        self.offsets_total
            .fetch_sub(removed.len(), Ordering::AcqRel);
        // A group with offsets pending in a transaction stays until the transaction ends.
        let now_dead = g.state == GroupState::Empty
            && g.offsets.is_empty()
            && g.pending_txn_offsets.is_empty();
        let flush = self.store.write_tombstones(&g.id, removed, now_dead);
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
