//! The [`TxnCoordinator`]: every transactional id of the broker, their state in
//! `__transaction_state`, the markers that end transactions, and the timers that abort
//! transactions past their timeout and remove idle ids. The design is in the [module
//! docs](super); the decisions themselves are the pure functions of `state`.
//!
//! Concurrency: the id map and each id have their own `parking_lot` mutex, and no lock is held
//! across an `.await`. A request that must write a transition marks the id's metadata
//! `pending` under its lock, drops the lock, writes, and installs the result under the lock
//! again; meanwhile other requests of that id get `CONCURRENT_TRANSACTIONS` (clients retry).
//! Only one write of an id is ever in flight, so its records reach `__transaction_state` in
//! the order of its transitions. Lock order: the map's lock may be taken before an id's lock,
//! never after.
//!
//! Markers run in a task of their own once `Prepare*` is durable, so EndTxn is answered then
//! (Kafka's behaviour); `TxnCoordinator::wait_completed` waits for the markers and the
//! `Complete*` record.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::records::{self, Replay};
use super::state::{
    self, Caller, ExpectedProducer, Markers, Outcome, Reply, TxnError, TxnMetadata, TxnPartition,
    TxnResult, TxnState, TxnVersion,
};
use super::{TRANSACTION_STATE_TOPIC, TxnConfig, partition_for};
use crate::broker::{Broker, NewTopic, WeakBroker, stopped};
use crate::error::{BrokerError, Result};
use crate::log::{Ack, Log, ProducerInfo, now_ms};
use crate::record::{EnvelopeBuilder, EnvelopeColumns};

/// Most transactional ids one broker keeps (each holds its metadata in memory).
pub const MAX_TRANSACTIONAL_IDS: usize = 100_000;
/// Most partitions in all open transactions of the broker together (each costs a little
/// memory here and a marker to write); more are refused, as more transactional ids are.
pub const MAX_PARTITIONS_IN_TRANSACTIONS: usize = 1_000_000;
/// Bytes read per step when loading `__transaction_state`.
const LOAD_READ_BYTES: usize = 4 << 20;
/// `max.message.bytes` of `__transaction_state` (a value is bounded by
/// `state::MAX_STATE_VALUE_BYTES`).
const STATE_TOPIC_MAX_MESSAGE_BYTES: usize = 2 << 20;
/// First wait before a failed marker (or completion) is written again; doubles up to
/// [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(50);
/// Longest wait between two attempts to write a marker.
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Marker tasks kept for shutdown to wait on; finished ones are dropped when this many are held.
const TASKS_PRUNE_AT: usize = 1024;

/// A transactional id as ListTransactions shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listed {
    pub transactional_id: String,
    pub producer_id: i64,
    pub state: TxnState,
    /// When the open transaction started; -1 when none is open.
    pub start_timestamp_ms: i64,
}

/// One transactional id: its metadata and a signal that it changed.
#[derive(Debug)]
struct Slot {
    state: Mutex<SlotState>,
    /// Bumped after every change of the metadata; [`TxnCoordinator::wait_completed`] watches it.
    changed: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct SlotState {
    /// `None` until the id's first transition is written.
    meta: Option<TxnMetadata>,
    /// The first transition of a new id is being written (there is no metadata to mark
    /// `pending` yet).
    creating: bool,
    /// The id was removed (expired) while a request held this slot: it must look the id up
    /// again.
    removed: bool,
}

impl Slot {
    fn new(meta: Option<TxnMetadata>) -> Arc<Slot> {
        Arc::new(Slot {
            state: Mutex::new(SlotState {
                meta,
                ..SlotState::default()
            }),
            changed: watch::channel(0).0,
        })
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }
}

fn busy(transactional_id: &str, why: &str) -> TxnError {
    TxnError::new(
        ResponseError::ConcurrentTransactions,
        format!("transactional id '{transactional_id}' is busy: {why}; retry shortly"),
    )
}

/// The Kafka error for a failed write to `__transaction_state`: clients retry both.
fn write_error(e: &BrokerError) -> TxnError {
    let code = match e {
        BrokerError::ShuttingDown => ResponseError::NotCoordinator,
        _ => ResponseError::CoordinatorNotAvailable,
    };
    TxnError::new(
        code,
        format!("cannot write the transaction state ({e}); retry"),
    )
}

fn stopped_error() -> TxnError {
    TxnError::new(
        ResponseError::NotCoordinator,
        "the transaction coordinator is shutting down",
    )
}

/// The transaction coordinator of one broker. Owned by the [`Broker`]; reach it with
/// [`Broker::transactions`](crate::Broker::transactions). Every method answers with Kafka
/// errors (`TxnError`), never panics on client input, and bounds what it keeps
/// ([`MAX_TRANSACTIONAL_IDS`]).
pub struct TxnCoordinator {
    config: TxnConfig,
    /// The catalog, partition logs, producer ids and the group coordinator. Weak: the broker
    /// owns the coordinator, which must not keep it alive.
    broker: WeakBroker,
    ids: Mutex<HashMap<String, Arc<Slot>>>,
    /// Partitions in the transactions of all ids together (see
    /// [`MAX_PARTITIONS_IN_TRANSACTIONS`]).
    partitions_in_txns: std::sync::atomic::AtomicUsize,
    /// The partition logs of `__transaction_state`, once it exists. Set once: internal topics
    /// are neither deleted nor re-partitioned.
    logs: OnceLock<Vec<Arc<Log>>>,
    /// Serializes creating the topic.
    create_lock: tokio::sync::Mutex<()>,
    stopped: AtomicBool,
    stop: watch::Sender<bool>,
    /// The timers and the marker tasks, for shutdown to wait on.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Holds marker tasks back before their first marker (tests of a restart in `Prepare*`).
    #[cfg(test)]
    hold_markers: AtomicBool,
}

impl std::fmt::Debug for TxnCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxnCoordinator")
            .field("ids", &self.ids.lock().len())
            .finish_non_exhaustive()
    }
}

