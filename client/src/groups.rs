//! Consumer groups: finding the coordinator of a group (or of a transactional id), listing and
//! describing groups, and reading and committing offsets (as a client outside the group:
//! generation -1, no member id).
//!
//! Group requests go to the group's coordinator. While a coordinator loads or moves, Kafka
//! answers with a retriable error and processes nothing, so those requests are tried again
//! (up to [`crate::ClientConfig::retry_attempts_max`]) after looking the coordinator up anew.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_groups_request::DescribeGroupsRequest;
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::list_groups_request::ListGroupsRequest;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequest, OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequest, OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::{ApiKey, GroupId};
use kafka_protocol::protocol::StrBytes;
use quiver_common::kafka::consumer_protocol;

use crate::connection::Connection;
use crate::{
    ApiError, ClientError, KafkaClient, Lane, Node, Result, address, topic_name, versions,
};

/// A group as ListGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedGroup {
    pub group_id: String,
    /// `consumer` for Kafka consumers; empty for groups that only commit offsets.
    pub protocol_type: String,
    /// ListGroups v4+ (e.g. `Stable`, `Empty`).
    pub state: Option<String>,
}

/// A group as DescribeGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub group_id: String,
    /// `Stable`, `PreparingRebalance`, `CompletingRebalance`, `Empty` or `Dead` (a group the
    /// coordinator does not know).
    pub state: String,
    pub protocol_type: String,
    /// The assignor of a consumer group (e.g. `range`).
    pub protocol: String,
    pub members: Vec<GroupMember>,
}

/// One member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// The partitions assigned to it, by topic; decoded for consumer groups only (empty for
    /// other protocols and during a rebalance).
    pub assignment: Vec<(String, Vec<i32>)>,
}

/// Who a group member is in the group's current generation: what every request it makes as a
/// member carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemberIdentity {
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
}

/// A committed offset of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    pub topic: String,
    pub partition: i32,
    /// `None` when the group has no offset for the partition.
    pub offset: Option<i64>,
    pub metadata: Option<String>,
    pub error: Option<ApiError>,
}

/// The errors after which a request should go to a (re-)looked-up coordinator.
pub(crate) fn coordinator_not_ready(e: &ApiError) -> bool {
    matches!(
        e.error,
        ResponseError::CoordinatorLoadInProgress
            | ResponseError::CoordinatorNotAvailable
            | ResponseError::NotCoordinator
    )
}

pub(crate) fn group_id(group: &str) -> GroupId {
    GroupId(StrBytes::from_string(group.to_owned()))
}

/// The partitions in a consumer group member's assignment (Kafka's ConsumerProtocolAssignment,
/// prefixed with its version). Empty when there is none or it does not decode.
fn decode_assignment(bytes: &Bytes) -> Vec<(String, Vec<i32>)> {
    consumer_protocol::decode_assignment(bytes).unwrap_or_default()
}

/// What a coordinator coordinates: the key type of a FindCoordinator request. Each kind has its
/// own coordinator (a group's and a transactional id of the same name may live on different
/// brokers), so the client remembers them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CoordinatorType {
    /// A consumer group (key type 0).
    Group,
    /// A transactional id (key type 1; FindCoordinator v1+).
    Transaction,
}

impl CoordinatorType {
    /// Kafka's `key_type` for this kind of key.
    fn key_type(self) -> i8 {
        match self {
            CoordinatorType::Group => 0,
            CoordinatorType::Transaction => 1,
        }
    }

    /// How a key of this kind is named in messages.
    fn noun(self) -> &'static str {
        match self {
            CoordinatorType::Group => "group",
            CoordinatorType::Transaction => "transactional id",
        }
    }
}

impl KafkaClient {
    /// The broker that coordinates `group`.
    pub async fn find_coordinator(&self, group: &str) -> Result<Node> {
        self.find_coordinator_of(CoordinatorType::Group, group)
            .await
    }

