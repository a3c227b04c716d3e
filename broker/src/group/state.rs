//! One group's state machine, after Kafka's classic group coordinator:
//!
//! ```text
//!  Empty ──join──▶ PreparingRebalance ──everyone rejoined / timeout──▶ CompletingRebalance
//!    ▲                   ▲   │                                              │ leader's SyncGroup
//!    └── last member ────┘   └── nobody left ──▶ Empty                      ▼
//!        left                ◀──────── join, leave, timeout, metadata change ── Stable
//! ```
//!
//! It does no I/O and reads no clock: every operation takes a [`Cx`] with the time, and
//! answers waiting JoinGroup and SyncGroup requests through their oneshot channels. The
//! coordinator calls it under the group's lock, persists the group when `metadata_dirty` is
//! set, and arms its timer from [`Group::next_deadline`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::consumer_protocol::{CONSUMER_PROTOCOL_TYPE, subscribed_topics};
use super::member::Member;
use super::messages::{
    CommittedOffset, GroupDescription, JoinRequest, JoinResponse, JoinedMember, LeavingMember,
    MemberDescription, SyncRequest, SyncResponse,
};
use super::{GroupConfig, GroupState, MAX_MEMBERS_PER_GROUP};

/// The time, and the settings, an operation runs with.
#[derive(Debug, Clone, Copy)]
pub struct Cx<'a> {
    pub now: Instant,
    /// Wall-clock milliseconds since the epoch (for state and commit timestamps).
    pub now_ms: i64,
    pub config: &'a GroupConfig,
}

impl Cx<'_> {
    fn after_ms(&self, ms: i64) -> Instant {
        self.now + Duration::from_millis(ms.max(0) as u64)
    }
}

/// What a JoinGroup gets: an answer now, or one when the rebalance completes.
#[derive(Debug)]
pub enum JoinStep {
    Done(JoinResponse),
    Wait(oneshot::Receiver<JoinResponse>),
}

/// What a SyncGroup gets: an answer now, or one when the leader sends the assignment.
#[derive(Debug)]
pub enum SyncStep {
    Done(SyncResponse),
    Wait(oneshot::Receiver<SyncResponse>),
}

/// The wait of a rebalance's join phase.
#[derive(Debug, Clone, Copy)]
struct JoinTimer {
    deadline: Instant,
    /// Set for a new group's initial delay: how much of the rebalance timeout is left for
    /// further delays while new members keep arriving.
    initial_remaining_ms: Option<i64>,
}

/// A consumer group.
#[derive(Debug)]
pub struct Group {
    pub id: String,
    pub state: GroupState,
    /// Wall-clock time the group entered its state (offsets of an empty group expire from it).
    pub state_since_ms: i64,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// `group.instance.id` → member id of static members.
    pub static_members: HashMap<String, String>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, with the time they expire.
    pending_members: HashMap<String, Instant>,
    /// Members that got the generation but have not sent SyncGroup yet.
    pending_sync: HashSet<String>,
    join_timer: Option<JoinTimer>,
    sync_deadline: Option<Instant>,
    /// A member joined during the initial delay, so the delay may be extended.
    new_member_added: bool,
    /// Topics the members subscribe to (consumer groups whose subscriptions parse).
    pub subscribed_topics: Option<BTreeSet<String>>,
    /// Committed offsets that are durable (what OffsetFetch answers).
    pub offsets: BTreeMap<(String, i32), CommittedOffset>,
    /// Partitions with a commit written but not yet durable, with the sequence number of the
    /// newest such commit: only that commit may make its offset visible once it is durable.
    pub pending_offsets: HashMap<(String, i32), u64>,
    /// Numbers commits for `pending_offsets`.
    pub commit_seq: u64,
    /// Offsets committed in open transactions (TxnOffsetCommit), by producer id: written to
    /// `__consumer_offsets` but not visible until the transaction's COMMIT marker there is
    /// durable; an ABORT drops them.
    pub pending_txn_offsets: HashMap<i64, BTreeMap<(String, i32), CommittedOffset>>,
    /// The group's metadata changed in a way that is persisted (set here, cleared by the coordinator).
    pub metadata_dirty: bool,
    /// The earliest deadline, as of the last operation (the coordinator's timer reads it).
    pub hint: Option<Instant>,
}

fn join_error(member_id: &str, error: ResponseError) -> JoinStep {
    JoinStep::Done(JoinResponse::error(member_id.to_owned(), error))
}

fn sync_error(error: ResponseError) -> SyncStep {
    SyncStep::Done(SyncResponse::error(error))
}

impl Group {
    /// A new, empty group.
    pub fn new(id: String, now_ms: i64) -> Group {
        Group {
            id,
            state: GroupState::Empty,
            state_since_ms: now_ms,
            generation: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: BTreeMap::new(),
            static_members: HashMap::new(),
            pending_members: HashMap::new(),
            pending_sync: HashSet::new(),
            join_timer: None,
            sync_deadline: None,
            new_member_added: false,
            subscribed_topics: None,
            offsets: BTreeMap::new(),
            pending_offsets: HashMap::new(),
            commit_seq: 0,
            pending_txn_offsets: HashMap::new(),
            metadata_dirty: false,
            hint: None,
        }
    }

