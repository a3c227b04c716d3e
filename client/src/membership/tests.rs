//! Group membership against the in-process broker's group coordinator.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::tests::{client, new_topic, start_with};

/// What a listener was told, in order; commits `COMMITTED` for every revoked partition.
#[derive(Debug, Default)]
struct Recorder {
    events: Vec<(&'static str, Vec<TopicPartition>)>,
    commit_errors: Vec<String>,
}

const COMMITTED: i64 = 7;

impl RebalanceListener for Recorder {
    async fn partitions_revoked(&mut self, group: &GroupMembership, partitions: &[TopicPartition]) {
        self.events.push(("revoked", partitions.to_vec()));
        let offsets: Vec<(&str, i32, i64)> = partitions
            .iter()
            .map(|tp| (tp.topic.as_str(), tp.partition, COMMITTED))
            .collect();
        match group.commit(&offsets).await {
            Ok(results) => self.commit_errors.extend(
                results
                    .into_iter()
                    .filter_map(|(t, p, r)| r.err().map(|e| format!("{t}-{p}: {e}"))),
            ),
            Err(e) => self.commit_errors.push(e.to_string()),
        }
    }

    async fn partitions_assigned(&mut self, _: &GroupMembership, partitions: &[TopicPartition]) {
        self.events.push(("assigned", partitions.to_vec()));
    }

