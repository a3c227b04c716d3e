//! Committed offsets and the disk: an offset becomes visible once durable, and a commit whose
//! write cannot be made durable leaves the previous offset in place.

use super::messages::{OffsetCommit, OffsetCommitEntry};
use super::{OFFSETS_TOPIC, partition_for};
use crate::broker::Broker;
use crate::config::BrokerConfig;
use crate::log::storage::fault::FaultyStorage;

fn commit(offset: i64) -> OffsetCommit {
    OffsetCommit {
        group_id: "billing".into(),
        generation_id: -1,
        offsets: vec![OffsetCommitEntry {
            topic: "orders".into(),
            partition: 0,
            offset,
            leader_epoch: -1,
            metadata: String::new(),
        }],
        ..OffsetCommit::default()
    }
}

fn committed(broker: &Broker) -> Option<i64> {
    broker
        .groups()
        .fetch_offsets("billing", Some(&[("orders".to_owned(), 0)]), false)
        .first()
        .and_then(|(_, _, o)| o.as_ref().map(|o| o.offset))
}

#[tokio::test]
async fn a_commit_that_cannot_be_made_durable_leaves_the_old_offset_visible() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let storage = FaultyStorage::new();
    let config = BrokerConfig {
        data_dir: dir.path().to_owned(),
        ..BrokerConfig::default()
    };
    let broker = Broker::open_with_storage(config, storage.shared())
        .await
        .unwrap_or_else(|e| panic!("open: {e}"));
    assert_eq!(broker.groups().commit_offsets(commit(5)).await, vec![0]);
    assert_eq!(committed(&broker), Some(5), "visible once durable");
    let partitions = broker
        .partition_count(OFFSETS_TOPIC)
        .unwrap_or_else(|e| panic!("{e}"));
    let group_partition = partition_for("billing", partitions);
    storage.fail_syncs_under(
        &dir.path()
            .join(format!("{OFFSETS_TOPIC}-{group_partition}")),
    );

    let codes = broker.groups().commit_offsets(commit(9)).await;
    assert_ne!(codes, vec![0], "the commit is not acknowledged");
    assert_eq!(
        committed(&broker),
        Some(5),
        "the offset that could not be made durable never became visible"
    );
}
