//! Connector config files, in the shapes Kafka Connect users already have:
//!
//! - `.properties` (Kafka Connect standalone's format): `connector.class=ParquetSink`;
//! - JSON, as Kafka Connect's REST API takes it: `{"name": "lake", "config": {"connector.class":
//!   "S3Sink", …}}`, or the config object alone with `name` inside;
//! - TOML: `"connector.class" = "ParquetSink"`, or dotted keys (`flush.size = 1000` is read as
//!   the key `flush.size`), optionally under a `[config]` table beside `name`.
//!
//! Values are strings (numbers and booleans in JSON and TOML are taken as their text). Every key
//! is checked against the connector's list: an unknown key is refused by name, with the close
//! match if there is one and the list of known keys, so a typo never silently falls back to a
//! default.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::error::{ConnectError, Result};

/// One key a connector takes: its name, its default (`None`: no default), and what it does.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    pub name: &'static str,
    pub default: Option<&'static str>,
    pub doc: &'static str,
}

/// The connectors Quiver runs, by their `connector.class`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectorClass {
    /// Topics to Parquet files on any object store (`ParquetSink`; also `S3Sink` and Confluent's
    /// `io.confluent.connect.s3.S3SinkConnector`, whose keys it takes).
    ParquetSink,
    /// Generated records into a topic (`DataGen`; also Confluent's
    /// `io.confluent.kafka.connect.datagen.DatagenConnector`).
    DataGen,
    /// Lines of files (plain, JSON or CSV) into a topic (`FileSource`; also Kafka's
    /// `FileStreamSource`, whose keys it takes).
    FileSource,
}

impl ConnectorClass {
    /// The short names and Confluent class names accepted for `connector.class`.
    pub const NAMES: &'static [&'static str] = &[
        "ParquetSink",
        "S3Sink",
        "io.confluent.connect.s3.S3SinkConnector",
        "DataGen",
        "io.confluent.kafka.connect.datagen.DatagenConnector",
        "FileSource",
        "org.apache.kafka.connect.file.FileStreamSourceConnector",
    ];

    fn parse(value: &str) -> Option<ConnectorClass> {
        let short = value.rsplit('.').next().unwrap_or(value);
        match short.to_ascii_lowercase().as_str() {
            "parquetsink" | "s3sink" | "s3sinkconnector" | "parquetsinkconnector" => {
                Some(ConnectorClass::ParquetSink)
            }
            "datagen" | "datagenconnector" => Some(ConnectorClass::DataGen),
            "filesource"
            | "filesourceconnector"
            | "filestreamsource"
            | "filestreamsourceconnector" => Some(ConnectorClass::FileSource),
            _ => None,
        }
    }

    /// Whether it writes into topics (a source) rather than reading them (a sink).
    pub fn is_source(self) -> bool {
        matches!(self, ConnectorClass::DataGen | ConnectorClass::FileSource)
    }
}

/// A connector's config: its name, class and settings, checked against the keys it knows.
#[derive(Debug, Clone)]
pub struct ConnectorConfig {
    pub name: String,
    pub class: ConnectorClass,
    /// Where the config came from, for messages (a file's path).
    pub origin: String,
    settings: BTreeMap<String, String>,
}

