//! Every advertised version of the transaction APIs through the server's frame processing:
//! each response encodes and decodes, and says what it should.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::*;
use crate::kafka::server::{Outcome, process};
use crate::{Broker, BrokerConfig, NewTopic};

fn st(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_owned())
}

fn tid(v: &str) -> TransactionalId {
    TransactionalId(st(v))
}

async fn ctx(dir: &std::path::Path) -> Ctx {
    let mut config = BrokerConfig {
        data_dir: dir.to_owned(),
        ..BrokerConfig::default()
    };
    config.kafka.offsets_topic_num_partitions = 2;
    config.kafka.transaction_state_log_num_partitions = 2;
    let broker = Broker::open(config)
        .await
        .unwrap_or_else(|e| panic!("open: {e}"));
    broker.create_topic(NewTopic::new("t", 2)).await.ok();
    Ctx::for_tests(broker)
}

/// Sends one request through the server's frame processing and decodes the answer.
async fn call(ctx: &Ctx, version: i16, body: RequestKind) -> ResponseKind {
    let api = match &body {
        RequestKind::InitProducerId(_) => ApiKey::InitProducerId,
        RequestKind::AddPartitionsToTxn(_) => ApiKey::AddPartitionsToTxn,
        RequestKind::AddOffsetsToTxn(_) => ApiKey::AddOffsetsToTxn,
        RequestKind::EndTxn(_) => ApiKey::EndTxn,
        RequestKind::TxnOffsetCommit(_) => ApiKey::TxnOffsetCommit,
        RequestKind::OffsetFetch(_) => ApiKey::OffsetFetch,
        RequestKind::ListTransactions(_) => ApiKey::ListTransactions,
        RequestKind::DescribeTransactions(_) => ApiKey::DescribeTransactions,
        other => panic!("not a transaction request: {other:?}"),
    };
    let mut buf = BytesMut::new();
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(st("txn-test")));
    if let Err(e) = header.encode(&mut buf, api.request_header_version(version)) {
        panic!("{api:?} v{version} header: {e}");
    }
    if let Err(e) = body.encode(&mut buf, version) {
        panic!("{api:?} v{version}: the test request does not encode: {e}");
    }
    let resp = match process(ctx, buf.freeze(), None).await {
        Outcome::Respond(resp) => resp,
        Outcome::Silent => panic!("{api:?} v{version}: no response"),
        Outcome::Close(why) => panic!("{api:?} v{version}: connection closed: {why}"),
    };
    let mut bytes = Bytes::from(resp.concat()).slice(4..);
    if let Err(e) = ResponseHeader::decode(&mut bytes, api.response_header_version(version)) {
        panic!("{api:?} v{version} response header: {e}");
    }
    ResponseKind::decode(api, &mut bytes, version)
        .unwrap_or_else(|e| panic!("{api:?} v{version}: the response does not decode: {e}"))
}

fn versions(api: ApiKey) -> std::ops::RangeInclusive<i16> {
    let (_, lo, hi) = crate::kafka::handlers::supported()
        .find(|(k, _, _)| *k == api)
        .unwrap_or_else(|| panic!("{api:?} is not advertised"));
    lo..=hi
}

async fn init(ctx: &Ctx, version: i16, id: &str, timeout_ms: i32) -> (i16, i64, i16) {
    let req = InitProducerIdRequest::default()
        .with_transactional_id(Some(tid(id)))
        .with_transaction_timeout_ms(timeout_ms)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let ResponseKind::InitProducerId(r) =
        call(ctx, version, RequestKind::InitProducerId(req)).await
    else {
        panic!()
    };
    (r.error_code, r.producer_id.0, r.producer_epoch)
}

fn topic(name: &str, partitions: &[i32]) -> add_partitions_to_txn_request::AddPartitionsToTxnTopic {
    add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
        .with_name(TopicName(st(name)))
        .with_partitions(partitions.to_vec())
}

/// AddPartitionsToTxn v0-v3: the error codes by partition, in order.
async fn add(
    ctx: &Ctx,
    version: i16,
    id: &str,
    (producer_id, epoch): (i64, i16),
    topics: Vec<add_partitions_to_txn_request::AddPartitionsToTxnTopic>,
) -> Vec<i16> {
    let req = AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(tid(id))
        .with_v3_and_below_producer_id(ProducerId(producer_id))
        .with_v3_and_below_producer_epoch(epoch)
        .with_v3_and_below_topics(topics);
    let ResponseKind::AddPartitionsToTxn(r) =
        call(ctx, version, RequestKind::AddPartitionsToTxn(req)).await
    else {
        panic!()
    };
    r.results_by_topic_v3_and_below
        .iter()
        .flat_map(|t| {
            t.results_by_partition
                .iter()
                .map(|p| p.partition_error_code)
        })
        .collect()
}

