//! Where the broker's settings come from, in one place: Kafka's defaults, then a config file
//! with Kafka's server key names (Kafka's `server.properties` format, or TOML), then `QUIVER_*`
//! environment variables, then command-line flags. Later sources win. Every key is checked by
//! [`BrokerConfig::set`], so an unknown or bad key is an error naming its source (with the line,
//! in a properties file), never silently ignored. Keys Kafka users carry over that mean nothing
//! here ([`NO_EFFECT_KEYS`](quiver_broker::config::NO_EFFECT_KEYS): ZooKeeper, KRaft quorum,
//! replication, thread counts, JMX) are accepted with a one-line warning each.
//!
//! Which format a file is in: `*.properties` is Java properties, `*.toml` is TOML, and any other
//! name is TOML when it parses as TOML and Java properties otherwise.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use quiver_broker::BrokerConfig;
use quiver_broker::config::no_effect;

/// Environment variables with this prefix set server keys: `QUIVER_LOG_RETENTION_HOURS=1` is
/// `log.retention.hours=1`.
pub const ENV_PREFIX: &str = "QUIVER_";

/// Largest config file read; a real one is a few hundred bytes.
const CONFIG_FILE_BYTES_MAX: u64 = 1 << 20;

/// One setting of a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSetting {
    pub key: String,
    pub value: String,
    /// The line it is on (properties files; TOML keys are not tracked to lines).
    pub line: Option<usize>,
}

/// Builds the broker's settings from, in rising precedence: defaults, `file`, the `QUIVER_*`
/// variables in `env`, and the `--data-dir` flag.
pub fn resolve(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (OsString, OsString)>,
    data_dir: Option<&Path>,
) -> Result<BrokerConfig> {
    let mut config = BrokerConfig::default();
    let file_settings = match file {
        Some(path) => read_file(path)?,
        None => Vec::new(),
    };
    let env = env_settings(env)?;
    // Kafka's combined-mode files list the controller's listener beside the broker's; it is
    // named by `controller.listener.names`, which may come after `listeners`.
    let controller_listeners: Vec<String> = file_settings
        .iter()
        .map(|s| (s.key.as_str(), s.value.as_str()))
        .chain(env.iter().map(|(_, k, v)| (k.as_str(), v.as_str())))
        .rfind(|(k, _)| *k == "controller.listener.names")
        .map(|(_, v)| list_items(v))
        .unwrap_or_default();
    if let Some(path) = file {
        for s in &file_settings {
            let source = match s.line {
                Some(line) => format!("{}:{line}", path.display()),
                None => path.display().to_string(),
            };
            apply(
                &mut config,
                &s.key,
                &s.value,
                &source,
                &controller_listeners,
            )?;
        }
    }
    for (var, key, value) in &env {
        let source = format!("environment variable {var}");
        apply(&mut config, key, value, &source, &controller_listeners)?;
    }
    if let Some(dir) = data_dir {
        // Set directly rather than through `log.dirs`, which splits on ',' and wants UTF-8.
        config.data_dir = dir.to_owned();
    }
    Ok(config)
}

/// Sets one key from `source`: keys with no effect in Quiver are skipped with a warning, and
/// controller listeners are dropped from `listeners` and `advertised.listeners`.
fn apply(
    config: &mut BrokerConfig,
    key: &str,
    value: &str,
    source: &str,
    controller_listeners: &[String],
) -> Result<()> {
    if let Some(why) = no_effect(key) {
        tracing::warn!("{source}: {key} has no effect in Quiver: {why}");
        return Ok(());
    }
    let value = if matches!(key, "listeners" | "advertised.listeners") {
        without_controller_listeners(key, value, source, controller_listeners)?
    } else {
        value.to_owned()
    };
    config.set(key, &value).with_context(|| source.to_owned())
}

/// `value` (a listener list) without the listeners named in `controller.listener.names`.
fn without_controller_listeners(
    key: &str,
    value: &str,
    source: &str,
    controller: &[String],
) -> Result<String> {
    let all = list_items(value);
    let (dropped, kept): (Vec<&String>, Vec<&String>) = all.iter().partition(|l| {
        let name = l.split_once("://").map_or("", |(n, _)| n.trim());
        controller.iter().any(|c| c.eq_ignore_ascii_case(name))
    });
    for l in &dropped {
        tracing::warn!(
            "{source}: {key} entry {l} has no effect in Quiver: it is a controller listener (controller.listener.names), and Quiver has no KRaft controller"
        );
    }
    if kept.is_empty() && !dropped.is_empty() {
        bail!(
            "{source}: {key}={value:?} has only controller listeners; add a PLAINTEXT listener for clients, such as PLAINTEXT://:9092"
        );
    }
    Ok(kept
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(","))
}

