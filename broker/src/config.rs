//! Typed configuration with Kafka's key names, in one place: the broker's settings
//! (`log.dirs`, `num.partitions`, `log.retention.hours`, ...) and per-topic overrides
//! (`retention.ms`, `segment.bytes`, `cleanup.policy`, ...). Defaults are Kafka's.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::error::{BrokerError, Result};

/// What happens to old data of a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CleanupPolicy {
    /// Delete closed segments past retention.
    pub delete: bool,
    /// Keep the latest record per key.
    pub compact: bool,
}

impl CleanupPolicy {
    fn parse(value: &str) -> Option<Self> {
        let mut policy = CleanupPolicy::default();
        for part in value.split(',').map(str::trim) {
            match part {
                "delete" => policy.delete = true,
                "compact" => policy.compact = true,
                _ => return None,
            }
        }
        (policy.delete || policy.compact).then_some(policy)
    }

    fn render(self) -> String {
        match (self.compact, self.delete) {
            (true, true) => "compact,delete".into(),
            (true, false) => "compact".into(),
            _ => "delete".into(),
        }
    }
}

/// Where record timestamps come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimestampType {
    /// The producer's timestamp is kept.
    #[default]
    CreateTime,
    /// The broker stamps records with its clock on append.
    LogAppendTime,
}

/// `compression.type`: the codec a topic's batches are stored and served with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompressionType {
    /// Keep each producer's codec (Kafka's default).
    #[default]
    Producer,
    /// A Kafka codec id (see `quiver_common::kafka::compression::codec`): every batch is
    /// stored and sent with it, whatever the producer used.
    Codec(i16),
}

impl CompressionType {
    fn parse(value: &str) -> Option<Self> {
        match value.trim() {
            "producer" => Some(CompressionType::Producer),
            // `uncompressed` is Kafka's older spelling of `none` for this key.
            "uncompressed" => Some(CompressionType::Codec(0)),
            other => quiver_common::kafka::compression::codec_id(other).map(CompressionType::Codec),
        }
    }

    fn render(self) -> String {
        match self {
            CompressionType::Producer => "producer".into(),
            CompressionType::Codec(id) => quiver_common::kafka::compression::codec_name(id).into(),
        }
    }

    /// The Kafka codec a batch the producer compressed with `producer_codec` is kept with.
    pub fn codec_for(self, producer_codec: i16) -> i16 {
        match self {
            CompressionType::Producer => producer_codec,
            CompressionType::Codec(id) => id,
        }
    }
}

/// The effective settings of one partition log (topic overrides over broker defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// `retention.ms`: closed segments whose newest record is older are deleted; `None` keeps forever.
    pub retention_ms: Option<i64>,
    /// `retention.bytes`: oldest closed segments are deleted while the log is larger; `None` = no limit.
    pub retention_bytes: Option<u64>,
    /// `segment.bytes`: the active segment rolls before it would grow past this.
    pub segment_bytes: u64,
    /// `segment.ms`: the active segment rolls when its first record is older than this.
    pub segment_ms: i64,
    /// `cleanup.policy`.
    pub cleanup_policy: CleanupPolicy,
    /// `max.message.bytes`: the largest record (key + value + headers) accepted.
    pub max_message_bytes: usize,
    /// `flush.messages`: fsync once this many records are unflushed (1 = every append); `None` = leave it to the OS.
    pub flush_messages: Option<u64>,
    /// `flush.ms`: fsync unflushed data at least this often; `None` = leave it to the OS.
    pub flush_ms: Option<u64>,
    /// `delete.retention.ms`: how long tombstones survive compaction.
    pub delete_retention_ms: i64,
    /// `min.compaction.lag.ms`: records younger than this are not compacted.
    pub min_compaction_lag_ms: i64,
    /// `index.interval.bytes`: bytes between sparse index entries.
    pub index_interval_bytes: u64,
    /// `message.timestamp.type`.
    pub timestamp_type: TimestampType,
    /// `message.timestamp.before.max.ms`: with CreateTime, a record more than this older than the
    /// broker's clock is refused; `None` = no limit.
    pub timestamp_before_max_ms: Option<i64>,
    /// `message.timestamp.after.max.ms`: with CreateTime, a record more than this ahead of the
    /// broker's clock is refused, so one bad clock cannot stall time-based retention; `None` = no limit.
    pub timestamp_after_max_ms: Option<i64>,
    /// `compression.type`: `producer` keeps the producer's codec; a codec name stores and serves
    /// every batch with it. Stored batches are compressed with LZ4 or Zstandard (see the frame
    /// format); consumers are sent the Kafka codec.
    pub compression: CompressionType,
    /// Server key `log.flush.on.ack` (no topic key): acks=all is answered after the fsync, and
    /// the high watermark is the durable offset (consumers never see what a power loss could
    /// take away). Small produced batches then wait in the partition's write buffer until an
    /// fsync round or an acks=0/1 answer writes them. Off: acks=all is answered after the
    /// write, as Kafka does on one node, and every batch is written as it is appended.
    pub flush_on_ack: bool,
}

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            retention_ms: Some(7 * DAY_MS),
            retention_bytes: None,
            segment_bytes: 1 << 30,
            segment_ms: 7 * DAY_MS,
            cleanup_policy: CleanupPolicy {
                delete: true,
                compact: false,
            },
            max_message_bytes: 1_048_588,
            flush_messages: None,
            flush_ms: None,
            delete_retention_ms: DAY_MS,
            min_compaction_lag_ms: 0,
            index_interval_bytes: 4096,
            timestamp_type: TimestampType::CreateTime,
            timestamp_before_max_ms: None,
            // Kafka 4.0's default (KIP-937).
            timestamp_after_max_ms: Some(60 * 60 * 1000),
            compression: CompressionType::Producer,
            flush_on_ack: true,
        }
    }
}

