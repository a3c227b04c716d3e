//! Transactions as an operator sees them (Kafka's `kafka-transactions.sh`): the transactions
//! every coordinator knows (ListTransactions, asked of each broker), one transactional id's
//! state at its coordinator (DescribeTransactions), and the producers each partition keeps
//! state for, with the first offset of their open transaction (DescribeProducers, asked of the
//! partition's leader) — what finds the transaction that holds back a partition's last stable
//! offset.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::messages::describe_producers_request::{
    DescribeProducersRequest, TopicRequest,
};
use kafka_protocol::messages::describe_transactions_request::DescribeTransactionsRequest;
use kafka_protocol::messages::list_transactions_request::ListTransactionsRequest;
use kafka_protocol::messages::{ApiKey, ProducerId, TransactionalId};
use kafka_protocol::protocol::StrBytes;

use crate::groups::CoordinatorType;
use crate::{ApiError, ClientError, KafkaClient, Lane, Result, topic_name, versions};

/// The transaction states Kafka defines, as ListTransactions filters and DescribeTransactions
/// name them.
pub const TRANSACTION_STATES: [&str; 8] = [
    "Empty",
    "Ongoing",
    "PrepareCommit",
    "PrepareAbort",
    "CompleteCommit",
    "CompleteAbort",
    "Dead",
    "PrepareEpochFence",
];

/// A transactional id as ListTransactions reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedTransaction {
    pub transactional_id: String,
    /// The producer id the transactional id holds now.
    pub producer_id: i64,
    /// One of [`TRANSACTION_STATES`] (e.g. `Ongoing`).
    pub state: String,
}

/// A transactional id as its coordinator describes it (DescribeTransactions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionDescription {
    pub transactional_id: String,
    /// One of [`TRANSACTION_STATES`] (e.g. `Ongoing`).
    pub state: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// How long the transaction may stay open before the coordinator aborts it.
    pub timeout_ms: i32,
    /// When the open transaction started (ms since the epoch); `None` when none is open.
    pub start_timestamp_ms: Option<i64>,
    /// The partitions in the open transaction, by topic; both sorted.
    pub partitions: Vec<(String, Vec<i32>)>,
}

/// A producer that a partition keeps state for (DescribeProducers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerState {
    pub producer_id: i64,
    pub producer_epoch: i32,
    /// The sequence number of its last batch in the partition; `-1` when it sent none with one
    /// (a transactional offset commit, a marker).
    pub last_sequence: i32,
    /// When it last wrote to the partition (ms since the epoch).
    pub last_timestamp_ms: i64,
    /// The epoch of the coordinator that wrote its last marker, when known.
    pub coordinator_epoch: Option<i32>,
    /// The first offset of its open transaction in the partition; `None` when it has none open.
    pub current_txn_start_offset: Option<i64>,
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

/// The error for state filters a broker did not recognize.
fn unknown_states(unknown: &BTreeSet<String>) -> ClientError {
    let names: Vec<String> = unknown.iter().map(|s| format!("'{s}'")).collect();
    ClientError::InvalidArgument(format!(
        "unknown transaction state {}; the states are {}",
        names.join(", "),
        TRANSACTION_STATES.join(", ")
    ))
}

impl KafkaClient {
    /// Every transaction the cluster's coordinators know (each broker lists the transactional
    /// ids it coordinates), by transactional id. Only those in one of `states` (when any are
    /// given) and held by one of `producer_ids` (when any are given) are listed. A state
    /// filter the brokers do not know is an [`ClientError::InvalidArgument`] naming the states
    /// there are.
    pub async fn list_transactions(
        &self,
        states: &[&str],
        producer_ids: &[i64],
    ) -> Result<Vec<ListedTransaction>> {
        let metadata = self.metadata(Some(&[]), false).await?;
        let mut listed = BTreeMap::new();
        let mut unknown = BTreeSet::new();
        for broker in &metadata.brokers {
            let attempts = self.config.retry_attempts_max.max(1);
            for attempt in 1..=attempts {
                let conn = self.node_connection(broker.node_id).await?;
                let (_, response) = self
                    .call(
                        &conn,
                        ApiKey::ListTransactions,
                        versions::LIST_TRANSACTIONS,
                        self.request_timeout(),
                        |_| {
                            Ok(ListTransactionsRequest::default()
                                .with_state_filters(states.iter().map(|s| str_bytes(s)).collect())
                                .with_producer_id_filters(
                                    producer_ids.iter().map(|p| ProducerId(*p)).collect(),
                                ))
                        },
                    )
                    .await?;
                match ApiError::from_code(response.error_code, None) {
                    None => {
                        unknown
                            .extend(response.unknown_state_filters.iter().map(|s| s.to_string()));
                        for t in response.transaction_states {
                            let id = t.transactional_id.0.to_string();
                            listed.insert(
                                id.clone(),
                                ListedTransaction {
                                    transactional_id: id,
                                    producer_id: t.producer_id.0,
                                    state: t.transaction_state.to_string(),
                                },
                            );
                        }
                        break;
                    }
                    Some(e) if e.is_retriable() && attempt < attempts => self.backoff().await,
                    Some(error) => {
                        return Err(ClientError::Api {
                            context: format!(
                                "cannot list the transactions of broker {}",
                                broker.node_id
                            ),
                            error,
                        });
                    }
                }
            }
        }
        if !unknown.is_empty() {
            return Err(unknown_states(&unknown));
        }
        Ok(listed.into_values().collect())
    }

