//! Every admin handler against a broker on a temporary directory. Each call also encodes the
//! response at the version asked, so a field set where the version lacks it fails here.

use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_configs_request::{
    AlterConfigsRequest, AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::alter_configs_response::AlterConfigsResponse;
use kafka_protocol::messages::create_partitions_request::{
    CreatePartitionsAssignment, CreatePartitionsRequest, CreatePartitionsTopic,
};
use kafka_protocol::messages::create_partitions_response::CreatePartitionsResponse;
use kafka_protocol::messages::create_topics_request::{
    CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig, CreateTopicsRequest,
};
use kafka_protocol::messages::create_topics_response::CreateTopicsResponse;
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsRequest, DeleteRecordsTopic,
};
use kafka_protocol::messages::delete_records_response::DeleteRecordsResponse;
use kafka_protocol::messages::delete_topics_request::{DeleteTopicState, DeleteTopicsRequest};
use kafka_protocol::messages::delete_topics_response::DeleteTopicsResponse;
use kafka_protocol::messages::describe_cluster_request::DescribeClusterRequest;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterResponse;
use kafka_protocol::messages::describe_configs_request::{
    DescribeConfigsRequest, DescribeConfigsResource,
};
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResponse,
};
use kafka_protocol::messages::describe_log_dirs_request::DescribeLogDirsRequest;
use kafka_protocol::messages::describe_log_dirs_response::DescribeLogDirsResponse;
use kafka_protocol::messages::describe_producers_request::{
    DescribeProducersRequest, TopicRequest as ProducersTopicRequest,
};
use kafka_protocol::messages::describe_producers_response::DescribeProducersResponse;
use kafka_protocol::messages::incremental_alter_configs_request::{
    self as inc, IncrementalAlterConfigsRequest,
};
use kafka_protocol::messages::incremental_alter_configs_response::IncrementalAlterConfigsResponse;
use kafka_protocol::messages::{
    ApiKey, BrokerId, RequestHeader, RequestKind, ResponseKind, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};

use super::{VERSIONS, dispatch};
use crate::broker::{Broker, ConfigChange, NewTopic};
use crate::config::BrokerConfig;
use crate::kafka::handlers::Ctx;
use crate::kafka::server::{Outcome, process};
use crate::record::Record;

const NONE: i16 = 0;

fn s(x: &str) -> StrBytes {
    StrBytes::from_string(x.to_owned())
}

fn name(x: &str) -> TopicName {
    TopicName(s(x))
}

fn code(e: ResponseError) -> i16 {
    e.code()
}

async fn setup(configure: impl FnOnce(&mut BrokerConfig)) -> (tempfile::TempDir, Ctx) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let mut config = BrokerConfig {
        data_dir: dir.path().to_owned(),
        ..BrokerConfig::default()
    };
    configure(&mut config);
    let broker = Broker::open(config)
        .await
        .unwrap_or_else(|e| panic!("open: {e}"));
    let ctx = Ctx::for_tests(broker);
    (dir, ctx)
}

async fn call(ctx: &Ctx, api: ApiKey, version: i16, req: RequestKind) -> ResponseKind {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version);
    let Ok(resp) = dispatch(ctx, &header, req).await else {
        panic!("{api:?} is not dispatched as an admin request")
    };
    let mut buf = BytesMut::new();
    if let Err(e) = resp.encode(&mut buf, version) {
        panic!("{api:?} v{version} response does not encode: {e}\n{resp:?}");
    }
    resp
}

macro_rules! api {
    ($fn:ident, $kind:ident, $req:ty, $resp:ty) => {
        async fn $fn(ctx: &Ctx, version: i16, req: $req) -> $resp {
            match call(ctx, ApiKey::$kind, version, RequestKind::$kind(req)).await {
                ResponseKind::$kind(r) => r,
                other => panic!("unexpected response {other:?}"),
            }
        }
    };
}

api!(
    create_topics,
    CreateTopics,
    CreateTopicsRequest,
    CreateTopicsResponse
);
api!(
    delete_topics,
    DeleteTopics,
    DeleteTopicsRequest,
    DeleteTopicsResponse
);
api!(
    create_partitions,
    CreatePartitions,
    CreatePartitionsRequest,
    CreatePartitionsResponse
);
api!(
    delete_records,
    DeleteRecords,
    DeleteRecordsRequest,
    DeleteRecordsResponse
);
api!(
    describe_configs,
    DescribeConfigs,
    DescribeConfigsRequest,
    DescribeConfigsResponse
);
api!(
    alter_configs,
    AlterConfigs,
    AlterConfigsRequest,
    AlterConfigsResponse
);
api!(
    incremental_alter_configs,
    IncrementalAlterConfigs,
    IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse
);
api!(
    describe_cluster,
    DescribeCluster,
    DescribeClusterRequest,
    DescribeClusterResponse
);
api!(
    describe_log_dirs,
    DescribeLogDirs,
    DescribeLogDirsRequest,
    DescribeLogDirsResponse
);

api!(
    describe_producers,
    DescribeProducers,
    DescribeProducersRequest,
    DescribeProducersResponse
);

fn creatable(topic: &str, partitions: i32, replication: i16) -> CreatableTopic {
    CreatableTopic::default()
        .with_name(name(topic))
        .with_num_partitions(partitions)
        .with_replication_factor(replication)
}

fn config(key: &str, value: &str) -> CreatableTopicConfig {
    CreatableTopicConfig::default()
        .with_name(s(key))
        .with_value(Some(s(value)))
}

fn create_request(topics: Vec<CreatableTopic>) -> CreateTopicsRequest {
    CreateTopicsRequest::default().with_topics(topics)
}

async fn make_topic(ctx: &Ctx, topic: &str, partitions: i32) {
    if let Err(e) = ctx
        .broker
        .create_topic(NewTopic::new(topic, partitions))
        .await
    {
        panic!("create {topic}: {e}");
    }
}

