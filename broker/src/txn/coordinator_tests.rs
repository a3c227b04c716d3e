//! The coordinator driven through the in-process API on a real broker in a temporary
//! directory: fencing, markers, timeouts, expiry, transactional offsets, and a restart in every
//! state a transaction can be in.

use std::time::Duration;

use kafka_protocol::error::ResponseError;

use super::*;
use crate::group::OffsetCommitEntry;
use crate::log::attributes;
use crate::{Broker, BrokerConfig, NewTopic, TransactionalProducer};

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"))
}

fn config(dir: &std::path::Path) -> BrokerConfig {
    let mut c = BrokerConfig {
        data_dir: dir.to_owned(),
        ..BrokerConfig::default()
    };
    c.kafka.offsets_topic_num_partitions = 2;
    c.kafka.transaction_state_log_num_partitions = 2;
    c
}

async fn open_with(c: BrokerConfig) -> Broker {
    let b = Broker::open(c)
        .await
        .unwrap_or_else(|e| panic!("open: {e}"));
    b.create_topic(NewTopic::new("data", 2)).await.ok();
    b
}

async fn open(dir: &std::path::Path) -> Broker {
    open_with(config(dir)).await
}

async fn close(b: Broker) {
    b.shutdown()
        .await
        .unwrap_or_else(|e| panic!("shutdown: {e}"));
}

async fn producer(b: &Broker, id: &str) -> TransactionalProducer {
    b.transactional_producer(id, 60_000)
        .await
        .unwrap_or_else(|e| panic!("init {id}: {e}"))
}

fn batch(values: &[&str]) -> arrow::record_batch::RecordBatch {
    let mut b = EnvelopeBuilder::with_capacity(values.len(), 64);
    for v in values {
        b.append(1_700_000_000_000, None, Some(v.as_bytes()), &[]);
    }
    b.finish()
}

async fn append(p: &mut TransactionalProducer, partition: i32, values: &[&str]) {
    p.append("data", partition, &batch(values))
        .await
        .unwrap_or_else(|e| panic!("append: {e}"));
}

fn state_of(b: &Broker, id: &str) -> TxnState {
    b.transactions()
        .metadata(id)
        .map(|m| m.state)
        .unwrap_or_else(|| panic!("no metadata for {id}"))
}

/// The markers in a partition, in order: (producer id, result).
fn markers_in(b: &Broker, topic: &str, partition: i32) -> Vec<(i64, TxnResult)> {
    let log = b
        .log(topic, partition)
        .unwrap_or_else(|e| panic!("log: {e}"));
    let read = log
        .read(0, 16 << 20)
        .unwrap_or_else(|e| panic!("read: {e}"));
    let mut out = Vec::new();
    for batch in &read.batches {
        if batch.header.producer.attributes & attributes::CONTROL == 0 {
            continue;
        }
        let cols = EnvelopeColumns::try_new(&batch.records).unwrap_or_else(|e| panic!("{e}"));
        let key = cols.key(0).unwrap_or_default();
        if let Ok(records::ControlType::Marker(r)) = records::decode_control_key(key) {
            out.push((batch.header.producer.producer_id, r));
        }
    }
    out
}

fn code_of(e: &BrokerError) -> Option<ResponseError> {
    match e {
        BrokerError::Transaction { code, .. } => Some(*code),
        _ => None,
    }
}

fn entry(topic: &str, partition: i32, offset: i64) -> OffsetCommitEntry {
    OffsetCommitEntry {
        topic: topic.to_owned(),
        partition,
        offset,
        leader_epoch: -1,
        metadata: String::new(),
    }
}

fn committed(b: &Broker, group: &str) -> Option<i64> {
    b.groups()
        .fetch_offsets(group, Some(&[("data".to_owned(), 0)]), false)
        .first()
        .and_then(|(_, _, o)| o.as_ref().map(|o| o.offset))
}