impl TxnCoordinator {
    /// A coordinator with no transactional ids over `broker`'s catalog.
    /// [`Broker::open`](crate::Broker::open) starts it with `TxnCoordinator::start`.
    pub(crate) fn new(config: TxnConfig, broker: WeakBroker) -> TxnCoordinator {
        TxnCoordinator {
            config,
            broker,
            ids: Mutex::new(HashMap::new()),
            partitions_in_txns: std::sync::atomic::AtomicUsize::new(0),
            logs: OnceLock::new(),
            create_lock: tokio::sync::Mutex::new(()),
            stopped: AtomicBool::new(false),
            stop: watch::channel(false).0,
            tasks: Mutex::new(Vec::new()),
            #[cfg(test)]
            hold_markers: AtomicBool::new(false),
        }
    }

    /// Loads the transactional ids stored in `__transaction_state` (if it exists), writes
    /// again the markers of every transaction that was decided (`Prepare*`) and completes it,
    /// and starts the timers. Called once by [`Broker::open`](crate::Broker::open), after the
    /// topics are open and the group coordinator started, inside a Tokio runtime.
    pub(crate) fn start(&self, broker: &Broker) -> Result<()> {
        let loaded = match broker.log_set(TRANSACTION_STATE_TOPIC) {
            Some(logs) => {
                let logs = self.logs.get_or_init(|| logs);
                load(logs)?
            }
            None => HashMap::new(),
        };
        let mut recovering = Vec::new();
        {
            let mut ids = self.ids.lock();
            for (id, meta) in loaded {
                if let Some(markers) = state::recovery_markers(&meta) {
                    recovering.push((id.clone(), markers));
                }
                self.partitions_in_txns
                    .fetch_add(meta.partitions.len(), Ordering::AcqRel);
                ids.insert(id, Slot::new(Some(meta)));
            }
            tracing::info!(
                transactional_ids = ids.len(),
                decided = recovering.len(),
                "loaded transactional ids from {TRANSACTION_STATE_TOPIC}"
            );
        }
        for (id, markers) in recovering {
            self.spawn_completion(id, markers);
        }
        let abort_every = Duration::from_millis(self.config.abort_timed_out_interval_ms.max(1));
        let expire_every = Duration::from_millis(self.config.remove_expired_interval_ms.max(1));
        let timers = [
            self.spawn_periodic(abort_every, |c| {
                Box::pin(async move {
                    c.abort_timed_out_at(now_ms()).await;
                })
            }),
            self.spawn_periodic(expire_every, |c| {
                Box::pin(async move {
                    c.remove_expired_at(now_ms()).await;
                })
            }),
        ];
        self.tasks.lock().extend(timers);
        Ok(())
    }

    /// Stops the timers and the marker tasks (a restart writes the markers of decided
    /// transactions again) and waits for them. Requests after this get NOT_COORDINATOR.
    pub(crate) async fn shutdown(&self) {
        self.stopped.store(true, Ordering::Release);
        self.stop.send_replace(true);
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for t in tasks {
            let _ = t.await;
        }
    }