fn text(m: &Option<StrBytes>) -> String {
    m.as_deref().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn create_topics_uses_defaults_and_reports_configs() {
    let (_dir, ctx) = setup(|c| c.num_partitions = 3).await;
    let req = create_request(vec![
        creatable("orders", -1, -1).with_configs(vec![config("retention.ms", "1000")]),
    ]);
    let resp = create_topics(&ctx, 7, req).await;
    let t = &resp.topics[0];
    assert_eq!(t.error_code, NONE, "{:?}", t.error_message);
    assert_eq!(t.error_message, None);
    assert_eq!(t.num_partitions, 3);
    assert_eq!(t.replication_factor, 1);
    let d = ctx
        .broker
        .describe_topic("orders")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.partitions.len(), 3);
    assert_eq!(t.topic_id, super::super::metadata::uuid_of(&d.id));
    assert!(!t.topic_id.is_nil());
    let configs = t.configs.clone().unwrap_or_default();
    let find = |key: &str| {
        configs.iter().find(|c| &*c.name == key).map(|c| {
            (
                c.value.as_deref().unwrap_or_default().to_owned(),
                c.config_source,
            )
        })
    };
    assert_eq!(find("retention.ms"), Some(("1000".to_owned(), 1)));
    assert_eq!(find("segment.bytes"), Some(("1073741824".to_owned(), 5)));
    assert_eq!(configs.len(), crate::config::TOPIC_CONFIG_KEYS.len());

    // Versions before 5 carry no partitions or configs; before 7 no id.
    let resp = create_topics(&ctx, 4, create_request(vec![creatable("old", 2, 1)])).await;
    assert_eq!(resp.topics[0].error_code, NONE);
    assert_eq!(resp.topics[0].num_partitions, -1);
    assert_eq!(ctx.broker.partition_count("old").ok(), Some(2));
    let resp = create_topics(&ctx, 6, create_request(vec![creatable("six", 1, 1)])).await;
    assert!(resp.topics[0].topic_id.is_nil());
    assert_eq!(resp.topics[0].num_partitions, 1);
}

#[tokio::test]
async fn create_topics_refuses_what_kafka_refuses() {
    let (_dir, ctx) = setup(|_| {}).await;
    make_topic(&ctx, "taken", 1).await;
    let on = |partition: i32, brokers: &[i32]| {
        CreatableReplicaAssignment::default()
            .with_partition_index(partition)
            .with_broker_ids(brokers.iter().map(|b| BrokerId(*b)).collect())
    };
    let null_config = CreatableTopicConfig::default()
        .with_name(s("retention.ms"))
        .with_value(None);
    let req = create_request(vec![
        creatable("replicated", 1, 3),
        creatable("zero-rf", 1, 0),
        creatable("bad-config", 1, 1).with_configs(vec![config("retention.msx", "1")]),
        creatable("bad-value", 1, 1).with_configs(vec![config("segment.bytes", "abc")]),
        creatable("null-value", 1, 1).with_configs(vec![null_config]),
        creatable("taken", 1, 1),
        creatable("bad name!", 1, 1),
        creatable("no-partitions", 0, 1),
        creatable("elsewhere", -1, -1).with_assignments(vec![on(0, &[5])]),
        creatable("two-replicas", -1, -1).with_assignments(vec![on(0, &[0, 5])]),
        creatable("gap", -1, -1).with_assignments(vec![on(0, &[0]), on(2, &[0])]),
        creatable("both", 2, -1).with_assignments(vec![on(0, &[0])]),
        creatable("twice", 1, 1),
        creatable("twice", 1, 1),
        creatable("assigned", -1, -1).with_assignments(vec![on(1, &[0]), on(0, &[0])]),
    ]);
    let resp = create_topics(&ctx, 5, req).await;
    let got: Vec<(String, i16, String)> = resp
        .topics
        .iter()
        .map(|t| (t.name.0.to_string(), t.error_code, text(&t.error_message)))
        .collect();
    let expect = |topic: &str, error: Option<ResponseError>, needle: &str| {
        let Some((_, c, m)) = got.iter().find(|(n, _, _)| n == topic) else {
            panic!("no result for {topic}")
        };
        assert_eq!(*c, error.map_or(NONE, code), "{topic}: {m}");
        assert!(m.contains(needle), "{topic}: {m:?} lacks {needle:?}");
    };
    expect(
        "replicated",
        Some(ResponseError::InvalidReplicationFactor),
        "single-node",
    );
    expect(
        "zero-rf",
        Some(ResponseError::InvalidReplicationFactor),
        "at least 1",
    );
    expect(
        "bad-config",
        Some(ResponseError::InvalidConfig),
        "retention.msx",
    );
    expect(
        "bad-value",
        Some(ResponseError::InvalidConfig),
        "segment.bytes",
    );
    expect(
        "null-value",
        Some(ResponseError::InvalidConfig),
        "retention.ms",
    );
    expect("taken", Some(ResponseError::TopicAlreadyExists), "taken");
    expect(
        "bad name!",
        Some(ResponseError::InvalidTopicException),
        "not allowed",
    );
    expect(
        "no-partitions",
        Some(ResponseError::InvalidPartitions),
        "at least 1",
    );
    expect(
        "elsewhere",
        Some(ResponseError::InvalidReplicaAssignment),
        "single-node",
    );
    expect(
        "two-replicas",
        Some(ResponseError::InvalidReplicaAssignment),
        "[0, 5]",
    );
    expect(
        "gap",
        Some(ResponseError::InvalidReplicaAssignment),
        "0 to 1",
    );
    expect("both", Some(ResponseError::InvalidRequest), "-1");
    expect(
        "twice",
        Some(ResponseError::InvalidRequest),
        "more than once",
    );
    expect("assigned", None, "");
    assert_eq!(ctx.broker.partition_count("assigned").ok(), Some(2));
    assert_eq!(
        ctx.broker.list_topics(),
        vec!["assigned".to_owned(), "taken".to_owned()]
    );
    // Error results leave the optional fields at their defaults.
    let failed = &resp.topics[0];
    assert_eq!((failed.num_partitions, failed.replication_factor), (-1, -1));
}