/// The items of a comma-separated list, trimmed, without empty ones.
fn list_items(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The formats a config file may be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Toml,
    Properties,
    /// Decided by the content: TOML when it parses as TOML, else properties.
    Either,
}

fn format_of(path: &Path) -> Format {
    match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("properties") => Format::Properties,
        Some(e) if e.eq_ignore_ascii_case("toml") => Format::Toml,
        _ => Format::Either,
    }
}

/// Reads a config file (see the module docs for how its format is chosen) into settings with
/// dotted Kafka key names.
pub fn read_file(path: &Path) -> Result<Vec<FileSetting>> {
    let name = path.display();
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read config file {name}"))?;
    if meta.len() > CONFIG_FILE_BYTES_MAX {
        bail!(
            "config file {name} is {} bytes; the limit is {CONFIG_FILE_BYTES_MAX}",
            meta.len()
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read config file {name}"))?;
    let from_toml = |pairs: Vec<(String, String)>| {
        pairs
            .into_iter()
            .map(|(key, value)| FileSetting {
                key,
                value,
                line: None,
            })
            .collect()
    };
    match format_of(path) {
        Format::Toml => Ok(from_toml(
            parse_toml(&text).with_context(|| name.to_string())?,
        )),
        Format::Properties => parse_properties(&text).with_context(|| name.to_string()),
        Format::Either => match parse_toml(&text) {
            Ok(pairs) => Ok(from_toml(pairs)),
            Err(_) => parse_properties(&text).with_context(|| name.to_string()),
        },
    }
}

/// Parses Kafka's `server.properties` format. Values are trimmed, as Kafka trims them.
pub fn parse_properties(text: &str) -> Result<Vec<FileSetting>> {
    Ok(quiver_common::properties::parse(text)?
        .into_iter()
        .map(|p| FileSetting {
            key: p.key,
            value: p.value.trim().to_owned(),
            line: Some(p.line),
        })
        .collect())
}

/// Parses TOML into dotted keys. TOML reads `log.dirs = "x"` as a table `log` holding `dirs`,
/// so nested tables are flattened back; a quoted `"log.dirs" = "x"` gives the same key.
pub fn parse_toml(text: &str) -> Result<Vec<(String, String)>> {
    let table: toml::Table = toml::from_str(text).map_err(|e| anyhow!("not valid TOML: {e}"))?;
    let mut out = Vec::new();
    flatten("", &table, &mut out)?;
    Ok(out)
}

fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, String)>) -> Result<()> {
    for (name, value) in table {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        let text = match value {
            toml::Value::Table(inner) => {
                flatten(&key, inner, out)?;
                continue;
            }
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Array(_) | toml::Value::Datetime(_) => {
                bail!(
                    "{key}: expected a string, integer or boolean, got a {}",
                    value.type_str()
                )
            }
        };
        out.push((key, text));
    }
    Ok(())
}

