//! Membership of a consumer group (Kafka's classic group protocol, eager rebalancing): join,
//! sync, heartbeats, rebalances with callbacks, offset commits as a member, leave.
//!
//! [`GroupMembership::join`] sends JoinGroup (again with the member id the coordinator hands
//! out, JoinGroup v4+), and, when this member is elected leader, assigns every member's
//! partitions with the configured [`Assignor`] and hands them out in SyncGroup. A task then
//! heartbeats every `heartbeat_interval_ms`. When the coordinator answers a heartbeat with
//! REBALANCE_IN_PROGRESS (another member joined or left), the member must rejoin within the
//! rebalance timeout: the owner sees [`GroupMembership::rebalance_needed`] (or awaits
//! [`GroupMembership::rebalance_signal`]) and calls [`GroupMembership::poll`], which revokes
//! every owned partition through the [`RebalanceListener`] (the place to commit what was
//! processed), rejoins, and reports the new assignment. A member the coordinator no longer
//! knows (its session expired) reports its partitions lost instead, since it can no longer
//! commit for them.
//!
//! The coordinator answers one connection's requests in order and holds JoinGroup until the
//! whole group has joined, so each member needs its own [`KafkaClient`] (as each Kafka
//! consumer has its own connections); JoinGroup and SyncGroup use a connection of their own so
//! that commits and heartbeats never wait behind them.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::messages::heartbeat_request::HeartbeatRequest;
use kafka_protocol::messages::join_group_request::{JoinGroupRequest, JoinGroupRequestProtocol};
use kafka_protocol::messages::leave_group_request::{LeaveGroupRequest, MemberIdentity as Leaver};
use kafka_protocol::messages::sync_group_request::{SyncGroupRequest, SyncGroupRequestAssignment};
use kafka_protocol::protocol::StrBytes;
use quiver_common::kafka::consumer_protocol::{
    CONSUMER_PROTOCOL_TYPE, decode_assignment, encode_assignment, encode_subscription,
    subscribed_topics,
};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::groups::{MemberIdentity, group_id};
use crate::{
    ApiError, Assignor, ClientError, CommittedOffset, KafkaClient, Lane, Result, versions,
};

/// One partition of one topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    /// Partition `partition` of `topic`.
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

/// How a member joins its group; [`MembershipConfig::new`] has Kafka's consumer defaults.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// Kafka's `group.id`.
    pub group_id: String,
    /// The topics this member subscribes to.
    pub topics: Vec<String>,
    /// The assignor offered, run by whichever member the coordinator elects leader
    /// (`partition.assignment.strategy`). Default range.
    pub assignor: Assignor,
    /// Without a heartbeat for this long the coordinator removes the member
    /// (`session.timeout.ms`). Default 45 000; the broker bounds it by
    /// `group.min.session.timeout.ms` and `group.max.session.timeout.ms`.
    pub session_timeout_ms: u64,
    /// How long the coordinator waits for every member to rejoin in a rebalance, so how long
    /// revocation may take (`max.poll.interval.ms`). Default 300 000.
    pub rebalance_timeout_ms: u64,
    /// Time between heartbeats (`heartbeat.interval.ms`); well under the session timeout.
    /// Default 3 000.
    pub heartbeat_interval_ms: u64,
    /// A static member's id (`group.instance.id`, JoinGroup v5+). Default none.
    pub group_instance_id: Option<String>,
}

