//! Consumer groups through the Kafka listener, over TCP: a rebalance driven by two clients on
//! their own connections (a waiting JoinGroup blocks neither other connections nor other
//! groups), committed offsets, and kcat's balanced consumer resuming from its commits across a
//! broker restart (when kcat is installed).

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::have_kcat;
use quiver_broker::kafka::LocalServer;
use quiver_broker::{Broker, BrokerConfig, NewTopic, Record};

async fn start(dir: &std::path::Path) -> LocalServer {
    let mut config = BrokerConfig {
        data_dir: dir.to_owned(),
        ..BrokerConfig::default()
    };
    config.set("group.initial.rebalance.delay.ms", "0").ok();
    config.set("offsets.topic.num.partitions", "4").ok();
    // A restart may find the previous broker still held by connections that are closing.
    let mut tries = 0;
    loop {
        match LocalServer::start(config.clone()).await {
            Ok(server) => return server,
            Err(quiver_broker::BrokerError::DataDirLocked { .. }) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("start: {e}"),
        }
    }
}

fn st(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

fn api_of(req: &RequestKind) -> ApiKey {
    match req {
        RequestKind::FindCoordinator(_) => ApiKey::FindCoordinator,
        RequestKind::JoinGroup(_) => ApiKey::JoinGroup,
        RequestKind::SyncGroup(_) => ApiKey::SyncGroup,
        RequestKind::Heartbeat(_) => ApiKey::Heartbeat,
        RequestKind::LeaveGroup(_) => ApiKey::LeaveGroup,
        RequestKind::OffsetCommit(_) => ApiKey::OffsetCommit,
        RequestKind::OffsetFetch(_) => ApiKey::OffsetFetch,
        RequestKind::DescribeGroups(_) => ApiKey::DescribeGroups,
        RequestKind::DeleteGroups(_) => ApiKey::DeleteGroups,
        other => panic!("unexpected request {other:?}"),
    }
}

/// One client connection speaking raw Kafka frames.
struct Conn {
    stream: TcpStream,
    correlation: i32,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        Conn {
            stream: TcpStream::connect(addr)
                .await
                .unwrap_or_else(|e| panic!("connect: {e}")),
            correlation: 0,
        }
    }

    async fn call(&mut self, version: i16, body: RequestKind) -> ResponseKind {
        let api = api_of(&body);
        self.correlation += 1;
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(st("tcp-test")));
        header
            .encode(&mut buf, api.request_header_version(version))
            .unwrap_or_else(|e| panic!("{e}"));
        body.encode(&mut buf, version)
            .unwrap_or_else(|e| panic!("{api:?} v{version}: {e}"));
        let len = (buf.len() - 4) as i32;
        buf[0..4].copy_from_slice(&len.to_be_bytes());
        self.stream
            .write_all(&buf)
            .await
            .unwrap_or_else(|e| panic!("write: {e}"));
        let n = self
            .stream
            .read_i32()
            .await
            .unwrap_or_else(|e| panic!("{api:?} v{version}: the connection closed: {e}"));
        let mut frame = vec![0u8; n as usize];
        self.stream
            .read_exact(&mut frame)
            .await
            .unwrap_or_else(|e| panic!("read: {e}"));
        let mut frame = Bytes::from(frame);
        let header = ResponseHeader::decode(&mut frame, api.response_header_version(version))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(header.correlation_id, self.correlation);
        let resp = ResponseKind::decode(api, &mut frame, version)
            .unwrap_or_else(|e| panic!("{api:?} v{version}: {e}"));
        assert!(
            !frame.has_remaining(),
            "{api:?} v{version}: bytes left over"
        );
        resp
    }

    async fn join(&mut self, group: &str, member: &str) -> JoinGroupResponse {
        let req = JoinGroupRequest::default()
            .with_group_id(GroupId(st(group)))
            .with_session_timeout_ms(10_000)
            .with_rebalance_timeout_ms(10_000)
            .with_member_id(st(member))
            .with_protocol_type(st("consumer"))
            .with_protocols(vec![
                join_group_request::JoinGroupRequestProtocol::default()
                    .with_name(st("range"))
                    .with_metadata(Bytes::from_static(
                        b"\0\0\0\0\0\x01\0\x06orders\xff\xff\xff\xff",
                    )),
            ]);
        match self.call(7, RequestKind::JoinGroup(req)).await {
            ResponseKind::JoinGroup(r) => r,
            other => panic!("{other:?}"),
        }
    }

    /// A new member: the MEMBER_ID_REQUIRED round trip, then the join (which may wait).
    async fn join_new(&mut self, group: &str) -> JoinGroupResponse {
        let first = self.join(group, "").await;
        assert_eq!(first.error_code, ResponseError::MemberIdRequired.code());
        let id = first.member_id.as_str().to_owned();
        self.join(group, &id).await
    }

    async fn sync(
        &mut self,
        group: &str,
        generation: i32,
        member: &str,
        assignments: &[(&str, &'static [u8])],
    ) -> SyncGroupResponse {
        let req = SyncGroupRequest::default()
            .with_group_id(GroupId(st(group)))
            .with_generation_id(generation)
            .with_member_id(st(member))
            .with_protocol_type(Some(st("consumer")))
            .with_protocol_name(Some(st("range")))
            .with_assignments(
                assignments
                    .iter()
                    .map(|(m, a)| {
                        sync_group_request::SyncGroupRequestAssignment::default()
                            .with_member_id(st(m))
                            .with_assignment(Bytes::from_static(a))
                    })
                    .collect(),
            );
        match self.call(5, RequestKind::SyncGroup(req)).await {
            ResponseKind::SyncGroup(r) => r,
            other => panic!("{other:?}"),
        }
    }

    async fn heartbeat(&mut self, group: &str, generation: i32, member: &str) -> i16 {
        let req = HeartbeatRequest::default()
            .with_group_id(GroupId(st(group)))
            .with_generation_id(generation)
            .with_member_id(st(member));
        match self.call(4, RequestKind::Heartbeat(req)).await {
            ResponseKind::Heartbeat(r) => r.error_code,
            other => panic!("{other:?}"),
        }
    }

    async fn commit(&mut self, group: &str, generation: i32, member: &str, offset: i64) -> i16 {
        let req = OffsetCommitRequest::default()
            .with_group_id(GroupId(st(group)))
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(st(member))
            .with_topics(vec![
                offset_commit_request::OffsetCommitRequestTopic::default()
                    .with_name(TopicName(st("orders")))
                    .with_partitions(vec![
                        offset_commit_request::OffsetCommitRequestPartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(offset),
                    ]),
            ]);
        match self.call(8, RequestKind::OffsetCommit(req)).await {
            ResponseKind::OffsetCommit(r) => r.topics[0].partitions[0].error_code,
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_rebalance_and_commit_over_tcp() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let s = start(dir.path()).await;
    s.broker()
        .create_topic(NewTopic::new("orders", 2))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (mut c1, mut c2, mut c3) = (
        Conn::open(s.addr()).await,
        Conn::open(s.addr()).await,
        Conn::open(s.addr()).await,
    );

    let found = c1
        .call(
            4,
            RequestKind::FindCoordinator(
                FindCoordinatorRequest::default().with_coordinator_keys(vec![st("tcp")]),
            ),
        )
        .await;
    let ResponseKind::FindCoordinator(found) = found else {
        panic!()
    };
    assert_eq!(found.coordinators[0].port, i32::from(s.addr().port()));

    let j1 = c1.join_new("tcp").await;
    assert_eq!((j1.error_code, j1.generation_id), (0, 1));
    let m1 = j1.member_id.as_str().to_owned();
    let s1 = c1.sync("tcp", 1, &m1, &[(&m1, b"p0,p1")]).await;
    assert_eq!(s1.assignment, Bytes::from_static(b"p0,p1"));

    // The second client's JoinGroup waits for the first to rejoin, on its own connection.
    let second = tokio::spawn(async move {
        let j = c2.join_new("tcp").await;
        (c2, j)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!second.is_finished());
    // Meanwhile other requests, on other connections and groups, are answered at once.
    assert_eq!(c3.commit("elsewhere", -1, "", 5).await, 0);
    let ResponseKind::DescribeGroups(d) = c3
        .call(
            5,
            RequestKind::DescribeGroups(
                DescribeGroupsRequest::default().with_groups(vec![GroupId(st("tcp"))]),
            ),
        )
        .await
    else {
        panic!()
    };
    assert_eq!(d.groups[0].group_state.as_str(), "PreparingRebalance");
    // Members are reported with the address they connect from, as Kafka does.
    assert!(!d.groups[0].members.is_empty());
    for m in &d.groups[0].members {
        assert_eq!(m.client_host.as_str(), "/127.0.0.1");
    }
    assert_eq!(
        c1.heartbeat("tcp", 1, &m1).await,
        ResponseError::RebalanceInProgress.code()
    );
    // A commit of the current generation is still taken while preparing.
    assert_eq!(c1.commit("tcp", 1, &m1, 10).await, 0);

    let j1 = c1.join("tcp", &m1).await;
    let (mut c2, j2) = second.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((j1.generation_id, j2.generation_id), (2, 2));
    assert_eq!(j1.leader, j1.member_id);
    assert_eq!(j1.members.len(), 2);
    let m2 = j2.member_id.as_str().to_owned();

    // The follower's SyncGroup waits until the leader's arrives.
    let follower = tokio::spawn(async move {
        let r = c2.sync("tcp", 2, &m2, &[]).await;
        (c2, m2, r)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!follower.is_finished());
    let m2_id = j2.member_id.as_str().to_owned();
    let s1 = c1
        .sync("tcp", 2, &m1, &[(&m1, b"p0"), (&m2_id, b"p1")])
        .await;
    assert_eq!(s1.assignment, Bytes::from_static(b"p0"));
    let (mut c2, m2, s2) = follower.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s2.assignment, Bytes::from_static(b"p1"));
    assert_eq!(s2.protocol_name.as_ref().map(|p| p.as_str()), Some("range"));
    assert_eq!(c2.heartbeat("tcp", 2, &m2).await, 0);
    assert_eq!(
        c2.commit("tcp", 1, &m2, 11).await,
        ResponseError::IllegalGeneration.code()
    );
    assert_eq!(c2.commit("tcp", 2, &m2, 12).await, 0);

    // Batched OffsetFetch (v8): both groups at once.
    let fetch = OffsetFetchRequest::default()
        .with_topics(Some(vec![]))
        .with_groups(vec![
            offset_fetch_request::OffsetFetchRequestGroup::default()
                .with_group_id(GroupId(st("tcp")))
                .with_topics(None),
            offset_fetch_request::OffsetFetchRequestGroup::default()
                .with_group_id(GroupId(st("elsewhere")))
                .with_topics(None),
        ]);
    let ResponseKind::OffsetFetch(f) = c3.call(8, RequestKind::OffsetFetch(fetch)).await else {
        panic!()
    };
    let offsets: Vec<i64> = f
        .groups
        .iter()
        .map(|g| g.topics[0].partitions[0].committed_offset)
        .collect();
    assert_eq!(offsets, vec![12, 5]);

    // Both leave in one LeaveGroup (v5); the group empties and can be deleted.
    let leave = LeaveGroupRequest::default()
        .with_group_id(GroupId(st("tcp")))
        .with_members(vec![
            leave_group_request::MemberIdentity::default().with_member_id(st(&m1)),
            leave_group_request::MemberIdentity::default().with_member_id(st(&m2)),
        ]);
    let ResponseKind::LeaveGroup(l) = c3.call(5, RequestKind::LeaveGroup(leave)).await else {
        panic!()
    };
    assert!(l.members.iter().all(|m| m.error_code == 0));
    let ResponseKind::DeleteGroups(d) = c3
        .call(
            2,
            RequestKind::DeleteGroups(
                DeleteGroupsRequest::default().with_groups_names(vec![GroupId(st("tcp"))]),
            ),
        )
        .await
    else {
        panic!()
    };
    assert_eq!(d.results[0].error_code, 0);
    s.stop().await.ok();
}

/// Reads `count` messages with kcat's balanced consumer in `group`; returns their values.
fn kcat_group(addr: SocketAddr, group: &str, count: usize) -> Vec<String> {
    let out = Command::new("timeout")
        .args(["60", "kcat", "-b", &addr.to_string(), "-G", group])
        .args(["-c", &count.to_string(), "-f", "%s\n", "-q"])
        .args([
            "-X",
            "auto.commit.interval.ms=100",
            "-X",
            "auto.offset.reset=earliest",
        ])
        .arg("orders")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("kcat: {e}"));
    assert!(
        out.status.success(),
        "kcat failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn produce(broker: &Broker, range: std::ops::Range<usize>) {
    let records: Vec<Record> = range
        .map(|i| {
            Record::new(
                1,
                Some(format!("k{i}").as_bytes()),
                Some(format!("v{i}").as_bytes()),
            )
        })
        .collect();
    broker
        .produce("orders", &records)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_group_consumer_resumes_from_committed_offsets_after_a_restart() {
    if !have_kcat() {
        eprintln!("kcat is not installed; skipping (scripts/test installs it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let s = start(dir.path()).await;
    s.broker()
        .create_topic(NewTopic::new("orders", 3))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    produce(s.broker(), 0..30).await;
    let addr = s.addr();
    let mut first = tokio::task::spawn_blocking(move || kcat_group(addr, "kc", 30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    first.sort();
    let mut want: Vec<String> = (0..30).map(|i| format!("v{i}")).collect();
    want.sort();
    assert_eq!(first, want);
    s.stop().await.ok();

    // Restart on the same directory: the group's commits are read back.
    let s = start(dir.path()).await;
    produce(s.broker(), 30..40).await;
    let addr = s.addr();
    let mut second = tokio::task::spawn_blocking(move || kcat_group(addr, "kc", 10))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    second.sort();
    let mut want: Vec<String> = (30..40).map(|i| format!("v{i}")).collect();
    want.sort();
    assert_eq!(second, want, "only what was produced after the commits");
    s.stop().await.ok();
}
