//! The coordinator over an [`OffsetsStore`] alone: no `Broker`, just the partition logs of
//! `__consumer_offsets` behind a test catalog.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use parking_lot::Mutex;

use super::{
    GroupConfig, GroupCoordinator, OFFSETS_TOPIC, OffsetCommit, OffsetCommitEntry, OffsetsStore,
    OffsetsTopic,
};
use crate::config::LogConfig;
use crate::error::Result;
use crate::log::Log;

/// A catalog with one topic, `__consumer_offsets`, made on first use in `dir`; every other
/// topic name but "gone" exists.
#[derive(Debug)]
struct TestCatalog {
    dir: PathBuf,
    logs: Mutex<Option<Vec<Arc<Log>>>>,
    /// The configs the topic was created with.
    created_with: Mutex<Option<BTreeMap<String, String>>>,
}

impl TestCatalog {
    fn new(dir: PathBuf) -> Arc<TestCatalog> {
        Arc::new(TestCatalog {
            dir,
            logs: Mutex::new(None),
            created_with: Mutex::new(None),
        })
    }
}

/// The store owns a `Box<dyn OffsetsTopic>`; the test keeps the catalog to look at it.
struct Shared(Arc<TestCatalog>);

impl OffsetsTopic for Shared {
    fn partitions(&self) -> Option<Vec<Arc<Log>>> {
        self.0.logs.lock().clone()
    }

    fn create(
        &self,
        partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> BoxFuture<'_, Result<Vec<Arc<Log>>>> {
        Box::pin(async move {
            let mut logs = Vec::new();
            for p in 0..partitions {
                let dir = self.0.dir.join(format!("{OFFSETS_TOPIC}-{p}"));
                let log = Arc::new(Log::open(
                    &dir,
                    OFFSETS_TOPIC,
                    p,
                    Arc::new(LogConfig::default()),
                )?);
                log.start_flusher();
                logs.push(log);
            }
            *self.0.created_with.lock() = Some(configs);
            *self.0.logs.lock() = Some(logs.clone());
            Ok(logs)
        })
    }

    fn topic_exists(&self, topic: &str) -> bool {
        topic != "gone"
    }
}

fn coordinator(catalog: &Arc<TestCatalog>) -> Arc<GroupCoordinator> {
    let config = GroupConfig {
        offsets_topic_partitions: 2,
        ..GroupConfig::default()
    };
    let store = OffsetsStore::new(Box::new(Shared(catalog.clone())), 2);
    let c = Arc::new(GroupCoordinator::new(config, store));
    c.start().unwrap_or_else(|e| panic!("start: {e}"));
    c
}

fn commit(group: &str, topic: &str, offset: i64) -> OffsetCommit {
    OffsetCommit {
        group_id: group.into(),
        generation_id: -1,
        offsets: vec![OffsetCommitEntry {
            topic: topic.into(),
            partition: 0,
            offset,
            leader_epoch: -1,
            metadata: String::new(),
        }],
        ..OffsetCommit::default()
    }
}

fn committed(c: &GroupCoordinator, group: &str, topic: &str) -> Option<i64> {
    let wanted = [(topic.to_owned(), 0)];
    c.fetch_offsets(group, Some(&wanted), false)
        .first()
        .and_then(|(_, _, o)| o.as_ref().map(|o| o.offset))
}

/// The coordinator used to reach into the whole broker for its records; it now needs only its
/// store, which makes the topic on first use, writes, and reads back what was written.
#[tokio::test]
async fn the_coordinator_commits_and_reloads_through_its_offsets_store_alone() {
    let Ok(dir) = tempfile::tempdir() else { return };
    let catalog = TestCatalog::new(dir.path().to_owned());
    let first = coordinator(&catalog);
    assert!(
        catalog.logs.lock().is_none(),
        "made on first use, not before"
    );
    assert_eq!(
        first.commit_offsets(commit("billing", "orders", 42)).await,
        [0]
    );
    assert_eq!(
        first.commit_offsets(commit("billing", "gone", 7)).await,
        [0]
    );
    assert_eq!(committed(&first, "billing", "orders"), Some(42));
    let created_with = catalog.created_with.lock().clone().unwrap_or_default();
    assert_eq!(
        created_with.get("cleanup.policy").map(String::as_str),
        Some("compact")
    );
    first.shutdown().await;

    let second = coordinator(&catalog);
    assert_eq!(committed(&second, "billing", "orders"), Some(42));
    // Offsets of a topic the catalog no longer has are dropped on load.
    assert_eq!(committed(&second, "billing", "gone"), None);
    second.shutdown().await;
}
