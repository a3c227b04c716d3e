//! Quiver's async Kafka client: what the CLI uses to talk to a running `quiver server`, and what
//! the engine and connectors use to talk to any Kafka-compatible cluster. It links neither the
//! broker's log nor its coordinators; what it shares with the broker (the envelope schema, the
//! record batch codec, compression, the partitioner) comes from `quiver-common`.
//!
//! [`KafkaClient`] connects to one of the bootstrap brokers, learns the cluster from Metadata,
//! and sends each request where Kafka wants it: produce, fetch, list-offsets and
//! describe-producers to the partition leader, group requests to the group's coordinator,
//! describe-transactions to the transactional id's coordinator, admin requests to the
//! controller. Each broker gets a connection (`connection`; a second one for fetches, whose long
//! polls would hold up the rest), opened on first use and reopened after a failure. ApiVersions
//! on connect fixes the version of every API: the highest both sides speak, or a clear error
//! when there is none.
//! Everything is bounded: requests in flight per connection, response size, waits.
//!
//! Records travel as Arrow envelope batches ([`quiver_common::envelope_schema`]), converted to
//! and from Kafka's v2 record batches by [`quiver_common::kafka::records`] without per-record
//! structs.
//!
//! Batch operations (create several topics, fetch several partitions) return a result per
//! resource, so one bad topic does not hide what happened to the others; the error of one
//! resource is an [`ApiError`] (a Kafka error code and the broker's message).
//!
//! - `admin`: topics, partitions and configs.
//! - `data`: produce, fetch, list offsets.
//! - `groups`: coordinators, listing and describing groups, committed offsets.
//! - `membership`: joining a consumer group, heartbeats, rebalances, commits as a member.
//! - `assignor`: the range and round-robin assignors a group leader runs.
//! - `producer`: the idempotent producer (producer id, sequence numbers, compression).
//! - `txn_producer`: the transactional producer (records and group offsets committed or
//!   aborted together).
//! - `transactions`: dropping aborted transactions' records from `read_committed` fetches.
//! - `txn_admin`: listing and describing transactions, and the producers of partitions.

mod admin;
pub mod assignor;
mod connection;
mod data;
pub mod error;
mod groups;
mod membership;
mod producer;
mod transactions;
mod txn_admin;
mod txn_producer;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
use kafka_protocol::messages::{ApiKey, TopicName};
use kafka_protocol::protocol::{Request, StrBytes};

pub use admin::{ConfigEntry, ConfigResource, ConfigSource, CreatedTopic};
pub use assignor::Assignor;
use connection::Connection;
pub use data::{
    FetchOptions, FetchedRecords, IsolationLevel, ListedOffset, OffsetSpec, ProduceAck,
};
pub use error::{ApiError, ClientError, Result};
pub use groups::{CommittedOffset, CoordinatorType, GroupDescription, GroupMember, ListedGroup};
pub use membership::{GroupMembership, MembershipConfig, RebalanceListener, TopicPartition};
pub use producer::{IdempotentProducer, ProducerConfig};
pub use quiver_common::topic::{ConfigChange, NewTopic};
pub use txn_admin::{ListedTransaction, ProducerState, TRANSACTION_STATES, TransactionDescription};
pub use txn_producer::{TransactionalProducer, TxnOffset};

