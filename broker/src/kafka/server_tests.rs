//! Every advertised version of every core API, with a realistic request, through the server's
//! frame processing: each answers with a response that encodes.

use super::*;
use crate::record::{Record, records_to_batch};
use crate::{BrokerConfig, NewTopic};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

fn topic() -> TopicName {
    TopicName(StrBytes::from_static_str("sweep"))
}

fn kafka_batch() -> Bytes {
    let batch =
        records_to_batch(&[Record::new(5, Some(b"k"), Some(b"v")).with_header("h", Some(b"x"))]);
    let header = crate::log::BatchHeader {
        base_offset: 0,
        last_offset_delta: 0,
        record_count: 1,
        first_timestamp: 5,
        max_timestamp: 5,
        producer: crate::log::ProducerInfo::NONE,
    };
    let mut out = Vec::new();
    let _ = crate::kafka::records::encode_batch(&mut out, &header, &batch);
    Bytes::from(out)
}

/// A realistic request of each core API.
fn request(api: ApiKey) -> Option<RequestKind> {
    use kafka_protocol::messages::{
        fetch_request as f, list_offsets_request as l, metadata_request as m,
        offset_for_leader_epoch_request as e, produce_request as p,
    };
    Some(match api {
        ApiKey::ApiVersions => RequestKind::ApiVersions(ApiVersionsRequest::default()),
        ApiKey::Metadata => {
            RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
                m::MetadataRequestTopic::default().with_name(Some(topic())),
            ])))
        }
        ApiKey::Produce => RequestKind::Produce(
            ProduceRequest::default()
                .with_acks(1)
                .with_timeout_ms(1000)
                .with_topic_data(vec![
                    p::TopicProduceData::default()
                        .with_name(topic())
                        .with_partition_data(vec![
                            p::PartitionProduceData::default()
                                .with_index(0)
                                .with_records(Some(kafka_batch())),
                        ]),
                ]),
        ),
        ApiKey::Fetch => RequestKind::Fetch(
            FetchRequest::default()
                .with_max_wait_ms(0)
                .with_max_bytes(1 << 20)
                .with_topics(vec![
                    f::FetchTopic::default()
                        .with_topic(topic())
                        .with_partitions(vec![
                            f::FetchPartition::default()
                                .with_partition(0)
                                .with_fetch_offset(0)
                                .with_partition_max_bytes(1 << 20),
                        ]),
                ]),
        ),
        ApiKey::ListOffsets => {
            RequestKind::ListOffsets(ListOffsetsRequest::default().with_topics(vec![
            l::ListOffsetsTopic::default().with_name(topic()).with_partitions(vec![
                l::ListOffsetsPartition::default().with_partition_index(0).with_timestamp(-1),
                l::ListOffsetsPartition::default().with_partition_index(0).with_timestamp(0),
            ]),
        ]))
        }
        ApiKey::OffsetForLeaderEpoch => RequestKind::OffsetForLeaderEpoch(
            OffsetForLeaderEpochRequest::default().with_topics(vec![
                e::OffsetForLeaderTopic::default()
                    .with_topic(topic())
                    .with_partitions(vec![
                        e::OffsetForLeaderPartition::default().with_partition(0),
                    ]),
            ]),
        ),
        ApiKey::InitProducerId => RequestKind::InitProducerId(InitProducerIdRequest::default()),
        ApiKey::CreateTopics => {
            use create_topics_request as c;
            let config = c::CreatableTopicConfig::default()
                .with_name(StrBytes::from_static_str("retention.ms"))
                .with_value(Some(StrBytes::from_static_str("1000")));
            let new = |name: &'static str| {
                c::CreatableTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str(name)))
                    .with_num_partitions(1)
                    .with_replication_factor(1)
                    .with_configs(vec![config.clone()])
            };
            RequestKind::CreateTopics(
                CreateTopicsRequest::default()
                    .with_topics(vec![new("sweep-created"), new("sweep")]),
            )
        }
        // v6 names topics in another field, so it sends an empty list here.
        ApiKey::DeleteTopics => RequestKind::DeleteTopics(
            DeleteTopicsRequest::default()
                .with_topic_names(vec![TopicName(StrBytes::from_static_str("sweep-created"))]),
        ),
        ApiKey::CreatePartitions => RequestKind::CreatePartitions(
            CreatePartitionsRequest::default()
                .with_topics(vec![
                    create_partitions_request::CreatePartitionsTopic::default()
                        .with_name(topic())
                        .with_count(2)
                        .with_assignments(None),
                ])
                .with_validate_only(true),
        ),
        ApiKey::DeleteRecords => {
            use delete_records_request as d;
            RequestKind::DeleteRecords(DeleteRecordsRequest::default().with_topics(vec![
                d::DeleteRecordsTopic::default()
                    .with_name(topic())
                    .with_partitions(vec![d::DeleteRecordsPartition::default()
                        .with_partition_index(0)
                        .with_offset(0)]),
            ]))
        }
        ApiKey::DescribeConfigs => {
            use describe_configs_request as d;
            let resource = |resource_type: i8, name: &'static str| {
                d::DescribeConfigsResource::default()
                    .with_resource_type(resource_type)
                    .with_resource_name(StrBytes::from_static_str(name))
                    .with_configuration_keys(None)
            };
            RequestKind::DescribeConfigs(
                DescribeConfigsRequest::default()
                    .with_resources(vec![resource(2, "sweep"), resource(4, "0")])
                    .with_include_synonyms(true),
            )
        }
        ApiKey::AlterConfigs => {
            use alter_configs_request as a;
            RequestKind::AlterConfigs(
                AlterConfigsRequest::default()
                    .with_resources(vec![
                        a::AlterConfigsResource::default()
                            .with_resource_type(2)
                            .with_resource_name(StrBytes::from_static_str("sweep"))
                            .with_configs(vec![
                                a::AlterableConfig::default()
                                    .with_name(StrBytes::from_static_str("retention.ms"))
                                    .with_value(Some(StrBytes::from_static_str("1000"))),
                            ]),
                    ])
                    .with_validate_only(true),
            )
        }
        ApiKey::IncrementalAlterConfigs => {
            use incremental_alter_configs_request as i;
            RequestKind::IncrementalAlterConfigs(
                IncrementalAlterConfigsRequest::default()
                    .with_resources(vec![
                        i::AlterConfigsResource::default()
                            .with_resource_type(2)
                            .with_resource_name(StrBytes::from_static_str("sweep"))
                            .with_configs(vec![
                                i::AlterableConfig::default()
                                    .with_name(StrBytes::from_static_str("cleanup.policy"))
                                    .with_config_operation(2)
                                    .with_value(Some(StrBytes::from_static_str("compact"))),
                            ]),
                    ])
                    .with_validate_only(true),
            )
        }
        ApiKey::DescribeCluster => RequestKind::DescribeCluster(DescribeClusterRequest::default()),
        ApiKey::DescribeLogDirs => {
            RequestKind::DescribeLogDirs(DescribeLogDirsRequest::default().with_topics(None))
        }
        // Group APIs. Fields only some versions have are left out (the encoder refuses
        // them in the others); handlers::groups' tests sweep each version with them.
        ApiKey::FindCoordinator => {
            RequestKind::FindCoordinator(FindCoordinatorRequest::default().with_key_type(0))
        }
        ApiKey::JoinGroup => RequestKind::JoinGroup(
            JoinGroupRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("sweep-group")))
                .with_session_timeout_ms(10_000)
                .with_rebalance_timeout_ms(10_000)
                // A member of a group the coordinator no longer has: answered at once.
                .with_member_id(StrBytes::from_static_str("sweep-gone-member"))
                .with_protocol_type(StrBytes::from_static_str("consumer"))
                .with_protocols(vec![
                    join_group_request::JoinGroupRequestProtocol::default()
                        .with_name(StrBytes::from_static_str("range"))
                        .with_metadata(Bytes::from_static(&[0, 0, 0, 0, 0, 0])),
                ]),
        ),
        ApiKey::SyncGroup => RequestKind::SyncGroup(
            SyncGroupRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("sweep-group")))
                .with_generation_id(1)
                .with_member_id(StrBytes::from_static_str("sweep-gone-member")),
        ),
        ApiKey::Heartbeat => RequestKind::Heartbeat(
            HeartbeatRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("sweep-group")))
                .with_generation_id(1)
                .with_member_id(StrBytes::from_static_str("sweep-gone-member")),
        ),
        ApiKey::LeaveGroup => RequestKind::LeaveGroup(
            LeaveGroupRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("sweep-group"))),
        ),
        ApiKey::OffsetCommit => {
            use offset_commit_request as o;
            RequestKind::OffsetCommit(
                OffsetCommitRequest::default()
                    .with_group_id(GroupId(StrBytes::from_static_str("sweep-group")))
                    .with_generation_id_or_member_epoch(-1)
                    .with_topics(vec![
                        o::OffsetCommitRequestTopic::default()
                            .with_name(topic())
                            .with_partitions(vec![
                                o::OffsetCommitRequestPartition::default()
                                    .with_partition_index(0)
                                    .with_committed_offset(1)
                                    .with_committed_metadata(Some(StrBytes::from_static_str(
                                        "sweep",
                                    ))),
                            ]),
                    ]),
            )
        }
        ApiKey::OffsetFetch => RequestKind::OffsetFetch(OffsetFetchRequest::default()),
        ApiKey::ListGroups => RequestKind::ListGroups(ListGroupsRequest::default()),
        ApiKey::DescribeGroups => RequestKind::DescribeGroups(
            DescribeGroupsRequest::default()
                .with_groups(vec![GroupId(StrBytes::from_static_str("sweep-group"))]),
        ),
        ApiKey::DeleteGroups => RequestKind::DeleteGroups(
            DeleteGroupsRequest::default()
                .with_groups_names(vec![GroupId(StrBytes::from_static_str("sweep-group"))]),
        ),
        ApiKey::OffsetDelete => {
            use offset_delete_request as o;
            RequestKind::OffsetDelete(
                OffsetDeleteRequest::default()
                    .with_group_id(GroupId(StrBytes::from_static_str("sweep-group")))
                    .with_topics(vec![
                        o::OffsetDeleteRequestTopic::default()
                            .with_name(topic())
                            .with_partitions(vec![
                                o::OffsetDeleteRequestPartition::default().with_partition_index(0),
                            ]),
                    ]),
            )
        }
        _ => return None,
    })
}