#[tokio::test]
async fn create_topics_validate_only_changes_nothing() {
    let (_dir, ctx) = setup(|_| {}).await;
    make_topic(&ctx, "a.b", 1).await;
    let req = create_request(vec![
        creatable("planned", 4, 1).with_configs(vec![config("cleanup.policy", "compact")]),
        creatable("a_b", 1, 1),
        creatable("bad", 1, 1).with_configs(vec![config("cleanup.policy", "shred")]),
    ])
    .with_validate_only(true);
    let resp = create_topics(&ctx, 7, req).await;
    let planned = &resp.topics[0];
    assert_eq!(planned.error_code, NONE);
    assert_eq!(planned.num_partitions, 4);
    assert!(planned.topic_id.is_nil());
    let policy = planned
        .configs
        .iter()
        .flatten()
        .find(|c| &*c.name == "cleanup.policy")
        .map(|c| (c.value.clone(), c.config_source));
    assert_eq!(policy, Some((Some(s("compact")), 1)));
    assert_eq!(
        resp.topics[1].error_code,
        code(ResponseError::InvalidTopicException)
    );
    assert!(text(&resp.topics[1].error_message).contains("collides"));
    assert_eq!(
        resp.topics[2].error_code,
        code(ResponseError::InvalidConfig)
    );
    assert_eq!(ctx.broker.list_topics(), vec!["a.b".to_owned()]);
}

#[tokio::test]
async fn delete_topics_by_name_and_by_id() {
    let (_dir, ctx) = setup(|_| {}).await;
    for t in ["one", "two", "three"] {
        make_topic(&ctx, t, 1).await;
    }
    let req = DeleteTopicsRequest::default().with_topic_names(vec![name("one"), name("nope")]);
    let resp = delete_topics(&ctx, 5, req).await;
    assert_eq!(resp.responses[0].error_code, NONE);
    assert_eq!(
        resp.responses[1].error_code,
        code(ResponseError::UnknownTopicOrPartition)
    );
    assert!(text(&resp.responses[1].error_message).contains("nope"));

    let id = ctx
        .broker
        .describe_topic("two")
        .map(|d| super::super::metadata::uuid_of(&d.id))
        .unwrap_or_else(|e| panic!("{e}"));
    let unknown = uuid::Uuid::from_u128(42);
    let req = DeleteTopicsRequest::default().with_topics(vec![
        DeleteTopicState::default().with_topic_id(id),
        DeleteTopicState::default().with_topic_id(unknown),
        DeleteTopicState::default().with_name(Some(name("three"))),
    ]);
    let resp = delete_topics(&ctx, 6, req).await;
    let r = &resp.responses;
    assert_eq!(
        (r[0].error_code, r[0].name.clone()),
        (NONE, Some(name("two")))
    );
    assert_eq!(r[0].topic_id, id);
    assert_eq!(r[1].error_code, code(ResponseError::UnknownTopicId));
    assert_eq!((r[1].name.clone(), r[1].topic_id), (None, unknown));
    assert_eq!(r[2].error_code, NONE);
    assert!(!r[2].topic_id.is_nil());
    assert!(ctx.broker.list_topics().is_empty());

    // v1 has no error message; the code alone answers.
    let req = DeleteTopicsRequest::default().with_topic_names(vec![name("one")]);
    let resp = delete_topics(&ctx, 1, req).await;
    assert_eq!(
        (
            resp.responses[0].error_code,
            resp.responses[0].error_message.clone()
        ),
        (code(ResponseError::UnknownTopicOrPartition), None)
    );
}

#[tokio::test]
async fn create_partitions_only_increases() {
    let (_dir, ctx) = setup(|_| {}).await;
    make_topic(&ctx, "grow", 2).await;
    let topic = |t: &str, count: i32| {
        CreatePartitionsTopic::default()
            .with_name(name(t))
            .with_count(count)
            .with_assignments(None)
    };
    let assign = |ids: &[i32]| {
        CreatePartitionsAssignment::default()
            .with_broker_ids(ids.iter().map(|i| BrokerId(*i)).collect())
    };
    let req = CreatePartitionsRequest::default()
        .with_topics(vec![topic("grow", 5)])
        .with_validate_only(true);
    let resp = create_partitions(&ctx, 3, req).await;
    assert_eq!(resp.results[0].error_code, NONE);
    assert_eq!(ctx.broker.partition_count("grow").ok(), Some(2));

    let req = CreatePartitionsRequest::default().with_topics(vec![
        topic("grow", 4).with_assignments(Some(vec![assign(&[0]), assign(&[0])])),
    ]);
    let resp = create_partitions(&ctx, 0, req).await;
    assert_eq!(
        resp.results[0].error_code, NONE,
        "{:?}",
        resp.results[0].error_message
    );
    assert_eq!(ctx.broker.partition_count("grow").ok(), Some(4));

    make_topic(&ctx, "elsewhere", 1).await;
    let req = CreatePartitionsRequest::default().with_topics(vec![
        topic("grow", 4),
        topic("nope", 4),
        topic("elsewhere", 3).with_assignments(Some(vec![assign(&[0]), assign(&[1])])),
        topic("elsewhere", 2),
    ]);
    let resp = create_partitions(&ctx, 2, req).await;
    let codes: Vec<i16> = resp.results.iter().map(|r| r.error_code).collect();
    assert_eq!(
        codes,
        vec![
            code(ResponseError::InvalidPartitions),
            code(ResponseError::UnknownTopicOrPartition),
            code(ResponseError::InvalidRequest),
            code(ResponseError::InvalidRequest),
        ]
    );
    assert!(text(&resp.results[0].error_message).contains("already has 4"));

    let req = CreatePartitionsRequest::default().with_topics(vec![
        topic("elsewhere", 3).with_assignments(Some(vec![assign(&[0]), assign(&[1])])),
        topic("grow", 3),
    ]);
    let resp = create_partitions(&ctx, 1, req).await;
    assert_eq!(
        resp.results[0].error_code,
        code(ResponseError::InvalidReplicaAssignment)
    );
    assert_eq!(
        resp.results[1].error_code,
        code(ResponseError::InvalidPartitions)
    );
    assert!(text(&resp.results[1].error_message).contains("not be an increase"));
    assert_eq!(ctx.broker.partition_count("elsewhere").ok(), Some(1));
}

