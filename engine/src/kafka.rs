//! Topics of an external Kafka-compatible cluster (Apache Kafka, Redpanda, another
//! `quiver server`) through Quiver's Kafka client: [`KafkaSource`] reads one, [`KafkaSink`]
//! writes one. They behave as [`crate::TopicSource`] and [`crate::TopicSink`] do (same
//! formats, watermarks, partitioning), over the network.
//!
//! Under exactly-once, a query whose source is on a cluster runs its transaction on that
//! cluster: its Kafka sinks must write to the same cluster (one Kafka transaction cannot span
//! two clusters).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use quiver_broker::PartitionSplit;
use quiver_kafka_client::{
    ClientConfig, ClientError, FetchOptions, IsolationLevel, KafkaClient, OffsetSpec,
};

use crate::checkpoint::{Cluster, SharedTransaction};
use crate::error::{EngineError, Result};
use crate::format::{Format, RecordDecoder};
use crate::sink::{Sink, TopicEncoder, TopicFormat};
use crate::source::{Source, SourcePoll, SourceReader, StartFrom, Watermarks};

/// A connection to an external cluster, shared by the sources and sinks that use it.
#[derive(Debug, Clone)]
pub struct KafkaCluster {
    client: Arc<KafkaClient>,
    bootstrap: String,
}

impl KafkaCluster {
    /// Connects to `bootstrap` (`host:port[,host:port…]`).
    pub async fn connect(bootstrap: &str) -> Result<KafkaCluster> {
        let client = KafkaClient::connect(bootstrap, ClientConfig::default()).await?;
        Ok(KafkaCluster {
            client: Arc::new(client),
            bootstrap: bootstrap.to_owned(),
        })
    }

    /// The bootstrap servers it was connected with.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The client, for what the engine does not wrap.
    pub fn client(&self) -> &Arc<KafkaClient> {
        &self.client
    }

    /// The number of partitions of `topic`; an error naming the topic when it does not exist.
    pub async fn partition_count(&self, topic: &str) -> Result<i32> {
        let metadata = self.client.metadata(Some(&[topic]), false).await?;
        let t = metadata.topics.iter().find(|t| t.name == topic);
        match t {
            Some(t) if t.error.is_none() && !t.partitions.is_empty() => {
                Ok(t.partitions.len() as i32)
            }
            _ => Err(EngineError::config(format!(
                "topic '{topic}' does not exist on cluster {}; create it first",
                self.bootstrap
            ))),
        }
    }
}

/// A topic of an external cluster, read with `read_committed`.
#[derive(Debug, Clone)]
pub struct KafkaSource {
    cluster: KafkaCluster,
    topic: String,
    decoder: RecordDecoder,
    start: StartFrom,
    idle_after: Duration,
    max_bytes: i32,
}

impl KafkaSource {
    /// Reads `topic` of `cluster` with `key` and `value` formats, from the earliest offset.
    /// Fails if the topic does not exist.
    pub async fn new(
        cluster: &KafkaCluster,
        topic: &str,
        key: Format,
        value: Format,
    ) -> Result<KafkaSource> {
        cluster.partition_count(topic).await?;
        Ok(KafkaSource {
            cluster: cluster.clone(),
            topic: topic.to_owned(),
            decoder: RecordDecoder::new(key, value, None)?,
            start: StartFrom::Earliest,
            idle_after: Duration::from_secs(5),
            max_bytes: 4 << 20,
        })
    }

    /// Reads `topic` of `cluster` as a table's changelog, as [`crate::TopicSource::table`]
    /// does the in-process broker's: each record upserts its key's row, a null value (a
    /// tombstone) deletes it. The key format must give columns: they are the table's key.
    pub async fn table(
        cluster: &KafkaCluster,
        topic: &str,
        key: Format,
        value: Format,
    ) -> Result<KafkaSource> {
        Ok(KafkaSource {
            decoder: RecordDecoder::table(key, value, None)?,
            ..KafkaSource::new(cluster, topic, Format::None, Format::None).await?
        })
    }

    /// Takes event time from a key or value column instead of the record timestamp.
    pub fn with_time_column(mut self, column: &str, key: Format, value: Format) -> Result<Self> {
        self.decoder = if self.decoder.table_key().is_some() {
            RecordDecoder::table(key, value, Some(column))?
        } else {
            RecordDecoder::new(key, value, Some(column))?
        };
        Ok(self)
    }

    pub fn with_start(mut self, start: StartFrom) -> Self {
        self.start = start;
        self
    }

