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
            // A non-zero id wins over the name, as in Kafka: Java's AdminClient describes topics
            // by id with an empty (not null) name.
            .map(|t| match t.name {
                Some(name) if t.topic_id.is_nil() => Ok(name.0.to_string()),
                _ => Err(t.topic_id),
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
                    let partition = MetadataResponsePartition::default()
                        .with_partition_index(p.partition)
                        .with_leader_epoch(if version >= 7 { p.leader_epoch } else { -1 })
                        .with_replica_nodes(vec![node]);
                    if p.offline {
                        // Its disk failed: no leader, as Kafka shows a partition whose only
                        // replica's log directory is offline.
                        partition
                            .with_error_code(ResponseError::LeaderNotAvailable.code())
                            .with_leader_id(BrokerId(-1))
                            .with_offline_replicas(if version >= 5 { vec![node] } else { vec![] })
                    } else {
                        partition.with_leader_id(node).with_isr_nodes(vec![node])
                    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;

    #[tokio::test]
    async fn metadata_v12_by_topic_id_with_an_empty_name_resolves_the_topic() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let broker = Ctx::open_test_broker(dir.path()).await;
        broker.create_topic(NewTopic::new("orders", 2)).await.ok();
        let id = broker
            .describe_topic("orders")
            .map(|d| uuid_of(&d.id))
            .unwrap_or_else(|e| panic!("describe: {e}"));
        assert!(!id.is_nil());
        let ctx = Ctx::for_tests(broker);
        let unknown = uuid::Uuid::from_u128(0x1234);
        // What Java's AdminClient sends for describeTopics(TopicCollection.ofTopicIds(..)).
        let by_id = |id: uuid::Uuid| {
            MetadataRequestTopic::default()
                .with_topic_id(id)
                .with_name(Some(TopicName(StrBytes::from_static_str(""))))
        };
        let req = MetadataRequest::default()
            .with_topics(Some(vec![by_id(id), by_id(unknown)]))
            .with_allow_auto_topic_creation(true);
        let resp = handle(&ctx, 12, req).await;
        assert_eq!(resp.topics.len(), 2);
        let found = &resp.topics[0];
        assert_eq!(found.error_code, 0);
        assert_eq!(found.topic_id, id);
        assert_eq!(found.name.as_ref().map(|n| n.0.as_str()), Some("orders"));
        assert_eq!(found.partitions.len(), 2);
        let missing = &resp.topics[1];
        assert_eq!(missing.error_code, ResponseError::UnknownTopicId.code());
        assert_eq!(missing.topic_id, unknown);
        // Nothing was auto-created under the empty name.
        assert_eq!(ctx.broker.list_topics(), vec!["orders".to_owned()]);
    }
}
