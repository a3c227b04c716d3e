//! The coordinator driven through its API on a real broker in a temporary directory: join,
//! sync and heartbeat flows, rebalances when members join, leave and time out, static
//! membership, offsets, and persistence across a reopen of the data directory.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;

use super::*;
use crate::{Broker, BrokerConfig, NewTopic};

const NONE: i16 = 0;

fn code(e: ResponseError) -> i16 {
    e.code()
}

fn config(dir: &std::path::Path, initial_delay_ms: i32) -> BrokerConfig {
    let mut c = BrokerConfig {
        data_dir: dir.to_owned(),
        ..BrokerConfig::default()
    };
    c.kafka.group_initial_rebalance_delay_ms = initial_delay_ms;
    c.kafka.group_min_session_timeout_ms = 10;
    c.kafka.offsets_topic_num_partitions = 3;
    c
}

async fn open(dir: &std::path::Path) -> Broker {
    open_with_delay(dir, 0).await
}

async fn open_with_delay(dir: &std::path::Path, initial_delay_ms: i32) -> Broker {
    let b = Broker::open(config(dir, initial_delay_ms))
        .await
        .unwrap_or_else(|e| panic!("open: {e}"));
    for t in ["t1", "t2"] {
        b.create_topic(NewTopic::new(t, 2)).await.ok();
    }
    b
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"))
}

/// A consumer-protocol subscription (v0) to `topics`.
fn sub(topics: &[&str]) -> Bytes {
    let mut b = vec![0, 0];
    b.extend_from_slice(&(topics.len() as i32).to_be_bytes());
    for t in topics {
        b.extend_from_slice(&(t.len() as i16).to_be_bytes());
        b.extend_from_slice(t.as_bytes());
    }
    b.extend_from_slice(&(-1i32).to_be_bytes());
    Bytes::from(b)
}

fn req(group: &str, member: &str) -> JoinRequest {
    JoinRequest {
        group_id: group.into(),
        member_id: member.into(),
        client_id: "client".into(),
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 10_000,
        protocol_type: "consumer".into(),
        protocols: vec![("range".into(), sub(&["t1"]))],
        require_known_member_id: true,
        ..JoinRequest::default()
    }
}

/// Runs a JoinGroup in its own task (it may wait for a rebalance).
fn spawn_join(b: &Broker, r: JoinRequest) -> tokio::task::JoinHandle<JoinResponse> {
    let b = b.clone();
    tokio::spawn(async move { b.groups().join_group(r).await })
}

fn spawn_sync(
    b: &Broker,
    group: &str,
    member: &str,
    generation: i32,
    assignments: Vec<(String, Bytes)>,
) -> tokio::task::JoinHandle<SyncResponse> {
    let b = b.clone();
    let r = SyncRequest {
        group_id: group.into(),
        generation_id: generation,
        member_id: member.into(),
        assignments,
        ..SyncRequest::default()
    };
    tokio::spawn(async move { b.groups().sync_group(r).await })
}

async fn done<T>(h: tokio::task::JoinHandle<T>) -> T {
    match tokio::time::timeout(Duration::from_secs(10), h).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("task failed: {e}"),
        Err(_) => panic!("timed out"),
    }
}

/// The v4+ first round trip: MEMBER_ID_REQUIRED with an id.
async fn member_id(b: &Broker, r: &JoinRequest) -> String {
    let first = b.groups().join_group(r.clone()).await;
    assert_eq!(first.error, code(ResponseError::MemberIdRequired));
    assert!(
        first.member_id.starts_with("client-"),
        "{}",
        first.member_id
    );
    first.member_id
}

/// One member forms the group alone: join, sync with `assignment`. Returns its id.
async fn form_alone(b: &Broker, r: JoinRequest, assignment: &[u8]) -> String {
    let id = member_id(b, &r).await;
    let joined = done(spawn_join(
        b,
        JoinRequest {
            member_id: id.clone(),
            ..r.clone()
        },
    ))
    .await;
    assert_eq!(joined.error, NONE, "{joined:?}");
    assert_eq!(joined.leader, id);
    let synced = done(spawn_sync(
        b,
        &r.group_id,
        &id,
        joined.generation_id,
        vec![(id.clone(), Bytes::copy_from_slice(assignment))],
    ))
    .await;
    assert_eq!(synced.error, NONE);
    id
}

fn state(b: &Broker, group: &str) -> (GroupState, i32, Vec<String>) {
    b.groups()
        .group_summary(group)
        .unwrap_or_else(|| panic!("no group {group}"))
}