/// The topic config keys Quiver knows, each with a one-line description (shown in errors and help).
pub const TOPIC_CONFIG_KEYS: &[(&str, &str)] = &[
    ("cleanup.policy", "delete, compact, or compact,delete"),
    (
        "compression.type",
        "producer, none, gzip, snappy, lz4 or zstd: the codec batches are stored and sent with",
    ),
    (
        "delete.retention.ms",
        "how long tombstones survive compaction",
    ),
    (
        "flush.messages",
        "fsync after this many records (1 = every append)",
    ),
    ("flush.ms", "fsync at least this often"),
    ("index.interval.bytes", "bytes between offset index entries"),
    ("max.message.bytes", "largest record accepted"),
    (
        "message.timestamp.after.max.ms",
        "refuse records this far ahead of the broker's clock (CreateTime)",
    ),
    (
        "message.timestamp.before.max.ms",
        "refuse records this far behind the broker's clock (CreateTime)",
    ),
    ("message.timestamp.type", "CreateTime or LogAppendTime"),
    (
        "min.compaction.lag.ms",
        "records younger than this are not compacted",
    ),
    ("retention.bytes", "size limit of a partition (-1 = none)"),
    ("retention.ms", "age limit of records (-1 = none)"),
    ("segment.bytes", "size at which a segment rolls"),
    ("segment.ms", "age at which a segment rolls"),
];

fn known_topic_keys() -> String {
    TOPIC_CONFIG_KEYS
        .iter()
        .map(|(k, _)| *k)
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_i64(key: &str, value: &str) -> Result<i64> {
    value
        .trim()
        .parse::<i64>()
        .map_err(|_| BrokerError::InvalidConfig(format!("{key}={value:?} is not a whole number")))
}

fn parse_at_least(key: &str, value: &str, min: i64) -> Result<i64> {
    let v = parse_i64(key, value)?;
    if v < min {
        return Err(BrokerError::InvalidConfig(format!(
            "{key}={v} must be at least {min}"
        )));
    }
    Ok(v)
}

fn parse_i32_at_least(key: &str, value: &str, min: i64) -> Result<i32> {
    let v = parse_at_least(key, value, min)?;
    i32::try_from(v).map_err(|_| BrokerError::InvalidConfig(format!("{key}={v} is too large")))
}

/// `-1` (or any negative) means "no limit", as in Kafka.
fn parse_optional_limit(key: &str, value: &str) -> Result<Option<i64>> {
    let v = parse_i64(key, value)?;
    Ok((v >= 0).then_some(v))
}

/// Kafka's "Long.MAX_VALUE means no limit" for timestamp bounds.
fn parse_timestamp_bound(key: &str, value: &str) -> Result<Option<i64>> {
    let v = parse_at_least(key, value, 0)?;
    Ok((v != i64::MAX).then_some(v))
}

fn parse_bool(key: &str, value: &str) -> Result<bool> {
    match value.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(BrokerError::InvalidConfig(format!(
            "{key}={value:?}: expected true or false"
        ))),
    }
}

/// Kafka's "Long.MAX_VALUE means never" for flush settings.
fn parse_flush(key: &str, value: &str) -> Result<Option<u64>> {
    let v = parse_at_least(key, value, 1)?;
    Ok((v != i64::MAX).then_some(v as u64))
}

impl LogConfig {
    /// Applies one topic-level key. Unknown keys and bad values are errors that name the key.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "retention.ms" => self.retention_ms = parse_optional_limit(key, value)?,
            "retention.bytes" => {
                self.retention_bytes = parse_optional_limit(key, value)?.map(|v| v as u64)
            }
            "segment.bytes" => {
                let v = parse_at_least(key, value, 1024)?;
                if v > i64::from(i32::MAX) {
                    return Err(BrokerError::InvalidConfig(format!(
                        "segment.bytes={v} must be at most {}",
                        i32::MAX
                    )));
                }
                self.segment_bytes = v as u64;
            }
            "segment.ms" => self.segment_ms = parse_at_least(key, value, 1)?,
            "cleanup.policy" => {
                self.cleanup_policy = CleanupPolicy::parse(value).ok_or_else(|| {
                    BrokerError::InvalidConfig(format!(
                        "cleanup.policy={value:?}: expected delete, compact, or compact,delete"
                    ))
                })?
            }
            "max.message.bytes" => self.max_message_bytes = parse_at_least(key, value, 0)? as usize,
            "compression.type" => {
                self.compression = CompressionType::parse(value).ok_or_else(|| {
                    BrokerError::InvalidConfig(format!(
                        "compression.type={value:?}: expected producer, none, gzip, snappy, lz4 \
                         or zstd"
                    ))
                })?
            }
            "flush.messages" => self.flush_messages = parse_flush(key, value)?,
            "flush.ms" => self.flush_ms = parse_flush(key, value)?,
            "delete.retention.ms" => self.delete_retention_ms = parse_at_least(key, value, 0)?,
            "min.compaction.lag.ms" => self.min_compaction_lag_ms = parse_at_least(key, value, 0)?,
            "index.interval.bytes" => {
                self.index_interval_bytes = parse_at_least(key, value, 0)? as u64
            }
            "message.timestamp.before.max.ms" => {
                self.timestamp_before_max_ms = parse_timestamp_bound(key, value)?
            }
            "message.timestamp.after.max.ms" => {
                self.timestamp_after_max_ms = parse_timestamp_bound(key, value)?
            }
            "message.timestamp.type" => {
                self.timestamp_type = match value {
                    "CreateTime" => TimestampType::CreateTime,
                    "LogAppendTime" => TimestampType::LogAppendTime,
                    _ => {
                        return Err(BrokerError::InvalidConfig(format!(
                            "message.timestamp.type={value:?}: expected CreateTime or LogAppendTime"
                        )));
                    }
                }
            }
            _ => {
                return Err(BrokerError::InvalidConfig(format!(
                    "unknown topic config '{key}'; known keys: {}",
                    known_topic_keys()
                )));
            }
        }
        Ok(())
    }

    /// The defaults with `overrides` applied; every key is checked.
    pub fn with_overrides(&self, overrides: &BTreeMap<String, String>) -> Result<LogConfig> {
        let mut config = self.clone();
        for (k, v) in overrides {
            config.set(k, v)?;
        }
        Ok(config)
    }

    /// The value of a key as Kafka would print it.
    pub fn get(&self, key: &str) -> Option<String> {
        let limit = |v: Option<i64>| v.unwrap_or(-1).to_string();
        let flush = |v: Option<u64>| v.map_or(i64::MAX.to_string(), |v| v.to_string());
        Some(match key {
            "retention.ms" => limit(self.retention_ms),
            "retention.bytes" => limit(self.retention_bytes.map(|v| v as i64)),
            "segment.bytes" => self.segment_bytes.to_string(),
            "segment.ms" => self.segment_ms.to_string(),
            "cleanup.policy" => self.cleanup_policy.render(),
            "compression.type" => self.compression.render(),
            "max.message.bytes" => self.max_message_bytes.to_string(),
            "flush.messages" => flush(self.flush_messages),
            "flush.ms" => flush(self.flush_ms),
            "delete.retention.ms" => self.delete_retention_ms.to_string(),
            "min.compaction.lag.ms" => self.min_compaction_lag_ms.to_string(),
            "index.interval.bytes" => self.index_interval_bytes.to_string(),
            "message.timestamp.before.max.ms" => {
                flush(self.timestamp_before_max_ms.map(|v| v as u64))
            }
            "message.timestamp.after.max.ms" => {
                flush(self.timestamp_after_max_ms.map(|v| v as u64))
            }
            "message.timestamp.type" => match self.timestamp_type {
                TimestampType::CreateTime => "CreateTime".into(),
                TimestampType::LogAppendTime => "LogAppendTime".into(),
            },
            _ => return None,
        })
    }

    /// Every key with its effective value.
    pub fn entries(&self) -> Vec<(String, String)> {
        TOPIC_CONFIG_KEYS
            .iter()
            .filter_map(|(k, _)| self.get(k).map(|v| ((*k).to_owned(), v)))
            .collect()
    }
}

