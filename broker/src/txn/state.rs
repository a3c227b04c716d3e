//! A transactional id's metadata and its state machine, as Kafka's transaction coordinator
//! defines them (`TransactionMetadata`, `TransactionState` and the request handling of
//! `TransactionCoordinator`).
//!
//! Every request kind has a pure function here: it checks the request against the current
//! [`TxnMetadata`] and returns either the error Kafka returns in that state ([`TxnError`]) or an
//! [`Outcome`]: answer at once, or a [`Transition`] (the new metadata to write to
//! `__transaction_state`, the answer to give once it is written, and the markers to write
//! after). The coordinator owns the locking, the writes and the timers; nothing here does I/O
//! or reads the clock.
//!
//! Differences from Kafka, on purpose:
//! - Kafka bumps the epoch of a fenced producer in memory before the write of `PrepareAbort`
//!   lands, and remembers a failed write (`hasFailedEpochFence`) so it does not bump twice. Here
//!   the bump is part of the computed transition and memory changes only after the write, so a
//!   failed write leaves nothing to remember.
//! - When the epochs of a producer id are exhausted and InitProducerId names an epoch that is
//!   neither the current nor the previous one, Kafka fails with an internal error; Quiver
//!   answers `PRODUCER_FENCED`, since that producer is not the current one.

use std::collections::BTreeSet;
use std::fmt;

use kafka_protocol::error::ResponseError;

/// Producer id of "none" (Kafka's `RecordBatch.NO_PRODUCER_ID`).
pub(crate) const NO_PRODUCER_ID: i64 = -1;
/// Producer epoch of "none" (Kafka's `RecordBatch.NO_PRODUCER_EPOCH`).
pub(crate) const NO_PRODUCER_EPOCH: i16 = -1;
/// Most partitions one transaction may span (data partitions plus `__consumer_offsets`
/// partitions), so one `__transaction_state` record stays small.
pub(crate) const MAX_PARTITIONS_PER_TRANSACTION: usize = 10_000;
/// Most bytes the `__transaction_state` value of one transaction may take (within Kafka's
/// default `message.max.bytes`), which bounds the partitions when topic names are long.
pub(crate) const MAX_STATE_VALUE_BYTES: usize = 1 << 20;

/// Where a transaction is (Kafka's `TransactionState`, with Kafka's ids, which are what
/// `__transaction_state` stores).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum TxnState {
    /// No transaction open (a new producer, or one whose last transaction completed long ago).
    Empty,
    /// Partitions (or offsets) were added; the transaction is open.
    Ongoing,
    /// Commit decided and durable; markers are being written.
    PrepareCommit,
    /// Abort decided and durable; markers are being written.
    PrepareAbort,
    /// Commit markers are written.
    CompleteCommit,
    /// Abort markers are written.
    CompleteAbort,
    /// The transactional id expired and is being removed.
    Dead,
    /// The epoch is being bumped to fence a producer (only ever a pending state).
    PrepareEpochFence,
}

impl TxnState {
    /// Every state, in id order.
    pub(crate) const ALL: [TxnState; 8] = [
        TxnState::Empty,
        TxnState::Ongoing,
        TxnState::PrepareCommit,
        TxnState::PrepareAbort,
        TxnState::CompleteCommit,
        TxnState::CompleteAbort,
        TxnState::Dead,
        TxnState::PrepareEpochFence,
    ];

    /// The byte Kafka stores for the state.
    pub(crate) fn id(self) -> i8 {
        match self {
            TxnState::Empty => 0,
            TxnState::Ongoing => 1,
            TxnState::PrepareCommit => 2,
            TxnState::PrepareAbort => 3,
            TxnState::CompleteCommit => 4,
            TxnState::CompleteAbort => 5,
            TxnState::Dead => 6,
            TxnState::PrepareEpochFence => 7,
        }
    }

    /// The state of a stored byte, `None` for bytes Kafka does not define.
    pub(crate) fn from_id(id: i8) -> Option<TxnState> {
        usize::try_from(id)
            .ok()
            .and_then(|i| TxnState::ALL.get(i).copied())
    }

    /// The name Kafka shows (DescribeTransactions, ListTransactions).
    pub(crate) fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
            TxnState::Dead => "Dead",
            TxnState::PrepareEpochFence => "PrepareEpochFence",
        }
    }

    /// The states a transaction may come from into `self` (Kafka's `validPreviousStates`).
    pub(crate) fn valid_previous(self) -> &'static [TxnState] {
        use TxnState::*;
        match self {
            Empty => &[Empty, CompleteCommit, CompleteAbort],
            Ongoing => &[Ongoing, Empty, CompleteCommit, CompleteAbort],
            PrepareCommit => &[Ongoing],
            // Empty and Complete* only with transaction version 2 (an abort the client sends
            // when unsure whether a transaction is open).
            PrepareAbort => &[
                Ongoing,
                PrepareEpochFence,
                Empty,
                CompleteCommit,
                CompleteAbort,
            ],
            CompleteCommit => &[PrepareCommit],
            CompleteAbort => &[PrepareAbort],
            Dead => &[Empty, CompleteAbort, CompleteCommit],
            PrepareEpochFence => &[Ongoing],
        }
    }

    /// Whether a transaction in `self` may move to `to`.
    pub(crate) fn can_transition_to(self, to: TxnState) -> bool {
        to.valid_previous().contains(&self)
    }

    /// Whether a transactional id in this state may expire (`transactional.id.expiration.ms`).
    pub(crate) fn expiration_allowed(self) -> bool {
        matches!(
            self,
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
        )
    }
}