    /// How long a caught-up partition waits before it stops holding the watermark back.
    pub fn with_idle_timeout(mut self, idle_after: Duration) -> Self {
        self.idle_after = idle_after;
        self
    }

    /// Each partition of `split`'s start offset.
    async fn start_positions(
        &self,
        partitions: &[i32],
        start: &StartFrom,
    ) -> Result<BTreeMap<i32, i64>> {
        let spec = match start {
            StartFrom::Earliest => OffsetSpec::Earliest,
            StartFrom::Latest => OffsetSpec::Latest,
            StartFrom::Timestamp(ms) => OffsetSpec::Timestamp(*ms),
            StartFrom::Offsets(map) => {
                let missing: Vec<i32> = partitions
                    .iter()
                    .copied()
                    .filter(|p| !map.contains_key(p))
                    .collect();
                let mut out =
                    Box::pin(self.start_positions(&missing, &StartFrom::Earliest)).await?;
                for p in partitions {
                    if let Some(o) = map.get(p) {
                        out.insert(*p, *o);
                    }
                }
                return Ok(out);
            }
            StartFrom::Committed { group, fallback } => {
                let wanted = [(self.topic.as_str(), partitions.to_vec())];
                let committed = self
                    .cluster
                    .client
                    .offset_fetch_stable(group, Some(&wanted))
                    .await?;
                let mut map = BTreeMap::new();
                for c in committed {
                    if let Some(e) = c.error {
                        return Err(EngineError::config(format!(
                            "the committed offsets of group '{group}' for '{}' are not \
                             readable ({e}); retry once its transaction completes",
                            self.topic
                        )));
                    }
                    if let Some(o) = c.offset {
                        map.insert(c.partition, o);
                    }
                }
                if map.is_empty() {
                    return Box::pin(self.start_positions(partitions, fallback)).await;
                }
                return Box::pin(self.start_positions(partitions, &StartFrom::Offsets(map))).await;
            }
        };
        let specs: Vec<(i32, OffsetSpec)> = partitions.iter().map(|p| (*p, spec)).collect();
        let mut out = BTreeMap::new();
        if specs.is_empty() {
            return Ok(out);
        }
        let listed = self
            .cluster
            .client
            .list_offsets_isolated(&self.topic, &specs, IsolationLevel::ReadCommitted)
            .await?;
        for (p, result) in listed {
            let offset = match result {
                Ok(Some(o)) => o.offset,
                // A timestamp after every record: start at the end.
                Ok(None) => {
                    let end = self
                        .cluster
                        .client
                        .list_offsets(&self.topic, &[(p, OffsetSpec::Latest)])
                        .await?;
                    match end.into_iter().next() {
                        Some((_, Ok(Some(o)))) => o.offset,
                        _ => 0,
                    }
                }
                Err(e) => {
                    return Err(EngineError::config(format!(
                        "cannot find the start offset of {}-{p} on cluster {}: {e}",
                        self.topic, self.cluster.bootstrap
                    )));
                }
            };
            out.insert(p, offset);
        }
        Ok(out)
    }

    /// A reader of `split`'s partitions, or (`None`) of exactly the partitions of `only`.
    async fn reader(
        &self,
        split: Option<PartitionSplit>,
        start: &StartFrom,
        only: &[i32],
    ) -> Result<Box<dyn SourceReader>> {
        // The topic may have gained partitions since the source was made.
        let count = self.cluster.partition_count(&self.topic).await?;
        let partitions: Vec<i32> = match split {
            Some(split) => (0..count).filter(|p| split.contains(*p)).collect(),
            None => {
                if let Some(p) = only.iter().find(|p| !(0..count).contains(*p)) {
                    return Err(EngineError::config(format!(
                        "topic '{}' on cluster {} has no partition {p} (it has {count})",
                        self.topic, self.cluster.bootstrap
                    )));
                }
                only.to_vec()
            }
        };
        let positions = self.start_positions(&partitions, start).await?;
        let mut reader = KafkaSourceReader {
            source: self.clone(),
            split,
            checked_partitions: Instant::now(),
            watermarks: Watermarks::default(),
            partitions: BTreeMap::new(),
        };
        reader.track(positions);
        Ok(Box::new(reader))
    }
}

#[async_trait]
impl Source for KafkaSource {
    fn schema(&self) -> SchemaRef {
        self.decoder.schema()
    }

    fn describe(&self) -> String {
        format!(
            "topic '{}' on cluster {}",
            self.topic, self.cluster.bootstrap
        )
    }

