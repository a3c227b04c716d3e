//! The backend that opens the data directory in this process with [`quiver_broker::Broker`].
//!
//! The broker is opened on first use, after the request has been checked, so a command with bad
//! input (an invalid topic name, an unknown config) creates nothing, not even the directory.
//! Only one process may have a data directory open; a second gets the broker's error naming the
//! holder.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use quiver_broker::broker::ConfigChange;
use quiver_broker::{
    Broker, BrokerConfig, BrokerError, Isolation, NewTopic, ProducerInfo, Record, TopicDescription,
    records_to_batch, topic,
};
use tokio::sync::OnceCell;
use tokio::task::JoinSet;

use super::{
    Client, Fetched, PartitionState, TopicInfo, check_auto_created_partition, check_partition,
};
use crate::data_dir::{self, Intent};

/// Most bytes read from one partition by one fetch (the first batch is returned whole even if larger).
const FETCH_PARTITION_BYTES_MAX: usize = 1 << 20;
/// Most bytes of batches one fetch returns over all partitions (roughly: counted in memory size).
const FETCH_BYTES_MAX: usize = 8 << 20;

/// A broker opened in this process on the data directory.
#[derive(Debug)]
pub struct DirectClient {
    config: BrokerConfig,
    broker: OnceCell<Broker>,
}

impl DirectClient {
    /// Settings from `QUIVER_*` variables, then `data_dir`; nothing is opened yet.
    pub fn new(data_dir: Option<&Path>) -> Result<Self> {
        let config = crate::config::resolve(None, std::env::vars_os(), data_dir)?;
        Ok(DirectClient {
            config,
            broker: OnceCell::new(),
        })
    }

    async fn broker(&self, intent: Intent) -> Result<&Broker> {
        if let Some(broker) = self.broker.get() {
            return Ok(broker);
        }
        data_dir::check(&self.config.data_dir, intent)?;
        Ok(self
            .broker
            .get_or_try_init(|| Broker::open(self.config.clone()))
            .await?)
    }

    /// Reads every partition once, without waiting.
    fn read_all(
        broker: &Broker,
        topic: &str,
        positions: &[(i32, i64)],
        isolation: Isolation,
    ) -> Result<Vec<Fetched>> {
        let mut budget = FETCH_BYTES_MAX;
        let mut out = Vec::with_capacity(positions.len());
        for &(partition, offset) in positions {
            if budget == 0 {
                break;
            }
            let read = broker.partition(topic, partition)?.read_isolated(
                offset,
                FETCH_PARTITION_BYTES_MAX.min(budget),
                isolation,
            )?;
            let batches: Vec<_> = read.batches.into_iter().map(|b| b.records).collect();
            let bytes: usize = batches.iter().map(|b| b.get_array_memory_size()).sum();
            budget = budget.saturating_sub(bytes);
            out.push(Fetched {
                partition,
                batches,
                next_offset: read.next_offset,
            });
        }
        Ok(out)
    }
}

fn topic_info(d: TopicDescription) -> TopicInfo {
    let mut effective = d.config.entries();
    effective.sort();
    TopicInfo {
        name: d.name,
        id: d.id,
        partitions: d
            .partitions
            .iter()
            .map(|p| PartitionState {
                partition: p.partition,
                log_start_offset: p.offsets.log_start_offset,
                log_end_offset: p.offsets.log_end_offset,
                size_bytes: Some(p.offsets.size_bytes),
                segments: Some(p.offsets.segments),
            })
            .collect(),
        overrides: d.overrides,
        effective,
    }
}

impl Client for DirectClient {
    async fn create_topic(&self, new: &NewTopic) -> Result<TopicInfo> {
        // The broker checks these too, but only after opening (and so creating) the directory.
        topic::validate_name(&new.name)?;
        if let Some(partitions) = new.partitions {
            topic::validate_partitions(partitions)?;
        }
        self.config.log.with_overrides(&new.configs)?;
        let broker = self.broker(Intent::Create).await?;
        Ok(topic_info(broker.create_topic(new.clone()).await?))
    }

    async fn delete_topic(&self, name: &str) -> Result<()> {
        Ok(self
            .broker(Intent::Existing)
            .await?
            .delete_topic(name)
            .await?)
    }

    async fn list_topics(&self) -> Result<Vec<String>> {
        Ok(self.broker(Intent::Existing).await?.list_topics())
    }

    async fn describe_topic(&self, name: &str) -> Result<TopicInfo> {
        Ok(topic_info(
            self.broker(Intent::Existing).await?.describe_topic(name)?,
        ))
    }

    async fn alter_topic_config(&self, name: &str, changes: &[ConfigChange]) -> Result<()> {
        self.broker(Intent::Existing)
            .await?
            .alter_topic_config(name, changes)
            .await?;
        Ok(())
    }

    async fn create_partitions(&self, name: &str, total: i32) -> Result<()> {
        self.broker(Intent::Existing)
            .await?
            .add_partitions(name, total)
            .await?;
        Ok(())
    }

    async fn prepare_produce(&self, topic: &str, partition: Option<i32>) -> Result<()> {
        topic::validate_name(topic)?;
        let broker = self.broker(Intent::Create).await?;
        let Some(partition) = partition else {
            return Ok(());
        };
        match broker.partition_count(topic) {
            Ok(count) => check_partition(topic, count, partition),
            Err(BrokerError::UnknownTopic(_)) if broker.config().auto_create_topics => {
                check_auto_created_partition(topic, broker.config().num_partitions, partition)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn produce(
        &self,
        topic: &str,
        partition: Option<i32>,
        records: &[Record],
    ) -> Result<Vec<i32>> {
        let broker = self.broker(Intent::Create).await?;
        let Some(partition) = partition else {
            return Ok(broker
                .produce(topic, records)
                .await?
                .into_iter()
                .map(|(p, _)| p)
                .collect());
        };
        if !broker.topic_exists(topic) && broker.config().auto_create_topics {
            match broker
                .create_topic(NewTopic {
                    name: topic.to_owned(),
                    ..NewTopic::default()
                })
                .await
            {
                Ok(_) | Err(BrokerError::TopicExists(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        broker
            .append(
                topic,
                partition,
                &records_to_batch(records),
                ProducerInfo::NONE,
            )
            .await?;
        Ok(vec![partition])
    }

    async fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: i32,
        timestamp_ms: i64,
    ) -> Result<Option<i64>> {
        let broker = self.broker(Intent::Existing).await?;
        Ok(broker
            .offset_for_timestamp(topic, partition, timestamp_ms)?
            .map(|(offset, _)| offset))
    }

    async fn fetch(
        &self,
        topic: &str,
        positions: &[(i32, i64)],
        max_wait: Duration,
        isolation: Isolation,
    ) -> Result<Vec<Fetched>> {
        let broker = self.broker(Intent::Existing).await?;
        let fetched = Self::read_all(broker, topic, positions, isolation)?;
        if max_wait.is_zero() || fetched.iter().any(|f| !f.batches.is_empty()) {
            return Ok(fetched);
        }
        // Nothing yet: wait until any partition gets a record at its position, or time is up.
        let mut waits = JoinSet::new();
        for &(partition, offset) in positions {
            let handle = broker.partition(topic, partition)?;
            waits.spawn(async move { handle.wait_for_isolated(offset, max_wait, isolation).await });
        }
        waits.join_next().await;
        waits.abort_all();
        Self::read_all(broker, topic, positions, isolation)
    }

    async fn close(self) -> Result<()> {
        if let Some(broker) = self.broker.into_inner() {
            broker.shutdown().await?;
        }
        Ok(())
    }
}