/// The broker's settings. Built from defaults, then a config file, env vars and flags
/// (see [`BrokerConfig::set`] for the keys).
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerConfig {
    /// `log.dirs`: where topics live.
    pub data_dir: PathBuf,
    /// `num.partitions`: partitions of auto-created topics and of topics created without a count.
    pub num_partitions: i32,
    /// `auto.create.topics.enable`.
    pub auto_create_topics: bool,
    /// `log.retention.check.interval.ms`: how often retention runs.
    pub retention_check_interval_ms: u64,
    /// `log.cleaner.backoff.ms`: how often the compaction cleaner looks for work.
    pub cleaner_backoff_ms: u64,
    /// `producer.id.expiration.ms`: idempotent producers idle this long are forgotten.
    pub producer_id_expiration_ms: i64,
    /// `producer.id.expiration.check.interval.ms`: how often idle producers are looked for.
    pub producer_id_expiration_check_interval_ms: u64,
    /// Topic defaults (`log.retention.*`, `log.segment.bytes`, `message.max.bytes`, ...).
    pub log: LogConfig,
    /// The Kafka protocol listener and group coordinator.
    pub kafka: KafkaConfig,
}

/// A `NAME://HOST:PORT` listener, as in Kafka's `listeners`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    pub host: String,
    pub port: u16,
}

impl Listener {
    /// Parses `PLAINTEXT://host:port` (an empty host means all interfaces, as in Kafka).
    pub fn parse(value: &str) -> Result<Listener> {
        let bad = |why: &str| {
            BrokerError::InvalidConfig(format!(
                "listener {value:?}: {why}; expected NAME://HOST:PORT such as PLAINTEXT://0.0.0.0:9092"
            ))
        };
        let (name, rest) = value
            .trim()
            .split_once("://")
            .ok_or_else(|| bad("no '://'"))?;
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| bad("the port is not a number from 0 to 65535"))?;
        if !name.eq_ignore_ascii_case("PLAINTEXT") {
            return Err(bad("only PLAINTEXT listeners are supported"));
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Ok(Listener {
            name: name.to_ascii_uppercase(),
            host: host.to_owned(),
            port,
        })
    }

    /// Parses a comma-separated list.
    pub fn parse_list(value: &str) -> Result<Vec<Listener>> {
        let list: Vec<Listener> = value
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(Listener::parse)
            .collect::<Result<_>>()?;
        if list.is_empty() {
            return Err(BrokerError::InvalidConfig("listeners is empty".into()));
        }
        Ok(list)
    }
}

impl std::fmt::Display for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}://[{}]:{}", self.name, self.host, self.port)
        } else {
            write!(f, "{}://{}:{}", self.name, self.host, self.port)
        }
    }
}

