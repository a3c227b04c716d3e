//! The backend that talks to a running broker over the Kafka protocol (`--bootstrap-server`),
//! with [`quiver_kafka_client::KafkaClient`].
//!
//! It connects on first use, so a command refused for its arguments never touches the
//! network. Produce partitions records as Kafka's default partitioner does: keyed records by
//! murmur2 of the key (the same partition a Java or librdkafka producer picks), records without
//! a key all to one partition per call, moving on to the next partition with the next call
//! (Kafka's sticky partitioner, one batch at a time).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use kafka_protocol::error::ResponseError;
use quiver_broker::broker::ConfigChange;
use quiver_broker::{
    BrokerError, EnvelopeBuilder, Isolation, NewTopic, Partitioner, Record, topic,
};
use quiver_kafka_client::{
    ApiError, ClientConfig, ClientError, ConfigEntry, ConfigResource, ConfigSource, FetchOptions,
    IsolationLevel, KafkaClient, OffsetSpec,
};
use tokio::sync::{Mutex, OnceCell};

use super::{
    Client, Fetched, PartitionState, TopicInfo, check_auto_created_partition, check_partition,
};

/// Most key, value and header bytes in one Kafka record batch: well under the default
/// `max.message.bytes` (1 MiB) with the batch's own overhead. A larger record goes alone.
const PRODUCE_BATCH_BYTES_MAX: usize = 512 << 10;
/// Most bytes read from one partition by one fetch (the first batch comes whole even if larger).
const FETCH_PARTITION_BYTES_MAX: i32 = 1 << 20;
/// Most bytes one fetch returns over all partitions.
const FETCH_BYTES_MAX: i32 = 8 << 20;
/// How long produce waits for the leaders of an auto-created topic.
const AUTO_CREATE_WAIT: Duration = Duration::from_secs(10);

/// Connects to `bootstrap` with the settings the CLI uses.
pub async fn connect(bootstrap: &str) -> Result<KafkaClient> {
    let config = ClientConfig {
        client_id: format!("quiver-cli-{}", env!("CARGO_PKG_VERSION")),
        ..ClientConfig::default()
    };
    Ok(KafkaClient::connect(bootstrap, config).await?)
}

/// A broker reached over the Kafka protocol.
#[derive(Debug)]
pub struct KafkaBackend {
    bootstrap: String,
    client: OnceCell<KafkaClient>,
    /// Partition count of each topic produced to, learned at its first produce.
    partitions: Mutex<HashMap<String, i32>>,
    /// Kafka's default partitioner: murmur2 for keys; for records without a key, one partition
    /// per produce call, moving on each call from a start that varies between runs.
    partitioner: Partitioner,
}

impl KafkaBackend {
    /// Nothing is connected yet.
    pub fn new(bootstrap: &str) -> Self {
        KafkaBackend {
            bootstrap: bootstrap.to_owned(),
            client: OnceCell::new(),
            partitions: Mutex::new(HashMap::new()),
            partitioner: Partitioner::starting_at(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos())
                    ^ std::process::id(),
            ),
        }
    }

    async fn client(&self) -> Result<&KafkaClient> {
        self.client
            .get_or_try_init(|| connect(&self.bootstrap))
            .await
    }

    /// The partition count of `topic`, asking the broker to create it (with its defaults) if it
    /// is missing and the broker creates topics on use, as Kafka producers do.
    async fn partition_count(&self, topic: &str) -> Result<i32> {
        if let Some(&count) = self.partitions.lock().await.get(topic) {
            return Ok(count);
        }
        let client = self.client().await?;
        let deadline = tokio::time::Instant::now() + AUTO_CREATE_WAIT;
        loop {
            let metadata = client.metadata(Some(&[topic]), true).await?;
            let found = metadata.topics.into_iter().find(|t| t.name == topic);
            let Some(t) = found else {
                bail!("the broker did not describe topic '{topic}'");
            };
            match t.error {
                None if !t.partitions.is_empty() => {
                    let count = t.partitions.len() as i32;
                    self.partitions.lock().await.insert(topic.to_owned(), count);
                    return Ok(count);
                }
                // Just created: its leaders are being elected.
                Some(ApiError {
                    error: ResponseError::LeaderNotAvailable,
                    ..
                })
                | None
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Some(ApiError {
                    error: ResponseError::UnknownTopicOrPartition,
                    ..
                }) => bail!(
                    "topic '{topic}' does not exist, and the broker does not create topics on use \
                     (auto.create.topics.enable=false); create it first with `quiver topics create {topic}`"
                ),
                Some(e) => return Err(topic_error(topic, e)),
                None => bail!("topic '{topic}' has no partitions"),
            }
        }
    }

    /// `auto.create.topics.enable` and `num.partitions` of the broker, when it tells them.
    async fn auto_create_settings(&self) -> Option<(bool, i32)> {
        let client = self.client().await.ok()?;
        let metadata = client.metadata(Some(&[]), false).await.ok()?;
        let node = metadata
            .controller_id
            .or_else(|| metadata.brokers.first().map(|b| b.node_id))?;
        let described = client
            .describe_configs(&[ConfigResource::Broker(node)])
            .await
            .ok()?;
        let entries = described.into_iter().next()?.1.ok()?;
        let value = |key: &str| {
            entries
                .iter()
                .find(|e| e.name == key)
                .and_then(|e| e.value.clone())
        };
        let auto_create = value("auto.create.topics.enable")?.parse().ok()?;
        let partitions = value("num.partitions")?.parse().ok()?;
        Some((auto_create, partitions))
    }
}

