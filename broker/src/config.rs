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
}

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            retention_ms: Some(7 * DAY_MS),
            retention_bytes: None,
            segment_bytes: 1 << 30,
            segment_ms: 7 * DAY_MS,
            cleanup_policy: CleanupPolicy { delete: true, compact: false },
            max_message_bytes: 1_048_588,
            flush_messages: None,
            flush_ms: None,
            delete_retention_ms: DAY_MS,
            min_compaction_lag_ms: 0,
            index_interval_bytes: 4096,
            timestamp_type: TimestampType::CreateTime,
        }
    }
}

/// The topic config keys Quiver knows, each with a one-line description (shown in errors and help).
pub const TOPIC_CONFIG_KEYS: &[(&str, &str)] = &[
    ("cleanup.policy", "delete, compact, or compact,delete"),
    ("delete.retention.ms", "how long tombstones survive compaction"),
    ("flush.messages", "fsync after this many records (1 = every append)"),
    ("flush.ms", "fsync at least this often"),
    ("index.interval.bytes", "bytes between offset index entries"),
    ("max.message.bytes", "largest record accepted"),
    ("message.timestamp.type", "CreateTime or LogAppendTime"),
    ("min.compaction.lag.ms", "records younger than this are not compacted"),
    ("retention.bytes", "size limit of a partition (-1 = none)"),
    ("retention.ms", "age limit of records (-1 = none)"),
    ("segment.bytes", "size at which a segment rolls"),
    ("segment.ms", "age at which a segment rolls"),
];

fn known_topic_keys() -> String {
    TOPIC_CONFIG_KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
}

fn parse_i64(key: &str, value: &str) -> Result<i64> {
    value.trim().parse::<i64>().map_err(|_| {
        BrokerError::InvalidConfig(format!("{key}={value:?} is not a whole number"))
    })
}

fn parse_at_least(key: &str, value: &str, min: i64) -> Result<i64> {
    let v = parse_i64(key, value)?;
    if v < min {
        return Err(BrokerError::InvalidConfig(format!("{key}={v} must be at least {min}")));
    }
    Ok(v)
}

/// `-1` (or any negative) means "no limit", as in Kafka.
fn parse_optional_limit(key: &str, value: &str) -> Result<Option<i64>> {
    let v = parse_i64(key, value)?;
    Ok((v >= 0).then_some(v))
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
            "retention.bytes" => self.retention_bytes = parse_optional_limit(key, value)?.map(|v| v as u64),
            "segment.bytes" => {
                let v = parse_at_least(key, value, 1024)?;
                if v > i64::from(i32::MAX) {
                    return Err(BrokerError::InvalidConfig(format!("segment.bytes={v} must be at most {}", i32::MAX)));
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
            "flush.messages" => self.flush_messages = parse_flush(key, value)?,
            "flush.ms" => self.flush_ms = parse_flush(key, value)?,
            "delete.retention.ms" => self.delete_retention_ms = parse_at_least(key, value, 0)?,
            "min.compaction.lag.ms" => self.min_compaction_lag_ms = parse_at_least(key, value, 0)?,
            "index.interval.bytes" => self.index_interval_bytes = parse_at_least(key, value, 0)? as u64,
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
            "max.message.bytes" => self.max_message_bytes.to_string(),
            "flush.messages" => flush(self.flush_messages),
            "flush.ms" => flush(self.flush_ms),
            "delete.retention.ms" => self.delete_retention_ms.to_string(),
            "min.compaction.lag.ms" => self.min_compaction_lag_ms.to_string(),
            "index.interval.bytes" => self.index_interval_bytes.to_string(),
            "message.timestamp.type" => match self.timestamp_type {
                TimestampType::CreateTime => "CreateTime".into(),
                TimestampType::LogAppendTime => "LogAppendTime".into(),
            },
            _ => return None,
        })
    }

    /// Every key with its effective value.
    pub fn entries(&self) -> Vec<(String, String)> {
        TOPIC_CONFIG_KEYS.iter().filter_map(|(k, _)| self.get(k).map(|v| ((*k).to_owned(), v))).collect()
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
    /// Topic defaults (`log.retention.*`, `log.segment.bytes`, `message.max.bytes`, ...).
    pub log: LogConfig,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            data_dir: PathBuf::from("quiver-data"),
            num_partitions: 1,
            auto_create_topics: true,
            retention_check_interval_ms: 300_000,
            cleaner_backoff_ms: 15_000,
            log: LogConfig::default(),
        }
    }
}

