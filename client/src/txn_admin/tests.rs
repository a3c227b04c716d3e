//! Transactions admin against the in-process broker, and against a fake two-broker cluster
//! whose transactions live on both brokers and whose coordinators differ by key type.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::{ApiVersion, ApiVersionsResponse};
use kafka_protocol::messages::describe_transactions_response::{
    DescribeTransactionsResponse, TopicData, TransactionState as DescribedState,
};
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::find_coordinator_response::{Coordinator, FindCoordinatorResponse};
use kafka_protocol::messages::list_transactions_response::{
    ListTransactionsResponse, TransactionState as ListedState,
};
use kafka_protocol::messages::metadata_response::{MetadataResponse, MetadataResponseBroker};
use kafka_protocol::messages::{BrokerId, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};
use quiver_common::record::{Record, records_to_batch};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::tests::{client, new_topic, start};
use crate::{ClientConfig, IdempotentProducer, ProducerConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_producers_shows_each_partitions_producers_in_the_order_asked() -> Result<()> {
    let (s, _dir) = start().await;
    let c = Arc::new(client(s.addr()).await);
    c.create_topics(&[new_topic("t", Some(2), &[])], false)
        .await?;
    let producer = IdempotentProducer::new(c.clone(), ProducerConfig::default()).await?;
    let (producer_id, producer_epoch) = producer.producer_id();
    let before_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    for count in [3, 2] {
        let records: Vec<Record> = (0..count)
            .map(|i| Record::new(10, None, Some(format!("v{i}").as_bytes())))
            .collect();
        producer.send("t", 0, &records_to_batch(&records)).await?;
    }

    let described = c.describe_producers("t", &[1, 0, 9]).await?;
    let partitions: Vec<i32> = described.iter().map(|(p, _)| *p).collect();
    assert_eq!(partitions, [1, 0, 9]);
    assert_eq!(
        described[0].1,
        Ok(Vec::new()),
        "nobody wrote to partition 1"
    );
    let p0 = described[1].1.clone().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p0.len(), 1, "{p0:?}");
    assert_eq!(
        (
            p0[0].producer_id,
            p0[0].producer_epoch,
            p0[0].last_sequence,
            p0[0].coordinator_epoch,
            p0[0].current_txn_start_offset
        ),
        // Sequences 0..=2, then 3..=4; not transactional, so nothing open.
        (producer_id, i32::from(producer_epoch), 4, None, None)
    );
    assert!(
        p0[0].last_timestamp_ms >= before_ms,
        "the last write is after the test began: {} < {before_ms}",
        p0[0].last_timestamp_ms
    );
    assert_eq!(
        described[2].1.as_ref().err().map(|e| e.error),
        Some(ResponseError::UnknownTopicOrPartition)
    );

    let missing = c.describe_producers("missing", &[0]).await?;
    assert_eq!(
        missing[0].1.as_ref().err().map(|e| e.error),
        Some(ResponseError::UnknownTopicOrPartition)
    );
    let twice = c.describe_producers("t", &[0, 0]).await;
    assert!(
        matches!(&twice, Err(ClientError::InvalidArgument(m)) if m == "partition 0 is given twice; name each partition once"),
        "{twice:?}"
    );
    Ok(())
}

/// The API keys, versions, and request details a fake broker saw, by node id.
type Seen = Arc<parking_lot::Mutex<Vec<(i32, Asked)>>>;

/// A request to a fake broker, as far as the tests look at it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Asked {
    /// Key type and key.
    FindCoordinator(i8, String),
    /// State and producer id filters.
    ListTransactions(Vec<String>, Vec<i64>),
    DescribeTransactions(Vec<String>),
    Other(i16),
}

/// A response frame: length, header for `api` at `version`, body.
fn frame(api: ApiKey, version: i16, correlation: i32, body: &impl Encodable) -> Vec<u8> {
    let mut buf = BytesMut::new();
    ResponseHeader::default()
        .with_correlation_id(correlation)
        .encode(&mut buf, api.response_header_version(version))
        .unwrap_or_else(|e| panic!("{e}"));
    body.encode(&mut buf, version)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut out = (buf.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&buf);
    out
}