fn stable(b: &Broker, group: &str) -> Result<Option<i64>, ResponseError> {
    b.groups()
        .fetch_offsets_checked(group, Some(&[("data".to_owned(), 0)]), true)
        .into_iter()
        .next()
        .map(|(_, _, o)| o.map(|o| o.map(|o| o.offset)))
        .unwrap_or(Ok(None))
}

#[tokio::test]
async fn commit_writes_markers_to_every_partition_and_completes() {
    let dir = tempdir();
    let b = open(dir.path()).await;
    let mut p = producer(&b, "tx").await;
    append(&mut p, 0, &["a", "b"]).await;
    append(&mut p, 1, &["c"]).await;
    assert_eq!(state_of(&b, "tx"), TxnState::Ongoing);
    let log = b.log("data", 0).unwrap_or_else(|e| panic!("log: {e}"));
    assert_eq!(
        log.last_stable_offset(),
        0,
        "held back by the open transaction"
    );
    p.commit_and_wait()
        .await
        .unwrap_or_else(|e| panic!("commit: {e}"));
    assert_eq!(
        log.last_stable_offset(),
        3,
        "past the two records and the marker once commit_and_wait returns"
    );
    assert!(log.open_transactions().is_empty());
    let meta = b.transactions().metadata("tx");
    assert_eq!(
        meta.as_ref().map(|m| m.state),
        Some(TxnState::CompleteCommit)
    );
    assert!(meta.is_some_and(|m| m.partitions.is_empty()));
    for partition in [0, 1] {
        assert_eq!(
            markers_in(&b, "data", partition),
            vec![(p.producer_id(), TxnResult::Commit)],
            "data-{partition}"
        );
    }
    // The next transaction starts right away, with the same producer.
    append(&mut p, 0, &["d"]).await;
    p.abort().await.unwrap_or_else(|e| panic!("abort: {e}"));
    p.wait_completed()
        .await
        .unwrap_or_else(|e| panic!("wait: {e}"));
    assert_eq!(state_of(&b, "tx"), TxnState::CompleteAbort);
    assert_eq!(
        markers_in(&b, "data", 0),
        vec![
            (p.producer_id(), TxnResult::Commit),
            (p.producer_id(), TxnResult::Abort)
        ]
    );
    assert_eq!(markers_in(&b, "data", 1).len(), 1, "not in the second one");
}

#[tokio::test]
async fn a_new_instance_fences_the_old_one_and_aborts_its_transaction() {
    let dir = tempdir();
    let b = open(dir.path()).await;
    let mut old = producer(&b, "tx").await;
    append(&mut old, 0, &["zombie"]).await;
    let mut new = producer(&b, "tx").await;
    assert_eq!(new.producer_id(), old.producer_id());
    assert!(new.producer_epoch() > old.producer_epoch());
    assert_eq!(
        markers_in(&b, "data", 0),
        vec![(old.producer_id(), TxnResult::Abort)],
        "the old instance's transaction was aborted before the new one got its epoch"
    );
    // The log refuses the old epoch too, whatever the coordinator says.
    let log = b.log("data", 0).unwrap_or_else(|e| panic!("log: {e}"));
    let zombie = ProducerInfo {
        producer_id: old.producer_id(),
        producer_epoch: old.producer_epoch(),
        base_sequence: 1,
        attributes: attributes::TRANSACTIONAL,
    };
    assert!(matches!(
        log.append(&batch(&["zombie"]), zombie, Ack::All).await,
        Err(BrokerError::InvalidProducerEpoch { .. })
    ));
    let err = old.commit().await.err();
    assert_eq!(
        err.as_ref().and_then(code_of),
        Some(ResponseError::ProducerFenced),
        "{err:?}"
    );
    let err = old.append("data", 1, &batch(&["late"])).await.err();
    assert_eq!(
        err.as_ref().and_then(code_of),
        Some(ResponseError::ProducerFenced),
        "{err:?}"
    );
    append(&mut new, 0, &["fresh"]).await;
    new.commit_and_wait()
        .await
        .unwrap_or_else(|e| panic!("commit: {e}"));
    assert_eq!(state_of(&b, "tx"), TxnState::CompleteCommit);
}