impl MembershipConfig {
    /// Membership of `group_id` subscribing to `topics`, with Kafka's consumer defaults.
    pub fn new(group_id: impl Into<String>, topics: &[&str]) -> Self {
        MembershipConfig {
            group_id: group_id.into(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            assignor: Assignor::default(),
            session_timeout_ms: 45_000,
            rebalance_timeout_ms: 300_000,
            heartbeat_interval_ms: 3_000,
            group_instance_id: None,
        }
    }

    fn check(&self) -> Result<()> {
        let invalid = |why: String| Err(ClientError::InvalidArgument(why));
        if self.group_id.is_empty() {
            return invalid("a consumer group needs a non-empty group id".into());
        }
        if self.topics.is_empty() || self.topics.iter().any(String::is_empty) {
            return invalid(format!(
                "group '{}' subscribes to no topic or to an empty topic name; name the topics to consume",
                self.group_id
            ));
        }
        if self.heartbeat_interval_ms == 0 || self.heartbeat_interval_ms >= self.session_timeout_ms
        {
            return invalid(format!(
                "heartbeat_interval_ms={} must be above 0 and below session_timeout_ms={}",
                self.heartbeat_interval_ms, self.session_timeout_ms
            ));
        }
        for (name, value) in [
            ("session_timeout_ms", self.session_timeout_ms),
            ("rebalance_timeout_ms", self.rebalance_timeout_ms),
        ] {
            if value == 0 || value > i32::MAX as u64 {
                return invalid(format!("{name}={value} must be between 1 and {}", i32::MAX));
            }
        }
        Ok(())
    }
}

/// Told of the partitions a member gets and gives up, by [`GroupMembership::join`],
/// [`GroupMembership::poll`] and [`GroupMembership::leave`], on the caller's task.
///
/// In a rebalance `partitions_revoked` comes first, while the member is still in the old
/// generation: commits made in it (with `group`) still count. Then the member rejoins, and
/// `partitions_assigned` gives the new assignment (possibly empty). When the member was
/// removed from the group (its session expired, or its generation is gone) it cannot commit
/// any more, and `partitions_lost` is called instead of `partitions_revoked`.
pub trait RebalanceListener: Send {
    /// The member is about to give up `partitions`; finish and commit their work now.
    fn partitions_revoked(
        &mut self,
        group: &GroupMembership,
        partitions: &[TopicPartition],
    ) -> impl Future<Output = ()> + Send;

    /// The member now owns `partitions`, in `group.generation_id()`.
    fn partitions_assigned(
        &mut self,
        group: &GroupMembership,
        partitions: &[TopicPartition],
    ) -> impl Future<Output = ()> + Send;

    /// The member lost `partitions` without a chance to commit; another member may already
    /// own them. By default the same as a revocation.
    fn partitions_lost(
        &mut self,
        group: &GroupMembership,
        partitions: &[TopicPartition],
    ) -> impl Future<Output = ()> + Send {
        self.partitions_revoked(group, partitions)
    }
}

/// A listener that does nothing, for members that only read [`GroupMembership::assignment`].
impl RebalanceListener for () {
    fn partitions_revoked(
        &mut self,
        _: &GroupMembership,
        _: &[TopicPartition],
    ) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }

    fn partitions_assigned(
        &mut self,
        _: &GroupMembership,
        _: &[TopicPartition],
    ) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

/// Why the member must rejoin.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rejoin {
    /// The group is rebalancing; the member is still in its generation and may commit.
    Rebalance,
    /// The member was removed from the group (the reason says why); its partitions are lost.
    Lost(String),
}

/// The member's place in the group.
#[derive(Debug, Clone, Default)]
struct State {
    member_id: String,
    generation_id: i32,
    leader: bool,
    assignment: Vec<TopicPartition>,
    left: bool,
}

/// A member of a consumer group. See the module docs for the protocol; every method takes
/// `&self`, and rebalances ([`Self::poll`]) are serialized. Dropping it without
/// [`Self::leave`] stops its heartbeats; the coordinator then removes it after its session
/// timeout.
#[derive(Debug)]
pub struct GroupMembership {
    client: Arc<KafkaClient>,
    config: MembershipConfig,
    state: parking_lot::Mutex<State>,
    rejoin: Arc<watch::Sender<Option<Rejoin>>>,
    heartbeat: parking_lot::Mutex<Option<AbortHandle>>,
    rebalancing: tokio::sync::Mutex<()>,
}

impl Drop for GroupMembership {
    fn drop(&mut self) {
        self.stop_heartbeats();
    }
}

/// What a JoinGroup answered.
struct Joined {
    generation_id: i32,
    member_id: String,
    leader: String,
    /// Each member's subscription; only the leader gets them.
    members: Vec<(String, bytes::Bytes)>,
}

