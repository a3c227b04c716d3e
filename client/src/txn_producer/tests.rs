//! The transactional producer against the in-process broker: what `read_committed` readers and
//! OffsetFetch see after commits, aborts and fencing, at every version both sides speak.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use quiver_common::record::{Record, records_to_batch};

use super::*;
use crate::tests::{client, new_topic, records, start};
use crate::{ClientConfig, FetchOptions, IsolationLevel, OffsetSpec};

const TIMEOUT: Duration = Duration::from_secs(60);
/// How long a test waits for markers the coordinator writes after it answered.
const SETTLE: Duration = Duration::from_secs(10);

/// One batch with a record per value.
fn batch(values: &[&str]) -> RecordBatch {
    let records: Vec<Record> = values
        .iter()
        .map(|v| Record::new(1_000, None, Some(v.as_bytes())))
        .collect();
    records_to_batch(&records)
}

/// Waits until no transaction is open on `topic`-`partition` (its last stable offset reached
/// the high watermark: every marker is written).
async fn settle(c: &KafkaClient, topic: &str, partition: i32) -> Result<()> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let latest = |isolation| async move {
            let listed = c
                .list_offsets_isolated(topic, &[(partition, OffsetSpec::Latest)], isolation)
                .await?;
            Ok::<_, ClientError>(listed[0].1.clone().ok().flatten().map(|o| o.offset))
        };
        let stable = latest(IsolationLevel::ReadCommitted).await?;
        let end = latest(IsolationLevel::ReadUncommitted).await?;
        if stable == end {
            return Ok(());
        }
        assert!(
            Instant::now() < deadline,
            "{topic}-{partition}: a transaction is still open (last stable offset {stable:?}, \
             end {end:?})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The values of every record of `topic`-`partition` a reader at `isolation` gets, once no
/// transaction is open there.
async fn values(
    c: &KafkaClient,
    topic: &str,
    partition: i32,
    isolation: IsolationLevel,
) -> Result<Vec<String>> {
    settle(c, topic, partition).await?;
    let options = FetchOptions {
        isolation_level: isolation,
        max_wait: Duration::from_millis(10),
        ..FetchOptions::default()
    };
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let mut fetched = c.fetch(topic, &[(partition, offset)], &options).await?;
        let Some((_, result)) = fetched.pop() else {
            panic!("no answer for {topic}-{partition}")
        };
        let got = result.unwrap_or_else(|e| panic!("{e}"));
        out.extend(
            records(&got.batches).into_iter().map(|r| {
                String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned()
            }),
        );
        let end = got.last_stable_offset.unwrap_or(got.high_watermark);
        if got.next_offset >= end || got.next_offset == offset {
            return Ok(out);
        }
        offset = got.next_offset;
    }
}

async fn committed(c: &KafkaClient, topic: &str, partition: i32) -> Result<Vec<String>> {
    values(c, topic, partition, IsolationLevel::ReadCommitted).await
}

async fn uncommitted(c: &KafkaClient, topic: &str, partition: i32) -> Result<Vec<String>> {
    values(c, topic, partition, IsolationLevel::ReadUncommitted).await
}

/// Waits until the coordinator finished the last transaction of `id` (its markers written).
async fn wait_completed(c: &KafkaClient, id: &str) -> Result<()> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let described = c.describe_transactions(&[id]).await?;
        let state = described[0].1.as_ref().map(|d| d.state.clone());
        if let Ok("CompleteCommit" | "CompleteAbort" | "Empty") = state.as_deref() {
            return Ok(());
        }
        assert!(Instant::now() < deadline, "'{id}' is still in {state:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The group's committed offsets as `(topic, partition, offset, metadata)`.
async fn group_offsets(
    c: &KafkaClient,
    group: &str,
) -> Result<Vec<(String, i32, Option<i64>, Option<String>)>> {
    Ok(c.offset_fetch(group, None)
        .await?
        .into_iter()
        .map(|o| (o.topic, o.partition, o.offset, o.metadata))
        .collect())
}

fn offset(topic: &str, partition: i32, offset: i64, metadata: &str) -> TxnOffset {
    TxnOffset {
        topic: topic.into(),
        partition,
        offset,
        metadata: metadata.into(),
    }
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| (*v).to_owned()).collect()
}

