//! The transactional producer (KIP-98) over the Kafka wire protocol: batches to several
//! partitions and consumer-group offsets that become visible together, or not at all.
//!
//! The requests, in the order a producer sends them:
//!
//! 1. FindCoordinator (key type TRANSACTION) finds the transactional id's coordinator, and
//!    InitProducerId with the transactional id gives the producer id and epoch. That fences
//!    every older producer of the id; a transaction one of them left open is aborted first
//!    (the coordinator answers CONCURRENT_TRANSACTIONS until the abort's markers are written).
//! 2. AddPartitionsToTxn the first time a transaction writes to a partition (the first one
//!    starts the transaction), then Produce (acks=all) with the transactional id, the producer
//!    id and epoch, the partition's sequence number and the transactional attribute. Batches
//!    are numbered and retried by `producer::BatchSender`, as the idempotent producer's are.
//! 3. AddOffsetsToTxn (the group's partition of `__consumer_offsets` joins the transaction),
//!    then TxnOffsetCommit to the group's coordinator: offsets that apply only if the
//!    transaction commits.
//! 4. EndTxn. The coordinator answers once its decision is durable and writes the markers
//!    afterwards; the next transaction's first AddPartitionsToTxn meets
//!    CONCURRENT_TRANSACTIONS while it does, and waits.
//!
//! This is transaction version 1 (partitions added by the client: AddPartitionsToTxn up to v3,
//! EndTxn up to v4): the epoch stays the same from one transaction to the next, so each
//! partition's sequence numbers go on where the last transaction left them. Version 2 (KIP-890
//! part 2: EndTxn v5 bumps the epoch, partition leaders add partitions) needs Produce v12, which
//! this client does not speak.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::add_offsets_to_txn_request::AddOffsetsToTxnRequest;
use kafka_protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnRequest, AddPartitionsToTxnTopic,
};
use kafka_protocol::messages::end_txn_request::EndTxnRequest;
use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use kafka_protocol::messages::txn_offset_commit_request::{
    TxnOffsetCommitRequest, TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
};
use kafka_protocol::messages::{ApiKey, ProducerId, TransactionalId};
use kafka_protocol::protocol::StrBytes;
use quiver_common::batch::{ProducerInfo, attributes};
use quiver_common::kafka::compression;

use crate::connection::Connection;
use crate::groups::{CoordinatorType, coordinator_not_ready, group_id};
use crate::producer::{BatchSender, PartitionSequence};
use crate::{ApiError, ClientError, KafkaClient, Lane, Result, topic_name, versions};

/// The first wait after CONCURRENT_TRANSACTIONS. Short: the markers of a transaction that just
/// ended usually take a few milliseconds.
const BUSY_BACKOFF_FIRST: Duration = Duration::from_millis(10);

/// An offset to commit in a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnOffset {
    pub topic: String,
    pub partition: i32,
    /// The offset of the next record to consume (Kafka's convention: one past the last one
    /// processed).
    pub offset: i64,
    /// Stored with the offset and returned by OffsetFetch.
    pub metadata: String,
}