impl fmt::Display for TxnState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Kafka's `transaction.version` feature levels, as far as the coordinator cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TxnVersion {
    /// The original protocol.
    V0,
    /// Flexible `__transaction_state` records (KIP-890).
    V1,
    /// The epoch is bumped on every EndTxn, partitions are added by the partition leader
    /// (KIP-890 part 2).
    V2,
}

impl TxnVersion {
    /// The feature level as stored (`ClientTransactionVersion`).
    pub(crate) fn level(self) -> i16 {
        match self {
            TxnVersion::V0 => 0,
            TxnVersion::V1 => 1,
            TxnVersion::V2 => 2,
        }
    }

    /// The version of a stored level, `None` for levels Kafka does not define.
    pub(crate) fn from_level(level: i16) -> Option<TxnVersion> {
        match level {
            0 => Some(TxnVersion::V0),
            1 => Some(TxnVersion::V1),
            2 => Some(TxnVersion::V2),
            _ => None,
        }
    }

    /// The version a client speaks by the EndTxn request version it sends (v5+ is V2).
    pub(crate) fn of_end_txn(request_version: i16) -> TxnVersion {
        if request_version >= 5 {
            TxnVersion::V2
        } else {
            TxnVersion::V1
        }
    }

    /// Whether EndTxn bumps the producer epoch.
    pub(crate) fn bumps_epoch(self) -> bool {
        self >= TxnVersion::V2
    }
}

/// How a transaction ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxnResult {
    /// The transaction's records become visible to `read_committed` readers.
    Commit,
    /// Its records are dropped by `read_committed` readers.
    Abort,
}

impl TxnResult {
    /// The EndTxn request's `committed` flag.
    pub(crate) fn from_committed(committed: bool) -> TxnResult {
        if committed {
            TxnResult::Commit
        } else {
            TxnResult::Abort
        }
    }

    fn prepare_state(self) -> TxnState {
        match self {
            TxnResult::Commit => TxnState::PrepareCommit,
            TxnResult::Abort => TxnState::PrepareAbort,
        }
    }
}

/// One partition taking part in a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TxnPartition {
    pub topic: String,
    pub partition: i32,
}

impl TxnPartition {
    /// Partition `partition` of `topic`.
    pub(crate) fn new(topic: impl Into<String>, partition: i32) -> TxnPartition {
        TxnPartition {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TxnPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// What the coordinator knows of one transactional id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TxnMetadata {
    pub transactional_id: String,
    pub producer_id: i64,
    /// The producer id before the last transition (Kafka's `prevProducerId`): lets a producer
    /// whose id was rotated retry the request that rotated it.
    pub previous_producer_id: i64,
    /// The producer id the transaction moves to when it completes, if its epochs ran out
    /// during EndTxn (transaction version 2).
    pub next_producer_id: i64,
    pub producer_epoch: i16,
    /// The epoch before the last bump, so a retried InitProducerId or EndTxn is recognised.
    /// Not stored in `__transaction_state` (Kafka neither): -1 after a restart.
    pub last_producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    pub partitions: BTreeSet<TxnPartition>,
    /// When the open transaction added its first partition; -1 when none is open.
    pub start_timestamp_ms: i64,
    pub last_update_timestamp_ms: i64,
    /// The transaction version of the client's last transition.
    pub client_version: TxnVersion,
    /// The state a write to `__transaction_state` in flight moves to: set by the coordinator
    /// before it writes a transition, cleared when the write ends. Never stored.
    pub pending: Option<TxnState>,
}

impl TxnMetadata {
    /// A new transactional id: `Empty`, with a producer id but no epoch yet.
    pub(crate) fn new(
        transactional_id: impl Into<String>,
        producer_id: i64,
        timeout_ms: i32,
        now_ms: i64,
    ) -> TxnMetadata {
        TxnMetadata {
            transactional_id: transactional_id.into(),
            producer_id,
            previous_producer_id: NO_PRODUCER_ID,
            next_producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            last_producer_epoch: NO_PRODUCER_EPOCH,
            timeout_ms,
            state: TxnState::Empty,
            partitions: BTreeSet::new(),
            start_timestamp_ms: -1,
            last_update_timestamp_ms: now_ms,
            client_version: TxnVersion::V0,
            pending: None,
        }
    }

    /// Whether the epochs of the producer id are used up: the last epoch (`i16::MAX`) is kept
    /// for the coordinator, so it can always fence.
    pub(crate) fn epoch_exhausted(&self) -> bool {
        epoch_exhausted(self.producer_epoch)
    }

    /// The metadata after a transition to `state`: the previous producer id becomes the current
    /// one, as in every Kafka transition.
    fn to(&self, state: TxnState) -> TxnMetadata {
        debug_assert!(
            self.state.can_transition_to(state),
            "{} -> {state} is not a transition Kafka allows",
            self.state
        );
        TxnMetadata {
            previous_producer_id: self.producer_id,
            state,
            pending: None,
            ..self.clone()
        }
    }

    /// Whether an open transaction ran past its timeout (Kafka aborts it then).
    pub(crate) fn timed_out(&self, now_ms: i64) -> bool {
        self.state == TxnState::Ongoing
            && self.pending.is_none()
            && self
                .start_timestamp_ms
                .saturating_add(i64::from(self.timeout_ms))
                < now_ms
    }

    /// Whether the transactional id was idle for `expiration_ms` and may be removed (a
    /// tombstone in `__transaction_state`).
    pub(crate) fn expired(&self, now_ms: i64, expiration_ms: i64) -> bool {
        self.state.expiration_allowed()
            && self.pending.is_none()
            && self.last_update_timestamp_ms <= now_ms.saturating_sub(expiration_ms)
    }
}

fn epoch_exhausted(epoch: i16) -> bool {
    epoch >= i16::MAX - 1
}

/// A refusal, with the Kafka error a client acts on and what happened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct TxnError {
    pub code: ResponseError,
    pub message: String,
}

impl TxnError {
    /// A refusal with `code`; `message` says what happened and what to do.
    pub(crate) fn new(code: ResponseError, message: impl Into<String>) -> TxnError {
        TxnError {
            code,
            message: message.into(),
        }
    }

