use super::*;

const NOW: i64 = 1_000_000;
const MAX: i16 = i16::MAX;

fn limits() -> Limits {
    Limits {
        max_timeout_ms: 900_000,
        server_version: TxnVersion::V2,
    }
}

fn meta(state: TxnState, producer_id: i64, epoch: i16) -> TxnMetadata {
    let partitions: BTreeSet<TxnPartition> = match state {
        TxnState::Ongoing | TxnState::PrepareCommit | TxnState::PrepareAbort => {
            [TxnPartition::new("t", 0), TxnPartition::new("t", 1)].into()
        }
        _ => BTreeSet::new(),
    };
    TxnMetadata {
        producer_epoch: epoch,
        last_producer_epoch: epoch - 1,
        state,
        start_timestamp_ms: if partitions.is_empty() { -1 } else { NOW - 10 },
        partitions,
        client_version: TxnVersion::V1,
        ..TxnMetadata::new("tx", producer_id, 60_000, NOW - 10)
    }
}

/// Producer ids handed out by the tests, from 5000.
fn ids() -> impl FnMut() -> Result<i64> {
    let mut next = 5000;
    move || {
        next += 1;
        Ok(next - 1)
    }
}

fn code<T: std::fmt::Debug>(r: Result<T>) -> ResponseError {
    match r {
        Err(e) => e.code,
        Ok(o) => panic!("expected an error, got {o:?}"),
    }
}

fn written(r: Result<Outcome>) -> Transition {
    match r {
        Ok(Outcome::Write(t)) => t,
        other => panic!("expected a transition, got {other:?}"),
    }
}

fn answered(r: Result<Outcome>) -> Reply {
    match r {
        Ok(Outcome::Answer(reply)) => reply,
        other => panic!("expected an answer, got {other:?}"),
    }
}

fn init(current: Option<&TxnMetadata>, expected: Option<(i64, i16)>) -> Result<Outcome> {
    let expected = expected.map(|(producer_id, producer_epoch)| ExpectedProducer {
        producer_id,
        producer_epoch,
    });
    init_producer_id(current, "tx", 60_000, expected, limits(), NOW, &mut ids())
}

fn end(
    current: &TxnMetadata,
    producer_id: i64,
    epoch: i16,
    result: TxnResult,
    version: TxnVersion,
) -> Result<Outcome> {
    end_txn(
        Some(current),
        caller(producer_id, epoch),
        result,
        version,
        NOW,
        &mut ids(),
    )
}

fn caller(producer_id: i64, producer_epoch: i16) -> Caller<'static> {
    Caller {
        transactional_id: "tx",
        producer_id,
        producer_epoch,
    }
}

fn add(current: Option<&TxnMetadata>, producer_id: i64, epoch: i16) -> Result<Outcome> {
    add_partitions(
        current,
        caller(producer_id, epoch),
        &[TxnPartition::new("t", 1), TxnPartition::new("u", 0)],
        TxnVersion::V1,
        NOW,
    )
}

// ---------------------------------------------------------------------------------------------
// States.

#[test]
fn transitions_are_exactly_kafkas_valid_previous_states() {
    use TxnState::*;
    let allowed: &[(TxnState, &[TxnState])] = &[
        (Empty, &[Empty, Ongoing, PrepareAbort, Dead]),
        (
            Ongoing,
            &[Ongoing, PrepareCommit, PrepareAbort, PrepareEpochFence],
        ),
        (PrepareCommit, &[CompleteCommit]),
        (PrepareAbort, &[CompleteAbort]),
        (CompleteCommit, &[Empty, Ongoing, PrepareAbort, Dead]),
        (CompleteAbort, &[Empty, Ongoing, PrepareAbort, Dead]),
        (Dead, &[]),
        (PrepareEpochFence, &[PrepareAbort]),
    ];
    for &(from, targets) in allowed {
        for to in TxnState::ALL {
            assert_eq!(
                from.can_transition_to(to),
                targets.contains(&to),
                "{from} -> {to}"
            );
        }
    }
    assert!(Empty.expiration_allowed() && CompleteAbort.expiration_allowed());
    assert!(!Ongoing.expiration_allowed() && !PrepareCommit.expiration_allowed());
}

// ---------------------------------------------------------------------------------------------
// InitProducerId.

#[test]
fn init_producer_id_refuses_bad_requests_with_kafkas_errors() {
    let cases: &[(&str, i32, ResponseError)] = &[
        ("", 60_000, ResponseError::InvalidRequest),
        ("tx", 0, ResponseError::InvalidTransactionTimeout),
        ("tx", -5, ResponseError::InvalidTransactionTimeout),
        ("tx", 900_001, ResponseError::InvalidTransactionTimeout),
    ];
    for &(id, timeout_ms, expected) in cases {
        let r = init_producer_id(None, id, timeout_ms, None, limits(), NOW, &mut ids());
        assert_eq!(code(r), expected, "id {id:?}, timeout {timeout_ms}");
    }
    let r = init_producer_id(None, "tx", 900_000, None, limits(), NOW, &mut ids());
    assert!(r.is_ok(), "the maximum itself is allowed");
}

