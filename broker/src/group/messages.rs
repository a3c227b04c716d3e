//! The requests and answers of the [`GroupCoordinator`](super::GroupCoordinator)'s API, in the
//! terms the coordinator needs them (the protocol handlers translate each Kafka version to
//! and from these). Error fields are Kafka error codes (0 = none).

use bytes::Bytes;
use kafka_protocol::error::ResponseError;

use super::GroupState;

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