/// A refusal about `topic`, worded as the data-directory backend words it where the meaning is
/// the same.
fn topic_error(topic: &str, e: ApiError) -> anyhow::Error {
    match e.error {
        ResponseError::UnknownTopicOrPartition if e.message.is_none() => {
            BrokerError::UnknownTopic(topic.to_owned()).into()
        }
        // Metadata says only "invalid"; the rules are Kafka's, so say which one is broken.
        ResponseError::InvalidTopicException if e.message.is_none() => {
            match topic::validate_name(topic) {
                Err(local) => local.into(),
                Ok(()) => anyhow!("invalid topic name '{topic}': {e}"),
            }
        }
        _ => e.into(),
    }
}

/// The one result of a single-resource batch call about `topic`.
fn only<K, T>(results: Vec<(K, std::result::Result<T, ApiError>)>, topic: &str) -> Result<T> {
    let (_, result) = results
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("the broker did not answer for topic '{topic}'"))?;
    result.map_err(|e| topic_error(topic, e))
}

fn configs_of(
    name: &str,
    id: Option<String>,
    partitions: Vec<PartitionState>,
    entries: &[ConfigEntry],
) -> TopicInfo {
    let mut effective: Vec<(String, String)> = entries
        .iter()
        .map(|e| {
            (
                e.name.clone(),
                e.value.clone().unwrap_or_else(|| "(sensitive)".into()),
            )
        })
        .collect();
    effective.sort();
    let overrides: BTreeMap<String, String> = entries
        .iter()
        .filter(|e| e.source == ConfigSource::Topic)
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect();
    TopicInfo {
        name: name.to_owned(),
        id: id.unwrap_or_else(|| "-".to_owned()),
        partitions,
        overrides,
        effective,
    }
}