#[tokio::test]
async fn single_member_joins_syncs_and_heartbeats() {
    let dir = tempdir();
    let b = open(dir.path()).await;
    let r = req("g", "");
    let id = member_id(&b, &r).await;
    let joined = done(spawn_join(
        &b,
        JoinRequest {
            member_id: id.clone(),
            ..r
        },
    ))
    .await;
    assert_eq!(joined.error, NONE);
    assert_eq!(joined.generation_id, 1);
    assert_eq!(joined.leader, id);
    assert_eq!(joined.protocol_name.as_deref(), Some("range"));
    assert_eq!(joined.protocol_type.as_deref(), Some("consumer"));
    assert_eq!(joined.members.len(), 1);
    assert_eq!(state(&b, "g").0, GroupState::CompletingRebalance);
    // Heartbeats are fine while the leader computes the assignment.
    assert_eq!(b.groups().heartbeat("g", &id, None, 1), NONE);

    let synced = done(spawn_sync(
        &b,
        "g",
        &id,
        1,
        vec![(id.clone(), Bytes::from_static(b"A"))],
    ))
    .await;
    assert_eq!(synced.error, NONE);
    assert_eq!(synced.assignment, Bytes::from_static(b"A"));
    assert_eq!(state(&b, "g").0, GroupState::Stable);

    assert_eq!(b.groups().heartbeat("g", &id, None, 1), NONE);
    assert_eq!(
        b.groups().heartbeat("g", &id, None, 7),
        code(ResponseError::IllegalGeneration)
    );
    assert_eq!(
        b.groups().heartbeat("g", "nobody", None, 1),
        code(ResponseError::UnknownMemberId)
    );
    assert_eq!(
        b.groups().heartbeat("unknown-group", &id, None, 1),
        code(ResponseError::UnknownMemberId)
    );
    // A SyncGroup of the stable group hands out the assignment again.
    let again = done(spawn_sync(&b, "g", &id, 1, vec![])).await;
    assert_eq!(again.assignment, Bytes::from_static(b"A"));
    let stale = done(spawn_sync(&b, "g", &id, 0, vec![])).await;
    assert_eq!(stale.error, code(ResponseError::IllegalGeneration));
}

#[tokio::test]
async fn bad_joins_get_kafka_errors() {
    let dir = tempdir();
    let b = open(dir.path()).await;
    let too_short = JoinRequest {
        session_timeout_ms: 1,
        ..req("g", "")
    };
    assert_eq!(
        b.groups().join_group(too_short).await.error,
        code(ResponseError::InvalidSessionTimeout)
    );
    let too_long = JoinRequest {
        session_timeout_ms: i32::MAX,
        ..req("g", "")
    };
    assert_eq!(
        b.groups().join_group(too_long).await.error,
        code(ResponseError::InvalidSessionTimeout)
    );
    assert_eq!(
        b.groups().join_group(req("", "")).await.error,
        code(ResponseError::InvalidGroupId)
    );
    // A member id the coordinator never gave out, for a group it does not know.
    assert_eq!(
        b.groups().join_group(req("g", "made-up")).await.error,
        code(ResponseError::UnknownMemberId)
    );
    let no_protocols = JoinRequest {
        protocols: vec![],
        ..req("g", "")
    };
    assert_eq!(
        b.groups().join_group(no_protocols).await.error,
        code(ResponseError::InconsistentGroupProtocol)
    );
    let huge = JoinRequest {
        protocols: vec![(
            "range".into(),
            Bytes::from(vec![0u8; MAX_MEMBER_METADATA_BYTES + 1]),
        )],
        ..req("g", "")
    };
    assert_eq!(
        b.groups().join_group(huge).await.error,
        code(ResponseError::PolicyViolation)
    );

    form_alone(&b, req("g", ""), b"x").await;
    // Another protocol type, or no protocol in common with the group.
    let connect = JoinRequest {
        protocol_type: "connect".into(),
        ..req("g", "")
    };
    assert_eq!(
        b.groups().join_group(connect).await.error,
        code(ResponseError::InconsistentGroupProtocol)
    );
    let sticky = JoinRequest {
        protocols: vec![("sticky".into(), sub(&["t1"]))],
        ..req("g", "")
    };
    assert_eq!(
        b.groups().join_group(sticky).await.error,
        code(ResponseError::InconsistentGroupProtocol)
    );
}

/// Two members stable in generation 2, A the leader with assignment "a", B with "b".
async fn two_members(b: &Broker, group: &str) -> (String, String) {
    let a = form_alone(b, req(group, ""), b"a-alone").await;
    let r = req(group, "");
    let b_id = member_id(b, &r).await;
    let b_join = spawn_join(
        b,
        JoinRequest {
            member_id: b_id.clone(),
            ..r
        },
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        b.groups().heartbeat(group, &a, None, 1),
        code(ResponseError::RebalanceInProgress)
    );
    let a_join = spawn_join(b, req(group, &a));
    let (a_joined, b_joined) = (done(a_join).await, done(b_join).await);
    assert_eq!((a_joined.error, b_joined.error), (NONE, NONE));
    assert_eq!((a_joined.generation_id, b_joined.generation_id), (2, 2));
    assert_eq!(a_joined.leader, a);
    assert_eq!(b_joined.leader, a);
    assert_eq!(a_joined.members.len(), 2, "the leader sees everyone");
    assert!(b_joined.members.is_empty(), "followers see nobody");

    // The follower's SyncGroup waits for the leader's.
    let b_sync = spawn_sync(b, group, &b_id, 2, vec![]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!b_sync.is_finished(), "a follower must wait for the leader");
    let a_sync = spawn_sync(
        b,
        group,
        &a,
        2,
        vec![
            (a.clone(), Bytes::from_static(b"a")),
            (b_id.clone(), Bytes::from_static(b"b")),
        ],
    );
    assert_eq!(done(a_sync).await.assignment, Bytes::from_static(b"a"));
    assert_eq!(done(b_sync).await.assignment, Bytes::from_static(b"b"));
    assert_eq!(state(b, group).0, GroupState::Stable);
    (a, b_id)
}