impl ConnectorConfig {
    /// Reads a config file: JSON for `.json`, TOML for `.toml`, Java properties otherwise.
    pub fn load(path: &Path) -> Result<ConnectorConfig> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConnectError::config(format!("cannot read {origin}: {e}")))?;
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => ConnectorConfig::from_json(&text, &origin),
            Some("toml") => ConnectorConfig::from_toml(&text, &origin),
            _ => ConnectorConfig::from_properties(&text, &origin),
        }
    }

    /// A `.properties` file's text.
    pub fn from_properties(text: &str, origin: &str) -> Result<ConnectorConfig> {
        let pairs = quiver_common::properties::parse(text)
            .map_err(|e| ConnectError::config(format!("{origin}: {e}")))?;
        let settings = pairs
            .into_iter()
            .map(|p| (p.key, p.value.trim().to_owned()))
            .collect();
        ConnectorConfig::from_settings(settings, origin)
    }

    /// Kafka Connect's JSON: `{"name": …, "config": {…}}` or the config object alone.
    pub fn from_json(text: &str, origin: &str) -> Result<ConnectorConfig> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| ConnectError::config(format!("{origin}: not valid JSON: {e}")))?;
        let serde_json::Value::Object(root) = value else {
            return Err(ConnectError::config(format!(
                "{origin}: expected a JSON object ({{\"name\": …, \"config\": {{…}}}})"
            )));
        };
        let mut settings = BTreeMap::new();
        let mut put = |key: &str, v: &serde_json::Value| -> Result<()> {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                other => {
                    return Err(ConnectError::config(format!(
                        "{origin}: the value of '{key}' must be a string, number or boolean, \
                         not {other}"
                    )));
                }
            };
            settings.insert(key.to_owned(), text);
            Ok(())
        };
        match root.get("config") {
            Some(serde_json::Value::Object(config)) => {
                for (k, v) in config {
                    put(k, v)?;
                }
                for (k, v) in &root {
                    match k.as_str() {
                        "config" => {}
                        "name" => put(k, v)?,
                        // Kafka Connect's REST answers carry these; a saved answer loads as is.
                        "tasks" | "type" => {}
                        other => {
                            return Err(ConnectError::config(format!(
                                "{origin}: unknown top-level field '{other}'; a connector is \
                                 {{\"name\": …, \"config\": {{…}}}}"
                            )));
                        }
                    }
                }
            }
            Some(_) => {
                return Err(ConnectError::config(format!(
                    "{origin}: 'config' must be an object of settings"
                )));
            }
            None => {
                for (k, v) in &root {
                    put(k, v)?;
                }
            }
        }
        ConnectorConfig::from_settings(settings, origin)
    }

    /// TOML: flat quoted keys or dotted keys, optionally under `[config]` beside `name`.
    pub fn from_toml(text: &str, origin: &str) -> Result<ConnectorConfig> {
        let root: toml::Table = text
            .parse()
            .map_err(|e| ConnectError::config(format!("{origin}: not valid TOML: {e}")))?;
        let mut settings = BTreeMap::new();
        let (name, body) = match root.get("config") {
            Some(toml::Value::Table(config)) => (root.get("name"), config.clone()),
            _ => (None, root.clone()),
        };
        flatten_toml("", &body, &mut settings, origin)?;
        if let Some(name) = name {
            let toml::Value::String(name) = name else {
                return Err(ConnectError::config(format!(
                    "{origin}: 'name' must be a string"
                )));
            };
            settings.insert("name".into(), name.clone());
        }
        ConnectorConfig::from_settings(settings, origin)
    }

    /// Settings already split into keys and values; checks `name` and `connector.class`.
    pub fn from_settings(
        settings: BTreeMap<String, String>,
        origin: &str,
    ) -> Result<ConnectorConfig> {
        let name = settings
            .get("name")
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ConnectError::config(format!(
                    "{origin}: the key 'name' is missing: every connector needs a name (it names \
                     its consumer group, connect-<name>)"
                ))
            })?;
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(ConnectError::config(format!(
                "{origin}: the connector name '{name}' may only have letters, digits, '.', '_' \
                 and '-'"
            )));
        }
        let class = settings.get("connector.class").ok_or_else(|| {
            ConnectError::config(format!(
                "{origin}: the key 'connector.class' is missing; one of: {}",
                ConnectorClass::NAMES.join(", ")
            ))
        })?;
        let class = ConnectorClass::parse(class.trim()).ok_or_else(|| {
            ConnectError::config(format!(
                "{origin}: unknown connector.class '{class}'; one of: {}",
                ConnectorClass::NAMES.join(", ")
            ))
        })?;
        Ok(ConnectorConfig {
            name,
            class,
            origin: origin.to_owned(),
            settings,
        })
    }

    /// Refuses any key not in `known`, naming it, the closest known key, and the list.
    pub fn check_keys(&self, known: &[Key]) -> Result<()> {
        for key in self.settings.keys() {
            if known.iter().any(|k| k.name == key) {
                continue;
            }
            let close = quiver_common::names::closest(key, known.iter().map(|k| k.name));
            let hint = close.map_or(String::new(), |k| format!(" (did you mean '{k}'?)"));
            let mut names: Vec<&str> = known.iter().map(|k| k.name).collect();
            names.sort_unstable();
            return Err(ConnectError::config(format!(
                "{}: unknown key '{key}' for connector '{}'{hint}; known keys: {}",
                self.origin,
                self.name,
                names.join(", ")
            )));
        }
        Ok(())
    }

    /// The value of `key`, if set (not its default).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.settings
            .get(key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// The value of `key`, or its default from `known`.
    pub fn value<'a>(&'a self, key: &Key) -> Option<&'a str> {
        self.get(key.name).or(key.default)
    }

    /// The value of a key that must be set.
    pub fn required<'a>(&'a self, key: &Key) -> Result<&'a str> {
        self.value(key).ok_or_else(|| self.missing(key))
    }

    /// The error for a required key that is not set: names it and says what it is for.
    pub fn missing(&self, key: &Key) -> ConnectError {
        ConnectError::config(format!(
            "{}: the key '{}' is missing for connector '{}': {}",
            self.origin, key.name, self.name, key.doc
        ))
    }

    /// A malformed value of `key`: the message names the key, the value and what it takes.
    pub fn invalid(&self, key: &str, value: &str, expected: &str) -> ConnectError {
        ConnectError::config(format!(
            "{}: '{key}={value}' for connector '{}': {expected}",
            self.origin, self.name
        ))
    }

    /// A whole number (≥ 0), or `None` when unset without a default.
    pub fn u64(&self, key: &Key) -> Result<Option<u64>> {
        self.value(key)
            .map(|v| {
                v.replace('_', "")
                    .parse::<u64>()
                    .map_err(|_| self.invalid(key.name, v, "expected a whole number"))
            })
            .transpose()
    }

    /// A positive whole number, or `None` when unset without a default (or set to -1 or 0,
    /// Kafka Connect's "off" for intervals).
    pub fn positive(&self, key: &Key) -> Result<Option<u64>> {
        match self.value(key) {
            Some("-1") | Some("0") => Ok(None),
            Some(_) => self.u64(key),
            None => Ok(None),
        }
    }

    /// Milliseconds as a duration, with "off" values as for [`ConnectorConfig::positive`].
    pub fn millis(&self, key: &Key) -> Result<Option<Duration>> {
        Ok(self.positive(key)?.map(Duration::from_millis))
    }

    /// `true` or `false`.
    pub fn bool(&self, key: &Key) -> Result<Option<bool>> {
        self.value(key)
            .map(|v| match v.to_ascii_lowercase().as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(self.invalid(key.name, v, "expected true or false")),
            })
            .transpose()
    }

    /// One of `choices` (case-insensitive), returned lower-cased.
    pub fn choice(&self, key: &Key, choices: &[&str]) -> Result<Option<String>> {
        self.value(key)
            .map(|v| {
                let lower = v.to_ascii_lowercase();
                if choices.contains(&lower.as_str()) {
                    Ok(lower)
                } else {
                    Err(self.invalid(key.name, v, &format!("one of {}", choices.join(", "))))
                }
            })
            .transpose()
    }

    /// A comma-separated list, items trimmed, empty items dropped.
    pub fn list(&self, key: &Key) -> Vec<String> {
        self.value(key)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every setting as given, for `quiver connect validate` and status output.
    pub fn settings(&self) -> &BTreeMap<String, String> {
        &self.settings
    }
}