    /// The error a client that sent `api` at `version` understands: `PRODUCER_FENCED` (KIP-588)
    /// is `INVALID_PRODUCER_EPOCH` to older clients, which handle it the same way.
    pub(crate) fn code_for(&self, api: TxnApi, version: i16) -> ResponseError {
        let first_fenced_version = match api {
            TxnApi::InitProducerId => 4,
            TxnApi::AddPartitionsToTxn | TxnApi::AddOffsetsToTxn | TxnApi::EndTxn => 2,
        };
        if self.code == ResponseError::ProducerFenced && version < first_fenced_version {
            ResponseError::InvalidProducerEpoch
        } else {
            self.code
        }
    }
}

/// The coordinator requests whose errors depend on the request version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxnApi {
    InitProducerId,
    AddPartitionsToTxn,
    AddOffsetsToTxn,
    EndTxn,
}

type Result<T> = std::result::Result<T, TxnError>;

fn fenced(meta: &TxnMetadata, producer_id: i64, epoch: i16) -> TxnError {
    TxnError::new(
        ResponseError::ProducerFenced,
        format!(
            "producer {producer_id} with epoch {epoch} of transactional id '{}' was fenced: the \
             current epoch is {} (a newer instance called InitProducerId, or the transaction \
             timed out)",
            meta.transactional_id, meta.producer_epoch
        ),
    )
}

fn wrong_producer_id(meta: &TxnMetadata, producer_id: i64) -> TxnError {
    TxnError::new(
        ResponseError::InvalidProducerIdMapping,
        format!(
            "producer id {producer_id} is not the one of transactional id '{}' ({})",
            meta.transactional_id, meta.producer_id
        ),
    )
}

fn unknown_id(transactional_id: &str) -> TxnError {
    TxnError::new(
        ResponseError::InvalidProducerIdMapping,
        format!(
            "transactional id '{transactional_id}' is unknown to the coordinator; call \
             InitProducerId first"
        ),
    )
}

fn concurrent(meta: &TxnMetadata) -> TxnError {
    let what = match meta.pending {
        Some(p) => format!("a change to {p} is being written"),
        None => format!("the transaction is in {}", meta.state),
    };
    TxnError::new(
        ResponseError::ConcurrentTransactions,
        format!(
            "transactional id '{}' is busy: {what}; retry shortly",
            meta.transactional_id
        ),
    )
}

fn invalid_state(meta: &TxnMetadata, what: &str) -> TxnError {
    TxnError::new(
        ResponseError::InvalidTxnState,
        format!(
            "{what} is not valid while transactional id '{}' is in state {}",
            meta.transactional_id, meta.state
        ),
    )
}

/// A state no transition ends in was found (only a bug or a corrupt log gets here).
fn impossible_state(meta: &TxnMetadata) -> TxnError {
    TxnError::new(
        ResponseError::UnknownServerError,
        format!(
            "transactional id '{}' is in state {}, which it can never be in at rest",
            meta.transactional_id, meta.state
        ),
    )
}

