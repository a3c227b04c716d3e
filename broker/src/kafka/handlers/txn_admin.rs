//! ListTransactions and DescribeTransactions: what `kafka-transactions.sh list` and
//! `describe` (and `quiver transactions`) show of the transaction coordinator: every
//! transactional id with its state and producer, and one id's open transaction with its
//! partitions, so an operator can find the transaction holding back a partition's LSO.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_transactions_request::DescribeTransactionsRequest;
use kafka_protocol::messages::describe_transactions_response::{
    DescribeTransactionsResponse, TopicData, TransactionState as Described,
};
use kafka_protocol::messages::list_transactions_request::ListTransactionsRequest;
use kafka_protocol::messages::list_transactions_response::{
    ListTransactionsResponse, TransactionState as Listed,
};
use kafka_protocol::messages::{ProducerId, TopicName, TransactionalId};
use kafka_protocol::protocol::StrBytes;

use super::Ctx;
use crate::log::now_ms;
use crate::txn::state::TxnState;

/// ListTransactions: every id matching the filters (all when a filter is empty). A state
/// filter Kafka does not know is answered in `unknown_state_filters` and matches nothing;
/// `duration_filter` (v1) keeps transactions open longer than that many milliseconds.
pub fn list_transactions(ctx: &Ctx, req: ListTransactionsRequest) -> ListTransactionsResponse {
    // What the coordinator holds in memory (everything, once `__transaction_state` was read
    // at start); asking does not create the topic.
    let coordinator = ctx.broker.transactions();
    let mut states = Vec::new();
    let mut unknown = Vec::new();
    for f in &req.state_filters {
        match TxnState::ALL.iter().find(|s| s.name() == f.as_str()) {
            Some(s) => states.push(*s),
            None => unknown.push(f.clone()),
        }
    }
    let producers: Vec<i64> = req.producer_id_filters.iter().map(|p| p.0).collect();
    let now = now_ms();
    let listed = coordinator
        .list()
        .into_iter()
        .filter(|m| req.state_filters.is_empty() || states.contains(&m.state))
        .filter(|m| producers.is_empty() || producers.contains(&m.producer_id))
        .filter(|m| {
            req.duration_filter < 0
                || (m.state == TxnState::Ongoing
                    && m.start_timestamp_ms >= 0
                    && now.saturating_sub(m.start_timestamp_ms) > req.duration_filter)
        })
        .map(|m| {
            Listed::default()
                .with_transactional_id(TransactionalId(StrBytes::from_string(m.transactional_id)))
                .with_producer_id(ProducerId(m.producer_id))
                .with_transaction_state(StrBytes::from_static_str(m.state.name()))
        })
        .collect();
    ListTransactionsResponse::default()
        .with_unknown_state_filters(unknown)
        .with_transaction_states(listed)
}

/// DescribeTransactions: each id's state, producer, timeout, start and partitions; an id the
/// coordinator does not know gets TRANSACTIONAL_ID_NOT_FOUND.
pub fn describe_transactions(
    ctx: &Ctx,
    req: DescribeTransactionsRequest,
) -> DescribeTransactionsResponse {
    let coordinator = ctx.broker.transactions();
    let states = req
        .transactional_ids
        .into_iter()
        .map(|id| {
            let out = Described::default()
                .with_transactional_id(id.clone())
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
                .with_transaction_start_time_ms(-1);
            let Some(m) = coordinator.metadata(id.0.as_str()) else {
                return out.with_error_code(ResponseError::TransactionalIdNotFound.code());
            };
            let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
            for p in &m.partitions {
                topics
                    .entry(p.topic.as_str())
                    .or_default()
                    .push(p.partition);
            }
            let topics = topics
                .into_iter()
                .map(|(topic, partitions)| {
                    TopicData::default()
                        .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
                        .with_partitions(partitions)
                })
                .collect();
            out.with_transaction_state(StrBytes::from_static_str(m.state.name()))
                .with_transaction_timeout_ms(m.timeout_ms)
                .with_transaction_start_time_ms(m.start_timestamp_ms)
                .with_producer_id(ProducerId(m.producer_id))
                .with_producer_epoch(m.producer_epoch)
                .with_topics(topics)
        })
        .collect();
    DescribeTransactionsResponse::default().with_transaction_states(states)
}