/// Picks the `QUIVER_*` variables out of `env` as `(variable, key, value)`, sorted by variable
/// name so that the outcome does not depend on the environment's order.
pub fn env_settings(
    env: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Vec<(String, String, String)>> {
    let mut out = Vec::new();
    for (var, value) in env {
        let Some(var) = var.to_str() else { continue };
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let key = rest.to_lowercase().replace('_', ".");
        let value = value
            .into_string()
            .map_err(|_| anyhow!("environment variable {var} is not valid UTF-8"))?;
        out.push((var.to_owned(), key, value));
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// The error `resolve` gives, as printed; an error itself when it accepts.
    fn refused(
        file: Option<&Path>,
        vars: Vec<(OsString, OsString)>,
        data_dir: Option<&Path>,
    ) -> Result<String> {
        let err = resolve(file, vars, data_dir)
            .err()
            .ok_or_else(|| anyhow!("accepted"))?;
        Ok(format!("{err:#}"))
    }

    fn env(vars: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        vars.iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn dotted_quoted_and_nested_keys_flatten_alike() -> Result<()> {
        let pairs = parse_toml(
            "log.dirs = \"/d\"\n\"num.partitions\" = 3\nauto.create.topics.enable = false\n[log.retention]\nhours = 1\n",
        )?;
        assert_eq!(
            pairs,
            vec![
                ("auto.create.topics.enable".to_owned(), "false".to_owned()),
                ("log.dirs".to_owned(), "/d".to_owned()),
                ("log.retention.hours".to_owned(), "1".to_owned()),
                ("num.partitions".to_owned(), "3".to_owned()),
            ]
        );
        Ok(())
    }

    #[test]
    fn arrays_are_refused_with_their_key() {
        let err = parse_toml("log.dirs = [\"/a\"]")
            .map_err(|e| format!("{e:#}"))
            .err()
            .unwrap_or_default();
        assert_eq!(
            err,
            "log.dirs: expected a string, integer or boolean, got a array"
        );
    }

    #[test]
    fn bad_toml_is_an_error() {
        assert!(parse_toml("log.dirs = ").is_err());
    }

    #[test]
    fn env_maps_to_dotted_lowercase_keys() -> Result<()> {
        let got = env_settings(env(&[
            ("PATH", "/bin"),
            ("QUIVER_NUM_PARTITIONS", "4"),
            ("QUIVER_LOG_DIRS", "/x"),
        ]))?;
        assert_eq!(
            got,
            vec![
                (
                    "QUIVER_LOG_DIRS".to_owned(),
                    "log.dirs".to_owned(),
                    "/x".to_owned()
                ),
                (
                    "QUIVER_NUM_PARTITIONS".to_owned(),
                    "num.partitions".to_owned(),
                    "4".to_owned()
                ),
            ]
        );
        Ok(())
    }

    #[test]
    fn flags_win_over_env_and_env_over_file() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("quiver.toml");
        std::fs::write(
            &file,
            "log.dirs = \"/from-file\"\nnum.partitions = 2\nlog.retention.hours = 1\n",
        )?;

        let c = resolve(Some(&file), env(&[]), None)?;
        assert_eq!(
            (c.data_dir.clone(), c.num_partitions, c.log.retention_ms),
            (PathBuf::from("/from-file"), 2, Some(3_600_000))
        );

        let c = resolve(
            Some(&file),
            env(&[
                ("QUIVER_LOG_DIRS", "/from-env"),
                ("QUIVER_NUM_PARTITIONS", "5"),
            ]),
            None,
        )?;
        assert_eq!(
            (c.data_dir.clone(), c.num_partitions),
            (PathBuf::from("/from-env"), 5)
        );

        let c = resolve(
            Some(&file),
            env(&[("QUIVER_LOG_DIRS", "/from-env")]),
            Some(Path::new("/from,flag")),
        )?;
        assert_eq!(c.data_dir, PathBuf::from("/from,flag"));
        Ok(())
    }

    #[test]
    fn unknown_keys_name_their_source() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "log.dirz = \"/x\"\n")?;
        let err = refused(Some(&file), env(&[]), None)?;
        assert!(
            err.starts_with(&format!(
                "{}: invalid config: unknown server config 'log.dirz'",
                file.display()
            )),
            "{err}"
        );
        assert!(err.contains("log.dirs"), "lists the known keys: {err}");

        let err = refused(None, env(&[("QUIVER_NUM_PARTITONS", "3")]), None)?;
        assert!(err.starts_with("environment variable QUIVER_NUM_PARTITONS: invalid config: unknown server config 'num.partitons'"), "{err}");
        Ok(())
    }

    #[test]
    fn missing_file_says_which() {
        let err = resolve(Some(Path::new("/no/such/quiver.toml")), env(&[]), None)
            .map_err(|e| format!("{e:#}"))
            .err();
        let err = err.unwrap_or_default();
        assert!(
            err.starts_with("cannot read config file /no/such/quiver.toml: "),
            "{err}"
        );
    }

    /// A realistic Kafka KRaft `server.properties` (the keys of Kafka's stock file).
    const KAFKA_SERVER_PROPERTIES: &str =
        include_str!("../tests/data/kafka-kraft-server.properties");

    fn write(dir: &Path, name: &str, text: &str) -> Result<std::path::PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    }

    #[test]
    fn kafka_stock_server_properties_is_read_with_its_meaning() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let file = write(dir.path(), "server.properties", KAFKA_SERVER_PROPERTIES)?;
        let c = resolve(Some(&file), env(&[]), None)?;
        assert_eq!(c.data_dir, PathBuf::from("/tmp/kraft-combined-logs"));
        assert_eq!(c.kafka.node_id, 1);
        assert_eq!(c.num_partitions, 1);
        assert_eq!(c.log.retention_ms, Some(168 * 3_600_000));
        assert_eq!(c.kafka.socket_request_max_bytes, 104_857_600);
        // The controller listener is dropped; the broker's stays.
        assert_eq!(
            c.get("listeners").as_deref(),
            Some("PLAINTEXT://:9092"),
            "listeners"
        );
        assert_eq!(
            c.get("advertised.listeners").as_deref(),
            Some("PLAINTEXT://localhost:9092")
        );
        Ok(())
    }

    #[test]
    fn typo_in_a_properties_file_is_refused_naming_file_and_line() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let text = format!("{KAFKA_SERVER_PROPERTIES}\nlog.retention.hour=24\n");
        let line = text.lines().count();
        let file = write(dir.path(), "server.properties", &text)?;
        let err = refused(Some(&file), env(&[]), None)?;
        assert!(
            err.starts_with(&format!(
                "{}:{line}: invalid config: unknown server config 'log.retention.hour'; known keys: ",
                file.display()
            )),
            "{err}"
        );
        assert!(err.contains("log.retention.hours"), "{err}");
        Ok(())
    }

    #[test]
    fn properties_values_are_trimmed_and_continued_as_kafka_reads_them() -> Result<()> {
        let pairs: Vec<(String, String, Option<usize>)> = parse_properties(
            "num.partitions = 3   \nlisteners: PLAINTEXT://127.0.0.1:1,\\\n   PLAINTEXT://[::1]:2\n",
        )?
        .into_iter()
        .map(|s| (s.key, s.value, s.line))
        .collect();
        assert_eq!(
            pairs,
            [
                ("num.partitions".into(), "3".into(), Some(1)),
                (
                    "listeners".into(),
                    "PLAINTEXT://127.0.0.1:1,PLAINTEXT://[::1]:2".into(),
                    Some(2)
                ),
            ]
        );
        Ok(())
    }

    #[test]
    fn file_format_is_chosen_by_extension_then_by_content() -> Result<()> {
        let dir = tempfile::tempdir()?;
        // Not TOML (an unquoted string), so any name but *.toml reads it as properties.
        let props = "log.dirs=/p\nnum.partitions=2\n";
        for name in ["server.properties", "server.conf", "server"] {
            let file = write(dir.path(), name, props)?;
            let c = resolve(Some(&file), env(&[]), None)?;
            assert_eq!(
                (c.data_dir, c.num_partitions),
                (PathBuf::from("/p"), 2),
                "{name}"
            );
        }
        let file = write(dir.path(), "server.toml", props)?;
        let err = refused(Some(&file), env(&[]), None)?;
        assert!(err.contains("not valid TOML"), "{err}");
        // TOML content under another name is TOML: its quotes are not part of the value.
        let file = write(dir.path(), "server.conf", "log.dirs = \"/t\"\n")?;
        assert_eq!(
            resolve(Some(&file), env(&[]), None)?.data_dir,
            PathBuf::from("/t")
        );
        Ok(())
    }

    #[test]
    fn keys_with_no_effect_are_accepted_from_file_and_env() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let file = write(
            dir.path(),
            "server.properties",
            "zookeeper.connect=localhost:2181\nnum.io.threads=8\nnum.partitions=2\n",
        )?;
        let c = resolve(
            Some(&file),
            env(&[("QUIVER_DEFAULT_REPLICATION_FACTOR", "3")]),
            None,
        )?;
        assert_eq!(c.num_partitions, 2);
        Ok(())
    }

    #[test]
    fn only_controller_listeners_is_refused() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let file = write(
            dir.path(),
            "controller.properties",
            "listeners=CONTROLLER://:9093\ncontroller.listener.names=CONTROLLER\n",
        )?;
        let err = refused(Some(&file), env(&[]), None)?;
        assert!(
            err.starts_with(&format!(
                "{}:1: listeners=\"CONTROLLER://:9093\" has only controller listeners",
                file.display()
            )),
            "{err}"
        );
        // Without controller.listener.names it is an unsupported listener, as before.
        let file = write(
            dir.path(),
            "other.properties",
            "listeners=CONTROLLER://:9093\n",
        )?;
        let err = refused(Some(&file), env(&[]), None)?;
        assert!(
            err.contains("only PLAINTEXT listeners are supported"),
            "{err}"
        );
        Ok(())
    }
}