async fn end(
    ctx: &Ctx,
    version: i16,
    id: &str,
    (producer_id, epoch): (i64, i16),
    commit: bool,
) -> EndTxnResponse {
    let req = EndTxnRequest::default()
        .with_transactional_id(tid(id))
        .with_producer_id(ProducerId(producer_id))
        .with_producer_epoch(epoch)
        .with_committed(commit);
    let ResponseKind::EndTxn(r) = call(ctx, version, RequestKind::EndTxn(req)).await else {
        panic!()
    };
    r
}

/// OffsetFetch v7 with require_stable for partition 0 of `t`: (error, offset).
async fn fetch_stable(ctx: &Ctx, group: &str) -> (i16, i64) {
    let req = OffsetFetchRequest::default()
        .with_group_id(GroupId(st(group)))
        .with_require_stable(true)
        .with_topics(Some(vec![
            offset_fetch_request::OffsetFetchRequestTopic::default()
                .with_name(TopicName(st("t")))
                .with_partition_indexes(vec![0]),
        ]));
    let ResponseKind::OffsetFetch(r) = call(ctx, 7, RequestKind::OffsetFetch(req)).await else {
        panic!()
    };
    let p = &r.topics[0].partitions[0];
    (p.error_code, p.committed_offset)
}

#[test]
fn the_transaction_apis_are_advertised_with_the_versions_they_decode() {
    for (api, lo, hi) in [
        (ApiKey::AddPartitionsToTxn, 0, 4),
        (ApiKey::AddOffsetsToTxn, 0, 4),
        (ApiKey::EndTxn, 0, 5),
        (ApiKey::TxnOffsetCommit, 0, 4),
        (ApiKey::InitProducerId, 0, 4),
    ] {
        assert_eq!(versions(api), lo..=hi, "{api:?}");
    }
}

#[tokio::test]
async fn init_producer_id_fences_older_instances_in_every_version() {
    let Ok(dir) = tempfile::tempdir() else { return };
    let ctx = ctx(dir.path()).await;
    for v in versions(ApiKey::InitProducerId) {
        let id = format!("init-v{v}");
        let (code, first_id, first_epoch) = init(&ctx, v, &id, 10_000).await;
        assert_eq!((code, first_epoch), (0, 0), "v{v}");
        assert!(first_id >= 0);
        let (code, again_id, again_epoch) = init(&ctx, v, &id, 10_000).await;
        assert_eq!((code, again_id, again_epoch), (0, first_id, 1), "v{v}");
        // The first instance is fenced: PRODUCER_FENCED from AddPartitionsToTxn v2 on.
        for add_v in 0..=3 {
            let codes = add(
                &ctx,
                add_v,
                &id,
                (first_id, first_epoch),
                vec![topic("t", &[0])],
            )
            .await;
            let fenced = if add_v >= 2 {
                ResponseError::ProducerFenced
            } else {
                ResponseError::InvalidProducerEpoch
            };
            assert_eq!(
                codes,
                vec![fenced.code()],
                "InitProducerId v{v}, AddPartitionsToTxn v{add_v}"
            );
        }
        let (code, ..) = init(&ctx, v, &id, 900_001).await;
        assert_eq!(
            code,
            ResponseError::InvalidTransactionTimeout.code(),
            "v{v}"
        );
    }
}