#[tokio::test]
async fn delete_records_moves_the_low_watermark() {
    let (_dir, ctx) = setup(|_| {}).await;
    make_topic(&ctx, "events", 2).await;
    let log = ctx
        .broker
        .log("events", 0)
        .unwrap_or_else(|e| panic!("{e}"));
    for i in 0..5 {
        let batch = crate::record::records_to_batch(&[Record::new(i, Some(b"k"), Some(b"v"))]);
        if let Err(e) = log
            .append(&batch, crate::log::ProducerInfo::NONE, crate::log::Ack::All)
            .await
        {
            panic!("append: {e}");
        }
    }
    let part = |p: i32, offset: i64| {
        DeleteRecordsPartition::default()
            .with_partition_index(p)
            .with_offset(offset)
    };
    let req = DeleteRecordsRequest::default().with_topics(vec![
        DeleteRecordsTopic::default()
            .with_name(name("events"))
            .with_partitions(vec![part(0, 2), part(1, 7), part(9, 0)]),
        DeleteRecordsTopic::default()
            .with_name(name("nope"))
            .with_partitions(vec![part(0, 0)]),
    ]);
    let resp = delete_records(&ctx, 2, req).await;
    let got: Vec<(i32, i64, i16)> = resp
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .map(|p| (p.partition_index, p.low_watermark, p.error_code))
        .collect();
    assert_eq!(
        got,
        vec![
            (0, 2, NONE),
            (1, -1, code(ResponseError::OffsetOutOfRange)),
            (9, -1, code(ResponseError::UnknownTopicOrPartition)),
            (0, -1, code(ResponseError::UnknownTopicOrPartition)),
        ]
    );
    assert_eq!(log.offsets().log_start_offset, 2);

    let req = DeleteRecordsRequest::default().with_topics(vec![
        DeleteRecordsTopic::default()
            .with_name(name("events"))
            .with_partitions(vec![part(0, -1), part(1, 0)]),
    ]);
    let resp = delete_records(&ctx, 0, req).await;
    let got: Vec<(i64, i16)> = resp.topics[0]
        .partitions
        .iter()
        .map(|p| (p.low_watermark, p.error_code))
        .collect();
    assert_eq!(got, vec![(5, NONE), (0, NONE)]);
}

#[tokio::test]
async fn describe_cluster_names_this_node() {
    let (_dir, ctx) = setup(|c| c.kafka.node_id = 3).await;
    for version in 0..=2 {
        let req =
            DescribeClusterRequest::default().with_include_cluster_authorized_operations(true);
        let resp = describe_cluster(&ctx, version, req).await;
        assert_eq!(resp.error_code, NONE);
        assert_eq!(&*resp.cluster_id, ctx.broker.cluster_id());
        assert_eq!(resp.controller_id, BrokerId(3));
        assert_eq!(resp.brokers.len(), 1);
        assert_eq!(resp.brokers[0].broker_id, BrokerId(3));
        assert_eq!(
            (&*resp.brokers[0].host, resp.brokers[0].port),
            ("localhost", 9092)
        );
        assert_ne!(resp.cluster_authorized_operations, i32::MIN);
    }
    let req = DescribeClusterRequest::default().with_endpoint_type(2);
    let resp = describe_cluster(&ctx, 1, req).await;
    assert_eq!(resp.error_code, code(ResponseError::MismatchedEndpointType));
    let resp = describe_cluster(&ctx, 0, DescribeClusterRequest::default()).await;
    assert_eq!(resp.cluster_authorized_operations, i32::MIN);
}

fn resource(resource_type: i8, resource_name: &str) -> DescribeConfigsResource {
    DescribeConfigsResource::default()
        .with_resource_type(resource_type)
        .with_resource_name(s(resource_name))
        .with_configuration_keys(None)
}

fn entry<'a>(
    configs: &'a [DescribeConfigsResourceResult],
    key: &str,
) -> &'a DescribeConfigsResourceResult {
    configs
        .iter()
        .find(|c| &*c.name == key)
        .unwrap_or_else(|| panic!("no config {key}"))
}