/// The server keys Quiver knows (Kafka's names).
pub const BROKER_CONFIG_KEYS: &[&str] = &[
    "auto.create.topics.enable",
    "log.cleaner.backoff.ms",
    "log.cleaner.delete.retention.ms",
    "log.cleanup.policy",
    "log.dir",
    "log.dirs",
    "log.flush.interval.messages",
    "log.flush.interval.ms",
    "log.index.interval.bytes",
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
];

impl BrokerConfig {
    /// Applies one server key (Kafka's name). Unknown keys are errors listing the known ones.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let hours = |v: i64| if v < 0 { -1 } else { v.saturating_mul(3_600_000) };
        let minutes = |v: i64| if v < 0 { -1 } else { v.saturating_mul(60_000) };
        match key {
            "log.dirs" | "log.dir" => {
                let dirs: Vec<&str> = value.split(',').map(str::trim).filter(|d| !d.is_empty()).collect();
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
                self.num_partitions = i32::try_from(v)
                    .map_err(|_| BrokerError::InvalidConfig(format!("num.partitions={v} is too large")))?;
            }
            "auto.create.topics.enable" => {
                self.auto_create_topics = match value.trim() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(BrokerError::InvalidConfig(format!("{key}={value:?}: expected true or false"))),
                }
            }
            "log.retention.check.interval.ms" => self.retention_check_interval_ms = parse_at_least(key, value, 1)? as u64,
            "log.cleaner.backoff.ms" => self.cleaner_backoff_ms = parse_at_least(key, value, 1)? as u64,
            "log.retention.hours" => self.log.set("retention.ms", &hours(parse_i64(key, value)?).to_string())?,
            "log.retention.minutes" => self.log.set("retention.ms", &minutes(parse_i64(key, value)?).to_string())?,
            "log.retention.ms" => self.log.set("retention.ms", value)?,
            "log.retention.bytes" => self.log.set("retention.bytes", value)?,
            "log.segment.bytes" => self.log.set("segment.bytes", value)?,
            "log.roll.hours" => self.log.set("segment.ms", &hours(parse_at_least(key, value, 1)?).to_string())?,
            "log.roll.ms" => self.log.set("segment.ms", value)?,
            "log.cleanup.policy" => self.log.set("cleanup.policy", value)?,
            "log.cleaner.delete.retention.ms" => self.log.set("delete.retention.ms", value)?,
            "log.flush.interval.messages" => self.log.set("flush.messages", value)?,
            "log.flush.interval.ms" => self.log.set("flush.ms", value)?,
            "log.index.interval.bytes" => self.log.set("index.interval.bytes", value)?,
            "log.message.timestamp.type" => self.log.set("message.timestamp.type", value)?,
            "message.max.bytes" => self.log.set("max.message.bytes", value)?,
            _ => {
                return Err(BrokerError::InvalidConfig(format!(
                    "unknown server config '{key}'; known keys: {}",
                    BROKER_CONFIG_KEYS.join(", ")
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_topic_key_names_the_known_ones() {
        let err = LogConfig::default().set("retention.msx", "1").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("unknown topic config 'retention.msx'"), "{err}");
        assert!(err.contains("retention.ms"), "{err}");
    }

    #[test]
    fn values_are_checked() {
        let mut c = LogConfig::default();
        assert!(c.set("segment.bytes", "abc").is_err());
        assert!(c.set("segment.bytes", "10").is_err());
        assert!(c.set("cleanup.policy", "shred").is_err());
        c.set("cleanup.policy", "compact,delete").ok();
        assert_eq!(c.cleanup_policy, CleanupPolicy { delete: true, compact: true });
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
}