/// The Kafka error of a call that must have failed because its producer was fenced.
fn assert_fenced(outcome: Result<()>, what: &str) {
    let Err(e) = outcome else {
        panic!("{what} of a fenced producer succeeded")
    };
    let code = e.api_error().map(|a| a.error);
    assert!(
        matches!(
            code,
            Some(ResponseError::ProducerFenced | ResponseError::InvalidProducerEpoch)
        ),
        "{what}: {e}"
    );
    assert!(
        e.to_string().contains("was fenced by a newer producer"),
        "{what}: {e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_records_are_read_committed_and_aborted_ones_only_read_uncommitted() -> Result<()>
{
    let (s, _dir) = start().await;
    let c = Arc::new(client(s.addr()).await);
    c.create_topics(&[new_topic("t", Some(2), &[])], false)
        .await?;
    let mut p = TransactionalProducer::new(c.clone(), "txn-a", TIMEOUT).await?;
    assert_eq!(p.transactional_id(), "txn-a");
    assert!(p.producer_id().0 >= 0 && p.producer_id().1 >= 0);

    p.send("t", 0, &batch(&["c0", "c1"])).await?;
    p.send("t", 1, &batch(&["c2"])).await?;
    p.send("t", 0, &batch(&["c3"])).await?;
    // Open: a read_committed reader stops before the transaction's first record.
    let stable = c
        .list_offsets_isolated(
            "t",
            &[(0, OffsetSpec::Latest)],
            IsolationLevel::ReadCommitted,
        )
        .await?;
    assert_eq!(
        stable[0].1.clone().ok().flatten().map(|o| o.offset),
        Some(0)
    );
    p.commit().await?;

    p.send("t", 0, &batch(&["a0"])).await?;
    p.send("t", 1, &batch(&["a1", "a2"])).await?;
    p.abort().await?;
    p.send("t", 1, &batch(&["c4"])).await?;
    p.commit().await?;

    assert_eq!(committed(&c, "t", 0).await?, strings(&["c0", "c1", "c3"]));
    assert_eq!(committed(&c, "t", 1).await?, strings(&["c2", "c4"]));
    assert_eq!(
        uncommitted(&c, "t", 0).await?,
        strings(&["c0", "c1", "c3", "a0"])
    );
    assert_eq!(
        uncommitted(&c, "t", 1).await?,
        strings(&["c2", "a1", "a2", "c4"])
    );

    // Nothing in the transaction: no EndTxn (an abort after a commit would be refused with
    // INVALID_TXN_STATE).
    p.abort().await?;
    p.commit().await?;
    let empty = p.send("t", 0, &records_to_batch(&[])).await;
    assert!(
        matches!(&empty, Err(ClientError::InvalidArgument(m)) if m.contains("empty batch")),
        "{empty:?}"
    );
    // Refused before anything was sent: the producer goes on.
    p.send("t", 0, &batch(&["c5"])).await?;
    p.commit().await?;
    assert_eq!(
        committed(&c, "t", 0).await?,
        strings(&["c0", "c1", "c3", "c5"])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_sent_in_a_transaction_apply_on_commit_only() -> Result<()> {
    let (s, _dir) = start().await;
    let c = Arc::new(client(s.addr()).await);
    c.create_topics(
        &[
            new_topic("in", Some(2), &[]),
            new_topic("out", Some(1), &[]),
        ],
        false,
    )
    .await?;
    c.offset_commit("g", &[("in", 0, 1), ("in", 1, 1)]).await?;
    let baseline = group_offsets(&c, "g").await?;
    assert_eq!(
        baseline
            .iter()
            .map(|(_, p, o, _)| (*p, *o))
            .collect::<Vec<_>>(),
        [(0, Some(1)), (1, Some(1))]
    );
    let mut p = TransactionalProducer::new(c.clone(), "txn-offsets", TIMEOUT).await?;

    p.send("out", 0, &batch(&["x"])).await?;
    p.send_offsets("g", &[offset("in", 0, 5, "m0"), offset("in", 1, 7, "m1")])
        .await?;
    assert_eq!(
        group_offsets(&c, "g").await?,
        baseline,
        "pending until the commit"
    );
    p.commit().await?;
    wait_completed(&c, "txn-offsets").await?;
    let sent = vec![
        ("in".to_owned(), 0, Some(5), Some("m0".to_owned())),
        ("in".to_owned(), 1, Some(7), Some("m1".to_owned())),
    ];
    assert_eq!(group_offsets(&c, "g").await?, sent);

    p.send("out", 0, &batch(&["y"])).await?;
    p.send_offsets("g", &[offset("in", 0, 9, "aborted")])
        .await?;
    p.abort().await?;
    wait_completed(&c, "txn-offsets").await?;
    assert_eq!(group_offsets(&c, "g").await?, sent);

    // Offsets alone make a transaction too.
    p.send_offsets("g", &[offset("in", 1, 8, "alone")]).await?;
    p.commit().await?;
    wait_completed(&c, "txn-offsets").await?;
    assert_eq!(
        group_offsets(&c, "g").await?,
        [
            ("in".to_owned(), 0, Some(5), Some("m0".to_owned())),
            ("in".to_owned(), 1, Some(8), Some("alone".to_owned())),
        ]
    );
    assert_eq!(committed(&c, "out", 0).await?, strings(&["x"]));

    // Nothing to send: nothing opens.
    p.send_offsets("g", &[]).await?;
    p.abort().await?;
    let twice = p
        .send_offsets("g", &[offset("in", 0, 1, ""), offset("in", 0, 2, "")])
        .await;
    assert!(
        matches!(&twice, Err(ClientError::InvalidArgument(m)) if m == "in-0 is given twice; give one offset per partition"),
        "{twice:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_producer_fences_the_older_and_aborts_its_open_transaction() -> Result<()> {
    let (s, _dir) = start().await;
    let c = Arc::new(client(s.addr()).await);
    c.create_topics(&[new_topic("t", Some(2), &[])], false)
        .await?;

    // Fenced at Produce: the partition was in its transaction already.
    let mut first = TransactionalProducer::new(c.clone(), "txn-f", TIMEOUT).await?;
    first.send("t", 0, &batch(&["f0"])).await?;
    let mut second = TransactionalProducer::new(c.clone(), "txn-f", TIMEOUT).await?;
    assert_eq!(second.producer_id().0, first.producer_id().0);
    assert!(second.producer_id().1 > first.producer_id().1);
    assert_fenced(first.send("t", 0, &batch(&["f1"])).await, "send");
    assert_fenced(first.commit().await, "commit after being fenced");
    assert_fenced(first.abort().await, "abort after being fenced");
    second.send("t", 0, &batch(&["s0"])).await?;
    second.commit().await?;

    // Fenced at EndTxn.
    second.send("t", 1, &batch(&["s1"])).await?;
    let mut third = TransactionalProducer::new(c.clone(), "txn-f", TIMEOUT).await?;
    assert_fenced(second.commit().await, "commit");
    assert_fenced(second.send("t", 1, &batch(&["s2"])).await, "send after");

    // Fenced at AddPartitionsToTxn: a partition new to its transaction.
    third.send("t", 1, &batch(&["t1"])).await?;
    let mut fourth = TransactionalProducer::new(c.clone(), "txn-f", TIMEOUT).await?;
    assert_fenced(third.send("t", 0, &batch(&["t0"])).await, "send");

    fourth.send("t", 0, &batch(&["z0"])).await?;
    fourth.send("t", 1, &batch(&["z1"])).await?;
    fourth.commit().await?;

    assert_eq!(committed(&c, "t", 0).await?, strings(&["s0", "z0"]));
    assert_eq!(committed(&c, "t", 1).await?, strings(&["z1"]));
    assert_eq!(uncommitted(&c, "t", 0).await?, strings(&["f0", "s0", "z0"]));
    assert_eq!(uncommitted(&c, "t", 1).await?, strings(&["s1", "t1", "z1"]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_in_a_row_wait_out_the_markers_of_the_last() -> Result<()> {
    let (s, _dir) = start().await;
    let c = Arc::new(client(s.addr()).await);
    c.create_topics(&[new_topic("t", Some(2), &[])], false)
        .await?;
    let mut p = TransactionalProducer::new(c.clone(), "txn-row", TIMEOUT).await?;
    let producer = p.producer_id();
    let rounds = 5;
    for round in 0..rounds {
        p.send("t", 0, &batch(&[&format!("{round}a")])).await?;
        p.send(
            "t",
            1,
            &batch(&[&format!("{round}b"), &format!("{round}c")]),
        )
        .await?;
        p.commit().await?;
    }
    assert!(
        p.busy_waits() > 0,
        "no transaction met the markers of the one before: the test proves nothing"
    );
    assert_eq!(p.producer_id(), producer, "the epoch stays (version 1)");
    let expected = |suffixes: &[&str]| -> Vec<String> {
        (0..rounds)
            .flat_map(|r| suffixes.iter().map(move |s| format!("{r}{s}")))
            .collect()
    };
    assert_eq!(committed(&c, "t", 0).await?, expected(&["a"]));
    assert_eq!(committed(&c, "t", 1).await?, expected(&["b", "c"]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_fate_is_unknown_dooms_the_transaction_and_the_abort_renumbers() -> Result<()>
{
    let (s, _dir) = start().await;
    let c = Arc::new(
        KafkaClient::connect(
            &s.addr().to_string(),
            ClientConfig {
                retry_attempts_max: 2,
                retry_backoff_ms: 1,
                ..ClientConfig::default()
            },
        )
        .await?,
    );
    c.create_topics(&[new_topic("t", Some(1), &[])], false)
        .await?;
    let mut p = TransactionalProducer::new(c.clone(), "txn-lost", TIMEOUT).await?;
    let before = p.producer_id();

    // One lost answer: the batch is sent again and written once.
    p.batches
        .answers_to_lose
        .store(1, std::sync::atomic::Ordering::Relaxed);
    p.send("t", 0, &batch(&["once"])).await?;
    p.commit().await?;
    assert_eq!(uncommitted(&c, "t", 0).await?, strings(&["once"]));

    // Every answer lost: the batch may or may not be in the log.
    p.batches
        .answers_to_lose
        .store(2, std::sync::atomic::Ordering::Relaxed);
    let lost = p.send("t", 0, &batch(&["lost"])).await;
    assert!(
        matches!(lost, Err(ClientError::Disconnected { .. })),
        "{lost:?}"
    );
    for refused in [
        p.send("t", 0, &batch(&["more"])).await,
        p.send_offsets("g", &[offset("t", 0, 1, "")]).await,
        p.commit().await,
    ] {
        assert!(
            matches!(&refused, Err(ClientError::TransactionAbortOnly { transactional_id, .. }) if transactional_id == "txn-lost"),
            "{refused:?}"
        );
    }
    p.abort().await?;
    assert_eq!(p.producer_id().0, before.0);
    assert!(
        p.producer_id().1 > before.1,
        "the abort bumped the epoch: {:?} after {before:?}",
        p.producer_id()
    );
    // Numbered from 0 in the new epoch, which the broker accepts.
    p.send("t", 0, &batch(&["after"])).await?;
    p.commit().await?;
    assert_eq!(committed(&c, "t", 0).await?, strings(&["once", "after"]));
    assert_eq!(
        uncommitted(&c, "t", 0).await?,
        strings(&["once", "lost", "after"])
    );
    Ok(())
}

/// The transaction APIs at every version both sides speak (down to FindCoordinator v1, the first
/// with transactional ids): each request must be built for its version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_work_at_every_version() -> Result<()> {
    let (s, _dir) = start().await;
    let admin = client(s.addr()).await;
    for below in 0..=3 {
        let config = ClientConfig {
            versions_below_max: below,
            ..ClientConfig::default()
        };
        let c = Arc::new(KafkaClient::connect(&s.addr().to_string(), config).await?);
        let topic = format!("v{below}");
        let id = format!("txn-v{below}");
        let group = format!("g-v{below}");
        c.create_topics(&[new_topic(&topic, Some(1), &[])], false)
            .await?;
        let mut p = TransactionalProducer::new(c.clone(), &id, TIMEOUT).await?;
        p.send(&topic, 0, &batch(&["kept"])).await?;
        p.send_offsets(&group, &[offset(&topic, 0, 3, "meta")])
            .await?;
        p.commit().await?;
        p.send(&topic, 0, &batch(&["dropped"])).await?;
        p.abort().await?;
        p.send(&topic, 0, &batch(&["open"])).await?;
        let mut newer = TransactionalProducer::new(c.clone(), &id, TIMEOUT).await?;
        assert_fenced(p.commit().await, &format!("commit, {below} below"));
        newer.send(&topic, 0, &batch(&["newer"])).await?;
        newer.commit().await?;

        assert_eq!(
            committed(&admin, &topic, 0).await?,
            strings(&["kept", "newer"]),
            "{below} below"
        );
        wait_completed(&admin, &id).await?;
        assert_eq!(
            group_offsets(&admin, &group).await?,
            [(topic.clone(), 0, Some(3), Some("meta".to_owned()))],
            "{below} below"
        );
        c.close().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_transactional_ids_and_timeouts_are_refused_with_what_to_do() -> Result<()> {
    let (s, _dir) = start().await;
    let c = Arc::new(client(s.addr()).await);
    let empty = TransactionalProducer::new(c.clone(), "", TIMEOUT).await;
    assert!(
        matches!(&empty, Err(ClientError::InvalidArgument(m)) if m.starts_with("the transactional id is empty")),
        "{empty:?}"
    );
    let zero = TransactionalProducer::new(c.clone(), "txn-bad", Duration::ZERO).await;
    assert!(
        matches!(&zero, Err(ClientError::InvalidArgument(m)) if m.starts_with("transaction timeout 0ns is not between 1 ms")),
        "{zero:?}"
    );
    // More than the broker's transaction.max.timeout.ms (15 minutes).
    let long = TransactionalProducer::new(c.clone(), "txn-bad", Duration::from_secs(3600))
        .await
        .err();
    assert_eq!(
        long.as_ref()
            .and_then(ClientError::api_error)
            .map(|e| e.error),
        Some(ResponseError::InvalidTransactionTimeout),
        "{long:?}"
    );
    assert_eq!(
        long.map(|e| e.to_string()).unwrap_or_default(),
        "cannot get a producer id for transactional id 'txn-bad': The transaction timeout is \
         larger than the maximum value allowed by the broker (as configured by \
         transaction.max.timeout.ms). (INVALID_TRANSACTION_TIMEOUT)"
    );
    Ok(())
}

/// The engine drives producers from spawned tasks: every call's future must be `Send`.
#[allow(dead_code)]
fn calls_are_send(
    client: Arc<KafkaClient>,
    p: &mut TransactionalProducer,
    batch: &RecordBatch,
    offsets: &[TxnOffset],
) {
    fn send<T: Send>(_: T) {}
    send(TransactionalProducer::new(client, "t", TIMEOUT));
    send(p.send("t", 0, batch));
    send(p.send_offsets("g", offsets));
    send(p.commit());
    send(p.abort());
}