#[tokio::test]
async fn describe_configs_reports_sources_synonyms_and_docs() {
    let (_dir, ctx) = setup(|c| {
        c.set("log.retention.hours", "1")
            .unwrap_or_else(|e| panic!("{e}"));
    })
    .await;
    let created = ctx
        .broker
        .create_topic(NewTopic::new("cfg", 1).with_config("cleanup.policy", "compact"))
        .await;
    assert!(created.is_ok());
    let req = DescribeConfigsRequest::default()
        .with_resources(vec![resource(2, "cfg")])
        .with_include_synonyms(true)
        .with_include_documentation(true);
    let resp = describe_configs(&ctx, 4, req).await;
    let r = &resp.results[0];
    assert_eq!((r.error_code, r.error_message.clone()), (NONE, None));
    assert_eq!(r.configs.len(), crate::config::TOPIC_CONFIG_KEYS.len());
    let policy = entry(&r.configs, "cleanup.policy");
    assert_eq!(policy.value, Some(s("compact")));
    assert_eq!((policy.config_source, policy.read_only), (1, false));
    assert_eq!(policy.config_type, 7);
    let synonyms: Vec<(String, i8)> = policy
        .synonyms
        .iter()
        .map(|s| (s.name.to_string(), s.source))
        .collect();
    assert_eq!(
        synonyms,
        vec![
            ("cleanup.policy".to_owned(), 1),
            ("log.cleanup.policy".to_owned(), 5)
        ]
    );
    assert!(
        policy
            .documentation
            .as_deref()
            .is_some_and(|d| d.contains("compact"))
    );
    let retention = entry(&r.configs, "retention.ms");
    assert_eq!(retention.value, Some(s("3600000")));
    assert_eq!((retention.config_source, retention.config_type), (4, 5));
    let synonyms: Vec<(String, String, i8)> = retention
        .synonyms
        .iter()
        .map(|s| (s.name.to_string(), text(&s.value), s.source))
        .collect();
    assert_eq!(
        synonyms,
        vec![
            ("log.retention.ms".to_owned(), "3600000".to_owned(), 4),
            ("log.retention.hours".to_owned(), "168".to_owned(), 5),
        ]
    );
    let segment = entry(&r.configs, "segment.bytes");
    assert_eq!((segment.config_source, segment.config_type), (5, 3));

    // Without synonyms or documentation; filtered by key; v1 (no type or doc fields).
    let req = DescribeConfigsRequest::default().with_resources(vec![
        resource(2, "cfg").with_configuration_keys(Some(vec![s("retention.ms"), s("nope")])),
    ]);
    for version in 1..=4 {
        let resp = describe_configs(&ctx, version, req.clone()).await;
        let configs = &resp.results[0].configs;
        assert_eq!(configs.len(), 1);
        assert!(configs[0].synonyms.is_empty());
        if version >= 3 {
            assert_eq!(configs[0].documentation, None);
        }
    }

    // This broker, read-only; other brokers, unknown topics and other types are refused.
    let req = DescribeConfigsRequest::default().with_resources(vec![
        resource(4, "0"),
        resource(4, ""),
        resource(4, "7"),
        resource(2, "nope"),
        resource(3, "group"),
    ]);
    let resp = describe_configs(&ctx, 2, req).await;
    let r = &resp.results;
    assert_eq!(r[0].error_code, NONE);
    assert_eq!(r[0].configs.len(), crate::config::BROKER_CONFIG_KEYS.len());
    let hours = entry(&r[0].configs, "log.retention.hours");
    assert_eq!(
        (hours.value.clone(), hours.config_source, hours.read_only),
        (Some(s("1")), 4, true)
    );
    let partitions = entry(&r[0].configs, "num.partitions");
    assert_eq!(
        (partitions.value.clone(), partitions.config_source),
        (Some(s("1")), 5)
    );
    assert_eq!((r[1].error_code, r[1].configs.len()), (NONE, 0));
    assert_eq!(r[2].error_code, code(ResponseError::InvalidRequest));
    assert_eq!(
        r[3].error_code,
        code(ResponseError::UnknownTopicOrPartition)
    );
    assert_eq!(r[4].error_code, code(ResponseError::InvalidRequest));
    assert!(text(&r[4].error_message).contains("resource type 3"));
}

fn alter_resource(
    resource_type: i8,
    resource_name: &str,
    pairs: &[(&str, &str)],
) -> AlterConfigsResource {
    AlterConfigsResource::default()
        .with_resource_type(resource_type)
        .with_resource_name(s(resource_name))
        .with_configs(
            pairs
                .iter()
                .map(|(k, v)| {
                    AlterableConfig::default()
                        .with_name(s(k))
                        .with_value(Some(s(v)))
                })
                .collect(),
        )
}

fn overrides(ctx: &Ctx, topic: &str) -> Vec<(String, String)> {
    ctx.broker
        .describe_topic(topic)
        .map(|d| d.overrides.into_iter().collect())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test]
async fn alter_configs_replaces_every_override() {
    let (_dir, ctx) = setup(|_| {}).await;
    make_topic(&ctx, "t", 1).await;
    let set = [
        ConfigChange::Set("retention.ms".into(), "1000".into()),
        ConfigChange::Set("segment.ms".into(), "2000".into()),
    ];
    assert!(ctx.broker.alter_topic_config("t", &set).await.is_ok());

    let req = AlterConfigsRequest::default()
        .with_resources(vec![alter_resource(
            2,
            "t",
            &[("cleanup.policy", "compact")],
        )])
        .with_validate_only(true);
    let resp = alter_configs(&ctx, 0, req).await;
    assert_eq!(resp.responses[0].error_code, NONE);
    assert_eq!(
        overrides(&ctx, "t"),
        pairs(&[("retention.ms", "1000"), ("segment.ms", "2000")])
    );

    let req = AlterConfigsRequest::default().with_resources(vec![
        alter_resource(
            2,
            "t",
            &[("cleanup.policy", "compact"), ("segment.ms", "3000")],
        ),
        alter_resource(2, "nope", &[]),
        alter_resource(2, "t", &[("segment.bytes", "1")]),
        alter_resource(4, "0", &[("num.partitions", "3")]),
        alter_resource(4, "0", &[("no.such.key", "3")]),
        alter_resource(4, "0", &[]),
    ]);
    let resp = alter_configs(&ctx, 2, req).await;
    let codes: Vec<i16> = resp.responses.iter().map(|r| r.error_code).collect();
    assert_eq!(
        codes,
        vec![
            NONE,
            code(ResponseError::UnknownTopicOrPartition),
            code(ResponseError::InvalidConfig),
            code(ResponseError::InvalidRequest),
            code(ResponseError::InvalidConfig),
            NONE,
        ]
    );
    assert!(text(&resp.responses[3].error_message).contains("num.partitions"));
    assert_eq!(&*resp.responses[0].resource_name, "t");
    // The failed third resource changed nothing; the first replaced everything.
    assert_eq!(
        overrides(&ctx, "t"),
        pairs(&[("cleanup.policy", "compact"), ("segment.ms", "3000")])
    );
    let null = AlterConfigsResource::default()
        .with_resource_type(2)
        .with_resource_name(s("t"))
        .with_configs(vec![
            AlterableConfig::default()
                .with_name(s("segment.ms"))
                .with_value(None),
        ]);
    let resp = alter_configs(
        &ctx,
        1,
        AlterConfigsRequest::default().with_resources(vec![null]),
    )
    .await;
    assert_eq!(
        resp.responses[0].error_code,
        code(ResponseError::InvalidRequest)
    );
}