/// A transactional Kafka producer over a [`KafkaClient`]: batches to any partitions and
/// consumer-group offsets, committed or aborted together.
///
/// One task drives it (`&mut self`), in this order: [`new`](Self::new) (which fences older
/// producers of the transactional id), then per transaction [`send`](Self::send) and
/// [`send_offsets`](Self::send_offsets) any number of times, then [`commit`](Self::commit) or
/// [`abort`](Self::abort). A transaction opens with its first send or offsets; with nothing in
/// it, commit and abort send nothing.
///
/// # After an error
///
/// As in Kafka's producer, errors are of three kinds:
/// - Bad arguments (an empty batch, an offset given twice) are refused before anything is sent
///   and change nothing.
/// - Fenced (PRODUCER_FENCED, or INVALID_PRODUCER_EPOCH from older API versions and from
///   Produce: a newer producer took the transactional id, or the coordinator aborted a
///   transaction that ran past its timeout), or refused authorization: this producer can do
///   nothing more. Every later call fails with the same error; make a new producer (which
///   aborts whatever this one left open).
/// - Anything else that goes wrong inside a transaction (a send, offsets or commit refused or
///   lost): the transaction can only be aborted. `send`, `send_offsets` and `commit` fail with
///   [`ClientError::TransactionAbortOnly`] until `abort` succeeds. When the failure leaves a
///   partition's numbering in doubt (a batch that may or may not have been written) or the
///   broker lost this producer's numbering, `abort` also bumps the epoch (InitProducerId naming
///   this producer's id and epoch, KIP-360), which restarts it.
///
/// # Waits
///
/// Requests to a coordinator are tried again while the coordinator loads or has moved (looked
/// up anew), after a lost connection or timeout (every coordinator request here may be
/// repeated safely) and after other retriable errors, up to
/// [`ClientConfig::retry_attempts_max`](crate::ClientConfig::retry_attempts_max) tries; and
/// while the transactional id is busy (CONCURRENT_TRANSACTIONS: an older producer's transaction
/// being aborted, or the last transaction's markers being written) for up to
/// [`ClientConfig::request_timeout_ms`](crate::ClientConfig::request_timeout_ms) in all, with
/// waits growing from 10 ms to
/// [`ClientConfig::retry_backoff_ms`](crate::ClientConfig::retry_backoff_ms). Batches are tried
/// as often, with the same backoff.
#[derive(Debug)]
pub struct TransactionalProducer {
    batches: BatchSender,
    transactional_id: String,
    transaction_timeout_ms: i32,
    producer_id: i64,
    producer_epoch: i16,
    /// Each partition's numbering in this epoch.
    sequences: HashMap<(String, i32), PartitionSequence>,
    /// Data partitions the coordinator confirmed in the open transaction.
    partitions: HashSet<(String, i32)>,
    /// Groups whose offsets partition the coordinator confirmed in the open transaction.
    groups: HashSet<String>,
    /// The coordinator may hold an open transaction of this producer: a partition or group was
    /// added, or a request to add one was lost. EndTxn is sent only then.
    open: bool,
    /// Why the open transaction can only be aborted.
    abort_only: Option<String>,
    /// After an error that leaves the numbering in doubt: `abort` bumps the epoch.
    epoch_bump_needed: bool,
    /// The coordinator no longer maps the transactional id to this producer id
    /// (INVALID_PRODUCER_ID_MAPPING): it would refuse EndTxn, so `abort` goes straight to
    /// InitProducerId, as Kafka's producer does.
    producer_id_lost: bool,
    /// The error after which this producer can do nothing more (fenced), as context and error.
    fatal: Option<(String, ApiError)>,
    /// How often a request waited out CONCURRENT_TRANSACTIONS so far (logged, and looked at by
    /// tests).
    busy_waits: u32,
}

/// Errors after which this producer can do nothing more.
fn is_fatal(error: &ApiError) -> bool {
    matches!(
        error.error,
        ResponseError::ProducerFenced
            | ResponseError::InvalidProducerEpoch
            | ResponseError::TransactionalIdAuthorizationFailed
            | ResponseError::ClusterAuthorizationFailed
    )
}

/// What to do after a fatal error, as the context of the error returned.
fn fatal_context(transactional_id: &str, error: &ApiError) -> String {
    match error.error {
        ResponseError::ProducerFenced | ResponseError::InvalidProducerEpoch => format!(
            "transactional id '{transactional_id}' was fenced by a newer producer (or its \
             transaction ran past the transaction timeout and the coordinator aborted it); this \
             producer can do nothing more: make a new TransactionalProducer"
        ),
        _ => format!(
            "this client may not use transactional id '{transactional_id}'; grant it \
             (WRITE on the transactional id, and IDEMPOTENT_WRITE on the cluster for older \
             brokers) or use another id"
        ),
    }
}

