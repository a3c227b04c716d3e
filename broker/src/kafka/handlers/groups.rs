//! Consumer group APIs (the classic protocol): FindCoordinator, JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup, OffsetCommit, OffsetFetch, ListGroups, DescribeGroups, DeleteGroups
//! and OffsetDelete. Each handler turns the request into a call on the broker's
//! [`GroupCoordinator`] and builds the response for the
//! request's version.
//!
//! The `kafka-protocol` encoder refuses a response that sets a field its version lacks, and
//! the connection would close; so fields that only some versions have (protocol type and
//! name, instance ids, member lists, per-group errors, ...) are set only for those versions.

use std::net::SocketAddr;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_groups_request::DeleteGroupsRequest;
use kafka_protocol::messages::delete_groups_response::{
    DeletableGroupResult, DeleteGroupsResponse,
};
use kafka_protocol::messages::describe_groups_request::DescribeGroupsRequest;
use kafka_protocol::messages::describe_groups_response::{
    DescribeGroupsResponse, DescribedGroup, DescribedGroupMember,
};
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::find_coordinator_response::{Coordinator, FindCoordinatorResponse};
use kafka_protocol::messages::heartbeat_request::HeartbeatRequest;
use kafka_protocol::messages::heartbeat_response::HeartbeatResponse;
use kafka_protocol::messages::join_group_request::JoinGroupRequest;
use kafka_protocol::messages::join_group_response::{JoinGroupResponse, JoinGroupResponseMember};
use kafka_protocol::messages::leave_group_request::LeaveGroupRequest;
use kafka_protocol::messages::leave_group_response::{LeaveGroupResponse, MemberResponse};
use kafka_protocol::messages::list_groups_request::ListGroupsRequest;
use kafka_protocol::messages::list_groups_response::{ListGroupsResponse, ListedGroup};
use kafka_protocol::messages::offset_commit_request::OffsetCommitRequest;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponse, OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_request::OffsetDeleteRequest;
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponse, OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequest;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponse, OffsetFetchResponseGroup, OffsetFetchResponsePartition,
    OffsetFetchResponsePartitions, OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequest;
use kafka_protocol::messages::sync_group_response::SyncGroupResponse;
use kafka_protocol::messages::{
    ApiKey, BrokerId, GroupId, RequestHeader, RequestKind, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::Ctx;
use crate::group::{
    CommittedOffset, GroupCoordinator, JoinRequest, LeavingMember, OffsetCommit, OffsetCommitEntry,
    SyncRequest,
};

/// Group APIs handled, with version ranges.
pub const VERSIONS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
];

/// FindCoordinator key types.
const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

/// DescribeGroups' authorized operations of a group with no authorizer: READ, DELETE, DESCRIBE.
const GROUP_OPERATIONS: i32 = (1 << 3) | (1 << 6) | (1 << 8);

/// Handles a group request, or gives it back if it is not one. `peer` is the client's address
/// (`None` when the request did not come over a socket).
pub async fn dispatch(
    ctx: &Ctx,
    header: &RequestHeader,
    request: RequestKind,
    peer: Option<SocketAddr>,
) -> Result<ResponseKind, RequestKind> {
    let v = header.request_api_version;
    Ok(match request {
        RequestKind::FindCoordinator(req) => {
            ResponseKind::FindCoordinator(find_coordinator(ctx, v, req).await)
        }
        RequestKind::JoinGroup(req) => {
            ResponseKind::JoinGroup(join_group(ctx, header, req, peer).await)
        }
        RequestKind::SyncGroup(req) => ResponseKind::SyncGroup(sync_group(ctx, v, req).await),
        RequestKind::Heartbeat(req) => ResponseKind::Heartbeat(heartbeat(ctx, req)),
        RequestKind::LeaveGroup(req) => ResponseKind::LeaveGroup(leave_group(ctx, v, req)),
        RequestKind::OffsetCommit(req) => {
            ResponseKind::OffsetCommit(offset_commit(ctx, v, req).await)
        }
        RequestKind::OffsetFetch(req) => ResponseKind::OffsetFetch(offset_fetch(ctx, v, req)),
        RequestKind::ListGroups(req) => ResponseKind::ListGroups(list_groups(ctx, v, req)),
        RequestKind::DescribeGroups(req) => {
            ResponseKind::DescribeGroups(describe_groups(ctx, v, req))
        }
        RequestKind::DeleteGroups(req) => ResponseKind::DeleteGroups(delete_groups(ctx, req).await),
        RequestKind::OffsetDelete(req) => ResponseKind::OffsetDelete(offset_delete(ctx, req).await),
        other => return Err(other),
    })
}