fn op(key: &str, operation: i8, value: Option<&str>) -> inc::AlterableConfig {
    inc::AlterableConfig::default()
        .with_name(s(key))
        .with_config_operation(operation)
        .with_value(value.map(s))
}

fn inc_request(
    resource_type: i8,
    resource_name: &str,
    ops: Vec<inc::AlterableConfig>,
) -> IncrementalAlterConfigsRequest {
    IncrementalAlterConfigsRequest::default().with_resources(vec![
        inc::AlterConfigsResource::default()
            .with_resource_type(resource_type)
            .with_resource_name(s(resource_name))
            .with_configs(ops),
    ])
}

#[tokio::test]
async fn incremental_alter_configs_set_delete_append_subtract() {
    let (_dir, ctx) = setup(|_| {}).await;
    make_topic(&ctx, "t", 1).await;
    let run = |req: IncrementalAlterConfigsRequest| {
        let ctx = &ctx;
        async move {
            let resp = incremental_alter_configs(ctx, 1, req).await;
            let r = &resp.responses[0];
            (r.error_code, text(&r.error_message))
        }
    };
    let req = inc_request(
        2,
        "t",
        vec![
            op("retention.ms", 0, Some("1000")),
            op("cleanup.policy", 2, Some("compact")),
        ],
    );
    assert_eq!(run(req).await, (NONE, String::new()));
    assert_eq!(
        overrides(&ctx, "t"),
        pairs(&[
            ("cleanup.policy", "delete,compact"),
            ("retention.ms", "1000")
        ])
    );
    let req = inc_request(
        2,
        "t",
        vec![
            op("cleanup.policy", 3, Some("delete")),
            op("retention.ms", 1, None),
        ],
    );
    assert_eq!(run(req).await.0, NONE);
    assert_eq!(
        overrides(&ctx, "t"),
        pairs(&[("cleanup.policy", "compact")])
    );

    // All or nothing: one bad change fails the resource and leaves the topic as it was.
    let refusals = [
        (
            vec![
                op("segment.ms", 0, Some("5")),
                op("retention.ms", 2, Some("1")),
            ],
            ResponseError::InvalidConfig,
            "not a list",
        ),
        (
            vec![op("segment.ms", 0, Some("5")), op("nope.ms", 1, None)],
            ResponseError::InvalidConfig,
            "nope.ms",
        ),
        (
            vec![op("segment.ms", 0, None)],
            ResponseError::InvalidRequest,
            "null",
        ),
        (
            vec![op("segment.ms", 0, Some("5")), op("segment.ms", 1, None)],
            ResponseError::InvalidRequest,
            "more than once",
        ),
        (
            vec![op("segment.ms", 9, Some("5"))],
            ResponseError::InvalidRequest,
            "operation 9",
        ),
        (
            vec![op("cleanup.policy", 3, Some("compact"))],
            ResponseError::InvalidConfig,
            "cleanup.policy",
        ),
    ];
    for (ops, error, needle) in refusals {
        let (c, m) = run(inc_request(2, "t", ops)).await;
        assert_eq!(c, code(error), "{m}");
        assert!(m.contains(needle), "{m:?} lacks {needle:?}");
    }
    assert_eq!(
        overrides(&ctx, "t"),
        pairs(&[("cleanup.policy", "compact")])
    );

    let req = inc_request(2, "t", vec![op("segment.ms", 0, Some("5000"))]).with_validate_only(true);
    assert_eq!(run(req).await.0, NONE);
    assert_eq!(
        overrides(&ctx, "t"),
        pairs(&[("cleanup.policy", "compact")])
    );

    let (c, m) = run(inc_request(
        4,
        "0",
        vec![op("log.retention.ms", 0, Some("5"))],
    ))
    .await;
    assert_eq!(c, code(ResponseError::InvalidRequest));
    assert!(m.contains("dynamically"), "{m}");
    assert_eq!(
        run(inc_request(2, "nope", vec![])).await.0,
        code(ResponseError::UnknownTopicOrPartition)
    );
    let resp = incremental_alter_configs(&ctx, 0, inc_request(8, "root", vec![])).await;
    assert_eq!(
        resp.responses[0].error_code,
        code(ResponseError::InvalidRequest)
    );
}