    fn spawn_periodic<F>(&self, every: Duration, job: F) -> JoinHandle<()>
    where
        F: for<'a> Fn(&'a TxnCoordinator) -> futures::future::BoxFuture<'a, ()> + Send + 'static,
    {
        let weak = self.broker.clone();
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped(&mut stop) => return,
                }
                let Some(broker) = weak.upgrade() else { return };
                tokio::select! {
                    _ = job(broker.transactions()) => {}
                    _ = stopped(&mut stop) => return,
                }
            }
        })
    }

    // ------------------------------------------------------------------------------------------
    // __transaction_state

    /// `__transaction_state`, created on first use (as Kafka does).
    async fn ready(&self) -> Result<&[Arc<Log>], TxnError> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(stopped_error());
        }
        if let Some(logs) = self.logs.get() {
            return Ok(logs);
        }
        let _one_at_a_time = self.create_lock.lock().await;
        if let Some(logs) = self.logs.get() {
            return Ok(logs);
        }
        let broker = self.broker.upgrade().ok_or_else(stopped_error)?;
        let logs = match broker.log_set(TRANSACTION_STATE_TOPIC) {
            Some(logs) => logs,
            None => {
                let configs = BTreeMap::from([
                    ("cleanup.policy".to_owned(), "compact".to_owned()),
                    (
                        "segment.bytes".to_owned(),
                        self.config.state_log_segment_bytes.to_string(),
                    ),
                    (
                        "max.message.bytes".to_owned(),
                        STATE_TOPIC_MAX_MESSAGE_BYTES.to_string(),
                    ),
                ]);
                let new = NewTopic {
                    name: TRANSACTION_STATE_TOPIC.to_owned(),
                    partitions: Some(self.config.state_log_partitions),
                    configs,
                };
                match broker.create_topic(new).await {
                    Ok(_) | Err(BrokerError::TopicExists(_)) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "cannot create {TRANSACTION_STATE_TOPIC}; transactions are unavailable");
                        return Err(write_error(&e));
                    }
                }
                broker
                    .log_set(TRANSACTION_STATE_TOPIC)
                    .ok_or_else(|| write_error(&BrokerError::ShuttingDown))?
            }
        };
        Ok(self.logs.get_or_init(|| logs))
    }

    /// Makes sure `__transaction_state` exists (FindCoordinator does this, as in Kafka).
    pub async fn ensure_ready(&self) -> Result<(), ResponseError> {
        self.ready().await.map(|_| ()).map_err(|e| e.code)
    }

    /// Appends the id's record (a tombstone for `None`) to its partition and waits until it is
    /// acknowledged by the rule acks=all produce follows.
    async fn write_state(&self, transactional_id: &str, meta: Option<&TxnMetadata>) -> Result<()> {
        let logs = self
            .logs
            .get()
            .filter(|logs| !logs.is_empty())
            .ok_or_else(|| BrokerError::UnknownTopic(TRANSACTION_STATE_TOPIC.to_owned()))?;
        let p = partition_for(transactional_id, logs.len() as i32);
        let log = logs.get(p as usize).ok_or_else(|| {
            BrokerError::Internal(format!("no partition {p} of {TRANSACTION_STATE_TOPIC}"))
        })?;
        let key = records::encode_key(transactional_id);
        let value = meta.map(|m| records::encode_value(&records::TxnLogValue::of(m)));
        let mut batch =
            EnvelopeBuilder::with_capacity(1, key.len() + value.as_ref().map_or(0, Vec::len));
        batch.append(now_ms(), Some(&key), value.as_deref(), &[]);
        let info = log.append_unflushed(&batch.finish(), ProducerInfo::NONE)?;
        log.acknowledge(info.last_offset + 1, Ack::All).await
    }

    /// The coordinator epoch markers carry: the leader epoch of the id's partition of
    /// `__transaction_state`, which grows with every unclean restart.
    fn coordinator_epoch(&self, transactional_id: &str) -> i32 {
        self.logs
            .get()
            .filter(|logs| !logs.is_empty())
            .and_then(|logs| logs.get(partition_for(transactional_id, logs.len() as i32) as usize))
            .map_or(0, |log| log.leader_epoch())
    }

    // ------------------------------------------------------------------------------------------
    // Transitions

    fn slot(&self, transactional_id: &str) -> Option<Arc<Slot>> {
        self.ids.lock().get(transactional_id).cloned()
    }

    fn slot_or_create(&self, transactional_id: &str) -> Result<Arc<Slot>, TxnError> {
        let mut ids = self.ids.lock();
        if let Some(s) = ids.get(transactional_id) {
            return Ok(s.clone());
        }
        if ids.len() >= MAX_TRANSACTIONAL_IDS {
            tracing::warn!(
                transactional_id,
                limit = MAX_TRANSACTIONAL_IDS,
                "refusing a new transactional id: the broker holds the most it keeps"
            );
            return Err(TxnError::new(
                ResponseError::PolicyViolation,
                format!(
                    "the broker holds {MAX_TRANSACTIONAL_IDS} transactional ids, the most it \
                     keeps; reuse transactional ids or lower transactional.id.expiration.ms"
                ),
            ));
        }
        let s = Slot::new(None);
        ids.insert(transactional_id.to_owned(), s.clone());
        Ok(s)
    }

    /// Replaces an id's metadata, keeping the count of partitions in transactions.
    fn install(&self, s: &mut SlotState, next: Option<TxnMetadata>) {
        let before = s.meta.as_ref().map_or(0, |m| m.partitions.len());
        let after = next.as_ref().map_or(0, |m| m.partitions.len());
        if after > before {
            self.partitions_in_txns
                .fetch_add(after - before, Ordering::AcqRel);
        } else {
            let _ =
                self.partitions_in_txns
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        Some(n.saturating_sub(before - after))
                    });
        }
        s.meta = next;
    }

    /// Refuses `adding` more partitions when the broker's open transactions hold
    /// [`MAX_PARTITIONS_IN_TRANSACTIONS`] already (partitions already in the caller's
    /// transaction count again: the check is cheap, and only matters near the limit).
    fn check_partition_budget(&self, adding: usize) -> Result<(), TxnError> {
        let held = self.partitions_in_txns.load(Ordering::Acquire);
        if held.saturating_add(adding) > MAX_PARTITIONS_IN_TRANSACTIONS {
            tracing::warn!(
                held,
                limit = MAX_PARTITIONS_IN_TRANSACTIONS,
                "refusing partitions for a transaction: the broker's open transactions hold the most it keeps"
            );
            return Err(TxnError::new(
                ResponseError::PolicyViolation,
                format!(
                    "the broker's open transactions hold {held} partitions, the most it keeps is \
                     {MAX_PARTITIONS_IN_TRANSACTIONS}; commit or abort transactions first"
                ),
            ));
        }
        Ok(())
    }

    /// Runs `decide` on the id's metadata and, when it asks for a transition, writes it,
    /// installs it, and starts its markers. `create`: a missing id gets a slot (InitProducerId).
    async fn apply<F>(
        &self,
        transactional_id: &str,
        create: bool,
        decide: F,
    ) -> Result<Reply, TxnError>
    where
        F: FnOnce(Option<&TxnMetadata>) -> Result<Outcome, TxnError>,
    {
        self.ready().await?;
        let slot = if create {
            self.slot_or_create(transactional_id)?
        } else {
            match self.slot(transactional_id) {
                Some(s) => s,
                None => {
                    return match decide(None)? {
                        Outcome::Answer(reply) => Ok(reply),
                        Outcome::Write(_) => Err(TxnError::new(
                            ResponseError::UnknownServerError,
                            format!("transactional id '{transactional_id}' is unknown"),
                        )),
                    };
                }
            }
        };
        let transition = {
            let mut s = slot.state.lock();
            if s.removed {
                return Err(busy(transactional_id, "it is being removed"));
            }
            if s.creating {
                return Err(busy(
                    transactional_id,
                    "its first producer id is being written",
                ));
            }
            match decide(s.meta.as_ref())? {
                Outcome::Answer(reply) => return Ok(reply),
                Outcome::Write(t) => {
                    match s.meta.as_mut() {
                        Some(m) => m.pending = Some(t.next.state),
                        None => s.creating = true,
                    }
                    t
                }
            }
        };
        // The write, its installation and the start of the markers run in a task of their own,
        // so a caller that gives up (a dropped future) cannot leave `pending` set, or a decided
        // transaction without its markers.
        let weak = self.broker.clone();
        let id = transactional_id.to_owned();
        let task = tokio::spawn(async move {
            match weak.upgrade() {
                Some(broker) => {
                    broker
                        .transactions()
                        .finish_transition(&id, &slot, transition)
                        .await
                }
                None => {
                    let mut s = slot.state.lock();
                    s.creating = false;
                    if let Some(m) = s.meta.as_mut() {
                        m.pending = None;
                    }
                    Err(stopped_error())
                }
            }
        });
        task.await.map_err(|e| {
            TxnError::new(
                ResponseError::UnknownServerError,
                format!("a transaction state change failed: {e}"),
            )
        })?
    }

    /// The rest of [`TxnCoordinator::apply`] once `pending` is set: writes the transition,
    /// installs it (or clears `pending` if the write failed), and starts its markers.
    async fn finish_transition(
        &self,
        transactional_id: &str,
        slot: &Arc<Slot>,
        transition: state::Transition,
    ) -> Result<Reply, TxnError> {
        let written = self
            .write_state(transactional_id, Some(&transition.next))
            .await;
        {
            let mut s = slot.state.lock();
            s.creating = false;
            match &written {
                Ok(()) => self.install(&mut s, Some(transition.next.clone())),
                Err(_) => {
                    if let Some(m) = s.meta.as_mut() {
                        m.pending = None;
                    }
                }
            }
        }
        slot.bump();
        if let Err(e) = written {
            tracing::warn!(transactional_id, state = %transition.next.state, error = %e, "cannot write a transaction state change");
            return Err(write_error(&e));
        }
        if let Some(markers) = transition.markers {
            self.spawn_completion(transactional_id.to_owned(), markers);
        }
        Ok(transition.reply)
    }

    /// Writes the markers of a decided transaction in a task of its own, then `Complete*`.
    fn spawn_completion(&self, transactional_id: String, markers: Markers) {
        let weak = self.broker.clone();
        let mut stop = self.stop.subscribe();
        let task = tokio::spawn(async move {
            tokio::select! {
                _ = complete_transaction(weak, transactional_id, markers) => {}
                _ = stopped(&mut stop) => {}
            }
        });
        let mut tasks = self.tasks.lock();
        if tasks.len() >= TASKS_PRUNE_AT {
            tasks.retain(|t| !t.is_finished());
        }
        tasks.push(task);
    }

    /// Writes one marker to every partition of the transaction, at once, each retried until it
    /// is durable. Partitions of deleted topics are skipped. Returns `false` when the broker
    /// went away first (a restart writes them again).
    async fn write_markers(
        &self,
        broker: &Broker,
        transactional_id: &str,
        markers: &Markers,
    ) -> bool {
        let coordinator_epoch = self.coordinator_epoch(transactional_id);
        let writes = markers.partitions.iter().map(|p| async move {
            let mut wait = RETRY_FIRST;
            loop {
                if self.stopped.load(Ordering::Acquire) {
                    return false;
                }
                let log = match broker.log(&p.topic, p.partition) {
                    Ok(log) => log,
                    Err(BrokerError::UnknownTopic(_) | BrokerError::UnknownPartition { .. }) => {
                        tracing::info!(transactional_id, partition = %p, "skipping the marker of a deleted partition");
                        return true;
                    }
                    Err(_) => return false,
                };
                match write_marker(&log, markers, coordinator_epoch).await {
                    Ok(()) => {
                        if p.topic == crate::group::OFFSETS_TOPIC {
                            broker.groups().complete_transaction(
                                p.partition,
                                markers.producer_id,
                                markers.result == TxnResult::Commit,
                            );
                        }
                        return true;
                    }
                    Err(BrokerError::InvalidProducerEpoch { .. }) => {
                        // The partition saw a newer epoch of the producer: this transaction's
                        // data there was already ended by a later marker.
                        tracing::warn!(transactional_id, partition = %p, "the partition has a newer epoch of the producer; its marker is not needed");
                        return true;
                    }
                    Err(BrokerError::ShuttingDown) => return false,
                    Err(e) => {
                        tracing::warn!(transactional_id, partition = %p, error = %e, retry_in_ms = wait.as_millis() as u64, "cannot write a transaction marker; retrying");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(RETRY_MAX);
                    }
                }
            }
        });
        futures::future::join_all(writes)
            .await
            .into_iter()
            .all(|ok| ok)
    }

    /// After the markers: `Complete*`, retried until written.
    async fn write_complete(&self, transactional_id: &str) {
        let mut wait = RETRY_FIRST;
        loop {
            if self.stopped.load(Ordering::Acquire) {
                return;
            }
            let Some(slot) = self.slot(transactional_id) else {
                return;
            };
            let next = {
                let mut s = slot.state.lock();
                let Some(meta) = s.meta.as_mut() else { return };
                if meta.pending.is_some() {
                    // Cannot happen: nothing else writes an id in Prepare*.
                    tracing::error!(transactional_id, pending = ?meta.pending, "a transaction being completed has another change in flight");
                    return;
                }
                match state::complete(meta, now_ms()) {
                    Ok(next) => {
                        meta.pending = Some(next.state);
                        next
                    }
                    Err(e) => {
                        tracing::error!(transactional_id, error = %e, "cannot complete a transaction");
                        return;
                    }
                }
            };
            let written = self.write_state(transactional_id, Some(&next)).await;
            {
                let mut s = slot.state.lock();
                match &written {
                    Ok(()) => self.install(&mut s, Some(next)),
                    Err(_) => {
                        if let Some(m) = s.meta.as_mut() {
                            m.pending = None;
                        }
                    }
                }
            }
            slot.bump();
            match written {
                Ok(()) => return,
                Err(BrokerError::ShuttingDown) => return,
                Err(e) => {
                    tracing::warn!(transactional_id, error = %e, "cannot write a transaction's completion; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RETRY_MAX);
                }
            }
        }
    }

    // ------------------------------------------------------------------------------------------
    // Requests

    /// InitProducerId with a transactional id: the producer id and epoch to use. An open
    /// transaction of an older instance is aborted first and `CONCURRENT_TRANSACTIONS`
    /// answered (the client retries).
    pub(crate) async fn init_producer_id(
        &self,
        transactional_id: &str,
        timeout_ms: i32,
        expected: Option<ExpectedProducer>,
    ) -> Result<(i64, i16), TxnError> {
        let broker = self.broker.upgrade().ok_or_else(stopped_error)?;
        let mut new_producer_id = || {
            broker.allocate_producer_id().map_err(|e| {
                tracing::error!(error = %e, "cannot allocate a producer id");
                TxnError::new(
                    ResponseError::CoordinatorNotAvailable,
                    format!("cannot allocate a producer id ({e}); retry"),
                )
            })
        };
        let limits = self.config.limits();
        let reply = self
            .apply(transactional_id, true, |current| {
                state::init_producer_id(
                    current,
                    transactional_id,
                    timeout_ms,
                    expected,
                    limits,
                    now_ms(),
                    &mut new_producer_id,
                )
            })
            .await;
        match reply {
            Ok(Reply::Producer {
                producer_id,
                producer_epoch,
            }) => Ok((producer_id, producer_epoch)),
            Ok(Reply::RetryLater) => Err(busy(
                transactional_id,
                "the open transaction of an older instance is being aborted",
            )),
            Ok(Reply::Done) => Err(TxnError::new(
                ResponseError::UnknownServerError,
                "InitProducerId ended without a producer id",
            )),
            Err(e) => {
                self.forget_if_never_written(transactional_id);
                Err(e)
            }
        }
    }

    /// Drops the slot of a new id whose first write failed, so failed attempts do not pile up.
    fn forget_if_never_written(&self, transactional_id: &str) {
        let mut ids = self.ids.lock();
        let empty = ids.get(transactional_id).is_some_and(|s| {
            let mut s = s.state.lock();
            let empty = s.meta.is_none() && !s.creating;
            // A request that holds this slot already must look the id up again.
            s.removed |= empty;
            empty
        });
        if empty {
            ids.remove(transactional_id);
        }
    }

    /// AddPartitionsToTxn: the partitions join the open transaction (which starts if none is).
    /// Whether the topics exist is the caller's check.
    pub(crate) async fn add_partitions(
        &self,
        caller: Caller<'_>,
        partitions: &[TxnPartition],
        client_version: TxnVersion,
    ) -> Result<(), TxnError> {
        self.check_partition_budget(partitions.len())?;
        self.apply(caller.transactional_id, false, |current| {
            state::add_partitions(current, caller, partitions, client_version, now_ms())
        })
        .await
        .map(|_| ())
    }

    /// AddOffsetsToTxn: the group's partition of `__consumer_offsets` (`offsets_partitions`
    /// partitions) joins the transaction.
    pub(crate) async fn add_offsets(
        &self,
        caller: Caller<'_>,
        group_id: &str,
        offsets_partitions: i32,
        client_version: TxnVersion,
    ) -> Result<(), TxnError> {
        self.check_partition_budget(1)?;
        self.apply(caller.transactional_id, false, |current| {
            state::add_offsets(
                current,
                caller,
                group_id,
                offsets_partitions,
                client_version,
                now_ms(),
            )
        })
        .await
        .map(|_| ())
    }

    /// The verify-only AddPartitionsToTxn: for each partition, whether it is in the open
    /// transaction (`None`) or not (`TRANSACTION_ABORTABLE`).
    pub(crate) fn verify_partitions(
        &self,
        caller: Caller<'_>,
        partitions: &[TxnPartition],
    ) -> Result<Vec<(TxnPartition, Option<ResponseError>)>, TxnError> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(stopped_error());
        }
        let slot = self.slot(caller.transactional_id);
        let s = slot.as_ref().map(|s| s.state.lock());
        state::verify_partitions(s.as_ref().and_then(|s| s.meta.as_ref()), caller, partitions)
    }

    /// For the Produce handler (and in-process appends): a transactional batch of this producer
    /// may be appended to `topic`-`partition` only while the partition is in the producer's
    /// open transaction. The errors are ones every Produce version knows: INVALID_PRODUCER_EPOCH
    /// for a fenced producer, INVALID_PRODUCER_ID_MAPPING for a producer id that is not the
    /// id's, INVALID_TXN_STATE otherwise.
    pub fn verify_partition(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        topic: &str,
        partition: i32,
    ) -> Result<(), ResponseError> {
        self.append_verified(
            transactional_id,
            producer_id,
            producer_epoch,
            topic,
            partition,
            || (),
        )
    }

    /// [`TxnCoordinator::verify_partition`], then `append` while the transactional id's lock is
    /// still held: an EndTxn (or a timeout or fencing abort) cannot slip between the check and
    /// the write, so the batch lands before the transaction's marker or not at all, and no
    /// batch can open a transaction on the partition that the coordinator will never end.
    /// `append` must not wait (it runs under a lock): call `Log::append_unflushed` in it and
    /// acknowledge afterwards.
    pub fn append_verified<R>(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        topic: &str,
        partition: i32,
        append: impl FnOnce() -> R,
    ) -> Result<R, ResponseError> {
        let caller = Caller {
            transactional_id,
            producer_id,
            producer_epoch,
        };
        let p = TxnPartition::new(topic, partition);
        let slot = self.slot(transactional_id);
        let s = slot.as_ref().map(|s| s.state.lock());
        let meta = s.as_ref().and_then(|s| s.meta.as_ref());
        match state::verify_partitions(meta, caller, std::slice::from_ref(&p)) {
            Ok(checked) if checked.iter().all(|(_, e)| e.is_none()) => {
                // A change in flight may only be more partitions joining (to Ongoing again);
                // once the end is being written, no data may join.
                let open = meta.is_some_and(|m| {
                    m.state == TxnState::Ongoing && m.pending.is_none_or(|p| p == TxnState::Ongoing)
                });
                if open {
                    Ok(append())
                } else {
                    Err(ResponseError::InvalidTxnState)
                }
            }
            Ok(_) => Err(ResponseError::InvalidTxnState),
            Err(e) => Err(match e.code {
                ResponseError::ProducerFenced => ResponseError::InvalidProducerEpoch,
                ResponseError::InvalidProducerIdMapping => ResponseError::InvalidProducerIdMapping,
                _ => ResponseError::InvalidTxnState,
            }),
        }
    }

    /// EndTxn: commits or aborts the open transaction. Answers once `Prepare*` is durable (the
    /// outcome is then decided); the markers follow in the background
    /// ([`TxnCoordinator::wait_completed`] waits for them). With transaction version 2 the
    /// reply carries the producer id and epoch to use next.
    pub(crate) async fn end_txn(
        &self,
        caller: Caller<'_>,
        result: TxnResult,
        client_version: TxnVersion,
    ) -> Result<Option<(i64, i16)>, TxnError> {
        let broker = self.broker.upgrade().ok_or_else(stopped_error)?;
        let mut new_producer_id = || {
            broker.allocate_producer_id().map_err(|e| {
                TxnError::new(
                    ResponseError::CoordinatorNotAvailable,
                    format!("cannot allocate a producer id ({e}); retry"),
                )
            })
        };
        let reply = self
            .apply(caller.transactional_id, false, |current| {
                state::end_txn(
                    current,
                    caller,
                    result,
                    client_version,
                    now_ms(),
                    &mut new_producer_id,
                )
            })
            .await?;
        Ok(match reply {
            Reply::Producer {
                producer_id,
                producer_epoch,
            } => Some((producer_id, producer_epoch)),
            Reply::Done | Reply::RetryLater => None,
        })
    }

    /// Waits until the id has no decided transaction whose markers are still being written
    /// (returns at once if it has none). `NOT_COORDINATOR` if the coordinator stops first.
    pub(crate) async fn wait_completed(&self, transactional_id: &str) -> Result<(), TxnError> {
        loop {
            if self.stopped.load(Ordering::Acquire) {
                return Err(stopped_error());
            }
            let Some(slot) = self.slot(transactional_id) else {
                return Ok(());
            };
            let mut changed = slot.changed.subscribe();
            let in_flight = {
                let s = slot.state.lock();
                s.meta.as_ref().is_some_and(|m| {
                    matches!(m.state, TxnState::PrepareCommit | TxnState::PrepareAbort)
                        || m.pending.is_some()
                })
            };
            if !in_flight {
                return Ok(());
            }
            let mut stop = self.stop.subscribe();
            tokio::select! {
                r = changed.changed() => if r.is_err() { return Err(stopped_error()) },
                _ = stopped(&mut stop) => return Err(stopped_error()),
            }
        }
    }

    /// The id's metadata, if it has any (for tests and descriptions).
    pub(crate) fn metadata(&self, transactional_id: &str) -> Option<TxnMetadata> {
        self.slot(transactional_id)
            .and_then(|s| s.state.lock().meta.clone())
    }

    /// Every transactional id with metadata, sorted by id (ListTransactions), without their
    /// partitions. Each id's lock is taken in turn, briefly.
    pub(crate) fn list(&self) -> Vec<Listed> {
        let slots: Vec<Arc<Slot>> = self.ids.lock().values().cloned().collect();
        let mut out: Vec<Listed> = slots
            .iter()
            .filter_map(|s| {
                s.state.lock().meta.as_ref().map(|m| Listed {
                    transactional_id: m.transactional_id.clone(),
                    producer_id: m.producer_id,
                    state: m.state,
                    start_timestamp_ms: m.start_timestamp_ms,
                })
            })
            .collect();
        out.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
        out
    }

    // ------------------------------------------------------------------------------------------
    // Timers

    /// Aborts every transaction that ran past its timeout as of `now_ms` (the producer is
    /// fenced). Runs every `transaction.abort.timed.out.transaction.cleanup.interval.ms`.
    /// Returns how many were aborted.
    pub(crate) async fn abort_timed_out_at(&self, now_ms: i64) -> usize {
        let server_version = self.config.limits().server_version;
        // The map's lock is not held while each id's is taken (one may be held across a
        // segment roll by a transactional append).
        let slots: Vec<(String, Arc<Slot>)> = self
            .ids
            .lock()
            .iter()
            .map(|(id, s)| (id.clone(), s.clone()))
            .collect();
        let due: Vec<String> = slots
            .into_iter()
            .filter(|(_, s)| {
                s.state
                    .lock()
                    .meta
                    .as_ref()
                    .is_some_and(|m| m.timed_out(now_ms))
            })
            .map(|(id, _)| id)
            .collect();
        let mut aborted = 0;
        for id in due {
            let result = self
                .apply(&id, false, |current| {
                    Ok(
                        match current
                            .and_then(|m| state::abort_timed_out(m, server_version, now_ms))
                        {
                            Some(t) => Outcome::Write(t),
                            None => Outcome::Answer(Reply::Done),
                        },
                    )
                })
                .await;
            match result {
                Ok(_) => {
                    aborted += 1;
                    tracing::info!(transactional_id = %id, "aborted a transaction past its timeout");
                }
                Err(e) => {
                    tracing::warn!(transactional_id = %id, error = %e, "cannot abort a transaction past its timeout; trying again later");
                }
            }
        }
        aborted
    }

    /// Removes every transactional id idle for `transactional.id.expiration.ms` as of `now_ms`
    /// (a tombstone in `__transaction_state`). Runs every
    /// `transaction.remove.expired.transaction.cleanup.interval.ms`. Returns how many were
    /// removed.
    pub(crate) async fn remove_expired_at(&self, now_ms: i64) -> usize {
        let expiration_ms = self.config.id_expiration_ms;
        let candidates: Vec<(String, Arc<Slot>)> = self
            .ids
            .lock()
            .iter()
            .map(|(id, s)| (id.clone(), s.clone()))
            .collect();
        let mut removed = 0;
        for (id, slot) in candidates {
            {
                let mut s = slot.state.lock();
                if s.creating {
                    continue;
                }
                let Some(meta) = s.meta.as_mut() else {
                    continue;
                };
                if !meta.expired(now_ms, expiration_ms) {
                    continue;
                }
                meta.pending = Some(TxnState::Dead);
            }
            let written = self.write_state(&id, None).await;
            {
                let mut s = slot.state.lock();
                match &written {
                    Ok(()) => {
                        self.install(&mut s, None);
                        s.removed = true;
                    }
                    Err(_) => {
                        if let Some(m) = s.meta.as_mut() {
                            m.pending = None;
                        }
                    }
                }
            }
            slot.bump();
            match written {
                Ok(()) => {
                    let mut ids = self.ids.lock();
                    if ids.get(&id).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                        ids.remove(&id);
                    }
                    removed += 1;
                    tracing::info!(transactional_id = %id, "removed an expired transactional id");
                }
                Err(e) => {
                    tracing::warn!(transactional_id = %id, error = %e, "cannot remove an expired transactional id; trying again later");
                }
            }
        }
        removed
    }

    /// Holds marker tasks back (or lets them go), so tests can stop a broker with a
    /// transaction in `Prepare*`.
    #[cfg(test)]
    pub(crate) fn hold_markers(&self, hold: bool) {
        self.hold_markers.store(hold, Ordering::Release);
    }
}