/// Errors after which the broker's numbering of this producer may differ from ours.
fn breaks_numbering(error: &ClientError) -> bool {
    error.api_error().is_some_and(|e| {
        matches!(
            e.error,
            ResponseError::OutOfOrderSequenceNumber
                | ResponseError::UnknownProducerId
                | ResponseError::InvalidProducerIdMapping
        )
    })
}

/// Errors of a coordinator request that may not have reached it or whose answer was lost:
/// every request sent here may be repeated.
fn lost(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::Disconnected { .. }
            | ClientError::Timeout { .. }
            | ClientError::Unreachable { .. }
    )
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

fn txn_id(id: &str) -> TransactionalId {
    TransactionalId(str_bytes(id))
}

/// The first error of a response's per-partition codes: the cause rather than the
/// OPERATION_NOT_ATTEMPTED Kafka gives the partitions it did not try because of it.
fn first_error(codes: impl IntoIterator<Item = i16>) -> Option<ApiError> {
    let errors: Vec<ApiError> = codes
        .into_iter()
        .filter_map(|c| ApiError::from_code(c, None))
        .collect();
    errors
        .iter()
        .find(|e| e.error != ResponseError::OperationNotAttempted)
        .or(errors.first())
        .cloned()
}

/// Runs `request` at the coordinator of `key` until it has an answer: again at a newly looked
/// up coordinator while it is not ready (by [`KafkaClient::on_coordinator_of`]), again after a
/// lost connection or another retriable error (up to `retry_attempts_max` tries), and again
/// while the transactional id is busy (CONCURRENT_TRANSACTIONS, for up to the request
/// timeout). `request` turns a Kafka error code into [`ClientError::Api`]. `busy_waits` counts
/// the waits for a busy id.
async fn at_coordinator<T, F, Fut>(
    client: &KafkaClient,
    kind: CoordinatorType,
    key: &str,
    busy_waits: &mut u32,
    mut request: F,
) -> Result<T>
where
    F: FnMut(Arc<Connection>) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let attempts = client.config.retry_attempts_max.max(1);
    let backoff_max = Duration::from_millis(client.config.retry_backoff_ms);
    let busy_until = Instant::now() + client.request_timeout();
    let mut busy_wait = BUSY_BACKOFF_FIRST.min(backoff_max);
    let mut attempt = 1;
    loop {
        let outcome = client
            .on_coordinator_of(kind, key, Lane::Control, &mut request)
            .await;
        match outcome {
            Err(ClientError::Api { error, .. })
                if error.error == ResponseError::ConcurrentTransactions
                    && Instant::now() + busy_wait <= busy_until =>
            {
                *busy_waits += 1;
                tokio::time::sleep(busy_wait).await;
                busy_wait = (busy_wait * 2).min(backoff_max.max(BUSY_BACKOFF_FIRST));
            }
            // `on_coordinator_of` tried coordinator errors as often as it may already.
            Err(e)
                if (lost(&e)
                    || e.api_error()
                        .is_some_and(|a| a.is_retriable() && !coordinator_not_ready(a)))
                    && attempt < attempts =>
            {
                tracing::debug!(%key, attempt, error = %e, "retrying a transaction request");
                if lost(&e) {
                    // The coordinator may be gone: look it up again.
                    client
                        .cluster
                        .lock()
                        .coordinators
                        .remove(&(kind, key.to_owned()));
                }
                attempt += 1;
                client.backoff().await;
            }
            other => return other,
        }
    }
}