#[tokio::test]
async fn a_transaction_over_the_wire_commits_data_and_offsets_in_every_version() {
    let Ok(dir) = tempfile::tempdir() else { return };
    let ctx = ctx(dir.path()).await;
    for v in versions(ApiKey::AddPartitionsToTxn).filter(|v| *v < 4) {
        let id = format!("flow-v{v}");
        let group = format!("group-v{v}");
        let (code, pid, epoch) = init(&ctx, 3, &id, 60_000).await;
        assert_eq!(code, 0);
        let codes = add(&ctx, v, &id, (pid, epoch), vec![topic("t", &[0, 1])]).await;
        assert_eq!(codes, vec![0, 0], "AddPartitionsToTxn v{v}");

        let offsets_v = v.min(4);
        let req = AddOffsetsToTxnRequest::default()
            .with_transactional_id(tid(&id))
            .with_producer_id(ProducerId(pid))
            .with_producer_epoch(epoch)
            .with_group_id(GroupId(st(&group)));
        let ResponseKind::AddOffsetsToTxn(r) =
            call(&ctx, offsets_v, RequestKind::AddOffsetsToTxn(req)).await
        else {
            panic!()
        };
        assert_eq!(r.error_code, 0, "AddOffsetsToTxn v{offsets_v}");

        let commit_v = v.min(4);
        let req = TxnOffsetCommitRequest::default()
            .with_transactional_id(tid(&id))
            .with_group_id(GroupId(st(&group)))
            .with_producer_id(ProducerId(pid))
            .with_producer_epoch(epoch)
            .with_generation_id(-1)
            .with_topics(vec![
                txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
                    .with_name(TopicName(st("t")))
                    .with_partitions(vec![
                        txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(17)
                            .with_committed_metadata(Some(st("m"))),
                        txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
                            .with_partition_index(9)
                            .with_committed_offset(1),
                    ]),
            ]);
        let ResponseKind::TxnOffsetCommit(r) =
            call(&ctx, commit_v, RequestKind::TxnOffsetCommit(req)).await
        else {
            panic!()
        };
        let codes: Vec<i16> = r.topics[0]
            .partitions
            .iter()
            .map(|p| p.error_code)
            .collect();
        assert_eq!(
            codes,
            vec![0, ResponseError::UnknownTopicOrPartition.code()],
            "TxnOffsetCommit v{commit_v}"
        );
        assert_eq!(
            fetch_stable(&ctx, &group).await,
            (ResponseError::UnstableOffsetCommit.code(), -1),
            "pending until the transaction ends"
        );

        let r = end(&ctx, v.min(4), &id, (pid, epoch), true).await;
        assert_eq!(r.error_code, 0, "EndTxn v{}", v.min(4));
        ctx.broker
            .transactions()
            .wait_completed(&id)
            .await
            .unwrap_or_else(|e| panic!("wait: {e}"));
        assert_eq!(fetch_stable(&ctx, &group).await, (0, 17));
        // A retried commit is answered again; an abort after it is not valid.
        assert_eq!(
            end(&ctx, v.min(4), &id, (pid, epoch), true)
                .await
                .error_code,
            0
        );
        assert_eq!(
            end(&ctx, v.min(4), &id, (pid, epoch), false)
                .await
                .error_code,
            ResponseError::InvalidTxnState.code()
        );
    }
}

#[tokio::test]
async fn txn_offset_commit_outside_the_transaction_is_refused() {
    let Ok(dir) = tempfile::tempdir() else { return };
    let ctx = ctx(dir.path()).await;
    let (_, pid, epoch) = init(&ctx, 3, "no-offsets", 60_000).await;
    assert_eq!(
        add(&ctx, 3, "no-offsets", (pid, epoch), vec![topic("t", &[0])]).await,
        vec![0]
    );
    // No AddOffsetsToTxn: the offsets would never get a marker.
    let req = TxnOffsetCommitRequest::default()
        .with_transactional_id(tid("no-offsets"))
        .with_group_id(GroupId(st("g")))
        .with_producer_id(ProducerId(pid))
        .with_producer_epoch(epoch)
        .with_topics(vec![
            txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
                .with_name(TopicName(st("t")))
                .with_partitions(vec![
                    txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(3),
                ]),
        ]);
    let ResponseKind::TxnOffsetCommit(r) = call(&ctx, 3, RequestKind::TxnOffsetCommit(req)).await
    else {
        panic!()
    };
    assert_eq!(
        r.topics[0].partitions[0].error_code,
        ResponseError::InvalidTxnState.code()
    );
    assert_eq!(fetch_stable(&ctx, "g").await, (0, -1));
}

#[tokio::test]
async fn an_unknown_partition_leaves_the_others_not_attempted() {
    let Ok(dir) = tempfile::tempdir() else { return };
    let ctx = ctx(dir.path()).await;
    let (_, pid, epoch) = init(&ctx, 3, "unknown", 60_000).await;
    let codes = add(
        &ctx,
        3,
        "unknown",
        (pid, epoch),
        vec![topic("t", &[0, 7]), topic("missing", &[0])],
    )
    .await;
    let (unknown, skipped) = (
        ResponseError::UnknownTopicOrPartition.code(),
        ResponseError::OperationNotAttempted.code(),
    );
    assert_eq!(codes, vec![skipped, unknown, unknown]);
    let meta = ctx.broker.transactions().metadata("unknown");
    assert!(
        meta.is_some_and(|m| m.partitions.is_empty()),
        "nothing added"
    );
}

