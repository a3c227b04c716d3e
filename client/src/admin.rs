//! Admin requests: create, delete and grow topics; describe and change configs; partition sizes.

use std::collections::BTreeMap;

use kafka_protocol::messages::ApiKey;
use kafka_protocol::messages::create_partitions_request::{
    CreatePartitionsRequest, CreatePartitionsTopic,
};
use kafka_protocol::messages::create_topics_request::{
    CreatableTopic, CreatableTopicConfig, CreateTopicsRequest,
};
use kafka_protocol::messages::delete_topics_request::{DeleteTopicState, DeleteTopicsRequest};
use kafka_protocol::messages::describe_configs_request::{
    DescribeConfigsRequest, DescribeConfigsResource,
};
use kafka_protocol::messages::describe_log_dirs_request::{
    DescribableLogDirTopic, DescribeLogDirsRequest,
};
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig, IncrementalAlterConfigsRequest,
};
use kafka_protocol::protocol::StrBytes;

use crate::{ApiError, ClientError, KafkaClient, Result, topic_name, versions};
use quiver_common::topic::{ConfigChange, NewTopic};

/// Kafka's config resource types.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

/// What a config belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConfigResource {
    Topic(String),
    /// A broker by node id.
    Broker(i32),
}

impl ConfigResource {
    fn kind(&self) -> i8 {
        match self {
            ConfigResource::Topic(_) => RESOURCE_TOPIC,
            ConfigResource::Broker(_) => RESOURCE_BROKER,
        }
    }

    fn name(&self) -> String {
        match self {
            ConfigResource::Topic(name) => name.clone(),
            ConfigResource::Broker(id) => id.to_string(),
        }
    }
}

/// Where a config's value comes from (Kafka's `ConfigSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    /// Set on the topic: an override.
    Topic,
    DynamicBroker,
    DynamicDefaultBroker,
    /// The broker's config file.
    StaticBroker,
    /// Kafka's default.
    Default,
    DynamicBrokerLogger,
    Other(i8),
}

impl ConfigSource {
    fn from_code(code: i8) -> ConfigSource {
        match code {
            1 => ConfigSource::Topic,
            2 => ConfigSource::DynamicBroker,
            3 => ConfigSource::DynamicDefaultBroker,
            4 => ConfigSource::StaticBroker,
            5 => ConfigSource::Default,
            6 => ConfigSource::DynamicBrokerLogger,
            other => ConfigSource::Other(other),
        }
    }
}

/// One config of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: String,
    /// `None` for sensitive configs, whose values brokers do not tell.
    pub value: Option<String>,
    pub source: ConfigSource,
    pub read_only: bool,
    pub sensitive: bool,
}

/// A topic as CreateTopics reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedTopic {
    pub name: String,
    /// CreateTopics v7+.
    pub id: Option<uuid::Uuid>,
    /// CreateTopics v5+; `None` from older brokers (describe the topic to learn it).
    pub partitions: Option<i32>,
    pub replication_factor: Option<i16>,
    /// Every config of the new topic (v5+).
    pub configs: Option<Vec<ConfigEntry>>,
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