/// InitProducerId for `transactional_id` at its coordinator: the producer id and epoch to use.
/// `current` names this producer's id and epoch when it bumps its own epoch (KIP-360, v3+; older
/// versions bump without naming it).
async fn init_producer_id(
    client: &KafkaClient,
    transactional_id: &str,
    timeout_ms: i32,
    current: Option<(i64, i16)>,
    busy_waits: &mut u32,
) -> Result<(i64, i16)> {
    at_coordinator(
        client,
        CoordinatorType::Transaction,
        transactional_id,
        busy_waits,
        |conn| async move {
            let (_, response) = client
                .call(
                    &conn,
                    ApiKey::InitProducerId,
                    versions::INIT_PRODUCER_ID,
                    client.request_timeout(),
                    |v| {
                        let request = InitProducerIdRequest::default()
                            .with_transactional_id(Some(txn_id(transactional_id)))
                            .with_transaction_timeout_ms(timeout_ms);
                        Ok(match current {
                            Some((id, epoch)) if v >= 3 => request
                                .with_producer_id(ProducerId(id))
                                .with_producer_epoch(epoch),
                            _ => request,
                        })
                    },
                )
                .await?;
            match ApiError::from_code(response.error_code, None) {
                None => Ok((response.producer_id.0, response.producer_epoch)),
                Some(error) => Err(ClientError::Api {
                    context: format!(
                        "cannot get a producer id for transactional id '{transactional_id}'"
                    ),
                    error,
                }),
            }
        },
    )
    .await
}

impl TransactionalProducer {
    /// Takes over `transactional_id` (FindCoordinator for the id, then InitProducerId with it):
    /// older producers of the id are fenced, and a transaction they left open is aborted first
    /// (this waits for that). `transaction_timeout` is how long a transaction may stay open
    /// before the coordinator aborts it (and fences this producer); at most the broker's
    /// `transaction.max.timeout.ms` (15 minutes by default). Waits as
    /// [`TransactionalProducer`] says.
    pub async fn new(
        client: Arc<KafkaClient>,
        transactional_id: &str,
        transaction_timeout: Duration,
    ) -> Result<TransactionalProducer> {
        if transactional_id.is_empty() {
            return Err(ClientError::InvalidArgument(
                "the transactional id is empty; give the producer a name that stays the same \
                 across restarts (e.g. the job's name), so a restarted producer fences the old one"
                    .into(),
            ));
        }
        let transaction_timeout_ms = i32::try_from(transaction_timeout.as_millis())
            .ok()
            .filter(|&ms| ms > 0)
            .ok_or_else(|| {
                ClientError::InvalidArgument(format!(
                    "transaction timeout {transaction_timeout:?} is not between 1 ms and {} ms; \
                     Kafka's default is 60 s",
                    i32::MAX
                ))
            })?;
        let mut busy_waits = 0;
        let (producer_id, producer_epoch) = init_producer_id(
            &client,
            transactional_id,
            transaction_timeout_ms,
            None,
            &mut busy_waits,
        )
        .await?;
        let attempts = client.config.retry_attempts_max;
        let backoff = Duration::from_millis(client.config.retry_backoff_ms);
        Ok(TransactionalProducer {
            batches: BatchSender::new(client, compression::codec::NONE, attempts, backoff),
            transactional_id: transactional_id.to_owned(),
            transaction_timeout_ms,
            producer_id,
            producer_epoch,
            sequences: HashMap::new(),
            partitions: HashSet::new(),
            groups: HashSet::new(),
            open: false,
            abort_only: None,
            epoch_bump_needed: false,
            producer_id_lost: false,
            fatal: None,
            busy_waits,
        })
    }

    /// The transactional id.
    pub fn transactional_id(&self) -> &str {
        &self.transactional_id
    }

    /// The producer id and epoch the coordinator gave (a new epoch after an
    /// [`abort`](Self::abort) that had to restart the numbering).
    pub fn producer_id(&self) -> (i64, i16) {
        (self.producer_id, self.producer_epoch)
    }

    /// How often a request waited because the transactional id was busy.
    #[cfg(test)]
    pub(crate) fn busy_waits(&self) -> u32 {
        self.busy_waits
    }

