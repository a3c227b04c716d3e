//! [`TransactionalProducer`]: Kafka transactions for the engine and connectors, in process,
//! through the same coordinator, markers and log as the wire protocol. The contract (calling
//! order, what a crash leaves) is in the [module docs](super#the-in-process-api-engine-and-connectors).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use kafka_protocol::error::ResponseError;

use super::state::{Caller, TxnError, TxnPartition, TxnResult, TxnVersion};
use crate::broker::Broker;
use crate::error::{BrokerError, Result};
use crate::group::{OFFSETS_TOPIC, OffsetCommit, OffsetCommitEntry};
use crate::log::{Ack, AppendInfo, ProducerInfo, attributes};

/// How many times a call that found the transactional id busy (markers of the previous
/// transaction in flight) waits and tries again before it gives up.
const BUSY_RETRIES: usize = 50;
/// Wait between two tries after `CONCURRENT_TRANSACTIONS` when there is nothing to wait on.
const BUSY_BACKOFF: Duration = Duration::from_millis(20);

/// The transaction version of in-process calls: the same as wire clients without KIP-890
/// part 2 (the epoch stays until the producer is fenced).
const VERSION: TxnVersion = TxnVersion::V1;

fn refused(e: TxnError) -> BrokerError {
    BrokerError::Transaction {
        code: e.code,
        message: e.message,
    }
}

/// One transactional id's producer. Made by [`Broker::transactional_producer`] (which fences
/// every older holder of the id); calls take `&mut self`, so one task drives it, in the order
/// of the contract: `append`/`send_offsets` any number of times, then `commit` or `abort`,
/// then the next transaction.
#[derive(Debug)]
pub struct TransactionalProducer {
    broker: Broker,
    transactional_id: String,
    producer_id: i64,
    producer_epoch: i16,
    /// The next sequence number per partition, in this epoch.
    sequences: HashMap<(String, i32), i32>,
    /// Partitions (including `__consumer_offsets` ones) in the open transaction.
    added: HashSet<(String, i32)>,
    /// Per partition appended in the open transaction, the offset its appends end at: all
    /// must be durable before the transaction commits.
    unacked: HashMap<(String, i32), i64>,
}

impl Broker {
    /// Starts (or takes over) the transactional id `transactional_id` (InitProducerId): any
    /// older holder is fenced, and a transaction it left open is aborted first (this waits for
    /// that). `timeout_ms` is the transaction timeout: a transaction open longer is aborted by
    /// the coordinator. Fails with [`BrokerError::Transaction`] for a timeout above
    /// `transaction.max.timeout.ms`, an empty id, or an id that stays busy.
    pub async fn transactional_producer(
        &self,
        transactional_id: &str,
        timeout_ms: i32,
    ) -> Result<TransactionalProducer> {
        let coordinator = self.transactions();
        let mut tries = 0;
        let (producer_id, producer_epoch) = loop {
            match coordinator
                .init_producer_id(transactional_id, timeout_ms, None)
                .await
            {
                Ok(p) => break p,
                Err(e)
                    if e.code == ResponseError::ConcurrentTransactions && tries < BUSY_RETRIES =>
                {
                    tries += 1;
                    coordinator
                        .wait_completed(transactional_id)
                        .await
                        .map_err(refused)?;
                    tokio::time::sleep(BUSY_BACKOFF).await;
                }
                Err(e) => return Err(refused(e)),
            }
        };
        Ok(TransactionalProducer {
            broker: self.clone(),
            transactional_id: transactional_id.to_owned(),
            producer_id,
            producer_epoch,
            sequences: HashMap::new(),
            added: HashSet::new(),
            unacked: HashMap::new(),
        })
    }
}

impl TransactionalProducer {
    /// The transactional id.
    pub fn transactional_id(&self) -> &str {
        &self.transactional_id
    }

    /// The producer id the coordinator gave.
    pub fn producer_id(&self) -> i64 {
        self.producer_id
    }