    async fn partitions_lost(&mut self, _: &GroupMembership, partitions: &[TopicPartition]) {
        self.events.push(("lost", partitions.to_vec()));
    }
}

fn config(group: &str, topics: &[&str]) -> MembershipConfig {
    MembershipConfig {
        heartbeat_interval_ms: 100,
        session_timeout_ms: 6_000,
        rebalance_timeout_ms: 10_000,
        ..MembershipConfig::new(group, topics)
    }
}

fn partitions(topic: &str, ps: &[i32]) -> Vec<TopicPartition> {
    ps.iter().map(|p| TopicPartition::new(topic, *p)).collect()
}

/// Waits (bounded) until the coordinator asks `member` to rejoin, then rejoins.
async fn rebalance(member: &GroupMembership, listener: &mut Recorder) -> Result<()> {
    tokio::time::timeout(Duration::from_secs(20), member.rebalance_signal())
        .await
        .unwrap_or_else(|_| panic!("no rebalance was signalled"));
    assert!(member.poll(listener).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_split_the_partitions_commit_on_revocation_and_take_over_from_a_leaver()
-> Result<()> {
    let (s, _dir) = start_with(|c| c.kafka.group_initial_rebalance_delay_ms = 0).await;
    let admin = client(s.addr()).await;
    admin
        .create_topics(&[new_topic("orders", Some(4), &[])], false)
        .await?;

    let mut la = Recorder::default();
    let a = GroupMembership::join(
        Arc::new(client(s.addr()).await),
        config("g", &["orders"]),
        &mut la,
    )
    .await?;
    assert!(a.is_leader());
    assert_eq!(a.assignment(), partitions("orders", &[0, 1, 2, 3]));
    let first_generation = a.generation_id();
    assert!(!a.poll(&mut la).await?, "nothing to do while stable");

    // B's JoinGroup is answered once A has rejoined too.
    let b_client = Arc::new(client(s.addr()).await);
    let b = tokio::spawn(async move {
        let mut lb = Recorder::default();
        let b = GroupMembership::join(b_client, config("g", &["orders"]), &mut lb).await;
        b.map(|b| (b, lb))
    });
    rebalance(&a, &mut la).await?;
    let (b, mut lb) = b.await.unwrap_or_else(|e| panic!("{e}"))?;

    assert_eq!(a.generation_id(), b.generation_id());
    assert!(a.generation_id() > first_generation);
    let (mine, theirs) = (a.assignment(), b.assignment());
    assert_eq!(
        (mine.len(), theirs.len()),
        (2, 2),
        "range splits 4 partitions 2 and 2"
    );
    let all: BTreeSet<TopicPartition> = mine.iter().chain(&theirs).cloned().collect();
    assert_eq!(all.len(), 4, "every partition once");
    assert_eq!(
        la.events,
        [
            ("assigned", partitions("orders", &[0, 1, 2, 3])),
            ("revoked", partitions("orders", &[0, 1, 2, 3])),
            ("assigned", mine.clone()),
        ]
    );
    assert_eq!(lb.events, [("assigned", theirs.clone())]);

    // Commits made while revoking still counted.
    assert!(la.commit_errors.is_empty(), "{:?}", la.commit_errors);
    let committed = a.committed(&partitions("orders", &[0, 1, 2, 3])).await?;
    assert!(
        committed.iter().all(|c| c.offset == Some(COMMITTED)),
        "{committed:?}"
    );
    // And as a member of the new generation.
    let results = b.commit(&[("orders", theirs[0].partition, 11)]).await?;
    assert!(results.iter().all(|(_, _, r)| r.is_ok()), "{results:?}");

    // B leaves: A takes everything back without waiting for B's session to expire.
    b.leave(&mut lb).await?;
    assert_eq!(lb.events.last(), Some(&("revoked", theirs.clone())));
    assert!(
        b.commit(&[("orders", 0, 1)]).await.is_err(),
        "a member that left"
    );
    rebalance(&a, &mut la).await?;
    assert_eq!(a.assignment(), partitions("orders", &[0, 1, 2, 3]));
    a.leave(&mut la).await?;
    let described = admin.describe_groups(&["g"]).await?;
    let group = described[0].1.clone().unwrap_or_else(|e| panic!("{e}"));
    assert!(group.members.is_empty(), "{group:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_session_expired_reports_its_partitions_lost_and_rejoins() -> Result<()> {
    let (s, _dir) = start_with(|c| {
        c.kafka.group_initial_rebalance_delay_ms = 0;
        c.kafka.group_min_session_timeout_ms = 200;
    })
    .await;
    let admin = client(s.addr()).await;
    admin
        .create_topics(&[new_topic("t", Some(2), &[])], false)
        .await?;
    let mut listener = Recorder::default();
    let member = GroupMembership::join(
        Arc::new(client(s.addr()).await),
        MembershipConfig {
            session_timeout_ms: 500,
            heartbeat_interval_ms: 100,
            assignor: Assignor::RoundRobin,
            ..config("lost", &["t"])
        },
        &mut listener,
    )
    .await?;
    let old_member_id = member.member_id();
    // As if the process stalled: no heartbeats until the coordinator gives up on the member.
    member.stop_heartbeats();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let described = admin.describe_groups(&["lost"]).await?;
        let group = described[0].1.clone().unwrap_or_else(|e| panic!("{e}"));
        if group.members.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The commit is refused, and tells the member it must rejoin.
    let results = member.commit(&[("t", 0, 1)]).await?;
    assert!(results.iter().all(|(_, _, r)| r.is_err()), "{results:?}");
    assert!(member.rebalance_needed());
    assert!(member.poll(&mut listener).await?);
    assert_eq!(
        listener.events,
        [
            ("assigned", partitions("t", &[0, 1])),
            ("lost", partitions("t", &[0, 1])),
            ("assigned", partitions("t", &[0, 1])),
        ]
    );
    assert_ne!(member.member_id(), old_member_id, "joined as a new member");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_membership_config_that_cannot_work_is_refused_before_joining() {
    let (s, _dir) = start_with(|_| {}).await;
    let c = Arc::new(client(s.addr()).await);
    for (config, expected) in [
        (
            MembershipConfig::new("", &["t"]),
            "a consumer group needs a non-empty group id",
        ),
        (
            MembershipConfig::new("g", &[]),
            "group 'g' subscribes to no topic or to an empty topic name; name the topics to consume",
        ),
        (
            MembershipConfig {
                heartbeat_interval_ms: 45_000,
                ..MembershipConfig::new("g", &["t"])
            },
            "heartbeat_interval_ms=45000 must be above 0 and below session_timeout_ms=45000",
        ),
    ] {
        let err = GroupMembership::join(c.clone(), config, &mut ())
            .await
            .err()
            .map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some(expected));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_and_idempotent_produce_work_at_every_version() -> Result<()> {
    let (s, _dir) = start_with(|c| c.kafka.group_initial_rebalance_delay_ms = 0).await;
    let admin = client(s.addr()).await;
    admin
        .create_topics(&[new_topic("t", Some(2), &[])], false)
        .await?;
    for below in 0..=8 {
        let config = crate::ClientConfig {
            versions_below_max: below,
            ..crate::ClientConfig::default()
        };
        let c = Arc::new(KafkaClient::connect(&s.addr().to_string(), config).await?);
        let group = format!("g{below}");
        let member = GroupMembership::join(c.clone(), config_for(&group), &mut ()).await?;
        assert_eq!(member.assignment(), partitions("t", &[0, 1]), "{below}");
        let committed = member.commit(&[("t", 1, 5)]).await?;
        assert!(
            committed.iter().all(|(_, _, r)| r.is_ok()),
            "{below}: {committed:?}"
        );
        member.leave(&mut ()).await?;

        let producer =
            crate::IdempotentProducer::new(c.clone(), crate::ProducerConfig::default()).await?;
        let batch =
            quiver_common::records_to_batch(&[quiver_common::Record::new(1, None, Some(b"v"))]);
        producer.send("t", 0, &batch).await?;
    }
    Ok(())
}

fn config_for(group: &str) -> MembershipConfig {
    config(group, &["t"])
}
