//! Transaction APIs: AddPartitionsToTxn, AddOffsetsToTxn, EndTxn and TxnOffsetCommit. Each
//! handler checks what only it can (topics exist, metadata sizes), turns the request into a
//! call on the broker's transaction coordinator (or, for TxnOffsetCommit, the group
//! coordinator), and builds the response for the request's version. FindCoordinator for
//! transactions is in `groups.rs`, InitProducerId in `producer_id.rs`.
//!
//! Errors a client of an older version does not know are mapped by
//! `TxnError::code_for` (PRODUCER_FENCED is INVALID_PRODUCER_EPOCH before KIP-588).

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::add_offsets_to_txn_request::AddOffsetsToTxnRequest;
use kafka_protocol::messages::add_offsets_to_txn_response::AddOffsetsToTxnResponse;
use kafka_protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnRequest, AddPartitionsToTxnTopic,
};
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResponse, AddPartitionsToTxnResult,
    AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::end_txn_request::EndTxnRequest;
use kafka_protocol::messages::end_txn_response::EndTxnResponse;
use kafka_protocol::messages::txn_offset_commit_request::TxnOffsetCommitRequest;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponse, TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{
    ApiKey, ProducerId, RequestHeader, RequestKind, ResponseKind, TransactionalId,
};

use super::Ctx;
use crate::group::{OFFSETS_TOPIC, OffsetCommit, OffsetCommitEntry};
use crate::txn::state::{Caller, TxnApi, TxnError, TxnPartition, TxnResult, TxnVersion};

/// Transaction APIs handled, with version ranges. AddPartitionsToTxn v5 and TxnOffsetCommit
/// v5 belong to transaction version 2 (partitions added by the partition leader), which
/// Quiver does not advertise.
pub const VERSIONS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::AddPartitionsToTxn, 0, 4),
    (ApiKey::AddOffsetsToTxn, 0, 4),
    (ApiKey::EndTxn, 0, 5),
    (ApiKey::TxnOffsetCommit, 0, 4),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 1),
];

/// The transaction version of requests other than EndTxn v5+: the flexible state records of
/// KIP-890 part 1, with the epoch bumped only when the producer is fenced.
const CLIENT_VERSION: TxnVersion = TxnVersion::V1;

/// Handles a transaction request, or gives it back if it is not one.
pub async fn dispatch(
    ctx: &Ctx,
    header: &RequestHeader,
    request: RequestKind,
) -> Result<ResponseKind, RequestKind> {
    let v = header.request_api_version;
    Ok(match request {
        RequestKind::AddPartitionsToTxn(req) => {
            ResponseKind::AddPartitionsToTxn(add_partitions(ctx, v, req).await)
        }
        RequestKind::AddOffsetsToTxn(req) => {
            ResponseKind::AddOffsetsToTxn(add_offsets(ctx, v, req).await)
        }
        RequestKind::EndTxn(req) => ResponseKind::EndTxn(end_txn(ctx, v, req).await),
        RequestKind::TxnOffsetCommit(req) => {
            ResponseKind::TxnOffsetCommit(txn_offset_commit(ctx, v, req).await)
        }
        RequestKind::DescribeTransactions(req) => {
            ResponseKind::DescribeTransactions(super::txn_admin::describe_transactions(ctx, req))
        }
        RequestKind::ListTransactions(req) => {
            ResponseKind::ListTransactions(super::txn_admin::list_transactions(ctx, req))
        }
        other => return Err(other),
    })
}

// ---------------------------------------------------------------------------------------------
// AddPartitionsToTxn

/// One transaction of an AddPartitionsToTxn (v0-v3 carry one, v4+ a batch).
struct TxnAsked<'a> {
    transactional_id: &'a str,
    producer_id: i64,
    producer_epoch: i16,
    verify_only: bool,
    topics: &'a [AddPartitionsToTxnTopic],
}

async fn add_partitions(
    ctx: &Ctx,
    version: i16,
    req: AddPartitionsToTxnRequest,
) -> AddPartitionsToTxnResponse {
    if version < 4 {
        let asked = TxnAsked {
            transactional_id: req.v3_and_below_transactional_id.0.as_str(),
            producer_id: req.v3_and_below_producer_id.0,
            producer_epoch: req.v3_and_below_producer_epoch,
            verify_only: false,
            topics: &req.v3_and_below_topics,
        };
        let results = add_one(ctx, version, &asked).await;
        return AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results);
    }
    let mut results = Vec::with_capacity(req.transactions.len());
    for t in &req.transactions {
        let asked = TxnAsked {
            transactional_id: t.transactional_id.0.as_str(),
            producer_id: t.producer_id.0,
            producer_epoch: t.producer_epoch,
            verify_only: t.verify_only,
            topics: &t.topics,
        };
        results.push(
            AddPartitionsToTxnResult::default()
                .with_transactional_id(t.transactional_id.clone())
                .with_topic_results(add_one(ctx, version, &asked).await),
        );
    }
    AddPartitionsToTxnResponse::default().with_results_by_transaction(results)
}