/// The versions of each API this client speaks, `(min, max)`. The minimums are where the
/// request has the fields this client relies on (e.g. CreateTopics v4 for the broker's default
/// partition count); the maximums are the newest versions whose fields it sets correctly.
pub(crate) mod versions {
    pub const METADATA: (i16, i16) = (1, 12);
    pub const PRODUCE: (i16, i16) = (3, 11);
    pub const FETCH: (i16, i16) = (4, 12);
    pub const LIST_OFFSETS: (i16, i16) = (1, 8);
    pub const CREATE_TOPICS: (i16, i16) = (4, 7);
    pub const DELETE_TOPICS: (i16, i16) = (1, 6);
    pub const CREATE_PARTITIONS: (i16, i16) = (0, 3);
    pub const DESCRIBE_CONFIGS: (i16, i16) = (1, 4);
    pub const INCREMENTAL_ALTER_CONFIGS: (i16, i16) = (0, 1);
    pub const DESCRIBE_LOG_DIRS: (i16, i16) = (1, 4);
    pub const FIND_COORDINATOR: (i16, i16) = (0, 4);
    pub const LIST_GROUPS: (i16, i16) = (0, 5);
    pub const DESCRIBE_GROUPS: (i16, i16) = (0, 5);
    pub const OFFSET_FETCH: (i16, i16) = (1, 8);
    pub const OFFSET_COMMIT: (i16, i16) = (2, 8);
    /// v1 adds the rebalance timeout, which a member needs to say how long its revocation may take.
    pub const JOIN_GROUP: (i16, i16) = (1, 9);
    pub const SYNC_GROUP: (i16, i16) = (0, 5);
    pub const HEARTBEAT: (i16, i16) = (0, 4);
    pub const LEAVE_GROUP: (i16, i16) = (0, 5);
    pub const INIT_PRODUCER_ID: (i16, i16) = (0, 4);
    /// v1 adds a duration filter, which this client leaves unset; v2's id pattern is not used.
    pub const LIST_TRANSACTIONS: (i16, i16) = (0, 1);
    pub const DESCRIBE_TRANSACTIONS: (i16, i16) = (0, 0);
    pub const DESCRIBE_PRODUCERS: (i16, i16) = (0, 0);
    /// v2 answers PRODUCER_FENCED rather than INVALID_PRODUCER_EPOCH; v4+ is the form partition
    /// leaders send (several transactions, verify-only), not a client's.
    pub const ADD_PARTITIONS_TO_TXN: (i16, i16) = (0, 3);
    /// v2 answers PRODUCER_FENCED; v4 may answer TRANSACTION_ABORTABLE, which this client
    /// handles like any error that leaves the transaction able only to abort.
    pub const ADD_OFFSETS_TO_TXN: (i16, i16) = (0, 4);
    /// v3 adds the member fields (left at generation -1, no member); v5 belongs to transaction
    /// version 2.
    pub const TXN_OFFSET_COMMIT: (i16, i16) = (0, 4);
    /// v5 asks for transaction version 2 (a new epoch after every EndTxn), which also needs
    /// partitions added by their leaders (Produce v12).
    pub const END_TXN: (i16, i16) = (0, 4);
}

/// How a [`KafkaClient`] behaves; [`ClientConfig::default`] documents the defaults.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Sent with every request; brokers log it and show it in group descriptions. Default `quiver`.
    pub client_id: String,
    /// Longest wait for a TCP connection. Default 10 000.
    pub connect_timeout_ms: u64,
    /// Longest wait for a response (a fetch adds its own wait on top). Default 30 000.
    pub request_timeout_ms: u64,
    /// Largest response accepted; a larger length prefix closes the connection before anything
    /// is allocated for it. Default 100 MiB, Kafka's `socket.request.max.bytes`.
    pub response_bytes_max: usize,
    /// Largest request sent. Default 100 MiB.
    pub request_bytes_max: usize,
    /// Requests in flight on one connection before the next waits. Default 16.
    pub in_flight_requests_max: usize,
    /// How often a request that a coordinator or leader is not ready for (a retriable error) is
    /// tried in all. Default 10.
    pub retry_attempts_max: u32,
    /// Wait between those tries. Default 100.
    pub retry_backoff_ms: u64,
    /// Tests: use versions this many below the highest both sides speak (never below the
    /// lowest), to exercise every version against one broker.
    #[cfg(test)]
    pub(crate) versions_below_max: i16,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            client_id: "quiver".into(),
            connect_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
            response_bytes_max: 100 << 20,
            request_bytes_max: 100 << 20,
            in_flight_requests_max: 16,
            retry_attempts_max: 10,
            retry_backoff_ms: 100,
            #[cfg(test)]
            versions_below_max: 0,
        }
    }
}

/// A broker of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

/// The cluster as Metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub cluster_id: Option<String>,
    /// The controller's node id; `None` when the broker did not say.
    pub controller_id: Option<i32>,
    pub brokers: Vec<Node>,
    /// The topics asked for (all topics when none were named), in the broker's order.
    pub topics: Vec<TopicMetadata>,
}

/// One topic in [`Metadata`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMetadata {
    pub name: String,
    /// `None` before Metadata v10 or when the broker has no ids.
    pub id: Option<uuid::Uuid>,
    pub is_internal: bool,
    /// Why the topic could not be described (unknown, invalid name, leader not available).
    pub error: Option<ApiError>,
    /// Sorted by partition.
    pub partitions: Vec<PartitionMetadata>,
}