#[tokio::test]
async fn a_second_member_rebalances_the_group() {
    let dir = tempdir();
    let b = open(dir.path()).await;
    let (a, b_id) = two_members(&b, "g").await;
    assert_eq!(b.groups().heartbeat("g", &a, None, 2), NONE);
    assert_eq!(b.groups().heartbeat("g", &b_id, None, 2), NONE);
    let d = b.groups().describe_group("g");
    assert_eq!(d.state, GroupState::Stable);
    assert_eq!(d.protocol, "range");
    assert_eq!(d.members.len(), 2);
    assert!(
        d.members
            .iter()
            .any(|m| m.assignment == Bytes::from_static(b"b"))
    );
}

#[tokio::test]
async fn a_leaving_member_rebalances_the_rest() {
    let dir = tempdir();
    let b = open(dir.path()).await;
    let (a, b_id) = two_members(&b, "g").await;
    let left = b.groups().leave_group(
        "g",
        &[LeavingMember {
            member_id: b_id.clone(),
            ..LeavingMember::default()
        }],
    );
    assert_eq!(left.members, vec![NONE]);
    assert_eq!(
        b.groups().heartbeat("g", &a, None, 2),
        code(ResponseError::RebalanceInProgress)
    );
    let rejoined = done(spawn_join(&b, req("g", &a))).await;
    assert_eq!(rejoined.generation_id, 3);
    assert_eq!(rejoined.members.len(), 1);
    // Leaving twice: it is not a member any more.
    let again = b.groups().leave_group(
        "g",
        &[LeavingMember {
            member_id: b_id,
            ..LeavingMember::default()
        }],
    );
    assert_eq!(again.members, vec![code(ResponseError::UnknownMemberId)]);
    // The last member leaving empties the group.
    b.groups().leave_group(
        "g",
        &[LeavingMember {
            member_id: a,
            ..LeavingMember::default()
        }],
    );
    assert_eq!(state(&b, "g").0, GroupState::Empty);
}

#[tokio::test]
async fn a_silent_member_times_out_and_the_group_rebalances() {
    let dir = tempdir();
    let b = open(dir.path()).await;
    let a = form_alone(&b, req("g", ""), b"a").await;
    let short = JoinRequest {
        session_timeout_ms: 300,
        ..req("g", "")
    };
    let b_id = member_id(&b, &short).await;
    let b_join = spawn_join(
        &b,
        JoinRequest {
            member_id: b_id.clone(),
            ..short
        },
    );
    let a_join = spawn_join(&b, req("g", &a));
    let gen2 = done(a_join).await;
    done(b_join).await;
    assert_eq!(gen2.generation_id, 2);
    let synced = spawn_sync(&b, "g", &a, 2, vec![]);
    let b_sync = spawn_sync(&b, "g", &b_id, 2, vec![]);
    done(synced).await;
    done(b_sync).await;
    // A heartbeats; B says nothing for longer than its session timeout.
    let mut rebalancing = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if b.groups().heartbeat("g", &a, None, 2) == code(ResponseError::RebalanceInProgress) {
            rebalancing = true;
            break;
        }
    }
    assert!(rebalancing, "B's session timeout should start a rebalance");
    assert!(!state(&b, "g").2.contains(&b_id), "B was removed");
    let gen3 = done(spawn_join(&b, req("g", &a))).await;
    assert_eq!(gen3.generation_id, 3);
    assert_eq!(gen3.members.len(), 1);
    assert_eq!(
        b.groups().heartbeat("g", &b_id, None, 2),
        code(ResponseError::UnknownMemberId)
    );
}

#[tokio::test]
async fn members_that_do_not_rejoin_are_dropped_after_the_rebalance_timeout() {
    let dir = tempdir();
    let b = open(dir.path()).await;
    let quick = |member: &str| JoinRequest {
        rebalance_timeout_ms: 400,
        ..req("g", member)
    };
    let a = form_alone(&b, quick(""), b"a").await;
    let b_id = member_id(&b, &quick("")).await;
    let b_join = spawn_join(&b, quick(&b_id));
    done(spawn_join(&b, quick(&a))).await;
    done(b_join).await;
    done(spawn_sync(&b, "g", &a, 2, vec![])).await;
    done(spawn_sync(&b, "g", &b_id, 2, vec![])).await;

    // C joins; A rejoins; B never does (though its session is alive).
    let c_id = member_id(&b, &quick("")).await;
    let started = std::time::Instant::now();
    let c_join = spawn_join(&b, quick(&c_id));
    let a_join = spawn_join(&b, quick(&a));
    let (a3, c3) = (done(a_join).await, done(c_join).await);
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "it waited for B"
    );
    assert_eq!((a3.generation_id, c3.generation_id), (3, 3));
    let members = state(&b, "g").2;
    assert_eq!(members.len(), 2);
    assert!(!members.contains(&b_id));
}