/// The answer for one transaction: an error code per partition asked for.
async fn add_one(
    ctx: &Ctx,
    version: i16,
    asked: &TxnAsked<'_>,
) -> Vec<AddPartitionsToTxnTopicResult> {
    let caller = Caller {
        transactional_id: asked.transactional_id,
        producer_id: asked.producer_id,
        producer_epoch: asked.producer_epoch,
    };
    let partitions: Vec<TxnPartition> = asked
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|&p| TxnPartition::new(t.name.0.as_str(), p))
        })
        .collect();
    let coordinator = ctx.broker.transactions();
    // Kafka adds nothing when one partition is refused: an unknown one gets
    // UNKNOWN_TOPIC_OR_PARTITION, an internal topic (only AddOffsetsToTxn adds
    // __consumer_offsets) INVALID_TOPIC_EXCEPTION, the others OPERATION_NOT_ATTEMPTED.
    let refused: Vec<Option<ResponseError>> = partitions
        .iter()
        .map(|p| {
            if crate::topic::is_internal(&p.topic) {
                Some(ResponseError::InvalidTopicException)
            } else if !partition_exists(ctx, &p.topic, p.partition) {
                Some(ResponseError::UnknownTopicOrPartition)
            } else {
                None
            }
        })
        .collect();
    let codes: Vec<i16> = if refused.iter().any(Option::is_some) {
        refused
            .iter()
            .map(|r| r.unwrap_or(ResponseError::OperationNotAttempted).code())
            .collect()
    } else if asked.verify_only {
        match coordinator.verify_partitions(caller, &partitions) {
            Ok(checked) => checked
                .iter()
                .map(|(_, e)| e.map_or(0, |e| e.code()))
                .collect(),
            Err(e) => vec![code(&e, version); partitions.len()],
        }
    } else {
        match coordinator
            .add_partitions(caller, &partitions, CLIENT_VERSION)
            .await
        {
            Ok(()) => vec![0; partitions.len()],
            Err(e) => {
                log_refusal("AddPartitionsToTxn", asked.transactional_id, &e);
                vec![code(&e, version); partitions.len()]
            }
        }
    };
    let mut codes = codes.into_iter();
    asked
        .topics
        .iter()
        .map(|t| {
            AddPartitionsToTxnTopicResult::default()
                .with_name(t.name.clone())
                .with_results_by_partition(
                    t.partitions
                        .iter()
                        .map(|&p| {
                            AddPartitionsToTxnPartitionResult::default()
                                .with_partition_index(p)
                                .with_partition_error_code(codes.next().unwrap_or(0))
                        })
                        .collect(),
                )
        })
        .collect()
}

fn partition_exists(ctx: &Ctx, topic: &str, partition: i32) -> bool {
    ctx.broker
        .partition_count(topic)
        .is_ok_and(|n| (0..n).contains(&partition))
}

fn code(e: &TxnError, version: i16) -> i16 {
    e.code_for(TxnApi::AddPartitionsToTxn, version).code()
}

/// Refusals clients retry are routine; the rest say why at debug level.
fn log_refusal(api: &str, transactional_id: &str, e: &TxnError) {
    tracing::debug!(api, transactional_id, code = ?e.code, error = %e, "transaction request refused");
}

// ---------------------------------------------------------------------------------------------
// AddOffsetsToTxn

async fn add_offsets(
    ctx: &Ctx,
    version: i16,
    req: AddOffsetsToTxnRequest,
) -> AddOffsetsToTxnResponse {
    let caller = Caller {
        transactional_id: req.transactional_id.0.as_str(),
        producer_id: req.producer_id.0,
        producer_epoch: req.producer_epoch,
    };
    let group_id = req.group_id.0.as_str();
    let groups = ctx.broker.groups();
    let result = match groups.offsets_partition_for(group_id).await {
        Ok(_) => {
            ctx.broker
                .transactions()
                .add_offsets(
                    caller,
                    group_id,
                    groups.offsets_partitions(),
                    CLIENT_VERSION,
                )
                .await
        }
        Err(e) => Err(TxnError::new(e, "the group coordinator is not available")),
    };
    let code = match result {
        Ok(()) => 0,
        Err(e) => {
            log_refusal("AddOffsetsToTxn", caller.transactional_id, &e);
            e.code_for(TxnApi::AddOffsetsToTxn, version).code()
        }
    };
    AddOffsetsToTxnResponse::default().with_error_code(code)
}

// ---------------------------------------------------------------------------------------------
// EndTxn