    /// Appends `batch` (an envelope batch, [`quiver_common::envelope_schema`]; its offsets are
    /// ignored) to `topic`-`partition` in the open transaction, starting one if none is open:
    /// AddPartitionsToTxn the first time the transaction writes to the partition, then Produce
    /// acks=all as a transactional batch. Returns once the batch is written; `read_committed`
    /// readers see it only after [`commit`](Self::commit). An empty batch, or one that is not
    /// an envelope batch, is an [`ClientError::InvalidArgument`] and nothing is sent; any other
    /// error leaves the transaction able only to abort (see [`TransactionalProducer`]).
    pub async fn send(&mut self, topic: &str, partition: i32, batch: &RecordBatch) -> Result<()> {
        self.usable(false)?;
        if batch.num_rows() == 0 {
            return Err(ClientError::InvalidArgument(format!(
                "cannot send an empty batch to {topic}-{partition}; send at least one record"
            )));
        }
        let key = (topic.to_owned(), partition);
        let producer = ProducerInfo {
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            base_sequence: self.sequences.get(&key).map_or(0, |s| s.next),
            attributes: attributes::TRANSACTIONAL,
        };
        // A batch that does not encode is refused before the partition joins the transaction.
        let encoded = self.batches.encode(batch, producer)?;
        if !self.partitions.contains(&key) {
            self.add_partition(topic, partition).await?;
            self.partitions.insert(key.clone());
        }
        let sequence = self.sequences.entry(key).or_default();
        let sent = self
            .batches
            .send(
                Some(&self.transactional_id),
                topic,
                partition,
                &encoded,
                batch.num_rows(),
                sequence,
            )
            .await;
        let uncertain = sequence.uncertain;
        match sent {
            Ok(_) => Ok(()),
            Err(e) => {
                self.epoch_bump_needed |= uncertain;
                Err(self.failed(e))
            }
        }
    }

    /// Adds `topic`-`partition` to the transaction (AddPartitionsToTxn v0-v3, the client's
    /// form), opening it if none is open.
    async fn add_partition(&mut self, topic: &str, partition: i32) -> Result<()> {
        let client = self.batches.client.clone();
        let (id, producer_id, epoch) = (
            self.transactional_id.as_str(),
            self.producer_id,
            self.producer_epoch,
        );
        let added = at_coordinator(
            &client,
            CoordinatorType::Transaction,
            id,
            &mut self.busy_waits,
            |conn| {
                let client = &client;
                async move {
                    let (_, response) = client
                        .call(
                            &conn,
                            ApiKey::AddPartitionsToTxn,
                            versions::ADD_PARTITIONS_TO_TXN,
                            client.request_timeout(),
                            |_| {
                                Ok(AddPartitionsToTxnRequest::default()
                                    .with_v3_and_below_transactional_id(txn_id(id))
                                    .with_v3_and_below_producer_id(ProducerId(producer_id))
                                    .with_v3_and_below_producer_epoch(epoch)
                                    .with_v3_and_below_topics(vec![
                                        AddPartitionsToTxnTopic::default()
                                            .with_name(topic_name(topic))
                                            .with_partitions(vec![partition]),
                                    ]))
                            },
                        )
                        .await?;
                    let codes: Vec<(i32, i16)> = response
                        .results_by_topic_v3_and_below
                        .iter()
                        .filter(|t| t.name.0.as_str() == topic)
                        .flat_map(|t| {
                            t.results_by_partition
                                .iter()
                                .map(|p| (p.partition_index, p.partition_error_code))
                        })
                        .collect();
                    if !codes.iter().any(|(p, _)| *p == partition) {
                        return Err(ClientError::Protocol {
                            addr: conn.addr().to_owned(),
                            reason: format!(
                                "AddPartitionsToTxn answered without partition {topic}-{partition}"
                            ),
                        });
                    }
                    match first_error(codes.into_iter().map(|(_, c)| c)) {
                        None => Ok(()),
                        Some(error) => Err(ClientError::Api {
                            context: format!(
                                "cannot add {topic}-{partition} to the transaction of \
                                 transactional id '{id}'"
                            ),
                            error,
                        }),
                    }
                }
            },
        )
        .await;
        self.joined(added)
    }