    /// Describes each transactional id (concurrently, each at its transaction coordinator),
    /// in the order given. An id the coordinator does not know comes back as
    /// `TRANSACTIONAL_ID_NOT_FOUND`.
    pub async fn describe_transactions(
        &self,
        transactional_ids: &[&str],
    ) -> Result<Vec<(String, Result<TransactionDescription, ApiError>)>> {
        let described = futures::future::join_all(
            transactional_ids
                .iter()
                .map(|id| self.describe_transaction(id)),
        )
        .await;
        let mut out = Vec::with_capacity(transactional_ids.len());
        for (id, result) in transactional_ids.iter().zip(described) {
            match result {
                Ok(d) => out.push(((*id).to_owned(), Ok(d))),
                Err(ClientError::Api { error, .. }) => out.push(((*id).to_owned(), Err(error))),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn describe_transaction(&self, id: &str) -> Result<TransactionDescription> {
        self.on_coordinator_of(
            CoordinatorType::Transaction,
            id,
            Lane::Control,
            |conn| async move {
                let (_, response) = self
                    .call(
                        &conn,
                        ApiKey::DescribeTransactions,
                        versions::DESCRIBE_TRANSACTIONS,
                        self.request_timeout(),
                        |_| {
                            Ok(DescribeTransactionsRequest::default()
                                .with_transactional_ids(vec![TransactionalId(str_bytes(id))]))
                        },
                    )
                    .await?;
                let Some(t) = response
                    .transaction_states
                    .into_iter()
                    .find(|t| t.transactional_id.0.as_str() == id)
                else {
                    return Err(ClientError::Protocol {
                        addr: conn.addr().to_owned(),
                        reason: format!(
                            "DescribeTransactions answered without transactional id '{id}'"
                        ),
                    });
                };
                if let Some(error) = ApiError::from_code(t.error_code, None) {
                    return Err(ClientError::Api {
                        context: format!("cannot describe transactional id '{id}'"),
                        error,
                    });
                }
                let mut partitions: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
                for topic in t.topics {
                    partitions
                        .entry(topic.topic.0.to_string())
                        .or_default()
                        .extend(topic.partitions);
                }
                Ok(TransactionDescription {
                    transactional_id: id.to_owned(),
                    state: t.transaction_state.to_string(),
                    producer_id: t.producer_id.0,
                    producer_epoch: t.producer_epoch,
                    timeout_ms: t.transaction_timeout_ms,
                    start_timestamp_ms: Some(t.transaction_start_time_ms).filter(|&ms| ms >= 0),
                    partitions: partitions
                        .into_iter()
                        .map(|(topic, ps)| (topic, ps.into_iter().collect()))
                        .collect(),
                })
            },
        )
        .await
    }

    /// The producers each of `partitions` of `topic` keeps state for, asked of each
    /// partition's leader, in the order given; a partition that cannot be described (an
    /// unknown topic or partition, no leader) comes back with its error.
    pub async fn describe_producers(
        &self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<Vec<(i32, Result<Vec<ProducerState>, ApiError>)>> {
        let mut seen = BTreeSet::new();
        if let Some(p) = partitions.iter().find(|p| !seen.insert(**p)) {
            return Err(ClientError::InvalidArgument(format!(
                "partition {p} is given twice; name each partition once"
            )));
        }
        let (by_leader, failed) = self.by_leader(topic, partitions).await?;
        let requests = by_leader.into_iter().map(|(node, led)| async move {
            let conn = self.node_connection(node).await?;
            let (_, response) = self
                .call(
                    &conn,
                    ApiKey::DescribeProducers,
                    versions::DESCRIBE_PRODUCERS,
                    self.request_timeout(),
                    |_| {
                        Ok(DescribeProducersRequest::default().with_topics(vec![
                            TopicRequest::default()
                                .with_name(topic_name(topic))
                                .with_partition_indexes(led.clone()),
                        ]))
                    },
                )
                .await?;
            let mut results = Vec::with_capacity(led.len());
            for t in response
                .topics
                .into_iter()
                .filter(|t| t.name.0.as_str() == topic)
            {
                for p in t.partitions {
                    if !led.contains(&p.partition_index) {
                        continue;
                    }
                    let result = match ApiError::from_code(p.error_code, p.error_message.as_deref())
                    {
                        Some(e) => Err(e),
                        None => Ok(p
                            .active_producers
                            .into_iter()
                            .map(|s| ProducerState {
                                producer_id: s.producer_id.0,
                                producer_epoch: s.producer_epoch,
                                last_sequence: s.last_sequence,
                                last_timestamp_ms: s.last_timestamp,
                                coordinator_epoch: Some(s.coordinator_epoch).filter(|&e| e >= 0),
                                current_txn_start_offset: Some(s.current_txn_start_offset)
                                    .filter(|&o| o >= 0),
                            })
                            .collect()),
                    };
                    results.push((p.partition_index, result));
                }
            }
            if let Some(p) = led.iter().find(|p| !results.iter().any(|(q, _)| q == *p)) {
                return Err(ClientError::Protocol {
                    addr: conn.addr().to_owned(),
                    reason: format!("DescribeProducers answered without partition {topic}-{p}"),
                });
            }
            Ok::<_, ClientError>(results)
        });
        self.gather(topic, failed, requests, partitions).await
    }
}

#[cfg(test)]
mod tests;