#[tokio::test]
async fn members_that_do_not_sync_are_dropped() {
    let dir = tempdir();
    let b = open(dir.path()).await;
    let quick = |member: &str| JoinRequest {
        rebalance_timeout_ms: 300,
        ..req("g", member)
    };
    let a = form_alone(&b, quick(""), b"a").await;
    let b_id = member_id(&b, &quick("")).await;
    let b_join = spawn_join(&b, quick(&b_id));
    done(spawn_join(&b, quick(&a))).await;
    done(b_join).await;
    // Only B syncs; the leader never does, so nobody gets an assignment.
    let b_sync = spawn_sync(&b, "g", &b_id, 2, vec![]);
    let answer = done(b_sync).await;
    assert_eq!(answer.error, code(ResponseError::RebalanceInProgress));
    assert!(!state(&b, "g").2.contains(&a), "the leader was removed");
}

#[tokio::test]
async fn repeated_rebalances_like_cooperative_rebalancing() {
    let dir = tempdir();
    let b = open(dir.path()).await;
    let (a, b_id) = two_members(&b, "g").await;
    // Cooperative members rejoin right after a rebalance that revoked partitions; the leader
    // rejoining a stable group starts a new rebalance each time.
    for generation in 3..6 {
        let a_join = spawn_join(&b, req("g", &a));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let b_join = spawn_join(&b, req("g", &b_id));
        let (ja, jb) = (done(a_join).await, done(b_join).await);
        assert_eq!(
            (ja.generation_id, jb.generation_id),
            (generation, generation)
        );
        let bs = spawn_sync(&b, "g", &b_id, generation, vec![]);
        let as_ = spawn_sync(
            &b,
            "g",
            &a,
            generation,
            vec![(b_id.clone(), Bytes::from(format!("gen{generation}")))],
        );
        done(as_).await;
        assert_eq!(
            done(bs).await.assignment,
            Bytes::from(format!("gen{generation}"))
        );
    }
    // A follower rejoining with unchanged metadata in a stable group gets the generation back
    // without a rebalance.
    let same = done(spawn_join(&b, req("g", &b_id))).await;
    assert_eq!(same.generation_id, 5);
    assert_eq!(state(&b, "g").0, GroupState::Stable);
}

#[tokio::test]
async fn the_protocol_most_members_prefer_among_common_ones_wins() {
    let dir = tempdir();
    let b = open(dir.path()).await;
    let with = |member: &str, protocols: &[&str]| JoinRequest {
        protocols: protocols
            .iter()
            .map(|p| ((*p).to_owned(), sub(&["t1"])))
            .collect(),
        require_known_member_id: false,
        ..req("votes", member)
    };
    // Three new members in one rebalance (v3-style joins, no MEMBER_ID_REQUIRED).
    let first = spawn_join(&b, with("", &["range", "roundrobin", "sticky"]));
    tokio::time::sleep(Duration::from_millis(30)).await;
    let r1 = done(first).await;
    let (a, gen1) = (r1.member_id.clone(), r1.generation_id);
    done(spawn_sync(&b, "votes", &a, gen1, vec![])).await;
    let j2 = spawn_join(&b, with("", &["roundrobin", "range"]));
    let j3 = spawn_join(&b, with("", &["roundrobin", "range"]));
    tokio::time::sleep(Duration::from_millis(30)).await;
    let ja = spawn_join(&b, with(&a, &["range", "roundrobin", "sticky"]));
    let (ra, r2, r3) = (done(ja).await, done(j2).await, done(j3).await);
    assert_eq!(ra.protocol_name.as_deref(), Some("roundrobin"));
    assert_eq!(r2.protocol_name, ra.protocol_name);
    assert_eq!(r3.generation_id, ra.generation_id);
}

#[tokio::test]
async fn static_members_are_replaced_without_a_rebalance_and_old_ids_fenced() {
    let dir = tempdir();
    let b = open(dir.path()).await;
    let stat = |member: &str| JoinRequest {
        group_instance_id: Some("instance-1".into()),
        ..req("s", member)
    };
    // Static members skip MEMBER_ID_REQUIRED.
    let first = done(spawn_join(&b, stat(""))).await;
    assert_eq!(first.error, NONE);
    assert!(first.member_id.starts_with("instance-1-"));
    let old = first.member_id.clone();
    done(spawn_sync(
        &b,
        "s",
        &old,
        1,
        vec![(old.clone(), Bytes::from_static(b"mine"))],
    ))
    .await;

    // The same instance restarts: new member id, same generation, old assignment.
    let back = done(spawn_join(&b, stat(""))).await;
    assert_eq!(back.error, NONE);
    assert_ne!(back.member_id, old);
    assert_eq!(back.generation_id, 1, "no rebalance");
    assert_eq!(back.leader, old, "old clients are told the old leader id");
    let synced = done(spawn_sync(&b, "s", &back.member_id, 1, vec![])).await;
    assert_eq!(synced.assignment, Bytes::from_static(b"mine"));
    assert_eq!(state(&b, "s").0, GroupState::Stable);

    // The old incarnation is fenced.
    assert_eq!(
        b.groups().heartbeat("s", &old, Some("instance-1"), 1),
        code(ResponseError::FencedInstanceId)
    );
    assert_eq!(
        done(spawn_join(&b, stat(&old))).await.error,
        code(ResponseError::FencedInstanceId)
    );
    assert_eq!(
        b.groups()
            .heartbeat("s", &back.member_id, Some("instance-1"), 1),
        NONE
    );
    // JoinGroup v9 tells a returning static leader to skip the assignment.
    let v9 = done(spawn_join(
        &b,
        JoinRequest {
            supports_skip_assignment: true,
            ..stat("")
        },
    ))
    .await;
    assert!(v9.skip_assignment);
    assert_eq!(v9.leader, v9.member_id);
    assert_eq!(v9.members.len(), 1);

    // An admin removes the static member by its instance id.
    let left = b.groups().leave_group(
        "s",
        &[LeavingMember {
            member_id: String::new(),
            group_instance_id: Some("instance-1".into()),
            reason: Some("scaling down".into()),
        }],
    );
    assert_eq!(left.members, vec![NONE]);
    assert!(state(&b, "s").2.is_empty());
}

