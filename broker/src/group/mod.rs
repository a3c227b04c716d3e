//! The group coordinator: Kafka's classic consumer group protocol (JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup, rebalances, session timeouts, static membership) and committed
//! offsets.
//!
//! Committed offsets and group metadata are records in the internal compacted topic
//! `__consumer_offsets`, in Kafka's own key and value layouts ([`records`]), so they survive
//! restarts: [`GroupCoordinator`] reads that topic back when the broker opens. A group always
//! writes to one partition of it, chosen like Kafka does (`partition_for`), so its records
//! keep their order.
//!
//! Layout: [`state`] is the per-group state machine (pure: it takes the time as an argument and
//! hands back waiters to answer), [`member`] a member's metadata, [`coordinator`] owns the
//! groups and the timers and runs the protocol, [`messages`] are its API's requests and
//! answers, `store` writes and reads back `__consumer_offsets` (the coordinator's only handle
//! on the broker's storage), `timers` says which group is due when, [`records`] the on-disk
//! layouts, and [`consumer_protocol`] reads the subscriptions of `consumer` groups.

pub mod consumer_protocol;
pub mod coordinator;
#[cfg(test)]
mod durability_tests;
pub mod member;
pub mod messages;
pub mod records;
pub mod state;
mod store;
#[cfg(test)]
mod store_tests;
#[cfg(test)]
mod tests;
mod timers;

pub use coordinator::GroupCoordinator;
pub use messages::{
    CommittedOffset, GroupDescription, GroupListing, JoinRequest, JoinResponse, JoinedMember,
    LeaveResponse, LeavingMember, MemberDescription, OffsetCommit, OffsetCommitEntry, SyncRequest,
    SyncResponse,
};
pub(crate) use store::{OffsetsStore, OffsetsTopic};

use crate::config::KafkaConfig;

/// The internal topic that holds committed offsets and group metadata.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Most groups one broker keeps (each holds members and offsets in memory).
pub const MAX_GROUPS: usize = 10_000;
/// Most members (and members that were asked to rejoin with an id) one group admits;
/// Kafka's `group.max.size`.
pub const MAX_MEMBERS_PER_GROUP: usize = 1_000;
/// Most committed offsets one group keeps.
pub const MAX_OFFSETS_PER_GROUP: usize = 100_000;
/// Most committed offsets the broker keeps over all groups.
pub const MAX_OFFSETS_TOTAL: usize = 10_000_000;
/// Most bytes of protocol metadata one member may send in a JoinGroup (all protocols).
pub const MAX_MEMBER_METADATA_BYTES: usize = 1 << 20;
/// Most protocols one member may offer.
pub const MAX_PROTOCOLS_PER_MEMBER: usize = 64;

/// Settings of the coordinator: Kafka's `group.*` and `offsets.*` server keys, plus the
/// internal timeouts Kafka does not expose (with Kafka's values).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupConfig {
    /// `group.min.session.timeout.ms`.
    pub min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`.
    pub max_session_timeout_ms: i32,
    /// `group.initial.rebalance.delay.ms`: how long a new group waits for more members.
    pub initial_rebalance_delay_ms: i32,
    /// `offsets.topic.num.partitions`: partitions of `__consumer_offsets` when it is created.
    pub offsets_topic_partitions: i32,
    /// `offsets.retention.minutes`, in ms: offsets of a group that has been empty this long expire.
    pub offsets_retention_ms: i64,
    /// `offsets.retention.check.interval.ms`: how often expired offsets are looked for.
    pub offsets_retention_check_interval_ms: u64,
    /// `offset.metadata.max.bytes`: longest metadata string of a committed offset.
    pub offset_metadata_max_bytes: usize,
    /// How long a new member may wait in its first JoinGroup (Kafka's 5 minutes), so members
    /// whose client went away during a long rebalance do not pile up.
    pub new_member_join_timeout_ms: i32,
}

impl GroupConfig {
    /// The coordinator settings of a broker's Kafka config.
    pub fn from_kafka(kafka: &KafkaConfig) -> GroupConfig {
        GroupConfig {
            min_session_timeout_ms: kafka.group_min_session_timeout_ms,
            max_session_timeout_ms: kafka.group_max_session_timeout_ms,
            initial_rebalance_delay_ms: kafka.group_initial_rebalance_delay_ms,
            offsets_topic_partitions: kafka.offsets_topic_num_partitions,
            offsets_retention_ms: kafka.offsets_retention_minutes.saturating_mul(60_000),
            offsets_retention_check_interval_ms: 600_000,
            offset_metadata_max_bytes: 4096,
            new_member_join_timeout_ms: 300_000,
        }
    }
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig::from_kafka(&KafkaConfig::default())
    }
}

/// A group's place in the rebalance protocol (Kafka's names, as shown by DescribeGroups).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupState {
    /// No members; the group may still hold committed offsets.
    Empty,
    /// A rebalance started: members must rejoin.
    PreparingRebalance,
    /// Everyone rejoined; waiting for the leader's assignment.
    CompletingRebalance,
    /// Members have their assignments and heartbeat.
    Stable,
    /// Removed (deleted, or its offsets expired); it takes no more requests.
    Dead,
}

impl GroupState {
    /// The name Kafka gives the state.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

impl std::fmt::Display for GroupState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Java's `String.hashCode` (over UTF-16 code units), so a group lands on the same partition
/// of `__consumer_offsets` as it would in Kafka.
fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// The partition of `__consumer_offsets` that holds a group's records (Kafka's
/// `abs(groupId.hashCode) % partitions`).
pub fn partition_for(group_id: &str, partitions: i32) -> i32 {
    if partitions <= 0 {
        return 0;
    }
    // Kafka's `Utils.abs`: the absolute value, with i32::MIN mapped to 0 (not a bit mask).
    java_string_hash(group_id).checked_abs().unwrap_or(0) % partitions
}