impl KafkaClient {
    /// Creates topics; `partitions: None` takes the broker's `num.partitions`, and the
    /// replication factor is always the broker's default. With `validate_only` the broker checks
    /// and creates nothing.
    pub async fn create_topics(
        &self,
        topics: &[NewTopic],
        validate_only: bool,
    ) -> Result<Vec<(String, Result<CreatedTopic, ApiError>)>> {
        let conn = self.admin_connection().await?;
        let timeout_ms = self.request_timeout_ms();
        let request = CreateTopicsRequest::default()
            .with_topics(
                topics
                    .iter()
                    .map(|t| {
                        CreatableTopic::default()
                            .with_name(topic_name(&t.name))
                            .with_num_partitions(t.partitions.unwrap_or(-1))
                            .with_replication_factor(-1)
                            .with_configs(
                                t.configs
                                    .iter()
                                    .map(|(k, v)| {
                                        CreatableTopicConfig::default()
                                            .with_name(str_bytes(k))
                                            .with_value(Some(str_bytes(v)))
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            )
            .with_timeout_ms(timeout_ms)
            .with_validate_only(validate_only);
        let (version, response) = self
            .call(
                &conn,
                ApiKey::CreateTopics,
                versions::CREATE_TOPICS,
                self.request_timeout(),
                |_| Ok(request),
            )
            .await?;
        Ok(response
            .topics
            .into_iter()
            .map(|t| {
                let name = t.name.0.to_string();
                let result = match ApiError::from_code(t.error_code, t.error_message.as_deref()) {
                    Some(e) => Err(e),
                    None => Ok(CreatedTopic {
                        name: name.clone(),
                        id: Some(t.topic_id).filter(|id| !id.is_nil()),
                        partitions: (version >= 5 && t.num_partitions >= 0)
                            .then_some(t.num_partitions),
                        replication_factor: (version >= 5 && t.replication_factor >= 0)
                            .then_some(t.replication_factor),
                        configs: (version >= 5).then(|| {
                            t.configs
                                .unwrap_or_default()
                                .into_iter()
                                .map(|c| ConfigEntry {
                                    name: c.name.to_string(),
                                    value: c.value.map(|v| v.to_string()),
                                    source: ConfigSource::from_code(c.config_source),
                                    read_only: c.read_only,
                                    sensitive: c.is_sensitive,
                                })
                                .collect()
                        }),
                    }),
                };
                (name, result)
            })
            .collect())
    }

    /// Deletes topics and their data.
    pub async fn delete_topics(
        &self,
        names: &[&str],
    ) -> Result<Vec<(String, Result<(), ApiError>)>> {
        let conn = self.admin_connection().await?;
        let timeout_ms = self.request_timeout_ms();
        let (_, response) = self
            .call(
                &conn,
                ApiKey::DeleteTopics,
                versions::DELETE_TOPICS,
                self.request_timeout(),
                |v| {
                    let request = DeleteTopicsRequest::default().with_timeout_ms(timeout_ms);
                    Ok(if v >= 6 {
                        request.with_topics(
                            names
                                .iter()
                                .map(|n| DeleteTopicState::default().with_name(Some(topic_name(n))))
                                .collect(),
                        )
                    } else {
                        request.with_topic_names(names.iter().map(|n| topic_name(n)).collect())
                    })
                },
            )
            .await?;
        for name in names {
            self.forget_leaders(name);
        }
        Ok(response
            .responses
            .into_iter()
            .map(|r| {
                let name = r.name.map(|n| n.0.to_string()).unwrap_or_default();
                let result = match ApiError::from_code(r.error_code, r.error_message.as_deref()) {
                    Some(e) => Err(e),
                    None => Ok(()),
                };
                (name, result)
            })
            .collect())
    }

    /// Raises the partition count of each `(topic, new total)`.
    pub async fn create_partitions(
        &self,
        totals: &[(&str, i32)],
        validate_only: bool,
    ) -> Result<Vec<(String, Result<(), ApiError>)>> {
        let conn = self.admin_connection().await?;
        let timeout_ms = self.request_timeout_ms();
        let request = CreatePartitionsRequest::default()
            .with_topics(
                totals
                    .iter()
                    .map(|(name, count)| {
                        CreatePartitionsTopic::default()
                            .with_name(topic_name(name))
                            .with_count(*count)
                            .with_assignments(None)
                    })
                    .collect(),
            )
            .with_timeout_ms(timeout_ms)
            .with_validate_only(validate_only);
        let (_, response) = self
            .call(
                &conn,
                ApiKey::CreatePartitions,
                versions::CREATE_PARTITIONS,
                self.request_timeout(),
                |_| Ok(request),
            )
            .await?;
        for (name, _) in totals {
            self.forget_leaders(name);
        }
        Ok(response
            .results
            .into_iter()
            .map(|r| {
                let result = match ApiError::from_code(r.error_code, r.error_message.as_deref()) {
                    Some(e) => Err(e),
                    None => Ok(()),
                };
                (r.name.0.to_string(), result)
            })
            .collect())
    }

    /// Every config of each resource, with its value and source. Topic configs are asked of the
    /// controller (or any broker), a broker's of that broker.
    pub async fn describe_configs(
        &self,
        resources: &[ConfigResource],
    ) -> Result<Vec<(ConfigResource, Result<Vec<ConfigEntry>, ApiError>)>> {
        let mut out = Vec::with_capacity(resources.len());
        for (target, group) in by_target(resources) {
            let conn = match target {
                Some(node) => self.node_connection(node).await?,
                None => self.admin_connection().await?,
            };
            let request = DescribeConfigsRequest::default().with_resources(
                group
                    .iter()
                    .map(|r| {
                        DescribeConfigsResource::default()
                            .with_resource_type(r.kind())
                            .with_resource_name(str_bytes(&r.name()))
                            .with_configuration_keys(None)
                    })
                    .collect(),
            );
            let (_, response) = self
                .call(
                    &conn,
                    ApiKey::DescribeConfigs,
                    versions::DESCRIBE_CONFIGS,
                    self.request_timeout(),
                    |_| Ok(request),
                )
                .await?;
            for result in response.results {
                let Some(resource) = group.iter().find(|r| {
                    r.kind() == result.resource_type && r.name() == result.resource_name.as_str()
                }) else {
                    continue;
                };
                let entries =
                    match ApiError::from_code(result.error_code, result.error_message.as_deref()) {
                        Some(e) => Err(e),
                        None => Ok(result
                            .configs
                            .into_iter()
                            .map(|c| ConfigEntry {
                                name: c.name.to_string(),
                                value: c.value.map(|v| v.to_string()),
                                source: ConfigSource::from_code(c.config_source),
                                read_only: c.read_only,
                                sensitive: c.is_sensitive,
                            })
                            .collect()),
                    };
                out.push(((*resource).clone(), entries));
            }
        }
        Ok(out)
    }

    /// Sets and removes configs. The changes to one resource are applied together or not at
    /// all; with `validate_only` the broker checks and changes nothing.
    pub async fn incremental_alter_configs(
        &self,
        changes: &[(ConfigResource, Vec<ConfigChange>)],
        validate_only: bool,
    ) -> Result<Vec<(ConfigResource, Result<(), ApiError>)>> {
        const SET: i8 = 0;
        const DELETE: i8 = 1;
        let resources: Vec<ConfigResource> = changes.iter().map(|(r, _)| r.clone()).collect();
        let mut out = Vec::with_capacity(changes.len());
        for (target, group) in by_target(&resources) {
            let conn = match target {
                Some(node) => self.node_connection(node).await?,
                None => self.admin_connection().await?,
            };
            let request = IncrementalAlterConfigsRequest::default()
                .with_resources(
                    changes
                        .iter()
                        .filter(|(r, _)| group.contains(&r))
                        .map(|(r, ops)| {
                            AlterConfigsResource::default()
                                .with_resource_type(r.kind())
                                .with_resource_name(str_bytes(&r.name()))
                                .with_configs(
                                    ops.iter()
                                        .map(|op| match op {
                                            ConfigChange::Set(k, v) => AlterableConfig::default()
                                                .with_name(str_bytes(k))
                                                .with_config_operation(SET)
                                                .with_value(Some(str_bytes(v))),
                                            ConfigChange::Delete(k) => AlterableConfig::default()
                                                .with_name(str_bytes(k))
                                                .with_config_operation(DELETE)
                                                .with_value(None),
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                )
                .with_validate_only(validate_only);
            let (_, response) = self
                .call(
                    &conn,
                    ApiKey::IncrementalAlterConfigs,
                    versions::INCREMENTAL_ALTER_CONFIGS,
                    self.request_timeout(),
                    |_| Ok(request),
                )
                .await?;
            for r in response.responses {
                let Some(resource) = group
                    .iter()
                    .find(|g| g.kind() == r.resource_type && g.name() == r.resource_name.as_str())
                else {
                    continue;
                };
                let result = match ApiError::from_code(r.error_code, r.error_message.as_deref()) {
                    Some(e) => Err(e),
                    None => Ok(()),
                };
                out.push(((*resource).clone(), result));
            }
        }
        Ok(out)
    }

    /// The size in bytes of each of `partitions` of `topic` on its leader (DescribeLogDirs).
    /// Partitions a broker did not report are left out.
    pub async fn partition_sizes(
        &self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<BTreeMap<i32, u64>> {
        let (by_leader, _) = self.by_leader(topic, partitions).await?;
        let mut sizes = BTreeMap::new();
        for (node, partitions) in by_leader {
            let conn = self.node_connection(node).await?;
            let request = DescribeLogDirsRequest::default().with_topics(Some(vec![
                DescribableLogDirTopic::default()
                    .with_topic(topic_name(topic))
                    .with_partitions(partitions.clone()),
            ]));
            let (_, response) = self
                .call(
                    &conn,
                    ApiKey::DescribeLogDirs,
                    versions::DESCRIBE_LOG_DIRS,
                    self.request_timeout(),
                    |_| Ok(request),
                )
                .await?;
            if let Some(e) = ApiError::from_code(response.error_code, None) {
                return Err(ClientError::Api {
                    context: format!("cannot describe the log directories of broker {node}"),
                    error: e,
                });
            }
            for dir in response.results.iter().filter(|d| d.error_code == 0) {
                for t in dir.topics.iter().filter(|t| t.name.0.as_str() == topic) {
                    for p in t.partitions.iter().filter(|p| !p.is_future_key) {
                        if partitions.contains(&p.partition_index) {
                            sizes.insert(p.partition_index, p.partition_size.max(0) as u64);
                        }
                    }
                }
            }
        }
        Ok(sizes)
    }
}

/// Splits resources by where their requests go: `None` for the controller (topics), a node id
/// for a broker's own configs.
fn by_target(resources: &[ConfigResource]) -> BTreeMap<Option<i32>, Vec<&ConfigResource>> {
    let mut out: BTreeMap<Option<i32>, Vec<&ConfigResource>> = BTreeMap::new();
    for r in resources {
        let target = match r {
            ConfigResource::Topic(_) => None,
            ConfigResource::Broker(id) => Some(*id),
        };
        out.entry(target).or_default().push(r);
    }
    out
}