fn empty_id() -> TxnError {
    TxnError::new(
        ResponseError::InvalidRequest,
        "the transactional id is empty; use a null transactional id for an idempotent producer",
    )
}

/// What the coordinator answers once a transition is written (or at once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Success, with the producer id and epoch the client uses from now on.
    Producer {
        producer_id: i64,
        producer_epoch: i16,
    },
    /// Success, nothing more to say.
    Done,
    /// `CONCURRENT_TRANSACTIONS`: an older instance's transaction is being aborted; the client
    /// retries (InitProducerId that found an open transaction).
    RetryLater,
}

/// Control records to write to every partition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Markers {
    pub result: TxnResult,
    /// The producer id and epoch the markers carry: the transaction's, bumped when the
    /// producer was fenced or with transaction version 2, so older writes are refused.
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub partitions: Vec<TxnPartition>,
}

/// A change to persist in `__transaction_state` before anything else happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Transition {
    /// The metadata to write and, once written, to keep.
    pub next: TxnMetadata,
    /// The answer to give once `next` is written.
    pub reply: Reply,
    /// Markers to write after `next` is written; then [`complete`] gives the last transition.
    pub markers: Option<Markers>,
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Nothing changes: answer at once.
    Answer(Reply),
    /// Write a transition first.
    Write(Transition),
}

/// The settings the checks depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// `transaction.max.timeout.ms`.
    pub max_timeout_ms: i32,
    /// The transaction version the coordinator itself uses when it aborts (timeouts, fencing).
    pub server_version: TxnVersion,
}

/// The producer id and epoch an InitProducerId names (KIP-360: a producer recovering from an
/// error keeps its id and asks for a bump instead of a new id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExpectedProducer {
    pub producer_id: i64,
    pub producer_epoch: i16,
}

impl ExpectedProducer {
    /// The request's `producer_id`/`producer_epoch` pair: both -1 (none) or both set.
    pub(crate) fn from_request(
        producer_id: i64,
        producer_epoch: i16,
    ) -> Result<Option<ExpectedProducer>> {
        match (producer_id, producer_epoch) {
            (NO_PRODUCER_ID, NO_PRODUCER_EPOCH) => Ok(None),
            (id, epoch) if id >= 0 && epoch >= 0 => Ok(Some(ExpectedProducer {
                producer_id: id,
                producer_epoch: epoch,
            })),
            (id, epoch) => Err(TxnError::new(
                ResponseError::InvalidRequest,
                format!(
                    "producer id {id} and epoch {epoch}: give both (to recover a producer) or \
                     neither (-1, -1)"
                ),
            )),
        }
    }
}

/// InitProducerId with a transactional id: a new producer id, or the next epoch of the current
/// one, fencing any older instance. An open transaction is aborted first (the answer is then
/// `CONCURRENT_TRANSACTIONS` and the client retries). `new_producer_id` hands out producer ids
/// (called for a new transactional id and when the epochs of one run out).
pub(crate) fn init_producer_id(
    current: Option<&TxnMetadata>,
    transactional_id: &str,
    timeout_ms: i32,
    expected: Option<ExpectedProducer>,
    limits: Limits,
    now_ms: i64,
    new_producer_id: &mut dyn FnMut() -> Result<i64>,
) -> Result<Outcome> {
    if transactional_id.is_empty() {
        return Err(empty_id());
    }
    if timeout_ms <= 0 || timeout_ms > limits.max_timeout_ms {
        return Err(TxnError::new(
            ResponseError::InvalidTransactionTimeout,
            format!(
                "transaction timeout {timeout_ms} ms is not in 1..={} ms \
                 (transaction.max.timeout.ms); lower the producer's transaction.timeout.ms",
                limits.max_timeout_ms
            ),
        ));
    }
    let created;
    let meta = match current {
        Some(m) => m,
        None => {
            created = TxnMetadata::new(transactional_id, new_producer_id()?, timeout_ms, now_ms);
            &created
        }
    };
    if meta.pending.is_some() {
        return Err(concurrent(meta));
    }
    if let Some(e) = expected {
        // A stated producer id must be the current one, unless the metadata is brand new (a
        // producer recovering after its id was forgotten) or it is the id rotated away from by
        // a bump the producer never heard of.
        let valid = meta.producer_epoch == NO_PRODUCER_EPOCH
            || e.producer_id == meta.producer_id
            || (e.producer_id == meta.previous_producer_id && epoch_exhausted(e.producer_epoch));
        if !valid {
            return Err(fenced(meta, e.producer_id, e.producer_epoch));
        }
    }
    match meta.state {
        TxnState::PrepareCommit | TxnState::PrepareAbort => Err(concurrent(meta)),
        TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
            let next = if meta.epoch_exhausted() {
                match expected {
                    Some(e)
                        if e.producer_epoch != meta.producer_epoch
                            && e.producer_epoch == meta.last_producer_epoch =>
                    {
                        retried_bump(meta, timeout_ms, now_ms)
                    }
                    Some(e) if e.producer_epoch != meta.producer_epoch => {
                        return Err(fenced(meta, e.producer_id, e.producer_epoch));
                    }
                    _ => rotate_producer_id(
                        meta,
                        new_producer_id()?,
                        timeout_ms,
                        now_ms,
                        expected.is_some(),
                    ),
                }
            } else {
                bump_epoch(meta, timeout_ms, expected, now_ms)?
            };
            Ok(Outcome::Write(Transition {
                reply: Reply::Producer {
                    producer_id: next.producer_id,
                    producer_epoch: next.producer_epoch,
                },
                next,
                markers: None,
            }))
        }
        // The older instance's transaction is aborted under a bumped epoch that is never handed
        // out; the retry bumps again (or rotates the producer id if that used the last epoch).
        TxnState::Ongoing => {
            let transition = fence_and_abort(meta, limits.server_version, now_ms);
            Ok(Outcome::Write(Transition {
                reply: Reply::RetryLater,
                ..transition
            }))
        }
        TxnState::Dead | TxnState::PrepareEpochFence => Err(impossible_state(meta)),
    }
}