#[tokio::test]
async fn the_initial_delay_gathers_members_and_other_groups_do_not_wait() {
    let dir = tempdir();
    let b = open_with_delay(dir.path(), 400).await;
    let r = JoinRequest {
        require_known_member_id: false,
        ..req("slow", "")
    };
    let started = std::time::Instant::now();
    let first = spawn_join(&b, r.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = spawn_join(&b, r);

    // Meanwhile another group commits and fetches offsets at once.
    let quick = std::time::Instant::now();
    let codes = b
        .groups()
        .commit_offsets(OffsetCommit {
            group_id: "other".into(),
            generation_id: -1,
            offsets: vec![OffsetCommitEntry {
                topic: "t1".into(),
                partition: 0,
                offset: 5,
                leader_epoch: -1,
                metadata: String::new(),
            }],
            ..OffsetCommit::default()
        })
        .await;
    assert_eq!(codes, vec![NONE]);
    assert!(quick.elapsed() < Duration::from_millis(300));
    assert_eq!(state(&b, "slow").0, GroupState::PreparingRebalance);

    let (r1, r2) = (done(first).await, done(second).await);
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!((r1.generation_id, r2.generation_id), (1, 1));
    assert_eq!(
        r1.members.len() + r2.members.len(),
        2,
        "one leader sees both"
    );
}

fn entry(topic: &str, partition: i32, offset: i64) -> OffsetCommitEntry {
    OffsetCommitEntry {
        topic: topic.into(),
        partition,
        offset,
        leader_epoch: 3,
        metadata: format!("m{offset}"),
    }
}

#[tokio::test]
async fn offsets_commit_and_fetch_with_member_checks() {
    let dir = tempdir();
    let b = open(dir.path()).await;
    let g = b.groups();
    // A group outside group management commits with generation -1.
    let simple = OffsetCommit {
        group_id: "simple".into(),
        generation_id: -1,
        offsets: vec![entry("t1", 0, 10), entry("t1", 1, 11)],
        ..OffsetCommit::default()
    };
    assert_eq!(g.commit_offsets(simple).await, vec![NONE, NONE]);
    let fetched = g.fetch_offsets("simple", Some(&[("t1".into(), 1), ("t2".into(), 0)]), false);
    assert_eq!(fetched[0].2.as_ref().map(|o| o.offset), Some(11));
    assert_eq!(
        fetched[0].2.as_ref().map(|o| o.metadata.as_str()),
        Some("m11")
    );
    assert_eq!(fetched[0].2.as_ref().map(|o| o.leader_epoch), Some(3));
    assert_eq!(fetched[1].2, None);
    assert_eq!(g.fetch_offsets("simple", None, true).len(), 2);
    assert!(g.fetch_offsets("nobody", None, false).is_empty());
    assert_eq!(
        g.fetch_offsets("nobody", Some(&[("t1".into(), 0)]), false)[0].2,
        None
    );

    // A generation of a group that does not exist.
    let stale = OffsetCommit {
        group_id: "gone".into(),
        generation_id: 4,
        member_id: "m".into(),
        offsets: vec![entry("t1", 0, 1)],
        ..OffsetCommit::default()
    };
    assert_eq!(
        g.commit_offsets(stale).await,
        vec![code(ResponseError::IllegalGeneration)]
    );

    let (a, _) = two_members(&b, "members").await;
    let commit = |generation: i32, member: &str| OffsetCommit {
        group_id: "members".into(),
        generation_id: generation,
        member_id: member.into(),
        offsets: vec![entry("t1", 0, 100)],
        ..OffsetCommit::default()
    };
    assert_eq!(g.commit_offsets(commit(2, &a)).await, vec![NONE]);
    assert_eq!(
        g.commit_offsets(commit(1, &a)).await,
        vec![code(ResponseError::IllegalGeneration)]
    );
    assert_eq!(
        g.commit_offsets(commit(2, "stranger")).await,
        vec![code(ResponseError::UnknownMemberId)]
    );
    // Only members may commit while the group has members.
    assert_eq!(
        g.commit_offsets(commit(-1, "")).await,
        vec![code(ResponseError::UnknownMemberId)]
    );
    let fetched = g.fetch_offsets("members", Some(&[("t1".into(), 0)]), false);
    assert_eq!(fetched[0].2.as_ref().map(|o| o.offset), Some(100));
}

#[tokio::test]
async fn transactional_commits_check_members_only_when_named_and_stay_pending() {
    let dir = tempdir();
    let b = open(dir.path()).await;
    let g = b.groups();
    let (a, _) = two_members(&b, "members").await;
    let commit = |generation: i32, member: &str| OffsetCommit {
        group_id: "members".into(),
        generation_id: generation,
        member_id: member.into(),
        offsets: vec![entry("t1", 0, 100)],
        ..OffsetCommit::default()
    };
    // KIP-447: a producer outside the group may commit for it (unlike a plain OffsetCommit)...
    assert_eq!(
        g.txn_commit_offsets(commit(-1, ""), 7, 0, |write| {
            write();
            Ok(())
        })
        .await,
        vec![NONE]
    );
    // ...but a named member and generation are checked.
    assert_eq!(
        g.txn_commit_offsets(commit(1, &a), 7, 0, |write| {
            write();
            Ok(())
        })
        .await,
        vec![code(ResponseError::IllegalGeneration)]
    );
    assert_eq!(
        g.txn_commit_offsets(commit(2, "stranger"), 7, 0, |write| {
            write();
            Ok(())
        })
        .await,
        vec![code(ResponseError::UnknownMemberId)]
    );
    assert_eq!(
        g.txn_commit_offsets(commit(2, &a), 7, 0, |write| {
            write();
            Ok(())
        })
        .await,
        vec![NONE]
    );
    let asked = [("t1".to_owned(), 0)];
    assert_eq!(g.fetch_offsets("members", Some(&asked), false)[0].2, None);
    assert_eq!(
        g.fetch_offsets_checked("members", Some(&asked), true)[0].2,
        Err(ResponseError::UnstableOffsetCommit)
    );
    // A marker for another producer, or on another partition, changes nothing.
    let p = super::partition_for("members", 3);
    g.complete_transaction(p, 8, true);
    g.complete_transaction((p + 1) % 3, 7, true);
    assert_eq!(g.fetch_offsets("members", Some(&asked), false)[0].2, None);
    g.complete_transaction(p, 7, true);
    let fetched = g.fetch_offsets_checked("members", Some(&asked), true);
    assert_eq!(
        fetched[0].2.as_ref().map(|o| o.as_ref().map(|o| o.offset)),
        Ok(Some(100))
    );
}

#[tokio::test]
async fn groups_and_offsets_survive_a_restart() {
    let dir = tempdir();
    let (a, b_id) = {
        let b = open(dir.path()).await;
        let (a, b_id) = two_members(&b, "g").await;
        let codes = b
            .groups()
            .commit_offsets(OffsetCommit {
                group_id: "g".into(),
                generation_id: 2,
                member_id: a.clone(),
                offsets: vec![entry("t1", 0, 42), entry("t1", 1, 43)],
                ..OffsetCommit::default()
            })
            .await;
        assert_eq!(codes, vec![NONE, NONE]);
        let simple = OffsetCommit {
            group_id: "simple".into(),
            generation_id: -1,
            offsets: vec![entry("t2", 0, 7)],
            ..OffsetCommit::default()
        };
        b.groups().commit_offsets(simple.clone()).await;
        // A newer commit of the same partition wins.
        b.groups()
            .commit_offsets(OffsetCommit {
                offsets: vec![entry("t2", 0, 8)],
                ..simple
            })
            .await;
        b.shutdown().await.ok();
        (a, b_id)
    };
    let b = open(dir.path()).await;
    let fetched = b
        .groups()
        .fetch_offsets("g", Some(&[("t1".into(), 0), ("t1".into(), 1)]), false);
    assert_eq!(fetched[0].2.as_ref().map(|o| o.offset), Some(42));
    assert_eq!(fetched[1].2.as_ref().map(|o| o.offset), Some(43));
    assert_eq!(
        fetched[1].2.as_ref().map(|o| o.metadata.as_str()),
        Some("m43")
    );
    let simple = b.groups().fetch_offsets("simple", None, false);
    assert_eq!(simple.len(), 1);
    assert_eq!(simple[0].2.as_ref().map(|o| o.offset), Some(8));

    // The group comes back stable in its generation: its members just keep heartbeating.
    let (st, generation, members) = state(&b, "g");
    assert_eq!((st, generation), (GroupState::Stable, 2));
    assert_eq!(members.len(), 2);
    assert_eq!(b.groups().heartbeat("g", &a, None, 2), NONE);
    let synced = done(spawn_sync(&b, "g", &b_id, 2, vec![])).await;
    assert_eq!(synced.assignment, Bytes::from_static(b"b"));

    // Deleting survives a restart too.
    b.groups().leave_group(
        "g",
        &[
            LeavingMember {
                member_id: a,
                ..LeavingMember::default()
            },
            LeavingMember {
                member_id: b_id,
                ..LeavingMember::default()
            },
        ],
    );
    // Everyone left during the rebalance: it completes empty.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(state(&b, "g").0, GroupState::Empty);
    assert_eq!(b.groups().delete_groups(&["g".into()]).await, vec![NONE]);
    b.shutdown().await.ok();
    drop(b);
    let b = open(dir.path()).await;
    assert!(b.groups().group_summary("g").is_none());
    assert!(b.groups().fetch_offsets("g", None, false).is_empty());
    assert_eq!(b.groups().fetch_offsets("simple", None, false).len(), 1);
}

#[tokio::test]
async fn deleting_groups_and_offsets() {
    let dir = tempdir();
    let b = open(dir.path()).await;
    let g = b.groups();
    two_members(&b, "busy").await;
    g.commit_offsets(OffsetCommit {
        group_id: "idle".into(),
        generation_id: -1,
        offsets: vec![entry("t1", 0, 1), entry("t2", 0, 2)],
        ..OffsetCommit::default()
    })
    .await;
    assert_eq!(
        g.delete_groups(&["busy".into(), "nope".into()]).await,
        vec![
            code(ResponseError::NonEmptyGroup),
            code(ResponseError::GroupIdNotFound)
        ]
    );

    // The busy group consumes t1: its offsets stay; t2's go.
    g.commit_offsets(OffsetCommit {
        group_id: "busy".into(),
        generation_id: 2,
        member_id: state(&b, "busy").2[0].clone(),
        offsets: vec![entry("t1", 0, 5), entry("t2", 0, 6)],
        ..OffsetCommit::default()
    })
    .await;
    assert_eq!(
        g.delete_offsets("busy", &[("t1".into(), 0), ("t2".into(), 0)])
            .await,
        Ok(vec![code(ResponseError::GroupSubscribedToTopic), NONE])
    );
    assert_eq!(g.fetch_offsets("busy", None, false).len(), 1);
    assert_eq!(
        g.delete_offsets("nope", &[("t1".into(), 0)]).await,
        Err(code(ResponseError::GroupIdNotFound))
    );

    // An empty group loses offsets one by one, and goes when the last one does.
    assert_eq!(
        g.delete_offsets("idle", &[("t1".into(), 0)]).await,
        Ok(vec![NONE])
    );
    assert!(g.group_summary("idle").is_some());
    assert_eq!(
        g.delete_offsets("idle", &[("t2".into(), 0)]).await,
        Ok(vec![NONE])
    );
    assert!(g.group_summary("idle").is_none());

    g.commit_offsets(OffsetCommit {
        group_id: "idle".into(),
        generation_id: -1,
        offsets: vec![entry("t1", 0, 1)],
        ..OffsetCommit::default()
    })
    .await;
    assert_eq!(g.delete_groups(&["idle".into()]).await, vec![NONE]);
    assert!(g.fetch_offsets("idle", None, false).is_empty());
    let listed: Vec<String> = g
        .list_groups(&[], &[])
        .into_iter()
        .map(|l| l.group_id)
        .collect();
    assert_eq!(listed, vec!["busy".to_owned()]);
    assert_eq!(g.list_groups(&["stable".into()], &[]).len(), 1);
    assert_eq!(g.list_groups(&["Empty".into()], &[]).len(), 0);
    assert_eq!(g.list_groups(&[], &["consumer".into()]).len(), 0);
    assert_eq!(g.describe_group("nope").state, GroupState::Dead);
}

#[tokio::test]
async fn offsets_expire_like_kafka() {
    let dir = tempdir();
    let b = open(dir.path()).await;
    let g = b.groups();
    let retention = g.config().offsets_retention_ms;
    g.commit_offsets(OffsetCommit {
        group_id: "simple".into(),
        generation_id: -1,
        offsets: vec![entry("t1", 0, 1)],
        ..OffsetCommit::default()
    })
    .await;
    // An explicit retention (OffsetCommit v2-v4) expires on its own clock.
    g.commit_offsets(OffsetCommit {
        group_id: "short".into(),
        generation_id: -1,
        retention_ms: Some(1_000),
        offsets: vec![entry("t1", 0, 1)],
        ..OffsetCommit::default()
    })
    .await;
    let (a, _) = two_members(&b, "live").await;
    g.commit_offsets(OffsetCommit {
        group_id: "live".into(),
        generation_id: 2,
        member_id: a,
        offsets: vec![entry("t1", 0, 1), entry("t2", 0, 1)],
        ..OffsetCommit::default()
    })
    .await;

    let now = crate::log::now_ms();
    assert_eq!(g.expire_offsets_at(now), 0);
    assert_eq!(g.expire_offsets_at(now + 2_000), 1);
    assert!(
        g.group_summary("short").is_none(),
        "an empty group with no offsets goes"
    );
    // After the retention: the simple group's offset, and the live group's offset of a topic
    // nobody subscribes to.
    assert_eq!(g.expire_offsets_at(now + retention + 1), 2);
    assert!(g.group_summary("simple").is_none());
    let live = g.fetch_offsets("live", None, false);
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].0, "t1");
    b.shutdown().await.ok();
    drop(b);
    let b = open(dir.path()).await;
    assert!(
        b.groups().group_summary("simple").is_none(),
        "tombstones were written"
    );
    assert_eq!(b.groups().fetch_offsets("live", None, false).len(), 1);
}