    /// Commits, in the open transaction, `offsets` of consumer group `group_id`: they apply
    /// only if the transaction commits. AddOffsetsToTxn to the transaction coordinator the first
    /// time the transaction commits offsets of the group, then TxnOffsetCommit to the group's
    /// coordinator from outside group management (generation -1, no member id: no member or
    /// generation is checked). Nothing to commit: nothing is sent. A partition given
    /// twice or an empty group id is an [`ClientError::InvalidArgument`]; any other error
    /// leaves the transaction able only to abort.
    pub async fn send_offsets(&mut self, group_id: &str, offsets: &[TxnOffset]) -> Result<()> {
        self.usable(false)?;
        if offsets.is_empty() {
            return Ok(());
        }
        if group_id.is_empty() {
            return Err(ClientError::InvalidArgument(
                "the group id is empty; name the consumer group whose offsets to commit".into(),
            ));
        }
        let mut by_topic: BTreeMap<&str, Vec<&TxnOffset>> = BTreeMap::new();
        let mut seen = BTreeSet::new();
        for o in offsets {
            if !seen.insert((o.topic.as_str(), o.partition)) {
                return Err(ClientError::InvalidArgument(format!(
                    "{}-{} is given twice; give one offset per partition",
                    o.topic, o.partition
                )));
            }
            by_topic.entry(&o.topic).or_default().push(o);
        }
        if !self.groups.contains(group_id) {
            self.add_offsets(group_id).await?;
            self.groups.insert(group_id.to_owned());
        }
        let committed = self.txn_offset_commit(group_id, &by_topic).await;
        committed.map_err(|e| self.failed(e))
    }

    /// Adds the offsets partition of `group` to the transaction (AddOffsetsToTxn).
    async fn add_offsets(&mut self, group: &str) -> Result<()> {
        let client = self.batches.client.clone();
        let (id, producer_id, epoch) = (
            self.transactional_id.as_str(),
            self.producer_id,
            self.producer_epoch,
        );
        let added = at_coordinator(
            &client,
            CoordinatorType::Transaction,
            id,
            &mut self.busy_waits,
            |conn| {
                let client = &client;
                async move {
                    let (_, response) = client
                        .call(
                            &conn,
                            ApiKey::AddOffsetsToTxn,
                            versions::ADD_OFFSETS_TO_TXN,
                            client.request_timeout(),
                            |_| {
                                Ok(AddOffsetsToTxnRequest::default()
                                    .with_transactional_id(txn_id(id))
                                    .with_producer_id(ProducerId(producer_id))
                                    .with_producer_epoch(epoch)
                                    .with_group_id(group_id(group)))
                            },
                        )
                        .await?;
                    match ApiError::from_code(response.error_code, None) {
                        None => Ok(()),
                        Some(error) => Err(ClientError::Api {
                            context: format!(
                                "cannot add the offsets of group '{group}' to the transaction of \
                                 transactional id '{id}'"
                            ),
                            error,
                        }),
                    }
                }
            },
        )
        .await;
        self.joined(added)
    }