fn groups(ctx: &Ctx) -> &GroupCoordinator {
    ctx.broker.groups()
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_owned())
}

fn opt(v: Option<&StrBytes>) -> Option<String> {
    v.map(|s| s.as_str().to_owned())
}

// ---------------------------------------------------------------------------------------------
// FindCoordinator

async fn find_coordinator(
    ctx: &Ctx,
    version: i16,
    req: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    let keys: Vec<StrBytes> = if version >= 4 {
        req.coordinator_keys
    } else {
        vec![req.key]
    };
    let outcome: Result<(), (ResponseError, &str)> = match req.key_type {
        KEY_TYPE_GROUP => groups(ctx)
            .ensure_ready()
            .await
            .map_err(|e| (e, "the group coordinator is not available")),
        KEY_TYPE_TRANSACTION => ctx
            .broker
            .transactions()
            .ensure_ready()
            .await
            .map_err(|e| (e, "the transaction coordinator is not available")),
        _ => Err((
            ResponseError::InvalidRequest,
            "unknown coordinator key type",
        )),
    };
    let (node, host, port) = (
        BrokerId(ctx.node_id),
        s(&ctx.advertised.host),
        i32::from(ctx.advertised.port),
    );
    if version >= 4 {
        let coordinators = keys
            .into_iter()
            .map(|key| {
                let c = Coordinator::default().with_key(key);
                match outcome {
                    Ok(()) => c.with_node_id(node).with_host(host.clone()).with_port(port),
                    Err((e, why)) => c
                        .with_node_id(BrokerId(-1))
                        .with_port(-1)
                        .with_error_code(e.code())
                        .with_error_message(Some(StrBytes::from_static_str(why))),
                }
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let resp = FindCoordinatorResponse::default();
    match outcome {
        Ok(()) => resp.with_node_id(node).with_host(host).with_port(port),
        Err((e, why)) => resp
            .with_error_code(e.code())
            .with_error_message((version >= 1).then(|| StrBytes::from_static_str(why)))
            .with_node_id(BrokerId(-1))
            .with_port(-1),
    }
}

// ---------------------------------------------------------------------------------------------
// JoinGroup, SyncGroup, Heartbeat, LeaveGroup

async fn join_group(
    ctx: &Ctx,
    header: &RequestHeader,
    req: JoinGroupRequest,
    peer: Option<SocketAddr>,
) -> JoinGroupResponse {
    let version = header.request_api_version;
    // v0 has no rebalance timeout: the session timeout serves as both.
    let rebalance_timeout_ms = if version == 0 || req.rebalance_timeout_ms < 0 {
        req.session_timeout_ms
    } else {
        req.rebalance_timeout_ms
    };
    let join = JoinRequest {
        group_id: req.group_id.0.as_str().to_owned(),
        member_id: req.member_id.as_str().to_owned(),
        group_instance_id: if version >= 5 {
            opt(req.group_instance_id.as_ref())
        } else {
            None
        },
        client_id: opt(header.client_id.as_ref()).unwrap_or_default(),
        // As Kafka reports it: "/" and the client's IP address.
        client_host: peer.map(|p| format!("/{}", p.ip())).unwrap_or_default(),
        session_timeout_ms: req.session_timeout_ms,
        rebalance_timeout_ms,
        protocol_type: req.protocol_type.as_str().to_owned(),
        protocols: req
            .protocols
            .into_iter()
            .map(|p| (p.name.as_str().to_owned(), p.metadata))
            .collect(),
        require_known_member_id: version >= 4,
        supports_skip_assignment: version >= 9,
        reason: opt(req.reason.as_ref()),
    };
    let r = groups(ctx).join_group(join).await;
    let members = r
        .members
        .into_iter()
        .map(|m| {
            JoinGroupResponseMember::default()
                .with_member_id(s(&m.member_id))
                .with_group_instance_id(if version >= 5 {
                    m.group_instance_id.as_deref().map(s)
                } else {
                    None
                })
                .with_metadata(m.metadata)
        })
        .collect();
    JoinGroupResponse::default()
        .with_error_code(r.error)
        .with_generation_id(r.generation_id)
        .with_protocol_type(if version >= 7 {
            r.protocol_type.as_deref().map(s)
        } else {
            None
        })
        // Before v7 the protocol name is not nullable.
        .with_protocol_name(match (r.protocol_name.as_deref(), version >= 7) {
            (Some(p), _) => Some(s(p)),
            (None, true) => None,
            (None, false) => Some(StrBytes::default()),
        })
        .with_leader(s(&r.leader))
        .with_skip_assignment(version >= 9 && r.skip_assignment)
        .with_member_id(s(&r.member_id))
        .with_members(members)
}

async fn sync_group(ctx: &Ctx, version: i16, req: SyncGroupRequest) -> SyncGroupResponse {
    let sync = SyncRequest {
        group_id: req.group_id.0.as_str().to_owned(),
        generation_id: req.generation_id,
        member_id: req.member_id.as_str().to_owned(),
        group_instance_id: if version >= 3 {
            opt(req.group_instance_id.as_ref())
        } else {
            None
        },
        protocol_type: if version >= 5 {
            opt(req.protocol_type.as_ref())
        } else {
            None
        },
        protocol_name: if version >= 5 {
            opt(req.protocol_name.as_ref())
        } else {
            None
        },
        assignments: req
            .assignments
            .into_iter()
            .map(|a| (a.member_id.as_str().to_owned(), a.assignment))
            .collect(),
    };
    let r = groups(ctx).sync_group(sync).await;
    let mut resp = SyncGroupResponse::default()
        .with_error_code(r.error)
        .with_assignment(r.assignment);
    if version >= 5 {
        resp = resp
            .with_protocol_type(r.protocol_type.as_deref().map(s))
            .with_protocol_name(r.protocol_name.as_deref().map(s));
    }
    resp
}

fn heartbeat(ctx: &Ctx, req: HeartbeatRequest) -> HeartbeatResponse {
    let code = groups(ctx).heartbeat(
        req.group_id.0.as_str(),
        req.member_id.as_str(),
        req.group_instance_id.as_ref().map(|s| s.as_str()),
        req.generation_id,
    );
    HeartbeatResponse::default().with_error_code(code)
}

fn leave_group(ctx: &Ctx, version: i16, req: LeaveGroupRequest) -> LeaveGroupResponse {
    let leaving: Vec<LeavingMember> = if version >= 3 {
        req.members
            .iter()
            .map(|m| LeavingMember {
                member_id: m.member_id.as_str().to_owned(),
                group_instance_id: opt(m.group_instance_id.as_ref()),
                reason: opt(m.reason.as_ref()),
            })
            .collect()
    } else {
        vec![LeavingMember {
            member_id: req.member_id.as_str().to_owned(),
            ..LeavingMember::default()
        }]
    };
    let r = groups(ctx).leave_group(req.group_id.0.as_str(), &leaving);
    if version < 3 {
        // One member: its error is the response's.
        let code = if r.error != 0 {
            r.error
        } else {
            r.members.iter().copied().find(|&c| c != 0).unwrap_or(0)
        };
        return LeaveGroupResponse::default().with_error_code(code);
    }
    let members = if r.error != 0 {
        Vec::new()
    } else {
        leaving
            .iter()
            .zip(&r.members)
            .map(|(m, &code)| {
                MemberResponse::default()
                    .with_member_id(s(&m.member_id))
                    .with_group_instance_id(m.group_instance_id.as_deref().map(s))
                    .with_error_code(code)
            })
            .collect()
    };
    LeaveGroupResponse::default()
        .with_error_code(r.error)
        .with_members(members)
}

// ---------------------------------------------------------------------------------------------
// Offsets

/// Why a partition of an OffsetCommit or OffsetDelete is refused before the coordinator sees it.
fn partition_error(ctx: &Ctx, topic: &str, partition: i32) -> Option<ResponseError> {
    match ctx.broker.partition_count(topic) {
        Ok(n) if (0..n).contains(&partition) => None,
        _ => Some(ResponseError::UnknownTopicOrPartition),
    }
}

async fn offset_commit(ctx: &Ctx, version: i16, req: OffsetCommitRequest) -> OffsetCommitResponse {
    let coordinator = groups(ctx);
    let max_metadata = coordinator.config().offset_metadata_max_bytes;
    // Each partition's answer: decided here, or the coordinator's (by index into `entries`).
    enum Answer {
        Now(i16),
        Coordinator(usize),
    }
    let mut entries = Vec::new();
    let mut answers: Vec<Vec<(i32, Answer)>> = Vec::with_capacity(req.topics.len());
    for t in &req.topics {
        let topic = t.name.0.as_str();
        let mut row = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let metadata = p.committed_metadata.as_ref().map_or("", |m| m.as_str());
            let answer = if let Some(e) = partition_error(ctx, topic, p.partition_index) {
                Answer::Now(e.code())
            } else if metadata.len() > max_metadata {
                Answer::Now(ResponseError::OffsetMetadataTooLarge.code())
            } else {
                entries.push(OffsetCommitEntry {
                    topic: topic.to_owned(),
                    partition: p.partition_index,
                    offset: p.committed_offset,
                    leader_epoch: if version >= 6 {
                        p.committed_leader_epoch
                    } else {
                        -1
                    },
                    metadata: metadata.to_owned(),
                });
                Answer::Coordinator(entries.len() - 1)
            };
            row.push((p.partition_index, answer));
        }
        answers.push(row);
    }
    let codes = coordinator
        .commit_offsets(OffsetCommit {
            group_id: req.group_id.0.as_str().to_owned(),
            generation_id: req.generation_id_or_member_epoch,
            member_id: req.member_id.as_str().to_owned(),
            group_instance_id: if version >= 7 {
                opt(req.group_instance_id.as_ref())
            } else {
                None
            },
            retention_ms: (version <= 4 && req.retention_time_ms >= 0)
                .then_some(req.retention_time_ms),
            offsets: entries,
        })
        .await;
    let topics = req
        .topics
        .iter()
        .zip(answers)
        .map(|(t, row)| {
            OffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(
                    row.into_iter()
                        .map(|(partition, answer)| {
                            let code = match answer {
                                Answer::Now(c) => c,
                                Answer::Coordinator(i) => codes.get(i).copied().unwrap_or(0),
                            };
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(partition)
                                .with_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

/// A partition's committed offset (`None`: nothing committed) or why it is not answered.
type Fetched = Result<Option<CommittedOffset>, ResponseError>;

/// One topic's partitions and their committed offsets.
type TopicOffsets = (String, Vec<(i32, Fetched)>);

/// What OffsetFetch says for a partition: its offset (or "none") and error code. A refused
/// partition (UNSTABLE_OFFSET_COMMIT) shows no offset, as in Kafka.
fn offset_or_error(found: Fetched) -> (CommittedOffset, i16) {
    match found {
        Ok(o) => (o.unwrap_or_else(no_offset), 0),
        Err(e) => (no_offset(), e.code()),
    }
}

/// Committed offsets grouped by topic, in the order asked (or sorted, for "all").
fn by_topic(found: Vec<(String, i32, Fetched)>) -> Vec<TopicOffsets> {
    let mut out: Vec<TopicOffsets> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (topic, partition, offset) in found {
        match index.get(&topic) {
            Some(&i) => out[i].1.push((partition, offset)),
            None => {
                index.insert(topic.clone(), out.len());
                out.push((topic, vec![(partition, offset)]));
            }
        }
    }
    out
}

fn offset_fetch(ctx: &Ctx, version: i16, req: OffsetFetchRequest) -> OffsetFetchResponse {
    let coordinator = groups(ctx);
    if version >= 8 {
        let groups = req
            .groups
            .iter()
            .map(|g| {
                let asked: Option<Vec<(String, i32)>> = g.topics.as_ref().map(|topics| {
                    topics
                        .iter()
                        .flat_map(|t| {
                            t.partition_indexes
                                .iter()
                                .map(|&p| (t.name.0.as_str().to_owned(), p))
                        })
                        .collect()
                });
                let found = coordinator.fetch_offsets_checked(
                    g.group_id.0.as_str(),
                    asked.as_deref(),
                    req.require_stable,
                );
                let topics = by_topic(found)
                    .into_iter()
                    .map(|(topic, parts)| {
                        OffsetFetchResponseTopics::default()
                            .with_name(TopicName(s(&topic)))
                            .with_partitions(
                                parts
                                    .into_iter()
                                    .map(|(p, o)| {
                                        let (o, code) = offset_or_error(o);
                                        OffsetFetchResponsePartitions::default()
                                            .with_partition_index(p)
                                            .with_committed_offset(o.offset)
                                            .with_committed_leader_epoch(o.leader_epoch)
                                            .with_metadata(Some(s(&o.metadata)))
                                            .with_error_code(code)
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                OffsetFetchResponseGroup::default()
                    .with_group_id(g.group_id.clone())
                    .with_topics(topics)
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(groups);
    }
    // v1 asks for a list of topics; v2+ may send null for "every partition with an offset".
    let asked: Option<Vec<(String, i32)>> = req.topics.as_ref().map(|topics| {
        topics
            .iter()
            .flat_map(|t| {
                t.partition_indexes
                    .iter()
                    .map(|&p| (t.name.0.as_str().to_owned(), p))
            })
            .collect()
    });
    let found = coordinator.fetch_offsets_checked(
        req.group_id.0.as_str(),
        asked.as_deref(),
        version >= 7 && req.require_stable,
    );
    let topics = by_topic(found)
        .into_iter()
        .map(|(topic, parts)| {
            OffsetFetchResponseTopic::default()
                .with_name(TopicName(s(&topic)))
                .with_partitions(
                    parts
                        .into_iter()
                        .map(|(p, o)| {
                            let (o, code) = offset_or_error(o);
                            OffsetFetchResponsePartition::default()
                                .with_partition_index(p)
                                .with_committed_offset(o.offset)
                                .with_committed_leader_epoch(o.leader_epoch)
                                .with_metadata(Some(s(&o.metadata)))
                                .with_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetFetchResponse::default().with_topics(topics)
}

/// What OffsetFetch says for a partition with no committed offset.
fn no_offset() -> CommittedOffset {
    CommittedOffset {
        offset: -1,
        leader_epoch: -1,
        metadata: String::new(),
        commit_timestamp_ms: -1,
        expire_timestamp_ms: None,
    }
}

async fn offset_delete(ctx: &Ctx, req: OffsetDeleteRequest) -> OffsetDeleteResponse {
    // Unknown partitions are answered here; the rest go to the coordinator.
    let mut asked = Vec::new();
    let mut early: Vec<Vec<Option<i16>>> = Vec::with_capacity(req.topics.len());
    for t in &req.topics {
        let topic = t.name.0.as_str();
        early.push(
            t.partitions
                .iter()
                .map(|p| match partition_error(ctx, topic, p.partition_index) {
                    Some(e) => Some(e.code()),
                    None => {
                        asked.push((topic.to_owned(), p.partition_index));
                        None
                    }
                })
                .collect(),
        );
    }
    let codes = match groups(ctx)
        .delete_offsets(req.group_id.0.as_str(), &asked)
        .await
    {
        Ok(codes) => codes,
        Err(code) => return OffsetDeleteResponse::default().with_error_code(code),
    };
    let mut next = codes.into_iter();
    let topics = req
        .topics
        .iter()
        .zip(early)
        .map(|(t, row)| {
            OffsetDeleteResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .zip(row)
                        .map(|(p, code)| {
                            let code = code.unwrap_or_else(|| next.next().unwrap_or(0));
                            OffsetDeleteResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetDeleteResponse::default().with_topics(topics)
}

// ---------------------------------------------------------------------------------------------
// ListGroups, DescribeGroups, DeleteGroups

fn list_groups(ctx: &Ctx, version: i16, req: ListGroupsRequest) -> ListGroupsResponse {
    let states: Vec<String> = if version >= 4 {
        req.states_filter
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect()
    } else {
        Vec::new()
    };
    let types: Vec<String> = if version >= 5 {
        req.types_filter
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect()
    } else {
        Vec::new()
    };
    let listed = groups(ctx)
        .list_groups(&states, &types)
        .into_iter()
        .map(|g| {
            let mut l = ListedGroup::default()
                .with_group_id(GroupId(s(&g.group_id)))
                .with_protocol_type(s(&g.protocol_type));
            if version >= 4 {
                l = l.with_group_state(StrBytes::from_static_str(g.state.as_str()));
            }
            if version >= 5 {
                l = l.with_group_type(StrBytes::from_static_str("classic"));
            }
            l
        })
        .collect();
    ListGroupsResponse::default().with_groups(listed)
}

fn describe_groups(ctx: &Ctx, version: i16, req: DescribeGroupsRequest) -> DescribeGroupsResponse {
    let described = req
        .groups
        .iter()
        .map(|id| {
            let d = groups(ctx).describe_group(id.0.as_str());
            let members = d
                .members
                .into_iter()
                .map(|m| {
                    DescribedGroupMember::default()
                        .with_member_id(s(&m.member_id))
                        .with_group_instance_id(if version >= 4 {
                            m.group_instance_id.as_deref().map(s)
                        } else {
                            None
                        })
                        .with_client_id(s(&m.client_id))
                        .with_client_host(s(&m.client_host))
                        .with_member_metadata(m.metadata)
                        .with_member_assignment(m.assignment)
                })
                .collect();
            let mut g = DescribedGroup::default()
                .with_error_code(d.error)
                .with_group_id(id.clone())
                .with_group_state(StrBytes::from_static_str(d.state.as_str()))
                .with_protocol_type(s(&d.protocol_type))
                .with_protocol_data(s(&d.protocol))
                .with_members(members);
            if version >= 3 && req.include_authorized_operations {
                g = g.with_authorized_operations(GROUP_OPERATIONS);
            }
            g
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(described)
}

async fn delete_groups(ctx: &Ctx, req: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let ids: Vec<String> = req
        .groups_names
        .iter()
        .map(|g| g.0.as_str().to_owned())
        .collect();
    let codes = groups(ctx).delete_groups(&ids).await;
    let results = req
        .groups_names
        .into_iter()
        .zip(codes)
        .map(|(id, code)| {
            DeletableGroupResult::default()
                .with_group_id(id)
                .with_error_code(code)
        })
        .collect();
    DeleteGroupsResponse::default().with_results(results)
}

#[cfg(test)]
#[path = "groups_tests.rs"]
mod tests;