#[tokio::test]
async fn verify_partition_accepts_only_partitions_of_the_open_transaction() {
    let dir = tempdir();
    let b = open(dir.path()).await;
    let mut p = producer(&b, "tx").await;
    let (id, epoch) = (p.producer_id(), p.producer_epoch());
    let c = b.transactions();
    assert_eq!(
        c.verify_partition("tx", id, epoch, "data", 0),
        Err(ResponseError::InvalidTxnState),
        "no transaction open"
    );
    append(&mut p, 0, &["a"]).await;
    assert_eq!(c.verify_partition("tx", id, epoch, "data", 0), Ok(()));
    assert_eq!(
        c.verify_partition("tx", id, epoch, "data", 1),
        Err(ResponseError::InvalidTxnState),
        "not added"
    );
    assert_eq!(
        c.verify_partition("tx", id, epoch - 1, "data", 0),
        Err(ResponseError::InvalidProducerEpoch),
        "older epoch"
    );
    assert_eq!(
        c.verify_partition("tx", id + 1, epoch, "data", 0),
        Err(ResponseError::InvalidProducerIdMapping)
    );
    assert_eq!(
        c.verify_partition("other", id, epoch, "data", 0),
        Err(ResponseError::InvalidProducerIdMapping),
        "unknown transactional id"
    );
}

#[tokio::test]
async fn a_transaction_past_its_timeout_is_aborted_and_its_producer_fenced() {
    let dir = tempdir();
    let mut c = config(dir.path());
    c.kafka.transaction_abort_timed_out_interval_ms = 20;
    let b = open_with(c).await;
    let mut p = b
        .transactional_producer("slow", 50)
        .await
        .unwrap_or_else(|e| panic!("init: {e}"));
    append(&mut p, 0, &["a"]).await;
    let mut waited = Duration::ZERO;
    while state_of(&b, "slow") != TxnState::CompleteAbort && waited < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    }
    assert_eq!(state_of(&b, "slow"), TxnState::CompleteAbort);
    assert_eq!(
        markers_in(&b, "data", 0),
        vec![(p.producer_id(), TxnResult::Abort)]
    );
    let err = p.commit().await.err();
    assert_eq!(
        err.as_ref().and_then(code_of),
        Some(ResponseError::ProducerFenced),
        "{err:?}"
    );
}

#[tokio::test]
async fn idle_transactional_ids_expire_and_stay_gone_after_a_restart() {
    let dir = tempdir();
    let b = open(dir.path()).await;
    let mut p = producer(&b, "idle").await;
    append(&mut p, 0, &["a"]).await;
    let week = 7 * 24 * 3_600_000;
    assert_eq!(
        b.transactions()
            .remove_expired_at(now_ms() + 2 * week)
            .await,
        0,
        "an open transaction does not expire"
    );
    p.commit_and_wait()
        .await
        .unwrap_or_else(|e| panic!("commit: {e}"));
    producer(&b, "busy").await;
    assert_eq!(b.transactions().remove_expired_at(now_ms()).await, 0);
    assert_eq!(
        b.transactions()
            .remove_expired_at(now_ms() + 2 * week)
            .await,
        2
    );
    assert!(b.transactions().metadata("idle").is_none());
    drop(p);
    close(b).await;
    let b = open(dir.path()).await;
    assert!(b.transactions().metadata("idle").is_none());
    assert!(b.transactions().metadata("busy").is_none());
}