/// The markers of a decided transaction, then `Complete*`. Holds the broker only while it
/// works, so a dropped broker ends it.
async fn complete_transaction(weak: WeakBroker, transactional_id: String, markers: Markers) {
    #[cfg(test)]
    loop {
        let Some(broker) = weak.upgrade() else { return };
        if !broker.transactions().hold_markers.load(Ordering::Acquire) {
            break;
        }
        drop(broker);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let Some(broker) = weak.upgrade() else { return };
    let coordinator = broker.transactions();
    if !coordinator
        .write_markers(&broker, &transactional_id, &markers)
        .await
    {
        return;
    }
    coordinator.write_complete(&transactional_id).await;
}

/// Writes one COMMIT or ABORT marker for the transaction's producer to `log` and waits until
/// it is durable.
async fn write_marker(log: &Log, markers: &Markers, coordinator_epoch: i32) -> Result<()> {
    log.append_marker(
        markers.producer_id,
        markers.producer_epoch,
        markers.result,
        coordinator_epoch,
    )
    .await
    .map(|_| ())
}

/// Reads every partition of `__transaction_state` from its start and replays it. A damaged
/// segment does not stop the load: what it held is lost (ids fall back to older states), the
/// rest is read.
fn load(logs: &[Arc<Log>]) -> Result<HashMap<String, TxnMetadata>> {
    let mut replay = Replay::default();
    let (mut read_count, mut malformed) = (0usize, 0usize);
    for log in logs {
        let p = log.partition();
        log.replay(LOAD_READ_BYTES, |batch| {
            let cols = EnvelopeColumns::try_new(&batch.records)?;
            for i in 0..batch.records.num_rows() {
                read_count += 1;
                let Some(key) = cols.key(i) else {
                    malformed += 1;
                    continue;
                };
                if let Err(e) = replay.apply(key, cols.value(i)) {
                    malformed += 1;
                    tracing::warn!(partition = p, error = %e, "skipping a record of {TRANSACTION_STATE_TOPIC}");
                }
            }
            Ok(())
        })?;
    }
    tracing::debug!(
        records = read_count,
        malformed,
        "replayed {TRANSACTION_STATE_TOPIC}"
    );
    Ok(replay.finish())
}

#[cfg(test)]
#[path = "coordinator_tests.rs"]
mod tests;