    /// The broker that coordinates `key`: a group or a transactional id, as `kind` says.
    pub async fn find_coordinator_of(&self, kind: CoordinatorType, key: &str) -> Result<Node> {
        let attempts = self.config.retry_attempts_max.max(1);
        for attempt in 1..=attempts {
            let conn = self.bootstrap_connection().await?;
            let (version, response) = self
                .call(
                    &conn,
                    ApiKey::FindCoordinator,
                    versions::FIND_COORDINATOR,
                    self.request_timeout(),
                    |v| {
                        if v < 1 && kind != CoordinatorType::Group {
                            // v0 has no key type: every key is a group's.
                            return Err(ClientError::Unsupported {
                                addr: conn.addr().to_owned(),
                                api: "FindCoordinator for a transactional id".into(),
                                ours: (1, versions::FIND_COORDINATOR.1),
                                theirs: Some((0, 0)),
                            });
                        }
                        let name = StrBytes::from_string(key.to_owned());
                        let request = FindCoordinatorRequest::default();
                        let request = if v >= 1 {
                            request.with_key_type(kind.key_type())
                        } else {
                            request
                        };
                        Ok(if v >= 4 {
                            request.with_coordinator_keys(vec![name])
                        } else {
                            request.with_key(name)
                        })
                    },
                )
                .await?;
            let (code, message, node) = if version >= 4 {
                let Some(c) = response.coordinators.into_iter().next() else {
                    return Err(ClientError::Protocol {
                        addr: conn.addr().to_owned(),
                        reason: "FindCoordinator answered without a coordinator".into(),
                    });
                };
                let node = Node {
                    node_id: c.node_id.0,
                    host: c.host.to_string(),
                    port: c.port,
                    rack: None,
                };
                (c.error_code, c.error_message.map(|m| m.to_string()), node)
            } else {
                let node = Node {
                    node_id: response.node_id.0,
                    host: response.host.to_string(),
                    port: response.port,
                    rack: None,
                };
                (
                    response.error_code,
                    response.error_message.map(|m| m.to_string()),
                    node,
                )
            };
            match ApiError::from_code(code, message.as_deref()) {
                None => {
                    self.remember_coordinator(kind, key, &node).await?;
                    return Ok(node);
                }
                Some(e) if e.is_retriable() && attempt < attempts => self.backoff().await,
                Some(error) => {
                    return Err(ClientError::Api {
                        context: format!("cannot find the coordinator of {} '{key}'", kind.noun()),
                        error,
                    });
                }
            }
        }
        Err(ClientError::InvalidArgument(
            "no attempts configured (retry_attempts_max)".into(),
        ))
    }

    async fn remember_coordinator(
        &self,
        kind: CoordinatorType,
        key: &str,
        node: &Node,
    ) -> Result<()> {
        if self.cluster.lock().brokers.is_empty() {
            self.metadata(Some(&[]), false).await?;
        }
        let mut cluster = self.cluster.lock();
        cluster
            .brokers
            .entry(node.node_id)
            .or_insert_with(|| address(&node.host, node.port));
        cluster
            .coordinators
            .insert((kind, key.to_owned()), node.node_id);
        Ok(())
    }

    async fn coordinator_connection(
        &self,
        kind: CoordinatorType,
        key: &str,
        lane: Lane,
    ) -> Result<Arc<Connection>> {
        let known = self
            .cluster
            .lock()
            .coordinators
            .get(&(kind, key.to_owned()))
            .copied();
        let node = match known {
            Some(node) => node,
            None => self.find_coordinator_of(kind, key).await?.node_id,
        };
        self.node_connection_on(node, lane).await
    }

    /// Runs `request` on the coordinator of `group`, again on a fresh lookup while the
    /// coordinator is not ready.
    pub(crate) async fn on_coordinator<T, F, Fut>(&self, group: &str, request: F) -> Result<T>
    where
        F: FnMut(Arc<Connection>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.on_coordinator_of(CoordinatorType::Group, group, Lane::Control, request)
            .await
    }

    /// [`Self::on_coordinator`] on the connection `lane`.
    pub(crate) async fn on_coordinator_lane<T, F, Fut>(
        &self,
        group: &str,
        lane: Lane,
        request: F,
    ) -> Result<T>
    where
        F: FnMut(Arc<Connection>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.on_coordinator_of(CoordinatorType::Group, group, lane, request)
            .await
    }

    /// Runs `request` on the coordinator of `key` (a group or a transactional id) on the
    /// connection `lane`, again on a fresh lookup while the coordinator is not ready.
    pub(crate) async fn on_coordinator_of<T, F, Fut>(
        &self,
        kind: CoordinatorType,
        key: &str,
        lane: Lane,
        mut request: F,
    ) -> Result<T>
    where
        F: FnMut(Arc<Connection>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let attempts = self.config.retry_attempts_max.max(1);
        let mut attempt = 1;
        loop {
            let conn = self.coordinator_connection(kind, key, lane).await?;
            match request(conn).await {
                Err(ClientError::Api { error, .. })
                    if coordinator_not_ready(&error) && attempt < attempts =>
                {
                    self.cluster
                        .lock()
                        .coordinators
                        .remove(&(kind, key.to_owned()));
                    attempt += 1;
                    self.backoff().await;
                }
                other => return other,
            }
        }
    }