#[tokio::test]
async fn transactional_offsets_apply_only_when_the_transaction_commits() {
    let dir = tempdir();
    let b = open(dir.path()).await;
    let mut p = producer(&b, "tx").await;
    append(&mut p, 0, &["a"]).await;
    p.send_offsets("app", &[entry("data", 0, 42)])
        .await
        .unwrap_or_else(|e| panic!("send_offsets: {e}"));
    assert_eq!(committed(&b, "app"), None, "invisible while open");
    assert_eq!(stable(&b, "app"), Err(ResponseError::UnstableOffsetCommit));
    p.commit_and_wait()
        .await
        .unwrap_or_else(|e| panic!("commit: {e}"));
    assert_eq!(committed(&b, "app"), Some(42));
    assert_eq!(stable(&b, "app"), Ok(Some(42)));

    append(&mut p, 0, &["b"]).await;
    p.send_offsets("app", &[entry("data", 0, 99)])
        .await
        .unwrap_or_else(|e| panic!("send_offsets: {e}"));
    p.abort().await.unwrap_or_else(|e| panic!("abort: {e}"));
    p.wait_completed()
        .await
        .unwrap_or_else(|e| panic!("wait: {e}"));
    assert_eq!(
        committed(&b, "app"),
        Some(42),
        "aborted offsets are dropped"
    );
    assert_eq!(stable(&b, "app"), Ok(Some(42)));

    drop(p);
    close(b).await;
    let b = open(dir.path()).await;
    assert_eq!(committed(&b, "app"), Some(42), "the committed one survives");
    assert_eq!(
        stable(&b, "app"),
        Ok(Some(42)),
        "the aborted one is not pending"
    );
}

#[tokio::test]
async fn offsets_of_a_transaction_open_at_a_restart_stay_pending_until_it_ends() {
    let dir = tempdir();
    let b = open(dir.path()).await;
    let mut p = producer(&b, "tx").await;
    append(&mut p, 0, &["a"]).await;
    p.send_offsets("app", &[entry("data", 0, 7)])
        .await
        .unwrap_or_else(|e| panic!("send_offsets: {e}"));
    drop(p);
    close(b).await;

    let b = open(dir.path()).await;
    assert_eq!(state_of(&b, "tx"), TxnState::Ongoing);
    assert_eq!(committed(&b, "app"), None);
    assert_eq!(stable(&b, "app"), Err(ResponseError::UnstableOffsetCommit));
    // A new instance aborts the open transaction: the offsets are dropped.
    let p = producer(&b, "tx").await;
    p.wait_completed()
        .await
        .unwrap_or_else(|e| panic!("wait: {e}"));
    assert_eq!(state_of(&b, "tx"), TxnState::Empty);
    assert_eq!(stable(&b, "app"), Ok(None));
}

/// Stops the broker with the transaction decided but no marker written.
async fn decide_then_stop(dir: &std::path::Path, result: TxnResult) -> i64 {
    let b = open(dir).await;
    let mut p = producer(&b, "tx").await;
    append(&mut p, 0, &["a"]).await;
    append(&mut p, 1, &["b"]).await;
    p.send_offsets("app", &[entry("data", 0, 5)])
        .await
        .unwrap_or_else(|e| panic!("send_offsets: {e}"));
    b.transactions().hold_markers(true);
    match result {
        TxnResult::Commit => p.commit().await,
        TxnResult::Abort => p.abort().await,
    }
    .unwrap_or_else(|e| panic!("end: {e}"));
    let prepared = match result {
        TxnResult::Commit => TxnState::PrepareCommit,
        TxnResult::Abort => TxnState::PrepareAbort,
    };
    assert_eq!(state_of(&b, "tx"), prepared);
    assert!(markers_in(&b, "data", 0).is_empty());
    let id = p.producer_id();
    drop(p);
    close(b).await;
    id
}