    /// TxnOffsetCommit of `by_topic` for `group` at the group's coordinator.
    async fn txn_offset_commit(
        &mut self,
        group: &str,
        by_topic: &BTreeMap<&str, Vec<&TxnOffset>>,
    ) -> Result<()> {
        let client = self.batches.client.clone();
        let (id, producer_id, epoch) = (
            self.transactional_id.as_str(),
            self.producer_id,
            self.producer_epoch,
        );
        let topics: Vec<TxnOffsetCommitRequestTopic> = by_topic
            .iter()
            .map(|(topic, offsets)| {
                TxnOffsetCommitRequestTopic::default()
                    .with_name(topic_name(topic))
                    .with_partitions(
                        offsets
                            .iter()
                            .map(|o| {
                                TxnOffsetCommitRequestPartition::default()
                                    .with_partition_index(o.partition)
                                    .with_committed_offset(o.offset)
                                    .with_committed_metadata(Some(str_bytes(&o.metadata)))
                            })
                            .collect(),
                    )
            })
            .collect();
        let topics = &topics;
        at_coordinator(
            &client,
            CoordinatorType::Group,
            group,
            &mut self.busy_waits,
            |conn| {
                let client = &client;
                async move {
                    // Generation -1 and no member id (the defaults, v3+ fields): committed from
                    // outside group management.
                    let (_, response) = client
                        .call(
                            &conn,
                            ApiKey::TxnOffsetCommit,
                            versions::TXN_OFFSET_COMMIT,
                            client.request_timeout(),
                            |_| {
                                Ok(TxnOffsetCommitRequest::default()
                                    .with_transactional_id(txn_id(id))
                                    .with_group_id(group_id(group))
                                    .with_producer_id(ProducerId(producer_id))
                                    .with_producer_epoch(epoch)
                                    .with_topics(topics.clone()))
                            },
                        )
                        .await?;
                    let codes = response
                        .topics
                        .iter()
                        .flat_map(|t| t.partitions.iter().map(|p| p.error_code));
                    match first_error(codes) {
                        None => Ok(()),
                        Some(error) => Err(ClientError::Api {
                            context: format!(
                                "cannot commit offsets of group '{group}' in the transaction of \
                                 transactional id '{id}'"
                            ),
                            error,
                        }),
                    }
                }
            },
        )
        .await
    }