/// The group coordinator's answers that mean the member must rejoin: the group moved on
/// (`Rebalance`) or forgot the member (`Lost`).
fn rejoin_for(error: &ApiError) -> Option<Rejoin> {
    match error.error {
        ResponseError::RebalanceInProgress => Some(Rejoin::Rebalance),
        ResponseError::UnknownMemberId
        | ResponseError::IllegalGeneration
        | ResponseError::FencedInstanceId => Some(Rejoin::Lost(error.to_string())),
        _ => None,
    }
}

impl GroupMembership {
    /// Joins the group (waiting, up to the rebalance timeout, for the rebalance to complete),
    /// tells `listener` the partitions assigned, and starts heartbeats.
    pub async fn join(
        client: Arc<KafkaClient>,
        config: MembershipConfig,
        listener: &mut impl RebalanceListener,
    ) -> Result<GroupMembership> {
        config.check()?;
        let membership = GroupMembership {
            client,
            config,
            state: parking_lot::Mutex::new(State::default()),
            rejoin: Arc::new(watch::Sender::new(None)),
            heartbeat: parking_lot::Mutex::new(None),
            rebalancing: tokio::sync::Mutex::new(()),
        };
        membership.rejoin_group(listener).await?;
        Ok(membership)
    }

    /// The group id.
    pub fn group_id(&self) -> &str {
        &self.config.group_id
    }

    /// The member id the coordinator gave this member.
    pub fn member_id(&self) -> String {
        self.state.lock().member_id.clone()
    }

    /// The generation this member's assignment belongs to.
    pub fn generation_id(&self) -> i32 {
        self.state.lock().generation_id
    }

    /// True when this member was the leader that assigned the partitions of its generation.
    pub fn is_leader(&self) -> bool {
        self.state.lock().leader
    }