/// Settings of the Kafka wire protocol server and the group and transaction coordinators
/// (Kafka's key names).
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaConfig {
    /// `listeners`: where the Kafka protocol is served.
    pub listeners: Vec<Listener>,
    /// `advertised.listeners`: what clients are told to connect to; defaults to `listeners`
    /// with a wildcard host replaced by `localhost`.
    pub advertised_listeners: Option<Vec<Listener>>,
    /// `node.id` (or `broker.id`).
    pub node_id: i32,
    /// `socket.request.max.bytes`: larger requests are refused before they are read.
    pub socket_request_max_bytes: usize,
    /// `queued.max.request.bytes`: request bytes read ahead across all connections (from the
    /// read until the request is handled); a connection whose next request does not fit stops
    /// reading its socket until room frees up. Kafka's default is unbounded; Quiver's is 100 MiB.
    pub queued_max_request_bytes: usize,
    /// `max.connections`: open connections across all listeners; more are closed on accept.
    pub max_connections: usize,
    /// `max.connections.per.ip`: open connections from one client address; more are closed on accept.
    pub max_connections_per_ip: usize,
    /// `connections.max.idle.ms`: a connection with no request for this long is closed.
    pub connections_max_idle_ms: u64,
    /// `fetch.max.bytes`: the most record bytes one Fetch response carries, whatever the client
    /// asks for (each partition's read is capped by it too); the first batch is sent whole.
    pub fetch_max_bytes: usize,
    /// `group.min.session.timeout.ms`.
    pub group_min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`.
    pub group_max_session_timeout_ms: i32,
    /// `group.initial.rebalance.delay.ms`: how long a new group waits for more members before its first rebalance.
    pub group_initial_rebalance_delay_ms: i32,
    /// `offsets.topic.num.partitions`.
    pub offsets_topic_num_partitions: i32,
    /// `offsets.retention.minutes`: committed offsets of empty groups expire after this.
    pub offsets_retention_minutes: i64,
    /// `transaction.max.timeout.ms`: the longest `transaction.timeout.ms` a producer may ask for.
    pub transaction_max_timeout_ms: i32,
    /// `transactional.id.expiration.ms`: a transactional id idle this long is removed.
    pub transactional_id_expiration_ms: i64,
    /// `transaction.state.log.num.partitions`: partitions of `__transaction_state` when it is
    /// created.
    pub transaction_state_log_num_partitions: i32,
    /// `transaction.state.log.segment.bytes`: `segment.bytes` of `__transaction_state`.
    pub transaction_state_log_segment_bytes: u64,
    /// `transaction.abort.timed.out.transaction.cleanup.interval.ms`: how often transactions
    /// past their timeout are looked for (and aborted).
    pub transaction_abort_timed_out_interval_ms: u64,
    /// `transaction.remove.expired.transaction.cleanup.interval.ms`: how often expired
    /// transactional ids are looked for (and removed).
    pub transaction_remove_expired_interval_ms: u64,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            listeners: vec![Listener {
                name: "PLAINTEXT".into(),
                host: "0.0.0.0".into(),
                port: 9092,
            }],
            advertised_listeners: None,
            node_id: 0,
            socket_request_max_bytes: 100 * 1024 * 1024,
            queued_max_request_bytes: 100 * 1024 * 1024,
            max_connections: i32::MAX as usize,
            max_connections_per_ip: i32::MAX as usize,
            connections_max_idle_ms: 600_000,
            fetch_max_bytes: 57_671_680,
            group_min_session_timeout_ms: 6_000,
            group_max_session_timeout_ms: 1_800_000,
            group_initial_rebalance_delay_ms: 3_000,
            offsets_topic_num_partitions: 50,
            offsets_retention_minutes: 7 * 24 * 60,
            transaction_max_timeout_ms: 900_000,
            transactional_id_expiration_ms: 7 * DAY_MS,
            transaction_state_log_num_partitions: 50,
            transaction_state_log_segment_bytes: 100 * 1024 * 1024,
            transaction_abort_timed_out_interval_ms: 10_000,
            transaction_remove_expired_interval_ms: 3_600_000,
        }
    }
}

impl KafkaConfig {
    /// The listeners clients are told about: `advertised.listeners`, else `listeners` with a
    /// wildcard host replaced by `localhost`.
    pub fn advertised(&self) -> Vec<Listener> {
        match &self.advertised_listeners {
            Some(a) => a.clone(),
            None => self
                .listeners
                .iter()
                .map(|l| {
                    let host = if l.host.is_empty() || l.host == "0.0.0.0" || l.host == "::" {
                        "localhost".to_owned()
                    } else {
                        l.host.clone()
                    };
                    Listener { host, ..l.clone() }
                })
                .collect(),
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            data_dir: PathBuf::from("quiver-data"),
            num_partitions: 1,
            auto_create_topics: true,
            retention_check_interval_ms: 300_000,
            cleaner_backoff_ms: 15_000,
            producer_id_expiration_ms: DAY_MS,
            producer_id_expiration_check_interval_ms: 600_000,
            log: LogConfig::default(),
            kafka: KafkaConfig::default(),
        }
    }
}

/// The server keys Quiver knows (Kafka's names).
pub const BROKER_CONFIG_KEYS: &[&str] = &[
    "advertised.listeners",
    "auto.create.topics.enable",
    "broker.id",
    "compression.type",
    "connections.max.idle.ms",
    "fetch.max.bytes",
    "group.initial.rebalance.delay.ms",
    "group.max.session.timeout.ms",
    "group.min.session.timeout.ms",
    "listeners",
    "max.connections",
    "max.connections.per.ip",
    "node.id",
    "offsets.retention.minutes",
    "offsets.topic.num.partitions",
    "queued.max.request.bytes",
    "socket.request.max.bytes",
    "log.cleaner.backoff.ms",
    "log.cleaner.delete.retention.ms",
    "log.cleanup.policy",
    "log.dir",
    "log.dirs",
    "log.flush.interval.messages",
    "log.flush.interval.ms",
    "log.flush.on.ack",
    "log.index.interval.bytes",
    "log.message.timestamp.after.max.ms",
    "log.message.timestamp.before.max.ms",
    "log.message.timestamp.type",
    "log.retention.bytes",
    "log.retention.check.interval.ms",
    "log.retention.hours",
    "log.retention.minutes",
    "log.retention.ms",
    "log.roll.hours",
    "log.roll.ms",
    "log.segment.bytes",
    "message.max.bytes",
    "num.partitions",
    "producer.id.expiration.check.interval.ms",
    "producer.id.expiration.ms",
    "transaction.abort.timed.out.transaction.cleanup.interval.ms",
    "transaction.max.timeout.ms",
    "transaction.remove.expired.transaction.cleanup.interval.ms",
    "transaction.state.log.num.partitions",
    "transaction.state.log.segment.bytes",
    "transactional.id.expiration.ms",
];

/// Server keys Kafka users carry over that mean nothing to Quiver, each with why. A config file
/// or environment variable may give them: they are accepted with a warning, not refused.
pub const NO_EFFECT_KEYS: &[(&str, &str)] = &[
    ("zookeeper.connect", NO_ZOOKEEPER),
    ("zookeeper.connection.timeout.ms", NO_ZOOKEEPER),
    ("zookeeper.session.timeout.ms", NO_ZOOKEEPER),
    ("zookeeper.set.acl", NO_ZOOKEEPER),
    ("zookeeper.metadata.migration.enable", NO_ZOOKEEPER),
    ("process.roles", NO_KRAFT),
    ("controller.quorum.voters", NO_KRAFT),
    ("controller.quorum.bootstrap.servers", NO_KRAFT),
    ("controller.listener.names", NO_KRAFT),
    ("controller.quorum.election.timeout.ms", NO_KRAFT),
    ("controller.quorum.fetch.timeout.ms", NO_KRAFT),
    ("metadata.log.dir", NO_KRAFT),
    ("inter.broker.listener.name", SINGLE_NODE),
    ("listener.security.protocol.map", PLAINTEXT_ONLY),
    ("broker.rack", SINGLE_NODE),
    ("default.replication.factor", SINGLE_NODE),
    ("min.insync.replicas", SINGLE_NODE),
    ("offsets.topic.replication.factor", SINGLE_NODE),
    ("transaction.state.log.replication.factor", SINGLE_NODE),
    ("transaction.state.log.min.isr", SINGLE_NODE),
    (
        "share.coordinator.state.topic.replication.factor",
        SINGLE_NODE,
    ),
    ("share.coordinator.state.topic.min.isr", SINGLE_NODE),
    ("unclean.leader.election.enable", SINGLE_NODE),
    ("auto.leader.rebalance.enable", SINGLE_NODE),
    ("num.replica.fetchers", SINGLE_NODE),
    ("replica.lag.time.max.ms", SINGLE_NODE),
    ("num.network.threads", THREADS),
    ("num.io.threads", THREADS),
    ("num.recovery.threads.per.data.dir", THREADS),
    ("background.threads", THREADS),
    ("socket.send.buffer.bytes", SOCKET_BUFFERS),
    ("socket.receive.buffer.bytes", SOCKET_BUFFERS),
    ("metric.reporters", NO_JMX),
    ("kafka.metrics.reporters", NO_JMX),
    ("kafka.metrics.polling.interval.secs", NO_JMX),
    ("auto.include.jmx.reporter", NO_JMX),
    ("metrics.num.samples", NO_JMX),
    ("metrics.sample.window.ms", NO_JMX),
    ("metrics.recording.level", NO_JMX),
];

const NO_ZOOKEEPER: &str = "Quiver keeps its metadata in the data directory and needs no ZooKeeper";
const NO_KRAFT: &str = "Quiver is one node with its metadata in the data directory; there is no KRaft controller quorum";
const SINGLE_NODE: &str = "Quiver is a single node: every partition has one replica, on this node";
const PLAINTEXT_ONLY: &str = "Quiver's listeners are PLAINTEXT";
const THREADS: &str = "Quiver sizes its async runtime to the machine's cores";
const SOCKET_BUFFERS: &str = "Quiver leaves socket buffer sizes to the operating system";
const NO_JMX: &str = "Quiver has no JMX and loads no metrics reporters";

/// Why a server key has no effect in Quiver, if it is one of [`NO_EFFECT_KEYS`].
pub fn no_effect(key: &str) -> Option<&'static str> {
    NO_EFFECT_KEYS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, why)| *why)
}

/// The server keys that set the broker-wide default of a topic key, most specific first (the
/// order in which Kafka lists them as synonyms). Empty for topic keys with no server key here.
pub fn broker_synonyms(topic_key: &str) -> &'static [&'static str] {
    match topic_key {
        "cleanup.policy" => &["log.cleanup.policy"],
        "compression.type" => &["compression.type"],
        "delete.retention.ms" => &["log.cleaner.delete.retention.ms"],
        "flush.messages" => &["log.flush.interval.messages"],
        "flush.ms" => &["log.flush.interval.ms"],
        "index.interval.bytes" => &["log.index.interval.bytes"],
        "max.message.bytes" => &["message.max.bytes"],
        "message.timestamp.type" => &["log.message.timestamp.type"],
        "message.timestamp.after.max.ms" => &["log.message.timestamp.after.max.ms"],
        "message.timestamp.before.max.ms" => &["log.message.timestamp.before.max.ms"],
        "retention.bytes" => &["log.retention.bytes"],
        "retention.ms" => &[
            "log.retention.ms",
            "log.retention.minutes",
            "log.retention.hours",
        ],
        "segment.bytes" => &["log.segment.bytes"],
        "segment.ms" => &["log.roll.ms", "log.roll.hours"],
        _ => &[],
    }
}

impl BrokerConfig {
    /// Applies one server key (Kafka's name). Unknown keys are errors listing the known ones.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let hours = |v: i64| {
            if v < 0 {
                -1
            } else {
                v.saturating_mul(3_600_000)
            }
        };
        let minutes = |v: i64| if v < 0 { -1 } else { v.saturating_mul(60_000) };
        match key {
            "log.dirs" | "log.dir" => {
                let dirs: Vec<&str> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .collect();
                match dirs.as_slice() {
                    [one] => self.data_dir = PathBuf::from(one),
                    [] => return Err(BrokerError::InvalidConfig(format!("{key} is empty"))),
                    _ => {
                        return Err(BrokerError::InvalidConfig(format!(
                            "{key}={value:?}: one data directory is supported; give a single path"
                        )));
                    }
                }
            }
            "num.partitions" => {
                let v = parse_at_least(key, value, 1)?;
                self.num_partitions = i32::try_from(v).map_err(|_| {
                    BrokerError::InvalidConfig(format!("num.partitions={v} is too large"))
                })?;
            }
            "auto.create.topics.enable" => self.auto_create_topics = parse_bool(key, value)?,
            "log.flush.on.ack" => self.log.flush_on_ack = parse_bool(key, value)?,
            "log.retention.check.interval.ms" => {
                self.retention_check_interval_ms = parse_at_least(key, value, 1)? as u64
            }
            "log.cleaner.backoff.ms" => {
                self.cleaner_backoff_ms = parse_at_least(key, value, 1)? as u64
            }
            "log.retention.hours" => self
                .log
                .set("retention.ms", &hours(parse_i64(key, value)?).to_string())?,
            "log.retention.minutes" => self
                .log
                .set("retention.ms", &minutes(parse_i64(key, value)?).to_string())?,
            "log.retention.ms" => self.log.set("retention.ms", value)?,
            "log.retention.bytes" => self.log.set("retention.bytes", value)?,
            "log.segment.bytes" => self.log.set("segment.bytes", value)?,
            "log.roll.hours" => self.log.set(
                "segment.ms",
                &hours(parse_at_least(key, value, 1)?).to_string(),
            )?,
            "log.roll.ms" => self.log.set("segment.ms", value)?,
            "log.cleanup.policy" => self.log.set("cleanup.policy", value)?,
            "compression.type" => self.log.set("compression.type", value)?,
            "log.cleaner.delete.retention.ms" => self.log.set("delete.retention.ms", value)?,
            "log.flush.interval.messages" => self.log.set("flush.messages", value)?,
            "log.flush.interval.ms" => self.log.set("flush.ms", value)?,
            "log.index.interval.bytes" => self.log.set("index.interval.bytes", value)?,
            "log.message.timestamp.type" => self.log.set("message.timestamp.type", value)?,
            "log.message.timestamp.before.max.ms" => {
                self.log.set("message.timestamp.before.max.ms", value)?
            }
            "log.message.timestamp.after.max.ms" => {
                self.log.set("message.timestamp.after.max.ms", value)?
            }
            "message.max.bytes" => self.log.set("max.message.bytes", value)?,
            "listeners" => self.kafka.listeners = Listener::parse_list(value)?,
            "advertised.listeners" => {
                self.kafka.advertised_listeners = Some(Listener::parse_list(value)?)
            }
            "node.id" | "broker.id" => {
                self.kafka.node_id =
                    i32::try_from(parse_at_least(key, value, 0)?).map_err(|_| {
                        BrokerError::InvalidConfig(format!("{key}={value} is too large"))
                    })?
            }
            "socket.request.max.bytes" => {
                let v = parse_at_least(key, value, 1024)?;
                if v > i64::from(i32::MAX) {
                    return Err(BrokerError::InvalidConfig(format!(
                        "{key}={v} must be at most {}",
                        i32::MAX
                    )));
                }
                self.kafka.socket_request_max_bytes = v as usize;
            }
            "queued.max.request.bytes" => {
                // Kafka's -1 (unbounded) is refused: read-ahead is always bounded here.
                let v = parse_i64(key, value)?;
                if !(1..=i64::from(i32::MAX)).contains(&v) {
                    return Err(BrokerError::InvalidConfig(format!(
                        "{key}={v}: give a byte count from 1 to {} (default 104857600); Quiver always bounds the request bytes it reads ahead",
                        i32::MAX
                    )));
                }
                self.kafka.queued_max_request_bytes = v as usize;
            }
            "max.connections" => {
                self.kafka.max_connections = parse_i32_at_least(key, value, 0)? as usize
            }
            "max.connections.per.ip" => {
                self.kafka.max_connections_per_ip = parse_i32_at_least(key, value, 0)? as usize
            }
            "connections.max.idle.ms" => {
                self.kafka.connections_max_idle_ms = parse_at_least(key, value, 1)? as u64
            }
            "fetch.max.bytes" => {
                self.kafka.fetch_max_bytes = parse_i32_at_least(key, value, 1024)? as usize
            }
            "group.min.session.timeout.ms" => {
                self.kafka.group_min_session_timeout_ms = parse_i32_at_least(key, value, 1)?
            }
            "group.max.session.timeout.ms" => {
                self.kafka.group_max_session_timeout_ms = parse_i32_at_least(key, value, 1)?
            }
            "group.initial.rebalance.delay.ms" => {
                self.kafka.group_initial_rebalance_delay_ms = parse_i32_at_least(key, value, 0)?
            }
            "offsets.topic.num.partitions" => {
                self.kafka.offsets_topic_num_partitions = parse_i32_at_least(key, value, 1)?
            }
            "offsets.retention.minutes" => {
                self.kafka.offsets_retention_minutes = parse_at_least(key, value, 1)?
            }
            "producer.id.expiration.ms" => {
                self.producer_id_expiration_ms = i64::from(parse_i32_at_least(key, value, 1)?)
            }
            "producer.id.expiration.check.interval.ms" => {
                self.producer_id_expiration_check_interval_ms =
                    parse_i32_at_least(key, value, 1)? as u64
            }
            "transaction.max.timeout.ms" => {
                self.kafka.transaction_max_timeout_ms = parse_i32_at_least(key, value, 1)?
            }
            "transactional.id.expiration.ms" => {
                self.kafka.transactional_id_expiration_ms =
                    i64::from(parse_i32_at_least(key, value, 1)?)
            }
            "transaction.state.log.num.partitions" => {
                self.kafka.transaction_state_log_num_partitions = parse_i32_at_least(key, value, 1)?
            }
            "transaction.state.log.segment.bytes" => {
                // The topic's segment.bytes bounds.
                self.kafka.transaction_state_log_segment_bytes =
                    parse_i32_at_least(key, value, 1024)? as u64
            }
            "transaction.abort.timed.out.transaction.cleanup.interval.ms" => {
                self.kafka.transaction_abort_timed_out_interval_ms =
                    parse_i32_at_least(key, value, 1)? as u64
            }
            "transaction.remove.expired.transaction.cleanup.interval.ms" => {
                self.kafka.transaction_remove_expired_interval_ms =
                    parse_i32_at_least(key, value, 1)? as u64
            }
            _ => {
                return Err(BrokerError::InvalidConfig(format!(
                    "unknown server config '{key}'; known keys: {}",
                    BROKER_CONFIG_KEYS.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The value of a server key as Kafka would print it; `None` for a key not in
    /// [`BROKER_CONFIG_KEYS`]. Keys that are units of one setting (`log.retention.{ms,minutes,hours}`,
    /// `log.roll.{ms,hours}`) each show that setting in their unit, rounded down;
    /// `advertised.listeners` shows what clients are told when it is not set.
    pub fn get(&self, key: &str) -> Option<String> {
        let log = &self.log;
        let listeners = |list: &[Listener]| {
            list.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let per = |ms: Option<i64>, unit_ms: i64| ms.map_or(-1, |v| v / unit_ms).to_string();
        let topic = |topic_key: &str| log.get(topic_key);
        Some(match key {
            "advertised.listeners" => listeners(&self.kafka.advertised()),
            "auto.create.topics.enable" => self.auto_create_topics.to_string(),
            "broker.id" | "node.id" => self.kafka.node_id.to_string(),
            "connections.max.idle.ms" => self.kafka.connections_max_idle_ms.to_string(),
            "fetch.max.bytes" => self.kafka.fetch_max_bytes.to_string(),
            "group.initial.rebalance.delay.ms" => {
                self.kafka.group_initial_rebalance_delay_ms.to_string()
            }
            "group.max.session.timeout.ms" => self.kafka.group_max_session_timeout_ms.to_string(),
            "group.min.session.timeout.ms" => self.kafka.group_min_session_timeout_ms.to_string(),
            "listeners" => listeners(&self.kafka.listeners),
            "max.connections" => self.kafka.max_connections.to_string(),
            "max.connections.per.ip" => self.kafka.max_connections_per_ip.to_string(),
            "offsets.retention.minutes" => self.kafka.offsets_retention_minutes.to_string(),
            "offsets.topic.num.partitions" => self.kafka.offsets_topic_num_partitions.to_string(),
            "socket.request.max.bytes" => self.kafka.socket_request_max_bytes.to_string(),
            "queued.max.request.bytes" => self.kafka.queued_max_request_bytes.to_string(),
            "log.cleaner.backoff.ms" => self.cleaner_backoff_ms.to_string(),
            "log.cleaner.delete.retention.ms" => topic("delete.retention.ms")?,
            "log.cleanup.policy" => topic("cleanup.policy")?,
            "compression.type" => topic("compression.type")?,
            "log.dir" | "log.dirs" => self.data_dir.display().to_string(),
            "log.flush.interval.messages" => topic("flush.messages")?,
            "log.flush.interval.ms" => topic("flush.ms")?,
            "log.flush.on.ack" => log.flush_on_ack.to_string(),
            "log.index.interval.bytes" => topic("index.interval.bytes")?,
            "log.message.timestamp.after.max.ms" => topic("message.timestamp.after.max.ms")?,
            "log.message.timestamp.before.max.ms" => topic("message.timestamp.before.max.ms")?,
            "log.message.timestamp.type" => topic("message.timestamp.type")?,
            "log.retention.bytes" => topic("retention.bytes")?,
            "log.retention.check.interval.ms" => self.retention_check_interval_ms.to_string(),
            "log.retention.hours" => per(log.retention_ms, 3_600_000),
            "log.retention.minutes" => per(log.retention_ms, 60_000),
            "log.retention.ms" => topic("retention.ms")?,
            "log.roll.hours" => per(Some(log.segment_ms), 3_600_000),
            "log.roll.ms" => topic("segment.ms")?,
            "log.segment.bytes" => topic("segment.bytes")?,
            "message.max.bytes" => topic("max.message.bytes")?,
            "num.partitions" => self.num_partitions.to_string(),
            "producer.id.expiration.check.interval.ms" => {
                self.producer_id_expiration_check_interval_ms.to_string()
            }
            "producer.id.expiration.ms" => self.producer_id_expiration_ms.to_string(),
            "transaction.abort.timed.out.transaction.cleanup.interval.ms" => self
                .kafka
                .transaction_abort_timed_out_interval_ms
                .to_string(),
            "transaction.max.timeout.ms" => self.kafka.transaction_max_timeout_ms.to_string(),
            "transaction.remove.expired.transaction.cleanup.interval.ms" => self
                .kafka
                .transaction_remove_expired_interval_ms
                .to_string(),
            "transaction.state.log.num.partitions" => {
                self.kafka.transaction_state_log_num_partitions.to_string()
            }
            "transaction.state.log.segment.bytes" => {
                self.kafka.transaction_state_log_segment_bytes.to_string()
            }
            "transactional.id.expiration.ms" => {
                self.kafka.transactional_id_expiration_ms.to_string()
            }
            _ => return None,
        })
    }

    /// Every server key of [`BROKER_CONFIG_KEYS`] with its value (see [`BrokerConfig::get`]).
    pub fn entries(&self) -> Vec<(String, String)> {
        BROKER_CONFIG_KEYS
            .iter()
            .filter_map(|k| self.get(k).map(|v| ((*k).to_owned(), v)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_topic_key_names_the_known_ones() {
        let err = LogConfig::default()
            .set("retention.msx", "1")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("unknown topic config 'retention.msx'"),
            "{err}"
        );
        assert!(err.contains("retention.ms"), "{err}");
    }

    #[test]
    fn values_are_checked() {
        let mut c = LogConfig::default();
        assert!(c.set("segment.bytes", "abc").is_err());
        assert!(c.set("segment.bytes", "10").is_err());
        assert!(c.set("cleanup.policy", "shred").is_err());
        c.set("cleanup.policy", "compact,delete").ok();
        assert_eq!(
            c.cleanup_policy,
            CleanupPolicy {
                delete: true,
                compact: true
            }
        );
        c.set("retention.ms", "-1").ok();
        assert_eq!(c.retention_ms, None);
        assert_eq!(c.get("retention.ms").as_deref(), Some("-1"));
        c.set("flush.messages", "1").ok();
        assert_eq!(c.flush_messages, Some(1));
    }

    #[test]
    fn server_keys_map_to_topic_defaults() {
        let mut b = BrokerConfig::default();
        b.set("log.retention.hours", "1").ok();
        assert_eq!(b.log.retention_ms, Some(3_600_000));
        b.set("log.dirs", "/tmp/x").ok();
        assert_eq!(b.data_dir, PathBuf::from("/tmp/x"));
        assert!(b.set("log.dirs", "/a,/b").is_err());
        assert!(b.set("no.such.key", "1").is_err());
        assert!(b.set("num.partitions", "0").is_err());
    }

    #[test]
    fn every_server_key_reads_back_what_set_accepts() {
        let mut b = BrokerConfig::default();
        b.set("log.retention.hours", "5").ok();
        b.set("listeners", "PLAINTEXT://127.0.0.1:19092").ok();
        for key in BROKER_CONFIG_KEYS {
            let Some(value) = b.get(key) else {
                panic!("no value for server key {key}")
            };
            let mut again = b.clone();
            if let Err(e) = again.set(key, &value) {
                panic!("{key}={value} does not set: {e}");
            }
            assert_eq!(again.get(key), Some(value), "{key}");
        }
        assert_eq!(b.get("log.retention.ms").as_deref(), Some("18000000"));
        assert_eq!(b.get("log.retention.minutes").as_deref(), Some("300"));
        assert_eq!(b.get("no.such.key"), None);
        assert_eq!(b.entries().len(), BROKER_CONFIG_KEYS.len());
    }

    #[test]
    fn connection_and_fetch_limits_have_kafkas_names_and_bounds() {
        let mut b = BrokerConfig::default();
        assert_eq!(b.get("fetch.max.bytes").as_deref(), Some("57671680"));
        assert_eq!(b.get("connections.max.idle.ms").as_deref(), Some("600000"));
        assert_eq!(b.get("max.connections").as_deref(), Some("2147483647"));
        assert_eq!(
            b.get("queued.max.request.bytes").as_deref(),
            Some("104857600")
        );
        let err = b
            .set("queued.max.request.bytes", "-1")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("always bounds"), "{err}");
        assert!(b.set("fetch.max.bytes", "1023").is_err());
        assert!(b.set("max.connections.per.ip", "-1").is_err());
        assert!(b.set("connections.max.idle.ms", "0").is_err());
        b.set("max.connections.per.ip", "0").ok();
        assert_eq!(b.kafka.max_connections_per_ip, 0);
    }

    #[test]
    fn transaction_keys_have_kafkas_names_defaults_and_bounds() {
        let mut b = BrokerConfig::default();
        assert_eq!(
            b.get("transaction.max.timeout.ms").as_deref(),
            Some("900000")
        );
        assert_eq!(
            b.get("transactional.id.expiration.ms").as_deref(),
            Some("604800000")
        );
        assert_eq!(
            b.get("transaction.state.log.num.partitions").as_deref(),
            Some("50")
        );
        b.set("transaction.state.log.num.partitions", "3").ok();
        b.set(
            "transaction.abort.timed.out.transaction.cleanup.interval.ms",
            "25",
        )
        .ok();
        b.set(
            "transaction.remove.expired.transaction.cleanup.interval.ms",
            "40",
        )
        .ok();
        assert_eq!(b.kafka.transaction_state_log_num_partitions, 3);
        assert_eq!(b.kafka.transaction_abort_timed_out_interval_ms, 25);
        assert_eq!(b.kafka.transaction_remove_expired_interval_ms, 40);
        assert!(b.set("transaction.max.timeout.ms", "0").is_err());
        assert!(b.set("transaction.state.log.num.partitions", "0").is_err());
        assert!(
            b.set("transaction.state.log.segment.bytes", "1023")
                .is_err()
        );
        assert!(
            b.set("transactional.id.expiration.ms", "3000000000")
                .is_err()
        );
        assert_eq!(no_effect("transaction.max.timeout.ms"), None);
    }

    #[test]
    fn no_effect_keys_are_not_server_keys() {
        for (key, why) in NO_EFFECT_KEYS {
            assert!(!BROKER_CONFIG_KEYS.contains(key), "{key} is both");
            assert_eq!(no_effect(key), Some(*why));
            assert!(BrokerConfig::default().set(key, "1").is_err(), "{key}");
        }
        assert_eq!(no_effect("log.dirs"), None);
    }

    #[test]
    fn producer_id_expiration_keys_take_kafkas_defaults_and_limits() {
        let mut b = BrokerConfig::default();
        assert_eq!(
            b.get("producer.id.expiration.ms").as_deref(),
            Some("86400000")
        );
        assert_eq!(
            b.get("producer.id.expiration.check.interval.ms").as_deref(),
            Some("600000")
        );
        assert!(b.set("producer.id.expiration.ms", "0").is_err());
        assert!(
            b.set("producer.id.expiration.ms", "3000000000").is_err(),
            "an int, as in Kafka"
        );
        b.set("producer.id.expiration.ms", "50").ok();
        assert_eq!(b.producer_id_expiration_ms, 50);
    }

    #[test]
    fn broker_synonyms_are_server_keys() {
        for (topic_key, _) in TOPIC_CONFIG_KEYS {
            for key in broker_synonyms(topic_key) {
                assert!(BROKER_CONFIG_KEYS.contains(key), "{topic_key}: {key}");
            }
        }
    }

    #[test]
    fn listeners_parse_like_kafka() {
        let l = Listener::parse_list("PLAINTEXT://127.0.0.1:19092").unwrap_or_default();
        assert_eq!(
            l,
            vec![Listener {
                name: "PLAINTEXT".into(),
                host: "127.0.0.1".into(),
                port: 19092
            }]
        );
        assert!(Listener::parse("SSL://h:1").is_err());
        assert!(Listener::parse("PLAINTEXT://h").is_err());
        assert!(Listener::parse("PLAINTEXT://h:99999").is_err());
        let mut b = BrokerConfig::default();
        assert_eq!(b.kafka.advertised()[0].host, "localhost");
        b.set("listeners", "PLAINTEXT://:9093").ok();
        assert_eq!(b.kafka.advertised()[0].port, 9093);
        b.set("advertised.listeners", "PLAINTEXT://example:1234")
            .ok();
        assert_eq!(b.kafka.advertised()[0].host, "example");
    }
}