#[tokio::test]
async fn add_partitions_v4_batches_transactions_and_verifies_without_adding() {
    let Ok(dir) = tempfile::tempdir() else { return };
    let ctx = ctx(dir.path()).await;
    let (_, a_pid, a_epoch) = init(&ctx, 4, "a", 60_000).await;
    let (_, b_pid, b_epoch) = init(&ctx, 4, "b", 60_000).await;
    assert_eq!(
        add(&ctx, 3, "a", (a_pid, a_epoch), vec![topic("t", &[0])]).await,
        vec![0]
    );
    let txn = |id: &str, pid: i64, epoch: i16, verify_only: bool, partitions: &[i32]| {
        add_partitions_to_txn_request::AddPartitionsToTxnTransaction::default()
            .with_transactional_id(tid(id))
            .with_producer_id(ProducerId(pid))
            .with_producer_epoch(epoch)
            .with_verify_only(verify_only)
            .with_topics(vec![topic("t", partitions)])
    };
    let req = AddPartitionsToTxnRequest::default().with_transactions(vec![
        txn("a", a_pid, a_epoch, true, &[0, 1]),
        txn("b", b_pid, b_epoch, false, &[1]),
        txn("b", b_pid, b_epoch + 1, true, &[1]),
    ]);
    let ResponseKind::AddPartitionsToTxn(r) =
        call(&ctx, 4, RequestKind::AddPartitionsToTxn(req)).await
    else {
        panic!()
    };
    let codes: Vec<Vec<i16>> = r
        .results_by_transaction
        .iter()
        .map(|t| {
            t.topic_results[0]
                .results_by_partition
                .iter()
                .map(|p| p.partition_error_code)
                .collect()
        })
        .collect();
    assert_eq!(
        codes,
        vec![
            vec![0, ResponseError::TransactionAbortable.code()],
            vec![0],
            vec![ResponseError::ProducerFenced.code()],
        ]
    );
    let a = ctx.broker.transactions().metadata("a");
    assert_eq!(
        a.map(|m| m.partitions.len()),
        Some(1),
        "verify-only adds nothing"
    );
}

#[tokio::test]
async fn end_txn_v5_bumps_the_epoch_and_says_so() {
    let Ok(dir) = tempfile::tempdir() else { return };
    let ctx = ctx(dir.path()).await;
    let (_, pid, epoch) = init(&ctx, 4, "v2", 60_000).await;
    assert_eq!(
        add(&ctx, 3, "v2", (pid, epoch), vec![topic("t", &[0])]).await,
        vec![0]
    );
    let r = end(&ctx, 5, "v2", (pid, epoch), true).await;
    assert_eq!(r.error_code, 0);
    assert_eq!((r.producer_id.0, r.producer_epoch), (pid, epoch + 1));
    ctx.broker
        .transactions()
        .wait_completed("v2")
        .await
        .unwrap_or_else(|e| panic!("wait: {e}"));
    // A retry with the old epoch is recognised and answered with the new one.
    let retry = end(&ctx, 5, "v2", (pid, epoch), true).await;
    assert_eq!(
        (retry.error_code, retry.producer_id.0, retry.producer_epoch),
        (0, pid, epoch + 1)
    );
    // Before v5 the fields are not sent: the answer decodes with its defaults.
    let (_, pid, epoch) = init(&ctx, 4, "v1", 60_000).await;
    assert_eq!(
        add(&ctx, 3, "v1", (pid, epoch), vec![topic("t", &[1])]).await,
        vec![0]
    );
    let r = end(&ctx, 4, "v1", (pid, epoch), false).await;
    assert_eq!(
        (r.error_code, r.producer_id.0, r.producer_epoch),
        (0, -1, -1)
    );
}

