//! Topic names (Kafka's rules) and the persisted topic catalog (`topics.json` in the data
//! directory, replaced atomically on every change).
//!
//! The catalog is checked entry by entry when it is read: a topic name becomes a directory name,
//! so a hand-edited or damaged file must not point the broker outside its data directory.

use std::collections::{BTreeMap, HashSet};
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

/// Kafka's internal topics: group offsets and transaction state. They are created and managed by
/// the broker; clients cannot delete, re-partition or reconfigure them.
pub const INTERNAL_TOPICS: &[&str] = &["__consumer_offsets", "__transaction_state"];

/// True for one of [`INTERNAL_TOPICS`].
pub fn is_internal(name: &str) -> bool {
    INTERNAL_TOPICS.contains(&name)
}

/// Refuses `action` ("deleted", "re-partitioned", "reconfigured") on an internal topic.
pub fn refuse_internal(name: &str, action: &'static str) -> Result<()> {
    if is_internal(name) {
        return Err(BrokerError::InternalTopic {
            topic: name.to_owned(),
            action,
        });
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
/// The catalog layout this build writes and reads.
const CATALOG_VERSION: u32 = 1;

/// Reads the catalog; a missing file is an empty catalog. Every entry is checked (name, id,
/// partition count, configs, no repeated name or id); the first bad one is a
/// [`BrokerError::Corrupt`] naming the file and the entry.
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
    if file.version != CATALOG_VERSION {
        return Err(BrokerError::Corrupt {
            path,
            reason: format!(
                "topic catalog version {} is not the version {CATALOG_VERSION} this build reads",
                file.version
            ),
        });
    }
    validate_catalog(&file.topics).map_err(|reason| BrokerError::Corrupt { path, reason })?;
    Ok(file.topics)
}

/// Checks every entry of a catalog; the error names the first bad entry and says why.
fn validate_catalog(topics: &[TopicMeta]) -> std::result::Result<(), String> {
    let mut names = HashSet::with_capacity(topics.len());
    let mut ids = HashSet::with_capacity(topics.len());
    for (index, meta) in topics.iter().enumerate() {
        let bad = |why: String| {
            format!(
                "entry {index} (topic {:?}): {why}; fix or remove that entry",
                meta.name
            )
        };
        // The name becomes a directory name: Kafka's rules keep it inside the data directory.
        validate_name(&meta.name).map_err(|e| bad(e.to_string()))?;
        validate_partitions(meta.partitions).map_err(|e| bad(e.to_string()))?;
        if meta.id.len() != 32 || !meta.id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!("id {:?} is not 32 hex digits", meta.id)));
        }
        crate::config::LogConfig::default()
            .with_overrides(&meta.configs)
            .map_err(|e| bad(e.to_string()))?;
        if !names.insert(meta.name.as_str()) {
            return Err(bad("the topic is listed more than once".into()));
        }
        if !ids.insert(meta.id.to_ascii_lowercase()) {
            return Err(bad(format!(
                "id {} is also the id of an earlier entry",
                meta.id
            )));
        }
    }
    Ok(())
}

/// Writes the catalog atomically: temp file, fsync, rename, fsync of the directory.
pub fn save_catalog(data_dir: &Path, topics: &[TopicMeta]) -> Result<()> {
    let path = data_dir.join(CATALOG);
    let tmp = data_dir.join(format!("{CATALOG}.tmp"));
    let json = serde_json::to_vec_pretty(&CatalogFile {
        version: CATALOG_VERSION,
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

    /// Writes `topics.json` with the given entries (JSON objects) and loads it.
    fn load_entries(entries: &[&str]) -> (tempfile::TempDir, Result<Vec<TopicMeta>>) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let json = format!("{{\"version\": 1, \"topics\": [{}]}}", entries.join(","));
        std::fs::write(dir.path().join(CATALOG), json).unwrap_or_else(|e| panic!("write: {e}"));
        let loaded = load_catalog(dir.path());
        (dir, loaded)
    }

    fn load_error(entries: &[&str]) -> String {
        let (dir, loaded) = load_entries(entries);
        let err = loaded.err().map(|e| e.to_string()).unwrap_or_default();
        let file = dir.path().join(CATALOG);
        assert!(
            err.starts_with(&format!("corrupt data in {}: ", file.display())),
            "names the file: {err}"
        );
        err
    }

    const GOOD: &str =
        r#"{"name": "orders", "id": "0123456789abcdef0123456789abcdef", "partitions": 3}"#;

    #[test]
    fn a_good_catalog_loads() {
        let (_dir, loaded) = load_entries(&[GOOD]);
        let names: Vec<String> = loaded
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["orders"]);
    }

    #[test]
    fn catalog_entry_whose_name_escapes_the_data_dir_is_refused() {
        for name in ["../outside", "..", "a/b", "/etc"] {
            let entry = format!(
                r#"{{"name": {name:?}, "id": "00000000000000000000000000000001", "partitions": 1}}"#
            );
            let err = load_error(&[GOOD, &entry]);
            assert!(
                err.contains(&format!("entry 1 (topic {name:?}): invalid topic name")),
                "{err}"
            );
        }
    }

    #[test]
    fn catalog_entry_with_a_bad_partition_count_is_refused() {
        for partitions in [0, -1, MAX_PARTITIONS + 1] {
            let entry = format!(
                r#"{{"name": "t", "id": "00000000000000000000000000000001", "partitions": {partitions}}}"#
            );
            let err = load_error(&[&entry]);
            assert!(
                err.contains("entry 0 (topic \"t\"): invalid partition count"),
                "{err}"
            );
        }
    }

    #[test]
    fn catalog_with_a_repeated_name_or_id_is_refused() {
        let same_name =
            r#"{"name": "orders", "id": "00000000000000000000000000000001", "partitions": 1}"#;
        let err = load_error(&[GOOD, same_name]);
        assert!(
            err.contains("entry 1 (topic \"orders\"): the topic is listed more than once"),
            "{err}"
        );
        let same_id =
            r#"{"name": "other", "id": "0123456789ABCDEF0123456789ABCDEF", "partitions": 1}"#;
        let err = load_error(&[GOOD, same_id]);
        assert!(err.contains("entry 1 (topic \"other\"): id"), "{err}");
    }

    #[test]
    fn catalog_entry_with_a_bad_id_or_config_is_refused() {
        let bad_id = r#"{"name": "t", "id": "../../x", "partitions": 1}"#;
        assert!(load_error(&[bad_id]).contains("is not 32 hex digits"));
        let bad_config = r#"{"name": "t", "id": "00000000000000000000000000000001", "partitions": 1, "configs": {"retention.msx": "1"}}"#;
        assert!(load_error(&[bad_config]).contains("unknown topic config 'retention.msx'"));
    }

    #[test]
    fn catalog_of_another_version_is_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        std::fs::write(dir.path().join(CATALOG), r#"{"version": 2, "topics": []}"#)
            .unwrap_or_else(|e| panic!("write: {e}"));
        let err = load_catalog(dir.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("topic catalog version 2"), "{err}");
    }

    #[test]
    fn internal_topics_are_kafkas() {
        assert!(is_internal("__consumer_offsets"));
        assert!(is_internal("__transaction_state"));
        assert!(!is_internal("consumer_offsets"));
    }
}