/// One partition in [`TopicMetadata`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMetadata {
    pub partition: i32,
    /// The leader's node id; `None` while there is none.
    pub leader: Option<i32>,
    pub leader_epoch: Option<i32>,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub error: Option<ApiError>,
}

/// Which of a broker's two connections a request uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Lane {
    /// Metadata, admin, produce, offsets, groups.
    Control,
    /// Fetch, whose long polls must not delay the rest.
    Fetch,
    /// JoinGroup and SyncGroup, which the coordinator holds until the group's rebalance ends;
    /// heartbeats and commits must not wait behind them.
    Group,
}

/// What the client knows about the cluster; refreshed by every Metadata response.
#[derive(Debug, Default)]
struct Cluster {
    /// Address of each broker by node id.
    brokers: BTreeMap<i32, String>,
    controller: Option<i32>,
    /// Leader of each partition of each topic looked up (`None`: no leader right now).
    leaders: HashMap<String, BTreeMap<i32, Option<i32>>>,
    /// The coordinator node of each group and transactional id looked up, by kind and key.
    coordinators: HashMap<(CoordinatorType, String), i32>,
}

/// A connection to a Kafka cluster. Cheap to share by reference: every method takes `&self`
/// and requests from several tasks go out concurrently (in order per broker).
///
/// Fetches use a connection of their own to each broker: a broker answers the requests of one
/// connection in order, so a long-polling fetch would otherwise hold up every other request.
///
/// Nothing is retried behind the caller's back except where Kafka says a request was not
/// processed (a coordinator loading or moving); [`KafkaClient::produce`] is never retried, so
/// a record is never written twice by it. [`IdempotentProducer`] and [`TransactionalProducer`]
/// retry, safely.
#[derive(Debug)]
pub struct KafkaClient {
    config: ClientConfig,
    bootstrap: Vec<String>,
    /// Open connections by address and lane. Held across a connect, so two callers do not
    /// open two.
    connections: tokio::sync::Mutex<HashMap<(String, Lane), Arc<Connection>>>,
    cluster: parking_lot::Mutex<Cluster>,
}

/// Checks `HOST:PORT` and returns it as given.
fn parse_address(addr: &str) -> Result<String> {
    let addr = addr.trim();
    let bad = |why: &str| {
        ClientError::InvalidArgument(format!(
            "bootstrap server '{addr}' {why}; use HOST:PORT such as localhost:9092"
        ))
    };
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(bad("has no port"));
    };
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad("has no valid port"));
    }
    Ok(addr.to_owned())
}

/// `host:port` as a connectable address (IPv6 hosts in brackets).
fn address(host: &str, port: i32) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}

impl KafkaClient {
    /// Connects to the first reachable broker of `bootstrap` (`HOST:PORT`, comma-separated for
    /// several) and checks that it speaks Kafka.
    pub async fn connect(bootstrap: &str, config: ClientConfig) -> Result<KafkaClient> {
        let addresses = bootstrap
            .split(',')
            .filter(|a| !a.trim().is_empty())
            .map(parse_address)
            .collect::<Result<Vec<_>>>()?;
        if addresses.is_empty() {
            return Err(ClientError::InvalidArgument(
                "no bootstrap server given; use HOST:PORT such as localhost:9092".into(),
            ));
        }
        let client = KafkaClient {
            config,
            bootstrap: addresses,
            connections: tokio::sync::Mutex::new(HashMap::new()),
            cluster: parking_lot::Mutex::new(Cluster::default()),
        };
        client.bootstrap_connection().await?;
        Ok(client)
    }