#[tokio::test]
async fn list_and_describe_transactions_show_each_id_its_state_and_partitions() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let ctx = ctx(dir.path()).await;
    let list = |version: i16, states: &[&str], producers: &[i64], duration: i64| {
        let req = ListTransactionsRequest::default()
            .with_state_filters(states.iter().map(|s| st(s)).collect())
            .with_producer_id_filters(producers.iter().map(|&p| ProducerId(p)).collect())
            .with_duration_filter(duration);
        let ctx = &ctx;
        async move {
            let ResponseKind::ListTransactions(r) =
                call(ctx, version, RequestKind::ListTransactions(req)).await
            else {
                panic!()
            };
            r
        }
    };
    assert!(list(0, &[], &[], -1).await.transaction_states.is_empty());

    let (code, open_pid, open_epoch) = init(&ctx, 4, "open", 60_000).await;
    assert_eq!(code, 0);
    assert_eq!(
        add(
            &ctx,
            3,
            "open",
            (open_pid, open_epoch),
            vec![topic("t", &[1, 0])]
        )
        .await,
        vec![0, 0]
    );
    let (code, done_pid, done_epoch) = init(&ctx, 4, "done", 60_000).await;
    assert_eq!(code, 0);
    assert_eq!(
        add(
            &ctx,
            3,
            "done",
            (done_pid, done_epoch),
            vec![topic("t", &[0])]
        )
        .await,
        vec![0]
    );
    assert_eq!(
        end(&ctx, 3, "done", (done_pid, done_epoch), true)
            .await
            .error_code,
        0
    );

    for version in versions(ApiKey::ListTransactions) {
        let all = list(version, &[], &[], -1).await;
        let ids: Vec<(String, i64, String)> = all
            .transaction_states
            .iter()
            .map(|t| {
                (
                    t.transactional_id.0.to_string(),
                    t.producer_id.0,
                    t.transaction_state.to_string(),
                )
            })
            .collect();
        assert_eq!(ids.len(), 2, "{ids:?}");
        assert_eq!(ids[1], ("open".to_owned(), open_pid, "Ongoing".to_owned()));
        assert_eq!(ids[0].0, "done");
        assert!(
            ids[0].2 == "PrepareCommit" || ids[0].2 == "CompleteCommit",
            "{ids:?}"
        );
    }
    let ongoing = list(0, &["Ongoing", "Bogus"], &[], -1).await;
    assert_eq!(ongoing.transaction_states.len(), 1);
    assert_eq!(ongoing.unknown_state_filters, vec![st("Bogus")]);
    let by_producer = list(0, &[], &[done_pid], -1).await;
    assert_eq!(by_producer.transaction_states.len(), 1);
    assert_eq!(
        by_producer.transaction_states[0].transactional_id,
        tid("done")
    );
    assert!(
        list(1, &[], &[], 3_600_000)
            .await
            .transaction_states
            .is_empty(),
        "none has been open for an hour"
    );
    // "Longer than" is strict: let a millisecond pass.
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    assert_eq!(
        list(1, &[], &[], 0).await.transaction_states.len(),
        1,
        "only the open one runs"
    );

    let req = DescribeTransactionsRequest::default()
        .with_transactional_ids(vec![tid("open"), tid("nope")]);
    let ResponseKind::DescribeTransactions(r) =
        call(&ctx, 0, RequestKind::DescribeTransactions(req)).await
    else {
        panic!()
    };
    let open = &r.transaction_states[0];
    assert_eq!(open.error_code, 0);
    assert_eq!(open.transaction_state.as_str(), "Ongoing");
    assert_eq!(
        (open.producer_id.0, open.producer_epoch),
        (open_pid, open_epoch)
    );
    assert_eq!(open.transaction_timeout_ms, 60_000);
    assert!(open.transaction_start_time_ms > 0);
    assert_eq!(open.topics.len(), 1);
    assert_eq!(open.topics[0].topic, TopicName(st("t")));
    assert_eq!(open.topics[0].partitions, vec![0, 1]);
    assert_eq!(
        r.transaction_states[1].error_code,
        kafka_protocol::error::ResponseError::TransactionalIdNotFound.code()
    );
}

#[tokio::test]
async fn internal_topics_cannot_join_a_transaction_through_add_partitions() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let ctx = ctx(dir.path()).await;
    let (code, pid, epoch) = init(&ctx, 4, "tx", 60_000).await;
    assert_eq!(code, 0);
    let codes = add(
        &ctx,
        3,
        "tx",
        (pid, epoch),
        vec![topic("__consumer_offsets", &[0]), topic("t", &[0])],
    )
    .await;
    assert_eq!(
        codes,
        vec![
            kafka_protocol::error::ResponseError::InvalidTopicException.code(),
            kafka_protocol::error::ResponseError::OperationNotAttempted.code()
        ]
    );
    let m = ctx.broker.transactions().metadata("tx");
    assert!(
        m.is_some_and(|m| m.partitions.is_empty()),
        "nothing joined the transaction"
    );
}