#[tokio::test]
async fn a_restart_in_prepare_commit_writes_the_markers_and_commits() {
    let dir = tempdir();
    let id = decide_then_stop(dir.path(), TxnResult::Commit).await;
    let b = open(dir.path()).await;
    b.transactions()
        .wait_completed("tx")
        .await
        .unwrap_or_else(|e| panic!("wait: {e}"));
    assert_eq!(state_of(&b, "tx"), TxnState::CompleteCommit);
    for partition in [0, 1] {
        assert_eq!(
            markers_in(&b, "data", partition),
            vec![(id, TxnResult::Commit)]
        );
    }
    assert_eq!(committed(&b, "app"), Some(5));
}

#[tokio::test]
async fn a_restart_in_prepare_abort_writes_the_markers_and_aborts() {
    let dir = tempdir();
    let id = decide_then_stop(dir.path(), TxnResult::Abort).await;
    let b = open(dir.path()).await;
    b.transactions()
        .wait_completed("tx")
        .await
        .unwrap_or_else(|e| panic!("wait: {e}"));
    assert_eq!(state_of(&b, "tx"), TxnState::CompleteAbort);
    for partition in [0, 1] {
        assert_eq!(
            markers_in(&b, "data", partition),
            vec![(id, TxnResult::Abort)]
        );
    }
    assert_eq!(committed(&b, "app"), None);
    assert_eq!(stable(&b, "app"), Ok(None));
}

#[tokio::test]
async fn a_restart_keeps_completed_and_empty_states_and_the_epoch() {
    let dir = tempdir();
    let b = open(dir.path()).await;
    let mut committed_p = producer(&b, "committed").await;
    append(&mut committed_p, 0, &["a"]).await;
    committed_p
        .commit_and_wait()
        .await
        .unwrap_or_else(|e| panic!("commit: {e}"));
    let mut aborted_p = producer(&b, "aborted").await;
    append(&mut aborted_p, 1, &["b"]).await;
    aborted_p
        .abort()
        .await
        .unwrap_or_else(|e| panic!("abort: {e}"));
    aborted_p
        .wait_completed()
        .await
        .unwrap_or_else(|e| panic!("wait: {e}"));
    let empty_p = producer(&b, "empty").await;
    let before: Vec<(i64, i16)> = [&committed_p, &aborted_p, &empty_p]
        .iter()
        .map(|p| (p.producer_id(), p.producer_epoch()))
        .collect();
    drop((committed_p, aborted_p, empty_p));
    close(b).await;

    let b = open(dir.path()).await;
    assert_eq!(state_of(&b, "committed"), TxnState::CompleteCommit);
    assert_eq!(state_of(&b, "aborted"), TxnState::CompleteAbort);
    assert_eq!(state_of(&b, "empty"), TxnState::Empty);
    for (id, (producer_id, epoch)) in ["committed", "aborted", "empty"].iter().zip(before) {
        let p = producer(&b, id).await;
        assert_eq!(p.producer_id(), producer_id, "{id}");
        assert_eq!(
            p.producer_epoch(),
            epoch + 1,
            "{id}: the next epoch, not a reused one"
        );
    }
    assert_eq!(markers_in(&b, "data", 0).len(), 1, "no marker rewritten");
}

#[tokio::test]
async fn a_restart_in_ongoing_keeps_the_transaction_open_until_it_ends() {
    let dir = tempdir();
    let b = open(dir.path()).await;
    let mut p = producer(&b, "tx").await;
    append(&mut p, 0, &["a"]).await;
    let (id, epoch) = (p.producer_id(), p.producer_epoch());
    drop(p);
    close(b).await;

    let b = open(dir.path()).await;
    let meta = b.transactions().metadata("tx");
    assert_eq!(meta.as_ref().map(|m| m.state), Some(TxnState::Ongoing));
    assert!(meta.is_some_and(|m| m.partitions.contains(&TxnPartition::new("data", 0))));
    assert_eq!(
        b.transactions()
            .verify_partition("tx", id, epoch, "data", 0),
        Ok(())
    );
    assert!(markers_in(&b, "data", 0).is_empty());
    // It times out like any open transaction.
    let aborted = b
        .transactions()
        .abort_timed_out_at(now_ms() + 120_000)
        .await;
    assert_eq!(aborted, 1);
    b.transactions()
        .wait_completed("tx")
        .await
        .unwrap_or_else(|e| panic!("wait: {e}"));
    assert_eq!(state_of(&b, "tx"), TxnState::CompleteAbort);
    assert_eq!(markers_in(&b, "data", 0), vec![(id, TxnResult::Abort)]);
}

