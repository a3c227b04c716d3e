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
        KEY_TYPE_TRANSACTION => Err((
            ResponseError::CoordinatorNotAvailable,
            "transactions are not supported by Quiver",
        )),
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

/// One topic's partitions and their committed offsets (`None`: nothing committed).
type TopicOffsets = (String, Vec<(i32, Option<CommittedOffset>)>);

/// Committed offsets grouped by topic, in the order asked (or sorted, for "all").
fn by_topic(found: Vec<(String, i32, Option<CommittedOffset>)>) -> Vec<TopicOffsets> {
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
                let found = coordinator.fetch_offsets(
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
                                        let o = o.unwrap_or_else(no_offset);
                                        OffsetFetchResponsePartitions::default()
                                            .with_partition_index(p)
                                            .with_committed_offset(o.offset)
                                            .with_committed_leader_epoch(o.leader_epoch)
                                            .with_metadata(Some(s(&o.metadata)))
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
    let found = coordinator.fetch_offsets(
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
                            let o = o.unwrap_or_else(no_offset);
                            OffsetFetchResponsePartition::default()
                                .with_partition_index(p)
                                .with_committed_offset(o.offset)
                                .with_committed_leader_epoch(o.leader_epoch)
                                .with_metadata(Some(s(&o.metadata)))
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
mod tests {
    //! Every advertised version of every group API, with requests that use that version's
    //! fields, through the server's frame processing: each response encodes and decodes, and
    //! says what it should.

    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    use bytes::{Bytes, BytesMut};
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::{Decodable, Encodable};

    use super::*;
    use crate::config::Listener;
    use crate::kafka::server::{Outcome, process};
    use crate::{Broker, BrokerConfig, NewTopic};

    /// The client address every test request comes from.
    const PEER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)), 50_000);

    fn st(v: &str) -> StrBytes {
        StrBytes::from_string(v.to_owned())
    }

    fn gid(v: &str) -> GroupId {
        GroupId(st(v))
    }

    async fn ctx(dir: &std::path::Path) -> Ctx {
        let mut config = BrokerConfig {
            data_dir: dir.to_owned(),
            ..BrokerConfig::default()
        };
        config.kafka.group_initial_rebalance_delay_ms = 0;
        config.kafka.offsets_topic_num_partitions = 2;
        let broker = Broker::open(config)
            .await
            .unwrap_or_else(|e| panic!("open: {e}"));
        broker.create_topic(NewTopic::new("t", 2)).await.ok();
        Ctx::new(
            broker,
            Listener {
                name: "PLAINTEXT".into(),
                host: "localhost".into(),
                port: 9092,
            },
        )
    }

    /// Sends one request through the server's frame processing and decodes the answer.
    async fn call(ctx: &Ctx, version: i16, body: RequestKind) -> ResponseKind {
        let api = match &body {
            RequestKind::FindCoordinator(_) => ApiKey::FindCoordinator,
            RequestKind::JoinGroup(_) => ApiKey::JoinGroup,
            RequestKind::SyncGroup(_) => ApiKey::SyncGroup,
            RequestKind::Heartbeat(_) => ApiKey::Heartbeat,
            RequestKind::LeaveGroup(_) => ApiKey::LeaveGroup,
            RequestKind::OffsetCommit(_) => ApiKey::OffsetCommit,
            RequestKind::OffsetFetch(_) => ApiKey::OffsetFetch,
            RequestKind::ListGroups(_) => ApiKey::ListGroups,
            RequestKind::DescribeGroups(_) => ApiKey::DescribeGroups,
            RequestKind::DeleteGroups(_) => ApiKey::DeleteGroups,
            RequestKind::OffsetDelete(_) => ApiKey::OffsetDelete,
            other => panic!("not a group request: {other:?}"),
        };
        let mut buf = BytesMut::new();
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(7)
            .with_client_id(Some(st("sweeper")));
        if let Err(e) = header.encode(&mut buf, api.request_header_version(version)) {
            panic!("{api:?} v{version} header: {e}");
        }
        if let Err(e) = body.encode(&mut buf, version) {
            panic!("{api:?} v{version}: the test request does not encode: {e}");
        }
        let resp = match process(ctx, buf.freeze(), Some(PEER)).await {
            Outcome::Respond(resp) => resp,
            Outcome::Silent => panic!("{api:?} v{version}: no response"),
            Outcome::Close(why) => panic!("{api:?} v{version}: connection closed: {why}"),
        };
        let mut bytes = Bytes::from(resp.concat()).slice(4..);
        if let Err(e) = ResponseHeader::decode(&mut bytes, api.response_header_version(version)) {
            panic!("{api:?} v{version} response header: {e}");
        }
        ResponseKind::decode(api, &mut bytes, version)
            .unwrap_or_else(|e| panic!("{api:?} v{version}: the response does not decode: {e}"))
    }

    fn versions(api: ApiKey) -> std::ops::RangeInclusive<i16> {
        let (_, lo, hi) = VERSIONS
            .iter()
            .copied()
            .find(|(k, _, _)| *k == api)
            .unwrap_or_else(|| panic!("{api:?} is not advertised"));
        lo..=hi
    }

    fn join(version: i16, group: &str, member: &str, instance: Option<&str>) -> RequestKind {
        RequestKind::JoinGroup(
            JoinGroupRequest::default()
                .with_group_id(gid(group))
                .with_session_timeout_ms(10_000)
                .with_rebalance_timeout_ms(if version >= 1 { 10_000 } else { -1 })
                .with_member_id(st(member))
                .with_group_instance_id(instance.map(st))
                .with_protocol_type(st("consumer"))
                .with_protocols(vec![
                    join_group_request::JoinGroupRequestProtocol::default()
                        .with_name(st("range"))
                        .with_metadata(Bytes::from_static(b"\0\0\0\0\0\x01\0\x01t")),
                ])
                .with_reason((version >= 8).then(|| st("sweep"))),
        )
    }

    /// Forms a one-member stable group through JoinGroup v4 and SyncGroup v3. Returns the member id.
    async fn form(ctx: &Ctx, group: &str) -> String {
        let ResponseKind::JoinGroup(first) = call(ctx, 4, join(4, group, "", None)).await else {
            panic!("not a JoinGroup response")
        };
        assert_eq!(first.error_code, ResponseError::MemberIdRequired.code());
        let id = first.member_id.as_str().to_owned();
        let ResponseKind::JoinGroup(joined) = call(ctx, 4, join(4, group, &id, None)).await else {
            panic!("not a JoinGroup response")
        };
        assert_eq!(joined.error_code, 0);
        let ResponseKind::SyncGroup(synced) = call(
            ctx,
            3,
            RequestKind::SyncGroup(
                SyncGroupRequest::default()
                    .with_group_id(gid(group))
                    .with_generation_id(joined.generation_id)
                    .with_member_id(st(&id))
                    .with_assignments(vec![
                        sync_group_request::SyncGroupRequestAssignment::default()
                            .with_member_id(st(&id))
                            .with_assignment(Bytes::from_static(b"assigned")),
                    ]),
            ),
        )
        .await
        else {
            panic!("not a SyncGroup response")
        };
        assert_eq!(synced.error_code, 0);
        id
    }

    /// The member's client host comes from the address the server passes with the request (it
    /// was a task-local the handler reached into the server for).
    #[tokio::test]
    async fn join_group_takes_the_client_host_from_the_peer_passed_with_the_request() {
        let Ok(dir) = tempfile::tempdir() else { return };
        let ctx = ctx(dir.path()).await;
        form(&ctx, "hosts").await;
        let req = DescribeGroupsRequest::default().with_groups(vec![gid("hosts")]);
        let ResponseKind::DescribeGroups(r) = call(&ctx, 5, RequestKind::DescribeGroups(req)).await
        else {
            panic!("not a DescribeGroups response")
        };
        assert_eq!(r.groups[0].members.len(), 1);
        assert_eq!(r.groups[0].members[0].client_host.as_str(), "/10.1.2.3");
    }

    #[tokio::test]
    async fn every_version_of_join_and_sync_works() {
        let Ok(dir) = tempfile::tempdir() else { return };
        let ctx = ctx(dir.path()).await;
        for v in versions(ApiKey::JoinGroup) {
            let group = format!("join-v{v}");
            let instance = (v >= 5).then_some("static-1");
            let mut member = String::new();
            if v >= 4 && instance.is_none() {
                let ResponseKind::JoinGroup(r) = call(&ctx, v, join(v, &group, "", None)).await
                else {
                    panic!("v{v}")
                };
                assert_eq!(r.error_code, ResponseError::MemberIdRequired.code(), "v{v}");
                member = r.member_id.as_str().to_owned();
            }
            let ResponseKind::JoinGroup(r) =
                call(&ctx, v, join(v, &group, &member, instance)).await
            else {
                panic!("v{v}")
            };
            assert_eq!(r.error_code, 0, "JoinGroup v{v}");
            assert_eq!(r.generation_id, 1, "v{v}");
            assert_eq!(r.leader, r.member_id, "v{v}");
            assert_eq!(r.members.len(), 1, "v{v}");
            assert_eq!(r.protocol_name.as_ref().map(|p| p.as_str()), Some("range"));
            if v >= 5 {
                assert_eq!(
                    r.members[0].group_instance_id.as_ref().map(|i| i.as_str()),
                    instance
                );
            }
            if v >= 7 {
                assert_eq!(
                    r.protocol_type.as_ref().map(|p| p.as_str()),
                    Some("consumer")
                );
            }
        }
        for v in versions(ApiKey::SyncGroup) {
            let group = format!("sync-v{v}");
            let ResponseKind::JoinGroup(first) = call(&ctx, 4, join(4, &group, "", None)).await
            else {
                panic!()
            };
            let id = first.member_id.as_str().to_owned();
            let ResponseKind::JoinGroup(joined) = call(&ctx, 4, join(4, &group, &id, None)).await
            else {
                panic!()
            };
            let mut req = SyncGroupRequest::default()
                .with_group_id(gid(&group))
                .with_generation_id(joined.generation_id)
                .with_member_id(st(&id))
                .with_assignments(vec![
                    sync_group_request::SyncGroupRequestAssignment::default()
                        .with_member_id(st(&id))
                        .with_assignment(Bytes::from_static(b"mine")),
                ]);
            if v >= 5 {
                req = req
                    .with_protocol_type(Some(st("consumer")))
                    .with_protocol_name(Some(st("range")));
            }
            let ResponseKind::SyncGroup(r) =
                call(&ctx, v, RequestKind::SyncGroup(req.clone())).await
            else {
                panic!()
            };
            assert_eq!(r.error_code, 0, "SyncGroup v{v}");
            assert_eq!(r.assignment, Bytes::from_static(b"mine"), "v{v}");
            if v >= 5 {
                assert_eq!(r.protocol_name.as_ref().map(|p| p.as_str()), Some("range"));
                let wrong = req.with_protocol_name(Some(st("roundrobin")));
                let ResponseKind::SyncGroup(r) = call(&ctx, v, RequestKind::SyncGroup(wrong)).await
                else {
                    panic!()
                };
                assert_eq!(
                    r.error_code,
                    ResponseError::InconsistentGroupProtocol.code()
                );
            }
        }
    }

    #[tokio::test]
    async fn every_version_of_heartbeat_leave_describe_list_delete_works() {
        let Ok(dir) = tempfile::tempdir() else { return };
        let ctx = ctx(dir.path()).await;
        let id = form(&ctx, "hb").await;
        for v in versions(ApiKey::Heartbeat) {
            let req = HeartbeatRequest::default()
                .with_group_id(gid("hb"))
                .with_generation_id(1)
                .with_member_id(st(&id));
            let ResponseKind::Heartbeat(r) = call(&ctx, v, RequestKind::Heartbeat(req)).await
            else {
                panic!()
            };
            assert_eq!(r.error_code, 0, "Heartbeat v{v}");
        }
        for v in versions(ApiKey::DescribeGroups) {
            let req = DescribeGroupsRequest::default()
                .with_groups(vec![gid("hb"), gid("nobody")])
                .with_include_authorized_operations(v >= 3);
            let ResponseKind::DescribeGroups(r) =
                call(&ctx, v, RequestKind::DescribeGroups(req)).await
            else {
                panic!()
            };
            assert_eq!(r.groups[0].group_state.as_str(), "Stable", "v{v}");
            assert_eq!(r.groups[0].protocol_data.as_str(), "range");
            assert_eq!(r.groups[0].members.len(), 1);
            assert_eq!(r.groups[0].members[0].client_id.as_str(), "sweeper");
            assert_eq!(
                r.groups[0].members[0].member_assignment,
                Bytes::from_static(b"assigned")
            );
            assert_eq!(r.groups[1].group_state.as_str(), "Dead");
        }
        for v in versions(ApiKey::ListGroups) {
            let mut req = ListGroupsRequest::default();
            if v >= 4 {
                req = req.with_states_filter(vec![st("Stable")]);
            }
            if v >= 5 {
                req = req.with_types_filter(vec![st("classic")]);
            }
            let ResponseKind::ListGroups(r) = call(&ctx, v, RequestKind::ListGroups(req)).await
            else {
                panic!()
            };
            assert_eq!(r.error_code, 0);
            let hb = r.groups.iter().find(|g| g.group_id.0.as_str() == "hb");
            assert_eq!(
                hb.map(|g| g.protocol_type.as_str()),
                Some("consumer"),
                "v{v}"
            );
            if v >= 4 {
                assert_eq!(hb.map(|g| g.group_state.as_str()), Some("Stable"));
            }
        }
        for v in versions(ApiKey::LeaveGroup) {
            let group = format!("leave-v{v}");
            let id = form(&ctx, &group).await;
            let req = if v >= 3 {
                LeaveGroupRequest::default()
                    .with_group_id(gid(&group))
                    .with_members(vec![
                        leave_group_request::MemberIdentity::default()
                            .with_member_id(st(&id))
                            .with_reason((v >= 5).then(|| st("done"))),
                        leave_group_request::MemberIdentity::default()
                            .with_member_id(st("stranger")),
                    ])
            } else {
                LeaveGroupRequest::default()
                    .with_group_id(gid(&group))
                    .with_member_id(st(&id))
            };
            let ResponseKind::LeaveGroup(r) = call(&ctx, v, RequestKind::LeaveGroup(req)).await
            else {
                panic!()
            };
            assert_eq!(r.error_code, 0, "LeaveGroup v{v}");
            if v >= 3 {
                let codes: Vec<i16> = r.members.iter().map(|m| m.error_code).collect();
                assert_eq!(
                    codes,
                    vec![0, ResponseError::UnknownMemberId.code()],
                    "v{v}"
                );
            }
        }
        for v in versions(ApiKey::DeleteGroups) {
            let group = format!("leave-v{v}");
            let req =
                DeleteGroupsRequest::default().with_groups_names(vec![gid(&group), gid("hb")]);
            let ResponseKind::DeleteGroups(r) = call(&ctx, v, RequestKind::DeleteGroups(req)).await
            else {
                panic!()
            };
            let codes: Vec<i16> = r.results.iter().map(|g| g.error_code).collect();
            assert_eq!(codes, vec![0, ResponseError::NonEmptyGroup.code()], "v{v}");
        }
    }

    #[tokio::test]
    async fn every_version_of_offset_apis_and_find_coordinator_works() {
        let Ok(dir) = tempfile::tempdir() else { return };
        let ctx = ctx(dir.path()).await;
        for v in versions(ApiKey::FindCoordinator) {
            let req = if v >= 4 {
                FindCoordinatorRequest::default().with_coordinator_keys(vec![st("g1"), st("g2")])
            } else {
                FindCoordinatorRequest::default().with_key(st("g1"))
            };
            let ResponseKind::FindCoordinator(r) =
                call(&ctx, v, RequestKind::FindCoordinator(req)).await
            else {
                panic!()
            };
            if v >= 4 {
                assert_eq!(r.coordinators.len(), 2);
                assert!(
                    r.coordinators
                        .iter()
                        .all(|c| c.error_code == 0 && c.port == 9092)
                );
                assert_eq!(r.coordinators[1].key.as_str(), "g2");
            } else {
                assert_eq!((r.error_code, r.port), (0, 9092), "FindCoordinator v{v}");
                assert_eq!(r.host.as_str(), "localhost");
            }
            if v >= 1 {
                let txn = if v >= 4 {
                    FindCoordinatorRequest::default().with_coordinator_keys(vec![st("tx")])
                } else {
                    FindCoordinatorRequest::default().with_key(st("tx"))
                }
                .with_key_type(1);
                let ResponseKind::FindCoordinator(r) =
                    call(&ctx, v, RequestKind::FindCoordinator(txn)).await
                else {
                    panic!()
                };
                let code = if v >= 4 {
                    r.coordinators[0].error_code
                } else {
                    r.error_code
                };
                assert_eq!(code, ResponseError::CoordinatorNotAvailable.code(), "v{v}");
            }
        }
        assert!(ctx.broker.topic_exists(crate::group::OFFSETS_TOPIC));

        let member = form(&ctx, "members").await;
        for v in versions(ApiKey::OffsetCommit) {
            // A group outside group management, and a member of a managed group.
            for (group, generation, member) in [("simple", -1, ""), ("members", 1, member.as_str())]
            {
                let req = OffsetCommitRequest::default()
                    .with_group_id(gid(group))
                    .with_generation_id_or_member_epoch(generation)
                    .with_member_id(st(member))
                    .with_retention_time_ms(if v <= 4 { 60_000 } else { -1 })
                    .with_topics(vec![
                        offset_commit_request::OffsetCommitRequestTopic::default()
                            .with_name(TopicName(st("t")))
                            .with_partitions(vec![
                                offset_commit_request::OffsetCommitRequestPartition::default()
                                    .with_partition_index(0)
                                    .with_committed_offset(i64::from(v) * 10)
                                    .with_committed_leader_epoch(if v >= 6 { 2 } else { -1 })
                                    .with_committed_metadata(Some(st("meta"))),
                                offset_commit_request::OffsetCommitRequestPartition::default()
                                    .with_partition_index(9),
                            ]),
                    ]);
                let ResponseKind::OffsetCommit(r) =
                    call(&ctx, v, RequestKind::OffsetCommit(req)).await
                else {
                    panic!()
                };
                let codes: Vec<i16> = r.topics[0]
                    .partitions
                    .iter()
                    .map(|p| p.error_code)
                    .collect();
                assert_eq!(
                    codes,
                    vec![0, ResponseError::UnknownTopicOrPartition.code()],
                    "OffsetCommit v{v} {group}"
                );
            }
        }
        let last = i64::from(*versions(ApiKey::OffsetCommit).end()) * 10;
        for v in versions(ApiKey::OffsetFetch) {
            if v >= 8 {
                let req = OffsetFetchRequest::default()
                    .with_topics(Some(vec![]))
                    .with_require_stable(true)
                    .with_groups(vec![
                        offset_fetch_request::OffsetFetchRequestGroup::default()
                            .with_group_id(gid("simple"))
                            .with_topics(None),
                        offset_fetch_request::OffsetFetchRequestGroup::default()
                            .with_group_id(gid("members"))
                            .with_topics(Some(vec![
                                offset_fetch_request::OffsetFetchRequestTopics::default()
                                    .with_name(TopicName(st("t")))
                                    .with_partition_indexes(vec![0, 1]),
                            ])),
                    ]);
                let ResponseKind::OffsetFetch(r) =
                    call(&ctx, v, RequestKind::OffsetFetch(req)).await
                else {
                    panic!()
                };
                assert_eq!(r.groups.len(), 2);
                let simple = &r.groups[0].topics[0].partitions;
                assert_eq!(simple.len(), 1, "all partitions with an offset");
                assert_eq!(simple[0].committed_offset, last);
                assert_eq!(simple[0].committed_leader_epoch, 2);
                let members = &r.groups[1].topics[0].partitions;
                assert_eq!(members[0].committed_offset, last);
                assert_eq!(members[1].committed_offset, -1);
                continue;
            }
            let topics = if v >= 2 {
                None
            } else {
                Some(vec![
                    offset_fetch_request::OffsetFetchRequestTopic::default()
                        .with_name(TopicName(st("t")))
                        .with_partition_indexes(vec![0, 1]),
                ])
            };
            let req = OffsetFetchRequest::default()
                .with_group_id(gid("members"))
                .with_topics(topics)
                .with_require_stable(v >= 7);
            let ResponseKind::OffsetFetch(r) = call(&ctx, v, RequestKind::OffsetFetch(req)).await
            else {
                panic!()
            };
            assert_eq!(r.error_code, 0);
            let parts = &r.topics[0].partitions;
            assert_eq!(parts[0].committed_offset, last, "OffsetFetch v{v}");
            assert_eq!(parts[0].metadata.as_ref().map(|m| m.as_str()), Some("meta"));
            if v >= 5 {
                assert_eq!(parts[0].committed_leader_epoch, 2);
            }
            if v < 2 {
                assert_eq!(parts[1].committed_offset, -1);
            }
        }
        for v in versions(ApiKey::OffsetDelete) {
            let req = |group: &str| {
                OffsetDeleteRequest::default()
                    .with_group_id(gid(group))
                    .with_topics(vec![
                        offset_delete_request::OffsetDeleteRequestTopic::default()
                            .with_name(TopicName(st("t")))
                            .with_partitions(vec![
                                offset_delete_request::OffsetDeleteRequestPartition::default()
                                    .with_partition_index(0),
                                offset_delete_request::OffsetDeleteRequestPartition::default()
                                    .with_partition_index(7),
                            ]),
                    ])
            };
            let ResponseKind::OffsetDelete(r) =
                call(&ctx, v, RequestKind::OffsetDelete(req("members"))).await
            else {
                panic!()
            };
            let codes: Vec<i16> = r.topics[0]
                .partitions
                .iter()
                .map(|p| p.error_code)
                .collect();
            assert_eq!(
                codes,
                vec![
                    ResponseError::GroupSubscribedToTopic.code(),
                    ResponseError::UnknownTopicOrPartition.code()
                ]
            );
            let ResponseKind::OffsetDelete(r) =
                call(&ctx, v, RequestKind::OffsetDelete(req("simple"))).await
            else {
                panic!()
            };
            assert_eq!(r.error_code, 0);
            assert_eq!(r.topics[0].partitions[0].error_code, 0);
            let ResponseKind::OffsetDelete(r) =
                call(&ctx, v, RequestKind::OffsetDelete(req("simple"))).await
            else {
                panic!()
            };
            assert_eq!(
                r.error_code,
                ResponseError::GroupIdNotFound.code(),
                "the group went with its last offset"
            );
        }
    }
}