/// Kafka's `prepareIncrementProducerEpoch`: `Empty` with the next epoch.
fn bump_epoch(
    meta: &TxnMetadata,
    timeout_ms: i32,
    expected: Option<ExpectedProducer>,
    now_ms: i64,
) -> Result<TxnMetadata> {
    let bumped = meta.producer_epoch + 1;
    let (epoch, last) = match expected {
        None => (bumped, NO_PRODUCER_EPOCH),
        Some(e)
            if meta.producer_epoch == NO_PRODUCER_EPOCH
                || e.producer_epoch == meta.producer_epoch =>
        {
            (bumped, meta.producer_epoch)
        }
        // A retry of a bump that succeeded: hand out the same epoch again.
        Some(e) if e.producer_epoch == meta.last_producer_epoch => {
            return Ok(retried_bump(meta, timeout_ms, now_ms));
        }
        Some(e) => return Err(fenced(meta, e.producer_id, e.producer_epoch)),
    };
    Ok(TxnMetadata {
        producer_epoch: epoch,
        last_producer_epoch: last,
        ..fresh_empty(meta, timeout_ms, now_ms)
    })
}

/// The answer to a retried InitProducerId whose bump went through: the same producer id and
/// epoch again (written again, with the retry's timeout).
fn retried_bump(meta: &TxnMetadata, timeout_ms: i32, now_ms: i64) -> TxnMetadata {
    fresh_empty(meta, timeout_ms, now_ms)
}

/// Kafka's `prepareProducerIdRotation`: a new producer id at epoch 0.
fn rotate_producer_id(
    meta: &TxnMetadata,
    new_producer_id: i64,
    timeout_ms: i32,
    now_ms: i64,
    record_last_epoch: bool,
) -> TxnMetadata {
    TxnMetadata {
        producer_id: new_producer_id,
        producer_epoch: 0,
        last_producer_epoch: if record_last_epoch {
            meta.producer_epoch
        } else {
            NO_PRODUCER_EPOCH
        },
        ..fresh_empty(meta, timeout_ms, now_ms)
    }
}

fn fresh_empty(meta: &TxnMetadata, timeout_ms: i32, now_ms: i64) -> TxnMetadata {
    TxnMetadata {
        timeout_ms,
        partitions: BTreeSet::new(),
        start_timestamp_ms: -1,
        last_update_timestamp_ms: now_ms,
        ..meta.to(TxnState::Empty)
    }
}

/// Fences the current producer and aborts its open transaction: `PrepareAbort` under a bumped
/// epoch, with ABORT markers to every partition (Kafka's `prepareFenceProducerEpoch` followed by
/// an abort that does not come from the client).
fn fence_and_abort(meta: &TxnMetadata, server_version: TxnVersion, now_ms: i64) -> Transition {
    // i16::MAX is never handed to a client, so the coordinator can always take it to fence.
    let fenced_epoch = meta.producer_epoch.saturating_add(1);
    let fenced = TxnMetadata {
        producer_epoch: fenced_epoch,
        last_producer_epoch: NO_PRODUCER_EPOCH,
        ..meta.clone()
    };
    let next = prepare_end(
        &fenced,
        TxnResult::Abort,
        server_version,
        NO_PRODUCER_ID,
        now_ms,
        false,
    );
    let markers = markers_of(&next, TxnResult::Abort);
    Transition {
        reply: Reply::Done,
        next,
        markers: Some(markers),
    }
}