#[tokio::test]
async fn init_refuses_a_timeout_above_the_maximum() {
    let dir = tempdir();
    let b = open(dir.path()).await;
    let err = b.transactional_producer("tx", 900_001).await.err();
    assert_eq!(
        err.as_ref().and_then(code_of),
        Some(ResponseError::InvalidTransactionTimeout),
        "{err:?}"
    );
    assert!(b.transactions().metadata("tx").is_none(), "nothing kept");
}

#[tokio::test]
async fn requests_while_markers_are_in_flight_get_concurrent_transactions() {
    let dir = tempdir();
    let b = open(dir.path()).await;
    let mut p = producer(&b, "tx").await;
    append(&mut p, 0, &["a"]).await;
    b.transactions().hold_markers(true);
    p.commit().await.unwrap_or_else(|e| panic!("commit: {e}"));
    let c = b.transactions();
    let caller = Caller {
        transactional_id: "tx",
        producer_id: p.producer_id(),
        producer_epoch: p.producer_epoch(),
    };
    let add = c
        .add_partitions(caller, &[TxnPartition::new("data", 1)], TxnVersion::V1)
        .await;
    assert_eq!(
        add.map_err(|e| e.code),
        Err(ResponseError::ConcurrentTransactions)
    );
    let init = c.init_producer_id("tx", 60_000, None).await;
    assert_eq!(
        init.map_err(|e| e.code),
        Err(ResponseError::ConcurrentTransactions)
    );
    assert_eq!(state_of(&b, "tx"), TxnState::PrepareCommit);
    c.hold_markers(false);
    c.wait_completed("tx")
        .await
        .unwrap_or_else(|e| panic!("wait: {e}"));
    assert_eq!(state_of(&b, "tx"), TxnState::CompleteCommit);
    // The producer's next transaction goes through once the markers are written.
    append(&mut p, 1, &["b"]).await;
    assert_eq!(state_of(&b, "tx"), TxnState::Ongoing);
}

#[tokio::test]
async fn a_commit_whose_caller_gives_up_still_completes_and_frees_the_id() {
    let dir = tempdir();
    let b = open(dir.path()).await;
    let mut p = producer(&b, "w").await;
    append(&mut p, 0, &["a"]).await;
    {
        // Polled once (the decision is being written), then dropped.
        let fut = p.commit();
        tokio::pin!(fut);
        let _ = futures::poll!(fut.as_mut());
    }
    // The id is neither stuck with a change in flight nor left undecided: a new instance gets
    // it, and readers see the commit.
    let next = tokio::time::timeout(
        Duration::from_secs(30),
        b.transactional_producer("w", 60_000),
    )
    .await;
    assert!(matches!(next, Ok(Ok(_))), "the id is usable again");
    let m = b
        .transactions()
        .metadata("w")
        .unwrap_or_else(|| panic!("metadata"));
    assert!(m.pending.is_none(), "{m:?}");
    let log = b.log("data", 0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        log.last_stable_offset(),
        log.end_offset(),
        "the commit was completed, not left open"
    );
    drop(log);
    drop(p);
    close(b).await;
}

