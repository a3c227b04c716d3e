//! Kafka transactions (KIP-98, KIP-447, KIP-890): the transaction coordinator, the in-process
//! transactional producer, and the pure logic and file formats they and the partitions are
//! built from.
//!
//! # The pieces
//!
//! - `coordinator`: the [`TxnCoordinator`](coordinator::TxnCoordinator) the
//!   [`Broker`](crate::Broker) owns ([`Broker::transactions`](crate::Broker::transactions)):
//!   every transactional id, `__transaction_state`, markers and timers, as described below.
//! - `producer`: [`TransactionalProducer`], the in-process API described below.

//! - `state`: a transactional id's `TxnMetadata` and Kafka's state machine. One pure function
//!   per request kind (InitProducerId, AddPartitionsToTxn and its verify-only form,
//!   AddOffsetsToTxn, EndTxn, the coordinator's timeout abort, completion after markers)
//!   returns the error Kafka returns, or the transition to write with the answer and the
//!   markers to write.
//! - `records`: the `__transaction_state` records in Kafka's layouts, and the COMMIT/ABORT
//!   control records (markers).
//! - `index`: per partition, the open transactions that hold back the last stable offset
//!   (LSO), and per segment, the index of aborted transactions a `read_committed` Fetch returns.
//!
//! # How the coordinator uses them
//!
//! A transactional id lives in one partition of the compacted internal topic
//! `__transaction_state` ([`TRANSACTION_STATE_TOPIC`]), chosen like Kafka does
//! (`partition_for`: `abs(hashCode(transactional_id)) % transaction.state.log.num.partitions`),
//! so its records keep their order. The coordinator keeps every id's metadata in memory, one
//! lock per id, and for each request:
//!
//! 1. calls the request's function in `state` with the current metadata (or `None`);
//! 2. on an error, answers it (mapped for old request versions by `TxnError::code_for`); on
//!    `Outcome::Answer`, answers at once;
//! 3. on `Outcome::Write(t)`: sets `pending` on the current metadata (so concurrent requests
//!    get `CONCURRENT_TRANSACTIONS`), appends `records::encode_key` /
//!    `records::encode_value(TxnLogValue::of(&t.next))` to the id's partition and waits until
//!    it is durable (acks=all); if that fails it clears `pending` and answers the write error
//!    (`COORDINATOR_NOT_AVAILABLE`/`NOT_COORDINATOR`, which clients retry); else it installs
//!    `t.next` and answers `t.reply`;
//! 4. if `t.markers` is set, appends a marker (`Log::append_marker`: a control batch carrying
//!    the markers' producer id and epoch, and as coordinator epoch the leader epoch of the id's
//!    `__transaction_state` partition) to every partition of it at once, retrying each until
//!    it is durable (a deleted partition is skipped, one that saw a newer epoch of the producer
//!    needs none); a marker on `__consumer_offsets` also tells the group coordinator, which
//!    then applies or drops the transaction's offsets there; then writes `state::complete` the
//!    same way as step 3. This runs in a task of its own: EndTxn is answered once `Prepare*` is
//!    durable (as Kafka does), and requests of the id meanwhile get `CONCURRENT_TRANSACTIONS`.
//!
//! The first transition of a new transactional id has no metadata to mark `pending`: the id's
//! slot is marked as being created instead, with the same effect. Wire clients speak
//! transaction version 1 (AddPartitionsToTxn up to v4, TxnOffsetCommit up to v4), except that
//! EndTxn v5 asks for version 2 (the epoch bumped on every end). TxnOffsetCommit is accepted
//! only when the group's `__consumer_offsets` partition is in the producer's open transaction
//! (AddOffsetsToTxn first), since offsets outside it would never get a marker.
//!
//! A background task every `transaction.abort.timed.out.transaction.cleanup.interval.ms` runs
//! `state::abort_timed_out` on every id (steps 3 and 4 with the result), and every
//! `transaction.remove.expired.transaction.cleanup.interval.ms` writes a tombstone for ids that
//! `TxnMetadata::expired`.
//!
//! On start the coordinator replays `__transaction_state` through `records::Replay` (a later
//! record of an id replaces an earlier one, a tombstone removes it, a malformed record is
//! skipped with a warning), then for every id in `PrepareCommit`/`PrepareAbort` writes
//! `state::recovery_markers` and completes.
//!
//! A partition, on a transactional append, calls `OngoingTxns::on_transactional_append`; on a
//! marker, `OngoingTxns::on_marker`, and for an abort it pushes `OngoingTxns::aborted_entry` to
//! the active segment's `AbortedTxnIndex`; when its high watermark moves,
//! `OngoingTxns::on_high_watermark`. A `read_committed` Fetch reads up to the LSO and answers
//! `index::collect_aborted` for the range it returns. The open transactions go into the
//! producer state snapshot, so a restart rebuilds a stale index with `index::rebuild`.
//!
//! # The in-process API (engine and connectors)
//!
//! The [`Broker`](crate::Broker) handle offers the same transactions without the wire, through
//! the same coordinator and markers, as a [`TransactionalProducer`]. The contract, in calling
//! order:
//!
//! 1. `Broker::transactional_producer(transactional_id, timeout_ms)` (InitProducerId). The
//!    producer has an id and epoch. Any older holder of the id is fenced: its later calls fail
//!    with `PRODUCER_FENCED`. If it had a transaction open, that transaction is aborted first
//!    (the call waits for it, as a Kafka client retries on `CONCURRENT_TRANSACTIONS`). A crash
//!    before it returns leaves at most a bumped epoch and that abort, which a restart completes.
//! 2. `append(topic, partition, batch)` any number of times, to any partitions. The first
//!    append to a partition adds it to the transaction (AddPartitionsToTxn, durable before the
//!    data is appended); the batch is stored with the transactional flag and the producer's
//!    id, epoch and sequence; it returns without waiting for an fsync. The data is invisible to `read_committed` readers (the LSO stays
//!    at the transaction's first offset). A crash of the caller leaves the transaction open
//!    until `transaction.timeout.ms`, when the coordinator aborts it; a crash of the broker
//!    reloads it open, with the same timeout.
//! 3. `send_offsets(group, offsets)` (AddOffsetsToTxn, then TxnOffsetCommit): consumer-group
//!    offsets that take effect only if the transaction commits.
//! 4. `commit()` or `abort()` (EndTxn). `commit` first waits until every append of the
//!    transaction is durable (one group-commit round for all of them), so a decided commit
//!    never refers to data a power loss could take. It returns once `PrepareCommit` is durable:
//!    from then on the outcome is decided, and a crash at any later point (markers half
//!    written) completes the commit on restart. `commit_and_wait()` returns once the markers
//!    are durable too (`wait_completed()` waits for them after `commit` or `abort`). If
//!    `commit` fails before that, the transaction may still be open and ends aborted (by
//!    timeout, or by the next producer of the id): the caller goes back to its last checkpoint
//!    and replays. Readers see the data once the COMMIT markers are durable in each partition;
//!    offsets of step 3 apply with the marker on `__consumer_offsets`. A transaction with
//!    nothing in it writes nothing.
//!
//! Calls of one producer are made by one task at a time (`&mut self`), in this order; a call
//! after being fenced fails with `PRODUCER_FENCED`
//! ([`BrokerError::Transaction`](crate::BrokerError::Transaction)) and the caller must make a
//! new producer.

