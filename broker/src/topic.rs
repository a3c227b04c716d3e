//! Topic names (Kafka's rules) and the persisted topic catalog (`topics.json` in the data
//! directory, replaced atomically on every change).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{BrokerError, IoContext, Result};

/// Kafka's longest topic name.
pub const MAX_NAME_LEN: usize = 249;
/// Most partitions one topic may have.
pub const MAX_PARTITIONS: i32 = 10_000;

/// Checks a topic name against Kafka's rules: 1..=249 chars of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |reason: String| {
        Err(BrokerError::InvalidTopicName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("the name is empty".into());
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are not allowed".into());
    }
    if name.len() > MAX_NAME_LEN {
        return bad(format!(
            "{} characters is longer than the limit of {MAX_NAME_LEN}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return bad(format!(
            "character {c:?} is not allowed; use ASCII letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// Kafka refuses names that differ only in '.' vs '_' (they collide in metric names).
pub fn collides(a: &str, b: &str) -> bool {
    a != b && a.replace('.', "_") == b.replace('.', "_")
}

/// Checks a partition count for a new topic.
pub fn validate_partitions(partitions: i32) -> Result<()> {
    if partitions < 1 {
        return Err(BrokerError::InvalidPartitions(format!(
            "{partitions}: a topic needs at least 1 partition"
        )));
    }
    if partitions > MAX_PARTITIONS {
        return Err(BrokerError::InvalidPartitions(format!(
            "{partitions}: at most {MAX_PARTITIONS} partitions per topic"
        )));
    }
    Ok(())
}

/// One topic as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    pub name: String,
    /// Kafka topic id (a UUID), as 32 hex digits.
    pub id: String,
    pub partitions: i32,
    /// Topic-level config overrides (Kafka key names).
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
    #[serde(default)]
    pub created_ms: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CatalogFile {
    version: u32,
    topics: Vec<TopicMeta>,
}

const CATALOG: &str = "topics.json";

/// Reads the catalog; a missing file is an empty catalog.
pub fn load_catalog(data_dir: &Path) -> Result<Vec<TopicMeta>> {
    let path = data_dir.join(CATALOG);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(BrokerError::io(path, e)),
    };
    let file: CatalogFile = serde_json::from_slice(&bytes).map_err(|e| BrokerError::Corrupt {
        path: path.clone(),
        reason: format!("topic catalog does not parse: {e}"),
    })?;
    Ok(file.topics)
}

/// Writes the catalog atomically: temp file, fsync, rename, fsync of the directory.
pub fn save_catalog(data_dir: &Path, topics: &[TopicMeta]) -> Result<()> {
    let path = data_dir.join(CATALOG);
    let tmp = data_dir.join(format!("{CATALOG}.tmp"));
    let json = serde_json::to_vec_pretty(&CatalogFile {
        version: 1,
        topics: topics.to_vec(),
    })
    .map_err(|e| BrokerError::Internal(format!("catalog serialization: {e}")))?;
    let mut file = std::fs::File::create(&tmp).at(&tmp)?;
    file.write_all(&json).at(&tmp)?;
    file.sync_all().at(&tmp)?;
    drop(file);
    std::fs::rename(&tmp, &path).at(&path)?;
    std::fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .at(data_dir)?;
    Ok(())
}

/// A new random topic id (UUID v4 layout), as 32 hex digits.
pub fn new_topic_id() -> String {
    let uuid = uuid::Uuid::new_v4();
    uuid.simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kafka_rules() {
        for ok in ["orders", "a.b_c-d", "X", &"a".repeat(249)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "has space",
            "slash/",
            "ünïcode",
            &"a".repeat(250),
        ] {
            let err = validate_name(bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.starts_with("invalid topic name"), "{bad}: {err}");
        }
        assert!(collides("a.b", "a_b"));
        assert!(!collides("a.b", "a.b"));
    }

    #[test]
    fn partition_counts() {
        assert!(validate_partitions(0).is_err());
        assert!(validate_partitions(-3).is_err());
        assert!(validate_partitions(1).is_ok());
        assert!(validate_partitions(MAX_PARTITIONS + 1).is_err());
    }
}