    /// Every group of the cluster (each broker lists the groups it coordinates), by group id.
    pub async fn list_groups(&self) -> Result<Vec<ListedGroup>> {
        let metadata = self.metadata(Some(&[]), false).await?;
        let mut groups = BTreeMap::new();
        for broker in &metadata.brokers {
            let attempts = self.config.retry_attempts_max.max(1);
            for attempt in 1..=attempts {
                let conn = self.node_connection(broker.node_id).await?;
                let (version, response) = self
                    .call(
                        &conn,
                        ApiKey::ListGroups,
                        versions::LIST_GROUPS,
                        self.request_timeout(),
                        |_| Ok(ListGroupsRequest::default()),
                    )
                    .await?;
                match ApiError::from_code(response.error_code, None) {
                    None => {
                        for g in response.groups {
                            let id = g.group_id.0.to_string();
                            groups.insert(
                                id.clone(),
                                ListedGroup {
                                    group_id: id,
                                    protocol_type: g.protocol_type.to_string(),
                                    state: (version >= 4).then(|| g.group_state.to_string()),
                                },
                            );
                        }
                        break;
                    }
                    Some(e) if e.is_retriable() && attempt < attempts => self.backoff().await,
                    Some(error) => {
                        return Err(ClientError::Api {
                            context: format!("cannot list the groups of broker {}", broker.node_id),
                            error,
                        });
                    }
                }
            }
        }
        Ok(groups.into_values().collect())
    }