pub mod coordinator;
pub(crate) mod index;
pub mod producer;
pub(crate) mod records;
pub(crate) mod state;

pub use index::AbortedTxn;
pub use producer::TransactionalProducer;
pub use state::TxnResult;

/// The internal topic holding transaction state.
pub const TRANSACTION_STATE_TOPIC: &str = "__transaction_state";

/// Settings of the transaction coordinator: Kafka's `transaction.*` and `transactional.id.*`
/// server keys, with Kafka's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TxnConfig {
    /// `transaction.max.timeout.ms`: the longest `transaction.timeout.ms` a producer may ask
    /// for (InitProducerId with more gets `INVALID_TRANSACTION_TIMEOUT`).
    pub max_timeout_ms: i32,
    /// `transactional.id.expiration.ms`: a transactional id idle this long is removed.
    pub id_expiration_ms: i64,
    /// `transaction.state.log.num.partitions`: partitions of `__transaction_state` when it is
    /// created.
    pub state_log_partitions: i32,
    /// `transaction.state.log.segment.bytes`.
    pub state_log_segment_bytes: u64,
    /// `transaction.abort.timed.out.transaction.cleanup.interval.ms`: how often timed-out
    /// transactions are looked for.
    pub abort_timed_out_interval_ms: u64,
    /// `transaction.remove.expired.transaction.cleanup.interval.ms`: how often expired
    /// transactional ids are looked for.
    pub remove_expired_interval_ms: u64,
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            max_timeout_ms: 900_000,
            id_expiration_ms: 7 * 24 * 60 * 60 * 1000,
            state_log_partitions: 50,
            state_log_segment_bytes: 100 * 1024 * 1024,
            abort_timed_out_interval_ms: 10_000,
            remove_expired_interval_ms: 3_600_000,
        }
    }
}