#[test]
fn groups_land_where_kafka_puts_them() {
    // Java: "hello".hashCode() == 99162322; abs % 50 == 22.
    assert_eq!(super::java_string_hash("hello"), 99_162_322);
    assert_eq!(partition_for("hello", 50), 22);
    // Negative hashes take the absolute value, like Kafka's Utils.abs (a bit mask would put
    // "my-group", hash -1906497762, on partition 36 instead of Kafka's 12).
    assert_eq!(super::java_string_hash("my-group"), -1_906_497_762);
    assert_eq!(partition_for("my-group", 50), 12);
    assert!(super::java_string_hash("polygenelubricants") < 0);
    assert!((0..50).contains(&partition_for("polygenelubricants", 50)));
    assert_eq!(partition_for("", 50), 0);
}

#[tokio::test]
async fn offsets_of_a_deleted_topic_are_dropped_from_every_group_and_stay_dropped() {
    let dir = tempdir();
    {
        let b = open(dir.path()).await;
        let g = b.groups();
        // "both" commits to two topics; "only-t2" only to the topic about to go.
        let both = OffsetCommit {
            group_id: "both".into(),
            generation_id: -1,
            offsets: vec![entry("t1", 0, 5), entry("t2", 0, 6), entry("t2", 1, 7)],
            ..OffsetCommit::default()
        };
        assert_eq!(g.commit_offsets(both).await, vec![NONE; 3]);
        let only = OffsetCommit {
            group_id: "only-t2".into(),
            generation_id: -1,
            offsets: vec![entry("t2", 1, 9)],
            ..OffsetCommit::default()
        };
        assert_eq!(g.commit_offsets(only).await, vec![NONE]);
        // A live member subscribed to the topic does not keep its offsets either (as in Kafka).
        let a = form_alone(&b, req("live", ""), b"a").await;
        let live = OffsetCommit {
            group_id: "live".into(),
            generation_id: 1,
            member_id: a,
            offsets: vec![entry("t2", 0, 3)],
            ..OffsetCommit::default()
        };
        assert_eq!(g.commit_offsets(live).await, vec![NONE]);

        b.delete_topic("t2").await.unwrap_or_else(|e| panic!("{e}"));
        let left = |group: &str| -> Vec<(String, i32)> {
            g.fetch_offsets(group, None, false)
                .into_iter()
                .map(|(t, p, _)| (t, p))
                .collect()
        };
        assert_eq!(left("both"), [("t1".to_owned(), 0)]);
        assert!(left("only-t2").is_empty());
        assert!(
            g.group_summary("only-t2").is_none(),
            "an empty group left with no offsets is removed"
        );
        assert!(left("live").is_empty());
        assert_eq!(state(&b, "live").0, GroupState::Stable, "members stay");

        // A topic created again under the name starts with no committed offsets.
        b.create_topic(NewTopic::new("t2", 2)).await.ok();
        let fetched = g.fetch_offsets("both", Some(&[("t2".into(), 0)]), false);
        assert_eq!(fetched[0].2, None);
        b.shutdown().await.ok();
    }
    // The tombstones are in __consumer_offsets: a restart does not bring the offsets back.
    let b = open(dir.path()).await;
    assert_eq!(b.groups().fetch_offsets("both", None, false).len(), 1);
    assert!(b.groups().fetch_offsets("only-t2", None, false).is_empty());
    assert!(b.groups().fetch_offsets("live", None, false).is_empty());
}

