//! CreateTopics, DeleteTopics and CreatePartitions.
//!
//! `validate_only` requests run the same checks as real ones (name, existence, partitions,
//! replication, configs) and change nothing.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::TopicName;
use kafka_protocol::messages::create_partitions_request::{
    CreatePartitionsRequest, CreatePartitionsTopic,
};
use kafka_protocol::messages::create_partitions_response::{
    CreatePartitionsResponse, CreatePartitionsTopicResult,
};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreateTopicsRequest};
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult, CreateTopicsResponse,
};
use kafka_protocol::messages::delete_topics_request::DeleteTopicsRequest;
use kafka_protocol::messages::delete_topics_response::{
    DeletableTopicResult, DeleteTopicsResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::configs::topic_entries;
use super::{ApiError, check_replicas, duplicates, listed_twice, outcome};
use crate::broker::NewTopic;
use crate::config::LogConfig;
use crate::error::BrokerError;
use crate::kafka::handlers::Ctx;
use crate::kafka::handlers::metadata::uuid_of;
use crate::topic;

/// What a created (or validated) topic looks like.
struct Created {
    partitions: i32,
    overrides: BTreeMap<String, String>,
    config: LogConfig,
    /// Nil for `validate_only`.
    id: uuid::Uuid,
}

pub async fn create_topics(
    ctx: &Ctx,
    version: i16,
    req: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let repeated = duplicates(req.topics.iter().map(|t| &*t.name.0));
    let mut results = Vec::with_capacity(req.topics.len());
    for t in &req.topics {
        let result = if repeated.contains(&*t.name.0) {
            Err(listed_twice(&t.name.0))
        } else {
            create_one(ctx, t, req.validate_only).await
        };
        results.push(creatable_result(ctx, version, t.name.clone(), result));
    }
    CreateTopicsResponse::default().with_topics(results)
}

async fn create_one(
    ctx: &Ctx,
    t: &CreatableTopic,
    validate_only: bool,
) -> Result<Created, ApiError> {
    let broker = &ctx.broker;
    let name = t.name.0.to_string();
    // Kafka's order: the name, then existence, then partitions and replication, then configs.
    topic::validate_name(&name)?;
    if broker.topic_exists(&name) {
        return Err(BrokerError::TopicExists(name).into());
    }
    let partitions = planned_partitions(ctx.node_id, t)?;
    let mut configs = BTreeMap::new();
    let mut nulls = Vec::new();
    for c in &t.configs {
        match &c.value {
            Some(v) => {
                configs.insert(c.name.to_string(), v.to_string());
            }
            None => nulls.push(c.name.to_string()),
        }
    }
    if !nulls.is_empty() {
        return Err(ApiError::new(
            ResponseError::InvalidConfig,
            format!(
                "null values are not supported for topic configs: {}; give a value or leave the key out",
                nulls.join(", ")
            ),
        ));
    }
    let new = NewTopic {
        name,
        partitions,
        configs,
    };
    if validate_only {
        return dry_run(ctx, new);
    }
    let d = broker.create_topic(new).await?;
    Ok(Created {
        partitions: d.partitions.len() as i32,
        overrides: d.overrides,
        config: d.config,
        id: uuid_of(&d.id),
    })
}

/// The partition count a request asks for (`None`: the broker's `num.partitions`), after
/// checking its replication factor or manual assignment against this single node.
fn planned_partitions(node_id: i32, t: &CreatableTopic) -> Result<Option<i32>, ApiError> {
    if !t.assignments.is_empty() {
        if t.num_partitions != -1 || t.replication_factor != -1 {
            return Err(ApiError::new(
                ResponseError::InvalidRequest,
                "a manual assignment was given together with num_partitions or replication_factor; \
                 set both to -1 when giving assignments",
            ));
        }
        let count = i32::try_from(t.assignments.len()).unwrap_or(i32::MAX);
        topic::validate_partitions(count)?;
        let mut indexes: Vec<i32> = t.assignments.iter().map(|a| a.partition_index).collect();
        indexes.sort_unstable();
        if !indexes.iter().copied().eq(0..count) {
            return Err(ApiError::new(
                ResponseError::InvalidReplicaAssignment,
                format!(
                    "the assignment must number its {count} partitions 0 to {} with no gaps or repeats",
                    count - 1
                ),
            ));
        }
        for a in &t.assignments {
            check_replicas(node_id, a.partition_index, &a.broker_ids)?;
        }
        return Ok(Some(count));
    }
    match t.replication_factor {
        -1 | 1 => {}
        rf if rf < 1 => {
            return Err(ApiError::new(
                ResponseError::InvalidReplicationFactor,
                format!(
                    "replication factor {rf} is invalid; it must be at least 1, or -1 for the broker default"
                ),
            ));
        }
        rf => {
            return Err(ApiError::new(
                ResponseError::InvalidReplicationFactor,
                format!(
                    "replication factor {rf} cannot be met: this is a single-node cluster with 1 broker; use 1 (or -1)"
                ),
            ));
        }
    }
    Ok(match t.num_partitions {
        -1 => None,
        n => Some(n),
    })
}

/// The checks `Broker::create_topic` makes, without creating anything.
fn dry_run(ctx: &Ctx, new: NewTopic) -> Result<Created, ApiError> {
    let (partitions, config) = ctx.broker.check_new_topic(&new)?;
    Ok(Created {
        partitions,
        overrides: new.configs,
        config,
        id: uuid::Uuid::nil(),
    })
}

fn creatable_result(
    ctx: &Ctx,
    version: i16,
    name: TopicName,
    result: Result<Created, ApiError>,
) -> CreatableTopicResult {
    let (code, message) = outcome(&result);
    let mut out = CreatableTopicResult::default()
        .with_name(name)
        .with_error_code(code)
        .with_error_message(message);
    if let Ok(c) = result {
        if version >= 5 {
            let configs = topic_entries(ctx.broker.config(), &c.overrides, &c.config)
                .into_iter()
                .map(|e| {
                    CreatableTopicConfigs::default()
                        .with_name(StrBytes::from_static_str(e.name))
                        .with_value(Some(StrBytes::from_string(e.value)))
                        .with_read_only(e.read_only)
                        .with_config_source(e.source)
                        .with_is_sensitive(false)
                })
                .collect();
            out = out
                .with_num_partitions(c.partitions)
                .with_replication_factor(1)
                .with_configs(Some(configs));
        }
        if version >= 7 {
            out = out.with_topic_id(c.id);
        }
    }
    out
}

pub async fn delete_topics(
    ctx: &Ctx,
    version: i16,
    req: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    // v6 names topics by name or id; older versions by name only.
    let targets: Vec<(Option<TopicName>, uuid::Uuid)> = if version >= 6 {
        req.topics
            .into_iter()
            .map(|t| (t.name, t.topic_id))
            .collect()
    } else {
        req.topic_names
            .into_iter()
            .map(|n| (Some(n), uuid::Uuid::nil()))
            .collect()
    };
    let mut responses = Vec::with_capacity(targets.len());
    for (name, id) in targets {
        let (name, id, result) = delete_one(ctx, name, id).await;
        let (code, message) = outcome(&result);
        // The name is null only for an unknown id, which only v6 (where it is nullable) can send.
        let mut r = DeletableTopicResult::default()
            .with_name(name)
            .with_error_code(code);
        if version >= 5 {
            r = r.with_error_message(message);
        }
        if version >= 6 {
            r = r.with_topic_id(id);
        }
        responses.push(r);
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

/// Deletes one topic, named by name or id. Returns the name and id to report.
async fn delete_one(
    ctx: &Ctx,
    name: Option<TopicName>,
    id: uuid::Uuid,
) -> (Option<TopicName>, uuid::Uuid, Result<(), ApiError>) {
    let broker = &ctx.broker;
    let name = match (name, id.is_nil()) {
        (Some(name), true) => name,
        (Some(name), false) => {
            let err = ApiError::new(
                ResponseError::InvalidRequest,
                "give a topic's name or its id, not both",
            );
            return (Some(name), id, Err(err));
        }
        (None, _) => match broker.topic_name_by_id(&id) {
            Some(n) => TopicName(StrBytes::from_string(n)),
            None => {
                let err = ApiError::new(
                    ResponseError::UnknownTopicId,
                    format!("no topic has id {id}"),
                );
                return (None, id, Err(err));
            }
        },
    };
    let id = broker
        .describe_topic(&name.0)
        .map(|d| uuid_of(&d.id))
        .unwrap_or(id);
    let result = broker.delete_topic(&name.0).await.map_err(ApiError::from);
    (Some(name), id, result)
}

pub async fn create_partitions(
    ctx: &Ctx,
    req: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let repeated = duplicates(req.topics.iter().map(|t| &*t.name.0));
    let mut results = Vec::with_capacity(req.topics.len());
    for t in &req.topics {
        let result = if repeated.contains(&*t.name.0) {
            Err(listed_twice(&t.name.0))
        } else {
            add_partitions(ctx, t, req.validate_only).await
        };
        let (code, message) = outcome(&result);
        results.push(
            CreatePartitionsTopicResult::default()
                .with_name(t.name.clone())
                .with_error_code(code)
                .with_error_message(message),
        );
    }
    CreatePartitionsResponse::default().with_results(results)
}

async fn add_partitions(
    ctx: &Ctx,
    t: &CreatePartitionsTopic,
    validate_only: bool,
) -> Result<(), ApiError> {
    let broker = &ctx.broker;
    let name: &str = &t.name.0;
    let current = broker.partition_count(name)?;
    // Before the count checks, so a validate_only request gets the same answer.
    topic::refuse_internal(name, "re-partitioned")?;
    if t.count == current {
        return Err(BrokerError::InvalidPartitions(format!(
            "topic '{name}' already has {current} partitions"
        ))
        .into());
    }
    if t.count < current {
        return Err(BrokerError::InvalidPartitions(format!(
            "topic '{name}' has {current} partitions; {} would not be an increase (partitions cannot be removed)",
            t.count
        ))
        .into());
    }
    topic::validate_partitions(t.count)?;
    // Kafka sends null for "no assignment"; some clients send an empty list.
    if let Some(assignments) = t.assignments.as_ref().filter(|a| !a.is_empty()) {
        let added = i64::from(t.count) - i64::from(current);
        if assignments.len() as i64 != added {
            return Err(ApiError::new(
                ResponseError::InvalidReplicaAssignment,
                format!(
                    "adding {added} partitions needs {added} assignments, but {} were given",
                    assignments.len()
                ),
            ));
        }
        for (p, a) in (current..).zip(assignments) {
            check_replicas(ctx.node_id, p, &a.broker_ids)?;
        }
    }
    if !validate_only {
        broker.add_partitions(name, t.count).await?;
    }
    Ok(())
}