#[test]
fn expected_producer_needs_both_id_and_epoch_or_neither() {
    assert_eq!(ExpectedProducer::from_request(-1, -1), Ok(None));
    assert_eq!(
        ExpectedProducer::from_request(7, 2),
        Ok(Some(ExpectedProducer {
            producer_id: 7,
            producer_epoch: 2
        }))
    );
    for (id, epoch) in [(7, -1), (-1, 2), (-7, 2)] {
        assert_eq!(
            code(ExpectedProducer::from_request(id, epoch)),
            ResponseError::InvalidRequest
        );
    }
}

#[test]
fn init_for_a_new_transactional_id_gets_a_new_producer_id_at_epoch_0() {
    let t = written(init(None, None));
    assert_eq!(
        t.reply,
        Reply::Producer {
            producer_id: 5000,
            producer_epoch: 0
        }
    );
    assert_eq!(t.next.state, TxnState::Empty);
    assert_eq!(t.next.transactional_id, "tx");
    assert_eq!(t.next.timeout_ms, 60_000);
    assert_eq!(t.next.last_update_timestamp_ms, NOW);
    assert_eq!(t.markers, None);
}

#[test]
fn init_bumps_the_epoch_when_no_transaction_is_open() {
    for state in [
        TxnState::Empty,
        TxnState::CompleteCommit,
        TxnState::CompleteAbort,
    ] {
        let t = written(init(Some(&meta(state, 10, 5)), None));
        assert_eq!(
            t.reply,
            Reply::Producer {
                producer_id: 10,
                producer_epoch: 6
            },
            "{state}"
        );
        assert_eq!(t.next.state, TxnState::Empty);
        assert_eq!(t.next.last_producer_epoch, NO_PRODUCER_EPOCH);
        assert!(t.next.partitions.is_empty());
        assert_eq!(t.next.start_timestamp_ms, -1);
        assert_eq!(t.next.previous_producer_id, 10);
    }
}

#[test]
fn init_with_an_open_transaction_aborts_it_under_a_bumped_epoch_and_asks_to_retry() {
    let open = meta(TxnState::Ongoing, 10, 5);
    let t = written(init(Some(&open), None));
    assert_eq!(t.reply, Reply::RetryLater);
    assert_eq!(t.next.state, TxnState::PrepareAbort);
    // Fenced to 6, then version 2 bumps once more on the abort itself.
    assert_eq!(t.next.producer_epoch, 7);
    assert_eq!(
        t.markers,
        Some(Markers {
            result: TxnResult::Abort,
            producer_id: 10,
            producer_epoch: 7,
            partitions: vec![TxnPartition::new("t", 0), TxnPartition::new("t", 1)],
        })
    );
    let done = complete(&t.next, NOW).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(done.state, TxnState::CompleteAbort);
    // The retry gets an epoch the old instance never had.
    let retry = written(init(Some(&done), None));
    assert_eq!(
        retry.reply,
        Reply::Producer {
            producer_id: 10,
            producer_epoch: 8
        }
    );
    // The fenced instance is refused from now on.
    let after = retry.next;
    assert_eq!(
        code(add(Some(&after), 10, 5)),
        ResponseError::ProducerFenced
    );
}

#[test]
fn fencing_with_transaction_version_1_bumps_once() {
    let open = meta(TxnState::Ongoing, 10, 5);
    let v1 = Limits {
        server_version: TxnVersion::V1,
        ..limits()
    };
    let t = written(init_producer_id(
        Some(&open),
        "tx",
        60_000,
        None,
        v1,
        NOW,
        &mut ids(),
    ));
    assert_eq!(t.next.producer_epoch, 6);
    assert_eq!(t.markers.map(|m| m.producer_epoch), Some(6));
}

#[test]
fn init_while_the_end_of_a_transaction_or_a_write_is_in_flight_is_concurrent_transactions() {
    for state in [TxnState::PrepareCommit, TxnState::PrepareAbort] {
        assert_eq!(
            code(init(Some(&meta(state, 10, 5)), None)),
            ResponseError::ConcurrentTransactions,
            "{state}"
        );
    }
    let mut busy = meta(TxnState::Empty, 10, 5);
    busy.pending = Some(TxnState::Ongoing);
    assert_eq!(
        code(init(Some(&busy), None)),
        ResponseError::ConcurrentTransactions
    );
}