    async fn open(&self, split: PartitionSplit) -> Result<Box<dyn SourceReader>> {
        self.reader(Some(split), &self.start, &[]).await
    }

    async fn open_at(
        &self,
        split: PartitionSplit,
        positions: &BTreeMap<i32, i64>,
    ) -> Result<Box<dyn SourceReader>> {
        self.reader(Some(split), &StartFrom::Offsets(positions.clone()), &[])
            .await
    }

    async fn open_partitions(
        &self,
        partitions: &[i32],
        positions: &BTreeMap<i32, i64>,
    ) -> Result<Box<dyn SourceReader>> {
        self.reader(None, &StartFrom::Offsets(positions.clone()), partitions)
            .await
    }

    fn decoder(&self) -> Option<&RecordDecoder> {
        Some(&self.decoder)
    }

    fn table_key(&self) -> Option<Vec<String>> {
        self.decoder.table_key()
    }

    fn topic(&self) -> Option<&str> {
        Some(&self.topic)
    }

    fn cluster(&self) -> Option<Cluster> {
        Some(Cluster::Remote(self.cluster.clone()))
    }
}

#[derive(Debug)]
struct PartitionState {
    position: i64,
    /// The last fetch reached the end the broker lets `read_committed` readers see.
    caught_up: bool,
    /// That end, as the last fetch saw it.
    end: Option<i64>,
    last_data: Instant,
}

/// How often a reader asks the cluster whether the topic has gained partitions.
const PARTITION_CHECK: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct KafkaSourceReader {
    source: KafkaSource,
    /// `None`: a fixed set of partitions, which gains none.
    split: Option<PartitionSplit>,
    checked_partitions: Instant,
    watermarks: Watermarks,
    partitions: BTreeMap<i32, PartitionState>,
}

#[async_trait]
impl SourceReader for KafkaSourceReader {
    async fn poll(&mut self, max_wait: Duration) -> Result<SourcePoll> {
        if self.checked_partitions.elapsed() >= PARTITION_CHECK {
            self.add_new_partitions().await?;
        }
        let mut poll = SourcePoll::default();
        if self.partitions.is_empty() {
            tokio::time::sleep(max_wait).await;
            poll.idle = true;
            return Ok(poll);
        }
        let positions: Vec<(i32, i64)> = self
            .partitions
            .iter()
            .map(|(p, s)| (*p, s.position))
            .collect();
        let options = FetchOptions {
            max_wait,
            max_bytes: self.source.max_bytes,
            isolation_level: IsolationLevel::ReadCommitted,
            ..FetchOptions::default()
        };
        let fetched = match self
            .source
            .cluster
            .client
            .fetch(&self.source.topic, &positions, &options)
            .await
        {
            Ok(fetched) => fetched,
            // The cluster restarting or a network blip: the client reconnects on the next
            // call; the query waits instead of failing.
            Err(
                e @ (ClientError::Unreachable { .. }
                | ClientError::Disconnected { .. }
                | ClientError::Timeout { .. }),
            ) => {
                tracing::warn!(topic = %self.source.topic, error = %e, "fetch failed; retrying");
                tokio::time::sleep(max_wait).await;
                return Ok(poll);
            }
            Err(e) => return Err(e.into()),
        };
        let now = Instant::now();
        for (p, result) in fetched {
            let f = match result {
                Ok(f) => f,
                Err(e) if e.is_retriable() => {
                    tracing::debug!(topic = %self.source.topic, partition = p, error = %e, "fetch retried");
                    continue;
                }
                Err(e) => {
                    return Err(EngineError::Kafka(quiver_kafka_client::ClientError::Api {
                        context: format!("cannot read {}-{p}", self.source.topic),
                        error: e,
                    }));
                }
            };
            let Some(state) = self.partitions.get_mut(&p) else {
                continue;
            };
            for records in &f.batches {
                let decoded = self.source.decoder.decode(p, records)?;
                poll.skipped += decoded.skipped_nulls;
                poll.bad.extend(decoded.bad);
                if decoded.batch.num_rows() > 0 {
                    self.watermarks.observe(p, &decoded.batch);
                    poll.batches.push(decoded.batch);
                }
            }
            if !f.batches.is_empty() {
                state.last_data = now;
            }
            state.position = state.position.max(f.next_offset);
            let end = f.last_stable_offset.unwrap_or(f.high_watermark);
            state.caught_up = state.position >= end;
            state.end = Some(end);
        }
        let idle_after = self.source.idle_after;
        let idle = |s: &PartitionState| s.caught_up && now - s.last_data >= idle_after;
        poll.watermark = self
            .watermarks
            .merged(self.partitions.iter().map(|(p, s)| (*p, idle(s))));
        // Every partition quiet: this reader does not hold a query's other inputs back.
        poll.idle = self.partitions.values().all(idle);
        Ok(poll)
    }