/// Kafka's `prepareAbortOrCommit`.
fn prepare_end(
    meta: &TxnMetadata,
    result: TxnResult,
    version: TxnVersion,
    next_producer_id: i64,
    now_ms: i64,
    no_partition_added: bool,
) -> TxnMetadata {
    let (epoch, last) = if version.bumps_epoch() {
        // An abort at i16::MAX (only after a fence at the last epoch) goes through unbumped, so
        // the transactional id can recover.
        (meta.producer_epoch.saturating_add(1), meta.producer_epoch)
    } else {
        (meta.producer_epoch, meta.last_producer_epoch)
    };
    TxnMetadata {
        producer_epoch: epoch,
        last_producer_epoch: last,
        // An abort with nothing added (version 2) has no start; the abort's time stands in.
        start_timestamp_ms: if no_partition_added {
            now_ms
        } else {
            meta.start_timestamp_ms
        },
        next_producer_id,
        last_update_timestamp_ms: now_ms,
        client_version: version,
        ..meta.to(result.prepare_state())
    }
}

fn markers_of(meta: &TxnMetadata, result: TxnResult) -> Markers {
    Markers {
        result,
        producer_id: meta.producer_id,
        producer_epoch: meta.producer_epoch,
        partitions: meta.partitions.iter().cloned().collect(),
    }
}

/// Who sends AddPartitionsToTxn, AddOffsetsToTxn or EndTxn: a transactional id and the
/// producer id and epoch InitProducerId gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caller<'a> {
    pub transactional_id: &'a str,
    pub producer_id: i64,
    pub producer_epoch: i16,
}

impl Caller<'_> {
    /// The metadata of the caller's transactional id, which must exist.
    fn metadata<'m>(&self, current: Option<&'m TxnMetadata>) -> Result<&'m TxnMetadata> {
        if self.transactional_id.is_empty() {
            return Err(empty_id());
        }
        current.ok_or_else(|| unknown_id(self.transactional_id))
    }

    /// The checks AddPartitionsToTxn, AddOffsetsToTxn and their verify-only form share: the
    /// caller is the current producer.
    fn check<'m>(&self, current: Option<&'m TxnMetadata>) -> Result<&'m TxnMetadata> {
        let meta = self.metadata(current)?;
        if meta.producer_id != self.producer_id {
            return Err(wrong_producer_id(meta, self.producer_id));
        }
        if meta.producer_epoch != self.producer_epoch {
            return Err(fenced(meta, self.producer_id, self.producer_epoch));
        }
        Ok(meta)
    }
}

/// AddPartitionsToTxn (v0-v3 from a client, or v4+ without verify-only from a partition leader
/// with transaction version 2): the partitions join the open transaction, which starts if none
/// is open. Whether the topics exist and may be written is the caller's check.
pub(crate) fn add_partitions(
    current: Option<&TxnMetadata>,
    caller: Caller<'_>,
    partitions: &[TxnPartition],
    client_version: TxnVersion,
    now_ms: i64,
) -> Result<Outcome> {
    let meta = caller.check(current)?;
    if meta.pending.is_some() {
        return Err(concurrent(meta));
    }
    match meta.state {
        TxnState::PrepareCommit | TxnState::PrepareAbort => return Err(concurrent(meta)),
        TxnState::Ongoing if partitions.iter().all(|p| meta.partitions.contains(p)) => {
            return Ok(Outcome::Answer(Reply::Done));
        }
        TxnState::Dead | TxnState::PrepareEpochFence => return Err(impossible_state(meta)),
        TxnState::Ongoing
        | TxnState::Empty
        | TxnState::CompleteCommit
        | TxnState::CompleteAbort => {}
    }
    let mut all = meta.partitions.clone();
    all.extend(partitions.iter().cloned());
    let value_bytes = super::records::value_bytes_max(&all);
    if all.len() > MAX_PARTITIONS_PER_TRANSACTION || value_bytes > MAX_STATE_VALUE_BYTES {
        return Err(TxnError::new(
            ResponseError::InvalidRequest,
            format!(
                "transactional id '{}' would span {} partitions ({value_bytes} bytes of state), \
                 more than one transaction may span ({MAX_PARTITIONS_PER_TRANSACTION} partitions, \
                 {MAX_STATE_VALUE_BYTES} bytes); commit more often",
                caller.transactional_id,
                all.len()
            ),
        ));
    }
    let start_timestamp_ms = if meta.state == TxnState::Ongoing {
        meta.start_timestamp_ms
    } else {
        now_ms
    };
    let next = TxnMetadata {
        partitions: all,
        start_timestamp_ms,
        last_update_timestamp_ms: now_ms,
        client_version,
        ..meta.to(TxnState::Ongoing)
    };
    Ok(Outcome::Write(Transition {
        next,
        reply: Reply::Done,
        markers: None,
    }))
}

/// AddOffsetsToTxn: the group's partition of `__consumer_offsets` joins the transaction, so
/// the offsets TxnOffsetCommit writes there get the transaction's markers.
pub(crate) fn add_offsets(
    current: Option<&TxnMetadata>,
    caller: Caller<'_>,
    group_id: &str,
    offsets_topic_partitions: i32,
    client_version: TxnVersion,
    now_ms: i64,
) -> Result<Outcome> {
    let partition = TxnPartition::new(
        crate::group::OFFSETS_TOPIC,
        crate::group::partition_for(group_id, offsets_topic_partitions),
    );
    add_partitions(current, caller, &[partition], client_version, now_ms)
}