#[test]
fn init_with_a_known_producer_follows_kip_360() {
    // Current: producer 10 at epoch 5, bumped from 4.
    let current = meta(TxnState::Empty, 10, 5);
    type Case = (
        Option<(i64, i16)>,
        std::result::Result<(i64, i16), ResponseError>,
    );
    let cases: &[(&str, Case)] = &[
        ("current epoch: bump", (Some((10, 5)), Ok((10, 6)))),
        (
            "retry of the last bump: same epoch",
            (Some((10, 4)), Ok((10, 5))),
        ),
        (
            "older epoch: fenced",
            (Some((10, 3)), Err(ResponseError::ProducerFenced)),
        ),
        (
            "other producer id: fenced",
            (Some((11, 5)), Err(ResponseError::ProducerFenced)),
        ),
        ("none: bump", (None, Ok((10, 6)))),
    ];
    for (what, (expected, result)) in cases {
        let got = match init(Some(&current), *expected) {
            Ok(Outcome::Write(Transition {
                reply:
                    Reply::Producer {
                        producer_id,
                        producer_epoch,
                    },
                ..
            })) => Ok((producer_id, producer_epoch)),
            Err(e) => Err(e.code),
            other => panic!("{what}: {other:?}"),
        };
        assert_eq!(&got, result, "{what}");
    }
    // A producer whose id the coordinator forgot (new metadata) keeps working with a new id.
    let t = written(init(None, Some((99, 7))));
    assert_eq!(
        t.reply,
        Reply::Producer {
            producer_id: 5000,
            producer_epoch: 0
        }
    );
}

#[test]
fn init_at_the_last_epoch_rotates_the_producer_id() {
    let worn = meta(TxnState::CompleteCommit, 10, MAX - 1);
    let t = written(init(Some(&worn), None));
    assert_eq!(
        t.reply,
        Reply::Producer {
            producer_id: 5000,
            producer_epoch: 0
        }
    );
    assert_eq!(t.next.previous_producer_id, 10);
    assert_eq!(t.next.last_producer_epoch, NO_PRODUCER_EPOCH);

    // With KIP-360, the producer states its epoch; the previous epoch is recorded so a retry
    // of this request is recognised.
    let t = written(init(Some(&worn), Some((10, MAX - 1))));
    assert_eq!(t.next.producer_id, 5000);
    assert_eq!(t.next.last_producer_epoch, MAX - 1);
    let retry = written(init(Some(&t.next), Some((10, MAX - 1))));
    assert_eq!(
        retry.reply,
        Reply::Producer {
            producer_id: 5000,
            producer_epoch: 0
        },
        "the retry gets the rotated id again, not a second rotation"
    );

    // An epoch that is neither the current nor the previous one is a fenced producer.
    assert_eq!(
        code(init(Some(&worn), Some((10, 7)))),
        ResponseError::ProducerFenced
    );
    // The retry of the bump that reached the last epoch gets that epoch again.
    let t = written(init(Some(&worn), Some((10, MAX - 2))));
    assert_eq!(t.next.producer_epoch, MAX - 1);
    assert_eq!(t.next.producer_id, 10);
}