    fn positions(&self) -> BTreeMap<i32, i64> {
        self.partitions
            .iter()
            .map(|(p, s)| (*p, s.position))
            .collect()
    }

    fn ends(&self) -> BTreeMap<i32, i64> {
        self.partitions
            .iter()
            .filter_map(|(p, s)| Some((*p, s.end?)))
            .collect()
    }
}

impl KafkaSourceReader {
    /// Starts reading partitions the topic gained (in this reader's split) from their
    /// beginning, as Kafka consumers do after a rebalance.
    async fn add_new_partitions(&mut self) -> Result<()> {
        self.checked_partitions = Instant::now();
        let Some(split) = self.split else {
            return Ok(());
        };
        let count = self
            .source
            .cluster
            .partition_count(&self.source.topic)
            .await?;
        let new: Vec<i32> = (0..count)
            .filter(|p| split.contains(*p) && !self.partitions.contains_key(p))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        tracing::info!(topic = %self.source.topic, partitions = ?new, "reading new partitions");
        let positions = self
            .source
            .start_positions(&new, &StartFrom::Earliest)
            .await?;
        self.track(positions);
        Ok(())
    }

    /// Reads these partitions from these offsets from now on.
    fn track(&mut self, positions: BTreeMap<i32, i64>) {
        let now = Instant::now();
        for (p, position) in positions {
            self.partitions.insert(
                p,
                PartitionState {
                    position,
                    caught_up: false,
                    end: None,
                    last_data: now,
                },
            );
        }
    }
}

/// A topic of an external cluster. Each write waits for the cluster's acknowledgement
/// (acks=all); under exactly-once it writes in the query's transaction on that cluster.
#[derive(Debug)]
pub struct KafkaSink {
    cluster: KafkaCluster,
    topic: String,
    partitions: i32,
    encoder: TopicEncoder,
    transaction: Option<SharedTransaction>,
}

impl KafkaSink {
    /// Writes to `topic` of `cluster` in `format`. Fails if the topic does not exist.
    pub async fn new(cluster: &KafkaCluster, topic: &str, format: TopicFormat) -> Result<Self> {
        let partitions = cluster.partition_count(topic).await?;
        Ok(KafkaSink {
            cluster: cluster.clone(),
            topic: topic.to_owned(),
            partitions,
            encoder: TopicEncoder::new(format),
            transaction: None,
        })
    }
}

#[async_trait]
impl Sink for KafkaSink {
    fn describe(&self) -> String {
        format!(
            "topic '{}' on cluster {}",
            self.topic, self.cluster.bootstrap
        )
    }

    fn topic(&self) -> Option<&str> {
        Some(&self.topic)
    }

    async fn open(&mut self, schema: SchemaRef) -> Result<()> {
        self.encoder.open(&schema)
    }

    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let encoded = self.encoder.encode(&batch, self.partitions)?;
        if let Some(txn) = &self.transaction {
            for (p, records) in encoded {
                txn.append(&self.topic, p, &records).await?;
            }
            return Ok(());
        }
        let batches: Vec<(i32, &RecordBatch)> = encoded.iter().map(|(p, b)| (*p, b)).collect();
        for (p, result) in self
            .cluster
            .client
            .produce_partitions(&self.topic, &batches)
            .await?
        {
            if let Err(error) = result {
                return Err(EngineError::Kafka(quiver_kafka_client::ClientError::Api {
                    context: format!(
                        "cannot write to {}-{p} on cluster {}",
                        self.topic, self.cluster.bootstrap
                    ),
                    error,
                }));
            }
        }
        Ok(())
    }

    fn set_transaction(&mut self, transaction: &SharedTransaction) -> Result<bool> {
        if transaction.bootstrap() != Some(self.cluster.bootstrap.as_str()) {
            let theirs = transaction
                .bootstrap()
                .map_or("the in-process broker".to_owned(), |b| {
                    format!("cluster {b}")
                });
            return Err(EngineError::config(format!(
                "exactly-once output to topic '{}' of cluster {} needs the source on that \
                 cluster too, but it reads from {theirs}; one Kafka transaction cannot span two \
                 clusters (use at-least-once)",
                self.topic, self.cluster.bootstrap
            )));
        }
        self.transaction = Some(transaction.clone());
        Ok(true)
    }

    async fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}