    /// The partitions this member owns, sorted.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.state.lock().assignment.clone()
    }

    /// True when the member must call [`Self::poll`] to rejoin the group.
    pub fn rebalance_needed(&self) -> bool {
        self.rejoin.borrow().is_some()
    }

    /// True when the member was removed from the group (its session expired, or its
    /// generation is gone): its partitions may already be someone else's, and its commits no
    /// longer count. [`Self::poll`] rejoins.
    pub fn partitions_lost(&self) -> bool {
        matches!(&*self.rejoin.borrow(), Some(Rejoin::Lost(_)))
    }

    /// Resolves once the member must call [`Self::poll`] (at once if it already must); never
    /// after [`Self::leave`].
    pub async fn rebalance_signal(&self) {
        let mut rx = self.rejoin.subscribe();
        // The sender lives as long as `self`, so this only ends when a rejoin is needed.
        let _ = rx.wait_for(Option::is_some).await;
    }

    /// Rejoins the group if a rebalance is needed: revokes (or reports lost) the owned
    /// partitions through `listener`, rejoins, and tells it the new assignment. Returns
    /// whether it rebalanced. Call it often enough to rejoin within the rebalance timeout.
    pub async fn poll(&self, listener: &mut impl RebalanceListener) -> Result<bool> {
        let _one_at_a_time = self.rebalancing.lock().await;
        let reason = self.rejoin.borrow().clone();
        let Some(reason) = reason else {
            return Ok(false);
        };
        self.ensure_member()?;
        self.stop_heartbeats();
        let owned = std::mem::take(&mut self.state.lock().assignment);
        match reason {
            Rejoin::Rebalance => listener.partitions_revoked(self, &owned).await,
            Rejoin::Lost(why) => {
                tracing::info!(group = %self.config.group_id, reason = %why, "group member lost its partitions");
                listener.partitions_lost(self, &owned).await;
            }
        }
        self.rejoin_group(listener).await?;
        Ok(true)
    }

    /// Commits `(topic, partition, offset)`s as this member (offset: the next record to
    /// read). Per-partition results; one that says the group moved on also makes
    /// [`Self::rebalance_needed`] true.
    pub async fn commit(
        &self,
        offsets: &[(&str, i32, i64)],
    ) -> Result<Vec<(String, i32, Result<(), ApiError>)>> {
        let with_metadata: Vec<(&str, i32, i64, &str)> =
            offsets.iter().map(|&(t, p, o)| (t, p, o, "")).collect();
        self.commit_with_metadata(&with_metadata).await
    }

    /// [`Self::commit`] with each offset's metadata string (`(topic, partition, offset,
    /// metadata)`), which [`Self::committed`] gives back.
    pub async fn commit_with_metadata(
        &self,
        offsets: &[(&str, i32, i64, &str)],
    ) -> Result<Vec<(String, i32, Result<(), ApiError>)>> {
        self.ensure_member()?;
        let identity = self.identity();
        let results = self
            .client
            .commit_offsets_with_metadata(&self.config.group_id, Some(&identity), offsets)
            .await?;
        if let Some(reason) = results
            .iter()
            .find_map(|(_, _, r)| r.as_ref().err().and_then(rejoin_for))
        {
            self.signal(reason);
        }
        Ok(results)
    }

    /// The group's committed offsets of `partitions`.
    pub async fn committed(&self, partitions: &[TopicPartition]) -> Result<Vec<CommittedOffset>> {
        let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for tp in partitions {
            by_topic.entry(&tp.topic).or_default().push(tp.partition);
        }
        let wanted: Vec<(&str, Vec<i32>)> = by_topic.into_iter().collect();
        self.client
            .offset_fetch(&self.config.group_id, Some(&wanted))
            .await
    }

    /// Revokes the owned partitions through `listener`, stops heartbeats and leaves the group,
    /// so that the others rebalance at once instead of after the session timeout.
    pub async fn leave(&self, listener: &mut impl RebalanceListener) -> Result<()> {
        let _one_at_a_time = self.rebalancing.lock().await;
        self.ensure_member()?;
        self.stop_heartbeats();
        let owned = std::mem::take(&mut self.state.lock().assignment);
        listener.partitions_revoked(self, &owned).await;
        self.state.lock().left = true;
        let identity = self.identity();
        let group = self.config.group_id.as_str();
        let client = &self.client;
        client
            .on_coordinator(group, |conn| {
                let identity = identity.clone();
                async move {
                    let (_, response) = client
                        .call(
                            &conn,
                            ApiKey::LeaveGroup,
                            versions::LEAVE_GROUP,
                            client.request_timeout(),
                            |v| {
                                let request =
                                    LeaveGroupRequest::default().with_group_id(group_id(group));
                                Ok(if v >= 3 {
                                    request.with_members(vec![
                                        Leaver::default()
                                            .with_member_id(StrBytes::from_string(
                                                identity.member_id.clone(),
                                            ))
                                            .with_group_instance_id(
                                                identity
                                                    .group_instance_id
                                                    .clone()
                                                    .map(StrBytes::from_string),
                                            ),
                                    ])
                                } else {
                                    request.with_member_id(StrBytes::from_string(
                                        identity.member_id.clone(),
                                    ))
                                })
                            },
                        )
                        .await?;
                    let code = response
                        .members
                        .iter()
                        .map(|m| m.error_code)
                        .find(|&c| c != 0)
                        .unwrap_or(response.error_code);
                    match ApiError::from_code(code, None) {
                        // Already gone: the coordinator forgot the member first.
                        Some(e) if e.error == ResponseError::UnknownMemberId => Ok(()),
                        Some(error) => Err(ClientError::Api {
                            context: format!("cannot leave group '{group}'"),
                            error,
                        }),
                        None => Ok(()),
                    }
                }
            })
            .await
    }

    fn ensure_member(&self) -> Result<()> {
        if self.state.lock().left {
            return Err(ClientError::InvalidArgument(format!(
                "this member left group '{}'; join again with GroupMembership::join",
                self.config.group_id
            )));
        }
        Ok(())
    }

    fn identity(&self) -> MemberIdentity {
        let state = self.state.lock();
        MemberIdentity {
            generation_id: state.generation_id,
            member_id: state.member_id.clone(),
            group_instance_id: self.config.group_instance_id.clone(),
        }
    }

    fn signal(&self, reason: Rejoin) {
        self.rejoin.send_if_modified(|current| {
            // A loss outranks a rebalance: the member cannot commit either way.
            let replace = match current {
                None => true,
                Some(Rejoin::Rebalance) => matches!(reason, Rejoin::Lost(_)),
                Some(Rejoin::Lost(_)) => false,
            };
            if replace {
                *current = Some(reason.clone());
            }
            replace
        });
    }

    fn stop_heartbeats(&self) {
        if let Some(task) = self.heartbeat.lock().take() {
            task.abort();
        }
    }

    /// JoinGroup and SyncGroup until the member has an assignment in a settled generation.
    async fn rejoin_group(&self, listener: &mut impl RebalanceListener) -> Result<()> {
        // Each round is answered only when the group settles, so few are ever needed.
        let rounds = self.client.config.retry_attempts_max.max(1);
        let mut last_error = None;
        for _ in 0..rounds {
            let member_id = self.state.lock().member_id.clone();
            let joined = match self.join_group(&member_id).await {
                Ok(joined) => joined,
                Err(ClientError::Api { error, .. })
                    if error.error == ResponseError::UnknownMemberId =>
                {
                    // Forgotten by the coordinator: join as a new member.
                    self.state.lock().member_id.clear();
                    last_error = Some(error);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if joined.generation_id < 0 {
                // MEMBER_ID_REQUIRED: the coordinator gave an id to join with.
                self.state.lock().member_id = joined.member_id;
                continue;
            }
            let leader = joined.leader == joined.member_id;
            {
                let mut state = self.state.lock();
                state.member_id = joined.member_id.clone();
                state.generation_id = joined.generation_id;
                state.leader = leader;
            }
            let assignments = if leader {
                self.assign(&joined.members).await?
            } else {
                Vec::new()
            };
            match self.sync_group(&assignments).await {
                Ok(mut assignment) => {
                    assignment.sort();
                    self.state.lock().assignment = assignment.clone();
                    self.rejoin.send_replace(None);
                    self.start_heartbeats();
                    listener.partitions_assigned(self, &assignment).await;
                    return Ok(());
                }
                Err(ClientError::Api { error, .. }) if rejoin_for(&error).is_some() => {
                    if error.error == ResponseError::UnknownMemberId {
                        self.state.lock().member_id.clear();
                    }
                    last_error = Some(error);
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Api {
            context: format!(
                "group '{}' did not settle after {rounds} rounds of JoinGroup and SyncGroup",
                self.config.group_id
            ),
            error: last_error.unwrap_or(ApiError {
                error: ResponseError::RebalanceInProgress,
                message: None,
            }),
        })
    }

    /// Sends JoinGroup. A MEMBER_ID_REQUIRED answer comes back as `Ok` with generation -1 and
    /// the member id to join with.
    async fn join_group(&self, member_id: &str) -> Result<Joined> {
        let client = &self.client;
        let config = &self.config;
        let group = config.group_id.as_str();
        let subscription = bytes::Bytes::from(encode_subscription(&config.topics));
        // The coordinator answers only once every member has joined or the rebalance timed out.
        let timeout = Duration::from_millis(config.rebalance_timeout_ms) + client.request_timeout();
        client
            .on_coordinator_lane(group, Lane::Group, |conn| {
                let subscription = subscription.clone();
                async move {
                    let addr = conn.addr().to_owned();
                    let (_, response) = client
                        .call(&conn, ApiKey::JoinGroup, versions::JOIN_GROUP, timeout, |v| {
                            let mut request = JoinGroupRequest::default()
                                .with_group_id(group_id(group))
                                .with_session_timeout_ms(config.session_timeout_ms as i32)
                                .with_rebalance_timeout_ms(config.rebalance_timeout_ms as i32)
                                .with_member_id(StrBytes::from_string(member_id.to_owned()))
                                .with_protocol_type(StrBytes::from_static_str(CONSUMER_PROTOCOL_TYPE))
                                .with_protocols(vec![JoinGroupRequestProtocol::default()
                                    .with_name(StrBytes::from_static_str(config.assignor.name()))
                                    .with_metadata(subscription)]);
                            if let Some(instance) = &config.group_instance_id {
                                if v < 5 {
                                    return Err(ClientError::Unsupported {
                                        addr: addr.clone(),
                                        api: "JoinGroup with a group.instance.id".into(),
                                        ours: (5, versions::JOIN_GROUP.1),
                                        theirs: Some((versions::JOIN_GROUP.0, v)),
                                    });
                                }
                                request = request
                                    .with_group_instance_id(Some(StrBytes::from_string(instance.clone())));
                            }
                            Ok(request)
                        })
                        .await?;
                    match ApiError::from_code(response.error_code, None) {
                        Some(e) if e.error == ResponseError::MemberIdRequired => Ok(Joined {
                            generation_id: -1,
                            member_id: response.member_id.to_string(),
                            leader: String::new(),
                            members: Vec::new(),
                        }),
                        Some(error) => Err(ClientError::Api {
                            context: format!("cannot join group '{group}'"),
                            error,
                        }),
                        None => {
                            if let Some(protocol) = &response.protocol_name
                                && protocol.as_str() != config.assignor.name()
                            {
                                return Err(ClientError::Protocol {
                                    addr,
                                    reason: format!(
                                        "group '{group}' chose assignor '{protocol}', which this member did not offer"
                                    ),
                                });
                            }
                            Ok(Joined {
                                generation_id: response.generation_id,
                                member_id: response.member_id.to_string(),
                                leader: response.leader.to_string(),
                                members: response
                                    .members
                                    .into_iter()
                                    .map(|m| (m.member_id.to_string(), m.metadata))
                                    .collect(),
                            })
                        }
                    }
                }
            })
            .await
    }

    /// The leader's work: every member's partitions, encoded for SyncGroup.
    async fn assign(&self, members: &[(String, bytes::Bytes)]) -> Result<Vec<(String, Vec<u8>)>> {
        let mut subscriptions = BTreeMap::new();
        for (member, metadata) in members {
            let topics = subscribed_topics(metadata).unwrap_or_else(|| {
                // Kafka's leader would fail the whole rebalance; giving the member nothing
                // keeps the rest of the group consuming.
                tracing::warn!(group = %self.config.group_id, %member, "a member's subscription does not decode; it gets no partitions");
                Vec::new()
            });
            subscriptions.insert(member.clone(), topics);
        }
        let mut topics: Vec<&str> = subscriptions
            .values()
            .flatten()
            .map(String::as_str)
            .collect();
        topics.sort_unstable();
        topics.dedup();
        let metadata = self.client.metadata(Some(&topics), false).await?;
        let counts: BTreeMap<String, i32> = metadata
            .topics
            .iter()
            .filter(|t| t.error.is_none())
            .map(|t| (t.name.clone(), t.partitions.len() as i32))
            .collect();
        let assigned = self.config.assignor.assign(&subscriptions, &counts);
        Ok(assigned
            .into_iter()
            .map(|(member, partitions)| (member, encode_assignment(&partitions)))
            .collect())
    }

    /// Sends SyncGroup (with the assignments when leader) and returns this member's partitions.
    async fn sync_group(&self, assignments: &[(String, Vec<u8>)]) -> Result<Vec<TopicPartition>> {
        let client = &self.client;
        let config = &self.config;
        let group = config.group_id.as_str();
        let identity = self.identity();
        let identity = &identity;
        let timeout = Duration::from_millis(config.rebalance_timeout_ms) + client.request_timeout();
        client
            .on_coordinator_lane(group, Lane::Group, |conn| async move {
                let addr = conn.addr().to_owned();
                let (_, response) = client
                    .call(
                        &conn,
                        ApiKey::SyncGroup,
                        versions::SYNC_GROUP,
                        timeout,
                        |v| {
                            let mut request = SyncGroupRequest::default()
                                .with_group_id(group_id(group))
                                .with_generation_id(identity.generation_id)
                                .with_member_id(StrBytes::from_string(identity.member_id.clone()))
                                .with_assignments(
                                    assignments
                                        .iter()
                                        .map(|(member, bytes)| {
                                            SyncGroupRequestAssignment::default()
                                                .with_member_id(StrBytes::from_string(
                                                    member.clone(),
                                                ))
                                                .with_assignment(bytes::Bytes::from(bytes.clone()))
                                        })
                                        .collect(),
                                );
                            if v >= 3 {
                                request = request.with_group_instance_id(
                                    identity
                                        .group_instance_id
                                        .clone()
                                        .map(StrBytes::from_string),
                                );
                            }
                            if v >= 5 {
                                request = request
                                    .with_protocol_type(Some(StrBytes::from_static_str(
                                        CONSUMER_PROTOCOL_TYPE,
                                    )))
                                    .with_protocol_name(Some(StrBytes::from_static_str(
                                        config.assignor.name(),
                                    )));
                            }
                            Ok(request)
                        },
                    )
                    .await?;
                if let Some(error) = ApiError::from_code(response.error_code, None) {
                    return Err(ClientError::Api {
                        context: format!("cannot sync with group '{group}'"),
                        error,
                    });
                }
                let assignment = decode_assignment(&response.assignment).ok_or_else(|| {
                    ClientError::Protocol {
                        addr,
                        reason: format!("the assignment of group '{group}' does not decode"),
                    }
                })?;
                Ok(assignment
                    .into_iter()
                    .flat_map(|(topic, partitions)| {
                        partitions
                            .into_iter()
                            .map(move |p| TopicPartition::new(topic.clone(), p))
                    })
                    .collect())
            })
            .await
    }

    fn start_heartbeats(&self) {
        let task = tokio::spawn(heartbeats(
            self.client.clone(),
            self.config.group_id.clone(),
            self.identity(),
            Duration::from_millis(self.config.heartbeat_interval_ms),
            Duration::from_millis(self.config.session_timeout_ms),
            self.rejoin.clone(),
        ));
        if let Some(old) = self.heartbeat.lock().replace(task.abort_handle()) {
            old.abort();
        }
    }
}

/// Heartbeats until the coordinator says the member must rejoin, or no heartbeat was answered
/// for a session timeout (the coordinator has then removed the member).
async fn heartbeats(
    client: Arc<KafkaClient>,
    group: String,
    identity: MemberIdentity,
    interval: Duration,
    session_timeout: Duration,
    rejoin: Arc<watch::Sender<Option<Rejoin>>>,
) {
    let signal = |reason: Rejoin| {
        rejoin.send_if_modified(|current| {
            let replace = current.is_none();
            if replace {
                *current = Some(reason);
            }
            replace
        });
    };
    let mut answered = Instant::now();
    loop {
        tokio::time::sleep(interval).await;
        match heartbeat(&client, &group, &identity).await {
            Ok(()) => answered = Instant::now(),
            Err(ClientError::Api { error, .. }) if rejoin_for(&error).is_some() => {
                if let Some(reason) = rejoin_for(&error) {
                    signal(reason);
                }
                return;
            }
            Err(e) => {
                tracing::debug!(%group, error = %e, "heartbeat failed");
                if answered.elapsed() >= session_timeout {
                    signal(Rejoin::Lost(format!(
                        "no heartbeat was answered for the session timeout of {} ms (last error: {e})",
                        session_timeout.as_millis()
                    )));
                    return;
                }
            }
        }
    }
}

async fn heartbeat(client: &KafkaClient, group: &str, identity: &MemberIdentity) -> Result<()> {
    client
        .on_coordinator(group, |conn| async move {
            let (_, response) = client
                .call(
                    &conn,
                    ApiKey::Heartbeat,
                    versions::HEARTBEAT,
                    client.request_timeout(),
                    |v| {
                        let mut request = HeartbeatRequest::default()
                            .with_group_id(group_id(group))
                            .with_generation_id(identity.generation_id)
                            .with_member_id(StrBytes::from_string(identity.member_id.clone()));
                        if v >= 3 {
                            request = request.with_group_instance_id(
                                identity
                                    .group_instance_id
                                    .clone()
                                    .map(StrBytes::from_string),
                            );
                        }
                        Ok(request)
                    },
                )
                .await?;
            match ApiError::from_code(response.error_code, None) {
                Some(error) => Err(ClientError::Api {
                    context: format!("heartbeat of group '{group}'"),
                    error,
                }),
                None => Ok(()),
            }
        })
        .await
}

#[cfg(test)]
mod tests;