/// One broker of the fake cluster: node `id` of `nodes` (`(id, port)`), whose group
/// coordinator is node 1 and whose transaction coordinator is node 2. Each node lists
/// `<node>-txn`; node 2 describes `2-txn` and knows no other id; node 1 is not a transaction
/// coordinator. A state filter `Bogus` is unknown.
fn answer(
    id: i32,
    nodes: &[(i32, u16)],
    api: ApiKey,
    version: i16,
    correlation: i32,
    body: &mut Bytes,
) -> Vec<u8> {
    let bytes = |s: &str| StrBytes::from_string(s.to_owned());
    match api {
        ApiKey::ApiVersions => {
            let apis = [
                (ApiKey::ApiVersions, 0, 3),
                (ApiKey::Metadata, 1, 12),
                (ApiKey::FindCoordinator, 0, 4),
                (ApiKey::ListTransactions, 0, 1),
                (ApiKey::DescribeTransactions, 0, 0),
            ];
            let body = ApiVersionsResponse::default().with_api_keys(
                apis.iter()
                    .map(|(k, lo, hi)| {
                        ApiVersion::default()
                            .with_api_key(*k as i16)
                            .with_min_version(*lo)
                            .with_max_version(*hi)
                    })
                    .collect(),
            );
            frame(api, version, correlation, &body)
        }
        ApiKey::Metadata => {
            let brokers = nodes
                .iter()
                .map(|(n, port)| {
                    MetadataResponseBroker::default()
                        .with_node_id(BrokerId(*n))
                        .with_host(bytes("127.0.0.1"))
                        .with_port(i32::from(*port))
                })
                .collect();
            let body = MetadataResponse::default()
                .with_brokers(brokers)
                .with_controller_id(BrokerId(1));
            frame(api, version, correlation, &body)
        }
        ApiKey::FindCoordinator => {
            let req =
                FindCoordinatorRequest::decode(body, version).unwrap_or_else(|e| panic!("{e}"));
            let node = if req.key_type == 1 { 2 } else { 1 };
            let port = nodes
                .iter()
                .find(|(n, _)| *n == node)
                .map_or(0, |(_, p)| i32::from(*p));
            let body = FindCoordinatorResponse::default().with_coordinators(
                req.coordinator_keys
                    .into_iter()
                    .map(|key| {
                        Coordinator::default()
                            .with_key(key)
                            .with_node_id(BrokerId(node))
                            .with_host(bytes("127.0.0.1"))
                            .with_port(port)
                    })
                    .collect(),
            );
            frame(api, version, correlation, &body)
        }
        ApiKey::ListTransactions => {
            let req =
                ListTransactionsRequest::decode(body, version).unwrap_or_else(|e| panic!("{e}"));
            let unknown = req
                .state_filters
                .into_iter()
                .filter(|s| s.as_str() == "Bogus")
                .collect();
            let body = ListTransactionsResponse::default()
                .with_unknown_state_filters(unknown)
                .with_transaction_states(vec![
                    ListedState::default()
                        .with_transactional_id(TransactionalId(bytes(&format!("{id}-txn"))))
                        .with_producer_id(ProducerId(i64::from(id) * 100))
                        .with_transaction_state(bytes(if id == 1 { "Ongoing" } else { "Empty" })),
                ]);
            frame(api, version, correlation, &body)
        }
        ApiKey::DescribeTransactions => {
            let req = DescribeTransactionsRequest::decode(body, version)
                .unwrap_or_else(|e| panic!("{e}"));
            let states = req
                .transactional_ids
                .into_iter()
                .map(|t| {
                    let out = DescribedState::default().with_transactional_id(t.clone());
                    match (id, t.0.as_str()) {
                        (1, _) => out.with_error_code(ResponseError::NotCoordinator.code()),
                        (_, "2-txn") => out
                            .with_transaction_state(bytes("Ongoing"))
                            .with_producer_id(ProducerId(200))
                            .with_producer_epoch(3)
                            .with_transaction_timeout_ms(60_000)
                            .with_transaction_start_time_ms(1_700_000_000_000)
                            .with_topics(vec![
                                TopicData::default()
                                    .with_topic(topic_name("t"))
                                    .with_partitions(vec![1, 0]),
                                TopicData::default()
                                    .with_topic(topic_name("s"))
                                    .with_partitions(vec![2]),
                            ]),
                        _ => out.with_error_code(ResponseError::TransactionalIdNotFound.code()),
                    }
                })
                .collect();
            frame(
                api,
                version,
                correlation,
                &DescribeTransactionsResponse::default().with_transaction_states(states),
            )
        }
        other => panic!("the fake broker does not answer {other:?}"),
    }
}