#[tokio::test]
async fn txn_offsets_are_refused_once_their_transaction_has_ended() {
    let dir = tempdir();
    let b = open(dir.path()).await;
    let mut p = producer(&b, "oc").await;
    append(&mut p, 0, &["a"]).await;
    if let Err(e) = p.send_offsets("app", &[entry("data", 0, 1)]).await {
        panic!("send offsets: {e}");
    }
    let (pid, epoch) = (p.producer_id(), p.producer_epoch());
    let part = b
        .groups()
        .offsets_partition_for("app")
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    if let Err(e) = p.commit_and_wait().await {
        panic!("commit: {e}");
    }
    // A TxnOffsetCommit that passed its first check before the commit, written after it: the
    // check under the transactional id's lock refuses it, so it cannot hold the LSO back.
    let codes = b
        .groups()
        .txn_commit_offsets(
            crate::group::OffsetCommit {
                group_id: "app".into(),
                generation_id: -1,
                offsets: vec![entry("data", 0, 7)],
                ..Default::default()
            },
            pid,
            epoch,
            |write| {
                b.transactions().append_verified(
                    "oc",
                    pid,
                    epoch,
                    crate::group::OFFSETS_TOPIC,
                    part,
                    write,
                )
            },
        )
        .await;
    assert_eq!(
        codes,
        vec![kafka_protocol::error::ResponseError::InvalidTxnState.code()]
    );
    let log = b
        .log(crate::group::OFFSETS_TOPIC, part)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        log.last_stable_offset(),
        log.end_offset(),
        "nothing left open"
    );
    let fetched = b
        .groups()
        .fetch_offsets_checked("app", Some(&[("data".to_owned(), 0)]), true);
    assert!(
        matches!(&fetched[0].2, Ok(Some(o)) if o.offset == 1),
        "the committed offset stands and is stable: {fetched:?}"
    );
    drop(log);
    drop(p);
    close(b).await;
}

#[tokio::test]
async fn a_plain_commit_after_a_transactional_one_wins_now_and_after_a_restart() {
    let dir = tempdir();
    let b = open(dir.path()).await;
    let mut p = producer(&b, "tx").await;
    append(&mut p, 0, &["a"]).await;
    p.send_offsets("app", &[entry("data", 0, 10)])
        .await
        .unwrap_or_else(|e| panic!("send_offsets: {e}"));
    // A plain commit of the same partition, written after the transactional one.
    let codes = b
        .groups()
        .commit_offsets(crate::group::OffsetCommit {
            group_id: "app".into(),
            generation_id: -1,
            offsets: vec![entry("data", 0, 20)],
            ..Default::default()
        })
        .await;
    assert_eq!(codes, vec![0]);
    p.commit_and_wait()
        .await
        .unwrap_or_else(|e| panic!("commit: {e}"));
    assert_eq!(
        committed(&b, "app"),
        Some(20),
        "the later record counts, as in Kafka"
    );
    drop(p);
    close(b).await;
    let b = open(dir.path()).await;
    assert_eq!(committed(&b, "app"), Some(20), "the log says the same");
    close(b).await;
}

#[tokio::test]
async fn partitions_in_open_transactions_are_counted_for_the_broker_wide_limit() {
    let dir = tempdir();
    let b = open(dir.path()).await;
    let held = |b: &Broker| {
        b.transactions()
            .partitions_in_txns
            .load(std::sync::atomic::Ordering::Acquire)
    };
    let mut p = producer(&b, "a").await;
    let mut q = producer(&b, "b").await;
    append(&mut p, 0, &["x"]).await;
    append(&mut p, 1, &["x"]).await;
    append(&mut q, 0, &["y"]).await;
    assert_eq!(held(&b), 3);
    p.commit_and_wait()
        .await
        .unwrap_or_else(|e| panic!("commit: {e}"));
    assert_eq!(held(&b), 1, "a completed transaction holds none");
    drop((p, q));
    close(b).await;
    let b = open(dir.path()).await;
    assert_eq!(held(&b), 1, "the open one, read back");
    assert!(
        b.transactions()
            .check_partition_budget(MAX_PARTITIONS_IN_TRANSACTIONS)
            .is_err(),
        "past the limit is refused"
    );
    assert!(b.transactions().check_partition_budget(10).is_ok());
    close(b).await;
}