    /// The settings this client runs with.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Closes every connection. Requests still in flight fail.
    pub async fn close(&self) {
        let mut connections = self.connections.lock().await;
        for (_, conn) in connections.drain() {
            conn.close("the client was closed");
        }
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms)
    }

    /// The request timeout as the `timeout_ms` field of a request (capped to fit).
    fn request_timeout_ms(&self) -> i32 {
        self.config.request_timeout_ms.min(i32::MAX as u64) as i32
    }

    async fn connection(&self, addr: &str, lane: Lane) -> Result<Arc<Connection>> {
        let mut connections = self.connections.lock().await;
        let key = (addr.to_owned(), lane);
        if let Some(conn) = connections.get(&key).filter(|c| !c.is_closed()) {
            return Ok(conn.clone());
        }
        let conn = Arc::new(Connection::open(addr, &self.config).await?);
        connections.insert(key, conn.clone());
        Ok(conn)
    }

    /// A connection to any broker: an open one if there is one, else the first bootstrap
    /// broker that answers.
    async fn bootstrap_connection(&self) -> Result<Arc<Connection>> {
        {
            let connections = self.connections.lock().await;
            let open = connections
                .iter()
                .find(|((_, lane), c)| *lane == Lane::Control && !c.is_closed());
            if let Some((_, conn)) = open {
                return Ok(conn.clone());
            }
        }
        let mut first_error = None;
        for addr in &self.bootstrap {
            match self.connection(addr, Lane::Control).await {
                Ok(conn) => return Ok(conn),
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "bootstrap server not usable");
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error
            .unwrap_or_else(|| ClientError::InvalidArgument("no bootstrap server given".into())))
    }

    /// A connection to broker `node_id`, looking the broker up in Metadata if it is not known.
    async fn node_connection(&self, node_id: i32) -> Result<Arc<Connection>> {
        self.node_connection_on(node_id, Lane::Control).await
    }

    async fn node_connection_on(&self, node_id: i32, lane: Lane) -> Result<Arc<Connection>> {
        let known = self.cluster.lock().brokers.get(&node_id).cloned();
        let addr = match known {
            Some(addr) => addr,
            None => {
                self.metadata(Some(&[]), false).await?;
                let found = self.cluster.lock().brokers.get(&node_id).cloned();
                let bootstrap = self.bootstrap.join(",");
                found.ok_or_else(|| ClientError::Protocol {
                    addr: bootstrap,
                    reason: format!("broker {node_id} is not in the cluster's metadata"),
                })?
            }
        };
        self.connection(&addr, lane).await
    }

    /// A connection for admin requests: the controller's when known, else any broker's.
    async fn admin_connection(&self) -> Result<Arc<Connection>> {
        let controller = self.cluster.lock().controller;
        match controller {
            Some(id) => match self.node_connection(id).await {
                Ok(conn) => Ok(conn),
                Err(_) => self.bootstrap_connection().await,
            },
            None => self.bootstrap_connection().await,
        }
    }

    /// Sends `request` built for the version negotiated on `conn` for `api` within `ours`.
    async fn call<R: Request>(
        &self,
        conn: &Connection,
        api: ApiKey,
        ours: (i16, i16),
        timeout: Duration,
        build: impl FnOnce(i16) -> Result<R>,
    ) -> Result<(i16, R::Response)> {
        let version = conn.version(api, ours)?;
        let request = build(version)?;
        let response = conn.send(&request, version, timeout).await?;
        Ok((version, response))
    }

    /// Describes the cluster and `topics` (`None`: every topic; an empty slice: brokers only).
    /// With `allow_auto_create`, a broker that auto-creates topics creates the missing ones
    /// (Metadata v4+; older versions always allow it).
    pub async fn metadata(
        &self,
        topics: Option<&[&str]>,
        allow_auto_create: bool,
    ) -> Result<Metadata> {
        let conn = self.bootstrap_connection().await?;
        let (_, response) = self
            .call(
                &conn,
                ApiKey::Metadata,
                versions::METADATA,
                self.request_timeout(),
                |v| {
                    let mut request = MetadataRequest::default().with_topics(topics.map(|names| {
                        names
                            .iter()
                            .map(|n| MetadataRequestTopic::default().with_name(Some(topic_name(n))))
                            .collect()
                    }));
                    if v >= 4 {
                        request = request.with_allow_auto_topic_creation(allow_auto_create);
                    }
                    Ok(request)
                },
            )
            .await?;
        let brokers: Vec<Node> = response
            .brokers
            .iter()
            .map(|b| Node {
                node_id: b.node_id.0,
                host: b.host.to_string(),
                port: b.port,
                rack: b.rack.as_ref().map(ToString::to_string),
            })
            .collect();
        let controller_id = Some(response.controller_id.0).filter(|&id| id >= 0);
        let topics: Vec<TopicMetadata> = response
            .topics
            .iter()
            .map(|t| {
                let mut partitions: Vec<PartitionMetadata> = t
                    .partitions
                    .iter()
                    .map(|p| PartitionMetadata {
                        partition: p.partition_index,
                        leader: Some(p.leader_id.0).filter(|&id| id >= 0),
                        leader_epoch: Some(p.leader_epoch).filter(|&e| e >= 0),
                        replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                        isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                        error: ApiError::from_code(p.error_code, None),
                    })
                    .collect();
                partitions.sort_by_key(|p| p.partition);
                TopicMetadata {
                    name: t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default(),
                    id: Some(t.topic_id).filter(|id| !id.is_nil()),
                    is_internal: t.is_internal,
                    error: ApiError::from_code(t.error_code, None),
                    partitions,
                }
            })
            .collect();
        self.learn(conn.addr(), &brokers, controller_id, &topics);
        Ok(Metadata {
            cluster_id: response.cluster_id.as_ref().map(ToString::to_string),
            controller_id,
            brokers,
            topics,
        })
    }

    /// Remembers brokers and leaders from a Metadata response that came from `from`.
    fn learn(
        &self,
        from: &str,
        brokers: &[Node],
        controller: Option<i32>,
        topics: &[TopicMetadata],
    ) {
        let mut cluster = self.cluster.lock();
        cluster.brokers.clear();
        if let [only] = brokers {
            // A single-node cluster is the broker we are talking to: keep using the address
            // that works, even when the advertised one is not reachable from here (NAT, Docker).
            cluster.brokers.insert(only.node_id, from.to_owned());
        } else {
            for b in brokers {
                cluster.brokers.insert(b.node_id, address(&b.host, b.port));
            }
        }
        cluster.controller = controller;
        for t in topics {
            if t.error.is_some() {
                cluster.leaders.remove(&t.name);
                continue;
            }
            let leaders = t
                .partitions
                .iter()
                .map(|p| (p.partition, p.leader))
                .collect();
            cluster.leaders.insert(t.name.clone(), leaders);
        }
    }

    /// Forgets what is known about `topic`'s leaders, after an error that says it changed.
    fn forget_leaders(&self, topic: &str) {
        self.cluster.lock().leaders.remove(topic);
    }

    /// Groups `partitions` of `topic` by leader. Partitions without a (known) leader come back
    /// separately with the error that says why.
    async fn by_leader(
        &self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<(BTreeMap<i32, Vec<i32>>, Vec<(i32, ApiError)>)> {
        let lookup = |cluster: &Cluster| -> Option<Vec<(i32, Option<Option<i32>>)>> {
            let leaders = cluster.leaders.get(topic)?;
            Some(
                partitions
                    .iter()
                    .map(|p| (*p, leaders.get(p).copied()))
                    .collect(),
            )
        };
        let mut found = lookup(&self.cluster.lock());
        if found
            .as_ref()
            .is_none_or(|f| f.iter().any(|(_, l)| !matches!(l, Some(Some(_)))))
        {
            let metadata = self.metadata(Some(&[topic]), false).await?;
            if let Some(error) = metadata.topics.iter().find_map(|t| t.error.clone()) {
                return Ok((
                    BTreeMap::new(),
                    partitions.iter().map(|p| (*p, error.clone())).collect(),
                ));
            }
            found = lookup(&self.cluster.lock());
        }
        let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        let mut failed = Vec::new();
        for (partition, leader) in found.unwrap_or_default() {
            match leader {
                Some(Some(node)) => by_leader.entry(node).or_default().push(partition),
                Some(None) => failed.push((
                    partition,
                    ApiError {
                        error: ResponseError::LeaderNotAvailable,
                        message: None,
                    },
                )),
                None => failed.push((
                    partition,
                    ApiError {
                        error: ResponseError::UnknownTopicOrPartition,
                        message: Some(format!("topic '{topic}' has no partition {partition}")),
                    },
                )),
            }
        }
        Ok((by_leader, failed))
    }

    /// Waits before another try of a request that Kafka said was not processed.
    async fn backoff(&self) {
        tokio::time::sleep(Duration::from_millis(self.config.retry_backoff_ms)).await;
    }
}

#[cfg(test)]
mod tests;
