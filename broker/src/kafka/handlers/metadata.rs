//! Metadata: this node, and every requested topic with its partitions (led by this node).
//! Unknown topics are created when the client allows it and `auto.create.topics.enable` is on.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_request::MetadataRequest;
use kafka_protocol::messages::metadata_response::{
    MetadataResponse, MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::{Ctx, error_code};
use crate::broker::NewTopic;
use crate::error::BrokerError;
use crate::topic;

/// Kafka's marker for "authorized operations were not requested".
const OPERATIONS_NOT_REQUESTED: i32 = i32::MIN;

/// Topics that are Kafka-internal (hidden from `listTopics()` by clients).
pub fn is_internal(name: &str) -> bool {
    topic::is_internal(name)
}

pub async fn handle(ctx: &Ctx, version: i16, req: MetadataRequest) -> MetadataResponse {
    let broker = &ctx.broker;
    let allow_auto =
        (version < 4 || req.allow_auto_topic_creation) && broker.config().auto_create_topics;
    let names: Vec<Result<String, uuid::Uuid>> = match req.topics {
        None => broker.list_topics().into_iter().map(Ok).collect(),
        Some(list) if list.is_empty() && version == 0 => {
            broker.list_topics().into_iter().map(Ok).collect()
        }
        Some(list) => list
            .into_iter()
            .map(|t| match t.name {
                Some(name) => Ok(name.0.to_string()),
                None => Err(t.topic_id),
            })
            .collect(),
    };
    let mut topics = Vec::with_capacity(names.len());
    for name in names {
        let name = match name {
            Ok(n) => n,
            Err(id) => match broker.topic_name_by_id(&id) {
                Some(n) => n,
                None => {
                    topics.push(
                        MetadataResponseTopic::default()
                            .with_topic_id(id)
                            .with_error_code(ResponseError::UnknownTopicId.code()),
                    );
                    continue;
                }
            },
        };
        if !broker.topic_exists(&name)
            && allow_auto
            && topic::validate_name(&name).is_ok()
            && !is_internal(&name)
        {
            match broker
                .create_topic(NewTopic {
                    name: name.clone(),
                    ..NewTopic::default()
                })
                .await
            {
                Ok(_) | Err(BrokerError::TopicExists(_)) => {}
                Err(e) => tracing::warn!(topic = %name, error = %e, "auto-creating a topic failed"),
            }
        }
        topics.push(describe(ctx, version, &name));
    }
    let advertised = &ctx.advertised;
    MetadataResponse::default()
        .with_brokers(vec![
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(ctx.node_id))
                .with_host(StrBytes::from_string(advertised.host.clone()))
                .with_port(i32::from(advertised.port)),
        ])
        .with_cluster_id(
            (version >= 2).then(|| StrBytes::from_string(broker.cluster_id().to_owned())),
        )
        .with_controller_id(BrokerId(if version >= 1 { ctx.node_id } else { -1 }))
        .with_topics(topics)
        .with_cluster_authorized_operations(OPERATIONS_NOT_REQUESTED)
}

/// A topic id as Kafka's UUID (our ids are 32 hex digits).
pub fn uuid_of(id: &str) -> uuid::Uuid {
    uuid::Uuid::parse_str(id).unwrap_or_default()
}

fn describe(ctx: &Ctx, version: i16, name: &str) -> MetadataResponseTopic {
    let topic = MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(name.to_owned()))))
        .with_is_internal(version >= 1 && is_internal(name))
        .with_topic_authorized_operations(OPERATIONS_NOT_REQUESTED);
    match ctx.broker.describe_topic(name) {
        Ok(d) => {
            let node = BrokerId(ctx.node_id);
            let partitions = d
                .partitions
                .iter()
                .map(|p| {
                    MetadataResponsePartition::default()
                        .with_partition_index(p.partition)
                        .with_leader_id(node)
                        .with_leader_epoch(if version >= 7 { 0 } else { -1 })
                        .with_replica_nodes(vec![node])
                        .with_isr_nodes(vec![node])
                })
                .collect();
            let id = if version >= 10 {
                uuid_of(&d.id)
            } else {
                uuid::Uuid::nil()
            };
            topic.with_topic_id(id).with_partitions(partitions)
        }
        Err(e) => {
            let code = match topic::validate_name(name) {
                Err(_) => ResponseError::InvalidTopicException.code(),
                Ok(()) => error_code(&e),
            };
            topic.with_error_code(code)
        }
    }
}