    /// Describes each group (concurrently, each at its coordinator). A group the coordinator
    /// does not know comes back in state `Dead` with no members, as Kafka reports it.
    pub async fn describe_groups(
        &self,
        groups: &[&str],
    ) -> Result<Vec<(String, Result<GroupDescription, ApiError>)>> {
        let described =
            futures::future::join_all(groups.iter().map(|g| self.describe_group(g))).await;
        let mut out = Vec::with_capacity(groups.len());
        for (group, result) in groups.iter().zip(described) {
            match result {
                Ok(d) => out.push(((*group).to_owned(), Ok(d))),
                Err(ClientError::Api { error, .. }) => out.push(((*group).to_owned(), Err(error))),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn describe_group(&self, group: &str) -> Result<GroupDescription> {
        self.on_coordinator(group, |conn| async move {
            let (_, response) = self
                .call(
                    &conn,
                    ApiKey::DescribeGroups,
                    versions::DESCRIBE_GROUPS,
                    self.request_timeout(),
                    |_| Ok(DescribeGroupsRequest::default().with_groups(vec![group_id(group)])),
                )
                .await?;
            let Some(g) = response
                .groups
                .into_iter()
                .find(|g| g.group_id.0.as_str() == group)
            else {
                return Err(ClientError::Protocol {
                    addr: conn.addr().to_owned(),
                    reason: format!("DescribeGroups answered without group '{group}'"),
                });
            };
            if let Some(error) = ApiError::from_code(g.error_code, g.error_message.as_deref()) {
                return Err(ClientError::Api {
                    context: format!("cannot describe group '{group}'"),
                    error,
                });
            }
            let consumer = g.protocol_type.as_str() == "consumer";
            Ok(GroupDescription {
                group_id: group.to_owned(),
                state: g.group_state.to_string(),
                protocol_type: g.protocol_type.to_string(),
                protocol: g.protocol_data.to_string(),
                members: g
                    .members
                    .into_iter()
                    .map(|m| GroupMember {
                        member_id: m.member_id.to_string(),
                        group_instance_id: m.group_instance_id.map(|i| i.to_string()),
                        client_id: m.client_id.to_string(),
                        client_host: m.client_host.to_string(),
                        assignment: if consumer {
                            decode_assignment(&m.member_assignment)
                        } else {
                            Vec::new()
                        },
                    })
                    .collect(),
            })
        })
        .await
    }

    /// The offsets `group` committed: for the given `(topic, partitions)`, or for every
    /// partition it committed when `topics` is `None` (OffsetFetch v2+).
    pub async fn offset_fetch(
        &self,
        group: &str,
        topics: Option<&[(&str, Vec<i32>)]>,
    ) -> Result<Vec<CommittedOffset>> {
        self.offset_fetch_with(group, topics, false).await
    }

    /// [`KafkaClient::offset_fetch`] with `require_stable` (OffsetFetch v7+, KIP-447): a
    /// partition whose offsets wait in an open transaction answers `UNSTABLE_OFFSET_COMMIT`
    /// (in [`CommittedOffset::error`], or as the call's error) instead of the older offset.
    /// Against a broker older than v7 the offsets may be stale.
    pub async fn offset_fetch_stable(
        &self,
        group: &str,
        topics: Option<&[(&str, Vec<i32>)]>,
    ) -> Result<Vec<CommittedOffset>> {
        self.offset_fetch_with(group, topics, true).await
    }

    async fn offset_fetch_with(
        &self,
        group: &str,
        topics: Option<&[(&str, Vec<i32>)]>,
        require_stable: bool,
    ) -> Result<Vec<CommittedOffset>> {
        self.on_coordinator(group, |conn| async move {
            let addr = conn.addr().to_owned();
            let (version, response) = self
                .call(
                    &conn,
                    ApiKey::OffsetFetch,
                    versions::OFFSET_FETCH,
                    self.request_timeout(),
                    |v| {
                        if v >= 8 {
                            let wanted = topics.map(|ts| {
                                ts.iter()
                                    .map(|(name, partitions)| {
                                        OffsetFetchRequestTopics::default()
                                            .with_name(topic_name(name))
                                            .with_partition_indexes(partitions.clone())
                                    })
                                    .collect()
                            });
                            return Ok(OffsetFetchRequest::default()
                                .with_require_stable(require_stable)
                                .with_groups(vec![
                                    OffsetFetchRequestGroup::default()
                                        .with_group_id(group_id(group))
                                        .with_topics(wanted),
                                ]));
                        }
                        if topics.is_none() && v < 2 {
                            return Err(ClientError::Unsupported {
                                addr: addr.clone(),
                                api: "OffsetFetch".into(),
                                ours: (2, versions::OFFSET_FETCH.1),
                                theirs: Some((v, v)),
                            });
                        }
                        let wanted = topics.map(|ts| {
                            ts.iter()
                                .map(|(name, partitions)| {
                                    OffsetFetchRequestTopic::default()
                                        .with_name(topic_name(name))
                                        .with_partition_indexes(partitions.clone())
                                })
                                .collect()
                        });
                        let request = OffsetFetchRequest::default()
                            .with_group_id(group_id(group))
                            .with_topics(wanted);
                        Ok(if v >= 7 {
                            request.with_require_stable(require_stable)
                        } else {
                            request
                        })
                    },
                )
                .await?;
            let partition =
                |topic: &str, p: i32, offset: i64, metadata: Option<&StrBytes>, code: i16| {
                    CommittedOffset {
                        topic: topic.to_owned(),
                        partition: p,
                        offset: Some(offset).filter(|&o| o >= 0),
                        metadata: metadata.map(ToString::to_string),
                        error: ApiError::from_code(code, None),
                    }
                };
            let (code, offsets): (i16, Vec<CommittedOffset>) = if version >= 8 {
                let Some(g) = response.groups.into_iter().next() else {
                    return Err(ClientError::Protocol {
                        addr,
                        reason: format!("OffsetFetch answered without group '{group}'"),
                    });
                };
                let offsets = g
                    .topics
                    .iter()
                    .flat_map(|t| {
                        t.partitions.iter().map(|p| {
                            partition(
                                t.name.0.as_str(),
                                p.partition_index,
                                p.committed_offset,
                                p.metadata.as_ref(),
                                p.error_code,
                            )
                        })
                    })
                    .collect();
                (g.error_code, offsets)
            } else {
                let offsets = response
                    .topics
                    .iter()
                    .flat_map(|t| {
                        t.partitions.iter().map(|p| {
                            partition(
                                t.name.0.as_str(),
                                p.partition_index,
                                p.committed_offset,
                                p.metadata.as_ref(),
                                p.error_code,
                            )
                        })
                    })
                    .collect();
                (response.error_code, offsets)
            };
            if let Some(error) = ApiError::from_code(code, None) {
                return Err(ClientError::Api {
                    context: format!("cannot read the committed offsets of group '{group}'"),
                    error,
                });
            }
            Ok(offsets)
        })
        .await
    }

    /// Commits `(topic, partition, offset)`s for `group` from outside the group (generation
    /// -1, no member id), as Kafka's admin tools do. Brokers accept that only while the group
    /// has no active members.
    pub async fn offset_commit(
        &self,
        group: &str,
        offsets: &[(&str, i32, i64)],
    ) -> Result<Vec<(String, i32, Result<(), ApiError>)>> {
        self.commit_offsets(group, None, offsets).await
    }

    /// [`KafkaClient::offset_commit`] with each offset's metadata string (Kafka's
    /// `OffsetAndMetadata`), which [`KafkaClient::offset_fetch`] returns with it.
    pub async fn offset_commit_with_metadata(
        &self,
        group: &str,
        offsets: &[(&str, i32, i64, &str)],
    ) -> Result<Vec<(String, i32, Result<(), ApiError>)>> {
        self.commit_offsets_with_metadata(group, None, offsets)
            .await
    }

    /// Commits offsets for `group`, as `member` (its generation, member id and instance id)
    /// or from outside the group (`None`).
    pub(crate) async fn commit_offsets(
        &self,
        group: &str,
        member: Option<&MemberIdentity>,
        offsets: &[(&str, i32, i64)],
    ) -> Result<Vec<(String, i32, Result<(), ApiError>)>> {
        let with_metadata: Vec<(&str, i32, i64, &str)> =
            offsets.iter().map(|&(t, p, o)| (t, p, o, "")).collect();
        self.commit_offsets_with_metadata(group, member, &with_metadata)
            .await
    }

    pub(crate) async fn commit_offsets_with_metadata(
        &self,
        group: &str,
        member: Option<&MemberIdentity>,
        offsets: &[(&str, i32, i64, &str)],
    ) -> Result<Vec<(String, i32, Result<(), ApiError>)>> {
        let mut by_topic: BTreeMap<&str, Vec<(i32, i64, &str)>> = BTreeMap::new();
        for (topic, partition, offset, metadata) in offsets {
            by_topic
                .entry(topic)
                .or_default()
                .push((*partition, *offset, metadata));
        }
        let by_topic = &by_topic;
        self.on_coordinator(group, |conn| async move {
            let version = conn.version(ApiKey::OffsetCommit, versions::OFFSET_COMMIT)?;
            let mut request = OffsetCommitRequest::default()
                .with_group_id(group_id(group))
                .with_generation_id_or_member_epoch(member.map_or(-1, |m| m.generation_id))
                .with_member_id(StrBytes::from_string(
                    member.map(|m| m.member_id.clone()).unwrap_or_default(),
                ))
                .with_topics(
                    by_topic
                        .iter()
                        .map(|(topic, partitions)| {
                            OffsetCommitRequestTopic::default()
                                .with_name(topic_name(topic))
                                .with_partitions(
                                    partitions
                                        .iter()
                                        .map(|(p, offset, metadata)| {
                                            OffsetCommitRequestPartition::default()
                                                .with_partition_index(*p)
                                                .with_committed_offset(*offset)
                                                .with_committed_metadata(
                                                    Some(metadata).filter(|m| !m.is_empty()).map(
                                                        |m| StrBytes::from_string(m.to_string()),
                                                    ),
                                                )
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                );
            if let Some(instance) = member.and_then(|m| m.group_instance_id.as_ref())
                && version >= 7
            {
                request =
                    request.with_group_instance_id(Some(StrBytes::from_string(instance.clone())));
            }
            let (_, response) = self
                .call(
                    &conn,
                    ApiKey::OffsetCommit,
                    versions::OFFSET_COMMIT,
                    self.request_timeout(),
                    |_| Ok(request),
                )
                .await?;
            let mut out = Vec::new();
            for t in response.topics {
                for p in t.partitions {
                    let result = match ApiError::from_code(p.error_code, None) {
                        // Nothing was committed: let the caller's retry find the coordinator.
                        Some(error) if coordinator_not_ready(&error) => {
                            return Err(ClientError::Api {
                                context: format!("cannot commit offsets of group '{group}'"),
                                error,
                            });
                        }
                        Some(error) => Err(error),
                        None => Ok(()),
                    };
                    out.push((t.name.0.to_string(), p.partition_index, result));
                }
            }
            Ok(out)
        })
        .await
    }
}
