//! Every advertised version of every group API, with requests that use that version's
//! fields, through the server's frame processing: each response encodes and decodes, and
//! says what it should.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable};

use super::*;
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
    config.kafka.transaction_state_log_num_partitions = 2;
    let broker = Broker::open(config)
        .await
        .unwrap_or_else(|e| panic!("open: {e}"));
    broker.create_topic(NewTopic::new("t", 2)).await.ok();
    Ctx::for_tests(broker)
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
            let ResponseKind::JoinGroup(r) = call(&ctx, v, join(v, &group, "", None)).await else {
                panic!("v{v}")
            };
            assert_eq!(r.error_code, ResponseError::MemberIdRequired.code(), "v{v}");
            member = r.member_id.as_str().to_owned();
        }
        let ResponseKind::JoinGroup(r) = call(&ctx, v, join(v, &group, &member, instance)).await
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
        let ResponseKind::JoinGroup(first) = call(&ctx, 4, join(4, &group, "", None)).await else {
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
        let ResponseKind::SyncGroup(r) = call(&ctx, v, RequestKind::SyncGroup(req.clone())).await
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
        let ResponseKind::Heartbeat(r) = call(&ctx, v, RequestKind::Heartbeat(req)).await else {
            panic!()
        };
        assert_eq!(r.error_code, 0, "Heartbeat v{v}");
    }
    for v in versions(ApiKey::DescribeGroups) {
        let req = DescribeGroupsRequest::default()
            .with_groups(vec![gid("hb"), gid("nobody")])
            .with_include_authorized_operations(v >= 3);
        let ResponseKind::DescribeGroups(r) = call(&ctx, v, RequestKind::DescribeGroups(req)).await
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
        let ResponseKind::ListGroups(r) = call(&ctx, v, RequestKind::ListGroups(req)).await else {
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
                    leave_group_request::MemberIdentity::default().with_member_id(st("stranger")),
                ])
        } else {
            LeaveGroupRequest::default()
                .with_group_id(gid(&group))
                .with_member_id(st(&id))
        };
        let ResponseKind::LeaveGroup(r) = call(&ctx, v, RequestKind::LeaveGroup(req)).await else {
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
        let req = DeleteGroupsRequest::default().with_groups_names(vec![gid(&group), gid("hb")]);
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
            let (code, node, port) = if v >= 4 {
                let c = &r.coordinators[0];
                (c.error_code, c.node_id, c.port)
            } else {
                (r.error_code, r.node_id, r.port)
            };
            assert_eq!(
                (code, node, port),
                (0, BrokerId(0), 9092),
                "v{v}: this node"
            );
        }
    }
    assert!(ctx.broker.topic_exists(crate::group::OFFSETS_TOPIC));
    assert!(ctx.broker.topic_exists(crate::txn::TRANSACTION_STATE_TOPIC));

    let member = form(&ctx, "members").await;
    for v in versions(ApiKey::OffsetCommit) {
        // A group outside group management, and a member of a managed group.
        for (group, generation, member) in [("simple", -1, ""), ("members", 1, member.as_str())] {
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
            let ResponseKind::OffsetCommit(r) = call(&ctx, v, RequestKind::OffsetCommit(req)).await
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
            let ResponseKind::OffsetFetch(r) = call(&ctx, v, RequestKind::OffsetFetch(req)).await
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