#[test]
fn fencing_at_the_last_epoch_never_overflows() {
    for version in [TxnVersion::V1, TxnVersion::V2] {
        let open = meta(TxnState::Ongoing, 10, MAX - 1);
        let l = Limits {
            server_version: version,
            ..limits()
        };
        let t = written(init_producer_id(
            Some(&open),
            "tx",
            60_000,
            None,
            l,
            NOW,
            &mut ids(),
        ));
        assert_eq!(t.next.producer_epoch, MAX, "{version:?}");
        let done = complete(&t.next, NOW).unwrap_or_else(|e| panic!("{e}"));
        let retry = written(init(Some(&done), None));
        assert_eq!(
            retry.reply,
            Reply::Producer {
                producer_id: 5000,
                producer_epoch: 0
            },
            "{version:?}: the next init moves to a new producer id"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// AddPartitionsToTxn, AddOffsetsToTxn, verification.

#[test]
fn add_partitions_refuses_with_kafkas_errors() {
    let mut busy = meta(TxnState::Ongoing, 10, 5);
    busy.pending = Some(TxnState::PrepareCommit);
    let cases: Vec<(&str, Option<TxnMetadata>, i64, i16, ResponseError)> = vec![
        (
            "unknown id",
            None,
            10,
            5,
            ResponseError::InvalidProducerIdMapping,
        ),
        (
            "other producer id",
            Some(meta(TxnState::Ongoing, 10, 5)),
            11,
            5,
            ResponseError::InvalidProducerIdMapping,
        ),
        (
            "old epoch",
            Some(meta(TxnState::Ongoing, 10, 5)),
            10,
            4,
            ResponseError::ProducerFenced,
        ),
        (
            "newer epoch",
            Some(meta(TxnState::Ongoing, 10, 5)),
            10,
            6,
            ResponseError::ProducerFenced,
        ),
        (
            "write in flight",
            Some(busy),
            10,
            5,
            ResponseError::ConcurrentTransactions,
        ),
        (
            "commit in progress",
            Some(meta(TxnState::PrepareCommit, 10, 5)),
            10,
            5,
            ResponseError::ConcurrentTransactions,
        ),
        (
            "abort in progress",
            Some(meta(TxnState::PrepareAbort, 10, 5)),
            10,
            5,
            ResponseError::ConcurrentTransactions,
        ),
    ];
    for (what, current, producer_id, epoch, expected) in cases {
        assert_eq!(
            code(add(current.as_ref(), producer_id, epoch)),
            expected,
            "{what}"
        );
    }
    let empty_id = add_partitions(
        None,
        Caller {
            transactional_id: "",
            ..caller(10, 5)
        },
        &[],
        TxnVersion::V1,
        NOW,
    );
    assert_eq!(code(empty_id), ResponseError::InvalidRequest);
}

#[test]
fn add_partitions_starts_or_extends_the_transaction() {
    for state in [
        TxnState::Empty,
        TxnState::CompleteCommit,
        TxnState::CompleteAbort,
    ] {
        let t = written(add(Some(&meta(state, 10, 5)), 10, 5));
        assert_eq!(t.next.state, TxnState::Ongoing, "{state}");
        assert_eq!(
            t.next.start_timestamp_ms, NOW,
            "{state}: a new transaction starts now"
        );
        assert_eq!(t.next.partitions.len(), 2);
        assert_eq!(t.reply, Reply::Done);
        assert_eq!(t.markers, None);
    }
    let open = meta(TxnState::Ongoing, 10, 5);
    let t = written(add(Some(&open), 10, 5));
    assert_eq!(
        t.next.start_timestamp_ms, open.start_timestamp_ms,
        "same transaction"
    );
    assert_eq!(
        t.next
            .partitions
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>(),
        vec!["t-0", "t-1", "u-0"]
    );
    // Adding what is already there writes nothing.
    let r = add_partitions(
        Some(&open),
        caller(10, 5),
        &[TxnPartition::new("t", 1)],
        TxnVersion::V1,
        NOW,
    );
    assert_eq!(answered(r), Reply::Done);
}

#[test]
fn a_transaction_spanning_too_many_partitions_is_refused() {
    let open = meta(TxnState::Ongoing, 10, 5);
    let many: Vec<TxnPartition> = (0..MAX_PARTITIONS_PER_TRANSACTION as i32)
        .map(|p| TxnPartition::new("big", p))
        .collect();
    let r = add_partitions(Some(&open), caller(10, 5), &many, TxnVersion::V1, NOW);
    let e = r.err().unwrap_or_else(|| panic!("accepted"));
    assert_eq!(e.code, ResponseError::InvalidRequest);
    assert!(e.message.contains("10002 partitions"), "{}", e.message);
    // Fewer partitions of long-named topics hit the byte bound of the state record.
    let long: Vec<TxnPartition> = (0..5000)
        .map(|p| TxnPartition::new(format!("{p:0>240}"), 0))
        .collect();
    let r = add_partitions(Some(&open), caller(10, 5), &long, TxnVersion::V1, NOW);
    assert_eq!(code(r), ResponseError::InvalidRequest);
}

#[test]
fn add_offsets_adds_the_groups_partition_of_consumer_offsets() {
    let t = written(add_offsets(
        Some(&meta(TxnState::Empty, 10, 5)),
        caller(10, 5),
        "my-group",
        50,
        TxnVersion::V1,
        NOW,
    ));
    let expected = TxnPartition::new(
        crate::group::OFFSETS_TOPIC,
        crate::group::partition_for("my-group", 50),
    );
    assert_eq!(t.next.partitions, [expected].into());
}

#[test]
fn verify_only_add_partitions_reports_partitions_outside_the_transaction_as_abortable() {
    let open = meta(TxnState::Ongoing, 10, 5);
    let asked = [TxnPartition::new("t", 1), TxnPartition::new("u", 0)];
    let got =
        verify_partitions(Some(&open), caller(10, 5), &asked).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        got,
        vec![
            (TxnPartition::new("t", 1), None),
            (
                TxnPartition::new("u", 0),
                Some(ResponseError::TransactionAbortable)
            ),
        ]
    );
    let cases = [
        (None, 10, 5, ResponseError::InvalidProducerIdMapping),
        (
            Some(open.clone()),
            11,
            5,
            ResponseError::InvalidProducerIdMapping,
        ),
        (Some(open.clone()), 10, 4, ResponseError::ProducerFenced),
        (
            Some(meta(TxnState::PrepareAbort, 10, 5)),
            10,
            5,
            ResponseError::ConcurrentTransactions,
        ),
    ];
    for (current, producer_id, epoch, expected) in cases {
        let r = verify_partitions(current.as_ref(), caller(producer_id, epoch), &asked);
        assert_eq!(code(r), expected);
    }
}

// ---------------------------------------------------------------------------------------------
// EndTxn.

#[derive(Debug, PartialEq)]
enum Expect {
    Prepare,
    Ok,
    Err(ResponseError),
}

fn outcome_kind(r: Result<Outcome>) -> Expect {
    match r {
        Ok(Outcome::Write(t)) => {
            assert!(t.markers.is_some());
            Expect::Prepare
        }
        Ok(Outcome::Answer(_)) => Expect::Ok,
        Err(e) => Expect::Err(e.code),
    }
}

#[test]
fn end_txn_with_version_1_follows_kafkas_table() {
    use Expect::*;
    use TxnResult::{Abort, Commit};
    let its = || Err(ResponseError::InvalidTxnState);
    let busy = || Err(ResponseError::ConcurrentTransactions);
    let cases = [
        (TxnState::Ongoing, Commit, Prepare),
        (TxnState::Ongoing, Abort, Prepare),
        (TxnState::CompleteCommit, Commit, Ok),
        (TxnState::CompleteCommit, Abort, its()),
        (TxnState::CompleteAbort, Abort, Ok),
        (TxnState::CompleteAbort, Commit, its()),
        (TxnState::PrepareCommit, Commit, busy()),
        (TxnState::PrepareCommit, Abort, its()),
        (TxnState::PrepareAbort, Abort, busy()),
        (TxnState::PrepareAbort, Commit, its()),
        (TxnState::Empty, Commit, its()),
        (TxnState::Empty, Abort, its()),
    ];
    for (state, result, expected) in cases {
        let current = meta(state, 10, 5);
        let got = outcome_kind(end(&current, 10, 5, result, TxnVersion::V1));
        assert_eq!(got, expected, "{state} {result:?}");
    }
    let open = meta(TxnState::Ongoing, 10, 5);
    for (producer_id, epoch, expected) in [
        (11, 5, ResponseError::InvalidProducerIdMapping),
        (10, 4, ResponseError::ProducerFenced),
        (10, 6, ResponseError::ProducerFenced),
    ] {
        let r = end(&open, producer_id, epoch, Commit, TxnVersion::V1);
        assert_eq!(code(r), expected);
    }
    let r = end_txn(None, caller(10, 5), Commit, TxnVersion::V1, NOW, &mut ids());
    assert_eq!(code(r), ResponseError::InvalidProducerIdMapping);
}

#[test]
fn end_txn_with_version_1_commits_without_bumping_the_epoch() {
    let open = meta(TxnState::Ongoing, 10, 5);
    let t = written(end(&open, 10, 5, TxnResult::Commit, TxnVersion::V1));
    assert_eq!(t.next.state, TxnState::PrepareCommit);
    assert_eq!(t.next.producer_epoch, 5);
    assert_eq!(t.reply, Reply::Done);
    let markers = t.markers.unwrap_or_else(|| panic!("no markers"));
    assert_eq!(markers.result, TxnResult::Commit);
    assert_eq!(markers.producer_epoch, 5);
    assert_eq!(markers.partitions.len(), 2);
    let done = complete(&t.next, NOW + 1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(done.state, TxnState::CompleteCommit);
    assert!(done.partitions.is_empty());
    assert_eq!(done.start_timestamp_ms, open.start_timestamp_ms);
    assert_eq!((done.producer_id, done.producer_epoch), (10, 5));
}

#[test]
fn end_txn_with_version_2_follows_kafkas_retry_table() {
    use Expect::*;
    use TxnResult::{Abort, Commit};
    let its = || Err(ResponseError::InvalidTxnState);
    let fenced = || Err(ResponseError::ProducerFenced);
    // The current epoch is 5; a retry carries 4 (the epoch before the last bump).
    let cases = [
        (TxnState::Empty, Abort, 4, fenced()),
        (TxnState::Empty, Abort, 5, Prepare),
        (TxnState::Empty, Commit, 4, fenced()),
        (TxnState::Empty, Commit, 5, its()),
        (TxnState::CompleteAbort, Abort, 4, Ok),
        (TxnState::CompleteAbort, Abort, 5, Prepare),
        (TxnState::CompleteAbort, Commit, 4, its()),
        (TxnState::CompleteAbort, Commit, 5, its()),
        (TxnState::CompleteCommit, Abort, 4, its()),
        (TxnState::CompleteCommit, Abort, 5, Prepare),
        (TxnState::CompleteCommit, Commit, 4, Ok),
        (TxnState::CompleteCommit, Commit, 5, its()),
        (TxnState::Ongoing, Commit, 5, Prepare),
        (TxnState::Ongoing, Abort, 5, Prepare),
        (TxnState::Ongoing, Commit, 4, fenced()),
        (
            TxnState::PrepareCommit,
            Commit,
            4,
            Err(ResponseError::ConcurrentTransactions),
        ),
        (TxnState::PrepareCommit, Commit, 5, fenced()),
        (TxnState::PrepareAbort, Commit, 4, its()),
    ];
    for (state, result, epoch, expected) in cases {
        let current = meta(state, 10, 5);
        let got = outcome_kind(end(&current, 10, epoch, result, TxnVersion::V2));
        assert_eq!(got, expected, "{state} {result:?} epoch {epoch}");
    }
}

#[test]
fn end_txn_with_version_2_bumps_the_epoch_and_answers_it() {
    let open = meta(TxnState::Ongoing, 10, 5);
    let t = written(end(&open, 10, 5, TxnResult::Commit, TxnVersion::V2));
    assert_eq!(t.next.producer_epoch, 6);
    assert_eq!(t.next.last_producer_epoch, 5);
    assert_eq!(
        t.reply,
        Reply::Producer {
            producer_id: 10,
            producer_epoch: 6
        }
    );
    assert_eq!(
        t.markers.map(|m| m.producer_epoch),
        Some(6),
        "markers fence epoch 5"
    );
    let done = complete(&t.next, NOW).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((done.producer_id, done.producer_epoch), (10, 6));
    // The client's retry of this EndTxn (with epoch 5) succeeds without a second commit.
    let retry = end(&done, 10, 5, TxnResult::Commit, TxnVersion::V2);
    assert_eq!(
        answered(retry),
        Reply::Producer {
            producer_id: 10,
            producer_epoch: 6
        }
    );
}

#[test]
fn end_txn_with_version_2_abort_of_nothing_starts_now() {
    let idle = meta(TxnState::Empty, 10, 5);
    let t = written(end(&idle, 10, 5, TxnResult::Abort, TxnVersion::V2));
    assert_eq!(t.next.state, TxnState::PrepareAbort);
    assert_eq!(t.next.start_timestamp_ms, NOW);
    assert_eq!(t.markers.map(|m| m.partitions), Some(vec![]));
}

#[test]
fn end_txn_with_version_2_at_the_last_epoch_moves_to_a_new_producer_id() {
    let open = meta(TxnState::Ongoing, 10, MAX - 1);
    let t = written(end(&open, 10, MAX - 1, TxnResult::Commit, TxnVersion::V2));
    assert_eq!(t.next.producer_epoch, MAX, "the markers use the last epoch");
    assert_eq!(t.next.next_producer_id, 5000);
    assert_eq!(
        t.reply,
        Reply::Producer {
            producer_id: 5000,
            producer_epoch: 0
        }
    );
    let done = complete(&t.next, NOW).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((done.producer_id, done.producer_epoch), (5000, 0));
    assert_eq!(done.previous_producer_id, 10);
    assert_eq!(done.next_producer_id, NO_PRODUCER_ID);
    // The client's retry with the old id and its last epoch is recognised.
    let retry = end(&done, 10, MAX - 1, TxnResult::Commit, TxnVersion::V2);
    assert_eq!(
        answered(retry),
        Reply::Producer {
            producer_id: 5000,
            producer_epoch: 0
        }
    );
}

#[test]
fn end_txn_while_a_write_is_in_flight_is_concurrent_transactions() {
    for version in [TxnVersion::V1, TxnVersion::V2] {
        let mut busy = meta(TxnState::Ongoing, 10, 5);
        busy.pending = Some(TxnState::Ongoing);
        let r = end(&busy, 10, 5, TxnResult::Commit, version);
        assert_eq!(
            code(r),
            ResponseError::ConcurrentTransactions,
            "{version:?}"
        );
    }
}

#[test]
fn complete_is_only_for_prepared_transactions() {
    for state in [TxnState::Empty, TxnState::Ongoing, TxnState::CompleteAbort] {
        assert_eq!(
            code(complete(&meta(state, 10, 5), NOW)),
            ResponseError::InvalidTxnState
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Timeouts, expiry, recovery, error versions.

#[test]
fn a_transaction_past_its_timeout_is_aborted_and_its_producer_fenced() {
    let open = meta(TxnState::Ongoing, 10, 5);
    let deadline = open.start_timestamp_ms + i64::from(open.timeout_ms);
    assert_eq!(abort_timed_out(&open, TxnVersion::V2, deadline), None);
    let t = abort_timed_out(&open, TxnVersion::V2, deadline + 1)
        .unwrap_or_else(|| panic!("not aborted"));
    assert_eq!(t.next.state, TxnState::PrepareAbort);
    assert!(t.next.producer_epoch > 5);
    let markers = t.markers.unwrap_or_else(|| panic!("no markers"));
    assert_eq!(markers.result, TxnResult::Abort);
    assert_eq!(markers.partitions.len(), 2);
    // The producer's next request is refused.
    assert_eq!(
        code(end(&t.next, 10, 5, TxnResult::Commit, TxnVersion::V1)),
        ResponseError::ProducerFenced
    );
    let mut busy = open.clone();
    busy.pending = Some(TxnState::PrepareCommit);
    assert_eq!(abort_timed_out(&busy, TxnVersion::V2, deadline + 1), None);
    for state in [
        TxnState::Empty,
        TxnState::PrepareCommit,
        TxnState::CompleteAbort,
    ] {
        assert_eq!(
            abort_timed_out(&meta(state, 10, 5), TxnVersion::V2, i64::MAX),
            None
        );
    }
}

#[test]
fn idle_transactional_ids_expire_only_when_no_transaction_is_open() {
    let idle = meta(TxnState::CompleteCommit, 10, 5);
    let at = idle.last_update_timestamp_ms + 1000;
    assert!(!idle.expired(at - 1, 1000));
    assert!(idle.expired(at, 1000));
    assert!(!meta(TxnState::Ongoing, 10, 5).expired(i64::MAX, 1000));
    assert!(!meta(TxnState::PrepareAbort, 10, 5).expired(i64::MAX, 1000));
}

#[test]
fn a_decided_transaction_writes_its_markers_again_after_a_restart() {
    let commit = recovery_markers(&meta(TxnState::PrepareCommit, 10, 5));
    assert_eq!(commit.map(|m| m.result), Some(TxnResult::Commit));
    let abort = recovery_markers(&meta(TxnState::PrepareAbort, 10, 5));
    assert_eq!(abort.map(|m| m.result), Some(TxnResult::Abort));
    assert_eq!(recovery_markers(&meta(TxnState::Ongoing, 10, 5)), None);
    assert_eq!(
        recovery_markers(&meta(TxnState::CompleteCommit, 10, 5)),
        None
    );
}

#[test]
fn producer_fenced_is_invalid_producer_epoch_for_clients_before_kip_588() {
    let e = TxnError::new(ResponseError::ProducerFenced, "fenced");
    let cases = [
        (
            TxnApi::InitProducerId,
            3,
            ResponseError::InvalidProducerEpoch,
        ),
        (TxnApi::InitProducerId, 4, ResponseError::ProducerFenced),
        (
            TxnApi::AddPartitionsToTxn,
            1,
            ResponseError::InvalidProducerEpoch,
        ),
        (TxnApi::AddPartitionsToTxn, 2, ResponseError::ProducerFenced),
        (
            TxnApi::AddOffsetsToTxn,
            1,
            ResponseError::InvalidProducerEpoch,
        ),
        (TxnApi::AddOffsetsToTxn, 3, ResponseError::ProducerFenced),
        (TxnApi::EndTxn, 0, ResponseError::InvalidProducerEpoch),
        (TxnApi::EndTxn, 5, ResponseError::ProducerFenced),
    ];
    for (api, version, expected) in cases {
        assert_eq!(e.code_for(api, version), expected, "{api:?} v{version}");
    }
    let other = TxnError::new(ResponseError::ConcurrentTransactions, "busy");
    assert_eq!(
        other.code_for(TxnApi::EndTxn, 0),
        ResponseError::ConcurrentTransactions
    );
    assert_eq!(TxnVersion::of_end_txn(4), TxnVersion::V1);
    assert_eq!(TxnVersion::of_end_txn(5), TxnVersion::V2);
}

#[test]
fn errors_say_what_happened() {
    let e = add(Some(&meta(TxnState::Ongoing, 10, 5)), 10, 4)
        .err()
        .unwrap_or_else(|| panic!("accepted"));
    assert!(e.message.contains("epoch 4"), "{}", e.message);
    assert!(e.message.contains("current epoch is 5"), "{}", e.message);
    let e = end(
        &meta(TxnState::Empty, 10, 5),
        10,
        5,
        TxnResult::Commit,
        TxnVersion::V1,
    )
    .err()
    .unwrap_or_else(|| panic!("accepted"));
    assert!(e.message.contains("EndTxn(commit)"), "{}", e.message);
    assert!(e.message.contains("Empty"), "{}", e.message);
}

#[test]
fn a_whole_transaction_survives_the_state_log_at_every_step() {
    use super::super::records::{TxnLogValue, decode_value, encode_value};
    // Every metadata written goes through __transaction_state and back as a restart reads it.
    let through_log = |m: &TxnMetadata| {
        let bytes = encode_value(&TxnLogValue::of(m));
        decode_value(&bytes)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_metadata(m.transactional_id.clone())
    };
    let mut new_ids = ids();
    let t = written(init_producer_id(
        None,
        "tx",
        60_000,
        None,
        limits(),
        NOW,
        &mut new_ids,
    ));
    let m = through_log(&t.next);
    let t = written(add(Some(&m), m.producer_id, m.producer_epoch));
    let m = through_log(&t.next);
    assert_eq!(m.state, TxnState::Ongoing);
    assert_eq!(m.partitions.len(), 2);
    let t = written(end_txn(
        Some(&m),
        caller(m.producer_id, m.producer_epoch),
        TxnResult::Commit,
        TxnVersion::V2,
        NOW,
        &mut new_ids,
    ));
    let m = through_log(&t.next);
    // A restart here writes the markers again and completes.
    let markers = recovery_markers(&m).unwrap_or_else(|| panic!("no markers"));
    assert_eq!(Some(markers), t.markers);
    let done = through_log(&complete(&m, NOW).unwrap_or_else(|e| panic!("{e}")));
    assert_eq!(done.state, TxnState::CompleteCommit);
    assert_eq!((done.producer_id, done.producer_epoch), (5000, 1));
}

// ---------------------------------------------------------------------------------------------
// Random request sequences.

#[derive(Debug, Clone)]
enum Op {
    Init { recover: bool },
    Add { stale: bool, partition: i32 },
    AddOffsets,
    Verify,
    End { commit: bool, v2: bool, stale: bool },
    Complete,
    Tick { ms: i64 },
    Restart,
}

fn any_op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        any::<bool>().prop_map(|recover| Op::Init { recover }),
        (any::<bool>(), 0i32..4).prop_map(|(stale, partition)| Op::Add { stale, partition }),
        Just(Op::AddOffsets),
        Just(Op::Verify),
        (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(commit, v2, stale)| Op::End {
            commit,
            v2,
            stale
        }),
        Just(Op::Complete),
        (0i64..120_000).prop_map(|ms| Op::Tick { ms }),
        Just(Op::Restart),
    ]
}

/// Checks what Kafka's `completeTransitionTo` checks, and more, of every transition written.
fn check_transition(prev: Option<&TxnMetadata>, next: &TxnMetadata) {
    use super::super::records::{TxnLogValue, decode_value, encode_value};
    if let Some(prev) = prev {
        assert!(
            prev.state.can_transition_to(next.state),
            "{} -> {}",
            prev.state,
            next.state
        );
        if next.producer_id == prev.producer_id {
            assert!(
                next.producer_epoch >= prev.producer_epoch,
                "epoch went back"
            );
        } else {
            assert_eq!(
                next.producer_epoch, 0,
                "a new producer id starts at epoch 0"
            );
            assert!(
                next.producer_id > prev.producer_id,
                "producer ids are fresh"
            );
        }
    }
    assert!(next.producer_epoch >= 0);
    assert!(next.pending.is_none());
    assert!(!matches!(
        next.state,
        TxnState::Dead | TxnState::PrepareEpochFence
    ));
    if matches!(
        next.state,
        TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
    ) {
        assert!(
            next.partitions.is_empty(),
            "{} keeps no partitions",
            next.state
        );
    }
    if next.state == TxnState::Empty {
        assert_eq!(next.start_timestamp_ms, -1);
    }
    let stored = TxnLogValue::of(next);
    assert_eq!(decode_value(&encode_value(&stored)), Ok(stored));
}

proptest::proptest! {
    #[test]
    fn random_request_sequences_keep_the_state_machine_valid(
        start_epoch in proptest::sample::select(vec![0i16, MAX - 4]),
        ops in proptest::collection::vec(any_op(), 1..60),
    ) {
        let mut now = NOW;
        let mut next_id = 100i64;
        let mut new_id = || {
            next_id += 1;
            Ok(next_id)
        };
        let mut current = Some(TxnMetadata {
            producer_epoch: start_epoch,
            last_producer_epoch: NO_PRODUCER_EPOCH,
            ..TxnMetadata::new("tx", 1, 60_000, NOW)
        });
        // What the client holds, from its last successful answer.
        let mut client = (1i64, start_epoch);
        for op in ops {
            let result = match op {
                Op::Init { recover } => {
                    let expected = recover.then_some(ExpectedProducer {
                        producer_id: client.0,
                        producer_epoch: client.1,
                    });
                    init_producer_id(current.as_ref(), "tx", 60_000, expected, limits(), now, &mut new_id)
                }
                Op::Add { stale, partition } => add_partitions(
                    current.as_ref(),
                    caller(client.0, client.1 - i16::from(stale)),
                    &[TxnPartition::new("t", partition)],
                    TxnVersion::V1,
                    now,
                ),
                Op::AddOffsets => add_offsets(
                    current.as_ref(),
                    caller(client.0, client.1),
                    "g",
                    50,
                    TxnVersion::V1,
                    now,
                ),
                Op::Verify => {
                    let _ = verify_partitions(
                        current.as_ref(),
                        caller(client.0, client.1),
                        &[TxnPartition::new("t", 0)],
                    );
                    continue;
                }
                Op::End { commit, v2, stale } => end_txn(
                    current.as_ref(),
                    caller(client.0, client.1 - i16::from(stale)),
                    TxnResult::from_committed(commit),
                    if v2 { TxnVersion::V2 } else { TxnVersion::V1 },
                    now,
                    &mut new_id,
                ),
                Op::Complete => {
                    if let Some(m) = current.as_ref().filter(|m| recovery_markers(m).is_some()) {
                        let done = complete(m, now).unwrap_or_else(|e| panic!("{e}"));
                        check_transition(Some(m), &done);
                        current = Some(done);
                    }
                    continue;
                }
                Op::Tick { ms } => {
                    now += ms;
                    if let Some(t) = current.as_ref().and_then(|m| abort_timed_out(m, TxnVersion::V2, now)) {
                        check_transition(current.as_ref(), &t.next);
                        current = Some(t.next);
                    }
                    continue;
                }
                Op::Restart => {
                    use super::super::records::{TxnLogValue, decode_value, encode_value};
                    current = current.map(|m| {
                        decode_value(&encode_value(&TxnLogValue::of(&m)))
                            .unwrap_or_else(|e| panic!("{e}"))
                            .into_metadata(m.transactional_id.clone())
                    });
                    continue;
                }
            };
            match result {
                Ok(Outcome::Write(t)) => {
                    check_transition(current.as_ref(), &t.next);
                    if let Reply::Producer { producer_id, producer_epoch } = t.reply {
                        proptest::prop_assert!(producer_epoch < MAX, "a client never holds the last epoch");
                        client = (producer_id, producer_epoch);
                    }
                    if let Some(m) = &t.markers {
                        proptest::prop_assert_eq!(m.producer_id, t.next.producer_id);
                        proptest::prop_assert_eq!(m.producer_epoch, t.next.producer_epoch);
                    }
                    current = Some(t.next);
                }
                Ok(Outcome::Answer(Reply::Producer { producer_id, producer_epoch })) => {
                    client = (producer_id, producer_epoch);
                }
                Ok(Outcome::Answer(_)) => {}
                Err(e) => {
                    proptest::prop_assert!(!e.message.is_empty());
                    proptest::prop_assert_ne!(e.code, ResponseError::UnknownServerError);
                }
            }
        }
    }
}