impl TxnConfig {
    /// The coordinator settings of a broker's Kafka config.
    pub(crate) fn from_kafka(kafka: &crate::config::KafkaConfig) -> TxnConfig {
        TxnConfig {
            max_timeout_ms: kafka.transaction_max_timeout_ms,
            id_expiration_ms: kafka.transactional_id_expiration_ms,
            state_log_partitions: kafka.transaction_state_log_num_partitions,
            state_log_segment_bytes: kafka.transaction_state_log_segment_bytes,
            abort_timed_out_interval_ms: kafka.transaction_abort_timed_out_interval_ms,
            remove_expired_interval_ms: kafka.transaction_remove_expired_interval_ms,
        }
    }

    /// The limits the state machine checks requests against; the coordinator's own aborts use
    /// transaction version 2 (the epoch is bumped on every end), as Kafka 4 does.
    pub(crate) fn limits(&self) -> state::Limits {
        state::Limits {
            max_timeout_ms: self.max_timeout_ms,
            server_version: state::TxnVersion::V2,
        }
    }
}

/// The partition of `__transaction_state` that holds a transactional id's records (Kafka's
/// `abs(transactionalId.hashCode) % partitions`, the same rule as groups use).
pub(crate) fn partition_for(transactional_id: &str, partitions: i32) -> i32 {
    crate::group::partition_for(transactional_id, partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactional_ids_land_on_kafkas_partitions() {
        // Java: Math.abs("hello".hashCode()) % 50 == 22; "my-txn".hashCode() % 50 computed the
        // same way.
        assert_eq!(partition_for("hello", 50), 22);
        let java_hash = "my-txn"
            .encode_utf16()
            .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)));
        assert_eq!(partition_for("my-txn", 50), java_hash.abs() % 50);
        assert_eq!(partition_for("", 50), 0);
        assert_eq!(
            partition_for("x", 0),
            0,
            "no partitions: 0, not a division by zero"
        );
    }

    #[test]
    fn defaults_are_kafkas() {
        let c = TxnConfig::default();
        assert_eq!(c.max_timeout_ms, 900_000);
        assert_eq!(c.id_expiration_ms, 604_800_000);
        assert_eq!(c.state_log_partitions, 50);
        assert_eq!(c.state_log_segment_bytes, 104_857_600);
        assert_eq!(c.abort_timed_out_interval_ms, 10_000);
        assert_eq!(c.remove_expired_interval_ms, 3_600_000);
        assert_eq!(
            TxnConfig::from_kafka(&crate::config::KafkaConfig::default()),
            c,
            "the server keys' defaults are the coordinator's"
        );
    }
}