    fn transition(&mut self, to: GroupState, cx: &Cx) {
        debug_assert!(
            self.state != GroupState::Dead,
            "group {} left Dead for {to}",
            self.id
        );
        self.state = to;
        self.state_since_ms = cx.now_ms;
    }

    /// Marks the group removed.
    pub fn mark_dead(&mut self, cx: &Cx) {
        self.fail_waiters(ResponseError::CoordinatorNotAvailable);
        self.state = GroupState::Dead;
        self.state_since_ms = cx.now_ms;
        self.join_timer = None;
        self.sync_deadline = None;
        self.pending_members.clear();
        self.pending_sync.clear();
    }

    /// The longest rebalance timeout of the members (Kafka's group rebalance timeout).
    pub fn rebalance_timeout_ms(&self) -> i64 {
        self.members
            .values()
            .map(|m| i64::from(m.rebalance_timeout_ms))
            .max()
            .unwrap_or(0)
    }

    fn is_leader(&self, member_id: &str) -> bool {
        self.leader.as_deref() == Some(member_id)
    }

    fn all_members_joined(&self) -> bool {
        self.pending_members.is_empty() && self.members.values().all(Member::awaiting_join)
    }

    /// True when this group can be joined with `protocols` of `protocol_type`: an empty group
    /// takes any, otherwise the type must match and one protocol must be offered by all.
    fn supports_protocols(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.state == GroupState::Empty {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        self.protocol_type.as_deref() == Some(protocol_type)
            && protocols
                .iter()
                .any(|(name, _)| self.members.values().all(|m| m.supports(name)))
    }

    /// The protocol every member supports that most members prefer (ties go to the leader's
    /// preference, then the first member's).
    fn select_protocol(&self) -> Option<String> {
        let first = self
            .leader
            .as_deref()
            .and_then(|l| self.members.get(l))
            .or_else(|| self.members.values().next())?;
        let candidates: Vec<&str> = first
            .protocols
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| self.members.values().all(|m| m.supports(name)))
            .collect();
        let mut votes: HashMap<&str, usize> = HashMap::new();
        for m in self.members.values() {
            if let Some(choice) = m.vote(&candidates) {
                *votes.entry(choice).or_default() += 1;
            }
        }
        let most = votes.values().copied().max()?;
        candidates
            .iter()
            .find(|c| votes.get(*c) == Some(&most))
            .map(|c| (*c).to_owned())
    }

    pub(super) fn compute_subscribed_topics(&self) -> Option<BTreeSet<String>> {
        if self.protocol_type.as_deref() != Some(CONSUMER_PROTOCOL_TYPE) {
            return None;
        }
        let Some(protocol) = &self.protocol_name else {
            return self.members.is_empty().then(BTreeSet::new);
        };
        let mut topics = BTreeSet::new();
        for m in self.members.values() {
            topics.extend(subscribed_topics(&m.metadata(protocol))?);
        }
        Some(topics)
    }

    /// True when a member may consume `topic`: it is in a subscription of any protocol a
    /// member offers, or some subscription does not parse (then it is assumed to be).
    pub fn is_subscribed(&self, topic: &str) -> bool {
        self.members.values().any(|m| {
            m.protocols.iter().any(|(_, meta)| {
                subscribed_topics(meta).is_none_or(|t| t.iter().any(|t| t == topic))
            })
        })
    }

    /// Every member's id, instance id and metadata for the selected protocol (the leader's list).
    fn current_member_metadata(&self) -> Vec<JoinedMember> {
        let protocol = self.protocol_name.as_deref().unwrap_or_default();
        self.members
            .values()
            .map(|m| JoinedMember {
                member_id: m.id.clone(),
                group_instance_id: m.instance_id.clone(),
                metadata: m.metadata(protocol),
            })
            .collect()
    }

    /// The JoinGroup answer for the current generation.
    fn join_result(&self, member_id: &str, with_members: bool) -> JoinResponse {
        JoinResponse {
            error: 0,
            generation_id: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            skip_assignment: false,
            member_id: member_id.to_owned(),
            members: if with_members {
                self.current_member_metadata()
            } else {
                Vec::new()
            },
        }
    }