fn flatten_toml(
    prefix: &str,
    table: &toml::Table,
    out: &mut BTreeMap<String, String>,
    origin: &str,
) -> Result<()> {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let text = match v {
            toml::Value::Table(t) => {
                flatten_toml(&key, t, out, origin)?;
                continue;
            }
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => {
                // A list of strings is a comma-separated list, as `topics` takes it.
                let mut parts = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        toml::Value::String(s) => parts.push(s.clone()),
                        other => {
                            return Err(ConnectError::config(format!(
                                "{origin}: '{key}' must be a list of strings, not a list with \
                                 {other}"
                            )));
                        }
                    }
                }
                parts.join(",")
            }
            toml::Value::Datetime(d) => d.to_string(),
        };
        out.insert(key, text);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

    use super::*;

    const KEYS: &[Key] = &[
        Key {
            name: "name",
            default: None,
            doc: "",
        },
        Key {
            name: "connector.class",
            default: None,
            doc: "",
        },
        Key {
            name: "flush.size",
            default: Some("100"),
            doc: "records per file",
        },
        Key {
            name: "topics",
            default: None,
            doc: "the topics to read",
        },
    ];

    #[test]
    fn the_three_shapes_give_the_same_settings() {
        let props = ConnectorConfig::from_properties(
            "name=lake\nconnector.class=ParquetSink\nflush.size = 10\ntopics=a,b\n",
            "p",
        )
        .unwrap();
        let json = ConnectorConfig::from_json(
            r#"{"name": "lake", "config": {"connector.class": "S3Sink", "flush.size": 10, "topics": "a,b"}}"#,
            "j",
        )
        .unwrap();
        let toml = ConnectorConfig::from_toml(
            "name = \"lake\"\n[config]\n\"connector.class\" = \"io.confluent.connect.s3.S3SinkConnector\"\nflush.size = 10\ntopics = [\"a\", \"b\"]\n",
            "t",
        )
        .unwrap();
        for c in [&props, &json, &toml] {
            c.check_keys(KEYS).unwrap();
            assert_eq!(c.name, "lake");
            assert_eq!(c.class, ConnectorClass::ParquetSink);
            assert_eq!(c.u64(&KEYS[2]).unwrap(), Some(10));
            assert_eq!(c.list(&KEYS[3]), vec!["a", "b"]);
        }
    }

    #[test]
    fn an_unknown_key_is_refused_by_name_with_a_hint() {
        let c = ConnectorConfig::from_properties(
            "name=lake\nconnector.class=ParquetSink\nflush.sise=10\n",
            "lake.properties",
        )
        .unwrap();
        let e = c.check_keys(KEYS).unwrap_err().to_string();
        assert!(e.contains("unknown key 'flush.sise'"), "{e}");
        assert!(e.contains("did you mean 'flush.size'?"), "{e}");
        assert!(
            e.contains("known keys: connector.class, flush.size, name, topics"),
            "{e}"
        );
    }

    #[test]
    fn missing_and_malformed_values_are_named() {
        let e = ConnectorConfig::from_properties("connector.class=ParquetSink\n", "f")
            .unwrap_err()
            .to_string();
        assert!(e.contains("'name' is missing"), "{e}");
        let e = ConnectorConfig::from_properties("name=x\nconnector.class=Nope\n", "f")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown connector.class 'Nope'"), "{e}");
        let c = ConnectorConfig::from_properties(
            "name=x\nconnector.class=ParquetSink\nflush.size=ten\n",
            "f",
        )
        .unwrap();
        let e = c.u64(&KEYS[2]).unwrap_err().to_string();
        assert!(
            e.contains("'flush.size=ten'") && e.contains("whole number"),
            "{e}"
        );
        let e = c.required(&KEYS[3]).unwrap_err().to_string();
        assert!(e.contains("'topics' is missing"), "{e}");
    }
}