/// Serves node `id` on `listener`: every connection, every request, answered by [`answer`].
fn serve(id: i32, listener: TcpListener, nodes: Vec<(i32, u16)>, seen: Seen) {
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let nodes = nodes.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    let Ok(len) = stream.read_i32().await else {
                        return;
                    };
                    let mut frame = vec![0u8; len.max(0) as usize];
                    if stream.read_exact(&mut frame).await.is_err() || frame.len() < 4 {
                        return;
                    }
                    let key = i16::from_be_bytes([frame[0], frame[1]]);
                    let version = i16::from_be_bytes([frame[2], frame[3]]);
                    let api = ApiKey::try_from(key).unwrap_or_else(|()| panic!("api key {key}"));
                    let mut body = Bytes::from(frame);
                    let header =
                        RequestHeader::decode(&mut body, api.request_header_version(version))
                            .unwrap_or_else(|e| panic!("{e}"));
                    let asked = match api {
                        ApiKey::FindCoordinator => {
                            let req = FindCoordinatorRequest::decode(&mut body.clone(), version)
                                .unwrap_or_else(|e| panic!("{e}"));
                            let key = req
                                .coordinator_keys
                                .first()
                                .map_or_else(|| req.key.to_string(), ToString::to_string);
                            Asked::FindCoordinator(req.key_type, key)
                        }
                        ApiKey::ListTransactions => {
                            let req = ListTransactionsRequest::decode(&mut body.clone(), version)
                                .unwrap_or_else(|e| panic!("{e}"));
                            Asked::ListTransactions(
                                req.state_filters.iter().map(ToString::to_string).collect(),
                                req.producer_id_filters.iter().map(|p| p.0).collect(),
                            )
                        }
                        ApiKey::DescribeTransactions => {
                            let req =
                                DescribeTransactionsRequest::decode(&mut body.clone(), version)
                                    .unwrap_or_else(|e| panic!("{e}"));
                            Asked::DescribeTransactions(
                                req.transactional_ids
                                    .iter()
                                    .map(|t| t.0.to_string())
                                    .collect(),
                            )
                        }
                        _ => Asked::Other(key),
                    };
                    seen.lock().push((id, asked));
                    let bytes = answer(id, &nodes, api, version, header.correlation_id, &mut body);
                    if stream.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// Starts nodes 1 and 2 of the fake cluster; returns node 1's address.
async fn fake_cluster(seen: &Seen) -> SocketAddr {
    let mut listeners = Vec::new();
    for id in [1, 2] {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        listeners.push((id, l));
    }
    let nodes: Vec<(i32, u16)> = listeners
        .iter()
        .map(|(id, l)| (*id, l.local_addr().map_or(0, |a| a.port())))
        .collect();
    let first = listeners[0]
        .1
        .local_addr()
        .unwrap_or_else(|e| panic!("{e}"));
    for (id, l) in listeners {
        serve(id, l, nodes.clone(), seen.clone());
    }
    first
}

#[tokio::test]
async fn transactions_are_listed_from_every_broker_with_the_filters_given() -> Result<()> {
    let seen: Seen = Arc::default();
    let addr = fake_cluster(&seen).await;
    let c = KafkaClient::connect(&addr.to_string(), ClientConfig::default()).await?;

    let all = c.list_transactions(&[], &[]).await?;
    assert_eq!(
        all,
        [
            ListedTransaction {
                transactional_id: "1-txn".into(),
                producer_id: 100,
                state: "Ongoing".into(),
            },
            ListedTransaction {
                transactional_id: "2-txn".into(),
                producer_id: 200,
                state: "Empty".into(),
            },
        ]
    );

    seen.lock().clear();
    c.list_transactions(&["Ongoing", "Empty"], &[100, 7])
        .await?;
    let filters = Asked::ListTransactions(vec!["Ongoing".into(), "Empty".into()], vec![100, 7]);
    let asked: Vec<(i32, Asked)> = seen
        .lock()
        .iter()
        .filter(|(_, a)| matches!(a, Asked::ListTransactions(..)))
        .cloned()
        .collect();
    assert_eq!(asked, [(1, filters.clone()), (2, filters)]);

    let err = c
        .list_transactions(&["Ongoing", "Bogus"], &[])
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert_eq!(
        err,
        "unknown transaction state 'Bogus'; the states are Empty, Ongoing, PrepareCommit, \
         PrepareAbort, CompleteCommit, CompleteAbort, Dead, PrepareEpochFence"
    );
    Ok(())
}

#[tokio::test]
async fn a_transactional_id_is_described_at_its_own_coordinator_not_a_groups() -> Result<()> {
    let seen: Seen = Arc::default();
    let addr = fake_cluster(&seen).await;
    let c = KafkaClient::connect(&addr.to_string(), ClientConfig::default()).await?;

    // A group of the same name is coordinated by node 1; the transactional id by node 2.
    assert_eq!(c.find_coordinator("2-txn").await?.node_id, 1);
    let described = c.describe_transactions(&["2-txn", "nobody"]).await?;
    assert_eq!(described.len(), 2);
    assert_eq!(described[0].0, "2-txn");
    assert_eq!(
        described[0].1,
        Ok(TransactionDescription {
            transactional_id: "2-txn".into(),
            state: "Ongoing".into(),
            producer_id: 200,
            producer_epoch: 3,
            timeout_ms: 60_000,
            start_timestamp_ms: Some(1_700_000_000_000),
            partitions: vec![("s".into(), vec![2]), ("t".into(), vec![0, 1])],
        })
    );
    assert_eq!(described[1].0, "nobody");
    assert_eq!(
        described[1].1.as_ref().err().map(|e| e.error),
        Some(ResponseError::TransactionalIdNotFound)
    );

    let seen = seen.lock();
    let described_at: Vec<i32> = seen
        .iter()
        .filter(|(_, a)| matches!(a, Asked::DescribeTransactions(_)))
        .map(|(node, _)| *node)
        .collect();
    assert_eq!(
        described_at,
        [2, 2],
        "the group's coordinator was asked: {seen:?}"
    );
    let lookups: Vec<&Asked> = seen
        .iter()
        .filter(|(_, a)| matches!(a, Asked::FindCoordinator(..)))
        .map(|(_, a)| a)
        .collect();
    assert!(
        lookups.contains(&&Asked::FindCoordinator(1, "2-txn".into()))
            && lookups.contains(&&Asked::FindCoordinator(0, "2-txn".into())),
        "{lookups:?}"
    );
    Ok(())
}

/// `count` records of `id`, for a transactional append.
fn txn_records(id: &str, count: usize) -> arrow::record_batch::RecordBatch {
    let records: Vec<Record> = (0..count)
        .map(|i| Record::new(10, None, Some(format!("{id}-{i}").as_bytes())))
        .collect();
    records_to_batch(&records)
}

/// Fails the test with a broker error.
fn fail<T>(e: quiver_broker::BrokerError) -> T {
    panic!("{e}")
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_producers_shows_where_a_partitions_open_transaction_starts() -> Result<()> {
    let (s, _dir) = start().await;
    let c = client(s.addr()).await;
    c.create_topics(&[new_topic("t", Some(2), &[])], false)
        .await?;
    let broker = s.broker();

    // Committed in partition 0; open in partition 1, after plain records.
    let mut done = broker
        .transactional_producer("app-done", 60_000)
        .await
        .unwrap_or_else(fail);
    done.append("t", 0, &txn_records("done", 2))
        .await
        .unwrap_or_else(fail);
    done.commit_and_wait().await.unwrap_or_else(fail);
    let mut open = broker
        .transactional_producer("app-open", 60_000)
        .await
        .unwrap_or_else(fail);
    c.produce("t", 1, &txn_records("plain", 2)).await?;
    let first = open
        .append("t", 1, &txn_records("open", 3))
        .await
        .unwrap_or_else(fail);
    open.append("t", 1, &txn_records("open", 1))
        .await
        .unwrap_or_else(fail);

    let described = c.describe_producers("t", &[0, 1]).await?;
    let producers = |p: usize| -> Vec<(i64, i32, i32, Option<i64>)> {
        described[p]
            .1
            .clone()
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .map(|s| {
                (
                    s.producer_id,
                    s.producer_epoch,
                    s.last_sequence,
                    s.current_txn_start_offset,
                )
            })
            .collect()
    };
    assert_eq!(
        producers(0),
        [(
            done.producer_id(),
            i32::from(done.producer_epoch()),
            1,
            None
        )],
        "a committed transaction holds nothing back"
    );
    assert_eq!(
        producers(1),
        [(
            open.producer_id(),
            i32::from(open.producer_epoch()),
            3,
            Some(first.base_offset)
        )],
        "the open transaction starts at its first batch, after the plain records"
    );
    assert_eq!(first.base_offset, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_are_listed_and_described_as_their_coordinator_knows_them() -> Result<()> {
    let (s, _dir) = start().await;
    let c = client(s.addr()).await;
    c.create_topics(&[new_topic("t", Some(2), &[])], false)
        .await?;
    let broker = s.broker();
    let before_ms = now_ms();

    // One transaction left open over both partitions; another written and committed.
    let mut open = broker
        .transactional_producer("app-open", 45_000)
        .await
        .unwrap_or_else(fail);
    for p in [1, 0] {
        open.append("t", p, &txn_records("open", 1))
            .await
            .unwrap_or_else(fail);
    }
    let mut done = broker
        .transactional_producer("app-done", 60_000)
        .await
        .unwrap_or_else(fail);
    done.append("t", 0, &txn_records("done", 2))
        .await
        .unwrap_or_else(fail);
    done.commit_and_wait().await.unwrap_or_else(fail);

    let listed = c.list_transactions(&[], &[]).await?;
    assert_eq!(
        listed,
        [
            ListedTransaction {
                transactional_id: "app-done".into(),
                producer_id: done.producer_id(),
                state: "CompleteCommit".into(),
            },
            ListedTransaction {
                transactional_id: "app-open".into(),
                producer_id: open.producer_id(),
                state: "Ongoing".into(),
            },
        ]
    );
    let ids = |listed: Vec<ListedTransaction>| -> Vec<String> {
        listed.into_iter().map(|t| t.transactional_id).collect()
    };
    assert_eq!(
        ids(c.list_transactions(&["Ongoing"], &[]).await?),
        ["app-open"]
    );
    assert_eq!(
        ids(c.list_transactions(&[], &[done.producer_id()]).await?),
        ["app-done"]
    );
    assert_eq!(
        ids(c
            .list_transactions(&["Ongoing"], &[done.producer_id()])
            .await?),
        Vec::<String>::new(),
        "both filters apply"
    );
    let bogus = c.list_transactions(&["Bogus"], &[]).await;
    assert!(
        matches!(&bogus, Err(ClientError::InvalidArgument(m)) if m.starts_with("unknown transaction state 'Bogus'; the states are Empty, ")),
        "{bogus:?}"
    );

    let described = c
        .describe_transactions(&["app-open", "app-done", "nobody"])
        .await?;
    let open_described = described[0].1.clone().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (
            open_described.state.as_str(),
            open_described.producer_id,
            open_described.producer_epoch,
            open_described.timeout_ms,
            open_described.partitions.clone()
        ),
        (
            "Ongoing",
            open.producer_id(),
            open.producer_epoch(),
            45_000,
            vec![("t".to_owned(), vec![0, 1])]
        )
    );
    assert!(
        open_described
            .start_timestamp_ms
            .is_some_and(|ms| ms >= before_ms),
        "{open_described:?}"
    );
    let done_described = described[1].1.clone().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(done_described.state, "CompleteCommit");
    assert!(
        done_described.partitions.is_empty(),
        "a completed transaction has no partitions: {done_described:?}"
    );
    assert_eq!(
        described[2].1.as_ref().err().map(|e| e.error),
        Some(ResponseError::TransactionalIdNotFound)
    );
    Ok(())
}