#[tokio::test]
async fn offsets_of_a_topic_deleted_before_its_tombstones_were_written_are_dropped_on_load() {
    let dir = tempdir();
    {
        let b = open(dir.path()).await;
        let commit = OffsetCommit {
            group_id: "g".into(),
            generation_id: -1,
            offsets: vec![entry("t1", 0, 5), entry("t2", 0, 6)],
            ..OffsetCommit::default()
        };
        assert_eq!(b.groups().commit_offsets(commit).await, vec![NONE; 2]);
        b.shutdown().await.ok();
    }
    // Remove t2 from the catalog behind the broker's back, as a crash right after the catalog
    // was written (and before the tombstones) would leave it.
    let catalog = dir.path().join("topics.json");
    let text = std::fs::read_to_string(&catalog).unwrap_or_else(|e| panic!("{e}"));
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    if let Some(topics) = json["topics"].as_array_mut() {
        topics.retain(|t| t["name"] != "t2");
    }
    std::fs::write(&catalog, json.to_string()).unwrap_or_else(|e| panic!("{e}"));
    {
        let b = Broker::open(config(dir.path(), 0))
            .await
            .unwrap_or_else(|e| panic!("open: {e}"));
        let left = b.groups().fetch_offsets("g", None, false);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, "t1");
        b.shutdown().await.ok();
    }
    // Created again, t2 has no offset from before.
    let b = open(dir.path()).await;
    let fetched = b
        .groups()
        .fetch_offsets("g", Some(&[("t2".into(), 0)]), false);
    assert_eq!(fetched[0].2, None);
}

#[tokio::test]
async fn group_timer_schedules_only_groups_with_deadlines() {
    let dir = tempdir();
    let b = open(dir.path()).await;
    let g = b.groups();
    // Many groups with committed offsets and no members have nothing to time out.
    for i in 0..200 {
        let commit = OffsetCommit {
            group_id: format!("idle-{i}"),
            generation_id: -1,
            offsets: vec![entry("t1", 0, i)],
            ..OffsetCommit::default()
        };
        assert_eq!(g.commit_offsets(commit).await, vec![NONE]);
    }
    assert_eq!(g.scheduled_groups(), 0);
    // One group with a member has a session deadline, and it still times out.
    let short = JoinRequest {
        session_timeout_ms: 200,
        ..req("live", "")
    };
    let a = form_alone(&b, short, b"a").await;
    assert_eq!(g.scheduled_groups(), 1);
    let mut gone = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if state(&b, "live").0 == GroupState::Empty {
            gone = true;
            break;
        }
    }
    assert!(gone, "the silent member's session timed out");
    assert_eq!(
        g.heartbeat("live", &a, None, 1),
        code(ResponseError::UnknownMemberId)
    );
    assert_eq!(g.scheduled_groups(), 0);
}