    /// Checks that `member_id` is a member and, for a static member, the one its instance id
    /// maps to (else it was replaced: FENCED_INSTANCE_ID).
    pub fn validate_member(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<(), ResponseError> {
        if let Some(instance) = instance_id {
            return match self.static_members.get(instance) {
                Some(current) if current != member_id => Err(ResponseError::FencedInstanceId),
                Some(_) => Ok(()),
                None => Err(ResponseError::UnknownMemberId),
            };
        }
        if self.members.contains_key(member_id) {
            Ok(())
        } else {
            Err(ResponseError::UnknownMemberId)
        }
    }

    fn schedule_heartbeat(&mut self, member_id: &str, cx: &Cx) {
        if let Some(m) = self.members.get_mut(member_id) {
            m.heartbeat_deadline = Some(cx.after_ms(i64::from(m.session_timeout_ms)));
        }
    }

    // ------------------------------------------------------------------------------------------
    // JoinGroup

    /// Handles a JoinGroup.
    pub fn join(&mut self, req: &JoinRequest, cx: &Cx) -> JoinStep {
        tracing::debug!(
            group = %self.id, member = %req.member_id, instance = ?req.group_instance_id,
            state = %self.state, reason = req.reason.as_deref().unwrap_or(""), "JoinGroup"
        );
        let step = if req.member_id.is_empty() {
            self.join_new_member(req, cx)
        } else {
            self.join_known_member(req, cx)
        };
        self.try_complete_join(cx);
        step
    }

    fn is_full(&self) -> bool {
        self.members.len() + self.pending_members.len() >= MAX_MEMBERS_PER_GROUP
    }

    fn join_new_member(&mut self, req: &JoinRequest, cx: &Cx) -> JoinStep {
        if self.state == GroupState::Dead {
            return join_error("", ResponseError::CoordinatorNotAvailable);
        }
        if !self.supports_protocols(&req.protocol_type, &req.protocols) {
            return join_error("", ResponseError::InconsistentGroupProtocol);
        }
        let suffix = uuid::Uuid::new_v4();
        if let Some(instance) = &req.group_instance_id {
            let new_id = format!("{instance}-{suffix}");
            if let Some(old_id) = self.static_members.get(instance).cloned() {
                return self.replace_static_member(&old_id, new_id, req, cx);
            }
            if self.is_full() {
                return join_error("", ResponseError::GroupMaxSizeReached);
            }
            return JoinStep::Wait(self.add_member_and_rebalance(new_id, req, cx));
        }
        if self.is_full() {
            return join_error("", ResponseError::GroupMaxSizeReached);
        }
        let new_id = format!("{}-{suffix}", req.client_id);
        if req.require_known_member_id {
            // The member must come back with this id, so a client that retries a lost response
            // does not leave a stray member behind.
            self.pending_members.insert(
                new_id.clone(),
                cx.after_ms(i64::from(req.session_timeout_ms)),
            );
            return JoinStep::Done(JoinResponse::error(new_id, ResponseError::MemberIdRequired));
        }
        JoinStep::Wait(self.add_member_and_rebalance(new_id, req, cx))
    }

    fn join_known_member(&mut self, req: &JoinRequest, cx: &Cx) -> JoinStep {
        let id = req.member_id.as_str();
        if self.state == GroupState::Dead {
            return join_error(id, ResponseError::CoordinatorNotAvailable);
        }
        if !self.supports_protocols(&req.protocol_type, &req.protocols) {
            return join_error(id, ResponseError::InconsistentGroupProtocol);
        }
        if self.pending_members.contains_key(id) {
            if req.group_instance_id.is_some() {
                // Ids handed out with MEMBER_ID_REQUIRED are for dynamic members only.
                return join_error(id, ResponseError::UnknownMemberId);
            }
            return JoinStep::Wait(self.add_member_and_rebalance(id.to_owned(), req, cx));
        }
        if let Err(e) = self.validate_member(id, req.group_instance_id.as_deref()) {
            return join_error(id, e);
        }
        let matches = self
            .members
            .get(id)
            .is_some_and(|m| m.matches(&req.protocols));
        match self.state {
            GroupState::PreparingRebalance => {
                JoinStep::Wait(self.update_member_and_rebalance(id, req, "member rejoined", cx))
            }
            GroupState::CompletingRebalance if matches => {
                // Same metadata: it lost the JoinGroup response; give it again.
                JoinStep::Done(self.join_result(id, self.is_leader(id)))
            }
            GroupState::CompletingRebalance => JoinStep::Wait(self.update_member_and_rebalance(
                id,
                req,
                "member metadata changed",
                cx,
            )),
            GroupState::Stable if self.is_leader(id) || !matches => {
                // The leader rejoins to trigger a rebalance (e.g. topic metadata changed).
                let reason = if matches {
                    "leader rejoined"
                } else {
                    "member metadata changed"
                };
                JoinStep::Wait(self.update_member_and_rebalance(id, req, reason, cx))
            }
            GroupState::Stable => JoinStep::Done(self.join_result(id, false)),
            GroupState::Empty | GroupState::Dead => join_error(id, ResponseError::UnknownMemberId),
        }
    }

    fn add_member_and_rebalance(
        &mut self,
        member_id: String,
        req: &JoinRequest,
        cx: &Cx,
    ) -> oneshot::Receiver<JoinResponse> {
        let (tx, rx) = oneshot::channel();
        if self.members.is_empty() {
            self.protocol_type = Some(req.protocol_type.clone());
        }
        if self.state == GroupState::PreparingRebalance && self.generation == 0 {
            self.new_member_added = true;
        }
        if self.leader.is_none() {
            self.leader = Some(member_id.clone());
        }
        if let Some(instance) = &req.group_instance_id {
            self.static_members
                .insert(instance.clone(), member_id.clone());
        }
        self.pending_members.remove(&member_id);
        tracing::debug!(group = %self.id, member = %member_id, "member joins");
        self.members.insert(
            member_id.clone(),
            Member {
                id: member_id.clone(),
                instance_id: req.group_instance_id.clone(),
                client_id: req.client_id.clone(),
                client_host: req.client_host.clone(),
                rebalance_timeout_ms: req.rebalance_timeout_ms,
                session_timeout_ms: req.session_timeout_ms,
                protocols: req.protocols.clone(),
                assignment: Bytes::new(),
                join_waiter: Some(tx),
                sync_waiter: None,
                is_new: true,
                // New members cannot heartbeat while they wait; they get a long deadline so
                // abandoned joins do not pile up.
                heartbeat_deadline: Some(
                    cx.after_ms(i64::from(cx.config.new_member_join_timeout_ms)),
                ),
            },
        );
        self.maybe_prepare_rebalance("a member joined", cx);
        rx
    }

    fn update_member_and_rebalance(
        &mut self,
        member_id: &str,
        req: &JoinRequest,
        reason: &str,
        cx: &Cx,
    ) -> oneshot::Receiver<JoinResponse> {
        let (tx, rx) = oneshot::channel();
        if let Some(m) = self.members.get_mut(member_id) {
            m.protocols = req.protocols.clone();
            m.rebalance_timeout_ms = req.rebalance_timeout_ms;
            m.session_timeout_ms = req.session_timeout_ms;
            m.client_id = req.client_id.clone();
            if let Some(old) = m.join_waiter.replace(tx) {
                // A second JoinGroup of the same member supersedes the first.
                let _ = old.send(JoinResponse::error(
                    member_id.to_owned(),
                    ResponseError::RebalanceInProgress,
                ));
            }
        }
        self.maybe_prepare_rebalance(reason, cx);
        rx
    }

    /// A static member came back with no member id: it takes over the old member's place
    /// under a new id, and the old id is fenced.
    fn replace_static_member(
        &mut self,
        old_id: &str,
        new_id: String,
        req: &JoinRequest,
        cx: &Cx,
    ) -> JoinStep {
        let old_leader = self.leader.clone();
        let Some(mut member) = self.members.remove(old_id) else {
            return join_error("", ResponseError::UnknownMemberId);
        };
        if let Some(w) = member.join_waiter.take() {
            let _ = w.send(JoinResponse::error(
                old_id.to_owned(),
                ResponseError::FencedInstanceId,
            ));
        }
        if let Some(w) = member.sync_waiter.take() {
            let _ = w.send(SyncResponse::error(ResponseError::FencedInstanceId));
        }
        tracing::info!(group = %self.id, old = %old_id, new = %new_id, "static member rejoined under a new member id; the old id is fenced");
        member.id = new_id.clone();
        member.protocols = req.protocols.clone();
        member.rebalance_timeout_ms = req.rebalance_timeout_ms;
        member.session_timeout_ms = req.session_timeout_ms;
        member.client_id = req.client_id.clone();
        member.client_host = req.client_host.clone();
        member.heartbeat_deadline = Some(cx.after_ms(i64::from(req.session_timeout_ms)));
        if self.is_leader(old_id) {
            self.leader = Some(new_id.clone());
        }
        if self.pending_sync.remove(old_id) {
            self.pending_sync.insert(new_id.clone());
        }
        if let Some(instance) = &member.instance_id {
            self.static_members.insert(instance.clone(), new_id.clone());
        }
        self.members.insert(new_id.clone(), member);

        match self.state {
            GroupState::Stable if self.select_protocol() == self.protocol_name => {
                // Nothing the assignment depends on changed: no rebalance. The member gets its
                // old assignment through SyncGroup.
                self.metadata_dirty = true;
                let is_leader = self.is_leader(&new_id);
                let mut resp = self.join_result(&new_id, false);
                if req.supports_skip_assignment {
                    // JoinGroup v9+: the leader learns it leads, but must not reassign.
                    resp.skip_assignment = is_leader;
                    if is_leader {
                        resp.members = self.current_member_metadata();
                    }
                } else {
                    // Older clients: name the old leader id, so a returning leader acts as a
                    // follower and does not compute an assignment a stable group would ignore.
                    resp.leader = old_leader.unwrap_or_default();
                }
                JoinStep::Done(resp)
            }
            GroupState::Stable
            | GroupState::CompletingRebalance
            | GroupState::PreparingRebalance => {
                let (tx, rx) = oneshot::channel();
                if let Some(m) = self.members.get_mut(&new_id) {
                    m.join_waiter = Some(tx);
                }
                match self.state {
                    GroupState::Stable => self.maybe_prepare_rebalance(
                        "a static member rejoined with other protocols",
                        cx,
                    ),
                    // The leader may already have assigned under the old id: start over.
                    GroupState::CompletingRebalance => {
                        self.prepare_rebalance("a static member rejoined", cx)
                    }
                    _ => {}
                }
                JoinStep::Wait(rx)
            }
            GroupState::Empty | GroupState::Dead => {
                join_error(&new_id, ResponseError::UnknownMemberId)
            }
        }
    }

    fn maybe_prepare_rebalance(&mut self, reason: &str, cx: &Cx) {
        if matches!(
            self.state,
            GroupState::Stable | GroupState::CompletingRebalance | GroupState::Empty
        ) {
            self.prepare_rebalance(reason, cx);
        }
    }

    fn prepare_rebalance(&mut self, reason: &str, cx: &Cx) {
        if self.state == GroupState::CompletingRebalance {
            self.reset_and_propagate_assignment_error(ResponseError::RebalanceInProgress, cx);
        }
        self.sync_deadline = None;
        let rebalance_timeout_ms = self.rebalance_timeout_ms();
        self.join_timer = Some(if self.state == GroupState::Empty {
            let delay = i64::from(cx.config.initial_rebalance_delay_ms);
            JoinTimer {
                deadline: cx.after_ms(delay),
                initial_remaining_ms: Some((rebalance_timeout_ms - delay).max(0)),
            }
        } else {
            JoinTimer {
                deadline: cx.after_ms(rebalance_timeout_ms),
                initial_remaining_ms: None,
            }
        });
        tracing::info!(group = %self.id, generation = self.generation, from = %self.state, reason, "preparing to rebalance");
        self.transition(GroupState::PreparingRebalance, cx);
        self.try_complete_join(cx);
    }

    /// Completes the join phase if it is done: everyone rejoined, or an elapsed initial delay.
    fn try_complete_join(&mut self, cx: &Cx) {
        while self.state == GroupState::PreparingRebalance {
            match self.join_timer {
                Some(t) if t.initial_remaining_ms.is_some() => {
                    // A new group waits out its initial delay even when everyone has joined.
                    if t.deadline > cx.now {
                        return;
                    }
                    self.on_join_timer(cx);
                }
                _ => {
                    if self.all_members_joined() {
                        self.complete_join(cx);
                    }
                    return;
                }
            }
        }
    }

    /// The join phase's deadline passed.
    fn on_join_timer(&mut self, cx: &Cx) {
        let Some(timer) = self.join_timer.take() else {
            return;
        };
        if let Some(remaining) = timer.initial_remaining_ms
            && self.new_member_added
            && remaining > 0
        {
            self.new_member_added = false;
            let delay = i64::from(cx.config.initial_rebalance_delay_ms).min(remaining);
            self.join_timer = Some(JoinTimer {
                deadline: cx.after_ms(delay),
                initial_remaining_ms: Some((remaining - delay).max(0)),
            });
            return;
        }
        self.complete_join(cx);
    }

    /// Ends the join phase: members that did not rejoin are dropped (static ones are kept),
    /// and the next generation starts.
    fn complete_join(&mut self, cx: &Cx) {
        self.join_timer = None;
        self.new_member_added = false;
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| !m.awaiting_join() && m.instance_id.is_none())
            .map(|m| m.id.clone())
            .collect();
        if !gone.is_empty() {
            tracing::info!(group = %self.id, members = ?gone, "removing members that did not rejoin in time");
        }
        for id in &gone {
            self.remove_member_quietly(id);
        }
        if self.state == GroupState::Dead {
            return;
        }
        if !self.maybe_elect_joined_leader() && !self.members.is_empty() {
            // Only static members that have not rejoined: wait for them (or their session timeout).
            tracing::warn!(group = %self.id, "no member rejoined; waiting another rebalance timeout");
            self.join_timer = Some(JoinTimer {
                deadline: cx.after_ms(self.rebalance_timeout_ms()),
                initial_remaining_ms: None,
            });
            return;
        }
        self.generation = self.generation.wrapping_add(1).max(1);
        self.pending_sync.clear();
        self.sync_deadline = None;
        if self.members.is_empty() {
            self.protocol_name = None;
            self.subscribed_topics = self.compute_subscribed_topics();
            self.transition(GroupState::Empty, cx);
            self.metadata_dirty = true;
            tracing::info!(group = %self.id, generation = self.generation, "group is now empty");
            return;
        }
        self.protocol_name = self.select_protocol();
        self.subscribed_topics = self.compute_subscribed_topics();
        self.transition(GroupState::CompletingRebalance, cx);
        tracing::info!(
            group = %self.id, generation = self.generation, members = self.members.len(),
            protocol = self.protocol_name.as_deref().unwrap_or(""), "rebalance joined; waiting for the leader's assignment"
        );
        let everyone = self.current_member_metadata();
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let is_leader = self.is_leader(&id);
            let mut resp = self.join_result(&id, false);
            if is_leader {
                resp.members = everyone.clone();
            }
            if let Some(m) = self.members.get_mut(&id) {
                if let Some(w) = m.join_waiter.take() {
                    let _ = w.send(resp);
                }
                m.is_new = false;
                m.heartbeat_deadline = Some(cx.after_ms(i64::from(m.session_timeout_ms)));
            }
            self.pending_sync.insert(id);
        }
        self.sync_deadline = Some(cx.after_ms(self.rebalance_timeout_ms()));
    }

    /// Keeps the leader if it rejoined, else makes any rejoined member the leader. False when
    /// nobody rejoined.
    fn maybe_elect_joined_leader(&mut self) -> bool {
        if self
            .leader
            .as_deref()
            .and_then(|l| self.members.get(l))
            .is_some_and(Member::awaiting_join)
        {
            return true;
        }
        match self.members.values().find(|m| m.awaiting_join()) {
            Some(m) => {
                self.leader = Some(m.id.clone());
                true
            }
            None => false,
        }
    }

    // ------------------------------------------------------------------------------------------
    // Members leaving

    /// Removes a member from the books (no rebalance is started here).
    fn remove_member_quietly(&mut self, member_id: &str) {
        if let Some(m) = self.members.remove(member_id)
            && let Some(instance) = &m.instance_id
            && self.static_members.get(instance).map(String::as_str) == Some(member_id)
        {
            self.static_members.remove(instance);
        }
        self.pending_sync.remove(member_id);
        if self.is_leader(member_id) {
            self.leader = self.members.keys().next().cloned();
        }
    }

    /// Removes a member (it left, timed out, or was removed by an admin) and rebalances.
    pub fn remove_member(&mut self, member_id: &str, reason: &str, cx: &Cx) {
        if let Some(m) = self.members.get_mut(member_id) {
            // Its own waiting requests learn it is gone (it keeps its id to rejoin with).
            if let Some(w) = m.join_waiter.take() {
                let _ = w.send(JoinResponse::error(
                    member_id.to_owned(),
                    ResponseError::UnknownMemberId,
                ));
            }
            if let Some(w) = m.sync_waiter.take() {
                let _ = w.send(SyncResponse::error(ResponseError::UnknownMemberId));
            }
        }
        tracing::info!(group = %self.id, member = %member_id, reason, "removing member");
        self.remove_member_quietly(member_id);
        match self.state {
            GroupState::Dead | GroupState::Empty => {}
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.maybe_prepare_rebalance(reason, cx)
            }
            GroupState::PreparingRebalance => self.try_complete_join(cx),
        }
    }

    fn remove_pending_member(&mut self, member_id: &str, cx: &Cx) {
        self.pending_members.remove(member_id);
        self.try_complete_join(cx);
    }

    /// Handles a LeaveGroup: each member by member id, or by instance id alone (admin removal).
    /// `Err` is a group-level error.
    pub fn leave(
        &mut self,
        leaving: &[LeavingMember],
        cx: &Cx,
    ) -> Result<Vec<Result<(), ResponseError>>, ResponseError> {
        if self.state == GroupState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        let mut results = Vec::with_capacity(leaving.len());
        for lm in leaving {
            let reason = match &lm.reason {
                Some(r) => format!("member left the group: {r}"),
                None => "member left the group".to_owned(),
            };
            let result = if lm.member_id.is_empty() {
                match lm
                    .group_instance_id
                    .as_deref()
                    .and_then(|i| self.static_members.get(i))
                    .cloned()
                {
                    Some(current) => {
                        self.remove_member(&current, &reason, cx);
                        Ok(())
                    }
                    None => Err(ResponseError::UnknownMemberId),
                }
            } else if self.pending_members.contains_key(&lm.member_id) {
                self.remove_pending_member(&lm.member_id, cx);
                Ok(())
            } else {
                self.validate_member(&lm.member_id, lm.group_instance_id.as_deref())
                    .map(|()| self.remove_member(&lm.member_id, &reason, cx))
            };
            results.push(result);
        }
        Ok(results)
    }

    // ------------------------------------------------------------------------------------------
    // SyncGroup

    /// Handles a SyncGroup.
    pub fn sync(&mut self, req: &SyncRequest, cx: &Cx) -> SyncStep {
        if self.state == GroupState::Dead {
            return sync_error(ResponseError::CoordinatorNotAvailable);
        }
        let id = req.member_id.as_str();
        if let Err(e) = self.validate_member(id, req.group_instance_id.as_deref()) {
            return sync_error(e);
        }
        if req.generation_id != self.generation {
            return sync_error(ResponseError::IllegalGeneration);
        }
        if req
            .protocol_type
            .as_ref()
            .is_some_and(|t| self.protocol_type.as_ref() != Some(t))
            || req
                .protocol_name
                .as_ref()
                .is_some_and(|n| self.protocol_name.as_ref() != Some(n))
        {
            return sync_error(ResponseError::InconsistentGroupProtocol);
        }
        match self.state {
            GroupState::Empty | GroupState::Dead => sync_error(ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => sync_error(ResponseError::RebalanceInProgress),
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                if let Some(m) = self.members.get_mut(id)
                    && let Some(old) = m.sync_waiter.replace(tx)
                {
                    let _ = old.send(SyncResponse::error(ResponseError::RebalanceInProgress));
                }
                self.remove_pending_sync(id);
                if self.is_leader(id) {
                    let mut assignments: HashMap<&str, &Bytes> = req
                        .assignments
                        .iter()
                        .map(|(m, a)| (m.as_str(), a))
                        .collect();
                    let missing = self
                        .members
                        .keys()
                        .filter(|m| !assignments.contains_key(m.as_str()))
                        .count();
                    if missing > 0 {
                        tracing::warn!(group = %self.id, generation = self.generation, missing, "the leader's assignment leaves members out; they get an empty one");
                    }
                    for m in self.members.values_mut() {
                        m.assignment = assignments
                            .remove(m.id.as_str())
                            .cloned()
                            .unwrap_or_default();
                    }
                    self.metadata_dirty = true;
                    self.propagate_assignment(cx);
                    self.transition(GroupState::Stable, cx);
                    tracing::info!(group = %self.id, generation = self.generation, members = self.members.len(), "group is stable");
                }
                SyncStep::Wait(rx)
            }
            GroupState::Stable => {
                self.remove_pending_sync(id);
                self.schedule_heartbeat(id, cx);
                SyncStep::Done(SyncResponse {
                    error: 0,
                    protocol_type: self.protocol_type.clone(),
                    protocol_name: self.protocol_name.clone(),
                    assignment: self
                        .members
                        .get(id)
                        .map(|m| m.assignment.clone())
                        .unwrap_or_default(),
                })
            }
        }
    }

    fn remove_pending_sync(&mut self, member_id: &str) {
        self.pending_sync.remove(member_id);
        if self.pending_sync.is_empty() {
            self.sync_deadline = None;
        }
    }

    /// Answers every waiting SyncGroup with its assignment.
    fn propagate_assignment(&mut self, cx: &Cx) {
        let (protocol_type, protocol_name) =
            (self.protocol_type.clone(), self.protocol_name.clone());
        for m in self.members.values_mut() {
            if let Some(w) = m.sync_waiter.take() {
                let _ = w.send(SyncResponse {
                    error: 0,
                    protocol_type: protocol_type.clone(),
                    protocol_name: protocol_name.clone(),
                    assignment: m.assignment.clone(),
                });
                m.heartbeat_deadline = Some(cx.after_ms(i64::from(m.session_timeout_ms)));
            }
        }
    }

    /// Clears assignments and answers every waiting SyncGroup with `error`.
    fn reset_and_propagate_assignment_error(&mut self, error: ResponseError, cx: &Cx) {
        for m in self.members.values_mut() {
            m.assignment = Bytes::new();
            if let Some(w) = m.sync_waiter.take() {
                let _ = w.send(SyncResponse::error(error));
                m.heartbeat_deadline = Some(cx.after_ms(i64::from(m.session_timeout_ms)));
            }
        }
    }

    // ------------------------------------------------------------------------------------------
    // Heartbeat and offset commits

    /// Handles a Heartbeat.
    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation_id: i32,
        cx: &Cx,
    ) -> Result<(), ResponseError> {
        if self.state == GroupState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        self.validate_member(member_id, instance_id)?;
        if generation_id != self.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        match self.state {
            GroupState::Empty | GroupState::Dead => Err(ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => {
                self.schedule_heartbeat(member_id, cx);
                Err(ResponseError::RebalanceInProgress)
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                self.schedule_heartbeat(member_id, cx);
                Ok(())
            }
        }
    }

    /// Checks an OffsetCommit against the group: members commit with their generation; a
    /// commit with no member id and generation -1 is only taken while the group has no members.
    ///
    /// A transactional commit (TxnOffsetCommit, KIP-447) checks the member and generation only
    /// when it names them, and is not refused during a rebalance: its offsets apply only if
    /// the transaction commits, which the producer's fencing already guards.
    pub fn validate_commit(
        &mut self,
        generation_id: i32,
        member_id: &str,
        instance_id: Option<&str>,
        transactional: bool,
        cx: &Cx,
    ) -> Result<(), ResponseError> {
        if self.state == GroupState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        let names_member = generation_id >= 0 || !member_id.is_empty() || instance_id.is_some();
        if names_member {
            self.validate_member(member_id, instance_id)?;
            if generation_id != self.generation {
                return Err(ResponseError::IllegalGeneration);
            }
        } else if !transactional && self.state != GroupState::Empty {
            return Err(ResponseError::UnknownMemberId);
        }
        match self.state {
            GroupState::Empty => Ok(()),
            GroupState::Stable | GroupState::PreparingRebalance => {
                // Commits count as liveness; the heartbeat tells the member about a rebalance.
                self.schedule_heartbeat(member_id, cx);
                Ok(())
            }
            GroupState::CompletingRebalance if transactional => Ok(()),
            GroupState::CompletingRebalance => Err(ResponseError::RebalanceInProgress),
            GroupState::Dead => Err(ResponseError::CoordinatorNotAvailable),
        }
    }

    /// Removes and returns the offsets that have expired at `now_ms`: in an empty group, all
    /// of them once it has been empty for `retention_ms`; in a stable consumer group, those of
    /// topics nobody subscribes to, `retention_ms` after their commit; in a group used only
    /// for offset storage, each `retention_ms` after its commit. Offsets committed with an
    /// explicit retention expire at their own time.
    pub fn expire_offsets(&mut self, now_ms: i64, retention_ms: i64) -> Vec<(String, i32)> {
        enum Base {
            StateChange(i64),
            Commit,
        }
        let (base, skip) = match (&self.protocol_type, self.state) {
            (Some(_), GroupState::Empty) => (Base::StateChange(self.state_since_ms), None),
            (Some(t), GroupState::Stable)
                if t == CONSUMER_PROTOCOL_TYPE && self.subscribed_topics.is_some() =>
            {
                (Base::Commit, self.subscribed_topics.as_ref())
            }
            (None, _) => (Base::Commit, None),
            _ => return Vec::new(),
        };
        let expired: Vec<(String, i32)> = self
            .offsets
            .iter()
            .filter(|((topic, _), _)| !skip.is_some_and(|s| s.contains(topic)))
            .filter(|(_, o)| match o.expire_timestamp_ms {
                Some(at) => now_ms >= at,
                None => {
                    let from = match base {
                        Base::StateChange(t) => t,
                        Base::Commit => o.commit_timestamp_ms,
                    };
                    now_ms.saturating_sub(from) >= retention_ms
                }
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in &expired {
            self.offsets.remove(k);
        }
        expired
    }

    // ------------------------------------------------------------------------------------------
    // Timers

    /// The earliest time something is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        let members = self.members.values().filter_map(|m| m.heartbeat_deadline);
        let pending = self.pending_members.values().copied();
        members
            .chain(pending)
            .chain(self.join_timer.map(|t| t.deadline))
            .chain(self.sync_deadline)
            .min()
    }

    /// Runs whatever is due: expired pending members and sessions, the end of a join phase,
    /// members that did not send SyncGroup in time.
    pub fn fire_timers(&mut self, cx: &Cx) {
        if self.state == GroupState::Dead {
            return;
        }
        let expired: Vec<String> = self
            .pending_members
            .iter()
            .filter(|(_, at)| **at <= cx.now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            tracing::debug!(group = %self.id, member = %id, "a member asked to rejoin with an id never did");
            self.remove_pending_member(&id, cx);
        }
        let due: Vec<String> = self
            .members
            .values()
            .filter(|m| m.heartbeat_deadline.is_some_and(|at| at <= cx.now))
            .map(|m| m.id.clone())
            .collect();
        for id in due {
            let Some(m) = self.members.get_mut(&id) else {
                continue;
            };
            if !m.is_new && (m.awaiting_join() || m.awaiting_sync()) {
                // Waiting in a rebalance counts as alive; the deadline is set again when it ends.
                m.heartbeat_deadline = None;
                continue;
            }
            let reason = if m.is_new {
                "its JoinGroup waited longer than the new member timeout".to_owned()
            } else {
                format!(
                    "no heartbeat within session.timeout.ms={}",
                    m.session_timeout_ms
                )
            };
            self.remove_member(&id, &reason, cx);
        }
        if self.state == GroupState::PreparingRebalance
            && self.join_timer.is_some_and(|t| t.deadline <= cx.now)
        {
            self.on_join_timer(cx);
            self.try_complete_join(cx);
        }
        if self.sync_deadline.is_some_and(|at| at <= cx.now) {
            self.sync_deadline = None;
            if matches!(
                self.state,
                GroupState::CompletingRebalance | GroupState::Stable
            ) && !self.pending_sync.is_empty()
            {
                let late: Vec<String> = self.pending_sync.drain().collect();
                tracing::info!(group = %self.id, members = ?late, "removing members that did not send SyncGroup within the rebalance timeout");
                for id in &late {
                    self.remove_member_quietly(id);
                }
                self.prepare_rebalance("members did not sync in time", cx);
            }
        }
    }

    /// Answers every waiting request with `error` (shutdown, removal).
    pub fn fail_waiters(&mut self, error: ResponseError) {
        for m in self.members.values_mut() {
            if let Some(w) = m.join_waiter.take() {
                let _ = w.send(JoinResponse::error(m.id.clone(), error));
            }
            if let Some(w) = m.sync_waiter.take() {
                let _ = w.send(SyncResponse::error(error));
            }
        }
    }

    /// What DescribeGroups shows: member metadata and assignments only while stable (Kafka's rule).
    pub fn describe(&self) -> GroupDescription {
        let stable = self.state == GroupState::Stable;
        let protocol = self.protocol_name.clone().unwrap_or_default();
        GroupDescription {
            error: 0,
            group_id: self.id.clone(),
            state: self.state,
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            protocol: if stable {
                protocol.clone()
            } else {
                String::new()
            },
            members: self
                .members
                .values()
                .map(|m| MemberDescription {
                    member_id: m.id.clone(),
                    group_instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: if stable {
                        m.metadata(&protocol)
                    } else {
                        Bytes::new()
                    },
                    assignment: if stable {
                        m.assignment.clone()
                    } else {
                        Bytes::new()
                    },
                })
                .collect(),
        }
    }
}