/// Splits `records` into runs of at most [`PRODUCE_BATCH_BYTES_MAX`] bytes (a larger record
/// alone).
fn chunks<R: std::borrow::Borrow<Record>>(records: Vec<R>) -> Vec<Vec<R>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for record in records {
        let size = record.borrow().size_bytes();
        if !current.is_empty() && bytes + size > PRODUCE_BATCH_BYTES_MAX {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(record);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

impl Client for KafkaBackend {
    async fn create_topic(&self, new: &NewTopic) -> Result<TopicInfo> {
        let client = self.client().await?;
        let created = only(
            client
                .create_topics(std::slice::from_ref(new), false)
                .await?,
            &new.name,
        )?;
        match (created.partitions, &created.configs) {
            (Some(n), Some(configs)) => {
                let partitions = (0..n)
                    .map(|partition| PartitionState {
                        partition,
                        log_start_offset: 0,
                        log_end_offset: 0,
                        size_bytes: Some(0),
                        segments: None,
                    })
                    .collect();
                let id = created.id.map(|id| id.simple().to_string());
                Ok(configs_of(&new.name, id, partitions, configs))
            }
            _ => self.describe_topic(&new.name).await,
        }
    }

    async fn delete_topic(&self, name: &str) -> Result<()> {
        let client = self.client().await?;
        only(client.delete_topics(&[name]).await?, name)
    }

    async fn list_topics(&self) -> Result<Vec<String>> {
        let client = self.client().await?;
        let mut names: Vec<String> = client
            .metadata(None, false)
            .await?
            .topics
            .into_iter()
            .map(|t| t.name)
            .collect();
        names.sort();
        Ok(names)
    }

    async fn describe_topic(&self, name: &str) -> Result<TopicInfo> {
        let client = self.client().await?;
        let metadata = client.metadata(Some(&[name]), false).await?;
        let Some(t) = metadata.topics.into_iter().find(|t| t.name == name) else {
            return Err(BrokerError::UnknownTopic(name.to_owned()).into());
        };
        if let Some(e) = t.error {
            return Err(topic_error(name, e));
        }
        let partitions: Vec<i32> = t.partitions.iter().map(|p| p.partition).collect();
        let offsets = |spec: OffsetSpec| {
            let specs: Vec<(i32, OffsetSpec)> = partitions.iter().map(|p| (*p, spec)).collect();
            async move {
                let mut out = BTreeMap::new();
                for (p, result) in client.list_offsets(name, &specs).await? {
                    let offset = result
                        .map_err(|e| anyhow!(e))
                        .with_context(|| format!("cannot read the offsets of {name}-{p}"))?;
                    out.insert(p, offset.map_or(0, |o| o.offset));
                }
                anyhow::Ok(out)
            }
        };
        let starts = offsets(OffsetSpec::Earliest).await?;
        let ends = offsets(OffsetSpec::Latest).await?;
        // Sizes are a nicety: a broker that does not serve DescribeLogDirs still describes.
        let sizes = client.partition_sizes(name, &partitions).await.ok();
        let states = partitions
            .iter()
            .map(|&p| PartitionState {
                partition: p,
                log_start_offset: starts.get(&p).copied().unwrap_or(0),
                log_end_offset: ends.get(&p).copied().unwrap_or(0),
                size_bytes: sizes.as_ref().and_then(|s| s.get(&p).copied()),
                segments: None,
            })
            .collect();
        let described = client
            .describe_configs(&[ConfigResource::Topic(name.to_owned())])
            .await?;
        let entries = only(described, name)?;
        let id = t.id.map(|id| id.simple().to_string());
        Ok(configs_of(name, id, states, &entries))
    }

    async fn alter_topic_config(&self, name: &str, changes: &[ConfigChange]) -> Result<()> {
        let client = self.client().await?;
        let results = client
            .incremental_alter_configs(
                &[(ConfigResource::Topic(name.to_owned()), changes.to_vec())],
                false,
            )
            .await?;
        only(results, name)
    }

    async fn create_partitions(&self, name: &str, total: i32) -> Result<()> {
        let client = self.client().await?;
        only(
            client.create_partitions(&[(name, total)], false).await?,
            name,
        )?;
        self.partitions.lock().await.remove(name);
        Ok(())
    }

    async fn prepare_produce(&self, topic: &str, partition: Option<i32>) -> Result<()> {
        let client = self.client().await?;
        let metadata = client.metadata(Some(&[topic]), false).await?;
        let Some(t) = metadata.topics.into_iter().find(|t| t.name == topic) else {
            bail!("the broker did not describe topic '{topic}'");
        };
        match t.error {
            None => {
                let count = t.partitions.len() as i32;
                partition.map_or(Ok(()), |p| check_partition(topic, count, p))
            }
            Some(ApiError {
                error: ResponseError::UnknownTopicOrPartition,
                ..
            }) => {
                // It will be created on first use if the broker does that; check what we can.
                let Some((auto_create, count)) = self.auto_create_settings().await else {
                    return Ok(());
                };
                if !auto_create {
                    bail!(
                        "topic '{topic}' does not exist, and the broker does not create topics on use \
                         (auto.create.topics.enable=false); create it first with `quiver topics create {topic}`"
                    );
                }
                partition.map_or(Ok(()), |p| check_auto_created_partition(topic, count, p))
            }
            Some(e) => Err(topic_error(topic, e)),
        }
    }

    async fn produce(
        &self,
        topic: &str,
        partition: Option<i32>,
        records: &[Record],
    ) -> Result<Vec<i32>> {
        let client = self.client().await?;
        let count = self.partition_count(topic).await?;
        let mut by_partition: BTreeMap<i32, Vec<&Record>> = BTreeMap::new();
        let sticky = if records.iter().any(|r| r.key.is_none()) {
            self.partitioner.partition(None, count)
        } else {
            0
        };
        for record in records {
            let p = match (partition, &record.key) {
                (Some(p), _) => p,
                (None, Some(key)) => self.partitioner.partition(Some(key), count),
                (None, None) => sticky,
            };
            by_partition.entry(p).or_default().push(record);
        }
        let mut rounds: Vec<Vec<(i32, Vec<&Record>)>> = Vec::new();
        for (p, records) in by_partition {
            for (i, chunk) in chunks(records).into_iter().enumerate() {
                if rounds.len() <= i {
                    rounds.push(Vec::new());
                }
                rounds[i].push((p, chunk));
            }
        }
        // One batch per partition per request, as Kafka requires; rounds go one after another
        // so each partition's records keep their order.
        let mut written = Vec::new();
        for round in rounds {
            let batches: Vec<(i32, arrow::record_batch::RecordBatch)> = round
                .iter()
                .map(|(p, records)| {
                    let bytes = records.iter().map(|r| r.size_bytes()).sum();
                    let mut batch = EnvelopeBuilder::with_capacity(records.len(), bytes);
                    for r in records {
                        batch.append_record(r);
                    }
                    (*p, batch.finish())
                })
                .collect();
            let refs: Vec<(i32, &arrow::record_batch::RecordBatch)> =
                batches.iter().map(|(p, b)| (*p, b)).collect();
            for (p, result) in client.produce_partitions(topic, &refs).await? {
                match result {
                    Ok(_) => written.push(p),
                    Err(e) if e.error == ResponseError::UnknownTopicOrPartition => {
                        self.partitions.lock().await.remove(topic);
                        return Err(match partition {
                            Some(_) => {
                                anyhow!("cannot write to {topic}-{p}: {e}")
                            }
                            None => topic_error(topic, e),
                        });
                    }
                    Err(e) => return Err(anyhow!("cannot write to {topic}-{p}: {e}")),
                }
            }
        }
        written.sort_unstable();
        written.dedup();
        Ok(written)
    }

    async fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: i32,
        timestamp_ms: i64,
    ) -> Result<Option<i64>> {
        let client = self.client().await?;
        let found = client
            .list_offsets(topic, &[(partition, OffsetSpec::Timestamp(timestamp_ms))])
            .await?;
        let (_, result) = found
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("the broker did not answer for {topic}-{partition}"))?;
        let offset = result
            .map_err(|e| anyhow!(e))
            .with_context(|| format!("cannot look up a timestamp in {topic}-{partition}"))?;
        Ok(offset.map(|o| o.offset))
    }

    async fn fetch(
        &self,
        topic: &str,
        positions: &[(i32, i64)],
        max_wait: Duration,
        isolation: Isolation,
    ) -> Result<Vec<Fetched>> {
        let client = self.client().await?;
        let options = FetchOptions {
            max_wait,
            isolation_level: match isolation {
                Isolation::ReadUncommitted => IsolationLevel::ReadUncommitted,
                Isolation::ReadCommitted => IsolationLevel::ReadCommitted,
            },
            min_bytes: 1,
            max_bytes: FETCH_BYTES_MAX,
            partition_max_bytes: FETCH_PARTITION_BYTES_MAX,
        };
        let fetched = client.fetch(topic, positions, &options).await?;
        let mut out = Vec::with_capacity(fetched.len());
        for (partition, result) in fetched {
            let offset = positions
                .iter()
                .find(|(p, _)| *p == partition)
                .map_or(-1, |(_, o)| *o);
            match result {
                Ok(records) => out.push(Fetched {
                    partition,
                    batches: records.batches,
                    next_offset: records.next_offset,
                }),
                Err(e) if e.error == ResponseError::UnknownTopicOrPartition => {
                    return Err(topic_error(topic, e));
                }
                Err(e) => {
                    return Err(anyhow!(ClientError::Api {
                        context: format!("cannot read {topic}-{partition} at offset {offset}"),
                        error: e,
                    }));
                }
            }
        }
        Ok(out)
    }

    async fn close(self) -> Result<()> {
        if let Some(client) = self.client.into_inner() {
            client.close().await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_stay_under_the_batch_limit_and_keep_order() {
        let big = vec![0u8; PRODUCE_BATCH_BYTES_MAX / 2 + 1];
        let records: Vec<Record> = (0..5).map(|i| Record::new(i, None, Some(&big))).collect();
        let chunks = chunks(records);
        let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
        assert_eq!(sizes, [1, 1, 1, 1, 1]);
        let times: Vec<i64> = chunks.iter().flatten().map(|r| r.timestamp_ms).collect();
        assert_eq!(times, [0, 1, 2, 3, 4]);

        let small: Vec<Record> = (0..10).map(|i| Record::new(i, None, Some(b"x"))).collect();
        assert_eq!(super::chunks(small).len(), 1);
        let huge = vec![Record::new(
            0,
            None,
            Some(&vec![0u8; PRODUCE_BATCH_BYTES_MAX * 2]),
        )];
        assert_eq!(
            super::chunks(huge).len(),
            1,
            "a record larger than the limit goes alone"
        );
    }
}