    /// Commits the open transaction (EndTxn). Returns once the coordinator has decided: from
    /// then on the transaction commits, even if the coordinator fails; `read_committed` readers
    /// see its records, and OffsetFetch its offsets, once the markers the coordinator writes
    /// next are durable. With nothing in the transaction, nothing is sent. After an earlier
    /// error of the transaction this fails with [`ClientError::TransactionAbortOnly`]. If it
    /// fails otherwise, the transaction can only be aborted; if it failed because the
    /// connection was lost and retries ran out, the commit may have been decided anyway, and
    /// the abort then fails with INVALID_TXN_STATE.
    pub async fn commit(&mut self) -> Result<()> {
        self.usable(false)?;
        if !self.open {
            return Ok(());
        }
        match self.end_txn(true).await {
            Ok(()) => {
                self.ended();
                tracing::debug!(
                    transactional_id = %self.transactional_id,
                    busy_waits = self.busy_waits,
                    "transaction committed"
                );
                Ok(())
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Aborts the open transaction (EndTxn): its records are never visible to `read_committed`
    /// readers and its offsets never apply. With nothing in the transaction, nothing is sent.
    /// When an earlier error left the numbering in doubt, this also bumps the epoch
    /// (InitProducerId naming this producer), which restarts the numbering. After this
    /// returns, the next transaction may begin.
    pub async fn abort(&mut self) -> Result<()> {
        self.usable(true)?;
        if self.open && !self.producer_id_lost {
            match self.end_txn(false).await {
                Ok(()) => {}
                // Only a lost add request opened it, and it had not opened it after all.
                Err(e)
                    if self.partitions.is_empty()
                        && self.groups.is_empty()
                        && e.api_error()
                            .is_some_and(|a| a.error == ResponseError::InvalidTxnState) => {}
                Err(e) => return Err(self.failed(e)),
            }
        }
        self.ended();
        if self.epoch_bump_needed {
            let client = self.batches.client.clone();
            let bumped = init_producer_id(
                &client,
                &self.transactional_id,
                self.transaction_timeout_ms,
                Some((self.producer_id, self.producer_epoch)),
                &mut self.busy_waits,
            )
            .await;
            match bumped {
                Ok((producer_id, producer_epoch)) => {
                    tracing::debug!(
                        transactional_id = %self.transactional_id,
                        producer_id,
                        producer_epoch,
                        "bumped the epoch to restart the numbering"
                    );
                    self.producer_id = producer_id;
                    self.producer_epoch = producer_epoch;
                    self.sequences.clear();
                    self.epoch_bump_needed = false;
                    self.producer_id_lost = false;
                }
                // The next abort tries the bump again.
                Err(e) => return Err(self.failed(e)),
            }
        }
        self.abort_only = None;
        tracing::debug!(
            transactional_id = %self.transactional_id,
            busy_waits = self.busy_waits,
            "transaction aborted"
        );
        Ok(())
    }

    /// EndTxn at the transaction coordinator (v0-v4: the epoch stays).
    async fn end_txn(&mut self, committed: bool) -> Result<()> {
        let client = self.batches.client.clone();
        let (id, producer_id, epoch) = (
            self.transactional_id.as_str(),
            self.producer_id,
            self.producer_epoch,
        );
        let what = if committed { "commit" } else { "abort" };
        at_coordinator(
            &client,
            CoordinatorType::Transaction,
            id,
            &mut self.busy_waits,
            |conn| {
                let client = &client;
                async move {
                    let (_, response) = client
                        .call(
                            &conn,
                            ApiKey::EndTxn,
                            versions::END_TXN,
                            client.request_timeout(),
                            |_| {
                                Ok(EndTxnRequest::default()
                                    .with_transactional_id(txn_id(id))
                                    .with_producer_id(ProducerId(producer_id))
                                    .with_producer_epoch(epoch)
                                    .with_committed(committed))
                            },
                        )
                        .await?;
                    match ApiError::from_code(response.error_code, None) {
                        None => Ok(()),
                        Some(error) => Err(ClientError::Api {
                            context: format!(
                                "cannot {what} the transaction of transactional id '{id}'"
                            ),
                            error,
                        }),
                    }
                }
            },
        )
        .await
    }

    /// Fails when this producer can do nothing more, or (unless `aborting`) when the open
    /// transaction can only be aborted.
    fn usable(&self, aborting: bool) -> Result<()> {
        if let Some((context, error)) = &self.fatal {
            return Err(ClientError::Api {
                context: context.clone(),
                error: error.clone(),
            });
        }
        match &self.abort_only {
            Some(reason) if !aborting => Err(ClientError::TransactionAbortOnly {
                transactional_id: self.transactional_id.clone(),
                reason: reason.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// The outcome of adding a partition or a group's offsets: the transaction is open once
    /// the coordinator confirmed it, and may be when the answer was lost.
    fn joined(&mut self, added: Result<()>) -> Result<()> {
        match added {
            Ok(()) => {
                self.open = true;
                Ok(())
            }
            Err(e) => {
                self.open |= !matches!(e, ClientError::Api { .. });
                Err(self.failed(e))
            }
        }
    }

    /// The transaction ended: the next one starts from nothing.
    fn ended(&mut self) {
        self.open = false;
        self.partitions.clear();
        self.groups.clear();
    }

    /// Records what `error` of a request in the transaction means for this producer (see
    /// [`TransactionalProducer`], *After an error*) and returns the error to give the caller.
    fn failed(&mut self, error: ClientError) -> ClientError {
        if let Some(api) = error.api_error()
            && is_fatal(api)
        {
            let context = fatal_context(&self.transactional_id, api);
            let api = api.clone();
            self.fatal = Some((context.clone(), api.clone()));
            return ClientError::Api {
                context,
                error: api,
            };
        }
        if breaks_numbering(&error) {
            self.epoch_bump_needed = true;
        }
        if error
            .api_error()
            .is_some_and(|e| e.error == ResponseError::InvalidProducerIdMapping)
        {
            self.producer_id_lost = true;
        }
        self.abort_only = Some(error.to_string());
        error
    }
}

#[cfg(test)]
mod tests;