async fn end_txn(ctx: &Ctx, version: i16, req: EndTxnRequest) -> EndTxnResponse {
    let caller = Caller {
        transactional_id: req.transactional_id.0.as_str(),
        producer_id: req.producer_id.0,
        producer_epoch: req.producer_epoch,
    };
    let result = ctx
        .broker
        .transactions()
        .end_txn(
            caller,
            TxnResult::from_committed(req.committed),
            TxnVersion::of_end_txn(version),
        )
        .await;
    let resp = EndTxnResponse::default();
    match result {
        Ok(producer) => {
            if version >= 5 {
                // Transaction version 2: the epoch (or, when the epochs ran out, the producer
                // id) the client uses from now on.
                let (id, epoch) = producer.unwrap_or((caller.producer_id, caller.producer_epoch));
                resp.with_producer_id(ProducerId(id))
                    .with_producer_epoch(epoch)
            } else {
                resp
            }
        }
        Err(e) => {
            log_refusal("EndTxn", caller.transactional_id, &e);
            resp.with_error_code(e.code_for(TxnApi::EndTxn, version).code())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TxnOffsetCommit

async fn txn_offset_commit(
    ctx: &Ctx,
    version: i16,
    req: TxnOffsetCommitRequest,
) -> TxnOffsetCommitResponse {
    let groups = ctx.broker.groups();
    let max_metadata = groups.config().offset_metadata_max_bytes;
    let group_id = req.group_id.0.as_str();
    let transactional_id: &TransactionalId = &req.transactional_id;
    // The group's partition of __consumer_offsets must be in the producer's open transaction
    // (AddOffsetsToTxn), or the offsets would never get a marker.
    let offsets_partition = groups.offsets_partition_for(group_id).await;
    let refused: Option<i16> = match offsets_partition {
        Err(e) => Some(e.code()),
        Ok(p) => ctx
            .broker
            .transactions()
            .verify_partition(
                transactional_id.0.as_str(),
                req.producer_id.0,
                req.producer_epoch,
                OFFSETS_TOPIC,
                p,
            )
            .err()
            .map(|e| e.code()),
    };
    enum Answer {
        Now(i16),
        Coordinator(usize),
    }
    let mut entries = Vec::new();
    let mut answers: Vec<Vec<(i32, Answer)>> = Vec::with_capacity(req.topics.len());
    for t in &req.topics {
        let topic = t.name.0.as_str();
        let mut row = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let metadata = p.committed_metadata.as_ref().map_or("", |m| m.as_str());
            let answer = if let Some(code) = refused {
                Answer::Now(code)
            } else if !partition_exists(ctx, topic, p.partition_index) {
                Answer::Now(ResponseError::UnknownTopicOrPartition.code())
            } else if metadata.len() > max_metadata {
                Answer::Now(ResponseError::OffsetMetadataTooLarge.code())
            } else {
                entries.push(OffsetCommitEntry {
                    topic: topic.to_owned(),
                    partition: p.partition_index,
                    offset: p.committed_offset,
                    leader_epoch: if version >= 2 {
                        p.committed_leader_epoch
                    } else {
                        -1
                    },
                    metadata: metadata.to_owned(),
                });
                Answer::Coordinator(entries.len() - 1)
            };
            row.push((p.partition_index, answer));
        }
        answers.push(row);
    }
    let codes = if entries.is_empty() {
        Vec::new()
    } else {
        let (generation_id, member_id, group_instance_id) = if version >= 3 {
            (
                req.generation_id,
                req.member_id.as_str().to_owned(),
                req.group_instance_id
                    .as_ref()
                    .map(|s| s.as_str().to_owned()),
            )
        } else {
            (-1, String::new(), None)
        };
        groups
            .txn_commit_offsets(
                OffsetCommit {
                    group_id: group_id.to_owned(),
                    generation_id,
                    member_id,
                    group_instance_id,
                    retention_ms: None,
                    offsets: entries,
                },
                req.producer_id.0,
                req.producer_epoch,
                |write| match offsets_partition.ok() {
                    // Checked again, and written, under the transactional id's lock.
                    Some(p) => ctx.broker.transactions().append_verified(
                        transactional_id.0.as_str(),
                        req.producer_id.0,
                        req.producer_epoch,
                        OFFSETS_TOPIC,
                        p,
                        write,
                    ),
                    None => Err(ResponseError::CoordinatorNotAvailable),
                },
            )
            .await
    };
    let topics = req
        .topics
        .iter()
        .zip(answers)
        .map(|(t, row)| {
            TxnOffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(
                    row.into_iter()
                        .map(|(partition, answer)| {
                            let code = match answer {
                                Answer::Now(c) => c,
                                Answer::Coordinator(i) => codes.get(i).copied().unwrap_or(0),
                            };
                            TxnOffsetCommitResponsePartition::default()
                                .with_partition_index(partition)
                                .with_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    TxnOffsetCommitResponse::default().with_topics(topics)
}

#[cfg(test)]
#[path = "txn_tests.rs"]
mod tests;