    /// The producer epoch the coordinator gave.
    pub fn producer_epoch(&self) -> i16 {
        self.producer_epoch
    }

    fn caller(&self) -> Caller<'_> {
        Caller {
            transactional_id: &self.transactional_id,
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
        }
    }

    /// Adds a partition to the open transaction (starting one if none is open), waiting out
    /// the markers of the previous transaction.
    async fn add(&mut self, partition: TxnPartition, offsets_group: Option<&str>) -> Result<()> {
        let key = (partition.topic.clone(), partition.partition);
        if self.added.contains(&key) {
            return Ok(());
        }
        let coordinator = self.broker.transactions();
        let mut tries = 0;
        loop {
            let result = match offsets_group {
                Some(group) => {
                    let partitions = self.broker.groups().offsets_partitions();
                    coordinator
                        .add_offsets(self.caller(), group, partitions, VERSION)
                        .await
                }
                None => {
                    coordinator
                        .add_partitions(self.caller(), std::slice::from_ref(&partition), VERSION)
                        .await
                }
            };
            match result {
                Ok(()) => break,
                Err(e)
                    if e.code == ResponseError::ConcurrentTransactions && tries < BUSY_RETRIES =>
                {
                    tries += 1;
                    coordinator
                        .wait_completed(&self.transactional_id)
                        .await
                        .map_err(refused)?;
                    tokio::time::sleep(BUSY_BACKOFF).await;
                }
                Err(e) => return Err(refused(e)),
            }
        }
        self.added.insert(key);
        Ok(())
    }

    /// Appends `batch` (envelope schema) to `topic`-`partition` in the open transaction, as a
    /// transactional batch of this producer. The first append to a partition adds it to the
    /// transaction first. It returns once the batch is in the log, without waiting for an
    /// fsync: `commit` waits until every append of the transaction is durable (acks=all)
    /// before it decides, so a transaction of many appends costs one group-commit round, not
    /// one per append. The records stay invisible to `read_committed` readers until the
    /// transaction commits.
    pub async fn append(
        &mut self,
        topic: &str,
        partition: i32,
        batch: &RecordBatch,
    ) -> Result<AppendInfo> {
        if batch.num_rows() == 0 {
            return Err(BrokerError::InvalidRecords(
                "an empty batch cannot be appended".into(),
            ));
        }
        let log = self.broker.log(topic, partition)?;
        if crate::topic::is_internal(topic) {
            return Err(BrokerError::InternalTopic {
                topic: topic.to_owned(),
                action: "written in a transaction",
            });
        }
        self.add(TxnPartition::new(topic, partition), None).await?;
        let key = (topic.to_owned(), partition);
        let sequence = self.sequences.get(&key).copied().unwrap_or(0);
        let producer = ProducerInfo {
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            base_sequence: sequence,
            attributes: attributes::TRANSACTIONAL,
        };
        // Checked and written under the transactional id's lock: fenced since the partition
        // was added (the coordinator knows before the log does), or ending, and nothing lands.
        let info = self
            .broker
            .transactions()
            .append_verified(
                &self.transactional_id,
                self.producer_id,
                self.producer_epoch,
                topic,
                partition,
                || log.append_unflushed(batch, producer),
            )
            .map_err(|code| BrokerError::Transaction {
                code,
                message: format!(
                    "{topic}-{partition} is not in an open transaction of transactional id '{}' \
                     with producer {} epoch {}; the producer may have been fenced",
                    self.transactional_id, self.producer_id, self.producer_epoch
                ),
            })??;
        self.unacked.insert(key.clone(), info.last_offset + 1);
        let rows = i32::try_from(batch.num_rows()).unwrap_or(i32::MAX);
        // Kafka's sequences wrap at i32::MAX.
        let next = if sequence > i32::MAX - rows {
            rows - (i32::MAX - sequence) - 1
        } else {
            sequence + rows
        };
        self.sequences.insert(key, next);
        Ok(info)
    }

    /// Consumer-group offsets that take effect only if the transaction commits
    /// (AddOffsetsToTxn, then TxnOffsetCommit, outside group management: no member or
    /// generation is checked).
    pub async fn send_offsets(
        &mut self,
        group_id: &str,
        offsets: &[OffsetCommitEntry],
    ) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        for o in offsets {
            let known = self
                .broker
                .partition_count(&o.topic)
                .is_ok_and(|n| (0..n).contains(&o.partition));
            if !known {
                return Err(BrokerError::UnknownPartition {
                    topic: o.topic.clone(),
                    partition: o.partition,
                    partitions: self.broker.partition_count(&o.topic).unwrap_or(0),
                });
            }
        }
        let broker = self.broker.clone();
        let groups = broker.groups();
        let p = groups
            .offsets_partition_for(group_id)
            .await
            .map_err(|code| BrokerError::Transaction {
                code,
                message: "the group coordinator is not available".into(),
            })?;
        self.add(TxnPartition::new(OFFSETS_TOPIC, p), Some(group_id))
            .await?;
        let commit = OffsetCommit {
            group_id: group_id.to_owned(),
            generation_id: -1,
            member_id: String::new(),
            group_instance_id: None,
            retention_ms: None,
            offsets: offsets.to_vec(),
        };
        let (id, pid, epoch) = (
            self.transactional_id.as_str(),
            self.producer_id,
            self.producer_epoch,
        );
        let txns = broker.transactions();
        let codes = groups
            .txn_commit_offsets(commit, pid, epoch, |write| {
                txns.append_verified(id, pid, epoch, OFFSETS_TOPIC, p, write)
            })
            .await;
        match codes.iter().copied().find(|&c| c != 0) {
            None => Ok(()),
            Some(c) => {
                let code =
                    ResponseError::try_from_code(c).unwrap_or(ResponseError::UnknownServerError);
                Err(BrokerError::Transaction {
                    code,
                    message: format!("the offsets of group '{group_id}' were refused"),
                })
            }
        }
    }

    /// Commits the open transaction. Returns once the decision is durable: from then on the
    /// transaction commits, even across a crash; readers see it once the markers are written
    /// ([`TransactionalProducer::commit_and_wait`] waits for that too). With nothing in the
    /// transaction, nothing is written.
    pub async fn commit(&mut self) -> Result<()> {
        self.end(TxnResult::Commit).await
    }

    /// [`TransactionalProducer::commit`], returning once every marker is durable (the data is
    /// visible to `read_committed` readers and the offsets to OffsetFetch).
    pub async fn commit_and_wait(&mut self) -> Result<()> {
        self.end(TxnResult::Commit).await?;
        self.wait_completed().await
    }

    /// Aborts the open transaction: its records are never visible to `read_committed`
    /// readers, its offsets never apply.
    pub async fn abort(&mut self) -> Result<()> {
        self.end(TxnResult::Abort).await
    }

    /// Waits until the markers of the last ended transaction are durable.
    pub async fn wait_completed(&self) -> Result<()> {
        self.broker
            .transactions()
            .wait_completed(&self.transactional_id)
            .await
            .map_err(refused)
    }

    async fn end(&mut self, result: TxnResult) -> Result<()> {
        if self.added.is_empty() {
            return Ok(());
        }
        // The decision may only say COMMIT once the data it commits is durable.
        for ((topic, partition), end) in std::mem::take(&mut self.unacked) {
            if result == TxnResult::Commit {
                self.broker
                    .log(&topic, partition)?
                    .acknowledge(end, Ack::All)
                    .await?;
            }
        }
        let next = self
            .broker
            .transactions()
            .end_txn(self.caller(), result, VERSION)
            .await
            .map_err(refused)?;
        self.added.clear();
        if let Some((producer_id, producer_epoch)) = next
            && (producer_id, producer_epoch) != (self.producer_id, self.producer_epoch)
        {
            self.producer_id = producer_id;
            self.producer_epoch = producer_epoch;
            self.sequences.clear();
        }
        Ok(())
    }
}