/// The verify-only AddPartitionsToTxn of KIP-890 (v4+, sent by a partition leader before it
/// appends a transactional batch): for each partition, `None` when it is in the open
/// transaction, else `TRANSACTION_ABORTABLE`. Nothing changes.
pub(crate) fn verify_partitions(
    current: Option<&TxnMetadata>,
    caller: Caller<'_>,
    partitions: &[TxnPartition],
) -> Result<Vec<(TxnPartition, Option<ResponseError>)>> {
    let meta = caller.check(current)?;
    // A pending change is not looked at: the append is checked again against the log's
    // producer state, and partitions leave only once the end marker is written.
    if matches!(meta.state, TxnState::PrepareCommit | TxnState::PrepareAbort) {
        return Err(concurrent(meta));
    }
    Ok(partitions
        .iter()
        .map(|p| {
            let error =
                (!meta.partitions.contains(p)).then_some(ResponseError::TransactionAbortable);
            (p.clone(), error)
        })
        .collect())
}

/// EndTxn: commit or abort the open transaction. `Prepare*` is written first; once it is, the
/// outcome is decided (a restart completes it), the client is answered and the markers are
/// written. With transaction version 2 the epoch is bumped, retries of a finished EndTxn are
/// recognised by the epoch, and an abort with no transaction open is allowed.
pub(crate) fn end_txn(
    current: Option<&TxnMetadata>,
    caller: Caller<'_>,
    result: TxnResult,
    client_version: TxnVersion,
    now_ms: i64,
    new_producer_id: &mut dyn FnMut() -> Result<i64>,
) -> Result<Outcome> {
    let meta = caller.metadata(current)?;
    let (producer_id, producer_epoch) = (caller.producer_id, caller.producer_epoch);
    if client_version.bumps_epoch() {
        end_txn_v2(
            meta,
            producer_id,
            producer_epoch,
            result,
            now_ms,
            new_producer_id,
        )
    } else {
        end_txn_v1(meta, producer_id, producer_epoch, result, now_ms)
    }
}

fn what(result: TxnResult) -> &'static str {
    match result {
        TxnResult::Commit => "EndTxn(commit)",
        TxnResult::Abort => "EndTxn(abort)",
    }
}

fn end_txn_v1(
    meta: &TxnMetadata,
    producer_id: i64,
    producer_epoch: i16,
    result: TxnResult,
    now_ms: i64,
) -> Result<Outcome> {
    if meta.producer_id != producer_id {
        return Err(wrong_producer_id(meta, producer_id));
    }
    if meta.producer_epoch != producer_epoch {
        return Err(fenced(meta, producer_id, producer_epoch));
    }
    if meta.pending.is_some() {
        return Err(concurrent(meta));
    }
    use TxnResult::{Abort, Commit};
    match (meta.state, result) {
        (TxnState::Ongoing, _) => {
            let next = prepare_end(meta, result, TxnVersion::V1, NO_PRODUCER_ID, now_ms, false);
            Ok(end_transition(next, result))
        }
        // A retry of an EndTxn that went through.
        (TxnState::CompleteCommit, Commit) | (TxnState::CompleteAbort, Abort) => {
            Ok(Outcome::Answer(Reply::Done))
        }
        (TxnState::PrepareCommit, Commit) | (TxnState::PrepareAbort, Abort) => {
            Err(concurrent(meta))
        }
        (TxnState::Dead | TxnState::PrepareEpochFence, _) => Err(impossible_state(meta)),
        _ => Err(invalid_state(meta, what(result))),
    }
}