fn frame(api: ApiKey, version: i16, body: &RequestKind) -> Option<Bytes> {
    let mut buf = BytesMut::new();
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(9)
        .with_client_id(Some(StrBytes::from_static_str("sweep")));
    header
        .encode(&mut buf, api.request_header_version(version))
        .ok()?;
    body.encode(&mut buf, version).ok()?;
    Some(buf.freeze())
}

#[tokio::test]
async fn every_advertised_version_answers() {
    let Ok(dir) = tempfile::tempdir() else { return };
    let broker = crate::Broker::open(BrokerConfig {
        data_dir: dir.path().to_owned(),
        ..BrokerConfig::default()
    })
    .await;
    let Ok(broker) = broker else { panic!("open") };
    broker.create_topic(NewTopic::new("sweep", 1)).await.ok();
    let ctx = Ctx::for_tests(broker);
    let mut checked = 0;
    for (api, lo, hi) in handlers::supported() {
        let Some(req) = request(api) else { continue };
        for version in lo..=hi {
            let Some(bytes) = frame(api, version, &req) else {
                panic!("{api:?} v{version}: the test request does not encode")
            };
            match process(&ctx, bytes, None).await {
                Outcome::Respond(chunks) => {
                    let resp: Vec<u8> = chunks.concat();
                    let len = i32::from_be_bytes([resp[0], resp[1], resp[2], resp[3]]) as usize;
                    assert_eq!(resp.len() - 4, len, "{api:?} v{version}: frame length");
                    assert_eq!(
                        &resp[4..8],
                        &9i32.to_be_bytes(),
                        "{api:?} v{version}: correlation id"
                    );
                    // A client's decoder reads the whole frame as this version's response.
                    let mut body = Bytes::from(resp).slice(4..);
                    let header =
                        ResponseHeader::decode(&mut body, api.response_header_version(version));
                    assert!(header.is_ok(), "{api:?} v{version}: header {header:?}");
                    let decoded = ResponseKind::decode(api, &mut body, version);
                    assert!(decoded.is_ok(), "{api:?} v{version}: body {decoded:?}");
                    assert!(
                        body.is_empty(),
                        "{api:?} v{version}: {} bytes left over",
                        body.len()
                    );
                    if let Ok(ResponseKind::Produce(p)) = decoded {
                        let answer = &p.responses[0].partition_responses[0];
                        assert_eq!(answer.error_code, 0, "Produce v{version}: {answer:?}");
                    }
                    checked += 1;
                }
                Outcome::Silent => panic!("{api:?} v{version}: no response"),
                Outcome::Close(why) => panic!("{api:?} v{version}: connection closed: {why}"),
            }
        }
    }
    assert!(checked > 40, "{checked} versions checked");
}
