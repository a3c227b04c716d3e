//! Admin APIs, answered as a single-node Kafka cluster answers them: every partition lives on
//! this node, so replication factors above 1 and assignments to other brokers are refused.
//!
//! - `topics`: CreateTopics, DeleteTopics, CreatePartitions.
//! - `configs`: DescribeConfigs, AlterConfigs (replaces all overrides), IncrementalAlterConfigs.
//! - `records`: DeleteRecords.
//! - `producers`: DescribeProducers.
//! - `cluster`: DescribeCluster, DescribeLogDirs.
//!
//! Each handler answers per resource: one bad topic or config fails its own entry, with a Kafka
//! error code and (where the version has the field) a message that says what to do.

mod cluster;
mod configs;
mod producers;
mod records;
mod topics;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{ApiKey, BrokerId, RequestHeader, RequestKind, ResponseKind};
use kafka_protocol::protocol::StrBytes;

use super::{Ctx, error_code};
use crate::error::BrokerError;

/// Admin APIs handled, with version ranges (within what `kafka-protocol` decodes).
pub const VERSIONS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeLogDirs, 1, 4),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 2),
    (ApiKey::DescribeProducers, 0, 0),
];

/// Handles an admin request, or gives it back if it is not one.
pub async fn dispatch(
    ctx: &Ctx,
    header: &RequestHeader,
    request: RequestKind,
) -> Result<ResponseKind, RequestKind> {
    let v = header.request_api_version;
    Ok(match request {
        RequestKind::CreateTopics(req) => {
            ResponseKind::CreateTopics(topics::create_topics(ctx, v, req).await)
        }
        RequestKind::DeleteTopics(req) => {
            ResponseKind::DeleteTopics(topics::delete_topics(ctx, v, req).await)
        }
        RequestKind::CreatePartitions(req) => {
            ResponseKind::CreatePartitions(topics::create_partitions(ctx, req).await)
        }
        RequestKind::DeleteRecords(req) => {
            ResponseKind::DeleteRecords(records::delete_records(ctx, req))
        }
        RequestKind::DescribeConfigs(req) => {
            ResponseKind::DescribeConfigs(configs::describe_configs(ctx, v, req))
        }
        RequestKind::AlterConfigs(req) => {
            ResponseKind::AlterConfigs(configs::alter_configs(ctx, req).await)
        }
        RequestKind::IncrementalAlterConfigs(req) => ResponseKind::IncrementalAlterConfigs(
            configs::incremental_alter_configs(ctx, req).await,
        ),
        RequestKind::DescribeCluster(req) => {
            ResponseKind::DescribeCluster(cluster::describe_cluster(ctx, v, req))
        }
        RequestKind::DescribeLogDirs(req) => {
            ResponseKind::DescribeLogDirs(cluster::describe_log_dirs(ctx, req))
        }
        RequestKind::DescribeProducers(req) => {
            ResponseKind::DescribeProducers(producers::describe_producers(ctx, req))
        }
        other => return Err(other),
    })
}

/// A refusal of one resource: a Kafka error code and the message that goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub code: i16,
    pub message: String,
}

impl ApiError {
    pub fn new(error: ResponseError, message: impl Into<String>) -> ApiError {
        ApiError {
            code: error.code(),
            message: message.into(),
        }
    }

    /// The message as the nullable string of a response.
    pub fn message(&self) -> Option<StrBytes> {
        Some(StrBytes::from_string(self.message.clone()))
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> ApiError {
        ApiError {
            code: error_code(&e),
            message: e.to_string(),
        }
    }
}

/// The outcome of one resource: `(error code, message)` with no message on success.
pub(crate) fn outcome<T>(result: &Result<T, ApiError>) -> (i16, Option<StrBytes>) {
    match result {
        Ok(_) => (0, None),
        Err(e) => (e.code, e.message()),
    }
}

/// Checks that the replicas of one partition are exactly this node.
pub(crate) fn check_replicas(
    node_id: i32,
    partition: i32,
    broker_ids: &[BrokerId],
) -> Result<(), ApiError> {
    match broker_ids {
        [only] if only.0 == node_id => Ok(()),
        [] => Err(ApiError::new(
            ResponseError::InvalidReplicaAssignment,
            format!(
                "partition {partition} has no replicas in the assignment; assign it to [{node_id}]"
            ),
        )),
        _ => Err(ApiError::new(
            ResponseError::InvalidReplicaAssignment,
            format!(
                "partition {partition} is assigned to brokers {:?}, but this is a single-node cluster whose only broker is {node_id}; assign every partition to [{node_id}]",
                broker_ids.iter().map(|b| b.0).collect::<Vec<_>>()
            ),
        )),
    }
}

/// Names that appear more than once, for refusing requests that name a resource twice.
pub(crate) fn duplicates<'a>(names: impl Iterator<Item = &'a str>) -> BTreeSet<&'a str> {
    let mut seen = BTreeSet::new();
    names.filter(|name| !seen.insert(*name)).collect()
}

/// The refusal of a topic listed twice in one request.
pub(crate) fn listed_twice(topic: &str) -> ApiError {
    ApiError::new(
        ResponseError::InvalidRequest,
        format!("the request lists topic '{topic}' more than once; list each topic once"),
    )
}
