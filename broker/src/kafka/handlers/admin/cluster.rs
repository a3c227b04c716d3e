//! DescribeCluster (this node is the only broker and the controller) and DescribeLogDirs (the one
//! data directory, with the size of each partition in it).

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_cluster_request::DescribeClusterRequest;
use kafka_protocol::messages::describe_cluster_response::{
    DescribeClusterBroker, DescribeClusterResponse,
};
use kafka_protocol::messages::describe_log_dirs_request::DescribeLogDirsRequest;
use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResponse, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{BrokerId, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::kafka::handlers::Ctx;

/// DescribeCluster endpoint types.
const ENDPOINT_BROKERS: i8 = 1;
const ENDPOINT_CONTROLLERS: i8 = 2;

/// Kafka's marker for "authorized operations were not requested".
const OPERATIONS_NOT_REQUESTED: i32 = i32::MIN;

/// What a client may do with the cluster when there are no ACLs: Kafka's cluster operations
/// (CREATE 5, ALTER 7, DESCRIBE 8, CLUSTER_ACTION 9, DESCRIBE_CONFIGS 10, ALTER_CONFIGS 11,
/// IDEMPOTENT_WRITE 12) as a bit set.
const CLUSTER_OPERATIONS: i32 =
    (1 << 5) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12);

pub fn describe_cluster(
    ctx: &Ctx,
    version: i16,
    req: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let response = DescribeClusterResponse::default();
    if version >= 1 && req.endpoint_type != ENDPOINT_BROKERS {
        let (error, message) = if req.endpoint_type == ENDPOINT_CONTROLLERS {
            (
                ResponseError::MismatchedEndpointType,
                "this is a broker endpoint; ask for brokers (endpoint type 1)".to_owned(),
            )
        } else {
            (
                ResponseError::UnsupportedEndpointType,
                format!(
                    "endpoint type {} is not supported; ask for brokers (endpoint type 1)",
                    req.endpoint_type
                ),
            )
        };
        return response
            .with_error_code(error.code())
            .with_error_message(Some(StrBytes::from_string(message)));
    }
    let advertised = &ctx.advertised;
    let operations = if req.include_cluster_authorized_operations {
        CLUSTER_OPERATIONS
    } else {
        OPERATIONS_NOT_REQUESTED
    };
    response
        .with_cluster_id(StrBytes::from_string(ctx.broker.cluster_id().to_owned()))
        .with_controller_id(BrokerId(ctx.node_id))
        .with_brokers(vec![
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(ctx.node_id))
                .with_host(StrBytes::from_string(advertised.host.clone()))
                .with_port(i32::from(advertised.port)),
        ])
        .with_cluster_authorized_operations(operations)
}

/// Null topics means every partition; partitions not on this node are left out, as in Kafka.
pub fn describe_log_dirs(ctx: &Ctx, req: DescribeLogDirsRequest) -> DescribeLogDirsResponse {
    let broker = &ctx.broker;
    let wanted: Vec<(String, Vec<i32>)> = match req.topics {
        None => broker
            .list_topics()
            .into_iter()
            .filter_map(|name| {
                let count = broker.partition_count(&name).ok()?;
                Some((name, (0..count).collect()))
            })
            .collect(),
        Some(topics) => topics
            .into_iter()
            .map(|t| (t.topic.0.to_string(), t.partitions))
            .collect(),
    };
    let topics = wanted
        .into_iter()
        .filter_map(|(name, partitions)| {
            let partitions: Vec<DescribeLogDirsPartition> = partitions
                .into_iter()
                .filter_map(|p| {
                    let log = broker.log(&name, p).ok()?;
                    Some(
                        DescribeLogDirsPartition::default()
                            .with_partition_index(p)
                            .with_partition_size(
                                i64::try_from(log.offsets().size_bytes).unwrap_or(i64::MAX),
                            ),
                    )
                })
                .collect();
            (!partitions.is_empty()).then(|| {
                DescribeLogDirsTopic::default()
                    .with_name(TopicName(StrBytes::from_string(name)))
                    .with_partitions(partitions)
            })
        })
        .collect();
    let data_dir = broker.config().data_dir.clone();
    let data_dir = std::path::absolute(&data_dir).unwrap_or(data_dir);
    DescribeLogDirsResponse::default().with_results(vec![
        DescribeLogDirsResult::default()
            .with_log_dir(StrBytes::from_string(data_dir.display().to_string()))
            .with_topics(topics),
    ])
}
