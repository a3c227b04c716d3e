//! What the connector test files share: an in-process broker, and a connector running in a
//! task of its own that a test stops, kills or waits for.

#![allow(dead_code)] // Each test file uses some of these.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quiver_broker::{Broker, BrokerConfig};
use quiver_connectors::{Connector, ConnectorConfig, Status};
use quiver_engine::checkpoint::Cluster;
use tokio::sync::watch;

pub async fn broker(dir: &Path) -> Broker {
    Broker::open(BrokerConfig {
        data_dir: dir.to_owned(),
        ..BrokerConfig::default()
    })
    .await
    .unwrap()
}

/// A connector from a `.properties` text, checked.
pub fn connector(text: &str) -> Arc<Connector> {
    let config = ConnectorConfig::from_properties(text, "test.properties").unwrap();
    Arc::new(Connector::from_config(config).unwrap())
}

/// Takes over the transactional ids of a source connector's `tasks` tasks, as its next start
/// does: what a killed run left open is aborted (else it holds `read_committed` readers back
/// until its transaction timeout).
pub async fn fence_source(b: &Broker, name: &str, tasks: u32) {
    for task in 0..tasks {
        b.transactional_producer(&format!("connect-{name}-{task}"), 60_000)
            .await
            .unwrap();
    }
}

/// A running connector.
pub struct Running {
    pub stop: watch::Sender<bool>,
    pub status: Status,
    pub task: tokio::task::JoinHandle<quiver_connectors::Result<()>>,
}

pub fn start(b: &Broker, c: &Arc<Connector>) -> Running {
    let (stop, stopped) = watch::channel(false);
    let status = Status::default();
    let task = tokio::spawn(
        c.clone()
            .run(Cluster::Local(b.clone()), stopped, status.clone()),
    );
    Running { stop, status, task }
}

impl Running {
    /// Stops it: it finishes what is in progress and commits.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        self.task.await.unwrap().unwrap();
    }

    /// Waits for it to finish on its own (a bounded source).
    pub async fn finished(self) {
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the connector finishes")
            .unwrap()
            .unwrap();
    }

    /// Kills it wherever it is, as a crash would: nothing more is written or committed.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Waits until it has handled `records` records.
    pub async fn wait_records(&self, records: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.status.progress().records < records {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {records} records handled",
                self.status.progress().records
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
