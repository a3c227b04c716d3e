//! The admin vocabulary the broker's in-process API and the Kafka client both speak.

use std::collections::BTreeMap;

/// A topic to create.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewTopic {
    pub name: String,
    /// `None`: the broker's `num.partitions`.
    pub partitions: Option<i32>,
    /// Topic config overrides, by Kafka key name.
    pub configs: BTreeMap<String, String>,
}

impl NewTopic {
    /// A topic of `partitions` partitions with the broker's default configs.
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        NewTopic {
            name: name.into(),
            partitions: Some(partitions),
            configs: BTreeMap::new(),
        }
    }

    /// Sets a config override (a Kafka topic config key such as `retention.ms`).
    pub fn with_config(mut self, key: &str, value: &str) -> Self {
        self.configs.insert(key.to_owned(), value.to_owned());
        self
    }
}

/// A change to a topic's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigChange {
    Set(String, String),
    /// Back to the broker default.
    Delete(String),
}