#[tokio::test]
async fn describe_log_dirs_sizes_partitions() {
    let (dir, ctx) = setup(|_| {}).await;
    make_topic(&ctx, "sized", 2).await;
    let log = ctx.broker.log("sized", 1).unwrap_or_else(|e| panic!("{e}"));
    let batch = crate::record::records_to_batch(&[Record::new(1, Some(b"k"), Some(b"value"))]);
    assert!(
        log.append(&batch, crate::log::ProducerInfo::NONE, crate::log::Ack::All)
            .await
            .is_ok()
    );
    for version in 1..=4 {
        let resp = describe_log_dirs(
            &ctx,
            version,
            DescribeLogDirsRequest::default().with_topics(None),
        )
        .await;
        let result = &resp.results[0];
        assert_eq!(result.error_code, NONE);
        let expected = std::path::absolute(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&*result.log_dir, expected.display().to_string());
        let sizes: Vec<(i32, bool)> = result.topics[0]
            .partitions
            .iter()
            .map(|p| (p.partition_index, p.partition_size > 0))
            .collect();
        assert_eq!(sizes, vec![(0, false), (1, true)]);
    }
}

/// A realistic request of each admin API at `version`, for the wire sweep.
fn sweep_request(api: ApiKey, version: i16) -> Option<RequestKind> {
    let keys = |ks: &[&str]| Some(ks.iter().map(|k| s(k)).collect());
    Some(match api {
        ApiKey::CreateTopics => RequestKind::CreateTopics(create_request(vec![
            creatable(&format!("made-{version}"), 2, 1)
                .with_configs(vec![config("retention.ms", "1000")]),
            creatable("sweep", 1, 1),
            creatable("replicated", 1, 3),
        ])),
        ApiKey::DeleteTopics if version >= 6 => {
            RequestKind::DeleteTopics(DeleteTopicsRequest::default().with_topics(vec![
                DeleteTopicState::default().with_name(Some(name("made-2"))),
                DeleteTopicState::default().with_topic_id(uuid::Uuid::from_u128(7)),
            ]))
        }
        ApiKey::DeleteTopics => RequestKind::DeleteTopics(
            DeleteTopicsRequest::default()
                .with_topic_names(vec![name(&format!("made-{}", version + 2)), name("nope")]),
        ),
        ApiKey::CreatePartitions => {
            RequestKind::CreatePartitions(CreatePartitionsRequest::default().with_topics(vec![
                CreatePartitionsTopic::default()
                    .with_name(name("sweep"))
                    .with_count(2 + i32::from(version))
                    .with_assignments(None),
                CreatePartitionsTopic::default()
                    .with_name(name("sweep"))
                    .with_count(1)
                    .with_assignments(None),
            ]))
        }
        ApiKey::DeleteRecords => {
            RequestKind::DeleteRecords(DeleteRecordsRequest::default().with_topics(vec![
            DeleteRecordsTopic::default().with_name(name("sweep")).with_partitions(vec![
                DeleteRecordsPartition::default().with_partition_index(0).with_offset(-1),
                DeleteRecordsPartition::default().with_partition_index(0).with_offset(99),
            ]),
        ]))
        }
        ApiKey::DescribeConfigs => RequestKind::DescribeConfigs(
            DescribeConfigsRequest::default()
                .with_resources(vec![
                    resource(2, "sweep"),
                    resource(4, "0").with_configuration_keys(keys(&["num.partitions"])),
                    resource(2, "nope"),
                ])
                .with_include_synonyms(true)
                .with_include_documentation(version >= 3),
        ),
        ApiKey::AlterConfigs => {
            RequestKind::AlterConfigs(AlterConfigsRequest::default().with_resources(vec![
                alter_resource(2, "sweep", &[("retention.ms", "5000")]),
                alter_resource(4, "0", &[("num.partitions", "2")]),
            ]))
        }
        ApiKey::IncrementalAlterConfigs => RequestKind::IncrementalAlterConfigs(inc_request(
            2,
            "sweep",
            vec![
                op("cleanup.policy", 2, Some("compact")),
                op("retention.ms", 1, None),
            ],
        )),
        ApiKey::DescribeCluster => RequestKind::DescribeCluster(
            DescribeClusterRequest::default().with_include_cluster_authorized_operations(true),
        ),
        ApiKey::DescribeLogDirs => {
            RequestKind::DescribeLogDirs(DescribeLogDirsRequest::default().with_topics(None))
        }
        ApiKey::DescribeProducers => {
            RequestKind::DescribeProducers(DescribeProducersRequest::default().with_topics(vec![
                ProducersTopicRequest::default()
                    .with_name(name("sweep"))
                    .with_partition_indexes(vec![0, 5]),
            ]))
        }
        _ => return None,
    })
}

fn frame(api: ApiKey, version: i16, body: &RequestKind) -> Option<Bytes> {
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(5)
        .with_client_id(Some(s("admin-sweep")))
        .encode(&mut buf, api.request_header_version(version))
        .ok()?;
    body.encode(&mut buf, version).ok()?;
    Some(buf.freeze())
}

/// Version-specific requests (v6 DeleteTopics by id, documentation from v3) with successes and
/// errors, through the server's decode, dispatch and encode.
#[tokio::test]
async fn every_admin_version_answers_over_the_wire() {
    let (_dir, ctx) = setup(|_| {}).await;
    make_topic(&ctx, "sweep", 1).await;
    let mut checked = 0;
    for &(api, lo, hi) in VERSIONS {
        for version in lo..=hi {
            let Some(req) = sweep_request(api, version) else {
                panic!("no sweep request for {api:?}")
            };
            let Some(bytes) = frame(api, version, &req) else {
                panic!("{api:?} v{version}: the sweep request does not encode")
            };
            match process(&ctx, bytes, None).await {
                Outcome::Respond(chunks) => {
                    let resp: Vec<u8> = chunks.concat();
                    assert_eq!(&resp[4..8], &5i32.to_be_bytes(), "{api:?} v{version}");
                    checked += 1;
                }
                Outcome::Silent => panic!("{api:?} v{version}: no response"),
                Outcome::Close(why) => panic!("{api:?} v{version}: closed: {why}"),
            }
        }
    }
    assert_eq!(
        checked,
        VERSIONS.iter().map(|(_, lo, hi)| hi - lo + 1).sum::<i16>()
    );
}