// With transaction version 2 the epoch says whether a request is a retry:
//
// |                | Abort, retry | Abort, current | Commit, retry | Commit, current |
// | Empty          | FENCED       | bump           | FENCED        | INVALID_TXN_STATE |
// | CompleteAbort  | ok           | bump           | INVALID_TXN_STATE | INVALID_TXN_STATE |
// | CompleteCommit | INVALID_TXN_STATE | bump      | ok            | INVALID_TXN_STATE |
//
// where "retry" means the request carries the epoch before the last bump.
fn end_txn_v2(
    meta: &TxnMetadata,
    producer_id: i64,
    producer_epoch: i16,
    result: TxnResult,
    now_ms: i64,
    new_producer_id: &mut dyn FnMut() -> Result<i64>,
) -> Result<Outcome> {
    // A retry after the epochs ran out: the transaction completed under a new producer id.
    let retry_on_overflow = meta.previous_producer_id == producer_id
        && producer_epoch == i16::MAX - 1
        && meta.producer_epoch == 0;
    let retry_on_bump = i32::from(meta.producer_epoch) == i32::from(producer_epoch) + 1;
    let valid_epoch = match meta.state {
        TxnState::PrepareCommit | TxnState::PrepareAbort => retry_on_bump,
        TxnState::CompleteCommit | TxnState::CompleteAbort => {
            retry_on_bump || retry_on_overflow || producer_epoch == meta.producer_epoch
        }
        _ => producer_epoch == meta.producer_epoch,
    };
    let is_retry = retry_on_bump || retry_on_overflow;
    if meta.producer_id != producer_id && !retry_on_overflow {
        return Err(wrong_producer_id(meta, producer_id));
    }
    if !valid_epoch {
        return Err(fenced(meta, producer_id, producer_epoch));
    }
    if meta.pending.is_some() {
        return Err(concurrent(meta));
    }
    let mut prepare = |no_partition_added: bool| -> Result<Outcome> {
        // The bump below uses the last epoch a client may hold; the transaction then completes
        // under a new producer id at epoch 0.
        let next_producer_id = if meta.epoch_exhausted() {
            new_producer_id()?
        } else {
            NO_PRODUCER_ID
        };
        let next = prepare_end(
            meta,
            result,
            TxnVersion::V2,
            next_producer_id,
            now_ms,
            no_partition_added,
        );
        Ok(end_transition(next, result))
    };
    use TxnResult::{Abort, Commit};
    let current_producer = Reply::Producer {
        producer_id: meta.producer_id,
        producer_epoch: meta.producer_epoch,
    };
    match (meta.state, result) {
        (TxnState::Ongoing, _) => prepare(false),
        (TxnState::CompleteCommit, Commit) | (TxnState::CompleteAbort, Abort) if is_retry => {
            Ok(Outcome::Answer(current_producer))
        }
        (TxnState::CompleteCommit, Abort) | (TxnState::CompleteAbort, Abort) if !is_retry => {
            prepare(true)
        }
        (TxnState::Empty, Abort) => prepare(true),
        (TxnState::PrepareCommit, Commit) | (TxnState::PrepareAbort, Abort) => {
            Err(concurrent(meta))
        }
        (TxnState::Dead | TxnState::PrepareEpochFence, _) => Err(impossible_state(meta)),
        _ => Err(invalid_state(meta, what(result))),
    }
}

/// The transition to `Prepare*`: answered once written (with version 2, with the producer id
/// and epoch to use next), then markers.
fn end_transition(next: TxnMetadata, result: TxnResult) -> Outcome {
    let reply = if !next.client_version.bumps_epoch() {
        Reply::Done
    } else if next.next_producer_id != NO_PRODUCER_ID {
        // The epochs ran out: the client continues under the new producer id.
        Reply::Producer {
            producer_id: next.next_producer_id,
            producer_epoch: 0,
        }
    } else {
        Reply::Producer {
            producer_id: next.producer_id,
            producer_epoch: next.producer_epoch,
        }
    };
    let markers = markers_of(&next, result);
    Outcome::Write(Transition {
        next,
        reply,
        markers: Some(markers),
    })
}

/// After every marker of a `Prepare*` transaction is written: `Complete*`, with no partitions
/// (Kafka's `prepareComplete`). With version 2, a transaction whose epochs ran out moves to its
/// next producer id at epoch 0.
pub(crate) fn complete(meta: &TxnMetadata, now_ms: i64) -> Result<TxnMetadata> {
    let state = match meta.state {
        TxnState::PrepareCommit => TxnState::CompleteCommit,
        TxnState::PrepareAbort => TxnState::CompleteAbort,
        _ => return Err(invalid_state(meta, "completing a transaction")),
    };
    let rotate = meta.client_version.bumps_epoch() && meta.next_producer_id != NO_PRODUCER_ID;
    Ok(TxnMetadata {
        producer_id: if rotate {
            meta.next_producer_id
        } else {
            meta.producer_id
        },
        producer_epoch: if rotate { 0 } else { meta.producer_epoch },
        next_producer_id: NO_PRODUCER_ID,
        partitions: BTreeSet::new(),
        last_update_timestamp_ms: now_ms,
        ..meta.to(state)
    })
}

/// The coordinator's abort of a transaction that ran past its timeout: the producer is fenced
/// (its epoch bumped) and the transaction aborted. `None` when the transaction did not time out
/// or a change is in flight.
pub(crate) fn abort_timed_out(
    meta: &TxnMetadata,
    server_version: TxnVersion,
    now_ms: i64,
) -> Option<Transition> {
    meta.timed_out(now_ms)
        .then(|| fence_and_abort(meta, server_version, now_ms))
}

/// What a transaction loaded from `__transaction_state` needs after a restart: the markers of
/// a decided (`Prepare*`) transaction are written again (writing a marker twice is harmless:
/// the second finds no open transaction), then [`complete`]. An `Ongoing` one needs nothing now:
/// it completes by its producer or is aborted when it times out.
pub(crate) fn recovery_markers(meta: &TxnMetadata) -> Option<Markers> {
    match meta.state {
        TxnState::PrepareCommit => Some(markers_of(meta, TxnResult::Commit)),
        TxnState::PrepareAbort => Some(markers_of(meta, TxnResult::Abort)),
        _ => None,
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