#[tokio::test]
async fn internal_topics_cannot_be_deleted_repartitioned_or_reconfigured() {
    let (_dir, ctx) = setup(|_| {}).await;
    let offsets = crate::group::OFFSETS_TOPIC;
    ctx.broker
        .groups()
        .ensure_ready()
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let partitions = ctx.broker.partition_count(offsets).ok();
    let overrides_before = overrides(&ctx, offsets);

    let req = DeleteTopicsRequest::default().with_topic_names(vec![name(offsets)]);
    let r = &delete_topics(&ctx, 5, req).await.responses[0];
    assert_eq!(r.error_code, code(ResponseError::InvalidTopicException));
    assert_eq!(
        text(&r.error_message),
        "topic '__consumer_offsets' is an internal topic managed by the broker; it cannot be deleted"
    );
    // A missing internal topic is unknown, as any missing topic.
    let req = DeleteTopicsRequest::default().with_topic_names(vec![name("__transaction_state")]);
    let r = &delete_topics(&ctx, 5, req).await.responses[0];
    assert_eq!(r.error_code, code(ResponseError::UnknownTopicOrPartition));

    for validate_only in [true, false] {
        let req = CreatePartitionsRequest::default()
            .with_topics(vec![
                CreatePartitionsTopic::default()
                    .with_name(name(offsets))
                    .with_count(100)
                    .with_assignments(None),
            ])
            .with_validate_only(validate_only);
        let r = &create_partitions(&ctx, 3, req).await.results[0];
        assert_eq!(r.error_code, code(ResponseError::InvalidTopicException));
        assert!(text(&r.error_message).contains("cannot be re-partitioned"));

        let req = AlterConfigsRequest::default()
            .with_resources(vec![alter_resource(2, offsets, &[("retention.ms", "1")])])
            .with_validate_only(validate_only);
        let r = &alter_configs(&ctx, 2, req).await.responses[0];
        assert_eq!(r.error_code, code(ResponseError::InvalidRequest));
        assert!(text(&r.error_message).contains("cannot be reconfigured"));

        let req = inc_request(2, offsets, vec![op("cleanup.policy", 0, Some("delete"))])
            .with_validate_only(validate_only);
        let r = &incremental_alter_configs(&ctx, 1, req).await.responses[0];
        assert_eq!(r.error_code, code(ResponseError::InvalidRequest));
        assert!(text(&r.error_message).contains("cannot be reconfigured"));
    }

    // The in-process API refuses the same.
    let b = &ctx.broker;
    assert!(matches!(
        b.delete_topic(offsets).await,
        Err(crate::BrokerError::InternalTopic { .. })
    ));
    assert!(matches!(
        b.add_partitions(offsets, 100).await,
        Err(crate::BrokerError::InternalTopic { .. })
    ));
    let change = [ConfigChange::Delete("cleanup.policy".into())];
    assert!(matches!(
        b.alter_topic_config(offsets, &change).await,
        Err(crate::BrokerError::InternalTopic { .. })
    ));

    assert_eq!(b.partition_count(offsets).ok(), partitions);
    assert_eq!(overrides(&ctx, offsets), overrides_before);
    // Describing it still works.
    let req = DescribeConfigsRequest::default().with_resources(vec![resource(2, offsets)]);
    assert_eq!(
        describe_configs(&ctx, 4, req).await.results[0].error_code,
        NONE
    );
}

#[tokio::test]
async fn describe_producers_shows_each_producer_and_its_open_transaction() {
    let (_dir, ctx) = setup(|_| {}).await;
    make_topic(&ctx, "p", 2).await;
    let log = match ctx.broker.log("p", 0) {
        Ok(log) => log,
        Err(e) => panic!("log: {e}"),
    };
    let batch = crate::record::records_to_batch(&[Record::new(1, Some(b"k"), Some(b"v"))]);
    let idempotent = crate::log::ProducerInfo {
        producer_id: 11,
        producer_epoch: 2,
        base_sequence: 0,
        attributes: 0,
    };
    let transactional = crate::log::ProducerInfo {
        producer_id: 12,
        producer_epoch: 0,
        base_sequence: 0,
        attributes: crate::log::attributes::TRANSACTIONAL,
    };
    let mut txn_start = -1;
    for (p, seq) in [(idempotent, 0), (idempotent, 1), (transactional, 0)] {
        let info = log.append_unflushed(
            &batch,
            crate::log::ProducerInfo {
                base_sequence: seq,
                ..p
            },
        );
        match info {
            Ok(info) if p.producer_id == 12 => txn_start = info.base_offset,
            Ok(_) => {}
            Err(e) => panic!("append: {e}"),
        }
    }
    let req = DescribeProducersRequest::default().with_topics(vec![
        ProducersTopicRequest::default()
            .with_name(name("p"))
            .with_partition_indexes(vec![0, 1, 7]),
    ]);
    let resp = describe_producers(&ctx, 0, req).await;
    let parts = &resp.topics[0].partitions;
    assert_eq!(parts.len(), 3);
    let p0 = &parts[0];
    assert_eq!(p0.error_code, NONE);
    let producers: Vec<(i64, i32, i32, i64)> = p0
        .active_producers
        .iter()
        .map(|s| {
            (
                s.producer_id.0,
                s.producer_epoch,
                s.last_sequence,
                s.current_txn_start_offset,
            )
        })
        .collect();
    assert_eq!(producers, vec![(11, 2, 1, -1), (12, 0, 0, txn_start)]);
    assert!(
        parts[1].active_producers.is_empty(),
        "no producer wrote there"
    );
    assert_eq!(
        parts[2].error_code,
        code(ResponseError::UnknownTopicOrPartition)
    );
    assert!(text(&parts[2].error_message).contains('p'));
}
